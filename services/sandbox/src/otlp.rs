//! A small OTLP/gRPC trace receiver, so that a trace can be looked at on a machine without a
//! collector or the internet: the services export to it (`OTEL_EXPORTER_OTLP_ENDPOINT`), it
//! keeps the last [`Spans::CAPACITY`] spans in memory, and the sandbox serves them at
//! `/sandbox/traces` (a list), `/sandbox/traces/{trace_id}` (JSON) and
//! `/sandbox/traces/{trace_id}/tree` (an indented text tree). Tests use it as their in-test
//! receiver. It is not a collector: it stores nothing on disk and forwards nothing.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use courier_common::CancellationToken;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use serde::Serialize;

/// One span as received.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ReceivedSpan {
    /// `service.name` of the resource that sent it.
    pub service: String,
    /// Trace id, 32 hex digits.
    pub trace_id: String,
    /// Span id, 16 hex digits.
    pub span_id: String,
    /// The parent's span id (empty for a root).
    pub parent_span_id: String,
    /// The span's name.
    pub name: String,
    /// `server`, `client`, `producer`, `consumer` or `internal`.
    pub kind: &'static str,
    /// Start, Unix nanoseconds.
    pub start_unix_ns: u64,
    /// End, Unix nanoseconds.
    pub end_unix_ns: u64,
    /// Attributes, values as text.
    pub attributes: BTreeMap<String, String>,
}

impl ReceivedSpan {
    /// An attribute's value.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// A trace in the list at `/sandbox/traces`.
#[derive(Debug, Clone, Serialize)]
pub struct TraceSummary {
    /// Trace id.
    pub trace_id: String,
    /// The root span's name (or the earliest span's, while the root has not arrived).
    pub root: String,
    /// The services whose spans it holds.
    pub services: Vec<String>,
    /// How many spans arrived.
    pub spans: usize,
    /// From the first span's start to the last span's end, in milliseconds.
    pub duration_ms: f64,
    /// The first span's start, Unix milliseconds.
    pub started_unix_ms: u64,
}

/// The spans received, newest last, at most [`Spans::CAPACITY`].
#[derive(Debug, Default)]
pub struct Spans {
    spans: Mutex<VecDeque<ReceivedSpan>>,
}

impl Spans {
    /// Most spans kept; the oldest go first.
    pub const CAPACITY: usize = 20_000;

    fn add(&self, new: impl IntoIterator<Item = ReceivedSpan>) {
        let mut spans = self.spans.lock().expect("spans lock");
        for s in new {
            if spans.len() == Self::CAPACITY {
                spans.pop_front();
            }
            spans.push_back(s);
        }
    }

    /// Every span kept.
    pub fn all(&self) -> Vec<ReceivedSpan> {
        self.spans
            .lock()
            .expect("spans lock")
            .iter()
            .cloned()
            .collect()
    }

    /// The spans of one trace, by start time.
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        let mut spans: Vec<ReceivedSpan> = self
            .spans
            .lock()
            .expect("spans lock")
            .iter()
            .filter(|s| s.trace_id == trace_id)
            .cloned()
            .collect();
        spans.sort_by_key(|s| (s.start_unix_ns, s.end_unix_ns));
        spans
    }

    /// The traces kept, newest first, at most `limit`.
    pub fn traces(&self, limit: usize) -> Vec<TraceSummary> {
        let mut by_trace: BTreeMap<String, Vec<ReceivedSpan>> = BTreeMap::new();
        for s in self.spans.lock().expect("spans lock").iter() {
            by_trace
                .entry(s.trace_id.clone())
                .or_default()
                .push(s.clone());
        }
        let mut list: Vec<TraceSummary> = by_trace
            .into_iter()
            .map(|(trace_id, spans)| {
                let start = spans.iter().map(|s| s.start_unix_ns).min().unwrap_or(0);
                let end = spans.iter().map(|s| s.end_unix_ns).max().unwrap_or(0);
                let root = spans
                    .iter()
                    .find(|s| s.parent_span_id.is_empty())
                    .or_else(|| spans.iter().min_by_key(|s| s.start_unix_ns))
                    .map(|s| s.name.clone())
                    .unwrap_or_default();
                let services: BTreeSet<String> = spans.iter().map(|s| s.service.clone()).collect();
                TraceSummary {
                    trace_id,
                    root,
                    services: services.into_iter().collect(),
                    spans: spans.len(),
                    duration_ms: end.saturating_sub(start) as f64 / 1e6,
                    started_unix_ms: start / 1_000_000,
                }
            })
            .collect();
        list.sort_by_key(|t| std::cmp::Reverse(t.started_unix_ms));
        list.truncate(limit);
        list
    }

    /// One trace as an indented tree: each span with its service, offset from the trace's
    /// start, duration and attributes.
    pub fn tree(&self, trace_id: &str) -> String {
        let spans = self.trace(trace_id);
        let Some(t0) = spans.iter().map(|s| s.start_unix_ns).min() else {
            return format!("no spans of trace {trace_id}\n");
        };
        let ids: BTreeSet<&str> = spans.iter().map(|s| s.span_id.as_str()).collect();
        let mut out = format!("trace {trace_id}\n");
        // Roots: no parent, or a parent that has not arrived.
        let roots: Vec<&ReceivedSpan> = spans
            .iter()
            .filter(|s| s.parent_span_id.is_empty() || !ids.contains(s.parent_span_id.as_str()))
            .collect();
        fn walk(out: &mut String, spans: &[ReceivedSpan], s: &ReceivedSpan, depth: usize, t0: u64) {
            let attrs: Vec<String> = s
                .attributes
                .iter()
                .filter(|(k, _)| !k.starts_with("code.") && !k.starts_with("thread."))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let _ = writeln!(
                out,
                "{:indent$}{} [{}] +{:.1} ms {:.2} ms {}",
                "",
                s.name,
                s.service,
                s.start_unix_ns.saturating_sub(t0) as f64 / 1e6,
                s.end_unix_ns.saturating_sub(s.start_unix_ns) as f64 / 1e6,
                attrs.join(" "),
                indent = depth * 2
            );
            for child in spans.iter().filter(|c| c.parent_span_id == s.span_id) {
                walk(out, spans, child, depth + 1, t0);
            }
        }
        for root in roots {
            walk(&mut out, &spans, root, 1, t0);
        }
        out
    }
}

struct Receiver {
    spans: Arc<Spans>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = Vec::new();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .map(|kv| text(kv.value.as_ref()))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    received.push(ReceivedSpan {
                        service: service.clone(),
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_span_id: hex(&s.parent_span_id),
                        kind: match s.kind {
                            2 => "server",
                            3 => "client",
                            4 => "producer",
                            5 => "consumer",
                            _ => "internal",
                        },
                        name: s.name,
                        start_unix_ns: s.start_time_unix_nano,
                        end_unix_ns: s.end_time_unix_nano,
                        attributes: attributes(&s.attributes),
                    });
                }
            }
        }
        self.spans.add(received);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn attributes(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
        .collect()
}

fn text(v: Option<&AnyValue>) -> String {
    match v.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// The routes under `/sandbox/traces`: the list (`?limit=`, default 50), one trace as JSON,
/// one as a text tree. 404 when the sandbox runs no receiver.
pub fn router(spans: Option<Arc<Spans>>) -> Router {
    Router::new()
        .route("/sandbox/traces", get(list))
        .route("/sandbox/traces/{trace_id}", get(one))
        .route("/sandbox/traces/{trace_id}/tree", get(tree))
        .with_state(spans)
}

type TraceState = State<Option<Arc<Spans>>>;

const NO_RECEIVER: (StatusCode, &str) = (
    StatusCode::NOT_FOUND,
    "no OTLP receiver: start the sandbox with --otlp-addr / COURIER_SANDBOX_OTLP_ADDR\n",
);

#[derive(serde::Deserialize)]
struct ListQuery {
    limit: Option<usize>,
}

async fn list(State(spans): TraceState, Query(q): Query<ListQuery>) -> Response {
    match spans {
        Some(spans) => Json(spans.traces(q.limit.unwrap_or(50))).into_response(),
        None => NO_RECEIVER.into_response(),
    }
}

async fn one(State(spans): TraceState, Path(trace_id): Path<String>) -> Response {
    match spans {
        Some(spans) => Json(spans.trace(&trace_id)).into_response(),
        None => NO_RECEIVER.into_response(),
    }
}

async fn tree(State(spans): TraceState, Path(trace_id): Path<String>) -> Response {
    match spans {
        Some(spans) => spans.tree(&trace_id).into_response(),
        None => NO_RECEIVER.into_response(),
    }
}

/// Serves the OTLP/gRPC trace service on `listener` until `shutdown`, storing into `spans`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    spans: Arc<Spans>,
    shutdown: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    tonic::transport::Server::builder()
        .add_service(TraceServiceServer::new(Receiver { spans }))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            shutdown.cancelled_owned(),
        )
        .await
}

/// Starts a receiver on `addr` (port 0 for any) in the background: its bound address and its
/// spans. Stops when `shutdown` fires.
pub async fn start(
    addr: std::net::SocketAddr,
    shutdown: CancellationToken,
) -> std::io::Result<(std::net::SocketAddr, Arc<Spans>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let spans = Arc::new(Spans::default());
    let serving = spans.clone();
    tokio::spawn(async move {
        if let Err(e) = serve(listener, serving, shutdown).await {
            tracing::warn!(error = %e, "OTLP receiver stopped");
        }
    });
    Ok((bound, spans))
}
