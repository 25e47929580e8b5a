//! Worker membership: heartbeats in a JetStream key-value bucket.
//!
//! Each worker puts `<bot>.<worker id>` every heartbeat interval. The bucket's `max_age` is the
//! member TTL, so the key of a worker that stopped heartbeating (killed, partitioned away)
//! disappears by itself; a worker that shuts down gracefully deletes its key at once.
//!
//! The TTL is the bucket's `max_age` as read at [`Membership::join`]: a bucket created with a
//! shorter member TTL is raised to the configured one, a longer one is kept
//! (`courier_common::ttl_bucket`), so no worker's key expires between its heartbeats.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, kv};
use courier_common::ttl_bucket;
use futures::TryStreamExt;

/// The bucket of worker heartbeats.
pub const BUCKET: &str = "COURIER_WORKERS";

/// Membership errors.
#[derive(Debug, thiserror::Error)]
#[error("membership: {0}")]
pub struct MembershipError(String);

fn err(e: impl std::fmt::Display) -> MembershipError {
    MembershipError(e.to_string())
}

/// This worker's entry in the membership bucket.
#[derive(Clone)]
pub struct Membership {
    kv: kv::Store,
    ttl: Duration,
    prefix: String,
    id: String,
}

impl Membership {
    /// Opens (or creates) the bucket with `ttl` as its max age (raised to `ttl` when
    /// shorter, kept when longer).
    pub async fn join(
        js: &jetstream::Context,
        bot_id: i64,
        id: &str,
        ttl: Duration,
    ) -> Result<Self, MembershipError> {
        let (kv, ttl) = ttl_bucket::open(
            js,
            kv::Config {
                bucket: BUCKET.to_owned(),
                description: "Courier worker heartbeats".to_owned(),
                history: 1,
                max_age: ttl,
                storage: jetstream::stream::StorageType::Memory,
                ..Default::default()
            },
        )
        .await
        .map_err(err)?;
        let me = Self {
            kv,
            ttl,
            prefix: format!("{bot_id}."),
            id: id.to_owned(),
        };
        me.heartbeat().await?;
        Ok(me)
    }

    /// The member TTL: the bucket's `max_age` as read at [`Membership::join`].
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// This worker's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Says "still alive".
    pub async fn heartbeat(&self) -> Result<(), MembershipError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        self.kv
            .put(
                format!("{}{}", self.prefix, self.id),
                now.to_string().into(),
            )
            .await
            .map_err(err)?;
        Ok(())
    }

    /// The ids of the live workers of this bot (including this one).
    pub async fn members(&self) -> Result<Vec<String>, MembershipError> {
        let keys: Vec<String> = self
            .kv
            .keys()
            .await
            .map_err(err)?
            .try_collect()
            .await
            .map_err(err)?;
        Ok(keys
            .into_iter()
            .filter_map(|k| k.strip_prefix(&self.prefix).map(str::to_owned))
            .collect())
    }

    /// Leaves at once (graceful shutdown), so the others take over without waiting for the TTL.
    pub async fn leave(&self) -> Result<(), MembershipError> {
        self.kv
            .delete(format!("{}{}", self.prefix, self.id))
            .await
            .map_err(err)
    }
}
