//! `classify_json` on hand-written updates of every kind the quiz bot reads or ignores
//! (`tests/fixtures/`), and on the shapes it must refuse, with the field named.

use std::path::Path;

use chrono::DateTime;
use courier_quiz::{classify_json, Command, Incoming, Input, UnreadableUpdate, UserInfo};

fn fixtures() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let path = e.expect("dir entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).expect("fixture"))
        })
        .filter(|(name, _)| name.ends_with(".json"))
        .collect();
    out.sort();
    out
}

fn user(id: i64, first_name: &str) -> UserInfo {
    UserInfo {
        id,
        first_name: first_name.into(),
        last_name: None,
        username: None,
    }
}

fn read(chat_id: i64, from: UserInfo, date: i64, input: Input) -> Option<Incoming<Input>> {
    Some(Incoming {
        chat_id,
        from: Some(from),
        date: DateTime::from_timestamp(date, 0).unwrap(),
        input,
    })
}

fn command(name: &str, args: &str) -> Input {
    Input::Command(Command {
        name: name.into(),
        args: args.into(),
    })
}

fn button(query_id: &str, message_id: i64, data: &str) -> Input {
    Input::Button {
        query_id: query_id.into(),
        message_id,
        data: data.into(),
    }
}

/// What the bot must read from each fixture. A new fixture needs a line here.
fn expected(name: &str) -> Option<Option<Incoming<Input>>> {
    let quinn = user(3001, "Quinn");
    let group = -1_002_000_000_001;
    Some(match name {
        "01-message-start-private.json" => read(
            3001,
            UserInfo {
                last_name: Some("Zed".into()),
                username: Some("quinn_z".into()),
                ..user(3001, "Quinn")
            },
            1_764_756_000,
            command("start", ""),
        ),
        "02-message-quiz-group-suffix.json" => read(
            group,
            user(3002, "Rosa"),
            1_764_756_060,
            command("quiz", ""),
        ),
        "03-message-text-private.json" => read(3001, quinn, 1_764_756_120, Input::Other),
        "04-message-sticker-private.json" => read(3001, quinn, 1_764_756_180, Input::Other),
        "05-message-text-group.json" => None,
        "06-callback-query-private.json" => read(
            3001,
            quinn,
            1_764_756_300,
            button("7190000000000000123", 14, "q:1:0:1"),
        ),
        "07-callback-query-inaccessible-message.json" => {
            read(3001, quinn, 0, button("7190000000000000124", 3, "q:1:4:0"))
        }
        "08-callback-query-inline-message.json" => None,
        "09-callback-query-game.json" => read(
            3001,
            quinn,
            1_764_756_360,
            button("7190000000000000126", 15, ""),
        ),
        "10-my-chat-member-blocked.json" => {
            read(3001, quinn, 1_764_756_420, Input::BotBlocked(true))
        }
        "11-my-chat-member-unblocked.json" => {
            read(3001, quinn, 1_764_756_480, Input::BotBlocked(false))
        }
        "12-my-chat-member-added-to-group.json"
        | "13-edited-message.json"
        | "14-unknown-future-kind.json" => None,
        "15-message-command-with-args-legacy-user.json" => read(
            3004,
            user(3004, ""),
            1_764_756_660,
            command("score", "please"),
        ),
        _ => return None,
    })
}

#[test]
fn every_fixture_is_read_as_expected() {
    let all = fixtures();
    assert!(all.len() >= 15, "fixtures present: {}", all.len());
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

fn unreadable(raw: &str) -> String {
    match classify_json(raw.as_bytes()) {
        Err(UnreadableUpdate { reason }) => reason,
        other => panic!("{raw}: expected unreadable, got {other:?}"),
    }
}

const CHAT: &str = r#""chat":{"id":7,"type":"private","first_name":"Ada"}"#;
const FROM: &str = r#""from":{"id":7,"is_bot":false,"first_name":"Ada"}"#;

fn callback(fields: &str) -> String {
    format!(r#"{{"update_id":1,"callback_query":{{{fields}}}}}"#)
}

#[test]
fn a_button_press_without_what_the_bot_needs_is_unreadable_with_the_field_named() {
    let message = format!(r#""message":{{"message_id":5,"date":1,{CHAT}}}"#);
    let cases = [
        (
            callback(&format!(r#"{FROM},{message},"data":"q:1:0:0""#)),
            "callback_query: missing field `id`",
        ),
        (
            callback(&format!(r#""id":7,{FROM},{message}"#)),
            "callback_query.id",
        ),
        (
            callback(&format!(
                r#""id":"a",{FROM},"message":{{"message_id":"5","date":1,{CHAT}}}"#
            )),
            "callback_query.message.message_id",
        ),
        (
            callback(&format!(r#""id":"a",{FROM},"message":{{"date":1,{CHAT}}}"#)),
            "callback_query.message: missing field `message_id`",
        ),
        (
            callback(&format!(
                r#""id":"a",{FROM},"message":{{"message_id":5,"date":1}}"#
            )),
            "callback_query.message: missing field `chat`",
        ),
        (
            callback(&format!(
                r#""id":"a",{FROM},"message":{{"message_id":5,{CHAT}}}"#
            )),
            "callback_query.message: missing field `date`",
        ),
        (
            callback(&format!(
                r#""id":"a",{FROM},"message":{{"message_id":5,"date":99999999999999,{CHAT}}}"#
            )),
            "callback_query.message.date: 99999999999999 is not a valid date",
        ),
        (
            callback(&format!(r#""id":"a",{FROM},{message},"data":5"#)),
            "callback_query.data",
        ),
        (
            callback(&format!(r#""id":"a","from":{{"id":"7"}},{message}"#)),
            "callback_query.from.id",
        ),
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
fn a_message_without_what_the_bot_needs_is_unreadable_with_the_field_named() {
    let cases = [
        (
            format!(r#"{{"update_id":1,"message":{{{CHAT},{FROM},"text":"/quiz"}}}}"#),
            "message: missing field `date`",
        ),
        (
            format!(r#"{{"update_id":1,"message":{{{FROM},"date":1,"text":"/quiz"}}}}"#),
            "message: missing field `chat`",
        ),
        (
            format!(
                r#"{{"update_id":1,"message":{{"chat":{{"id":7}},{FROM},"date":1,"text":"hi"}}}}"#
            ),
            "message.chat: missing field `type`",
        ),
        (
            format!(r#"{{"update_id":1,"message":{{{CHAT},{FROM},"date":1,"text":["/quiz"]}}}}"#),
            "message.text",
        ),
        (
            r#"{"update_id":1,"my_chat_member":{"chat":{"id":7},"date":1,"new_chat_member":{"status":"kicked"}}}"#
                .to_owned(),
            "my_chat_member.chat: missing field `type`",
        ),
    ];
    for (raw, want) in cases {
        let reason = unreadable(&raw);
        assert!(
            reason.contains(want),
            "{raw}: {reason:?} should name {want:?}"
        );
    }
}

#[test]
fn a_command_needs_no_chat_type_and_unknown_kinds_are_not_read_at_all() {
    // A command is answered in any chat, so its chat's type is not needed.
    let raw = format!(
        r#"{{"update_id":1,"message":{{"chat":{{"id":-5}},{FROM},"date":1,"text":"/stop"}}}}"#
    );
    let got = classify_json(raw.as_bytes()).unwrap().unwrap();
    assert_eq!(got.chat_id, -5);
    assert_eq!(got.input, command("stop", ""));
    for ignored in [
        r#"{"update_id":1,"message":null}"#,
        r#"{"update_id":1,"callback_query":null}"#,
        r#"{"update_id":1,"edited_message":{"chat":"x"}}"#,
        r#"{"update_id":1,"inline_query":{"id":5}}"#,
        r#"{"update_id":1}"#,
    ] {
        assert_eq!(classify_json(ignored.as_bytes()), Ok(None), "{ignored}");
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
