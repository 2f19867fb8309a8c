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
/// it, and a component's last restart comes after its last restore. Following ranks that only
/// restore files loaded by those same components join them before the restarts: a component
/// whose files several steps changed (an apiserver's re-issued certificates) restarts once,
/// with all of them restored. That matters when the rotation failed because the component
/// cannot start with one of those files: a restart after only some of them were restored would
/// fail the same way and stop the rollback.
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
    // Restarts owed by the ranks done so far, not yet placed.
    let mut pending: Vec<CompStep<A>> = Vec::new();
    let mut keys = BTreeSet::new();
    let mut start = 0;
    while start < entries.len() {
        let trust = entries[start].comp.trust;
        let end = entries[start..]
            .iter()
            .position(|e| e.comp.trust != trust)
            .map_or(entries.len(), |n| start + n);
        // A rank that only restores what the owed restarts load joins them; any other rank
        // first gets them placed.
        let joins = entries[start..end]
            .iter()
            .all(|e| e.comp.restart.as_ref().is_some_and(|r| keys.contains(&r.key)));
        if !joins {
            steps.append(&mut pending);
            keys.clear();
        }
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
                pending.push(CompStep {
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
        start = end;
    }
    steps.append(&mut pending);
    steps
}
