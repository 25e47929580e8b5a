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

#[cfg(test)]
mod tests {
    use tonic::service::Interceptor as _;

    use super::*;

    fn call(bearer: &mut Bearer, header: Option<&str>) -> Result<(), tonic::Code> {
        let mut req = Request::new(());
        if let Some(h) = header {
            req.metadata_mut()
                .insert("authorization", h.parse().expect("header value"));
        }
        bearer.call(req).map(|_| ()).map_err(|s| s.code())
    }

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let token = AdminToken::parse("0123456789abcdef-admin").unwrap();
        let mut bearer = Bearer::new(token, crate::metrics::Metrics::default());
        assert_eq!(
            call(&mut bearer, Some("Bearer 0123456789abcdef-admin")),
            Ok(())
        );
        for bad in [
            None,
            Some("0123456789abcdef-admin"),
            Some("bearer 0123456789abcdef-admin"),
            Some("Bearer 0123456789abcdef-admin "),
            Some("Bearer 0123456789abcdef-admix"),
            Some("Basic dXNlcjpwYXNz"),
        ] {
            assert_eq!(
                call(&mut bearer, bad),
                Err(tonic::Code::Unauthenticated),
                "{bad:?}"
            );
        }
    }
}
