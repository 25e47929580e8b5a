//! `courier-sandbox`: runs the Telegram Bot API emulator until Ctrl-C or SIGTERM (the default),
//! or `courier-sandbox load …` runs the load generator against a running sandbox.

use clap::Parser;

/// A local emulator of the Telegram Bot API with a control API, for tests, demos and load.
#[derive(Debug, Parser)]
#[command(
    name = "courier-sandbox",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: courier_sandbox::Config,
    #[command(flatten)]
    grace: courier_common::shutdown::GraceArgs,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Simulate users chatting with the bot through a running sandbox and measure each
    /// message's latency to its reply.
    Load(courier_sandbox::load::LoadArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let telemetry = courier_common::telemetry::init("courier-sandbox")?;
    match cli.command {
        Some(Command::Load(args)) => {
            telemetry.shutdown().await;
            let report = courier_sandbox::load::run(args).await?;
            if report.lost > 0 || report.duplicated > 0 {
                anyhow::bail!(
                    "{} lost and {} duplicated replies",
                    report.lost,
                    report.duplicated
                );
            }
        }
        None => {
            courier_common::shutdown::run_service(telemetry, cli.grace.grace, |stop| {
                courier_sandbox::run(cli.config, stop)
            })
            .await?;
        }
    }
    Ok(())
}
