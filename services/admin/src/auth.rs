//! The bearer token every admin call must carry: `authorization: Bearer <COURIER_ADMIN_TOKEN>`.
//!
//! Checked by a tonic interceptor before the call reaches its handler, in constant time
//! (`courier_common::secret::AdminToken::matches_bearer`). A missing or wrong token is
//! UNAUTHENTICATED, with the same message either way; the token is never logged (neither the
//! expected one nor what a caller sent).

use std::sync::Arc;

use courier_common::secret::AdminToken;
use tonic::{Request, Status};

/// The interceptor.
#[derive(Clone)]
pub struct Bearer {
    token: Arc<AdminToken>,
    metrics: crate::metrics::Metrics,
}

impl Bearer {
    /// Checks calls against `token`, counting refusals in `metrics`.
    pub fn new(token: AdminToken, metrics: crate::metrics::Metrics) -> Self {
        Self {
            token: Arc::new(token),
            metrics,
        }
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let ok = request
            .metadata()
            .get("authorization")
            .is_some_and(|v| self.token.matches_bearer(v.as_bytes()));
        if ok {
            Ok(request)
        } else {
            tracing::warn!(
                remote = ?request.remote_addr(),
                "admin call refused: missing or wrong bearer token"
            );
            self.metrics
                .call("-", tonic::Code::Unauthenticated, std::time::Duration::ZERO);
            Err(Status::unauthenticated(
                "missing or wrong admin token (authorization: Bearer <COURIER_ADMIN_TOKEN>)",
            ))
        }
    }
}
