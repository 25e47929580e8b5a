//! The sender's PostgreSQL bookkeeping: the sent ledger (with the bots' message keys),
//! blocked chats, chat migrations.
//!
//! Tables from `migrations/20261126000003_sender.up.sql` (`sent_messages.msg_key`:
//! `20261203000001_bot_platform`). The sender writes no other table: a bot's own tables are
//! its own.

use courier_db::group::{BatchError, Batcher};
use courier_db::metrics::PoolMetrics;
use sqlx::{PgConnection, PgPool};

/// What the sender knows about a message before sending it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Before {
    /// Parts already done (sent, parked or skipped), from the ledger.
    pub done_parts: Vec<i32>,
    /// The message was parked or skipped (a part of it is recorded `dead_lettered` or
    /// `skipped_blocked`): it is finished, whatever its other parts.
    pub settled: bool,
    /// The chat's user blocked the bot.
    pub blocked: bool,
    /// The chat migrated to this supergroup id.
    pub migrated_to: Option<i64>,
}

/// The lookups of messages about to be sent: those asked for while one runs go together in
/// the next (`courier_db::group`).
pub type Lookups = Batcher<(i64, i64, i64), Before>;

/// Most messages looked up in one statement.
const LOOKUP_BATCH: usize = 256;

/// Starts the lookups' task; `db` times the wait for a connection.
pub fn lookups(pool: PgPool, db: PoolMetrics) -> Lookups {
    Batcher::spawn_with_answers(LOOKUP_BATCH, move |keys: Vec<(i64, i64, i64)>| {
        let (pool, db) = (pool.clone(), db.clone());
        async move {
            let mut conn = db.acquire(&pool).await.map_err(|e| e.to_string())?;
            look_up(&mut conn, &keys).await.map_err(|e| e.to_string())
        }
    })
}

/// Looks up the ledger, the blocked mark and a migration of each (bot, outbox id, chat), in
/// one round trip; the answers in the keys' order.
async fn look_up(
    conn: &mut PgConnection,
    keys: &[(i64, i64, i64)],
) -> Result<Vec<Before>, sqlx::Error> {
    let bots: Vec<i64> = keys.iter().map(|k| k.0).collect();
    let outbox_ids: Vec<i64> = keys.iter().map(|k| k.1).collect();
    let chats: Vec<i64> = keys.iter().map(|k| k.2).collect();
    let rows: Vec<(Option<i64>, bool, Vec<i32>, bool)> = sqlx::query_as(
        "SELECT
            (SELECT to_chat_id FROM chat_migrations WHERE bot_id = k.bot AND from_chat_id = k.chat),
            EXISTS (SELECT 1 FROM blocked_chats WHERE bot_id = k.bot AND chat_id = k.chat),
            COALESCE(l.parts, '{}'),
            COALESCE(l.settled, false)
         FROM unnest($1::bigint[], $2::bigint[], $3::bigint[]) WITH ORDINALITY
             AS k(bot, outbox, chat, n)
         LEFT JOIN LATERAL (
             SELECT array_agg(part) AS parts, bool_or(outcome <> 'sent') AS settled
             FROM sent_messages
             WHERE bot_id = k.bot AND outbox_id = k.outbox AND k.outbox <> 0
         ) l ON true
         ORDER BY k.n",
    )
    .bind(bots)
    .bind(outbox_ids)
    .bind(chats)
    .fetch_all(conn)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(migrated_to, blocked, done_parts, settled)| Before {
            done_parts,
            settled,
            blocked,
            migrated_to,
        })
        .collect())
}

/// Looks up the ledger, the blocked mark and a migration of a message, batched with the
/// other lookups of the moment.
pub async fn before(
    lookups: &Lookups,
    bot_id: i64,
    outbox_id: i64,
    chat_id: i64,
) -> Result<Before, BatchError> {
    lookups.submit((bot_id, outbox_id, chat_id)).await
}

/// One ledger row: `part` of `outbox_id` is done with `outcome`.
#[derive(Debug, Clone)]
pub struct Record {
    /// The bot.
    pub bot_id: i64,
    /// The outbox row (the message's idempotency key).
    pub outbox_id: i64,
    /// The part of a long text.
    pub part: i32,
    /// The chat it went to.
    pub chat_id: i64,
    /// `sent`, `dead_lettered` or `skipped_blocked`.
    pub outcome: &'static str,
    /// Telegram's id of the sent message (of the edited or deleted one, for those calls).
    pub telegram_message_id: Option<i64>,
    /// The bot's name for the message (`SendMessage.key`), on the row of its last part.
    pub msg_key: Option<String>,
}

/// Most ledger rows written in one statement.
const LEDGER_BATCH: usize = 256;

/// How long a ledger row waits for others to share its commit. Only the message's ack waits
/// (the reply is out already); it widens the window in which a crash resends a message by as
/// much (docs/SENDER.md).
pub const LEDGER_LINGER: std::time::Duration = std::time::Duration::from_millis(5);

/// The ledger's writer: rows recorded while a write is in flight go together in the next one
/// (one commit for all of them: `courier_db::group`).
pub type Recorder = Batcher<Record>;

/// Starts the ledger's writer; `db` times the wait for a connection.
pub fn recorder(pool: PgPool, db: PoolMetrics) -> Recorder {
    Batcher::spawn_lingering(LEDGER_BATCH, LEDGER_LINGER, move |rows: Vec<Record>| {
        let (pool, db) = (pool.clone(), db.clone());
        async move {
            let mut conn = db.acquire(&pool).await.map_err(|e| e.to_string())?;
            insert_records(&mut conn, &rows)
                .await
                .map_err(|e| e.to_string())
        }
    })
}

async fn insert_records(conn: &mut PgConnection, rows: &[Record]) -> Result<(), sqlx::Error> {
    let mut bots = Vec::with_capacity(rows.len());
    let mut outbox_ids = Vec::with_capacity(rows.len());
    let mut parts = Vec::with_capacity(rows.len());
    let mut chats = Vec::with_capacity(rows.len());
    let mut outcomes = Vec::with_capacity(rows.len());
    let mut message_ids = Vec::with_capacity(rows.len());
    let mut keys = Vec::with_capacity(rows.len());
    for r in rows {
        bots.push(r.bot_id);
        outbox_ids.push(r.outbox_id);
        parts.push(r.part);
        chats.push(r.chat_id);
        outcomes.push(r.outcome);
        message_ids.push(r.telegram_message_id);
        keys.push(r.msg_key.as_deref());
    }
    // ON CONFLICT DO NOTHING also skips a second row of the same key within the batch.
    sqlx::query(
        "INSERT INTO sent_messages
             (bot_id, outbox_id, part, chat_id, outcome, telegram_message_id, msg_key)
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::int[], $4::bigint[], $5::text[],
                              $6::bigint[], $7::text[])
         ON CONFLICT DO NOTHING",
    )
    .bind(bots)
    .bind(outbox_ids)
    .bind(parts)
    .bind(chats)
    .bind(outcomes)
    .bind(message_ids)
    .bind(keys)
    .execute(conn)
    .await?;
    Ok(())
}

/// Records a ledger row (`part` of `outbox_id` done with `outcome`: `sent`, `dead_lettered`,
/// `skipped_blocked`), and returns once it is committed. Idempotent. Messages without an
/// outbox id (0) are not recorded.
pub async fn record(recorder: &Recorder, row: Record) -> Result<(), BatchError> {
    if row.outbox_id == 0 {
        return Ok(());
    }
    recorder.submit(row).await
}

/// Telegram's id of the latest message the bot asked to send to `chat_id` with `key`
/// (`SendMessage.key`, resolving a `MessageRef.key`): the row with that key of the highest
/// outbox id, if it was sent. `None` when the latest message with that key was not sent
/// (refused and parked: an older message with the key is *not* what the bot means), when no
/// message with that key was sent to the chat, or when its row was pruned
/// (`COURIER_RETENTION`).
pub async fn resolve_key(
    pool: &PgPool,
    bot_id: i64,
    chat_id: i64,
    key: &str,
) -> Result<Option<i64>, sqlx::Error> {
    let id: Option<Option<i64>> = sqlx::query_scalar(
        "SELECT CASE WHEN outcome = 'sent' THEN telegram_message_id END FROM sent_messages
         WHERE bot_id = $1 AND chat_id = $2 AND msg_key = $3
         ORDER BY outbox_id DESC, part DESC
         LIMIT 1",
    )
    .bind(bot_id)
    .bind(chat_id)
    .bind(key)
    .fetch_optional(pool)
    .await?;
    Ok(id.flatten())
}

/// Marks the chat blocked (`blocked_chats`, the one place the platform records blocks: the
/// broadcasts leave it out, the sender skips its messages).
pub async fn mark_blocked(
    pool: &PgPool,
    bot_id: i64,
    chat_id: i64,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO blocked_chats (bot_id, chat_id, reason) VALUES ($1, $2, $3)
         ON CONFLICT (bot_id, chat_id) DO UPDATE SET reason = EXCLUDED.reason",
    )
    .bind(bot_id)
    .bind(chat_id)
    .bind(reason)
    .execute(pool)
    .await?;
    Ok(())
}

/// Records that `from` became the supergroup `to`.
pub async fn record_migration(
    pool: &PgPool,
    bot_id: i64,
    from: i64,
    to: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO chat_migrations (bot_id, from_chat_id, to_chat_id) VALUES ($1, $2, $3)
         ON CONFLICT (bot_id, from_chat_id) DO UPDATE SET to_chat_id = EXCLUDED.to_chat_id",
    )
    .bind(bot_id)
    .bind(from)
    .bind(to)
    .execute(pool)
    .await?;
    Ok(())
}

/// Chats sent to in the last `within`, with how long ago the last call to each was recorded:
/// what an earlier holder of the lease did, so that a new holder keeps each chat's budget
/// across the hand-over (a group's budget spans a minute). `sent_at` is written after
/// Telegram's answer, so the age errs on the safe side.
pub async fn recent_sends(
    pool: &PgPool,
    bot_id: i64,
    within: std::time::Duration,
) -> Result<Vec<(i64, std::time::Duration)>, sqlx::Error> {
    let rows: Vec<(i64, f64)> = sqlx::query_as(
        "SELECT chat_id, EXTRACT(EPOCH FROM now() - max(sent_at))::float8
         FROM sent_messages
         WHERE bot_id = $1 AND outcome = 'sent' AND sent_at > now() - make_interval(secs => $2)
         GROUP BY chat_id",
    )
    .bind(bot_id)
    .bind(within.as_secs_f64())
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(chat, age)| (chat, std::time::Duration::from_secs_f64(age.max(0.0))))
        .collect())
}
