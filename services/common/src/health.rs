//! `/healthz` (the process is alive) and `/readyz` (its dependencies answer).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use axum::{extract::State, http::StatusCode, routing::get, Json, Router};
use serde_json::json;

/// A readiness probe: `Ok(())` when the dependency answers, `Err(reason)` otherwise.
pub type Probe =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send + Sync>;

/// Extra facts a service reports on `/readyz` (the worker: the partitions it owns).
pub type Info = Arc<dyn Fn() -> serde_json::Value + Send + Sync>;

struct Checks {
    probes: Vec<(&'static str, Probe)>,
    info: Option<Info>,
}

/// Routes `/healthz` and `/readyz` over the given named probes.
pub fn router(probes: Vec<(&'static str, Probe)>) -> Router {
    router_with_info(probes, None)
}

/// Like [`router`], with `info` merged into the `/readyz` answer.
pub fn router_with_info(probes: Vec<(&'static str, Probe)>, info: Option<Info>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .with_state(Arc::new(Checks { probes, info }))
}

async fn readyz(State(state): State<Arc<Checks>>) -> (StatusCode, Json<serde_json::Value>) {
    let probes = &state.probes;
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
    let mut body = json!({ "ready": ready, "checks": checks });
    if let (Some(info), Some(obj)) = (&checks_info(&state), body.as_object_mut()) {
        if let Some(extra) = info.as_object() {
            obj.extend(extra.clone());
        }
    }
    (code, Json(body))
}

fn checks_info(checks: &Checks) -> Option<serde_json::Value> {
    checks.info.as_ref().map(|f| f())
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
