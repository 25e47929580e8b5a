//! Telegram's rate limits, kept with governor's GCRA limiters.
//!
//! Three budgets: one for the whole bot (default 30 calls/s), one per private chat (default
//! 1/s, positive chat ids) and one per group or supergroup (default 20/min, negative chat ids).
//! Every budget has a burst of one: a cell is one call, and a call is made only at the instant
//! both the bot's and its chat's limiter granted a cell, so the budget holds measured from any
//! instant, not only on average.
//!
//! **Order of the checks.** A chat first waits, on its own, until its chat limiter would admit
//! it (the `ready` hint, which is exactly GCRA's theoretical arrival time for a burst of one).
//! Only then does it queue for the bot's budget, in FIFO order (a fair `tokio::sync::Mutex`;
//! only the head of the queue polls the limiter). With the bot's cell granted, the chat's
//! limiter is checked at that same instant: it admits (it was ready before and nobody else
//! sends to this chat, lanes run one message per chat at a time). Consuming the chat's cell
//! *before* waiting for the bot would be wrong: the wait for the bot's budget would shift the
//! real send after the chat's slot and two sends of one chat could come closer than its
//! period.
//!
//! A chat waiting for its slot therefore waits outside the bot's queue and never holds up
//! other chats; it occupies one of the sender's lanes (`COURIER_SENDER_MAX_LANES`), so that
//! bound must stay above bot rate × slowest chat period (30/s × 3 s = 90 with the defaults).
//!
//! **Pauses.** A 429 pauses the whole bot ([`Limits::pause_bot`]): nothing is granted until
//! `retry_after` has passed. See `docs/SENDER.md` for why a 429 is read as bot-wide.
//!
//! The clock is tokio's ([`TokioClock`]), so the whole arithmetic runs under tokio's paused
//! test clock without sleeping.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::ops::Add;
use std::sync::Mutex;
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use tokio::time::Instant;

/// An instant of tokio's clock, as governor wants it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TokioInstant(pub Instant);

impl Add<Nanos> for TokioInstant {
    type Output = Self;
    fn add(self, other: Nanos) -> Self {
        Self(self.0 + Duration::from(other))
    }
}

impl Reference for TokioInstant {
    fn duration_since(&self, earlier: Self) -> Nanos {
        self.0.saturating_duration_since(earlier.0).into()
    }

    fn saturating_sub(&self, duration: Nanos) -> Self {
        Self(
            self.0
                .checked_sub(Duration::from(duration))
                .unwrap_or(self.0),
        )
    }
}

/// tokio's clock for governor: follows `tokio::time::pause`/`advance` in tests.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    type Instant = TokioInstant;
    fn now(&self) -> TokioInstant {
        TokioInstant(Instant::now())
    }
}

/// How late a waiter may wake and still be counted at its scheduled instant: tokio's timers
/// have a resolution of one millisecond, and a loaded machine wakes tasks a few milliseconds
/// late. The calls' schedule stays exact; one call may go out up to this much after its slot,
/// which the headroom (1.5% of a second's 30 periods: 15 ms) more than covers.
pub const CATCH_UP: Duration = Duration::from_millis(5);

/// The bot limiter's clock: tokio's, except that the head of the queue, waking up to
/// [`CATCH_UP`] after the instant it slept until, is counted at that instant.
///
/// Without this, a GCRA with a burst of one loses each wake-up's lateness (its next slot is
/// computed from the late "now"): about half a millisecond per call with tokio's 1 ms timer,
/// 1.5% of the bot's budget at 30/s.
#[derive(Debug, Clone, Default)]
pub struct PacedClock {
    pin: std::sync::Arc<Mutex<Option<Instant>>>,
}

impl PacedClock {
    fn pin(&self, at: Instant) {
        *self.pin.lock().expect("pin lock") = Some(at);
    }
}

impl Clock for PacedClock {
    type Instant = TokioInstant;
    fn now(&self) -> TokioInstant {
        let real = Instant::now();
        match self.pin.lock().expect("pin lock").take() {
            Some(p) if p <= real && real - p <= CATCH_UP => TokioInstant(p),
            _ => TokioInstant(real),
        }
    }
}

type Direct = RateLimiter<NotKeyed, InMemoryState, PacedClock, NoOpMiddleware<TokioInstant>>;
type Keyed =
    RateLimiter<i64, DefaultKeyedStateStore<i64>, TokioClock, NoOpMiddleware<TokioInstant>>;

/// The budgets, as rates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rates {
    /// Calls per second for the whole bot.
    pub bot_per_sec: f64,
    /// Calls per second to one private chat.
    pub private_chat_per_sec: f64,
    /// Calls per minute to one group or supergroup.
    pub group_per_min: f64,
    /// Fraction by which every period is lengthened (0.015: 1.5% under each budget), so that
    /// network jitter cannot bunch calls into an exact sliding window's limit.
    pub headroom: f64,
}

impl Default for Rates {
    fn default() -> Self {
        Self {
            bot_per_sec: 30.0,
            private_chat_per_sec: 1.0,
            group_per_min: 20.0,
            headroom: 0.015,
        }
    }
}

impl Rates {
    /// The time between two calls of the bot.
    pub fn bot_period(&self) -> Duration {
        Duration::from_secs_f64((1.0 + self.headroom) / self.bot_per_sec)
    }

    /// The time between two calls to `chat` (groups have negative ids).
    pub fn chat_period(&self, chat: i64) -> Duration {
        let base = if chat < 0 {
            60.0 / self.group_per_min
        } else {
            1.0 / self.private_chat_per_sec
        };
        Duration::from_secs_f64(base * (1.0 + self.headroom))
    }
}

fn quota(period: Duration) -> Quota {
    Quota::with_period(period.max(Duration::from_nanos(1)))
        .expect("a non-zero period")
        .allow_burst(NonZeroU32::MIN)
}

/// The bot's and its chats' budgets.
pub struct Limits {
    rates: Rates,
    bot: Direct,
    bot_clock: PacedClock,
    private: Keyed,
    group: Keyed,
    /// FIFO queue for the bot's budget: only its head polls `bot`.
    turn: tokio::sync::Mutex<()>,
    /// Nothing is granted before this instant (set by a 429).
    paused_until: Mutex<Option<Instant>>,
    /// When each chat's limiter admits its next call (GCRA's theoretical arrival time).
    ready: Mutex<HashMap<i64, Instant>>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("rates", &self.rates)
            .finish_non_exhaustive()
    }
}

impl Limits {
    /// Budgets with these rates.
    pub fn new(rates: Rates) -> Self {
        let bot_clock = PacedClock::default();
        Self {
            rates,
            bot: RateLimiter::direct_with_clock(quota(rates.bot_period()), bot_clock.clone()),
            bot_clock,
            private: RateLimiter::new(quota(rates.chat_period(1)), Default::default(), TokioClock),
            group: RateLimiter::new(quota(rates.chat_period(-1)), Default::default(), TokioClock),
            turn: tokio::sync::Mutex::new(()),
            paused_until: Mutex::new(None),
            ready: Mutex::new(HashMap::new()),
        }
    }

    /// The configured rates.
    pub fn rates(&self) -> Rates {
        self.rates
    }

    fn chat_limiter(&self, chat: i64) -> &Keyed {
        if chat < 0 {
            &self.group
        } else {
            &self.private
        }
    }

    fn ready_at(&self, chat: i64) -> Option<Instant> {
        self.ready.lock().expect("ready lock").get(&chat).copied()
    }

    fn paused(&self) -> Option<Instant> {
        let until = *self.paused_until.lock().expect("pause lock");
        until.filter(|u| *u > Instant::now())
    }

    /// Waits until a call to `chat` is within every budget and takes a cell of each. Returns
    /// the instant of the grant: the call must be made now.
    pub async fn acquire(&self, chat: i64) -> Instant {
        loop {
            // 1. The chat's own slot, waited for outside the bot's queue.
            if let Some(at) = self.ready_at(chat) {
                tokio::time::sleep_until(at).await;
            }
            // 2. The bot's budget, in FIFO order, and no call while paused.
            let turn = self.turn.lock().await;
            loop {
                if let Some(until) = self.paused() {
                    tokio::time::sleep_until(until).await;
                    continue;
                }
                match self.bot.check() {
                    Ok(()) => break,
                    Err(not_until) => {
                        let at = not_until.earliest_possible().0;
                        tokio::time::sleep_until(at).await;
                        self.bot_clock.pin(at);
                    }
                }
            }
            // 3. The chat's cell at the same instant.
            let now = Instant::now();
            match self.chat_limiter(chat).check_key(&chat) {
                Ok(()) => {
                    drop(turn);
                    self.ready
                        .lock()
                        .expect("ready lock")
                        .insert(chat, now + self.rates.chat_period(chat));
                    return now;
                }
                Err(not_until) => {
                    // Only when the hint was stale (never in steady state): a bot cell is lost.
                    drop(turn);
                    self.ready
                        .lock()
                        .expect("ready lock")
                        .insert(chat, not_until.earliest_possible().0);
                }
            }
        }
    }

    /// Pauses every call of the bot for `d` from now (extends, never shortens, a pause).
    pub fn pause_bot(&self, d: Duration) {
        let until = Instant::now() + d;
        let mut p = self.paused_until.lock().expect("pause lock");
        if p.is_none_or(|cur| cur < until) {
            *p = Some(until);
        }
    }

    /// Forgets chats that have been idle for longer than their period (bounds memory).
    pub fn forget_idle(&self) {
        let now = Instant::now();
        self.ready
            .lock()
            .expect("ready lock")
            .retain(|_, at| *at > now);
        self.private.retain_recent();
        self.group.retain_recent();
    }

    /// Chats currently remembered.
    pub fn tracked_chats(&self) -> usize {
        self.ready.lock().expect("ready lock").len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;
    use std::sync::Arc;

    fn ms(d: Duration) -> u128 {
        d.as_millis()
    }

    fn exact() -> Rates {
        Rates {
            headroom: 0.0,
            ..Rates::default()
        }
    }

    /// 1,000 calls over 100 private chats, 200 to one chat, and 30 to 3 groups, all competing:
    /// under the paused clock, the grants are checked against each budget exactly.
    #[tokio::test(start_paused = true)]
    async fn grants_respect_every_budget_exactly() {
        let limits = Arc::new(Limits::new(exact()));
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        let mut plan: Vec<(i64, usize)> = (1..=100).map(|c| (c, 10)).collect();
        plan.push((1000, 200));
        plan.extend([(-1, 10), (-2, 10), (-3, 10)]);
        for (chat, n) in plan {
            let l = limits.clone();
            // One task per chat, sequential inside (as the lanes do).
            tasks.spawn(async move {
                let mut at = Vec::new();
                for _ in 0..n {
                    at.push(l.acquire(chat).await);
                }
                (chat, at)
            });
        }
        let mut all = Vec::new();
        let mut per_chat = BTreeMap::new();
        while let Some(r) = tasks.join_next().await {
            let (chat, at) = r.unwrap();
            all.extend(at.iter().copied());
            per_chat.insert(chat, at);
        }
        all.sort();
        assert_eq!(all.len(), 1230);
        // The bot: consecutive grants 1/30 s apart (less the timer's catch-up), and 31 grants
        // never within a second (less the catch-up: the headroom covers it in production).
        let period = Duration::from_secs(1) / 30;
        for w in all.windows(2) {
            assert!(
                w[1] - w[0] >= period - CATCH_UP,
                "bot grants {:?} apart",
                w[1] - w[0]
            );
        }
        for i in 30..all.len() {
            let span = all[i] - all[i - 30];
            assert!(
                span >= Duration::from_secs(1) - CATCH_UP,
                "31 grants within {span:?}"
            );
        }
        // Saturated while the many chats have work: the first 1,000 grants take 1,000/30 s.
        let elapsed_1000 = all[999] - start;
        assert!(
            (33_300..=33_400).contains(&ms(elapsed_1000)),
            "1000 grants in {elapsed_1000:?}, expected 999/30 s"
        );
        // Each chat: private at most 1/s, groups at most 20/min.
        for (chat, at) in &per_chat {
            let min = if *chat < 0 {
                Duration::from_secs(3)
            } else {
                Duration::from_secs(1)
            };
            for w in at.windows(2) {
                assert!(
                    w[1] - w[0] >= min,
                    "chat {chat}: grants {:?} apart",
                    w[1] - w[0]
                );
            }
        }
        // The 200-message chat shares the bot's queue fairly while 100 other chats have work,
        // then runs at exactly its own budget: its last 100 grants take 99 s.
        let big = &per_chat[&1000];
        let tail = big[199] - big[100];
        assert!((99_000..=99_010).contains(&ms(tail)), "{tail:?}");
    }

    #[test]
    fn headroom_lengthens_every_period() {
        let r = Rates::default();
        assert_eq!(r.headroom, 0.015);
        assert_eq!(r.bot_period().as_micros(), 33_833);
        assert_eq!(r.chat_period(5).as_millis(), 1015);
        assert_eq!(r.chat_period(-5).as_millis(), 3045);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_stops_every_grant_until_it_ends() {
        let limits = Limits::new(exact());
        let t0 = limits.acquire(1).await;
        limits.pause_bot(Duration::from_secs(3));
        let t1 = limits.acquire(2).await;
        assert!(
            t1 - t0 >= Duration::from_secs(3),
            "granted {:?} after a 3 s pause",
            t1 - t0
        );
        // A shorter pause never shortens a longer one.
        limits.pause_bot(Duration::from_secs(5));
        limits.pause_bot(Duration::from_secs(1));
        let t2 = limits.acquire(3).await;
        assert!(t2 - t1 >= Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_chat_does_not_hold_up_others() {
        let limits = Arc::new(Limits::new(exact()));
        let t0 = limits.acquire(-5).await;
        // The group's next slot is 3 s away; meanwhile another chat is served at once.
        let l = limits.clone();
        let group = tokio::spawn(async move { l.acquire(-5).await });
        tokio::task::yield_now().await;
        let other = limits.acquire(7).await;
        assert!(other - t0 < Duration::from_millis(100), "{:?}", other - t0);
        let g = group.await.unwrap();
        assert_eq!((g - t0).as_millis(), 3000);
        limits.forget_idle();
        assert_eq!(
            limits.tracked_chats(),
            1,
            "chat 7's slot has passed; the group's has not"
        );
        tokio::time::advance(Duration::from_secs(10)).await;
        limits.forget_idle();
        assert_eq!(limits.tracked_chats(), 0);
    }
}
