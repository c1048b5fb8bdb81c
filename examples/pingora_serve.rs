//! Pingora's HTTP server alone, for `bench/run` (row B-serve): a `ServeHttp` app that reads the request
//! body to its end and answers `200 ok`, contacting nothing behind it.
//!
//! It is the floor of any Pingora-based delivery path: accept, read and parse the head, read the body,
//! write an answer, keep the connection. Set against nginx's `return 200` (the benchmark's app, row A), it
//! says what Pingora's server costs; `examples/pingora_client.rs` adds the sidecar's client to the app, and
//! the sidecar adds its own work on top. The listener is the sidecar's (no L4 read buffer under Pingora's
//! own, `src/server.rs`), the server runs one thread and the allocator is mimalloc, as in the sidecar, so
//! that the differences between those rows are the code on top and nothing else. No access log.
//!
//! ```sh
//! cargo build --release --example pingora_serve
//! target/release/examples/pingora_serve 127.0.0.1:8082    # LISTEN (or PINGORA_SERVE_LISTEN)
//! ```

use std::net::SocketAddr;
use std::process::ExitCode;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::{HttpServer, ServeHttp};
use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::protocols::http::ServerSession;
use pingora::server::Server;
use pingora::server::configuration::ServerConf;
use pingora::services::listening::Service;

#[global_allocator]
static GLOBAL: pps_sidecar::allocator::MiMalloc = pps_sidecar::allocator::MiMalloc;

/// Reads the body and throws it away, like nginx's `return 200` (`ngx_http_discard_request_body`).
struct Ok200;

#[async_trait]
impl ServeHttp for Ok200 {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        // Chunks are dropped as they come: nothing is kept, whatever the body's size.
        loop {
            match session.read_request_body().await {
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    log::warn!("reading the request body: {e}");
                    session.set_keepalive(None);
                    return answer(400, b"");
                }
            }
        }
        answer(200, b"ok\n")
    }
}

fn answer(status: u16, body: &[u8]) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "text/plain")
        .header(http::header::CONTENT_LENGTH, body.len())
        .body(body.to_vec())
        .expect("a fixed status and fixed headers are valid")
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let raw = std::env::args()
        .nth(1)
        .or_else(|| std::env::var("PINGORA_SERVE_LISTEN").ok());
    let Some(listen) = raw.and_then(|r| r.parse::<SocketAddr>().ok()) else {
        eprintln!(
            "usage: pingora_serve LISTEN (an IP:port, e.g. 127.0.0.1:8082, or PINGORA_SERVE_LISTEN)"
        );
        return ExitCode::from(2);
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
    let mut service = Service::new("pingora_serve".to_string(), HttpServer::new_app(Ok200));
    let l4 = L4BufferSettings::default().read(0);
    service.add_listener(ListenerConfig::tcp(listen.to_string()).l4_buffer(l4));
    server.add_service(service);
    server.run_forever()
}
