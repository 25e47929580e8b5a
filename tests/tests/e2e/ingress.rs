//! Bad input at the webhook: a clear status, nothing published, nothing lost.

use courier_common::topology;
use courier_tests::{eventually, text_update, Stack, DEADLINE, SECRET};

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
        use std::sync::atomic::Ordering::Relaxed;
        let handled = stats.applied.load(Relaxed)
            + stats.ignored.load(Relaxed)
            + stats.dead_lettered.load(Relaxed);
        Ok((handled >= n).then_some(()))
    })
    .await?;
    use std::sync::atomic::Ordering::Relaxed;
    assert_eq!(stats.dead_lettered.load(Relaxed), 0, "no fixture is poison");
    assert!(
        stats.ignored.load(Relaxed) >= 5,
        "non-message kinds are ignored"
    );
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
