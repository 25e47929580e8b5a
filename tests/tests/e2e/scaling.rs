//! Workers scale out: partitions, pinned consumers, per-chat order under kills, joins and
//! shared partitions.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use async_nats::jetstream::message::PublishMessage;
use courier_common::{partition::partition_of, topology, CancellationToken};
use courier_proto::{v1::InboundUpdate, Message as _};
use courier_tests::procs::WorkerProcess;
use courier_tests::{eventually, text_update, Services, Stack, SECRET};
use futures::{stream, StreamExt};

const P: u32 = 32;

/// Posts `/start` and then `notes` notes for each chat through ingress, each chat's updates
/// one after another (as Telegram does per chat), many chats at once.
async fn post_conversations(
    stack: &Stack,
    chats: &[i64],
    notes: usize,
    first_update_id: i64,
) -> anyhow::Result<()> {
    let per_chat = notes as i64 + 1;
    let results: Vec<anyhow::Result<()>> =
        stream::iter(chats.iter().enumerate())
            .map(|(i, &chat)| async move {
                let base = first_update_id + i as i64 * per_chat;
                for n in 0..per_chat {
                    let text = if n == 0 {
                        "/start".to_owned()
                    } else {
                        format!("note {} of {chat}", n - 1)
                    };
                    let body = text_update(base + n, chat, &text).to_string();
                    // Retry 503s like Telegram would (they can happen while NATS is busy).
                    eventually(
                        "the webhook to accept an update",
                        Duration::from_secs(30),
                        || {
                            let body = body.clone();
                            async move {
                                Ok((stack.post_webhook(body, Some(SECRET)).await? == 200)
                                    .then_some(()))
                            }
                        },
                    )
                    .await?;
                }
                Ok(())
            })
            .buffer_unordered(16)
            .collect()
            .await;
    results.into_iter().collect()
}

async fn notes_count(stack: &Stack) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM messages")
        .fetch_one(&stack.db)
        .await?)
}

async fn assert_every_note_once_in_order(
    stack: &Stack,
    chats: &[i64],
    notes: usize,
) -> anyhow::Result<()> {
    for &chat in chats {
        let want: Vec<String> = (0..notes).map(|n| format!("note {n} of {chat}")).collect();
        assert_eq!(
            stack.notes(chat).await?,
            want,
            "chat {chat}: every note once, in order"
        );
    }
    Ok(())
}

/// Waits until the given workers own every partition exactly once, balanced within one.
async fn balanced(
    http: &reqwest::Client,
    workers: &[&WorkerProcess],
    deadline: Duration,
) -> anyhow::Result<Vec<usize>> {
    eventually(
        "partitions balanced over the live workers",
        deadline,
        || async {
            let mut all = Vec::new();
            let mut loads = Vec::new();
            for w in workers {
                let Some(p) = w.partitions(http).await else {
                    return Ok(None);
                };
                loads.push(p.len());
                all.extend(p);
            }
            let distinct: BTreeSet<u32> = all.iter().copied().collect();
            let (min, max) = (
                loads.iter().min().copied().unwrap_or(0),
                loads.iter().max().copied().unwrap_or(0),
            );
            Ok(
                (all.len() == P as usize && distinct.len() == P as usize && max - min <= 1)
                    .then_some(loads),
            )
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_one_killed_one_added_every_note_once_in_order() -> anyhow::Result<()> {
    let stack = Stack::start_with(Services::IngressOnly).await?;
    let (nats, db) = (stack.nats.url(), stack.pg.url().to_owned());
    let mut w1 = WorkerProcess::start("w1", &nats, &db).await?;
    let w2 = WorkerProcess::start("w2", &nats, &db).await?;
    let w3 = WorkerProcess::start("w3", &nats, &db).await?;
    // Setup, not the property under test: three debug-build workers starting beside the rest
    // of the suite on two cores (a full run once needed more than 30 s).
    balanced(&stack.http, &[&w1, &w2, &w3], Duration::from_secs(60)).await?;

    let chats: Vec<i64> = (0..200).map(|i| 10_000 + i).collect();
    let notes = 10;
    let posting = post_conversations(&stack, &chats, notes, 1);
    let chaos = async {
        // Mid-run: kill one worker without warning, then add another.
        eventually(
            "a third of the notes applied",
            Duration::from_secs(60),
            || async { Ok((notes_count(&stack).await? >= 600).then_some(())) },
        )
        .await?;
        let killed_at = Instant::now();
        w1.kill().await?;
        let w4 = WorkerProcess::start("w4", &nats, &db).await?;
        anyhow::Ok((killed_at, w4))
    };
    let (posted, chaos) = tokio::join!(posting, chaos);
    posted?;
    let (killed_at, w4) = chaos?;

    eventually(
        "all 2,000 notes applied",
        Duration::from_secs(120),
        || async { Ok((notes_count(&stack).await? >= 2000).then_some(())) },
    )
    .await?;
    // Since partition release waits for the running updates (at most the hand-over timeout,
    // the worker's 15 s ack wait) off the heartbeat, a kill plus a join can take two bounded
    // releases before the spread settles: a full-suite run saw it miss 30 s once.
    let loads = balanced(&stack.http, &[&w2, &w3, &w4], Duration::from_secs(60)).await?;
    eprintln!(
        "rebalanced after kill+join within {:?}: loads {loads:?}",
        killed_at.elapsed()
    );

    assert_every_note_once_in_order(&stack, &chats, notes).await?;
    assert_eq!(notes_count(&stack).await?, 2000, "no note twice");
    let processed: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_updates")
        .fetch_one(&stack.db)
        .await?;
    assert_eq!(processed, 2200, "every update applied once");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_older_update_is_applied_first_never_after() -> anyhow::Result<()> {
    let stack = Stack::start_with(Services::IngressOnly).await?;
    // Migrate through a worker that owns no partition, so nothing consumes behind our back.
    let mut config = stack.worker_config();
    config.fixed_partitions = Some(vec![]);
    let (idle, idle_cancel) = stack.spawn_worker(config).await?;

    let client = async_nats::connect(stack.nats.url()).await?;
    let js = async_nats::jetstream::new(client);
    let bot = stack.bot_id();
    let chat = 77;
    let p = partition_of(chat, P);
    let subject = topology::update_subject(bot, p, chat);
    let mut seqs = Vec::new();
    for (id, text) in [(1, "/start"), (2, "older"), (3, "newer")] {
        let env = InboundUpdate {
            bot_id: bot,
            update_id: id,
            chat_id: chat,
            partition: p,
            received_at_unix_ms: 0,
            update_json: text_update(id, chat, text).to_string().into_bytes(),
            update_fingerprint: 0,
        };
        let ack = js
            .send_publish(
                subject.clone(),
                PublishMessage::build().payload(env.encode_to_vec().into()),
            )
            .await?
            .await?;
        seqs.push((ack.sequence, env));
    }
    let updates = js.get_stream(topology::UPDATES_STREAM).await?;
    let stats = std::sync::Arc::new(courier_worker::Stats::default());
    let applier = courier_worker::apply::Applier::new(
        courier_notes::NotesBot,
        bot,
        stack.db.clone(),
        js.clone(),
        updates,
        stats.clone(),
        CancellationToken::new(),
    );
    let delivered = |i: usize| courier_worker::apply::Delivered {
        seq: seqs[i].0,
        subject: subject.clone(),
        payload: seqs[i].1.encode_to_vec().into(),
        stored_at_ns: None,
        prev_on_subject: None,
    };

    // The newest arrives first (its predecessors are "in redelivery").
    assert_eq!(
        applier.process(&delivered(2), 0, None).await,
        courier_worker::apply::Outcome::Done
    );
    assert_eq!(
        stack.notes(chat).await?,
        vec!["older", "newer"],
        "the older note is applied first"
    );
    assert!(stats.reordered.get() >= 1);
    // Then the redeliveries arrive: skipped, never applied after the newer one.
    applier.process(&delivered(1), 0, None).await;
    applier.process(&delivered(0), 0, None).await;
    assert_eq!(stack.notes(chat).await?, vec!["older", "newer"]);
    assert_eq!(stats.duplicates.get(), 2);
    assert_eq!(stats.applied.get(), 3);
    idle_cancel.cancel();
    idle.wait().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_sharing_every_partition_keep_each_chat_in_order() -> anyhow::Result<()> {
    let stack = Stack::start_with(Services::IngressOnly).await?;
    // Both workers claim every partition; the pin picks one per partition, and a meddler
    // releases every pin by hand, over and over, so deliveries keep moving between them
    // while earlier ones are still in flight.
    let mut config = stack.worker_config();
    config.fixed_partitions = Some((0..P).collect());
    let (a, a_cancel) = stack.spawn_worker(config.clone()).await?;
    let (b, b_cancel) = stack.spawn_worker(config).await?;

    let client = async_nats::connect(stack.nats.url()).await?;
    let js = async_nats::jetstream::new(client);
    let updates = js.get_stream(topology::UPDATES_STREAM).await?;
    let stop = CancellationToken::new();
    let meddler = {
        let stop = stop.clone();
        let bot = stack.bot_id();
        tokio::spawn(async move {
            let mut unpins = 0u64;
            while !stop.is_cancelled() {
                for p in 0..P {
                    let name = courier_worker::partitions::consumer_name(bot, p);
                    if updates
                        .unpin_consumer(&name, courier_worker::partitions::GROUP)
                        .await
                        .is_ok()
                    {
                        unpins += 1;
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            unpins
        })
    };

    let chats: Vec<i64> = (0..40).map(|i| 20_000 + i).collect();
    let notes = 15;
    post_conversations(&stack, &chats, notes, 1).await?;
    eventually("every note applied", Duration::from_secs(90), || async {
        Ok((notes_count(&stack).await? >= (chats.len() * notes) as i64).then_some(()))
    })
    .await?;
    stop.cancel();
    let unpins = meddler.await?;

    assert_every_note_once_in_order(&stack, &chats, notes).await?;
    let (sa, sb) = (a.stats(), b.stats());
    let (applied_a, applied_b) = (sa.applied.get(), sb.applied.get());
    assert_eq!(
        applied_a + applied_b,
        (chats.len() * (notes + 1)) as u64,
        "each update applied once"
    );
    assert!(
        applied_a > 0 && applied_b > 0,
        "both workers applied updates: {applied_a} / {applied_b}"
    );
    assert!(unpins > 0, "pins were released by hand");
    a_cancel.cancel();
    b_cancel.cancel();
    a.wait().await?;
    b.wait().await?;
    Ok(())
}
