//! Graceful shutdown: Ctrl-C or SIGTERM cancel a token every task watches; a grace period
//! ([`GraceArgs`], [`within_grace`]) bounds how long a service may take to stop.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// A token that is cancelled on the first Ctrl-C or SIGTERM.
pub fn on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutdown requested");
        t.cancel();
    });
    token
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// How long a service may take to stop after Ctrl-C or SIGTERM.
#[derive(Debug, Clone, clap::Args)]
pub struct GraceArgs {
    /// How long the service may take to stop after SIGTERM: it hands back what it can (nak,
    /// lease release) and then exits even when NATS, PostgreSQL or Telegram is down, leaving
    /// the rest to redelivery. Keep it below the orchestrator's kill timeout (Kubernetes: 30 s).
    #[arg(long = "shutdown-grace", env = "COURIER_SHUTDOWN_GRACE", default_value = "15s",
          value_parser = crate::config::parse_duration)]
    pub grace: Duration,
}

/// Runs a service's future to its end, but once `token` is cancelled gives it at most `grace`
/// to finish. `None`: the grace period elapsed (logged); the caller should exit the process
/// at once (a runtime dropped with tasks stuck on a dead peer could wait for ever).
pub async fn within_grace<F: Future>(
    fut: F,
    token: &CancellationToken,
    grace: Duration,
) -> Option<F::Output> {
    tokio::pin!(fut);
    tokio::select! {
        out = &mut fut => return Some(out),
        _ = token.cancelled() => {}
    }
    match tokio::time::timeout(grace, fut).await {
        Ok(out) => Some(out),
        Err(_) => {
            tracing::error!(
                ?grace,
                "shutdown grace period elapsed; exiting with work left to redelivery"
            );
            None
        }
    }
}

/// The exit code of a service whose shutdown grace period elapsed.
pub const GRACE_ELAPSED_EXIT_CODE: i32 = 3;

/// A service binary's life after its configuration is parsed and `telemetry` installed: runs
/// `run` with a token cancelled on SIGTERM or SIGINT, gives it `grace` to finish once the
/// token fires ([`within_grace`]), flushes the spans not exported yet, and exits the process
/// with [`GRACE_ELAPSED_EXIT_CODE`] when the grace elapsed. Every service's `main` ends here.
pub async fn run_service<F, Fut, E>(
    telemetry: crate::telemetry::Telemetry,
    grace: Duration,
    run: F,
) -> Result<(), E>
where
    F: FnOnce(CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let shutdown = on_signal();
    let outcome = within_grace(run(shutdown.clone()), &shutdown, grace).await;
    telemetry.shutdown().await;
    match outcome {
        Some(result) => result,
        None => std::process::exit(GRACE_ELAPSED_EXIT_CODE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_stuck_shutdown_is_cut_at_the_grace_period() {
        let token = CancellationToken::new();
        let t = token.clone();
        let stuck = async move {
            t.cancelled().await;
            std::future::pending::<()>().await;
        };
        token.cancel();
        let start = tokio::time::Instant::now();
        assert_eq!(
            within_grace(stuck, &token, Duration::from_secs(4)).await,
            None
        );
        assert_eq!(start.elapsed(), Duration::from_secs(4));
        // A future that ends by itself is not cut.
        let quick = async { 7 };
        assert_eq!(
            within_grace(quick, &token, Duration::from_secs(4)).await,
            Some(7)
        );
    }
}
