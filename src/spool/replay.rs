//! Re-sending spooled entries to the app, asked over the admin listener (`POST /spool/replay`) by
//! `pps-sidecar spool replay`.
//!
//! A replay is a delivery under the same contract: its key is claimed first, so an event the app
//! acknowledged since (Pitchpoint's retry got through) is not sent again, and one with the app right now is
//! left for later. The entry goes as it arrived, verification included, plus `X-Pps-Replayed: true`.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::store::{Listed, Store, now_ms};
use crate::config::SpoolConfig;
use crate::dedup::{AppAnswer, BodyDigest, Claim};
use crate::headers;
use crate::metrics::METRICS;
use crate::outcome::Replayed;
use crate::state::Shared;

/// The body of `POST /spool/replay`.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ReplayRequest {
    #[serde(default)]
    pub ids: Vec<String>,
    /// Every entry, oldest first (`ids` is then ignored).
    #[serde(default)]
    pub all: bool,
}

/// What the replay of one entry came to: the admin listener's answer is a JSON array of these, and the
/// CLI decides its exit status from `result`, not from the words it prints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplayedEntry {
    pub id: String,
    pub result: Replayed,
    /// The app's status, when it answered (or, for a duplicate, the status it acknowledged with).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
}

impl ReplayedEntry {
    /// The event is with the app now: delivered by this replay, or acknowledged before it.
    pub fn done(&self) -> bool {
        matches!(self.result, Replayed::Delivered | Replayed::Duplicate)
    }
}

/// Only a peer on this host (`kubectl exec` into the pod) may ask for a replay: the admin listener is
/// open to the cluster for probes and scrapes, and a replay sends stored deliveries to the app.
pub fn is_loopback_peer(peer: Option<SocketAddr>) -> bool {
    peer.is_some_and(|p| p.ip().to_canonical().is_loopback())
}

/// Replays the entries asked for, one after the other.
pub async fn replay(shared: &Shared, cfg: &SpoolConfig, req: ReplayRequest) -> Vec<ReplayedEntry> {
    let store = Store::new(cfg);
    let ids = if req.all {
        let s = store.clone();
        tokio::task::spawn_blocking(move || s.list())
            .await
            .unwrap_or_default()
            .into_iter()
            .map(|l: Listed| l.id)
            .collect()
    } else {
        req.ids
    };
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let (result, status) = one(shared, &store, &id).await;
        METRICS.spool_replayed(result);
        let mut shown = String::new();
        crate::logging::quote(&mut shown, &id);
        log::info!("spool: replay of entry {shown}: {}", result.label());
        out.push(ReplayedEntry { id, result, status });
    }
    let s = store.clone();
    let _ = tokio::task::spawn_blocking(move || s.enforce(now_ms())).await;
    out
}

/// Replays one entry; removes it when the app acknowledged it or had already.
async fn one(shared: &Shared, store: &Store, id: &str) -> (Replayed, Option<u16>) {
    let (s, owned) = (store.clone(), id.to_string());
    let Ok(Ok(entry)) = tokio::task::spawn_blocking(move || s.read(&owned)).await else {
        return (Replayed::Missing, None);
    };
    let live = shared.live();
    // Past the dedup TTL an acknowledgement since (a retry that got through) is forgotten: a replay could
    // deliver the event twice.
    let age_ms = now_ms().saturating_sub(entry.meta.time_ms);
    if live.config.dedup.enabled && u128::from(age_ms) > live.config.dedup.ttl.as_millis() {
        return (Replayed::Expired, None);
    }
    let guard = if live.config.dedup.enabled {
        let digest = BodyDigest::of(&entry.body);
        match shared
            .dedup
            .claim(entry.meta.key.clone(), digest, false)
            .await
        {
            Claim::Acquired(g) => Some(g),
            Claim::Duplicate { status, .. } => {
                remove(store, id).await;
                return (Replayed::Duplicate, Some(status));
            }
            Claim::Busy | Claim::ReplayedBody | Claim::Unavailable => {
                return (Replayed::Busy, None);
            }
        }
    } else {
        None
    };
    let head = replayed_head(entry.head);
    let answer = match live.app.send(head, &entry.body.into()).await {
        Ok(mut exchange) => {
            // Read to its end: only a whole 2xx answer acknowledges the event (`AppAnswer`).
            let whole = tokio::time::timeout(live.deadlines.answer_body, exchange.drain())
                .await
                .unwrap_or(false);
            AppAnswer {
                status: exchange.status(),
                whole,
            }
        }
        Err(failure) => AppAnswer {
            status: failure.status(),
            whole: false,
        },
    };
    if let Some(g) = guard {
        g.settle(answer).await;
    }
    if answer.acknowledged() {
        remove(store, id).await;
        (Replayed::Delivered, Some(answer.status))
    } else if !answer.whole {
        (Replayed::Failed, Some(answer.status))
    } else {
        (Replayed::Refused, Some(answer.status))
    }
}

async fn remove(store: &Store, id: &str) {
    let (s, id) = (store.clone(), id.to_string());
    let _ = tokio::task::spawn_blocking(move || s.remove(&id)).await;
}

/// The head as it was sent, plus `X-Pps-Replayed: true` (a trust header: none arrives from outside).
fn replayed_head(mut head: Vec<u8>) -> Vec<u8> {
    if head.ends_with(b"\r\n\r\n") {
        head.truncate(head.len() - 2);
    }
    head.extend_from_slice(headers::REPLAYED.as_bytes());
    head.extend_from_slice(b": true\r\n\r\n");
    head
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_loopback_peer_may_ask_for_a_replay() {
        for ok in ["127.0.0.1:5", "[::1]:5", "[::ffff:127.0.0.1]:5"] {
            assert!(is_loopback_peer(Some(ok.parse().unwrap())), "{ok}");
        }
        for no in [
            "10.0.0.7:5",
            "[fe80::1]:5",
            "0.0.0.0:5",
            "[::ffff:10.0.0.1]:5",
        ] {
            assert!(!is_loopback_peer(Some(no.parse().unwrap())), "{no}");
        }
        assert!(
            !is_loopback_peer(None),
            "a Unix socket peer or an unknown one"
        );
    }

    #[test]
    fn a_replay_result_is_named_by_its_metric_label_on_the_wire() {
        for result in Replayed::ALL {
            let entry = ReplayedEntry {
                id: "x".into(),
                result,
                status: Some(200),
            };
            let json = serde_json::to_string(&entry).unwrap();
            assert!(
                json.contains(&format!("\"result\":\"{}\"", result.label())),
                "{json}"
            );
            assert_eq!(serde_json::from_str::<ReplayedEntry>(&json).unwrap(), entry);
        }
    }

    #[test]
    fn a_replayed_head_says_so_as_its_last_header() {
        let head = b"POST /webhooks HTTP/1.1\r\nX-Pps-Verified: hmac\r\n\r\n".to_vec();
        assert_eq!(
            replayed_head(head),
            b"POST /webhooks HTTP/1.1\r\nX-Pps-Verified: hmac\r\nX-Pps-Replayed: true\r\n\r\n"
        );
    }
}
