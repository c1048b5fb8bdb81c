//! The client that talks to the sidecar: raw bytes on a kept-alive connection, so a test can send what an
//! HTTP library would refuse to (duplicate headers, bad framing) and see interim answers and closes.

use std::net::SocketAddr;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::PATIENCE;
use super::delivery::Delivery;
use super::http::{header, read_body, read_headers};

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
        header(&self.headers, name)
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
        Self::try_open(addr)
            .await
            .unwrap_or_else(|| panic!("connect to {addr}"))
    }

    /// `None` if nothing listens at `addr` (yet).
    pub async fn try_open(addr: SocketAddr) -> Option<Conn> {
        let s = TcpStream::connect(addr).await.ok()?;
        s.set_nodelay(true).unwrap();
        Some(Conn {
            reader: BufReader::new(s),
        })
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.reader.get_mut().write_all(bytes).await.unwrap();
    }

    /// Reads the next final response; `None` if the connection closed first.
    pub async fn read(&mut self) -> Option<Resp> {
        let mut interim = Vec::new();
        loop {
            let (status, headers) = self.read_head().await?;
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
        Some(self.read_head().await?.0)
    }

    /// Status line and headers of the next response; `None` if the connection closed first.
    async fn read_head(&mut self) -> Option<(u16, Vec<(String, String)>)> {
        let mut line = String::new();
        let n = tokio::time::timeout(PATIENCE, self.reader.read_line(&mut line))
            .await
            .expect("no response in time")
            .ok()?;
        if n == 0 {
            return None;
        }
        let status = line.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, read_headers(&mut self.reader).await?))
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

pub async fn send(addr: SocketAddr, req: &[u8]) -> Resp {
    Conn::open(addr).await.send(req).await
}

/// `GET path` on a connection of its own; `None` if nothing listens at `addr` or it closed without an answer.
pub async fn get(addr: SocketAddr, path: &str) -> Option<Resp> {
    let mut c = Conn::try_open(addr).await?;
    c.write(format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes())
        .await;
    c.read().await
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

/// Sends raw bytes, half-closes, and reads whatever comes back until the sidecar closes.
pub async fn raw(addr: SocketAddr, req: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(req).await;
    let _ = s.shutdown().await;
    let mut out = Vec::new();
    tokio::time::timeout(PATIENCE, s.read_to_end(&mut out))
        .await
        .expect("the sidecar answers or closes in time")
        .ok();
    out
}

/// The status of the first answer in `answer`, if there is one.
pub fn status_of(answer: &[u8]) -> Option<u16> {
    let line = answer.split(|b| *b == b'\r').next()?;
    std::str::from_utf8(line)
        .ok()?
        .split(' ')
        .nth(1)?
        .parse()
        .ok()
}
