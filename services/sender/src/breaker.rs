//! A circuit breaker for the Bot API.
//!
//! Closed: calls go through; `threshold` transient failures in a row (5xx, timeouts,
//! connection errors) open it. Open: no call is made and the sender stops pulling from
//! JetStream until the cool-down has passed. Then one caller is let through as the probe
//! (half-open): its success closes the breaker, its failure opens it again with the cool-down
//! doubled (up to a cap). Other callers wait while the probe is out.
//!
//! Two rules keep the breaker from stopping the sender for good:
//! - a probe admitted and then given up without a verdict (its message handed back, the
//!   lease lost, the sender stopping) reopens the breaker with its cool-down already over, so
//!   the next caller probes at once ([`Permit`]'s drop);
//! - pulling waits only while a probe is out or the cool-down runs
//!   ([`Breaker::wait_pullable`]): once a probe is due, messages are pulled so that there is
//!   something to probe with, even when no lane holds a message (a new lease term).

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed { failures: u32 },
    Open { until: Instant },
    HalfOpen,
}

/// The breaker (shared by all lanes).
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    base: Duration,
    cap: Duration,
    inner: Mutex<(State, Duration)>,
    /// `true` while calls may flow (closed); pulling waits on it.
    closed: watch::Sender<bool>,
}

/// What [`Breaker::admit`] let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// A normal call.
    Call,
    /// The probe after a cool-down.
    Probe,
}

impl Breaker {
    /// A closed breaker opening after `threshold` failures in a row, cooling down for `base`
    /// (doubling per failed probe, at most `cap`).
    pub fn new(threshold: u32, base: Duration, cap: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            base,
            cap,
            inner: Mutex::new((State::Closed { failures: 0 }, base)),
            closed: watch::channel(true).0,
        }
    }

    /// Waits until a call may be made. Give the verdict with [`success`](Self::success) or
    /// [`failure`](Self::failure) while holding the permit; a probe's permit dropped without a
    /// verdict lets the next caller probe.
    pub async fn admit(&self) -> Permit<'_> {
        let mut rx = self.closed.subscribe();
        loop {
            let wait_until = {
                let mut g = self.inner.lock().expect("breaker lock");
                match g.0 {
                    State::Closed { .. } => {
                        return Permit {
                            breaker: self,
                            kind: Admission::Call,
                        }
                    }
                    State::Open { until } if Instant::now() >= until => {
                        g.0 = State::HalfOpen;
                        tracing::info!("circuit breaker half-open: probing the Bot API");
                        return Permit {
                            breaker: self,
                            kind: Admission::Probe,
                        };
                    }
                    State::Open { until } => Some(until),
                    State::HalfOpen => None,
                }
            };
            match wait_until {
                Some(until) => tokio::time::sleep_until(until).await,
                // The probe is out: wait for its verdict.
                None => {
                    let _ = rx.changed().await;
                }
            }
        }
    }

    /// A call succeeded (or failed for a reason that says Telegram is up: 4xx, 429).
    pub fn success(&self) {
        let mut g = self.inner.lock().expect("breaker lock");
        if !matches!(g.0, State::Closed { .. }) {
            tracing::info!("circuit breaker closed: the Bot API answers again");
        }
        *g = (State::Closed { failures: 0 }, self.base);
        self.closed.send_replace(true);
    }

    /// A call failed transiently.
    pub fn failure(&self) {
        let mut g = self.inner.lock().expect("breaker lock");
        let open = match g.0 {
            State::Closed { failures } if failures + 1 >= self.threshold => true,
            State::Closed { failures } => {
                g.0 = State::Closed {
                    failures: failures + 1,
                };
                false
            }
            State::HalfOpen => {
                g.1 = (g.1 * 2).min(self.cap);
                true
            }
            State::Open { .. } => false,
        };
        if open {
            let cool = g.1;
            g.0 = State::Open {
                until: Instant::now() + cool,
            };
            tracing::warn!(cool_down = ?cool, "circuit breaker open: the Bot API keeps failing");
            self.closed.send_replace(false);
        }
    }

    /// Whether calls flow.
    pub fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }

    /// Waits until the breaker is closed.
    pub async fn wait_closed(&self) {
        let mut rx = self.closed.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Waits until pulling makes sense: the breaker is closed, or open with its cool-down
    /// over (a probe is due and needs a message). While a probe is out, or the cool-down
    /// runs, nothing is pulled.
    pub async fn wait_pullable(&self) {
        let mut rx = self.closed.subscribe();
        loop {
            let until = match self.inner.lock().expect("breaker lock").0 {
                State::Closed { .. } => return,
                State::Open { until } if Instant::now() >= until => return,
                State::Open { until } => Some(until),
                State::HalfOpen => None,
            };
            match until {
                Some(until) => {
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => {}
                        _ = rx.changed() => {}
                    }
                }
                None => {
                    let _ = rx.changed().await;
                }
            }
        }
    }

    /// A probe ended without a verdict: open, with the cool-down over, so the next caller
    /// probes at once.
    fn abandon_probe(&self) {
        let mut g = self.inner.lock().expect("breaker lock");
        if g.0 == State::HalfOpen {
            g.0 = State::Open {
                until: Instant::now(),
            };
            drop(g);
            tracing::info!("probe abandoned without a verdict; the next call probes");
            // Wakes the callers waiting for the probe's verdict.
            self.closed.send_replace(false);
        }
    }
}

/// A call admitted by [`Breaker::admit`].
#[derive(Debug)]
#[must_use = "hold the permit until the call's verdict is given"]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    kind: Admission,
}

impl Permit<'_> {
    /// A normal call or the probe.
    pub fn kind(&self) -> Admission {
        self.kind
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if self.kind == Admission::Probe {
            self.breaker.abandon_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_probes_and_closes() {
        let b = Breaker::new(3, Duration::from_secs(1), Duration::from_secs(8));
        assert_eq!(b.admit().await.kind(), Admission::Call);
        b.failure();
        b.failure();
        assert!(b.is_closed());
        b.failure();
        assert!(!b.is_closed());
        let t0 = Instant::now();
        let probe = b.admit().await;
        assert_eq!(probe.kind(), Admission::Probe);
        assert_eq!(Instant::now() - t0, Duration::from_secs(1));
        // The probe fails: open again for twice as long.
        b.failure();
        drop(probe);
        let probe = b.admit().await;
        assert_eq!(probe.kind(), Admission::Probe);
        assert_eq!(Instant::now() - t0, Duration::from_secs(3));
        b.success();
        drop(probe);
        assert!(b.is_closed());
        assert_eq!(b.admit().await.kind(), Admission::Call);
        b.wait_closed().await;
    }

    /// Finding 1 of the review: a probe admitted and then dropped (its handler cancelled, the
    /// lease found invalid) left the breaker half-open for ever; now the next caller probes.
    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_lets_the_next_caller_probe() {
        let b = std::sync::Arc::new(Breaker::new(
            1,
            Duration::from_secs(1),
            Duration::from_secs(8),
        ));
        b.failure();
        let probe = b.admit().await;
        assert_eq!(probe.kind(), Admission::Probe);
        // Another caller waits for the probe's verdict ...
        let b2 = b.clone();
        let waiter = tokio::spawn(async move { b2.admit().await.kind() });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        // ... which never comes: the probe is given up.
        drop(probe);
        let next = tokio::time::timeout(Duration::from_secs(60), waiter)
            .await
            .expect("the waiting caller is admitted")
            .unwrap();
        assert_eq!(next, Admission::Probe);
    }

    /// Finding 1 of the review: with the breaker open and no message held (a new lease term),
    /// pulling waited for a close that only a probe could bring. Now pulling resumes once a
    /// probe is due, and waits while a probe is out.
    #[tokio::test(start_paused = true)]
    async fn pulling_resumes_when_a_probe_is_due() {
        let b = Breaker::new(1, Duration::from_secs(2), Duration::from_secs(8));
        b.failure();
        let t0 = Instant::now();
        tokio::time::timeout(Duration::from_secs(60), b.wait_pullable())
            .await
            .expect("pullable once the cool-down is over");
        assert_eq!(Instant::now() - t0, Duration::from_secs(2));
        let probe = b.admit().await;
        assert!(
            tokio::time::timeout(Duration::from_secs(30), b.wait_pullable())
                .await
                .is_err(),
            "no pulling while the probe is out"
        );
        b.success();
        drop(probe);
        b.wait_pullable().await;
    }
}
