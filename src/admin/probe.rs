//! `GET /app-probe/<container>/<liveness|readiness|startup>` on the admin listener: the app's own kubelet
//! probes, carried to the app on loopback.
//!
//! Once the app listens on `127.0.0.1`, the kubelet (which probes the pod's IP) cannot reach it. As Istio
//! does, `pps-sidecar inject` rewrites each of the app's HTTP and TCP probes to a path here and records the
//! original (container, port, path, scheme, headers) in the sidecar's environment, `PPS_SIDECAR_APP_PROBES`,
//! one JSON object keyed by the probe's path. Only those exact paths are served, so the admin port, which
//! any pod of the cluster can reach, never becomes a way to the app's other paths (its webhook handler
//! above all): a path that was not recorded is `404`, a method other than `GET` is `405`, no part of the
//! request (body, headers, query) is passed on, and the answer is the app's status alone (its body is not
//! read). Each probe has a deadline (the probe's `timeoutSeconds`, at most 30 s), and the app's answer head
//! is bounded by the HTTP client's own limits.
//!
//! The answer: the app's status when it is `2xx`, `4xx` or `5xx` (the kubelet counts `200`-`399` as
//! healthy), `200` for a `3xx` (healthy; the redirect itself is not followed, as the kubelet would not
//! follow one to another host either), and `503` when the app cannot be reached in time.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use http::Response;

use crate::admin::text;
use serde::Deserialize;

/// The environment variable `inject` writes the probes into.
pub const ENV: &str = "PPS_SIDECAR_APP_PROBES";
/// Where the probes are served.
pub const PREFIX: &str = "/app-probe/";
/// The kinds of probe, the last segment of a probe's path.
pub const KINDS: [&str; 3] = ["liveness", "readiness", "startup"];
/// The kubelet's default `timeoutSeconds`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
const MAX_TIMEOUT: Duration = Duration::from_secs(30);

/// One probe as `inject` records it: the shapes of the Kubernetes probe it replaced, the port resolved to
/// a number.
#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Recorded {
    #[serde(default)]
    pub http_get: Option<HttpGet>,
    #[serde(default)]
    pub tcp_socket: Option<TcpSocket>,
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
}

#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpGet {
    #[serde(default = "root")]
    pub path: String,
    pub port: u16,
    #[serde(default)]
    pub scheme: Scheme,
    #[serde(default)]
    pub http_headers: Vec<Header>,
}

#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum Scheme {
    #[default]
    Http,
    Https,
}

#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub name: String,
    pub value: String,
}

#[derive(Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TcpSocket {
    pub port: u16,
}

fn root() -> String {
    "/".into()
}

/// The probes of this process, keyed by their path here: read once from `PPS_SIDECAR_APP_PROBES`.
static PROBES: LazyLock<Result<HashMap<String, Recorded>, String>> = LazyLock::new(|| {
    let parsed = match std::env::var(ENV) {
        Err(_) => Ok(HashMap::new()),
        Ok(text) => parse(&text),
    };
    if let Err(e) = &parsed {
        log::error!("{ENV} is not valid ({e}): every /app-probe/ path answers 503");
    }
    parsed
});

/// Parses and checks the recorded probes: each key is `/app-probe/<container>/<kind>`, each probe exactly
/// one of `httpGet` and `tcpSocket`, an HTTP path in origin form.
pub fn parse(text: &str) -> Result<HashMap<String, Recorded>, String> {
    let map: HashMap<String, Recorded> =
        serde_json::from_str(text).map_err(|e| format!("not the JSON inject writes: {e}"))?;
    for (key, probe) in &map {
        let valid_key = key.strip_prefix(PREFIX).and_then(|rest| {
            let (container, kind) = rest.split_once('/')?;
            let name_ok = !container.is_empty()
                && container
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
            (name_ok && KINDS.contains(&kind)).then_some(())
        });
        if valid_key.is_none() {
            return Err(format!(
                "{key:?} is not {PREFIX}<container>/<liveness|readiness|startup>"
            ));
        }
        match (&probe.http_get, &probe.tcp_socket) {
            (Some(h), None) if h.path.starts_with('/') => {}
            (Some(_), None) => return Err(format!("{key}: httpGet.path must start with /")),
            (None, Some(_)) => {}
            _ => return Err(format!("{key}: needs exactly one of httpGet, tcpSocket")),
        }
    }
    Ok(map)
}

/// The whole `/app-probe/...` answer. `method` and `path` are the request's; nothing else of it is used.
pub async fn serve(method: &http::Method, path: &str) -> Response<Vec<u8>> {
    if method != http::Method::GET {
        return text(405, "app probes answer GET only\n".into());
    }
    let probes = match &*PROBES {
        Ok(p) => p,
        Err(_) => return text(503, format!("{ENV} is not valid (see the log)\n")),
    };
    let Some(probe) = probes.get(path) else {
        return text(404, "no such app probe\n".into());
    };
    let limit = probe
        .timeout_seconds
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs)
        .clamp(Duration::from_millis(100), MAX_TIMEOUT);
    match tokio::time::timeout(limit, ask(probe)).await {
        Ok(Ok(status)) if (300..400).contains(&status) => {
            text(200, format!("app answered {status}\n"))
        }
        Ok(Ok(status)) => {
            let status = if (200..600).contains(&status) {
                status
            } else {
                503
            };
            text(status, format!("app answered {status}\n"))
        }
        Ok(Err(e)) => text(503, format!("app probe failed: {e}\n")),
        Err(_) => text(503, format!("app probe timed out after {limit:?}\n")),
    }
}

/// Asks the app on loopback: an HTTP status, or `200` once a TCP connection is accepted.
async fn ask(probe: &Recorded) -> Result<u16, String> {
    if let Some(tcp) = &probe.tcp_socket {
        return tokio::net::TcpStream::connect(("127.0.0.1", tcp.port))
            .await
            .map(|_| 200)
            .map_err(|e| format!("connect to 127.0.0.1:{}: {}", tcp.port, e.kind()));
    }
    let h = probe.http_get.as_ref().expect("checked by parse");
    let scheme = match h.scheme {
        Scheme::Http => "http",
        Scheme::Https => "https",
    };
    let url = format!("{scheme}://127.0.0.1:{}{}", h.port, h.path);
    let mut req = CLIENT.get(&url);
    for header in &h.http_headers {
        req = req.header(&header.name, &header.value);
    }
    // The status is all the kubelet reads; the body is dropped unread, the connection with it.
    req.send()
        .await
        .map(|r| r.status().as_u16())
        .map_err(|e| format!("GET {url}: {}", short(&e)))
}

/// The client of every app probe: no proxy from the environment, no redirect, no idle connection kept, and
/// like the kubelet no certificate check (the app's probe port on loopback may serve any certificate).
static CLIENT: LazyLock<reqwest::Client> = LazyLock::new(|| {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(0)
        .tls_danger_accept_invalid_certs(true)
        .user_agent(concat!(
            "kube-probe/pps-sidecar-",
            env!("CARGO_PKG_VERSION")
        ))
        .build()
        .expect("the TLS backend initialises")
});

/// An HTTP client error's kind, without the URL again.
fn short(e: &reqwest::Error) -> &'static str {
    if e.is_connect() {
        "connection refused or failed"
    } else if e.is_timeout() {
        "timed out"
    } else {
        "no valid HTTP answer"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_probes_parse_and_only_probe_paths_are_keys() {
        let ok = r#"{"/app-probe/app/liveness":{"httpGet":{"path":"/healthz","port":3000,"scheme":"HTTP","httpHeaders":[{"name":"Host","value":"x"}]},"timeoutSeconds":2},
                    "/app-probe/app/readiness":{"tcpSocket":{"port":3000}}}"#;
        let map = parse(ok).unwrap();
        assert_eq!(map.len(), 2);
        let live = &map["/app-probe/app/liveness"];
        assert_eq!(live.http_get.as_ref().unwrap().port, 3000);
        assert_eq!(live.timeout_seconds, Some(2));
        for bad in [
            r#"{"/webhooks":{"tcpSocket":{"port":3000}}}"#,
            r#"{"/app-probe/app/other":{"tcpSocket":{"port":3000}}}"#,
            r#"{"/app-probe/App/liveness":{"tcpSocket":{"port":3000}}}"#,
            r#"{"/app-probe/app/x/liveness":{"tcpSocket":{"port":3000}}}"#,
            r#"{"/app-probe/app/liveness":{}}"#,
            r#"{"/app-probe/app/liveness":{"httpGet":{"path":"healthz","port":3000}}}"#,
            r#"{"/app-probe/app/liveness":{"httpGet":{"path":"/","port":3000},"tcpSocket":{"port":1}}}"#,
            r#"{"/app-probe/app/liveness":{"exec":{"command":["true"]}}}"#,
            r#"{"/app-probe/app/liveness":{"httpGet":{"path":"/","port":70000}}}"#,
            "not json",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
