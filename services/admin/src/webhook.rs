//! The webhook, against the Bot API: `setWebhook` (with the configured secret as
//! `secret_token`), `deleteWebhook`, `getWebhookInfo`.
//!
//! `setWebhook` and `deleteWebhook` go through teloxide-core, like the sender's calls.
//! `getWebhookInfo` is read leniently from the raw answer instead: teloxide-core's
//! `WebhookInfo` refuses an `allowed_updates` kind it does not know, and Telegram adds kinds
//! with every Bot API release — the one command an operator needs to see what is wrong would
//! fail. No message of an error carries the bot token (it is part of the Bot API's URL).

use serde::Deserialize;
use teloxide_core::{
    payloads::{DeleteWebhookSetters, SetWebhookSetters},
    prelude::Requester,
    requests::Request as _,
    types::AllowedUpdate,
    RequestError,
};
use tonic::Status;

use courier_proto::admin::v1 as pb;

use crate::Ctx;

/// `setWebhook`, then `getWebhookInfo`.
pub async fn set(ctx: &Ctx, req: pb::SetWebhookRequest) -> Result<pb::SetWebhookResponse, Status> {
    let url = url::Url::parse(req.url.trim())
        .map_err(|e| Status::invalid_argument(format!("url: `{}` is not a URL: {e}", req.url)))?;
    if url.scheme() != "https" && url.scheme() != "http" {
        return Err(Status::invalid_argument(
            "url: Telegram delivers webhooks to https URLs (http only to the sandbox)",
        ));
    }
    if req.max_connections > 100 {
        return Err(Status::invalid_argument(
            "max_connections: Telegram allows 1-100",
        ));
    }
    let allowed: Vec<AllowedUpdate> = req
        .allowed_updates
        .iter()
        .filter(|kind| !kind.trim().is_empty())
        .map(|kind| {
            serde_json::from_value(serde_json::Value::String(kind.trim().to_owned())).map_err(
                |_| {
                    Status::invalid_argument(format!(
                        "allowed_updates: `{kind}` is not an update kind (message, edited_message, \
                         callback_query, my_chat_member, ...)"
                    ))
                },
            )
        })
        .collect::<Result<_, _>>()?;
    let mut call = ctx
        .bot
        .set_webhook(url.clone())
        .secret_token(ctx.webhook_secret.expose().to_owned())
        .drop_pending_updates(req.drop_pending_updates);
    if !allowed.is_empty() {
        call = call.allowed_updates(allowed);
    }
    if req.max_connections > 0 {
        call = call.max_connections(req.max_connections as u8);
    }
    call.send()
        .await
        .map_err(|e| bot_api_error(ctx, "setWebhook", e))?;
    tracing::info!(%url, drop_pending = req.drop_pending_updates, "webhook set");
    Ok(pb::SetWebhookResponse {
        description: "Webhook was set".into(),
        info: Some(info(ctx).await?),
    })
}

/// `deleteWebhook`.
pub async fn delete(
    ctx: &Ctx,
    req: pb::DeleteWebhookRequest,
) -> Result<pb::DeleteWebhookResponse, Status> {
    ctx.bot
        .delete_webhook()
        .drop_pending_updates(req.drop_pending_updates)
        .send()
        .await
        .map_err(|e| bot_api_error(ctx, "deleteWebhook", e))?;
    tracing::info!(drop_pending = req.drop_pending_updates, "webhook deleted");
    Ok(pb::DeleteWebhookResponse {
        description: "Webhook was deleted".into(),
    })
}

/// `getWebhookInfo`'s answer, read leniently (unknown fields and kinds are kept as they are).
#[derive(Debug, Deserialize)]
struct Answer {
    ok: bool,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    result: Option<RawInfo>,
}

#[derive(Debug, Default, Deserialize)]
struct RawInfo {
    #[serde(default)]
    url: String,
    #[serde(default)]
    has_custom_certificate: bool,
    #[serde(default)]
    pending_update_count: u32,
    #[serde(default)]
    ip_address: Option<String>,
    #[serde(default)]
    last_error_date: Option<i64>,
    #[serde(default)]
    last_error_message: Option<String>,
    #[serde(default)]
    last_synchronization_error_date: Option<i64>,
    #[serde(default)]
    max_connections: Option<u32>,
    #[serde(default)]
    allowed_updates: Option<Vec<String>>,
}

/// `getWebhookInfo`.
pub async fn info(ctx: &Ctx) -> Result<pb::WebhookInfo, Status> {
    let url = ctx
        .bot
        .api_url()
        .join(&format!("/bot{}/getWebhookInfo", ctx.bot.token()))
        .map_err(|e| Status::internal(format!("Bot API URL: {e}")))?;
    let answer = ctx.bot.client().post(url).send().await.map_err(|e| {
        Status::unavailable(format!(
            "getWebhookInfo: Bot API unreachable: {}",
            e.without_url()
        ))
    })?;
    let status = answer.status();
    let answer: Answer = answer.json().await.map_err(|e| {
        Status::unavailable(format!(
            "getWebhookInfo: unreadable answer (HTTP {status}): {}",
            e.without_url()
        ))
    })?;
    if !answer.ok {
        return Err(Status::failed_precondition(format!(
            "getWebhookInfo: Telegram refused: {}",
            answer.description.unwrap_or_else(|| status.to_string())
        )));
    }
    let raw = answer.result.unwrap_or_default();
    Ok(pb::WebhookInfo {
        url: raw.url,
        pending_update_count: raw.pending_update_count,
        max_connections: raw.max_connections.unwrap_or(0),
        allowed_updates: raw.allowed_updates.unwrap_or_default(),
        ip_address: raw.ip_address.unwrap_or_default(),
        last_error_unix: raw.last_error_date.unwrap_or(0),
        last_error_message: raw.last_error_message.unwrap_or_default(),
        last_synchronization_error_unix: raw.last_synchronization_error_date.unwrap_or(0),
        has_custom_certificate: raw.has_custom_certificate,
    })
}

/// A Bot API failure as a gRPC status, without the token: Telegram's refusals are
/// FAILED_PRECONDITION (with Telegram's words), network trouble UNAVAILABLE.
fn bot_api_error(ctx: &Ctx, method: &str, e: RequestError) -> Status {
    let redact = |s: String| s.replace(ctx.bot.token(), "[REDACTED]");
    match e {
        RequestError::Api(api) => Status::failed_precondition(format!(
            "{method}: Telegram refused: {}",
            redact(api.to_string())
        )),
        RequestError::RetryAfter(after) => Status::resource_exhausted(format!(
            "{method}: Telegram asks to retry after {}s",
            after.seconds()
        )),
        RequestError::Network(err) => Status::unavailable(format!(
            "{method}: Bot API unreachable: {}",
            redact(err.to_string())
        )),
        other => Status::unavailable(format!("{method}: {}", redact(other.to_string()))),
    }
}
