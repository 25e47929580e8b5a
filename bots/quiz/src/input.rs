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

use chrono::{DateTime, Utc};
use courier_bot_api::{parse_command, Command, Incoming, UnreadableUpdate, UserInfo};
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
    // A derived struct also accepts an array of its fields in order; an update is an object.
    if raw.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(UnreadableUpdate::new(
            "not a Telegram update: not a JSON object",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(raw);
    let update: RawUpdate = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            UnreadableUpdate::new(format!("not valid JSON: {inner}"))
        } else if path == "." {
            UnreadableUpdate::new(format!("not a Telegram update: {inner}"))
        } else {
            UnreadableUpdate::new(format!("{path}: {inner}"))
        }
    })?;
    de.end()
        .map_err(|e| UnreadableUpdate::new(format!("not valid JSON: {e}")))?;
    if let Some(m) = update.message {
        from_message(m)
    } else if let Some(q) = update.callback_query {
        from_callback(q)
    } else if let Some(m) = update.my_chat_member {
        from_member_update(m)
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
    my_chat_member: Option<RawMemberUpdate>,
}

#[derive(Deserialize)]
#[serde(expecting = "a message object")]
struct RawMessage {
    chat: RawChat,
    from: Option<RawUser>,
    date: i64,
    text: Option<String>,
}

#[derive(Deserialize)]
#[serde(expecting = "a callback query object")]
struct RawCallback {
    id: String,
    from: Option<RawUser>,
    message: Option<RawCallbackMessage>,
    data: Option<String>,
}

/// A callback's `message` (a `MaybeInaccessibleMessage`: an old message has only these
/// fields, with `date` 0).
#[derive(Deserialize)]
#[serde(expecting = "a message object")]
struct RawCallbackMessage {
    message_id: i64,
    chat: RawChat,
    date: i64,
}

#[derive(Deserialize)]
#[serde(expecting = "a chat object")]
struct RawChat {
    id: i64,
    #[serde(rename = "type")]
    kind: Option<String>,
}

#[derive(Deserialize)]
#[serde(expecting = "a user object")]
struct RawUser {
    id: i64,
    #[serde(default)]
    first_name: String,
    last_name: Option<String>,
    username: Option<String>,
}

#[derive(Deserialize)]
#[serde(expecting = "a chat member update object")]
struct RawMemberUpdate {
    chat: RawChat,
    from: Option<RawUser>,
    date: i64,
    new_chat_member: RawChatMember,
}

#[derive(Deserialize)]
#[serde(expecting = "a chat member object")]
struct RawChatMember {
    status: String,
}

impl From<RawUser> for UserInfo {
    fn from(u: RawUser) -> Self {
        UserInfo {
            id: u.id,
            first_name: u.first_name,
            last_name: u.last_name,
            username: u.username,
        }
    }
}

fn date(field: &str, unix: i64) -> Result<DateTime<Utc>, UnreadableUpdate> {
    DateTime::from_timestamp(unix, 0)
        .ok_or_else(|| UnreadableUpdate::new(format!("{field}: {unix} is not a valid date")))
}

/// Whether the chat is private; the type decides what the bot answers, so a chat without one
/// cannot be read.
fn is_private(field: &str, chat: &RawChat) -> Result<bool, UnreadableUpdate> {
    match chat.kind.as_deref() {
        Some(kind) => Ok(kind == "private"),
        None => Err(UnreadableUpdate::new(format!(
            "{field}: missing field `type`"
        ))),
    }
}

fn from_message(m: RawMessage) -> Result<Option<Incoming<Input>>, UnreadableUpdate> {
    let date = date("message.date", m.date)?;
    let input = match m.text.as_deref().and_then(parse_command) {
        Some(command) => Input::Command(command),
        // In groups the bot answers commands and buttons only, not the conversation.
        None if !is_private("message.chat", &m.chat)? => return Ok(None),
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
        date: date("callback_query.message.date", message.date)?,
        input: Input::Button {
            query_id: q.id,
            message_id: message.message_id,
            data: q.data.unwrap_or_default(),
        },
    }))
}

fn from_member_update(m: RawMemberUpdate) -> Result<Option<Incoming<Input>>, UnreadableUpdate> {
    // Only a private chat's membership says the user blocked the bot.
    if !is_private("my_chat_member.chat", &m.chat)? {
        return Ok(None);
    }
    let blocked = match m.new_chat_member.status.as_str() {
        "kicked" => true,
        "member" => false,
        _ => return Ok(None),
    };
    Ok(Some(Incoming {
        chat_id: m.chat.id,
        from: m.from.map(UserInfo::from),
        date: date("my_chat_member.date", m.date)?,
        input: Input::BotBlocked(blocked),
    }))
}
