//! The emulated bot's state: chats and their transcripts, the update queue, the webhook and
//! the counters. One mutex guards it all; it is never held across an `.await`.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use courier_common::backoff::Backoff;
use courier_common::CancellationToken;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch, Notify};
use tokio::time::Instant;

use crate::faults::Faults;
use crate::limits::{LimitConfig, Limiter};

/// The emulated bot's username.
pub const BOT_USERNAME: &str = "courier_sandbox_bot";
/// The emulated bot's first name.
pub const BOT_FIRST_NAME: &str = "Courier Sandbox";
/// Telegram's limit on a text message, in UTF-16 code units.
pub const MAX_TEXT_LEN: usize = 4096;

/// First retry delay of a failed webhook delivery (doubles per failure of the same chat).
const RETRY_BASE: Duration = Duration::from_millis(100);
/// Largest retry delay of a failed webhook delivery.
const RETRY_CAP: Duration = Duration::from_secs(5);

/// Most entries `GET /sandbox/calls` keeps (the oldest are forgotten first).
pub const MAX_CALL_LOG: usize = 100_000;

/// Counters of the sandbox, as `GET /sandbox/stats` returns them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Stats {
    /// Updates created through the control API.
    pub updates_created: u64,
    /// Updates the webhook acknowledged with a 2xx.
    pub updates_delivered: u64,
    /// Messages users sent through the control API.
    pub messages_from_users: u64,
    /// Messages the bot sent (`sendMessage` successes).
    pub messages_from_bot: u64,
    /// Webhook deliveries that failed (non-2xx, timeout, connection error).
    pub webhook_failures: u64,
    /// Bot API calls answered with 429 (rate limits and injected 429s).
    pub responses_429: u64,
    /// Sending calls answered by an injected fault (error, 429 or drop).
    pub faults_injected: u64,
    /// Sending calls dropped (never answered) by fault injection.
    pub calls_dropped: u64,
    /// Messages the bot edited (`editMessageText` successes).
    pub messages_edited: u64,
    /// Messages the bot deleted (`deleteMessage` successes).
    pub messages_deleted: u64,
    /// Callback queries created by pressing inline buttons.
    pub callback_queries: u64,
    /// Callback queries the bot answered (`answerCallbackQuery` successes).
    pub callbacks_answered: u64,
    /// Chat actions the bot sent (`sendChatAction` successes).
    pub chat_actions: u64,
    /// Bot replies correlated with a user message that already had one (see
    /// `GET /sandbox/latency`).
    pub duplicate_replies: u64,
    /// Updates created and not delivered yet (including those being delivered).
    pub pending_updates: u64,
    /// Webhook deliveries in flight right now.
    pub deliveries_in_flight: u64,
    /// Chats known to the sandbox.
    pub chats: u64,
}

/// The type of a chat, as Telegram names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChatType {
    Private,
    Group,
    Supergroup,
}

impl ChatType {
    pub(crate) fn parse(raw: &str) -> Option<Self> {
        match raw {
            "private" => Some(Self::Private),
            "group" => Some(Self::Group),
            "supergroup" => Some(Self::Supergroup),
            _ => None,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Private => "private",
            Self::Group => "group",
            Self::Supergroup => "supergroup",
        }
    }
}

/// One line of a chat's transcript, as `GET /sandbox/chats/{id}/messages` returns it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TranscriptEntry {
    pub message_id: i64,
    pub from_bot: bool,
    pub text: String,
    /// The message's entities (bot messages: parsed from `parse_mode` markup or given as
    /// `entities`), as Bot API `MessageEntity` objects.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub entities: Vec<Value>,
    /// Unix time in seconds (Telegram's `date`).
    pub date: i64,
    /// Unix time in milliseconds: when the user's update was created, or when the bot's
    /// `sendMessage` was accepted.
    pub at_unix_ms: i64,
    /// The user who sent it (user messages).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_id: Option<i64>,
    /// The inline keyboard of a bot message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_markup: Option<Value>,
    /// Bot messages: the user message this reply is counted for (the chat's oldest user
    /// message without a reply, or the last one when all have one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<i64>,
    /// User messages: how many bot replies were counted for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replies: Option<u32>,
    /// User messages: milliseconds from the update's creation to its first reply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<f64>,
    /// Unix time of the last edit (bot messages).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub edit_date: Option<i64>,
    /// The message this one replies to, as Telegram's `reply_to_message` says
    /// (`reply_parameters` of a bot message).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to_message_id: Option<i64>,
    /// Deleted (`deleteMessage`): gone from the transcript and from every method; kept here
    /// so that message ids stay the transcript's positions.
    #[serde(skip)]
    pub deleted: bool,
    #[serde(skip)]
    created: Option<Instant>,
}

/// A chat the sandbox knows.
pub(crate) struct Chat {
    pub kind: ChatType,
    /// The Telegram `Chat` object.
    pub object: Value,
    /// Set when a group was upgraded to a supergroup: its new id.
    pub migrated_to: Option<i64>,
    pub transcript: Vec<TranscriptEntry>,
    /// User messages without a reply yet, oldest first (indexes into the transcript).
    unanswered: VecDeque<usize>,
    /// The user message the last reply was counted for.
    last_answered: Option<usize>,
}

/// Unix time now, in milliseconds.
pub(crate) fn now_unix_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl Chat {
    pub(crate) fn new(kind: ChatType, object: Value) -> Self {
        Self {
            kind,
            object,
            migrated_to: None,
            transcript: Vec::new(),
            unanswered: VecDeque::new(),
            last_answered: None,
        }
    }

    fn push(&mut self, from_bot: bool, text: &str) -> &mut TranscriptEntry {
        let at_unix_ms = now_unix_ms();
        self.transcript.push(TranscriptEntry {
            // Message ids are per chat, shared by the users and the bot, from 1.
            message_id: self.transcript.len() as i64 + 1,
            from_bot,
            text: text.to_owned(),
            entities: Vec::new(),
            date: at_unix_ms.div_euclid(1000),
            at_unix_ms,
            user_id: None,
            reply_markup: None,
            reply_to: None,
            replies: None,
            latency_ms: None,
            edit_date: None,
            reply_to_message_id: None,
            deleted: false,
            created: None,
        });
        self.transcript.last_mut().expect("just pushed")
    }

    /// Appends a user's message; it waits for its reply.
    pub(crate) fn append_user(&mut self, user_id: i64, text: &str) -> &TranscriptEntry {
        let index = self.transcript.len();
        let entry = self.push(false, text);
        entry.user_id = Some(user_id);
        entry.replies = Some(0);
        entry.created = Some(Instant::now());
        self.unanswered.push_back(index);
        &self.transcript[index]
    }

    /// Appends a bot message (replying to `reply_to_message_id`, if given) and counts it as
    /// the reply to the chat's oldest unanswered user message (the bot answers a chat in
    /// order); returns it and whether it was a duplicate (every user message already had its
    /// reply).
    pub(crate) fn append_bot(
        &mut self,
        text: &str,
        entities: Vec<Value>,
        reply_markup: Option<Value>,
        reply_to_message_id: Option<i64>,
    ) -> (&TranscriptEntry, bool) {
        let now = Instant::now();
        let (target, duplicate) = match self.unanswered.pop_front() {
            Some(i) => (Some(i), false),
            None => (self.last_answered, self.last_answered.is_some()),
        };
        if let Some(i) = target {
            self.last_answered = Some(i);
            let user = &mut self.transcript[i];
            user.replies = Some(user.replies.unwrap_or(0) + 1);
            if user.latency_ms.is_none() {
                if let Some(created) = user.created {
                    user.latency_ms = Some(now.duration_since(created).as_secs_f64() * 1000.0);
                }
            }
        }
        let reply_to = target.map(|i| self.transcript[i].message_id);
        let entry = self.push(true, text);
        entry.entities = entities;
        entry.reply_markup = reply_markup;
        entry.reply_to = reply_to;
        entry.reply_to_message_id = reply_to_message_id;
        (entry, duplicate)
    }

    /// A message of the chat by id (not a deleted one).
    pub(crate) fn message(&self, message_id: i64) -> Option<&TranscriptEntry> {
        usize::try_from(message_id.checked_sub(1)?)
            .ok()
            .and_then(|i| self.transcript.get(i))
            .filter(|e| !e.deleted)
    }

    /// A message of the chat by id (not a deleted one), to change it.
    pub(crate) fn message_mut(&mut self, message_id: i64) -> Option<&mut TranscriptEntry> {
        usize::try_from(message_id.checked_sub(1)?)
            .ok()
            .and_then(|i| self.transcript.get_mut(i))
            .filter(|e| !e.deleted)
    }

    /// The messages not deleted, oldest first: the transcript as the chat shows it.
    pub(crate) fn visible(&self) -> impl Iterator<Item = &TranscriptEntry> {
        self.transcript.iter().filter(|e| !e.deleted)
    }

    /// A message as a Telegram `Message` object; `bot` is the bot's `User`. A reply carries
    /// the message it replies to as `reply_to_message` (while that one is not deleted), which,
    /// as Telegram does, carries no `reply_to_message` of its own.
    pub(crate) fn message_object(&self, entry: &TranscriptEntry, bot: &Value) -> Value {
        let mut message = self.message_object_alone(entry, bot);
        if let Some(replied) = entry.reply_to_message_id.and_then(|id| self.message(id)) {
            message["reply_to_message"] = self.message_object_alone(replied, bot);
        }
        message
    }

    fn message_object_alone(&self, entry: &TranscriptEntry, bot: &Value) -> Value {
        let from = if entry.from_bot {
            bot.clone()
        } else {
            let mut from = json!({
                "id": entry.user_id.unwrap_or(0),
                "is_bot": false,
                "first_name": self.object.get("first_name").cloned().unwrap_or(json!("User")),
            });
            if self.kind != ChatType::Private {
                from["first_name"] = json!("User");
            }
            from
        };
        let mut message = json!({
            "message_id": entry.message_id,
            "from": from,
            "chat": self.object.clone(),
            "date": entry.date,
            "text": entry.text,
        });
        if !entry.entities.is_empty() {
            message["entities"] = json!(entry.entities);
        }
        if let Some(markup) = &entry.reply_markup {
            message["reply_markup"] = markup.clone();
        }
        if let Some(edit_date) = entry.edit_date {
            message["edit_date"] = json!(edit_date);
        }
        message
    }
}

/// One Bot API call to a chat, as `GET /sandbox/calls` lists it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallRecord {
    /// The method, as Telegram spells it (`sendMessage`, `editMessageText`, `deleteMessage`,
    /// `answerCallbackQuery`, `sendChatAction`).
    pub method: String,
    /// The `chat_id` parameter (0 when missing or not a number); for `answerCallbackQuery`,
    /// the chat of the message whose button was pressed (0 for an unknown query).
    pub chat_id: i64,
    /// When the sandbox decided the call (after any injected delay), Unix milliseconds.
    pub at_unix_ms: i64,
    /// The HTTP status answered; 0 for a call dropped by fault injection.
    pub status: u16,
    /// The `text` parameter (the notification of `answerCallbackQuery`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The message the call sent, edited or deleted (`answerCallbackQuery`: whose button was
    /// pressed), when it went through.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<i64>,
    /// `sendChatAction`'s `action`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// `answerCallbackQuery`'s `callback_query_id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_query_id: Option<String>,
}

/// A callback query created by pressing an inline button, as
/// `GET /sandbox/callbacks/{id}` shows it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Callback {
    pub id: String,
    pub chat_id: i64,
    pub message_id: i64,
    pub user_id: i64,
    pub data: String,
    /// The bot's answer, once it answered (`answerCallbackQuery`).
    pub answer: Option<CallbackAnswer>,
}

/// The bot's answer to a callback query.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CallbackAnswer {
    /// The notification (empty: none).
    pub text: String,
    pub show_alert: bool,
    pub at_unix_ms: i64,
}

/// Where updates go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Webhook {
    pub url: String,
    pub secret: Option<String>,
    pub max_connections: usize,
}

/// One webhook delivery to make.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub chat_id: i64,
    pub update_id: i64,
    pub body: Bytes,
    pub url: String,
    pub secret: Option<String>,
    /// How long to wait before sending it (the `delivery_jitter_ms` fault).
    pub hold: Duration,
}

struct Queued {
    update_id: i64,
    body: Bytes,
    in_flight: bool,
}

/// The undelivered updates of one chat. Up to `chat_in_flight` of its first updates are in
/// flight at once (one, as Telegram's server does, unless the fault says otherwise); a chat
/// that can start another is on the ready list (perhaps more than once: a stale entry is
/// skipped) unless it waits for its retry time.
#[derive(Default)]
struct ChatQueue {
    updates: VecDeque<Queued>,
    in_flight: usize,
    waiting: bool,
    backoff: Option<Backoff>,
}

impl ChatQueue {
    /// The index of the update to deliver next, if the chat may start one now: the first of
    /// its first `limit` updates not in flight.
    fn next_to_send(&self, limit: usize) -> Option<usize> {
        if self.waiting || self.in_flight >= limit {
            return None;
        }
        self.updates.iter().take(limit).position(|u| !u.in_flight)
    }
}

/// Everything mutable, behind one mutex.
#[derive(Default)]
pub(crate) struct Inner {
    pub chats: HashMap<i64, Chat>,
    last_update_id: i64,
    queues: HashMap<i64, ChatQueue>,
    ready: VecDeque<i64>,
    retry_at: BTreeSet<(Instant, i64)>,
    in_flight: usize,
    pending: usize,
    pub webhook: Option<Webhook>,
    /// Unix time and message of the last failed delivery.
    pub last_error: Option<(i64, String)>,
    pub stats: Stats,
    /// The update kinds to create (`allowed_updates` of setWebhook/getUpdates); `None`: all.
    pub allowed_updates: Option<Vec<String>>,
    pub faults: Faults,
    pub limiter: Limiter,
    /// The sending calls, oldest first.
    pub calls: VecDeque<CallRecord>,
    /// Bot commands by scope and language (`setMyCommands`).
    pub commands: HashMap<String, Value>,
    /// Callback queries, answered or not, by id.
    pub callbacks: HashMap<String, Callback>,
    last_callback_id: u64,
}

impl Inner {
    /// The next update id (they increase from 1).
    pub(crate) fn next_update_id(&mut self) -> i64 {
        self.last_update_id += 1;
        self.last_update_id
    }

    /// A new callback query id.
    pub(crate) fn next_callback_id(&mut self) -> String {
        self.last_callback_id += 1;
        format!("{}", 4_000_000_000_000_000_000u64 + self.last_callback_id)
    }

    /// Whether updates of this kind (`message`, `callback_query`) are created.
    pub(crate) fn allows(&self, kind: &str) -> bool {
        self.allowed_updates
            .as_ref()
            .is_none_or(|kinds| kinds.is_empty() || kinds.iter().any(|k| k == kind))
    }

    /// Records a sending call.
    pub(crate) fn log_call(&mut self, record: CallRecord) {
        if self.calls.len() >= MAX_CALL_LOG {
            self.calls.pop_front();
        }
        self.calls.push_back(record);
    }

    /// `getUpdates`: forgets the updates before `offset` (a negative offset keeps only the
    /// last `-offset`), then returns up to `limit` of the rest, oldest first.
    pub(crate) fn poll(&mut self, offset: Option<i64>, limit: usize) -> Vec<Bytes> {
        let confirm_below = match offset {
            Some(o) if o > 0 => Some(o),
            Some(o) if o < 0 => {
                let mut ids: Vec<i64> = self
                    .queues
                    .values()
                    .flat_map(|q| q.updates.iter().map(|u| u.update_id))
                    .collect();
                ids.sort_unstable();
                let keep = o.unsigned_abs().min(ids.len() as u64) as usize;
                ids.get(ids.len() - keep).copied().or(Some(i64::MAX))
            }
            _ => None,
        };
        if let Some(below) = confirm_below {
            let mut removed = 0;
            self.queues.retain(|_, q| {
                while q.updates.front().is_some_and(|u| u.update_id < below) {
                    q.updates.pop_front();
                    removed += 1;
                }
                !q.updates.is_empty() || q.in_flight > 0 || q.waiting
            });
            self.pending = self.pending.saturating_sub(removed);
        }
        let mut all: Vec<(i64, Bytes)> = self
            .queues
            .values()
            .flat_map(|q| q.updates.iter().map(|u| (u.update_id, u.body.clone())))
            .collect();
        all.sort_unstable_by_key(|(id, _)| *id);
        all.into_iter().take(limit).map(|(_, b)| b).collect()
    }

    /// Queues an update of a chat for delivery.
    pub(crate) fn enqueue(&mut self, chat_id: i64, update_id: i64, body: Bytes) {
        let limit = self.chat_limit();
        let q = self.queues.entry(chat_id).or_default();
        q.updates.push_back(Queued {
            update_id,
            body,
            in_flight: false,
        });
        // Ready now only if this update is the one to go next (otherwise the chat is on the
        // ready list already, or waits for a delivery or its retry).
        if q.next_to_send(limit) == Some(q.updates.len() - 1) {
            self.ready.push_back(chat_id);
        }
        self.pending += 1;
        self.stats.updates_created += 1;
    }

    /// Forgets every undelivered update (`drop_pending_updates`). Deliveries in flight finish,
    /// but their outcome no longer matters.
    pub(crate) fn drop_pending(&mut self) {
        self.ready.clear();
        self.retry_at.clear();
        self.queues.retain(|_, q| {
            q.updates.clear();
            q.waiting = false;
            q.in_flight > 0
        });
        self.pending = 0;
    }

    /// Moves the chats whose retry time has come to the ready list; returns the next retry time.
    pub(crate) fn promote_due(&mut self, now: Instant) -> Option<Instant> {
        let limit = self.chat_limit();
        while let Some(&(at, chat_id)) = self.retry_at.first() {
            if at > now {
                return Some(at);
            }
            self.retry_at.pop_first();
            if let Some(q) = self.queues.get_mut(&chat_id) {
                q.waiting = false;
                if q.next_to_send(limit).is_some() {
                    self.ready.push_back(chat_id);
                }
            }
        }
        None
    }

    /// Deliveries of one chat in flight at once (the `chat_in_flight` fault; 1 as Telegram).
    fn chat_limit(&self) -> usize {
        self.faults.chat_in_flight.max(1) as usize
    }

    /// Takes the deliveries to start now: the next update of ready chats, while the webhook's
    /// `max_connections` allows.
    pub(crate) fn take_ready(&mut self) -> Vec<Delivery> {
        let Some(webhook) = &self.webhook else {
            return Vec::new();
        };
        let limit = self.chat_limit();
        let mut out = Vec::new();
        while self.in_flight < webhook.max_connections {
            let Some(chat_id) = self.ready.pop_front() else {
                break;
            };
            let Some(q) = self.queues.get_mut(&chat_id) else {
                continue;
            };
            let Some(i) = q.next_to_send(limit) else {
                continue;
            };
            let next = &mut q.updates[i];
            next.in_flight = true;
            q.in_flight += 1;
            self.in_flight += 1;
            out.push(Delivery {
                chat_id,
                update_id: next.update_id,
                body: next.body.clone(),
                url: webhook.url.clone(),
                secret: webhook.secret.clone(),
                hold: self.faults.delivery_hold(rand::random::<f64>),
            });
            if q.next_to_send(limit).is_some() {
                self.ready.push_back(chat_id);
            }
        }
        out
    }

    /// Records the outcome of a delivery.
    pub(crate) fn complete(&mut self, chat_id: i64, update_id: i64, outcome: Result<(), String>) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let limit = self.chat_limit();
        let Some(q) = self.queues.get_mut(&chat_id) else {
            return;
        };
        q.in_flight = q.in_flight.saturating_sub(1);
        // Gone if the pending updates were dropped meanwhile.
        let at = q.updates.iter().position(|u| u.update_id == update_id);
        match outcome {
            Ok(()) => {
                self.stats.updates_delivered += 1;
                q.backoff = None;
                if let Some(i) = at {
                    q.updates.remove(i);
                    self.pending = self.pending.saturating_sub(1);
                }
            }
            Err(message) => {
                self.stats.webhook_failures += 1;
                tracing::debug!(chat_id, update_id, %message, "webhook delivery failed");
                self.last_error = Some((chrono::Utc::now().timestamp(), message));
                if let Some(i) = at {
                    q.updates[i].in_flight = false;
                    if !q.waiting {
                        let delay = q
                            .backoff
                            .get_or_insert_with(|| Backoff::new(RETRY_BASE, RETRY_CAP))
                            .next_delay();
                        q.waiting = true;
                        self.retry_at.insert((Instant::now() + delay, chat_id));
                    }
                }
            }
        }
        if q.updates.is_empty() && q.in_flight == 0 && !q.waiting {
            self.queues.remove(&chat_id);
        } else if q.next_to_send(limit).is_some() {
            self.ready.push_back(chat_id);
        }
    }

    /// Number of undelivered updates.
    pub(crate) fn pending(&self) -> usize {
        self.pending
    }

    /// A snapshot of the counters.
    pub(crate) fn stats(&self) -> Stats {
        Stats {
            pending_updates: self.pending as u64,
            deliveries_in_flight: self.in_flight as u64,
            chats: self.chats.len() as u64,
            ..self.stats.clone()
        }
    }
}

/// State shared by the HTTP handlers and the delivery loop.
pub(crate) struct Shared {
    /// The one token the sandbox accepts.
    pub token: String,
    /// The bot's id (the number before the colon of the token).
    pub bot_id: i64,
    inner: Mutex<Inner>,
    /// Wakes the delivery loop (updates queued, webhook changed).
    pub wake: Notify,
    /// Bumped when an update is queued or a getUpdates call starts (wakes long polls).
    pub updates: watch::Sender<u64>,
    /// The newest getUpdates call; an older one still waiting ends with 409.
    pub poll_generation: AtomicU64,
    /// Live events for the web page (`GET /sandbox/events`).
    pub events: broadcast::Sender<Value>,
    /// Cancelled when the sandbox stops (ends held calls).
    pub stop: CancellationToken,
    /// `GET /metrics`.
    pub metrics: crate::metrics::Metrics,
}

impl Shared {
    pub(crate) fn new(
        token: String,
        bot_id: i64,
        webhook: Option<Webhook>,
        limits: LimitConfig,
        faults: Faults,
        stop: CancellationToken,
    ) -> Self {
        Self {
            token,
            bot_id,
            inner: Mutex::new(Inner {
                webhook,
                faults,
                limiter: Limiter::new(limits),
                ..Inner::default()
            }),
            wake: Notify::new(),
            updates: watch::channel(0).0,
            poll_generation: AtomicU64::new(0),
            events: broadcast::channel(4096).0,
            stop,
            metrics: Default::default(),
        }
    }

    /// Sends a live event to the web pages listening, if any.
    pub(crate) fn emit(&self, event: Value) {
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(event);
        }
    }

    /// Wakes the delivery loop and long polls after an update was queued.
    pub(crate) fn updates_queued(&self) {
        self.wake.notify_one();
        self.updates.send_modify(|n| *n += 1);
    }

    /// Locks the state (a poisoned lock is still usable: every update of it is a few
    /// assignments that cannot leave it half-done in a way that matters).
    pub(crate) fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The bot as a Telegram `User`.
    pub(crate) fn bot_user(&self) -> Value {
        json!({
            "id": self.bot_id,
            "is_bot": true,
            "first_name": BOT_FIRST_NAME,
            "username": BOT_USERNAME,
        })
    }
}

/// Length of a text as Telegram counts it (UTF-16 code units).
pub(crate) fn utf16_len(text: &str) -> usize {
    text.encode_utf16().count()
}

/// The `bot_command` entity of a text starting with a command (`/start`, `/help@some_bot`).
pub(crate) fn command_entity(text: &str) -> Option<Value> {
    let rest = text.strip_prefix('/')?;
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let name_len = rest.find(|c: char| !is_word(c)).unwrap_or(rest.len());
    if name_len == 0 {
        return None;
    }
    let mut end = 1 + name_len;
    if let Some(mention) = text[end..].strip_prefix('@') {
        let user_len = mention.find(|c: char| !is_word(c)).unwrap_or(mention.len());
        if user_len > 0 {
            end += 1 + user_len;
        }
    }
    Some(json!({ "type": "bot_command", "offset": 0, "length": utf16_len(&text[..end]) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook(max: usize) -> Webhook {
        Webhook {
            url: "http://127.0.0.1:1/hook".into(),
            secret: None,
            max_connections: max,
        }
    }

    #[test]
    fn command_entities() {
        assert_eq!(
            command_entity("/start").unwrap(),
            json!({"type":"bot_command","offset":0,"length":6})
        );
        assert_eq!(
            command_entity("/help@courier_sandbox_bot now").unwrap()["length"],
            25
        );
        assert_eq!(command_entity("/echo hi").unwrap()["length"], 5);
        assert_eq!(command_entity("/"), None);
        assert_eq!(command_entity("/ x"), None);
        assert_eq!(command_entity("hello"), None);
    }

    #[test]
    fn utf16_counts_like_telegram() {
        assert_eq!(utf16_len("abc"), 3);
        assert_eq!(utf16_len("é"), 1);
        assert_eq!(utf16_len("😀"), 2);
    }

    #[test]
    fn one_in_flight_per_chat_and_order_kept() {
        let mut s = Inner {
            webhook: Some(webhook(10)),
            ..Inner::default()
        };
        for (chat, id) in [(1, 1), (1, 2), (2, 3), (1, 4)] {
            s.enqueue(chat, id, Bytes::new());
        }
        let started: Vec<_> = s
            .take_ready()
            .iter()
            .map(|d| (d.chat_id, d.update_id))
            .collect();
        assert_eq!(started, vec![(1, 1), (2, 3)]);
        assert!(s.take_ready().is_empty());
        s.complete(1, 1, Err("boom".into()));
        assert_eq!(s.stats().webhook_failures, 1);
        assert!(
            s.take_ready().is_empty(),
            "a failed chat waits for its retry time"
        );
        let later = Instant::now() + Duration::from_secs(10);
        assert_eq!(s.promote_due(later), None);
        let again: Vec<_> = s.take_ready().iter().map(|d| d.update_id).collect();
        assert_eq!(
            again,
            vec![1],
            "the failed update is retried before later ones"
        );
        s.complete(1, 1, Ok(()));
        s.complete(2, 3, Ok(()));
        let next: Vec<_> = s.take_ready().iter().map(|d| d.update_id).collect();
        assert_eq!(next, vec![2]);
        assert_eq!(s.pending(), 2);
        assert_eq!(s.stats().updates_delivered, 2);
    }

    #[test]
    fn max_connections_bounds_in_flight_and_drop_clears() {
        let mut s = Inner {
            webhook: Some(webhook(2)),
            ..Inner::default()
        };
        for chat in 1..=5 {
            s.enqueue(chat, chat, Bytes::new());
        }
        assert_eq!(s.take_ready().len(), 2);
        assert_eq!(s.stats().deliveries_in_flight, 2);
        s.drop_pending();
        assert_eq!(s.pending(), 0);
        s.complete(1, 1, Ok(()));
        s.complete(2, 2, Err("late".into()));
        assert!(s.take_ready().is_empty());
        assert_eq!(s.stats().deliveries_in_flight, 0);
    }

    #[test]
    fn a_chat_may_have_several_deliveries_in_flight_when_the_fault_says_so() {
        let mut s = Inner {
            webhook: Some(webhook(10)),
            ..Inner::default()
        };
        s.faults.chat_in_flight = 2;
        for id in 1..=4 {
            s.enqueue(1, id, Bytes::new());
        }
        let started: Vec<_> = s.take_ready().iter().map(|d| d.update_id).collect();
        assert_eq!(started, vec![1, 2], "two at once, the oldest first");
        assert!(s.take_ready().is_empty());
        s.complete(1, 2, Ok(()));
        let next: Vec<_> = s.take_ready().iter().map(|d| d.update_id).collect();
        assert_eq!(
            next,
            vec![3],
            "the second finished first: the third goes out"
        );
        s.complete(1, 1, Err("boom".into()));
        assert!(
            s.take_ready().is_empty(),
            "a failure holds the chat until its retry"
        );
        s.complete(1, 3, Ok(()));
        assert!(s.take_ready().is_empty());
        s.promote_due(Instant::now() + Duration::from_secs(10));
        let again: Vec<_> = s.take_ready().iter().map(|d| d.update_id).collect();
        assert_eq!(
            again,
            vec![1, 4],
            "the failed update again, with the next one"
        );
        s.complete(1, 1, Ok(()));
        s.complete(1, 4, Ok(()));
        assert_eq!(s.pending(), 0);
        assert_eq!(s.stats().updates_delivered, 4);
        assert!(s.queues.is_empty());
    }

    #[test]
    fn no_webhook_keeps_updates_queued() {
        let mut s = Inner::default();
        s.enqueue(7, 1, Bytes::new());
        assert!(s.take_ready().is_empty());
        s.webhook = Some(webhook(40));
        assert_eq!(s.take_ready().len(), 1);
    }
}
