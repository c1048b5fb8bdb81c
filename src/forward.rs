//! One exchange with the app: a buffered delivery out, the app's answer back.
//!
//! Deliveries are verified before a byte goes upstream, so their bodies are read whole in
//! `request_filter`, and Pingora's proxy loop can replay such a body only from its 64 KiB retry buffer.
//! Deliveries are therefore sent here, by a small HTTP/1.1 client of the sidecar's own: the head and the body
//! leave in one write, the answer is parsed with `httparse`, and idle connections wait in a plain LIFO
//! list. On Pingora's connector a delivery cost nearly twice the CPU (73 against 36 to 45 us; a task spawned
//! per idle connection, a timer per read and write, the header map built and cloned, two flushes held
//! together with `TCP_CORK`). Paths forwarded without verification still take Pingora's streaming proxy.

use std::collections::VecDeque;
use std::io::{ErrorKind, IoSlice};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::UpstreamConfig;
use crate::headers;

/// The app could not give an answer; the sender gets this status and will retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppFailure {
    /// Refused, reset, closed, unparsable: 502.
    Unreachable,
    /// No answer in time: 504.
    Timeout,
}

impl AppFailure {
    pub fn status(self) -> u16 {
        match self {
            AppFailure::Unreachable => 502,
            AppFailure::Timeout => 504,
        }
    }
}

/// Bodies up to this size are copied behind the head so that the request is one `write`; larger ones
/// go out with `writev`.
const COALESCE: usize = 16 * 1024;
/// An answer's head larger than this is refused (502).
const MAX_HEAD: usize = 64 * 1024;
/// Header lines in one answer, at most (Pingora's own limit for what it parses).
const MAX_HEADERS: usize = 256;
/// Informational answers (100 Continue, 103 Early Hints) skipped before the final one, at most.
const MAX_INFORMATIONAL: usize = 8;
/// Idle connections kept, at most. More concurrent deliveries than this still work; their connections
/// are closed after use.
const MAX_IDLE: usize = 256;

/// The app, with a pool of keep-alive connections to it.
pub struct App {
    addr: SocketAddr,
    peer: HttpPeer,
    connect_timeout: Duration,
    read_timeout: Duration,
    keepalive: Duration,
    /// See `send`.
    deadline: Duration,
    /// Most recently used at the back: reusing the warmest connection lets the others age out.
    idle: Mutex<VecDeque<(TcpStream, Instant)>>,
}

/// An exchange whose final response head has arrived; the body is still to be read.
pub struct Exchange {
    stream: TcpStream,
    buf: BytesMut,
    header: Option<ResponseHeader>,
    status: u16,
    body: Framing,
    /// The app allows another request on this connection.
    keep_alive: bool,
    /// The app sent something (an interim answer counts): the request reached it, and must not be
    /// retried elsewhere.
    received: bool,
    read_timeout: Duration,
}

enum Framing {
    Length(u64),
    Chunked(Chunk),
    UntilClose,
    Done,
}

#[derive(Clone, Copy)]
enum Chunk {
    Size,
    Data(u64),
    DataEnd,
    Trailers,
}

/// A failed attempt. `stale`: nothing came back on a reused connection, which the app may have closed
/// while it sat idle; the request is then tried again on another connection.
struct Failed {
    failure: AppFailure,
    stale: bool,
    what: &'static str,
}

impl Failed {
    fn io(e: &std::io::Error, what: &'static str) -> Self {
        let failure = if e.kind() == ErrorKind::TimedOut {
            AppFailure::Timeout
        } else {
            AppFailure::Unreachable
        };
        Self {
            failure,
            stale: failure == AppFailure::Unreachable,
            what,
        }
    }

    fn bad(what: &'static str) -> Self {
        Self {
            failure: AppFailure::Unreachable,
            stale: false,
            what,
        }
    }
}

impl App {
    /// `deadline`: the whole exchange's, from `config::Deadlines`, within the dedup claims' lifetime.
    pub fn new(cfg: &UpstreamConfig, deadline: Duration) -> Self {
        Self {
            deadline,
            addr: cfg.socket_addr,
            peer: peer(cfg),
            connect_timeout: cfg.connect_timeout,
            read_timeout: cfg.read_timeout,
            keepalive: cfg.keepalive_timeout,
            idle: Mutex::new(VecDeque::new()),
        }
    }

    /// The peer for Pingora's own proxy path (`other_paths = "forward"`).
    pub fn peer(&self) -> &HttpPeer {
        &self.peer
    }

    /// Sends the request (`head` as built by `headers::upstream_head`, then `body`) and waits for the
    /// app's final response head.
    ///
    /// A pooled connection the app closed while idle fails on first use; such a failure is retried on
    /// another connection, at most twice. A fresh connection's failure is final.
    ///
    /// The whole of it, retries and interim answers included, ends within `connect_timeout + 2 x
    /// read_timeout` (504 past that): the delivery's dedup claim lives a little longer than that
    /// (`config::Deadlines`), so a copy retried by the sender can never find the claim expired while this
    /// one is still with the app.
    pub async fn send(&self, head: Vec<u8>, body: &Bytes) -> Result<Exchange, AppFailure> {
        let deadline = self.deadline;
        tokio::time::timeout(deadline, self.attempts(head, body))
            .await
            .unwrap_or_else(|_| {
                log::warn!("app exchange failed: no answer within {deadline:?} in all");
                Err(AppFailure::Timeout)
            })
    }

    async fn attempts(&self, head: Vec<u8>, body: &Bytes) -> Result<Exchange, AppFailure> {
        let mut head = Some(head);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (stream, reused) = match self.checkout() {
                Some(stream) => (stream, true),
                None => (self.connect().await?, false),
            };
            let last_try = !reused || attempt >= 3;
            // The head is only copied when a retry may still need it.
            let this_head = if last_try {
                head.take().unwrap_or_default()
            } else {
                head.clone().unwrap_or_default()
            };
            match self.exchange(stream, this_head, body).await {
                Ok(exchange) => return Ok(exchange),
                Err(f) if f.stale && !last_try => {
                    log::debug!("pooled connection to the app was stale: {}", f.what);
                }
                Err(f) => {
                    log::warn!("app exchange failed: {}", f.what);
                    return Err(f.failure);
                }
            }
        }
    }

    /// Returns the connection to the pool when the exchange allows it.
    pub fn finish(&self, exchange: Exchange) {
        if !exchange.reusable() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        while idle
            .front()
            .is_some_and(|(_, since)| now.duration_since(*since) >= self.keepalive)
        {
            idle.pop_front();
        }
        if idle.len() < MAX_IDLE {
            idle.push_back((exchange.stream, now));
        }
    }

    /// The warmest idle connection that is still open and within the keep-alive time.
    fn checkout(&self) -> Option<TcpStream> {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((stream, since)) = idle.pop_back() {
            if since.elapsed() < self.keepalive && quiet(&stream) {
                return Some(stream);
            }
        }
        None
    }

    async fn connect(&self) -> Result<TcpStream, AppFailure> {
        let connected = tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.addr))
            .await
            .map_err(|_| std::io::Error::from(ErrorKind::TimedOut))
            .and_then(|r| r);
        match connected {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                Ok(stream)
            }
            Err(e) => {
                let failure = Failed::io(&e, "connect").failure;
                log::warn!("app unreachable at {}: {}", self.addr, e.kind());
                Err(failure)
            }
        }
    }

    async fn exchange(
        &self,
        mut stream: TcpStream,
        mut head: Vec<u8>,
        body: &Bytes,
    ) -> Result<Exchange, Failed> {
        let written = if body.len() <= COALESCE {
            head.extend_from_slice(body);
            timed(self.read_timeout, stream.write_all(&head)).await
        } else {
            timed(
                self.read_timeout,
                write_all_vectored(&mut stream, &head, body),
            )
            .await
        };
        written.map_err(|e| Failed::io(&e, "writing the request"))?;

        let mut exchange = Exchange {
            stream,
            buf: BytesMut::with_capacity(4096),
            header: None,
            status: 0,
            body: Framing::Done,
            keep_alive: false,
            received: false,
            read_timeout: self.read_timeout,
        };
        for _ in 0..MAX_INFORMATIONAL {
            if exchange.read_head().await? {
                return Ok(exchange);
            }
        }
        Err(Failed::bad("too many informational responses"))
    }
}

impl Exchange {
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The answer's head as it is relayed: connection-scoped headers and `Transfer-Encoding` dropped;
    /// `Content-Length` kept when the app sent one.
    pub fn take_header(&mut self) -> ResponseHeader {
        self.header
            .take()
            .expect("an exchange exists only once the head was read, and it is taken once")
    }

    /// The next piece of the response body; `None` at its end.
    pub async fn body_chunk(&mut self) -> Result<Option<Bytes>, Box<Error>> {
        loop {
            match self.body {
                Framing::Done => return Ok(None),
                Framing::Length(0) => {
                    self.body = Framing::Done;
                    return Ok(None);
                }
                Framing::Length(left) => {
                    let data = self.take(left).await?;
                    self.body = Framing::Length(left - data.len() as u64);
                    return Ok(Some(data));
                }
                Framing::UntilClose => {
                    if self.buf.is_empty() && self.fill().await? == 0 {
                        self.body = Framing::Done;
                        return Ok(None);
                    }
                    return Ok(Some(self.buf.split().freeze()));
                }
                Framing::Chunked(state) => {
                    if let Some(chunk) = self.chunked(state).await? {
                        return Ok(Some(chunk));
                    }
                }
            }
        }
    }

    /// One step of chunked decoding; a data chunk when one is ready.
    async fn chunked(&mut self, state: Chunk) -> Result<Option<Bytes>, Box<Error>> {
        match state {
            Chunk::Size => {
                let line = self.line().await?;
                let hex = line.split(|b| *b == b';').next().unwrap_or_default();
                let size = std::str::from_utf8(hex)
                    .ok()
                    .map(str::trim)
                    .and_then(|h| u64::from_str_radix(h, 16).ok())
                    .ok_or_else(|| {
                        Error::explain(ErrorType::InvalidHTTPHeader, "bad chunk size").into_up()
                    })?;
                self.body = Framing::Chunked(if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                });
                Ok(None)
            }
            Chunk::Data(left) => {
                let data = self.take(left).await?;
                let rest = left - data.len() as u64;
                self.body = Framing::Chunked(if rest == 0 {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(rest)
                });
                Ok(Some(data))
            }
            Chunk::DataEnd => {
                if !self.line().await?.is_empty() {
                    return upstream(ErrorType::InvalidHTTPHeader, "bad chunk end");
                }
                self.body = Framing::Chunked(Chunk::Size);
                Ok(None)
            }
            Chunk::Trailers => {
                // Trailers are not relayed: the answer is re-framed.
                if self.line().await?.is_empty() {
                    self.body = Framing::Done;
                }
                Ok(None)
            }
        }
    }

    /// Up to `left` bytes of body data, at least one: what is buffered, or the next read.
    async fn take(&mut self, left: u64) -> Result<Bytes, Box<Error>> {
        if self.buf.is_empty() && self.fill().await? == 0 {
            return upstream(ErrorType::ConnectionClosed, "app body cut short");
        }
        let n = self
            .buf
            .len()
            .min(usize::try_from(left).unwrap_or(usize::MAX));
        Ok(self.buf.split_to(n).freeze())
    }

    /// The next CRLF-terminated line of the body framing, without its CRLF.
    async fn line(&mut self) -> Result<Bytes, Box<Error>> {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = self.buf.split_to(i).freeze();
                self.buf.advance(2);
                return Ok(line);
            }
            if self.buf.len() > 4096 {
                return upstream(ErrorType::InvalidHTTPHeader, "chunk line too long");
            }
            if self.fill().await? == 0 {
                return upstream(ErrorType::ConnectionClosed, "app body cut short");
            }
        }
    }

    /// Reads what the app sent next into the buffer; 0 at the end of the stream.
    async fn fill(&mut self) -> Result<usize, Box<Error>> {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        let n = timed(self.read_timeout, self.stream.read_buf(&mut self.buf))
            .await
            .map_err(|e| {
                let kind = if e.kind() == ErrorKind::TimedOut {
                    ErrorType::ReadTimedout
                } else {
                    ErrorType::ReadError
                };
                Error::because(kind, "reading the app's answer", e).into_up()
            })?;
        self.received |= n > 0;
        Ok(n)
    }

    /// Reads one response head. `Ok(false)`: it was informational, the final one follows.
    async fn read_head(&mut self) -> Result<bool, Failed> {
        loop {
            if let Some(is_final) = self.parse_head()? {
                return Ok(is_final);
            }
            let n = match self.fill().await {
                Ok(n) => n,
                Err(e) => {
                    let mut f = if e.etype() == &ErrorType::ReadTimedout {
                        Failed::io(&ErrorKind::TimedOut.into(), "waiting for the answer")
                    } else {
                        Failed::io(&ErrorKind::ConnectionReset.into(), "reading the answer")
                    };
                    f.stale &= !self.received;
                    return Err(f);
                }
            };
            if n == 0 {
                let mut f = Failed::io(&ErrorKind::UnexpectedEof.into(), "closed before answering");
                f.stale &= !self.received;
                return Err(f);
            }
        }
    }

    /// Parses a head from the buffer: `None` until it is complete, then whether it was the final one.
    /// Not async, so that its header slots live on the stack, not in every future awaiting an answer.
    fn parse_head(&mut self) -> Result<Option<bool>, Failed> {
        // Uninitialised slots: zeroing 256 of them for every answer would cost more than parsing it.
        let mut slots =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut parsed = httparse::Response::new(&mut []);
        let parsing = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut parsed,
            &self.buf,
            &mut slots,
        );
        let len = match parsing {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if self.buf.len() < MAX_HEAD => return Ok(None),
            Ok(httparse::Status::Partial) => return Err(Failed::bad("answer head too large")),
            Err(_) => return Err(Failed::bad("unparsable answer")),
        };
        let head = Head::of(&parsed)?;
        self.buf.advance(len);
        if (100..200).contains(&head.status) {
            if head.status == 101 {
                return Err(Failed::bad("the app switched protocols"));
            }
            return Ok(Some(false));
        }
        self.status = head.status;
        self.keep_alive = head.keep_alive && !matches!(head.body, Framing::UntilClose);
        self.body = head.body;
        self.header = Some(head.header);
        Ok(Some(true))
    }

    /// The body was read to its end, nothing else is pending, and the app keeps the connection open.
    fn reusable(&self) -> bool {
        self.keep_alive && matches!(self.body, Framing::Done) && self.buf.is_empty()
    }
}

/// A parsed final or informational response head.
struct Head {
    status: u16,
    header: ResponseHeader,
    body: Framing,
    keep_alive: bool,
}

impl Head {
    fn of(parsed: &httparse::Response<'_, '_>) -> Result<Self, Failed> {
        let status = parsed.code.ok_or_else(|| Failed::bad("no status"))?;
        let mut header = ResponseHeader::build(status, Some(parsed.headers.len()))
            .map_err(|_| Failed::bad("bad status"))?;
        let mut length: Option<u64> = None;
        let mut chunked = false;
        let mut close = parsed.version == Some(0);
        for h in parsed.headers.iter() {
            let name = h.name;
            if name.eq_ignore_ascii_case("content-length") {
                let n = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .ok_or_else(|| Failed::bad("bad content-length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(Failed::bad("conflicting content-length"));
                }
                length = Some(n);
            } else if name.eq_ignore_ascii_case("transfer-encoding") {
                // Only a lone `chunked` is decoded. Any other coding (gzip, chunked) would reach the
                // sender undecoded and unlabelled once Transfer-Encoding is dropped: refused instead.
                if chunked || !h.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                    return Err(Failed::bad("unsupported transfer-encoding"));
                }
                chunked = true;
            } else if name.eq_ignore_ascii_case("connection") {
                for token in h.value.split(|b| *b == b',') {
                    let token = token.trim_ascii();
                    if token.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") && parsed.version == Some(0)
                    {
                        close = false;
                    }
                }
            }
            if headers::is_response_hop_by_hop(name) {
                continue;
            }
            let value = http::HeaderValue::from_bytes(h.value)
                .map_err(|_| Failed::bad("bad header value"))?;
            header
                .append_header(name.to_string(), value)
                .map_err(|_| Failed::bad("bad header name"))?;
        }
        let body = if status == 204 || status == 304 || (100..200).contains(&status) {
            Framing::Done
        } else if chunked {
            Framing::Chunked(Chunk::Size)
        } else {
            match length {
                Some(n) => Framing::Length(n),
                None => Framing::UntilClose,
            }
        };
        if chunked {
            // RFC 9112 6.3: Transfer-Encoding overrides Content-Length, which must not be relayed.
            header.remove_header("content-length");
        }
        Ok(Self {
            status,
            header,
            body,
            keep_alive: !close,
        })
    }
}

/// An error in the app's answer: Pingora answers the sender 502 when nothing was relayed yet.
fn upstream<T>(etype: ErrorType, what: &'static str) -> Result<T, Box<Error>> {
    Err(Error::explain(etype, what).into_up())
}

async fn timed<T>(
    limit: Duration,
    fut: impl Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    tokio::time::timeout(limit, fut)
        .await
        .unwrap_or_else(|_| Err(ErrorKind::TimedOut.into()))
}

async fn write_all_vectored(
    stream: &mut TcpStream,
    head: &[u8],
    body: &[u8],
) -> std::io::Result<()> {
    let (mut head, mut body) = (head, body);
    while !head.is_empty() || !body.is_empty() {
        let n = stream
            .write_vectored(&[IoSlice::new(head), IoSlice::new(body)])
            .await?;
        if n == 0 {
            return Err(ErrorKind::WriteZero.into());
        }
        let from_head = n.min(head.len());
        head = &head[from_head..];
        body = &body[n - from_head..];
    }
    Ok(())
}

/// An idle connection with nothing to read: the app has neither closed it nor sent anything unasked.
fn quiet(stream: &TcpStream) -> bool {
    let mut byte = 0u8;
    // SAFETY: the fd belongs to `stream`, which outlives the call; one byte of valid memory is passed.
    let n = unsafe {
        libc::recv(
            stream.as_raw_fd(),
            (&mut byte as *mut u8).cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    n < 0 && std::io::Error::last_os_error().kind() == ErrorKind::WouldBlock
}

fn peer(cfg: &UpstreamConfig) -> HttpPeer {
    let mut peer = HttpPeer::new(cfg.socket_addr, false, String::new());
    peer.options.connection_timeout = Some(cfg.connect_timeout);
    peer.options.read_timeout = Some(cfg.read_timeout);
    peer.options.write_timeout = Some(cfg.read_timeout);
    peer.options.idle_timeout = Some(cfg.keepalive_timeout);
    peer
}
