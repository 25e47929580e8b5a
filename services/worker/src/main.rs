use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// Courier worker: applies updates with the notes bot on PostgreSQL, per chat in order.
/// Every option is also an environment variable.
#[derive(Debug, Parser)]
#[command(
    name = "courier-worker",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: courier_worker::Config,
    #[command(flatten)]
    grace: courier_common::shutdown::GraceArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the database migrations and exits: 0 once the database is up to date, non-zero
    /// with the reason otherwise. The same migrations, under the same advisory lock, as a
    /// worker or sender at start-up, so it is safe while they run (the Helm chart's
    /// pre-install/pre-upgrade Job).
    Migrate(courier_worker::MigrateArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let telemetry = courier_common::telemetry::init("courier-worker")?;
    if let Some(Command::Migrate(args)) = cli.command {
        let shutdown = courier_common::shutdown::on_signal();
        let outcome = migrate(args, &shutdown).await;
        telemetry.shutdown().await;
        if let Err(e) = outcome {
            // One line naming the cause, for a Job's log (no backtrace).
            eprintln!("courier-worker migrate: {e:#}");
            std::process::exit(1);
        }
        return Ok(());
    }
    courier_common::shutdown::run_service(telemetry, cli.grace.grace, |stop| {
        courier_worker::run(cli.config, stop)
    })
    .await?;
    Ok(())
}

/// `courier-worker migrate`: what it applied goes to stdout; an error is returned.
async fn migrate(
    args: courier_worker::MigrateArgs,
    shutdown: &courier_common::CancellationToken,
) -> anyhow::Result<()> {
    let pool = courier_db::lazy_pool(args.database_url.as_deref(), 1)?;
    let report = courier_db::migrate_within(&pool, args.bot.migrations(), args.wait, shutdown)
        .await
        .context("migrations")?;
    let version = report
        .version
        .map_or_else(|| "none".to_owned(), |v| v.to_string());
    if report.applied.is_empty() {
        println!("migrations: the database is up to date (version {version}); nothing applied");
    } else {
        let list: Vec<String> = report.applied.iter().map(i64::to_string).collect();
        println!(
            "migrations: applied {} ({}); the database is at version {version}",
            report.applied.len(),
            list.join(", ")
        );
    }
    pool.close().await;
    Ok(())
}
