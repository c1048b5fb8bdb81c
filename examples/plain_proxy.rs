//! The Pingora floor for `bench/run`: a reverse proxy that forwards every request to one address and
//! verifies nothing.
//!
//! It is what Pingora itself costs per request, with nothing of the sidecar's work (no body buffering, HMAC,
//! dedup, header rules or access log), so the benchmark can split the sidecar's CPU per request into the
//! framework's share and its own. One thread, keep-alive on both sides (Pingora's connection pool to the
//! app), and the same allocator as the sidecar so that the difference is the sidecar's code, not malloc.
//!
//! ```sh
//! cargo build --release --example plain_proxy
//! target/release/examples/plain_proxy 127.0.0.1:8081 127.0.0.1:3000   # LISTEN UPSTREAM
//! ```
//! Both addresses may also come from `PLAIN_PROXY_LISTEN` and `PLAIN_PROXY_UPSTREAM`.

use std::net::SocketAddr;
use std::process::ExitCode;

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

#[global_allocator]
static GLOBAL: pps_sidecar::allocator::MiMalloc = pps_sidecar::allocator::MiMalloc;

/// Forwards to one upstream; the peer is built once so a request only clones it.
struct Plain {
    upstream: HttpPeer,
}

#[async_trait]
impl ProxyHttp for Plain {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(self.upstream.clone()))
    }
}

/// The Nth command-line argument, else the environment variable, as a socket address.
fn address(position: usize, var: &str) -> Result<SocketAddr, String> {
    let raw = std::env::args()
        .nth(position)
        .or_else(|| std::env::var(var).ok())
        .ok_or_else(|| format!("missing address: argument {position} or {var}"))?;
    raw.parse()
        .map_err(|e| format!("{var} (argument {position}): not an IP:port address: {e}"))
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let (listen, upstream) = match (
        address(1, "PLAIN_PROXY_LISTEN"),
        address(2, "PLAIN_PROXY_UPSTREAM"),
    ) {
        (Ok(l), Ok(u)) => (l, u),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!(
                "plain_proxy: {e}\nusage: plain_proxy LISTEN UPSTREAM (e.g. 127.0.0.1:8081 127.0.0.1:3000)"
            );
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
    let plain = Plain {
        upstream: HttpPeer::new(upstream, false, String::new()),
    };
    let mut proxy = http_proxy_service(&server.configuration, plain);
    proxy.add_tcp(&listen.to_string());
    server.add_service(proxy);
    server.run_forever()
}
