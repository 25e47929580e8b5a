//! Drain benchmark: how long the sender takes to drain N queued messages over C chats against
//! the theoretical minimum N / 30 s, and its CPU and memory meanwhile.
//!
//! Needs a running nats-server (JetStream), PostgreSQL and the sandbox (rate limits on), e.g.
//! from `cargo xtask up`, and the sandbox's chats 1..=C created. Usage:
//!
//! ```text
//! NATS_URL=nats://127.0.0.1:4222 DATABASE_URL=postgres://… COURIER_TELEGRAM_API_URL=http://127.0.0.1:8081 \
//! COURIER_BOT_TOKEN=… cargo run --release -p courier-sender --example drain_bench -- 10000 1000
//! ```
//!
//! The sender runs in this process; CPU time and peak RSS are read from `/proc/self` (the
//! publisher's share is small and measured before the sender starts).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, message::PublishMessage};
use clap::Parser;
use courier_common::{topology, CancellationToken};
use courier_proto::{
    v1::{outbound_message::Action, OutboundMessage, SendMessage},
    Message as _,
};

#[derive(Debug, Parser)]
struct Cli {
    /// Messages to queue.
    messages: u64,
    /// Chats to spread them over (chat ids 1..=chats, created in the sandbox first).
    chats: i64,
    #[command(flatten)]
    config: courier_sender::Config,
}

fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let tick = 100.0;
    let ut: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let st: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (ut + st) / tick
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let token = cli.config.secrets.bot_token()?;
    let bot_id = token.bot_id();
    let http = reqwest::Client::new();
    let sandbox = cli.config.api_url.as_str().trim_end_matches('/').to_owned();
    for chat in 1..=cli.chats {
        http.post(format!("{sandbox}/sandbox/messages"))
            .json(&serde_json::json!({"chat_id": chat, "user_id": chat, "first_name": "B", "text": "hi"}))
            .send()
            .await?
            .error_for_status()
            .context("creating chats in the sandbox")?;
    }
    let js = jetstream::new(async_nats::connect(&cli.config.nats.nats_url).await?);
    topology::ensure_streams(&js, cli.config.nats.partitions).await?;
    let base = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64
        * 1000;
    let mut acks = Vec::new();
    for i in 0..cli.messages as i64 {
        let chat = 1 + i % cli.chats;
        let msg = OutboundMessage {
            outbox_id: base + i,
            bot_id,
            chat_id: chat,
            origin_update_id: 0,
            created_at_unix_ms: 0,
            origin_received_at_unix_ms: 0,
            action: Some(Action::Send(SendMessage {
                text: format!("bench {i}"),
                parse_mode: String::new(),
                ..Default::default()
            })),
        };
        acks.push(
            js.send_publish(
                topology::outbound_subject(bot_id, chat),
                PublishMessage::build()
                    .message_id(topology::outbound_msg_id(bot_id, base + i))
                    .payload(msg.encode_to_vec().into()),
            )
            .await?,
        );
        // Bounded pipelining: the client limits publish acks in flight.
        if acks.len() >= 500 {
            for a in acks.drain(..) {
                a.await?;
            }
        }
    }
    for a in acks {
        a.await?;
    }
    println!("queued {} messages over {} chats", cli.messages, cli.chats);

    let cpu0 = cpu_seconds();
    let cancel = CancellationToken::new();
    let start = Instant::now();
    let sender = courier_sender::spawn(cli.config.clone(), cancel.clone()).await?;
    let stats = sender.stats();
    let mut peak_rss = 0;
    while stats.messages_sent.load(Ordering::Relaxed) < cli.messages {
        tokio::time::sleep(Duration::from_millis(250)).await;
        peak_rss = peak_rss.max(rss_kib("VmRSS:"));
    }
    let elapsed = start.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    cancel.cancel();
    sender.wait().await?;
    let theoretical = cli.messages as f64 / cli.config.bot_rate;
    println!(
        "drained {} messages in {elapsed:.1} s; theoretical minimum {theoretical:.1} s ({:.2}%)",
        cli.messages,
        100.0 * elapsed / theoretical
    );
    println!("rate {:.2}/s", cli.messages as f64 / elapsed);
    println!(
        "sender CPU {cpu:.2} s ({:.1}% of one core); peak RSS {} MiB; VmHWM {} MiB",
        100.0 * cpu / elapsed,
        peak_rss / 1024,
        rss_kib("VmHWM:") / 1024
    );
    println!(
        "ledger window (answer → commit): mean {:.2} ms, max {:.2} ms",
        stats.ledger_window_total_us.load(Ordering::Relaxed) as f64
            / stats.sent.load(Ordering::Relaxed).max(1) as f64
            / 1000.0,
        stats.ledger_window_max_us.load(Ordering::Relaxed) as f64 / 1000.0
    );
    println!(
        "429s received: {}",
        stats.rate_limited.load(Ordering::Relaxed)
    );
    Ok(())
}
