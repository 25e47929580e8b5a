//! nats-server with JetStream: its command line and its health check. The process itself
//! is a [`Supervised`](crate::supervise::Supervised) one, restarted on the same ports and
//! store, so the services' `NATS_URL` stays right and they reconnect.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::http;
use crate::paths;
use crate::proc::{self, describe, tail, POLL};

/// How to run a nats-server: the ports are chosen once, so that every restart listens where
/// the clients expect it.
#[derive(Debug, Clone)]
pub struct Nats {
    bin: PathBuf,
    store: PathBuf,
    pub port: u16,
    pub monitor_port: u16,
}

impl Nats {
    /// `bin` on two free ports, with its JetStream store in `store` (created).
    pub fn new(bin: &Path, store: &Path) -> Result<Self> {
        std::fs::create_dir_all(store)?;
        Ok(Self {
            bin: bin.to_path_buf(),
            store: store.to_path_buf(),
            port: proc::free_port()?,
            monitor_port: proc::free_port()?,
        })
    }

    /// The command that runs it.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-m", &self.monitor_port.to_string(), "-js", "-sd"])
            .arg(&self.store);
        cmd
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Waits until JetStream is healthy; `ended` says whether the process died meanwhile.
    pub fn wait_healthy(
        &self,
        log: &Path,
        mut ended: impl FnMut() -> Option<ExitStatus>,
        timeout: Duration,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = ended() {
                bail!(
                    "nats-server exited ({}) before it was ready\n--- {} ---\n{}",
                    describe(status),
                    paths::display(log),
                    tail(log, 20)
                );
            }
            if healthz(self.monitor_port) {
                return Ok(());
            }
            if proc::interrupted() {
                bail!("interrupted");
            }
            if Instant::now() >= deadline {
                bail!(
                    "nats-server was not healthy within {timeout:?}\n--- {} ---\n{}",
                    paths::display(log),
                    tail(log, 20)
                );
            }
            sleep(POLL);
        }
    }
}

/// `GET /healthz?js-enabled-only=true` answers `{"status":"ok"}`.
fn healthz(monitor_port: u16) -> bool {
    http::get(
        ([127, 0, 0, 1], monitor_port).into(),
        "/healthz?js-enabled-only=true",
    )
    .is_ok_and(|(_, body)| {
        body.chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .contains(r#""status":"ok""#)
    })
}
