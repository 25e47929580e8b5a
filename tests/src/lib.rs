//! Courier's end-to-end test harness.
//!
//! [`infra`] starts the real infrastructure (a nats-server with JetStream on free ports, a
//! fresh PostgreSQL database per test); [`Stack`] runs Courier's services in-process on top of
//! it, with the sandbox standing in for Telegram. Nothing of Courier's own infrastructure is
//! mocked: the only emulated party is Telegram.

pub mod admin;
pub mod infra;
pub mod metrics;
pub mod procs;
pub mod sender_support;

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use courier_common::{
    config::{NatsArgs, SecretArgs, WebhookSecretArgs},
    CancellationToken,
};
use serde::Deserialize;
use sqlx::PgPool;

pub use infra::{NatsServer, Postgres};

/// The bot token of every test stack.
pub const TOKEN: &str = "424242:test-token_ABC";
/// The webhook secret of every test stack.
pub const SECRET: &str = "test-secret_123";

/// How long a test waits for a condition before it fails.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// Waits until `check` returns `Some`, polling every 20 ms, failing after `deadline` with
/// `what` in the message. This is how tests wait: on a condition, never on a fixed sleep.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let end = tokio::time::Instant::now() + deadline;
    let mut last_err = None;
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if tokio::time::Instant::now() >= end {
            match last_err {
                Some(e) => bail!("timed out waiting for {what}; last error: {e:#}"),
                None => bail!("timed out waiting for {what}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One line of a sandbox chat transcript.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Line {
    /// Telegram message id.
    pub message_id: i64,
    /// Whether the bot wrote it.
    pub from_bot: bool,
    /// The text (as Telegram shows it: markup parsed into `entities`).
    pub text: String,
    /// Its entities (bold, italic, ...), as Bot API `MessageEntity` objects.
    #[serde(default)]
    pub entities: Vec<serde_json::Value>,
    /// The inline keyboard of a bot message.
    #[serde(default)]
    pub reply_markup: Option<serde_json::Value>,
    /// Unix seconds.
    pub date: i64,
}

/// Which services [`Stack::start_with`] runs besides the sandbox and ingress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Services {
    /// Worker and sender too.
    All,
    /// Only the sandbox and ingress: the test runs its own workers.
    IngressOnly,
}

struct Running<T> {
    service: T,
    cancel: CancellationToken,
}

/// The whole pipeline, in-process: ingress, worker, sender and the sandbox, over a real NATS
/// and a fresh PostgreSQL database.
pub struct Stack {
    /// The NATS server (stop and restart it to test outages).
    pub nats: NatsServer,
    /// The test's database.
    pub pg: Postgres,
    /// A pool on the test's database, for assertions.
    pub db: PgPool,
    /// HTTP client for the sandbox and ingress.
    pub http: reqwest::Client,
    sandbox: Running<courier_sandbox::Sandbox>,
    ingress: Option<Running<courier_ingress::Ingress>>,
    ingress_addr: SocketAddr,
    worker: Option<Running<courier_worker::Worker>>,
    sender: Option<Running<courier_sender::Sender>>,
    bot: courier_worker::BotKind,
}

fn secrets() -> SecretArgs {
    SecretArgs {
        bot_token: Some(TOKEN.into()),
        dev: false,
    }
}

fn webhook_secret() -> WebhookSecretArgs {
    WebhookSecretArgs {
        webhook_secret: Some(SECRET.into()),
    }
}

fn local0() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

impl Stack {
    /// Starts NATS, a fresh database and every service.
    pub async fn start() -> Result<Self> {
        Self::start_with(Services::All).await
    }

    /// Starts NATS, a fresh database, the sandbox, ingress, and the services `which` says.
    pub async fn start_with(which: Services) -> Result<Self> {
        Self::start_bot(which, courier_worker::BotKind::Notes).await
    }

    /// [`Stack::start_with`], the workers running `bot`.
    pub async fn start_bot(which: Services, bot: courier_worker::BotKind) -> Result<Self> {
        // Logs only when asked, so test output stays readable: COURIER_TEST_LOG=1.
        if std::env::var_os("COURIER_TEST_LOG").is_some() {
            let _ = courier_common::telemetry::init("courier-tests");
        }
        let nats = NatsServer::start().await?;
        let pg = Postgres::fresh().await?;
        // Reserve the ingress port first: the sandbox needs the webhook URL at start.
        let ingress_addr = {
            let l = std::net::TcpListener::bind(local0())?;
            l.local_addr()?
        };
        let mut stack = Self {
            db: sqlx::postgres::PgPoolOptions::new()
                .max_connections(4)
                .connect_lazy(pg.url())?,
            http: reqwest::Client::new(),
            sandbox: Self::start_sandbox(ingress_addr).await?,
            nats,
            pg,
            ingress: None,
            ingress_addr,
            worker: None,
            sender: None,
            bot,
        };
        stack.start_ingress().await?;
        if which == Services::All {
            stack.start_worker().await?;
            stack.start_sender().await?;
        }
        Ok(stack)
    }

    /// Starts one more worker in-process with this configuration; the caller owns it.
    pub async fn spawn_worker(
        &self,
        config: courier_worker::Config,
    ) -> Result<(courier_worker::Worker, CancellationToken)> {
        let cancel = CancellationToken::new();
        let worker = courier_worker::spawn(config, cancel.clone()).await?;
        Ok((worker, cancel))
    }

    async fn start_sandbox(ingress: SocketAddr) -> Result<Running<courier_sandbox::Sandbox>> {
        let mut config = courier_sandbox::Config::dev();
        config.secrets = secrets();
        config.webhook_secret = webhook_secret();
        config.webhook_url = Some(format!("http://{ingress}/webhook"));
        let cancel = CancellationToken::new();
        let service = courier_sandbox::spawn(config, cancel.clone()).await?;
        Ok(Running { service, cancel })
    }

    fn nats_args(&self) -> NatsArgs {
        NatsArgs {
            nats_url: self.nats.url(),
            partitions: courier_common::partition::DEFAULT_PARTITIONS,
        }
    }

    /// The ingress configuration of this stack.
    pub fn ingress_config(&self) -> courier_ingress::Config {
        courier_ingress::Config {
            addr: self.ingress_addr,
            webhook_path: "/webhook".into(),
            max_body_bytes: 64 * 1024,
            publish_timeout: Duration::from_secs(2),
            limits: Default::default(),
            access: Default::default(),
            nats: self.nats_args(),
            secrets: secrets(),
            webhook: webhook_secret(),
            webhook_secret_previous: None,
        }
    }

    /// The worker configuration of this stack.
    pub fn worker_config(&self) -> courier_worker::Config {
        courier_worker::Config {
            bot: self.bot,
            database_url: Some(self.pg.url().to_owned()),
            db_pool_size: 4,
            migrate: true,
            health_addr: local0(),
            worker_id: None,
            fixed_partitions: None,
            heartbeat: Duration::from_millis(300),
            member_ttl: Duration::from_millis(1500),
            priority_timeout: Duration::from_secs(1),
            max_lanes: 64,
            group_commit: true,
            max_in_flight: 32,
            max_ack_pending: 512,
            ack_wait: Duration::from_secs(10),
            max_attempts: 3,
            flood_limit: 20,
            flood_window: Duration::from_secs(10),
            relay_interval: Duration::from_millis(500),
            relay_grace: Duration::from_secs(2),
            metrics_interval: Duration::from_secs(1),
            retention: Default::default(),
            nats: self.nats_args(),
            secrets: secrets(),
        }
    }

    /// The sender configuration of this stack.
    pub fn sender_config(&self) -> courier_sender::Config {
        courier_sender::Config {
            api_url: self.sandbox.service.url().parse().expect("sandbox url"),
            request_timeout: Duration::from_secs(5),
            health_addr: local0(),
            max_lanes: 64,
            max_ack_pending: 1024,
            ack_wait: Duration::from_secs(10),
            database_url: Some(self.pg.url().to_owned()),
            db_pool_size: 4,
            migrate: true,
            bot_rate: 30.0,
            private_chat_rate: 1.0,
            group_rate_per_min: 20.0,
            rate_headroom: 0.01,
            breaker_threshold: 5,
            breaker_cooldown: Duration::from_millis(500),
            lease_ttl: Duration::from_secs(10),
            metrics_interval: Duration::from_secs(1),
            nats: self.nats_args(),
            secrets: secrets(),
        }
    }

    /// Starts ingress (again) on its fixed address.
    pub async fn start_ingress(&mut self) -> Result<()> {
        let cancel = CancellationToken::new();
        let service = courier_ingress::spawn(self.ingress_config(), cancel.clone()).await?;
        self.ingress = Some(Running { service, cancel });
        Ok(())
    }

    /// Starts the worker (again).
    pub async fn start_worker(&mut self) -> Result<()> {
        let cancel = CancellationToken::new();
        let service = courier_worker::spawn(self.worker_config(), cancel.clone()).await?;
        self.worker = Some(Running { service, cancel });
        Ok(())
    }

    /// Stops the worker and starts it again running `bot` (a deployment that changed
    /// `COURIER_BOT`).
    pub async fn switch_bot(&mut self, bot: courier_worker::BotKind) -> Result<()> {
        if let Some(r) = self.worker.take() {
            r.cancel.cancel();
            r.service.wait().await?;
        }
        self.bot = bot;
        self.start_worker().await
    }

    /// Starts the sender (again).
    pub async fn start_sender(&mut self) -> Result<()> {
        let cancel = CancellationToken::new();
        let service = courier_sender::spawn(self.sender_config(), cancel.clone()).await?;
        self.sender = Some(Running { service, cancel });
        Ok(())
    }

    /// Gracefully stops ingress, worker and sender and waits until each one finished.
    pub async fn stop_services(&mut self) -> Result<()> {
        if let Some(r) = self.ingress.take() {
            r.cancel.cancel();
            r.service.wait().await?;
        }
        if let Some(r) = self.worker.take() {
            r.cancel.cancel();
            r.service.wait().await?;
        }
        if let Some(r) = self.sender.take() {
            r.cancel.cancel();
            r.service.wait().await?;
        }
        Ok(())
    }

    /// Gracefully stops the sender and waits until it finished.
    pub async fn stop_sender(&mut self) -> Result<()> {
        if let Some(r) = self.sender.take() {
            r.cancel.cancel();
            r.service.wait().await?;
        }
        Ok(())
    }

    /// The running sender's counters.
    pub fn sender_stats(&self) -> std::sync::Arc<courier_sender::Stats> {
        self.sender
            .as_ref()
            .expect("sender running")
            .service
            .stats()
    }

    /// The running worker's counters.
    pub fn worker_stats(&self) -> std::sync::Arc<courier_worker::Stats> {
        self.worker
            .as_ref()
            .expect("worker running")
            .service
            .stats()
    }

    /// The worker's health address.
    pub fn worker_health(&self) -> SocketAddr {
        self.worker
            .as_ref()
            .expect("worker running")
            .service
            .health_addr()
    }

    /// The sender's health address (health, readiness, metrics).
    pub fn sender_health(&self) -> SocketAddr {
        self.sender
            .as_ref()
            .expect("sender running")
            .service
            .health_addr()
    }

    /// Ingress's address (the webhook and its metrics).
    pub fn ingress_addr(&self) -> SocketAddr {
        self.ingress_addr
    }

    /// The sandbox's address.
    pub fn sandbox_addr(&self) -> SocketAddr {
        self.sandbox.service.addr()
    }

    /// The sandbox's base URL.
    pub fn sandbox_url(&self) -> String {
        self.sandbox.service.url()
    }

    /// The webhook URL of ingress.
    pub fn webhook_url(&self) -> String {
        format!("http://{}/webhook", self.ingress_addr)
    }

    /// Ingress's base URL.
    pub fn ingress_url(&self) -> String {
        format!("http://{}", self.ingress_addr)
    }

    /// The bot's id.
    pub fn bot_id(&self) -> i64 {
        TOKEN.split(':').next().unwrap().parse().unwrap()
    }

    /// A user writes `text` in a private chat (`chat_id == user_id`) through the sandbox.
    pub async fn say(&self, user_id: i64, first_name: &str, text: &str) -> Result<i64> {
        let resp: serde_json::Value = self
            .http
            .post(format!("{}/sandbox/messages", self.sandbox_url()))
            .json(&serde_json::json!({
                "chat_id": user_id, "user_id": user_id, "first_name": first_name, "text": text
            }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        resp["update_id"]
            .as_i64()
            .context("update_id in sandbox answer")
    }

    /// The user presses the inline button with `data` under the bot's message `message_id`
    /// (the sandbox creates the `callback_query` update); returns the callback query's id.
    pub async fn press(
        &self,
        chat_id: i64,
        user_id: i64,
        message_id: i64,
        data: &str,
    ) -> Result<String> {
        let resp: serde_json::Value = self
            .http
            .post(format!("{}/sandbox/callbacks", self.sandbox_url()))
            .json(&serde_json::json!({
                "chat_id": chat_id, "user_id": user_id, "message_id": message_id, "data": data
            }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        resp["callback_query_id"]
            .as_str()
            .map(str::to_owned)
            .context("callback_query_id in sandbox answer")
    }

    /// The chat's transcript in the sandbox.
    pub async fn transcript(&self, chat_id: i64) -> Result<Vec<Line>> {
        let resp = self
            .http
            .get(format!(
                "{}/sandbox/chats/{chat_id}/messages",
                self.sandbox_url()
            ))
            .send()
            .await?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(Vec::new());
        }
        Ok(resp.error_for_status()?.json().await?)
    }

    /// Private chats (user id = chat id, all named Ada) say `/start` at once; returns when
    /// each got its first reply.
    pub async fn register(&self, chats: &[i64]) -> Result<()> {
        futures::future::try_join_all(chats.iter().map(|&chat| async move {
            self.say(chat, "Ada", "/start").await?;
            self.bot_replies(chat, 1).await
        }))
        .await?;
        Ok(())
    }

    /// Waits until the chat has at least `n` bot messages and returns them.
    pub async fn bot_replies(&self, chat_id: i64, n: usize) -> Result<Vec<String>> {
        eventually(
            &format!("{n} bot replies in chat {chat_id}"),
            DEADLINE,
            || async {
                let bot: Vec<String> = self
                    .transcript(chat_id)
                    .await?
                    .into_iter()
                    .filter(|l| l.from_bot)
                    .map(|l| l.text)
                    .collect();
                Ok((bot.len() >= n).then_some(bot))
            },
        )
        .await
    }

    /// The sandbox's counters.
    pub async fn sandbox_stats(&self) -> Result<serde_json::Value> {
        Ok(self
            .http
            .get(format!("{}/sandbox/stats", self.sandbox_url()))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// POSTs a raw body to the webhook with the given secret header (None: no header).
    pub async fn post_webhook(
        &self,
        body: impl Into<reqwest::Body>,
        secret: Option<&str>,
    ) -> Result<reqwest::StatusCode> {
        let mut req = self
            .http
            .post(self.webhook_url())
            .header("content-type", "application/json")
            .body(body);
        if let Some(s) = secret {
            req = req.header("X-Telegram-Bot-Api-Secret-Token", s);
        }
        Ok(req.send().await?.status())
    }

    /// Messages stored in a JetStream stream right now.
    pub async fn stream_messages(&self, stream: &str) -> Result<u64> {
        let client = async_nats::connect(self.nats.url()).await?;
        let js = async_nats::jetstream::new(client);
        let mut s = js.get_stream(stream).await?;
        Ok(s.info().await?.state.messages)
    }

    /// Notes stored for a chat, oldest first.
    pub async fn notes(&self, chat_id: i64) -> Result<Vec<String>> {
        Ok(
            sqlx::query_scalar("SELECT text FROM messages WHERE chat_id = $1 ORDER BY id")
                .bind(chat_id)
                .fetch_all(&self.db)
                .await?,
        )
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.sandbox.cancel.cancel();
        for c in [
            self.ingress.as_ref().map(|r| &r.cancel),
            self.worker.as_ref().map(|r| &r.cancel),
            self.sender.as_ref().map(|r| &r.cancel),
        ]
        .into_iter()
        .flatten()
        {
            c.cancel();
        }
    }
}

/// A Telegram update with a private text message, as Telegram would POST it.
pub fn text_update(update_id: i64, chat_id: i64, text: &str) -> serde_json::Value {
    serde_json::json!({
        "update_id": update_id,
        "message": {
            "message_id": update_id,
            "date": 1_764_133_380,
            "chat": {"id": chat_id, "type": "private", "first_name": "Tess"},
            "from": {"id": chat_id, "is_bot": false, "first_name": "Tess"},
            "text": text,
        }
    })
}
