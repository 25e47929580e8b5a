//! Bounded tables: the worker prunes `processed_updates`, `sent_messages` and published
//! `outbox` rows older than the retention (7 days by default), in small batches, while it
//! keeps applying updates; younger rows, unpublished outbox rows and dialogue states stay.

use std::time::Duration;

use courier_tests::{eventually, Services, Stack};
use sqlx::PgPool;

/// A bot other than the stack's, so the outbox relay leaves its unpublished rows alone.
const OTHER_BOT: i64 = 999;

/// Rows of each table older than `days`.
async fn older_than(db: &PgPool, days: i32) -> anyhow::Result<[i64; 3]> {
    let count = |sql: &'static str| async move {
        sqlx::query_scalar::<_, i64>(sql)
            .bind(days)
            .fetch_one(db)
            .await
    };
    Ok([
        count("SELECT count(*) FROM processed_updates WHERE processed_at < now() - make_interval(days => $1)").await?,
        count("SELECT count(*) FROM sent_messages WHERE sent_at < now() - make_interval(days => $1)").await?,
        count("SELECT count(*) FROM outbox WHERE published_at IS NOT NULL AND published_at < now() - make_interval(days => $1)").await?,
    ])
}

/// Inserts `n` rows into each bookkeeping table, `age` old, for `OTHER_BOT`, with ids from
/// `first`; the outbox rows published unless `unpublished`.
async fn seed(db: &PgPool, first: i64, n: i64, age: &str, unpublished: bool) -> anyhow::Result<()> {
    let at = format!("now() - interval '{age}'");
    sqlx::query(&format!(
        "INSERT INTO processed_updates (bot_id, update_id, update_fingerprint, chat_id, stream_seq, processed_at) \
         SELECT $1, i, 0, i % 100, i, {at} FROM generate_series($2::bigint, $3::bigint) i"
    ))
    .bind(OTHER_BOT)
    .bind(first)
    .bind(first + n - 1)
    .execute(db)
    .await?;
    sqlx::query(&format!(
        "INSERT INTO sent_messages (bot_id, outbox_id, part, chat_id, sent_at) \
         SELECT $1, i, 0, i % 100, {at} FROM generate_series($2::bigint, $3::bigint) i"
    ))
    .bind(OTHER_BOT)
    .bind(first)
    .bind(first + n - 1)
    .execute(db)
    .await?;
    let published = if unpublished {
        "NULL".to_owned()
    } else {
        at.clone()
    };
    sqlx::query(&format!(
        "INSERT INTO outbox (bot_id, chat_id, origin_update_id, text, created_at, published_at) \
         SELECT $1, i % 100, i, 'seeded', {at}, {published} FROM generate_series($2::bigint, $3::bigint) i"
    ))
    .bind(OTHER_BOT)
    .bind(first)
    .bind(first + n - 1)
    .execute(db)
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_bookkeeping_is_pruned_while_updates_are_applied() -> anyhow::Result<()> {
    let mut stack = Stack::start_with(Services::IngressOnly).await?;
    courier_worker::MIGRATOR.run(&stack.db).await?;
    let db = stack.db.clone();
    seed(&db, 1, 20_000, "8 days", false).await?;
    seed(&db, 100_001, 50, "1 hour", false).await?;
    seed(&db, 200_001, 5, "8 days", true).await?;
    sqlx::query(
        "INSERT INTO dialogue_states (bot_id, chat_id, state, last_update_id, last_seq, updated_at) \
         SELECT $1, i, '{}'::jsonb, i, i, now() - interval '30 days' FROM generate_series(1, 5) i",
    )
    .bind(OTHER_BOT)
    .execute(&db)
    .await?;
    assert_eq!(older_than(&db, 7).await?, [20_005, 20_005, 20_000]);

    // The worker starts pruning; a conversation runs meanwhile.
    stack.start_worker().await?;
    stack.start_sender().await?;
    let chat = 9301;
    stack.say(chat, "Rae", "/start").await?;
    stack.say(chat, "Rae", "a note while pruning").await?;
    let replies = stack.bot_replies(chat, 2).await?;
    assert!(replies[1].starts_with("Saved your note"), "{replies:?}");

    eventually("old rows to be pruned", Duration::from_secs(60), || async {
        // The unpublished outbox rows are not published ones: they never count here.
        Ok((older_than(&db, 7).await? == [0, 0, 0]).then_some(()))
    })
    .await?;

    let kept = |sql: &'static str| {
        let db = db.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .bind(OTHER_BOT)
                .fetch_one(&db)
                .await
        }
    };
    assert_eq!(
        kept("SELECT count(*) FROM processed_updates WHERE bot_id = $1").await?,
        50,
        "younger processed updates stay"
    );
    assert_eq!(
        kept("SELECT count(*) FROM sent_messages WHERE bot_id = $1").await?,
        50,
        "younger sent messages stay"
    );
    assert_eq!(
        kept("SELECT count(*) FROM outbox WHERE bot_id = $1 AND published_at IS NOT NULL").await?,
        50,
        "younger published outbox rows stay"
    );
    assert_eq!(
        kept("SELECT count(*) FROM outbox WHERE bot_id = $1 AND published_at IS NULL").await?,
        5,
        "unpublished outbox rows stay, however old"
    );
    assert_eq!(
        kept("SELECT count(*) FROM dialogue_states WHERE bot_id = $1").await?,
        5,
        "dialogue states are never pruned"
    );
    // The stack's own bot kept its rows (they are young) and its chat carries on.
    assert_eq!(stack.notes(chat).await?, vec!["a note while pruning"]);
    stack.say(chat, "Rae", "and after").await?;
    stack.bot_replies(chat, 3).await?;
    Ok(())
}

/// One worker prunes at a time (the advisory lock), in batches, and only what is old enough.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pass_at_a_time_prunes_in_batches() -> anyhow::Result<()> {
    use courier_worker::retention::{self, Pass, Pruned};
    use sqlx::Connection;

    let pg = courier_tests::Postgres::fresh().await?;
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(pg.url())
        .await?;
    courier_worker::MIGRATOR.run(&db).await?;
    seed(&db, 1, 2_500, "8 days", false).await?;
    seed(&db, 10_001, 7, "6 days", false).await?;
    let settings = retention::Args {
        batch: 1000,
        ..Default::default()
    }
    .settings()?;
    let cancel = courier_common::CancellationToken::new();

    // Another worker is pruning: this one does nothing.
    let mut other = sqlx::PgConnection::connect(pg.url()).await?;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(retention::LOCK_KEY)
        .execute(&mut other)
        .await?;
    assert_eq!(
        retention::prune_once(&db, &settings, &cancel).await?,
        Pass::Busy
    );
    assert_eq!(older_than(&db, 7).await?, [2_500, 2_500, 2_500]);
    // It finishes (unlocking explicitly: a closed session's locks go only when its backend
    // has exited).
    sqlx::query("SELECT pg_advisory_unlock($1)")
        .bind(retention::LOCK_KEY)
        .execute(&mut other)
        .await?;

    let all = Pruned {
        processed_updates: 2_500,
        sent_messages: 2_500,
        outbox: 2_500,
    };
    assert_eq!(
        retention::prune_once(&db, &settings, &cancel).await?,
        Pass::Pruned(all)
    );
    assert_eq!(older_than(&db, 7).await?, [0, 0, 0]);
    assert_eq!(older_than(&db, 5).await?, [7, 7, 7], "younger rows stay");
    assert_eq!(
        retention::prune_once(&db, &settings, &cancel).await?,
        Pass::Pruned(Pruned::default())
    );
    // The lock was released: a session can take it.
    let mut again = sqlx::PgConnection::connect(pg.url()).await?;
    let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(retention::LOCK_KEY)
        .fetch_one(&mut again)
        .await?;
    assert!(free);
    Ok(())
}

/// Every migration can be reverted and applied again (the index migrations run outside a
/// transaction, `CONCURRENTLY`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_revert_and_apply_again() -> anyhow::Result<()> {
    let pg = courier_tests::Postgres::fresh().await?;
    let db = sqlx::postgres::PgPoolOptions::new()
        .max_connections(2)
        .connect(pg.url())
        .await?;
    courier_worker::MIGRATOR.run(&db).await?;
    courier_worker::MIGRATOR.undo(&db, 0).await?;
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tablename <> '_sqlx_migrations'",
    )
    .fetch_one(&db)
    .await?;
    assert_eq!(tables, 0, "every table dropped");
    courier_worker::MIGRATOR.run(&db).await?;
    let indexes: Vec<String> = sqlx::query_scalar(
        "SELECT indexname::text FROM pg_indexes WHERE indexname LIKE '%\\_at\\_idx' ORDER BY 1",
    )
    .fetch_all(&db)
    .await?;
    assert_eq!(
        indexes,
        [
            "outbox_published_at_idx",
            "processed_updates_processed_at_idx",
            "sent_messages_sent_at_idx"
        ]
    );

    // An interrupted CONCURRENTLY build leaves an INVALID index: reported.
    assert!(courier_worker::retention::invalid_indexes(&db)
        .await?
        .is_empty());
    sqlx::query(
        "UPDATE pg_index SET indisvalid = false \
         WHERE indexrelid = 'sent_messages_sent_at_idx'::regclass",
    )
    .execute(&db)
    .await?;
    assert_eq!(
        courier_worker::retention::invalid_indexes(&db).await?,
        ["sent_messages_sent_at_idx"]
    );
    Ok(())
}
