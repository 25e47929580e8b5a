//! `Broadcast`, `WatchBroadcast`, `GetBroadcast`, `ListBroadcasts`, `CancelBroadcast`: the
//! admin side of the workers' broadcast job (`courier_worker::broadcast`).
//!
//! The admin keeps nothing: `Broadcast` validates the request and stores the job
//! (`broadcast::create_once`, one row of `broadcasts`); the workers run it; `WatchBroadcast`
//! polls the job's progress (`broadcast::progress`, every [`WATCH_POLL`]) and streams it. So
//! killing courier-admin mid-way loses nothing: the job goes on in the workers, and a watch
//! opened again (on this replica after its restart, or on another) picks up the same progress.
//!
//! **Creation at most once per request id.** A client that lost the answer to `Broadcast`
//! (the admin killed after its commit) cannot tell whether the job exists; it repeats the call
//! with the same `request_id` and gets the job the first call created (a unique index on
//! `(bot_id, request_id)`), never a second one that would reach every user twice.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use courier_worker::broadcast::{self, Progress};
use futures::Stream;
use tonic::Status;

use courier_proto::admin::v1 as pb;

use crate::Ctx;

/// How often a watch reads the job's progress.
pub const WATCH_POLL: Duration = Duration::from_millis(500);
/// A watch sends the progress at least this often, changed or not (so a client can tell a
/// quiet job from a dead stream).
pub const WATCH_KEEPALIVE: Duration = Duration::from_secs(5);
/// The longest text of one message (UTF-16 code units, as Telegram counts).
pub const MAX_TEXT: usize = 4096;
/// The longest request id.
pub const MAX_REQUEST_ID: usize = 128;
/// Parse modes Telegram knows (empty: plain text).
pub const PARSE_MODES: [&str; 4] = ["", "HTML", "MarkdownV2", "Markdown"];
/// Most broadcasts in one page of `ListBroadcasts`.
pub const MAX_PAGE: u32 = 100;

/// The stream `WatchBroadcast` answers with.
pub type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::BroadcastJob, Status>> + Send>>;

fn db(e: courier_worker::store::StoreError) -> Status {
    Status::unavailable(format!("PostgreSQL: {e}"))
}

fn ms(t: chrono::DateTime<chrono::Utc>) -> i64 {
    t.timestamp_millis()
}

/// The job as the API shows it.
pub fn to_pb(p: &Progress) -> pb::BroadcastJob {
    pb::BroadcastJob {
        id: p.id,
        state: p.state.clone(),
        recipients: p.recipients,
        enqueued: p.enqueued,
        sent: p.sent,
        failed: p.failed,
        finished: p.finished(),
        text: p.text.clone(),
        parse_mode: p.parse_mode.clone(),
        created_at_unix_ms: ms(p.created_at),
        enqueue_finished_at_unix_ms: p.finished_at.map(ms).unwrap_or(0),
    }
}

/// Refuses a request the job could not carry out as asked (INVALID_ARGUMENT).
pub fn validate(req: &pb::BroadcastRequest) -> Result<(), Status> {
    if req.text.trim().is_empty() {
        return Err(Status::invalid_argument("the text is empty"));
    }
    let len = req.text.encode_utf16().count();
    if len > MAX_TEXT {
        return Err(Status::invalid_argument(format!(
            "the text is {len} characters long; one message holds at most {MAX_TEXT} \
             (UTF-16 code units, markup included)"
        )));
    }
    if !PARSE_MODES.contains(&req.parse_mode.as_str()) {
        return Err(Status::invalid_argument(format!(
            "parse mode `{}` is not one of HTML, MarkdownV2, Markdown (or empty for plain text)",
            req.parse_mode
        )));
    }
    if req.request_id.chars().count() > MAX_REQUEST_ID {
        return Err(Status::invalid_argument(format!(
            "the request id is longer than {MAX_REQUEST_ID} characters"
        )));
    }
    Ok(())
}

/// Stores the job (once per request id) and returns it.
pub async fn create(ctx: &Ctx, req: pb::BroadcastRequest) -> Result<pb::BroadcastJob, Status> {
    validate(&req)?;
    let key = Some(req.request_id.as_str()).filter(|k| !k.is_empty());
    let job = broadcast::create_once(&ctx.pool, ctx.bot_id, &req.text, &req.parse_mode, key)
        .await
        .map_err(db)?;
    if job.text != req.text || job.parse_mode != req.parse_mode {
        return Err(Status::already_exists(format!(
            "request id `{}` belongs to broadcast {}, with another text",
            req.request_id, job.id
        )));
    }
    // The text is the operator's message to every user: not logged, like any message text.
    tracing::info!(
        broadcast = job.id,
        recipients = job.recipients,
        parse_mode = %job.parse_mode,
        text_len = job.text.len(),
        "broadcast stored; the workers run it"
    );
    Ok(to_pb(&job))
}

async fn find(ctx: &Ctx, id: i64) -> Result<Progress, Status> {
    broadcast::progress(&ctx.pool, ctx.bot_id, id)
        .await
        .map_err(db)?
        .ok_or_else(|| Status::not_found(format!("no broadcast {id}")))
}

/// One job.
pub async fn get(ctx: &Ctx, req: pb::GetBroadcastRequest) -> Result<pb::BroadcastJob, Status> {
    Ok(to_pb(&find(ctx, req.id).await?))
}

/// A page of jobs, newest first.
pub async fn list(
    ctx: &Ctx,
    req: pb::ListBroadcastsRequest,
) -> Result<pb::ListBroadcastsResponse, Status> {
    let size = match req.page_size {
        0 => 20,
        n => n.min(MAX_PAGE),
    };
    let before = (req.page_token > 0).then_some(req.page_token);
    // One more than asked tells whether there is a next page.
    let mut jobs = broadcast::list(&ctx.pool, ctx.bot_id, before, i64::from(size) + 1)
        .await
        .map_err(db)?;
    let more = jobs.len() > size as usize;
    jobs.truncate(size as usize);
    Ok(pb::ListBroadcastsResponse {
        next_page_token: if more {
            jobs.last().map_or(0, |j| j.id)
        } else {
            0
        },
        broadcasts: jobs.iter().map(to_pb).collect(),
    })
}

/// Cancels a running job.
pub async fn cancel(
    ctx: &Ctx,
    req: pb::CancelBroadcastRequest,
) -> Result<pb::CancelBroadcastResponse, Status> {
    find(ctx, req.id).await?;
    let cancelled = broadcast::cancel(&ctx.pool, ctx.bot_id, req.id)
        .await
        .map_err(db)?;
    if cancelled {
        tracing::warn!(broadcast = req.id, "broadcast cancelled");
    }
    let job = find(ctx, req.id).await?;
    Ok(pb::CancelBroadcastResponse {
        cancelled,
        job: Some(to_pb(&job)),
    })
}

/// Streams the job's progress until it is finished, the client goes away, or courier-admin
/// shuts down (then the stream ends with UNAVAILABLE: watch again, here or elsewhere).
pub async fn watch(ctx: Arc<Ctx>, req: pb::WatchBroadcastRequest) -> Result<WatchStream, Status> {
    let first = find(&ctx, req.id).await?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<pb::BroadcastJob, Status>>(4);
    tokio::spawn(async move {
        let mut last = first;
        if tx.send(Ok(to_pb(&last))).await.is_err() {
            return;
        }
        let mut sent_at = tokio::time::Instant::now();
        while !last.finished() {
            tokio::select! {
                _ = tx.closed() => return,
                _ = ctx.shutdown.cancelled() => {
                    let _ = tx
                        .send(Err(Status::unavailable(
                            "courier-admin is shutting down; the broadcast goes on: watch again",
                        )))
                        .await;
                    return;
                }
                _ = tokio::time::sleep(WATCH_POLL) => {}
            }
            let now = match broadcast::progress(&ctx.pool, ctx.bot_id, req.id).await {
                Ok(Some(p)) => p,
                Ok(None) => {
                    let _ = tx
                        .send(Err(Status::not_found(format!("no broadcast {}", req.id))))
                        .await;
                    return;
                }
                // The client watches again after a pause; the job is not affected.
                Err(e) => {
                    let _ = tx.send(Err(db(e))).await;
                    return;
                }
            };
            if now != last || sent_at.elapsed() >= WATCH_KEEPALIVE {
                if tx.send(Ok(to_pb(&now))).await.is_err() {
                    return;
                }
                sent_at = tokio::time::Instant::now();
            }
            last = now;
        }
    });
    Ok(Box::pin(futures::stream::poll_fn(move |cx| {
        rx.poll_recv(cx)
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(text: &str, parse_mode: &str) -> pb::BroadcastRequest {
        pb::BroadcastRequest {
            text: text.into(),
            parse_mode: parse_mode.into(),
            request_id: String::new(),
        }
    }

    #[test]
    fn texts_and_parse_modes_are_checked() {
        assert!(validate(&req("hello", "")).is_ok());
        assert!(validate(&req("<b>hello</b>", "HTML")).is_ok());
        assert!(validate(&req("*hello*", "MarkdownV2")).is_ok());
        assert!(validate(&req("*hello*", "Markdown")).is_ok());
        for (text, mode) in [("", ""), ("  \n ", ""), ("hi", "html"), ("hi", "Markdown2")] {
            let e = validate(&req(text, mode)).expect_err(text);
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{text:?} {mode:?}");
        }
        let mut long = req(&"a".repeat(MAX_TEXT), "");
        long.request_id = "k".repeat(MAX_REQUEST_ID);
        assert!(validate(&long).is_ok());
        long.request_id.push('k');
        assert!(validate(&long).is_err(), "a request id too long");
        // Telegram counts UTF-16 code units: an emoji is two.
        assert!(validate(&req(&"😀".repeat(MAX_TEXT / 2), "")).is_ok());
        assert!(validate(&req(&format!("{}a", "😀".repeat(MAX_TEXT / 2)), "")).is_err());
    }
}
