//! Why a delivery's authentication failed, and whether that proves a forgery.
//!
//! Only a proof is answered `403`, which Pitchpoint never retries; everything else is `503` +
//! `Retry-After`. `is_proof` names every variant, so a new one must be placed on a side.

use crate::outcome::labelled;

labelled! {
    /// Why a delivery was refused. Logged and counted; never sent to the client. Whether it is answered
    /// `403` or `503` is decided by `is_proof` alone; `crate::auth` says why each `403` is proof.
    pub enum Failure {
        MissingCredentials => "missing_credentials",
        AmbiguousCredentials => "ambiguous_credentials",
        MalformedSignature => "malformed_signature",
        BadSignature => "bad_signature",
        /// Not a proof: every configured HMAC secret is past its `not_after`. A configuration problem.
        NoValidSecret => "no_valid_secret",
        MalformedToken => "malformed_token",
        UntrustedIssuer => "untrusted_issuer",
        WrongAudience => "wrong_audience",
        Expired => "expired",
        NotYetValid => "not_yet_valid",
        MissingClaim => "missing_claim",
        DisallowedAlgorithm => "disallowed_algorithm",
        /// The token has no `kid`, or a key set fetched after the token arrived does not hold it.
        UnknownKey => "unknown_key",
        /// Not a proof: the `kid` is not in the keys held, and no key set fetched since the token arrived
        /// could be had (the refetch is rate-limited, or it failed).
        UnknownKeyUnchecked => "unknown_key_unchecked",
        /// Not a proof of forgery: the keys to check the token against are not there.
        KeysNotLoaded => "keys_not_loaded",
        SubjectNotAllowed => "subject_not_allowed",
        EmailNotAllowed => "email_not_allowed",
        /// A signed body the app already acknowledged under another webhook id (`auth.hmac.replay_guard`).
        ReplayedBody => "replayed_body",
    }
}

impl Failure {
    /// Whether this failure proves the delivery is not an authentic Pitchpoint event (`403`, which
    /// Pitchpoint never retries), rather than that the sidecar could not decide (`503` + `Retry-After`,
    /// so that Pitchpoint retries). Every variant is named: a new one must be placed on a side.
    pub fn is_proof(self) -> bool {
        match self {
            Failure::NoValidSecret | Failure::UnknownKeyUnchecked | Failure::KeysNotLoaded => false,
            Failure::MissingCredentials
            | Failure::AmbiguousCredentials
            | Failure::MalformedSignature
            | Failure::BadSignature
            | Failure::MalformedToken
            | Failure::UntrustedIssuer
            | Failure::WrongAudience
            | Failure::Expired
            | Failure::NotYetValid
            | Failure::MissingClaim
            | Failure::DisallowedAlgorithm
            | Failure::UnknownKey
            | Failure::SubjectNotAllowed
            | Failure::EmailNotAllowed
            | Failure::ReplayedBody => true,
        }
    }
}
