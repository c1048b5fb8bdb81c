//! Test harness: the real `pps-sidecar` binary on loopback, a real HTTP/1.1 server as the app, and a raw
//! HTTP client that can send what a browser library would refuse to (duplicate headers, bad framing).
#![allow(dead_code)]

pub mod oidc;

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

pub const SECRET: &str = "whsec-test-0f9e8d7c6b5a";
/// Generous bound on waiting for a condition; reaching it means the test failed, not that it was slow.
pub const PATIENCE: Duration = Duration::from_secs(20);

// ---- the app --------------------------------------------------------------------------------

/// A request as the app received it, header names in their wire case.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Which of the app's connections carried it, numbered from 0 in order of acceptance.
    pub conn: usize,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    /// Value of the header whose wire name is exactly `name`.
    pub fn exact(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// Values of the header `name`, any case.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn get(&self, name: &str) -> Option<&str> {
        self.all(name).into_iter().next()
    }
}

/// What the app does with the next requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    Answer(u16),
    /// Wait until `TestApp::release` is called, then answer.
    Hold(u16),
    /// Answer 200 with `len` bytes of `large_body(len)`, chunked (16 KiB chunks) or with a Content-Length.
    Large {
        len: usize,
        chunked: bool,
    },
    /// Answer with exactly these bytes, then close the connection if `close`.
    Raw {
        answer: &'static [u8],
        close: bool,
    },
    /// Start an answer, then send one more byte of its head every 50 ms, forever: never silent long
    /// enough for a read timeout, never done.
    Drip,
    /// Read the request, then close the connection without answering.
    Hang,
    Close,
}

struct AppState {
    requests: Mutex<Vec<Recorded>>,
    behaviour: Mutex<Behaviour>,
    count: watch::Sender<usize>,
    gate: watch::Sender<bool>,
}

pub struct TestApp {
    pub addr: SocketAddr,
    state: Arc<AppState>,
}

impl TestApp {
    pub async fn start() -> TestApp {
        Self::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    pub async fn start_on(addr: SocketAddr) -> TestApp {
        let listener = TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(AppState {
            requests: Mutex::new(Vec::new()),
            behaviour: Mutex::new(Behaviour::Answer(200)),
            count: watch::channel(0).0,
            gate: watch::channel(false).0,
        });
        let st = state.clone();
        tokio::spawn(async move {
            for conn in 0.. {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve_conn(stream, conn, st.clone()));
            }
        });
        TestApp { addr, state }
    }

    pub fn set(&self, b: Behaviour) {
        *self.state.behaviour.lock().unwrap() = b;
    }

    pub fn release(&self) {
        self.state.gate.send_replace(true);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        *self.state.count.borrow()
    }

    /// Waits until the app has received at least `n` requests.
    pub async fn wait_for(&self, n: usize) {
        let mut rx = self.state.count.subscribe();
        tokio::time::timeout(PATIENCE, rx.wait_for(|c| *c >= n))
            .await
            .unwrap_or_else(|_| panic!("app never received {n} requests"))
            .unwrap();
    }
}

async fn serve_conn(stream: TcpStream, conn: usize, state: Arc<AppState>) {
    let mut reader = BufReader::new(stream);
    loop {
        let Some(mut req) = read_request(&mut reader).await else {
            return;
        };
        req.conn = conn;
        state.requests.lock().unwrap().push(req);
        state.count.send_modify(|c| *c += 1);
        let behaviour = *state.behaviour.lock().unwrap();
        let status = match behaviour {
            Behaviour::Answer(s) => s,
            Behaviour::Hold(s) => {
                let mut gate = state.gate.subscribe();
                let _ = gate.wait_for(|open| *open).await;
                s
            }
            Behaviour::Hang => {
                // Never answer; keep the connection open until the peer gives up.
                let mut sink = Vec::new();
                let _ = reader.read_to_end(&mut sink).await;
                return;
            }
            Behaviour::Close => return,
            Behaviour::Drip => {
                let stream = reader.get_mut();
                if stream
                    .write_all(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                    .await
                    .is_err()
                {
                    return;
                }
                loop {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if stream.write_all(b"a").await.is_err() {
                        return;
                    }
                }
            }
            Behaviour::Raw { answer, close } => {
                if reader.get_mut().write_all(answer).await.is_err() || close {
                    return;
                }
                continue;
            }
            Behaviour::Large { len, chunked } => {
                let body = large_body(len);
                let mut resp = b"HTTP/1.1 200 OK\r\nX-App: yes\r\n".to_vec();
                if chunked {
                    resp.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
                    for piece in body.chunks(16 * 1024) {
                        resp.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                        resp.extend_from_slice(piece);
                        resp.extend_from_slice(b"\r\n");
                    }
                    resp.extend_from_slice(b"0\r\n\r\n");
                } else {
                    resp.extend_from_slice(format!("Content-Length: {len}\r\n\r\n").as_bytes());
                    resp.extend_from_slice(&body);
                }
                if reader.get_mut().write_all(&resp).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let body = format!("app says {status}\n");
        let resp = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: text/plain\r\nX-App: yes\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if reader.get_mut().write_all(resp.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// A recognisable body of `len` bytes.
pub fn large_body(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 % 251) as u8).collect()
}

/// Reads one HTTP/1.1 request (Content-Length or chunked body). `None` at end of stream.
async fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Recorded> {
    let mut line = String::new();
    if reader.read_line(&mut line).await.ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let headers = read_headers(reader).await?;
    let body = read_body(reader, &headers, false).await?;
    Some(Recorded {
        conn: 0,
        method,
        path,
        headers,
        body,
    })
}

async fn read_headers<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
) -> Option<Vec<(String, String)>> {
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            return Some(headers);
        }
        let (k, v) = line.split_once(':')?;
        headers.push((k.to_string(), v.trim().to_string()));
    }
}

async fn read_body<R: tokio::io::AsyncBufRead + Unpin>(
    reader: &mut R,
    headers: &[(String, String)],
    until_close: bool,
) -> Option<Vec<u8>> {
    let find = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(n))
            .map(|(_, v)| v.clone())
    };
    if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).await.ok()?;
            let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0; n + 2];
            reader.read_exact(&mut chunk).await.ok()?;
            if n == 0 {
                return Some(body);
            }
            body.extend_from_slice(&chunk[..n]);
        }
    }
    if let Some(len) = find("content-length") {
        let mut body = vec![0; len.parse().ok()?];
        reader.read_exact(&mut body).await.ok()?;
        return Some(body);
    }
    let mut body = Vec::new();
    if until_close {
        reader.read_to_end(&mut body).await.ok()?;
    }
    Some(body)
}

// ---- the client -----------------------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Interim (1xx) statuses seen before the final one.
    pub interim: Vec<u16>,
}

impl Resp {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A connection to the sidecar, kept alive across requests.
pub struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        Conn {
            reader: BufReader::new(s),
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).await.unwrap();
    }

    /// Reads the next final response; `None` if the connection closed first.
    pub async fn read(&mut self) -> Option<Resp> {
        let mut interim = Vec::new();
        loop {
            let mut line = String::new();
            let n = tokio::time::timeout(PATIENCE, self.reader.read_line(&mut line))
                .await
                .expect("no response in time")
                .ok()?;
            if n == 0 {
                return None;
            }
            let status: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
            let headers = read_headers(&mut self.reader).await?;
            if (100..200).contains(&status) {
                interim.push(status);
                continue;
            }
            let body = if status == 204 || status == 304 {
                Vec::new()
            } else {
                read_body(&mut self.reader, &headers, true).await?
            };
            return Some(Resp {
                status,
                headers,
                body,
                interim,
            });
        }
    }

    /// Reads one response head and returns its status, interim or not.
    pub async fn read_interim(&mut self) -> Option<u16> {
        let mut line = String::new();
        tokio::time::timeout(PATIENCE, self.reader.read_line(&mut line))
            .await
            .expect("no response in time")
            .ok()?;
        let status = line.split_whitespace().nth(1)?.parse().ok()?;
        read_headers(&mut self.reader).await?;
        Some(status)
    }

    pub async fn send(&mut self, req: &[u8]) -> Resp {
        self.write(req).await;
        self.read()
            .await
            .expect("connection closed without a response")
    }

    /// Whether the sidecar closed the connection (reads end of stream).
    pub async fn is_closed(&mut self) -> bool {
        let mut buf = [0u8; 1];
        matches!(
            tokio::time::timeout(PATIENCE, self.reader.read(&mut buf)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

/// Opens `n` connections, spread over `targets` in turn, and writes the whole delivery on each: copies of
/// one event in flight at the same time.
pub async fn send_copies(targets: &[SocketAddr], d: &Delivery, n: usize) -> Vec<Conn> {
    let mut conns = Vec::new();
    for i in 0..n {
        let mut c = Conn::open(targets[i % targets.len()]).await;
        c.write(&d.bytes()).await;
        conns.push(c);
    }
    conns
}

/// Polls `check` until it holds; reaching `PATIENCE` fails the test (it bounds, it does not time).
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub async fn send(addr: SocketAddr, req: &[u8]) -> Resp {
    Conn::open(addr).await.send(req).await
}

/// A Pitchpoint delivery, signed unless told otherwise.
#[derive(Clone)]
pub struct Delivery {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub chunked: bool,
}

impl Delivery {
    pub fn new(body: impl Into<Vec<u8>>) -> Delivery {
        let body = body.into();
        let sig = pps_sidecar::auth::hmac::sign(SECRET.as_bytes(), &body);
        Delivery {
            method: "POST".into(),
            path: "/webhooks".into(),
            headers: vec![
                ("Content-Type".into(), "application/json".into()),
                ("X-Pps-Topic".into(), "orders/placed".into()),
                ("X-Pps-Sub-Topic".into(), "product:adv/adv-120".into()),
                ("X-Pps-Tenant-Id".into(), "OU1243".into()),
                ("X-Pps-Webhook-Id".into(), uuid::Uuid::new_v4().to_string()),
                (
                    "X-Pps-Triggered-At".into(),
                    "2024-01-1T10:00:00.7777748Z".into(),
                ),
                ("X-Pps-Hmac-Sha256".into(), sig),
            ],
            body,
            chunked: false,
        }
    }

    pub fn json() -> Delivery {
        Delivery::new(r#"{"order":{"id":1001,"total":"12.50"}}"#)
    }

    pub fn id(&self) -> String {
        self.header("X-Pps-Webhook-Id").unwrap().to_string()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Replaces every header `name` with `value` (`None` removes it).
    pub fn set(mut self, name: &str, value: Option<&str>) -> Delivery {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        if let Some(v) = value {
            self.headers.push((name.into(), v.into()));
        }
        self
    }

    /// Adds another `name` header, keeping the existing ones.
    pub fn add(mut self, name: &str, value: &str) -> Delivery {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn sign_with(self, secret: &str) -> Delivery {
        let sig = pps_sidecar::auth::hmac::sign(secret.as_bytes(), &self.body);
        self.set("X-Pps-Hmac-Sha256", Some(&sig))
    }

    pub fn bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "{} {} HTTP/1.1\r\nHost: sidecar.test\r\n",
            self.method, self.path
        );
        for (k, v) in &self.headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        let mut out = out.into_bytes();
        if self.chunked {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            for piece in self.body.chunks(16 * 1024) {
                out.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
                out.extend_from_slice(piece);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        } else {
            out.extend_from_slice(
                format!("Content-Length: {}\r\n\r\n", self.body.len()).as_bytes(),
            );
            out.extend_from_slice(&self.body);
        }
        out
    }
}

// ---- the sidecar ----------------------------------------------------------------------------

pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct free ports: all are held at once while they are picked, so the kernel cannot hand the
/// same one out twice (it did: a sidecar got the same port for its listener and its admin endpoint).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: [StdListener; N] = std::array::from_fn(|_| StdListener::bind("127.0.0.1:0").unwrap());
    held.map(|l| l.local_addr().unwrap().port())
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_pps-sidecar")
}

pub fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// The real binary, running with a config written for this test.
pub struct Sidecar {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    child: Child,
    pub dir: tempfile::TempDir,
}

impl Sidecar {
    /// Starts with the minimal config for `app` plus `extra` TOML (whole tables, appended), and waits until
    /// the admin listener answers.
    pub async fn start(app: &TestApp, extra: &str) -> Sidecar {
        Self::start_with(app.addr, extra, &[]).await
    }

    pub async fn start_with(app: SocketAddr, extra: &str, env: &[(&str, &str)]) -> Sidecar {
        let dir = tempfile::tempdir().unwrap();
        let [port, admin_port] = free_ports();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
        let base = format!(
            "[server]\nlisten = \"{addr}\"\nadmin_listen = \"{admin}\"\nthreads = 2\n\n[upstream]\naddress = \"{app}\"\nread_timeout_ms = 2000\n\n[auth.hmac]\nsecrets = [{{ value = \"{SECRET}\" }}]\n"
        );
        let mut merged: toml::Table = base.parse().unwrap();
        merge(&mut merged, extra.parse().expect("extra TOML"));
        let toml = toml::to_string(&merged).unwrap();
        let config = dir.path().join("sidecar.toml");
        std::fs::write(&config, toml).unwrap();
        let log = std::fs::File::create(dir.path().join("sidecar.log")).unwrap();
        let child = Command::new(binary())
            .args(["run", "--config"])
            .arg(&config)
            .envs(env.iter().copied())
            .env("RUST_LOG", "info")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start pps-sidecar");
        let mut s = Sidecar {
            addr,
            admin,
            child,
            dir,
        };
        s.wait_healthy().await;
        s
    }

    async fn wait_healthy(&mut self) {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("pps-sidecar exited with {status}:\n{}", self.log());
            }
            let ready = async {
                let mut c = Conn {
                    reader: BufReader::new(TcpStream::connect(self.admin).await.ok()?),
                };
                c.write(b"GET /healthz HTTP/1.1\r\nHost: a\r\n\r\n").await;
                c.read().await
            };
            if let Some(r) = ready.await
                && r.status == 200
                && TcpStream::connect(self.addr).await.is_ok()
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "sidecar not healthy in time:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sidecar.log")).unwrap_or_default()
    }

    /// The log, once it contains `needle` `n` times (access log lines are written just after the
    /// response).
    pub async fn log_with(&self, needle: &str, n: usize) -> String {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        loop {
            let log = self.log();
            if log.matches(needle).count() >= n {
                return log;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "log never showed {needle}:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn send(&self, d: &Delivery) -> Resp {
        send(self.addr, &d.bytes()).await
    }

    pub async fn admin_get(&self, path: &str) -> Resp {
        send(
            self.admin,
            format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let _ = writeln!(std::io::stderr(), "---- sidecar log ----\n{}", self.log());
        }
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
    let out = Command::new(binary())
        .args(args)
        .env_remove("PPS_WEBHOOK_SECRET")
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
