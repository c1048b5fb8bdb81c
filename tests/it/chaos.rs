//! The chaos ledger: exactly-once delivery under faults, checked event by event.
//!
//! A simulated Pitchpoint sender (2xx and 403 end an event; anything else, a reset or a timeout is retried
//! with backoff) sends a few hundred events, some of them twice at once, through two sidecar replicas
//! sharing a real `redis-server`, in front of one app that at random answers 5xx, hangs past the read
//! timeout, reads and hangs up, resets, or acknowledges. During the run Redis is paused (SIGSTOP) and one
//! replica is SIGKILLed and restarted on its ports. At the end:
//! - every 2xx the sender got came after the app's 2xx for that event;
//! - every event ended, with a 2xx or by giving up after `MAX_ATTEMPTS` (counted);
//! - no event was acknowledged by the app twice, except in the windows README.md documents (counted).
//!
//! In strict mode (`dedup.on_store_error = "refuse"`) the same run must show no event acknowledged twice
//! because of Redis, inside the pause or after it, and every flow must end with a 2xx: a delivery the
//! shared store cannot decide is answered 503 + Retry-After, and goes through once Redis is back.
//!
//! Seeded (`CHAOS_SEED`, else `SEED`): the app's answer to the n-th arrival of an event and the sender's
//! choices follow from it; the interleaving of concurrent flows does not. Loopback only.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SEED: u64 = 0x5eed_c4a0_5e7e_11e5;
const EVENTS: usize = 240;
/// Events that the sender delivers twice, at about the same time (per mille).
const DUPLICATED: u64 = 150;
/// Sender flows in progress at once.
const CONCURRENCY: usize = 16;
/// The sender gives an event up after this many attempts: enough to outlast a claim orphaned by the kill.
const MAX_ATTEMPTS: u32 = 40;
/// What the sender waits for an answer (Pitchpoint's own timeout, shortened).
const SENDER_TIMEOUT: Duration = Duration::from_secs(5);
const READ_TIMEOUT_MS: u64 = 400;
/// Flows start no faster than one per this (Pitchpoint emits events over time): the faults land mid-run.
const PACE: Duration = Duration::from_millis(30);
const REDIS_PAUSE: Duration = Duration::from_millis(1500);
/// An event acknowledged this long before the kill may have been acknowledged by the killed replica before
/// it could commit (its commit takes a Redis round trip after the app's answer).
const KILL_WINDOW: Duration = Duration::from_millis(500);
/// After Redis resumes: a replica retries it within a second, then replays its queued commits.
const REDIS_WINDOW_AFTER: Duration = Duration::from_millis(2500);

/// xorshift64*: deterministic, and enough for picking faults.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// A generator for one purpose, apart from the others drawn from the same seed.
    fn derive(seed: u64, salt: &str, n: u64) -> Rng {
        let mut h = seed ^ 0x9e37_79b9_7f4a_7c15;
        for b in salt.bytes().chain(n.to_le_bytes()) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        let mut r = Rng::new(h);
        r.next();
        r
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the app does with one arrival of a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fate {
    Ack,
    Error(u16),
    /// Answers nothing until well past the sidecar's read timeout, then closes.
    Hang,
    /// Reads the request and closes the connection.
    HangUp,
    /// Reads the request and resets the connection.
    Reset,
}

fn fate(seed: u64, id: &str, arrival: u64) -> Fate {
    let mut r = Rng::derive(seed, id, arrival);
    match r.below(100) {
        0..55 => Fate::Ack,
        55..70 => Fate::Error(if r.below(2) == 0 { 500 } else { 503 }),
        70..80 => Fate::Hang,
        80..90 => Fate::HangUp,
        _ => Fate::Reset,
    }
}

/// What the app saw: arrivals and acknowledgements (2xx written) per webhook id.
#[derive(Default)]
struct AppLedger {
    arrivals: HashMap<String, u64>,
    /// When, and through which replica (0 = a, 1 = b).
    acks: HashMap<String, Vec<Ack>>,
}

#[derive(Clone, Copy)]
struct Ack {
    at: Instant,
    replica: usize,
}

/// The app: HTTP/1.1 on loopback, answering each arrival as its fate says. It listens on one address per
/// replica, so that it knows which replica forwarded what.
async fn start_app(seed: u64) -> ([SocketAddr; 2], Arc<Mutex<AppLedger>>) {
    let ledger = Arc::new(Mutex::new(AppLedger::default()));
    let mut addrs = Vec::new();
    for replica in 0..2 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.push(listener.local_addr().unwrap());
        let l = ledger.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, replica, seed, l.clone()));
            }
        });
    }
    ([addrs[0], addrs[1]], ledger)
}

async fn serve(mut stream: TcpStream, replica: usize, seed: u64, ledger: Arc<Mutex<AppLedger>>) {
    let mut buf = Vec::new();
    while let Some(head) = read_request(&mut stream, &mut buf).await {
        let Some(id) = header(&head, "x-pps-webhook-id") else {
            return;
        };
        let arrival = {
            let mut l = ledger.lock().unwrap();
            let n = l.arrivals.entry(id.clone()).or_default();
            *n += 1;
            *n
        };
        match fate(seed, &id, arrival) {
            Fate::Ack => {
                // Recorded before the answer is written: any 2xx the sender sees comes after it.
                ledger
                    .lock()
                    .unwrap()
                    .acks
                    .entry(id)
                    .or_default()
                    .push(Ack {
                        at: Instant::now(),
                        replica,
                    });
                let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n";
                if stream.write_all(ok).await.is_err() {
                    return;
                }
            }
            Fate::Error(status) => {
                let answer = format!("HTTP/1.1 {status} Oops\r\nContent-Length: 0\r\n\r\n");
                if stream.write_all(answer.as_bytes()).await.is_err() {
                    return;
                }
            }
            Fate::Hang => {
                tokio::time::sleep(Duration::from_millis(READ_TIMEOUT_MS * 3)).await;
                return;
            }
            Fate::HangUp => return,
            Fate::Reset => {
                let _ = stream.set_zero_linger();
                return;
            }
        }
    }
}

/// Reads one request (head and Content-Length body) off `stream`; returns its head.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        read_more(stream, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let len: usize = header(&head, "content-length").map_or(0, |v| v.parse().unwrap());
    while buf.len() < end + len {
        read_more(stream, buf).await?;
    }
    buf.drain(..end + len);
    Some(head)
}

async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 4096];
    match stream.read(&mut chunk).await {
        Ok(0) | Err(_) => None,
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
    }
}

fn header(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_string())
    })
}

/// How one flow of the sender ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// A 2xx, at this time; `true` if answered as a duplicate.
    Success(Instant, bool),
    Forbidden,
    GaveUp,
}

#[derive(Default)]
struct SenderLedger {
    attempts: u64,
    /// Answers by status (0: no answer: refused, reset, closed or timed out).
    answers: HashMap<u16, u64>,
    ends: Vec<(usize, End)>,
}

/// One attempt: a fresh connection, the delivery, the answer's status (and whether it is a duplicate).
async fn attempt(target: SocketAddr, bytes: &[u8]) -> Option<(u16, bool)> {
    let exchange = async {
        let mut s = TcpStream::connect(target).await.ok()?;
        s.write_all(bytes).await.ok()?;
        let mut buf = Vec::new();
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            read_more(&mut s, &mut buf).await?;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let status = head.split_whitespace().nth(1)?.parse().ok()?;
        Some((
            status,
            header(&head, "x-pps-duplicate").as_deref() == Some("true"),
        ))
    };
    tokio::time::timeout(SENDER_TIMEOUT, exchange)
        .await
        .ok()
        .flatten()
}

/// One delivery flow of an event, following Pitchpoint's retry rules, to either replica at random.
async fn flow(
    d: &Delivery,
    rng: &mut Rng,
    targets: [SocketAddr; 2],
    ledger: &Mutex<SenderLedger>,
) -> End {
    let bytes = d.bytes();
    for n in 0..MAX_ATTEMPTS {
        let target = targets[rng.below(2) as usize];
        let answer = attempt(target, &bytes).await;
        {
            let mut l = ledger.lock().unwrap();
            l.attempts += 1;
            *l.answers.entry(answer.map_or(0, |a| a.0)).or_default() += 1;
        }
        match answer {
            Some((200..=299, dup)) => return End::Success(Instant::now(), dup),
            Some((403, _)) => return End::Forbidden,
            _ => {}
        }
        let backoff = (25u64 << n.min(5)).min(800);
        let jitter = rng.below(backoff / 2 + 1);
        tokio::time::sleep(Duration::from_millis(backoff + jitter)).await;
    }
    End::GaveUp
}

/// The events' ids: UUID-shaped, from the seed.
fn ids(seed: u64) -> Vec<String> {
    let mut r = Rng::derive(seed, "ids", 0);
    (0..EVENTS)
        .map(|_| {
            let (a, b) = (r.next(), r.next());
            format!(
                "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
                a >> 32,
                (a >> 16) & 0xffff,
                a & 0xfff,
                b >> 52,
                b & 0xffff_ffff_ffff
            )
        })
        .collect()
}

/// The flows to run, in order: each event once, and the duplicated ones again a few places later.
fn flows(seed: u64) -> VecDeque<usize> {
    let mut r = Rng::derive(seed, "flows", 0);
    let mut order: Vec<usize> = (0..EVENTS).collect();
    for e in 0..EVENTS {
        if r.below(1000) < DUPLICATED {
            // Soon (in flight together), or a few seconds later (done by then).
            let later = if r.below(2) == 0 {
                1 + r.below(8)
            } else {
                60 + r.below(60)
            };
            let at =
                (order.iter().position(|&x| x == e).unwrap() + later as usize).min(order.len());
            order.insert(at, e);
        }
    }
    order.into()
}

/// When the faults happened, and in which mode the replicas met them.
#[derive(Default, Debug)]
struct Faults {
    /// `on_store_error = "refuse"`: no Redis window is accepted.
    strict: bool,
    paused: Option<Instant>,
    resumed: Option<Instant>,
    killed: Option<Instant>,
}

fn sidecar_toml(redis: &TestRedis, strict: bool) -> String {
    let mode = if strict { "refuse" } else { "local" };
    format!(
        "{}in_flight_wait_ms = 1000\non_store_error = \"{mode}\"\n\n[upstream]\nread_timeout_ms = {READ_TIMEOUT_MS}\nconnect_timeout_ms = 200\n",
        redis.toml().replace("in_flight_wait_ms = 5000\n", "")
    )
}

/// Pauses Redis a third of the way through, and kills and restarts replica `b` two thirds through (and
/// after the Redis window).
async fn inject(
    redis: &TestRedis,
    b: Sidecar,
    app: SocketAddr,
    done: &AtomicUsize,
    total: usize,
    strict: bool,
) -> (Faults, Sidecar) {
    let mut f = Faults {
        strict,
        ..Faults::default()
    };
    // Every flow ends within MAX_ATTEMPTS backoffs (under 40 s); past this the run is stuck.
    let stuck = Instant::now() + Duration::from_secs(180);
    let reached = |n: usize| async move {
        while done.load(Ordering::Relaxed) < n {
            assert!(Instant::now() < stuck, "never: {n} flows ended");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    reached(total / 3).await;
    redis.pause();
    f.paused = Some(Instant::now());
    tokio::time::sleep(REDIS_PAUSE).await;
    redis.resume();
    f.resumed = Some(Instant::now());
    reached(total * 2 / 3).await;
    // Apart from the Redis window, so that each duplicate is told to one cause.
    tokio::time::sleep_until((f.resumed.unwrap() + REDIS_WINDOW_AFTER).into()).await;
    let (addr, admin) = (b.addr, b.admin);
    signal(b.pid(), "KILL");
    f.killed = Some(Instant::now());
    drop(b);
    let b = Sidecar::start_at(addr, admin, app, &sidecar_toml(redis, strict), &[]).await;
    (f, b)
}

/// Why the app acknowledged an event again (`again`) after `earlier`: the documented window it fell in,
/// or `None`.
fn window(f: &Faults, earlier: &[Ack], again: Ack) -> Option<&'static str> {
    let killed = f.killed.expect("the replica was killed");
    let first = earlier[0];
    if first.replica == 1
        && first.at <= killed
        && killed.duration_since(first.at) <= KILL_WINDOW
        && again.at > killed
    {
        return Some("replica killed between the app's 2xx and its commit");
    }
    let (paused, resumed) = (f.paused.unwrap(), f.resumed.unwrap());
    // A replica answers what it acknowledged itself from its local cache, Redis or not.
    // In strict mode no delivery goes past a shared store that cannot decide: no Redis window.
    let seen_here = earlier.iter().any(|e| e.replica == again.replica);
    if !f.strict && !seen_here && again.at >= paused && again.at <= resumed + REDIS_WINDOW_AFTER {
        return Some("Redis unreachable (or its commits not yet replayed)");
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_sender_2xx_follows_the_apps_and_duplicates_reach_the_app_only_in_documented_windows()
{
    ledger(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_strict_mode_no_event_reaches_the_app_twice_through_a_redis_pause_and_every_flow_ends_2xx()
 {
    ledger(true).await;
}

async fn ledger(strict: bool) {
    let seed = std::env::var("CHAOS_SEED")
        .map(|s| s.parse().expect("CHAOS_SEED is a number"))
        .unwrap_or(SEED);
    let started = Instant::now();
    let redis = TestRedis::start(free_port()).await;
    let (app, app_ledger) = start_app(seed).await;
    let a = Sidecar::start_with(app[0], &sidecar_toml(&redis, strict), &[]).await;
    let b = Sidecar::start_with(app[1], &sidecar_toml(&redis, strict), &[]).await;
    let targets = [a.addr, b.addr];

    let ids = Arc::new(ids(seed));
    let queue = Arc::new(Mutex::new(
        flows(seed).into_iter().enumerate().collect::<VecDeque<_>>(),
    ));
    let total = queue.lock().unwrap().len();
    let done = Arc::new(AtomicUsize::new(0));
    let sender = Arc::new(Mutex::new(SenderLedger::default()));
    let sending = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|w| {
            let (ids, queue, done, sender) =
                (ids.clone(), queue.clone(), done.clone(), sender.clone());
            tokio::spawn(async move {
                let mut rng = Rng::derive(seed, "sender", w as u64);
                loop {
                    let Some((k, event)) = queue.lock().unwrap().pop_front() else {
                        return;
                    };
                    tokio::time::sleep_until((sending + PACE * k as u32).into()).await;
                    let d = Delivery::json().set("X-Pps-Webhook-Id", Some(&ids[event]));
                    let end = flow(&d, &mut rng, targets, &sender).await;
                    sender.lock().unwrap().ends.push((event, end));
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let (faults, b) = inject(&redis, b, app[1], &done, total, strict).await;
    for w in workers {
        w.await.unwrap();
    }
    let elapsed = started.elapsed();

    let metrics = [
        a.admin_get("/metrics").await.text(),
        b.admin_get("/metrics").await.text(),
    ];
    let sender = sender.lock().unwrap();
    let app = app_ledger.lock().unwrap();
    check(seed, &ids, &sender, &app, &faults, &metrics, elapsed);
}

/// The ledger, event by event; prints its figures and fails on any breach of the contract.
fn check(
    seed: u64,
    ids: &[String],
    sender: &SenderLedger,
    app: &AppLedger,
    faults: &Faults,
    metrics: &[String; 2],
    elapsed: Duration,
) {
    let strict = faults.strict;
    assert_eq!(sender.ends.len(), flows(seed).len(), "every flow ended");
    let mut breaches = Vec::new();
    let (mut successes, mut dup_answers, mut gave_up, mut forbidden) = (0, 0, 0, 0);
    for (event, end) in &sender.ends {
        let acks = app.acks.get(&ids[*event]);
        match end {
            End::Success(at, dup) => {
                successes += 1;
                dup_answers += u64::from(*dup);
                if !acks.is_some_and(|a| a.iter().any(|ack| ack.at < *at)) {
                    breaches.push(format!(
                        "event {event}: a 2xx to the sender before the app's"
                    ));
                }
            }
            End::GaveUp => gave_up += 1,
            End::Forbidden => forbidden += 1,
        }
    }
    // Per window: how many, and when the second 2xx came, in seconds after the pause.
    let mut windows: HashMap<&str, Vec<f64>> = HashMap::new();
    let paused = faults.paused.unwrap();
    for (id, acks) in &app.acks {
        for (i, again) in acks.iter().enumerate().skip(1) {
            match window(faults, &acks[..i], *again) {
                Some(w) => windows
                    .entry(w)
                    .or_default()
                    .push(again.at.duration_since(paused).as_secs_f64()),
                None => breaches.push(format!("event {id}: acknowledged again outside any window")),
            }
        }
    }
    let ended: std::collections::HashSet<usize> = sender.ends.iter().map(|(e, _)| *e).collect();
    // A figure missing from a replica's metrics (an older build) is printed as `-`.
    let m = |i: usize, s: &str| {
        metrics[i]
            .lines()
            .find_map(|l| l.strip_prefix(s).and_then(|v| v.strip_prefix(' ')))
            .unwrap_or("-")
            .to_string()
    };
    let mut answers: Vec<_> = sender.answers.iter().collect();
    answers.sort();
    let mode = if strict { "strict (refuse)" } else { "local" };
    println!(
        "chaos ledger, seed {seed}, on_store_error {mode} ({:.1} s)",
        elapsed.as_secs_f64()
    );
    println!(
        "  events {} (all ended: {}), flows {} ({} duplicated), attempts {}",
        ids.len(),
        ended.len() == ids.len(),
        sender.ends.len(),
        sender.ends.len() - ids.len(),
        sender.attempts
    );
    println!("  sender answers by status (0 = none): {answers:?}");
    println!(
        "  flows ended: 2xx {successes} (of which duplicate answers {dup_answers}), 403 {forbidden}, gave up after {MAX_ATTEMPTS} attempts {gave_up}"
    );
    println!(
        "  app: arrivals {}, 2xx {} for {} events, acknowledged again {}",
        app.arrivals.values().sum::<u64>(),
        app.acks.values().map(Vec::len).sum::<usize>(),
        app.acks.len(),
        windows.values().map(Vec::len).sum::<usize>()
    );
    for (w, at) in &mut windows {
        at.sort_by(f64::total_cmp);
        let at: Vec<_> = at.iter().map(|t| format!("{t:.2}")).collect();
        println!(
            "    in window \"{w}\": {} (again at +s after the pause: {})",
            at.len(),
            at.join(" ")
        );
    }
    println!(
        "  faults: redis paused {:.2} s, replica b killed at +{:.2} s after the pause",
        faults.resumed.unwrap().duration_since(paused).as_secs_f64(),
        faults.killed.unwrap().duration_since(paused).as_secs_f64()
    );
    println!(
        "  replica a: store errors {}, commit replays ok {} failed {}, dropped {}; restarted replica b: store errors {}",
        m(0, "pps_sidecar_dedup_store_errors_total"),
        m(
            0,
            "pps_sidecar_dedup_commit_replays_total{result=\"success\"}"
        ),
        m(
            0,
            "pps_sidecar_dedup_commit_replays_total{result=\"failure\"}"
        ),
        m(0, "pps_sidecar_dedup_commits_dropped_total"),
        m(1, "pps_sidecar_dedup_store_errors_total"),
    );
    assert_eq!(ended.len(), ids.len(), "every event ended");
    assert!(breaches.is_empty(), "{breaches:#?}");
    if strict {
        assert_eq!(
            (gave_up, forbidden),
            (0, 0),
            "in strict mode every flow ends with a 2xx once Redis is back"
        );
    }
}
