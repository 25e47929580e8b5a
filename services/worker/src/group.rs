//! Group commit: the common updates of many chats applied in one transaction.
//!
//! Each update the worker applies is submitted here first. One task takes whatever updates
//! are waiting (no timer: a lone update is handed straight back), and applies the batch in
//! one transaction of four round trips — `BEGIN`, one statement that locks and reads every
//! chat's row, every sender's flood counter and which updates are applied already, one
//! statement that writes every claim, flood count, note, reply, state and mark, `COMMIT` —
//! instead of four per update. One commit, one WAL flush, for the whole batch.
//!
//! **Same rules as one update alone.** The batch takes the same locks (chats in id order,
//! then senders in id order), makes the same order-guard, epoch and flood decisions
//! (`store::apply` documents them) and runs the same pure FSM. Only the common case is
//! batched: an update whose guard needs a stream lookup, whose sender is over the flood
//! budget, for which the bot reads its tables first (`Bot::needs_read`, e.g. `/history`), whose
//! effects are not just the bot's own writes and calls in its own chat (a platform effect such
//! as a block), or whose chat or sender already has an update in the batch, is handed back
//! ([`Verdict::Alone`]) and applied alone by `store::apply`. If anything in the batch goes
//! wrong (a statement fails, a claim or a state write did not take, as when two workers race
//! on a new chat) the whole transaction is rolled back and every update in it is applied
//! alone: a failing update never takes others down with it, and no decision is made on a
//! half-written batch.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use courier_bot_api::{pace, Bot, Context, Effect, Incoming, Outgoing, Pace};
use sqlx::{PgPool, Row};
use tokio::sync::{mpsc, oneshot};

use crate::outbox::Marks;
use crate::store::{self, Applied, FloodBudget, OutboxRow, StoreError, UpdateRef, LEGACY_EPOCH};
use crate::Stats;

/// Most updates in one batch.
pub const MAX_BATCH: usize = 128;

/// One update to apply: what `store::apply` takes.
#[derive(Debug, Clone)]
pub struct Job<I> {
    /// The update.
    pub upd: UpdateRef,
    /// What the bot read from it.
    pub incoming: Incoming<I>,
    /// Sequences of its chat already dealt with by the caller (see `store::apply`).
    pub handled: u64,
    /// Its `update` span: the batch's phases appear in the update's trace as its children.
    pub span: tracing::Span,
}

/// How the group dealt with an update.
#[derive(Debug)]
pub enum Verdict {
    /// Decided in a batch: as `store::apply` would have answered.
    Done(Applied),
    /// Not for a batch: apply it alone.
    Alone,
}

type Pending<I> = (Job<I>, oneshot::Sender<Verdict>);

/// The handle of the group-commit task; clones share it.
pub struct Group<B: Bot> {
    tx: mpsc::UnboundedSender<Pending<B::Input>>,
}

impl<B: Bot> Clone for Group<B> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<B: Bot> Group<B> {
    /// Starts the task. It ends when every handle is dropped.
    pub fn spawn(
        bot: Arc<B>,
        pool: PgPool,
        budget: FloodBudget,
        marks: Arc<Marks>,
        stats: Arc<Stats>,
    ) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Pending<B::Input>>();
        tokio::spawn(async move {
            let mut batch: Vec<Pending<B::Input>> = Vec::new();
            while let Some(first) = rx.recv().await {
                batch.push(first);
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(more) => batch.push(more),
                        Err(_) => break,
                    }
                }
                if batch.len() == 1 {
                    // Nothing to share a commit with.
                    let (_, reply) = batch.pop().expect("one");
                    let _ = reply.send(Verdict::Alone);
                    continue;
                }
                let (jobs, replies): (Vec<Job<B::Input>>, Vec<_>) = batch.drain(..).unzip();
                let taken = marks.take();
                let batch = match stats.db.acquire(&pool).await {
                    Ok(mut conn) => apply_batch(&*bot, &mut conn, &jobs, budget, &taken).await,
                    Err(e) => Err(e.into()),
                };
                let verdicts = match batch {
                    Ok((verdicts, committed)) => {
                        if committed {
                            stats.batches.inc();
                        } else {
                            marks.put_back(taken);
                        }
                        verdicts
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, updates = jobs.len(), "batch failed; applying its updates alone");
                        marks.put_back(taken);
                        jobs.iter().map(|_| Verdict::Alone).collect()
                    }
                };
                for (reply, verdict) in replies.into_iter().zip(verdicts) {
                    let _ = reply.send(verdict);
                }
            }
        });
        Self { tx }
    }

    /// Applies `job` in the next batch, or says to apply it alone.
    pub async fn apply(&self, job: Job<B::Input>) -> Verdict {
        let (reply, done) = oneshot::channel();
        if self.tx.send((job, reply)).is_err() {
            return Verdict::Alone;
        }
        done.await.unwrap_or(Verdict::Alone)
    }
}

/// What the batch writes for one update.
struct Write<B: Bot> {
    job: usize,
    state: B::State,
    out_of_order: bool,
    flood_sender: Option<i64>,
    writes: Vec<B::Write>,
    calls: Vec<Outgoing>,
}

/// The chat row as locked by the batch.
struct ChatRow {
    state: serde_json::Value,
    last_seq: i64,
    epoch: i64,
    recent_update_id: Option<i64>,
}

/// Applies a batch; the verdicts in job order, and whether a transaction committed.
async fn apply_batch<B: Bot>(
    bot: &B,
    conn: &mut sqlx::PgConnection,
    jobs: &[Job<B::Input>],
    budget: FloodBudget,
    marks: &[i64],
) -> Result<(Vec<Verdict>, bool), StoreError> {
    let mut verdicts: Vec<Option<Verdict>> = jobs.iter().map(|_| None).collect();
    // One update per chat and per flood sender in a batch; the others go alone.
    let (mut chats, mut senders) = (HashSet::new(), HashSet::new());
    let mut candidates = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        let sender = bot.counted_as(&job.incoming).filter(|_| budget.limit > 0);
        let fresh_sender = sender.is_none_or(|s| senders.insert(s));
        if job.upd.bot_id != jobs[0].upd.bot_id
            || !chats.insert(job.incoming.chat_id)
            || !fresh_sender
            || bot.needs_read(&job.incoming)
        {
            verdicts[i] = Some(Verdict::Alone);
        } else {
            candidates.push((i, sender));
        }
    }
    if candidates.len() < 2 {
        return Ok((finish(verdicts), false));
    }
    let bot_id = jobs[0].upd.bot_id;
    let chat_ids: Vec<i64> = candidates
        .iter()
        .map(|&(i, _)| jobs[i].incoming.chat_id)
        .collect();
    let sender_ids: Vec<i64> = candidates.iter().filter_map(|&(_, s)| s).collect();
    let update_ids: Vec<i64> = candidates
        .iter()
        .map(|&(i, _)| jobs[i].upd.update_id)
        .collect();
    let fingerprints: Vec<i64> = candidates
        .iter()
        .map(|&(i, _)| jobs[i].upd.fingerprint as i64)
        .collect();

    // Each update's trace shows the batch's phases as its own (they are: one transaction).
    let candidate_jobs: Vec<usize> = candidates.iter().map(|&(i, _)| i).collect();
    let guard = phases(jobs, &candidate_jobs, Phase::OrderGuard);
    let mut tx = sqlx::Connection::begin(conn).await?;
    // Locks in a fixed order (chats, then senders, each by id), as concurrent batches take
    // them; rows tagged by kind: 'c' a chat, 'f' a sender's counter, 's' an applied update.
    let rows = sqlx::query(
        "WITH chats AS ( \
             SELECT chat_id, state, last_seq, stream_epoch, \
             CASE WHEN updated_at > now() - interval '7 days' THEN last_update_id END \
                 AS recent_update_id \
             FROM dialogue_states WHERE bot_id = $1 AND chat_id = ANY($2) \
             ORDER BY chat_id FOR UPDATE), \
         floods AS ( \
             SELECT sender_id, window_start <= now() - make_interval(secs => $4) AS over, \
             updates FROM flood_counters WHERE bot_id = $1 AND sender_id = ANY($3) \
             ORDER BY sender_id FOR UPDATE), \
         seen AS ( \
             SELECT p.update_id, p.update_fingerprint FROM processed_updates p \
             JOIN unnest($5::bigint[], $6::bigint[]) AS u(update_id, fp) \
             ON p.bot_id = $1 AND p.update_id = u.update_id AND p.update_fingerprint = u.fp) \
         SELECT 'c' AS kind, chat_id AS key, 0::bigint AS key2, state, last_seq, stream_epoch, \
             recent_update_id, NULL::bool AS over, NULL::bigint AS updates FROM chats \
         UNION ALL SELECT 'f', sender_id, 0, NULL, NULL, NULL, NULL, over, updates FROM floods \
         UNION ALL SELECT 's', update_id, update_fingerprint, NULL, NULL, NULL, NULL, NULL, NULL \
             FROM seen",
    )
    .bind(bot_id)
    .bind(&chat_ids)
    .bind(&sender_ids)
    .bind(budget.window.as_secs_f64())
    .bind(&update_ids)
    .bind(&fingerprints)
    .fetch_all(&mut *tx)
    .await?;
    let mut chat_rows: HashMap<i64, ChatRow> = HashMap::new();
    let mut flood_rows: HashMap<i64, (bool, i64)> = HashMap::new();
    let mut seen: HashSet<(i64, i64)> = HashSet::new();
    for r in &rows {
        let key: i64 = r.try_get("key")?;
        match r.try_get::<String, _>("kind")?.as_str() {
            "c" => {
                chat_rows.insert(
                    key,
                    ChatRow {
                        state: r.try_get("state")?,
                        last_seq: r.try_get("last_seq")?,
                        epoch: r.try_get("stream_epoch")?,
                        recent_update_id: r.try_get("recent_update_id")?,
                    },
                );
            }
            "f" => {
                flood_rows.insert(key, (r.try_get("over")?, r.try_get("updates")?));
            }
            _ => {
                seen.insert((key, r.try_get("key2")?));
            }
        }
    }

    drop(guard);
    let step = phases(jobs, &candidate_jobs, Phase::FsmStep);
    let mut writes: Vec<Write<B>> = Vec::new();
    for &(i, sender) in &candidates {
        let job = &jobs[i];
        let upd = job.upd;
        if seen.contains(&(upd.update_id, upd.fingerprint as i64)) {
            verdicts[i] = Some(Verdict::Done(Applied::Duplicate));
            continue;
        }
        let row = chat_rows.get(&job.incoming.chat_id);
        let (state, mut last_seq, epoch, recent) = match row {
            Some(r) => (
                store::decode_state::<B::State>(r.state.clone(), job.incoming.chat_id),
                r.last_seq,
                r.epoch,
                r.recent_update_id,
            ),
            None => (B::State::default(), 0, upd.epoch, None),
        };
        if epoch != upd.epoch && epoch != LEGACY_EPOCH {
            // The guard restarts in a new stream: rare, and logged by the path alone.
            verdicts[i] = Some(if upd.epoch_confirmed {
                Verdict::Alone
            } else {
                Verdict::Done(Applied::OtherEpoch(epoch))
            });
            continue;
        }
        if upd.seq as i64 <= last_seq {
            verdicts[i] = Some(Verdict::Done(if upd.epoch_confirmed {
                Applied::Duplicate
            } else {
                Applied::Behind
            }));
            continue;
        }
        last_seq = last_seq.max(0);
        let dealt_with = (last_seq as u64).max(job.handled);
        let nothing_between =
            dealt_with + 1 >= upd.seq || upd.prev_on_subject.is_some_and(|prev| dealt_with >= prev);
        if !nothing_between {
            // The order guard must ask the stream: alone.
            verdicts[i] = Some(Verdict::Alone);
            continue;
        }
        let mut ctx = Context::<B::Data>::default();
        if let Some(sender) = sender {
            let count = match flood_rows.get(&sender) {
                None | Some((true, _)) => 1,
                Some((false, n)) => n.saturating_add(1).max(1) as u64,
            };
            ctx.pace = pace(count, budget.limit);
            if ctx.pace != Pace::Within {
                verdicts[i] = Some(Verdict::Alone);
                continue;
            }
        }
        let transition = bot.step(&state, &job.incoming, &ctx);
        let mut own = Vec::new();
        let mut calls = Vec::new();
        let mut simple = true;
        for effect in transition.effects {
            match effect {
                Effect::Write(w) => own.push(w),
                Effect::Send(call) if call.chat_id() == job.incoming.chat_id => calls.push(call),
                _ => simple = false,
            }
        }
        if !simple {
            verdicts[i] = Some(Verdict::Alone);
            continue;
        }
        writes.push(Write {
            job: i,
            state: transition.state,
            out_of_order: recent.is_some_and(|last| upd.update_id < last),
            flood_sender: sender,
            writes: own,
            calls,
        });
    }
    drop(step);
    if writes.len() < 2 {
        // Not worth a batch: the rest go alone (the locks go with the rollback).
        tx.rollback().await?;
        for w in &writes {
            verdicts[w.job] = Some(Verdict::Alone);
        }
        return Ok((finish(verdicts), false));
    }

    let written: Vec<usize> = writes.iter().map(|w| w.job).collect();
    let _commit = phases(jobs, &written, Phase::Commit);
    // Columns of the multi-row statement.
    let mut claim = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut floods = Vec::new();
    let mut stored = Vec::new();
    let mut outbox = crate::effects::Outbox::default();
    let mut reply = (Vec::new(), Vec::new(), Vec::new());
    let mut state = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for w in &writes {
        let job = &jobs[w.job];
        claim.0.push(job.upd.update_id);
        claim.1.push(job.upd.fingerprint as i64);
        claim.2.push(job.upd.chat_id);
        claim.3.push(job.upd.seq as i64);
        floods.extend(w.flood_sender);
        stored.extend(w.writes.iter().map(|write| job.upd.stored(write)));
        let (traceparent, received_at) = job.upd.reply_columns();
        for call in &w.calls {
            outbox.push(call);
            reply.0.push(job.upd.update_id);
            reply.1.push(traceparent.clone());
            reply.2.push(received_at);
        }
        state.0.push(job.incoming.chat_id);
        state.1.push(serde_json::to_value(&w.state)?);
        state.2.push(job.upd.update_id);
        state.3.push(job.upd.seq as i64);
    }
    let epoch = jobs[writes[0].job].upd.epoch;
    if writes.iter().any(|w| jobs[w.job].upd.epoch != epoch) {
        tx.rollback().await?;
        for w in &writes {
            verdicts[w.job] = Some(Verdict::Alone);
        }
        return Ok((finish(verdicts), false));
    }
    if !stored.is_empty() {
        // The bot's own writes, all of the batch's in one call (one statement per kind).
        bot.write(&mut tx, &stored).await?;
    }
    let n = writes.len() as i64;
    let out = sqlx::query(concat!(
        "WITH claim AS ( \
             INSERT INTO processed_updates \
             (bot_id, update_id, update_fingerprint, chat_id, stream_seq, outcome) \
             SELECT $1, u, f, c, s, 'applied' \
             FROM unnest($2::bigint[], $3::bigint[], $4::bigint[], $5::bigint[]) AS t(u, f, c, s) \
             ON CONFLICT (bot_id, update_id, update_fingerprint) DO NOTHING RETURNING 1), \
         flood AS ( \
             INSERT INTO flood_counters AS f (bot_id, sender_id, window_start, updates) \
             SELECT $1, s, now(), 1 FROM unnest($6::bigint[]) AS s ",
        store::flood_conflict!("$7"),
        "), \
         reply AS ( \
             INSERT INTO outbox (bot_id, chat_id, origin_update_id, text, parse_mode, action, \
                 traceparent, origin_received_at) \
             SELECT $1, c, i, t, pm, a, tp, ra \
             FROM unnest($8::bigint[], $9::bigint[], $10::text[], $11::text[], $12::bytea[], \
                         $13::text[], $14::timestamptz[]) \
                 WITH ORDINALITY AS r(c, i, t, pm, a, tp, ra, o) \
             ORDER BY o \
             RETURNING ", store::outbox_columns!(), "), \
         state AS ( \
             INSERT INTO dialogue_states \
             (bot_id, chat_id, state, last_update_id, last_seq, stream_epoch) \
             SELECT $1, c, s, i, q, $19 \
             FROM unnest($15::bigint[], $16::jsonb[], $17::bigint[], $18::bigint[]) AS t(c, s, i, q) ",
        store::state_conflict!(),
        "RETURNING 1), \
         marked AS ( \
             UPDATE outbox SET published_at = now() \
             WHERE id = ANY($20) AND published_at IS NULL), \
         publish AS ( \
             SELECT ", store::outbox_columns!(), " FROM outbox \
             WHERE published_at IS NULL AND bot_id = $1 AND chat_id = ANY($8) \
             AND id <> ALL($20) \
             UNION ALL SELECT ", store::outbox_columns!(), " FROM reply \
             ORDER BY id LIMIT $21) \
         SELECT (SELECT count(*) FROM claim) AS claimed, (SELECT count(*) FROM state) AS written, \
             p.* \
         FROM (SELECT 1) AS one LEFT JOIN publish AS p ON true ORDER BY p.id",
    ))
    .bind(bot_id)
    .bind(&claim.0)
    .bind(&claim.1)
    .bind(&claim.2)
    .bind(&claim.3)
    .bind(&floods)
    .bind(budget.window.as_secs_f64())
    .bind(&outbox.chats)
    .bind(&reply.0)
    .bind(&outbox.texts)
    .bind(&outbox.parse_modes)
    .bind(&outbox.actions)
    .bind(&reply.1)
    .bind(&reply.2)
    .bind(&state.0)
    .bind(&state.1)
    .bind(&state.2)
    .bind(&state.3)
    .bind(epoch)
    .bind(marks)
    .bind(store::CHAT_BACKLOG_LIMIT * n)
    .fetch_all(&mut *tx)
    .await?;
    let first = out
        .first()
        .ok_or_else(|| StoreError::Stream("empty batch answer".into()))?;
    let (claimed, written): (i64, i64) = (first.try_get("claimed")?, first.try_get("written")?);
    if claimed != n || written != n {
        // Someone else got to one of these first (a duplicate in flight, a new chat raced by
        // another worker): decide each alone.
        tx.rollback().await?;
        for w in &writes {
            verdicts[w.job] = Some(Verdict::Alone);
        }
        return Ok((finish(verdicts), false));
    }
    let mut by_chat: HashMap<i64, Vec<OutboxRow>> = HashMap::new();
    for r in &out {
        if r.try_get::<Option<i64>, _>("id")?.is_some() {
            let row = store::outbox_row(r)?;
            by_chat.entry(row.chat_id).or_default().push(row);
        }
    }
    tx.commit().await?;
    for w in writes {
        let chat = jobs[w.job].incoming.chat_id;
        verdicts[w.job] = Some(Verdict::Done(Applied::Applied {
            publish: by_chat.remove(&chat).unwrap_or_default(),
            out_of_order: w.out_of_order,
        }));
    }
    Ok((finish(verdicts), true))
}

/// A phase of a batch as it shows in each update's trace.
#[derive(Clone, Copy)]
enum Phase {
    OrderGuard,
    FsmStep,
    Commit,
}

/// One span per update of `of`, child of its `update` span, open until dropped.
fn phases<I>(jobs: &[Job<I>], of: &[usize], phase: Phase) -> Vec<tracing::Span> {
    let batch = jobs.len();
    of.iter()
        .map(|&i| {
            let parent = &jobs[i].span;
            match phase {
                Phase::OrderGuard => tracing::info_span!(parent: parent, "order_guard", batch),
                Phase::FsmStep => tracing::info_span!(parent: parent, "fsm_step", batch),
                Phase::Commit => tracing::info_span!(parent: parent, "commit", batch),
            }
        })
        .collect()
}

fn finish(verdicts: Vec<Option<Verdict>>) -> Vec<Verdict> {
    verdicts
        .into_iter()
        .map(|v| v.unwrap_or(Verdict::Alone))
        .collect()
}
