//! What a bot reads from an update: the chat, the sender, the time, and the bot's own input.

use chrono::{DateTime, Utc};

/// The sender of an update, as bots keep it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// Telegram user id.
    pub id: i64,
    /// First name (empty when the update has none).
    pub first_name: String,
    /// Last name, if any.
    pub last_name: Option<String>,
    /// Username without `@`, if any.
    pub username: Option<String>,
}

/// One update as a bot reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incoming<I> {
    /// The chat the update belongs to: its state is the one the step gets, and the update is
    /// applied in this chat's order.
    pub chat_id: i64,
    /// The sender, when the update has one.
    pub from: Option<UserInfo>,
    /// When it was sent (Telegram's date): the step's clock.
    pub date: DateTime<Utc>,
    /// What it means to the bot.
    pub input: I,
}

impl<I> Incoming<I> {
    /// The same update, its input mapped.
    pub fn map<J>(self, f: impl FnOnce(I) -> J) -> Incoming<J> {
        Incoming {
            chat_id: self.chat_id,
            from: self.from,
            date: self.date,
            input: f(self.input),
        }
    }
}

/// An update of a kind the bot handles whose fields the bot needs cannot be read. The worker
/// parks it in the dead-letter stream with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable update: {reason}")]
pub struct UnreadableUpdate {
    /// What could not be read, starting with the field's path (`message.date: ...`).
    pub reason: String,
}

impl UnreadableUpdate {
    /// An unreadable update, for this reason.
    pub fn new(reason: impl Into<String>) -> Self {
        Self {
            reason: reason.into(),
        }
    }
}

/// A bot command: `/name args`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The command without the slash, lower-cased, without an `@botname` suffix.
    pub name: String,
    /// Everything after the command, trimmed.
    pub args: String,
}

/// Reads `/cmd@bot args` as a command; `None` for any other text ("/ hello" and
/// "/path/to/file" are not commands).
pub fn parse_command(text: &str) -> Option<Command> {
    let rest = text.strip_prefix('/')?;
    let (head, args) = rest
        .split_once(char::is_whitespace)
        .map(|(h, a)| (h, a.trim()))
        .unwrap_or((rest, ""));
    let name = head.split('@').next().unwrap_or_default();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    Some(Command {
        name: name.to_ascii_lowercase(),
        args: args.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_read_with_their_arguments() {
        let c = parse_command("/START@courier_bot  ref42 ").unwrap();
        assert_eq!((c.name.as_str(), c.args.as_str()), ("start", "ref42"));
        assert_eq!(parse_command("/help").unwrap().args, "");
        assert_eq!(parse_command("/ hello"), None);
        assert_eq!(parse_command("/path/to/file"), None);
        assert_eq!(parse_command("hello"), None);
    }
}
