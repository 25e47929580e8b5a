//! Bot API calls as data: what a step asks the sender to do.
//!
//! Each [`Outgoing`] becomes one outbox row in the update's transaction and one call by the
//! sender (a long plain text: several `sendMessage` parts), in the chat's order, within
//! Telegram's limits, recorded in the sender's ledger so that it is made once. A call that
//! refers to an earlier message of the bot ([`MessageRef::Key`]) is resolved by the sender
//! from that ledger when the call is made — the bot never needs Telegram's message ids.

/// How Telegram reads a text's markup (`parse_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseMode {
    /// `HTML`: escape user text with [`escape_html`].
    Html,
    /// `MarkdownV2`.
    MarkdownV2,
}

impl ParseMode {
    /// The Bot API's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            ParseMode::Html => "HTML",
            ParseMode::MarkdownV2 => "MarkdownV2",
        }
    }
}

/// Escapes text for `parse_mode = HTML`: `<`, `>`, `&` (and `"`, for attribute values).
/// Every piece of user text in an HTML message goes through it.
pub fn escape_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// A message of the chat that a call refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MessageRef {
    /// Telegram's `message_id`, known from an update (the message a button was pressed on).
    Id(i64),
    /// A message the bot sent to this chat with [`SendText::key`]: the latest one sent with
    /// that key, resolved by the sender from its ledger. A key that was never sent (its
    /// message was refused, or the chat blocked the bot) makes the call fail permanently: it
    /// is parked in the dead-letter stream.
    Key(String),
}

/// What pressing an inline button does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ButtonAction {
    /// Sends a `callback_query` with this data (1-64 bytes) back to the bot.
    Callback(String),
    /// Opens a URL.
    Url(String),
}

/// One inline button.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Button {
    /// Its label.
    pub text: String,
    /// What pressing it does.
    pub action: ButtonAction,
}

impl Button {
    /// A button that sends `data` back in a `callback_query`.
    pub fn callback(text: impl Into<String>, data: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            action: ButtonAction::Callback(data.into()),
        }
    }

    /// A button that opens `url`.
    pub fn url(text: impl Into<String>, url: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            action: ButtonAction::Url(url.into()),
        }
    }
}

/// An inline keyboard (`InlineKeyboardMarkup`): rows of buttons under a message.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct InlineKeyboard {
    /// The rows, top first.
    pub rows: Vec<Vec<Button>>,
}

/// `sendMessage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendText {
    /// The chat.
    pub chat_id: i64,
    /// The text. Plain text longer than 4096 characters is sent in parts; a formatted text
    /// (`parse_mode`) is sent whole, so keep it within 4096 characters after entity parsing.
    pub text: String,
    /// Markup, if any.
    pub parse_mode: Option<ParseMode>,
    /// An inline keyboard under the message (on the last part of a split text).
    pub keyboard: Option<InlineKeyboard>,
    /// The message this one replies to (`reply_parameters`).
    pub reply_to: Option<MessageRef>,
    /// The bot's name for this message in its chat, for a later [`MessageRef::Key`].
    pub key: Option<String>,
}

/// `editMessageText`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EditText {
    /// The chat.
    pub chat_id: i64,
    /// The message to edit.
    pub message: MessageRef,
    /// Its new text.
    pub text: String,
    /// Markup, if any.
    pub parse_mode: Option<ParseMode>,
    /// Its keyboard after the edit (`None`: no keyboard).
    pub keyboard: Option<InlineKeyboard>,
}

/// `answerCallbackQuery`: every button press must be answered, or the user's client shows a
/// spinner until it gives up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnswerCallback {
    /// The chat of the message whose button was pressed (the call is made in its order).
    pub chat_id: i64,
    /// The `callback_query.id`.
    pub callback_query_id: String,
    /// A notification to show (0-200 characters), if any.
    pub text: Option<String>,
    /// Show it as an alert the user must dismiss, rather than a toast.
    pub show_alert: bool,
}

/// `sendChatAction`'s actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatAction {
    /// "typing…"
    Typing,
    /// "sending photo…"
    UploadPhoto,
    /// "sending a file…"
    UploadDocument,
    /// "choosing a sticker…"
    ChooseSticker,
}

impl ChatAction {
    /// The Bot API's name for it.
    pub fn as_str(self) -> &'static str {
        match self {
            ChatAction::Typing => "typing",
            ChatAction::UploadPhoto => "upload_photo",
            ChatAction::UploadDocument => "upload_document",
            ChatAction::ChooseSticker => "choose_sticker",
        }
    }
}

/// One Bot API call a step asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outgoing {
    /// `sendMessage`.
    Send(SendText),
    /// `editMessageText`.
    Edit(EditText),
    /// `answerCallbackQuery`.
    AnswerCallback(AnswerCallback),
    /// `sendChatAction`.
    ChatAction {
        /// The chat.
        chat_id: i64,
        /// What the bot is doing.
        action: ChatAction,
    },
    /// `deleteMessage`.
    Delete {
        /// The chat.
        chat_id: i64,
        /// The message to delete.
        message: MessageRef,
    },
}

impl Outgoing {
    /// A plain-text `sendMessage`.
    pub fn text(chat_id: i64, text: impl Into<String>) -> Self {
        Outgoing::Send(SendText {
            chat_id,
            text: text.into(),
            parse_mode: None,
            keyboard: None,
            reply_to: None,
            key: None,
        })
    }

    /// An HTML `sendMessage` (escape user text with [`escape_html`]).
    pub fn html(chat_id: i64, text: impl Into<String>) -> Self {
        Outgoing::Send(SendText {
            parse_mode: Some(ParseMode::Html),
            ..SendText::plain(chat_id, text)
        })
    }

    /// The chat the call is made in (and ordered with).
    pub fn chat_id(&self) -> i64 {
        match self {
            Outgoing::Send(m) => m.chat_id,
            Outgoing::Edit(e) => e.chat_id,
            Outgoing::AnswerCallback(a) => a.chat_id,
            Outgoing::ChatAction { chat_id, .. } | Outgoing::Delete { chat_id, .. } => *chat_id,
        }
    }

    /// The Bot API method it calls.
    pub fn method(&self) -> &'static str {
        match self {
            Outgoing::Send(_) => "sendMessage",
            Outgoing::Edit(_) => "editMessageText",
            Outgoing::AnswerCallback(_) => "answerCallbackQuery",
            Outgoing::ChatAction { .. } => "sendChatAction",
            Outgoing::Delete { .. } => "deleteMessage",
        }
    }
}

impl SendText {
    /// A plain text, no keyboard, no reply, no key.
    pub fn plain(chat_id: i64, text: impl Into<String>) -> Self {
        Self {
            chat_id,
            text: text.into(),
            parse_mode: None,
            keyboard: None,
            reply_to: None,
            key: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escaping_leaves_no_markup_in_user_text() {
        assert_eq!(
            escape_html(r#"<b>x</b> & "y" 🦀"#),
            "&lt;b&gt;x&lt;/b&gt; &amp; &quot;y&quot; 🦀"
        );
        assert_eq!(escape_html("plain"), "plain");
    }
}
