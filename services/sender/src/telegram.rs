//! How the sender reads the Bot API's answers.

use std::time::Duration;

use teloxide_core::{ApiError, RequestError};

/// What to do after a failed Bot API call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Telegram asked us to wait (429 with `retry_after`): wait exactly that long, then resend.
    RetryAfter(Duration),
    /// Telegram is down or unreachable (5xx, timeouts, connection errors): back off and retry.
    Transient(String),
    /// The request can never succeed (400, 403): park it in the dead-letter stream.
    Permanent(String),
    /// 403 "bot was blocked by the user": park it and mark the chat blocked.
    Blocked(String),
    /// The group became a supergroup: resend to this chat id and remember the migration.
    MigrateTo(i64),
}

/// Classifies a teloxide-core error.
///
/// teloxide-core maps the error's description to [`ApiError`]; every named variant is a
/// 4xx ("Bad Request: …", "Forbidden: …", "Unauthorized"). Unknown descriptions are permanent
/// when they carry a 4xx prefix and transient otherwise (5xx answers such as "Internal Server
/// Error" or "Bad Gateway").
pub fn classify(err: &RequestError) -> Failure {
    match err {
        RequestError::RetryAfter(secs) => Failure::RetryAfter(secs.duration()),
        RequestError::Network(e) => Failure::Transient(format!("network: {e}")),
        RequestError::Io(e) => Failure::Transient(format!("io: {e}")),
        // A body that is not the Bot API's JSON: a proxy error page, a truncated answer.
        RequestError::InvalidJson { source, .. } => {
            Failure::Transient(format!("invalid response: {source}"))
        }
        RequestError::MigrateToChatId(to) => Failure::MigrateTo(to.0),
        RequestError::Api(ApiError::BotBlocked) => {
            Failure::Blocked(ApiError::BotBlocked.to_string())
        }
        RequestError::Api(ApiError::Unknown(desc)) => {
            let permanent = ["Bad Request", "Forbidden", "Unauthorized", "Not Found"]
                .iter()
                .any(|p| desc.starts_with(p));
            if permanent {
                Failure::Permanent(desc.clone())
            } else {
                Failure::Transient(desc.clone())
            }
        }
        RequestError::Api(api) => Failure::Permanent(api.to_string()),
    }
}

/// Telegram's description of a refused call ("Bad Request: …"), as it sent it; `None` when
/// the call got no answer from the Bot API (a network error, a body that is not the Bot
/// API's), a 429 or a migrated group.
pub fn description(err: &RequestError) -> Option<String> {
    match err {
        RequestError::Api(ApiError::Unknown(desc)) => Some(desc.clone()),
        RequestError::Api(api) => Some(api.to_string()),
        _ => None,
    }
}

/// The `result` label of a Bot API call that Telegram refused but that counts as done
/// ([`crate::actions::Call::already_done`]).
pub const NO_OP: &str = "no_op";

/// The `result` label of a failed Bot API call (`courier_sender_calls_total`): `rate_limited`
/// (429), `network` (no answer: connection, timeout, I/O), `server_error` (an answer that says
/// Telegram failed: 5xx, or a body that is not the Bot API's), `permanent` (Telegram refused
/// the request: 4xx, including a migrated group and a blocked bot).
pub fn call_result(err: &RequestError) -> &'static str {
    match err {
        RequestError::RetryAfter(_) => "rate_limited",
        RequestError::Network(_) | RequestError::Io(_) => "network",
        RequestError::InvalidJson { .. } => "server_error",
        _ => match classify(err) {
            Failure::Transient(_) => "server_error",
            _ => "permanent",
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use teloxide_core::types::Seconds;

    #[test]
    fn failed_calls_get_a_result_label() {
        assert_eq!(
            call_result(&RequestError::RetryAfter(Seconds::from_seconds(3))),
            "rate_limited"
        );
        assert_eq!(
            call_result(&RequestError::Io(std::sync::Arc::new(
                std::io::Error::other("reset")
            ))),
            "network"
        );
        assert_eq!(
            call_result(&RequestError::Api(ApiError::Unknown("Bad Gateway".into()))),
            "server_error"
        );
        assert_eq!(
            call_result(&RequestError::Api(ApiError::BotBlocked)),
            "permanent"
        );
        assert_eq!(
            call_result(&RequestError::MigrateToChatId(
                teloxide_core::types::ChatId(-1)
            )),
            "permanent"
        );
    }

    #[test]
    fn descriptions_are_telegrams_words() {
        assert_eq!(
            description(&RequestError::Api(ApiError::MessageToDeleteNotFound)).as_deref(),
            Some("Bad Request: message to delete not found")
        );
        assert_eq!(
            description(&RequestError::Api(ApiError::Unknown(
                "Bad Request: new".into()
            )))
            .as_deref(),
            Some("Bad Request: new")
        );
        assert_eq!(
            description(&RequestError::RetryAfter(Seconds::from_seconds(1))),
            None
        );
    }

    #[test]
    fn classifies_telegram_answers() {
        assert_eq!(
            classify(&RequestError::RetryAfter(Seconds::from_seconds(3))),
            Failure::RetryAfter(Duration::from_secs(3))
        );
        assert!(matches!(
            classify(&RequestError::Api(ApiError::BotBlocked)),
            Failure::Blocked(_)
        ));
        assert!(matches!(
            classify(&RequestError::Api(ApiError::BotKicked)),
            Failure::Permanent(_)
        ));
        assert_eq!(
            classify(&RequestError::MigrateToChatId(
                teloxide_core::types::ChatId(-1_007_700)
            )),
            Failure::MigrateTo(-1_007_700)
        );
        assert!(matches!(
            classify(&RequestError::Api(ApiError::ChatNotFound)),
            Failure::Permanent(_)
        ));
        assert!(matches!(
            classify(&RequestError::Api(ApiError::Unknown(
                "Internal Server Error".into()
            ))),
            Failure::Transient(_)
        ));
        assert!(matches!(
            classify(&RequestError::Api(ApiError::Unknown(
                "Bad Request: something new".into()
            ))),
            Failure::Permanent(_)
        ));
    }
}
