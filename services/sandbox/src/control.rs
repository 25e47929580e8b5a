//! The control API: users "send" messages, tests read transcripts and counters, and a small
//! page lets a person chat with the bot.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::api::ApiError;
use crate::faults::FaultsPatch;
use crate::state::{command_entity, utf16_len, Chat, ChatType, Shared, MAX_TEXT_LEN};

/// Body of `POST /sandbox/messages`.
#[derive(Debug, Deserialize)]
struct NewMessage {
    chat_id: i64,
    user_id: i64,
    first_name: String,
    text: String,
    #[serde(default)]
    chat_type: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    last_name: Option<String>,
    /// Title of a group chat (default `Sandbox group <id>`).
    #[serde(default)]
    title: Option<String>,
}

/// `POST /sandbox/messages`: a user sends a text message; the sandbox creates the update.
pub(crate) async fn post_message(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match create_message(&shared, &body) {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

fn create_message(shared: &Shared, body: &[u8]) -> Result<Value, ApiError> {
    let m: NewMessage = serde_json::from_slice(body).map_err(ApiError::bad_request)?;
    let chat_type = m.chat_type.as_deref().unwrap_or("private");
    let kind = ChatType::parse(chat_type).ok_or_else(|| {
        ApiError::bad_request(format!(
            "chat_type `{chat_type}` is not one of private, group, supergroup"
        ))
    })?;
    if m.chat_id == 0 {
        return Err(ApiError::bad_request("chat_id must not be 0"));
    }
    if m.user_id <= 0 {
        return Err(ApiError::bad_request("user_id must be positive"));
    }
    if m.first_name.trim().is_empty() {
        return Err(ApiError::bad_request("first_name is empty"));
    }
    if m.text.trim().is_empty() {
        return Err(ApiError::bad_request("message text is empty"));
    }
    if utf16_len(&m.text) > MAX_TEXT_LEN {
        return Err(ApiError::bad_request("message is too long"));
    }
    let mut from = json!({ "id": m.user_id, "is_bot": false, "first_name": m.first_name });
    if let Some(last) = &m.last_name {
        from["last_name"] = json!(last);
    }
    if let Some(username) = &m.username {
        from["username"] = json!(username);
    }
    let mut inner = shared.lock();
    let chat = inner.chats.entry(m.chat_id).or_insert_with(|| {
        let object = match kind {
            ChatType::Private => {
                let mut c =
                    json!({ "id": m.chat_id, "type": "private", "first_name": m.first_name });
                if let Some(last) = &m.last_name {
                    c["last_name"] = json!(last);
                }
                if let Some(username) = &m.username {
                    c["username"] = json!(username);
                }
                c
            }
            ChatType::Group | ChatType::Supergroup => {
                let title = m
                    .title
                    .clone()
                    .unwrap_or_else(|| format!("Sandbox group {}", m.chat_id));
                json!({ "id": m.chat_id, "type": kind.as_str(), "title": title })
            }
        };
        Chat::new(kind, object)
    });
    if chat.kind != kind {
        return Err(ApiError::bad_request(format!(
            "chat {} is a {} chat, not {}",
            m.chat_id,
            chat.kind.as_str(),
            kind.as_str()
        )));
    }
    if chat.migrated_to.is_some() {
        return Err(ApiError::bad_request(format!(
            "chat {} was upgraded to a supergroup",
            m.chat_id
        )));
    }
    let entry = chat.append_user(m.user_id, &m.text).clone();
    let chat_object = chat.object.clone();
    let mut message = json!({
        "message_id": entry.message_id,
        "from": from,
        "chat": chat_object,
        "date": entry.date,
        "text": m.text,
    });
    if let Some(entity) = command_entity(&m.text) {
        message["entities"] = json!([entity]);
    }
    inner.stats.messages_from_users += 1;
    shared.emit(json!({ "type": "message", "chat_id": m.chat_id, "message": entry }));
    if !inner.allows("message") {
        return Ok(json!({ "update_id": null, "message_id": entry.message_id }));
    }
    let update_id = inner.next_update_id();
    let update = json!({ "update_id": update_id, "message": message });
    let body = Bytes::from(serde_json::to_vec(&update).expect("a JSON value serializes"));
    inner.enqueue(m.chat_id, update_id, body);
    drop(inner);
    shared.updates_queued();
    Ok(json!({ "update_id": update_id, "message_id": entry.message_id }))
}

/// `GET /sandbox/chats/{chat_id}/messages`: the chat's transcript, oldest first (deleted
/// messages left out).
pub(crate) async fn transcript(
    State(shared): State<Arc<Shared>>,
    Path(chat_id): Path<String>,
) -> Response {
    let Ok(chat_id) = chat_id.parse::<i64>() else {
        return ApiError::new(404, "Not Found: chat not found").into_response();
    };
    let inner = shared.lock();
    match inner.chats.get(&chat_id) {
        Some(chat) => Json(chat.visible().collect::<Vec<_>>()).into_response(),
        None => ApiError::new(404, "Not Found: chat not found").into_response(),
    }
}

/// Body of `POST /sandbox/callbacks`.
#[derive(Debug, Deserialize)]
struct Press {
    chat_id: i64,
    message_id: i64,
    user_id: i64,
    data: String,
    #[serde(default)]
    first_name: Option<String>,
}

/// `POST /sandbox/callbacks`: a user presses an inline button of a bot message; the sandbox
/// creates the `callback_query` update.
pub(crate) async fn post_callback(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    match create_callback(&shared, &body) {
        Ok(v) => Json(v).into_response(),
        Err(e) => e.into_response(),
    }
}

fn create_callback(shared: &Shared, body: &[u8]) -> Result<Value, ApiError> {
    let p: Press = serde_json::from_slice(body).map_err(ApiError::bad_request)?;
    if p.user_id <= 0 {
        return Err(ApiError::bad_request("user_id must be positive"));
    }
    let bot = shared.bot_user();
    let mut inner = shared.lock();
    let chat = inner
        .chats
        .get(&p.chat_id)
        .ok_or_else(|| ApiError::bad_request("chat not found"))?;
    let entry = chat
        .message(p.message_id)
        .ok_or_else(|| ApiError::bad_request("message not found"))?;
    let has_button = entry
        .reply_markup
        .as_ref()
        .and_then(|m| m["inline_keyboard"].as_array())
        .is_some_and(|rows| {
            rows.iter()
                .filter_map(Value::as_array)
                .flatten()
                .any(|b| b["callback_data"].as_str() == Some(p.data.as_str()))
        });
    if !entry.from_bot || !has_button {
        return Err(ApiError::bad_request(
            "the message has no inline button with this callback_data",
        ));
    }
    let message = chat.message_object(entry, &bot);
    let first_name = p
        .first_name
        .clone()
        .or_else(|| chat.object["first_name"].as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("User {}", p.user_id));
    inner.stats.callback_queries += 1;
    if !inner.allows("callback_query") {
        return Ok(json!({ "update_id": null, "callback_query_id": null }));
    }
    let id = inner.next_callback_id();
    inner.callbacks.insert(
        id.clone(),
        crate::state::Callback {
            id: id.clone(),
            chat_id: p.chat_id,
            message_id: p.message_id,
            user_id: p.user_id,
            data: p.data.clone(),
            answer: None,
        },
    );
    let update_id = inner.next_update_id();
    let update = json!({
        "update_id": update_id,
        "callback_query": {
            "id": id,
            "from": { "id": p.user_id, "is_bot": false, "first_name": first_name },
            "message": message,
            "chat_instance": format!("{}", p.chat_id.unsigned_abs() * 7919),
            "data": p.data,
        },
    });
    let body = Bytes::from(serde_json::to_vec(&update).expect("a JSON value serializes"));
    inner.enqueue(p.chat_id, update_id, body);
    drop(inner);
    shared.updates_queued();
    Ok(json!({ "update_id": update_id, "callback_query_id": id }))
}

/// `GET /sandbox/callbacks/{id}`: a callback query created by a press, with the bot's
/// answer once it answered (`answer`: `text`, `show_alert`, `at_unix_ms`; `null` before).
pub(crate) async fn get_callback(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Response {
    match shared.lock().callbacks.get(&id) {
        Some(callback) => Json(callback).into_response(),
        None => ApiError::new(404, "Not Found: callback query not found").into_response(),
    }
}

/// `POST /sandbox/chats/{chat_id}/migrate`: a group is upgraded to a supergroup; sending to
/// the old id then answers 400 with `parameters.migrate_to_chat_id`.
pub(crate) async fn migrate(
    State(shared): State<Arc<Shared>>,
    Path(chat_id): Path<String>,
) -> Response {
    let Ok(chat_id) = chat_id.parse::<i64>() else {
        return ApiError::new(404, "Not Found: chat not found").into_response();
    };
    let mut inner = shared.lock();
    let Some(chat) = inner.chats.get_mut(&chat_id) else {
        return ApiError::new(404, "Not Found: chat not found").into_response();
    };
    if chat.kind != ChatType::Group || chat.migrated_to.is_some() {
        return ApiError::bad_request("only a group chat can be upgraded, once").into_response();
    }
    let to = -1_000_000_000_000 - chat_id.abs();
    chat.migrated_to = Some(to);
    let title = chat.object["title"].clone();
    inner.chats.entry(to).or_insert_with(|| {
        Chat::new(
            ChatType::Supergroup,
            json!({ "id": to, "type": "supergroup", "title": title }),
        )
    });
    Json(json!({ "migrate_to_chat_id": to })).into_response()
}

/// `GET /sandbox/faults`: the faults in force.
pub(crate) async fn get_faults(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.lock().faults.clone()).into_response()
}

/// `POST /sandbox/faults`: changes the fields given; answers the faults now in force.
pub(crate) async fn post_faults(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let patch: FaultsPatch = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => return ApiError::bad_request(e).into_response(),
    };
    let mut inner = shared.lock();
    match inner.faults.apply(patch) {
        Ok(()) => {
            tracing::info!(faults = ?inner.faults, "faults changed");
            Json(inner.faults.clone()).into_response()
        }
        Err(e) => ApiError::bad_request(e).into_response(),
    }
}

/// `DELETE /sandbox/faults`: no faults.
pub(crate) async fn delete_faults(State(shared): State<Arc<Shared>>) -> Response {
    let mut inner = shared.lock();
    inner.faults = Default::default();
    Json(inner.faults.clone()).into_response()
}

/// `GET /sandbox/calls`: every sending call, oldest first.
pub(crate) async fn get_calls(State(shared): State<Arc<Shared>>) -> Response {
    let inner = shared.lock();
    Json(&inner.calls).into_response()
}

/// `DELETE /sandbox/calls`: forgets the call log.
pub(crate) async fn delete_calls(State(shared): State<Arc<Shared>>) -> Response {
    shared.lock().calls.clear();
    Json(json!({ "ok": true })).into_response()
}

/// Query of `GET /sandbox/latency`.
#[derive(Debug, Deserialize)]
pub(crate) struct LatencyQuery {
    /// Only user messages created at or after this Unix time in milliseconds.
    #[serde(default)]
    since_ms: i64,
}

/// One user message and its replies, as `GET /sandbox/latency` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MessageLatency {
    /// The chat.
    pub chat_id: i64,
    /// The user message's id in the chat.
    pub message_id: i64,
    /// When its update was created, Unix milliseconds.
    pub at_unix_ms: i64,
    /// Bot replies counted for it (1 is right; 0 lost so far; more are duplicates).
    pub replies: u32,
    /// Milliseconds from the update's creation to its first reply.
    pub latency_ms: Option<f64>,
}

/// `GET /sandbox/latency?since_ms=`: every user message (of every chat) with its reply count
/// and latency.
pub(crate) async fn latency(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<LatencyQuery>,
) -> Response {
    let inner = shared.lock();
    let mut out: Vec<MessageLatency> = Vec::new();
    for (&chat_id, chat) in &inner.chats {
        for e in chat.transcript.iter().rev() {
            if e.at_unix_ms < q.since_ms {
                break;
            }
            if !e.from_bot {
                out.push(MessageLatency {
                    chat_id,
                    message_id: e.message_id,
                    at_unix_ms: e.at_unix_ms,
                    replies: e.replies.unwrap_or(0),
                    latency_ms: e.latency_ms,
                });
            }
        }
    }
    drop(inner);
    Json(out).into_response()
}

/// `GET /sandbox/chats`: the chats, for the page's picker.
pub(crate) async fn chats(State(shared): State<Arc<Shared>>) -> Response {
    let inner = shared.lock();
    let mut list: Vec<Value> = inner
        .chats
        .values()
        .map(|c| {
            let mut o = c.object.clone();
            o["messages"] = json!(c.visible().count());
            o
        })
        .collect();
    drop(inner);
    list.sort_by_key(|c| c["id"].as_i64());
    Json(list).into_response()
}

/// `GET /sandbox/events`: server-sent events for the page: `message`, `edit`, `delete`,
/// `chat_action` and `callback_answer`, each a JSON object with a `type` and a `chat_id`.
pub(crate) async fn events(
    State(shared): State<Arc<Shared>>,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let rx = shared.events.subscribe();
    let stop = shared.stop.clone();
    let stream = futures::stream::unfold((rx, stop), |(mut rx, stop)| async move {
        let next = tokio::select! {
            r = rx.recv() => r,
            _ = stop.cancelled() => return None,
        };
        let event = match next {
            Ok(v) => Event::default().event("update").data(v.to_string()),
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => Event::default()
                .event("lagged")
                .data(json!({ "type": "lagged", "missed": n }).to_string()),
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
        };
        Some((Ok(event), (rx, stop)))
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

/// `GET /sandbox/stats`: the counters.
pub(crate) async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    let stats = shared.lock().stats();
    Json(stats).into_response()
}

/// `GET /`: a page to chat with the bot by hand.
pub(crate) async fn index() -> Html<&'static str> {
    Html(include_str!("index.html"))
}
