//! Phase `finalize` (upstream 12), only after the operator approves the gate: every identity is
//! already of the new CA, so the old CA is dropped from every trust store. The new CA goes into
//! kubeadm's canonical files (and every other file a flag named for the cluster CA before the
//! rotation), every flag is pointed back at the file it named then ([`super::flags`]), the
//! kubelets are rolled again, and kubeca's own files are removed.

use std::time::Duration;

use super::ProcedureError;
use super::builder::{Builder, Group, Phase, Steps, Upstream};
use super::cluster::{Cluster, ControlPlane, base};
use super::flags;
use super::trust_nodes::roll_kubelet;
use crate::action::{Action, CaKind, Content, Kind, KubeletTarget};
use crate::kubeadm::component::{
    APISERVER, CLOUD_CONTROLLER_MANAGER, CONTROLLER_MANAGER, KUBELET, SCHEDULER,
};

/// What the approver must have checked, shown while the run waits at the gate.
const GATE_NOTE: &str = "Clients outside the cluster (CI systems, users' kubeconfigs, monitoring) \
                         must trust the new CA before the old one is dropped: `kubeca approve \
                         finalize` when they do.";

pub(super) fn steps(plan: &mut Builder, c: &Cluster) -> Result<(), ProcedureError> {
    plan.finalize_gate(GATE_NOTE);
    let mut p = plan.phase(Phase::Finalize);
    // The gate refuses while a client certificate of the old CA is in use or was issued since
    // the rotation began: days may pass between verify and the approval, and kubelets renew
    // on their own.
    p.step("finalize/client-certs", Upstream::Step12, Kind::Verify, Action::CheckClientCerts);
    canonical_ca(&mut p, c)?;
    // The controller-manager first: kube-root-ca.crt holds only the new CA before the pods
    // restart (12.1).
    for cp in &c.control_planes {
        flags::back(&mut p, cp, CONTROLLER_MANAGER);
    }
    let wait = Action::WaitRootCa { content: Content::NewCert(CaKind::Cluster) };
    p.step("finalize/wait-root-ca", Upstream::Step12_1, Kind::WaitRootCa, wait);
    let roll =
        Action::RollWorkloads { only: Vec::new(), round: format!("{}-finalize", c.rotation_id) };
    p.step("finalize/restart-pods", Upstream::Step12_1, Kind::RollWorkloads, roll)
        .estimate(Duration::from_secs(300));
    for cp in &c.control_planes {
        control_plane(&mut p, cp);
    }
    // Every apiserver loads new-only files now: extension-apiserver-authentication, where they
    // merged both CAs, is replaced with the new ones, or the aggregated servers and the
    // scheduler would trust the old CAs until they expire.
    let auth = Action::SetAuthenticationCas {
        client_ca: Content::NewCert(CaKind::Cluster),
        requestheader_ca: Content::NewCert(CaKind::FrontProxy),
        prior: (Content::Bundle(CaKind::Cluster), Content::Bundle(CaKind::FrontProxy)),
    };
    p.step("finalize/authentication-cas", Upstream::Step12_2, Kind::Api, auth);
    let ca = Action::SetKubeconfigCa {
        prior: None,
        node: None,
        loaded_by: None,
        path: c.operator_kubeconfig.clone(),
        content: Content::NewCert(CaKind::Cluster),
    };
    p.step("finalize/kubeconfig-ca/operator", Upstream::Step12_2, Kind::Kubeconfig, ca);
    kubelets(&mut p, c)?;
    let info = Action::SetClusterInfo {
        content: Content::NewCert(CaKind::Cluster),
        prior: Content::Bundle(CaKind::Cluster),
    };
    p.step("finalize/cluster-info", Upstream::Step10, Kind::Api, info);
    cleanup(&mut p, c)
}

/// 12: the new CA in kubeadm's canonical files on every node, and in every other file a flag
/// named for the cluster CA before the rotation.
fn canonical_ca(p: &mut Steps, c: &Cluster) -> Result<(), ProcedureError> {
    for cp in &c.control_planes {
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
        let put = Action::PutFiles {
            node: cp.name.to_owned(),
            files,
            // The controller-manager's --client-ca-file and the kubelet's clientCAFile are
            // among these files: a rollback must make them load the restore.
            loaded_by: vec![CONTROLLER_MANAGER.into(), KUBELET.into()],
        };
        let id = format!("finalize/canonical-ca/{}", cp.name);
        p.step(id, Upstream::Step12, Kind::Distribute, put);
    }
    for w in &c.workers {
        if let Some(ca) = c.kubelet_client_ca(w)? {
            let put = Action::PutFiles {
                node: (*w).to_owned(),
                files: vec![(ca, Content::NewCert(CaKind::Cluster), 0o644)],
                loaded_by: vec![KUBELET.into()],
            };
            p.step(format!("finalize/canonical-ca/{w}"), Upstream::Step12, Kind::Distribute, put);
        }
    }
    Ok(())
}

/// 12.2 on one control-plane node: the apiserver's, scheduler's and cloud-controller-manager's flags back at the files they
/// loaded before the rotation (which hold the new CA now), the kubeconfigs trusting only the
/// new CA, the controller-manager and scheduler restarted to load them.
fn control_plane(p: &mut Steps, cp: &ControlPlane) {
    flags::back(p, cp, APISERVER);
    flags::back(p, cp, SCHEDULER);
    flags::back(p, cp, CLOUD_CONTROLLER_MANAGER);
    for path in cp.kubeconfigs() {
        let id = format!("finalize/kubeconfig-ca/{}/{}", cp.name, base(&path));
        let ca = Action::SetKubeconfigCa {
            prior: None,
            node: Some(cp.name.to_owned()),
            loaded_by: cp.loader_of(&path),
            path,
            content: Content::NewCert(CaKind::Cluster),
        };
        p.step(id, Upstream::Step12_2, Kind::Kubeconfig, ca);
    }
    for component in [CONTROLLER_MANAGER, SCHEDULER] {
        if let Some(manifest) = cp.manifest(component) {
            let id = format!("finalize/restart/{}/{component}", cp.name);
            p.step(id, Upstream::Step12_2, Kind::StaticPod, cp.restart(component, manifest));
        }
    }
}

/// 12.3: every kubelet rolled again, trusting only the new CA (its certificates are already
/// the new CA's).
fn kubelets(p: &mut Steps, c: &Cluster) -> Result<(), ProcedureError> {
    let only_new = |client_ca_file: String| KubeletTarget {
        client_ca_file,
        kubeconfig_ca: Content::NewCert(CaKind::Cluster),
        reissue_client_cert: false,
        reissue_serving_cert: None,
    };
    for cp in &c.control_planes {
        let target = only_new(c.kubelet_client_ca(cp.name)?.unwrap_or(cp.ca.clone()));
        let group = Group::FinalizeKubeletsControlPlane;
        roll_kubelet(p, c, cp.name, Upstream::Step12_3, target, group)?;
    }
    for w in &c.workers {
        let target = only_new(c.kubelet_client_ca(w)?.unwrap_or_default());
        roll_kubelet(p, c, w, Upstream::Step12_3, target, Group::FinalizeKubeletsWorkers)?;
    }
    Ok(())
}

/// 12: kubeca's own files (bundles, the new CAs' copies) removed.
fn cleanup(p: &mut Steps, c: &Cluster) -> Result<(), ProcedureError> {
    for cp in &c.control_planes {
        let remove = Action::RemoveFiles {
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
        };
        p.step(format!("finalize/cleanup/{}", cp.name), Upstream::Step12, Kind::Cleanup, remove);
    }
    for w in &c.workers {
        let remove = Action::RemoveFiles {
            node: (*w).to_owned(),
            paths: vec![c.worker_bundle(w)?],
            prior: Vec::new(),
        };
        p.step(format!("finalize/cleanup/{w}"), Upstream::Step12, Kind::Cleanup, remove);
    }
    Ok(())
}
