//! The procedure: the upstream "Manually Rotate CA Certificates" steps as an engine plan for a
//! discovered cluster, and the trust check of every intermediate state.
//!
//! Every action is idempotent (its postcondition is checked before it is applied) and carries
//! the upstream step number it implements. Node rollouts are parallel groups honouring
//! `max_unavailable_workers`; control-plane nodes are switched one at a time. Before a plan is
//! recorded, [`check_trust`] replays it on the trust graph ([`crate::trust`]) and refuses it if
//! any edge would break after any step.
//!
//! Files are where discovery found them (each node's [`crate::trust::NodeLayout`]), not where
//! kubeadm would put them: the new CAs are placed beside the old ones in the node's pki directory
//! (`ca-new.crt`, `front-proxy-ca-new.crt`, keys 0600), and old+new bundles in `ca-bundle.crt` /
//! `front-proxy-ca-bundle.crt`. Flags that must trust both are pointed at the bundles;
//! `--client-ca-file` and `--cluster-signing-cert-file` of the controller-manager stay single
//! certificates (kubeadm#1350). Finalize writes the new CA into kubeadm's canonical
//! `ca.crt`/`ca.key`, and into every other file a flag named for the cluster CA before the
//! rotation, and points every flag back at the file it named then, so kubeadm's later operations
//! (join, renew) find the new CA where they expect it and the configuration is the one it was.

use std::collections::BTreeMap;
use std::time::Duration;

use engine::{Plan, RetryPolicy, Step};

pub use crate::action::{Action, CaKind, Content, KubeletTarget, new_ca_step};
use crate::discovery::NodeFacts;
use crate::inventory::Inventory;
use crate::kubeadm::component::{
    APISERVER, CLOUD_CONTROLLER_MANAGER, CONTROLLER_MANAGER, KUBELET, SCHEDULER,
};
use crate::kubeadm::{self, file, path};
use crate::trust::{self, NodeLayout, SimStep, Topology, Violation};

/// The phases, in order.
pub const PHASES: [&str; 7] =
    ["preflight", "prepare", "trust-control-plane", "trust-nodes", "switch", "verify", "finalize"];

pub use crate::kubeadm::step::OPERATOR;

/// The one human gate.
pub const FINALIZE_GATE: &str = "finalize";

/// What the procedure needs to know about the cluster.
#[derive(Debug, Clone)]
pub struct ClusterFacts {
    /// Per node, by inventory name.
    pub nodes: BTreeMap<String, NodeFacts>,
    /// Aggregated API servers and webhooks' workloads, `namespace/kind/name`.
    pub extension_workloads: Vec<String>,
    /// Namespaces (for the trust model's `kube-root-ca.crt`).
    pub namespaces: Vec<String>,
}

/// Why a plan could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcedureError {
    /// A control-plane node lacks a component or flag the procedure needs.
    #[error("node {node}: {what}; the procedure needs it (is this a kubeadm control-plane node?)")]
    Missing {
        /// The node.
        node: String,
        /// What is missing.
        what: String,
    },
    /// The plan would break a connection.
    #[error(transparent)]
    Trust(#[from] Violation),
    /// A rollback of the plan would break a connection or not restore the old configuration.
    #[error("rollback: {0}")]
    Rollback(Violation),
    /// The plan is malformed (a bug).
    #[error("the plan is malformed: {0}")]
    Plan(String),
}

/// A control-plane node: its facts and the layout discovery found on it.
struct ControlPlane<'a> {
    name: &'a str,
    facts: &'a NodeFacts,
    layout: NodeLayout,
    ca: String,
    ca_key: String,
    fp_ca: String,
    fp_key: String,
    pki: String,
}

impl<'a> ControlPlane<'a> {
    fn new(name: &'a str, facts: &'a NodeFacts) -> Result<Self, ProcedureError> {
        // The layout falls back on kubeadm's defaults; a control plane whose manifests lack
        // these flags is not one the procedure knows how to rotate, so it is refused instead.
        for (component, flag) in [
            (CONTROLLER_MANAGER, "--root-ca-file"),
            (CONTROLLER_MANAGER, "--cluster-signing-key-file"),
            (APISERVER, "--requestheader-client-ca-file"),
            (APISERVER, "--proxy-client-cert-file"),
        ] {
            if facts.flag(component, flag).is_none() {
                return Err(ProcedureError::Missing {
                    node: name.to_owned(),
                    what: format!("{component} has no {flag}"),
                });
            }
        }
        let layout = facts.layout();
        Ok(ControlPlane {
            name,
            facts,
            ca: layout.ca_cert.clone(),
            ca_key: layout.ca_key.clone(),
            fp_ca: layout.front_proxy_ca_cert.clone(),
            fp_key: layout.front_proxy_ca_key.clone(),
            pki: layout.pki_dir.clone(),
            layout,
        })
    }

    fn manifest(&self, component: &str) -> Option<String> {
        self.facts.static_pods.get(component).map(|p| p.manifest.clone())
    }

    fn in_pki(&self, name: &str) -> String {
        format!("{}/{name}", self.pki)
    }
    fn bundle(&self) -> String {
        self.in_pki(file::CA_BUNDLE)
    }
    fn fp_bundle(&self) -> String {
        self.in_pki(file::FRONT_PROXY_CA_BUNDLE)
    }
    fn new_ca(&self) -> String {
        self.in_pki(file::NEW_CA_CERT)
    }
    fn new_ca_key(&self) -> String {
        self.in_pki(file::NEW_CA_KEY)
    }
    fn new_fp(&self) -> String {
        self.in_pki(file::NEW_FRONT_PROXY_CA_CERT)
    }
    fn new_fp_key(&self) -> String {
        self.in_pki(file::NEW_FRONT_PROXY_CA_KEY)
    }

    /// Every file other than `ca.crt` that a component here loads the cluster CA from once
    /// finalize is done: the apiserver's and scheduler's client CA files and the apiserver's
    /// kubelet CA (finalize points the flags back at them), the controller-manager's client CA
    /// and signing certificate, the kubelet's `clientCAFile`. Each must hold the new CA then, as
    /// `ca.crt` does; on kubeadm's layout they are all `ca.crt`, and this is empty.
    fn other_cluster_ca_files(&self) -> Vec<String> {
        let l = &self.layout;
        let mut out: Vec<String> = [
            Some(&l.apiserver.client_ca),
            Some(&l.controller_manager.client_ca),
            Some(&l.controller_manager.signing_cert),
            Some(&l.kubelet.client_ca),
            l.apiserver.kubelet_ca.as_ref(),
        ]
        .into_iter()
        .flatten()
        .filter(|f| **f != self.ca)
        .cloned()
        .collect();
        if let Some(f) = self.facts.flag(SCHEDULER, "--client-ca-file")
            && f != self.ca
        {
            out.push(f.to_owned());
        }
        out.sort();
        out.dedup();
        out
    }

    /// The static pod whose `--kubeconfig` is `path`, as (component, manifest).
    fn loader_of(&self, path: &str) -> Option<(String, String)> {
        self.facts.static_pods.iter().find_map(|(component, pod)| {
            crate::discovery::KUBECONFIG_FLAGS
                .iter()
                .any(|f| pod.flags.get(*f).map(String::as_str) == Some(path))
                .then(|| (component.clone(), pod.manifest.clone()))
        })
    }

    /// Set `flags` of `component`'s static pod (priors are filled in once the plan is whole).
    fn set_flags(
        &self,
        component: &str,
        manifest: String,
        flags: BTreeMap<String, String>,
    ) -> Action {
        Action::SetFlags {
            node: self.name.to_owned(),
            component: component.into(),
            manifest,
            flags,
            prior: BTreeMap::new(),
            after_undo: Vec::new(),
        }
    }

    /// Restart `component`'s static pod.
    fn restart(&self, component: &str, manifest: String) -> Action {
        Action::RestartStaticPod {
            node: self.name.to_owned(),
            component: component.into(),
            manifest,
        }
    }

    /// The kubeconfigs kubeadm keeps on a control-plane node, as discovered.
    fn kubeconfigs(&self) -> Vec<String> {
        self.facts
            .kubeconfigs
            .values()
            .filter(|k| k.client_embedded && k.ca_embedded)
            .map(|k| k.path.clone())
            .collect()
    }
}

fn flags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn step(id: String, phase: &str, upstream: &str, kind: &str, action: Action) -> Step<Action> {
    Step::new(id, phase, kind, action).upstream(upstream)
}

/// Builds the whole plan for the cluster, then checks it on the trust graph.
pub fn build(
    inventory: &Inventory,
    facts: &ClusterFacts,
    rotation_id: &str,
) -> Result<Plan<Action>, ProcedureError> {
    let plan = assemble(inventory, facts, rotation_id)?;
    plan.validate().map_err(|e| ProcedureError::Plan(e.to_string()))?;
    check(&plan, &topology(inventory, facts))?;
    Ok(plan)
}

/// The trust checks of a plan: every edge holds after every step, and a rollback from the end
/// of every phase keeps every edge and ends on the configuration from before the rotation (the
/// tests check every point of a 3+2 plan; every point of a large fleet's plan is quadratic).
pub fn check(plan: &Plan<Action>, topology: &Topology) -> Result<(), ProcedureError> {
    check_trust(plan, topology)?;
    let steps: Vec<&Step<Action>> = plan.steps().collect();
    for phase in PHASES {
        let done = steps.iter().rposition(|s| s.phase.as_str() == phase).map_or(0, |i| i + 1);
        check_rollback(plan, topology, done).map_err(ProcedureError::Rollback)?;
    }
    Ok(())
}

/// The plan, before its trust check.
pub fn assemble(
    inventory: &Inventory,
    facts: &ClusterFacts,
    rotation_id: &str,
) -> Result<Plan<Action>, ProcedureError> {
    let node_facts = |name: &str| {
        facts.nodes.get(name).ok_or_else(|| ProcedureError::Missing {
            node: name.to_owned(),
            what: "no discovery facts".into(),
        })
    };
    let mut cps = Vec::new();
    for n in inventory.control_planes() {
        cps.push(ControlPlane::new(&n.name, node_facts(&n.name)?)?);
    }
    let workers: Vec<&str> = inventory.workers().map(|n| n.name.as_str()).collect();
    let max_unavailable = inventory.rotation.max_unavailable_workers;
    let concurrency = inventory.ssh.concurrency;

    let mut plan = Plan::new(PHASES)
        .group("backup", concurrency, 1)
        .group("distribute", concurrency, 1)
        .group("kubelets-control-plane", 1, 1)
        .group("kubelets-workers", max_unavailable, 1)
        .group("finalize-kubelets-control-plane", 1, 1)
        .group("finalize-kubelets-workers", max_unavailable, 1)
        .keep_groups_whole("trust-nodes")
        .keep_groups_whole("finalize");

    let first = cps.first().ok_or_else(|| ProcedureError::Missing {
        node: "(inventory)".into(),
        what: "no control-plane node".into(),
    })?; // preflight (caution, 1): reachability, CA checks, HA; back up every file that will change.
    plan = plan.step(
        step(
            "preflight/check".into(),
            "preflight",
            "caution",
            "preflight",
            Action::Preflight {
                node: first.name.to_owned(),
                cas: vec![
                    (first.ca.clone(), first.ca_key.clone()),
                    (first.fp_ca.clone(), first.fp_key.clone()),
                ],
            },
        )
        .retry(RetryPolicy::once()),
    );
    for node in &inventory.nodes {
        let f = node_facts(&node.name)?;
        let mut paths: Vec<String> = f.static_pods.values().map(|p| p.manifest.clone()).collect();
        paths.extend(f.kubeconfigs.keys().cloned());
        paths.extend(f.cert_files.keys().cloned());
        if let Some(k) = &f.kubelet {
            paths.push(k.config.clone());
            if let Some(ca) = &k.client_ca_file {
                paths.push(ca.clone());
            }
        }
        if let Some(cp) = cps.iter().find(|c| c.name == node.name) {
            paths.extend([cp.ca.clone(), cp.ca_key.clone(), cp.fp_ca.clone(), cp.fp_key.clone()]);
            for component in [APISERVER, CONTROLLER_MANAGER] {
                for flag in
                    ["--tls-private-key-file", "--kubelet-client-key", "--proxy-client-key-file"]
                {
                    if let Some(k) = f.flag(component, flag) {
                        paths.push(k.to_owned());
                    }
                }
            }
        }
        paths.sort();
        paths.dedup();
        plan = plan.step(
            step(
                kubeadm::step::backup(Some(&node.name)),
                "preflight",
                "caution",
                "backup",
                Action::Backup { node: node.name.clone(), paths },
            )
            .in_group("backup"),
        );
    }

    // The operator's admin kubeconfig is changed too (steps 7 and 12): back it up.
    plan = plan.step(
        step(
            kubeadm::step::backup(None),
            "preflight",
            "caution",
            "backup",
            Action::Backup {
                node: OPERATOR.into(),
                paths: vec![inventory.cluster.kubeconfig.display().to_string()],
            },
        )
        .in_group("backup"),
    );

    // prepare (1): new CAs, copied beside the old ones on every control-plane node; bundles on
    // every node (workers need the cluster bundle for the kubelet's clientCAFile).

    for ca in [CaKind::Cluster, CaKind::FrontProxy] {
        let old_cert = match ca {
            CaKind::Cluster => first.ca.clone(),
            CaKind::FrontProxy => first.fp_ca.clone(),
        };
        plan = plan.step(step(
            new_ca_step(ca).into(),
            "prepare",
            "1",
            "new-ca",
            Action::NewCa { ca, node: first.name.to_owned(), old_cert },
        ));
    }
    for cp in &cps {
        let files = vec![
            (cp.new_ca(), Content::NewCert(CaKind::Cluster), 0o644),
            (cp.new_ca_key(), Content::NewKey(CaKind::Cluster), 0o600),
            (cp.new_fp(), Content::NewCert(CaKind::FrontProxy), 0o644),
            (cp.new_fp_key(), Content::NewKey(CaKind::FrontProxy), 0o600),
            (cp.bundle(), Content::Bundle(CaKind::Cluster), 0o644),
            (cp.fp_bundle(), Content::Bundle(CaKind::FrontProxy), 0o644),
        ];
        plan = plan.step(
            step(
                format!("prepare/distribute/{}", cp.name),
                "prepare",
                "1",
                "distribute",
                Action::PutFiles { node: cp.name.to_owned(), files, loaded_by: Vec::new() },
            )
            .in_group("distribute"),
        );
    }
    let worker_bundle = |name: &str| -> Result<String, ProcedureError> {
        let f = node_facts(name)?;
        let ca = f.kubelet.as_ref().and_then(|k| k.client_ca_file.clone()).ok_or_else(|| {
            ProcedureError::Missing {
                node: name.to_owned(),
                what: "kubelet has no clientCAFile".into(),
            }
        })?;
        Ok(format!("{}/{}", path::dir_of(&ca), file::CA_BUNDLE))
    };
    for w in &workers {
        plan = plan.step(
            step(
                format!("prepare/distribute/{w}"),
                "prepare",
                "1",
                "distribute",
                Action::PutFiles {
                    node: (*w).to_owned(),
                    files: vec![(worker_bundle(w)?, Content::Bundle(CaKind::Cluster), 0o644)],
                    loaded_by: Vec::new(),
                },
            )
            .in_group("distribute"),
        );
    }

    // trust-control-plane (2-8).
    let phase = "trust-control-plane";
    for cp in &cps {
        // 2: only --root-ca-file takes the bundle; --client-ca-file and
        // --cluster-signing-cert-file must stay single certificates (kubeadm#1350).
        let Some(manifest) = cp.manifest(CONTROLLER_MANAGER) else { continue };
        plan = plan.step(step(
            format!("trust-control-plane/controller-manager-root-ca/{}", cp.name),
            phase,
            "2",
            "static-pod",
            cp.set_flags(CONTROLLER_MANAGER, manifest, flags(&[("--root-ca-file", &cp.bundle())])),
        ));
    }
    plan = plan.step(
        step(
            "trust-control-plane/wait-root-ca".into(),
            phase,
            "3",
            "wait-root-ca",
            Action::WaitRootCa { content: Content::Bundle(CaKind::Cluster) },
        )
        .estimate(Duration::from_secs(120)),
    );
    plan = plan.step(
        step(
            "trust-control-plane/restart-pods".into(),
            phase,
            "4",
            "roll-workloads",
            Action::RollWorkloads { only: Vec::new(), round: format!("{rotation_id}-trust") },
        )
        .estimate(Duration::from_secs(300)),
    );
    for cp in &cps {
        let Some(manifest) = cp.manifest(APISERVER) else { continue };
        // 5: the apiserver trusts both CAs for clients and both front-proxy CAs; it republishes
        // extension-apiserver-authentication with both at start.
        let mut f = flags(&[
            ("--client-ca-file", &cp.bundle()),
            ("--requestheader-client-ca-file", &cp.fp_bundle()),
        ]);
        if cp.facts.flag(APISERVER, "--kubelet-certificate-authority").is_some() {
            f.insert("--kubelet-certificate-authority".into(), cp.bundle());
        }
        plan = plan.step(step(
            format!("trust-control-plane/apiserver-client-ca/{}", cp.name),
            phase,
            "5",
            "apiserver-restart",
            cp.set_flags(APISERVER, manifest, f),
        ));
    }
    for cp in &cps {
        // 6: the scheduler's --client-ca-file, when it has one (kubeadm's reads the client CA
        // from extension-apiserver-authentication instead).
        if cp.facts.flag(SCHEDULER, "--client-ca-file").is_some()
            && let Some(manifest) = cp.manifest(SCHEDULER)
        {
            plan = plan.step(step(
                format!("trust-control-plane/scheduler-client-ca/{}", cp.name),
                phase,
                "6",
                "static-pod",
                cp.set_flags(SCHEDULER, manifest, flags(&[("--client-ca-file", &cp.bundle())])),
            ));
        }
        // 7: kubeconfigs trust both and carry client certificates of the new CA.
        for path in cp.kubeconfigs() {
            let base = path.rsplit('/').next().unwrap_or(&path).to_owned();
            plan = plan.step(step(
                format!("trust-control-plane/kubeconfig-ca/{}/{base}", cp.name),
                phase,
                "7",
                "kubeconfig",
                Action::SetKubeconfigCa {
                    prior: None,
                    node: Some(cp.name.to_owned()),
                    path: path.clone(),
                    content: Content::Bundle(CaKind::Cluster),
                    loaded_by: cp.loader_of(&path),
                },
            ));
            plan = plan.step(step(
                format!("trust-control-plane/kubeconfig-client/{}/{base}", cp.name),
                phase,
                "7",
                "kubeconfig",
                Action::ReissueKubeconfigClient {
                    node: Some(cp.name.to_owned()),
                    loaded_by: cp.loader_of(&path),
                    path,
                },
            ));
        }
        for component in [CONTROLLER_MANAGER, SCHEDULER] {
            if let Some(manifest) = cp.manifest(component) {
                plan = plan.step(step(
                    format!("trust-control-plane/restart/{}/{component}", cp.name),
                    phase,
                    "7",
                    "static-pod",
                    cp.restart(component, manifest),
                ));
            }
        }
        // 8: cloud-controller-manager, when present.
        if let Some(manifest) = cp.manifest(CLOUD_CONTROLLER_MANAGER) {
            plan = plan.step(step(
                format!("trust-control-plane/cloud-controller-manager/{}", cp.name),
                phase,
                "8",
                "static-pod",
                cp.set_flags(
                    CLOUD_CONTROLLER_MANAGER,
                    manifest,
                    flags(&[("--root-ca-file", &cp.bundle())]),
                ),
            ));
        }
    }
    // The operator's admin kubeconfig (outside the cluster) too.
    let operator_conf = inventory.cluster.kubeconfig.display().to_string();
    plan = plan.step(step(
        "trust-control-plane/kubeconfig-ca/operator".into(),
        phase,
        "7",
        "kubeconfig",
        Action::SetKubeconfigCa {
            prior: None,
            node: None,
            loaded_by: None,
            path: operator_conf.clone(),
            content: Content::Bundle(CaKind::Cluster),
        },
    ));
    plan = plan.step(step(
        "trust-control-plane/kubeconfig-client/operator".into(),
        phase,
        "7",
        "kubeconfig",
        Action::ReissueKubeconfigClient {
            node: None,
            path: operator_conf.clone(),
            loaded_by: None,
        },
    ));
    // cluster-info must trust both before any apiserver presents a new-CA certificate, or a
    // node joining in between cannot verify it (found by the trust simulator; upstream 10
    // updates it only afterwards).
    plan = plan.step(step(
        "trust-control-plane/cluster-info".into(),
        phase,
        "10",
        "api",
        Action::SetClusterInfo {
            content: Content::Bundle(CaKind::Cluster),
            prior: Content::OldCert(CaKind::Cluster),
        },
    ));

    // trust-nodes (9.1, 9.2).
    let phase = "trust-nodes";
    plan = plan.step(
        step(
            "trust-nodes/restart-extension-servers".into(),
            phase,
            "9.1",
            "roll-workloads",
            Action::RollWorkloads {
                only: facts.extension_workloads.clone(),
                round: format!("{rotation_id}-extensions"),
            },
        )
        .estimate(Duration::from_secs(120)),
    );
    let kubelet_step = |name: &str,
                        phase: &str,
                        prefix: &str,
                        upstream: &str,
                        target: KubeletTarget,
                        group: &str| {
        let f = node_facts(name)?;
        let k = f.kubelet.as_ref().ok_or_else(|| ProcedureError::Missing {
            node: name.to_owned(),
            what: "no kubelet config".into(),
        })?;
        Ok::<_, ProcedureError>(
            step(
                format!("{prefix}/kubelet/{name}"),
                phase,
                upstream,
                "kubelet",
                Action::RollKubelet {
                    prior: None,
                    node: name.to_owned(),
                    config: k.config.clone(),
                    kubeconfig: k.kubeconfig.clone(),
                    target,
                },
            )
            .estimate(Duration::from_secs(60))
            .in_group(group),
        )
    };
    let verifies_kubelets =
        cps.iter().any(|cp| cp.facts.flag(APISERVER, "--kubelet-certificate-authority").is_some());
    let serving_cert = |name: &str| -> Result<Option<String>, ProcedureError> {
        if !verifies_kubelets {
            return Ok(None);
        }
        Ok(node_facts(name)?.kubelet.as_ref().map(|k| k.serving_cert.clone()))
    };
    for cp in &cps {
        plan = plan.step(kubelet_step(
            cp.name,
            phase,
            "trust-nodes",
            "9.2",
            KubeletTarget {
                client_ca_file: cp.bundle(),
                kubeconfig_ca: Content::Bundle(CaKind::Cluster),
                // Every kubelet client certificate is re-issued by the new CA now, rotating or not:
                // finalize drops the old CA from the apiservers' client CA, and a kubelet renews its
                // own certificate only near expiry.
                reissue_client_cert: true,
                reissue_serving_cert: serving_cert(cp.name)?,
            },
            "kubelets-control-plane",
        )?);
    }
    for w in &workers {
        plan = plan.step(kubelet_step(
            w,
            phase,
            "trust-nodes",
            "9.2",
            KubeletTarget {
                client_ca_file: worker_bundle(w)?,
                kubeconfig_ca: Content::Bundle(CaKind::Cluster),
                reissue_client_cert: true,
                reissue_serving_cert: serving_cert(w)?,
            },
            "kubelets-workers",
        )?);
    }

    // switch (9.3, 9.4, 10): one control-plane node at a time.
    let phase = "switch";
    for cp in &cps {
        let Some(manifest) = cp.manifest(APISERVER) else { continue };
        for (flag, ca) in [
            ("--tls-cert-file", CaKind::Cluster),
            ("--kubelet-client-certificate", CaKind::Cluster),
            ("--proxy-client-cert-file", CaKind::FrontProxy),
        ] {
            let path = cp.facts.flag(APISERVER, flag).ok_or_else(|| ProcedureError::Missing {
                node: cp.name.to_owned(),
                what: format!("kube-apiserver has no {flag}"),
            })?;
            let base = path.rsplit('/').next().unwrap_or(path).to_owned();
            plan = plan.step(step(
                format!("switch/reissue/{}/{base}", cp.name),
                phase,
                "9.3",
                "reissue",
                Action::ReissueCert {
                    node: cp.name.to_owned(),
                    path: path.to_owned(),
                    ca,
                    manifest: manifest.clone(),
                },
            ));
        }
        plan = plan.step(
            step(
                kubeadm::step::switch_apiserver(cp.name),
                phase,
                "9.3",
                "apiserver-restart",
                cp.restart(APISERVER, manifest),
            )
            .estimate(Duration::from_secs(90)),
        );
        if let Some(manifest) = cp.manifest(SCHEDULER) {
            plan = plan.step(step(
                format!("switch/scheduler/{}", cp.name),
                phase,
                "9.3",
                "static-pod",
                cp.restart(SCHEDULER, manifest),
            ));
        }
        // The controller-manager signs new kubelet certificates with the new CA from now on
        // (single-certificate files, kubeadm#1350).
        if let Some(manifest) = cp.manifest(CONTROLLER_MANAGER) {
            plan = plan.step(step(
                format!("switch/controller-manager-signing/{}", cp.name),
                phase,
                "9.3",
                "static-pod",
                cp.set_flags(
                    CONTROLLER_MANAGER,
                    manifest,
                    flags(&[
                        ("--cluster-signing-cert-file", &cp.new_ca()),
                        ("--cluster-signing-key-file", &cp.new_ca_key()),
                    ]),
                ),
            ));
        }
    }
    plan = plan.step(
        step(
            "switch/roll-workloads".into(),
            phase,
            "9.4",
            "roll-workloads",
            Action::RollWorkloads { only: Vec::new(), round: format!("{rotation_id}-switch") },
        )
        .estimate(Duration::from_secs(300)),
    );
    plan = plan.step(step(
        "switch/discovery-hash".into(),
        phase,
        "10",
        "api",
        Action::PrintDiscoveryHash,
    ));

    // verify (11).
    plan = plan
        .step(step("verify/logs".into(), "verify", "11.1", "verify", Action::CheckLogs))
        .step(step("verify/edges".into(), "verify", "11.2", "verify", Action::CheckEdges))
        .step(step("verify/stale-pods".into(), "verify", "11.2", "verify", Action::ListStalePods));

    // finalize (12): only after approval; every identity is already new, so the old CA can be
    // dropped from trust stores.
    plan = plan.gate(
        FINALIZE_GATE,
        "finalize",
        "Clients outside the cluster (CI systems, users' kubeconfigs, monitoring) must trust the \
         new CA before the old one is dropped: `kubeca approve finalize` when they do.",
    );
    let phase = "finalize";
    for cp in &cps {
        let mut files = vec![
            (cp.ca.clone(), Content::NewCert(CaKind::Cluster), 0o644),
            (cp.ca_key.clone(), Content::NewKey(CaKind::Cluster), 0o600),
            (cp.fp_ca.clone(), Content::NewCert(CaKind::FrontProxy), 0o644),
            (cp.fp_key.clone(), Content::NewKey(CaKind::FrontProxy), 0o600),
        ];
        // The flags finalize points back at their original files, and the kubelet's
        // clientCAFile, must find the new CA there too when they do not name ca.crt.
        files.extend(
            cp.other_cluster_ca_files()
                .into_iter()
                .map(|f| (f, Content::NewCert(CaKind::Cluster), 0o644)),
        );
        plan = plan.step(step(
            format!("finalize/canonical-ca/{}", cp.name),
            phase,
            "12",
            "distribute",
            Action::PutFiles {
                node: cp.name.to_owned(),
                files,
                // The controller-manager's --client-ca-file and the kubelet's clientCAFile are
                // among these files: a rollback must make them load the restore.
                loaded_by: vec![CONTROLLER_MANAGER.into(), KUBELET.into()],
            },
        ));
    }
    for w in &workers {
        let ca = node_facts(w)?.kubelet.as_ref().and_then(|k| k.client_ca_file.clone());
        if let Some(ca) = ca {
            plan = plan.step(step(
                format!("finalize/canonical-ca/{w}"),
                phase,
                "12",
                "distribute",
                Action::PutFiles {
                    node: (*w).to_owned(),
                    files: vec![(ca, Content::NewCert(CaKind::Cluster), 0o644)],
                    loaded_by: vec![KUBELET.into()],
                },
            ));
        }
    }
    for cp in &cps {
        if let Some(manifest) = cp.manifest(CONTROLLER_MANAGER) {
            plan = plan.step(step(
                format!("finalize/controller-manager/{}", cp.name),
                phase,
                "12.2",
                "static-pod",
                cp.set_flags(
                    CONTROLLER_MANAGER,
                    manifest,
                    flags(&[
                        ("--root-ca-file", &cp.ca),
                        ("--cluster-signing-cert-file", &cp.layout.controller_manager.signing_cert),
                        ("--cluster-signing-key-file", &cp.ca_key),
                    ]),
                ),
            ));
        }
    }
    plan = plan
        .step(step(
            "finalize/wait-root-ca".into(),
            phase,
            "12.1",
            "wait-root-ca",
            Action::WaitRootCa { content: Content::NewCert(CaKind::Cluster) },
        ))
        .step(
            step(
                "finalize/restart-pods".into(),
                phase,
                "12.1",
                "roll-workloads",
                Action::RollWorkloads {
                    only: Vec::new(),
                    round: format!("{rotation_id}-finalize"),
                },
            )
            .estimate(Duration::from_secs(300)),
        );
    for cp in &cps {
        if let Some(manifest) = cp.manifest(APISERVER) {
            // Back to the files the apiserver loaded before the rotation, which hold the new CA
            // now (canonical-ca above).
            let mut f = flags(&[
                ("--client-ca-file", &cp.layout.apiserver.client_ca),
                ("--requestheader-client-ca-file", &cp.fp_ca),
            ]);
            if let Some(orig) = cp.facts.flag(APISERVER, "--kubelet-certificate-authority") {
                f.insert("--kubelet-certificate-authority".into(), orig.to_owned());
            }
            plan = plan.step(step(
                format!("finalize/apiserver/{}", cp.name),
                phase,
                "12.2",
                "apiserver-restart",
                cp.set_flags(APISERVER, manifest, f),
            ));
        }
        if let Some(orig) = cp.facts.flag(SCHEDULER, "--client-ca-file")
            && let Some(manifest) = cp.manifest(SCHEDULER)
        {
            plan = plan.step(step(
                format!("finalize/scheduler-client-ca/{}", cp.name),
                phase,
                "12.2",
                "static-pod",
                cp.set_flags(SCHEDULER, manifest, flags(&[("--client-ca-file", orig)])),
            ));
        }
        for path in cp.kubeconfigs() {
            let base = path.rsplit('/').next().unwrap_or(&path).to_owned();
            plan = plan.step(step(
                format!("finalize/kubeconfig-ca/{}/{base}", cp.name),
                phase,
                "12.2",
                "kubeconfig",
                Action::SetKubeconfigCa {
                    prior: None,
                    node: Some(cp.name.to_owned()),
                    loaded_by: cp.loader_of(&path),
                    path,
                    content: Content::NewCert(CaKind::Cluster),
                },
            ));
        }
        for component in [CONTROLLER_MANAGER, SCHEDULER] {
            if let Some(manifest) = cp.manifest(component) {
                plan = plan.step(step(
                    format!("finalize/restart/{}/{component}", cp.name),
                    phase,
                    "12.2",
                    "static-pod",
                    cp.restart(component, manifest),
                ));
            }
        }
    }
    plan = plan.step(step(
        "finalize/kubeconfig-ca/operator".into(),
        phase,
        "12.2",
        "kubeconfig",
        Action::SetKubeconfigCa {
            prior: None,
            node: None,
            loaded_by: None,
            path: operator_conf,
            content: Content::NewCert(CaKind::Cluster),
        },
    ));
    for cp in &cps {
        let ca = node_facts(cp.name)?
            .kubelet
            .as_ref()
            .and_then(|k| k.client_ca_file.clone())
            .unwrap_or(cp.ca.clone());
        plan = plan.step(kubelet_step(
            cp.name,
            phase,
            "finalize",
            "12.3",
            KubeletTarget {
                client_ca_file: ca,
                kubeconfig_ca: Content::NewCert(CaKind::Cluster),
                reissue_client_cert: false,
                reissue_serving_cert: None,
            },
            "finalize-kubelets-control-plane",
        )?);
    }
    for w in &workers {
        let ca = node_facts(w)?
            .kubelet
            .as_ref()
            .and_then(|k| k.client_ca_file.clone())
            .unwrap_or_default();
        plan = plan.step(kubelet_step(
            w,
            phase,
            "finalize",
            "12.3",
            KubeletTarget {
                client_ca_file: ca,
                kubeconfig_ca: Content::NewCert(CaKind::Cluster),
                reissue_client_cert: false,
                reissue_serving_cert: None,
            },
            "finalize-kubelets-workers",
        )?);
    }
    plan = plan.step(step(
        "finalize/cluster-info".into(),
        phase,
        "10",
        "api",
        Action::SetClusterInfo {
            content: Content::NewCert(CaKind::Cluster),
            prior: Content::Bundle(CaKind::Cluster),
        },
    ));
    for cp in &cps {
        plan = plan.step(step(
            format!("finalize/cleanup/{}", cp.name),
            phase,
            "12",
            "cleanup",
            Action::RemoveFiles {
                prior: Vec::new(),
                node: cp.name.to_owned(),
                paths: vec![
                    cp.bundle(),
                    cp.fp_bundle(),
                    cp.new_ca(),
                    cp.new_ca_key(),
                    cp.new_fp(),
                    cp.new_fp_key(),
                ],
            },
        ));
    }
    for w in &workers {
        plan = plan.step(step(
            format!("finalize/cleanup/{w}"),
            phase,
            "12",
            "cleanup",
            Action::RemoveFiles {
                node: (*w).to_owned(),
                paths: vec![worker_bundle(w)?],
                prior: Vec::new(),
            },
        ));
    }
    fill_after_undo(&mut plan, facts, rotation_id);
    fill_backups(&mut plan, &topology(inventory, facts));
    fill_priors(&mut plan, facts);
    Ok(plan)
}

/// Every file a compensation of `action` may restore, by node (`OPERATOR` for the operator's).
fn restorable(action: &Action, topology: &Topology) -> Vec<(String, String)> {
    action
        .compensations(0, topology)
        .into_iter()
        .filter_map(|c| match c.action {
            Action::RestoreFiles { node, paths } => {
                let node = node.unwrap_or_else(|| OPERATOR.to_owned());
                Some(paths.into_iter().map(move |p| (node.clone(), p)).collect::<Vec<_>>())
            }
            _ => None,
        })
        .flatten()
        .collect()
}

/// Makes each node's backup step cover every file a rollback may restore there, including
/// the files the rotation creates (backed up as absent, so a rollback removes them).
fn fill_backups(plan: &mut Plan<Action>, topology: &Topology) {
    let mut needed: BTreeMap<String, std::collections::BTreeSet<String>> = BTreeMap::new();
    for step in plan.steps() {
        for (node, path) in restorable(&step.action, topology) {
            needed.entry(node).or_default().insert(path);
        }
    }
    for item in &mut plan.items {
        if let engine::Item::Step(step) = item
            && let Action::Backup { node, paths } = &mut step.action
            && let Some(more) = needed.get(node.as_str())
        {
            for p in more {
                if !paths.contains(p) {
                    paths.push(p.clone());
                }
            }
            paths.sort();
        }
    }
}

/// Records in each action what it changes from, so a rollback can go back step by step: flag
/// values before each `SetFlags`, the CA data before each `SetKubeconfigCa`, what each kubelet
/// loaded before each roll, and the contents of files before they are removed.
fn fill_priors(plan: &mut Plan<Action>, facts: &ClusterFacts) {
    let mut flag_values: BTreeMap<(String, String), BTreeMap<String, String>> = BTreeMap::new();
    let mut kubeconfigs: BTreeMap<(Option<String>, String), Content> = BTreeMap::new();
    let mut kubelets: BTreeMap<String, KubeletTarget> = BTreeMap::new();
    let mut files: BTreeMap<(String, String), (Content, u32)> = BTreeMap::new();
    for item in &mut plan.items {
        let engine::Item::Step(step) = item else { continue };
        match &mut step.action {
            Action::SetFlags { node, manifest, flags, prior, .. } => {
                let current =
                    flag_values.entry((node.clone(), manifest.clone())).or_insert_with(|| {
                        facts
                            .nodes
                            .get(node.as_str())
                            .and_then(|f| f.static_pods.values().find(|p| &p.manifest == manifest))
                            .map(|p| p.flags.clone())
                            .unwrap_or_default()
                    });
                *prior = flags
                    .keys()
                    .filter_map(|k| current.get(k).map(|v| (k.clone(), v.clone())))
                    .collect();
                for (k, v) in flags.iter() {
                    current.insert(k.clone(), v.clone());
                }
            }
            Action::SetKubeconfigCa { node, path, content, prior, .. } => {
                *prior = kubeconfigs.insert((node.clone(), path.clone()), *content);
            }
            Action::RollKubelet { node, target, prior, .. } => {
                *prior = kubelets.insert(node.clone(), target.clone());
            }
            Action::PutFiles { node, files: written, .. } => {
                for (path, content, mode) in written.iter() {
                    files.insert((node.clone(), path.clone()), (*content, *mode));
                }
            }
            Action::RemoveFiles { node, paths, prior } => {
                *prior = paths
                    .iter()
                    .filter_map(|p| {
                        files.get(&(node.clone(), p.clone())).map(|(c, m)| (p.clone(), *c, *m))
                    })
                    .collect();
            }
            _ => {}
        }
    }
}

/// What a rollback must do once the controller-manager's root CA is set back (republish
/// `kube-root-ca.crt`, restart the pods that read it) and once the apiservers' request-header CA
/// is (restart the extension servers that read it): attached to the first such step of each
/// phase, which a rollback undoes last.
fn fill_after_undo(plan: &mut Plan<Action>, facts: &ClusterFacts, rotation_id: &str) {
    let mut seen = std::collections::BTreeSet::new();
    for item in &mut plan.items {
        let engine::Item::Step(step) = item else { continue };
        let phase = step.phase.to_string();
        let Action::SetFlags { component, flags, after_undo, .. } = &mut step.action else {
            continue;
        };
        if component == CONTROLLER_MANAGER && flags.contains_key("--root-ca-file") {
            if !seen.insert((phase.clone(), "root-ca")) {
                continue;
            }
            let before = if phase == "finalize" {
                Content::Bundle(CaKind::Cluster)
            } else {
                Content::OldCert(CaKind::Cluster)
            };
            *after_undo = vec![
                Action::WaitRootCa { content: before },
                Action::RollWorkloads {
                    only: Vec::new(),
                    round: format!("{rotation_id}-undo-{phase}"),
                },
            ];
        } else if component == APISERVER && flags.contains_key("--requestheader-client-ca-file") {
            if !seen.insert((phase.clone(), "requestheader"))
                || facts.extension_workloads.is_empty()
            {
                continue;
            }
            *after_undo = vec![Action::RollWorkloads {
                only: facts.extension_workloads.clone(),
                round: format!("{rotation_id}-undo-{phase}-extensions"),
            }];
        }
    }
}

/// The trust model's view of the cluster.
pub fn topology(inventory: &Inventory, facts: &ClusterFacts) -> Topology {
    let first_node = inventory.nodes.first().map(|n| n.name.clone()).unwrap_or_default();
    Topology {
        control_planes: inventory.control_planes().map(|n| n.name.clone()).collect(),
        workers: inventory.workers().map(|n| n.name.clone()).collect(),
        // Every namespace has a workload that uses in-cluster config, as far as the model knows.
        pods: facts
            .namespaces
            .iter()
            .map(|ns| (ns.clone(), "workloads".into(), first_node.clone()))
            .collect(),
        aggregated: facts
            .extension_workloads
            .iter()
            .filter_map(|w| {
                let mut parts = w.splitn(3, '/');
                let (ns, _kind, name) = (parts.next()?, parts.next()?, parts.next()?);
                Some((ns.to_owned(), name.to_owned(), first_node.clone()))
            })
            .collect(),
        // With --kubelet-certificate-authority the apiservers verify kubelets' serving
        // certificates, which are then signed by the cluster CA.
        kubelet_certificate_authority: inventory.control_planes().find_map(|n| {
            facts
                .nodes
                .get(&n.name)?
                .flag(APISERVER, "--kubelet-certificate-authority")
                .map(str::to_owned)
        }),
        layouts: inventory
            .nodes
            .iter()
            .filter_map(|n| Some((n.name.clone(), facts.nodes.get(&n.name)?.layout())))
            .collect(),
    }
}

/// Simulates a rollback after the first `done` steps of `plan`: the steps, then the
/// compensations in the order the engine runs them. Checks every edge after every step, and
/// that every component ends up having loaded what it loaded before the rotation.
pub fn check_rollback(
    plan: &Plan<Action>,
    topology: &Topology,
    done: usize,
) -> Result<(), Violation> {
    let initial = trust::kubeadm(topology);
    let steps: Vec<&Step<Action>> = plan.steps().take(done).collect();
    let mut sim: Vec<SimStep> = steps
        .iter()
        .map(|s| SimStep { id: s.id.to_string(), effects: s.action.effects(topology) })
        .collect();
    let undos = steps
        .iter()
        .enumerate()
        .rev()
        .map(|(i, s)| engine::Undo {
            step: s.id.clone(),
            retry: s.retry.clone(),
            estimate: s.estimate,
            compensations: s.action.compensations(i as u32 + 1, topology),
        })
        .collect();
    for c in engine::order_compensations(undos) {
        sim.push(SimStep {
            id: c.id.to_string(),
            effects: c.action.rollback_effects(&initial, topology),
        });
    }
    let end = initial.clone().simulate(&sim)?;
    for (id, loaded) in &initial.loaded {
        for (slot, material) in loaded {
            let now = end.loaded(id, slot);
            if now != material {
                return Err(Violation {
                    step: "(end of rollback)".into(),
                    edge: format!("{id} {slot}"),
                    why: trust::Break::UntrustedServer {
                        server_signer: format!("loaded {now}"),
                        client_trusts: format!("before the rotation it loaded {material}"),
                    },
                });
            }
        }
    }
    Ok(())
}

/// Replays `plan` on the trust graph of `topology`, checking every edge after every step.
pub fn check_trust(plan: &Plan<Action>, topology: &Topology) -> Result<(), Violation> {
    let steps: Vec<SimStep> = plan
        .steps()
        .map(|s| SimStep { id: s.id.to_string(), effects: s.action.effects(topology) })
        .collect();
    trust::kubeadm(topology).simulate(&steps).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::discover;
    use crate::kubeadm::slot;
    use crate::node::LocalNode;
    use crate::trust::{ComponentId, Material, Source};

    const APISERVER_YAML: &str = include_str!("../testdata/kubeadm/kube-apiserver.yaml");
    const CM_YAML: &str = include_str!("../testdata/kubeadm/kube-controller-manager.yaml");
    const SCHED_YAML: &str = include_str!("../testdata/kubeadm/kube-scheduler.yaml");
    const KUBELET_CONFIG: &str = include_str!("../testdata/kubeadm/kubelet-config.yaml");
    const ADMIN_CONF: &str = include_str!("../testdata/kubeadm/admin.conf");
    const KUBELET_CONF: &str = include_str!("../testdata/kubeadm/kubelet.conf");

    fn put(root: &std::path::Path, path: &str, text: &str) {
        let p = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// A 3+2 kubeadm cluster as directories, its inventory, and its discovered facts.
    async fn cluster(
        workers: usize,
        max_unavailable: u32,
    ) -> (tempfile::TempDir, Inventory, ClusterFacts) {
        let as_kubeadm = |path: &str, text: &str| (path.to_owned(), text.to_owned());
        cluster_with(workers, max_unavailable, as_kubeadm, &[]).await
    }

    /// As [`cluster`], each node's files laid out by `layout` (from kubeadm's default path and
    /// text of a file to where it is on these nodes and what it says), and `extra` files on each
    /// (laid out the same way).
    async fn cluster_with(
        workers: usize,
        max_unavailable: u32,
        layout: impl Fn(&str, &str) -> (String, String),
        extra: &[(&str, &str)],
    ) -> (tempfile::TempDir, Inventory, ClusterFacts) {
        let put = |root: &std::path::Path, path: &str, text: &str| {
            let (path, text) = layout(path, text);
            put(root, &path, &text);
        };
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for f in ["admin.conf", "id", "known_hosts"] {
            std::fs::write(d.join(f), "x").unwrap();
        }
        let mut toml = String::from(
            "[cluster]\nname = \"t\"\nkubeconfig = \"admin.conf\"\napi_endpoint = \"https://127.0.0.10:6443\"\n\
             [ssh]\nidentity = \"id\"\nknown_hosts = \"known_hosts\"\n",
        );
        let mut names = Vec::new();
        for i in 1..=3 {
            names.push((format!("cp-{i}"), true));
        }
        for i in 1..=workers {
            names.push((format!("w-{i}"), false));
        }
        for (i, (name, cp)) in names.iter().enumerate() {
            let role = if *cp { "control-plane" } else { "worker" };
            toml.push_str(&format!(
                "[[nodes]]\nname = \"{name}\"\naddress = \"127.0.0.{}\"\nroles = [\"{role}\"]\n",
                11 + i
            ));
        }
        toml.push_str(&format!("[rotation]\nmax_unavailable_workers = {max_unavailable}\n"));
        let inventory = Inventory::parse(&toml, std::path::Path::new("t.toml"), d).unwrap();
        let mut nodes = BTreeMap::new();
        for (name, cp) in &names {
            let root = d.join(name);
            put(&root, "/var/lib/kubelet/config.yaml", KUBELET_CONFIG);
            put(&root, "/etc/kubernetes/kubelet.conf", KUBELET_CONF);
            let (manifests, _) = layout("/etc/kubernetes/manifests", "");
            std::fs::create_dir_all(root.join(manifests.trim_start_matches('/'))).unwrap();
            for (path, text) in extra {
                put(&root, path, text);
            }
            if *cp {
                put(&root, "/etc/kubernetes/manifests/kube-apiserver.yaml", APISERVER_YAML);
                put(&root, "/etc/kubernetes/manifests/kube-controller-manager.yaml", CM_YAML);
                put(&root, "/etc/kubernetes/manifests/kube-scheduler.yaml", SCHED_YAML);
                for conf in
                    ["admin.conf", "super-admin.conf", "controller-manager.conf", "scheduler.conf"]
                {
                    put(&root, &format!("/etc/kubernetes/{conf}"), ADMIN_CONF);
                }
            }
            nodes.insert(name.clone(), discover(&LocalNode::new(name, &root)).await.unwrap());
        }
        let facts = ClusterFacts {
            nodes,
            extension_workloads: vec!["kube-system/Deployment/metrics-server".into()],
            namespaces: vec!["kube-system".into(), "default".into()],
        };
        (dir, inventory, facts)
    }

    /// Regression: with the apiservers' client CA in a file of its own, the trust model checked
    /// kubeadm's default `ca.crt` instead, which the plan never touches, and `init` refused the
    /// rotation ("rollback: step undo:... would break admin@cp-1 -> kube-apiserver@cp-3 ... the
    /// server nothing").
    #[tokio::test]
    async fn apiservers_with_their_client_ca_in_another_file_get_a_plan() {
        let client_ca_elsewhere = |path: &str, text: &str| {
            let text = if path.ends_with("/kube-apiserver.yaml") {
                text.replace(
                    "--client-ca-file=/etc/kubernetes/pki/ca.crt",
                    "--client-ca-file=/etc/kubernetes/pki/client-ca.crt",
                )
            } else {
                text.to_owned()
            };
            (path.to_owned(), text)
        };
        let (_d, inv, facts) = cluster_with(2, 1, client_ca_elsewhere, &[]).await;
        let plan = build(&inv, &facts, "r1").unwrap_or_else(|e| panic!("{e}"));
        let topo = topology(&inv, &facts);
        let total = plan.steps().count();
        for done in 0..=total {
            check_rollback(&plan, &topo, done).unwrap_or_else(|v| panic!("after {done}: {v}"));
        }
    }

    /// A cluster laid out otherwise than kubeadm's defaults everywhere discovery looks
    /// ([`crate::fixtures`]): the plan, the trust simulation and the undo all work on the files
    /// where they are, and none names a kubeadm default.
    #[tokio::test]
    async fn a_cluster_laid_out_otherwise_is_planned_simulated_and_undone_where_its_files_are() {
        use crate::fixtures::{self, elsewhere};
        let (_d, inv, facts) = cluster_with(2, 1, elsewhere, &[fixtures::DROPIN]).await;
        let plan = build(&inv, &facts, "r1").unwrap_or_else(|e| panic!("{e}"));
        let topo = topology(&inv, &facts);
        assert_eq!(topo.layout("w-1").kubelet.client_cert, fixtures::KUBELET_CLIENT_CERT);
        assert_eq!(topo.layout("cp-2").apiserver.port, fixtures::APISERVER_PORT);

        // The plan: no kubeadm default path anywhere in it.
        let recorded = serde_json::to_string(&plan).unwrap();
        for default in ["/etc/kubernetes/pki", "/etc/kubernetes/manifests", "/var/lib/kubelet"] {
            assert!(!recorded.contains(default), "the plan names {default}");
        }
        let action = |id: &str| &plan.steps().find(|s| s.id.as_str() == id).unwrap().action;
        let Action::SetFlags { manifest, flags, .. } = action("finalize/apiserver/cp-1") else {
            panic!("finalize/apiserver/cp-1 sets flags")
        };
        assert_eq!(manifest, &format!("{}/kube-apiserver.yaml", fixtures::STATIC_POD_PATH));
        assert_eq!(
            flags["--client-ca-file"],
            fixtures::APISERVER_CLIENT_CA,
            "back to its own file"
        );
        let Action::PutFiles { files, .. } = action("finalize/canonical-ca/cp-1") else {
            panic!("finalize/canonical-ca/cp-1 writes files")
        };
        assert!(
            files.contains(&(
                fixtures::APISERVER_CLIENT_CA.into(),
                Content::NewCert(CaKind::Cluster),
                0o644
            )),
            "the file the apiserver is pointed back at holds the new CA: {files:?}"
        );
        let Action::RollKubelet { config, kubeconfig, target, .. } =
            action("trust-nodes/kubelet/w-1")
        else {
            panic!("trust-nodes/kubelet/w-1 rolls a kubelet")
        };
        assert_eq!(
            (config.as_str(), kubeconfig.as_str()),
            (fixtures::KUBELET_CONFIG, fixtures::KUBELET_KUBECONFIG)
        );
        assert_eq!(target.client_ca_file, format!("{}/ca-bundle.crt", fixtures::PKI));

        // The undo of a kubelet roll restores the client certificate where it is, and the
        // backup holds it.
        let undo = action("trust-nodes/kubelet/w-1").compensations(1, &topo);
        let Action::RestoreFiles { paths, .. } = &undo[0].action else {
            panic!("the undo restores files: {undo:?}")
        };
        assert!(paths.iter().any(|p| p == fixtures::KUBELET_CLIENT_CERT), "{paths:?}");
        let Action::Backup { paths, .. } = action("preflight/backup/w-1") else {
            panic!("a backup")
        };
        assert!(paths.iter().any(|p| p == fixtures::KUBELET_CLIENT_CERT), "{paths:?}");

        // The trust simulation loads from the discovered files and ends on the new CA there.
        let world = trust::kubeadm(&topo);
        let api = ComponentId::on(APISERVER, "cp-1");
        assert_eq!(
            world.components[&api].slots[slot::CLIENT_CA],
            Source::file("cp-1", fixtures::APISERVER_CLIENT_CA)
        );
        let steps: Vec<SimStep> = plan
            .steps()
            .map(|s| SimStep { id: s.id.to_string(), effects: s.action.effects(&topo) })
            .collect();
        let end = world.simulate(&steps).unwrap();
        assert_eq!(end.loaded(&api, slot::CLIENT_CA), &Material::bundle([trust::ca::NEW]));
        assert_eq!(end.loaded(&api, slot::SERVING_CERT), &Material::cert(trust::ca::NEW));
        let kubelet = ComponentId::on(KUBELET, "w-1");
        assert_eq!(end.loaded(&kubelet, slot::CLIENT_CERT), &Material::cert(trust::ca::NEW));
        assert_eq!(end.loaded(&kubelet, slot::CLIENT_CA), &Material::bundle([trust::ca::NEW]));

        // A rollback from any point keeps every edge and ends where the cluster began.
        let total = plan.steps().count();
        for done in 0..=total {
            check_rollback(&plan, &topo, done).unwrap_or_else(|v| panic!("after {done}: {v}"));
        }

        // The same plan checked on kubeadm's default paths (a topology without layouts) is
        // refused: the check depends on the discovered layout.
        let assumed = Topology { layouts: BTreeMap::new(), ..topo };
        assert!(check(&plan, &assumed).is_err());
    }

    #[tokio::test]
    async fn the_full_plan_for_three_plus_two_keeps_every_edge() {
        let (_d, inv, facts) = cluster(2, 1).await;
        let plan = build(&inv, &facts, "r1").unwrap();
        let labels: std::collections::BTreeSet<&str> =
            plan.steps().filter_map(|s| s.upstream.as_deref()).collect();
        for label in [
            "caution", "1", "2", "3", "4", "5", "7", "9.1", "9.2", "9.3", "9.4", "10", "11.1",
            "11.2", "12", "12.1", "12.2", "12.3",
        ] {
            assert!(labels.contains(label), "no step implements upstream {label}");
        }
        let gate_at = plan.items.iter().position(|i| matches!(i, engine::Item::Gate(_))).unwrap();
        assert!(
            plan.items[gate_at + 1..]
                .iter()
                .all(|i| matches!(i, engine::Item::Step(s) if s.phase.as_str() == "finalize"))
        );
        // kubeadm#1350: the controller-manager's --client-ca-file is never pointed at a bundle.
        for s in plan.steps() {
            if let Action::SetFlags { component, flags, .. } = &s.action
                && component == CONTROLLER_MANAGER
            {
                assert!(!flags.contains_key("--client-ca-file"), "{}", s.id);
                if let Some(v) = flags.get("--cluster-signing-cert-file") {
                    assert!(!v.contains("bundle"), "{}: {v}", s.id);
                }
            }
        }
    }

    #[tokio::test]
    async fn worker_kubelets_roll_in_groups_of_max_unavailable_and_control_planes_one_by_one() {
        let (_d, inv, facts) = cluster(4, 2).await;
        let plan = build(&inv, &facts, "r1").unwrap();
        let workers = plan.find_group(&"kubelets-workers".into()).unwrap();
        assert_eq!(workers.limit, 2);
        assert_eq!(plan.find_group(&"kubelets-control-plane".into()).unwrap().limit, 1);
        let in_group: Vec<&str> = plan
            .steps()
            .filter(|s| s.group.as_ref().is_some_and(|g| g.as_str() == "kubelets-workers"))
            .map(|s| s.id.as_str())
            .collect();
        assert_eq!(in_group.len(), 4);
        // The apiserver switches are serial steps (no group), in node order.
        let switches: Vec<&str> = plan
            .steps()
            .filter(|s| s.id.as_str().starts_with("switch/apiserver/"))
            .map(|s| {
                assert!(s.group.is_none());
                s.id.as_str()
            })
            .collect();
        assert_eq!(
            switches,
            ["switch/apiserver/cp-1", "switch/apiserver/cp-2", "switch/apiserver/cp-3"]
        );
    }

    fn reorder(plan: &mut Plan<Action>, moved: impl Fn(&Step<Action>) -> bool, before: &str) {
        let items: Vec<engine::Item<Action>> = std::mem::take(&mut plan.items);
        let (taken, mut rest): (Vec<_>, Vec<_>) =
            items.into_iter().partition(|i| matches!(i, engine::Item::Step(s) if moved(s)));
        let at = rest
            .iter()
            .position(|i| matches!(i, engine::Item::Step(s) if s.id.as_str().starts_with(before)))
            .unwrap();
        for (k, item) in taken.into_iter().enumerate() {
            rest.insert(at + k, item);
        }
        plan.items = rest;
    }

    #[tokio::test]
    async fn switching_the_apiserver_before_the_kubelets_trust_the_new_ca_is_refused() {
        let (_d, inv, facts) = cluster(2, 1).await;
        let mut plan = assemble(&inv, &facts, "r1").unwrap();
        reorder(
            &mut plan,
            |s| s.id.as_str().starts_with("switch/") && s.id.as_str().contains("cp-1"),
            "trust-nodes/kubelet/",
        );
        let v = check_trust(&plan, &topology(&inv, &facts)).unwrap_err();
        assert_eq!(v.step, "switch/apiserver/cp-1");
        assert!(v.edge.starts_with("kubelet@") && v.edge.ends_with("(kubelet->apiserver)"), "{v}");
    }

    #[tokio::test]
    async fn a_kubelet_dropping_old_ca_before_apiserver_kubelet_client_is_reissued_is_refused() {
        let (_d, inv, facts) = cluster(2, 1).await;
        let mut plan = assemble(&inv, &facts, "r1").unwrap();
        // w-1's kubelet is made to trust only the new CA for clients (its kubeconfig still trusts
        // both), before the switch re-issues apiserver-kubelet-client.
        let only_new = "/etc/kubernetes/pki/ca-only-new.crt";
        let early = vec![
            step(
                "bad/only-new-file".into(),
                "trust-nodes",
                "12.3",
                "distribute",
                Action::PutFiles {
                    node: "w-1".into(),
                    files: vec![(only_new.into(), Content::NewCert(CaKind::Cluster), 0o644)],
                    loaded_by: Vec::new(),
                },
            ),
            step(
                "bad/kubelet/w-1".into(),
                "trust-nodes",
                "12.3",
                "kubelet",
                Action::RollKubelet {
                    prior: None,
                    node: "w-1".into(),
                    config: "/var/lib/kubelet/config.yaml".into(),
                    kubeconfig: "/etc/kubernetes/kubelet.conf".into(),
                    target: KubeletTarget {
                        client_ca_file: only_new.into(),
                        kubeconfig_ca: Content::Bundle(CaKind::Cluster),
                        reissue_client_cert: true,
                        reissue_serving_cert: None,
                    },
                },
            ),
        ];
        let at = plan
            .items
            .iter()
            .position(|i| matches!(i, engine::Item::Step(s) if s.id.as_str() == "switch/reissue/cp-1/apiserver.crt"))
            .unwrap();
        for (k, s) in early.into_iter().enumerate() {
            plan.items.insert(at + k, engine::Item::Step(s));
        }
        let v = check_trust(&plan, &topology(&inv, &facts)).unwrap_err();
        assert_eq!(v.step, "bad/kubelet/w-1");
        assert_eq!(v.edge, "kube-apiserver@cp-1 -> kubelet@w-1 (apiserver->kubelet)");
        assert!(matches!(v.why, trust::Break::BadClientCert { .. }), "{v}");
    }

    #[tokio::test]
    async fn rollback_from_every_phase_boundary_keeps_every_edge_and_ends_on_the_old_configuration()
    {
        let (_d, inv, facts) = cluster(2, 1).await;
        let plan = build(&inv, &facts, "r1").unwrap();
        let topo = topology(&inv, &facts);
        let mut failures = Vec::new();
        let steps: Vec<&Step<Action>> = plan.steps().collect();
        for phase in PHASES {
            let done = steps.iter().rposition(|s| s.phase.as_str() == phase).map_or(0, |i| i + 1);
            if let Err(v) = check_rollback(&plan, &topo, done) {
                failures.push(format!("after {phase} ({done} steps): {v}"));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }

    #[tokio::test]
    async fn rollback_after_any_number_of_steps_keeps_every_edge() {
        let (_d, inv, facts) = cluster(2, 1).await;
        let plan = build(&inv, &facts, "r1").unwrap();
        let topo = topology(&inv, &facts);
        let total = plan.steps().count();
        let failures: Vec<String> = (0..=total)
            .filter_map(|done| {
                check_rollback(&plan, &topo, done).err().map(|v| format!("after {done}: {v}"))
            })
            .collect();
        assert!(
            failures.is_empty(),
            "{} of {} rollback points break:\n{}",
            failures.len(),
            total + 1,
            failures.join("\n")
        );
    }

    #[tokio::test]
    async fn with_kubelet_certificate_authority_kubelet_serving_certs_move_to_the_new_ca() {
        let (_d, inv, mut facts) = cluster(2, 1).await;
        for f in facts.nodes.values_mut() {
            if let Some(p) = f.static_pods.get_mut(APISERVER) {
                p.flags.insert(
                    "--kubelet-certificate-authority".into(),
                    "/etc/kubernetes/pki/ca.crt".into(),
                );
            }
        }
        let plan = build(&inv, &facts, "r1").unwrap();
        let topo = topology(&inv, &facts);
        assert!(topo.kubelet_certificate_authority.is_some());
        let total = plan.steps().count();
        for done in 0..=total {
            check_rollback(&plan, &topo, done).unwrap_or_else(|v| panic!("after {done}: {v}"));
        }
    }

    #[tokio::test]
    async fn every_file_a_rollback_may_restore_is_backed_up_first() {
        let (_d, inv, facts) = cluster(2, 1).await;
        let plan = build(&inv, &facts, "r1").unwrap();
        let topo = topology(&inv, &facts);
        let mut backed: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for s in plan.steps() {
            if let Action::Backup { node, paths } = &s.action {
                backed.insert(node.clone(), paths.clone());
            }
        }
        for s in plan.steps() {
            for (node, path) in restorable(&s.action, &topo) {
                assert!(
                    backed.get(&node).is_some_and(|p| p.contains(&path)),
                    "{}: {node}:{path} is restored by a rollback but not backed up",
                    s.id
                );
            }
        }
        assert!(backed["w-1"].contains(&"/etc/kubernetes/pki/ca-bundle.crt".to_owned()));
    }

    #[tokio::test]
    async fn a_plan_missing_the_pod_restart_is_refused_at_the_first_switch() {
        let (_d, inv, facts) = cluster(2, 1).await;
        let mut plan = assemble(&inv, &facts, "r1").unwrap();
        plan.items.retain(|i| !matches!(i, engine::Item::Step(s) if s.id.as_str() == "trust-control-plane/restart-pods"));
        let v = check_trust(&plan, &topology(&inv, &facts)).unwrap_err();
        assert_eq!(v.step, "switch/apiserver/cp-1");
        assert!(v.edge.starts_with("pod/"), "{v}");
    }
}
