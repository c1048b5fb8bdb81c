//! The admin listener: `/healthz`, `/readyz`, `/metrics`, `POST /spool/replay` from loopback only, and the
//! app's own probes (`/app-probe/...`, `admin::probe`).
//! Never the webhook path, never on the webhook port.
//!
//! It is reachable by any pod in the cluster (probes and scrapes come from outside the pod), so it has
//! bounds of its own, smaller than the webhook listener's ([`LIMITS`]): 150 connections each sending a
//! 1 MiB head without its end once grew the process by 200 MiB through this port.

pub mod probe;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::Response;
use pingora::http::ResponseHeader;
use pingora::protocols::http::ServerSession;

use crate::limits::ConnectionLimits;
use crate::listener::Handler;
use crate::metrics::METRICS;
use crate::spool;
use crate::state::Shared;

/// The admin listener's bounds: probes and scrapes are small, few, and answered at once; a head of a few
/// hundred bytes. A connection that sends nothing costs a few KiB until `header_timeout` closes it, so
/// the bound on connections is generous, and one peer may hold only a few of them: a pod that floods
/// this port cannot take the kubelet's probes away (a failed liveness probe would restart the sidecar
/// and lose its dedup cache). No keep-alive (`keepalive` zero): every answer closes its connection, so a
/// slot is held only while a head arrives, never by an idle connection touched now and then (the
/// kubelet opens a connection per probe anyway, and a scrape every few seconds pays one handshake).
pub const LIMITS: ConnectionLimits = ConnectionLimits {
    max_connections: 512,
    max_per_peer: Some(16),
    header_timeout: Duration::from_secs(5),
    keepalive: Duration::ZERO,
    max_header_bytes: 8 * 1024,
};

/// A `POST /spool/replay` body, at most.
const MAX_REPLAY_BODY: usize = 64 * 1024;
/// Reading that body, and writing any answer, at most.
const IO_LIMIT: Duration = Duration::from_secs(5);

pub struct Admin {
    pub shared: Arc<Shared>,
}

#[async_trait]
impl Handler for Admin {
    async fn serve(&self, session: &mut ServerSession) {
        let resp = self.response(session).await;
        let (parts, body) = resp.into_parts();
        let Ok(mut head) = ResponseHeader::build(parts.status, Some(parts.headers.len())) else {
            return;
        };
        for (name, value) in &parts.headers {
            let _ = head.append_header(name.clone(), value.clone());
        }
        let write = async {
            session.write_response_header(Box::new(head)).await?;
            session.write_response_body(Bytes::from(body), true).await
        };
        if !matches!(tokio::time::timeout(IO_LIMIT, write).await, Ok(Ok(()))) {
            session.set_keepalive(None);
        }
    }
}

impl Admin {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let path = session.req_header().uri.path().to_string();
        match path.as_str() {
            "/healthz" => text(200, "ok\n".into()),
            "/readyz" => {
                let (ready, detail) = self.readiness().await;
                text(if ready { 200 } else { 503 }, detail)
            }
            "/spool/replay" => self.replay(session).await,
            p if p.starts_with(crate::admin::probe::PREFIX) => {
                crate::admin::probe::serve(&session.req_header().method, p).await
            }
            "/metrics" => {
                self.count_spool().await;
                let mut page = METRICS.render(
                    self.shared.dedup.entries(),
                    self.shared.bodies.held() as u64,
                );
                let live = self.shared.live();
                crate::auth::series::render(
                    &mut page,
                    &live.config.auth,
                    live.jwt.as_deref(),
                    crate::timefmt::unix_now(),
                );
                let mut r = text(200, page);
                r.headers_mut().insert(
                    "Content-Type",
                    http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                r
            }
            _ => text(404, "not found\n".into()),
        }
    }
}

impl Admin {
    /// `POST /spool/replay` with a JSON `spool::ReplayRequest`: 403 unless the peer is on this host.
    async fn replay(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        // Both ends on loopback: a service mesh forwards the cluster's connections from a loopback address
        // (Istio: 127.0.0.6), but to the pod's own address.
        let peer = session.client_addr().and_then(|a| a.as_inet()).copied();
        let local = session.server_addr().and_then(|a| a.as_inet()).copied();
        if !(spool::is_loopback_peer(peer) && spool::is_loopback_peer(local)) {
            return text(403, "replay is allowed from loopback only\n".into());
        }
        if session.req_header().method != http::Method::POST {
            return text(405, "method not allowed\n".into());
        }
        let live = self.shared.live();
        let Some(cfg) = live.config.spool.clone() else {
            return text(404, "no spool: spool.dir is not set\n".into());
        };
        let mut body = Vec::new();
        let reading = async {
            while let Ok(Some(chunk)) = session.read_request_body().await {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_REPLAY_BODY {
                    return false;
                }
            }
            true
        };
        if !matches!(tokio::time::timeout(IO_LIMIT, reading).await, Ok(true)) {
            session.set_keepalive(None);
            return text(413, "request too large or too slow\n".into());
        }
        match serde_json::from_slice::<spool::ReplayRequest>(&body) {
            Ok(req) => {
                let done = spool::replay(&self.shared, &cfg, req).await;
                let mut r = text(200, serde_json::to_string(&done).unwrap_or_default());
                r.headers_mut().insert(
                    "Content-Type",
                    http::HeaderValue::from_static("application/json"),
                );
                r
            }
            Err(_) => text(400, "expected {\"ids\": [...]} or {\"all\": true}\n".into()),
        }
    }

    /// Counts the spool for its gauges, dropping what has grown older than `spool.max_age_hours`: entries
    /// age without any write to notice.
    async fn count_spool(&self) {
        if let Some(cfg) = &self.shared.live().config.spool {
            let store = spool::Store::new(cfg);
            let _ = tokio::task::spawn_blocking(move || store.prune(spool::now_ms())).await;
        }
    }

    /// Ready when the config is loaded, the JWKS are (with JWT), the webhook listener and the app accept
    /// TCP connections. One line per check, so that
    /// `kubectl describe` shows which one failed.
    async fn readiness(&self) -> (bool, String) {
        let live = self.shared.live();
        let mut ready = !self.shared.draining();
        let mut detail = if ready {
            String::new()
        } else {
            "shutting down: SIGTERM received\n".to_string()
        };
        detail.push_str(&format!("config: ok ({})\n", live.config.path.display()));
        if let Some(jwt) = &live.jwt {
            let missing = jwt.not_loaded();
            if missing.is_empty() {
                detail.push_str("jwks: ok\n");
            } else {
                ready = false;
                detail.push_str(&format!(
                    "jwks: not loaded yet for {}\n",
                    missing.join(", ")
                ));
            }
        }
        let hmac = live
            .config
            .auth
            .methods
            .contains(&crate::config::Method::Hmac)
            .then(|| crate::auth::hmac::status(&live.config.auth.hmac, crate::timefmt::unix_now()));
        for line in [self.shared.dedup.status(), hmac.flatten()]
            .into_iter()
            .flatten()
        {
            detail.push_str(&line);
            detail.push('\n');
        }
        let limit = live
            .config
            .upstream
            .connect_timeout
            .min(Duration::from_secs(2));
        let listener = reachable(live.config.server.listen);
        for (what, addr) in [
            ("webhook listener", listener),
            ("app", live.config.upstream.socket_addr),
        ] {
            let line = accepts(addr, limit)
                .await
                .map(|()| format!("{what}: ok ({addr})"));
            ready &= line.is_ok();
            detail.push_str(&line.unwrap_or_else(|e| format!("{what}: {e}")));
            detail.push('\n');
        }
        (ready, detail)
    }
}

/// Whether something accepts TCP connections at `addr` within `limit`; `Err` says what happened.
async fn accepts(addr: SocketAddr, limit: Duration) -> Result<(), String> {
    match tokio::time::timeout(limit, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("not accepting connections at {addr}: {}", e.kind())),
        Err(_) => Err(format!("connect to {addr} timed out")),
    }
}

/// The address this process reaches its own listener at: a wildcard address means loopback.
fn reachable(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

/// A plain-text answer of the admin listener.
pub(crate) fn text(status: u16, body: String) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header("Content-Type", "text/plain; charset=utf-8")
        .header("Content-Length", body.len())
        .body(body.into_bytes())
        .expect("static response parts are valid")
}
