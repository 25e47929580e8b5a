//! `courier-admin` as a process beside a [`crate::Stack`] (or a [`crate::procs::ProcessStack`]),
//! and `courierctl` as a process against it: the admin tests drive every call the way an
//! operator does.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, Result};

use crate::procs::{binary, free_local_port, ServiceProcess};
use crate::{eventually, Stack, DEADLINE, SECRET};

/// The admin token of the test admin.
pub const ADMIN_TOKEN: &str = "test-admin-token_0123456789";

/// A running `courier-admin` process.
pub struct AdminProcess {
    /// The gRPC URL (`http://127.0.0.1:<port>`).
    pub url: String,
    /// The health and metrics base URL (`http://127.0.0.1:<port>`).
    pub health: String,
    /// Its log file (`RUST_LOG=debug`).
    pub log: PathBuf,
    /// The process.
    pub process: ServiceProcess,
    vars: Vec<(&'static str, String)>,
    ports: (u16, u16),
}

/// Where a `courier-admin` finds the pipeline.
#[derive(Debug, Clone)]
pub struct AdminTarget {
    /// NATS.
    pub nats_url: String,
    /// PostgreSQL.
    pub database_url: String,
    /// The Bot API (the sandbox).
    pub api_url: String,
    /// A name for its log directory (the database's).
    pub name: String,
}

/// What a `courierctl` run printed and how it exited.
#[derive(Debug)]
pub struct CtlOutput {
    /// The exit code (-1 when killed by a signal).
    pub code: i32,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl CtlOutput {
    /// Standard output as JSON (for `--json` runs).
    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_str(&self.stdout)
            .with_context(|| format!("courierctl printed no JSON: {self:?}"))
    }
}

impl AdminProcess {
    /// Starts `courier-admin` on the stack's NATS, database and sandbox, with the test
    /// webhook secret and [`ADMIN_TOKEN`], plus `env` (which wins); returns once it answers.
    pub async fn start(stack: &Stack, env: &[(&'static str, String)]) -> Result<Self> {
        Self::start_on(
            AdminTarget {
                nats_url: stack.nats.url(),
                database_url: stack.pg.url().to_owned(),
                api_url: stack.sandbox_url(),
                name: stack.pg.name().to_owned(),
            },
            env,
        )
        .await
    }

    /// [`AdminProcess::start`] beside a [`crate::procs::ProcessStack`].
    pub async fn start_beside(
        stack: &crate::procs::ProcessStack,
        env: &[(&'static str, String)],
    ) -> Result<Self> {
        Self::start_on(
            AdminTarget {
                nats_url: stack.nats.url(),
                database_url: stack.pg.url().to_owned(),
                api_url: stack.sandbox_url.clone(),
                name: stack.pg.name().to_owned(),
            },
            env,
        )
        .await
    }

    /// [`AdminProcess::start`] on `target`.
    pub async fn start_on(target: AdminTarget, env: &[(&'static str, String)]) -> Result<Self> {
        let (port, health_port) = (free_local_port()?, free_local_port()?);
        let dir = std::env::temp_dir().join(format!(
            "courier-admin-{}-{}",
            std::process::id(),
            target.name
        ));
        std::fs::create_dir_all(&dir)?;
        let log = dir.join(format!("courier-admin-{port}.log"));
        let mut vars: Vec<(&'static str, String)> = vec![
            ("NATS_URL", target.nats_url),
            ("DATABASE_URL", target.database_url),
            ("COURIER_WEBHOOK_SECRET", SECRET.to_owned()),
            ("COURIER_TELEGRAM_API_URL", target.api_url),
            ("COURIER_ADMIN_ADDR", format!("127.0.0.1:{port}")),
            (
                "COURIER_ADMIN_HEALTH_ADDR",
                format!("127.0.0.1:{health_port}"),
            ),
            ("COURIER_ADMIN_TOKEN", ADMIN_TOKEN.to_owned()),
        ];
        vars.extend(env.iter().cloned());
        let process = ServiceProcess::start_logged("courier-admin", &vars, &log).await?;
        let admin = Self {
            url: format!("http://127.0.0.1:{port}"),
            health: format!("http://127.0.0.1:{health_port}"),
            log,
            process,
            vars,
            ports: (port, health_port),
        };
        admin.ready().await?;
        Ok(admin)
    }

    /// Waits until it answers on both ports.
    async fn ready(&self) -> Result<()> {
        let (port, health_port) = self.ports;
        let http = reqwest::Client::new();
        let ready = format!("http://127.0.0.1:{health_port}/readyz");
        eventually("courier-admin ready", Duration::from_secs(60), || async {
            let ok = http
                .get(&ready)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            let listening = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok();
            Ok((ok && listening).then_some(()))
        })
        .await
    }

    /// SIGKILLs it, starts it again on the same ports (its log appended to the same file) and
    /// returns once it answers.
    pub async fn kill_and_restart(&mut self) -> Result<()> {
        self.process.kill().await?;
        self.restart().await
    }

    /// Starts it again (after it exited or was killed) on the same ports, its log appended to
    /// the same file; returns once it answers.
    pub async fn restart(&mut self) -> Result<()> {
        self.process =
            ServiceProcess::start_appending("courier-admin", &self.vars, "debug", &self.log)
                .await?;
        self.ready().await
    }

    /// Runs `courierctl <args>` against this admin with the test token.
    pub async fn ctl(&self, args: &[&str]) -> Result<CtlOutput> {
        ctl(&self.url, Some(ADMIN_TOKEN), args).await
    }

    /// Runs `courierctl --json <args>`, requires exit 0 and returns the JSON printed.
    pub async fn ctl_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.ctl(&all).await?;
        anyhow::ensure!(out.code == 0, "courierctl {args:?} failed: {out:?}");
        out.json()
    }

    /// Waits until `courierctl --json status` satisfies `check`; returns that status.
    pub async fn status_until(
        &self,
        what: &str,
        check: impl Fn(&serde_json::Value) -> bool,
    ) -> Result<serde_json::Value> {
        eventually(what, DEADLINE, || async {
            let s = self.ctl_json(&["status"]).await?;
            Ok(check(&s).then_some(s))
        })
        .await
    }
}

/// `courierctl <args>` with `COURIER_ADMIN_URL=url` and the token (`None`: no token in its
/// environment at all), not started yet.
pub async fn ctl_command(
    url: &str,
    token: Option<&str>,
    args: &[&str],
) -> Result<tokio::process::Command> {
    let bin = binary("courierctl").await?;
    let mut cmd = tokio::process::Command::new(bin);
    cmd.env("COURIER_ADMIN_URL", url)
        .env_remove("COURIER_ADMIN_TOKEN")
        .args(args)
        .kill_on_drop(true);
    if let Some(t) = token {
        cmd.env("COURIER_ADMIN_TOKEN", t);
    }
    Ok(cmd)
}

/// Runs `courierctl <args>` with `COURIER_ADMIN_URL=url` and the token (`None`: no token in
/// its environment at all).
pub async fn ctl(url: &str, token: Option<&str>, args: &[&str]) -> Result<CtlOutput> {
    let mut cmd = ctl_command(url, token, args).await?;
    let out = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .context("courierctl did not finish in 90 s")?
        .context("running courierctl")?;
    Ok(CtlOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}
