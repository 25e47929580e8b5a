//! The sandbox's metrics (`GET /metrics`): the Bot API requests it answered, its webhook
//! deliveries, its 429s.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

/// The Bot API methods the sandbox knows, as Telegram spells them; any other is `other` (a
/// label value must not come from the client as it is).
const METHODS: [&str; 14] = [
    "getMe",
    "logOut",
    "close",
    "setWebhook",
    "deleteWebhook",
    "getWebhookInfo",
    "getUpdates",
    "sendMessage",
    "editMessageText",
    "sendChatAction",
    "answerCallbackQuery",
    "setMyCommands",
    "getMyCommands",
    "deleteMyCommands",
];

/// The label of a method name as requested (case-insensitive, as the Bot API's).
pub(crate) fn method_label(requested: &str) -> &'static str {
    METHODS
        .iter()
        .find(|m| m.eq_ignore_ascii_case(requested))
        .copied()
        .unwrap_or("other")
}

/// How a webhook delivery ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delivery {
    /// The bot answered 2xx.
    Ok,
    /// The bot answered another status.
    Rejected,
    /// No answer: connection refused, timeout, reset.
    Failed,
}

/// The sandbox's metrics; clones share the values.
#[derive(Clone, Debug)]
pub(crate) struct Metrics {
    api_requests: Family<RequestLabels, Counter>,
    deliveries: Family<ResultLabel, Counter>,
    rate_limited: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let deliveries = Family::<ResultLabel, Counter>::default();
        // Present from the start, at 0.
        for result in ["ok", "rejected", "failed"] {
            drop(deliveries.get_or_create(&ResultLabel { result }));
        }
        Self {
            api_requests: Family::default(),
            deliveries,
            rate_limited: Counter::default(),
        }
    }
}

impl Metrics {
    pub(crate) fn register(&self, registry: &mut Registry) {
        registry.register(
            "courier_sandbox_api_requests",
            "Bot API requests the sandbox answered, by method and HTTP status.",
            self.api_requests.clone(),
        );
        registry.register(
            "courier_sandbox_webhook_deliveries",
            "Webhook deliveries to the bot, by result (ok, rejected, failed).",
            self.deliveries.clone(),
        );
        registry.register(
            "courier_sandbox_rate_limited",
            "429 answers (rate limits or injected faults).",
            self.rate_limited.clone(),
        );
    }

    /// A Bot API request was answered with `status`.
    pub(crate) fn answered(&self, method: &str, status: u16) {
        let method = method_label(method);
        self.api_requests
            .get_or_create(&RequestLabels { method, status })
            .inc();
        if status == 429 {
            self.rate_limited.inc();
        }
    }

    /// A webhook delivery ended.
    pub(crate) fn delivered(&self, how: Delivery) {
        let result = match how {
            Delivery::Ok => "ok",
            Delivery::Rejected => "rejected",
            Delivery::Failed => "failed",
        };
        self.deliveries.get_or_create(&ResultLabel { result }).inc();
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn method_labels_are_telegrams_spelling_or_other() {
        assert_eq!(super::method_label("sendmessage"), "sendMessage");
        assert_eq!(super::method_label("SENDMESSAGE"), "sendMessage");
        assert_eq!(super::method_label("getMe"), "getMe");
        assert_eq!(super::method_label("sendPhoto"), "other");
        assert_eq!(super::method_label("x".repeat(500).as_str()), "other");
    }
}
