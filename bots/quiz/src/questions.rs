//! The question bank and how a round picks its questions — deterministically, so that a step
//! stays pure: the same chat, round and date always give the same questions.

/// One multiple-choice question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Question {
    /// The question (plain text; escaped when it is shown).
    pub text: &'static str,
    /// The choices, as the buttons show them, top to bottom.
    pub options: &'static [&'static str],
    /// The index of the right one in [`Question::options`].
    pub answer: usize,
}

impl Question {
    /// The right choice's label.
    pub fn right_option(&self) -> &'static str {
        self.options[self.answer]
    }
}

const fn q(text: &'static str, options: &'static [&'static str], answer: usize) -> Question {
    Question {
        text,
        options,
        answer,
    }
}

/// Every question the bot asks. A round asks [`QUESTIONS_PER_ROUND`] of them. Running
/// quizzes keep indices into this list in their state: append to it, never reorder it.
pub const BANK: &[Question] = &[
    q(
        "Which planet is closest to the Sun?",
        &["Venus", "Mercury", "Mars", "Earth"],
        1,
    ),
    q("How many bits are in a byte?", &["4", "8", "16", "32"], 1),
    q(
        "What is the chemical symbol for gold?",
        &["Ag", "Gd", "Au", "Go"],
        2,
    ),
    q(
        "Which is the largest ocean?",
        &["Pacific", "Atlantic", "Indian", "Arctic"],
        0,
    ),
    q(
        "Which language is Courier written in?",
        &["Go", "Java", "Python", "Rust"],
        3,
    ),
    q("What is 7 × 8?", &["54", "56", "58", "64"], 1),
    q(
        "Which gas do plants take in for photosynthesis?",
        &["Oxygen", "Nitrogen", "Carbon dioxide", "Helium"],
        2,
    ),
    q(
        "Who wrote \"Romeo and Juliet\"?",
        &[
            "William Shakespeare",
            "Charles Dickens",
            "Jane Austen",
            "Leo Tolstoy",
        ],
        0,
    ),
    q(
        "What is the capital of Australia?",
        &["Sydney", "Melbourne", "Perth", "Canberra"],
        3,
    ),
    q(
        "How many sides does a hexagon have?",
        &["5", "6", "7", "8"],
        1,
    ),
    q(
        "Which is the largest mammal?",
        &["African elephant", "Giraffe", "Blue whale", "Orca"],
        2,
    ),
    q(
        "Which HTTP status code means \"Not Found\"?",
        &["200", "301", "404", "500"],
        2,
    ),
];

/// How many questions one round asks.
pub const QUESTIONS_PER_ROUND: usize = 5;

/// The questions of a round (indices into [`BANK`], no repeats): a shuffle of the bank seeded
/// with the chat, the round and the time of the `/quiz` message, cut to
/// [`QUESTIONS_PER_ROUND`].
pub fn pick(chat_id: i64, round: u32, unix_time: i64) -> Vec<u8> {
    let mut rng = SplitMix64(
        (chat_id as u64)
            ^ (unix_time as u64).rotate_left(32)
            ^ u64::from(round).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    let mut order: Vec<u8> = (0..BANK.len() as u8).collect();
    // Fisher-Yates, stopped once the first QUESTIONS_PER_ROUND places are drawn.
    for i in 0..QUESTIONS_PER_ROUND.min(order.len()) {
        let j = i + (rng.next() % (order.len() - i) as u64) as usize;
        order.swap(i, j);
    }
    order.truncate(QUESTIONS_PER_ROUND);
    order
}

/// SplitMix64 (Steele, Lea and Flood): a tiny, well-mixed generator; plenty for a shuffle
/// that must only look random and be the same on every replay.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn the_bank_is_well_formed() {
        assert!(BANK.len() >= QUESTIONS_PER_ROUND);
        assert!(BANK.len() <= usize::from(u8::MAX));
        for q in BANK {
            assert!(q.answer < q.options.len(), "{}", q.text);
            assert!((2..=4).contains(&q.options.len()), "{}", q.text);
            let distinct: BTreeSet<_> = q.options.iter().collect();
            assert_eq!(distinct.len(), q.options.len(), "{}", q.text);
        }
    }

    #[test]
    fn a_round_picks_distinct_questions_the_same_way_every_time() {
        for (chat, round, at) in [
            (7, 1, 1_764_133_380),
            (-100, 9, 0),
            (i64::MIN, u32::MAX, -1),
        ] {
            let order = pick(chat, round, at);
            assert_eq!(order.len(), QUESTIONS_PER_ROUND);
            assert_eq!(order.iter().collect::<BTreeSet<_>>().len(), order.len());
            assert!(order.iter().all(|&i| usize::from(i) < BANK.len()));
            assert_eq!(order, pick(chat, round, at), "deterministic");
        }
    }

    #[test]
    fn rounds_differ() {
        let orders: BTreeSet<Vec<u8>> = (1..=20).map(|r| pick(7, r, 1_764_133_380)).collect();
        assert!(orders.len() > 10, "{} distinct orders of 20", orders.len());
        let firsts: BTreeSet<u8> = (0..60).map(|t| pick(7, 1, t)[0]).collect();
        assert_eq!(firsts.len(), BANK.len(), "every question can come first");
    }
}
