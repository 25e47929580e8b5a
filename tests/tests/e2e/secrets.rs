//! Secrets never reach the logs (issue 14, item 7): a whole conversation through every
//! service as a process, at `RUST_LOG=debug`, and then a scan of every log line for the bot
//! token, the webhook secret and the database password.

use std::time::Duration;

use courier_tests::procs::{free_local_port, ServiceProcess};
use courier_tests::{eventually, Line, NatsServer, Postgres, SECRET, TOKEN};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_appears_in_any_services_logs_over_a_whole_conversation() -> anyhow::Result<()> {
    let nats = NatsServer::start().await?;
    let pg = Postgres::fresh().await?;
    // The test cluster trusts local connections, so any password works: it is only there to
    // be looked for in the logs.
    let password = "pw-Zq81_secret";
    let database_url = pg
        .url()
        .replacen("://postgres@", &format!("://postgres:{password}@"), 1);
    assert!(database_url.contains(password), "{}", pg.url());
    let (sandbox_port, ingress_port) = (free_local_port()?, free_local_port()?);
    let sandbox_url = format!("http://127.0.0.1:{sandbox_port}");
    let dir = std::env::temp_dir().join(format!(
        "courier-logscan-{}-{}",
        std::process::id(),
        pg.name()
    ));
    std::fs::create_dir_all(&dir)?;
    let common = |extra: &[(&'static str, String)]| {
        let mut env = vec![
            ("NATS_URL", nats.url()),
            ("DATABASE_URL", database_url.clone()),
            ("COURIER_WEBHOOK_SECRET", SECRET.to_owned()),
        ];
        env.extend_from_slice(extra);
        env
    };
    let plan: Vec<(&str, Vec<(&'static str, String)>)> = vec![
        (
            "courier-sandbox",
            common(&[
                ("COURIER_SANDBOX_ADDR", format!("127.0.0.1:{sandbox_port}")),
                (
                    "COURIER_SANDBOX_WEBHOOK_URL",
                    format!("http://127.0.0.1:{ingress_port}/webhook"),
                ),
            ]),
        ),
        (
            "courier-ingress",
            common(&[("COURIER_INGRESS_ADDR", format!("127.0.0.1:{ingress_port}"))]),
        ),
        (
            "courier-worker",
            common(&[("COURIER_WORKER_HEALTH_ADDR", "127.0.0.1:0".into())]),
        ),
        (
            "courier-sender",
            common(&[
                ("COURIER_TELEGRAM_API_URL", sandbox_url.clone()),
                ("COURIER_SENDER_HEALTH_ADDR", "127.0.0.1:0".into()),
            ]),
        ),
    ];
    let mut services = Vec::new();
    for (name, env) in &plan {
        let log = dir.join(format!("{name}.log"));
        services.push((ServiceProcess::start_logged(name, env, &log).await?, log));
    }

    let http = reqwest::Client::new();
    let chat = 930_001;
    for text in ["/start", "a note with my token? no", "/history", "/help"] {
        eventually(
            "the sandbox takes a message",
            Duration::from_secs(60),
            || {
                let (http, url) = (http.clone(), format!("{sandbox_url}/sandbox/messages"));
                async move {
                    let ok = http
                        .post(url)
                        .json(&serde_json::json!({
                            "chat_id": chat, "user_id": chat, "first_name": "Ada", "text": text
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
    eventually("four replies", Duration::from_secs(60), || {
        let (http, url) = (
            http.clone(),
            format!("{sandbox_url}/sandbox/chats/{chat}/messages"),
        );
        async move {
            let lines: Vec<Line> = http.get(url).send().await?.json().await?;
            Ok((lines.iter().filter(|l| l.from_bot).count() >= 4).then_some(()))
        }
    })
    .await?;
    // A caller with a wrong secret, and one that sends the right secret with a bad body.
    let webhook = format!("http://127.0.0.1:{ingress_port}/webhook");
    let wrong = http
        .post(&webhook)
        .header("X-Telegram-Bot-Api-Secret-Token", "not-the-secret")
        .body("{}")
        .send()
        .await?;
    assert_eq!(wrong.status(), 401);
    let bad = http
        .post(&webhook)
        .header("X-Telegram-Bot-Api-Secret-Token", SECRET)
        .body("{not json")
        .send()
        .await?;
    assert_eq!(bad.status(), 400);

    for (s, _) in &services {
        s.sigterm().await?;
    }
    for (s, _) in &mut services {
        s.wait_exit(Duration::from_secs(30)).await?;
    }
    let token_secret = TOKEN.split_once(':').map(|(_, s)| s).unwrap_or(TOKEN);
    let needles = [
        ("bot token", token_secret),
        ("webhook secret", SECRET),
        ("database password", password),
    ];
    for (s, log) in &services {
        let text = std::fs::read_to_string(log)?;
        assert!(
            text.lines().count() > 3,
            "{}: the log is nearly empty, the scan would prove nothing",
            s.name
        );
        for (what, needle) in needles {
            if let Some(line) = text.lines().find(|l| l.contains(needle)) {
                panic!("{}: the {what} is in its log: {line}", s.name);
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
