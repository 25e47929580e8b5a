//! End-to-end tests of the sandbox over HTTP.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use courier_common::config::dev;
use courier_common::CancellationToken;
use courier_sandbox::{Config, Sandbox, Stats};
use serde_json::{json, Value};

const DEADLINE: Duration = Duration::from_secs(10);

struct Harness {
    sandbox: Sandbox,
    http: reqwest::Client,
    shutdown: CancellationToken,
}

impl Harness {
    async fn start(config: Config) -> Self {
        let shutdown = CancellationToken::new();
        let sandbox = courier_sandbox::spawn(config, shutdown.clone())
            .await
            .expect("sandbox starts");
        Self {
            sandbox,
            http: reqwest::Client::new(),
            shutdown,
        }
    }

    async fn dev() -> Self {
        Self::start(Config::dev()).await
    }

    fn method_url(&self, method: &str) -> String {
        format!("{}/bot{}/{method}", self.sandbox.url(), dev::BOT_TOKEN)
    }

    /// Calls a Bot API method with a JSON body; returns the HTTP status and the body.
    async fn call(&self, method: &str, params: Value) -> (u16, Value) {
        let res = self
            .http
            .post(self.method_url(method))
            .json(&params)
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.json().await.unwrap())
    }

    async fn user_says(&self, body: Value) -> (u16, Value) {
        let res = self
            .http
            .post(format!("{}/sandbox/messages", self.sandbox.url()))
            .json(&body)
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.json().await.unwrap())
    }

    /// A user says `text` in a chat: a private chat with the user of the same id for a
    /// positive id, a group (with user 1000) for a negative one.
    async fn say(&self, chat_id: i64, text: &str) -> Value {
        let (user_id, chat_type) = if chat_id > 0 {
            (chat_id, "private")
        } else {
            (1000, "group")
        };
        let (status, body) = self
            .user_says(
                json!({"chat_id": chat_id, "user_id": user_id, "first_name": "Alice",
                              "text": text, "chat_type": chat_type}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    async fn transcript(&self, chat_id: i64) -> (u16, Value) {
        let res = self
            .http
            .get(format!(
                "{}/sandbox/chats/{chat_id}/messages",
                self.sandbox.url()
            ))
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.json().await.unwrap())
    }

    async fn stats(&self) -> Stats {
        self.http
            .get(format!("{}/sandbox/stats", self.sandbox.url()))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Polls the stats until `cond` holds, failing after a deadline.
    async fn wait_for(&self, what: &str, cond: impl Fn(&Stats) -> bool) -> Stats {
        let result = tokio::time::timeout(DEADLINE, async {
            loop {
                let s = self.stats().await;
                if cond(&s) {
                    return s;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        match result {
            Ok(s) => s,
            Err(_) => panic!(
                "timed out waiting for {what}; stats: {:?}",
                self.stats().await
            ),
        }
    }

    async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(DEADLINE, self.sandbox.wait())
            .await
            .expect("sandbox stops")
            .expect("sandbox stops cleanly");
    }
}

fn assert_error(got: (u16, Value), code: u16, description: &str) {
    assert_eq!(got.0, code, "{}", got.1);
    assert_eq!(
        got.1,
        json!({"ok": false, "error_code": code, "description": description})
    );
}

#[tokio::test]
async fn unknown_token_is_unauthorized_and_unknown_method_not_found() {
    let h = Harness::dev().await;
    let res = h
        .http
        .get(format!("{}/bot123:wrong/getMe", h.sandbox.url()))
        .send()
        .await
        .unwrap();
    let got = (res.status().as_u16(), res.json().await.unwrap());
    assert_error(got, 401, "Unauthorized");
    assert_error(h.call("noSuchMethod", json!({})).await, 404, "Not Found");
    let res = h
        .http
        .get(format!("{}/nothing/here/at/all", h.sandbox.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    h.stop().await;
}

#[tokio::test]
async fn get_me_describes_the_bot() {
    let h = Harness::dev().await;
    // Method names are case-insensitive, and GET works as well as POST.
    let res = h.http.get(h.method_url("GETME")).send().await.unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["ok"], true);
    let me = &body["result"];
    assert_eq!(me["id"], 100001);
    assert_eq!(me["is_bot"], true);
    assert_eq!(me["username"], "courier_sandbox_bot");
    assert_eq!(me["first_name"], "Courier Sandbox");
    for field in [
        "can_join_groups",
        "can_read_all_group_messages",
        "supports_inline_queries",
        "has_main_web_app",
    ] {
        assert!(me[field].is_boolean(), "{field} missing: {me}");
    }
    h.stop().await;
}

#[tokio::test]
async fn control_api_creates_updates_and_transcripts() {
    let h = Harness::dev().await;
    let first = h.say(42, "/start").await;
    assert_eq!(first, json!({"update_id": 1, "message_id": 1}));
    let (status, body) = h
        .user_says(
            json!({"chat_id": -100, "user_id": 7, "first_name": "Bob", "text": "hello",
                          "chat_type": "supergroup", "username": "bob"}),
        )
        .await;
    assert_eq!(
        (status, body),
        (200, json!({"update_id": 2, "message_id": 1}))
    );
    let second = h.say(42, "again").await;
    assert_eq!(second, json!({"update_id": 3, "message_id": 2}));

    let (status, transcript) = h.transcript(42).await;
    assert_eq!(status, 200);
    let texts: Vec<_> = transcript
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["message_id"].clone(),
                m["from_bot"].clone(),
                m["text"].clone(),
            )
        })
        .collect();
    assert_eq!(
        texts,
        vec![
            (json!(1), json!(false), json!("/start")),
            (json!(2), json!(false), json!("again"))
        ]
    );
    assert!(transcript[0]["date"].as_i64().unwrap() > 1_600_000_000);
    assert_eq!(h.transcript(999).await.0, 404);

    // Bad requests are refused with a JSON error.
    for bad in [
        json!({"user_id": 1, "first_name": "A", "text": "x"}),
        json!({"chat_id": 1, "user_id": 1, "first_name": "A", "text": ""}),
        json!({"chat_id": 1, "user_id": 1, "first_name": "A", "text": "x", "chat_type": "channel"}),
        json!({"chat_id": 1, "user_id": "one", "first_name": "A", "text": "x"}),
        json!({"chat_id": -100, "user_id": 7, "first_name": "Bob", "text": "x"}),
    ] {
        let (status, body) = h.user_says(bad.clone()).await;
        assert_eq!(status, 400, "{bad} -> {body}");
        assert_eq!(body["ok"], false);
        assert!(
            body["description"]
                .as_str()
                .unwrap()
                .starts_with("Bad Request: "),
            "{body}"
        );
    }

    let stats = h.stats().await;
    assert_eq!(stats.updates_created, 3);
    assert_eq!(stats.pending_updates, 3, "no webhook: updates stay queued");
    assert_eq!(stats.updates_delivered, 0);
    assert_eq!(stats.responses_429, 0);
    h.stop().await;
}

#[tokio::test]
async fn send_message_appends_to_the_transcript() {
    let h = Harness::dev().await;
    h.say(42, "hi").await;
    let (status, body) = h
        .call(
            "sendMessage",
            json!({"chat_id": 42, "text": "hello there", "parse_mode": "HTML"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["ok"], true);
    let m = &body["result"];
    assert_eq!(
        m["message_id"], 2,
        "ids are shared by user and bot messages"
    );
    assert_eq!(m["text"], "hello there");
    assert_eq!(
        m["chat"],
        json!({"id": 42, "type": "private", "first_name": "Alice"})
    );
    assert_eq!(
        m["from"],
        json!({"id": 100001, "is_bot": true, "first_name": "Courier Sandbox", "username": "courier_sandbox_bot"})
    );
    assert!(m["date"].as_i64().unwrap() > 1_600_000_000);

    let (_, transcript) = h.transcript(42).await;
    assert_eq!(transcript[1]["from_bot"], true);
    assert_eq!(transcript[1]["text"], "hello there");
    assert_eq!(h.stats().await.messages_from_bot, 1);
    h.stop().await;
}

#[tokio::test]
async fn send_message_errors() {
    let h = Harness::dev().await;
    h.say(42, "hi").await;
    assert_error(
        h.call("sendMessage", json!({"chat_id": 7, "text": "x"}))
            .await,
        400,
        "Bad Request: chat not found",
    );
    assert_error(
        h.call("sendMessage", json!({"chat_id": "@someone", "text": "x"}))
            .await,
        400,
        "Bad Request: chat not found",
    );
    assert_error(
        h.call("sendMessage", json!({"chat_id": 42, "text": ""}))
            .await,
        400,
        "Bad Request: message text is empty",
    );
    assert_error(
        h.call("sendMessage", json!({"chat_id": 42})).await,
        400,
        "Bad Request: message text is empty",
    );
    assert_error(
        h.call("sendMessage", json!({"text": "x"})).await,
        400,
        "Bad Request: chat_id is empty",
    );
    let long = "a".repeat(4097);
    assert_error(
        h.call("sendMessage", json!({"chat_id": 42, "text": long}))
            .await,
        400,
        "Bad Request: message is too long",
    );
    // 2048 emoji are 4096 UTF-16 code units: just fits; one more does not.
    let (status, _) = h
        .call(
            "sendMessage",
            json!({"chat_id": 42, "text": "😀".repeat(2048)}),
        )
        .await;
    assert_eq!(status, 200);
    assert_error(
        h.call(
            "sendMessage",
            json!({"chat_id": 42, "text": "😀".repeat(2049)}),
        )
        .await,
        400,
        "Bad Request: message is too long",
    );
    let (status, body) = h
        .call(
            "sendMessage",
            json!({"chat_id": 42, "text": "x", "parse_mode": "Bogus"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = h
        .call(
            "sendMessage",
            json!({"chat_id": 42, "text": "x", "reply_markup": "{not json"}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(h.stats().await.messages_from_bot, 1);
    h.stop().await;
}

#[tokio::test]
async fn form_and_query_parameters() {
    let h = Harness::dev().await;
    h.say(-5, "hi").await;
    let markup = r#"{"inline_keyboard":[[{"text":"Go","callback_data":"go"}]]}"#;
    let res = h
        .http
        .post(h.method_url("sendmessage"))
        .form(&[
            ("chat_id", "-5"),
            ("text", "from a form"),
            ("reply_markup", markup),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["result"]["text"], "from a form");
    assert_eq!(body["result"]["chat"]["id"], -5);
    assert_eq!(
        body["result"]["reply_markup"]["inline_keyboard"][0][0]["text"],
        "Go"
    );

    let res = h
        .http
        .get(format!(
            "{}?chat_id=-5&text=from%20a%20query",
            h.method_url("sendMessage")
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["result"]["text"], "from a query");
    assert_eq!(body["result"]["message_id"], 3);

    // Numbers and booleans in a form are strings.
    let res = h
        .http
        .post(h.method_url("setWebhook"))
        .form(&[
            ("url", "http://127.0.0.1:9/hook"),
            ("max_connections", "3"),
            ("drop_pending_updates", "true"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let (_, info) = h.call("getWebhookInfo", json!({})).await;
    assert_eq!(info["result"]["max_connections"], 3);
    assert_eq!(info["result"]["pending_update_count"], 0, "dropped");
    h.stop().await;
}

#[tokio::test]
async fn set_webhook_validates_the_secret_and_info_reflects_it() {
    let h = Harness::dev().await;
    let (_, info) = h.call("getWebhookInfo", json!({})).await;
    assert_eq!(info["result"]["url"], "");
    assert_eq!(info["result"]["has_custom_certificate"], false);
    assert_eq!(info["result"]["pending_update_count"], 0);

    for bad in ["has space", "semi;colon", &"a".repeat(257)] {
        assert_error(
            h.call(
                "setWebhook",
                json!({"url": "http://127.0.0.1:9/hook", "secret_token": bad}),
            )
            .await,
            400,
            "Bad Request: secret token contains unallowed characters",
        );
    }
    let (status, body) = h
        .call(
            "setWebhook",
            json!({"url": "http://127.0.0.1:9/hook", "max_connections": 0}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = h.call("setWebhook", json!({"url": "not a url"})).await;
    assert_eq!(status, 400, "{body}");

    let (status, body) = h
        .call(
            "setWebhook",
            json!({"url": "http://127.0.0.1:9/hook", "secret_token": "Ok_secret-1"}),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"ok": true, "result": true, "description": "Webhook was set"})
    );
    let (_, info) = h.call("getWebhookInfo", json!({})).await;
    assert_eq!(info["result"]["url"], "http://127.0.0.1:9/hook");
    assert_eq!(info["result"]["max_connections"], 40);

    let (status, body) = h.call("deleteWebhook", json!({})).await;
    assert_eq!((status, body["result"].clone()), (200, json!(true)));
    let (_, info) = h.call("getWebhookInfo", json!({})).await;
    assert_eq!(info["result"]["url"], "");
    h.stop().await;
}

/// One request a receiver got: the secret header, the update, the status it answered.
type Received = (Option<String>, Value, u16);

/// A webhook receiver that answers 500 to its first `failures` requests, then 200, and
/// records every request.
#[derive(Clone, Default)]
struct Receiver {
    log: Arc<Mutex<Vec<Received>>>,
    failures: usize,
}

async fn receive(
    State(r): State<Receiver>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    assert_eq!(headers["content-type"], "application/json");
    let secret = headers
        .get("x-telegram-bot-api-secret-token")
        .map(|v| v.to_str().unwrap().to_owned());
    let update: Value = serde_json::from_slice(&body).unwrap();
    let mut log = r.log.lock().unwrap();
    let status = if log.len() < r.failures { 500 } else { 200 };
    log.push((secret, update, status));
    StatusCode::from_u16(status).unwrap()
}

async fn start_receiver(failures: usize, shutdown: CancellationToken) -> (SocketAddr, Receiver) {
    let receiver = Receiver {
        failures,
        ..Receiver::default()
    };
    let app = Router::new()
        .route("/hook", post(receive))
        .with_state(receiver.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown.cancelled_owned())
            .await
            .unwrap();
    });
    (addr, receiver)
}

#[tokio::test]
async fn webhook_delivery_retries_and_keeps_each_chats_order() {
    let receiver_stop = CancellationToken::new();
    let (addr, receiver) = start_receiver(2, receiver_stop.clone()).await;
    let mut config = Config::dev();
    config.webhook_url = Some(format!("http://{addr}/hook"));
    config.webhook_secret.webhook_secret = Some("test-secret_1".into());
    let h = Harness::start(config).await;

    let mut expected: Vec<(i64, i64)> = Vec::new();
    for i in 0..4 {
        for chat in [1, 2, -300] {
            let created = h.say(chat, &format!("/cmd{i} from {chat}")).await;
            expected.push((chat, created["update_id"].as_i64().unwrap()));
        }
    }
    let stats = h
        .wait_for("every update delivered", |s| s.updates_delivered == 12)
        .await;
    assert_eq!(stats.webhook_failures, 2);
    assert_eq!(stats.pending_updates, 0);
    assert_eq!(stats.updates_created, 12);

    let log = receiver.log.lock().unwrap().clone();
    assert_eq!(log.len(), 14, "12 updates plus 2 retries");
    assert!(log
        .iter()
        .all(|(secret, _, _)| secret.as_deref() == Some("test-secret_1")));
    for chat in [1, 2, -300] {
        let attempts: Vec<(i64, u16)> = log
            .iter()
            .filter(|(_, u, _)| u["message"]["chat"]["id"] == chat)
            .map(|(_, u, status)| (u["update_id"].as_i64().unwrap(), *status))
            .collect();
        // Each attempt is of the oldest undelivered update of the chat: a failed update is
        // retried before any later one.
        let mut delivered: Vec<i64> = Vec::new();
        for (update_id, status) in &attempts {
            let next = expected
                .iter()
                .filter(|(c, _)| *c == chat)
                .map(|(_, u)| *u)
                .find(|u| !delivered.contains(u));
            assert_eq!(
                Some(*update_id),
                next,
                "chat {chat} attempts out of order: {attempts:?}"
            );
            if *status == 200 {
                delivered.push(*update_id);
            }
        }
        assert_eq!(delivered.len(), 4);
    }
    // The update's shape.
    let (_, first, _) = log
        .iter()
        .find(|(_, u, s)| *s == 200 && u["update_id"] == 1)
        .unwrap();
    let m = &first["message"];
    assert_eq!(m["text"], "/cmd0 from 1");
    assert_eq!(
        m["from"],
        json!({"id": 1, "is_bot": false, "first_name": "Alice"})
    );
    assert_eq!(
        m["chat"],
        json!({"id": 1, "type": "private", "first_name": "Alice"})
    );
    assert_eq!(
        m["entities"],
        json!([{"type": "bot_command", "offset": 0, "length": 5}])
    );

    let (_, info) = h.call("getWebhookInfo", json!({})).await;
    let info = &info["result"];
    assert_eq!(info["url"], format!("http://{addr}/hook"));
    assert_eq!(info["pending_update_count"], 0);
    assert_eq!(
        info["last_error_message"],
        "Wrong response from the webhook: 500 Internal Server Error"
    );
    assert!(info["last_error_date"].as_i64().unwrap() > 1_600_000_000);
    h.stop().await;
    receiver_stop.cancel();
}

#[tokio::test]
async fn queued_updates_are_delivered_once_a_webhook_is_set() {
    let receiver_stop = CancellationToken::new();
    let (addr, receiver) = start_receiver(0, receiver_stop.clone()).await;
    let h = Harness::dev().await;
    h.say(5, "one").await;
    h.say(5, "two").await;
    assert_eq!(h.stats().await.pending_updates, 2);
    let (status, _) = h
        .call("setWebhook", json!({"url": format!("http://{addr}/hook")}))
        .await;
    assert_eq!(status, 200);
    h.wait_for("both delivered", |s| {
        s.updates_delivered == 2 && s.pending_updates == 0
    })
    .await;
    let log = receiver.log.lock().unwrap().clone();
    let texts: Vec<_> = log
        .iter()
        .map(|(secret, u, _)| (secret.clone(), u["message"]["text"].clone()))
        .collect();
    assert_eq!(texts, vec![(None, json!("one")), (None, json!("two"))]);
    h.stop().await;
    receiver_stop.cancel();
}

#[tokio::test]
async fn unreachable_webhook_keeps_updates_pending() {
    // Bind then drop a listener to get a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = Config::dev();
    config.webhook_url = Some(format!("http://127.0.0.1:{port}/hook"));
    config.webhook_timeout = Duration::from_millis(500);
    let h = Harness::start(config).await;
    h.say(9, "anyone?").await;
    let stats = h
        .wait_for("a failed delivery", |s| s.webhook_failures >= 1)
        .await;
    assert_eq!(stats.updates_delivered, 0);
    let (_, info) = h.call("getWebhookInfo", json!({})).await;
    assert_eq!(info["result"]["pending_update_count"], 1);
    assert!(info["result"]["last_error_message"].is_string());
    h.stop().await;
}

#[tokio::test]
async fn index_page_is_served() {
    let h = Harness::dev().await;
    let res = h.http.get(h.sandbox.url()).send().await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(res.text().await.unwrap().contains("/sandbox/messages"));
    h.stop().await;
}

/// A peer client checks the wire format: teloxide-core, as the sender uses it.
#[tokio::test]
async fn teloxide_core_understands_the_sandbox() -> Result<(), Box<dyn std::error::Error>> {
    use teloxide_core::requests::Requester;
    use teloxide_core::types::ChatId;
    use teloxide_core::Bot;

    let h = Harness::dev().await;
    h.say(77, "hello bot").await;
    let (status, _) = h
        .user_says(json!({"chat_id": -1001, "user_id": 77, "first_name": "Alice", "text": "hi all", "chat_type": "group"}))
        .await;
    assert_eq!(status, 200);
    let bot = Bot::new(dev::BOT_TOKEN).set_api_url(url::Url::parse(&h.sandbox.url())?);
    let me = bot.get_me().await?;
    assert_eq!(me.id.0, 100001);
    assert_eq!(me.username(), "courier_sandbox_bot");

    let sent = bot.send_message(ChatId(77), "hi").await?;
    assert_eq!(sent.chat.id, ChatId(77));
    assert_eq!(sent.text(), Some("hi"));
    assert_eq!(sent.id.0, 2);
    assert!(sent.from.as_ref().is_some_and(|u| u.is_bot));

    let group = bot.send_message(ChatId(-1001), "hi group").await?;
    assert!(group.chat.is_group());

    let err = bot.send_message(ChatId(12345), "nobody").await.unwrap_err();
    assert!(err.to_string().contains("chat not found"), "{err}");

    bot.set_webhook(url::Url::parse("http://127.0.0.1:9/hook")?)
        .await?;
    let info = bot.get_webhook_info().await?;
    assert_eq!(
        info.url.map(|u| u.to_string()).as_deref(),
        Some("http://127.0.0.1:9/hook")
    );
    bot.delete_webhook().await?;
    assert!(bot.get_webhook_info().await?.url.is_none());
    h.stop().await;
    Ok(())
}

/// Formatting like Telegram's, seen through teloxide-core: `parse_mode` markup comes back as
/// plain text plus entities, explicit entities are kept, bad markup is refused with 400, and
/// the transcript carries the entities.
#[tokio::test]
async fn formatting_comes_back_as_entities() -> Result<(), Box<dyn std::error::Error>> {
    use teloxide_core::payloads::setters::*;
    use teloxide_core::requests::Requester;
    use teloxide_core::types::{ChatId, MessageEntity, MessageEntityKind, ParseMode};
    use teloxide_core::Bot;

    let h = Harness::dev().await;
    for chat in [91, 92, 93, 94] {
        h.say(chat, "hello bot").await;
    }
    let bot = Bot::new(dev::BOT_TOKEN).set_api_url(url::Url::parse(&h.sandbox.url())?);

    let html = bot
        .send_message(ChatId(91), "peer <b>check</b> ✓")
        .parse_mode(ParseMode::Html)
        .await?;
    assert_eq!(html.text(), Some("peer check ✓"));
    assert_eq!(html.entities(), Some(&[MessageEntity::bold(5, 5)][..]));

    let md = bot
        .send_message(ChatId(92), "aiogram *peer*")
        .parse_mode(ParseMode::MarkdownV2)
        .await?;
    assert_eq!(md.text(), Some("aiogram peer"));
    assert_eq!(md.entities(), Some(&[MessageEntity::bold(8, 4)][..]));

    #[allow(deprecated)] // the legacy mode, which the sandbox emulates too
    let legacy = bot
        .send_message(ChatId(93), "[docs](https://core.telegram.org) 😀 `x`")
        .parse_mode(ParseMode::Markdown)
        .await?;
    assert_eq!(legacy.text(), Some("docs 😀 x"));
    let entities = legacy.entities().unwrap();
    assert_eq!(entities.len(), 2);
    assert!(
        matches!(&entities[0].kind, MessageEntityKind::TextLink { url }
        if url.as_str() == "https://core.telegram.org/")
    );
    assert_eq!(
        (entities[1].offset, entities[1].length),
        (8, 1),
        "UTF-16 offsets"
    );
    assert_eq!(entities[1].kind, MessageEntityKind::Code);

    let explicit = bot
        .send_message(ChatId(94), "given as is")
        .entities(vec![
            MessageEntity::italic(0, 5),
            MessageEntity::underline(9, 2),
        ])
        .await?;
    assert_eq!(
        explicit.entities(),
        Some(&[MessageEntity::italic(0, 5), MessageEntity::underline(9, 2)][..])
    );

    let edited = bot
        .edit_message_text(ChatId(91), html.id, "now <i>italic</i>")
        .parse_mode(ParseMode::Html)
        .await?;
    assert_eq!(edited.text(), Some("now italic"));
    assert_eq!(edited.entities(), Some(&[MessageEntity::italic(4, 6)][..]));

    let err = bot
        .send_message(ChatId(92), "Version 1.0")
        .parse_mode(ParseMode::MarkdownV2)
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("Character '.' is reserved"),
        "{err}"
    );

    // The raw answers, word for word.
    let (status, body) = h
        .call(
            "sendMessage",
            json!({"chat_id": 93, "text": "a <x> b", "parse_mode": "HTML"}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        body["description"],
        "Bad Request: can't parse entities: Unsupported start tag \"x\" at byte offset 2"
    );
    let (status, body) = h
        .call(
            "sendMessage",
            json!({"chat_id": 93, "text": "*open", "parse_mode": "MarkdownV2"}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        body["description"],
        "Bad Request: can't parse entities: Can't find end of Bold entity at byte offset 0"
    );
    let (status, body) = h
        .call(
            "sendMessage",
            json!({"chat_id": 93, "text": "ab", "entities": [{"type": "bold", "offset": 1, "length": 5}]}),
        )
        .await;
    assert_eq!(status, 400, "{body}");

    let (_, transcript) = h.transcript(91).await;
    assert_eq!(transcript[1]["text"], "now italic");
    assert_eq!(
        transcript[1]["entities"],
        json!([{"type": "italic", "offset": 4, "length": 6}])
    );
    let (_, transcript) = h.transcript(92).await;
    assert_eq!(
        transcript[1]["entities"],
        json!([{"type": "bold", "offset": 8, "length": 4}])
    );
    h.stop().await;
    Ok(())
}

impl Harness {
    async fn control(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.sandbox.url()));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        (res.status().as_u16(), res.json().await.unwrap())
    }

    async fn calls(&self) -> Vec<courier_sandbox::CallRecord> {
        let (status, body) = self
            .control(reqwest::Method::GET, "/sandbox/calls", None)
            .await;
        assert_eq!(status, 200);
        serde_json::from_value(body).unwrap()
    }
}

fn assert_429(got: &(u16, Value), retry_after: u64) {
    assert_eq!(got.0, 429, "{}", got.1);
    assert_eq!(
        got.1,
        json!({"ok": false, "error_code": 429,
               "description": format!("Too Many Requests: retry after {retry_after}"),
               "parameters": {"retry_after": retry_after}})
    );
}

#[tokio::test]
async fn private_chats_get_a_burst_of_three_then_429_with_retry_after() {
    let h = Harness::dev().await;
    h.say(42, "hi").await;
    for i in 0..3 {
        let (status, body) = h
            .call(
                "sendMessage",
                json!({"chat_id": 42, "text": format!("r{i}")}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }
    let refused = h
        .call("sendMessage", json!({"chat_id": 42, "text": "r3"}))
        .await;
    assert_429(&refused, 1);
    // getMe is not a sending method: never limited.
    for _ in 0..5 {
        assert_eq!(h.call("getMe", json!({})).await.0, 200);
    }
    let stats = h.stats().await;
    assert_eq!(stats.responses_429, 1);
    assert_eq!(stats.messages_from_bot, 3);
    let calls = h.calls().await;
    let got: Vec<_> = calls
        .iter()
        .map(|c| {
            (
                c.method.as_str(),
                c.chat_id,
                c.status,
                c.text.clone().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            ("sendMessage", 42, 200, "r0".to_owned()),
            ("sendMessage", 42, 200, "r1".to_owned()),
            ("sendMessage", 42, 200, "r2".to_owned()),
            ("sendMessage", 42, 429, "r3".to_owned()),
        ]
    );
    assert!(calls.windows(2).all(|w| w[0].at_unix_ms <= w[1].at_unix_ms));
    let (status, _) = h
        .control(reqwest::Method::DELETE, "/sandbox/calls", None)
        .await;
    assert_eq!(status, 200);
    assert!(h.calls().await.is_empty());
    // The transcript has the three replies only.
    let (_, transcript) = h.transcript(42).await;
    assert_eq!(transcript.as_array().unwrap().len(), 4);
    h.stop().await;
}

#[tokio::test]
async fn bot_wide_limit_and_groups_and_switching_limits_off() {
    let h = Harness::dev().await;
    for chat in 1..=40 {
        h.say(chat, "hi").await;
    }
    let mut statuses = Vec::new();
    for chat in 1..=40 {
        statuses.push(
            h.call("sendMessage", json!({"chat_id": chat, "text": "x"}))
                .await
                .0,
        );
    }
    // Sent well within a second on any machine that runs the tests at all; if not, fewer
    // than 10 are refused, but never more than 30 pass in one second.
    let passed = statuses.iter().filter(|s| **s == 200).count();
    assert!(passed <= 30, "{passed} passed");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429));
    let calls = h.calls().await;
    let accepted: Vec<i64> = calls
        .iter()
        .filter(|c| c.status == 200)
        .map(|c| c.at_unix_ms)
        .collect();
    for (i, t) in accepted.iter().enumerate() {
        assert!(accepted[i..].iter().take_while(|u| **u < t + 1000).count() <= 30);
    }

    h.say(-7, "group hi").await;
    let mut group = Vec::new();
    for i in 0..21 {
        group.push(
            h.call(
                "sendMessage",
                json!({"chat_id": -7, "text": format!("g{i}")}),
            )
            .await,
        );
    }
    // The bot-wide window may refuse some; the 21st in a minute is refused by the group's.
    let group_ok = group.iter().filter(|g| g.0 == 200).count();
    assert!(group_ok <= 20);
    let last = group.last().unwrap();
    assert_eq!(last.0, 429);
    h.stop().await;

    let mut config = Config::dev();
    config.rate_limits = false;
    let h = Harness::start(config).await;
    h.say(5, "hi").await;
    for _ in 0..50 {
        assert_eq!(
            h.call("sendMessage", json!({"chat_id": 5, "text": "x"}))
                .await
                .0,
            200
        );
    }
    assert_eq!(h.stats().await.responses_429, 0);
    h.stop().await;
}

#[tokio::test]
async fn injected_faults_are_answered_logged_and_not_sent() {
    let h = Harness::dev().await;
    h.say(42, "hi").await;
    h.say(43, "hi").await;
    let (status, faults) = h
        .control(
            reqwest::Method::POST,
            "/sandbox/faults",
            Some(json!({"burst_429": {"count": 2, "retry_after": 5}, "blocked_users": [43]})),
        )
        .await;
    assert_eq!(status, 200, "{faults}");
    assert_eq!(faults["burst_429"], json!({"count": 2, "retry_after": 5}));
    assert_429(
        &h.call("sendMessage", json!({"chat_id": 42, "text": "a"}))
            .await,
        5,
    );
    assert_429(
        &h.call("sendMessage", json!({"chat_id": 42, "text": "b"}))
            .await,
        5,
    );
    assert_eq!(
        h.call("sendMessage", json!({"chat_id": 42, "text": "c"}))
            .await
            .0,
        200
    );
    assert_error(
        h.call("sendMessage", json!({"chat_id": 43, "text": "d"}))
            .await,
        403,
        "Forbidden: bot was blocked by the user",
    );

    let (_, faults) = h
        .control(
            reqwest::Method::POST,
            "/sandbox/faults",
            Some(json!({"error_rate": 1.0})),
        )
        .await;
    assert_eq!(faults["error_rate"], 1.0);
    assert_eq!(
        faults["blocked_users"],
        json!([43]),
        "a patch keeps the rest"
    );
    assert_error(
        h.call("sendMessage", json!({"chat_id": 42, "text": "e"}))
            .await,
        500,
        "Internal Server Error",
    );
    h.control(
        reqwest::Method::POST,
        "/sandbox/faults",
        Some(json!({"error_rate": 0.0, "retry_after_rate": 1.0, "retry_after": 2})),
    )
    .await;
    assert_429(
        &h.call("sendMessage", json!({"chat_id": 42, "text": "f"}))
            .await,
        2,
    );
    let (status, _) = h
        .control(
            reqwest::Method::POST,
            "/sandbox/faults",
            Some(json!({"drop_rate": 2})),
        )
        .await;
    assert_eq!(status, 400);

    let (_, faults) = h
        .control(reqwest::Method::DELETE, "/sandbox/faults", None)
        .await;
    assert_eq!(faults["retry_after_rate"], 0.0);
    assert_eq!(faults["blocked_users"], json!([]));
    let (_, got) = h
        .control(reqwest::Method::GET, "/sandbox/faults", None)
        .await;
    assert_eq!(got, faults);
    assert_eq!(
        h.call("sendMessage", json!({"chat_id": 43, "text": "g"}))
            .await
            .0,
        200
    );

    let statuses: Vec<_> = h.calls().await.iter().map(|c| c.status).collect();
    assert_eq!(statuses, vec![429, 429, 200, 403, 500, 429, 200]);
    let stats = h.stats().await;
    assert_eq!(stats.messages_from_bot, 2, "faulted calls are not sent");
    assert_eq!(stats.responses_429, 3);
    assert_eq!(stats.faults_injected, 4);
    let (_, t) = h.transcript(42).await;
    let texts: Vec<_> = t
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].clone())
        .collect();
    assert_eq!(texts, vec![json!("hi"), json!("c")]);
    h.stop().await;
}

#[tokio::test]
async fn dropped_calls_are_never_answered_and_delay_slows_every_call() {
    let mut config = Config::dev();
    config.faults.drop_rate = Some(1.0);
    let h = Harness::start(config).await;
    h.say(42, "hi").await;
    let res = h
        .http
        .post(h.method_url("sendMessage"))
        .timeout(Duration::from_millis(300))
        .json(&json!({"chat_id": 42, "text": "lost"}))
        .send()
        .await;
    assert!(res.is_err_and(|e| e.is_timeout()));
    let stats = h.stats().await;
    assert_eq!((stats.calls_dropped, stats.messages_from_bot), (1, 0));
    assert_eq!(h.calls().await[0].status, 0);

    h.control(
        reqwest::Method::POST,
        "/sandbox/faults",
        Some(json!({"drop_rate": 0.0, "delay_ms": 200})),
    )
    .await;
    let started = std::time::Instant::now();
    assert_eq!(h.call("getMe", json!({})).await.0, 200);
    assert!(started.elapsed() >= Duration::from_millis(200));
    h.stop().await;
}

#[tokio::test]
async fn get_updates_long_polls_confirms_and_conflicts_with_a_webhook() {
    let h = Harness::dev().await;
    let (status, body) = h.call("getUpdates", json!({})).await;
    assert_eq!((status, body), (200, json!({"ok": true, "result": []})));

    // A long poll returns as soon as an update is created.
    let poll = {
        let http = h.http.clone();
        let url = h.method_url("getUpdates");
        tokio::spawn(async move {
            let res = http
                .post(url)
                .json(&json!({"timeout": 20}))
                .send()
                .await
                .unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap())
        })
    };
    // The poll must have started before the update for this to test the wait; either way
    // the update must come back.
    let started = std::time::Instant::now();
    h.say(5, "one").await;
    let (status, body) = tokio::time::timeout(DEADLINE, poll).await.unwrap().unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"][0]["update_id"], 1);
    assert_eq!(body["result"][0]["message"]["text"], "one");
    assert!(started.elapsed() < Duration::from_secs(15));

    h.say(6, "two").await;
    h.say(5, "three").await;
    let (_, body) = h.call("getUpdates", json!({"limit": 2})).await;
    let ids: Vec<_> = body["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["update_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![1, 2]);
    let (_, body) = h.call("getUpdates", json!({"offset": 2})).await;
    let ids: Vec<_> = body["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["update_id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![2, 3]);
    assert_eq!(h.stats().await.pending_updates, 2, "update 1 confirmed");
    let (_, body) = h.call("getUpdates", json!({"offset": -1})).await;
    assert_eq!(body["result"].as_array().unwrap().len(), 1);
    assert_eq!(body["result"][0]["update_id"], 3);

    // A newer getUpdates call ends an older long poll with 409.
    let older = {
        let http = h.http.clone();
        let url = h.method_url("getUpdates");
        tokio::spawn(async move {
            let res = http
                .post(url)
                .json(&json!({"offset": 4, "timeout": 30}))
                .send()
                .await
                .unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap())
        })
    };
    // Keep polling until the older one has been terminated.
    let got = tokio::time::timeout(DEADLINE, async {
        loop {
            h.call("getUpdates", json!({"offset": 4})).await;
            if older.is_finished() {
                return older.await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(got.0, 409, "{}", got.1);
    assert!(got.1["description"]
        .as_str()
        .unwrap()
        .starts_with("Conflict: terminated by other getUpdates request"));

    h.call("setWebhook", json!({"url": "http://127.0.0.1:9/hook"}))
        .await;
    assert_error(
        h.call("getUpdates", json!({})).await,
        409,
        "Conflict: can't use getUpdates method while webhook is active; use deleteWebhook to delete the webhook first",
    );
    h.stop().await;
}

#[tokio::test]
async fn inline_buttons_callbacks_edits_and_answers() {
    let h = Harness::dev().await;
    h.say(42, "menu").await;
    let markup = json!({"inline_keyboard": [[{"text": "Yes", "callback_data": "yes"},
                                             {"text": "Docs", "url": "https://core.telegram.org"}]]});
    let (status, sent) = h
        .call(
            "sendMessage",
            json!({"chat_id": 42, "text": "Sure?", "reply_markup": markup,
                   "reply_parameters": {"message_id": 1}}),
        )
        .await;
    assert_eq!(status, 200, "{sent}");
    assert_eq!(sent["result"]["reply_markup"], markup);
    assert_eq!(sent["result"]["reply_to_message"]["text"], "menu");
    let bot_message = sent["result"]["message_id"].as_i64().unwrap();

    // Pressing a button that is not there is refused.
    let (status, _) = h
        .control(
            reqwest::Method::POST,
            "/sandbox/callbacks",
            Some(json!({"chat_id": 42, "message_id": bot_message, "user_id": 42, "data": "no"})),
        )
        .await;
    assert_eq!(status, 400);
    let (status, pressed) = h
        .control(
            reqwest::Method::POST,
            "/sandbox/callbacks",
            Some(json!({"chat_id": 42, "message_id": bot_message, "user_id": 42, "data": "yes"})),
        )
        .await;
    assert_eq!(status, 200, "{pressed}");
    let (_, updates) = h.call("getUpdates", json!({"offset": 2})).await;
    let cq = &updates["result"][0]["callback_query"];
    assert_eq!(cq["data"], "yes");
    assert_eq!(cq["from"]["id"], 42);
    assert_eq!(cq["message"]["message_id"], bot_message);
    assert_eq!(cq["message"]["reply_markup"], markup);
    assert_eq!(cq["id"], pressed["callback_query_id"]);

    let (status, body) = h
        .call(
            "answerCallbackQuery",
            json!({"callback_query_id": cq["id"], "text": "Done"}),
        )
        .await;
    assert_eq!((status, body["result"].clone()), (200, json!(true)));
    assert_error(
        h.call(
            "answerCallbackQuery",
            json!({"callback_query_id": cq["id"]}),
        )
        .await,
        400,
        "Bad Request: query is too old and response timeout expired or query ID is invalid",
    );

    let (status, edited) = h
        .call(
            "editMessageText",
            json!({"chat_id": 42, "message_id": bot_message, "text": "Confirmed"}),
        )
        .await;
    assert_eq!(status, 200, "{edited}");
    assert_eq!(edited["result"]["text"], "Confirmed");
    assert!(edited["result"]["edit_date"].is_i64());
    assert!(
        edited["result"].get("reply_markup").is_none(),
        "markup removed"
    );
    assert_error(
        h.call(
            "editMessageText",
            json!({"chat_id": 42, "message_id": bot_message, "text": "Confirmed"}),
        )
        .await,
        400,
        "Bad Request: message is not modified: specified new message content and reply markup are exactly the same as a current content and reply markup of the message",
    );
    assert_error(
        h.call(
            "editMessageText",
            json!({"chat_id": 42, "message_id": 99, "text": "x"}),
        )
        .await,
        400,
        "Bad Request: message to edit not found",
    );
    assert_error(
        h.call(
            "editMessageText",
            json!({"chat_id": 42, "message_id": 1, "text": "x"}),
        )
        .await,
        400,
        "Bad Request: message can't be edited",
    );
    assert_error(
        h.call(
            "sendMessage",
            json!({"chat_id": 42, "text": "x", "reply_parameters": {"message_id": 77}}),
        )
        .await,
        400,
        "Bad Request: message to be replied not found",
    );
    assert_error(
        h.call(
            "sendMessage",
            json!({"chat_id": 42, "text": "x",
                   "reply_markup": {"inline_keyboard": [[{"text": "bare"}]]}}),
        )
        .await,
        400,
        "Bad Request: can't parse inline keyboard button: Text buttons are unallowed in the inline keyboard",
    );
    let (_, t) = h.transcript(42).await;
    assert_eq!(t[1]["text"], "Confirmed");
    assert_eq!(h.stats().await.messages_edited, 1);
    h.stop().await;
}

#[tokio::test]
async fn chat_actions_commands_and_migrated_groups() {
    let h = Harness::dev().await;
    h.say(42, "hi").await;
    let (status, body) = h
        .call("sendChatAction", json!({"chat_id": 42, "action": "typing"}))
        .await;
    assert_eq!((status, body["result"].clone()), (200, json!(true)));
    assert_error(
        h.call(
            "sendChatAction",
            json!({"chat_id": 42, "action": "dancing"}),
        )
        .await,
        400,
        "Bad Request: wrong parameter action in request",
    );
    assert_error(
        h.call("sendChatAction", json!({"chat_id": 1, "action": "typing"}))
            .await,
        400,
        "Bad Request: chat not found",
    );

    let commands = json!([{"command": "start", "description": "Start"},
                          {"command": "history", "description": "Your notes"}]);
    assert_eq!(
        h.call("getMyCommands", json!({})).await.1["result"],
        json!([])
    );
    let (status, _) = h.call("setMyCommands", json!({"commands": commands})).await;
    assert_eq!(status, 200);
    assert_eq!(
        h.call("getMyCommands", json!({})).await.1["result"],
        commands
    );
    assert_eq!(
        h.call("getMyCommands", json!({"language_code": "de"}))
            .await
            .1["result"],
        json!([])
    );
    assert_error(
        h.call(
            "setMyCommands",
            json!({"commands": [{"command": "Bad Cmd", "description": "x"}]}),
        )
        .await,
        400,
        "Bad Request: BOT_COMMAND_INVALID",
    );
    h.call("deleteMyCommands", json!({})).await;
    assert_eq!(
        h.call("getMyCommands", json!({})).await.1["result"],
        json!([])
    );

    h.say(-55, "hello group").await;
    let (status, migrated) = h
        .control(reqwest::Method::POST, "/sandbox/chats/-55/migrate", None)
        .await;
    assert_eq!(status, 200);
    let to = migrated["migrate_to_chat_id"].as_i64().unwrap();
    let (status, body) = h
        .call("sendMessage", json!({"chat_id": -55, "text": "x"}))
        .await;
    assert_eq!(status, 400);
    assert_eq!(
        body,
        json!({"ok": false, "error_code": 400,
               "description": "Bad Request: group chat was upgraded to a supergroup chat",
               "parameters": {"migrate_to_chat_id": to}})
    );
    assert_eq!(
        h.call("sendMessage", json!({"chat_id": to, "text": "x"}))
            .await
            .0,
        200
    );
    h.stop().await;
}

#[tokio::test]
async fn replies_are_correlated_for_latency() {
    let h = Harness::dev().await;
    let since = chrono::Utc::now().timestamp_millis();
    h.say(42, "a").await;
    h.say(42, "b").await;
    h.call("sendMessage", json!({"chat_id": 42, "text": "re a"}))
        .await;
    h.call("sendMessage", json!({"chat_id": 42, "text": "re b"}))
        .await;
    h.call("sendMessage", json!({"chat_id": 42, "text": "re b again"}))
        .await;
    let (_, t) = h.transcript(42).await;
    let reply_to: Vec<_> = t
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["reply_to"].clone())
        .collect();
    assert_eq!(
        reply_to,
        vec![Value::Null, Value::Null, json!(1), json!(2), json!(2)]
    );
    assert_eq!(t[0]["replies"], 1);
    assert_eq!(t[1]["replies"], 2);
    assert!(t[0]["latency_ms"].as_f64().unwrap() >= 0.0);
    let (status, body) = h
        .control(
            reqwest::Method::GET,
            &format!("/sandbox/latency?since_ms={since}"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let mut got: Vec<courier_sandbox::MessageLatency> = serde_json::from_value(body).unwrap();
    got.sort_by_key(|m| m.message_id);
    assert_eq!(
        got.iter().map(|m| m.replies).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(h.stats().await.duplicate_replies, 1);
    h.stop().await;
}

/// `deleteMessage` as Telegram answers it: `true`, then the message is gone from the
/// transcript and from every method; an unknown or deleted id, a user's message in a group,
/// a missing id are refused with Telegram's words. The call log and the stats see it.
#[tokio::test]
async fn delete_message_removes_the_message_everywhere_and_refuses_like_telegram() {
    // Many calls to one chat: the limits (checked elsewhere) would refuse some.
    let mut config = Config::dev();
    config.rate_limits = false;
    let h = Harness::start(config).await;
    h.say(42, "hello").await;
    let markup = json!({"inline_keyboard": [[{"text": "Go", "callback_data": "go"}]]});
    let (status, sent) = h
        .call(
            "sendMessage",
            json!({"chat_id": 42, "text": "to delete", "reply_markup": markup}),
        )
        .await;
    assert_eq!(status, 200, "{sent}");
    let id = sent["result"]["message_id"].as_i64().unwrap();
    let (status, kept) = h
        .call("sendMessage", json!({"chat_id": 42, "text": "kept"}))
        .await;
    assert_eq!(status, 200, "{kept}");

    let (status, body) = h
        .call("deleteMessage", json!({"chat_id": 42, "message_id": id}))
        .await;
    assert_eq!((status, body), (200, json!({"ok": true, "result": true})));
    let (_, transcript) = h.transcript(42).await;
    let texts: Vec<&str> = transcript
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, vec!["hello", "kept"], "the deleted message is gone");
    // Message ids stay: the next message gets a new one.
    let (_, next) = h
        .call("sendMessage", json!({"chat_id": 42, "text": "next"}))
        .await;
    assert_eq!(next["result"]["message_id"], id + 2);

    // Gone for every method.
    assert_error(
        h.call("deleteMessage", json!({"chat_id": 42, "message_id": id}))
            .await,
        400,
        "Bad Request: message to delete not found",
    );
    assert_error(
        h.call("deleteMessage", json!({"chat_id": 42, "message_id": 999}))
            .await,
        400,
        "Bad Request: message to delete not found",
    );
    assert_error(
        h.call(
            "editMessageText",
            json!({"chat_id": 42, "message_id": id, "text": "x"}),
        )
        .await,
        400,
        "Bad Request: message to edit not found",
    );
    assert_error(
        h.call(
            "sendMessage",
            json!({"chat_id": 42, "text": "x", "reply_parameters": {"message_id": id}}),
        )
        .await,
        400,
        "Bad Request: message to be replied not found",
    );
    let (status, _) = h
        .control(
            reqwest::Method::POST,
            "/sandbox/callbacks",
            Some(json!({"chat_id": 42, "message_id": id, "user_id": 42, "data": "go"})),
        )
        .await;
    assert_eq!(status, 400, "no button on a deleted message");
    assert_error(
        h.call("deleteMessage", json!({"chat_id": 42})).await,
        400,
        "Bad Request: message identifier is not specified",
    );
    assert_error(
        h.call("deleteMessage", json!({"chat_id": 5, "message_id": 1}))
            .await,
        400,
        "Bad Request: chat not found",
    );
    // A user's message: in a private chat the bot may delete it, in a group it may not.
    let (status, _) = h
        .call("deleteMessage", json!({"chat_id": 42, "message_id": 1}))
        .await;
    assert_eq!(status, 200);
    h.say(-9, "group hello").await;
    assert_error(
        h.call("deleteMessage", json!({"chat_id": -9, "message_id": 1}))
            .await,
        400,
        "Bad Request: message can't be deleted",
    );

    let stats = h.stats().await;
    assert_eq!(stats.messages_deleted, 2);
    let deletes: Vec<(i64, u16, Option<i64>)> = h
        .calls()
        .await
        .into_iter()
        .filter(|c| c.method == "deleteMessage")
        .map(|c| (c.chat_id, c.status, c.message_id))
        .collect();
    assert_eq!(
        deletes,
        vec![
            (42, 200, Some(id)),
            (42, 400, None),
            (42, 400, None),
            (42, 400, None),
            (5, 400, None),
            (42, 200, Some(1)),
            (-9, 400, None),
        ]
    );
    h.stop().await;
}

/// A reply carries `reply_to_message` in the answer, in later updates (a button pressed on
/// it) and in the transcript; the press and the bot's answer are visible at
/// `/sandbox/callbacks/{id}` and in the call log; chat actions are logged and counted.
#[tokio::test]
async fn replies_callback_answers_and_chat_actions_are_observable() {
    let h = Harness::dev().await;
    h.say(43, "question").await;
    let markup = json!({"inline_keyboard": [[{"text": "Yes", "callback_data": "yes"}]]});
    let (status, sent) = h
        .call(
            "sendMessage",
            json!({"chat_id": 43, "text": "answer", "reply_markup": markup,
                   "reply_parameters": {"message_id": 1}}),
        )
        .await;
    assert_eq!(status, 200, "{sent}");
    assert_eq!(sent["result"]["reply_to_message"]["message_id"], 1);
    assert_eq!(sent["result"]["reply_to_message"]["text"], "question");
    let (_, transcript) = h.transcript(43).await;
    assert_eq!(transcript[1]["reply_to_message_id"], 1);
    assert!(transcript[0].get("reply_to_message_id").is_none());

    let (_, pressed) = h
        .control(
            reqwest::Method::POST,
            "/sandbox/callbacks",
            Some(json!({"chat_id": 43, "message_id": 2, "user_id": 43, "data": "yes"})),
        )
        .await;
    let id = pressed["callback_query_id"].as_str().unwrap().to_owned();
    let (_, updates) = h.call("getUpdates", json!({"offset": 2})).await;
    let message = &updates["result"][0]["callback_query"]["message"];
    assert_eq!(message["reply_to_message"]["text"], "question");
    assert!(
        message["reply_to_message"]
            .get("reply_to_message")
            .is_none(),
        "one level, as Telegram"
    );
    let path = format!("/sandbox/callbacks/{id}");
    let (status, before) = h.control(reqwest::Method::GET, &path, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        (
            &before["chat_id"],
            &before["message_id"],
            &before["data"],
            &before["answer"]
        ),
        (&json!(43), &json!(2), &json!("yes"), &Value::Null)
    );
    let (status, _) = h
        .call(
            "answerCallbackQuery",
            json!({"callback_query_id": id, "text": "Noted", "show_alert": true}),
        )
        .await;
    assert_eq!(status, 200);
    let (_, after) = h.control(reqwest::Method::GET, &path, None).await;
    assert_eq!(after["answer"]["text"], "Noted");
    assert_eq!(after["answer"]["show_alert"], true);
    let (status, _) = h
        .control(reqwest::Method::GET, "/sandbox/callbacks/nope", None)
        .await;
    assert_eq!(status, 404);

    let (status, _) = h
        .call(
            "sendChatAction",
            json!({"chat_id": 43, "action": "upload_photo"}),
        )
        .await;
    assert_eq!(status, 200);
    let stats = h.stats().await;
    assert_eq!((stats.callbacks_answered, stats.chat_actions), (1, 1));
    let calls: Vec<_> = h
        .calls()
        .await
        .into_iter()
        .map(|c| {
            (
                c.method,
                c.chat_id,
                c.status,
                c.text,
                c.message_id,
                c.action,
                c.callback_query_id,
            )
        })
        .collect();
    assert_eq!(
        calls,
        vec![
            (
                "sendMessage".into(),
                43,
                200,
                Some("answer".into()),
                Some(2),
                None,
                None
            ),
            (
                "answerCallbackQuery".into(),
                43,
                200,
                Some("Noted".into()),
                Some(2),
                None,
                Some(id.clone())
            ),
            (
                "sendChatAction".into(),
                43,
                200,
                None,
                None,
                Some("upload_photo".into()),
                None
            ),
        ]
    );
    h.stop().await;
}

/// Callback answers and chat actions count against the bot's 30 calls a second, never
/// against the chat's own limit: a chat whose burst is spent still gets them.
#[tokio::test]
async fn callback_answers_and_chat_actions_take_only_the_bots_limit() {
    let h = Harness::dev().await;
    h.say(44, "hi").await;
    for i in 0..3 {
        let (status, _) = h
            .call(
                "sendMessage",
                json!({"chat_id": 44, "text": format!("m{i}")}),
            )
            .await;
        assert_eq!(status, 200);
    }
    assert_429(
        &h.call("sendMessage", json!({"chat_id": 44, "text": "m3"}))
            .await,
        1,
    );
    assert_429(
        &h.call("deleteMessage", json!({"chat_id": 44, "message_id": 2}))
            .await,
        1,
    );
    let mut statuses = Vec::new();
    for _ in 0..40 {
        statuses.push(
            h.call("sendChatAction", json!({"chat_id": 44, "action": "typing"}))
                .await
                .0,
        );
    }
    // 3 sendMessage + at most 27 chat actions in the bot's second (a slow machine spreads
    // them over more than a second: then more pass, never 31 in one second).
    assert!(statuses[..27].iter().all(|s| *s == 200), "{statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429));
    let accepted: Vec<i64> = h
        .calls()
        .await
        .iter()
        .filter(|c| c.status == 200)
        .map(|c| c.at_unix_ms)
        .collect();
    for (i, t) in accepted.iter().enumerate() {
        assert!(accepted[i..].iter().take_while(|u| **u < t + 1000).count() <= 30);
    }
    h.stop().await;
}

/// The wire format of the calls beyond plain text, through teloxide-core as the sender makes
/// them: a keyboard and a reply, an edit, a chat action, a delete; and the refusals teloxide
/// knows by Telegram's exact words (not modified, nothing to delete).
#[tokio::test]
async fn teloxide_core_reads_keyboards_replies_edits_and_deletes(
) -> Result<(), Box<dyn std::error::Error>> {
    use teloxide_core::payloads::setters::*;
    use teloxide_core::requests::Requester;
    use teloxide_core::types::{
        ChatAction, ChatId, InlineKeyboardButton, InlineKeyboardMarkup, ReplyParameters,
    };
    use teloxide_core::{ApiError, Bot, RequestError};

    let mut config = Config::dev();
    config.rate_limits = false;
    let h = Harness::start(config).await;
    h.say(78, "question").await;
    let bot = Bot::new(dev::BOT_TOKEN).set_api_url(url::Url::parse(&h.sandbox.url())?);
    let keyboard = InlineKeyboardMarkup::new([[InlineKeyboardButton::callback("Yes", "y")]]);
    let sent = bot
        .send_message(ChatId(78), "Sure?")
        .reply_markup(keyboard.clone())
        .reply_parameters(ReplyParameters::new(teloxide_core::types::MessageId(1)))
        .await?;
    assert_eq!(sent.reply_markup(), Some(&keyboard));
    assert_eq!(
        sent.reply_to_message().and_then(|m| m.text()),
        Some("question")
    );
    let edited = bot.edit_message_text(ChatId(78), sent.id, "Sure.").await?;
    assert_eq!(edited.text(), Some("Sure."));
    assert_eq!(edited.reply_markup(), None, "no keyboard given: none kept");
    let again = bot
        .edit_message_text(ChatId(78), sent.id, "Sure.")
        .await
        .unwrap_err();
    assert!(
        matches!(again, RequestError::Api(ApiError::MessageNotModified)),
        "{again:?}"
    );
    bot.send_chat_action(ChatId(78), ChatAction::Typing).await?;
    bot.delete_message(ChatId(78), sent.id).await?;
    let gone = bot.delete_message(ChatId(78), sent.id).await.unwrap_err();
    assert!(
        matches!(gone, RequestError::Api(ApiError::MessageToDeleteNotFound)),
        "{gone:?}"
    );
    let lost = bot
        .edit_message_text(ChatId(78), sent.id, "x")
        .await
        .unwrap_err();
    assert!(
        matches!(lost, RequestError::Api(ApiError::MessageToEditNotFound)),
        "{lost:?}"
    );
    h.stop().await;
    Ok(())
}
