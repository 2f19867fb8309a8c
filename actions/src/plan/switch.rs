//! Phase `switch` (upstream 9.3, 9.4, 10): one control-plane node at a time, the apiserver
//! restarts with certificates re-issued by the new CA, the scheduler restarts, and the
//! controller-manager signs with the new CA; then every workload rolls and joining nodes get
//! the new discovery hash.

use std::time::Duration;

use super::ProcedureError;
use super::builder::{Builder, Phase, Upstream};
use super::cluster::{Cluster, base};
use super::flags;
use crate::action::{Action, CaKind, Kind};
use crate::kubeadm::component::{APISERVER, SCHEDULER};
use crate::kubeadm::step;

pub(super) fn steps(plan: &mut Builder, c: &Cluster) -> Result<(), ProcedureError> {
    let mut p = plan.phase(Phase::Switch);
    for cp in &c.control_planes {
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
            let reissue = Action::ReissueCert {
                node: cp.name.to_owned(),
                path: path.to_owned(),
                ca,
                manifest: manifest.clone(),
            };
            let id = format!("switch/reissue/{}/{}", cp.name, base(path));
            p.step(id, Upstream::Step9_3, Kind::Reissue, reissue);
        }
        let restart = cp.restart(APISERVER, manifest);
        p.step(step::switch_apiserver(cp.name), Upstream::Step9_3, Kind::ApiserverRestart, restart)
            .estimate(Duration::from_secs(90));
        if let Some(manifest) = cp.manifest(SCHEDULER) {
            let id = format!("switch/scheduler/{}", cp.name);
            p.step(id, Upstream::Step9_3, Kind::StaticPod, cp.restart(SCHEDULER, manifest));
        }
        flags::forward(&mut p, cp, Upstream::Step9_3);
    }
    let roll =
        Action::RollWorkloads { only: Vec::new(), round: format!("{}-switch", c.rotation_id) };
    p.step("switch/roll-workloads", Upstream::Step9_4, Kind::RollWorkloads, roll)
        .estimate(Duration::from_secs(300));
    p.step("switch/discovery-hash", Upstream::Step10, Kind::Api, Action::PrintDiscoveryHash);
    Ok(())
}
