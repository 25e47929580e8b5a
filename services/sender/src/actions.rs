//! What an outbound message asks for, as the Bot API calls the sender makes (pure: no I/O).
//!
//! [`plan`] reads `OutboundMessage.action` (`proto/courier/v1/envelope.proto`) into
//! [`Call`]s, in order: one per part of a long plain text, one for every other action. Each
//! call knows its Bot API method, the budget it takes ([`Budget`]), the earlier message it
//! refers to ([`MessageRef`], resolved by the sender from its ledger when the call is made),
//! and which of Telegram's refusals mean that there is nothing left to do
//! ([`Call::already_done`]). A message the sender cannot turn into calls (no action, a
//! button without an action, an unknown `parse_mode`, a message id out of range) is
//! [`Refused`]: parked in the dead-letter stream with the reason, never dropped.

use courier_proto::v1::{
    self, inline_keyboard_button, message_ref, outbound_message::Action, InlineKeyboardMarkup,
};
use teloxide_core::types::{self as tg, ParseMode};
use teloxide_core::RequestError;

use crate::split;

/// The budget a call takes (`docs/SENDER.md`, *Budgets by method*).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Budget {
    /// The chat's budget (1/s for a private chat, 20/min for a group) and the bot's: the
    /// calls that write to the chat (`sendMessage`, `editMessageText`, `deleteMessage`).
    Chat,
    /// The bot's budget only: `answerCallbackQuery` and `sendChatAction`, which are not
    /// messages, so that a button press is answered (and "typing…" shown) without waiting a
    /// chat period behind the chat's previous message.
    Bot,
}

/// A message of the chat that a call refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageRef {
    /// Telegram's `message_id`.
    Id(i32),
    /// The bot's key of a message it sent to this chat (`SendMessage.key`).
    Key(String),
}

/// One Bot API call of an outbound message.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    /// `sendMessage` (one part of a long plain text, or the whole message).
    SendMessage {
        /// The text (of this part).
        text: String,
        /// Its `parse_mode`, if any.
        parse_mode: Option<ParseMode>,
        /// An inline keyboard (on the last part of a split text).
        keyboard: Option<tg::InlineKeyboardMarkup>,
        /// `reply_parameters.message_id` (on the first part of a split text).
        reply_to: Option<MessageRef>,
    },
    /// `editMessageText` of a message of the chat.
    EditMessageText {
        /// The message to edit.
        message: MessageRef,
        /// Its new text.
        text: String,
        /// Its `parse_mode`, if any.
        parse_mode: Option<ParseMode>,
        /// The keyboard after the edit (`None`: none).
        keyboard: Option<tg::InlineKeyboardMarkup>,
    },
    /// `answerCallbackQuery`.
    AnswerCallbackQuery {
        /// `callback_query.id`.
        callback_query_id: String,
        /// The notification, if any.
        text: Option<String>,
        /// As an alert rather than a toast.
        show_alert: bool,
    },
    /// `sendChatAction`: Telegram checks the action's name.
    SendChatAction {
        /// `typing`, `upload_photo`, …
        action: String,
    },
    /// `deleteMessage`.
    DeleteMessage {
        /// The message to delete.
        message: MessageRef,
    },
}

impl Call {
    /// The Bot API method, as Telegram spells it (the `method` of metrics and spans).
    pub fn method(&self) -> &'static str {
        match self {
            Call::SendMessage { .. } => "sendMessage",
            Call::EditMessageText { .. } => "editMessageText",
            Call::AnswerCallbackQuery { .. } => "answerCallbackQuery",
            Call::SendChatAction { .. } => "sendChatAction",
            Call::DeleteMessage { .. } => "deleteMessage",
        }
    }

    /// The budget it takes.
    pub fn budget(&self) -> Budget {
        match self {
            Call::SendMessage { .. }
            | Call::EditMessageText { .. }
            | Call::DeleteMessage { .. } => Budget::Chat,
            Call::AnswerCallbackQuery { .. } | Call::SendChatAction { .. } => Budget::Bot,
        }
    }

    /// The earlier message of the chat it needs Telegram's id of, if any.
    pub fn message_ref(&self) -> Option<&MessageRef> {
        match self {
            Call::SendMessage { reply_to, .. } => reply_to.as_ref(),
            Call::EditMessageText { message, .. } | Call::DeleteMessage { message } => {
                Some(message)
            }
            Call::AnswerCallbackQuery { .. } | Call::SendChatAction { .. } => None,
        }
    }

    /// Whether Telegram's refusal `err` means that what the call asks for holds already, so
    /// it counts as done rather than as a dead letter: an edit to exactly the text and
    /// keyboard the message has ("message is not modified", what Telegram answers when a
    /// retry repeats an edit that went through), a delete of a message that is not there
    /// ("message to delete not found": deleted by an earlier attempt, whose answer was lost,
    /// or by the user) or can no longer be deleted ("message can't be deleted": a bot may
    /// delete its own messages for 48 hours; nothing anyone can do makes a replay work), an
    /// answer to a button press Telegram no longer takes ("query is too old …": answered by
    /// an earlier attempt, or too late; the client stopped waiting either way).
    pub fn already_done(&self, err: &RequestError) -> bool {
        let Some(description) = crate::telegram::description(err) else {
            return false;
        };
        match self {
            Call::EditMessageText { .. } => {
                description.starts_with("Bad Request: message is not modified")
            }
            Call::DeleteMessage { .. } => {
                description.starts_with("Bad Request: message to delete not found")
                    || description.starts_with("Bad Request: message can't be deleted")
            }
            Call::AnswerCallbackQuery { .. } => {
                description.starts_with("Bad Request: query is too old")
            }
            _ => false,
        }
    }
}

/// The calls of one outbound message.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// In order; call `i` is part `i` in the ledger.
    pub calls: Vec<Call>,
    /// `SendMessage.key`: recorded with the last part's row.
    pub key: Option<String>,
}

/// Why a message cannot be turned into calls (the dead letter's reason).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Refused(pub String);

fn refused(reason: impl Into<String>) -> Refused {
    Refused(reason.into())
}

/// The calls `action` asks for.
pub fn plan(action: Option<&Action>) -> Result<Plan, Refused> {
    let Some(action) = action else {
        return Err(refused(
            "outbound message without an action this sender knows",
        ));
    };
    match action {
        Action::Send(send) => plan_send(send),
        Action::EditText(edit) => Ok(Plan {
            calls: vec![Call::EditMessageText {
                message: message_ref(edit.message.as_ref(), "edit_text")?,
                text: edit.text.clone(),
                parse_mode: parse_mode(&edit.parse_mode)?,
                keyboard: keyboard(edit.reply_markup.as_ref())?,
            }],
            key: None,
        }),
        Action::AnswerCallback(answer) => Ok(Plan {
            calls: vec![Call::AnswerCallbackQuery {
                callback_query_id: answer.callback_query_id.clone(),
                text: Some(answer.text.clone()).filter(|t| !t.is_empty()),
                show_alert: answer.show_alert,
            }],
            key: None,
        }),
        Action::ChatAction(action) => Ok(Plan {
            calls: vec![Call::SendChatAction {
                action: action.action.clone(),
            }],
            key: None,
        }),
        Action::Delete(delete) => Ok(Plan {
            calls: vec![Call::DeleteMessage {
                message: message_ref(delete.message.as_ref(), "delete")?,
            }],
            key: None,
        }),
    }
}

/// `sendMessage`: a plain text longer than Telegram's limit is split ([`split::split_text`]),
/// its keyboard on the last part and its reply on the first; a formatted text is sent whole
/// (cutting it could cut an entity in two: the bot keeps it within the limit).
fn plan_send(send: &v1::SendMessage) -> Result<Plan, Refused> {
    let mode = parse_mode(&send.parse_mode)?;
    let mut keyboard = keyboard(send.reply_markup.as_ref())?;
    // An optional field: a reference without a target is no reply.
    let mut reply_to = match send.reply_to.as_ref() {
        Some(r) if r.target.is_some() => Some(message_ref(Some(r), "send.reply_to")?),
        _ => None,
    };
    let texts: Vec<&str> = match mode {
        Some(_) => vec![send.text.as_str()],
        None => split::split_text(&send.text, split::MAX_MESSAGE_LEN),
    };
    let last = texts.len() - 1;
    let calls = texts
        .into_iter()
        .enumerate()
        .map(|(i, text)| Call::SendMessage {
            text: text.to_owned(),
            parse_mode: mode,
            keyboard: if i == last { keyboard.take() } else { None },
            reply_to: reply_to.take(),
        })
        .collect();
    Ok(Plan {
        calls,
        key: Some(send.key.clone()).filter(|k| !k.is_empty()),
    })
}

/// `parse_mode`: empty for plain text; otherwise one Telegram knows.
fn parse_mode(raw: &str) -> Result<Option<ParseMode>, Refused> {
    match raw {
        "" => Ok(None),
        "MarkdownV2" => Ok(Some(ParseMode::MarkdownV2)),
        "HTML" | "Html" => Ok(Some(ParseMode::Html)),
        #[allow(deprecated)]
        "Markdown" => Ok(Some(ParseMode::Markdown)),
        other => Err(refused(format!(
            "unknown parse_mode `{other}` (MarkdownV2, HTML or Markdown)"
        ))),
    }
}

fn message_ref(r: Option<&v1::MessageRef>, field: &str) -> Result<MessageRef, Refused> {
    match r.and_then(|r| r.target.as_ref()) {
        None => Err(refused(format!("{field}: no message (message_id or key)"))),
        Some(message_ref::Target::MessageId(id)) => match i32::try_from(*id) {
            Ok(id) if id > 0 => Ok(MessageRef::Id(id)),
            _ => Err(refused(format!(
                "{field}: message_id {id} is not a Telegram message id"
            ))),
        },
        Some(message_ref::Target::Key(key)) if key.is_empty() => {
            Err(refused(format!("{field}: empty key")))
        }
        Some(message_ref::Target::Key(key)) => Ok(MessageRef::Key(key.clone())),
    }
}

/// An inline keyboard; one without a row is none (Telegram shows none either way).
fn keyboard(
    markup: Option<&InlineKeyboardMarkup>,
) -> Result<Option<tg::InlineKeyboardMarkup>, Refused> {
    let Some(markup) = markup.filter(|m| !m.rows.is_empty()) else {
        return Ok(None);
    };
    let mut rows = Vec::with_capacity(markup.rows.len());
    for row in &markup.rows {
        let mut buttons = Vec::with_capacity(row.buttons.len());
        for b in &row.buttons {
            buttons.push(match &b.kind {
                Some(inline_keyboard_button::Kind::CallbackData(data)) => {
                    tg::InlineKeyboardButton::callback(b.text.clone(), data.clone())
                }
                Some(inline_keyboard_button::Kind::Url(url)) => {
                    let url = url::Url::parse(url)
                        .map_err(|e| refused(format!("button `{}`: url `{url}`: {e}", b.text)))?;
                    tg::InlineKeyboardButton::url(b.text.clone(), url)
                }
                None => {
                    return Err(refused(format!(
                        "button `{}` has neither callback_data nor url",
                        b.text
                    )))
                }
            });
        }
        rows.push(buttons);
    }
    Ok(Some(tg::InlineKeyboardMarkup::new(rows)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use courier_proto::v1::{
        AnswerCallbackQuery, DeleteMessage, EditMessageText, InlineKeyboardButton,
        InlineKeyboardRow, SendChatAction, SendMessage,
    };
    use teloxide_core::ApiError;

    fn by_key(key: &str) -> Option<v1::MessageRef> {
        Some(v1::MessageRef {
            target: Some(message_ref::Target::Key(key.into())),
        })
    }

    fn by_id(id: i64) -> Option<v1::MessageRef> {
        Some(v1::MessageRef {
            target: Some(message_ref::Target::MessageId(id)),
        })
    }

    fn yes_no() -> InlineKeyboardMarkup {
        let button = |text: &str, kind| InlineKeyboardButton {
            text: text.into(),
            kind: Some(kind),
        };
        InlineKeyboardMarkup {
            rows: vec![
                InlineKeyboardRow {
                    buttons: vec![
                        button(
                            "Yes",
                            inline_keyboard_button::Kind::CallbackData("y".into()),
                        ),
                        button("No", inline_keyboard_button::Kind::CallbackData("n".into())),
                    ],
                },
                InlineKeyboardRow {
                    buttons: vec![button(
                        "Docs",
                        inline_keyboard_button::Kind::Url("https://core.telegram.org/bots".into()),
                    )],
                },
            ],
        }
    }

    #[test]
    fn a_keyboard_becomes_teloxides_inline_keyboard_and_serializes_as_telegram_wants() {
        let kb = keyboard(Some(&yes_no())).unwrap().unwrap();
        assert_eq!(
            serde_json::to_value(&kb).unwrap(),
            serde_json::json!({"inline_keyboard": [
                [{"text": "Yes", "callback_data": "y"}, {"text": "No", "callback_data": "n"}],
                [{"text": "Docs", "url": "https://core.telegram.org/bots"}],
            ]})
        );
        assert_eq!(keyboard(Some(&InlineKeyboardMarkup::default())), Ok(None));
        assert_eq!(keyboard(None), Ok(None));
        let mut bad = yes_no();
        bad.rows[1].buttons[0].kind = Some(inline_keyboard_button::Kind::Url("not a url".into()));
        assert!(keyboard(Some(&bad))
            .unwrap_err()
            .0
            .contains("button `Docs`"));
        bad.rows[1].buttons[0].kind = None;
        assert_eq!(
            keyboard(Some(&bad)).unwrap_err().0,
            "button `Docs` has neither callback_data nor url"
        );
    }

    #[test]
    fn a_long_plain_text_is_split_with_the_keyboard_last_and_the_reply_first() {
        let text: String = (0..1000).map(|i| format!("{i:04} ")).collect();
        let plan = plan(Some(&Action::Send(SendMessage {
            text: text.clone(),
            parse_mode: String::new(),
            reply_markup: Some(yes_no()),
            reply_to: by_id(7),
            key: "menu".into(),
        })))
        .unwrap();
        assert_eq!(plan.key.as_deref(), Some("menu"));
        assert_eq!(plan.calls.len(), 2);
        let Call::SendMessage {
            text: first,
            keyboard: None,
            reply_to: Some(MessageRef::Id(7)),
            parse_mode: None,
        } = &plan.calls[0]
        else {
            panic!("first part: {:?}", plan.calls[0]);
        };
        let Call::SendMessage {
            text: second,
            keyboard: Some(_),
            reply_to: None,
            ..
        } = &plan.calls[1]
        else {
            panic!("last part: {:?}", plan.calls[1]);
        };
        assert_eq!(format!("{first}{second}"), text);
        assert!(plan.calls.iter().all(|c| c.budget() == Budget::Chat));
    }

    #[test]
    fn a_formatted_text_is_never_split_and_an_unknown_parse_mode_is_refused() {
        let long = "<b>x</b> ".repeat(1000);
        let plan = plan(Some(&Action::Send(SendMessage {
            text: long.clone(),
            parse_mode: "HTML".into(),
            ..Default::default()
        })))
        .unwrap();
        assert_eq!(plan.calls.len(), 1);
        assert!(matches!(&plan.calls[0],
            Call::SendMessage { text, parse_mode: Some(ParseMode::Html), .. } if *text == long));
        assert_eq!(plan.key, None, "an empty key is none");
        let err = super::plan(Some(&Action::Send(SendMessage {
            text: "x".into(),
            parse_mode: "BBCode".into(),
            ..Default::default()
        })))
        .unwrap_err();
        assert!(err.0.contains("unknown parse_mode `BBCode`"), "{err}");
        // An empty text is one (empty) part: Telegram's 400 parks it, it is never skipped.
        let empty = super::plan(Some(&Action::Send(SendMessage::default()))).unwrap();
        assert_eq!(empty.calls.len(), 1);
    }

    #[test]
    fn every_action_has_its_method_budget_and_reference() {
        let edit = plan(Some(&Action::EditText(EditMessageText {
            message: by_key("menu"),
            text: "Done".into(),
            parse_mode: "MarkdownV2".into(),
            reply_markup: None,
        })))
        .unwrap();
        assert_eq!(
            edit.calls,
            vec![Call::EditMessageText {
                message: MessageRef::Key("menu".into()),
                text: "Done".into(),
                parse_mode: Some(ParseMode::MarkdownV2),
                keyboard: None,
            }]
        );
        let answer = plan(Some(&Action::AnswerCallback(AnswerCallbackQuery {
            callback_query_id: "42".into(),
            text: String::new(),
            show_alert: false,
        })))
        .unwrap();
        let action = plan(Some(&Action::ChatAction(SendChatAction {
            action: "typing".into(),
        })))
        .unwrap();
        let delete = plan(Some(&Action::Delete(DeleteMessage { message: by_id(9) }))).unwrap();
        let got: Vec<_> = [&edit, &answer, &action, &delete]
            .iter()
            .map(|p| {
                let c = &p.calls[0];
                (c.method(), c.budget(), c.message_ref().cloned())
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (
                    "editMessageText",
                    Budget::Chat,
                    Some(MessageRef::Key("menu".into()))
                ),
                ("answerCallbackQuery", Budget::Bot, None),
                ("sendChatAction", Budget::Bot, None),
                ("deleteMessage", Budget::Chat, Some(MessageRef::Id(9))),
            ]
        );
        assert!(matches!(
            &answer.calls[0],
            Call::AnswerCallbackQuery { text: None, .. }
        ));
    }

    #[test]
    fn a_message_that_cannot_become_a_call_is_refused_with_the_reason() {
        assert!(plan(None).is_err());
        let no_target = plan(Some(&Action::Delete(DeleteMessage { message: None }))).unwrap_err();
        assert_eq!(no_target.0, "delete: no message (message_id or key)");
        let too_big = plan(Some(&Action::EditText(EditMessageText {
            message: by_id(1 << 40),
            text: "x".into(),
            ..Default::default()
        })))
        .unwrap_err();
        assert!(
            too_big.0.contains("is not a Telegram message id"),
            "{too_big}"
        );
        let empty_key = plan(Some(&Action::Delete(DeleteMessage {
            message: by_key(""),
        })))
        .unwrap_err();
        assert_eq!(empty_key.0, "delete: empty key");
        // A reply without a target is no reply.
        let send = plan(Some(&Action::Send(SendMessage {
            text: "x".into(),
            reply_to: Some(v1::MessageRef::default()),
            ..Default::default()
        })))
        .unwrap();
        assert_eq!(send.calls[0].message_ref(), None);
    }

    #[test]
    fn not_modified_and_already_deleted_count_as_done_and_nothing_else_does() {
        let edit = Call::EditMessageText {
            message: MessageRef::Id(1),
            text: "x".into(),
            parse_mode: None,
            keyboard: None,
        };
        let delete = Call::DeleteMessage {
            message: MessageRef::Id(1),
        };
        let not_modified = RequestError::Api(ApiError::MessageNotModified);
        let gone = RequestError::Api(ApiError::MessageToDeleteNotFound);
        let gone_unknown = RequestError::Api(ApiError::Unknown(
            "Bad Request: message to delete not found".into(),
        ));
        assert!(edit.already_done(&not_modified));
        assert!(delete.already_done(&gone));
        assert!(delete.already_done(&gone_unknown));
        assert!(!delete.already_done(&not_modified));
        assert!(!edit.already_done(&gone));
        assert!(!edit.already_done(&RequestError::Api(ApiError::MessageToEditNotFound)));
        assert!(delete.already_done(&RequestError::Api(ApiError::MessageCantBeDeleted)));
        let answer = Call::AnswerCallbackQuery {
            callback_query_id: "1".into(),
            text: None,
            show_alert: false,
        };
        assert!(answer.already_done(&RequestError::Api(ApiError::InvalidQueryId)));
        assert!(!answer.already_done(&RequestError::Api(ApiError::MessageCantBeDeleted)));
        assert!(!edit.already_done(&RequestError::Api(ApiError::MessageCantBeDeleted)));
        assert!(!edit.already_done(&RequestError::RetryAfter(
            teloxide_core::types::Seconds::from_seconds(1)
        )));
    }
}
