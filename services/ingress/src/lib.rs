//! Courier ingress: the Telegram webhook endpoint.
//!
//! `POST /webhook` (path configurable) takes one update, checks the secret header in constant
//! time, reads only what routing needs (the update id and the chat), wraps the raw bytes in an
//! [`InboundUpdate`] envelope and publishes it to `courier.updates.<bot>.<partition>.<chat>` with
//! `Nats-Msg-Id = <bot>:<update_id>:<fingerprint>`. It answers 200 only after JetStream acknowledged the
//! publish; anything else is a 5xx, so Telegram retries and nothing is lost.
//!
//! **Architecture Invariant:** ingress is stateless and never parses an update fully: it
//! forwards Telegram's bytes untouched (see [`probe`]).
//!
//! | outcome                             | status |
//! |-------------------------------------|--------|
//! | source outside the allow-list       | 403    |
//! | secret header missing or wrong      | 401    |
//! | body larger than the limit          | 413    |
//! | not JSON, or no integer `update_id` | 400    |
//! | JetStream acknowledged (or a dup)   | 200    |
//! | NATS down / no ack in time          | 503    |
//!
//! Connections are bounded by [`serve`]: a header timeout, an idle timeout and a maximum
//! number of connections. The allow-list of source networks is in [`access`]. `GET /metrics`
//! serves the counters of [`metrics`].
#![deny(missing_docs)]

pub mod access;
pub mod metrics;
pub mod probe;
pub mod serve;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{self, message::PublishMessage};
use axum::{
    body::Bytes,
    extract::{DefaultBodyLimit, Request, State},
    http::StatusCode,
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::post,
    Router,
};
use courier_common::{
    config::{parse_duration, ConfigError, NatsArgs, SecretArgs, WebhookSecretArgs},
    health,
    secret::WebhookSecret,
    topology, trace, CancellationToken,
};
use courier_proto::{v1::InboundUpdate, Message as _};
use tokio::task::JoinHandle;
use tracing::Instrument;

/// The header Telegram sends the webhook secret in.
pub const SECRET_HEADER: &str = "x-telegram-bot-api-secret-token";

/// Ingress configuration (environment variables or the matching flags).
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(
        long = "addr",
        env = "COURIER_INGRESS_ADDR",
        default_value = "0.0.0.0:8081"
    )]
    pub addr: SocketAddr,
    /// Path of the webhook endpoint.
    #[arg(
        long = "webhook-path",
        env = "COURIER_WEBHOOK_PATH",
        default_value = "/webhook"
    )]
    pub webhook_path: String,
    /// Largest accepted update body, in bytes (larger: 413).
    #[arg(long = "max-body-bytes", env = "COURIER_INGRESS_MAX_BODY_BYTES", default_value_t = 256 * 1024)]
    pub max_body_bytes: usize,
    /// How long to wait for JetStream's acknowledgement before answering 503.
    #[arg(long = "publish-timeout", env = "COURIER_INGRESS_PUBLISH_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub publish_timeout: Duration,
    /// Connection bounds: header and idle timeouts, maximum connections.
    #[command(flatten)]
    pub limits: serve::Limits,
    /// The optional allow-list of source networks.
    #[command(flatten)]
    pub access: access::AccessArgs,
    /// NATS settings.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Bot token and dev mode.
    #[command(flatten)]
    pub secrets: SecretArgs,
    /// Webhook secret.
    #[command(flatten)]
    pub webhook: WebhookSecretArgs,
    /// While the webhook secret is rotated: the previous secret, accepted as well as
    /// COURIER_WEBHOOK_SECRET until Telegram sends the new one (after `setWebhook` with it).
    /// Unset it once the rotation is done.
    #[arg(
        long = "webhook-secret-previous",
        env = "COURIER_WEBHOOK_SECRET_PREVIOUS",
        hide_env_values = true
    )]
    pub webhook_secret_previous: Option<String>,
}

/// What can stop ingress from starting or serving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The streams could not be created or do not match.
    #[error(transparent)]
    Topology(#[from] topology::TopologyError),
    /// Binding or serving HTTP failed.
    #[error("http server: {0}")]
    Io(#[from] std::io::Error),
}

struct AppState {
    metrics: metrics::Metrics,
    bot_id: i64,
    partitions: u32,
    secret: WebhookSecret,
    /// The previous secret during a rotation (`COURIER_WEBHOOK_SECRET_PREVIOUS`).
    previous: Option<WebhookSecret>,
    nats: async_nats::Client,
    js: jetstream::Context,
    publish_timeout: Duration,
}

/// A running ingress.
pub struct Ingress {
    addr: SocketAddr,
    stats: Arc<serve::ConnStats>,
    task: JoinHandle<Result<(), Error>>,
}

impl Ingress {
    /// The bound address (useful with port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The connection counters.
    pub fn stats(&self) -> Arc<serve::ConnStats> {
        self.stats.clone()
    }

    /// Waits until the server stopped (after the shutdown token fired).
    pub async fn wait(self) -> Result<(), Error> {
        self.task
            .await
            .unwrap_or_else(|e| Err(Error::Io(std::io::Error::other(e))))
    }
}

/// Validates the configuration, connects, ensures the streams and starts serving.
pub async fn spawn(config: Config, shutdown: CancellationToken) -> Result<Ingress, Error> {
    let token = config.secrets.bot_token()?;
    let secret = config.webhook.webhook_secret(config.secrets.dev)?;
    let previous = match config.webhook_secret_previous.as_deref().map(str::trim) {
        None | Some("") => None,
        Some(raw) => Some(WebhookSecret::parse(raw).map_err(|e| ConfigError {
            var: "COURIER_WEBHOOK_SECRET_PREVIOUS",
            reason: e.to_string(),
        })?),
    };
    if previous.is_some() {
        tracing::warn!(
            "COURIER_WEBHOOK_SECRET_PREVIOUS is set: the previous webhook secret is accepted too \
             (a rotation); unset it once Telegram sends the new one"
        );
    }
    if !config.webhook_path.starts_with('/') {
        return Err(ConfigError {
            var: "COURIER_WEBHOOK_PATH",
            reason: "must start with /".into(),
        }
        .into());
    }
    config.limits.validate()?;
    let policy = config.access.policy()?;
    let nats = config.nats.connect("courier-ingress").await?;
    let js = jetstream::new(nats.clone());
    topology::ensure_streams(&js, config.nats.partitions).await?;

    let metrics = metrics::Metrics::default();
    let mut registry = prometheus_client::registry::Registry::default();
    metrics.register(&mut registry);
    let state = Arc::new(AppState {
        metrics: metrics.clone(),
        bot_id: token.bot_id(),
        partitions: config.nats.partitions,
        secret,
        previous,
        nats: nats.clone(),
        js,
        publish_timeout: config.publish_timeout,
    });
    let mut webhook = Router::new()
        .route(&config.webhook_path, post(webhook))
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        // The secret is checked before the body is read.
        .layer(middleware::from_fn_with_state(state.clone(), check_secret))
        .with_state(state);
    if let Some(policy) = &policy {
        // The source is checked before the secret (the outermost layer runs first).
        webhook = webhook.layer(middleware::from_fn_with_state(
            Arc::new(policy.clone()),
            access::check_source,
        ));
    }
    // Counts every answer but those of the health and metrics routes (the outermost layer).
    let app = webhook
        .merge(health::router(vec![("nats", health::nats_probe(nats))]))
        .merge(courier_common::metrics::router(registry, None))
        .layer(middleware::from_fn_with_state(
            metrics,
            metrics::count_requests,
        ));

    let listener = serve::bind(config.addr)?;
    let addr = listener.local_addr()?;
    tracing::info!(
        %addr,
        path = %config.webhook_path,
        bot_id = token.bot_id(),
        header_timeout = ?config.limits.header_timeout,
        idle_timeout = ?config.limits.idle_timeout,
        max_connections = config.limits.max_connections,
        allow_list = policy.is_some(),
        "ingress listening"
    );
    let stats = Arc::new(serve::ConnStats::default());
    let serving = serve::serve(listener, app, config.limits, stats.clone(), shutdown);
    let task = tokio::spawn(async move {
        serving.await;
        tracing::info!("ingress stopped");
        Ok(())
    });
    Ok(Ingress { addr, stats, task })
}

/// Runs ingress until `shutdown` fires.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    spawn(config, shutdown).await?.wait().await
}

async fn check_secret(State(app): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let ok = req.headers().get(SECRET_HEADER).is_some_and(|v| {
        // Both compared in constant time, and both always (no early answer on the first).
        let current = app.secret.matches(v.as_bytes());
        let previous = app
            .previous
            .as_ref()
            .is_some_and(|p| p.matches(v.as_bytes()));
        current | previous
    });
    if !ok {
        return (StatusCode::UNAUTHORIZED, "missing or wrong secret token\n").into_response();
    }
    next.run(req).await
}

/// The webhook. Its span (`webhook`) is the root of the update's trace: Telegram sends no
/// trace context, and one from the internet is not trusted. The `publish` span's context
/// travels in the message's headers to the worker (`courier_common::trace`).
async fn webhook(State(app): State<Arc<AppState>>, body: Bytes) -> Response {
    let span = tracing::info_span!(
        "webhook",
        otel.kind = "server",
        bot_id = app.bot_id,
        update_id = tracing::field::Empty,
        chat_id = tracing::field::Empty,
        partition = tracing::field::Empty,
        stream_seq = tracing::field::Empty,
        outcome = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
    );
    let response = accept(&app, body).instrument(span.clone()).await;
    span.record("http.response.status_code", response.status().as_u16());
    response
}

async fn accept(app: &AppState, body: Bytes) -> Response {
    let span = tracing::Span::current();
    let probe::Route {
        update_id,
        chat_id,
        partition,
    } = match probe::route(&body, app.partitions) {
        Ok(route) => route,
        Err(e) => {
            span.record("outcome", "rejected");
            return e.into_response();
        }
    };
    span.record("update_id", update_id);
    span.record("chat_id", chat_id);
    span.record("partition", partition);
    if app.nats.connection_state() != async_nats::connection::State::Connected {
        // Fail fast: Telegram retries, and a publish buffered in a disconnected client could
        // outlive this request.
        span.record("outcome", "unavailable");
        tracing::warn!(update_id = update_id, "NATS not connected; answering 503");
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "queue unavailable, retry later\n",
        )
            .into_response();
    }
    let fingerprint = topology::update_fingerprint(&body);
    let envelope = InboundUpdate {
        bot_id: app.bot_id,
        update_id,
        chat_id,
        partition,
        received_at_unix_ms: unix_ms(),
        update_json: body.to_vec(),
        update_fingerprint: fingerprint,
    };
    let subject = topology::update_subject(app.bot_id, partition, chat_id);
    let publishing = tracing::info_span!(
        "publish",
        otel.kind = "producer",
        messaging.system = "nats",
        stream_seq = tracing::field::Empty,
    );
    let mut publish = PublishMessage::build();
    if let Some(headers) = trace::headers(&publishing) {
        publish = publish.headers(headers);
    }
    let publish = publish
        .message_id(topology::update_msg_id(app.bot_id, update_id, fingerprint))
        .payload(envelope.encode_to_vec().into());
    let publish_started = std::time::Instant::now();
    let result = tokio::time::timeout(app.publish_timeout, async {
        app.js.send_publish(subject, publish).await?.await
    })
    .instrument(publishing.clone())
    .await;
    app.metrics
        .published(publish_started, matches!(result, Ok(Ok(_))));
    match result {
        Ok(Ok(ack)) => {
            publishing.record("stream_seq", ack.sequence);
            span.record("stream_seq", ack.sequence);
            span.record(
                "outcome",
                if ack.duplicate {
                    "duplicate"
                } else {
                    "accepted"
                },
            );
            tracing::debug!(
                update_id = update_id,
                seq = ack.sequence,
                duplicate = ack.duplicate,
                "accepted"
            );
            StatusCode::OK.into_response()
        }
        Ok(Err(e)) => {
            span.record("outcome", "unavailable");
            tracing::warn!(update_id = update_id, error = %e, "publish failed; answering 503");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "queue unavailable, retry later\n",
            )
                .into_response()
        }
        Err(_) => {
            span.record("outcome", "unavailable");
            tracing::warn!(
                update_id = update_id,
                "publish not acknowledged in time; answering 503"
            );
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "queue timeout, retry later\n",
            )
                .into_response()
        }
    }
}

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
