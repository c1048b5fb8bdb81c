//! The configuration: the TOML file as written (`raw`), validated whole into the types below
//! (`validate`), with its secrets resolved (`secrets`). Used read-only; replaced whole on reload.
//!
//! Every error names the file, the key and the reason, and never echoes a value: a line of the file may
//! hold a secret.

mod raw;
mod secrets;
mod validate;

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use raw::{App4xx, Backend, LogFormat, Method, OnStoreError, OtherPaths};
pub use secrets::{Secret, fingerprint};
pub use validate::check_fetch_url;

use crate::route::Route;

/// A configuration error: which file, which key, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: String,
    pub key: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file, self.reason)
        } else {
            write!(f, "{}: key `{}`: {}", self.file, self.key, self.reason)
        }
    }
}

impl std::error::Error for ConfigError {}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    /// The contents of `watched_files` when this was loaded: a reload is due once they differ.
    pub fingerprint: u64,
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub webhooks: WebhooksConfig,
    pub auth: AuthConfig,
    pub dedup: DedupConfig,
    /// `None`: no `spool.dir`, the spool is off.
    pub spool: Option<SpoolConfig>,
    /// `None`: no `tracing.otlp_endpoint`, no span is exported (trace context is still propagated).
    pub tracing: Option<TracingConfig>,
    pub filters: FiltersConfig,
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub threads: usize,
    /// On SIGTERM, deliveries in flight get this long to finish. Below Kubernetes' default 30 s
    /// `terminationGracePeriodSeconds`, so the pod is never killed mid-delivery.
    pub shutdown_grace: Duration,
    /// On SIGTERM, `/readyz` answers 503 at once and the listeners keep serving this long, so that the
    /// endpoints controller removes the pod before its listener closes.
    pub shutdown_delay: Duration,
    pub log_format: LogFormat,
    /// A request head must arrive whole within it.
    pub header_timeout: Duration,
    /// A delivery body must arrive whole within it (408).
    pub body_timeout: Duration,
    /// An idle client connection is closed after it. Whole seconds: Pingora's unit.
    pub keepalive_timeout: Duration,
    /// Delivery bodies held in memory at once, all connections together (over it: 503).
    pub max_buffered_bytes: usize,
    /// Client connections open at once; more are closed as they are accepted.
    pub max_connections: usize,
    /// Bytes a request head may take; past it the connection is closed.
    pub max_header_bytes: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// As written, for logs.
    pub address: String,
    pub socket_addr: SocketAddr,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// How long an idle pooled connection to the app is kept. Below the app's own keep-alive timeout
    /// (Node's is 5 s) so that the sidecar rarely writes into a connection the app is closing.
    pub keepalive_timeout: Duration,
    pub app_4xx: App4xx,
    /// 4xx statuses relayed as they are even when `defers` would defer them.
    pub app_4xx_final: Vec<u16>,
}

impl UpstreamConfig {
    /// Whether the app's `status` is answered `503` + `Retry-After` instead of relayed, so that an event
    /// the app refused by mistake (a 404 during a deploy, a 400 from a parsing bug) comes back.
    ///
    /// A `408` is, whatever `app_4xx` says (unless listed final): it says the app did not take a whole
    /// request, most often an idle connection it timed out just as the delivery went out on it. Relayed,
    /// it is a 4xx that makes Pitchpoint drop an event the app never had.
    pub fn defers(&self, status: u16) -> bool {
        let retried = match self.app_4xx {
            App4xx::Retry => (400..500).contains(&status) && status != 403,
            App4xx::Relay => status == 408,
        };
        retried && !self.app_4xx_final.contains(&status)
    }

    /// The deadlines these timeouts imply.
    /// The deadlines of an exchange with this app; `relay`: how long a sender may take to take an answer.
    pub fn deadlines(&self, relay: Duration) -> Deadlines {
        Deadlines::new(self.connect_timeout, self.read_timeout, relay)
    }
}

/// How long one exchange with the app may take, and how long a dedup claim lives: the one place that
/// states the rule "a claim outlives the whole exchange, the app's answer read to its end and relayed",
/// so that a copy retried by the sender can never find the claim expired while the first copy is still
/// with the app or on its way back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadlines {
    /// Connect, write, and every wait for the answer's head, informational answers included.
    pub exchange: Duration,
    /// The waits for the app's answer body: the claim is settled at its end.
    pub answer_body: Duration,
    /// The waits for the sender to take an answer (`server.body_timeout_ms`): a sender that reads slowly
    /// never holds the app's side, and never releases an acknowledged event.
    pub relay: Duration,
    /// A claim whose owner vanished (a crash, a lost release) blocks its key this long, at most.
    pub claim: Duration,
}

impl Deadlines {
    /// Margin between the end of the longest exchange and the end of its claim: settling the claim
    /// (a Redis round trip at worst) happens in it.
    const CLAIM_MARGIN: Duration = Duration::from_secs(10);

    fn new(connect: Duration, read: Duration, relay: Duration) -> Self {
        let exchange = connect + read * 2;
        let answer_body = read * 2;
        Self {
            exchange,
            answer_body,
            relay,
            claim: exchange + answer_body + relay + Self::CLAIM_MARGIN,
        }
    }

    /// These deadlines within the claims already made under `startup`: the dedup stores' claim lifetime
    /// is fixed when they are built, so a reload may shorten an exchange but never stretch it past them.
    pub fn within(self, startup: Deadlines) -> Deadlines {
        Deadlines {
            exchange: self.exchange.min(startup.exchange),
            answer_body: self.answer_body.min(startup.answer_body),
            relay: self.relay.min(startup.relay),
            claim: startup.claim,
        }
    }
}

#[derive(Debug, Clone)]
pub struct WebhooksConfig {
    pub paths: Vec<String>,
    pub max_body_bytes: usize,
    pub other_paths: OtherPaths,
}

impl WebhooksConfig {
    /// Whether `path` is a delivery path, in any spelling an app's router may give it (`paths`).
    pub fn route(&self, path: &str) -> Route {
        crate::route::route(path, &self.paths)
    }
}

#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub methods: Vec<Method>,
    pub enforce: bool,
    /// Forward `X-Pps-Hmac-Sha256` and `Authorization` to the app instead of removing them.
    pub forward_credentials: bool,
    pub hmac: HmacConfig,
    pub jwt: JwtConfig,
}

impl AuthConfig {
    /// Whether verifying a delivery needs its body (HMAC does; a JWT alone does not).
    pub fn needs_body(&self) -> bool {
        self.methods.contains(&Method::Hmac)
    }
}

#[derive(Debug, Clone)]
pub struct HmacConfig {
    /// As configured, for display.
    pub header: String,
    /// The same, parsed once: looked up on every delivery.
    pub header_key: http::HeaderName,
    /// Tried in turn; each with a distinct `name`.
    pub secrets: Vec<Secret>,
    /// Refuse (`403`, `replayed_body`) a signed body already acknowledged under another webhook id within
    /// `dedup.ttl_seconds`. Off by default: two distinct events with byte-identical bodies would be refused.
    pub replay_guard: bool,
}

#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub leeway_seconds: u64,
    pub jwks_refresh: Duration,
    pub issuers: Vec<IssuerConfig>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct IssuerConfig {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub jwks_uri: Option<String>,
    pub algorithms: Vec<String>,
    /// Allowed `sub` values; empty: any subject of this issuer.
    pub subjects: Vec<String>,
    /// Allowed `email` values (with `email_verified = true`); empty: no condition on the email.
    pub emails: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct DedupConfig {
    pub enabled: bool,
    pub ttl: Duration,
    pub max_entries: u64,
    pub backend: Backend,
    /// Present with `backend = "redis"`.
    pub redis: Option<RedisConfig>,
    /// How long a duplicate waits for the first copy, still in flight, before it is answered 503.
    pub in_flight_wait: Duration,
}

/// The shared store (`crate::dedup::redis`).
#[derive(Debug, Clone)]
pub struct RedisConfig {
    /// Where Redis is: one server, or the master a set of sentinels names.
    pub target: RedisTarget,
    /// `rediss://` (or `rediss+sentinel://`): the server's certificate is checked.
    pub tls: bool,
    /// The CAs the server's certificate is checked against; `None`: the system roots. Read again at each
    /// connection, so a renewed bundle is used without a restart.
    pub ca_file: Option<PathBuf>,
    /// The name the server's certificate must hold; `None`: the host connected to.
    pub tls_server_name: Option<String>,
    /// The ACL user; `None`: the `default` user (or none, without a password).
    pub username: Option<String>,
    /// Never in the URL. A file is read again at each connection, so a rotated password is used from
    /// the next connection on; `Debug` never prints it.
    pub password: Option<Secret>,
    /// Prepended to every Redis key, so that several apps can share one Redis.
    pub prefix: String,
    /// Each Redis operation gives up after this.
    pub timeout: Duration,
    /// What a claim does when Redis cannot decide it.
    pub on_store_error: OnStoreError,
}

/// `dedup.redis_url`, parsed; it holds no credential.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RedisTarget {
    /// `redis://host[:port][/db]`, `rediss://...` or `unix://path`, as written.
    Server { url: String },
    /// `redis+sentinel://host1[:port],host2[:port]/master[/db]`: the sentinels are asked for the master.
    Sentinel {
        sentinels: Vec<(String, u16)>,
        master: String,
        db: i64,
    },
}

impl RedisConfig {
    /// Where Redis is and under which prefix: a running process keeps them from its start.
    fn place(&self) -> impl PartialEq + '_ {
        (&self.target, self.tls, &self.prefix)
    }

    /// How it is reached, as a running process keeps it (the password's and the CA bundle's contents are
    /// read again at each connection; their sources are not).
    fn access(&self) -> impl PartialEq + '_ {
        (
            &self.ca_file,
            &self.tls_server_name,
            &self.username,
            self.password.as_ref().map(|p| &p.file),
        )
    }

    /// For `check`'s summary line: never a credential nor a host.
    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if matches!(self.target, RedisTarget::Sentinel { .. }) {
            parts.push("sentinel");
        }
        parts.push(if self.tls { "tls" } else { "plain tcp" });
        if self.password.is_some() {
            parts.push("auth");
        }
        parts.push(match self.on_store_error {
            OnStoreError::Local => "on_store_error local",
            OnStoreError::Refuse => "on_store_error refuse",
        });
        format!("redis ({})", parts.join(", "))
    }
}

impl DedupConfig {
    /// The settings a running process keeps from its start: the store is built once.
    pub fn restart_needed(&self, new: &DedupConfig) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.ttl != new.ttl || self.max_entries != new.max_entries || self.backend != new.backend
        {
            out.push("dedup.ttl_seconds, max_entries or backend");
        }
        let (a, b) = (self.redis.as_ref(), new.redis.as_ref());
        if a.map(RedisConfig::place) != b.map(RedisConfig::place) {
            out.push("dedup.redis_url or redis_prefix");
        }
        if a.map(RedisConfig::access) != b.map(RedisConfig::access) {
            out.push(
                "dedup.redis_ca_file, redis_tls_server_name, redis_username or redis_password's source",
            );
        }
        if a.map(|r| r.on_store_error) != b.map(|r| r.on_store_error) {
            out.push("dedup.on_store_error");
        }
        if a.map(|r| r.timeout) != b.map(|r| r.timeout) || self.in_flight_wait != new.in_flight_wait
        {
            out.push("dedup.redis_timeout_ms or in_flight_wait_ms");
        }
        out
    }

    /// For `check`'s summary line: the backend and its mode, never a credential.
    pub fn describe(&self) -> String {
        if !self.enabled {
            return "off".into();
        }
        let backend = match &self.redis {
            Some(r) if self.backend == Backend::Redis => r.describe(),
            _ => "memory".to_string(),
        };
        format!("{backend}, ttl {}s", self.ttl.as_secs())
    }
}

/// OTLP/HTTP export of spans (`crate::trace`).
#[derive(Debug, Clone, PartialEq)]
pub struct TracingConfig {
    /// Where batches are posted: `otlp_endpoint` with `/v1/traces`.
    pub traces_url: String,
    /// Of new traces (the sender sent no sampled flag), the share that is exported.
    pub sample_ratio: f64,
}

/// The dead-letter spool of verified deliveries the app refused (`crate::spool`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolConfig {
    /// Absolute; exists and is writable (checked when the file is loaded).
    pub dir: PathBuf,
    /// Entries are dropped, oldest first, while they hold more than this.
    pub max_bytes: u64,
    /// Entries older than this are dropped.
    pub max_age: Duration,
    /// Also keep deliveries that ended without any 2xx (the app's 5xx, 502, 504), not only those the app
    /// refused with a 4xx: Pitchpoint retries those itself, for a while.
    pub include_failures: bool,
}

impl SpoolConfig {
    /// Whether a verified delivery that ended with `status` is kept: the app refused it (a non-2xx that
    /// Pitchpoint does not retry, a deferred 4xx included) or, with `include_failures`, any non-2xx.
    pub fn keeps(&self, status: u16) -> bool {
        !(200..300).contains(&status) && (status < 500 || self.include_failures)
    }
}

#[derive(Debug, Clone, Default)]
pub struct FiltersConfig {
    pub topics: Vec<String>,
    pub sub_topics: Vec<String>,
    pub tenants: Vec<String>,
}

impl Config {
    /// The deadlines of a delivery's exchange and the lifetime of its claim.
    pub fn deadlines(&self) -> Deadlines {
        self.upstream.deadlines(self.server.body_timeout)
    }

    /// Reads, parses and validates `path`, resolving every secret it references.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            key: String::new(),
            reason: format!("cannot read the file: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates `text` as if read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        validate::parse(text, path)
    }

    /// The files whose change triggers a reload: this one and the secret files it names.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.path.clone()];
        files.extend(self.auth.hmac.secrets.iter().filter_map(|s| s.file.clone()));
        files.extend(
            (self.dedup.redis.as_ref())
                .and_then(|r| r.password.as_ref())
                .and_then(|p| p.file.clone()),
        );
        files
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("/etc/pps/sidecar.toml"))
    }

    const MINIMAL: &str = r#"
        [upstream]
        address = "127.0.0.1:3000"
        [auth.hmac]
        secrets = [{ value = "s3cr3t-value" }]
    "#;

    #[test]
    fn a_408_is_deferred_in_either_mode_and_other_4xx_only_in_retry_mode() {
        let upstream = |app_4xx: App4xx, app_4xx_final: Vec<u16>| UpstreamConfig {
            app_4xx,
            app_4xx_final,
            ..parse(MINIMAL).unwrap().upstream
        };
        let relay = upstream(App4xx::Relay, vec![]);
        let retry = upstream(App4xx::Retry, vec![]);
        let final_408 = upstream(App4xx::Retry, vec![408]);
        let deferred = |u: &UpstreamConfig| {
            [200, 400, 403, 404, 408, 422, 500]
                .into_iter()
                .filter(|s| u.defers(*s))
                .collect::<Vec<u16>>()
        };
        assert_eq!(deferred(&relay), [408]);
        assert_eq!(deferred(&retry), [400, 404, 408, 422]);
        assert_eq!(deferred(&final_408), [400, 404, 422]);
    }

    #[test]
    fn defaults_fill_everything_but_the_upstream() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.server.listen.to_string(), "0.0.0.0:8080");
        assert_eq!(c.server.admin_listen.to_string(), "0.0.0.0:9090");
        assert_eq!(c.webhooks.max_body_bytes, 1_048_576);
        assert_eq!(c.auth.methods, vec![Method::Hmac]);
        assert!(c.auth.enforce);
        assert_eq!(c.dedup.ttl, Duration::from_secs(86_400));
        assert_eq!(c.upstream.read_timeout, Duration::from_millis(30_000));
    }

    #[test]
    fn unknown_key_is_named_with_its_table() {
        let e = parse("[server]\nlisten_addr = \"0.0.0.0:1\"\n").unwrap_err();
        assert_eq!(e.file, "/etc/pps/sidecar.toml");
        assert!(e.key.starts_with("server"), "{e}");
        assert!(e.reason.contains("listen_addr"), "{e}");
    }

    #[test]
    fn missing_upstream_is_required() {
        let e = parse("[auth.hmac]\nsecrets = [{ value = \"x\" }]\n").unwrap_err();
        assert_eq!(e.key, "upstream.address");
    }

    #[test]
    fn type_errors_never_echo_the_line() {
        let text = "[upstream]\naddress = \"127.0.0.1:3000\"\n[auth.hmac]\nsecrets = [{ value = \"topsecret\", not_after = 5 }]\n";
        let e = parse(text).unwrap_err();
        assert!(!e.to_string().contains("topsecret"), "{e}");
        assert!(e.key.contains("not_after"), "{e}");
    }

    #[test]
    fn missing_env_secret_names_the_variable() {
        let text = "[upstream]\naddress = \"127.0.0.1:3000\"\n[auth.hmac]\nsecrets = [{ env = \"PPS_TEST_SURELY_UNSET_VAR\" }]\n";
        let e = parse(text).unwrap_err();
        assert_eq!(e.key, "auth.hmac.secrets[0].env");
        assert!(e.reason.contains("PPS_TEST_SURELY_UNSET_VAR"));
    }

    #[test]
    fn load_records_the_fingerprint_of_what_it_read_so_a_later_swap_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("hmac");
        std::fs::write(&secret, "first\n").unwrap();
        let config = dir.path().join("sidecar.toml");
        std::fs::write(
            &config,
            format!(
                "[upstream]\naddress = \"127.0.0.1:3000\"\n[auth.hmac]\nsecrets = [{{ file = \"{}\" }}]\n",
                secret.display()
            ),
        )
        .unwrap();
        let c = Config::load(&config).unwrap();
        assert_eq!(c.watched_files(), vec![config.clone(), secret.clone()]);
        assert_eq!(c.fingerprint, fingerprint(&c.watched_files()));
        // The reloader may start after this swap; it compares against what was loaded, not what it sees.
        std::fs::write(&secret, "second\n").unwrap();
        assert_ne!(c.fingerprint, fingerprint(&c.watched_files()));
        assert_eq!(
            Config::load(&config).unwrap().auth.hmac.secrets[0].key,
            b"second"
        );
    }

    #[test]
    fn secrets_are_named_by_their_name_or_position_and_names_are_distinct_and_plain() {
        let with = |secrets: &str| {
            parse(&format!(
                "[upstream]\naddress = \"127.0.0.1:3000\"\n[auth.hmac]\nsecrets = {secrets}\n"
            ))
        };
        let c =
            with(r#"[{ value = "a" }, { value = "b", name = "next" }, { value = "c" }]"#).unwrap();
        let names: Vec<&str> = c.auth.hmac.secrets.iter().map(|s| &*s.name).collect();
        assert_eq!(names, ["0", "next", "2"]);
        assert!(!c.auth.hmac.replay_guard, "off by default");

        let e = with(r#"[{ value = "a", name = "x" }, { value = "b", name = "x" }]"#).unwrap_err();
        assert_eq!(e.key, "auth.hmac.secrets[1].name", "{e}");
        let e = with(r#"[{ value = "a" }, { value = "b", name = "0" }]"#).unwrap_err();
        assert_eq!(
            e.key, "auth.hmac.secrets[1].name",
            "a name may not take a position's"
        );
        for bad in ["", "with space", "quote\\\"", "é", &"x".repeat(65)] {
            let e = with(&format!("[{{ value = \"a\", name = \"{bad}\" }}]")).unwrap_err();
            assert_eq!(e.key, "auth.hmac.secrets[0].name", "{bad:?}: {e}");
        }
    }

    #[test]
    fn the_replay_guard_is_a_key_of_auth_hmac() {
        let c = parse(&format!("{MINIMAL}replay_guard = true\n")).unwrap();
        assert!(c.auth.hmac.replay_guard);
        let e = parse(&format!("{MINIMAL}replay_guard = \"yes\"\n")).unwrap_err();
        assert_eq!(e.key, "auth.hmac.replay_guard", "{e}");
    }

    #[test]
    fn secret_file_trailing_newline_is_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hmac"), "abc\n").unwrap();
        let text = format!(
            "[upstream]\naddress = \"127.0.0.1:3000\"\n[auth.hmac]\nsecrets = [{{ file = \"{}\" }}]\n",
            dir.path().join("hmac").display()
        );
        let c = parse(&text).unwrap();
        assert_eq!(c.auth.hmac.secrets[0].key, b"abc");
        assert!(!format!("{c:?}").contains("abc\""));
    }

    #[test]
    fn webhook_paths_match_as_string_prefix_routers_match() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.webhooks.route("/webhooks"), Route::Webhook);
        assert_eq!(c.webhooks.route("/webhooks/orders"), Route::Webhook);
        assert_eq!(c.webhooks.route("/webhooksx"), Route::Webhook);
        assert_eq!(c.webhooks.route("/webhook"), Route::Other);
        assert_eq!(c.webhooks.route("/"), Route::Other);
    }

    #[test]
    fn fetch_urls_must_be_https_unless_loopback() {
        assert!(check_fetch_url("https://securetoken.google.com/p").is_ok());
        assert!(check_fetch_url("http://127.0.0.1:8080/x").is_ok());
        assert!(check_fetch_url("http://localhost/x").is_ok());
        assert!(check_fetch_url("http://[::1]:9/x").is_ok());
        assert!(check_fetch_url("http://example.com/x").is_err());
        assert!(check_fetch_url("http://127.0.0.1.evil.com/x").is_err());
        assert!(check_fetch_url("ftp://127.0.0.1/").is_err());
    }

    #[test]
    fn redis_needs_its_own_prefix_so_apps_sharing_a_redis_never_collide() {
        let text = format!(
            "{MINIMAL}[dedup]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:6379\"\n"
        );
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key, "dedup.redis_prefix", "{e}");
        let ok = parse(&format!("{text}redis_prefix = \"orders:\"\n")).unwrap();
        assert_eq!(ok.dedup.redis.unwrap().prefix, "orders:");
    }

    fn redis_conf(extra: &str) -> Result<Config, ConfigError> {
        parse(&format!(
            "{MINIMAL}[dedup]\nbackend = \"redis\"\nredis_prefix = \"orders:\"\n{extra}"
        ))
    }

    #[test]
    fn a_password_in_the_redis_url_is_refused_with_where_it_belongs_and_never_quoted() {
        for url in [
            "redis://:hunter2@10.0.0.5:6379",
            "rediss://app:hunter2@redis.example:6380/0",
            "redis+sentinel://app:hunter2@s1:26379,s2/mymaster",
        ] {
            let e = redis_conf(&format!("redis_url = \"{url}\"\n")).unwrap_err();
            assert_eq!(e.key, "dedup.redis_url", "{e}");
            assert!(e.reason.contains("dedup.redis_password"), "{e}");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
        let e = redis_conf("redis_url = \"redis://app@10.0.0.5\"\n").unwrap_err();
        assert!(e.reason.contains("dedup.redis_username"), "{e}");
    }

    #[test]
    fn the_redis_password_comes_from_a_secret_source_and_is_watched_like_an_hmac_secret() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("redis-password");
        std::fs::write(&file, "from-the-secret\n").unwrap();
        let c = redis_conf(&format!(
            "redis_url = \"rediss://redis.example:6380\"\nredis_username = \"orders\"\n\
             redis_password = {{ file = \"{}\" }}\non_store_error = \"refuse\"\n",
            file.display()
        ))
        .unwrap();
        let r = c.dedup.redis.as_ref().unwrap();
        assert_eq!(r.password.as_ref().unwrap().key, b"from-the-secret");
        assert_eq!(
            (r.tls, r.username.as_deref(), r.on_store_error),
            (true, Some("orders"), OnStoreError::Refuse)
        );
        assert!(
            c.watched_files().contains(&file),
            "a rotated password is seen"
        );
        assert!(!format!("{c:?}").contains("from-the-secret"));
        assert_eq!(
            c.dedup.describe(),
            "redis (tls, auth, on_store_error refuse), ttl 86400s"
        );
        let e =
            redis_conf("redis_url = \"redis://127.0.0.1\"\nredis_password = { value = \"x\" }\n")
                .unwrap_err();
        assert_eq!(e.key, "dedup.redis_password", "{e}");
        assert!(e.reason.contains("env") && e.reason.contains("file"), "{e}");
        let e = redis_conf(
            "redis_url = \"redis://127.0.0.1\"\nredis_password = { env = \"PPS_TEST_UNSET_REDIS_PW\" }\n",
        )
        .unwrap_err();
        assert_eq!(e.key, "dedup.redis_password.env", "{e}");
        let e =
            redis_conf("redis_url = \"redis://127.0.0.1\"\nredis_username = \"u\"\n").unwrap_err();
        assert_eq!(e.key, "dedup.redis_username", "{e}");
    }

    #[test]
    fn a_reload_names_redis_access_and_mode_changes_as_needing_a_restart_but_not_a_new_password() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("pw");
        std::fs::write(&file, "one").unwrap();
        let base = format!(
            "redis_url = \"rediss://r.example\"\nredis_password = {{ file = \"{}\" }}\n",
            file.display()
        );
        let old = redis_conf(&base).unwrap().dedup;
        std::fs::write(&file, "two").unwrap();
        assert!(
            old.restart_needed(&redis_conf(&base).unwrap().dedup)
                .is_empty()
        );
        let changed = redis_conf(&format!("{base}redis_username = \"u\"\n")).unwrap();
        assert_eq!(
            old.restart_needed(&changed.dedup),
            vec![
                "dedup.redis_ca_file, redis_tls_server_name, redis_username or redis_password's source"
            ]
        );
        let changed = redis_conf(&format!("{base}on_store_error = \"refuse\"\n")).unwrap();
        assert_eq!(
            old.restart_needed(&changed.dedup),
            vec!["dedup.on_store_error"]
        );
    }

    #[test]
    fn tls_options_need_rediss_and_a_readable_pem_bundle() {
        let tmp = tempfile::tempdir().unwrap();
        let ca = tmp.path().join("ca.pem");
        std::fs::write(&ca, "not a certificate").unwrap();
        let e = redis_conf(&format!(
            "redis_url = \"redis://10.0.0.5\"\nredis_ca_file = \"{}\"\n",
            ca.display()
        ))
        .unwrap_err();
        assert_eq!(e.key, "dedup.redis_ca_file", "{e}");
        assert!(e.reason.contains("rediss://"), "{e}");
        let e = redis_conf(&format!(
            "redis_url = \"rediss://10.0.0.5\"\nredis_ca_file = \"{}\"\n",
            ca.display()
        ))
        .unwrap_err();
        assert!(e.reason.contains("PEM"), "{e}");
        let e =
            redis_conf("redis_url = \"redis://10.0.0.5\"\nredis_tls_server_name = \"r.example\"\n")
                .unwrap_err();
        assert_eq!(e.key, "dedup.redis_tls_server_name", "{e}");
        let e = redis_conf("redis_url = \"rediss://10.0.0.5\"\nredis_tls_server_name = \"a b\"\n")
            .unwrap_err();
        assert_eq!(e.key, "dedup.redis_tls_server_name", "{e}");
        let e = parse(&format!("{MINIMAL}[dedup]\non_store_error = \"refuse\"\n")).unwrap_err();
        assert_eq!(e.key, "dedup.on_store_error", "{e}");
    }

    #[test]
    fn a_sentinel_url_names_its_sentinels_and_master() {
        let c = redis_conf(
            "redis_url = \"redis+sentinel://s1:26380,10.0.0.7,[::1]:5000/mymaster/2\"\n",
        )
        .unwrap();
        let r = c.dedup.redis.unwrap();
        assert_eq!(
            r.target,
            RedisTarget::Sentinel {
                sentinels: vec![
                    ("s1".into(), 26380),
                    ("10.0.0.7".into(), 26379),
                    ("::1".into(), 5000)
                ],
                master: "mymaster".into(),
                db: 2,
            }
        );
        assert!(!r.tls);
        let c = redis_conf("redis_url = \"rediss+sentinel://s1/mymaster\"\n").unwrap();
        assert!(c.dedup.redis.unwrap().tls);
        for bad in [
            "redis+sentinel://s1:26379",
            "redis+sentinel://s1:x/m",
            "memcached://x",
        ] {
            let e = redis_conf(&format!("redis_url = \"{bad}\"\n")).unwrap_err();
            assert_eq!(e.key, "dedup.redis_url", "{bad}: {e}");
        }
    }

    #[test]
    fn the_spool_is_off_by_default_and_its_bounds_have_defaults() {
        assert!(parse(MINIMAL).unwrap().spool.is_none());
        let c = parse(&format!("{MINIMAL}[spool]\ndir = \"/nonexistent/spool\"\n")).unwrap();
        let s = c.spool.unwrap();
        assert_eq!(
            (s.max_bytes, s.max_age),
            (104_857_600, Duration::from_secs(168 * 3600))
        );
        assert!(s.keeps(404) && s.keeps(400) && !s.keeps(200) && !s.keeps(503) && !s.keeps(502));
        let e = parse(&format!("{MINIMAL}[spool]\ndir = \"relative/spool\"\n")).unwrap_err();
        assert_eq!(e.key, "spool.dir", "{e}");
    }

    #[test]
    fn string_enums_are_checked_by_name_with_their_key() {
        let e = parse(&format!("{MINIMAL}[server]\nlog_format = \"xml\"\n")).unwrap_err();
        assert!(e.key.contains("log_format"), "{e}");
        let e = parse(&format!("{MINIMAL}[webhooks]\nother_paths = \"drop\"\n")).unwrap_err();
        assert!(e.key.contains("other_paths"), "{e}");
        let c = parse(&format!("{MINIMAL}[server]\nlog_format = \"json\"\n")).unwrap();
        assert_eq!(c.server.log_format, LogFormat::Json);
    }

    #[test]
    fn a_claim_outlives_the_whole_exchange_even_after_a_reload_raises_the_timeouts() {
        let startup = parse(MINIMAL).unwrap().deadlines();
        assert_eq!(startup.exchange, Duration::from_millis(2_000 + 2 * 30_000));
        assert!(startup.claim > startup.exchange + startup.answer_body + startup.relay);
        let with_read = |ms: u64| {
            parse(&format!(
                "[upstream]\naddress = \"127.0.0.1:3000\"\nread_timeout_ms = {ms}\n\
                 [auth.hmac]\nsecrets = [{{ value = \"x\" }}]\n"
            ))
        };
        let raised = with_read(90_000).unwrap().deadlines().within(startup);
        assert_eq!(raised, startup);
        let lowered = with_read(1_000).unwrap().deadlines().within(startup);
        assert!(lowered.exchange < startup.exchange && lowered.claim == startup.claim);
    }

    #[test]
    fn webhook_prefixes_must_be_in_the_form_requests_are_matched_in() {
        for bad in [
            "/api//webhooks",
            "/x/./y",
            "/a/../webhooks",
            "/%77ebhooks",
            "/w;x",
            "webhooks",
        ] {
            let text = format!("{MINIMAL}[webhooks]\npaths = [\"{bad}\"]\n");
            let e = parse(&text).unwrap_err();
            assert_eq!(e.key, "webhooks.paths[0]", "{bad}: {e}");
        }
        for good in ["/webhooks", "/webhooks/", "/Hooks/Orders", "/"] {
            let text = format!("{MINIMAL}[webhooks]\npaths = [\"{good}\"]\n");
            assert!(parse(&text).is_ok(), "{good}");
        }
    }

    #[test]
    fn a_body_budget_smaller_than_one_body_is_refused() {
        let text = format!("{MINIMAL}[server]\nmax_buffered_bytes = 1000\n");
        assert_eq!(parse(&text).unwrap_err().key, "server.max_buffered_bytes");
    }

    #[test]
    fn tracing_is_off_by_default_and_its_endpoint_gets_the_traces_path() {
        assert!(parse(MINIMAL).unwrap().tracing.is_none());
        let on = |extra: &str| parse(&format!("{MINIMAL}[tracing]\n{extra}\n"));
        let t = on("otlp_endpoint = \"http://collector:4318\"")
            .unwrap()
            .tracing
            .unwrap();
        assert_eq!(t.traces_url, "http://collector:4318/v1/traces");
        assert_eq!(t.sample_ratio, 1.0);
        let t = on("otlp_endpoint = \"https://c.example/otlp/v1/traces\"\nsample_ratio = 0.25")
            .unwrap()
            .tracing
            .unwrap();
        assert_eq!(t.traces_url, "https://c.example/otlp/v1/traces");
        assert_eq!(t.sample_ratio, 0.25);
        for (bad, key) in [
            (
                "otlp_endpoint = \"collector:4318\"",
                "tracing.otlp_endpoint",
            ),
            (
                "otlp_endpoint = \"ftp://collector\"",
                "tracing.otlp_endpoint",
            ),
            ("sample_ratio = 1.5", "tracing.sample_ratio"),
            ("sample_ratio = -0.1", "tracing.sample_ratio"),
        ] {
            assert_eq!(on(bad).unwrap_err().key, key, "{bad}");
        }
    }
}
