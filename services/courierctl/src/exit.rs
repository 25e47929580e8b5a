//! Exit codes, and what a failed call turns into.

use tonic::Code;

/// Everything went well.
pub const OK: i32 = 0;
/// Any other failure (the server failed the call, a replay left letters failed).
pub const OTHER: i32 = 1;
/// Bad usage: an unknown command or flag, or an argument the server refused
/// (INVALID_ARGUMENT).
pub const USAGE: i32 = 2;
/// No token, or the wrong one (UNAUTHENTICATED).
pub const UNAUTHENTICATED: i32 = 3;
/// The admin API cannot be reached, or it cannot reach NATS, PostgreSQL or Telegram
/// (UNAVAILABLE, DEADLINE_EXCEEDED).
pub const UNREACHABLE: i32 = 4;
/// What was asked for does not exist (an unknown chat, a dead letter id that is not there).
pub const NOT_FOUND: i32 = 5;
/// Done, but not confirmed: the active sender did not confirm a pause in time.
pub const NOT_CONFIRMED: i32 = 6;
/// A broadcast finished, but not every recipient got it: some messages failed (the user had
/// blocked the bot, Telegram refused the text), or it was cancelled.
pub const INCOMPLETE: i32 = 7;

/// A failure with its exit code.
#[derive(Debug)]
pub struct Failure {
    /// The exit code.
    pub code: i32,
    /// What to print.
    pub message: String,
}

impl Failure {
    /// A failure with `code`.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// A usage failure.
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(USAGE, message)
    }
}

impl From<tonic::Status> for Failure {
    fn from(s: tonic::Status) -> Self {
        let (code, hint) = match s.code() {
            Code::Unauthenticated => (
                UNAUTHENTICATED,
                " (set COURIER_ADMIN_TOKEN or --token to courier-admin's token)",
            ),
            Code::Unavailable | Code::DeadlineExceeded => (UNREACHABLE, ""),
            Code::NotFound => (NOT_FOUND, ""),
            Code::InvalidArgument => (USAGE, ""),
            _ => (OTHER, ""),
        };
        let what = match s.code() {
            Code::Unauthenticated => "unauthenticated",
            Code::Unavailable => "unavailable",
            Code::DeadlineExceeded => "timed out",
            Code::NotFound => "not found",
            Code::InvalidArgument => "refused",
            _ => "failed",
        };
        Self::new(code, format!("{what}: {}{hint}", s.message()))
    }
}

/// Whether a call that failed with `s` may succeed if made again (courier-admin restarting,
/// a connection broken mid-stream), as opposed to a refusal that will not change.
pub fn retryable(s: &tonic::Status) -> bool {
    matches!(
        s.code(),
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::Unknown
            | Code::Internal
            | Code::Cancelled
            | Code::Aborted
    )
}

/// An error with its sources, one after another (`a: b: c`).
pub fn source_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut next = e.source();
    while let Some(s) = next {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        next = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_the_documented_exit_codes() {
        let code = |c: Code| Failure::from(tonic::Status::new(c, "x")).code;
        assert_eq!(code(Code::Unauthenticated), UNAUTHENTICATED);
        assert_eq!(code(Code::Unavailable), UNREACHABLE);
        assert_eq!(code(Code::DeadlineExceeded), UNREACHABLE);
        assert_eq!(code(Code::NotFound), NOT_FOUND);
        assert_eq!(code(Code::InvalidArgument), USAGE);
        assert_eq!(code(Code::Internal), OTHER);
    }

    #[test]
    fn refusals_are_not_retried_and_breaks_are() {
        let retry = |c: Code| retryable(&tonic::Status::new(c, "x"));
        assert!(retry(Code::Unavailable) && retry(Code::Unknown) && retry(Code::Internal));
        assert!(!retry(Code::Unauthenticated) && !retry(Code::NotFound));
        assert!(!retry(Code::InvalidArgument) && !retry(Code::AlreadyExists));
    }
}
