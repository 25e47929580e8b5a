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
    courier_common::shutdown::run_service(telemetry, cli.grace.grace, |stop| {
        courier_admin::run(cli.config, stop)
    })
    .await?;
    Ok(())
}
