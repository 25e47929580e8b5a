//! `courier-worker migrate` (issue 18): the migrate-only command the Helm chart runs as a
//! pre-install/pre-upgrade Job, run here as a process against a fresh database.

use std::process::Output;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::Row as _;

/// Runs `courier-worker migrate` with `env` and waits (at most a minute) for it to exit.
async fn migrate(env: &[(&str, &str)]) -> anyhow::Result<Output> {
    let bin = courier_tests::procs::binary("courier-worker").await?;
    let child = tokio::process::Command::new(bin)
        .arg("migrate")
        .env_remove("DATABASE_URL")
        .env("RUST_LOG", "warn")
        .envs(env.iter().copied())
        .kill_on_drop(true)
        .output();
    tokio::time::timeout(Duration::from_secs(60), child)
        .await
        .context("courier-worker migrate did not exit within a minute")?
        .context("running courier-worker migrate")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `(version, success, checksum, installed_on)` of every recorded migration.
async fn recorded(db: &sqlx::PgPool) -> anyhow::Result<Vec<(i64, bool, Vec<u8>, String)>> {
    let rows = sqlx::query(
        "SELECT version, success, checksum, installed_on::text AS installed_on \
         FROM _sqlx_migrations ORDER BY version",
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get("version"),
                r.get("success"),
                r.get("checksum"),
                r.get("installed_on"),
            )
        })
        .collect())
}

/// Two `migrate` runs at once on an empty database both succeed and apply every migration
/// once between them (the advisory lock); a third run is a no-op that changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_command_creates_the_schema_once_and_a_second_run_is_a_no_op() -> anyhow::Result<()>
{
    let pg = courier_tests::Postgres::fresh().await?;
    let env = [("DATABASE_URL", pg.url())];
    let (a, b) = tokio::try_join!(migrate(&env), migrate(&env))?;
    for out in [&a, &b] {
        assert!(
            out.status.success(),
            "migrate failed: {:?}\nstdout: {}\nstderr: {}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    let migrations: Vec<i64> = courier_worker::MIGRATOR
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| m.version)
        .collect();
    let applied_all = format!("applied {} (", migrations.len());
    let outputs = [text(&a.stdout), text(&b.stdout)];
    assert_eq!(
        outputs.iter().filter(|o| o.contains(&applied_all)).count(),
        1,
        "exactly one run applies every migration: {outputs:?}"
    );
    assert_eq!(
        outputs
            .iter()
            .filter(|o| o.contains("up to date") && o.contains("nothing applied"))
            .count(),
        1,
        "the other finds the database up to date: {outputs:?}"
    );

    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(pg.url())
        .await?;
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
    )
    .fetch_all(&db)
    .await?;
    for table in [
        "users",
        "messages",
        "dialogue_states",
        "processed_updates",
        "outbox",
        "sent_messages",
        "blocked_chats",
        "chat_migrations",
        "flood_counters",
    ] {
        assert!(
            tables.iter().any(|t| t == table),
            "table {table} missing: {tables:?}"
        );
    }
    let before = recorded(&db).await?;
    assert_eq!(
        before.iter().map(|r| r.0).collect::<Vec<_>>(),
        migrations,
        "every migration recorded once"
    );
    assert!(before.iter().all(|r| r.1), "every migration succeeded");

    let again = migrate(&env).await?;
    assert!(
        again.status.success(),
        "second run failed: {}",
        text(&again.stderr)
    );
    let latest = migrations.iter().max().expect("migrations");
    assert!(
        text(&again.stdout).contains(&format!(
            "the database is up to date (version {latest}); nothing applied"
        )),
        "{}",
        text(&again.stdout)
    );
    assert_eq!(
        recorded(&db).await?,
        before,
        "the second run changed the migration records"
    );
    Ok(())
}

/// A database that cannot be reached: `migrate` retries for `--wait`, then exits non-zero with
/// the reason, and without the password of the URL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_command_fails_clearly_when_the_database_is_unreachable() -> anyhow::Result<()> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    // Nothing listens there any more.
    let url = format!("postgres://courier:pw-Zq81_secret@127.0.0.1:{port}/courier");
    let out = migrate(&[("DATABASE_URL", &url), ("COURIER_MIGRATE_WAIT", "1s")]).await?;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("no migration run succeeded within 1s")
            && stderr.contains("error communicating with database"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("pw-Zq81_secret"),
        "password leaked: {stderr}"
    );

    let out = migrate(&[]).await?;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("DATABASE_URL: is required"),
        "{}",
        text(&out.stderr)
    );
    Ok(())
}
