//! The configuration in force and what was built from it, shared by the proxy, the admin listener and the
//! background services. A reload swaps it whole; a request keeps the one it started with.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use crate::auth::jwt::JwtVerifier;
use crate::config::{Config, Deadlines, Method};
use crate::dedup::Dedup;
use crate::limits::BodyBudget;
use crate::trace::Tracer;
use crate::upstream::App;

/// The configuration in force and what was built from it. Replaced whole on reload.
pub struct Live {
    pub config: Config,
    /// `config`'s deadlines, within the start-up claim lifetime.
    pub deadlines: Deadlines,
    pub app: Arc<App>,
    /// Present when "jwt" is in `auth.methods`.
    pub jwt: Option<Arc<JwtVerifier>>,
    /// Present when `[tracing] otlp_endpoint` is set: the sampler and the export queue.
    pub tracer: Option<Arc<Tracer>>,
}

/// State shared by the proxy, admin, reload and refresh services.
pub struct Shared {
    live: RwLock<Arc<Live>>,
    pub dedup: Dedup,
    /// Request bodies in memory, all connections together.
    pub bodies: Arc<BodyBudget>,
    /// The start-up configuration's deadlines, which sized the dedup claims.
    pub startup: Deadlines,
    /// SIGTERM arrived: not ready any more, connections not kept.
    draining: AtomicBool,
}

impl Shared {
    pub fn new(config: Config, dedup: Dedup) -> Self {
        let startup = config.deadlines();
        let app = Arc::new(App::new(&config.upstream, startup));
        let jwt = jwt_verifier(&config, None);
        let tracer = config.tracing.as_ref().and_then(Tracer::start);
        Self {
            live: RwLock::new(Arc::new(Live {
                config,
                deadlines: startup,
                app,
                jwt,
                tracer,
            })),
            dedup,
            bodies: Arc::default(),
            startup,
            draining: AtomicBool::new(false),
        }
    }

    /// From now on `/readyz` answers 503 and no connection is kept alive.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn live(&self) -> Arc<Live> {
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Puts `config` in force for the requests that start from now on. The pool of connections to the
    /// app, and the JWKS already fetched, are kept when their settings did not change.
    pub fn replace(&self, config: Config) {
        let old = self.live();
        let deadlines = config.deadlines().within(self.startup);
        let app = if old.config.upstream == config.upstream {
            old.app.clone()
        } else {
            Arc::new(App::new(&config.upstream, deadlines))
        };
        let jwt = jwt_verifier(&config, old.jwt.as_ref());
        // A changed `[tracing]` gets an exporter of its own; the old one sends what it holds and ends with
        // the last request that uses it.
        let tracer = if old.config.tracing == config.tracing {
            old.tracer.clone()
        } else {
            config.tracing.as_ref().and_then(Tracer::start)
        };
        let live = Arc::new(Live {
            config,
            deadlines,
            app,
            jwt,
            tracer,
        });
        *self.live.write().unwrap_or_else(|e| e.into_inner()) = live;
    }
}

fn jwt_verifier(config: &Config, old: Option<&Arc<JwtVerifier>>) -> Option<Arc<JwtVerifier>> {
    if !config.auth.methods.contains(&Method::Jwt) {
        return None;
    }
    match old {
        Some(v) if v.serves(&config.auth.jwt) => Some(v.clone()),
        _ => Some(Arc::new(JwtVerifier::new(&config.auth.jwt))),
    }
}
