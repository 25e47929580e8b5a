//! The quiz bot: five multiple-choice questions with inline buttons, each answer editing the
//! question message into the next question, the final score kept in the bot's own table.
//!
//! It is Courier's second bot and the example of `docs/BOTS.md`: [`QuizBot`] implements
//! [`courier_bot_api::Bot`] (`COURIER_BOT=quiz`) over a pure core — [`classify_json`] and
//! [`step`] — and the SQL of its table (`quiz_results`, created by its own migrations).
//!
//! **Architecture Invariant:** nothing but the `store` module does I/O, and nothing at all
//! reads a clock or a random source: the question order is a shuffle seeded with the chat,
//! the round and the `/quiz` message's date ([`questions::pick`]), so a step can be replayed
//! and tested without a database.
//!
//! | state    | input                               | effects                                                   | next state |
//! |----------|-------------------------------------|-----------------------------------------------------------|------------|
//! | any      | `/start`                            | welcome (HTML, name escaped), subscribe the chat          | unchanged  |
//! | any      | `/help`                             | the command list                                          | unchanged  |
//! | `Idle`   | `/quiz`                             | typing…, question 1 with its buttons (key `question`)     | `InQuiz`   |
//! | `InQuiz` | `/quiz`                             | delete the old question, then as above (a new round)      | `InQuiz`   |
//! | `InQuiz` | an answer to the current question   | answer the press, edit the message to the next question   | `InQuiz`   |
//! | `InQuiz` | … to the last question              | answer the press, edit to the final score, record it      | `Idle`     |
//! | any      | any other press (a stale button)    | answer the press saying why it does nothing               | unchanged  |
//! | `InQuiz` | `/stop`                             | delete the question message, confirm                      | `Idle`     |
//! | `Idle`   | `/stop`                             | say there is nothing to stop                              | `Idle`     |
//! | any      | `/score`                            | the user's last and best results (read from the table)    | unchanged  |
//! | any      | other command                       | fallback pointing at `/help`                              | unchanged  |
//! | any      | other message (private chats)       | fallback: `/quiz`, or "use the buttons" during a quiz     | unchanged  |
//! | any      | bot (un)blocked                     | record it (no reply)                                      | unchanged  |
//!
//! A press is an answer to the current question when its data names the running round, the
//! question being asked and one of its options, and it comes from the player who sent `/quiz`
//! (in a group, the other members' presses are answered with "someone else's quiz"). Every
//! press is answered (`answerCallbackQuery`) exactly once, whatever else happens: a client
//! shows a spinner until it is.
//!
//! Before all of that, flood control: the first update over the sender's budget gets one
//! "slow down" (as the press's answer, for a button), later ones nothing — except a button,
//! whose press is still answered, silently; state unchanged. Blocking and unblocking are
//! never throttled ([`Bot::counted_as`](courier_bot_api::Bot::counted_as) is `None`).
#![deny(missing_docs)]

mod bot;
mod input;
pub mod questions;
mod store;
mod texts;

use chrono::{DateTime, Utc};
use courier_bot_api::{
    AnswerCallback, Button, ChatAction, EditText, Effect, InlineKeyboard, MessageRef, Outgoing,
    Pace, ParseMode, SendText, SHARED_SENDERS,
};
use serde::{Deserialize, Serialize};

pub use bot::QuizBot;
pub use courier_bot_api::{Command, Incoming, UnreadableUpdate, UserInfo};
pub use input::{classify_json, Input};
use questions::{Question, BANK};

/// The [`SendText::key`] of the question message: `/stop` and a new `/quiz` delete the
/// latest message sent with it ([`MessageRef::Key`]).
pub const QUESTION_KEY: &str = "question";

/// The context a step gets: the flood pace and, for `/score`, the sender's results.
pub type Context = courier_bot_api::Context<Scores>;
/// What a step returns.
pub type Transition = courier_bot_api::Transition<QuizState, Write>;

/// The dialogue state of one chat, stored as JSON (`{"state":"Idle","rounds":3}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state")]
pub enum QuizState {
    /// No quiz running.
    Idle {
        /// The number of the chat's last round (0: none yet), so that buttons of earlier
        /// rounds are told apart from the next one's.
        #[serde(default)]
        rounds: u32,
    },
    /// A quiz is running.
    InQuiz(Quiz),
}

impl Default for QuizState {
    fn default() -> Self {
        QuizState::Idle { rounds: 0 }
    }
}

impl QuizState {
    /// The running quiz, if there is one the bot can continue (one whose questions are all
    /// still in [`BANK`]; anything else counts as no quiz).
    pub fn running(&self) -> Option<&Quiz> {
        match self {
            QuizState::InQuiz(quiz) if quiz.is_valid() => Some(quiz),
            _ => None,
        }
    }

    /// The number of the chat's latest round, running or not.
    pub fn rounds(&self) -> u32 {
        match self {
            QuizState::Idle { rounds } => *rounds,
            QuizState::InQuiz(quiz) => quiz.round,
        }
    }
}

/// A running quiz.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quiz {
    /// The chat's round number (1, 2, …), part of every button's data.
    pub round: u32,
    /// The round's questions, indices into [`BANK`], in the order asked.
    pub order: Vec<u8>,
    /// The position in `order` of the question being asked.
    pub question: u32,
    /// Right answers so far.
    pub score: u32,
    /// Who sent `/quiz`: only their presses answer; `None` (an anonymous sender): anyone's.
    pub player: Option<i64>,
}

impl Quiz {
    fn is_valid(&self) -> bool {
        (self.question as usize) < self.order.len()
            && self.score <= self.question
            && self.order.iter().all(|&i| usize::from(i) < BANK.len())
    }

    /// The question being asked (the quiz must be valid: see [`QuizState::running`]).
    fn current(&self) -> &'static Question {
        &BANK[usize::from(self.order[self.question as usize])]
    }

    fn total(&self) -> u32 {
        self.order.len() as u32
    }
}

/// One finished quiz, as `/score` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuizResult {
    /// Right answers.
    pub score: u32,
    /// Questions asked.
    pub total: u32,
    /// When it was recorded.
    pub finished_at: DateTime<Utc>,
}

/// What `/score` reads ([`QuizBot`]'s `Data`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scores {
    /// The sender's latest finished quiz.
    pub last: Option<QuizResult>,
    /// Their best (highest share of right answers; the latest of equals).
    pub best: Option<QuizResult>,
    /// How many quizzes they have finished.
    pub finished: u64,
}

/// A write to the bot's table ([`QuizBot`]'s `Write`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Write {
    /// Record a finished quiz (once per update: a redelivered update does not add a row).
    Finished {
        /// The chat it was played in.
        chat_id: i64,
        /// The player.
        user_id: i64,
        /// Right answers.
        score: u32,
        /// Questions asked.
        total: u32,
    },
}

/// Whether `/score` needs the sender's results read first ([`courier_bot_api::Bot::read`]).
pub fn needs_scores(incoming: &Incoming<Input>) -> bool {
    matches!(&incoming.input, Input::Command(c) if c.name == "score") && incoming.from.is_some()
}

/// A button's `callback_data`: `q:<round>:<question>:<option>` (at most 26 bytes; Telegram
/// allows 64).
pub fn button_data(round: u32, question: u32, option: usize) -> String {
    format!("q:{round}:{question}:{option}")
}

/// The round, question and option of a button's data, if it is one of the bot's.
fn parse_button(data: &str) -> Option<(u32, u32, usize)> {
    let mut parts = data.split(':');
    let (Some("q"), Some(round), Some(question), Some(option), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return None;
    };
    Some((
        round.parse().ok()?,
        question.parse().ok()?,
        option.parse().ok()?,
    ))
}

/// The bot: `(state, update, context) -> (new state, effects)`. Pure.
pub fn step(state: &QuizState, incoming: &Incoming<Input>, ctx: &Context) -> Transition {
    let chat_id = incoming.chat_id;
    let unchanged = |effects| Transition {
        state: state.clone(),
        effects,
    };
    let throttled = match (&incoming.input, ctx.pace) {
        (Input::BotBlocked(_), _) | (_, Pace::Within) => None,
        (Input::Button { query_id, .. }, Pace::SlowDown) => {
            Some(vec![answer(chat_id, query_id, Some(texts::SLOW_DOWN))])
        }
        (_, Pace::SlowDown) => Some(vec![Effect::reply(chat_id, texts::SLOW_DOWN)]),
        // A press is still answered (silently), or the client spins until it gives up.
        (Input::Button { query_id, .. }, Pace::Over) => Some(vec![answer(chat_id, query_id, None)]),
        (_, Pace::Over) => Some(Vec::new()),
    };
    if let Some(effects) = throttled {
        return unchanged(effects);
    }
    let reply = |text: &str| vec![Effect::reply(chat_id, text)];
    match &incoming.input {
        Input::BotBlocked(blocked) => unchanged(vec![Effect::SetBlocked {
            chat_id,
            blocked: *blocked,
        }]),
        Input::Command(c) => match c.name.as_str() {
            "start" => unchanged(vec![
                Effect::Send(Outgoing::html(
                    chat_id,
                    texts::welcome(incoming.from.as_ref()),
                )),
                Effect::Subscribe {
                    chat_id,
                    subscribed: true,
                },
            ]),
            "help" => unchanged(reply(texts::HELP)),
            "quiz" => start_quiz(state, incoming),
            "stop" => match state.running() {
                Some(quiz) => Transition {
                    state: QuizState::Idle { rounds: quiz.round },
                    effects: vec![
                        delete_question(chat_id),
                        Effect::reply(chat_id, texts::stopped(quiz.question, quiz.total())),
                    ],
                },
                None => unchanged(reply(texts::NOTHING_TO_STOP)),
            },
            "score" => match &incoming.from {
                Some(user) => unchanged(vec![Effect::Send(Outgoing::html(
                    chat_id,
                    texts::scores(user, &ctx.data),
                ))]),
                None => unchanged(reply(texts::ANONYMOUS_SCORE)),
            },
            name => unchanged(reply(&texts::unknown_command(name))),
        },
        Input::Other if state.running().is_some() => unchanged(reply(texts::USE_THE_BUTTONS)),
        Input::Other => unchanged(reply(texts::NOT_IN_QUIZ)),
        Input::Button {
            query_id,
            message_id,
            data,
        } => press(state, incoming, query_id, *message_id, data),
    }
}

/// The number of the next round after `rounds`. A chat without rounds (new, or reset by
/// `courierctl chat reset`, or whose state another bot wrote) starts at the `/quiz` message's
/// Unix time rather than at 1, so that the buttons of rounds before a reset — a question
/// message older than 48 hours cannot be deleted, and keeps them — never match a new round.
fn next_round(rounds: u32, date: DateTime<Utc>) -> u32 {
    if rounds == 0 {
        u32::try_from(date.timestamp()).unwrap_or(u32::MAX).max(1)
    } else {
        rounds.wrapping_add(1).max(1)
    }
}

/// `/quiz`: a new round (replacing a running one).
fn start_quiz(state: &QuizState, incoming: &Incoming<Input>) -> Transition {
    let chat_id = incoming.chat_id;
    let round = next_round(state.rounds(), incoming.date);
    let quiz = Quiz {
        round,
        order: questions::pick(chat_id, round, incoming.date.timestamp()),
        question: 0,
        score: 0,
        player: player(incoming.from.as_ref()),
    };
    let mut effects = Vec::with_capacity(3);
    if state.running().is_some() {
        // Its buttons would only be answered as stale now: take it away.
        effects.push(delete_question(chat_id));
    }
    effects.push(Effect::Send(Outgoing::ChatAction {
        chat_id,
        action: ChatAction::Typing,
    }));
    effects.push(Effect::Send(Outgoing::Send(SendText {
        chat_id,
        text: texts::question(&quiz, quiz.current(), None),
        parse_mode: Some(ParseMode::Html),
        keyboard: Some(keyboard(&quiz)),
        reply_to: None,
        key: Some(QUESTION_KEY.to_owned()),
    })));
    Transition {
        state: QuizState::InQuiz(quiz),
        effects,
    }
}

/// A button press: exactly one answer to it, and for the right button an edit of its
/// message (and at the end the result).
fn press(
    state: &QuizState,
    incoming: &Incoming<Input>,
    query_id: &str,
    message_id: i64,
    data: &str,
) -> Transition {
    let chat_id = incoming.chat_id;
    let respond = |text: Option<&str>| answer(chat_id, query_id, text);
    let stale = |text: &str| Transition {
        state: state.clone(),
        effects: vec![respond(Some(text))],
    };
    let Some((round, question, option)) = parse_button(data) else {
        return stale(texts::UNKNOWN_BUTTON);
    };
    let Some(quiz) = state.running() else {
        return stale(texts::NO_QUIZ);
    };
    if round != quiz.round {
        return stale(texts::OLD_ROUND);
    }
    if question != quiz.question {
        return stale(texts::ANSWERED);
    }
    let presser = incoming.from.as_ref().map(|u| u.id);
    if quiz.player.is_some() && presser != quiz.player {
        return stale(texts::NOT_YOUR_QUIZ);
    }
    let asked = quiz.current();
    if option >= asked.options.len() {
        return stale(texts::UNKNOWN_BUTTON);
    }
    let right = option == asked.answer;
    let next = Quiz {
        question: quiz.question + 1,
        score: quiz.score + u32::from(right),
        ..quiz.clone()
    };
    let edit = |text: String, keyboard: Option<InlineKeyboard>| {
        Effect::Send(Outgoing::Edit(EditText {
            chat_id,
            message: MessageRef::Id(message_id),
            text,
            parse_mode: Some(ParseMode::Html),
            keyboard,
        }))
    };
    let verdict = (asked, right);
    let toast = texts::verdict_toast(asked, right);
    if next.is_valid() {
        let text = texts::question(&next, next.current(), Some(verdict));
        return Transition {
            effects: vec![respond(Some(&toast)), edit(text, Some(keyboard(&next)))],
            state: QuizState::InQuiz(next),
        };
    }
    let mut effects = vec![
        respond(Some(&toast)),
        edit(texts::final_score(next.score, next.total(), verdict), None),
    ];
    if let Some(user_id) = quiz.player.or(presser) {
        effects.push(Effect::Write(Write::Finished {
            chat_id,
            user_id,
            score: next.score,
            total: next.total(),
        }));
    }
    Transition {
        state: QuizState::Idle { rounds: quiz.round },
        effects,
    }
}

/// Whose quiz it is: the sender of `/quiz`, unless that is one of Telegram's shared
/// identities (an anonymous admin, a channel), which stand for anyone.
fn player(from: Option<&UserInfo>) -> Option<i64> {
    from.map(|u| u.id).filter(|id| !SHARED_SENDERS.contains(id))
}

/// The buttons of the question being asked: one option per row.
fn keyboard(quiz: &Quiz) -> InlineKeyboard {
    InlineKeyboard {
        rows: quiz
            .current()
            .options
            .iter()
            .enumerate()
            .map(|(i, label)| {
                vec![Button::callback(
                    *label,
                    button_data(quiz.round, quiz.question, i),
                )]
            })
            .collect(),
    }
}

/// `answerCallbackQuery` for the press `query_id`, with a toast if `text`.
fn answer(chat_id: i64, query_id: &str, text: Option<&str>) -> Effect<Write> {
    Effect::Send(Outgoing::AnswerCallback(AnswerCallback {
        chat_id,
        callback_query_id: query_id.to_owned(),
        text: text.map(str::to_owned),
        show_alert: false,
    }))
}

fn delete_question(chat_id: i64) -> Effect<Write> {
    Effect::Send(Outgoing::Delete {
        chat_id,
        message: MessageRef::Key(QUESTION_KEY.to_owned()),
    })
}

#[cfg(test)]
mod tests;
