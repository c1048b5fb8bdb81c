//! Time per delivery of the shared store's claim + commit (two Redis round trips: the claim script and the
//! commit script, each after the local store's own step), over plain TCP and over TLS to one local
//! `redis-server` listening on both. Fresh ids only, as the first copy of each event is.
//!
//! For each transport: sequential deliveries (one at a time: the latency a delivery pays) with the
//! median, p99 and mean, then `CONCURRENCY` deliveries at once on a 2-thread runtime (one multiplexed
//! connection, as in the sidecar): wall time per delivery and deliveries per second.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pps_sidecar::config::Config;
use pps_sidecar::dedup::memory::MemoryStore;
use pps_sidecar::dedup::redis::RedisStore;
use pps_sidecar::dedup::{Body, BodyDigest, DedupStore, Held, Key, StoreClaim};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DAY: Duration = Duration::from_secs(86_400);
const WARMUP: u64 = 2_000;
const SEQUENTIAL: u64 = 20_000;
const CONCURRENT: u64 = 100_000;
const CONCURRENCY: u64 = 32;

struct Redis(Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    let ok = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("openssl")
        .success();
    assert!(ok, "openssl {args:?}");
}

/// A CA and a server certificate for `redis.test`, as the tests make them.
fn test_ca(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=bench CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=redis.test",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ],
    );
    std::fs::write(dir.join("ext.cnf"), "subjectAltName = DNS:redis.test\n").unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ],
    );
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start_redis(dir: &Path, port: u16, tls_port: u16) -> Redis {
    let p = |f: &str| dir.join(f).display().to_string();
    let child = Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .args([
            "--tls-port",
            &tls_port.to_string(),
            "--tls-auth-clients",
            "no",
        ])
        .args([
            "--tls-cert-file",
            &p("server.pem"),
            "--tls-key-file",
            &p("server.key"),
            "--tls-ca-cert-file",
            &p("ca.pem"),
        ])
        .current_dir(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", tls_port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Redis(child)
}

fn store(dedup: &str) -> Arc<RedisStore> {
    let text = format!(
        "[upstream]\naddress = \"127.0.0.1:3000\"\n[auth.hmac]\nsecrets = [{{ value = \"x\" }}]\n[dedup]\nbackend = \"redis\"\nredis_prefix = \"bench:\"\n{dedup}"
    );
    let config = Config::parse(&text, Path::new("/bench/sidecar.toml")).expect("config");
    let redis = config.dedup.redis.as_ref().unwrap();
    let local = MemoryStore::new(1_000_000, DAY, Duration::from_secs(60));
    Arc::new(RedisStore::new(redis, DAY, Duration::from_secs(60), local))
}

/// Claims and commits a fresh id; the time it took.
async fn deliver(s: &RedisStore, run: &str, i: u64) -> Duration {
    let key = Key::new(Some("OU1243"), &format!("{run}-{i:016x}"));
    let body = Body {
        digest: BodyDigest::of(key.webhook_id().as_bytes()),
        guard: false,
    };
    let t = Instant::now();
    let StoreClaim::Acquired(token) = s.claim(&key, body, Duration::from_secs(1)).await else {
        panic!("a fresh id was refused: is Redis answering?")
    };
    s.commit(&Held { key, token, body }, 200).await;
    t.elapsed()
}

fn main() {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("dedup-redis-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    test_ca(&dir);
    let (port, tls_port) = (free_port(), free_port());
    let _redis = start_redis(&dir, port, tls_port);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let transports = [
        (
            "plain tcp",
            format!("redis_url = \"redis://127.0.0.1:{port}\"\n"),
        ),
        (
            "tls",
            format!(
                "redis_url = \"rediss://127.0.0.1:{tls_port}\"\nredis_ca_file = \"{}\"\nredis_tls_server_name = \"redis.test\"\n",
                dir.join("ca.pem").display()
            ),
        ),
    ];
    println!(
        "dedup store (pps_sidecar::dedup::redis::RedisStore), claim + commit of a fresh id, local redis-server {}",
        redis_version()
    );
    println!(
        "{:<10} {:>9} {:>9} {:>9} {:>9}   {:>14} {:>11}",
        "transport", "p50 us", "p99 us", "mean us", "max us", "x32 wall us/id", "ids/s x32"
    );
    for round in 0..2 {
        for (name, dedup) in &transports {
            let s = store(dedup);
            let run = format!("{}-{round}", name.replace(' ', "-"));
            let (mut times, wall) = rt.block_on(async {
                for i in 0..WARMUP {
                    deliver(&s, &format!("{run}-w"), i).await;
                }
                let mut times = Vec::with_capacity(SEQUENTIAL as usize);
                for i in 0..SEQUENTIAL {
                    times.push(deliver(&s, &run, i).await);
                }
                let t = Instant::now();
                let tasks: Vec<_> = (0..CONCURRENCY)
                    .map(|w| {
                        let (s, run) = (s.clone(), format!("{run}-c{w}"));
                        tokio::spawn(async move {
                            for i in 0..CONCURRENT / CONCURRENCY {
                                deliver(&s, &run, i).await;
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await.unwrap();
                }
                (times, t.elapsed())
            });
            times.sort();
            let us = |d: Duration| d.as_secs_f64() * 1e6;
            let mean = times.iter().sum::<Duration>() / times.len() as u32;
            let per = wall / CONCURRENT as u32;
            println!(
                "{:<10} {:>9.1} {:>9.1} {:>9.1} {:>9.1}   {:>14.1} {:>11.0}",
                name,
                us(times[times.len() / 2]),
                us(times[times.len() * 99 / 100]),
                us(mean),
                us(*times.last().unwrap()),
                us(per),
                CONCURRENT as f64 / wall.as_secs_f64()
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn redis_version() -> String {
    let out = Command::new("redis-server")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    out.split_whitespace()
        .find(|w| w.starts_with("v="))
        .unwrap_or("v=?")
        .to_string()
}
