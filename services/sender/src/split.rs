//! Splitting long texts into messages Telegram accepts.
//!
//! Telegram refuses a `sendMessage` text longer than 4096 characters (counted in UTF-16 code
//! units, as Telegram counts). A longer text is split, never truncated: at the last paragraph
//! break (`\n\n`) that fits, else the last line break, else the last space, else (one word
//! longer than the limit) at the last character that fits. The separators stay with the part
//! they end, so joining the parts gives back the text exactly.

/// Telegram's limit on a message text, in UTF-16 code units.
pub const MAX_MESSAGE_LEN: usize = 4096;

fn utf16_len(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

/// The longest prefix of `s` (a byte index at a char boundary) that is at most `max` UTF-16
/// code units long.
fn fitting_prefix(s: &str, max: usize) -> usize {
    let mut units = 0;
    for (i, c) in s.char_indices() {
        units += c.len_utf16();
        if units > max {
            return i;
        }
    }
    s.len()
}

/// Splits `text` into parts of at most `max` UTF-16 code units (see the module docs).
pub fn split_text(text: &str, max: usize) -> Vec<&str> {
    let max = max.max(2);
    let mut parts = Vec::new();
    let mut rest = text;
    while utf16_len(rest) > max {
        let window = &rest[..fitting_prefix(rest, max)];
        let cut = ["\n\n", "\n", " "]
            .iter()
            .find_map(|sep| window.rfind(sep).map(|i| i + sep.len()).filter(|&i| i > 0))
            .unwrap_or(window.len());
        let (head, tail) = rest.split_at(cut);
        parts.push(head);
        rest = tail;
    }
    if !rest.is_empty() || parts.is_empty() {
        parts.push(rest);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_one_part() {
        assert_eq!(split_text("hello", MAX_MESSAGE_LEN), vec!["hello"]);
        assert_eq!(split_text("", MAX_MESSAGE_LEN), vec![""]);
    }

    #[test]
    fn prefers_paragraphs_then_lines_then_words() {
        let para = format!("{}\n\n{}", "a".repeat(3000), "b".repeat(2000));
        let p = split_text(&para, MAX_MESSAGE_LEN);
        assert_eq!(
            p,
            vec![
                format!("{}\n\n", "a".repeat(3000)).as_str(),
                "b".repeat(2000).as_str()
            ]
        );

        let lines = format!(
            "{}\n{}\n{}",
            "a".repeat(2000),
            "b".repeat(2000),
            "c".repeat(1000)
        );
        let p = split_text(&lines, MAX_MESSAGE_LEN);
        assert_eq!(p.len(), 2);
        assert!(p[0].ends_with("b\n") && p[1] == "c".repeat(1000));

        let words = "word ".repeat(1000);
        let p = split_text(&words, MAX_MESSAGE_LEN);
        assert!(p.iter().all(|x| utf16_len(x) <= MAX_MESSAGE_LEN));
        assert!(p[0].ends_with(' '), "cut after a space");
        assert_eq!(p.concat(), words);
    }

    #[test]
    fn no_boundary_cuts_at_a_character_and_counts_utf16() {
        // 🙂 is two UTF-16 units: 3000 of them are 6000 units.
        let emoji = "🙂".repeat(3000);
        let p = split_text(&emoji, MAX_MESSAGE_LEN);
        assert_eq!(p.len(), 2);
        assert_eq!(utf16_len(p[0]), 4096);
        assert_eq!(p.concat(), emoji);
    }

    #[test]
    fn five_thousand_characters_make_two_ordered_parts() {
        let text: String = (0..1000).map(|i| format!("{i:04} ")).collect();
        assert_eq!(text.len(), 5000);
        let p = split_text(&text, MAX_MESSAGE_LEN);
        assert_eq!(p.len(), 2);
        assert!(p[0].starts_with("0000 ") && p[1].ends_with("0999 "));
        assert_eq!(p.concat(), text);
    }
}
