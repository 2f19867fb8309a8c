//! Deriving a rollback from what the journal says was done: compensations by descending rank, each
//! followed by the follow-ups that make what it restored take effect.

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
/// Compensations run by rank, highest first; within a rank, newest first. After the
/// compensations of a rank come the follow-ups they need, once per key, in the order the
/// compensations named them: so every compensation is followed by the follow-up that makes it
/// take effect, and a key's last follow-up comes after its last compensation. Following ranks
/// whose compensations all need only follow-ups already owed join them before those follow-ups
/// run: a key that several steps' compensations need (for kubeca, a component whose re-issued
/// files several steps changed) gets one follow-up, after all of them. That matters when the
/// forward run failed because the follow-up cannot succeed with only some of them undone: it
/// would fail the same way and stop the rollback.
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
    entries.sort_by_key(|e| std::cmp::Reverse(e.comp.rank));

    let mut steps = Vec::new();
    // Follow-ups owed by the ranks done so far, not yet placed.
    let mut pending: Vec<CompStep<A>> = Vec::new();
    let mut keys = BTreeSet::new();
    let mut start = 0;
    while start < entries.len() {
        let rank = entries[start].comp.rank;
        let end = entries[start..]
            .iter()
            .position(|e| e.comp.rank != rank)
            .map_or(entries.len(), |n| start + n);
        // A rank whose compensations need only follow-ups already owed joins them; any other
        // rank first gets them placed.
        let joins = entries[start..end]
            .iter()
            .all(|e| e.comp.follow_up.as_ref().is_some_and(|f| keys.contains(&f.key)));
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
                rank,
            });
            if let Some(follow_up) = &entry.comp.follow_up
                && keys.insert(follow_up.key.clone())
            {
                pending.push(CompStep {
                    id: StepId(format!("{}@{rank}", follow_up.key)),
                    undoes: None,
                    action: follow_up.action.clone(),
                    kind: follow_up.kind.clone(),
                    estimate: entry.estimate,
                    retry: entry.retry.clone(),
                    rank,
                });
            }
        }
        start = end;
    }
    steps.append(&mut pending);
    steps
}
