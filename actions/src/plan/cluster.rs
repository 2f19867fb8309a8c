//! The cluster as the plan sees it: the inventory's nodes with what discovery found on them,
//! each control-plane node with its layout and the files kubeca adds beside its CAs.

use std::collections::BTreeMap;

use super::{ClusterFacts, ProcedureError};
use crate::action::Action;
use crate::discovery::{KubeletFacts, NodeFacts};
use crate::inventory::Inventory;
use crate::kubeadm::component::{
    APISERVER, CLOUD_CONTROLLER_MANAGER, CONTROLLER_MANAGER, SCHEDULER,
};
use crate::kubeadm::{file, path};
use crate::trust::NodeLayout;

/// What every phase builds from.
pub(crate) struct Cluster<'a> {
    /// The operator's inventory.
    pub inventory: &'a Inventory,
    /// What discovery found.
    pub facts: &'a ClusterFacts,
    /// Names this rotation's workload restarts.
    pub rotation_id: &'a str,
    /// The control-plane nodes, in inventory order (at least one).
    pub control_planes: Vec<ControlPlane<'a>>,
    /// The worker nodes' names, in inventory order.
    pub workers: Vec<&'a str>,
    /// The operator's admin kubeconfig, outside the cluster (steps 7 and 12.2 change it too).
    pub operator_kubeconfig: String,
}

impl<'a> Cluster<'a> {
    /// Refuses a cluster without a control plane, or one whose control-plane nodes lack what
    /// the procedure needs.
    pub(crate) fn new(
        inventory: &'a Inventory,
        facts: &'a ClusterFacts,
        rotation_id: &'a str,
    ) -> Result<Cluster<'a>, ProcedureError> {
        let mut control_planes = Vec::new();
        for n in inventory.control_planes() {
            control_planes.push(ControlPlane::new(&n.name, node_facts(facts, &n.name)?)?);
        }
        let cluster = Cluster {
            inventory,
            facts,
            rotation_id,
            control_planes,
            workers: inventory.workers().map(|n| n.name.as_str()).collect(),
            operator_kubeconfig: inventory.cluster.kubeconfig.display().to_string(),
        };
        cluster.first()?;
        Ok(cluster)
    }

    /// The first control-plane node: the old CAs are read there.
    pub(crate) fn first(&self) -> Result<&ControlPlane<'a>, ProcedureError> {
        self.control_planes.first().ok_or_else(|| ProcedureError::Missing {
            node: "(inventory)".into(),
            what: "no control-plane node".into(),
        })
    }

    /// What discovery found on `name`.
    pub(crate) fn node_facts(&self, name: &str) -> Result<&'a NodeFacts, ProcedureError> {
        node_facts(self.facts, name)
    }

    /// The kubelet discovery found on `name`.
    pub(crate) fn kubelet(&self, name: &str) -> Result<&'a KubeletFacts, ProcedureError> {
        self.node_facts(name)?.kubelet.as_ref().ok_or_else(|| ProcedureError::Missing {
            node: name.to_owned(),
            what: "no kubelet config".into(),
        })
    }

    /// The old+new cluster CA bundle on worker `name`, beside its kubelet's `clientCAFile`
    /// (workers have no pki directory of their own).
    pub(crate) fn worker_bundle(&self, name: &str) -> Result<String, ProcedureError> {
        let f = self.node_facts(name)?;
        let ca = f.kubelet.as_ref().and_then(|k| k.client_ca_file.clone()).ok_or_else(|| {
            ProcedureError::Missing {
                node: name.to_owned(),
                what: "kubelet has no clientCAFile".into(),
            }
        })?;
        Ok(format!("{}/{}", path::dir_of(&ca), file::CA_BUNDLE))
    }

    /// The kubelet's `clientCAFile` on `name`, as discovered.
    pub(crate) fn kubelet_client_ca(&self, name: &str) -> Result<Option<String>, ProcedureError> {
        Ok(self.node_facts(name)?.kubelet.as_ref().and_then(|k| k.client_ca_file.clone()))
    }

    /// The kubelet serving certificate of `name` to re-issue by the new CA: when the
    /// apiservers verify kubelets (`--kubelet-certificate-authority`), since finalize leaves
    /// them trusting only the new CA; and when the kubelet got it from the CSR API
    /// (`serverTLSBootstrap`), signed by the cluster CA: whoever verifies kubelets with the
    /// cluster CA (metrics-server with the in-cluster `ca.crt`) trusts only the new one after
    /// finalize, and the kubelet's certificate manager renews only near the end of its
    /// lifetime, whatever its issuer. The key is kept.
    pub(crate) fn kubelet_serving_cert(
        &self,
        name: &str,
    ) -> Result<Option<String>, ProcedureError> {
        let verifies_kubelets = self
            .control_planes
            .iter()
            .any(|cp| cp.facts.flag(APISERVER, "--kubelet-certificate-authority").is_some());
        let kubelet = self.node_facts(name)?.kubelet.as_ref();
        Ok(kubelet
            .filter(|k| verifies_kubelets || k.serving_bootstrap)
            .map(|k| k.serving_cert.clone()))
    }
}

fn node_facts<'a>(facts: &'a ClusterFacts, name: &str) -> Result<&'a NodeFacts, ProcedureError> {
    facts.nodes.get(name).ok_or_else(|| ProcedureError::Missing {
        node: name.to_owned(),
        what: "no discovery facts".into(),
    })
}

/// A control-plane node: its facts and the layout discovery found on it.
pub(crate) struct ControlPlane<'a> {
    /// Its inventory name.
    pub name: &'a str,
    /// What discovery found there.
    pub facts: &'a NodeFacts,
    /// Where its components load their inputs from.
    pub layout: NodeLayout,
    /// The cluster CA certificate.
    pub ca: String,
    /// The cluster CA key.
    pub ca_key: String,
    /// The front-proxy CA certificate.
    pub fp_ca: String,
    /// The front-proxy CA key.
    pub fp_key: String,
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

    /// The manifest of `component`'s static pod, when the node runs it.
    pub(crate) fn manifest(&self, component: &str) -> Option<String> {
        self.facts.static_pods.get(component).map(|p| p.manifest.clone())
    }

    fn in_pki(&self, name: &str) -> String {
        format!("{}/{name}", self.pki)
    }
    /// Old and new cluster CA.
    pub(crate) fn bundle(&self) -> String {
        self.in_pki(file::CA_BUNDLE)
    }
    /// Old and new front-proxy CA.
    pub(crate) fn fp_bundle(&self) -> String {
        self.in_pki(file::FRONT_PROXY_CA_BUNDLE)
    }
    /// The new cluster CA.
    pub(crate) fn new_ca(&self) -> String {
        self.in_pki(file::NEW_CA_CERT)
    }
    /// The new cluster CA's key.
    pub(crate) fn new_ca_key(&self) -> String {
        self.in_pki(file::NEW_CA_KEY)
    }
    /// The new front-proxy CA.
    pub(crate) fn new_fp(&self) -> String {
        self.in_pki(file::NEW_FRONT_PROXY_CA_CERT)
    }
    /// The new front-proxy CA's key.
    pub(crate) fn new_fp_key(&self) -> String {
        self.in_pki(file::NEW_FRONT_PROXY_CA_KEY)
    }

    /// Every file other than `ca.crt` that a component here loads the cluster CA from once
    /// finalize is done: the apiserver's and scheduler's client CA files and the apiserver's
    /// kubelet CA (finalize points the flags back at them), the controller-manager's client CA
    /// and signing certificate, the kubelet's `clientCAFile`. Each must hold the new CA then, as
    /// `ca.crt` does; on kubeadm's layout they are all `ca.crt`, and this is empty.
    pub(crate) fn other_cluster_ca_files(&self) -> Vec<String> {
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
        for (component, flag) in
            [(SCHEDULER, "--client-ca-file"), (CLOUD_CONTROLLER_MANAGER, "--root-ca-file")]
        {
            if let Some(f) = self.facts.flag(component, flag)
                && f != self.ca
            {
                out.push(f.to_owned());
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// The static pod whose `--kubeconfig` is `path`, as (component, manifest).
    pub(crate) fn loader_of(&self, path: &str) -> Option<(String, String)> {
        self.facts.static_pods.iter().find_map(|(component, pod)| {
            crate::discovery::KUBECONFIG_FLAGS
                .iter()
                .any(|f| pod.flags.get(*f).map(String::as_str) == Some(path))
                .then(|| (component.clone(), pod.manifest.clone()))
        })
    }

    /// Set `flags` of `component`'s static pod (priors are filled in once the plan is whole).
    pub(crate) fn set_flags(
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
    pub(crate) fn restart(&self, component: &str, manifest: String) -> Action {
        Action::RestartStaticPod {
            node: self.name.to_owned(),
            component: component.into(),
            manifest,
        }
    }

    /// The kubeconfigs kubeadm keeps on a control-plane node, as discovered.
    pub(crate) fn kubeconfigs(&self) -> Vec<String> {
        self.facts
            .kubeconfigs
            .values()
            .filter(|k| k.client_embedded && k.ca_embedded)
            .map(|k| k.path.clone())
            .collect()
    }
}

/// The last part of a path, which names a step.
pub(crate) fn base(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}
