//! Wiring: the Pingora server with the webhook listener, the admin listener and the background services,
//! in the order they start.

mod drain;

use std::sync::Arc;

use pingora::listeners::{L4BufferSettings, ListenerConfig};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use pingora::services::listening::Service;

use crate::admin::{self, Admin};
use crate::auth::jwt;
use crate::config::Config;
use crate::dedup::Dedup;
use crate::limits::ConnectionLimits;
use crate::listener::Listener;
use crate::proxy::Webhooks;
use crate::reload::Reloader;
use crate::state::Shared;

/// Runs until SIGTERM/SIGINT; never returns. Exits 1 at once when a listener cannot be bound: Pingora
/// would keep retrying while the pod looks alive.
pub fn run(config: Config) -> ! {
    check_listeners(&config);
    let conf = ServerConf {
        threads: config.server.threads,
        // SIGTERM: Pingora stops accepting, then waits this long; `exit_when_drained` ends the wait as
        // soon as nothing is in flight. Pingora's default (300 s) is far beyond a pod's grace period.
        grace_period_seconds: Some(config.server.shutdown_grace.as_secs()),
        graceful_shutdown_timeout_seconds: Some(1),
        // One thread has nothing to steal from: Pingora then runs a current-thread runtime, which spends
        // about 1.5 us less per delivery than a one-worker work-stealing one (bench/README.md). With more
        // threads, stealing keeps two busy connections from sharing one thread while another idles.
        work_stealing: config.server.threads > 1,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let admin_listen = config.server.admin_listen.to_string();
    log::info!(
        "pps-sidecar {} listening on {} (admin {admin_listen}), app at {}",
        env!("CARGO_PKG_VERSION"),
        config.server.listen,
        config.upstream.address
    );
    let dedup = Dedup::from_config(&config.dedup, config.deadlines().claim);
    if let Some(cfg) = &config.spool {
        crate::spool::open(cfg);
    }
    let shared = Arc::new(Shared::new(config, dedup));

    let webhooks = webhook_service(&shared);
    let mut admin = Service::new(
        "admin".to_string(),
        Listener::new(
            Admin {
                shared: shared.clone(),
            },
            admin::LIMITS,
            false,
        ),
    );
    // No read buffer under Pingora's own here either (see `webhook_service`): with it, each of the admin
    // listener's 512 allowed connections held 64 KiB.
    admin.add_listener(
        ListenerConfig::tcp(admin_listen.clone()).l4_buffer(L4BufferSettings::default().read(0)),
    );
    admin.threads = Some(1);
    let reloader = Reloader {
        shared: shared.clone(),
    };
    let signals = drain::Signals {
        shared: shared.clone(),
        delay: shared.live().config.server.shutdown_delay,
    };
    let jwks = jwt::Refresher {
        current: Box::new(move || shared.live().jwt.clone()),
    };

    server.add_service(webhooks);
    server.add_service(admin);
    server.add_service(background_service("reload", reloader));
    server.add_service(background_service("jwks", jwks));
    drain::exit_when_drained(server.watch_execution_phase());
    server.run(RunArgs {
        shutdown_signal: Box::new(signals),
    });
    crate::logging::flush();
    std::process::exit(0)
}

/// Both addresses can be bound now, or the process ends with the reason.
fn check_listeners(config: &Config) {
    for (key, addr) in [
        ("server.listen", config.server.listen),
        ("server.admin_listen", config.server.admin_listen),
    ] {
        if let Err(e) = std::net::TcpListener::bind(addr) {
            log::error!("cannot listen on {addr} ({key}): {e}");
            std::process::exit(1);
        }
    }
}

/// The webhook listener: deliveries and pass-through within the connection limits of `server.*`.
fn webhook_service(shared: &Arc<Shared>) -> Service<Listener<Webhooks>> {
    let live = shared.live();
    let cfg = &live.config.server;
    let limits = ConnectionLimits {
        max_connections: cfg.max_connections,
        max_per_peer: None,
        header_timeout: cfg.header_timeout,
        keepalive: cfg.keepalive_timeout,
        max_header_bytes: cfg.max_header_bytes,
    };
    let handler = Webhooks {
        shared: shared.clone(),
    };
    let mut service = Service::new("webhooks".to_string(), Listener::new(handler, limits, true));
    // No read buffer under Pingora's own: its default, 64 KiB zero-filled per connection, cost 92 KiB of
    // RSS per idle connection (1,000 idle connections: 108 MiB). Pingora reads a head into a buffer of its
    // own and a body in 64 KiB reads, so the layer below only added a copy.
    let l4 = L4BufferSettings::default().read(0);
    service.add_listener(ListenerConfig::tcp(cfg.listen.to_string()).l4_buffer(l4));
    service
}
