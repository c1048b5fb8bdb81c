//! W3C trace context and OTLP/HTTP export, on the real binary with a real OTLP/HTTP receiver
//! (`common::collector`) that decodes what it gets: a delivery is one trace from the sender's span through
//! the sidecar's server and client spans into the app; export never holds a delivery.

use serde_json::Value;

use crate::common::collector::{Collector, Span};
use crate::common::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SENDER_SPAN: &str = "00f067aa0ba902b7";

fn traceparent(trace: &str, span: &str, flags: &str) -> String {
    format!("00-{trace}-{span}-{flags}")
}

/// A fresh trace id, so that tests sharing nothing can still be told apart in a receiver.
fn new_trace() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// `(trace id, parent span id, flags)` of a valid version-00 `traceparent`.
fn parts(tp: &str) -> (String, String, String) {
    let p: Vec<&str> = tp.split('-').collect();
    assert_eq!(p.len(), 4, "{tp}");
    assert_eq!(
        (p[0], p[1].len(), p[2].len(), p[3].len()),
        ("00", 32, 16, 2),
        "{tp}"
    );
    assert!(
        tp.bytes()
            .all(|b| b == b'-' || b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    (p[1].into(), p[2].into(), p[3].into())
}

fn the_one(spans: &[Span], kind: i64) -> &Span {
    let of_kind: Vec<&Span> = spans.iter().filter(|s| s.kind() == kind).collect();
    assert_eq!(of_kind.len(), 1, "one span of kind {kind}: {spans:#?}");
    of_kind[0]
}

fn access_line<'a>(log: &'a str, needle: &str) -> &'a str {
    log.lines()
        .find(|l| l.contains("target=access") && l.contains(needle))
        .unwrap_or_else(|| panic!("no access line with {needle}:\n{log}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_is_one_trace_from_the_senders_span_through_the_sidecars_spans_into_the_app() {
    let collector = Collector::start().await;
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, &collector.toml()).await;
    let d = Delivery::json()
        .set("traceparent", Some(&traceparent(TRACE, SENDER_SPAN, "01")))
        .set("tracestate", Some("vendor=opaque"));
    let r = sidecar.send(&d).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // The app continues the sender's trace, its parent the sidecar's span.
    let got = &app.requests()[0];
    assert_eq!(got.all("traceparent").len(), 1, "{:?}", got.headers);
    let (trace, parent, flags) = parts(got.get("traceparent").unwrap());
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "01"));
    assert_ne!(parent, SENDER_SPAN);
    assert_eq!(got.all("tracestate"), ["vendor=opaque"]);

    let spans = collector.wait_trace(TRACE, 2).await;
    let server = the_one(&spans, 2);
    let client = the_one(&spans, 3);
    // The links: sender -> server span -> client span -> the app's traceparent.
    assert_eq!(server.str("parentSpanId"), Some(SENDER_SPAN));
    assert_eq!(client.str("parentSpanId"), server.str("spanId"));
    assert_eq!(client.str("spanId"), Some(parent.as_str()));
    assert_eq!(server.str("traceState"), Some("vendor=opaque"));
    assert_eq!(server.service, "pps-sidecar");
    // The client span lies within the server span.
    assert!(server.nanos("startTimeUnixNano") <= client.nanos("startTimeUnixNano"));
    assert!(client.nanos("endTimeUnixNano") <= server.nanos("endTimeUnixNano"));
    assert!(server.nanos("startTimeUnixNano") > 0);
    // The delivery's attributes.
    for (key, value) in [
        ("pps.outcome", Value::from("forwarded")),
        ("http.response.status_code", 200.into()),
        ("pps.tenant", "OU1243".into()),
        ("pps.topic", "orders/placed".into()),
        ("pps.webhook_id", d.id().into()),
        ("pps.verified", "hmac".into()),
        ("pps.duplicate", false.into()),
        ("http.request.method", "POST".into()),
        ("url.path", "/webhooks".into()),
    ] {
        assert_eq!(server.attr(key), Some(value), "{key}: {server:#?}");
    }
    assert_eq!(server.attr("pps.auth_failure"), None);
    assert_eq!(server.status(), 0);
    assert_eq!(client.attr("http.response.status_code"), Some(200.into()));
    assert_eq!(client.status(), 0);

    // Sent as OTLP/HTTP JSON to the traces path; the access line names the trace.
    let exports = collector.exports();
    assert!(!exports.is_empty());
    for e in exports {
        assert_eq!(e.path, "/v1/traces");
        assert_eq!(e.content_type.as_deref(), Some("application/json"));
    }
    let log = sidecar.log_with("target=access", 1).await;
    assert!(access_line(&log, &d.id()).contains(&format!("trace_id={TRACE}")));
    // Counted once the collector has answered, just after it decoded the spans.
    eventually("the exported spans are counted", || async {
        sidecar
            .metrics()
            .await
            .contains("pps_sidecar_trace_spans_exported_total 2")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_duplicate_and_failed_deliveries_carry_their_outcome_and_error_status() {
    let collector = Collector::start().await;
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, &collector.toml()).await;
    let send = |d: Delivery| {
        let trace = new_trace();
        let d = d.set("traceparent", Some(&traceparent(&trace, SENDER_SPAN, "01")));
        (trace, d)
    };

    // Forged: refused before the app, so one span, with why.
    let (forged_trace, forged) = send(Delivery::json().sign_with("not-the-secret"));
    assert_eq!(sidecar.send(&forged).await.status, 403);
    // A duplicate of an acknowledged delivery: answered from memory, one span.
    let (first_trace, first) = send(Delivery::json());
    assert_eq!(sidecar.send(&first).await.status, 200);
    let dup_trace = new_trace();
    let dup = first.clone().set(
        "traceparent",
        Some(&traceparent(&dup_trace, SENDER_SPAN, "01")),
    );
    let r = sidecar.send(&dup).await;
    assert_eq!((r.status, r.get("x-pps-duplicate")), (200, Some("true")));
    // The app fails: both spans are errors.
    app.set(Behaviour::Answer(500));
    let (failed_trace, failed) = send(Delivery::json());
    assert_eq!(sidecar.send(&failed).await.status, 500);

    let spans = collector.wait_trace(&forged_trace, 1).await;
    let server = the_one(&spans, 2);
    assert_eq!(server.attr("pps.outcome"), Some("unauthorized".into()));
    assert_eq!(server.attr("http.response.status_code"), Some(403.into()));
    assert_eq!(server.attr("pps.verified"), Some("none".into()));
    assert!(
        server
            .attr("pps.auth_failure")
            .is_some_and(|v| v.as_str().is_some_and(|s| !s.is_empty())),
        "{server:#?}"
    );
    // A 403 is the sender's error, not the server's.
    assert_eq!(server.status(), 0);

    let spans = collector.wait_trace(&dup_trace, 1).await;
    let server = the_one(&spans, 2);
    assert_eq!(server.attr("pps.duplicate"), Some(true.into()));
    assert_eq!(server.attr("pps.outcome"), Some("duplicate".into()));
    assert_eq!(server.attr("pps.webhook_id"), Some(first.id().into()));
    assert_eq!(collector.wait_trace(&first_trace, 2).await.len(), 2);

    let spans = collector.wait_trace(&failed_trace, 2).await;
    let (server, client) = (the_one(&spans, 2), the_one(&spans, 3));
    assert_eq!(server.attr("pps.outcome"), Some("upstream_error".into()));
    assert_eq!((server.status(), client.status()), (2, 2));
    assert_eq!(client.attr("http.response.status_code"), Some(500.into()));
    // Neither the forged nor the duplicate delivery had a client span: the app never saw them.
    assert_eq!(collector.trace(&forged_trace).len(), 1);
    assert_eq!(collector.trace(&dup_trace).len(), 1);
    assert_eq!(app.count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_traceparent_is_replaced_by_a_new_trace_and_its_tracestate_dropped() {
    let collector = Collector::start().await;
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, &collector.toml()).await;
    let malformed = format!("00-{}-{SENDER_SPAN}-01", TRACE.to_uppercase());
    let d = Delivery::json()
        .set("traceparent", Some(&malformed))
        .set("tracestate", Some("vendor=opaque"));
    assert_eq!(sidecar.send(&d).await.status, 200);

    let got = &app.requests()[0];
    assert_eq!(got.all("traceparent").len(), 1, "{:?}", got.headers);
    let (trace, parent, flags) = parts(got.get("traceparent").unwrap());
    assert_ne!(trace, TRACE);
    assert_eq!(flags, "01");
    assert!(got.all("tracestate").is_empty(), "{:?}", got.headers);

    let spans = collector.wait_trace(&trace, 2).await;
    let server = the_one(&spans, 2);
    assert_eq!(server.str("parentSpanId"), None, "a new trace has a root");
    assert_eq!(server.str("traceState"), None);
    assert_eq!(the_one(&spans, 3).str("spanId"), Some(parent.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_through_requests_continue_the_trace_too() {
    let collector = Collector::start().await;
    let app = TestApp::start().await;
    let extra = format!(
        "{}[webhooks]\nother_paths = \"forward\"\n",
        collector.toml()
    );
    let sidecar = Sidecar::start(&app, &extra).await;
    let trace = new_trace();
    let req = format!(
        "GET /status?token=x HTTP/1.1\r\nHost: app\r\ntraceparent: {}\r\ntracestate: a=1\r\n\r\n",
        traceparent(&trace, SENDER_SPAN, "01")
    );
    let r = send(sidecar.addr, req.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.text());

    let got = &app.requests()[0];
    let (got_trace, parent, _) = parts(got.get("traceparent").unwrap());
    assert_eq!(got_trace, trace);
    assert_eq!(got.all("tracestate"), ["a=1"]);
    let spans = collector.wait_trace(&trace, 2).await;
    let server = the_one(&spans, 2);
    assert_eq!(server.str("parentSpanId"), Some(SENDER_SPAN));
    assert_eq!(server.attr("pps.outcome"), Some("forwarded".into()));
    // The path, never the query.
    assert_eq!(server.attr("url.path"), Some("/status".into()));
    assert_eq!(server.attr("pps.verified"), None);
    assert_eq!(the_one(&spans, 3).str("spanId"), Some(parent.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_tracing_the_app_still_gets_the_trace_and_nothing_is_exported() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    let unsampled = traceparent(TRACE, SENDER_SPAN, "00");
    let continued = Delivery::json().set("traceparent", Some(&unsampled));
    let fresh = Delivery::json();
    assert_eq!(sidecar.send(&continued).await.status, 200);
    assert_eq!(sidecar.send(&fresh).await.status, 200);

    let reqs = app.requests();
    let (trace, parent, flags) = parts(reqs[0].get("traceparent").unwrap());
    // The sender's trace and sampled flag go on, under a span of the sidecar's.
    assert_eq!((trace.as_str(), flags.as_str()), (TRACE, "00"));
    assert_ne!(parent, SENDER_SPAN);
    // A new trace: the sidecar records nothing and leaves recording to the app.
    let (new, _, flags) = parts(reqs[1].get("traceparent").unwrap());
    assert_ne!(new, TRACE);
    assert_eq!(flags, "01");

    let log = sidecar.log_with("target=access", 2).await;
    assert!(access_line(&log, &continued.id()).contains(&format!("trace_id={TRACE}")));
    assert!(access_line(&log, &fresh.id()).contains(&format!("trace_id={new}")));
    let metrics = sidecar.metrics().await;
    assert!(metrics.contains("pps_sidecar_trace_spans_exported_total 0"));
    assert!(metrics.contains("pps_sidecar_trace_spans_dropped_total{reason=\"queue_full\"} 0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_senders_sampled_flag_is_honored_and_sample_ratio_decides_new_traces() {
    let collector = Collector::start().await;
    let app = TestApp::start().await;
    let extra = format!("{}sample_ratio = 0.0\n", collector.toml());
    let sidecar = Sidecar::start(&app, &extra).await;
    let unsampled = new_trace();
    let fresh = Delivery::json();
    let sampled = new_trace();
    for d in [
        Delivery::json().set(
            "traceparent",
            Some(&traceparent(&unsampled, SENDER_SPAN, "00")),
        ),
        fresh.clone(),
        Delivery::json().set(
            "traceparent",
            Some(&traceparent(&sampled, SENDER_SPAN, "01")),
        ),
    ] {
        assert_eq!(sidecar.send(&d).await.status, 200);
    }
    let reqs = app.requests();
    assert_eq!(parts(reqs[0].get("traceparent").unwrap()).2, "00");
    let (fresh_trace, _, flags) = parts(reqs[1].get("traceparent").unwrap());
    assert_eq!(
        flags, "00",
        "sample_ratio 0 samples no new trace, and says so"
    );
    assert_eq!(parts(reqs[2].get("traceparent").unwrap()).2, "01");

    // The sampled one arrives; the two sent before it, in the same queue, never do.
    assert_eq!(collector.wait_trace(&sampled, 2).await.len(), 2);
    assert!(collector.trace(&unsampled).is_empty());
    assert!(collector.trace(&fresh_trace).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_collector_holds_no_delivery_and_export_resumes_after_it() {
    let collector = Collector::start().await;
    collector.stall();
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, &collector.toml()).await;
    // The exporter is stuck with the first batch...
    assert_eq!(sidecar.send(&Delivery::json()).await.status, 200);
    eventually("the collector holds an export", || async {
        collector.received() == 1
    })
    .await;
    // ...while every delivery is answered as usual.
    let mut last = String::new();
    for _ in 0..30 {
        last = new_trace();
        let d = Delivery::json().set("traceparent", Some(&traceparent(&last, SENDER_SPAN, "01")));
        let r = sidecar.send(&d).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    assert_eq!(app.count(), 31);
    assert_eq!(
        collector.answered(),
        0,
        "the deliveries did not wait for the collector"
    );
    collector.release();
    // The queue kept the spans that came meanwhile.
    assert_eq!(collector.wait_trace(&last, 2).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_is_down_costs_no_delivery_and_its_dropped_spans_are_counted() {
    let down = free_addrs::<1>()[0];
    let app = TestApp::start().await;
    let extra = format!("[tracing]\notlp_endpoint = \"http://{down}/\"\n");
    let sidecar = Sidecar::start(&app, &extra).await;
    for _ in 0..10 {
        assert_eq!(sidecar.send(&Delivery::json()).await.status, 200);
    }
    let dropped = poll("spans dropped and counted", || async {
        let metrics = sidecar.metrics().await;
        metrics
            .lines()
            .find_map(|l| {
                l.strip_prefix("pps_sidecar_trace_spans_dropped_total{reason=\"export_failed\"} ")
            })
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|n| *n > 0)
    })
    .await;
    assert!(dropped <= 20, "{dropped}");
    let log = sidecar.log_with("trace export failed", 1).await;
    assert_eq!(
        log.matches("trace export failed").count(),
        1,
        "once per outage:\n{log}"
    );

    // The collector comes up where it was configured: export resumes.
    let collector = Collector::start_on(down).await;
    let trace = new_trace();
    let d = Delivery::json().set("traceparent", Some(&traceparent(&trace, SENDER_SPAN, "01")));
    assert_eq!(sidecar.send(&d).await.status, 200);
    assert_eq!(collector.wait_trace(&trace, 2).await.len(), 2);
    sidecar.log_with("trace export works again", 1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_turns_export_on_and_a_reload_without_tracing_turns_it_off() {
    let collector = Collector::start().await;
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    let path = sidecar.dir.path().join("sidecar.toml");
    let without = std::fs::read_to_string(&path).unwrap();
    let sent = |trace: &str| {
        Delivery::json().set("traceparent", Some(&traceparent(trace, SENDER_SPAN, "01")))
    };
    let reload = |text: String, n: usize| {
        std::fs::write(&path, text).unwrap();
        signal(sidecar.pid(), "HUP");
        sidecar.log_with("configuration reloaded", n)
    };

    let before = new_trace();
    assert_eq!(sidecar.send(&sent(&before)).await.status, 200);
    reload(format!("{without}\n{}", collector.toml()), 1).await;
    let on = new_trace();
    assert_eq!(sidecar.send(&sent(&on)).await.status, 200);
    assert_eq!(collector.wait_trace(&on, 2).await.len(), 2);
    assert!(collector.trace(&before).is_empty());

    reload(without, 2).await;
    // The old exporter sends what it holds and ends with the configuration that had it.
    sidecar.log_with("trace export stopped", 1).await;
    let off = new_trace();
    assert_eq!(sidecar.send(&sent(&off)).await.status, 200);
    // Still propagated: the app continues the trace; no exporter is left to send its spans.
    assert_eq!(parts(app.requests()[2].get("traceparent").unwrap()).0, off);
    assert!(collector.trace(&off).is_empty());
    let metrics = sidecar.metrics().await;
    assert!(
        metrics.contains("pps_sidecar_trace_spans_exported_total 2"),
        "{metrics}"
    );
}
