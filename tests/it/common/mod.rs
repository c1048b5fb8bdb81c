//! Test harness: the real `pps-sidecar` binary on loopback (`sidecar`), a real HTTP/1.1 server as the app
//! (`app`), a raw HTTP client that can send what a browser library would refuse to (`client`), the
//! deliveries it sends (`delivery`), a real OpenID Connect issuer (`oidc`), and the processes and wire
//! framing they share (`process`, `http`). Tests `use common::*` for all but the issuer.
#![allow(dead_code, unused_imports)]

pub mod app;
pub mod client;
pub mod collector;
pub mod delivery;
mod http;
pub mod oidc;
pub mod process;
pub mod redis;
pub mod sidecar;

use std::future::Future;
use std::time::Duration;

pub use app::*;
pub use client::*;
pub use delivery::*;
pub use process::*;
pub use redis::*;
pub use sidecar::*;

pub const SECRET: &str = "whsec-test-0f9e8d7c6b5a";
/// Generous bound on waiting for a condition; reaching it means the test failed, not that it was slow.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// Polls `check` until it gives a value; reaching `PATIENCE` fails the test (it bounds, it does not time).
pub async fn poll<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `check` until it holds, as `poll` does.
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    poll(what, || {
        let holds = check();
        async move { holds.await.then_some(()) }
    })
    .await
}
