//! A rig for the sender's tests: a real nats-server, a fresh PostgreSQL database, the sandbox
//! with Telegram's rate limits on, and one or more senders, without ingress and worker. Tests
//! feed the sender directly by publishing `OutboundMessage`s to `courier.outbound.<bot>.<chat>`,
//! which is faster and more deterministic than going through the whole bot.

use std::time::Duration;

use anyhow::Result;
use async_nats::jetstream::{self, message::PublishMessage};
use courier_common::{
    config::{NatsArgs, SecretArgs},
    topology, CancellationToken,
};
use courier_proto::{
    v1::{outbound_message::Action, OutboundMessage, SendMessage},
    Message as _,
};
use futures::{stream, StreamExt, TryStreamExt};
use serde::Deserialize;

use crate::{NatsServer, Postgres, TOKEN};

/// One call to a chat the sandbox saw (`GET /sandbox/calls`).
#[derive(Debug, Clone, Deserialize)]
pub struct Call {
    /// `sendMessage`, `editMessageText`, `deleteMessage`, `answerCallbackQuery`,
    /// `sendChatAction`.
    pub method: String,
    /// The chat.
    pub chat_id: i64,
    /// When the sandbox decided it, Unix milliseconds.
    pub at_unix_ms: i64,
    /// The status answered (0: dropped).
    pub status: u16,
    /// The text.
    #[serde(default)]
    pub text: Option<String>,
    /// The message sent, edited or deleted (whose button was pressed, for a callback answer).
    #[serde(default)]
    pub message_id: Option<i64>,
    /// `sendChatAction`'s action.
    #[serde(default)]
    pub action: Option<String>,
    /// `answerCallbackQuery`'s query id.
    #[serde(default)]
    pub callback_query_id: Option<String>,
}

/// A running sender and its stop switch.
pub struct RunningSender {
    /// The sender.
    pub sender: courier_sender::Sender,
    /// Cancel to stop it gracefully.
    pub cancel: CancellationToken,
}

impl RunningSender {
    /// Stops it gracefully and waits until it exited.
    pub async fn stop(self) -> Result<()> {
        self.cancel.cancel();
        self.sender.wait().await?;
        Ok(())
    }
}

/// NATS, PostgreSQL, the sandbox (rate limits on, no webhook) and a JetStream client.
pub struct SenderRig {
    /// The NATS server.
    pub nats: NatsServer,
    /// The test's database.
    pub pg: Postgres,
    /// A pool on it, for assertions.
    pub db: sqlx::PgPool,
    /// HTTP client for the sandbox.
    pub http: reqwest::Client,
    /// JetStream, for publishing.
    pub js: jetstream::Context,
    sandbox: courier_sandbox::Sandbox,
    sandbox_cancel: CancellationToken,
}

impl Drop for SenderRig {
    fn drop(&mut self) {
        self.sandbox_cancel.cancel();
    }
}

impl SenderRig {
    /// Starts the infrastructure and the sandbox; senders are started with
    /// [`start_sender`](Self::start_sender).
    pub async fn start() -> Result<Self> {
        if std::env::var_os("COURIER_TEST_LOG").is_some() {
            let _ = courier_common::telemetry::init("courier-tests");
        }
        let nats = NatsServer::start().await?;
        let pg = Postgres::fresh().await?;
        let mut config = courier_sandbox::Config::dev();
        config.secrets = SecretArgs {
            bot_token: Some(TOKEN.into()),
            dev: false,
        };
        config.webhook_url = None;
        config.rate_limits = true;
        let sandbox_cancel = CancellationToken::new();
        let sandbox = courier_sandbox::spawn(config, sandbox_cancel.clone()).await?;
        let js = jetstream::new(async_nats::connect(nats.url()).await?);
        topology::ensure_streams(&js, courier_common::partition::DEFAULT_PARTITIONS).await?;
        Ok(Self {
            db: sqlx::postgres::PgPoolOptions::new()
                .max_connections(4)
                .connect_lazy(pg.url())?,
            http: reqwest::Client::new(),
            js,
            nats,
            pg,
            sandbox,
            sandbox_cancel,
        })
    }

    /// The bot's id.
    pub fn bot_id(&self) -> i64 {
        TOKEN.split(':').next().unwrap().parse().unwrap()
    }

    /// The sandbox's base URL.
    pub fn sandbox_url(&self) -> String {
        self.sandbox.url()
    }

    /// A sender configuration for this rig (Telegram's default budgets).
    pub fn sender_config(&self) -> courier_sender::Config {
        courier_sender::Config {
            api_url: self.sandbox.url().parse().expect("sandbox url"),
            request_timeout: Duration::from_secs(5),
            health_addr: ([127, 0, 0, 1], 0).into(),
            max_lanes: 256,
            max_ack_pending: 4096,
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
            nats: NatsArgs {
                nats_url: self.nats.url(),
                partitions: courier_common::partition::DEFAULT_PARTITIONS,
            },
            secrets: SecretArgs {
                bot_token: Some(TOKEN.into()),
                dev: false,
            },
        }
    }

    /// Starts a sender with `config`.
    pub async fn start_sender_with(&self, config: courier_sender::Config) -> Result<RunningSender> {
        let cancel = CancellationToken::new();
        let sender = courier_sender::spawn(config, cancel.clone()).await?;
        Ok(RunningSender { sender, cancel })
    }

    /// Starts a sender with the rig's configuration.
    pub async fn start_sender(&self) -> Result<RunningSender> {
        self.start_sender_with(self.sender_config()).await
    }

    /// Creates chats in the sandbox (a user writes in each), so that sending to them works.
    /// Negative ids become groups.
    pub async fn create_chats(&self, chats: impl IntoIterator<Item = i64>) -> Result<()> {
        let url = format!("{}/sandbox/messages", self.sandbox_url());
        stream::iter(chats)
            .map(|chat| {
                let (http, url) = (self.http.clone(), url.clone());
                async move {
                    let user = chat.abs();
                    let chat_type = if chat < 0 { "group" } else { "private" };
                    http.post(&url)
                        .json(&serde_json::json!({
                            "chat_id": chat, "user_id": user, "first_name": format!("U{user}"),
                            "text": "hi", "chat_type": chat_type,
                        }))
                        .send()
                        .await?
                        .error_for_status()?;
                    anyhow::Ok(())
                }
            })
            .buffer_unordered(16)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Publishes an outbound message as the worker would (`Nats-Msg-Id = out:<outbox_id>`).
    pub async fn publish(&self, chat: i64, outbox_id: i64, text: &str) -> Result<()> {
        let msg = OutboundMessage {
            outbox_id,
            bot_id: self.bot_id(),
            chat_id: chat,
            origin_update_id: 0,
            created_at_unix_ms: 0,
            origin_received_at_unix_ms: 0,
            action: Some(Action::Send(SendMessage {
                text: text.to_owned(),
                parse_mode: String::new(),
                ..Default::default()
            })),
        };
        self.js
            .send_publish(
                topology::outbound_subject(self.bot_id(), chat),
                PublishMessage::build()
                    .message_id(topology::outbound_msg_id(self.bot_id(), outbox_id))
                    .payload(msg.encode_to_vec().into()),
            )
            .await?
            .await?;
        Ok(())
    }

    /// Publishes an outbound message with `action` as the worker would
    /// (`Nats-Msg-Id = out:<bot>:<outbox_id>`).
    pub async fn publish_action(&self, chat: i64, outbox_id: i64, action: Action) -> Result<()> {
        let msg_id = topology::outbound_msg_id(self.bot_id(), outbox_id);
        self.publish_action_as(chat, outbox_id, action, &msg_id)
            .await
    }

    /// Publishes an outbound message with `action` under the `Nats-Msg-Id` given: with
    /// another id than an earlier copy, the stream keeps both (as after the duplicate window,
    /// or the relay republishing a row a crashed worker never marked).
    pub async fn publish_action_as(
        &self,
        chat: i64,
        outbox_id: i64,
        action: Action,
        msg_id: &str,
    ) -> Result<()> {
        let msg = OutboundMessage {
            outbox_id,
            bot_id: self.bot_id(),
            chat_id: chat,
            origin_update_id: 0,
            created_at_unix_ms: 0,
            origin_received_at_unix_ms: 0,
            action: Some(action),
        };
        let ack = self
            .js
            .send_publish(
                topology::outbound_subject(self.bot_id(), chat),
                PublishMessage::build()
                    .message_id(msg_id)
                    .payload(msg.encode_to_vec().into()),
            )
            .await?
            .await?;
        anyhow::ensure!(!ack.duplicate, "{msg_id} was taken for a duplicate");
        Ok(())
    }

    /// Publishes many messages (in the given order), pipelining the acks.
    pub async fn publish_all(&self, msgs: &[(i64, i64, String)]) -> Result<()> {
        let mut acks = Vec::with_capacity(msgs.len());
        for (chat, outbox_id, text) in msgs {
            let msg = OutboundMessage {
                outbox_id: *outbox_id,
                bot_id: self.bot_id(),
                chat_id: *chat,
                origin_update_id: 0,
                created_at_unix_ms: 0,
                origin_received_at_unix_ms: 0,
                action: Some(Action::Send(SendMessage {
                    text: text.clone(),
                    parse_mode: String::new(),
                    ..Default::default()
                })),
            };
            acks.push(
                self.js
                    .send_publish(
                        topology::outbound_subject(self.bot_id(), *chat),
                        PublishMessage::build()
                            .message_id(topology::outbound_msg_id(self.bot_id(), *outbox_id))
                            .payload(msg.encode_to_vec().into()),
                    )
                    .await?,
            );
            // Bounded pipelining: the client limits publish acks in flight.
            if acks.len() >= 500 {
                for ack in acks.drain(..) {
                    ack.await?;
                }
            }
        }
        for ack in acks {
            ack.await?;
        }
        Ok(())
    }

    /// Sets faults (`POST /sandbox/faults`).
    pub async fn faults(&self, body: serde_json::Value) -> Result<()> {
        self.http
            .post(format!("{}/sandbox/faults", self.sandbox_url()))
            .json(&body)
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// Clears faults.
    pub async fn clear_faults(&self) -> Result<()> {
        self.http
            .delete(format!("{}/sandbox/faults", self.sandbox_url()))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// Every sending call so far, in arrival order.
    pub async fn calls(&self) -> Result<Vec<Call>> {
        Ok(self
            .http
            .get(format!("{}/sandbox/calls", self.sandbox_url()))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// Forgets the calls so far.
    pub async fn clear_calls(&self) -> Result<()> {
        self.http
            .delete(format!("{}/sandbox/calls", self.sandbox_url()))
            .send()
            .await?
            .error_for_status()?;
        Ok(())
    }

    /// The sandbox's counters.
    pub async fn stats(&self) -> Result<serde_json::Value> {
        Ok(self
            .http
            .get(format!("{}/sandbox/stats", self.sandbox_url()))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// The texts the bot wrote in a chat, in order.
    pub async fn bot_texts(&self, chat: i64) -> Result<Vec<String>> {
        let lines: Vec<crate::Line> = self
            .http
            .get(format!(
                "{}/sandbox/chats/{chat}/messages",
                self.sandbox_url()
            ))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(lines
            .into_iter()
            .filter(|l| l.from_bot)
            .map(|l| l.text)
            .collect())
    }

    /// The chat's transcript as the sandbox shows it (deleted messages left out), each
    /// message as the sandbox's JSON (`message_id`, `text`, `reply_markup`,
    /// `reply_to_message_id`, `edit_date`, …).
    pub async fn transcript(&self, chat: i64) -> Result<Vec<serde_json::Value>> {
        Ok(self
            .http
            .get(format!(
                "{}/sandbox/chats/{chat}/messages",
                self.sandbox_url()
            ))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// The user of a private chat presses the inline button with `data` under `message_id`;
    /// returns the callback query's id.
    pub async fn press(&self, chat: i64, message_id: i64, data: &str) -> Result<String> {
        let pressed: serde_json::Value = self
            .http
            .post(format!("{}/sandbox/callbacks", self.sandbox_url()))
            .json(&serde_json::json!({
                "chat_id": chat, "message_id": message_id, "user_id": chat.abs(), "data": data,
            }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        pressed["callback_query_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("no callback query id in {pressed}"))
    }

    /// A callback query and, once the bot answered it, its `answer` (`GET
    /// /sandbox/callbacks/{id}`).
    pub async fn callback(&self, id: &str) -> Result<serde_json::Value> {
        Ok(self
            .http
            .get(format!("{}/sandbox/callbacks/{id}", self.sandbox_url()))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// The dead letters of the outbound stage, oldest first: each one's reason
    /// (`Courier-Dlq-Reason`) and the message.
    pub async fn dead_letter_messages(&self) -> Result<Vec<(String, OutboundMessage)>> {
        let mut stream = self.js.get_stream(topology::DLQ_STREAM).await?;
        let (messages, first, last) = {
            let state = &stream.info().await?.state;
            (state.messages, state.first_sequence, state.last_sequence)
        };
        let mut out = Vec::new();
        if messages == 0 {
            return Ok(out);
        }
        for seq in first..=last {
            let Ok(m) = stream.get_raw_message(seq).await else {
                continue;
            };
            let reason = m
                .headers
                .get(topology::DLQ_REASON_HEADER)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default();
            out.push((reason, OutboundMessage::decode(m.payload)?));
        }
        Ok(out)
    }

    /// Messages in the dead-letter stream.
    pub async fn dead_letters(&self) -> Result<u64> {
        let mut s = self.js.get_stream(topology::DLQ_STREAM).await?;
        Ok(s.info().await?.state.messages)
    }

    /// Messages the sender's consumer has not acknowledged yet (pending plus in flight).
    pub async fn unacked(&self) -> Result<u64> {
        let stream = self.js.get_stream(topology::OUTBOUND_STREAM).await?;
        let mut consumer: jetstream::consumer::PullConsumer = stream
            .get_consumer(&courier_sender::consumer_name(self.bot_id()))
            .await
            .map_err(|e| anyhow::anyhow!("the sender's consumer: {e}"))?;
        let info = consumer.info().await?;
        Ok(info.num_pending + info.num_ack_pending as u64)
    }
}

/// The largest number of calls in any window of `window_ms` (by the sandbox's clock).
pub fn max_in_window(at_ms: &[i64], window_ms: i64) -> usize {
    let mut sorted = at_ms.to_vec();
    sorted.sort_unstable();
    let mut best = 0;
    let mut lo = 0;
    for hi in 0..sorted.len() {
        while sorted[hi] - sorted[lo] >= window_ms {
            lo += 1;
        }
        best = best.max(hi - lo + 1);
    }
    best
}
