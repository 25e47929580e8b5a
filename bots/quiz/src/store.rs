//! The quiz bot's SQL, on the update's transaction: `/score`'s read and the write of a
//! finished quiz. Bound parameters only.

use courier_bot_api::Stored;
use sqlx::Row;

use crate::{QuizResult, Scores, Write};

/// The user's latest and best results and how many quizzes they finished, in one statement.
pub(crate) async fn scores(
    conn: &mut sqlx::PgConnection,
    bot_id: i64,
    user_id: i64,
) -> Result<Scores, sqlx::Error> {
    let row = sqlx::query(
        "SELECT l.score AS last_score, l.total AS last_total, l.finished_at AS last_at, \
                b.score AS best_score, b.total AS best_total, b.finished_at AS best_at, \
                (SELECT count(*) FROM quiz_results WHERE bot_id = $1 AND user_id = $2) AS finished \
         FROM (SELECT score, total, finished_at FROM quiz_results \
               WHERE bot_id = $1 AND user_id = $2 \
               ORDER BY finished_at DESC, id DESC LIMIT 1) l \
         CROSS JOIN (SELECT score, total, finished_at FROM quiz_results \
               WHERE bot_id = $1 AND user_id = $2 \
               ORDER BY score::float8 / total DESC, finished_at DESC, id DESC LIMIT 1) b",
    )
    .bind(bot_id)
    .bind(user_id)
    .fetch_optional(conn)
    .await?;
    let Some(row) = row else {
        return Ok(Scores::default());
    };
    let result = |prefix: &str| -> Result<QuizResult, sqlx::Error> {
        Ok(QuizResult {
            score: unsigned(row.try_get(format!("{prefix}_score").as_str())?)?,
            total: unsigned(row.try_get(format!("{prefix}_total").as_str())?)?,
            finished_at: row.try_get(format!("{prefix}_at").as_str())?,
        })
    };
    let finished: i64 = row.try_get("finished")?;
    Ok(Scores {
        last: Some(result("last")?),
        best: Some(result("best")?),
        finished: u64::try_from(finished).map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
    })
}

fn unsigned(v: i32) -> Result<u32, sqlx::Error> {
    u32::try_from(v).map_err(|e| sqlx::Error::Decode(Box::new(e)))
}

fn signed(v: u32) -> Result<i32, sqlx::Error> {
    i32::try_from(v).map_err(|e| sqlx::Error::Encode(Box::new(e)))
}

/// Records the finished quizzes of one or many steps in one multi-row statement. A result
/// already recorded for its update (a redelivery) is skipped.
pub(crate) async fn write(
    conn: &mut sqlx::PgConnection,
    writes: &[Stored<'_, Write>],
) -> Result<(), sqlx::Error> {
    let mut rows = Results::default();
    for w in writes {
        match w.write {
            Write::Finished {
                chat_id,
                user_id,
                score,
                total,
            } => {
                rows.bots.push(w.bot_id);
                rows.chats.push(*chat_id);
                rows.users.push(*user_id);
                rows.updates.push(w.update_id);
                rows.fingerprints.push(w.update_fingerprint);
                rows.scores.push(signed(*score)?);
                rows.totals.push(signed(*total)?);
            }
        }
    }
    if rows.bots.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO quiz_results \
         (bot_id, chat_id, user_id, update_id, update_fingerprint, score, total) \
         SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[], \
                              $7::bigint[], $5::int[], $6::int[]) \
         ON CONFLICT (bot_id, update_id, update_fingerprint) DO NOTHING",
    )
    .bind(&rows.bots)
    .bind(&rows.chats)
    .bind(&rows.users)
    .bind(&rows.updates)
    .bind(&rows.scores)
    .bind(&rows.totals)
    .bind(&rows.fingerprints)
    .execute(conn)
    .await?;
    Ok(())
}

/// The results of a batch, as the columns of one multi-row insert.
#[derive(Default)]
struct Results {
    bots: Vec<i64>,
    chats: Vec<i64>,
    users: Vec<i64>,
    updates: Vec<i64>,
    fingerprints: Vec<i64>,
    scores: Vec<i32>,
    totals: Vec<i32>,
}
