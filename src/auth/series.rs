//! Which secret, which key: the series that tell an operator what verifies the deliveries, so that a
//! rotation can be watched (the new secret takes over, the old one falls to zero, then it is removed).
//!
//! Their labels come from the configuration (secret names) and from the issuers' key sets (`kid`s), not
//! from `crate::outcome`'s fixed lists, so they are rendered here, next to what they count, and appended
//! to `/metrics` by the admin listener. Every series is bounded by the configuration in force: a secret
//! no longer configured, or a key no longer published, leaves the page.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};

use super::{Failure, hmac, jwt::JwtVerifier};
use crate::config::{AuthConfig, Method};
use crate::metrics::header;

/// Deliveries whose authentication failed, by reason (in shadow mode too).
static FAILURES: [AtomicU64; Failure::ALL.len()] =
    [const { AtomicU64::new(0) }; Failure::ALL.len()];

/// Counts a delivery whose authentication failed with `f`.
pub fn failure(f: Failure) {
    FAILURES[f.index()].fetch_add(1, Relaxed);
}

/// Deliveries verified, by the name of the secret that verified them. Kept across reloads by name, so
/// that a rotation's reloads do not reset the counts it is watched by.
static HMAC_VERIFIED: RwLock<BTreeMap<Arc<str>, AtomicU64>> = RwLock::new(BTreeMap::new());

/// Counts a delivery verified by the secret `name`.
pub fn hmac_verified(name: &Arc<str>) {
    if let Some(n) = HMAC_VERIFIED
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(name)
    {
        n.fetch_add(1, Relaxed);
        return;
    }
    HMAC_VERIFIED
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .entry(name.clone())
        .or_default()
        .fetch_add(1, Relaxed);
}

/// Appends the authentication series for `cfg` (in force) at `now` (unix seconds). Each family is
/// there, at least its `# TYPE` line, whatever the methods, so that an alert always names a series that
/// exists.
pub fn render(w: &mut String, cfg: &AuthConfig, jwt: Option<&JwtVerifier>, now: i64) {
    header(
        w,
        (
            "pps_sidecar_auth_failures_total",
            "counter",
            "Deliveries whose authentication failed, by reason (in shadow mode too).",
        ),
    );
    for f in Failure::ALL {
        let n = FAILURES[f.index()].load(Relaxed);
        let _ = writeln!(
            w,
            "pps_sidecar_auth_failures_total{{reason=\"{}\"}} {n}",
            f.label()
        );
    }
    let hmac_on = cfg.methods.contains(&Method::Hmac);
    header(
        w,
        (
            "pps_sidecar_hmac_verified_total",
            "counter",
            "Deliveries verified by HMAC, by the name of the secret that verified them.",
        ),
    );
    if hmac_on {
        let mut counts = HMAC_VERIFIED.write().unwrap_or_else(|e| e.into_inner());
        // Secrets no longer configured are forgotten: the series stay bounded by the configuration.
        counts.retain(|name, _| cfg.hmac.secrets.iter().any(|s| s.name == *name));
        for s in &cfg.hmac.secrets {
            let n = counts.get(&s.name).map_or(0, |n| n.load(Relaxed));
            let _ = writeln!(
                w,
                "pps_sidecar_hmac_verified_total{{secret=\"{}\"}} {n}",
                label_value(&s.name)
            );
        }
    }
    header(
        w,
        (
            "pps_sidecar_hmac_secrets_expired",
            "gauge",
            "Configured HMAC secrets past their not_after; when all are, deliveries are answered 503.",
        ),
    );
    let expired = if hmac_on {
        hmac::expired(&cfg.hmac, now)
    } else {
        0
    };
    let _ = writeln!(w, "pps_sidecar_hmac_secrets_expired {expired}");
    header(
        w,
        (
            "pps_sidecar_jwt_verified_total",
            "counter",
            "Deliveries verified by JWT, by issuer and signing key (kid=\"other\": a key beyond the first 16).",
        ),
    );
    if let Some(jwt) = jwt {
        jwt.render_verified(w);
    }
}

/// A Prometheus label value: `\`, `"` and line feeds escaped.
pub(super) fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_cannot_break_out_of_their_quotes() {
        assert_eq!(label_value("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(label_value("next"), "next");
    }
}
