//! Resource limits against slow, stalled and numerous senders, with the real binary: each timeout, the
//! memory budget for bodies, the connection bound, and what a flood of stalled uploads costs.

use std::time::Duration;

use crate::common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A signed delivery of `len` bytes, as wire bytes, and where its body starts.
fn upload(len: usize) -> (Vec<u8>, usize) {
    let bytes = Delivery::new(vec![b'x'; len]).bytes();
    let body_at = bytes.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    (bytes, body_at)
}

/// Whether the peer closed `s` (end of stream or reset) within `PATIENCE`; what it sent first is returned.
async fn closed(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Err(_) => return None,
        }
    }
}

fn vm_rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_kept_alive_connection_is_closed_after_the_keepalive_timeout() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "[server]\nkeepalive_timeout_ms = 1000\n").await;
    let mut conn = Conn::open(sidecar.addr).await;
    assert_eq!(conn.send(&Delivery::json().bytes()).await.status, 200);
    assert!(conn.is_closed().await, "the idle connection is still open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_trickled_past_the_header_timeout_is_closed() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "[server]\nheader_timeout_ms = 1000\n").await;
    let mut s = TcpStream::connect(sidecar.addr).await.unwrap();
    s.write_all(b"POST /webhooks HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    // One byte of a header every 100 ms: each read is quick, the head never ends.
    let (mut rd, mut wr) = s.into_split();
    let trickle = tokio::spawn(async move {
        for b in b"X-Slow: "
            .iter()
            .chain([b'a'; 400].iter())
            .cycle()
            .take(400)
        {
            if wr.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut buf = [0u8; 64];
    let end = tokio::time::timeout(PATIENCE, rd.read(&mut buf)).await;
    assert!(matches!(end, Ok(Ok(0)) | Ok(Err(_))), "still open: {end:?}");
    trickle.abort();
    assert_eq!(app.count(), 0);
    let m = sidecar.metrics().await;
    assert_eq!(
        metric(
            &m,
            "pps_sidecar_connections_closed_total{reason=\"header_timeout\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_trickled_past_the_body_timeout_gets_408_and_the_app_is_not_contacted() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "[server]\nbody_timeout_ms = 1000\n").await;
    let (bytes, body_at) = upload(400);
    let mut s = TcpStream::connect(sidecar.addr).await.unwrap();
    s.write_all(&bytes[..body_at]).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    let body = bytes[body_at..].to_vec();
    let trickle = tokio::spawn(async move {
        for b in body {
            if wr.write_all(&[b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, rd.read_to_end(&mut answer))
        .await
        .expect("the connection is closed after the answer")
        .ok();
    trickle.abort();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(app.count(), 0);
    let m = sidecar.metrics().await;
    assert_eq!(
        metric(&m, "pps_sidecar_requests_total{outcome=\"timeout\"}"),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_uploads_past_the_memory_budget_get_503_and_the_held_bytes_stay_within_it() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(
        &app,
        "[server]\nmax_buffered_bytes = 200000\n[webhooks]\nmax_body_bytes = 100000\n",
    )
    .await;
    // What arrived holds the budget, in 16 KiB blocks: 70,000 bytes hold five, 81,920.
    let (bytes, body_at) = upload(90_000);
    let mut stalled = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(sidecar.addr).await.unwrap();
        s.write_all(&bytes[..body_at + 70_000]).await.unwrap();
        stalled.push(s);
    }
    eventually("both uploads hold their share", || async {
        metric(&sidecar.metrics().await, "pps_sidecar_buffered_bytes") == 163_840.0
    })
    .await;
    let mut third = TcpStream::connect(sidecar.addr).await.unwrap();
    let _ = third.write_all(&bytes[..body_at + 70_000]).await;
    let answer = closed(&mut third).await.expect("refused and closed");
    let answer = String::from_utf8_lossy(&answer).to_ascii_lowercase();
    assert!(answer.starts_with("http/1.1 503"), "{answer}");
    assert!(answer.contains("retry-after:"), "{answer}");
    let m = sidecar.metrics().await;
    assert!(metric(&m, "pps_sidecar_buffered_bytes") <= 200_000.0);
    assert_eq!(
        metric(&m, "pps_sidecar_requests_total{outcome=\"overloaded\"}"),
        1.0
    );

    drop(stalled);
    eventually("the shares are given back", || async {
        metric(&sidecar.metrics().await, "pps_sidecar_buffered_bytes") == 0.0
    })
    .await;
    assert_eq!(sidecar.send(&Delivery::json()).await.status, 200);
}

/// 32 connections that declared 1 MiB and sent nothing once held the whole default budget, and every
/// delivery got 503 for as long as they stayed: the budget holds what arrived, not what was declared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_bodies_that_never_come_hold_no_budget_and_keep_no_delivery_out() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    let (bytes, body_at) = upload(1_048_576);
    let mut idle = Vec::new();
    for _ in 0..64 {
        let mut s = TcpStream::connect(sidecar.addr).await.unwrap();
        s.write_all(&bytes[..body_at + 1]).await.unwrap();
        idle.push(s);
    }
    eventually("each holds one block", || async {
        metric(&sidecar.metrics().await, "pps_sidecar_buffered_bytes") == 64.0 * 16_384.0
    })
    .await;
    assert_eq!(sidecar.send(&Delivery::json()).await.status, 200);
    let big = Delivery::new(vec![b'z'; 200_000]);
    assert_eq!(
        sidecar.send(&big).await.status,
        200,
        "a body in many pieces"
    );
    assert_eq!(app.requests().last().unwrap().body, big.body);
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_body_growing_past_the_budget_gets_503() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(
        &app,
        "[server]\nmax_buffered_bytes = 200000\n[webhooks]\nmax_body_bytes = 150000\n",
    )
    .await;
    // A stalled upload holds 150,000 of the 200,000; a chunked body then outgrows what is left.
    let (bytes, body_at) = upload(150_000);
    let mut stalled = TcpStream::connect(sidecar.addr).await.unwrap();
    stalled
        .write_all(&bytes[..body_at + 140_000])
        .await
        .unwrap();
    eventually("the stalled upload holds its share", || async {
        metric(&sidecar.metrics().await, "pps_sidecar_buffered_bytes") == 147_456.0
    })
    .await;
    let mut d = Delivery::new(vec![b'y'; 120_000]);
    d.chunked = true;
    let r = send(sidecar.addr, &d.bytes()).await;
    assert_eq!(r.status, 503);
    assert!(r.get("retry-after").is_some());
    assert_eq!(app.count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_stalled_one_megabyte_uploads_keeps_memory_far_below_the_pod_limit() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    let baseline = vm_rss_bytes(sidecar.pid());
    let (bytes, body_at) = upload(1_048_576);
    // Each 1,000,000 bytes hold 62 blocks of 16 KiB; at most 33 fit the default 32 MiB budget.
    const HELD: f64 = 62.0 * 16_384.0;
    const BUDGET: f64 = 32.0 * 1_048_576.0;
    let settled = |expected: f64| {
        let sidecar = &sidecar;
        poll(
            "every stalled upload is held whole or refused",
            move || async move {
                let m = sidecar.metrics().await;
                let held = metric(&m, "pps_sidecar_buffered_bytes");
                let refused = metric(&m, "pps_sidecar_requests_total{outcome=\"overloaded\"}");
                (held % HELD == 0.0 && held / HELD + refused == expected).then_some((held, refused))
            },
        )
    };
    let mut conns = Vec::new();
    for _ in 0..80 {
        let mut s = TcpStream::connect(sidecar.addr).await.unwrap();
        // Up to 1,000,000 bytes of the body, then silence; refused ones are closed mid-write.
        let _ = s.write_all(&bytes[..body_at + 1_000_000]).await;
        conns.push(s);
    }
    // Uploads read side by side can be refused while others are still partial, so fewer than 33 may
    // end up whole; none is ever half held.
    let (held, refused) = settled(80.0).await;
    let rss = vm_rss_bytes(sidecar.pid());
    eprintln!(
        "RSS {:.1} MiB (baseline {:.1} MiB), held {:.1} MiB, overloaded {refused}",
        rss as f64 / 1048576.0,
        baseline as f64 / 1048576.0,
        held / 1048576.0,
    );
    assert!(
        held <= BUDGET && refused > 0.0,
        "held {held}, refused {refused}"
    );
    assert!(
        rss < 96 * 1024 * 1024,
        "RSS {rss} bytes under a 128 MiB pod limit"
    );
    // One at a time, stalled uploads fill what is left until one is refused: then less than one
    // upload's worth is free, and a delivery one byte larger than that is refused and comes back.
    let mut sent = 80.0;
    let left = loop {
        let mut s = TcpStream::connect(sidecar.addr).await.unwrap();
        let _ = s.write_all(&bytes[..body_at + 1_000_000]).await;
        conns.push(s);
        sent += 1.0;
        let (now_held, now_refused) = settled(sent).await;
        assert!(now_held <= BUDGET, "held {now_held} over the budget");
        if now_refused > refused {
            break BUDGET - now_held;
        }
    };
    assert!(left < HELD, "{left} bytes left after a refusal");
    let larger = Delivery::new(vec![b'x'; left as usize + 1]);
    let r = sidecar.send(&larger).await;
    assert_eq!(
        r.status, 503,
        "while the budget is full, a delivery is refused"
    );
    assert!(r.get("retry-after").is_some(), "and comes back");
    drop(conns);
    eventually(
        "once the stalled uploads are gone, deliveries flow",
        || async { sidecar.send(&larger).await.status == 200 },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_slow_connections_do_not_keep_a_valid_delivery_out() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    let mut slow = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(sidecar.addr).await.unwrap();
        s.write_all(b"POST /webhooks HTTP/1.1\r\nHost: x\r\nX-Pps-To")
            .await
            .unwrap();
        slow.push(s);
    }
    eventually("every slow connection is open", || async {
        metric(&sidecar.metrics().await, "pps_sidecar_open_connections") >= 300.0
    })
    .await;
    assert_eq!(sidecar.send(&Delivery::json()).await.status, 200);
    assert_eq!(app.count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_are_closed_as_they_are_accepted() {
    let app = TestApp::start().await;
    // Held connections send nothing: the head deadline must not free their places during the test.
    let sidecar = Sidecar::start(
        &app,
        "[server]\nmax_connections = 5\nheader_timeout_ms = 600000\n",
    )
    .await;
    // The start-up check's own connection must have closed, or it holds a place the test counts on.
    eventually("no connection is open", || async {
        metric(&sidecar.metrics().await, "pps_sidecar_open_connections") == 0.0
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(TcpStream::connect(sidecar.addr).await.unwrap());
    }
    eventually("five connections are open", || async {
        metric(&sidecar.metrics().await, "pps_sidecar_open_connections") == 5.0
    })
    .await;
    let mut sixth = TcpStream::connect(sidecar.addr).await.unwrap();
    assert_eq!(
        closed(&mut sixth).await,
        Some(Vec::new()),
        "closed unanswered"
    );
    let m = sidecar.metrics().await;
    assert_eq!(
        metric(
            &m,
            "pps_sidecar_connections_closed_total{reason=\"too_many_connections\"}"
        ),
        1.0
    );
    drop(held.pop());
    let status = poll("a freed place serves a delivery", || async {
        let mut s = TcpStream::connect(sidecar.addr).await.ok()?;
        s.write_all(&Delivery::json().bytes()).await.ok()?;
        let answer = closed_or_answered(&mut s).await;
        std::str::from_utf8(answer.get(9..12)?)
            .ok()?
            .parse::<u16>()
            .ok()
    })
    .await;
    assert_eq!(status, 200);
}

/// What the peer sent until it closed or a head ended.
async fn closed_or_answered(s: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match tokio::time::timeout(PATIENCE, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heads_past_max_header_bytes_are_cut_and_hundreds_of_them_stay_within_memory() {
    let app = TestApp::start().await;
    // The head deadline out of the way: the byte bound alone must cut these.
    let sidecar = Sidecar::start(&app, "[server]\nheader_timeout_ms = 600000\n").await;
    // A megabyte of head without its end, on each of 300 connections: Pingora alone would buffer it all.
    let mut head = b"POST /webhooks HTTP/1.1\r\nHost: x\r\n".to_vec();
    let line = format!("X-Big: {}\r\n", "a".repeat(8_000));
    for _ in 0..127 {
        head.extend_from_slice(line.as_bytes());
    }
    let head = std::sync::Arc::new(head);
    let mut writers = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(sidecar.addr).await.unwrap();
        let head = head.clone();
        writers.push(tokio::spawn(async move {
            let refused = s.write_all(&head).await.is_err();
            (s, refused)
        }));
    }
    let mut conns = Vec::new();
    for w in writers {
        conns.push(w.await.unwrap());
    }
    eventually("every over-long head is cut", || async {
        metric(&sidecar.metrics().await, "pps_sidecar_open_connections") == 0.0
    })
    .await;
    let rss = vm_rss_bytes(sidecar.pid());
    eprintln!(
        "RSS {:.1} MiB after 300 one-megabyte heads",
        rss as f64 / 1048576.0
    );
    assert!(rss < 96 * 1024 * 1024, "RSS {rss} bytes");
    assert_eq!(app.count(), 0);
    assert_eq!(sidecar.send(&Delivery::json()).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_1_0_request_without_keep_alive_is_answered_and_closed() {
    let app = TestApp::start().await;
    let sidecar = Sidecar::start(&app, "").await;
    let bytes = Delivery::json().bytes();
    let http10 = String::from_utf8(bytes)
        .unwrap()
        .replacen("HTTP/1.1", "HTTP/1.0", 1);
    let mut s = TcpStream::connect(sidecar.addr).await.unwrap();
    s.write_all(http10.as_bytes()).await.unwrap();
    let answer = closed(&mut s)
        .await
        .expect("closed after the answer, as HTTP/1.0 wants");
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
}
