//! The integration tests, one binary so that the harness (`common`) is compiled and linked once. Each
//! module is one area of the contract; the real `pps-sidecar` binary runs between real loopback peers.

mod common;

mod app_probes;
mod boundary;
mod chaos;
mod cli;
mod dedup;
mod delivery;
mod hostile;
mod inject;
mod jwt;
mod k8s;
mod layout;
mod limits;
mod logs;
#[cfg(target_os = "linux")]
mod monitoring;
mod operations;
mod redis;
mod redis_faults;
mod redis_sentinel;
mod redis_tls;
mod retry;
mod runbooks;
mod secrets;
mod spool;
mod tracing;
