//! Property tests: whatever arrives — arbitrary bytes, the fixtures mutated at random, any
//! state (including ones no step produces), any input at any pace, long random
//! conversations — `classify_json` and `step` answer without panicking and keep the bot's
//! rules: every button press is answered exactly once, every call stays in the update's chat,
//! buttons carry at most 64 bytes, a result is only written when a quiz ends.

use std::path::Path;
use std::sync::OnceLock;

use chrono::DateTime;
use courier_bot_api::{
    parse_command, ButtonAction, Context, Effect, InlineKeyboard, Outgoing, Pace,
};
use courier_quiz::questions::{pick, QUESTIONS_PER_ROUND};
use courier_quiz::{
    button_data, classify_json, step, Incoming, Input, Quiz, QuizResult, QuizState, Scores,
    UserInfo, Write,
};
use proptest::prelude::*;
use serde_json::Value;

fn fixtures() -> &'static [Value] {
    static FIXTURES: OnceLock<Vec<Value>> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
        let mut paths: Vec<_> = std::fs::read_dir(dir)
            .expect("tests/fixtures")
            .map(|e| e.expect("dir entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        paths.sort();
        paths
            .iter()
            .map(|p| serde_json::from_slice(&std::fs::read(p).expect("fixture")).expect("JSON"))
            .collect()
    })
}

/// Every rule one step keeps, checked on `(state, incoming, ctx)`.
fn check_step(state: &QuizState, incoming: &Incoming<Input>, ctx: &Context<Scores>) -> QuizState {
    let t = step(state, incoming, ctx);
    assert_eq!(t, step(state, incoming, ctx), "deterministic");
    let answers: Vec<&courier_bot_api::AnswerCallback> = t
        .effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send(Outgoing::AnswerCallback(a)) => Some(a),
            _ => None,
        })
        .collect();
    match &incoming.input {
        Input::Button { query_id, .. } => {
            assert_eq!(answers.len(), 1, "one answer per press: {:?}", t.effects);
            assert_eq!(&answers[0].callback_query_id, query_id);
            assert!(
                matches!(&t.effects[0], Effect::Send(Outgoing::AnswerCallback(_))),
                "answered first: {:?}",
                t.effects
            );
        }
        _ => assert!(answers.is_empty(), "{:?}", t.effects),
    }
    for a in &answers {
        if let Some(text) = &a.text {
            assert!(!text.is_empty() && text.chars().count() <= 200, "{text}");
        }
    }
    let blocking = matches!(incoming.input, Input::BotBlocked(_));
    let press = matches!(incoming.input, Input::Button { .. });
    if !blocking && ctx.pace != Pace::Within {
        assert_eq!(&t.state, state, "no state change over the budget");
        let expected = match (ctx.pace, press) {
            (Pace::SlowDown, _) | (Pace::Over, true) => 1,
            _ => 0,
        };
        assert_eq!(t.effects.len(), expected, "{:?}", t.effects);
    }
    let mut writes = 0;
    for e in &t.effects {
        match e {
            Effect::Send(o) => {
                assert_eq!(o.chat_id(), incoming.chat_id, "{o:?}");
                match o {
                    Outgoing::Send(m) => {
                        assert!(!m.text.is_empty());
                        m.keyboard.iter().for_each(check_keyboard);
                    }
                    Outgoing::Edit(m) => {
                        assert!(!m.text.is_empty());
                        m.keyboard.iter().for_each(check_keyboard);
                    }
                    _ => {}
                }
            }
            Effect::SetBlocked { chat_id, .. } | Effect::Subscribe { chat_id, .. } => {
                assert_eq!(*chat_id, incoming.chat_id)
            }
            Effect::Write(Write::Finished {
                chat_id,
                score,
                total,
                ..
            }) => {
                writes += 1;
                assert_eq!(*chat_id, incoming.chat_id);
                assert!(score <= total && *total as usize == QUESTIONS_PER_ROUND);
                assert!(press && ctx.pace == Pace::Within);
                assert!(state.running().is_some() && t.state.running().is_none());
            }
        }
    }
    assert!(writes <= 1);
    if let Some(quiz) = t.state.running() {
        assert!(quiz.score <= quiz.question);
    }
    if state.rounds() < u32::MAX {
        assert!(t.state.rounds() >= state.rounds(), "rounds never go back");
    }
    t.state
}

fn check_keyboard(k: &InlineKeyboard) {
    assert!(!k.rows.is_empty());
    for b in k.rows.iter().flatten() {
        assert!(!b.text.is_empty());
        match &b.action {
            ButtonAction::Callback(d) => assert!((1..=64).contains(&d.len()), "{d}"),
            other => panic!("{other:?}"),
        }
    }
}

/// Runs `step` on what was read, in a few states and at every pace.
fn step_everywhere(incoming: &Incoming<Input>) {
    let states = [
        QuizState::default(),
        QuizState::Idle { rounds: 1 },
        QuizState::InQuiz(Quiz {
            round: 1,
            order: pick(incoming.chat_id, 1, 0),
            question: 0,
            score: 0,
            player: incoming.from.as_ref().map(|u| u.id),
        }),
    ];
    for state in &states {
        for pace in [Pace::Within, Pace::SlowDown, Pace::Over] {
            check_step(
                state,
                incoming,
                &Context {
                    pace,
                    data: Scores::default(),
                },
            );
        }
    }
}

fn user() -> impl Strategy<Value = UserInfo> {
    (
        prop_oneof![Just(7i64), Just(8), Just(1_087_968_824), any::<i64>()],
        any::<String>(),
    )
        .prop_map(|(id, first_name)| UserInfo {
            id,
            first_name,
            last_name: None,
            username: None,
        })
}

fn state() -> impl Strategy<Value = QuizState> {
    let valid = (
        1..5u32,
        0..QUESTIONS_PER_ROUND as u32,
        any::<i64>(),
        prop::option::of(prop_oneof![Just(7i64), Just(8)]),
    )
        .prop_flat_map(|(round, question, seed, player)| {
            (0..=question).prop_map(move |score| {
                QuizState::InQuiz(Quiz {
                    round,
                    order: pick(seed, round, 0),
                    question,
                    score,
                    player,
                })
            })
        });
    let arbitrary = (
        any::<u32>(),
        prop::collection::vec(any::<u8>(), 0..8),
        any::<u32>(),
        any::<u32>(),
        any::<Option<i64>>(),
    )
        .prop_map(|(round, order, question, score, player)| {
            QuizState::InQuiz(Quiz {
                round,
                order,
                question,
                score,
                player,
            })
        });
    prop_oneof![
        2 => any::<u32>().prop_map(|rounds| QuizState::Idle { rounds }),
        3 => valid,
        1 => arbitrary,
    ]
}

fn input() -> impl Strategy<Value = Input> {
    let command = prop_oneof![
        prop::sample::select(vec![
            "/start", "/help", "/quiz", "/quiz", "/stop", "/score", "/nope"
        ])
        .prop_map(str::to_owned),
        "/[a-zA-Z_]{0,10}(@[a-z_]{0,8})?( .{0,20})?",
    ]
    .prop_map(|t| parse_command(&t).map_or(Input::Other, Input::Command));
    let data = prop_oneof![
        3 => (0..5u32, 0..6u32, 0..5usize).prop_map(|(r, q, o)| button_data(r, q, o)),
        1 => any::<String>(),
        1 => "q:[0-9]{0,12}:[0-9]{0,12}:[0-9]{0,22}",
    ];
    prop_oneof![
        3 => command,
        1 => Just(Input::Other),
        4 => ("[0-9]{1,19}", any::<i64>(), data).prop_map(|(query_id, message_id, data)| Input::Button {
            query_id,
            message_id,
            data,
        }),
        1 => any::<bool>().prop_map(Input::BotBlocked),
    ]
}

/// Mostly the same user, sometimes another one or none.
fn player() -> impl Strategy<Value = Option<UserInfo>> {
    let ada = UserInfo {
        id: 7,
        first_name: "Ada".into(),
        last_name: None,
        username: None,
    };
    prop_oneof![
        8 => Just(Some(ada)),
        1 => prop::option::of(user()),
    ]
}

fn pace() -> impl Strategy<Value = Pace> {
    prop_oneof![
        6 => Just(Pace::Within),
        1 => Just(Pace::SlowDown),
        1 => Just(Pace::Over),
    ]
}

fn scores() -> impl Strategy<Value = Scores> {
    let result = (0..=5u32, any::<i64>()).prop_map(|(score, at)| QuizResult {
        score,
        total: 5,
        finished_at: DateTime::from_timestamp(at % 253_402_300_799, 0).unwrap_or_default(),
    });
    (prop::option::of((result.clone(), result)), any::<u64>()).prop_map(|(r, finished)| Scores {
        last: r.map(|(l, _)| l),
        best: r.map(|(_, b)| b),
        finished,
    })
}

fn incoming(chat_id: i64, from: Option<UserInfo>, at: i64, input: Input) -> Incoming<Input> {
    Incoming {
        chat_id,
        from,
        date: DateTime::from_timestamp(at, 0).unwrap_or_default(),
        input,
    }
}

proptest! {
    #[test]
    fn classify_never_panics_on_arbitrary_bytes(raw in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = classify_json(&raw);
    }

    #[test]
    fn classify_and_step_never_panic_on_fixtures_with_bytes_flipped_cut_or_inserted(
        which in any::<prop::sample::Index>(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 1..6),
    ) {
        let fixtures = fixtures();
        let mut raw = fixtures[which.index(fixtures.len())].to_string().into_bytes();
        for (at, byte, op) in edits {
            if raw.is_empty() {
                break;
            }
            let i = at.index(raw.len());
            match op {
                0 => raw[i] = byte,
                1 => raw.truncate(i),
                _ => raw.insert(i, byte),
            }
        }
        if let Ok(Some(incoming)) = classify_json(&raw) {
            step_everywhere(&incoming);
        }
    }

    #[test]
    fn classify_and_step_never_panic_on_fixtures_with_a_field_replaced(
        which in any::<prop::sample::Index>(),
        path in prop::sample::select(vec![
            "/message/text", "/message/chat/id", "/message/chat/type", "/message/date",
            "/callback_query/data", "/callback_query/id", "/callback_query/message",
            "/callback_query/message/message_id", "/callback_query/message/date",
            "/callback_query/from", "/my_chat_member/new_chat_member/status",
        ]),
        value in prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::from),
            any::<String>().prop_map(Value::from),
            Just(serde_json::json!({})),
            Just(serde_json::json!([])),
        ],
    ) {
        let fixtures = fixtures();
        let mut v = fixtures[which.index(fixtures.len())].clone();
        if let Some(slot) = v.pointer_mut(path) {
            *slot = value;
        }
        if let Ok(Some(incoming)) = classify_json(v.to_string().as_bytes()) {
            step_everywhere(&incoming);
        }
    }

    /// Any state — including ones no step produces — any input, any pace, any data.
    #[test]
    fn step_never_panics_and_answers_every_press_exactly_once(
        state in state(),
        chat_id in any::<i64>(),
        from in prop::option::of(user()),
        at in any::<i64>(),
        input in input(),
        pace in pace(),
        data in scores(),
    ) {
        let incoming = incoming(chat_id, from, at, input);
        check_step(&state, &incoming, &Context { pace, data });
    }

    /// Random conversations from a new chat: the rules hold at every step of the states the
    /// bot actually reaches.
    #[test]
    fn conversations_keep_the_rules_at_every_step(
        steps in prop::collection::vec((player(), input(), pace()), 1..60),
    ) {
        let mut state = QuizState::default();
        for (i, (from, input, pace)) in steps.into_iter().enumerate() {
            // Presses that hit the running question often, so that quizzes get played.
            let input = match (input, state.running()) {
                (Input::Button { query_id, message_id, data }, Some(q)) if i % 4 != 0 => {
                    let option = data.len() % 4;
                    Input::Button { query_id, message_id, data: button_data(q.round, q.question, option) }
                }
                (input, _) => input,
            };
            let incoming = incoming(42, from, 1_764_756_000 + i as i64, input);
            state = check_step(&state, &incoming, &Context { pace, data: Scores::default() });

        }
    }
}
