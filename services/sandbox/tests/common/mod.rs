//! A tiny fake bot for tests that need a bot behind the sandbox's webhook but no worker.

#![allow(dead_code)]

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use courier_common::config::dev;
use courier_common::CancellationToken;
use serde_json::{json, Value};

/// How the fake bot answers.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Texts it never answers.
    pub skip: Vec<String>,
    /// Texts it answers twice.
    pub duplicate: Vec<String>,
}

struct Bot {
    api: String,
    http: reqwest::Client,
    behaviour: Behaviour,
}

impl Bot {
    async fn call(&self, method: &str, params: Value) -> Result<(), StatusCode> {
        let res = self
            .http
            .post(format!("{}/{method}", self.api))
            .json(&params)
            .send()
            .await
            .map_err(|_| StatusCode::BAD_GATEWAY)?;
        if res.status().is_success() {
            Ok(())
        } else {
            // Telegram would retry the update: so does the sandbox on a non-2xx.
            Err(StatusCode::SERVICE_UNAVAILABLE)
        }
    }
}

/// Handles one update like a notes bot would, answering through the Bot API before the
/// webhook's 200 (so each chat stays in order).
async fn update(State(bot): State<Arc<Bot>>, Json(u): Json<Value>) -> StatusCode {
    let result = async {
        if let Some(m) = u.get("message") {
            let chat = m["chat"]["id"].as_i64().unwrap_or(0);
            let text = m["text"].as_str().unwrap_or("");
            if bot.behaviour.skip.iter().any(|s| s == text) {
                return Ok(());
            }
            let times = if bot.behaviour.duplicate.iter().any(|s| s == text) {
                2
            } else {
                1
            };
            for _ in 0..times {
                let reply = if text == "/start" {
                    json!({"chat_id": chat, "text": "Welcome! Send me a note.",
                           "reply_markup": {"inline_keyboard": [[{"text": "Help", "callback_data": "help"}]]}})
                } else {
                    json!({"chat_id": chat, "text": format!("Saved your note: {text}")})
                };
                bot.call("sendMessage", reply).await?;
            }
        } else if let Some(q) = u.get("callback_query") {
            bot.call(
                "answerCallbackQuery",
                json!({"callback_query_id": q["id"], "text": "Help is on its way"}),
            )
            .await?;
            let chat = q["message"]["chat"]["id"].as_i64().unwrap_or(0);
            bot.call(
                "sendMessage",
                json!({"chat_id": chat, "text": format!("You pressed {}", q["data"].as_str().unwrap_or(""))}),
            )
            .await?;
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => StatusCode::OK,
        Err(s) => s,
    }
}

/// Starts the fake bot and points the sandbox's webhook at it.
pub async fn start_bot(sandbox_url: &str, behaviour: Behaviour, stop: CancellationToken) {
    let api = format!("{sandbox_url}/bot{}", dev::BOT_TOKEN);
    let bot = Arc::new(Bot {
        api: api.clone(),
        http: reqwest::Client::new(),
        behaviour,
    });
    let app = Router::new().route("/hook", post(update)).with_state(bot);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
            .unwrap();
    });
    let res = reqwest::Client::new()
        .post(format!("{api}/setWebhook"))
        .json(&json!({"url": format!("http://{addr}/hook"), "max_connections": 40}))
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
}
