//! The JetStream topology: stream, subject and consumer names, and their idempotent creation.
//!
//! Streams are created when missing and *checked* when present: a stream whose subjects or
//! partition count differ from what this deployment expects is refused with a clear error
//! rather than silently changed.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::jetstream::{self, stream};

/// Stream of inbound updates: `courier.updates.<bot>.<partition>.<chat>`.
pub const UPDATES_STREAM: &str = "COURIER_UPDATES";
/// Stream of outbound messages: `courier.outbound.<bot>.<chat>`.
pub const OUTBOUND_STREAM: &str = "COURIER_OUTBOUND";
/// Dead letters: `courier.dlq.<bot>.<stage>`.
pub const DLQ_STREAM: &str = "COURIER_DLQ";
/// Metadata key of the updates stream that records the partition count.
pub const PARTITIONS_METADATA_KEY: &str = "courier.partitions";
/// How long JetStream remembers a `Nats-Msg-Id` to drop a duplicate publish.
pub const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);

/// Subject of one inbound update.
pub fn update_subject(bot_id: i64, partition: u32, chat_id: i64) -> String {
    format!("courier.updates.{bot_id}.{partition}.{chat_id}")
}

/// Filter matching every update of a bot.
pub fn updates_filter(bot_id: i64) -> String {
    format!("courier.updates.{bot_id}.>")
}

/// Filter matching one partition of a bot's updates.
pub fn partition_filter(bot_id: i64, partition: u32) -> String {
    format!("courier.updates.{bot_id}.{partition}.>")
}

/// `Nats-Msg-Id` of an inbound update: JetStream drops a second publish of it within its
/// duplicate window. The fingerprint tells a retry (same bytes) from a reused update id.
pub fn update_msg_id(bot_id: i64, update_id: i64, fingerprint: u64) -> String {
    format!("{bot_id}:{update_id}:{fingerprint:016x}")
}

/// The fingerprint of an update's raw bytes: FNV-1a 64. Stable forever (it is stored in
/// `processed_updates`), so written out here rather than taken from a crate.
pub fn update_fingerprint(update_json: &[u8]) -> u64 {
    crate::partition::fnv1a64(update_json)
}

/// Subject of one outbound message.
pub fn outbound_subject(bot_id: i64, chat_id: i64) -> String {
    format!("courier.outbound.{bot_id}.{chat_id}")
}

/// Filter matching every outbound message of a bot.
pub fn outbound_filter(bot_id: i64) -> String {
    format!("courier.outbound.{bot_id}.>")
}

/// `Nats-Msg-Id` of an outbound message: the bot and its outbox row id, `out:<bot>:<id>`.
///
/// The bot is part of it because outbox ids are only unique within one bot's database: two
/// bots sharing NATS, each with its own database, both have a row 1, and with `out:<id>` the
/// second bot's message would be dropped as a duplicate of the first's. Messages published as
/// `out:<id>` by a worker from before this change are not recognised as duplicates of the same
/// row republished as `out:<bot>:<id>` (only possible inside the duplicate window around an
/// upgrade, for a row whose mark was lost): the sender's ledger (`sent_messages`, by bot and
/// outbox id) skips the second copy, as it does for a republish after the window.
pub fn outbound_msg_id(bot_id: i64, outbox_id: i64) -> String {
    format!("out:{bot_id}:{outbox_id}")
}

/// Subject of a dead letter; `stage` is `updates` or `outbound`.
pub fn dlq_subject(bot_id: i64, stage: &str) -> String {
    format!("courier.dlq.{bot_id}.{stage}")
}

/// Header on a dead letter that says why it is there.
pub const DLQ_REASON_HEADER: &str = "Courier-Dlq-Reason";

/// A stream exists with settings this deployment cannot work with.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    /// Talking to JetStream failed.
    #[error("JetStream: {0}")]
    JetStream(String),
    /// The stream exists with other settings.
    #[error("stream {stream} exists with {what}; expected {expected}. Fix the configuration or migrate the stream deliberately")]
    Mismatch {
        /// The stream.
        stream: &'static str,
        /// What was found.
        what: String,
        /// What was expected.
        expected: String,
    },
}

fn js_err(e: impl std::fmt::Display) -> TopologyError {
    TopologyError::JetStream(e.to_string())
}

/// The desired configuration of each stream.
pub fn stream_configs(partitions: u32) -> Vec<stream::Config> {
    let base = |name: &str, subject: &str, max_age: Duration| stream::Config {
        name: name.to_owned(),
        subjects: vec![subject.to_owned()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        max_age,
        duplicate_window: DUPLICATE_WINDOW,
        allow_direct: true,
        ..Default::default()
    };
    let mut updates = base(
        UPDATES_STREAM,
        "courier.updates.>",
        Duration::from_secs(7 * 86400),
    );
    updates.metadata =
        HashMap::from([(PARTITIONS_METADATA_KEY.to_owned(), partitions.to_string())]);
    vec![
        updates,
        base(
            OUTBOUND_STREAM,
            "courier.outbound.>",
            Duration::from_secs(7 * 86400),
        ),
        base(DLQ_STREAM, "courier.dlq.>", Duration::from_secs(30 * 86400)),
    ]
}

/// Creates the streams that are missing and checks the ones that exist.
pub async fn ensure_streams(js: &jetstream::Context, partitions: u32) -> Result<(), TopologyError> {
    for want in stream_configs(partitions) {
        let name: &'static str = match want.name.as_str() {
            UPDATES_STREAM => UPDATES_STREAM,
            OUTBOUND_STREAM => OUTBOUND_STREAM,
            _ => DLQ_STREAM,
        };
        let mut stream = js
            .get_or_create_stream(want.clone())
            .await
            .map_err(js_err)?;
        let info = stream.info().await.map_err(js_err)?;
        let have = &info.config;
        if have.subjects != want.subjects {
            return Err(TopologyError::Mismatch {
                stream: name,
                what: format!("subjects {:?}", have.subjects),
                expected: format!("{:?}", want.subjects),
            });
        }
        if let Some(p) = want.metadata.get(PARTITIONS_METADATA_KEY) {
            let found = have.metadata.get(PARTITIONS_METADATA_KEY);
            if found != Some(p) {
                return Err(TopologyError::Mismatch {
                    stream: name,
                    what: format!("{PARTITIONS_METADATA_KEY}={found:?}"),
                    expected: format!("COURIER_PARTITIONS={p}"),
                });
            }
        }
        if !have.allow_direct {
            return Err(TopologyError::Mismatch {
                stream: name,
                what: "allow_direct=false".into(),
                expected: "allow_direct=true".into(),
            });
        }
    }
    Ok(())
}

/// Publishes `payload` to the dead-letter stream with its reason and source subject, and
/// waits for JetStream's acknowledgement. `false` when it was not stored (the caller must then
/// keep the original message unacknowledged, so it is redelivered rather than lost).
pub async fn publish_dead_letter(
    js: &jetstream::Context,
    bot_id: i64,
    stage: &str,
    source_subject: &str,
    payload: bytes::Bytes,
    reason: &str,
) -> bool {
    let publish = jetstream::message::PublishMessage::build()
        .header(DLQ_REASON_HEADER, reason.replace(['\r', '\n'], " "))
        .header(DLQ_SOURCE_HEADER, source_subject)
        .payload(payload);
    match js.send_publish(dlq_subject(bot_id, stage), publish).await {
        Ok(ack) => ack.await.is_ok(),
        Err(_) => false,
    }
}

/// Header on a dead letter that names the subject it came from.
pub const DLQ_SOURCE_HEADER: &str = "Courier-Dlq-Source";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_have_the_documented_shape() {
        assert_eq!(
            update_subject(42, 7, -100123),
            "courier.updates.42.7.-100123"
        );
        assert_eq!(update_msg_id(42, 9, 0xab), "42:9:00000000000000ab");
        assert_eq!(update_fingerprint(b""), 0xcbf2_9ce4_8422_2325);
        assert_ne!(
            update_fingerprint(b"{\"a\":1}"),
            update_fingerprint(b"{\"a\":2}")
        );
        assert_eq!(outbound_subject(42, 5), "courier.outbound.42.5");
        assert_eq!(outbound_msg_id(42, 17), "out:42:17");
        assert_eq!(partition_filter(42, 3), "courier.updates.42.3.>");
        let cfgs = stream_configs(8);
        assert_eq!(cfgs[0].metadata[PARTITIONS_METADATA_KEY], "8");
        assert!(cfgs.iter().all(|c| c.allow_direct));
    }
}
