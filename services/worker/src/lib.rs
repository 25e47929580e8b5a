//! Courier worker: applies updates to the notes bot, per chat strictly in order, scaled out
//! over partitions.
//!
//! Ingress publishes each update to `courier.updates.<bot>.<partition>.<chat>`. Each partition
//! has a durable pull consumer with the pinned-client priority policy; workers announce
//! themselves in a key-value bucket ([`membership`]) and split the partitions between them by
//! bounded rendezvous hashing ([`assign`], [`partitions`]). A partition's messages go to
//! per-chat lanes ([`courier_common::lanes`]: one update at a time per chat, many chats at
//! once), and each update is applied in one PostgreSQL transaction ([`store::apply`]) that
//! records it in `processed_updates`, checks the chat's order (`last_seq`), runs the bot's
//! pure FSM ([`courier_bot_api::Bot::step`]; which bot: [`bots`]), writes its effects, the new
//! dialogue state and the outgoing calls (the outbox). After commit the outbox rows are published to `COURIER_OUTBOUND`
//! ([`outbox::publish`]); then the update is acknowledged ([`apply::Applier`]).
//!
//! Failures: a database that cannot be reached is retried forever with backoff (the update is
//! kept alive with in-progress acks and its chat waits, so nothing is skipped or reordered);
//! an update that cannot be parsed, or fails for a non-transient reason `max_attempts` times,
//! is published to `COURIER_DLQ` with the reason and recorded as handled, so its chat carries
//! on.
#![deny(missing_docs)]

pub mod apply;
pub mod assign;
pub mod bots;
pub mod broadcast;
pub mod deliveries;
mod effects;
pub mod epoch;
pub mod group;
pub mod membership;
pub mod metrics;
pub mod outbox;
pub mod partitions;
pub mod retention;
pub mod store;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream;
use axum::{extract::State, routing::get, Json, Router};
use courier_common::{
    config::{parse_duration, ConfigError, NatsArgs, SecretArgs},
    health, topology, CancellationToken,
};
use tokio::task::JoinHandle;

use crate::apply::Applier;
pub use crate::bots::BotKind;
use courier_bot_api::Bot;

/// The embedded migrations (`migrations/` at the repository root).
pub use courier_db::MIGRATOR;

/// Configuration of `courier-worker migrate`, which runs the migrations and exits.
#[derive(Debug, Clone, clap::Args)]
pub struct MigrateArgs {
    /// The bot whose tables are migrated after Courier's own.
    #[arg(long = "bot", env = "COURIER_BOT", value_enum, default_value_t = BotKind::Notes)]
    pub bot: BotKind,
    /// PostgreSQL URL (may contain a password; never logged).
    #[arg(long = "database-url", env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// How long `migrate` keeps trying while the database cannot be reached or another
    /// process holds the migration lock, before it gives up with the last error.
    #[arg(long = "wait", env = "COURIER_MIGRATE_WAIT", default_value = "2m", value_parser = parse_duration)]
    pub wait: Duration,
}

/// Worker configuration (environment variables or the matching flags).
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// The bot this deployment runs (`docs/BOTS.md`).
    #[arg(long = "bot", env = "COURIER_BOT", value_enum, default_value_t = BotKind::Notes)]
    pub bot: BotKind,
    /// PostgreSQL URL (may contain a password; never logged).
    #[arg(long = "database-url", env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Connections in the database pool.
    #[arg(
        long = "db-pool-size",
        env = "COURIER_DB_POOL_SIZE",
        default_value_t = 8
    )]
    pub db_pool_size: u32,
    /// Run the migrations at start-up.
    #[arg(long = "migrate", env = "COURIER_WORKER_MIGRATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate: bool,
    /// Address of the health, readiness and metrics endpoints.
    #[arg(
        long = "health-addr",
        env = "COURIER_WORKER_HEALTH_ADDR",
        default_value = "0.0.0.0:9091"
    )]
    pub health_addr: SocketAddr,
    /// This worker's id in the membership (default: host name, process id and a random suffix).
    #[arg(long = "worker-id", env = "COURIER_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Partitions to own regardless of membership, e.g. `0-7,12` (manual operation and tests);
    /// unset: share the partitions with the other live workers.
    #[arg(long = "fixed-partitions", env = "COURIER_WORKER_FIXED_PARTITIONS", value_parser = parse_partitions)]
    pub fixed_partitions: Option<Vec<u32>>,
    /// How often a worker heartbeats and recomputes its partitions.
    #[arg(long = "heartbeat", env = "COURIER_WORKER_HEARTBEAT", default_value = "1s", value_parser = parse_duration)]
    pub heartbeat: Duration,
    /// A worker without a heartbeat for this long is considered gone.
    #[arg(long = "member-ttl", env = "COURIER_WORKER_MEMBER_TTL", default_value = "4s", value_parser = parse_duration)]
    pub member_ttl: Duration,
    /// A partition's pin moves to another worker after this long without pulls.
    #[arg(long = "priority-timeout", env = "COURIER_WORKER_PRIORITY_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub priority_timeout: Duration,
    /// Chats processed concurrently per partition.
    #[arg(
        long = "max-lanes",
        env = "COURIER_WORKER_MAX_LANES",
        default_value_t = 64
    )]
    pub max_lanes: usize,
    /// Apply the common updates of many chats in one transaction (group commit: one commit
    /// for all of them); `false` applies each update in its own.
    #[arg(long = "group-commit", env = "COURIER_WORKER_GROUP_COMMIT", default_value_t = true, action = clap::ArgAction::Set)]
    pub group_commit: bool,
    /// Updates applied concurrently by the whole worker (bounds database load).
    #[arg(
        long = "max-in-flight",
        env = "COURIER_WORKER_MAX_IN_FLIGHT",
        default_value_t = 64
    )]
    pub max_in_flight: usize,
    /// Unacknowledged updates the server hands out per partition at most (bounds memory).
    #[arg(
        long = "max-ack-pending",
        env = "COURIER_WORKER_MAX_ACK_PENDING",
        default_value_t = 512
    )]
    pub max_ack_pending: i64,
    /// How long JetStream waits for an ack before redelivering (kept alive by progress acks).
    #[arg(long = "ack-wait", env = "COURIER_WORKER_ACK_WAIT", default_value = "15s", value_parser = parse_duration)]
    pub ack_wait: Duration,
    /// Attempts for an update failing with a non-transient error before it is dead-lettered.
    #[arg(
        long = "max-attempts",
        env = "COURIER_WORKER_MAX_ATTEMPTS",
        default_value_t = 5
    )]
    pub max_attempts: u32,
    /// Updates one user may send within `COURIER_WORKER_FLOOD_WINDOW` (counted across chats
    /// and workers, in PostgreSQL); the first one over gets a single "slow down" reply, the
    /// rest of the window is recorded as handled without effects. 0 turns flood control off.
    #[arg(
        long = "flood-limit",
        env = "COURIER_WORKER_FLOOD_LIMIT",
        default_value_t = 20
    )]
    pub flood_limit: u32,
    /// The window of `COURIER_WORKER_FLOOD_LIMIT`; it starts at a user's first update after the
    /// previous one ended.
    #[arg(long = "flood-window", env = "COURIER_WORKER_FLOOD_WINDOW", default_value = "10s", value_parser = parse_duration)]
    pub flood_window: Duration,
    /// Time between sweeps of the outbox relay.
    #[arg(long = "relay-interval", env = "COURIER_OUTBOX_RELAY_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub relay_interval: Duration,
    /// Age of an unpublished outbox row before the relay takes it over from the live path.
    #[arg(long = "relay-grace", env = "COURIER_OUTBOX_RELAY_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub relay_grace: Duration,
    /// How often the gauges that cost a round trip are read: each owned partition's consumer
    /// lag, the outbox backlog, the dead-letter stream's size.
    #[arg(long = "metrics-interval", env = "COURIER_WORKER_METRICS_INTERVAL", default_value = "5s", value_parser = parse_duration)]
    pub metrics_interval: Duration,
    /// Pruning of old bookkeeping rows.
    #[command(flatten)]
    pub retention: retention::Args,
    /// NATS settings.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Bot token and dev mode.
    #[command(flatten)]
    pub secrets: SecretArgs,
}

/// Parses `0-7,12` into partition numbers.
pub fn parse_partitions(raw: &str) -> Result<Vec<u32>, String> {
    let mut out = BTreeSet::new();
    for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("`{part}` is not a partition or a range like 0-7");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (u32, u32) = (
                    a.trim().parse().map_err(|_| bad())?,
                    b.trim().parse().map_err(|_| bad())?,
                );
                if a > b {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => {
                out.insert(part.parse().map_err(|_| bad())?);
            }
        }
    }
    Ok(out.into_iter().collect())
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
    /// JetStream trouble.
    #[error("JetStream: {0}")]
    JetStream(String),
    /// The membership bucket could not be used.
    #[error(transparent)]
    Membership(#[from] membership::MembershipError),
    /// Migrations failed.
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Binding or serving HTTP failed.
    #[error("http server: {0}")]
    Io(#[from] std::io::Error),
}

pub use metrics::Stats;

/// A running worker.
pub struct Worker {
    id: String,
    health_addr: SocketAddr,
    stats: Arc<Stats>,
    owned: partitions::Owned,
    task: JoinHandle<Result<(), Error>>,
}

impl Worker {
    /// This worker's membership id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The bound address of the health endpoints.
    pub fn health_addr(&self) -> SocketAddr {
        self.health_addr
    }

    /// What the worker did so far.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// The partitions this worker pulls right now.
    pub fn partitions(&self) -> Vec<u32> {
        self.owned
            .read()
            .expect("owned lock")
            .iter()
            .copied()
            .collect()
    }

    /// Waits until the worker stopped (after the shutdown token fired, in-flight updates
    /// finished and its partitions were handed back).
    pub async fn wait(self) -> Result<(), Error> {
        self.task
            .await
            .unwrap_or_else(|e| Err(Error::Io(std::io::Error::other(e))))
    }
}

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".to_owned());
    let host: String = host
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "{host}-{}-{:04x}",
        std::process::id(),
        rand::random::<u16>()
    )
}

/// Validates the configuration, connects, migrates, joins the membership and starts consuming,
/// with the bot `config.bot` names.
pub async fn spawn(config: Config, shutdown: CancellationToken) -> Result<Worker, Error> {
    config.bot.spawn(config, shutdown).await
}

/// [`spawn`] with a given bot.
pub async fn spawn_with<B: Bot>(
    bot: B,
    config: Config,
    shutdown: CancellationToken,
) -> Result<Worker, Error> {
    let token = config.secrets.bot_token()?;
    let bot_id = token.bot_id();
    let pool = courier_db::lazy_pool(config.database_url.as_deref(), config.db_pool_size)?;
    let retention = config.retention.settings()?;
    if config.member_ttl <= config.heartbeat * 2 {
        return Err(ConfigError {
            var: "COURIER_WORKER_MEMBER_TTL",
            reason: "must be more than twice COURIER_WORKER_HEARTBEAT".into(),
        }
        .into());
    }
    if config.metrics_interval.is_zero() {
        return Err(ConfigError {
            var: "COURIER_WORKER_METRICS_INTERVAL",
            reason: "must be longer than 0".into(),
        }
        .into());
    }
    if config.flood_limit > 0 && config.flood_window.is_zero() {
        return Err(ConfigError {
            var: "COURIER_WORKER_FLOOD_WINDOW",
            reason: "must be longer than 0 (or set COURIER_WORKER_FLOOD_LIMIT=0 to turn flood control off)".into(),
        }
        .into());
    }
    if let Some(bad) = config
        .fixed_partitions
        .iter()
        .flatten()
        .find(|p| **p >= config.nats.partitions)
    {
        return Err(ConfigError {
            var: "COURIER_WORKER_FIXED_PARTITIONS",
            reason: format!(
                "partition {bad} does not exist (COURIER_PARTITIONS={})",
                config.nats.partitions
            ),
        }
        .into());
    }
    let worker_id = config
        .worker_id
        .clone()
        .filter(|i| !i.is_empty())
        .unwrap_or_else(default_worker_id);
    if !worker_id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(ConfigError {
            var: "COURIER_WORKER_ID",
            reason: "may contain only A-Z a-z 0-9 - _".into(),
        }
        .into());
    }
    let nats = config.nats.connect("courier-worker").await?;
    let js = jetstream::new(nats.clone());
    topology::ensure_streams(&js, config.nats.partitions).await?;

    if config.migrate
        && !courier_db::migrate_with_retry_and(&pool, bot.migrations(), &shutdown).await?
    {
        return Err(Error::JetStream("cancelled during start-up".into()));
    }

    let updates = js
        .get_stream(topology::UPDATES_STREAM)
        .await
        .map_err(|e| Error::JetStream(e.to_string()))?;
    let membership =
        membership::Membership::join(&js, bot_id, &worker_id, config.member_ttl).await?;

    let stats = Arc::new(Stats::default());
    let gauges = metrics::Gauges::default();
    let mut registry = prometheus_client::registry::Registry::default();
    stats.register(&mut registry);
    gauges.register(&mut registry);
    let owned: partitions::Owned = Arc::new(RwLock::new(BTreeSet::new()));
    let info_owned = owned.clone();
    let info_id = worker_id.clone();
    let info: health::Info = Arc::new(move || {
        let owned: Vec<u32> = info_owned
            .read()
            .expect("owned lock")
            .iter()
            .copied()
            .collect();
        serde_json::json!({ "worker": info_id, "partitions": owned })
    });
    let app = health::router_with_info(
        vec![
            ("nats", health::nats_probe(nats)),
            ("postgres", courier_db::probe(pool.clone())),
        ],
        Some(info),
    )
    .merge(
        Router::new()
            .route("/partitions", get(owned_partitions))
            .with_state(Observed {
                id: worker_id.clone(),
                owned: owned.clone(),
            }),
    )
    .merge(courier_common::metrics::router(
        registry,
        Some(gauges.scrape_hook(owned.clone(), stats.clone(), pool.clone())),
    ));
    let listener = tokio::net::TcpListener::bind(config.health_addr).await?;
    let health_addr = listener.local_addr()?;
    let http_shutdown = shutdown.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(http_shutdown.cancelled_owned())
            .await
    });

    let marks = Arc::new(outbox::Marks::default());
    let marker_task = outbox::spawn_marker(pool.clone(), marks.clone());
    let relay = tokio::spawn(outbox::relay(
        pool.clone(),
        js.clone(),
        bot_id,
        outbox::RelaySettings {
            interval: config.relay_interval,
            grace: config.relay_grace,
        },
        stats.clone(),
        shutdown.clone(),
    ));
    let refresher = metrics::spawn_refresher(
        gauges,
        metrics::Sources {
            bot_id,
            pool: pool.clone(),
            updates: updates.clone(),
            js: js.clone(),
            owned: owned.clone(),
        },
        config.metrics_interval,
        shutdown.clone(),
    );
    let pruner = tokio::spawn(retention::run(pool.clone(), retention, shutdown.clone()));
    let broadcaster = tokio::spawn(broadcast::run(
        pool.clone(),
        js.clone(),
        bot_id,
        marks.clone(),
        shutdown.clone(),
    ));
    let flood_budget = store::FloodBudget {
        limit: config.flood_limit,
        window: config.flood_window,
    };
    let bot = Arc::new(bot);
    tracing::info!(bot = bot.name(), "running bot");
    let applier = Arc::new(Applier {
        bot: bot.clone(),
        bot_id,
        pool: pool.clone(),
        js,
        epoch: Arc::new(epoch::StreamEpoch::new(updates.clone())),
        updates,
        max_attempts: config.max_attempts.max(1),
        flood: flood_budget,
        group: config.group_commit.then(|| {
            group::Group::spawn(
                bot,
                pool.clone(),
                flood_budget,
                marks.clone(),
                stats.clone(),
            )
        }),
        marks,
        stats: stats.clone(),
        cancel: shutdown.clone(),
        permits: Arc::new(tokio::sync::Semaphore::new(config.max_in_flight.max(1))),
    });
    let settings = partitions::Settings {
        partitions: config.nats.partitions,
        heartbeat: config.heartbeat,
        priority_timeout: config.priority_timeout,
        ack_wait: config.ack_wait,
        max_ack_pending: config.max_ack_pending,
        max_lanes: config.max_lanes,
        fixed: config.fixed_partitions.clone(),
        // Past the ack wait JetStream would redeliver an abandoned update to the next holder
        // anyway: waiting longer for a released partition's updates gains nothing.
        handover_timeout: config.ack_wait,
    };
    tracing::info!(bot_id, worker = %worker_id, %health_addr, "worker started");
    let task_owned = owned.clone();
    let task = tokio::spawn(async move {
        partitions::run(applier, membership, settings, task_owned, shutdown).await;
        let _ = relay.await;
        let _ = refresher.await;
        let _ = pruner.await;
        let _ = broadcaster.await;
        let _ = marker_task.await;
        let _ = http.await;
        pool.close().await;
        tracing::info!("worker stopped");
        Ok(())
    });
    Ok(Worker {
        id: worker_id,
        health_addr,
        stats,
        owned,
        task,
    })
}

/// Runs the worker until `shutdown` fires.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    spawn(config, shutdown).await?.wait().await
}

#[derive(Clone)]
struct Observed {
    id: String,
    owned: partitions::Owned,
}

async fn owned_partitions(State(o): State<Observed>) -> Json<serde_json::Value> {
    let owned: Vec<u32> = o
        .owned
        .read()
        .expect("owned lock")
        .iter()
        .copied()
        .collect();
    Json(serde_json::json!({ "worker": o.id, "partitions": owned }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn partition_lists_parse() {
        assert_eq!(
            super::parse_partitions("0-3,7, 5").unwrap(),
            vec![0, 1, 2, 3, 5, 7]
        );
        assert!(super::parse_partitions("3-1").is_err());
        assert!(super::parse_partitions("x").is_err());
    }
}
