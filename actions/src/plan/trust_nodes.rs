//! Phase `trust-nodes` (upstream 9.1, 9.2): the extension servers restarted, then every
//! kubelet rolled to trust both CAs, with its client certificate (and, where the apiservers
//! verify kubelets, its serving certificate) re-issued by the new CA: control planes one at a
//! time, workers `max_unavailable_workers` at a time.

use std::time::Duration;

use super::ProcedureError;
use super::builder::{Builder, Group, Phase, Steps, Upstream};
use super::cluster::Cluster;
use crate::action::{Action, CaKind, Content, Kind, KubeletTarget};

pub(super) fn steps(plan: &mut Builder, c: &Cluster) -> Result<(), ProcedureError> {
    let mut p = plan.phase(Phase::TrustNodes);
    let extensions = Action::RollWorkloads {
        only: c.facts.extension_workloads.clone(),
        round: format!("{}-extensions", c.rotation_id),
    };
    let id = "trust-nodes/restart-extension-servers";
    p.step(id, Upstream::Step9_1, Kind::RollWorkloads, extensions)
        .estimate(Duration::from_secs(120));
    for cp in &c.control_planes {
        let target = KubeletTarget {
            client_ca_file: cp.bundle(),
            kubeconfig_ca: Content::Bundle(CaKind::Cluster),
            // Every kubelet client certificate is re-issued by the new CA now, rotating or not:
            // finalize drops the old CA from the apiservers' client CA, and a kubelet renews its
            // own certificate only near expiry.
            reissue_client_cert: true,
            reissue_serving_cert: c.kubelet_serving_cert(cp.name)?,
        };
        roll_kubelet(&mut p, c, cp.name, Upstream::Step9_2, target, Group::KubeletsControlPlane)?;
    }
    for w in &c.workers {
        let target = KubeletTarget {
            client_ca_file: c.worker_bundle(w)?,
            kubeconfig_ca: Content::Bundle(CaKind::Cluster),
            reissue_client_cert: true,
            reissue_serving_cert: c.kubelet_serving_cert(w)?,
        };
        roll_kubelet(&mut p, c, w, Upstream::Step9_2, target, Group::KubeletsWorkers)?;
    }
    Ok(())
}

/// Appends the roll of `node`'s kubelet to `target` (9.2 here, 12.3 in finalize).
pub(super) fn roll_kubelet(
    p: &mut Steps,
    c: &Cluster,
    node: &str,
    upstream: Upstream,
    target: KubeletTarget,
    group: Group,
) -> Result<(), ProcedureError> {
    let k = c.kubelet(node)?;
    let roll = Action::RollKubelet {
        prior: None,
        node: node.to_owned(),
        config: k.config.clone(),
        kubeconfig: k.kubeconfig.clone(),
        target,
    };
    let id = format!("{}/kubelet/{node}", p.phase().name());
    p.step(id, upstream, Kind::Kubelet, roll).estimate(Duration::from_secs(60)).in_group(group);
    Ok(())
}
