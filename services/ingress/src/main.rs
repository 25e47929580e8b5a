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
    courier_common::telemetry::init();
    let shutdown = courier_common::shutdown::on_signal();
    let run = courier_ingress::run(cli.config, shutdown.clone());
    match courier_common::shutdown::within_grace(run, &shutdown, cli.grace.grace).await {
        Some(result) => result?,
        None => std::process::exit(courier_common::shutdown::GRACE_ELAPSED_EXIT_CODE),
    }
    Ok(())
}
