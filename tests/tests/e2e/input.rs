//! Updates as Telegram really sends them, including shapes the Bot API types of teloxide-core
//! cannot read: the bot reads what it needs leniently, and what it still cannot read is
//! dead-lettered with a reason — never acknowledged and forgotten.

use std::path::Path;

use courier_common::topology;
use courier_tests::{eventually, Stack, DEADLINE, SECRET};
use serde_json::{json, Value};

fn fixture(name: &str) -> anyhow::Result<Value> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/updates")
        .join(name);
    Ok(serde_json::from_slice(&std::fs::read(path)?)?)
}

async fn post(stack: &Stack, update: &Value) -> anyhow::Result<()> {
    let status = stack.post_webhook(update.to_string(), Some(SECRET)).await?;
    anyhow::ensure!(status == 200, "webhook answered {status} to {update}");
    Ok(())
}

async fn outcome(stack: &Stack, update_id: i64) -> anyhow::Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT outcome FROM processed_updates WHERE update_id = $1")
            .bind(update_id)
            .fetch_optional(&stack.db)
            .await?,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_teloxide_cannot_read_are_still_answered_saved_and_recorded() -> anyhow::Result<()>
{
    let stack = Stack::start().await?;
    // Fixtures 17, 19, 20 and 21 are all from "Old" in the private chat 7002. The sandbox
    // learns the chat from a first message, so the bot's replies can reach it.
    let chat = 7002;
    stack.say(chat, "Old", "/help").await?;
    stack.bot_replies(chat, 1).await?;

    // A client that predates Bot API 3.0: its `from` has no `is_bot`.
    let mut legacy = fixture("17-message-legacy-no-is-bot.json")?;
    assert!(legacy["message"]["from"].get("is_bot").is_none());
    legacy["message"]["text"] = json!("/start");
    post(&stack, &legacy).await?;
    let r = stack.bot_replies(chat, 2).await?;
    assert!(r[1].starts_with("Hi, Old!"), "welcome: {r:?}");

    // A text note carrying an entity type, a top-level field and a reply teloxide-core cannot
    // read: saved verbatim.
    let future_fields = fixture("19-message-text-future-fields.json")?;
    post(&stack, &future_fields).await?;
    let r = stack.bot_replies(chat, 3).await?;
    assert!(r[2].starts_with("Saved your note"), "{r:?}");
    assert_eq!(
        stack.notes(chat).await?,
        vec![future_fields["message"]["text"].as_str().unwrap()]
    );

    // A message of a content kind nobody knows yet: answered, nothing saved.
    post(&stack, &fixture("20-message-future-kind.json")?).await?;
    let r = stack.bot_replies(chat, 4).await?;
    assert!(r[3].contains("only save text notes"), "{r:?}");
    assert_eq!(stack.notes(chat).await?.len(), 1);

    // The user blocks the bot, then unblocks it from a client whose `my_chat_member` has no
    // `is_bot` anywhere: the unblock is recorded, or the chat would stay blocked forever.
    let mut blocked = fixture("12-my-chat-member-blocked.json")?;
    blocked["update_id"] = json!(800_121);
    blocked["my_chat_member"]["chat"] = json!({"id": chat, "type": "private", "first_name": "Old"});
    blocked["my_chat_member"]["from"] = json!({"id": chat, "is_bot": false, "first_name": "Old"});
    post(&stack, &blocked).await?;
    let blocked_rows = || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM blocked_chats WHERE chat_id = $1")
            .bind(chat)
            .fetch_one(&stack.db)
            .await?;
        anyhow::Ok(n)
    };
    eventually("the block recorded", DEADLINE, || async {
        Ok((blocked_rows().await? == 1).then_some(()))
    })
    .await?;
    post(&stack, &fixture("21-my-chat-member-unblocked-legacy.json")?).await?;
    eventually("the unblock recorded", DEADLINE, || async {
        Ok((blocked_rows().await? == 0).then_some(()))
    })
    .await?;

    for id in [800_017, 800_019, 800_020, 800_121, 800_021] {
        assert_eq!(
            outcome(&stack, id).await?.as_deref(),
            Some("applied"),
            "{id}"
        );
    }
    let stats = stack.worker_stats();
    assert_eq!(stats.dead_lettered.get(), 0);
    assert_eq!(stats.ignored.get(), 0, "nothing above was ignored");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_unreadable_even_leniently_is_dead_lettered_and_its_chat_carries_on(
) -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let chat = 7004;
    stack.say(chat, "Una", "/start").await?;
    stack.bot_replies(chat, 1).await?;

    // A message whose date is not a number: a kind the bot handles, but it cannot tell when
    // the note was written. (A chat id that is not a number never gets this far: ingress
    // cannot route it and answers 400, so Telegram keeps the update.)
    let mut poison = courier_tests::text_update(810_001, chat, "when was this?");
    poison["message"]["date"] = json!("yesterday");
    post(&stack, &poison).await?;
    let mut unroutable = courier_tests::text_update(810_002, chat, "where to?");
    unroutable["message"]["chat"]["id"] = json!(chat.to_string());
    assert_eq!(
        stack
            .post_webhook(unroutable.to_string(), Some(SECRET))
            .await?,
        400
    );

    let dlq = eventually("the update in COURIER_DLQ", DEADLINE, || async {
        let client = async_nats::connect(stack.nats.url()).await?;
        let js = async_nats::jetstream::new(client);
        let stream = js.get_stream(topology::DLQ_STREAM).await?;
        let subject = topology::dlq_subject(stack.bot_id(), "updates");
        Ok(stream.direct_get_last_for_subject(subject).await.ok())
    })
    .await?;
    let reason = dlq
        .headers
        .get(topology::DLQ_REASON_HEADER)
        .map(|v| v.as_str().to_owned())
        .unwrap_or_default();
    assert!(
        reason.contains("message.date"),
        "reason names the field: {reason}"
    );
    let envelope =
        <courier_proto::v1::InboundUpdate as courier_proto::Message>::decode(dlq.payload.clone())?;
    assert_eq!(
        envelope.update_id, 810_001,
        "the dead letter is the update itself"
    );
    eventually("the dead letter recorded", DEADLINE, || async {
        Ok((outcome(&stack, 810_001).await?.as_deref() == Some("dead_lettered")).then_some(()))
    })
    .await?;

    // The chat carries on with its next update.
    stack.say(chat, "Una", "after the bad one").await?;
    let r = stack.bot_replies(chat, 2).await?;
    assert!(r[1].starts_with("Saved your note"), "{r:?}");
    assert_eq!(stack.notes(chat).await?, vec!["after the bad one"]);
    assert_eq!(stack.worker_stats().dead_lettered.get(), 1);
    Ok(())
}

/// A dead letter moves its chat's order past it, so it must wait for the chat's earlier
/// updates like any other: applied out of turn, it would make an earlier note look applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_update_delivered_before_an_earlier_one_is_dead_lettered_after_it(
) -> anyhow::Result<()> {
    use async_nats::jetstream::message::PublishMessage;
    use courier_common::{partition::partition_of, CancellationToken};
    use courier_proto::{v1::InboundUpdate, Message as _};
    use courier_worker::apply::{Applier, Delivered, Outcome};

    let stack = Stack::start_with(courier_tests::Services::IngressOnly).await?;
    // Migrate through a worker that owns no partition, so nothing consumes behind our back.
    let mut config = stack.worker_config();
    config.fixed_partitions = Some(vec![]);
    let (idle, idle_cancel) = stack.spawn_worker(config).await?;

    let js = async_nats::jetstream::new(async_nats::connect(stack.nats.url()).await?);
    let (bot, chat) = (stack.bot_id(), 78);
    let p = partition_of(chat, courier_common::partition::DEFAULT_PARTITIONS);
    let subject = topology::update_subject(bot, p, chat);
    let mut poison = courier_tests::text_update(3, chat, "undated");
    poison["message"]["date"] = json!("yesterday");
    let mut delivered = Vec::new();
    for (id, update) in [
        (1, courier_tests::text_update(1, chat, "/start")),
        (2, courier_tests::text_update(2, chat, "older")),
        (3, poison),
    ] {
        let env = InboundUpdate {
            bot_id: bot,
            update_id: id,
            chat_id: chat,
            partition: p,
            received_at_unix_ms: 0,
            update_json: update.to_string().into_bytes(),
            update_fingerprint: 0,
        };
        let payload: bytes::Bytes = env.encode_to_vec().into();
        let ack = js
            .send_publish(
                subject.clone(),
                PublishMessage::build().payload(payload.clone()),
            )
            .await?
            .await?;
        delivered.push(Delivered {
            seq: ack.sequence,
            subject: subject.clone(),
            payload,
            stored_at_ns: None,
            prev_on_subject: None,
        });
    }
    let stats = std::sync::Arc::new(courier_worker::Stats::default());
    let applier = Applier::new(
        courier_notes::NotesBot,
        bot,
        stack.db.clone(),
        js.clone(),
        js.get_stream(topology::UPDATES_STREAM).await?,
        stats.clone(),
        CancellationToken::new(),
    );

    // The poison arrives first (its predecessors are "in redelivery").
    assert_eq!(applier.process(&delivered[2], 0, None).await, Outcome::Done);
    assert_eq!(
        stack.notes(chat).await?,
        vec!["older"],
        "the older note first"
    );
    assert_eq!(outcome(&stack, 3).await?.as_deref(), Some("dead_lettered"));
    // The redeliveries are then duplicates.
    applier.process(&delivered[1], 0, None).await;
    applier.process(&delivered[0], 0, None).await;
    assert_eq!(stack.notes(chat).await?, vec!["older"]);
    assert_eq!(stats.applied.get(), 2);
    assert_eq!(stats.dead_lettered.get(), 1);
    assert_eq!(stats.duplicates.get(), 2);
    idle_cancel.cancel();
    idle.wait().await?;
    Ok(())
}
