//! The quiz bot played through the whole pipeline (webhook → worker → outbox → sender →
//! sandbox): every kind of call the sender makes, as a bot asks for them — a chat action, a
//! message with inline buttons and a key, a press answered (`answerCallbackQuery`) and the
//! question edited by key into the next, the final score, a delete by key on `/stop` — with
//! Telegram's limits kept and nothing parked.

use std::time::Duration;

use courier_tests::{eventually, Services, Stack};
use serde_json::Value;

const DEADLINE: Duration = Duration::from_secs(30);

/// The chat's messages as the sandbox shows them (JSON, with keyboards).
async fn messages(stack: &Stack, chat: i64) -> anyhow::Result<Vec<Value>> {
    Ok(stack
        .http
        .get(format!(
            "{}/sandbox/chats/{chat}/messages",
            stack.sandbox_url()
        ))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

/// The bot's latest message with inline buttons: its id, text and first button's data.
fn question(messages: &[Value]) -> Option<(i64, String, String)> {
    let m = messages
        .iter()
        .rev()
        .find(|m| m["from_bot"] == true && m.get("reply_markup").is_some())?;
    let data = m["reply_markup"]["inline_keyboard"][0][0]["callback_data"].as_str()?;
    Some((
        m["message_id"].as_i64()?,
        m["text"].as_str()?.to_owned(),
        data.to_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiz_is_played_to_its_score_and_stopped_through_every_kind_of_call() -> anyhow::Result<()>
{
    let stack = Stack::start_bot(Services::All, courier_worker::BotKind::Quiz).await?;
    let chat = 741_001;
    stack.say(chat, "Ada", "/quiz").await?;
    let (mut id, mut text, mut data) = eventually("the first question", DEADLINE, || async {
        Ok(question(&messages(&stack, chat).await?))
    })
    .await?;
    assert!(text.contains("Question 1 of"), "{text}");
    let first = id;
    let mut presses = Vec::new();
    // Each press: answered, and the same message edited into the next question or the score.
    loop {
        let query = stack.press(chat, chat, id, &data).await?;
        presses.push(query.clone());
        let answered = format!("{}/sandbox/callbacks/{query}", stack.sandbox_url());
        eventually("the press answered", DEADLINE, || async {
            let c: Value = stack.http.get(&answered).send().await?.json().await?;
            Ok((!c["answer"].is_null()).then_some(()))
        })
        .await?;
        let before = text.clone();
        let after = eventually("the question edited", DEADLINE, || async {
            let all = messages(&stack, chat).await?;
            let m = all.iter().find(|m| m["message_id"] == id).cloned();
            Ok(m.filter(|m| m["text"].as_str() != Some(before.as_str())))
        })
        .await?;
        assert!(after["edit_date"].is_i64(), "{after}");
        if after.get("reply_markup").is_none() {
            text = after["text"].as_str().unwrap_or_default().to_owned();
            break;
        }
        (id, text, data) = question(&messages(&stack, chat).await?).expect("a question");
        assert_eq!(id, first, "every question is the same message, edited");
        assert!(presses.len() < 20, "the quiz never ends");
    }
    assert!(text.contains("Quiz over!"), "{text}");

    // A new round, then /stop: the question (named by its key) is deleted.
    stack.say(chat, "Ada", "/quiz").await?;
    let (second, _, _) = eventually("a new question", DEADLINE, || async {
        Ok(question(&messages(&stack, chat).await?).filter(|q| q.0 != first))
    })
    .await?;
    stack.say(chat, "Ada", "/stop").await?;
    eventually("the question deleted", DEADLINE, || async {
        let all = messages(&stack, chat).await?;
        Ok(all.iter().all(|m| m["message_id"] != second).then_some(()))
    })
    .await?;

    let calls: Vec<Value> = stack
        .http
        .get(format!("{}/sandbox/calls", stack.sandbox_url()))
        .send()
        .await?
        .json()
        .await?;
    let ok = |method: &str| {
        calls
            .iter()
            .filter(|c| c["method"] == method && c["status"] == 200)
            .count()
    };
    assert_eq!(
        ok("answerCallbackQuery"),
        presses.len(),
        "every press answered once"
    );
    assert_eq!(
        ok("editMessageText"),
        presses.len(),
        "every press edits once"
    );
    assert_eq!(ok("deleteMessage"), 1);
    assert!(ok("sendChatAction") >= 1, "typing… before a question");
    assert!(
        calls.iter().all(|c| c["status"] == 200),
        "no call refused: {calls:?}"
    );
    let stats = stack.sandbox_stats().await?;
    assert_eq!(stats["responses_429"], 0, "{stats}");
    let sender = stack.sender_stats();
    assert_eq!(
        sender
            .dead_lettered
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    Ok(())
}
