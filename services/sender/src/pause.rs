//! Pausing the bot: while the bot's pause key says so, the sender makes no Bot API call.
//!
//! The state lives in the key-value bucket `courier_control` (key `pause_<bot>`, JSON
//! [`PauseState`]), written by `courier-admin` (`PauseBot` / `ResumeBot`) and watched by every
//! sender, so it survives restarts of both: a sender reads it before its first call.
//!
//! In the sender, a [`Gate`] stands before every Bot API call: a call *enters* the gate
//! (waiting while the bot is paused) and holds a [`CallGuard`] until its answer is back. When
//! the pause arrives, calls that have not entered wait; calls past the gate finish. The
//! watcher then waits until no call is in flight and, if this sender holds the lease,
//! writes a [`Confirmation`] (`pause_<bot>_confirmed`: the state's revision and the lease
//! holder), which `PauseBot` waits for: once it is confirmed, no Bot API call is in flight and
//! none starts until `ResumeBot`.
//!
//! Messages pulled meanwhile stay held by the sender (kept alive with in-progress acks, as
//! every held message is), so JetStream neither redelivers them elsewhere nor drops them; a
//! sender stopping while paused hands them back (nak) as usual, and the next one holds them
//! at its own gate.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use courier_common::{backoff::Backoff, CancellationToken};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::lease::Lease;

/// The bucket of operator controls (the pause).
pub const BUCKET: &str = "courier_control";

/// The key holding a bot's [`PauseState`].
pub fn state_key(bot_id: i64) -> String {
    format!("pause_{bot_id}")
}

/// The key holding the active sender's [`Confirmation`] of a bot's pause state.
pub fn confirm_key(bot_id: i64) -> String {
    format!("pause_{bot_id}_confirmed")
}

/// Whether the bot is paused, as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PauseState {
    /// No Bot API call while true.
    pub paused: bool,
    /// Why (free text from the operator).
    #[serde(default)]
    pub reason: String,
    /// When it was paused, Unix milliseconds (0 when running).
    #[serde(default)]
    pub since_unix_ms: i64,
}

/// The active sender saw a pause state (and, when paused, has no call in flight).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Confirmation {
    /// The revision of the pause key it saw.
    pub revision: u64,
    /// Whether that state was paused.
    pub paused: bool,
    /// The sender's lease holder name.
    pub holder: String,
}

/// Pause bucket trouble.
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    /// The bucket could not be opened or created.
    #[error("opening key-value bucket {BUCKET}: {0}")]
    Open(String),
    /// Reading or writing a key failed.
    #[error("key-value bucket {BUCKET}: {0}")]
    Kv(String),
}

/// Opens the control bucket, creating it when missing (file storage, one revision per key).
pub async fn open_bucket(js: &jetstream::Context) -> Result<kv::Store, PauseError> {
    if let Ok(store) = js.get_key_value(BUCKET).await {
        return Ok(store);
    }
    match js
        .create_key_value(kv::Config {
            bucket: BUCKET.into(),
            description: "Courier operator controls (pause)".into(),
            history: 1,
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
    {
        Ok(store) => Ok(store),
        // Created by another process in between.
        Err(create) => js
            .get_key_value(BUCKET)
            .await
            .map_err(|_| PauseError::Open(create.to_string())),
    }
}

/// The bot's pause state and the key's revision (0 when never set: running).
pub async fn read(store: &kv::Store, bot_id: i64) -> Result<(PauseState, u64), PauseError> {
    let entry = store
        .entry(state_key(bot_id))
        .await
        .map_err(|e| PauseError::Kv(e.to_string()))?;
    Ok(match entry {
        Some(e) if e.operation == kv::Operation::Put => (parse(&e.value), e.revision),
        Some(e) => (PauseState::default(), e.revision),
        None => (PauseState::default(), 0),
    })
}

/// Writes the bot's pause state; returns the key's new revision.
pub async fn write(store: &kv::Store, bot_id: i64, state: &PauseState) -> Result<u64, PauseError> {
    let value = serde_json::to_vec(state).map_err(|e| PauseError::Kv(e.to_string()))?;
    store
        .put(state_key(bot_id), value.into())
        .await
        .map_err(|e| PauseError::Kv(e.to_string()))
}

/// The last confirmation written by an active sender, if any.
pub async fn read_confirmation(
    store: &kv::Store,
    bot_id: i64,
) -> Result<Option<Confirmation>, PauseError> {
    let value = store
        .get(confirm_key(bot_id))
        .await
        .map_err(|e| PauseError::Kv(e.to_string()))?;
    Ok(value.and_then(|v| serde_json::from_slice(&v).ok()))
}

/// A state that cannot be read counts as paused: an operator wrote something, and calling
/// Telegram against their wish is worse than waiting for a readable state.
fn parse(value: &[u8]) -> PauseState {
    serde_json::from_slice(value).unwrap_or_else(|e| {
        tracing::error!(error = %e, "unreadable pause state: treating the bot as paused");
        PauseState {
            paused: true,
            reason: "unreadable pause state".into(),
            since_unix_ms: 0,
        }
    })
}

/// The gate before every Bot API call of a sender.
#[derive(Debug, Default)]
pub struct Gate {
    paused: AtomicBool,
    revision: AtomicU64,
    in_flight: AtomicUsize,
    changed: Notify,
    idle: Notify,
}

/// A call past the gate; the gate counts it in flight until this is dropped.
#[derive(Debug)]
pub struct CallGuard {
    gate: Arc<Gate>,
}

impl Drop for CallGuard {
    fn drop(&mut self) {
        if self.gate.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.gate.idle.notify_waiters();
        }
    }
}

impl Gate {
    /// A gate that is open until told otherwise.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Whether the bot is paused.
    pub fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// Sets the state seen at `revision` of the pause key.
    pub fn set(&self, paused: bool, revision: u64) {
        self.revision.store(revision, Ordering::SeqCst);
        let was = self.paused.swap(paused, Ordering::SeqCst);
        if was != paused {
            if paused {
                tracing::warn!(revision, "bot paused: no Bot API call until it is resumed");
            } else {
                tracing::info!(revision, "bot resumed");
            }
        }
        self.changed.notify_waiters();
    }

    /// Waits until the bot is not paused (or `cancel` fires: `false`).
    pub async fn wait_running(&self, cancel: &CancellationToken) -> bool {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if !self.is_paused() {
                return true;
            }
            tokio::select! {
                _ = cancel.cancelled() => return false,
                _ = changed => {}
            }
        }
    }

    /// Enters the gate for one call, waiting while paused; `None` when `cancel` fires first.
    pub async fn enter(self: &Arc<Self>, cancel: &CancellationToken) -> Option<CallGuard> {
        loop {
            if !self.wait_running(cancel).await {
                return None;
            }
            // Counted first, then checked: a pause set meanwhile either sees this call in
            // flight (and waits for it) or is seen here (and the call waits).
            self.in_flight.fetch_add(1, Ordering::SeqCst);
            let guard = CallGuard { gate: self.clone() };
            if !self.is_paused() {
                return Some(guard);
            }
            drop(guard);
        }
    }

    /// Waits until no call is in flight.
    async fn wait_idle(&self) {
        loop {
            let idle = self.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            idle.await;
        }
    }
}

/// How often the watcher checks whether it must confirm (after a lease take-over).
const CONFIRM_EVERY: Duration = Duration::from_millis(500);

/// Follows the bot's pause key into `gate` until `cancel` fires, and confirms each state
/// (once no call is in flight) while this sender holds the lease.
pub fn spawn_watcher(
    store: kv::Store,
    bot_id: i64,
    gate: Arc<Gate>,
    lease: Arc<Lease>,
    holder: String,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let key = state_key(bot_id);
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
        let mut confirmed: Option<(u64, bool)> = None;
        'watch: while !cancel.is_cancelled() {
            let mut watch = match store.watch_with_history(&key).await {
                Ok(w) => w,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the pause state; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff.next_delay()) => continue,
                    }
                }
            };
            backoff.reset();
            let mut tick = tokio::time::interval(CONFIRM_EVERY);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    entry = watch.next() => match entry {
                        Some(Ok(e)) => {
                            let paused = e.operation == kv::Operation::Put && parse(&e.value).paused;
                            gate.set(paused, e.revision);
                        }
                        Some(Err(e)) => {
                            tracing::warn!(error = %e, "pause watch failed; watching again");
                            continue 'watch;
                        }
                        None => continue 'watch,
                    },
                    _ = tick.tick() => {}
                }
                let seen = (gate.revision.load(Ordering::SeqCst), gate.is_paused());
                if confirmed == Some(seen) || !lease.is_valid() {
                    continue;
                }
                if seen.1 {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = gate.wait_idle() => {}
                    }
                }
                let confirmation = Confirmation {
                    revision: seen.0,
                    paused: seen.1,
                    holder: holder.clone(),
                };
                let Ok(value) = serde_json::to_vec(&confirmation) else {
                    continue;
                };
                match store.put(confirm_key(bot_id), value.into()).await {
                    Ok(_) => confirmed = Some(seen),
                    Err(e) => tracing::warn!(error = %e, "cannot confirm the pause state"),
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn no_call_enters_while_paused_and_a_pause_waits_for_calls_in_flight() {
        let gate = Gate::new();
        let cancel = CancellationToken::new();
        let in_flight = gate.enter(&cancel).await.expect("open gate");

        gate.set(true, 2);
        // The call past the gate is still in flight: not idle.
        let idle = tokio::time::timeout(Duration::from_secs(1), gate.wait_idle()).await;
        assert!(idle.is_err(), "idle with a call in flight");
        // A new call waits at the gate.
        let waiting = {
            let gate = gate.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move { gate.enter(&cancel).await.is_some() })
        };
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!waiting.is_finished(), "a call entered while paused");
        drop(in_flight);
        tokio::time::timeout(Duration::from_secs(1), gate.wait_idle())
            .await
            .expect("idle once the call is back");
        assert!(!waiting.is_finished());

        gate.set(false, 3);
        assert!(waiting.await.unwrap(), "enters after the resume");
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_call_gives_up_when_cancelled() {
        let gate = Gate::new();
        gate.set(true, 1);
        let cancel = CancellationToken::new();
        let waiting = {
            let gate = gate.clone();
            let cancel = cancel.clone();
            tokio::spawn(async move { gate.enter(&cancel).await.is_some() })
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        cancel.cancel();
        assert!(!waiting.await.unwrap());
        assert_eq!(gate.in_flight.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn an_unreadable_state_counts_as_paused() {
        assert!(parse(b"not json").paused);
        assert!(!parse(br#"{"paused":false}"#).paused);
        assert!(parse(br#"{"paused":true,"reason":"x","since_unix_ms":1}"#).paused);
    }
}
