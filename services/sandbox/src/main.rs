//! `courier-sandbox`: runs the Telegram Bot API emulator until Ctrl-C or SIGTERM.

use clap::Parser;

/// A local emulator of the Telegram Bot API with a control API, for tests, demos and load.
#[derive(Debug, Parser)]
#[command(name = "courier-sandbox", version, about)]
struct Cli {
    #[command(flatten)]
    config: courier_sandbox::Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    courier_common::telemetry::init();
    let shutdown = courier_common::shutdown::on_signal();
    courier_sandbox::run(cli.config, shutdown).await?;
    Ok(())
}
