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
