//! Publishing the outbox: right after commit on the hot path, and by a relay that sweeps what a
//! crash left behind.
//!
//! Each row is published to `courier.outbound.<bot>.<chat>` with `Nats-Msg-Id = out:<id>`, so a
//! row published twice (live and by the relay) is stored once by JetStream inside its duplicate
//! window. Rows are marked published in batches by a background task, off the hot path.

use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use courier_common::{topology, CancellationToken};
use courier_proto::{
    v1::{outbound_message::Action, OutboundMessage, SendMessage},
    Message as _,
};
use futures::future::join_all;
use sqlx::PgPool;
use tokio::sync::mpsc;

use crate::store::{self, OutboxRow};

/// Publishes rows (all publishes in flight at once) and returns the ids JetStream acknowledged.
pub async fn publish(js: &jetstream::Context, bot_id: i64, rows: &[OutboxRow]) -> Vec<i64> {
    let acks = rows.iter().map(|row| async move {
        let msg = OutboundMessage {
            outbox_id: row.id,
            bot_id,
            chat_id: row.chat_id,
            origin_update_id: row.origin_update_id,
            created_at_unix_ms: row.created_at.timestamp_millis(),
            action: Some(Action::Send(SendMessage {
                text: row.text.clone(),
                parse_mode: String::new(),
            })),
        };
        let publish = PublishMessage::build()
            .message_id(topology::outbound_msg_id(row.id))
            .payload(msg.encode_to_vec().into());
        let subject = topology::outbound_subject(bot_id, row.chat_id);
        match js.send_publish(subject, publish).await {
            Ok(ack) => ack.await.map(|_| row.id).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    });
    let mut published = Vec::with_capacity(rows.len());
    for result in join_all(acks).await {
        match result {
            Ok(id) => published.push(id),
            Err(e) => tracing::warn!(error = %e, "outbox publish failed; the relay will retry"),
        }
    }
    published
}

/// Marks published rows in batches, so the hot path does not wait for that round trip.
pub fn spawn_marker(
    pool: PgPool,
) -> (mpsc::UnboundedSender<Vec<i64>>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<i64>>();
    let task = tokio::spawn(async move {
        while let Some(mut ids) = rx.recv().await {
            while let Ok(more) = rx.try_recv() {
                ids.extend(more);
                if ids.len() >= 1000 {
                    break;
                }
            }
            if let Err(e) = store::mark_published(&pool, &ids).await {
                // Not lost: the relay republishes unmarked rows, and JetStream drops the
                // duplicate inside its window.
                tracing::warn!(error = %e, count = ids.len(), "could not mark outbox rows published");
            }
        }
    });
    (tx, task)
}

/// Settings of the relay.
#[derive(Debug, Clone, Copy)]
pub struct RelaySettings {
    /// Time between sweeps.
    pub interval: Duration,
    /// Rows younger than this are left to the live path.
    pub grace: Duration,
}

/// Sweeps the outbox for rows a crash left unpublished, until `cancel` fires.
pub async fn relay(
    pool: PgPool,
    js: jetstream::Context,
    bot_id: i64,
    settings: RelaySettings,
    cancel: CancellationToken,
) {
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        match sweep(&pool, &js, bot_id, settings.grace).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(count = n, "relay republished outbox rows"),
            Err(e) => tracing::warn!(error = %e, "outbox relay sweep failed"),
        }
    }
}

/// One sweep; returns how many rows were published.
pub async fn sweep(
    pool: &PgPool,
    js: &jetstream::Context,
    bot_id: i64,
    grace: Duration,
) -> Result<usize, store::StoreError> {
    let mut tx = pool.begin().await?;
    let rows = store::unpublished(&mut tx, bot_id, grace.as_secs_f64(), 500).await?;
    if rows.is_empty() {
        tx.rollback().await?;
        return Ok(0);
    }
    let ids = publish(js, bot_id, &rows).await;
    sqlx::query("UPDATE outbox SET published_at = now() WHERE id = ANY($1)")
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(ids.len())
}
