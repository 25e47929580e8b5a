//! The worker's metrics (`docs/OPERATIONS.md`, *Metrics*): what it did ([`Stats`], counted
//! where it happens) and what it sees ([`Gauges`]: owned partitions and the pool at each
//! scrape; consumer lag, the outbox backlog and the dead-letter stream every few seconds, by
//! [`spawn_refresher`]).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::jetstream;
use courier_common::{metrics, topology, CancellationToken};
use futures::StreamExt;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{
    counter::Counter, family::Family, gauge::Gauge, histogram::Histogram,
};
use prometheus_client::registry::Registry;
use sqlx::PgPool;

use crate::partitions;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PartitionLabel {
    partition: u32,
}

/// Counters and histograms of what the worker did: exported on `/metrics`, read by tests
/// (`stats.applied.get()`). Each worker has its own; clones of a counter share its value.
#[derive(Debug)]
pub struct Stats {
    /// Updates applied (`courier_worker_updates_total{outcome="applied"}`).
    pub applied: Counter,
    /// Updates skipped as duplicates (`outcome="duplicate"`).
    pub duplicates: Counter,
    /// Updates of kinds the bot ignores (`outcome="ignored"`).
    pub ignored: Counter,
    /// Updates sent to the dead-letter stream (`outcome="dead_lettered"`).
    pub dead_lettered: Counter,
    /// Updates from a deleted incarnation of the updates stream, neither applied nor acked
    /// (`outcome="stale"`).
    pub stale: Counter,
    /// Transient failures retried.
    pub retries: Counter,
    /// Times an earlier update of a chat was found unapplied and applied first.
    pub reordered: Counter,
    /// Transactions that applied several updates at once (`group`).
    pub batches: Counter,
    /// Updates applied in such a transaction.
    pub batched: Counter,
    /// Times the order guard asked the stream for a chat's earlier updates (a direct get):
    /// only when the partition's deliveries do not tell (`deliveries::Tracker`).
    pub guard_lookups: Counter,
    /// Updates applied after a later update (by `update_id`) of their chat: they reached the
    /// webhook out of order.
    pub out_of_order: Counter,
    /// Outbox rows JetStream acknowledged, by the update's own publish or by the relay.
    pub outbox_published: Counter,
    /// Outbox rows published by the relay.
    pub outbox_republished: Counter,
    /// From the message's arrival off the pull to its ack, per update applied.
    pub apply_duration: Histogram,
    /// The database pool.
    pub db: courier_db::metrics::PoolMetrics,
    updates: Family<OutcomeLabel, Counter>,
}

impl Default for Stats {
    fn default() -> Self {
        let updates = Family::<OutcomeLabel, Counter>::default();
        let outcome = |outcome| updates.get_or_create(&OutcomeLabel { outcome }).clone();
        Self {
            applied: outcome("applied"),
            duplicates: outcome("duplicate"),
            ignored: outcome("ignored"),
            dead_lettered: outcome("dead_lettered"),
            stale: outcome("stale"),
            retries: Counter::default(),
            reordered: Counter::default(),
            batches: Counter::default(),
            batched: Counter::default(),
            guard_lookups: Counter::default(),
            out_of_order: Counter::default(),
            outbox_published: Counter::default(),
            outbox_republished: Counter::default(),
            apply_duration: metrics::buckets::latency(),
            db: Default::default(),
            updates,
        }
    }
}

impl Stats {
    /// Registers every metric in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "courier_worker_updates",
            "Updates by outcome (applied, duplicate, ignored, dead_lettered, stale).",
            self.updates.clone(),
        );
        registry.register(
            "courier_worker_apply_duration_seconds",
            "From an update's arrival off the pull to its ack, per update applied.",
            self.apply_duration.clone(),
        );
        let counters = [
            ("courier_worker_retries", "Transient failures retried.", &self.retries),
            (
                "courier_worker_reordered",
                "Earlier updates found unapplied and applied first.",
                &self.reordered,
            ),
            (
                "courier_worker_group_commits",
                "Transactions that applied several updates at once.",
                &self.batches,
            ),
            (
                "courier_worker_updates_group_committed",
                "Updates applied in a transaction shared with others.",
                &self.batched,
            ),
            (
                "courier_worker_order_guard_lookups",
                "Stream lookups of the order guard (when deliveries do not tell a chat's previous update).",
                &self.guard_lookups,
            ),
            (
                "courier_worker_updates_out_of_order",
                "Updates applied after a later update_id of their chat (arrived out of order).",
                &self.out_of_order,
            ),
            (
                "courier_worker_outbox_published",
                "Outbox rows published to COURIER_OUTBOUND (acknowledged), by any path.",
                &self.outbox_published,
            ),
            (
                "courier_worker_outbox_republished",
                "Outbox rows published by the relay (not by their transaction's own publish).",
                &self.outbox_republished,
            ),
        ];
        for (name, help, counter) in counters {
            registry.register(name, help, counter.clone());
        }
        self.db.register(registry);
    }
}

/// What the worker sees: partitions, consumer lag, the outbox backlog, the dead letters.
#[derive(Debug, Default, Clone)]
pub struct Gauges {
    partitions_owned: Gauge,
    partition_owned: Family<PartitionLabel, Gauge>,
    pending: Family<PartitionLabel, Gauge>,
    ack_pending: Family<PartitionLabel, Gauge>,
    outbox_backlog: Gauge,
    dlq_messages: Gauge,
}

impl Gauges {
    /// Registers every gauge in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "courier_worker_partitions_owned",
            "Partitions this worker pulls.",
            self.partitions_owned.clone(),
        );
        registry.register(
            "courier_worker_partition_owned",
            "1 for each partition this worker pulls.",
            self.partition_owned.clone(),
        );
        registry.register(
            "courier_worker_partition_pending",
            "Updates not yet delivered by an owned partition's consumer (JetStream num_pending).",
            self.pending.clone(),
        );
        registry.register(
            "courier_worker_partition_ack_pending",
            "Updates delivered by an owned partition's consumer and not yet acknowledged (num_ack_pending).",
            self.ack_pending.clone(),
        );
        registry.register(
            "courier_worker_outbox_backlog",
            "Outbox rows not yet marked published.",
            self.outbox_backlog.clone(),
        );
        registry.register(
            "courier_dlq_messages",
            "Messages in the COURIER_DLQ stream.",
            self.dlq_messages.clone(),
        );
    }

    /// The scrape-time hook: owned partitions and the pool's connections (no I/O).
    pub fn scrape_hook(
        &self,
        owned: partitions::Owned,
        stats: Arc<Stats>,
        pool: PgPool,
    ) -> metrics::Refresh {
        let gauges = self.clone();
        let shown = Mutex::new(BTreeSet::<u32>::new());
        Arc::new(move || {
            let now = owned_now(&owned);
            let mut shown = shown.lock().unwrap_or_else(|e| e.into_inner());
            gauges.partitions_owned.set(now.len() as i64);
            set_partitions(&gauges.partition_owned, &mut shown, &now, |_| Some(1));
            stats.db.sample(&pool);
        })
    }
}

fn owned_now(owned: &partitions::Owned) -> BTreeSet<u32> {
    owned.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Sets `family` to `value(p)` for each partition of `now` (`None`: leaves it as it is) and
/// removes the partitions of `shown` that are not in `now` any more; `shown` becomes `now`.
fn set_partitions(
    family: &Family<PartitionLabel, Gauge>,
    shown: &mut BTreeSet<u32>,
    now: &BTreeSet<u32>,
    value: impl Fn(u32) -> Option<i64>,
) {
    for gone in shown.difference(now) {
        family.remove(&PartitionLabel { partition: *gone });
    }
    for &p in now {
        if let Some(v) = value(p) {
            family
                .get_or_create(&PartitionLabel { partition: p })
                .set(v);
        }
    }
    *shown = now.clone();
}

/// What the refresher reads from.
pub struct Sources {
    /// The bot.
    pub bot_id: i64,
    /// The pool (one count query per round).
    pub pool: PgPool,
    /// The updates stream (consumer info of the owned partitions).
    pub updates: jetstream::stream::Stream,
    /// JetStream (the dead-letter stream's info).
    pub js: jetstream::Context,
    /// The partitions this worker pulls.
    pub owned: partitions::Owned,
}

/// Consumer-info requests in flight at once.
const CONSUMER_INFO_CONCURRENCY: usize = 8;

/// Reads the gauges that cost a round trip every `interval` until `cancel` fires: each owned
/// partition's consumer info, the outbox backlog (one count on the partial index of
/// unpublished rows) and the dead-letter stream's size. A value that cannot be read keeps its
/// last reading.
pub fn spawn_refresher(
    gauges: Gauges,
    sources: Sources,
    interval: Duration,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let sources = Arc::new(sources);
    let shown = Arc::new(Mutex::new(BTreeSet::<u32>::new()));
    metrics::spawn_refresher(interval, cancel, move || {
        let (gauges, s, shown) = (gauges.clone(), sources.clone(), shown.clone());
        async move {
            let now = owned_now(&s.owned);
            let infos: Vec<(u32, Option<(u64, usize)>)> =
                futures::stream::iter(now.iter().copied())
                    .map(|p| {
                        let s = &s;
                        async move {
                            let name = partitions::consumer_name(s.bot_id, p);
                            let info = s.updates.consumer_info(name).await.ok();
                            (p, info.map(|i| (i.num_pending, i.num_ack_pending)))
                        }
                    })
                    .buffer_unordered(CONSUMER_INFO_CONCURRENCY)
                    .collect()
                    .await;
            {
                let lag = |p: u32| infos.iter().find(|(q, _)| *q == p).and_then(|(_, i)| *i);
                let mut shown = shown.lock().unwrap_or_else(|e| e.into_inner());
                let mut shown_ack = shown.clone();
                set_partitions(&gauges.pending, &mut shown, &now, |p| {
                    lag(p).map(|(pending, _)| pending as i64)
                });
                set_partitions(&gauges.ack_pending, &mut shown_ack, &now, |p| {
                    lag(p).map(|(_, ack_pending)| ack_pending as i64)
                });
            }
            match outbox_backlog(&s.pool, s.bot_id).await {
                Ok(n) => {
                    gauges.outbox_backlog.set(n);
                }
                Err(e) => tracing::debug!(error = %e, "cannot count the outbox backlog"),
            }
            match s.js.get_stream(topology::DLQ_STREAM).await {
                Ok(dlq) => {
                    gauges
                        .dlq_messages
                        .set(dlq.cached_info().state.messages as i64);
                }
                Err(e) => tracing::debug!(error = %e, "cannot read the dead-letter stream"),
            }
        }
    })
}

/// Outbox rows of the bot not yet marked published (served by `outbox_unpublished_chat_idx`,
/// a partial index holding only those rows).
pub async fn outbox_backlog(pool: &PgPool, bot_id: i64) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE bot_id = $1 AND published_at IS NULL")
        .bind(bot_id)
        .fetch_one(pool)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_no_longer_owned_disappear_and_unread_ones_keep_their_value() {
        let family = Family::<PartitionLabel, Gauge>::default();
        let mut shown = BTreeSet::new();
        let now: BTreeSet<u32> = [1, 2, 3].into();
        set_partitions(&family, &mut shown, &now, |p| Some(i64::from(p) * 10));
        for p in 1..=3 {
            assert_eq!(
                family.get(&PartitionLabel { partition: p }).unwrap().get(),
                i64::from(p) * 10
            );
        }
        let now: BTreeSet<u32> = [2, 3, 4].into();
        // Partition 3 could not be read this time: it keeps 30; 4 is new and unread: absent.
        set_partitions(&family, &mut shown, &now, |p| (p == 2).then_some(7));
        assert!(family.get(&PartitionLabel { partition: 1 }).is_none());
        assert_eq!(
            family.get(&PartitionLabel { partition: 2 }).unwrap().get(),
            7
        );
        assert_eq!(
            family.get(&PartitionLabel { partition: 3 }).unwrap().get(),
            30
        );
        assert!(family.get(&PartitionLabel { partition: 4 }).is_none());
        assert_eq!(shown, now);
    }
}
