//! The load generator against the sandbox alone, with a fake bot behind its webhook: checks
//! the counting of replies, lost and duplicated ones.

mod common;

use std::time::Duration;

use courier_common::CancellationToken;
use courier_sandbox::load::{self, LoadArgs};
use courier_sandbox::Config;

#[tokio::test]
async fn load_counts_replies_losses_and_duplicates() {
    let stop = CancellationToken::new();
    let mut config = Config::dev();
    config.rate_limits = false;
    let sandbox = courier_sandbox::spawn(config, stop.clone()).await.unwrap();
    let base = 5_000;
    // Chat 5000 never gets a reply to its 2nd note; chat 5001 gets two to its 2nd note.
    let behaviour = common::Behaviour {
        skip: vec![format!("note 2 of user {base}")],
        duplicate: vec![format!("note 2 of user {}", base + 1)],
    };
    common::start_bot(&sandbox.url(), behaviour, stop.clone()).await;

    let dir = std::env::temp_dir().join(format!("courier-load-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let json_path = dir.join("report.json");
    let mut args = LoadArgs::new(sandbox.url());
    args.users = 4;
    args.groups = 1;
    args.rate = 0.0;
    args.concurrency = 8;
    args.messages = Some(40);
    args.chat_id_base = Some(base);
    args.drain_timeout = Duration::from_secs(3);
    args.json = Some(json_path.clone());
    let report = load::run(args).await.unwrap();

    assert_eq!(report.messages_sent, 40);
    assert_eq!(report.errors, 0);
    assert_eq!(report.lost, 1, "{report:?}");
    assert_eq!(report.duplicated, 1, "{report:?}");
    assert_eq!(report.replied, 39);
    assert!(report.latency_ms.p50 > 0.0 && report.latency_ms.p50 <= report.latency_ms.max);
    assert!(report.throughput_per_sec > 0.0);
    let written: load::Report =
        serde_json::from_slice(&std::fs::read(&json_path).unwrap()).unwrap();
    assert_eq!(written.messages_sent, 40);
    assert!(load::table(&report).contains("lost replies"));

    // A second run at a target rate, everything answered.
    let mut args = LoadArgs::new(sandbox.url());
    args.users = 5;
    args.rate = 50.0;
    args.duration = Duration::from_millis(600);
    args.quiet = true;
    let report = load::run(args).await.unwrap();
    assert!(report.messages_sent >= 20, "{report:?}");
    assert_eq!((report.lost, report.duplicated), (0, 0), "{report:?}");
    stop.cancel();
    sandbox.wait().await.unwrap();
}

#[tokio::test]
async fn a_closed_loop_waits_for_each_reply_and_stops_a_chat_at_a_lost_one() {
    let stop = CancellationToken::new();
    let mut config = Config::dev();
    config.rate_limits = false;
    let sandbox = courier_sandbox::spawn(config, stop.clone()).await.unwrap();
    let base = 6_000;
    // Chat 6000 never gets a reply to its 2nd note; chat 6001 gets two to its 3rd.
    let behaviour = common::Behaviour {
        skip: vec![format!("note 2 of user {base}")],
        duplicate: vec![format!("note 3 of user {}", base + 1)],
    };
    common::start_bot(&sandbox.url(), behaviour, stop.clone()).await;

    let mut args = LoadArgs::new(sandbox.url());
    args.users = 3;
    args.notes_per_chat = Some(4);
    args.chat_id_base = Some(base);
    args.drain_timeout = Duration::from_secs(1);
    args.quiet = true;
    let report = load::run(args).await.unwrap();

    // Chat 6000 stopped at its lost note: 2 + 4 + 4 notes.
    assert_eq!(report.mode, load::Mode::Closed);
    assert_eq!(report.notes_per_chat, Some(4));
    assert_eq!(report.messages_sent, 10, "{report:?}");
    assert_eq!((report.lost, report.duplicated), (1, 1), "{report:?}");
    assert_eq!(report.replied, 9);
    assert_eq!(report.errors, 0);
    assert!(report.first_note_unix_ms > 0.0);
    assert!(report.last_reply_unix_ms >= report.first_note_unix_ms);
    assert!(load::table(&report).contains("closed loop, 4 notes per chat"));

    // Chat 6002 took turns with the bot: each note after the previous reply.
    let transcript: Vec<serde_json::Value> = reqwest::get(format!(
        "{}/sandbox/chats/{}/messages",
        sandbox.url(),
        base + 2
    ))
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let turns: Vec<(bool, &str)> = transcript
        .iter()
        .map(|m| {
            (
                m["from_bot"].as_bool().unwrap(),
                m["text"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(turns.len(), 10, "{turns:?}");
    for (i, (from_bot, text)) in turns.iter().enumerate() {
        assert_eq!(*from_bot, i % 2 == 1, "{turns:?}");
        if !from_bot && i > 0 {
            assert_eq!(*text, format!("note {} of user {}", i / 2, base + 2));
        }
    }
    stop.cancel();
    sandbox.wait().await.unwrap();
}

#[tokio::test]
async fn load_fails_clearly_without_a_sandbox() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = load::run(LoadArgs::new(format!("http://127.0.0.1:{port}")))
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("is a sandbox running"),
        "{err:#}"
    );
}
