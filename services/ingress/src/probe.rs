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

#[derive(Deserialize)]
struct Id {
    id: i64,
}

#[derive(Deserialize)]
struct WithChat {
    chat: Option<Id>,
    from: Option<Id>,
    user: Option<Id>,
    // callback_query.message
    message: Option<Box<WithChat>>,
    // poll_answer
    voter_chat: Option<Id>,
}

impl WithChat {
    fn chat_id(&self) -> Option<i64> {
        self.chat
            .as_ref()
            .or(self.voter_chat.as_ref())
            .map(|c| c.id)
            .or_else(|| self.message.as_ref().and_then(|m| m.chat_id()))
            .or(self.from.as_ref().map(|u| u.id))
            .or(self.user.as_ref().map(|u| u.id))
    }
}

#[derive(Deserialize)]
struct Raw {
    update_id: i64,
    message: Option<WithChat>,
    edited_message: Option<WithChat>,
    channel_post: Option<WithChat>,
    edited_channel_post: Option<WithChat>,
    business_connection: Option<WithChat>,
    business_message: Option<WithChat>,
    edited_business_message: Option<WithChat>,
    deleted_business_messages: Option<WithChat>,
    message_reaction: Option<WithChat>,
    message_reaction_count: Option<WithChat>,
    inline_query: Option<WithChat>,
    chosen_inline_result: Option<WithChat>,
    callback_query: Option<WithChat>,
    shipping_query: Option<WithChat>,
    pre_checkout_query: Option<WithChat>,
    purchased_paid_media: Option<WithChat>,
    poll_answer: Option<WithChat>,
    my_chat_member: Option<WithChat>,
    chat_member: Option<WithChat>,
    chat_join_request: Option<WithChat>,
    chat_boost: Option<WithChat>,
    removed_chat_boost: Option<WithChat>,
}

/// Reads the update id and the routing chat of a webhook body.
///
/// The body must be UTF-8 and JSON; fields other than the routing ones are checked for syntax
/// only (serde skips them), so a lone surrogate escape (`"\ud800"`) in a skipped string passes
/// here and is refused by the worker's full parse (a dead letter), never a crash.
pub fn probe(body: &[u8]) -> Result<Probe, ProbeError> {
    // serde_json skips ignored strings without checking their UTF-8; checking the whole body
    // first (fast, no allocation) means everything accepted here is text.
    let raw: Raw = serde_json::from_str(std::str::from_utf8(body)?)?;
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
        .find_map(|k| k.as_ref().and_then(WithChat::chat_id));
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
        ] {
            assert!(probe(bad.as_bytes()).is_err(), "{bad}");
        }
        // Invalid UTF-8 in a field the probe skips: serde_json alone would not notice.
        let not_utf8 = b"{\"update_id\":1,\"x\":\"\xff\"}";
        assert!(matches!(probe(not_utf8), Err(ProbeError::NotUtf8(_))));
    }
}
