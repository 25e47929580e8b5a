//! Chaos: the whole pipeline as processes, users sending notes for a while, processes killed
//! under them, and then a check that nothing was lost, doubled, reordered or left unanswered.
//!
//! `cargo run -p courier-tests --example chaos -- [--duration 60s] [--chats 20] [--seed N]`
//!
//! What runs: a nats-server and a PostgreSQL cluster of their own (`infra`), the sandbox
//! (Telegram) as a process, a round-robin TCP balancer in this process in front of
//! `--ingresses` ingress processes (the sandbox's webhook URL), `--workers` worker processes
//! and one sender process, all built from the workspace first.
//!
//! What happens: every chat says `/start`, and once all are answered the chaos begins. For
//! `--duration`, every chat sends notes (`c<chat> n<k>`) through the sandbox's control API, so
//! Telegram's delivery semantics apply (one delivery in flight per chat, failed deliveries
//! retried). Meanwhile, every `--kill-every` or so (0.5–1.5×), a random worker, ingress or the
//! sender (the kind first, uniformly among `--kill`, then the replica) gets SIGKILL and is
//! started again 0.2–2 s later; once (at 25–40 % of the run), nats-server gets SIGKILL and is
//! started again on the same port and store 0.5–2 s later; once (at 55–70 %), PostgreSQL is
//! stopped in immediate mode and started again 0.5–2 s later. A process that exits on its own is started again after a second, like a
//! supervisor would, and reported.
//!
//! Then the notes stop, every process runs again, and the run waits until the pipeline has
//! been quiet for 3 s (nothing pending in the sandbox, the outbox or any JetStream consumer:
//! nothing more can arrive), noting when every note was stored and answered, or until
//! `--drain-timeout` (a pipeline that never drains is a failure). Then it checks, from
//! PostgreSQL and the sandbox's transcripts:
//!
//! * **lost**: a note the user sent that is not in `messages`;
//! * **stored twice**: a note in `messages` more than once;
//! * **out of order**: a chat's notes in `messages` (by id) not in the order sent;
//! * **unanswered**: a note whose message has no reply in the sandbox's transcript, or whose
//!   reply cannot be traced (outbox row → sender's ledger → the message in the transcript);
//! * **duplicate replies**: replies beyond one per message; allowed: only sends the ledger
//!   missed because a sender was SIGKILLed between the call and its ledger record (the Bot API
//!   call is at-least-once: see ARCHITECTURE.md, known limits), and no send the ledger missed
//!   without such a kill.
//!
//! It also counts the sends the sender's ledger cannot catch: bot messages in the transcript
//! that no `sent_messages` row names (Telegram accepted the call, the ledger never learned
//! of it), each put down to a cause from the fault timeline (and to the sender kill that
//! followed it), and which of Telegram's limits refused each 429 (from the sandbox's call
//! log). It prints a summary and exits non-zero when an invariant breaks; the services' logs
//! are kept then (`<target>/courier-chaos/`).
//!
//! The seed (`--seed`, printed) fixes the schedule: the faults, their targets and delays,
//! and the pacing of the notes. The interleaving with the processes' own timing is not
//! reproducible, so a replay reproduces the faults, not necessarily a failure.
//!
//! The services run with short timings so that a minute holds several hand-overs: workers
//! as in the tests (heartbeat 300 ms, member TTL 1.5 s, priority timeout 1 s, ack wait 5 s,
//! outbox relay every 500 ms after 2 s), the sender with a 3 s lease and a 5 s ack wait.
//! The sandbox enforces Telegram's rate limits (30/s per bot, 1/s per private chat), so keep
//! `--rate` at most `--chats` notes per second, and well below 30. Results of runs are in
//! docs/RELIABILITY.md.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _, Result};
use clap::Parser;
use courier_common::config::parse_duration;
use courier_common::topology;
use courier_tests::infra::{NatsServer, PgCluster};
use courier_tests::procs::{build_binaries, ServiceProcess};
use courier_tests::{SECRET, TOKEN};
use futures::StreamExt as _;
use serde::Deserialize;
use sqlx::PgPool;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// The bot id of [`TOKEN`].
const BOT_ID: i64 = 424242;
/// The first chat id; chats are `FIRST_CHAT..FIRST_CHAT + chats`.
const FIRST_CHAT: i64 = 7_000_001;
/// How often the drain conditions are polled.
const POLL: Duration = Duration::from_millis(250);
/// The pipeline counts as drained when nothing has been in flight for this long (longer than
/// the outbox relay's grace, 2 s, plus its interval, 0.5 s).
const QUIET: Duration = Duration::from_secs(3);
/// How long a process that exited on its own stays down before it is started again.
const RESTART_BACKOFF: Duration = Duration::from_secs(1);

/// A chaos run of the whole pipeline: see the module documentation.
#[derive(Debug, Clone, Parser)]
#[command(name = "chaos")]
struct Args {
    /// How long the users send notes while faults are injected.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Chats (one user each) sending notes.
    #[arg(long, default_value_t = 20)]
    chats: usize,
    /// Notes per second over all chats (each chat: `chats / rate` seconds apart on average).
    #[arg(long, default_value_t = 10.0)]
    rate: f64,
    /// Mean time between two process kills.
    #[arg(long, default_value = "4s", value_parser = parse_duration)]
    kill_every: Duration,
    /// Which kinds of process are killed (one of them, uniformly, then a replica of it).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "worker,ingress,sender"
    )]
    kill: Vec<Kind>,
    /// Worker processes.
    #[arg(long, default_value_t = 3)]
    workers: usize,
    /// Ingress processes (behind a round-robin balancer).
    #[arg(long, default_value_t = 2)]
    ingresses: usize,
    /// Seed of the schedule (faults, targets, delays, pacing); random when not given.
    #[arg(long)]
    seed: Option<u64>,
    /// Longest wait for the warm-up, and for the drain after the chaos.
    #[arg(long, default_value = "180s", value_parser = parse_duration)]
    drain_timeout: Duration,
    /// Keep the services' logs even when every invariant holds.
    #[arg(long)]
    keep_logs: bool,
}

/// A kind of process the chaos kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Kind {
    Worker,
    Ingress,
    Sender,
}

impl Args {
    fn validate(&self) -> Result<()> {
        if self.chats == 0 || self.workers == 0 || self.ingresses == 0 {
            bail!("--chats, --workers and --ingresses must be at least 1");
        }
        if !(self.rate > 0.0 && self.rate <= 25.0) {
            bail!("--rate must be in (0, 25]: the bot may send at most 30 messages a second");
        }
        if self.rate > self.chats as f64 {
            bail!(
                "--rate {} is above one note per chat per second ({} chats): a private chat \
                 may get at most one message a second, so the replies would never catch up",
                self.rate,
                self.chats
            );
        }
        if self.duration < Duration::from_secs(5) {
            bail!("--duration must be at least 5s");
        }
        if self.kill.is_empty() {
            bail!("--kill needs at least one of worker, ingress, sender");
        }
        if self.kill_every.is_zero() {
            bail!("--kill-every must be positive");
        }
        Ok(())
    }

    /// The command line that replays this run's schedule.
    fn replay(&self, seed: u64) -> String {
        format!(
            "cargo run -p courier-tests --example chaos -- --seed {seed} --duration {}ms \
             --chats {} --rate {} --kill {} --kill-every {}ms --workers {} --ingresses {}",
            self.duration.as_millis(),
            self.chats,
            self.rate,
            self.kill
                .iter()
                .map(|k| format!("{k:?}").to_lowercase())
                .collect::<Vec<_>>()
                .join(","),
            self.kill_every.as_millis(),
            self.workers,
            self.ingresses
        )
    }
}

// ---------------------------------------------------------------------------------------
// A seeded generator (SplitMix64): the same seed gives the same schedule on every machine
// and with every version of every crate.

#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in 0..n.
    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in [lo, hi).
    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        lo + (hi - lo).mul_f64(self.unit())
    }

    /// An independent generator for stream `n` of this seed.
    fn fork(seed: u64, n: u64) -> Self {
        let mut r = Rng(seed ^ n.wrapping_mul(0xD6E8_FEB8_6659_FD93));
        r.next_u64();
        r
    }
}

// ---------------------------------------------------------------------------------------
// The schedule

/// A process the chaos kills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Slot {
    Ingress(usize),
    Worker(usize),
    Sender,
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Slot::Ingress(i) => write!(f, "ingress-{}", i + 1),
            Slot::Worker(i) => write!(f, "worker-{}", i + 1),
            Slot::Sender => write!(f, "sender"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Kill(Slot),
    Start(Slot),
    KillNats,
    StartNats,
    StopPostgres,
    StartPostgres,
}

#[derive(Debug, Clone, Copy)]
struct Planned {
    at: Duration,
    action: Action,
}

/// The faults of a run, from its seed.
fn plan(args: &Args, seed: u64) -> Vec<Planned> {
    let mut rng = Rng::fork(seed, 0);
    let d = args.duration;
    let mut out = Vec::new();
    let nats_at = d.mul_f64(0.25 + 0.15 * rng.unit());
    let nats_down = rng.between(Duration::from_millis(500), Duration::from_secs(2));
    out.push(Planned {
        at: nats_at,
        action: Action::KillNats,
    });
    out.push(Planned {
        at: nats_at + nats_down,
        action: Action::StartNats,
    });
    let pg_at = d.mul_f64(0.55 + 0.15 * rng.unit());
    let pg_down = rng.between(Duration::from_millis(500), Duration::from_secs(2));
    out.push(Planned {
        at: pg_at,
        action: Action::StopPostgres,
    });
    out.push(Planned {
        at: pg_at + pg_down,
        action: Action::StartPostgres,
    });
    let mut down_until: HashMap<Slot, Duration> = HashMap::new();
    let mut t = args.kill_every.mul_f64(0.5 + rng.unit());
    let last = d.saturating_sub(Duration::from_secs(1));
    while t < last {
        let slot = match args.kill[rng.below(args.kill.len())] {
            Kind::Worker => Slot::Worker(rng.below(args.workers)),
            Kind::Ingress => Slot::Ingress(rng.below(args.ingresses)),
            Kind::Sender => Slot::Sender,
        };
        let delay = rng.between(Duration::from_millis(200), Duration::from_secs(2));
        if down_until.get(&slot).is_none_or(|u| *u <= t) {
            out.push(Planned {
                at: t,
                action: Action::Kill(slot),
            });
            out.push(Planned {
                at: t + delay,
                action: Action::Start(slot),
            });
            down_until.insert(slot, t + delay);
        }
        t += args.kill_every.mul_f64(0.5 + rng.unit());
    }
    out.sort_by_key(|p| p.at);
    out
}

// ---------------------------------------------------------------------------------------
// The running system

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Something that happened, for the summary.
#[derive(Debug, Clone)]
struct Event {
    unix_ms: i64,
    what: String,
}

/// One sender process's life: for putting unrecorded sends down to a cause.
#[derive(Debug, Clone)]
struct SenderTerm {
    started_ms: i64,
    ended_ms: Option<i64>,
    killed: bool,
}

/// When the faults happened, in Unix milliseconds.
#[derive(Debug, Default, Clone)]
struct Timeline {
    events: Vec<Event>,
    sender_terms: Vec<SenderTerm>,
    /// (killed, healthy again)
    nats_down: Vec<(i64, i64)>,
    /// (stop begun, accepting connections again)
    pg_down: Vec<(i64, i64)>,
    kills: BTreeMap<&'static str, usize>,
    unexpected_exits: Vec<String>,
}

impl Timeline {
    fn record(&mut self, what: String) {
        self.events.push(Event {
            unix_ms: unix_ms(),
            what,
        });
    }

    fn sender_kills(&self) -> usize {
        self.kills.get("sender").copied().unwrap_or(0)
    }
}

struct Proc {
    process: Option<ServiceProcess>,
    generation: u32,
    wanted_up: bool,
    restart_at: Option<Instant>,
}

/// Every process of the run.
struct System {
    logs: PathBuf,
    nats: NatsServer,
    pg: PgCluster,
    db_url: String,
    sandbox: ServiceProcess,
    sandbox_url: String,
    ingress_ports: Vec<u16>,
    procs: BTreeMap<Slot, Proc>,
    timeline: Timeline,
    nats_killed_ms: i64,
    pg_stopped_ms: i64,
}

impl System {
    async fn start(args: &Args, logs: &Path) -> Result<Self> {
        let nats = NatsServer::start().await?;
        let pg = PgCluster::start().await?;
        let db = pg.fresh_database().await?;

        // The balancer in front of the ingresses: the webhook URL the sandbox posts to.
        let ingress_ports = (0..args.ingresses)
            .map(|_| free_port())
            .collect::<Result<Vec<_>>>()?;
        let balancer = TcpListener::bind("127.0.0.1:0").await?;
        let webhook = format!("http://{}/webhook", balancer.local_addr()?);
        tokio::spawn(balance(balancer, ingress_ports.clone()));

        let sandbox_port = free_port()?;
        let sandbox_url = format!("http://127.0.0.1:{sandbox_port}");
        let sandbox = ServiceProcess::start_appending(
            "courier-sandbox",
            &[
                ("COURIER_SANDBOX_ADDR", format!("127.0.0.1:{sandbox_port}")),
                ("COURIER_SANDBOX_WEBHOOK_URL", webhook),
                ("COURIER_BOT_TOKEN", TOKEN.into()),
                ("COURIER_WEBHOOK_SECRET", SECRET.into()),
            ],
            "info",
            &logs.join("sandbox.log"),
        )
        .await?;

        let mut slots = Vec::new();
        slots.extend((0..args.ingresses).map(Slot::Ingress));
        slots.extend((0..args.workers).map(Slot::Worker));
        slots.push(Slot::Sender);
        let mut system = Self {
            logs: logs.to_owned(),
            nats,
            pg,
            db_url: db.url().to_owned(),
            sandbox,
            sandbox_url,
            ingress_ports,
            procs: slots
                .into_iter()
                .map(|s| {
                    (
                        s,
                        Proc {
                            process: None,
                            generation: 0,
                            wanted_up: true,
                            restart_at: None,
                        },
                    )
                })
                .collect(),
            timeline: Timeline::default(),
            nats_killed_ms: 0,
            pg_stopped_ms: 0,
        };
        let http = reqwest::Client::new();
        await_condition(
            "the sandbox to be ready",
            Duration::from_secs(60),
            || async {
                let r = http
                    .get(format!("{}/readyz", system.sandbox_url))
                    .send()
                    .await?;
                Ok(r.status().is_success().then_some(()))
            },
        )
        .await?;
        let slots: Vec<Slot> = system.procs.keys().copied().collect();
        for slot in slots {
            system.spawn(slot).await?;
        }
        Ok(system)
    }

    fn env(&self, slot: Slot, generation: u32) -> Result<Vec<(&'static str, String)>> {
        let mut env: Vec<(&'static str, String)> = vec![
            ("NATS_URL", self.nats.url()),
            ("COURIER_BOT_TOKEN", TOKEN.into()),
        ];
        match slot {
            Slot::Ingress(i) => env.extend([
                (
                    "COURIER_INGRESS_ADDR",
                    format!("127.0.0.1:{}", self.ingress_ports[i]),
                ),
                ("COURIER_WEBHOOK_SECRET", SECRET.into()),
            ]),
            Slot::Worker(i) => env.extend([
                ("DATABASE_URL", self.db_url.clone()),
                ("COURIER_WORKER_ID", format!("w{}-{generation}", i + 1)),
                (
                    "COURIER_WORKER_HEALTH_ADDR",
                    format!("127.0.0.1:{}", free_port()?),
                ),
                ("COURIER_WORKER_HEARTBEAT", "300ms".into()),
                ("COURIER_WORKER_MEMBER_TTL", "1500ms".into()),
                ("COURIER_WORKER_PRIORITY_TIMEOUT", "1s".into()),
                ("COURIER_WORKER_ACK_WAIT", "5s".into()),
                ("COURIER_OUTBOX_RELAY_INTERVAL", "500ms".into()),
                ("COURIER_OUTBOX_RELAY_GRACE", "2s".into()),
                ("COURIER_DB_POOL_SIZE", "4".into()),
            ]),
            Slot::Sender => env.extend([
                ("DATABASE_URL", self.db_url.clone()),
                ("COURIER_TELEGRAM_API_URL", self.sandbox_url.clone()),
                (
                    "COURIER_SENDER_HEALTH_ADDR",
                    format!("127.0.0.1:{}", free_port()?),
                ),
                ("COURIER_SENDER_LEASE_TTL", "3s".into()),
                ("COURIER_SENDER_ACK_WAIT", "5s".into()),
                ("COURIER_SENDER_REQUEST_TIMEOUT", "5s".into()),
                ("COURIER_SENDER_DB_POOL_SIZE", "4".into()),
            ]),
        }
        Ok(env)
    }

    async fn spawn(&mut self, slot: Slot) -> Result<()> {
        let generation = self.procs[&slot].generation + 1;
        let env = self.env(slot, generation)?;
        let program = match slot {
            Slot::Ingress(_) => "courier-ingress",
            Slot::Worker(_) => "courier-worker",
            Slot::Sender => "courier-sender",
        };
        let log = self.logs.join(format!("{slot}.log"));
        {
            use std::io::Write as _;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)?;
            writeln!(
                f,
                "===== chaos: {slot} generation {generation} starts at {} (unix ms)",
                unix_ms()
            )?;
        }
        let process = ServiceProcess::start_appending(program, &env, "info", &log).await?;
        let pid = process.pid().unwrap_or_default();
        let p = self.procs.get_mut(&slot).expect("known slot");
        p.process = Some(process);
        p.generation = generation;
        p.restart_at = None;
        if slot == Slot::Sender {
            self.timeline.sender_terms.push(SenderTerm {
                started_ms: unix_ms(),
                ended_ms: None,
                killed: false,
            });
        }
        if generation > 1 {
            self.timeline.record(format!("started {slot} (pid {pid})"));
        }
        Ok(())
    }

    async fn perform(&mut self, action: Action) -> Result<()> {
        match action {
            Action::Kill(slot) => {
                let p = self.procs.get_mut(&slot).expect("known slot");
                p.wanted_up = false;
                p.restart_at = None;
                if let Some(mut process) = p.process.take() {
                    let pid = process.pid().unwrap_or_default();
                    let now = unix_ms();
                    process.kill().await?;
                    let kind = match slot {
                        Slot::Ingress(_) => "ingress",
                        Slot::Worker(_) => "worker",
                        Slot::Sender => "sender",
                    };
                    *self.timeline.kills.entry(kind).or_default() += 1;
                    if slot == Slot::Sender {
                        if let Some(term) = self.timeline.sender_terms.last_mut() {
                            term.ended_ms = Some(now);
                            term.killed = true;
                        }
                    }
                    self.timeline.events.push(Event {
                        unix_ms: now,
                        what: format!("SIGKILL {slot} (pid {pid})"),
                    });
                }
            }
            Action::Start(slot) => {
                self.procs.get_mut(&slot).expect("known slot").wanted_up = true;
                if self.procs[&slot].process.is_none() {
                    self.spawn(slot).await?;
                }
            }
            Action::KillNats => {
                self.nats.kill().await?;
                self.nats_killed_ms = unix_ms();
                self.timeline.record("SIGKILL nats-server".into());
            }
            Action::StartNats => {
                let t = Instant::now();
                self.nats.restart().await?;
                self.timeline
                    .nats_down
                    .push((self.nats_killed_ms, unix_ms()));
                self.timeline.record(format!(
                    "nats-server started again (same port and store), healthy after {:.2} s",
                    t.elapsed().as_secs_f64()
                ));
            }
            Action::StopPostgres => {
                self.pg_stopped_ms = unix_ms();
                self.pg.stop_immediate().await?;
                self.timeline
                    .record("PostgreSQL stopped (pg_ctl stop -m immediate)".into());
            }
            Action::StartPostgres => {
                let t = Instant::now();
                self.pg.start_again().await?;
                self.timeline.pg_down.push((self.pg_stopped_ms, unix_ms()));
                self.timeline.record(format!(
                    "PostgreSQL started again (crash recovery), accepting connections after {:.2} s",
                    t.elapsed().as_secs_f64()
                ));
            }
        }
        Ok(())
    }

    /// Starts again, after [`RESTART_BACKOFF`], what exited without being killed.
    async fn supervise(&mut self) -> Result<()> {
        if let Some(status) = self.sandbox.exited() {
            bail!("the sandbox exited ({status}); see its log");
        }
        let now = Instant::now();
        let mut to_start = Vec::new();
        for (slot, p) in self.procs.iter_mut() {
            if let Some(process) = p.process.as_mut() {
                if let Some(status) = process.exited() {
                    p.process = None;
                    p.restart_at = Some(now + RESTART_BACKOFF);
                    let what = format!("{slot} exited on its own ({status})");
                    self.timeline.unexpected_exits.push(what.clone());
                    self.timeline.record(what);
                    if *slot == Slot::Sender {
                        if let Some(term) = self.timeline.sender_terms.last_mut() {
                            term.ended_ms = Some(unix_ms());
                        }
                    }
                }
            } else if p.wanted_up && p.restart_at.is_some_and(|at| at <= now) {
                to_start.push(*slot);
            }
        }
        for slot in to_start {
            self.spawn(slot).await?;
        }
        Ok(())
    }

    /// Runs the schedule from `t0`, supervising meanwhile; returns when every action is done
    /// and every process runs.
    async fn run_schedule(&mut self, plan: &[Planned], t0: Instant) -> Result<()> {
        let mut next = 0;
        loop {
            self.supervise().await?;
            let all_up = self.procs.values().all(|p| p.process.is_some());
            if next == plan.len() && all_up {
                return Ok(());
            }
            match plan.get(next) {
                Some(p) if Instant::now() >= t0 + p.at => {
                    self.perform(p.action).await?;
                    next += 1;
                }
                Some(p) => {
                    tokio::time::sleep_until((t0 + p.at).min(Instant::now() + POLL)).await;
                }
                None => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// Supervises (restarts what exits) until `stop` is cancelled.
    async fn supervise_until(&mut self, stop: &courier_common::CancellationToken) -> Result<()> {
        while !stop.is_cancelled() {
            self.supervise().await?;
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(POLL) => {}
            }
        }
        Ok(())
    }
}

/// A round-robin TCP balancer: each connection goes to the next ingress that accepts it;
/// when none does, the connection is closed (the sandbox retries, as Telegram does).
async fn balance(listener: TcpListener, ports: Vec<u16>) {
    let next = Arc::new(AtomicUsize::new(0));
    loop {
        let Ok((mut inbound, _)) = listener.accept().await else {
            continue;
        };
        let ports = ports.clone();
        let first = next.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            for k in 0..ports.len() {
                let port = ports[(first + k) % ports.len()];
                if let Ok(mut outbound) = TcpStream::connect(("127.0.0.1", port)).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    return;
                }
            }
        });
    }
}

// ---------------------------------------------------------------------------------------
// Users

/// A note as the user sent it.
#[derive(Debug, Clone)]
struct SentNote {
    chat: i64,
    k: usize,
    text: String,
    update_id: i64,
}

async fn say(http: &reqwest::Client, sandbox: &str, chat: i64, text: &str) -> Result<i64> {
    let resp: serde_json::Value = http
        .post(format!("{sandbox}/sandbox/messages"))
        .timeout(Duration::from_secs(10))
        .json(&serde_json::json!({
            "chat_id": chat, "user_id": chat, "first_name": format!("User{chat}"), "text": text
        }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    resp["update_id"]
        .as_i64()
        .context("no update_id in the sandbox's answer")
}

/// One user: notes `c<chat> n<k>` at seeded intervals until `duration` has passed since `t0`.
async fn user(
    http: reqwest::Client,
    sandbox: String,
    chat: i64,
    mean: Duration,
    mut rng: Rng,
    t0: Instant,
    duration: Duration,
) -> Result<Vec<SentNote>> {
    let mut sent = Vec::new();
    let mut at = t0 + mean.mul_f64(rng.unit());
    let end = t0 + duration;
    while at < end {
        tokio::time::sleep_until(at).await;
        let k = sent.len() + 1;
        let text = format!("c{chat} n{k}");
        let update_id = say(&http, &sandbox, chat, &text)
            .await
            .with_context(|| format!("chat {chat} sending note {k} to the sandbox"))?;
        sent.push(SentNote {
            chat,
            k,
            text,
            update_id,
        });
        at += mean.mul_f64(0.5 + rng.unit());
    }
    Ok(sent)
}

// ---------------------------------------------------------------------------------------
// Waiting and reading the outcome

/// Polls `check` every [`POLL`] until it returns `Some`, or fails after `deadline`.
async fn await_condition<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let end = Instant::now() + deadline;
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() >= end {
            match last_err {
                Some(e) => {
                    bail!("timed out after {deadline:?} waiting for {what}; last error: {e:#}")
                }
                None => bail!("timed out after {deadline:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

#[derive(Debug, Clone, Deserialize)]
struct Latency {
    replies: u32,
}

/// How many user messages (since `since_ms`) have no reply yet, and how many there are.
async fn unanswered(
    http: &reqwest::Client,
    sandbox: &str,
    since_ms: i64,
) -> Result<(usize, usize)> {
    let all: Vec<Latency> = http
        .get(format!("{sandbox}/sandbox/latency?since_ms={since_ms}"))
        .timeout(Duration::from_secs(10))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok((all.iter().filter(|l| l.replies == 0).count(), all.len()))
}

#[derive(Debug, Clone, Deserialize)]
struct Line {
    message_id: i64,
    from_bot: bool,
    text: String,
    at_unix_ms: i64,
    #[serde(default)]
    replies: Option<u32>,
}

/// One entry of the sandbox's call log.
#[derive(Debug, Clone, Deserialize)]
struct Call {
    at_unix_ms: i64,
    status: u16,
}

async fn transcript(http: &reqwest::Client, sandbox: &str, chat: i64) -> Result<Vec<Line>> {
    Ok(http
        .get(format!("{sandbox}/sandbox/chats/{chat}/messages"))
        .timeout(Duration::from_secs(10))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

async fn sandbox_stats(http: &reqwest::Client, sandbox: &str) -> Result<serde_json::Value> {
    Ok(http
        .get(format!("{sandbox}/sandbox/stats"))
        .timeout(Duration::from_secs(10))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

/// What is still on its way: `None` when nothing is anywhere in the pipeline.
async fn in_flight(
    http: &reqwest::Client,
    sandbox: &str,
    db: &PgPool,
    js: &async_nats::jetstream::Context,
) -> Result<Option<String>> {
    let stats = sandbox_stats(http, sandbox).await?;
    let pending = stats["pending_updates"].as_u64().unwrap_or(1)
        + stats["deliveries_in_flight"].as_u64().unwrap_or(1);
    if pending > 0 {
        return Ok(Some(format!("{pending} updates in the sandbox")));
    }
    let unpublished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(db)
            .await?;
    if unpublished > 0 {
        return Ok(Some(format!("{unpublished} unpublished outbox rows")));
    }
    for stream in [topology::UPDATES_STREAM, topology::OUTBOUND_STREAM] {
        let stream = js.get_stream(stream).await?;
        let mut consumers = stream.consumers();
        while let Some(info) = consumers.next().await {
            let info = info?;
            if info.num_pending > 0 || info.num_ack_pending > 0 {
                return Ok(Some(format!(
                    "consumer {}: {} pending, {} unacknowledged",
                    info.name, info.num_pending, info.num_ack_pending
                )));
            }
        }
    }
    Ok(None)
}

/// When each drain condition was first met, from the end of the chaos.
#[derive(Debug, Default)]
struct Drain {
    stored: Option<Duration>,
    answered: Option<Duration>,
    /// When the pipeline went quiet (and stayed so for [`QUIET`]).
    quiet: Option<Duration>,
    /// What was still in flight at the deadline.
    in_flight: String,
}

/// Polls until the pipeline is quiet for [`QUIET`] or `deadline` passes, noting when every
/// note was stored and when every note was answered.
async fn drain(
    http: &reqwest::Client,
    sandbox: &str,
    db: &PgPool,
    js: &async_nats::jetstream::Context,
    notes: usize,
    deadline: Duration,
) -> Drain {
    let start = Instant::now();
    let mut d = Drain::default();
    let mut quiet_since: Option<Instant> = None;
    loop {
        // What is in flight first: once nothing is, the checks below see the final state.
        match in_flight(http, sandbox, db, js).await {
            Ok(None) => {
                let since = *quiet_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= QUIET {
                    d.quiet = Some(since - start);
                }
            }
            Ok(Some(what)) => {
                quiet_since = None;
                d.in_flight = what;
            }
            Err(e) => {
                quiet_since = None;
                d.in_flight = format!("{e:#}");
            }
        }
        if d.stored.is_none() {
            let stored: Result<i64, _> =
                sqlx::query_scalar("SELECT count(DISTINCT text) FROM messages")
                    .fetch_one(db)
                    .await;
            if stored.is_ok_and(|n| n >= notes as i64) {
                d.stored = Some(start.elapsed());
            }
        }
        if d.answered.is_none() {
            if let Ok((0, _)) = unanswered(http, sandbox, 0).await {
                d.answered = Some(start.elapsed());
            }
        }
        if d.quiet.is_some() || start.elapsed() >= deadline {
            return d;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The outcome of the run, from PostgreSQL and the sandbox.
#[derive(Debug, Default)]
struct Outcome {
    notes: usize,
    lost: Vec<String>,
    doubled: usize,
    out_of_order: usize,
    chats_out_of_order: usize,
    phantom: usize,
    unanswered_sandbox: usize,
    unanswered_traced: Vec<String>,
    duplicate_replies: usize,
    duplicate_replies_sandbox: u64,
    /// Bot messages no ledger row names.
    unrecorded: Vec<Unrecorded>,
    /// 429 answers by the limit that refused the call.
    refused: BTreeMap<&'static str, usize>,
    /// For each sender kill: how long until the next accepted `sendMessage` (`None`: none).
    reply_gaps: Vec<Option<Duration>>,
    ledger_without_message: usize,
    doubled_outbox: usize,
    dead_letters: u64,
    webhook_failures: u64,
    responses_429: u64,
}

impl Outcome {
    fn broken(&self, sender_kills: usize) -> Vec<String> {
        let mut out = Vec::new();
        if !self.lost.is_empty() {
            out.push(format!("{} notes lost", self.lost.len()));
        }
        if self.doubled > 0 {
            out.push(format!("{} notes stored twice", self.doubled));
        }
        if self.out_of_order > 0 {
            out.push(format!("{} notes out of order", self.out_of_order));
        }
        if self.phantom > 0 {
            out.push(format!("{} stored notes nobody sent", self.phantom));
        }
        if self.unanswered_sandbox > 0 || !self.unanswered_traced.is_empty() {
            out.push(format!(
                "{} notes unanswered in the sandbox, {} without a traceable reply",
                self.unanswered_sandbox,
                self.unanswered_traced.len()
            ));
        }
        // The Bot API call is at-least-once: a SIGKILL between Telegram's answer and the
        // ledger's commit resends. One kill can catch several such calls (the sender works on
        // many chats at once, and a PostgreSQL outage stretches the window), so the rule is
        // not "one per kill" but: every duplicate reply is a send the ledger missed, and every
        // such send is explained by a sender kill before its record.
        let explained = self
            .unrecorded
            .iter()
            .filter(|u| u.kill_ms.is_some())
            .count();
        let unexplained = self.unrecorded.len() - explained;
        if self.duplicate_replies > explained {
            out.push(format!(
                "{} duplicate replies, {explained} explained by a sender kill between the call \
                 and its ledger record ({sender_kills} sender kills)",
                self.duplicate_replies
            ));
        }
        if unexplained > 0 {
            out.push(format!(
                "{unexplained} sends the ledger missed without a sender kill to explain them"
            ));
        }
        out
    }
}

/// A bot message in the sandbox that no `sent_messages` row names.
#[derive(Debug, Clone)]
struct Unrecorded {
    chat: i64,
    message_id: i64,
    at_ms: i64,
    cause: String,
    /// The sender kill that followed the call, when one did before the sender recorded it.
    kill_ms: Option<i64>,
}

/// How long after a sender's SIGKILL a call it had sent may still be accepted: the request is
/// on the wire, and the sandbox decides it after its held delay.
const IN_FLIGHT_MS: i64 = 1_000;

/// The cause of a send the ledger did not record, from the fault timeline, and the sender
/// kill it is put down to.
fn cause(timeline: &Timeline, at_ms: i64) -> (String, Option<i64>) {
    let overlaps =
        |spans: &[(i64, i64)], from: i64, to: i64| spans.iter().any(|&(a, b)| a <= to && from <= b);
    let term = timeline
        .sender_terms
        .iter()
        .rev()
        .find(|t| t.started_ms <= at_ms);
    match term {
        Some(SenderTerm {
            ended_ms: Some(end),
            killed,
            ..
        }) if *end >= at_ms => {
            let how = if *killed {
                "sender SIGKILLed"
            } else {
                "sender exited on its own"
            };
            let cause = if overlaps(&timeline.pg_down, at_ms, *end) {
                format!("{how} while its ledger write waited for PostgreSQL")
            } else {
                format!("{how} between the call and the ledger commit")
            };
            (cause, killed.then_some(*end))
        }
        // The call was on the wire when the sender was killed: Telegram (the sandbox, after
        // any held delay) accepted it a moment after the SIGKILL, before the next sender
        // started.
        Some(SenderTerm {
            ended_ms: Some(end),
            killed: true,
            ..
        }) if at_ms - *end <= IN_FLIGHT_MS => (
            format!(
                "sender SIGKILLed with the call in flight (accepted {} ms after the kill)",
                at_ms - *end
            ),
            Some(*end),
        ),
        _ => {
            let near = |spans: &[(i64, i64)]| overlaps(spans, at_ms - 10_000, at_ms + 10_000);
            let mut near_by = Vec::new();
            if near(&timeline.nats_down) {
                near_by.push("NATS");
            }
            if near(&timeline.pg_down) {
                near_by.push("PostgreSQL");
            }
            let mut s = "sender alive: answer lost or ledger write abandoned".to_owned();
            if !near_by.is_empty() {
                s.push_str(&format!(" ({} outage within 10 s)", near_by.join(" and ")));
            }
            (s, None)
        }
    }
}

async fn outcome(
    http: &reqwest::Client,
    sandbox: &str,
    db: &PgPool,
    js: &async_nats::jetstream::Context,
    chats: &[i64],
    sent: &[SentNote],
    timeline: &Timeline,
) -> Result<Outcome> {
    let mut out = Outcome {
        notes: sent.len(),
        ..Default::default()
    };

    // Stored notes.
    let rows: Vec<(i64, String, i64)> = sqlx::query_as(
        "SELECT chat_id, text, update_id FROM messages WHERE bot_id = $1 ORDER BY chat_id, id",
    )
    .bind(BOT_ID)
    .fetch_all(db)
    .await?;
    let mut stored: HashMap<i64, Vec<String>> = HashMap::new();
    for (chat, text, _) in rows {
        stored.entry(chat).or_default().push(text);
    }
    let mut by_chat: BTreeMap<i64, Vec<&SentNote>> = BTreeMap::new();
    for n in sent {
        by_chat.entry(n.chat).or_default().push(n);
    }
    for &chat in chats {
        let notes = by_chat.get(&chat).cloned().unwrap_or_default();
        let index: HashMap<&str, usize> = notes.iter().map(|n| (n.text.as_str(), n.k)).collect();
        let rows = stored.remove(&chat).unwrap_or_default();
        let mut count: HashMap<&str, usize> = HashMap::new();
        for text in &rows {
            *count.entry(text.as_str()).or_default() += 1;
        }
        for n in &notes {
            match count.get(n.text.as_str()) {
                None => out.lost.push(n.text.clone()),
                Some(c) => out.doubled += c - 1,
            }
        }
        out.phantom += rows
            .iter()
            .filter(|t| !index.contains_key(t.as_str()))
            .count();
        let seq: Vec<usize> = rows
            .iter()
            .filter_map(|t| index.get(t.as_str()).copied())
            .collect();
        let descents = seq.windows(2).filter(|w| w[1] < w[0]).count();
        out.out_of_order += descents;
        out.chats_out_of_order += usize::from(descents > 0);
    }
    out.phantom += stored.values().map(Vec::len).sum::<usize>();

    // Replies: the sandbox's transcripts, the outbox and the sender's ledger.
    let ledger: Vec<(i64, i64, Option<i64>, String)> = sqlx::query_as(
        "SELECT outbox_id, chat_id, telegram_message_id, outcome FROM sent_messages \
         WHERE bot_id = $1",
    )
    .bind(BOT_ID)
    .fetch_all(db)
    .await?;
    let outbox: Vec<(i64, i64)> =
        sqlx::query_as("SELECT id, origin_update_id FROM outbox WHERE bot_id = $1")
            .bind(BOT_ID)
            .fetch_all(db)
            .await?;
    let mut outbox_of_update: HashMap<i64, Vec<i64>> = HashMap::new();
    for (id, update) in outbox {
        outbox_of_update.entry(update).or_default().push(id);
    }
    out.doubled_outbox = outbox_of_update
        .values()
        .map(|ids| ids.len().saturating_sub(1))
        .sum();
    let mut sent_of_outbox: HashMap<i64, (i64, i64)> = HashMap::new();
    let mut recorded: HashSet<(i64, i64)> = HashSet::new();
    for (outbox_id, chat, message, outcome) in &ledger {
        if let (Some(m), "sent") = (message, outcome.as_str()) {
            sent_of_outbox.insert(*outbox_id, (*chat, *m));
            recorded.insert((*chat, *m));
        }
    }
    let mut bot_messages: HashSet<(i64, i64)> = HashSet::new();
    for &chat in chats {
        let lines = transcript(http, sandbox, chat).await?;
        for line in &lines {
            if line.from_bot {
                bot_messages.insert((chat, line.message_id));
                if !recorded.contains(&(chat, line.message_id)) {
                    let (cause, kill_ms) = cause(timeline, line.at_unix_ms);
                    out.unrecorded.push(Unrecorded {
                        chat,
                        message_id: line.message_id,
                        at_ms: line.at_unix_ms,
                        cause,
                        kill_ms,
                    });
                }
            } else {
                let r = line.replies.unwrap_or(0);
                out.duplicate_replies += r.saturating_sub(1) as usize;
            }
        }
        // Every note's message (the user's messages other than the first, /start) needs a
        // reply in the sandbox's count.
        out.unanswered_sandbox += lines
            .iter()
            .filter(|l| !l.from_bot && l.text != "/start" && l.replies.unwrap_or(0) == 0)
            .count();
    }
    out.ledger_without_message = recorded.difference(&bot_messages).count();
    for n in sent {
        let traced = outbox_of_update.get(&n.update_id).is_some_and(|ids| {
            ids.iter().any(|id| {
                sent_of_outbox
                    .get(id)
                    .is_some_and(|m| bot_messages.contains(m))
            })
        });
        if !traced {
            out.unanswered_traced.push(n.text.clone());
        }
    }

    // Which of Telegram's limits refused each 429: 30 accepted calls of the bot in the
    // second before it, or else the chat's own budget.
    let calls: Vec<Call> = http
        .get(format!("{sandbox}/sandbox/calls"))
        .timeout(Duration::from_secs(10))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let accepted: Vec<i64> = calls
        .iter()
        .filter(|c| c.status == 200)
        .map(|c| c.at_unix_ms)
        .collect();
    for term in &timeline.sender_terms {
        if let (true, Some(killed)) = (term.killed, term.ended_ms) {
            let next = accepted.iter().find(|&&t| t >= killed);
            out.reply_gaps
                .push(next.map(|t| Duration::from_millis((t - killed) as u64)));
        }
    }
    for c in calls.iter().filter(|c| c.status == 429) {
        let window = accepted
            .iter()
            .filter(|&&t| t > c.at_unix_ms - 1000 && t <= c.at_unix_ms)
            .count();
        let limit = if window >= 30 {
            "bot: 30 calls within a second"
        } else {
            "chat: its own budget"
        };
        *out.refused.entry(limit).or_default() += 1;
    }

    let stats = sandbox_stats(http, sandbox).await?;
    out.duplicate_replies_sandbox = stats["duplicate_replies"].as_u64().unwrap_or(0);
    out.webhook_failures = stats["webhook_failures"].as_u64().unwrap_or(0);
    out.responses_429 = stats["responses_429"].as_u64().unwrap_or(0);
    out.dead_letters = js
        .get_stream(topology::DLQ_STREAM)
        .await?
        .info()
        .await?
        .state
        .messages;
    Ok(out)
}

// ---------------------------------------------------------------------------------------

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    args.validate()?;
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            % 1_000_000_000
    });
    println!("chaos: seed {seed}");
    println!("replay: {}", args.replay(seed));
    let plan = plan(&args, seed);

    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| courier_tests::infra::workspace_root().join("target"));
    let logs = courier_tests::infra::workspace_root()
        .join(target)
        .join("courier-chaos")
        .join(format!("seed-{seed}-{}", std::process::id()));
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;

    build_binaries(&[
        "courier-ingress",
        "courier-worker",
        "courier-sender",
        "courier-sandbox",
    ])
    .await?;
    let started = Instant::now();
    let mut system = System::start(&args, &logs).await?;
    let http = reqwest::Client::new();
    let sandbox = system.sandbox_url.clone();
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy(&system.db_url)?;
    let chats: Vec<i64> = (0..args.chats as i64).map(|i| FIRST_CHAT + i).collect();

    // Warm-up: every chat registers; the chaos starts once all are answered.
    let since = unix_ms() - 1;
    for &chat in &chats {
        say(&http, &sandbox, chat, "/start").await?;
    }
    {
        let stop = courier_common::CancellationToken::new();
        let waiting = async {
            let r = await_condition("every /start answered", args.drain_timeout, || async {
                let (left, total) = unanswered(&http, &sandbox, since).await?;
                Ok((left == 0 && total == chats.len()).then_some(()))
            })
            .await;
            stop.cancel();
            r
        };
        let (r, s) = tokio::join!(waiting, system.supervise_until(&stop));
        r?;
        s?;
    }
    let warm_up = started.elapsed();
    println!(
        "warm-up: {} chats registered, {} processes up, after {}",
        chats.len(),
        system.procs.len() + 1,
        secs(warm_up)
    );

    // The chaos.
    let t0 = Instant::now();
    let chaos_started_ms = unix_ms();
    let mean = Duration::from_secs_f64(args.chats as f64 / args.rate);
    let users: Vec<_> = chats
        .iter()
        .map(|&chat| {
            tokio::spawn(user(
                http.clone(),
                sandbox.clone(),
                chat,
                mean,
                Rng::fork(seed, chat as u64),
                t0,
                args.duration,
            ))
        })
        .collect();
    system.run_schedule(&plan, t0).await?;
    let mut sent = Vec::new();
    {
        let stop = courier_common::CancellationToken::new();
        let collecting = async {
            let mut r = Ok(());
            for u in users {
                match u.await {
                    Ok(Ok(notes)) => sent.extend(notes),
                    Ok(Err(e)) => r = Err(e),
                    Err(e) => r = Err(e.into()),
                }
            }
            stop.cancel();
            r
        };
        let (r, s) = tokio::join!(collecting, system.supervise_until(&stop));
        r?;
        s?;
    }
    let chaos = t0.elapsed();
    println!(
        "chaos: {} notes sent in {}; draining",
        sent.len(),
        secs(chaos)
    );

    // The drain: wait (with a deadline) until every note is stored and answered, or until
    // nothing has been in flight for QUIET, after which nothing more can arrive.
    let js = async_nats::jetstream::new(async_nats::connect(system.nats.url()).await?);
    let drain = {
        let stop = courier_common::CancellationToken::new();
        let waiting = async {
            let d = drain(&http, &sandbox, &db, &js, sent.len(), args.drain_timeout).await;
            stop.cancel();
            d
        };
        let (d, s) = tokio::join!(waiting, system.supervise_until(&stop));
        s?;
        d
    };

    let result = outcome(&http, &sandbox, &db, &js, &chats, &sent, &system.timeline).await?;
    let timeline = system.timeline.clone();
    let mut broken = result.broken(timeline.sender_kills());
    if drain.quiet.is_none() {
        broken.push(format!(
            "the pipeline did not drain within {}",
            secs(args.drain_timeout)
        ));
    }

    // The summary.
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!();
    println!("===== chaos summary (seed {seed}) =====");
    println!(
        "setup: {} chats, {:.1} notes/s, {} workers, {} ingresses, 1 sender, kill every ~{}; {cores} cores",
        args.chats,
        args.rate,
        args.workers,
        args.ingresses,
        secs(args.kill_every)
    );
    println!("faults (time from the start of the chaos):");
    for e in &timeline.events {
        println!(
            "  {:>+8.2} s  {}",
            (e.unix_ms - chaos_started_ms) as f64 / 1000.0,
            e.what
        );
    }
    let kills: usize = timeline.kills.values().sum();
    let kinds: Vec<String> = timeline
        .kills
        .iter()
        .map(|(k, n)| format!("{n} {k}"))
        .collect();
    println!(
        "{:<28}{} (notes/s {:.1}, {} chats)",
        "notes sent",
        result.notes,
        result.notes as f64 / chaos.as_secs_f64(),
        args.chats
    );
    println!(
        "{:<28}{kills} SIGKILL ({}), nats-server SIGKILL {}, PostgreSQL immediate stop {}",
        "faults injected",
        kinds.join(", "),
        timeline.nats_down.len(),
        timeline.pg_down.len()
    );
    println!(
        "{:<28}{}",
        "exits on their own",
        timeline.unexpected_exits.len()
    );
    println!("{:<28}{}", "lost", result.lost.len());
    println!("{:<28}{}", "stored twice", result.doubled);
    println!(
        "{:<28}{} (in {} chats)",
        "out of order", result.out_of_order, result.chats_out_of_order
    );
    println!("{:<28}{}", "stored, never sent", result.phantom);
    println!(
        "{:<28}{} (sandbox), {} (no traceable reply)",
        "unanswered",
        result.unanswered_sandbox,
        result.unanswered_traced.len()
    );
    println!(
        "{:<28}{} (sandbox counter {}; allowed: sends a sender kill kept from the ledger; sender kills {})",
        "duplicate replies",
        result.duplicate_replies,
        result.duplicate_replies_sandbox,
        timeline.sender_kills()
    );
    let mut causes: BTreeMap<&str, usize> = BTreeMap::new();
    let mut per_kill: BTreeMap<i64, usize> = BTreeMap::new();
    for u in &result.unrecorded {
        *causes.entry(u.cause.as_str()).or_default() += 1;
        if let Some(k) = u.kill_ms {
            *per_kill.entry(k).or_default() += 1;
        }
    }
    println!(
        "{:<28}{}",
        "sends the ledger missed",
        result.unrecorded.len()
    );
    for (c, n) in &causes {
        println!("{:<28}  {n} × {c}", "");
    }
    for u in result.unrecorded.iter().take(20) {
        let gap = u
            .kill_ms
            .map(|k| format!(", {} ms before the SIGKILL", k - u.at_ms))
            .unwrap_or_default();
        println!(
            "{:<28}  chat {} message {} accepted at {:+.3} s{gap}",
            "",
            u.chat,
            u.message_id,
            (u.at_ms - chaos_started_ms) as f64 / 1000.0
        );
    }
    println!(
        "{:<28}{} of {} kills; most from one kill: {}",
        "sender kills with dups",
        per_kill.len(),
        timeline.sender_kills(),
        per_kill.values().max().copied().unwrap_or(0)
    );
    let gaps: Vec<String> = result
        .reply_gaps
        .iter()
        .map(|g| g.map_or_else(|| "none".to_owned(), |d| format!("{:.1}", d.as_secs_f64())))
        .collect();
    if !gaps.is_empty() {
        println!(
            "{:<28}{} s (to the next accepted sendMessage)",
            "no reply after sender kill",
            gaps.join(", ")
        );
    }
    println!(
        "{:<28}{}",
        "replies doubled by outbox", result.doubled_outbox
    );
    println!(
        "{:<28}{}",
        "ledger rows, no message", result.ledger_without_message
    );
    println!("{:<28}{}", "dead letters", result.dead_letters);
    println!(
        "{:<28}{} (retried by the sandbox)",
        "webhook failures", result.webhook_failures
    );
    let refused: Vec<String> = result
        .refused
        .iter()
        .map(|(limit, n)| format!("{n} × {limit}"))
        .collect();
    println!(
        "{:<28}{}{}",
        "429 answers",
        result.responses_429,
        if refused.is_empty() {
            String::new()
        } else {
            format!(" ({})", refused.join(", "))
        }
    );
    println!("{:<28}{}", "start-up and warm-up", secs(warm_up));
    println!("{:<28}{}", "chaos", secs(chaos));
    let at = |t: Option<Duration>| {
        t.map_or_else(|| "never".to_owned(), |d| format!("after {}", secs(d)))
    };
    println!(
        "{:<28}stored: {}, answered: {}, quiet: {}",
        "drain",
        at(drain.stored),
        at(drain.answered),
        at(drain.quiet)
    );
    if drain.quiet.is_none() {
        println!(
            "{:<28}still in flight after {}: {}",
            "drain failed",
            secs(args.drain_timeout),
            drain.in_flight
        );
    }
    if !result.lost.is_empty() {
        println!(
            "lost notes: {:?}",
            &result.lost[..result.lost.len().min(20)]
        );
    }
    if !result.unanswered_traced.is_empty() {
        println!(
            "notes without a traceable reply: {:?}",
            &result.unanswered_traced[..result.unanswered_traced.len().min(20)]
        );
    }
    println!("{:<28}{}", "total", secs(started.elapsed()));

    let failed = !broken.is_empty();
    let keep = failed || args.keep_logs || !timeline.unexpected_exits.is_empty();
    if keep {
        println!("services' logs: {}", logs.display());
    }
    drop(system);
    if !keep {
        let _ = std::fs::remove_dir_all(&logs);
    }
    if failed {
        println!("FAIL (seed {seed}): {}", broken.join("; "));
        // Everything is stopped already; the summary says it all (no error backtrace).
        std::process::exit(1);
    }
    println!("PASS (seed {seed})");
    Ok(())
}
