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
    let telemetry = courier_common::telemetry::init("courier-sender")?;
    courier_common::shutdown::run_service(telemetry, cli.grace.grace, |stop| {
        courier_sender::run(cli.config, stop)
    })
    .await?;
    Ok(())
}
