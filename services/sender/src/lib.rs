//! Courier sender: delivers outbound messages to the Telegram Bot API.
//!
//! The sender pulls `courier.outbound.<bot>.>` from JetStream, keeps each chat's messages in
//! order with per-chat lanes ([`courier_common::lanes`]), and calls the Bot API through
//! teloxide-core's client, against a configurable base URL (the sandbox locally, Telegram in
//! production). A message is acknowledged only after Telegram accepted it or it was parked in
//! `COURIER_DLQ`:
//!
//! - 429: wait exactly `retry_after`, then resend;
//! - 5xx, timeouts, connection errors: exponential backoff with jitter, retried without limit;
//! - 400, 403: permanent; published to `COURIER_DLQ` with the reason, then acknowledged.
//!
//! The full rate-limited sender (Telegram's per-bot and per-chat budgets) builds on this.
#![deny(missing_docs)]

pub mod telegram;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use courier_common::{
    backoff::Backoff,
    config::{parse_duration, ConfigError, NatsArgs, SecretArgs},
    health, lanes, pull, topology, CancellationToken,
};
use courier_proto::{
    v1::{outbound_message::Action, OutboundMessage},
    Message as _,
};
use teloxide_core::{prelude::Requester, types::ChatId, Bot};
use tokio::task::JoinHandle;

use crate::telegram::Failure;

/// Sender configuration (environment variables or the matching flags).
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Base URL of the Bot API (the sandbox's URL locally).
    #[arg(long = "telegram-api-url", env = "COURIER_TELEGRAM_API_URL", default_value = "https://api.telegram.org")]
    pub api_url: url::Url,
    /// Timeout of one Bot API call.
    #[arg(long = "request-timeout", env = "COURIER_SENDER_REQUEST_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// Address of the health and readiness endpoints.
    #[arg(long = "health-addr", env = "COURIER_SENDER_HEALTH_ADDR", default_value = "0.0.0.0:9092")]
    pub health_addr: SocketAddr,
    /// Chats sent to concurrently.
    #[arg(long = "max-lanes", env = "COURIER_SENDER_MAX_LANES", default_value_t = 256)]
    pub max_lanes: usize,
    /// Unacknowledged messages the server hands this consumer at most (bounds memory).
    #[arg(long = "max-ack-pending", env = "COURIER_SENDER_MAX_ACK_PENDING", default_value_t = 4096)]
    pub max_ack_pending: i64,
    /// How long JetStream waits for an ack before redelivering (kept alive by progress acks).
    #[arg(long = "ack-wait", env = "COURIER_SENDER_ACK_WAIT", default_value = "30s", value_parser = parse_duration)]
    pub ack_wait: Duration,
    /// NATS settings.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Bot token and dev mode.
    #[command(flatten)]
    pub secrets: SecretArgs,
}

/// What can stop the sender.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The streams could not be created or do not match.
    #[error(transparent)]
    Topology(#[from] topology::TopologyError),
    /// JetStream consumer trouble.
    #[error("JetStream: {0}")]
    JetStream(String),
    /// Binding or serving HTTP failed.
    #[error("http server: {0}")]
    Io(#[from] std::io::Error),
}

/// Counters of what the sender did.
#[derive(Debug, Default)]
pub struct Stats {
    /// Messages Telegram accepted.
    pub sent: AtomicU64,
    /// Retries after 429, 5xx or network errors.
    pub retries: AtomicU64,
    /// Messages parked in the dead-letter stream.
    pub dead_lettered: AtomicU64,
}

/// A running sender.
pub struct Sender {
    health_addr: SocketAddr,
    stats: Arc<Stats>,
    task: JoinHandle<Result<(), Error>>,
}

impl Sender {
    /// The bound address of the health endpoints.
    pub fn health_addr(&self) -> SocketAddr {
        self.health_addr
    }

    /// What the sender did so far.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Waits until the sender stopped.
    pub async fn wait(self) -> Result<(), Error> {
        self.task
            .await
            .unwrap_or_else(|e| Err(Error::Io(std::io::Error::other(e))))
    }
}

struct Ctx {
    bot: Bot,
    bot_id: i64,
    js: jetstream::Context,
    stats: Arc<Stats>,
    cancel: CancellationToken,
}

/// The name of the sender's durable consumer for a bot.
pub fn consumer_name(bot_id: i64) -> String {
    format!("courier-sender-{bot_id}")
}

/// Validates the configuration, connects and starts sending.
pub async fn spawn(config: Config, shutdown: CancellationToken) -> Result<Sender, Error> {
    let token = config.secrets.bot_token()?;
    let bot_id = token.bot_id();
    let client = teloxide_core::net::default_reqwest_settings()
        .timeout(config.request_timeout)
        .build()
        .map_err(|e| ConfigError {
            var: "COURIER_TELEGRAM_API_URL",
            reason: format!("cannot build the HTTP client: {e}"),
        })?;
    let bot = Bot::with_client(token.expose(), client).set_api_url(config.api_url.clone());

    let nats = config.nats.connect("courier-sender").await?;
    let js = jetstream::new(nats.clone());
    topology::ensure_streams(&js, config.nats.partitions).await?;
    let stream = js
        .get_stream(topology::OUTBOUND_STREAM)
        .await
        .map_err(|e| Error::JetStream(e.to_string()))?;
    let name = consumer_name(bot_id);
    let consumer: jetstream::consumer::Consumer<jetstream::consumer::pull::Config> = stream
        .get_or_create_consumer(
            &name,
            jetstream::consumer::pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: topology::outbound_filter(bot_id),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: config.ack_wait,
                max_ack_pending: config.max_ack_pending,
                max_deliver: -1,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| Error::JetStream(e.to_string()))?;

    let app = health::router(vec![("nats", health::nats_probe(nats))]);
    let listener = tokio::net::TcpListener::bind(config.health_addr).await?;
    let health_addr = listener.local_addr()?;
    let http_shutdown = shutdown.clone();
    let http = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(http_shutdown.cancelled_owned())
            .await
    });

    let stats = Arc::new(Stats::default());
    let ctx = Arc::new(Ctx {
        bot,
        bot_id,
        js,
        stats: stats.clone(),
        cancel: shutdown.clone(),
    });
    tracing::info!(bot_id, consumer = %name, api = %config.api_url, %health_addr, "sender consuming");
    let max_lanes = config.max_lanes;
    let task = tokio::spawn(async move {
        let input = pull::keyed_messages(consumer, shutdown.clone());
        lanes::run(input, max_lanes, shutdown.clone(), move |_chat, msg| {
            handle(ctx.clone(), msg)
        })
        .await;
        let _ = http.await;
        tracing::info!("sender stopped");
        Ok(())
    });
    Ok(Sender {
        health_addr,
        stats,
        task,
    })
}

/// Runs the sender until `shutdown` fires.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    spawn(config, shutdown).await?.wait().await
}

async fn handle(ctx: Arc<Ctx>, msg: jetstream::Message) {
    let out = match OutboundMessage::decode(msg.payload.clone()) {
        Ok(out) => out,
        Err(e) => {
            dead_letter(&ctx, &msg, &format!("undecodable outbound message: {e}")).await;
            return;
        }
    };
    let Some(Action::Send(send)) = out.action else {
        dead_letter(&ctx, &msg, "outbound message without an action this sender knows").await;
        return;
    };
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    loop {
        let wait = match ctx.bot.send_message(ChatId(out.chat_id), send.text.clone()).await {
            Ok(sent) => {
                ctx.stats.sent.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(outbox_id = out.outbox_id, message_id = sent.id.0, "sent");
                if let Err(e) = msg.ack().await {
                    tracing::warn!(error = %e, "ack failed");
                }
                return;
            }
            Err(err) => match telegram::classify(&err) {
                Failure::RetryAfter(d) => {
                    tracing::warn!(outbox_id = out.outbox_id, retry_after = ?d, "429 from Telegram");
                    d
                }
                Failure::Transient(reason) => {
                    let d = backoff.next_delay();
                    tracing::warn!(outbox_id = out.outbox_id, %reason, delay = ?d, "Bot API call failed; retrying");
                    d
                }
                Failure::Permanent(reason) => {
                    dead_letter(&ctx, &msg, &reason).await;
                    return;
                }
            },
        };
        ctx.stats.retries.fetch_add(1, Ordering::Relaxed);
        let _ = msg.ack_with(AckKind::Progress).await;
        tokio::select! {
            // Not acknowledged: redelivered after a restart.
            _ = ctx.cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn dead_letter(ctx: &Ctx, msg: &jetstream::Message, reason: &str) {
    tracing::error!(reason, subject = %msg.subject, "dead-lettering outbound message");
    let ok = topology::publish_dead_letter(
        &ctx.js,
        ctx.bot_id,
        "outbound",
        &msg.subject,
        msg.payload.clone(),
        reason,
    )
    .await;
    if ok {
        ctx.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = msg.ack().await {
            tracing::warn!(error = %e, "ack failed");
        }
    } else {
        tracing::error!("dead-letter publish failed; the message will be redelivered");
    }
}
