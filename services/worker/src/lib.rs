//! Courier worker: applies updates to the notes bot, per chat strictly in order.
//!
//! The worker pulls `courier.updates.<bot>.>` from JetStream, dispatches each message to its
//! chat's lane ([`courier_common::lanes`]: one update at a time per chat, many chats at once),
//! and for each update runs one PostgreSQL transaction ([`store::apply`]) that records it in
//! `processed_updates`, runs the pure FSM ([`courier_bot::step`]), writes its effects, the new
//! dialogue state and the outgoing messages (the outbox). After commit the outbox rows are
//! published to `COURIER_OUTBOUND` ([`outbox::publish`]); then the update is acknowledged.
//!
//! Failures: a database that cannot be reached is retried forever with backoff (the update is
//! kept alive with in-progress acks and its chat waits, so nothing is skipped or reordered);
//! an update that cannot be parsed, or fails for a non-transient reason more than
//! `max_attempts` times, is published to `COURIER_DLQ` with the reason and recorded as
//! handled, so its chat carries on.
#![deny(missing_docs)]

pub mod outbox;
pub mod store;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use courier_common::{
    backoff::Backoff,
    config::{parse_duration, ConfigError, NatsArgs, SecretArgs},
    health, lanes, pull, topology, CancellationToken,
};
use courier_proto::{v1::InboundUpdate, Message as _};
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::store::{Applied, UpdateRef};

/// The embedded migrations (`migrations/` at the repository root).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// Worker configuration (environment variables or the matching flags).
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// PostgreSQL URL (may contain a password; never logged).
    #[arg(long = "database-url", env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Connections in the database pool.
    #[arg(long = "db-pool-size", env = "COURIER_DB_POOL_SIZE", default_value_t = 8)]
    pub db_pool_size: u32,
    /// Run the migrations at start-up.
    #[arg(long = "migrate", env = "COURIER_WORKER_MIGRATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate: bool,
    /// Address of the health and readiness endpoints.
    #[arg(long = "health-addr", env = "COURIER_WORKER_HEALTH_ADDR", default_value = "0.0.0.0:9091")]
    pub health_addr: SocketAddr,
    /// Chats processed concurrently.
    #[arg(long = "max-lanes", env = "COURIER_WORKER_MAX_LANES", default_value_t = 256)]
    pub max_lanes: usize,
    /// Unacknowledged updates the server hands this consumer at most (bounds memory).
    #[arg(long = "max-ack-pending", env = "COURIER_WORKER_MAX_ACK_PENDING", default_value_t = 2048)]
    pub max_ack_pending: i64,
    /// How long JetStream waits for an ack before redelivering (kept alive by progress acks).
    #[arg(long = "ack-wait", env = "COURIER_WORKER_ACK_WAIT", default_value = "30s", value_parser = parse_duration)]
    pub ack_wait: Duration,
    /// Attempts for an update failing with a non-transient error before it is dead-lettered.
    #[arg(long = "max-attempts", env = "COURIER_WORKER_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: u32,
    /// Time between sweeps of the outbox relay.
    #[arg(long = "relay-interval", env = "COURIER_OUTBOX_RELAY_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub relay_interval: Duration,
    /// Age of an unpublished outbox row before the relay takes it over from the live path.
    #[arg(long = "relay-grace", env = "COURIER_OUTBOX_RELAY_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub relay_grace: Duration,
    /// NATS settings.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Bot token and dev mode.
    #[command(flatten)]
    pub secrets: SecretArgs,
}

/// What can stop the worker.
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
    /// Migrations failed.
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Binding or serving HTTP failed.
    #[error("http server: {0}")]
    Io(#[from] std::io::Error),
}

/// Counters of what the worker did (also used by tests).
#[derive(Debug, Default)]
pub struct Stats {
    /// Updates applied.
    pub applied: AtomicU64,
    /// Updates skipped as duplicates.
    pub duplicates: AtomicU64,
    /// Updates of kinds the bot ignores.
    pub ignored: AtomicU64,
    /// Updates sent to the dead-letter stream.
    pub dead_lettered: AtomicU64,
    /// Transient failures retried.
    pub retries: AtomicU64,
}

/// A running worker.
pub struct Worker {
    health_addr: SocketAddr,
    stats: Arc<Stats>,
    task: JoinHandle<Result<(), Error>>,
}

impl Worker {
    /// The bound address of the health endpoints.
    pub fn health_addr(&self) -> SocketAddr {
        self.health_addr
    }

    /// What the worker did so far.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Waits until the worker stopped (after the shutdown token fired and in-flight updates
    /// finished).
    pub async fn wait(self) -> Result<(), Error> {
        self.task
            .await
            .unwrap_or_else(|e| Err(Error::Io(std::io::Error::other(e))))
    }
}

struct Ctx {
    bot_id: i64,
    pool: PgPool,
    js: jetstream::Context,
    max_attempts: u32,
    marker: mpsc::UnboundedSender<Vec<i64>>,
    stats: Arc<Stats>,
    cancel: CancellationToken,
}

/// The name of the worker's durable consumer for a bot.
pub fn consumer_name(bot_id: i64) -> String {
    format!("courier-worker-{bot_id}")
}

/// Validates the configuration, connects, migrates, and starts consuming.
pub async fn spawn(config: Config, shutdown: CancellationToken) -> Result<Worker, Error> {
    let token = config.secrets.bot_token()?;
    let bot_id = token.bot_id();
    let url = config.database_url.clone().filter(|u| !u.is_empty()).ok_or(ConfigError {
        var: "DATABASE_URL",
        reason: "is required (postgres://user:password@host:port/database)".into(),
    })?;
    let connect_options: sqlx::postgres::PgConnectOptions = url.parse().map_err(|e: sqlx::Error| ConfigError {
        var: "DATABASE_URL",
        reason: format!("is not a PostgreSQL URL: {e}"),
    })?;
    let pool = PgPoolOptions::new()
        .max_connections(config.db_pool_size.max(1))
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(connect_options);

    let nats = config.nats.connect("courier-worker").await?;
    let js = jetstream::new(nats.clone());
    topology::ensure_streams(&js, config.nats.partitions).await?;

    if config.migrate {
        migrate_with_retry(&pool, &shutdown).await?;
    }

    let stream = js
        .get_stream(topology::UPDATES_STREAM)
        .await
        .map_err(|e| Error::JetStream(e.to_string()))?;
    let name = consumer_name(bot_id);
    let consumer: jetstream::consumer::Consumer<jetstream::consumer::pull::Config> = stream
        .get_or_create_consumer(
            &name,
            jetstream::consumer::pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: topology::updates_filter(bot_id),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: config.ack_wait,
                max_ack_pending: config.max_ack_pending,
                max_deliver: -1,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| Error::JetStream(e.to_string()))?;

    let health_pool = pool.clone();
    let db_probe: health::Probe = Arc::new(move || {
        let pool = health_pool.clone();
        Box::pin(async move {
            tokio::time::timeout(Duration::from_secs(2), sqlx::query("SELECT 1").execute(&pool))
                .await
                .map_err(|_| "postgres: timeout".to_owned())?
                .map(|_| ())
                .map_err(|e| format!("postgres: {e}"))
        })
    });
    let app = health::router(vec![("nats", health::nats_probe(nats)), ("postgres", db_probe)]);
    let listener = tokio::net::TcpListener::bind(config.health_addr).await?;
    let health_addr = listener.local_addr()?;
    let http_shutdown = shutdown.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(http_shutdown.cancelled_owned())
            .await
    });

    let (marker, marker_task) = outbox::spawn_marker(pool.clone());
    let relay = tokio::spawn(outbox::relay(
        pool.clone(),
        js.clone(),
        bot_id,
        outbox::RelaySettings {
            interval: config.relay_interval,
            grace: config.relay_grace,
        },
        shutdown.clone(),
    ));
    let stats = Arc::new(Stats::default());
    let ctx = Arc::new(Ctx {
        bot_id,
        pool: pool.clone(),
        js,
        max_attempts: config.max_attempts.max(1),
        marker,
        stats: stats.clone(),
        cancel: shutdown.clone(),
    });
    tracing::info!(bot_id, consumer = %name, %health_addr, "worker consuming");
    let max_lanes = config.max_lanes;
    let task = tokio::spawn(async move {
        let input = pull::keyed_messages(consumer, shutdown.clone());
        let handler_ctx = ctx.clone();
        lanes::run(input, max_lanes, shutdown.clone(), move |_chat, msg| {
            handle(handler_ctx.clone(), msg)
        })
        .await;
        drop(ctx);
        let _ = relay.await;
        let _ = marker_task.await;
        let _ = http.await;
        pool.close().await;
        tracing::info!("worker stopped");
        Ok(())
    });
    Ok(Worker {
        health_addr,
        stats,
        task,
    })
}

/// Runs the worker until `shutdown` fires.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    spawn(config, shutdown).await?.wait().await
}

async fn migrate_with_retry(pool: &PgPool, cancel: &CancellationToken) -> Result<(), Error> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        match MIGRATOR.run(pool).await {
            Ok(()) => return Ok(()),
            Err(sqlx::migrate::MigrateError::Execute(e)) if store::is_transient_db(&e) => {
                tracing::warn!("database not reachable for migrations; retrying");
            }
            Err(e) => return Err(e.into()),
        }
        tokio::select! {
            _ = cancel.cancelled() => return Err(Error::JetStream("cancelled during start-up".into())),
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

async fn handle(ctx: Arc<Ctx>, msg: jetstream::Message) {
    let seq = match msg.info() {
        Ok(info) => info.stream_sequence,
        Err(e) => {
            tracing::error!(error = %e, "message without JetStream info");
            return;
        }
    };
    let envelope = match InboundUpdate::decode(msg.payload.clone()) {
        Ok(env) => env,
        Err(e) => {
            dead_letter(&ctx, &msg, None, &format!("undecodable envelope: {e}")).await;
            return;
        }
    };
    let upd = UpdateRef {
        bot_id: envelope.bot_id,
        update_id: envelope.update_id,
        chat_id: envelope.chat_id,
        seq,
    };
    let update: teloxide_core::types::Update = match serde_json::from_slice(&envelope.update_json) {
        Ok(u) => u,
        Err(e) => {
            dead_letter(&ctx, &msg, Some(upd), &format!("update is not valid JSON: {e}")).await;
            return;
        }
    };
    let Some(incoming) = courier_bot::classify(&update) else {
        ctx.stats.ignored.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(update_id = upd.update_id, "update kind ignored by the bot");
        ack(&msg).await;
        return;
    };

    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    let mut failures = 0u32;
    loop {
        match store::apply(&ctx.pool, upd, &incoming).await {
            Ok(Applied::Applied(rows)) => {
                ctx.stats.applied.fetch_add(1, Ordering::Relaxed);
                if !rows.is_empty() {
                    let published = outbox::publish(&ctx.js, ctx.bot_id, &rows).await;
                    if !published.is_empty() {
                        let _ = ctx.marker.send(published);
                    }
                }
                ack(&msg).await;
                return;
            }
            Ok(Applied::Duplicate) => {
                ctx.stats.duplicates.fetch_add(1, Ordering::Relaxed);
                tracing::info!(update_id = upd.update_id, seq, "duplicate update skipped");
                ack(&msg).await;
                return;
            }
            Err(e) if e.is_transient() => {
                ctx.stats.retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(update_id = upd.update_id, error = %e, "transient failure; retrying");
                // Keep the delivery alive while the chat waits.
                let _ = msg.ack_with(AckKind::Progress).await;
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(update_id = upd.update_id, attempt = failures, error = %e, "update failed");
                if failures >= ctx.max_attempts {
                    dead_letter(&ctx, &msg, Some(upd), &e.to_string()).await;
                    return;
                }
            }
        }
        tokio::select! {
            // Not acknowledged: JetStream redelivers it to whoever consumes next.
            _ = ctx.cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// Parks a poison update in `COURIER_DLQ` with its reason, records it as handled, and acks it.
/// If the dead-letter publish itself fails, the update is left unacknowledged (redelivered).
async fn dead_letter(ctx: &Ctx, msg: &jetstream::Message, upd: Option<UpdateRef>, reason: &str) {
    tracing::error!(update_id = upd.map(|u| u.update_id), reason, "dead-lettering update");
    let published = topology::publish_dead_letter(
        &ctx.js,
        ctx.bot_id,
        "updates",
        &msg.subject,
        msg.payload.clone(),
        reason,
    )
    .await;
    if !published {
        tracing::error!("dead-letter publish failed; the update will be redelivered");
        return;
    }
    if let Some(upd) = upd {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        while let Err(e) = store::record_dead_letter(&ctx.pool, upd).await {
            tracing::warn!(error = %e, "cannot record dead letter yet; retrying");
            tokio::select! {
                _ = ctx.cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }
    ctx.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
    ack(msg).await;
}

async fn ack(msg: &jetstream::Message) {
    if let Err(e) = msg.ack().await {
        // Redelivered later and then skipped as a duplicate.
        tracing::warn!(error = %e, "ack failed");
    }
}
