//! The generated `courier.admin.v1.Admin` service, wired to this crate's modules. Each call
//! is logged with its method and outcome (never its token).

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::Instrument;

use courier_proto::admin::v1::{self as pb, admin_server::Admin};

use crate::{broadcast, chats, dlq, pause, status, webhook, Ctx};

/// The admin service.
#[derive(Clone)]
pub struct AdminService {
    ctx: Arc<Ctx>,
}

impl AdminService {
    /// Serves calls with `ctx`.
    pub fn new(ctx: Arc<Ctx>) -> Self {
        Self { ctx }
    }
}

/// Runs one call under a span, logging its outcome.
async fn call<T>(
    ctx: &Ctx,
    method: &'static str,
    fut: impl std::future::Future<Output = Result<T, Status>>,
) -> Result<Response<T>, Status> {
    let span = tracing::info_span!("admin_call", method);
    let started = std::time::Instant::now();
    let out = fut.instrument(span).await;
    ctx.metrics.call(
        method,
        out.as_ref().map_or_else(|s| s.code(), |_| tonic::Code::Ok),
        started.elapsed(),
    );
    match &out {
        Ok(_) => tracing::info!(method, "admin call done"),
        Err(s) => {
            tracing::warn!(method, code = ?s.code(), message = s.message(), "admin call failed")
        }
    }
    out.map(Response::new)
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn set_webhook(
        &self,
        request: Request<pb::SetWebhookRequest>,
    ) -> Result<Response<pb::SetWebhookResponse>, Status> {
        call(
            &self.ctx,
            "SetWebhook",
            webhook::set(&self.ctx, request.into_inner()),
        )
        .await
    }

    async fn delete_webhook(
        &self,
        request: Request<pb::DeleteWebhookRequest>,
    ) -> Result<Response<pb::DeleteWebhookResponse>, Status> {
        call(
            &self.ctx,
            "DeleteWebhook",
            webhook::delete(&self.ctx, request.into_inner()),
        )
        .await
    }

    async fn get_webhook_info(
        &self,
        _request: Request<pb::GetWebhookInfoRequest>,
    ) -> Result<Response<pb::WebhookInfo>, Status> {
        call(&self.ctx, "GetWebhookInfo", webhook::info(&self.ctx)).await
    }

    async fn status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        call(&self.ctx, "Status", status::status(&self.ctx)).await
    }

    async fn get_chat(
        &self,
        request: Request<pb::GetChatRequest>,
    ) -> Result<Response<pb::Chat>, Status> {
        call(
            &self.ctx,
            "GetChat",
            chats::get(&self.ctx, request.into_inner()),
        )
        .await
    }

    async fn reset_chat(
        &self,
        request: Request<pb::ResetChatRequest>,
    ) -> Result<Response<pb::ResetChatResponse>, Status> {
        call(
            &self.ctx,
            "ResetChat",
            chats::reset(&self.ctx, request.into_inner()),
        )
        .await
    }

    async fn list_dead_letters(
        &self,
        request: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        call(
            &self.ctx,
            "ListDeadLetters",
            dlq::list(&self.ctx, request.into_inner()),
        )
        .await
    }

    async fn replay_dead_letters(
        &self,
        request: Request<pb::ReplayDeadLettersRequest>,
    ) -> Result<Response<pb::ReplayDeadLettersResponse>, Status> {
        call(
            &self.ctx,
            "ReplayDeadLetters",
            dlq::replay(&self.ctx, request.into_inner()),
        )
        .await
    }

    async fn purge_dead_letters(
        &self,
        request: Request<pb::PurgeDeadLettersRequest>,
    ) -> Result<Response<pb::PurgeDeadLettersResponse>, Status> {
        call(
            &self.ctx,
            "PurgeDeadLetters",
            dlq::purge(&self.ctx, request.into_inner()),
        )
        .await
    }

    async fn pause_bot(
        &self,
        request: Request<pb::PauseBotRequest>,
    ) -> Result<Response<pb::PauseState>, Status> {
        call(
            &self.ctx,
            "PauseBot",
            pause::pause(&self.ctx, request.into_inner()),
        )
        .await
    }

    async fn resume_bot(
        &self,
        _request: Request<pb::ResumeBotRequest>,
    ) -> Result<Response<pb::PauseState>, Status> {
        call(&self.ctx, "ResumeBot", pause::resume(&self.ctx)).await
    }

    type WatchBroadcastStream = broadcast::WatchStream;

    async fn broadcast(
        &self,
        request: Request<pb::BroadcastRequest>,
    ) -> Result<Response<pb::BroadcastJob>, Status> {
        call(
            &self.ctx,
            "Broadcast",
            broadcast::create(&self.ctx, request.into_inner()),
        )
        .await
    }

    async fn watch_broadcast(
        &self,
        request: Request<pb::WatchBroadcastRequest>,
    ) -> Result<Response<Self::WatchBroadcastStream>, Status> {
        call(
            &self.ctx,
            "WatchBroadcast",
            broadcast::watch(self.ctx.clone(), request.into_inner()),
        )
        .await
    }

    async fn get_broadcast(
        &self,
        request: Request<pb::GetBroadcastRequest>,
    ) -> Result<Response<pb::BroadcastJob>, Status> {
        call(
            &self.ctx,
            "GetBroadcast",
            broadcast::get(&self.ctx, request.into_inner()),
        )
        .await
    }

    async fn list_broadcasts(
        &self,
        request: Request<pb::ListBroadcastsRequest>,
    ) -> Result<Response<pb::ListBroadcastsResponse>, Status> {
        call(
            &self.ctx,
            "ListBroadcasts",
            broadcast::list(&self.ctx, request.into_inner()),
        )
        .await
    }

    async fn cancel_broadcast(
        &self,
        request: Request<pb::CancelBroadcastRequest>,
    ) -> Result<Response<pb::CancelBroadcastResponse>, Status> {
        call(
            &self.ctx,
            "CancelBroadcast",
            broadcast::cancel(&self.ctx, request.into_inner()),
        )
        .await
    }
}
