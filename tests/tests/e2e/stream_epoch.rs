//! The updates stream is recreated (a lost NATS volume, a delete-and-recreate): its sequences
//! start again at 1, while each chat's order guard (`dialogue_states.last_seq`) still points
//! into the old stream. The chats carry on in the new stream; nothing is skipped as a
//! "duplicate".

use async_nats::jetstream;
use courier_common::topology;
use courier_tests::Stack;

async fn last_seq(stack: &Stack, chat: i64) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT last_seq FROM dialogue_states WHERE chat_id = $1")
            .bind(chat)
            .fetch_one(&stack.db)
            .await?,
    )
}

/// A chat with history, then every service stopped, the stream deleted, the services started
/// again (ingress recreates the stream, as `ensure_streams` does): the chat's next update gets
/// a sequence below its `last_seq`, and must still be applied and answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_updates_stream_does_not_swallow_an_old_chats_next_update(
) -> anyhow::Result<()> {
    let mut stack = Stack::start().await?;
    let chat = 9101;
    stack.say(chat, "Vera", "/start").await?;
    stack.bot_replies(chat, 1).await?;
    for n in 0..3 {
        stack.say(chat, "Vera", &format!("old note {n}")).await?;
        stack.bot_replies(chat, 2 + n).await?;
    }
    let before = last_seq(&stack, chat).await?;
    assert!(before >= 4, "the chat's guard is at {before}");

    stack.stop_services().await?;
    let js = jetstream::new(async_nats::connect(stack.nats.url()).await?);
    js.delete_stream(topology::UPDATES_STREAM).await?;
    stack.start_ingress().await?;
    stack.start_worker().await?;
    stack.start_sender().await?;

    stack.say(chat, "Vera", "note in the new stream").await?;
    let replies = stack.bot_replies(chat, 5).await?;
    assert!(replies[4].starts_with("Saved your note"), "{replies:?}");
    assert_eq!(
        stack.notes(chat).await?,
        vec![
            "old note 0",
            "old note 1",
            "old note 2",
            "note in the new stream"
        ]
    );
    // The guard now points into the new stream.
    assert!(last_seq(&stack, chat).await? < before);
    Ok(())
}

/// The worker keeps running while the stream is deleted and recreated under it (as when
/// another replica's ingress recreates it and another worker recreates the consumers, whose
/// names the running worker still pulls from): it notices the new stream rather than
/// acknowledging the chat's updates as duplicates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_worker_notices_the_recreated_stream() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let chat = 9102;
    stack.say(chat, "Wim", "/start").await?;
    stack.bot_replies(chat, 1).await?;
    for n in 0..3 {
        stack.say(chat, "Wim", &format!("old note {n}")).await?;
        stack.bot_replies(chat, 2 + n).await?;
    }
    assert!(last_seq(&stack, chat).await? >= 4);

    let js = jetstream::new(async_nats::connect(stack.nats.url()).await?);
    js.delete_stream(topology::UPDATES_STREAM).await?;
    topology::ensure_streams(&js, courier_common::partition::DEFAULT_PARTITIONS).await?;
    // Recreate the partition consumers as a starting worker would; the running worker's
    // pulls reach them by name.
    let config = stack.worker_config();
    let settings = courier_worker::partitions::Settings {
        partitions: config.nats.partitions,
        heartbeat: config.heartbeat,
        priority_timeout: config.priority_timeout,
        ack_wait: config.ack_wait,
        max_ack_pending: config.max_ack_pending,
        max_lanes: config.max_lanes,
        fixed: None,
        handover_timeout: config.ack_wait,
    };
    let updates = js.get_stream(topology::UPDATES_STREAM).await?;
    for p in 0..config.nats.partitions {
        updates
            .create_consumer(courier_worker::partitions::consumer_config(
                stack.bot_id(),
                p,
                &settings,
            ))
            .await?;
    }

    stack.say(chat, "Wim", "note in the new stream").await?;
    let replies = stack.bot_replies(chat, 5).await?;
    assert!(replies[4].starts_with("Saved your note"), "{replies:?}");
    assert_eq!(
        stack.notes(chat).await?,
        vec![
            "old note 0",
            "old note 1",
            "old note 2",
            "note in the new stream"
        ]
    );
    Ok(())
}
