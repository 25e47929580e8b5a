//! Outages: NATS down, PostgreSQL down, every service restarted. Nothing is lost.

use courier_tests::{eventually, text_update, Stack, DEADLINE, SECRET};
use sqlx::Connection;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_down_answers_503_and_telegrams_retry_goes_through_after_restart() -> anyhow::Result<()>
{
    let mut stack = Stack::start().await?;
    let chat = 4001;
    stack.say(chat, "Nat", "/start").await?;
    stack.bot_replies(chat, 1).await?;

    stack.nats.stop().await?;
    let body = text_update(910_001, chat, "posted while NATS is down").to_string();
    assert_eq!(stack.post_webhook(body, Some(SECRET)).await?, 503);

    // A user writes meanwhile: the sandbox (Telegram) gets 503s and keeps retrying.
    stack.say(chat, "Nat", "written during the outage").await?;
    eventually("the sandbox to see a failed delivery", DEADLINE, || async {
        let s = stack.sandbox_stats().await?;
        Ok((s["webhook_failures"].as_u64().unwrap_or(0) >= 1).then_some(()))
    })
    .await?;

    stack.nats.restart().await?;
    let replies = stack.bot_replies(chat, 2).await?;
    assert!(replies[1].starts_with("Saved your note"), "{replies:?}");
    assert_eq!(stack.notes(chat).await?, vec!["written during the outage"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dialogue_state_survives_a_restart_of_every_service() -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let chat = 4002;
    stack.say(chat, "Rita", "/start").await?;
    stack.bot_replies(chat, 1).await?;
    stack.say(chat, "Rita", "before the restart").await?;
    stack.bot_replies(chat, 2).await?;

    stack.stop_services().await?;
    stack.nats.stop().await?;
    stack.nats.restart().await?;
    stack.start_ingress().await?;
    stack.start_worker().await?;
    stack.start_sender().await?;

    // Still in ReceiveNote: the text is a note, not a "send /start first" fallback.
    stack.say(chat, "Rita", "after the restart").await?;
    let replies = stack.bot_replies(chat, 3).await?;
    assert!(replies[2].starts_with("Saved your note"), "{replies:?}");
    assert_eq!(
        stack.notes(chat).await?,
        vec!["before the restart", "after the restart"]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_pauses_while_postgres_refuses_and_resumes_without_loss() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let chat = 4003;
    stack.say(chat, "Pia", "/start").await?;
    stack.bot_replies(chat, 1).await?;

    // Take the database away: no new connections, existing ones terminated.
    let admin_url = stack
        .pg
        .url()
        .rsplit_once('/')
        .map(|(base, _)| format!("{base}/postgres"))
        .unwrap();
    let mut admin = sqlx::PgConnection::connect(&admin_url).await?;
    let db = stack.pg.name().to_owned();
    sqlx::query(&format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS false"))
        .execute(&mut admin)
        .await?;
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&db)
        .execute(&mut admin)
        .await?;

    for n in ["during outage 1", "during outage 2", "during outage 3"] {
        stack.say(chat, "Pia", n).await?;
    }
    let stats = stack.worker_stats();
    eventually(
        "the worker to retry against the missing database",
        DEADLINE,
        || async { Ok((stats.retries.get() >= 2).then_some(())) },
    )
    .await?;
    let bot_lines = stack
        .transcript(chat)
        .await?
        .iter()
        .filter(|l| l.from_bot)
        .count();
    assert_eq!(
        bot_lines, 1,
        "nothing can be applied while the database is away"
    );

    sqlx::query(&format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS true"))
        .execute(&mut admin)
        .await?;
    let replies = stack.bot_replies(chat, 4).await?;
    assert!(
        replies[1..]
            .iter()
            .all(|r| r.starts_with("Saved your note")),
        "{replies:?}"
    );
    assert_eq!(
        stack.notes(chat).await?,
        vec!["during outage 1", "during outage 2", "during outage 3"]
    );
    assert_eq!(stats.dead_lettered.get(), 0);
    Ok(())
}
