use clap::Parser;

/// Courier admin: the admin API (gRPC) that courierctl talks to.
/// Every option is also an environment variable.
#[derive(Debug, Parser)]
#[command(name = "courier-admin", version, about)]
struct Cli {
    #[command(flatten)]
    config: courier_admin::Config,
    #[command(flatten)]
    grace: courier_common::shutdown::GraceArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let telemetry = courier_common::telemetry::init("courier-admin")?;
    let shutdown = courier_common::shutdown::on_signal();
    let run = courier_admin::run(cli.config, shutdown.clone());
    let outcome = courier_common::shutdown::within_grace(run, &shutdown, cli.grace.grace).await;
    telemetry.shutdown().await;
    match outcome {
        Some(result) => result?,
        None => std::process::exit(courier_common::shutdown::GRACE_ELAPSED_EXIT_CODE),
    }
    Ok(())
}
