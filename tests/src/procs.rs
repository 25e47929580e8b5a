//! Courier services as separate processes, for tests that kill them.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use tokio::process::{Child, Command};

use crate::infra::workspace_root;

/// The path of a service binary, building it first when it is missing.
pub async fn binary(name: &str) -> Result<PathBuf> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let path = target.join("debug").join(name);
    if !path.exists() {
        let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(["build", "--bin", name])
            .current_dir(workspace_root())
            .status()
            .await
            .context("running cargo build")?;
        if !status.success() {
            bail!("cargo build --bin {name} failed");
        }
    }
    Ok(path)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// A `courier-worker` process.
pub struct WorkerProcess {
    /// Its membership id.
    pub id: String,
    /// Its health address (`/readyz`, `/partitions`, `/metrics`).
    pub health: String,
    child: Child,
}

impl WorkerProcess {
    /// Starts a worker process against the given NATS and database, with the test timings
    /// (heartbeat 300 ms, member TTL 1.5 s, priority timeout 1 s).
    pub async fn start(id: &str, nats_url: &str, database_url: &str) -> Result<Self> {
        Self::start_with(id, nats_url, database_url, &[]).await
    }

    /// Like [`WorkerProcess::start`], with extra environment variables (they win).
    pub async fn start_with(
        id: &str,
        nats_url: &str,
        database_url: &str,
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let bin = binary("courier-worker").await?;
        let port = free_port()?;
        let log = std::env::var_os("COURIER_TEST_LOG").is_some();
        let child = Command::new(bin)
            .env("NATS_URL", nats_url)
            .env("DATABASE_URL", database_url)
            .env("COURIER_BOT_TOKEN", crate::TOKEN)
            .env("COURIER_WORKER_ID", id)
            .env("COURIER_WORKER_HEALTH_ADDR", format!("127.0.0.1:{port}"))
            .env("COURIER_WORKER_HEARTBEAT", "300ms")
            .env("COURIER_WORKER_MEMBER_TTL", "1500ms")
            .env("COURIER_WORKER_PRIORITY_TIMEOUT", "1s")
            .env("COURIER_DB_POOL_SIZE", "4")
            .env("RUST_LOG", if log { "info" } else { "warn" })
            .stdout(if log { Stdio::inherit() } else { Stdio::null() })
            .stderr(if log { Stdio::inherit() } else { Stdio::null() })
            .envs(env.iter().copied())
            .kill_on_drop(true)
            .spawn()
            .context("starting courier-worker")?;
        let me = Self {
            id: id.to_owned(),
            health: format!("http://127.0.0.1:{port}"),
            child,
        };
        Ok(me)
    }

    /// The partitions it reports owning; `None` while it does not answer.
    pub async fn partitions(&self, http: &reqwest::Client) -> Option<Vec<u32>> {
        let resp = http
            .get(format!("{}/partitions", self.health))
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .ok()?;
        let body: serde_json::Value = resp.json().await.ok()?;
        serde_json::from_value(body["partitions"].clone()).ok()
    }

    /// SIGKILL: no goodbye, no unpin, no membership leave.
    pub async fn kill(&mut self) -> Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }

    /// SIGTERM and wait for a graceful exit.
    pub async fn terminate(&mut self) -> Result<()> {
        if let Some(pid) = self.child.id() {
            Command::new("kill").arg(pid.to_string()).status().await?;
        }
        tokio::time::timeout(Duration::from_secs(20), self.child.wait())
            .await
            .context("worker did not exit after SIGTERM")??;
        Ok(())
    }
}

/// Any Courier service as a process (`courier-ingress`, `courier-worker`, `courier-sender`,
/// `courier-sandbox`), with the test bot's token and the given environment.
pub struct ServiceProcess {
    /// The binary's name.
    pub name: String,
    child: Child,
}

impl ServiceProcess {
    /// Starts `name` with `env` (on top of `COURIER_BOT_TOKEN` and `RUST_LOG`).
    pub async fn start(name: &str, env: &[(&str, String)]) -> Result<Self> {
        let log = std::env::var_os("COURIER_TEST_LOG").is_some();
        let out = || if log { Stdio::inherit() } else { Stdio::null() };
        Self::spawn(name, env, if log { "info" } else { "warn" }, out(), out()).await
    }

    /// Starts `name` with `env` and `RUST_LOG=debug`, its stdout and stderr written to `log`.
    pub async fn start_logged(
        name: &str,
        env: &[(&str, String)],
        log: &std::path::Path,
    ) -> Result<Self> {
        let file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let err = file.try_clone()?;
        Self::spawn(name, env, "debug", file.into(), err.into()).await
    }

    async fn spawn(
        name: &str,
        env: &[(&str, String)],
        rust_log: &str,
        stdout: Stdio,
        stderr: Stdio,
    ) -> Result<Self> {
        let bin = binary(name).await?;
        let child = Command::new(bin)
            .env("COURIER_BOT_TOKEN", crate::TOKEN)
            .env("RUST_LOG", rust_log)
            .stdout(stdout)
            .stderr(stderr)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        Ok(Self {
            name: name.to_owned(),
            child,
        })
    }

    /// Starts `name` with `env` and `RUST_LOG=rust_log`, its stdout and stderr appended to
    /// `log` (so that the generations of a restarted service share one file).
    pub async fn start_appending(
        name: &str,
        env: &[(&str, String)],
        rust_log: &str,
        log: &Path,
    ) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = file.try_clone()?;
        Self::spawn(name, env, rust_log, file.into(), err.into()).await
    }

    /// Its process id (`None` once it has been reaped).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Its exit status, once it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL, and wait until it is gone.
    pub async fn kill(&mut self) -> Result<()> {
        self.child.kill().await.context("killing a service process")
    }

    /// Whether it is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM (does not wait).
    pub async fn sigterm(&self) -> Result<()> {
        if let Some(pid) = self.child.id() {
            Command::new("kill").arg(pid.to_string()).status().await?;
        }
        Ok(())
    }

    /// Waits for the exit, at most `deadline`; `None` if it is still running then (it is
    /// killed when dropped).
    pub async fn wait_exit(
        &mut self,
        deadline: Duration,
    ) -> Result<Option<std::process::ExitStatus>> {
        match tokio::time::timeout(deadline, self.child.wait()).await {
            Ok(status) => Ok(Some(status?)),
            Err(_) => Ok(None),
        }
    }
}

/// A free TCP port on 127.0.0.1.
pub fn free_local_port() -> Result<u16> {
    free_port()
}

/// Builds the given binaries of the workspace (`cargo build --bin …`), so that a run never
/// uses a stale one ([`binary`], which [`ServiceProcess`] uses, builds only what is missing).
pub async fn build_binaries(names: &[&str]) -> Result<()> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.arg("build").current_dir(workspace_root());
    // `cargo run` describes the package it runs in the environment; a build script that
    // watches one of these (ring's watches CARGO_MANIFEST_DIR) would rebuild everything.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CARGO_PKG_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
            ]
            .contains(&key.as_ref())
        {
            cmd.env_remove(key.as_ref());
        }
    }
    for name in names {
        cmd.args(["--bin", name]);
    }
    let status = cmd.status().await.context("running cargo build")?;
    if !status.success() {
        bail!("cargo build of {names:?} failed");
    }
    Ok(())
}
