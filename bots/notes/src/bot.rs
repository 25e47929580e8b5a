//! The notes bot as Courier runs it: [`courier_bot_api::Bot`] over the pure core.

use courier_bot_api::{Bot, Stored};

use crate::{flood, store, Context, Data, DialogueState, Incoming, Input, Transition, Write};

/// The notes bot (`COURIER_BOT=notes`). Its tables, `users` and `messages`, were created by
/// Courier's first migrations (before bots owned their tables), so [`Bot::migrations`] has
/// none of its own; every statement on them is in this crate.
#[derive(Debug, Clone, Copy, Default)]
pub struct NotesBot;

impl Bot for NotesBot {
    type State = DialogueState;
    type Input = Input;
    type Data = Data;
    type Write = Write;

    fn name(&self) -> &'static str {
        "notes"
    }

    fn classify(
        &self,
        update: &[u8],
    ) -> Result<Option<Incoming>, courier_bot_api::UnreadableUpdate> {
        crate::classify_json(update)
    }

    fn counted_as(&self, incoming: &Incoming) -> Option<i64> {
        flood::counted_as(incoming)
    }

    fn needs_read(&self, incoming: &Incoming) -> bool {
        crate::needs_history(incoming)
    }

    async fn read(
        &self,
        conn: &mut sqlx::PgConnection,
        bot_id: i64,
        incoming: &Incoming,
    ) -> Result<Data, sqlx::Error> {
        let history = match (&incoming.from, &incoming.input) {
            (Some(user), Input::Command { .. }) => {
                store::history(conn, bot_id, incoming.chat_id, user.id).await?
            }
            _ => Vec::new(),
        };
        Ok(Data { history })
    }

    fn step(&self, state: &DialogueState, incoming: &Incoming, ctx: &Context) -> Transition {
        crate::step(*state, incoming, ctx)
    }

    async fn write(
        &self,
        conn: &mut sqlx::PgConnection,
        writes: &[Stored<'_, Write>],
    ) -> Result<(), sqlx::Error> {
        store::write(conn, writes).await
    }
}
