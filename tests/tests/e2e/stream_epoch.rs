//! The updates stream is recreated (a lost NATS volume, a delete-and-recreate): its sequences
//! start again at 1, while each chat's order guard (`dialogue_states.last_seq`) still points
//! into the old stream. The chats carry on in the new stream; nothing is skipped as a
//! "duplicate".

use async_nats::jetstream;
use courier_common::{partition::partition_of, topology, CancellationToken};
use courier_proto::{v1::InboundUpdate, Message as _};
use courier_tests::{text_update, Services, Stack};

const P: u32 = courier_common::partition::DEFAULT_PARTITIONS;

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
async fn a_recreated_updates_stream_does_not_swallow_an_old_chats_next_update() -> anyhow::Result<()>
{
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

/// The applier on its own, deterministic: it holds the old stream's epoch when the stream is
/// recreated. An update of the new stream below the chat's `last_seq` is applied (the epoch
/// is read again before anything is skipped); updates of the deleted stream that are still
/// in flight are neither applied nor acknowledged, whatever the new stream holds at their
/// sequence; a redelivery in the new stream is a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_are_judged_by_the_stream_that_holds_them() -> anyhow::Result<()> {
    use courier_worker::apply::{Applier, Delivered, Outcome};

    let stack = Stack::start_with(Services::IngressOnly).await?;
    // Migrate through a worker that owns no partition, so nothing consumes behind our back.
    let mut config = stack.worker_config();
    config.fixed_partitions = Some(vec![]);
    let (idle, idle_cancel) = stack.spawn_worker(config).await?;

    let js = jetstream::new(async_nats::connect(stack.nats.url()).await?);
    let bot = stack.bot_id();
    let chat = 9103;
    let subject = topology::update_subject(bot, partition_of(chat, P), chat);
    let publish = |id: i64, text: &'static str| {
        let js = js.clone();
        let subject = subject.clone();
        async move {
            let env = InboundUpdate {
                bot_id: bot,
                update_id: id,
                chat_id: chat,
                partition: partition_of(chat, P),
                received_at_unix_ms: 0,
                update_json: text_update(id, chat, text).to_string().into_bytes(),
                update_fingerprint: 0,
            };
            let seq = js
                .publish(subject.clone(), env.encode_to_vec().into())
                .await?
                .await?
                .sequence;
            let stored = js
                .get_stream(topology::UPDATES_STREAM)
                .await?
                .direct_get(seq)
                .await?;
            anyhow::Ok(Delivered {
                seq,
                subject,
                payload: stored.payload,
                stored_at_ns: Some(stored.time.unix_timestamp_nanos() as i64),
                prev_on_subject: None,
            })
        }
    };
    let applier = |stream, stats| {
        Applier::new(
            courier_notes::NotesBot,
            bot,
            stack.db.clone(),
            js.clone(),
            stream,
            stats,
            CancellationToken::new(),
        )
    };

    let old_stream = js.get_stream(topology::UPDATES_STREAM).await?;
    let old = applier(old_stream.clone(), Default::default());
    let mut old_updates = Vec::new();
    for (id, text) in [(1, "/start"), (2, "note a"), (3, "note b")] {
        let d = publish(id, text).await?;
        assert_eq!(old.process(&d, 0, None).await, Outcome::Done);
        old_updates.push(d);
    }
    assert_eq!(stack.notes(chat).await?, vec!["note a", "note b"]);

    js.delete_stream(topology::UPDATES_STREAM).await?;
    topology::ensure_streams(&js, P).await?;
    let new_note = publish(4, "note c").await?;
    assert_eq!(new_note.seq, 1);

    // An applier that read the epoch just now, from the old stream's handle: it has not seen
    // the new stream yet.
    let stats = std::sync::Arc::new(courier_worker::Stats::default());
    let stale = applier(old_stream, stats.clone());
    assert_eq!(stale.process(&new_note, 0, None).await, Outcome::Done);
    assert_eq!(stack.notes(chat).await?, vec!["note a", "note b", "note c"]);
    assert_eq!(stats.duplicates.get(), 0);

    // The deleted stream's updates, still in flight: seq 1 now holds another update, seq 3
    // nothing. Neither is applied, neither is acknowledged.
    for d in [&old_updates[0], &old_updates[2]] {
        assert_eq!(stale.process(d, 0, None).await, Outcome::Stale);
    }
    assert_eq!(stats.stale.get(), 2);
    assert_eq!(stack.notes(chat).await?, vec!["note a", "note b", "note c"]);

    // A redelivery in the new stream is a duplicate.
    assert_eq!(stale.process(&new_note, 0, None).await, Outcome::Done);
    assert_eq!(stats.duplicates.get(), 1);
    assert_eq!(stack.notes(chat).await?, vec!["note a", "note b", "note c"]);

    idle_cancel.cancel();
    idle.wait().await?;
    Ok(())
}
