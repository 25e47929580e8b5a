//! The admin API's metrics (`/metrics` on `COURIER_ADMIN_HEALTH_ADDR`).
//!
//! | metric | type | labels | meaning |
//! |--------|------|--------|---------|
//! | `courier_admin_calls_total` | counter | `method`, `code` | admin calls answered, by gRPC method and status code (`Ok`, `Unauthenticated`, …; a call refused for its token counts under `method="-"`) |
//! | `courier_admin_call_duration_seconds` | histogram | `method` | time to answer a call |

use std::time::Duration;

use courier_common::metrics::buckets;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family, histogram::Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabel {
    method: String,
}

/// The admin's metrics; clones share the values.
#[derive(Clone, Debug)]
pub struct Metrics {
    calls: Family<CallLabels, Counter>,
    duration: Family<MethodLabel, Histogram>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            calls: Family::default(),
            duration: Family::new_with_constructor(buckets::latency),
        }
    }
}

impl Metrics {
    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "courier_admin_calls",
            "Admin calls answered, by gRPC method and status code.",
            self.calls.clone(),
        );
        registry.register(
            "courier_admin_call_duration_seconds",
            "Time to answer an admin call, by gRPC method.",
            self.duration.clone(),
        );
    }

    /// Counts one answered call.
    pub fn call(&self, method: &str, code: tonic::Code, took: Duration) {
        self.calls
            .get_or_create(&CallLabels {
                method: method.to_owned(),
                code: format!("{code:?}"),
            })
            .inc();
        if method != "-" {
            self.duration
                .get_or_create(&MethodLabel {
                    method: method.to_owned(),
                })
                .observe(took.as_secs_f64());
        }
    }
}
