//! The sender carries every action of an `OutboundMessage` to the Bot API (the sandbox):
//! keyboards, replies, edits and deletes by key or by Telegram's id, callback answers, chat
//! actions; a key never sent is parked with its reason while its chat goes on; what
//! Telegram answers "nothing to do" counts as done; a message delivered twice is called once;
//! the sandbox, counting Telegram's limits, never refuses a call.
//!
//! Fed directly through [`SenderRig`] (`OutboundMessage`s published to
//! `courier.outbound.<bot>.<chat>`), no ingress, no worker.

use std::time::Duration;

use courier_proto::v1::{
    inline_keyboard_button::Kind, message_ref::Target, outbound_message::Action,
    AnswerCallbackQuery, DeleteMessage, EditMessageText, InlineKeyboardButton,
    InlineKeyboardMarkup, InlineKeyboardRow, MessageRef, SendChatAction, SendMessage,
};
use courier_tests::eventually;
use courier_tests::metrics::scrape;
use courier_tests::sender_support::{Call, SenderRig};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(60);

fn by_key(key: &str) -> Option<MessageRef> {
    Some(MessageRef {
        target: Some(Target::Key(key.into())),
    })
}

fn by_id(id: i64) -> Option<MessageRef> {
    Some(MessageRef {
        target: Some(Target::MessageId(id)),
    })
}

/// One row of callback buttons `(label, data)`.
fn buttons(row: &[(&str, &str)]) -> Option<InlineKeyboardMarkup> {
    Some(InlineKeyboardMarkup {
        rows: vec![InlineKeyboardRow {
            buttons: row
                .iter()
                .map(|(text, data)| InlineKeyboardButton {
                    text: (*text).into(),
                    kind: Some(Kind::CallbackData((*data).into())),
                })
                .collect(),
        }],
    })
}

/// The same keyboard as the Bot API shows it.
fn buttons_json(row: &[(&str, &str)]) -> Value {
    let row: Vec<Value> = row
        .iter()
        .map(|(text, data)| json!({"text": text, "callback_data": data}))
        .collect();
    json!({ "inline_keyboard": [row] })
}

fn send(text: &str) -> SendMessage {
    SendMessage {
        text: text.into(),
        ..Default::default()
    }
}

fn edit(message: Option<MessageRef>, text: &str) -> Action {
    Action::EditText(EditMessageText {
        message,
        text: text.into(),
        ..Default::default()
    })
}

/// A `sent_messages` row: outbox id, part, key, Telegram's message id, outcome.
type LedgerRow = (i64, i32, Option<String>, Option<i64>, String);

/// The calls the sandbox accepted, as (method, message id).
fn accepted(calls: &[Call]) -> Vec<(&str, Option<i64>)> {
    calls
        .iter()
        .filter(|c| c.status == 200)
        .map(|c| (c.method.as_str(), c.message_id))
        .collect()
}

async fn no_429(rig: &SenderRig) -> anyhow::Result<()> {
    let stats = rig.stats().await?;
    assert_eq!(
        stats["responses_429"], 0,
        "the sandbox refused calls: {stats}"
    );
    Ok(())
}

/// Waits until the sender acknowledged everything published.
async fn all_acked(rig: &SenderRig) -> anyhow::Result<()> {
    eventually("every message acknowledged", DEADLINE, || async {
        Ok((rig.unacked().await? == 0).then_some(()))
    })
    .await
}

/// A keyboard arrives with its message; a reply (by Telegram's id, by key) is a reply; a long
/// plain text is split with the keyboard on its last part and the reply on its first; edits
/// by key and by id change the right message's text and keyboard; a delete by key removes
/// the message the key names (the last part); a chat action is made; the ledger keeps each
/// key on the row of its message's last part.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyboards_replies_edits_and_deletes_by_key_or_id_reach_the_chat() -> anyhow::Result<()> {
    let rig = SenderRig::start().await?;
    let chat = 731_001;
    rig.create_chats([chat]).await?; // the user's "hi" is message 1
    rig.clear_calls().await?;
    let sender = rig.start_sender().await?;

    let long: String = (0..1000).map(|i| format!("{i:04} ")).collect();
    rig.publish_action(
        chat,
        1,
        Action::Send(SendMessage {
            reply_markup: buttons(&[("Yes", "y"), ("No", "n")]),
            reply_to: by_id(1),
            key: "menu".into(),
            ..send("Pick one")
        }),
    )
    .await?;
    rig.publish_action(
        chat,
        2,
        Action::Send(SendMessage {
            reply_markup: buttons(&[("More", "more")]),
            reply_to: by_key("menu"),
            key: "long".into(),
            ..send(&long)
        }),
    )
    .await?;
    rig.publish_action(
        chat,
        3,
        Action::EditText(EditMessageText {
            message: by_key("menu"),
            text: "Picked: yes".into(),
            parse_mode: String::new(),
            reply_markup: buttons(&[("Undo", "u")]),
        }),
    )
    .await?;
    rig.publish_action(
        chat,
        4,
        Action::ChatAction(SendChatAction {
            action: "typing".into(),
        }),
    )
    .await?;
    all_acked(&rig).await?;

    let t = rig.transcript(chat).await?;
    assert_eq!(t.len(), 4, "{t:#?}");
    // The menu: edited by key, with the new keyboard, still a reply to the user's message.
    assert_eq!(t[1]["message_id"], 2);
    assert_eq!(t[1]["text"], "Picked: yes");
    assert_eq!(t[1]["reply_markup"], buttons_json(&[("Undo", "u")]));
    assert_eq!(t[1]["reply_to_message_id"], 1);
    assert!(t[1]["edit_date"].is_i64(), "{}", t[1]);
    // The long text: two parts, the reply (to the menu, by key) on the first, the keyboard on
    // the last. (The sandbox trims each part's trailing space, as Telegram does.)
    assert_eq!(t[2]["reply_to_message_id"], 2);
    assert!(t[2].get("reply_markup").is_none(), "{}", t[2]);
    assert!(t[3].get("reply_to_message_id").is_none(), "{}", t[3]);
    assert_eq!(t[3]["reply_markup"], buttons_json(&[("More", "more")]));
    assert_eq!(
        format!(
            "{} {}",
            t[2]["text"].as_str().unwrap(),
            t[3]["text"].as_str().unwrap()
        ),
        long.trim_end()
    );
    let rows: Vec<LedgerRow> = sqlx::query_as(
        "SELECT outbox_id, part, msg_key, telegram_message_id, outcome FROM sent_messages
         ORDER BY outbox_id, part",
    )
    .fetch_all(&rig.db)
    .await?;
    let sent = |outbox, part, key: Option<&str>, id: Option<i64>| {
        (outbox, part, key.map(str::to_owned), id, "sent".to_owned())
    };
    assert_eq!(
        rows,
        vec![
            sent(1, 0, Some("menu"), Some(2)),
            sent(2, 0, None, Some(3)),
            sent(2, 1, Some("long"), Some(4)),
            sent(3, 0, None, Some(2)),
            sent(4, 0, None, None),
        ]
    );

    // By Telegram's id: the long text's first part; by key: the message "long" names (its
    // last part) is deleted.
    rig.publish_action(chat, 5, edit(by_id(3), "First part, edited"))
        .await?;
    rig.publish_action(
        chat,
        6,
        Action::Delete(DeleteMessage {
            message: by_key("long"),
        }),
    )
    .await?;
    all_acked(&rig).await?;
    let t = rig.transcript(chat).await?;
    let ids: Vec<i64> = t
        .iter()
        .map(|m| m["message_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![1, 2, 3], "message 4 deleted");
    assert_eq!(t[2]["text"], "First part, edited");

    let calls = rig.calls().await?;
    assert_eq!(
        accepted(&calls),
        vec![
            ("sendMessage", Some(2)),
            ("sendMessage", Some(3)),
            ("sendMessage", Some(4)),
            ("editMessageText", Some(2)),
            ("sendChatAction", None),
            ("editMessageText", Some(3)),
            ("deleteMessage", Some(4)),
        ],
        "each call once, in the chat's order"
    );
    assert_eq!(calls.len(), 7, "no call refused: {calls:?}");
    assert_eq!(calls[4].action.as_deref(), Some("typing"));
    no_429(&rig).await?;
    assert_eq!(rig.dead_letters().await?, 0);
    sender.stop().await
}

/// A button press is answered with its text, in the chat's order (after the message before
/// it, before the edit after it), and the answer takes the bot's budget only: the chat's
/// limit is waited for by the two calls that write to the chat, not by the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_button_press_is_answered_with_its_text_taking_only_the_bots_budget() -> anyhow::Result<()>
{
    let rig = SenderRig::start().await?;
    let chat = 732_001;
    rig.create_chats([chat]).await?;
    rig.clear_calls().await?;
    let sender = rig.start_sender().await?;
    rig.publish_action(
        chat,
        1,
        Action::Send(SendMessage {
            reply_markup: buttons(&[("Go", "go")]),
            key: "ask".into(),
            ..send("Ready?")
        }),
    )
    .await?;
    all_acked(&rig).await?;
    let query = rig.press(chat, 2, "go").await?;
    rig.publish_action(
        chat,
        2,
        Action::AnswerCallback(AnswerCallbackQuery {
            callback_query_id: query.clone(),
            text: "Going".into(),
            show_alert: false,
        }),
    )
    .await?;
    rig.publish_action(chat, 3, edit(by_key("ask"), "Gone"))
        .await?;
    all_acked(&rig).await?;

    let callback = rig.callback(&query).await?;
    assert_eq!(callback["answer"]["text"], "Going", "{callback}");
    assert_eq!(callback["answer"]["show_alert"], false);
    let t = rig.transcript(chat).await?;
    assert_eq!(t[1]["text"], "Gone");
    assert!(
        t[1].get("reply_markup").is_none(),
        "an edit without keyboard removes it"
    );
    let calls = rig.calls().await?;
    assert_eq!(
        accepted(&calls),
        vec![
            ("sendMessage", Some(2)),
            ("answerCallbackQuery", Some(2)),
            ("editMessageText", Some(2)),
        ]
    );
    assert_eq!(calls[1].chat_id, chat);
    assert_eq!(calls[1].text.as_deref(), Some("Going"));
    assert_eq!(calls[1].callback_query_id.as_deref(), Some(query.as_str()));

    let m = scrape(&rig.http, sender.sender.health_addr()).await?;
    let wait = "courier_sender_limit_wait_seconds";
    assert_eq!(m.histogram_count(wait, &[("limit", "bot")])?, 3.0);
    assert_eq!(
        m.histogram_count(wait, &[("limit", "chat")])?,
        2.0,
        "the answer did not take the chat's budget"
    );
    let calls_total = |method| {
        m.counter(
            "courier_sender_calls",
            &[("method", method), ("result", "ok")],
        )
    };
    assert_eq!(calls_total("answerCallbackQuery")?, 1.0);
    assert_eq!(calls_total("editMessageText")?, 1.0);
    no_429(&rig).await?;
    sender.stop().await
}

/// A reference to a key never sent in the chat parks the message in `COURIER_DLQ` with the
/// reason, as do Telegram's refusals and what the sender cannot make a call of, and the
/// chat's next messages still go out. An edit that changes nothing and a delete of a message
/// already gone count as done (Telegram's 400 for them is what a repeated call gets).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_never_sent_is_parked_with_its_reason_and_the_chat_goes_on() -> anyhow::Result<()> {
    let rig = SenderRig::start().await?;
    let chat = 733_001;
    rig.create_chats([chat]).await?;
    rig.clear_calls().await?;
    let sender = rig.start_sender().await?;
    rig.publish_action(chat, 1, edit(by_key("ghost"), "boo"))
        .await?;
    rig.publish_action(
        chat,
        2,
        Action::Send(SendMessage {
            key: "s".into(),
            ..send("after the ghost")
        }),
    )
    .await?;
    rig.publish_action(chat, 3, edit(by_key("s"), "after the ghost"))
        .await?;
    for outbox in [4, 5] {
        rig.publish_action(
            chat,
            outbox,
            Action::Delete(DeleteMessage {
                message: by_key("s"),
            }),
        )
        .await?;
    }
    rig.publish_action(
        chat,
        6,
        Action::Send(SendMessage {
            parse_mode: "HTML".into(),
            ..send("<b>unclosed")
        }),
    )
    .await?;
    rig.publish_action(
        chat,
        7,
        Action::Send(SendMessage {
            parse_mode: "BBCode".into(),
            ..send("[b]x[/b]")
        }),
    )
    .await?;
    rig.publish_action(chat, 8, Action::Send(send("the end")))
        .await?;
    // A key sent, then a message with the same key refused: the key names the refused one,
    // so an edit by it is parked, and the older message with the key is left alone.
    rig.publish_action(
        chat,
        9,
        Action::Send(SendMessage {
            key: "k".into(),
            ..send("first k")
        }),
    )
    .await?;
    rig.publish_action(
        chat,
        10,
        Action::Send(SendMessage {
            key: "k".into(),
            parse_mode: "HTML".into(),
            ..send("<b>second k")
        }),
    )
    .await?;
    rig.publish_action(chat, 11, edit(by_key("k"), "edited k"))
        .await?;
    // Deleting what was never sent: nothing to delete, done.
    rig.publish_action(
        chat,
        12,
        Action::Delete(DeleteMessage {
            message: by_key("never"),
        }),
    )
    .await?;
    all_acked(&rig).await?;

    let letters = rig.dead_letter_messages().await?;
    let got: Vec<(i64, &str)> = letters
        .iter()
        .map(|(reason, m)| (m.outbox_id, reason.as_str()))
        .collect();
    assert_eq!(got.len(), 5, "{got:?}");
    assert_eq!(got[3].0, 10, "{got:?}");
    assert_eq!(
        got[4],
        (
            11,
            format!("no message sent with key `k` in chat {chat}").as_str()
        )
    );
    assert_eq!(
        got[0],
        (
            1,
            format!("no message sent with key `ghost` in chat {chat}").as_str()
        )
    );
    assert_eq!(got[1].0, 6);
    assert!(got[1].1.contains("can't parse entities"), "{got:?}");
    assert_eq!(got[2].0, 7);
    assert!(got[2].1.contains("unknown parse_mode `BBCode`"), "{got:?}");

    let texts: Vec<Value> = rig
        .transcript(chat)
        .await?
        .into_iter()
        .filter(|m| m["from_bot"] == true)
        .map(|m| m["text"].clone())
        .collect();
    assert_eq!(
        texts,
        vec![json!("the end"), json!("first k")],
        "the keyed message was deleted; the older message with a refused key kept its text"
    );
    let outcomes: Vec<(i64, String)> =
        sqlx::query_as("SELECT outbox_id, outcome FROM sent_messages ORDER BY outbox_id")
            .fetch_all(&rig.db)
            .await?;
    let outcomes: Vec<(i64, &str)> = outcomes.iter().map(|(o, s)| (*o, s.as_str())).collect();
    assert_eq!(
        outcomes,
        vec![
            (1, "dead_lettered"),
            (2, "sent"),
            (3, "sent"),
            (4, "sent"),
            (5, "sent"),
            (6, "dead_lettered"),
            (7, "dead_lettered"),
            (8, "sent"),
            (9, "sent"),
            (10, "dead_lettered"),
            (11, "dead_lettered"),
            (12, "sent"),
        ]
    );
    let stats = sender.sender.stats();
    assert_eq!(
        stats
            .already_done
            .load(std::sync::atomic::Ordering::Relaxed),
        3,
        "the edit to the same text, the second delete, the delete of a key never sent"
    );
    let calls = rig.calls().await?;
    let refused: Vec<(&str, u16)> = calls
        .iter()
        .filter(|c| c.status != 200)
        .map(|c| (c.method.as_str(), c.status))
        .collect();
    assert_eq!(
        refused,
        vec![
            ("editMessageText", 400),
            ("deleteMessage", 400),
            ("sendMessage", 400),
            ("sendMessage", 400),
        ],
        "not modified, not found, can't parse twice; the ghosts and BBCode made no call"
    );
    no_429(&rig).await?;
    sender.stop().await
}

/// Every action published twice (another `Nats-Msg-Id`, the same outbox id: what the relay
/// republishes after JetStream's duplicate window) reaches the Bot API once: the sent ledger
/// says the second copy is done before anything is resolved or called.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_action_delivered_twice_is_called_once() -> anyhow::Result<()> {
    let rig = SenderRig::start().await?;
    let chat = 734_001;
    rig.create_chats([chat]).await?;
    rig.clear_calls().await?;
    let sender = rig.start_sender().await?;
    let menu = Action::Send(SendMessage {
        reply_markup: buttons(&[("Tap", "tap")]),
        key: "m".into(),
        ..send("Menu")
    });
    rig.publish_action(chat, 1, menu.clone()).await?;
    rig.publish_action_as(chat, 1, menu, "copy-1").await?;
    all_acked(&rig).await?;
    let query = rig.press(chat, 2, "tap").await?;
    let actions = [
        Action::AnswerCallback(AnswerCallbackQuery {
            callback_query_id: query.clone(),
            text: "Tapped".into(),
            show_alert: true,
        }),
        Action::ChatAction(SendChatAction {
            action: "typing".into(),
        }),
        edit(by_key("m"), "Menu, edited"),
        Action::Delete(DeleteMessage {
            message: by_key("m"),
        }),
    ];
    for (i, action) in actions.iter().enumerate() {
        rig.publish_action(chat, i as i64 + 2, action.clone())
            .await?;
    }
    // The copies come after all of them: the edit's copy after the delete.
    for (i, action) in actions.iter().enumerate() {
        let outbox = i as i64 + 2;
        rig.publish_action_as(chat, outbox, action.clone(), &format!("copy-{outbox}"))
            .await?;
    }
    all_acked(&rig).await?;

    let calls = rig.calls().await?;
    let methods: Vec<(&str, u16)> = calls
        .iter()
        .map(|c| (c.method.as_str(), c.status))
        .collect();
    assert_eq!(
        methods,
        vec![
            ("sendMessage", 200),
            ("answerCallbackQuery", 200),
            ("sendChatAction", 200),
            ("editMessageText", 200),
            ("deleteMessage", 200),
        ],
        "each action called once"
    );
    let stats = sender.sender.stats();
    let load = |n: &std::sync::atomic::AtomicU64| n.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(load(&stats.duplicates_skipped), 5);
    assert_eq!(load(&stats.messages_sent), 5);
    assert_eq!(rig.callback(&query).await?["answer"]["show_alert"], true);
    assert_eq!(rig.dead_letters().await?, 0);
    no_429(&rig).await?;
    sender.stop().await
}
