//! The control API: users "send" messages, tests read transcripts and counters, and a small
//! page lets a person chat with the bot.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{Html, IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::ApiError;
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
    let date = chrono::Utc::now().timestamp();

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
    let message_id = chat.append(false, &m.text, date);
    let mut message = json!({
        "message_id": message_id,
        "from": from,
        "chat": chat.object.clone(),
        "date": date,
        "text": m.text,
    });
    if let Some(entity) = command_entity(&m.text) {
        message["entities"] = json!([entity]);
    }
    let update_id = inner.next_update_id();
    let update = json!({ "update_id": update_id, "message": message });
    let body = Bytes::from(serde_json::to_vec(&update).expect("a JSON value serializes"));
    inner.enqueue(m.chat_id, update_id, body);
    inner.stats.messages_from_users += 1;
    drop(inner);
    shared.wake.notify_one();
    Ok(json!({ "update_id": update_id, "message_id": message_id }))
}

/// `GET /sandbox/chats/{chat_id}/messages`: the chat's transcript, oldest first.
pub(crate) async fn transcript(
    State(shared): State<Arc<Shared>>,
    Path(chat_id): Path<String>,
) -> Response {
    let Ok(chat_id) = chat_id.parse::<i64>() else {
        return ApiError::new(404, "Not Found: chat not found").into_response();
    };
    let inner = shared.lock();
    match inner.chats.get(&chat_id) {
        Some(chat) => Json(&chat.transcript).into_response(),
        None => ApiError::new(404, "Not Found: chat not found").into_response(),
    }
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
