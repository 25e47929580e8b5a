//! One trace from the webhook to the Bot API call (issue 17): every service as a process,
//! exporting over OTLP/gRPC to a receiver inside the test (a tonic `TraceService` on the
//! `opentelemetry-proto` types: `courier_sandbox::otlp`).

use std::collections::BTreeMap;
use std::time::Duration;

use courier_sandbox::otlp::{self, ReceivedSpan};
use courier_tests::procs::{ProcessStack, ProcessStackOptions};
use courier_tests::{eventually, SECRET, TOKEN};

/// The spans one note's trace must hold, child → parent, with the service of each.
const CHAIN: &[(&str, &str, &str)] = &[
    // (span, service, parent span)
    ("publish", "courier-ingress", "webhook"),
    ("update", "courier-worker", "publish"),
    ("order_guard", "courier-worker", "update"),
    ("fsm_step", "courier-worker", "update"),
    ("commit", "courier-worker", "update"),
    ("outbox_publish", "courier-worker", "update"),
    ("send", "courier-sender", "outbox_publish"),
    ("limit_wait", "courier-sender", "send"),
    ("bot_api_call", "courier-sender", "send"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_update_is_one_trace_from_the_webhook_to_the_bot_api_call() -> anyhow::Result<()> {
    let stop = courier_common::CancellationToken::new();
    let _stop = stop.clone().drop_guard();
    let (addr, spans) = otlp::start("127.0.0.1:0".parse()?, stop).await?;
    let mut stack = ProcessStack::start(ProcessStackOptions {
        env: vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{addr}")),
            // Export within 100 ms rather than the default 5 s.
            ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
            ("COURIER_LOG_FORMAT", "json".into()),
            // The production level: spans must link without debug logging (they did not with
            // a per-layer log filter); ingress's debug line gives the JSON check a line inside
            // a span.
            ("RUST_LOG", "info,courier_ingress=debug".into()),
        ],
        ..Default::default()
    })
    .await?;
    let chat = 940_001;
    let note = "my secret note: buy milk";
    stack.say(chat, "/start").await?;
    stack.bot_replies(chat, 1).await?;
    stack.say(chat, note).await?;
    let transcript = stack.bot_replies(chat, 2).await?;
    let reply = transcript
        .iter()
        .rev()
        .find(|l| l.from_bot)
        .map(|l| l.text.clone())
        .expect("a reply");

    // The note's trace: the webhook span whose update was the second one of the chat.
    let trace = eventually("the note's whole trace", Duration::from_secs(30), || {
        let spans = spans.clone();
        async move {
            let all = spans.all();
            let mut webhooks: Vec<&ReceivedSpan> = all
                .iter()
                .filter(|s| s.name == "webhook" && s.attr("chat_id") == Some("940001"))
                .collect();
            webhooks.sort_by_key(|s| s.start_unix_ns);
            let Some(webhook) = webhooks.get(1) else {
                return Ok(None);
            };
            let trace = spans.trace(&webhook.trace_id);
            let names: Vec<&str> = trace.iter().map(|s| s.name.as_str()).collect();
            let complete = CHAIN.iter().all(|(name, _, _)| names.contains(name));
            Ok(complete.then_some(trace))
        }
    })
    .await?;

    let by_name: BTreeMap<&str, &ReceivedSpan> =
        trace.iter().map(|s| (s.name.as_str(), s)).collect();
    let tree = spans.tree(&trace[0].trace_id);
    eprintln!("{tree}");
    let webhook = by_name["webhook"];
    assert_eq!(webhook.service, "courier-ingress");
    assert_eq!(
        webhook.parent_span_id, "",
        "the webhook is the root:\n{tree}"
    );
    assert_eq!(webhook.kind, "server");
    for (name, service, parent) in CHAIN {
        let span = by_name[name];
        assert_eq!(span.service, *service, "{name}:\n{tree}");
        assert_eq!(
            span.parent_span_id, by_name[parent].span_id,
            "{name} is a child of {parent}:\n{tree}"
        );
        assert!(
            span.start_unix_ns >= by_name[parent].start_unix_ns,
            "{name} starts after {parent}:\n{tree}"
        );
    }
    // The ids on the way.
    let update_id = webhook.attr("update_id").expect("update_id").to_owned();
    let stream_seq = webhook.attr("stream_seq").expect("stream_seq").to_owned();
    let update = by_name["update"];
    for (key, want) in [
        ("update_id", update_id.as_str()),
        ("chat_id", "940001"),
        ("stream_seq", stream_seq.as_str()),
        ("outcome", "applied"),
    ] {
        assert_eq!(update.attr(key), Some(want), "worker update.{key}:\n{tree}");
    }
    for span in [webhook, update] {
        for key in ["bot_id", "partition"] {
            assert!(span.attr(key).is_some(), "{}.{key}:\n{tree}", span.name);
        }
    }
    assert_eq!(webhook.attr("outcome"), Some("accepted"));
    assert_eq!(webhook.attr("http.response.status_code"), Some("200"));
    let send = by_name["send"];
    assert_eq!(send.attr("outcome"), Some("sent"), "{tree}");
    assert_eq!(send.attr("update_id"), Some(update_id.as_str()));
    assert_eq!(send.attr("chat_id"), Some("940001"));
    assert!(send.attr("outbox_id").is_some() && send.attr("stream_seq").is_some());
    assert_eq!(
        by_name["outbox_publish"].attr("outbox_id"),
        send.attr("outbox_id")
    );
    let call = by_name["bot_api_call"];
    assert_eq!(call.attr("method"), Some("sendMessage"));
    assert_eq!(call.attr("result"), Some("ok"));
    assert_eq!(call.kind, "client");

    // Never message text, tokens or secrets, in any span of any trace.
    let token_secret = TOKEN.split_once(':').map(|(_, s)| s).unwrap_or(TOKEN);
    for span in spans.all() {
        for (k, v) in &span.attributes {
            for needle in [note, reply.as_str(), "buy milk", token_secret, SECRET] {
                assert!(
                    !v.contains(needle),
                    "{} [{}] attribute {k} carries {needle:?}",
                    span.name,
                    span.service
                );
            }
        }
    }

    // JSON log lines carry the trace id: the worker logged something inside the trace.
    stack.stop().await?;
    let mut found = Vec::new();
    for (s, log) in &stack.services[1..] {
        let text = std::fs::read_to_string(log)?;
        if text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|v| v["trace_id"] == webhook.trace_id.as_str() && v["span_id"].is_string())
        {
            found.push(s.name.clone());
        }
    }
    assert!(
        !found.is_empty(),
        "JSON log lines with the note's trace_id: {found:?}"
    );
    Ok(())
}

/// A reply published by whoever finds it unpublished (here as the relay does, in a process
/// that does not trace) carries its update's trace context, stored with the outbox row, to
/// the sender, as well as the webhook's time for the end-to-end age.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_published_after_a_crash_carries_its_updates_trace_context() -> anyhow::Result<()> {
    use async_nats::jetstream;
    use courier_common::topology;
    use courier_proto::{v1::OutboundMessage, Message as _};

    let nats = courier_tests::NatsServer::start().await?;
    let js = jetstream::new(async_nats::connect(nats.url()).await?);
    topology::ensure_streams(&js, 4).await?;
    let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let received = chrono::DateTime::from_timestamp_millis(1_764_000_000_123).expect("time");
    let row = courier_worker::store::OutboxRow {
        id: 41,
        chat_id: 7,
        origin_update_id: 9,
        text: "hello".into(),
        created_at: chrono::Utc::now(),
        traceparent: Some(traceparent.into()),
        origin_received_at: Some(received),
        parse_mode: String::new(),
        action: None,
    };
    let acked = courier_worker::outbox::publish(&js, 1001, std::slice::from_ref(&row)).await;
    assert_eq!(acked, [41]);
    let stream = js.get_stream(topology::OUTBOUND_STREAM).await?;
    let msg = stream
        .get_last_raw_message_by_subject(&topology::outbound_subject(1001, 7))
        .await?;
    let headers = msg.headers;
    assert_eq!(
        headers.get("traceparent").map(|v| v.as_str()),
        Some(traceparent),
        "the row's trace context travels on"
    );
    let out = OutboundMessage::decode(msg.payload)?;
    assert_eq!(out.origin_received_at_unix_ms, 1_764_000_000_123);
    Ok(())
}
