//! Phase `verify` (upstream 11): no TLS error in the logs since the switch, every apiserver
//! presenting a certificate of the new CA, the pods that still hold the old CA in memory, and
//! no client certificate of the old CA left on a kubelet or issued since the rotation began
//! (checked again right after the gate: [`super::finalize`]).

use super::builder::{Builder, Phase, Upstream};
use crate::action::{Action, Kind};

pub(super) fn steps(plan: &mut Builder) {
    let mut p = plan.phase(Phase::Verify);
    p.step("verify/logs", Upstream::Step11_1, Kind::Verify, Action::CheckLogs);
    p.step("verify/edges", Upstream::Step11_2, Kind::Verify, Action::CheckEdges);
    p.step("verify/stale-pods", Upstream::Step11_2, Kind::Verify, Action::ListStalePods);
    p.step("verify/client-certs", Upstream::Step11_2, Kind::Verify, Action::CheckClientCerts);
}
