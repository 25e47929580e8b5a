//! Arrival order: a chat's updates are applied in the order they reached the stream. Telegram's
//! server sends a chat's next update only after the previous one was answered, and ingress
//! answers only after JetStream's ack, so that is `update_id` order. The sandbox can also send
//! several updates of a chat at once with random delays (`chat_in_flight`,
//! `delivery_jitter_ms`), letting them overtake each other on the way: every one is still
//! applied once and answered, and the worker counts each that came after a later one.

use std::collections::BTreeMap;

use anyhow::Result;
use courier_tests::{eventually, Stack, DEADLINE};
use futures::future::try_join_all;

const CHATS: i64 = 8;
const NOTES: usize = 5;

/// Every chat registers (`/start`, answered), then its notes are created back to back without
/// waiting for replies. Returns each chat's notes as applied: (`update_id`, text) in the order
/// the worker stored them.
async fn burst_of_notes(stack: &Stack, base: i64) -> Result<BTreeMap<i64, Vec<(i64, String)>>> {
    let chats: Vec<i64> = (base..base + CHATS).collect();
    stack.register(&chats).await?;
    try_join_all(chats.iter().map(|&chat| async move {
        for n in 0..NOTES {
            stack.say(chat, "Ada", &format!("note {n}")).await?;
        }
        anyhow::Ok(())
    }))
    .await?;
    // Each note answered once (and /start): the sender paces a private chat at 1/s.
    for &chat in &chats {
        let replies = stack.bot_replies(chat, 1 + NOTES).await?;
        assert!(
            replies[1..]
                .iter()
                .all(|r| r.starts_with("Saved your note")),
            "chat {chat}: {replies:?}"
        );
    }
    let rows: Vec<(i64, i64, String)> = eventually("every note stored", DEADLINE, || async {
        let rows: Vec<(i64, i64, String)> = sqlx::query_as(
            "SELECT chat_id, update_id, text FROM messages WHERE chat_id >= $1 AND chat_id < $2 \
             ORDER BY id",
        )
        .bind(base)
        .bind(base + CHATS)
        .fetch_all(&stack.db)
        .await?;
        Ok((rows.len() >= CHATS as usize * NOTES).then_some(rows))
    })
    .await?;
    let mut by_chat: BTreeMap<i64, Vec<(i64, String)>> = BTreeMap::new();
    for (chat, update_id, text) in rows {
        by_chat.entry(chat).or_default().push((update_id, text));
    }
    for (chat, notes) in &by_chat {
        let mut texts: Vec<&str> = notes.iter().map(|(_, t)| t.as_str()).collect();
        texts.sort_unstable();
        let expected: Vec<String> = (0..NOTES).map(|n| format!("note {n}")).collect();
        assert_eq!(
            texts, expected,
            "chat {chat}: each note stored exactly once"
        );
    }
    Ok(by_chat)
}

/// Updates applied after an update of their chat with a higher id.
fn inversions(by_chat: &BTreeMap<i64, Vec<(i64, String)>>) -> u64 {
    let mut n = 0;
    for notes in by_chat.values() {
        let mut highest = i64::MIN;
        for &(id, _) in notes {
            if id < highest {
                n += 1;
            }
            highest = highest.max(id);
        }
    }
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_as_telegram_does_a_chats_updates_are_applied_in_update_id_order() -> Result<()> {
    let stack = Stack::start().await?;
    let by_chat = burst_of_notes(&stack, 7_100).await?;
    for (chat, notes) in &by_chat {
        let ids: Vec<i64> = notes.iter().map(|(id, _)| *id).collect();
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        assert_eq!(ids, sorted, "chat {chat}: applied in update_id order");
        let texts: Vec<String> = notes.iter().map(|(_, t)| t.clone()).collect();
        let expected: Vec<String> = (0..NOTES).map(|n| format!("note {n}")).collect();
        assert_eq!(texts, expected, "chat {chat}: in the order written");
    }
    let stats = stack.worker_stats();
    assert_eq!(stats.out_of_order.get(), 0);
    // The order guard asks the stream about a chat's first update in the partition's tenure;
    // after that, the deliveries tell it the chat's previous update.
    let lookups = stats.guard_lookups.get();
    let applied = stats.applied.get();
    assert_eq!(applied, CHATS as u64 * (1 + NOTES as u64));
    assert!(
        lookups < applied / 2,
        "{lookups} stream lookups for {applied} updates"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updates_that_overtake_each_other_on_the_way_are_all_applied_once_and_counted() -> Result<()>
{
    let stack = Stack::start().await?;
    reqwest::Client::new()
        .post(format!("{}/sandbox/faults", stack.sandbox_url()))
        .json(&serde_json::json!({"chat_in_flight": NOTES, "delivery_jitter_ms": 40}))
        .send()
        .await?
        .error_for_status()?;
    let by_chat = burst_of_notes(&stack, 7_200).await?;
    let seen = inversions(&by_chat);
    let counted = stack.worker_stats().out_of_order.get();
    println!(
        "{seen} of {} notes applied after a later update of their chat",
        CHATS as usize * NOTES
    );
    // Five notes per chat sent within a few milliseconds, each held 0–40 ms: that all eight
    // chats' notes still arrive in order is far less likely than one in a billion.
    assert!(seen > 0, "the fault lets updates overtake each other");
    assert_eq!(
        counted, seen,
        "the worker counts exactly the updates applied after a later one of their chat"
    );
    Ok(())
}
