//! The pool's metrics: connections in use and idle, and the time spent waiting for one.
//!
//! `courier_db_pool_connections{state="in_use"|"idle"}` is sampled from the pool at each
//! scrape ([`PoolMetrics::sample`]); `courier_db_pool_acquire_duration_seconds` is observed by
//! [`PoolMetrics::acquire`], which the services call where they take a connection for an
//! update or a message (the worker's transactions, the sender's ledger), so it shows the wait
//! that holds up the hot path. Queries run straight on the pool elsewhere (background tasks:
//! the relay, the marker, retention, the refreshers) are not timed.

use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{family::Family, gauge::Gauge, histogram::Histogram};
use prometheus_client::registry::Registry;
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

/// The metrics of one service's pool. Clones share the values.
#[derive(Clone, Debug)]
pub struct PoolMetrics {
    connections: Family<StateLabel, Gauge>,
    in_use: Gauge,
    idle: Gauge,
    acquire: Histogram,
}

impl Default for PoolMetrics {
    fn default() -> Self {
        let connections = Family::<StateLabel, Gauge>::default();
        let in_use = connections
            .get_or_create(&StateLabel { state: "in_use" })
            .clone();
        let idle = connections
            .get_or_create(&StateLabel { state: "idle" })
            .clone();
        Self {
            connections,
            in_use,
            idle,
            acquire: courier_common::metrics::buckets::wait(),
        }
    }
}

impl PoolMetrics {
    /// Registers the pool's families in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "courier_db_pool_connections",
            "Connections of the database pool, by state (in_use, idle).",
            self.connections.clone(),
        );
        registry.register(
            "courier_db_pool_acquire_duration_seconds",
            "Time spent waiting for a connection of the database pool.",
            self.acquire.clone(),
        );
    }

    /// Takes a connection from `pool`, observing how long that took (also when it failed:
    /// a timed-out wait is a wait).
    pub async fn acquire(&self, pool: &PgPool) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        let start = Instant::now();
        let conn = pool.acquire().await;
        courier_common::metrics::observe_since(&self.acquire, start);
        conn
    }

    /// Reads the pool's connections into the gauges.
    pub fn sample(&self, pool: &PgPool) {
        let (in_use, idle) = split(pool.size(), pool.num_idle());
        self.in_use.set(in_use);
        self.idle.set(idle);
    }

    /// Connections in use at the last [`PoolMetrics::sample`].
    pub fn in_use(&self) -> i64 {
        self.in_use.get()
    }

    /// Idle connections at the last [`PoolMetrics::sample`].
    pub fn idle(&self) -> i64 {
        self.idle.get()
    }
}

/// In use and idle out of the pool's size (connections open or opening) and idle count, read
/// at slightly different instants: idle is capped at the size, so in use is never negative.
fn split(size: u32, idle: usize) -> (i64, i64) {
    let size = i64::from(size);
    let idle = i64::try_from(idle).unwrap_or(i64::MAX).min(size);
    (size - idle, idle)
}

#[cfg(test)]
mod tests {
    #[test]
    fn in_use_is_the_size_less_the_idle_and_never_negative() {
        assert_eq!(super::split(4, 1), (3, 1));
        assert_eq!(super::split(0, 0), (0, 0));
        // Sampled between a connection's close and the size's update.
        assert_eq!(super::split(2, 3), (0, 2));
    }
}
