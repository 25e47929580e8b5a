//! The tracing subscriber every binary installs: logs, and OpenTelemetry traces exported over
//! OTLP/gRPC.
//!
//! **Logs.** `RUST_LOG` filters (default `info`); `COURIER_LOG_FORMAT=json` writes one JSON
//! object per line, with `trace_id` and `span_id` when the line was written inside a span, so
//! the lines of one update can be found in every service; text (the default) is for humans.
//!
//! **Traces** are configured by the standard OpenTelemetry variables and are off unless an
//! endpoint is given:
//! - `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`: the collector's
//!   OTLP/gRPC address (e.g. `http://otel-collector:4317`); `OTEL_EXPORTER_OTLP_HEADERS`,
//!   `OTEL_EXPORTER_OTLP_TIMEOUT` as usual. `OTEL_SDK_DISABLED=true` turns export off.
//! - `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`: default `parentbased_always_on`; use
//!   `parentbased_traceidratio` with a ratio to sample a share of updates (the decision is
//!   taken once, at ingress, and every later service follows it through the trace context).
//! - `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` override the resource, which carries
//!   `service.name` (`courier-ingress`, …), `service.version` and `service.instance.id` (host
//!   name and process id, unless given).
//!
//! Spans carry ids (bot, update, chat, partition, stream sequence, outbox id) and outcomes,
//! never message text, tokens or secrets. `RUST_LOG` decides which spans exist as well as
//! which lines are logged: keep Courier's targets at `info` (the default) for whole traces.

use std::sync::OnceLock;

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, Writer};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, EnvFilter, Layer};

/// What [`init`] installed; [`Telemetry::shutdown`] flushes the spans not exported yet.
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still buffered and stops the exporter, waiting at most
    /// [`FLUSH_TIMEOUT`] (an unreachable collector must not hold up the process's exit). Call
    /// it when the service has stopped, before the process exits.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        let flush = tokio::task::spawn_blocking(move || provider.shutdown());
        match tokio::time::timeout(FLUSH_TIMEOUT, flush).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => eprintln!("telemetry: flushing spans at shutdown failed: {e}"),
            Ok(Err(e)) => eprintln!("telemetry: flushing spans at shutdown failed: {e}"),
            Err(_) => eprintln!("telemetry: spans not flushed within {FLUSH_TIMEOUT:?}; dropped"),
        }
    }
}

/// How long [`Telemetry::shutdown`] waits for the last spans to leave.
pub const FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

/// Errors setting up the exporter.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The OTLP exporter could not be built from the `OTEL_*` configuration.
    #[error("OTLP span exporter: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

static INSTALLED: OnceLock<()> = OnceLock::new();

/// Whether the standard variables ask for span export.
pub fn export_configured() -> bool {
    let set = |k: &str| std::env::var(k).is_ok_and(|v| !v.trim().is_empty());
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
    !disabled && (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
}

/// Installs the global subscriber for the service `service` (e.g. `courier-ingress`): logs as
/// described in the module documentation, and the OpenTelemetry layer when spans are exported
/// or JSON logs want trace ids. Must be called inside a Tokio runtime when exporting. Safe
/// to call twice (the second call installs nothing), which in-process tests rely on.
pub fn init(service: &'static str) -> Result<Telemetry, TelemetryError> {
    if INSTALLED.set(()).is_err() {
        return Ok(Telemetry::default());
    }
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let json = std::env::var("COURIER_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let exporting = export_configured();

    let provider = if exporting || json {
        let mut builder = SdkTracerProvider::builder().with_resource(resource(service));
        if exporting {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()?;
            builder = builder.with_batch_exporter(exporter);
        }
        Some(builder.build())
    } else {
        None
    };
    let otel = provider.as_ref().map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer(service))
            .with_tracked_inactivity(false)
            .with_context_activation(false)
            .with_threads(false)
            .with_location(false)
            .with_target(false)
            .with_filter(courier_spans())
    });
    let logs = if json {
        fmt::layer()
            .event_format(WithTraceIds(fmt::format().json().with_target(true)))
            .fmt_fields(format::JsonFields::new())
            .boxed()
    } else {
        fmt::layer().with_target(true).boxed()
    };
    // `RUST_LOG` filters globally, spans included; a per-layer filter on the log layer beside the
    // OpenTelemetry layer's own made spans lose their parents (each span its own trace) unless
    // debug logging was on: test `traces::one_update_is_one_trace_…` runs at `info`.
    let _ = tracing_subscriber::registry()
        .with(filter())
        .with(otel)
        .with(logs)
        .try_init();
    Ok(Telemetry {
        provider: provider.filter(|_| exporting),
    })
}

/// What the OpenTelemetry layer records: Courier's own spans (and the events inside them) at
/// `info` and above. Not the libraries' (hyper, h2, tonic, sqlx): besides their volume, the
/// exporter's own gRPC calls would produce spans to export.
fn courier_spans() -> tracing_subscriber::filter::FilterFn {
    tracing_subscriber::filter::filter_fn(|meta| {
        meta.target().starts_with("courier_") && *meta.level() <= tracing::Level::INFO
    })
}

/// The resource: `service.name`, `service.version`, `service.instance.id`, merged under what
/// `OTEL_SERVICE_NAME` / `OTEL_RESOURCE_ATTRIBUTES` say.
fn resource(service: &'static str) -> Resource {
    let instance = format!(
        "{}-{}",
        std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into()),
        std::process::id()
    );
    let defaults = Resource::builder_empty()
        .with_service_name(service)
        .with_attributes([
            KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            KeyValue::new("service.instance.id", instance),
        ])
        .build();
    // `Resource::builder()` reads the OTEL_* variables; they win over the defaults.
    let configured = Resource::builder().build();
    let mut builder = Resource::builder_empty();
    for (k, v) in defaults.iter().chain(configured.iter()) {
        // The SDK's own fallback name ("unknown_service") must not hide ours.
        if k.as_str() == "service.name" && v.as_str().starts_with("unknown_service") {
            continue;
        }
        builder = builder.with_attribute(KeyValue::new(k.clone(), v.clone()));
    }
    builder.build()
}

/// JSON event format with the current span's `trace_id` and `span_id` as top-level fields.
///
/// Written here because tracing-subscriber's JSON format knows nothing of OpenTelemetry: the
/// inner format writes the line, and the ids are spliced in after its opening brace.
struct WithTraceIds<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        // Read before the inner format borrows any span's extensions.
        let ids = ctx.lookup_current().and_then(|_| {
            let cx = tracing::Span::current().context();
            let span = cx.span();
            let sc = span.span_context();
            sc.is_valid()
                .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
        });
        let Some((trace_id, span_id)) = ids else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(
                writer,
                "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"
            ),
            None => writer.write_str(&line),
        }
    }
}
