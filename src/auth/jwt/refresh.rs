//! Keeping each issuer's key set loaded and fresh: fetched at start-up (retried with backoff until it
//! succeeds), every `auth.jwt.jwks_refresh_seconds` after that, and once for an unknown `kid` (rate-limited,
//! single flight). A failed fetch keeps the last good set.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use super::{
    Issuer, IssuerKey, JwtVerifier, KeySet, MAX_DOCUMENT_BYTES, MAX_KID_LABEL_BYTES,
    MAX_KID_SERIES, RETRY_MAX, RETRY_MIN, UNKNOWN_KID_REFETCH_INTERVAL,
};
use crate::config::check_fetch_url;
use crate::metrics::{self, METRICS};

/// Runs `refresh_due` on the verifier in force, whichever a reload installed.
pub struct Refresher {
    pub current: Box<dyn Fn() -> Option<Arc<JwtVerifier>> + Send + Sync>,
}

#[async_trait]
impl BackgroundService for Refresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Some(jwt) = (self.current)() {
                        jwt.refresh_due().await;
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

impl JwtVerifier {
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

    pub(super) fn may_refetch_for_unknown_kid(&self, issuer: &Issuer) -> bool {
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

    /// Fetches and installs the issuer's key set, one fetch at a time. A failure keeps the last good set.
    async fn fetch(&self, issuer: &Issuer) {
        let single = issuer.fetching.lock().await;
        self.fetch_locked(issuer, &single).await;
    }

    /// `fetch`, with the issuer's single-flight lock held by the caller.
    pub(super) async fn fetch_locked(
        &self,
        issuer: &Issuer,
        _single: &tokio::sync::MutexGuard<'_, ()>,
    ) {
        let name = &issuer.config.issuer;
        let fetched_from = Instant::now();
        match self.download(issuer).await {
            Ok(keys) => {
                let set = issuer.key_set(keys, fetched_from);
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

    async fn download(&self, issuer: &Issuer) -> Result<Vec<Published>, String> {
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
        let mut keys = Vec::new();
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
            keys.push(Published {
                kid: kid.clone(),
                decoding,
                alg,
            });
        }
        if keys.is_empty() {
            return Err("the JWKS holds no usable signing key".into());
        }
        Ok(keys)
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

/// A usable signing key of a JWKS document.
pub(super) struct Published {
    pub(super) kid: String,
    pub(super) decoding: DecodingKey,
    pub(super) alg: Option<Algorithm>,
}

impl Issuer {
    /// The key set of `keys`, fetched from `fetched_from`. The first `MAX_KID_SERIES` `kid`s (in order)
    /// get a label of their own, and keep their counters from the set in force.
    pub(super) fn key_set(&self, mut keys: Vec<Published>, fetched_from: Instant) -> KeySet {
        let old = self.current();
        keys.sort_by(|a, b| a.kid.cmp(&b.kid));
        keys.dedup_by(|a, b| a.kid == b.kid);
        let mut labels = 0;
        let by_kid = keys
            .into_iter()
            .map(|p| {
                let labelled = labels < MAX_KID_SERIES
                    && p.kid != "other"
                    && p.kid.len() <= MAX_KID_LABEL_BYTES;
                labels += usize::from(labelled);
                let verified = match old.as_ref().and_then(|o| o.by_kid.get(&p.kid)) {
                    _ if !labelled => self.other_verified.clone(),
                    Some(before) if before.labelled => before.verified.clone(),
                    _ => Arc::default(),
                };
                let key = IssuerKey {
                    decoding: p.decoding,
                    alg: p.alg,
                    verified,
                    labelled,
                };
                (p.kid, key)
            })
            .collect();
        KeySet {
            by_kid,
            fetched_from,
        }
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
