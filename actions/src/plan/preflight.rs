//! Phase `preflight` (upstream's caution): reachability, the old CAs, HA; then a backup of
//! every file the rotation may change, on every node and on the operator's machine.

use super::builder::{Builder, Group, Phase, Upstream};
use super::cluster::Cluster;
use super::{OPERATOR, ProcedureError};
use crate::action::{Action, Kind};
use crate::discovery::NodeFacts;
use crate::kubeadm::component::{APISERVER, CONTROLLER_MANAGER};
use crate::kubeadm::step;

pub(super) fn steps(plan: &mut Builder, c: &Cluster) -> Result<(), ProcedureError> {
    let first = c.first()?;
    let mut p = plan.phase(Phase::Preflight);
    let cas =
        vec![(first.ca.clone(), first.ca_key.clone()), (first.fp_ca.clone(), first.fp_key.clone())];
    let check = Action::Preflight { node: first.name.to_owned(), cas };
    p.step("preflight/check", Upstream::Caution, Kind::Preflight, check).retry_once();
    for node in &c.inventory.nodes {
        let paths = backed_up(c, c.node_facts(&node.name)?, &node.name);
        let backup = Action::Backup { node: node.name.clone(), paths };
        p.step(step::backup(Some(&node.name)), Upstream::Caution, Kind::Backup, backup)
            .in_group(Group::Backup);
    }
    // The operator's admin kubeconfig is changed too (steps 7 and 12): back it up.
    let backup =
        Action::Backup { node: OPERATOR.into(), paths: vec![c.operator_kubeconfig.clone()] };
    p.step(step::backup(None), Upstream::Caution, Kind::Backup, backup).in_group(Group::Backup);
    Ok(())
}

/// The files of `node` a step may change, as discovery found them: manifests, kubeconfigs,
/// certificate files, the kubelet's config and client CA, and on a control plane its CAs and
/// the keys of the certificates re-issued. (Once the plan is whole, every file a rollback may
/// restore is added: [`super::fill`].)
fn backed_up(c: &Cluster, f: &NodeFacts, node: &str) -> Vec<String> {
    let mut paths: Vec<String> = f.static_pods.values().map(|p| p.manifest.clone()).collect();
    paths.extend(f.kubeconfigs.keys().cloned());
    paths.extend(f.cert_files.keys().cloned());
    if let Some(k) = &f.kubelet {
        paths.push(k.config.clone());
        if let Some(ca) = &k.client_ca_file {
            paths.push(ca.clone());
        }
    }
    if let Some(cp) = c.control_planes.iter().find(|cp| cp.name == node) {
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
    paths
}
