//! Child processes that are started again when they die, at the pace of
//! [`restart::Policy`](crate::restart::Policy).
//!
//! [`Supervised::poll`] is called from `xtask up`'s loop: it notices an exit, says why on
//! stderr (and in the process's log), and starts the process again once its backoff has
//! passed. Stopping is explicit ([`stop_all`]); nothing is restarted after that.

use std::fs::File;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::Signal;

use crate::paths;
use crate::proc::{self, describe, tail};
use crate::restart::{Decision, Policy, Restarts};

/// How to run one process.
pub struct Spec {
    /// Its name in messages and its log file's (`worker-2`, `nats-server`).
    pub name: String,
    /// Builds the command (program, arguments, environment, working directory, user);
    /// called for every start. Stdio and the process group are set here.
    pub command: Box<dyn Fn() -> Command>,
    /// Where its stdout and stderr go. Restarts append to it.
    pub log: PathBuf,
    /// Whether the first start empties the log (services), or appends (PostgreSQL's log
    /// spans runs).
    pub fresh_log: bool,
    /// The signal that asks it to stop.
    pub stop: Signal,
    /// How long it may take to stop before SIGKILL.
    pub grace: Duration,
}

impl std::fmt::Debug for Spec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Spec")
            .field("name", &self.name)
            .field("log", &self.log)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
enum State {
    Running { child: Child, since: Instant },
    Waiting { until: Instant },
    Stopped,
}

/// A process that is kept running.
#[derive(Debug)]
pub struct Supervised {
    spec: Spec,
    state: State,
    restarts: Restarts,
}

impl Supervised {
    /// Starts it for the first time; a failure to start is an error (nothing is retried).
    pub fn start(spec: Spec, policy: Policy) -> Result<Self> {
        let child = spawn(&spec, spec.fresh_log)?;
        Ok(Self {
            spec,
            state: State::Running {
                child,
                since: Instant::now(),
            },
            restarts: Restarts::new(policy),
        })
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Its log file.
    pub fn log(&self) -> &Path {
        &self.spec.log
    }

    /// Its pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        match &self.state {
            State::Running { child, .. } => Some(child.id()),
            _ => None,
        }
    }

    /// For start-up waits: how it ended, if it has, without restarting it (it is then
    /// stopped for good).
    pub fn ended(&mut self) -> Option<ExitStatus> {
        let State::Running { child, .. } = &mut self.state else {
            return None;
        };
        let status = child.try_wait().ok().flatten()?;
        self.state = State::Stopped;
        Some(status)
    }

    /// Notices an exit (and schedules the restart) or makes a due restart. Returns whether
    /// its pid changed.
    pub fn poll(&mut self, now: Instant) -> bool {
        match &mut self.state {
            State::Running { child, since } => {
                let status = match child.try_wait() {
                    Ok(Some(status)) => status,
                    Ok(None) => return false,
                    Err(err) => {
                        eprintln!("xtask: waiting for {}: {err}", self.spec.name);
                        return false;
                    }
                };
                let pid = child.id();
                let uptime = now.saturating_duration_since(*since);
                let decision = self.restarts.exited(uptime);
                eprintln!(
                    "xtask: {} (pid {pid}) exited after {} ({}); {}",
                    self.spec.name,
                    seconds(uptime),
                    describe(status),
                    plan(&decision, &self.restarts.policy())
                );
                // A process that exited by itself usually said why at the end of its log; one
                // that was killed did not.
                if status.code().is_some() {
                    let last = tail(&self.spec.log, 5);
                    if !last.is_empty() {
                        eprintln!("  last lines of {}:", paths::display(&self.spec.log));
                        for line in last.lines() {
                            eprintln!("  | {line}");
                        }
                    }
                }
                self.note(&format!(
                    "exited ({}) after {}; restarting in {}",
                    describe(status),
                    seconds(uptime),
                    seconds(decision.delay)
                ));
                self.state = State::Waiting {
                    until: now + decision.delay,
                };
                true
            }
            State::Waiting { until } if now >= *until => {
                match spawn(&self.spec, false) {
                    Ok(child) => {
                        eprintln!("xtask: {} restarted (pid {})", self.spec.name, child.id());
                        self.state = State::Running { child, since: now };
                    }
                    Err(err) => {
                        let decision = self.restarts.exited(Duration::ZERO);
                        eprintln!(
                            "xtask: {} could not be started: {err:#}; {}",
                            self.spec.name,
                            plan(&decision, &self.restarts.policy())
                        );
                        self.state = State::Waiting {
                            until: now + decision.delay,
                        };
                    }
                }
                true
            }
            State::Waiting { .. } | State::Stopped => false,
        }
    }

    /// A line in its log, so that a reader of the log sees where one run ended.
    fn note(&self, text: &str) {
        if let Ok(mut log) = File::options().append(true).open(&self.spec.log) {
            let _ = writeln!(log, "--- xtask: {}: {text} ---", self.spec.name);
        }
    }
}

/// Stops them all at once: each gets its stop signal, then SIGKILL after the longest grace.
/// None is restarted afterwards.
pub fn stop_all(procs: &mut [&mut Supervised]) {
    let grace = procs.iter().map(|p| p.spec.grace).max().unwrap_or_default();
    let mut children: Vec<(&mut Child, Signal)> = Vec::new();
    for p in procs.iter_mut() {
        let signal = p.spec.stop;
        if let State::Running { child, .. } = &mut p.state {
            children.push((child, signal));
        }
    }
    proc::terminate_all(&mut children, grace);
    for p in procs.iter_mut() {
        p.state = State::Stopped;
    }
}

impl Drop for Supervised {
    fn drop(&mut self) {
        stop_all(&mut [self]);
    }
}

fn spawn(spec: &Spec, fresh_log: bool) -> Result<Child> {
    let log = if fresh_log {
        File::create(&spec.log)
    } else {
        File::options().create(true).append(true).open(&spec.log)
    }
    .with_context(|| format!("opening {}", spec.log.display()))?;
    let mut cmd = (spec.command)();
    cmd.stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: Ctrl-C at the terminal reaches only xtask, which stops
        // things in order.
        .process_group(0);
    cmd.spawn()
        .with_context(|| format!("starting {}", cmd.get_program().to_string_lossy()))
}

/// "restarting in 0.5s", or the crash loop spelt out.
fn plan(decision: &Decision, policy: &Policy) -> String {
    if decision.crash_loop() {
        format!(
            "crash loop: {} exits in a row, each within {} of its start; restarting in {} \
             (restart {} in all)",
            decision.in_a_row,
            seconds(policy.stable_after),
            seconds(decision.delay),
            decision.total
        )
    } else {
        format!(
            "restarting in {} (restart {} in all)",
            seconds(decision.delay),
            decision.total
        )
    }
}

/// `0.5s`, `12.3s`.
fn seconds(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
