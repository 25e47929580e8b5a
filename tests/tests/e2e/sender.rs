//! The sender against the sandbox with Telegram's rate limits on: budgets kept exactly,
//! failures survived, nothing lost or duplicated, one active sender among replicas.
//!
//! These tests feed the sender directly (`OutboundMessage`s published to
//! `courier.outbound.<bot>.<chat>`) through [`SenderRig`]: no ingress, no worker.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use courier_tests::eventually;
use courier_tests::sender_support::{max_in_window, Call, SenderRig};

/// Waits until the sandbox accepted `n` sending calls; returns all calls.
async fn accepted_calls(
    rig: &SenderRig,
    n: usize,
    deadline: Duration,
) -> anyhow::Result<Vec<Call>> {
    eventually(&format!("{n} accepted calls"), deadline, || async {
        let calls = rig.calls().await?;
        let ok = calls.iter().filter(|c| c.status == 200).count();
        Ok((ok >= n).then_some(calls))
    })
    .await
}

fn by_chat(calls: &[Call]) -> HashMap<i64, Vec<&Call>> {
    let mut m: HashMap<i64, Vec<&Call>> = HashMap::new();
    for c in calls.iter().filter(|c| c.status == 200) {
        m.entry(c.chat_id).or_default().push(c);
    }
    m
}

/// Safety only (how fast is a benchmark's business: `--example sender_budget`): with 50 ms of
/// random network jitter between dispatch and arrival, the sandbox, counting Telegram's limits
/// at arrival, never refuses a call, never sees 31 calls in a second or two calls to one chat
/// within a second, and every chat gets its messages once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_under_jitter_for_1000_messages_over_100_chats_plus_30_to_one_chat(
) -> anyhow::Result<()> {
    let rig = SenderRig::start().await?;
    let chats: Vec<i64> = (1..=100).map(|i| 710_000 + i).collect();
    let big = 719_999;
    rig.create_chats(chats.iter().copied().chain([big])).await?;
    rig.clear_calls().await?;
    rig.faults(serde_json::json!({"jitter_ms": 50})).await?;

    // Queue everything first (as after an outage), interleaved across chats.
    let mut msgs = Vec::new();
    let mut id = 1_000_000;
    for round in 0..10 {
        for &c in &chats {
            id += 1;
            msgs.push((c, id, format!("c{c} m{round}")));
        }
        for k in 0..3 {
            id += 1;
            msgs.push((big, id, format!("c{big} m{}", round * 3 + k)));
        }
    }
    rig.publish_all(&msgs).await?;
    let sender = rig.start_sender().await?;

    // 1,030 calls at 30/s take 35 s at best; the big chat's 30 at 1/s, 30 s.
    let calls = accepted_calls(&rig, 1030, Duration::from_secs(180)).await?;
    let stats = rig.stats().await?;
    assert_eq!(
        stats["responses_429"], 0,
        "the sandbox refused calls: {stats}"
    );
    assert!(calls.iter().all(|c| c.status == 200), "every call accepted");
    assert_eq!(calls.len(), 1030, "no call repeated");
    let at: Vec<i64> = calls.iter().map(|c| c.at_unix_ms).collect();
    let most = max_in_window(&at, 1000);
    assert!(most <= 30, "{most} calls in one second");

    for (chat, cs) in by_chat(&calls) {
        for w in cs.windows(2) {
            let gap = w[1].at_unix_ms - w[0].at_unix_ms;
            assert!(gap >= 1000, "chat {chat}: two calls {gap} ms apart");
        }
        let n = if chat == big { 30 } else { 10 };
        let want: Vec<String> = (0..n).map(|i| format!("c{chat} m{i}")).collect();
        assert_eq!(
            rig.bot_texts(chat).await?,
            want,
            "chat {chat}: order or content"
        );
    }
    eventually(
        "every message acknowledged",
        Duration::from_secs(10),
        || async { Ok((rig.unacked().await? == 0).then_some(())) },
    )
    .await?;
    assert_eq!(
        sender.sender.stats().messages_sent.load(Ordering::Relaxed),
        1030
    );
    assert_eq!(
        sender.sender.stats().rate_limited.load(Ordering::Relaxed),
        0
    );
    sender.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_5xx_and_429_bursts_without_loss_or_duplicates() -> anyhow::Result<()> {
    let rig = SenderRig::start().await?;
    let chats: Vec<i64> = (1..=30).map(|i| 720_000 + i).collect();
    rig.create_chats(chats.iter().copied()).await?;
    rig.clear_calls().await?;
    rig.faults(serde_json::json!({"error_rate": 0.1, "error_status": 500}))
        .await?;
    let sender = rig.start_sender().await?;

    let mut msgs = Vec::new();
    let mut id = 2_000_000;
    for round in 0..5 {
        for &c in &chats {
            id += 1;
            msgs.push((c, id, format!("c{c} m{round}")));
        }
    }
    rig.publish_all(&msgs[..60]).await?;
    accepted_calls(&rig, 30, Duration::from_secs(30)).await?;
    // A burst of 429s in the middle of the traffic, then the rest of the messages.
    rig.faults(serde_json::json!({"burst_429": {"count": 4, "retry_after": 3}}))
        .await?;
    rig.publish_all(&msgs[60..]).await?;

    let calls = accepted_calls(&rig, 150, Duration::from_secs(90)).await?;
    let refused: Vec<&Call> = calls.iter().filter(|c| c.status == 429).collect();
    assert!(
        refused.len() >= 4,
        "the burst was served: {} 429s",
        refused.len()
    );
    assert!(calls.iter().any(|c| c.status == 500), "5xx were injected");
    // No call during a retry_after window (3 s from each 429). Calls already on the wire when
    // the 429 was answered cannot be recalled (the pacing lets up to three go back to back):
    // the sandbox's log has arrival times only, so a call arriving within IN_FLIGHT of the
    // 429 counts as dispatched before its answer reached the sender.
    const IN_FLIGHT: i64 = 200;
    for r in &refused {
        let inside: Vec<&Call> = calls
            .iter()
            .filter(|c| {
                c.at_unix_ms > r.at_unix_ms + IN_FLIGHT && c.at_unix_ms < r.at_unix_ms + 3000
            })
            .collect();
        assert!(
            inside.is_empty(),
            "calls during the retry_after window of {r:?}: {inside:?}"
        );
    }
    // Everything delivered, once, in order.
    for &c in &chats {
        let want: Vec<String> = (0..5).map(|i| format!("c{c} m{i}")).collect();
        assert_eq!(rig.bot_texts(c).await?, want, "chat {c}");
    }
    assert_eq!(
        calls.iter().filter(|c| c.status == 200).count(),
        150,
        "no duplicate"
    );
    let stats = sender.sender.stats();
    assert!(stats.rate_limited.load(Ordering::Relaxed) >= 4);
    assert_eq!(stats.dead_lettered.load(Ordering::Relaxed), 0);
    sender.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_user_is_parked_and_marked_others_unaffected_and_long_texts_split(
) -> anyhow::Result<()> {
    let rig = SenderRig::start().await?;
    let (blocked, other, long) = (730_001_i64, 730_002_i64, 730_003_i64);
    rig.create_chats([blocked, other, long]).await?;
    rig.faults(serde_json::json!({"blocked_users": [blocked]}))
        .await?;
    let sender = rig.start_sender().await?;

    let text: String = (0..1000).map(|i| format!("{i:04} ")).collect();
    assert_eq!(text.chars().count(), 5000);
    let mut msgs = Vec::new();
    for i in 0..3 {
        msgs.push((blocked, 3_000_000 + i, format!("to blocked {i}")));
        msgs.push((other, 3_000_100 + i, format!("to other {i}")));
    }
    msgs.push((long, 3_000_200, text.clone()));
    rig.publish_all(&msgs).await?;

    let stats = sender.sender.stats();
    eventually("blocked chat handled", Duration::from_secs(30), || async {
        Ok((stats.dead_lettered.load(Ordering::Relaxed) == 1
            && stats.skipped_blocked.load(Ordering::Relaxed) == 2)
            .then_some(()))
    })
    .await?;
    assert_eq!(
        rig.dead_letters().await?,
        1,
        "the refused message is parked in COURIER_DLQ"
    );
    // `blocked_chats` is where the platform records a block (a bot's own tables are the
    // bot's: the sender writes none).
    let in_table: i64 = sqlx::query_scalar("SELECT count(*) FROM blocked_chats WHERE chat_id = $1")
        .bind(blocked)
        .fetch_one(&rig.db)
        .await?;
    assert_eq!(in_table, 1);

    // Other chats are unaffected; the long text arrives as two ordered messages.
    eventually("other chats delivered", Duration::from_secs(30), || async {
        Ok(
            (rig.bot_texts(other).await?.len() == 3 && rig.bot_texts(long).await?.len() == 2)
                .then_some(()),
        )
    })
    .await?;
    assert_eq!(
        rig.bot_texts(other).await?,
        vec!["to other 0", "to other 1", "to other 2"]
    );
    let parts = rig.bot_texts(long).await?;
    assert!(
        parts[0].starts_with("0000 ") && parts[1].trim_end().ends_with("0999"),
        "order of the parts"
    );
    // Telegram trims each message's leading and trailing white space (so does the sandbox):
    // the space at the cut is in neither part. Joined by one, the words are the text's, none
    // cut in two.
    assert_eq!(
        parts.join(" ").split_whitespace().collect::<Vec<_>>(),
        text.split_whitespace().collect::<Vec<_>>()
    );
    let calls = rig.calls().await?;
    assert_eq!(
        calls.iter().filter(|c| c.chat_id == blocked).count(),
        1,
        "later messages to the blocked chat were skipped without a call"
    );
    sender.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_senders_never_exceed_the_bots_budget_and_hand_over_without_loss() -> anyhow::Result<()>
{
    let rig = SenderRig::start().await?;
    let chats: Vec<i64> = (1..=100).map(|i| 740_000 + i).collect();
    rig.create_chats(chats.iter().copied()).await?;
    rig.clear_calls().await?;
    let a = rig.start_sender().await?;
    let b = rig.start_sender().await?;

    let mut msgs = Vec::new();
    let mut id = 4_000_000;
    for round in 0..4 {
        for &c in &chats {
            id += 1;
            msgs.push((c, id, format!("c{c} m{round}")));
        }
    }
    rig.publish_all(&msgs).await?;
    accepted_calls(&rig, 100, Duration::from_secs(30)).await?;
    let (sa, sb) = (a.sender.stats(), b.sender.stats());
    let (active, standby, standby_stats) = if sa.sent.load(Ordering::Relaxed) > 0 {
        (a, b, sb)
    } else {
        (b, a, sa)
    };
    assert_eq!(
        standby_stats.sent.load(Ordering::Relaxed),
        0,
        "only one sender is active"
    );
    // Hand over: the active one stops gracefully mid-way; the standby takes the rest.
    active.stop().await?;
    let calls = accepted_calls(&rig, 400, Duration::from_secs(60)).await?;
    assert!(
        standby_stats.sent.load(Ordering::Relaxed) > 0,
        "the standby took over"
    );

    if let Some(r) = calls.iter().position(|c| c.status == 429) {
        panic!(
            "429 at {r}: {:#?}",
            &calls[r.saturating_sub(32)..(r + 3).min(calls.len())]
        );
    }
    assert_eq!(rig.stats().await?["responses_429"], 0);
    let at: Vec<i64> = calls.iter().map(|c| c.at_unix_ms).collect();
    let most = max_in_window(&at, 1000);
    assert!(most <= 30, "{most} calls in one second with two senders");
    assert_eq!(calls.len(), 400, "nothing sent twice");
    for &c in &chats {
        let want: Vec<String> = (0..4).map(|i| format!("c{c} m{i}")).collect();
        assert_eq!(rig.bot_texts(c).await?, want, "chat {c}");
    }
    standby.stop().await
}

/// Review finding 1: the circuit breaker outlived a lease term, and pulling waited for it to
/// close; with the breaker open when a term ended, the next term had no message to probe
/// with, nothing was pulled, and the sender never called Telegram again (while keeping the
/// lease). Now a due probe pulls a message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_breaker_open_when_a_lease_term_ends_does_not_stop_the_next_term() -> anyhow::Result<()> {
    let rig = SenderRig::start().await?;
    let chat = 750_001;
    rig.create_chats([chat]).await?;
    rig.clear_calls().await?;
    rig.faults(serde_json::json!({"error_rate": 1.0, "error_status": 502}))
        .await?;
    let mut config = rig.sender_config();
    config.breaker_threshold = 1;
    config.breaker_cooldown = Duration::from_millis(300);
    config.lease_ttl = Duration::from_secs(3);
    let sender = rig.start_sender_with(config).await?;
    rig.publish(chat, 5_000_001, "after the outage").await?;
    eventually("a failed call", Duration::from_secs(30), || async {
        Ok(rig
            .calls()
            .await?
            .iter()
            .any(|c| c.status == 502)
            .then_some(()))
    })
    .await?;
    // The lease key changes under the sender (as in a NATS blip): its renewals fail, the term
    // ends with the breaker open, and it takes the lease again.
    let kv = rig.js.get_key_value(courier_sender::lease::BUCKET).await?;
    kv.delete(format!("bot_{}", rig.bot_id())).await?;
    let stats = sender.sender.stats();
    eventually("a second term", Duration::from_secs(30), || async {
        Ok((stats.activations.load(Ordering::Relaxed) >= 2).then_some(()))
    })
    .await?;
    // Telegram is back: the message goes out.
    rig.clear_faults().await?;
    eventually("the message delivered", Duration::from_secs(60), || async {
        Ok((rig.bot_texts(chat).await? == ["after the outage"]).then_some(()))
    })
    .await?;
    sender.stop().await
}

/// Review finding 6: a dead letter whose publish failed left its message unsettled while the
/// lane went on, so the chat's next message overtook it (and the dead letter was lost until a
/// redelivery). Now the chat waits until the dead letter is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_that_cannot_be_stored_holds_its_chat_until_it_is() -> anyhow::Result<()> {
    let rig = SenderRig::start().await?;
    let chat = 751_001;
    rig.create_chats([chat]).await?;
    rig.clear_calls().await?;
    let sender = rig.start_sender().await?;
    // The dead-letter stream is gone (the sender made it at start-up).
    rig.js
        .delete_stream(courier_common::topology::DLQ_STREAM)
        .await?;
    rig.faults(serde_json::json!({"error_rate": 1.0, "error_status": 400}))
        .await?;
    let stats = sender.sender.stats();
    rig.publish(chat, 5_100_001, "refused").await?;
    eventually(
        "a failed dead-letter publish",
        Duration::from_secs(30),
        || async { Ok((stats.dead_letter_failures.load(Ordering::Relaxed) >= 1).then_some(())) },
    )
    .await?;
    rig.clear_faults().await?;
    rig.publish(chat, 5_100_002, "next").await?;
    let failures = stats.dead_letter_failures.load(Ordering::Relaxed);
    eventually(
        "the dead letter retried",
        Duration::from_secs(30),
        || async {
            Ok((stats.dead_letter_failures.load(Ordering::Relaxed) >= failures + 2).then_some(()))
        },
    )
    .await?;
    assert!(
        rig.bot_texts(chat).await?.is_empty(),
        "the chat's next message overtook the unparked one"
    );
    courier_common::topology::ensure_streams(
        &rig.js,
        courier_common::partition::DEFAULT_PARTITIONS,
    )
    .await?;
    let stored_after = chrono::Utc::now().timestamp_millis();
    eventually(
        "the next message delivered",
        Duration::from_secs(30),
        || async { Ok((rig.bot_texts(chat).await? == ["next"]).then_some(())) },
    )
    .await?;
    assert_eq!(
        rig.dead_letters().await?,
        1,
        "the refused message is parked"
    );
    let calls = rig.calls().await?;
    let next = calls
        .iter()
        .find(|c| c.status == 200)
        .expect("the call of 'next'");
    assert!(
        next.at_unix_ms >= stored_after,
        "'next' was sent before the dead letter could be stored"
    );
    sender.stop().await
}

/// Review finding 8: limiters start empty at a hand-over, and a group's budget spans a
/// minute, so a new holder could send to a busy group at once. Now it reads each chat's last
/// send from the ledger and waits a whole period from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_lease_holder_keeps_a_groups_period_from_the_previous_holders_last_send(
) -> anyhow::Result<()> {
    let rig = SenderRig::start().await?;
    let group = -760_001;
    rig.create_chats([group]).await?;
    rig.clear_calls().await?;
    courier_sender::MIGRATOR.run(&rig.db).await?;
    // The previous holder sent to the group half a second ago.
    let sent_ms: i64 = sqlx::query_scalar(
        "INSERT INTO sent_messages (bot_id, outbox_id, part, chat_id, outcome, sent_at)
         VALUES ($1, 1, 0, $2, 'sent', now() - interval '500 milliseconds')
         RETURNING (extract(epoch FROM sent_at) * 1000)::bigint",
    )
    .bind(rig.bot_id())
    .bind(group)
    .fetch_one(&rig.db)
    .await?;
    let sender = rig.start_sender().await?;
    rig.publish(group, 5_200_001, "to the group").await?;
    let calls = accepted_calls(&rig, 1, Duration::from_secs(30)).await?;
    let gap = calls[0].at_unix_ms - sent_ms;
    // 20/min with 1% headroom: 3,030 ms between two calls to a group.
    assert!(
        gap >= 3_000,
        "sent {gap} ms after the previous holder's last send to the group"
    );
    sender.stop().await
}
