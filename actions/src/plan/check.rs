//! The trust checks of a plan: every edge of the trust graph after every step, forward, and in
//! a rollback from any point, which must also end on what every component loaded before the
//! rotation.

use engine::{Plan, Step};

use crate::action::Action;
use crate::trust::{self, SimStep, Topology, Violation};

/// Simulates a rollback after the first `done` steps of `plan`: the steps, then the
/// compensations in the order the engine runs them. Checks every edge after every step, and
/// that every component ends up having loaded what it loaded before the rotation.
pub fn check_rollback(
    plan: &Plan<Action>,
    topology: &Topology,
    done: usize,
) -> Result<(), Violation> {
    let initial = trust::kubeadm(topology);
    let steps: Vec<&Step<Action>> = plan.steps().take(done).collect();
    let mut sim: Vec<SimStep> = steps
        .iter()
        .map(|s| SimStep { id: s.id.to_string(), effects: s.action.effects(topology) })
        .collect();
    let undos = steps
        .iter()
        .enumerate()
        .rev()
        .map(|(i, s)| engine::Undo {
            step: s.id.clone(),
            retry: s.retry.clone(),
            estimate: s.estimate,
            compensations: s.action.compensations(i as u32 + 1, topology),
        })
        .collect();
    for c in engine::order_compensations(undos) {
        sim.push(SimStep {
            id: c.id.to_string(),
            effects: c.action.rollback_effects(&initial, topology),
        });
    }
    let end = initial.clone().simulate(&sim)?;
    for (id, loaded) in &initial.loaded {
        for (slot, material) in loaded {
            let now = end.loaded(id, slot);
            if now != material {
                return Err(Violation {
                    step: "(end of rollback)".into(),
                    edge: format!("{id} {slot}"),
                    why: trust::Break::UntrustedServer {
                        server_signer: format!("loaded {now}"),
                        client_trusts: format!("before the rotation it loaded {material}"),
                    },
                });
            }
        }
    }
    Ok(())
}

/// Replays `plan` on the trust graph of `topology`, checking every edge after every step.
pub fn check_trust(plan: &Plan<Action>, topology: &Topology) -> Result<(), Violation> {
    let steps: Vec<SimStep> = plan
        .steps()
        .map(|s| SimStep { id: s.id.to_string(), effects: s.action.effects(topology) })
        .collect();
    trust::kubeadm(topology).simulate(&steps).map(drop)
}
