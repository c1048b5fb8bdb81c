//! The sidecar under test: the real `pps-sidecar` binary on free loopback ports, with a config written for
//! the test, started only once its admin endpoint and its listener answer.

use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use tokio::net::TcpStream;

use super::app::TestApp;
use super::client::{Resp, get, send};
use super::delivery::Delivery;
use super::process::{Proc, run};
use super::{SECRET, poll};

pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct free ports: all are held at once while they are picked, so the kernel cannot hand the
/// same one out twice (it did: a sidecar got the same port for its listener and its admin endpoint).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: [StdListener; N] = std::array::from_fn(|_| StdListener::bind("127.0.0.1:0").unwrap());
    held.map(|l| l.local_addr().unwrap().port())
}

/// `N` distinct free loopback addresses, picked as `free_ports` picks.
pub fn free_addrs<const N: usize>() -> [SocketAddr; N] {
    free_ports::<N>().map(|port| SocketAddr::from(([127, 0, 0, 1], port)))
}

/// The binary under test: this build's, or `PPS_SIDECAR_TEST_BINARY` (to watch a test fail on a build
/// without its fix).
pub fn binary() -> &'static str {
    static BINARY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BINARY.get_or_init(|| {
        std::env::var("PPS_SIDECAR_TEST_BINARY")
            .unwrap_or_else(|_| env!("CARGO_BIN_EXE_pps-sidecar").to_string())
    })
}

/// `pps-sidecar run` on `config`, logging at the level the tests read.
pub fn run_command(config: &Path) -> Command {
    let mut cmd = Command::new(binary());
    cmd.args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info");
    cmd
}

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// Whether a sidecar is serving: its admin endpoint answers `probe` with 200 and its listener accepts.
pub async fn serving(admin: SocketAddr, probe: &str, listen: SocketAddr) -> bool {
    matches!(get(admin, probe).await, Some(r) if r.status == 200) && accepts(listen).await
}

/// Whether `listen` takes a connection. The connection is then ended and its close waited for, so that
/// it no longer holds a place under `max_connections` when the caller's test begins.
async fn accepts(listen: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut conn) = TcpStream::connect(listen).await else {
        return false;
    };
    let _ = conn.shutdown().await;
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(super::PATIENCE, async {
        while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
    })
    .await;
    true
}

/// The real binary, running with a config written for this test.
pub struct Sidecar {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    // Declared before `dir`: the process is stopped and its log read before the folder goes.
    proc: Proc,
    pub dir: tempfile::TempDir,
}

impl Sidecar {
    /// Starts with the minimal config for `app` plus `extra` TOML (whole tables, appended), and waits until
    /// the admin listener answers.
    pub async fn start(app: &TestApp, extra: &str) -> Sidecar {
        Self::start_with(app.addr, extra, &[]).await
    }

    pub async fn start_with(app: SocketAddr, extra: &str, env: &[(&str, &str)]) -> Sidecar {
        let [addr, admin] = free_addrs();
        Self::start_at(addr, admin, app, extra, env).await
    }

    /// Starts on given addresses: a replica restarted where it ran before.
    pub async fn start_at(
        addr: SocketAddr,
        admin: SocketAddr,
        app: SocketAddr,
        extra: &str,
        env: &[(&str, &str)],
    ) -> Sidecar {
        let dir = tempfile::tempdir().unwrap();
        let base = format!(
            "[server]\nlisten = \"{addr}\"\nadmin_listen = \"{admin}\"\nthreads = 2\n\n[upstream]\naddress = \"{app}\"\nread_timeout_ms = 2000\n\n[auth.hmac]\nsecrets = [{{ value = \"{SECRET}\" }}]\n"
        );
        let mut merged: toml::Table = base.parse().unwrap();
        merge(&mut merged, extra.parse().expect("extra TOML"));
        let config = dir.path().join("sidecar.toml");
        std::fs::write(&config, toml::to_string(&merged).unwrap()).unwrap();
        let proc = Proc::spawn(
            "pps-sidecar",
            run_command(&config).envs(env.iter().copied()),
            dir.path(),
        );
        let s = Sidecar {
            addr,
            admin,
            proc,
            dir,
        };
        poll("the sidecar is healthy", || async {
            s.proc.assert_running();
            serving(s.admin, "/healthz", s.addr).await.then_some(())
        })
        .await;
        s
    }

    pub fn log(&self) -> String {
        self.proc.output()
    }

    /// The log, once it contains `needle` `n` times (access log lines are written just after the
    /// response).
    pub async fn log_with(&self, needle: &str, n: usize) -> String {
        self.proc.output_with(needle, n).await
    }

    pub async fn send(&self, d: &Delivery) -> Resp {
        send(self.addr, &d.bytes()).await
    }

    pub async fn admin_get(&self, path: &str) -> Resp {
        get(self.admin, path)
            .await
            .expect("the admin endpoint answers")
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        let r = self.admin_get("/metrics").await;
        assert_eq!(r.status, 200);
        r.text()
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Its exit status, once it has exited.
    pub fn exited(&self) -> Option<ExitStatus> {
        self.proc.exited()
    }
}

/// The value of one Prometheus line, such as `pps_sidecar_requests_total{outcome="duplicate"}`.
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')))
        .unwrap_or_else(|| panic!("{series} missing from:\n{text}"))
        .parse()
        .unwrap()
}

/// Deep-merges `extra` into `base`: tables merge, other values replace.
fn merge(base: &mut toml::Table, extra: toml::Table) {
    for (k, v) in extra {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(e)) => merge(b, e),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Runs the binary to completion with `args`; returns (exit code, stdout, stderr).
pub fn run_cli(args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    run(Command::new(binary())
        .args(args)
        .env_remove("PPS_WEBHOOK_SECRET")
        .envs(env.iter().copied()))
}
