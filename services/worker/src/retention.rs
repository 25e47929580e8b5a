//! Bounded tables: old bookkeeping rows are pruned by age.
//!
//! Three tables grow with every update and every reply, and are needed only for a while:
//!
//! - `processed_updates` (the idempotency key of an update): catches an update published
//!   again after JetStream's duplicate window (`topology::DUPLICATE_WINDOW`), which happens
//!   when Telegram retries a delivery whose answer it did not get; Telegram retries for about
//!   a day. Redeliveries from the stream are caught by the order guard, not by this table.
//! - `sent_messages` (the sender's ledger): catches a reply delivered again after it was sent
//!   (an ack lost, or the outbox relay republishing a row a crashed worker did not mark,
//!   after the duplicate window).
//! - `outbox` rows once published: nothing reads them again (the relay reads unpublished rows
//!   only). Unpublished rows are never pruned, however old.
//!
//! Every [`Settings::interval`] (and once at start-up) one worker — the one that gets the
//! PostgreSQL advisory lock [`LOCK_KEY`]; the others skip the pass — deletes the rows older
//! than [`Settings::retention`] in batches of [`Settings::batch`] rows, each batch one short
//! statement of its own (`DELETE … WHERE ctid = ANY(ARRAY(SELECT ctid … ORDER BY <time>
//! LIMIT n))`, served by an index on the timestamp), with a short pause between batches. A
//! batch locks only the old rows it deletes, which nothing else touches, so the hot path
//! (inserting new rows) never waits for it. `dialogue_states`, users and notes are never
//! pruned.
//!
//! **Architecture Invariant:** the retention is longer than Telegram's retry horizon (a day)
//! plus JetStream's duplicate window; [`Args::settings`] refuses anything shorter.

use std::time::Duration;

use courier_common::{config::parse_duration, config::ConfigError, topology, CancellationToken};
use sqlx::{Connection, PgConnection, PgPool};

/// The advisory lock one pruning pass holds (the key spells `courier` and a 1). sqlx's
/// migrator uses its own key.
pub const LOCK_KEY: i64 = 0x636f_7572_6965_7201;

/// How long Telegram keeps retrying a webhook delivery it got no 2xx for (about a day).
pub const TELEGRAM_RETRY_HORIZON: Duration = Duration::from_secs(24 * 3600);

/// The shortest retention accepted: Telegram's retry horizon plus JetStream's duplicate
/// window.
pub const MIN_RETENTION: Duration =
    Duration::from_secs(TELEGRAM_RETRY_HORIZON.as_secs() + topology::DUPLICATE_WINDOW.as_secs());

/// Pause between two batches, so the hot path gets the database between them.
const BATCH_PAUSE: Duration = Duration::from_millis(5);

/// Retention settings (environment variables or the matching flags).
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// How long processed updates, sent-message ledger rows and published outbox rows are kept
    /// (more than a day plus JetStream's duplicate window).
    #[arg(long = "retention", env = "COURIER_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub retention: Duration,
    /// Time between pruning passes (the first runs at start-up; one worker at a time prunes).
    #[arg(long = "retention-interval", env = "COURIER_RETENTION_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    pub interval: Duration,
    /// Rows deleted per statement when pruning.
    #[arg(
        long = "retention-batch",
        env = "COURIER_RETENTION_BATCH",
        default_value_t = 1000
    )]
    pub batch: i64,
}

impl Default for Args {
    /// The same values as the flags' defaults.
    fn default() -> Self {
        Self {
            retention: Duration::from_secs(7 * 86400),
            interval: Duration::from_secs(600),
            batch: 1000,
        }
    }
}

/// Validated retention settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Rows older than this are pruned.
    pub retention: Duration,
    /// Time between passes.
    pub interval: Duration,
    /// Rows per statement.
    pub batch: i64,
}

impl Args {
    /// Validates the arguments; the error names the variable at fault.
    pub fn settings(&self) -> Result<Settings, ConfigError> {
        if self.retention <= MIN_RETENTION {
            return Err(ConfigError {
                var: "COURIER_RETENTION",
                reason: format!(
                    "must be longer than {}m (Telegram retries a delivery for a day; JetStream \
                     drops a republished update only within {}s)",
                    MIN_RETENTION.as_secs() / 60,
                    topology::DUPLICATE_WINDOW.as_secs()
                ),
            });
        }
        if self.interval.is_zero() {
            return Err(ConfigError {
                var: "COURIER_RETENTION_INTERVAL",
                reason: "must be more than 0".into(),
            });
        }
        if !(1..=100_000).contains(&self.batch) {
            return Err(ConfigError {
                var: "COURIER_RETENTION_BATCH",
                reason: "must be between 1 and 100000".into(),
            });
        }
        Ok(Settings {
            retention: self.retention,
            interval: self.interval,
            batch: self.batch,
        })
    }
}

/// Rows deleted by one pass, per table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pruned {
    /// From `processed_updates`.
    pub processed_updates: u64,
    /// From `sent_messages`.
    pub sent_messages: u64,
    /// Published rows from `outbox`.
    pub outbox: u64,
}

/// How a pass ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// This worker pruned (possibly nothing).
    Pruned(Pruned),
    /// Another worker holds the lock: nothing done.
    Busy,
    /// Stopped between two batches because the worker is shutting down.
    Cancelled(Pruned),
}

/// One table's pruning statement: the rows older than `$1`, at most `$2` of them.
struct Table {
    name: &'static str,
    delete: &'static str,
}

const TABLES: [Table; 3] = [
    Table {
        name: "processed_updates",
        delete: "DELETE FROM processed_updates WHERE processed_at < $1 AND ctid = ANY(ARRAY( \
                 SELECT ctid FROM processed_updates WHERE processed_at < $1 \
                 ORDER BY processed_at LIMIT $2))",
    },
    Table {
        name: "sent_messages",
        delete: "DELETE FROM sent_messages WHERE sent_at < $1 AND ctid = ANY(ARRAY( \
                 SELECT ctid FROM sent_messages WHERE sent_at < $1 \
                 ORDER BY sent_at LIMIT $2))",
    },
    Table {
        // `published_at < $1` excludes unpublished rows (NULL).
        name: "outbox",
        delete: "DELETE FROM outbox WHERE published_at < $1 AND ctid = ANY(ARRAY( \
                 SELECT ctid FROM outbox WHERE published_at < $1 \
                 ORDER BY published_at LIMIT $2))",
    },
];

/// The pruning statement of `table` (for `EXPLAIN` in benchmarks).
pub fn delete_statement(table: &str) -> Option<&'static str> {
    TABLES.iter().find(|t| t.name == table).map(|t| t.delete)
}

/// One pass: takes the advisory lock (or returns [`Pass::Busy`]), deletes every row older
/// than the retention in batches, releases the lock.
pub async fn prune_once(
    pool: &PgPool,
    settings: &Settings,
    cancel: &CancellationToken,
) -> Result<Pass, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LOCK_KEY)
        .fetch_one(&mut *conn)
        .await?;
    if !locked {
        return Ok(Pass::Busy);
    }
    let pass = prune_locked(&mut conn, settings, cancel).await;
    let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(LOCK_KEY)
        .execute(&mut *conn)
        .await;
    if pass.is_err() || unlocked.is_err() {
        // Never hand a session that may still hold the lock back to the pool: closing it
        // releases the lock.
        let _ = conn.detach().close().await;
    }
    pass
}

async fn prune_locked(
    conn: &mut PgConnection,
    settings: &Settings,
    cancel: &CancellationToken,
) -> Result<Pass, sqlx::Error> {
    let cutoff: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT now() - make_interval(secs => $1)")
            .bind(settings.retention.as_secs_f64())
            .fetch_one(&mut *conn)
            .await?;
    let mut pruned = Pruned::default();
    for table in &TABLES {
        loop {
            if cancel.is_cancelled() {
                return Ok(Pass::Cancelled(pruned));
            }
            let deleted = sqlx::query(table.delete)
                .bind(cutoff)
                .bind(settings.batch)
                .execute(&mut *conn)
                .await?
                .rows_affected();
            *match table.name {
                "processed_updates" => &mut pruned.processed_updates,
                "sent_messages" => &mut pruned.sent_messages,
                _ => &mut pruned.outbox,
            } += deleted;
            if deleted < settings.batch as u64 {
                break;
            }
            tokio::time::sleep(BATCH_PAUSE).await;
        }
    }
    Ok(Pass::Pruned(pruned))
}

/// The indexes pruning reads (created by the migrations `20261201000002`-`4`).
pub const INDEXES: [&str; 3] = [
    "processed_updates_processed_at_idx",
    "sent_messages_sent_at_idx",
    "outbox_published_at_idx",
];

/// Which of [`INDEXES`] are INVALID: a `CREATE INDEX CONCURRENTLY` was interrupted (a pod
/// killed while migrating), and the migration's `IF NOT EXISTS` skipped it on the next start.
/// PostgreSQL does not use them, so each batch would scan its table.
pub async fn invalid_indexes(pool: &PgPool) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
         WHERE c.relname = ANY($1) AND NOT i.indisvalid ORDER BY 1",
    )
    .bind(&INDEXES[..])
    .fetch_all(pool)
    .await
}

/// Prunes once now and then every `settings.interval` until `cancel` fires. Failures are
/// logged and retried at the next pass. Reports INVALID indexes first ([`invalid_indexes`]).
pub async fn run(pool: PgPool, settings: Settings, cancel: CancellationToken) {
    match invalid_indexes(&pool).await {
        Ok(invalid) => {
            for index in invalid {
                tracing::error!(
                    index = %index,
                    "index is INVALID (its CREATE INDEX CONCURRENTLY was interrupted): pruning \
                     scans the whole table. Run DROP INDEX CONCURRENTLY, then the CREATE INDEX \
                     CONCURRENTLY of its migration (migrations/2026120100000[2-4]_*.up.sql)"
                );
            }
        }
        Err(e) => tracing::debug!(error = %e, "cannot check the pruning indexes"),
    }
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let started = std::time::Instant::now();
        // A pass waiting on an unreachable database must not hold up the worker's shutdown
        // (a pass dropped midway leaves its session to the pool, which closes it, and with it
        // the lock).
        let pass = tokio::select! {
            _ = cancel.cancelled() => return,
            pass = prune_once(&pool, &settings, &cancel) => pass,
        };
        match pass {
            Ok(Pass::Pruned(p)) => {
                let total = p.processed_updates + p.sent_messages + p.outbox;
                if total > 0 {
                    tracing::info!(
                        processed_updates = p.processed_updates,
                        sent_messages = p.sent_messages,
                        outbox = p.outbox,
                        took_ms = started.elapsed().as_millis() as u64,
                        "pruned rows older than the retention"
                    );
                }
            }
            Ok(Pass::Busy) => tracing::debug!("another worker is pruning"),
            Ok(Pass::Cancelled(_)) => return,
            Err(e) => tracing::warn!(error = %e, "pruning failed; trying again at the next pass"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_is_refused_unless_longer_than_a_day_and_the_duplicate_window() {
        let mut args = Args::default();
        assert_eq!(
            args.settings().unwrap().retention,
            Duration::from_secs(7 * 86400)
        );
        args.retention = MIN_RETENTION;
        let e = args.settings().unwrap_err();
        assert_eq!(e.var, "COURIER_RETENTION");
        args.retention = MIN_RETENTION + Duration::from_secs(1);
        assert!(args.settings().is_ok());
        args.batch = 0;
        assert_eq!(args.settings().unwrap_err().var, "COURIER_RETENTION_BATCH");
        args.batch = 10;
        args.interval = Duration::ZERO;
        assert_eq!(
            args.settings().unwrap_err().var,
            "COURIER_RETENTION_INTERVAL"
        );
    }

    #[test]
    fn defaults_match_the_flags() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            args: Args,
        }
        let parsed = Cli::parse_from(["x"]).args;
        let default = Args::default();
        assert_eq!(
            (parsed.retention, parsed.interval, parsed.batch),
            (default.retention, default.interval, default.batch)
        );
    }
}
