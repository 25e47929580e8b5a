//! Courier's PostgreSQL plumbing, shared by the worker and the sender: the pool built from
//! `DATABASE_URL`, the embedded migrations (`migrations/` at the repository root), the
//! readiness probe, which database errors are worth retrying, and the pool's metrics
//! ([`metrics::PoolMetrics`]).
#![deny(missing_docs)]

pub mod group;
pub mod metrics;

use std::sync::Arc;
use std::time::Duration;

use courier_common::{backoff::Backoff, config::ConfigError, health, CancellationToken};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

/// The embedded migrations: Courier's own tables. Every service that migrates runs the same
/// set, under one advisory lock, so replicas starting together are safe. The worker then runs
/// its bot's migrations (`courier_bot_api::Bot::migrations`, passed to
/// [`migrate_with_retry_and`]), which share sqlx's `_sqlx_migrations` table: each set ignores
/// the other's versions (`ignore_missing`).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate::Migrator {
    ignore_missing: true,
    ..sqlx::migrate!("../../migrations")
};

/// A pool that connects lazily (a service starts while PostgreSQL is still down and reports
/// not-ready meanwhile). `url` is `DATABASE_URL`; it is never logged.
pub fn lazy_pool(url: Option<&str>, size: u32) -> Result<PgPool, ConfigError> {
    let url = url.filter(|u| !u.is_empty()).ok_or(ConfigError {
        var: "DATABASE_URL",
        reason: "is required (postgres://user:password@host:port/database)".into(),
    })?;
    let options: PgConnectOptions = url.parse().map_err(|e: sqlx::Error| ConfigError {
        var: "DATABASE_URL",
        reason: format!("is not a PostgreSQL URL: {e}"),
    })?;
    Ok(PgPoolOptions::new()
        .max_connections(size.max(1))
        .acquire_timeout(Duration::from_secs(5))
        .connect_lazy_with(options))
}

/// Whether a database error may go away by itself: connection trouble, pool exhaustion,
/// serialization conflicts and server shutdowns are transient; data errors (SQLSTATE class
/// 22, such as a NUL byte in text), constraint violations (23), schema errors (42) and
/// decoding errors are not.
pub fn is_transient(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            let code = db.code().unwrap_or_default();
            !(code.starts_with("22") || code.starts_with("23") || code.starts_with("42"))
        }
        sqlx::Error::ColumnDecode { .. }
        | sqlx::Error::Decode(_)
        | sqlx::Error::TypeNotFound { .. }
        | sqlx::Error::ColumnNotFound(_)
        | sqlx::Error::ColumnIndexOutOfBounds { .. } => false,
        _ => true,
    }
}

/// Runs the migrations, retrying while the database cannot be reached. `Ok(false)` when
/// `cancel` fired first.
pub async fn migrate_with_retry(
    pool: &PgPool,
    cancel: &CancellationToken,
) -> Result<bool, sqlx::migrate::MigrateError> {
    migrate_with_retry_and(pool, None, cancel).await
}

/// [`migrate_with_retry`], then `extra` (a bot's own migrations) under the same lock.
pub async fn migrate_with_retry_and(
    pool: &PgPool,
    extra: Option<&sqlx::migrate::Migrator>,
    cancel: &CancellationToken,
) -> Result<bool, sqlx::migrate::MigrateError> {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        match migrate_under_lock(pool, extra, cancel).await {
            Ok(applied) => return Ok(applied.is_some()),
            Err(e) if is_passing(&e) => {
                tracing::warn!(error = %e, "migrations failed for a passing reason; retrying");
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(false),
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// Whether a migration run failed for a reason that may pass: the database could not be
/// reached, or a migration failed for a passing reason (a deadlock: a `CREATE INDEX
/// CONCURRENTLY` waits for every older transaction, among them other processes' waits for
/// the migration lock; a lost connection). Such a migration was not recorded as applied, so
/// running the migrations again retries it.
fn is_passing(e: &sqlx::migrate::MigrateError) -> bool {
    use sqlx::migrate::MigrateError;
    match e {
        MigrateError::Execute(e) | MigrateError::ExecuteMigration(e, _) => is_transient(e),
        _ => false,
    }
}

/// What [`migrate_within`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationReport {
    /// The versions this run applied, oldest first; empty when the database was up to date.
    pub applied: Vec<i64>,
    /// The newest migration the database has now.
    pub version: Option<i64>,
}

/// Why [`migrate_within`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum MigrateWithinError {
    /// The database could not be reached (or kept failing for a passing reason) for the whole
    /// wait; the last error says why.
    #[error("no migration run succeeded within {waited:?}; last error: {last}")]
    Unreachable {
        /// How long it tried.
        waited: Duration,
        /// The last attempt's error.
        last: sqlx::migrate::MigrateError,
    },
    /// Another process held the migration lock for the whole wait.
    #[error("another process held the migration lock for {0:?}")]
    LockHeld(Duration),
    /// The token was cancelled (a signal) before the migrations ran.
    #[error("cancelled before the migrations ran")]
    Cancelled,
    /// A migration failed for good (bad SQL, a changed migration, a database newer than
    /// this binary, missing privileges).
    #[error(transparent)]
    Failed(sqlx::migrate::MigrateError),
}

/// Runs the migrations once (Courier's, then `extra`: a bot's), for a migrate-only command:
/// like [`migrate_with_retry_and`] (the same lock, the same retries while the database cannot
/// be reached), but gives up after `wait` with the last error, and reports which migrations
/// it applied.
pub async fn migrate_within(
    pool: &PgPool,
    extra: Option<&sqlx::migrate::Migrator>,
    wait: Duration,
    cancel: &CancellationToken,
) -> Result<MigrationReport, MigrateWithinError> {
    let deadline = tokio::time::Instant::now() + wait;
    // Cancelled at the deadline, so that waiting for the lock ends there too.
    let bounded = cancel.child_token();
    let timer = tokio::spawn({
        let bounded = bounded.clone();
        async move {
            tokio::time::sleep_until(deadline).await;
            bounded.cancel();
        }
    });
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let outcome = loop {
        match migrate_under_lock(pool, extra, &bounded).await {
            Ok(Some(applied)) => {
                let version = MIGRATOR
                    .iter()
                    .chain(extra.into_iter().flat_map(|m| m.iter()))
                    .filter(|m| m.migration_type.is_up_migration())
                    .map(|m| m.version)
                    .max();
                break Ok(MigrationReport { applied, version });
            }
            Ok(None) if cancel.is_cancelled() => break Err(MigrateWithinError::Cancelled),
            Ok(None) => break Err(MigrateWithinError::LockHeld(wait)),
            Err(e) if is_passing(&e) => {
                let delay = backoff.next_delay();
                if tokio::time::Instant::now() + delay >= deadline {
                    break Err(MigrateWithinError::Unreachable {
                        waited: wait,
                        last: e,
                    });
                }
                tracing::warn!(error = %e, "migrations failed for a passing reason; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => break Err(MigrateWithinError::Cancelled),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) => break Err(MigrateWithinError::Failed(e)),
        }
    };
    timer.abort();
    outcome
}

/// sqlx's migration lock key for a database (the same function), so that a process running
/// sqlx's own locking (an older version) and this one still exclude each other.
fn migration_lock_id(database: &str) -> i64 {
    const CRC_IEEE: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISO_HDLC);
    0x3d32ad9e * (CRC_IEEE.checksum(database.as_bytes()) as i64)
}

/// Runs the migrations while holding the migration lock, taken without waiting inside
/// PostgreSQL. sqlx's migrator waits in `pg_advisory_lock()`, and a backend waiting there
/// holds a snapshot, for which a `CREATE INDEX CONCURRENTLY` in the holder's migration
/// waits: a deadlock PostgreSQL breaks by aborting one of them, and with several processes
/// starting together (workers scaled out at once, the test harness's three workers) the
/// retries can go on for long. Here a process polls `pg_try_advisory_lock()` and sleeps
/// between polls, holding no snapshot. The lock lives on a connection of its own (not the
/// pool's), so it ends with it whatever happens. Returns the versions it applied, oldest
/// first; `Ok(None)`: `cancel` fired before the lock was taken.
async fn migrate_under_lock(
    pool: &PgPool,
    extra: Option<&sqlx::migrate::Migrator>,
    cancel: &CancellationToken,
) -> Result<Option<Vec<i64>>, sqlx::migrate::MigrateError> {
    use sqlx::migrate::MigrateError;
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect_with(&pool.connect_options())
        .await
        .map_err(MigrateError::Execute)?;
    let database: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&mut conn)
        .await
        .map_err(MigrateError::Execute)?;
    let lock_id = migration_lock_id(&database);
    loop {
        let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(lock_id)
            .fetch_one(&mut conn)
            .await
            .map_err(MigrateError::Execute)?;
        if locked {
            break;
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(None),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    let result = run_locked(&mut conn, extra).await;
    // Closing the connection releases the lock in any case; unlock first to be quick.
    let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(lock_id)
        .execute(&mut conn)
        .await;
    let _ = conn.close().await;
    result.map(Some)
}

/// Runs the migrations (Courier's, then `extra`) on a connection that holds the migration
/// lock; returns the versions it applied.
async fn run_locked(
    conn: &mut sqlx::PgConnection,
    extra: Option<&sqlx::migrate::Migrator>,
) -> Result<Vec<i64>, sqlx::migrate::MigrateError> {
    use sqlx::migrate::MigrateError;
    let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
        .fetch_one(&mut *conn)
        .await
        .map_err(MigrateError::Execute)?;
    let before: Vec<i64> = if exists {
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(&mut *conn)
            .await
            .map_err(MigrateError::Execute)?
    } else {
        Vec::new()
    };
    // Under our own lock: sqlx's waits inside PostgreSQL (see `migrate_under_lock`).
    for set in std::iter::once(&MIGRATOR).chain(extra) {
        let mut migrator = sqlx::migrate::Migrator {
            migrations: set.migrations.clone(),
            ..sqlx::migrate::Migrator::DEFAULT
        };
        migrator.set_locking(false);
        migrator.set_ignore_missing(true);
        migrator.run(&mut *conn).await?;
    }
    let mut applied: Vec<i64> = MIGRATOR
        .iter()
        .chain(extra.into_iter().flat_map(|m| m.iter()))
        .filter(|m| m.migration_type.is_up_migration() && !before.contains(&m.version))
        .map(|m| m.version)
        .collect();
    applied.sort_unstable();
    Ok(applied)
}

/// A readiness probe: ready while `SELECT 1` answers within two seconds.
pub fn probe(pool: PgPool) -> health::Probe {
    Arc::new(move || {
        let pool = pool.clone();
        Box::pin(async move {
            tokio::time::timeout(
                Duration::from_secs(2),
                sqlx::query("SELECT 1").execute(&pool),
            )
            .await
            .map_err(|_| "postgres: timeout".to_owned())?
            .map(|_| ())
            .map_err(|e| format!("postgres: {e}"))
        })
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn missing_or_bad_url_names_the_variable() {
        let err = super::lazy_pool(None, 1).unwrap_err();
        assert!(
            err.to_string().starts_with("DATABASE_URL: is required"),
            "{err}"
        );
        let err = super::lazy_pool(Some("not a url"), 1).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("DATABASE_URL: is not a PostgreSQL URL"),
            "{err}"
        );
    }

    #[test]
    fn connection_trouble_is_transient_data_errors_are_not() {
        assert!(super::is_transient(&sqlx::Error::PoolTimedOut));
        assert!(!super::is_transient(&sqlx::Error::ColumnNotFound(
            "x".into()
        )));
    }
}
