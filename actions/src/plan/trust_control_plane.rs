//! Phase `trust-control-plane` (upstream 2 to 8): every control-plane component trusts the old
//! and the new CA, the pods that use in-cluster config have been given both, every kubeconfig
//! trusts both and carries a client certificate of the new CA.

use std::time::Duration;

use super::builder::{Builder, Phase, Steps, Upstream};
use super::cluster::{Cluster, ControlPlane, base};
use super::flags;
use crate::action::{Action, CaKind, Content, Kind};
use crate::kubeadm::component::{CONTROLLER_MANAGER, SCHEDULER};

pub(super) fn steps(plan: &mut Builder, c: &Cluster) {
    let mut p = plan.phase(Phase::TrustControlPlane);
    for cp in &c.control_planes {
        flags::forward(&mut p, cp, Upstream::Step2);
    }
    let wait = Action::WaitRootCa { content: Content::Bundle(CaKind::Cluster) };
    p.step("trust-control-plane/wait-root-ca", Upstream::Step3, Kind::WaitRootCa, wait)
        .estimate(Duration::from_secs(120));
    let roll =
        Action::RollWorkloads { only: Vec::new(), round: format!("{}-trust", c.rotation_id) };
    p.step("trust-control-plane/restart-pods", Upstream::Step4, Kind::RollWorkloads, roll)
        .estimate(Duration::from_secs(300));
    // The apiservers merge their CAs into extension-apiserver-authentication and never remove
    // one: published now with both, so that a rollback, which undoes this step after every
    // apiserver is back on its old files, leaves only the old CAs there.
    let auth = Action::SetAuthenticationCas {
        client_ca: Content::Bundle(CaKind::Cluster),
        requestheader_ca: Content::Bundle(CaKind::FrontProxy),
        prior: (Content::OldCert(CaKind::Cluster), Content::OldCert(CaKind::FrontProxy)),
    };
    p.step("trust-control-plane/authentication-cas", Upstream::Step5, Kind::Api, auth);
    for cp in &c.control_planes {
        flags::forward(&mut p, cp, Upstream::Step5);
    }
    for cp in &c.control_planes {
        flags::forward(&mut p, cp, Upstream::Step6);
        kubeconfigs(&mut p, cp);
        // The controller-manager and scheduler load their rewritten kubeconfigs.
        for component in [CONTROLLER_MANAGER, SCHEDULER] {
            if let Some(manifest) = cp.manifest(component) {
                let id = format!("trust-control-plane/restart/{}/{component}", cp.name);
                p.step(id, Upstream::Step7, Kind::StaticPod, cp.restart(component, manifest));
            }
        }
        flags::forward(&mut p, cp, Upstream::Step8);
    }
    // The operator's admin kubeconfig (outside the cluster) too.
    let ca = Action::SetKubeconfigCa {
        prior: None,
        node: None,
        loaded_by: None,
        path: c.operator_kubeconfig.clone(),
        content: Content::Bundle(CaKind::Cluster),
    };
    p.step("trust-control-plane/kubeconfig-ca/operator", Upstream::Step7, Kind::Kubeconfig, ca);
    let client = Action::ReissueKubeconfigClient {
        node: None,
        path: c.operator_kubeconfig.clone(),
        loaded_by: None,
    };
    let id = "trust-control-plane/kubeconfig-client/operator";
    p.step(id, Upstream::Step7, Kind::Kubeconfig, client);
    // cluster-info must trust both before any apiserver presents a new-CA certificate, or a
    // node joining in between cannot verify it (found by the trust simulator; upstream 10
    // updates it only afterwards).
    let info = Action::SetClusterInfo {
        content: Content::Bundle(CaKind::Cluster),
        prior: Content::OldCert(CaKind::Cluster),
    };
    p.step("trust-control-plane/cluster-info", Upstream::Step10, Kind::Api, info);
}

/// 7: the kubeconfigs on `cp` trust both CAs and carry client certificates of the new CA.
fn kubeconfigs(p: &mut Steps, cp: &ControlPlane) {
    for path in cp.kubeconfigs() {
        let name = base(&path);
        let ca = Action::SetKubeconfigCa {
            prior: None,
            node: Some(cp.name.to_owned()),
            path: path.clone(),
            content: Content::Bundle(CaKind::Cluster),
            loaded_by: cp.loader_of(&path),
        };
        let id = format!("trust-control-plane/kubeconfig-ca/{}/{name}", cp.name);
        p.step(id, Upstream::Step7, Kind::Kubeconfig, ca);
        let id = format!("trust-control-plane/kubeconfig-client/{}/{name}", cp.name);
        let client = Action::ReissueKubeconfigClient {
            node: Some(cp.name.to_owned()),
            loaded_by: cp.loader_of(&path),
            path,
        };
        p.step(id, Upstream::Step7, Kind::Kubeconfig, client);
    }
}
