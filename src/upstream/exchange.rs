//! One exchange on one connection: the request out in one write, the answer's head and body read in
//! with a deadline on every read. The bytes are interpreted by `codec`; this file only moves them.

use std::io::{ErrorKind, IoSlice};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use pingora::{Error, ErrorType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::codec::{self, Chunked, Framing, Parsed, Step};
use super::{AppFailure, BodyLeft, Exchange};

/// Bodies up to this size are copied behind the head so that the request is one `write`; larger ones
/// go out with `writev` of both.
const COALESCE: usize = 16 * 1024;
/// Informational answers (100 Continue, 103 Early Hints) skipped before the final one, at most.
const MAX_INFORMATIONAL: usize = 8;
/// Room kept free in the read buffer before each read.
const READ_ROOM: usize = 4096;

/// A failed attempt. `unsent`: the connection was found closed before any byte of the request was
/// accepted, so the request may be tried on another connection (see the module header of `upstream`).
pub(super) struct Failed {
    pub failure: AppFailure,
    pub unsent: bool,
    pub what: &'static str,
}

impl Failed {
    pub(super) fn after_sending(failure: AppFailure, what: &'static str) -> Self {
        Self {
            failure,
            unsent: false,
            what,
        }
    }

    pub(super) fn io(e: &std::io::Error, what: &'static str) -> Self {
        let failure = if e.kind() == ErrorKind::TimedOut {
            AppFailure::Timeout
        } else {
            AppFailure::Unreachable
        };
        Self::after_sending(failure, what)
    }
}

impl Exchange {
    /// Sends the request on `stream` and reads up to the app's final response head.
    pub(super) async fn open(
        mut stream: TcpStream,
        mut head: Vec<u8>,
        body: &Bytes,
        read_timeout: Duration,
    ) -> Result<Exchange, Failed> {
        let rest: &[u8] = if body.len() <= COALESCE {
            head.extend_from_slice(body);
            &[]
        } else {
            body
        };
        write_request(&mut stream, &head, rest, read_timeout).await?;
        Exchange::answer(stream, read_timeout, false).await
    }

    /// Reads the app's final answer head from `stream`, whose request has been sent. `head_only`: the
    /// request was a `HEAD`, so the answer has no body whatever its framing headers say.
    pub(super) async fn answer(
        stream: TcpStream,
        read_timeout: Duration,
        head_only: bool,
    ) -> Result<Exchange, Failed> {
        let mut exchange = Exchange {
            stream,
            buf: BytesMut::with_capacity(READ_ROOM),
            header: None,
            status: 0,
            body: BodyLeft::Done,
            keep_alive: false,
            read_timeout,
        };
        for _ in 0..MAX_INFORMATIONAL {
            if exchange.read_head().await? {
                if head_only {
                    exchange.body = BodyLeft::Done;
                    exchange.keep_alive = false;
                }
                return Ok(exchange);
            }
        }
        Err(Failed::after_sending(
            AppFailure::Unreachable,
            "too many informational responses",
        ))
    }

    /// Reads one response head. `Ok(false)`: it was informational, the final one follows.
    async fn read_head(&mut self) -> Result<bool, Failed> {
        loop {
            // Nothing read yet (the usual first pass): straight to the read.
            if self.buf.is_empty() {
                self.fill_head().await?;
                continue;
            }
            let parsed = codec::parse_head(&self.buf)
                .map_err(|e| Failed::after_sending(AppFailure::Unreachable, e.what()))?;
            match parsed {
                Parsed::Partial => {}
                Parsed::Interim(len) => {
                    self.buf.advance(len);
                    return Ok(false);
                }
                Parsed::Final(len, head) => {
                    self.buf.advance(len);
                    self.status = head.status;
                    self.keep_alive = head.keep_alive;
                    self.header = Some(head.header);
                    self.body = match head.framing {
                        Framing::None | Framing::Length(0) => BodyLeft::Done,
                        Framing::Length(n) => BodyLeft::Length(n),
                        Framing::Chunked => BodyLeft::Chunked(Chunked::default()),
                        Framing::UntilClose => BodyLeft::UntilClose,
                    };
                    return Ok(true);
                }
            }
            self.fill_head().await?;
        }
    }

    /// Reads more of an answer head; the app closing before it is whole is a failure.
    async fn fill_head(&mut self) -> Result<(), Failed> {
        match self.fill().await {
            Ok(0) => Err(Failed::after_sending(
                AppFailure::Unreachable,
                "closed before answering",
            )),
            Ok(_) => Ok(()),
            Err(e) => Err(Failed::io(&e, "waiting for the answer")),
        }
    }

    /// The next piece of the response body; `None` at its end.
    pub(super) async fn next_chunk(&mut self) -> Result<Option<Bytes>, Box<Error>> {
        loop {
            match self.body {
                BodyLeft::Done => return Ok(None),
                BodyLeft::Length(left) => {
                    let data = self.take(left).await?;
                    let left = left - data.len() as u64;
                    self.body = if left == 0 {
                        BodyLeft::Done
                    } else {
                        BodyLeft::Length(left)
                    };
                    return Ok(Some(data));
                }
                BodyLeft::UntilClose => {
                    if self.buf.is_empty() && self.fill_body().await? == 0 {
                        self.body = BodyLeft::Done;
                        return Ok(None);
                    }
                    return Ok(Some(self.buf.split().freeze()));
                }
                BodyLeft::Chunked(mut decoder) => {
                    let step = decoder
                        .step(&self.buf)
                        .map_err(|e| bad_answer(ErrorType::InvalidHTTPHeader, e.what()))?;
                    self.body = BodyLeft::Chunked(decoder);
                    match step {
                        Step::Framing(n) => self.buf.advance(n),
                        Step::Data(n) => return Ok(Some(self.buf.split_to(n).freeze())),
                        Step::NeedMore => {
                            if self.fill_body().await? == 0 {
                                return Err(cut_short());
                            }
                        }
                        Step::Done(n) => {
                            self.buf.advance(n);
                            self.body = BodyLeft::Done;
                        }
                    }
                }
            }
        }
    }

    /// Up to `left` bytes of body data, at least one: what is buffered, or the next read.
    async fn take(&mut self, left: u64) -> Result<Bytes, Box<Error>> {
        if self.buf.is_empty() && self.fill_body().await? == 0 {
            return Err(cut_short());
        }
        let n = usize::try_from(left).map_or(self.buf.len(), |l| l.min(self.buf.len()));
        Ok(self.buf.split_to(n).freeze())
    }

    async fn fill_body(&mut self) -> Result<usize, Box<Error>> {
        self.fill().await.map_err(|e| {
            let kind = if e.kind() == ErrorKind::TimedOut {
                ErrorType::ReadTimedout
            } else {
                ErrorType::ReadError
            };
            Error::because(kind, "reading the app's answer", e).into_up()
        })
    }

    /// Reads what the app sent next into the buffer; 0 at the end of the stream.
    async fn fill(&mut self) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < READ_ROOM {
            self.buf.reserve(16 * 1024);
        }
        timed(self.read_timeout, self.stream.read_buf(&mut self.buf)).await
    }

    /// Reads the rest of the answer and drops it: whether it arrived whole (for a caller that does not
    /// relay it, such as a replay, but settles a claim on it).
    pub async fn drain(&mut self) -> bool {
        loop {
            match self.next_chunk().await {
                Ok(Some(_)) => {}
                Ok(None) => return true,
                Err(_) => return false,
            }
        }
    }

    /// The body was read to its end, nothing else is pending, and the app keeps the connection open.
    pub(super) fn reusable(&self) -> bool {
        self.keep_alive && matches!(self.body, BodyLeft::Done) && self.buf.is_empty()
    }
}

/// Writes `head` then `body`, within `limit`. Only a connection found closed before it accepted a single
/// byte counts as `unsent`: past that the app may have the request.
async fn write_request(
    stream: &mut TcpStream,
    head: &[u8],
    body: &[u8],
    limit: Duration,
) -> Result<(), Failed> {
    let mut accepted = 0;
    let written = timed(limit, write_all(stream, head, body, &mut accepted)).await;
    match written {
        Ok(()) => Ok(()),
        Err(e)
            if accepted == 0
                && matches!(
                    e.kind(),
                    ErrorKind::BrokenPipe
                        | ErrorKind::ConnectionReset
                        | ErrorKind::ConnectionAborted
                        | ErrorKind::NotConnected
                ) =>
        {
            Err(Failed {
                failure: AppFailure::Unreachable,
                unsent: true,
                what: "connection closed before the request was sent",
            })
        }
        Err(e) => Err(Failed::io(&e, "writing the request")),
    }
}

/// `write_all` of two slices, counting in `accepted` what the socket took.
async fn write_all(
    stream: &mut TcpStream,
    head: &[u8],
    body: &[u8],
    accepted: &mut usize,
) -> std::io::Result<()> {
    let (mut head, mut body) = (head, body);
    while !head.is_empty() || !body.is_empty() {
        let n = stream
            .write_vectored(&[IoSlice::new(head), IoSlice::new(body)])
            .await?;
        if n == 0 {
            return Err(ErrorKind::WriteZero.into());
        }
        *accepted += n;
        let from_head = n.min(head.len());
        head = &head[from_head..];
        body = &body[n - from_head..];
    }
    Ok(())
}

async fn timed<T>(
    limit: Duration,
    fut: impl Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| Err(ErrorKind::TimedOut.into()))
}

/// An error in the app's answer: Pingora answers the sender 502 when nothing was relayed yet.
fn bad_answer(etype: ErrorType, what: &'static str) -> Box<Error> {
    Error::explain(etype, what).into_up()
}

fn cut_short() -> Box<Error> {
    bad_answer(ErrorType::ConnectionClosed, "app body cut short")
}
