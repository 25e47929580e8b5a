//! Secrets that never print: the bot token, the webhook secret and the admin API's token.

use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

/// Errors found while parsing a secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    /// The bot token is not of the form `<bot id>:<secret>`.
    #[error("a bot token has the form <numeric bot id>:<secret>, as BotFather gives it")]
    MalformedToken,
    /// The webhook secret breaks Telegram's rules for `secret_token`.
    #[error("a webhook secret is 1-256 characters of A-Z, a-z, 0-9, _ and - (Telegram's rule for secret_token)")]
    MalformedWebhookSecret,
    /// The admin token is too short or has characters a header cannot carry.
    #[error("an admin token is 16-512 visible ASCII characters (no spaces), e.g. from `openssl rand -hex 32`")]
    MalformedAdminToken,
}

/// A Telegram bot token, `<bot id>:<secret>`. `Debug` prints only the bot id.
#[derive(Clone)]
pub struct BotToken {
    bot_id: i64,
    token: SecretString,
}

impl BotToken {
    /// Parses a token as BotFather hands it out.
    pub fn parse(raw: &str) -> Result<Self, SecretError> {
        let raw = raw.trim();
        let (id, rest) = raw.split_once(':').ok_or(SecretError::MalformedToken)?;
        let bot_id: i64 = id.parse().map_err(|_| SecretError::MalformedToken)?;
        if bot_id <= 0 || rest.is_empty() || rest.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(SecretError::MalformedToken);
        }
        Ok(Self {
            bot_id,
            token: SecretString::from(raw.to_owned()),
        })
    }

    /// The bot's numeric id: the part of the token before the colon. Not a secret.
    pub fn bot_id(&self) -> i64 {
        self.bot_id
    }

    /// The whole token, for the one place that needs it (the Bot API client).
    pub fn expose(&self) -> &str {
        self.token.expose_secret()
    }
}

impl std::fmt::Debug for BotToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BotToken({}:[REDACTED])", self.bot_id)
    }
}

/// The value of Telegram's `X-Telegram-Bot-Api-Secret-Token` header. `Debug` prints nothing of it.
#[derive(Clone)]
pub struct WebhookSecret(SecretString);

impl WebhookSecret {
    /// Parses a secret by Telegram's rule for `setWebhook`'s `secret_token`.
    pub fn parse(raw: &str) -> Result<Self, SecretError> {
        if raw.is_empty()
            || raw.len() > 256
            || !raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(SecretError::MalformedWebhookSecret);
        }
        Ok(Self(SecretString::from(raw.to_owned())))
    }

    /// Compares a received header value with the secret in constant time (for equal lengths;
    /// the length itself is not secret enough to matter: Telegram allows 1-256 characters).
    pub fn matches(&self, candidate: &[u8]) -> bool {
        self.0.expose_secret().as_bytes().ct_eq(candidate).into()
    }

    /// The secret itself, for the one place that needs it (registering the webhook).
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret([REDACTED])")
    }
}

/// The admin API's bearer token (`COURIER_ADMIN_TOKEN`). `Debug` prints nothing of it.
#[derive(Clone)]
pub struct AdminToken {
    /// `Bearer <token>`: the whole `authorization` value a caller must send.
    bearer: SecretString,
}

impl AdminToken {
    /// Parses a token: 16-512 visible ASCII characters, so that it fits in a header.
    pub fn parse(raw: &str) -> Result<Self, SecretError> {
        if !(16..=512).contains(&raw.len()) || !raw.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(SecretError::MalformedAdminToken);
        }
        Ok(Self {
            bearer: SecretString::from(format!("Bearer {raw}")),
        })
    }

    /// Whether an `authorization` header value is `Bearer <token>`, compared in constant time
    /// (for equal lengths; a token's length is not worth hiding).
    pub fn matches_bearer(&self, header: &[u8]) -> bool {
        self.bearer.expose_secret().as_bytes().ct_eq(header).into()
    }

    /// The `authorization` value to send (`Bearer <token>`), for the one place that needs it
    /// (the client).
    pub fn bearer(&self) -> &str {
        self.bearer.expose_secret()
    }
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken([REDACTED])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_parses_bot_id_and_hides_secret() {
        let t = BotToken::parse("123456:AAE-secret_part").unwrap();
        assert_eq!(t.bot_id(), 123456);
        assert_eq!(t.expose(), "123456:AAE-secret_part");
        let dbg = format!("{t:?}");
        assert!(!dbg.contains("secret_part"), "{dbg}");
    }

    #[test]
    fn malformed_tokens_are_refused() {
        for bad in ["", "abc", "123", "123:", "x:abc", "-5:abc", "12:a b"] {
            assert_eq!(
                BotToken::parse(bad).unwrap_err(),
                SecretError::MalformedToken,
                "{bad}"
            );
        }
    }

    #[test]
    fn webhook_secret_follows_telegram_rules_and_compares() {
        let s = WebhookSecret::parse("Abc_def-123").unwrap();
        assert!(s.matches(b"Abc_def-123"));
        assert!(!s.matches(b"Abc_def-124"));
        assert!(!s.matches(b"Abc_def-12"));
        assert!(!s.matches(b""));
        assert!(!format!("{s:?}").contains("Abc"));
        for bad in ["", "has space", "semi;colon", &"a".repeat(257)] {
            assert!(WebhookSecret::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn admin_token_matches_only_its_bearer_header() {
        let t = AdminToken::parse("0123456789abcdef-token").unwrap();
        assert!(t.matches_bearer(b"Bearer 0123456789abcdef-token"));
        assert!(!t.matches_bearer(b"Bearer 0123456789abcdef-tokex"));
        assert!(!t.matches_bearer(b"0123456789abcdef-token"));
        assert!(!t.matches_bearer(b""));
        assert!(!format!("{t:?}").contains("0123"));
        for bad in ["short", "has a space in it here", &"a".repeat(513)] {
            assert!(AdminToken::parse(bad).is_err(), "{bad}");
        }
    }
}
