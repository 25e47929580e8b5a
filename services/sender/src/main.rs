use clap::Parser;

/// Courier sender: delivers the bot's messages to the Telegram Bot API.
/// Every option is also an environment variable.
#[derive(Debug, Parser)]
#[command(name = "courier-sender", version, about)]
struct Cli {
    #[command(flatten)]
    config: courier_sender::Config,
    #[command(flatten)]
    grace: courier_common::shutdown::GraceArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    courier_common::telemetry::init();
    let shutdown = courier_common::shutdown::on_signal();
    let run = courier_sender::run(cli.config, shutdown.clone());
    match courier_common::shutdown::within_grace(run, &shutdown, cli.grace.grace).await {
        Some(result) => result?,
        None => std::process::exit(courier_common::shutdown::GRACE_ELAPSED_EXIT_CODE),
    }
    Ok(())
}
