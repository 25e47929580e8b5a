//! The Bot API: `/bot<token>/<method>`, GET or POST, parameters from the query string, a JSON
//! body or a form body, answered in Telegram's envelope.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use courier_common::secret::WebhookSecret;
use serde_json::{json, Map, Value};
use tokio::time::Instant;

use crate::faults::Injected;
use crate::format::{self, ParseMode};
use crate::state::{
    now_unix_ms, utf16_len, CallRecord, CallbackAnswer, ChatType, Inner, Shared, Webhook,
    BOT_FIRST_NAME, BOT_USERNAME, MAX_TEXT_LEN,
};

/// Telegram's default and bounds of `max_connections`.
const DEFAULT_MAX_CONNECTIONS: i64 = 40;

/// How long a dropped call is held at most before the sandbox gives up on it too.
const DROP_HOLD: Duration = Duration::from_secs(600);
/// Longest `getUpdates` long poll.
const MAX_POLL_TIMEOUT: u64 = 600;

/// An error in Telegram's shape; the HTTP status is the error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub code: u16,
    pub description: String,
    /// `parameters.retry_after` (429).
    pub retry_after: Option<u32>,
    /// `parameters.migrate_to_chat_id` (a group upgraded to a supergroup).
    pub migrate_to_chat_id: Option<i64>,
}

impl ApiError {
    pub(crate) fn new(code: u16, description: impl Into<String>) -> Self {
        Self {
            code,
            description: description.into(),
            retry_after: None,
            migrate_to_chat_id: None,
        }
    }

    /// Telegram's 429: `Too Many Requests: retry after N` with `parameters.retry_after`.
    pub(crate) fn too_many_requests(retry_after: u32) -> Self {
        Self {
            retry_after: Some(retry_after),
            ..Self::new(429, format!("Too Many Requests: retry after {retry_after}"))
        }
    }

    /// An injected error of `status`, described like Telegram describes it.
    fn injected(status: u16) -> Self {
        let reason = StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Error");
        Self::new(status, reason)
    }

    fn blocked() -> Self {
        Self::new(403, "Forbidden: bot was blocked by the user")
    }

    fn chat_not_found() -> Self {
        Self::bad_request("chat not found")
    }

    /// A 400 `Bad Request: <detail>`.
    pub(crate) fn bad_request(detail: impl std::fmt::Display) -> Self {
        Self::new(400, format!("Bad Request: {detail}"))
    }

    pub(crate) fn not_found() -> Self {
        Self::new(404, "Not Found")
    }

    fn unauthorized() -> Self {
        Self::new(401, "Unauthorized")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code).unwrap_or(StatusCode::BAD_REQUEST);
        let mut body =
            json!({ "ok": false, "error_code": self.code, "description": self.description });
        if let Some(n) = self.retry_after {
            body["parameters"] = json!({ "retry_after": n });
        }
        if let Some(id) = self.migrate_to_chat_id {
            body["parameters"] = json!({ "migrate_to_chat_id": id });
        }
        (status, Json(body)).into_response()
    }
}

/// A successful Bot API answer.
fn ok(result: Value) -> Response {
    Json(json!({ "ok": true, "result": result })).into_response()
}

/// A successful answer with Telegram's `description` (setWebhook, deleteWebhook).
fn ok_described(result: Value, description: &str) -> Response {
    Json(json!({ "ok": true, "result": result, "description": description })).into_response()
}

/// The parameters of one call, whatever way they came. Form and query values are strings, so
/// every accessor also parses strings.
#[derive(Debug, Default)]
pub(crate) struct Params(Map<String, Value>);

impl Params {
    /// Collects the query string, then the body (which wins on a clash).
    pub(crate) fn collect(
        query: Option<&str>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<Self, ApiError> {
        let mut map = Map::new();
        if let Some(q) = query {
            extend_form(&mut map, q.as_bytes());
        }
        if body.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(map));
        }
        let raw_content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let content_type = raw_content_type.to_ascii_lowercase();
        if content_type.starts_with("application/json") {
            match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(obj)) => map.extend(obj),
                _ => return Err(ApiError::bad_request("can't parse JSON object")),
            }
        } else if content_type.starts_with("application/x-www-form-urlencoded") {
            extend_form(&mut map, body);
        } else if content_type.starts_with("multipart/form-data") {
            extend_multipart(&mut map, raw_content_type, body)
                .ok_or_else(|| ApiError::bad_request("can't parse multipart/form-data body"))?;
        } else {
            return Err(ApiError::bad_request(format!(
                "unsupported Content-Type `{content_type}`"
            )));
        }
        Ok(Self(map))
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|v| !v.is_null())
    }

    /// A string parameter (numbers and booleans are given as their text).
    pub(crate) fn str(&self, name: &str) -> Result<Option<String>, ApiError> {
        match self.get(name) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v @ (Value::Number(_) | Value::Bool(_))) => Ok(Some(v.to_string())),
            Some(_) => Err(ApiError::bad_request(format!(
                "field \"{name}\" must be of type String"
            ))),
        }
    }

    /// An integer parameter, as a number or a string.
    pub(crate) fn i64(&self, name: &str) -> Result<Option<i64>, ApiError> {
        let wrong = || ApiError::bad_request(format!("field \"{name}\" must be of type Integer"));
        match self.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => n.as_i64().map(Some).ok_or_else(wrong),
            Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
            Some(Value::String(s)) => s.trim().parse().map(Some).map_err(|_| wrong()),
            Some(_) => Err(wrong()),
        }
    }

    /// A boolean parameter, as a boolean, `true`/`false`, or `1`/`0`.
    pub(crate) fn bool(&self, name: &str) -> Result<Option<bool>, ApiError> {
        let wrong = || ApiError::bad_request(format!("field \"{name}\" must be of type Boolean"));
        match self.get(name) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(0) => Ok(Some(false)),
                Some(1) => Ok(Some(true)),
                _ => Err(wrong()),
            },
            Some(Value::String(s)) => match s.trim().to_ascii_lowercase().as_str() {
                "true" | "1" => Ok(Some(true)),
                "false" | "0" | "" => Ok(Some(false)),
                _ => Err(wrong()),
            },
            Some(_) => Err(wrong()),
        }
    }

    /// A JSON-valued parameter, as JSON or as a string holding JSON. `None` when absent or
    /// unparsable (the caller chooses the error).
    pub(crate) fn json(&self, name: &str) -> Option<Result<Value, ()>> {
        match self.get(name)? {
            Value::String(s) => Some(serde_json::from_str(s).map_err(|_| ())),
            v => Some(Ok(v.clone())),
        }
    }
}

fn extend_form(map: &mut Map<String, Value>, raw: &[u8]) {
    for (k, v) in url::form_urlencoded::parse(raw) {
        map.insert(k.into_owned(), Value::String(v.into_owned()));
    }
}

/// Adds the text fields of a `multipart/form-data` body (teloxide-core sends setWebhook and
/// the send-a-file methods this way). File parts are skipped: the sandbox stores no files.
/// `None` when the body is malformed.
fn extend_multipart(map: &mut Map<String, Value>, content_type: &str, body: &[u8]) -> Option<()> {
    let boundary = content_type
        .split(';')
        .find_map(|p| p.trim().strip_prefix("boundary="))?
        .trim_matches('"');
    let delimiter = format!("--{boundary}");
    let next_part = format!("\r\n{delimiter}");
    let mut rest = &body[find(body, delimiter.as_bytes())? + delimiter.len()..];
    while !rest.starts_with(b"--") {
        rest = rest.strip_prefix(b"\r\n")?;
        let end = find(rest, next_part.as_bytes())?;
        let part = &rest[..end];
        rest = &rest[end + next_part.len()..];
        let header_end = find(part, b"\r\n\r\n")?;
        let head = std::str::from_utf8(&part[..header_end]).ok()?;
        let value = &part[header_end + 4..];
        let disposition = head.split("\r\n").find_map(|line| {
            let (k, v) = line.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case("content-disposition")
                .then_some(v)
        })?;
        let mut name = None;
        let mut is_file = false;
        for param in disposition.split(';').skip(1) {
            let Some((k, v)) = param.split_once('=') else {
                continue;
            };
            match k.trim().to_ascii_lowercase().as_str() {
                "name" => name = Some(v.trim().trim_matches('"').to_owned()),
                "filename" => is_file = true,
                _ => {}
            }
        }
        if !is_file {
            let value = String::from_utf8_lossy(value).into_owned();
            map.insert(name?, Value::String(value));
        }
    }
    Some(())
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// `ANY /{bot<token>}/{method}`, counted in the metrics.
pub(crate) async fn handle(
    State(shared): State<Arc<Shared>>,
    Path((token, method)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let response = answer(&shared, &token, &method, query, &headers, &body).await;
    shared.metrics.answered(&method, response.status().as_u16());
    response
}

async fn answer(
    shared: &Arc<Shared>,
    token: &str,
    method: &str,
    query: Option<String>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let Some(token) = token.strip_prefix("bot") else {
        return ApiError::not_found().into_response();
    };
    if token != shared.token {
        return ApiError::unauthorized().into_response();
    }
    let lower = method.to_ascii_lowercase();
    let params = match Params::collect(query.as_deref(), headers, body) {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let hold = shared.lock().faults.hold(rand::random::<f64>);
    if !hold.is_zero() {
        tokio::select! {
            _ = tokio::time::sleep(hold) => {}
            _ = shared.stop.cancelled() => return ApiError::injected(503).into_response(),
        }
    }
    let result = match lower.as_str() {
        "getupdates" => get_updates(shared, &params).await,
        m if chat_method(m).is_some() => match sending_call(shared, &lower, &params) {
            Sent::Done(result) => result,
            Sent::Dropped => {
                // Never answered: held until the client gives up (hyper then drops this
                // future), the sandbox stops, or DROP_HOLD passes.
                tokio::select! {
                    _ = tokio::time::sleep(DROP_HOLD) => {}
                    _ = shared.stop.cancelled() => {}
                }
                Err(ApiError::injected(504))
            }
        },
        _ => call(shared, &lower, &params),
    };
    match result {
        Ok(response) => response,
        Err(e) => {
            if e.code == 429 && chat_method(&lower).is_none() {
                shared.lock().stats.responses_429 += 1;
            }
            tracing::debug!(%method, code = e.code, description = %e.description, "Bot API error");
            e.into_response()
        }
    }
}

/// Any other path: Telegram's 404.
pub(crate) async fn not_found() -> ApiError {
    ApiError::not_found()
}

/// The methods that act on a chat, as Telegram spells them: fault injection, the rate limits
/// and the call log apply to them (`sendMessage`, `editMessageText`, `deleteMessage`,
/// `answerCallbackQuery`, `sendChatAction`). `None` for any other method.
fn chat_method(lower: &str) -> Option<&'static str> {
    match lower {
        "sendmessage" => Some("sendMessage"),
        "editmessagetext" => Some("editMessageText"),
        "deletemessage" => Some("deleteMessage"),
        "answercallbackquery" => Some("answerCallbackQuery"),
        "sendchataction" => Some("sendChatAction"),
        _ => None,
    }
}

/// The outcome of a sending call.
enum Sent {
    Done(Result<Response, ApiError>),
    Dropped,
}

/// A method that acts on a chat ([`chat_method`]): injected faults, then the method with its
/// rate limits, all under one lock so the call log is in decision order.
fn sending_call(shared: &Shared, method: &str, params: &Params) -> Sent {
    let mut inner = shared.lock();
    let name = chat_method(method).expect("a chat method");
    let callback_query_id = params
        .str("callback_query_id")
        .ok()
        .flatten()
        .filter(|_| name == "answerCallbackQuery");
    let callback = callback_query_id
        .as_ref()
        .and_then(|id| inner.callbacks.get(id))
        .map(|c| (c.chat_id, c.message_id));
    let chat_id = match callback {
        Some((chat, _)) => chat,
        None => params
            .str("chat_id")
            .ok()
            .flatten()
            .and_then(|s| s.trim().parse::<i64>().ok())
            .unwrap_or(0),
    };
    let text = params.str("text").ok().flatten();
    let action = params
        .str("action")
        .ok()
        .flatten()
        .filter(|_| name == "sendChatAction");
    let injected = inner.faults.decide(rand::random::<f64>);
    let (outcome, status, message_id) = match injected {
        Some(fault) => {
            inner.stats.faults_injected += 1;
            match fault {
                Injected::Drop => {
                    inner.stats.calls_dropped += 1;
                    (Sent::Dropped, 0, None)
                }
                Injected::RetryAfter(n) => {
                    (Sent::Done(Err(ApiError::too_many_requests(n))), 429, None)
                }
                Injected::Error(code) => (Sent::Done(Err(ApiError::injected(code))), code, None),
            }
        }
        None => {
            let result = match name {
                "sendMessage" => send_message(shared, &mut inner, params),
                "editMessageText" => edit_message_text(shared, &mut inner, params),
                "deleteMessage" => delete_message(shared, &mut inner, params),
                "answerCallbackQuery" => answer_callback_query(shared, &mut inner, params),
                _ => send_chat_action(shared, &mut inner, params),
            };
            let status = result.as_ref().map_or_else(|e| e.code, |_| 200);
            // The message the call went to: the one it sent or edited, the one it deleted,
            // the one whose button was pressed.
            let message_id = match &result {
                Ok(v) if v.is_object() => v["message_id"].as_i64(),
                Ok(_) if name == "deleteMessage" => params.i64("message_id").ok().flatten(),
                Ok(_) => callback.map(|(_, m)| m),
                Err(_) => None,
            };
            (Sent::Done(result.map(ok)), status, message_id)
        }
    };
    if status == 429 {
        inner.stats.responses_429 += 1;
    }
    inner.log_call(CallRecord {
        method: name.to_owned(),
        chat_id,
        at_unix_ms: now_unix_ms(),
        status,
        text,
        message_id,
        action,
        callback_query_id,
    });
    outcome
}

fn call(shared: &Shared, method: &str, params: &Params) -> Result<Response, ApiError> {
    match method {
        "getme" => Ok(ok(get_me(shared))),
        "logout" | "close" => Ok(ok(json!(true))),
        "setwebhook" => set_webhook(shared, params),
        "deletewebhook" => delete_webhook(shared, params),
        "getwebhookinfo" => Ok(ok(webhook_info(shared))),
        "setmycommands" => set_my_commands(shared, params).map(ok),
        "getmycommands" => get_my_commands(shared, params).map(ok),
        "deletemycommands" => delete_my_commands(shared, params).map(ok),
        _ => Err(ApiError::not_found()),
    }
}

fn get_me(shared: &Shared) -> Value {
    json!({
        "id": shared.bot_id,
        "is_bot": true,
        "first_name": BOT_FIRST_NAME,
        "username": BOT_USERNAME,
        "can_join_groups": true,
        "can_read_all_group_messages": false,
        "supports_inline_queries": false,
        "can_connect_to_business": false,
        "has_main_web_app": false,
    })
}

/// The update kinds the sandbox can create (and Telegram's other kinds, accepted and ignored).
const UPDATE_KINDS: &[&str] = &[
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
    "poll",
    "poll_answer",
    "my_chat_member",
    "chat_member",
    "chat_join_request",
    "chat_boost",
    "removed_chat_boost",
];

/// The `allowed_updates` parameter: `None` when absent (keep the previous setting).
fn allowed_updates(params: &Params) -> Result<Option<Vec<String>>, ApiError> {
    let bad = || ApiError::bad_request("can't parse allowed updates");
    match params.json("allowed_updates") {
        None => Ok(None),
        Some(Ok(Value::Array(kinds))) => {
            let mut out = Vec::new();
            for k in kinds {
                let k = k.as_str().ok_or_else(bad)?;
                // Telegram ignores unknown kinds.
                if UPDATE_KINDS.contains(&k) {
                    out.push(k.to_owned());
                }
            }
            Ok(Some(out))
        }
        Some(_) => Err(bad()),
    }
}

fn set_webhook(shared: &Shared, params: &Params) -> Result<Response, ApiError> {
    let url = params.str("url")?.unwrap_or_default();
    let drop_pending = params.bool("drop_pending_updates")?.unwrap_or(false);
    if url.trim().is_empty() {
        // Telegram: setWebhook with an empty URL removes the webhook.
        return Ok(remove_webhook(shared, drop_pending));
    }
    let parsed = url::Url::parse(url.trim())
        .map_err(|_| ApiError::bad_request("invalid webhook URL specified"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
        return Err(ApiError::bad_request("invalid webhook URL specified"));
    }
    let secret = match params.str("secret_token")?.filter(|s| !s.is_empty()) {
        Some(s) => Some(
            WebhookSecret::parse(&s)
                .map_err(|_| ApiError::bad_request("secret token contains unallowed characters"))?
                .expose()
                .to_owned(),
        ),
        None => None,
    };
    let max_connections = params
        .i64("max_connections")?
        .unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if !(1..=100).contains(&max_connections) {
        return Err(ApiError::bad_request(
            "max_connections must be between 1 and 100",
        ));
    }
    let allowed = allowed_updates(params)?;
    let webhook = Webhook {
        url: parsed.to_string(),
        secret,
        max_connections: max_connections as usize,
    };
    let description = {
        let mut inner = shared.lock();
        if drop_pending {
            inner.drop_pending();
        }
        if let Some(allowed) = allowed {
            inner.allowed_updates = Some(allowed);
        }
        let same = inner.webhook.as_ref() == Some(&webhook);
        inner.webhook = Some(webhook);
        if same {
            "Webhook is already set"
        } else {
            "Webhook was set"
        }
    };
    tracing::info!(url = %parsed, "webhook set");
    shared.wake.notify_one();
    // Long polls in progress end with 409.
    shared.updates.send_modify(|n| *n += 1);
    Ok(ok_described(json!(true), description))
}

fn delete_webhook(shared: &Shared, params: &Params) -> Result<Response, ApiError> {
    let drop_pending = params.bool("drop_pending_updates")?.unwrap_or(false);
    Ok(remove_webhook(shared, drop_pending))
}

fn remove_webhook(shared: &Shared, drop_pending: bool) -> Response {
    let mut inner = shared.lock();
    if drop_pending {
        inner.drop_pending();
    }
    let description = match inner.webhook.take() {
        Some(_) => {
            tracing::info!("webhook deleted");
            "Webhook was deleted"
        }
        None => "Webhook is already deleted",
    };
    ok_described(json!(true), description)
}

fn webhook_info(shared: &Shared) -> Value {
    let inner = shared.lock();
    let mut info = json!({
        "url": inner.webhook.as_ref().map(|w| w.url.as_str()).unwrap_or(""),
        "has_custom_certificate": false,
        "pending_update_count": inner.pending(),
    });
    if let Some(w) = &inner.webhook {
        info["max_connections"] = json!(w.max_connections);
        if let Some(allowed) = &inner.allowed_updates {
            info["allowed_updates"] = json!(allowed);
        }
    }
    if let Some((date, message)) = &inner.last_error {
        info["last_error_date"] = json!(date);
        info["last_error_message"] = json!(message);
    }
    info
}

/// `getUpdates`: 409 while a webhook is set; otherwise the pending updates after `offset`,
/// waiting up to `timeout` seconds for one. A newer getUpdates call ends this one with 409.
async fn get_updates(shared: &Shared, params: &Params) -> Result<Response, ApiError> {
    let offset = params.i64("offset")?;
    let limit = params.i64("limit")?.unwrap_or(100).clamp(1, 100) as usize;
    let timeout = params
        .i64("timeout")?
        .unwrap_or(0)
        .clamp(0, MAX_POLL_TIMEOUT as i64) as u64;
    let allowed = allowed_updates(params)?;
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let generation = shared.poll_generation.fetch_add(1, Ordering::SeqCst) + 1;
    let mut changed = shared.updates.subscribe();
    // Wake an older long poll so it ends with 409.
    shared.updates.send_modify(|n| *n += 1);
    changed.mark_unchanged();
    loop {
        let updates = {
            let mut inner = shared.lock();
            if inner.webhook.is_some() {
                return Err(ApiError::new(
                    409,
                    "Conflict: can't use getUpdates method while webhook is active; \
                     use deleteWebhook to delete the webhook first",
                ));
            }
            if shared.poll_generation.load(Ordering::SeqCst) != generation {
                return Err(ApiError::new(
                    409,
                    "Conflict: terminated by other getUpdates request; \
                     make sure that only one bot instance is running",
                ));
            }
            if let Some(allowed) = &allowed {
                inner.allowed_updates = Some(allowed.clone());
            }
            inner.poll(offset, limit)
        };
        if !updates.is_empty() || Instant::now() >= deadline {
            let mut body = Vec::from(&b"{\"ok\":true,\"result\":["[..]);
            for (i, u) in updates.iter().enumerate() {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(u);
            }
            body.extend_from_slice(b"]}");
            return Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response());
        }
        tokio::select! {
            r = changed.changed() => if r.is_err() { return Err(ApiError::injected(503)) },
            _ = tokio::time::sleep_until(deadline) => {}
            _ = shared.stop.cancelled() => return Err(ApiError::injected(503)),
        }
    }
}

/// The `chat_id` parameter as a number; an `@username` is a chat the sandbox never knows.
fn chat_id_param(params: &Params) -> Result<i64, ApiError> {
    let raw = params
        .str("chat_id")?
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("chat_id is empty"))?;
    raw.trim().parse().map_err(|_| ApiError::chat_not_found())
}

/// A message text and its entities, as Telegram makes them: the `text` parameter parsed
/// according to `parse_mode` (HTML, MarkdownV2 or Markdown), or taken with the `entities`
/// given; white space trimmed at both ends; then not empty and at most 4096 UTF-16 code units.
fn message_text(params: &Params) -> Result<(String, Vec<Value>), ApiError> {
    let raw = params.str("text")?.unwrap_or_default();
    let mode = match params.str("parse_mode")? {
        None => None,
        Some(m) => ParseMode::parse(&m)
            .map_err(|()| ApiError::bad_request(format!("unsupported parse_mode \"{m}\"")))?,
    };
    let cant_parse = |e: String| ApiError::bad_request(format!("can't parse entities: {e}"));
    let (text, entities) = match mode {
        // With a parse mode, Telegram ignores `entities`.
        Some(mode) => {
            let formatted = format::parse(mode, &raw).map_err(cant_parse)?;
            let entities = formatted.entities_json();
            (formatted.text, entities)
        }
        None => match params.json("entities") {
            None => (raw, Vec::new()),
            Some(Ok(given)) => {
                let entities = format::check_entities(&raw, &given).map_err(cant_parse)?;
                (raw, entities)
            }
            Some(Err(())) => {
                return Err(ApiError::bad_request("can't parse entities JSON object"));
            }
        },
    };
    let (text, entities) = format::trim(&text, entities);
    if text.is_empty() {
        return Err(ApiError::bad_request("message text is empty"));
    }
    if utf16_len(&text) > MAX_TEXT_LEN {
        return Err(ApiError::bad_request("message is too long"));
    }
    Ok((text, entities))
}

/// The `reply_markup` parameter: an inline keyboard is validated and kept (Telegram echoes
/// only inline keyboards); other keyboards are accepted and not echoed.
fn reply_markup_param(params: &Params) -> Result<Option<Value>, ApiError> {
    let markup = match params.json("reply_markup") {
        None => return Ok(None),
        Some(Ok(v @ Value::Object(_))) => v,
        Some(_) => {
            return Err(ApiError::bad_request(
                "can't parse reply keyboard markup JSON object",
            ))
        }
    };
    let Some(keyboard) = markup.get("inline_keyboard") else {
        return Ok(None);
    };
    let rows = keyboard
        .as_array()
        .ok_or_else(|| ApiError::bad_request("field \"inline_keyboard\" must be an Array"))?;
    for row in rows {
        let buttons = row.as_array().ok_or_else(|| {
            ApiError::bad_request("field \"inline_keyboard\" must be an Array of Arrays")
        })?;
        for button in buttons {
            let text = button.get("text").and_then(Value::as_str).unwrap_or("");
            if text.is_empty() {
                return Err(ApiError::bad_request(
                    "can't parse inline keyboard button: Text must be non-empty",
                ));
            }
            let kinds = [
                "url",
                "callback_data",
                "web_app",
                "login_url",
                "switch_inline_query",
                "switch_inline_query_current_chat",
                "switch_inline_query_chosen_chat",
                "copy_text",
                "callback_game",
                "pay",
            ];
            if !kinds.iter().any(|k| button.get(k).is_some()) {
                return Err(ApiError::bad_request(
                    "can't parse inline keyboard button: Text buttons are unallowed in the inline keyboard",
                ));
            }
            if let Some(data) = button.get("callback_data") {
                let len = data.as_str().map_or(0, str::len);
                if !(1..=64).contains(&len) {
                    return Err(ApiError::bad_request("BUTTON_DATA_INVALID"));
                }
            }
        }
    }
    Ok(Some(markup))
}

/// The chat a sending method targets: known, not migrated, not blocked.
fn target_chat(inner: &Inner, chat_id: i64) -> Result<(), ApiError> {
    let chat = inner
        .chats
        .get(&chat_id)
        .ok_or_else(ApiError::chat_not_found)?;
    if let Some(to) = chat.migrated_to {
        return Err(ApiError {
            migrate_to_chat_id: Some(to),
            ..ApiError::bad_request("group chat was upgraded to a supergroup chat")
        });
    }
    if inner.faults.is_blocked(chat_id) {
        return Err(ApiError::blocked());
    }
    Ok(())
}

fn send_message(shared: &Shared, inner: &mut Inner, params: &Params) -> Result<Value, ApiError> {
    let raw_chat = params
        .str("chat_id")?
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("chat_id is empty"))?;
    let (text, entities) = message_text(params)?;
    let reply_markup = reply_markup_param(params)?;
    let (reply_to, allow_without) = match params.json("reply_parameters") {
        None => (
            params.i64("reply_to_message_id")?,
            params.bool("allow_sending_without_reply")?.unwrap_or(false),
        ),
        Some(Ok(v @ Value::Object(_))) => (
            v.get("message_id").and_then(Value::as_i64),
            v.get("allow_sending_without_reply")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        ),
        Some(_) => {
            return Err(ApiError::bad_request(
                "can't parse reply parameters JSON object",
            ))
        }
    };
    let chat_id: i64 = raw_chat
        .trim()
        .parse()
        .map_err(|_| ApiError::chat_not_found())?;
    target_chat(inner, chat_id)?;
    let chat = &inner.chats[&chat_id];
    let reply_to = match reply_to {
        Some(id) if chat.message(id).is_some() => Some(id),
        Some(_) if allow_without => None,
        Some(_) => return Err(ApiError::bad_request("message to be replied not found")),
        None => None,
    };
    inner
        .limiter
        .acquire(chat_id, Instant::now())
        .map_err(ApiError::too_many_requests)?;
    let bot = shared.bot_user();
    let chat = inner.chats.get_mut(&chat_id).expect("checked above");
    let (entry, duplicate) = chat.append_bot(&text, entities, reply_markup, reply_to);
    let entry = entry.clone();
    let message = chat.message_object(&entry, &bot);
    inner.stats.messages_from_bot += 1;
    if duplicate {
        inner.stats.duplicate_replies += 1;
    }
    shared.emit(json!({ "type": "message", "chat_id": chat_id, "message": entry }));
    Ok(message)
}

fn edit_message_text(
    shared: &Shared,
    inner: &mut Inner,
    params: &Params,
) -> Result<Value, ApiError> {
    if params
        .str("inline_message_id")?
        .is_some_and(|s| !s.is_empty())
    {
        return Err(ApiError::bad_request("MESSAGE_ID_INVALID"));
    }
    let chat_id = chat_id_param(params)?;
    let message_id = params
        .i64("message_id")?
        .ok_or_else(|| ApiError::bad_request("message identifier is not specified"))?;
    let (text, entities) = message_text(params)?;
    let reply_markup = reply_markup_param(params)?;
    target_chat(inner, chat_id)?;
    let chat = &inner.chats[&chat_id];
    let entry = chat
        .message(message_id)
        .ok_or_else(|| ApiError::bad_request("message to edit not found"))?;
    if !entry.from_bot {
        return Err(ApiError::bad_request("message can't be edited"));
    }
    if entry.text == text && entry.entities == entities && entry.reply_markup == reply_markup {
        return Err(ApiError::bad_request(
            "message is not modified: specified new message content and reply markup are \
             exactly the same as a current content and reply markup of the message",
        ));
    }
    inner
        .limiter
        .acquire(chat_id, Instant::now())
        .map_err(ApiError::too_many_requests)?;
    let bot = shared.bot_user();
    let chat = inner.chats.get_mut(&chat_id).expect("checked above");
    let entry = chat.message_mut(message_id).expect("checked above");
    entry.text = text;
    entry.entities = entities;
    entry.reply_markup = reply_markup;
    entry.edit_date = Some(chrono::Utc::now().timestamp());
    let entry = entry.clone();
    let message = chat.message_object(&entry, &bot);
    inner.stats.messages_edited += 1;
    shared.emit(json!({ "type": "edit", "chat_id": chat_id, "message": entry }));
    Ok(message)
}

/// Telegram's chat actions.
const CHAT_ACTIONS: &[&str] = &[
    "typing",
    "upload_photo",
    "record_video",
    "upload_video",
    "record_voice",
    "upload_voice",
    "upload_document",
    "choose_sticker",
    "find_location",
    "record_video_note",
    "upload_video_note",
];

fn send_chat_action(
    shared: &Shared,
    inner: &mut Inner,
    params: &Params,
) -> Result<Value, ApiError> {
    let chat_id = chat_id_param(params)?;
    let action = params.str("action")?.unwrap_or_default();
    if !CHAT_ACTIONS.contains(&action.as_str()) {
        return Err(ApiError::bad_request("wrong parameter action in request"));
    }
    target_chat(inner, chat_id)?;
    inner
        .limiter
        .acquire_bot(Instant::now())
        .map_err(ApiError::too_many_requests)?;
    inner.stats.chat_actions += 1;
    shared.emit(json!({ "type": "chat_action", "chat_id": chat_id, "action": action }));
    Ok(json!(true))
}

/// The error of an unknown, or already answered, callback query (Telegram's words).
fn query_invalid() -> ApiError {
    ApiError::bad_request("query is too old and response timeout expired or query ID is invalid")
}

fn answer_callback_query(
    shared: &Shared,
    inner: &mut Inner,
    params: &Params,
) -> Result<Value, ApiError> {
    let id = params.str("callback_query_id")?.unwrap_or_default();
    let text = params.str("text")?.unwrap_or_default();
    if text.chars().count() > 200 {
        return Err(ApiError::bad_request("MESSAGE_TOO_LONG"));
    }
    let show_alert = params.bool("show_alert")?.unwrap_or(false);
    let callback = inner
        .callbacks
        .get(&id)
        .filter(|c| c.answer.is_none())
        .ok_or_else(query_invalid)?;
    let (chat_id, message_id) = (callback.chat_id, callback.message_id);
    inner
        .limiter
        .acquire_bot(Instant::now())
        .map_err(ApiError::too_many_requests)?;
    if let Some(callback) = inner.callbacks.get_mut(&id) {
        callback.answer = Some(CallbackAnswer {
            text: text.clone(),
            show_alert,
            at_unix_ms: now_unix_ms(),
        });
    }
    inner.stats.callbacks_answered += 1;
    shared.emit(json!({
        "type": "callback_answer", "chat_id": chat_id,
        "message_id": message_id, "text": text, "show_alert": show_alert,
    }));
    Ok(json!(true))
}

/// How long after it was sent a message can still be deleted (Telegram's 48 hours).
const DELETE_WINDOW_SECS: i64 = 48 * 3600;

/// `deleteMessage`: the bot's own messages, and the users' in a private chat, within 48
/// hours; the message disappears from the transcript and from every method.
fn delete_message(shared: &Shared, inner: &mut Inner, params: &Params) -> Result<Value, ApiError> {
    let chat_id = chat_id_param(params)?;
    let message_id = params
        .i64("message_id")?
        .ok_or_else(|| ApiError::bad_request("message identifier is not specified"))?;
    target_chat(inner, chat_id)?;
    let chat = &inner.chats[&chat_id];
    let entry = chat
        .message(message_id)
        .ok_or_else(|| ApiError::bad_request("message to delete not found"))?;
    let too_old = chrono::Utc::now().timestamp() - entry.date > DELETE_WINDOW_SECS;
    if too_old || (!entry.from_bot && chat.kind != ChatType::Private) {
        return Err(ApiError::bad_request("message can't be deleted"));
    }
    inner
        .limiter
        .acquire(chat_id, Instant::now())
        .map_err(ApiError::too_many_requests)?;
    let chat = inner.chats.get_mut(&chat_id).expect("checked above");
    chat.message_mut(message_id).expect("checked above").deleted = true;
    inner.stats.messages_deleted += 1;
    shared.emit(json!({ "type": "delete", "chat_id": chat_id, "message_id": message_id }));
    Ok(json!(true))
}

/// The key commands are stored under: the scope (default `{"type":"default"}`) and language.
fn commands_key(params: &Params) -> Result<String, ApiError> {
    let scope = match params.json("scope") {
        None => json!({"type": "default"}),
        Some(Ok(v @ Value::Object(_))) if v.get("type").is_some_and(Value::is_string) => v,
        Some(_) => return Err(ApiError::bad_request("can't parse BotCommandScope")),
    };
    let language = params.str("language_code")?.unwrap_or_default();
    if !(language.is_empty()
        || (language.len() == 2 && language.chars().all(|c| c.is_ascii_lowercase())))
    {
        return Err(ApiError::bad_request("invalid language code specified"));
    }
    Ok(format!("{scope}|{language}"))
}

fn set_my_commands(shared: &Shared, params: &Params) -> Result<Value, ApiError> {
    let commands = match params.json("commands") {
        Some(Ok(Value::Array(c))) => c,
        _ => return Err(ApiError::bad_request("can't parse commands JSON object")),
    };
    if commands.len() > 100 {
        return Err(ApiError::bad_request("too many commands specified"));
    }
    let mut clean = Vec::new();
    for c in &commands {
        let command = c.get("command").and_then(Value::as_str).unwrap_or("");
        let description = c.get("description").and_then(Value::as_str).unwrap_or("");
        let command = command.strip_prefix('/').unwrap_or(command);
        let valid = (1..=32).contains(&command.len())
            && command
                .chars()
                .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_');
        if !valid {
            return Err(ApiError::bad_request("BOT_COMMAND_INVALID"));
        }
        if !(1..=256).contains(&description.chars().count()) {
            return Err(ApiError::bad_request("command description is invalid"));
        }
        clean.push(json!({"command": command, "description": description}));
    }
    let key = commands_key(params)?;
    shared.lock().commands.insert(key, Value::Array(clean));
    Ok(json!(true))
}

fn get_my_commands(shared: &Shared, params: &Params) -> Result<Value, ApiError> {
    let key = commands_key(params)?;
    Ok(shared
        .lock()
        .commands
        .get(&key)
        .cloned()
        .unwrap_or_else(|| json!([])))
}

fn delete_my_commands(shared: &Shared, params: &Params) -> Result<Value, ApiError> {
    let key = commands_key(params)?;
    shared.lock().commands.remove(&key);
    Ok(json!(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(body: &str) -> Params {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        Params::collect(None, &headers, body.as_bytes()).unwrap()
    }

    #[test]
    fn form_values_are_parsed_from_strings() {
        let p = form("chat_id=-100&drop=true&n=0&markup=%7B%22a%22%3A1%7D&t=hi+there");
        assert_eq!(p.i64("chat_id").unwrap(), Some(-100));
        assert_eq!(p.bool("drop").unwrap(), Some(true));
        assert_eq!(p.bool("n").unwrap(), Some(false));
        assert_eq!(p.json("markup"), Some(Ok(json!({"a": 1}))));
        assert_eq!(p.str("t").unwrap().as_deref(), Some("hi there"));
        assert_eq!(p.str("missing").unwrap(), None);
        assert!(p.i64("t").is_err());
    }

    #[test]
    fn multipart_text_fields_are_read_and_files_skipped() {
        let body = "--XyZ\r\nContent-Disposition: form-data; name=\"url\"\r\n\r\nhttp://h/x\r\n\
                    --XyZ\r\ncontent-disposition: form-data; name=\"certificate\"; filename=\"c.pem\"\r\n\
                    Content-Type: application/octet-stream\r\n\r\nBYTES\r\n\
                    --XyZ\r\nContent-Disposition: form-data; name=\"max_connections\"\r\n\r\n5\r\n--XyZ--\r\n";
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            "multipart/form-data; boundary=XyZ".parse().unwrap(),
        );
        let p = Params::collect(None, &headers, body.as_bytes()).unwrap();
        assert_eq!(p.str("url").unwrap().as_deref(), Some("http://h/x"));
        assert_eq!(p.i64("max_connections").unwrap(), Some(5));
        assert_eq!(p.str("certificate").unwrap(), None);
        assert!(Params::collect(None, &headers, b"--XyZ\r\ngarbage").is_err());
    }

    #[test]
    fn body_wins_over_query_and_bad_json_is_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        let p = Params::collect(Some("a=1&b=2"), &headers, br#"{"a": 5}"#).unwrap();
        assert_eq!(p.i64("a").unwrap(), Some(5));
        assert_eq!(p.i64("b").unwrap(), Some(2));
        let err = Params::collect(None, &headers, b"{nope").unwrap_err();
        assert_eq!(err.code, 400);
    }
}
