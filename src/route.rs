//! Which requests are deliveries: the request target's form, and its path compared in the form an app's
//! router may give it, so that no spelling of a webhook path reaches the app unverified.
//!
//! The target is routed as it was sent, and the app receives exactly what was routed. Only origin-form
//! (`/path?query`) and absolute-form (`http://host/path?query`, routed by its path and forwarded in
//! origin-form) are served; anything else (`webhooks`, `x:/webhooks`, `%2Fwebhooks`, `*`, `host:443`)
//! is refused, since Pingora's URI parser would route it as `/` while the app sees the raw text.
//!
//! Routers differ: some percent-decode before routing, some match case-insensitively, most merge `//`
//! and resolve `.` and `..`, Java servlets drop `;parameters`. The canonical form applies all of these,
//! and a path that is a webhook path under any of them is one. A path whose meaning depends on the router
//! (an encoded `/` or `\`, double encoding, a control character, `..` above the root, bad
//! percent-encoding) is ambiguous and refused with 400.

/// A request target in a form the sidecar serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target<'a> {
    /// Path and query, as the app receives them (origin-form).
    pub origin: &'a str,
    /// The authority of an absolute-form target: the app's `Host`.
    pub authority: Option<&'a str>,
}

impl<'a> Target<'a> {
    /// `raw` (the request line's target) in origin-form or absolute-form; `None` for any other form, a
    /// fragment, userinfo, or bytes that are not text.
    pub fn parse(raw: &'a [u8]) -> Option<Target<'a>> {
        let raw = std::str::from_utf8(raw).ok()?;
        if raw.contains('#') {
            return None;
        }
        if raw.starts_with('/') {
            return Some(Target {
                origin: raw,
                authority: None,
            });
        }
        let scheme_end = raw.find("://")?;
        if !["http", "https"]
            .iter()
            .any(|s| s.eq_ignore_ascii_case(&raw[..scheme_end]))
        {
            return None;
        }
        let rest = &raw[scheme_end + 3..];
        let path_at = rest.find(['/', '?']).unwrap_or(rest.len());
        let (authority, origin) = rest.split_at(path_at);
        let host_char = |c: char| c.is_ascii_alphanumeric() || "-._:[]".contains(c);
        if authority.is_empty() || !authority.chars().all(host_char) || !origin.starts_with('/') {
            return None;
        }
        Some(Target {
            origin,
            authority: Some(authority),
        })
    }

    /// The path, without the query.
    pub fn path(&self) -> &'a str {
        self.origin.split('?').next().unwrap_or_default()
    }
}

/// What a request path is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Webhook,
    Other,
    /// The app's router could read it more than one way: 400.
    Ambiguous,
}

/// Longest path considered; longer ones are ambiguous (no webhook path is this long).
const MAX_PATH: usize = 8 * 1024;

/// Routes `path` (the request target's path, still percent-encoded) against the webhook `prefixes`.
pub fn route(path: &str, prefixes: &[String]) -> Route {
    let Some(canonical) = canonical(path) else {
        return Route::Ambiguous;
    };
    let webhook = prefixes.iter().any(|prefix| {
        let p = prefix.trim_end_matches('/').to_lowercase();
        canonical == p
            || canonical
                .strip_prefix(&p)
                .is_some_and(|rest| rest.starts_with('/'))
            || (p.is_empty() && canonical == "/")
    });
    if webhook {
        Route::Webhook
    } else {
        Route::Other
    }
}

/// `path` decoded, lowercased, without `;` parameters, empty, `.` and `..` segments; `None` when
/// ambiguous.
pub fn canonical(path: &str) -> Option<String> {
    if path.len() > MAX_PATH || !path.starts_with('/') || path.contains('\\') {
        return None;
    }
    let mut segments: Vec<String> = Vec::new();
    for raw in path.split('/') {
        let raw = raw.split(';').next().unwrap_or_default();
        let segment = decode(raw)?.to_lowercase();
        match segment.as_str() {
            "" | "." => {}
            ".." => {
                segments.pop()?;
            }
            _ => segments.push(segment),
        }
    }
    Some(format!("/{}", segments.join("/")))
}

/// Percent-decodes one segment; `None` when the result could mean something else to another decoder.
fn decode(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let v = u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?;
            // A separator, an escape or a parameter that only exists once decoded.
            if matches!(v, b'/' | b'\\' | b'%' | b';') {
                return None;
            }
            out.push(v);
            i += 3;
        } else {
            out.push(b);
            i += 1;
        }
    }
    let text = String::from_utf8(out).ok()?;
    if text.chars().any(char::is_control) {
        return None;
    }
    Some(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hooks() -> Vec<String> {
        vec!["/webhooks".into()]
    }

    #[test]
    fn every_spelling_a_router_may_send_to_the_webhook_handler_is_a_webhook_path() {
        for p in [
            "/webhooks",
            "/webhooks/",
            "/webhooks/orders",
            "/%77ebhooks",
            "/WEBHOOKS",
            "/WebHooks/orders",
            "//webhooks",
            "/webhooks;x=1",
            "/webhooks;jsessionid=1/orders",
            "/a/../webhooks",
            "/./webhooks",
            "/a/b/../../webhooks/x",
            "/%2e/webhooks",
            "/x/%2e%2e/webhooks",
        ] {
            assert_eq!(route(p, &hooks()), Route::Webhook, "{p}");
        }
    }

    #[test]
    fn other_paths_stay_other_paths() {
        for p in ["/", "/webhooksx", "/health", "/api/webhooks", "/web/hooks"] {
            assert_eq!(route(p, &hooks()), Route::Other, "{p}");
        }
    }

    #[test]
    fn paths_that_routers_read_differently_are_ambiguous() {
        for p in [
            "/webhooks%2forders",
            "/x%2F..%2Fwebhooks",
            "/%5cwebhooks",
            "\\webhooks",
            "/web\\hooks",
            "/%2577ebhooks",
            "/webhooks%3bx",
            "/../webhooks",
            "/webhooks/%00",
            "/webhooks%0d%0a",
            "/%zzebhooks",
            "/webhooks%",
            "/webhooks%7",
            "/%ff%fe",
            "webhooks",
        ] {
            assert_eq!(route(p, &hooks()), Route::Ambiguous, "{p}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_path_is_routed_without_panicking(p in "\\PC{0,64}") {
            let _ = route(&p, &hooks());
        }

        #[test]
        fn a_canonical_path_is_its_own_canonical_form(p in "/[a-zA-Z0-9%./;_~-]{0,40}") {
            if let Some(c) = canonical(&p) {
                proptest::prop_assert_eq!(canonical(&c), Some(c.clone()));
            }
        }

        #[test]
        fn segments_around_a_webhook_path_never_hide_it(
            junk in "[a-z]{1,6}",
            case in proptest::bool::ANY,
        ) {
            let hooks_path = if case { "/WEBHOOKS" } else { "/webhooks" };
            let p = format!("/{junk}/..{hooks_path};{junk}=1/./{junk}");
            proptest::prop_assert_eq!(route(&p, &hooks()), Route::Webhook);
        }
    }
}
