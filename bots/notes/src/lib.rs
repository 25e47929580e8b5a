//! The notes bot as a pure state machine.
//!
//! It is one implementation of Courier's [`courier_bot_api::Bot`] ([`NotesBot`], selected with
//! `COURIER_BOT=notes`, the default). **Architecture Invariant:** the core — [`classify_json`]
//! and [`step`] — does no I/O. The worker loads the dialogue state, asks [`NotesBot`] to read
//! the notes for `/history` (module `store`, the only SQL of this bot, on the update's
//! transaction), calls [`step`], and applies the returned [`Effect`]s in that one transaction.
//! That makes the bot testable without a database, replayable, and its behaviour visible in
//! one file.
//!
//! The flow is that of the original tutorial's notes bot:
//!
//! | state         | input            | effects                                   | next state    |
//! |---------------|------------------|-------------------------------------------|---------------|
//! | any           | `/start`         | upsert the user, subscribe, welcome       | `ReceiveNote` |
//! | any           | `/help`          | the command list                          | unchanged     |
//! | any           | `/history`       | the last 5 notes, newest first, with time (HTML: times in italics, notes escaped) | unchanged |
//! | `ReceiveNote` | text             | save the note verbatim, confirm           | `ReceiveNote` |
//! | `ReceiveNote` | non-text message | explain that only text is saved           | `ReceiveNote` |
//! | `Start`       | text / non-text  | fallback pointing at `/start` and `/help` | `Start`       |
//! | any           | unknown command  | fallback pointing at `/help`              | unchanged     |
//! | any           | bot (un)blocked  | record it for Courier and the user (no reply) | unchanged |
//!
//! Before all of that, flood control ([`flood`]): a sender over their budget gets one
//! "slow down" reply for the first update over it and nothing for the rest of the window
//! (state unchanged, nothing saved); blocking and unblocking are never throttled.
#![deny(missing_docs)]

mod bot;
pub mod flood;
mod input;
mod store;
mod texts;

use chrono::{DateTime, Utc};
use courier_bot_api::Outgoing;
use serde::{Deserialize, Serialize};

pub use bot::NotesBot;
pub use courier_bot_api::{Pace, UnreadableUpdate, UserInfo};
pub use input::{classify_json, Input};

/// One update as the notes bot reads it.
pub type Incoming = courier_bot_api::Incoming<Input>;
/// An effect of a step: the bot's own [`Write`]s, messages, and platform effects.
pub type Effect = courier_bot_api::Effect<Write>;
/// The result of one step.
pub type Transition = courier_bot_api::Transition<DialogueState, Write>;
/// What a step gets besides state and update: the flood pace and the [`Data`] read for it.
pub type Context = courier_bot_api::Context<Data>;

/// How many notes `/history` shows.
pub const HISTORY_LEN: usize = 5;

/// The dialogue state of one chat, stored as JSONB (`{"state":"ReceiveNote"}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(tag = "state")]
pub enum DialogueState {
    /// Not registered yet: the bot waits for `/start`.
    #[default]
    Start,
    /// Registered: every text message is a note.
    ReceiveNote,
}

/// A saved note, as `/history` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// The note, verbatim.
    pub text: String,
    /// When the user sent it (the message's date).
    pub at: DateTime<Utc>,
}

/// What the bot reads before a step (only for `/history`, see [`needs_history`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Data {
    /// The sender's latest notes in this chat, newest first.
    pub history: Vec<Note>,
}

/// A write to the notes bot's own tables (`users`, `messages`), applied in the update's
/// transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Insert or refresh the user's row.
    UpsertUser {
        /// The user.
        user: UserInfo,
        /// The chat they registered in.
        chat_id: i64,
    },
    /// Store a note verbatim.
    SaveNote {
        /// The chat.
        chat_id: i64,
        /// The author.
        user_id: i64,
        /// The text, exactly as sent.
        text: String,
        /// When it was sent.
        at: DateTime<Utc>,
    },
    /// The user of this private chat blocked (`true`) or unblocked the bot (`users.blocked_at`).
    SetUserBlocked {
        /// The private chat.
        chat_id: i64,
        /// Blocked now?
        blocked: bool,
    },
}

/// Whether the step needs the sender's notes ([`Data::history`]): `/history` from a user.
pub fn needs_history(incoming: &Incoming) -> bool {
    incoming.from.is_some()
        && matches!(&incoming.input, Input::Command { name, .. } if name == "history")
}

/// The bot: `(state, update, context) -> (new state, effects)`.
pub fn step(state: DialogueState, incoming: &Incoming, ctx: &Context) -> Transition {
    let chat_id = incoming.chat_id;
    let reply = |text: String| Effect::reply(chat_id, text);
    if !matches!(incoming.input, Input::BotBlocked(_)) {
        match ctx.pace {
            Pace::Within => {}
            Pace::SlowDown => {
                return Transition {
                    state,
                    effects: vec![reply(texts::SLOW_DOWN.to_owned())],
                }
            }
            Pace::Over => {
                return Transition {
                    state,
                    effects: Vec::new(),
                }
            }
        }
    }
    match (&incoming.input, state) {
        (Input::BotBlocked(blocked), state) => Transition {
            state,
            effects: vec![
                Effect::SetBlocked {
                    chat_id,
                    blocked: *blocked,
                },
                Effect::Write(Write::SetUserBlocked {
                    chat_id,
                    blocked: *blocked,
                }),
            ],
        },
        (Input::Command { name, .. }, _) if name == "start" => {
            let mut effects = Vec::with_capacity(3);
            if let Some(user) = &incoming.from {
                effects.push(Effect::Write(Write::UpsertUser {
                    user: user.clone(),
                    chat_id,
                }));
            }
            effects.push(Effect::Subscribe {
                chat_id,
                subscribed: true,
            });
            let first_name = incoming.from.as_ref().map(|u| u.first_name.as_str());
            effects.push(reply(texts::welcome(first_name)));
            Transition {
                state: DialogueState::ReceiveNote,
                effects,
            }
        }
        (Input::Command { name, .. }, state) if name == "help" => Transition {
            state,
            effects: vec![reply(texts::HELP.to_owned())],
        },
        (Input::Command { name, .. }, state) if name == "history" => Transition {
            state,
            effects: vec![Effect::Send(Outgoing::html(
                chat_id,
                texts::history(&ctx.data.history),
            ))],
        },
        (Input::Command { name, .. }, state) => Transition {
            state,
            effects: vec![reply(texts::unknown_command(name))],
        },
        (Input::Text(text), DialogueState::ReceiveNote) => {
            let Some(user) = &incoming.from else {
                // Anonymous senders (channel identities) have no user to own a note.
                return Transition {
                    state,
                    effects: vec![reply(texts::ANONYMOUS.to_owned())],
                };
            };
            Transition {
                state,
                effects: vec![
                    Effect::Write(Write::SaveNote {
                        chat_id,
                        user_id: user.id,
                        text: text.clone(),
                        at: incoming.date,
                    }),
                    reply(texts::SAVED.to_owned()),
                ],
            }
        }
        (Input::NonText { kind }, DialogueState::ReceiveNote) => Transition {
            state,
            effects: vec![reply(texts::only_text(kind))],
        },
        (Input::Text(_) | Input::NonText { .. }, DialogueState::Start) => Transition {
            state,
            effects: vec![reply(texts::NOT_STARTED.to_owned())],
        },
    }
}

#[cfg(test)]
mod tests;
