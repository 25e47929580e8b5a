//! Measures how long partitions take to move between worker processes after a join, a
//! SIGKILL and a graceful stop, with real nats-server and PostgreSQL.
//!
//! `cargo run -p courier-tests --example rebalance [-- --defaults]`
//!
//! Without `--defaults` the workers run with the test timings (heartbeat 300 ms, member TTL
//! 1.5 s, priority timeout 1 s); with it, with the production defaults (1 s, 4 s, 3 s). For
//! each event it reports two times: until the live workers' own views agree on a balanced
//! assignment ("owned"), and until an update published to a partition that had to move is
//! applied ("applied").

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use courier_common::partition::partition_of;
use courier_tests::procs::WorkerProcess;
use courier_tests::{eventually, text_update, Services, Stack, SECRET};

const P: u32 = 32;

async fn balanced(stack: &Stack, workers: &[&WorkerProcess]) -> anyhow::Result<Vec<Vec<u32>>> {
    eventually("balanced partitions", Duration::from_secs(60), || async {
        let mut views = Vec::new();
        for w in workers {
            let Some(p) = w.partitions(&stack.http).await else {
                return Ok(None);
            };
            views.push(p);
        }
        let all: Vec<u32> = views.iter().flatten().copied().collect();
        let distinct: BTreeSet<u32> = all.iter().copied().collect();
        let loads: Vec<usize> = views.iter().map(Vec::len).collect();
        let spread = loads.iter().max().unwrap_or(&0) - loads.iter().min().unwrap_or(&0);
        Ok(
            (all.len() == P as usize && distinct.len() == P as usize && spread <= 1)
                .then_some(views),
        )
    })
    .await
}

fn chat_in(partition: u32, salt: i64) -> i64 {
    (salt * 1000..)
        .find(|c| partition_of(*c, P) == partition)
        .unwrap()
}

/// Posts one update to `chat` and returns the time from `started` until it is applied.
async fn time_to_apply(
    stack: &Stack,
    chat: i64,
    update_id: i64,
    started: Instant,
    text: &str,
) -> anyhow::Result<Duration> {
    let body = text_update(update_id, chat, text).to_string();
    eventually(
        "the webhook to accept the probe",
        Duration::from_secs(30),
        || {
            let body = body.clone();
            async move { Ok((stack.post_webhook(body, Some(SECRET)).await? == 200).then_some(())) }
        },
    )
    .await?;
    eventually("the probe applied", Duration::from_secs(60), || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM processed_updates WHERE update_id = $1")
                .bind(update_id)
                .fetch_one(&stack.db)
                .await?;
        Ok((n == 1).then_some(()))
    })
    .await?;
    Ok(started.elapsed())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let defaults = std::env::args().any(|a| a == "--defaults");
    let env: &[(&str, &str)] = if defaults {
        &[
            ("COURIER_WORKER_HEARTBEAT", "1s"),
            ("COURIER_WORKER_MEMBER_TTL", "4s"),
            ("COURIER_WORKER_PRIORITY_TIMEOUT", "3s"),
        ]
    } else {
        &[]
    };
    println!(
        "timings: {}",
        if defaults {
            "production defaults (heartbeat 1s, TTL 4s, priority timeout 3s)"
        } else {
            "test (heartbeat 300ms, TTL 1.5s, priority timeout 1s)"
        }
    );
    println!(
        "{:<6} {:<10} {:>10} {:>10}",
        "round", "event", "owned", "applied"
    );
    for round in 0..3 {
        let stack = Stack::start_with(Services::IngressOnly).await?;
        let (nats, db) = (stack.nats.url(), stack.pg.url().to_owned());
        let mut w1 = WorkerProcess::start_with("w1", &nats, &db, env).await?;
        let mut w2 = WorkerProcess::start_with("w2", &nats, &db, env).await?;
        let w3 = WorkerProcess::start_with("w3", &nats, &db, env).await?;
        balanced(&stack, &[&w1, &w2, &w3]).await?;
        let mut next_id = 1;

        let t = Instant::now();
        let w4 = WorkerProcess::start_with("w4", &nats, &db, env).await?;
        let views = balanced(&stack, &[&w1, &w2, &w3, &w4]).await?;
        println!(
            "{round:<6} {:<10} {:>9.2}s {:>10}",
            "join",
            t.elapsed().as_secs_f64(),
            "-"
        );

        // Probe chats in a partition of w1 and of w2, registered before the events.
        let (c1, c2) = (chat_in(views[0][0], 1), chat_in(views[1][0], 2));
        for chat in [c1, c2] {
            time_to_apply(&stack, chat, next_id, Instant::now(), "/start").await?;
            next_id += 1;
        }

        let t = Instant::now();
        w1.kill().await?;
        let applied = time_to_apply(&stack, c1, next_id, t, "probe").await?;
        next_id += 1;
        balanced(&stack, &[&w2, &w3, &w4]).await?;
        let owned = t.elapsed();
        println!(
            "{round:<6} {:<10} {:>9.2}s {:>9.2}s",
            "sigkill",
            owned.as_secs_f64(),
            applied.as_secs_f64()
        );

        let t = Instant::now();
        w2.terminate().await?;
        let applied = time_to_apply(&stack, c2, next_id, t, "probe").await?;
        balanced(&stack, &[&w3, &w4]).await?;
        let owned = t.elapsed();
        println!(
            "{round:<6} {:<10} {:>9.2}s {:>9.2}s",
            "sigterm",
            owned.as_secs_f64(),
            applied.as_secs_f64()
        );
    }
    Ok(())
}
