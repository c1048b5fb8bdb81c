//! Is this delivery from Pitchpoint? The methods listed in `auth.methods`; any one that verifies is enough.
//!
//! ## What answers 403, and why each is proof
//!
//! Pitchpoint drops an event for good on a `403`, so a failure is answered `403` only when it proves
//! that the delivery is not an authentic Pitchpoint event under the configuration in force
//! (`Failure::is_proof`, the one place that decides). These are all of them:
//!
//! | failure | why it is proof |
//! | --- | --- |
//! | `missing_credentials` | Pitchpoint sends the credential of its scheme on every delivery: a delivery with none of the configured methods' credentials is not from it |
//! | `ambiguous_credentials` | the signature header, or `Authorization`, sent twice: Pitchpoint sends one, and the app or a proxy could read the other |
//! | `malformed_signature` | not 64 hex digits: not an HMAC-SHA256 that Pitchpoint computed |
//! | `bad_signature` | HMAC: no secret in force gives this tag over these bytes (a secret past its `not_after` was withdrawn by the operator); JWT: the issuer's key named by `kid` does not verify the signature |
//! | `malformed_token` | not a compact JWS of at most 8 KiB with a JSON header and claims (`alg: none` included): no token an issuer signed |
//! | `untrusted_issuer` | `iss` is none of `auth.jwt.issuers`: whoever signed it is not trusted here |
//! | `wrong_audience` | `aud` is none of the issuer's `audiences`: a token meant for another relying party |
//! | `expired`, `not_yet_valid` | outside the validity the issuer signed into it (`exp`, `nbf`, `iat`), beyond `leeway_seconds` of clock skew |
//! | `missing_claim` | `iss`, `exp` or `aud` absent: Pitchpoint's ID tokens carry all three |
//! | `disallowed_algorithm` | an `alg` the issuer's keys are not for (an HMAC `alg` keyed with a public key, say) |
//! | `unknown_key` | the token names no `kid`, or a key set fetched *after the token arrived* does not hold its `kid`: an issuer publishes a key before it signs with it, so such a set holds every key it signs with (`jwt`) |
//! | `replayed_body` | with `auth.hmac.replay_guard`: a signed body the app already acknowledged under another webhook id within `dedup.ttl_seconds`, a replay of a captured delivery (the HMAC covers the body only) |
//! | `subject_not_allowed`, `email_not_allowed` | a valid token of the issuer, but of a subject (or verified email) the issuer's allow-list does not name: any user of a Firebase project holds such tokens |
//!
//! Not proof: answered `503` + `Retry-After` (`RETRY_AFTER`), so Pitchpoint sends the event again:
//!
//! | failure | why the sidecar cannot decide |
//! | --- | --- |
//! | `keys_not_loaded` | the issuer's keys could not be loaded yet |
//! | `unknown_key_unchecked` | the `kid` is not in the keys held, and no key set fetched since the token arrived could be had: the refetch is rate-limited (at most one per `RETRY_AFTER`) or failed. The key may have been published a moment ago |
//! | `no_valid_secret` | every HMAC secret is past its `not_after`: a configuration problem, logged at error level, counted (`pps_sidecar_hmac_secrets_expired`) and shown by `hmac::status` |
//!
//! With several methods, a delivery is refused `403` only when every credential it carried proves it;
//! one that could not be decided makes the answer `503` (`combine`). Outside this module, `403` is also
//! the answer of the `[filters]` allow-lists (outcome `filtered`) and the app's own `403`, relayed.

mod failure;
pub mod hmac;
pub mod jwt;
pub mod series;

use std::sync::Arc;
use std::time::Duration;

use pingora::http::RequestHeader;

use crate::config::{AuthConfig, Method};
pub use failure::Failure;

/// How long a `503` from authentication asks the sender to wait (`Retry-After`). The unknown-`kid`
/// refetch window is no longer (checked at compile time in `jwt`), so that a sender honouring it finds on
/// its retry a refetch allowed, or a key set fetched after its key was published.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

/// How a delivery was authenticated, and by which secret or key. The app receives the method as
/// `X-Pps-Verified`; the access line and the metrics name the secret or the key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    /// By the HMAC secret of this name (`auth.hmac.secrets[].name`, by default its position).
    Hmac { secret: Arc<str> },
    /// By a token of `issuer` about `subject`, signed with the issuer's key `kid`.
    Jwt {
        subject: String,
        issuer: String,
        kid: String,
    },
}

impl Verified {
    pub fn label(&self) -> &'static str {
        match self {
            Verified::Hmac { .. } => "hmac",
            Verified::Jwt { .. } => "jwt",
        }
    }

    /// The secret's name or the key's `kid`: configured or published names, never key material.
    pub fn credential(&self) -> &str {
        match self {
            Verified::Hmac { secret } => secret,
            Verified::Jwt { kid, .. } => kid,
        }
    }
}

/// Checks the delivery with each configured method in turn.
///
/// When several methods are configured and all fail, the failure reported is the first one that could
/// not be decided, else the first one (`combine`).
pub async fn authenticate(
    cfg: &AuthConfig,
    jwt: Option<&jwt::JwtVerifier>,
    req: &RequestHeader,
    body: &[u8],
) -> Result<Verified, Failure> {
    let now = crate::timefmt::unix_now();
    let mut failure = None;
    for method in &cfg.methods {
        let result = match method {
            Method::Hmac => {
                let mut values = req.headers.get_all(&cfg.hmac.header_key).iter();
                match (values.next(), values.next()) {
                    (None, _) => continue,
                    (Some(_), Some(_)) => Err(Failure::AmbiguousCredentials),
                    (Some(sig), None) => hmac::verify(&cfg.hmac, sig.as_bytes(), body, now)
                        .inspect(series::hmac_verified)
                        .map(|secret| Verified::Hmac { secret }),
                }
            }
            Method::Jwt => {
                let Some(verifier) = jwt else { continue };
                let mut values = req.headers.get_all(http::header::AUTHORIZATION).iter();
                match (values.next(), values.next()) {
                    (None, _) => continue,
                    (Some(_), Some(_)) => Err(Failure::AmbiguousCredentials),
                    (Some(v), None) => match jwt::bearer(v.as_bytes()) {
                        Some(token) => verifier.verify(token).await,
                        None => Err(Failure::MalformedToken),
                    },
                }
            }
        };
        match result {
            Ok(v) => return Ok(v),
            Err(f) => failure = Some(combine(failure, f)),
        }
    }
    Err(failure.unwrap_or(Failure::MissingCredentials))
}

/// The failure of a delivery whose credentials failed `so_far` and then `next`. A credential that could
/// not be checked might still have verified the delivery, which one verifying credential is enough to
/// pass: so the first undecided failure wins, and only all-proof failures add up to a proof. Otherwise
/// the first, as it is the credential the sender meant to use.
fn combine(so_far: Option<Failure>, next: Failure) -> Failure {
    match so_far {
        Some(f) if f.is_proof() && !next.is_proof() => next,
        Some(f) => f,
        None => next,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_credential_that_could_not_be_checked_outweighs_one_that_failed() {
        use Failure::*;
        assert_eq!(combine(None, BadSignature), BadSignature);
        assert_eq!(combine(Some(BadSignature), UnknownKey), BadSignature);
        assert_eq!(combine(Some(BadSignature), KeysNotLoaded), KeysNotLoaded);
        assert_eq!(combine(Some(NoValidSecret), Expired), NoValidSecret);
        assert_eq!(combine(Some(NoValidSecret), KeysNotLoaded), NoValidSecret);
    }

    /// The module's two tables name every failure once, each on the side `is_proof` puts it.
    #[test]
    fn the_tables_above_name_every_failure_on_its_side() {
        let doc = include_str!("mod.rs");
        let (proofs, rest) = doc.split_once("Not proof:").unwrap();
        let undecided = rest.split_once("\npub mod").unwrap().0;
        for f in Failure::ALL {
            let cell = format!("`{}`", f.label());
            let (side, other) = match f.is_proof() {
                true => (proofs, undecided),
                false => (undecided, proofs),
            };
            assert_eq!(side.matches(&cell).count(), 1, "{cell}");
            assert!(!other.contains(&cell), "{cell}");
        }
    }
}
