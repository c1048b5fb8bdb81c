//! Times HMAC-SHA256 over a 1 MiB buffer, exactly as `pps_sidecar::auth::hmac::verify` computes it
//! (`Hmac::<Sha256>::new_from_slice(secret)`, one `update` with the whole body, `verify_slice`), for about
//! `SECONDS` seconds (default 3), and prints the rate in MB/s (10^6 bytes, like `openssl speed`).
//!
//! Usage: hmac-rate [SECONDS] [BODY_BYTES]

use std::hint::black_box;
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;

fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let size: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1 << 20);
    let secret = b"bench-secret-0123456789abcdef";
    let body: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();

    let mac_of = |body: &[u8]| {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("any key length");
        mac.update(body);
        mac.finalize().into_bytes()
    };
    let expected = mac_of(&body);

    // Warm up (page in the buffer, settle the clock), then time whole verifications.
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(300) {
        black_box(mac_of(black_box(&body)));
    }
    let budget = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let mut n: u64 = 0;
    while start.elapsed() < budget {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("any key length");
        mac.update(black_box(&body));
        assert!(mac.verify_slice(black_box(&expected)).is_ok());
        n += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let mbps = (n as f64 * size as f64) / secs / 1e6;
    println!(
        "hmac-rate: {n} x HMAC-SHA256 over {size} bytes in {secs:.3} s = {mbps:.1} MB/s ({:.3} ms per body)",
        secs * 1e3 / n as f64
    );
    println!("HMAC_MBPS={mbps:.1}");
}
