//! The app's answer as bytes: response head parser and chunked body decoder, with no socket and no
//! `async` (the shape of mini-redis's `frame.rs`). The caller owns the buffer and the reads; these
//! functions say what the bytes hold, that more are needed, or which rule they break. Every malformed
//! input is a typed error, never a panic, and property tests feed them random and hostile bytes in random
//! splits.
//!
//! The request head is written by `head.rs`, next to the hop-by-hop rules both directions share.
//!
//! Strict where leniency could make the sidecar and the sender disagree on where the answer ends:
//! `Content-Length` is digits only, a chunk size is hex digits only (at most 16), trailers are bounded and
//! must end with an empty line, and a `Transfer-Encoding` other than a lone `chunked` is refused.

use std::mem::MaybeUninit;

use pingora::http::ResponseHeader;

use super::head;

/// An answer's head larger than this is refused (502).
pub const MAX_HEAD: usize = 64 * 1024;
/// Header lines in one answer, at most (Pingora's own limit for what it parses).
pub const MAX_HEADERS: usize = 256;
/// A chunk-size line, extensions included, at most.
pub const MAX_SIZE_LINE: usize = 4096;
/// Hex digits of a chunk size, at most: 16 fill a `u64`.
const MAX_SIZE_DIGITS: usize = 16;
/// Trailer lines after the last chunk, at most; they are read and dropped, never relayed.
pub const MAX_TRAILERS: usize = 64;
/// Bytes of trailer lines after the last chunk, at most.
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Digits of a `Content-Length`, at most: 19 always fit a `u64`.
const MAX_LENGTH_DIGITS: usize = 19;

/// Why an answer's head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadError {
    /// Not an HTTP/1.x response head (httparse's verdict, too many header lines included).
    Malformed,
    /// No end of the head within `MAX_HEAD` bytes.
    TooLarge,
    /// A status `http` does not accept.
    BadStatus,
    /// 101: the app wants another protocol on a connection that carries only HTTP/1.1.
    SwitchedProtocols,
    /// Not `1*DIGIT`, or too long.
    BadContentLength,
    /// Two `Content-Length` values that differ.
    ConflictingContentLength,
    /// Anything but one lone `chunked`, or any in an HTTP/1.0 answer.
    UnsupportedTransferEncoding,
    BadHeaderName,
    BadHeaderValue,
}

impl HeadError {
    /// For logs: names the rule, never echoes the bytes.
    pub fn what(self) -> &'static str {
        match self {
            HeadError::Malformed => "unparsable answer head",
            HeadError::TooLarge => "answer head too large",
            HeadError::BadStatus => "bad status",
            HeadError::SwitchedProtocols => "the app switched protocols",
            HeadError::BadContentLength => "bad content-length",
            HeadError::ConflictingContentLength => "conflicting content-length",
            HeadError::UnsupportedTransferEncoding => "unsupported transfer-encoding",
            HeadError::BadHeaderName => "bad header name",
            HeadError::BadHeaderValue => "bad header value",
        }
    }
}

/// How the answer's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body: 1xx, 204, 304.
    None,
    Length(u64),
    Chunked,
    /// HTTP/1.0 style: the body ends when the app closes the connection.
    UntilClose,
}

/// A final answer's head, as it is relayed.
#[derive(Debug)]
pub struct Head {
    pub status: u16,
    /// Hop-by-hop headers dropped, `Content-Length` kept when it describes the relayed body.
    pub header: ResponseHeader,
    pub framing: Framing,
    /// The app allows another request on this connection once the body is read.
    pub keep_alive: bool,
}

/// What the start of a buffer holds.
// Destructured as soon as it is returned: boxing the head would cost an allocation per answer.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub enum Parsed {
    /// No complete head yet.
    Partial,
    /// An informational answer (100, 103) of this many bytes; the final one follows.
    Interim(usize),
    /// The final answer's head, of this many bytes; the body follows.
    Final(usize, Head),
}

/// Parses the response head at the start of `buf`.
pub fn parse_head(buf: &[u8]) -> Result<Parsed, HeadError> {
    // Uninitialised slots: zeroing 256 of them for every answer would cost more than parsing it.
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut parsed,
        buf,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Ok(Parsed::Partial),
        Ok(httparse::Status::Partial) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed),
    };
    let status = parsed.code.ok_or(HeadError::Malformed)?;
    match status {
        101 => Err(HeadError::SwitchedProtocols),
        100..=199 => Ok(Parsed::Interim(len)),
        _ => Ok(Parsed::Final(len, final_head(&parsed, status)?)),
    }
}

/// The framing headers of one answer, as read before it is relayed.
#[derive(Default)]
struct Framings {
    length: Option<u64>,
    chunked: bool,
    close: bool,
}

fn final_head(parsed: &httparse::Response<'_, '_>, status: u16) -> Result<Head, HeadError> {
    let http10 = parsed.version == Some(0);
    let listed = connection_listed(parsed.headers);
    let mut f = Framings {
        close: http10,
        ..Framings::default()
    };
    let mut header = ResponseHeader::build(status, Some(parsed.headers.len()))
        .map_err(|_| HeadError::BadStatus)?;
    for h in parsed.headers.iter() {
        f.read(h, http10)?;
        let hop = head::is_hop_by_hop(h.name)
            || listed
                .iter()
                .any(|l| l.eq_ignore_ascii_case(h.name.as_bytes()));
        if hop {
            continue;
        }
        let value =
            http::HeaderValue::from_bytes(h.value).map_err(|_| HeadError::BadHeaderValue)?;
        header
            .append_header(h.name.to_string(), value)
            .map_err(|_| HeadError::BadHeaderName)?;
    }
    let framing = match (status, f.chunked, f.length) {
        (204 | 304, _, _) => Framing::None,
        (_, true, _) => Framing::Chunked,
        (_, false, Some(n)) => Framing::Length(n),
        (_, false, None) => Framing::UntilClose,
    };
    // A 304's length describes the representation it validates, and is relayed as sent; a 204 has
    // none (RFC 9110 8.6). With `chunked`, the length is overridden (RFC 9112 6.3) and must not be
    // relayed; such an answer may be an attempt at response splitting, so its connection is not reused.
    if status == 204 || (f.chunked && status != 304) {
        header.remove_header("content-length");
    }
    let keep_alive = !f.close
        && framing != Framing::UntilClose
        && !(f.chunked && f.length.is_some() && status != 304);
    Ok(Head {
        status,
        header,
        framing,
        keep_alive,
    })
}

impl Framings {
    fn read(&mut self, h: &httparse::Header<'_>, http10: bool) -> Result<(), HeadError> {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let n = content_length(h.value).ok_or(HeadError::BadContentLength)?;
            if self.length.is_some_and(|l| l != n) {
                return Err(HeadError::ConflictingContentLength);
            }
            self.length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Only a lone `chunked` is decoded. Any other coding (gzip, chunked) would reach the sender
            // undecoded and unlabelled once Transfer-Encoding is dropped: refused instead. In HTTP/1.0
            // the framing is faulty whatever it says (RFC 9112 6.1).
            if self.chunked || http10 || !ows_trim(h.value).eq_ignore_ascii_case(b"chunked") {
                return Err(HeadError::UnsupportedTransferEncoding);
            }
            self.chunked = true;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in tokens(h.value) {
                if token.eq_ignore_ascii_case(b"close") {
                    self.close = true;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && http10 {
                    self.close = false;
                }
            }
        }
        Ok(())
    }
}

/// `Content-Length = 1*DIGIT`, optional whitespace around it. No sign, no list, no `0x`.
pub fn content_length(value: &[u8]) -> Option<u64> {
    let digits = ows_trim(value);
    if digits.is_empty()
        || digits.len() > MAX_LENGTH_DIGITS
        || !digits.iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    // 19 digits always fit: no overflow is possible.
    Some(
        digits
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
    )
}

/// Header names the app lists in `Connection`: hop-by-hop for this answer (RFC 9110 7.6.1). `close` and
/// `keep-alive` are left out, so the usual answer allocates nothing.
fn connection_listed<'b>(headers: &[httparse::Header<'b>]) -> Vec<&'b [u8]> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| tokens(h.value))
        .filter(|t| !t.eq_ignore_ascii_case(b"close") && !t.eq_ignore_ascii_case(b"keep-alive"))
        .collect()
}

/// The non-empty elements of a comma-separated list.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(ows_trim)
        .filter(|t| !t.is_empty())
}

/// Without the optional whitespace (spaces and tabs) around it.
fn ows_trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// Why a chunked body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// Not `1*16HEXDIG`, optionally followed by extensions after `;`.
    BadSize,
    /// No CRLF within `MAX_SIZE_LINE` bytes.
    SizeLineTooLong,
    /// A chunk's data not followed by CRLF.
    BadChunkEnd,
    /// A trailer line that is not a field line.
    BadTrailer,
    /// More than `MAX_TRAILERS` lines or `MAX_TRAILER_BYTES` bytes of trailers.
    TrailersTooLarge,
}

impl ChunkError {
    /// For logs: names the rule, never echoes the bytes.
    pub fn what(self) -> &'static str {
        match self {
            ChunkError::BadSize => "bad chunk size",
            ChunkError::SizeLineTooLong => "chunk size line too long",
            ChunkError::BadChunkEnd => "bad chunk end",
            ChunkError::BadTrailer => "bad trailer line",
            ChunkError::TrailersTooLarge => "trailers too large",
        }
    }
}

/// One step of decoding, about the start of the input it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// This many bytes (at least one) were framing, now consumed: skip them and step again.
    Framing(usize),
    /// This many bytes (at least one) are body data: take them and step again.
    Data(usize),
    /// Nothing can be decided before more bytes arrive. Input that ends here is cut short.
    NeedMore,
    /// The body ended after this many more bytes of framing; what follows belongs to the connection.
    Done(usize),
}

/// The chunked body decoder (RFC 9112 7.1): bytes in, steps out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Chunked {
    #[default]
    Size,
    Data(u64),
    DataEnd,
    Trailers {
        lines: usize,
        bytes: usize,
    },
    Done,
}

impl Chunked {
    /// Decodes from the start of `input`, which begins where the previous step's bytes ended.
    pub fn step(&mut self, input: &[u8]) -> Result<Step, ChunkError> {
        match *self {
            Chunked::Size => {
                let Some(line) = line(input, MAX_SIZE_LINE, ChunkError::SizeLineTooLong)? else {
                    return Ok(Step::NeedMore);
                };
                let size = chunk_size(line)?;
                *self = if size == 0 {
                    Chunked::Trailers { lines: 0, bytes: 0 }
                } else {
                    Chunked::Data(size)
                };
                Ok(Step::Framing(line.len() + 2))
            }
            Chunked::Data(left) => {
                if input.is_empty() {
                    return Ok(Step::NeedMore);
                }
                let n = usize::try_from(left).map_or(input.len(), |l| l.min(input.len()));
                let rest = left - n as u64;
                *self = if rest == 0 {
                    Chunked::DataEnd
                } else {
                    Chunked::Data(rest)
                };
                Ok(Step::Data(n))
            }
            Chunked::DataEnd => match input {
                [b'\r', b'\n', ..] => {
                    *self = Chunked::Size;
                    Ok(Step::Framing(2))
                }
                [] | [b'\r'] => Ok(Step::NeedMore),
                _ => Err(ChunkError::BadChunkEnd),
            },
            Chunked::Trailers { lines, bytes } => self.trailer(input, lines, bytes),
            Chunked::Done => Ok(Step::Done(0)),
        }
    }

    fn trailer(&mut self, input: &[u8], lines: usize, bytes: usize) -> Result<Step, ChunkError> {
        // Room for one more line within the bound, or for the final CRLF.
        let budget = MAX_TRAILER_BYTES - bytes + 2;
        let Some(line) = line(input, budget, ChunkError::TrailersTooLarge)? else {
            return Ok(Step::NeedMore);
        };
        if line.is_empty() {
            *self = Chunked::Done;
            return Ok(Step::Done(2));
        }
        if !field_line(line) {
            return Err(ChunkError::BadTrailer);
        }
        let (lines, bytes) = (lines + 1, bytes + line.len() + 2);
        if lines > MAX_TRAILERS || bytes > MAX_TRAILER_BYTES {
            return Err(ChunkError::TrailersTooLarge);
        }
        *self = Chunked::Trailers { lines, bytes };
        Ok(Step::Framing(line.len() + 2))
    }
}

/// The CRLF-terminated line at the start of `input`, without its CRLF; `None` until its end is there.
/// `too_long` when no line of at most `max` bytes (CRLF included) can be there.
fn line(input: &[u8], max: usize, too_long: ChunkError) -> Result<Option<&[u8]>, ChunkError> {
    let window = &input[..input.len().min(max)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some(&input[..i])),
        None if input.len() >= max => Err(too_long),
        None => Ok(None),
    }
}

/// `chunk-size [ chunk-ext ]`: hex digits, then nothing or whitespace and `;` extensions.
fn chunk_size(line: &[u8]) -> Result<u64, ChunkError> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 || digits > MAX_SIZE_DIGITS {
        return Err(ChunkError::BadSize);
    }
    let ext = ows_trim(&line[digits..]);
    // Extensions are ignored, but must be visible characters, spaces or tabs after a `;`.
    let ext_ok = ext.is_empty()
        || (ext[0] == b';'
            && ext
                .iter()
                .all(|b| *b == b'\t' || (b' '..=b'~').contains(b) || *b >= 0x80));
    // Whitespace may only lead to extensions: "5 " or "5 x" is junk.
    if !ext_ok || (ext.is_empty() && digits != line.len()) {
        return Err(ChunkError::BadSize);
    }
    let size = line[..digits].iter().fold(0u64, |n, d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => d - b'A' + 10,
        };
        (n << 4) | u64::from(v)
    });
    Ok(size)
}

/// `field-name ":" field-value`: a token, a colon, then no control character but tab.
fn field_line(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|b| *b == b':') else {
        return false;
    };
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    !name.is_empty()
        && http::HeaderName::from_bytes(name).is_ok()
        && value
            .iter()
            .all(|b| *b == b'\t' || *b >= b' ' && *b != 0x7f)
}

#[cfg(test)]
mod tests;
