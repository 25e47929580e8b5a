//! Key-value buckets whose `max_age` is a time to live: the sender's lease, the workers'
//! membership.
//!
//! A process that counts on a key living for its configured TTL must work with what the
//! bucket really keeps, not with its own configuration: the bucket may have been created by a
//! process configured otherwise (an operator changed the TTL; two versions run side by side
//! during a rollout). [`open`] therefore reads the bucket's `max_age` and returns the TTL to
//! work with:
//!
//! - the bucket keeps keys *shorter* than configured: its `max_age` is **raised** to the
//!   configured TTL. That is safe whoever else runs: every process computed its deadlines
//!   from a TTL no longer than the new one (from the old `max_age`, or, for processes that do
//!   not read the bucket, from their own configuration — which created or raised it), and a
//!   key that lives longer only makes the others wait longer before they take it over.
//! - the bucket keeps keys *longer*: its `max_age` is used, with a warning; it is never
//!   lowered, because a process that read the larger value counts on it (a lease holder would
//!   still count itself valid after its key expired). Lowering takes every process of the
//!   bucket stopped and the bucket deleted.
//!
//! Raising is a read-modify-write of the stream configuration (JetStream has no
//! compare-and-set for it): two processes raising to different values at the same instant can
//! leave the smaller one; [`open`] reads the result back and raises again, and only a
//! process that reads a value at least its own returns.

use std::time::Duration;

use async_nats::jetstream::{self, context, kv};

/// How many times [`open`] raises the `max_age` before it gives up (someone keeps lowering
/// it).
const RAISE_ATTEMPTS: usize = 5;

/// Opening a TTL bucket failed.
#[derive(Debug, thiserror::Error)]
pub enum TtlBucketError {
    /// The bucket was missing and could not be created.
    #[error("creating key-value bucket {bucket}: {source}")]
    Create {
        /// The bucket.
        bucket: String,
        /// What JetStream said.
        source: context::CreateKeyValueError,
    },
    /// The bucket could not be opened.
    #[error("opening key-value bucket {bucket}: {source}")]
    Open {
        /// The bucket.
        bucket: String,
        /// What JetStream said.
        source: context::KeyValueError,
    },
    /// The bucket's stream could not be read.
    #[error("reading the configuration of key-value bucket {bucket}: {source}")]
    Read {
        /// The bucket.
        bucket: String,
        /// What JetStream said.
        source: context::GetStreamError,
    },
    /// Raising the `max_age` failed.
    #[error("raising the max_age of key-value bucket {bucket} to {want:?}: {source}")]
    Raise {
        /// The bucket.
        bucket: String,
        /// The TTL asked for.
        want: Duration,
        /// What JetStream said.
        source: context::UpdateStreamError,
    },
    /// The `max_age` was lowered again after every raise.
    #[error("key-value bucket {bucket} keeps its max_age at {have:?} below {want:?} although it was raised {RAISE_ATTEMPTS} times: another process lowers it")]
    KeptLow {
        /// The bucket.
        bucket: String,
        /// The TTL asked for.
        want: Duration,
        /// The `max_age` read last.
        have: Duration,
    },
}

/// Opens the bucket `config.bucket`, creating it with `config` when missing, and returns it
/// with the TTL to work with: its `max_age`, raised first to `config.max_age` if it was
/// shorter (see the module documentation).
pub async fn open(
    js: &jetstream::Context,
    config: kv::Config,
) -> Result<(kv::Store, Duration), TtlBucketError> {
    let bucket = config.bucket.clone();
    let want = config.max_age;
    let store = match js.get_key_value(&bucket).await {
        Ok(store) => store,
        Err(_) => match js.create_key_value(config).await {
            Ok(store) => store,
            // Another process created it in between (with its own settings): use it.
            Err(create) => js
                .get_key_value(&bucket)
                .await
                .map_err(|_| TtlBucketError::Create {
                    bucket: bucket.clone(),
                    source: create,
                })?,
        },
    };
    let stream_name = format!("KV_{bucket}");
    for _ in 0..RAISE_ATTEMPTS {
        let stream = js
            .get_stream(&stream_name)
            .await
            .map_err(|source| TtlBucketError::Read {
                bucket: bucket.clone(),
                source,
            })?;
        let have = stream.cached_info().config.max_age;
        if have >= want {
            if have > want {
                tracing::warn!(
                    bucket = %bucket,
                    configured = ?want,
                    max_age = ?have,
                    "the bucket keeps keys longer than configured: working with its max_age \
                     (it is never lowered while processes may count on it; to lower it, stop \
                     every process that uses the bucket and delete the bucket)"
                );
            }
            return Ok((store, have));
        }
        let mut raised = stream.cached_info().config.clone();
        raised.max_age = want;
        js.update_stream(raised)
            .await
            .map_err(|source| TtlBucketError::Raise {
                bucket: bucket.clone(),
                want,
                source,
            })?;
        tracing::warn!(bucket = %bucket, from = ?have, to = ?want, "raised the bucket's max_age to the configured TTL");
    }
    let have = js
        .get_stream(&stream_name)
        .await
        .map_err(|source| TtlBucketError::Read {
            bucket: bucket.clone(),
            source,
        })?
        .cached_info()
        .config
        .max_age;
    Err(TtlBucketError::KeptLow { bucket, want, have })
}
