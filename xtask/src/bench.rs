//! `cargo xtask bench`: Courier's replies/s, latency and CPU per note on a fixed work, in
//! well under two minutes once the release build is warm (the build is not counted).
//!
//! It starts a throwaway PostgreSQL cluster and nats-server, both at their durable defaults,
//! and the release builds of ingress, `--workers` workers, the sender (Telegram's budgets
//! raised out of the way) and the sandbox (its rate limits off) delivering webhooks to
//! ingress. Then `courier-sandbox load` runs each scenario against it:
//!
//! * **closed**: `--chats` chats (100) each say `/start`, then `--notes` notes (20), each
//!   after the previous one's reply;
//! * **open**: `--rate` notes per second (300) for `--duration` (10 s) over `--chats` (200).
//!
//! While the load runs, every process's CPU time is sampled from `/proc` ([`cpu`]); the CPU
//! used between the first note and the last reply, divided by the notes answered, is the CPU
//! per note of each process. Data lives in `target/courier-bench/run-<pid>/` (removed at the
//! end), logs in `target/courier-bench/logs/`.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::cpu::{Group, Sampler};
use crate::nats::Nats;
use crate::pg::Cluster;
use crate::proc::{self, describe, free_port, tail, POLL};
use crate::stack::{self, Stack};
use crate::{http, paths, provision};

/// The development bot token (`courier_common::config::dev::BOT_TOKEN`).
const BOT_TOKEN: &str = "100001:courier-dev-token";
/// The development webhook secret (`courier_common::config::dev::WEBHOOK_SECRET`).
const WEBHOOK_SECRET: &str = "courier-dev-secret";

const BINARIES: [&str; 4] = [
    "courier-ingress",
    "courier-worker",
    "courier-sender",
    "courier-sandbox",
];

/// How often the CPU times are sampled while a load runs.
const SAMPLE_EVERY: Duration = Duration::from_millis(50);

/// The groups whose CPU is Courier's cost (the sandbox, the driver, is reported apart).
const COURIER: [&str; 5] = ["nats-server", "postgres", "ingress", "worker", "sender"];

/// `cargo xtask bench`'s options.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Worker processes.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: u16,
    /// Which work to run.
    #[arg(long, value_enum, default_value_t = Scenario::All)]
    pub scenario: Scenario,
    /// Chats [default: 100 in the closed loop, 200 in the open loop].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    pub chats: Option<u32>,
    /// Closed loop: notes per chat, each after the previous one's reply.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..))]
    pub notes: u32,
    /// Open loop: notes per second over all chats.
    #[arg(long, default_value_t = 300.0, value_parser = positive)]
    pub rate: f64,
    /// Open loop: how long to send (`10s`, `1500ms`, `1m`).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Export every span (sampling 1.0) over OTLP/gRPC to the sandbox's receiver, to measure
    /// what tracing costs (compare with a run without).
    #[arg(long)]
    pub traces: bool,
    /// Run ingress, the workers and the sender from this directory instead of this tree's
    /// release build (for instance a copy of an earlier build's `target/release`), to compare
    /// two builds side by side on the same sandbox; nothing is built for them.
    #[arg(long)]
    pub services_from: Option<PathBuf>,
}

/// The work to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Each chat's next note after the previous reply.
    Closed,
    /// Notes at a fixed rate.
    Open,
    /// Closed, then open.
    All,
}

/// One scenario, as the load generator runs it.
struct Work {
    name: &'static str,
    /// For people: "100 chats × 20 notes".
    label: String,
    args: Vec<String>,
    chat_id_base: i64,
}

impl Options {
    fn works(&self) -> Vec<Work> {
        let mut works = Vec::new();
        if matches!(self.scenario, Scenario::Closed | Scenario::All) {
            let chats = self.chats.unwrap_or(100);
            works.push(Work {
                name: "closed",
                label: format!("{chats} chats × {} notes", self.notes),
                args: vec![
                    "--users".into(),
                    chats.to_string(),
                    "--notes-per-chat".into(),
                    self.notes.to_string(),
                ],
                chat_id_base: 1_000_000,
            });
        }
        if matches!(self.scenario, Scenario::Open | Scenario::All) {
            let chats = self.chats.unwrap_or(200);
            works.push(Work {
                name: "open",
                label: format!("{}/s, {chats} chats, {}", self.rate, seconds(self.duration)),
                args: vec![
                    "--users".into(),
                    chats.to_string(),
                    "--rate".into(),
                    self.rate.to_string(),
                    "--duration".into(),
                    format!("{}ms", self.duration.as_millis()),
                    // Creating a note takes a round trip to the sandbox; enough in flight that
                    // the rate never waits for one.
                    "--concurrency".into(),
                    "64".into(),
                ],
                chat_id_base: 2_000_000,
            });
        }
        works
    }
}

/// What one scenario measured.
struct Outcome {
    name: &'static str,
    label: String,
    /// The load generator's report.
    load: Value,
    /// Microseconds of CPU per answered note, per group (`COURIER` and `sandbox`).
    cpu_us: Vec<(String, f64)>,
}

impl Outcome {
    fn num(&self, key: &str) -> f64 {
        self.load[key].as_f64().unwrap_or(0.0)
    }

    fn latency(&self, key: &str) -> f64 {
        self.load["latency_ms"][key].as_f64().unwrap_or(0.0)
    }

    fn cpu(&self, group: &str) -> Option<f64> {
        self.cpu_us
            .iter()
            .find(|(name, _)| name == group)
            .map(|(_, us)| *us)
    }

    fn courier_cpu(&self) -> Option<f64> {
        COURIER.iter().map(|g| self.cpu(g)).sum()
    }

    /// Whether every note got exactly one reply.
    fn clean(&self) -> bool {
        self.num("lost") == 0.0 && self.num("duplicated") == 0.0 && self.num("errors") == 0.0
    }
}

pub fn run(options: Options) -> Result<ExitCode> {
    proc::catch_signals()?;
    let tools = provision::tools()?;
    build()?;
    if proc::interrupted() {
        return Ok(ExitCode::FAILURE);
    }
    let started = Instant::now();
    let base = paths::target().join("courier-bench");
    let logs = base.join("logs");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    remove_stale(&base, &tools);
    let dir = base.join(format!("run-{}", std::process::id()));
    fs::create_dir_all(&dir)?;

    let mut stack = Stack::default();
    let result = measure(&mut stack, &tools, &dir, &logs, &options);
    stack.shutdown();
    if let Err(err) = fs::remove_dir_all(&dir) {
        eprintln!("xtask: removing {}: {err}", dir.display());
    }
    let outcomes = match result {
        Ok(outcomes) => outcomes,
        Err(err) => {
            eprintln!("xtask: the logs are in {}/", paths::display(&logs));
            return Err(err);
        }
    };
    let wall = started.elapsed();
    println!("{}", table(&options, &outcomes, wall));
    if let Some(path) = &options.json {
        let doc = report_json(&options, &outcomes, wall);
        fs::write(path, serde_json::to_vec_pretty(&doc)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if outcomes.iter().all(Outcome::clean) {
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("xtask: some notes were lost, duplicated or not sent; see the table");
        Ok(ExitCode::FAILURE)
    }
}

/// `cargo build --release --bins`, as `xtask up --release` builds (the same packages, so the
/// same features: neither undoes the other's build). A warm build takes a second.
fn build() -> Result<()> {
    let mut cmd = proc::cargo();
    cmd.args(["build", "--release", "--bins"]);
    eprintln!("xtask: cargo build --release (not counted in the bench's time)");
    let status = cmd
        .current_dir(paths::root())
        .stdin(Stdio::null())
        .status()
        .context("running cargo build")?;
    if !status.success() && !proc::interrupted() {
        bail!("cargo build --release failed ({})", describe(status));
    }
    let bin_dir = paths::target().join("release");
    for name in BINARIES {
        if !bin_dir.join(name).is_file() && !proc::interrupted() {
            bail!(
                "cargo build --release --bins made no {}",
                paths::display(&bin_dir.join(name))
            );
        }
    }
    Ok(())
}

/// Starts the stack, runs the scenarios, returns what they measured.
fn measure(
    stack: &mut Stack,
    tools: &provision::Tools,
    dir: &Path,
    logs: &Path,
    options: &Options,
) -> Result<Vec<Outcome>> {
    let bin_dir = paths::target().join("release");
    // The services under test: this build's, or the ones given.
    let services_dir = options
        .services_from
        .clone()
        .unwrap_or_else(|| bin_dir.clone());
    for name in ["courier-ingress", "courier-worker", "courier-sender"] {
        if !services_dir.join(name).is_file() {
            bail!("no {} to run", paths::display(&services_dir.join(name)));
        }
    }
    // PostgreSQL and NATS at their durable defaults.
    let pg_log = logs.join("postgres.log");
    let _ = fs::remove_file(&pg_log);
    let mut pg = Cluster::new(tools.pg.clone(), dir.join("pg"), pg_log.clone())?;
    pg.init_if_needed()?;
    stack.start_postgres(&mut pg, &pg_log, &[])?;
    pg.create_database("courier")?;
    let nats = Nats::new(&tools.nats_server, &dir.join("nats"))?;
    stack.start_nats(&nats, &logs.join("nats.log"))?;
    stack.write_pids(dir);

    let mut common: Vec<(&str, String)> = vec![
        ("NATS_URL", nats.url()),
        ("DATABASE_URL", pg.url("courier")),
        ("COURIER_BOT_TOKEN", BOT_TOKEN.into()),
        ("COURIER_WEBHOOK_SECRET", WEBHOOK_SECRET.into()),
        ("NO_COLOR", "1".into()),
    ];
    let otlp = free_port()?;
    if options.traces {
        common.extend([
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{otlp}"),
            ),
            ("OTEL_TRACES_SAMPLER", "parentbased_always_on".into()),
        ]);
    }
    let addr = |port: u16| format!("127.0.0.1:{port}");
    let mut worker_ports = Vec::new();
    for i in 1..=options.workers {
        let health = free_port()?;
        worker_ports.push(health);
        let own = [
            ("COURIER_WORKER_HEALTH_ADDR", addr(health)),
            // Every note takes the note's path (the flood budget is still counted): a chat
            // of the closed loop says 21 things in a few seconds, more than 20 per 10 s.
            ("COURIER_WORKER_FLOOD_LIMIT", "1000000".into()),
        ];
        stack.spawn(
            &format!("worker-{i}"),
            &services_dir.join("courier-worker"),
            &common,
            &own,
            logs,
        )?;
    }
    let (ingress, sender, sandbox) = (free_port()?, free_port()?, free_port()?);
    stack.spawn(
        "ingress",
        &services_dir.join("courier-ingress"),
        &common,
        &[("COURIER_INGRESS_ADDR", addr(ingress))],
        logs,
    )?;
    stack.spawn(
        "sender",
        &services_dir.join("courier-sender"),
        &common,
        &[
            ("COURIER_SENDER_HEALTH_ADDR", addr(sender)),
            (
                "COURIER_TELEGRAM_API_URL",
                format!("http://{}", addr(sandbox)),
            ),
            // Telegram's budgets out of the way: the sandbox enforces none either.
            ("COURIER_SENDER_BOT_RATE", "1000000".into()),
            ("COURIER_SENDER_PRIVATE_CHAT_RATE", "100000".into()),
            ("COURIER_SENDER_GROUP_RATE_PER_MIN", "1000000".into()),
            ("COURIER_SENDER_RATE_HEADROOM", "0".into()),
        ],
        logs,
    )?;
    stack.spawn(
        "sandbox",
        &bin_dir.join("courier-sandbox"),
        &common,
        &[
            ("COURIER_SANDBOX_ADDR", addr(sandbox)),
            ("COURIER_SANDBOX_PORT", sandbox.to_string()),
            (
                "COURIER_SANDBOX_WEBHOOK_URL",
                format!("http://{}/webhook", addr(ingress)),
            ),
            ("COURIER_SANDBOX_RATE_LIMITS", "false".into()),
        ]
        .into_iter()
        .chain(
            options
                .traces
                .then(|| ("COURIER_SANDBOX_OTLP_ADDR", addr(otlp))),
        )
        .collect::<Vec<_>>(),
        logs,
    )?;
    stack.write_pids(dir);

    let mut ready: Vec<(String, u16)> = worker_ports
        .iter()
        .enumerate()
        .map(|(i, &p)| (format!("worker-{}", i + 1), p))
        .collect();
    ready.extend([
        ("ingress".to_owned(), ingress),
        ("sender".to_owned(), sender),
        ("sandbox".to_owned(), sandbox),
    ]);
    wait_ready(stack, &ready)?;
    wait_balanced(stack, &worker_ports)?;

    let groups = cpu_groups(stack)?;
    let sandbox_url = format!("http://{}", addr(sandbox));
    let mut outcomes = Vec::new();
    for work in options.works() {
        eprintln!("xtask: {}: {}…", work.name, work.label);
        outcomes.push(run_load(
            stack,
            &bin_dir,
            &sandbox_url,
            dir,
            logs,
            &groups,
            work,
        )?);
    }
    Ok(outcomes)
}

/// The processes whose CPU is measured, by group.
fn cpu_groups(stack: &Stack) -> Result<Vec<Group>> {
    let pid_of = |p: &Option<crate::supervise::Supervised>, what: &str| {
        p.as_ref()
            .and_then(|p| p.pid())
            .with_context(|| format!("{what} is not running"))
    };
    let mut groups = vec![
        Group {
            name: "nats-server".into(),
            pids: vec![pid_of(&stack.nats, "nats-server")?],
            tree: false,
        },
        Group {
            name: "postgres".into(),
            pids: vec![pid_of(&stack.pg, "PostgreSQL")?],
            tree: true,
        },
    ];
    for name in ["ingress", "worker", "sender", "sandbox"] {
        let pids: Vec<u32> = stack
            .services
            .iter()
            .filter(|s| s.name() == name || s.name().starts_with(&format!("{name}-")))
            .filter_map(|s| s.pid())
            .collect();
        if pids.is_empty() {
            bail!("{name} is not running");
        }
        groups.push(Group {
            name: name.into(),
            pids,
            tree: false,
        });
    }
    Ok(groups)
}

/// Runs one scenario's load generator, sampling CPU until it exits.
fn run_load(
    stack: &mut Stack,
    bin_dir: &Path,
    sandbox_url: &str,
    dir: &Path,
    logs: &Path,
    groups: &[Group],
    work: Work,
) -> Result<Outcome> {
    let report = dir.join(format!("load-{}.json", work.name));
    let log_path = logs.join(format!("load-{}.log", work.name));
    let log = fs::File::create(&log_path)?;
    let mut child = Command::new(bin_dir.join("courier-sandbox"))
        .arg("load")
        .args(["--sandbox-url", sandbox_url, "--quiet", "--json"])
        .arg(&report)
        .args(["--chat-id-base", &work.chat_id_base.to_string()])
        .args(&work.args)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting courier-sandbox load")?;
    let mut sampler = Sampler::new(groups.to_vec());
    let status = loop {
        sampler.sample();
        if let Some(status) = child.try_wait()? {
            break status;
        }
        let failure = if let Some((name, status, log)) = stack.first_ended() {
            Some(format!(
                "{name} exited ({}) during the load\n--- {} ---\n{}",
                describe(status),
                paths::display(&log),
                tail(&log, 20)
            ))
        } else if proc::interrupted() {
            Some("interrupted".to_owned())
        } else {
            None
        };
        if let Some(failure) = failure {
            let _ = child.kill();
            let _ = child.wait();
            bail!(failure);
        }
        sleep(SAMPLE_EVERY);
    };
    sampler.sample();
    let load: Value = fs::read(&report)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .with_context(|| {
            format!(
                "the load generator ({}) left no report\n--- {} ---\n{}",
                describe(status),
                paths::display(&log_path),
                tail(&log_path, 20)
            )
        })?;
    let replied = load["replied"].as_f64().unwrap_or(0.0);
    let (from, to) = (
        load["first_note_unix_ms"].as_f64().unwrap_or(0.0),
        load["last_reply_unix_ms"].as_f64().unwrap_or(0.0),
    );
    let cpu_us = match sampler.seconds_between(from, to) {
        Some(seconds) if replied > 0.0 => sampler
            .groups()
            .iter()
            .zip(seconds)
            .map(|(g, s)| (g.name.clone(), s * 1e6 / replied))
            .collect(),
        _ => Vec::new(),
    };
    Ok(Outcome {
        name: work.name,
        label: work.label,
        load,
        cpu_us,
    })
}

/// Waits until every service answers `/readyz` with 200.
pub(crate) fn wait_ready(stack: &mut Stack, services: &[(String, u16)]) -> Result<()> {
    let timeout = Duration::from_secs(60);
    let deadline = Instant::now() + timeout;
    let mut waiting: Vec<&(String, u16)> = services.iter().collect();
    while !waiting.is_empty() {
        check_alive(stack)?;
        waiting.retain(|(_, port)| {
            !matches!(
                http::get(([127, 0, 0, 1], *port).into(), "/readyz"),
                Ok((200, _))
            )
        });
        if Instant::now() >= deadline {
            let names: Vec<&str> = waiting.iter().map(|(n, _)| n.as_str()).collect();
            bail!("not ready within {timeout:?}: {}", names.join(", "));
        }
        sleep(POLL);
    }
    Ok(())
}

/// Waits until the workers own every partition between them, evenly (at most one apart),
/// so that no partition moves during a measurement.
fn wait_balanced(stack: &mut Stack, workers: &[u16]) -> Result<()> {
    let partitions: usize = std::env::var("COURIER_PARTITIONS")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(32);
    let timeout = Duration::from_secs(60);
    let deadline = Instant::now() + timeout;
    loop {
        check_alive(stack)?;
        let owned: Vec<usize> = workers
            .iter()
            .map(|&port| {
                http::get(([127, 0, 0, 1], port).into(), "/partitions")
                    .ok()
                    .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
                    .and_then(|v| v["partitions"].as_array().map(Vec::len))
                    .unwrap_or(0)
            })
            .collect();
        let (min, max) = (
            owned.iter().copied().min().unwrap_or(0),
            owned.iter().copied().max().unwrap_or(0),
        );
        if owned.iter().sum::<usize>() == partitions && max - min <= 1 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("the workers did not share the {partitions} partitions within {timeout:?}: {owned:?}");
        }
        sleep(POLL);
    }
}

/// Fails, with the end of its log, when a process of `stack` has exited; or on Ctrl-C.
pub(crate) fn check_alive(stack: &mut Stack) -> Result<()> {
    if let Some((name, status, log)) = stack.first_ended() {
        bail!(
            "{name} exited ({}) at start-up\n--- {} ---\n{}",
            describe(status),
            paths::display(&log),
            tail(&log, 20)
        );
    }
    if proc::interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

/// Removes the data of earlier runs that were killed hard, ending what they left running.
fn remove_stale(base: &Path, tools: &provision::Tools) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(Ok(pid)) = name.strip_prefix("run-").map(str::parse::<u32>) else {
            continue;
        };
        if proc::alive_named(pid, "xtask") {
            continue;
        }
        let dir = entry.path();
        stack::kill_leftovers(&dir);
        if dir.join("pg/data/postmaster.pid").exists() {
            if let Ok(pg) = Cluster::new(tools.pg.clone(), dir.join("pg"), dir.join("pg.log")) {
                if pg.is_running() {
                    let _ = pg.stop_any();
                }
            }
        }
        let _ = fs::remove_dir_all(&dir);
    }
}

/// The variables the bench sets for the services, whatever the environment says.
const SET: [&str; 16] = [
    "COURIER_BOT_TOKEN",
    "COURIER_WEBHOOK_SECRET",
    "COURIER_WORKER_HEALTH_ADDR",
    "COURIER_WORKER_FLOOD_LIMIT",
    "COURIER_INGRESS_ADDR",
    "COURIER_SENDER_HEALTH_ADDR",
    "COURIER_TELEGRAM_API_URL",
    "COURIER_SENDER_BOT_RATE",
    "COURIER_SENDER_PRIVATE_CHAT_RATE",
    "COURIER_SENDER_GROUP_RATE_PER_MIN",
    "COURIER_SENDER_RATE_HEADROOM",
    "COURIER_SANDBOX_ADDR",
    "COURIER_SANDBOX_PORT",
    "COURIER_SANDBOX_WEBHOOK_URL",
    "COURIER_SANDBOX_RATE_LIMITS",
    "COURIER_SANDBOX_OTLP_ADDR",
];

/// The other `COURIER_*` variables of the environment: the services inherit them, so they
/// may change what is measured.
fn inherited_env() -> Vec<(String, String)> {
    let mut vars: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| k.starts_with("COURIER_") && !SET.contains(&k.as_str()))
        .collect();
    vars.sort();
    vars
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The results as a table.
fn table(options: &Options, outcomes: &[Outcome], wall: Duration) -> String {
    let workers = match options.workers {
        1 => "1 worker".to_owned(),
        n => format!("{n} workers"),
    };
    let mut out = format!(
        "Courier bench: {workers}{}, release builds, PostgreSQL and nats-server at durable \
         defaults, {} cores\n",
        if options.traces {
            ", every span exported over OTLP"
        } else {
            ""
        },
        cores()
    );
    let env = inherited_env();
    if !env.is_empty() {
        let list: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        out += &format!("from the environment: {}\n", list.join(" "));
    }
    let width = outcomes
        .iter()
        .map(|o| o.name.len() + 2 + o.label.chars().count())
        .max()
        .unwrap_or(0)
        .max(4);
    out += &format!(
        "\n{:<width$}  {:>6}  {:>7}  {:>9}  {:>7}  {:>7}  {:>7}  {:>7}  {:>4}  {:>3}\n",
        "work",
        "notes",
        "replied",
        "replies/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "lost",
        "dup"
    );
    for o in outcomes {
        out += &format!(
            "{:<width$}  {:>6}  {:>7}  {:>9.1}  {:>7.1}  {:>7.1}  {:>7.1}  {:>7.1}  {:>4}  {:>3}\n",
            format!("{}: {}", o.name, o.label),
            o.num("messages_sent"),
            o.num("replied"),
            o.num("throughput_per_sec"),
            o.latency("p50"),
            o.latency("p90"),
            o.latency("p99"),
            o.latency("max"),
            o.num("lost"),
            o.num("duplicated"),
        );
        if o.num("errors") > 0.0 {
            out += &format!("  ({} notes could not be created)\n", o.num("errors"));
        }
    }
    let label = "CPU µs per note";
    let width = width.max(label.chars().count());
    out += &format!("\n{label:<width$}");
    for g in COURIER {
        out += &format!("  {g:>11}");
    }
    out += &format!("  {:>8}  | {:>7}\n", "Courier", "sandbox");
    for o in outcomes {
        let cell = |v: Option<f64>| v.map_or_else(|| "—".to_owned(), |v| format!("{v:.0}"));
        out += &format!(
            "{:<width$}{}  {:>8}  | {:>7}\n",
            o.name,
            COURIER
                .iter()
                .map(|g| format!("  {:>11}", cell(o.cpu(g))))
                .collect::<String>(),
            cell(o.courier_cpu()),
            cell(o.cpu("sandbox")),
        );
    }
    out += &format!(
        "\nCourier = the five before it, measured from the first note to the last reply; the \
         sandbox is the driver.\n{:.1} s wall time (the release build not counted); logs in {}/",
        wall.as_secs_f64(),
        paths::display(&paths::target().join("courier-bench/logs"))
    );
    out
}

/// The results as JSON (`--json`).
fn report_json(options: &Options, outcomes: &[Outcome], wall: Duration) -> Value {
    let scenarios: Vec<Value> = outcomes
        .iter()
        .map(|o| {
            let mut cpu: serde_json::Map<String, Value> = o
                .cpu_us
                .iter()
                .map(|(g, us)| (g.clone(), json!(us)))
                .collect();
            if let Some(total) = o.courier_cpu() {
                cpu.insert("courier".into(), json!(total));
            }
            json!({
                "scenario": o.name,
                "work": o.label,
                "load": o.load,
                "cpu_us_per_note": cpu,
            })
        })
        .collect();
    json!({
        "unix_time": SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        "workers": options.workers,
        "traces_exported": options.traces,
        "cores": cores(),
        "environment": inherited_env()
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect::<serde_json::Map<String, Value>>(),
        "wall_seconds": wall.as_secs_f64(),
        "scenarios": scenarios,
    })
}

/// `10s`, `1500ms`, `1m`, `1.5s`.
fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let (number, unit) = raw
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .map_or((raw, ""), |i| raw.split_at(i));
    let scale = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        _ => return Err(format!("`{raw}`: give a number with ms, s or m (`10s`)")),
    };
    number
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n > 0.0)
        .map(|n| Duration::from_secs_f64(n * scale))
        .ok_or_else(|| format!("`{raw}`: not a positive duration"))
}

fn positive(raw: &str) -> Result<f64, String> {
    raw.parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n > 0.0)
        .ok_or_else(|| format!("`{raw}`: not a positive number"))
}

/// `10s`, `1.5s`.
fn seconds(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn the_default_work_is_the_issues() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(flatten)]
            options: Options,
        }
        let works = Cli::parse_from(["bench"]).options.works();
        let args: Vec<(&str, String)> = works.iter().map(|w| (w.name, w.args.join(" "))).collect();
        assert_eq!(
            args,
            vec![
                ("closed", "--users 100 --notes-per-chat 20".to_owned()),
                (
                    "open",
                    "--users 200 --rate 300 --duration 10000ms --concurrency 64".to_owned()
                ),
            ]
        );
        let one = Cli::parse_from(["bench", "--scenario", "open", "--chats", "50"])
            .options
            .works();
        assert_eq!(one.len(), 1);
        assert!(one[0].args.join(" ").starts_with("--users 50 --rate 300"));
    }
}
