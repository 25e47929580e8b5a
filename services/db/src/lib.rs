//! Courier's PostgreSQL plumbing, shared by the worker and the sender: the pool built from
//! `DATABASE_URL`, the embedded migrations (`migrations/` at the repository root), the
//! readiness probe, and which database errors are worth retrying.
#![deny(missing_docs)]

pub mod group;

use std::sync::Arc;
use std::time::Duration;

use courier_common::{backoff::Backoff, config::ConfigError, health, CancellationToken};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

/// The embedded migrations. Every service that migrates runs the same set, under sqlx's
/// advisory lock, so replicas starting together are safe.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

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
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        match MIGRATOR.run(pool).await {
            Ok(()) => return Ok(true),
            Err(sqlx::migrate::MigrateError::Execute(e)) if is_transient(&e) => {
                tracing::warn!(error = %e, "database not reachable for migrations; retrying");
            }
            // A migration that failed for a passing reason: a deadlock (a `CREATE INDEX
            // CONCURRENTLY` waits for every older transaction, among them other processes'
            // waits for the migration lock), a lost connection. It was not recorded as
            // applied, so running the migrations again retries it.
            Err(sqlx::migrate::MigrateError::ExecuteMigration(e, version)) if is_transient(&e) => {
                tracing::warn!(error = %e, version, "migration failed for a passing reason; retrying");
            }
            Err(e) => return Err(e),
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(false),
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
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
