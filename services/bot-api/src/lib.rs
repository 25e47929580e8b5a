//! The contract between Courier and a bot.
//!
//! A bot is a pure state machine plus the SQL of its own tables. Courier (the worker) owns
//! everything around it: reading the update off the stream, deduplication, per-chat order,
//! flood counting, the one transaction per update, the dialogue state row, the outbox and
//! the sender. For each update the worker
//!
//! 1. asks [`Bot::classify`] what the update means to the bot (`None`: not for this bot,
//!    acknowledged and dropped; `Err`: unreadable, dead-lettered with the reason);
//! 2. inside the update's transaction, reads the chat's state (JSON of [`Bot::State`]) and,
//!    when [`Bot::needs_read`] says so, lets the bot read its own tables ([`Bot::read`]);
//! 3. calls [`Bot::step`] — pure: `(state, update, context) -> (new state, effects)`;
//! 4. hands the bot's own writes ([`Effect::Write`]) to [`Bot::write`] on the same
//!    transaction, applies the platform effects, writes every [`Effect::Send`] to the outbox
//!    and the new state, and commits.
//!
//! So a bot never sees a retry, a duplicate or another chat's update, and whatever it writes
//! commits together with its replies or not at all. `docs/BOTS.md` walks through writing one;
//! the notes bot (`bots/notes`) and the quiz bot (`bots/quiz`) are the two in the repository.
#![deny(missing_docs)]

pub mod lenient;
pub mod outgoing;
mod update;

use std::fmt::Debug;
use std::future::Future;

use serde::{de::DeserializeOwned, Serialize};

pub use outgoing::{
    escape_html, AnswerCallback, Button, ButtonAction, ChatAction, EditText, InlineKeyboard,
    MessageRef, Outgoing, ParseMode, SendText,
};
pub use update::{parse_command, Command, Incoming, UnreadableUpdate, UserInfo};

/// Where an update falls against its sender's flood budget (counted by the worker, in the
/// update's transaction, across chats and workers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pace {
    /// Within the budget: handle it as usual.
    #[default]
    Within,
    /// The first update over the budget in this window: the bot may answer once ("slow
    /// down"); it should not write anything.
    SlowDown,
    /// A later update over the budget in this window: the bot should do nothing — except
    /// answer a button press (an empty `AnswerCallback`), since a client shows a spinner until
    /// every press is answered.
    Over,
}

/// What the `count`-th update of a sender in the current window means against a budget of
/// `limit` updates per window (`count` starts at 1; a `limit` of 0 means no limit).
pub fn pace(count: u64, limit: u32) -> Pace {
    let limit = u64::from(limit);
    if limit == 0 || count <= limit {
        Pace::Within
    } else if count == limit + 1 {
        Pace::SlowDown
    } else {
        Pace::Over
    }
}

/// Telegram's shared identities, which stand for many people at once: `Telegram` (777000,
/// channel posts forwarded to a linked group), `Channel_Bot` (136817688, users writing as a
/// channel), `GroupAnonymousBot` (1087968824, anonymous group admins).
pub const SHARED_SENDERS: [i64; 3] = [777_000, 136_817_688, 1_087_968_824];

/// The default flood identity of an update: its sender, or its chat when it has no sender
/// of its own (no `from`, or one of [`SHARED_SENDERS`]).
pub fn sender_or_chat<I>(incoming: &Incoming<I>) -> i64 {
    match &incoming.from {
        Some(user) if !SHARED_SENDERS.contains(&user.id) => user.id,
        _ => incoming.chat_id,
    }
}

/// What the worker gives [`Bot::step`] besides the state and the update.
#[derive(Debug, Clone, Default)]
pub struct Context<D> {
    /// Where the update falls against its sender's flood budget.
    pub pace: Pace,
    /// What [`Bot::read`] returned (the default when the bot asked for nothing).
    pub data: D,
}

/// One thing a step asks for. The worker applies them in the update's transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect<W> {
    /// A write to the bot's own tables, applied by [`Bot::write`].
    Write(W),
    /// A Bot API call, written to the outbox and made by the sender in the chat's order,
    /// within Telegram's limits, at most once per outbox row (its ledger).
    Send(Outgoing),
    /// The user blocked (`true`) or unblocked the bot in this private chat: the sender skips
    /// a blocked chat's messages, and broadcasts leave it out.
    SetBlocked {
        /// The private chat.
        chat_id: i64,
        /// Blocked now?
        blocked: bool,
    },
    /// Adds the chat to the bot's broadcast audience (`true`) or removes it: what
    /// `courierctl broadcast` reaches.
    Subscribe {
        /// The chat.
        chat_id: i64,
        /// In the audience now?
        subscribed: bool,
    },
}

impl<W> Effect<W> {
    /// A plain-text `sendMessage` to `chat_id`.
    pub fn reply(chat_id: i64, text: impl Into<String>) -> Self {
        Effect::Send(Outgoing::text(chat_id, text))
    }
}

/// The result of one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition<S, W> {
    /// The chat's state after the update.
    pub state: S,
    /// What to do, in order (the bot's writes in this order among themselves, the sends in
    /// this order in the chat).
    pub effects: Vec<Effect<W>>,
}

/// One of the bot's own writes as [`Bot::write`] receives it: with the update that caused it.
#[derive(Debug, Clone, Copy)]
pub struct Stored<'a, W> {
    /// The bot's numeric id (from its token): every table a bot keeps is keyed by it, so one
    /// database can hold several bots.
    pub bot_id: i64,
    /// The update whose step asked for it.
    pub update_id: i64,
    /// With `update_id`, the update's identity: a fingerprint of its bytes (as stored:
    /// the same 64 bits in an `i64`). Telegram may reuse an `update_id` for another update after
    /// a week without updates, so a table that keys rows by update keys them by both.
    pub update_fingerprint: i64,
    /// The write.
    pub write: &'a W,
}

/// The bot a worker runs. Implement it in a crate of your own and add one line to the
/// worker's registry (`services/worker/src/bots.rs`); `docs/BOTS.md` walks through it.
///
/// **Contract.** [`Bot::classify`] and [`Bot::step`] are pure and deterministic: no clock, no
/// randomness, no I/O (take the time from [`Incoming::date`]), so a step can be replayed and
/// tested without a database. [`Bot::read`] and [`Bot::write`] touch only the bot's own tables
/// (created by [`Bot::migrations`]), through the connection they are given — the update's
/// transaction — and never commit or roll back.
pub trait Bot: Send + Sync + 'static {
    /// The per-chat dialogue state, stored by the worker as JSON. `Default` is a chat the bot
    /// has not seen (and a chat reset by `courierctl chat reset`).
    type State: Serialize + DeserializeOwned + Default + Clone + Debug + Send + Sync + 'static;
    /// What the bot reads from an update ([`Incoming::input`]).
    type Input: Clone + Debug + Send + Sync + 'static;
    /// What [`Bot::read`] loads for a step (`()` for a bot that reads nothing).
    type Data: Default + Clone + Debug + Send + Sync + 'static;
    /// A write to the bot's own tables.
    type Write: Clone + Debug + Send + Sync + 'static;

    /// The bot's name, as `COURIER_BOT` selects it and the logs show it.
    fn name(&self) -> &'static str;

    /// The migrations that create the bot's own tables (`sqlx::migrate!("./migrations")` of
    /// its crate), run by the worker after Courier's own. Versions must not collide with
    /// Courier's (use the date and time of writing, as they do). `None`: no tables.
    fn migrations(&self) -> Option<&'static sqlx::migrate::Migrator> {
        None
    }

    /// Reads an update's JSON, exactly as Telegram sent it. `Ok(None)`: not for this bot
    /// (acknowledged, nothing written). `Err`: a kind the bot handles that lacks what the bot
    /// needs — parked in the dead-letter stream with the reason, never lost. Read leniently:
    /// only the fields the bot uses, so fields Telegram adds later cannot break it.
    fn classify(&self, update: &[u8]) -> Result<Option<Incoming<Self::Input>>, UnreadableUpdate>;

    /// Whose flood budget the update counts against (`None`: never throttled, e.g. the bot
    /// being blocked). Default: [`sender_or_chat`].
    fn counted_as(&self, incoming: &Incoming<Self::Input>) -> Option<i64> {
        Some(sender_or_chat(incoming))
    }

    /// Whether [`Bot::read`] must run before [`Bot::step`] for this update.
    fn needs_read(&self, _incoming: &Incoming<Self::Input>) -> bool {
        false
    }

    /// Reads what the step needs from the bot's own tables, in the update's transaction
    /// (the chat's row is locked: no other update of the chat runs meanwhile). Called only
    /// when [`Bot::needs_read`] said so and the update is within its flood budget.
    fn read(
        &self,
        _conn: &mut sqlx::PgConnection,
        _bot_id: i64,
        _incoming: &Incoming<Self::Input>,
    ) -> impl Future<Output = Result<Self::Data, sqlx::Error>> + Send {
        async { Ok(Self::Data::default()) }
    }

    /// The bot: `(state, update, context) -> (new state, effects)`. Pure.
    fn step(
        &self,
        state: &Self::State,
        incoming: &Incoming<Self::Input>,
        ctx: &Context<Self::Data>,
    ) -> Transition<Self::State, Self::Write>;

    /// Applies the bot's own writes, in order, on the update's transaction. The worker may
    /// hand over the writes of many updates of different chats at once (group commit): one
    /// multi-row statement per kind of write keeps that to a round trip or two.
    fn write(
        &self,
        conn: &mut sqlx::PgConnection,
        writes: &[Stored<'_, Self::Write>],
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_slow_down_then_silence_until_the_window_ends() {
        let paces: Vec<Pace> = (1..=23).map(|n| pace(n, 20)).collect();
        assert!(paces[..20].iter().all(|p| *p == Pace::Within));
        assert_eq!(paces[20], Pace::SlowDown);
        assert_eq!(&paces[21..], &[Pace::Over, Pace::Over]);
        assert_eq!(pace(u64::MAX, 20), Pace::Over);
        assert_eq!(pace(1_000_000, 0), Pace::Within, "0 is no limit");
    }

    #[test]
    fn updates_count_against_the_sender_or_the_chat() {
        let mut m = Incoming {
            chat_id: -100,
            from: Some(UserInfo {
                id: 7,
                first_name: "Ada".into(),
                last_name: None,
                username: None,
            }),
            date: chrono::Utc::now(),
            input: (),
        };
        assert_eq!(sender_or_chat(&m), 7);
        m.from.as_mut().unwrap().id = 1_087_968_824;
        assert_eq!(
            sender_or_chat(&m),
            -100,
            "anonymous admins count as their chat"
        );
        m.from = None;
        assert_eq!(sender_or_chat(&m), -100);
    }
}
