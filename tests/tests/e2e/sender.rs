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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_for_1000_messages_over_100_chats_plus_200_to_one_chat() -> anyhow::Result<()> {
    let rig = SenderRig::start().await?;
    let chats: Vec<i64> = (1..=100).map(|i| 710_000 + i).collect();
    let big = 719_999;
    rig.create_chats(chats.iter().copied().chain([big])).await?;
    rig.clear_calls().await?;

    // Queue everything first (as after an outage), interleaved across chats.
    let mut msgs = Vec::new();
    let mut id = 1_000_000;
    for round in 0..10 {
        for &c in &chats {
            id += 1;
            msgs.push((c, id, format!("c{c} m{round}")));
        }
        for k in 0..20 {
            id += 1;
            msgs.push((big, id, format!("c{big} m{}", round * 20 + k)));
        }
    }
    rig.publish_all(&msgs).await?;
    let sender = rig.start_sender().await?;

    // The first 1,000 accepted calls happen while 101 chats compete for the bot's budget.
    let calls = accepted_calls(&rig, 1000, Duration::from_secs(60)).await?;
    let ok: Vec<&Call> = calls
        .iter()
        .filter(|c| c.status == 200)
        .take(1000)
        .collect();
    let span_ms = (ok[999].at_unix_ms - ok[0].at_unix_ms) as f64;
    let rate = 999.0 / (span_ms / 1000.0);
    eprintln!("bot-wide rate over the first 1000 calls: {rate:.2}/s");
    assert!(
        (29.4..=30.6).contains(&rate),
        "bot-wide rate {rate:.2}/s, not within 2% of 30/s"
    );

    // Then the big chat drains at its own 1/s: ~200 s in all.
    let calls = accepted_calls(&rig, 1200, Duration::from_secs(260)).await?;
    let stats = rig.stats().await?;
    assert_eq!(
        stats["responses_429"], 0,
        "the sandbox refused calls: {stats}"
    );
    assert!(calls.iter().all(|c| c.status == 200), "every call accepted");
    assert_eq!(calls.len(), 1200, "no call repeated");
    let at: Vec<i64> = calls.iter().map(|c| c.at_unix_ms).collect();
    assert!(
        max_in_window(&at, 1000) <= 30,
        "more than 30 calls in a second"
    );

    for (chat, cs) in by_chat(&calls) {
        for w in cs.windows(2) {
            let gap = w[1].at_unix_ms - w[0].at_unix_ms;
            assert!(gap >= 1000, "chat {chat}: two calls {gap} ms apart");
        }
        let n = if chat == big { 200 } else { 10 };
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
        1200
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
    // No call during a retry_after window (3 s from each 429).
    for r in &refused {
        let inside: Vec<&Call> = calls
            .iter()
            .filter(|c| c.at_unix_ms > r.at_unix_ms && c.at_unix_ms < r.at_unix_ms + 3000)
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
    // The sender ran the migrations; the worker would have registered the user on /start.
    sqlx::query(
        "INSERT INTO users (bot_id, user_id, chat_id, first_name) VALUES ($1, $2, $2, 'B')",
    )
    .bind(rig.bot_id())
    .bind(blocked)
    .execute(&rig.db)
    .await?;

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
    let marked: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT blocked_at FROM users WHERE bot_id = $1 AND user_id = $2")
            .bind(rig.bot_id())
            .bind(blocked)
            .fetch_one(&rig.db)
            .await?;
    assert!(marked.is_some(), "users.blocked_at set");
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
    assert_eq!(
        parts.concat().split_whitespace().collect::<Vec<_>>(),
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
