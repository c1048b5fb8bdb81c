//! `pps-sidecar spool list|show|replay|drop`. `list`, `show` and `drop` work on the directory itself;
//! `replay` asks the running sidecar, which owns the dedup store and the connections to the app.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

use pps_sidecar::config::Config;
use pps_sidecar::spool::{ReplayRequest, Store};
use pps_sidecar::timefmt::{Timestamp, format_rfc3339};

use super::SpoolCommand;

/// A replay of many entries, each within the app's timeouts, may take long; past this the CLI gives up
/// waiting (the sidecar carries on).
const REPLAY_WAIT: Duration = Duration::from_secs(600);

pub fn run(c: &Config, cmd: SpoolCommand) -> ExitCode {
    let Some(cfg) = &c.spool else {
        eprintln!(
            "error: {}: key `spool.dir`: not set, there is no spool",
            c.path.display()
        );
        return ExitCode::from(2);
    };
    let store = Store::new(cfg);
    match cmd {
        SpoolCommand::List => {
            for l in store.list() {
                let m = &l.meta;
                println!(
                    "{} {} {} {} tenant={} topic={} webhook_id={} bytes={}",
                    l.id,
                    time(m.time_ms),
                    m.status,
                    m.verified,
                    m.key.tenant().unwrap_or("-"),
                    m.topic,
                    m.key.webhook_id(),
                    l.bytes
                );
            }
            ExitCode::SUCCESS
        }
        SpoolCommand::Show { id } => show(&store, &id),
        SpoolCommand::Drop { ids } => {
            let mut code = ExitCode::SUCCESS;
            for id in ids {
                if store.remove(&id) {
                    println!("{id} dropped");
                } else {
                    eprintln!("{id} missing");
                    code = ExitCode::from(1);
                }
            }
            code
        }
        SpoolCommand::Replay { ids, all } => {
            if ids.is_empty() && !all {
                eprintln!("error: name the entries to replay, or --all");
                return ExitCode::from(2);
            }
            replay(c.server.admin_listen, &ReplayRequest { ids, all })
        }
    }
}

fn show(store: &Store, id: &str) -> ExitCode {
    match store.read(id) {
        Ok(e) => {
            let m = &e.meta;
            println!(
                "id: {}\ntime: {}\napp status: {}\nverified: {}\ntenant: {}\ntopic: {}\nwebhook id: {}\n",
                e.id,
                time(m.time_ms),
                m.status,
                m.verified,
                m.key.tenant().unwrap_or("-"),
                m.topic,
                m.key.webhook_id()
            );
            let mut out = std::io::stdout().lock();
            let _ = out.write_all(&e.head);
            let _ = out.write_all(&e.body);
            let _ = out.write_all(b"\n");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: entry {id}: {}", e.kind());
            ExitCode::from(1)
        }
    }
}

/// Posts the request to the admin listener and prints its answer: one line per entry. Exit 0 when every
/// entry was delivered or found acknowledged already.
fn replay(admin: SocketAddr, req: &ReplayRequest) -> ExitCode {
    let body = serde_json::to_vec(req).expect("a request serializes");
    match post(loopback(admin), "/spool/replay", &body) {
        Ok((200, text)) => {
            print!("{text}");
            let all_done = text
                .lines()
                .all(|l| l.contains(" delivered") || l.contains(" duplicate"));
            if all_done {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Ok((status, text)) => {
            eprintln!("error: the sidecar answered {status}: {}", text.trim_end());
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: cannot reach the sidecar's admin listener at {admin}: {e}");
            ExitCode::from(1)
        }
    }
}

/// The admin listener's address as reached from this host: a wildcard means loopback.
fn loopback(admin: SocketAddr) -> SocketAddr {
    let ip = match admin.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, admin.port())
}

/// One HTTP/1.1 POST, the connection closed after it; (status, body).
fn post(addr: SocketAddr, path: &str, body: &[u8]) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(REPLAY_WAIT))?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(whole) = complete(&raw) {
            return Ok(whole);
        }
    }
    complete(&raw).ok_or_else(|| std::io::Error::other("the answer was cut short"))
}

/// The answer, once its head and its `Content-Length` of body are there.
fn complete(raw: &[u8]) -> Option<(u16, String)> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    let body = raw.get(end..end + len)?;
    Some((status, String::from_utf8_lossy(body).into_owned()))
}

fn time(ms: u64) -> String {
    format_rfc3339(&Timestamp {
        unix: (ms / 1000) as i64,
        frac: String::new(),
    })
}
