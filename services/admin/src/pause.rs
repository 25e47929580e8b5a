//! `PauseBot` / `ResumeBot`: the pause key the sender watches (`courier_sender::pause`).
//!
//! Pausing writes the key and then waits (at most `COURIER_ADMIN_PAUSE_CONFIRM_TIMEOUT`) for
//! the active sender's confirmation that it saw this revision and has no call in flight; the
//! answer's `confirmed` says whether it came. With no sender holding the lease there is
//! nobody to call Telegram, and the pause counts as confirmed: a sender that starts reads the
//! key before its first call.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use courier_sender::pause::{self, PauseState};
use tonic::Status;

use courier_proto::admin::v1 as pb;

use crate::Ctx;

fn kv_error(e: pause::PauseError) -> Status {
    Status::unavailable(e.to_string())
}

/// The state, with whether the active sender confirmed it.
pub async fn state(ctx: &Ctx) -> Result<pb::PauseState, Status> {
    let (state, revision) = pause::read(&ctx.control, ctx.bot_id)
        .await
        .map_err(kv_error)?;
    let (confirmed, by) = confirmation(ctx, &state, revision).await?;
    Ok(to_pb(state, confirmed, by))
}

fn to_pb(state: PauseState, confirmed: bool, by: String) -> pb::PauseState {
    pb::PauseState {
        paused: state.paused,
        reason: state.reason,
        since_unix_ms: state.since_unix_ms,
        confirmed,
        confirmed_by: by,
    }
}

/// Whether the current lease holder confirmed `state` at `revision` (or later), and who.
async fn confirmation(
    ctx: &Ctx,
    state: &PauseState,
    revision: u64,
) -> Result<(bool, String), Status> {
    let (holder, lease) = crate::status::lease_holder(ctx).await?;
    if lease != "held" {
        return Ok((true, String::new()));
    }
    let seen = pause::read_confirmation(&ctx.control, ctx.bot_id)
        .await
        .map_err(kv_error)?;
    Ok(match seen {
        Some(c) if c.holder == holder && c.revision >= revision && c.paused == state.paused => {
            (true, c.holder)
        }
        _ => (false, String::new()),
    })
}

async fn set(ctx: &Ctx, state: PauseState) -> Result<pb::PauseState, Status> {
    let revision = pause::write(&ctx.control, ctx.bot_id, &state)
        .await
        .map_err(kv_error)?;
    let deadline = tokio::time::Instant::now() + ctx.pause_confirm_timeout;
    loop {
        let (confirmed, by) = confirmation(ctx, &state, revision).await?;
        if confirmed || tokio::time::Instant::now() >= deadline {
            if !confirmed {
                tracing::warn!(
                    paused = state.paused,
                    "the active sender did not confirm the pause state in time"
                );
            }
            return Ok(to_pb(state, confirmed, by));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Pauses the bot.
pub async fn pause(ctx: &Ctx, req: pb::PauseBotRequest) -> Result<pb::PauseState, Status> {
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    tracing::warn!(reason = %req.reason, "pausing the bot");
    set(
        ctx,
        PauseState {
            paused: true,
            reason: req.reason,
            since_unix_ms: since,
        },
    )
    .await
}

/// Resumes the bot.
pub async fn resume(ctx: &Ctx) -> Result<pb::PauseState, Status> {
    tracing::info!("resuming the bot");
    set(ctx, PauseState::default()).await
}
