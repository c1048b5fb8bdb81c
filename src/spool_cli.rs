//! `pps-sidecar spool list|show|replay|drop`. `list`, `show` and `drop` work on the directory itself;
//! `replay` asks the running sidecar, which owns the dedup store and the connections to the app.

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use pps_sidecar::config::Config;
use pps_sidecar::spool::{ReplayRequest, ReplayedEntry, Store};
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
                    shown(&m.verified),
                    shown(m.key.tenant().unwrap_or("-")),
                    shown(&m.topic),
                    shown(m.key.webhook_id()),
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
                shown(&m.verified),
                shown(m.key.tenant().unwrap_or("-")),
                shown(&m.topic),
                shown(m.key.webhook_id())
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

/// Posts the request to the admin listener and prints its answer, one line per entry: `ID RESULT
/// [STATUS]`. Exit 0 when every entry was delivered or found acknowledged already.
fn replay(admin: SocketAddr, req: &ReplayRequest) -> ExitCode {
    let url = format!("http://{}/spool/replay", loopback(admin));
    let asked = async {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(REPLAY_WAIT)
            .no_proxy()
            .build()?;
        let body = serde_json::to_vec(req).expect("a replay request serializes");
        let resp = client
            .post(&url)
            .header("Content-Type", "application/json")
            .body(body)
            .send()
            .await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        Ok::<_, reqwest::Error>((status, body))
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a current-thread runtime starts");
    match runtime.block_on(asked) {
        Ok((status, body)) if status.is_success() => {
            let Ok(entries) = serde_json::from_slice::<Vec<ReplayedEntry>>(&body) else {
                eprintln!("error: the sidecar's answer is not a replay result");
                return ExitCode::from(1);
            };
            for e in &entries {
                let status = e.status.map(|s| format!(" {s}")).unwrap_or_default();
                println!("{} {}{status}", e.id, e.result.label());
            }
            if entries.iter().all(ReplayedEntry::done) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Ok((status, body)) => {
            let mut shown = String::new();
            pps_sidecar::logging::quote(&mut shown, String::from_utf8_lossy(&body).trim_end());
            eprintln!("error: the sidecar answered {}: {shown}", status.as_u16());
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

/// `v`, a value that came from a sender, quoted and escaped as in the logs.
fn shown(v: &str) -> String {
    let mut out = String::with_capacity(v.len() + 2);
    pps_sidecar::logging::quote(&mut out, v);
    out
}

fn time(ms: u64) -> String {
    format_rfc3339(&Timestamp {
        unix: (ms / 1000) as i64,
        frac: String::new(),
    })
}
