//! The load generator, `courier-sandbox load`: simulated users send messages through a
//! running sandbox (and so through the whole stack behind its webhook), and the sandbox's own
//! correlation of replies (`GET /sandbox/latency`) gives each message's latency, from the
//! update's creation to the bot's `sendMessage` arriving.
//!
//! Each chat first sends `/start` (warm-up, not measured), then notes. Each note must get
//! exactly one reply: a note without one when the drain deadline passes is *lost*, one with
//! more is *duplicated*. The sandbox counts a reply in a chat for the chat's oldest unanswered
//! message (a bot answers a chat in order), so a lost reply followed by a duplicate in the
//! same chat cancels out; across chats they are exact.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use courier_common::config::parse_duration;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::sync::Semaphore;
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
    /// How long to wait for the last replies after sending stops.
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

/// The result of a load run (also the `--json` file).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// The sandbox.
    pub sandbox_url: String,
    /// Private chats.
    pub users: u32,
    /// Group chats.
    pub groups: u32,
    /// Target rate (0: as fast as possible).
    pub target_rate: f64,
    /// Notes created (the warm-up `/start`s excluded).
    pub messages_sent: u64,
    /// Notes that got at least one reply.
    pub replied: u64,
    /// Seconds from the first note to the last first reply.
    pub seconds: f64,
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
    let before = stats(&http, &base_url)
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

    // Warm-up: every chat says /start and waits for its answer.
    let warm_since = chrono::Utc::now().timestamp_millis() - 1;
    let mut starts = Vec::new();
    for c in &chats {
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
        let lat = latency(&http, &base_url, warm_since).await?;
        let answered = lat
            .iter()
            .filter(|m| warm_ids.get(&m.chat_id) == Some(&m.message_id) && m.replies > 0)
            .count();
        if answered == chats.len() {
            break;
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

    // Measured phase.
    let since = chrono::Utc::now().timestamp_millis() - 1;
    let mid = stats(&http, &base_url).await?;
    let sent = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let ours = Arc::new(std::sync::Mutex::new(Vec::<(i64, i64)>::new()));
    let started = Instant::now();
    let progress = (!args.quiet).then(|| {
        tokio::spawn(progress_loop(
            http.clone(),
            base_url.clone(),
            mid.clone(),
            sent.clone(),
            errors.clone(),
            started,
        ))
    });
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
        let (say, sent, errors, ours) = (say.clone(), sent.clone(), errors.clone(), ours.clone());
        tasks.spawn(async move {
            let n = c.sent.fetch_add(1, Ordering::Relaxed) + 1;
            let text = format!("note {n} of user {}", c.chat_id);
            match say.say(&c, &text).await {
                Ok(id) => {
                    ours.lock().expect("not poisoned").push((c.chat_id, id));
                    sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::debug!("creating a message failed: {e:#}");
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
        i += 1;
    }
    while tasks.join_next().await.is_some() {}

    // Drain: wait for every reply (or the deadline).
    let ours: Vec<(i64, i64)> = std::mem::take(&mut *ours.lock().expect("not poisoned"));
    let drain_deadline = Instant::now() + args.drain_timeout;
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
        errors.load(Ordering::Relaxed),
    );
    let _ = before;
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
    Report {
        sandbox_url: base.to_owned(),
        users: args.users,
        groups: args.groups,
        target_rate: args.rate,
        messages_sent: found.len() as u64,
        replied,
        seconds,
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
    format!(
        "load against {}: {} private chats, {} groups, target {} msg/s\n\
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
        if r.target_rate > 0.0 {
            r.target_rate.to_string()
        } else {
            "max".to_owned()
        },
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
}
