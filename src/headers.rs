//! The names of the headers the sidecar reads, writes or guards: one list each, used everywhere.
//!
//! Apps read header names in more than one spelling: CGI, WSGI, Rack and PHP turn `X_Pps_Verified` into
//! the same variable as `X-Pps-Verified`, PHP turns `X.Pps.Verified` into it too, and any case is the
//! same name. So a name is compared by its [`spelled`] form (lowercase, `_` and `.` as `-`), and a header
//! guarded under one spelling is guarded under all.

use std::borrow::Cow;

pub const TOPIC: &str = "X-Pps-Topic";
pub const SUB_TOPIC: &str = "X-Pps-Sub-Topic";
pub const TENANT_ID: &str = "X-Pps-Tenant-Id";
pub const WEBHOOK_ID: &str = "X-Pps-Webhook-Id";
pub const TRIGGERED_AT: &str = "X-Pps-Triggered-At";
pub const TRIGGERED_AT_ORIGINAL: &str = "X-Pps-Triggered-At-Original";
pub const VERIFIED: &str = "X-Pps-Verified";
pub const JWT_SUBJECT: &str = "X-Pps-Jwt-Subject";
pub const JWT_ISSUER: &str = "X-Pps-Jwt-Issuer";
pub const DUPLICATE: &str = "X-Pps-Duplicate";
/// On a delivery re-sent from the spool (`crate::spool`).
pub const REPLAYED: &str = "X-Pps-Replayed";
pub const REQUEST_ID: &str = "X-Request-Id";
pub const FORWARDED_FOR: &str = "X-Forwarded-For";
pub const FORWARDED_PROTO: &str = "X-Forwarded-Proto";
/// The bearer token's header.
pub const AUTHORIZATION: &str = "Authorization";

/// Headers only the sidecar may set: whatever arrives under these names, in any spelling, is dropped
/// before the app sees the request, on deliveries and pass-through alike. The app can trust them.
pub const TRUSTED: [&str; 6] = [
    VERIFIED,
    JWT_SUBJECT,
    JWT_ISSUER,
    TRIGGERED_AT_ORIGINAL,
    DUPLICATE,
    REPLAYED,
];

/// The delivery's identity, which the sidecar writes to the app canonically (`crate::delivery`): the
/// sender's copies, in any spelling, are dropped from a delivery.
pub const IDENTITY: [&str; 5] = [TOPIC, SUB_TOPIC, TENANT_ID, WEBHOOK_ID, TRIGGERED_AT];

/// A lowercase header name as CGI, WSGI, Rack and PHP apps read it: `x_pps_verified` and
/// `x.pps.verified` are `x-pps-verified` to them (PHP's variable names turn `.` into `_` as well).
pub fn spelled(lowercase: &str) -> Cow<'_, str> {
    if lowercase.bytes().any(|b| b == b'_' || b == b'.') {
        lowercase.replace(['_', '.'], "-").into()
    } else {
        lowercase.into()
    }
}

/// Whether `spelled` (see [`spelled`]) names one of `names`.
pub fn is_one_of(spelled: &str, names: &[&str]) -> bool {
    names.iter().any(|n| n.eq_ignore_ascii_case(spelled))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_guarded_in_every_spelling() {
        for sent in [
            "X_Pps_Verified",
            "x-pps_verified",
            "X-PPS-VERIFIED",
            "X.Pps.Verified",
            "x.pps_verified",
        ] {
            let lower = sent.to_ascii_lowercase();
            assert!(is_one_of(&spelled(&lower), &TRUSTED), "{sent}");
        }
        assert!(!is_one_of(&spelled("x-pps-verifiedx"), &TRUSTED));
        assert!(is_one_of(&spelled("x_pps_webhook_id"), &IDENTITY));
    }
}
