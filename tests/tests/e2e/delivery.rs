//! Exactly-once: the same update delivered twice is applied once.

use async_nats::jetstream::message::PublishMessage;
use courier_common::{partition::partition_of, topology};
use courier_proto::{v1::InboundUpdate, Message as _};
use courier_tests::{eventually, text_update, Stack, DEADLINE, SECRET};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_update_posted_twice_yields_one_note_and_one_reply() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let chat = 3003;
    stack.say(chat, "Tess", "/start").await?;
    stack.bot_replies(chat, 1).await?;

    // Telegram retries a webhook whose answer it did not see: the same body twice.
    let body = text_update(900_001, chat, "only once please").to_string();
    assert_eq!(stack.post_webhook(body.clone(), Some(SECRET)).await?, 200);
    assert_eq!(stack.post_webhook(body, Some(SECRET)).await?, 200);

    let replies = stack.bot_replies(chat, 2).await?;
    assert!(replies[1].starts_with("Saved your note"), "{replies:?}");
    // JetStream dropped the second publish (same Nats-Msg-Id): one message in the stream for it.
    assert_eq!(stack.stream_messages(topology::UPDATES_STREAM).await?, 2);
    assert_eq!(stack.notes(chat).await?, vec!["only once please"]);
    assert_eq!(
        stack
            .transcript(chat)
            .await?
            .iter()
            .filter(|l| l.from_bot)
            .count(),
        2
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_update_id_with_other_content_is_a_new_update() -> anyhow::Result<()> {
    // Telegram may hand out an update id again after a week without updates (a restarted
    // sandbox does at once): same id, different update. It must not be taken for a retry.
    let stack = Stack::start().await?;
    let chat = 3005;
    stack.say(chat, "Tess", "/start").await?;
    stack.bot_replies(chat, 1).await?;
    let first = text_update(900_003, chat, "first of its id").to_string();
    let second = text_update(900_003, chat, "second of its id").to_string();
    assert_eq!(stack.post_webhook(first, Some(SECRET)).await?, 200);
    stack.bot_replies(chat, 2).await?;
    assert_eq!(stack.post_webhook(second, Some(SECRET)).await?, 200);
    stack.bot_replies(chat, 3).await?;
    assert_eq!(
        stack.notes(chat).await?,
        vec!["first of its id", "second of its id"]
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redelivered_update_past_the_dedup_window_is_applied_once() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let chat = 3004;
    stack.say(chat, "Tess", "/start").await?;
    stack.bot_replies(chat, 1).await?;

    // The same update reaches the stream twice with different message ids (as if the second
    // copy came after JetStream's duplicate window): the worker's idempotency key stops it.
    let client = async_nats::connect(stack.nats.url()).await?;
    let js = async_nats::jetstream::new(client);
    let bot = stack.bot_id();
    let envelope = InboundUpdate {
        bot_id: bot,
        update_id: 900_002,
        chat_id: chat,
        partition: partition_of(chat, 32),
        received_at_unix_ms: 0,
        update_json: text_update(900_002, chat, "exactly once")
            .to_string()
            .into_bytes(),
        update_fingerprint: 0,
    };
    for msg_id in ["copy-1", "copy-2"] {
        js.send_publish(
            topology::update_subject(bot, envelope.partition, chat),
            PublishMessage::build()
                .message_id(msg_id)
                .payload(envelope.encode_to_vec().into()),
        )
        .await?
        .await?;
    }
    let stats = stack.worker_stats();
    eventually("the second copy to be skipped", DEADLINE, || async {
        Ok((stats.duplicates.get() >= 1).then_some(()))
    })
    .await?;
    assert_eq!(stack.notes(chat).await?, vec!["exactly once"]);
    let outbox: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE origin_update_id = 900002")
            .fetch_one(&stack.db)
            .await?;
    assert_eq!(outbox, 1, "one reply written");
    stack.bot_replies(chat, 2).await?;
    assert_eq!(
        stack
            .transcript(chat)
            .await?
            .iter()
            .filter(|l| l.from_bot)
            .count(),
        2
    );
    Ok(())
}
