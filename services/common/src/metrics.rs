//! Prometheus metrics: the `/metrics` route, histogram bucket presets and a periodic refresher.
//!
//! Every service instance keeps its own [`Registry`] (there is no global recorder: tests run
//! several workers and senders in one process, and each keeps its own numbers). A service
//! builds its metrics, registers them, and serves the registry with [`router`] in the
//! OpenMetrics text format. The names, types and labels are a contract with the Helm chart's
//! dashboard and alerts: `docs/OPERATIONS.md` lists them.
//!
//! Gauges come from two places: values kept in memory (owned partitions, the pool's
//! connections, the breaker) are read at each scrape by the [`Refresh`] hook; values that cost
//! a round trip (JetStream consumer info, a count query) are read every few seconds by a task
//! started with [`spawn_refresher`], never on the hot path.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::{extract::State, http::header, response::IntoResponse, routing::get, Router};
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The content type of the exposition (OpenMetrics text 1.0.0).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Brings in-memory gauges up to date; called before each scrape. Must be cheap (no I/O).
pub type Refresh = Arc<dyn Fn() + Send + Sync>;

struct Exposition {
    registry: Registry,
    refresh: Option<Refresh>,
}

/// `GET /metrics`: `registry` in the OpenMetrics text format, after `refresh` ran.
pub fn router(registry: Registry, refresh: Option<Refresh>) -> Router {
    Router::new()
        .route("/metrics", get(scrape))
        .with_state(Arc::new(Exposition { registry, refresh }))
}

async fn scrape(State(e): State<Arc<Exposition>>) -> impl IntoResponse {
    if let Some(refresh) = &e.refresh {
        refresh();
    }
    let mut body = String::with_capacity(8 * 1024);
    // Writing to a String cannot fail.
    let _ = encode(&mut body, &e.registry);
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], body)
}

/// Histograms with bucket presets, in seconds.
pub mod buckets {
    use super::*;

    /// Requests, publishes, transactions, Bot API calls: 0.5 ms doubling to about 16 s.
    pub fn latency() -> Histogram {
        Histogram::new(exponential_buckets(0.0005, 2.0, 16))
    }

    /// Waits that are usually close to zero (a pool connection, a rate limit): 50 µs doubling
    /// to about 26 s.
    pub fn wait() -> Histogram {
        Histogram::new(exponential_buckets(0.00005, 2.0, 20))
    }

    /// End-to-end ages, webhook to Bot API answer: 5 ms doubling to about 5.5 min.
    pub fn end_to_end() -> Histogram {
        Histogram::new(exponential_buckets(0.005, 2.0, 17))
    }
}

/// Observes the time since `start`, in seconds.
pub fn observe_since(histogram: &Histogram, start: Instant) {
    histogram.observe(start.elapsed().as_secs_f64());
}

/// Observes a duration, in seconds.
pub fn observe(histogram: &Histogram, d: Duration) {
    histogram.observe(d.as_secs_f64());
}

/// Runs `refresh` at once and then every `interval` until `cancel` fires (a run in progress
/// is cut short). For gauges that cost a round trip to read.
pub fn spawn_refresher<F, Fut>(
    interval: Duration,
    cancel: CancellationToken,
    mut refresh: F,
) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tick.tick() => {}
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = refresh() => {}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use prometheus_client::metrics::counter::Counter;

    use super::*;

    #[tokio::test]
    async fn the_route_serves_the_registry_after_refreshing() {
        let mut registry = Registry::default();
        let counter = Counter::<u64>::default();
        registry.register("courier_test_things", "Things.", counter.clone());
        let refreshed = counter.clone();
        let app = router(
            registry,
            Some(Arc::new(move || {
                refreshed.inc();
            })),
        );
        let response = tower_like_get(app).await;
        assert!(
            response.contains("# TYPE courier_test_things counter"),
            "{response}"
        );
        assert!(
            response.contains("courier_test_things_total 1\n"),
            "{response}"
        );
        assert!(response.ends_with("# EOF\n"), "{response}");
    }

    async fn tower_like_get(app: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut out = String::new();
        stream.read_to_string(&mut out).await.unwrap();
        assert!(out.contains(CONTENT_TYPE), "{out}");
        out.split_once("\r\n\r\n").unwrap().1.to_owned()
    }
}
