//! The processes of a local stack — PostgreSQL, nats-server, Courier's services — as
//! [`Supervised`] children, started and stopped in order; shared by `xtask up` (which restarts
//! what dies) and `xtask bench` (for which a death ends the run).

use std::fs;
use std::path::Path;
use std::process::{Command, ExitStatus};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use nix::sys::signal::Signal;

use crate::nats::Nats;
use crate::paths;
use crate::pg::Cluster;
use crate::proc::{self, describe, free_port, tail, POLL};
use crate::restart::Policy;
use crate::supervise::{self, Spec, Supervised};

/// What runs; stopped in reverse order of dependency.
#[derive(Debug, Default)]
pub struct Stack {
    pub services: Vec<Supervised>,
    pub nats: Option<Supervised>,
    pub pg: Option<Supervised>,
}

impl Stack {
    /// Runs the cluster's server in the foreground on a free port (logging to `log`, kept
    /// across runs) and waits until it accepts connections; `settings` as for
    /// [`Cluster::foreground`].
    pub fn start_postgres(
        &mut self,
        pg: &mut Cluster,
        log: &Path,
        settings: &[&str],
    ) -> Result<()> {
        let server = pg.foreground(free_port()?, settings);
        let postgres = self.pg.insert(Supervised::start(
            Spec {
                name: "postgres".into(),
                command: Box::new(move || server.command()),
                log: log.to_path_buf(),
                fresh_log: false,
                // Fast shutdown: roll back open transactions, checkpoint, exit.
                stop: Signal::SIGINT,
                grace: Duration::from_secs(60),
            },
            Policy::DEFAULT,
        )?);
        wait_for_postgres(pg, postgres, Duration::from_secs(60))
    }

    /// Runs `nats` (logging to `log`) and waits until JetStream is healthy.
    pub fn start_nats(&mut self, nats: &Nats, log: &Path) -> Result<()> {
        let nats_proc = self.nats.insert(Supervised::start(
            Spec {
                name: "nats-server".into(),
                command: {
                    let nats = nats.clone();
                    Box::new(move || nats.command())
                },
                log: log.to_path_buf(),
                fresh_log: true,
                stop: Signal::SIGTERM,
                grace: Duration::from_secs(10),
            },
            Policy::DEFAULT,
        )?);
        nats.wait_healthy(log, || nats_proc.ended(), Duration::from_secs(30))
    }

    /// Starts a service: `bin` with the `common` and its `own` environment, logging to
    /// `<logs>/<name>.log`.
    pub fn spawn(
        &mut self,
        name: &str,
        bin: &Path,
        common: &[(&str, String)],
        own: &[(&str, String)],
        logs: &Path,
    ) -> Result<()> {
        let bin = bin.to_path_buf();
        let env: Vec<(String, String)> = common
            .iter()
            .chain(own)
            .map(|(k, v)| ((*k).to_string(), v.clone()))
            .collect();
        self.spawn_command(
            name,
            Box::new(move || {
                let mut cmd = Command::new(&bin);
                cmd.envs(env.iter().map(|(k, v)| (k, v)))
                    .current_dir(paths::root());
                cmd
            }),
            logs,
        )
    }

    /// Starts a service run by `command` (`podman run …` for `xtask image`), logging to
    /// `<logs>/<name>.log`; it is asked to stop with SIGTERM.
    pub fn spawn_command(
        &mut self,
        name: &str,
        command: Box<dyn Fn() -> Command>,
        logs: &Path,
    ) -> Result<()> {
        let spec = Spec {
            name: name.to_string(),
            command,
            log: logs.join(format!("{name}.log")),
            fresh_log: true,
            stop: Signal::SIGTERM,
            grace: Duration::from_secs(10),
        };
        self.services
            .push(Supervised::start(spec, Policy::DEFAULT)?);
        Ok(())
    }

    /// Every process, infrastructure first.
    fn all_mut(&mut self) -> impl Iterator<Item = &mut Supervised> {
        self.pg
            .iter_mut()
            .chain(&mut self.nats)
            .chain(&mut self.services)
    }

    /// Restarts what died and is due; true when a pid changed.
    pub fn poll(&mut self, now: Instant) -> bool {
        let mut changed = false;
        for p in self.all_mut() {
            changed |= p.poll(now);
        }
        changed
    }

    /// For a stack that must not lose a process (no restarts): the first one that exited,
    /// with how it ended.
    pub fn first_ended(&mut self) -> Option<(String, ExitStatus, std::path::PathBuf)> {
        self.all_mut().find_map(|p| {
            let status = p.ended()?;
            Some((p.name().to_owned(), status, p.log().to_path_buf()))
        })
    }

    /// Services (SIGTERM, 10 s, SIGKILL), then NATS (the same), then PostgreSQL (SIGINT:
    /// fast shutdown, 60 s, SIGKILL).
    pub fn shutdown(&mut self) {
        supervise::stop_all(&mut self.services.iter_mut().collect::<Vec<_>>());
        self.services.clear();
        for mut infra in [self.nats.take(), self.pg.take()].into_iter().flatten() {
            supervise::stop_all(&mut [&mut infra]);
        }
    }

    /// Records the running children's PIDs (NATS and the services; PostgreSQL is found
    /// through its data directory) in `<dir>/pids`, so that a later run can end them if this
    /// one is killed hard ([`kill_leftovers`]). A line is `<program> <pid> [<name>]`: the
    /// program is what `/proc/<pid>/comm` must say before a pid is killed, the name is for
    /// people (`courier-worker 4242 worker-2`).
    pub fn write_pids(&self, dir: &Path) {
        let mut text = String::new();
        if let Some(pid) = self.nats.as_ref().and_then(Supervised::pid) {
            text.push_str(&format!("nats-server {pid}\n"));
        }
        for service in &self.services {
            let Some(pid) = service.pid() else {
                continue;
            };
            let name = service.name();
            let program = if name.starts_with("worker-") {
                "courier-worker".to_string()
            } else {
                format!("courier-{name}")
            };
            text.push_str(&format!("{program} {pid} {name}\n"));
        }
        // Whole or not at all: a run killed mid-write must not leave half a list.
        let tmp = dir.join("pids.tmp");
        if fs::write(&tmp, text).is_ok() {
            let _ = fs::rename(&tmp, dir.join("pids"));
        }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Waits until the first start of PostgreSQL accepts connections.
fn wait_for_postgres(pg: &Cluster, postgres: &mut Supervised, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = postgres.ended() {
            bail!(
                "PostgreSQL exited ({}) before it accepted connections\n--- {} ---\n{}",
                describe(status),
                paths::display(postgres.log()),
                tail(postgres.log(), 20)
            );
        }
        if pg.accepting() {
            return Ok(());
        }
        if proc::interrupted() {
            bail!("interrupted");
        }
        if Instant::now() >= deadline {
            bail!(
                "PostgreSQL did not accept connections within {timeout:?}\n--- {} ---\n{}",
                paths::display(postgres.log()),
                tail(postgres.log(), 20)
            );
        }
        sleep(POLL);
    }
}

/// Ends the processes a hard-killed earlier run left behind (see [`Stack::write_pids`]).
pub fn kill_leftovers(dir: &Path) {
    let Ok(text) = fs::read_to_string(dir.join("pids")) else {
        return;
    };
    let mut pids = Vec::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        if let (Some(name), Some(Ok(pid))) = (parts.next(), parts.next().map(str::parse::<u32>)) {
            if proc::alive_named(pid, name) {
                eprintln!("xtask: ending {name} (pid {pid}) left by an earlier run");
                proc::signal(pid, Signal::SIGKILL);
                pids.push(pid);
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && pids.iter().any(|&pid| proc::running(pid)) {
        sleep(Duration::from_millis(50));
    }
    let _ = fs::remove_file(dir.join("pids"));
}
