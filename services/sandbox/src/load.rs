//! The load generator, `courier-sandbox load`: simulated users send messages through a
//! running sandbox (and so through the whole stack behind its webhook), and the sandbox's own
//! correlation of replies (`GET /sandbox/latency`) gives each message's latency, from the
//! update's creation to the bot's `sendMessage` arriving.
//!
//! Each chat first sends `/start` (warm-up, not measured), then notes, in one of two modes:
//! *open loop* (the default: notes at `--rate` over all chats, whatever the replies do) or
//! *closed loop* (`--notes-per-chat M`: every chat sends M notes, each only after the previous
//! one's reply arrived, which the sandbox's live events, `GET /sandbox/events`, announce).
//! Each note must get exactly one reply: a note without one when the drain deadline passes is *lost*, one with
//! more is *duplicated*. The sandbox counts a reply in a chat for the chat's oldest unanswered
//! message (a bot answers a chat in order), so a lost reply followed by a duplicate in the
//! same chat cancels out; across chats they are exact.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use courier_common::config::parse_duration;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;

use crate::{MessageLatency, Stats};

/// The load generator's options.
#[derive(Debug, Clone, clap::Args)]
pub struct LoadArgs {
    /// Base URL of the running sandbox.
    #[arg(
        long = "sandbox-url",
        env = "COURIER_SANDBOX_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub sandbox_url: String,
    /// Simulated users, each in its own private chat.
    #[arg(long, default_value_t = 50)]
    pub users: u32,
    /// Group chats in addition (each with users of its own; note Telegram's 20 replies/min
    /// per group).
    #[arg(long, default_value_t = 0)]
    pub groups: u32,
    /// Target messages per second over all chats; 0: as fast as --concurrency allows.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    /// Most message creations in flight at once.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// How long to send (`30s`, `2m`); ignored when --messages is given.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Send exactly this many notes instead of sending for --duration.
    #[arg(long)]
    pub messages: Option<u64>,
    /// Closed loop: every chat sends exactly this many notes, each only after the previous
    /// one's reply arrived (--rate, --concurrency, --duration and --messages do not apply; a
    /// chat whose note stays unanswered for --drain-timeout stops there).
    #[arg(long = "notes-per-chat", value_parser = clap::value_parser!(u32).range(1..),
          conflicts_with_all = ["rate", "concurrency", "duration", "messages"])]
    pub notes_per_chat: Option<u32>,
    /// How long to wait for the last replies after sending stops (closed loop: for each
    /// note's reply).
    #[arg(long = "drain-timeout", default_value = "30s", value_parser = parse_duration)]
    pub drain_timeout: Duration,
    /// How long to wait for every `/start` to be answered before measuring.
    #[arg(long = "warmup-timeout", default_value = "60s", value_parser = parse_duration)]
    pub warmup_timeout: Duration,
    /// First chat id (private chats are base..base+users, groups their negatives); default:
    /// derived from the clock, so runs never share chats.
    #[arg(long = "chat-id-base")]
    pub chat_id_base: Option<i64>,
    /// Write the report as JSON to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// No progress line.
    #[arg(long)]
    pub quiet: bool,
}

impl LoadArgs {
    /// Defaults for a given sandbox URL (as the flags' defaults).
    pub fn new(sandbox_url: impl Into<String>) -> Self {
        Self {
            sandbox_url: sandbox_url.into(),
            users: 50,
            groups: 0,
            rate: 20.0,
            concurrency: 32,
            duration: Duration::from_secs(10),
            messages: None,
            notes_per_chat: None,
            drain_timeout: Duration::from_secs(30),
            warmup_timeout: Duration::from_secs(60),
            chat_id_base: None,
            json: None,
            quiet: false,
        }
    }
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

/// How the notes are offered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Notes at a target rate over all chats, whatever the replies do.
    #[default]
    Open,
    /// Each chat sends its next note only after the previous one's reply arrived.
    Closed,
}

/// The result of a load run (also the `--json` file).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The sandbox.
    pub sandbox_url: String,
    /// Open or closed loop.
    #[serde(default)]
    pub mode: Mode,
    /// Private chats.
    pub users: u32,
    /// Group chats.
    pub groups: u32,
    /// Target rate (0: as fast as possible; open loop).
    pub target_rate: f64,
    /// Notes each chat was to send (closed loop).
    #[serde(default)]
    pub notes_per_chat: Option<u32>,
    /// Notes created (the warm-up `/start`s excluded).
    pub messages_sent: u64,
    /// Notes that got at least one reply.
    pub replied: u64,
    /// Seconds from the first note to the last first reply.
    pub seconds: f64,
    /// Unix time in milliseconds of the first note's creation: the measured phase's start.
    #[serde(default)]
    pub first_note_unix_ms: f64,
    /// Unix time in milliseconds of the last first reply: the measured phase's end.
    #[serde(default)]
    pub last_reply_unix_ms: f64,
    /// Replies per second over `seconds`.
    pub throughput_per_sec: f64,
    /// Latency from the update's creation to the reply's arrival.
    pub latency_ms: Latency,
    /// Notes the generator could not create (HTTP errors).
    pub errors: u64,
    /// 429 answers the sandbox gave the bot during the run.
    pub responses_429: u64,
    /// Webhook deliveries that failed during the run.
    pub webhook_failures: u64,
    /// Notes without a reply when the drain deadline passed.
    pub lost: u64,
    /// Notes with more than one reply.
    pub duplicated: u64,
}

/// One simulated chat.
#[derive(Debug, Clone)]
struct SimChat {
    chat_id: i64,
    user_id: i64,
    chat_type: &'static str,
    sent: Arc<AtomicU64>,
}

/// What the measured phase's senders share.
#[derive(Clone)]
struct Tally {
    say: Arc<Sayer>,
    sent: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    /// The notes created: (chat, message id).
    ours: Arc<Mutex<Vec<(i64, i64)>>>,
}

impl Tally {
    /// Creates a note; returns its message id, or `None` (counted as an error) when the
    /// sandbox refused it.
    async fn note(&self, c: &SimChat, text: &str) -> Option<i64> {
        match self.say.say(c, text).await {
            Ok(id) => {
                self.ours
                    .lock()
                    .expect("not poisoned")
                    .push((c.chat_id, id));
                self.sent.fetch_add(1, Ordering::Relaxed);
                Some(id)
            }
            Err(e) => {
                tracing::debug!("creating a message failed: {e:#}");
                self.errors.fetch_add(1, Ordering::Relaxed);
                None
            }
        }
    }
}

/// Runs a load and returns its report (printing progress and the table unless `quiet`).
pub async fn run(args: LoadArgs) -> anyhow::Result<Report> {
    if args.users + args.groups == 0 {
        bail!("nothing to simulate: --users and --groups are both 0");
    }
    let base_url = args.sandbox_url.trim_end_matches('/').to_owned();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency.max(1))
        .timeout(Duration::from_secs(30))
        .build()?;
    stats(&http, &base_url)
        .await
        .with_context(|| format!("is a sandbox running at {base_url}?"))?;
    let base = args.chat_id_base.unwrap_or_else(|| {
        1_000_000_000_000 + (chrono::Utc::now().timestamp_millis() % 1_000_000_000) * 100_000
    });
    let chats: Vec<SimChat> = (0..i64::from(args.users))
        .map(|i| SimChat {
            chat_id: base + i,
            user_id: base + i,
            chat_type: "private",
            sent: Arc::default(),
        })
        .chain((0..i64::from(args.groups)).map(|i| SimChat {
            chat_id: -(base + i),
            user_id: base + i64::from(args.users) + i,
            chat_type: "group",
            sent: Arc::default(),
        }))
        .collect();
    let say = Arc::new(Sayer {
        http: http.clone(),
        url: format!("{base_url}/sandbox/messages"),
    });
    warm_up(&http, &base_url, &say, &chats, &args).await?;

    // Measured phase.
    let since = chrono::Utc::now().timestamp_millis() - 1;
    // Subscribed before the first note, so that no reply is missed.
    let replies = match args.notes_per_chat {
        Some(_) => Some(ReplyWatch::subscribe(&http, &base_url, since, &chats).await?),
        None => None,
    };
    let mid = stats(&http, &base_url).await?;
    let tally = Tally {
        say,
        sent: Arc::default(),
        errors: Arc::default(),
        ours: Arc::default(),
    };
    let started = Instant::now();
    let progress = (!args.quiet).then(|| {
        tokio::spawn(progress_loop(
            http.clone(),
            base_url.clone(),
            mid.clone(),
            tally.sent.clone(),
            tally.errors.clone(),
            started,
        ))
    });
    match (args.notes_per_chat, &replies) {
        (Some(notes), Some(replies)) => {
            closed_loop(&chats, notes, replies, args.drain_timeout, &tally).await?;
        }
        _ => open_loop(&chats, &args, started, &tally).await?,
    }
    if let Some(replies) = replies {
        replies.stop();
    }

    // Drain: wait for every reply (or the deadline). A closed loop has waited for each.
    let ours: Vec<(i64, i64)> = std::mem::take(&mut *tally.ours.lock().expect("not poisoned"));
    let drain_deadline = if args.notes_per_chat.is_some() {
        Instant::now()
    } else {
        Instant::now() + args.drain_timeout
    };
    let found = loop {
        let lat = latency(&http, &base_url, since).await?;
        let by_id: HashMap<(i64, i64), MessageLatency> = lat
            .into_iter()
            .map(|m| ((m.chat_id, m.message_id), m))
            .collect();
        let found: Vec<MessageLatency> =
            ours.iter().filter_map(|k| by_id.get(k).cloned()).collect();
        let unanswered = found.iter().filter(|m| m.replies == 0).count();
        if unanswered == 0 || Instant::now() >= drain_deadline {
            break found;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if let Some(p) = progress {
        p.abort();
    }
    let after = stats(&http, &base_url).await?;
    let report = summarize(
        &args,
        &base_url,
        &found,
        &mid,
        &after,
        tally.errors.load(Ordering::Relaxed),
    );
    if !args.quiet {
        eprintln!();
        println!("{}", table(&report));
    }
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

/// Every chat says `/start` and waits for its answer.
async fn warm_up(
    http: &reqwest::Client,
    base_url: &str,
    say: &Arc<Sayer>,
    chats: &[SimChat],
    args: &LoadArgs,
) -> anyhow::Result<()> {
    let warm_since = chrono::Utc::now().timestamp_millis() - 1;
    let mut starts = Vec::new();
    for c in chats {
        starts.push(tokio::spawn({
            let say = say.clone();
            let c = c.clone();
            async move { say.say(&c, "/start").await }
        }));
    }
    let mut warm_ids = HashMap::new();
    for (c, s) in chats.iter().zip(starts) {
        let id = s.await?.context("warm-up /start")?;
        warm_ids.insert(c.chat_id, id);
    }
    if !args.quiet {
        eprintln!(
            "warm-up: {} chats said /start; waiting for the replies…",
            chats.len()
        );
    }
    let warm_deadline = Instant::now() + args.warmup_timeout;
    loop {
        let lat = latency(http, base_url, warm_since).await?;
        let answered = lat
            .iter()
            .filter(|m| warm_ids.get(&m.chat_id) == Some(&m.message_id) && m.replies > 0)
            .count();
        if answered == chats.len() {
            return Ok(());
        }
        if Instant::now() >= warm_deadline {
            bail!(
                "warm-up: only {answered} of {} /start messages were answered within {:?}; \
                 is the bot running behind the sandbox's webhook?",
                chats.len(),
                args.warmup_timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Open loop: notes round-robin over the chats at `--rate`, for `--duration` or `--messages`.
async fn open_loop(
    chats: &[SimChat],
    args: &LoadArgs,
    started: Instant,
    tally: &Tally,
) -> anyhow::Result<()> {
    let permits = Arc::new(Semaphore::new(args.concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut i: u64 = 0;
    loop {
        if let Some(n) = args.messages {
            if i >= n {
                break;
            }
        } else if started.elapsed() >= args.duration {
            break;
        }
        if args.rate > 0.0 {
            let at = started + Duration::from_secs_f64(i as f64 / args.rate);
            tokio::time::sleep_until(at).await;
        }
        let permit = permits.clone().acquire_owned().await?;
        let c = chats[(i % chats.len() as u64) as usize].clone();
        let tally = tally.clone();
        tasks.spawn(async move {
            let n = c.sent.fetch_add(1, Ordering::Relaxed) + 1;
            tally
                .note(&c, &format!("note {n} of user {}", c.chat_id))
                .await;
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
        i += 1;
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// Closed loop: every chat sends `notes` notes, each as soon as the previous one's reply
/// arrived; a chat whose note stays unanswered for `reply_timeout` stops.
async fn closed_loop(
    chats: &[SimChat],
    notes: u32,
    replies: &ReplyWatch,
    reply_timeout: Duration,
    tally: &Tally,
) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for c in chats {
        let c = c.clone();
        let tally = tally.clone();
        let mut answered = replies.receiver(c.chat_id)?;
        tasks.spawn(async move {
            for n in 1..=notes {
                let text = format!("note {n} of user {}", c.chat_id);
                let Some(id) = tally.note(&c, &text).await else {
                    continue;
                };
                let reply = answered.wait_for(|&newest| newest >= id);
                match tokio::time::timeout(reply_timeout, reply).await {
                    Ok(Ok(_)) => {}
                    // Lost (the report counts it), or the watch ended: this chat stops.
                    Ok(Err(_)) | Err(_) => return,
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done?;
    }
    Ok(())
}

/// For each chat, the newest user message the sandbox counted a bot reply for, kept current
/// from its live events (`GET /sandbox/events`) and, should an event be missed (the stream
/// lagged or ended), from `GET /sandbox/latency` every second.
struct ReplyWatch {
    chats: Arc<HashMap<i64, watch::Sender<i64>>>,
    task: tokio::task::JoinHandle<()>,
}

impl ReplyWatch {
    /// Subscribes to the events; returns once the sandbox has the subscription.
    async fn subscribe(
        http: &reqwest::Client,
        base_url: &str,
        since_ms: i64,
        chats: &[SimChat],
    ) -> anyhow::Result<Self> {
        // The event stream lasts as long as the run: no overall timeout on it.
        let events = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .build()?
            .get(format!("{base_url}/sandbox/events"))
            .send()
            .await?
            .error_for_status()
            .context("GET /sandbox/events")?;
        let chats: Arc<HashMap<i64, watch::Sender<i64>>> = Arc::new(
            chats
                .iter()
                .map(|c| (c.chat_id, watch::channel(0).0))
                .collect(),
        );
        let task = tokio::spawn(follow(
            events,
            http.clone(),
            base_url.to_owned(),
            since_ms,
            chats.clone(),
        ));
        Ok(Self { chats, task })
    }

    fn receiver(&self, chat_id: i64) -> anyhow::Result<watch::Receiver<i64>> {
        Ok(self
            .chats
            .get(&chat_id)
            .context("a chat of this run")?
            .subscribe())
    }

    fn stop(self) {
        self.task.abort();
    }
}

/// Feeds [`ReplyWatch`]: parses the server-sent events, and polls the latencies every second
/// and after a lag.
async fn follow(
    events: reqwest::Response,
    http: reqwest::Client,
    base_url: String,
    since_ms: i64,
    chats: Arc<HashMap<i64, watch::Sender<i64>>>,
) {
    let answered = |chat_id: i64, message_id: i64| {
        if let Some(tx) = chats.get(&chat_id) {
            tx.send_if_modified(|newest| {
                let newer = message_id > *newest;
                if newer {
                    *newest = message_id;
                }
                newer
            });
        }
    };
    let mut events = Some(events);
    let mut buf: Vec<u8> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let mut poll = false;
        tokio::select! {
            chunk = next_chunk(&mut events) => match chunk {
                Some(bytes) => {
                    buf.extend_from_slice(&bytes);
                    while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
                        let block: Vec<u8> = buf.drain(..end + 2).collect();
                        match parse_event(&block) {
                            Some(Event::Reply { chat_id, to }) => answered(chat_id, to),
                            Some(Event::Lagged) => poll = true,
                            None => {}
                        }
                    }
                }
                None => {
                    tracing::debug!("the sandbox's event stream ended; polling only");
                    events = None;
                    poll = true;
                }
            },
            _ = tick.tick() => poll = true,
        }
        if poll {
            if let Ok(lat) = latency(&http, &base_url, since_ms).await {
                for m in lat.iter().filter(|m| m.replies > 0) {
                    answered(m.chat_id, m.message_id);
                }
            }
        }
    }
}

/// The next chunk of the event stream; pending forever once it ended.
async fn next_chunk(events: &mut Option<reqwest::Response>) -> Option<bytes::Bytes> {
    match events {
        Some(response) => response.chunk().await.ok().flatten(),
        None => std::future::pending().await,
    }
}

/// What the load generator reads from one server-sent event.
#[derive(Debug, PartialEq, Eq)]
enum Event {
    /// A bot message, counted as the reply to user message `to`.
    Reply { chat_id: i64, to: i64 },
    /// The sandbox dropped events for this subscriber.
    Lagged,
}

/// Parses one event block (`event: …` / `data: …` lines); `None` for every other event.
fn parse_event(block: &[u8]) -> Option<Event> {
    let text = std::str::from_utf8(block).ok()?;
    let data: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect::<Vec<_>>()
        .join("\n");
    let v: serde_json::Value = serde_json::from_str(&data).ok()?;
    match v["type"].as_str()? {
        "lagged" => Some(Event::Lagged),
        "message" if v["message"]["from_bot"].as_bool() == Some(true) => Some(Event::Reply {
            chat_id: v["chat_id"].as_i64()?,
            to: v["message"]["reply_to"].as_i64()?,
        }),
        _ => None,
    }
}

struct Sayer {
    http: reqwest::Client,
    url: String,
}

impl Sayer {
    /// Creates a user message; returns its message id.
    async fn say(&self, c: &SimChat, text: &str) -> anyhow::Result<i64> {
        let res = self
            .http
            .post(&self.url)
            .json(&json!({
                "chat_id": c.chat_id, "user_id": c.user_id, "chat_type": c.chat_type,
                "first_name": format!("Load {}", c.user_id), "text": text,
            }))
            .send()
            .await?;
        let status = res.status();
        let body: serde_json::Value = res.json().await?;
        if !status.is_success() {
            bail!("POST /sandbox/messages: {status}: {body}");
        }
        body["message_id"]
            .as_i64()
            .context("POST /sandbox/messages: no message_id")
    }
}

async fn stats(http: &reqwest::Client, base: &str) -> anyhow::Result<Stats> {
    Ok(http
        .get(format!("{base}/sandbox/stats"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

async fn latency(
    http: &reqwest::Client,
    base: &str,
    since_ms: i64,
) -> anyhow::Result<Vec<MessageLatency>> {
    Ok(http
        .get(format!("{base}/sandbox/latency?since_ms={since_ms}"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?)
}

async fn progress_loop(
    http: reqwest::Client,
    base: String,
    start: Stats,
    sent: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    started: Instant,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last_replies = 0;
    loop {
        tick.tick().await;
        let Ok(s) = stats(&http, &base).await else {
            continue;
        };
        let replies = s.messages_from_bot.saturating_sub(start.messages_from_bot);
        eprintln!(
            "[{:>4.0}s] sent {:>7}  replies {:>7} ({:>6.1}/s)  pending updates {:>5}  429s {:>5}  errors {:>4}",
            started.elapsed().as_secs_f64(),
            sent.load(Ordering::Relaxed),
            replies,
            replies.saturating_sub(last_replies) as f64,
            s.pending_updates,
            s.responses_429.saturating_sub(start.responses_429),
            errors.load(Ordering::Relaxed),
        );
        last_replies = replies;
    }
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summarize(
    args: &LoadArgs,
    base: &str,
    found: &[MessageLatency],
    before: &Stats,
    after: &Stats,
    errors: u64,
) -> Report {
    let mut lat: Vec<f64> = found.iter().filter_map(|m| m.latency_ms).collect();
    lat.sort_by(f64::total_cmp);
    let first = found.iter().map(|m| m.at_unix_ms).min().unwrap_or(0) as f64;
    let last = found
        .iter()
        .filter_map(|m| Some(m.at_unix_ms as f64 + m.latency_ms?))
        .fold(first, f64::max);
    let seconds = ((last - first) / 1000.0).max(0.001);
    let replied = found.iter().filter(|m| m.replies > 0).count() as u64;
    let closed = args.notes_per_chat.is_some();
    Report {
        sandbox_url: base.to_owned(),
        mode: if closed { Mode::Closed } else { Mode::Open },
        users: args.users,
        groups: args.groups,
        target_rate: if closed { 0.0 } else { args.rate },
        notes_per_chat: args.notes_per_chat,
        messages_sent: found.len() as u64,
        replied,
        seconds,
        first_note_unix_ms: first,
        last_reply_unix_ms: last,
        throughput_per_sec: replied as f64 / seconds,
        latency_ms: Latency {
            p50: percentile(&lat, 50.0),
            p90: percentile(&lat, 90.0),
            p99: percentile(&lat, 99.0),
            max: lat.last().copied().unwrap_or(0.0),
            mean: if lat.is_empty() {
                0.0
            } else {
                lat.iter().sum::<f64>() / lat.len() as f64
            },
        },
        errors,
        responses_429: after.responses_429.saturating_sub(before.responses_429),
        webhook_failures: after
            .webhook_failures
            .saturating_sub(before.webhook_failures),
        lost: found.iter().filter(|m| m.replies == 0).count() as u64,
        duplicated: found.iter().filter(|m| m.replies > 1).count() as u64,
    }
}

/// The report as a table.
pub fn table(r: &Report) -> String {
    let l = &r.latency_ms;
    let work = match (r.mode, r.notes_per_chat) {
        (Mode::Closed, Some(n)) => format!("closed loop, {n} notes per chat"),
        _ if r.target_rate > 0.0 => format!("target {} msg/s", r.target_rate),
        _ => "target max msg/s".to_owned(),
    };
    format!(
        "load against {}: {} private chats, {} groups, {work}\n\
         ┌──────────────────────┬──────────────┐\n\
         │ messages sent        │ {:>12} │\n\
         │ replied              │ {:>12} │\n\
         │ duration (s)         │ {:>12.2} │\n\
         │ throughput (reply/s) │ {:>12.1} │\n\
         │ latency p50 (ms)     │ {:>12.1} │\n\
         │ latency p90 (ms)     │ {:>12.1} │\n\
         │ latency p99 (ms)     │ {:>12.1} │\n\
         │ latency max (ms)     │ {:>12.1} │\n\
         │ errors               │ {:>12} │\n\
         │ 429 responses        │ {:>12} │\n\
         │ webhook failures     │ {:>12} │\n\
         │ lost replies         │ {:>12} │\n\
         │ duplicated replies   │ {:>12} │\n\
         └──────────────────────┴──────────────┘",
        r.sandbox_url,
        r.users,
        r.groups,
        r.messages_sent,
        r.replied,
        r.seconds,
        r.throughput_per_sec,
        l.p50,
        l.p90,
        l.p99,
        l.max,
        r.errors,
        r.responses_429,
        r.webhook_failures,
        r.lost,
        r.duplicated,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 90.0), 7.0);
        assert_eq!(percentile(&[], 90.0), 0.0);
    }

    #[test]
    fn a_bot_message_event_is_a_reply_to_the_message_it_was_counted_for() {
        let block = b"event: update\ndata: {\"type\":\"message\",\"chat_id\":-7,\"message\":{\"message_id\":4,\"from_bot\":true,\"reply_to\":3}}\n\n";
        assert_eq!(
            parse_event(block),
            Some(Event::Reply { chat_id: -7, to: 3 })
        );
        let user = b"event: update\ndata: {\"type\":\"message\",\"chat_id\":7,\"message\":{\"message_id\":3,\"from_bot\":false}}\n\n";
        assert_eq!(parse_event(user), None);
        let lagged = b"event: lagged\ndata: {\"type\":\"lagged\",\"missed\":12}\n\n";
        assert_eq!(parse_event(lagged), Some(Event::Lagged));
        assert_eq!(parse_event(b":\n\n"), None);
    }

    #[test]
    fn a_closed_loop_takes_no_rate_duration_or_message_count() {
        use clap::Parser;
        #[derive(Debug, Parser)]
        struct Cli {
            #[command(flatten)]
            load: LoadArgs,
        }
        let cli = Cli::try_parse_from(["load", "--notes-per-chat", "20", "--users", "100"])
            .expect("the defaults of the open loop's flags do not conflict");
        assert_eq!(cli.load.notes_per_chat, Some(20));
        for flag in ["--rate", "--duration", "--messages", "--concurrency"] {
            let value = if flag == "--duration" { "5s" } else { "5" };
            assert!(
                Cli::try_parse_from(["load", "--notes-per-chat", "20", flag, value]).is_err(),
                "{flag}"
            );
        }
        assert!(Cli::try_parse_from(["load", "--notes-per-chat", "0"]).is_err());
    }
}
