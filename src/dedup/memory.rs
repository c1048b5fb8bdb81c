//! The local store: done ids in a moka cache (LRU, fixed TTL), claims in flight in sharded maps beside it.
//!
//! moka rather than a table of our own: it bounds the ids, expires them and evicts the least recently used
//! in batches, and is maintained elsewhere. The price is memory and CPU: a remembered id costs 296 bytes
//! of RSS at 1,000,000 ids (316 at 100,000; `bench/dedup-mem`), against 86 for the FIFO table this
//! replaced, because moka allocates each entry apart (an `Arc` of the key, the value entry with its
//! metadata, nodes in the LRU and write-order queues) on top of its hash table. A claim + commit of a new
//! id into a full store takes 2 to 3.3 us on one thread, against 0.5 to 0.9 us. Under a 128Mi pod limit,
//! a `max_entries` of about 200,000 fits (bench/README.md).
//!
//! LRU, not moka's default TinyLFU: TinyLFU admits a new key only if it looks more popular than the one it
//! would evict, and every id is new. A refused id would let its duplicate through; LRU admits every id and
//! evicts the least recently seen, which for ids seen once is the oldest.
//!
//! Ids are kept as a 128-bit keyed hash, never as the string. Two different ids with the same hash would
//! answer an event the app never saw as a duplicate, a 2xx the app never gave: with 64 bits the odds at a
//! million ids are about 1 in 3.7e7, with 128 bits about 1e-27. The key is random per process, so no sender
//! can aim at a collision.
//!
//! Claims in flight are few (one per concurrent request) and keep their key string and a channel on which
//! duplicates wait for the outcome. A claim looks the id up in moka under its shard's lock, and a commit
//! records the id in moka before it removes the claim: a claim sees one or the other, never neither.

use std::collections::HashMap;
use std::collections::hash_map::{Entry, RandomState};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use tokio::sync::watch;

use super::{DedupStore, StoreClaim};

/// Shards of the claims in flight: enough that request threads rarely queue on one lock.
const CLAIM_SHARDS: usize = 32;
/// A shard's in-flight map is swept of stale claims when it reaches this size (then twice its size).
const SWEEP_AT: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Settled {
    Pending,
    Done(u16),
    Released,
}

/// A 128-bit hash of an id.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Id([u64; 2]);

impl Hash for Id {
    /// The hash is already keyed and uniform: moka uses its first half as is. The claims' shard is picked
    /// from the second half.
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0[0]);
    }
}

#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (by `Id`); this is the fallback `Hasher` requires.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

struct InFlight {
    token: u64,
    /// Since the store started; a claim older than the in-flight TTL counts as absent.
    claimed: Duration,
    /// Made when a duplicate first waits: most claims have no waiter, and a channel costs an allocation
    /// and a round of wake-ups when it is sent to and dropped.
    settled: Option<watch::Sender<Settled>>,
}

#[derive(Default)]
struct Claims {
    in_flight: HashMap<String, InFlight>,
    sweep_at: usize,
}

impl Claims {
    /// Drops claims whose owner vanished without settling, amortised over insertions.
    fn sweep(&mut self, now: Duration, ttl: Duration) {
        if self.in_flight.len() >= self.sweep_at.max(SWEEP_AT) {
            self.in_flight
                .retain(|_, f| now.saturating_sub(f.claimed) < ttl);
            self.sweep_at = self.in_flight.len() * 2;
        }
    }

    /// Removes the claim on `key` if it is `token`'s, returning its channel to notify outside the lock.
    fn take(&mut self, key: &str, token: u64) -> Option<watch::Sender<Settled>> {
        let (key, claim) = self.in_flight.remove_entry(key)?;
        if claim.token != token {
            self.in_flight.insert(key, claim);
            return None;
        }
        claim.settled
    }
}

enum Found {
    Done(u16),
    InFlight(watch::Receiver<Settled>),
    Acquired(u64),
}

pub struct MemoryStore {
    hash: RandomState,
    done: Cache<Id, u16, BuildHasherDefault<IdHasher>>,
    claims: Box<[Mutex<Claims>]>,
    in_flight_ttl: Duration,
    start: Instant,
    next_token: AtomicU64,
    /// Added to the claims' clock, so that tests can let a claim go stale without sleeping.
    #[cfg(test)]
    skew: Mutex<Duration>,
}

impl MemoryStore {
    /// Remembers at most `max_entries` done ids, each for `ttl`. `in_flight_ttl` bounds how long a claim
    /// whose owner vanished can block its key; it should outlive the app's read timeout.
    pub fn new(max_entries: u64, ttl: Duration, in_flight_ttl: Duration) -> Self {
        let done = Cache::builder()
            .max_capacity(max_entries)
            .eviction_policy(EvictionPolicy::lru())
            .time_to_live(ttl)
            .build_with_hasher(BuildHasherDefault::default());
        Self {
            hash: RandomState::new(),
            done,
            claims: (0..CLAIM_SHARDS).map(|_| Mutex::default()).collect(),
            in_flight_ttl,
            start: Instant::now(),
            next_token: AtomicU64::new(1),
            #[cfg(test)]
            skew: Mutex::new(Duration::ZERO),
        }
    }

    /// The remembered status of a done key, without claiming anything.
    pub fn done_status(&self, key: &str) -> Option<u16> {
        self.done.get(&self.id(key))
    }

    /// Two SipHash values of the key under one random key, with a different first byte so that they are
    /// independent. (Two `RandomState`s made on one thread have related keys: std increments the first.)
    fn id(&self, key: &str) -> Id {
        Id([
            self.hash.hash_one((0u8, key)),
            self.hash.hash_one((1u8, key)),
        ])
    }

    fn claims(&self, id: Id) -> MutexGuard<'_, Claims> {
        self.claims[(id.0[1] % CLAIM_SHARDS as u64) as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Time since the store started, for the claims.
    fn now(&self) -> Duration {
        self.start.elapsed() + self.skew()
    }

    #[cfg(not(test))]
    fn skew(&self) -> Duration {
        Duration::ZERO
    }

    #[cfg(test)]
    fn skew(&self) -> Duration {
        *self.skew.lock().unwrap()
    }

    fn try_claim(&self, key: &str) -> Found {
        let id = self.id(key);
        let now = self.now();
        let mut claims = self.claims(id);
        if let Some(status) = self.done.get(&id) {
            return Found::Done(status);
        }
        claims.sweep(now, self.in_flight_ttl);
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let claim = InFlight {
            token,
            claimed: now,
            settled: None,
        };
        match claims.in_flight.entry(key.to_string()) {
            Entry::Occupied(e) if now.saturating_sub(e.get().claimed) < self.in_flight_ttl => {
                let tx = e
                    .into_mut()
                    .settled
                    .get_or_insert_with(|| watch::channel(Settled::Pending).0);
                return Found::InFlight(tx.subscribe());
            }
            // A stale claim is replaced: its waiters see the channel close and answer Busy.
            Entry::Occupied(mut e) => {
                e.insert(claim);
            }
            Entry::Vacant(e) => {
                e.insert(claim);
            }
        }
        Found::Acquired(token)
    }
}

#[async_trait]
impl DedupStore for MemoryStore {
    async fn claim(&self, key: &str, wait: Duration) -> StoreClaim {
        match self.try_claim(key) {
            Found::Done(status) => StoreClaim::Duplicate(status),
            Found::InFlight(rx) => wait_for(rx, wait).await,
            Found::Acquired(token) => StoreClaim::Acquired(token),
        }
    }

    async fn commit(&self, key: &str, token: u64, status: u16) {
        let id = self.id(key);
        // The app acknowledged the event: remember that even if the claim is not (or no longer) ours.
        // Before the claim goes, so that no claim in between finds the key absent.
        self.done.insert(id, status);
        let notify = self.claims(id).take(key, token);
        if let Some(tx) = notify {
            tx.send_replace(Settled::Done(status));
        }
    }

    async fn release(&self, key: &str, token: u64) {
        let notify = self.claims(self.id(key)).take(key, token);
        if let Some(tx) = notify {
            tx.send_replace(Settled::Released);
        }
    }

    /// Runs moka's pending evictions first, so that the count is within `max_entries` (plus the claims).
    /// Called per metrics scrape, not per delivery.
    fn entries(&self) -> u64 {
        self.done.run_pending_tasks();
        let claims: usize = self
            .claims
            .iter()
            .map(|c| c.lock().unwrap_or_else(|e| e.into_inner()).in_flight.len())
            .sum();
        self.done.entry_count() + claims as u64
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
    use std::sync::Arc;

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

    fn store(max: u64) -> MemoryStore {
        MemoryStore::new(max, Duration::from_secs(60), Duration::from_secs(30))
    }

    impl MemoryStore {
        fn advance(&self, by: Duration) {
            *self.skew.lock().unwrap() += by;
        }
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
        assert!(d.entries() <= 1_000);
    }

    #[tokio::test]
    async fn expired_done_keys_are_forgotten() {
        let ttl = Duration::from_secs(2);
        let s = MemoryStore::new(10_000, ttl, Duration::from_secs(30));
        let before = Instant::now();
        for i in 0..1_000 {
            s.commit(&format!("old{i}"), 0, 200).await;
        }
        // Polls moka's real clock (it has no test clock without a feature), checking on each turn that
        // the id is remembered until its TTL has passed.
        let deadline = before + ttl + Duration::from_secs(10);
        while s.done_status("old0") == Some(200) {
            assert!(Instant::now() < deadline, "remembered long after its TTL");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(before.elapsed() >= ttl, "forgotten before its TTL");
        assert!(matches!(
            s.claim("old1", Duration::ZERO).await,
            StoreClaim::Acquired(_)
        ));
        // The expired ids are dropped by moka's maintenance: only the new ones (and the claim) remain.
        for i in 0..1_000 {
            s.commit(&format!("new{i}"), 0, 201).await;
        }
        assert_eq!(s.entries(), 1_001);
        assert_eq!(s.done_status("new999"), Some(201));
    }

    #[tokio::test]
    async fn stale_claim_no_longer_blocks_its_key() {
        let s = store(100);
        let StoreClaim::Acquired(first) = s.claim("k", Duration::ZERO).await else {
            panic!()
        };
        assert_eq!(s.claim("k", Duration::ZERO).await, StoreClaim::Busy);
        s.advance(Duration::from_secs(31));
        let StoreClaim::Acquired(second) = s.claim("k", Duration::ZERO).await else {
            panic!("a stale claim still blocks its key")
        };
        // The vanished owner's late release does not free the new claim.
        s.release("k", first).await;
        assert_eq!(s.claim("k", Duration::ZERO).await, StoreClaim::Busy);
        s.commit("k", second, 200).await;
        assert_eq!(
            s.claim("k", Duration::ZERO).await,
            StoreClaim::Duplicate(200)
        );
    }

    #[tokio::test]
    async fn remembered_ids_stay_within_max_entries_and_keep_the_newest() {
        let max = 1_000u64;
        let s = store(max);
        let n = 10 * max;
        for i in 0..n {
            s.commit(&format!("k{i}"), 0, 200).await;
            assert!(s.entries() <= max);
        }
        // Nothing but commits: the least recently used are the oldest, and exactly the newest are kept.
        for i in n - max..n {
            assert_eq!(s.done_status(&format!("k{i}")), Some(200), "k{i} forgotten");
        }
        let remembered = (0..n)
            .filter(|i| s.done_status(&format!("k{i}")).is_some())
            .count() as u64;
        assert_eq!(remembered, max);
    }

    #[tokio::test]
    async fn ids_stay_near_max_entries_without_a_metrics_scrape() {
        let max = 1_000u64;
        let s = store(max);
        let n = 50 * max;
        let mut most = 0;
        for i in 0..n {
            s.commit(&format!("k{i}"), 0, 200).await;
            if i % 97 == 0 {
                // Counts the ids really in moka's table, without running its pending maintenance.
                most = most.max(s.done.iter().count() as u64);
            }
        }
        // moka evicts once its write log holds 64 operations (or 0.3 s passed): one thread's overshoot
        // is at most that log.
        assert!(most <= max + 64, "{most} ids held for a capacity of {max}");
        assert!(s.entries() <= max);
    }

    #[tokio::test]
    async fn commit_without_a_matching_claim_records_the_key() {
        let s = store(100);
        // The Redis store commits locally with tokens the local store never issued.
        s.commit("a", 1 << 63, 201).await;
        assert_eq!(s.done_status("a"), Some(201));
        assert_eq!(
            s.claim("a", Duration::ZERO).await,
            StoreClaim::Duplicate(201)
        );
        // Someone else's claim stays, but the key is done for everyone.
        let StoreClaim::Acquired(t) = s.claim("b", Duration::ZERO).await else {
            panic!()
        };
        s.commit("b", t + 1, 200).await;
        assert_eq!(
            s.claim("b", Duration::ZERO).await,
            StoreClaim::Duplicate(200)
        );
        s.release("b", t).await;
        assert_eq!(s.done_status("b"), Some(200));
    }
}
