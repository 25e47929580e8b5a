//! One outbound message, from its lane to its ack: the ledger's verdict, the calls of its
//! action ([`crate::actions`]) each through the pause gate, the breaker, its budget and the
//! lease, Telegram's answer read by [`crate::telegram::classify`], the ledger row, then the
//! ack (or the dead letter).
//!
//! Per call: `bot_api_call` span (method = the Bot API method), `courier_sender_calls_total`;
//! 429 pauses the bot for `retry_after` and the call is made again; 5xx and network errors
//! back off; a refusal parks the message in `COURIER_DLQ` ("bot was blocked by the user" also
//! marks the chat blocked); `migrate_to_chat_id` re-targets; a refusal that means the call
//! has nothing left to do counts as done ([`Call::already_done`]). A message's references
//! to earlier messages (`MessageRef.key`) are resolved from the ledger just before the call,
//! in the chat the call goes to.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use courier_common::{backoff::Backoff, topology, trace};
use courier_proto::{
    v1::{outbound_message::Action, OutboundMessage},
    Message as _,
};
use serde::Serialize;
use teloxide_core::{
    payloads::{AnswerCallbackQuerySetters, EditMessageTextSetters, SendMessageSetters},
    prelude::Requester,
    requests::{JsonRequest, Payload, Request as _},
    types::{CallbackQueryId, ChatId, MessageId, ReplyParameters, True},
    Bot, RequestError,
};
use tracing::Instrument;

use crate::actions::{self, Budget, Call, MessageRef};
use crate::ledger::{self, Record};
use crate::metrics::MessageOutcome;
use crate::telegram::{self, Failure};
use crate::{Ctx, Held};

/// Sends one outbound message under its span (`send`), which continues the trace of the
/// update that caused it (the `traceparent` header the worker's publish wrote).
pub(crate) async fn handle(ctx: Arc<Ctx>, held: Held) {
    let span = tracing::info_span!(
        "send",
        otel.kind = "consumer",
        bot_id = ctx.bot_id,
        chat_id = tracing::field::Empty,
        outbox_id = tracing::field::Empty,
        update_id = tracing::field::Empty,
        stream_seq = held.msg.info().map(|i| i.stream_sequence).ok(),
        outcome = tracing::field::Empty,
    );
    trace::follow(&span, held.msg.headers.as_ref());
    deliver(ctx, held).instrument(span).await
}

/// What became of one call.
enum Done {
    /// Telegram did it (or had done it already): the ledger row is committed.
    Recorded,
    /// The message was parked or the term ended: stop here (the message is settled or
    /// will be handed back).
    Stop,
}

/// Makes every call of one outbound message not done yet, then acknowledges it. Returning
/// without settling hands it back (nak) when the sender stops.
async fn deliver(ctx: Arc<Ctx>, held: Held) {
    if ctx.cancel.is_cancelled() {
        return;
    }
    let span = tracing::Span::current();
    let out = match OutboundMessage::decode(held.msg.payload.clone()) {
        Ok(out) => out,
        Err(e) => {
            dead_letter(&ctx, held, &format!("undecodable outbound message: {e}")).await;
            return;
        }
    };
    span.record("chat_id", out.chat_id);
    span.record("outbox_id", out.outbox_id);
    span.record("update_id", out.origin_update_id);
    let plan = actions::plan(out.action.as_ref());
    let bot_id = ctx.bot_id;
    let Some(before) = db_retry(&ctx, "ledger lookup", || {
        ledger::before(&ctx.lookups, bot_id, out.outbox_id, out.chat_id)
    })
    .await
    else {
        return;
    };
    let parts = plan.as_ref().map_or(1, |p| p.calls.len());
    let first_open = (0..parts as i32).find(|i| !before.done_parts.contains(i));
    let Some(first_open) = first_open.filter(|_| !before.settled) else {
        ctx.stats.duplicates_skipped.fetch_add(1, Ordering::Relaxed);
        ctx.metrics.message(MessageOutcome::Duplicate);
        tracing::info!(outbox_id = out.outbox_id, "already done (ledger); skipped");
        span.record("outcome", "duplicate");
        held.ack().await;
        return;
    };
    if before.blocked {
        ctx.stats.skipped_blocked.fetch_add(1, Ordering::Relaxed);
        ctx.metrics.message(MessageOutcome::SkippedBlocked);
        tracing::info!(
            outbox_id = out.outbox_id,
            chat_id = out.chat_id,
            "chat blocked the bot; skipped"
        );
        let recorded = db_retry(&ctx, "ledger record", || {
            ledger::record(
                &ctx.ledger,
                row(&ctx, &out, first_open, out.chat_id, "skipped_blocked"),
            )
        })
        .await;
        if recorded.is_some() {
            span.record("outcome", "skipped_blocked");
            held.ack().await;
        }
        return;
    }
    let plan = match plan {
        Ok(plan) => plan,
        Err(refused) => {
            park(&ctx, held, &out, first_open, out.chat_id, &refused.0).await;
            return;
        }
    };
    let mut target = before.migrated_to.unwrap_or(out.chat_id);
    if before.migrated_to.is_some() {
        ctx.stats.migrated.fetch_add(1, Ordering::Relaxed);
    }
    let mut held = Some(held);
    let last = plan.calls.len() - 1;
    for (i, call) in plan.calls.iter().enumerate() {
        let part = i as i32;
        if before.done_parts.contains(&part) {
            continue;
        }
        let key = if i == last { plan.key.as_deref() } else { None };
        match make_call(&ctx, &mut held, &out, part, call, key, &mut target).await {
            Done::Recorded => {}
            Done::Stop => return,
        }
    }
    let Some(held) = held else {
        return;
    };
    ctx.stats.messages_sent.fetch_add(1, Ordering::Relaxed);
    span.record("outcome", "sent");
    ctx.metrics.message(MessageOutcome::Sent);
    // From the webhook to Telegram's answer for the last call (clocks of two hosts: a skew
    // shows here; a negative age is not recorded).
    if out.origin_received_at_unix_ms > 0 {
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        if let Ok(age) = u64::try_from(now_ms - out.origin_received_at_unix_ms) {
            ctx.metrics.observe_end_to_end(Duration::from_millis(age));
        }
    }
    held.ack().await;
}

/// A ledger row of `part` of `out`, in `chat`.
fn row(ctx: &Ctx, out: &OutboundMessage, part: i32, chat: i64, outcome: &'static str) -> Record {
    Record {
        bot_id: ctx.bot_id,
        outbox_id: out.outbox_id,
        part,
        chat_id: chat,
        outcome,
        telegram_message_id: None,
        msg_key: None,
    }
}

/// Telegram's id of the message `r` names in `chat`: a key is resolved from the ledger.
/// `Ok(None)` when the sender stopped meanwhile; `Err` with the dead letter's reason when no
/// message was sent with that key.
async fn resolve(ctx: &Ctx, chat: i64, r: &MessageRef) -> Result<Option<MessageId>, String> {
    let key = match r {
        MessageRef::Id(id) => return Ok(Some(MessageId(*id))),
        MessageRef::Key(key) => key,
    };
    let Some(found) = db_retry(ctx, "resolve message key", || {
        ledger::resolve_key(&ctx.pool, ctx.bot_id, chat, key)
    })
    .await
    else {
        return Ok(None);
    };
    match found.map(i32::try_from) {
        Some(Ok(id)) => Ok(Some(MessageId(id))),
        Some(Err(_)) => Err(format!(
            "the message sent with key `{key}` in chat {chat} has an id out of range"
        )),
        None => Err(format!("no message sent with key `{key}` in chat {chat}")),
    }
}

/// Makes one call until Telegram answered it for good: retried after 429, 5xx and network
/// errors, re-targeted after a migration. Records it in the ledger, or parks the message
/// (taking `held`).
async fn make_call(
    ctx: &Ctx,
    held: &mut Option<Held>,
    out: &OutboundMessage,
    part: i32,
    call: &Call,
    key: Option<&str>,
    target: &mut i64,
) -> Done {
    let method = call.method();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(30));
    // The referenced message's id, resolved in this chat.
    let mut resolved: Option<(i64, Option<MessageId>)> = None;
    loop {
        let message_id = match (call.message_ref(), resolved) {
            (None, _) => None,
            (Some(_), Some((chat, id))) if chat == *target => id,
            (Some(r), _) => match resolve(ctx, *target, r).await {
                Ok(Some(id)) => {
                    resolved = Some((*target, Some(id)));
                    Some(id)
                }
                Ok(None) => return Done::Stop,
                Err(reason) if matches!(call, Call::DeleteMessage { .. }) => {
                    // Nothing was sent with the key (or its row was pruned): nothing to delete.
                    ctx.stats.already_done.fetch_add(1, Ordering::Relaxed);
                    ctx.metrics.call(method, telegram::NO_OP, Duration::ZERO);
                    tracing::info!(outbox_id = out.outbox_id, method, %reason, "nothing to delete; counted as done");
                    let chat = *target;
                    let recorded = db_retry(ctx, "ledger record", || {
                        ledger::record(&ctx.ledger, row(ctx, out, part, chat, "sent"))
                    })
                    .await;
                    return if recorded.is_some() {
                        Done::Recorded
                    } else {
                        Done::Stop
                    };
                }
                Err(reason) => {
                    if let Some(held) = held.take() {
                        park(ctx, held, out, part, *target, &reason).await;
                    }
                    return Done::Stop;
                }
            },
        };
        // The pause gate first: no budget is taken while paused.
        let Some(call_guard) = ctx.gate.enter(&ctx.cancel).await else {
            return Done::Stop;
        };
        // Wait for the breaker and the budget, unless the sender stops meanwhile.
        let admitted = tokio::select! {
            _ = ctx.cancel.cancelled() => None,
            a = async {
                let permit = ctx.breaker.admit().await;
                let grant = match call.budget() {
                    Budget::Chat => ctx.limits.acquire(*target).await,
                    Budget::Bot => ctx.limits.acquire_bot().await,
                };
                (permit, grant)
            }.instrument(tracing::info_span!("limit_wait")) => Some(a),
        };
        let Some((_permit, grant)) = admitted else {
            return Done::Stop;
        };
        if ctx.gate.is_paused() {
            // Paused while waiting for the budget: wait at the gate again.
            drop(grant);
            drop(call_guard);
            continue;
        }
        ctx.metrics.waited(grant.chat(), grant.waited());
        if !ctx.lease.is_valid() {
            // Returning unsettled while the term goes on would let this chat's next message
            // overtake this one: end the term, so everything held is handed back in stream
            // order (and the lease is taken again or by a standby).
            tracing::warn!("lease no longer valid: ending this term");
            ctx.cancel.cancel();
            return Done::Stop;
        }
        let span = tracing::info_span!(
            "bot_api_call",
            otel.kind = "client",
            method,
            part,
            result = tracing::field::Empty,
        );
        let calling = std::time::Instant::now();
        let answer = request(&ctx.bot, *target, call, message_id)
            .instrument(span.clone())
            .await;
        let no_op = answer.as_ref().is_err_and(|e| call.already_done(e));
        // One vocabulary for the span and the metric.
        let result = match &answer {
            Ok(_) => "ok",
            Err(_) if no_op => telegram::NO_OP,
            Err(e) => telegram::call_result(e),
        };
        ctx.metrics.call(method, result, calling.elapsed());
        span.record("result", result);
        drop(span);
        // The call has arrived at Telegram by now, if ever: the arrival window counts it.
        drop(grant);
        drop(call_guard);
        let wait = match answer {
            Err(e) if !no_op => match telegram::classify(&e) {
                Failure::RetryAfter(d) => {
                    ctx.breaker.success();
                    ctx.stats.rate_limited.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(outbox_id = out.outbox_id, chat_id = *target, method, retry_after = ?d, "429 from Telegram: pausing the bot");
                    ctx.limits.pause_bot(d);
                    Duration::ZERO
                }
                Failure::Transient(reason) => {
                    ctx.breaker.failure();
                    let d = backoff.next_delay();
                    tracing::warn!(outbox_id = out.outbox_id, method, %reason, delay = ?d, "Bot API call failed; retrying");
                    d
                }
                Failure::MigrateTo(to) => {
                    ctx.breaker.success();
                    tracing::info!(
                        from = *target,
                        to,
                        "group migrated to a supergroup; re-targeting"
                    );
                    let from = *target;
                    if db_retry(ctx, "record migration", || {
                        ledger::record_migration(&ctx.pool, ctx.bot_id, from, to)
                    })
                    .await
                    .is_none()
                    {
                        return Done::Stop;
                    }
                    ctx.stats.migrated.fetch_add(1, Ordering::Relaxed);
                    *target = to;
                    continue;
                }
                Failure::Blocked(reason) => {
                    ctx.breaker.success();
                    let chat = *target;
                    if db_retry(ctx, "mark blocked", || {
                        ledger::mark_blocked(&ctx.pool, ctx.bot_id, chat, &reason)
                    })
                    .await
                    .is_none()
                    {
                        return Done::Stop;
                    }
                    if let Some(held) = held.take() {
                        park(ctx, held, out, part, chat, &reason).await;
                    }
                    return Done::Stop;
                }
                Failure::Permanent(reason) => {
                    ctx.breaker.success();
                    if let Some(held) = held.take() {
                        park(ctx, held, out, part, *target, &reason).await;
                    }
                    return Done::Stop;
                }
            },
            answered => {
                // Done: Telegram did it, or had nothing left to do.
                let answered_at = std::time::Instant::now();
                ctx.breaker.success();
                let message = match answered {
                    Ok(id) => {
                        ctx.stats.sent.fetch_add(1, Ordering::Relaxed);
                        id
                    }
                    Err(e) => {
                        ctx.stats.already_done.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(outbox_id = out.outbox_id, method, reason = %e, "nothing left to do; counted as done");
                        message_id.map(|m| i64::from(m.0))
                    }
                };
                let chat = *target;
                let recorded = db_retry(ctx, "ledger record", || {
                    ledger::record(
                        &ctx.ledger,
                        Record {
                            telegram_message_id: message,
                            msg_key: key.map(str::to_owned),
                            ..row(ctx, out, part, chat, "sent")
                        },
                    )
                })
                .await;
                let us = answered_at.elapsed().as_micros() as u64;
                ctx.stats
                    .ledger_window_total_us
                    .fetch_add(us, Ordering::Relaxed);
                ctx.stats
                    .ledger_window_max_us
                    .fetch_max(us, Ordering::Relaxed);
                if recorded.is_none() {
                    return Done::Stop;
                }
                tracing::debug!(outbox_id = out.outbox_id, part, method, message_id = ?message, "done");
                return Done::Recorded;
            }
        };
        ctx.stats.retries.fetch_add(1, Ordering::Relaxed);
        if !wait.is_zero() {
            tokio::select! {
                _ = ctx.cancel.cancelled() => return Done::Stop,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}

/// `sendChatAction` with the action as the bot named it (teloxide-core's `ChatAction` lacks
/// some of Telegram's, e.g. `choose_sticker`): Telegram judges the name.
#[derive(Debug, Clone, Serialize)]
struct ChatActionPayload {
    chat_id: i64,
    action: String,
}

impl Payload for ChatActionPayload {
    type Output = True;
    const NAME: &'static str = "SendChatAction";
}

/// Makes one Bot API call to `chat` (`message_id`: the resolved reference, if the call has
/// one). Answers the id of the message the call sent, edited or deleted, if any.
async fn request(
    bot: &Bot,
    chat: i64,
    call: &Call,
    message_id: Option<MessageId>,
) -> Result<Option<i64>, RequestError> {
    let referenced = || message_id.expect("a call with a reference is made once it is resolved");
    match call {
        Call::SendMessage {
            text,
            parse_mode,
            keyboard,
            ..
        } => {
            let mut req = bot.send_message(ChatId(chat), text.clone());
            if let Some(mode) = parse_mode {
                req = req.parse_mode(*mode);
            }
            if let Some(keyboard) = keyboard {
                req = req.reply_markup(keyboard.clone());
            }
            if let Some(id) = message_id {
                req = req.reply_parameters(ReplyParameters::new(id));
            }
            Ok(Some(i64::from(req.send().await?.id.0)))
        }
        Call::EditMessageText {
            text,
            parse_mode,
            keyboard,
            ..
        } => {
            let mut req = bot.edit_message_text(ChatId(chat), referenced(), text.clone());
            if let Some(mode) = parse_mode {
                req = req.parse_mode(*mode);
            }
            if let Some(keyboard) = keyboard {
                req = req.reply_markup(keyboard.clone());
            }
            Ok(Some(i64::from(req.send().await?.id.0)))
        }
        Call::AnswerCallbackQuery {
            callback_query_id,
            text,
            show_alert,
        } => {
            let mut req = bot.answer_callback_query(CallbackQueryId(callback_query_id.clone()));
            if let Some(text) = text {
                req = req.text(text.clone());
            }
            if *show_alert {
                req = req.show_alert(true);
            }
            req.send().await?;
            Ok(None)
        }
        Call::SendChatAction { action } => {
            JsonRequest::new(
                bot.clone(),
                ChatActionPayload {
                    chat_id: chat,
                    action: action.clone(),
                },
            )
            .send()
            .await?;
            Ok(None)
        }
        Call::DeleteMessage { .. } => {
            let id = referenced();
            bot.delete_message(ChatId(chat), id).send().await?;
            Ok(Some(i64::from(id.0)))
        }
    }
}

/// Parks a message that cannot be done (Telegram refused `part` of it, or it names a message
/// never sent): records the part in the ledger as `dead_lettered` (so a redelivery is
/// skipped), then dead-letters it.
async fn park(ctx: &Ctx, held: Held, out: &OutboundMessage, part: i32, chat: i64, reason: &str) {
    // A keyed message's row keeps its key: the latest message with the key was not sent, so a
    // later reference to the key finds nothing (rather than an older message with the key).
    let key = match &out.action {
        Some(Action::Send(send)) if !send.key.is_empty() => Some(send.key.clone()),
        _ => None,
    };
    let recorded = db_retry(ctx, "ledger record", || {
        ledger::record(
            &ctx.ledger,
            Record {
                msg_key: key.clone(),
                ..row(ctx, out, part, chat, "dead_lettered")
            },
        )
    })
    .await;
    if recorded.is_some() {
        dead_letter(ctx, held, reason).await;
    }
}

/// Parks a message in `COURIER_DLQ` and acks it. Retries until the dead letter is stored or
/// the term ends: returning unsettled while the term goes on would let the chat's next message
/// overtake this one (and lose the dead-letter record until a redelivery).
async fn dead_letter(ctx: &Ctx, held: Held, reason: &str) {
    tracing::error!(reason, subject = %held.msg.subject, "dead-lettering outbound message");
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    loop {
        let ok = topology::publish_dead_letter(
            &ctx.js,
            ctx.bot_id,
            "outbound",
            &held.msg.subject,
            held.msg.payload.clone(),
            reason,
        )
        .await;
        if ok {
            tracing::Span::current().record("outcome", "dead_lettered");
            ctx.stats.dead_lettered.fetch_add(1, Ordering::Relaxed);
            ctx.metrics.message(MessageOutcome::DeadLettered);
            held.ack().await;
            return;
        }
        ctx.stats
            .dead_letter_failures
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!("dead-letter publish failed; retrying (the chat waits)");
        tokio::select! {
            _ = ctx.cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

/// Retries a database call until it succeeds; `None` when cancelled meanwhile.
async fn db_retry<T, E, F, Fut>(ctx: &Ctx, what: &str, mut f: F) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
    loop {
        match f().await {
            Ok(v) => return Some(v),
            Err(e) => tracing::warn!(error = %e, what, "database call failed; retrying"),
        }
        tokio::select! {
            _ = ctx.cancel.cancelled() => return None,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}
