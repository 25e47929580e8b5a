//! Shared building blocks of Courier's services.
//!
//! Nothing here knows about the notes bot or about PostgreSQL. The modules are small and each
//! has one job:
//!
//! - [`config`]: the configuration every service shares (NATS URL, bot token, dev mode), parsed
//!   from environment variables and flags and validated at start-up.
//! - [`secret`]: the bot token, webhook secret and admin token as types that never print their
//!   value, and the constant-time comparisons of the webhook secret and the admin token.
//! - [`partition`]: the stable hash that maps a chat to a partition.
//! - [`topology`]: names of streams, subjects and consumers, and their idempotent creation.
//! - [`ttl_bucket`]: key-value buckets whose `max_age` is a time to live (leases, membership).
//! - [`lanes`]: per-key lanes (one item at a time per chat, many chats at once).
//! - [`pull`]: a JetStream pull consumer as an endless stream keyed by chat.
//! - [`backoff`]: exponential backoff with jitter.
//! - [`shutdown`]: Ctrl-C / SIGTERM as a cancellation token.
//! - [`telemetry`]: the tracing subscriber.
//! - [`health`]: the `/healthz` and `/readyz` routes.
//! - [`metrics`]: the `/metrics` route (Prometheus, OpenMetrics text), bucket presets and a
//!   periodic refresher for gauges that cost a round trip.
#![deny(missing_docs)]

pub mod backoff;
pub mod config;
pub mod health;
pub mod lanes;
pub mod metrics;
pub mod partition;
pub mod pull;
pub mod secret;
pub mod shutdown;
pub mod telemetry;
pub mod topology;
pub mod trace;
pub mod ttl_bucket;

pub use tokio_util::sync::CancellationToken;
