use proptest::prelude::*;

use super::*;

fn head(raw: &[u8]) -> Result<Head, HeadError> {
    match parse_head(raw)? {
        Parsed::Final(len, head) => {
            assert_eq!(len, raw.len(), "the whole head was consumed");
            Ok(head)
        }
        other => panic!("expected a final head, got {other:?}"),
    }
}

fn relayed(head: &Head) -> Vec<String> {
    head.header
        .headers
        .iter()
        .map(|(n, _)| n.as_str().to_string())
        .collect()
}

#[test]
fn content_length_is_digits_only_with_optional_whitespace() {
    for ok in ["0", "5", " 5", "5 ", "\t5\t", "0005", "9999999999999999999"] {
        assert!(content_length(ok.as_bytes()).is_some(), "{ok:?}");
    }
    assert_eq!(content_length(b" 42 "), Some(42));
    for bad in [
        "",
        " ",
        "+5",
        "-1",
        "5 5",
        "0x5",
        "5,5",
        "5;",
        "99999999999999999999",
        "18446744073709551616",
        "\u{0665}",
    ] {
        assert_eq!(content_length(bad.as_bytes()), None, "{bad:?}");
    }
}

#[test]
fn a_signed_content_length_in_an_answer_is_refused() {
    for value in ["+5", "-1", "5 5", "0x5"] {
        let raw = format!("HTTP/1.1 200 OK\r\nContent-Length: {value}\r\n\r\n");
        assert_eq!(
            head(raw.as_bytes()).unwrap_err(),
            HeadError::BadContentLength,
            "{value:?}"
        );
    }
    let empty = b"HTTP/1.1 200 OK\r\nContent-Length:\r\n\r\n";
    assert_eq!(head(empty).unwrap_err(), HeadError::BadContentLength);
    let twice = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n";
    assert_eq!(
        head(twice).unwrap_err(),
        HeadError::ConflictingContentLength
    );
}

#[test]
fn hop_by_hop_headers_and_those_connection_names_are_not_relayed() {
    let raw = b"HTTP/1.1 200 OK\r\n\
        Connection: keep-alive, X-Secret-Hop , x-other-hop\r\n\
        Keep-Alive: timeout=5\r\n\
        Proxy-Authenticate: Basic\r\n\
        Proxy-Authorization: Basic eA==\r\n\
        Proxy-Connection: keep-alive\r\n\
        TE: trailers\r\n\
        Trailer: X-T\r\n\
        Upgrade: h2c\r\n\
        X-Secret-Hop: 1\r\n\
        X-Other-Hop: 2\r\n\
        X-Kept: yes\r\n\
        Content-Length: 0\r\n\r\n";
    let h = head(raw).unwrap();
    assert_eq!(relayed(&h), ["x-kept", "content-length"]);
    assert!(h.keep_alive);
}

#[test]
fn a_204_has_no_body_and_its_length_is_dropped_a_304_keeps_its_length() {
    let h = head(b"HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n").unwrap();
    assert_eq!((h.framing, relayed(&h).len()), (Framing::None, 0));
    let h = head(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 7\r\nETag: \"a\"\r\n\r\n").unwrap();
    assert_eq!(h.framing, Framing::None);
    assert_eq!(h.header.headers.get("content-length").unwrap(), "7");
    let h = head(b"HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
    assert_eq!(h.framing, Framing::None);
    assert!(h.keep_alive);
}

#[test]
fn framing_follows_rfc_9112() {
    let h = head(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n").unwrap();
    assert_eq!((h.framing, h.keep_alive), (Framing::Length(3), true));
    let h = head(b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
    assert_eq!((h.framing, h.keep_alive), (Framing::UntilClose, false));
    let h = head(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n").unwrap();
    assert!(!h.keep_alive);
    let h = head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").unwrap();
    assert!(!h.keep_alive);
    let h =
        head(b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n").unwrap();
    assert!(h.keep_alive);
    // Transfer-Encoding overrides Content-Length, which is not relayed; the connection is not reused.
    let h = head(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, false));
    assert!(relayed(&h).is_empty());
    for te in ["gzip", "gzip, chunked", "chunked, chunked"] {
        let raw = format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: {te}\r\n\r\n");
        assert_eq!(
            head(raw.as_bytes()).unwrap_err(),
            HeadError::UnsupportedTransferEncoding,
            "{te}"
        );
    }
    let http10 = b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_eq!(
        head(http10).unwrap_err(),
        HeadError::UnsupportedTransferEncoding
    );
}

#[test]
fn interim_answers_are_skipped_and_switching_protocols_is_refused() {
    let interim = b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n";
    let mut raw = interim.to_vec();
    raw.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
    assert!(matches!(parse_head(&raw), Ok(Parsed::Interim(n)) if n == interim.len()));
    let raw = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n";
    assert_eq!(parse_head(raw).unwrap_err(), HeadError::SwitchedProtocols);
}

#[test]
fn oversized_or_malformed_heads_are_typed_errors() {
    let mut big = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
    big.resize(MAX_HEAD, b'a');
    assert_eq!(parse_head(&big).unwrap_err(), HeadError::TooLarge);
    let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
    for i in 0..=MAX_HEADERS {
        many.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(parse_head(&many).unwrap_err(), HeadError::Malformed);
    assert_eq!(
        parse_head(b"SMTP ready\r\n\r\n").unwrap_err(),
        HeadError::Malformed
    );
    assert!(matches!(
        parse_head(b"HTTP/1.1 200 OK\r\nX: 1\r\n"),
        Ok(Parsed::Partial)
    ));
}

/// Feeds `pieces` one after another to a decoder the way `exchange` does: the decoded data, whether the
/// end was reached, and what was left after it.
fn decode(pieces: &[&[u8]]) -> Result<(Vec<u8>, bool, Vec<u8>), ChunkError> {
    let mut decoder = Chunked::default();
    let (mut buf, mut out) = (Vec::new(), Vec::new());
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match decoder.step(&buf)? {
                Step::Framing(n) => {
                    assert!(n > 0 && n <= buf.len(), "framing {n} of {}", buf.len());
                    buf.drain(..n);
                }
                Step::Data(n) => {
                    assert!(n > 0 && n <= buf.len(), "data {n} of {}", buf.len());
                    out.extend(buf.drain(..n));
                }
                Step::NeedMore => break,
                Step::Done(n) => {
                    buf.drain(..n);
                    return Ok((out, true, buf));
                }
            }
        }
    }
    Ok((out, false, buf))
}

fn decode_whole(raw: &[u8]) -> Result<(Vec<u8>, bool, Vec<u8>), ChunkError> {
    decode(&[raw])
}

#[test]
fn chunked_bodies_decode_with_extensions_and_trailers() {
    let raw =
        b"3;ext=1\r\nabc\r\n2 ; a=\"b\"\r\nde\r\nA\r\n0123456789\r\n0\r\nX-Trailer: t\r\n\r\nNEXT";
    let (data, done, rest) = decode_whole(raw).unwrap();
    assert_eq!(data, b"abcde0123456789");
    assert!(done);
    assert_eq!(rest, b"NEXT");
}

#[test]
fn a_chunk_size_is_hex_digits_only() {
    for bad in [
        "+5", "-5", " 5", "5 ", "5 x", "0x5", "", ";ext", "5x", "g", "5\t",
    ] {
        let raw = format!("{bad}\r\nhello\r\n0\r\n\r\n");
        assert_eq!(
            decode_whole(raw.as_bytes()).unwrap_err(),
            ChunkError::BadSize,
            "{bad:?}"
        );
    }
    let seventeen = "00000000000000005\r\nhello\r\n0\r\n\r\n";
    assert_eq!(
        decode_whole(seventeen.as_bytes()).unwrap_err(),
        ChunkError::BadSize
    );
    let sixteen = "0000000000000005\r\nhello\r\n0\r\n\r\n";
    assert_eq!(decode_whole(sixteen.as_bytes()).unwrap().0, b"hello");
    let control_in_extension = "5;a\x01\r\nhello\r\n0\r\n\r\n";
    assert_eq!(
        decode_whole(control_in_extension.as_bytes()).unwrap_err(),
        ChunkError::BadSize
    );
    let mut long = b"5;".to_vec();
    long.resize(MAX_SIZE_LINE, b'x');
    assert_eq!(
        decode_whole(&long).unwrap_err(),
        ChunkError::SizeLineTooLong
    );
}

#[test]
fn a_chunk_not_followed_by_crlf_is_refused() {
    assert_eq!(
        decode_whole(b"3\r\nabcX\r\n0\r\n\r\n").unwrap_err(),
        ChunkError::BadChunkEnd
    );
    assert_eq!(
        decode_whole(b"3\r\nabc\n0\r\n\r\n").unwrap_err(),
        ChunkError::BadChunkEnd
    );
}

#[test]
fn trailers_are_bounded_in_lines_and_bytes() {
    let mut many = b"0\r\n".to_vec();
    for i in 0..=MAX_TRAILERS {
        many.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(
        decode_whole(&many).unwrap_err(),
        ChunkError::TrailersTooLarge
    );
    let mut big = b"0\r\nX-Big: ".to_vec();
    big.resize(MAX_TRAILER_BYTES + 16, b'a');
    assert_eq!(
        decode_whole(&big).unwrap_err(),
        ChunkError::TrailersTooLarge
    );
    // Within the bounds: accepted.
    let mut fits = b"0\r\n".to_vec();
    for i in 0..MAX_TRAILERS {
        fits.extend_from_slice(format!("X-{i}: 1\r\n").as_bytes());
    }
    fits.extend_from_slice(b"\r\n");
    assert!(decode_whole(&fits).unwrap().1);
}

#[test]
fn a_trailer_section_not_properly_terminated_is_refused_or_incomplete() {
    for bad in [
        &b"0\r\nno colon\r\n\r\n"[..],
        b"0\r\n: empty name\r\n\r\n",
        b"0\r\nX-T: a\nX-U: b\r\n\r\n",
        b"0\r\n folded\r\n\r\n",
    ] {
        assert_eq!(
            decode_whole(bad).unwrap_err(),
            ChunkError::BadTrailer,
            "{bad:?}"
        );
    }
    // Input that stops inside the trailers has not ended: the exchange reports it cut short.
    let (_, done, _) = decode_whole(b"0\r\nX-T: a\r\n").unwrap();
    assert!(!done);
}

/// A chunked encoding of `data`, cut into chunks of the given sizes, with an extension on some chunks
/// and trailers.
fn encode(data: &[u8], sizes: &[usize], trailers: usize) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = data;
    let mut sizes = sizes.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
        if n.is_multiple_of(3) {
            out.extend_from_slice(format!("{n:X};n={n}\r\n").as_bytes());
        } else {
            out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        }
        out.extend_from_slice(&rest[..n]);
        out.extend_from_slice(b"\r\n");
        rest = &rest[n..];
    }
    out.extend_from_slice(b"0\r\n");
    for i in 0..trailers {
        out.extend_from_slice(format!("X-Trailer-{i}: v\r\n").as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    out
}

/// `raw` cut at the given points (taken modulo its length).
fn split(raw: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut at: Vec<usize> = cuts.iter().map(|c| c % (raw.len() + 1)).collect();
    at.push(0);
    at.push(raw.len());
    at.sort_unstable();
    at.windows(2).map(|w| raw[w[0]..w[1]].to_vec()).collect()
}

fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    let alphabet: &[u8] =
        b"0123456789abcdefABCDEFxX+- \t;=:\"\r\n\r\nHTTP/1.1 200chunkedContent-Length";
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        prop::collection::vec(prop::sample::select(alphabet.to_vec()), 0..512),
    ]
}

const VALID_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: x-hop\r\n\
    X-Hop: 1\r\nTransfer-Encoding: chunked\r\nX-App: yes\r\n\r\n";

proptest! {
    #[test]
    fn the_chunked_decoder_never_panics_on_hostile_bytes_in_any_split(
        raw in hostile_bytes(),
        cuts in prop::collection::vec(any::<usize>(), 0..8),
    ) {
        let pieces = split(&raw, &cuts);
        let refs: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
        let _ = decode(&refs);
        let mut prefixed = b"5\r\nhello\r\n".to_vec();
        prefixed.extend_from_slice(&raw);
        let _ = decode(&[&prefixed]);
    }

    #[test]
    fn a_valid_chunked_body_in_any_split_decodes_to_its_data(
        data in prop::collection::vec(any::<u8>(), 0..2048),
        sizes in prop::collection::vec(1usize..600, 1..6),
        trailers in 0usize..4,
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        let raw = encode(&data, &sizes, trailers);
        let pieces = split(&raw, &cuts);
        let refs: Vec<&[u8]> = pieces.iter().map(Vec::as_slice).collect();
        let (decoded, done, rest) = decode(&refs).unwrap();
        prop_assert!(done);
        prop_assert!(rest.is_empty());
        prop_assert_eq!(decoded, data);
    }

    #[test]
    fn the_head_parser_never_panics_on_hostile_bytes_or_their_prefixes(raw in hostile_bytes()) {
        for end in 0..=raw.len() {
            let _ = parse_head(&raw[..end]);
        }
        let mut after_status = b"HTTP/1.1 200 OK\r\n".to_vec();
        after_status.extend_from_slice(&raw);
        let _ = parse_head(&after_status);
    }

    #[test]
    fn a_valid_head_cut_anywhere_is_partial_then_parses_as_whole(cut in 0..VALID_HEAD.len()) {
        prop_assert!(matches!(parse_head(&VALID_HEAD[..cut]), Ok(Parsed::Partial)));
        let whole = head(VALID_HEAD).unwrap();
        let mut with_body = VALID_HEAD.to_vec();
        with_body.extend_from_slice(b"5\r\nhello");
        let Ok(Parsed::Final(len, again)) = parse_head(&with_body) else {
            panic!("the head followed by a body did not parse");
        };
        prop_assert_eq!(len, VALID_HEAD.len());
        prop_assert_eq!(
            (whole.status, whole.framing, whole.keep_alive, relayed(&whole)),
            (again.status, again.framing, again.keep_alive, relayed(&again))
        );
        prop_assert_eq!(relayed(&whole), ["content-type", "x-app"]);
    }
}
