//! A circuit breaker for the Bot API.
//!
//! Closed: calls go through; `threshold` transient failures in a row (5xx, timeouts,
//! connection errors) open it. Open: no call is made and the sender stops pulling from
//! JetStream until the cool-down has passed. Then one caller is let through as the probe
//! (half-open): its success closes the breaker, its failure opens it again with the cool-down
//! doubled (up to a cap). Other callers wait while the probe is out.

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

    /// Waits until a call may be made.
    pub async fn admit(&self) -> Admission {
        let mut rx = self.closed.subscribe();
        loop {
            let wait_until = {
                let mut g = self.inner.lock().expect("breaker lock");
                match g.0 {
                    State::Closed { .. } => return Admission::Call,
                    State::Open { until } if Instant::now() >= until => {
                        g.0 = State::HalfOpen;
                        tracing::info!("circuit breaker half-open: probing the Bot API");
                        return Admission::Probe;
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

    /// Waits until the breaker is closed (used to stop pulling while it is not).
    pub async fn wait_closed(&self) {
        let mut rx = self.closed.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_probes_and_closes() {
        let b = Breaker::new(3, Duration::from_secs(1), Duration::from_secs(8));
        assert_eq!(b.admit().await, Admission::Call);
        b.failure();
        b.failure();
        assert!(b.is_closed());
        b.failure();
        assert!(!b.is_closed());
        let t0 = Instant::now();
        assert_eq!(b.admit().await, Admission::Probe);
        assert_eq!(Instant::now() - t0, Duration::from_secs(1));
        // The probe fails: open again for twice as long.
        b.failure();
        assert_eq!(b.admit().await, Admission::Probe);
        assert_eq!(Instant::now() - t0, Duration::from_secs(3));
        b.success();
        assert!(b.is_closed());
        assert_eq!(b.admit().await, Admission::Call);
        b.wait_closed().await;
    }
}
