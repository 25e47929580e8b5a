//! Property tests: whatever arrives — arbitrary bytes, arbitrary JSON, the repository's update
//! fixtures mutated at random — `classify_json` answers without panicking, and `step` runs on
//! whatever it reads, in every state, without panicking and within its own rules.

use std::path::Path;
use std::sync::OnceLock;

use chrono::DateTime;
use courier_bot_api::{Outgoing, SendText};
use courier_notes::{
    classify_json, step, Context, Data, DialogueState, Effect, Incoming, Input, Note, Pace,
    UserInfo, Write,
};
use proptest::prelude::*;
use serde_json::{Map, Value};

fn fixtures() -> &'static [Value] {
    static FIXTURES: OnceLock<Vec<Value>> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/updates");
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .expect("tests/fixtures/updates")
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        paths.sort();
        paths
            .iter()
            .map(|p| serde_json::from_slice(&std::fs::read(p).expect("fixture")).expect("JSON"))
            .collect()
    })
}

/// Keys the reader looks for, so random objects often land where it reads.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "update_id", "message", "my_chat_member", "chat", "id", "type", "from",
            "first_name", "last_name", "username", "date", "text", "sticker", "photo",
            "new_chat_member", "status", "edited_message",
        ])
        .prop_map(str::to_owned),
        1 => "[a-z_]{1,12}",
    ]
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(vec![
            "private", "group", "kicked", "member", "/start", "/history"
        ])
        .prop_map(Value::from),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|kv| Value::Object(kv.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// One change to a JSON tree: at the `at`-th node (depth first, modulo their number) replace
/// the node, remove one of its keys or elements, or insert a key.
#[derive(Debug, Clone)]
enum Mutation {
    Replace(Value),
    Remove(usize),
    Insert(String, Value),
}

fn mutation() -> impl Strategy<Value = (usize, Mutation)> {
    (
        any::<usize>(),
        prop_oneof![
            json().prop_map(Mutation::Replace),
            any::<usize>().prop_map(Mutation::Remove),
            (key(), json()).prop_map(|(k, v)| Mutation::Insert(k, v)),
        ],
    )
}

fn count(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count).sum(),
        Value::Object(o) => o.values().map(count).sum(),
        _ => 0,
    }
}

fn nth(v: &mut Value, mut n: usize) -> &mut Value {
    fn walk<'a>(v: &'a mut Value, n: &mut usize) -> Option<&'a mut Value> {
        if *n == 0 {
            return Some(v);
        }
        *n -= 1;
        let children: Vec<&'a mut Value> = match v {
            Value::Array(a) => a.iter_mut().collect(),
            Value::Object(o) => o.values_mut().collect(),
            _ => Vec::new(),
        };
        children.into_iter().find_map(|c| walk(c, n))
    }
    let total = count(v);
    n %= total;
    walk(v, &mut n).expect("n < node count")
}

fn mutate(v: &mut Value, at: usize, m: Mutation) {
    let node = nth(v, at);
    match m {
        Mutation::Replace(new) => *node = new,
        Mutation::Remove(i) => match node {
            Value::Array(a) if !a.is_empty() => {
                let i = i % a.len();
                a.remove(i);
            }
            Value::Object(o) if !o.is_empty() => {
                let k = o.keys().nth(i % o.len()).cloned().expect("a key");
                o.remove(&k);
            }
            _ => *node = Value::Null,
        },
        Mutation::Insert(k, new) => match node {
            Value::Object(o) => {
                o.insert(k, new);
            }
            other => *other = Value::Object(Map::from_iter([(k, new)])),
        },
    }
}

/// Runs the bot on what was read, in both states and at every pace, and checks the rules every
/// step keeps.
fn step_everywhere(incoming: &Incoming, history: &[Note]) {
    let blocking = matches!(incoming.input, Input::BotBlocked(_));
    for state in [DialogueState::Start, DialogueState::ReceiveNote] {
        for pace in [Pace::Within, Pace::SlowDown, Pace::Over] {
            let ctx = Context {
                data: Data {
                    history: history.to_vec(),
                },
                pace,
            };
            let t = step(state, incoming, &ctx);
            let is_start =
                matches!(&incoming.input, Input::Command { name, .. } if name == "start");
            let want = if is_start && pace == Pace::Within {
                DialogueState::ReceiveNote
            } else {
                state
            };
            assert_eq!(t.state, want, "{incoming:?} {pace:?}");
            if !blocking {
                match pace {
                    Pace::Within => {}
                    Pace::SlowDown => assert!(
                        matches!(&t.effects[..], [Effect::Send(Outgoing::Send(_))]),
                        "one reply: {:?}",
                        t.effects
                    ),
                    Pace::Over => assert!(t.effects.is_empty(), "{:?}", t.effects),
                }
            }
            for e in &t.effects {
                match e {
                    Effect::Send(Outgoing::Send(SendText { chat_id, text, .. })) => {
                        assert_eq!(*chat_id, incoming.chat_id);
                        assert!(!text.is_empty());
                    }
                    Effect::Send(other) => panic!("the notes bot only sends messages: {other:?}"),
                    Effect::Write(Write::SaveNote { chat_id, text, .. }) => {
                        assert_eq!(state, DialogueState::ReceiveNote, "notes only after /start");
                        assert_eq!(*chat_id, incoming.chat_id);
                        let sent = match &incoming.input {
                            Input::Text(t) => Some(t),
                            _ => None,
                        };
                        assert_eq!(Some(text), sent, "saved verbatim");
                    }
                    Effect::Write(
                        Write::UpsertUser { chat_id, .. } | Write::SetUserBlocked { chat_id, .. },
                    )
                    | Effect::SetBlocked { chat_id, .. }
                    | Effect::Subscribe { chat_id, .. } => {
                        assert_eq!(*chat_id, incoming.chat_id)
                    }
                }
            }
        }
    }
}

fn user() -> impl Strategy<Value = UserInfo> {
    (
        any::<i64>(),
        any::<String>(),
        any::<Option<String>>(),
        any::<Option<String>>(),
    )
        .prop_map(|(id, first_name, last_name, username)| UserInfo {
            id,
            first_name,
            last_name,
            username,
        })
}

fn date() -> impl Strategy<Value = DateTime<chrono::Utc>> {
    let (min, max) = (
        DateTime::<chrono::Utc>::MIN_UTC.timestamp(),
        DateTime::<chrono::Utc>::MAX_UTC.timestamp(),
    );
    (min..=max).prop_map(|s| DateTime::from_timestamp(s, 0).expect("in range"))
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        "/[a-zA-Z_]{0,10}(@[a-z_]{0,8})?( .{0,20})?",
        "\\PC{0,5000}",
    ]
}

proptest! {
    #[test]
    fn classify_never_panics_on_arbitrary_bytes(raw in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = classify_json(&raw);
    }

    #[test]
    fn classify_and_step_never_panic_on_arbitrary_json(v in json(), wrap in any::<bool>()) {
        let v = if wrap { serde_json::json!({"update_id": 1, "message": v}) } else { v };
        if let Ok(Some(incoming)) = classify_json(v.to_string().as_bytes()) {
            step_everywhere(&incoming, &[]);
        }
    }

    #[test]
    fn classify_and_step_never_panic_on_mutated_fixtures(
        which in any::<prop::sample::Index>(),
        mutations in prop::collection::vec(mutation(), 1..4),
    ) {
        let fixtures = fixtures();
        let mut v = fixtures[which.index(fixtures.len())].clone();
        for (at, m) in mutations {
            mutate(&mut v, at, m);
        }
        if let Ok(Some(incoming)) = classify_json(v.to_string().as_bytes()) {
            step_everywhere(&incoming, &[]);
        }
    }

    #[test]
    fn classify_never_panics_on_fixtures_with_bytes_flipped_cut_or_inserted(
        which in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..6),
    ) {
        let fixtures = fixtures();
        let mut raw = fixtures[which.index(fixtures.len())].to_string().into_bytes();
        for (at, byte, op) in edits {
            if raw.is_empty() {
                break;
            }
            let i = at.index(raw.len());
            match op {
                0 => raw[i] = byte,
                1 => raw.truncate(i),
                _ => raw.insert(i, byte),
            }
        }
        if let Ok(Some(incoming)) = classify_json(&raw) {
            step_everywhere(&incoming, &[]);
        }
    }

    #[test]
    fn step_never_panics_on_any_input(
        chat_id in any::<i64>(),
        from in prop::option::of(user()),
        at in date(),
        input in prop_oneof![
            text().prop_map(|t| {
                // Through the reader, so commands are parsed exactly as in production.
                let raw = serde_json::json!({"message": {"chat": {"id": 1}, "date": 0, "text": t}});
                classify_json(raw.to_string().as_bytes()).expect("readable").expect("a message").input
            }),
            Just(Input::NonText { kind: "sticker" }),
            any::<bool>().prop_map(Input::BotBlocked),
        ],
        history in prop::collection::vec((text(), date()).prop_map(|(text, at)| Note { text, at }), 0..7),
    ) {
        let incoming = Incoming { chat_id, from, date: at, input };
        step_everywhere(&incoming, &history);
    }
}
