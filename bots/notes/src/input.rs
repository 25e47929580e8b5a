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

use courier_bot_api::lenient;
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
    let update: RawUpdate = lenient::parse_update(raw)?;
    if let Some(msg) = update.message {
        return from_message(msg).map(Some);
    }
    match update.my_chat_member {
        Some(m) => Ok(m.blocked()?.map(|b| b.map(Input::BotBlocked))),
        None => Ok(None),
    }
}

/// The parts of an `Update` the bot reads; any other key is skipped unread.
#[derive(Deserialize)]
#[serde(expecting = "an update object")]
struct RawUpdate {
    message: Option<RawMessage>,
    my_chat_member: Option<lenient::MemberUpdate>,
}

/// The parts of a `Message` the bot reads. The content fields are only checked for presence.
#[derive(Deserialize)]
#[serde(expecting = "a message object")]
struct RawMessage {
    chat: lenient::Chat,
    from: Option<lenient::User>,
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

fn from_message(msg: RawMessage) -> Result<Incoming, UnreadableUpdate> {
    let date = lenient::date("message.date", msg.date)?;
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
