//! `courier-sandbox`: a local emulator of the Telegram Bot API, standing in for Telegram in
//! tests and the local stack.
//!
//! It emulates one bot (the token from `COURIER_BOT_TOKEN`, or the development token with
//! `COURIER_DEV=1`) and speaks the Bot API's wire format, so `teloxide-core` talks to it
//! unchanged (`Bot::new(token).set_api_url(sandbox_url)`).
//!
//! - **Bot API**, `/bot<token>/<method>` (GET or POST; parameters in the query string, a JSON,
//!   form or multipart body; method names case-insensitive): `getMe`, `setWebhook`,
//!   `deleteWebhook`, `getWebhookInfo`, `getUpdates` (long polling; 409 while a webhook is
//!   set), `sendMessage` (inline keyboards, `reply_parameters`), `editMessageText`,
//!   `deleteMessage`, `answerCallbackQuery`, `sendChatAction`, `setMyCommands`/
//!   `getMyCommands`/`deleteMyCommands`. Errors in Telegram's shape (`ok:false`, `error_code`, `description`,
//!   `parameters.retry_after` / `parameters.migrate_to_chat_id`).
//! - **Formatting** like Telegram's (module `format`): `parse_mode` `HTML`, `MarkdownV2` and the
//!   legacy `Markdown` parsed into plain `text` plus `entities` (UTF-16 offsets), bad markup
//!   refused with Telegram's `400 Bad Request: can't parse entities: …`; explicit `entities`
//!   checked and kept as given. The web chat renders them.
//! - **Rate limits** like Telegram's on the methods that act on a chat, on by default: 30
//!   calls in any second per bot (all five), 1/s per private chat with a burst of 3 and 20 per
//!   minute per group (`sendMessage`, `editMessageText`, `deleteMessage`); past them 429 with
//!   `retry_after`.
//! - **Fault injection** (`/sandbox/faults`, `--fault-*`): shares of 5xx, 429 and dropped
//!   calls, a delay, a burst of 429s, users who blocked the bot.
//! - **Control API** (JSON): `POST /sandbox/messages` (a user sends a message),
//!   `POST /sandbox/callbacks` (a user presses an inline button), `GET /sandbox/callbacks/{id}`
//!   (the press and the bot's answer),
//!   `GET /sandbox/chats/{chat_id}/messages` (the transcript), `GET /sandbox/chats`,
//!   `POST /sandbox/chats/{chat_id}/migrate`, `GET|DELETE /sandbox/calls` (the calls to chats),
//!   `GET /sandbox/latency` (each user message's replies and latency),
//!   `GET /sandbox/stats` (see [`Stats`]), `GET /sandbox/events` (server-sent events),
//!   `GET /` (the web chat), `/healthz` and `/readyz`.
//! - **Metrics**, `GET /metrics` (Prometheus, OpenMetrics text): Bot API requests by method
//!   and status, webhook deliveries by result, 429s.
//! - **Webhook delivery** like Telegram's: at most `max_connections` deliveries in flight, at
//!   most one per chat, each chat's updates in creation order, failures retried with backoff
//!   (100 ms doubling to 5 s) before any later update of the chat.
//! - **Load generator** ([`load`], `courier-sandbox load`).
//!
//! The user guide is `docs/SANDBOX.md`. Not emulated: files and media (so no captions or
//! `caption_entities`), entities Telegram detects by itself (URLs, mentions, hashtags in bot
//! messages), answering a method in the webhook's response body, inline mode, payments.

mod api;
mod control;
mod delivery;
mod faults;
mod format;
mod limits;
pub mod load;
mod metrics;
pub mod otlp;
mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::{any, get, post};
use axum::Router;
use courier_common::config::{parse_duration, ConfigError, SecretArgs, WebhookSecretArgs};
use courier_common::CancellationToken;
use tokio::task::JoinHandle;

pub use control::MessageLatency;
pub use delivery::SECRET_HEADER;
pub use faults::{Burst429, FaultArgs, Faults};
pub use state::{CallRecord, Stats, BOT_FIRST_NAME, BOT_USERNAME, MAX_CALL_LOG};

use limits::LimitConfig;

use state::{Shared, Webhook};

/// The sandbox's configuration; every field has a flag and an environment variable.
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(
        long = "addr",
        env = "COURIER_SANDBOX_ADDR",
        default_value = "127.0.0.1:8080"
    )]
    pub addr: SocketAddr,
    /// Port to listen on; when set it overrides the port of --addr / COURIER_SANDBOX_ADDR.
    #[arg(long = "port", env = "COURIER_SANDBOX_PORT")]
    pub port: Option<u16>,
    /// Webhook registered at start (as if setWebhook had been called), with the webhook secret
    /// (COURIER_WEBHOOK_SECRET) as its secret_token. Without it, updates wait for a setWebhook.
    #[arg(long = "webhook-url", env = "COURIER_SANDBOX_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// The bot token the sandbox accepts (COURIER_BOT_TOKEN, COURIER_DEV).
    #[command(flatten)]
    pub secrets: SecretArgs,
    /// The secret of the webhook registered at start (COURIER_WEBHOOK_SECRET).
    #[command(flatten)]
    pub webhook_secret: WebhookSecretArgs,
    /// How long one webhook delivery may take before it counts as failed (`500ms`, `10s`).
    #[arg(long = "webhook-timeout", env = "COURIER_SANDBOX_WEBHOOK_TIMEOUT", default_value = "10s",
          value_parser = parse_duration)]
    pub webhook_timeout: Duration,
    /// Enforce Telegram's rate limits on the methods that act on a chat (429 past them).
    #[arg(long = "rate-limits", env = "COURIER_SANDBOX_RATE_LIMITS", default_value_t = true,
          action = clap::ArgAction::Set, value_parser = clap::builder::BoolishValueParser::new())]
    pub rate_limits: bool,
    /// Bot-wide limit: sending calls accepted in any 1-second window (0: no limit).
    #[arg(
        long = "bot-rate",
        env = "COURIER_SANDBOX_BOT_RATE",
        default_value_t = 30
    )]
    pub bot_rate_per_sec: u32,
    /// Per private chat: sustained sending calls per second (0: no limit).
    #[arg(
        long = "private-chat-rate",
        env = "COURIER_SANDBOX_PRIVATE_CHAT_RATE",
        default_value_t = 1
    )]
    pub private_chat_rate_per_sec: u32,
    /// Per private chat: how many calls may come back to back before the rate applies.
    #[arg(
        long = "private-chat-burst",
        env = "COURIER_SANDBOX_PRIVATE_CHAT_BURST",
        default_value_t = 3
    )]
    pub private_chat_burst: u32,
    /// Per group chat: sending calls accepted in any 60-second window (0: no limit).
    #[arg(
        long = "group-rate",
        env = "COURIER_SANDBOX_GROUP_RATE",
        default_value_t = 20
    )]
    pub group_rate_per_min: u32,
    /// Faults in force from the start (see `POST /sandbox/faults`).
    #[command(flatten)]
    pub faults: FaultArgs,
    /// Address of an OTLP/gRPC trace receiver to run (e.g. `127.0.0.1:4317`): the services
    /// export their spans to it (`OTEL_EXPORTER_OTLP_ENDPOINT=http://<addr>`) and
    /// `/sandbox/traces` shows them. Off when unset.
    #[arg(long = "otlp-addr", env = "COURIER_SANDBOX_OTLP_ADDR")]
    pub otlp_addr: Option<SocketAddr>,
}

impl Config {
    /// A development configuration for tests and embedding: `127.0.0.1:0` (any free port),
    /// the development bot token, no webhook, a 10 s delivery timeout.
    pub fn dev() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            port: None,
            webhook_url: None,
            secrets: SecretArgs {
                bot_token: None,
                dev: true,
            },
            webhook_secret: WebhookSecretArgs {
                webhook_secret: None,
            },
            webhook_timeout: Duration::from_secs(10),
            rate_limits: true,
            bot_rate_per_sec: 30,
            private_chat_rate_per_sec: 1,
            private_chat_burst: 3,
            group_rate_per_min: 20,
            faults: FaultArgs::default(),
            otlp_addr: None,
        }
    }

    fn limit_config(&self) -> LimitConfig {
        LimitConfig {
            enabled: self.rate_limits,
            bot_per_sec: self.bot_rate_per_sec,
            private_per_sec: self.private_chat_rate_per_sec,
            private_burst: self.private_chat_burst,
            group_per_min: self.group_rate_per_min,
        }
    }

    /// The address to listen on: `addr`, with its port replaced by `port` when set.
    pub fn listen_addr(&self) -> SocketAddr {
        let mut addr = self.addr;
        if let Some(port) = self.port {
            addr.set_port(port);
        }
        addr
    }
}

/// Why the sandbox could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is missing or wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A `--fault-*` flag is out of range.
    #[error("fault flags: {0}")]
    Faults(String),
    /// `COURIER_SANDBOX_WEBHOOK_URL` is not an http(s) URL.
    #[error("COURIER_SANDBOX_WEBHOOK_URL: `{0}` is not an http or https URL")]
    WebhookUrl(String),
    /// The listening socket could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The HTTP client for webhook deliveries could not be built.
    #[error("webhook HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// The HTTP server failed.
    #[error("HTTP server: {0}")]
    Serve(#[source] std::io::Error),
    /// The OTLP receiver's socket could not be bound.
    #[error("cannot listen for OTLP on {addr}: {source}")]
    OtlpBind {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// The sandbox's task panicked or was cancelled.
    #[error("sandbox task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// A running sandbox.
#[derive(Debug)]
pub struct Sandbox {
    addr: SocketAddr,
    task: JoinHandle<Result<(), Error>>,
}

impl Sandbox {
    /// The address it listens on (the actual port when configured with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL, `http://<addr>`: the Bot API URL to give a client, and the prefix of the
    /// control API.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Waits until it stops (after the shutdown token is cancelled).
    pub async fn wait(self) -> Result<(), Error> {
        self.task.await?
    }
}

/// Binds, starts serving and delivering to the webhook, and returns at once. Everything stops
/// when `shutdown` is cancelled: serving stops gracefully, deliveries in flight are abandoned.
pub async fn spawn(config: Config, shutdown: CancellationToken) -> Result<Sandbox, Error> {
    let token = config.secrets.bot_token()?;
    let faults = config.faults.to_faults().map_err(Error::Faults)?;
    let webhook = match config.webhook_url.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(raw) => Some(startup_webhook(raw, &config)?),
    };
    let client = reqwest::Client::builder()
        .timeout(config.webhook_timeout)
        .pool_max_idle_per_host(100)
        .build()
        .map_err(Error::Client)?;
    let addr = config.listen_addr();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| Error::Bind { addr, source })?;

    let stop = shutdown.child_token();
    let shared = Arc::new(Shared::new(
        token.expose().to_owned(),
        token.bot_id(),
        webhook,
        config.limit_config(),
        faults,
        stop.clone(),
    ));
    let traces = match config.otlp_addr {
        Some(otlp) => {
            let (bound, spans) = otlp::start(otlp, stop.clone())
                .await
                .map_err(|source| Error::OtlpBind { addr: otlp, source })?;
            tracing::info!(otlp = %bound, "OTLP trace receiver listening");
            Some(spans)
        }
        None => None,
    };
    let app = router(shared.clone()).merge(otlp::router(traces));
    let server = {
        let stop = stop.clone();
        async move {
            let result = axum::serve(listener, app)
                .with_graceful_shutdown(stop.clone().cancelled_owned())
                .await
                .map_err(Error::Serve);
            // The server only ends on shutdown or failure; either way delivery stops too.
            stop.cancel();
            result
        }
    };
    let delivery = delivery::run(shared, client, stop);
    let task = tokio::spawn(async move {
        let (served, ()) = tokio::join!(server, delivery);
        tracing::info!("sandbox stopped");
        served
    });
    tracing::info!(%addr, bot_id = token.bot_id(), "sandbox listening");
    Ok(Sandbox { addr, task })
}

/// Runs the sandbox until `shutdown` is cancelled ([`spawn`] then [`Sandbox::wait`]).
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    spawn(config, shutdown).await?.wait().await
}

fn startup_webhook(raw: &str, config: &Config) -> Result<Webhook, Error> {
    let url = url::Url::parse(raw).map_err(|_| Error::WebhookUrl(raw.to_owned()))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(Error::WebhookUrl(raw.to_owned()));
    }
    let secret = if config.webhook_secret.webhook_secret.is_some() || config.secrets.dev {
        Some(
            config
                .webhook_secret
                .webhook_secret(config.secrets.dev)?
                .expose()
                .to_owned(),
        )
    } else {
        tracing::warn!(
            "COURIER_WEBHOOK_SECRET is not set: the webhook is registered without a secret"
        );
        None
    };
    tracing::info!(%url, "webhook registered at start");
    Ok(Webhook {
        url: url.to_string(),
        secret,
        max_connections: 40,
    })
}

fn router(shared: Arc<Shared>) -> Router {
    let mut registry = prometheus_client::registry::Registry::default();
    shared.metrics.register(&mut registry);
    Router::new()
        .route("/", get(control::index))
        .route("/sandbox/messages", post(control::post_message))
        .route(
            "/sandbox/chats/{chat_id}/messages",
            get(control::transcript),
        )
        .route("/sandbox/chats/{chat_id}/migrate", post(control::migrate))
        .route("/sandbox/chats", get(control::chats))
        .route("/sandbox/callbacks", post(control::post_callback))
        .route("/sandbox/callbacks/{id}", get(control::get_callback))
        .route(
            "/sandbox/faults",
            get(control::get_faults)
                .post(control::post_faults)
                .delete(control::delete_faults),
        )
        .route(
            "/sandbox/calls",
            get(control::get_calls).delete(control::delete_calls),
        )
        .route("/sandbox/latency", get(control::latency))
        .route("/sandbox/events", get(control::events))
        .route("/sandbox/stats", get(control::stats))
        .route("/{token}/{method}", any(api::handle))
        .fallback(api::not_found)
        .with_state(shared.clone())
        .merge(courier_common::health::router(Vec::new()))
        .merge(courier_common::metrics::router(registry, None))
}
