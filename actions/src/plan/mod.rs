//! The plan: the upstream "Manually Rotate CA Certificates" steps as an engine plan for a
//! discovered cluster, and the trust checks of every intermediate state.
//!
//! Every action is idempotent (its postcondition is checked before it is applied) and carries
//! the upstream step number it implements. Node rollouts are parallel groups honouring
//! `max_unavailable_workers`; control-plane nodes are switched one at a time. Before a plan is
//! recorded, [`check`] replays it on the trust graph ([`crate::trust`]) and refuses it if any
//! edge would break after any step, or in a rollback from the end of any phase.
//!
//! [`assemble`] is the sequence of the phases, each in a module of its own (`preflight`,
//! `prepare`, `trust_control_plane`, `trust_nodes`, `switch`, `verify`, `finalize`), written
//! with a typed builder (`builder`: phase, upstream step, kind, group). The flags the rotation
//! points at other files, and where finalize points them back, are one table (`flags`), so
//! forward and finalize mirror each other row by row. Once the plan is whole, `fill` records
//! in each action what it changes from, so a rollback goes back one step at a time.
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

use engine::{Plan, Step};

use crate::action::Action;
use crate::discovery::NodeFacts;
use crate::inventory::Inventory;
use crate::kubeadm::component::APISERVER;
use crate::trust::{Topology, Violation};

mod builder;
mod check;
mod cluster;
mod fill;
mod finalize;
mod flags;
mod preflight;
mod prepare;
mod switch;
#[cfg(test)]
mod tests;
mod trust_control_plane;
mod trust_nodes;
mod verify;

pub use check::{check_rollback, check_trust};

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

/// The plan, before its trust check: the phases in order, then what each step changes from.
pub fn assemble(
    inventory: &Inventory,
    facts: &ClusterFacts,
    rotation_id: &str,
) -> Result<Plan<Action>, ProcedureError> {
    let cluster = cluster::Cluster::new(inventory, facts, rotation_id)?;
    let mut plan = builder::Builder::new(inventory);
    preflight::steps(&mut plan, &cluster)?;
    prepare::steps(&mut plan, &cluster)?;
    trust_control_plane::steps(&mut plan, &cluster);
    trust_nodes::steps(&mut plan, &cluster)?;
    switch::steps(&mut plan, &cluster)?;
    verify::steps(&mut plan);
    finalize::steps(&mut plan, &cluster)?;
    let mut plan = plan.finish();
    fill::after_undo(&mut plan, facts, rotation_id);
    fill::backups(&mut plan, &topology(inventory, facts));
    fill::priors(&mut plan, facts);
    Ok(plan)
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
