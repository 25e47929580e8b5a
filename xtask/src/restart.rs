//! When to start a process that died again: exponential backoff that resets once the process
//! has run for a while. Pure (the caller says how long the process ran), so it is tested
//! without clocks or processes.
//!
//! A process that keeps dying right after it starts waits 0.5 s, 1 s, 2 s, … up to 30 s
//! between attempts: the loop stays visible in the log and costs at most one start every
//! 30 s. One that ran for a minute before it died is restarted after 0.5 s again.

use std::time::Duration;

/// How restarts are paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// The wait before restarting a process whose previous run was stable.
    pub initial: Duration,
    /// The longest wait; the doubling stops here.
    pub max: Duration,
    /// A run at least this long counts as stable: the next exit starts the backoff afresh.
    pub stable_after: Duration,
}

impl Policy {
    /// 0.5 s doubling to 30 s; a minute up resets it.
    pub const DEFAULT: Self = Self {
        initial: Duration::from_millis(500),
        max: Duration::from_secs(30),
        stable_after: Duration::from_secs(60),
    };

    /// The wait after the `n`-th exit in a row (1 for the first): `initial · 2^(n-1)`,
    /// capped at `max`.
    pub fn delay(&self, n: u32) -> Duration {
        let factor = 2u32.checked_pow(n.saturating_sub(1)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// What to do about one exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Wait this long, then start the process again.
    pub delay: Duration,
    /// Exits in a row without a stable run in between, this one included (1: it had been
    /// stable, or it is the first exit).
    pub in_a_row: u32,
    /// Every exit of this process since `xtask up` started it.
    pub total: u32,
}

impl Decision {
    /// Whether this exit is part of a crash loop: the process died again before it was
    /// stable, at least three times in a row.
    pub fn crash_loop(&self) -> bool {
        self.in_a_row >= 3
    }
}

/// The restart history of one process.
#[derive(Debug, Clone)]
pub struct Restarts {
    policy: Policy,
    in_a_row: u32,
    total: u32,
}

impl Restarts {
    /// No exits yet.
    pub fn new(policy: Policy) -> Self {
        Self {
            policy,
            in_a_row: 0,
            total: 0,
        }
    }

    /// The policy it follows.
    pub fn policy(&self) -> Policy {
        self.policy
    }

    /// Records that the process ended after running for `uptime` (zero when it could not
    /// even be started) and says when to start it again.
    pub fn exited(&mut self, uptime: Duration) -> Decision {
        if uptime >= self.policy.stable_after {
            self.in_a_row = 0;
        }
        self.in_a_row = self.in_a_row.saturating_add(1);
        self.total = self.total.saturating_add(1);
        Decision {
            delay: self.policy.delay(self.in_a_row),
            in_a_row: self.in_a_row,
            total: self.total,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn delays(restarts: &mut Restarts, uptime: Duration, n: usize) -> Vec<Duration> {
        (0..n).map(|_| restarts.exited(uptime).delay).collect()
    }

    #[test]
    fn quick_exits_double_the_wait_up_to_the_cap() {
        let mut restarts = Restarts::new(Policy::DEFAULT);
        assert_eq!(
            delays(&mut restarts, ms(100), 9),
            [
                ms(500),
                secs(1),
                secs(2),
                secs(4),
                secs(8),
                secs(16),
                secs(30),
                secs(30),
                secs(30)
            ]
        );
    }

    #[test]
    fn a_stable_run_resets_the_backoff() {
        let mut restarts = Restarts::new(Policy::DEFAULT);
        delays(&mut restarts, secs(1), 5);
        let after_stable = restarts.exited(secs(60));
        assert_eq!(after_stable.delay, ms(500));
        assert_eq!(after_stable.in_a_row, 1);
        assert_eq!(after_stable.total, 6, "the total keeps counting");
        assert_eq!(restarts.exited(secs(1)).delay, secs(1));
    }

    #[test]
    fn a_run_just_short_of_stable_keeps_backing_off() {
        let mut restarts = Restarts::new(Policy::DEFAULT);
        restarts.exited(secs(59));
        let second = restarts.exited(secs(60) - ms(1));
        assert_eq!(second.delay, secs(1));
        assert_eq!(second.in_a_row, 2);
    }

    #[test]
    fn three_quick_exits_in_a_row_are_a_crash_loop() {
        let mut restarts = Restarts::new(Policy::DEFAULT);
        let loops: Vec<bool> = (0..4)
            .map(|_| restarts.exited(Duration::ZERO).crash_loop())
            .collect();
        assert_eq!(loops, [false, false, true, true]);
        assert!(!restarts.exited(secs(3600)).crash_loop());
    }

    #[test]
    fn endless_crashes_neither_overflow_nor_exceed_the_cap() {
        let mut restarts = Restarts::new(Policy::DEFAULT);
        let last = (0..10_000)
            .map(|_| restarts.exited(Duration::ZERO))
            .last()
            .unwrap();
        assert_eq!(last.delay, secs(30));
        assert_eq!(last.in_a_row, 10_000);
        let policy = Policy::DEFAULT;
        assert_eq!(policy.delay(u32::MAX), secs(30));
        assert_eq!(policy.delay(0), ms(500), "0 is treated as the first exit");
    }

    #[test]
    fn custom_policy_is_followed() {
        let policy = Policy {
            initial: ms(100),
            max: ms(250),
            stable_after: secs(5),
        };
        let mut restarts = Restarts::new(policy);
        assert_eq!(
            delays(&mut restarts, secs(1), 4),
            [ms(100), ms(200), ms(250), ms(250)]
        );
        assert_eq!(restarts.exited(secs(5)).delay, ms(100));
    }
}
