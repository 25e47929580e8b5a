//! Courier admin: the admin API (`courier.admin.v1.Admin`, gRPC over tonic) that `courierctl`
//! talks to.
//!
//! Stateless: every answer is read from, and every change written to, where the pipeline
//! keeps its state — JetStream (streams, consumers, the workers' membership, the sender's
//! lease, the pause key), PostgreSQL (dialogue states, the idempotency records, the sender's
//! ledger) and the Bot API (the webhook). Any number of replicas may run.
//!
//! - [`auth`]: the bearer token on every call (constant-time compare).
//! - [`webhook`]: `setWebhook`, `deleteWebhook`, `getWebhookInfo`.
//! - [`status`]: workers, partitions, backlogs, the active sender, dead letters, throughput.
//! - [`chats`]: one chat's state, and resetting it.
//! - [`dlq`]: listing, replaying (exactly once) and purging dead letters.
//! - [`pause`]: pausing and resuming the sender's Bot API calls.
//! - [`broadcast`]: broadcasts (the workers' job): create, watch, list, cancel.
//! - [`service`]: the generated service trait, wired to the modules above.
//! - [`metrics`]: calls by method and status code.
//!
//! Also served: the standard gRPC health service (`grpc.health.v1.Health`, no token needed,
//! for probes) and server reflection (token needed), and `/healthz`, `/readyz`, `/metrics` over HTTP.
#![deny(missing_docs)]

pub mod auth;
pub mod broadcast;
pub mod chats;
pub mod dlq;
pub mod metrics;
pub mod pause;
pub mod service;
pub mod status;
pub mod webhook;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use courier_common::{
    config::{
        parse_duration, AdminTokenArgs, ConfigError, NatsArgs, SecretArgs, WebhookSecretArgs,
    },
    health, topology, CancellationToken,
};
use courier_proto::admin::v1::admin_server::AdminServer;
use teloxide_core::Bot;
use tokio::task::JoinHandle;

/// Admin configuration (environment variables or the matching flags).
#[derive(Debug, Clone, clap::Args)]
pub struct Config {
    /// Address of the gRPC admin API.
    #[arg(
        long = "addr",
        env = "COURIER_ADMIN_ADDR",
        default_value = "0.0.0.0:50051"
    )]
    pub addr: SocketAddr,
    /// Address of the health and readiness endpoints (HTTP).
    #[arg(
        long = "health-addr",
        env = "COURIER_ADMIN_HEALTH_ADDR",
        default_value = "0.0.0.0:9093"
    )]
    pub health_addr: SocketAddr,
    /// TLS certificate chain (PEM file) of the gRPC API; with COURIER_ADMIN_TLS_KEY. Without
    /// both, the API is plaintext (keep it in-cluster).
    #[arg(long = "tls-cert", env = "COURIER_ADMIN_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM file) of the gRPC API; with COURIER_ADMIN_TLS_CERT.
    #[arg(long = "tls-key", env = "COURIER_ADMIN_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Base URL of the Bot API (the sandbox's URL locally).
    #[arg(
        long = "telegram-api-url",
        env = "COURIER_TELEGRAM_API_URL",
        default_value = "https://api.telegram.org"
    )]
    pub api_url: url::Url,
    /// Timeout of one Bot API call.
    #[arg(long = "request-timeout", env = "COURIER_ADMIN_REQUEST_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// PostgreSQL URL (never logged).
    #[arg(long = "database-url", env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Connections in the admin's database pool.
    #[arg(
        long = "db-pool-size",
        env = "COURIER_ADMIN_DB_POOL_SIZE",
        default_value_t = 2
    )]
    pub db_pool_size: u32,
    /// The bot's Bot API budget in calls per second, against which `status` reports the
    /// budget use (set it to COURIER_SENDER_BOT_RATE if you changed that).
    #[arg(
        long = "bot-rate",
        env = "COURIER_ADMIN_BOT_RATE",
        default_value_t = 30.0
    )]
    pub bot_rate: f64,
    /// How long PauseBot waits for the active sender to confirm that no Bot API call is in
    /// flight any more.
    #[arg(long = "pause-confirm-timeout", env = "COURIER_ADMIN_PAUSE_CONFIRM_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub pause_confirm_timeout: Duration,
    /// The admin API's bearer token.
    #[command(flatten)]
    pub token: AdminTokenArgs,
    /// The webhook secret, sent to Telegram by SetWebhook.
    #[command(flatten)]
    pub webhook: WebhookSecretArgs,
    /// NATS settings.
    #[command(flatten)]
    pub nats: NatsArgs,
    /// Bot token and dev mode.
    #[command(flatten)]
    pub secrets: SecretArgs,
}

impl Config {
    fn validate(&self) -> Result<(), ConfigError> {
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(ConfigError {
                var: if self.tls_cert.is_some() {
                    "COURIER_ADMIN_TLS_KEY"
                } else {
                    "COURIER_ADMIN_TLS_CERT"
                },
                reason: "COURIER_ADMIN_TLS_CERT and COURIER_ADMIN_TLS_KEY go together: set both or neither".into(),
            });
        }
        if !(self.bot_rate.is_finite() && self.bot_rate > 0.0) {
            return Err(ConfigError {
                var: "COURIER_ADMIN_BOT_RATE",
                reason: format!("must be a positive number, got {}", self.bot_rate),
            });
        }
        Ok(())
    }
}

/// What can stop the admin service.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The streams could not be created or do not match.
    #[error(transparent)]
    Topology(#[from] topology::TopologyError),
    /// The pause bucket could not be opened.
    #[error(transparent)]
    Pause(#[from] courier_sender::pause::PauseError),
    /// Reading the TLS files or binding failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
}

/// What every call needs: the bot, NATS, PostgreSQL and the Bot API.
#[derive(Clone)]
pub struct Ctx {
    /// The bot's id.
    pub bot_id: i64,
    /// The Bot API client.
    pub bot: Bot,
    /// The webhook secret, sent as `secret_token`.
    pub webhook_secret: courier_common::secret::WebhookSecret,
    /// JetStream.
    pub js: jetstream::Context,
    /// The database.
    pub pool: sqlx::PgPool,
    /// The control bucket (pause).
    pub control: async_nats::jetstream::kv::Store,
    /// Partitions of the updates stream.
    pub partitions: u32,
    /// The bot's budget, calls per second.
    pub bot_rate: f64,
    /// How long PauseBot waits for the sender's confirmation.
    pub pause_confirm_timeout: Duration,
    /// Calls answered.
    pub metrics: metrics::Metrics,
    /// Fires at shutdown: long calls (a broadcast's watch) end then.
    pub shutdown: CancellationToken,
}

/// A running admin service.
pub struct Admin {
    addr: SocketAddr,
    health_addr: SocketAddr,
    task: JoinHandle<Result<(), Error>>,
}

impl Admin {
    /// The bound address of the gRPC API.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The bound address of the health endpoints.
    pub fn health_addr(&self) -> SocketAddr {
        self.health_addr
    }

    /// Waits until the service stopped.
    pub async fn wait(self) -> Result<(), Error> {
        self.task.await.unwrap_or_else(|e| {
            Err(Error::Io {
                what: "admin task".into(),
                source: std::io::Error::other(e),
            })
        })
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// Validates the configuration, connects and starts serving; returns at once.
pub async fn spawn(config: Config, shutdown: CancellationToken) -> Result<Admin, Error> {
    config.validate()?;
    let dev = config.secrets.dev;
    let admin_token = config.token.admin_token(dev)?;
    let token = config.secrets.bot_token()?;
    let webhook_secret = config.webhook.webhook_secret(dev)?;
    let bot_id = token.bot_id();
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => {
            let cert = std::fs::read(cert).map_err(io(format!(
                "COURIER_ADMIN_TLS_CERT: reading {}",
                cert.display()
            )))?;
            let key = std::fs::read(key).map_err(io(format!(
                "COURIER_ADMIN_TLS_KEY: reading {}",
                key.display()
            )))?;
            Some(
                tonic::transport::ServerTlsConfig::new()
                    .identity(tonic::transport::Identity::from_pem(cert, key)),
            )
        }
        _ => None,
    };
    let pool = courier_db::lazy_pool(config.database_url.as_deref(), config.db_pool_size)?;
    let client = teloxide_core::net::default_reqwest_settings()
        .timeout(config.request_timeout)
        .build()
        .map_err(|e| ConfigError {
            var: "COURIER_TELEGRAM_API_URL",
            reason: format!("cannot build the HTTP client: {e}"),
        })?;
    let bot = Bot::with_client(token.expose(), client).set_api_url(config.api_url.clone());

    let nats = config.nats.connect("courier-admin").await?;
    let js = jetstream::new(nats.clone());
    topology::ensure_streams(&js, config.nats.partitions).await?;
    let control = courier_sender::pause::open_bucket(&js).await?;

    let admin_metrics = metrics::Metrics::default();
    let mut registry = prometheus_client::registry::Registry::default();
    admin_metrics.register(&mut registry);
    let ctx = Arc::new(Ctx {
        bot_id,
        bot,
        webhook_secret,
        js,
        pool: pool.clone(),
        control,
        partitions: config.nats.partitions,
        bot_rate: config.bot_rate,
        pause_confirm_timeout: config.pause_confirm_timeout,
        metrics: admin_metrics.clone(),
        shutdown: shutdown.clone(),
    });

    let app = health::router(vec![
        ("nats", health::nats_probe(nats.clone())),
        ("postgres", courier_db::probe(pool.clone())),
    ])
    .merge(courier_common::metrics::router(registry, None));
    let http_listener = tokio::net::TcpListener::bind(config.health_addr)
        .await
        .map_err(io(format!(
            "COURIER_ADMIN_HEALTH_ADDR: binding {}",
            config.health_addr
        )))?;
    let health_addr = http_listener.local_addr().map_err(io("local address"))?;
    let http_shutdown = shutdown.clone();
    let http = tokio::spawn(async move {
        axum::serve(http_listener, app)
            .with_graceful_shutdown(http_shutdown.cancelled_owned())
            .await
    });

    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(io(format!("COURIER_ADMIN_ADDR: binding {}", config.addr)))?;
    let addr = listener.local_addr().map_err(io("local address"))?;

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<AdminServer<service::AdminService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(courier_proto::admin::v1::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| Error::Io {
            what: "reflection service".into(),
            source: std::io::Error::other(e),
        })?;
    let check = auth::Bearer::new(admin_token, admin_metrics);
    let admin = AdminServer::with_interceptor(service::AdminService::new(ctx), check.clone());
    let reflection = tonic::service::interceptor::InterceptedService::new(reflection, check);
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let router = builder
        .add_service(health_service)
        .add_service(reflection)
        .add_service(admin);
    let tls_on = config.tls_cert.is_some();
    tracing::info!(bot_id, %addr, %health_addr, tls = tls_on, api = %config.api_url, "admin API started");
    let task = tokio::spawn(async move {
        let grpc_shutdown = shutdown.clone();
        let served = router
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                async move {
                    grpc_shutdown.cancelled().await;
                    health_reporter
                        .set_not_serving::<AdminServer<service::AdminService>>()
                        .await;
                },
            )
            .await;
        let _ = http.await;
        pool.close().await;
        tracing::info!("admin API stopped");
        served.map_err(Error::from)
    });
    Ok(Admin {
        addr,
        health_addr,
        task,
    })
}

/// Runs the admin service until `shutdown` fires.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    spawn(config, shutdown).await?.wait().await
}
