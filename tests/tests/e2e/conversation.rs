//! The notes bot's conversation, through the whole pipeline.

use courier_tests::Stack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_conversation_end_to_end() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let ada = 1001;

    // Text before /start: a fallback, nothing saved.
    stack.say(ada, "Ada", "hello there").await?;
    let r = stack.bot_replies(ada, 1).await?;
    assert!(
        r[0].contains("/start") && r[0].contains("/help"),
        "fallback: {r:?}"
    );

    stack.say(ada, "Ada", "/start").await?;
    let r = stack.bot_replies(ada, 2).await?;
    assert!(r[1].starts_with("Hi, Ada!"), "welcome: {r:?}");

    stack.say(ada, "Ada", "buy milk").await?;
    stack.bot_replies(ada, 3).await?;
    stack.say(ada, "Ada", "call Bob").await?;
    let r = stack.bot_replies(ada, 4).await?;
    assert!(
        r[2].starts_with("Saved your note") && r[3].starts_with("Saved your note"),
        "{r:?}"
    );

    stack.say(ada, "Ada", "/history").await?;
    let r = stack.bot_replies(ada, 5).await?;
    let history = &r[4];
    let (bob, milk) = (history.find(" UTC call Bob"), history.find(" UTC buy milk"));
    assert!(
        bob.is_some() && milk.is_some(),
        "both notes listed with their times: {history}"
    );
    assert!(bob < milk, "newest first: {history}");
    // The times in italics (HTML through the sandbox, which parses it as Telegram does).
    let line = stack.transcript(ada).await?.remove(9);
    let italic: Vec<String> = line
        .entities
        .iter()
        .filter(|e| e["type"] == "italic")
        .map(|e| {
            let (at, len) = (
                e["offset"].as_u64().unwrap() as usize,
                e["length"].as_u64().unwrap() as usize,
            );
            // ASCII text here: UTF-16 offsets are char offsets.
            line.text.chars().skip(at).take(len).collect()
        })
        .collect();
    assert_eq!(italic.len(), 2, "{line:?}");
    assert!(
        italic
            .iter()
            .all(|t| t.ends_with(" UTC") && t.len() == "2026-12-02 03:35 UTC".len()),
        "{italic:?}"
    );

    stack.say(ada, "Ada", "/help").await?;
    let r = stack.bot_replies(ada, 6).await?;
    assert!(
        r[5].contains("/history") && r[5].contains("/start"),
        "{r:?}"
    );

    stack.say(ada, "Ada", "/dance").await?;
    let r = stack.bot_replies(ada, 7).await?;
    assert!(r[6].contains("/dance") && r[6].contains("/help"), "{r:?}");

    // The transcript alternates user and bot: every message got exactly one reply, in order.
    let t = stack.transcript(ada).await?;
    assert_eq!(t.len(), 14, "{t:#?}");
    assert!(
        t.iter()
            .enumerate()
            .all(|(i, l)| l.from_bot == (i % 2 == 1)),
        "{t:#?}"
    );

    // And the database holds what the conversation says.
    assert_eq!(stack.notes(ada).await?, vec!["buy milk", "call Bob"]);
    let (first_name, chat): (String, i64) =
        sqlx::query_as("SELECT first_name, chat_id FROM users WHERE user_id = $1")
            .bind(ada)
            .fetch_one(&stack.db)
            .await?;
    assert_eq!((first_name.as_str(), chat), ("Ada", ada));
    let state: serde_json::Value =
        sqlx::query_scalar("SELECT state FROM dialogue_states WHERE chat_id = $1")
            .bind(ada)
            .fetch_one(&stack.db)
            .await?;
    assert_eq!(state, serde_json::json!({"state": "ReceiveNote"}));
    let processed: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_updates")
        .fetch_one(&stack.db)
        .await?;
    assert_eq!(processed, 7);
    let unpublished: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
            .fetch_one(&stack.db)
            .await?;
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
        .fetch_one(&stack.db)
        .await?;
    assert_eq!(total, 7);
    // The marker runs in the background; the rows are marked shortly after publishing.
    courier_tests::eventually(
        "outbox rows marked published",
        courier_tests::DEADLINE,
        || async {
            let n: i64 =
                sqlx::query_scalar("SELECT count(*) FROM outbox WHERE published_at IS NULL")
                    .fetch_one(&stack.db)
                    .await?;
            Ok((n == 0).then_some(()))
        },
    )
    .await
    .map_err(|e| e.context(format!("{unpublished} unpublished at first look")))?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_text_is_stored_verbatim() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let user = 2002;
    stack.say(user, "Eve", "/start").await?;
    stack.bot_replies(user, 1).await?;
    let notes = [
        "Robert'); DROP TABLE messages;--",
        "SELECT * FROM users WHERE 1=1; -- 'quoted' \"double\" \\ backslash",
        "  leading and trailing spaces  ",
        "multi\nline\n\ttabbed",
        "🦀 ünïcödé 日本語 \u{200d}",
        "<b>not bold</b> & 1 < 2 &amp;",
    ];
    for (i, n) in notes.iter().enumerate() {
        stack.say(user, "Eve", n).await?;
        stack.bot_replies(user, i + 2).await?;
    }
    assert_eq!(stack.notes(user).await?, notes);
    // /history is HTML: a note that looks like markup is shown as written, not formatted.
    stack.say(user, "Eve", "/history").await?;
    let r = stack.bot_replies(user, notes.len() + 2).await?;
    let history = r.last().unwrap();
    assert!(
        history.contains(" UTC <b>not bold</b> & 1 < 2 &amp;\n"),
        "{history}"
    );
    let line = stack.transcript(user).await?.pop().unwrap();
    assert!(
        line.entities.iter().all(|e| e["type"] == "italic"),
        "only the times are formatted: {line:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_chats_run_in_parallel_and_each_stays_in_order() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let chats: Vec<i64> = (0..20).map(|i| 5000 + i).collect();
    for &c in &chats {
        stack.say(c, "P", "/start").await?;
    }
    for n in 0..5 {
        for &c in &chats {
            stack.say(c, "P", &format!("note {n} of {c}")).await?;
        }
    }
    for &c in &chats {
        stack.bot_replies(c, 6).await?;
        let want: Vec<String> = (0..5).map(|n| format!("note {n} of {c}")).collect();
        assert_eq!(stack.notes(c).await?, want, "chat {c} in order, once each");
    }
    Ok(())
}
