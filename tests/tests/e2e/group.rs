//! Group commit: many chats' notes applied in shared transactions keep every rule of one
//! update alone — each once, each chat in order, answered — and a poison update in a batch
//! fails alone.

use anyhow::Result;
use courier_tests::{eventually, Stack, DEADLINE};
use futures::future::try_join_all;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_chats_share_transactions_and_each_keeps_its_order() -> Result<()> {
    let stack = &Stack::start().await?;
    // Rounds of one note from each of forty chats at once, until the worker has put several
    // of them into one transaction (whether a round does depends on timing: at least one
    // round in so many does on any machine), then every chat is checked for each note once,
    // in order. (At most 12 notes: with /start, under the flood budget of 20 per 10 s.)
    const ROUNDS: usize = 12;
    let chats: Vec<i64> = (8_100..8_140).collect();
    stack.register(&chats).await?;
    let stats = stack.worker_stats();
    let mut rounds = 0;
    while rounds < ROUNDS && (rounds < 3 || stats.batched.get() == 0) {
        try_join_all(chats.iter().map(|&chat| async move {
            stack
                .say(chat, "Ada", &format!("note {rounds} of {chat}"))
                .await
        }))
        .await?;
        rounds += 1;
    }
    for &chat in &chats {
        let replies = stack.bot_replies(chat, 1 + rounds).await?;
        assert!(
            replies[1..]
                .iter()
                .all(|r| r.starts_with("Saved your note")),
            "chat {chat}: {replies:?}"
        );
        let expected: Vec<String> = (0..rounds).map(|n| format!("note {n} of {chat}")).collect();
        assert_eq!(
            stack.notes(chat).await?,
            expected,
            "chat {chat}: each note once, in order"
        );
    }
    assert!(
        stats.batched.get() > 0,
        "forty chats at once share transactions ({rounds} rounds)"
    );
    assert!(stats.batches.get() > 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_update_in_a_batch_fails_alone_and_the_others_are_applied() -> Result<()> {
    let stack = &Stack::start().await?;
    let chats: Vec<i64> = (8_200..8_230).collect();
    let poisoned = chats[7];
    stack.register(&chats).await?;
    // PostgreSQL refuses a NUL byte in text (SQLSTATE 22021): that note cannot be stored.
    try_join_all(chats.iter().map(|&chat| async move {
        let text = if chat == poisoned {
            "bad \u{0} note".to_owned()
        } else {
            format!("good note of {chat}")
        };
        stack.say(chat, "Ada", &text).await
    }))
    .await?;
    for &chat in chats.iter().filter(|&&c| c != poisoned) {
        let replies = stack.bot_replies(chat, 2).await?;
        assert!(replies[1].starts_with("Saved your note"), "{replies:?}");
        assert_eq!(
            stack.notes(chat).await?,
            vec![format!("good note of {chat}")]
        );
    }
    let stats = stack.worker_stats();
    eventually("the poison update dead-lettered", DEADLINE, || async {
        Ok((stats.dead_lettered.get() == 1).then_some(()))
    })
    .await?;
    assert!(stack.notes(poisoned).await?.is_empty());
    Ok(())
}
