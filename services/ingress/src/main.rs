use clap::Parser;

/// Courier ingress: the Telegram webhook endpoint. Every option is also an environment variable.
#[derive(Debug, Parser)]
#[command(name = "courier-ingress", version, about)]
struct Cli {
    #[command(flatten)]
    config: courier_ingress::Config,
    #[command(flatten)]
    grace: courier_common::shutdown::GraceArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let telemetry = courier_common::telemetry::init("courier-ingress")?;
    courier_common::shutdown::run_service(telemetry, cli.grace.grace, |stop| {
        courier_ingress::run(cli.config, stop)
    })
    .await?;
    Ok(())
}
