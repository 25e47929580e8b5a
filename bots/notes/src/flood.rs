//! Inbound flood control, the pure part.
//!
//! The shell counts each sender's updates in a window of time (in PostgreSQL, inside the
//! update's transaction, so the count holds however many workers apply a user's updates) and
//! asks [`pace`] what the count means; [`step`](crate::step) answers accordingly: within the
//! budget as usual, the first update over it with one polite reply, the rest of the window
//! with nothing at all.

use crate::{Incoming, Input};

/// Where an update falls against its sender's budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pace {
    /// Within the budget: handled as usual.
    #[default]
    Within,
    /// The first update over the budget in this window: one "slow down" reply, nothing else.
    SlowDown,
    /// A later update over the budget in this window: no effects at all.
    Over,
}

/// Telegram's shared identities, which stand for many people at once: `Telegram` (777000,
/// channel posts forwarded to a linked group), `Channel_Bot` (136817688, users writing as a
/// channel), `GroupAnonymousBot` (1087968824, anonymous group admins).
const SHARED_SENDERS: [i64; 3] = [777_000, 136_817_688, 1_087_968_824];

/// Whose budget an update counts against: its sender's, or the chat's when it has no sender
/// of its own (anonymous admins, channel identities). `None` for what is never throttled:
/// the bot being blocked or unblocked must always be recorded.
pub fn counted_as(incoming: &Incoming) -> Option<i64> {
    if matches!(incoming.input, Input::BotBlocked(_)) {
        return None;
    }
    Some(match &incoming.from {
        Some(user) if !SHARED_SENDERS.contains(&user.id) => user.id,
        _ => incoming.chat_id,
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UserInfo;
    use chrono::Utc;

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
    fn updates_count_against_the_sender_or_the_chat_and_blocks_never() {
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
        m.from.as_mut().unwrap().id = 1_087_968_824;
        assert_eq!(
            counted_as(&m),
            Some(-100),
            "anonymous admins count as their chat"
        );
        m.from = None;
        assert_eq!(counted_as(&m), Some(-100));
        m.input = Input::BotBlocked(true);
        assert_eq!(counted_as(&m), None);
    }
}
