//! One line per request: method, path, status, outcome, tenant, topic, webhook id, app latency, request
//! id and trace id. Ids and names only: never a secret, a token, a signature or a body.
//!
//! Values that come from the request are quoted and escaped (text) or JSON strings (json), so that no
//! header can forge a field or a line. The other values come from fixed vocabularies and numbers.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use pingora::http::RequestHeader;

use super::ended::Ended;
use crate::config::LogFormat;
use crate::logging::{self, ACCESS, quote};
use crate::trace::Context;

/// Writes the access line of a finished request. A delivery's tenant, topic and webhook id are its
/// headers' even when it was refused; `verified` says whether they were proven (`none`: they were not).
pub fn write(
    req: &RequestHeader,
    ended: &Ended,
    request_id: &str,
    trace: &Context,
    started: Instant,
    format: LogFormat,
) {
    if !logging::access_enabled() {
        return;
    }
    let trace_id = trace.trace_id_hex();
    let d = ended.delivery.as_ref();
    let verified = match &ended.verified {
        Some(v) => Some(v.label()),
        None if d.is_some() || ended.failure.is_some() => Some("none"),
        None => None,
    };
    // The path only: a query may carry an app's own tokens.
    let raw = String::from_utf8_lossy(req.raw_path());
    let path = raw.split('?').next().unwrap_or_default();
    let fields = [
        ("method", Field::Text(Some(req.method.as_str()))),
        ("path", Field::Text(Some(path))),
        ("status", Field::Num(ended.status.into())),
        ("outcome", Field::Word(Some(ended.outcome.label()))),
        ("tenant", Field::Text(d.and_then(|d| d.tenant.as_deref()))),
        ("topic", Field::Text(d.map(|d| d.topic.as_str()))),
        ("webhook_id", Field::Text(d.map(|d| d.webhook_id.as_str()))),
        ("verified", Field::Word(verified)),
        // Which secret or key verified it: during a rotation, whose deliveries still use the old one.
        (
            "credential",
            Field::Text(ended.verified.as_ref().map(|v| v.credential())),
        ),
        ("app_ms", Field::Millis(ended.app_time)),
        ("total_ms", Field::Millis(Some(started.elapsed()))),
        (
            "auth_failure",
            Field::Word(ended.failure.map(|f| f.label())),
        ),
        ("request_id", Field::Text(Some(request_id))),
        ("trace_id", Field::Hex(&trace_id)),
    ];
    let line = match format {
        LogFormat::Text => text_line(&fields),
        LogFormat::Json => json_line(&fields),
    };
    log::info!(target: ACCESS, "{line}");
}

enum Field<'a> {
    /// From the request: quoted. Absent or empty: `-`.
    Text(Option<&'a str>),
    /// From a fixed vocabulary of the sidecar's: bare. Absent: `-`.
    Word(Option<&'static str>),
    Num(u64),
    /// Milliseconds with one decimal; `-` when absent.
    Millis(Option<Duration>),
    /// An id of the sidecar's own in lowercase hex (the trace id): bare, nothing to escape.
    Hex(&'a [u8]),
}

/// logfmt: `key=value` pairs separated by spaces, request values quoted. Built by hand: this runs for
/// every request, and going through `format!` for each field cost about a tenth of the sidecar's own
/// instructions per delivery.
fn text_line(fields: &[(&str, Field<'_>)]) -> String {
    let mut line = String::with_capacity(320);
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            line.push(' ');
        }
        line.push_str(key);
        line.push('=');
        match value {
            Field::Text(Some(v)) if !v.is_empty() => quote(&mut line, v),
            Field::Text(_) | Field::Word(None) | Field::Millis(None) => line.push('-'),
            Field::Word(Some(w)) => line.push_str(w),
            Field::Num(n) => {
                let _ = write!(line, "{n}");
            }
            Field::Millis(Some(d)) => push_millis(&mut line, *d),
            Field::Hex(h) => hex(&mut line, h),
        }
    }
    line
}

/// One JSON object; absent values are `null`.
fn json_line(fields: &[(&str, Field<'_>)]) -> String {
    let mut map = serde_json::Map::with_capacity(fields.len());
    for (key, value) in fields {
        let v = match value {
            Field::Text(Some(v)) => serde_json::Value::from(*v),
            Field::Word(Some(w)) => serde_json::Value::from(*w),
            Field::Num(n) => serde_json::Value::from(*n),
            Field::Millis(Some(d)) => {
                serde_json::Value::from((d.as_secs_f64() * 10_000.0).round() / 10.0)
            }
            Field::Hex(h) => {
                let mut v = String::with_capacity(h.len());
                hex(&mut v, h);
                serde_json::Value::from(v)
            }
            Field::Text(None) | Field::Word(None) | Field::Millis(None) => serde_json::Value::Null,
        };
        map.insert((*key).to_string(), v);
    }
    serde_json::Value::Object(map).to_string()
}

/// Hex digits as they are; anything else (never written by the sidecar) as `-`.
fn hex(line: &mut String, digits: &[u8]) {
    match std::str::from_utf8(digits) {
        Ok(h) if !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()) => line.push_str(h),
        _ => line.push('-'),
    }
}

fn push_millis(line: &mut String, d: Duration) {
    let tenths = (d.as_micros() + 50) / 100;
    let _ = write!(line, "{}.{}", tenths / 10, tenths % 10);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_access_line_has_every_field_with_dashes_for_the_missing() {
        let line = text_line(&[
            ("method", Field::Text(Some("POST"))),
            ("status", Field::Num(200)),
            ("zero", Field::Num(0)),
            ("tenant", Field::Text(None)),
            ("topic", Field::Text(Some(""))),
            ("outcome", Field::Word(Some("forwarded"))),
            ("app_ms", Field::Millis(Some(Duration::from_micros(1_249)))),
            (
                "slow_ms",
                Field::Millis(Some(Duration::from_micros(12_345_678))),
            ),
            ("fast_ms", Field::Millis(Some(Duration::from_micros(40)))),
            ("none_ms", Field::Millis(None)),
            ("trace_id", Field::Hex(b"4bf92f35")),
            ("bad_id", Field::Hex(b"4b\"x")),
        ]);
        assert_eq!(
            line,
            "method=\"POST\" status=200 zero=0 tenant=- topic=- outcome=forwarded app_ms=1.2 slow_ms=12345.7 fast_ms=0.0 none_ms=- trace_id=4bf92f35 bad_id=-"
        );
    }

    #[test]
    fn a_request_value_cannot_forge_a_field_or_a_line() {
        let line = text_line(&[
            (
                "request_id",
                Field::Text(Some("x\" outcome=forwarded\nfake")),
            ),
            ("outcome", Field::Word(Some("unauthorized"))),
        ]);
        assert_eq!(
            line,
            r#"request_id="x\" outcome=forwarded\nfake" outcome=unauthorized"#
        );
        let json = json_line(&[("request_id", Field::Text(Some("a\"}\n{\"b")))]);
        let parsed: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed["request_id"], "a\"}\n{\"b");
        assert!(!json.contains('\n'));
    }
}
