//! Deduplication of deliveries by tenant + webhook id.
//!
//! A key is absent, in flight or done. The proxy claims it before forwarding, then commits it when the app
//! answered 2xx, or releases it otherwise so that Pitchpoint's retry goes through. The store behind this
//! interface is local (`memory`) or shared between replicas (`redis`) without the proxy noticing.

pub mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

/// Tenant + webhook id: the one dedup key, made here and stored as it is.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Key {
    tenant: Option<String>,
    webhook_id: String,
}

impl Key {
    /// `webhook_id` as canonicalised by the caller (UUIDs in lowercase).
    pub fn new(tenant: Option<&str>, webhook_id: &str) -> Key {
        Key {
            tenant: tenant.map(str::to_string),
            webhook_id: webhook_id.to_string(),
        }
    }

    pub fn tenant(&self) -> Option<&str> {
        self.tenant.as_deref()
    }

    pub fn webhook_id(&self) -> &str {
        &self.webhook_id
    }

    /// The key as the stores index it.
    fn store_key(&self) -> String {
        let tenant = self.tenant.as_deref().unwrap_or("");
        let mut key = String::with_capacity(tenant.len() + 1 + self.webhook_id.len());
        key.push_str(tenant);
        key.push('\n');
        key.push_str(&self.webhook_id);
        key
    }
}

/// A digest of a delivery's raw body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyDigest([u8; 16]);

impl BodyDigest {
    pub fn of(body: &[u8]) -> BodyDigest {
        use sha2::Digest as _;
        let full = sha2::Sha256::digest(body);
        let mut d = [0u8; 16];
        d.copy_from_slice(&full[..16]);
        BodyDigest(d)
    }
}

/// What a claim found.
pub enum Claim {
    /// The key was absent and is now in flight for the caller, who must settle the guard.
    Acquired(ClaimGuard),
    /// The app already acknowledged this event with this 2xx status.
    Duplicate { status: u16, body_matches: bool },
    /// Another copy is still in flight, or it failed while this one waited: answer 503 and let
    /// Pitchpoint retry later. Never a 2xx, never a second copy to the app.
    Busy,
    /// The body was acknowledged, or is in flight, under another key (the replay guard).
    ReplayedBody,
    /// The shared store could not decide (`on_store_error = "refuse"`).
    Unavailable,
}

/// How the app's answer to a delivery ended, as far as its claim is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppAnswer {
    /// The app's status, or 502 / 504 when it gave none.
    pub status: u16,
    /// The answer, head and body, arrived complete and well-framed.
    pub whole: bool,
}

impl AppAnswer {
    /// The one rule: an event is acknowledged only by the app's whole 2xx answer.
    pub fn acknowledged(self) -> bool {
        self.whole && (200..300).contains(&self.status)
    }
}

/// A store's answer to a claim, before it is wrapped in a guard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreClaim {
    Acquired(u64),
    Duplicate(u16),
    Busy,
}

#[async_trait]
pub trait DedupStore: Send + Sync + 'static {
    /// Atomically claims `key`, or reports its state. A key in flight is waited for up to `wait`.
    async fn claim(&self, key: &str, wait: Duration) -> StoreClaim;
    /// Marks `key` done with the app's 2xx `status`.
    async fn commit(&self, key: &str, token: u64, status: u16);
    /// Gives the claim up, if it is still the caller's (`token`).
    async fn release(&self, key: &str, token: u64);
    /// Keys remembered (done or in flight), approximately.
    fn entries(&self) -> u64;
    /// A line for `/readyz` about the store's backend, if it has one to say.
    fn status(&self) -> Option<String> {
        None
    }
}

/// The proxy's handle on the dedup store.
#[derive(Clone)]
pub struct Dedup {
    store: Arc<dyn DedupStore>,
    wait: Duration,
}

impl Dedup {
    pub fn new(store: Arc<dyn DedupStore>, wait: Duration) -> Self {
        Self { store, wait }
    }

    pub async fn claim(&self, key: Key, _digest: BodyDigest, _guard_body: bool) -> Claim {
        let stored = key.store_key();
        match self.store.claim(&stored, self.wait).await {
            StoreClaim::Acquired(token) => Claim::Acquired(ClaimGuard {
                store: Some(self.store.clone()),
                key,
                stored,
                token,
            }),
            StoreClaim::Duplicate(status) => Claim::Duplicate {
                status,
                body_matches: true,
            },
            StoreClaim::Busy => Claim::Busy,
        }
    }

    /// The remembered 2xx status of a done key, without claiming it.
    pub async fn lookup(&self, _key: &Key) -> Option<u16> {
        None
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
    key: Key,
    stored: String,
    token: u64,
}

impl ClaimGuard {
    /// The only way to end a claim: commit when the app acknowledged the event, release otherwise.
    pub async fn settle(mut self, answer: AppAnswer) {
        if let Some(store) = self.store.take() {
            if answer.acknowledged() {
                store.commit(&self.stored, self.token, answer.status).await;
            } else {
                store.release(&self.stored, self.token).await;
            }
        }
    }

    pub fn key(&self) -> &Key {
        &self.key
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if let Some(store) = self.store.take() {
            let key = std::mem::take(&mut self.stored);
            let token = self.token;
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { store.release(&key, token).await });
            }
        }
    }
}
