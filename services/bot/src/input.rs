//! Turning a Telegram update into the bot's input: which chat, who, when, and what.

use chrono::{DateTime, Utc};
use teloxide_core::types::{Message, Update, UpdateKind};

/// The sender of a message, as the bot keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// Telegram user id.
    pub id: i64,
    /// First name.
    pub first_name: String,
    /// Last name, if any.
    pub last_name: Option<String>,
    /// Username without `@`, if any.
    pub username: Option<String>,
}

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

/// One message the bot reacts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming {
    /// The chat to answer in.
    pub chat_id: i64,
    /// The sender, when the message has one.
    pub from: Option<UserInfo>,
    /// When it was sent.
    pub date: DateTime<Utc>,
    /// What it says.
    pub input: Input,
}

/// The bot's view of an update: `None` for the update kinds the notes bot ignores (edits,
/// channel posts, callbacks, membership changes, reactions, polls, and kinds this version of
/// the Bot API types does not know). Ignored updates are accepted and acknowledged.
pub fn classify(update: &Update) -> Option<Incoming> {
    match &update.kind {
        UpdateKind::Message(msg) => Some(from_message(msg)),
        UpdateKind::MyChatMember(m) if m.chat.is_private() => {
            let new = &m.new_chat_member.kind;
            let blocked = if new.is_banned() {
                true
            } else if new.is_member() {
                false
            } else {
                return None;
            };
            Some(Incoming {
                chat_id: m.chat.id.0,
                from: Some(user_info(&m.from)),
                date: m.date,
                input: Input::BotBlocked(blocked),
            })
        }
        _ => None,
    }
}

fn from_message(msg: &Message) -> Incoming {
    let from = msg.from.as_ref().map(user_info);
    let input = match msg.text() {
        Some(text) => parse_text(text),
        None => Input::NonText {
            kind: non_text_kind(msg),
        },
    };
    Incoming {
        chat_id: msg.chat.id.0,
        from,
        date: msg.date,
        input,
    }
}

fn user_info(u: &teloxide_core::types::User) -> UserInfo {
    UserInfo {
        id: u.id.0 as i64,
        first_name: u.first_name.clone(),
        last_name: u.last_name.clone(),
        username: u.username.clone(),
    }
}

/// Splits `/cmd@bot args` into a command; anything else is text, verbatim.
pub(crate) fn parse_text(text: &str) -> Input {
    let Some(rest) = text.strip_prefix('/') else {
        return Input::Text(text.to_owned());
    };
    let (head, args) = rest
        .split_once(char::is_whitespace)
        .map(|(h, a)| (h, a.trim()))
        .unwrap_or((rest, ""));
    let name = head.split('@').next().unwrap_or_default();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        // "/ hello" or "/path/to/file" are not commands.
        return Input::Text(text.to_owned());
    }
    Input::Command {
        name: name.to_ascii_lowercase(),
        args: args.to_owned(),
    }
}

fn non_text_kind(msg: &Message) -> &'static str {
    if msg.sticker().is_some() {
        "sticker"
    } else if msg.photo().is_some() {
        "photo"
    } else if msg.voice().is_some() {
        "voice message"
    } else if msg.video().is_some() {
        "video"
    } else if msg.document().is_some() {
        "document"
    } else if msg.location().is_some() {
        "location"
    } else if msg.contact().is_some() {
        "contact"
    } else {
        "message of this kind"
    }
}
