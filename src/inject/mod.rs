//! `pps-sidecar inject [--legacy] [FILE|-]`: Kubernetes YAML in, the same YAML out with the sidecar added
//! to its workloads and their Services repointed, as `linkerd inject` does:
//! `pps-sidecar inject deploy.yaml | kubectl apply -f -`.
//!
//! - Workloads (Deployment, StatefulSet, DaemonSet, ReplicaSet, Pod) get what the kustomize Component adds
//!   (`sidecar`: the Component's own patch, compiled in), unless annotated `pps-sidecar.io/inject: "false"`
//!   or already carrying the sidecar.
//! - The app's port is found from the Services that select the pod (or `--app-port`, or the annotation
//!   `pps-sidecar.io/app-port`, or the one port the pod declares); only the Service ports that reach it are
//!   repointed to the sidecar's `webhooks` port, the others stay (`service`).
//! - The app's HTTP and TCP probes, which the kubelet cannot send once the app listens on loopback, are
//!   rewritten to the sidecar's `/app-probe/...` and recorded in its environment (`probes`).
//! - Ports that collide with the pod's own are refused, with a message saying how to choose others.
//! - No Secret is ever written: a missing one is reported with the command that creates it.
//! - Documents that are not changed are copied byte for byte (`yaml::split_documents`).

mod probes;
mod service;
pub mod sidecar;
mod workload;
pub mod yaml;

use std::collections::BTreeMap;

use sidecar::Template;
use workload::{State, Workload};
use yaml::Node;

/// The command line's choices.
#[derive(Debug, Clone)]
pub struct Options {
    /// A plain second container (clusters before 1.29) instead of a native sidecar.
    pub legacy: bool,
    pub webhook_port: u16,
    pub admin_port: u16,
    /// The app's port, by name or number, when the Services do not tell it.
    pub app_port: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            legacy: false,
            webhook_port: 8080,
            admin_port: 9090,
            app_port: None,
        }
    }
}

/// The output, and what the operator must know (printed on stderr).
#[derive(Debug)]
pub struct Injected {
    pub yaml: String,
    pub notes: Vec<String>,
}

/// One document of the input.
pub(crate) struct Doc<'a> {
    text: &'a str,
    node: Option<Node>,
    changed: bool,
}

/// Where an object is: a document, or an item of a `kind: List` document (what `kubectl get -o yaml`
/// prints for several objects).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Loc {
    doc: usize,
    item: Option<usize>,
}

pub(crate) fn object<'n>(docs: &'n [Doc<'_>], loc: Loc) -> &'n Node {
    let node = docs[loc.doc].node.as_ref().expect("located objects exist");
    match loc.item {
        Some(i) => &node.get("items").expect("a List").items()[i],
        None => node,
    }
}

pub(crate) fn object_mut<'n>(docs: &'n mut [Doc<'_>], loc: Loc) -> &'n mut Node {
    docs[loc.doc].changed = true;
    let node = docs[loc.doc].node.as_mut().expect("located objects exist");
    match loc.item {
        Some(i) => match node.get_mut("items") {
            Some(Node::Seq(items)) => &mut items[i],
            _ => unreachable!("a List"),
        },
        None => node,
    }
}

/// `kind/name`, and the namespace when the object names one: how messages name an object.
pub(crate) fn describe(obj: &Node) -> String {
    let kind = obj.get("kind").and_then(Node::as_str).unwrap_or("?");
    let name = obj
        .at(&["metadata", "name"])
        .and_then(Node::as_str)
        .unwrap_or("?");
    match namespace(obj) {
        Some(ns) => format!("{}/{name} (namespace {ns})", kind.to_ascii_lowercase()),
        None => format!("{}/{name}", kind.to_ascii_lowercase()),
    }
}

pub(crate) fn namespace(obj: &Node) -> Option<String> {
    obj.at(&["metadata", "namespace"])
        .and_then(Node::as_str)
        .map(str::to_string)
}

/// Adds the sidecar to `input`'s workloads. `Err` lists every reason it refused; nothing is written then.
pub fn inject(input: &str, opts: &Options) -> Result<Injected, Vec<String>> {
    let mut docs = Vec::new();
    for (i, piece) in yaml::split_documents(input).into_iter().enumerate() {
        let node = yaml::parse(piece).map_err(|e| vec![format!("document {}: {e}", i + 1)])?;
        docs.push(Doc {
            text: piece,
            node,
            changed: false,
        });
    }
    let locs = locate(&docs);
    let template = Template::new(opts.legacy, opts.webhook_port, opts.admin_port);
    let services: Vec<Loc> = locs
        .iter()
        .copied()
        .filter(|l| kind_of(object(&docs, *l)) == Some("Service"))
        .collect();
    let mut errors = Vec::new();
    let mut notes = Vec::new();
    let mut workloads = Vec::new();
    for loc in locs.iter().copied() {
        if let Some(w) = Workload::read(&docs, loc, &services, opts, &template, &mut errors) {
            workloads.push(w);
        }
    }
    let repoints = service::plan(&docs, &services, &workloads, &mut errors, &mut notes);
    check_config(&docs, &locs, &workloads, opts, &mut errors, &mut notes);
    if !errors.is_empty() {
        return Err(errors);
    }
    for w in &workloads {
        match &w.state {
            State::Inject(plan) => {
                workload::apply(&mut docs, w, plan, &template);
                notes.push(format!(
                    "{}: sidecar added; the app must listen on 127.0.0.1:{} only, so that the sidecar is \
                     the one way in (k8s/README.md, step 1)",
                    w.name, plan.app_port
                ));
            }
            State::OptedOut => notes.push(format!(
                "{}: left alone (pps-sidecar.io/inject: \"false\")",
                w.name
            )),
            State::Injected => notes.push(format!("{}: already has the sidecar", w.name)),
        }
    }
    for (loc, ports) in repoints {
        service::apply(object_mut(&mut docs, loc), &ports);
    }
    Ok(Injected {
        yaml: write(&docs),
        notes,
    })
}

fn kind_of(obj: &Node) -> Option<&str> {
    obj.get("kind").and_then(Node::as_str)
}

/// Every object of the input, the items of List documents included.
fn locate(docs: &[Doc<'_>]) -> Vec<Loc> {
    let mut out = Vec::new();
    for (i, d) in docs.iter().enumerate() {
        let Some(node) = &d.node else { continue };
        if kind_of(node) == Some("List") {
            let n = node.get("items").map_or(0, |it| it.items().len());
            out.extend((0..n).map(|j| Loc {
                doc: i,
                item: Some(j),
            }));
        } else {
            out.push(Loc { doc: i, item: None });
        }
    }
    out
}

/// The ConfigMap and the Secret the sidecar mounts, per namespace of an injected workload: a ConfigMap in
/// the input must name the ports chosen here and the app's port; a missing one, or a missing Secret, is
/// reported with what creates it.
fn check_config(
    docs: &[Doc<'_>],
    locs: &[Loc],
    workloads: &[Workload],
    opts: &Options,
    errors: &mut Vec<String>,
    notes: &mut Vec<String>,
) {
    let mut app_ports: BTreeMap<Option<String>, Vec<(&str, u16)>> = BTreeMap::new();
    for w in workloads {
        if let State::Inject(plan) = &w.state {
            app_ports
                .entry(w.namespace.clone())
                .or_default()
                .push((&w.name, plan.app_port));
        }
    }
    let find = |kind: &str, name: &str, ns: &Option<String>| {
        locs.iter().map(|l| object(docs, *l)).find(|o| {
            kind_of(o) == Some(kind)
                && o.at(&["metadata", "name"]).and_then(Node::as_str) == Some(name)
                && &namespace(o) == ns
        })
    };
    for (ns, apps) in &app_ports {
        let in_ns = ns.as_ref().map_or(String::new(), |n| format!(" -n {n}"));
        let (first, port) = apps[0];
        if let Some((other, other_port)) = apps.iter().find(|(_, p)| *p != port) {
            errors.push(format!(
                "{first} and {other} share the ConfigMap {} but their apps listen on {port} and \
                 {other_port}: inject them in separate namespaces, or give them the same port",
                sidecar::CONFIG_MAP
            ));
        }
        if find("Secret", sidecar::SECRET, ns).is_none() {
            notes.push(format!(
                "the Secret {} is not in the input (the pod does not start without it). Create it with \
                 the client secret Pitchpoint gave you:\n  kubectl create secret generic {}{in_ns} \
                 --from-literal=hmac='<client secret from Pitchpoint>'",
                sidecar::SECRET,
                sidecar::SECRET
            ));
        }
        let want = [
            ("server.listen", format!("0.0.0.0:{}", opts.webhook_port)),
            (
                "server.admin_listen",
                format!("0.0.0.0:{}", opts.admin_port),
            ),
            ("upstream.address", format!("127.0.0.1:{port}")),
        ];
        match find("ConfigMap", sidecar::CONFIG_MAP, ns) {
            Some(cm) => errors.extend(config_mismatches(cm, &want)),
            None => notes.push(format!(
                "the ConfigMap {} is not in the input (the pod does not start without it): a \
                 sidecar.toml (conf/sidecar.toml documents every key) with\n  {}\n  kubectl create \
                 configmap {}{in_ns} --from-file=sidecar.toml",
                sidecar::CONFIG_MAP,
                want.iter()
                    .map(|(k, v)| format!("{k} = \"{v}\""))
                    .collect::<Vec<_>>()
                    .join(", "),
                sidecar::CONFIG_MAP
            )),
        }
    }
}

/// What in the ConfigMap's `sidecar.toml` disagrees with `want` (key, address): the ports must match.
fn config_mismatches(cm: &Node, want: &[(&str, String)]) -> Vec<String> {
    let Some(text) = cm.at(&["data", "sidecar.toml"]).and_then(Node::as_str) else {
        return vec![format!("{}: has no key sidecar.toml", describe(cm))];
    };
    let Ok(table) = text.parse::<toml::Table>() else {
        return vec![format!("{}: sidecar.toml is not TOML", describe(cm))];
    };
    let defaults = [
        ("server.listen", "0.0.0.0:8080"),
        ("server.admin_listen", "0.0.0.0:9090"),
    ];
    let mut out = Vec::new();
    for (key, expected) in want {
        let (table_name, field) = key.split_once('.').expect("dotted keys");
        let value = table
            .get(table_name)
            .and_then(|t| t.get(field))
            .and_then(|v| v.as_str())
            .or_else(|| defaults.iter().find(|(k, _)| k == key).map(|(_, d)| *d));
        let port = |a: &str| a.rsplit_once(':').map(|(_, p)| p.to_string());
        let loopback = |a: &str| {
            a.rsplit_once(':')
                .is_some_and(|(h, _)| ["127.0.0.1", "localhost", "[::1]"].contains(&h))
        };
        let ok = value.is_some_and(|v| {
            port(v) == port(expected) && (*key != "upstream.address" || loopback(v))
        });
        if !ok {
            out.push(format!(
                "{}: sidecar.toml's {key} is {}, but this pod needs {expected}: fix the ConfigMap or \
                 choose the ports with --webhook-port, --admin-port, --app-port",
                describe(cm),
                value.map_or("absent".to_string(), |v| format!("\"{v}\""))
            ));
        }
    }
    out
}

/// The stream again: untouched documents as they were, changed ones written anew after their leading
/// comments and `---`.
fn write(docs: &[Doc<'_>]) -> String {
    let mut out = String::new();
    for (i, d) in docs.iter().enumerate() {
        let Some(node) = d.node.as_ref().filter(|_| d.changed) else {
            out.push_str(d.text);
            continue;
        };
        let mut marker = false;
        for line in d.text.split_inclusive('\n') {
            let t = line.trim_end();
            let is_marker = t == "---" || t.starts_with("--- #");
            if !(t.is_empty() || t.starts_with('#') || is_marker) {
                break;
            }
            marker |= is_marker;
            out.push_str(line);
        }
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        if !marker && i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&yaml::emit(node, yaml::layout(d.text)));
    }
    out
}
