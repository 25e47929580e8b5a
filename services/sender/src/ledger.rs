//! The sender's PostgreSQL bookkeeping: the sent ledger, blocked chats, chat migrations.
//!
//! Tables from `migrations/20261126000003_sender.up.sql`.

use sqlx::PgPool;

/// What the sender knows about a message before sending it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Before {
    /// Parts already done (sent, parked or skipped), from the ledger.
    pub done_parts: Vec<i32>,
    /// The chat's user blocked the bot.
    pub blocked: bool,
    /// The chat migrated to this supergroup id.
    pub migrated_to: Option<i64>,
}

/// Looks up the ledger, the blocked mark and a migration in one round trip.
pub async fn before(
    pool: &PgPool,
    bot_id: i64,
    outbox_id: i64,
    chat_id: i64,
) -> Result<Before, sqlx::Error> {
    let (migrated_to, blocked, done_parts): (Option<i64>, bool, Vec<i32>) = sqlx::query_as(
        "SELECT
            (SELECT to_chat_id FROM chat_migrations WHERE bot_id = $1 AND from_chat_id = $3),
            EXISTS (SELECT 1 FROM blocked_chats WHERE bot_id = $1 AND chat_id = $3),
            COALESCE((SELECT array_agg(part) FROM sent_messages
                      WHERE bot_id = $1 AND outbox_id = $2 AND $2 <> 0), '{}')",
    )
    .bind(bot_id)
    .bind(outbox_id)
    .bind(chat_id)
    .fetch_one(pool)
    .await?;
    Ok(Before {
        done_parts,
        blocked,
        migrated_to,
    })
}

/// Records that `part` of `outbox_id` is done with `outcome` (`sent`, `dead_lettered`,
/// `skipped_blocked`). Idempotent. Messages without an outbox id (0) are not recorded.
pub async fn record(
    pool: &PgPool,
    bot_id: i64,
    outbox_id: i64,
    part: i32,
    chat_id: i64,
    outcome: &str,
    telegram_message_id: Option<i64>,
) -> Result<(), sqlx::Error> {
    if outbox_id == 0 {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO sent_messages (bot_id, outbox_id, part, chat_id, outcome, telegram_message_id)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(bot_id)
    .bind(outbox_id)
    .bind(part)
    .bind(chat_id)
    .bind(outcome)
    .bind(telegram_message_id)
    .execute(pool)
    .await?;
    Ok(())
}

/// Marks the chat blocked, and its user (`users.blocked_at`; private chat id = user id).
pub async fn mark_blocked(
    pool: &PgPool,
    bot_id: i64,
    chat_id: i64,
    reason: &str,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO blocked_chats (bot_id, chat_id, reason) VALUES ($1, $2, $3)
         ON CONFLICT (bot_id, chat_id) DO UPDATE SET reason = EXCLUDED.reason",
    )
    .bind(bot_id)
    .bind(chat_id)
    .bind(reason)
    .execute(&mut *tx)
    .await?;
    sqlx::query("UPDATE users SET blocked_at = now() WHERE bot_id = $1 AND user_id = $2 AND blocked_at IS NULL")
        .bind(bot_id)
        .bind(chat_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
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
