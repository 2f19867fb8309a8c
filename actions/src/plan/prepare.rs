//! Phase `prepare` (upstream 1): the new CAs, made once and copied beside the old ones on
//! every control-plane node; the old+new bundles on every node (workers need the cluster
//! bundle for the kubelet's `clientCAFile`).

use super::ProcedureError;
use super::builder::{Builder, Group, Phase, Upstream};
use super::cluster::Cluster;
use crate::action::{Action, CaKind, Content, Kind, new_ca_step};

pub(super) fn steps(plan: &mut Builder, c: &Cluster) -> Result<(), ProcedureError> {
    let first = c.first()?;
    let mut p = plan.phase(Phase::Prepare);
    for ca in [CaKind::Cluster, CaKind::FrontProxy] {
        let old_cert = match ca {
            CaKind::Cluster => first.ca.clone(),
            CaKind::FrontProxy => first.fp_ca.clone(),
        };
        let new = Action::NewCa { ca, node: first.name.to_owned(), old_cert };
        p.step(new_ca_step(ca), Upstream::Step1, Kind::NewCa, new);
    }
    for cp in &c.control_planes {
        let files = vec![
            (cp.new_ca(), Content::NewCert(CaKind::Cluster), 0o644),
            (cp.new_ca_key(), Content::NewKey(CaKind::Cluster), 0o600),
            (cp.new_fp(), Content::NewCert(CaKind::FrontProxy), 0o644),
            (cp.new_fp_key(), Content::NewKey(CaKind::FrontProxy), 0o600),
            (cp.bundle(), Content::Bundle(CaKind::Cluster), 0o644),
            (cp.fp_bundle(), Content::Bundle(CaKind::FrontProxy), 0o644),
        ];
        let put = Action::PutFiles { node: cp.name.to_owned(), files, loaded_by: Vec::new() };
        p.step(format!("prepare/distribute/{}", cp.name), Upstream::Step1, Kind::Distribute, put)
            .in_group(Group::Distribute);
    }
    for w in &c.workers {
        let files = vec![(c.worker_bundle(w)?, Content::Bundle(CaKind::Cluster), 0o644)];
        let put = Action::PutFiles { node: (*w).to_owned(), files, loaded_by: Vec::new() };
        p.step(format!("prepare/distribute/{w}"), Upstream::Step1, Kind::Distribute, put)
            .in_group(Group::Distribute);
    }
    Ok(())
}
