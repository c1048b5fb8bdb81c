//! Pingora's HTTP server forwarding every request with the sidecar's own client to the app, and doing
//! nothing else, for `bench/run` (row B-client).
//!
//! The same server as `examples/pingora_serve.rs` (a `ServeHttp` app, the sidecar's listener settings,
//! one thread, mimalloc), but each request is read whole and sent to the app with
//! `pps_sidecar::upstream::App`, whose answer is relayed. No verification, dedup, header rules, access
//! log or metrics: so this row minus B-serve is what the client costs, and the sidecar's row minus this one
//! is what the `ProxyHttp` framework and the sidecar's own work cost. The app and its timeouts come from
//! the `[upstream]` section of a sidecar configuration file (bench/run passes the sidecar's own).
//!
//! It uses the client's public API only (`App::new`, `send`, `Exchange`, `finish`): when that API changes,
//! this file changes with it.
//!
//! ```sh
//! cargo build --release --example pingora_client
//! target/release/examples/pingora_client 127.0.0.1:8083 conf/sidecar.toml   # LISTEN CONFIG
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use http::Response;
use pingora::apps::http_app::{HttpServer, ServeHttp};
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::protocols::http::ServerSession;
use pingora::server::Server;
use pingora::server::configuration::ServerConf;
use pingora::services::listening::Service;
use pps_sidecar::config::Config;
use pps_sidecar::upstream::App;

#[global_allocator]
static GLOBAL: pps_sidecar::allocator::MiMalloc = pps_sidecar::allocator::MiMalloc;

/// The app's answer body is read whole before it is relayed (`ServeHttp`'s limitation); past this, 502.
const MAX_ANSWER_BYTES: usize = 1 << 20;

struct Forward {
    app: App,
    max_body_bytes: usize,
}

#[async_trait]
impl ServeHttp for Forward {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let body = match read_body(session, self.max_body_bytes).await {
            Ok(body) => body,
            Err(status) => {
                session.set_keepalive(None);
                return empty(status);
            }
        };
        let head = request_head(session, body.len());
        let mut exchange = match self.app.send(head, &body).await {
            Ok(exchange) => exchange,
            Err(failure) => return empty(failure.status()),
        };
        let mut answer = Vec::new();
        loop {
            match exchange.body_chunk().await {
                Ok(Some(chunk)) if answer.len() + chunk.len() <= MAX_ANSWER_BYTES => {
                    answer.extend_from_slice(&chunk)
                }
                Ok(Some(_)) | Err(_) => return empty(502),
                Ok(None) => break,
            }
        }
        let mut parts: http::response::Parts = exchange.take_header().into();
        self.app.finish(exchange);
        parts
            .headers
            .insert(http::header::CONTENT_LENGTH, answer.len().into());
        Response::from_parts(parts, answer)
    }
}

/// The whole request body, at most `max` bytes (else 413).
async fn read_body(session: &mut ServerSession, max: usize) -> Result<Bytes, u16> {
    let mut body = BytesMut::new();
    loop {
        match session.read_request_body().await {
            Ok(Some(chunk)) if body.len() + chunk.len() <= max => body.extend_from_slice(&chunk),
            Ok(Some(_)) => return Err(413),
            Ok(None) => return Ok(body.freeze()),
            Err(_) => return Err(400),
        }
    }
}

/// The request as received, framed by a `Content-Length` of our own: the least a forwarder writes.
fn request_head(session: &ServerSession, body_len: usize) -> Vec<u8> {
    let req = session.req_header();
    let mut head = Vec::with_capacity(1024);
    head.extend_from_slice(req.method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(req.raw_path());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in req.headers.iter() {
        if name == http::header::CONTENT_LENGTH
            || name == http::header::TRANSFER_ENCODING
            || name == http::header::CONNECTION
        {
            continue;
        }
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(format!("content-length: {body_len}\r\n\r\n").as_bytes());
    head
}

fn empty(status: u16) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_LENGTH, 0)
        .body(Vec::new())
        .expect("a known status is valid")
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(config)) = (args.next(), args.next()) else {
        eprintln!("usage: pingora_client LISTEN CONFIG (e.g. 127.0.0.1:8083 conf/sidecar.toml)");
        return ExitCode::from(2);
    };
    let Ok(listen) = listen.parse::<SocketAddr>() else {
        eprintln!("pingora_client: LISTEN must be an IP:port address");
        return ExitCode::from(2);
    };
    let cfg = match Config::load(&PathBuf::from(config)) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("pingora_client: {e}");
            return ExitCode::from(2);
        }
    };
    let conf = ServerConf {
        threads: 1,
        // SIGTERM ends it at once: Pingora would otherwise wait 5 minutes for connections to drain.
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(1),
        // The runtime the sidecar runs with one thread (a current-thread one), so that the rows compare
        // like with like.
        work_stealing: false,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let forward = Forward {
        app: App::new(&cfg.upstream, cfg.deadlines()),
        max_body_bytes: cfg.webhooks.max_body_bytes,
    };
    let mut service = Service::new("pingora_client".to_string(), HttpServer::new_app(forward));
    let l4 = L4BufferSettings::default().read(0);
    service.add_listener(ListenerConfig::tcp(listen.to_string()).l4_buffer(l4));
    server.add_service(service);
    server.run_forever()
}
