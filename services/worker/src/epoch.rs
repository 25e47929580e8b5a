//! Which incarnation of the updates stream a chat's order guard belongs to.
//!
//! A chat's `dialogue_states.last_seq` is a sequence of the updates stream. If that stream is
//! deleted and created again (a lost NATS volume; `topology::ensure_streams` creates a missing
//! stream), its sequences start at 1 again, and `last_seq` says nothing about the new
//! stream. So each row also records the stream's *epoch*: its creation time in nanoseconds
//! since the Unix epoch, as JetStream reports it (`stream::Info::created`). The server sets it
//! on every creation, whoever creates the stream, keeps it across restarts and reports the
//! same value from every replica. A new stream has a later creation time than the one it
//! replaces.
//!
//! The worker keeps the epoch it read last ([`StreamEpoch`]) and re-reads it at most once a
//! second while it works, and at once whenever a decision would rest on it: before it skips
//! an update whose sequence is at or below the chat's `last_seq`, and before it restarts a
//! chat's guard because the row names another epoch (`store::apply`, `Applier::process`).

use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::stream;
use tokio::time::Instant;

/// How long a read epoch is used before it is read again (when updates are being applied).
pub const MAX_AGE: Duration = Duration::from_secs(1);

/// The epoch of a stream: its creation time, in nanoseconds since the Unix epoch.
pub fn epoch_of(info: &stream::Info) -> i64 {
    i64::try_from(info.created.unix_timestamp_nanos()).unwrap_or(i64::MAX)
}

/// The epoch of the updates stream, as last read, and when that read started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epoch {
    /// The epoch (see [`epoch_of`]).
    pub id: i64,
    /// When the read that returned it was sent.
    pub read_at: Instant,
}

/// The updates stream's epoch, read from JetStream and cached.
pub struct StreamEpoch {
    stream: stream::Stream,
    last: Mutex<Epoch>,
    /// One read at a time; readers that find a fresh enough result reuse it.
    reading: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for StreamEpoch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamEpoch")
            .field("last", &*self.last.lock().expect("epoch lock"))
            .finish_non_exhaustive()
    }
}

impl StreamEpoch {
    /// Starts from the stream handle's own info (read when the handle was obtained).
    pub fn new(stream: stream::Stream) -> Self {
        let id = epoch_of(stream.cached_info());
        Self {
            stream,
            last: Mutex::new(Epoch {
                id,
                read_at: Instant::now(),
            }),
            reading: tokio::sync::Mutex::new(()),
        }
    }

    /// The epoch last read, re-read first if that read is older than [`MAX_AGE`] and no other
    /// caller is reading it already (then the value at hand is used: this is the common path,
    /// and decisions that need certainty use [`Self::read_since`]). A failed re-read keeps the
    /// old value.
    pub async fn current(&self) -> Epoch {
        let last = *self.last.lock().expect("epoch lock");
        if last.read_at.elapsed() < MAX_AGE {
            return last;
        }
        let Ok(_one) = self.reading.try_lock() else {
            return last;
        };
        match self.read(last).await {
            Ok(e) => e,
            Err(e) => {
                tracing::debug!(error = %e, "cannot re-read the updates stream's epoch");
                last
            }
        }
    }

    /// The epoch as read by a request sent at or after `since`: the stream that exists now,
    /// not one that existed before an update was delivered.
    pub async fn read_since(&self, since: Instant) -> Result<Epoch, stream::InfoError> {
        let _one = self.reading.lock().await;
        let last = *self.last.lock().expect("epoch lock");
        if last.read_at >= since {
            return Ok(last);
        }
        self.read(last).await
    }

    /// Reads the epoch (the caller holds `reading`).
    async fn read(&self, last: Epoch) -> Result<Epoch, stream::InfoError> {
        let read_at = Instant::now();
        let info = self.stream.get_info().await?;
        let read = Epoch {
            id: epoch_of(&info),
            read_at,
        };
        if read.id != last.id {
            tracing::error!(
                stream = %info.config.name,
                epoch = read.id,
                previous = last.id,
                "the updates stream was recreated: its sequences start again, so each chat's \
                 order guard restarts in the new stream (exactly-once still holds through \
                 processed_updates)"
            );
        }
        *self.last.lock().expect("epoch lock") = read;
        Ok(read)
    }
}
