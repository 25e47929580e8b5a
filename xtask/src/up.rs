//! `cargo xtask up`: the whole stack on this machine, until Ctrl-C or SIGTERM.
//!
//! Every process (PostgreSQL, nats-server, the services) is [`Supervised`]: one that dies is
//! started again, on the same ports, after the backoff of [`Policy::DEFAULT`], while the
//! others keep running. Ctrl-C or SIGTERM stops the services, then NATS, then PostgreSQL.

use std::fs;
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::thread::sleep;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::nats::Nats;
use crate::paths;
use crate::pg::Cluster;
use crate::proc::{self, describe, free_port, Lock, POLL};
use crate::provision;
use crate::stack::{self, Stack};

/// The development bot token (`courier_common::config::dev::BOT_TOKEN`).
const DEV_BOT_TOKEN: &str = "100001:courier-dev-token";
/// The development webhook secret (`courier_common::config::dev::WEBHOOK_SECRET`).
const DEV_WEBHOOK_SECRET: &str = "courier-dev-secret";
/// The development admin token (`courier_common::config::dev::ADMIN_TOKEN`).
const DEV_ADMIN_TOKEN: &str = "courier-dev-admin-token";
/// The admin API's port when free (`courierctl`'s default URL), else any free port.
const ADMIN_PORT: u16 = 50051;

const BINARIES: [&str; 6] = [
    "courier-ingress",
    "courier-worker",
    "courier-sender",
    "courier-sandbox",
    "courier-admin",
    "courierctl",
];

pub fn run(workers: u16, release: bool) -> Result<ExitCode> {
    proc::catch_signals()?;
    let tools = provision::tools()?;
    let dev = paths::target().join("courier-dev");
    let logs = dev.join("logs");
    fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let _lock = Lock::acquire(&dev.join("xtask.pid"), "cargo xtask up")?;
    stack::kill_leftovers(&dev);

    let sandbox_port = sandbox_port()?;

    let profile: &[&str] = if release { &["--release"] } else { &[] };
    eprintln!("xtask: cargo build --bins {}", profile.join(" "));
    let status = proc::cargo()
        .args(["build", "--bins"])
        .args(profile)
        .current_dir(paths::root())
        .stdin(Stdio::null())
        .status()
        .context("running cargo build")?;
    if proc::interrupted() {
        return Ok(ExitCode::SUCCESS);
    }
    if !status.success() {
        bail!("cargo build --bins failed ({})", describe(status));
    }
    let bin_dir = paths::target().join(if release { "release" } else { "debug" });
    for name in BINARIES {
        if !bin_dir.join(name).is_file() {
            bail!(
                "cargo build --bins made no {} — is there a [[bin]] named {name}?",
                paths::display(&bin_dir.join(name))
            );
        }
    }

    let mut stack = Stack::default();
    let result = start_and_wait(
        &mut stack,
        &tools,
        &dev,
        &logs,
        &bin_dir,
        workers,
        sandbox_port,
    );
    stack.shutdown();
    let _ = fs::remove_file(dev.join("pids"));
    match result {
        Ok(()) => {
            eprintln!("xtask: stopped");
            Ok(ExitCode::SUCCESS)
        }
        Err(err) if proc::interrupted() => {
            eprintln!("xtask: interrupted ({err:#}); stopped");
            Ok(ExitCode::SUCCESS)
        }
        Err(err) => Err(err),
    }
}

#[allow(clippy::too_many_arguments)]
fn start_and_wait(
    stack: &mut Stack,
    tools: &provision::Tools,
    dev: &Path,
    logs: &Path,
    bin_dir: &Path,
    workers: u16,
    sandbox_port: u16,
) -> Result<()> {
    // PostgreSQL at durable defaults, initialised once and reused.
    let mut pg = Cluster::new(tools.pg.clone(), dev.join("pg"), logs.join("postgres.log"))?;
    if pg.is_running() {
        eprintln!("xtask: stopping a PostgreSQL left running by an earlier run");
        pg.stop_any()?;
    }
    if pg.init_if_needed()? {
        eprintln!(
            "xtask: made a PostgreSQL cluster in {}",
            paths::display(&pg.data())
        );
    }
    stack.start_postgres(&mut pg, &logs.join("postgres.log"), &[])?;
    pg.create_database("courier")?;
    let database_url = pg.url("courier");

    let nats = Nats::new(&tools.nats_server, &dev.join("nats"))?;
    stack.start_nats(&nats, &logs.join("nats.log"))?;
    let nats_url = nats.url();
    let nats_monitor = nats.monitor_port;

    let mut common: Vec<(&str, String)> = vec![
        ("NATS_URL", nats_url.clone()),
        ("DATABASE_URL", database_url.clone()),
        // The logs go to files: no colour codes in them.
        ("NO_COLOR", "1".into()),
    ];
    let has = |var: &str| std::env::var_os(var).is_some_and(|v| !v.is_empty());
    let dev_mode = !(has("COURIER_BOT_TOKEN") && has("COURIER_WEBHOOK_SECRET"));
    if dev_mode {
        common.push(("COURIER_DEV", "1".into()));
    }

    // Traces: to the sandbox's OTLP receiver (browse them at /sandbox/traces), unless an
    // endpoint of the operator's own is configured.
    let own_collector = has("OTEL_EXPORTER_OTLP_ENDPOINT");
    let otlp_addr = format!("127.0.0.1:{}", free_port()?);
    if !own_collector {
        common.push(("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp_addr}")));
        common.push(("OTEL_BSP_SCHEDULE_DELAY", "500".into()));
    }

    let ingress_addr = format!("127.0.0.1:{}", free_port()?);
    let sender_addr = format!("127.0.0.1:{}", free_port()?);
    let sandbox_addr = format!("127.0.0.1:{sandbox_port}");
    let admin_port = if std::net::TcpListener::bind(("127.0.0.1", ADMIN_PORT)).is_ok() {
        ADMIN_PORT
    } else {
        free_port()?
    };
    let admin_addr = format!("127.0.0.1:{admin_port}");
    let admin_health_addr = format!("127.0.0.1:{}", free_port()?);
    // The admin token: the operator's, the development one, or one made for this run.
    let admin_token = match std::env::var("COURIER_ADMIN_TOKEN") {
        Ok(t) if !t.is_empty() => t,
        _ if dev_mode => DEV_ADMIN_TOKEN.to_owned(),
        _ => random_token()?,
    };
    let mut summary: Vec<(String, String)> = Vec::new();

    // The worker first: it runs the migrations.
    for i in 1..=workers {
        let addr = format!("127.0.0.1:{}", free_port()?);
        stack.spawn(
            &format!("worker-{i}"),
            &bin_dir.join("courier-worker"),
            &common,
            &[("COURIER_WORKER_HEALTH_ADDR", addr.clone())],
            logs,
        )?;
        summary.push((
            format!("worker-{i} metrics"),
            format!("http://{addr}/metrics"),
        ));
    }
    stack.spawn(
        "ingress",
        &bin_dir.join("courier-ingress"),
        &common,
        &[("COURIER_INGRESS_ADDR", ingress_addr.clone())],
        logs,
    )?;
    summary.push(("ingress".into(), format!("http://{ingress_addr}/webhook")));
    summary.push((
        "ingress metrics".into(),
        format!("http://{ingress_addr}/metrics"),
    ));
    stack.spawn(
        "sender",
        &bin_dir.join("courier-sender"),
        &common,
        &[
            ("COURIER_SENDER_HEALTH_ADDR", sender_addr.clone()),
            ("COURIER_TELEGRAM_API_URL", format!("http://{sandbox_addr}")),
        ],
        logs,
    )?;
    summary.push((
        "sender metrics".into(),
        format!("http://{sender_addr}/metrics"),
    ));
    stack.spawn(
        "sandbox",
        &bin_dir.join("courier-sandbox"),
        &common,
        &[
            ("COURIER_SANDBOX_ADDR", sandbox_addr.clone()),
            (
                "COURIER_SANDBOX_WEBHOOK_URL",
                format!("http://{ingress_addr}/webhook"),
            ),
            ("COURIER_SANDBOX_OTLP_ADDR", otlp_addr.clone()),
        ],
        logs,
    )?;
    summary.push((
        "sandbox metrics".into(),
        format!("http://{sandbox_addr}/metrics"),
    ));
    stack.spawn(
        "admin",
        &bin_dir.join("courier-admin"),
        &common,
        &[
            ("COURIER_ADMIN_ADDR", admin_addr.clone()),
            ("COURIER_ADMIN_HEALTH_ADDR", admin_health_addr.clone()),
            ("COURIER_ADMIN_TOKEN", admin_token.clone()),
            ("COURIER_TELEGRAM_API_URL", format!("http://{sandbox_addr}")),
        ],
        logs,
    )?;
    summary.push(("admin API (gRPC)".into(), format!("http://{admin_addr}")));
    summary.push((
        "admin metrics".into(),
        format!("http://{admin_health_addr}/metrics"),
    ));
    let traces = if own_collector {
        "exported to $OTEL_EXPORTER_OTLP_ENDPOINT".to_owned()
    } else {
        format!(
            "http://{sandbox_addr}/sandbox/traces  (one as a tree: \
             /sandbox/traces/<trace_id>/tree; OTLP/gRPC receiver {otlp_addr})"
        )
    };
    summary.push(("traces".into(), traces));
    stack.write_pids(dev);

    println!();
    // The workers inherit COURIER_BOT (default: the notes bot).
    let bot = std::env::var("COURIER_BOT").unwrap_or_else(|_| "notes".to_owned());
    println!("Courier is up, running the {bot} bot (COURIER_BOT; docs/BOTS.md).");
    println!("  web chat (sandbox)  http://{sandbox_addr}/");
    for (name, addr) in &summary {
        println!("  {name:<18}  {addr}");
    }
    println!("  NATS                {nats_url}  (monitor http://127.0.0.1:{nats_monitor})");
    println!("  PostgreSQL          {database_url}");
    println!(
        "  logs                {}/<name>.log  (nats, postgres, worker-N, ingress, sender, sandbox, admin)",
        paths::display(logs)
    );
    if dev_mode {
        println!(
            "  secrets             COURIER_DEV=1: token {DEV_BOT_TOKEN}, webhook secret \
             {DEV_WEBHOOK_SECRET}"
        );
    } else {
        println!("  secrets             COURIER_BOT_TOKEN and COURIER_WEBHOOK_SECRET from the environment");
    }
    let token_shown = if std::env::var("COURIER_ADMIN_TOKEN").is_ok_and(|t| !t.is_empty()) {
        "\"$COURIER_ADMIN_TOKEN\"".to_owned()
    } else {
        admin_token.clone()
    };
    println!(
        "  courierctl          export COURIER_ADMIN_URL=http://{admin_addr} COURIER_ADMIN_TOKEN={token_shown}"
    );
    println!(
        "                      then {}/courierctl status  (webhook info, chat show 1, dlq list, pause, resume)",
        paths::display(bin_dir)
    );
    println!("Try:");
    println!(
        "  curl -s localhost:{sandbox_port}/sandbox/messages -H 'content-type: application/json' \
         -d '{{\"chat_id\":1,\"user_id\":1,\"first_name\":\"Ada\",\"text\":\"/start\"}}'"
    );
    println!(
        "A process that dies is started again (0.5 s, doubling to 30 s while it keeps dying); \
         Ctrl-C stops everything."
    );

    loop {
        if proc::interrupted() {
            eprintln!("\nxtask: stopping");
            return Ok(());
        }
        if stack.poll(Instant::now()) {
            stack.write_pids(dev);
        }
        sleep(POLL);
    }
}

/// The sandbox's port: `$COURIER_SANDBOX_PORT`, default 8080; it must be free.
fn sandbox_port() -> Result<u16> {
    let port = match std::env::var("COURIER_SANDBOX_PORT") {
        Ok(raw) if !raw.is_empty() => raw
            .parse()
            .with_context(|| format!("COURIER_SANDBOX_PORT={raw:?} is not a port number"))?,
        _ => 8080,
    };
    if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
        bail!("port {port} on 127.0.0.1 is taken; choose another with COURIER_SANDBOX_PORT=<port>");
    }
    Ok(port)
}

/// A token for this run's admin API when the operator gave none (and it is not dev mode):
/// 32 hex digits from the kernel's random source.
fn random_token() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom for the admin token")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
