//! Deriving a rollback from what the journal says was done: compensations in the reverse order of
//! trust, each followed by the restarts that make components load what it restored.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::event::CompStep;
use crate::plan::{RetryPolicy, StepId};
use crate::runner::Compensation;

/// A done (or possibly done) forward step, with what undoes it.
#[derive(Debug, Clone)]
pub struct Undo<A> {
    /// The forward step.
    pub step: StepId,
    /// Its retry policy, reused for its compensations.
    pub retry: RetryPolicy,
    /// Its estimate, reused for its compensations.
    pub estimate: Duration,
    /// What the runner says undoes it.
    pub compensations: Vec<Compensation<A>>,
}

/// Orders compensations into rollback steps. `undos` come newest first (the reverse of the order
/// the forward steps started in).
///
/// Compensations run by trust rank, highest first (the reverse order of trust); within a rank,
/// newest first. After the restores of a rank come the restarts they need, once per key, in the
/// order the restores named them: so every restore is followed by the restart of whatever loads
/// it, and a component's last restart comes after its last restore.
pub fn order<A: Clone>(undos: Vec<Undo<A>>) -> Vec<CompStep<A>> {
    struct Entry<A> {
        step: StepId,
        ordinal: usize,
        retry: RetryPolicy,
        estimate: Duration,
        comp: Compensation<A>,
    }
    let mut entries: Vec<Entry<A>> = Vec::new();
    for undo in undos {
        let many = undo.compensations.len() > 1;
        for (i, comp) in undo.compensations.into_iter().enumerate() {
            entries.push(Entry {
                step: undo.step.clone(),
                ordinal: if many { i + 1 } else { 0 },
                retry: undo.retry.clone(),
                estimate: undo.estimate,
                comp,
            });
        }
    }
    // A stable sort keeps "newest first" within a rank.
    entries.sort_by_key(|e| std::cmp::Reverse(e.comp.trust));

    let mut steps = Vec::new();
    let mut start = 0;
    while start < entries.len() {
        let trust = entries[start].comp.trust;
        let end = entries[start..]
            .iter()
            .position(|e| e.comp.trust != trust)
            .map_or(entries.len(), |n| start + n);
        let mut restarts = Vec::new();
        let mut keys = BTreeSet::new();
        for entry in &entries[start..end] {
            let id = if entry.ordinal == 0 {
                format!("undo:{}", entry.step)
            } else {
                format!("undo:{}#{}", entry.step, entry.ordinal)
            };
            steps.push(CompStep {
                id: StepId(id),
                undoes: Some(entry.step.clone()),
                action: entry.comp.action.clone(),
                kind: entry.comp.kind.clone(),
                estimate: entry.estimate,
                retry: entry.retry.clone(),
                trust,
            });
            if let Some(restart) = &entry.comp.restart
                && keys.insert(restart.key.clone())
            {
                restarts.push(CompStep {
                    id: StepId(format!("restart:{}@{trust}", restart.key)),
                    undoes: None,
                    action: restart.action.clone(),
                    kind: restart.kind.clone(),
                    estimate: entry.estimate,
                    retry: entry.retry.clone(),
                    trust,
                });
            }
        }
        steps.extend(restarts);
        start = end;
    }
    steps
}
