//! Deduplication of deliveries by tenant + webhook id.
//!
//! A key is absent, in flight or done. The pipeline claims it before forwarding, then settles the claim
//! with the app's answer: an event is done only when the app's whole 2xx answer arrived
//! (`AppAnswer::acknowledged`), and the claim is released otherwise so that Pitchpoint's retry goes through.
//! The store behind this interface is local (`memory`) or shared between replicas (`redis`) without the
//! pipeline noticing.
//!
//! A done key also remembers a digest of the body that was acknowledged. A later copy under the same id
//! with another body is still a duplicate (the id is what Pitchpoint retries under), but it is a replay or
//! a sender bug, so it is logged and counted here, in one place for both stores. With the replay guard
//! (`guard_body`, asked for by the pipeline when `auth.hmac.replay_guard` is on) a claim is also refused
//! when its body is done or in flight under another key: the HMAC covers the body only, so a captured
//! delivery can be replayed under a fresh id.

mod connect;
pub mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::{Backend, DedupConfig};
use crate::metrics::METRICS;

/// Tenant + webhook id: the one dedup key type. The caller passes the canonical id (UUIDs in lowercase);
/// an empty tenant is no tenant, as in the headers.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "KeyParts", into = "KeyParts")]
pub struct Key {
    tenant: Option<String>,
    webhook_id: String,
}

/// `Key` as serialised: the same fields, normalised again when read back.
#[derive(Serialize, Deserialize)]
struct KeyParts {
    tenant: Option<String>,
    webhook_id: String,
}

impl From<KeyParts> for Key {
    fn from(p: KeyParts) -> Key {
        Key::new(p.tenant.as_deref(), &p.webhook_id)
    }
}

impl From<Key> for KeyParts {
    fn from(k: Key) -> KeyParts {
        KeyParts {
            tenant: k.tenant,
            webhook_id: k.webhook_id,
        }
    }
}

impl Key {
    pub fn new(tenant: Option<&str>, webhook_id: &str) -> Key {
        Key {
            tenant: tenant.filter(|t| !t.is_empty()).map(str::to_string),
            webhook_id: webhook_id.to_string(),
        }
    }

    pub fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    pub fn webhook_id(&self) -> &str {
        &self.webhook_id
    }

    /// `tenant\nid`: the form the Redis keys are named by, as every earlier version named them, so that
    /// replicas of two versions share their keys during a rolling update. Header values hold no line
    /// break, so the form is unambiguous.
    fn joined(&self) -> String {
        let tenant = self.tenant().unwrap_or("");
        let mut s = String::with_capacity(tenant.len() + 1 + self.webhook_id.len());
        s.push_str(tenant);
        s.push('\n');
        s.push_str(&self.webhook_id);
        s
    }

    /// `tenant="..." webhook_id="..."`, quoted for a log line.
    fn describe(&self) -> String {
        let mut s = String::from("tenant=");
        crate::logging::quote(&mut s, self.tenant().unwrap_or(""));
        s.push_str(" webhook_id=");
        crate::logging::quote(&mut s, &self.webhook_id);
        s
    }
}

/// The first 128 bits of the SHA-256 of a delivery's raw body. Half the digest halves what every
/// remembered id carries, in memory and in Redis; 128 bits keep a chance collision out of reach (about
/// 1e-27 among a million bodies), and nobody can aim at one: the bodies are signed by Pitchpoint.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct BodyDigest([u8; 16]);

impl BodyDigest {
    pub fn of(body: &[u8]) -> BodyDigest {
        let full = Sha256::digest(body);
        let mut d = [0u8; 16];
        d.copy_from_slice(&full[..16]);
        BodyDigest(d)
    }

    /// Lowercase hex, as stored in Redis.
    fn hex(&self) -> String {
        let mut s = String::with_capacity(32);
        for b in self.0 {
            s.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
            s.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
        }
        s
    }

    fn from_hex(s: &str) -> Option<BodyDigest> {
        let s = s.as_bytes();
        if s.len() != 32 {
            return None;
        }
        let mut d = [0u8; 16];
        for (i, pair) in s.chunks(2).enumerate() {
            let text = std::str::from_utf8(pair).ok()?;
            d[i] = u8::from_str_radix(text, 16).ok()?;
        }
        Some(BodyDigest(d))
    }
}

impl std::fmt::Debug for BodyDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BodyDigest({})", self.hex())
    }
}

/// What a claim found.
pub enum Claim {
    /// The key was absent and is now in flight for the caller, who must settle the guard.
    Acquired(ClaimGuard),
    /// The app already acknowledged this event with this 2xx status. When the remembered body digest
    /// differs from this delivery's, it has been logged (tenant and webhook id, never the body) and counted
    /// in `pps_sidecar_dedup_body_mismatch_total`; the delivery is still a duplicate.
    Duplicate { status: u16, body_matches: bool },
    /// Another copy is in flight (or failed while this one waited): 503 + Retry-After, never a 2xx.
    Busy,
    /// Only when the caller asked for the replay guard: this body was acknowledged, or is in flight, under
    /// another key within `ttl_seconds`. The pipeline answers 403 (auth failure `replayed_body`).
    ReplayedBody,
    /// `dedup.on_store_error = "refuse"` and the shared store could not decide: 503 + Retry-After.
    Unavailable,
}

/// How the app's answer to a delivery ended, as far as its claim is concerned. `status` is the app's, or
/// 502/504 when it gave none; `whole`: the answer (head and body) arrived complete and well-framed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppAnswer {
    pub status: u16,
    pub whole: bool,
}

impl AppAnswer {
    /// The one rule: an event is acknowledged only by the app's whole 2xx answer.
    pub fn acknowledged(self) -> bool {
        self.whole && (200..300).contains(&self.status)
    }
}

/// A done key as a store remembers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Done {
    pub status: u16,
    /// `None` when it was remembered without one (in Redis, by a version before digests).
    pub digest: Option<BodyDigest>,
}

/// What a claim carries besides its key: the body's digest, and whether the replay guard applies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Body {
    pub digest: BodyDigest,
    pub guard: bool,
}

/// A store's answer to a claim, before it is wrapped in a guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreClaim {
    Acquired(u64),
    Duplicate(Done),
    Busy,
    ReplayedBody,
    Unavailable,
}

/// A claim a store handed out: what settling it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub key: Key,
    pub token: u64,
    pub body: Body,
}

#[async_trait]
pub trait DedupStore: Send + Sync + 'static {
    /// Atomically claims `key`, or reports its state. A key in flight is waited for up to `wait`. With
    /// `body.guard`, in the same step, a body done or in flight under another key is `ReplayedBody`.
    async fn claim(&self, key: &Key, body: Body, wait: Duration) -> StoreClaim;
    /// Marks the claim's key done with the app's 2xx `status` and the claim's body digest.
    async fn commit(&self, held: &Held, status: u16);
    /// Gives the claim up, if it is still the caller's.
    async fn release(&self, held: &Held);
    /// The remembered status of a done key, claiming nothing.
    async fn lookup(&self, key: &Key) -> Option<u16>;
    /// Keys remembered (done or in flight), approximately.
    fn entries(&self) -> u64;
    /// A line for `/readyz` about the store's backend, if it has one to say.
    fn status(&self) -> Option<String> {
        None
    }
}

/// The pipeline's handle on the dedup store.
#[derive(Clone)]
pub struct Dedup {
    store: Arc<dyn DedupStore>,
    wait: Duration,
}

impl Dedup {
    pub fn new(store: Arc<dyn DedupStore>, wait: Duration) -> Self {
        Self { store, wait }
    }

    /// The store `config` names. `in_flight_ttl` (from `config::Deadlines`) bounds how long a claim whose
    /// owner vanished blocks its key. Connects to nothing yet: Redis is reached on the first delivery.
    pub fn from_config(config: &DedupConfig, in_flight_ttl: Duration) -> Dedup {
        let local = memory::MemoryStore::new(config.max_entries, config.ttl, in_flight_ttl);
        let store: Arc<dyn DedupStore> = match (&config.backend, &config.redis) {
            (Backend::Redis, Some(redis)) => Arc::new(redis::RedisStore::new(
                redis,
                config.ttl,
                in_flight_ttl,
                local,
            )),
            _ => Arc::new(local),
        };
        Dedup::new(store, config.in_flight_wait)
    }

    /// Claims `key` atomically. With `guard_body`, also (atomically, in the same step, in memory and in
    /// Redis) refuses a body digest acknowledged or in flight under another key.
    pub async fn claim(&self, key: Key, digest: BodyDigest, guard_body: bool) -> Claim {
        let body = Body {
            digest,
            guard: guard_body,
        };
        match self.store.claim(&key, body, self.wait).await {
            StoreClaim::Acquired(token) => Claim::Acquired(ClaimGuard {
                store: Some(self.store.clone()),
                held: Held { key, token, body },
            }),
            StoreClaim::Duplicate(done) => {
                // A digest remembered without one (an older version's) cannot tell: not a mismatch.
                let body_matches = done.digest.is_none_or(|d| d == digest);
                if !body_matches {
                    METRICS.dedup_body_mismatch();
                    log::warn!(
                        "dedup: a duplicate of an acknowledged event came with another body ({}); answered as a duplicate (a replay, or a sender bug)",
                        key.describe()
                    );
                }
                Claim::Duplicate {
                    status: done.status,
                    body_matches,
                }
            }
            StoreClaim::Busy => Claim::Busy,
            StoreClaim::ReplayedBody => Claim::ReplayedBody,
            StoreClaim::Unavailable => Claim::Unavailable,
        }
    }

    /// Read-only: the remembered 2xx status of a done key. For deliveries that failed verification in
    /// shadow mode: they never claim, commit or release anything (an unverified request must not change
    /// state a verified one relies on), but a duplicate of a done event is still answered from the cache.
    pub async fn lookup(&self, key: &Key) -> Option<u16> {
        self.store.lookup(key).await
    }

    pub fn entries(&self) -> u64 {
        self.store.entries()
    }

    pub fn status(&self) -> Option<String> {
        self.store.status()
    }
}

/// An in-flight claim. Dropping it unsettled (the client went away, a task was cancelled) releases it,
/// so a claim can never outlive the request that made it.
pub struct ClaimGuard {
    store: Option<Arc<dyn DedupStore>>,
    held: Held,
}

impl ClaimGuard {
    /// The only way to end a claim: commit (status and body digest remembered for `ttl_seconds`) when
    /// `answer.acknowledged()`, release otherwise.
    pub async fn settle(mut self, answer: AppAnswer) {
        if let Some(store) = self.store.take() {
            if answer.acknowledged() {
                store.commit(&self.held, answer.status).await;
            } else {
                store.release(&self.held).await;
            }
        }
    }

    pub fn key(&self) -> &Key {
        &self.held.key
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if let Some(store) = self.store.take() {
            let held = self.held.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { store.release(&held).await });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_whole_2xx_answer_acknowledges() {
        let a = |status, whole| AppAnswer { status, whole }.acknowledged();
        assert!(a(200, true) && a(204, true) && a(299, true));
        assert!(!a(200, false), "a cut 2xx answer is no acknowledgement");
        assert!(!a(199, true) && !a(300, true) && !a(404, true) && !a(502, true));
    }

    #[test]
    fn an_empty_tenant_is_no_tenant_and_a_key_reads_back_as_written() {
        assert_eq!(Key::new(Some(""), "id"), Key::new(None, "id"));
        let k = Key::new(Some("OU1243"), "9e6e5565-aaaa");
        assert_eq!(
            (k.tenant(), k.webhook_id()),
            (Some("OU1243"), "9e6e5565-aaaa")
        );
        assert_eq!(k.joined(), "OU1243\n9e6e5565-aaaa");
        let text = serde_json::to_string(&k).unwrap();
        assert_eq!(serde_json::from_str::<Key>(&text).unwrap(), k);
        let empty: Key = serde_json::from_str(r#"{"tenant":"","webhook_id":"x"}"#).unwrap();
        assert_eq!(empty, Key::new(None, "x"));
    }

    #[test]
    fn a_digest_is_the_sha256_prefix_and_reads_back_from_its_hex() {
        let d = BodyDigest::of(b"abc");
        // SHA-256("abc") = ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
        assert_eq!(d.hex(), "ba7816bf8f01cfea414140de5dae2223");
        assert_eq!(BodyDigest::from_hex(&d.hex()), Some(d));
        assert_eq!(BodyDigest::from_hex("ba78"), None);
        assert_eq!(BodyDigest::from_hex(&"zz".repeat(16)), None);
        assert_ne!(BodyDigest::of(b"abd"), d);
    }

    #[test]
    fn a_key_in_a_log_line_is_quoted() {
        let k = Key::new(Some("t\"x"), "id\nforged=1");
        assert_eq!(k.describe(), r#"tenant="t\"x" webhook_id="id\nforged=1""#);
    }
}
