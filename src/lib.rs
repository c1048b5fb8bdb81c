//! pps-sidecar: verifies, deduplicates and normalises Pitchpoint webhook deliveries in front of an app.
//!
//! Where to look: the path of a delivery is drawn at the top of [`proxy`]; it is verified in [`auth`],
//! deduplicated in [`dedup`], its headers rewritten in [`headers`], and sent to the app through
//! [`upstream`]. The configuration is [`config`]; the state in force, swapped on reload, is [`state`].

pub mod admin;
pub mod allocator;
pub mod auth;
pub mod config;
pub mod dedup;
pub mod delivery;
pub mod headers;
pub mod inject;
pub mod limits;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod outcome;
pub mod proxy;
pub mod reload;
pub mod route;
pub mod server;
pub mod spool;
pub mod state;
pub mod timefmt;
pub mod trace;
pub mod upstream;
