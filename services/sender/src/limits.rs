//! Telegram's rate limits, kept with governor's GCRA limiters.
//!
//! Three budgets: one for the whole bot (default 30 calls/s), one per private chat (default
//! 1/s, positive chat ids) and one per group or supergroup (default 20/min, negative chat ids).
//! The chats' budgets have a burst of one, the bot's a burst of [`BOT_BURST`] (its arrival
//! window keeps the budget): a cell is one call, and a call is made only at the instant
//! both the bot's and its chat's limiter granted a cell, so the budget holds measured from any
//! instant, not only on average.
//!
//! A call that is not a message to a chat (`answerCallbackQuery`, `sendChatAction`) takes the
//! bot's budget only ([`Limits::acquire_bot`]): it neither waits for nor moves its chat's slot.
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

use std::collections::{HashMap, VecDeque};
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
use tokio::sync::watch;
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
/// which the arrival window ([`Window`]) makes safe whatever the lateness.
pub const CATCH_UP: Duration = Duration::from_millis(5);

/// The bot's GCRA lets this many calls go back to back. With a burst of one, every late call
/// (a slow answer holding the arrival window) delays all the calls after it for good, and the
/// bot loses up to the network's worst delay per second; a small burst lets the calls after
/// it catch up. The arrival window still keeps the budget; the burst only allows a few calls
/// in quick succession (measured with 50 ms of jitter: 94.6% of the budget with a burst of
/// one; see docs/BENCHMARKS.md for the burst of three).
pub const BOT_BURST: NonZeroU32 = NonZeroU32::new(3).expect("non-zero");

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
    /// Fraction by which every period and the arrival window are lengthened (0.01: each
    /// budget used at 99% at most), for clock granularity and Telegram's unknown way of
    /// timing a call's arrival. Jitter itself is handled by the arrival window.
    pub headroom: f64,
}

impl Default for Rates {
    fn default() -> Self {
        Self {
            bot_per_sec: 30.0,
            private_chat_per_sec: 1.0,
            group_per_min: 20.0,
            headroom: 0.01,
        }
    }
}

impl Rates {
    /// The time between two calls of the bot: exact, without the headroom. The GCRA only
    /// spreads the calls evenly; the arrival window ([`Window`]), lengthened by the headroom,
    /// is what keeps the budget, and a second gate just as long would lose the network's
    /// delay twice (measured: 94.6% of the budget with 50 ms of jitter, against 96–97%).
    pub fn bot_period(&self) -> Duration {
        Duration::from_secs_f64(1.0 / self.bot_per_sec)
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
    /// When each chat's limiter admits its next call (GCRA's theoretical arrival time, or a
    /// period after the answer to its last call, whichever is later).
    ready: Mutex<HashMap<i64, Instant>>,
    /// The bot's last calls, for the arrival window.
    window: Mutex<Window>,
    /// Bumped on every answer: wakes the head of the queue waiting for one.
    answers: watch::Sender<u64>,
    /// The grants of the last second ([`Limits::budget_used`]).
    recent: Mutex<Recent>,
}

/// The instants of the bot's grants within the last [`Recent::SPAN`].
#[derive(Debug, Default)]
struct Recent {
    grants: VecDeque<Instant>,
}

impl Recent {
    /// How far back grants are counted.
    const SPAN: Duration = Duration::from_secs(1);

    fn push(&mut self, at: Instant) {
        self.grants.push_back(at);
        self.forget_before(at);
    }

    /// Grants within the span before `now`.
    fn count(&mut self, now: Instant) -> usize {
        self.forget_before(now);
        self.grants.len()
    }

    fn forget_before(&mut self, now: Instant) {
        while self
            .grants
            .front()
            .is_some_and(|at| now.saturating_duration_since(*at) >= Self::SPAN)
        {
            self.grants.pop_front();
        }
    }
}

/// How long a call waited for each limit before its grant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Waited {
    /// For its chat's own slot (a private chat's or a group's budget).
    pub chat: Duration,
    /// For the bot's budget: the queue, a 429's pause, the arrival window, the pacing.
    pub bot: Duration,
}

/// A call granted by [`Limits::acquire`]; dropping it records the call as answered.
#[must_use = "drop the grant when the call's answer has arrived"]
pub struct Grant<'a> {
    limits: &'a Limits,
    id: u64,
    /// The chat whose budget it took (`None`: the bot's only).
    chat: Option<i64>,
    at: Instant,
    waited: Waited,
}

impl Grant<'_> {
    /// The instant of the grant.
    pub fn at(&self) -> Instant {
        self.at
    }

    /// How long the call waited for each limit.
    pub fn waited(&self) -> Waited {
        self.waited
    }

    /// The chat whose budget it took; `None` for a grant of the bot's budget only
    /// ([`Limits::acquire_bot`]).
    pub fn chat(&self) -> Option<i64> {
        self.chat
    }
}

impl std::fmt::Debug for Grant<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grant")
            .field("chat", &self.chat)
            .field("at", &self.at)
            .finish()
    }
}

impl Drop for Grant<'_> {
    fn drop(&mut self) {
        self.limits.answered(self.id, self.chat, Instant::now());
    }
}

/// The bot's budget as Telegram counts it: at most `n` calls *arriving* in any `span`.
///
/// The sender cannot see arrival times, but it can bound them: a call arrives after it was
/// dispatched and before its answer came back. So a call may be dispatched only when the call
/// `n` places before it was *answered* at least `span` ago; then any two calls `n` apart arrive
/// more than `span` apart, however the network delays them. (GCRA pacing alone counts dispatch
/// times, and jitter between dispatch and arrival bunches calls into Telegram's window.)
#[derive(Debug)]
struct Window {
    n: usize,
    span: Duration,
    /// The last `n` calls, oldest first: id and, once answered, when.
    calls: VecDeque<(u64, Option<Instant>)>,
    next_id: u64,
}

/// What the arrival window allows now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WindowCheck {
    /// A call may go.
    Open,
    /// Not before this instant.
    At(Instant),
    /// Not before the call `n` places back is answered.
    Unanswered,
}

impl Window {
    fn new(rates: &Rates) -> Self {
        let n = rates.bot_per_sec.floor().max(1.0) as usize;
        let span = Duration::from_secs_f64(n as f64 / rates.bot_per_sec * (1.0 + rates.headroom));
        Self {
            n,
            span,
            calls: VecDeque::with_capacity(n + 1),
            next_id: 0,
        }
    }

    fn check(&self, now: Instant) -> WindowCheck {
        if self.calls.len() < self.n {
            return WindowCheck::Open;
        }
        match self.calls[self.calls.len() - self.n].1 {
            None => WindowCheck::Unanswered,
            Some(answered) if now >= answered + self.span => WindowCheck::Open,
            Some(answered) => WindowCheck::At(answered + self.span),
        }
    }

    fn push(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.calls.push_back((id, None));
        while self.calls.len() > self.n {
            self.calls.pop_front();
        }
        id
    }

    fn answer(&mut self, id: u64, at: Instant) {
        let Some(&(first, _)) = self.calls.front() else {
            return;
        };
        if let Some(call) = id
            .checked_sub(first)
            .and_then(|i| self.calls.get_mut(i as usize))
        {
            call.1.get_or_insert(at);
        }
    }
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
            bot: RateLimiter::direct_with_clock(
                quota(rates.bot_period()).allow_burst(BOT_BURST),
                bot_clock.clone(),
            ),
            bot_clock,
            private: RateLimiter::new(quota(rates.chat_period(1)), Default::default(), TokioClock),
            group: RateLimiter::new(quota(rates.chat_period(-1)), Default::default(), TokioClock),
            turn: tokio::sync::Mutex::new(()),
            paused_until: Mutex::new(None),
            ready: Mutex::new(HashMap::new()),
            window: Mutex::new(Window::new(&rates)),
            answers: watch::channel(0).0,
            recent: Mutex::new(Recent::default()),
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

    /// Waits until a call to `chat` is within every budget and takes a cell of each. The call
    /// must be made now; drop the returned [`Grant`] when its answer has arrived (or the call
    /// was given up): the arrival window counts the call until then.
    pub async fn acquire(&self, chat: i64) -> Grant<'_> {
        self.acquire_for(Some(chat)).await
    }

    /// Waits until a call is within the bot's budget only (the arrival window, the pacing, a
    /// 429's pause) and takes a cell of it: for the calls that are not messages to a chat
    /// (`answerCallbackQuery`, `sendChatAction`; `docs/SENDER.md`, *Budgets by method*). The
    /// chat's own slot is neither waited for nor taken. Drop the [`Grant`] as for
    /// [`Limits::acquire`].
    pub async fn acquire_bot(&self) -> Grant<'_> {
        self.acquire_for(None).await
    }

    async fn acquire_for(&self, chat: Option<i64>) -> Grant<'_> {
        let mut waited = Waited::default();
        loop {
            // 1. The chat's own slot, waited for outside the bot's queue.
            if let Some(at) = chat.and_then(|c| self.ready_at(c)) {
                let start = Instant::now();
                tokio::time::sleep_until(at).await;
                waited.chat += start.elapsed();
            }
            // 2. The bot's budget, in FIFO order, and no call while paused.
            let queued = Instant::now();
            let turn = self.turn.lock().await;
            loop {
                if let Some(until) = self.paused() {
                    tokio::time::sleep_until(until).await;
                    continue;
                }
                // The arrival window: the call `n` places back must have been answered at
                // least a window ago (subscribe before looking, so no answer is missed).
                let mut answered = self.answers.subscribe();
                let window = self
                    .window
                    .lock()
                    .expect("window lock")
                    .check(Instant::now());
                match window {
                    WindowCheck::Open => {}
                    WindowCheck::At(at) => {
                        tokio::time::sleep_until(at).await;
                        continue;
                    }
                    WindowCheck::Unanswered => {
                        let _ = answered.changed().await;
                        continue;
                    }
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
            waited.bot += now - queued;
            let chat_cell = match chat {
                None => Ok(()),
                Some(c) => self.chat_limiter(c).check_key(&c),
            };
            match chat_cell {
                Ok(()) => {
                    let id = self.window.lock().expect("window lock").push();
                    self.recent.lock().expect("recent lock").push(now);
                    drop(turn);
                    if let Some(c) = chat {
                        self.ready
                            .lock()
                            .expect("ready lock")
                            .insert(c, now + self.rates.chat_period(c));
                    }
                    return Grant {
                        limits: self,
                        id,
                        chat,
                        at: now,
                        waited,
                    };
                }
                Err(not_until) => {
                    // Only when the hint was stale (never in steady state): a bot cell is lost.
                    drop(turn);
                    if let Some(c) = chat {
                        self.ready
                            .lock()
                            .expect("ready lock")
                            .insert(c, not_until.earliest_possible().0);
                    }
                }
            }
        }
    }

    /// The answer to the call of `grant` arrived (or it was given up) at `at`.
    fn answered(&self, id: u64, chat: Option<i64>, at: Instant) {
        self.window.lock().expect("window lock").answer(id, at);
        // The chat's next call goes out a whole period after this one's answer: the chat's
        // budget then holds at arrival, whatever the network's delay.
        if let Some(chat) = chat {
            self.not_before(chat, at + self.rates.chat_period(chat));
        }
        self.answers.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Tells the limits that `chat` was last sent to `age` ago (by an earlier holder of the
    /// lease, read from the sent ledger): its next call waits a whole period from then.
    pub fn sent_before(&self, chat: i64, age: Duration) {
        let Some(at) = Instant::now().checked_sub(age) else {
            return;
        };
        self.not_before(chat, at + self.rates.chat_period(chat));
    }

    /// Moves `chat`'s next slot to `at` unless it is later already.
    fn not_before(&self, chat: i64, at: Instant) {
        let mut ready = self.ready.lock().expect("ready lock");
        let slot = ready.entry(chat).or_insert(at);
        *slot = (*slot).max(at);
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

    /// The share of the bot's per-second budget granted over the last second, 0 to 1.
    pub fn budget_used(&self) -> f64 {
        let granted = self
            .recent
            .lock()
            .expect("recent lock")
            .count(Instant::now());
        (granted as f64 / self.rates.bot_per_sec).min(1.0)
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

    #[tokio::test(start_paused = true)]
    async fn budget_used_is_the_share_of_the_last_seconds_grants() {
        let limits = Limits::new(exact());
        assert_eq!(limits.budget_used(), 0.0);
        // Six chats at once: the burst of three, then one every 1/30 s.
        for chat in 1..=6 {
            drop(limits.acquire(chat).await);
        }
        assert!((limits.budget_used() - 6.0 / 30.0).abs() < 1e-9);
        // Half a second later they all still count; a second after the last, none does.
        tokio::time::advance(Duration::from_millis(500)).await;
        assert!((limits.budget_used() - 6.0 / 30.0).abs() < 1e-9);
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(limits.budget_used(), 0.0);
        // Capped at 1 when more was granted than the rate (a lowered rate's leftovers).
        let mut recent = Recent::default();
        let now = Instant::now();
        for _ in 0..40 {
            recent.push(now);
        }
        *limits.recent.lock().unwrap() = recent;
        assert_eq!(limits.budget_used(), 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_grant_says_how_long_it_waited_for_its_chat_and_for_the_bot() {
        let limits = Limits::new(exact());
        let first = limits.acquire(7).await;
        assert_eq!(first.waited(), Waited::default());
        drop(first);
        // The chat's next slot is a second after the answer; the bot has budget to spare.
        let second = limits.acquire(7).await;
        assert_eq!(second.waited().chat, Duration::from_secs(1));
        assert_eq!(second.waited().bot, Duration::ZERO);
        drop(second);
        // A 429 pauses the bot: a fresh chat waits for the bot only.
        limits.pause_bot(Duration::from_secs(3));
        let paused = limits.acquire(8).await;
        assert_eq!(paused.waited().chat, Duration::ZERO);
        assert_eq!(paused.waited().bot, Duration::from_secs(3));
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
                    at.push(l.acquire(chat).await.at());
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
        let burst = BOT_BURST.get() as usize;
        for w in all.windows(burst + 1) {
            assert!(
                w[burst] - w[0] >= period - CATCH_UP,
                "{} bot grants within {:?}",
                burst + 1,
                w[burst] - w[0]
            );
        }
        for i in 30..all.len() {
            let span = all[i] - all[i - 30];
            assert!(
                span >= Duration::from_secs(1) - CATCH_UP,
                "31 grants within {span:?}"
            );
        }
        // Saturated while the many chats have work: after the first burst, the first 1,000
        // grants take (1,000 - burst)/30 s.
        let elapsed_1000 = all[999] - start;
        assert!(
            (33_200..=33_300).contains(&ms(elapsed_1000)),
            "1000 grants in {elapsed_1000:?}, expected 997/30 s"
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
        assert_eq!(r.headroom, 0.01);
        assert_eq!(r.bot_period().as_micros(), 33_333);
        assert_eq!(r.chat_period(5).as_millis(), 1010);
        assert_eq!(r.chat_period(-5).as_millis(), 3030);
        let w = Window::new(&r);
        assert_eq!((w.n, w.span.as_millis()), (30, 1010));
    }

    #[tokio::test(start_paused = true)]
    async fn a_pause_stops_every_grant_until_it_ends() {
        let limits = Limits::new(exact());
        let t0 = limits.acquire(1).await.at();
        limits.pause_bot(Duration::from_secs(3));
        let t1 = limits.acquire(2).await.at();
        assert!(
            t1 - t0 >= Duration::from_secs(3),
            "granted {:?} after a 3 s pause",
            t1 - t0
        );
        // A shorter pause never shortens a longer one.
        limits.pause_bot(Duration::from_secs(5));
        limits.pause_bot(Duration::from_secs(1));
        let t2 = limits.acquire(3).await.at();
        assert!(t2 - t1 >= Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_chat_does_not_hold_up_others() {
        let limits = Arc::new(Limits::new(exact()));
        let t0 = limits.acquire(-5).await.at();
        // The group's next slot is 3 s away; meanwhile another chat is served at once.
        let l = limits.clone();
        let group = tokio::spawn(async move { l.acquire(-5).await.at() });
        tokio::task::yield_now().await;
        let other = limits.acquire(7).await.at();
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

    /// Calls whose arrival at Telegram lags their dispatch by a random 0–50 ms (and whose
    /// answer comes 1 ms after arrival): dispatch-time pacing alone lets 31 arrive within a
    /// second; with the arrival window, never. Deterministic: a seeded draw, tokio's paused
    /// clock.
    #[tokio::test(start_paused = true)]
    async fn jittered_arrivals_never_exceed_the_bots_budget() {
        use rand::{rngs::StdRng, Rng, SeedableRng};
        let limits = Arc::new(Limits::new(Rates {
            headroom: 0.0,
            ..Rates::default()
        }));
        let arrivals = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = tokio::task::JoinSet::new();
        for chat in 1..=60_i64 {
            let (l, arrivals) = (limits.clone(), arrivals.clone());
            tasks.spawn(async move {
                let mut rng = StdRng::seed_from_u64(chat as u64);
                for _ in 0..10 {
                    let grant = l.acquire(chat).await;
                    let jitter = Duration::from_millis(rng.random_range(0..=50));
                    tokio::time::sleep(jitter).await;
                    arrivals.lock().unwrap().push(Instant::now());
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    drop(grant);
                }
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        let mut at = arrivals.lock().unwrap().clone();
        at.sort();
        assert_eq!(at.len(), 600);
        for i in 30..at.len() {
            let span = at[i] - at[i - 30];
            assert!(
                span >= Duration::from_secs(1),
                "31 arrivals within {span:?} (arrival {i})"
            );
        }
    }

    /// A bot-only grant neither waits for its chat's slot nor moves it, but counts in the
    /// bot's budget and its arrival window like any call.
    #[tokio::test(start_paused = true)]
    async fn a_bot_only_grant_skips_the_chats_slot_but_not_the_bots_budget() {
        let limits = Limits::new(exact());
        let sent = limits.acquire(7).await;
        let t0 = sent.at();
        drop(sent);
        // The chat's next message is a second away; a bot-only call goes at once.
        let answer = limits.acquire_bot().await;
        assert_eq!(answer.chat(), None);
        assert_eq!(answer.waited(), Waited::default());
        assert!(answer.at() - t0 < Duration::from_millis(100));
        drop(answer);
        // ... and did not push the chat's slot further.
        let next = limits.acquire(7).await.at();
        assert_eq!(next - t0, Duration::from_secs(1));
        // The bot's budget counts bot-only grants: 30 calls in any second at most.
        let start = Instant::now();
        let mut at = Vec::new();
        for _ in 0..61 {
            at.push(limits.acquire_bot().await.at());
        }
        for i in 30..at.len() {
            assert!(
                at[i] - at[i - 30] >= Duration::from_secs(1) - CATCH_UP,
                "31 bot-only grants within {:?}",
                at[i] - at[i - 30]
            );
        }
        assert!(at[60] - start >= Duration::from_secs(1));
        assert_eq!(limits.tracked_chats(), 1, "only chat 7 has a slot");
    }

    /// A call not yet answered holds the call `n` places after it; its answer releases it.
    #[tokio::test(start_paused = true)]
    async fn an_unanswered_call_holds_the_window() {
        let limits = Arc::new(Limits::new(Rates {
            bot_per_sec: 2.0,
            headroom: 0.0,
            ..Rates::default()
        }));
        let first = limits.acquire(1).await;
        let t0 = first.at();
        let second = limits.acquire(2).await.at();
        assert!(second - t0 <= Duration::from_millis(500));
        let l = limits.clone();
        let third = tokio::spawn(async move { l.acquire(3).await.at() });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!third.is_finished(), "the first call is still unanswered");
        drop(first);
        let answered = Instant::now();
        let third = third.await.unwrap();
        assert_eq!(third - answered, Duration::from_secs(1));
    }

    /// The chat's next call waits a whole period after the previous call's answer, and after
    /// a send an earlier lease holder recorded.
    #[tokio::test(start_paused = true)]
    async fn a_chats_period_counts_from_the_answer_and_from_earlier_holders() {
        let limits = Limits::new(Rates {
            headroom: 0.0,
            ..Rates::default()
        });
        let g = limits.acquire(-9).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        let answered = Instant::now();
        drop(g);
        let next = limits.acquire(-9).await.at();
        assert_eq!(next - answered, Duration::from_secs(3));

        limits.sent_before(-10, Duration::from_secs(1));
        let t = Instant::now();
        let first = limits.acquire(-10).await.at();
        assert_eq!(first - t, Duration::from_secs(2));
    }
}
