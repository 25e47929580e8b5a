//! Reading a Telegram update as the quiz bot's input, leniently: only the fields the bot
//! uses are deserialized, everything else (fields and kinds added to the Bot API later
//! included) is skipped unread.
//!
//! | update                                   | read as                         |
//! |------------------------------------------|---------------------------------|
//! | `message` with a command (any chat)      | [`Input::Command`]              |
//! | `message` of any other kind, private chat| [`Input::Other`]                |
//! | `message` that is no command, in a group | ignored (`Ok(None)`)            |
//! | `callback_query` on a message            | [`Input::Button`]               |
//! | `callback_query` on an inline message    | ignored: the bot sends none     |
//! | `my_chat_member`, private, kicked/member | [`Input::BotBlocked`]           |
//! | anything else                            | ignored                         |
//!
//! What the bot needs and cannot read is an [`UnreadableUpdate`] naming the field
//! (`callback_query.message.message_id: invalid type: ...`); the worker dead-letters it.

use courier_bot_api::{lenient, parse_command, Command, Incoming, UnreadableUpdate, UserInfo};
use serde::Deserialize;

/// What an update means to the quiz bot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// `/name args` (see [`parse_command`]), in any chat.
    Command(Command),
    /// A message in a private chat that is no command (text, sticker, photo, ...): the bot
    /// only explains what it understands, so its content is not kept.
    Other,
    /// A press of an inline button under one of the bot's messages (`callback_query`).
    Button {
        /// `callback_query.id`, for the answer every press needs.
        query_id: String,
        /// The message the button is under.
        message_id: i64,
        /// Its `callback_data` (empty when the query has none).
        data: String,
    },
    /// The user blocked (`true`) or unblocked (`false`) the bot in a private chat.
    BotBlocked(bool),
}

/// The bot's view of an update, read from its raw JSON; see the module's table.
///
/// For a button press, [`Incoming::chat_id`] is the chat of the message the button is under
/// and [`Incoming::date`] that message's date: a `callback_query` has no date of its own.
pub fn classify_json(raw: &[u8]) -> Result<Option<Incoming<Input>>, UnreadableUpdate> {
    let update: RawUpdate = lenient::parse_update(raw)?;
    if let Some(m) = update.message {
        from_message(m)
    } else if let Some(q) = update.callback_query {
        from_callback(q)
    } else if let Some(m) = update.my_chat_member {
        Ok(m.blocked()?.map(|b| b.map(Input::BotBlocked)))
    } else {
        Ok(None)
    }
}

/// The parts of an `Update` the bot reads; any other key is skipped unread.
#[derive(Deserialize)]
#[serde(expecting = "an update object")]
struct RawUpdate {
    message: Option<RawMessage>,
    callback_query: Option<RawCallback>,
    my_chat_member: Option<lenient::MemberUpdate>,
}

#[derive(Deserialize)]
#[serde(expecting = "a message object")]
struct RawMessage {
    chat: lenient::Chat,
    from: Option<lenient::User>,
    date: i64,
    text: Option<String>,
}

#[derive(Deserialize)]
#[serde(expecting = "a callback query object")]
struct RawCallback {
    id: String,
    from: Option<lenient::User>,
    message: Option<RawCallbackMessage>,
    data: Option<String>,
}

/// A callback's `message` (a `MaybeInaccessibleMessage`: an old message has only these
/// fields, with `date` 0).
#[derive(Deserialize)]
#[serde(expecting = "a message object")]
struct RawCallbackMessage {
    message_id: i64,
    chat: lenient::Chat,
    date: i64,
}

fn from_message(m: RawMessage) -> Result<Option<Incoming<Input>>, UnreadableUpdate> {
    let date = lenient::date("message.date", m.date)?;
    let input = match m.text.as_deref().and_then(parse_command) {
        Some(command) => Input::Command(command),
        // In groups the bot answers commands and buttons only, not the conversation.
        None if !m.chat.is_private("message.chat")? => return Ok(None),
        None => Input::Other,
    };
    Ok(Some(Incoming {
        chat_id: m.chat.id,
        from: m.from.map(UserInfo::from),
        date,
        input,
    }))
}

fn from_callback(q: RawCallback) -> Result<Option<Incoming<Input>>, UnreadableUpdate> {
    // Without `message`, the button is under an inline-mode message, which this bot never
    // sends; it has no chat to order the press in.
    let Some(message) = q.message else {
        return Ok(None);
    };
    Ok(Some(Incoming {
        chat_id: message.chat.id,
        from: q.from.map(UserInfo::from),
        date: lenient::date("callback_query.message.date", message.date)?,
        input: Input::Button {
            query_id: q.id,
            message_id: message.message_id,
            data: q.data.unwrap_or_default(),
        },
    }))
}
