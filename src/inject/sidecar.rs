//! What `inject` adds to a pod: read from the kustomize Components' patches, compiled in, so that the
//! Component and `inject` have one source (k8s/components/pps-sidecar*/deployment-patch.yaml; a test
//! renders both and compares the pods).

use super::yaml::{self, Node};

const NATIVE: &str = include_str!("../../k8s/components/pps-sidecar/deployment-patch.yaml");
const LEGACY: &str = include_str!("../../k8s/components/pps-sidecar-legacy/deployment-patch.yaml");

/// The Secret and ConfigMap the sidecar's volume names (the user's: `inject` never writes them).
pub const SECRET: &str = "pps-webhook-secret";
pub const CONFIG_MAP: &str = "pps-sidecar-config";
pub const CONTAINER: &str = "pps-sidecar";
/// The sidecar's port names, which a repointed Service targets and the ConfigMap's addresses match.
pub const WEBHOOKS: &str = "webhooks";
pub const ADMIN: &str = "admin";

/// The pod-template parts of a Component patch.
#[derive(Debug, Clone)]
pub struct Template {
    pub labels: Vec<(String, Node)>,
    pub annotations: Vec<(String, Node)>,
    /// `initContainers` (native sidecar) or `containers` (legacy).
    pub list: &'static str,
    pub container: Node,
    pub volumes: Vec<Node>,
}

impl Template {
    /// The Component's patch, its ports set to `webhook` and `admin` (the patch's are 8080 and 9090).
    pub fn new(legacy: bool, webhook: u16, admin: u16) -> Template {
        let text = if legacy { LEGACY } else { NATIVE };
        let doc = yaml::parse(text)
            .expect("the Component patch is YAML (tested)")
            .expect("the Component patch has a document");
        let tpl = doc
            .at(&["spec", "template"])
            .expect("the patch has spec.template");
        let entries = |path: &[&str]| tpl.at(path).map_or(Vec::new(), |n| n.entries().to_vec());
        let list = if legacy {
            "containers"
        } else {
            "initContainers"
        };
        let mut container = tpl
            .at(&["spec", list])
            .expect("the patch's container")
            .items()[0]
            .clone();
        if let Some(Node::Seq(ports)) = container.get_mut("ports") {
            for p in ports {
                let number = match p.get("name").and_then(Node::as_str) {
                    Some(WEBHOOKS) => webhook,
                    Some(ADMIN) => admin,
                    _ => continue,
                };
                p.set("containerPort", Node::int(number.into()));
            }
        }
        let mut annotations = entries(&["metadata", "annotations"]);
        for (k, v) in &mut annotations {
            if k == "prometheus.io/port" {
                *v = Node::str(&admin.to_string());
            }
        }
        Template {
            labels: entries(&["metadata", "labels"]),
            annotations,
            list,
            container,
            volumes: tpl
                .at(&["spec", "volumes"])
                .map_or(Vec::new(), |v| v.items().to_vec()),
        }
    }

    /// Names of the volumes the sidecar brings.
    pub fn volume_names(&self) -> Vec<&str> {
        self.volumes
            .iter()
            .filter_map(|v| v.get("name").and_then(Node::as_str))
            .collect()
    }

    /// The sidecar container with one more environment variable.
    pub fn container_with_env(&self, name: &str, value: &str) -> Node {
        let mut c = self.container.clone();
        let var = Node::Map(vec![
            ("name".into(), Node::str(name)),
            ("value".into(), Node::str(value)),
        ]);
        match c.get_mut("env") {
            Some(Node::Seq(env)) => env.push(var),
            _ => c.set("env", Node::Seq(vec![var])),
        }
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_components_give_a_sidecar_with_the_chosen_ports() {
        for legacy in [false, true] {
            let t = Template::new(legacy, 18080, 19090);
            assert_eq!(t.container.get("name").unwrap().as_str(), Some(CONTAINER));
            assert_eq!(
                t.container.get("restartPolicy").and_then(Node::as_str),
                (!legacy).then_some("Always")
            );
            let ports: Vec<(Option<&str>, Option<u64>)> = t
                .container
                .get("ports")
                .unwrap()
                .items()
                .iter()
                .map(|p| {
                    (
                        p.get("name").and_then(Node::as_str),
                        p.get("containerPort").and_then(Node::as_int),
                    )
                })
                .collect();
            assert_eq!(
                ports,
                [(Some(WEBHOOKS), Some(18080)), (Some(ADMIN), Some(19090))]
            );
            assert!(
                t.annotations
                    .iter()
                    .any(|(k, v)| k == "prometheus.io/port" && v.as_str() == Some("19090"))
            );
            assert_eq!(t.volume_names(), ["pps-sidecar-spool", "pps-sidecar"]);
        }
    }
}
