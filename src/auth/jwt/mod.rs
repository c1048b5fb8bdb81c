//! `Authorization: Bearer <JWT>`: OpenID Connect ID tokens checked against each trusted issuer's JWKS.
//!
//! Crypto is jsonwebtoken on aws-lc-rs, the same library rustls uses for the JWKS fetches: one audited
//! implementation in the binary, and no RSA-private-key code from the `rsa` crate.
//!
//! ## An unknown `kid`
//!
//! An issuer publishes a key in its JWKS before it signs with it. So a token whose `kid` is missing from a
//! key set whose fetch *began after the token arrived* names a key the issuer does not publish: proof
//! (`unknown_key`, 403). Missing from an older set, it may name a key published since: the token triggers
//! a refetch, at most one per `UNKNOWN_KID_REFETCH_INTERVAL` per issuer, or waits for the fetch under way;
//! when neither gives a set fetched after its arrival, the answer is `unknown_key_unchecked` (503 +
//! `Retry-After`), never a 403.
//!
//! A forger sending unknown `kid`s cannot keep a newly published key out: every refetch, whoever caused
//! it, loads what the issuer publishes, so a forger's refetch after the publication installs the new key.
//! A genuine token refused meanwhile is retried by Pitchpoint after `Retry-After` (`super::RETRY_AFTER`),
//! which is no shorter than the window: its retry either may refetch, or finds the set fetched by the
//! refetch that used the window, which began after the first attempt arrived, so after the publication.
//! What remains is an issuer whose own replicas disagree about its JWKS for a while; a fetch that fails
//! keeps the last good set and decides nothing.

mod refresh;
pub use refresh::Refresher;

use std::collections::HashMap;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;

use super::series::label_value;
use super::{Failure, Verified};
use crate::config::{IssuerConfig, JwtConfig};

/// Longer tokens are refused before any parsing.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
/// JWKS and discovery documents larger than this are refused.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;
/// An unknown `kid` refetches the JWKS at most this often per issuer, so a flood of forged `kid`s
/// cannot turn the sidecar into a load generator against the issuer (720 fetches an hour at most).
const UNKNOWN_KID_REFETCH_INTERVAL: Duration = Duration::from_secs(5);
const _: () = assert!(UNKNOWN_KID_REFETCH_INTERVAL.as_secs() <= super::RETRY_AFTER.as_secs());
/// Keys of one issuer counted under their own `kid` label in `pps_sidecar_jwt_verified_total`; the others
/// (and a key whose `kid` is long or is `other`) under `kid="other"`: at most 17 series per issuer.
const MAX_KID_SERIES: usize = 16;
const MAX_KID_LABEL_BYTES: usize = 128;
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
    /// Deliveries verified by a key without a `kid` label of its own.
    other_verified: Arc<AtomicU64>,
}

#[derive(Default)]
struct FetchState {
    last_success: Option<Instant>,
    last_unknown_kid_fetch: Option<Instant>,
    next_retry: Option<Instant>,
    backoff: Duration,
}

struct KeySet {
    by_kid: HashMap<String, IssuerKey>,
    /// When the fetch that got it began: every key the issuer published before then is in it.
    fetched_from: Instant,
}

struct IssuerKey {
    decoding: DecodingKey,
    /// The JWK's own `alg`, when it names one: a token must then use exactly that.
    alg: Option<Algorithm>,
    /// Deliveries it verified: its own counter, kept across refetches while it stays published, or the
    /// issuer's `other_verified` when it has no label of its own.
    verified: Arc<AtomicU64>,
    labelled: bool,
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
                other_verified: Arc::default(),
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

    /// Verifies a bearer token: the verified subject, issuer and key, or why not.
    pub async fn verify(&self, token: &str) -> Result<Verified, Failure> {
        let arrived = Instant::now();
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
        // Pitchpoint's tokens name their key: without a `kid` there is no key to check against.
        let kid = header.kid.ok_or(Failure::UnknownKey)?;
        let keys = self.keys_naming(issuer, &kid, arrived).await?;
        let key = keys.by_kid.get(&kid).ok_or(Failure::UnknownKey)?;
        if key.alg.is_some_and(|a| a != header.alg) {
            return Err(Failure::DisallowedAlgorithm);
        }
        let claims = self.claims(token, header.alg, &issuer.config, &key.decoding)?;
        allowed(&issuer.config, &claims)?;
        key.verified.fetch_add(1, Relaxed);
        Ok(Verified::Jwt {
            subject: claims.sub.unwrap_or_default(),
            issuer: claims.iss,
            kid,
        })
    }

    /// The issuer's key set, once it holds `kid`: refetched for it when allowed (or a fetch under way
    /// waited for); else what its absence proves (`unknown_kid`).
    async fn keys_naming(
        &self,
        issuer: &Issuer,
        kid: &str,
        arrived: Instant,
    ) -> Result<Arc<KeySet>, Failure> {
        let holding = |keys: &Arc<KeySet>| keys.by_kid.contains_key(kid);
        if let Some(keys) = issuer.current().filter(holding) {
            return Ok(keys);
        }
        // Decided under the single-flight lock: a fetch under way has ended (it may have loaded the key),
        // and the fetch this request is allowed begins before any other request looks.
        let single = issuer.fetching.lock().await;
        if issuer.current().is_none_or(|keys| !holding(&keys))
            && self.may_refetch_for_unknown_kid(issuer)
        {
            self.fetch_locked(issuer, &single).await;
        }
        match issuer.current() {
            Some(keys) if holding(&keys) => Ok(keys),
            keys => Err(unknown_kid(keys.as_deref(), arrived)),
        }
    }

    /// The token's claims, its signature and registered claims checked with `key`.
    fn claims(
        &self,
        token: &str,
        alg: Algorithm,
        issuer: &IssuerConfig,
        key: &DecodingKey,
    ) -> Result<Claims, Failure> {
        let mut v = Validation::new(alg);
        v.leeway = self.config.leeway_seconds;
        v.validate_exp = true;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.set_issuer(&[&issuer.issuer]);
        v.set_audience(&issuer.audiences);
        let data = jsonwebtoken::decode::<Claims>(token, key, &v).map_err(|e| match e.kind() {
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
        Ok(data.claims)
    }

    /// `pps_sidecar_jwt_verified_total{issuer, kid}`: per issuer, one series per labelled key of its
    /// current key set and one `kid="other"`.
    pub fn render_verified(&self, w: &mut String) {
        for issuer in &self.issuers {
            let iss = label_value(&issuer.config.issuer);
            let keys = issuer.current();
            let mut labelled: Vec<(&str, u64)> = keys
                .iter()
                .flat_map(|keys| keys.by_kid.iter())
                .filter(|(_, k)| k.labelled)
                .map(|(kid, k)| (kid.as_str(), k.verified.load(Relaxed)))
                .collect();
            labelled.sort_unstable();
            let other = ("other", issuer.other_verified.load(Relaxed));
            for (kid, n) in labelled.into_iter().chain([other]) {
                let kid = label_value(kid);
                let _ = writeln!(
                    w,
                    "pps_sidecar_jwt_verified_total{{issuer=\"{iss}\",kid=\"{kid}\"}} {n}"
                );
            }
        }
    }
}

impl Issuer {
    fn current(&self) -> Option<Arc<KeySet>> {
        self.keys.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// What a `kid` missing from `keys`, the key set held after a refetch was tried, proves about a token
/// that `arrived` then: nothing when no set was fetched since (the key may have been published since),
/// that the issuer does not publish that key otherwise.
fn unknown_kid(keys: Option<&KeySet>, arrived: Instant) -> Failure {
    match keys {
        None => Failure::KeysNotLoaded,
        Some(k) if k.fetched_from >= arrived => Failure::UnknownKey,
        Some(_) => Failure::UnknownKeyUnchecked,
    }
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

#[cfg(test)]
mod tests {
    use super::refresh::Published;
    use super::*;

    fn verifier() -> JwtVerifier {
        JwtVerifier::new(&JwtConfig {
            leeway_seconds: 60,
            jwks_refresh: Duration::from_secs(3600),
            issuers: vec![IssuerConfig {
                issuer: "https://securetoken.google.com/p".into(),
                audiences: vec!["p".into()],
                jwks_uri: None,
                algorithms: vec!["RS256".into()],
                subjects: Vec::new(),
                emails: Vec::new(),
            }],
        })
    }

    fn published(kids: &[&str]) -> Vec<Published> {
        kids.iter()
            .map(|kid| Published {
                kid: kid.to_string(),
                decoding: DecodingKey::from_secret(b"unused").unwrap(),
                alg: None,
            })
            .collect()
    }

    #[test]
    fn an_unknown_kid_is_proof_only_against_keys_fetched_after_the_token_arrived() {
        let v = verifier();
        let issuer = &v.issuers[0];
        let before = Instant::now();
        let arrived = before + Duration::from_millis(1);
        assert_eq!(unknown_kid(None, arrived), Failure::KeysNotLoaded);
        let stale = issuer.key_set(published(&["a"]), before);
        assert_eq!(
            unknown_kid(Some(&stale), arrived),
            Failure::UnknownKeyUnchecked
        );
        assert!(!unknown_kid(Some(&stale), arrived).is_proof());
        let fresh = issuer.key_set(published(&["a"]), arrived);
        assert_eq!(unknown_kid(Some(&fresh), arrived), Failure::UnknownKey);
        assert!(unknown_kid(Some(&fresh), arrived).is_proof());
    }

    #[test]
    fn kid_series_are_bounded_and_a_key_keeps_its_count_across_refetches() {
        let v = verifier();
        let issuer = &v.issuers[0];
        let many: Vec<String> = (0..20).map(|i| format!("k{i:02}")).collect();
        let mut kids: Vec<&str> = many.iter().map(String::as_str).collect();
        kids.push("other");
        let set = issuer.key_set(published(&kids), Instant::now());
        let labelled = set.by_kid.values().filter(|k| k.labelled).count();
        assert_eq!(labelled, MAX_KID_SERIES);
        assert!(
            !set.by_kid["other"].labelled,
            "no key takes the catch-all's label"
        );
        set.by_kid["k00"].verified.fetch_add(3, Relaxed);
        set.by_kid["k19"].verified.fetch_add(2, Relaxed);
        *issuer.keys.write().unwrap() = Some(Arc::new(set));

        let mut page = String::new();
        v.render_verified(&mut page);
        assert_eq!(page.lines().count(), MAX_KID_SERIES + 1, "{page}");
        let iss = "issuer=\"https://securetoken.google.com/p\"";
        assert!(page.contains(&format!("{{{iss},kid=\"k00\"}} 3")), "{page}");
        assert!(
            page.contains(&format!("{{{iss},kid=\"other\"}} 2")),
            "{page}"
        );

        // Rotated: k00 stays published and keeps its count; k01 is gone, and so is its series.
        let next = issuer.key_set(published(&["k00", "new"]), Instant::now());
        assert_eq!(next.by_kid["k00"].verified.load(Relaxed), 3);
        assert_eq!(next.by_kid["new"].verified.load(Relaxed), 0);
        *issuer.keys.write().unwrap() = Some(Arc::new(next));
        let mut page = String::new();
        v.render_verified(&mut page);
        assert_eq!(page.lines().count(), 3, "{page}");
        assert!(!page.contains("k01"), "{page}");
    }
}
