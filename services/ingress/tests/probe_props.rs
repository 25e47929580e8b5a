//! Property tests of ingress's routing probe: whatever arrives at the webhook, `probe::route`
//! never panics and gives a clear answer — accepted with an update id, a chat and a partition
//! below the partition count, or a 400 saying it is not an update. Inputs: arbitrary bytes,
//! arbitrary JSON, and the update fixtures of `tests/fixtures/updates/` mutated at the byte
//! level and at the JSON level. Where the probe accepts, its answer is checked against an
//! independent reading of the same body with `serde_json::Value`.

use std::sync::LazyLock;

use axum::{http::StatusCode, response::IntoResponse};
use courier_ingress::probe::{route, ProbeError, Route};
use proptest::prelude::*;
use proptest::sample::Index;
use serde_json::{Map, Value};

/// The update kinds that carry a chat or a sender, in the order the probe looks at them.
const KINDS: [&str; 22] = [
    "message",
    "edited_message",
    "channel_post",
    "edited_channel_post",
    "business_connection",
    "business_message",
    "edited_business_message",
    "deleted_business_messages",
    "message_reaction",
    "message_reaction_count",
    "inline_query",
    "chosen_inline_result",
    "callback_query",
    "shipping_query",
    "pre_checkout_query",
    "purchased_paid_media",
    "poll_answer",
    "my_chat_member",
    "chat_member",
    "chat_join_request",
    "chat_boost",
    "removed_chat_boost",
];

/// Field names the probe reads (besides the kinds), so that generated JSON hits them often.
const ROUTING_FIELDS: [&str; 7] = [
    "update_id",
    "chat",
    "from",
    "user",
    "voter_chat",
    "id",
    "message",
];

static FIXTURES: LazyLock<Vec<(String, Vec<u8>)>> = LazyLock::new(|| {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/updates");
    let mut fixtures: Vec<_> = std::fs::read_dir(dir)
        .expect("tests/fixtures/updates")
        .map(|e| {
            let path = e.expect("fixture entry").path();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&path).expect("fixture"))
        })
        .collect();
    fixtures.sort();
    assert!(fixtures.len() >= 10, "fixtures present");
    fixtures
});

/// An accepted body is JSON whose `update_id` and routing chat are what the probe said.
/// The permitted differences come from the probe checking the fields it skips for JSON syntax
/// only, as serde_json does when it skips a value, while building a `Value` also checks
/// meaning: a lone surrogate escape in a string (serde_json words it "lone leading
/// surrogate…", or for a high surrogate followed by another escape than `\u`, "unexpected
/// end of hex escape" — a truncated `\u12` is refused by the probe too), and a number beyond
/// `f64` ("number out of range"; JSON itself sets no range). The worker's lenient read skips
/// such fields the same way, and refuses them where it needs them (a dead letter).
fn agrees_with_value(body: &[u8], route: &Route) -> Result<(), TestCaseError> {
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e)
            if ["surrogate", "hex escape", "number out of range"]
                .iter()
                .any(|m| e.to_string().contains(m)) =>
        {
            return Ok(())
        }
        Err(e) => return Err(TestCaseError::fail(format!("accepted, but not JSON: {e}"))),
    };
    prop_assert_eq!(value["update_id"].as_i64(), Some(route.update_id));
    let chat = KINDS
        .iter()
        .find_map(|k| value.get(k).and_then(chat_of))
        .unwrap_or(0);
    prop_assert_eq!(chat, route.chat_id);
    Ok(())
}

/// The routing rule, read from a `Value`: the chat, else the poll's voter chat, else the chat
/// of the carried message, else the sender.
fn chat_of(object: &Value) -> Option<i64> {
    let id = |field: &str| object.get(field)?.get("id")?.as_i64();
    id("chat")
        .or_else(|| id("voter_chat"))
        .or_else(|| object.get("message").and_then(chat_of))
        .or_else(|| id("from"))
        .or_else(|| id("user"))
}

/// What ingress answers for `body`, checked for clarity: an accepted route (`Some`) is in
/// range and agrees with an independent reading; a refusal (`None`) is a 400 that says why.
fn clear(body: &[u8], partitions: u32) -> Result<Option<Route>, TestCaseError> {
    match route(body, partitions) {
        Ok(route) => {
            prop_assert!(route.partition < partitions);
            agrees_with_value(body, &route)?;
            Ok(Some(route))
        }
        Err(e) => {
            let message = e.to_string();
            prop_assert!(message.starts_with("not a Telegram update"), "{message}");
            prop_assert_eq!(e.into_response().status(), StatusCode::BAD_REQUEST);
            Ok(None)
        }
    }
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(&KINDS[..]).prop_map(String::from),
        proptest::sample::select(&ROUTING_FIELDS[..]).prop_map(String::from),
        "[a-z_]{1,12}",
    ]
}

fn number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from), // NaN and infinities become null
        proptest::sample::select(vec![0i64, -1, 1, i64::MIN, i64::MAX, 1 << 52, -(1 << 52)])
            .prop_map(Value::from),
    ]
}

fn json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        number(),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 64, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A change to a JSON document at one of its nodes (chosen by index among all nodes).
#[derive(Debug, Clone)]
enum Edit {
    Replace(Index, Value),
    Remove(Index),
    Insert(Index, String, Value),
}

/// A change to raw bytes at a position.
#[derive(Debug, Clone)]
enum ByteEdit {
    Flip(Index, u8),
    Set(Index, u8),
    Insert(Index, Vec<u8>),
    Delete(Index, usize),
    Truncate(Index),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<Index>(), json()).prop_map(|(i, v)| Edit::Replace(i, v)),
        any::<Index>().prop_map(Edit::Remove),
        (any::<Index>(), key(), json()).prop_map(|(i, k, v)| Edit::Insert(i, k, v)),
    ]
}

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    let interesting =
        proptest::sample::select(b"{}[]\":,\\0123456789-.eEtfnu \xff\xc3\x80".to_vec());
    prop_oneof![
        (any::<Index>(), 0u8..8).prop_map(|(i, bit)| ByteEdit::Flip(i, bit)),
        (any::<Index>(), interesting.clone()).prop_map(|(i, b)| ByteEdit::Set(i, b)),
        (any::<Index>(), prop::collection::vec(interesting, 1..8))
            .prop_map(|(i, b)| ByteEdit::Insert(i, b)),
        (any::<Index>(), 1usize..16).prop_map(|(i, n)| ByteEdit::Delete(i, n)),
        any::<Index>().prop_map(ByteEdit::Truncate),
    ]
}

/// JSON pointers of every node of `value`, the root first.
fn pointers(value: &Value, at: String, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let escaped = k.replace('~', "~0").replace('/', "~1");
                pointers(v, format!("{at}/{escaped}"), out);
            }
        }
        Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                pointers(v, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
    out.insert(0, at);
}

fn apply(doc: &mut Value, edit: &Edit) {
    let mut nodes = Vec::new();
    pointers(doc, String::new(), &mut nodes);
    nodes.sort(); // a stable order, independent of how the nodes were gathered
    let pick = |i: &Index| nodes[i.index(nodes.len())].clone();
    match edit {
        Edit::Replace(i, v) => {
            if let Some(node) = doc.pointer_mut(&pick(i)) {
                *node = v.clone();
            }
        }
        Edit::Remove(i) => {
            let at = pick(i);
            let Some((parent, last)) = at.rsplit_once('/') else {
                return;
            };
            let last = last.replace("~1", "/").replace("~0", "~");
            match doc.pointer_mut(parent) {
                Some(Value::Object(map)) => {
                    map.remove(&last);
                }
                Some(Value::Array(items)) => {
                    if let Ok(n) = last.parse::<usize>() {
                        if n < items.len() {
                            items.remove(n);
                        }
                    }
                }
                _ => {}
            }
        }
        Edit::Insert(i, k, v) => {
            if let Some(Value::Object(map)) = doc.pointer_mut(&pick(i)) {
                map.insert(k.clone(), v.clone());
            }
        }
    }
}

fn apply_bytes(body: &mut Vec<u8>, edit: &ByteEdit) {
    if body.is_empty() {
        return;
    }
    let len = body.len();
    match edit {
        ByteEdit::Flip(i, bit) => body[i.index(len)] ^= 1 << bit,
        ByteEdit::Set(i, b) => body[i.index(len)] = *b,
        ByteEdit::Insert(i, bytes) => {
            let at = i.index(len + 1);
            body.splice(at..at, bytes.iter().copied());
        }
        ByteEdit::Delete(i, n) => {
            let at = i.index(len);
            body.drain(at..(at + n).min(len));
        }
        ByteEdit::Truncate(i) => body.truncate(i.index(len)),
    }
}

fn fixture() -> impl Strategy<Value = (String, Vec<u8>)> {
    proptest::sample::select(FIXTURES.clone())
}

fn partitions() -> impl Strategy<Value = u32> {
    prop_oneof![Just(32u32), 1u32..=4096]
}

#[test]
fn every_fixture_is_accepted_and_agrees_with_a_full_parse() {
    for (name, body) in FIXTURES.iter() {
        let route = clear(body, 32).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(route.is_some(), "{name} refused");
    }
}

/// Nesting is bounded by the body limit only. In routing fields serde_json's recursion limit
/// (128) refuses it; in a field the probe skips, serde_json skips iteratively, so the update is
/// accepted and the worker's full parse (bounded by the same limit) dead-letters it. Either
/// way: a clear answer and no stack overflow.
#[test]
fn deep_nesting_gets_a_clear_answer_without_overflowing_the_stack() {
    let depth = 100_000;
    let nested_messages = format!(
        "{{\"update_id\":1,{}null{}}}",
        "\"message\":{".repeat(depth).trim_end_matches('{'),
        "}".repeat(depth - 1)
    );
    let got = route(nested_messages.as_bytes(), 32);
    assert!(matches!(got, Err(ProbeError::Json(_))), "{got:?}");
    let nested_unknown = format!(
        "{{\"update_id\":1,\"future\":{}{}}}",
        "[".repeat(depth),
        "]".repeat(depth)
    );
    let got = route(nested_unknown.as_bytes(), 32);
    assert!(
        matches!(
            got,
            Ok(Route {
                update_id: 1,
                chat_id: 0,
                ..
            })
        ),
        "{got:?}"
    );
    let full = serde_json::from_str::<Value>(&nested_unknown).unwrap_err();
    assert!(full.to_string().contains("recursion limit"), "{full}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_get_a_clear_answer(body in prop::collection::vec(any::<u8>(), 0..512), p in partitions()) {
        clear(&body, p)?;
    }

    #[test]
    fn arbitrary_json_gets_a_clear_answer(mut doc in json(), id in number(), with_id in any::<bool>(), p in partitions()) {
        if let (true, Value::Object(map)) = (with_id, &mut doc) {
            map.insert("update_id".into(), id);
        }
        clear(&serde_json::to_vec(&doc).unwrap(), p)?;
    }

    #[test]
    fn fixtures_mutated_byte_by_byte_get_a_clear_answer(
        (_, mut body) in fixture(),
        edits in prop::collection::vec(byte_edit(), 1..6),
        p in partitions(),
    ) {
        for e in &edits {
            apply_bytes(&mut body, e);
        }
        clear(&body, p)?;
    }

    #[test]
    fn fixtures_mutated_as_json_get_a_clear_answer(
        (_, body) in fixture(),
        edits in prop::collection::vec(edit(), 1..5),
        p in partitions(),
    ) {
        let mut doc: Value = serde_json::from_slice(&body).unwrap();
        for e in &edits {
            apply(&mut doc, e);
        }
        clear(&serde_json::to_vec(&doc).unwrap(), p)?;
    }

    /// Fields the probe does not read, and formatting, never change where an update goes.
    #[test]
    fn unknown_fields_and_formatting_keep_the_route(
        (name, body) in fixture(),
        extra in prop::collection::vec((any::<Index>(), "x_[a-z]{1,8}", json()), 0..5),
        pretty in any::<bool>(),
    ) {
        let original = clear(&body, 32)?.expect("fixtures are accepted");
        let mut doc: Value = serde_json::from_slice(&body).unwrap();
        for (at, k, v) in extra {
            apply(&mut doc, &Edit::Insert(at, k, v));
        }
        let changed = if pretty {
            serde_json::to_vec_pretty(&doc).unwrap()
        } else {
            serde_json::to_vec(&doc).unwrap()
        };
        prop_assert_eq!(clear(&changed, 32)?, Some(original), "{}", name);
    }
}
