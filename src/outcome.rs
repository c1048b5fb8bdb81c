//! How a request ended, and why an authentication failed: shared by the proxy, the metrics and the logs,
//! so that none of them imports another.
//!
//! Each enum's list of values and labels is derived from its one definition by `labelled!`: a new variant
//! is counted, rendered and logged without a second list to keep in step.

/// Defines a fieldless enum with `ALL` (every variant, in order) and `label()` (its metric label).
macro_rules! labelled {
    ($(#[$meta:meta])* pub enum $name:ident { $($(#[$vmeta:meta])* $variant:ident => $label:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum $name {
            $($(#[$vmeta])* $variant,)+
        }

        impl $name {
            pub const ALL: [$name; [$($label),+].len()] = [$($name::$variant),+];

            pub const fn label(self) -> &'static str {
                match self {
                    $($name::$variant => $label,)+
                }
            }

            /// Position in `ALL`, for arrays of counters.
            pub const fn index(self) -> usize {
                self as usize
            }
        }
    };
}

labelled! {
    /// How a request ended, for the access log and `pps_sidecar_requests_total{outcome}`.
    pub enum Outcome {
        Forwarded => "forwarded",
        Duplicate => "duplicate",
        Unauthorized => "unauthorized",
        BadRequest => "bad_request",
        TooLarge => "too_large",
        MethodNotAllowed => "method_not_allowed",
        Filtered => "filtered",
        NotFound => "not_found",
        UpstreamError => "upstream_error",
        /// The sidecar could not decide (an issuer's keys cannot be loaded): 503, Pitchpoint retries.
        Unavailable => "unavailable",
        /// Bodies in memory reached `server.max_buffered_bytes`: 503, Pitchpoint retries.
        Overloaded => "overloaded",
        /// The body did not arrive whole within `server.body_timeout_ms`: 408.
        Timeout => "timeout",
        /// The app answered a 4xx, turned into 503 + Retry-After (`upstream.app_4xx = "retry"`).
        Deferred => "deferred",
    }
}

labelled! {
    /// Why the listener closed a connection without answering.
    pub enum Closed {
        /// Over `server.max_connections`.
        TooManyConnections => "too_many_connections",
        /// No whole request head within `server.header_timeout_ms`.
        HeaderTimeout => "header_timeout",
    }
}

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

labelled! {
    /// Why the spool removed an entry nobody replayed, for `pps_sidecar_spool_dropped_total{reason}`.
    pub enum SpoolDropped {
        /// The oldest, to stay within `spool.max_bytes`.
        MaxBytes => "max_bytes",
        /// Older than `spool.max_age_hours`.
        MaxAge => "max_age",
        /// The same event was spooled again since (its newest entry stays).
        Superseded => "superseded",
    }
}

labelled! {
    /// What a replay of one spooled entry came to, for `pps_sidecar_spool_replayed_total{result}` and the
    /// operator's `pps-sidecar spool replay`.
    pub enum Replayed {
        /// The app acknowledged it with a 2xx: the entry is removed.
        Delivered => "delivered",
        /// The event was acknowledged since (Pitchpoint's retry got through): not sent, entry removed.
        Duplicate => "duplicate",
        /// The app refused it again: the entry stays.
        Refused => "refused",
        /// The app could not be reached or did not answer in time: the entry stays.
        Failed => "failed",
        /// Another copy of the event is with the app right now: not sent, the entry stays.
        Busy => "busy",
        /// No such entry (dropped, replayed already, or a wrong id).
        Missing => "missing",
        /// Older than `dedup.ttl_seconds`: whether the app acknowledged it since can no longer be known,
        /// so it is not sent; the entry stays for an operator to look at (`spool show`).
        Expired => "expired",
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

    pub fn reason(self) -> &'static str {
        self.label()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_is_listed_once_at_its_own_index() {
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(o.index(), i);
        }
        for (i, f) in Failure::ALL.iter().enumerate() {
            assert_eq!(f.index(), i);
        }
    }
}
