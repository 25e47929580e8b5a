//! The bots this worker can run: one line each.
//!
//! A deployment runs one bot, chosen by `COURIER_BOT`. Adding a bot (`docs/BOTS.md`): write a
//! crate implementing [`courier_bot_api::Bot`], add it to this crate's dependencies, and add
//! one line to the list at the bottom of this file — nothing else in the worker, ingress or
//! sender changes. The line names the `COURIER_BOT` value (the variant, lower-cased) and the
//! expression that makes the bot.

use courier_bot_api::Bot;
use courier_common::CancellationToken;

use crate::{spawn_with, Config, Error, Worker};

/// Generates [`BotKind`] and its dispatch from the list of bots.
macro_rules! bots {
    ($( $(#[$attr:meta])* $variant:ident => $bot:expr ),+ $(,)?) => {
        /// Which bot the worker runs (`COURIER_BOT`).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
        pub enum BotKind {
            $( $(#[$attr])* $variant, )+
        }

        impl BotKind {
            /// Every bot this worker can run.
            pub const ALL: &'static [BotKind] = &[$( BotKind::$variant ),+];

            /// Starts a worker running this bot.
            pub async fn spawn(
                self,
                config: Config,
                shutdown: CancellationToken,
            ) -> Result<Worker, Error> {
                match self {
                    $( BotKind::$variant => spawn_with($bot, config, shutdown).await, )+
                }
            }

            /// The bot's own migrations (run after Courier's; `courier-worker migrate`).
            pub fn migrations(self) -> Option<&'static sqlx::migrate::Migrator> {
                match self {
                    $( BotKind::$variant => Bot::migrations(&$bot), )+
                }
            }

            /// The bot's name ([`Bot::name`]).
            pub fn name(self) -> &'static str {
                match self {
                    $( BotKind::$variant => Bot::name(&$bot), )+
                }
            }
        }
    };
}

bots! {
    /// The notes bot of the original tutorial (`bots/notes`).
    #[default]
    Notes => courier_notes::NotesBot,
    /// A quiz with inline buttons, edits and callback answers (`bots/quiz`).
    Quiz => courier_quiz::QuizBot,
}

#[cfg(test)]
mod tests {
    use clap::ValueEnum as _;

    use super::BotKind;

    #[test]
    fn each_bot_is_selected_by_its_own_name() {
        for kind in BotKind::ALL {
            let value = kind.to_possible_value().expect("a value");
            assert_eq!(
                value.get_name(),
                kind.name(),
                "COURIER_BOT={}",
                value.get_name()
            );
            assert_eq!(BotKind::from_str(kind.name(), false), Ok(*kind));
        }
    }
}
