//! Per-key lanes: items of one key run strictly one after another, in arrival order; items of
//! different keys run concurrently, up to a bound.
//!
//! The worker keys updates by chat and the sender keys outgoing messages by chat, so one slow
//! chat never holds up the others while each chat's order is kept.
//!
//! This is written here rather than taken from a crate because the invariant it keeps (at most
//! one running item per key, FIFO within a key, round-robin between keys) is the heart of
//! Courier's ordering guarantee and is short enough to read in one sitting.
//!
//! **Bounds.** At most `max_active` handlers run at once. The queued items are bounded by the
//! caller's source: a JetStream consumer's `max_ack_pending` caps how many unacknowledged
//! messages the server hands out.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::hash::Hash;

use futures::{Stream, StreamExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Runs `handler` over `input`, one item at a time per key, at most `max_active` at once.
///
/// Returns when `input` ends (after every queued item has run) or when `cancel` fires (after
/// the running handlers finish). On cancel, the items queued but not started are returned, in
/// arrival order per key, so the caller can hand them back (for JetStream messages: a nak, so
/// they are redelivered at once rather than after the ack wait).
pub async fn run<K, T, S, F, Fut>(
    mut input: S,
    max_active: usize,
    cancel: CancellationToken,
    handler: F,
) -> Vec<T>
where
    K: Hash + Eq + Clone + Send + 'static,
    T: Send + 'static,
    S: Stream<Item = (K, T)> + Unpin,
    F: Fn(K, T) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let max_active = max_active.max(1);
    // Every key with work in flight or queued; the deque holds items not yet started.
    let mut lanes: HashMap<K, VecDeque<T>> = HashMap::new();
    // Keys with queued items waiting for a free slot, in the order they became ready.
    let mut ready: VecDeque<K> = VecDeque::new();
    let mut running: JoinSet<()> = JoinSet::new();
    let mut running_keys: HashMap<tokio::task::Id, K> = HashMap::new();
    let mut input_open = true;
    let mut unstarted = Vec::new();

    loop {
        // Start as many ready lanes as there are free slots.
        while running.len() < max_active {
            let Some(key) = ready.pop_front() else { break };
            let item = lanes
                .get_mut(&key)
                .and_then(VecDeque::pop_front)
                .expect("a ready lane has a queued item");
            let handle = running.spawn(handler(key.clone(), item));
            running_keys.insert(handle.id(), key);
        }
        if !input_open && running.is_empty() {
            break unstarted;
        }
        tokio::select! {
            biased;
            _ = cancel.cancelled(), if input_open => {
                input_open = false;
                ready.clear();
                for (_, q) in lanes.drain() {
                    unstarted.extend(q);
                }
            }
            Some(done) = running.join_next_with_id(), if !running.is_empty() => {
                let id = match done {
                    Ok((id, ())) => id,
                    Err(e) => {
                        tracing::error!(error = %e, "lane handler panicked");
                        e.id()
                    }
                };
                let key = running_keys.remove(&id).expect("every running task has a key");
                match lanes.get(&key) {
                    Some(q) if !q.is_empty() => ready.push_back(key),
                    _ => { lanes.remove(&key); }
                }
            }
            next = input.next(), if input_open => match next {
                Some((key, item)) => match lanes.get_mut(&key) {
                    Some(q) => q.push_back(item),
                    None => {
                        lanes.insert(key.clone(), VecDeque::from([item]));
                        ready.push_back(key);
                    }
                },
                None => input_open = false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn keeps_order_per_key_and_runs_keys_concurrently() {
        let log = Arc::new(Mutex::new(Vec::<(u32, u32)>::new()));
        let active = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let max_seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let items: Vec<(u32, u32)> = (0..20).flat_map(|i| (0..5).map(move |k| (k, i))).collect();
        let (l, a, m) = (log.clone(), active.clone(), max_seen.clone());
        run(
            futures::stream::iter(items),
            3,
            CancellationToken::new(),
            move |k, i| {
                let (l, a, m) = (l.clone(), a.clone(), m.clone());
                async move {
                    let now = a.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    m.fetch_max(now, std::sync::atomic::Ordering::SeqCst);
                    // Yield so that other lanes get a chance to overlap with this one.
                    tokio::task::yield_now().await;
                    l.lock().unwrap().push((k, i));
                    a.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                }
            },
        )
        .await;
        let log = log.lock().unwrap();
        assert_eq!(log.len(), 100, "every item ran exactly once");
        for k in 0..5 {
            let seq: Vec<u32> = log
                .iter()
                .filter(|(kk, _)| *kk == k)
                .map(|(_, i)| *i)
                .collect();
            assert_eq!(seq, (0..20).collect::<Vec<_>>(), "key {k} out of order");
        }
        assert!(
            max_seen.load(std::sync::atomic::Ordering::SeqCst) <= 3,
            "bound exceeded"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_key_does_not_block_others() {
        let done = Arc::new(Mutex::new(Vec::<u32>::new()));
        let d = done.clone();
        let items = vec![(1u32, 1u32), (1, 2), (2, 3)];
        let t = tokio::spawn(run(
            futures::stream::iter(items).chain(futures::stream::pending()),
            4,
            CancellationToken::new(),
            move |k, i| {
                let d = d.clone();
                async move {
                    if k == 1 {
                        tokio::time::sleep(Duration::from_secs(10)).await;
                    }
                    d.lock().unwrap().push(i);
                }
            },
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(
            *done.lock().unwrap(),
            vec![3],
            "key 2 ran while key 1 was slow"
        );
        tokio::time::sleep(Duration::from_secs(20)).await;
        assert_eq!(*done.lock().unwrap(), vec![3, 1, 2]);
        t.abort();
    }

    #[tokio::test(start_paused = true)]
    async fn cancel_finishes_running_items_and_returns_queued_ones() {
        let done = Arc::new(Mutex::new(Vec::<u32>::new()));
        let d = done.clone();
        let cancel = CancellationToken::new();
        let items = vec![(1u32, 1u32), (1, 2)];
        let t = tokio::spawn(run(
            futures::stream::iter(items).chain(futures::stream::pending()),
            4,
            cancel.clone(),
            move |_k, i| {
                let d = d.clone();
                async move {
                    tokio::time::sleep(Duration::from_secs(5)).await;
                    d.lock().unwrap().push(i);
                }
            },
        ));
        tokio::time::sleep(Duration::from_secs(1)).await;
        cancel.cancel();
        let unstarted = t.await.unwrap();
        assert_eq!(*done.lock().unwrap(), vec![1]);
        assert_eq!(unstarted, vec![2]);
    }
}
