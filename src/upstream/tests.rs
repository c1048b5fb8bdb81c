//! The client against a loopback app that misbehaves on purpose.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

fn config(addr: SocketAddr) -> UpstreamConfig {
    UpstreamConfig {
        address: addr.to_string(),
        socket_addr: addr,
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(5),
        keepalive_timeout: Duration::from_secs(60),
        app_4xx: Default::default(),
        app_4xx_final: Vec::new(),
    }
}

fn request(n: usize) -> (Vec<u8>, Bytes) {
    let body = Bytes::from(format!("{{\"delivery\":{n}}}"));
    let head = format!(
        "POST /hook HTTP/1.1\r\nHost: app\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    (head.into_bytes(), body)
}

/// Reads one whole request (head and `Content-Length` body); `false` when the client closed first.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    loop {
        let mut slots = [httparse::EMPTY_HEADER; 16];
        let mut req = httparse::Request::new(&mut slots);
        if let Ok(httparse::Status::Complete(len)) = req.parse(buf) {
            let body = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .map_or(0, |h| {
                    std::str::from_utf8(h.value).unwrap().parse().unwrap()
                });
            if buf.len() >= len + body {
                buf.drain(..len + body);
                return true;
            }
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Requests read and connections accepted by a test app.
#[derive(Default)]
struct Seen {
    requests: AtomicUsize,
    connections: AtomicUsize,
}

/// An app that counts the requests it reads, on all connections, and answers the `n`th (from 1) with
/// `answer(n)`: `None` closes the connection without answering.
async fn app(answer: fn(usize) -> Option<&'static [u8]>) -> (SocketAddr, Arc<Seen>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let count = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            count.connections.fetch_add(1, Ordering::SeqCst);
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while read_request(&mut stream, &mut buf).await {
                    let n = count.requests.fetch_add(1, Ordering::SeqCst) + 1;
                    match answer(n) {
                        Some(bytes) => stream.write_all(bytes).await.unwrap(),
                        None => return,
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// Sends request `n` and reads the whole answer, returning the connection to the pool.
async fn deliver(app: &App, n: usize) -> Result<(u16, Vec<u8>), AppFailure> {
    let (head, body) = request(n);
    let mut exchange = app.send(head, &body).await?;
    let mut data = Vec::new();
    while let Some(chunk) = exchange.body_chunk().await.unwrap() {
        data.extend_from_slice(&chunk);
    }
    let status = exchange.status();
    app.finish(exchange);
    Ok((status, data))
}

#[tokio::test]
async fn a_request_read_on_a_reused_connection_that_then_closes_is_not_sent_again() {
    // The app answers the first request, then reads the second on the same connection and dies.
    let (addr, seen) = app(|n| (n != 2).then_some(OK)).await;
    let client = App::new(
        &config(addr),
        config(addr).deadlines(Duration::from_secs(30)),
    );
    assert_eq!(deliver(&client, 1).await, Ok((200, b"ok".to_vec())));
    assert_eq!(deliver(&client, 2).await, Err(AppFailure::Unreachable));
    assert_eq!(
        seen.requests.load(Ordering::SeqCst),
        2,
        "the second request reached the app exactly once"
    );
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn sequential_requests_reuse_one_connection() {
    let (addr, seen) = app(|_| Some(OK)).await;
    let client = App::new(
        &config(addr),
        config(addr).deadlines(Duration::from_secs(30)),
    );
    for n in 1..=3 {
        assert_eq!(deliver(&client, n).await, Ok((200, b"ok".to_vec())));
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), 3);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_pooled_connection_found_reset_before_writing_is_unsent_and_the_request_goes_elsewhere() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (client, (server, _)) = (client.unwrap(), accepted.unwrap());
    // The app resets the connection (linger 0): the socket learns of it before anything is written.
    socket2::SockRef::from(&server)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(server);
    client.readable().await.unwrap();
    let (head, body) = request(1);
    let failed = Exchange::open(client, head, &body, Duration::from_secs(5))
        .await
        .err()
        .expect("a reset connection cannot carry the request");
    assert!(failed.unsent, "{}", failed.what);
    assert_eq!(failed.failure, AppFailure::Unreachable);
}

#[tokio::test]
async fn an_app_closing_its_idle_connection_costs_no_delivery() {
    // Each answer is followed by a close, as an app whose keep-alive just ran out.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let mut buf = Vec::new();
            if read_request(&mut stream, &mut buf).await {
                count.fetch_add(1, Ordering::SeqCst);
                stream.write_all(OK).await.unwrap();
            }
        }
    });
    let client = App::new(
        &config(addr),
        config(addr).deadlines(Duration::from_secs(30)),
    );
    for n in 1..=5 {
        assert_eq!(deliver(&client, n).await, Ok((200, b"ok".to_vec())));
        // The FIN the app sent after its answer is there before the next checkout looks.
        if let Some(stream) = client.idle.checkout() {
            stream.readable().await.unwrap();
            client.idle.checkin(stream);
        }
    }
    assert_eq!(seen.load(Ordering::SeqCst), 5);
}

#[tokio::test]
async fn chunked_answers_with_trailers_are_decoded_and_the_connection_reused() {
    let (addr, seen) = app(|_| {
        Some(b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nConnection: x-hop\r\nX-Hop: 1\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n")
    })
    .await;
    let client = App::new(
        &config(addr),
        config(addr).deadlines(Duration::from_secs(30)),
    );
    for n in 1..=2 {
        let (head, body) = request(n);
        let mut exchange = client.send(head, &body).await.unwrap();
        let header = exchange.take_header();
        assert!(header.headers.get("x-hop").is_none());
        assert!(header.headers.get("transfer-encoding").is_none());
        let mut data = Vec::new();
        while let Some(chunk) = exchange.body_chunk().await.unwrap() {
            data.extend_from_slice(&chunk);
        }
        assert_eq!((exchange.status(), data.as_slice()), (201, &b"abc"[..]));
        assert!(exchange.reusable());
        client.finish(exchange);
    }
    assert_eq!(seen.requests.load(Ordering::SeqCst), 2);
    assert_eq!(seen.connections.load(Ordering::SeqCst), 1);
}
