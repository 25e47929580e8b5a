//! The Bot API: `/bot<token>/<method>`, GET or POST, parameters from the query string, a JSON
//! body or a form body, answered in Telegram's envelope.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use courier_common::secret::WebhookSecret;
use serde_json::{json, Map, Value};

use crate::state::{utf16_len, Shared, Webhook, BOT_FIRST_NAME, BOT_USERNAME, MAX_TEXT_LEN};

/// Telegram's default and bounds of `max_connections`.
const DEFAULT_MAX_CONNECTIONS: i64 = 40;

/// An error in Telegram's shape; the HTTP status is the error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub code: u16,
    pub description: String,
}

impl ApiError {
    pub(crate) fn new(code: u16, description: impl Into<String>) -> Self {
        Self {
            code,
            description: description.into(),
        }
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
        let body = json!({ "ok": false, "error_code": self.code, "description": self.description });
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

/// `ANY /{bot<token>}/{method}`.
pub(crate) async fn handle(
    State(shared): State<Arc<Shared>>,
    Path((token, method)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(token) = token.strip_prefix("bot") else {
        return ApiError::not_found().into_response();
    };
    if token != shared.token {
        return ApiError::unauthorized().into_response();
    }
    let result = Params::collect(query.as_deref(), &headers, &body)
        .and_then(|params| call(&shared, &method.to_ascii_lowercase(), &params));
    match result {
        Ok(response) => response,
        Err(e) => {
            tracing::debug!(%method, code = e.code, description = %e.description, "Bot API error");
            e.into_response()
        }
    }
}

/// Any other path: Telegram's 404.
pub(crate) async fn not_found() -> ApiError {
    ApiError::not_found()
}

fn call(shared: &Shared, method: &str, params: &Params) -> Result<Response, ApiError> {
    match method {
        "getme" => Ok(ok(get_me(shared))),
        "setwebhook" => set_webhook(shared, params),
        "deletewebhook" => delete_webhook(shared, params),
        "getwebhookinfo" => Ok(ok(webhook_info(shared))),
        "sendmessage" => send_message(shared, params).map(ok),
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
    }
    if let Some((date, message)) = &inner.last_error {
        info["last_error_date"] = json!(date);
        info["last_error_message"] = json!(message);
    }
    info
}

fn send_message(shared: &Shared, params: &Params) -> Result<Value, ApiError> {
    let chat_id = params
        .str("chat_id")?
        .filter(|s| !s.trim().is_empty())
        .ok_or_else(|| ApiError::bad_request("chat_id is empty"))?;
    let text = params.str("text")?.unwrap_or_default();
    if text.trim().is_empty() {
        return Err(ApiError::bad_request("message text is empty"));
    }
    if utf16_len(&text) > MAX_TEXT_LEN {
        return Err(ApiError::bad_request("message is too long"));
    }
    if let Some(mode) = params.str("parse_mode")?.filter(|m| !m.is_empty()) {
        if !["html", "markdown", "markdownv2"].contains(&mode.to_ascii_lowercase().as_str()) {
            return Err(ApiError::bad_request(format!(
                "unsupported parse_mode \"{mode}\""
            )));
        }
    }
    let reply_markup = match params.json("reply_markup") {
        None => None,
        Some(Ok(v @ Value::Object(_))) => Some(v),
        Some(_) => {
            return Err(ApiError::bad_request(
                "can't parse reply keyboard markup JSON object",
            ))
        }
    };
    // A chat id that is not a number is an @username, which the sandbox never knows.
    let chat_id: i64 = chat_id
        .trim()
        .parse()
        .map_err(|_| ApiError::bad_request("chat not found"))?;
    let date = chrono::Utc::now().timestamp();
    let mut inner = shared.lock();
    let chat = inner
        .chats
        .get_mut(&chat_id)
        .ok_or_else(|| ApiError::bad_request("chat not found"))?;
    let message_id = chat.append(true, &text, date);
    let mut message = json!({
        "message_id": message_id,
        "from": shared.bot_user(),
        "chat": chat.object.clone(),
        "date": date,
        "text": text,
    });
    // Telegram echoes inline keyboards only.
    if let Some(markup) = reply_markup.filter(|m| m.get("inline_keyboard").is_some()) {
        message["reply_markup"] = markup;
    }
    inner.stats.messages_from_bot += 1;
    Ok(message)
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
