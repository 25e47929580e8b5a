//! Dead letters: list, replay exactly once, purge.
//!
//! A dead letter is a message of `COURIER_DLQ` on `courier.dlq.<bot>.<stage>`, its id its
//! stream sequence, with the reason (`Courier-Dlq-Reason`) and the subject it came from
//! (`Courier-Dlq-Source`) as headers (`courier_common::topology::publish_dead_letter`).
//!
//! ## Replaying a letter exactly once
//!
//! A dead letter was *handled* where it died: a dead-lettered update has its
//! `processed_updates` row with outcome `dead_lettered` (the worker's claim), a dead-lettered
//! outbound message its `sent_messages` row with outcome `dead_lettered` (the sender's ledger).
//! Republished as it is, either would be skipped as a duplicate. [`replay_one`] therefore,
//! for letter `L` with DLQ sequence `s`:
//!
//! 1. deletes the letter's record **only if its outcome is `dead_lettered`** (one autocommit
//!    `DELETE … AND outcome = 'dead_lettered'`), so a record of an update *applied* (or a
//!    message *sent*) since is never touched;
//! 2. publishes the payload to its source subject with `Nats-Msg-Id = replay:<bot>:<s>` and
//!    waits for JetStream's ack;
//! 3. deletes `L` from the DLQ.
//!
//! Why once, whatever is repeated or interrupted:
//! - *at most once*: the worker applies an update only by claiming its `processed_updates` key,
//!   and the sender sends a part only when the ledger has no row for it. Step 1 removes only a
//!   `dead_lettered` record; once a replay was applied (sent), its record is `applied`
//!   (`sent`) and every later replay of the same letter — a repeated command, a second
//!   admin, a letter replayed twice because step 3 never ran — finds it and is skipped as a
//!   duplicate. Inside JetStream's duplicate window the second publish is not even stored
//!   (same `Nats-Msg-Id`).
//! - *at least once*: the letter leaves the DLQ only after its republish was acknowledged
//!   (step 3 after step 2). A crash before step 2 completes leaves the letter in the DLQ
//!   with its record deleted; replaying it again publishes it (step 1 deletes nothing).
//! - a republish dropped as a duplicate (same `Nats-Msg-Id` within the window) is dropped
//!   because an earlier publish of the same letter is stored, and that copy is processed.
//! - if the replayed update is dead-lettered *again* (still unreadable), that is a new letter
//!   with its own `dead_lettered` record; replaying the old letter once more may delete that
//!   record, which only makes the new letter replayable as well — neither applies anything
//!   twice, because whichever copy applies first writes `applied`.
//!
//! An outbound message without an outbox id (0) has no ledger row; its replay is at most once
//! only within the duplicate window.

use std::time::{SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, stream::LastRawMessageErrorKind};
use bytes::Bytes;
use courier_common::topology;
use courier_proto::{
    v1::{InboundUpdate, OutboundMessage},
    Message as _,
};
use tonic::Status;

use courier_proto::admin::v1 as pb;

use crate::Ctx;

/// Most letters one replay or purge acts on: the rest is left for the next call.
pub const MAX_PER_CALL: usize = 10_000;

/// One dead letter as stored.
#[derive(Debug, Clone)]
pub struct Letter {
    /// Its DLQ sequence (the id).
    pub seq: u64,
    /// `updates` or `outbound`.
    pub stage: String,
    /// Why it was dead-lettered.
    pub reason: String,
    /// The subject it came from.
    pub source: String,
    /// When it was stored, Unix milliseconds.
    pub stored_at_ms: i64,
    /// The payload (the envelope as it travelled).
    pub payload: Bytes,
}

impl Letter {
    fn from_message(bot_id: i64, m: jetstream::message::StreamMessage) -> Option<Self> {
        let stage = m
            .subject
            .as_str()
            .strip_prefix(&format!("courier.dlq.{bot_id}."))?
            .to_owned();
        let header = |name: &str| {
            m.headers
                .get(name)
                .map(|v| v.as_str().to_owned())
                .unwrap_or_default()
        };
        Some(Self {
            seq: m.sequence,
            stage,
            reason: header(topology::DLQ_REASON_HEADER),
            source: header(topology::DLQ_SOURCE_HEADER),
            stored_at_ms: (m.time.unix_timestamp_nanos() / 1_000_000) as i64,
            payload: m.payload,
        })
    }

    /// The letter as the API shows it.
    pub fn to_pb(&self, now_ms: i64) -> pb::DeadLetter {
        let mut out = pb::DeadLetter {
            id: self.seq,
            stage: self.stage.clone(),
            reason: self.reason.clone(),
            source_subject: self.source.clone(),
            stored_at_unix_ms: self.stored_at_ms,
            age_seconds: ((now_ms - self.stored_at_ms).max(0) / 1000) as u64,
            chat_id: courier_common::pull::chat_of_subject(&self.source),
            size_bytes: self.payload.len() as u32,
            ..Default::default()
        };
        match self.stage.as_str() {
            "updates" => {
                if let Ok(u) = InboundUpdate::decode(self.payload.clone()) {
                    out.update_id = u.update_id;
                    out.chat_id = u.chat_id;
                }
            }
            "outbound" => {
                if let Ok(m) = OutboundMessage::decode(self.payload.clone()) {
                    out.outbox_id = m.outbox_id;
                    out.chat_id = m.chat_id;
                }
            }
            _ => {}
        }
        out
    }

    fn matches(&self, filter: &pb::DeadLetterFilter, now_ms: i64) -> bool {
        (filter.stage.is_empty() || filter.stage == self.stage)
            && (filter.reason_contains.is_empty() || self.reason.contains(&filter.reason_contains))
            && (filter.chat_id == 0 || self.to_pb(now_ms).chat_id == filter.chat_id)
    }
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

async fn dlq(ctx: &Ctx) -> Result<jetstream::stream::Stream, Status> {
    ctx.js
        .get_stream(topology::DLQ_STREAM)
        .await
        .map_err(|e| Status::unavailable(format!("dead-letter stream: {e}")))
}

fn check_stage(filter: &pb::DeadLetterFilter) -> Result<(), Status> {
    match filter.stage.as_str() {
        "" | "updates" | "outbound" => Ok(()),
        other => Err(Status::invalid_argument(format!(
            "stage: `{other}` is neither `updates` nor `outbound`"
        ))),
    }
}

/// The first letter of this bot after `after` on the stage filter, if any.
async fn next_after(
    ctx: &Ctx,
    stream: &jetstream::stream::Stream,
    stage: &str,
    after: u64,
) -> Result<Option<Letter>, Status> {
    let subject = match stage {
        "" => format!("courier.dlq.{}.>", ctx.bot_id),
        s => topology::dlq_subject(ctx.bot_id, s),
    };
    let mut from = after + 1;
    loop {
        match stream
            .raw_message_builder()
            .sequence(from)
            .next_by_subject(subject.clone())
            .send()
            .await
        {
            Ok(m) => {
                let seq = m.sequence;
                match Letter::from_message(ctx.bot_id, m) {
                    Some(l) => return Ok(Some(l)),
                    None => from = seq + 1,
                }
            }
            Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => return Ok(None),
            Err(e) => return Err(Status::unavailable(format!("dead-letter stream: {e}"))),
        }
    }
}

/// One page of letters.
pub async fn list(
    ctx: &Ctx,
    req: pb::ListDeadLettersRequest,
) -> Result<pb::ListDeadLettersResponse, Status> {
    let filter = req.filter.unwrap_or_default();
    check_stage(&filter)?;
    let size = match req.page_size {
        0 => 50,
        n => n.min(1000),
    } as usize;
    let stream = dlq(ctx).await?;
    let now = now_ms();
    let mut letters = Vec::new();
    let mut cursor = req.page_token;
    let mut more = false;
    while let Some(letter) = next_after(ctx, &stream, &filter.stage, cursor).await? {
        if letters.len() == size {
            more = true;
            break;
        }
        cursor = letter.seq;
        if letter.matches(&filter, now) {
            letters.push(letter.to_pb(now));
        }
    }
    let total = crate::status::dead_letter_counts(ctx).await?.total;
    Ok(pb::ListDeadLettersResponse {
        next_page_token: if more { cursor } else { 0 },
        letters,
        total,
    })
}

/// The letters a selection names (ids that are not this bot's letters are reported
/// `not_found`).
async fn select(
    ctx: &Ctx,
    stream: &jetstream::stream::Stream,
    selection: pb::DeadLetterSelection,
) -> Result<(Vec<Letter>, Vec<u64>), Status> {
    let filter = selection.filter.unwrap_or_default();
    check_stage(&filter)?;
    if !selection.ids.is_empty() {
        let mut found = Vec::new();
        let mut missing = Vec::new();
        for id in selection.ids {
            match stream.get_raw_message(id).await {
                Ok(m) => match Letter::from_message(ctx.bot_id, m) {
                    Some(l) => found.push(l),
                    None => missing.push(id),
                },
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => missing.push(id),
                Err(e) => return Err(Status::unavailable(format!("dead-letter stream: {e}"))),
            }
        }
        return Ok((found, missing));
    }
    let empty = filter.stage.is_empty() && filter.reason_contains.is_empty() && filter.chat_id == 0;
    if empty && !selection.all {
        return Err(Status::invalid_argument(
            "no letters selected: give ids, a filter (stage, reason, chat), or all",
        ));
    }
    let now = now_ms();
    let mut found = Vec::new();
    let mut cursor = 0;
    while let Some(letter) = next_after(ctx, stream, &filter.stage, cursor).await? {
        cursor = letter.seq;
        if letter.matches(&filter, now) {
            found.push(letter);
            if found.len() == MAX_PER_CALL {
                break;
            }
        }
    }
    Ok((found, Vec::new()))
}

/// Where a letter goes back to, checked against its stage and bot.
fn target(ctx: &Ctx, letter: &Letter) -> Result<String, String> {
    let prefix = match letter.stage.as_str() {
        "updates" => format!("courier.updates.{}.", ctx.bot_id),
        "outbound" => format!("courier.outbound.{}.", ctx.bot_id),
        other => return Err(format!("unknown stage `{other}`")),
    };
    if letter.source.starts_with(&prefix) {
        Ok(letter.source.clone())
    } else {
        Err(format!(
            "its source subject `{}` is not a {} subject of this bot",
            letter.source, letter.stage
        ))
    }
}

/// Replays the selected letters (see the module documentation).
pub async fn replay(
    ctx: &Ctx,
    req: pb::ReplayDeadLettersRequest,
) -> Result<pb::ReplayDeadLettersResponse, Status> {
    let stream = dlq(ctx).await?;
    let (letters, missing) = select(ctx, &stream, req.selection.unwrap_or_default()).await?;
    let mut out = pb::ReplayDeadLettersResponse {
        dry_run: req.dry_run,
        ..Default::default()
    };
    for id in missing {
        out.results.push(pb::ReplayResult {
            id,
            outcome: "not_found".into(),
            detail: "no dead letter of this bot with this id".into(),
            subject: String::new(),
        });
        out.failed += 1;
    }
    for letter in letters {
        let subject = match target(ctx, &letter) {
            Ok(s) => s,
            Err(detail) => {
                out.failed += 1;
                out.results.push(pb::ReplayResult {
                    id: letter.seq,
                    outcome: "failed".into(),
                    detail,
                    subject: String::new(),
                });
                continue;
            }
        };
        if req.dry_run {
            out.results.push(pb::ReplayResult {
                id: letter.seq,
                outcome: "would_replay".into(),
                detail: letter.reason.clone(),
                subject,
            });
            continue;
        }
        match replay_one(ctx, &stream, &letter, &subject).await {
            Ok(detail) => {
                out.replayed += 1;
                out.results.push(pb::ReplayResult {
                    id: letter.seq,
                    outcome: "replayed".into(),
                    detail,
                    subject,
                });
            }
            Err(detail) => {
                tracing::warn!(id = letter.seq, %detail, "replay failed; the letter stays in the DLQ");
                out.failed += 1;
                out.results.push(pb::ReplayResult {
                    id: letter.seq,
                    outcome: "failed".into(),
                    detail,
                    subject,
                });
            }
        }
    }
    Ok(out)
}

/// The `Nats-Msg-Id` of a replayed letter.
pub fn replay_msg_id(bot_id: i64, dlq_seq: u64) -> String {
    format!("replay:{bot_id}:{dlq_seq}")
}

/// Clears the letter's `dead_lettered` record, republishes it, removes it from the DLQ.
async fn replay_one(
    ctx: &Ctx,
    stream: &jetstream::stream::Stream,
    letter: &Letter,
    subject: &str,
) -> Result<String, String> {
    // 1. The record that would make the worker or the sender skip it, only if dead-lettered.
    let cleared = match letter.stage.as_str() {
        "updates" => match InboundUpdate::decode(letter.payload.clone()) {
            Ok(u) => {
                let fingerprint = match u.update_fingerprint {
                    0 => topology::update_fingerprint(&u.update_json),
                    f => f,
                };
                sqlx::query(
                    "DELETE FROM processed_updates
                     WHERE bot_id = $1 AND update_id = $2 AND update_fingerprint = $3
                       AND outcome = 'dead_lettered'",
                )
                .bind(ctx.bot_id)
                .bind(u.update_id)
                .bind(fingerprint as i64)
                .execute(&ctx.pool)
                .await
                .map_err(|e| format!("PostgreSQL: {e}"))?
                .rows_affected()
            }
            // Never claimed: the worker could not even decode it.
            Err(_) => 0,
        },
        _ => match OutboundMessage::decode(letter.payload.clone()) {
            Ok(m) if m.outbox_id != 0 => sqlx::query(
                "DELETE FROM sent_messages
                 WHERE bot_id = $1 AND outbox_id = $2 AND outcome = 'dead_lettered'",
            )
            .bind(ctx.bot_id)
            .bind(m.outbox_id)
            .execute(&ctx.pool)
            .await
            .map_err(|e| format!("PostgreSQL: {e}"))?
            .rows_affected(),
            _ => 0,
        },
    };
    // 2. Republish under a deterministic id, and wait for the ack.
    let publish = jetstream::message::PublishMessage::build()
        .message_id(replay_msg_id(ctx.bot_id, letter.seq))
        .header("Courier-Replay-Of", letter.seq.to_string().as_str())
        .payload(letter.payload.clone());
    let ack = ctx
        .js
        .send_publish(subject.to_owned(), publish)
        .await
        .map_err(|e| format!("publish to {subject}: {e}"))?
        .await
        .map_err(|e| format!("publish to {subject} not acknowledged: {e}"))?;
    tracing::info!(
        id = letter.seq,
        stage = %letter.stage,
        %subject,
        stream_seq = ack.sequence,
        duplicate = ack.duplicate,
        records_cleared = cleared,
        "dead letter replayed"
    );
    // 3. Out of the DLQ, only now.
    let mut detail = if ack.duplicate {
        "republished before (JetStream dropped this copy as a duplicate)".to_owned()
    } else {
        format!("republished as stream sequence {}", ack.sequence)
    };
    if let Err(e) = stream.delete_message(letter.seq).await {
        detail.push_str(&format!(
            "; still in the DLQ ({e}): replaying it again is safe"
        ));
    }
    Ok(detail)
}

/// Purges the selected letters.
pub async fn purge(
    ctx: &Ctx,
    req: pb::PurgeDeadLettersRequest,
) -> Result<pb::PurgeDeadLettersResponse, Status> {
    let stream = dlq(ctx).await?;
    let (letters, _missing) = select(ctx, &stream, req.selection.unwrap_or_default()).await?;
    let mut out = pb::PurgeDeadLettersResponse {
        dry_run: req.dry_run,
        ..Default::default()
    };
    for letter in letters {
        if !req.dry_run {
            match stream.delete_message(letter.seq).await {
                Ok(_) => {}
                Err(e) => {
                    return Err(Status::unavailable(format!(
                        "deleting dead letter {} (after {} purged): {e}",
                        letter.seq, out.purged
                    )))
                }
            }
        }
        out.purged += 1;
        out.ids.push(letter.seq);
    }
    if !req.dry_run {
        tracing::warn!(purged = out.purged, "dead letters purged");
    }
    Ok(out)
}
