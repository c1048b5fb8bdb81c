//! A pass-through request, streamed to the app on a connection of its own and closed after the answer.
//!
//! The connection is never pooled: its head says `Connection: close`, and the sidecar closes it after the
//! answer. A pass-through body is unverified, and an app that answers without reading it (or reads it as
//! the next request) must never find those bytes at the start of a connection a delivery uses next.
//!
//! The app may answer before it has read the whole body (a 413, a redirect): each piece is written only
//! while the app has not started to answer, so neither side waits on the other's full socket buffer.

use std::io::ErrorKind;
use std::time::Duration;

use tokio::net::TcpStream;

use super::exchange::Failed;
use super::{App, AppFailure, Exchange};

/// A request whose head is with the app and whose body is being streamed.
pub struct Outgoing {
    stream: TcpStream,
    read_timeout: Duration,
    head_only: bool,
}

/// What became of a piece of the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// The app took it whole.
    Taken,
    /// The app started to answer (or closed) first: send no more, read its answer.
    Answered,
}

impl App {
    /// Connects afresh and sends `head` (a pass-through head, `Connection: close`). `head_only`: the
    /// request is a `HEAD`, whose answer has no body.
    pub async fn open(&self, head: &[u8], head_only: bool) -> Result<Outgoing, AppFailure> {
        let stream = self.connect().await?;
        let mut out = Outgoing {
            stream,
            read_timeout: self.read_timeout,
            head_only,
        };
        match out.send(head).await {
            Ok(_) => Ok(out),
            Err(f) => {
                log::warn!("app exchange failed: {}", f.what);
                Err(f.failure)
            }
        }
    }
}

impl Outgoing {
    /// Writes `data` (a piece of the body, already framed by the caller), each wait for the socket within
    /// the read timeout, unless the app starts to answer first.
    pub async fn body(&mut self, data: &[u8]) -> Result<Progress, AppFailure> {
        self.send(data).await.map_err(|f| {
            log::warn!("app exchange failed: {}", f.what);
            f.failure
        })
    }

    async fn send(&mut self, mut data: &[u8]) -> Result<Progress, Failed> {
        let stream = &self.stream;
        while !data.is_empty() {
            let ready = tokio::time::timeout(self.read_timeout, async {
                tokio::select! {
                    biased;
                    r = stream.readable() => r.map(|()| false),
                    w = stream.writable() => w.map(|()| true),
                }
            })
            .await
            .unwrap_or_else(|_| Err(ErrorKind::TimedOut.into()));
            match ready {
                Ok(false) => return Ok(Progress::Answered),
                Ok(true) => match stream.try_write(data) {
                    Ok(n) => data = &data[n..],
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => return Err(Failed::io(&e, "writing a pass-through request")),
                },
                Err(e) => return Err(Failed::io(&e, "writing a pass-through request")),
            }
        }
        Ok(Progress::Taken)
    }

    /// The app's answer head; its body follows from the exchange. The connection is closed with it.
    pub async fn answer(self) -> Result<Exchange, AppFailure> {
        Exchange::answer(self.stream, self.read_timeout, self.head_only)
            .await
            .map(|mut exchange| {
                exchange.keep_alive = false;
                exchange
            })
            .map_err(|f| {
                log::warn!("app exchange failed: {}", f.what);
                f.failure
            })
    }
}
