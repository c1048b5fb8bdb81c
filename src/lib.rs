//! pps-sidecar: verifies, deduplicates and normalises Pitchpoint webhook deliveries in front of an app.
//!
//! Where to look: a delivery is verified in [`auth`], deduplicated in [`dedup`], its headers rewritten in
//! [`headers`], and the whole path runs in [`proxy::Sidecar::request_filter`], which hands the request to
//! the app through [`forward`].

pub mod admin;
pub mod auth;
pub mod config;
pub mod dedup;
pub mod forward;
pub mod headers;
pub mod lifecycle;
pub mod metrics;
pub mod process;
pub mod proxy;
pub mod server;
pub mod timefmt;
