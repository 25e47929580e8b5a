//! Webhook delivery, like Telegram's: each update is POSTed to the webhook; at most
//! `max_connections` deliveries in flight, at most one per chat, a chat's updates in creation
//! order, a failed delivery retried (with backoff) before any later update of its chat. (The
//! `chat_in_flight` and `delivery_jitter_ms` faults let a chat's updates overtake each other.)

use std::collections::HashMap;
use std::sync::Arc;

use courier_common::CancellationToken;
use reqwest::header::CONTENT_TYPE;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::metrics::{self, Metrics};
use crate::state::{Delivery, Shared};

/// The header Telegram sends the webhook secret in.
pub const SECRET_HEADER: &str = "X-Telegram-Bot-Api-Secret-Token";

/// Runs until `shutdown`; deliveries still in flight then are abandoned (their updates stay
/// pending, which no longer matters once the sandbox stops).
pub(crate) async fn run(shared: Arc<Shared>, client: reqwest::Client, shutdown: CancellationToken) {
    let mut tasks: JoinSet<Result<(), String>> = JoinSet::new();
    let mut running: HashMap<tokio::task::Id, (i64, i64)> = HashMap::new();
    loop {
        let next_retry = {
            let mut inner = shared.lock();
            let next = inner.promote_due(Instant::now());
            for d in inner.take_ready() {
                let key = (d.chat_id, d.update_id);
                let handle = tasks.spawn(deliver(client.clone(), d, shared.metrics.clone()));
                running.insert(handle.id(), key);
            }
            next
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            // `notify_one` keeps a permit when nobody waits, so no wake-up is lost.
            _ = shared.wake.notified() => {}
            Some(done) = tasks.join_next_with_id(), if !tasks.is_empty() => {
                let (id, outcome) = match done {
                    Ok((id, outcome)) => (id, outcome),
                    Err(e) => (e.id(), Err(format!("delivery task failed: {e}"))),
                };
                if let Some((chat_id, update_id)) = running.remove(&id) {
                    shared.lock().complete(chat_id, update_id, outcome);
                }
            }
            _ = sleep_until(next_retry) => {}
        }
    }
    tasks.abort_all();
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// One POST of one update, counted in `metrics`; `Err` carries the message getWebhookInfo
/// reports.
async fn deliver(client: reqwest::Client, d: Delivery, metrics: Metrics) -> Result<(), String> {
    let outcome = post(client, d).await;
    metrics.delivered(match &outcome {
        Ok(()) => metrics::Delivery::Ok,
        Err(Failed::Rejected(_)) => metrics::Delivery::Rejected,
        Err(Failed::NoAnswer(_)) => metrics::Delivery::Failed,
    });
    outcome.map_err(|(Failed::Rejected(m) | Failed::NoAnswer(m))| m)
}

/// Why a delivery failed, with the message getWebhookInfo reports.
enum Failed {
    /// The bot answered, with a status other than 2xx.
    Rejected(String),
    /// The bot did not answer.
    NoAnswer(String),
}

async fn post(client: reqwest::Client, d: Delivery) -> Result<(), Failed> {
    if !d.hold.is_zero() {
        tokio::time::sleep(d.hold).await;
    }
    let mut request = client
        .post(&d.url)
        .header(CONTENT_TYPE, "application/json")
        .body(d.body);
    if let Some(secret) = &d.secret {
        request = request.header(SECRET_HEADER, secret);
    }
    match request.send().await {
        Ok(response) => {
            let status = response.status();
            // Read the body so the connection goes back to the pool.
            let _ = response.bytes().await;
            if status.is_success() {
                Ok(())
            } else {
                Err(Failed::Rejected(format!(
                    "Wrong response from the webhook: {status}"
                )))
            }
        }
        Err(e) if e.is_timeout() => Err(Failed::NoAnswer("Read timeout expired".to_owned())),
        Err(e) if e.is_connect() => Err(Failed::NoAnswer(format!("Connection refused: {e}"))),
        Err(e) => Err(Failed::NoAnswer(format!("Webhook request failed: {e}"))),
    }
}
