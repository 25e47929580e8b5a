//! Turning a Telegram update into the bot's input: which chat, who, when, and what.
//!
//! The update is read **leniently**, straight from its JSON: only the fields the bot uses are
//! deserialized (chat id, sender, date, text, which non-text kind, the bot's new membership
//! status), and everything else — fields and kinds added to the Bot API after this code was
//! written, fields old clients leave out such as `is_bot` — is skipped. A full Bot API type
//! library cannot do that: teloxide-core turns a `Message` it cannot deserialize into
//! `UpdateKind::Error`, or reads a text message with an unknown entity type as a message
//! without text, and either way the user's note would be lost.
//!
//! What the bot needs and cannot read (a `message` without a chat, a date that is not a
//! number, ...) is an [`UnreadableUpdate`] with a reason naming the field; the worker
//! dead-letters it. Update kinds the bot does not handle are not read at all.

use chrono::{DateTime, Utc};
use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::{Incoming, UnreadableUpdate, UserInfo};

/// What a message asks of the bot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// `/name args`; the name is lower-cased and stripped of an `@botname` suffix.
    Command {
        /// The command without the slash.
        name: String,
        /// Everything after the command, trimmed.
        args: String,
    },
    /// Any other text, verbatim.
    Text(String),
    /// A message without text (sticker, photo, ...); `kind` names it for the reply.
    NonText {
        /// A human word for the message kind.
        kind: &'static str,
    },
    /// The user blocked (`true`) or unblocked (`false`) the bot in a private chat
    /// (`my_chat_member` with status `kicked` / `member`).
    BotBlocked(bool),
}

/// The bot's view of an update, read from its raw JSON.
///
/// `Ok(None)` for the update kinds the notes bot ignores (edits, channel posts, callbacks,
/// reactions, polls, membership changes other than the bot being blocked or unblocked in a
/// private chat, and kinds added to the Bot API later): they are accepted and acknowledged.
/// `Err` when the body is not a JSON object, or an update the bot handles lacks a field it
/// needs or carries it with the wrong type.
pub fn classify_json(raw: &[u8]) -> Result<Option<Incoming>, UnreadableUpdate> {
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
    if let Some(msg) = update.message {
        return from_message(msg).map(Some);
    }
    match update.my_chat_member {
        Some(m) => from_member_update(m),
        None => Ok(None),
    }
}

/// The parts of an `Update` the bot reads; any other key is skipped unread.
#[derive(Deserialize)]
#[serde(expecting = "an update object")]
struct RawUpdate {
    message: Option<RawMessage>,
    my_chat_member: Option<RawMemberUpdate>,
}

/// The parts of a `Message` the bot reads. The content fields are only checked for presence.
#[derive(Deserialize)]
#[serde(expecting = "a message object")]
struct RawMessage {
    chat: RawChat,
    from: Option<RawUser>,
    date: i64,
    text: Option<String>,
    sticker: Option<IgnoredAny>,
    photo: Option<IgnoredAny>,
    voice: Option<IgnoredAny>,
    video_note: Option<IgnoredAny>,
    video: Option<IgnoredAny>,
    animation: Option<IgnoredAny>,
    audio: Option<IgnoredAny>,
    document: Option<IgnoredAny>,
    venue: Option<IgnoredAny>,
    location: Option<IgnoredAny>,
    contact: Option<IgnoredAny>,
    poll: Option<IgnoredAny>,
    dice: Option<IgnoredAny>,
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

/// The parts of a `ChatMemberUpdated` the bot reads.
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

fn from_message(msg: RawMessage) -> Result<Incoming, UnreadableUpdate> {
    let date = date("message.date", msg.date)?;
    let input = match &msg.text {
        Some(text) => parse_text(text),
        None => Input::NonText {
            kind: non_text_kind(&msg),
        },
    };
    Ok(Incoming {
        chat_id: msg.chat.id,
        from: msg.from.map(UserInfo::from),
        date,
        input,
    })
}

fn from_member_update(m: RawMemberUpdate) -> Result<Option<Incoming>, UnreadableUpdate> {
    // Only a private chat's membership says the user blocked the bot. The chat's type decides
    // it, so an update without one cannot be read.
    match m.chat.kind.as_deref() {
        Some("private") => {}
        Some(_) => return Ok(None),
        None => {
            return Err(UnreadableUpdate::new(
                "my_chat_member.chat: missing field `type`",
            ))
        }
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

/// Splits `/cmd@bot args` into a command; anything else is text, verbatim.
pub(crate) fn parse_text(text: &str) -> Input {
    match courier_bot_api::parse_command(text) {
        Some(c) => Input::Command {
            name: c.name,
            args: c.args,
        },
        None => Input::Text(text.to_owned()),
    }
}

/// A word for what a message without text is. The order matters where Telegram sends two
/// fields for one thing: an animation also carries `document`, a venue also `location`.
fn non_text_kind(msg: &RawMessage) -> &'static str {
    let kinds = [
        (msg.sticker.is_some(), "sticker"),
        (msg.photo.is_some(), "photo"),
        (msg.voice.is_some(), "voice message"),
        (msg.video_note.is_some(), "video message"),
        (msg.video.is_some(), "video"),
        (msg.animation.is_some(), "GIF"),
        (msg.audio.is_some(), "music file"),
        (msg.document.is_some(), "document"),
        (msg.venue.is_some(), "venue"),
        (msg.location.is_some(), "location"),
        (msg.contact.is_some(), "contact"),
        (msg.poll.is_some(), "poll"),
        (msg.dice.is_some(), "dice"),
    ];
    kinds
        .into_iter()
        .find_map(|(present, word)| present.then_some(word))
        .unwrap_or("message of this kind")
}
