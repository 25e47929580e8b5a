//! The quiz bot's conversation through the whole pipeline (`COURIER_BOT=quiz`): inline
//! buttons pressed in the sandbox, each press answered and the question message edited into
//! the next one, the result in the bot's own table, `/score` formatted, `/stop` deleting the
//! question message by the key the bot gave it — every kind of call once, none refused,
//! nothing parked, Telegram's limits kept — on the same ingress, worker core and sender as the
//! notes bot.

use std::time::Duration;

use anyhow::{Context as _, Result};
use courier_quiz::questions::{Question, BANK};
use courier_tests::{eventually, Line, Services, Stack};
use courier_worker::BotKind;
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(30);

/// The bot's message `message_id` once `ready` holds for it.
async fn message_when(
    stack: &Stack,
    chat: i64,
    message_id: i64,
    what: &str,
    ready: impl Fn(&Line) -> bool,
) -> Result<Line> {
    eventually(what, DEADLINE, || async {
        let t = stack.transcript(chat).await?;
        Ok(t.into_iter()
            .find(|l| l.message_id == message_id && ready(l)))
    })
    .await
}

/// The question the message asks (its last line is the question's text).
fn asked(line: &Line) -> Result<&'static Question> {
    let text = line.text.lines().last().unwrap_or_default();
    BANK.iter()
        .find(|q| q.text == text)
        .with_context(|| format!("no question of the bank in {:?}", line.text))
}

/// The callback data of the button labelled `label`.
fn button(line: &Line, label: &str) -> Result<String> {
    let rows = line.reply_markup.as_ref().context("a keyboard")?["inline_keyboard"]
        .as_array()
        .context("rows")?;
    rows.iter()
        .flat_map(|r| r.as_array().into_iter().flatten())
        .find(|b| b["text"] == label)
        .and_then(|b| b["callback_data"].as_str())
        .map(str::to_owned)
        .with_context(|| format!("no button {label:?} in {:?}", line.reply_markup))
}

/// The bot's answer to a callback query, once it answered.
async fn answer_of(stack: &Stack, query: &str) -> Result<Value> {
    let url = format!("{}/sandbox/callbacks/{query}", stack.sandbox_url());
    eventually("the press answered", DEADLINE, || async {
        let v: Value = stack.http.get(&url).send().await?.json().await?;
        Ok((!v["answer"].is_null()).then(|| v["answer"].clone()))
    })
    .await
}

/// The sandbox's log of calls to this chat: `(method, action or text)`.
async fn calls(stack: &Stack, chat: i64) -> Result<Vec<(String, Value)>> {
    let url = format!("{}/sandbox/calls", stack.sandbox_url());
    let all: Vec<Value> = stack.http.get(&url).send().await?.json().await?;
    Ok(all
        .into_iter()
        .filter(|c| c["chat_id"] == chat && c["status"] == 200)
        .map(|c| (c["method"].as_str().unwrap_or_default().to_owned(), c))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiz_is_played_on_buttons_edited_in_place_scored_and_stopped() -> Result<()> {
    let stack = Stack::start_bot(Services::All, BotKind::Quiz).await?;
    let (chat, name) = (3003, "Quinn <&>");

    stack.say(chat, name, "/start").await?;
    let r = stack.bot_replies(chat, 1).await?;
    assert!(r[0].starts_with("Hi, Quinn <&>!"), "escaped name: {r:?}");

    // /quiz: "typing…", then question 1 with its buttons.
    stack.say(chat, name, "/quiz").await?;
    stack.bot_replies(chat, 2).await?;
    let question = stack
        .transcript(chat)
        .await?
        .into_iter()
        .rfind(|l| l.from_bot)
        .context("the question")?;
    let id = question.message_id;
    assert!(
        question.text.contains("Question 1 of 5 · score 0"),
        "{question:?}"
    );
    assert!(
        question.entities.iter().any(|e| e["type"] == "bold"),
        "HTML parsed into entities: {question:?}"
    );
    let typing = calls(&stack, chat).await?;
    let typed = typing
        .iter()
        .position(|(m, c)| m == "sendChatAction" && c["action"] == "typing");
    let sent = typing
        .iter()
        .position(|(m, c)| m == "sendMessage" && c["message_id"] == id);
    assert!(
        typed.is_some() && typed < sent,
        "typing… before the question: {typing:?}"
    );

    // Three right answers, then two wrong ones: each press answered, the message edited.
    let mut line = question;
    for n in 0..5 {
        let q = asked(&line)?;
        let right = n < 3;
        let label = if right {
            q.right_option()
        } else {
            q.options[(q.answer + 1) % q.options.len()]
        };
        let query = stack.press(chat, chat, id, &button(&line, label)?).await?;
        let answer = answer_of(&stack, &query).await?;
        let toast = if right {
            "✅ Correct!".to_owned()
        } else {
            format!("❌ It was {}.", q.right_option())
        };
        assert_eq!(answer["text"], toast.as_str(), "{answer}");
        line = if n < 4 {
            let next = format!("Question {} of 5 · score {}", n + 2, (n + 1).min(3));
            message_when(&stack, chat, id, &next, |l| l.text.contains(&next)).await?
        } else {
            message_when(&stack, chat, id, "the final score", |l| {
                l.text.contains("Quiz over! You scored 3 of 5.")
            })
            .await?
        };
    }
    assert!(
        line.reply_markup.is_none(),
        "no buttons after the end: {line:?}"
    );
    // One message, edited in place: the transcript has no other question.
    let bot_lines: Vec<Line> = stack
        .transcript(chat)
        .await?
        .into_iter()
        .filter(|l| l.from_bot)
        .collect();
    assert_eq!(
        bot_lines.len(),
        2,
        "welcome and the one question message: {bot_lines:#?}"
    );

    // The result is in the bot's own table, once.
    let results: Vec<(i32, i32)> =
        sqlx::query_as("SELECT score, total FROM quiz_results WHERE chat_id = $1")
            .bind(chat)
            .fetch_all(&stack.db)
            .await?;
    assert_eq!(results, vec![(3, 5)]);

    // /score: the result, its time in italics.
    stack.say(chat, name, "/score").await?;
    let r = stack.bot_replies(chat, 3).await?;
    assert!(
        r[2].contains("Last: 3 of 5") && r[2].contains("Best: 3 of 5"),
        "{r:?}"
    );
    let score = stack.transcript(chat).await?.pop().context("the score")?;
    assert_eq!(
        score
            .entities
            .iter()
            .filter(|e| e["type"] == "italic")
            .count(),
        2,
        "{score:?}"
    );

    // A new quiz, then /stop: the question message is deleted by its key.
    stack.say(chat, name, "/quiz").await?;
    let r = stack.bot_replies(chat, 4).await?;
    assert!(r[3].contains("Question 1 of 5"), "{r:?}");
    let second = stack.transcript(chat).await?.pop().context("question")?;
    stack.say(chat, name, "/stop").await?;
    eventually(
        "the question deleted and the stop confirmed",
        DEADLINE,
        || async {
            let t = stack.transcript(chat).await?;
            let gone = t.iter().all(|l| l.message_id != second.message_id);
            let confirmed = t
                .last()
                .is_some_and(|l| l.from_bot && l.text.starts_with("Quiz stopped after 0 of 5"));
            Ok((gone && confirmed).then_some(()))
        },
    )
    .await?;
    let log = calls(&stack, chat).await?;
    assert!(
        log.iter()
            .any(|(m, c)| m == "deleteMessage" && c["message_id"] == second.message_id),
        "{log:?}"
    );
    // Each call once, none refused, nothing parked, Telegram's limits kept.
    let count = |method: &str| log.iter().filter(|(m, _)| m == method).count();
    assert_eq!(
        count("answerCallbackQuery"),
        5,
        "every press answered once: {log:?}"
    );
    assert_eq!(
        count("editMessageText"),
        5,
        "every press edits once: {log:?}"
    );
    assert_eq!(count("deleteMessage"), 1, "{log:?}");
    assert_eq!(
        count("sendChatAction"),
        2,
        "typing… before each quiz: {log:?}"
    );
    let all: Vec<Value> = stack
        .http
        .get(format!("{}/sandbox/calls", stack.sandbox_url()))
        .send()
        .await?
        .json()
        .await?;
    assert!(
        all.iter().all(|c| c["status"] == 200),
        "no call refused: {all:?}"
    );
    let stats = stack.sandbox_stats().await?;
    assert_eq!(stats["responses_429"], 0, "{stats}");
    let parked = stack
        .sender_stats()
        .dead_lettered
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(parked, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_that_switches_bots_starts_each_chat_over_and_loses_nothing() -> Result<()> {
    let mut stack = Stack::start_bot(Services::All, BotKind::Notes).await?;
    let chat = 3100;
    stack.say(chat, "Ada", "/start").await?;
    stack
        .say(chat, "Ada", "a note kept across the switch")
        .await?;
    stack.bot_replies(chat, 2).await?;

    // The same bot id now runs the quiz: the notes bot's state means nothing to it.
    stack.switch_bot(BotKind::Quiz).await?;
    stack.say(chat, "Ada", "/quiz").await?;
    let r = stack.bot_replies(chat, 3).await?;
    assert!(r[2].contains("Question 1 of 5"), "{r:?}");

    // And back: the quiz's state means nothing to the notes bot, which waits for /start.
    stack.switch_bot(BotKind::Notes).await?;
    stack.say(chat, "Ada", "hello again").await?;
    let r = stack.bot_replies(chat, 4).await?;
    assert!(r[3].contains("/start"), "the notes bot starts over: {r:?}");
    assert_eq!(
        stack.notes(chat).await?,
        vec!["a note kept across the switch"]
    );
    let dead: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM processed_updates WHERE chat_id = $1 AND outcome <> 'applied'",
    )
    .bind(chat)
    .fetch_one(&stack.db)
    .await?;
    assert_eq!(dead, 0, "no update dead-lettered");
    Ok(())
}
