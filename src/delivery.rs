//! Who a delivery says it is: its `X-Pps-*` headers, read, trimmed and checked. Read before the delivery
//! is authenticated, so that even a refused one's access line can say whose event it claims to be; trusted
//! only once it is.

use http::{HeaderName, HeaderValue};
use pingora::http::RequestHeader;

use crate::dedup::Key;
use crate::headers;

/// The identifying headers of one delivery, trimmed and checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Delivery {
    pub topic: String,
    pub sub_topic: Option<String>,
    pub tenant: Option<String>,
    /// Canonical: a UUID in lowercase, anything else as sent (trimmed).
    pub webhook_id: String,
    /// As sent, trimmed when it is text; `None` when absent. Never a reason to refuse a delivery.
    pub triggered_at: Option<HeaderValue>,
}

/// Why a delivery's headers were refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    Missing(&'static str),
    /// Sent more than once with different values.
    Ambiguous(&'static str),
    NotText(&'static str),
}

impl std::fmt::Display for HeaderError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderError::Missing(name) => write!(f, "missing {name}"),
            HeaderError::Ambiguous(name) => write!(f, "{name} sent twice with different values"),
            HeaderError::NotText(name) => write!(f, "{name} is not valid text"),
        }
    }
}

impl Delivery {
    /// The dedup key: tenant and webhook id.
    pub fn key(&self) -> Key {
        Key::new(self.tenant.as_deref(), &self.webhook_id)
    }
}

/// The names looked up on every delivery, ready-made: a `&str` key is parsed and lowercased on each lookup.
mod lower {
    use http::HeaderName;

    pub const TOPIC: HeaderName = HeaderName::from_static("x-pps-topic");
    pub const SUB_TOPIC: HeaderName = HeaderName::from_static("x-pps-sub-topic");
    pub const TENANT_ID: HeaderName = HeaderName::from_static("x-pps-tenant-id");
    pub const WEBHOOK_ID: HeaderName = HeaderName::from_static("x-pps-webhook-id");
    pub const TRIGGERED_AT: HeaderName = HeaderName::from_static("x-pps-triggered-at");
}

/// Reads the delivery's identifying headers.
pub fn read(req: &RequestHeader) -> Result<Delivery, HeaderError> {
    let required = |key: &HeaderName, name| match text(req, key, name)? {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(HeaderError::Missing(name)),
    };
    let webhook_id = required(&lower::WEBHOOK_ID, headers::WEBHOOK_ID)?;
    let topic = required(&lower::TOPIC, headers::TOPIC)?;
    let optional = |key: &HeaderName, name| {
        Ok::<_, HeaderError>(text(req, key, name)?.filter(|v: &String| !v.is_empty()))
    };
    let sub_topic = optional(&lower::SUB_TOPIC, headers::SUB_TOPIC)?;
    let tenant = optional(&lower::TENANT_ID, headers::TENANT_ID)?;
    let triggered_at = triggered_at(req)?;
    Ok(Delivery {
        webhook_id: canonical_id(webhook_id),
        topic,
        sub_topic,
        tenant,
        triggered_at,
    })
}

/// The one value of `key`, as text, trimmed. The same value repeated counts once.
fn text(
    req: &RequestHeader,
    key: &HeaderName,
    name: &'static str,
) -> Result<Option<String>, HeaderError> {
    let Some(value) = single(req, key, name)? else {
        return Ok(None);
    };
    let v = std::str::from_utf8(value).map_err(|_| HeaderError::NotText(name))?;
    Ok(Some(v.to_string()))
}

/// `X-Pps-Triggered-At` as sent: ambiguous when repeated with different values, but any value that is not
/// text is forwarded as it came rather than refused (a wrong 400 loses the event for good).
fn triggered_at(req: &RequestHeader) -> Result<Option<HeaderValue>, HeaderError> {
    let value = single(req, &lower::TRIGGERED_AT, headers::TRIGGERED_AT)?;
    Ok(value.and_then(|v| HeaderValue::from_bytes(v).ok()))
}

/// The one value of `key`, trimmed of surrounding blanks; different values are ambiguous.
fn single<'r>(
    req: &'r RequestHeader,
    key: &HeaderName,
    name: &'static str,
) -> Result<Option<&'r [u8]>, HeaderError> {
    let mut found: Option<&[u8]> = None;
    for value in req.headers.get_all(key) {
        let v = value.as_bytes().trim_ascii();
        match found {
            Some(prev) if prev != v => return Err(HeaderError::Ambiguous(name)),
            Some(_) => {}
            None => found = Some(v),
        }
    }
    // A trimmed slice of a valid value is a valid value.
    Ok(found)
}

/// A UUID in lowercase; anything else unchanged.
fn canonical_id(mut id: String) -> String {
    let b = id.as_bytes();
    let is_uuid = b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        });
    if is_uuid {
        id.make_ascii_lowercase();
    }
    id
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn req(headers: &[(&str, &[u8])]) -> RequestHeader {
        let mut r = RequestHeader::build("POST", b"/webhooks", None).unwrap();
        for (k, v) in headers {
            r.append_header(k.to_string(), HeaderValue::from_bytes(v).unwrap())
                .unwrap();
        }
        r
    }

    #[test]
    fn uuid_ids_are_lowercased_others_kept() {
        let d = read(&req(&[
            (
                "x-pps-webhook-id",
                b" 279E4E55-DFA0-4E04-B717-148AE547AB7D ",
            ),
            ("x-pps-topic", b"orders/placed"),
        ]))
        .unwrap();
        assert_eq!(d.webhook_id, "279e4e55-dfa0-4e04-b717-148ae547ab7d");
        let d = read(&req(&[
            ("x-pps-webhook-id", b"Order-ABC"),
            ("x-pps-topic", b"t"),
        ]))
        .unwrap();
        assert_eq!(d.webhook_id, "Order-ABC");
    }

    #[test]
    fn missing_or_ambiguous_required_headers_are_refused() {
        assert_eq!(
            read(&req(&[("x-pps-topic", b"t")])),
            Err(HeaderError::Missing(headers::WEBHOOK_ID))
        );
        assert_eq!(
            read(&req(&[("x-pps-webhook-id", b"1"), ("x-pps-topic", b" ")])),
            Err(HeaderError::Missing(headers::TOPIC))
        );
        let twice = req(&[
            ("x-pps-webhook-id", b"1"),
            ("x-pps-webhook-id", b"2"),
            ("x-pps-topic", b"t"),
        ]);
        assert_eq!(
            read(&twice),
            Err(HeaderError::Ambiguous(headers::WEBHOOK_ID))
        );
        let same_twice = req(&[
            ("x-pps-webhook-id", b"1"),
            ("X-PPS-WEBHOOK-ID", b" 1"),
            ("x-pps-topic", b"t"),
        ]);
        assert!(read(&same_twice).is_ok());
    }

    #[test]
    fn triggered_at_twice_with_different_values_is_ambiguous() {
        let r = req(&[
            ("x-pps-webhook-id", b"1"),
            ("x-pps-topic", b"t"),
            ("x-pps-triggered-at", b"a"),
            ("x-pps-triggered-at", b"b"),
        ]);
        assert_eq!(read(&r), Err(HeaderError::Ambiguous(headers::TRIGGERED_AT)));
    }

    #[test]
    fn a_triggered_at_that_is_not_text_is_kept_as_sent() {
        let raw: &[u8] = b"2024-01-1T10:00:00\xff";
        let d = read(&req(&[
            ("x-pps-webhook-id", b"1"),
            ("x-pps-topic", b"t"),
            ("x-pps-triggered-at", raw),
        ]))
        .unwrap();
        assert_eq!(d.triggered_at.unwrap().as_bytes(), raw);
    }
}
