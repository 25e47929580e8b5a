//! Fault injection: the faults in force (`GET/POST/DELETE /sandbox/faults`, `--fault-*` flags)
//! and the decision for one call.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The next `count` sending calls are answered 429 with `retry_after`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Burst429 {
    /// How many calls are still to be refused.
    pub count: u32,
    /// The `retry_after` they are given, in seconds.
    #[serde(default = "default_retry_after")]
    pub retry_after: u32,
}

/// The faults in force, as `GET /sandbox/faults` shows them. Shares are in `0.0..=1.0`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Faults {
    /// Share of sending calls answered `error_status`.
    pub error_rate: f64,
    /// The status of injected errors (default 500).
    pub error_status: u16,
    /// Share of sending calls answered 429 with `retry_after`.
    pub retry_after_rate: f64,
    /// The `retry_after` of injected 429s, in seconds (default 3).
    pub retry_after: u32,
    /// Delay before every Bot API call is processed, in milliseconds.
    pub delay_ms: u64,
    /// Random extra delay before every Bot API call is processed, uniform in
    /// `0..=jitter_ms` milliseconds: network jitter between a client's dispatch and the
    /// server's arrival time, which is what Telegram's limits count.
    pub jitter_ms: u64,
    /// Share of sending calls never answered (held until the client gives up) and not
    /// executed.
    pub drop_rate: f64,
    /// Chat ids whose user has blocked the bot: sending to them answers 403.
    pub blocked_users: Vec<i64>,
    /// The next sending calls refused with 429, if any left.
    pub burst_429: Option<Burst429>,
    /// Webhook deliveries of one chat in flight at once. 1 (the default) is what Telegram's
    /// server does: a chat's next update goes out after the previous one was answered. More
    /// lets a chat's updates overtake each other on the way, which Telegram's documentation
    /// does not rule out (`update_id` "allows you to restore the correct update sequence,
    /// should they get out of order").
    pub chat_in_flight: u32,
    /// Random delay before each webhook delivery, uniform in `0..=delivery_jitter_ms`
    /// milliseconds: with `chat_in_flight` above 1, the order a chat's updates arrive in.
    pub delivery_jitter_ms: u64,
}

fn default_retry_after() -> u32 {
    3
}

impl Default for Faults {
    fn default() -> Self {
        Self {
            error_rate: 0.0,
            error_status: 500,
            retry_after_rate: 0.0,
            retry_after: default_retry_after(),
            delay_ms: 0,
            jitter_ms: 0,
            drop_rate: 0.0,
            blocked_users: Vec::new(),
            burst_429: None,
            chat_in_flight: 1,
            delivery_jitter_ms: 0,
        }
    }
}

/// Body of `POST /sandbox/faults`: the fields given replace the current ones, the others stay.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FaultsPatch {
    error_rate: Option<f64>,
    error_status: Option<u16>,
    retry_after_rate: Option<f64>,
    retry_after: Option<u32>,
    delay_ms: Option<u64>,
    jitter_ms: Option<u64>,
    drop_rate: Option<f64>,
    blocked_users: Option<Vec<i64>>,
    burst_429: Option<Option<Burst429>>,
    chat_in_flight: Option<u32>,
    delivery_jitter_ms: Option<u64>,
}

/// What an injected fault does to a sending call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Injected {
    /// Answer with this status (Telegram-shaped body).
    Error(u16),
    /// Answer 429 with this `retry_after`.
    RetryAfter(u32),
    /// Never answer.
    Drop,
}

impl Faults {
    /// Applies a patch, validating it first (nothing changes on error).
    pub(crate) fn apply(&mut self, patch: FaultsPatch) -> Result<(), String> {
        let mut next = self.clone();
        let share = |name: &str, v: f64| {
            if (0.0..=1.0).contains(&v) {
                Ok(v)
            } else {
                Err(format!("{name} must be between 0 and 1"))
            }
        };
        if let Some(v) = patch.error_rate {
            next.error_rate = share("error_rate", v)?;
        }
        if let Some(v) = patch.retry_after_rate {
            next.retry_after_rate = share("retry_after_rate", v)?;
        }
        if let Some(v) = patch.drop_rate {
            next.drop_rate = share("drop_rate", v)?;
        }
        if let Some(v) = patch.error_status {
            if !(400..=599).contains(&v) {
                return Err("error_status must be between 400 and 599".into());
            }
            next.error_status = v;
        }
        if let Some(v) = patch.retry_after {
            next.retry_after = v.max(1);
        }
        if let Some(v) = patch.delay_ms {
            next.delay_ms = v;
        }
        if let Some(v) = patch.jitter_ms {
            next.jitter_ms = v;
        }
        if let Some(v) = patch.chat_in_flight {
            if v == 0 {
                return Err("chat_in_flight must be at least 1".into());
            }
            next.chat_in_flight = v;
        }
        if let Some(v) = patch.delivery_jitter_ms {
            next.delivery_jitter_ms = v;
        }
        if let Some(v) = patch.blocked_users {
            next.blocked_users = v;
        }
        if let Some(v) = patch.burst_429 {
            next.burst_429 = v.filter(|b| b.count > 0).map(|b| Burst429 {
                retry_after: b.retry_after.max(1),
                ..b
            });
        }
        *self = next;
        Ok(())
    }

    /// Whether sending to `chat_id` is refused because the user blocked the bot.
    pub(crate) fn is_blocked(&self, chat_id: i64) -> bool {
        self.blocked_users.contains(&chat_id)
    }

    /// How long to hold a call before processing it: `delay_ms` plus a uniform draw in
    /// `0..=jitter_ms` (`roll` draws uniform numbers in `0.0..1.0`).
    pub(crate) fn hold(&self, roll: impl FnOnce() -> f64) -> Duration {
        let jitter = if self.jitter_ms > 0 {
            (roll() * (self.jitter_ms + 1) as f64) as u64
        } else {
            0
        };
        Duration::from_millis(self.delay_ms + jitter.min(self.jitter_ms))
    }

    /// How long to hold a webhook delivery before sending it: a uniform draw in
    /// `0..=delivery_jitter_ms`.
    pub(crate) fn delivery_hold(&self, roll: impl FnOnce() -> f64) -> Duration {
        if self.delivery_jitter_ms == 0 {
            return Duration::ZERO;
        }
        let ms = (roll() * (self.delivery_jitter_ms + 1) as f64) as u64;
        Duration::from_millis(ms.min(self.delivery_jitter_ms))
    }

    /// Decides the injected fault of one sending call, if any, with `roll` drawing uniform
    /// numbers in `0.0..1.0`. The burst comes first, then drop, 429 and error shares.
    pub(crate) fn decide(&mut self, mut roll: impl FnMut() -> f64) -> Option<Injected> {
        if let Some(burst) = &mut self.burst_429 {
            let retry_after = burst.retry_after;
            burst.count -= 1;
            if burst.count == 0 {
                self.burst_429 = None;
            }
            return Some(Injected::RetryAfter(retry_after));
        }
        if self.drop_rate > 0.0 && roll() < self.drop_rate {
            return Some(Injected::Drop);
        }
        if self.retry_after_rate > 0.0 && roll() < self.retry_after_rate {
            return Some(Injected::RetryAfter(self.retry_after));
        }
        if self.error_rate > 0.0 && roll() < self.error_rate {
            return Some(Injected::Error(self.error_status));
        }
        None
    }
}

/// The start-up faults, as flags and environment variables.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct FaultArgs {
    /// Share (0..1) of sending calls answered with --fault-error-status.
    #[arg(long = "fault-error-rate", env = "COURIER_SANDBOX_FAULT_ERROR_RATE")]
    pub error_rate: Option<f64>,
    /// Status of injected errors (default 500).
    #[arg(
        long = "fault-error-status",
        env = "COURIER_SANDBOX_FAULT_ERROR_STATUS"
    )]
    pub error_status: Option<u16>,
    /// Share (0..1) of sending calls answered 429 with --fault-retry-after.
    #[arg(
        long = "fault-retry-after-rate",
        env = "COURIER_SANDBOX_FAULT_RETRY_AFTER_RATE"
    )]
    pub retry_after_rate: Option<f64>,
    /// `retry_after` of injected 429s, in seconds (default 3).
    #[arg(long = "fault-retry-after", env = "COURIER_SANDBOX_FAULT_RETRY_AFTER")]
    pub retry_after: Option<u32>,
    /// Delay before every Bot API call, in milliseconds.
    #[arg(long = "fault-delay-ms", env = "COURIER_SANDBOX_FAULT_DELAY_MS")]
    pub delay_ms: Option<u64>,
    /// Random extra delay before every Bot API call, uniform in 0..=N milliseconds.
    #[arg(long = "fault-jitter-ms", env = "COURIER_SANDBOX_FAULT_JITTER_MS")]
    pub jitter_ms: Option<u64>,
    /// Share (0..1) of sending calls never answered.
    #[arg(long = "fault-drop-rate", env = "COURIER_SANDBOX_FAULT_DROP_RATE")]
    pub drop_rate: Option<f64>,
    /// Chat ids of users who blocked the bot (comma separated).
    #[arg(
        long = "fault-blocked-users",
        env = "COURIER_SANDBOX_FAULT_BLOCKED_USERS",
        value_delimiter = ','
    )]
    pub blocked_users: Vec<i64>,
    /// Webhook deliveries of one chat in flight at once (default 1, as Telegram's server).
    #[arg(
        long = "fault-chat-in-flight",
        env = "COURIER_SANDBOX_FAULT_CHAT_IN_FLIGHT"
    )]
    pub chat_in_flight: Option<u32>,
    /// Random delay before each webhook delivery, uniform in 0..=N milliseconds.
    #[arg(
        long = "fault-delivery-jitter-ms",
        env = "COURIER_SANDBOX_FAULT_DELIVERY_JITTER_MS"
    )]
    pub delivery_jitter_ms: Option<u64>,
}

impl FaultArgs {
    /// The faults these flags describe.
    pub(crate) fn to_faults(&self) -> Result<Faults, String> {
        let mut faults = Faults::default();
        faults.apply(FaultsPatch {
            error_rate: self.error_rate,
            error_status: self.error_status,
            retry_after_rate: self.retry_after_rate,
            retry_after: self.retry_after,
            delay_ms: self.delay_ms,
            jitter_ms: self.jitter_ms,
            drop_rate: self.drop_rate,
            blocked_users: (!self.blocked_users.is_empty()).then(|| self.blocked_users.clone()),
            burst_429: None,
            chat_in_flight: self.chat_in_flight,
            delivery_jitter_ms: self.delivery_jitter_ms,
        })?;
        Ok(faults)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_comes_first_and_runs_out() {
        let mut f = Faults::default();
        f.apply(FaultsPatch {
            burst_429: Some(Some(Burst429 {
                count: 2,
                retry_after: 4,
            })),
            ..FaultsPatch::default()
        })
        .unwrap();
        assert_eq!(f.decide(|| 0.0), Some(Injected::RetryAfter(4)));
        assert_eq!(f.decide(|| 0.0), Some(Injected::RetryAfter(4)));
        assert_eq!(f.decide(|| 0.0), None);
        assert_eq!(f.burst_429, None);
    }

    #[test]
    fn shares_are_rolled_and_validated() {
        let mut f = Faults::default();
        let patch: FaultsPatch =
            serde_json::from_str(r#"{"error_rate": 0.5, "error_status": 502}"#).unwrap();
        f.apply(patch).unwrap();
        assert_eq!(f.decide(|| 0.4), Some(Injected::Error(502)));
        assert_eq!(f.decide(|| 0.6), None);
        let bad: FaultsPatch = serde_json::from_str(r#"{"drop_rate": 1.5}"#).unwrap();
        assert!(f.apply(bad).is_err());
        assert_eq!(f.drop_rate, 0.0, "nothing changes on error");
        assert!(serde_json::from_str::<FaultsPatch>(r#"{"eror_rate": 1}"#).is_err());
    }

    #[test]
    fn hold_is_the_delay_plus_a_uniform_jitter() {
        let mut f = Faults::default();
        assert_eq!(f.hold(|| 0.99), Duration::ZERO);
        f.apply(serde_json::from_str(r#"{"delay_ms": 10, "jitter_ms": 50}"#).unwrap())
            .unwrap();
        assert_eq!(f.hold(|| 0.0), Duration::from_millis(10));
        assert_eq!(f.hold(|| 0.5), Duration::from_millis(35));
        assert_eq!(f.hold(|| 0.999_999), Duration::from_millis(60));
    }
}
