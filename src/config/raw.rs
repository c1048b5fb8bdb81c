//! The file as written: serde types with the documented defaults, nothing validated yet.
//!
//! Never used past `validate`: the rest of the sidecar sees only the checked types of `config`.

use std::path::PathBuf;

use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub server: RawServer,
    pub upstream: RawUpstream,
    pub webhooks: RawWebhooks,
    pub auth: RawAuth,
    pub dedup: RawDedup,
    pub spool: RawSpool,
    pub tracing: RawTracing,
    pub filters: RawFilters,
}

/// `server.log_format`.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// logfmt: `key="value"` pairs.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// `webhooks.other_paths`.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum OtherPaths {
    /// 404.
    #[default]
    Reject,
    /// Unverified pass-through to the app, marked `X-Pps-Verified: none`.
    Forward,
}

/// An entry of `auth.methods`.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Hmac,
    Jwt,
}

/// `upstream.app_4xx`: what Pitchpoint is told when the app answers a 4xx other than 403.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum App4xx {
    /// The app's answer as it is: Pitchpoint drops the event for good.
    #[default]
    Relay,
    /// `503` + `Retry-After`: the event comes back.
    Retry,
}

/// `dedup.backend`.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// A moka cache in the process.
    #[default]
    Memory,
    /// Shared by every replica.
    Redis,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawServer {
    pub listen: String,
    pub admin_listen: String,
    pub threads: usize,
    pub shutdown_grace_seconds: u64,
    pub shutdown_delay_ms: u64,
    pub header_timeout_ms: u64,
    pub body_timeout_ms: u64,
    pub keepalive_timeout_ms: u64,
    pub max_buffered_bytes: u64,
    pub max_connections: u64,
    pub max_header_bytes: u64,
    /// `access_log` was this key's name before the contract named it `log_format`.
    #[serde(alias = "access_log")]
    pub log_format: LogFormat,
}

impl Default for RawServer {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            admin_listen: "0.0.0.0:9090".into(),
            threads: 2,
            shutdown_grace_seconds: 20,
            shutdown_delay_ms: 5_000,
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            keepalive_timeout_ms: 60_000,
            max_buffered_bytes: 32 * 1024 * 1024,
            max_connections: 512,
            max_header_bytes: 32 * 1024,
            log_format: LogFormat::Text,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpstream {
    pub address: Option<String>,
    pub connect_timeout_ms: u64,
    pub read_timeout_ms: u64,
    pub keepalive_timeout_ms: u64,
    pub app_4xx: App4xx,
    pub app_4xx_final: Vec<u16>,
}

impl Default for RawUpstream {
    fn default() -> Self {
        Self {
            address: None,
            connect_timeout_ms: 2_000,
            read_timeout_ms: 30_000,
            keepalive_timeout_ms: 4_000,
            app_4xx: App4xx::Relay,
            app_4xx_final: Vec::new(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawWebhooks {
    pub paths: Vec<String>,
    pub max_body_bytes: u64,
    pub other_paths: OtherPaths,
}

impl Default for RawWebhooks {
    fn default() -> Self {
        Self {
            paths: vec!["/webhooks".into()],
            max_body_bytes: 1_048_576,
            other_paths: OtherPaths::Reject,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAuth {
    pub methods: Vec<Method>,
    pub enforce: bool,
    pub forward_credentials: bool,
    pub hmac: RawHmac,
    pub jwt: RawJwt,
}

impl Default for RawAuth {
    fn default() -> Self {
        Self {
            methods: vec![Method::Hmac],
            enforce: true,
            forward_credentials: false,
            hmac: RawHmac::default(),
            jwt: RawJwt::default(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHmac {
    pub header: String,
    pub secrets: Vec<RawSecret>,
    pub replay_guard: bool,
}

impl Default for RawHmac {
    fn default() -> Self {
        Self {
            header: "X-Pps-Hmac-Sha256".into(),
            secrets: vec![RawSecret {
                env: Some("PPS_WEBHOOK_SECRET".into()),
                ..RawSecret::default()
            }],
            replay_guard: false,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawSecret {
    pub env: Option<String>,
    pub file: Option<PathBuf>,
    pub value: Option<String>,
    pub not_after: Option<String>,
    /// The `secret` label of `pps_sidecar_hmac_verified_total`; default: the position.
    pub name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawJwt {
    pub leeway_seconds: u64,
    pub jwks_refresh_seconds: u64,
    pub issuers: Vec<RawIssuer>,
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
pub struct RawIssuer {
    pub issuer: String,
    pub audiences: Vec<String>,
    pub jwks_uri: Option<String>,
    pub algorithms: Option<Vec<String>>,
    #[serde(default)]
    pub subjects: Vec<String>,
    #[serde(default)]
    pub emails: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDedup {
    pub enabled: bool,
    pub ttl_seconds: u64,
    pub max_entries: u64,
    pub backend: Backend,
    pub redis_url: Option<String>,
    pub redis_prefix: Option<String>,
    pub redis_timeout_ms: u64,
    pub in_flight_wait_ms: u64,
    /// A PEM bundle of the CAs that sign the Redis server's certificate (`rediss://` only).
    pub redis_ca_file: Option<PathBuf>,
    /// The name the Redis server's certificate must hold, when it is not the host of `redis_url`.
    pub redis_tls_server_name: Option<String>,
    /// An ACL user; absent: the `default` user.
    pub redis_username: Option<String>,
    /// `{ env = "..." }` or `{ file = "..." }`, as an HMAC secret; never `value` (the ConfigMap).
    pub redis_password: Option<RawSecret>,
    /// What a claim does when Redis cannot decide it; absent: `local`.
    pub on_store_error: Option<OnStoreError>,
}

/// `dedup.on_store_error`.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnStoreError {
    /// Forward on this replica's local claim: deliveries flow, a duplicate may reach the app through
    /// another replica.
    #[default]
    Local,
    /// Answer 503 + Retry-After: no duplicate, Pitchpoint retries once Redis is back.
    Refuse,
}

impl Default for RawDedup {
    fn default() -> Self {
        Self {
            enabled: true,
            ttl_seconds: 86_400,
            max_entries: 1_000_000,
            backend: Backend::Memory,
            redis_url: None,
            redis_prefix: None,
            redis_timeout_ms: 250,
            in_flight_wait_ms: 5_000,
            redis_ca_file: None,
            redis_tls_server_name: None,
            redis_username: None,
            redis_password: None,
            on_store_error: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSpool {
    /// Absent: no spool.
    pub dir: Option<PathBuf>,
    pub max_bytes: u64,
    pub max_age_hours: u64,
    pub include_failures: bool,
}

impl Default for RawSpool {
    fn default() -> Self {
        Self {
            dir: None,
            max_bytes: 104_857_600,
            max_age_hours: 168,
            include_failures: false,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTracing {
    /// Absent: no export (W3C trace context is still propagated).
    pub otlp_endpoint: Option<String>,
    pub sample_ratio: f64,
}

impl Default for RawTracing {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            sample_ratio: 1.0,
        }
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawFilters {
    pub topics: Vec<String>,
    pub sub_topics: Vec<String>,
    pub tenants: Vec<String>,
}
