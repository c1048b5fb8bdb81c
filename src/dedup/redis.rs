//! The shared store: Redis, so that every replica of a Deployment sees the same claims.
//!
//! A key holds `f:<token>` while in flight (`SET NX PX`, expiring after the in-flight TTL so that a crashed
//! replica cannot block an event for long) and `d:<status>` once the app acknowledged it. Release deletes
//! the key only if it still holds the caller's own token (compare-and-delete in Lua).
//!
//! Redis is an optimisation of the contract, never a condition for deliveries: when it is slow or down,
//! each operation falls back to the local in-memory store after a short timeout, and Redis is left alone for a
//! moment before the next try. The local store also remembers every done key, so a replica answers its own
//! duplicates without a round trip.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::OnceCell;

use super::memory::MemoryStore;
use super::{DedupStore, StoreClaim};
use crate::metrics::METRICS;

/// Tokens of Redis claims have this bit set; the local store's never do.
const REDIS_TOKEN: u64 = 1 << 63;
/// After a failure, Redis is not asked again for this long: deliveries do not each pay the timeout.
const BACKOFF: Duration = Duration::from_secs(1);
/// How often a duplicate polls the state of a claim held by another replica.
const POLL: Duration = Duration::from_millis(20);

const RELEASE: &str = r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end";

pub struct RedisStore {
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    prefix: String,
    timeout: Duration,
    ttl: Duration,
    in_flight_ttl: Duration,
    local: MemoryStore,
    release: redis::Script,
    health: Mutex<Health>,
}

#[derive(Default)]
struct Health {
    down_since: Option<Instant>,
    retry_at: Option<Instant>,
}

impl RedisStore {
    /// `url` was validated with the configuration; no connection is made until the first delivery.
    pub fn new(
        url: &str,
        prefix: &str,
        timeout: Duration,
        ttl: Duration,
        in_flight_ttl: Duration,
        local: MemoryStore,
    ) -> redis::RedisResult<Self> {
        Ok(Self {
            client: redis::Client::open(url)?,
            conn: OnceCell::new(),
            prefix: prefix.to_string(),
            timeout,
            ttl,
            in_flight_ttl,
            local,
            release: redis::Script::new(RELEASE),
            health: Mutex::new(Health::default()),
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    fn available(&self) -> bool {
        let h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        h.retry_at.is_none_or(|t| Instant::now() >= t)
    }

    fn failed(&self, what: &str, e: &str) {
        METRICS.dedup_error();
        let mut h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if h.down_since.is_none() {
            log::warn!(
                "dedup: redis {what} failed ({e}); using this replica's local cache until it is back"
            );
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

    async fn conn(&self) -> Result<ConnectionManager, String> {
        self.conn
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(1);
                ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            })
            .await
            .cloned()
            .map_err(|e| e.to_string())
    }

    /// Runs one Redis operation within the timeout.
    async fn run<T, F, Fut>(&self, what: &str, op: F) -> Option<T>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        if !self.available() {
            return None;
        }
        let conn = match self.conn().await {
            Ok(c) => c,
            Err(e) => {
                self.failed(what, &e);
                return None;
            }
        };
        match tokio::time::timeout(self.timeout, op(conn)).await {
            Ok(Ok(v)) => {
                self.succeeded();
                Some(v)
            }
            Ok(Err(e)) => {
                self.failed(what, &e.to_string());
                None
            }
            Err(_) => {
                self.failed(what, "timed out");
                None
            }
        }
    }

    async fn get(&self, rkey: &str) -> Option<Option<String>> {
        self.run("GET", |mut c| {
            let rkey = rkey.to_string();
            async move { redis::cmd("GET").arg(rkey).query_async(&mut c).await }
        })
        .await
    }

    /// Waits for another replica's claim to settle, polling; `None` when Redis failed meanwhile.
    async fn wait_shared(&self, rkey: &str, wait: Duration) -> Option<StoreClaim> {
        let deadline = Instant::now() + wait;
        loop {
            match self.get(rkey).await? {
                Some(v) if v.starts_with("d:") => {
                    return Some(match v[2..].parse() {
                        Ok(status) => StoreClaim::Duplicate(status),
                        Err(_) => StoreClaim::Busy,
                    });
                }
                // Released (the app failed) or expired: never a 2xx, never a second copy now.
                None => return Some(StoreClaim::Busy),
                Some(_) if Instant::now() >= deadline => return Some(StoreClaim::Busy),
                Some(_) => tokio::time::sleep(POLL).await,
            }
        }
    }

    /// One line for `/readyz`.
    pub fn status(&self) -> String {
        let h = self.health.lock().unwrap_or_else(|e| e.into_inner());
        match h.down_since {
            None => "dedup: redis ok".into(),
            Some(t) => format!(
                "dedup: redis unreachable for {:.0} s, using the local cache (deliveries flow, duplicates across replicas may reach the app)",
                t.elapsed().as_secs_f64()
            ),
        }
    }
}

#[async_trait]
impl DedupStore for RedisStore {
    async fn claim(&self, key: &str, wait: Duration) -> StoreClaim {
        if let Some(status) = self.local.done_status(key) {
            return StoreClaim::Duplicate(status);
        }
        let rkey = self.key(key);
        let token = REDIS_TOKEN | (uuid::Uuid::new_v4().as_u64_pair().0 >> 1);
        let ttl_ms = self.in_flight_ttl.as_millis() as u64;
        let set: Option<Option<String>> = self
            .run("SET NX", |mut c| {
                let rkey = rkey.clone();
                async move {
                    redis::cmd("SET")
                        .arg(rkey)
                        .arg(format!("f:{token}"))
                        .arg("NX")
                        .arg("PX")
                        .arg(ttl_ms)
                        .query_async(&mut c)
                        .await
                }
            })
            .await;
        match set {
            Some(Some(_)) => StoreClaim::Acquired(token),
            Some(None) => match self.wait_shared(&rkey, wait).await {
                Some(claim) => claim,
                None => self.local.claim(key, wait).await,
            },
            None => self.local.claim(key, wait).await,
        }
    }

    async fn commit(&self, key: &str, token: u64, status: u16) {
        // Remembered locally in any case: this replica answers its own duplicates, Redis or not.
        self.local.commit(key, token, status).await;
        let rkey = self.key(key);
        let ttl_ms = self.ttl.as_millis() as u64;
        let _: Option<()> = self
            .run("SET", |mut c| async move {
                redis::cmd("SET")
                    .arg(rkey)
                    .arg(format!("d:{status}"))
                    .arg("PX")
                    .arg(ttl_ms)
                    .query_async(&mut c)
                    .await
            })
            .await;
    }

    async fn release(&self, key: &str, token: u64) {
        if token & REDIS_TOKEN == 0 {
            return self.local.release(key, token).await;
        }
        let rkey = self.key(key);
        let script = &self.release;
        // On failure the claim expires with its in-flight TTL.
        let _: Option<i64> = self
            .run("release", |mut c| async move {
                script
                    .key(rkey)
                    .arg(format!("f:{token}"))
                    .invoke_async(&mut c)
                    .await
            })
            .await;
    }

    fn entries(&self) -> u64 {
        self.local.entries()
    }

    fn status(&self) -> Option<String> {
        Some(RedisStore::status(self))
    }
}
