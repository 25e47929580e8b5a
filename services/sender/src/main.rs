use clap::Parser;

/// Courier sender: delivers the bot's messages to the Telegram Bot API.
/// Every option is also an environment variable.
#[derive(Debug, Parser)]
#[command(name = "courier-sender", version, about)]
struct Cli {
    #[command(flatten)]
    config: courier_sender::Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    courier_common::telemetry::init();
    let shutdown = courier_common::shutdown::on_signal();
    courier_sender::run(cli.config, shutdown).await?;
    Ok(())
}
