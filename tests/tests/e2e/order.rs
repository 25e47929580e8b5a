//! A chat's replies reach it in commit order, whatever failed between commit and publish; a
//! worker hands partitions over during a PostgreSQL outage without losing its membership.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use async_nats::jetstream::{self, consumer::pull};
use courier_common::{partition::partition_of, topology};
use courier_tests::{eventually, text_update, Services, Stack, DEADLINE, SECRET};
use futures::StreamExt;

const P: u32 = courier_common::partition::DEFAULT_PARTITIONS;

/// Makes the outbound stream refuse the bot's messages (`true`) or take them again. While it
/// refuses, a publish to `courier.outbound.…` finds no stream and JetStream answers "no
/// responders" at once, as it does for a stream without a leader during an outage of the
/// NATS cluster: the worker's publish fails after its commit. Stopping nats-server does not
/// reproduce that window: the NATS client keeps a publish made while disconnected and sends
/// it, first, after the reconnect.
async fn outbound_refuses(js: &jetstream::Context, refuse: bool) -> Result<()> {
    let mut config = js
        .get_stream(topology::OUTBOUND_STREAM)
        .await?
        .info()
        .await?
        .config
        .clone();
    config.subjects = vec![if refuse {
        "courier.outbound-unavailable.>".to_owned()
    } else {
        "courier.outbound.>".to_owned()
    }];
    js.update_stream(config).await?;
    Ok(())
}

/// The partition consumer of a chat.
async fn consumer_of(
    js: &jetstream::Context,
    bot: i64,
    partition: u32,
) -> Result<jetstream::consumer::Consumer<pull::Config>> {
    js.get_stream(topology::UPDATES_STREAM)
        .await?
        .get_consumer(&courier_worker::partitions::consumer_name(bot, partition))
        .await
        .map_err(|e| anyhow::anyhow!("partition consumer: {e}"))
}

/// Waits until the worker is done with every update of `chat`'s partition it was handed
/// (acknowledged): for an applied update that is after its outbox publish returned.
async fn partition_settled(js: &jetstream::Context, bot: i64, chat: i64) -> Result<()> {
    let consumer = consumer_of(js, bot, partition_of(chat, P)).await?;
    eventually("the worker to ack the update", DEADLINE, || {
        let mut consumer = consumer.clone();
        async move {
            let info = consumer.info().await?;
            Ok((info.num_ack_pending == 0 && info.num_pending == 0).then_some(()))
        }
    })
    .await
}

/// What each of the bot's messages in a chat answers, in the chat's order.
async fn reply_kinds(stack: &Stack, chat: i64) -> Result<Vec<&'static str>> {
    Ok(stack
        .transcript(chat)
        .await?
        .into_iter()
        .filter(|l| l.from_bot)
        .map(|l| {
            if l.text.starts_with("Hi, ") {
                "welcome"
            } else if l.text.starts_with("Saved your note") {
                "saved"
            } else if l.text.starts_with("I keep short notes") {
                "help"
            } else {
                "other"
            }
        })
        .collect())
}

async fn outbox_rows(stack: &Stack, chat: i64) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE chat_id = $1")
            .bind(chat)
            .fetch_one(&stack.db)
            .await?,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_whose_publish_failed_reaches_the_chat_before_the_chats_next_reply() -> Result<()> {
    let mut stack = Stack::start_with(Services::IngressOnly).await?;
    let mut config = stack.worker_config();
    // The relay stays out of this test: only the live path publishes.
    config.relay_grace = Duration::from_secs(3600);
    let (worker, cancel) = stack.spawn_worker(config).await?;
    stack.start_sender().await?;
    let js = jetstream::new(async_nats::connect(stack.nats.url()).await?);
    let (bot, chat) = (stack.bot_id(), 5001);
    stack.say(chat, "Olga", "/start").await?;
    stack.bot_replies(chat, 1).await?;

    // The note is committed; its reply's publish fails.
    outbound_refuses(&js, true).await?;
    stack.say(chat, "Olga", "first").await?;
    eventually("the note to be committed", DEADLINE, || async {
        Ok((stack.notes(chat).await? == ["first"]).then_some(()))
    })
    .await?;
    partition_settled(&js, bot, chat).await?;
    outbound_refuses(&js, false).await?;

    // The chat's next update: its reply must not overtake the one that failed.
    stack.say(chat, "Olga", "/help").await?;
    let kinds = eventually("the reply to /help", DEADLINE, || async {
        let kinds = reply_kinds(&stack, chat).await?;
        Ok(kinds.contains(&"help").then_some(kinds))
    })
    .await?;
    assert_eq!(
        kinds,
        ["welcome", "saved", "help"],
        "the chat's replies in commit order"
    );
    cancel.cancel();
    worker.wait().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_publishes_a_chats_stranded_replies_in_commit_order() -> Result<()> {
    let mut stack = Stack::start_with(Services::IngressOnly).await?;
    let mut config = stack.worker_config();
    config.relay_interval = Duration::from_millis(200);
    config.relay_grace = Duration::from_millis(500);
    let (worker, cancel) = stack.spawn_worker(config).await?;
    stack.start_sender().await?;
    let js = jetstream::new(async_nats::connect(stack.nats.url()).await?);
    let (bot, chat) = (stack.bot_id(), 5002);
    stack.say(chat, "Rolf", "/start").await?;
    stack.bot_replies(chat, 1).await?;

    // Two replies committed, neither published (the relay fails too while the stream refuses).
    outbound_refuses(&js, true).await?;
    for (n, text) in ["first", "/help"].into_iter().enumerate() {
        stack.say(chat, "Rolf", text).await?;
        eventually("the reply to be committed", DEADLINE, || async {
            Ok((outbox_rows(&stack, chat).await? == 2 + n as i64).then_some(()))
        })
        .await?;
        partition_settled(&js, bot, chat).await?;
    }
    outbound_refuses(&js, false).await?;

    let kinds = eventually("the relay to publish both replies", DEADLINE, || async {
        let kinds = reply_kinds(&stack, chat).await?;
        Ok((kinds.len() >= 3).then_some(kinds))
    })
    .await?;
    assert_eq!(kinds, ["welcome", "saved", "help"]);
    cancel.cancel();
    worker.wait().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_bots_sharing_nats_do_not_drop_each_others_replies() -> Result<()> {
    // Two bots, each with its own database: both have an outbox row 1.
    let nats = courier_tests::NatsServer::start().await?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    topology::ensure_streams(&js, P).await?;
    let row = courier_worker::store::OutboxRow {
        id: 1,
        chat_id: 7,
        origin_update_id: 1,
        text: "hello".into(),
        created_at: chrono::Utc::now(),
        traceparent: None,
        origin_received_at: None,
        parse_mode: String::new(),
        action: None,
    };
    for bot in [1001, 1002] {
        let acked = courier_worker::outbox::publish(&js, bot, std::slice::from_ref(&row)).await;
        assert_eq!(acked, [1], "bot {bot}'s publish acknowledged");
    }
    let mut stream = js.get_stream(topology::OUTBOUND_STREAM).await?;
    assert_eq!(
        stream.info().await?.state.messages,
        2,
        "each bot's message stored, neither taken for the other's duplicate"
    );
    Ok(())
}

/// The first chat id (from 6000 up) of every partition.
fn one_chat_per_partition() -> Vec<i64> {
    let mut by_partition = BTreeMap::new();
    let mut chat = 6000;
    while by_partition.len() < P as usize {
        by_partition.entry(partition_of(chat, P)).or_insert(chat);
        chat += 1;
    }
    by_partition.into_values().collect()
}

async fn post(stack: &Stack, update_id: i64, chat: i64, text: &str) -> Result<()> {
    let body = text_update(update_id, chat, text).to_string();
    eventually("the webhook to accept an update", DEADLINE, || {
        let body = body.clone();
        async move { Ok((stack.post_webhook(body, Some(SECRET)).await? == 200).then_some(())) }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_hands_partitions_over_during_a_postgres_outage_and_keeps_heartbeating(
) -> Result<()> {
    let stack = Stack::start_with(Services::IngressOnly).await?;
    let bot = stack.bot_id();
    let js = jetstream::new(async_nats::connect(stack.nats.url()).await?);
    let chats = one_chat_per_partition();
    let mut config = stack.worker_config();
    // Fewer permits than partitions: most held updates wait for one, and that wait must end
    // when their partition goes too.
    config.max_in_flight = 8;
    let member_ttl = config.member_ttl;
    let (w1, w1_cancel) = stack.spawn_worker(config.clone()).await?;
    eventually("w1 to own every partition", DEADLINE, || async {
        Ok((w1.partitions().len() == P as usize).then_some(()))
    })
    .await?;
    for (i, &chat) in chats.iter().enumerate() {
        post(&stack, 1 + i as i64, chat, "/start").await?;
    }
    eventually("every chat started", DEADLINE, || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM dialogue_states")
            .fetch_one(&stack.db)
            .await?;
        Ok((n == chats.len() as i64).then_some(()))
    })
    .await?;

    // PostgreSQL goes away; every partition gets updates w1 cannot apply.
    stack.pg.refuse_connections().await?;
    let mut update_id = 1000;
    for note in ["note 1", "note 2"] {
        for &chat in &chats {
            update_id += 1;
            post(&stack, update_id, chat, note).await?;
        }
    }
    for p in 0..P {
        let consumer = consumer_of(&js, bot, p).await?;
        eventually("w1 to hold an update of every partition", DEADLINE, || {
            let mut consumer = consumer.clone();
            async move { Ok((consumer.info().await?.num_ack_pending >= 1).then_some(())) }
        })
        .await?;
    }

    // Record w1's heartbeats (the server's timestamp of each put of its member key).
    let kv = js.get_key_value(courier_worker::membership::BUCKET).await?;
    let key = format!("{bot}.{}", w1.id());
    let beats = Arc::new(Mutex::new(Vec::new()));
    let mut watch = kv.watch(&key).await?;
    let watcher = tokio::spawn({
        let beats = beats.clone();
        async move {
            while let Some(Ok(entry)) = watch.next().await {
                let alive = entry.operation == async_nats::jetstream::kv::Operation::Put;
                beats.lock().unwrap().push((entry.created, alive));
            }
        }
    });

    // A second worker joins (it cannot migrate now): w1 must hand it half the partitions.
    let mut c2 = config;
    c2.migrate = false;
    let (w2, w2_cancel) = stack.spawn_worker(c2).await?;
    eventually(
        "the partitions split between w1 and w2 while PostgreSQL is down",
        DEADLINE,
        || async {
            let (a, b) = (w1.partitions(), w2.partitions());
            let all: BTreeSet<u32> = a.iter().chain(&b).copied().collect();
            Ok(
                (a.len() == P as usize / 2 && b.len() == P as usize / 2 && all.len() == P as usize)
                    .then_some(()),
            )
        },
    )
    .await?;
    let w2_stats = w2.stats();
    eventually("w2 to get the updates w1 handed back", DEADLINE, || async {
        Ok((w2_stats.retries.get() >= 1).then_some(()))
    })
    .await?;
    let seen = beats.lock().unwrap().len();
    eventually(
        "w1 to heartbeat on after the hand-over",
        DEADLINE,
        || async { Ok((beats.lock().unwrap().len() >= seen + 3).then_some(())) },
    )
    .await?;
    watcher.abort();
    {
        let beats = beats.lock().unwrap();
        assert!(beats.iter().all(|(_, alive)| *alive), "w1 never left");
        for pair in beats.windows(2) {
            let gap = (pair[1].0 - pair[0].0).whole_milliseconds();
            assert!(
                gap < member_ttl.as_millis() as i128,
                "w1's member key would have expired: {gap} ms between heartbeats"
            );
        }
    }
    assert_eq!(w1.partitions().len() + w2.partitions().len(), P as usize);

    // PostgreSQL returns: every update applied once, each chat's in order.
    stack.pg.allow_connections().await?;
    eventually("every note applied", DEADLINE, || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM messages")
            .fetch_one(&stack.db)
            .await?;
        Ok((n >= 2 * chats.len() as i64).then_some(()))
    })
    .await?;
    for &chat in &chats {
        assert_eq!(
            stack.notes(chat).await?,
            ["note 1", "note 2"],
            "chat {chat}"
        );
    }
    let applied: i64 =
        sqlx::query_scalar("SELECT count(*) FROM processed_updates WHERE outcome = 'applied'")
            .fetch_one(&stack.db)
            .await?;
    assert_eq!(applied, 3 * chats.len() as i64);
    w1_cancel.cancel();
    w2_cancel.cancel();
    w1.wait().await?;
    w2.wait().await?;
    Ok(())
}
