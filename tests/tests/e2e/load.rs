//! The sandbox's load generator against the whole stack: its closed loop (`--notes-per-chat`)
//! gets every note answered exactly once, and each chat sends a note only after the bot
//! answered the previous one. Correctness only; the speed is `cargo xtask bench`'s business.

use std::time::Duration;

use courier_sandbox::load::{self, LoadArgs, Mode};
use courier_tests::Stack;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_loop_load_sends_each_note_after_the_previous_reply_and_gets_one_reply_each(
) -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let (chats, notes) = (4_i64, 5_u32);
    let base = 8_100;
    let mut args = LoadArgs::new(stack.sandbox_url());
    args.users = u32::try_from(chats)?;
    args.notes_per_chat = Some(notes);
    args.chat_id_base = Some(base);
    args.drain_timeout = Duration::from_secs(30);
    args.quiet = true;
    let report = load::run(args).await?;

    // Every note answered exactly once.
    let total = u64::try_from(chats)? * u64::from(notes);
    assert_eq!(report.mode, Mode::Closed);
    assert_eq!(report.messages_sent, total, "{report:?}");
    assert_eq!(report.replied, total, "{report:?}");
    assert_eq!((report.lost, report.duplicated), (0, 0), "{report:?}");
    assert_eq!(report.errors, 0, "{report:?}");

    for chat in base..base + chats {
        // The transcript alternates user and bot: each note came after the previous reply
        // (the sandbox appends a message when it is created), and got one reply.
        let t = stack.transcript(chat).await?;
        assert_eq!(t.len(), 2 * (1 + notes as usize), "chat {chat}: {t:#?}");
        assert!(
            t.iter()
                .enumerate()
                .all(|(i, l)| l.from_bot == (i % 2 == 1)),
            "chat {chat}: {t:#?}"
        );
        let said: Vec<&str> = t
            .iter()
            .filter(|l| !l.from_bot)
            .map(|l| l.text.as_str())
            .collect();
        let want: Vec<String> = std::iter::once("/start".to_owned())
            .chain((1..=notes).map(|n| format!("note {n} of user {chat}")))
            .collect();
        assert_eq!(said, want, "chat {chat}");
        assert!(
            t.iter()
                .filter(|l| l.from_bot)
                .skip(1)
                .all(|l| l.text.starts_with("Saved your note")),
            "chat {chat}: {t:#?}"
        );
        // And the bot stored each note once, in order.
        assert_eq!(stack.notes(chat).await?, want[1..], "chat {chat}");
    }
    Ok(())
}
