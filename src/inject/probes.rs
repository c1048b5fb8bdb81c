//! The app's own probes: the kubelet sends them to the pod's IP, which an app on loopback does not listen
//! on. Each HTTP or TCP probe of the app's container is rewritten to the sidecar's
//! `/app-probe/<container>/<kind>` on the admin port, and recorded in the sidecar's environment
//! (`PPS_SIDECAR_APP_PROBES`, read by `admin::probe`), as Istio does. Exec probes run in the container and
//! stay; a probe with a `host` of its own goes elsewhere and stays.

use serde_json::{Value, json};

use super::workload::ports;
use super::yaml::Node;
use crate::admin::probe::PREFIX;

const FIELDS: [(&str, &str); 3] = [
    ("livenessProbe", "liveness"),
    ("readinessProbe", "readiness"),
    ("startupProbe", "startup"),
];

/// One probe to rewrite.
#[derive(Debug)]
pub struct Rewrite {
    container: usize,
    field: &'static str,
    key: String,
    record: Value,
    probe: Node,
}

/// The numbers probes of `c` connect to: a workload's ports may not collide with them.
pub fn numeric_ports(c: &Node) -> Vec<(&'static str, u64)> {
    FIELDS
        .iter()
        .filter_map(|(field, _)| {
            let probe = c.get(field)?;
            let action = probe.get("httpGet").or_else(|| probe.get("tcpSocket"))?;
            Some((*field, action.get("port")?.as_int()?))
        })
        .collect()
}

/// The rewrites for the pod's app container: the one that declares `app_port`, or the only container.
pub fn plan(
    name: &str,
    pod: &Node,
    app_port: u16,
    admin_port: u16,
    errors: &mut Vec<String>,
) -> Vec<Rewrite> {
    let list = pod.at(&["spec", "containers"]).map_or(&[][..], Node::items);
    let app = list
        .iter()
        .position(|c| ports(c).iter().any(|(_, n)| *n == u64::from(app_port)))
        .or((list.len() == 1).then_some(0));
    let Some(index) = app else { return Vec::new() };
    let c = &list[index];
    let cname = c.get("name").and_then(Node::as_str).unwrap_or("app");
    let mut out = Vec::new();
    for (field, kind) in FIELDS {
        let Some(probe) = c.get(field) else { continue };
        if probe.get("grpc").is_some() {
            errors.push(format!(
                "{name}: container \"{cname}\"'s {field} is a gRPC probe, which the kubelet cannot send to \
                 an app on loopback and the sidecar does not carry: make it an exec probe first"
            ));
            continue;
        }
        let (action, tcp) = match (probe.get("httpGet"), probe.get("tcpSocket")) {
            (Some(a), _) => (a, false),
            (None, Some(a)) => (a, true),
            _ => continue,
        };
        if action
            .get("host")
            .and_then(Node::as_str)
            .is_some_and(|h| !h.is_empty())
        {
            continue;
        }
        let port = match port_of(c, action.get("port")) {
            Ok(p) => p,
            Err(e) => {
                errors.push(format!("{name}: container \"{cname}\"'s {field}: {e}"));
                continue;
            }
        };
        let key = format!("{PREFIX}{cname}/{kind}");
        let mut record = if tcp {
            json!({"tcpSocket": {"port": port}})
        } else {
            http_record(action, port)
        };
        if let Some(t) = probe.get("timeoutSeconds").and_then(Node::as_int) {
            record["timeoutSeconds"] = json!(t);
        }
        out.push(Rewrite {
            container: index,
            field,
            probe: rewritten(probe, &key, admin_port),
            key,
            record,
        });
    }
    out
}

/// A probe's port: a number, or the name of one of the container's ports.
fn port_of(c: &Node, port: Option<&Node>) -> Result<u16, String> {
    let port = port.ok_or("it names no port")?;
    if let Some(n) = port.as_int() {
        return u16::try_from(n).map_err(|_| format!("port {n} is out of range"));
    }
    let name = port.as_str().unwrap_or("");
    ports(c)
        .iter()
        .find(|(n, _)| *n == Some(name))
        .and_then(|(_, p)| u16::try_from(*p).ok())
        .ok_or_else(|| format!("its port {name:?} is not one the container declares"))
}

fn http_record(action: &Node, port: u16) -> Value {
    let text = |k: &str| action.get(k).and_then(Node::as_str).map(str::to_string);
    let mut get = json!({
        "path": text("path").unwrap_or_else(|| "/".into()),
        "port": port,
        "scheme": text("scheme").unwrap_or_else(|| "HTTP".into()),
    });
    let headers: Vec<Value> = action
        .get("httpHeaders")
        .map_or(&[][..], Node::items)
        .iter()
        .map(|h| {
            json!({
                "name": h.get("name").and_then(Node::as_str).unwrap_or(""),
                "value": h.get("value").and_then(Node::as_str).unwrap_or(""),
            })
        })
        .collect();
    if !headers.is_empty() {
        get["httpHeaders"] = Value::Array(headers);
    }
    json!({ "httpGet": get })
}

/// The probe with its action replaced, in place, by a GET of `key` on the admin port; its timings stay.
fn rewritten(probe: &Node, key: &str, admin_port: u16) -> Node {
    let get = Node::Map(vec![
        ("path".into(), Node::str(key)),
        ("port".into(), Node::int(admin_port.into())),
        ("scheme".into(), Node::str("HTTP")),
    ]);
    let entries = probe
        .entries()
        .iter()
        .map(|(k, v)| match k.as_str() {
            "httpGet" | "tcpSocket" => ("httpGet".to_string(), get.clone()),
            _ => (k.clone(), v.clone()),
        })
        .collect();
    Node::Map(entries)
}

/// `PPS_SIDECAR_APP_PROBES`: the recorded probes, keyed by their path on the admin listener.
pub fn record(rewrites: &[Rewrite]) -> String {
    let map: serde_json::Map<String, Value> = rewrites
        .iter()
        .map(|r| (r.key.clone(), r.record.clone()))
        .collect();
    Value::Object(map).to_string()
}

/// Puts the rewritten probes into the pod `spec`.
pub fn apply(spec: &mut Node, rewrites: &[Rewrite]) {
    let Some(Node::Seq(list)) = spec.get_mut("containers") else {
        return;
    };
    for r in rewrites {
        list[r.container].set(r.field, r.probe.clone());
    }
}
