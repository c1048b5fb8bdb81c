//! From the file as written to the configuration as used: one step that checks everything and names the
//! file, the key and the reason of the first thing wrong.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::*;
use super::secrets::{self, ReadLog};
use super::*;

/// Parses `text` (read from `path`) and validates it into a `Config`.
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
            .map(|s| text.bytes().take(s.start).filter(|b| *b == b'\n').count() + 1);
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
        read: ReadLog::default(),
    };
    v.read.record(text.as_bytes());
    let mut config = v.validate(raw)?;
    config.fingerprint = v.read.finish();
    Ok(config)
}

struct Validator<'a> {
    file: String,
    base: &'a Path,
    /// The contents of the files read, in `Config::watched_files` order.
    read: ReadLog,
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
        if raw.server.max_buffered_bytes < raw.webhooks.max_body_bytes {
            return Err(self.err(
                "server.max_buffered_bytes",
                "must be at least webhooks.max_body_bytes: a larger delivery could never be held",
            ));
        }
        Ok(Config {
            path: self.base.to_path_buf(),
            fingerprint: 0,
            server: self.server(raw.server)?,
            upstream: self.upstream(raw.upstream)?,
            webhooks: self.webhooks(raw.webhooks)?,
            auth: self.auth(raw.auth)?,
            dedup: self.dedup(raw.dedup)?,
            spool: self.spool(raw.spool)?,
            tracing: self.tracing(raw.tracing)?,
            filters: FiltersConfig {
                topics: trimmed(raw.filters.topics),
                sub_topics: trimmed(raw.filters.sub_topics),
                tenants: trimmed(raw.filters.tenants),
            },
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
        if raw.shutdown_delay_ms > 600_000 {
            return Err(self.err("server.shutdown_delay_ms", "must be at most 600000"));
        }
        self.limits(&raw)?;
        Ok(ServerConfig {
            listen,
            admin_listen,
            threads: raw.threads,
            shutdown_grace: Duration::from_secs(raw.shutdown_grace_seconds),
            shutdown_delay: Duration::from_millis(raw.shutdown_delay_ms),
            log_format: raw.log_format,
            header_timeout: Duration::from_millis(raw.header_timeout_ms),
            body_timeout: Duration::from_millis(raw.body_timeout_ms),
            keepalive_timeout: Duration::from_secs(raw.keepalive_timeout_ms.div_ceil(1_000)),
            max_buffered_bytes: raw.max_buffered_bytes as usize,
            max_connections: raw.max_connections as usize,
            max_header_bytes: raw.max_header_bytes as usize,
        })
    }

    fn limits(&self, raw: &RawServer) -> Result<(), ConfigError> {
        for (key, v) in [
            ("server.header_timeout_ms", raw.header_timeout_ms),
            ("server.body_timeout_ms", raw.body_timeout_ms),
            ("server.keepalive_timeout_ms", raw.keepalive_timeout_ms),
        ] {
            if v == 0 || v > 3_600_000 {
                return Err(self.err(key, "must be between 1 and 3600000"));
            }
        }
        if raw.max_buffered_bytes == 0 || raw.max_buffered_bytes > 1 << 34 {
            return Err(self.err(
                "server.max_buffered_bytes",
                "must be between 1 and 17179869184",
            ));
        }
        if !(1..=1_000_000).contains(&raw.max_connections) {
            return Err(self.err("server.max_connections", "must be between 1 and 1000000"));
        }
        if !(1024..=1_048_576).contains(&raw.max_header_bytes) {
            return Err(self.err(
                "server.max_header_bytes",
                "must be between 1024 and 1048576",
            ));
        }
        Ok(())
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
            if v == 0 || v > 3_600_000 {
                return Err(self.err(key, "must be between 1 and 3600000"));
            }
        }
        if let Some(i) = raw
            .app_4xx_final
            .iter()
            .position(|s| !(400..500).contains(s))
        {
            return Err(self.err(
                format!("upstream.app_4xx_final[{i}]"),
                "must be a 4xx status",
            ));
        }
        Ok(UpstreamConfig {
            address,
            socket_addr,
            connect_timeout: Duration::from_millis(raw.connect_timeout_ms),
            read_timeout: Duration::from_millis(raw.read_timeout_ms),
            keepalive_timeout: Duration::from_millis(raw.keepalive_timeout_ms),
            app_4xx: raw.app_4xx,
            app_4xx_final: raw.app_4xx_final,
        })
    }

    fn webhooks(&self, raw: RawWebhooks) -> Result<WebhooksConfig, ConfigError> {
        if raw.paths.is_empty() {
            return Err(self.err("webhooks.paths", "needs at least one path prefix"));
        }
        for (i, p) in raw.paths.iter().enumerate() {
            // Requests are matched in canonical form (`paths`): a prefix in any other form never matches.
            let canonical = crate::route::canonical(p);
            if canonical.as_deref() != Some(p.trim_end_matches('/').to_lowercase().as_str())
                && p != "/"
            {
                return Err(self.err(
                    format!("webhooks.paths[{i}]"),
                    "must be a plain path such as \"/webhooks\": starting with '/', lowercase, without '//', '.' or '..' segments, ';' or percent-encoding",
                ));
            }
        }
        const MAX: u64 = 64 * 1024 * 1024;
        if raw.max_body_bytes == 0 || raw.max_body_bytes > MAX {
            return Err(self.err(
                "webhooks.max_body_bytes",
                format!("must be between 1 and {MAX} (bodies are held in memory)"),
            ));
        }
        Ok(WebhooksConfig {
            paths: raw.paths,
            max_body_bytes: raw.max_body_bytes as usize,
            other_paths: raw.other_paths,
        })
    }

    fn auth(&self, raw: RawAuth) -> Result<AuthConfig, ConfigError> {
        let mut methods = Vec::new();
        for m in raw.methods {
            if !methods.contains(&m) {
                methods.push(m);
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
            self.secrets(raw.hmac.secrets)?
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
                replay_guard: raw.hmac.replay_guard,
            },
            jwt,
        })
    }

    /// Each secret resolved; their names (the `secret` label) distinct, or two would count as one.
    fn secrets(&self, raw: Vec<RawSecret>) -> Result<Vec<Secret>, ConfigError> {
        if raw.is_empty() {
            return Err(self.err(
                "auth.hmac.secrets",
                "needs at least one secret when \"hmac\" is in auth.methods",
            ));
        }
        let mut out: Vec<Secret> = Vec::with_capacity(raw.len());
        for (i, s) in raw.into_iter().enumerate() {
            let key = format!("auth.hmac.secrets[{i}]");
            let secret = secrets::resolve(&key, i, s, self.base, &self.read)
                .map_err(|(key, reason)| self.err(key, reason))?;
            if let Some(j) = out.iter().position(|o| o.name == secret.name) {
                return Err(self.err(
                    format!("{key}.name"),
                    format!("the same name as auth.hmac.secrets[{j}] (a secret without a name is named by its position)"),
                ));
            }
            out.push(secret);
        }
        Ok(out)
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
        let issuers = raw
            .issuers
            .into_iter()
            .enumerate()
            .map(|(i, iss)| self.issuer(&format!("auth.jwt.issuers[{i}]"), iss))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(JwtConfig {
            leeway_seconds: raw.leeway_seconds,
            jwks_refresh: Duration::from_secs(raw.jwks_refresh_seconds),
            issuers,
        })
    }

    fn issuer(&self, key: &str, iss: RawIssuer) -> Result<IssuerConfig, ConfigError> {
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
        Ok(IssuerConfig {
            issuer: iss.issuer,
            audiences: iss.audiences,
            jwks_uri: iss.jwks_uri,
            algorithms,
            subjects: trimmed(iss.subjects),
            emails: trimmed(iss.emails),
        })
    }

    fn dedup(&self, raw: RawDedup) -> Result<DedupConfig, ConfigError> {
        if raw.ttl_seconds == 0 {
            return Err(self.err("dedup.ttl_seconds", "must be greater than 0"));
        }
        if raw.max_entries == 0 {
            return Err(self.err("dedup.max_entries", "must be greater than 0"));
        }
        if raw.redis_timeout_ms == 0 {
            return Err(self.err("dedup.redis_timeout_ms", "must be greater than 0"));
        }
        let (enabled, backend) = (raw.enabled, raw.backend);
        let ttl = Duration::from_secs(raw.ttl_seconds);
        let (max_entries, in_flight_wait) = (
            raw.max_entries,
            Duration::from_millis(raw.in_flight_wait_ms),
        );
        let redis = match raw.backend {
            Backend::Redis => Some(self.redis(raw)?),
            Backend::Memory if raw.on_store_error == Some(OnStoreError::Refuse) => {
                return Err(self.err(
                    "dedup.on_store_error",
                    "applies only to backend = \"redis\" (the local store cannot fail)",
                ));
            }
            Backend::Memory => None,
        };
        Ok(DedupConfig {
            enabled,
            ttl,
            max_entries,
            backend,
            redis,
            in_flight_wait,
        })
    }

    fn spool(&self, raw: RawSpool) -> Result<Option<SpoolConfig>, ConfigError> {
        let Some(dir) = raw.dir else {
            return Ok(None);
        };
        if !dir.is_absolute() {
            return Err(self.err("spool.dir", "must be an absolute path"));
        }
        if raw.max_bytes == 0 {
            return Err(self.err("spool.max_bytes", "must be greater than 0"));
        }
        if !(1..=87_600).contains(&raw.max_age_hours) {
            return Err(self.err("spool.max_age_hours", "must be between 1 and 87600"));
        }
        Ok(Some(SpoolConfig {
            dir,
            max_bytes: raw.max_bytes,
            max_age: Duration::from_secs(raw.max_age_hours * 3_600),
            include_failures: raw.include_failures,
        }))
    }

    /// `otlp_endpoint` is the collector's base URL (`/v1/traces` is added unless it is there already).
    fn tracing(&self, raw: RawTracing) -> Result<Option<TracingConfig>, ConfigError> {
        if !(0.0..=1.0).contains(&raw.sample_ratio) {
            return Err(self.err("tracing.sample_ratio", "must be between 0.0 and 1.0"));
        }
        let Some(endpoint) = raw.otlp_endpoint else {
            return Ok(None);
        };
        let url = url::Url::parse(endpoint.trim()).ok().filter(|u| {
            matches!(u.scheme(), "http" | "https") && u.host().is_some() && u.query().is_none()
        });
        let Some(url) = url else {
            return Err(self.err(
                "tracing.otlp_endpoint",
                "expected an http:// or https:// URL, such as \"http://otel-collector:4318\"",
            ));
        };
        let mut traces_url = url.to_string();
        if !url.path().ends_with("/v1/traces") {
            traces_url = format!("{}/v1/traces", traces_url.trim_end_matches('/'));
        }
        Ok(Some(TracingConfig {
            traces_url,
            sample_ratio: raw.sample_ratio,
        }))
    }

    /// Two apps sharing one Redis under a default prefix would answer each other's events as duplicates:
    /// the prefix has no default. No credential is read from the URL (it is in a ConfigMap): the password
    /// comes from a secret source, and no reason quotes the URL.
    fn redis(&self, raw: RawDedup) -> Result<RedisConfig, ConfigError> {
        let Some(url) = &raw.redis_url else {
            return Err(self.err(
                "dedup.redis_url",
                "is required when dedup.backend = \"redis\"",
            ));
        };
        let (target, tls) =
            redis_target(url).map_err(|reason| self.err("dedup.redis_url", reason))?;
        let prefix = raw.redis_prefix.as_deref().unwrap_or("");
        if prefix.trim().is_empty() {
            return Err(self.err(
                "dedup.redis_prefix",
                concat!(
                    "is required when dedup.backend = \"redis\": ",
                    "it names this app's keys in a shared Redis (such as \"orders-app:\")",
                ),
            ));
        }
        if !tls && raw.redis_ca_file.is_some() {
            return Err(self.err(
                "dedup.redis_ca_file",
                "applies only to TLS: use rediss:// (or rediss+sentinel://) in dedup.redis_url",
            ));
        }
        if !tls && raw.redis_tls_server_name.is_some() {
            return Err(self.err(
                "dedup.redis_tls_server_name",
                "applies only to TLS: use rediss:// (or rediss+sentinel://) in dedup.redis_url",
            ));
        }
        let ca_file = self.redis_ca_file(raw.redis_ca_file)?;
        if let Some(name) = &raw.redis_tls_server_name
            && !is_dns_name(name)
        {
            return Err(self.err(
                "dedup.redis_tls_server_name",
                "expected a DNS name such as \"redis.example.internal\"",
            ));
        }
        if let Some(user) = &raw.redis_username
            && (user.is_empty() || user.chars().any(|c| c.is_whitespace() || c.is_control()))
        {
            return Err(self.err(
                "dedup.redis_username",
                "expected an ACL user name, without spaces",
            ));
        }
        let password = self.redis_password(raw.redis_password)?;
        if raw.redis_username.is_some() && password.is_none() {
            return Err(self.err(
                "dedup.redis_username",
                "needs dedup.redis_password: an ACL user authenticates with a password",
            ));
        }
        Ok(RedisConfig {
            target,
            tls,
            ca_file,
            tls_server_name: raw.redis_tls_server_name,
            username: raw.redis_username,
            password,
            prefix: prefix.to_string(),
            timeout: Duration::from_millis(raw.redis_timeout_ms),
            on_store_error: raw.on_store_error.unwrap_or_default(),
        })
    }

    /// `dedup.redis_ca_file`, relative to the config file, holding at least one PEM certificate.
    fn redis_ca_file(&self, raw_path: Option<PathBuf>) -> Result<Option<PathBuf>, ConfigError> {
        match raw_path {
            Some(path) => {
                let path = if path.is_relative() {
                    self.base.parent().unwrap_or(Path::new(".")).join(path)
                } else {
                    path
                };
                let text = std::fs::read(&path).map_err(|e| {
                    self.err(
                        "dedup.redis_ca_file",
                        format!("cannot read {}: {}", path.display(), e.kind()),
                    )
                })?;
                if !text
                    .windows(27)
                    .any(|w| w == b"-----BEGIN CERTIFICATE-----")
                {
                    return Err(self.err(
                        "dedup.redis_ca_file",
                        "holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                    ));
                }
                Ok(Some(path))
            }
            None => Ok(None),
        }
    }

    /// `dedup.redis_password`: from a secret source only, never written in the file.
    fn redis_password(
        &self,
        raw_password: Option<RawSecret>,
    ) -> Result<Option<Secret>, ConfigError> {
        match raw_password {
            Some(p) => {
                let key = "dedup.redis_password";
                if p.value.is_some() {
                    return Err(self.err(
                        key,
                        format!("a password is never written in the configuration: set {PASSWORD_FROM_SECRET}"),
                    ));
                }
                if p.name.is_some() || p.not_after.is_some() {
                    return Err(self.err(
                        key,
                        "takes only env or file (name and not_after are for HMAC secrets)",
                    ));
                }
                secrets::resolve(key, 0, p, self.base, &self.read)
                    .map(Some)
                    .map_err(|(key, reason)| self.err(key, reason))
            }
            None => Ok(None),
        }
    }
}

/// Where a Redis password belongs, said wherever one is written in the wrong place.
const PASSWORD_FROM_SECRET: &str =
    "dedup.redis_password = { env = \"NAME\" } or { file = \"/path\" } (from a Secret)";

/// `dedup.redis_url`, parsed: where Redis is and whether TLS is on. The reason never quotes the URL (it
/// may hold a password, the one thing it must not hold).
fn redis_target(url: &str) -> Result<(RedisTarget, bool), String> {
    const EXPECTED: &str = concat!(
        "expected redis://host[:port][/db], rediss://host[:port][/db] (TLS), unix:///path, ",
        "or redis+sentinel://host1[:port],host2[:port]/master (rediss+sentinel:// for TLS)",
    );
    let (scheme, rest) = url.split_once("://").ok_or(EXPECTED)?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if let Some((userinfo, _)) = authority.rsplit_once('@') {
        return Err(if userinfo.contains(':') {
            format!(
                "holds a password, which a ConfigMap must not: remove it from the URL and set \
                 {PASSWORD_FROM_SECRET}, and dedup.redis_username for an ACL user"
            )
        } else {
            "holds a user name: set it in dedup.redis_username instead (and the password in \
             dedup.redis_password, from a Secret)"
                .into()
        });
    }
    if url.contains("password=") || url.contains("pass=") {
        return Err(format!(
            "holds a password parameter, which a ConfigMap must not: set {PASSWORD_FROM_SECRET}"
        ));
    }
    match scheme {
        "redis" | "rediss" | "unix" => {
            if redis::Client::open(url).is_err() {
                return Err(EXPECTED.into());
            }
            Ok((
                RedisTarget::Server {
                    url: url.to_string(),
                },
                scheme == "rediss",
            ))
        }
        "redis+sentinel" | "rediss+sentinel" => {
            Ok((sentinel_target(rest)?, scheme == "rediss+sentinel"))
        }
        _ => Err(EXPECTED.into()),
    }
}

/// The part of a `redis+sentinel://` URL after the scheme: `host1[:port],host2[:port]/master[/db]`.
fn sentinel_target(rest: &str) -> Result<RedisTarget, String> {
    const EXPECTED: &str = "expected redis+sentinel://host1[:port],host2[:port]/master[/db]";
    let mut parts = rest.splitn(3, '/');
    let hosts = parts.next().unwrap_or("");
    let master = parts.next().unwrap_or("");
    let db = match parts.next() {
        None | Some("") => 0,
        Some(db) => db.parse::<i64>().map_err(|_| EXPECTED)?,
    };
    if master.is_empty() || master.contains(['?', '#']) {
        return Err(
            "names no master: expected redis+sentinel://host1[:port],host2[:port]/master".into(),
        );
    }
    let mut sentinels = Vec::new();
    for h in hosts.split(',') {
        let (host, port) = match h.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || h.starts_with('[') => (
                host,
                port.parse::<u16>()
                    .map_err(|_| "a sentinel's port is not a number (1 to 65535)")?,
            ),
            _ => (h, 26379),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || port == 0 {
            return Err(EXPECTED.into());
        }
        sentinels.push((host.to_string(), port));
    }
    Ok(RedisTarget::Sentinel {
        sentinels,
        master: master.to_string(),
        db,
    })
}

/// A DNS name a certificate can hold: labels of letters, digits and `-`, `*.` allowed first.
fn is_dns_name(name: &str) -> bool {
    let name = name.strip_prefix("*.").unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn trimmed(v: Vec<String>) -> Vec<String> {
    v.into_iter().map(|s| s.trim().to_string()).collect()
}

/// Discovery and JWKS go over https; plain http only to a loopback host (development and tests).
pub fn check_fetch_url(raw: &str) -> Result<(), String> {
    let url = url::Url::parse(raw).map_err(|_| "expected an https:// URL".to_string())?;
    match url.scheme() {
        "https" if url.host().is_some() => Ok(()),
        "http" => {
            let loopback = match url.host() {
                Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                None => false,
            };
            if loopback {
                Ok(())
            } else {
                Err("plain http is accepted only for loopback hosts; use https".into())
            }
        }
        _ => Err("expected an https:// URL".into()),
    }
}
