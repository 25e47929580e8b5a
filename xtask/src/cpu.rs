//! CPU time of processes, from `/proc/<pid>/stat`, sampled over a run and read off at any
//! instant between two samples (linear interpolation).
//!
//! A process's time is its `utime + stime` (all its threads). A *tree* (PostgreSQL: the
//! postmaster and its backends) adds each member's `cutime + cstime` — the time of children
//! it reaped — and its live children, recursively; so a backend that exits during the run
//! moves its time into its parent's count instead of losing it.

use std::fs;
use std::time::{SystemTime, UNIX_EPOCH};

/// A named set of processes whose CPU time is summed.
#[derive(Debug, Clone)]
pub struct Group {
    pub name: String,
    pub pids: Vec<u32>,
    /// Count the processes' children too (see the module's documentation).
    pub tree: bool,
}

/// Samples of every group's CPU time, in clock ticks, over Unix time in milliseconds.
#[derive(Debug)]
pub struct Sampler {
    groups: Vec<Group>,
    samples: Vec<(f64, Vec<u64>)>,
    ticks_per_second: f64,
}

impl Sampler {
    pub fn new(groups: Vec<Group>) -> Self {
        Self {
            groups,
            samples: Vec::new(),
            ticks_per_second: ticks_per_second(),
        }
    }

    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// Takes a sample now.
    pub fn sample(&mut self) {
        let ticks = self
            .groups
            .iter()
            .map(|g| g.pids.iter().map(|&pid| process_ticks(pid, g.tree)).sum())
            .collect();
        self.samples.push((now_unix_ms(), ticks));
    }

    /// Seconds of CPU each group used from `from_ms` to `to_ms` (Unix milliseconds), in the
    /// order of the groups; `None` without two samples around that span.
    pub fn seconds_between(&self, from_ms: f64, to_ms: f64) -> Option<Vec<f64>> {
        let (first, last) = (self.samples.first()?, self.samples.last()?);
        if self.samples.len() < 2 || from_ms < first.0 || to_ms > last.0 || from_ms > to_ms {
            return None;
        }
        Some(
            (0..self.groups.len())
                .map(|g| (self.at(g, to_ms) - self.at(g, from_ms)) / self.ticks_per_second)
                .collect(),
        )
    }

    /// Group `g`'s ticks at `t_ms`, between the samples around it.
    fn at(&self, g: usize, t_ms: f64) -> f64 {
        let after = self
            .samples
            .partition_point(|(t, _)| *t < t_ms)
            .min(self.samples.len() - 1);
        let before = after.saturating_sub(1);
        let ((t0, v0), (t1, v1)) = (&self.samples[before], &self.samples[after]);
        let (v0, v1) = (v0[g] as f64, v1[g] as f64);
        if t1 <= t0 {
            return v1;
        }
        v0 + (v1 - v0) * ((t_ms - t0) / (t1 - t0)).clamp(0.0, 1.0)
    }
}

fn now_unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or_default()
}

/// Clock ticks per second of `/proc/<pid>/stat` (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
fn ticks_per_second() -> f64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    }
}

/// `pid`'s CPU ticks; with `tree`, its reaped and live children's too. 0 when it is gone.
fn process_ticks(pid: u32, tree: bool) -> u64 {
    let Some(stat) = Stat::read(pid) else {
        return 0;
    };
    if !tree {
        return stat.own;
    }
    stat.own
        + stat.reaped
        + children(pid)
            .into_iter()
            .map(|child| process_ticks(child, true))
            .sum::<u64>()
}

/// The fields of `/proc/<pid>/stat` this module reads.
#[derive(Debug, PartialEq, Eq)]
struct Stat {
    ppid: u32,
    /// utime + stime.
    own: u64,
    /// cutime + cstime: the children it waited for.
    reaped: u64,
}

impl Stat {
    fn read(pid: u32) -> Option<Self> {
        Self::parse(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// Fields after the command name (which may hold spaces and parentheses): state, ppid,
    /// …, utime (14th field of the line), stime, cutime, cstime.
    fn parse(line: &str) -> Option<Self> {
        let (_, rest) = line.rsplit_once(')')?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let num = |i: usize| fields.get(i)?.parse::<u64>().ok();
        Some(Self {
            ppid: u32::try_from(num(1)?).ok()?,
            own: num(11)? + num(12)?,
            reaped: num(13)? + num(14)?,
        })
    }
}

/// `pid`'s live children: `/proc/<pid>/task/*/children`, or a scan of `/proc` where the
/// kernel lacks that file.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    let mut listed = false;
    if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
        for task in tasks.flatten() {
            if let Ok(text) = fs::read_to_string(task.path().join("children")) {
                listed = true;
                out.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<u32>().ok()),
                );
            }
        }
    }
    if !listed {
        if let Ok(procs) = fs::read_dir("/proc") {
            out.extend(
                procs
                    .flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                    .filter(|&p| Stat::read(p).is_some_and(|s| s.ppid == pid)),
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_with_parentheses_in_the_name_parses() {
        let line = "4242 (postgres: a (b) c) S 17 4242 4242 0 -1 4194560 1 0 0 0 \
                    250 75 9 3 20 0 1 0 100 1000 10 18446744073709551615";
        assert_eq!(
            Stat::parse(line),
            Some(Stat {
                ppid: 17,
                own: 325,
                reaped: 12
            })
        );
        assert_eq!(Stat::parse("garbage"), None);
    }

    #[test]
    fn time_between_samples_is_interpolated() {
        let mut s = Sampler::new(vec![Group {
            name: "x".into(),
            pids: vec![],
            tree: false,
        }]);
        s.ticks_per_second = 100.0;
        s.samples = vec![(1000.0, vec![0]), (2000.0, vec![100]), (3000.0, vec![100])];
        // Half of the first second's ticks, none of the second's: 0.5 s of CPU.
        assert_eq!(s.seconds_between(1500.0, 3000.0), Some(vec![0.5]));
        assert_eq!(s.seconds_between(1000.0, 2000.0), Some(vec![1.0]));
        assert_eq!(s.seconds_between(500.0, 2000.0), None);
        assert_eq!(s.seconds_between(2000.0, 3500.0), None);
    }

    #[test]
    fn a_busy_process_is_seen_using_cpu() {
        let me = std::process::id();
        let mut s = Sampler::new(vec![Group {
            name: "me".into(),
            pids: vec![me],
            tree: true,
        }]);
        s.sample();
        // Spin until the kernel counted 5 ticks for us (however busy the machine is).
        let start = Stat::read(me).unwrap().own;
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut x = 0u64;
        while Stat::read(me).unwrap().own < start + 5 && std::time::Instant::now() < deadline {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
        s.sample();
        let (from, to) = (s.samples[0].0, s.samples[1].0);
        let used = s.seconds_between(from, to).unwrap()[0];
        assert!(used >= 5.0 / s.ticks_per_second, "{used}");
    }
}
