//! Wiring: the Pingora server with the proxy service and the admin service.

use std::sync::Arc;

use pingora::server::Server;
use pingora::server::configuration::ServerConf;
use pingora::services::listening::Service;

use crate::admin::Admin;
use crate::config::{Backend, Config};
use crate::dedup::memory::MemoryStore;
use crate::dedup::redis::RedisStore;
use crate::dedup::{Dedup, DedupStore};
use crate::lifecycle::{self, JwksRefresher, Reloader};
use crate::limits::{ConnectionTimeouts, Listener};
use crate::proxy::Sidecar;
use crate::state::Shared;

/// Runs until SIGTERM/SIGINT; never returns. Exits 1 at once when a listener cannot be bound: Pingora
/// would keep retrying while the pod looks alive.
pub fn run(config: Config) -> ! {
    for (key, addr) in [
        ("server.listen", config.server.listen),
        ("server.admin_listen", config.server.admin_listen),
    ] {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            log::error!("cannot listen on {addr} ({key}): {e}");
            std::process::exit(1);
        }
    }
    let conf = ServerConf {
        threads: config.server.threads,
        // SIGTERM: Pingora stops accepting, then waits this long; `exit_when_drained` ends the wait as
        // soon as nothing is in flight. Pingora's default (300 s) is far beyond a pod's grace period.
        grace_period_seconds: Some(config.server.shutdown_grace.as_secs()),
        graceful_shutdown_timeout_seconds: Some(1),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let in_flight_ttl = config.upstream.deadlines().claim;
    let d = &config.dedup;
    let local = MemoryStore::new(d.max_entries, d.ttl, in_flight_ttl);
    let store: Arc<dyn DedupStore> = match (d.backend, &d.redis_url) {
        (Backend::Redis, Some(url)) => Arc::new(
            RedisStore::new(
                url,
                &d.redis_prefix,
                d.redis_timeout,
                d.ttl,
                in_flight_ttl,
                local,
            )
            .expect("the URL was validated with the configuration"),
        ),
        _ => Arc::new(local),
    };
    let dedup = Dedup::new(store, config.dedup.in_flight_wait);

    let listen = config.server.listen.to_string();
    let admin_listen = config.server.admin_listen.to_string();
    log::info!(
        "pps-sidecar {} listening on {listen} (admin {admin_listen}), app at {}",
        env!("CARGO_PKG_VERSION"),
        config.upstream.address
    );
    if let Some(cfg) = &config.spool {
        crate::spool::open(cfg);
    }
    let shared = Arc::new(Shared::new(config, dedup));

    let proxy = pingora::proxy::http_proxy(
        &server.configuration,
        Sidecar {
            shared: shared.clone(),
        },
    );
    let server_cfg = &shared.live().config.server;
    let timeouts = ConnectionTimeouts {
        header: server_cfg.header_timeout,
        keepalive: server_cfg.keepalive_timeout,
    };
    let mut proxy = Service::new(
        "webhooks".to_string(),
        Listener::new(proxy, server_cfg.max_connections, timeouts),
    );
    proxy.add_tcp(&listen);

    let mut admin = Service::new(
        "admin".to_string(),
        Admin {
            shared: shared.clone(),
        },
    );
    admin.add_tcp(&admin_listen);
    admin.threads = Some(1);

    let reloader = pingora::services::background::background_service(
        "reload",
        Reloader {
            shared: shared.clone(),
        },
    );

    server.add_service(proxy);
    server.add_service(admin);
    let jwks = pingora::services::background::background_service(
        "jwks",
        JwksRefresher {
            shared: shared.clone(),
        },
    );
    server.add_service(reloader);
    server.add_service(jwks);
    lifecycle::exit_when_drained(server.watch_execution_phase());
    server.run_forever()
}
