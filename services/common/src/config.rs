//! Configuration shared by the services, from environment variables and matching flags.
//!
//! Every service flattens the argument groups it needs into its own `clap` parser, so
//! `--help` lists every variable and a bad value is refused at start-up with a message that
//! names the variable.

use std::time::Duration;

use clap::Args;

use crate::secret::{AdminToken, BotToken, WebhookSecret};

/// Development values, used only when `COURIER_DEV=1` (or `--dev`) and the variable is unset.
pub mod dev {
    /// The development bot token (the sandbox accepts it).
    pub const BOT_TOKEN: &str = "100001:courier-dev-token";
    /// The development webhook secret.
    pub const WEBHOOK_SECRET: &str = "courier-dev-secret";
    /// The development admin API token (`courierctl --token`).
    pub const ADMIN_TOKEN: &str = "courier-dev-admin-token";
}

/// A configuration value that is missing or wrong; the message names the variable.
#[derive(Debug, thiserror::Error)]
#[error("{var}: {reason}")]
pub struct ConfigError {
    /// The environment variable (or flag) at fault.
    pub var: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

impl ConfigError {
    fn new(var: &'static str, reason: impl Into<String>) -> Self {
        Self {
            var,
            reason: reason.into(),
        }
    }
}

/// Where NATS is.
#[derive(Debug, Clone, Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma separated.
    #[arg(
        long = "nats-url",
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
    /// Number of partitions of the updates stream (fixed per deployment; checked against the
    /// stream's metadata at start-up).
    #[arg(long = "partitions", env = "COURIER_PARTITIONS", default_value_t = crate::partition::DEFAULT_PARTITIONS,
          value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub partitions: u32,
}

impl NatsArgs {
    /// Connects, retrying in the background while the server is not up yet, so a service can
    /// start before NATS and report not-ready meanwhile.
    pub async fn connect(&self, name: &str) -> Result<async_nats::Client, ConfigError> {
        async_nats::ConnectOptions::new()
            .name(name)
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(2))
            .connect(self.nats_url.as_str())
            .await
            .map_err(|e| ConfigError::new("NATS_URL", e.to_string()))
    }
}

/// The bot's secrets, with the development escape hatch.
#[derive(Debug, Clone, Args)]
pub struct SecretArgs {
    /// The bot token from BotFather (`<bot id>:<secret>`). Required unless `COURIER_DEV=1`.
    #[arg(long = "bot-token", env = "COURIER_BOT_TOKEN", hide_env_values = true)]
    pub bot_token: Option<String>,
    /// Development mode: missing secrets fall back to documented development values.
    /// Never set this in production.
    #[arg(long = "dev", env = "COURIER_DEV", default_value_t = false, value_parser = clap::builder::BoolishValueParser::new())]
    pub dev: bool,
}

impl SecretArgs {
    /// The validated bot token.
    pub fn bot_token(&self) -> Result<BotToken, ConfigError> {
        resolve(
            "COURIER_BOT_TOKEN",
            self.bot_token.as_deref(),
            self.dev,
            dev::BOT_TOKEN,
            BotToken::parse,
        )
    }
}

/// The webhook secret (ingress and the sandbox need it).
#[derive(Debug, Clone, Args)]
pub struct WebhookSecretArgs {
    /// The secret Telegram sends in `X-Telegram-Bot-Api-Secret-Token` (1-256 of A-Z a-z 0-9 _ -).
    /// Required unless `COURIER_DEV=1`.
    #[arg(
        long = "webhook-secret",
        env = "COURIER_WEBHOOK_SECRET",
        hide_env_values = true
    )]
    pub webhook_secret: Option<String>,
}

impl WebhookSecretArgs {
    /// The validated webhook secret.
    pub fn webhook_secret(&self, dev_mode: bool) -> Result<WebhookSecret, ConfigError> {
        resolve(
            "COURIER_WEBHOOK_SECRET",
            self.webhook_secret.as_deref(),
            dev_mode,
            dev::WEBHOOK_SECRET,
            WebhookSecret::parse,
        )
    }
}

/// The admin API's bearer token (courier-admin).
#[derive(Debug, Clone, Args)]
pub struct AdminTokenArgs {
    /// The bearer token every admin API call must carry (`authorization: Bearer <token>`;
    /// 16-512 visible ASCII characters). Required unless `COURIER_DEV=1`.
    #[arg(
        long = "admin-token",
        env = "COURIER_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
}

impl AdminTokenArgs {
    /// The validated admin token.
    pub fn admin_token(&self, dev_mode: bool) -> Result<AdminToken, ConfigError> {
        resolve(
            "COURIER_ADMIN_TOKEN",
            self.admin_token.as_deref(),
            dev_mode,
            dev::ADMIN_TOKEN,
            AdminToken::parse,
        )
    }
}

fn resolve<T, E: std::fmt::Display>(
    var: &'static str,
    value: Option<&str>,
    dev_mode: bool,
    dev_value: &str,
    parse: impl Fn(&str) -> Result<T, E>,
) -> Result<T, ConfigError> {
    match value.filter(|v| !v.is_empty()) {
        Some(v) => parse(v).map_err(|e| ConfigError::new(var, e.to_string())),
        None if dev_mode => {
            tracing::warn!("{var} is not set; using the development value (COURIER_DEV=1)");
            parse(dev_value).map_err(|e| ConfigError::new(var, e.to_string()))
        }
        None => Err(ConfigError::new(
            var,
            "is required (set it, or set COURIER_DEV=1 to use the development value)",
        )),
    }
}

/// Parses a duration given in milliseconds (`250`) or with a unit (`250ms`, `5s`, `2m`, `1h`,
/// `7d`).
pub fn parse_duration(raw: &str) -> Result<Duration, String> {
    let raw = raw.trim();
    let (num, unit) = raw
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| raw.split_at(i))
        .unwrap_or((raw, "ms"));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{raw}` is not a duration such as 500ms, 5s, 2m, 1h or 7d"))?;
    let secs = |per: u64| {
        n.checked_mul(per)
            .map(Duration::from_secs)
            .ok_or_else(|| format!("`{raw}` is too long"))
    };
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86400),
        _ => Err(format!("`{raw}`: use ms, s, m, h or d as the unit")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_secret_is_refused_unless_dev() {
        let args = SecretArgs {
            bot_token: None,
            dev: false,
        };
        let err = args.bot_token().unwrap_err();
        assert_eq!(err.var, "COURIER_BOT_TOKEN");
        assert!(err
            .to_string()
            .starts_with("COURIER_BOT_TOKEN: is required"));
        let dev = SecretArgs {
            bot_token: None,
            dev: true,
        };
        assert_eq!(dev.bot_token().unwrap().bot_id(), 100001);
    }

    #[test]
    fn malformed_secret_names_the_variable() {
        let args = WebhookSecretArgs {
            webhook_secret: Some("bad secret".into()),
        };
        let err = args.webhook_secret(true).unwrap_err();
        assert!(
            err.to_string().starts_with("COURIER_WEBHOOK_SECRET:"),
            "{err}"
        );
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("3s").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("x").is_err());
        assert_eq!(parse_duration("5h").unwrap(), Duration::from_secs(5 * 3600));
        assert_eq!(
            parse_duration("7d").unwrap(),
            Duration::from_secs(7 * 86400)
        );
        assert!(parse_duration("5w").is_err());
        assert!(parse_duration("99999999999999999d").is_err());
    }
}
