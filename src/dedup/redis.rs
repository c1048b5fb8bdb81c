//! The shared store: Redis, so that every replica of a Deployment sees the same claims.
//!
//! An event's key, `<prefix><tenant>\n<webhook id>`, holds `f:<replica>:<token>` while in flight (expiring
//! after the in-flight TTL so that a crashed replica cannot block an event for long) and
//! `d:<status>:<body digest, hex>` once the app acknowledged it (earlier versions wrote `d:<status>`: read
//! as done, with no digest to compare). Release deletes the key only if it still holds the caller's own
//! claim (compare-and-delete in Lua). A value this version does not know is taken as in flight, never as
//! done, so that replicas of two versions keep the contract during a rolling update.
//!
//! The replay guard adds `<prefix>b:<body digest, hex>`, holding the name of the event key whose claim or
//! acknowledgement holds that body, with the same expiry as that key. It is read and written by the same
//! scripts as the event key, so a claim checks and takes both in one atomic step.
//!
//! A claim is taken on this replica's local store first, then in Redis. The local claim is what keeps two
//! copies from running at once on one replica whatever Redis does: a copy that arrives while Redis stalls
//! waits for the local claim instead of falling back past it. The Redis claim is one script that sets the
//! key or returns what it holds, in one round trip (a Lua script rather than `SET NX GET`, which needs
//! Redis 7): an existing key is never taken for an absent one because a second read failed.
//!
//! By default (`on_store_error = "local"`) Redis is an optimisation of the contract, never a condition for
//! deliveries: when it is slow or down, each operation falls back to the local store after a short
//! timeout, and Redis is left alone for a moment before the next try. With `"refuse"` a claim Redis cannot
//! decide is `Unavailable` (the pipeline answers 503 + Retry-After) and the local claim is released: no
//! copy goes past a shared store that could not see it.
//!
//! How Redis is reached (TLS, credentials, Sentinel) is `connect`'s. The connection is one multiplexed
//! connection, dropped on any failure; the next try connects again (re-reading the password file and CA
//! bundle, asking the sentinels again). With Sentinel a task also asks the sentinels which server is the
//! master every `SENTINEL_CHECK`, and drops a connection to another one. A commit that could not reach Redis is queued (bounded, oldest dropped) and
//! replayed once Redis answers again, so another replica does not forward the duplicate for the rest of the
//! TTL. The local store also remembers every done key, so a replica answers its own duplicates without a
//! round trip.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::ConnectionAddr;
use redis::aio::MultiplexedConnection;

use super::connect::Connector;
use super::memory::MemoryStore;
use super::{Body, BodyDigest, DedupStore, Done, Held, Key, StoreClaim};
use crate::config::{OnStoreError, RedisConfig};
use crate::metrics::{self, METRICS};

/// After a failure, Redis is not asked again for this long: deliveries do not each pay the timeout.
const BACKOFF: Duration = Duration::from_secs(1);
/// How often a duplicate polls the state of a claim held by another replica.
const POLL: Duration = Duration::from_millis(20);
/// How often the sentinels are asked which server is the master (one command on a kept connection), to
/// follow a failover even when the old master still answers (it does until Sentinel demotes it, seconds
/// later, and what it takes meanwhile is lost when it does).
const SENTINEL_CHECK: Duration = Duration::from_millis(250);
/// Commits waiting for Redis to come back, at most: about 100 bytes each.
const MAX_PENDING: usize = 10_000;

/// Claims the event key (`KEYS[1]`) with `ARGV[1]` for `ARGV[2]` ms and returns nil, or returns what the
/// key holds: `SET NX GET` for any Redis version. With a body key (`KEYS[2]`, the replay guard), returns
/// `b:` when the body is held under another event key, and otherwise takes it too.
const CLAIM: &str = r"
local v = redis.call('GET', KEYS[1])
if v then return v end
if #KEYS > 1 then
  local owner = redis.call('GET', KEYS[2])
  if owner and owner ~= KEYS[1] then return 'b:' end
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if #KEYS > 1 then redis.call('SET', KEYS[2], KEYS[1], 'PX', ARGV[2]) end
return false";
/// Marks the event key done (`ARGV[1]`) for `ARGV[2]` ms, and its body key with it.
const COMMIT: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if #KEYS > 1 then redis.call('SET', KEYS[2], KEYS[1], 'PX', ARGV[2]) end
return 1";
/// Deletes the event key if it holds the caller's claim (`ARGV[1]`), and then its body key if the body is
/// still that event's.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
if #KEYS > 1 and redis.call('GET', KEYS[2]) == KEYS[1] then redis.call('DEL', KEYS[2]) end
return 1";

pub struct RedisStore {
    remote: Arc<Remote>,
    local: MemoryStore,
    /// Names this replica's claims in Redis: local tokens are only unique within one process.
    replica: u64,
    in_flight_ttl: Duration,
    /// `Refuse`: a claim Redis cannot decide is answered `Unavailable` instead of forwarded on the local
    /// claim alone.
    on_error: OnStoreError,
}

/// What the process shares with the task that replays commits.
struct Remote {
    connector: Connector,
    /// The connection in use; dropped on any failure, so that the next try connects again (for
    /// Sentinel: asks the sentinels again, which is how a failover is followed).
    conn: Mutex<Option<(MultiplexedConnection, ConnectionAddr)>>,
    /// Whether the task that follows the sentinels runs.
    watching: std::sync::atomic::AtomicBool,
    /// Whether a task is connecting: one attempt at a time, in a task of its own (see `conn`).
    connecting: std::sync::atomic::AtomicBool,
    /// Woken when a connection attempt ends.
    attempted: tokio::sync::Notify,
    prefix: String,
    timeout: Duration,
    ttl: Duration,
    claim: redis::Script,
    commit: redis::Script,
    release: redis::Script,
    health: Mutex<Health>,
    pending: Mutex<Pending>,
    /// What deliveries do meanwhile, for the log line.
    on_error: OnStoreError,
}

#[derive(Default)]
struct Health {
    down_since: Option<Instant>,
    retry_at: Option<Instant>,
}

/// Commits that failed to reach Redis, oldest first.
#[derive(Default)]
struct Pending {
    queue: VecDeque<Commit>,
    /// Whether a task is replaying the queue.
    replaying: bool,
    next_seq: u64,
}

#[derive(Clone)]
struct Commit {
    seq: u64,
    keys: Keys,
    value: String,
    at: Instant,
}

/// An event's Redis key, and its body's when the replay guard applies.
#[derive(Clone, Debug)]
struct Keys {
    event: String,
    body: Option<String>,
}

/// How another replica's claim ended while a copy waited for it.
enum Waited {
    Done(Done),
    /// Released or expired: the waiting copy may claim the key itself, as the retry.
    Freed,
    /// Still in flight at the deadline.
    Busy,
}

/// A key's value in Redis.
#[derive(Debug, PartialEq, Eq)]
enum Stored {
    Done(Done),
    InFlight,
}

fn parse(value: &str) -> Stored {
    let Some(rest) = value.strip_prefix("d:") else {
        // An in-flight claim, or a value this version does not know: never taken for done.
        return Stored::InFlight;
    };
    let (status, digest) = match rest.split_once(':') {
        Some((status, hex)) => (status, BodyDigest::from_hex(hex)),
        None => (rest, None),
    };
    match status.parse() {
        Ok(status) => Stored::Done(Done { status, digest }),
        Err(_) => Stored::InFlight,
    }
}

fn done_value(status: u16, digest: BodyDigest) -> String {
    format!("d:{status}:{}", digest.hex())
}

impl RedisStore {
    /// `config` was validated with the configuration; no connection is made until the first delivery.
    pub fn new(
        config: &RedisConfig,
        ttl: Duration,
        in_flight_ttl: Duration,
        local: MemoryStore,
    ) -> Self {
        let remote = Remote {
            connector: Connector::new(config),
            conn: Mutex::new(None),
            watching: Default::default(),
            connecting: Default::default(),
            attempted: tokio::sync::Notify::new(),
            prefix: config.prefix.clone(),
            timeout: config.timeout,
            ttl,
            claim: redis::Script::new(CLAIM),
            commit: redis::Script::new(COMMIT),
            release: redis::Script::new(RELEASE),
            health: Mutex::new(Health::default()),
            pending: Mutex::new(Pending::default()),
            on_error: config.on_store_error,
        };
        Self {
            remote: Arc::new(remote),
            local,
            replica: uuid::Uuid::new_v4().as_u64_pair().0,
            in_flight_ttl,
            on_error: config.on_store_error,
        }
    }

    fn claim_value(&self, token: u64) -> String {
        format!("f:{:x}:{token}", self.replica)
    }

    /// Waits until `deadline` for another replica's claim to settle, polling; `None` when Redis failed
    /// meanwhile (an unreadable claim is never taken for an absent one).
    async fn wait_shared(&self, rkey: &str, deadline: Instant) -> Option<Waited> {
        loop {
            match self.remote.get(rkey).await? {
                Some(v) => match parse(&v) {
                    Stored::Done(done) => return Some(Waited::Done(done)),
                    Stored::InFlight if Instant::now() >= deadline => return Some(Waited::Busy),
                    Stored::InFlight => tokio::time::sleep(POLL).await,
                },
                // Released (the other copy failed) or expired (its replica vanished): free again.
                None => return Some(Waited::Freed),
            }
        }
    }

    /// Settles this replica's claim as the shared store answered for another replica's copy.
    fn settle_local(&self, held: &Held, claim: StoreClaim) -> StoreClaim {
        match claim {
            StoreClaim::Duplicate(done) => self.local.settle_done(held, done),
            _ => self.local.settle_released(held),
        }
        claim
    }

    fn event_key(&self, key: &Key) -> String {
        format!("{}{}", self.remote.prefix, key.joined())
    }

    fn keys(&self, key: &Key, body: Body) -> Keys {
        Keys {
            event: self.event_key(key),
            body: body
                .guard
                .then(|| format!("{}b:{}", self.remote.prefix, body.digest.hex())),
        }
    }

    /// One line for `/readyz`.
    pub fn status(&self) -> String {
        let h = self.remote.health.lock().unwrap_or_else(|e| e.into_inner());
        match (h.down_since, self.on_error) {
            (None, _) => "dedup: redis ok".into(),
            (Some(t), OnStoreError::Local) => format!(
                "dedup: redis unreachable for {:.0} s, using the local cache (deliveries flow, duplicates across replicas may reach the app)",
                t.elapsed().as_secs_f64()
            ),
            (Some(t), OnStoreError::Refuse) => format!(
                "dedup: redis unreachable for {:.0} s, deliveries answered 503 + Retry-After until it is back (on_store_error = \"refuse\")",
                t.elapsed().as_secs_f64()
            ),
        }
    }
}

#[async_trait]
impl DedupStore for RedisStore {
    async fn claim(&self, key: &Key, body: Body, wait: Duration) -> StoreClaim {
        let deadline = Instant::now() + wait;
        // Local first: copies on this replica wait for each other whether Redis answers or not.
        let token = match self.local.claim(key, body, wait).await {
            StoreClaim::Acquired(token) => token,
            other => return other,
        };
        let held = Held {
            key: key.clone(),
            token,
            body,
        };
        Remote::watch(&self.remote);
        let keys = self.keys(key, body);
        let value = self.claim_value(token);
        let ttl_ms = self.in_flight_ttl.as_millis() as u64;
        let shared = loop {
            match self.remote.claim(&keys, &value, ttl_ms).await {
                Some(None) => return StoreClaim::Acquired(token),
                // Redis cannot decide: forwarded on the local claim alone, or refused (strict mode).
                None if self.on_error == OnStoreError::Refuse => break StoreClaim::Unavailable,
                None => return StoreClaim::Acquired(token),
                Some(Some(v)) if v == "b:" => break StoreClaim::ReplayedBody,
                Some(Some(v)) => match parse(&v) {
                    Stored::Done(done) => break StoreClaim::Duplicate(done),
                    // Redis failing while another replica holds the claim: not ours to take.
                    Stored::InFlight => match self.wait_shared(&keys.event, deadline).await {
                        Some(Waited::Done(done)) => break StoreClaim::Duplicate(done),
                        Some(Waited::Freed) => continue,
                        Some(Waited::Busy) => break StoreClaim::Busy,
                        None if self.on_error == OnStoreError::Refuse => {
                            break StoreClaim::Unavailable;
                        }
                        None => break StoreClaim::Busy,
                    },
                },
            }
        };
        self.settle_local(&held, shared)
    }

    async fn commit(&self, held: &Held, status: u16) {
        // Remembered locally in any case: this replica answers its own duplicates, Redis or not.
        self.local.commit(held, status).await;
        let keys = self.keys(&held.key, held.body);
        let value = done_value(status, held.body.digest);
        if self
            .remote
            .set_done(&keys, &value, self.remote.ttl)
            .await
            .is_none()
        {
            Remote::queue(&self.remote, keys, value);
        }
    }

    async fn release(&self, held: &Held) {
        self.local.release(held).await;
        // Tried even if the claim fell back: a claim sent as Redis stalled may have landed late. On
        // failure the claim expires with its in-flight TTL.
        let keys = self.keys(&held.key, held.body);
        let value = self.claim_value(held.token);
        let script = &self.remote.release;
        let _: Option<i64> = self
            .remote
            .run("release", |mut c| async move {
                let mut inv = script.key(&keys.event);
                if let Some(b) = &keys.body {
                    inv.key(b);
                }
                inv.arg(value).invoke_async(&mut c).await
            })
            .await;
    }

    async fn lookup(&self, key: &Key) -> Option<u16> {
        if let Some(done) = self.local.done(key) {
            return Some(done.status);
        }
        match parse(&self.remote.get(&self.event_key(key)).await??) {
            Stored::Done(done) => Some(done.status),
            Stored::InFlight => None,
        }
    }

    fn entries(&self) -> u64 {
        self.local.entries()
    }

    fn status(&self) -> Option<String> {
        Some(RedisStore::status(self))
    }
}

impl Remote {
    /// When Redis may be asked again; `None` if now.
    fn retry_at(&self) -> Option<Instant> {
        let h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        h.retry_at.filter(|t| Instant::now() < *t)
    }

    fn failed(&self, what: &str, e: &str) {
        METRICS.dedup_error();
        self.down(what, e);
    }

    /// Marks Redis down (logged once) and leaves it alone for `BACKOFF`.
    fn down(&self, what: &str, e: &str) {
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if h.down_since.is_none() {
            let meanwhile = match self.on_error {
                OnStoreError::Local => "using this replica's local cache until it is back",
                OnStoreError::Refuse => "deliveries get 503 + Retry-After until it is back",
            };
            log::warn!("dedup: redis {what} failed ({e}); {meanwhile}");
            h.down_since = Some(now);
        }
        h.retry_at = Some(now + BACKOFF);
    }

    fn succeeded(&self) {
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(since) = h.down_since.take() {
            log::info!(
                "dedup: redis is back after {:.1} s; shared deduplication resumes",
                since.elapsed().as_secs_f64()
            );
        }
        h.retry_at = None;
    }

    /// The connection in use, or a new one. The attempt runs in a task of its own, with the longer
    /// budget a TLS handshake or a Sentinel lookup may need (`connect::CONNECT_BUDGET`), and the caller
    /// waits for it no longer than the timeout: a slow first handshake is then ready for the next
    /// delivery. `None`: no connection within the timeout (a failed attempt logs its reason itself).
    async fn conn(self: &Arc<Self>) -> Option<MultiplexedConnection> {
        use std::sync::atomic::Ordering;
        if let Some(c) = self.cached() {
            return Some(c);
        }
        let attempted = self.attempted.notified();
        tokio::pin!(attempted);
        attempted.as_mut().enable();
        if let Some(c) = self.cached() {
            return Some(c);
        }
        if !self.connecting.swap(true, Ordering::AcqRel) {
            let this = self.clone();
            tokio::spawn(async move {
                match this.connector.connect().await {
                    Ok((c, at)) => {
                        *this.conn.lock().unwrap_or_else(|e| e.into_inner()) = Some((c, at));
                    }
                    Err(e) => this.down("connect", &e),
                }
                this.connecting.store(false, Ordering::Release);
                this.attempted.notify_waiters();
            });
        }
        // Whether it ended or not: an attempt that failed has left Redis alone for `BACKOFF`.
        let _ = tokio::time::timeout(self.timeout, attempted).await;
        self.cached()
    }

    fn cached(&self) -> Option<MultiplexedConnection> {
        let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        conn.as_ref().map(|(c, _)| c.clone())
    }

    /// With Sentinel, starts the task that follows the master, once.
    fn watch(this: &Arc<Remote>) {
        use std::sync::atomic::Ordering;
        if !this.connector.sentinel() || this.watching.swap(true, Ordering::Relaxed) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn(this.clone().follow_master())),
            Err(_) => this.watching.store(false, Ordering::Relaxed),
        }
    }

    /// Asks the sentinels every `SENTINEL_CHECK` which server is the master, and drops the connection
    /// when it is to another one: the next operation connects to the new master.
    async fn follow_master(self: Arc<Self>) {
        loop {
            tokio::time::sleep(SENTINEL_CHECK).await;
            let connected = {
                let conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
                conn.as_ref().map(|(_, at)| at.clone())
            };
            let Some(connected) = connected else {
                continue;
            };
            let at = match &connected {
                ConnectionAddr::Tcp(host, port) | ConnectionAddr::TcpTls { host, port, .. } => {
                    (host.as_str(), *port)
                }
                _ => continue,
            };
            if let Some((host, port)) = self.connector.named_master().await
                && (host.as_str(), port) != at
            {
                log::warn!(
                    "dedup: the sentinels name another master ({host}:{port}, was {connected}); reconnecting"
                );
                let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
                if conn.as_ref().is_some_and(|(_, at)| *at == connected) {
                    conn.take();
                }
            }
        }
    }

    /// Forgets the connection: a failed one may be dead, or to a master that is a replica now.
    fn disconnect(&self) {
        self.conn.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    /// Runs one Redis operation within the timeout; `None` if it failed or Redis is left alone for now.
    async fn run<T, F, Fut>(self: &Arc<Self>, what: &str, op: F) -> Option<T>
    where
        F: FnOnce(MultiplexedConnection) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        // Left alone after a failure, unless a connection was made since (a failed one is dropped).
        if self.retry_at().is_some() && self.cached().is_none() {
            return None;
        }
        let Some(conn) = self.conn().await else {
            self.failed(what, "no connection within the timeout");
            return None;
        };
        match tokio::time::timeout(self.timeout, op(conn)).await {
            Ok(Ok(v)) => {
                self.succeeded();
                Some(v)
            }
            Ok(Err(e)) => {
                self.disconnect();
                self.failed(what, &e.to_string());
                None
            }
            Err(_) => {
                self.disconnect();
                self.failed(what, "timed out");
                None
            }
        }
    }

    /// Claims `keys` with `value`: `Some(None)` if claimed, `Some(Some(held))` if the event key holds
    /// `held` (or the body is another event's: `b:`).
    async fn claim(
        self: &Arc<Self>,
        keys: &Keys,
        value: &str,
        ttl_ms: u64,
    ) -> Option<Option<String>> {
        let script = &self.claim;
        self.run("claim", |mut c| async move {
            let mut inv = script.key(&keys.event);
            if let Some(b) = &keys.body {
                inv.key(b);
            }
            inv.arg(value).arg(ttl_ms).invoke_async(&mut c).await
        })
        .await
    }

    async fn get(self: &Arc<Self>, rkey: &str) -> Option<Option<String>> {
        self.run("GET", |mut c| async move {
            redis::cmd("GET").arg(rkey).query_async(&mut c).await
        })
        .await
    }

    /// Marks `keys` done with `value` for `ttl`; `None` if Redis did not take it.
    async fn set_done(self: &Arc<Self>, keys: &Keys, value: &str, ttl: Duration) -> Option<()> {
        let ttl_ms = ttl.as_millis().max(1) as u64;
        let script = &self.commit;
        let _: i64 = self
            .run("commit", |mut c| async move {
                let mut inv = script.key(&keys.event);
                if let Some(b) = &keys.body {
                    inv.key(b);
                }
                inv.arg(value).arg(ttl_ms).invoke_async(&mut c).await
            })
            .await?;
        Some(())
    }

    /// Keeps a commit that failed for the replay task, which is started if none runs.
    fn queue(this: &Arc<Remote>, keys: Keys, value: String) {
        let mut p = this.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.queue.len() >= MAX_PENDING {
            p.queue.pop_front();
            METRICS.commit_dropped();
        }
        let seq = p.next_seq;
        p.next_seq += 1;
        p.queue.push_back(Commit {
            seq,
            keys,
            value,
            at: Instant::now(),
        });
        METRICS.commits_pending(p.queue.len());
        if !p.replaying
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            p.replaying = true;
            rt.spawn(this.clone().replay());
        }
    }

    /// The oldest commit waiting, or `None` (and the task ends) when there is none.
    fn next_pending(&self) -> Option<Commit> {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let next = p.queue.front().cloned();
        p.replaying = next.is_some();
        next
    }

    /// Forgets commit `seq` (it may already have been dropped to make room).
    fn done_with(&self, seq: u64) {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if p.queue.front().is_some_and(|c| c.seq == seq) {
            p.queue.pop_front();
        }
        METRICS.commits_pending(p.queue.len());
    }

    /// Writes the queued commits to Redis, oldest first, each with what remains of its TTL, as soon as
    /// Redis may be asked again; ends when the queue is empty.
    async fn replay(self: Arc<Self>) {
        while let Some(c) = self.next_pending() {
            if let Some(at) = self.retry_at() {
                tokio::time::sleep_until(at.into()).await;
                continue;
            }
            let left = self.ttl.saturating_sub(c.at.elapsed());
            if left.is_zero() {
                METRICS.commit_dropped();
            } else if self.set_done(&c.keys, &c.value, left).await.is_some() {
                METRICS.commit_replay(metrics::Result::Success);
            } else {
                METRICS.commit_replay(metrics::Result::Failure);
                continue;
            }
            self.done_with(c.seq);
        }
    }
}
