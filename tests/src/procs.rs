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

/// The whole pipeline as processes (sandbox, ingress, worker, sender) on a fresh NATS and
/// database, each service's log in a file: for tests that look at what processes do from the
/// outside (their logs, their exported spans, their `/metrics`).
pub struct ProcessStack {
    /// The NATS server.
    pub nats: crate::NatsServer,
    /// The database.
    pub pg: crate::Postgres,
    /// The sandbox's base URL.
    pub sandbox_url: String,
    /// The webhook URL (ingress).
    pub webhook_url: String,
    /// The services, with their log files, in start order: sandbox, ingress, worker, sender.
    pub services: Vec<(ServiceProcess, std::path::PathBuf)>,
    plan: Vec<(&'static str, Vec<(&'static str, String)>)>,
    http: reqwest::Client,
}

/// What a [`ProcessStack`] is started with.
#[derive(Debug, Clone, Default)]
pub struct ProcessStackOptions {
    /// A password to put into the services' database URL (the test cluster trusts local
    /// connections, so any works: it is there to be looked for).
    pub database_password: Option<&'static str>,
    /// Extra environment for every service but the sandbox.
    pub env: Vec<(&'static str, String)>,
}

impl ProcessStack {
    /// Starts the four services (`RUST_LOG=debug`, logs under a temporary directory) and
    /// returns once the sandbox answers.
    pub async fn start(options: ProcessStackOptions) -> Result<Self> {
        let nats = crate::NatsServer::start().await?;
        let pg = crate::Postgres::fresh().await?;
        let database_url = match options.database_password {
            Some(pw) => pg
                .url()
                .replacen("://postgres@", &format!("://postgres:{pw}@"), 1),
            None => pg.url().to_owned(),
        };
        let (sandbox_port, ingress_port) = (free_local_port()?, free_local_port()?);
        let sandbox_url = format!("http://127.0.0.1:{sandbox_port}");
        let webhook_url = format!("http://127.0.0.1:{ingress_port}/webhook");
        let dir = std::env::temp_dir().join(format!(
            "courier-procs-{}-{}",
            std::process::id(),
            pg.name()
        ));
        std::fs::create_dir_all(&dir)?;
        let common = |extra: &[(&'static str, String)], traced: bool| {
            let mut env = vec![
                ("NATS_URL", nats.url()),
                ("DATABASE_URL", database_url.clone()),
                ("COURIER_WEBHOOK_SECRET", crate::SECRET.to_owned()),
            ];
            env.extend_from_slice(extra);
            if traced {
                env.extend(options.env.iter().cloned());
            }
            env
        };
        let plan: Vec<(&'static str, Vec<(&'static str, String)>)> = vec![
            (
                "courier-sandbox",
                common(
                    &[
                        ("COURIER_SANDBOX_ADDR", format!("127.0.0.1:{sandbox_port}")),
                        ("COURIER_SANDBOX_WEBHOOK_URL", webhook_url.clone()),
                    ],
                    false,
                ),
            ),
            (
                "courier-ingress",
                common(
                    &[("COURIER_INGRESS_ADDR", format!("127.0.0.1:{ingress_port}"))],
                    true,
                ),
            ),
            (
                "courier-worker",
                common(
                    &[("COURIER_WORKER_HEALTH_ADDR", "127.0.0.1:0".into())],
                    true,
                ),
            ),
            (
                "courier-sender",
                common(
                    &[
                        ("COURIER_TELEGRAM_API_URL", sandbox_url.clone()),
                        ("COURIER_SENDER_HEALTH_ADDR", "127.0.0.1:0".into()),
                    ],
                    true,
                ),
            ),
        ];
        let mut services = Vec::new();
        for (name, env) in &plan {
            let log = dir.join(format!("{name}.log"));
            services.push((ServiceProcess::start_logged(name, env, &log).await?, log));
        }
        Ok(Self {
            nats,
            pg,
            sandbox_url,
            webhook_url,
            services,
            plan,
            http: reqwest::Client::new(),
        })
    }

    /// SIGKILLs the service `name` (`courier-worker`, …) and starts it again at once with the
    /// same environment, its log appended to the same file.
    pub async fn kill_and_restart(&mut self, name: &str) -> Result<()> {
        let i = self
            .plan
            .iter()
            .position(|(n, _)| *n == name)
            .with_context(|| format!("no service {name}"))?;
        self.services[i].0.kill().await?;
        let (name, env) = &self.plan[i];
        let log = self.services[i].1.clone();
        self.services[i].0 = ServiceProcess::start_appending(name, env, "debug", &log).await?;
        Ok(())
    }

    /// A user of chat `chat` (user id = chat id, "Ada") sends `text`; retried until the
    /// sandbox takes it (it may still be starting).
    pub async fn say(&self, chat: i64, text: &str) -> Result<()> {
        crate::eventually(
            "the sandbox takes a message",
            Duration::from_secs(60),
            || async move {
                let ok = self
                    .http
                    .post(format!("{}/sandbox/messages", self.sandbox_url))
                    .json(&serde_json::json!({
                        "chat_id": chat, "user_id": chat, "first_name": "Ada", "text": text
                    }))
                    .send()
                    .await
                    .is_ok_and(|r| r.status().is_success());
                Ok(ok.then_some(()))
            },
        )
        .await
    }

    /// Waits until chat `chat` has at least `n` messages from the bot; returns its transcript.
    pub async fn bot_replies(&self, chat: i64, n: usize) -> Result<Vec<crate::Line>> {
        crate::eventually(
            "the bot's replies",
            Duration::from_secs(60),
            || async move {
                let lines: Vec<crate::Line> = self
                    .http
                    .get(format!(
                        "{}/sandbox/chats/{chat}/messages",
                        self.sandbox_url
                    ))
                    .send()
                    .await?
                    .json()
                    .await?;
                Ok((lines.iter().filter(|l| l.from_bot).count() >= n).then_some(lines))
            },
        )
        .await
    }

    /// SIGTERM to every service, then waits for each to exit (30 s each at most).
    pub async fn stop(&mut self) -> Result<()> {
        for (s, _) in &self.services {
            s.sigterm().await?;
        }
        for (s, _) in &mut self.services {
            s.wait_exit(Duration::from_secs(30)).await?;
        }
        Ok(())
    }
}
