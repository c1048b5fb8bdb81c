//! Which requests are deliveries: a path is compared in the form an app's router may give it, so that no
//! spelling of a webhook path reaches the app unverified.
//!
//! Routers differ: some percent-decode before routing, some match case-insensitively, most merge `//`
//! and resolve `.` and `..`, Java servlets drop `;parameters`. The canonical form applies all of these,
//! and a path that is a webhook path under any of them is one. A path whose meaning depends on the router
//! (an encoded `/` or `\`, double encoding, a control character, `..` above the root, bad
//! percent-encoding) is ambiguous and refused with 400.

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
