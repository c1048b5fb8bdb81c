//! `Authorization: Bearer <JWT>`: OpenID Connect ID tokens checked against each trusted issuer's JWKS.
//!
//! Crypto is jsonwebtoken on aws-lc-rs, the same library rustls uses for the JWKS fetches: one audited
//! implementation in the binary, and no RSA-private-key code from the `rsa` crate.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;

use super::{Failure, Verified};
use crate::config::{IssuerConfig, JwtConfig, check_fetch_url};
use crate::metrics::{self, METRICS};

/// Longer tokens are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// JWKS and discovery documents larger than this are refused.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// An unknown `kid` refetches the JWKS at most this often per issuer, so a flood of forged `kid`s
/// cannot turn the sidecar into a load generator against the issuer.
const UNKNOWN_KID_REFETCH_INTERVAL: Duration = Duration::from_secs(30);
/// After a failed fetch of keys never loaded, wait this long (doubling, capped) before trying again.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);

/// The issuers of a configuration, with their key sets.
pub struct JwtVerifier {
    config: JwtConfig,
    issuers: Vec<Issuer>,
    http: reqwest::Client,
}

struct Issuer {
    config: IssuerConfig,
    algorithms: Vec<Algorithm>,
    keys: RwLock<Option<Arc<KeySet>>>,
    state: Mutex<FetchState>,
    /// Single flight: one fetch at a time per issuer; others wait for its result.
    fetching: tokio::sync::Mutex<()>,
}

#[derive(Default)]
struct FetchState {
    last_success: Option<Instant>,
    last_unknown_kid_fetch: Option<Instant>,
    next_retry: Option<Instant>,
    backoff: Duration,
}

struct KeySet {
    by_kid: HashMap<String, Key>,
}

struct Key {
    decoding: DecodingKey,
    /// The JWK's own `alg`, when it names one: a token must then use exactly that.
    alg: Option<Algorithm>,
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    email: Option<String>,
    email_verified: Option<bool>,
    iss: String,
    iat: Option<f64>,
}

#[derive(Deserialize)]
struct Unverified {
    iss: Option<String>,
}

impl JwtVerifier {
    pub fn new(config: &JwtConfig) -> Self {
        let issuers = config
            .issuers
            .iter()
            .map(|c| Issuer {
                algorithms: c.algorithms.iter().filter_map(|a| a.parse().ok()).collect(),
                config: c.clone(),
                keys: RwLock::new(None),
                state: Mutex::new(FetchState::default()),
                fetching: tokio::sync::Mutex::new(()),
            })
            .collect();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .connect_timeout(Duration::from_secs(3))
            // Every URL is checked (https, or http to loopback) before it is fetched; a redirect could
            // lead anywhere, so none is followed.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("pps-sidecar/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("the TLS backend initialises");
        Self {
            config: config.clone(),
            issuers,
            http,
        }
    }

    /// Whether this verifier serves `config` as it is (a reload with no JWT change keeps the keys).
    pub fn serves(&self, config: &JwtConfig) -> bool {
        self.config.leeway_seconds == config.leeway_seconds
            && self.config.jwks_refresh == config.jwks_refresh
            && self.config.issuers.len() == config.issuers.len()
            && self
                .config
                .issuers
                .iter()
                .zip(&config.issuers)
                .all(|(a, b)| a == b)
    }

    /// Issuers whose keys are not loaded yet, for `/readyz`.
    pub fn not_loaded(&self) -> Vec<&str> {
        self.issuers
            .iter()
            .filter(|i| i.current().is_none())
            .map(|i| i.config.issuer.as_str())
            .collect()
    }

    /// Fetches the keys of issuers that have none yet (with backoff) or whose refresh is due.
    pub async fn refresh_due(&self) {
        for issuer in &self.issuers {
            let due = {
                let st = issuer.state.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                match st.last_success {
                    None => st.next_retry.is_none_or(|t| now >= t),
                    Some(t) => {
                        now >= t + self.config.jwks_refresh
                            && st.next_retry.is_none_or(|t| now >= t)
                    }
                }
            };
            if due {
                self.fetch(issuer).await;
            }
        }
    }

    /// Verifies a bearer token. `Ok(None)`-like absence is handled by the caller.
    pub async fn verify(&self, token: &str) -> Result<Verified, Failure> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(Failure::MalformedToken);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| Failure::MalformedToken)?;
        let unverified: Unverified = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|_| Failure::MalformedToken)?;
        // The issuer picks the keys; nothing else from the unverified payload is used.
        let iss = unverified.iss.ok_or(Failure::MissingClaim)?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.config.issuer == iss)
            .ok_or(Failure::UntrustedIssuer)?;
        if !issuer.algorithms.contains(&header.alg) {
            return Err(Failure::DisallowedAlgorithm);
        }
        let kid = header.kid.as_deref().ok_or(Failure::UnknownKey)?;

        let mut keys = issuer.current();
        if keys.as_ref().is_none_or(|k| !k.by_kid.contains_key(kid)) {
            if self.may_refetch_for_unknown_kid(issuer) {
                self.fetch(issuer).await;
            } else {
                // Another request may be fetching right now: wait for it rather than fail needlessly.
                drop(issuer.fetching.lock().await);
            }
            keys = issuer.current();
        }
        let Some(keys) = keys else {
            return Err(Failure::KeysNotLoaded);
        };
        let key = keys.by_kid.get(kid).ok_or(Failure::UnknownKey)?;
        if key.alg.is_some_and(|a| a != header.alg) {
            return Err(Failure::DisallowedAlgorithm);
        }

        let mut v = Validation::new(header.alg);
        v.leeway = self.config.leeway_seconds;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.set_issuer(&[&issuer.config.issuer]);
        v.set_audience(&issuer.config.audiences);
        let data = jsonwebtoken::decode::<Claims>(token, &key.decoding, &v).map_err(|e| match e
            .kind()
        {
            ErrorKind::InvalidSignature => Failure::BadSignature,
            ErrorKind::ExpiredSignature => Failure::Expired,
            ErrorKind::ImmatureSignature => Failure::NotYetValid,
            ErrorKind::InvalidIssuer => Failure::UntrustedIssuer,
            ErrorKind::InvalidAudience => Failure::WrongAudience,
            ErrorKind::MissingRequiredClaim(_) => Failure::MissingClaim,
            ErrorKind::InvalidAlgorithm => Failure::DisallowedAlgorithm,
            _ => Failure::MalformedToken,
        })?;
        let now = crate::timefmt::unix_now() as f64;
        if data
            .claims
            .iat
            .is_some_and(|iat| iat > now + self.config.leeway_seconds as f64)
        {
            return Err(Failure::NotYetValid);
        }
        allowed(&issuer.config, &data.claims)?;
        Ok(Verified::Jwt {
            subject: data.claims.sub.unwrap_or_default(),
            issuer: data.claims.iss,
        })
    }

    fn may_refetch_for_unknown_kid(&self, issuer: &Issuer) -> bool {
        let mut st = issuer.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if st
            .last_unknown_kid_fetch
            .is_some_and(|t| now < t + UNKNOWN_KID_REFETCH_INTERVAL)
        {
            return false;
        }
        st.last_unknown_kid_fetch = Some(now);
        true
    }

    /// Fetches and installs the issuer's key set. A failure keeps the last good set.
    async fn fetch(&self, issuer: &Issuer) {
        let _single = issuer.fetching.lock().await;
        let name = &issuer.config.issuer;
        match self.download(issuer).await {
            Ok(set) => {
                log::info!("JWKS of {name}: {} key(s) loaded", set.by_kid.len());
                *issuer.keys.write().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(set));
                let mut st = issuer.state.lock().unwrap_or_else(|e| e.into_inner());
                st.last_success = Some(Instant::now());
                st.next_retry = None;
                st.backoff = Duration::ZERO;
                METRICS.jwks_refresh(metrics::Result::Success);
            }
            Err(reason) => {
                let mut st = issuer.state.lock().unwrap_or_else(|e| e.into_inner());
                st.backoff = (st.backoff * 2).clamp(RETRY_MIN, RETRY_MAX);
                st.next_retry = Some(Instant::now() + st.backoff);
                let kept = if issuer.current().is_some() {
                    "the last good keys stay in use"
                } else {
                    "no keys yet"
                };
                log::warn!("JWKS of {name}: fetch failed ({reason}); {kept}");
                METRICS.jwks_refresh(metrics::Result::Failure);
            }
        }
    }

    async fn download(&self, issuer: &Issuer) -> Result<KeySet, String> {
        let uri = match &issuer.config.jwks_uri {
            Some(uri) => uri.clone(),
            None => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.config.issuer.trim_end_matches('/')
                );
                let doc: serde_json::Value = self.get_json(&url).await?;
                let uri = doc
                    .get("jwks_uri")
                    .and_then(|v| v.as_str())
                    .ok_or("discovery document has no jwks_uri")?
                    .to_string();
                check_fetch_url(&uri).map_err(|e| format!("jwks_uri {uri}: {e}"))?;
                uri
            }
        };
        let set: JwkSet = self.get_json(&uri).await?;
        let mut by_kid = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = &jwk.common.key_id else {
                continue;
            };
            if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
                continue;
            }
            if !matches!(
                jwk.algorithm,
                AlgorithmParameters::RSA(_) | AlgorithmParameters::EllipticCurve(_)
            ) {
                // Symmetric keys never verify anything here.
                continue;
            }
            let Ok(decoding) = DecodingKey::from_jwk(jwk) else {
                continue;
            };
            let alg = jwk
                .common
                .key_algorithm
                .and_then(|a| a.to_string().parse::<Algorithm>().ok());
            by_kid.insert(kid.clone(), Key { decoding, alg });
        }
        if by_kid.is_empty() {
            return Err("the JWKS holds no usable signing key".into());
        }
        Ok(KeySet { by_kid })
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
        if !resp.status().is_success() {
            return Err(format!("GET {url}: status {}", resp.status()));
        }
        if resp
            .content_length()
            .is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64)
        {
            return Err(format!("GET {url}: document too large"));
        }
        let body = resp
            .bytes()
            .await
            .map_err(|e| format!("GET {url}: {}", error_chain(&e)))?;
        if body.len() > MAX_DOCUMENT_BYTES {
            return Err(format!("GET {url}: document too large"));
        }
        serde_json::from_slice(&body).map_err(|e| format!("GET {url}: invalid JSON: {e}"))
    }
}

impl Issuer {
    fn current(&self) -> Option<Arc<KeySet>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer(value: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = s.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// The issuer's allow-lists: for a Firebase project, any of its users holds a valid token, so an issuer
/// may name the subjects, or the verified emails, that speak for Pitchpoint.
fn allowed(issuer: &IssuerConfig, claims: &Claims) -> Result<(), Failure> {
    if !issuer.subjects.is_empty()
        && !claims
            .sub
            .as_ref()
            .is_some_and(|s| issuer.subjects.contains(s))
    {
        return Err(Failure::SubjectNotAllowed);
    }
    if !issuer.emails.is_empty() {
        let verified = claims.email_verified == Some(true);
        let listed = claims
            .email
            .as_ref()
            .is_some_and(|e| issuer.emails.iter().any(|a| a.eq_ignore_ascii_case(e)));
        if !(verified && listed) {
            return Err(Failure::EmailNotAllowed);
        }
    }
    Ok(())
}
