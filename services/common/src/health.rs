//! `/healthz` (the process is alive) and `/readyz` (its dependencies answer).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::{extract::State, http::StatusCode, routing::get, Json, Router};
use serde_json::json;

/// A readiness probe: `Ok(())` when the dependency answers, `Err(reason)` otherwise.
pub type Probe =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Routes `/healthz` and `/readyz` over the given named probes.
pub fn router(probes: Vec<(&'static str, Probe)>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(Arc::new(probes))
}

async fn readyz(
    State(probes): State<Arc<Vec<(&'static str, Probe)>>>,
) -> (StatusCode, Json<serde_json::Value>) {
    let mut ready = true;
    let mut checks = serde_json::Map::new();
    for (name, probe) in probes.iter() {
        let status = match probe().await {
            Ok(()) => "ok".to_owned(),
            Err(e) => {
                ready = false;
                e
            }
        };
        checks.insert((*name).to_owned(), json!(status));
    }
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(json!({ "ready": ready, "checks": checks })))
}

/// A probe that is ready while the NATS client is connected.
pub fn nats_probe(client: async_nats::Client) -> Probe {
    Arc::new(move || {
        let client = client.clone();
        Box::pin(async move {
            match client.connection_state() {
                async_nats::connection::State::Connected => Ok(()),
                other => Err(format!("nats {other:?}")),
            }
        })
    })
}
