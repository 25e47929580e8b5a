//! Bad input at the webhook: a clear status, nothing published, nothing lost.

use std::net::SocketAddr;
use std::time::Duration;

use courier_common::{topology, CancellationToken};
use courier_ingress::{access::AccessArgs, serve::Limits, SECRET_HEADER};
use courier_tests::{eventually, text_update, Services, Stack, DEADLINE, SECRET};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_secret_is_401_and_publishes_nothing() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let body = text_update(1, 10, "hi").to_string();
    assert_eq!(
        stack
            .post_webhook(body.clone(), Some("wrong-secret"))
            .await?,
        401
    );
    assert_eq!(stack.post_webhook(body.clone(), None).await?, 401);
    assert_eq!(
        stack
            .post_webhook(body.clone(), Some(&SECRET[..SECRET.len() - 1]))
            .await?,
        401
    );
    assert_eq!(stack.stream_messages(topology::UPDATES_STREAM).await?, 0);
    // The right secret goes through, so the 401s above were about the secret alone.
    assert_eq!(stack.post_webhook(body, Some(SECRET)).await?, 200);
    assert_eq!(stack.stream_messages(topology::UPDATES_STREAM).await?, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_bodies_are_refused() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    for bad in [
        "not json",
        "{\"update_id\":",
        "[1,2]",
        "{}",
        "{\"update_id\":\"7\"}",
    ] {
        assert_eq!(stack.post_webhook(bad, Some(SECRET)).await?, 400, "{bad}");
    }
    let huge = text_update(2, 10, &"x".repeat(100 * 1024)).to_string();
    assert_eq!(stack.post_webhook(huge, Some(SECRET)).await?, 413);
    assert_eq!(stack.stream_messages(topology::UPDATES_STREAM).await?, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_update_kind_is_accepted_and_the_bot_ignores_what_it_does_not_handle(
) -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/updates");
    let mut names: Vec<_> = std::fs::read_dir(&dir)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    names.sort();
    assert!(names.len() >= 10, "fixtures present");
    for path in &names {
        let body = std::fs::read(path)?;
        let status = stack.post_webhook(body, Some(SECRET)).await?;
        assert_eq!(status, 200, "{}", path.display());
    }
    let stats = stack.worker_stats();
    let n = names.len() as u64;
    eventually("every fixture handled", DEADLINE, || async {
        let handled = stats.applied.get() + stats.ignored.get() + stats.dead_lettered.get();
        Ok((handled >= n).then_some(()))
    })
    .await?;
    assert_eq!(stats.dead_lettered.get(), 0, "no fixture is poison");
    assert!(stats.ignored.get() >= 5, "non-message kinds are ignored");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_answer() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let ingress = stack
        .http
        .get(format!("{}/readyz", stack.ingress_url()))
        .send()
        .await?;
    assert_eq!(ingress.status(), 200);
    let worker = stack
        .http
        .get(format!("http://{}/readyz", stack.worker_health()))
        .send()
        .await?;
    assert_eq!(worker.status(), 200);
    let body: serde_json::Value = worker.json().await?;
    assert_eq!(body["checks"]["postgres"], "ok");
    // The worker says which partitions it owns (all of them: it is alone).
    let owned = eventually("the worker to own every partition", DEADLINE, || async {
        let body: serde_json::Value = stack
            .http
            .get(format!("http://{}/readyz", stack.worker_health()))
            .send()
            .await?
            .json()
            .await?;
        let n = body["partitions"].as_array().map(Vec::len).unwrap_or(0);
        Ok((n == 32).then_some(n))
    })
    .await?;
    assert_eq!(owned, 32);
    let metrics = stack
        .http
        .get(format!("http://{}/metrics", stack.worker_health()))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("courier_worker_partitions_owned 32"),
        "{metrics}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_and_unblocking_the_bot_is_recorded_for_the_sender() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let chat = 6006;
    stack.say(chat, "Bo", "/start").await?;
    stack.bot_replies(chat, 1).await?;
    let member_update = |id: i64, status: &str| {
        serde_json::json!({
            "update_id": id,
            "my_chat_member": {
                "chat": {"id": chat, "type": "private", "first_name": "Bo"},
                "from": {"id": chat, "is_bot": false, "first_name": "Bo"},
                "date": 1_764_133_380,
                "old_chat_member": {"user": {"id": 424242, "is_bot": true, "first_name": "B"}, "status": "member"},
                "new_chat_member": {"user": {"id": 424242, "is_bot": true, "first_name": "B"}, "status": status, "until_date": 0}
            }
        })
        .to_string()
    };
    let blocked = |stack: &Stack| {
        let db = stack.db.clone();
        async move {
            let rows: i64 =
                sqlx::query_scalar("SELECT count(*) FROM blocked_chats WHERE chat_id = $1")
                    .bind(chat)
                    .fetch_one(&db)
                    .await?;
            let user: Option<chrono::DateTime<chrono::Utc>> =
                sqlx::query_scalar("SELECT blocked_at FROM users WHERE user_id = $1")
                    .bind(chat)
                    .fetch_one(&db)
                    .await?;
            anyhow::Ok((rows == 1, user.is_some()))
        }
    };
    assert_eq!(
        stack
            .post_webhook(member_update(950_001, "kicked"), Some(SECRET))
            .await?,
        200
    );
    eventually("the block recorded", DEADLINE, || async {
        Ok((blocked(&stack).await? == (true, true)).then_some(()))
    })
    .await?;
    assert_eq!(
        stack
            .post_webhook(member_update(950_002, "member"), Some(SECRET))
            .await?,
        200
    );
    eventually("the unblock recorded", DEADLINE, || async {
        Ok((blocked(&stack).await? == (false, false)).then_some(()))
    })
    .await?;
    // No reply to either: the transcript still holds only the welcome.
    assert_eq!(
        stack
            .transcript(chat)
            .await?
            .iter()
            .filter(|l| l.from_bot)
            .count(),
        1
    );
    Ok(())
}

/// An ingress of its own beside the stack's, with these limits and source settings.
async fn spawn_ingress(
    stack: &Stack,
    limits: Limits,
    allowed: Option<&str>,
    trusted: Option<&str>,
) -> anyhow::Result<(courier_ingress::Ingress, CancellationToken)> {
    let mut config = stack.ingress_config();
    config.addr = SocketAddr::from(([127, 0, 0, 1], 0));
    config.limits = limits;
    config.access = AccessArgs {
        allowed_networks: allowed.map(str::to_owned),
        trusted_proxies: trusted.map(str::to_owned),
    };
    let cancel = CancellationToken::new();
    let ingress = courier_ingress::spawn(config, cancel.clone()).await?;
    Ok((ingress, cancel))
}

/// Reads until the peer closes. `Ok(bytes)`: what came before the close.
async fn read_until_closed(stream: &mut TcpStream) -> anyhow::Result<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            // Closed with unread data in the server's buffer: a reset, still a close.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return Ok(got),
            Err(e) => return Err(e.into()),
        }
    }
}

/// Reads one response head (the answers here have no body beyond their head's content).
async fn read_head(stream: &mut TcpStream) -> anyhow::Result<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        anyhow::ensure!(
            n > 0,
            "closed before an answer: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
    }
    Ok(String::from_utf8_lossy(&got).into_owned())
}

fn raw_post(body: &str, extra_headers: &str) -> String {
    format!(
        "POST /webhook HTTP/1.1\r\nHost: ingress\r\nContent-Type: application/json\r\n\
         {SECRET_HEADER}: {SECRET}\r\n{extra_headers}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_half_header_connections_are_closed_while_a_fresh_update_gets_200(
) -> anyhow::Result<()> {
    let stack = Stack::start_with(Services::IngressOnly).await?;
    // A header timeout far below the test's deadline and an idle timeout far above it, so a
    // close before the deadline can only come from the header timer.
    let limits = Limits {
        header_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_secs(120),
        max_connections: 20,
    };
    let (ingress, cancel) = spawn_ingress(&stack, limits, None, None).await?;
    let (addr, stats) = (ingress.addr(), ingress.stats());

    // 200 connections: three in four send half a request header, the rest nothing at all.
    // Past the first 20 they wait in the listen backlog (which holds them all).
    let mut stalled = Vec::new();
    for i in 0..200 {
        let mut stream = TcpStream::connect(addr).await?;
        if i % 4 != 0 {
            stream
                .write_all(b"POST /webhook HTTP/1.1\r\nHost: ingress\r\nContent-Ty")
                .await?;
        }
        stalled.push(stream);
    }
    let closed = tokio::spawn(futures::future::join_all(
        stalled.into_iter().map(|mut stream| async move {
            tokio::time::timeout(DEADLINE, read_until_closed(&mut stream)).await
        }),
    ));

    // A valid update on a fresh connection is still served (once slots free up).
    let fresh = reqwest::Client::builder().timeout(DEADLINE).build()?;
    let status = fresh
        .post(format!("http://{addr}/webhook"))
        .header(SECRET_HEADER, SECRET)
        .header("content-type", "application/json")
        .body(text_update(5, 10, "through the crowd").to_string())
        .send()
        .await?
        .status();
    assert_eq!(status, 200);
    assert_eq!(stack.stream_messages(topology::UPDATES_STREAM).await?, 1);

    // Every stalled connection is closed by the server before the deadline, with no answer.
    for (i, outcome) in closed.await?.into_iter().enumerate() {
        let got = outcome.map_err(|_| anyhow::anyhow!("connection {i} still open"))??;
        assert!(
            got.is_empty(),
            "connection {i} got {:?}",
            String::from_utf8_lossy(&got)
        );
    }
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(stats.header_timeouts.load(Relaxed), 200);
    assert_eq!(stats.idle_timeouts.load(Relaxed), 0);
    // The limit was reached and never exceeded.
    assert_eq!(stats.peak.load(Relaxed), 20);

    cancel.cancel();
    tokio::time::timeout(DEADLINE, ingress.wait()).await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() -> anyhow::Result<()> {
    let stack = Stack::start_with(Services::IngressOnly).await?;
    // Here the header timer is the one that cannot fire before the deadline.
    let limits = Limits {
        header_timeout: Duration::from_secs(120),
        idle_timeout: Duration::from_millis(300),
        max_connections: 4,
    };
    let (ingress, cancel) = spawn_ingress(&stack, limits, None, None).await?;
    let stats = ingress.stats();
    let mut stream = TcpStream::connect(ingress.addr()).await?;
    for id in [1, 2] {
        let body = text_update(id, 10, "kept alive").to_string();
        stream.write_all(raw_post(&body, "").as_bytes()).await?;
        let head = read_head(&mut stream).await?;
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    }
    let rest = tokio::time::timeout(DEADLINE, read_until_closed(&mut stream))
        .await
        .map_err(|_| anyhow::anyhow!("the idle connection is still open"))??;
    assert!(rest.is_empty());
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(stats.idle_timeouts.load(Relaxed), 1);
    assert_eq!(stats.header_timeouts.load(Relaxed), 0);
    assert_eq!(stack.stream_messages(topology::UPDATES_STREAM).await?, 2);
    cancel.cancel();
    tokio::time::timeout(DEADLINE, ingress.wait()).await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_outside_the_allow_list_get_403_before_the_body_is_read() -> anyhow::Result<()> {
    let stack = Stack::start_with(Services::IngressOnly).await?;
    let post = |addr: SocketAddr, id: i64, forwarded: Option<&'static str>| {
        let http = stack.http.clone();
        async move {
            let mut req = http
                .post(format!("http://{addr}/webhook"))
                .header(SECRET_HEADER, SECRET)
                .header("content-type", "application/json")
                .body(text_update(id, 10, "from where?").to_string());
            if let Some(f) = forwarded {
                req = req.header("x-forwarded-for", f);
            }
            anyhow::Ok(req.send().await?.status())
        }
    };

    // Off by default: the stack's own ingress takes updates from 127.0.0.1.
    assert_eq!(
        stack
            .post_webhook(text_update(1, 10, "default").to_string(), Some(SECRET))
            .await?,
        200
    );

    // Telegram's networks only: a local peer is refused, whatever its secret or its claims.
    let (tg_only, stop_tg) =
        spawn_ingress(&stack, Limits::default(), Some("telegram"), None).await?;
    assert_eq!(post(tg_only.addr(), 2, None).await?, 403);
    assert_eq!(post(tg_only.addr(), 3, Some("149.154.160.7")).await?, 403);
    // Refused before the body is read: a request announcing a body it never sends is answered.
    let mut stream = TcpStream::connect(tg_only.addr()).await?;
    let head = raw_post("", "");
    let head = head.replace("Content-Length: 0", "Content-Length: 100000");
    stream.write_all(head.as_bytes()).await?;
    let answer = tokio::time::timeout(DEADLINE, read_head(&mut stream)).await??;
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    // Health endpoints are not filtered (probes come from inside the cluster).
    let ready = stack
        .http
        .get(format!("http://{}/readyz", tg_only.addr()))
        .send()
        .await?;
    assert_eq!(ready.status(), 200);

    // A list that holds the peer lets it through.
    let (local, stop_local) = spawn_ingress(
        &stack,
        Limits::default(),
        Some("telegram, 127.0.0.0/8"),
        None,
    )
    .await?;
    assert_eq!(post(local.addr(), 4, None).await?, 200);

    // Behind a trusted proxy (here the local peer), the right-most untrusted forwarded
    // address is the source.
    let (proxied, stop_proxied) = spawn_ingress(
        &stack,
        Limits::default(),
        Some("telegram"),
        Some("127.0.0.1"),
    )
    .await?;
    assert_eq!(post(proxied.addr(), 5, Some("149.154.160.7")).await?, 200);
    assert_eq!(
        post(proxied.addr(), 6, Some("149.154.160.7, 203.0.113.5")).await?,
        403
    );
    assert_eq!(post(proxied.addr(), 7, None).await?, 403);

    // Updates 1, 4 and 5 were published; none of the refused ones.
    assert_eq!(stack.stream_messages(topology::UPDATES_STREAM).await?, 3);
    for (ingress, stop) in [
        (tg_only, stop_tg),
        (local, stop_local),
        (proxied, stop_proxied),
    ] {
        stop.cancel();
        tokio::time::timeout(DEADLINE, ingress.wait()).await??;
    }
    Ok(())
}

/// Rotating the webhook secret loses nothing: while `COURIER_WEBHOOK_SECRET_PREVIOUS` holds the
/// old secret, updates signed with either are accepted; any other secret is still refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn during_a_secret_rotation_both_secrets_are_accepted_and_no_other() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let mut config = stack.ingress_config();
    config.addr = SocketAddr::from(([127, 0, 0, 1], 0));
    config.webhook.webhook_secret = Some("new-secret_2".into());
    config.webhook_secret_previous = Some(courier_tests::SECRET.into());
    let cancel = CancellationToken::new();
    let ingress = courier_ingress::spawn(config, cancel.clone()).await?;
    let url = format!("http://{}/webhook", ingress.addr());
    let http = reqwest::Client::new();
    for (n, secret, want) in [
        (1, courier_tests::SECRET, 200),
        (2, "new-secret_2", 200),
        (3, "some-other-secret", 401),
    ] {
        let body = serde_json::json!({
            "update_id": 9_100 + n,
            "message": {"message_id": n, "date": 1, "chat": {"id": 9_100, "type": "private"},
                        "from": {"id": 9_100, "is_bot": false, "first_name": "Ada"}, "text": "hi"}
        });
        let status = http
            .post(&url)
            .header("X-Telegram-Bot-Api-Secret-Token", secret)
            .json(&body)
            .send()
            .await?
            .status();
        assert_eq!(status.as_u16(), want, "secret {secret:?}");
    }
    // A malformed previous secret is refused at start, naming the variable.
    let mut bad = stack.ingress_config();
    bad.addr = SocketAddr::from(([127, 0, 0, 1], 0));
    bad.webhook_secret_previous = Some("not a secret!".into());
    let err = courier_ingress::spawn(bad, CancellationToken::new())
        .await
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("COURIER_WEBHOOK_SECRET_PREVIOUS"),
        "{err}"
    );
    cancel.cancel();
    ingress.wait().await?;
    Ok(())
}
