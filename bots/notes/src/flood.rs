//! Inbound flood control, the pure part.
//!
//! The shell counts each sender's updates in a window of time (in PostgreSQL, inside the
//! update's transaction, so the count holds however many workers apply a user's updates) and
//! asks [`pace`] (Courier's rule, shared by every bot) what the count means; [`step`](crate::step) answers accordingly: within the
//! budget as usual, the first update over it with one polite reply, the rest of the window
//! with nothing at all.

use crate::{Incoming, Input};

pub use courier_bot_api::{pace, Pace};

/// Whose budget an update counts against: its sender's, or the chat's when it has no sender
/// of its own (anonymous admins, channel identities). `None` for what is never throttled:
/// the bot being blocked or unblocked must always be recorded.
pub fn counted_as(incoming: &Incoming) -> Option<i64> {
    if matches!(incoming.input, Input::BotBlocked(_)) {
        return None;
    }
    Some(courier_bot_api::sender_or_chat(incoming))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UserInfo;
    use chrono::Utc;

    #[test]
    fn blocks_never_count_and_the_rest_counts_as_courier_counts_it() {
        let mut m = Incoming {
            chat_id: -100,
            from: Some(UserInfo {
                id: 7,
                first_name: "Ada".into(),
                last_name: None,
                username: None,
            }),
            date: Utc::now(),
            input: Input::Text("hi".into()),
        };
        assert_eq!(counted_as(&m), Some(7));
        m.input = Input::BotBlocked(true);
        assert_eq!(counted_as(&m), None);
    }
}
