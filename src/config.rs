//! The TOML configuration: parsed once, validated whole, then used read-only.
//!
//! Every error names the file, the key and the reason, and never echoes a value: a line of the file may
//! hold a secret.

use std::cell::RefCell;
use std::fmt;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::timefmt;

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
    pub access_log: AccessLog,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessLog {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamConfig {
    /// As written, for logs and for the `Host`-less peer.
    pub address: String,
    pub socket_addr: SocketAddr,
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// How long an idle pooled connection to the app is kept. Below the app's own keep-alive timeout
    /// (Node's is 5 s) so that the sidecar rarely writes into a connection the app is closing.
    pub keepalive_timeout: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OtherPaths {
    Reject,
    Forward,
}

#[derive(Debug, Clone)]
pub struct WebhooksConfig {
    pub paths: Vec<String>,
    pub max_body_bytes: usize,
    pub other_paths: OtherPaths,
}

impl UpstreamConfig {
    /// The longest one exchange with the app may take, retries and interim answers included. A delivery's
    /// dedup claim must outlive it.
    pub fn exchange_bound(&self) -> Duration {
        self.connect_timeout + self.read_timeout * 2
    }
}

impl WebhooksConfig {
    /// Whether `path` is a delivery path: one of the prefixes, ending at a segment boundary.
    pub fn is_webhook_path(&self, path: &str) -> bool {
        self.paths.iter().any(|prefix| {
            let p = prefix.trim_end_matches('/');
            path == p
                || path
                    .strip_prefix(p)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Hmac,
    Jwt,
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

#[derive(Debug, Clone)]
pub struct HmacConfig {
    /// As configured, for display.
    pub header: String,
    /// The same, parsed once: looked up on every delivery.
    pub header_key: http::HeaderName,
    pub secrets: Vec<Secret>,
}

/// Key material. `Debug` never prints it.
#[derive(Clone)]
pub struct Secret {
    /// Where it came from, for logs: `auth.hmac.secrets[1]`.
    pub name: String,
    pub key: Vec<u8>,
    /// Unix seconds after which the secret no longer verifies anything.
    pub not_after: Option<i64>,
    /// The file it was read from, watched for changes.
    pub file: Option<PathBuf>,
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Secret")
            .field("name", &self.name)
            .field("key", &"<redacted>")
            .field("not_after", &self.not_after)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct JwtConfig {
    pub leeway_seconds: u64,
    pub jwks_refresh: Duration,
    pub issuers: Vec<IssuerConfig>,
}

#[derive(Debug, Clone)]
pub struct IssuerConfig {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub jwks_uri: Option<String>,
    pub algorithms: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Memory,
    Redis,
}

#[derive(Debug, Clone)]
pub struct DedupConfig {
    pub enabled: bool,
    pub ttl: Duration,
    pub max_entries: u64,
    pub backend: Backend,
    pub redis_url: Option<String>,
    /// Prepended to every Redis key, so that several apps can share one Redis.
    pub redis_prefix: String,
    /// Each Redis operation gives up after this and falls back to the local cache.
    pub redis_timeout: Duration,
    /// How long a duplicate waits for the first copy, still in flight, before it is answered 503.
    pub in_flight_wait: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct FiltersConfig {
    pub topics: Vec<String>,
    pub sub_topics: Vec<String>,
    pub tenants: Vec<String>,
}

// ---- the file as written -------------------------------------------------------------------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawConfig {
    server: RawServer,
    upstream: RawUpstream,
    webhooks: RawWebhooks,
    auth: RawAuth,
    dedup: RawDedup,
    filters: RawFilters,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawServer {
    listen: String,
    admin_listen: String,
    threads: usize,
    shutdown_grace_seconds: u64,
    access_log: String,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            admin_listen: "0.0.0.0:9090".into(),
            threads: 2,
            shutdown_grace_seconds: 25,
            access_log: "text".into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawUpstream {
    address: Option<String>,
    connect_timeout_ms: u64,
    read_timeout_ms: u64,
    keepalive_timeout_ms: u64,
}

impl Default for RawUpstream {
    fn default() -> Self {
        Self {
            address: None,
            connect_timeout_ms: 2_000,
            read_timeout_ms: 30_000,
            keepalive_timeout_ms: 4_000,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawWebhooks {
    paths: Vec<String>,
    max_body_bytes: u64,
    other_paths: String,
}

impl Default for RawWebhooks {
    fn default() -> Self {
        Self {
            paths: vec!["/webhooks".into()],
            max_body_bytes: 1_048_576,
            other_paths: "reject".into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAuth {
    methods: Vec<String>,
    enforce: bool,
    forward_credentials: bool,
    hmac: RawHmac,
    jwt: RawJwt,
}

impl Default for RawAuth {
    fn default() -> Self {
        Self {
            methods: vec!["hmac".into()],
            enforce: true,
            forward_credentials: false,
            hmac: RawHmac::default(),
            jwt: RawJwt::default(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHmac {
    header: String,
    secrets: Vec<RawSecret>,
}

impl Default for RawHmac {
    fn default() -> Self {
        Self {
            header: "X-Pps-Hmac-Sha256".into(),
            secrets: vec![RawSecret {
                env: Some("PPS_WEBHOOK_SECRET".into()),
                ..RawSecret::default()
            }],
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSecret {
    env: Option<String>,
    file: Option<PathBuf>,
    value: Option<String>,
    not_after: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawJwt {
    leeway_seconds: u64,
    jwks_refresh_seconds: u64,
    issuers: Vec<RawIssuer>,
}

impl Default for RawJwt {
    fn default() -> Self {
        Self {
            leeway_seconds: 60,
            jwks_refresh_seconds: 3_600,
            issuers: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIssuer {
    issuer: String,
    audiences: Vec<String>,
    jwks_uri: Option<String>,
    algorithms: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawDedup {
    enabled: bool,
    ttl_seconds: u64,
    max_entries: u64,
    backend: String,
    redis_url: Option<String>,
    redis_prefix: String,
    redis_timeout_ms: u64,
    in_flight_wait_ms: u64,
}

impl Default for RawDedup {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl_seconds: 86_400,
            max_entries: 1_000_000,
            backend: "memory".into(),
            redis_url: None,
            redis_prefix: "pps-sidecar:".into(),
            redis_timeout_ms: 250,
            in_flight_wait_ms: 5_000,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
struct RawFilters {
    topics: Vec<String>,
    sub_topics: Vec<String>,
    tenants: Vec<String>,
}

/// A hash of the files' contents as reached through their paths now (a missing file hashes as such).
pub fn fingerprint(files: &[PathBuf]) -> u64 {
    let mut h = DefaultHasher::new();
    for f in files {
        std::fs::read(f).ok().hash(&mut h);
    }
    h.finish()
}

// ---- loading and validation ----------------------------------------------------------------

impl Config {
    /// Reads, parses and validates `path`, resolving every secret it references.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: file.clone(),
            key: String::new(),
            reason: format!("cannot read the file: {e}"),
        })?;
        Self::parse(&text, path)
    }

    /// The files whose change triggers a reload: this one and the secret files it names.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let mut files = vec![self.path.clone()];
        files.extend(self.auth.hmac.secrets.iter().filter_map(|s| s.file.clone()));
        files
    }

    /// Parses and validates `text` as if read from `path`.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let de = toml::Deserializer::new(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner();
            // Only the message and the line: the toml crate's own rendering quotes the line, which may
            // hold a secret.
            let line = inner
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let reason = match line {
                Some(l) => format!("{} (line {l})", inner.message().trim_end()),
                None => inner.message().trim_end().to_string(),
            };
            ConfigError {
                file: file.clone(),
                key: if key == "." { String::new() } else { key },
                reason,
            }
        })?;
        let v = Validator {
            file,
            base: path,
            read: RefCell::new(DefaultHasher::new()),
        };
        // The fingerprint of exactly the bytes this config was built from, hashed as `fingerprint` hashes
        // the files: a file replaced at any moment after its read differs from it, and is reloaded.
        Some(text.as_bytes()).hash(&mut *v.read.borrow_mut());
        let mut config = v.validate(raw)?;
        config.fingerprint = v.read.borrow().finish();
        Ok(config)
    }
}

struct Validator<'a> {
    file: String,
    base: &'a Path,
    /// The contents of the files read, in `Config::watched_files` order.
    read: RefCell<DefaultHasher>,
}

impl Validator<'_> {
    fn err(&self, key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            key: key.into(),
            reason: reason.into(),
        }
    }

    fn validate(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let server = self.server(raw.server)?;
        let upstream = self.upstream(raw.upstream)?;
        let webhooks = self.webhooks(raw.webhooks)?;
        let auth = self.auth(raw.auth)?;
        let dedup = self.dedup(raw.dedup)?;
        let filters = FiltersConfig {
            topics: trimmed(raw.filters.topics),
            sub_topics: trimmed(raw.filters.sub_topics),
            tenants: trimmed(raw.filters.tenants),
        };
        Ok(Config {
            path: self.base.to_path_buf(),
            fingerprint: 0,
            server,
            upstream,
            webhooks,
            auth,
            dedup,
            filters,
        })
    }

    fn socket(&self, key: &str, value: &str) -> Result<SocketAddr, ConfigError> {
        value.parse().map_err(|_| {
            self.err(
                key,
                "expected an IP address and port, such as \"0.0.0.0:8080\"",
            )
        })
    }

    fn server(&self, raw: RawServer) -> Result<ServerConfig, ConfigError> {
        let listen = self.socket("server.listen", &raw.listen)?;
        let admin_listen = self.socket("server.admin_listen", &raw.admin_listen)?;
        if listen == admin_listen {
            return Err(self.err(
                "server.admin_listen",
                "must differ from server.listen: the admin endpoints never share the webhook port",
            ));
        }
        if !(1..=64).contains(&raw.threads) {
            return Err(self.err("server.threads", "must be between 1 and 64"));
        }
        if raw.shutdown_grace_seconds > 3_600 {
            return Err(self.err("server.shutdown_grace_seconds", "must be at most 3600"));
        }
        let access_log = match raw.access_log.as_str() {
            "text" => AccessLog::Text,
            "json" => AccessLog::Json,
            _ => return Err(self.err("server.access_log", "must be \"text\" or \"json\"")),
        };
        Ok(ServerConfig {
            listen,
            admin_listen,
            threads: raw.threads,
            shutdown_grace: Duration::from_secs(raw.shutdown_grace_seconds),
            access_log,
        })
    }

    fn upstream(&self, raw: RawUpstream) -> Result<UpstreamConfig, ConfigError> {
        let address = raw
            .address
            .ok_or_else(|| self.err("upstream.address", "is required: the app's host:port"))?;
        let socket_addr = address
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| {
                self.err(
                    "upstream.address",
                    "expected host:port that resolves, such as \"127.0.0.1:3000\"",
                )
            })?;
        for (key, v) in [
            ("upstream.connect_timeout_ms", raw.connect_timeout_ms),
            ("upstream.read_timeout_ms", raw.read_timeout_ms),
        ] {
            if v == 0 {
                return Err(self.err(key, "must be greater than 0"));
            }
        }
        Ok(UpstreamConfig {
            address,
            socket_addr,
            connect_timeout: Duration::from_millis(raw.connect_timeout_ms),
            read_timeout: Duration::from_millis(raw.read_timeout_ms),
            keepalive_timeout: Duration::from_millis(raw.keepalive_timeout_ms),
        })
    }

    fn webhooks(&self, raw: RawWebhooks) -> Result<WebhooksConfig, ConfigError> {
        if raw.paths.is_empty() {
            return Err(self.err("webhooks.paths", "needs at least one path prefix"));
        }
        for (i, p) in raw.paths.iter().enumerate() {
            if !p.starts_with('/') {
                return Err(self.err(format!("webhooks.paths[{i}]"), "must start with '/'"));
            }
        }
        const MAX: u64 = 64 * 1024 * 1024;
        if raw.max_body_bytes == 0 || raw.max_body_bytes > MAX {
            return Err(self.err(
                "webhooks.max_body_bytes",
                format!("must be between 1 and {MAX} (bodies are held in memory)"),
            ));
        }
        let other_paths = match raw.other_paths.as_str() {
            "reject" => OtherPaths::Reject,
            "forward" => OtherPaths::Forward,
            _ => {
                return Err(self.err(
                    "webhooks.other_paths",
                    "must be \"reject\" (404) or \"forward\"",
                ));
            }
        };
        Ok(WebhooksConfig {
            paths: raw.paths,
            max_body_bytes: raw.max_body_bytes as usize,
            other_paths,
        })
    }

    fn auth(&self, raw: RawAuth) -> Result<AuthConfig, ConfigError> {
        let mut methods = Vec::new();
        for (i, m) in raw.methods.iter().enumerate() {
            let method = match m.as_str() {
                "hmac" => Method::Hmac,
                "jwt" => Method::Jwt,
                _ => {
                    return Err(self.err(
                        format!("auth.methods[{i}]"),
                        "unknown method: expected \"hmac\" or \"jwt\"",
                    ));
                }
            };
            if !methods.contains(&method) {
                methods.push(method);
            }
        }
        if methods.is_empty() {
            return Err(self.err(
                "auth.methods",
                "needs at least one of \"hmac\", \"jwt\": deliveries are never accepted unauthenticated",
            ));
        }

        let header = raw.hmac.header.trim().to_string();
        let Ok(header_key) = http::HeaderName::from_bytes(header.as_bytes()) else {
            return Err(self.err("auth.hmac.header", "is not a valid HTTP header name"));
        };
        let secrets = if methods.contains(&Method::Hmac) {
            if raw.hmac.secrets.is_empty() {
                return Err(self.err(
                    "auth.hmac.secrets",
                    "needs at least one secret when \"hmac\" is in auth.methods",
                ));
            }
            raw.hmac
                .secrets
                .into_iter()
                .enumerate()
                .map(|(i, s)| self.secret(&format!("auth.hmac.secrets[{i}]"), s))
                .collect::<Result<Vec<_>, _>>()?
        } else {
            Vec::new()
        };

        let jwt = self.jwt(raw.jwt, methods.contains(&Method::Jwt))?;
        Ok(AuthConfig {
            methods,
            enforce: raw.enforce,
            forward_credentials: raw.forward_credentials,
            hmac: HmacConfig {
                header,
                header_key,
                secrets,
            },
            jwt,
        })
    }

    fn secret(&self, key: &str, raw: RawSecret) -> Result<Secret, ConfigError> {
        let sources =
            raw.env.is_some() as u8 + raw.file.is_some() as u8 + raw.value.is_some() as u8;
        if sources != 1 {
            return Err(self.err(
                key,
                "a secret is exactly one of { env = \"NAME\" }, { file = \"/path\" } or { value = \"...\" }",
            ));
        }
        let mut file = None;
        let material = if let Some(var) = raw.env {
            std::env::var(&var).map_err(|_| {
                self.err(
                    format!("{key}.env"),
                    format!("environment variable {var} is not set"),
                )
            })?
        } else if let Some(path) = raw.file {
            let path = if path.is_relative() {
                self.base.parent().unwrap_or(Path::new(".")).join(path)
            } else {
                path
            };
            let text = std::fs::read_to_string(&path).map_err(|e| {
                self.err(
                    format!("{key}.file"),
                    format!("cannot read {}: {}", path.display(), e.kind()),
                )
            })?;
            Some(text.as_bytes()).hash(&mut *self.read.borrow_mut());
            file = Some(path);
            text.trim_end_matches(['\n', '\r']).to_string()
        } else {
            raw.value.unwrap_or_default()
        };
        if material.is_empty() {
            return Err(self.err(key, "the secret is empty"));
        }
        let not_after = match raw.not_after {
            Some(v) => Some(
                timefmt::parse_lenient(&v)
                    .ok_or_else(|| {
                        self.err(
                            format!("{key}.not_after"),
                            "expected an RFC 3339 time such as \"2026-12-31T00:00:00Z\"",
                        )
                    })?
                    .unix,
            ),
            None => None,
        };
        Ok(Secret {
            name: key.to_string(),
            key: material.into_bytes(),
            not_after,
            file,
        })
    }

    fn jwt(&self, raw: RawJwt, enabled: bool) -> Result<JwtConfig, ConfigError> {
        if enabled && raw.issuers.is_empty() {
            return Err(self.err(
                "auth.jwt.issuers",
                "needs at least one issuer when \"jwt\" is in auth.methods",
            ));
        }
        if raw.jwks_refresh_seconds == 0 {
            return Err(self.err("auth.jwt.jwks_refresh_seconds", "must be greater than 0"));
        }
        let mut issuers = Vec::new();
        for (i, iss) in raw.issuers.into_iter().enumerate() {
            let key = format!("auth.jwt.issuers[{i}]");
            check_fetch_url(&iss.issuer).map_err(|r| self.err(format!("{key}.issuer"), r))?;
            if let Some(uri) = &iss.jwks_uri {
                check_fetch_url(uri).map_err(|r| self.err(format!("{key}.jwks_uri"), r))?;
            }
            if iss.audiences.is_empty() {
                return Err(self.err(format!("{key}.audiences"), "needs at least one audience"));
            }
            let algorithms = iss.algorithms.unwrap_or_else(|| vec!["RS256".into()]);
            for (j, alg) in algorithms.iter().enumerate() {
                if !matches!(
                    alg.as_str(),
                    "RS256" | "RS384" | "RS512" | "ES256" | "ES384"
                ) {
                    return Err(self.err(
                        format!("{key}.algorithms[{j}]"),
                        "unsupported algorithm: expected an asymmetric one such as \"RS256\"",
                    ));
                }
            }
            issuers.push(IssuerConfig {
                issuer: iss.issuer,
                audiences: iss.audiences,
                jwks_uri: iss.jwks_uri,
                algorithms,
            });
        }
        Ok(JwtConfig {
            leeway_seconds: raw.leeway_seconds,
            jwks_refresh: Duration::from_secs(raw.jwks_refresh_seconds),
            issuers,
        })
    }

    fn dedup(&self, raw: RawDedup) -> Result<DedupConfig, ConfigError> {
        if raw.ttl_seconds == 0 {
            return Err(self.err("dedup.ttl_seconds", "must be greater than 0"));
        }
        if raw.max_entries == 0 {
            return Err(self.err("dedup.max_entries", "must be greater than 0"));
        }
        let backend = match raw.backend.as_str() {
            "memory" => Backend::Memory,
            "redis" => Backend::Redis,
            _ => return Err(self.err("dedup.backend", "must be \"memory\" or \"redis\"")),
        };
        if backend == Backend::Redis {
            let Some(url) = &raw.redis_url else {
                return Err(self.err(
                    "dedup.redis_url",
                    "is required when dedup.backend = \"redis\"",
                ));
            };
            // The URL may hold a password: the reason never quotes it.
            if redis::Client::open(url.as_str()).is_err() {
                return Err(self.err(
                    "dedup.redis_url",
                    "expected redis://[:password@]host[:port][/db] (or rediss://, unix://)",
                ));
            }
        }
        if raw.redis_timeout_ms == 0 {
            return Err(self.err("dedup.redis_timeout_ms", "must be greater than 0"));
        }
        Ok(DedupConfig {
            enabled: raw.enabled,
            ttl: Duration::from_secs(raw.ttl_seconds),
            max_entries: raw.max_entries,
            backend,
            redis_url: raw.redis_url,
            redis_prefix: raw.redis_prefix,
            redis_timeout: Duration::from_millis(raw.redis_timeout_ms),
            in_flight_wait: Duration::from_millis(raw.in_flight_wait_ms),
        })
    }
}

fn trimmed(v: Vec<String>) -> Vec<String> {
    v.into_iter().map(|s| s.trim().to_string()).collect()
}

/// Discovery and JWKS go over https; plain http only to a loopback host (development and tests).
pub fn check_fetch_url(url: &str) -> Result<(), String> {
    if url.starts_with("https://") {
        return Ok(());
    }
    if let Some(rest) = url.strip_prefix("http://") {
        let authority = rest.split('/').next().unwrap_or("");
        let host = match authority.rsplit_once(':') {
            Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
            _ => authority,
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if loopback {
            return Ok(());
        }
        return Err("plain http is accepted only for loopback hosts; use https".into());
    }
    Err("expected an https:// URL".into())
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
    fn webhook_paths_match_on_segment_boundaries() {
        let c = parse(MINIMAL).unwrap();
        assert!(c.webhooks.is_webhook_path("/webhooks"));
        assert!(c.webhooks.is_webhook_path("/webhooks/orders"));
        assert!(!c.webhooks.is_webhook_path("/webhooksx"));
        assert!(!c.webhooks.is_webhook_path("/"));
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
}
