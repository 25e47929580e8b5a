//! The quiz bot's own table on a real PostgreSQL: its migrations create `quiz_results`;
//! `QuizBot::write` records many steps' results in one call, once per update (a redelivery
//! adds nothing; an update id Telegram reused for another update is another update); `QuizBot::read` gives `/score` the user's latest and best results and count,
//! per bot. The worker's side (one transaction per update, the registry) is tested end to end
//! elsewhere.

use chrono::Utc;
use courier_bot_api::{Bot, Incoming, Stored};
use courier_quiz::{Input, QuizBot, QuizResult, Scores, UserInfo, Write};
use sqlx::{Connection, PgConnection};

const BOT: i64 = 100_001;
const OTHER_BOT: i64 = 200_002;

fn finished(chat_id: i64, user_id: i64, score: u32) -> Write {
    Write::Finished {
        chat_id,
        user_id,
        score,
        total: 5,
    }
}

/// The fingerprint of the updates these tests write for (one per update id, but for
/// [`REUSED`]).
const FINGERPRINT: i64 = 0x5eed;
/// The fingerprint of another update that Telegram gave an id already used (after a week).
const REUSED: i64 = 0x0dd;

/// Writes `(bot_id, update_id, write)`s in one call, in a transaction of their own.
async fn write(conn: &mut PgConnection, writes: &[(i64, i64, Write)]) -> anyhow::Result<()> {
    write_as(conn, writes, FINGERPRINT).await
}

/// [`write`], the updates with this fingerprint.
async fn write_as(
    conn: &mut PgConnection,
    writes: &[(i64, i64, Write)],
    fingerprint: i64,
) -> anyhow::Result<()> {
    let stored: Vec<Stored<'_, Write>> = writes
        .iter()
        .map(|(bot_id, update_id, write)| Stored {
            bot_id: *bot_id,
            update_id: *update_id,
            update_fingerprint: fingerprint,
            write,
        })
        .collect();
    let mut tx = conn.begin().await?;
    QuizBot.write(&mut tx, &stored).await?;
    tx.commit().await?;
    Ok(())
}

/// `/score` of `user_id` as the worker would read it.
async fn scores(conn: &mut PgConnection, bot_id: i64, user_id: i64) -> anyhow::Result<Scores> {
    let incoming = Incoming {
        chat_id: user_id,
        from: Some(UserInfo {
            id: user_id,
            first_name: "Ada".into(),
            last_name: None,
            username: None,
        }),
        date: Utc::now(),
        input: Input::Command(courier_bot_api::parse_command("/score").expect("a command")),
    };
    assert!(QuizBot.needs_read(&incoming));
    let mut tx = conn.begin().await?;
    let scores = QuizBot.read(&mut tx, bot_id, &incoming).await?;
    tx.rollback().await?;
    Ok(scores)
}

fn score_and_total(r: Option<QuizResult>) -> Option<(u32, u32)> {
    r.map(|r| (r.score, r.total))
}

#[tokio::test]
async fn quiz_results_are_written_once_per_update_and_read_back_for_score() -> anyhow::Result<()> {
    let pg = courier_tests::Postgres::fresh().await?;
    let mut conn = PgConnection::connect(pg.url()).await?;
    QuizBot
        .migrations()
        .expect("the quiz bot has migrations")
        .run(&mut conn)
        .await?;

    assert_eq!(
        scores(&mut conn, BOT, 7).await?,
        Scores::default(),
        "none yet"
    );

    // A batch of several updates' results (as the worker's group commit hands them over),
    // then a later one, then a redelivery of the first batch.
    let first = [
        (BOT, 1, finished(7, 7, 2)),
        (BOT, 2, finished(-100, 8, 5)),
        (OTHER_BOT, 1, finished(7, 7, 5)),
        (BOT, 3, finished(7, 7, 4)),
    ];
    write(&mut conn, &first).await?;
    write(&mut conn, &[(BOT, 4, finished(7, 7, 3))]).await?;
    write(&mut conn, &first).await?;
    write(&mut conn, &[]).await?;

    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM quiz_results")
        .fetch_one(&mut conn)
        .await?;
    assert_eq!(rows, 5, "a redelivered update adds nothing");
    // Another update with a reused id (Telegram, after a week without updates) is recorded.
    write_as(&mut conn, &[(BOT, 1, finished(9, 9, 1))], REUSED).await?;
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM quiz_results WHERE user_id = 9")
        .fetch_one(&mut conn)
        .await?;
    assert_eq!(
        rows, 1,
        "an update id reused for another update is another update"
    );

    let ada = scores(&mut conn, BOT, 7).await?;
    assert_eq!(
        score_and_total(ada.last),
        Some((3, 5)),
        "the latest: {ada:?}"
    );
    assert_eq!(score_and_total(ada.best), Some((4, 5)), "the best: {ada:?}");
    assert_eq!(ada.finished, 3);
    let (last, best) = (ada.last.unwrap(), ada.best.unwrap());
    assert!(last.finished_at >= best.finished_at);
    assert!(last.finished_at <= Utc::now());

    let in_the_group = scores(&mut conn, BOT, 8).await?;
    assert_eq!(score_and_total(in_the_group.best), Some((5, 5)));
    assert_eq!(in_the_group.finished, 1);
    let other_bot = scores(&mut conn, OTHER_BOT, 7).await?;
    assert_eq!(
        (score_and_total(other_bot.best), other_bot.finished),
        (Some((5, 5)), 1),
        "each bot sees its own results"
    );
    Ok(())
}

#[tokio::test]
async fn the_quiz_table_refuses_impossible_scores() -> anyhow::Result<()> {
    let pg = courier_tests::Postgres::fresh().await?;
    let mut conn = PgConnection::connect(pg.url()).await?;
    QuizBot
        .migrations()
        .expect("migrations")
        .run(&mut conn)
        .await?;
    let bad = Write::Finished {
        chat_id: 7,
        user_id: 7,
        score: 6,
        total: 5,
    };
    let err = write(&mut conn, &[(BOT, 1, bad)]).await.unwrap_err();
    let db = err
        .downcast_ref::<sqlx::Error>()
        .and_then(|e| e.as_database_error())
        .expect("a database error");
    assert_eq!(
        db.code().as_deref(),
        Some("23514"),
        "a CHECK violation: {db}"
    );
    Ok(())
}
