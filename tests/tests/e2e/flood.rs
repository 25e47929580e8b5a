//! Inbound flood control: a user over the budget gets one polite reply per window and their
//! notes are not stored, while other chats carry on; the budget holds across chats and workers.

use std::time::Duration;

use courier_common::partition::{partition_of, DEFAULT_PARTITIONS};
use courier_tests::{eventually, text_update, Services, Stack, DEADLINE, SECRET};
use serde_json::json;

/// A window far longer than any test run, so the counts do not depend on the machine's speed;
/// the next window is reached by moving the window's start back in the database.
const LONG_WINDOW: Duration = Duration::from_secs(3600);
const BUDGET: u32 = 20;

async fn count(stack: &Stack, sql: &str, chat: i64) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(sql)
        .bind(chat)
        .fetch_one(&stack.db)
        .await?)
}

async fn handled(stack: &Stack, chat: i64) -> anyhow::Result<i64> {
    count(
        stack,
        "SELECT count(*) FROM processed_updates WHERE chat_id = $1",
        chat,
    )
    .await
}

async fn throttled(stack: &Stack, chat: i64) -> anyhow::Result<i64> {
    count(
        stack,
        "SELECT count(*) FROM processed_updates WHERE chat_id = $1 AND outcome = 'throttled'",
        chat,
    )
    .await
}

async fn slow_downs(stack: &Stack, chat: i64) -> anyhow::Result<i64> {
    count(
        stack,
        "SELECT count(*) FROM outbox WHERE chat_id = $1 AND text LIKE '%too fast%'",
        chat,
    )
    .await
}

async fn wait_handled(stack: &Stack, chat: i64, n: i64) -> anyhow::Result<()> {
    eventually(
        &format!("{n} updates of chat {chat} handled"),
        DEADLINE,
        || async { Ok((handled(stack, chat).await? >= n).then_some(())) },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_user_is_slowed_down_once_per_window_while_other_chats_go_through(
) -> anyhow::Result<()> {
    let mut stack = Stack::start_with(Services::IngressOnly).await?;
    stack.start_sender().await?;
    let mut config = stack.worker_config();
    config.flood_limit = BUDGET;
    config.flood_window = LONG_WINDOW;
    let (worker, cancel) = stack.spawn_worker(config).await?;

    let (flooder, calm) = (8001, 8002);
    stack.say(flooder, "Flo", "/start").await?;
    stack.say(calm, "Cal", "/start").await?;
    let flood = async {
        for i in 0..40 {
            stack.say(flooder, "Flo", &format!("note {i}")).await?;
        }
        anyhow::Ok(())
    };
    // Meanwhile another chat has a conversation, every note answered before the next.
    let conversation = async {
        for i in 0..5 {
            stack.say(calm, "Cal", &format!("calm {i}")).await?;
            stack.bot_replies(calm, i + 2).await?;
        }
        anyhow::Ok(())
    };
    tokio::try_join!(flood, conversation)?;
    let calm_notes: Vec<String> = (0..5).map(|i| format!("calm {i}")).collect();
    assert_eq!(stack.notes(calm).await?, calm_notes);

    // /start and 19 notes are within the budget of 20; the 21st update gets the one reply,
    // the other 20 are recorded without effects.
    wait_handled(&stack, flooder, 41).await?;
    let within: Vec<String> = (0..19).map(|i| format!("note {i}")).collect();
    assert_eq!(stack.notes(flooder).await?, within);
    assert_eq!(throttled(&stack, flooder).await?, 21);
    assert_eq!(slow_downs(&stack, flooder).await?, 1);
    let outbox = count(
        &stack,
        "SELECT count(*) FROM outbox WHERE chat_id = $1",
        flooder,
    )
    .await?;
    assert_eq!(
        outbox,
        1 + 19 + 1,
        "welcome, 19 confirmations, one slow-down"
    );
    // The user sees it, once, after the last confirmation (the sender paces a private chat at
    // one message a second, hence the longer wait).
    let bot = eventually(
        "the flooder's 21 replies",
        Duration::from_secs(90),
        || async {
            let bot: Vec<String> = stack
                .transcript(flooder)
                .await?
                .into_iter()
                .filter(|l| l.from_bot)
                .map(|l| l.text)
                .collect();
            Ok((bot.len() >= 21).then_some(bot))
        },
    )
    .await?;
    assert_eq!(bot.len(), 21, "{bot:#?}");
    assert!(
        bot[20].contains("too fast") && bot[20].contains("wait"),
        "{bot:#?}"
    );
    assert_eq!(bot.iter().filter(|t| t.contains("too fast")).count(), 1);

    // The next window (moved back rather than waited for): a budget of 20 again, and again one
    // reply when it is spent.
    sqlx::query(
        "UPDATE flood_counters SET window_start = window_start - interval '2 hours' \
         WHERE sender_id = $1",
    )
    .bind(flooder)
    .execute(&stack.db)
    .await?;
    for i in 0..22 {
        stack.say(flooder, "Flo", &format!("later {i}")).await?;
    }
    wait_handled(&stack, flooder, 41 + 22).await?;
    let notes = stack.notes(flooder).await?;
    assert_eq!(notes.len(), 19 + 20, "{notes:?}");
    assert_eq!(notes.last().map(String::as_str), Some("later 19"));
    assert_eq!(slow_downs(&stack, flooder).await?, 2);
    assert_eq!(throttled(&stack, flooder).await?, 21 + 2);

    cancel.cancel();
    worker.wait().await?;
    Ok(())
}

fn group_update(update_id: i64, chat_id: i64, user_id: i64, text: &str) -> serde_json::Value {
    json!({
        "update_id": update_id,
        "message": {
            "message_id": update_id,
            "date": 1_764_133_380,
            "chat": {"id": chat_id, "type": "supergroup", "title": "Flood group"},
            "from": {"id": user_id, "is_bot": false, "first_name": "Flo"},
            "text": text,
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flood_budget_is_per_user_across_chats_and_workers() -> anyhow::Result<()> {
    let stack = Stack::start_with(Services::IngressOnly).await?;
    let user = 8101;
    // A group of the same user whose updates go to another partition, owned by another worker.
    let group = (1..)
        .map(|i| -1_001_800_000_000 - i)
        .find(|&g| partition_of(g, DEFAULT_PARTITIONS) != partition_of(user, DEFAULT_PARTITIONS))
        .expect("a group on another partition");
    let mut workers = Vec::new();
    for chat in [user, group] {
        let mut config = stack.worker_config();
        config.fixed_partitions = Some(vec![partition_of(chat, DEFAULT_PARTITIONS)]);
        config.flood_limit = BUDGET;
        config.flood_window = LONG_WINDOW;
        workers.push(stack.spawn_worker(config).await?);
    }

    // /start and 20 notes in each chat, both chats at once.
    let post_chat = |chat: i64, first_id: i64| {
        let stack = &stack;
        async move {
            for n in 0..21 {
                let text = if n == 0 {
                    "/start".to_owned()
                } else {
                    format!("note {n} in {chat}")
                };
                let update = if chat == user {
                    text_update(first_id + n, chat, &text)
                } else {
                    group_update(first_id + n, chat, user, &text)
                };
                let status = stack.post_webhook(update.to_string(), Some(SECRET)).await?;
                anyhow::ensure!(status == 200, "webhook answered {status}");
            }
            anyhow::Ok(())
        }
    };
    tokio::try_join!(post_chat(user, 960_000), post_chat(group, 970_000))?;
    wait_handled(&stack, user, 21).await?;
    wait_handled(&stack, group, 21).await?;

    let applied: i64 =
        sqlx::query_scalar("SELECT count(*) FROM processed_updates WHERE outcome = 'applied'")
            .fetch_one(&stack.db)
            .await?;
    assert_eq!(
        applied,
        i64::from(BUDGET),
        "one budget for the user, not one per chat"
    );
    assert_eq!(
        throttled(&stack, user).await? + throttled(&stack, group).await?,
        42 - i64::from(BUDGET)
    );
    assert_eq!(
        slow_downs(&stack, user).await? + slow_downs(&stack, group).await?,
        1,
        "one slow-down reply for the user in the window"
    );
    let notes: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE user_id = $1")
        .bind(user)
        .fetch_one(&stack.db)
        .await?;
    assert!(notes < i64::from(BUDGET), "{notes} notes stored");
    // Each worker handled its own chat: the budget was shared through the database.
    for (worker, _) in &workers {
        assert_eq!(worker.stats().applied.get(), 21);
    }
    for (worker, cancel) in workers {
        cancel.cancel();
        worker.wait().await?;
    }
    Ok(())
}
