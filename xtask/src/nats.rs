//! A nats-server child process with JetStream.

use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::paths;
use crate::proc::{self, describe, tail, POLL};

/// A running nats-server.
#[derive(Debug)]
pub struct Nats {
    child: Option<Child>,
    pub port: u16,
    pub monitor_port: u16,
    log: PathBuf,
}

impl Nats {
    /// Starts `bin` on free ports with its store in `store`, logging to `log`, and waits
    /// until JetStream is healthy.
    pub fn start(bin: &Path, store: &Path, log: &Path) -> Result<Self> {
        std::fs::create_dir_all(store)?;
        let port = proc::free_port()?;
        let monitor_port = proc::free_port()?;
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["-m", &monitor_port.to_string(), "-js", "-sd"])
            .arg(store)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            // Its own process group: Ctrl-C at the terminal reaches only xtask, which stops
            // the services before NATS.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut nats = Self {
            child: Some(child),
            port,
            monitor_port,
            log: log.to_path_buf(),
        };
        nats.wait_healthy(Duration::from_secs(30))?;
        Ok(nats)
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn wait_healthy(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                bail!(
                    "nats-server exited ({}) before it was ready\n--- {} ---\n{}",
                    describe(status),
                    paths::display(&self.log),
                    tail(&self.log, 20)
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
                    paths::display(&self.log),
                    tail(&self.log, 20)
                );
            }
            sleep(POLL);
        }
    }

    /// Whether it ended (and how), without waiting.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    /// SIGTERM, up to 10 s, then SIGKILL.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            proc::terminate_all(&mut [&mut child], Duration::from_secs(10));
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `GET /healthz?js-enabled-only=true` answers `{"status":"ok"}`.
fn healthz(monitor_port: u16) -> bool {
    let check = || -> std::io::Result<bool> {
        let mut stream = TcpStream::connect_timeout(
            &([127, 0, 0, 1], monitor_port).into(),
            Duration::from_secs(1),
        )?;
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream
            .write_all(b"GET /healthz?js-enabled-only=true HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        let body: String = response
            .split_once("\r\n\r\n")
            .map(|(_, body)| body)
            .unwrap_or_default()
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        Ok(body.contains(r#""status":"ok""#))
    };
    check().unwrap_or(false)
}
