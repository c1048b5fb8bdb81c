//! Bytes of RSS per remembered id and nanoseconds per claim + commit of `MemoryStore`.
//!
//! Each memory figure comes from a fresh process (this program run with `mem N`): RSS after N unique ids
//! were claimed and committed into a store of capacity N, minus RSS with the empty store, over N. The ids
//! look like the sidecar's keys (tenant, then a lowercase UUID), made on the fly so that they cost no memory.
//! The timing fills a store of 1,000,000 ids first, then times fresh ids against the full store (every
//! commit evicts one), on one thread and on two threads sharing the store. With `GUARD=1` every claim
//! asks for the replay guard, which also remembers each body's digest under its own entry.
//!
//! Each figure has a `moka alone` twin: a bare moka cache built by the store's own constructor
//! (`memory::cache`: LRU, the TTL, a 128-bit id hashed by its first half) with the store's `Done` as the
//! value, filled and timed the same way with `contains_key` + `insert` and nothing else. The difference is
//! the store's own cost; the twin is moka's floor.

use std::fmt::Write;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use pps_sidecar::dedup::memory::{Id, IdCache, MemoryStore, cache};
use pps_sidecar::dedup::{Body, BodyDigest, DedupStore, Done, Held, Key, StoreClaim};

#[global_allocator]
static GLOBAL: pps_sidecar::allocator::MiMalloc = pps_sidecar::allocator::MiMalloc;

const DAY: Duration = Duration::from_secs(86_400);
const FULL: u64 = 1_000_000;
const TIMED: u64 = 1_000_000;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("mem") => mem(args[2].parse().expect("mem N")),
        Some("moka-mem") => moka_mem(args[2].parse().expect("moka-mem N")),
        _ => table(),
    }
}

fn key(buf: &mut String, i: u64) -> Key {
    buf.clear();
    let h = i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
    write!(
        buf,
        "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
        h >> 32,
        (h >> 16) & 0xffff,
        h & 0xfff,
        i & 0xfff,
        i
    )
    .unwrap();
    Key::new(Some("OU1243"), buf)
}

fn guard() -> bool {
    std::env::var("GUARD").is_ok_and(|v| v == "1")
}

/// `VmRSS` or `VmHWM` (the peak) from /proc/self/status, in KiB.
fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with(field)).unwrap();
    line[field.len() + 1..]
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .unwrap()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// A fresh id with a body of its own (the id's text).
async fn deliver(s: &MemoryStore, k: &Key, guard: bool) {
    let body = Body {
        digest: BodyDigest::of(k.webhook_id().as_bytes()),
        guard,
    };
    let StoreClaim::Acquired(token) = s.claim(k, body, Duration::ZERO).await else {
        panic!("fresh id refused")
    };
    let held = Held {
        key: k.clone(),
        token,
        body,
    };
    s.commit(&held, 200).await;
}

type Moka = IdCache<Done>;

/// The `i`th id: splitmix64 of `i` twice, uniform like the store's keyed hashes.
fn id(i: u64) -> Id {
    let mix = |mut z: u64| {
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    Id([mix(2 * i), mix(2 * i + 1)])
}

/// What the store does with moka for a fresh id: a lookup that records no read, then the insert.
fn moka_deliver(m: &Moka, i: u64) {
    let id = id(i);
    assert!(!m.contains_key(&id), "fresh id remembered");
    // `None` takes the same room in the entry as a digest, without hashing a body inside the timing.
    m.insert(
        id,
        Done {
            status: 200,
            digest: None,
        },
    );
}

/// `mem`'s twin for a bare moka cache.
fn moka_mem(n: u64) {
    let m: Moka = cache(n, DAY);
    let before = status_kib("VmRSS");
    (0..n).for_each(|i| moka_deliver(&m, i));
    m.run_pending_tasks();
    println!(
        "{n} {before} {} {} {}",
        status_kib("VmRSS"),
        m.entry_count(),
        status_kib("VmHWM")
    );
}

/// Inserts ids `range` on `threads` threads (each its own slice); returns the wall time.
fn moka_run(m: &Moka, range: Range<u64>, threads: u64) -> Duration {
    let start = Instant::now();
    let per = (range.end - range.start) / threads;
    std::thread::scope(|scope| {
        for t in 0..threads {
            let from = range.start + t * per;
            scope.spawn(move || (from..from + per).for_each(|i| moka_deliver(m, i)));
        }
    });
    start.elapsed()
}

/// Prints `ids rss_before_kib rss_after_kib entries peak_kib`.
fn mem(n: u64) {
    let s = MemoryStore::new(n, DAY, Duration::from_secs(60));
    let before = status_kib("VmRSS");
    rt().block_on(async {
        let mut buf = String::new();
        let guard = guard();
        for i in 0..n {
            deliver(&s, &key(&mut buf, i), guard).await;
        }
    });
    let entries = s.entries();
    println!(
        "{n} {before} {} {entries} {}",
        status_kib("VmRSS"),
        status_kib("VmHWM")
    );
}

/// Claims and commits `keys` on `threads` threads (each its own slice); returns the wall time.
fn run(s: &Arc<MemoryStore>, keys: &Arc<Vec<Key>>, threads: usize) -> Duration {
    let start = Instant::now();
    let per = keys.len() / threads;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (s, keys) = (s.clone(), keys.clone());
            std::thread::spawn(move || {
                let guard = guard();
                rt().block_on(async {
                    for k in &keys[t * per..(t + 1) * per] {
                        deliver(&s, k, guard).await;
                    }
                })
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    start.elapsed()
}

/// Runs this program with `mode n` in a fresh process; returns its line's numbers.
fn child(mode: &str, n: u64) -> Vec<u64> {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args([mode, &n.to_string()])
        .output()
        .unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect()
}

fn row(name: &str, d: Duration, n: u64) {
    println!(
        "{name:<34} {:>10.0} {:>14.0}",
        d.as_nanos() as f64 / n as f64,
        n as f64 / d.as_secs_f64()
    );
}

fn table() {
    println!(
        "dedup store (pps_sidecar::dedup::memory::MemoryStore), mimalloc, capacity = ids, replay guard {}",
        if guard() { "on" } else { "off" }
    );
    println!(
        "{:<11} {:>10} {:>12} {:>12} {:>12} {:>10} {:>8}",
        "", "ids", "rss0 KiB", "rss KiB", "peak KiB", "entries", "B/id"
    );
    for (name, mode) in [("store", "mem"), ("moka alone", "moka-mem")] {
        for n in [100_000u64, 1_000_000] {
            let v = child(mode, n);
            let per = (v[2] - v[1]) as f64 * 1024.0 / n as f64;
            println!(
                "{name:<11} {:>10} {:>12} {:>12} {:>12} {:>10} {:>8.0}",
                v[0], v[1], v[2], v[4], v[3], per
            );
        }
    }

    let mut buf = String::new();
    let mut make = |range: Range<u64>| -> Arc<Vec<Key>> {
        Arc::new(range.map(|i| key(&mut buf, i)).collect())
    };
    let s = Arc::new(MemoryStore::new(FULL, DAY, Duration::from_secs(60)));
    timed_rounds(
        "claim + commit of a fresh id, store of capacity",
        |ids, threads| run(&s, &make(ids), threads as usize),
    );
    drop(s);

    let m: Moka = cache(FULL, DAY);
    timed_rounds(
        "moka alone: contains_key + insert of a fresh id, capacity",
        |ids, threads| moka_run(&m, ids, threads),
    );
}

/// Fills a cache of `FULL` ids, then times three rounds of fresh ids against it, on one thread and on two;
/// `run(ids, threads)` delivers `ids` and returns the wall time.
fn timed_rounds(title: &str, mut run: impl FnMut(Range<u64>, u64) -> Duration) {
    let fill = run(0..FULL, 1);
    println!();
    println!("{title} {FULL}");
    println!("{:<34} {:>10} {:>14}", "case", "ns/id", "ids/s");
    row("filling (1 thread, not yet full)", fill, FULL);
    for round in 0..3 {
        let base = FULL + round * 3 * TIMED;
        let one = run(base..base + TIMED, 1);
        row(&format!("full, 1 thread (round {})", round + 1), one, TIMED);
        let two = run(base + TIMED..base + 3 * TIMED, 2);
        row(
            &format!("full, 2 threads (round {}, wall)", round + 1),
            two,
            2 * TIMED,
        );
    }
}
