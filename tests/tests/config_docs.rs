//! `docs/CONFIGURATION.md` is generated from the services' own argument definitions, and this
//! test fails when it is out of date. Regenerate with:
//! `COURIER_BLESS=1 cargo test -p courier-tests --test config_docs`.

use clap::{Args, Command};

fn table(name: &str, what: &str, cmd: Command) -> String {
    let mut out = format!(
        "## `{name}`\n\n{what}\n\n| variable | flag | default | meaning |\n|---|---|---|---|\n"
    );
    for arg in cmd.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if long == "help" || long == "version" {
            continue;
        }
        let env = arg
            .get_env()
            .map(|e| format!("`{}`", e.to_string_lossy()))
            .unwrap_or_else(|| "—".into());
        let default: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let default = if default.is_empty() {
            "—".to_owned()
        } else {
            format!("`{}`", default.join(","))
        };
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| h.to_string().replace('\n', " "))
            .unwrap_or_default();
        out.push_str(&format!("| {env} | `--{long}` | {default} | {help} |\n"));
    }
    out.push('\n');
    out
}

fn render() -> String {
    let mut doc = String::from(
        "# Configuration\n\n\
         Every service reads its configuration from environment variables or the matching flags \
         (`--help` prints the same list), validates it at start-up and refuses to start with a \
         message that names the variable at fault. Secrets (`COURIER_BOT_TOKEN`, \
         `COURIER_WEBHOOK_SECRET`, `COURIER_ADMIN_TOKEN`, `DATABASE_URL`) are never printed or logged. Without \
         `COURIER_DEV=1` a service refuses to start when a secret it needs is missing; with it, \
         the development values `100001:courier-dev-token`, `courier-dev-secret` and \
         `courier-dev-admin-token` are used.\n\n\
         Durations take `ms`, `s`, `m`, `h` or `d` (`500ms`, `5s`, `2m`, `1h`, `7d`); a bare number is milliseconds.\n\n\
         This file is generated from the code by `tests/tests/config_docs.rs`.\n\n",
    );
    doc += "## Logs and traces (every service)\n\n\
         | variable | default | meaning |\n|---|---|---|\n\
         | `RUST_LOG` | `info` | Log filter (`courier_worker=debug,info`, …) |\n\
         | `COURIER_LOG_FORMAT` | text | `json`: one JSON object per line, with `trace_id` and `span_id` inside a span |\n\
         | `OTEL_EXPORTER_OTLP_ENDPOINT` | — (no export) | OTLP/gRPC collector, e.g. `http://otel-collector:4317`; also `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT` |\n\
         | `OTEL_TRACES_SAMPLER` | `parentbased_always_on` | `parentbased_traceidratio` with `OTEL_TRACES_SAMPLER_ARG=0.1` traces a tenth of the updates (decided at ingress, followed by every service) |\n\
         | `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` | `courier-<service>`, version, instance id | The resource of the exported spans |\n\
         | `OTEL_BSP_SCHEDULE_DELAY` | `5000` | Milliseconds between span exports |\n\
         | `OTEL_SDK_DISABLED` | `false` | `true` turns export off |\n\n\
         See `docs/OPERATIONS.md` for the spans and the metrics.\n\n";
    doc += &table(
        "Every service",
        "Read by `courier-ingress`, `courier-worker`, `courier-sender`, `courier-admin` and `courier-sandbox`.",
        courier_common::shutdown::GraceArgs::augment_args(Command::new("x")),
    );
    doc += &table(
        "courier-ingress",
        "The webhook endpoint.",
        courier_ingress::Config::augment_args(Command::new("x")),
    );
    doc += &table(
        "courier-worker",
        "Applies updates with the notes bot.",
        courier_worker::Config::augment_args(Command::new("x")),
    );
    doc += &table(
        "courier-worker migrate",
        "Runs the migrations and exits (0: the database is up to date); the Helm chart's pre-install/pre-upgrade Job.",
        courier_worker::MigrateArgs::augment_args(Command::new("x")),
    );
    doc += &table(
        "courier-sender",
        "Calls the Bot API.",
        courier_sender::Config::augment_args(Command::new("x")),
    );
    doc += &table(
        "courier-admin",
        "The admin API (gRPC) that `courierctl` talks to. `courierctl` itself reads \
         `COURIER_ADMIN_URL` (`--url`, default `http://127.0.0.1:50051`), `COURIER_ADMIN_TOKEN` \
         (`--token`) and `COURIER_ADMIN_CA_CERT` (`--ca-cert`, a CA to trust for an `https` URL); \
         see `docs/OPERATIONS.md`.",
        courier_admin::Config::augment_args(Command::new("x")),
    );
    doc += &table(
        "courier-sandbox",
        "The Telegram Bot API emulator.",
        courier_sandbox::Config::augment_args(Command::new("x")),
    );
    doc.trim_end().to_owned() + "\n"
}

#[test]
fn configuration_reference_is_current() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/CONFIGURATION.md");
    let want = render();
    if std::env::var_os("COURIER_BLESS").is_some() {
        std::fs::write(&path, &want).unwrap();
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "docs/CONFIGURATION.md is out of date: run COURIER_BLESS=1 cargo test -p courier-tests --test config_docs"
    );
}
