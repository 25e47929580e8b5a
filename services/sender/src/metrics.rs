//! The sender's metrics (`docs/OPERATIONS.md`, *Metrics*): Bot API calls, waits on the limits,
//! messages by outcome, the breaker, the lease, the budget in use, the dead letters and the
//! pool.

use std::time::Duration;

use courier_common::metrics::{buckets, observe};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{
    counter::Counter, family::Family, gauge::Gauge, histogram::Histogram,
};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;

use crate::limits::Waited;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LimitLabel {
    limit: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

/// How an outgoing message ended (`courier_sender_messages_total{outcome}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageOutcome {
    /// Every part was accepted by Telegram.
    Sent,
    /// The ledger says it was sent already: skipped.
    Duplicate,
    /// Parked in `COURIER_DLQ`.
    DeadLettered,
    /// Its chat blocked the bot: skipped.
    SkippedBlocked,
}

/// The sender's metrics; one per sender, clones share the values.
#[derive(Clone, Debug)]
pub struct Metrics {
    calls: Family<CallLabels, Counter>,
    call_duration: Family<MethodLabel, Histogram>,
    limit_wait: Family<LimitLabel, Histogram>,
    wait_bot: Histogram,
    wait_chat: Histogram,
    wait_group: Histogram,
    end_to_end: Histogram,
    messages: Family<OutcomeLabel, Counter>,
    /// 1 while the circuit breaker is open (set at each scrape).
    pub breaker_open: Gauge,
    /// 1 while this process holds the active-sender lease (set at each scrape).
    pub lease_active: Gauge,
    /// The share of the bot's per-second budget used over the last second (set at each
    /// scrape).
    pub budget_used: Gauge<f64, AtomicU64>,
    /// Messages in `COURIER_DLQ` (read every few seconds).
    pub dlq_messages: Gauge,
    /// The database pool.
    pub db: courier_db::metrics::PoolMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        let limit_wait = Family::<LimitLabel, Histogram>::new_with_constructor(buckets::wait);
        let wait = |limit| limit_wait.get_or_create(&LimitLabel { limit }).clone();
        let (wait_bot, wait_chat, wait_group) = (wait("bot"), wait("chat"), wait("group"));
        Self {
            calls: Family::default(),
            call_duration: Family::new_with_constructor(buckets::latency),
            limit_wait,
            wait_bot,
            wait_chat,
            wait_group,
            end_to_end: buckets::end_to_end(),
            messages: Family::default(),
            breaker_open: Gauge::default(),
            lease_active: Gauge::default(),
            budget_used: Gauge::default(),
            dlq_messages: Gauge::default(),
            db: Default::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "courier_sender_calls",
            "Bot API calls by method and result (ok, no_op, rate_limited, server_error, permanent, network).",
            self.calls.clone(),
        );
        registry.register(
            "courier_sender_call_duration_seconds",
            "Bot API call duration, by method.",
            self.call_duration.clone(),
        );
        registry.register(
            "courier_sender_limit_wait_seconds",
            "Time a call waited on each limit (bot; chat: a private chat's, group: a group's).",
            self.limit_wait.clone(),
        );
        registry.register(
            "courier_sender_end_to_end_seconds",
            "From the webhook's receipt at ingress to the Bot API's answer for the reply.",
            self.end_to_end.clone(),
        );
        registry.register(
            "courier_sender_messages",
            "Outgoing messages by outcome (sent, duplicate, dead_lettered, skipped_blocked).",
            self.messages.clone(),
        );
        registry.register(
            "courier_sender_breaker_open",
            "1 while the circuit breaker is open.",
            self.breaker_open.clone(),
        );
        registry.register(
            "courier_sender_lease_active",
            "1 while this process holds the active-sender lease.",
            self.lease_active.clone(),
        );
        registry.register(
            "courier_sender_budget_used_ratio",
            "Share of the bot-wide per-second budget used over the last second (0 to 1).",
            self.budget_used.clone(),
        );
        registry.register(
            "courier_dlq_messages",
            "Messages in the COURIER_DLQ stream.",
            self.dlq_messages.clone(),
        );
        self.db.register(registry);
    }

    /// A Bot API call to `method` ended with `result` (`ok` or
    /// [`crate::telegram::call_result`]) after `took`.
    pub fn call(&self, method: &'static str, result: &'static str, took: Duration) {
        self.calls
            .get_or_create(&CallLabels { method, result })
            .inc();
        observe(
            &self.call_duration.get_or_create(&MethodLabel { method }),
            took,
        );
    }

    /// A call waited this long for the limits: for the bot's, and for `chat`'s when it took
    /// a chat's budget (a negative chat id is a group; `None`: the bot's budget only).
    pub fn waited(&self, chat: Option<i64>, waited: Waited) {
        observe(&self.wait_bot, waited.bot);
        let Some(chat) = chat else {
            return;
        };
        let chat_limit = if chat < 0 {
            &self.wait_group
        } else {
            &self.wait_chat
        };
        observe(chat_limit, waited.chat);
    }

    /// An outgoing message ended.
    pub fn message(&self, outcome: MessageOutcome) {
        let outcome = match outcome {
            MessageOutcome::Sent => "sent",
            MessageOutcome::Duplicate => "duplicate",
            MessageOutcome::DeadLettered => "dead_lettered",
            MessageOutcome::SkippedBlocked => "skipped_blocked",
        };
        self.messages.get_or_create(&OutcomeLabel { outcome }).inc();
    }

    /// The time from the webhook's receipt at ingress to the Bot API's answer for the reply.
    pub fn observe_end_to_end(&self, age: Duration) {
        observe(&self.end_to_end, age);
    }
}
