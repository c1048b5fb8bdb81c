//! The app behind the sidecar: a real HTTP/1.1 server on loopback that records what it receives and answers
//! as the test tells it to, including the answers a real app should never give.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use super::PATIENCE;
use super::http::{answer, header, read_body, read_headers, with_body};

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
        header(&self.headers, name)
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
                let head = b"HTTP/1.1 200 OK\r\nX-App: yes\r\n".to_vec();
                let resp = with_body(head, &large_body(len), chunked);
                if reader.get_mut().write_all(&resp).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let resp = answer(
            status,
            "text/plain",
            "X-App: yes\r\n",
            &format!("app says {status}\n"),
        );
        if reader.get_mut().write_all(&resp).await.is_err() {
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
