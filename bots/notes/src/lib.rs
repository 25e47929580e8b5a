//! The notes bot as a pure state machine.
//!
//! **Architecture Invariant:** nothing in this crate does I/O. The worker loads the dialogue
//! state (and, for `/history`, the notes), calls [`step`], and applies the returned
//! [`Effect`]s in one database transaction. That makes the bot testable without a database,
//! replayable, and its behaviour visible in one file.
//!
//! The flow is that of the original tutorial's notes bot:
//!
//! | state         | input            | effects                                   | next state    |
//! |---------------|------------------|-------------------------------------------|---------------|
//! | any           | `/start`         | upsert the user, welcome                  | `ReceiveNote` |
//! | any           | `/help`          | the command list                          | unchanged     |
//! | any           | `/history`       | the last 5 notes, newest first, with time | unchanged     |
//! | `ReceiveNote` | text             | save the note verbatim, confirm           | `ReceiveNote` |
//! | `ReceiveNote` | non-text message | explain that only text is saved           | `ReceiveNote` |
//! | `Start`       | text / non-text  | fallback pointing at `/start` and `/help` | `Start`       |
//! | any           | unknown command  | fallback pointing at `/help`              | unchanged     |
//! | any           | bot (un)blocked  | record it (no reply)                      | unchanged     |
//!
//! Before all of that, flood control ([`flood`]): a sender over their budget gets one
//! "slow down" reply for the first update over it and nothing for the rest of the window
//! (state unchanged, nothing saved); blocking and unblocking are never throttled.
#![deny(missing_docs)]

pub mod flood;
mod input;
mod texts;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use flood::Pace;
pub use input::{classify_json, Incoming, Input, UnreadableUpdate, UserInfo};

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

/// What the shell must read before calling [`step`] for this input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Read {
    /// The last [`HISTORY_LEN`] notes of the sender in this chat, newest first.
    History,
}

/// Data the shell read for the step (see [`reads`]).
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The sender's latest notes, newest first (only loaded for `/history`).
    pub history: Vec<Note>,
    /// Where this update falls against its sender's flood budget ([`flood::pace`]).
    pub pace: Pace,
}

/// A side effect the shell applies, in order, inside the update's transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
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
    /// Record that the user blocked or unblocked the bot (the sender skips blocked chats).
    SetBlocked {
        /// The private chat.
        chat_id: i64,
        /// Blocked now?
        blocked: bool,
    },
    /// Send a text message (written to the outbox).
    Reply {
        /// The chat to answer in.
        chat_id: i64,
        /// Plain text (no parse mode, so user text can never break the markup).
        text: String,
    },
}

/// The result of one step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The state after the update.
    pub state: DialogueState,
    /// What to do, in order.
    pub effects: Vec<Effect>,
}

/// What the shell must read before [`step`] can run on `incoming`.
pub fn reads(incoming: &Incoming) -> Option<Read> {
    match &incoming.input {
        Input::Command { name, .. } if name == "history" => Some(Read::History),
        _ => None,
    }
}

/// The bot: `(state, update, context) -> (new state, effects)`.
pub fn step(state: DialogueState, incoming: &Incoming, ctx: &Context) -> Transition {
    let chat_id = incoming.chat_id;
    let reply = |text: String| Effect::Reply { chat_id, text };
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
            effects: vec![Effect::SetBlocked {
                chat_id,
                blocked: *blocked,
            }],
        },
        (Input::Command { name, .. }, _) if name == "start" => {
            let mut effects = Vec::with_capacity(2);
            if let Some(user) = &incoming.from {
                effects.push(Effect::UpsertUser {
                    user: user.clone(),
                    chat_id,
                });
            }
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
            effects: vec![reply(texts::history(&ctx.history))],
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
                    Effect::SaveNote {
                        chat_id,
                        user_id: user.id,
                        text: text.clone(),
                        at: incoming.date,
                    },
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
