use clap::Parser;

/// Courier ingress: the Telegram webhook endpoint. Every option is also an environment variable.
#[derive(Debug, Parser)]
#[command(name = "courier-ingress", version, about)]
struct Cli {
    #[command(flatten)]
    config: courier_ingress::Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    courier_common::telemetry::init();
    let shutdown = courier_common::shutdown::on_signal();
    courier_ingress::run(cli.config, shutdown).await?;
    Ok(())
}
