//! The quiz bot as Courier runs it: [`courier_bot_api::Bot`] over the pure core.

use courier_bot_api::{Bot, Stored, UnreadableUpdate};

use crate::{store, Context, Incoming, Input, QuizState, Scores, Transition, Write};

/// The quiz bot (`COURIER_BOT=quiz`). Its table, `quiz_results`, comes with its own
/// migrations ([`Bot::migrations`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct QuizBot;

/// `bots/quiz/migrations`: versions after Courier's (`20261203100001` onwards), so that the
/// two sets never collide in sqlx's `_sqlx_migrations`.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

impl Bot for QuizBot {
    type State = QuizState;
    type Input = Input;
    type Data = Scores;
    type Write = Write;

    fn name(&self) -> &'static str {
        "quiz"
    }

    fn migrations(&self) -> Option<&'static sqlx::migrate::Migrator> {
        Some(&MIGRATOR)
    }

    fn classify(&self, update: &[u8]) -> Result<Option<Incoming<Input>>, UnreadableUpdate> {
        crate::classify_json(update)
    }

    /// Blocking and unblocking are never throttled; everything else counts against its
    /// sender (or the chat, for shared identities).
    fn counted_as(&self, incoming: &Incoming<Input>) -> Option<i64> {
        match incoming.input {
            Input::BotBlocked(_) => None,
            _ => Some(courier_bot_api::sender_or_chat(incoming)),
        }
    }

    fn needs_read(&self, incoming: &Incoming<Input>) -> bool {
        crate::needs_scores(incoming)
    }

    async fn read(
        &self,
        conn: &mut sqlx::PgConnection,
        bot_id: i64,
        incoming: &Incoming<Input>,
    ) -> Result<Scores, sqlx::Error> {
        match &incoming.from {
            Some(user) => store::scores(conn, bot_id, user.id).await,
            None => Ok(Scores::default()),
        }
    }

    fn step(&self, state: &QuizState, incoming: &Incoming<Input>, ctx: &Context) -> Transition {
        crate::step(state, incoming, ctx)
    }

    async fn write(
        &self,
        conn: &mut sqlx::PgConnection,
        writes: &[Stored<'_, Write>],
    ) -> Result<(), sqlx::Error> {
        store::write(conn, writes).await
    }
}
