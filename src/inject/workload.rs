//! One workload: whether it is injected, which port is its app's, what would collide, and the change.

use super::probes::{self, Rewrite};
use super::service;
use super::sidecar::{self, Template};
use super::yaml::Node;
use super::{Doc, Loc, Options, describe, kind_of, namespace, object, object_mut};

const KINDS: [&str; 5] = [
    "Deployment",
    "StatefulSet",
    "DaemonSet",
    "ReplicaSet",
    "Pod",
];
/// Opt-out, on the workload or its pod template.
pub const OPT_OUT: &str = "pps-sidecar.io/inject";
/// The app's port by name or number, when the Services do not tell it.
pub const APP_PORT: &str = "pps-sidecar.io/app-port";

pub struct Workload {
    pub loc: Loc,
    /// How messages name it.
    pub name: String,
    pub namespace: Option<String>,
    /// The pod's labels, which Services select.
    pub labels: Vec<(String, String)>,
    pub state: State,
}

pub enum State {
    Inject(Plan),
    OptedOut,
    Injected,
}

/// What injecting changes, decided before anything is changed.
pub struct Plan {
    pub app_port: u16,
    /// The name the app's container gives that port, which a Service may target.
    pub app_port_name: Option<String>,
    pub probes: Vec<Rewrite>,
}

/// The pod template of a workload object (a Pod is its own).
pub fn pod(obj: &Node) -> Option<&Node> {
    if kind_of(obj) == Some("Pod") {
        Some(obj)
    } else {
        obj.at(&["spec", "template"])
    }
}

fn pod_mut(obj: &mut Node) -> Option<&mut Node> {
    if kind_of(obj) == Some("Pod") {
        Some(obj)
    } else {
        obj.at_mut(&["spec", "template"])
    }
}

fn containers<'n>(pod: &'n Node, list: &str) -> &'n [Node] {
    pod.at(&["spec", list]).map_or(&[], Node::items)
}

/// `(name, containerPort)` of a container's ports.
pub fn ports(c: &Node) -> Vec<(Option<&str>, u64)> {
    c.get("ports")
        .map_or(&[][..], Node::items)
        .iter()
        .filter_map(|p| {
            let n = p.get("containerPort")?.as_int()?;
            Some((p.get("name").and_then(Node::as_str), n))
        })
        .collect()
}

fn annotation<'n>(meta: Option<&'n Node>, key: &str) -> Option<&'n str> {
    meta?.at(&["annotations", key]).and_then(Node::as_str)
}

impl Workload {
    /// Reads the object at `loc`; `None` when it is not a workload. Problems go to `errors`.
    pub fn read(
        docs: &[Doc<'_>],
        loc: Loc,
        services: &[Loc],
        opts: &Options,
        template: &Template,
        errors: &mut Vec<String>,
    ) -> Option<Workload> {
        let obj = object(docs, loc);
        if !KINDS.contains(&kind_of(obj)?) {
            return None;
        }
        let name = describe(obj);
        let Some(pod) = pod(obj) else {
            errors.push(format!("{name}: has no pod template"));
            return None;
        };
        let labels = pod
            .at(&["metadata", "labels"])
            .map_or(&[][..], Node::entries)
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect();
        let mut w = Workload {
            loc,
            name,
            namespace: namespace(obj),
            labels,
            state: State::OptedOut,
        };
        let metas = [obj.get("metadata"), pod.get("metadata")];
        if metas
            .iter()
            .any(|m| annotation(*m, OPT_OUT) == Some("false"))
        {
            return Some(w);
        }
        let everyone = || {
            containers(pod, "initContainers")
                .iter()
                .chain(containers(pod, "containers"))
        };
        if everyone().any(|c| c.get("name").and_then(Node::as_str) == Some(sidecar::CONTAINER)) {
            w.state = State::Injected;
            return Some(w);
        }
        let explicit = opts.app_port.clone().or_else(|| {
            metas
                .iter()
                .find_map(|m| annotation(*m, APP_PORT))
                .map(str::to_string)
        });
        let found = match explicit {
            Some(r) => resolve(pod, &r),
            None => service::app_port(docs, services, &w).unwrap_or_else(|| only_port(pod)),
        };
        let (app_port, app_port_name) = match found {
            Ok(p) => p,
            Err(e) => {
                errors.push(format!("{}: {e}", w.name));
                return Some(w);
            }
        };
        let before = errors.len();
        collisions(&w.name, pod, app_port, opts, template, errors);
        let probes = probes::plan(&w.name, pod, app_port, opts.admin_port, errors);
        if errors.len() == before {
            w.state = State::Inject(Plan {
                app_port,
                app_port_name,
                probes,
            });
        }
        Some(w)
    }
}

/// The app's port named or numbered `r`: a declared container port, or any number.
pub fn resolve(pod: &Node, r: &str) -> Result<(u16, Option<String>), String> {
    let declared: Vec<(Option<&str>, u64)> = containers(pod, "containers")
        .iter()
        .flat_map(ports)
        .collect();
    if let Ok(n) = r.parse::<u16>() {
        let name = declared
            .iter()
            .find(|(_, p)| *p == u64::from(n))
            .and_then(|(name, _)| *name);
        return Ok((n, name.map(str::to_string)));
    }
    declared
        .iter()
        .find(|(name, _)| *name == Some(r))
        .and_then(|(_, n)| u16::try_from(*n).ok())
        .map(|n| (n, Some(r.to_string())))
        .ok_or_else(|| format!("no container of the pod declares a port named {r:?}"))
}

/// Without a Service to tell: the one port the pod's containers declare.
fn only_port(pod: &Node) -> Result<(u16, Option<String>), String> {
    let declared: Vec<(Option<&str>, u64)> = containers(pod, "containers")
        .iter()
        .flat_map(ports)
        .collect();
    match declared.as_slice() {
        [(name, n)] => Ok((
            u16::try_from(*n).map_err(|_| "a port out of range".to_string())?,
            name.map(str::to_string),
        )),
        _ => Err(format!(
            "cannot tell which port is the app's (no Service in the input selects the pod, and it declares \
             {} ports): name it with --app-port or the annotation {APP_PORT}",
            declared.len()
        )),
    }
}

/// Refuses ports and names the sidecar would share with the pod.
fn collisions(
    name: &str,
    pod: &Node,
    app_port: u16,
    opts: &Options,
    template: &Template,
    errors: &mut Vec<String>,
) {
    let how = "choose free ones with --webhook-port and --admin-port (and match them in the ConfigMap's \
               sidecar.toml)";
    let ours = [
        (sidecar::WEBHOOKS, opts.webhook_port),
        (sidecar::ADMIN, opts.admin_port),
    ];
    if opts.webhook_port == opts.admin_port {
        errors.push(format!(
            "{name}: the webhook and admin ports are both {}",
            opts.webhook_port
        ));
    }
    for (what, port) in ours {
        if port == app_port {
            errors.push(format!(
                "{name}: the sidecar's {what} port {port} is the app's own port: {how}"
            ));
        }
    }
    for list in ["initContainers", "containers"] {
        for c in containers(pod, list) {
            let cname = c.get("name").and_then(Node::as_str).unwrap_or("?");
            for (pname, n) in ports(c) {
                for (what, port) in ours {
                    if n == u64::from(port) && port != app_port {
                        errors.push(format!(
                            "{name}: the sidecar's {what} port {port} is taken by container \"{cname}\" \
                             (containerPort {n}): {how}"
                        ));
                    }
                    if pname == Some(what) {
                        errors.push(format!(
                            "{name}: container \"{cname}\" already names a port \"{what}\", the name of \
                             the sidecar's: rename it"
                        ));
                    }
                }
            }
            for (probe, n) in probes::numeric_ports(c) {
                for (what, port) in ours {
                    if n == u64::from(port) && port != app_port {
                        errors.push(format!(
                            "{name}: container \"{cname}\"'s {probe} uses port {n}, the sidecar's {what} \
                             port: {how}"
                        ));
                    }
                }
            }
        }
    }
    let volumes = pod.at(&["spec", "volumes"]).map_or(&[][..], Node::items);
    for v in volumes {
        let vname = v.get("name").and_then(Node::as_str).unwrap_or("");
        if template.volume_names().contains(&vname) {
            errors.push(format!(
                "{name}: the pod already has a volume \"{vname}\", the name of one of the sidecar's"
            ));
        }
    }
}

/// Adds the sidecar to the workload's pod: the Component's labels, annotations, container (first in its
/// list, as kustomize's strategic merge puts it) and volumes (first too), and the rewritten probes.
pub fn apply(docs: &mut [Doc<'_>], w: &Workload, plan: &Plan, template: &Template) {
    let obj = object_mut(docs, w.loc);
    let pod = pod_mut(obj).expect("read found it");
    let meta = pod.entry_map("metadata").expect("a pod template is a map");
    for (key, entries) in [
        ("labels", &template.labels),
        ("annotations", &template.annotations),
    ] {
        let map = meta
            .entry_map(key)
            .expect("labels and annotations are maps");
        for (k, v) in entries {
            map.set(k, v.clone());
        }
    }
    let container = if plan.probes.is_empty() {
        template.container.clone()
    } else {
        template.container_with_env(crate::admin::probe::ENV, &probes::record(&plan.probes))
    };
    let spec = pod.entry_map("spec").expect("a pod spec is a map");
    probes::apply(spec, &plan.probes);
    for (list, new) in [
        (template.list, vec![container]),
        ("volumes", template.volumes.clone()),
    ] {
        let mut items = new;
        if let Some(Node::Seq(old)) = spec.get(list) {
            items.extend(old.iter().cloned());
        }
        spec.set(list, Node::Seq(items));
    }
}
