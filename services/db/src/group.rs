//! Group commit for small writes: rows submitted by many tasks go to the database together.
//!
//! A [`Batcher`] runs one writer task. While it executes a batch, the rows submitted meanwhile
//! queue up, and the next batch takes all of them (up to a maximum) in one statement and one
//! commit. There is no timer: a lone row is written at once, and under load the batch grows
//! by itself with the number of concurrent writers — one commit (one WAL flush) for all of
//! them instead of one each. Each submitter gets its batch's outcome, so a row is only taken
//! as written once its commit succeeded.
//!
//! The same works for lookups by key ([`Batcher::spawn_with_answers`]): the keys asked for
//! meanwhile go in one `SELECT … FROM unnest(…)`, and each asker gets its row.
//!
//! Written here rather than taken from a crate: it is a channel and a loop, and the writer's
//! statement (a multi-row `INSERT … SELECT FROM unnest(…)`) is the caller's.

use std::future::Future;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

/// Why a submitted row was not written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BatchError {
    /// The batch's statement failed; the row may be submitted again.
    #[error("batched write failed: {0}")]
    Write(String),
    /// The writer task is gone (the service is stopping).
    #[error("batched writer stopped")]
    Stopped,
}

type Pending<T, R> = (T, oneshot::Sender<Result<R, BatchError>>);

/// A handle to a writer task; clones share it. The task ends when every handle is dropped.
/// `R` is what each row gets back (nothing for a write; a row of the answer for a lookup).
pub struct Batcher<T, R = ()> {
    tx: mpsc::UnboundedSender<Pending<T, R>>,
}

impl<T, R> Clone for Batcher<T, R> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
        }
    }
}

impl<T: Send + 'static> Batcher<T> {
    /// Starts the writer: `write` gets each batch (at most `max` rows, in submission order)
    /// and writes it in one statement.
    pub fn spawn<F, Fut>(max: usize, write: F) -> Self
    where
        F: FnMut(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), String>> + Send,
    {
        Self::spawn_lingering(max, Duration::ZERO, write)
    }

    /// Like [`Batcher::spawn`], but a batch waits up to `linger` after its first row for
    /// more (or until it has `max`): fewer commits at a moderate rate, for writes whose
    /// submitters can wait that long.
    pub fn spawn_lingering<F, Fut>(max: usize, linger: Duration, mut write: F) -> Self
    where
        F: FnMut(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), String>> + Send,
    {
        Self::start(max, linger, move |rows: Vec<T>| {
            let n = rows.len();
            let done = write(rows);
            async move { done.await.map(|()| vec![(); n]) }
        })
    }
}

impl<T: Send + 'static, R: Clone + Send + 'static> Batcher<T, R> {
    /// Like [`Batcher::spawn`] for statements that answer each row (a lookup by many keys):
    /// `run` returns one answer per row, in the rows' order.
    pub fn spawn_with_answers<F, Fut>(max: usize, run: F) -> Self
    where
        F: FnMut(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<R>, String>> + Send,
    {
        Self::start(max, Duration::ZERO, run)
    }

    fn start<F, Fut>(max: usize, linger: Duration, mut run: F) -> Self
    where
        F: FnMut(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<Vec<R>, String>> + Send,
    {
        let max = max.max(1);
        let (tx, mut rx) = mpsc::unbounded_channel::<Pending<T, R>>();
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while let Some(first) = rx.recv().await {
                batch.push(first);
                let deadline = tokio::time::Instant::now() + linger;
                while batch.len() < max {
                    match rx.try_recv() {
                        Ok(more) => batch.push(more),
                        Err(_) if linger.is_zero() => break,
                        Err(_) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                            Ok(Some(more)) => batch.push(more),
                            Ok(None) | Err(_) => break,
                        },
                    }
                }
                let (rows, replies): (Vec<T>, Vec<_>) = batch.drain(..).unzip();
                let n = rows.len();
                match run(rows).await {
                    Ok(answers) if answers.len() == n => {
                        for (reply, answer) in replies.into_iter().zip(answers) {
                            let _ = reply.send(Ok(answer));
                        }
                    }
                    Ok(answers) => {
                        let e = format!("{} answers for {n} rows", answers.len());
                        for reply in replies {
                            let _ = reply.send(Err(BatchError::Write(e.clone())));
                        }
                    }
                    Err(e) => {
                        for reply in replies {
                            let _ = reply.send(Err(BatchError::Write(e.clone())));
                        }
                    }
                }
            }
        });
        Self { tx }
    }

    /// Submits a row and waits until its batch was written; its answer.
    pub async fn submit(&self, row: T) -> Result<R, BatchError> {
        let (reply, done) = oneshot::channel();
        self.tx
            .send((row, reply))
            .map_err(|_| BatchError::Stopped)?;
        done.await.map_err(|_| BatchError::Stopped)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_rows_share_batches_and_each_gets_its_batchs_outcome() {
        let batches = Arc::new(Mutex::new(Vec::<Vec<u32>>::new()));
        let seen = batches.clone();
        let batcher = Batcher::spawn(8, move |rows: Vec<u32>| {
            let seen = seen.clone();
            async move {
                // Slow enough that the other submitters queue up meanwhile.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                let fail = rows.contains(&13);
                seen.lock().unwrap().push(rows);
                if fail {
                    Err("row 13 is refused".to_owned())
                } else {
                    Ok(())
                }
            }
        });
        let outcomes = futures_join(&batcher, 0..40).await;
        let batches = batches.lock().unwrap();
        let mut all: Vec<u32> = batches.iter().flatten().copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..40).collect::<Vec<_>>(), "every row written once");
        assert!(batches.iter().all(|b| b.len() <= 8), "{batches:?}");
        assert!(batches.len() < 40, "rows shared batches: {batches:?}");
        let failed_batch = batches.iter().find(|b| b.contains(&13)).unwrap();
        for (row, outcome) in outcomes {
            assert_eq!(
                outcome.is_err(),
                failed_batch.contains(&row),
                "row {row}: {outcome:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lingering_batch_waits_for_rows_that_come_soon_after_its_first() {
        let batches = Arc::new(Mutex::new(Vec::<Vec<u32>>::new()));
        let seen = batches.clone();
        let batcher = Batcher::spawn_lingering(
            100,
            std::time::Duration::from_millis(10),
            move |rows: Vec<u32>| {
                seen.lock().unwrap().push(rows);
                async { Ok(()) }
            },
        );
        let mut tasks = tokio::task::JoinSet::new();
        for row in 0..3u32 {
            let b = batcher.clone();
            tasks.spawn(async move { b.submit(row).await });
            tokio::time::sleep(std::time::Duration::from_millis(3)).await;
        }
        // Well after the linger: a batch of its own.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let b = batcher.clone();
        tasks.spawn(async move { b.submit(9).await });
        while let Some(r) = tasks.join_next().await {
            r.unwrap().unwrap();
        }
        assert_eq!(*batches.lock().unwrap(), vec![vec![0, 1, 2], vec![9]]);
    }

    async fn futures_join(
        batcher: &Batcher<u32>,
        rows: std::ops::Range<u32>,
    ) -> Vec<(u32, Result<(), BatchError>)> {
        let mut tasks = tokio::task::JoinSet::new();
        for row in rows {
            let b = batcher.clone();
            tasks.spawn(async move { (row, b.submit(row).await) });
        }
        let mut out = Vec::new();
        while let Some(r) = tasks.join_next().await {
            out.push(r.unwrap());
        }
        out
    }
}
