//! The emulated bot's state: chats and their transcripts, the update queue, the webhook and
//! the counters. One mutex guards it all; it is never held across an `.await`.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use courier_common::backoff::Backoff;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio::time::Instant;

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

/// Counters of the sandbox, as `GET /sandbox/stats` returns them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Bot API calls answered with 429 (always 0: the sandbox does not rate-limit yet).
    pub responses_429: u64,
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

/// One line of a chat's transcript.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TranscriptEntry {
    pub message_id: i64,
    pub from_bot: bool,
    pub text: String,
    pub date: i64,
}

/// A chat the sandbox knows.
pub(crate) struct Chat {
    pub kind: ChatType,
    /// The Telegram `Chat` object.
    pub object: Value,
    last_message_id: i64,
    pub transcript: Vec<TranscriptEntry>,
}

impl Chat {
    pub(crate) fn new(kind: ChatType, object: Value) -> Self {
        Self {
            kind,
            object,
            last_message_id: 0,
            transcript: Vec::new(),
        }
    }

    /// Appends a message; message ids are per chat, shared by the users and the bot.
    pub(crate) fn append(&mut self, from_bot: bool, text: &str, date: i64) -> i64 {
        self.last_message_id += 1;
        self.transcript.push(TranscriptEntry {
            message_id: self.last_message_id,
            from_bot,
            text: text.to_owned(),
            date,
        });
        self.last_message_id
    }
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
}

struct Queued {
    update_id: i64,
    body: Bytes,
}

/// The undelivered updates of one chat. A chat with queued updates is in exactly one of three
/// places: the ready list, in flight, or waiting for its retry time.
#[derive(Default)]
struct ChatQueue {
    updates: VecDeque<Queued>,
    in_flight: bool,
    waiting: bool,
    backoff: Option<Backoff>,
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
}

impl Inner {
    /// The next update id (they increase from 1).
    pub(crate) fn next_update_id(&mut self) -> i64 {
        self.last_update_id += 1;
        self.last_update_id
    }

    /// Queues an update of a chat for delivery.
    pub(crate) fn enqueue(&mut self, chat_id: i64, update_id: i64, body: Bytes) {
        let q = self.queues.entry(chat_id).or_default();
        q.updates.push_back(Queued { update_id, body });
        if q.updates.len() == 1 && !q.in_flight && !q.waiting {
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
            q.in_flight
        });
        self.pending = 0;
    }

    /// Moves the chats whose retry time has come to the ready list; returns the next retry time.
    pub(crate) fn promote_due(&mut self, now: Instant) -> Option<Instant> {
        while let Some(&(at, chat_id)) = self.retry_at.first() {
            if at > now {
                return Some(at);
            }
            self.retry_at.pop_first();
            if let Some(q) = self.queues.get_mut(&chat_id) {
                q.waiting = false;
                if !q.updates.is_empty() && !q.in_flight {
                    self.ready.push_back(chat_id);
                }
            }
        }
        None
    }

    /// Takes the deliveries to start now: the head update of ready chats, while the webhook's
    /// `max_connections` allows.
    pub(crate) fn take_ready(&mut self) -> Vec<Delivery> {
        let Some(webhook) = &self.webhook else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while self.in_flight < webhook.max_connections {
            let Some(chat_id) = self.ready.pop_front() else {
                break;
            };
            let Some(q) = self.queues.get_mut(&chat_id) else {
                continue;
            };
            let Some(head) = q.updates.front() else {
                continue;
            };
            if q.in_flight || q.waiting {
                continue;
            }
            q.in_flight = true;
            self.in_flight += 1;
            out.push(Delivery {
                chat_id,
                update_id: head.update_id,
                body: head.body.clone(),
                url: webhook.url.clone(),
                secret: webhook.secret.clone(),
            });
        }
        out
    }

    /// Records the outcome of a delivery.
    pub(crate) fn complete(&mut self, chat_id: i64, update_id: i64, outcome: Result<(), String>) {
        self.in_flight = self.in_flight.saturating_sub(1);
        let Some(q) = self.queues.get_mut(&chat_id) else {
            return;
        };
        q.in_flight = false;
        match outcome {
            Ok(()) => {
                self.stats.updates_delivered += 1;
                q.backoff = None;
                if q.updates.front().is_some_and(|h| h.update_id == update_id) {
                    q.updates.pop_front();
                    self.pending = self.pending.saturating_sub(1);
                }
            }
            Err(message) => {
                self.stats.webhook_failures += 1;
                tracing::debug!(chat_id, update_id, %message, "webhook delivery failed");
                self.last_error = Some((chrono::Utc::now().timestamp(), message));
                if !q.updates.is_empty() {
                    let delay = q
                        .backoff
                        .get_or_insert_with(|| Backoff::new(RETRY_BASE, RETRY_CAP))
                        .next_delay();
                    q.waiting = true;
                    self.retry_at.insert((Instant::now() + delay, chat_id));
                }
            }
        }
        if !q.waiting {
            if q.updates.is_empty() {
                self.queues.remove(&chat_id);
            } else {
                self.ready.push_back(chat_id);
            }
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
}

impl Shared {
    pub(crate) fn new(token: String, bot_id: i64, webhook: Option<Webhook>) -> Self {
        Self {
            token,
            bot_id,
            inner: Mutex::new(Inner {
                webhook,
                ..Inner::default()
            }),
            wake: Notify::new(),
        }
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
    fn no_webhook_keeps_updates_queued() {
        let mut s = Inner::default();
        s.enqueue(7, 1, Bytes::new());
        assert!(s.take_ready().is_empty());
        s.webhook = Some(webhook(40));
        assert_eq!(s.take_ready().len(), 1);
    }
}
