//! `courier-admin` as a process beside a [`crate::Stack`], and `courierctl` as a process
//! against it: the admin tests drive every call the way an operator does.

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
        let (port, health_port) = (free_local_port()?, free_local_port()?);
        let dir = std::env::temp_dir().join(format!(
            "courier-admin-{}-{}",
            std::process::id(),
            stack.pg.name()
        ));
        std::fs::create_dir_all(&dir)?;
        let log = dir.join(format!("courier-admin-{port}.log"));
        let mut vars: Vec<(&'static str, String)> = vec![
            ("NATS_URL", stack.nats.url()),
            ("DATABASE_URL", stack.pg.url().to_owned()),
            ("COURIER_WEBHOOK_SECRET", SECRET.to_owned()),
            ("COURIER_TELEGRAM_API_URL", stack.sandbox_url()),
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
        };
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
        .await?;
        Ok(admin)
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

/// Runs `courierctl <args>` with `COURIER_ADMIN_URL=url` and the token (`None`: no token in
/// its environment at all).
pub async fn ctl(url: &str, token: Option<&str>, args: &[&str]) -> Result<CtlOutput> {
    let bin = binary("courierctl").await?;
    let mut cmd = tokio::process::Command::new(bin);
    cmd.env("COURIER_ADMIN_URL", url)
        .env_remove("COURIER_ADMIN_TOKEN")
        .args(args)
        .kill_on_drop(true);
    if let Some(t) = token {
        cmd.env("COURIER_ADMIN_TOKEN", t);
    }
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
