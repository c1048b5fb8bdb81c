//! OTLP/HTTP export of the sidecar's spans, JSON-encoded (`Content-Type: application/json`, which
//! OTLP/HTTP allows alongside protobuf), in batches, from a bounded queue.
//!
//! A request hands its finished spans over with [`Tracer::record`], which never waits: when the queue is
//! full (the collector is down or slow) the spans are dropped and counted
//! (`pps_sidecar_trace_spans_dropped_total{reason="queue_full"}`). One thread of its own, with a runtime of
//! its own, empties the queue: it gathers up to `MAX_BATCH` requests' spans, or what came within
//! `BATCH_DELAY` of the first (sleeping meanwhile, so that a request's `try_send` never has to wake it),
//! and sends them in one `POST {endpoint}/v1/traces` bounded by
//! `EXPORT_TIMEOUT`. A batch the collector does not take (refused, unreachable, too slow) is dropped and
//! counted (`reason="export_failed"`), not retried: the queue stays the only memory export may hold, and
//! nothing a delivery waits for shares a thread with the exporter.
//!
//! The OpenTelemetry project's SDK crates are not used: see the README's "Tracing" section.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use std::io::Write as _;

use tokio::sync::mpsc;

use super::{Context, to_hex};
use crate::config::TracingConfig;
use crate::metrics::METRICS;
pub use crate::outcome::Dropped;

/// Requests whose spans wait for export, at most (each has one or two spans, about 1 KiB together).
const QUEUE: usize = 4096;
/// Requests' spans in one export, at most.
const MAX_BATCH: usize = 512;
/// How long a batch waits for more spans after its first.
const BATCH_DELAY: Duration = Duration::from_millis(500);
/// How often a filling batch looks whether it is full.
const FILL_TICK: Duration = Duration::from_millis(25);
/// One export, connecting included (the OTLP exporters' default).
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// A span attribute's value.
#[derive(Debug, Clone, PartialEq)]
pub enum Attr {
    Str(String),
    Word(&'static str),
    Int(i64),
    Bool(bool),
}

/// The spans of one finished request: its server span and, when the app was asked, the client span.
#[derive(Debug)]
pub struct Finished {
    pub ctx: Context,
    /// The sender's `tracestate`, when its trace is continued.
    pub tracestate: Option<String>,
    pub name: String,
    pub start: SystemTime,
    pub took: Duration,
    pub attributes: Vec<(&'static str, Attr)>,
    /// The status message of a span that failed (status `ERROR`).
    pub error: Option<&'static str>,
    pub client: Option<ClientSpan>,
}

/// The exchange with the app, within the request.
#[derive(Debug)]
pub struct ClientSpan {
    /// From the request's start.
    pub offset: Duration,
    pub took: Duration,
    pub attributes: Vec<(&'static str, Attr)>,
    pub error: Option<&'static str>,
}

impl Finished {
    fn spans(&self) -> u64 {
        1 + u64::from(self.client.is_some())
    }
}

/// Export on: the sampler and the queue's sending end.
pub struct Tracer {
    /// A new trace is sampled when the low 8 bytes of its id, read as a number, are below this.
    threshold: u64,
    always: bool,
    queue: mpsc::Sender<Finished>,
}

impl Tracer {
    /// Starts the export thread for `cfg`. `None` (logged) when the thread cannot be started: the sidecar
    /// then serves without export.
    pub fn start(cfg: &TracingConfig) -> Option<Arc<Tracer>> {
        let (tracer, rx) = Tracer::with_queue(cfg.sample_ratio, QUEUE);
        let url = cfg.traces_url.clone();
        let started = std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build();
                match rt {
                    Ok(rt) => rt.block_on(run(rx, url)),
                    Err(e) => log::warn!("trace export off: no runtime: {e}"),
                }
            });
        match started {
            Ok(_) => Some(Arc::new(tracer)),
            Err(e) => {
                log::warn!("trace export off: cannot start its thread: {e}");
                None
            }
        }
    }

    fn with_queue(sample_ratio: f64, capacity: usize) -> (Tracer, mpsc::Receiver<Finished>) {
        let (queue, rx) = mpsc::channel(capacity);
        let tracer = Tracer {
            threshold: (sample_ratio.clamp(0.0, 1.0) * u64::MAX as f64) as u64,
            always: sample_ratio >= 1.0,
            queue,
        };
        (tracer, rx)
    }

    /// Whether a new trace (no sampled flag from the sender) is sampled, by `sample_ratio`: the same
    /// trace id gets the same answer on every replica.
    pub fn samples(&self, trace_id: &[u8; 16]) -> bool {
        let low = u64::from_be_bytes(trace_id[8..].try_into().unwrap_or_default());
        self.always || low < self.threshold
    }

    /// Queues a request's spans for export, or drops and counts them when the queue is full.
    pub fn record(&self, finished: Finished) {
        if let Err(e) = self.queue.try_send(finished) {
            let f = match e {
                mpsc::error::TrySendError::Full(f) | mpsc::error::TrySendError::Closed(f) => f,
            };
            METRICS.trace_spans_dropped(Dropped::QueueFull, f.spans());
        }
    }
}

/// The export thread: batches from the queue, sent one at a time, until every `Tracer` is gone.
async fn run(mut rx: mpsc::Receiver<Finished>, url: String) {
    let client = reqwest::Client::builder()
        .timeout(EXPORT_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .build();
    let client = match client {
        Ok(c) => c,
        Err(e) => {
            log::warn!("trace export off: no HTTP client: {e}");
            return;
        }
    };
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut failing = false;
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        // The batch fills while this thread sleeps: waiting on the queue would have every request's
        // `try_send` wake it (a system call and a context switch per delivery, on the sidecar's CPU).
        let deadline = tokio::time::Instant::now() + BATCH_DELAY;
        while batch.len() + rx.len() < MAX_BATCH && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(FILL_TICK).await;
        }
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(f) => batch.push(f),
                Err(_) => break,
            }
        }
        let spans = batch.iter().map(Finished::spans).sum();
        let body = encode(&batch);
        batch.clear();
        let sent = client
            .post(&url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await;
        let refused = match sent {
            Ok(r) if r.status().is_success() => None,
            Ok(r) => Some(format!("the collector answered {}", r.status().as_u16())),
            Err(e) if e.is_timeout() => Some("the collector did not answer in time".into()),
            Err(_) => Some("the collector is unreachable".into()),
        };
        match refused {
            None => {
                METRICS.trace_spans_exported(spans);
                if failing {
                    log::info!("trace export works again");
                }
                failing = false;
            }
            Some(why) => {
                METRICS.trace_spans_dropped(Dropped::ExportFailed, spans);
                // Once per outage, not once per batch.
                if !failing {
                    log::warn!("trace export failed, spans dropped until it works: {why}");
                }
                failing = true;
            }
        }
    }
    // Every `Tracer` is gone (a reload changed or removed `[tracing]`), its spans sent.
    log::info!("trace export stopped: the configuration in force no longer uses this exporter");
}

/// An `ExportTraceServiceRequest` in OTLP's JSON encoding: ids in hex, 64-bit numbers as strings. Written
/// straight into the bytes of the body (strings escaped by `serde_json`), not built as a `Value` first:
/// the export thread's CPU is the sidecar's.
pub fn encode(batch: &[Finished]) -> Vec<u8> {
    let mut w = Json(Vec::with_capacity(256 + batch.len() * 1200));
    w.raw(r#"{"resourceSpans":[{"resource":{"attributes":"#);
    w.attributes(&[
        ("service.name", Attr::Word("pps-sidecar")),
        ("service.version", Attr::Word(env!("CARGO_PKG_VERSION"))),
    ]);
    w.raw(r#"},"scopeSpans":[{"scope":{"name":"pps-sidecar","version":"#);
    w.string(env!("CARGO_PKG_VERSION"));
    w.raw(r#"},"spans":["#);
    for (i, f) in batch.iter().enumerate() {
        if i > 0 {
            w.raw(",");
        }
        let ctx = &f.ctx;
        w.span(Span {
            ctx,
            id: &ctx.server,
            parent: ctx.parent.as_ref(),
            kind: 2,
            name: &f.name,
            start: f.start,
            took: f.took,
            attributes: &f.attributes,
            error: f.error,
            tracestate: f.tracestate.as_deref(),
        });
        if let Some(c) = &f.client {
            w.raw(",");
            w.span(Span {
                ctx,
                id: &ctx.client,
                parent: Some(&ctx.server),
                kind: 3,
                name: &f.name,
                start: f.start + c.offset,
                took: c.took,
                attributes: &c.attributes,
                error: c.error,
                tracestate: None,
            });
        }
    }
    w.raw("]}]}]}");
    w.0
}

struct Span<'a> {
    ctx: &'a Context,
    id: &'a [u8; 8],
    parent: Option<&'a [u8; 8]>,
    /// `SPAN_KIND_SERVER` (2) or `SPAN_KIND_CLIENT` (3).
    kind: u8,
    name: &'a str,
    start: SystemTime,
    took: Duration,
    attributes: &'a [(&'static str, Attr)],
    error: Option<&'a str>,
    tracestate: Option<&'a str>,
}

/// A JSON body being written.
struct Json(Vec<u8>);

impl Json {
    fn raw(&mut self, s: &str) {
        self.0.extend_from_slice(s.as_bytes());
    }

    /// A JSON string, quoted and escaped.
    fn string(&mut self, s: &str) {
        let _ = serde_json::to_writer(&mut self.0, s);
    }

    fn hex(&mut self, id: &[u8]) {
        let mut digits = [0; 32];
        let digits = &mut digits[..id.len() * 2];
        to_hex(id, digits);
        self.0.push(b'"');
        self.0.extend_from_slice(digits);
        self.0.push(b'"');
    }

    fn nanos(&mut self, t: SystemTime) {
        let n = t.duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos();
        let _ = write!(self.0, "\"{n}\"");
    }

    fn span(&mut self, s: Span<'_>) {
        self.raw(r#"{"traceId":"#);
        self.hex(&s.ctx.trace_id);
        self.raw(r#","spanId":"#);
        self.hex(s.id);
        if let Some(parent) = s.parent {
            self.raw(r#","parentSpanId":"#);
            self.hex(parent);
        }
        if let Some(state) = s.tracestate {
            self.raw(r#","traceState":"#);
            self.string(state);
        }
        self.raw(r#","name":"#);
        self.string(s.name);
        let _ = write!(self.0, r#","kind":{},"startTimeUnixNano":"#, s.kind);
        self.nanos(s.start);
        self.raw(r#","endTimeUnixNano":"#);
        self.nanos(s.start + s.took);
        self.raw(r#","attributes":"#);
        self.attributes(s.attributes);
        // `STATUS_CODE_ERROR` (2) with its message, or `STATUS_CODE_UNSET` (0).
        match s.error {
            Some(message) => {
                self.raw(r#","status":{"code":2,"message":"#);
                self.string(message);
                self.raw("}}");
            }
            None => self.raw(r#","status":{"code":0}}"#),
        }
    }

    fn attributes(&mut self, attrs: &[(&str, Attr)]) {
        self.raw("[");
        for (i, (key, value)) in attrs.iter().enumerate() {
            if i > 0 {
                self.raw(",");
            }
            self.raw(r#"{"key":"#);
            self.string(key);
            self.raw(r#","value":{"#);
            match value {
                Attr::Str(s) => {
                    self.raw(r#""stringValue":"#);
                    self.string(s);
                }
                Attr::Word(s) => {
                    self.raw(r#""stringValue":"#);
                    self.string(s);
                }
                Attr::Int(n) => {
                    let _ = write!(self.0, r#""intValue":"{n}""#);
                }
                Attr::Bool(b) => {
                    let _ = write!(self.0, r#""boolValue":{b}"#);
                }
            }
            self.raw("}}");
        }
        self.raw("]");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn hex(id: &[u8]) -> String {
        id.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn finished(client: bool) -> Finished {
        let ctx = Context::start(&http::HeaderMap::new(), None);
        Finished {
            ctx,
            tracestate: None,
            name: "POST".into(),
            start: UNIX_EPOCH + Duration::from_secs(1_700_000_000),
            took: Duration::from_millis(5),
            attributes: vec![("http.response.status_code", Attr::Int(502))],
            error: Some("upstream_error"),
            client: client.then(|| ClientSpan {
                offset: Duration::from_millis(1),
                took: Duration::from_millis(3),
                attributes: vec![("pps.duplicate", Attr::Bool(false))],
                error: None,
            }),
        }
    }

    #[test]
    fn a_full_queue_drops_and_counts_instead_of_waiting_or_growing() {
        let (tracer, mut rx) = Tracer::with_queue(1.0, 2);
        let before = METRICS.trace_spans_dropped_now(Dropped::QueueFull);
        tracer.record(finished(true));
        tracer.record(finished(false));
        tracer.record(finished(true));
        assert_eq!(
            METRICS.trace_spans_dropped_now(Dropped::QueueFull) - before,
            2
        );
        assert!(rx.try_recv().unwrap().client.is_some());
        assert!(rx.try_recv().unwrap().client.is_none());
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn sample_ratio_decides_new_traces_by_their_id() {
        let (none, _rx) = Tracer::with_queue(0.0, 1);
        let (half, _rx2) = Tracer::with_queue(0.5, 1);
        let (all, _rx3) = Tracer::with_queue(1.0, 1);
        let mut low = [0xff; 16];
        low[8..].copy_from_slice(&1u64.to_be_bytes());
        let high = [0xff; 16];
        assert!(!none.samples(&low) && !none.samples(&high));
        assert!(half.samples(&low) && !half.samples(&high));
        assert!(all.samples(&low) && all.samples(&high));
    }

    #[test]
    fn spans_are_encoded_as_otlp_json_with_their_links() {
        let mut f = finished(true);
        f.tracestate = Some("v=1".into());
        f.attributes
            .push(("pps.tenant", Attr::Str("a\"b\n\u{2028}".into())));
        let v: Value = serde_json::from_slice(&encode(&[f, finished(false)])).unwrap();
        let f = &v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(f["traceState"], "v=1");
        assert_eq!(f["attributes"][1]["value"]["stringValue"], "a\"b\n\u{2028}");
        assert_eq!(
            v["resourceSpans"][0]["scopeSpans"][0]["spans"]
                .as_array()
                .unwrap()
                .len(),
            3
        );
        assert_eq!(
            v["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"],
            "pps-sidecar"
        );
        let f = finished(true);
        let v: Value = serde_json::from_slice(&encode(std::slice::from_ref(&f))).unwrap();
        let spans = &v["resourceSpans"][0]["scopeSpans"][0]["spans"];
        let (server, client) = (&spans[0], &spans[1]);
        assert_eq!(server["traceId"], hex(&f.ctx.trace_id));
        assert_eq!(server["kind"], 2);
        assert!(server.get("parentSpanId").is_none());
        assert_eq!(server["startTimeUnixNano"], "1700000000000000000");
        assert_eq!(server["endTimeUnixNano"], "1700000000005000000");
        assert_eq!(server["status"]["code"], 2);
        assert_eq!(server["attributes"][0]["value"]["intValue"], "502");
        assert_eq!(client["parentSpanId"], hex(&f.ctx.server));
        assert_eq!(client["spanId"], hex(&f.ctx.client));
        assert_eq!(client["kind"], 3);
        assert_eq!(client["startTimeUnixNano"], "1700000000001000000");
        assert_eq!(client["attributes"][0]["value"]["boolValue"], false);
        assert_eq!(client["status"]["code"], 0);
    }
}
