//! Partition ownership: which partitions this worker pulls, and handing them over.
//!
//! Every heartbeat the worker refreshes its membership, reads the live members and computes
//! its share with [`crate::assign`]. It starts a puller for each partition it gained and
//! releases each partition it lost, in the background (see [`run`]): stop pulling, let the
//! running lanes finish and ack (or, at the partition's own cancellation, give up and nak),
//! nak what was queued (so the new owner gets it at once), then unpin the consumer so the
//! server moves the pin without waiting for `priority_timeout`.
//!
//! Each partition has one durable pull consumer, `courier-worker-<bot>-p<N>`, with the
//! pinned-client priority policy: the server delivers a partition to one client at a time.
//! Correctness does not rest on the pin (see `store::apply`'s order guard); the pin makes it
//! efficient.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, AckKind};
use courier_common::{lanes, pull as keyed, topology, CancellationToken};
use futures::FutureExt;
use tokio::task::JoinHandle;

use crate::apply::{Applier, HAND_BACK_TIMEOUT};
use crate::assign;
use crate::deliveries::Tracker;
use crate::membership::Membership;

/// The priority group every worker pulls in.
pub const GROUP: &str = "courier";

/// The durable consumer of one partition.
pub fn consumer_name(bot_id: i64, partition: u32) -> String {
    format!("courier-worker-{bot_id}-p{partition}")
}

/// Settings of the partition consumers.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Number of partitions.
    pub partitions: u32,
    /// Heartbeat interval (and how often ownership is recomputed).
    pub heartbeat: Duration,
    /// The consumers' `priority_timeout`: a pin moves after this long without pulls.
    pub priority_timeout: Duration,
    /// Ack wait of the consumers.
    pub ack_wait: Duration,
    /// Unacknowledged messages per partition at most.
    pub max_ack_pending: i64,
    /// Concurrent lanes per partition.
    pub max_lanes: usize,
    /// Partitions this worker always owns, whatever the membership says (tests and manual
    /// operation); `None`: rendezvous assignment.
    pub fixed: Option<Vec<u32>>,
    /// How long a released partition's running updates may take to finish before they are
    /// abandoned (not acked: JetStream redelivers them to the next holder).
    pub handover_timeout: Duration,
}

/// The partitions a worker currently pulls, shared with its health endpoint.
pub type Owned = Arc<RwLock<BTreeSet<u32>>>;

struct Puller {
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

/// Runs the ownership loop until `cancel` fires, then releases everything and leaves.
///
/// **The heartbeat never waits for a release.** Releasing a partition (its running updates
/// finish or give up, the queued ones are handed back) runs in a task of its own; the loop
/// goes on heartbeating, so a slow release (a database outage) cannot let this worker's
/// membership expire and its partitions move while it still pulls them. Each partition has its
/// own cancellation token (a child of `cancel`) that its handlers watch, and a release waits
/// at most [`Settings::handover_timeout`] for them. A partition gained back while its release
/// still runs starts pulling when the release is over.
pub async fn run<B: courier_bot_api::Bot>(
    applier: Arc<Applier<B>>,
    membership: Membership,
    settings: Settings,
    owned: Owned,
    cancel: CancellationToken,
) {
    let bot_id = applier.bot_id;
    let mut pullers: BTreeMap<u32, Puller> = BTreeMap::new();
    let mut releasing: BTreeMap<u32, JoinHandle<()>> = BTreeMap::new();
    let mut tick = tokio::time::interval(settings.heartbeat);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {}
        }
        if let Err(e) = membership.heartbeat().await {
            tracing::warn!(error = %e, "heartbeat failed");
        }
        releasing.retain(|_, release| !release.is_finished());
        let want: BTreeSet<u32> = match &settings.fixed {
            Some(fixed) => fixed.iter().copied().collect(),
            None => match membership.members().await {
                Ok(members) => assign::owned_by(membership.id(), &members, settings.partitions)
                    .into_iter()
                    .collect(),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read members; keeping current partitions");
                    continue;
                }
            },
        };
        let have: BTreeSet<u32> = pullers.keys().copied().collect();
        let lost: Vec<u32> = have.difference(&want).copied().collect();
        let gained: Vec<u32> = want.difference(&have).copied().collect();
        if lost.is_empty() && gained.is_empty() {
            continue;
        }
        // Release first, so the new owner can be pinned as soon as possible; in the
        // background, so the next heartbeat is not held up.
        for p in lost {
            if let Some(puller) = pullers.remove(&p) {
                let timeout = settings.handover_timeout;
                releasing.insert(p, tokio::spawn(release(p, puller, timeout)));
            }
        }
        for p in gained {
            let child = cancel.child_token();
            let previous = releasing.remove(&p);
            let task = tokio::spawn({
                let applier = applier.for_partition(child.clone());
                let (settings, child) = (settings.clone(), child.clone());
                async move {
                    if let Some(previous) = previous {
                        tokio::select! {
                            _ = child.cancelled() => return,
                            _ = previous => {}
                        }
                    }
                    pull_partition(applier, p, settings, child).await
                }
            });
            pullers.insert(
                p,
                Puller {
                    cancel: child,
                    task,
                },
            );
            tracing::info!(partition = p, "partition acquired");
        }
        *owned.write().expect("owned lock") = pullers.keys().copied().collect();
        tracing::info!(bot_id, partitions = ?pullers.keys().collect::<Vec<_>>(), "partitions owned");
    }
    // Shutdown: finish (or give up) in-flight lanes of every partition, then leave the
    // membership.
    let timeout = settings.handover_timeout;
    futures::future::join_all(
        pullers
            .into_iter()
            .map(|(p, puller)| release(p, puller, timeout)),
    )
    .await;
    futures::future::join_all(releasing.into_values()).await;
    owned.write().expect("owned lock").clear();
    if let Err(e) = membership.leave().await {
        tracing::warn!(error = %e, "could not leave the membership; it expires by itself");
    }
}

/// Stops a partition's puller and waits, at most `timeout`, for its running updates to finish
/// and its queued ones to be handed back; then aborts what is left (an update abandoned
/// mid-way is not acked: JetStream redelivers it, and the transaction makes that safe).
async fn release(partition: u32, puller: Puller, timeout: Duration) {
    puller.cancel.cancel();
    let mut task = puller.task;
    if tokio::time::timeout(timeout, &mut task).await.is_err() {
        tracing::warn!(
            partition,
            ?timeout,
            "partition hand-over took too long; abandoning its running updates"
        );
        task.abort();
        let _ = task.await;
    }
    tracing::info!(partition, "partition released");
}

/// The consumer configuration of a partition.
pub fn consumer_config(bot_id: i64, partition: u32, settings: &Settings) -> pull::Config {
    let name = consumer_name(bot_id, partition);
    pull::Config {
        durable_name: Some(name),
        filter_subject: topology::partition_filter(bot_id, partition),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: settings.ack_wait,
        max_ack_pending: settings.max_ack_pending,
        max_deliver: -1,
        priority_policy: jetstream::consumer::PriorityPolicy::PinnedClient,
        priority_groups: vec![GROUP.to_owned()],
        priority_timeout: settings.priority_timeout,
        ..Default::default()
    }
}

async fn pull_partition<B: courier_bot_api::Bot>(
    applier: Arc<Applier<B>>,
    partition: u32,
    settings: Settings,
    cancel: CancellationToken,
) {
    let bot_id = applier.bot_id;
    let name = consumer_name(bot_id, partition);
    let consumer = loop {
        match applier
            .updates
            .get_or_create_consumer(&name, consumer_config(bot_id, partition, &settings))
            .await
        {
            Ok(c) => break c,
            Err(e) => {
                tracing::warn!(partition, error = %e, "cannot create the partition consumer; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    };
    // Pulls expire well inside priority_timeout, so the pin stays while this worker pulls.
    let expires = (settings.priority_timeout / 3).max(Duration::from_millis(300));
    let mut input =
        keyed::keyed_group_messages(consumer, GROUP.to_owned(), expires, cancel.clone());
    // Deliveries are observed in the order received, before the lanes reorder them by chat.
    let mut tracker = Tracker::default();
    let tracked = futures::StreamExt::map(&mut input, move |(chat, msg)| {
        let prev = msg.info().ok().and_then(|i| {
            tracker.observe(chat, i.consumer_sequence, i.stream_sequence, i.delivered)
        });
        (chat, (msg, prev, std::time::Instant::now()))
    });
    let unstarted = lanes::run(tracked, settings.max_lanes, cancel.clone(), {
        let applier = applier.clone();
        move |_chat, (msg, prev, received)| applier.clone().handle(msg, prev, received)
    })
    .await;
    // Hand back what this worker received but will not process, so the next owner gets it at
    // once instead of after the ack wait. Bounded: without NATS the naks cannot go out, and
    // JetStream redelivers after the ack wait anyway.
    let mut handed_back = 0usize;
    let hand_back = async {
        for (msg, _, _) in unstarted {
            let _ = msg.ack_with(AckKind::Nak(None)).await;
            handed_back += 1;
        }
        while let Some(Some((_, msg))) = futures::StreamExt::next(&mut input).now_or_never() {
            let _ = msg.ack_with(AckKind::Nak(None)).await;
            handed_back += 1;
        }
    };
    if tokio::time::timeout(HAND_BACK_TIMEOUT, hand_back)
        .await
        .is_err()
    {
        tracing::debug!(partition, "handing back queued updates timed out");
    }
    match tokio::time::timeout(
        HAND_BACK_TIMEOUT,
        applier.updates.unpin_consumer(&name, GROUP),
    )
    .await
    {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => {
            tracing::debug!(partition, error = %e, "unpin failed (the pin times out by itself)")
        }
        Err(_) => tracing::debug!(partition, "unpin timed out (the pin times out by itself)"),
    }
    tracing::debug!(partition, handed_back, "partition puller stopped");
}
