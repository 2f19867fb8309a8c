//! The kinds the simulated apiserver serves (the `KINDS` table) and the discovery documents kubectl reads them from.

use std::net::SocketAddr;

use serde_json::{Value, json};

/// One kind the API serves.
pub(super) struct Kind {
    pub(super) group: &'static str,
    pub(super) version: &'static str,
    pub(super) resource: &'static str,
    pub(super) kind: &'static str,
    pub(super) namespaced: bool,
    pub(super) short: &'static [&'static str],
}

const KINDS: &[Kind] = &[
    Kind {
        group: "",
        version: "v1",
        resource: "namespaces",
        kind: "Namespace",
        namespaced: false,
        short: &["ns"],
    },
    Kind {
        group: "",
        version: "v1",
        resource: "nodes",
        kind: "Node",
        namespaced: false,
        short: &["no"],
    },
    Kind {
        group: "",
        version: "v1",
        resource: "pods",
        kind: "Pod",
        namespaced: true,
        short: &["po"],
    },
    Kind {
        group: "",
        version: "v1",
        resource: "configmaps",
        kind: "ConfigMap",
        namespaced: true,
        short: &["cm"],
    },
    Kind {
        group: "",
        version: "v1",
        resource: "secrets",
        kind: "Secret",
        namespaced: true,
        short: &[],
    },
    Kind {
        group: "",
        version: "v1",
        resource: "services",
        kind: "Service",
        namespaced: true,
        short: &["svc"],
    },
    Kind {
        group: "",
        version: "v1",
        resource: "serviceaccounts",
        kind: "ServiceAccount",
        namespaced: true,
        short: &["sa"],
    },
    Kind {
        group: "apps",
        version: "v1",
        resource: "deployments",
        kind: "Deployment",
        namespaced: true,
        short: &["deploy"],
    },
    Kind {
        group: "apps",
        version: "v1",
        resource: "daemonsets",
        kind: "DaemonSet",
        namespaced: true,
        short: &["ds"],
    },
    Kind {
        group: "apps",
        version: "v1",
        resource: "statefulsets",
        kind: "StatefulSet",
        namespaced: true,
        short: &["sts"],
    },
    // The leader-election locks of the controller-manager and the scheduler
    // (`component::leader_lock`).
    Kind {
        group: "coordination.k8s.io",
        version: "v1",
        resource: "leases",
        kind: "Lease",
        namespaced: true,
        short: &[],
    },
    Kind {
        group: "apiregistration.k8s.io",
        version: "v1",
        resource: "apiservices",
        kind: "APIService",
        namespaced: false,
        short: &[],
    },
    // The kubelets renew their client certificates through it and the controller-manager
    // approves and signs them (`pkg/apis/certificates`, `pkg/registry/certificates`).
    Kind {
        group: "certificates.k8s.io",
        version: "v1",
        resource: "certificatesigningrequests",
        kind: "CertificateSigningRequest",
        namespaced: false,
        short: &["csr"],
    },
];

pub(super) fn find_kind(group: &str, resource: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.group == group && k.resource == resource)
}

/// The discovery document at `path`; `endpoint` is the address `/api` tells clients to use.
pub(super) fn discovery(path: &str, endpoint: &SocketAddr) -> Option<Value> {
    let group_version =
        |g: &str, v: &str| if g.is_empty() { v.to_string() } else { format!("{g}/{v}") };
    match path {
        "/version" => Some(
            json!({"major": "1", "minor": "31", "gitVersion": "v1.31.0", "platform": "linux/amd64"}),
        ),
        "/api" => Some(
            json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": endpoint.to_string()}]}),
        ),
        "/apis" => {
            let mut groups: Vec<&str> =
                KINDS.iter().map(|k| k.group).filter(|g| !g.is_empty()).collect();
            groups.dedup();
            // The aggregator lists the group of every APIService, its server up or not
            // (`staging/src/k8s.io/kube-aggregator/pkg/apiserver/handler_apis.go`
            // `convertToDiscoveryAPIGroup`): the testbed's one is v1beta1.metrics.k8s.io
            // (bootstrap.rs). While metrics-server is away, kubectl's discovery warns about it
            // as a real kubectl does, and `kubectl top` needs it listed.
            groups.push("metrics.k8s.io");
            let groups: Vec<Value> = groups
                .iter()
                .map(|g| {
                    let v = if *g == "metrics.k8s.io" { "v1beta1" } else { "v1" };
                    let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
                    json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
                })
                .collect();
            Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
        }
        _ => {
            let (g, v) = if path == "/api/v1" {
                ("", "v1")
            } else {
                let rest = path.strip_prefix("/apis/")?;
                let (g, v) = rest.split_once('/')?;
                if v.contains('/') {
                    return None;
                }
                (g, v)
            };
            let resources: Vec<Value> = KINDS
                .iter()
                .filter(|k| k.group == g && k.version == v)
                .flat_map(|k| {
                    let verbs = json!(["create", "delete", "get", "list", "patch", "update"]);
                    let mut r = vec![json!({"name": k.resource, "singularName": k.kind.to_lowercase(), "namespaced": k.namespaced, "kind": k.kind, "verbs": verbs, "shortNames": k.short})];
                    if matches!(k.resource, "nodes" | "pods" | "deployments" | "daemonsets" | "statefulsets" | "certificatesigningrequests") {
                        r.push(json!({"name": format!("{}/status", k.resource), "namespaced": k.namespaced, "kind": k.kind, "verbs": ["get", "patch", "update"]}));
                    }
                    if k.resource == "certificatesigningrequests" {
                        r.push(json!({"name": "certificatesigningrequests/approval", "namespaced": false, "kind": k.kind, "verbs": ["get", "patch", "update"]}));
                    }
                    if k.resource == "pods" {
                        r.push(json!({"name": "pods/log", "namespaced": true, "kind": "Pod", "verbs": ["get"]}));
                    }
                    r
                })
                .collect();
            if resources.is_empty() {
                return None;
            }
            Some(
                json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version(g, v), "resources": resources}),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_lists_core_and_apps() {
        let endpoint: SocketAddr = "198.18.1.10:6443".parse().unwrap();
        let discovery = |p: &str| discovery(p, &endpoint);
        let api = discovery("/api").unwrap();
        assert_eq!(api["serverAddressByClientCIDRs"][0]["serverAddress"], "198.18.1.10:6443");
        let core = discovery("/api/v1").unwrap();
        assert!(core["resources"].as_array().unwrap().iter().any(|r| r["name"] == "nodes"));
        let apps = discovery("/apis/apps/v1").unwrap();
        assert!(apps["resources"].as_array().unwrap().iter().any(|r| r["name"] == "daemonsets"));
        assert!(discovery("/apis/nope/v1").is_none());
    }

    #[test]
    fn leases_are_served_namespaced_for_leader_election() {
        let lease = find_kind("coordination.k8s.io", "leases").unwrap();
        assert_eq!((lease.kind, lease.version, lease.namespaced), ("Lease", "v1", true));
        let endpoint: SocketAddr = "198.18.0.10:6443".parse().unwrap();
        let list = discovery("/apis/coordination.k8s.io/v1", &endpoint).unwrap();
        let leases = &list["resources"][0];
        assert_eq!(
            (leases["name"].as_str(), leases["kind"].as_str()),
            (Some("leases"), Some("Lease"))
        );
        assert!(leases["verbs"].as_array().unwrap().iter().any(|v| v == "update"));
    }
}
