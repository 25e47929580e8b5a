//! The worker's PostgreSQL side: one transaction per update, and the outbox bookkeeping.
//!
//! **Architecture Invariant:** every effect of an update (its `processed_updates` row, the
//! user and note rows, the dialogue state and the outgoing messages) is written in one
//! transaction, so an update is applied entirely or not at all, and at most once.

use std::time::Duration;

use chrono::{DateTime, Utc};
use courier_bot_api::{pace, Bot, Context, Incoming, Pace, Stored};
use courier_common::trace::TraceParent;
use sqlx::{PgPool, Postgres, Row, Transaction};
use tracing::Instrument;

/// Why applying an update failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database said no, or could not be reached.
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    /// The bot's dialogue state could not be encoded as JSON (a state that cannot be read
    /// back is the bot's default: `decode_state`).
    #[error("dialogue state cannot be encoded as JSON: {0}")]
    BadState(#[from] serde_json::Error),
    /// The stream could not be asked for earlier updates of the chat.
    #[error("stream lookup: {0}")]
    Stream(String),
}

impl StoreError {
    /// Whether retrying can help: connection trouble, pool exhaustion, serialization
    /// conflicts and server shutdowns are transient; data errors (SQLSTATE class 22, such as a
    /// NUL byte in text) and constraint violations are not.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Db(e) => is_transient_db(e),
            StoreError::BadState(_) => false,
            StoreError::Stream(_) => true,
        }
    }
}

/// Whether a database error may go away by itself (see [`StoreError::is_transient`]).
pub use courier_db::is_transient as is_transient_db;

/// The flood counter's upsert rule (`ON CONFLICT …` of `flood_counters AS f`), shared by
/// the path alone and the batch so both count alike; the argument is the window's parameter
/// (seconds), e.g. `"$8"`.
macro_rules! flood_conflict {
    ($window:literal) => {
        concat!(
            "ON CONFLICT (bot_id, sender_id) DO UPDATE SET \
             window_start = CASE WHEN f.window_start <= now() - make_interval(secs => ",
            $window,
            ") THEN now() ELSE f.window_start END, \
             updates = CASE WHEN f.window_start <= now() - make_interval(secs => ",
            $window,
            ") THEN 1 ELSE f.updates + 1 END "
        )
    };
}
pub(crate) use flood_conflict;

/// The dialogue state's upsert rule (`ON CONFLICT …` of `dialogue_states`), shared by the path
/// alone and the batch: written only over a row of another epoch or an older sequence (so a
/// later update that got there first wins), `last_update_id` the week's highest.
macro_rules! state_conflict {
    () => {
        "ON CONFLICT (bot_id, chat_id) DO UPDATE SET state = EXCLUDED.state, \
         last_update_id = CASE WHEN dialogue_states.updated_at > now() - interval '7 days' \
             THEN GREATEST(dialogue_states.last_update_id, EXCLUDED.last_update_id) \
             ELSE EXCLUDED.last_update_id END, \
         last_seq = EXCLUDED.last_seq, stream_epoch = EXCLUDED.stream_epoch, \
         updated_at = now() \
         WHERE dialogue_states.stream_epoch <> EXCLUDED.stream_epoch \
         OR dialogue_states.last_seq < EXCLUDED.last_seq "
    };
}
pub(crate) use state_conflict;

/// The outbox columns a publish needs ([`OutboxRow`]), as every statement that reads rows to
/// publish selects (or returns) them.
macro_rules! outbox_columns {
    () => {
        "id, chat_id, origin_update_id, text, created_at, traceparent, origin_received_at, \
         parse_mode, action"
    };
}
pub(crate) use outbox_columns;

/// One outgoing message written to the outbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// The row id: the idempotency key of the message.
    pub id: i64,
    /// The chat to send to.
    pub chat_id: i64,
    /// The update that caused it.
    pub origin_update_id: i64,
    /// The text.
    pub text: String,
    /// When it was committed.
    pub created_at: DateTime<Utc>,
    /// The trace context of the update that caused it (its `update` span), if traced.
    pub traceparent: Option<String>,
    /// When ingress accepted that update, if known.
    pub origin_received_at: Option<DateTime<Utc>>,
    /// `parse_mode` to send it with (empty: plain text).
    pub parse_mode: String,
    /// The encoded `OutboundMessage` holding its action, for anything but a `sendMessage` of
    /// `text` with `parse_mode` (`crate::effects`).
    pub action: Option<Vec<u8>>,
}

/// What happened to an update.
#[derive(Debug)]
pub enum Applied {
    /// Applied now.
    Applied {
        /// The messages to publish, in this order: the unpublished rows of the chats it
        /// replied to, its own replies last, by id.
        publish: Vec<OutboxRow>,
        /// Its `update_id` is below one its chat had applied before, within the week that
        /// Telegram keeps update ids increasing: it reached the stream after a later update
        /// of its chat (see [`apply`], *Arrival order*).
        out_of_order: bool,
    },
    /// Applied before (same update id, or a stream sequence at or below the chat's last one).
    Duplicate,
    /// Not applied: the chat has an earlier update at this stream sequence that is not applied
    /// yet; it must be applied first (see [`apply`]).
    EarlierFirst(u64),
    /// Not applied, and the epoch was not confirmed: the sequence is at or below the chat's
    /// `last_seq`, which is a duplicate only if the stream was not recreated since the epoch
    /// was read. Read the epoch again and retry with [`UpdateRef::epoch_confirmed`].
    Behind,
    /// Not applied, and the epoch was not confirmed: the chat's guard was recorded in another
    /// incarnation of the stream (this epoch). Read the epoch again and retry with
    /// [`UpdateRef::epoch_confirmed`].
    OtherEpoch(i64),
}

/// Finds the stream sequence of the chat's first message at or after a sequence; `None` when
/// there is none. The worker answers it with a JetStream direct get (`next_by_subj`).
pub trait NextOnSubject {
    /// The sequence of the first message of the update's chat subject at or after `from`.
    fn next_from(
        &self,
        from: u64,
    ) -> impl std::future::Future<Output = Result<Option<u64>, StoreError>> + Send;
}

/// The identity of an update inside the stream.
#[derive(Debug, Clone, Copy)]
pub struct UpdateRef {
    /// The bot.
    pub bot_id: i64,
    /// Telegram's update id.
    pub update_id: i64,
    /// The routing chat.
    pub chat_id: i64,
    /// The stream sequence of the message that carried it.
    pub seq: u64,
    /// The fingerprint of the update's bytes (part of the idempotency key).
    pub fingerprint: u64,
    /// The epoch of the stream that holds it (`crate::epoch`): `seq` means something only
    /// within it.
    pub epoch: i64,
    /// Whether `epoch` was read after the update was delivered, so it is the stream that
    /// exists now. Without it, decisions that rest on the epoch are handed back to the caller
    /// ([`Applied::Behind`], [`Applied::OtherEpoch`]).
    pub epoch_confirmed: bool,
    /// The stream sequence of the chat's previous message, if the caller knows it for certain
    /// (the chat has no message between it and `seq`): when that one is dealt with, the guard
    /// does not ask `next`.
    pub prev_on_subject: Option<u64>,
    /// When ingress accepted it (Unix milliseconds; 0 if unknown): stored with its replies.
    pub received_at_ms: i64,
    /// Its trace context (the worker's `update` span), stored with its replies so that every
    /// publish of them continues the trace.
    pub trace: Option<TraceParent>,
}

impl UpdateRef {
    /// One of the bot's writes, as [`Bot::write`] gets it: with this update's identity.
    pub(crate) fn stored<'a, W>(&self, write: &'a W) -> Stored<'a, W> {
        Stored {
            bot_id: self.bot_id,
            update_id: self.update_id,
            update_fingerprint: self.fingerprint as i64,
            write,
        }
    }

    /// The columns its replies store: `(traceparent, origin_received_at)`.
    pub(crate) fn reply_columns(&self) -> (Option<String>, Option<DateTime<Utc>>) {
        (
            self.trace.map(|t| t.to_string()),
            (self.received_at_ms > 0)
                .then(|| DateTime::from_timestamp_millis(self.received_at_ms))
                .flatten(),
        )
    }
}

/// The `stream_epoch` of rows written before epochs were recorded: taken to be the current
/// stream's (the stream they were written in is the one that existed at the upgrade).
pub const LEGACY_EPOCH: i64 = 0;

/// Inbound flood control: at most `limit` updates per sender per `window` (0: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FloodBudget {
    /// Updates per window.
    pub limit: u32,
    /// The window, which starts at a sender's first update after the previous one ended.
    pub window: Duration,
}

impl Default for FloodBudget {
    /// The worker's defaults: 20 updates in 10 s.
    fn default() -> Self {
        Self {
            limit: 20,
            window: Duration::from_secs(10),
        }
    }
}

/// Applies one update in one transaction: dedup, lock the chat's state, check the order, count
/// it against its sender's flood budget, run the FSM, write the effects, the new state and the
/// outbox. `db` is the pool or a connection taken from it (the worker takes one with
/// `PoolMetrics::acquire`, timing the wait).
///
/// **Order guard.** The chat's row holds `last_seq`, the stream sequence of its last applied
/// update, and `stream_epoch`, the stream it belongs to, locked for the transaction. If the
/// row names another epoch than the update's, the stream was recreated since the chat's last
/// update: once the epoch is confirmed, the guard restarts at 0 in the new stream (logged as a
/// warning; `processed_updates` still keeps every update to one application). An update at
/// or below `last_seq` of the same stream is a duplicate (once the epoch is confirmed). Otherwise
/// `next` is asked for the chat's first message after `max(last_seq, handled)` (`handled`:
/// sequences the caller already dealt with in this catch-up, such as updates the bot ignores);
/// if that is an earlier one, nothing is written and [`Applied::EarlierFirst`] names it. So a
/// chat's updates are applied in stream order whatever order they are delivered in, and by
/// however many workers.
///
/// **Arrival order.** A chat's updates are applied in stream order, which is the order ingress
/// got them acknowledged in. Telegram's server delivers a chat's updates one at a time, each
/// after the previous one was answered, and ingress answers only after JetStream's ack, so
/// this is `update_id` order; an update whose id is below one its chat had applied (within a
/// week) reached the stream late and is still applied, and reported as
/// `out_of_order` of [`Applied::Applied`] (ARCHITECTURE.md, invariant 12: arrival order).
///
/// **Flood control.** The sender's counter (`flood_counters`) is bumped in this transaction,
/// so the budget holds across chats and workers and a rolled-back update does not count; an
/// update over the budget is recorded as `throttled` and runs the FSM with its [`Pace`] (one
/// reply, then nothing: no note is stored).
#[allow(clippy::too_many_arguments)]
pub async fn apply<'c, B: Bot>(
    db: impl sqlx::Acquire<'c, Database = sqlx::Postgres>,
    bot: &B,
    upd: UpdateRef,
    incoming: &Incoming<B::Input>,
    handled: u64,
    next: &impl NextOnSubject,
    budget: FloodBudget,
    marks: &[i64],
) -> Result<Applied, StoreError> {
    // The update's trace (its `update` span is current): the guard, the FSM step, the commit.
    let guard = tracing::info_span!("order_guard");
    let mut tx = db.begin().instrument(guard.clone()).await?;
    // One round trip: claim the update, lock and read the chat's row, and count the update
    // against its sender's flood budget. (A rollback below undoes the claim and the count.)
    let flood_sender = bot.counted_as(incoming).filter(|_| budget.limit > 0);
    let row = sqlx::query(concat!(
        "WITH claim AS ( \
             INSERT INTO processed_updates \
             (bot_id, update_id, update_fingerprint, chat_id, stream_seq, outcome) \
             VALUES ($1, $2, $3, $4, $5, 'applied') \
             ON CONFLICT (bot_id, update_id, update_fingerprint) DO NOTHING RETURNING 1), \
         chat AS ( \
             SELECT state, last_seq, stream_epoch, \
             CASE WHEN updated_at > now() - interval '7 days' THEN last_update_id END \
                 AS recent_update_id \
             FROM dialogue_states WHERE bot_id = $1 AND chat_id = $6 FOR UPDATE), \
         flood AS ( \
             INSERT INTO flood_counters AS f (bot_id, sender_id, window_start, updates) \
             SELECT $1, $7, now(), 1 WHERE $7::bigint IS NOT NULL AND EXISTS (SELECT 1 FROM claim) ",
        flood_conflict!("$8"),
        "RETURNING updates) \
         SELECT EXISTS (SELECT 1 FROM claim) AS claimed, \
             (SELECT updates FROM flood) AS flood_count, \
             chat.state, chat.last_seq, chat.stream_epoch, chat.recent_update_id \
         FROM (SELECT 1) AS one LEFT JOIN chat ON true",
    ))
    .bind(upd.bot_id)
    .bind(upd.update_id)
    // Stored as the same 64 bits in a BIGINT.
    .bind(upd.fingerprint as i64)
    .bind(upd.chat_id)
    .bind(upd.seq as i64)
    .bind(incoming.chat_id)
    .bind(flood_sender)
    .bind(budget.window.as_secs_f64())
    .fetch_one(&mut *tx)
    .instrument(guard.clone())
    .await?;
    if !row.try_get::<bool, _>("claimed")? {
        tx.rollback().await?;
        return Ok(Applied::Duplicate);
    }
    let flood_count = row.try_get::<Option<i64>, _>("flood_count")?;
    let (state, mut last_seq, epoch, recent_update_id) =
        match row.try_get::<Option<serde_json::Value>, _>("state")? {
            Some(state) => (
                decode_state::<B::State>(state, incoming.chat_id),
                row.try_get::<i64, _>("last_seq")?,
                row.try_get::<i64, _>("stream_epoch")?,
                row.try_get::<Option<i64>, _>("recent_update_id")?,
            ),
            None => (B::State::default(), 0, upd.epoch, None),
        };
    let out_of_order = recent_update_id.is_some_and(|last| upd.update_id < last);
    if epoch != upd.epoch && epoch != LEGACY_EPOCH {
        if !upd.epoch_confirmed {
            tx.rollback().await?;
            return Ok(Applied::OtherEpoch(epoch));
        }
        tracing::warn!(
            chat_id = incoming.chat_id,
            last_seq,
            recorded_epoch = epoch,
            epoch = upd.epoch,
            seq = upd.seq,
            "chat's order guard restarts: its last update was in another incarnation of the \
             updates stream"
        );
        last_seq = 0;
    }
    if upd.seq as i64 <= last_seq {
        tx.rollback().await?;
        return Ok(if upd.epoch_confirmed {
            Applied::Duplicate
        } else {
            Applied::Behind
        });
    }
    if let Some(earlier) = earlier_unapplied(upd, last_seq, handled, next)
        .instrument(guard.clone())
        .await?
    {
        tx.rollback().await?;
        return Ok(Applied::EarlierFirst(earlier));
    }
    drop(guard);
    let step = tracing::info_span!("fsm_step");
    let mut ctx = Context::<B::Data>::default();
    if let (Some(sender), Some(count)) = (flood_sender, flood_count) {
        ctx.pace = pace(count.max(1) as u64, budget.limit);
        if ctx.pace != Pace::Within {
            set_outcome(&mut tx, upd, "throttled").await?;
            if ctx.pace == Pace::SlowDown {
                tracing::info!(
                    sender,
                    chat_id = incoming.chat_id,
                    "sender over the flood budget; slowing them down"
                );
            }
        }
    }
    if ctx.pace == Pace::Within && bot.needs_read(incoming) {
        ctx.data = bot
            .read(&mut tx, upd.bot_id, incoming)
            .instrument(step.clone())
            .await?;
    }
    let transition = step.in_scope(|| bot.step(&state, incoming, &ctx));
    let effects = crate::effects::sort(transition.effects);
    crate::effects::apply_platform(&mut tx, upd.bot_id, &effects.platform)
        .instrument(step.clone())
        .await?;
    if !effects.writes.is_empty() {
        let stored: Vec<Stored<'_, B::Write>> =
            effects.writes.iter().map(|w| upd.stored(w)).collect();
        bot.write(&mut tx, &stored).instrument(step.clone()).await?;
    }
    let outbox = effects.outbox;
    drop(step);
    let commit = tracing::info_span!("commit");
    let (traceparent, received_at) = upd.reply_columns();
    // One round trip for the rest: the calls (ids drawn in the effects' order),
    // the new state, and what to publish. The state's upsert has a WHERE that makes a
    // concurrent first update of a new chat (no row to lock yet) safe: if a later update got
    // there first, nothing is written for this one (`written` = 0) and it is rolled back. (A
    // row of another epoch was locked and judged above.) `last_update_id` keeps the highest
    // id of the week (Telegram may restart its ids after a week without updates).
    //
    // What to publish: not only this update's replies but every unpublished row of their
    // chats, in id order, so that a reply whose publish failed earlier goes out before these
    // (see `outbox::publish`). Read under the chat's lock, so every earlier reply of the chat
    // is committed and visible here; the statement's own replies come from RETURNING (its
    // snapshot does not show them), at most [`CHAT_BACKLOG_LIMIT`] rows, a prefix in id order.
    // `marks`: rows published since other transactions committed (`outbox::Marks`), marked
    // here so that they cost no transaction of their own, and not published again.
    let rows = sqlx::query(concat!(
        "WITH reply AS ( \
             INSERT INTO outbox (bot_id, chat_id, origin_update_id, text, parse_mode, action, \
                 traceparent, origin_received_at) \
             SELECT $1, r.chat_id, $2, r.text, r.parse_mode, r.action, $13, $14 \
             FROM unnest($5::bigint[], $6::text[], $3::text[], $4::bytea[]) \
                 WITH ORDINALITY AS r(chat_id, text, parse_mode, action, n) \
             ORDER BY r.n \
             RETURNING ",
        outbox_columns!(),
        "), \
         state AS ( \
             INSERT INTO dialogue_states \
             (bot_id, chat_id, state, last_update_id, last_seq, stream_epoch) \
             VALUES ($1, $7, $8, $2, $9, $10) ",
        state_conflict!(),
        "RETURNING 1), \
         marked AS ( \
             UPDATE outbox SET published_at = now() \
             WHERE id = ANY($12) AND published_at IS NULL), \
         publish AS ( \
             SELECT ",
        outbox_columns!(),
        " FROM outbox \
             WHERE published_at IS NULL AND bot_id = $1 AND chat_id = ANY($5) \
             AND id <> ALL($12) \
             UNION ALL SELECT ",
        outbox_columns!(),
        " FROM reply \
             ORDER BY id LIMIT $11) \
         SELECT (SELECT count(*) FROM state) AS written, p.* \
         FROM (SELECT 1) AS one LEFT JOIN publish AS p ON true ORDER BY p.id",
    ))
    .bind(upd.bot_id)
    .bind(upd.update_id)
    .bind(&outbox.parse_modes)
    .bind(&outbox.actions)
    .bind(&outbox.chats)
    .bind(&outbox.texts)
    .bind(incoming.chat_id)
    .bind(serde_json::to_value(&transition.state)?)
    .bind(upd.seq as i64)
    .bind(upd.epoch)
    .bind(CHAT_BACKLOG_LIMIT)
    .bind(marks)
    .bind(traceparent)
    .bind(received_at)
    .fetch_all(&mut *tx)
    .instrument(commit.clone())
    .await?;
    let written = match rows.first() {
        Some(r) => r.try_get::<i64, _>("written")?,
        None => 0,
    };
    if written == 0 {
        tx.rollback().await?;
        return Ok(Applied::Duplicate);
    }
    let mut to_publish = Vec::with_capacity(rows.len());
    for r in &rows {
        if r.try_get::<Option<i64>, _>("id")?.is_some() {
            to_publish.push(outbox_row(r)?);
        }
    }
    tx.commit().instrument(commit).await?;
    Ok(Applied::Applied {
        publish: to_publish,
        out_of_order,
    })
}

/// A chat's stored state: JSON of the bot's state; `null` (a chat reset by the admin API,
/// which does not know the bot's types) is the bot's default. So is a state this bot cannot
/// read — written by another bot on the same bot id (`COURIER_BOT` changed), or by an older
/// version of this one whose state had another shape — with a warning: failing the update
/// instead would fail every later update of the chat too, and the chat would be stuck for
/// good.
pub(crate) fn decode_state<S: Default + serde::de::DeserializeOwned>(
    state: serde_json::Value,
    chat_id: i64,
) -> S {
    if state.is_null() {
        return S::default();
    }
    match serde_json::from_value(state) {
        Ok(state) => state,
        Err(e) => {
            tracing::warn!(
                chat_id,
                error = %e,
                "the chat's stored state is not this bot's (another bot, or an older version \
                 of it): the chat starts again from the bot's default state"
            );
            S::default()
        }
    }
}

/// Most rows of one chat an update publishes at once; the rest (after a long outage) go with
/// the chat's next reply or the relay.
pub(crate) const CHAT_BACKLOG_LIMIT: i64 = 500;

pub(crate) fn outbox_row(r: &sqlx::postgres::PgRow) -> Result<OutboxRow, StoreError> {
    Ok(OutboxRow {
        id: r.try_get("id")?,
        chat_id: r.try_get("chat_id")?,
        origin_update_id: r.try_get("origin_update_id")?,
        text: r.try_get("text")?,
        created_at: r.try_get("created_at")?,
        traceparent: r.try_get("traceparent")?,
        origin_received_at: r.try_get("origin_received_at")?,
        parse_mode: r.try_get("parse_mode")?,
        action: r.try_get("action")?,
    })
}

/// The order guard's question: the stream sequence of the chat's first update after
/// `max(last_seq, handled)` when it comes before `upd` (it must be dealt with first).
async fn earlier_unapplied(
    upd: UpdateRef,
    last_seq: i64,
    handled: u64,
    next: &impl NextOnSubject,
) -> Result<Option<u64>, StoreError> {
    let dealt_with = (last_seq.max(0) as u64).max(handled);
    if dealt_with + 1 >= upd.seq || upd.prev_on_subject.is_some_and(|prev| dealt_with >= prev) {
        return Ok(None);
    }
    let from = dealt_with + 1;
    Ok(next
        .next_from(from)
        .await?
        .filter(|&earlier| earlier < upd.seq))
}

/// How starting a dead letter went (see [`begin_dead_letter`]).
pub enum DeadLetterStart {
    /// Claimed, and the chat's `last_seq` moved past it: publish the dead letter, then commit
    /// (or drop the transaction if the publish failed).
    Begun(Transaction<'static, Postgres>),
    /// Handled before (applied or dead-lettered): nothing to do.
    Handled,
    /// Not recorded: the chat has an earlier update at this stream sequence that is not
    /// applied yet. It must be dealt with first, or moving `last_seq` past this one would
    /// make it look applied.
    EarlierFirst(u64),
}

/// Starts recording a poison update: claims it as `dead_lettered` and moves its chat's
/// `last_seq` past it, so the chat carries on — under the same order guard as [`apply`], so a
/// dead letter never overtakes an earlier update of its chat.
///
/// A row of an older epoch (the stream was recreated) takes this update's sequence and epoch;
/// a row of a newer epoch than the update's is left alone.
pub async fn begin_dead_letter(
    pool: &PgPool,
    upd: UpdateRef,
    handled: u64,
    next: &impl NextOnSubject,
) -> Result<DeadLetterStart, StoreError> {
    let mut tx = pool.begin().await?;
    if !claim(&mut tx, upd, "dead_lettered").await? {
        tx.rollback().await?;
        return Ok(DeadLetterStart::Handled);
    }
    let row: Option<(i64, i64)> = sqlx::query_as(
        "SELECT last_seq, stream_epoch FROM dialogue_states \
         WHERE bot_id = $1 AND chat_id = $2 FOR UPDATE",
    )
    .bind(upd.bot_id)
    .bind(upd.chat_id)
    .fetch_optional(&mut *tx)
    .await?;
    // A guard of another stream says nothing about this one: look from its start (what is
    // applied already is skipped through `processed_updates`).
    let last_seq = match row {
        Some((seq, epoch)) if epoch == upd.epoch || epoch == LEGACY_EPOCH => seq,
        _ => 0,
    };
    if let Some(earlier) = earlier_unapplied(upd, last_seq, handled, next).await? {
        tx.rollback().await?;
        return Ok(DeadLetterStart::EarlierFirst(earlier));
    }
    sqlx::query(
        "INSERT INTO dialogue_states (bot_id, chat_id, state, last_update_id, last_seq, stream_epoch) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (bot_id, chat_id) DO UPDATE SET \
         last_seq = CASE \
             WHEN dialogue_states.stream_epoch IN (0, EXCLUDED.stream_epoch) \
                 THEN GREATEST(dialogue_states.last_seq, EXCLUDED.last_seq) \
             WHEN dialogue_states.stream_epoch < EXCLUDED.stream_epoch THEN EXCLUDED.last_seq \
             ELSE dialogue_states.last_seq END, \
         stream_epoch = GREATEST(dialogue_states.stream_epoch, EXCLUDED.stream_epoch), \
         updated_at = now()",
    )
    .bind(upd.bot_id)
    .bind(upd.chat_id)
    .bind(serde_json::Value::Null)
    .bind(upd.update_id)
    .bind(upd.seq as i64)
    .bind(upd.epoch)
    .execute(&mut *tx)
    .await?;
    Ok(DeadLetterStart::Begun(tx))
}

/// Changes the outcome recorded by [`claim`] in the same transaction.
async fn set_outcome(
    tx: &mut Transaction<'_, Postgres>,
    upd: UpdateRef,
    outcome: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE processed_updates SET outcome = $4 \
         WHERE bot_id = $1 AND update_id = $2 AND update_fingerprint = $3",
    )
    .bind(upd.bot_id)
    .bind(upd.update_id)
    .bind(upd.fingerprint as i64)
    .bind(outcome)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Inserts the update's `processed_updates` row; `false` when it was there already.
async fn claim(
    tx: &mut Transaction<'_, Postgres>,
    upd: UpdateRef,
    outcome: &str,
) -> Result<bool, StoreError> {
    let inserted = sqlx::query(
        "INSERT INTO processed_updates \
         (bot_id, update_id, update_fingerprint, chat_id, stream_seq, outcome) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (bot_id, update_id, update_fingerprint) DO NOTHING",
    )
    .bind(upd.bot_id)
    .bind(upd.update_id)
    // Stored as the same 64 bits in a BIGINT.
    .bind(upd.fingerprint as i64)
    .bind(upd.chat_id)
    .bind(upd.seq as i64)
    .bind(outcome)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

/// Marks outbox rows as published.
pub async fn mark_published(pool: &PgPool, ids: &[i64]) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE outbox SET published_at = now() WHERE id = ANY($1) AND published_at IS NULL",
    )
    .bind(ids)
    .execute(pool)
    .await?;
    Ok(())
}

/// The relay's batch: every unpublished row (up to `limit`, in id order) of the chats that
/// have a row older than `grace_secs` — a crash or an outage between commit and publish, or a
/// mark that was lost. Whole chats from their oldest unpublished row, so the relay can publish
/// each chat's rows in order; without row locks (see `outbox::sweep`).
pub async fn unpublished(
    pool: &PgPool,
    bot_id: i64,
    grace_secs: f64,
    limit: i64,
) -> Result<Vec<OutboxRow>, StoreError> {
    let rows = sqlx::query(concat!(
        "SELECT ",
        outbox_columns!(),
        " FROM outbox \
         WHERE published_at IS NULL AND bot_id = $1 AND chat_id IN ( \
             SELECT chat_id FROM outbox WHERE published_at IS NULL AND bot_id = $1 \
             AND created_at < now() - make_interval(secs => $2)) \
         ORDER BY id LIMIT $3",
    ))
    .bind(bot_id)
    .bind(grace_secs)
    .bind(limit)
    .fetch_all(pool)
    .await?;
    rows.iter().map(outbox_row).collect()
}

#[cfg(test)]
mod tests {
    use super::decode_state;
    use serde_json::json;

    #[test]
    fn a_state_the_bot_cannot_read_is_its_default_and_null_too() {
        let notes = json!({"state": "ReceiveNote"});
        assert_eq!(
            decode_state::<courier_notes::DialogueState>(notes.clone(), 1),
            courier_notes::DialogueState::ReceiveNote
        );
        assert_eq!(
            decode_state::<courier_quiz::QuizState>(notes, 1),
            courier_quiz::QuizState::default(),
            "another bot's state"
        );
        assert_eq!(
            decode_state::<courier_notes::DialogueState>(serde_json::Value::Null, 1),
            courier_notes::DialogueState::Start,
            "reset by the admin API"
        );
    }
}
