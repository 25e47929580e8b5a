//! Publishing the outbox: right after commit on the hot path, and by a relay that sweeps what a
//! crash or an outage left behind.
//!
//! Each row is published to `courier.outbound.<bot>.<chat>` with `Nats-Msg-Id =
//! out:<bot>:<id>` ([`topology::outbound_msg_id`]), so a row published twice (live and by the
//! relay, or by two workers) is stored once by JetStream inside its duplicate window. Rows are
//! marked published in batches by a background task, off the hot path.
//!
//! **A chat's rows are published in id order, each only after JetStream acknowledged every
//! earlier row of the chat.** [`publish`] sends a chat's rows one at a time and stops at the
//! first failure; its callers pass every unpublished row of the chat, oldest first: the hot
//! path those its transaction read under the chat's lock (`store::apply`), the relay whole
//! chats ([`store::unpublished`]). Rows not passed are marked published, so stored. A chat's
//! ids grow in commit order (its transactions are serialized, and ids are drawn at insert). So
//! whoever publishes row `n`, every earlier row of the chat is already in the stream: the
//! stream, and with it the sender, holds a chat's replies in commit order, however many
//! publishers race and whatever failed before. Publishers need no lock between them: a second
//! copy is dropped as a duplicate (after the window, the sender's ledger skips it).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use courier_common::{topology, trace, trace::TraceParent, CancellationToken};
use courier_proto::v1::OutboundMessage;
use futures::future::join_all;
use sqlx::PgPool;
use tracing::Instrument;

use crate::store::{self, OutboxRow};

/// Publishes rows and returns the ids JetStream acknowledged. Chats are published
/// concurrently; within a chat, rows go in id order, one at a time, each after the previous
/// one's ack, and the chat stops at its first failure (its later rows stay unpublished, for
/// the chat's next reply or the relay). `rows` must hold, for each chat, every unpublished row
/// of the chat from its oldest one on (see the module documentation).
pub async fn publish(js: &jetstream::Context, bot_id: i64, rows: &[OutboxRow]) -> Vec<i64> {
    let mut chats: BTreeMap<i64, Vec<&OutboxRow>> = BTreeMap::new();
    for row in rows {
        chats.entry(row.chat_id).or_default().push(row);
    }
    let chats = chats.into_values().map(|mut rows| async move {
        rows.sort_by_key(|r| r.id);
        let mut acked = Vec::with_capacity(rows.len());
        for row in rows {
            match publish_one(js, bot_id, row).await {
                Ok(()) => acked.push(row.id),
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        outbox_id = row.id,
                        chat_id = row.chat_id,
                        "outbox publish failed; the chat's next reply or the relay retries it"
                    );
                    break;
                }
            }
        }
        acked
    });
    join_all(chats).await.into_iter().flatten().collect()
}

/// Publishes one row. Its span (`outbox_publish`) continues the trace of the update that
/// wrote the row (stored with it), whoever publishes it: the transaction's own worker right
/// after commit, or the relay, maybe in another process, after a crash.
async fn publish_one(js: &jetstream::Context, bot_id: i64, row: &OutboxRow) -> Result<(), String> {
    let span = tracing::info_span!(
        "outbox_publish",
        otel.kind = "producer",
        outbox_id = row.id,
        chat_id = row.chat_id,
        stream_seq = tracing::field::Empty,
    );
    if let Some(parent) = row.traceparent.as_deref().and_then(TraceParent::parse) {
        parent.adopt(&span);
    }
    let header = OutboundMessage {
        outbox_id: row.id,
        bot_id,
        chat_id: row.chat_id,
        origin_update_id: row.origin_update_id,
        created_at_unix_ms: row.created_at.timestamp_millis(),
        origin_received_at_unix_ms: row.origin_received_at.map_or(0, |t| t.timestamp_millis()),
        action: None,
    };
    let payload =
        crate::effects::envelope(header, &row.text, &row.parse_mode, row.action.as_deref());
    let mut publish = PublishMessage::build();
    // This span's context; or, when this process does not trace, the row's own, passed on
    // as it is, so that the sender still continues the update's trace.
    let headers = trace::headers(&span).or_else(|| {
        row.traceparent.as_deref().map(|tp| {
            let mut h = async_nats::HeaderMap::new();
            h.insert(trace::TRACEPARENT, tp);
            h
        })
    });
    if let Some(headers) = headers {
        publish = publish.headers(headers);
    }
    let publish = publish
        .message_id(topology::outbound_msg_id(bot_id, row.id))
        .payload(payload.into());
    let subject = topology::outbound_subject(bot_id, row.chat_id);
    let ack = async {
        let ack = js
            .send_publish(subject, publish)
            .await
            .map_err(|e| e.to_string())?;
        ack.await.map_err(|e| e.to_string())
    }
    .instrument(span.clone())
    .await?;
    span.record("stream_seq", ack.sequence);
    Ok(())
}

/// Published rows waiting to be marked (`outbox.published_at`).
///
/// Marking costs no transaction of its own while updates are applied: each update's
/// transaction takes the pending marks and writes them in its last statement
/// (`store::apply`), so they commit with it. A mark taken by a transaction that does not
/// commit is put back. Only when no update comes along within [`PIGGYBACK_GRACE`] does the
/// marker task write them itself, in one statement. A mark never written (a crash) only means
/// the relay republishes the row after its grace, and JetStream drops the copy inside its
/// duplicate window (after it, the sender's ledger skips it).
#[derive(Debug, Default)]
pub struct Marks {
    pending: std::sync::Mutex<Vec<i64>>,
    added: tokio::sync::Notify,
}

/// How long published rows wait for an update's transaction to carry their marks before the
/// marker task writes them itself.
pub const PIGGYBACK_GRACE: Duration = Duration::from_millis(25);

/// Most marks one statement writes.
pub const MAX_MARKS: usize = 1000;

impl Marks {
    /// Rows just published.
    pub fn add(&self, ids: Vec<i64>) {
        if ids.is_empty() {
            return;
        }
        self.lock().extend(ids);
        self.added.notify_one();
    }

    /// Takes up to [`MAX_MARKS`] pending marks for a transaction to write.
    pub fn take(&self) -> Vec<i64> {
        let mut pending = self.lock();
        let n = pending.len().min(MAX_MARKS);
        pending.drain(..n).collect()
    }

    /// Gives back marks a transaction took but did not commit.
    pub fn put_back(&self, ids: Vec<i64>) {
        self.add(ids);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<i64>> {
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Starts the marker task: it writes the marks no update's transaction took within
/// [`PIGGYBACK_GRACE`], and ends (after a last write) once it holds the only reference to
/// `marks`.
pub fn spawn_marker(pool: PgPool, marks: Arc<Marks>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let last = tokio::select! {
                _ = marks.added.notified() => false,
                _ = tokio::time::sleep(Duration::from_millis(500)) => Arc::strong_count(&marks) == 1,
            };
            tokio::time::sleep(PIGGYBACK_GRACE).await;
            loop {
                let ids = marks.take();
                if ids.is_empty() {
                    break;
                }
                if let Err(e) = store::mark_published(&pool, &ids).await {
                    // Not lost: the relay republishes unmarked rows, and JetStream drops the
                    // duplicate inside its window.
                    tracing::warn!(error = %e, count = ids.len(), "could not mark outbox rows published");
                    break;
                }
            }
            if last {
                return;
            }
        }
    })
}

/// Settings of the relay.
#[derive(Debug, Clone, Copy)]
pub struct RelaySettings {
    /// Time between sweeps.
    pub interval: Duration,
    /// Rows younger than this are left to the live path.
    pub grace: Duration,
}

/// Sweeps the outbox for rows a crash or an outage left unpublished, until `cancel` fires;
/// counts what it published in `stats`.
pub async fn relay(
    pool: PgPool,
    js: jetstream::Context,
    bot_id: i64,
    settings: RelaySettings,
    stats: Arc<crate::Stats>,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        match sweep(&pool, &js, bot_id, settings.grace).await {
            Ok(0) => {}
            Ok(n) => {
                stats.outbox_published.inc_by(n as u64);
                stats.outbox_republished.inc_by(n as u64);
                tracing::info!(count = n, "relay republished outbox rows");
            }
            Err(e) => tracing::warn!(error = %e, "outbox relay sweep failed"),
        }
    }
}

/// One sweep; returns how many rows were published.
///
/// Takes no row locks: two relays (or a relay and the hot path) publishing the same chat each
/// keep its order (see the module documentation) and JetStream drops the second copies.
pub async fn sweep(
    pool: &PgPool,
    js: &jetstream::Context,
    bot_id: i64,
    grace: Duration,
) -> Result<usize, store::StoreError> {
    let rows = store::unpublished(pool, bot_id, grace.as_secs_f64(), 500).await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let ids = publish(js, bot_id, &rows).await;
    store::mark_published(pool, &ids).await?;
    Ok(ids.len())
}
