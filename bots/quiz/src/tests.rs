//! The state machine, row by row of the table in the crate's docs, without a database.

use super::*;
use chrono::TimeZone;
use courier_bot_api::{escape_html, parse_command, Bot, ButtonAction};

const CHAT: i64 = 7;
const QUERY: &str = "q-1";
const MSG: i64 = 4242;

fn user() -> UserInfo {
    UserInfo {
        id: 7,
        first_name: "Ada".into(),
        last_name: None,
        username: Some("ada".into()),
    }
}

fn at() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 12, 3, 10, 0, 0).unwrap()
}

fn incoming(input: Input) -> Incoming<Input> {
    Incoming {
        chat_id: CHAT,
        from: Some(user()),
        date: at(),
        input,
    }
}

fn msg(text: &str) -> Incoming<Input> {
    incoming(parse_command(text).map_or(Input::Other, Input::Command))
}

fn press_data(data: &str) -> Incoming<Input> {
    incoming(Input::Button {
        query_id: QUERY.into(),
        message_id: MSG,
        data: data.into(),
    })
}

fn ctx() -> Context {
    Context::default()
}

fn with_pace(pace: Pace) -> Context {
    Context {
        pace,
        ..Context::default()
    }
}

fn idle(rounds: u32) -> QuizState {
    QuizState::Idle { rounds }
}

/// A quiz of round 3 at question `question` with `score` right answers so far.
fn in_quiz(question: u32, score: u32) -> QuizState {
    QuizState::InQuiz(Quiz {
        round: 3,
        order: vec![0, 1, 2, 3, 4],
        question,
        score,
        player: Some(7),
    })
}

fn quiz(state: &QuizState) -> &Quiz {
    state.running().expect("a running quiz")
}

/// The press of option `option` on the question being asked.
fn press(state: &QuizState, option: usize) -> Incoming<Input> {
    let q = quiz(state);
    press_data(&button_data(q.round, q.question, option))
}

fn right_option(state: &QuizState) -> usize {
    quiz(state).current().answer
}

fn wrong_option(state: &QuizState) -> usize {
    (right_option(state) + 1) % quiz(state).current().options.len()
}

fn sends(t: &Transition) -> Vec<&Outgoing> {
    t.effects
        .iter()
        .filter_map(|e| match e {
            Effect::Send(o) => Some(o),
            _ => None,
        })
        .collect()
}

/// The texts of the plain `sendMessage`s.
fn replies(t: &Transition) -> Vec<&str> {
    sends(t)
        .into_iter()
        .filter_map(|o| match o {
            Outgoing::Send(m) => Some(m.text.as_str()),
            _ => None,
        })
        .collect()
}

fn answer_of(text: Option<&str>) -> Effect<Write> {
    Effect::Send(Outgoing::AnswerCallback(AnswerCallback {
        chat_id: CHAT,
        callback_query_id: QUERY.into(),
        text: text.map(str::to_owned),
        show_alert: false,
    }))
}

fn callback_data(k: &InlineKeyboard) -> Vec<Vec<String>> {
    k.rows
        .iter()
        .map(|row| {
            row.iter()
                .map(|b| match &b.action {
                    ButtonAction::Callback(d) => d.clone(),
                    other => panic!("{other:?}"),
                })
                .collect()
        })
        .collect()
}

#[test]
fn start_welcomes_by_escaped_name_and_subscribes_in_any_state() {
    for state in [idle(0), in_quiz(2, 1)] {
        let mut m = msg("/start");
        m.from.as_mut().unwrap().first_name = "<b>&".into();
        let t = step(&state, &m, &ctx());
        assert_eq!(t.state, state);
        let [Effect::Send(Outgoing::Send(welcome)), subscribe] = &t.effects[..] else {
            panic!("{:?}", t.effects)
        };
        assert_eq!(
            *subscribe,
            Effect::Subscribe {
                chat_id: CHAT,
                subscribed: true
            }
        );
        assert_eq!(welcome.parse_mode, Some(ParseMode::Html));
        assert!(
            welcome.text.starts_with("Hi, <b>&lt;b&gt;&amp;</b>!"),
            "{}",
            welcome.text
        );
        for cmd in ["/quiz", "/score", "/stop", "/help"] {
            assert!(welcome.text.contains(cmd), "{cmd}");
        }
    }
    let mut m = msg("/start");
    m.from = None;
    assert!(replies(&step(&idle(0), &m, &ctx()))[0].starts_with("Hi! "));
}

#[test]
fn help_lists_the_commands_and_keeps_the_state() {
    for state in [idle(0), in_quiz(1, 0)] {
        let t = step(&state, &msg("/help@quiz_bot"), &ctx());
        assert_eq!(t.state, state);
        let r = replies(&t);
        assert_eq!(r.len(), 1);
        for cmd in ["/quiz", "/score", "/stop", "/help"] {
            assert!(r[0].contains(cmd), "{cmd}");
        }
    }
}

#[test]
fn quiz_shows_typing_then_question_one_with_its_buttons_under_a_key() {
    let t = step(&idle(0), &msg("/quiz"), &ctx());
    let QuizState::InQuiz(q) = &t.state else {
        panic!("{:?}", t.state)
    };
    // A chat's first round is numbered by the time of its /quiz (see `next_round`).
    let first = at().timestamp() as u32;
    assert_eq!(
        q,
        &Quiz {
            round: first,
            order: questions::pick(CHAT, first, at().timestamp()),
            question: 0,
            score: 0,
            player: Some(7),
        }
    );
    let [Outgoing::ChatAction {
        chat_id: CHAT,
        action: ChatAction::Typing,
    }, Outgoing::Send(question)] = &sends(&t)[..]
    else {
        panic!("{:?}", t.effects)
    };
    assert_eq!(t.effects.len(), 2);
    assert_eq!(question.key.as_deref(), Some(QUESTION_KEY));
    assert_eq!(question.parse_mode, Some(ParseMode::Html));
    let asked = q.current();
    assert!(
        question
            .text
            .starts_with("<b>Question 1 of 5</b> · score 0\n"),
        "{}",
        question.text
    );
    assert!(question.text.ends_with(&escape_html(asked.text)));
    let keyboard = question.keyboard.as_ref().expect("buttons");
    let labels: Vec<&str> = keyboard.rows.iter().map(|r| r[0].text.as_str()).collect();
    assert_eq!(labels, asked.options);
    let want: Vec<Vec<String>> = (0..asked.options.len())
        .map(|i| vec![format!("q:{first}:0:{i}")])
        .collect();
    assert_eq!(callback_data(keyboard), want);
}

#[test]
fn after_a_reset_a_new_round_never_matches_the_buttons_of_rounds_before_it() {
    // Rounds played, then the chat reset (its state is the default again).
    let before = step(&idle(0), &msg("/quiz"), &ctx());
    let old = quiz(&before.state).round;
    let mut later = msg("/quiz");
    later.date = at() + chrono::Duration::days(3);
    let after = step(&QuizState::default(), &later, &ctx());
    assert!(
        quiz(&after.state).round > old,
        "{old} then {:?}",
        after.state
    );
    // A press on the old round's question (a message too old to delete keeps its buttons).
    let stale = press(&before.state, right_option(&before.state));
    let t = step(&after.state, &stale, &ctx());
    assert_eq!(
        t.state, after.state,
        "the new quiz is not answered by an old button"
    );
}

#[test]
fn the_next_quiz_is_the_next_round_and_the_order_depends_on_chat_and_time() {
    let t = step(&idle(41), &msg("/quiz"), &ctx());
    assert_eq!(quiz(&t.state).round, 42);
    let mut later = msg("/quiz");
    later.date = at() + chrono::Duration::seconds(1);
    let orders: std::collections::BTreeSet<Vec<u8>> = (0..10)
        .map(|s| {
            let mut m = later.clone();
            m.date += chrono::Duration::seconds(s);
            quiz(&step(&idle(41), &m, &ctx()).state).order.clone()
        })
        .collect();
    assert!(orders.len() > 1, "the order varies with the date");
    assert_eq!(
        step(&idle(41), &msg("/quiz"), &ctx()),
        t,
        "and is the same on a replay"
    );
}

#[test]
fn quiz_during_a_quiz_deletes_the_old_question_and_starts_the_next_round() {
    let t = step(&in_quiz(2, 2), &msg("/quiz"), &ctx());
    assert_eq!(quiz(&t.state).round, 4);
    assert_eq!((quiz(&t.state).question, quiz(&t.state).score), (0, 0));
    let s = sends(&t);
    assert_eq!(
        s[0],
        &Outgoing::Delete {
            chat_id: CHAT,
            message: MessageRef::Key(QUESTION_KEY.into())
        }
    );
    assert!(matches!(s[1], Outgoing::ChatAction { .. }));
    assert!(matches!(s[2], Outgoing::Send(m) if m.key.as_deref() == Some(QUESTION_KEY)));
}

#[test]
fn a_right_answer_is_answered_and_edits_the_message_to_the_next_question() {
    let state = in_quiz(1, 1);
    let t = step(&state, &press(&state, right_option(&state)), &ctx());
    let next = quiz(&t.state);
    assert_eq!((next.round, next.question, next.score), (3, 2, 2));
    assert_eq!(t.effects[0], answer_of(Some("✅ Correct!")));
    let Effect::Send(Outgoing::Edit(edit)) = &t.effects[1] else {
        panic!("{:?}", t.effects)
    };
    assert_eq!(t.effects.len(), 2);
    assert_eq!(edit.message, MessageRef::Id(MSG));
    assert_eq!(edit.parse_mode, Some(ParseMode::Html));
    assert!(
        edit.text
            .starts_with("✅ Correct!\n\n<b>Question 3 of 5</b> · score 2\n"),
        "{}",
        edit.text
    );
    let data = callback_data(edit.keyboard.as_ref().expect("the next question's buttons"));
    assert!(
        data.iter().flatten().all(|d| d.starts_with("q:3:2:")),
        "{data:?}"
    );
}

#[test]
fn a_wrong_answer_names_the_right_one() {
    let state = in_quiz(0, 0);
    let asked = quiz(&state).current();
    let t = step(&state, &press(&state, wrong_option(&state)), &ctx());
    assert_eq!(quiz(&t.state).score, 0);
    assert_eq!(quiz(&t.state).question, 1);
    let toast = format!("❌ It was {}.", asked.right_option());
    assert_eq!(t.effects[0], answer_of(Some(&toast)));
    let Effect::Send(Outgoing::Edit(edit)) = &t.effects[1] else {
        panic!("{:?}", t.effects)
    };
    let line = format!(
        "❌ It was <b>{}</b>.\n\n",
        escape_html(asked.right_option())
    );
    assert!(edit.text.starts_with(&line), "{}", edit.text);
}

#[test]
fn the_last_answer_shows_the_final_score_without_buttons_records_it_and_ends_the_quiz() {
    let state = in_quiz(4, 3);
    let t = step(&state, &press(&state, right_option(&state)), &ctx());
    assert_eq!(t.state, idle(3), "the round number is kept");
    assert_eq!(t.effects[0], answer_of(Some("✅ Correct!")));
    let Effect::Send(Outgoing::Edit(edit)) = &t.effects[1] else {
        panic!("{:?}", t.effects)
    };
    assert_eq!(edit.keyboard, None);
    assert_eq!(edit.message, MessageRef::Id(MSG));
    assert!(edit.text.contains("<b>4 of 5</b>"), "{}", edit.text);
    assert_eq!(
        t.effects[2],
        Effect::Write(Write::Finished {
            chat_id: CHAT,
            user_id: 7,
            score: 4,
            total: 5
        })
    );
    assert_eq!(t.effects.len(), 3);
}

/// Plays a whole quiz by pressing the buttons the bot sent, as a user would.
fn play(always_right: bool) -> (Vec<Transition>, QuizState) {
    let mut t = step(&idle(0), &msg("/quiz"), &ctx());
    let mut steps = Vec::new();
    let mut state = t.state.clone();
    while let Some(q) = state.running() {
        let option = if always_right {
            right_option(&state)
        } else {
            wrong_option(&state)
        };
        let keyboard = match sends(&t).last() {
            Some(Outgoing::Send(m)) => m.keyboard.clone(),
            Some(Outgoing::Edit(e)) => e.keyboard.clone(),
            other => panic!("{other:?}"),
        };
        let data = callback_data(&keyboard.expect("buttons"))[option][0].clone();
        assert_eq!(data, button_data(q.round, q.question, option));
        t = step(&state, &press_data(&data), &ctx());
        state = t.state.clone();
        steps.push(t.clone());
    }
    (steps, state)
}

#[test]
fn a_whole_quiz_played_on_the_buttons_scores_every_answer() {
    for (always_right, score) in [(true, 5), (false, 0)] {
        let (steps, end) = play(always_right);
        assert_eq!(steps.len(), questions::QUESTIONS_PER_ROUND);
        assert_eq!(end, idle(at().timestamp() as u32));
        let last = steps.last().unwrap();
        assert_eq!(
            last.effects.last(),
            Some(&Effect::Write(Write::Finished {
                chat_id: CHAT,
                user_id: 7,
                score,
                total: 5
            }))
        );
        let writes = steps
            .iter()
            .flat_map(|t| &t.effects)
            .filter(|e| matches!(e, Effect::Write(_)))
            .count();
        assert_eq!(writes, 1, "one result per quiz");
    }
    let (steps, _) = play(true);
    let Effect::Send(Outgoing::Edit(edit)) = &steps.last().unwrap().effects[1] else {
        panic!()
    };
    assert!(edit.text.contains("5 of 5</b>. Perfect!"), "{}", edit.text);
}

#[test]
fn stale_buttons_get_only_an_answer_saying_why() {
    let state = in_quiz(2, 1);
    let right = right_option(&state);
    let cases = [
        (idle(3), button_data(3, 2, right), texts::NO_QUIZ),
        (state.clone(), button_data(2, 2, right), texts::OLD_ROUND),
        (state.clone(), button_data(3, 1, 0), texts::ANSWERED),
        (state.clone(), button_data(3, 3, 0), texts::ANSWERED),
        (state.clone(), button_data(3, 2, 4), texts::UNKNOWN_BUTTON),
        (state.clone(), "q:3:2".into(), texts::UNKNOWN_BUTTON),
        (state.clone(), "q:3:2:1:0".into(), texts::UNKNOWN_BUTTON),
        (state.clone(), "q:x:2:1".into(), texts::UNKNOWN_BUTTON),
        (state.clone(), "vote:yes".into(), texts::UNKNOWN_BUTTON),
        (state.clone(), String::new(), texts::UNKNOWN_BUTTON),
    ];
    for (state, data, why) in cases {
        let t = step(&state, &press_data(&data), &ctx());
        assert_eq!(t.state, state, "{data}");
        assert_eq!(t.effects, vec![answer_of(Some(why))], "{data}");
    }
}

#[test]
fn in_a_group_only_the_player_answers_unless_an_anonymous_admin_started_it() {
    let state = in_quiz(0, 0);
    let mut other = press(&state, right_option(&state));
    other.from.as_mut().unwrap().id = 8;
    let t = step(&state, &other, &ctx());
    assert_eq!(t.state, state);
    assert_eq!(t.effects, vec![answer_of(Some(texts::NOT_YOUR_QUIZ))]);

    let mut start = msg("/quiz");
    start.from.as_mut().unwrap().id = 1_087_968_824;
    let t = step(&idle(0), &start, &ctx());
    assert_eq!(quiz(&t.state).player, None);
    let mut state = QuizState::InQuiz(Quiz {
        question: 4,
        ..quiz(&t.state).clone()
    });
    state = step(&state, &press(&state, right_option(&state)), &ctx()).state;
    assert_eq!(state, idle(at().timestamp() as u32));
    let mut anyone = in_quiz(4, 0);
    if let QuizState::InQuiz(q) = &mut anyone {
        q.player = None;
    }
    let mut m = press(&anyone, 0);
    m.from.as_mut().unwrap().id = 99;
    let t = step(&anyone, &m, &ctx());
    assert!(
        t.effects
            .iter()
            .any(|e| matches!(e, Effect::Write(Write::Finished { user_id: 99, .. }))),
        "recorded for whoever finished it: {:?}",
        t.effects
    );
}

#[test]
fn stop_during_a_quiz_deletes_the_question_by_its_key_and_confirms() {
    let t = step(&in_quiz(2, 1), &msg("/stop"), &ctx());
    assert_eq!(t.state, idle(3));
    assert_eq!(
        sends(&t)[0],
        &Outgoing::Delete {
            chat_id: CHAT,
            message: MessageRef::Key(QUESTION_KEY.into())
        }
    );
    let r = replies(&t);
    assert_eq!(r.len(), 1);
    assert!(
        r[0].contains("after 2 of 5") && r[0].contains("/quiz"),
        "{}",
        r[0]
    );
    assert!(!t.effects.iter().any(|e| matches!(e, Effect::Write(_))));
    // The stopped quiz's buttons are stale now.
    let t = step(&t.state, &press_data(&button_data(3, 2, 0)), &ctx());
    assert_eq!(t.effects, vec![answer_of(Some(texts::NO_QUIZ))]);
}

#[test]
fn stop_when_idle_explains() {
    let t = step(&idle(3), &msg("/stop"), &ctx());
    assert_eq!(t.state, idle(3));
    assert_eq!(replies(&t), vec![texts::NOTHING_TO_STOP]);
    assert_eq!(t.effects.len(), 1);
}

#[test]
fn score_reads_the_results_and_shows_them_with_times_in_italics() {
    let m = msg("/score");
    assert!(needs_scores(&m));
    assert!(QuizBot.needs_read(&m));
    assert!(!needs_scores(&msg("/quiz")));
    let mut anonymous = m.clone();
    anonymous.from = None;
    assert!(!needs_scores(&anonymous));

    let day = |d| Utc.with_ymd_and_hms(2026, 12, d, 10, 0, 0).unwrap();
    let ctx = Context {
        pace: Pace::Within,
        data: Scores {
            last: Some(QuizResult {
                score: 3,
                total: 5,
                finished_at: day(3),
            }),
            best: Some(QuizResult {
                score: 5,
                total: 5,
                finished_at: day(1),
            }),
            finished: 7,
        },
    };
    for state in [idle(2), in_quiz(1, 1)] {
        let t = step(&state, &m, &ctx);
        assert_eq!(t.state, state);
        let [Effect::Send(Outgoing::Send(s))] = &t.effects[..] else {
            panic!("{:?}", t.effects)
        };
        assert_eq!(s.parse_mode, Some(ParseMode::Html));
        assert_eq!(
            s.text,
            "Your results, <b>Ada</b>:\n\
             Last: <b>3 of 5</b>, <i>2026-12-03 10:00 UTC</i>\n\
             Best: <b>5 of 5</b>, <i>2026-12-01 10:00 UTC</i>\n\
             Quizzes finished: 7"
        );
    }
    let t = step(&idle(0), &m, &Context::default());
    assert!(replies(&t)[0].contains("haven't finished a quiz"));
    let t = step(&idle(0), &anonymous, &Context::default());
    assert_eq!(replies(&t), vec![texts::ANONYMOUS_SCORE]);
}

#[test]
fn score_escapes_the_name() {
    let mut m = msg("/score");
    m.from.as_mut().unwrap().first_name = "<b>&".into();
    let r = QuizResult {
        score: 1,
        total: 5,
        finished_at: at(),
    };
    let ctx = Context {
        pace: Pace::Within,
        data: Scores {
            last: Some(r),
            best: Some(r),
            finished: 1,
        },
    };
    let t = step(&idle(0), &m, &ctx);
    assert!(replies(&t)[0].starts_with("Your results, <b>&lt;b&gt;&amp;</b>:"));
}

#[test]
fn unknown_commands_and_other_messages_get_fallbacks() {
    for state in [idle(0), in_quiz(1, 0)] {
        let t = step(&state, &msg("/frobnicate now"), &ctx());
        assert_eq!(t.state, state);
        let r = replies(&t);
        assert!(
            r[0].contains("/frobnicate") && r[0].contains("/help"),
            "{r:?}"
        );
    }
    let t = step(&idle(0), &msg("hello"), &ctx());
    assert_eq!(replies(&t), vec![texts::NOT_IN_QUIZ]);
    let t = step(&in_quiz(1, 0), &msg("Mercury"), &ctx());
    assert_eq!(replies(&t), vec![texts::USE_THE_BUTTONS]);
    assert_eq!(t.state, in_quiz(1, 0), "typing the answer does not answer");
}

#[test]
fn blocking_and_unblocking_are_recorded_at_any_pace_and_never_counted() {
    for blocked in [true, false] {
        let m = incoming(Input::BotBlocked(blocked));
        assert_eq!(QuizBot.counted_as(&m), None);
        for pace in [Pace::Within, Pace::SlowDown, Pace::Over] {
            let t = step(&in_quiz(1, 0), &m, &with_pace(pace));
            assert_eq!(t.state, in_quiz(1, 0));
            assert_eq!(
                t.effects,
                vec![Effect::SetBlocked {
                    chat_id: CHAT,
                    blocked
                }]
            );
        }
    }
    assert_eq!(QuizBot.counted_as(&msg("/quiz")), Some(7));
    assert_eq!(QuizBot.counted_as(&press_data("x")), Some(7));
}

#[test]
fn over_the_flood_budget_one_slow_down_then_nothing_but_presses_are_always_answered() {
    for state in [idle(0), in_quiz(1, 0)] {
        for text in ["/start", "/quiz", "/stop", "/score", "hello"] {
            let t = step(&state, &msg(text), &with_pace(Pace::SlowDown));
            assert_eq!(t.state, state, "{text}");
            assert_eq!(
                t.effects,
                vec![Effect::reply(CHAT, texts::SLOW_DOWN)],
                "{text}"
            );
            let t = step(&state, &msg(text), &with_pace(Pace::Over));
            assert_eq!((&t.state, &t.effects[..]), (&state, &[][..]), "{text}");
        }
        let right = button_data(3, 1, 0);
        let t = step(&state, &press_data(&right), &with_pace(Pace::SlowDown));
        assert_eq!(t.state, state);
        assert_eq!(t.effects, vec![answer_of(Some(texts::SLOW_DOWN))]);
        let t = step(&state, &press_data(&right), &with_pace(Pace::Over));
        assert_eq!(t.state, state);
        assert_eq!(t.effects, vec![answer_of(None)]);
    }
}

#[test]
fn state_is_tagged_json_and_a_quiz_the_bank_cannot_continue_counts_as_none() {
    let v = serde_json::to_value(in_quiz(1, 0)).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"state": "InQuiz", "round": 3, "order": [0, 1, 2, 3, 4],
                           "question": 1, "score": 0, "player": 7})
    );
    assert_eq!(
        serde_json::from_value::<QuizState>(v).unwrap(),
        in_quiz(1, 0)
    );
    assert_eq!(
        serde_json::to_value(QuizState::default()).unwrap(),
        serde_json::json!({"state": "Idle", "rounds": 0})
    );
    let bare: QuizState = serde_json::from_str(r#"{"state":"Idle"}"#).unwrap();
    assert_eq!(bare, idle(0));

    let broken = QuizState::InQuiz(Quiz {
        round: 3,
        order: vec![0, 200],
        question: 1,
        score: 0,
        player: None,
    });
    assert_eq!(broken.running(), None);
    let t = step(&broken, &press_data(&button_data(3, 1, 0)), &ctx());
    assert_eq!(t.effects, vec![answer_of(Some(texts::NO_QUIZ))]);
    let t = step(&broken, &msg("/quiz"), &ctx());
    assert_eq!(quiz(&t.state).round, 4, "the round count goes on");
    assert!(
        !sends(&t)
            .iter()
            .any(|o| matches!(o, Outgoing::Delete { .. })),
        "nothing to delete"
    );
}

#[test]
fn button_data_fits_telegram_s_64_bytes() {
    let longest = button_data(u32::MAX, u32::MAX, usize::MAX);
    assert!(longest.len() <= 64, "{} bytes", longest.len());
    assert_eq!(parse_button(&button_data(1, 2, 3)), Some((1, 2, 3)));
}

#[test]
fn questions_are_escaped_in_their_html() {
    let romeo = BANK
        .iter()
        .position(|q| q.text.contains('"'))
        .expect("a question with quotes") as u8;
    let state = QuizState::InQuiz(Quiz {
        round: 1,
        order: vec![romeo, 0, 1, 2, 3],
        question: 0,
        score: 0,
        player: Some(7),
    });
    let text = texts::question(quiz(&state), quiz(&state).current(), None);
    assert!(text.contains("&quot;Romeo and Juliet&quot;"), "{text}");
}

#[test]
fn the_bot_is_named_quiz_and_brings_its_migrations() {
    assert_eq!(QuizBot.name(), "quiz");
    let versions: Vec<i64> = QuizBot
        .migrations()
        .expect("migrations")
        .iter()
        .map(|m| m.version)
        .collect();
    assert!(!versions.is_empty());
    assert!(
        versions.iter().all(|&v| v > 20_261_203_000_002),
        "after Courier's: {versions:?}"
    );
}
