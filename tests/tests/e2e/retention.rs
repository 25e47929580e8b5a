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
