//! A step's effects as the worker applies them: the bot's own writes go to [`Bot::write`],
//! Bot API calls become outbox rows ([`Outbox`]), platform effects are statements on the
//! platform's tables (`blocked_chats`, `audience`).
//!
//! [`Bot::write`]: courier_bot_api::Bot::write

use courier_bot_api::{ButtonAction, Effect, InlineKeyboard, MessageRef, Outgoing, ParseMode};
use courier_proto::{v1, Message as _};

/// The outbox columns of a step's calls, in order: one entry per call.
#[derive(Debug, Default)]
pub(crate) struct Outbox {
    /// The chat of each call.
    pub chats: Vec<i64>,
    /// Its text (`sendMessage`, `editMessageText`; empty otherwise).
    pub texts: Vec<String>,
    /// Its `parse_mode` (empty: none).
    pub parse_modes: Vec<String>,
    /// The encoded `OutboundMessage` holding the action, for anything but a plain
    /// `sendMessage` of text and parse mode (`None`).
    pub actions: Vec<Option<Vec<u8>>>,
}

impl Outbox {
    /// Adds one call.
    pub fn push(&mut self, out: &Outgoing) {
        let (text, parse_mode, action) = columns(out);
        self.chats.push(out.chat_id());
        self.texts.push(text);
        self.parse_modes.push(parse_mode);
        self.actions.push(action);
    }
}

/// A platform effect, applied by [`apply_platform`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Platform {
    /// `blocked_chats`.
    Blocked { chat_id: i64, blocked: bool },
    /// `audience`.
    Subscribed { chat_id: i64, subscribed: bool },
}

/// A step's effects, sorted out: the bot's writes, the calls, the platform effects.
pub(crate) struct Sorted<W> {
    pub writes: Vec<W>,
    pub outbox: Outbox,
    pub platform: Vec<Platform>,
}

/// Sorts a step's effects, keeping the order within each kind.
pub(crate) fn sort<W>(effects: Vec<Effect<W>>) -> Sorted<W> {
    let mut sorted = Sorted {
        writes: Vec::new(),
        outbox: Outbox::default(),
        platform: Vec::new(),
    };
    for effect in effects {
        match effect {
            Effect::Write(w) => sorted.writes.push(w),
            Effect::Send(out) => sorted.outbox.push(&out),
            Effect::SetBlocked { chat_id, blocked } => {
                sorted.platform.push(Platform::Blocked { chat_id, blocked })
            }
            Effect::Subscribe {
                chat_id,
                subscribed,
            } => sorted.platform.push(Platform::Subscribed {
                chat_id,
                subscribed,
            }),
        }
    }
    sorted
}

/// Applies platform effects on the update's transaction, one statement each (they are rare).
pub(crate) async fn apply_platform(
    conn: &mut sqlx::PgConnection,
    bot_id: i64,
    effects: &[Platform],
) -> Result<(), sqlx::Error> {
    for effect in effects {
        let (sql, chat_id) = match *effect {
            // The sender skips blocked chats, and broadcasts leave them out.
            Platform::Blocked {
                chat_id,
                blocked: true,
            } => (
                "INSERT INTO blocked_chats (bot_id, chat_id, reason) \
                 VALUES ($1, $2, 'my_chat_member: kicked') ON CONFLICT DO NOTHING",
                chat_id,
            ),
            Platform::Blocked {
                chat_id,
                blocked: false,
            } => (
                "DELETE FROM blocked_chats WHERE bot_id = $1 AND chat_id = $2",
                chat_id,
            ),
            Platform::Subscribed {
                chat_id,
                subscribed: true,
            } => (
                "INSERT INTO audience (bot_id, chat_id) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                chat_id,
            ),
            Platform::Subscribed {
                chat_id,
                subscribed: false,
            } => (
                "DELETE FROM audience WHERE bot_id = $1 AND chat_id = $2",
                chat_id,
            ),
        };
        sqlx::query(sql)
            .bind(bot_id)
            .bind(chat_id)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// `(text, parse_mode, action)` of a call's outbox row.
fn columns(out: &Outgoing) -> (String, String, Option<Vec<u8>>) {
    use v1::outbound_message::Action;
    let mode = |m: Option<ParseMode>| m.map_or_else(String::new, |m| m.as_str().to_owned());
    let action = match out {
        Outgoing::Send(m) => {
            if m.keyboard.is_none() && m.reply_to.is_none() && m.key.is_none() {
                // The common case keeps the columns it always had: no encoding.
                return (m.text.clone(), mode(m.parse_mode), None);
            }
            Action::Send(v1::SendMessage {
                text: m.text.clone(),
                parse_mode: mode(m.parse_mode),
                reply_markup: m.keyboard.as_ref().map(keyboard),
                reply_to: m.reply_to.as_ref().map(message_ref),
                key: m.key.clone().unwrap_or_default(),
            })
        }
        Outgoing::Edit(e) => Action::EditText(v1::EditMessageText {
            message: Some(message_ref(&e.message)),
            text: e.text.clone(),
            parse_mode: mode(e.parse_mode),
            reply_markup: e.keyboard.as_ref().map(keyboard),
        }),
        Outgoing::AnswerCallback(a) => Action::AnswerCallback(v1::AnswerCallbackQuery {
            callback_query_id: a.callback_query_id.clone(),
            text: a.text.clone().unwrap_or_default(),
            show_alert: a.show_alert,
        }),
        Outgoing::ChatAction { action, .. } => Action::ChatAction(v1::SendChatAction {
            action: action.as_str().to_owned(),
        }),
        Outgoing::Delete { message, .. } => Action::Delete(v1::DeleteMessage {
            message: Some(message_ref(message)),
        }),
    };
    let text = match out {
        Outgoing::Send(m) => m.text.clone(),
        Outgoing::Edit(e) => e.text.clone(),
        _ => String::new(),
    };
    let parse_mode = match out {
        Outgoing::Send(m) => mode(m.parse_mode),
        Outgoing::Edit(e) => mode(e.parse_mode),
        _ => String::new(),
    };
    let envelope = v1::OutboundMessage {
        action: Some(action),
        ..Default::default()
    };
    (text, parse_mode, Some(envelope.encode_to_vec()))
}

fn message_ref(r: &MessageRef) -> v1::MessageRef {
    use v1::message_ref::Target;
    v1::MessageRef {
        target: Some(match r {
            MessageRef::Id(id) => Target::MessageId(*id),
            MessageRef::Key(key) => Target::Key(key.clone()),
        }),
    }
}

fn keyboard(k: &InlineKeyboard) -> v1::InlineKeyboardMarkup {
    use v1::inline_keyboard_button::Kind;
    v1::InlineKeyboardMarkup {
        rows: k
            .rows
            .iter()
            .map(|row| v1::InlineKeyboardRow {
                buttons: row
                    .iter()
                    .map(|b| v1::InlineKeyboardButton {
                        text: b.text.clone(),
                        kind: Some(match &b.action {
                            ButtonAction::Callback(data) => Kind::CallbackData(data.clone()),
                            ButtonAction::Url(url) => Kind::Url(url.clone()),
                        }),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// The `OutboundMessage` a published row becomes: `header` (ids and times) with the row's
/// action — its stored bytes appended as they are (protobuf merges concatenated messages, so
/// the result is the header with the action set), or a `sendMessage` of its text. The bytes
/// are not decoded here: an action this worker does not know (written by a newer one during a
/// rolling upgrade) reaches the sender intact, which makes it or parks it, and the chat's
/// later rows are not held up.
pub(crate) fn envelope(
    mut header: v1::OutboundMessage,
    text: &str,
    parse_mode: &str,
    action: Option<&[u8]>,
) -> Vec<u8> {
    match action {
        Some(bytes) => {
            header.action = None;
            let mut out = header.encode_to_vec();
            out.extend_from_slice(bytes);
            out
        }
        None => {
            header.action = Some(v1::outbound_message::Action::Send(v1::SendMessage {
                text: text.to_owned(),
                parse_mode: parse_mode.to_owned(),
                ..Default::default()
            }));
            header.encode_to_vec()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use courier_bot_api::{AnswerCallback, Button, ChatAction, EditText, SendText};

    #[test]
    fn an_action_this_worker_does_not_know_reaches_the_sender_intact() {
        // A newer worker's action: field 99 of OutboundMessage (length-delimited: tag
        // 99 << 3 | 2 = 794, varint 0x9A 0x06), unknown here.
        let mut newer = vec![0x9A, 0x06, 6];
        newer.extend_from_slice(b"future");
        let header = v1::OutboundMessage {
            outbox_id: 5,
            ..Default::default()
        };
        let bytes = envelope(header.clone(), "", "", Some(&newer));
        assert!(bytes.ends_with(&newer), "passed on as stored");
        let read = v1::OutboundMessage::decode(&bytes[..]).unwrap();
        assert_eq!(
            (read.outbox_id, read.action),
            (5, None),
            "unknown to this reader"
        );
    }

    #[test]
    fn a_plain_text_keeps_its_columns_and_everything_else_is_encoded_whole() {
        let (text, mode, action) = columns(&Outgoing::html(7, "<b>hi</b>"));
        assert_eq!(
            (text.as_str(), mode.as_str(), action),
            ("<b>hi</b>", "HTML", None)
        );
        let header = v1::OutboundMessage {
            outbox_id: 41,
            chat_id: 7,
            ..Default::default()
        };
        let published =
            v1::OutboundMessage::decode(&envelope(header.clone(), &text, &mode, None)[..]).unwrap();
        assert_eq!(published.outbox_id, 41);
        assert!(
            matches!(published.action, Some(v1::outbound_message::Action::Send(ref s))
            if s.text == "<b>hi</b>" && s.parse_mode == "HTML")
        );

        let calls = [
            Outgoing::Send(SendText {
                keyboard: Some(InlineKeyboard {
                    rows: vec![vec![
                        Button::callback("A", "q:1:a"),
                        Button::url("?", "https://t.me"),
                    ]],
                }),
                key: Some("question".into()),
                reply_to: Some(MessageRef::Id(41)),
                ..SendText::plain(7, "Q1")
            }),
            Outgoing::Edit(EditText {
                chat_id: 7,
                message: MessageRef::Key("question".into()),
                text: "Q2".into(),
                parse_mode: Some(ParseMode::MarkdownV2),
                keyboard: None,
            }),
            Outgoing::AnswerCallback(AnswerCallback {
                chat_id: 7,
                callback_query_id: "99".into(),
                text: Some("Correct".into()),
                show_alert: false,
            }),
            Outgoing::ChatAction {
                chat_id: 7,
                action: ChatAction::Typing,
            },
            Outgoing::Delete {
                chat_id: 7,
                message: MessageRef::Key("question".into()),
            },
        ];
        let mut outbox = Outbox::default();
        for call in &calls {
            outbox.push(call);
        }
        assert_eq!(outbox.chats, vec![7; 5]);
        assert_eq!(outbox.texts, vec!["Q1", "Q2", "", "", ""]);
        assert_eq!(outbox.parse_modes, vec!["", "MarkdownV2", "", "", ""]);
        let decoded: Vec<_> = outbox
            .actions
            .iter()
            .zip(&outbox.texts)
            .map(|(a, t)| {
                let bytes = envelope(header.clone(), t, "", a.as_deref());
                let published = v1::OutboundMessage::decode(&bytes[..]).unwrap();
                assert_eq!(
                    (published.outbox_id, published.chat_id),
                    (41, 7),
                    "the header kept"
                );
                published.action.unwrap()
            })
            .collect();
        use v1::outbound_message::Action as A;
        match &decoded[0] {
            A::Send(s) => {
                assert_eq!(s.key, "question");
                let rows = &s.reply_markup.as_ref().unwrap().rows;
                assert_eq!(rows[0].buttons.len(), 2);
                assert_eq!(
                    rows[0].buttons[0].kind,
                    Some(v1::inline_keyboard_button::Kind::CallbackData(
                        "q:1:a".into()
                    ))
                );
                assert_eq!(
                    s.reply_to.as_ref().unwrap().target,
                    Some(v1::message_ref::Target::MessageId(41))
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&decoded[1], A::EditText(e) if e.text == "Q2"
            && e.message.as_ref().unwrap().target == Some(v1::message_ref::Target::Key("question".into()))));
        assert!(
            matches!(&decoded[2], A::AnswerCallback(a) if a.callback_query_id == "99" && a.text == "Correct")
        );
        assert!(matches!(&decoded[3], A::ChatAction(c) if c.action == "typing"));
        assert!(matches!(&decoded[4], A::Delete(_)));
    }
}
