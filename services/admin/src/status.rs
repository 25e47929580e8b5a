//! `Status`: the pipeline at a glance, read from where each part keeps its state.
//!
//! | figure | source |
//! |--------|--------|
//! | workers | keys `<bot>.<worker id>` of the `COURIER_WORKERS` bucket (heartbeat time as value) |
//! | partitions per worker | `courier_worker::assign::assign` over those members: the computation every worker makes |
//! | per-partition pending / ack-pending | consumer info of `courier-worker-<bot>-p<N>` |
//! | outbound backlog | consumer info of `courier-sender-<bot>`; unpublished `outbox` rows |
//! | active sender | key `bot_<id>` of `courier_sender_leases` (the holder, or `released`) |
//! | budget use | `sent_messages` rows sent in the last 60 s ÷ 60 ÷ the bot's rate (`COURIER_ADMIN_BOT_RATE`) |
//! | dead letters | `COURIER_DLQ` message counts per subject `courier.dlq.<bot>.<stage>` |
//! | updates/s | `processed_updates` rows of the last 60 s ÷ 60 |
//!
//! Each figure is read independently (no snapshot across them). A part that cannot be read
//! fails the call with UNAVAILABLE and says which.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use async_nats::jetstream::kv;
use courier_common::topology;
use futures::{StreamExt, TryStreamExt};
use tonic::Status;

use courier_proto::admin::v1 as pb;

use crate::Ctx;

fn unavailable(what: &str) -> impl Fn(String) -> Status + '_ {
    move |e| Status::unavailable(format!("{what}: {e}"))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Builds the whole status.
pub async fn status(ctx: &Ctx) -> Result<pb::StatusResponse, Status> {
    let (workers, owners) = workers(ctx).await?;
    let partitions = partitions(ctx, &owners).await?;
    let outbound = outbound(ctx).await?;
    let sender = sender(ctx).await?;
    let dead_letters = dead_letter_counts(ctx).await?;
    let updates_last_minute: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM processed_updates
         WHERE bot_id = $1 AND processed_at > now() - interval '60 seconds'",
    )
    .bind(ctx.bot_id)
    .fetch_one(&ctx.pool)
    .await
    .map_err(|e| unavailable("PostgreSQL (processed_updates)")(e.to_string()))?;
    let pause = crate::pause::state(ctx).await?;
    Ok(pb::StatusResponse {
        bot_id: ctx.bot_id,
        partition_count: ctx.partitions,
        workers,
        partitions,
        outbound: Some(outbound),
        sender: Some(sender),
        dead_letters: Some(dead_letters),
        throughput: Some(pb::Throughput {
            updates_last_minute: updates_last_minute as u64,
            updates_per_second: updates_last_minute as f64 / 60.0,
        }),
        pause: Some(pause),
    })
}

/// The live workers and the owner of each partition.
async fn workers(ctx: &Ctx) -> Result<(Vec<pb::Worker>, Vec<String>), Status> {
    let mut beats: HashMap<String, i64> = HashMap::new();
    if let Ok(store) = ctx
        .js
        .get_key_value(courier_worker::membership::BUCKET)
        .await
    {
        let prefix = format!("{}.", ctx.bot_id);
        let keys: Vec<String> = store
            .keys()
            .await
            .map_err(|e| unavailable("worker membership")(e.to_string()))?
            .try_collect()
            .await
            .map_err(|e| unavailable("worker membership")(e.to_string()))?;
        for key in keys {
            let Some(id) = key.strip_prefix(&prefix) else {
                continue;
            };
            let at = store
                .get(&key)
                .await
                .ok()
                .flatten()
                .and_then(|v| std::str::from_utf8(&v).ok()?.parse::<i64>().ok())
                .unwrap_or(0);
            beats.insert(id.to_owned(), at);
        }
    }
    let members: Vec<String> = beats.keys().cloned().collect();
    let mut owners = vec![String::new(); ctx.partitions as usize];
    let mut workers = Vec::new();
    if let Some((sorted, owner_of)) = courier_worker::assign::assign(&members, ctx.partitions) {
        for (p, &i) in owner_of.iter().enumerate() {
            owners[p] = sorted[i].clone();
        }
        let now = now_ms();
        for (i, id) in sorted.iter().enumerate() {
            workers.push(pb::Worker {
                id: id.clone(),
                partitions: owner_of
                    .iter()
                    .enumerate()
                    .filter(|(_, &o)| o == i)
                    .map(|(p, _)| p as u32)
                    .collect(),
                heartbeat_age_ms: (now - beats.get(id).copied().unwrap_or(now)).max(0) as u64,
            });
        }
    }
    Ok((workers, owners))
}

async fn partitions(ctx: &Ctx, owners: &[String]) -> Result<Vec<pb::Partition>, Status> {
    let stream = ctx
        .js
        .get_stream(topology::UPDATES_STREAM)
        .await
        .map_err(|e| unavailable("updates stream")(e.to_string()))?;
    let infos = futures::stream::iter(0..ctx.partitions)
        .map(|p| {
            let stream = &stream;
            async move {
                let name = courier_worker::partitions::consumer_name(ctx.bot_id, p);
                (p, stream.consumer_info(&name).await)
            }
        })
        .buffered(8)
        .collect::<Vec<_>>()
        .await;
    Ok(infos
        .into_iter()
        .map(|(p, info)| match info {
            Ok(i) => pb::Partition {
                partition: p,
                owner: owners.get(p as usize).cloned().unwrap_or_default(),
                pending: i.num_pending,
                ack_pending: i.num_ack_pending as u64,
                redelivered: i.num_redelivered as u64,
                consumer_exists: true,
            },
            Err(_) => pb::Partition {
                partition: p,
                owner: owners.get(p as usize).cloned().unwrap_or_default(),
                consumer_exists: false,
                ..Default::default()
            },
        })
        .collect())
}

async fn outbound(ctx: &Ctx) -> Result<pb::Outbound, Status> {
    let stream = ctx
        .js
        .get_stream(topology::OUTBOUND_STREAM)
        .await
        .map_err(|e| unavailable("outbound stream")(e.to_string()))?;
    let info = stream
        .consumer_info(courier_sender::consumer_name(ctx.bot_id))
        .await
        .ok();
    let unpublished: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM outbox WHERE bot_id = $1 AND published_at IS NULL",
    )
    .bind(ctx.bot_id)
    .fetch_one(&ctx.pool)
    .await
    .map_err(|e| unavailable("PostgreSQL (outbox)")(e.to_string()))?;
    Ok(pb::Outbound {
        pending: info.as_ref().map_or(0, |i| i.num_pending),
        ack_pending: info.as_ref().map_or(0, |i| i.num_ack_pending as u64),
        unpublished_outbox: unpublished as u64,
        consumer_exists: info.is_some(),
    })
}

/// The lease holder: `(holder, "held" | "released" | "none")`.
pub async fn lease_holder(ctx: &Ctx) -> Result<(String, &'static str), Status> {
    let Ok(store) = ctx.js.get_key_value(courier_sender::lease::BUCKET).await else {
        return Ok((String::new(), "none"));
    };
    let entry = store
        .entry(format!("bot_{}", ctx.bot_id))
        .await
        .map_err(|e| unavailable("sender lease")(e.to_string()))?;
    Ok(match entry {
        Some(e) if e.operation == kv::Operation::Put => {
            if e.value.as_ref() == b"released" {
                (String::new(), "released")
            } else {
                (String::from_utf8_lossy(&e.value).into_owned(), "held")
            }
        }
        _ => (String::new(), "none"),
    })
}

async fn sender(ctx: &Ctx) -> Result<pb::Sender, Status> {
    let (active, lease) = lease_holder(ctx).await?;
    let sent: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sent_messages
         WHERE bot_id = $1 AND outcome = 'sent' AND sent_at > now() - interval '60 seconds'",
    )
    .bind(ctx.bot_id)
    .fetch_one(&ctx.pool)
    .await
    .map_err(|e| unavailable("PostgreSQL (sent_messages)")(e.to_string()))?;
    let per_second = sent as f64 / 60.0;
    Ok(pb::Sender {
        active,
        lease: lease.into(),
        sent_last_minute: sent as u64,
        sends_per_second: per_second,
        budget_use: per_second / ctx.bot_rate,
    })
}

/// Dead letters of this bot, by stage.
pub async fn dead_letter_counts(ctx: &Ctx) -> Result<pb::DeadLetterCounts, Status> {
    let stream = ctx
        .js
        .get_stream(topology::DLQ_STREAM)
        .await
        .map_err(|e| unavailable("dead-letter stream")(e.to_string()))?;
    let mut subjects = stream
        .info_with_subjects(format!("courier.dlq.{}.>", ctx.bot_id))
        .await
        .map_err(|e| unavailable("dead-letter stream")(e.to_string()))?;
    let mut counts = pb::DeadLetterCounts::default();
    while let Some((subject, n)) = subjects
        .try_next()
        .await
        .map_err(|e| unavailable("dead-letter stream")(e.to_string()))?
    {
        let n = n as u64;
        counts.total += n;
        if subject == topology::dlq_subject(ctx.bot_id, "updates") {
            counts.updates += n;
        } else if subject == topology::dlq_subject(ctx.bot_id, "outbound") {
            counts.outbound += n;
        }
    }
    Ok(counts)
}
