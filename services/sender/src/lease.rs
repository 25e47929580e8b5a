//! One active sender per bot: a lease in a NATS key-value bucket.
//!
//! The bucket `courier_sender_leases` keeps one key per bot (`bot_<id>`) whose value names the
//! holder; the bucket's `max_age` is the lease's time to live, so a key that is not renewed
//! disappears. A sender *acquires* by creating the key (only possible when it is absent) or by
//! taking over a key its previous holder set to `released` on a graceful shutdown (a
//! compare-and-set on the revision). The holder *renews* every third of the TTL with a
//! compare-and-set; it regards the lease as valid only until three quarters of the TTL after
//! it *sent* its last successful renewal, which is before the server stamped it, so the holder
//! stops calling Telegram at least a quarter of the TTL before any other sender can acquire.
//! Two senders therefore never send at the same time, and the bot's budget is never shared.
//!
//! The TTL is the bucket's `max_age` as read at [`Lease::open`], not the configured one: a
//! bucket created with a shorter TTL is raised to the configured one, a bucket with a longer
//! one is used as it is (`courier_common::ttl_bucket`), so no sender counts on a key living
//! longer than the bucket keeps it.

use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use courier_common::ttl_bucket;
use tokio::time::Instant;

/// The bucket holding the leases.
pub const BUCKET: &str = "courier_sender_leases";
const RELEASED: &[u8] = b"released";

/// How the lease was acquired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    /// The key was absent: the previous holder (if any) expired without releasing.
    Fresh,
    /// The previous holder released it on a graceful shutdown.
    HandedOver,
}

/// A sender's lease on its bot.
pub struct Lease {
    store: kv::Store,
    key: String,
    holder: Bytes,
    ttl: Duration,
    state: Mutex<(u64, Option<Instant>)>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("key", &self.key)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// Lease trouble.
#[derive(Debug, thiserror::Error)]
#[error("lease bucket: {0}")]
pub struct LeaseError(String);

impl Lease {
    /// Opens (creating when missing) the bucket with `ttl` as its `max_age`; works with the
    /// bucket's `max_age` (raised to `ttl` when shorter, used as it is when longer).
    pub async fn open(
        js: &jetstream::Context,
        bot_id: i64,
        holder: String,
        ttl: Duration,
    ) -> Result<Self, LeaseError> {
        let (store, ttl) = ttl_bucket::open(
            js,
            kv::Config {
                bucket: BUCKET.into(),
                history: 1,
                max_age: ttl,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| LeaseError(e.to_string()))?;
        Ok(Self {
            store,
            key: format!("bot_{bot_id}"),
            holder: Bytes::from(holder),
            ttl,
            state: Mutex::new((0, None)),
        })
    }

    /// The TTL this lease works with: the bucket's `max_age` as read at [`Lease::open`].
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    fn validity(&self, sent_at: Instant) -> Instant {
        sent_at + self.ttl * 3 / 4
    }

    /// One attempt to acquire.
    pub async fn try_acquire(&self) -> Option<Acquired> {
        let sent_at = Instant::now();
        if let Ok(rev) = self.store.create(&self.key, self.holder.clone()).await {
            *self.state.lock().expect("lease lock") = (rev, Some(self.validity(sent_at)));
            return Some(Acquired::Fresh);
        }
        let entry = self.store.entry(&self.key).await.ok().flatten()?;
        if entry.operation != kv::Operation::Put {
            return None;
        }
        let how = if entry.value.as_ref() == RELEASED {
            Acquired::HandedOver
        } else if entry.value == self.holder {
            // Still ours (this process ended a term when the lease went invalid locally):
            // nobody else can have held it meanwhile, so take it back at once; what this
            // process handed back may still be pending, so it counts as fresh.
            Acquired::Fresh
        } else {
            return None;
        };
        let sent_at = Instant::now();
        let rev = self
            .store
            .update(&self.key, self.holder.clone(), entry.revision)
            .await
            .ok()?;
        *self.state.lock().expect("lease lock") = (rev, Some(self.validity(sent_at)));
        Some(how)
    }

    /// Whether this sender may call Telegram now.
    pub fn is_valid(&self) -> bool {
        self.state
            .lock()
            .expect("lease lock")
            .1
            .is_some_and(|u| Instant::now() < u)
    }

    /// How often to renew (and to retry acquiring).
    pub fn renew_every(&self) -> Duration {
        self.ttl / 3
    }

    /// Renews; `false` when the lease is lost (taken by someone else, or not renewed in time).
    pub async fn renew(&self) -> bool {
        let rev = self.state.lock().expect("lease lock").0;
        let sent_at = Instant::now();
        match self.store.update(&self.key, self.holder.clone(), rev).await {
            Ok(rev) => {
                *self.state.lock().expect("lease lock") = (rev, Some(self.validity(sent_at)));
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "lease renewal failed");
                self.is_valid()
            }
        }
    }

    /// Gives the lease up for a standby to take at once (after a graceful shutdown).
    pub async fn release(&self) {
        let rev = {
            let mut g = self.state.lock().expect("lease lock");
            g.1 = None;
            g.0
        };
        if let Err(e) = self
            .store
            .update(&self.key, Bytes::from_static(RELEASED), rev)
            .await
        {
            tracing::warn!(error = %e, "lease release failed; a standby takes over after its TTL");
        }
    }

    /// Forgets the lease locally (it was lost).
    pub fn drop_local(&self) {
        self.state.lock().expect("lease lock").1 = None;
    }
}
