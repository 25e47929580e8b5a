//! `classify_json` over every update fixture of the repository, against teloxide-core where it
//! can read them, and on the shapes it must refuse with a reason.

use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use courier_notes::{classify_json, Incoming, Input, UnreadableUpdate, UserInfo};
use teloxide_core::types::{Update, UpdateKind};

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/updates")
}

fn updates_in(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.expect("dir entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).expect("update file"))
        })
        .filter(|(name, _)| name.ends_with(".json") && name != "index.json")
        .collect();
    out.sort();
    out
}

fn fixtures() -> Vec<(String, Vec<u8>)> {
    updates_in(&fixtures_dir())
}

/// The fixtures, plus the updates of a local corpus of real updates when
/// `COURIER_UPDATE_CORPUS` names its directory (not part of the repository).
fn fixtures_and_corpus() -> Vec<(String, Vec<u8>)> {
    let mut all = fixtures();
    if let Some(dir) = std::env::var_os("COURIER_UPDATE_CORPUS") {
        let corpus = updates_in(Path::new(&dir));
        eprintln!(
            "and {} updates from {}",
            corpus.len(),
            dir.to_string_lossy()
        );
        all.extend(corpus);
    }
    all
}

fn at(unix: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(unix, 0).unwrap()
}

fn fixture_user() -> UserInfo {
    UserInfo {
        id: 7001,
        first_name: "Fixture".into(),
        last_name: None,
        username: Some("fixture_user".into()),
    }
}

fn old() -> UserInfo {
    UserInfo {
        id: 7002,
        first_name: "Old".into(),
        last_name: None,
        username: None,
    }
}

fn message(chat_id: i64, from: UserInfo, date: i64, input: Input) -> Option<Incoming> {
    Some(Incoming {
        chat_id,
        from: Some(from),
        date: at(date),
        input,
    })
}

fn text(s: &str) -> Input {
    Input::Text(s.into())
}

fn command(name: &str) -> Input {
    Input::Command {
        name: name.into(),
        args: String::new(),
    }
}

/// What the bot must read from each fixture. A new fixture needs a line here.
fn expected(name: &str) -> Option<Option<Incoming>> {
    let group = -1_001_700_000_001;
    let t = 1_764_133_380;
    Some(match name {
        "01-message-text.json" => message(7001, fixture_user(), t, text("hello from a fixture")),
        "02-message-command-entity.json" => message(7001, fixture_user(), t, command("help")),
        "03-message-sticker.json" => {
            message(7001, fixture_user(), t, Input::NonText { kind: "sticker" })
        }
        "04-message-group-command-suffix.json" => {
            message(group, fixture_user(), t, command("history"))
        }
        "05-edited-message.json"
        | "06-channel-post.json"
        | "07-callback-query.json"
        | "08-inline-query.json"
        | "09-chosen-inline-result.json"
        | "10-poll.json"
        | "11-poll-answer.json"
        | "13-message-reaction.json"
        | "14-chat-boost.json"
        | "15-pre-checkout-query.json"
        | "16-unknown-future-kind.json" => None,
        "12-my-chat-member-blocked.json" => {
            message(7001, fixture_user(), t, Input::BotBlocked(true))
        }
        "17-message-legacy-no-is-bot.json" => message(7002, old(), t, text("legacy client")),
        "18-message-unicode-escapes.json" => message(7001, fixture_user(), t, text("café 🦀 日本")),
        "19-message-text-future-fields.json" => {
            message(7002, old(), t + 10, text("a note with »future« markup"))
        }
        "20-message-future-kind.json" => message(
            7002,
            old(),
            t + 20,
            Input::NonText {
                kind: "message of this kind",
            },
        ),
        "21-my-chat-member-unblocked-legacy.json" => {
            message(7002, old(), t + 30, Input::BotBlocked(false))
        }
        _ => return None,
    })
}

#[test]
fn every_fixture_is_read_as_expected() {
    let all = fixtures();
    assert!(all.len() >= 21, "fixtures present: {}", all.len());
    let mut missing = Vec::new();
    for (name, raw) in &all {
        let Some(want) = expected(name) else {
            missing.push(name.clone());
            continue;
        };
        assert_eq!(classify_json(raw), Ok(want), "{name}");
    }
    assert!(
        missing.is_empty(),
        "fixtures without an expectation: {missing:?}"
    );
}

/// Where teloxide-core reads an update, the lenient reader agrees with it on everything the bot
/// uses; where it reads a message's text, the bot reads the same text. Every update is readable
/// (none of these is malformed). Set `COURIER_UPDATE_CORPUS` to check a corpus of real updates
/// too.
#[test]
fn the_lenient_reader_agrees_with_teloxide_wherever_teloxide_reads_the_update() {
    let mut compared = 0;
    let mut teloxide_fails = Vec::new();
    for (name, raw) in fixtures_and_corpus() {
        let ours = classify_json(&raw).unwrap_or_else(|e| panic!("{name}: {e}"));
        let Ok(update) = serde_json::from_slice::<Update>(&raw) else {
            teloxide_fails.push(name);
            continue;
        };
        match &update.kind {
            UpdateKind::Message(m) => {
                let ours = ours.unwrap_or_else(|| panic!("{name}: a message is not ignored"));
                assert_eq!(ours.chat_id, m.chat.id.0, "{name}");
                assert_eq!(ours.date, m.date, "{name}");
                let from = m.from.as_ref().map(|u| UserInfo {
                    id: u.id.0 as i64,
                    first_name: u.first_name.clone(),
                    last_name: u.last_name.clone(),
                    username: u.username.clone(),
                });
                assert_eq!(ours.from, from, "{name}");
                if let Some(t) = m.text() {
                    let same = match &ours.input {
                        Input::Text(s) => s == t,
                        Input::Command { name, .. } => t
                            .trim_start_matches('/')
                            .to_ascii_lowercase()
                            .starts_with(name),
                        _ => false,
                    };
                    assert!(same, "{name}: {:?} vs {t:?}", ours.input);
                }
                compared += 1;
            }
            UpdateKind::MyChatMember(m) => {
                let blocked = if !m.chat.is_private() {
                    None
                } else if m.new_chat_member.kind.is_banned() {
                    Some(true)
                } else if m.new_chat_member.kind.is_member() {
                    Some(false)
                } else {
                    None
                };
                assert_eq!(
                    ours.map(|i| i.input),
                    blocked.map(Input::BotBlocked),
                    "{name}"
                );
                compared += 1;
            }
            UpdateKind::Error(_) => teloxide_fails.push(name),
            _ => assert_eq!(
                ours, None,
                "{name}: kinds the bot does not handle are ignored"
            ),
        }
    }
    eprintln!(
        "compared with teloxide-core: {compared}; teloxide-core cannot read: {teloxide_fails:?}"
    );
    assert!(compared >= 8, "compared {compared} fixtures");
}

fn unreadable(raw: &str) -> String {
    match classify_json(raw.as_bytes()) {
        Err(UnreadableUpdate { reason }) => reason,
        other => panic!("{raw}: expected unreadable, got {other:?}"),
    }
}

const CHAT: &str = r#""chat":{"id":7,"type":"private","first_name":"Ada"}"#;
const FROM: &str = r#""from":{"id":7,"is_bot":false,"first_name":"Ada"}"#;

#[test]
fn a_message_without_what_the_bot_needs_is_unreadable_with_the_field_named() {
    let cases = [
        (
            format!(
                r#"{{"update_id":1,"message":{{{CHAT},{FROM},"date":"yesterday","text":"x"}}}}"#
            ),
            "message.date",
        ),
        (
            format!(r#"{{"update_id":1,"message":{{{CHAT},{FROM},"text":"x"}}}}"#),
            "missing field `date`",
        ),
        (
            format!(r#"{{"update_id":1,"message":{{{FROM},"date":1,"text":"x"}}}}"#),
            "missing field `chat`",
        ),
        (
            format!(
                r#"{{"update_id":1,"message":{{"chat":{{"id":"7"}},{FROM},"date":1,"text":"x"}}}}"#
            ),
            "message.chat.id",
        ),
        (
            format!(
                r#"{{"update_id":1,"message":{{{CHAT},"from":{{"id":"7"}},"date":1,"text":"x"}}}}"#
            ),
            "message.from.id",
        ),
        (
            format!(r#"{{"update_id":1,"message":{{{CHAT},{FROM},"date":1,"text":42}}}}"#),
            "message.text",
        ),
        (
            format!(
                r#"{{"update_id":1,"message":{{{CHAT},{FROM},"date":9999999999999999,"text":"x"}}}}"#
            ),
            "message.date: 9999999999999999 is not a valid date",
        ),
        (r#"{"update_id":1,"message":"hello"}"#.to_owned(), "message"),
    ];
    for (raw, want) in cases {
        let reason = unreadable(&raw);
        assert!(
            reason.contains(want),
            "{raw}: {reason:?} should name {want:?}"
        );
        assert!(!reason.contains("Raw"), "no internal type names: {reason}");
    }
}

#[test]
fn bodies_that_are_no_update_object_are_unreadable() {
    for raw in [
        "",
        "not json",
        "[1,2]",
        "42",
        "{\"update_id\":",
        "{} trailing",
    ] {
        let reason = unreadable(raw);
        assert!(
            reason.starts_with("not a Telegram update") || reason.starts_with("not valid JSON"),
            "{raw}: {reason}"
        );
    }
}

#[test]
fn what_the_bot_does_not_need_is_never_read() {
    // A legacy sender (no is_bot, no first_name), unknown fields, an ignored kind with garbage
    // inside, a null message: read, or ignored, never refused.
    let raw = format!(
        r#"{{"update_id":1,"edited_message":"garbage","message":{{{CHAT},"from":{{"id":9}},"date":1,"text":"hi","entities":7,"future":[{{}}]}}}}"#
    );
    let got = classify_json(raw.as_bytes()).unwrap().unwrap();
    assert_eq!(got.from.unwrap().first_name, "");
    assert_eq!(got.input, Input::Text("hi".into()));
    for ignored in [
        r#"{"update_id":1,"message":null}"#,
        r#"{"update_id":1,"edited_message":{"chat":"x"}}"#,
        r#"{"update_id":1,"brand_new_kind":{"chat":{"id":"x"}}}"#,
        r#"{"update_id":1}"#,
    ] {
        assert_eq!(classify_json(ignored.as_bytes()), Ok(None), "{ignored}");
    }
}

#[test]
fn non_text_kinds_are_named_even_when_telegram_sends_two_fields_for_one() {
    let kind = |fields: &str| {
        let raw = format!(r#"{{"update_id":1,"message":{{{CHAT},{FROM},"date":1,{fields}}}}}"#);
        match classify_json(raw.as_bytes()).unwrap().unwrap().input {
            Input::NonText { kind } => kind,
            other => panic!("{fields}: {other:?}"),
        }
    };
    assert_eq!(kind(r#""animation":{},"document":{}"#), "GIF");
    assert_eq!(kind(r#""venue":{},"location":{}"#), "venue");
    assert_eq!(kind(r#""photo":[],"caption":"hi""#), "photo");
    assert_eq!(kind(r#""new_chat_members":[]"#), "message of this kind");
}

#[test]
fn my_chat_member_is_read_in_private_chats_only_and_needs_the_chat_type() {
    let raw = |status: &str, chat: &str| {
        format!(
            r#"{{"update_id":9,"my_chat_member":{{"chat":{chat},
        "from":{{"id":7,"first_name":"Ada"}},"date":1764133380,
        "old_chat_member":{{"user":{{"id":1,"first_name":"B"}},"status":"member"}},
        "new_chat_member":{{"user":{{"id":1,"first_name":"B"}},"status":"{status}"}}}}}}"#
        )
    };
    let private = r#"{"id":7,"type":"private","first_name":"Ada"}"#;
    let read = |s: String| classify_json(s.as_bytes()).map(|i| i.map(|i| i.input));
    assert_eq!(
        read(raw("kicked", private)),
        Ok(Some(Input::BotBlocked(true)))
    );
    assert_eq!(
        read(raw("member", private)),
        Ok(Some(Input::BotBlocked(false)))
    );
    assert_eq!(read(raw("left", private)), Ok(None));
    let group = r#"{"id":-5,"type":"group","title":"g"}"#;
    assert_eq!(
        read(raw("kicked", group)),
        Ok(None),
        "groups are not a block"
    );
    let untyped = r#"{"id":7}"#;
    assert!(unreadable(&raw("kicked", untyped)).contains("my_chat_member.chat"));
    let no_status = raw("kicked", private).replace(r#""status":"kicked""#, r#""x":1"#);
    assert!(unreadable(&no_status).contains("my_chat_member.new_chat_member"));
}
