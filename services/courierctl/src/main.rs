//! `courierctl`: the command line over Courier's admin API (`courier-admin`).
//!
//! Human tables by default, `--json` for scripts. Exit codes ([`exit`]): 0 ok, 1 other
//! failure, 2 usage or a refused argument, 3 unauthenticated (missing or wrong token),
//! 4 unreachable (the admin API, or what it needs: NATS, PostgreSQL, Telegram), 5 not found,
//! 6 done but not confirmed (a pause the active sender did not confirm in time), 7 a
//! broadcast finished but not every message went out (some failed, or it was cancelled).

mod broadcast;
mod exit;
mod show;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use courier_proto::admin::v1::{self as pb, admin_client::AdminClient};
use tonic::{metadata::MetadataValue, transport::Channel, Request};

use crate::exit::Failure;

/// courierctl: administer a running Courier bot through its admin API.
#[derive(Debug, Parser)]
#[command(name = "courierctl", version, about)]
struct Cli {
    /// The admin API's URL (`https://…` for TLS).
    #[arg(
        long = "url",
        env = "COURIER_ADMIN_URL",
        default_value = "http://127.0.0.1:50051"
    )]
    url: String,
    /// The admin token (COURIER_ADMIN_TOKEN of courier-admin).
    #[arg(long = "token", env = "COURIER_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// A CA certificate (PEM) to trust for an `https` URL, beside the public roots.
    #[arg(long = "ca-cert", env = "COURIER_ADMIN_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// How long one call may take.
    #[arg(long = "timeout", default_value = "60", value_parser = parse_secs)]
    timeout: Duration,
    /// Print the answer as JSON (for scripts).
    #[arg(long = "json", global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

fn parse_secs(raw: &str) -> Result<Duration, String> {
    raw.trim_end_matches('s')
        .parse::<u64>()
        .map(Duration::from_secs)
        .map_err(|_| format!("`{raw}` is not a number of seconds"))
}

#[derive(Debug, Subcommand)]
enum Command {
    /// The webhook Telegram delivers updates to.
    #[command(subcommand)]
    Webhook(WebhookCommand),
    /// Workers and partitions, backlogs, the active sender, dead letters, throughput, pause.
    Status,
    /// One chat.
    #[command(subcommand)]
    Chat(ChatCommand),
    /// Dead letters.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Stop the sender calling Telegram (updates are still accepted and applied; replies wait).
    Pause {
        /// Why (shown by `status`).
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// Let the sender call Telegram again.
    Resume,
    /// Send one text to every user who started the bot and has not blocked it, and watch it
    /// go out: `courierctl broadcast "text"`. Also `status`, `watch`, `list`, `cancel`.
    Broadcast(BroadcastArgs),
}

/// `broadcast "text"`, or one of its subcommands.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct BroadcastArgs {
    #[command(subcommand)]
    command: Option<BroadcastCommand>,
    #[command(flatten)]
    send: SendArgs,
}

#[derive(Debug, Clone, Args)]
struct SendArgs {
    /// The text (at most 4096 characters). A text that is one of the subcommands' names
    /// goes with `broadcast send`.
    #[arg(required = true)]
    text: Option<String>,
    /// `HTML`, `MarkdownV2` or `Markdown` (default: plain text).
    #[arg(long, default_value = "")]
    parse_mode: String,
    /// Return once the broadcast is stored (it runs in the workers), without watching it.
    #[arg(long)]
    no_wait: bool,
}

#[derive(Debug, Subcommand)]
enum BroadcastCommand {
    /// Send a text (the same as `broadcast "text"`).
    Send(SendArgs),
    /// One broadcast: state, counts.
    Status {
        /// The broadcast's id.
        id: i64,
    },
    /// Watch a broadcast until it is finished (a progress bar, or JSON lines).
    Watch {
        /// The broadcast's id.
        id: i64,
    },
    /// Broadcasts, newest first.
    List {
        /// Broadcasts per page.
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Start below this id (the `next page` of a previous list).
        #[arg(long, default_value_t = 0)]
        before: i64,
    },
    /// Stop a running broadcast: no more users are enqueued.
    Cancel {
        /// The broadcast's id.
        id: i64,
    },
}

#[derive(Debug, Subcommand)]
enum WebhookCommand {
    /// Register the webhook with Telegram (with the configured webhook secret).
    Set {
        /// The HTTPS URL of ingress's webhook, e.g. https://bot.example.com/webhook.
        #[arg(long)]
        url: String,
        /// Update kinds to receive, comma separated (message,my_chat_member,...).
        #[arg(long, value_delimiter = ',')]
        allowed_updates: Vec<String>,
        /// Connections Telegram opens at most (1-100; Telegram's default 40).
        #[arg(long)]
        max_connections: Option<u32>,
        /// Drop the updates Telegram holds for the bot.
        #[arg(long)]
        drop_pending_updates: bool,
    },
    /// What Telegram reports: URL, pending updates, last error.
    Info,
    /// Remove the webhook.
    Delete {
        /// Drop the updates Telegram holds for the bot.
        #[arg(long)]
        drop_pending_updates: bool,
    },
}

#[derive(Debug, Subcommand)]
enum ChatCommand {
    /// Dialogue state, users, last notes, blocked mark, order guard.
    Show {
        /// The chat id.
        #[arg(allow_negative_numbers = true)]
        chat_id: i64,
        /// How many of the latest notes to show.
        #[arg(long, default_value_t = 5)]
        notes: u32,
    },
    /// Set the chat's dialogue state back to the start (everything else is kept).
    Reset {
        /// The chat id.
        #[arg(allow_negative_numbers = true)]
        chat_id: i64,
    },
}

#[derive(Debug, Args)]
struct Filter {
    /// Only this stage: `updates` or `outbound`.
    #[arg(long)]
    stage: Option<String>,
    /// Only letters whose reason contains this.
    #[arg(long)]
    reason: Option<String>,
    /// Only this chat's letters.
    #[arg(long, allow_negative_numbers = true)]
    chat: Option<i64>,
}

impl Filter {
    fn to_pb(&self) -> pb::DeadLetterFilter {
        pb::DeadLetterFilter {
            stage: self.stage.clone().unwrap_or_default(),
            reason_contains: self.reason.clone().unwrap_or_default(),
            chat_id: self.chat.unwrap_or(0),
        }
    }
}

#[derive(Debug, Args)]
struct Selection {
    /// Letter ids (from `dlq list`); without ids, the letters matching the filter.
    ids: Vec<u64>,
    #[command(flatten)]
    filter: Filter,
    /// Every letter (needed when neither ids nor a filter is given).
    #[arg(long)]
    all: bool,
    /// Show what would be done; change nothing.
    #[arg(long)]
    dry_run: bool,
}

impl Selection {
    fn to_pb(&self) -> pb::DeadLetterSelection {
        pb::DeadLetterSelection {
            ids: self.ids.clone(),
            filter: Some(self.filter.to_pb()),
            all: self.all,
        }
    }
}

#[derive(Debug, Subcommand)]
enum DlqCommand {
    /// Dead letters, oldest first.
    List {
        #[command(flatten)]
        filter: Filter,
        /// Letters per page.
        #[arg(long, default_value_t = 50)]
        limit: u32,
        /// Start after this id (the `next page` of a previous list).
        #[arg(long, default_value_t = 0)]
        after: u64,
    },
    /// Send letters back through the pipeline; each is applied or delivered once.
    Replay(Selection),
    /// Delete letters.
    Purge(Selection),
}

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() { exit::USAGE } else { 0 };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("courierctl: cannot start: {e}");
            std::process::exit(exit::OTHER);
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(failure) => {
            eprintln!("courierctl: {}", failure.message);
            failure.code
        }
    };
    std::process::exit(code);
}

/// Puts the token on a call.
type AddToken = Box<dyn FnMut(Request<()>) -> Result<Request<()>, tonic::Status> + Send>;

/// The client, with the token on every call.
pub(crate) type Client =
    AdminClient<tonic::service::interceptor::InterceptedService<Channel, AddToken>>;

async fn connect(cli: &Cli) -> Result<Client, Failure> {
    let mut endpoint = Channel::from_shared(cli.url.clone())
        .map_err(|e| Failure::usage(format!("--url / COURIER_ADMIN_URL `{}`: {e}", cli.url)))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(cli.timeout);
    if cli.url.starts_with("https://") {
        let mut tls = tonic::transport::ClientTlsConfig::new().with_webpki_roots();
        if let Some(path) = &cli.ca_cert {
            let pem = std::fs::read(path)
                .map_err(|e| Failure::usage(format!("--ca-cert {}: {e}", path.display())))?;
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
        }
        endpoint = endpoint
            .tls_config(tls)
            .map_err(|e| Failure::usage(format!("TLS: {e}")))?;
    }
    let channel = endpoint.connect().await.map_err(|e| {
        Failure::new(
            exit::UNREACHABLE,
            format!(
                "cannot reach the admin API at {}: {} (is courier-admin running, and is \
                 COURIER_ADMIN_URL right?)",
                cli.url,
                exit::source_chain(&e)
            ),
        )
    })?;
    let header: Option<MetadataValue<_>> = match cli.token.as_deref().filter(|t| !t.is_empty()) {
        Some(token) => Some(format!("Bearer {token}").parse().map_err(|_| {
            Failure::usage("--token / COURIER_ADMIN_TOKEN has characters a header cannot carry")
        })?),
        None => None,
    };
    let interceptor: AddToken = Box::new(move |mut req: Request<()>| {
        if let Some(h) = &header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    });
    Ok(AdminClient::with_interceptor(channel, interceptor))
}

async fn run(cli: Cli) -> Result<i32, Failure> {
    let mut client = connect(&cli).await?;
    let json = cli.json;
    match &cli.command {
        Command::Webhook(WebhookCommand::Set {
            url,
            allowed_updates,
            max_connections,
            drop_pending_updates,
        }) => {
            let answer = client
                .set_webhook(pb::SetWebhookRequest {
                    url: url.clone(),
                    allowed_updates: allowed_updates.clone(),
                    max_connections: max_connections.unwrap_or(0),
                    drop_pending_updates: *drop_pending_updates,
                })
                .await?
                .into_inner();
            show::webhook_set(&answer, json)
        }
        Command::Webhook(WebhookCommand::Info) => {
            let answer = client
                .get_webhook_info(pb::GetWebhookInfoRequest {})
                .await?
                .into_inner();
            show::webhook_info(&answer, json)
        }
        Command::Webhook(WebhookCommand::Delete {
            drop_pending_updates,
        }) => {
            let answer = client
                .delete_webhook(pb::DeleteWebhookRequest {
                    drop_pending_updates: *drop_pending_updates,
                })
                .await?
                .into_inner();
            show::webhook_deleted(&answer, json)
        }
        Command::Status => {
            let answer = client.status(pb::StatusRequest {}).await?.into_inner();
            show::status(&answer, json)
        }
        Command::Chat(ChatCommand::Show { chat_id, notes }) => {
            let answer = client
                .get_chat(pb::GetChatRequest {
                    chat_id: *chat_id,
                    notes: *notes,
                })
                .await?
                .into_inner();
            show::chat(&answer, json)
        }
        Command::Chat(ChatCommand::Reset { chat_id }) => {
            let answer = client
                .reset_chat(pb::ResetChatRequest { chat_id: *chat_id })
                .await?
                .into_inner();
            show::chat_reset(*chat_id, &answer, json)
        }
        Command::Dlq(DlqCommand::List {
            filter,
            limit,
            after,
        }) => {
            let answer = client
                .list_dead_letters(pb::ListDeadLettersRequest {
                    filter: Some(filter.to_pb()),
                    page_size: *limit,
                    page_token: *after,
                })
                .await?
                .into_inner();
            show::dead_letters(&answer, json)
        }
        Command::Dlq(DlqCommand::Replay(selection)) => {
            let answer = client
                .replay_dead_letters(pb::ReplayDeadLettersRequest {
                    selection: Some(selection.to_pb()),
                    dry_run: selection.dry_run,
                })
                .await?
                .into_inner();
            show::replayed(&answer, json)
        }
        Command::Dlq(DlqCommand::Purge(selection)) => {
            let answer = client
                .purge_dead_letters(pb::PurgeDeadLettersRequest {
                    selection: Some(selection.to_pb()),
                    dry_run: selection.dry_run,
                })
                .await?
                .into_inner();
            show::purged(&answer, json)
        }
        Command::Pause { reason } => {
            let answer = client
                .pause_bot(pb::PauseBotRequest {
                    reason: reason.clone(),
                })
                .await?
                .into_inner();
            show::pause(&answer, json)
        }
        Command::Resume => {
            let answer = client
                .resume_bot(pb::ResumeBotRequest {})
                .await?
                .into_inner();
            show::pause(&answer, json)
        }
        Command::Broadcast(BroadcastArgs { command, send }) => match command {
            None => broadcast::send(&mut client, send, cli.timeout, json).await,
            Some(BroadcastCommand::Send(send)) => {
                broadcast::send(&mut client, send, cli.timeout, json).await
            }
            Some(BroadcastCommand::Watch { id }) => broadcast::watch(&mut client, *id, json).await,
            Some(BroadcastCommand::Status { id }) => {
                let answer = client
                    .get_broadcast(pb::GetBroadcastRequest { id: *id })
                    .await?
                    .into_inner();
                show::broadcast(&answer, json)
            }
            Some(BroadcastCommand::List { limit, before }) => {
                let answer = client
                    .list_broadcasts(pb::ListBroadcastsRequest {
                        page_size: *limit,
                        page_token: *before,
                    })
                    .await?
                    .into_inner();
                show::broadcasts(&answer, json)
            }
            Some(BroadcastCommand::Cancel { id }) => {
                let answer = client
                    .cancel_broadcast(pb::CancelBroadcastRequest { id: *id })
                    .await?
                    .into_inner();
                show::broadcast_cancelled(*id, &answer, json)
            }
        },
    }
}
