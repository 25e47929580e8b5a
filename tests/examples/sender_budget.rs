//! Benchmark: how much of Telegram's bot-wide budget the sender uses while it drains a
//! backlog, and that the server never refuses a call, with random network jitter between the
//! sender's dispatch and the arrival Telegram counts (issue 14, item 2).
//!
//! Starts its own nats-server, PostgreSQL database and sandbox (rate limits on: 30 calls in any
//! second, 1/s per private chat), queues `--messages` over `--chats`, sets the sandbox's
//! `jitter_ms`, starts one sender with its defaults and reports the accepted rate over the
//! drain against the 30/s budget, the 429s, and the most calls the sandbox saw in one second.
//!
//! ```text
//! cargo run --release -p courier-tests --example sender_budget -- --jitter-ms 50
//! ```
//!
//! Exits non-zero if the sandbox refused a call or saw more than 30 in a second.

use std::time::Duration;

use anyhow::bail;
use clap::Parser;
use courier_tests::eventually;
use courier_tests::sender_support::{max_in_window, SenderRig};

#[derive(Debug, Parser)]
struct Cli {
    /// Messages queued before the sender starts.
    #[arg(long, default_value_t = 1500)]
    messages: i64,
    /// Private chats they are spread over (round-robin).
    #[arg(long, default_value_t = 150)]
    chats: i64,
    /// Random delay between dispatch and arrival, uniform in 0..=N ms (the sandbox's
    /// `jitter_ms` fault).
    #[arg(long, default_value_t = 50)]
    jitter_ms: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rig = SenderRig::start().await?;
    let chats: Vec<i64> = (1..=cli.chats).map(|i| 810_000 + i).collect();
    rig.create_chats(chats.iter().copied()).await?;
    rig.clear_calls().await?;
    rig.faults(serde_json::json!({"jitter_ms": cli.jitter_ms}))
        .await?;
    let msgs: Vec<(i64, i64, String)> = (0..cli.messages)
        .map(|i| {
            (
                chats[(i % cli.chats) as usize],
                7_000_000 + i,
                format!("m{i}"),
            )
        })
        .collect();
    rig.publish_all(&msgs).await?;
    let config = rig.sender_config();
    let budget = config.bot_rate;
    let headroom = config.rate_headroom;
    let sender = rig.start_sender_with(config).await?;
    let n = cli.messages as usize;
    let calls = eventually(
        "every message sent",
        Duration::from_secs((cli.messages as u64) / 10 + 60),
        || async {
            let calls = rig.calls().await?;
            Ok((calls.iter().filter(|c| c.status == 200).count() >= n).then_some(calls))
        },
    )
    .await?;
    sender.stop().await?;
    let ok: Vec<i64> = calls
        .iter()
        .filter(|c| c.status == 200)
        .map(|c| c.at_unix_ms)
        .collect();
    let refused = calls.iter().filter(|c| c.status == 429).count();
    // The backlog lasts the whole drain (every chat has work until the last round).
    let span = (ok[n - 1] - ok[0]) as f64 / 1000.0;
    let rate = (n - 1) as f64 / span;
    let most = max_in_window(&ok, 1000);
    println!(
        "messages {n}, chats {}, jitter 0..={} ms, headroom {headroom}",
        cli.chats, cli.jitter_ms
    );
    println!(
        "accepted rate {rate:.2}/s = {:.1}% of the {budget}/s budget; 429s {refused}; most calls in one second {most}",
        100.0 * rate / budget
    );
    if refused > 0 || most > budget as usize {
        bail!("Telegram's limits broken: {refused} refused, {most} in one second");
    }
    Ok(())
}
