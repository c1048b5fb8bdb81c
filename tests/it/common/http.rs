//! HTTP/1.1 framing shared by the app, the client and the OIDC issuer: both ends of the wire read and write
//! it the same way, so it is written once.

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

/// Value of the first header `name`, any case.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Finishes a message `head` (start line and headers, without the blank line) with `body`, chunked (16 KiB
/// chunks) or with a Content-Length.
pub fn with_body(mut head: Vec<u8>, body: &[u8], chunked: bool) -> Vec<u8> {
    if chunked {
        head.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
        for piece in body.chunks(16 * 1024) {
            head.extend_from_slice(format!("{:x}\r\n", piece.len()).as_bytes());
            head.extend_from_slice(piece);
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"0\r\n\r\n");
    } else {
        head.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        head.extend_from_slice(body);
    }
    head
}

/// A complete answer with a text body.
pub fn answer(status: u16, content_type: &str, extra: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\n{extra}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Reads header lines up to the blank line. `None` at end of stream or on a line that is not a header.
/// A byte that is not text is kept as U+FFFD, so that a test can see it arrived.
pub async fn read_headers<R: AsyncBufRead + Unpin>(
    reader: &mut R,
) -> Option<Vec<(String, String)>> {
    let mut headers = Vec::new();
    loop {
        let mut raw = Vec::new();
        if reader.read_until(b'\n', &mut raw).await.ok()? == 0 {
            return None;
        }
        let line = String::from_utf8_lossy(&raw);
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            return Some(headers);
        }
        let (k, v) = line.split_once(':')?;
        headers.push((k.to_string(), v.trim().to_string()));
    }
}

/// Reads a chunked or Content-Length body; with neither, the rest of the stream if `until_close`, else
/// nothing.
pub async fn read_body<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    headers: &[(String, String)],
    until_close: bool,
) -> Option<Vec<u8>> {
    if header(headers, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
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
    if let Some(len) = header(headers, "content-length") {
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
