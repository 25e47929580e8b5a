//! Reads just enough of an update to route it: its id and its chat.
//!
//! Only the `id` fields of the objects that carry a chat or a sender are deserialized; every
//! other field is skipped by serde without allocation. Update kinds this code does not know
//! are still accepted (routed to chat 0), as Telegram adds kinds over time.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Response},
};
use courier_common::partition::partition_of;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{value::MapAccessDeserializer, Deserializer, MapAccess, Visitor};
use serde::Deserialize;

/// What routing needs from an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Telegram's `update_id`.
    pub update_id: i64,
    /// The chat; for updates without a chat, the sender's user id; `None` when neither exists.
    pub chat_id: Option<i64>,
}

/// Where an update goes: what ingress publishes it with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// Telegram's `update_id`.
    pub update_id: i64,
    /// The routing chat ([`Probe::chat_id`]), 0 for updates without chat or sender.
    pub chat_id: i64,
    /// The partition of `chat_id`, below the partition count.
    pub partition: u32,
}

/// Why a body is not an update.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// JSON is UTF-8 (RFC 8259); these bytes are not.
    #[error("not a Telegram update: the body is not UTF-8 ({0})")]
    NotUtf8(#[from] std::str::Utf8Error),
    /// Not JSON, or no integer `update_id`, or a routing field of the wrong shape.
    #[error("not a Telegram update: {0}")]
    Json(#[from] serde_json::Error),
}

impl IntoResponse for ProbeError {
    /// 400 with the reason: the sender's fault, and retrying the same bytes cannot help.
    fn into_response(self) -> Response {
        (StatusCode::BAD_REQUEST, format!("{self}\n")).into_response()
    }
}

/// Probes `body` and computes its partition among `partitions` (at least 1).
pub fn route(body: &[u8], partitions: u32) -> Result<Route, ProbeError> {
    let probe = probe(body)?;
    let chat_id = probe.chat_id.unwrap_or(0);
    Ok(Route {
        update_id: probe.update_id,
        chat_id,
        partition: partition_of(chat_id, partitions),
    })
}

/// `T` read from a JSON object only. A derived struct also accepts an array of its fields in
/// order (`"chat": [7]` would be chat 7), a shape Telegram never sends; the JSON-mutation
/// property test found it.
struct Obj<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ObjVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ObjVisitor<T> {
            type Value = T;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<T, A::Error> {
                T::deserialize(MapAccessDeserializer::new(map))
            }
        }
        deserializer
            .deserialize_map(ObjVisitor(PhantomData))
            .map(Obj)
    }
}

#[derive(Deserialize)]
struct Id {
    id: i64,
}

type IdField = Option<Obj<Id>>;

#[derive(Deserialize)]
struct WithChat {
    chat: IdField,
    from: IdField,
    user: IdField,
    // callback_query.message
    message: Option<Box<Obj<WithChat>>>,
    // poll_answer
    voter_chat: IdField,
}

impl WithChat {
    fn chat_id(&self) -> Option<i64> {
        let id = |f: &IdField| f.as_ref().map(|o| o.0.id);
        id(&self.chat)
            .or(id(&self.voter_chat))
            .or_else(|| self.message.as_ref().and_then(|m| m.0.chat_id()))
            .or(id(&self.from))
            .or(id(&self.user))
    }
}

type Kind = Option<Obj<WithChat>>;

#[derive(Deserialize)]
struct Raw {
    update_id: i64,
    message: Kind,
    edited_message: Kind,
    channel_post: Kind,
    edited_channel_post: Kind,
    business_connection: Kind,
    business_message: Kind,
    edited_business_message: Kind,
    deleted_business_messages: Kind,
    message_reaction: Kind,
    message_reaction_count: Kind,
    inline_query: Kind,
    chosen_inline_result: Kind,
    callback_query: Kind,
    shipping_query: Kind,
    pre_checkout_query: Kind,
    purchased_paid_media: Kind,
    poll_answer: Kind,
    my_chat_member: Kind,
    chat_member: Kind,
    chat_join_request: Kind,
    chat_boost: Kind,
    removed_chat_boost: Kind,
}

/// Reads the update id and the routing chat of a webhook body.
///
/// The body must be UTF-8 and JSON; fields other than the routing ones are checked for syntax
/// only (serde skips them), so a lone surrogate escape (`"\ud800"`) in a skipped string passes
/// here and is refused by the worker's full parse (a dead letter), never a crash.
pub fn probe(body: &[u8]) -> Result<Probe, ProbeError> {
    // serde_json skips ignored strings without checking their UTF-8; checking the whole body
    // first (fast, no allocation) means everything accepted here is text.
    let Obj(raw): Obj<Raw> = serde_json::from_str(std::str::from_utf8(body)?)?;
    let kinds = [
        &raw.message,
        &raw.edited_message,
        &raw.channel_post,
        &raw.edited_channel_post,
        &raw.business_connection,
        &raw.business_message,
        &raw.edited_business_message,
        &raw.deleted_business_messages,
        &raw.message_reaction,
        &raw.message_reaction_count,
        &raw.inline_query,
        &raw.chosen_inline_result,
        &raw.callback_query,
        &raw.shipping_query,
        &raw.pre_checkout_query,
        &raw.purchased_paid_media,
        &raw.poll_answer,
        &raw.my_chat_member,
        &raw.chat_member,
        &raw.chat_join_request,
        &raw.chat_boost,
        &raw.removed_chat_boost,
    ];
    let chat_id = kinds
        .iter()
        .find_map(|k| k.as_ref().and_then(|o| o.0.chat_id()));
    Ok(Probe {
        update_id: raw.update_id,
        chat_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(json: &str) -> Probe {
        probe(json.as_bytes()).unwrap()
    }

    #[test]
    fn message_routes_by_chat() {
        let got = p(
            r#"{"update_id":1,"message":{"message_id":2,"date":0,"chat":{"id":-100,"type":"group"},"from":{"id":7,"is_bot":false,"first_name":"A"},"text":"hi"}}"#,
        );
        assert_eq!(
            got,
            Probe {
                update_id: 1,
                chat_id: Some(-100)
            }
        );
    }

    #[test]
    fn callback_routes_by_its_message_chat_else_sender() {
        let with_msg = p(
            r#"{"update_id":1,"callback_query":{"id":"x","from":{"id":7},"message":{"message_id":1,"chat":{"id":55}},"data":"d"}}"#,
        );
        assert_eq!(with_msg.chat_id, Some(55));
        let inline = p(
            r#"{"update_id":1,"callback_query":{"id":"x","from":{"id":7},"inline_message_id":"i"}}"#,
        );
        assert_eq!(inline.chat_id, Some(7));
    }

    #[test]
    fn chatless_kinds_route_by_sender() {
        assert_eq!(
            p(r#"{"update_id":1,"inline_query":{"id":"q","from":{"id":9},"query":""}}"#).chat_id,
            Some(9)
        );
        assert_eq!(
            p(r#"{"update_id":1,"poll_answer":{"poll_id":"p","user":{"id":4},"option_ids":[0]}}"#)
                .chat_id,
            Some(4)
        );
        assert_eq!(p(r#"{"update_id":1,"poll_answer":{"poll_id":"p","voter_chat":{"id":-3},"option_ids":[0]}}"#).chat_id, Some(-3));
    }

    #[test]
    fn unknown_kinds_are_accepted_without_chat() {
        assert_eq!(
            p(r#"{"update_id":12,"some_future_kind":{"x":1}}"#),
            Probe {
                update_id: 12,
                chat_id: None
            }
        );
        assert_eq!(
            p(r#"{"update_id":13,"poll":{"id":"p","question":"q"}}"#).chat_id,
            None
        );
    }

    #[test]
    fn bad_bodies_are_refused() {
        for bad in [
            "",
            "not json",
            "[]",
            "{}",
            r#"{"update_id":"1"}"#,
            r#"{"update_id":1.5}"#,
            // Arrays in place of objects, which serde's derived structs would read in order.
            r#"[1]"#,
            r#"{"update_id":1,"message":{"chat":[7]}}"#,
            r#"{"update_id":1,"message":[{"id":7}]}"#,
            // A truncated escape in a skipped string is a syntax error, refused here too.
            r#"{"update_id":1,"x":"\u12"}"#,
            r#"{"update_id":1,"x":"\q"}"#,
        ] {
            assert!(probe(bad.as_bytes()).is_err(), "{bad}");
        }
        // Invalid UTF-8 in a field the probe skips: serde_json alone would not notice.
        let not_utf8 = b"{\"update_id\":1,\"x\":\"\xff\"}";
        assert!(matches!(probe(not_utf8), Err(ProbeError::NotUtf8(_))));
    }
}
