//! The notes bot's SQL: `/history`'s read and the writes of its steps, on the update's
//! transaction. Bound parameters only: a note is stored exactly as sent.

use chrono::{DateTime, Utc};
use courier_bot_api::Stored;
use sqlx::Row;

use crate::{Note, Write, HISTORY_LEN};

/// The sender's last [`HISTORY_LEN`] notes in the chat, newest first.
pub(crate) async fn history(
    conn: &mut sqlx::PgConnection,
    bot_id: i64,
    chat_id: i64,
    user_id: i64,
) -> Result<Vec<Note>, sqlx::Error> {
    sqlx::query(
        "SELECT text, sent_at FROM messages WHERE bot_id = $1 AND chat_id = $2 AND user_id = $3 \
         ORDER BY id DESC LIMIT $4",
    )
    .bind(bot_id)
    .bind(chat_id)
    .bind(user_id)
    .bind(HISTORY_LEN as i64)
    .fetch_all(conn)
    .await?
    .into_iter()
    .map(|r| {
        Ok(Note {
            text: r.try_get("text")?,
            at: r.try_get("sent_at")?,
        })
    })
    .collect()
}

/// Applies the writes of one or many steps. The notes — the hot path: one per text message
/// — go in one multi-row statement whatever their number; users and blocks, rare, one
/// statement each, in order.
pub(crate) async fn write(
    conn: &mut sqlx::PgConnection,
    writes: &[Stored<'_, Write>],
) -> Result<(), sqlx::Error> {
    let mut notes = Notes::default();
    for w in writes {
        match w.write {
            Write::SaveNote {
                chat_id,
                user_id,
                text,
                at,
            } => {
                notes.bots.push(w.bot_id);
                notes.updates.push(w.update_id);
                notes.chats.push(*chat_id);
                notes.users.push(*user_id);
                notes.texts.push(text.as_str());
                notes.ats.push(*at);
            }
            Write::UpsertUser { user, chat_id } => {
                sqlx::query(
                    "INSERT INTO users (bot_id, user_id, chat_id, first_name, last_name, username) \
                     VALUES ($1, $2, $3, $4, $5, $6) \
                     ON CONFLICT (bot_id, user_id) DO UPDATE SET chat_id = EXCLUDED.chat_id, \
                     first_name = EXCLUDED.first_name, last_name = EXCLUDED.last_name, \
                     username = EXCLUDED.username, updated_at = now()",
                )
                .bind(w.bot_id)
                .bind(user.id)
                .bind(chat_id)
                .bind(&user.first_name)
                .bind(&user.last_name)
                .bind(&user.username)
                .execute(&mut *conn)
                .await?;
            }
            Write::SetUserBlocked { chat_id, blocked } => {
                sqlx::query(
                    "UPDATE users SET blocked_at = CASE WHEN $3 THEN now() END \
                     WHERE bot_id = $1 AND chat_id = $2",
                )
                .bind(w.bot_id)
                .bind(chat_id)
                .bind(blocked)
                .execute(&mut *conn)
                .await?;
            }
        }
    }
    if !notes.texts.is_empty() {
        sqlx::query(
            "INSERT INTO messages (bot_id, chat_id, user_id, update_id, text, sent_at) \
             SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], \
                                  $5::text[], $6::timestamptz[])",
        )
        .bind(&notes.bots)
        .bind(&notes.chats)
        .bind(&notes.users)
        .bind(&notes.updates)
        .bind(&notes.texts)
        .bind(&notes.ats)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

/// The notes of a batch, as the columns of one multi-row insert.
#[derive(Default)]
struct Notes<'a> {
    bots: Vec<i64>,
    updates: Vec<i64>,
    chats: Vec<i64>,
    users: Vec<i64>,
    texts: Vec<&'a str>,
    ats: Vec<DateTime<Utc>>,
}
