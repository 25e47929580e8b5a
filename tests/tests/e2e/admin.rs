//! The admin API (issue 18): every call driven through `courierctl` as a process against a
//! `courier-admin` process, beside the pipeline (in-process) on a real NATS and PostgreSQL,
//! with the sandbox as Telegram. Each test asserts the effect where it lands: the sandbox's
//! webhook and call log, the database, the streams.

use std::sync::atomic::Ordering::Relaxed;

use anyhow::Context as _;
use async_nats::jetstream;
use courier_common::topology;
use courier_tests::admin::{ctl, AdminProcess, ADMIN_TOKEN};
use courier_tests::{eventually, Stack, DEADLINE, SECRET, TOKEN};
use serde_json::{json, Value};

async fn faults(stack: &Stack, body: Value) -> anyhow::Result<()> {
    stack
        .http
        .post(format!("{}/sandbox/faults", stack.sandbox_url()))
        .json(&body)
        .send()
        .await?
        .error_for_status()?;
    Ok(())
}

async fn calls(stack: &Stack) -> anyhow::Result<Vec<Value>> {
    Ok(stack
        .http
        .get(format!("{}/sandbox/calls", stack.sandbox_url()))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

async fn outcome(stack: &Stack, update_id: i64) -> anyhow::Result<Option<String>> {
    Ok(
        sqlx::query_scalar("SELECT outcome FROM processed_updates WHERE update_id = $1")
            .bind(update_id)
            .fetch_optional(&stack.db)
            .await?,
    )
}

/// The bot's messages in a chat that equal `text`.
async fn count_replies(stack: &Stack, chat: i64, text: &str) -> anyhow::Result<usize> {
    Ok(stack
        .transcript(chat)
        .await?
        .iter()
        .filter(|l| l.from_bot && l.text == text)
        .count())
}

const SAVED: &str = "Saved your note. Send another, or /history to see your notes.";
const NOT_STARTED: &str =
    "I'm not taking notes yet. Send /start to begin, or /help to see what I can do.";

/// The dead letter `seq` as stored (subject, headers, payload).
async fn snapshot(stack: &Stack, seq: u64) -> anyhow::Result<jetstream::message::StreamMessage> {
    let js = jetstream::new(async_nats::connect(stack.nats.url()).await?);
    let dlq = js.get_stream(topology::DLQ_STREAM).await?;
    Ok(dlq.get_raw_message(seq).await?)
}

/// Puts a snapshot back into the DLQ (a new id), as if a replay had republished the letter
/// and crashed before deleting it; returns the new id.
async fn put_back(stack: &Stack, m: &jetstream::message::StreamMessage) -> anyhow::Result<u64> {
    let js = jetstream::new(async_nats::connect(stack.nats.url()).await?);
    let publish = jetstream::message::PublishMessage::build()
        .headers(m.headers.clone())
        .payload(m.payload.clone());
    let ack = js
        .send_publish(m.subject.to_string(), publish)
        .await?
        .await?;
    Ok(ack.sequence)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_is_registered_in_the_sandbox_with_the_secret_and_info_shows_telegrams_view(
) -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let admin = AdminProcess::start(&stack, &[]).await?;

    // Delete: the sandbox then holds the updates (Telegram's pending count).
    let out = admin.ctl(&["webhook", "delete"]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    let info = admin.ctl_json(&["webhook", "info"]).await?;
    assert_eq!(info["url"], "", "{info}");
    let chat = 18_001;
    stack.say(chat, "Wes", "/start").await?;
    eventually("the update held by Telegram", DEADLINE, || async {
        let info = admin.ctl_json(&["webhook", "info"]).await?;
        Ok((info["pending_update_count"] == 1).then_some(()))
    })
    .await?;

    // Set: registered with the URL, the limits and the secret; the held update is delivered,
    // and ingress (which checks the secret) accepts it: the bot answers.
    let out = admin
        .ctl(&[
            "webhook",
            "set",
            "--url",
            &stack.webhook_url(),
            "--max-connections",
            "7",
            "--allowed-updates",
            "message,my_chat_member",
        ])
        .await?;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("Webhook was set"), "{out:?}");
    let welcome = stack.bot_replies(chat, 1).await?;
    assert!(welcome[0].starts_with("Hi, Wes!"), "{welcome:?}");
    let info = admin.ctl_json(&["webhook", "info"]).await?;
    assert_eq!(info["url"], stack.webhook_url(), "{info}");
    assert_eq!(info["max_connections"], 7, "{info}");
    assert_eq!(
        info["allowed_updates"],
        json!(["message", "my_chat_member"]),
        "{info}"
    );
    assert_eq!(info["pending_update_count"], 0, "{info}");
    assert_eq!(info["last_error_message"], "", "{info}");

    // An admin configured with another secret registers that one: ingress refuses the
    // deliveries (401), and `webhook info` shows Telegram's last error.
    let wrong = AdminProcess::start(
        &stack,
        &[("COURIER_WEBHOOK_SECRET", "not-the-ingress-secret".into())],
    )
    .await?;
    let out = wrong
        .ctl(&["webhook", "set", "--url", &stack.webhook_url()])
        .await?;
    assert_eq!(out.code, 0, "{out:?}");
    stack.say(chat, "Wes", "refused at the door").await?;
    let info = eventually("Telegram's last error", DEADLINE, || async {
        let info = wrong.ctl_json(&["webhook", "info"]).await?;
        Ok(info["last_error_message"]
            .as_str()
            .is_some_and(|m| m.contains("401"))
            .then_some(info))
    })
    .await?;
    assert!(info["last_error_unix"].as_i64().unwrap_or(0) > 0, "{info}");
    // Back to the right secret: the held update goes through.
    let out = admin
        .ctl(&["webhook", "set", "--url", &stack.webhook_url()])
        .await?;
    assert_eq!(out.code, 0, "{out:?}");
    let replies = stack.bot_replies(chat, 2).await?;
    assert_eq!(replies[1], SAVED, "{replies:?}");
    assert_eq!(stack.notes(chat).await?, vec!["refused at the door"]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_pipeline_and_a_chat_reset_goes_back_to_the_start_keeping_the_rest(
) -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let admin = AdminProcess::start(&stack, &[]).await?;
    let chat = 18_002;
    stack.say(chat, "Rae", "/start").await?;
    stack.say(chat, "Rae", "first note").await?;
    stack.bot_replies(chat, 2).await?;

    let status = admin
        .status_until("the sender holds the lease", |s| {
            s["sender"]["lease"] == "held"
        })
        .await?;
    assert_eq!(status["bot_id"], stack.bot_id());
    let workers = status["workers"].as_array().context("workers")?;
    assert_eq!(workers.len(), 1, "{status}");
    assert_eq!(workers[0]["partitions"].as_array().map(Vec::len), Some(32));
    assert_eq!(status["partitions"].as_array().map(Vec::len), Some(32));
    assert!(status["throughput"]["updates_last_minute"].as_u64() >= Some(2));
    assert!(status["sender"]["sent_last_minute"].as_u64() >= Some(2));
    assert_eq!(status["dead_letters"]["total"], 0);
    assert_eq!(status["pause"]["paused"], false);
    let human = admin.ctl(&["status"]).await?;
    assert_eq!(human.code, 0, "{human:?}");
    assert!(human.stdout.contains("PARTITION"), "{}", human.stdout);

    let shown = admin.ctl_json(&["chat", "show", &chat.to_string()]).await?;
    assert_eq!(shown["state"], r#"{"state":"ReceiveNote"}"#, "{shown}");
    assert_eq!(shown["last_notes"][0]["text"], "first note");
    assert_eq!(shown["users"][0]["first_name"], "Rae");
    let seq = shown["last_applied_seq"].as_u64().context("seq")?;
    assert!(seq > 0, "{shown}");

    let out = admin.ctl(&["chat", "reset", &chat.to_string()]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    let state: Value = sqlx::query_scalar("SELECT state FROM dialogue_states WHERE chat_id = $1")
        .bind(chat)
        .fetch_one(&stack.db)
        .await?;
    assert_eq!(state, Value::Null, "null: the bot's start state");
    let shown = admin.ctl_json(&["chat", "show", &chat.to_string()]).await?;
    assert_eq!(shown["state"], "null", "{shown}");
    assert_eq!(
        shown["last_applied_seq"].as_u64(),
        Some(seq),
        "the guard is kept"
    );
    assert_eq!(
        shown["last_notes"][0]["text"], "first note",
        "notes are kept"
    );

    // The bot is at its start again: a text is not a note until /start.
    stack.say(chat, "Rae", "not a note yet").await?;
    let replies = stack.bot_replies(chat, 3).await?;
    assert_eq!(replies[2], NOT_STARTED, "{replies:?}");
    assert_eq!(stack.notes(chat).await?, vec!["first note"]);

    // Unknown chats: exit 5.
    let out = admin.ctl(&["chat", "show", "424242999"]).await?;
    assert_eq!(out.code, 5, "{out:?}");
    let out = admin.ctl(&["chat", "reset", "424242999"]).await?;
    assert_eq!(out.code, 5, "{out:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_update_is_replayed_and_applied_once_even_when_replayed_twice(
) -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let admin = AdminProcess::start(&stack, &[]).await?;
    let chat = 18_003;
    stack.say(chat, "Pia", "/start").await?;
    stack.bot_replies(chat, 1).await?;

    // A constraint too strict (a bad migration): the note fails for good, 3 attempts, and is
    // dead-lettered with the reason.
    sqlx::query(
        "ALTER TABLE messages ADD CONSTRAINT no_plums CHECK (text NOT LIKE '%plum%') NOT VALID",
    )
    .execute(&stack.db)
    .await?;
    let update_id = stack.say(chat, "Pia", "plum jam recipe").await?;
    eventually("the update dead-lettered", DEADLINE, || async {
        Ok((outcome(&stack, update_id).await?.as_deref() == Some("dead_lettered")).then_some(()))
    })
    .await?;
    let listed = admin
        .ctl_json(&["dlq", "list", "--stage", "updates"])
        .await?;
    let letters = listed["letters"].as_array().context("letters")?;
    assert_eq!(letters.len(), 1, "{listed}");
    let letter = &letters[0];
    assert_eq!(letter["update_id"], update_id);
    assert_eq!(letter["chat_id"], chat);
    assert!(
        letter["reason"].as_str().unwrap_or("").contains("no_plums"),
        "{letter}"
    );
    let id = letter["id"].as_u64().context("id")?;
    let stored = snapshot(&stack, id).await?;
    let human = admin.ctl(&["dlq", "list"]).await?;
    assert!(human.stdout.contains("no_plums"), "{human:?}");

    // The fix is deployed; a dry run changes nothing, the replay applies it once.
    sqlx::query("ALTER TABLE messages DROP CONSTRAINT no_plums")
        .execute(&stack.db)
        .await?;
    let dry = admin
        .ctl_json(&["dlq", "replay", &id.to_string(), "--dry-run"])
        .await?;
    assert_eq!(dry["results"][0]["outcome"], "would_replay", "{dry}");
    assert_eq!(stack.notes(chat).await?.len(), 0);
    let replayed = admin
        .ctl_json(&["dlq", "replay", "--stage", "updates"])
        .await?;
    assert_eq!(replayed["replayed"], 1, "{replayed}");
    let replies = stack.bot_replies(chat, 2).await?;
    assert_eq!(replies[1], SAVED);
    assert_eq!(stack.notes(chat).await?, vec!["plum jam recipe"]);
    assert_eq!(
        outcome(&stack, update_id).await?.as_deref(),
        Some("applied")
    );
    let listed = admin.ctl_json(&["dlq", "list"]).await?;
    assert_eq!(listed["total"], 0, "{listed}");

    // The same letter once more, as if the replay had crashed before deleting it (a copy
    // under a new id, so JetStream's duplicate window does not help): the worker skips it.
    let duplicates = stack.worker_stats().duplicates.get();
    let copy = put_back(&stack, &stored).await?;
    let again = admin
        .ctl_json(&["dlq", "replay", &copy.to_string()])
        .await?;
    assert_eq!(again["replayed"], 1, "{again}");
    eventually(
        "the second replay skipped as a duplicate",
        DEADLINE,
        || async { Ok((stack.worker_stats().duplicates.get() > duplicates).then_some(())) },
    )
    .await?;
    assert_eq!(stack.notes(chat).await?, vec!["plum jam recipe"]);
    assert_eq!(count_replies(&stack, chat, SAVED).await?, 1);
    // Replaying an id that is gone: exit 5.
    let out = admin.ctl(&["dlq", "replay", &id.to_string()]).await?;
    assert_eq!(out.code, 5, "{out:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_reply_is_replayed_and_delivered_once_and_letters_can_be_purged(
) -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let admin = AdminProcess::start(&stack, &[]).await?;
    let chat = 18_004;
    stack.say(chat, "Oz", "/start").await?;
    stack.bot_replies(chat, 1).await?;

    // Telegram refuses the next reply (400): the sender parks it.
    faults(&stack, json!({"error_rate": 1.0, "error_status": 400})).await?;
    stack.say(chat, "Oz", "a note").await?;
    let listed = eventually("the reply dead-lettered", DEADLINE, || async {
        let l = admin
            .ctl_json(&["dlq", "list", "--stage", "outbound"])
            .await?;
        Ok((l["letters"].as_array().map(Vec::len) == Some(1)).then_some(l))
    })
    .await?;
    faults(&stack, json!({"error_rate": 0.0})).await?;
    let letter = &listed["letters"][0];
    assert_eq!(letter["chat_id"], chat, "{letter}");
    assert!(letter["outbox_id"].as_i64() > Some(0), "{letter}");
    let id = letter["id"].as_u64().context("id")?;
    let stored = snapshot(&stack, id).await?;
    assert_eq!(count_replies(&stack, chat, SAVED).await?, 0);

    let replayed = admin
        .ctl_json(&["dlq", "replay", "--stage", "outbound"])
        .await?;
    assert_eq!(replayed["replayed"], 1, "{replayed}");
    eventually("the reply delivered", DEADLINE, || async {
        Ok((count_replies(&stack, chat, SAVED).await? == 1).then_some(()))
    })
    .await?;

    // Again, as after a crash before the DLQ delete: the ledger says it was sent.
    let skipped = stack.sender_stats().duplicates_skipped.load(Relaxed);
    let copy = put_back(&stack, &stored).await?;
    let again = admin
        .ctl_json(&["dlq", "replay", &copy.to_string()])
        .await?;
    assert_eq!(again["replayed"], 1, "{again}");
    eventually(
        "the second replay skipped by the ledger",
        DEADLINE,
        || async {
            Ok((stack.sender_stats().duplicates_skipped.load(Relaxed) > skipped).then_some(()))
        },
    )
    .await?;
    assert_eq!(count_replies(&stack, chat, SAVED).await?, 1);

    // Purge: refused without a selection, a dry run keeps, --all deletes.
    let letter_left = made_up_letter(&stack, chat).await?;
    let out = admin.ctl(&["dlq", "purge"]).await?;
    assert_eq!(out.code, 2, "{out:?}");
    let dry = admin
        .ctl_json(&["dlq", "purge", "--all", "--dry-run"])
        .await?;
    assert_eq!(dry["ids"], json!([letter_left]), "{dry}");
    let purged = admin.ctl_json(&["dlq", "purge", "--all"]).await?;
    assert_eq!(purged["purged"], 1, "{purged}");
    let listed = admin.ctl_json(&["dlq", "list"]).await?;
    assert_eq!(listed["total"], 0, "{listed}");
    Ok(())
}

/// Puts one dead letter of `chat` into the DLQ (a made-up outbound letter); returns its id.
async fn made_up_letter(stack: &Stack, chat: i64) -> anyhow::Result<u64> {
    let js = jetstream::new(async_nats::connect(stack.nats.url()).await?);
    let ok = topology::publish_dead_letter(
        &js,
        stack.bot_id(),
        "outbound",
        &topology::outbound_subject(stack.bot_id(), chat),
        bytes::Bytes::from_static(b"not an envelope"),
        "made up for the purge",
    )
    .await;
    anyhow::ensure!(ok, "dead letter not stored");
    let dlq = js.get_stream(topology::DLQ_STREAM).await?;
    let m = dlq
        .get_last_raw_message_by_subject(&topology::dlq_subject(stack.bot_id(), "outbound"))
        .await?;
    Ok(m.sequence)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_every_bot_api_call_until_resume_across_a_sender_restart() -> anyhow::Result<()>
{
    let mut stack = Stack::start().await?;
    let admin = AdminProcess::start(&stack, &[]).await?;
    let chats = [18_101, 18_102, 18_103];
    stack.register(&chats).await?;
    admin
        .status_until("the sender holds the lease", |s| {
            s["sender"]["lease"] == "held"
        })
        .await?;

    let out = admin.ctl(&["pause", "--reason", "maintenance"]).await?;
    assert_eq!(out.code, 0, "pause confirmed by the active sender: {out:?}");
    assert!(out.stdout.contains("confirmed"), "{out:?}");
    let before = calls(&stack).await?.len();

    // Updates are accepted and applied; their replies reach the sender, which holds them.
    for &chat in &chats {
        stack.say(chat, "Ada", "held note").await?;
    }
    let status = admin
        .status_until("the replies held by the paused sender", |s| {
            s["outbound"]["ack_pending"].as_u64() >= Some(3)
        })
        .await?;
    assert_eq!(status["pause"]["paused"], true, "{status}");
    assert_eq!(status["pause"]["reason"], "maintenance", "{status}");
    for &chat in &chats {
        assert_eq!(stack.notes(chat).await?, vec!["held note"], "applied");
    }
    assert_eq!(
        calls(&stack).await?.len(),
        before,
        "no Bot API call while paused"
    );

    // A sender restarted while paused: it hands the messages back and the new one holds them
    // again, still without a call (the state is in NATS, not in the sender's memory).
    stack.stop_sender().await?;
    stack.start_sender().await?;
    admin
        .status_until("the restarted sender holds the replies", |s| {
            s["sender"]["lease"] == "held" && s["outbound"]["ack_pending"].as_u64() >= Some(3)
        })
        .await?;
    let status = admin.ctl_json(&["status"]).await?;
    assert_eq!(status["pause"]["paused"], true, "{status}");
    assert_eq!(
        calls(&stack).await?.len(),
        before,
        "no call after the restart"
    );

    let out = admin.ctl(&["resume"]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    for &chat in &chats {
        eventually("the held reply delivered", DEADLINE, || async {
            Ok((count_replies(&stack, chat, SAVED).await? == 1).then_some(()))
        })
        .await?;
    }
    assert_eq!(calls(&stack).await?.len(), before + chats.len());
    let status = admin.ctl_json(&["status"]).await?;
    assert_eq!(status["pause"]["paused"], false, "{status}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_token_every_call_is_unauthenticated_and_no_secret_is_logged(
) -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let mut admin = AdminProcess::start(&stack, &[]).await?;
    let webhook = stack.webhook_url();
    let commands: Vec<Vec<&str>> = vec![
        vec!["webhook", "set", "--url", "https://evil.example/webhook"],
        vec!["webhook", "info"],
        vec!["webhook", "delete"],
        vec!["status"],
        vec!["chat", "show", "1"],
        vec!["chat", "reset", "1"],
        vec!["dlq", "list"],
        vec!["dlq", "replay", "--all"],
        vec!["dlq", "purge", "--all"],
        vec!["pause"],
        vec!["resume"],
        vec!["broadcast", "to everyone"],
        vec!["broadcast", "status", "1"],
        vec!["broadcast", "watch", "1"],
        vec!["broadcast", "list"],
        vec!["broadcast", "cancel", "1"],
    ];
    for args in &commands {
        for token in [None, Some("a-wrong-token-of-enough-length")] {
            let out = ctl(&admin.url, token, args).await?;
            assert_eq!(out.code, 3, "{args:?} with {token:?}: {out:?}");
            assert!(out.stderr.contains("unauthenticated"), "{out:?}");
        }
    }
    // Each refusal is counted.
    let metrics = stack
        .http
        .get(format!("{}/metrics", admin.health))
        .send()
        .await?
        .text()
        .await?;
    let refused = format!(
        "courier_admin_calls_total{{method=\"-\",code=\"Unauthenticated\"}} {}",
        commands.len() * 2
    );
    assert!(metrics.contains(&refused), "{refused} in {metrics}");
    // Nothing changed: the webhook is the stack's, the bot is not paused.
    let info = admin.ctl_json(&["webhook", "info"]).await?;
    assert_eq!(info["url"], webhook, "{info}");
    let status = admin.ctl_json(&["status"]).await?;
    assert_eq!(status["pause"]["paused"], false);
    let broadcasts: i64 = sqlx::query_scalar("SELECT count(*) FROM broadcasts")
        .fetch_one(&stack.db)
        .await?;
    assert_eq!(broadcasts, 0, "no broadcast was created");
    // Unreachable: exit 4.
    let out = ctl("http://127.0.0.1:1", Some(ADMIN_TOKEN), &["status"]).await?;
    assert_eq!(out.code, 4, "{out:?}");

    // A call that sends the secret to Telegram, then the logs.
    let out = admin.ctl(&["webhook", "set", "--url", &webhook]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    admin.process.sigterm().await?;
    let exited = admin
        .process
        .wait_exit(std::time::Duration::from_secs(20))
        .await?;
    assert!(
        exited.is_some_and(|s| s.success()),
        "graceful exit: {exited:?}"
    );
    let log = std::fs::read_to_string(&admin.log)?;
    assert!(log.lines().count() > 5, "the log is nearly empty: {log}");
    assert!(log.contains("admin call refused"), "refusals are logged");
    let token_secret = TOKEN.split_once(':').map(|(_, s)| s).unwrap_or(TOKEN);
    for (what, needle) in [
        ("admin token", ADMIN_TOKEN),
        ("wrong admin token", "a-wrong-token-of-enough-length"),
        ("bot token", token_secret),
        ("webhook secret", SECRET),
    ] {
        if let Some(line) = log.lines().find(|l| l.contains(needle)) {
            panic!("the {what} is in courier-admin's log: {line}");
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_answers_without_a_token_and_reflection_needs_one() -> anyhow::Result<()> {
    use tonic_health::pb::{health_check_response::ServingStatus, health_client::HealthClient};
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };

    let stack = Stack::start().await?;
    let admin = AdminProcess::start(&stack, &[]).await?;
    let channel = tonic::transport::Channel::from_shared(admin.url.clone())?
        .connect()
        .await?;

    // Health: for probes, no token.
    let health = HealthClient::new(channel.clone())
        .check(tonic_health::pb::HealthCheckRequest {
            service: "courier.admin.v1.Admin".into(),
        })
        .await?
        .into_inner();
    assert_eq!(health.status(), ServingStatus::Serving);

    // Reflection: refused without the token, lists the admin service with it.
    let list = || {
        futures::stream::iter([ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        }])
    };
    let refused = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(list())
        .await;
    assert_eq!(
        refused.err().map(|s| s.code()),
        Some(tonic::Code::Unauthenticated)
    );
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {ADMIN_TOKEN}").parse()?;
    let mut client =
        ServerReflectionClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", bearer.clone());
            Ok(req)
        });
    let mut answers = client.server_reflection_info(list()).await?.into_inner();
    let answer = answers.message().await?.context("a reflection answer")?;
    let Some(MessageResponse::ListServicesResponse(services)) = answer.message_response else {
        anyhow::bail!("not a list of services: {answer:?}");
    };
    let names: Vec<String> = services.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.iter().any(|n| n == "courier.admin.v1.Admin"),
        "{names:?}"
    );
    Ok(())
}

/// Makes a CA and a server certificate for `localhost` / 127.0.0.1 in `dir` with openssl;
/// returns (CA, certificate, key) paths.
fn make_certificates(
    dir: &std::path::Path,
) -> anyhow::Result<(std::path::PathBuf, std::path::PathBuf, std::path::PathBuf)> {
    let run = |args: &[&str]| -> anyhow::Result<()> {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .context("running openssl (install it to run this test)")?;
        anyhow::ensure!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )?;
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-subj",
        "/CN=courier-test-ca",
        "-days",
        "1",
    ])?;
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ])?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "1",
        "-extfile",
        "ext.cnf",
    ])?;
    Ok((
        dir.join("ca.pem"),
        dir.join("server.pem"),
        dir.join("server.key"),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tls_configured_the_api_is_served_over_tls_only() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let dir = std::env::temp_dir().join(format!(
        "courier-admin-tls-{}-{}",
        std::process::id(),
        stack.pg.name()
    ));
    std::fs::create_dir_all(&dir)?;
    let (ca, cert, key) = make_certificates(&dir)?;
    let admin = AdminProcess::start(
        &stack,
        &[
            ("COURIER_ADMIN_TLS_CERT", cert.display().to_string()),
            ("COURIER_ADMIN_TLS_KEY", key.display().to_string()),
        ],
    )
    .await?;
    let port = admin.url.rsplit(':').next().context("port")?;
    let https = format!("https://localhost:{port}");
    let ca = ca.display().to_string();

    let out = ctl(&https, Some(ADMIN_TOKEN), &["--ca-cert", &ca, "status"]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("PARTITION"), "{out:?}");
    // The token is still needed over TLS.
    let out = ctl(&https, None, &["--ca-cert", &ca, "status"]).await?;
    assert_eq!(out.code, 3, "{out:?}");
    // A certificate the client does not trust, and plaintext: not reachable.
    let out = ctl(&https, Some(ADMIN_TOKEN), &["status"]).await?;
    assert_eq!(out.code, 4, "untrusted certificate: {out:?}");
    let out = ctl(&admin.url, Some(ADMIN_TOKEN), &["status"]).await?;
    assert_ne!(out.code, 0, "plaintext to a TLS server: {out:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn courier_admin_refuses_to_start_without_a_token_unless_dev() -> anyhow::Result<()> {
    let bin = courier_tests::procs::binary("courier-admin").await?;
    let run = |extra: &[(&str, &str)]| {
        let mut cmd = tokio::process::Command::new(&bin);
        cmd.env_clear()
            .env("COURIER_BOT_TOKEN", TOKEN)
            .env("COURIER_WEBHOOK_SECRET", SECRET)
            .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
            .env("NATS_URL", "nats://127.0.0.1:1")
            .env("COURIER_ADMIN_ADDR", "127.0.0.1:0")
            .env("COURIER_ADMIN_HEALTH_ADDR", "127.0.0.1:0")
            .envs(extra.iter().copied())
            .kill_on_drop(true);
        cmd
    };
    let out = tokio::time::timeout(std::time::Duration::from_secs(20), run(&[]).output())
        .await
        .context("courier-admin without a token did not exit")??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("COURIER_ADMIN_TOKEN: is required"),
        "{stderr}"
    );
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        run(&[("COURIER_ADMIN_TOKEN", "short")]).output(),
    )
    .await
    .context("courier-admin with a bad token did not exit")??;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("COURIER_ADMIN_TOKEN:"), "{stderr}");
    assert!(
        !stderr.contains("short"),
        "the value is not echoed: {stderr}"
    );
    // With COURIER_DEV=1 it takes the development token (and then waits for NATS).
    let log = std::env::temp_dir().join(format!("courier-admin-dev-{}.log", std::process::id()));
    let file = std::fs::File::create(&log)?;
    let mut dev = run(&[("COURIER_DEV", "1"), ("RUST_LOG", "warn")])
        .stderr(file.try_clone()?)
        .stdout(file)
        .spawn()?;
    eventually("the development token taken", DEADLINE, || async {
        let text = std::fs::read_to_string(&log)?;
        Ok(text
            .contains("COURIER_ADMIN_TOKEN is not set; using the development value")
            .then_some(()))
    })
    .await?;
    assert!(
        dev.try_wait()?.is_none(),
        "courier-admin exited in dev mode"
    );
    dev.kill().await?;
    Ok(())
}
