//! Broadcasts: one text to every chat of the bot's audience (the platform's `audience` table,
//! which a bot fills with `Effect::Subscribe`: the notes bot on `/start`) that has not blocked
//! the bot (`blocked_chats`), run by the workers as a persisted job through the outbox. No
//! bot's own tables are read.
//!
//! [`create`] stores the job (`broadcasts`); every worker runs [`run`], and one of them at a
//! time (PostgreSQL advisory lock [`LOCK_KEY`], taken per page) enqueues the next page: the
//! next [`PAGE`] chats by `chat_id` after the job's `cursor`, one outbox row each, inserted in
//! the same transaction that moves the cursor. So:
//! - **no chat gets it twice**: a page's rows and its cursor commit together; a crash before
//!   the commit enqueues nothing, after it the next page starts past it. Each row is then sent
//!   once like any reply (outbox id as `Nats-Msg-Id`, the sender's ledger);
//! - **nothing is lost**: a row committed but not published (a crash right after the commit)
//!   goes out with the relay (`outbox::relay`);
//! - **Telegram's limits hold**: the rows go through the sender like every reply. The job
//!   keeps at most [`MAX_OUTSTANDING`] of its rows not yet done by the sender, so a large
//!   broadcast does not flood the outbound stream ahead of the bot's own replies;
//! - **it survives anything**: the job is rows in PostgreSQL; any worker picks it up.
//!
//! [`cancel`] stops the job: no further page, and its rows not yet published are deleted
//! (rows already in the outbound stream still go out). Who counts as a recipient is decided
//! page by page: a chat that joins the audience with a `chat_id` past the cursor while the job
//! runs gets it; one that blocks the bot before its page does not (and after, the sender skips
//! it).

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use chrono::{DateTime, Utc};
use courier_common::CancellationToken;
use sqlx::{PgPool, Row};

use crate::outbox::{self, Marks};
use crate::store::{self, OutboxRow, StoreError};

/// The advisory lock one page is enqueued under (one worker at a time, per database).
pub const LOCK_KEY: i64 = 0x636f_7572_6965_7202;
/// Chats per page.
pub const PAGE: i64 = 100;
/// Most rows of a job enqueued but not yet done by the sender (sent, skipped or
/// dead-lettered); the next page waits until fewer are outstanding.
pub const MAX_OUTSTANDING: i64 = 300;
/// How often an idle worker looks for work.
pub const POLL: Duration = Duration::from_millis(500);

/// A broadcast and how far it got.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Progress {
    /// Its id.
    pub id: i64,
    /// `running` (enqueuing), `enqueued` (every recipient has a message) or `cancelled`.
    pub state: String,
    /// Users who had started the bot and not blocked it when it was created.
    pub recipients: i64,
    /// Messages enqueued so far (after a cancel: those that were handed to the sender).
    pub enqueued: i64,
    /// Messages Telegram accepted.
    pub sent: i64,
    /// Messages not sent: the user blocked the bot, or Telegram refused it for good.
    pub failed: i64,
    /// The text.
    pub text: String,
    /// Its parse mode (`HTML`, `MarkdownV2`, `Markdown`; empty: plain text).
    pub parse_mode: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When its last page was enqueued, or it was cancelled.
    pub finished_at: Option<DateTime<Utc>>,
}

impl Progress {
    /// Whether nothing more will happen: enqueued (or cancelled) and every enqueued message
    /// done by the sender.
    pub fn finished(&self) -> bool {
        self.state != "running" && self.sent + self.failed >= self.enqueued
    }
}

/// Stores a new broadcast of `text` (sent with `parse_mode`, empty for plain text); the
/// workers start on it within [`POLL`].
pub async fn create(
    pool: &PgPool,
    bot_id: i64,
    text: &str,
    parse_mode: &str,
) -> Result<Progress, StoreError> {
    create_once(pool, bot_id, text, parse_mode, None).await
}

/// [`create`], at most once per `request_id`: a second call with the same id (a retry after
/// a lost answer) creates nothing and returns the broadcast the first one created, whatever
/// its text — the caller compares.
pub async fn create_once(
    pool: &PgPool,
    bot_id: i64,
    text: &str,
    parse_mode: &str,
    request_id: Option<&str>,
) -> Result<Progress, StoreError> {
    let created: Option<i64> = sqlx::query_scalar(
        "INSERT INTO broadcasts (bot_id, text, parse_mode, recipients, request_id) \
         SELECT $1, $2, $3, count(*), $4 FROM audience a WHERE bot_id = $1 AND NOT EXISTS ( \
             SELECT 1 FROM blocked_chats b WHERE b.bot_id = $1 AND b.chat_id = a.chat_id) \
         ON CONFLICT (bot_id, request_id) WHERE request_id IS NOT NULL DO NOTHING \
         RETURNING id",
    )
    .bind(bot_id)
    .bind(text)
    .bind(parse_mode)
    .bind(request_id)
    .fetch_optional(pool)
    .await?;
    let id = match created {
        Some(id) => id,
        None => {
            sqlx::query_scalar("SELECT id FROM broadcasts WHERE bot_id = $1 AND request_id = $2")
                .bind(bot_id)
                .bind(request_id)
                .fetch_one(pool)
                .await?
        }
    };
    Ok(progress(pool, bot_id, id)
        .await?
        .expect("the broadcast just created"))
}

/// Cancels a running broadcast; `false` if it is not running (finished, cancelled, unknown).
/// Its rows not yet published are deleted and no longer count as enqueued; rows already
/// handed to the sender still go out.
pub async fn cancel(pool: &PgPool, bot_id: i64, id: i64) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await?;
    // The job's row lock first: the runner enqueues a page under it (`FOR UPDATE`).
    let running = sqlx::query(
        "SELECT 1 FROM broadcasts WHERE bot_id = $1 AND id = $2 AND state = 'running' FOR UPDATE",
    )
    .bind(bot_id)
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?
    .is_some();
    if running {
        let deleted = sqlx::query(
            "DELETE FROM outbox WHERE broadcast_id = $1 AND bot_id = $2 AND published_at IS NULL",
        )
        .bind(id)
        .bind(bot_id)
        .execute(&mut *tx)
        .await?
        .rows_affected() as i64;
        sqlx::query(
            "UPDATE broadcasts SET state = 'cancelled', finished_at = now(), \
                 enqueued = enqueued - $3 \
             WHERE bot_id = $1 AND id = $2",
        )
        .bind(bot_id)
        .bind(id)
        .bind(deleted)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(running)
}

/// The columns of a [`Progress`], over `broadcasts b` (grouped by `b.id`).
macro_rules! progress_select {
    ($where:literal) => {
        concat!(
            "SELECT b.id, b.state, b.recipients, b.enqueued, b.text, b.parse_mode, \
                 b.created_at, b.finished_at, \
                 coalesce(b.final_sent, \
                     count(s.outbox_id) FILTER (WHERE s.outcome = 'sent')) AS sent, \
                 coalesce(b.final_failed, \
                     count(s.outbox_id) FILTER (WHERE s.outcome <> 'sent')) AS failed \
             FROM broadcasts b \
             LEFT JOIN outbox o ON o.broadcast_id = b.id \
             LEFT JOIN sent_messages s \
                 ON s.bot_id = o.bot_id AND s.outbox_id = o.id AND s.part = 0 ",
            $where,
            " GROUP BY b.id"
        )
    };
}

fn progress_row(r: &sqlx::postgres::PgRow) -> Result<Progress, StoreError> {
    Ok(Progress {
        id: r.try_get("id")?,
        state: r.try_get("state")?,
        recipients: r.try_get("recipients")?,
        enqueued: r.try_get("enqueued")?,
        sent: r.try_get("sent")?,
        failed: r.try_get("failed")?,
        text: r.try_get("text")?,
        parse_mode: r.try_get("parse_mode")?,
        created_at: r.try_get("created_at")?,
        finished_at: r.try_get("finished_at")?,
    })
}

/// A broadcast's progress; `None` if there is no such broadcast.
pub async fn progress(pool: &PgPool, bot_id: i64, id: i64) -> Result<Option<Progress>, StoreError> {
    sqlx::query(progress_select!("WHERE b.bot_id = $1 AND b.id = $2"))
        .bind(bot_id)
        .bind(id)
        .fetch_optional(pool)
        .await?
        .as_ref()
        .map(progress_row)
        .transpose()
}

/// At most `limit` broadcasts, newest first, with ids below `before` (`None`: from the
/// newest).
pub async fn list(
    pool: &PgPool,
    bot_id: i64,
    before: Option<i64>,
    limit: i64,
) -> Result<Vec<Progress>, StoreError> {
    sqlx::query(concat!(
        progress_select!(
            "WHERE b.bot_id = $1 AND b.id < $2 AND b.id IN ( \
             SELECT id FROM broadcasts WHERE bot_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3)"
        ),
        " ORDER BY b.id DESC"
    ))
    .bind(bot_id)
    .bind(before.unwrap_or(i64::MAX))
    .bind(limit)
    .fetch_all(pool)
    .await?
    .iter()
    .map(progress_row)
    .collect()
}

/// The job runner every worker runs until `cancel`: enqueues pages of the oldest running
/// broadcast while there is one (see the module documentation).
pub async fn run(
    pool: PgPool,
    js: jetstream::Context,
    bot_id: i64,
    marks: Arc<Marks>,
    cancel: CancellationToken,
) {
    loop {
        let busy = match page(&pool, &js, bot_id, &marks).await {
            Ok(busy) => busy,
            Err(e) => {
                tracing::warn!(error = %e, "broadcast page failed; retrying");
                false
            }
        };
        if !busy {
            if let Err(e) = freeze(&pool, bot_id).await {
                tracing::warn!(error = %e, "writing finished broadcasts' counts failed; retrying");
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
        } else if cancel.is_cancelled() {
            return;
        }
    }
}

/// Writes the final counts of the finished broadcasts that have none yet (`final_sent`,
/// `final_failed`), so that [`progress`] still tells them after retention pruned the outbox
/// and ledger rows they were counted from. Returns how many it wrote.
pub async fn freeze(pool: &PgPool, bot_id: i64) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "UPDATE broadcasts AS b SET final_sent = c.sent, final_failed = c.failed \
         FROM ( \
             SELECT j.id, j.enqueued, \
                 count(s.outbox_id) FILTER (WHERE s.outcome = 'sent') AS sent, \
                 count(s.outbox_id) FILTER (WHERE s.outcome <> 'sent') AS failed \
             FROM broadcasts j \
             LEFT JOIN outbox o ON o.broadcast_id = j.id \
             LEFT JOIN sent_messages s \
                 ON s.bot_id = o.bot_id AND s.outbox_id = o.id AND s.part = 0 \
             WHERE j.bot_id = $1 AND j.state <> 'running' AND j.final_sent IS NULL \
             GROUP BY j.id) AS c \
         WHERE b.id = c.id AND c.sent + c.failed >= c.enqueued",
    )
    .bind(bot_id)
    .execute(pool)
    .await?
    .rows_affected())
}

/// Enqueues and publishes one page; `true` if it did (there may be more at once).
async fn page(
    pool: &PgPool,
    js: &jetstream::Context,
    bot_id: i64,
    marks: &Marks,
) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(LOCK_KEY)
        .fetch_one(&mut *tx)
        .await?;
    if !locked {
        return Ok(false);
    }
    let Some(job) = sqlx::query(
        "SELECT id, text, parse_mode, cursor, \
             (SELECT count(*) FROM outbox o WHERE o.broadcast_id = b.id AND NOT EXISTS ( \
                 SELECT 1 FROM sent_messages s \
                 WHERE s.bot_id = o.bot_id AND s.outbox_id = o.id AND s.part = 0)) \
                 AS outstanding \
         FROM broadcasts b WHERE bot_id = $1 AND state = 'running' \
         ORDER BY id LIMIT 1 FOR UPDATE",
    )
    .bind(bot_id)
    .fetch_optional(&mut *tx)
    .await?
    else {
        return Ok(false);
    };
    let id: i64 = job.try_get("id")?;
    if job.try_get::<i64, _>("outstanding")? >= MAX_OUTSTANDING {
        return Ok(false);
    }
    let text: String = job.try_get("text")?;
    let parse_mode: String = job.try_get("parse_mode")?;
    let cursor: i64 = job.try_get("cursor")?;
    // The page's rows and the moved cursor, in one statement of this transaction.
    let row = sqlx::query(
        "WITH page AS ( \
             SELECT chat_id FROM audience a \
             WHERE bot_id = $1 AND chat_id > $2 AND NOT EXISTS ( \
                 SELECT 1 FROM blocked_chats b WHERE b.bot_id = $1 AND b.chat_id = a.chat_id) \
             ORDER BY chat_id LIMIT $3), \
         ins AS ( \
             INSERT INTO outbox (bot_id, chat_id, origin_update_id, text, parse_mode, broadcast_id) \
             SELECT $1, chat_id, 0, $4, $5, $6 FROM page ORDER BY chat_id \
             RETURNING chat_id), \
         moved AS ( \
             UPDATE broadcasts SET \
                 cursor = coalesce((SELECT max(chat_id) FROM page), cursor), \
                 enqueued = enqueued + (SELECT count(*) FROM page), \
                 state = CASE WHEN (SELECT count(*) FROM page) < $3 THEN 'enqueued' ELSE state END, \
                 finished_at = CASE WHEN (SELECT count(*) FROM page) < $3 THEN now() END \
             WHERE id = $6 RETURNING state) \
         SELECT (SELECT state FROM moved) AS state, \
             ARRAY(SELECT DISTINCT chat_id FROM ins) AS chats",
    )
    .bind(bot_id)
    .bind(cursor)
    .bind(PAGE)
    .bind(&text)
    .bind(&parse_mode)
    .bind(id)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    let chats: Vec<i64> = row.try_get("chats")?;
    let state: String = row.try_get("state")?;
    if state == "enqueued" {
        tracing::info!(broadcast = id, "broadcast fully enqueued");
    }
    if !chats.is_empty() {
        // Every unpublished row of those chats, oldest first: a chat's rows leave in order
        // (see `outbox::publish`).
        let rows: Vec<OutboxRow> = sqlx::query(concat!(
            "SELECT ",
            store::outbox_columns!(),
            " FROM outbox WHERE published_at IS NULL AND bot_id = $1 AND chat_id = ANY($2) \
             ORDER BY id"
        ))
        .bind(bot_id)
        .bind(&chats)
        .fetch_all(pool)
        .await?
        .iter()
        .map(store::outbox_row)
        .collect::<Result<_, _>>()?;
        let published = outbox::publish(js, bot_id, &rows).await;
        marks.add(published);
    }
    Ok(state == "running")
}
