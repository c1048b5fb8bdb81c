//! Is this delivery from Pitchpoint? The methods listed in `auth.methods`; any one that verifies is enough.

pub mod hmac;
pub mod jwt;

use pingora::http::RequestHeader;

use crate::config::{AuthConfig, Method};
pub use crate::outcome::Failure;

/// How a delivery was authenticated; the app receives it as `X-Pps-Verified`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verified {
    Hmac,
    Jwt { subject: String, issuer: String },
}

impl Verified {
    pub fn label(&self) -> &'static str {
        match self {
            Verified::Hmac => "hmac",
            Verified::Jwt { .. } => "jwt",
        }
    }
}

/// Checks the delivery with each configured method in turn.
///
/// When several methods are configured and all fail, the failure of the first method whose credential was
/// present is reported, as it is the one the sender meant to use.
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
                    (Some(sig), None) => {
                        hmac::verify(&cfg.hmac, sig.as_bytes(), body, now).map(|()| Verified::Hmac)
                    }
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
            Err(f) => {
                failure.get_or_insert(f);
            }
        }
    }
    Err(failure.unwrap_or(Failure::MissingCredentials))
}
