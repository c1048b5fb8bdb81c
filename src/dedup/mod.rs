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

/// What a claim found.
pub enum Claim {
    /// The key was absent and is now in flight for the caller, who must settle the guard.
    Acquired(ClaimGuard),
    /// The app already acknowledged this event with this 2xx status.
    Duplicate(u16),
    /// Another copy is still in flight, or it failed while this one waited: answer 503 and let
    /// Pitchpoint retry later. Never a 2xx, never a second copy to the app.
    Busy,
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

    pub async fn claim(&self, key: String) -> Claim {
        match self.store.claim(&key, self.wait).await {
            StoreClaim::Acquired(token) => Claim::Acquired(ClaimGuard {
                store: Some(self.store.clone()),
                key,
                token,
            }),
            StoreClaim::Duplicate(status) => Claim::Duplicate(status),
            StoreClaim::Busy => Claim::Busy,
        }
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
    key: String,
    token: u64,
}

impl ClaimGuard {
    /// The app answered `status`: a 2xx marks the event done, anything else frees it for a retry.
    pub async fn settle(mut self, status: u16) {
        if let Some(store) = self.store.take() {
            if (200..300).contains(&status) {
                store.commit(&self.key, self.token, status).await;
            } else {
                store.release(&self.key, self.token).await;
            }
        }
    }
}

impl ClaimGuard {
    /// Frees the key whatever the app answered: for a delivery that must not be remembered as done.
    pub async fn release(mut self) {
        if let Some(store) = self.store.take() {
            store.release(&self.key, self.token).await;
        }
    }
}

impl Drop for ClaimGuard {
    fn drop(&mut self) {
        if let Some(store) = self.store.take() {
            let key = std::mem::take(&mut self.key);
            let token = self.token;
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move { store.release(&key, token).await });
            }
        }
    }
}
