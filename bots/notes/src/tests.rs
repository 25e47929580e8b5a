use super::*;
use chrono::TimeZone;
use courier_bot_api::{Outgoing, ParseMode, SendText};

fn user() -> UserInfo {
    UserInfo {
        id: 7,
        first_name: "Ada".into(),
        last_name: None,
        username: Some("ada".into()),
    }
}

fn msg(text: &str) -> Incoming {
    Incoming {
        chat_id: 7,
        from: Some(user()),
        date: Utc.with_ymd_and_hms(2026, 11, 26, 5, 3, 0).unwrap(),
        input: input::parse_text(text),
    }
}

fn replies(t: &Transition) -> Vec<&str> {
    t.effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send(Outgoing::Send(SendText { text, .. })) => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

/// The text Telegram shows for an HTML message: tags dropped, entities decoded.
fn shown(html: &str) -> String {
    let mut out = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&amp;", "&")
}

#[test]
fn start_registers_and_enters_receive_note() {
    for state in [DialogueState::Start, DialogueState::ReceiveNote] {
        let t = step(state, &msg("/start"), &Context::default());
        assert_eq!(t.state, DialogueState::ReceiveNote);
        assert_eq!(
            t.effects[0],
            Effect::Write(Write::UpsertUser {
                user: user(),
                chat_id: 7
            })
        );
        assert_eq!(
            t.effects[1],
            Effect::Subscribe {
                chat_id: 7,
                subscribed: true
            }
        );
        assert!(replies(&t)[0].starts_with("Hi, Ada!"), "{:?}", replies(&t));
    }
}

#[test]
fn start_with_bot_suffix_and_payload_is_start() {
    let t = step(
        DialogueState::Start,
        &msg("/START@courier_bot ref42"),
        &Context::default(),
    );
    assert_eq!(t.state, DialogueState::ReceiveNote);
}

#[test]
fn help_keeps_state_and_lists_commands() {
    for state in [DialogueState::Start, DialogueState::ReceiveNote] {
        let t = step(state, &msg("/help"), &Context::default());
        assert_eq!(t.state, state);
        let r = replies(&t);
        assert_eq!(r.len(), 1);
        for cmd in ["/start", "/history", "/help"] {
            assert!(r[0].contains(cmd), "{cmd} missing from help");
        }
    }
}

#[test]
fn text_in_receive_note_is_saved_verbatim_and_confirmed() {
    let text = "Robert'); DROP TABLE messages;-- 🦀  spaces  ";
    let t = step(DialogueState::ReceiveNote, &msg(text), &Context::default());
    assert_eq!(t.state, DialogueState::ReceiveNote);
    assert_eq!(
        t.effects[0],
        Effect::Write(Write::SaveNote {
            chat_id: 7,
            user_id: 7,
            text: text.into(),
            at: Utc.with_ymd_and_hms(2026, 11, 26, 5, 3, 0).unwrap()
        })
    );
    assert_eq!(replies(&t), vec![texts::SAVED]);
}

#[test]
fn text_before_start_gets_fallback_and_saves_nothing() {
    let t = step(DialogueState::Start, &msg("hello"), &Context::default());
    assert_eq!(t.state, DialogueState::Start);
    assert_eq!(t.effects.len(), 1);
    assert!(replies(&t)[0].contains("/start") && replies(&t)[0].contains("/help"));
}

#[test]
fn unknown_command_points_at_help_in_every_state() {
    for state in [DialogueState::Start, DialogueState::ReceiveNote] {
        let t = step(state, &msg("/frobnicate now"), &Context::default());
        assert_eq!(t.state, state);
        assert_eq!(t.effects.len(), 1);
        let r = replies(&t)[0];
        assert!(r.contains("/frobnicate") && r.contains("/help"), "{r}");
    }
}

#[test]
fn slash_text_that_is_no_command_is_a_note() {
    let t = step(
        DialogueState::ReceiveNote,
        &msg("/usr/bin is a path"),
        &Context::default(),
    );
    assert!(matches!(
        t.effects[0],
        Effect::Write(Write::SaveNote { .. })
    ));
}

#[test]
fn non_text_is_explained() {
    let mut m = msg("x");
    m.input = Input::NonText { kind: "sticker" };
    let t = step(DialogueState::ReceiveNote, &m, &Context::default());
    assert_eq!(t.effects.len(), 1);
    assert!(replies(&t)[0].contains("sticker") && replies(&t)[0].contains("/help"));
    let t = step(DialogueState::Start, &m, &Context::default());
    assert!(replies(&t)[0].contains("/start"));
}

#[test]
fn history_needs_a_read_and_lists_newest_first_with_times_in_italics() {
    let m = msg("/history");
    assert!(needs_history(&m));
    assert!(!needs_history(&msg("/help")));
    let mut anonymous = m.clone();
    anonymous.from = None;
    assert!(!needs_history(&anonymous), "no user, no notes to read");
    let at = |h| Utc.with_ymd_and_hms(2026, 11, 26, h, 0, 0).unwrap();
    let ctx = Context {
        pace: Pace::Within,
        data: Data {
            history: vec![
                Note {
                    text: "second <b>not bold</b> & co".into(),
                    at: at(10),
                },
                Note {
                    text: "first".into(),
                    at: at(9),
                },
            ],
        },
    };
    let t = step(DialogueState::ReceiveNote, &m, &ctx);
    assert_eq!(t.state, DialogueState::ReceiveNote);
    let Effect::Send(Outgoing::Send(sent)) = &t.effects[0] else {
        panic!("{:?}", t.effects)
    };
    assert_eq!(sent.parse_mode, Some(ParseMode::Html));
    let r = sent.text.as_str();
    assert!(
        r.contains("1. <i>2026-11-26 10:00 UTC</i> second &lt;b&gt;not bold&lt;/b&gt; &amp; co"),
        "{r}"
    );
    assert!(r.contains("2. <i>2026-11-26 09:00 UTC</i> first"), "{r}");
    assert!(
        shown(r).contains("second <b>not bold</b> & co"),
        "shown verbatim: {r}"
    );
}

#[test]
fn empty_history_says_so() {
    let t = step(DialogueState::Start, &msg("/history"), &Context::default());
    assert!(replies(&t)[0].contains("no notes"));
}

#[test]
fn history_of_five_long_notes_fits_one_telegram_message() {
    // Escaping makes the markup longer than 4096; Telegram counts what it shows.
    for long in ["x".repeat(4096), "<&>".repeat(2000)] {
        let ctx = Context {
            pace: Pace::Within,
            data: Data {
                history: vec![
                    Note {
                        text: long.clone(),
                        at: Utc::now()
                    };
                    HISTORY_LEN
                ],
            },
        };
        let t = step(DialogueState::ReceiveNote, &msg("/history"), &ctx);
        assert!(shown(replies(&t)[0]).chars().count() <= 4096);
    }
}

#[test]
fn anonymous_text_is_not_saved() {
    let mut m = msg("hi");
    m.from = None;
    let t = step(DialogueState::ReceiveNote, &m, &Context::default());
    assert!(!t
        .effects
        .iter()
        .any(|e| matches!(e, Effect::Write(Write::SaveNote { .. }))));
}

#[test]
fn blocking_and_unblocking_are_recorded_without_a_reply() {
    for blocked in [true, false] {
        let mut m = msg("x");
        m.input = Input::BotBlocked(blocked);
        let t = step(DialogueState::ReceiveNote, &m, &Context::default());
        assert_eq!(t.state, DialogueState::ReceiveNote);
        assert_eq!(
            t.effects,
            vec![
                Effect::SetBlocked {
                    chat_id: 7,
                    blocked
                },
                Effect::Write(Write::SetUserBlocked {
                    chat_id: 7,
                    blocked
                })
            ]
        );
    }
}

#[test]
fn state_serializes_as_tagged_json() {
    let v = serde_json::to_value(DialogueState::ReceiveNote).unwrap();
    assert_eq!(v, serde_json::json!({"state": "ReceiveNote"}));
    let back: DialogueState = serde_json::from_value(v).unwrap();
    assert_eq!(back, DialogueState::ReceiveNote);
}

#[test]
fn over_the_flood_budget_one_slow_down_then_nothing_and_no_state_change() {
    for state in [DialogueState::Start, DialogueState::ReceiveNote] {
        for text in ["/start", "a note", "/history", "/help"] {
            let slow = Context {
                pace: Pace::SlowDown,
                ..Context::default()
            };
            let t = step(state, &msg(text), &slow);
            assert_eq!(t.state, state, "{text}: no state change, not even /start");
            assert_eq!(
                t.effects,
                vec![Effect::reply(7, texts::SLOW_DOWN)],
                "{text}"
            );
            let over = Context {
                pace: Pace::Over,
                ..Context::default()
            };
            let t = step(state, &msg(text), &over);
            assert_eq!((t.state, t.effects), (state, vec![]), "{text}");
        }
    }
    assert!(texts::SLOW_DOWN.contains("too fast"));
}

#[test]
fn blocking_is_recorded_whatever_the_pace() {
    for pace in [Pace::Within, Pace::SlowDown, Pace::Over] {
        let mut m = msg("x");
        m.input = Input::BotBlocked(true);
        let ctx = Context {
            pace,
            ..Context::default()
        };
        let t = step(DialogueState::ReceiveNote, &m, &ctx);
        assert_eq!(
            t.effects,
            vec![
                Effect::SetBlocked {
                    chat_id: 7,
                    blocked: true
                },
                Effect::Write(Write::SetUserBlocked {
                    chat_id: 7,
                    blocked: true
                })
            ]
        );
    }
}
