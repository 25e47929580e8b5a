use clap::Parser;

/// Courier worker: applies updates with the notes bot on PostgreSQL, per chat in order.
/// Every option is also an environment variable.
#[derive(Debug, Parser)]
#[command(name = "courier-worker", version, about)]
struct Cli {
    #[command(flatten)]
    config: courier_worker::Config,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    courier_common::telemetry::init();
    let shutdown = courier_common::shutdown::on_signal();
    courier_worker::run(cli.config, shutdown).await?;
    Ok(())
}
