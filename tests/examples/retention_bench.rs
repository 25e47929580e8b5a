//! What pruning costs (`courier_worker::retention`): one pass over N old rows in each
//! bookkeeping table (`processed_updates`, `sent_messages`, published `outbox` rows), while a
//! load applies updates the way the worker does, against a real PostgreSQL.
//!
//! `cargo run -p courier-tests --example retention_bench -- [rows per table] [batch] [load seconds]`
//! (defaults: 1000000, 1000, 10).
//!
//! The load: 8 tasks, each applying `/start` of new chats through `store::apply` (the worker's
//! transaction: claim, state lock, flood counter, FSM, user, outbox, state), then marking the outbox row
//! published and writing the sender's ledger row, as the worker and the sender do — every
//! applied update adds one row to each pruned table. The order check's direct get is answered
//! "nothing earlier" (no NATS here). It runs alone for the baseline, then again while one
//! pruning pass runs. Printed: the plan of one batch per table (`EXPLAIN ANALYZE`, rolled
//! back), the pass's time and rows/s, and the load's throughput and latency in both phases.

use std::time::{Duration, Instant};

use courier_common::CancellationToken;
use courier_notes::{Incoming, Input, UserInfo};
use courier_worker::retention::{self, Pass};
use courier_worker::store::{self, Applied, NextOnSubject, StoreError, UpdateRef};
use sqlx::PgPool;

const LOAD_TASKS: i64 = 8;
const BOT: i64 = 1;

struct NothingEarlier;

impl NextOnSubject for NothingEarlier {
    async fn next_from(&self, _from: u64) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }
}

/// One update through the worker's and the sender's bookkeeping.
async fn one_update(pool: &PgPool, chat: i64) -> anyhow::Result<()> {
    let incoming = Incoming {
        chat_id: chat,
        from: Some(UserInfo {
            id: chat,
            first_name: "Load".into(),
            last_name: None,
            username: None,
        }),
        date: chrono::Utc::now(),
        input: Input::Command {
            name: "start".into(),
            args: String::new(),
        },
    };
    let upd = UpdateRef {
        bot_id: BOT,
        update_id: chat,
        chat_id: chat,
        seq: chat as u64,
        fingerprint: 1,
        epoch: 1,
        epoch_confirmed: true,
        prev_on_subject: None,
        received_at_ms: 0,
        trace: None,
    };
    let Applied::Applied { publish: rows, .. } = store::apply(
        pool,
        &courier_notes::NotesBot,
        upd,
        &incoming,
        0,
        &NothingEarlier,
        store::FloodBudget::default(),
        &[],
    )
    .await?
    else {
        anyhow::bail!("update {chat} not applied");
    };
    let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
    store::mark_published(pool, &ids).await?;
    for id in ids {
        sqlx::query(
            "INSERT INTO sent_messages (bot_id, outbox_id, part, chat_id, telegram_message_id) \
             VALUES ($1, $2, 0, $3, $2) ON CONFLICT DO NOTHING",
        )
        .bind(BOT)
        .bind(id)
        .bind(chat)
        .execute(pool)
        .await?;
    }
    Ok(())
}

/// Runs the load until `stop` fires; returns each update's latency.
async fn load(pool: PgPool, first_chat: i64, stop: CancellationToken) -> Vec<Duration> {
    let tasks: Vec<_> = (0..LOAD_TASKS)
        .map(|t| {
            let pool = pool.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut chat = first_chat + t * 10_000_000;
                while !stop.is_cancelled() {
                    let started = Instant::now();
                    one_update(&pool, chat).await.expect("load update");
                    lat.push(started.elapsed());
                    chat += 1;
                }
                lat
            })
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("load task"));
    }
    all.sort();
    all
}

fn summary(lat: &[Duration], secs: f64) -> String {
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    format!(
        "{} updates in {secs:.1} s = {:.0}/s; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat.len(),
        lat.len() as f64 / secs,
        q(0.5).as_secs_f64() * 1e3,
        q(0.99).as_secs_f64() * 1e3,
        lat.last().unwrap().as_secs_f64() * 1e3
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rows: i64 = args
        .first()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(1_000_000);
    let batch: i64 = args.get(1).map(|a| a.parse()).transpose()?.unwrap_or(1000);
    let load_secs: u64 = args.get(2).map(|a| a.parse()).transpose()?.unwrap_or(10);

    let pg = courier_tests::Postgres::fresh().await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(LOAD_TASKS as u32 + 2)
        .connect(pg.url())
        .await?;
    courier_worker::MIGRATOR.run(&pool).await?;

    let started = Instant::now();
    for sql in [
        "INSERT INTO processed_updates (bot_id, update_id, update_fingerprint, chat_id, stream_seq, processed_at) \
         SELECT 2, i, 0, i % 100000, i, now() - interval '8 days' + i * interval '1 ms' FROM generate_series(1, $1) i",
        "INSERT INTO sent_messages (bot_id, outbox_id, part, chat_id, sent_at) \
         SELECT 2, i, 0, i % 100000, now() - interval '8 days' + i * interval '1 ms' FROM generate_series(1, $1) i",
        "INSERT INTO outbox (bot_id, chat_id, origin_update_id, text, created_at, published_at) \
         SELECT 2, i % 100000, i, 'Welcome! Send me any text and I will keep it as a note.', \
         now() - interval '8 days' + i * interval '1 ms', now() - interval '8 days' + i * interval '1 ms' \
         FROM generate_series(1, $1) i",
    ] {
        sqlx::query(sql).bind(rows).execute(&pool).await?;
    }
    sqlx::raw_sql("VACUUM ANALYZE processed_updates, sent_messages, outbox")
        .execute(&pool)
        .await?;
    println!(
        "seeded {rows} old rows in each of processed_updates, sent_messages, outbox in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // The plan of one batch per table, rolled back.
    for table in ["processed_updates", "sent_messages", "outbox"] {
        let sql = retention::delete_statement(table).expect("a pruned table");
        let mut tx = pool.begin().await?;
        let plan: Vec<String> = sqlx::query_scalar(&format!(
            "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) {}",
            sql.replace("$1", "now() - interval '7 days'")
                .replace("$2", &batch.to_string())
        ))
        .fetch_all(&mut *tx)
        .await?;
        tx.rollback().await?;
        println!(
            "\none batch of {batch} from {table}:\n  {}",
            plan.join("\n  ")
        );
        // The worker runs it as a prepared statement: the plan PostgreSQL may switch to after
        // five executions (the generic one) must use the index too.
        let mut conn = pool.acquire().await?;
        sqlx::raw_sql(&format!(
            "SET plan_cache_mode = force_generic_plan; PREPARE prune_batch(timestamptz, bigint) AS {sql}"
        ))
        .execute(&mut *conn)
        .await?;
        let generic: Vec<String> = sqlx::query_scalar(&format!(
            "EXPLAIN (COSTS OFF) EXECUTE prune_batch(now() - interval '7 days', {batch})"
        ))
        .fetch_all(&mut *conn)
        .await?;
        sqlx::raw_sql("DEALLOCATE prune_batch; RESET plan_cache_mode")
            .execute(&mut *conn)
            .await?;
        println!("  generic plan:\n    {}", generic.join("\n    "));
    }

    // Baseline: the load alone.
    let stop = CancellationToken::new();
    let baseline = tokio::spawn(load(pool.clone(), 1, stop.clone()));
    tokio::time::sleep(Duration::from_secs(load_secs)).await;
    stop.cancel();
    let lat = baseline.await?;
    println!("\nload alone: {}", summary(&lat, load_secs as f64));

    // One pruning pass while the load runs.
    let stop = CancellationToken::new();
    let during = tokio::spawn(load(pool.clone(), 100_000_000, stop.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let settings = retention::Args {
        batch,
        ..Default::default()
    }
    .settings()?;
    let started = Instant::now();
    let pass = retention::prune_once(&pool, &settings, &CancellationToken::new()).await?;
    let took = started.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.cancel();
    let lat = during.await?;
    let Pass::Pruned(p) = pass else {
        anyhow::bail!("the pass did not prune: {pass:?}");
    };
    let total = p.processed_updates + p.sent_messages + p.outbox;
    println!(
        "pruning pass (batch {batch}): {p:?} = {total} rows in {:.1} s = {:.0} rows/s",
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64()
    );
    println!(
        "load during the pass: {}",
        summary(&lat, took.as_secs_f64() + 1.0)
    );
    Ok(())
}
