//! Telegram's formatting options: `parse_mode` `HTML`, `MarkdownV2` and the legacy
//! `Markdown` turned into plain text plus message entities, as the Bot API does it
//! (<https://core.telegram.org/bots/api#formatting-options>).
//!
//! Offsets and lengths are in UTF-16 code units, as Telegram counts them. Errors carry
//! Telegram's wording (the part after `can't parse entities: `), byte offsets included, so a
//! client that matches on them behaves as it would against Telegram.
//!
//! Each parser walks the text byte by byte, like Telegram's own (TDLib's) parsers do, which is
//! what makes the byte offsets in the errors come out the same.

use serde_json::{json, Map, Value};

/// A formatting mode (`parse_mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParseMode {
    Html,
    MarkdownV2,
    /// The legacy `Markdown` mode: no nesting, no underline, strikethrough or spoilers.
    Markdown,
}

impl ParseMode {
    /// The mode a `parse_mode` value names (case-insensitive); `Ok(None)` for an empty value
    /// or `none`, `Err(())` for an unknown one.
    pub(crate) fn parse(raw: &str) -> Result<Option<Self>, ()> {
        match raw.to_ascii_lowercase().as_str() {
            "" | "none" => Ok(None),
            "html" => Ok(Some(Self::Html)),
            "markdownv2" => Ok(Some(Self::MarkdownV2)),
            "markdown" => Ok(Some(Self::Markdown)),
            _ => Err(()),
        }
    }
}

/// The kind of a message entity, with what it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Kind {
    Bold,
    Italic,
    Underline,
    Strikethrough,
    Spoiler,
    Code,
    Pre,
    /// A `pre` block with a programming language.
    PreCode(String),
    TextLink(String),
    /// A mention by user id (`tg://user?id=…`).
    TextMention(i64),
    CustomEmoji(String),
    Blockquote,
    ExpandableBlockquote,
}

impl Kind {
    /// The name TDLib gives the kind in its errors ("Can't find end of Bold entity…").
    fn error_name(&self) -> &'static str {
        match self {
            Self::Bold => "Bold",
            Self::Italic => "Italic",
            Self::Underline => "Underline",
            Self::Strikethrough => "Strikethrough",
            Self::Spoiler => "Spoiler",
            Self::Code => "Code",
            Self::Pre => "Pre",
            Self::PreCode(_) => "PreCode",
            Self::TextLink(_) => "TextUrl",
            Self::TextMention(_) => "MentionName",
            Self::CustomEmoji(_) => "CustomEmoji",
            Self::Blockquote => "BlockQuote",
            Self::ExpandableBlockquote => "ExpandableBlockQuote",
        }
    }

    /// Order of entities that cover the same range: outer ones first, as Telegram sorts them.
    fn priority(&self) -> u8 {
        match self {
            Self::Blockquote | Self::ExpandableBlockquote => 0,
            Self::PreCode(_) => 10,
            Self::Pre => 11,
            Self::Code => 20,
            Self::TextLink(_) | Self::TextMention(_) => 49,
            Self::Bold => 90,
            Self::Italic => 91,
            Self::Underline => 92,
            Self::Strikethrough => 93,
            Self::Spoiler => 94,
            Self::CustomEmoji(_) => 99,
        }
    }
}

/// One message entity; `offset` and `length` in UTF-16 code units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Entity {
    pub kind: Kind,
    pub offset: usize,
    pub length: usize,
}

impl Entity {
    fn new(kind: Kind, offset: usize, length: usize) -> Self {
        Self {
            kind,
            offset,
            length,
        }
    }

    /// The entity as a Bot API `MessageEntity`.
    pub(crate) fn to_json(&self) -> Value {
        let (kind, extra) = match &self.kind {
            Kind::Bold => ("bold", None),
            Kind::Italic => ("italic", None),
            Kind::Underline => ("underline", None),
            Kind::Strikethrough => ("strikethrough", None),
            Kind::Spoiler => ("spoiler", None),
            Kind::Code => ("code", None),
            Kind::Pre => ("pre", None),
            Kind::PreCode(language) => ("pre", Some(("language", json!(language)))),
            Kind::TextLink(url) => ("text_link", Some(("url", json!(url)))),
            Kind::TextMention(id) => (
                "text_mention",
                Some((
                    "user",
                    json!({ "id": id, "is_bot": false, "first_name": "User" }),
                )),
            ),
            Kind::CustomEmoji(id) => ("custom_emoji", Some(("custom_emoji_id", json!(id)))),
            Kind::Blockquote => ("blockquote", None),
            Kind::ExpandableBlockquote => ("expandable_blockquote", None),
        };
        let mut object = json!({ "type": kind, "offset": self.offset, "length": self.length });
        if let Some((key, value)) = extra {
            object[key] = value;
        }
        object
    }
}

/// A text with its entities, after parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Formatted {
    pub text: String,
    pub entities: Vec<Entity>,
}

impl Formatted {
    /// The entities as Bot API JSON.
    pub(crate) fn entities_json(&self) -> Vec<Value> {
        self.entities.iter().map(Entity::to_json).collect()
    }
}

/// Parses `text` in `mode`. The error is Telegram's description of the markup problem (the
/// API answers `400 Bad Request: can't parse entities: <error>`).
pub(crate) fn parse(mode: ParseMode, text: &str) -> Result<Formatted, String> {
    let (bytes, mut entities) = match mode {
        ParseMode::Html => parse_html(text.as_bytes())?,
        ParseMode::MarkdownV2 => parse_markdown_v2(text.as_bytes())?,
        ParseMode::Markdown => parse_markdown(text.as_bytes())?,
    };
    // The parsers copy whole UTF-8 sequences and insert whole characters, so this holds; the
    // lossy fallback only guards against a bug turning into a panic.
    let text = String::from_utf8(bytes)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    // `<pre><code>…</code></pre>` without a language is one `pre` entity.
    let pres: Vec<(usize, usize)> = entities
        .iter()
        .filter(|e| e.kind == Kind::Pre)
        .map(|e| (e.offset, e.length))
        .collect();
    entities.retain(|e| !(e.kind == Kind::Code && pres.contains(&(e.offset, e.length))));
    sort(&mut entities);
    Ok(Formatted { text, entities })
}

/// Sorts entities as Telegram returns them: by offset, longer (outer) first, then by kind.
pub(crate) fn sort(entities: &mut [Entity]) {
    entities.sort_by(|a, b| {
        a.offset
            .cmp(&b.offset)
            .then(b.length.cmp(&a.length))
            .then(a.kind.priority().cmp(&b.kind.priority()))
    });
}

/// Telegram drops leading and trailing white space of a message; entities (Bot API JSON, with
/// `offset` and `length`) are cut to what remains, and dropped when nothing does.
pub(crate) fn trim(text: &str, entities: Vec<Value>) -> (String, Vec<Value>) {
    let is_space = |c: char| matches!(c, ' ' | '\t' | '\n' | '\r');
    let start = text.len() - text.trim_start_matches(is_space).len();
    let kept = text[start..].trim_end_matches(is_space);
    if start == 0 && kept.len() == text.len() {
        return (text.to_owned(), entities);
    }
    let skipped = utf16_len(&text[..start]) as u64;
    let kept_len = utf16_len(kept) as u64;
    let entities = entities
        .into_iter()
        .filter_map(|mut e| {
            let offset = e["offset"].as_u64().unwrap_or(0);
            let length = e["length"].as_u64().unwrap_or(0);
            let begin = offset.max(skipped) - skipped;
            let end = offset.saturating_add(length).min(skipped + kept_len);
            let end = end.max(skipped) - skipped;
            (end > begin).then(|| {
                e["offset"] = json!(begin);
                e["length"] = json!(end - begin);
                e
            })
        })
        .collect();
    (kept.to_owned(), entities)
}

fn utf16_len(text: &str) -> usize {
    text.encode_utf16().count()
}

/// The entity types a client may pass in `entities`.
const ENTITY_TYPES: &[&str] = &[
    "mention",
    "hashtag",
    "cashtag",
    "bot_command",
    "url",
    "email",
    "phone_number",
    "bold",
    "italic",
    "underline",
    "strikethrough",
    "spoiler",
    "blockquote",
    "expandable_blockquote",
    "code",
    "pre",
    "text_link",
    "text_mention",
    "custom_emoji",
];

/// Checks explicit `entities` against `text`: each a known type with its offset and length
/// inside the text (UTF-16). Returns them as given, sorted like Telegram sorts them.
pub(crate) fn check_entities(text: &str, entities: &Value) -> Result<Vec<Value>, String> {
    let list = entities
        .as_array()
        .ok_or_else(|| "entities must be an Array".to_owned())?;
    let total = utf16_len(text) as u64;
    let mut out = Vec::with_capacity(list.len());
    for (i, entity) in list.iter().enumerate() {
        let object: &Map<String, Value> = entity
            .as_object()
            .ok_or_else(|| format!("entity {i} must be an Object"))?;
        let kind = object.get("type").and_then(Value::as_str).unwrap_or("");
        if !ENTITY_TYPES.contains(&kind) {
            return Err(format!("unsupported entity type \"{kind}\""));
        }
        let offset = object.get("offset").and_then(Value::as_u64);
        let length = object.get("length").and_then(Value::as_u64);
        let (Some(offset), Some(length)) = (offset, length) else {
            return Err(format!("entity {i} must have an Integer offset and length"));
        };
        if offset.saturating_add(length) > total {
            return Err(format!(
                "entity {i} ({kind} at offset {offset}, length {length}) is beyond the end of \
                 the text ({total} UTF-16 code units)"
            ));
        }
        let required = match kind {
            "text_link" => Some("url"),
            "text_mention" => Some("user"),
            "custom_emoji" => Some("custom_emoji_id"),
            _ => None,
        };
        if let Some(field) = required {
            if object.get(field).is_none_or(Value::is_null) {
                return Err(format!(
                    "entity {i} ({kind}) must have the field \"{field}\""
                ));
            }
        }
        if length > 0 {
            out.push(entity.clone());
        }
    }
    out.sort_by_key(|e| {
        (
            e["offset"].as_u64().unwrap_or(0),
            u64::MAX - e["length"].as_u64().unwrap_or(0),
        )
    });
    Ok(out)
}

/// The text as it is being built, with its length in UTF-16 code units.
#[derive(Default)]
struct Out {
    bytes: Vec<u8>,
    utf16: usize,
}

impl Out {
    /// Appends one byte of the source (a UTF-8 sequence is copied byte by byte).
    fn push_byte(&mut self, b: u8) {
        // A leading byte starts a character; four-byte sequences are surrogate pairs.
        if b & 0xC0 != 0x80 {
            self.utf16 += 1 + usize::from(b >= 0xF0);
        }
        self.bytes.push(b);
    }

    fn push_char(&mut self, c: char) {
        let mut buf = [0; 4];
        self.bytes
            .extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
        self.utf16 += c.len_utf16();
    }
}

/// The byte at `i`, or 0 past the end (TDLib's parsers read a NUL-terminated string).
fn at(text: &[u8], i: usize) -> u8 {
    text.get(i).copied().unwrap_or(0)
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n' | 0x0B | 0x0C)
}

/// Whether `url` is a mention link, `tg://user?id=<id>` (also `tg:user?id=`, any case).
fn link_user_id(url: &str) -> Option<i64> {
    let lower = url.to_ascii_lowercase();
    let rest = lower.strip_prefix("tg:")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let rest = rest.strip_prefix("user")?;
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    let query = rest.strip_prefix('?')?;
    let query = query.split('#').next().unwrap_or("");
    for parameter in query.split('&') {
        let (key, value) = parameter.split_once('=').unwrap_or((parameter, ""));
        if key == "id" {
            return value
                .parse::<i32>()
                .ok()
                .filter(|&id| id > 0)
                .map(i64::from);
        }
    }
    None
}

/// A link Telegram accepts, normalised as Telegram does (`telegram.org` →
/// `http://telegram.org/`); `None` for one it silently drops.
fn check_url(raw: &str) -> Option<String> {
    let raw = raw.trim();
    if raw.is_empty() || raw.chars().any(char::is_whitespace) {
        return None;
    }
    let has_scheme = raw
        .split_once(':')
        .is_some_and(|(s, _)| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric()));
    let full = if has_scheme {
        raw.to_owned()
    } else {
        format!("http://{raw}")
    };
    let parsed = url::Url::parse(&full).ok()?;
    match parsed.scheme() {
        "http" | "https" | "ftp" => {
            let host = parsed.host()?;
            if let url::Host::Domain(domain) = host {
                let tld = domain.rsplit('.').next().unwrap_or("");
                let dotted = domain.contains('.');
                if !(dotted && tld.len() >= 2 && tld.chars().all(|c| c.is_ascii_alphabetic())) {
                    return None;
                }
            }
            // Telegram keeps the link as written (no percent-encoding), with the scheme in
            // lower case and a `/` after the host when there is no path.
            let (scheme, rest) = full.split_once("://")?;
            let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let slash = if rest[host_end..].starts_with('/') {
                ""
            } else {
                "/"
            };
            Some(format!(
                "{}://{}{slash}{}",
                scheme.to_ascii_lowercase(),
                &rest[..host_end],
                &rest[host_end..]
            ))
        }
        "tg" | "ton" | "tonsite" => Some(full),
        _ => None,
    }
}

/// A custom emoji link, `tg://emoji?id=<id>`: the id, or Telegram's error.
fn custom_emoji_id(url: &str) -> Result<String, String> {
    let lower = url.to_ascii_lowercase();
    let rest = lower
        .strip_prefix("tg:")
        .ok_or("Custom emoji URL must have scheme tg")?;
    let rest = rest.strip_prefix("//").unwrap_or(rest);
    let host_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    if &rest[..host_end] != "emoji" {
        return Err("Custom emoji URL must have host \"emoji\"".into());
    }
    let rest = &rest[host_end..];
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    let missing = || "Custom emoji URL must have an emoji identifier".to_owned();
    let query = rest.strip_prefix('?').ok_or_else(missing)?;
    let query = query.split('#').next().unwrap_or("");
    let value = query
        .split('&')
        .find_map(|p| p.strip_prefix("id="))
        .ok_or_else(missing)?;
    let valid = !value.starts_with('0')
        && !value.is_empty()
        && value.bytes().all(|b| b.is_ascii_digit())
        && value.parse::<i64>().is_ok_and(|id| id > 0);
    if !valid {
        return Err("Invalid custom emoji identifier specified".into());
    }
    Ok(value.to_owned())
}

/// A link entity for `url`: a mention, a text link, or nothing when the link is not valid.
fn link_kind(url: &str) -> Option<Kind> {
    match link_user_id(url) {
        Some(id) => Some(Kind::TextMention(id)),
        None => check_url(url).map(Kind::TextLink),
    }
}

// ---------------------------------------------------------------------------------------------
// Legacy Markdown

fn parse_markdown(text: &[u8]) -> Result<(Vec<u8>, Vec<Entity>), String> {
    let size = text.len();
    let mut out = Out::default();
    let mut entities = Vec::new();
    let mut i = 0;
    while i < size {
        let c = text[i];
        if c == b'\\' && matches!(at(text, i + 1), b'_' | b'*' | b'`' | b'[') {
            out.push_byte(text[i + 1]);
            i += 2;
            continue;
        }
        if !matches!(c, b'_' | b'*' | b'`' | b'[') {
            out.push_byte(c);
            i += 1;
            continue;
        }
        let begin = i;
        let end_char = if c == b'[' { b']' } else { c };
        i += 1;
        let mut is_pre = false;
        let mut language = String::new();
        if c == b'`' && at(text, i) == b'`' && at(text, i + 1) == b'`' {
            i += 2;
            is_pre = true;
            let mut language_end = i;
            while language_end < size && !is_space(text[language_end]) && text[language_end] != b'`'
            {
                language_end += 1;
            }
            if i != language_end && language_end < size && text[language_end] != b'`' {
                language = String::from_utf8_lossy(&text[i..language_end]).into_owned();
                i = language_end;
            }
            i = skip_one_newline(text, i);
        }
        let entity_offset = out.utf16;
        while i < size
            && (text[i] != end_char
                || (is_pre && !(at(text, i + 1) == b'`' && at(text, i + 2) == b'`')))
        {
            out.push_byte(text[i]);
            i += 1;
        }
        if i >= size {
            return Err(format!(
                "Can't find end of the entity starting at byte offset {begin}"
            ));
        }
        // `i` is at the closing character.
        if out.utf16 != entity_offset {
            let length = out.utf16 - entity_offset;
            let kind = match c {
                b'_' => Some(Kind::Italic),
                b'*' => Some(Kind::Bold),
                b'[' => {
                    let url = if at(text, i + 1) == b'(' {
                        i += 2;
                        let start = i;
                        while i < size && text[i] != b')' {
                            i += 1;
                        }
                        String::from_utf8_lossy(&text[start..i]).into_owned()
                    } else {
                        String::from_utf8_lossy(&text[begin + 1..i]).into_owned()
                    };
                    link_kind(&url)
                }
                _ if is_pre && language.is_empty() => Some(Kind::Pre),
                _ if is_pre => Some(Kind::PreCode(language)),
                _ => Some(Kind::Code),
            };
            if let Some(kind) = kind {
                entities.push(Entity::new(kind, entity_offset, length));
            }
        }
        if is_pre {
            i += 2;
        }
        i += 1;
    }
    Ok((out.bytes, entities))
}

/// Skips one line break right after the opening of a pre block (`\n`, `\r`, `\r\n` or `\n\r`).
fn skip_one_newline(text: &[u8], i: usize) -> usize {
    let c = at(text, i);
    if c == b'\n' || c == b'\r' {
        let next = at(text, i + 1);
        if (next == b'\n' || next == b'\r') && next != c {
            return i + 2;
        }
        return i + 1;
    }
    i
}

// ---------------------------------------------------------------------------------------------
// MarkdownV2

/// An entity opened and not closed yet.
struct Open {
    kind: Kind,
    /// UTF-16 offset in the result.
    offset: usize,
    /// Byte offset in the source (for errors).
    byte_offset: usize,
    /// Byte length of the result when it opened (a link without a URL uses its text).
    result_len: usize,
}

/// A block quotation being read (MarkdownV2 `>` lines).
struct Quote {
    offset: usize,
    /// UTF-16 offset of the end of its last line (before the line break).
    line_end: usize,
    expandable: bool,
}

const MARKDOWN_V2_RESERVED: &[u8] = b"_*[]()~`>#+-=|{}.!";

fn parse_markdown_v2(text: &[u8]) -> Result<(Vec<u8>, Vec<Entity>), String> {
    let size = text.len();
    let mut out = Out::default();
    let mut entities = Vec::new();
    let mut stack: Vec<Open> = Vec::new();
    let mut quote: Option<Quote> = None;
    let close_quote = |quote: Option<Quote>, end: usize, entities: &mut Vec<Entity>| {
        if let Some(q) = quote {
            if end > q.offset {
                let kind = if q.expandable {
                    Kind::ExpandableBlockquote
                } else {
                    Kind::Blockquote
                };
                entities.push(Entity::new(kind, q.offset, end - q.offset));
            }
        }
    };
    let mut i = 0;
    while i < size {
        let c = text[i];
        let in_code = stack
            .last()
            .is_some_and(|o| matches!(o.kind, Kind::Code | Kind::Pre | Kind::PreCode(_)));
        // Block quotations: lines starting with `>`; `**>` starts a new one right after
        // another (the `**` is an empty bold entity).
        if !in_code && (i == 0 || text[i - 1] == b'\n') {
            if c == b'>' {
                if quote.is_none() {
                    quote = Some(Quote {
                        offset: out.utf16,
                        line_end: out.utf16,
                        expandable: false,
                    });
                }
                i += 1;
                continue;
            }
            if text[i..].starts_with(b"**>") {
                let end = quote.as_ref().map_or(0, |q| q.line_end);
                close_quote(quote.take(), end, &mut entities);
                quote = Some(Quote {
                    offset: out.utf16,
                    line_end: out.utf16,
                    expandable: false,
                });
                i += 3;
                continue;
            }
            if let Some(q) = quote.take() {
                let end = q.line_end;
                close_quote(Some(q), end, &mut entities);
            }
        }
        if c == b'\\' && (1..=126).contains(&at(text, i + 1)) {
            out.push_byte(text[i + 1]);
            i += 2;
            continue;
        }
        if c == b'\n' {
            if let Some(q) = quote.as_mut() {
                q.line_end = out.utf16;
            }
        }
        let reserved: &[u8] = if in_code { b"`" } else { MARKDOWN_V2_RESERVED };
        if !reserved.contains(&c) {
            out.push_byte(c);
            i += 1;
            continue;
        }
        let next = at(text, i + 1);
        // `||` at the end of a quotation's last line makes it expandable (unless it closes a
        // spoiler).
        let top_is_spoiler = stack.last().is_some_and(|o| o.kind == Kind::Spoiler);
        if c == b'|' && next == b'|' && !top_is_spoiler && matches!(at(text, i + 2), b'\n' | 0) {
            if let Some(q) = quote.as_mut() {
                if i + 2 >= size || text[i + 2] == b'\n' {
                    q.expandable = true;
                    q.line_end = out.utf16;
                    i += 2;
                    continue;
                }
            }
        }
        let is_end = stack.last().is_some_and(|top| match top.kind {
            Kind::Bold => c == b'*',
            Kind::Italic => c == b'_' && next != b'_',
            Kind::Code => c == b'`',
            Kind::Pre | Kind::PreCode(_) => c == b'`' && next == b'`' && at(text, i + 2) == b'`',
            Kind::TextLink(_) | Kind::CustomEmoji(_) => c == b']',
            Kind::Underline => c == b'_' && next == b'_',
            Kind::Strikethrough => c == b'~',
            Kind::Spoiler => c == b'|' && next == b'|',
            _ => false,
        });
        if !is_end {
            let byte_offset = i;
            let kind = match c {
                b'_' if next == b'_' => {
                    i += 1;
                    Kind::Underline
                }
                b'_' => Kind::Italic,
                b'*' => Kind::Bold,
                b'~' => Kind::Strikethrough,
                b'|' if next == b'|' => {
                    i += 1;
                    Kind::Spoiler
                }
                b'[' => Kind::TextLink(String::new()),
                b'!' if next == b'[' => {
                    i += 1;
                    Kind::CustomEmoji(String::new())
                }
                b'`' if next == b'`' && at(text, i + 2) == b'`' => {
                    i += 3;
                    let mut kind = Kind::Pre;
                    let mut language_end = i;
                    while language_end < size
                        && !is_space(text[language_end])
                        && text[language_end] != b'`'
                    {
                        language_end += 1;
                    }
                    if i != language_end && language_end < size && text[language_end] != b'`' {
                        kind = Kind::PreCode(
                            String::from_utf8_lossy(&text[i..language_end]).into_owned(),
                        );
                        i = language_end;
                    }
                    i = skip_one_newline(text, i);
                    stack.push(Open {
                        kind,
                        offset: out.utf16,
                        byte_offset,
                        result_len: out.bytes.len(),
                    });
                    continue;
                }
                b'`' => Kind::Code,
                _ => {
                    return Err(format!(
                        "Character '{}' is reserved and must be escaped with the preceding '\\'",
                        char::from(c)
                    ))
                }
            };
            stack.push(Open {
                kind,
                offset: out.utf16,
                byte_offset,
                result_len: out.bytes.len(),
            });
            i += 1;
            continue;
        }
        // The end of the innermost entity.
        let open = stack.pop().expect("is_end implies an open entity");
        let mut skip = out.utf16 == open.offset;
        let kind = match open.kind {
            Kind::Underline | Kind::Spoiler => {
                i += 2;
                open.kind
            }
            Kind::Pre | Kind::PreCode(_) => {
                i += 3;
                open.kind
            }
            Kind::TextLink(_) => {
                let url = if next == b'(' {
                    i += 2;
                    let url_begin = i;
                    let url = read_link(text, &mut i);
                    if i >= size {
                        return Err(format!(
                            "Can't find end of a URL at byte offset {url_begin}"
                        ));
                    }
                    i += 1;
                    url
                } else {
                    i += 1;
                    String::from_utf8_lossy(&out.bytes[open.result_len..]).into_owned()
                };
                match link_kind(&url) {
                    Some(kind) => kind,
                    None => {
                        skip = true;
                        Kind::TextLink(String::new())
                    }
                }
            }
            Kind::CustomEmoji(_) => {
                if next != b'(' {
                    return Err("Custom emoji entity must contain a tg://emoji URL".into());
                }
                i += 2;
                let url_begin = i;
                let url = read_link(text, &mut i);
                if i >= size {
                    return Err(format!(
                        "Can't find end of a custom emoji URL at byte offset {url_begin}"
                    ));
                }
                i += 1;
                Kind::CustomEmoji(custom_emoji_id(&url)?)
            }
            kind => {
                i += 1;
                kind
            }
        };
        if !skip {
            entities.push(Entity::new(kind, open.offset, out.utf16 - open.offset));
        }
    }
    if let Some(open) = stack.last() {
        return Err(format!(
            "Can't find end of {} entity at byte offset {}",
            open.kind.error_name(),
            open.byte_offset
        ));
    }
    let end = out.utf16;
    close_quote(quote, end, &mut entities);
    Ok((out.bytes, entities))
}

/// Reads the `(…)` part of a link up to (not past) the closing `)`, with `\` escapes.
fn read_link(text: &[u8], i: &mut usize) -> String {
    let mut url = Vec::new();
    while *i < text.len() && text[*i] != b')' {
        if text[*i] == b'\\' && (1..=126).contains(&at(text, *i + 1)) {
            url.push(text[*i + 1]);
            *i += 2;
            continue;
        }
        url.push(text[*i]);
        *i += 1;
    }
    String::from_utf8_lossy(&url).into_owned()
}

// ---------------------------------------------------------------------------------------------
// HTML

const HTML_TAGS: &[&str] = &[
    "a",
    "b",
    "strong",
    "i",
    "em",
    "s",
    "strike",
    "del",
    "u",
    "ins",
    "tg-spoiler",
    "tg-emoji",
    "span",
    "pre",
    "code",
    "blockquote",
];

/// Decodes the character reference at `*pos` (which is at `&`): `&lt;` `&gt;` `&amp;`
/// `&quot;` and numeric ones, the `;` optional. Moves `*pos` past it; `None` (and `*pos`
/// untouched) when it is not one, so the `&` stays as text.
fn decode_entity(text: &[u8], pos: &mut usize) -> Result<Option<char>, String> {
    let mut end = *pos + 1;
    let code: u32;
    if at(text, end) == b'#' {
        end += 1;
        let mut value: u64 = 0;
        if at(text, end) == b'x' {
            end += 1;
            while at(text, end).is_ascii_hexdigit() {
                let digit = char::from(text[end]).to_digit(16).unwrap_or(0);
                value = value.saturating_mul(16).saturating_add(u64::from(digit));
                end += 1;
            }
        } else {
            while at(text, end).is_ascii_digit() {
                value = value
                    .saturating_mul(10)
                    .saturating_add(u64::from(text[end] - b'0'));
                end += 1;
            }
        }
        if value == 0 || value >= 0x10FFFF || end - *pos >= 10 {
            return Ok(None);
        }
        code = value as u32;
    } else {
        while at(text, end).is_ascii_alphabetic() {
            end += 1;
        }
        code = match &text[*pos + 1..end] {
            b"lt" => u32::from(b'<'),
            b"gt" => u32::from(b'>'),
            b"amp" => u32::from(b'&'),
            b"quot" => u32::from(b'"'),
            _ => return Ok(None),
        };
    }
    let c = char::from_u32(code).ok_or_else(|| {
        "Text contains invalid Unicode characters after decoding HTML entities, check for \
         unmatched surrogate code units"
            .to_owned()
    })?;
    *pos = if at(text, end) == b';' { end + 1 } else { end };
    Ok(Some(c))
}

/// A tag opened and not closed yet.
struct OpenTag {
    name: String,
    argument: String,
    offset: usize,
    result_len: usize,
}

fn parse_html(text: &[u8]) -> Result<(Vec<u8>, Vec<Entity>), String> {
    let size = text.len();
    let mut out = Out::default();
    let mut entities: Vec<Entity> = Vec::new();
    let mut stack: Vec<OpenTag> = Vec::new();
    // Entities of `code` tags with a language, not (yet) wrapped in a `pre`.
    let mut code_with_language: Vec<usize> = Vec::new();
    let mut i = 0;
    while i < size {
        let c = text[i];
        if c == b'&' {
            if let Some(ch) = decode_entity(text, &mut i)? {
                out.push_char(ch);
                continue;
            }
        }
        if c != b'<' {
            out.push_byte(c);
            i += 1;
            continue;
        }
        let begin = i;
        i += 1;
        if at(text, i) != b'/' {
            // A start tag.
            while i < size && !is_space(text[i]) && text[i] != b'>' {
                i += 1;
            }
            if i >= size {
                return Err(format!("Unclosed start tag at byte offset {begin}"));
            }
            let name = String::from_utf8_lossy(&text[begin + 1..i]).to_lowercase();
            if !HTML_TAGS.contains(&name.as_str()) {
                return Err(format!(
                    "Unsupported start tag \"{name}\" at byte offset {begin}"
                ));
            }
            let mut argument = String::new();
            while at(text, i) != b'>' {
                while i < size && is_space(text[i]) {
                    i += 1;
                }
                if at(text, i) == b'>' {
                    break;
                }
                let attribute_begin = i;
                while i < size && !is_space(text[i]) && text[i] != b'=' && text[i] != b'>' {
                    i += 1;
                }
                let attribute = String::from_utf8_lossy(&text[attribute_begin..i]).to_lowercase();
                if attribute.is_empty() {
                    return Err(format!(
                        "Empty attribute name in the tag \"{name}\" at byte offset {begin}"
                    ));
                }
                while i < size && is_space(text[i]) {
                    i += 1;
                }
                if at(text, i) != b'=' {
                    // `<blockquote expandable>`: the one attribute without a value.
                    if name == "blockquote" && attribute == "expandable" {
                        if i >= size {
                            return Err(format!(
                                "Unclosed start tag \"{name}\" at byte offset {begin}"
                            ));
                        }
                        argument = "1".into();
                        continue;
                    }
                    return Err(format!(
                        "Expected equal sign in declaration of an attribute of the tag \
                         \"{name}\" at byte offset {begin}"
                    ));
                }
                i += 1;
                while i < size && is_space(text[i]) {
                    i += 1;
                }
                if i >= size {
                    return Err(format!(
                        "Unclosed start tag \"{name}\" at byte offset {begin}"
                    ));
                }
                let value;
                if text[i] != b'\'' && text[i] != b'"' {
                    // An unquoted value: a name token.
                    let token_begin = i;
                    while i < size
                        && (text[i].is_ascii_alphanumeric() || text[i] == b'.' || text[i] == b'-')
                    {
                        i += 1;
                    }
                    value = String::from_utf8_lossy(&text[token_begin..i]).to_lowercase();
                    if i < size && !is_space(text[i]) && text[i] != b'>' {
                        return Err(format!(
                            "Unexpected end of name token at byte offset {token_begin}"
                        ));
                    }
                } else {
                    let quote = text[i];
                    i += 1;
                    let mut bytes = Out::default();
                    while i < size && text[i] != quote {
                        if text[i] == b'&' {
                            if let Some(ch) = decode_entity(text, &mut i)? {
                                bytes.push_char(ch);
                                continue;
                            }
                        }
                        bytes.push_byte(text[i]);
                        i += 1;
                    }
                    if i < size {
                        i += 1;
                    }
                    value = String::from_utf8_lossy(&bytes.bytes).into_owned();
                }
                if i >= size {
                    return Err(format!("Unclosed start tag at byte offset {begin}"));
                }
                match (name.as_str(), attribute.as_str()) {
                    ("a", "href") | ("tg-emoji", "emoji-id") => argument = value,
                    ("code", "class") => {
                        if let Some(language) = value.strip_prefix("language-") {
                            argument = language.to_owned();
                        }
                    }
                    ("span", "class") => {
                        if let Some(class) = value.strip_prefix("tg-") {
                            argument = class.to_owned();
                        }
                    }
                    _ => {}
                }
            }
            if name == "span" && argument != "spoiler" {
                return Err(format!(
                    "Tag \"span\" must have class \"tg-spoiler\" at byte offset {begin}"
                ));
            }
            stack.push(OpenTag {
                name,
                argument,
                offset: out.utf16,
                result_len: out.bytes.len(),
            });
            i += 1;
        } else {
            // An end tag.
            let Some(open) = stack.pop() else {
                return Err(format!("Unexpected end tag at byte offset {begin}"));
            };
            i += 1;
            let name_begin = i;
            while i < size && !is_space(text[i]) && text[i] != b'>' {
                i += 1;
            }
            let end_name = String::from_utf8_lossy(&text[name_begin..i]).to_lowercase();
            while i < size && is_space(text[i]) {
                i += 1;
            }
            if at(text, i) != b'>' {
                return Err(format!("Unclosed end tag at byte offset {begin}"));
            }
            i += 1;
            if !end_name.is_empty() && end_name != open.name {
                return Err(format!(
                    "Unmatched end tag at byte offset {begin}, expected \"</{}>\", found \
                     \"</{end_name}>\"",
                    open.name
                ));
            }
            if out.utf16 > open.offset {
                let offset = open.offset;
                let length = out.utf16 - offset;
                let same_range = |e: &Entity| e.offset == offset && e.length == length;
                let kind = match open.name.as_str() {
                    "b" | "strong" => Some(Kind::Bold),
                    "i" | "em" => Some(Kind::Italic),
                    "u" | "ins" => Some(Kind::Underline),
                    "s" | "strike" | "del" => Some(Kind::Strikethrough),
                    "tg-spoiler" | "span" => Some(Kind::Spoiler),
                    "a" => {
                        let url = if open.argument.is_empty() {
                            String::from_utf8_lossy(&out.bytes[open.result_len..]).into_owned()
                        } else {
                            open.argument
                        };
                        link_kind(&url)
                    }
                    "pre" => {
                        // `<pre><code class="language-x">…</code></pre>`: the code told the
                        // language of the pre.
                        let last = entities.len().wrapping_sub(1);
                        let wraps_code = entities.last().is_some_and(same_range)
                            && code_with_language.last() == Some(&last);
                        if wraps_code {
                            code_with_language.pop();
                            None
                        } else {
                            Some(Kind::Pre)
                        }
                    }
                    "code" => match entities.last_mut() {
                        Some(last)
                            if same_range(last)
                                && last.kind == Kind::Pre
                                && !open.argument.is_empty() =>
                        {
                            last.kind = Kind::PreCode(open.argument);
                            None
                        }
                        _ if !open.argument.is_empty() => {
                            // A language for an enclosing `pre`; alone it is plain code.
                            code_with_language.push(entities.len());
                            Some(Kind::PreCode(open.argument))
                        }
                        _ => Some(Kind::Code),
                    },
                    "tg-emoji" => {
                        let valid = open.argument.parse::<i64>().is_ok_and(|id| id != 0);
                        if !valid {
                            return Err("Invalid custom emoji identifier specified".into());
                        }
                        Some(Kind::CustomEmoji(open.argument))
                    }
                    "blockquote" if open.argument.is_empty() => Some(Kind::Blockquote),
                    "blockquote" => Some(Kind::ExpandableBlockquote),
                    _ => None,
                };
                if let Some(kind) = kind {
                    entities.push(Entity::new(kind, offset, length));
                }
            }
        }
    }
    if let Some(open) = stack.last() {
        return Err(format!(
            "Can't find end tag corresponding to start tag \"{}\"",
            open.name
        ));
    }
    // A `code` with a language that no `pre` wrapped is plain code.
    for index in code_with_language {
        entities[index].kind = Kind::Code;
    }
    Ok((out.bytes, entities))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Parses and returns the text with the entities as Bot API JSON.
    fn ok(mode: ParseMode, input: &str) -> (String, Vec<Value>) {
        let f = parse(mode, input).unwrap_or_else(|e| panic!("{input:?} failed: {e}"));
        let entities = f.entities_json();
        (f.text, entities)
    }

    fn err(mode: ParseMode, input: &str) -> String {
        parse(mode, input).expect_err(input)
    }

    fn e(kind: &str, offset: usize, length: usize) -> Value {
        json!({ "type": kind, "offset": offset, "length": length })
    }

    fn with(mut entity: Value, key: &str, value: Value) -> Value {
        entity[key] = value;
        entity
    }

    use ParseMode::{Html, Markdown, MarkdownV2};

    #[test]
    fn the_two_examples_of_issue_19() {
        assert_eq!(
            ok(Html, "peer <b>check</b> ✓"),
            ("peer check ✓".into(), vec![e("bold", 5, 5)])
        );
        assert_eq!(
            ok(MarkdownV2, "aiogram *peer*"),
            ("aiogram peer".into(), vec![e("bold", 8, 4)])
        );
    }

    #[test]
    fn html_documented_examples() {
        let cases: &[(&str, &str, Vec<Value>)] = &[
            (
                "<b>bold</b>, <strong>bold</strong>",
                "bold, bold",
                vec![e("bold", 0, 4), e("bold", 6, 4)],
            ),
            (
                "<i>italic</i>, <em>italic</em>",
                "italic, italic",
                vec![e("italic", 0, 6), e("italic", 8, 6)],
            ),
            (
                "<u>underline</u>, <ins>underline</ins>",
                "underline, underline",
                vec![e("underline", 0, 9), e("underline", 11, 9)],
            ),
            (
                "<s>strikethrough</s>, <strike>strikethrough</strike>, <del>strikethrough</del>",
                "strikethrough, strikethrough, strikethrough",
                vec![
                    e("strikethrough", 0, 13),
                    e("strikethrough", 15, 13),
                    e("strikethrough", 30, 13),
                ],
            ),
            (
                "<span class=\"tg-spoiler\">spoiler</span>, <tg-spoiler>spoiler</tg-spoiler>",
                "spoiler, spoiler",
                vec![e("spoiler", 0, 7), e("spoiler", 9, 7)],
            ),
            (
                "<b>bold <i>italic bold <s>italic bold strikethrough <span class=\"tg-spoiler\">italic bold strikethrough spoiler</span></s> <u>underline italic bold</u></i> bold</b>",
                "bold italic bold italic bold strikethrough italic bold strikethrough spoiler underline italic bold bold",
                vec![
                    e("bold", 0, 103),
                    e("italic", 5, 93),
                    e("strikethrough", 17, 59),
                    e("spoiler", 43, 33),
                    e("underline", 77, 21),
                ],
            ),
            (
                "<a href=\"http://www.example.com/\">inline URL</a>",
                "inline URL",
                vec![with(e("text_link", 0, 10), "url", json!("http://www.example.com/"))],
            ),
            (
                "<a href=\"tg://user?id=123456789\">inline mention of a user</a>",
                "inline mention of a user",
                vec![with(
                    e("text_mention", 0, 24),
                    "user",
                    json!({"id": 123456789, "is_bot": false, "first_name": "User"}),
                )],
            ),
            (
                "<tg-emoji emoji-id=\"5368324170671202286\">👍</tg-emoji>",
                "👍",
                vec![with(e("custom_emoji", 0, 2), "custom_emoji_id", json!("5368324170671202286"))],
            ),
            (
                "<code>inline fixed-width code</code>",
                "inline fixed-width code",
                vec![e("code", 0, 23)],
            ),
            (
                "<pre>pre-formatted fixed-width code block</pre>",
                "pre-formatted fixed-width code block",
                vec![e("pre", 0, 36)],
            ),
            (
                "<pre><code class=\"language-python\">pre-formatted fixed-width code block written in the Python programming language</code></pre>",
                "pre-formatted fixed-width code block written in the Python programming language",
                vec![with(e("pre", 0, 79), "language", json!("python"))],
            ),
            (
                "<blockquote>Block quotation started\nBlock quotation continued\nThe last line of the block quotation</blockquote>",
                "Block quotation started\nBlock quotation continued\nThe last line of the block quotation",
                vec![e("blockquote", 0, 86)],
            ),
            (
                "<blockquote expandable>Expandable block quotation started\nHidden by default</blockquote>",
                "Expandable block quotation started\nHidden by default",
                vec![e("expandable_blockquote", 0, 52)],
            ),
        ];
        for (input, text, entities) in cases {
            assert_eq!(
                ok(Html, input),
                (text.to_string(), entities.clone()),
                "{input}"
            );
        }
    }

    #[test]
    fn html_character_references() {
        assert_eq!(
            ok(Html, "&lt;&gt;&amp;&quot;&laquo;&raquo;&#12345678;").0,
            "<>&\"&laquo;&raquo;&#12345678;"
        );
        assert_eq!(ok(Html, "&#65;&#x42;&#x1F600;&lt").0, "AB😀<");
        assert_eq!(ok(Html, "a & b").0, "a & b");
        let surrogate = "Text contains invalid Unicode characters after decoding HTML entities, \
                         check for unmatched surrogate code units";
        assert_eq!(err(Html, "&#57311;"), surrogate);
        assert_eq!(err(Html, "&#xDFDF"), surrogate);
        // An attribute value is decoded too.
        assert_eq!(
            ok(Html, "<a   href=  'telegram.org?&lt;'   > </a>").1,
            vec![with(
                e("text_link", 0, 1),
                "url",
                json!("http://telegram.org/?<")
            )]
        );
    }

    #[test]
    fn html_links_code_and_nesting() {
        assert_eq!(
            ok(Html, "<a href=telegram.org>x</a>").1,
            vec![with(
                e("text_link", 0, 1),
                "url",
                json!("http://telegram.org/")
            )]
        );
        // Without href the text is the link; an invalid link is no entity.
        assert_eq!(
            ok(Html, "<a>telegram.org</a>").1,
            vec![with(
                e("text_link", 0, 12),
                "url",
                json!("http://telegram.org/")
            )]
        );
        assert_eq!(ok(Html, "<a href=\"nope\">x</a>").1, Vec::<Value>::new());
        assert_eq!(
            ok(Html, "<b></b>x").1,
            Vec::<Value>::new(),
            "an empty entity is dropped"
        );
        // A language on a code outside pre is dropped; pre inside code takes it.
        assert_eq!(
            ok(Html, "<code class=\"language-rust\">x</code>").1,
            vec![e("code", 0, 1)]
        );
        assert_eq!(
            ok(Html, "<code class=\"language-fift\"><pre>x</pre></code>").1,
            vec![with(e("pre", 0, 1), "language", json!("fift"))]
        );
        assert_eq!(
            ok(Html, "<pre><code>x</code></pre>").1,
            vec![e("pre", 0, 1)]
        );
        assert_eq!(
            ok(Html, "<I>a</i><B Aba = caba>b</>").1,
            vec![e("italic", 0, 1), e("bold", 1, 1)],
            "case-insensitive tags, unquoted attributes, `</>`"
        );
    }

    #[test]
    fn html_errors_have_telegrams_wording() {
        let cases = [
            ("🏟 🏟&lt;<abacaba", "Unclosed start tag at byte offset 13"),
            ("🏟 🏟&lt;<abac aba>", "Unsupported start tag \"abac\" at byte offset 13"),
            ("a <x> b", "Unsupported start tag \"x\" at byte offset 2"),
            ("🏟 🏟&lt;<i   =aba>", "Empty attribute name in the tag \"i\" at byte offset 13"),
            (
                "🏟 🏟&lt;<i    aba>",
                "Expected equal sign in declaration of an attribute of the tag \"i\" at byte offset 13",
            ),
            ("🏟 🏟&lt;<i    aba  =  ", "Unclosed start tag \"i\" at byte offset 13"),
            ("🏟 🏟&lt;<i    aba  =  190azAz-.,", "Unexpected end of name token at byte offset 27"),
            ("🏟 🏟&lt;<i    aba  =  \"&lt;&gt;&quot;>", "Unclosed start tag at byte offset 13"),
            ("🏟 🏟&lt;</", "Unexpected end tag at byte offset 13"),
            ("🏟 🏟&lt;<b></b></", "Unexpected end tag at byte offset 20"),
            ("🏟 🏟&lt;<i>a</i   ", "Unclosed end tag at byte offset 17"),
            (
                "🏟 🏟&lt;<i>a</em   >",
                "Unmatched end tag at byte offset 17, expected \"</i>\", found \"</em>\"",
            ),
            ("<b>bold", "Can't find end tag corresponding to start tag \"b\""),
            ("<span>x</span>", "Tag \"span\" must have class \"tg-spoiler\" at byte offset 0"),
            ("<tg-emoji emoji-id=\"x\">👍</tg-emoji>", "Invalid custom emoji identifier specified"),
        ];
        for (input, message) in cases {
            assert_eq!(err(Html, input), message, "{input}");
        }
    }

    #[test]
    fn utf16_offsets_count_astral_characters_twice() {
        // 🏟 is 4 bytes and 2 UTF-16 code units; ➡️ is 2 characters (arrow + VS16), 6 bytes.
        assert_eq!(
            ok(Html, "🏟 🏟<i>🏟 &lt🏟</i>"),
            ("🏟 🏟🏟 <🏟".into(), vec![e("italic", 5, 6)])
        );
        assert_eq!(
            ok(Html, "➡️ ➡️<b>➡️ ➡️</b>"),
            ("➡️ ➡️➡️ ➡️".into(), vec![e("bold", 5, 5)])
        );
        assert_eq!(
            ok(MarkdownV2, "😀 *é 😀*"),
            ("😀 é 😀".into(), vec![e("bold", 3, 4)])
        );
        assert_eq!(ok(Markdown, "𝄞_x_"), ("𝄞x".into(), vec![e("italic", 2, 1)]));
    }

    #[test]
    fn markdown_v2_documented_examples() {
        let cases: &[(&str, &str, Vec<Value>)] = &[
            ("*bold \\*text*", "bold *text", vec![e("bold", 0, 10)]),
            ("_italic \\*text_", "italic *text", vec![e("italic", 0, 12)]),
            ("__underline__", "underline", vec![e("underline", 0, 9)]),
            ("~strikethrough~", "strikethrough", vec![e("strikethrough", 0, 13)]),
            ("||spoiler||", "spoiler", vec![e("spoiler", 0, 7)]),
            (
                "*bold _italic bold ~italic bold strikethrough ||italic bold strikethrough spoiler||~ __underline italic bold___ bold*",
                "bold italic bold italic bold strikethrough italic bold strikethrough spoiler underline italic bold bold",
                vec![
                    e("bold", 0, 103),
                    e("italic", 5, 93),
                    e("strikethrough", 17, 59),
                    e("spoiler", 43, 33),
                    e("underline", 77, 21),
                ],
            ),
            (
                "[inline URL](http://www.example.com/)",
                "inline URL",
                vec![with(e("text_link", 0, 10), "url", json!("http://www.example.com/"))],
            ),
            (
                "[inline mention of a user](tg://user?id=123456789)",
                "inline mention of a user",
                vec![with(
                    e("text_mention", 0, 24),
                    "user",
                    json!({"id": 123456789, "is_bot": false, "first_name": "User"}),
                )],
            ),
            (
                "![👍](tg://emoji?id=5368324170671202286)",
                "👍",
                vec![with(e("custom_emoji", 0, 2), "custom_emoji_id", json!("5368324170671202286"))],
            ),
            ("`inline fixed-width code`", "inline fixed-width code", vec![e("code", 0, 23)]),
            (
                "```\npre-formatted fixed-width code block\n```",
                "pre-formatted fixed-width code block\n",
                vec![e("pre", 0, 37)],
            ),
            (
                "```python\npre-formatted fixed-width code block written in the Python programming language\n```",
                "pre-formatted fixed-width code block written in the Python programming language\n",
                vec![with(e("pre", 0, 80), "language", json!("python"))],
            ),
        ];
        for (input, text, entities) in cases {
            assert_eq!(
                ok(MarkdownV2, input),
                (text.to_string(), entities.clone()),
                "{input}"
            );
        }
    }

    #[test]
    fn markdown_v2_block_quotations() {
        let input = ">Block quotation started\n>Block quotation continued\n>The last line of the block quotation\n**>The expandable block quotation started right after the previous block quotation\n>It is separated from the previous block quotation by an empty bold entity\n>The last line of the expandable block quotation with the expandability mark||";
        let (text, entities) = ok(MarkdownV2, input);
        let first = "Block quotation started\nBlock quotation continued\nThe last line of the block quotation";
        let second = "The expandable block quotation started right after the previous block quotation\nIt is separated from the previous block quotation by an empty bold entity\nThe last line of the expandable block quotation with the expandability mark";
        assert_eq!(text, format!("{first}\n{second}"));
        let first_len = utf16_len(first);
        assert_eq!(
            entities,
            vec![
                e("blockquote", 0, first_len),
                e("expandable_blockquote", first_len + 1, utf16_len(second)),
            ]
        );
        assert_eq!(
            ok(MarkdownV2, "say\n>quoted *bold*\nafter"),
            (
                "say\nquoted bold\nafter".into(),
                vec![e("blockquote", 4, 11), e("bold", 11, 4)]
            )
        );
        assert_eq!(
            err(MarkdownV2, "a > b"),
            "Character '>' is reserved and must be escaped with the preceding '\\'"
        );
    }

    #[test]
    fn markdown_v2_escaping() {
        for c in "_*[]()~`>#+-=|{}.!".chars() {
            let escaped = format!("x\\{c}");
            assert_eq!(ok(MarkdownV2, &escaped).0, format!("x{c}"), "{escaped}");
        }
        for c in "]()#+-={}.!".chars() {
            assert_eq!(
                err(MarkdownV2, &format!("x{c}")),
                format!("Character '{c}' is reserved and must be escaped with the preceding '\\'")
            );
        }
        assert_eq!(
            err(MarkdownV2, "Version 1.0"),
            "Character '.' is reserved and must be escaped with the preceding '\\'"
        );
        assert_eq!(ok(MarkdownV2, "\\\\").0, "\\");
        assert_eq!(
            ok(MarkdownV2, "\\a\\1").0,
            "a1",
            "any ASCII character may be escaped"
        );
        // Inside code only ` and \ are special.
        assert_eq!(
            ok(MarkdownV2, "`a_*.\\`b`"),
            ("a_*.`b".into(), vec![e("code", 0, 6)])
        );
        // Inside (...) of a link, ) and \ are escaped.
        assert_eq!(
            ok(MarkdownV2, "[t](https://telegram.dog?\\\\\\()").1,
            vec![with(
                e("text_link", 0, 1),
                "url",
                json!("https://telegram.dog/?\\(")
            )]
        );
        // Underline wins over italic, left to right; an empty bold separates them.
        assert_eq!(
            ok(MarkdownV2, "___italic underline_**__"),
            (
                "italic underline".into(),
                vec![e("italic", 0, 16), e("underline", 0, 16)]
            )
        );
    }

    #[test]
    fn markdown_v2_errors_have_telegrams_wording() {
        let cases = [
            (
                "🏟 🏟_abacaba",
                "Can't find end of Italic entity at byte offset 9",
            ),
            (
                "🏟 🏟_abac * asd ",
                "Can't find end of Bold entity at byte offset 15",
            ),
            ("🏟 🏟`", "Can't find end of Code entity at byte offset 9"),
            ("🏟 🏟```", "Can't find end of Pre entity at byte offset 9"),
            (
                "🏟 🏟```a ",
                "Can't find end of PreCode entity at byte offset 9",
            ),
            (
                "🏟 🏟__",
                "Can't find end of Underline entity at byte offset 9",
            ),
            (
                "🏟 🏟||test\\|",
                "Can't find end of Spoiler entity at byte offset 9",
            ),
            (
                "[telegram\\.org](asd\\)",
                "Can't find end of a URL at byte offset 16",
            ),
            (
                "🏟 🏟![👍]",
                "Custom emoji entity must contain a tg://emoji URL",
            ),
            (
                "🏟 🏟![👍](t://emoji?id=1234)",
                "Custom emoji URL must have scheme tg",
            ),
            (
                "🏟 🏟![👍](tg:emojis?id=1234)",
                "Custom emoji URL must have host \"emoji\"",
            ),
            (
                "🏟 🏟![👍](tg://emoji#test)",
                "Custom emoji URL must have an emoji identifier",
            ),
            (
                "🏟 🏟![👍](tg://emoji?id=025)",
                "Invalid custom emoji identifier specified",
            ),
            (
                "🏟 🏟![👍](tg://emoji?id=1234",
                "Can't find end of a custom emoji URL at byte offset 17",
            ),
            (
                "a!",
                "Character '!' is reserved and must be escaped with the preceding '\\'",
            ),
        ];
        for (input, message) in cases {
            assert_eq!(err(MarkdownV2, input), message, "{input}");
        }
    }

    #[test]
    fn markdown_v2_more_cases() {
        assert_eq!(
            ok(MarkdownV2, "🏟 🏟_🏟 __🏟___"),
            (
                "🏟 🏟🏟 🏟".into(),
                vec![e("italic", 5, 5), e("underline", 8, 2)]
            )
        );
        assert_eq!(
            ok(MarkdownV2, "🏟 🏟```🏟\n🏟```"),
            (
                "🏟 🏟🏟".into(),
                vec![with(e("pre", 5, 2), "language", json!("🏟"))]
            )
        );
        assert_eq!(ok(MarkdownV2, "[ ](as)"), (" ".into(), vec![]));
        assert_eq!(
            ok(MarkdownV2, "[telegram\\.org]").1,
            vec![with(
                e("text_link", 0, 12),
                "url",
                json!("http://telegram.org/")
            )]
        );
        assert_eq!(
            ok(MarkdownV2, "🏟 🏟![👍](TG://EMoJI/?test=1231&id=25#id=32)a"),
            (
                "🏟 🏟👍a".into(),
                vec![with(
                    e("custom_emoji", 5, 2),
                    "custom_emoji_id",
                    json!("25")
                )]
            )
        );
    }

    #[test]
    fn markdown_legacy_documented_examples() {
        let cases: &[(&str, &str, Vec<Value>)] = &[
            ("*bold text*", "bold text", vec![e("bold", 0, 9)]),
            ("_italic text_", "italic text", vec![e("italic", 0, 11)]),
            (
                "[inline URL](http://www.example.com/)",
                "inline URL",
                vec![with(
                    e("text_link", 0, 10),
                    "url",
                    json!("http://www.example.com/"),
                )],
            ),
            (
                "[inline mention of a user](tg://user?id=123456789)",
                "inline mention of a user",
                vec![with(
                    e("text_mention", 0, 24),
                    "user",
                    json!({"id": 123456789, "is_bot": false, "first_name": "User"}),
                )],
            ),
            (
                "`inline fixed-width code`",
                "inline fixed-width code",
                vec![e("code", 0, 23)],
            ),
            (
                "```\npre-formatted fixed-width code block\n```",
                "pre-formatted fixed-width code block\n",
                vec![e("pre", 0, 37)],
            ),
            (
                "```python\nprint(1)\n```",
                "print(1)\n",
                vec![with(e("pre", 0, 9), "language", json!("python"))],
            ),
            // No nesting; escaping inside entities is not possible (close and reopen).
            ("*a _b_ c*", "a _b_ c", vec![e("bold", 0, 7)]),
            (
                "_snake_\\__case_",
                "snake_case",
                vec![e("italic", 0, 5), e("italic", 6, 4)],
            ),
            (
                "*2*\\**2=4*",
                "2*2=4",
                vec![e("bold", 0, 1), e("bold", 2, 3)],
            ),
            ("1.5 + (2) = 3.5!", "1.5 + (2) = 3.5!", vec![]),
        ];
        for (input, text, entities) in cases {
            assert_eq!(
                ok(Markdown, input),
                (text.to_string(), entities.clone()),
                "{input}"
            );
        }
        assert_eq!(
            err(Markdown, "🏟 *bold"),
            "Can't find end of the entity starting at byte offset 5"
        );
        assert_eq!(
            err(Markdown, "a ```x"),
            "Can't find end of the entity starting at byte offset 2"
        );
    }

    #[test]
    fn parse_modes_are_case_insensitive() {
        assert_eq!(ParseMode::parse("html"), Ok(Some(Html)));
        assert_eq!(ParseMode::parse("MarkdownV2"), Ok(Some(MarkdownV2)));
        assert_eq!(ParseMode::parse("MARKDOWN"), Ok(Some(Markdown)));
        assert_eq!(ParseMode::parse(""), Ok(None));
        assert_eq!(ParseMode::parse("bbcode"), Err(()));
    }

    #[test]
    fn trimming_cuts_entities() {
        let (text, entities) = trim(" \n*a* b \n", vec![e("bold", 0, 5), e("italic", 8, 1)]);
        assert_eq!(text, "*a* b");
        assert_eq!(entities, vec![e("bold", 0, 3)]);
        let f = parse(Html, "<b>hi</b>\n").unwrap();
        assert_eq!(
            trim(&f.text, f.entities_json()),
            ("hi".into(), vec![e("bold", 0, 2)])
        );
    }

    #[test]
    fn explicit_entities_are_checked_against_the_text() {
        let given = json!([e("italic", 3, 2), e("bold", 0, 2)]);
        assert_eq!(
            check_entities("😀 ok", &given).unwrap(),
            vec![e("bold", 0, 2), e("italic", 3, 2)]
        );
        assert!(check_entities("😀 ok", &json!([e("bold", 4, 2)]))
            .unwrap_err()
            .contains("beyond the end"));
        assert!(check_entities("x", &json!([e("blink", 0, 1)]))
            .unwrap_err()
            .contains("unsupported entity type"));
        assert!(check_entities("x", &json!([e("text_link", 0, 1)]))
            .unwrap_err()
            .contains("\"url\""));
        assert!(check_entities("x", &json!({"type": "bold"})).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn parsing_never_panics_and_entities_fit(input in any::<String>()) {
            for mode in [Html, MarkdownV2, Markdown] {
                if let Ok(f) = parse(mode, &input) {
                    let len = utf16_len(&f.text);
                    for entity in &f.entities {
                        prop_assert!(entity.length > 0);
                        prop_assert!(entity.offset + entity.length <= len);
                    }
                }
            }
        }

        #[test]
        fn markup_heavy_input_never_panics(
            input in proptest::string::string_regex(
                "([<>/&#;=\"' _*`~|\\[\\]()!\\\\\n.a-z0-9🏟é-]|<b>|</b>|<a href=|&lt|&#x|```|\\|\\||\\*\\*>|tg://emoji\\?id=1)*"
            ).unwrap()
        ) {
            for mode in [Html, MarkdownV2, Markdown] {
                if let Ok(f) = parse(mode, &input) {
                    let len = utf16_len(&f.text);
                    for entity in &f.entities {
                        prop_assert!(entity.offset + entity.length <= len);
                    }
                }
            }
        }
    }
}
