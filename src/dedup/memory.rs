//! The local store: a compact table of 16-byte hashes of done ids, bounded, with FIFO eviction.
//!
//! A done id costs a hash table slot (16-byte hash, 4-byte expiry, 2-byte status) and a 24-byte entry in a
//! queue in insertion order: 77 to 97 bytes of RSS per id measured at 1,000,000 ids, the table's spare
//! slots included. moka measured 350 to 550 (an `Arc` of the key string, entry metadata, LRU and
//! timer-wheel nodes, each allocated apart), against a target of 200.
//!
//! Ids are kept as a 128-bit keyed hash, never as the string. Two different ids with the same hash would
//! answer an event the app never saw as a duplicate, a 2xx the app never gave: with 64 bits the odds at a
//! million ids are about 1 in 3.7e7, with 128 bits about 1e-27. The key is random per process, so no sender
//! can aim at a collision.
//!
//! Claims in flight are few (one per concurrent request) and keep their key string and a channel on which
//! duplicates wait for the outcome.

use std::collections::hash_map::{Entry, RandomState};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::watch;

use super::{DedupStore, StoreClaim};

/// Ids per shard, at most. A shard's table is rehashed whole when it grows, holding its lock and the thread
/// meanwhile: at 1,000,000 ids in 16 shards that was a stall of milliseconds, seen in the p99. Small shards
/// keep each rehash short; more of them also keep threads from queueing on one lock.
const SHARD_IDS: u64 = 4096;
/// Shards, at most: a bound on the fixed cost of an idle store.
const MAX_SHARDS: u64 = 256;
/// A shard's in-flight map is swept of stale claims when it reaches this size (then twice its size).
const SWEEP_AT: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Settled {
    Pending,
    Done(u16),
    Released,
}

/// A 128-bit hash of an id. `[u64; 2]` rather than `u128` keeps the queue's entries at 24 bytes, not 32.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Id([u64; 2]);

impl Hash for Id {
    /// The hash is already keyed and uniform: the table uses its first half as is. The shard is picked
    /// from the second half, so that the ids of one shard do not share the table's index bits.
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

type IdMap<V> = HashMap<Id, V, BuildHasherDefault<IdHasher>>;

/// 8 bytes: expiry in whole seconds since the store started, rounded up, and the app's status.
#[derive(Clone, Copy)]
struct Done {
    expires: u32,
    status: u16,
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
struct Shard {
    done: IdMap<Done>,
    /// Done ids in insertion order with the expiry they were inserted with, hence also in expiry order
    /// (the TTL is fixed). Each id in `done` has exactly one entry here with its current expiry; entries
    /// whose expiry no longer matches (the id was committed again later) are skipped when they come out.
    queue: VecDeque<(Id, u32)>,
    in_flight: HashMap<String, InFlight>,
    sweep_at: usize,
}

impl Shard {
    fn done_status(&self, id: Id, now: u32) -> Option<u16> {
        self.done
            .get(&id)
            .filter(|d| d.expires > now)
            .map(|d| d.status)
    }

    /// Removes `id` if the queue entry that came out (`expires`) is still its current one.
    fn forget(&mut self, id: Id, expires: u32) {
        if self.done.get(&id).is_some_and(|d| d.expires == expires) {
            self.done.remove(&id);
        }
    }

    /// Records `id` as done. A new id is always admitted: a cache that refused one would let its duplicate
    /// through. When full, the oldest id goes, expired or not.
    fn remember(&mut self, id: Id, done: Done, now: u32, cap: usize) {
        while let Some(&(old, expires)) = self.queue.front()
            && expires <= now
        {
            self.queue.pop_front();
            self.forget(old, expires);
        }
        if let Some(d) = self.done.get_mut(&id) {
            d.status = done.status;
            if d.expires != done.expires {
                d.expires = done.expires;
                self.queue.push_back((id, done.expires));
            }
        } else {
            while self.done.len() >= cap {
                let Some((old, expires)) = self.queue.pop_front() else {
                    break;
                };
                self.forget(old, expires);
            }
            self.done.insert(id, done);
            self.queue.push_back((id, done.expires));
        }
        // Skipped entries are rare (an id committed twice); this keeps them from accumulating anyway.
        if self.queue.len() > cap.saturating_mul(2) {
            let done = &self.done;
            self.queue
                .retain(|(id, expires)| done.get(id).is_some_and(|d| d.expires == *expires));
        }
    }

    /// Drops claims whose owner vanished without settling, amortised over insertions.
    fn sweep(&mut self, now: Duration, ttl: Duration) {
        if self.in_flight.len() >= self.sweep_at.max(SWEEP_AT) {
            self.in_flight
                .retain(|_, f| now.saturating_sub(f.claimed) < ttl);
            self.sweep_at = self.in_flight.len() * 2;
        }
    }
}

enum Found {
    Done(u16),
    InFlight(watch::Receiver<Settled>),
    Acquired(u64),
}

pub struct MemoryStore {
    hash: RandomState,
    shards: Box<[Mutex<Shard>]>,
    per_shard: usize,
    ttl: Duration,
    in_flight_ttl: Duration,
    start: Instant,
    next_token: AtomicU64,
    /// Added to the clock, so that tests can let time pass without sleeping.
    #[cfg(test)]
    skew: Mutex<Duration>,
}

impl MemoryStore {
    /// Remembers at most `max_entries` done ids (give or take one per shard), each for
    /// `ttl`. `in_flight_ttl` bounds how long a claim whose owner vanished can block its key; it should
    /// outlive the app's read timeout.
    pub fn new(max_entries: u64, ttl: Duration, in_flight_ttl: Duration) -> Self {
        let shards = max_entries.div_ceil(SHARD_IDS).clamp(1, MAX_SHARDS);
        let per_shard = usize::try_from(max_entries.div_ceil(shards))
            .unwrap_or(usize::MAX)
            .max(1);
        Self {
            hash: RandomState::new(),
            // Empty: the tables grow with use, so an idle process stays small.
            shards: (0..shards).map(|_| Mutex::default()).collect(),
            per_shard,
            ttl,
            in_flight_ttl,
            start: Instant::now(),
            next_token: AtomicU64::new(1),
            #[cfg(test)]
            skew: Mutex::new(Duration::ZERO),
        }
    }

    /// The remembered status of a done key, without claiming anything.
    pub fn done_status(&self, key: &str) -> Option<u16> {
        let id = self.id(key);
        let now = secs_down(self.now());
        self.shard(id).done_status(id, now)
    }

    /// Two SipHash values of the key under one random key, with a different first byte so that they are
    /// independent. (Two `RandomState`s made on one thread have related keys: std increments the first.)
    fn id(&self, key: &str) -> Id {
        Id([
            self.hash.hash_one((0u8, key)),
            self.hash.hash_one((1u8, key)),
        ])
    }

    fn shard(&self, id: Id) -> MutexGuard<'_, Shard> {
        self.shards[(id.0[1] % self.shards.len() as u64) as usize]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Time since the store started.
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
        let mut shard = self.shard(id);
        if let Some(status) = shard.done_status(id, secs_down(now)) {
            return Found::Done(status);
        }
        shard.sweep(now, self.in_flight_ttl);
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let claim = InFlight {
            token,
            claimed: now,
            settled: None,
        };
        match shard.in_flight.entry(key.to_string()) {
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

    /// Removes the claim on `key` if it is `token`'s, returning its channel to notify outside the lock.
    fn take_claim(shard: &mut Shard, key: &str, token: u64) -> Option<watch::Sender<Settled>> {
        let (key, claim) = shard.in_flight.remove_entry(key)?;
        if claim.token != token {
            shard.in_flight.insert(key, claim);
            return None;
        }
        claim.settled
    }
}

/// Whole seconds elapsed: an expiry `e` (rounded up) is past once this reaches `e`.
fn secs_down(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

fn secs_up(d: Duration) -> u32 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    u32::try_from(s).unwrap_or(u32::MAX)
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
        let now = self.now();
        let done = Done {
            expires: secs_up(now.saturating_add(self.ttl)),
            status,
        };
        let notify = {
            let mut shard = self.shard(id);
            // The app acknowledged the event: remember that even if the claim is not (or no longer) ours.
            shard.remember(id, done, secs_down(now), self.per_shard);
            Self::take_claim(&mut shard, key, token)
        };
        if let Some(tx) = notify {
            tx.send_replace(Settled::Done(status));
        }
    }

    async fn release(&self, key: &str, token: u64) {
        let notify = Self::take_claim(&mut self.shard(self.id(key)), key, token);
        if let Some(tx) = notify {
            tx.send_replace(Settled::Released);
        }
    }

    fn entries(&self) -> u64 {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(|e| e.into_inner());
                (s.done.len() + s.in_flight.len()) as u64
            })
            .sum()
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
    }

    #[tokio::test]
    async fn expired_done_keys_are_forgotten() {
        let s = store(10_000);
        for i in 0..1_000 {
            s.commit(&format!("old{i}"), 0, 200).await;
        }
        s.advance(Duration::from_secs(59));
        assert_eq!(s.done_status("old0"), Some(200), "forgotten before its TTL");
        s.advance(Duration::from_secs(2));
        assert_eq!(s.done_status("old0"), None);
        assert!(matches!(
            s.claim("old1", Duration::ZERO).await,
            StoreClaim::Acquired(_)
        ));
        // Inserting into a shard drops its expired ids: only the new ones (and the claim) remain.
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
        // One shard at this size: exactly the newest `max` are kept.
        for i in n - max..n {
            assert_eq!(s.done_status(&format!("k{i}")), Some(200), "k{i} forgotten");
        }
        let remembered = (0..n)
            .filter(|i| s.done_status(&format!("k{i}")).is_some())
            .count() as u64;
        assert_eq!(remembered, max);
    }

    #[tokio::test]
    async fn a_sharded_store_stays_within_max_entries_and_keeps_the_newest() {
        let max = 5 * SHARD_IDS;
        let s = store(max);
        assert_eq!(s.shards.len(), 5);
        let n = 4 * max;
        for i in 0..n {
            s.commit(&format!("k{i}"), 0, 200).await;
        }
        assert!(s.entries() <= max + s.shards.len() as u64);
        assert!(
            s.entries() > max * 9 / 10,
            "only {} remembered",
            s.entries()
        );
        // Each shard keeps its newest: the newest fifth overall is well within every shard's share.
        for i in n - max / 5..n {
            assert_eq!(s.done_status(&format!("k{i}")), Some(200), "k{i} forgotten");
        }
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
