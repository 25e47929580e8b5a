//! What a partition's deliveries tell about each chat's previous update, so that the order
//! guard needs the stream only when the worker cannot know.
//!
//! The order guard (`store::apply`) must know whether a chat has an update between its last
//! applied one (`last_seq`) and the one at hand. Asking the stream (a direct get per update)
//! costs a NATS round trip on every update. But a partition's puller sees every delivery of
//! its consumer, and JetStream delivers a consumer's messages for the first time in stream
//! order. So while the consumer's delivery sequence has no gap (no delivery went to another
//! client or was lost), the previous first delivery of a chat *is* the chat's previous message
//! in the stream: if the guard finds that one applied (`last_seq` equals it), there is nothing
//! in between and no question to ask. Any doubt (a gap in the delivery sequence, a
//! redelivery, the first delivery of a chat in this tenure) gives no hint, and the guard asks
//! the stream as before.

use std::collections::HashMap;

/// Most chats remembered per partition; past it the memory starts again (a chat then costs
/// one stream lookup).
const MAX_CHATS: usize = 100_000;

/// Follows one partition consumer's deliveries, in the order the puller receives them.
#[derive(Debug, Default)]
pub struct Tracker {
    /// The delivery (consumer) sequence expected next; `None` before the first.
    next_delivery: Option<u64>,
    /// Each chat's last first-delivered stream sequence since the sequence was last broken.
    last_of_chat: HashMap<i64, u64>,
}

impl Tracker {
    /// Records a delivery and returns the stream sequence of the chat's previous message when
    /// it is known for certain (see the module's documentation): the chat has no message
    /// between it and `stream_seq`.
    pub fn observe(
        &mut self,
        chat: i64,
        consumer_seq: u64,
        stream_seq: u64,
        delivered: i64,
    ) -> Option<u64> {
        if self.next_delivery != Some(consumer_seq) || self.last_of_chat.len() >= MAX_CHATS {
            // A delivery this puller did not see (or the first one): forget everything.
            self.last_of_chat.clear();
        }
        self.next_delivery = Some(consumer_seq + 1);
        if delivered != 1 {
            // A redelivery says nothing about what came before it; it is older than the
            // chat's first deliveries since, which stay valid.
            return None;
        }
        self.last_of_chat
            .insert(chat, stream_seq)
            .filter(|&prev| prev < stream_seq)
    }
}

#[cfg(test)]
mod tests {
    use super::Tracker;

    #[test]
    fn the_previous_first_delivery_of_a_chat_is_known_while_deliveries_are_contiguous() {
        let mut t = Tracker::default();
        assert_eq!(t.observe(7, 1, 10, 1), None, "first delivery of the chat");
        assert_eq!(t.observe(8, 2, 11, 1), None);
        assert_eq!(t.observe(7, 3, 15, 1), Some(10));
        assert_eq!(t.observe(8, 4, 20, 1), Some(11));
        assert_eq!(t.observe(7, 5, 21, 1), Some(15));
    }

    #[test]
    fn a_gap_in_the_delivery_sequence_forgets_every_chat() {
        let mut t = Tracker::default();
        t.observe(7, 1, 10, 1);
        t.observe(8, 2, 11, 1);
        // Delivery 3 went elsewhere: it may have been chat 7's message 12.
        assert_eq!(t.observe(7, 4, 15, 1), None);
        assert_eq!(t.observe(8, 5, 16, 1), None);
        assert_eq!(t.observe(7, 6, 17, 1), Some(15));
    }

    #[test]
    fn a_redelivery_gives_no_hint_and_keeps_what_first_deliveries_said() {
        let mut t = Tracker::default();
        t.observe(7, 1, 10, 1);
        t.observe(7, 2, 12, 1);
        assert_eq!(t.observe(7, 3, 10, 2), None, "redelivered");
        assert_eq!(t.observe(7, 4, 14, 1), Some(12));
    }
}
