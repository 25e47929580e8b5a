//! `cargo xtask test`: the workspace tests with one throwaway PostgreSQL cluster.

use std::fs;
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::thread::sleep;

use anyhow::{Context, Result};
use nix::sys::signal::Signal;

use crate::paths;
use crate::pg::Cluster;
use crate::proc::{self, describe, free_port, POLL};
use crate::provision;

/// Settings for a cluster whose data may be lost: tests only.
const FAST: [&str; 3] = [
    "fsync=off",
    "synchronous_commit=off",
    "full_page_writes=off",
];

pub fn run(args: &[String]) -> Result<ExitCode> {
    proc::catch_signals()?;
    let tools = provision::tools()?;
    if std::env::var_os("COURIER_SKIP_BROWSER").is_none() {
        provision::browser()?;
    }
    let base = paths::target().join("courier-test");
    fs::create_dir_all(&base)?;
    remove_stale(&base, &tools);

    let dir = base.join(format!("xtask-pg-{}", std::process::id()));
    let result = with_cluster(&tools, &dir, args);
    if let Err(err) = fs::remove_dir_all(&dir) {
        if err.kind() != std::io::ErrorKind::NotFound {
            eprintln!("xtask: removing {}: {err}", dir.display());
        }
    }
    result
}

fn with_cluster(tools: &provision::Tools, dir: &Path, args: &[String]) -> Result<ExitCode> {
    let mut pg = Cluster::new(
        tools.pg.clone(),
        dir.to_path_buf(),
        dir.join("postgres.log"),
    )?;
    pg.init_if_needed()?;
    pg.start(free_port()?, &FAST)?;
    let pg_url = pg.url("postgres");
    eprintln!("xtask: COURIER_TEST_PG_URL={pg_url}");
    eprintln!("xtask: COURIER_NATS_SERVER={}", tools.nats_server.display());

    // Tests that kill services run the real binaries: build them once, up front.
    let built = proc::cargo()
        .args(["build", "--bins"])
        .current_dir(paths::root())
        .status()
        .context("running cargo build --bins")?;
    if !built.success() {
        anyhow::bail!("cargo build --bins failed");
    }
    let nextest = proc::cargo()
        .args(["nextest", "--version"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let mut cmd = proc::cargo();
    if nextest {
        cmd.args(["nextest", "run"]);
    } else {
        cmd.arg("test");
    }
    cmd.args(["--workspace", "--no-fail-fast"])
        .args(args)
        .current_dir(paths::root())
        .env("COURIER_TEST_PG_URL", &pg_url)
        .env("COURIER_NATS_SERVER", &tools.nats_server);
    eprintln!(
        "xtask: cargo {} --workspace --no-fail-fast {}",
        if nextest { "nextest run" } else { "test" },
        args.join(" ")
    );
    let mut child = cmd.spawn().context("running the tests")?;
    // Ctrl-C at the terminal reaches the test run directly (same process group); a SIGTERM
    // sent to xtask alone is passed on.
    let mut forwarded = false;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if proc::interrupted() && !forwarded {
            proc::signal(child.id(), Signal::SIGTERM);
            forwarded = true;
        }
        sleep(POLL);
    };
    pg.stop()?;
    if !status.success() {
        eprintln!("xtask: tests failed ({})", describe(status));
    }
    Ok(ExitCode::from(proc::exit_code(status)))
}

/// Removes the clusters of earlier `cargo xtask test` runs that were killed hard.
fn remove_stale(base: &Path, tools: &provision::Tools) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(Ok(pid)) = name.strip_prefix("xtask-pg-").map(str::parse::<u32>) else {
            continue;
        };
        if proc::alive_named(pid, "xtask") {
            continue;
        }
        let dir = entry.path();
        if dir.join("data/postmaster.pid").exists() {
            if let Ok(pg) = Cluster::new(tools.pg.clone(), dir.clone(), dir.join("postgres.log")) {
                if pg.is_running() {
                    let _ = pg.stop_any();
                }
            }
        }
        let _ = fs::remove_dir_all(&dir);
    }
}
