//! Which requests are deliveries: the request target's form, and its path compared in the form an app's
//! router may give it, so that no spelling of a webhook path reaches the app unverified.
//!
//! The target is routed as it was sent, and the app receives exactly what was routed. Only origin-form
//! (`/path?query`) and absolute-form (`http://host/path?query`, routed by its path and forwarded in
//! origin-form) are served; anything else (`webhooks`, `x:/webhooks`, `%2Fwebhooks`, `*`, `host:443`)
//! is refused, since Pingora's URI parser would route it as `/` while the app sees the raw text.
//!
//! Routers differ: some percent-decode before routing, some match case-insensitively, most merge `//`
//! and resolve `.` and `..`, Java servlets drop `;parameters`, many match a route by plain string prefix
//! (`/webhooksx`, `/webhooks.json`: Rails' `(.:format)`, the JDK's HTTP server, `startswith`), and a
//! front controller routes on what follows its script (`/index.php/webhooks`: PHP's `PATH_INFO`). The
//! canonical form applies all of these, and a path that is a webhook path under any of them is one. A
//! path whose meaning depends on the router is ambiguous and refused with 400: an encoded `/`, `\`, `?`
//! or `#`, double encoding, a control character, `..` above the root, bad percent-encoding, a character
//! whose case folds to ASCII (`ſ`, the Kelvin sign), or a leading `//`, which a URL parser (WHATWG's, as
//! in Node's `new URL`, or the JDK's) reads as an authority followed by a path.

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
    match plain(path) {
        Some(canonical) if prefixes.iter().any(|p| under_lowercase(canonical, p)) => Route::Webhook,
        Some(_) => Route::Other,
        None => route_every_way(path, prefixes),
    }
}

/// The canonical form of a path with nothing any router reads differently, without building it: one that
/// reads one way, of visible ASCII without `\` (its only empty segments are the first and a trailing
/// one). `None` for any other path. A delivery's path is almost always one.
fn plain(path: &str) -> Option<&str> {
    let simple = path.len() <= MAX_PATH
        && path.starts_with('/')
        && read_one_way(path)
        && path.bytes().all(|b| matches!(b, b'!'..=b'~') && b != b'\\');
    simple.then(|| match path.trim_end_matches('/') {
        "" => "/",
        trimmed => trimmed,
    })
}

/// Whether `path` has nothing a router reads in more than one way: no `//`, `%`, `;`, `.`, uppercase
/// letter or byte beyond ASCII.
fn read_one_way(path: &str) -> bool {
    !path.contains("//")
        && !path
            .bytes()
            .any(|b| matches!(b, b'%' | b';' | b'.' | b'A'..=b'Z' | 0x80..))
}

/// `under(path, lowercased prefix)` without lowercasing the prefix on each request.
fn under_lowercase(path: &str, prefix: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    if prefix.is_ascii() {
        path.as_bytes()
            .get(..prefix.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
    } else {
        under(path, &prefix.to_lowercase())
    }
}

/// `route` for any path: read in its canonical form, then in every partial reading.
fn route_every_way(path: &str, prefixes: &[String]) -> Route {
    if path.starts_with("//") {
        return Route::Ambiguous;
    }
    let Some(canonical) = canonical(path) else {
        return Route::Ambiguous;
    };
    if after_scripts(&canonical).any(|p| prefixes.iter().any(|prefix| under_lowercase(p, prefix))) {
        return Route::Webhook;
    }
    // A router that applies only some of the canonical form's readings, or applies them in another
    // order, may still find a webhook path (`/webhooks/..;x=1` as sent): the path means different things
    // to different routers. Only a path with something to read differently pays for the check.
    let plain = read_one_way(path);
    // Past this, a path with something to read differently is refused rather than read every way.
    const MAX_READ_EVERY_WAY: usize = 2048;
    if !plain && path.len() > MAX_READ_EVERY_WAY {
        return Route::Ambiguous;
    }
    let partly = || {
        partial_readings(path)
            .iter()
            .any(|r| prefixes.iter().any(|prefix| under(r, prefix)))
    };
    if !plain && partly() {
        Route::Ambiguous
    } else {
        Route::Other
    }
}

/// Whether a router matching by string prefix finds `prefix` in `path` (`/webhooks` matches
/// `/webhooks/x`, and also `/webhooksx` and `/webhooks.json`).
fn under(path: &str, prefix: &str) -> bool {
    path.starts_with(prefix.trim_end_matches('/'))
}

/// `path`, and what follows each segment that names a file (`/index.php/webhooks` gives `/webhooks`):
/// the path a front controller routes on.
fn after_scripts(path: &str) -> impl Iterator<Item = &str> {
    let cuts = path
        .match_indices('/')
        .skip(1)
        .filter(|(i, _)| {
            let before = &path[..*i];
            let segment = &before[before.rfind('/').map_or(0, |j| j + 1)..];
            segment.contains('.')
        })
        .map(|(i, _)| &path[i..]);
    std::iter::once(path).chain(cuts)
}

/// `path` under every sequence of distinct readings an app router may apply: percent-decoding,
/// lowercasing, removing dot segments (merging empty ones), dropping `;` parameters, reading a leading
/// `//` as an authority, and routing on what follows a script segment (`PATH_INFO`).
fn partial_readings(path: &str) -> Vec<String> {
    let readings: [fn(&str) -> String; 6] = [
        |p| {
            let mut out = Vec::with_capacity(p.len());
            let mut rest = p.as_bytes();
            while let Some((&b, tail)) = rest.split_first() {
                let hex = tail.get(..2).and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) if b == b'%' => {
                        out.push(v);
                        rest = &tail[2..];
                    }
                    _ => {
                        out.push(b);
                        rest = tail;
                    }
                }
            }
            String::from_utf8_lossy(&out).into_owned()
        },
        str::to_lowercase,
        |p| {
            let mut kept: Vec<&str> = Vec::new();
            for segment in p.split('/') {
                match segment {
                    "" | "." => {}
                    ".." => {
                        kept.pop();
                    }
                    s => kept.push(s),
                }
            }
            format!("/{}", kept.join("/"))
        },
        |p| {
            let segments: Vec<&str> = p
                .split('/')
                .map(|s| s.split(';').next().unwrap_or(""))
                .collect();
            segments.join("/")
        },
        |p| match p.strip_prefix("//") {
            Some(rest) => format!("/{}", rest.split_once('/').map_or("", |(_, path)| path)),
            None => p.to_string(),
        },
        |p| after_scripts(p).nth(1).unwrap_or(p).to_string(),
    ];
    // Readings often agree: each (path, readings used) is expanded once.
    let mut seen = std::collections::HashSet::new();
    let mut out = vec![path.to_string()];
    let mut pending = vec![(path.to_string(), 0u8)];
    while let Some((p, used)) = pending.pop() {
        for (i, read) in readings.iter().enumerate() {
            if used & (1 << i) == 0 {
                let next = read(&p);
                let key = (next.clone(), used | (1 << i));
                if seen.insert(key.clone()) {
                    out.push(next);
                    pending.push(key);
                }
            }
        }
    }
    out
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
            // A separator, an escape, a parameter, a query or a fragment that only exists once decoded.
            if matches!(v, b'/' | b'\\' | b'%' | b';' | b'?' | b'#') {
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
    if text.chars().any(|c| c.is_control() || folds_to_ascii(c)) {
        return None;
    }
    Some(text)
}

/// A character beyond ASCII that a case-insensitive comparison may take for an ASCII one (`ſ` is `S`
/// upper-cased, the Kelvin sign `k` lower-cased): Java's `equalsIgnoreCase`, Python's `casefold`.
fn folds_to_ascii(c: char) -> bool {
    !c.is_ascii()
        && (c.to_lowercase().any(|l| l.is_ascii()) || c.to_uppercase().any(|u| u.is_ascii()))
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
            "/webhooks;x=1",
            "/webhooksx",
            "/webhooks.json",
            "/webhooks.",
            "/index.php/webhooks",
            "/app.php/WebHooks/orders",
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
        for p in [
            "/",
            "/webhook",
            "/health",
            "/api/webhooks",
            "/web/hooks",
            "/a/b/webhooks",
        ] {
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
            "//webhooks",
            "//h/webhooks",
            "/webhooks%3Fx=1",
            "/webhooks%23frag",
            "/webhook%C5%BF",
            "/webhoo%E2%84%AAs",
            "/x%C5%BF",
        ] {
            assert_eq!(route(p, &hooks()), Route::Ambiguous, "{p}");
        }
    }

    #[test]
    fn only_origin_form_and_absolute_form_targets_are_served() {
        fn t(raw: &str) -> Option<Target<'_>> {
            Target::parse(raw.as_bytes())
        }
        assert_eq!(t("/webhooks?a=1").unwrap().path(), "/webhooks");
        let abs = t("HTTP://orders.example:8080/webhooks/x?y").unwrap();
        assert_eq!(
            (abs.origin, abs.authority),
            ("/webhooks/x?y", Some("orders.example:8080"))
        );
        assert_eq!(t("https://[::1]/webhooks").unwrap().path(), "/webhooks");
        for refused in [
            "webhooks",
            "x:/webhooks",
            "%2Fwebhooks",
            "foo:/webhooks",
            "foo://h/webhooks",
            "*",
            "orders.example:443",
            "http:/webhooks",
            "http:///webhooks",
            "http://user@h/webhooks",
            "http://h",
            "http://h?x",
            "/webhooks#frag",
            "",
        ] {
            assert_eq!(t(refused), None, "{refused}");
        }
        assert_eq!(Target::parse(b"/web\xffhooks"), None);
    }

    /// The ways app routers commonly read a path, each applied on its own and in every order: whatever
    /// the app does with the target it receives, a webhook path is among what it may see only if the
    /// sidecar routed the request as a delivery.
    mod readings {
        pub fn decoded(p: &str) -> String {
            let b = p.as_bytes();
            let mut out = Vec::new();
            let mut i = 0;
            while i < b.len() {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
                    (b'%', Some(v)) => {
                        out.push(v);
                        i += 3;
                    }
                    (c, _) => {
                        out.push(c);
                        i += 1;
                    }
                }
            }
            String::from_utf8_lossy(&out).into_owned()
        }

        pub fn lowercased(p: &str) -> String {
            p.to_lowercase()
        }

        /// RFC 3986, 5.2.4, plus the merging of empty segments most routers do.
        pub fn without_dot_segments(p: &str) -> String {
            let mut out: Vec<&str> = Vec::new();
            for seg in p.split('/') {
                match seg {
                    "" | "." => {}
                    ".." => {
                        out.pop();
                    }
                    s => out.push(s),
                }
            }
            format!("/{}", out.join("/"))
        }

        pub fn without_params(p: &str) -> String {
            p.split('/')
                .map(|s| s.split(';').next().unwrap_or_default())
                .collect::<Vec<_>>()
                .join("/")
        }

        /// A URL parser reading a leading `//` as the start of an authority (WHATWG, the JDK).
        pub fn authority_read(p: &str) -> String {
            match p.strip_prefix("//") {
                Some(rest) => format!("/{}", rest.split_once('/').map_or("", |(_, path)| path)),
                None => p.to_string(),
            }
        }

        /// A front controller: what follows the first segment that names a file (`PATH_INFO`).
        pub fn path_info(p: &str) -> String {
            let mut at = 0;
            for (i, seg) in p.split('/').enumerate().skip(1) {
                at += 1 + seg.len();
                if seg.contains('.') && i > 0 {
                    return p[at..].to_string();
                }
            }
            p.to_string()
        }

        pub const ALL: [fn(&str) -> String; 6] = [
            decoded,
            lowercased,
            without_dot_segments,
            without_params,
            authority_read,
            path_info,
        ];

        /// Every sequence of distinct readings (the empty one is the path as sent).
        pub fn every(p: &str) -> Vec<String> {
            let mut seen = vec![p.to_string()];
            let mut frontier = vec![(p.to_string(), Vec::<usize>::new())];
            while let Some((path, used)) = frontier.pop() {
                for (i, read) in ALL.iter().enumerate() {
                    if used.contains(&i) {
                        continue;
                    }
                    let next = read(&path);
                    let mut u = used.clone();
                    u.push(i);
                    seen.push(next.clone());
                    frontier.push((next, u));
                }
            }
            seen
        }

        /// As a router matching by string prefix reads it (the widest common match).
        pub fn names_a_webhook_path(p: &str) -> bool {
            p.starts_with("/webhooks")
        }
    }

    #[test]
    fn a_target_reaches_the_app_as_a_webhook_path_only_when_it_was_routed_as_one() {
        use proptest::test_runner::{Config, TestRunner};
        const TOKENS: [&str; 40] = [
            "/",
            "//",
            "webhooks",
            "WebHooks",
            "%77",
            "ebhooks",
            "%2e",
            "%2E",
            "%2f",
            "%2F",
            "%25",
            "..",
            ".",
            ";x=1",
            ";",
            "?",
            "?a=/webhooks",
            "#",
            "a",
            "http://h",
            "HTTP://h:1",
            "x:",
            "*",
            "%",
            "\\",
            "%5c",
            "@",
            "webhooks/",
            "%3b",
            "%00",
            "%57",
            "%",
            "index.php",
            ".json",
            "x",
            "//h",
            "%3f",
            "%23",
            "%C5%BF",
            "%E2%84%AA",
        ];
        // Mostly targets that start as a path does, so that every verdict is reached often.
        let start = proptest::prop_oneof![
            6 => proptest::strategy::Just("/"),
            3 => proptest::strategy::Just("/webhooks"),
            1 => proptest::strategy::Just("http://h/"),
            1 => proptest::strategy::Just(""),
        ];
        let strategy = (
            start,
            proptest::collection::vec(proptest::sample::select(&TOKENS[..]), 0..7),
        );
        let mut runner = TestRunner::new(Config {
            cases: 8_000,
            ..Config::default()
        });
        let (mut refused, mut webhook, mut other_checked) = (0, 0, 0);
        let counts = std::cell::RefCell::new((&mut refused, &mut webhook, &mut other_checked));
        runner
            .run(&strategy, |(start, parts)| {
                let raw = format!("{start}{}", parts.concat());
                let mut c = counts.borrow_mut();
                let Some(target) = Target::parse(raw.as_bytes()) else {
                    *c.0 += 1;
                    return Ok(());
                };
                match route(target.path(), &hooks()) {
                    Route::Ambiguous => *c.0 += 1,
                    Route::Webhook => *c.1 += 1,
                    Route::Other => {
                        // The app receives `target.origin`; its router reads the path part.
                        let sent = target.origin.split('?').next().unwrap_or_default();
                        for reading in readings::every(sent) {
                            proptest::prop_assert!(
                                !readings::names_a_webhook_path(&reading),
                                "{raw:?} reaches the app unverified, read as {reading:?}"
                            );
                        }
                        *c.2 += 1;
                    }
                }
                Ok(())
            })
            .unwrap();
        // Each kind of verdict must have been reached often, or the property says little.
        assert!(
            refused > 500 && webhook > 500 && other_checked > 500,
            "refused {refused}, webhook {webhook}, other {other_checked}"
        );
    }

    proptest::proptest! {
        #[test]
        fn any_path_is_routed_without_panicking(p in "\\PC{0,64}") {
            let _ = route(&p, &hooks());
        }

        #[test]
        fn the_plain_path_shortcut_routes_as_reading_the_path_every_way(
            parts in proptest::collection::vec(
                proptest::sample::select(&[
                    "/", "webhooks", "hooks", "pitch", "Point", "\u{e9}", "\u{c9}", ".", "..",
                    "x.php", ";x=1", "%2e", "%77", "//", "\\", "a-b_c~d", " ", "\u{7f}",
                ][..]),
                0..8,
            ),
        ) {
            let p = format!("/{}", parts.concat());
            let prefixes = [
                vec!["/webhooks".to_string()],
                vec!["/Pitch/Point/".to_string(), "/hooks".to_string()],
                vec!["/\u{c9}".to_string()],
            ];
            for prefixes in &prefixes {
                proptest::prop_assert_eq!(
                    route(&p, prefixes),
                    route_every_way(&p, prefixes),
                    "{:?} under {:?}", p, prefixes
                );
            }
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
