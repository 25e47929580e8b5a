//! Every service's `/metrics` after a conversation: counters and histograms moved by exactly
//! what happened (the catalogue is `docs/OPERATIONS.md`, *Metrics*).

use std::time::Duration;

use anyhow::{ensure, Result};
use courier_tests::metrics::{scrape, Exposition};
use courier_tests::{eventually, Services, Stack, DEADLINE};

/// The four services' expositions, scraped one after the other.
struct Scraped {
    ingress: Exposition,
    worker: Exposition,
    sender: Exposition,
    sandbox: Exposition,
}

async fn scrape_all(stack: &Stack, worker: std::net::SocketAddr) -> Result<Scraped> {
    Ok(Scraped {
        ingress: scrape(&stack.http, stack.ingress_addr()).await?,
        worker: scrape(&stack.http, worker).await?,
        sender: scrape(&stack.http, stack.sender_health()).await?,
        sandbox: scrape(&stack.http, stack.sandbox_addr()).await?,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_moves_every_services_metrics_by_what_happened() -> Result<()> {
    let mut stack = Stack::start_with(Services::IngressOnly).await?;
    // The relay never takes over here (its grace is longer than the test), so every reply is
    // published by its own update; the refresher reads the lag and the backlog often.
    let mut config = stack.worker_config();
    config.relay_grace = Duration::from_secs(600);
    config.metrics_interval = Duration::from_millis(200);
    let (worker, worker_cancel) = stack.spawn_worker(config).await?;
    let _stop_worker = worker_cancel.clone().drop_guard();
    stack.start_sender().await?;

    // A conversation of four updates, each answered once.
    let ada = 7001;
    for (i, text) in ["/start", "buy milk", "call Bob", "/history"]
        .into_iter()
        .enumerate()
    {
        stack.say(ada, "Ada", text).await?;
        stack.bot_replies(ada, i + 1).await?;
    }
    // And requests that are not updates.
    let wrong = courier_tests::text_update(99, ada, "forged");
    assert_eq!(
        stack
            .post_webhook(wrong.to_string(), Some("not-the-secret"))
            .await?,
        401
    );
    let missing = stack
        .http
        .get(format!("{}/nowhere", stack.ingress_url()))
        .send()
        .await?;
    assert_eq!(missing.status(), 404);

    // Counting happens after the answers the transcript shows (the worker's ack, the
    // sender's ledger): wait until everything is counted, then check that nothing was counted
    // twice.
    let m = eventually(
        "every service counted the conversation",
        DEADLINE,
        || async {
            let m = scrape_all(&stack, worker.health_addr()).await?;
            let counted = m
                .worker
                .histogram_count("courier_worker_apply_duration_seconds", &[])?
                >= 4.0
                && m.sender
                    .counter("courier_sender_messages", &[("outcome", "sent")])?
                    >= 4.0
                && m.worker.gauge("courier_worker_outbox_backlog", &[])? == 0.0
                && m.worker.gauge("courier_worker_partitions_owned", &[])? == 32.0;
            Ok(counted.then_some(m))
        },
    )
    .await?;

    // Ingress: 4 updates accepted, one forged, one lost.
    let i = &m.ingress;
    for (status, n) in [("200", 4.0), ("401", 1.0), ("404", 1.0), ("503", 0.0)] {
        let labels = [("status", status)];
        assert_eq!(
            i.counter("courier_ingress_requests", &labels)?,
            n,
            "{status}"
        );
        assert_eq!(
            i.histogram_count("courier_ingress_request_duration_seconds", &labels)?,
            n,
            "{status}"
        );
    }
    assert_eq!(
        i.histogram_count("courier_ingress_publish_duration_seconds", &[])?,
        4.0
    );
    assert_eq!(i.counter("courier_ingress_publish_failures", &[])?, 0.0);

    // Worker: 4 applied, each with its duration, its reply published by its own update.
    let w = &m.worker;
    for (outcome, n) in [
        ("applied", 4.0),
        ("duplicate", 0.0),
        ("ignored", 0.0),
        ("dead_lettered", 0.0),
        ("stale", 0.0),
    ] {
        assert_eq!(
            w.counter("courier_worker_updates", &[("outcome", outcome)])?,
            n,
            "{outcome}"
        );
    }
    assert_eq!(
        w.histogram_count("courier_worker_apply_duration_seconds", &[])?,
        4.0
    );
    assert_eq!(w.counter("courier_worker_outbox_published", &[])?, 4.0);
    assert_eq!(w.counter("courier_worker_outbox_republished", &[])?, 0.0);
    for quiet in [
        "courier_worker_retries",
        "courier_worker_reordered",
        "courier_worker_updates_out_of_order",
    ] {
        assert_eq!(w.counter(quiet, &[])?, 0.0, "{quiet}");
    }
    // One chat, one update at a time: no transaction had company.
    assert_eq!(w.counter("courier_worker_group_commits", &[])?, 0.0);
    let owned = w
        .samples
        .iter()
        .filter(|s| s.name == "courier_worker_partition_owned" && s.value == 1.0)
        .count();
    assert_eq!(owned, 32);
    assert_eq!(w.gauge("courier_dlq_messages", &[])?, 0.0);
    // A connection taken for each update at least; never more in use or idle than the pool.
    assert!(w.histogram_count("courier_db_pool_acquire_duration_seconds", &[])? >= 4.0);
    pool_within(w, 4.0)?;

    // The consumers' lag, read from JetStream every 200 ms: all delivered and acked.
    eventually("the partitions' lag read as 0", DEADLINE, || async {
        let w = scrape(&stack.http, worker.health_addr()).await?;
        let lag: Vec<f64> = w
            .samples
            .iter()
            .filter(|s| {
                s.name == "courier_worker_partition_pending"
                    || s.name == "courier_worker_partition_ack_pending"
            })
            .map(|s| s.value)
            .collect();
        Ok((lag.len() == 64 && lag.iter().all(|v| *v == 0.0)).then_some(()))
    })
    .await?;

    // Sender: getMe at start, then 4 sendMessage calls, each through both limits.
    let s = &m.sender;
    let calls = |method, result| {
        s.counter(
            "courier_sender_calls",
            &[("method", method), ("result", result)],
        )
    };
    assert_eq!(calls("getMe", "ok")?, 1.0);
    assert_eq!(calls("sendMessage", "ok")?, 4.0);
    for result in ["rate_limited", "server_error", "permanent", "network"] {
        assert_eq!(calls("sendMessage", result)?, 0.0, "{result}");
    }
    assert_eq!(
        s.histogram_count(
            "courier_sender_call_duration_seconds",
            &[("method", "sendMessage")]
        )?,
        4.0
    );
    for (limit, n) in [("bot", 4.0), ("chat", 4.0), ("group", 0.0)] {
        assert_eq!(
            s.histogram_count("courier_sender_limit_wait_seconds", &[("limit", limit)])?,
            n,
            "{limit}"
        );
    }
    for (outcome, n) in [
        ("sent", 4.0),
        ("duplicate", 0.0),
        ("dead_lettered", 0.0),
        ("skipped_blocked", 0.0),
    ] {
        assert_eq!(
            s.counter("courier_sender_messages", &[("outcome", outcome)])?,
            n,
            "{outcome}"
        );
    }
    // Each reply carries its update's webhook time (outbox.origin_received_at): one age each.
    assert_eq!(
        s.histogram_count("courier_sender_end_to_end_seconds", &[])?,
        4.0
    );
    assert_eq!(s.gauge("courier_sender_breaker_open", &[])?, 0.0);
    assert_eq!(s.gauge("courier_sender_lease_active", &[])?, 1.0);
    let budget = s.gauge("courier_sender_budget_used_ratio", &[])?;
    assert!((0.0..=1.0).contains(&budget), "{budget}");
    assert!(s.histogram_count("courier_db_pool_acquire_duration_seconds", &[])? >= 4.0);
    pool_within(s, 4.0)?;
    eventually(
        "the sender read the dead-letter stream",
        DEADLINE,
        || async {
            let s = scrape(&stack.http, stack.sender_health()).await?;
            Ok((s.gauge("courier_dlq_messages", &[])? == 0.0).then_some(()))
        },
    )
    .await?;

    // Sandbox: what the sender called, and the four deliveries.
    let b = &m.sandbox;
    let api = |method, status| {
        b.counter(
            "courier_sandbox_api_requests",
            &[("method", method), ("status", status)],
        )
    };
    assert_eq!(api("getMe", "200")?, 1.0);
    assert_eq!(api("sendMessage", "200")?, 4.0);
    assert_eq!(api("sendMessage", "429")?, 0.0);
    for (result, n) in [("ok", 4.0), ("rejected", 0.0), ("failed", 0.0)] {
        assert_eq!(
            b.counter("courier_sandbox_webhook_deliveries", &[("result", result)])?,
            n,
            "{result}"
        );
    }
    assert_eq!(b.counter("courier_sandbox_rate_limited", &[])?, 0.0);

    stack.stop_services().await?;
    worker_cancel.cancel();
    worker.wait().await?;
    Ok(())
}

/// The pool's gauges: in use plus idle never above its size.
fn pool_within(m: &Exposition, size: f64) -> Result<()> {
    let in_use = m.gauge("courier_db_pool_connections", &[("state", "in_use")])?;
    let idle = m.gauge("courier_db_pool_connections", &[("state", "idle")])?;
    ensure!(
        in_use >= 0.0 && idle >= 0.0 && in_use + idle <= size,
        "pool: {in_use} in use, {idle} idle, size {size}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_metrics_count_each_wait_and_the_connections_in_use() -> Result<()> {
    let pg = courier_tests::Postgres::fresh().await?;
    let pool = courier_db::lazy_pool(Some(pg.url()), 1)?;
    let metrics = courier_db::metrics::PoolMetrics::default();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let exposed = || -> Result<Exposition> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry)?;
        Exposition::parse(&text)
    };
    let acquired =
        |e: &Exposition| e.histogram_count("courier_db_pool_acquire_duration_seconds", &[]);
    assert_eq!(acquired(&exposed()?)?, 0.0);

    // The pool's one connection, held.
    let held = metrics.acquire(&pool).await?;
    metrics.sample(&pool);
    assert_eq!((metrics.in_use(), metrics.idle()), (1, 0));
    assert_eq!(acquired(&exposed()?)?, 1.0);

    // A second taker waits for it, and is counted once it got it.
    let waiter = tokio::spawn({
        let (metrics, pool) = (metrics.clone(), pool.clone());
        async move { metrics.acquire(&pool).await }
    });
    assert_eq!(acquired(&exposed()?)?, 1.0, "still waiting");
    drop(held);
    let second = waiter.await??;
    assert_eq!(acquired(&exposed()?)?, 2.0);
    drop(second);

    // Back in the pool: idle.
    eventually("the connection back in the pool", DEADLINE, || async {
        metrics.sample(&pool);
        Ok((metrics.in_use(), metrics.idle()).eq(&(0, 1)).then_some(()))
    })
    .await?;
    let e = exposed()?;
    assert_eq!(
        e.gauge("courier_db_pool_connections", &[("state", "idle")])?,
        1.0
    );
    assert_eq!(
        e.gauge("courier_db_pool_connections", &[("state", "in_use")])?,
        0.0
    );
    pool.close().await;
    Ok(())
}
