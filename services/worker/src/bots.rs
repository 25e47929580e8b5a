//! The bots this worker can run, and the one line that wires each.
//!
//! A deployment runs one bot, chosen by `COURIER_BOT`. Adding a bot (`docs/BOTS.md`): write a
//! crate implementing [`courier_bot_api::Bot`], add it to this crate's dependencies, and add a
//! variant here with its arm in [`BotKind::spawn`] — nothing else in the worker, ingress or
//! sender changes.

use courier_common::CancellationToken;

use crate::{spawn_with, Config, Error, Worker};

/// Which bot the worker runs (`COURIER_BOT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BotKind {
    /// The notes bot of the original tutorial (`bots/notes`).
    #[default]
    Notes,
}

impl BotKind {
    /// Starts a worker running this bot.
    pub async fn spawn(self, config: Config, shutdown: CancellationToken) -> Result<Worker, Error> {
        match self {
            BotKind::Notes => spawn_with(courier_notes::NotesBot, config, shutdown).await,
        }
    }

    /// The bot's own migrations, for `courier-worker migrate`.
    pub fn migrations(self) -> Option<&'static sqlx::migrate::Migrator> {
        use courier_bot_api::Bot as _;
        match self {
            BotKind::Notes => courier_notes::NotesBot.migrations(),
        }
    }
}
