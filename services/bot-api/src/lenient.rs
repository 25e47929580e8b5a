//! Reading an update leniently: the pieces every bot's reader needs.
//!
//! A bot reads only the fields it uses, straight from the update's JSON, and skips every
//! other field and kind — so fields Telegram adds later, or leaves out (old clients omit
//! `is_bot`), cannot break it, where a full Bot API type library turns a message it cannot
//! deserialize into an error and the update would be lost. A bot declares a small serde view
//! of the update (its own `#[derive(Deserialize)]` structs, built from the ones here) and reads
//! it with [`parse_update`], which names the field that could not be read.

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::{Incoming, UnreadableUpdate, UserInfo};

/// Reads an update's raw JSON into the bot's view of it. The error names what could not be
/// read: `not valid JSON: …`, `not a Telegram update: …` (not an object), or the field's path
/// (`message.date: invalid type: …`).
pub fn parse_update<T: DeserializeOwned>(raw: &[u8]) -> Result<T, UnreadableUpdate> {
    // A derived struct also accepts an array of its fields in order; an update is an object.
    if raw.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(UnreadableUpdate::new(
            "not a Telegram update: not a JSON object",
        ));
    }
    let de = &mut serde_json::Deserializer::from_slice(raw);
    let update: T = serde_path_to_error::deserialize(&mut *de).map_err(|e| {
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
    Ok(update)
}

/// A Unix date (`field` names it in the error).
pub fn date(field: &str, unix: i64) -> Result<DateTime<Utc>, UnreadableUpdate> {
    DateTime::from_timestamp(unix, 0)
        .ok_or_else(|| UnreadableUpdate::new(format!("{field}: {unix} is not a valid date")))
}

/// The parts of a `Chat` a bot reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(expecting = "a chat object")]
pub struct Chat {
    /// The chat id.
    pub id: i64,
    /// `private`, `group`, `supergroup`, `channel`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

impl Chat {
    /// Whether the chat is private. For a bot whose answer depends on it, a chat without a
    /// type cannot be read (`field` names the chat in the error).
    pub fn is_private(&self, field: &str) -> Result<bool, UnreadableUpdate> {
        match self.kind.as_deref() {
            Some(kind) => Ok(kind == "private"),
            None => Err(UnreadableUpdate::new(format!(
                "{field}: missing field `type`"
            ))),
        }
    }
}

/// The parts of a `User` a bot reads (`is_bot` is not needed; `first_name` may be missing).
#[derive(Debug, Clone, Deserialize)]
#[serde(expecting = "a user object")]
pub struct User {
    /// The user id.
    pub id: i64,
    /// First name (empty when missing).
    #[serde(default)]
    pub first_name: String,
    /// Last name, if any.
    pub last_name: Option<String>,
    /// Username, if any.
    pub username: Option<String>,
}

impl From<User> for UserInfo {
    fn from(u: User) -> Self {
        UserInfo {
            id: u.id,
            first_name: u.first_name,
            last_name: u.last_name,
            username: u.username,
        }
    }
}

/// The parts of a `ChatMemberUpdated` (`my_chat_member`) a bot reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(expecting = "a chat member update object")]
pub struct MemberUpdate {
    /// The chat.
    pub chat: Chat,
    /// Who changed the membership.
    pub from: Option<User>,
    /// When.
    pub date: i64,
    /// The bot's new membership.
    pub new_chat_member: ChatMember,
}

/// The parts of a `ChatMember` a bot reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(expecting = "a chat member object")]
pub struct ChatMember {
    /// `member`, `kicked`, `left`, `administrator`, …
    pub status: String,
}

impl MemberUpdate {
    /// The user blocked (`true`) or unblocked (`false`) the bot: `my_chat_member` of a private
    /// chat with the status `kicked` or `member`; `None` for any other membership change. A
    /// chat without a type cannot be read: whether it is private decides.
    pub fn blocked(self) -> Result<Option<Incoming<bool>>, UnreadableUpdate> {
        if !self.chat.is_private("my_chat_member.chat")? {
            return Ok(None);
        }
        let blocked = match self.new_chat_member.status.as_str() {
            "kicked" => true,
            "member" => false,
            _ => return Ok(None),
        };
        Ok(Some(Incoming {
            chat_id: self.chat.id,
            from: self.from.map(UserInfo::from),
            date: date("my_chat_member.date", self.date)?,
            input: blocked,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct View {
        my_chat_member: Option<MemberUpdate>,
    }

    fn member(chat: &str, status: &str) -> Result<Option<Incoming<bool>>, UnreadableUpdate> {
        let raw = format!(
            r#"{{"update_id":1,"my_chat_member":{{"chat":{chat},"from":{{"id":7}},"date":1,
               "new_chat_member":{{"status":"{status}","user":{{"id":1}}}},"extra":[1]}}}}"#
        );
        parse_update::<View>(raw.as_bytes())?
            .my_chat_member
            .expect("a member update")
            .blocked()
    }

    #[test]
    fn blocks_are_read_from_private_chats_only_and_a_chat_needs_its_type() {
        let private = r#"{"id":7,"type":"private"}"#;
        assert!(member(private, "kicked").unwrap().unwrap().input);
        assert!(!member(private, "member").unwrap().unwrap().input);
        assert_eq!(member(private, "left").unwrap(), None);
        assert_eq!(
            member(r#"{"id":-5,"type":"group"}"#, "kicked").unwrap(),
            None
        );
        assert_eq!(
            member(r#"{"id":7}"#, "kicked").unwrap_err().reason,
            "my_chat_member.chat: missing field `type`"
        );
    }

    #[test]
    fn what_cannot_be_read_is_named() {
        let err = |raw: &str| parse_update::<View>(raw.as_bytes()).unwrap_err().reason;
        assert_eq!(err("[1]"), "not a Telegram update: not a JSON object");
        assert!(err("{").starts_with("not valid JSON"));
        assert!(err(r#"{"my_chat_member":{"chat":{"id":"x"}}}"#)
            .starts_with("my_chat_member.chat.id: invalid type"));
        assert_eq!(
            date("message.date", i64::MAX).unwrap_err().reason,
            format!("message.date: {} is not a valid date", i64::MAX)
        );
    }
}
