//! The stable mapping of a chat to a partition.
//!
//! `partition = fnv1a_64(chat_id as 8 little-endian bytes) mod P`. FNV-1a is written out here
//! (ten lines) rather than taken from a crate because the exact function is part of the wire
//! contract between ingress and workers: it must never change with a dependency upgrade.

/// Default number of partitions of a deployment.
pub const DEFAULT_PARTITIONS: u32 = 32;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// FNV-1a (64 bit) of some bytes.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME)
    })
}

/// FNV-1a (64 bit) of the chat id's little-endian bytes.
pub fn chat_hash(chat_id: i64) -> u64 {
    fnv1a64(&chat_id.to_le_bytes())
}

/// The partition of a chat among `partitions` (which must be at least 1).
pub fn partition_of(chat_id: i64, partitions: u32) -> u32 {
    assert!(partitions > 0, "a deployment has at least one partition");
    (chat_hash(chat_id) % u64::from(partitions)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_is_pinned() {
        // These values are part of the wire contract; a change here re-partitions every chat.
        assert_eq!(chat_hash(0), 0xa8c7_f832_281a_39c5);
        assert_eq!(partition_of(0, 32), (0xa8c7_f832_281a_39c5u64 % 32) as u32);
        assert_eq!(chat_hash(-1_001_234_567_890), 0x31a3_3e1a_9d6b_d746);
        assert_eq!(partition_of(-1_001_234_567_890, 32), 6);
    }

    #[test]
    fn partitions_are_in_range_and_spread() {
        let mut counts = [0u32; 32];
        for chat in -5000..5000i64 {
            counts[partition_of(chat, 32) as usize] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 200 && *max < 430, "uneven spread: {counts:?}");
    }
}
