//! `GetChat` and `ResetChat`.
//!
//! **Reset** sets the chat's `dialogue_states.state` to JSON `null`, which the worker reads as
//! the bot's start state (`Default` of `Bot::State`, whatever the bot: the notes bot waits for
//! `/start` again), in one `UPDATE`, which takes the row lock the worker's transaction takes, so it never
//! interleaves with an update being applied. Everything else is kept: the order guard
//! (`last_seq`, `stream_epoch`, `last_update_id`, `updated_at`), the notes, the users (and their
//! blocked mark), `blocked_chats`, `processed_updates`, the outbox and the sender's ledger — a
//! reset changes what the bot does next, never whether an update counts as applied.

use tonic::Status;

use courier_proto::admin::v1 as pb;

use crate::Ctx;

fn db(e: sqlx::Error) -> Status {
    Status::unavailable(format!("PostgreSQL: {e}"))
}

fn ms(t: chrono::DateTime<chrono::Utc>) -> i64 {
    t.timestamp_millis()
}

type StateRow = (
    serde_json::Value,
    i64,
    i64,
    i64,
    chrono::DateTime<chrono::Utc>,
);
type UserRow = (
    i64,
    String,
    Option<String>,
    Option<String>,
    chrono::DateTime<chrono::Utc>,
    Option<chrono::DateTime<chrono::Utc>>,
);

/// One chat.
pub async fn get(ctx: &Ctx, req: pb::GetChatRequest) -> Result<pb::Chat, Status> {
    let chat = req.chat_id;
    let notes = match req.notes {
        0 => 5,
        n => n.min(100),
    } as i64;
    let state: Option<StateRow> = sqlx::query_as(
        "SELECT state, last_update_id, last_seq, stream_epoch, updated_at
         FROM dialogue_states WHERE bot_id = $1 AND chat_id = $2",
    )
    .bind(ctx.bot_id)
    .bind(chat)
    .fetch_optional(&ctx.pool)
    .await
    .map_err(db)?;
    let users: Vec<UserRow> = sqlx::query_as(
        "SELECT user_id, first_name, last_name, username, registered_at, blocked_at
         FROM users WHERE bot_id = $1 AND chat_id = $2 ORDER BY user_id",
    )
    .bind(ctx.bot_id)
    .bind(chat)
    .fetch_all(&ctx.pool)
    .await
    .map_err(db)?;
    let last_notes: Vec<(i64, i64, i64, String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT id, user_id, update_id, text, sent_at FROM messages
             WHERE bot_id = $1 AND chat_id = $2 ORDER BY id DESC LIMIT $3",
    )
    .bind(ctx.bot_id)
    .bind(chat)
    .bind(notes)
    .fetch_all(&ctx.pool)
    .await
    .map_err(db)?;
    let blocked: Option<(String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT reason, blocked_at FROM blocked_chats WHERE bot_id = $1 AND chat_id = $2",
    )
    .bind(ctx.bot_id)
    .bind(chat)
    .fetch_optional(&ctx.pool)
    .await
    .map_err(db)?;
    let unpublished: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox
         WHERE bot_id = $1 AND chat_id = $2 AND published_at IS NULL",
    )
    .bind(ctx.bot_id)
    .bind(chat)
    .fetch_one(&ctx.pool)
    .await
    .map_err(db)?;
    let mut out = pb::Chat {
        chat_id: chat,
        known: state.is_some(),
        users: users
            .into_iter()
            .map(|(id, first, last, username, at, blocked)| pb::User {
                user_id: id,
                first_name: first,
                last_name: last.unwrap_or_default(),
                username: username.unwrap_or_default(),
                registered_at_unix_ms: ms(at),
                blocked_at_unix_ms: blocked.map(ms).unwrap_or(0),
            })
            .collect(),
        last_notes: last_notes
            .into_iter()
            .map(|(id, user_id, update_id, text, at)| pb::Note {
                id,
                user_id,
                update_id,
                text,
                sent_at_unix_ms: ms(at),
            })
            .collect(),
        blocked: Some(match blocked {
            Some((reason, at)) => pb::Blocked {
                blocked: true,
                reason,
                since_unix_ms: ms(at),
            },
            None => pb::Blocked::default(),
        }),
        unpublished_replies: unpublished as u64,
        ..Default::default()
    };
    if let Some((state, last_update_id, last_seq, epoch, updated_at)) = state {
        out.state = state.to_string();
        out.last_update_id = last_update_id;
        out.last_applied_seq = last_seq.max(0) as u64;
        out.stream_epoch = epoch;
        out.updated_at_unix_ms = ms(updated_at);
    }
    Ok(out)
}

/// Sets the chat's dialogue state back to the start (see the module documentation).
pub async fn reset(ctx: &Ctx, req: pb::ResetChatRequest) -> Result<pb::ResetChatResponse, Status> {
    // The bot's start state, whatever the bot (see the module documentation).
    let start = serde_json::Value::Null;
    let mut tx = ctx.pool.begin().await.map_err(db)?;
    let previous: Option<serde_json::Value> = sqlx::query_scalar(
        "SELECT state FROM dialogue_states WHERE bot_id = $1 AND chat_id = $2 FOR UPDATE",
    )
    .bind(ctx.bot_id)
    .bind(req.chat_id)
    .fetch_optional(&mut *tx)
    .await
    .map_err(db)?;
    let Some(previous) = previous else {
        return Ok(pb::ResetChatResponse {
            reset: false,
            previous_state: String::new(),
            state: String::new(),
        });
    };
    sqlx::query("UPDATE dialogue_states SET state = $3 WHERE bot_id = $1 AND chat_id = $2")
        .bind(ctx.bot_id)
        .bind(req.chat_id)
        .bind(&start)
        .execute(&mut *tx)
        .await
        .map_err(db)?;
    tx.commit().await.map_err(db)?;
    tracing::info!(chat_id = req.chat_id, %previous, "chat reset to the start state");
    Ok(pb::ResetChatResponse {
        reset: true,
        previous_state: previous.to_string(),
        state: start.to_string(),
    })
}
