//! The dead-letter spool: verified deliveries the app refused, kept on disk so that an operator can
//! re-send them once the app is fixed (`pps-sidecar spool replay`).
//!
//! Pitchpoint drops an event for good on a 4xx other than 403: without this, a 404 during a deploy or a
//! 400 from a parsing bug loses the event silently. Off unless `spool.dir` is set: an entry holds the body
//! at rest.
//!
//! `store` is the directory (atomic, bounded, private files); `replay` re-sends entries through the running
//! sidecar, under the same dedup contract as a delivery. The proxy calls `Candidate::keep` and
//! `acknowledged` when it settles a verified delivery (`proxy::Stake`), and nothing else.

mod index;
mod replay;
mod store;

pub use replay::{ReplayRequest, ReplayedEntry, is_loopback_peer, replay};
pub use store::{Entry, Listed, Meta, Store, now_ms};

use crate::config::{Config, ConfigError, SpoolConfig};
use crate::dedup::Key;
use crate::delivery::Delivery;
use crate::metrics::METRICS;

/// Makes `c`'s spool directory ready (created 0700 when missing, proven writable): at start-up, by
/// `check` and the spool commands, and by a reload that names another directory. Validating the file
/// touches no file system; this is the one place that does, in the order the caller says.
pub fn prepare(c: &Config) -> Result<(), ConfigError> {
    let Some(s) = &c.spool else {
        return Ok(());
    };
    store::prepare_dir(&s.dir).map_err(|reason| ConfigError {
        file: c.path.display().to_string(),
        key: "spool.dir".into(),
        reason,
    })
}

/// At start: removes what a crash left half-written, applies the bounds, and sets the gauges.
pub fn open(cfg: &SpoolConfig) {
    let store = Store::new(cfg);
    let removed = store.open();
    let (entries, bytes) = store.enforce(now_ms());
    log::info!(
        "spool at {}: {entries} entries, {bytes} bytes ({removed} partial writes removed)",
        cfg.dir.display()
    );
}

/// The app acknowledged the event with `key` (a retry got through): an entry of it is dropped, so that no
/// replay can deliver it a second time.
pub async fn acknowledged(cfg: &SpoolConfig, key: &Key) {
    let id = index::lock()
        .as_ref()
        .filter(|i| i.dir == cfg.dir)
        .and_then(|i| i.by_key.get(key).cloned());
    if let Some(id) = id {
        let store = Store::new(cfg);
        let removed = tokio::task::spawn_blocking(move || store.remove(&id)).await;
        if removed.unwrap_or(false) {
            log::info!("spool: an entry was dropped: its event is acknowledged now");
        }
    }
}

/// A verified delivery on its way to the app, ready to be spooled if the app refuses it. Only a verified
/// delivery ever makes one (`proxy::Stake`).
pub struct Candidate {
    cfg: SpoolConfig,
    verified: &'static str,
    head: Vec<u8>,
}

impl Candidate {
    /// `verified`: how it was verified (`hmac`, `jwt`); `head`: as the app receives it.
    pub fn new(cfg: &SpoolConfig, verified: &'static str, head: &[u8]) -> Self {
        Self {
            cfg: cfg.clone(),
            verified,
            head: head.to_vec(),
        }
    }

    /// Spools the delivery when `status` (the app's, or 502 / 504) is one the spool keeps. The entry is on
    /// disk when this returns, before Pitchpoint is answered; a failure is logged and counted and changes
    /// nothing in that answer.
    pub async fn keep(self, status: u16, delivery: &Delivery, body: &bytes::Bytes) {
        if !self.cfg.keeps(status) {
            return;
        }
        let meta = Meta {
            time_ms: now_ms(),
            status,
            verified: self.verified.to_string(),
            key: delivery.key(),
            topic: delivery.topic.clone(),
            head_len: 0,
            body_len: 0,
        };
        // Quoted: it comes from the sender, and goes into log lines.
        let mut webhook_id = String::new();
        crate::logging::quote(&mut webhook_id, &delivery.webhook_id);
        let body = body.clone();
        let store = Store::new(&self.cfg);
        let head = self.head;
        let written = tokio::task::spawn_blocking(move || store.write(meta, &head, &body)).await;
        match written {
            Ok(Ok(id)) => log::info!(
                "spool: app answered {status}: kept as entry {id}, webhook id {webhook_id}"
            ),
            Ok(Err(e)) => {
                METRICS.spool_write_failed();
                log::error!(
                    "spool: cannot keep webhook id {webhook_id} (app answered {status}): {}",
                    e.kind()
                );
            }
            Err(_) => {
                METRICS.spool_write_failed();
                log::error!("spool: cannot keep webhook id {webhook_id}: the write task failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn validating_a_spool_touches_no_file_system_and_prepare_makes_the_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("spool");
        let text = format!(
            "[upstream]\naddress = \"127.0.0.1:3000\"\n[auth.hmac]\nsecrets = [{{ value = \"s\" }}]\n[spool]\ndir = \"{}\"\n",
            dir.display()
        );
        let c = Config::parse(&text, Path::new("sidecar.toml")).unwrap();
        assert!(!dir.exists(), "validation created the spool directory");
        prepare(&c).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let nested = text.replace("/spool\"", "/a/b\"");
        prepare(&Config::parse(&nested, Path::new("sidecar.toml")).unwrap()).unwrap();
        assert!(tmp.path().join("a/b").is_dir(), "parents are created too");

        std::fs::write(tmp.path().join("file"), "").unwrap();
        let text = text.replace("/spool\"", "/file\"");
        let e = prepare(&Config::parse(&text, Path::new("sidecar.toml")).unwrap()).unwrap_err();
        assert_eq!(
            (e.file.as_str(), e.key.as_str(), e.reason.as_str()),
            ("sidecar.toml", "spool.dir", "is not a directory")
        );
    }
}
