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
//! Claims in flight are few (one per concurrent request) and keep a channel on which duplicates wait for
//! the outcome. A claim looks the id up in moka under its shard's lock, and a commit records the id in moka
//! before it removes the claim: a claim sees one or the other, never neither.
//!
//! A done id keeps its status and the 128-bit body digest (`Done`, 20 bytes inline in moka's entry). The
//! replay guard's index, body -> the key that holds it, costs nothing while the guard is off: it is only
//! written for claims that ask for the guard, as a second moka cache beside the first (done bodies) and a
//! second set of sharded maps (bodies in flight). A guarded claim takes its key's shard lock, then its
//! body's (always in that order), so that two keys racing with one body cannot both get through.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use std::collections::hash_map::RandomState;
use tokio::sync::watch;

use super::{Body, BodyDigest, DedupStore, Done, Held, Key, StoreClaim};

/// Shards of the claims in flight: enough that request threads rarely queue on one lock.
const CLAIM_SHARDS: usize = 32;
/// A shard's in-flight map is swept of stale claims when it reaches this size (then twice its size).
const SWEEP_AT: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Settled {
    Pending,
    Done(Done),
    Released,
}

/// A 128-bit keyed hash of a key or of a body digest. Public, with [`IdHasher`] and [`cache`], only so
/// that `bench/dedup-mem` can measure a bare moka cache built exactly as the store builds its own.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Id(pub [u64; 2]);

impl Hash for Id {
    /// The hash is already keyed and uniform: moka and the maps use its first half as is. The shard is
    /// picked from the second half.
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.0[0]);
    }
}

#[derive(Default)]
pub struct IdHasher(u64);

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

type IdMap<T> = HashMap<Id, T, BuildHasherDefault<IdHasher>>;

/// A moka cache keyed by [`Id`], as the store keeps done ids and done bodies.
pub type IdCache<V> = Cache<Id, V, BuildHasherDefault<IdHasher>>;

/// A key's claim in flight.
struct InFlight {
    token: u64,
    /// Since the store started; a claim older than the in-flight TTL counts as absent.
    claimed: Duration,
    /// Made when a duplicate first waits: most claims have no waiter, and a channel costs an allocation
    /// and a round of wake-ups when it is sent to and dropped.
    settled: Option<watch::Sender<Settled>>,
}

/// A guarded body in flight, and the key whose claim holds it.
struct BodyInFlight {
    owner: Id,
    token: u64,
    claimed: Duration,
}

trait Claimed {
    fn claimed(&self) -> Duration;
    fn token(&self) -> u64;
}

impl Claimed for InFlight {
    fn claimed(&self) -> Duration {
        self.claimed
    }
    fn token(&self) -> u64 {
        self.token
    }
}

impl Claimed for BodyInFlight {
    fn claimed(&self) -> Duration {
        self.claimed
    }
    fn token(&self) -> u64 {
        self.token
    }
}

/// One shard of claims in flight.
struct Table<T> {
    in_flight: IdMap<T>,
    sweep_at: usize,
}

impl<T> Default for Table<T> {
    fn default() -> Self {
        Self {
            in_flight: IdMap::default(),
            sweep_at: 0,
        }
    }
}

impl<T: Claimed> Table<T> {
    /// Drops claims whose owner vanished without settling, amortised over insertions.
    fn sweep(&mut self, now: Duration, ttl: Duration) {
        if self.in_flight.len() >= self.sweep_at.max(SWEEP_AT) {
            self.in_flight
                .retain(|_, f| now.saturating_sub(f.claimed()) < ttl);
            self.sweep_at = self.in_flight.len() * 2;
        }
    }

    /// The live claim on `id`, if any.
    fn live(&mut self, id: Id, now: Duration, ttl: Duration) -> Option<&mut T> {
        self.in_flight
            .get_mut(&id)
            .filter(|f| now.saturating_sub(f.claimed()) < ttl)
    }

    /// Removes the claim on `id` if it is `token`'s.
    fn take(&mut self, id: Id, token: u64) -> Option<T> {
        match self.in_flight.get(&id) {
            Some(f) if f.token() == token => self.in_flight.remove(&id),
            _ => None,
        }
    }
}

enum Found {
    Done(Done),
    InFlight(watch::Receiver<Settled>),
    Acquired(u64),
    ReplayedBody,
}

pub struct MemoryStore {
    hash: RandomState,
    done: IdCache<Done>,
    /// The replay guard's done bodies: body -> the key that was acknowledged with it.
    bodies: IdCache<Id>,
    claims: Box<[Mutex<Table<InFlight>>]>,
    body_claims: Box<[Mutex<Table<BodyInFlight>>]>,
    in_flight_ttl: Duration,
    start: Instant,
    next_token: AtomicU64,
    /// Added to the claims' clock, so that tests can let a claim go stale without sleeping.
    #[cfg(test)]
    skew: Mutex<Duration>,
}

/// The store's moka cache: LRU, one TTL, at most `max_entries` ids.
pub fn cache<V: Clone + Send + Sync + 'static>(max_entries: u64, ttl: Duration) -> IdCache<V> {
    Cache::builder()
        .max_capacity(max_entries)
        .eviction_policy(EvictionPolicy::lru())
        .time_to_live(ttl)
        .build_with_hasher(BuildHasherDefault::default())
}

/// `id`'s value. A miss, the usual case (every event is new once), is looked up without recording a
/// read: moka counts every recorded read in its frequency sketch, a table as large as the cache that the
/// LRU policy never consults, at a cache miss or more per lookup (bench/README.md).
fn remembered<V: Clone + Send + Sync + 'static>(cache: &IdCache<V>, id: Id) -> Option<V> {
    cache.contains_key(&id).then(|| cache.get(&id)).flatten()
}

fn shards<T: Default>() -> Box<[Mutex<T>]> {
    (0..CLAIM_SHARDS).map(|_| Mutex::default()).collect()
}

fn lock<T>(shards: &[Mutex<T>], id: Id) -> MutexGuard<'_, T> {
    shards[(id.0[1] % CLAIM_SHARDS as u64) as usize]
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

impl MemoryStore {
    /// Remembers at most `max_entries` done ids, each for `ttl`. `in_flight_ttl` bounds how long a claim
    /// whose owner vanished can block its key; it should outlive the app's read timeout.
    pub fn new(max_entries: u64, ttl: Duration, in_flight_ttl: Duration) -> Self {
        Self {
            hash: RandomState::new(),
            done: cache(max_entries, ttl),
            bodies: cache(max_entries, ttl),
            claims: shards(),
            body_claims: shards(),
            in_flight_ttl,
            start: Instant::now(),
            next_token: AtomicU64::new(1),
            #[cfg(test)]
            skew: Mutex::new(Duration::ZERO),
        }
    }

    /// What is remembered of a done key, claiming nothing.
    pub fn done(&self, key: &Key) -> Option<Done> {
        remembered(&self.done, self.id(key))
    }

    /// Two SipHash values of the key under one random key, with a different first byte so that they are
    /// independent. (Two `RandomState`s made on one thread have related keys: std increments the first.)
    fn id(&self, key: &Key) -> Id {
        let parts = (key.tenant(), key.webhook_id());
        Id([
            self.hash.hash_one((0u8, parts)),
            self.hash.hash_one((1u8, parts)),
        ])
    }

    /// A body's id: its digest hashed again under the process's key, so that the tables' layout does not
    /// follow from the bodies.
    fn body_id(&self, digest: BodyDigest) -> Id {
        Id([
            self.hash.hash_one((2u8, digest)),
            self.hash.hash_one((3u8, digest)),
        ])
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

    fn try_claim(&self, key: &Key, body: Body) -> Found {
        let id = self.id(key);
        let now = self.now();
        let mut claims = lock(&self.claims, id);
        if let Some(done) = remembered(&self.done, id) {
            return Found::Done(done);
        }
        claims.sweep(now, self.in_flight_ttl);
        if let Some(f) = claims.live(id, now, self.in_flight_ttl) {
            let tx = f
                .settled
                .get_or_insert_with(|| watch::channel(Settled::Pending).0);
            return Found::InFlight(tx.subscribe());
        }
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        if body.guard && !self.claim_body(id, token, body.digest, now) {
            return Found::ReplayedBody;
        }
        // A stale claim is replaced: its waiters see the channel close and answer Busy.
        claims.in_flight.insert(
            id,
            InFlight {
                token,
                claimed: now,
                settled: None,
            },
        );
        Found::Acquired(token)
    }

    /// Claims `digest` for key `owner` (whose shard lock the caller holds); `false` when the body is done
    /// or in flight under another key.
    fn claim_body(&self, owner: Id, token: u64, digest: BodyDigest, now: Duration) -> bool {
        let bid = self.body_id(digest);
        let mut table = lock(&self.body_claims, bid);
        if remembered(&self.bodies, bid).is_some_and(|o| o != owner) {
            return false;
        }
        table.sweep(now, self.in_flight_ttl);
        if table
            .live(bid, now, self.in_flight_ttl)
            .is_some_and(|b| b.owner != owner)
        {
            return false;
        }
        table.in_flight.insert(
            bid,
            BodyInFlight {
                owner,
                token,
                claimed: now,
            },
        );
        true
    }

    /// Ends `held` as done with `done`, whoever's claim it is now: the app acknowledged the event (or,
    /// for the Redis store, another replica's copy did).
    pub fn settle_done(&self, held: &Held, done: Done) {
        let id = self.id(&held.key);
        // Before the claims go, so that no claim in between finds the key (or the body) absent.
        self.done.insert(id, done);
        if held.body.guard {
            let bid = self.body_id(held.body.digest);
            self.bodies.insert(bid, id);
            lock(&self.body_claims, bid).take(bid, held.token);
        }
        let claim = lock(&self.claims, id).take(id, held.token);
        if let Some(tx) = claim.and_then(|c| c.settled) {
            tx.send_replace(Settled::Done(done));
        }
    }

    /// Gives `held` up, if it is still the holder's.
    pub fn settle_released(&self, held: &Held) {
        let id = self.id(&held.key);
        if held.body.guard {
            let bid = self.body_id(held.body.digest);
            lock(&self.body_claims, bid).take(bid, held.token);
        }
        let claim = lock(&self.claims, id).take(id, held.token);
        if let Some(tx) = claim.and_then(|c| c.settled) {
            tx.send_replace(Settled::Released);
        }
    }
}

#[async_trait]
impl DedupStore for MemoryStore {
    /// A copy that waited for one that then failed claims the key itself: it is the retry.
    async fn claim(&self, key: &Key, body: Body, wait: Duration) -> StoreClaim {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match self.try_claim(key, body) {
                Found::Done(done) => return StoreClaim::Duplicate(done),
                Found::InFlight(rx) => match wait_for(rx, deadline).await {
                    Some(claim) => return claim,
                    None => continue,
                },
                Found::Acquired(token) => return StoreClaim::Acquired(token),
                Found::ReplayedBody => return StoreClaim::ReplayedBody,
            }
        }
    }

    async fn commit(&self, held: &Held, status: u16) {
        // The app acknowledged the event: remembered even if the claim is not (or no longer) ours.
        let done = Done {
            status,
            digest: Some(held.body.digest),
        };
        self.settle_done(held, done);
    }

    async fn release(&self, held: &Held) {
        self.settle_released(held);
    }

    async fn lookup(&self, key: &Key) -> Option<u16> {
        self.done(key).map(|d| d.status)
    }

    /// Runs moka's pending evictions first, so that the count is within `max_entries` (plus the claims).
    /// Called per metrics scrape, not per delivery.
    fn entries(&self) -> u64 {
        self.done.run_pending_tasks();
        self.bodies.run_pending_tasks();
        let claims: usize = self
            .claims
            .iter()
            .map(|c| c.lock().unwrap_or_else(|e| e.into_inner()).in_flight.len())
            .sum();
        self.done.entry_count() + claims as u64
    }
}

/// Waits until `deadline` for the claim in flight to settle: its `Done`, `None` when it was released (the
/// key is free again), `Busy` when it did not settle in time or its owner vanished.
async fn wait_for(
    mut rx: watch::Receiver<Settled>,
    deadline: tokio::time::Instant,
) -> Option<StoreClaim> {
    let outcome = tokio::time::timeout_at(deadline, rx.wait_for(|s| *s != Settled::Pending)).await;
    match outcome {
        Ok(Ok(s)) => match *s {
            Settled::Done(done) => Some(StoreClaim::Duplicate(done)),
            Settled::Released => None,
            Settled::Pending => Some(StoreClaim::Busy),
        },
        _ => Some(StoreClaim::Busy),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::dedup::{AppAnswer, Claim, Dedup};

    const OK: AppAnswer = AppAnswer {
        status: 200,
        whole: true,
    };

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

    fn k(id: &str) -> Key {
        Key::new(Some("t"), id)
    }

    fn body(text: &str, guard: bool) -> Body {
        Body {
            digest: BodyDigest::of(text.as_bytes()),
            guard,
        }
    }

    const PLAIN: fn() -> Body = || body("{}", false);

    impl MemoryStore {
        fn advance(&self, by: Duration) {
            *self.skew.lock().unwrap() += by;
        }

        async fn take(&self, key: &Key, body: Body) -> Held {
            match self.claim(key, body, Duration::ZERO).await {
                StoreClaim::Acquired(token) => Held {
                    key: key.clone(),
                    token,
                    body,
                },
                other => panic!("{key:?}: {other:?}"),
            }
        }

        /// Whether a copy waits on `key`'s claim (it made the claim's channel).
        fn has_waiter(&self, key: &Key) -> bool {
            let id = self.id(key);
            lock(&self.claims, id)
                .in_flight
                .get(&id)
                .is_some_and(|f| f.settled.is_some())
        }

        fn status(&self, key: &Key) -> Option<u16> {
            self.done(key).map(|d| d.status)
        }

        /// A commit with a token the store never issued: the Redis store's local commits, and a test's.
        fn record(&self, key: &Key, status: u16) {
            let held = Held {
                key: key.clone(),
                token: 1 << 63,
                body: PLAIN(),
            };
            self.settle_done(
                &held,
                Done {
                    status,
                    digest: Some(held.body.digest),
                },
            );
        }
    }

    fn digest(text: &str) -> BodyDigest {
        BodyDigest::of(text.as_bytes())
    }

    async fn acquire(d: &Dedup, key: &Key, text: &str) -> crate::dedup::ClaimGuard {
        match d.claim(key.clone(), digest(text), false).await {
            Claim::Acquired(g) => g,
            _ => panic!("{key:?} not acquired"),
        }
    }

    #[tokio::test]
    async fn committed_key_is_a_duplicate_with_its_status() {
        let d = dedup(100);
        let g = acquire(&d, &k("k"), "{}").await;
        g.settle(AppAnswer {
            status: 202,
            whole: true,
        })
        .await;
        assert!(matches!(
            d.claim(k("k"), digest("{}"), false).await,
            Claim::Duplicate {
                status: 202,
                body_matches: true
            }
        ));
        assert_eq!(d.lookup(&k("k")).await, Some(202));
        assert_eq!(d.lookup(&k("other")).await, None);
    }

    #[tokio::test]
    async fn a_duplicate_with_another_body_is_still_a_duplicate_and_is_counted() {
        let d = dedup(100);
        acquire(&d, &k("k"), "{\"a\":1}").await.settle(OK).await;
        let before = crate::metrics::METRICS.dedup_body_mismatches();
        assert!(matches!(
            d.claim(k("k"), digest("{\"a\":2}"), true).await,
            Claim::Duplicate {
                status: 200,
                body_matches: false
            }
        ));
        assert!(crate::metrics::METRICS.dedup_body_mismatches() > before);
    }

    #[tokio::test]
    async fn a_cut_or_failed_answer_releases_the_key() {
        for answer in [
            AppAnswer {
                status: 500,
                whole: true,
            },
            AppAnswer {
                status: 200,
                whole: false,
            },
        ] {
            let d = dedup(100);
            acquire(&d, &k("k"), "{}").await.settle(answer).await;
            assert!(
                matches!(
                    d.claim(k("k"), digest("{}"), false).await,
                    Claim::Acquired(_)
                ),
                "{answer:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_waiter_shares_the_first_copys_success_and_becomes_the_retry_on_its_failure() {
        for (status, expect_dup) in [(200u16, true), (503, false)] {
            let s = Arc::new(store(100));
            let first = s.take(&k("k"), PLAIN()).await;
            let s2 = s.clone();
            let waiter =
                tokio::spawn(
                    async move { s2.claim(&k("k"), PLAIN(), Duration::from_secs(5)).await },
                );
            while !s.has_waiter(&k("k")) {
                tokio::task::yield_now().await;
            }
            if expect_dup {
                s.commit(&first, status).await;
            } else {
                s.release(&first).await;
            }
            match waiter.await.unwrap() {
                StoreClaim::Duplicate(d) => assert!(expect_dup && d.status == status),
                StoreClaim::Acquired(_) => assert!(!expect_dup, "a second copy of a done event"),
                other => panic!("{status}: the waiter neither shared nor retried: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn dropped_guard_releases_its_claim() {
        let d = dedup(100);
        drop(acquire(&d, &k("k"), "{}").await);
        // The release is spawned; claiming waits for it rather than sleeping.
        let mut tries = 0;
        while !matches!(
            d.claim(k("k"), digest("{}"), false).await,
            Claim::Acquired(_)
        ) {
            tries += 1;
            assert!(tries < 1000);
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn the_replay_guard_refuses_a_body_done_or_in_flight_under_another_key() {
        let s = store(100);
        let a = s.take(&k("a"), body("B", true)).await;
        assert_eq!(
            s.claim(&k("b"), body("B", true), Duration::ZERO).await,
            StoreClaim::ReplayedBody,
            "in flight under another key"
        );
        assert!(matches!(
            s.claim(&k("b"), body("B", false), Duration::ZERO).await,
            StoreClaim::Acquired(_)
        ));
        s.commit(&a, 200).await;
        assert_eq!(
            s.claim(&k("c"), body("B", true), Duration::ZERO).await,
            StoreClaim::ReplayedBody,
            "done under another key"
        );
        assert!(matches!(
            s.claim(&k("a"), body("B", true), Duration::ZERO).await,
            StoreClaim::Duplicate(_)
        ));
        s.take(&k("d"), body("C", true)).await;
    }

    #[tokio::test]
    async fn a_released_guarded_body_is_free_again_and_a_stale_one_no_longer_blocks() {
        let s = store(100);
        let a = s.take(&k("a"), body("B", true)).await;
        s.release(&a).await;
        let b = s.take(&k("b"), body("B", true)).await;
        s.advance(Duration::from_secs(31));
        let c = s.take(&k("c"), body("B", true)).await;
        // The vanished owner's late release frees neither the new claim nor its body.
        s.release(&b).await;
        assert_eq!(
            s.claim(&k("e"), body("B", true), Duration::ZERO).await,
            StoreClaim::ReplayedBody
        );
        s.commit(&c, 200).await;
        assert_eq!(s.status(&k("c")), Some(200));
    }

    #[tokio::test]
    async fn full_cache_always_remembers_the_newest_key() {
        let d = dedup(1_000);
        for i in 0..5_000 {
            let key = k(&format!("k{i}"));
            acquire(&d, &key, "{}").await.settle(OK).await;
            assert!(
                matches!(
                    d.claim(key, digest("{}"), false).await,
                    Claim::Duplicate { status: 200, .. }
                ),
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
            s.record(&k(&format!("old{i}")), 200);
        }
        // Polls moka's real clock (it has no test clock without a feature), checking on each turn that
        // the id is remembered until its TTL has passed.
        let deadline = before + ttl + Duration::from_secs(10);
        while s.status(&k("old0")) == Some(200) {
            assert!(Instant::now() < deadline, "remembered long after its TTL");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(before.elapsed() >= ttl, "forgotten before its TTL");
        s.take(&k("old1"), PLAIN()).await;
        // The expired ids are dropped by moka's maintenance: only the new ones (and the claim) remain.
        for i in 0..1_000 {
            s.record(&k(&format!("new{i}")), 201);
        }
        assert_eq!(s.entries(), 1_001);
        assert_eq!(s.status(&k("new999")), Some(201));
    }

    #[tokio::test]
    async fn stale_claim_no_longer_blocks_its_key() {
        let s = store(100);
        let first = s.take(&k("k"), PLAIN()).await;
        assert_eq!(
            s.claim(&k("k"), PLAIN(), Duration::ZERO).await,
            StoreClaim::Busy
        );
        s.advance(Duration::from_secs(31));
        let second = s.take(&k("k"), PLAIN()).await;
        // The vanished owner's late release does not free the new claim.
        s.release(&first).await;
        assert_eq!(
            s.claim(&k("k"), PLAIN(), Duration::ZERO).await,
            StoreClaim::Busy
        );
        s.commit(&second, 200).await;
        assert!(matches!(
            s.claim(&k("k"), PLAIN(), Duration::ZERO).await,
            StoreClaim::Duplicate(Done { status: 200, .. })
        ));
    }

    #[tokio::test]
    async fn remembered_ids_stay_within_max_entries_and_keep_the_newest() {
        let max = 1_000u64;
        let s = store(max);
        let n = 10 * max;
        for i in 0..n {
            s.record(&k(&format!("k{i}")), 200);
            assert!(s.entries() <= max);
        }
        // Nothing but commits: the least recently used are the oldest, and exactly the newest are kept.
        for i in n - max..n {
            assert_eq!(s.status(&k(&format!("k{i}"))), Some(200), "k{i} forgotten");
        }
        let remembered = (0..n)
            .filter(|i| s.status(&k(&format!("k{i}"))).is_some())
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
            s.record(&k(&format!("k{i}")), 200);
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
        s.record(&k("a"), 201);
        assert!(matches!(
            s.claim(&k("a"), PLAIN(), Duration::ZERO).await,
            StoreClaim::Duplicate(Done { status: 201, .. })
        ));
        // Someone else's claim stays, but the key is done for everyone.
        let b = s.take(&k("b"), PLAIN()).await;
        let other = Held {
            token: b.token + 1,
            ..b.clone()
        };
        s.commit(&other, 200).await;
        assert!(matches!(
            s.claim(&k("b"), PLAIN(), Duration::ZERO).await,
            StoreClaim::Duplicate(Done { status: 200, .. })
        ));
        s.release(&b).await;
        assert_eq!(s.status(&k("b")), Some(200));
    }
}
