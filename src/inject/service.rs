//! The Services in front of injected pods: only those that select the pods, and only the ports that
//! reached the app, now target the sidecar's `webhooks` port; every other port and Service stays.

use super::sidecar;
use super::workload::{self, State, Workload};
use super::yaml::Node;
use super::{Doc, Loc, describe, namespace, object};

/// Whether `svc` selects the pods of `w` (same namespace, a non-empty selector its labels satisfy).
fn selects(svc: &Node, w: &Workload) -> bool {
    let selector = svc.at(&["spec", "selector"]).map_or(&[][..], Node::entries);
    namespace(svc) == w.namespace
        && !selector.is_empty()
        && selector.iter().all(|(k, v)| {
            w.labels
                .iter()
                .any(|(lk, lv)| lk == k && Some(lv.as_str()) == v.as_str())
        })
}

/// A port's target: `targetPort`, or `port` when it has none.
fn target(p: &Node) -> Option<&Node> {
    p.get("targetPort").or_else(|| p.get("port"))
}

fn port_list(svc: &Node) -> &[Node] {
    svc.at(&["spec", "ports"]).map_or(&[], Node::items)
}

/// Whether a port's target is the app's port, by number or by the name its container gives it.
fn reaches(t: &Node, app_port: u16, app_name: Option<&str>) -> bool {
    t.as_int() == Some(u64::from(app_port))
        || (t.as_int().is_none() && t.as_str().is_some() && t.as_str() == app_name)
}

/// The app's port as the Services that select `w` tell it: `None` when none does.
pub fn app_port(
    docs: &[Doc<'_>],
    services: &[Loc],
    w: &Workload,
) -> Option<Result<(u16, Option<String>), String>> {
    let pod = workload::pod(object(docs, w.loc))?;
    let mut found: Option<(u16, Option<String>, String)> = None;
    for svc in services.iter().map(|l| object(docs, *l)) {
        if !selects(svc, w) {
            continue;
        }
        let ports = port_list(svc);
        let [p] = ports else {
            return Some(Err(format!(
                "{} has {} ports: name the one that reaches the app with --app-port or the annotation {} \
                 on the workload (the others stay as they are)",
                describe(svc),
                ports.len(),
                workload::APP_PORT
            )));
        };
        let Some(t) = target(p) else { continue };
        let r = match (t.as_int(), t.as_str()) {
            (Some(n), _) => n.to_string(),
            (None, Some(name)) => name.to_string(),
            _ => continue,
        };
        let resolved = match workload::resolve(pod, &r) {
            Ok(x) => x,
            Err(e) => return Some(Err(format!("{} targets {r:?}, but {e}", describe(svc)))),
        };
        match &found {
            Some((n, _, other)) if *n != resolved.0 => {
                return Some(Err(format!(
                    "{other} and {} reach different ports ({n} and {}): name the app's with --app-port",
                    describe(svc),
                    resolved.0
                )));
            }
            Some(_) => {}
            None => found = Some((resolved.0, resolved.1, describe(svc))),
        }
    }
    found.map(|(n, name, _)| Ok((n, name)))
}

/// For each Service to change, the indices of the ports to repoint. A Service that selects both injected
/// pods and pods left alone is refused: repointing it would cut the others off.
pub fn plan(
    docs: &[Doc<'_>],
    services: &[Loc],
    workloads: &[Workload],
    errors: &mut Vec<String>,
    notes: &mut Vec<String>,
) -> Vec<(Loc, Vec<usize>)> {
    let mut out = Vec::new();
    for loc in services {
        let svc = object(docs, *loc);
        let selected: Vec<&Workload> = workloads.iter().filter(|w| selects(svc, w)).collect();
        let injected: Vec<&Workload> = selected
            .iter()
            .copied()
            .filter(|w| matches!(w.state, State::Inject(_)))
            .collect();
        if injected.is_empty() {
            continue;
        }
        if let Some(left) = selected.iter().find(|w| matches!(w.state, State::OptedOut)) {
            errors.push(format!(
                "{} selects {} (to be injected) and {} (left alone): repointing it would cut the latter \
                 off; give them Services of their own",
                describe(svc),
                injected[0].name,
                left.name
            ));
            continue;
        }
        let mut indices = Vec::new();
        for (i, p) in port_list(svc).iter().enumerate() {
            let Some(t) = target(p) else { continue };
            if t.as_str() == Some(sidecar::WEBHOOKS) && t.as_int().is_none() {
                continue;
            }
            let hit = injected.iter().any(|w| match &w.state {
                State::Inject(plan) => reaches(t, plan.app_port, plan.app_port_name.as_deref()),
                _ => false,
            });
            if hit {
                indices.push(i);
            }
        }
        if indices.is_empty() {
            notes.push(format!(
                "{} selects {} but none of its ports reaches the app's port: left as it is",
                describe(svc),
                injected[0].name
            ));
        } else {
            out.push((*loc, indices));
        }
    }
    out
}

/// Points the ports at `indices` to the sidecar's `webhooks` port.
pub fn apply(svc: &mut Node, indices: &[usize]) {
    let Some(Node::Seq(ports)) = svc.at_mut(&["spec", "ports"]) else {
        return;
    };
    for i in indices {
        ports[*i].set("targetPort", Node::str(sidecar::WEBHOOKS));
    }
}
