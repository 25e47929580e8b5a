//! Bounded shutdown: every service exits within its grace period after SIGTERM, whatever is
//! down (issue 14, item 3; review finding 3: a sender whose NATS was gone hung for ever in
//! `flush`).

use std::time::{Duration, Instant};

use courier_tests::procs::{free_local_port, ServiceProcess};
use courier_tests::{eventually, NatsServer, Postgres, SECRET};

const GRACE: Duration = Duration::from_secs(3);

/// The whole pipeline as processes, busy (Telegram holds every call open, so the sender has
/// calls on the wire and messages held), then NATS killed and the database taken away, then
/// SIGTERM to everyone: each exits within the grace period (plus process start-up slack).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_service_exits_within_its_grace_period_with_nats_postgres_and_telegram_down(
) -> anyhow::Result<()> {
    let mut nats = NatsServer::start().await?;
    let pg = Postgres::fresh().await?;
    let (sandbox_port, ingress_port) = (free_local_port()?, free_local_port()?);
    let sandbox_url = format!("http://127.0.0.1:{sandbox_port}");
    let grace = format!("{}ms", GRACE.as_millis());
    let common = |extra: &[(&'static str, String)]| {
        let mut env = vec![
            ("NATS_URL", nats.url()),
            ("DATABASE_URL", pg.url().to_owned()),
            ("COURIER_WEBHOOK_SECRET", SECRET.to_owned()),
            ("COURIER_SHUTDOWN_GRACE", grace.clone()),
        ];
        env.extend_from_slice(extra);
        env
    };
    let mut services = vec![
        ServiceProcess::start(
            "courier-sandbox",
            &common(&[
                ("COURIER_SANDBOX_ADDR", format!("127.0.0.1:{sandbox_port}")),
                (
                    "COURIER_SANDBOX_WEBHOOK_URL",
                    format!("http://127.0.0.1:{ingress_port}/webhook"),
                ),
                // Telegram is down: sending calls are never answered.
                ("COURIER_SANDBOX_FAULT_DROP_RATE", "1".into()),
            ]),
        )
        .await?,
        ServiceProcess::start(
            "courier-ingress",
            &common(&[("COURIER_INGRESS_ADDR", format!("127.0.0.1:{ingress_port}"))]),
        )
        .await?,
        ServiceProcess::start(
            "courier-worker",
            &common(&[("COURIER_WORKER_HEALTH_ADDR", "127.0.0.1:0".into())]),
        )
        .await?,
        ServiceProcess::start(
            "courier-sender",
            &common(&[
                ("COURIER_TELEGRAM_API_URL", sandbox_url.clone()),
                ("COURIER_SENDER_HEALTH_ADDR", "127.0.0.1:0".into()),
            ]),
        )
        .await?,
        ServiceProcess::start(
            "courier-admin",
            &common(&[
                ("COURIER_TELEGRAM_API_URL", sandbox_url.clone()),
                ("COURIER_ADMIN_ADDR", "127.0.0.1:0".into()),
                ("COURIER_ADMIN_HEALTH_ADDR", "127.0.0.1:0".into()),
                (
                    "COURIER_ADMIN_TOKEN",
                    courier_tests::admin::ADMIN_TOKEN.into(),
                ),
            ]),
        )
        .await?,
    ];

    // Users write; their replies reach the sender, whose calls Telegram never answers.
    let http = reqwest::Client::new();
    for chat in 1..=5 {
        eventually(
            "the sandbox takes a message",
            Duration::from_secs(30),
            || {
                let http = http.clone();
                let url = format!("{sandbox_url}/sandbox/messages");
                async move {
                    let ok = http
                        .post(url)
                        .json(&serde_json::json!({
                            "chat_id": 900_000 + chat, "user_id": 900_000 + chat,
                            "first_name": "S", "text": "/start"
                        }))
                        .send()
                        .await
                        .is_ok_and(|r| r.status().is_success());
                    Ok(ok.then_some(()))
                }
            },
        )
        .await?;
    }
    eventually(
        "the sender has calls on the wire",
        Duration::from_secs(60),
        || {
            let http = http.clone();
            let url = format!("{sandbox_url}/sandbox/stats");
            async move {
                let stats: serde_json::Value = http.get(url).send().await?.json().await?;
                Ok((stats["calls_dropped"].as_u64().unwrap_or(0) >= 1).then_some(()))
            }
        },
    )
    .await?;

    // NATS dies; the database goes away (no new connections, existing ones terminated).
    nats.stop().await?;
    let admin = pg
        .url()
        .rsplit_once('/')
        .map(|(base, _)| format!("{base}/postgres"));
    let admin = sqlx::PgPool::connect(&admin.expect("a database URL")).await?;
    sqlx::query(&format!(
        "ALTER DATABASE \"{}\" ALLOW_CONNECTIONS false",
        pg.name()
    ))
    .execute(&admin)
    .await?;
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(pg.name())
        .execute(&admin)
        .await?;

    for s in &mut services {
        assert!(s.is_running(), "{} still running before SIGTERM", s.name);
    }
    let asked = Instant::now();
    for s in &services {
        s.sigterm().await?;
    }
    // The grace period, plus slack for a loaded machine to schedule the exit.
    let deadline = GRACE + Duration::from_secs(5);
    for s in &mut services {
        let left = deadline.saturating_sub(asked.elapsed());
        let status = s.wait_exit(left).await?;
        assert!(
            status.is_some(),
            "{} still running {:?} after SIGTERM (grace {GRACE:?})",
            s.name,
            asked.elapsed()
        );
        eprintln!("{} exited after {:?}: {status:?}", s.name, asked.elapsed());
    }
    Ok(())
}
