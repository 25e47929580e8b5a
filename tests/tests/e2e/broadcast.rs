//! Broadcasts (issue 18): `courierctl broadcast "text"` (a process) against `courier-admin` (a
//! process) creates a job the workers run through the outbox; every user who started the bot
//! and has not blocked it gets the text exactly once, within Telegram's limits, also when
//! courier-admin, the sender and the worker running the job are SIGKILLed mid-way — and the
//! operator's watch survives the admin's restart.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context as _, Result};
use courier_tests::admin::{ctl_command, AdminProcess, ADMIN_TOKEN};
use courier_tests::eventually;
use courier_tests::procs::{ProcessStack, ProcessStackOptions};
use futures::future::try_join_all;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _};

const BOT: i64 = 424_242;
const USERS: i64 = 500;
const FIRST: i64 = 7_000_001;

/// `courierctl --json …` running in the background, its JSON lines collected as they come.
struct Operator {
    child: tokio::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: tokio::task::JoinHandle<()>,
    errors: tokio::task::JoinHandle<String>,
}

impl Operator {
    async fn start(url: &str, args: &[&str]) -> Result<Self> {
        let mut child = ctl_command(url, Some(ADMIN_TOKEN), args)
            .await?
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let mut stdout = tokio::io::BufReader::new(child.stdout.take().context("stdout")?).lines();
        let reader = {
            let lines = lines.clone();
            tokio::spawn(async move {
                while let Ok(Some(line)) = stdout.next_line().await {
                    lines.lock().expect("lines").push(line);
                }
            })
        };
        let mut stderr = child.stderr.take().context("stderr")?;
        let errors = tokio::spawn(async move {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s).await;
            s
        });
        Ok(Self {
            child,
            lines,
            reader,
            errors,
        })
    }

    /// The lines printed so far.
    fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// Waits for the exit: its code, every line as JSON (each must be), and its stderr.
    async fn wait(mut self, deadline: Duration) -> Result<(Option<i32>, Vec<Value>, String)> {
        let status = tokio::time::timeout(deadline, self.child.wait())
            .await
            .context("courierctl did not finish")??;
        let lines = self.lines.clone();
        self.reader.await?;
        let errors = self.errors.await?;
        let jobs = lines
            .lock()
            .expect("lines")
            .iter()
            .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
            .collect::<Result<_>>()?;
        Ok((status.code(), jobs, errors))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_from_courierctl_reaches_every_user_once_while_admin_sender_and_worker_are_killed(
) -> Result<()> {
    let mut stack = ProcessStack::start(ProcessStackOptions::default()).await?;
    let mut admin = AdminProcess::start_beside(&stack, &[]).await?;
    let http = reqwest::Client::new();
    // Users start the bot through Telegram (the sandbox), as they must before a bot may write
    // to them; the last one blocks it afterwards.
    let chats: Vec<i64> = (FIRST..FIRST + USERS).collect();
    for batch in chats.chunks(50) {
        try_join_all(batch.iter().map(|&chat| stack.say(chat, "/start"))).await?;
    }
    let stats = |http: reqwest::Client, url: String| async move {
        let v: Value = http.get(url).send().await?.json().await?;
        anyhow::Ok(v)
    };
    let stats_url = format!("{}/sandbox/stats", stack.sandbox_url);
    eventually("every user welcomed", Duration::from_secs(120), || {
        let f = stats(http.clone(), stats_url.clone());
        async move { Ok((f.await?["messages_from_bot"].as_u64() >= Some(USERS as u64)).then_some(())) }
    })
    .await?;
    let pool = sqlx::PgPool::connect(stack.pg.url()).await?;
    let blocked = FIRST + USERS - 1;
    sqlx::query("INSERT INTO blocked_chats (bot_id, chat_id, reason) VALUES ($1, $2, 'test')")
        .bind(BOT)
        .bind(blocked)
        .execute(&pool)
        .await?;

    // The operator's command: create the broadcast and watch it to the end, as JSON lines.
    let text = "Service notice: the bot is moving to a new home.";
    let operator = Operator::start(&admin.url, &["--json", "broadcast", text]).await?;

    // Kill the sender a fifth of the way, courier-admin (which the watch is connected to)
    // two fifths, the worker (the job's runner) three fifths.
    let at = |n: u64| {
        let (http, url) = (http.clone(), stats_url.clone());
        async move {
            eventually("broadcast progress", Duration::from_secs(120), || {
                let f = stats(http.clone(), url.clone());
                async move {
                    let sent = f.await?["messages_from_bot"].as_u64().unwrap_or(0);
                    Ok((sent >= USERS as u64 + n).then_some(()))
                }
            })
            .await
        }
    };
    at(100).await?;
    let sender_killed_ms = chrono::Utc::now().timestamp_millis();
    stack.kill_and_restart("courier-sender").await?;
    at(200).await?;
    let lines_before_admin_kill = operator.lines().len();
    admin.kill_and_restart().await?;
    at(300).await?;
    stack.kill_and_restart("courier-worker").await?;

    let (code, jobs, errors) = operator.wait(Duration::from_secs(120)).await?;
    assert_eq!(code, Some(0), "{errors}\n{jobs:?}");
    let (first, last) = (&jobs[0], &jobs[jobs.len() - 1]);
    assert_eq!(
        first["recipients"],
        USERS - 1,
        "every user but the blocked one"
    );
    assert_eq!(first["state"], "running", "{first}");
    assert_eq!(last["id"], first["id"]);
    assert_eq!(last["finished"], true, "{last}");
    assert_eq!(last["state"], "enqueued", "{last}");
    assert_eq!(
        (&last["enqueued"], &last["sent"], &last["failed"]),
        (
            &Value::from(USERS - 1),
            &Value::from(USERS - 1),
            &Value::from(0)
        ),
        "{last}"
    );
    let sent: Vec<i64> = jobs.iter().filter_map(|j| j["sent"].as_i64()).collect();
    assert!(sent.windows(2).all(|w| w[0] <= w[1]), "{sent:?}");
    // The watch broke when courier-admin died, and was opened again on its successor, which
    // streamed the rest.
    assert!(errors.contains("interrupted"), "{errors}");
    assert!(
        jobs.len() > lines_before_admin_kill + 1,
        "progress after the admin's restart: {jobs:?}"
    );
    let id = last["id"].to_string();
    let shown = admin.ctl_json(&["broadcast", "status", &id]).await?;
    assert_eq!(shown["sent"], USERS - 1, "{shown}");
    let listed = admin.ctl_json(&["broadcast", "list"]).await?;
    assert_eq!(listed["broadcasts"][0]["id"], last["id"], "{listed}");

    // Telegram's view: every user at least once, the blocked one never. Once each, except a
    // message whose call Telegram answered just before the sender's SIGKILL, before its
    // ledger had recorded it: the Bot API has no idempotency key, so that call is made again
    // (at-least-once at the Bot API, docs/SENDER.md). Such a copy must be explained by the
    // kill: its first call accepted at most 2 s before it (or in flight, 1 s after).
    // courier-admin's and the worker's deaths explain none.
    let calls: Vec<courier_sandbox::CallRecord> = http
        .get(format!("{}/sandbox/calls", stack.sandbox_url))
        .send()
        .await?
        .json()
        .await?;
    let mut by_chat: std::collections::BTreeMap<i64, Vec<i64>> = Default::default();
    for c in calls
        .iter()
        .filter(|c| c.method == "sendMessage" && c.status == 200 && c.text.as_deref() == Some(text))
    {
        by_chat.entry(c.chat_id).or_default().push(c.at_unix_ms);
    }
    let mut duplicated = Vec::new();
    for chat in &chats {
        let got = by_chat.get(chat).map_or(0, Vec::len);
        if *chat == blocked {
            assert_eq!(got, 0, "the blocked user gets nothing");
            continue;
        }
        assert!(got >= 1, "chat {chat} never got the broadcast");
        if got > 1 {
            let first = by_chat[chat][0];
            assert!(
                (sender_killed_ms - 2_000..=sender_killed_ms + 1_000).contains(&first),
                "chat {chat} got it {got} times; its first call ({first}) was not in flight at \
                 the sender's SIGKILL ({sender_killed_ms})"
            );
            assert_eq!(got, 2, "chat {chat}: at most one resend");
            duplicated.push(*chat);
        }
    }
    eprintln!(
        "{} users, {} got it twice (in flight at the sender's SIGKILL): {duplicated:?}; {} \
         progress lines",
        USERS - 1,
        duplicated.len(),
        jobs.len()
    );
    assert!(duplicated.len() <= 8, "{duplicated:?}");
    let s = stats(http.clone(), stats_url.clone()).await?;
    assert_eq!(s["responses_429"], 0, "no 429 from Telegram: {s}");
    stack.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_broadcast_enqueues_no_more_and_its_watch_ends_with_exit_7() -> Result<()> {
    use courier_worker::broadcast::{MAX_OUTSTANDING, PAGE, POLL};
    let stack = courier_tests::Stack::start().await?;
    let mut admin = AdminProcess::start(&stack, &[]).await?;
    let pool = &stack.db;
    // Recipients (the platform's audience) without a chat in the sandbox: whether Telegram takes their messages does
    // not matter here, only what the job enqueues.
    for user in 0..(PAGE * 5) {
        sqlx::query("INSERT INTO audience (bot_id, chat_id) VALUES ($1, $2)")
            .bind(stack.bot_id())
            .bind(8_000_000 + user)
            .execute(pool)
            .await?;
    }
    // Paused, the sender finishes nothing: the job stops at MAX_OUTSTANDING enqueued.
    let out = admin.ctl(&["pause", "--reason", "broadcast test"]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    let job = admin
        .ctl_json(&["broadcast", "never mind", "--no-wait"])
        .await?;
    assert_eq!(job["recipients"], PAGE * 5, "{job}");
    let id = job["id"].to_string();
    eventually(
        "the job stops at its outstanding limit",
        courier_tests::DEADLINE,
        || async {
            let j = admin.ctl_json(&["broadcast", "status", &id]).await?;
            Ok((j["enqueued"] == MAX_OUTSTANDING).then_some(()))
        },
    )
    .await?;
    let human = admin.ctl(&["broadcast", "status", &id]).await?;
    assert!(human.stdout.contains("running (enqueuing)"), "{human:?}");

    // A watch open while courier-admin stops gracefully: the admin ends the stream at once
    // (SIGTERM does not wait for it), and the watch is opened again on its successor.
    let watch = Operator::start(&admin.url, &["--json", "broadcast", "watch", &id]).await?;
    eventually(
        "the watch's first line",
        courier_tests::DEADLINE,
        || async { Ok((!watch.lines().is_empty()).then_some(())) },
    )
    .await?;
    admin.process.sigterm().await?;
    let exited = admin.process.wait_exit(Duration::from_secs(10)).await?;
    assert!(
        exited.is_some_and(|s| s.success()),
        "a prompt, graceful exit: {exited:?}"
    );
    admin.restart().await?;

    let out = admin.ctl(&["broadcast", "cancel", &id]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("cancelled"), "{out:?}");
    let again = admin.ctl_json(&["broadcast", "cancel", &id]).await?;
    assert_eq!(
        again["cancelled"], false,
        "a second cancel finds it cancelled: {again}"
    );
    let cancelled = &again["job"];
    assert_eq!(cancelled["state"], "cancelled");
    let enqueued = cancelled["enqueued"].as_i64().context("enqueued")?;
    assert!(enqueued <= MAX_OUTSTANDING, "{cancelled}");
    let unpublished: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE broadcast_id = $1 AND published_at IS NULL",
    )
    .bind(job["id"].as_i64())
    .fetch_one(pool)
    .await?;
    assert_eq!(unpublished, 0, "its unpublished rows are gone");
    // The workers never pick it up again (an absence: given the runner's poll a few times).
    tokio::time::sleep(POLL * 3).await;
    let later = admin.ctl_json(&["broadcast", "status", &id]).await?;
    assert_eq!(later["enqueued"], enqueued, "{later}");

    // Resumed, the sender settles what was handed to it; the watch then ends: exit 7, the
    // broadcast did not reach everyone.
    let out = admin.ctl(&["resume"]).await?;
    assert_eq!(out.code, 0, "{out:?}");
    let (code, lines, errors) = watch.wait(courier_tests::DEADLINE).await?;
    assert_eq!(code, Some(7), "{errors}\n{lines:?}");
    assert!(errors.contains("shutting down"), "{errors}");
    let last = lines.last().context("a line")?;
    assert_eq!(last["finished"], true, "{last}");
    assert_eq!(last["state"], "cancelled", "{last}");
    assert_eq!(
        last["sent"].as_i64().unwrap_or(0) + last["failed"].as_i64().unwrap_or(0),
        enqueued,
        "{last}"
    );
    let listed = admin.ctl_json(&["broadcast", "list"]).await?;
    assert_eq!(listed["broadcasts"][0]["id"], job["id"], "{listed}");
    let human = admin.ctl(&["broadcast", "list"]).await?;
    assert!(human.stdout.contains("never mind"), "{human:?}");

    // Refused: exit 2 (no job is stored); unknown ids: exit 5.
    let long = "x".repeat(4097);
    for args in [
        vec!["broadcast", "  "],
        vec!["broadcast", "--parse-mode", "html", "<b>hi</b>"],
        vec!["broadcast", long.as_str()],
    ] {
        let out = admin.ctl(&args).await?;
        assert_eq!(out.code, 2, "{out:?}");
    }
    for args in [
        ["broadcast", "status", "999999"],
        ["broadcast", "watch", "999999"],
        ["broadcast", "cancel", "999999"],
    ] {
        let out = admin.ctl(&args).await?;
        assert_eq!(out.code, 5, "{args:?}: {out:?}");
    }
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM broadcasts")
        .fetch_one(pool)
        .await?;
    assert_eq!(jobs, 1, "refused broadcasts store nothing");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broadcast_call_repeated_with_its_request_id_creates_one_job() -> Result<()> {
    use courier_proto::admin::v1::{self as pb, admin_client::AdminClient};
    let stack = courier_tests::Stack::start().await?;
    let admin = AdminProcess::start(&stack, &[]).await?;
    let mut client = AdminClient::connect(admin.url.clone()).await?;
    let call = |text: &str, key: &str| {
        let mut r = tonic::Request::new(pb::BroadcastRequest {
            text: text.into(),
            parse_mode: String::new(),
            request_id: key.into(),
        });
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {ADMIN_TOKEN}").parse().expect("header"),
        );
        r
    };
    let a = client.broadcast(call("hello", "key-1")).await?.into_inner();
    let b = client.broadcast(call("hello", "key-1")).await?.into_inner();
    assert_eq!(a.id, b.id, "the retry finds the first job");
    let other = client.broadcast(call("hello", "key-2")).await?.into_inner();
    assert_ne!(other.id, a.id);
    let clash = client
        .broadcast(call("another text", "key-1"))
        .await
        .expect_err("a key is one broadcast");
    assert_eq!(clash.code(), tonic::Code::AlreadyExists, "{clash:?}");
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM broadcasts")
        .fetch_one(&stack.db)
        .await?;
    assert_eq!(jobs, 2);
    Ok(())
}

/// A finished broadcast's counts are written into its row, so they outlive the outbox and
/// ledger rows they are counted from (which retention prunes after `COURIER_RETENTION`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_broadcasts_counts_outlive_the_rows_they_were_counted_from() -> Result<()> {
    let stack = courier_tests::Stack::start().await?;
    let pool = &stack.db;
    // Users Telegram does not know (no chat in the sandbox): each message is refused for good
    // ("chat not found") and dead-lettered, so the job finishes with 5 failures.
    for user in 0..5_i64 {
        sqlx::query("INSERT INTO audience (bot_id, chat_id) VALUES ($1, $2)")
            .bind(stack.bot_id())
            .bind(8_100_000 + user)
            .execute(pool)
            .await?;
    }
    let job = courier_worker::broadcast::create(pool, stack.bot_id(), "to nobody", "").await?;
    let frozen = eventually(
        "the final counts written",
        courier_tests::DEADLINE,
        || async {
            let row: (Option<i64>, Option<i64>) =
                sqlx::query_as("SELECT final_sent, final_failed FROM broadcasts WHERE id = $1")
                    .bind(job.id)
                    .fetch_one(pool)
                    .await?;
            Ok(row.0.is_some().then_some(row))
        },
    )
    .await?;
    assert_eq!(frozen, (Some(0), Some(5)));
    // What retention does to the rows they were counted from.
    sqlx::query(
        "DELETE FROM sent_messages WHERE outbox_id IN \
         (SELECT id FROM outbox WHERE broadcast_id = $1)",
    )
    .bind(job.id)
    .execute(pool)
    .await?;
    sqlx::query("DELETE FROM outbox WHERE broadcast_id = $1")
        .bind(job.id)
        .execute(pool)
        .await?;
    let p = courier_worker::broadcast::progress(pool, stack.bot_id(), job.id)
        .await?
        .context("the job")?;
    assert_eq!((p.enqueued, p.sent, p.failed), (5, 0, 5));
    assert!(p.finished());
    Ok(())
}
