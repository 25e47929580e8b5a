//! Project automation for Courier, run as `cargo xtask <command>`.
//!
//! * `cargo xtask provision` — install or locate nats-server and PostgreSQL; print their paths.
//! * `cargo xtask up [--workers N]` — run the whole stack locally (data under
//!   `target/courier-dev/`), restarting any process that dies, until Ctrl-C.
//! * `cargo xtask test [-- ARGS]` — run the workspace tests against a throwaway PostgreSQL
//!   cluster and a provisioned nats-server.
//! * `cargo xtask bench [--workers N] [--scenario closed|open|all] …` — Courier's replies/s,
//!   latency and CPU per note on a fixed work (release builds, a throwaway stack).
//! * `cargo xtask image` — build the container image with podman/buildah from a local Debian
//!   base (no daemon, no registry) and run the seed conversation with every service in it.
//!
//! It depends on no service crate so that it builds in seconds.

mod bench;
mod cpu;
mod http;
mod image;
mod nats;
mod paths;
mod pg;
mod proc;
mod provision;
mod restart;
mod stack;
mod supervise;
mod test;
mod up;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    about = "Courier's project automation",
    disable_help_subcommand = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Install or locate nats-server (≥ 2.11) and PostgreSQL, and print their paths.
    Provision,
    /// Run NATS, PostgreSQL and the four services locally until Ctrl-C or SIGTERM.
    ///
    /// A process that dies is started again after a backoff (0.5 s doubling to 30 s while
    /// it keeps dying within a minute of its start); the others keep running.
    ///
    /// Data is kept under target/courier-dev/ across runs; each process logs to
    /// target/courier-dev/logs/<name>.log. The sandbox (web chat) listens on
    /// 127.0.0.1:$COURIER_SANDBOX_PORT (default 8080); everything else on free ports.
    Up {
        /// Number of worker processes.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
        workers: u16,
        /// Build and run optimised binaries (for load measurements).
        #[arg(long)]
        release: bool,
    },
    /// Run the workspace tests (nextest when installed, else cargo test) with
    /// COURIER_TEST_PG_URL and COURIER_NATS_SERVER set; arguments after `--` are passed on.
    Test {
        /// Extra arguments for `cargo nextest run` / `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure Courier's replies/s, p50/p99 latency and CPU per note, in well under two
    /// minutes (the release build not counted).
    ///
    /// A throwaway PostgreSQL and nats-server (durable defaults), the release builds of
    /// ingress, the workers, the sender (Telegram's budgets raised) and the sandbox (rate
    /// limits off); then `courier-sandbox load` runs the closed loop (each chat's next note
    /// after the previous reply) and the open loop (notes at a fixed rate). Prints a table;
    /// the exit status is non-zero when a note was lost or duplicated.
    Bench(bench::Options),
    /// Build the container image here and run the seed conversation in it.
    ///
    /// No Docker daemon and no registry: installs podman, buildah, mmdebstrap, runc and
    /// uidmap when missing (apt-get, as root); makes a minimal Debian base with mmdebstrap
    /// once (kept in target/courier-image/storage, keyed by its recipe); builds the release
    /// binaries on the host and the Dockerfile's `runtime-prebuilt` target with buildah;
    /// then runs ingress, worker, sender and sandbox each in a container of the image (host
    /// network) against NATS and PostgreSQL on the host, sends /start, a note and /history
    /// through the sandbox and checks the replies. Prints each phase's time; removes the
    /// containers on the way out. Exit status non-zero on any failure.
    Image(image::Options),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Provision => provision::run(),
        Command::Up { workers, release } => up::run(workers, release),
        Command::Test { args } => test::run(&args),
        Command::Bench(options) => bench::run(options),
        Command::Image(options) => image::run(options),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
