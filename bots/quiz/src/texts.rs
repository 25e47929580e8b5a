//! Everything the bot says, in one place. Texts sent with `parse_mode` HTML are built here,
//! and every piece of text not written here (a user's name, a question of the bank) goes
//! through [`escape_html`].

use courier_bot_api::{escape_html, UserInfo};

use crate::questions::Question;
use crate::{Quiz, QuizResult, Scores};

pub(crate) const HELP: &str = "I ask five multiple-choice questions; tap the answer you think \
is right.\n\n\
/quiz - start a quiz (or start over)\n\
/stop - end the quiz you're playing\n\
/score - your last and best results\n\
/help - show this message";

pub(crate) const SLOW_DOWN: &str =
    "You're sending too fast; please wait a few seconds. What you send meanwhile is ignored.";

pub(crate) const NOTHING_TO_STOP: &str = "There's no quiz to stop. Send /quiz to start one.";

pub(crate) const ANONYMOUS_SCORE: &str =
    "I keep scores for users, and this message has no user I could look up. See /help.";

pub(crate) const NOT_IN_QUIZ: &str =
    "I only play quizzes. Send /quiz to start one, or /help to see what I can do.";

pub(crate) const USE_THE_BUTTONS: &str =
    "Tap one of the buttons under the question to answer, or send /stop to end the quiz.";

// Answers to button presses that do nothing (toasts: at most 200 characters).
pub(crate) const UNKNOWN_BUTTON: &str = "This button doesn't do anything (any more).";
pub(crate) const NO_QUIZ: &str = "This quiz is over. Send /quiz to play again.";
pub(crate) const OLD_ROUND: &str = "This button belongs to an earlier quiz.";
pub(crate) const ANSWERED: &str = "You've already answered this question.";
pub(crate) const NOT_YOUR_QUIZ: &str =
    "This is someone else's quiz. Send /quiz when it's over to play your own.";

pub(crate) fn welcome(from: Option<&UserInfo>) -> String {
    let hello = match from {
        Some(user) if !user.first_name.is_empty() => {
            format!("Hi, <b>{}</b>!", escape_html(&user.first_name))
        }
        _ => "Hi!".to_owned(),
    };
    format!(
        "{hello} I'm the quiz bot: five questions, and you tap the answer you think is right.\n\n\
         /quiz - start a quiz\n\
         /stop - end it\n\
         /score - your last and best results\n\
         /help - the commands"
    )
}

pub(crate) fn unknown_command(name: &str) -> String {
    format!("I don't know the command /{name}. Send /help to see what I can do.")
}

pub(crate) fn stopped(answered: u32, total: u32) -> String {
    format!(
        "Quiz stopped after {answered} of {total} questions; unfinished quizzes aren't scored. \
         Send /quiz to start a new one."
    )
}

/// The toast a right or wrong answer gets.
pub(crate) fn verdict_toast(asked: &Question, right: bool) -> String {
    if right {
        "✅ Correct!".to_owned()
    } else {
        format!("❌ It was {}.", asked.right_option())
    }
}

/// The line above the next question (or the final score) about the previous answer.
fn verdict_line((asked, right): (&Question, bool)) -> String {
    if right {
        "✅ Correct!".to_owned()
    } else {
        format!("❌ It was <b>{}</b>.", escape_html(asked.right_option()))
    }
}

/// The question message (HTML): the previous answer's verdict, if any, then the question.
pub(crate) fn question(
    quiz: &Quiz,
    asked: &Question,
    previous: Option<(&Question, bool)>,
) -> String {
    let mut out = String::new();
    if let Some(v) = previous {
        out.push_str(&verdict_line(v));
        out.push_str("\n\n");
    }
    out.push_str(&format!(
        "<b>Question {} of {}</b> · score {}\n{}",
        quiz.question + 1,
        quiz.total(),
        quiz.score,
        escape_html(asked.text)
    ));
    out
}

/// The question message once the last question is answered (HTML).
pub(crate) fn final_score(score: u32, total: u32, last: (&Question, bool)) -> String {
    let remark = if score == total {
        "Perfect!"
    } else if score * 5 >= total * 3 {
        "Well done!"
    } else {
        "Better luck next time!"
    };
    format!(
        "{}\n\n<b>Quiz over!</b> You scored <b>{score} of {total}</b>. {remark}\n\
         Send /quiz to play again, /score to see your results.",
        verdict_line(last)
    )
}

/// `/score` (HTML), with the times in italics.
pub(crate) fn scores(user: &UserInfo, scores: &Scores) -> String {
    let (Some(last), Some(best)) = (&scores.last, &scores.best) else {
        return "You haven't finished a quiz yet. Send /quiz to play one.".to_owned();
    };
    let whose = if user.first_name.is_empty() {
        "Your results:".to_owned()
    } else {
        format!("Your results, <b>{}</b>:", escape_html(&user.first_name))
    };
    let line = |what: &str, r: &QuizResult| {
        format!(
            "{what}: <b>{} of {}</b>, <i>{}</i>",
            r.score,
            r.total,
            r.finished_at.format("%Y-%m-%d %H:%M UTC")
        )
    };
    format!(
        "{whose}\n{}\n{}\nQuizzes finished: {}",
        line("Last", last),
        line("Best", best),
        scores.finished
    )
}
