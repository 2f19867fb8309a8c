//! The plan's builder: typed phases, upstream steps and parallel groups, so that a phase module
//! says "this step implements upstream 9.3, takes as long as an apiserver restart" in types
//! rather than in positional strings.

use std::time::Duration;

use engine::{Gate, Item, Plan, RetryPolicy, Step};

use super::{FINALIZE_GATE, PHASES};
use crate::action::{Action, Kind};
use crate::inventory::Inventory;

/// A phase of the rotation, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// The upstream caution: reachability, the old CAs, HA; a backup of every file that will
    /// change.
    Preflight,
    /// Upstream 1: the new CAs, beside the old ones on every node.
    Prepare,
    /// Upstream 2 to 8: the control plane trusts both CAs.
    TrustControlPlane,
    /// Upstream 9.1 and 9.2: the extension servers and every kubelet trust both CAs.
    TrustNodes,
    /// Upstream 9.3, 9.4 and 10: the apiservers present certificates of the new CA, one
    /// control-plane node at a time.
    Switch,
    /// Upstream 11: no TLS error, every apiserver presenting the new CA.
    Verify,
    /// Upstream 12, after the one human gate: the old CA dropped everywhere.
    Finalize,
}

impl Phase {
    /// Its name, as the journal and `--until` spell it.
    pub(crate) fn name(self) -> &'static str {
        PHASES[self as usize]
    }

    /// Whether a parallel group of the phase is started only when all of it fits in the
    /// maintenance window (a node rollout is never left half done at the window's end).
    fn keeps_groups_whole(self) -> bool {
        matches!(self, Phase::TrustNodes | Phase::Finalize)
    }

    const ALL: [Phase; 7] = [
        Phase::Preflight,
        Phase::Prepare,
        Phase::TrustControlPlane,
        Phase::TrustNodes,
        Phase::Switch,
        Phase::Verify,
        Phase::Finalize,
    ];
}

/// The step of the upstream procedure ("Manually Rotate CA Certificates") a plan step
/// implements, recorded with it for the audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Upstream {
    /// The caution before the steps: back up; an HA control plane keeps the API up.
    Caution,
    /// 1: the new CA certificates and keys on every control-plane node.
    Step1,
    /// 2: the controller-manager's `--root-ca-file` trusts both, then it restarts.
    Step2,
    /// 3: wait until the service-account data holds both.
    Step3,
    /// 4: restart every pod that uses in-cluster config.
    Step4,
    /// 5: the apiserver's `--client-ca-file` and `--kubelet-certificate-authority` trust both.
    Step5,
    /// 6: the scheduler's `--client-ca-file` trusts both.
    Step6,
    /// 7: the kubeconfigs trust both and carry client certificates of the new CA.
    Step7,
    /// 8: the cloud-controller-manager's `--root-ca-file` trusts both, then it restarts.
    Step8,
    /// 9.1: restart the aggregated API servers and webhooks.
    Step9_1,
    /// 9.2: every kubelet's `clientCAFile` and kubeconfig trust both; it restarts.
    Step9_2,
    /// 9.3: the apiservers restart with certificates of the new CA; then the scheduler.
    Step9_3,
    /// 9.4: roll the workloads.
    Step9_4,
    /// 10: `kube-public/cluster-info` holds the new CA.
    Step10,
    /// 11.1: no TLS error in the control plane's, kubelets' and kube-proxy's logs.
    Step11_1,
    /// 11.2: the aggregated servers and the in-cluster pods work.
    Step11_2,
    /// 12: once the cluster works, the old CA goes.
    Step12,
    /// 12.1: service-account data holds only the new CA; pods restarted.
    Step12_1,
    /// 12.2: kubeconfigs and the files of `--client-ca-file` and `--root-ca-file` hold only
    /// the new CA; the control plane restarts.
    Step12_2,
    /// 12.3: every kubelet's `clientCAFile` and kubeconfig hold only the new CA; it restarts.
    Step12_3,
}

impl Upstream {
    /// As the journal records it.
    fn label(self) -> &'static str {
        match self {
            Upstream::Caution => "caution",
            Upstream::Step1 => "1",
            Upstream::Step2 => "2",
            Upstream::Step3 => "3",
            Upstream::Step4 => "4",
            Upstream::Step5 => "5",
            Upstream::Step6 => "6",
            Upstream::Step7 => "7",
            Upstream::Step8 => "8",
            Upstream::Step9_1 => "9.1",
            Upstream::Step9_2 => "9.2",
            Upstream::Step9_3 => "9.3",
            Upstream::Step9_4 => "9.4",
            Upstream::Step10 => "10",
            Upstream::Step11_1 => "11.1",
            Upstream::Step11_2 => "11.2",
            Upstream::Step12 => "12",
            Upstream::Step12_1 => "12.1",
            Upstream::Step12_2 => "12.2",
            Upstream::Step12_3 => "12.3",
        }
    }
}

/// A parallel group of steps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Group {
    /// The nodes' backups, `ssh.concurrency` at a time.
    Backup,
    /// CA material written to the nodes, `ssh.concurrency` at a time.
    Distribute,
    /// Control-plane kubelets (9.2), one at a time.
    KubeletsControlPlane,
    /// Worker kubelets (9.2), `max_unavailable_workers` at a time.
    KubeletsWorkers,
    /// Control-plane kubelets again (12.3), one at a time.
    FinalizeKubeletsControlPlane,
    /// Worker kubelets again (12.3), `max_unavailable_workers` at a time.
    FinalizeKubeletsWorkers,
}

impl Group {
    const ALL: [Group; 6] = [
        Group::Backup,
        Group::Distribute,
        Group::KubeletsControlPlane,
        Group::KubeletsWorkers,
        Group::FinalizeKubeletsControlPlane,
        Group::FinalizeKubeletsWorkers,
    ];

    fn id(self) -> &'static str {
        match self {
            Group::Backup => "backup",
            Group::Distribute => "distribute",
            Group::KubeletsControlPlane => "kubelets-control-plane",
            Group::KubeletsWorkers => "kubelets-workers",
            Group::FinalizeKubeletsControlPlane => "finalize-kubelets-control-plane",
            Group::FinalizeKubeletsWorkers => "finalize-kubelets-workers",
        }
    }

    /// How many of its steps run at once.
    fn limit(self, inventory: &Inventory) -> u32 {
        match self {
            Group::Backup | Group::Distribute => inventory.ssh.concurrency,
            Group::KubeletsControlPlane | Group::FinalizeKubeletsControlPlane => 1,
            Group::KubeletsWorkers | Group::FinalizeKubeletsWorkers => {
                inventory.rotation.max_unavailable_workers
            }
        }
    }
}

/// A plan being built, phase by phase.
pub(crate) struct Builder {
    plan: Plan<Action>,
}

impl Builder {
    /// An empty plan with every phase and group; a group's first failed step stops it.
    pub(crate) fn new(inventory: &Inventory) -> Builder {
        let mut plan = Plan::new(PHASES);
        for group in Group::ALL {
            plan = plan.group(group.id(), group.limit(inventory), 1);
        }
        for phase in Phase::ALL.into_iter().filter(|p| p.keeps_groups_whole()) {
            plan = plan.keep_groups_whole(phase.name());
        }
        Builder { plan }
    }

    /// The steps of `phase`, appended after everything so far.
    pub(crate) fn phase(&mut self, phase: Phase) -> Steps<'_> {
        Steps { plan: &mut self.plan, phase }
    }

    /// The finalize gate: the steps after it wait until the operator approves it.
    pub(crate) fn finalize_gate(&mut self, note: &str) {
        self.plan.items.push(Item::Gate(Gate {
            name: FINALIZE_GATE.into(),
            phase: Phase::Finalize.name().into(),
            note: note.into(),
        }));
    }

    /// The plan, before [`super::fill`] records what each step changes from.
    pub(crate) fn finish(self) -> Plan<Action> {
        self.plan
    }
}

/// Appends steps of one phase.
pub(crate) struct Steps<'a> {
    plan: &'a mut Plan<Action>,
    phase: Phase,
}

impl Steps<'_> {
    /// The phase the steps belong to.
    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// Appends the step `id` (which starts with the phase's name, as every id does) doing
    /// `action` to implement `upstream`; it takes about as long as other steps of `kind`.
    pub(crate) fn step(
        &mut self,
        id: impl Into<String>,
        upstream: Upstream,
        kind: Kind,
        action: Action,
    ) -> Added<'_> {
        let id = id.into();
        debug_assert!(id.starts_with(&format!("{}/", self.phase.name())), "step {id}");
        let step =
            Step::new(id, self.phase.name(), kind.as_str(), action).upstream(upstream.label());
        self.plan.items.push(Item::Step(step));
        Added { items: &mut self.plan.items }
    }
}

/// The step just appended, to set what differs from the defaults (no group, the default retry
/// policy, a minute's estimate).
pub(crate) struct Added<'a> {
    items: &'a mut Vec<Item<Action>>,
}

impl Added<'_> {
    fn step(&mut self) -> Option<&mut Step<Action>> {
        match self.items.last_mut() {
            Some(Item::Step(step)) => Some(step),
            _ => None,
        }
    }

    /// In a parallel group.
    pub(crate) fn in_group(mut self, group: Group) -> Self {
        if let Some(step) = self.step() {
            step.group = Some(group.id().into());
        }
        self
    }

    /// Expected to take `estimate` when the journal has no similar step yet.
    pub(crate) fn estimate(mut self, estimate: Duration) -> Self {
        if let Some(step) = self.step() {
            step.estimate = estimate;
        }
        self
    }

    /// Tried once more after a failure, then stops the run.
    pub(crate) fn retry_once(mut self) -> Self {
        if let Some(step) = self.step() {
            step.retry = RetryPolicy::once();
        }
        self
    }
}
