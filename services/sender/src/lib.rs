//! Courier sender: delivers outbound messages to the Telegram Bot API within Telegram's limits.
//!
//! The sender pulls `courier.outbound.<bot>.>` from JetStream (durable consumer
//! `courier-sender-<bot>`), keeps each chat's messages in order with per-chat lanes
//! ([`courier_common::lanes`]), and makes each message's Bot API calls through teloxide-core
//! against a configurable base URL (the sandbox locally, Telegram in production):
//! `sendMessage` (with inline keyboards and replies), `editMessageText`,
//! `answerCallbackQuery`, `sendChatAction`, `deleteMessage` ([`actions`], [`deliver`]).
//! Design and reasoning: `docs/SENDER.md`. In short:
//!
//! - **Limits** ([`limits`]): governor GCRA budgets for the bot (30/s), each private chat (1/s)
//!   and each group (20/min); a chat waiting for its slot never holds up the others; a button's
//!   answer and a chat action take the bot's budget only.
//! - **Answers** ([`telegram::classify`]): 429 pauses the bot for `retry_after`, then the
//!   message is resent; 5xx, timeouts and connection errors back off with jitter and feed a
//!   circuit breaker ([`breaker`]) that stops pulling while Telegram is down; 400/403 park the
//!   message in `COURIER_DLQ`; "bot was blocked by the user" also marks the chat blocked, and
//!   later messages to it are skipped and counted; `migrate_to_chat_id` re-targets; an edit
//!   that changes nothing and a delete of a message already gone count as done.
//! - **Long texts** are split ([`split`]) into ordered parts of at most 4096 characters.
//! - **Sent ledger** ([`ledger`]): a part already in `sent_messages` is never sent again; it
//!   also resolves a message's key (`MessageRef.key`) to Telegram's message id.
//! - **One active sender per bot** ([`lease`]): replicas are hot standbys.
//! - **Pause** ([`pause`]): while an operator has paused the bot (`courierctl pause`), no Bot
//!   API call starts; held messages wait, kept alive.
//! - **Graceful shutdown**: stop pulling, finish calls in flight, hand the rest back (nak).
//!
//! A message is acknowledged only after every part was accepted by Telegram (or parked, or
//! skipped); until then it is kept alive with in-progress acks, however long it waits.
#![deny(missing_docs)]

pub mod actions;
pub mod breaker;
mod deliver;
pub mod lease;
pub mod ledger;
pub mod limits;
pub mod metrics;
pub mod pause;
pub mod split;
pub mod telegram;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use async_nats::Subject;
use courier_common::{
    backoff::Backoff,
    config::{parse_duration, ConfigError, NatsArgs, SecretArgs},
    health, lanes, pull, topology, CancellationToken,
};
use futures::StreamExt;
use sqlx::PgPool;
use teloxide_core::{prelude::Requester, Bot};
use tokio::task::JoinHandle;

use crate::breaker::Breaker;
use crate::lease::Lease;
use crate::limits::{Limits, Rates};

/// The embedded migrations (`migrations/` at the repository root); the sender runs them at
/// start-up when `COURIER_SENDER_MIGRATE` is on (under sqlx's advisory lock, so running them
/// from the worker and the sender at once is safe).
pub use courier_db::MIGRATOR;

/// Sender configuration (environment variables or the matching flags).
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Base URL of the Bot API (the sandbox's URL locally).
    #[arg(
        long = "telegram-api-url",
        env = "COURIER_TELEGRAM_API_URL",
        default_value = "https://api.telegram.org"
    )]
    pub api_url: url::Url,
    /// Timeout of one Bot API call.
    #[arg(long = "request-timeout", env = "COURIER_SENDER_REQUEST_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Address of the health, readiness and metrics endpoints.
    #[arg(
        long = "health-addr",
        env = "COURIER_SENDER_HEALTH_ADDR",
        default_value = "0.0.0.0:9092"
    )]
    pub health_addr: SocketAddr,
    /// Chats sent to concurrently (keep above bot rate × slowest chat period: 90 by default).
    #[arg(
        long = "max-lanes",
        env = "COURIER_SENDER_MAX_LANES",
        default_value_t = 256
    )]
    pub max_lanes: usize,
    /// Unacknowledged messages the server hands this consumer at most (bounds memory).
    #[arg(
        long = "max-ack-pending",
        env = "COURIER_SENDER_MAX_ACK_PENDING",
        default_value_t = 4096
    )]
    pub max_ack_pending: i64,
    /// How long JetStream waits for an ack before redelivering (kept alive by progress acks).
    #[arg(long = "ack-wait", env = "COURIER_SENDER_ACK_WAIT", default_value = "30s", value_parser = parse_duration)]
    pub ack_wait: Duration,
    /// PostgreSQL URL (the sent ledger, blocked chats, chat migrations; never logged).
    #[arg(long = "database-url", env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Connections in the sender's database pool.
    #[arg(
        long = "db-pool-size",
        env = "COURIER_SENDER_DB_POOL_SIZE",
        default_value_t = 4
    )]
    pub db_pool_size: u32,
    /// Run the migrations at start-up.
    #[arg(long = "migrate", env = "COURIER_SENDER_MIGRATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate: bool,
    /// Bot API calls per second for the whole bot.
    #[arg(
        long = "bot-rate",
        env = "COURIER_SENDER_BOT_RATE",
        default_value_t = 30.0
    )]
    pub bot_rate: f64,
    /// Calls per second to one private chat.
    #[arg(
        long = "private-chat-rate",
        env = "COURIER_SENDER_PRIVATE_CHAT_RATE",
        default_value_t = 1.0
    )]
    pub private_chat_rate: f64,
    /// Calls per minute to one group or supergroup.
    #[arg(
        long = "group-rate-per-min",
        env = "COURIER_SENDER_GROUP_RATE_PER_MIN",
        default_value_t = 20.0
    )]
    pub group_rate_per_min: f64,
    /// Fraction by which every budget's period and the bot's arrival window are lengthened
    /// (0.01: each budget used at 99% at most); jitter itself is handled by the arrival window.
    #[arg(
        long = "rate-headroom",
        env = "COURIER_SENDER_RATE_HEADROOM",
        default_value_t = 0.01
    )]
    pub rate_headroom: f64,
    /// Transient failures in a row that open the circuit breaker.
    #[arg(
        long = "breaker-threshold",
        env = "COURIER_SENDER_BREAKER_THRESHOLD",
        default_value_t = 5
    )]
    pub breaker_threshold: u32,
    /// First cool-down of the open breaker (doubles per failed probe, at most 60 s).
    #[arg(long = "breaker-cooldown", env = "COURIER_SENDER_BREAKER_COOLDOWN", default_value = "1s", value_parser = parse_duration)]
    pub breaker_cooldown: Duration,
    /// Time to live of the active sender's lease (standbys take over after it).
    #[arg(long = "lease-ttl", env = "COURIER_SENDER_LEASE_TTL", default_value = "10s", value_parser = parse_duration)]
    pub lease_ttl: Duration,
    /// How often the dead-letter stream's size is read for `/metrics`.
    #[arg(long = "metrics-interval", env = "COURIER_SENDER_METRICS_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub metrics_interval: Duration,
    /// NATS settings.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Bot token and dev mode.
    #[command(flatten)]
    pub secrets: SecretArgs,
}

impl Config {
    /// The rate budgets, validated (each variable must be a positive number).
    pub fn rates(&self) -> Result<Rates, ConfigError> {
        let check = |var: &'static str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(v)
            } else {
                Err(ConfigError {
                    var,
                    reason: format!("must be a positive number, got {v}"),
                })
            }
        };
        Ok(Rates {
            bot_per_sec: check("COURIER_SENDER_BOT_RATE", self.bot_rate)?,
            private_chat_per_sec: check(
                "COURIER_SENDER_PRIVATE_CHAT_RATE",
                self.private_chat_rate,
            )?,
            group_per_min: check("COURIER_SENDER_GROUP_RATE_PER_MIN", self.group_rate_per_min)?,
            headroom: if (0.0..0.5).contains(&self.rate_headroom) {
                self.rate_headroom
            } else {
                return Err(ConfigError {
                    var: "COURIER_SENDER_RATE_HEADROOM",
                    reason: format!("must be in [0, 0.5), got {}", self.rate_headroom),
                });
            },
        })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.lease_ttl < Duration::from_secs(1) {
            return Err(ConfigError {
                var: "COURIER_SENDER_LEASE_TTL",
                reason: "must be at least 1s".into(),
            });
        }
        if self.ack_wait < Duration::from_secs(1) {
            return Err(ConfigError {
                var: "COURIER_SENDER_ACK_WAIT",
                reason: "must be at least 1s".into(),
            });
        }
        if self.metrics_interval.is_zero() {
            return Err(ConfigError {
                var: "COURIER_SENDER_METRICS_INTERVAL",
                reason: "must be longer than 0".into(),
            });
        }
        if self.max_lanes == 0 {
            return Err(ConfigError {
                var: "COURIER_SENDER_MAX_LANES",
                reason: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}

/// What can stop the sender.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The streams could not be created or do not match.
    #[error(transparent)]
    Topology(#[from] topology::TopologyError),
    /// JetStream consumer trouble.
    #[error("JetStream: {0}")]
    JetStream(String),
    /// The lease bucket could not be opened.
    #[error(transparent)]
    Lease(#[from] lease::LeaseError),
    /// The pause bucket could not be opened or read.
    #[error(transparent)]
    Pause(#[from] pause::PauseError),
    /// Migrations failed.
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Binding or serving HTTP failed.
    #[error("http server: {0}")]
    Io(#[from] std::io::Error),
}

/// Counters of what the sender did.
#[derive(Debug, Default)]
pub struct Stats {
    /// Bot API calls Telegram accepted (one per part of a message, one per other action).
    pub sent: AtomicU64,
    /// Bot API calls Telegram refused because what they ask for holds already (an edit that
    /// changes nothing, a delete of a message already gone): counted as done.
    pub already_done: AtomicU64,
    /// Outbound messages finished (all their calls done).
    pub messages_sent: AtomicU64,
    /// Retries after 429, 5xx or network errors.
    pub retries: AtomicU64,
    /// 429 answers received.
    pub rate_limited: AtomicU64,
    /// Messages parked in the dead-letter stream.
    pub dead_lettered: AtomicU64,
    /// Dead-letter publishes that failed (and were retried).
    pub dead_letter_failures: AtomicU64,
    /// Messages skipped because the chat's user blocked the bot.
    pub skipped_blocked: AtomicU64,
    /// Messages skipped because the ledger says they were sent already.
    pub duplicates_skipped: AtomicU64,
    /// Messages re-targeted to a migrated chat.
    pub migrated: AtomicU64,
    /// Times this sender became the active one (acquired the lease).
    pub activations: AtomicU64,
    /// Longest time between Telegram's answer and the ledger's commit, microseconds: the
    /// window in which a crash duplicates a message.
    pub ledger_window_max_us: AtomicU64,
    /// Sum of those windows, microseconds (divide by `sent` for the mean).
    pub ledger_window_total_us: AtomicU64,
}

/// A running sender.
pub struct Sender {
    health_addr: SocketAddr,
    stats: Arc<Stats>,
    metrics: Arc<metrics::Metrics>,
    task: JoinHandle<Result<(), Error>>,
}

impl Sender {
    /// The bound address of the health endpoints.
    pub fn health_addr(&self) -> SocketAddr {
        self.health_addr
    }

    /// What the sender did so far.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Its metrics (also served on `/metrics`).
    pub fn metrics(&self) -> Arc<metrics::Metrics> {
        self.metrics.clone()
    }

    /// Waits until the sender stopped.
    pub async fn wait(self) -> Result<(), Error> {
        self.task
            .await
            .unwrap_or_else(|e| Err(Error::Io(std::io::Error::other(e))))
    }
}

/// The name of the sender's durable consumer for a bot.
pub fn consumer_name(bot_id: i64) -> String {
    format!("courier-sender-{bot_id}")
}

// ---------------------------------------------------------------------------------------
// Messages held by this sender: kept alive with progress acks, handed back with a nak.

/// The messages this sender holds (queued in a lane or being sent).
struct Inflight {
    client: async_nats::Client,
    held: Mutex<HashMap<u64, Subject>>,
    to_nak: Mutex<Vec<(u64, Subject)>>,
    next: AtomicU64,
}

impl Inflight {
    /// Sends in-progress acks for everything held.
    async fn keep_alive(&self) {
        let replies: Vec<Subject> = self
            .held
            .lock()
            .expect("held lock")
            .values()
            .cloned()
            .collect();
        for reply in replies {
            let _ = self
                .client
                .publish(reply, bytes::Bytes::from_static(b"+WPI"))
                .await;
        }
    }

    /// Hands back (nak) what was dropped unsettled, oldest stream sequence first, so that
    /// JetStream redelivers each chat's messages in their order. Called only once every
    /// handler of a term has finished.
    ///
    /// Bounded by [`HAND_BACK_LIMIT`]: with NATS unreachable the client buffers, then blocks,
    /// and `flush` waits for a reconnect that may never come (finding 3 of the review). What
    /// is not handed back in time is redelivered by JetStream after `ack_wait`, in order.
    async fn hand_back(&self) {
        let mut naks = std::mem::take(&mut *self.to_nak.lock().expect("nak lock"));
        if naks.is_empty() {
            return;
        }
        naks.sort_by_key(|(seq, _)| *seq);
        let n = naks.len();
        let handed = tokio::time::timeout(HAND_BACK_LIMIT, async {
            for (_, reply) in naks {
                let _ = self
                    .client
                    .publish(reply, bytes::Bytes::from_static(b"-NAK"))
                    .await;
            }
            let _ = self.client.flush().await;
        })
        .await;
        if handed.is_err() {
            tracing::warn!(
                messages = n,
                "NATS unreachable: could not hand messages back; JetStream redelivers them after ack_wait"
            );
        }
    }
}

/// How long handing messages back (and one round of keep-alives) may take.
const HAND_BACK_LIMIT: Duration = Duration::from_secs(3);

/// A pulled message; handed back (nak) when dropped without being settled.
struct Held {
    msg: jetstream::Message,
    id: u64,
    inflight: Arc<Inflight>,
    settled: bool,
}

impl Held {
    fn new(msg: jetstream::Message, inflight: Arc<Inflight>) -> Self {
        let id = inflight.next.fetch_add(1, Ordering::Relaxed);
        if let Some(reply) = msg.reply.clone() {
            inflight.held.lock().expect("held lock").insert(id, reply);
        }
        Self {
            msg,
            id,
            inflight,
            settled: false,
        }
    }

    async fn ack(mut self) {
        if let Err(e) = self.msg.ack().await {
            tracing::warn!(error = %e, "ack failed");
        }
        self.settled = true;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let reply = self
            .inflight
            .held
            .lock()
            .expect("held lock")
            .remove(&self.id);
        if !self.settled {
            if let Some(reply) = reply {
                let seq = self
                    .msg
                    .info()
                    .map(|i| i.stream_sequence)
                    .unwrap_or(u64::MAX);
                self.inflight
                    .to_nak
                    .lock()
                    .expect("nak lock")
                    .push((seq, reply));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------

#[derive(Clone)]
struct Ctx {
    bot: Bot,
    bot_id: i64,
    js: jetstream::Context,
    pool: PgPool,
    /// The ledger's batched writer.
    ledger: ledger::Recorder,
    /// The ledger's batched lookups.
    lookups: ledger::Lookups,
    limits: Arc<Limits>,
    breaker: Arc<Breaker>,
    lease: Arc<Lease>,
    /// The pause gate before every Bot API call.
    gate: Arc<pause::Gate>,
    stats: Arc<Stats>,
    metrics: Arc<metrics::Metrics>,
    /// Fires on shutdown or when the lease is lost.
    cancel: CancellationToken,
}

/// Validates the configuration, connects and starts: as the active sender once it holds the
/// bot's lease, as a hot standby until then.
pub async fn spawn(config: Config, shutdown: CancellationToken) -> Result<Sender, Error> {
    config.validate()?;
    let rates = config.rates()?;
    let token = config.secrets.bot_token()?;
    let bot_id = token.bot_id();
    let pool = courier_db::lazy_pool(config.database_url.as_deref(), config.db_pool_size)?;
    let client = teloxide_core::net::default_reqwest_settings()
        .timeout(config.request_timeout)
        .build()
        .map_err(|e| ConfigError {
            var: "COURIER_TELEGRAM_API_URL",
            reason: format!("cannot build the HTTP client: {e}"),
        })?;
    let bot = Bot::with_client(token.expose(), client).set_api_url(config.api_url.clone());
    let metrics = Arc::new(metrics::Metrics::default());
    let nats = config.nats.connect("courier-sender").await?;
    let js = jetstream::new(nats.clone());
    topology::ensure_streams(&js, config.nats.partitions).await?;
    if config.migrate && !courier_db::migrate_with_retry(&pool, &shutdown).await? {
        return Err(Error::JetStream("cancelled during start-up".into()));
    }
    let stream = js
        .get_stream(topology::OUTBOUND_STREAM)
        .await
        .map_err(|e| Error::JetStream(e.to_string()))?;
    let name = consumer_name(bot_id);
    let consumer: jetstream::consumer::Consumer<jetstream::consumer::pull::Config> = stream
        .get_or_create_consumer(
            &name,
            jetstream::consumer::pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: topology::outbound_filter(bot_id),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: config.ack_wait,
                max_ack_pending: config.max_ack_pending,
                max_deliver: -1,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| Error::JetStream(e.to_string()))?;
    let holder = format!(
        "{}-{}-{:08x}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "sender".into()),
        std::process::id(),
        rand::random::<u32>()
    );
    let lease = Arc::new(Lease::open(&js, bot_id, holder.clone(), config.lease_ttl).await?);
    // The pause state before any call (a sender restarted while the bot is paused calls
    // nothing, not even getMe), then followed by the watcher.
    let control = pause::open_bucket(&js).await?;
    let gate = pause::Gate::new();
    let (paused, revision) = pause::read(&control, bot_id).await?;
    gate.set(paused.paused, revision);
    if gate.is_paused() {
        tracing::warn!("the bot is paused: not calling getMe at start");
    } else {
        // getMe at start: a token the Bot API refuses stops the sender here, with the variable
        // named; and the connection is open before the first paced call (a first call that also
        // pays for the connection arrives late and bunches the calls after it).
        let calling = std::time::Instant::now();
        let me = bot.get_me().await;
        metrics.call(
            "getMe",
            me.as_ref().map_or_else(telegram::call_result, |_| "ok"),
            calling.elapsed(),
        );
        match me {
            Ok(me) => tracing::info!(username = ?me.username, "Bot API reachable"),
            Err(teloxide_core::RequestError::Api(teloxide_core::ApiError::InvalidToken)) => {
                return Err(ConfigError {
                    var: "COURIER_BOT_TOKEN",
                    reason: "the Bot API refuses this token (getMe: Unauthorized)".into(),
                }
                .into());
            }
            Err(e) => tracing::warn!(error = %e, "Bot API not reachable yet (getMe); carrying on"),
        }
    }
    let watcher = pause::spawn_watcher(
        control,
        bot_id,
        gate.clone(),
        lease.clone(),
        holder.clone(),
        shutdown.child_token(),
    );
    let limits = Arc::new(Limits::new(rates));
    let breaker = Arc::new(Breaker::new(
        config.breaker_threshold,
        config.breaker_cooldown,
        Duration::from_secs(60),
    ));

    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let scrape_hook: courier_common::metrics::Refresh = {
        let (metrics, lease, limits, breaker) = (
            metrics.clone(),
            lease.clone(),
            limits.clone(),
            breaker.clone(),
        );
        let pool = pool.clone();
        Arc::new(move || {
            metrics.breaker_open.set(i64::from(!breaker.is_closed()));
            metrics.lease_active.set(i64::from(lease.is_valid()));
            metrics.budget_used.set(limits.budget_used());
            metrics.db.sample(&pool);
        })
    };
    let refresher = {
        let (metrics, js) = (metrics.clone(), js.clone());
        courier_common::metrics::spawn_refresher(
            config.metrics_interval,
            shutdown.clone(),
            move || {
                let (metrics, js) = (metrics.clone(), js.clone());
                async move {
                    match js.get_stream(topology::DLQ_STREAM).await {
                        Ok(dlq) => {
                            metrics
                                .dlq_messages
                                .set(dlq.cached_info().state.messages as i64);
                        }
                        Err(e) => tracing::debug!(error = %e, "cannot read the dead-letter stream"),
                    }
                }
            },
        )
    };
    let app = health::router(vec![
        ("nats", health::nats_probe(nats.clone())),
        ("postgres", courier_db::probe(pool.clone())),
    ])
    .merge(courier_common::metrics::router(registry, Some(scrape_hook)));
    let listener = tokio::net::TcpListener::bind(config.health_addr).await?;
    let health_addr = listener.local_addr()?;
    let http_shutdown = shutdown.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(http_shutdown.cancelled_owned())
            .await
    });

    let stats = Arc::new(Stats::default());
    let inflight = Arc::new(Inflight {
        client: nats.clone(),
        held: Mutex::new(HashMap::new()),
        to_nak: Mutex::new(Vec::new()),
        next: AtomicU64::new(0),
    });
    let ctx = Arc::new(Ctx {
        bot,
        bot_id,
        js,
        pool: pool.clone(),
        ledger: ledger::recorder(pool.clone(), metrics.db.clone()),
        lookups: ledger::lookups(pool.clone(), metrics.db.clone()),
        limits,
        breaker,
        lease,
        gate,
        stats: stats.clone(),
        metrics: metrics.clone(),
        cancel: shutdown.child_token(),
    });
    tracing::info!(bot_id, consumer = %name, api = %config.api_url, %health_addr, holder, ?rates, "sender started");
    let settings = RunSettings {
        max_lanes: config.max_lanes,
        ack_wait: config.ack_wait,
        quiet: Duration::from_secs(1).mul_f64(1.0 + rates.headroom),
    };
    let task = tokio::spawn(async move {
        supervise(ctx, consumer, inflight, settings, shutdown).await;
        let _ = watcher.await;
        let _ = refresher.await;
        let _ = http.await;
        pool.close().await;
        tracing::info!("sender stopped");
        Ok(())
    });
    Ok(Sender {
        health_addr,
        stats,
        metrics,
        task,
    })
}

/// Runs the sender until `shutdown` fires.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    spawn(config, shutdown).await?.wait().await
}

#[derive(Debug, Clone, Copy)]
struct RunSettings {
    max_lanes: usize,
    ack_wait: Duration,
    /// Silence after taking the lease over, before the first call.
    quiet: Duration,
}

/// Standby until the lease is ours, active until shutdown or until the lease is lost.
async fn supervise(
    ctx_template: Arc<Ctx>,
    consumer: jetstream::consumer::Consumer<jetstream::consumer::pull::Config>,
    inflight: Arc<Inflight>,
    settings: RunSettings,
    shutdown: CancellationToken,
) {
    // The keeper: progress acks for every held message, every third of ack_wait.
    let keeper_inflight = inflight.clone();
    let keeper_stop = CancellationToken::new();
    let keeper_token = keeper_stop.clone();
    let keeper = tokio::spawn(async move {
        let mut tick =
            tokio::time::interval((settings.ack_wait / 3).max(Duration::from_millis(200)));
        loop {
            tokio::select! {
                _ = keeper_token.cancelled() => break,
                _ = tick.tick() => {}
            }
            // Bounded, and cut by the stop: with NATS unreachable a publish blocks once the
            // client's buffer is full.
            tokio::select! {
                _ = keeper_token.cancelled() => break,
                _ = tokio::time::timeout(HAND_BACK_LIMIT, keeper_inflight.keep_alive()) => {}
            }
        }
    });
    let housekeeping_ctx = ctx_template.clone();
    let housekeeping = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tick.tick().await;
            housekeeping_ctx.limits.forget_idle();
        }
    });

    let mut active_ctx = ctx_template;
    'outer: loop {
        // Standby: try to acquire the lease.
        let how = loop {
            if let Some(how) = active_ctx.lease.try_acquire().await {
                break how;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break 'outer,
                _ = tokio::time::sleep(active_ctx.lease.renew_every()) => {}
            }
        };
        active_ctx.stats.activations.fetch_add(1, Ordering::Relaxed);
        // After a graceful hand-over the previous holder has handed back (nak, in stream
        // order) everything it held, and had no pull request outstanding. After an expiry it
        // may have died holding messages: wait until none is pending, at most ack_wait (then
        // JetStream has made them all redeliverable, ahead of newer ones), so we never
        // overtake a chat's older message.
        let deadline = tokio::time::Instant::now() + settings.ack_wait + Duration::from_secs(1);
        let mut wait_for_pending = how == lease::Acquired::Fresh;
        while wait_for_pending {
            let pending = consumer
                .clone()
                .info()
                .await
                .map(|i| i.num_ack_pending)
                .unwrap_or(1);
            if pending == 0 || tokio::time::Instant::now() >= deadline {
                wait_for_pending = false;
                continue;
            }
            tracing::info!(
                pending,
                "waiting for the previous holder's messages to come back"
            );
            tokio::select! {
                _ = shutdown.cancelled() => { release_lease(&active_ctx.lease).await; break 'outer; }
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            if !active_ctx.lease.renew().await {
                active_ctx.lease.drop_local();
                continue 'outer;
            }
        }
        // The previous holder's calls still count at Telegram; this process's limiters do not
        // know them. Each chat's last recorded send (a group's budget spans a minute) comes
        // from the ledger; for the bot's and private chats' per-second budgets, keep quiet
        // for one window (plus the headroom) before the first call.
        prime_from_ledger(&active_ctx).await;
        tokio::select! {
            _ = shutdown.cancelled() => { release_lease(&active_ctx.lease).await; break 'outer; }
            _ = tokio::time::sleep(settings.quiet) => {}
        }
        tracing::info!(?how, "active sender for the bot");
        // A fresh cancellation token for this term.
        let run_token = shutdown.child_token();
        let ctx = Arc::new(Ctx {
            cancel: run_token.clone(),
            ..(*active_ctx).clone()
        });
        let renewer = {
            let ctx = ctx.clone();
            let token = run_token.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = tokio::time::sleep(ctx.lease.renew_every()) => {}
                    }
                    if !ctx.lease.renew().await {
                        tracing::error!("lease lost: stopping and handing messages back");
                        ctx.lease.drop_local();
                        token.cancel();
                        return;
                    }
                }
            })
        };
        let (pulled, puller) = pull_held(consumer.clone(), inflight.clone(), run_token.clone());
        let gate_ctx = ctx.clone();
        // While the breaker is open nothing is pulled (the stream is not polled), except when
        // a probe is due: then a message to probe with is pulled, even in a new term whose
        // lanes are empty.
        let input = Box::pin(futures::stream::unfold(pulled, move |mut pulled| {
            let ctx = gate_ctx.clone();
            async move {
                ctx.breaker.wait_pullable().await;
                // While paused, nothing more goes to the lanes (what is pulled stays held).
                if !ctx.gate.wait_running(&ctx.cancel).await {
                    return None;
                }
                let item = pulled.recv().await?;
                Some((item, pulled))
            }
        }));
        let handler_ctx = ctx.clone();
        lanes::run(
            input,
            settings.max_lanes,
            run_token.clone(),
            move |_chat, held| deliver::handle(handler_ctx.clone(), held),
        )
        .await;
        run_token.cancel();
        let _ = renewer.await;
        // The puller finishes its last (short) pull request, so none is left outstanding
        // that could swallow a redelivery; then everything unsettled is handed back. Bounded:
        // with NATS gone the request may never end.
        let abort = puller.abort_handle();
        if tokio::time::timeout(PULL_EXPIRES + HAND_BACK_LIMIT, puller)
            .await
            .is_err()
        {
            abort.abort();
            tracing::warn!("the last pull request did not end; handing back what is held");
        }
        inflight.hand_back().await;
        if shutdown.is_cancelled() {
            release_lease(&ctx.lease).await;
            break;
        }
        active_ctx = ctx;
    }
    inflight.hand_back().await;
    keeper_stop.cancel();
    let _ = keeper.await;
    housekeeping.abort();
}

/// Releases the lease for a standby, bounded: with NATS unreachable the standby takes over
/// after the lease's TTL instead.
async fn release_lease(lease: &Lease) {
    if tokio::time::timeout(HAND_BACK_LIMIT, lease.release())
        .await
        .is_err()
    {
        lease.drop_local();
        tracing::warn!("could not release the lease in time; a standby takes over after its TTL");
    }
}

/// Tells the limits when each chat was last sent to by an earlier holder (finding 8 of the
/// review: a group's 20/min spans a hand-over). Bounded: if the ledger cannot be read within
/// a few seconds, carries on with a warning (the quiet second still covers the bot's and
/// private chats' budgets).
async fn prime_from_ledger(ctx: &Ctx) {
    let rates = ctx.limits.rates();
    let within = rates.chat_period(-1).max(rates.chat_period(1));
    let read = tokio::time::timeout(
        Duration::from_secs(5),
        ledger::recent_sends(&ctx.pool, ctx.bot_id, within),
    )
    .await;
    match read {
        Ok(Ok(recent)) => {
            tracing::debug!(
                chats = recent.len(),
                "chats' last sends read from the ledger"
            );
            for (chat, age) in recent {
                ctx.limits.sent_before(chat, age);
            }
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot read recent sends from the ledger"),
        Err(_) => tracing::warn!("reading recent sends from the ledger timed out"),
    }
}

/// How long one pull request waits for messages: bounds the time a stopping sender needs to
/// have no request outstanding.
const PULL_EXPIRES: Duration = Duration::from_millis(500);

/// Pulls in short batches and wraps every message in [`Held`] the moment it arrives (so it is
/// kept alive and, if not settled, handed back). Stops after `cancel`, once the request in
/// flight has finished.
fn pull_held(
    consumer: jetstream::consumer::Consumer<jetstream::consumer::pull::Config>,
    inflight: Arc<Inflight>,
    cancel: CancellationToken,
) -> (tokio::sync::mpsc::Receiver<(i64, Held)>, JoinHandle<()>) {
    let (tx, rx) = tokio::sync::mpsc::channel::<(i64, Held)>(128);
    let task = tokio::spawn(async move {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        while !cancel.is_cancelled() {
            let batch = consumer
                .batch()
                .max_messages(128)
                .expires(PULL_EXPIRES)
                .messages()
                .await;
            let mut batch = match batch {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot pull messages; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff.next_delay()) => continue,
                    }
                }
            };
            backoff.reset();
            // Drain the request to its end even when stopping: what arrives is handed back.
            while let Some(next) = batch.next().await {
                match next {
                    Ok(msg) => {
                        let chat = pull::chat_of_subject(&msg.subject);
                        let held = Held::new(msg, inflight.clone());
                        if cancel.is_cancelled() {
                            continue;
                        }
                        tokio::select! {
                            sent = tx.send((chat, held)) => { let _ = sent; }
                            _ = cancel.cancelled() => {}
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "pull request ended");
                        break;
                    }
                }
            }
        }
    });
    (rx, task)
}
