//! An OpenTelemetry collector's OTLP/HTTP traces receiver: a real HTTP/1.1 server on loopback that takes
//! `POST /v1/traces` in OTLP's JSON encoding, decodes the spans it receives, and answers `200 {}` — or,
//! stalled, holds every answer until the test releases it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::http::{header, read_body, read_headers};
use super::poll;

/// One export as received.
#[derive(Debug, Clone)]
pub struct Export {
    pub path: String,
    pub content_type: Option<String>,
}

/// A span as decoded, with its resource's `service.name`.
#[derive(Debug, Clone)]
pub struct Span {
    pub service: String,
    pub json: Value,
}

impl Span {
    pub fn str(&self, field: &str) -> Option<&str> {
        self.json[field].as_str()
    }

    pub fn kind(&self) -> i64 {
        self.json["kind"].as_i64().unwrap_or(0)
    }

    /// The status code: 0 unset, 1 ok, 2 error.
    pub fn status(&self) -> i64 {
        self.json["status"]["code"].as_i64().unwrap_or(0)
    }

    /// An attribute's value as JSON: a string, a number (`intValue`, sent as a string) or a bool.
    pub fn attr(&self, key: &str) -> Option<Value> {
        let attrs = self.json["attributes"].as_array()?;
        let v = &attrs.iter().find(|a| a["key"] == key)?["value"];
        if let Some(s) = v["stringValue"].as_str() {
            return Some(s.into());
        }
        if let Some(n) = v["intValue"].as_str().and_then(|n| n.parse::<i64>().ok()) {
            return Some(n.into());
        }
        v["boolValue"].as_bool().map(Value::from)
    }

    pub fn nanos(&self, field: &str) -> u128 {
        self.str(field).and_then(|n| n.parse().ok()).unwrap_or(0)
    }
}

struct State {
    spans: Mutex<Vec<Span>>,
    exports: Mutex<Vec<Export>>,
    /// Exports received, answered or not.
    received: watch::Sender<usize>,
    /// `true`: answers wait until it is `false` again.
    stalled: watch::Sender<bool>,
    answered: Mutex<usize>,
}

pub struct Collector {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl Collector {
    pub async fn start() -> Collector {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(addr: SocketAddr) -> Collector {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            spans: Mutex::new(Vec::new()),
            exports: Mutex::new(Vec::new()),
            received: watch::channel(0).0,
            stalled: watch::channel(false).0,
            answered: Mutex::new(0),
        });
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, st.clone()));
            }
        });
        Collector { addr, state }
    }

    /// The `[tracing]` table that exports here.
    pub fn toml(&self) -> String {
        format!("[tracing]\notlp_endpoint = \"http://{}\"\n", self.addr)
    }

    /// From now on, answers wait until `release`.
    pub fn stall(&self) {
        self.state.stalled.send_replace(true);
    }

    pub fn release(&self) {
        self.state.stalled.send_replace(false);
    }

    pub fn received(&self) -> usize {
        *self.state.received.borrow()
    }

    pub fn answered(&self) -> usize {
        *self.state.answered.lock().unwrap()
    }

    pub fn exports(&self) -> Vec<Export> {
        self.state.exports.lock().unwrap().clone()
    }

    /// Every span of trace `trace_id` received so far.
    pub fn trace(&self, trace_id: &str) -> Vec<Span> {
        self.state
            .spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.str("traceId") == Some(trace_id))
            .cloned()
            .collect()
    }

    /// The spans of `trace_id`, once there are `n`.
    pub async fn wait_trace(&self, trace_id: &str, n: usize) -> Vec<Span> {
        poll(&format!("{n} spans of trace {trace_id}"), || async {
            let spans = self.trace(trace_id);
            (spans.len() >= n).then_some(spans)
        })
        .await
    }
}

async fn serve(stream: TcpStream, state: Arc<State>) {
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let Some(headers) = read_headers(&mut reader).await else {
            return;
        };
        let Some(body) = read_body(&mut reader, &headers, false).await else {
            return;
        };
        state.exports.lock().unwrap().push(Export {
            path,
            content_type: header(&headers, "content-type").map(str::to_string),
        });
        let decoded: Value = serde_json::from_slice(&body).expect("an OTLP/JSON export");
        let mut spans = Vec::new();
        for rs in decoded["resourceSpans"].as_array().expect("resourceSpans") {
            let service = rs["resource"]["attributes"]
                .as_array()
                .and_then(|a| a.iter().find(|a| a["key"] == "service.name"))
                .and_then(|a| a["value"]["stringValue"].as_str())
                .unwrap_or_default()
                .to_string();
            for ss in rs["scopeSpans"].as_array().expect("scopeSpans") {
                for span in ss["spans"].as_array().expect("spans") {
                    spans.push(Span {
                        service: service.clone(),
                        json: span.clone(),
                    });
                }
            }
        }
        state.spans.lock().unwrap().extend(spans);
        state.received.send_modify(|n| *n += 1);
        let mut stalled = state.stalled.subscribe();
        let _ = stalled.wait_for(|s| !*s).await;
        let answer =
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}";
        if reader.get_mut().write_all(answer).await.is_err() {
            return;
        }
        *state.answered.lock().unwrap() += 1;
    }
}
