//! Telegram's rate limits on the methods that act on a chat. Telegram documents limits on
//! sending messages; the sandbox reads them as strictly as is plausible, so that a client
//! that keeps them is safe with Telegram whatever it counts: `sendMessage`, `editMessageText`
//! and `deleteMessage` count against the bot's and the chat's limits ([`Limiter::acquire`]),
//! `answerCallbackQuery` and `sendChatAction` against the bot's ([`Limiter::acquire_bot`]).
//!
//! - **bot-wide**: at most `bot_rate_per_sec` accepted calls in any 1-second window (a sliding
//!   window: a burst of at most that many, and never more than that many per second);
//! - **private chat** (positive chat id): `private_chat_rate_per_sec` sustained, with a burst
//!   tolerance of `private_chat_burst` calls (a GCRA, "generic cell rate algorithm", i.e. a
//!   token bucket of that size refilled at that rate): 3 back-to-back replies pass, the 4th in
//!   the same second is refused;
//! - **group chat** (negative chat id): at most `group_rate_per_min` accepted calls in any
//!   60-second window.
//!
//! A refused call consumes nothing; it is told to retry after the whole number of seconds
//! (at least 1) until the slot it needs frees.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use tokio::time::Instant;

/// The limits' parameters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct LimitConfig {
    pub enabled: bool,
    pub bot_per_sec: u32,
    pub private_per_sec: u32,
    pub private_burst: u32,
    pub group_per_min: u32,
}

/// At most `limit` events in any `window`.
#[derive(Debug, Default)]
struct SlidingWindow {
    accepted: VecDeque<Instant>,
}

impl SlidingWindow {
    /// `Err(wait)` when full: the time until the oldest accepted event leaves the window.
    fn check(&mut self, now: Instant, limit: u32, window: Duration) -> Result<(), Duration> {
        while self
            .accepted
            .front()
            .is_some_and(|&t| now.saturating_duration_since(t) >= window)
        {
            self.accepted.pop_front();
        }
        if (self.accepted.len() as u64) < u64::from(limit) {
            return Ok(());
        }
        let oldest = self.accepted[self.accepted.len() - limit as usize];
        Err((oldest + window).saturating_duration_since(now))
    }

    fn take(&mut self, now: Instant) {
        self.accepted.push_back(now);
    }
}

/// GCRA: the theoretical arrival time of the next conforming call.
#[derive(Debug, Clone, Copy)]
struct Gcra {
    tat: Instant,
}

impl Gcra {
    fn check(&self, now: Instant, interval: Duration, burst: u32) -> Result<(), Duration> {
        let tolerance = interval * burst.saturating_sub(1);
        let earliest = self.tat.checked_sub(tolerance).unwrap_or(now);
        if earliest <= now {
            Ok(())
        } else {
            Err(earliest - now)
        }
    }

    fn take(&mut self, now: Instant, interval: Duration) {
        self.tat = self.tat.max(now) + interval;
    }
}

/// The rate limiter's state.
#[derive(Debug, Default)]
pub(crate) struct Limiter {
    pub config: LimitConfig,
    bot: SlidingWindow,
    private: HashMap<i64, Gcra>,
    groups: HashMap<i64, SlidingWindow>,
}

impl Limiter {
    pub(crate) fn new(config: LimitConfig) -> Self {
        Self {
            config,
            bot: SlidingWindow::default(),
            private: HashMap::new(),
            groups: HashMap::new(),
        }
    }

    /// Accepts a call that counts against the bot's limit only (and counts it), or refuses
    /// it with the `retry_after` in whole seconds (≥ 1).
    pub(crate) fn acquire_bot(&mut self, now: Instant) -> Result<(), u32> {
        let c = self.config;
        if !c.enabled || c.bot_per_sec == 0 {
            return Ok(());
        }
        self.bot
            .check(now, c.bot_per_sec, Duration::from_secs(1))
            .map_err(retry_after_secs)?;
        self.bot.take(now);
        Ok(())
    }

    /// Accepts a sending call to `chat_id` at `now` (and counts it), or refuses it with the
    /// `retry_after` in whole seconds (≥ 1).
    pub(crate) fn acquire(&mut self, chat_id: i64, now: Instant) -> Result<(), u32> {
        let c = self.config;
        if !c.enabled {
            return Ok(());
        }
        let mut wait = Duration::ZERO;
        if c.bot_per_sec > 0 {
            if let Err(w) = self.bot.check(now, c.bot_per_sec, Duration::from_secs(1)) {
                wait = wait.max(w);
            }
        }
        let interval = Duration::from_secs(1) / c.private_per_sec.max(1);
        if chat_id > 0 && c.private_per_sec > 0 {
            if let Some(g) = self.private.get(&chat_id) {
                if let Err(w) = g.check(now, interval, c.private_burst.max(1)) {
                    wait = wait.max(w);
                }
            }
        }
        if chat_id < 0 && c.group_per_min > 0 {
            let window = self.groups.entry(chat_id).or_default();
            if let Err(w) = window.check(now, c.group_per_min, Duration::from_secs(60)) {
                wait = wait.max(w);
            }
        }
        if !wait.is_zero() {
            return Err(retry_after_secs(wait));
        }
        if c.bot_per_sec > 0 {
            self.bot.take(now);
        }
        if chat_id > 0 && c.private_per_sec > 0 {
            self.private
                .entry(chat_id)
                .or_insert(Gcra { tat: now })
                .take(now, interval);
        }
        if chat_id < 0 && c.group_per_min > 0 {
            self.groups.entry(chat_id).or_default().take(now);
        }
        Ok(())
    }
}

/// A wait as Telegram's `retry_after`: whole seconds, rounded up, at least 1.
pub(crate) fn retry_after_secs(wait: Duration) -> u32 {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    secs.clamp(1, u64::from(u32::MAX)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter() -> Limiter {
        Limiter::new(LimitConfig {
            enabled: true,
            bot_per_sec: 30,
            private_per_sec: 1,
            private_burst: 3,
            group_per_min: 20,
        })
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }

    #[test]
    fn private_chat_allows_a_burst_of_three_then_one_per_second() {
        let mut l = limiter();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.acquire(7, t0), Ok(()));
        }
        assert_eq!(l.acquire(7, t0), Err(1));
        assert_eq!(l.acquire(8, t0), Ok(()), "other chats are independent");
        assert_eq!(l.acquire(7, t0 + Duration::from_millis(990)), Err(1));
        assert_eq!(l.acquire(7, t0 + Duration::from_secs(1)), Ok(()));
        assert_eq!(l.acquire(7, t0 + Duration::from_secs(1)), Err(1));
        // Sustained: one per second passes forever.
        for s in 2..20 {
            assert_eq!(l.acquire(7, t0 + Duration::from_secs(s)), Ok(()), "{s}");
        }
        // After a quiet spell the burst is available again.
        let later = t0 + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(l.acquire(7, later), Ok(()));
        }
        assert!(l.acquire(7, later).is_err());
    }

    #[test]
    fn bot_wide_window_never_passes_more_than_the_rate_in_a_second() {
        let mut l = limiter();
        let t0 = Instant::now();
        let mut accepted: Vec<Duration> = Vec::new();
        // 200 chats, one call each every 10 ms for 3 s: far more than 30/s are attempted.
        for step in 0..300u32 {
            let at = Duration::from_millis(u64::from(step) * 10);
            let chat = i64::from(step % 200) + 1;
            match l.acquire(chat, t0 + at) {
                Ok(()) => accepted.push(at),
                Err(n) => assert!(n >= 1),
            }
        }
        for (i, start) in accepted.iter().enumerate() {
            let in_window = accepted[i..]
                .iter()
                .take_while(|t| **t < *start + Duration::from_secs(1))
                .count();
            assert!(
                in_window <= 30,
                "{in_window} calls in the second from {start:?}"
            );
        }
        assert!(
            accepted.len() >= 85,
            "about 30/s for 3 s: {}",
            accepted.len()
        );
    }

    #[test]
    fn bot_only_calls_share_the_bots_window_and_leave_the_chats_alone() {
        let mut l = limiter();
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.acquire(7, t0), Ok(()));
        }
        // The chat's burst is spent; a bot-only call to it still passes.
        assert_eq!(l.acquire(7, t0), Err(1));
        for _ in 0..27 {
            assert_eq!(l.acquire_bot(t0), Ok(()));
        }
        // 30 in this second: the bot's window is full for both kinds.
        assert_eq!(l.acquire_bot(t0), Err(1));
        assert_eq!(l.acquire(8, t0), Err(1));
        assert_eq!(l.acquire_bot(t0 + Duration::from_secs(1)), Ok(()));
    }

    #[test]
    fn groups_get_twenty_per_minute() {
        let mut l = limiter();
        let t0 = Instant::now();
        for i in 0..20 {
            assert_eq!(l.acquire(-5, t0 + Duration::from_millis(i * 100)), Ok(()));
        }
        assert_eq!(l.acquire(-5, t0 + Duration::from_secs(2)), Err(58));
        assert_eq!(l.acquire(-5, t0 + Duration::from_secs(60)), Ok(()));
    }

    #[test]
    fn refused_calls_consume_nothing_and_disabled_limits_pass_all() {
        let mut l = limiter();
        let t0 = Instant::now();
        for _ in 0..3 {
            l.acquire(1, t0).unwrap();
        }
        for _ in 0..100 {
            assert!(l.acquire(1, t0).is_err());
        }
        assert_eq!(l.acquire(1, t0 + Duration::from_secs(1)), Ok(()));
        let mut off = limiter();
        off.config.enabled = false;
        for _ in 0..1000 {
            assert_eq!(off.acquire(1, t0), Ok(()));
        }
    }
}
