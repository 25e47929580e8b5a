//! Applying one delivered update: decode, classify, order guard, transaction, outbox, ack
//! policy, retries and dead letters.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use bytes::Bytes;
use courier_bot_api::Bot;
use courier_common::{backoff::Backoff, topology, trace, trace::TraceParent, CancellationToken};
use courier_proto::{v1::InboundUpdate, Message as _};
use sqlx::PgPool;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::epoch::{Epoch, StreamEpoch};
use crate::outbox;
use crate::store::{self, Applied, DeadLetterStart, NextOnSubject, StoreError, UpdateRef};
use crate::Stats;

/// One update as the stream holds it.
#[derive(Debug, Clone)]
pub struct Delivered {
    /// Its stream sequence.
    pub seq: u64,
    /// Its subject (`courier.updates.<bot>.<partition>.<chat>`).
    pub subject: String,
    /// The `InboundUpdate` envelope.
    pub payload: Bytes,
    /// When the stream stored it (nanoseconds since the Unix epoch), if known: a message
    /// stored before the current stream was created comes from a deleted one.
    pub stored_at_ns: Option<i64>,
    /// The stream sequence of its chat's previous message, when the partition's deliveries
    /// tell it for certain (`deliveries::Tracker`): then the order guard need not ask the
    /// stream once that one is applied.
    pub prev_on_subject: Option<u64>,
}

/// How processing an update ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Applied, skipped as a duplicate or ignored, or parked in the dead-letter stream: ack it.
    Done,
    /// Given up because the worker is shutting down: do not ack (JetStream redelivers it).
    Abandoned,
    /// It came from a stream that was deleted since (its sequence means nothing in the new
    /// one): neither applied nor acked, since an ack would reach the new stream's consumer of
    /// the same name and could settle the new message at that sequence.
    Stale,
}

/// How long handing an update back (a nak) may take: NATS may be gone, and a partition's
/// release must not wait for it (JetStream redelivers after the ack wait anyway).
pub(crate) const HAND_BACK_TIMEOUT: Duration = Duration::from_secs(2);

/// Applies updates with the bot `B`. A worker builds one, and each partition works with a
/// copy bound to the partition's own cancellation ([`Applier::for_partition`]).
pub struct Applier<B: Bot> {
    /// The bot that reads the updates and decides what they do.
    pub(crate) bot: Arc<B>,
    pub(crate) bot_id: i64,
    pub(crate) pool: PgPool,
    pub(crate) js: jetstream::Context,
    pub(crate) updates: jetstream::stream::Stream,
    pub(crate) epoch: Arc<StreamEpoch>,
    pub(crate) max_attempts: u32,
    pub(crate) flood: store::FloodBudget,
    pub(crate) marks: Arc<outbox::Marks>,
    /// Group commit (`None`: every update in its own transaction).
    pub(crate) group: Option<crate::group::Group<B>>,
    pub(crate) stats: Arc<Stats>,
    pub(crate) cancel: CancellationToken,
    pub(crate) permits: Arc<Semaphore>,
}

impl<B: Bot> Clone for Applier<B> {
    fn clone(&self) -> Self {
        Self {
            bot: self.bot.clone(),
            bot_id: self.bot_id,
            pool: self.pool.clone(),
            js: self.js.clone(),
            updates: self.updates.clone(),
            epoch: self.epoch.clone(),
            max_attempts: self.max_attempts,
            flood: self.flood,
            marks: self.marks.clone(),
            group: self.group.clone(),
            stats: self.stats.clone(),
            cancel: self.cancel.clone(),
            permits: self.permits.clone(),
        }
    }
}

/// Naks a message (redelivered at once), giving up after [`HAND_BACK_TIMEOUT`]: without NATS
/// it is redelivered after the ack wait.
pub(crate) async fn hand_back(msg: &jetstream::Message) {
    match tokio::time::timeout(HAND_BACK_TIMEOUT, msg.ack_with(AckKind::Nak(None))).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "nak failed; redelivered after the ack wait"),
        Err(_) => tracing::debug!("nak timed out; redelivered after the ack wait"),
    }
}

/// The span of one update in the worker (`update`; `earlier_update` for an earlier update of
/// the chat applied first). Its fields are filled in as they become known.
fn update_span(name: &'static str, seq: u64) -> tracing::Span {
    tracing::info_span!(
        "update",
        otel.name = name,
        otel.kind = "consumer",
        bot_id = tracing::field::Empty,
        update_id = tracing::field::Empty,
        chat_id = tracing::field::Empty,
        partition = tracing::field::Empty,
        stream_seq = seq,
        outcome = tracing::field::Empty,
    )
}

/// Nanoseconds since the Unix epoch, as stored (saturating; i64 lasts until 2262).
fn nanos(t: i128) -> i64 {
    i64::try_from(t).unwrap_or(i64::MAX)
}

struct Subject<'a> {
    stream: &'a jetstream::stream::Stream,
    subject: &'a str,
    stats: &'a Stats,
}

impl NextOnSubject for Subject<'_> {
    async fn next_from(&self, from: u64) -> Result<Option<u64>, StoreError> {
        use async_nats::jetstream::stream::DirectGetErrorKind;
        self.stats.guard_lookups.inc();
        match self
            .stream
            .direct_get_next_for_subject(self.subject, Some(from))
            .await
        {
            Ok(m) => Ok(Some(m.sequence)),
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => Ok(None),
            Err(e) => Err(StoreError::Stream(e.to_string())),
        }
    }
}

impl<B: Bot> Applier<B> {
    /// An applier on its own (tests, tools): the worker builds one per process in `spawn`.
    /// Spawns the background task that marks published outbox rows.
    pub fn new(
        bot: B,
        bot_id: i64,
        pool: PgPool,
        js: jetstream::Context,
        updates: jetstream::stream::Stream,
        stats: Arc<Stats>,
        cancel: CancellationToken,
    ) -> Arc<Self> {
        let marks = Arc::new(outbox::Marks::default());
        outbox::spawn_marker(pool.clone(), marks.clone());
        Arc::new(Self {
            bot: Arc::new(bot),
            bot_id,
            pool,
            js,
            epoch: Arc::new(StreamEpoch::new(updates.clone())),
            updates,
            max_attempts: 3,
            flood: store::FloodBudget::default(),
            marks,
            group: None,
            stats,
            cancel,
            permits: Arc::new(Semaphore::new(64)),
        })
    }

    /// A copy whose retries and waits stop when `cancel` fires: the token of one partition
    /// (a child of the worker's), so releasing the partition ends its handlers without
    /// waiting for the database or the worker's shutdown.
    pub(crate) fn for_partition(&self, cancel: CancellationToken) -> Arc<Self> {
        Arc::new(Self {
            cancel,
            ..self.clone()
        })
    }

    /// Handles one message of a lane: process it, then ack; when cancelled first (the
    /// partition released, the worker stopping), hand it back with a nak, so its partition's
    /// next holder gets it at once.
    /// `received`: when the message came off the pull (the apply duration is measured from
    /// then to the ack).
    pub async fn handle(
        self: Arc<Self>,
        msg: jetstream::Message,
        prev_on_subject: Option<u64>,
        received: std::time::Instant,
    ) {
        let permit = tokio::select! {
            permit = self.permits.clone().acquire_owned() => permit,
            _ = self.cancel.cancelled() => {
                hand_back(&msg).await;
                return;
            }
        };
        let Ok(_permit) = permit else {
            return;
        };
        let (seq, stored_at_ns) = match msg.info() {
            Ok(info) => (
                info.stream_sequence,
                nanos(info.published.unix_timestamp_nanos()),
            ),
            Err(e) => {
                tracing::error!(error = %e, "message without JetStream info");
                return;
            }
        };
        let delivered = Delivered {
            seq,
            subject: msg.subject.to_string(),
            payload: msg.payload.clone(),
            stored_at_ns: Some(stored_at_ns),
            prev_on_subject,
        };
        // The update's span in the worker, continuing ingress's trace from the headers.
        let span = update_span("update", seq);
        trace::follow(&span, msg.headers.as_ref());
        let mut applied = false;
        let outcome = self
            .process_tracked(&delivered, 0, Some(&msg), Some(&mut applied))
            .instrument(span.clone())
            .await;
        if outcome != Outcome::Done {
            span.record("outcome", format!("{outcome:?}").to_lowercase());
        }
        drop(span);
        match outcome {
            Outcome::Done => {
                if let Err(e) = msg.ack().await {
                    // Redelivered later and then skipped as a duplicate.
                    tracing::warn!(error = %e, "ack failed");
                }
                if applied {
                    courier_common::metrics::observe_since(&self.stats.apply_duration, received);
                }
            }
            Outcome::Abandoned => hand_back(&msg).await,
            // Neither ack nor nak: either would reach the new stream's consumer.
            Outcome::Stale => {}
        }
    }

    /// Applies one delivered update, applying earlier unapplied updates of its chat first.
    /// `handled`: sequences up to which this chat's updates were already dealt with by the
    /// caller. `keepalive`: the JetStream message to send in-progress acks for while retrying.
    pub async fn process(
        &self,
        d: &Delivered,
        handled: u64,
        keepalive: Option<&jetstream::Message>,
    ) -> Outcome {
        self.process_tracked(d, handled, keepalive, None).await
    }

    /// [`Applier::process`], setting `applied_flag` when `d` itself was applied (not an earlier
    /// update of its chat applied first, nor a duplicate).
    async fn process_tracked(
        &self,
        d: &Delivered,
        mut handled: u64,
        keepalive: Option<&jetstream::Message>,
        applied_flag: Option<&mut bool>,
    ) -> Outcome {
        let delivered_by = tokio::time::Instant::now();
        let mut epoch = self.epoch.current().await;
        let mut confirmed = false;
        if let Some(outcome) = self.check_stream(d, epoch, keepalive).await {
            return outcome;
        }
        let envelope = match InboundUpdate::decode(d.payload.clone()) {
            Ok(env) => env,
            Err(e) => {
                return self
                    .dead_letter(
                        d,
                        None,
                        handled,
                        keepalive,
                        &format!("undecodable envelope: {e}"),
                    )
                    .await
            }
        };
        // Envelopes from before the fingerprint existed carry 0: compute it.
        let fingerprint = match envelope.update_fingerprint {
            0 => topology::update_fingerprint(&envelope.update_json),
            f => f,
        };
        let span = tracing::Span::current();
        span.record("bot_id", envelope.bot_id);
        span.record("update_id", envelope.update_id);
        span.record("chat_id", envelope.chat_id);
        span.record("partition", envelope.partition);
        let mut upd = UpdateRef {
            bot_id: envelope.bot_id,
            update_id: envelope.update_id,
            chat_id: envelope.chat_id,
            seq: d.seq,
            fingerprint,
            epoch: epoch.id,
            epoch_confirmed: false,
            prev_on_subject: d.prev_on_subject,
            received_at_ms: envelope.received_at_unix_ms,
            trace: TraceParent::of(&span),
        };
        // Read leniently from the raw bytes: only what the bot needs. What it needs and cannot
        // read is dead-lettered with the reason; kinds it does not handle are acked.
        let incoming = match self.bot.classify(&envelope.update_json) {
            Ok(Some(incoming)) => incoming,
            Ok(None) => {
                span.record("outcome", "ignored");
                self.stats.ignored.inc();
                tracing::debug!(update_id = upd.update_id, "update kind ignored by the bot");
                return Outcome::Done;
            }
            Err(e) => {
                let reason = e.to_string();
                return self
                    .dead_letter(d, Some(upd), handled, keepalive, &reason)
                    .await;
            }
        };

        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        let mut failures = 0u32;
        loop {
            upd.epoch = epoch.id;
            upd.epoch_confirmed = confirmed;
            let next = Subject {
                stream: &self.updates,
                subject: &d.subject,
                stats: &self.stats,
            };
            let grouped = match &self.group {
                Some(group) => {
                    let job = crate::group::Job {
                        upd,
                        incoming: incoming.clone(),
                        handled,
                        span: span.clone(),
                    };
                    match group.apply(job).await {
                        crate::group::Verdict::Done(applied) => {
                            if matches!(applied, Applied::Applied { .. }) {
                                self.stats.batched.inc();
                            }
                            Some(applied)
                        }
                        crate::group::Verdict::Alone => None,
                    }
                }
                None => None,
            };
            let applied = match grouped {
                Some(applied) => Ok(applied),
                None => {
                    // The marks of rows published meanwhile commit with this update (or go
                    // back).
                    let marks = self.marks.take();
                    let applied = match self.stats.db.acquire(&self.pool).await {
                        Ok(mut conn) => {
                            store::apply(
                                &mut conn, &*self.bot, upd, &incoming, handled, &next, self.flood,
                                &marks,
                            )
                            .await
                        }
                        Err(e) => Err(e.into()),
                    };
                    if !matches!(applied, Ok(Applied::Applied { .. })) {
                        self.marks.put_back(marks);
                    }
                    applied
                }
            };
            match applied {
                Ok(Applied::Applied {
                    publish: rows,
                    out_of_order,
                }) => {
                    span.record("outcome", "applied");
                    self.stats.applied.inc();
                    if out_of_order {
                        self.stats.out_of_order.inc();
                        tracing::warn!(
                            update_id = upd.update_id,
                            chat_id = upd.chat_id,
                            seq = d.seq,
                            "update applied after a later update of its chat (it reached the \
                             webhook out of update_id order)"
                        );
                    }
                    if !rows.is_empty() {
                        let published = outbox::publish(&self.js, self.bot_id, &rows)
                            .instrument(span.clone())
                            .await;
                        self.stats.outbox_published.inc_by(published.len() as u64);
                        self.marks.add(published);
                    }
                    if let Some(applied) = applied_flag {
                        *applied = true;
                    }
                    return Outcome::Done;
                }
                Ok(Applied::Duplicate) => {
                    span.record("outcome", "duplicate");
                    self.stats.duplicates.inc();
                    tracing::info!(
                        update_id = upd.update_id,
                        seq = d.seq,
                        "duplicate update skipped"
                    );
                    return Outcome::Done;
                }
                Ok(Applied::EarlierFirst(seq)) => {
                    self.stats.reordered.inc();
                    tracing::info!(
                        update_id = upd.update_id,
                        seq = d.seq,
                        earlier = seq,
                        "applying an earlier update of the chat first"
                    );
                    match self.fetch(seq).await {
                        Ok(earlier) => {
                            let nested = update_span("earlier_update", seq);
                            if Box::pin(self.process(&earlier, handled, keepalive))
                                .instrument(nested)
                                .await
                                == Outcome::Abandoned
                            {
                                return Outcome::Abandoned;
                            }
                            handled = seq;
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, seq, "cannot fetch the earlier update; retrying");
                        }
                    }
                }
                Ok(Applied::Behind | Applied::OtherEpoch(_)) => {
                    // Whether the stream was recreated since the epoch was read decides.
                    match self.epoch.read_since(delivered_by).await {
                        Ok(read) => {
                            if read.id != epoch.id {
                                if let Some(outcome) = self.check_stream(d, read, keepalive).await {
                                    return outcome;
                                }
                            }
                            epoch = read;
                            confirmed = true;
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot read the updates stream's epoch; retrying")
                        }
                    }
                }
                Err(e) if e.is_transient() => {
                    self.stats.retries.inc();
                    tracing::warn!(update_id = upd.update_id, error = %e, "transient failure; retrying");
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(update_id = upd.update_id, attempt = failures, error = %e, "update failed");
                    if failures >= self.max_attempts {
                        let reason = e.to_string();
                        return self
                            .dead_letter(d, Some(upd), handled, keepalive, &reason)
                            .await;
                    }
                }
            }
            if self.pause(&mut backoff, keepalive).await.is_err() {
                return Outcome::Abandoned;
            }
        }
    }

    /// Waits before a retry, keeping the delivery alive; `Err` when the worker stops.
    async fn pause(
        &self,
        backoff: &mut Backoff,
        keepalive: Option<&jetstream::Message>,
    ) -> Result<(), ()> {
        if let Some(msg) = keepalive {
            // Keep the delivery alive while the chat waits.
            let _ = msg.ack_with(AckKind::Progress).await;
        }
        tokio::select! {
            _ = self.cancel.cancelled() => Err(()),
            _ = tokio::time::sleep(backoff.next_delay()) => Ok(()),
        }
    }

    /// `Some(Outcome::Stale)` when the update comes from a stream deleted before the one of
    /// `epoch` was created; retries while that cannot be told (`Some(Abandoned)` on shutdown).
    async fn check_stream(
        &self,
        d: &Delivered,
        epoch: Epoch,
        keepalive: Option<&jetstream::Message>,
    ) -> Option<Outcome> {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            match self.is_of_a_deleted_stream(d, epoch).await {
                Ok(false) => return None,
                Ok(true) => {
                    self.stats.stale.inc();
                    tracing::error!(
                        seq = d.seq,
                        subject = %d.subject,
                        "update from a deleted incarnation of the updates stream: not applied, \
                         not acknowledged"
                    );
                    return Some(Outcome::Stale);
                }
                Err(e) => tracing::warn!(error = %e, "cannot check the update's stream; retrying"),
            }
            if self.pause(&mut backoff, keepalive).await.is_err() {
                return Some(Outcome::Abandoned);
            }
        }
    }

    async fn fetch(&self, seq: u64) -> Result<Delivered, String> {
        let m = self
            .updates
            .direct_get(seq)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Delivered {
            seq: m.sequence,
            subject: m.subject.to_string(),
            payload: m.payload,
            stored_at_ns: Some(nanos(m.time.unix_timestamp_nanos())),
            prev_on_subject: None,
        })
    }

    /// Whether the update was stored before the stream of `epoch` was created, and that
    /// stream does not hold it (checked by a direct get, so that servers whose clocks differ
    /// a little never drop an update of the current stream).
    async fn is_of_a_deleted_stream(&self, d: &Delivered, epoch: Epoch) -> Result<bool, String> {
        use async_nats::jetstream::stream::DirectGetErrorKind;
        let Some(stored_at) = d.stored_at_ns else {
            return Ok(false);
        };
        if stored_at >= epoch.id {
            return Ok(false);
        }
        match self.updates.direct_get(d.seq).await {
            Ok(m) => Ok(!(m.subject.as_str() == d.subject
                && nanos(m.time.unix_timestamp_nanos()) == stored_at)),
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => Ok(true),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Parks a poison update in `COURIER_DLQ` with its reason and records it as handled (its
    /// chat moves on), after any earlier update of its chat that is not applied yet (`handled`
    /// and `keepalive` as in [`Applier::process`]). If the dead letter cannot be stored yet,
    /// retries until it can or the worker stops: a poison update is never dropped silently.
    async fn dead_letter(
        &self,
        d: &Delivered,
        upd: Option<UpdateRef>,
        mut handled: u64,
        keepalive: Option<&jetstream::Message>,
        reason: &str,
    ) -> Outcome {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        loop {
            match self.try_dead_letter(d, upd, handled, reason).await {
                Ok(None) => return Outcome::Done,
                Ok(Some(seq)) => match self.fetch(seq).await {
                    Ok(earlier) => {
                        let nested = update_span("earlier_update", seq);
                        if Box::pin(self.process(&earlier, handled, keepalive))
                            .instrument(nested)
                            .await
                            == Outcome::Abandoned
                        {
                            return Outcome::Abandoned;
                        }
                        handled = seq;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, seq, "cannot fetch the earlier update; retrying")
                    }
                },
                Err(e) => tracing::warn!(error = %e, "cannot dead-letter yet; retrying"),
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return Outcome::Abandoned,
                _ = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    /// `Ok(Some(seq))`: the chat's earlier update `seq` must be dealt with first.
    async fn try_dead_letter(
        &self,
        d: &Delivered,
        upd: Option<UpdateRef>,
        handled: u64,
        reason: &str,
    ) -> Result<Option<u64>, String> {
        let tx = match upd {
            Some(upd) => {
                let next = Subject {
                    stream: &self.updates,
                    subject: &d.subject,
                    stats: &self.stats,
                };
                match store::begin_dead_letter(&self.pool, upd, handled, &next)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    DeadLetterStart::Begun(tx) => Some(tx),
                    DeadLetterStart::Handled => return Ok(None),
                    DeadLetterStart::EarlierFirst(seq) => return Ok(Some(seq)),
                }
            }
            None => None,
        };
        tracing::error!(
            update_id = upd.map(|u| u.update_id),
            seq = d.seq,
            reason,
            "dead-lettering update"
        );
        let stored = topology::publish_dead_letter(
            &self.js,
            self.bot_id,
            "updates",
            &d.subject,
            d.payload.clone(),
            reason,
        )
        .await;
        if !stored {
            return Err("dead-letter publish not acknowledged".into());
        }
        if let Some(tx) = tx {
            tx.commit().await.map_err(|e| e.to_string())?;
        }
        tracing::Span::current().record("outcome", "dead_lettered");
        self.stats.dead_lettered.inc();
        Ok(None)
    }
}
