//! The local store: a moka cache, bounded, with per-state expiry.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::Expiry;
use moka::ops::compute::Op;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use tokio::sync::watch;

use super::{DedupStore, StoreClaim};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Settled {
    Pending,
    Done(u16),
    Released,
}

#[derive(Clone)]
enum Entry {
    InFlight {
        token: u64,
        settled: Arc<watch::Sender<Settled>>,
    },
    Done(u16),
}

struct PerState {
    in_flight: Duration,
    done: Duration,
}

impl Expiry<String, Entry> for PerState {
    fn expire_after_create(&self, _: &String, v: &Entry, _: Instant) -> Option<Duration> {
        Some(self.ttl(v))
    }

    fn expire_after_update(
        &self,
        _: &String,
        v: &Entry,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.ttl(v))
    }
}

impl PerState {
    fn ttl(&self, v: &Entry) -> Duration {
        match v {
            Entry::InFlight { .. } => self.in_flight,
            Entry::Done(_) => self.done,
        }
    }
}

pub struct MemoryStore {
    cache: Cache<String, Entry>,
    next_token: AtomicU64,
}

impl MemoryStore {
    /// `in_flight_ttl` bounds how long a claim whose owner vanished can block its key; it should outlive
    /// the app's read timeout.
    pub fn new(max_entries: u64, ttl: Duration, in_flight_ttl: Duration) -> Self {
        let cache = Cache::builder()
            .max_capacity(max_entries)
            // LRU admits every new key. moka's default (TinyLFU) may refuse a new key when the cache is
            // full, and a dedup cache that forgets a fresh event lets its duplicate through.
            .eviction_policy(EvictionPolicy::lru())
            .expire_after(PerState {
                in_flight: in_flight_ttl,
                done: ttl,
            })
            .build();
        Self {
            cache,
            next_token: AtomicU64::new(1),
        }
    }
}

impl MemoryStore {
    /// The remembered status of a done key, without claiming anything.
    pub fn done_status(&self, key: &str) -> Option<u16> {
        match self.cache.get(key) {
            Some(Entry::Done(status)) => Some(status),
            _ => None,
        }
    }
}

#[async_trait]
impl DedupStore for MemoryStore {
    async fn claim(&self, key: &str, wait: Duration) -> StoreClaim {
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let mut seen: Option<watch::Receiver<Settled>> = None;
        let result = self.cache.entry_by_ref(key).and_compute_with(|current| {
            match current.map(|e| e.into_value()) {
                Some(Entry::Done(_)) => Op::Nop,
                Some(Entry::InFlight { settled, .. }) => {
                    seen = Some(settled.subscribe());
                    Op::Nop
                }
                None => Op::Put(Entry::InFlight {
                    token,
                    settled: Arc::new(watch::channel(Settled::Pending).0),
                }),
            }
        });
        if let Some(rx) = seen {
            return wait_for(rx, wait).await;
        }
        match result.into_entry().map(|e| e.into_value()) {
            Some(Entry::Done(status)) => StoreClaim::Duplicate(status),
            Some(Entry::InFlight { token: t, .. }) if t == token => StoreClaim::Acquired(token),
            _ => StoreClaim::Busy,
        }
    }

    async fn commit(&self, key: &str, token: u64, status: u16) {
        let mut notify = None;
        self.cache.entry_by_ref(key).and_compute_with(|current| {
            if let Some(Entry::InFlight { token: t, settled }) = current.map(|e| e.into_value())
                && t == token
            {
                notify = Some(settled);
            }
            // The app acknowledged the event: remember that even if the claim was evicted meanwhile.
            Op::Put(Entry::Done(status))
        });
        if let Some(tx) = notify {
            tx.send_replace(Settled::Done(status));
        }
    }

    async fn release(&self, key: &str, token: u64) {
        let mut notify = None;
        self.cache.entry_by_ref(key).and_compute_with(|current| {
            match current.map(|e| e.into_value()) {
                Some(Entry::InFlight { token: t, settled }) if t == token => {
                    notify = Some(settled);
                    Op::Remove
                }
                _ => Op::Nop,
            }
        });
        if let Some(tx) = notify {
            tx.send_replace(Settled::Released);
        }
    }

    fn entries(&self) -> u64 {
        self.cache.entry_count()
    }
}

async fn wait_for(mut rx: watch::Receiver<Settled>, wait: Duration) -> StoreClaim {
    let outcome = tokio::time::timeout(wait, rx.wait_for(|s| *s != Settled::Pending)).await;
    match outcome {
        Ok(Ok(s)) => match *s {
            Settled::Done(status) => StoreClaim::Duplicate(status),
            _ => StoreClaim::Busy,
        },
        _ => StoreClaim::Busy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dedup::{Claim, Dedup};

    fn dedup(max: u64) -> Dedup {
        Dedup::new(
            Arc::new(MemoryStore::new(
                max,
                Duration::from_secs(60),
                Duration::from_secs(60),
            )),
            Duration::from_secs(5),
        )
    }

    #[tokio::test]
    async fn committed_key_is_a_duplicate_with_its_status() {
        let d = dedup(100);
        let Claim::Acquired(g) = d.claim("k".into()).await else {
            panic!("first claim must acquire")
        };
        g.settle(202).await;
        assert!(matches!(d.claim("k".into()).await, Claim::Duplicate(202)));
    }

    #[tokio::test]
    async fn released_key_can_be_claimed_again() {
        let d = dedup(100);
        let Claim::Acquired(g) = d.claim("k".into()).await else {
            panic!()
        };
        g.settle(500).await;
        assert!(matches!(d.claim("k".into()).await, Claim::Acquired(_)));
    }

    #[tokio::test]
    async fn waiter_shares_the_first_copys_success_and_never_succeeds_on_its_failure() {
        for (status, expect_dup) in [(200u16, true), (503, false)] {
            let d = dedup(100);
            let Claim::Acquired(g) = d.claim("k".into()).await else {
                panic!()
            };
            let d2 = d.clone();
            let waiter = tokio::spawn(async move { d2.claim("k".into()).await });
            tokio::task::yield_now().await;
            g.settle(status).await;
            match waiter.await.unwrap() {
                Claim::Duplicate(s) => assert!(expect_dup && s == status),
                Claim::Busy => assert!(!expect_dup),
                Claim::Acquired(_) => panic!("a waiter must never become a second copy"),
            }
        }
    }

    #[tokio::test]
    async fn dropped_guard_releases_its_claim() {
        let d = dedup(100);
        let Claim::Acquired(g) = d.claim("k".into()).await else {
            panic!()
        };
        drop(g);
        // The release is spawned; claiming waits for it rather than sleeping.
        let mut tries = 0;
        while !matches!(d.claim("k".into()).await, Claim::Acquired(_)) {
            tries += 1;
            assert!(tries < 1000);
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn full_cache_always_remembers_the_newest_key() {
        let d = dedup(1_000);
        for i in 0..5_000 {
            let Claim::Acquired(g) = d.claim(format!("k{i}")).await else {
                panic!("fresh key {i} refused")
            };
            g.settle(200).await;
            assert!(
                matches!(d.claim(format!("k{i}")).await, Claim::Duplicate(200)),
                "key {i} forgotten right after commit"
            );
        }
    }
}
