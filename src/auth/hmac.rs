//! `X-Pps-Hmac-Sha256`: lowercase hex of HMAC-SHA256(secret, raw body).

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::Failure;
use crate::config::HmacConfig;

/// Verifies `signature` (the header's value) over `body` with every secret in force at `now`; the name of
/// the secret that verified it.
///
/// The comparison is constant-time (`verify_slice`); trying each secret in turn is what makes rotation
/// work: the old and the new secret are both configured while Pitchpoint switches. When no secret is in
/// force any more, nothing can be verified: that is a configuration problem, not a forgery
/// (`Failure::NoValidSecret`, answered 503), and it is said loudly.
pub fn verify(
    cfg: &HmacConfig,
    signature: &[u8],
    body: &[u8],
    now: i64,
) -> Result<Arc<str>, Failure> {
    let expected = decode_hex32(signature.trim_ascii()).ok_or(Failure::MalformedSignature)?;
    let mut any_in_force = false;
    for secret in cfg.secrets.iter().filter(|s| s.in_force(now)) {
        any_in_force = true;
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&secret.key)
            .expect("HMAC accepts keys of any length");
        mac.update(body);
        if mac.verify_slice(&expected).is_ok() {
            return Ok(secret.name.clone());
        }
    }
    if any_in_force {
        Err(Failure::BadSignature)
    } else {
        log_none_in_force(cfg, now);
        Err(Failure::NoValidSecret)
    }
}

/// How many configured secrets are past their `not_after` at `now` (`pps_sidecar_hmac_secrets_expired`).
pub fn expired(cfg: &HmacConfig, now: i64) -> usize {
    cfg.secrets.iter().filter(|s| !s.in_force(now)).count()
}

/// A line for `/readyz` when a configured secret is past its `not_after`, naming the secrets (never their
/// values); `None` when every secret is in force. Informational: with no secret in force every delivery
/// is answered 503 until the configuration is fixed, on every replica alike.
pub fn status(cfg: &HmacConfig, now: i64) -> Option<String> {
    let past = names(cfg, |s| !s.in_force(now));
    match expired(cfg, now) {
        0 => None,
        n if n == cfg.secrets.len() => Some(format!(
            "hmac: every secret is past its not_after ({past}): deliveries are answered 503"
        )),
        _ => Some(format!(
            "hmac: past its not_after and still configured: {past}"
        )),
    }
}

/// The names of the secrets that `pick` selects, comma-separated.
fn names(cfg: &HmacConfig, pick: impl Fn(&crate::config::Secret) -> bool) -> String {
    let names: Vec<&str> = cfg
        .secrets
        .iter()
        .filter(|s| pick(s))
        .map(|s| &*s.name)
        .collect();
    names.join(", ")
}

/// Every delivery meets an all-expired configuration: the error is logged at most once a minute.
fn log_none_in_force(cfg: &HmacConfig, now: i64) {
    static LAST: AtomicI64 = AtomicI64::new(0);
    let last = LAST.load(Relaxed);
    if now.saturating_sub(last) >= 60 && LAST.compare_exchange(last, now, Relaxed, Relaxed).is_ok()
    {
        log::error!(
            "auth.hmac: every secret is past its not_after ({}): deliveries are answered 503 until a \
             secret in force is configured",
            names(cfg, |_| true)
        );
    }
}

/// Lowercase hex of HMAC-SHA256(`key`, `body`), as Pitchpoint sends it.
pub fn sign(key: &[u8], body: &[u8]) -> String {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("any key length");
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    let mut out = String::with_capacity(64);
    for b in tag {
        out.push(char::from(b"0123456789abcdef"[usize::from(b >> 4)]));
        out.push(char::from(b"0123456789abcdef"[usize::from(b & 15)]));
    }
    out
}

fn decode_hex32(s: &[u8]) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn cfg(secrets: &[(&str, Option<i64>)]) -> HmacConfig {
        HmacConfig {
            header: "X-Pps-Hmac-Sha256".into(),
            header_key: http::HeaderName::from_static("x-pps-hmac-sha256"),
            secrets: secrets
                .iter()
                .enumerate()
                .map(|(i, (k, na))| Secret {
                    name: format!("s{i}").into(),
                    key: k.as_bytes().to_vec(),
                    not_after: *na,
                    file: None,
                })
                .collect(),
            replay_guard: false,
        }
    }

    #[test]
    fn rfc4231_test_case_2() {
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn any_configured_secret_verifies_and_case_of_hex_does_not_matter() {
        let c = cfg(&[("old", None), ("new", None)]);
        let sig = sign(b"new", b"{}");
        assert_eq!(verify(&c, sig.as_bytes(), b"{}", 0), Ok("s1".into()));
        assert_eq!(
            verify(&c, sig.to_uppercase().as_bytes(), b"{}", 0),
            Ok("s1".into())
        );
    }

    #[test]
    fn expired_secret_no_longer_verifies() {
        let c = cfg(&[("old", Some(100)), ("new", None)]);
        let sig = sign(b"old", b"{}");
        assert_eq!(verify(&c, sig.as_bytes(), b"{}", 100), Ok("s0".into()));
        assert_eq!(
            verify(&c, sig.as_bytes(), b"{}", 101),
            Err(Failure::BadSignature)
        );
    }

    #[test]
    fn malformed_signatures_are_named_as_such() {
        let c = cfg(&[("k", None)]);
        for bad in [&b""[..], b"zz", &[b'g'; 64], &[b'a'; 63], &[b'a'; 66]] {
            assert_eq!(verify(&c, bad, b"{}", 0), Err(Failure::MalformedSignature));
        }
    }

    #[test]
    fn with_every_secret_past_its_not_after_nothing_is_proven_and_status_names_them() {
        let c = cfg(&[("old", Some(100)), ("new", Some(200))]);
        let sig = sign(b"new", b"{}");
        assert_eq!(status(&c, 100), None);
        assert_eq!(expired(&c, 150), 1);
        assert_eq!(
            status(&c, 150).as_deref(),
            Some("hmac: past its not_after and still configured: s0")
        );
        assert_eq!(verify(&c, sig.as_bytes(), b"{}", 150), Ok("s1".into()));
        for forged_or_not in [sig.clone(), sign(b"forged", b"{}")] {
            let f = verify(&c, forged_or_not.as_bytes(), b"{}", 201).unwrap_err();
            assert_eq!(f, Failure::NoValidSecret);
            assert!(!f.is_proof());
        }
        assert_eq!(expired(&c, 201), 2);
        let line = status(&c, 201).unwrap();
        assert!(
            line.contains("every secret") && line.contains("s0, s1"),
            "{line}"
        );
        assert!(
            !line.contains("old") && !line.contains("new"),
            "never a value"
        );
    }
}
