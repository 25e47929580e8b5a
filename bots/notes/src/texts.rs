//! Everything the bot says, in one place.

use courier_bot_api::escape_html;

use crate::Note;

/// Longest part of a note that `/history` shows, in characters, so five notes always fit in
/// one Telegram message (4096 characters).
const HISTORY_NOTE_CHARS: usize = 600;

pub(crate) const HELP: &str = "I keep short notes for you.\n\n\
/start - register and start taking notes\n\
/history - show your last 5 notes\n\
/help - show this message\n\n\
After /start, every text message you send me is saved as a note, exactly as you wrote it.";

pub(crate) const SAVED: &str = "Saved your note. Send another, or /history to see your notes.";

pub(crate) const NOT_STARTED: &str =
    "I'm not taking notes yet. Send /start to begin, or /help to see what I can do.";

pub(crate) const SLOW_DOWN: &str =
    "You're sending messages too fast; please wait a few seconds. Messages sent meanwhile are not saved.";

pub(crate) const ANONYMOUS: &str =
    "I can only save notes from a user, not from an anonymous sender. See /help.";

pub(crate) fn welcome(first_name: Option<&str>) -> String {
    let hello = match first_name {
        Some(name) if !name.is_empty() => format!("Hi, {name}!"),
        _ => "Hi!".to_owned(),
    };
    format!(
        "{hello} I'm the notes bot. Send me any text and I'll save it as a note.\n\
         /history shows your last 5 notes, /help lists the commands."
    )
}

pub(crate) fn unknown_command(name: &str) -> String {
    format!("I don't know the command /{name}. Send /help to see what I can do.")
}

pub(crate) fn only_text(kind: &str) -> String {
    format!(
        "I can only save text notes, not a {kind}. Send me some text, or /help for the commands."
    )
}

/// `/history` in HTML: each note escaped (a note is shown as written, never as markup), its
/// time in italics. Telegram's 4096-character limit counts the text after the markup is
/// parsed, so five notes of [`HISTORY_NOTE_CHARS`] always fit, however much escaping adds.
pub(crate) fn history(notes: &[Note]) -> String {
    if notes.is_empty() {
        return "You have no notes yet. After /start, send me any text to save it.".to_owned();
    }
    let mut out = format!(
        "Your last {} note{}, newest first:",
        notes.len(),
        if notes.len() == 1 { "" } else { "s" }
    );
    for (i, note) in notes.iter().enumerate() {
        let text: String = note.text.chars().take(HISTORY_NOTE_CHARS).collect();
        let ellipsis = if text.len() < note.text.len() {
            "…"
        } else {
            ""
        };
        out.push_str(&format!(
            "\n{}. <i>{}</i> {}{ellipsis}",
            i + 1,
            note.at.format("%Y-%m-%d %H:%M UTC"),
            escape_html(&text)
        ));
    }
    out
}
