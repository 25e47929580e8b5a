//! Ingress's metrics: every answer by status with its duration, and the JetStream publishes.

use std::time::Instant;

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::Response,
};
use courier_common::metrics::{buckets, observe_since};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family, histogram::Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusLabel {
    status: u16,
}

/// Ingress's metrics; clones share the values.
#[derive(Clone, Debug)]
pub struct Metrics {
    requests: Family<StatusLabel, Counter>,
    request_duration: Family<StatusLabel, Histogram>,
    publish_duration: Histogram,
    publish_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(buckets::latency),
            publish_duration: buckets::latency(),
            publish_failures: Counter::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "courier_ingress_requests",
            "Webhook requests answered, by HTTP status.",
            self.requests.clone(),
        );
        registry.register(
            "courier_ingress_request_duration_seconds",
            "Time from a webhook request to its answer, by HTTP status.",
            self.request_duration.clone(),
        );
        registry.register(
            "courier_ingress_publish_duration_seconds",
            "JetStream publish until its ack (or the failure), per publish.",
            self.publish_duration.clone(),
        );
        registry.register(
            "courier_ingress_publish_failures",
            "Publishes that got no ack (answered 503).",
            self.publish_failures.clone(),
        );
    }

    /// A publish started at `start` ended, acknowledged or not.
    pub fn published(&self, start: Instant, acked: bool) {
        observe_since(&self.publish_duration, start);
        if !acked {
            self.publish_failures.inc();
        }
    }

    fn answered(&self, status: u16, start: Instant) {
        let label = StatusLabel { status };
        self.requests.get_or_create(&label).inc();
        observe_since(&self.request_duration.get_or_create(&label), start);
    }
}

/// Paths that are not webhook requests: not counted.
const NOT_COUNTED: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// The outermost layer: counts each answer by status, with its duration.
pub async fn count_requests(State(metrics): State<Metrics>, req: Request, next: Next) -> Response {
    if NOT_COUNTED.contains(&req.uri().path()) {
        return next.run(req).await;
    }
    let start = Instant::now();
    let response = next.run(req).await;
    metrics.answered(response.status().as_u16(), start);
    response
}
