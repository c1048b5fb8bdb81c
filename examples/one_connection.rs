//! The one-connection load for `bench/run` (rows G-*): signed deliveries sent one after another on one
//! kept-alive connection, each timed on the monotonic clock, with blocking I/O and no event loop.
//!
//! wrk times with `gettimeofday` around its event loop, and at one connection its own tail dominates: against
//! nginx `return 200` it reports a p99 of about 350 us where this client measures about 125 us
//! (bench/README.md, the run of `df2f64c`). The rows at one connection compare latencies, so their client
//! has to add as little as it can. The requests are the ones `bench/sign.lua` builds: the same headers, a
//! fresh `X-Pps-Webhook-Id` per request (`PREFIX-0000-4000-8000-COUNTER`), and the given body and
//! signature. It prints the `BENCH_RESULT` line that `bench/sign.lua` prints, so the bench reads both alike.
//!
//! ```sh
//! cargo build --release --example one_connection
//! target/release/examples/one_connection PORT SECONDS BODY_FILE SIGNATURE PREFIX
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [port, secs, body, sig, prefix] = args.as_slice() else {
        eprintln!("usage: one_connection PORT SECONDS BODY_FILE SIGNATURE PREFIX");
        return ExitCode::from(2);
    };
    let (Ok(port), Ok(secs)) = (port.parse::<u16>(), secs.parse::<u64>()) else {
        eprintln!("one_connection: PORT and SECONDS must be numbers");
        return ExitCode::from(2);
    };
    let body = match std::fs::read(body) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("one_connection: {body}: {e}");
            return ExitCode::from(2);
        }
    };
    match run(port, Duration::from_secs(secs), &body, sig, prefix) {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("one_connection: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Sends deliveries for `length`; the `BENCH_RESULT` line of what was measured.
fn run(
    port: u16,
    length: Duration,
    body: &[u8],
    sig: &str,
    prefix: &str,
) -> std::io::Result<String> {
    let mut conn = TcpStream::connect(("127.0.0.1", port))?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let head = format!(
        "POST /webhooks HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n\
         X-Pps-Topic: orders/placed\r\nX-Pps-Sub-Topic: product:adv/adv-120\r\nX-Pps-Tenant-Id: OU1243\r\n\
         X-Pps-Triggered-At: 2024-01-1T10:00:00.7777748Z\r\nX-Pps-Hmac-Sha256: {sig}\r\n\
         Content-Length: {}\r\nX-Pps-Webhook-Id: {prefix}-0000-4000-8000-",
        body.len()
    );
    let mut request = Vec::with_capacity(head.len() + 16 + body.len());
    let mut answer = vec![0u8; 64 * 1024];
    let mut micros = Vec::with_capacity(1 << 20);
    let (mut bytes, mut non2xx) = (0u64, 0u64);
    let started = Instant::now();
    for id in 0u64.. {
        if started.elapsed() >= length {
            break;
        }
        request.clear();
        request.extend_from_slice(head.as_bytes());
        write!(request, "{id:012x}\r\n\r\n")?;
        request.extend_from_slice(body);
        let sent = Instant::now();
        conn.write_all(&request)?;
        let (status, len) = read_answer(&mut conn, &mut answer)?;
        micros.push(sent.elapsed().as_micros() as u64);
        bytes += len as u64;
        non2xx += u64::from(!(200..300).contains(&status));
    }
    let elapsed = started.elapsed();
    if micros.is_empty() {
        return Err(std::io::Error::other(
            "no request completed in the time given",
        ));
    }
    micros.sort_unstable();
    let at = |p: f64| micros[((micros.len() as f64 * p / 100.0) as usize).min(micros.len() - 1)];
    let mean = micros.iter().sum::<u64>() as f64 / micros.len() as f64;
    Ok(format!(
        "BENCH_RESULT requests={} duration_us={} bytes={bytes} connect=0 read=0 write=0 timeout=0 \
         non2xx={non2xx} p50_us={} p90_us={} p99_us={} max_us={} mean_us={mean:.1}",
        micros.len(),
        elapsed.as_micros(),
        at(50.0),
        at(90.0),
        at(99.0),
        micros[micros.len() - 1],
    ))
}

/// Reads one answer whole (a head with `Content-Length`, as the bench's servers send); its status and
/// length. The bench's answers are small: one larger than the buffer is an error, not a resize.
fn read_answer(conn: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<(u16, usize)> {
    let mut got = 0;
    loop {
        if got == buf.len() {
            return Err(std::io::Error::other("an answer larger than 64 KiB"));
        }
        let n = conn.read(&mut buf[got..])?;
        if n == 0 {
            return Err(std::io::Error::other("the server closed the connection"));
        }
        got += n;
        let Some(end) = buf[..got].windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = std::str::from_utf8(&buf[..end]).map_err(std::io::Error::other)?;
        let status = head
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other("no status line"))?;
        let length = head
            .lines()
            .find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length")
                    .then(|| value.trim().parse::<usize>().ok())?
            })
            .ok_or_else(|| std::io::Error::other("an answer without Content-Length"))?;
        if got >= end + 4 + length {
            return Ok((status, got));
        }
    }
}
