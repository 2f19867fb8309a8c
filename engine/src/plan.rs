//! The plan: the ordered steps and gates of a run, their phases, parallel groups and retry policies.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

macro_rules! name_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub String);

        impl $name {
            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                $name(s.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                $name(s)
            }
        }
    };
}

name_type!(
    /// A step's stable identity: the same step has the same id in every journal record.
    StepId
);
name_type!(
    /// The name of a phase, such as `trust-nodes`.
    PhaseName
);
name_type!(
    /// The name of a parallel group, such as `kubelets`.
    GroupId
);
name_type!(
    /// The name of a gate, such as `finalize`: a pause point that needs an approval.
    GateName
);

/// How a step is retried after a retryable error.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    /// Attempts per run, the first included (at least 1).
    pub attempts: u32,
    /// Wait before the second attempt; doubled for each further attempt.
    pub backoff: Duration,
    /// The longest wait between two attempts.
    pub max_backoff: Duration,
    /// Up to this percentage of each wait is replaced by a random amount (0 = no jitter), so
    /// steps that failed together do not retry in lockstep.
    pub jitter_percent: u8,
    /// No attempt starts later than this after the step's first attempt in this run.
    pub deadline: Option<Duration>,
}

impl RetryPolicy {
    /// One attempt, no retry.
    pub fn once() -> RetryPolicy {
        RetryPolicy {
            attempts: 1,
            backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
            jitter_percent: 0,
            deadline: None,
        }
    }

    /// The wait after failed try number `tries` (1-based), with `random` a uniform 64-bit value.
    pub fn delay(&self, tries: u32, random: u64) -> Duration {
        let doublings = tries.saturating_sub(1).min(32);
        let base = self.backoff.saturating_mul(1u32 << doublings.min(31)).min(self.max_backoff);
        let jitter = u64::from(self.jitter_percent.min(100));
        if jitter == 0 {
            return base;
        }
        // Remove a random share of up to `jitter`% of the wait ("equal jitter" style).
        let base_ns = base.as_nanos().min(u128::from(u64::MAX)) as u64;
        let span = base_ns / 100 * jitter;
        let cut = if span == 0 { 0 } else { random % (span + 1) };
        Duration::from_nanos(base_ns - cut)
    }
}

impl Default for RetryPolicy {
    /// Three attempts, 1 s then 2 s apart (up to 30 s), 20% jitter, no deadline.
    fn default() -> RetryPolicy {
        RetryPolicy {
            attempts: 3,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
            jitter_percent: 20,
            deadline: None,
        }
    }
}

/// One step of a plan: an action with its place in the procedure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Step<A> {
    /// Stable identity.
    pub id: StepId,
    /// The phase it belongs to.
    pub phase: PhaseName,
    /// The upstream procedure's step label (such as `9.1`), kept for the audit record.
    pub upstream: Option<String>,
    /// Steps of the same kind take about as long: the key for expected durations.
    pub kind: String,
    /// How long the plan expects it to take when the journal has no similar step yet.
    pub estimate: Duration,
    /// Its retry policy.
    pub retry: RetryPolicy,
    /// The parallel group it belongs to, if any.
    pub group: Option<GroupId>,
    /// What to do; the runner interprets it.
    pub action: A,
}

impl<A> Step<A> {
    /// A step with no upstream label, no group, the default retry policy and a 1 minute estimate.
    pub fn new(
        id: impl Into<StepId>,
        phase: impl Into<PhaseName>,
        kind: impl Into<String>,
        action: A,
    ) -> Step<A> {
        Step {
            id: id.into(),
            phase: phase.into(),
            upstream: None,
            kind: kind.into(),
            estimate: Duration::from_secs(60),
            retry: RetryPolicy::default(),
            group: None,
            action,
        }
    }

    /// With an upstream procedure label.
    pub fn upstream(mut self, label: impl Into<String>) -> Self {
        self.upstream = Some(label.into());
        self
    }

    /// In a parallel group.
    pub fn in_group(mut self, group: impl Into<GroupId>) -> Self {
        self.group = Some(group.into());
        self
    }

    /// With an estimate.
    pub fn estimate(mut self, estimate: Duration) -> Self {
        self.estimate = estimate;
        self
    }

    /// With a retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }
}

/// A named pause point: the steps after it wait until it is approved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gate {
    /// Its name, as typed to approve it.
    pub name: GateName,
    /// The phase whose steps it holds back.
    pub phase: PhaseName,
    /// What the approver must have checked, shown while the run waits.
    pub note: String,
}

/// A phase of the procedure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Phase {
    /// Its name.
    pub name: PhaseName,
    /// A parallel group of this phase is either finished or not started: it is started only when
    /// the whole group fits in the maintenance window, and once started it is finished even past
    /// the window's end.
    pub keep_groups_whole: bool,
}

/// A parallel group: steps that run concurrently.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    /// Its name.
    pub id: GroupId,
    /// At most this many of its steps run at once (such as `max_unavailable`).
    pub limit: u32,
    /// Once this many of its steps have failed, no further step of it is started.
    pub max_failures: u32,
}

/// One entry of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Item<A> {
    /// A step.
    Step(Step<A>),
    /// A gate.
    Gate(Gate),
}

/// An ordered list of steps and gates; recorded in the journal when a run starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan<A> {
    /// The phases, in order.
    pub phases: Vec<Phase>,
    /// The parallel groups.
    pub groups: Vec<Group>,
    /// Steps and gates, in order. A group's steps are consecutive.
    pub items: Vec<Item<A>>,
}

/// Why a plan cannot be run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// Two steps share an id.
    #[error("step id {0} appears twice in the plan")]
    DuplicateStep(StepId),
    /// Two gates share a name.
    #[error("gate {0} appears twice in the plan")]
    DuplicateGate(GateName),
    /// Two phases share a name.
    #[error("phase {0} appears twice in the plan")]
    DuplicatePhase(PhaseName),
    /// A step or gate names a phase the plan does not declare.
    #[error("{item} names phase {phase}, which the plan does not declare")]
    UnknownPhase {
        /// The step or gate.
        item: String,
        /// The phase.
        phase: PhaseName,
    },
    /// Items are not in the order of their phases.
    #[error("{item} (phase {phase}) comes after a later phase's items")]
    PhaseOrder {
        /// The step or gate out of order.
        item: String,
        /// Its phase.
        phase: PhaseName,
    },
    /// A step names a group the plan does not declare, or a group has a zero limit or cap.
    #[error(
        "step {step}: group {group} is not declared with a limit and failure cap of at least 1"
    )]
    BadGroup {
        /// The step.
        step: StepId,
        /// The group.
        group: GroupId,
    },
    /// A group's steps are not consecutive, or span two phases.
    #[error(
        "group {group}: step {step} is separated from the group's other steps or in another phase"
    )]
    SplitGroup {
        /// The group.
        group: GroupId,
        /// The step out of place.
        step: StepId,
    },
    /// A step may not be attempted zero times.
    #[error("step {0}: its retry policy allows no attempt")]
    NoAttempts(StepId),
}

/// What the driver runs as one piece: a gate, or a lone step or a whole group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum PlanUnit {
    Gate(usize),
    Steps { group: Option<GroupId>, items: Vec<usize> },
}

impl<A> Plan<A> {
    /// An empty plan with these phases (names; no phase keeps its groups whole).
    pub fn new<P: Into<PhaseName>>(phases: impl IntoIterator<Item = P>) -> Plan<A> {
        Plan {
            phases: phases
                .into_iter()
                .map(|p| Phase { name: p.into(), keep_groups_whole: false })
                .collect(),
            groups: Vec::new(),
            items: Vec::new(),
        }
    }

    /// Appends a step.
    pub fn step(mut self, step: Step<A>) -> Self {
        self.items.push(Item::Step(step));
        self
    }

    /// Appends a gate.
    pub fn gate(
        mut self,
        name: impl Into<GateName>,
        phase: impl Into<PhaseName>,
        note: impl Into<String>,
    ) -> Self {
        self.items.push(Item::Gate(Gate {
            name: name.into(),
            phase: phase.into(),
            note: note.into(),
        }));
        self
    }

    /// Declares a parallel group.
    pub fn group(mut self, id: impl Into<GroupId>, limit: u32, max_failures: u32) -> Self {
        self.groups.push(Group { id: id.into(), limit, max_failures });
        self
    }

    /// Marks a phase as one whose groups are finished or not started.
    pub fn keep_groups_whole(mut self, phase: impl Into<PhaseName>) -> Self {
        let phase = phase.into();
        for p in &mut self.phases {
            if p.name == phase {
                p.keep_groups_whole = true;
            }
        }
        self
    }

    /// The steps, in order.
    pub fn steps(&self) -> impl Iterator<Item = &Step<A>> {
        self.items.iter().filter_map(|item| match item {
            Item::Step(step) => Some(step),
            Item::Gate(_) => None,
        })
    }

    /// The step with this id.
    pub fn find_step(&self, id: &StepId) -> Option<&Step<A>> {
        self.steps().find(|s| &s.id == id)
    }

    /// The gate with this name.
    pub fn find_gate(&self, name: &GateName) -> Option<&Gate> {
        self.items.iter().find_map(|item| match item {
            Item::Gate(g) if &g.name == name => Some(g),
            _ => None,
        })
    }

    /// The group with this id.
    pub fn find_group(&self, id: &GroupId) -> Option<&Group> {
        self.groups.iter().find(|g| &g.id == id)
    }

    /// Position of a phase in the plan's order.
    pub fn phase_index(&self, phase: &PhaseName) -> Option<usize> {
        self.phases.iter().position(|p| &p.name == phase)
    }

    /// The phase with this name.
    pub fn find_phase(&self, phase: &PhaseName) -> Option<&Phase> {
        self.phases.iter().find(|p| &p.name == phase)
    }

    /// Checks the rules the driver relies on: unique ids, declared phases in order, declared
    /// groups whose steps are consecutive and in one phase, at least one attempt per step.
    pub fn validate(&self) -> Result<(), PlanError> {
        let mut phases = BTreeSet::new();
        for p in &self.phases {
            if !phases.insert(&p.name) {
                return Err(PlanError::DuplicatePhase(p.name.clone()));
            }
        }
        let mut steps = BTreeSet::new();
        let mut gates = BTreeSet::new();
        let mut closed_groups: BTreeSet<&GroupId> = BTreeSet::new();
        let mut open_group: Option<(&GroupId, &PhaseName)> = None;
        let mut last_phase = 0;
        for item in &self.items {
            let (label, phase) = match item {
                Item::Step(s) => (format!("step {}", s.id), &s.phase),
                Item::Gate(g) => (format!("gate {}", g.name), &g.phase),
            };
            let Some(index) = self.phase_index(phase) else {
                return Err(PlanError::UnknownPhase { item: label, phase: phase.clone() });
            };
            if index < last_phase {
                return Err(PlanError::PhaseOrder { item: label, phase: phase.clone() });
            }
            last_phase = index;
            let group = match item {
                Item::Step(s) => {
                    if !steps.insert(&s.id) {
                        return Err(PlanError::DuplicateStep(s.id.clone()));
                    }
                    if s.retry.attempts == 0 {
                        return Err(PlanError::NoAttempts(s.id.clone()));
                    }
                    if let Some(g) = &s.group {
                        let declared = self.find_group(g);
                        if !declared.is_some_and(|d| d.limit >= 1 && d.max_failures >= 1) {
                            return Err(PlanError::BadGroup {
                                step: s.id.clone(),
                                group: g.clone(),
                            });
                        }
                        let continues = open_group.is_some_and(|(og, _)| og == g);
                        if closed_groups.contains(g)
                            || open_group.is_some_and(|(og, op)| og == g && op != &s.phase)
                        {
                            return Err(PlanError::SplitGroup {
                                group: g.clone(),
                                step: s.id.clone(),
                            });
                        }
                        if !continues && let Some((og, _)) = open_group {
                            closed_groups.insert(og);
                        }
                        Some((g, &s.phase))
                    } else {
                        None
                    }
                }
                Item::Gate(g) => {
                    if !gates.insert(&g.name) {
                        return Err(PlanError::DuplicateGate(g.name.clone()));
                    }
                    None
                }
            };
            if group.is_none()
                && let Some((og, _)) = open_group
            {
                closed_groups.insert(og);
            }
            open_group = group;
        }
        Ok(())
    }

    /// The plan cut into what the driver runs as one piece.
    pub(crate) fn units(&self) -> Vec<PlanUnit> {
        let mut units: Vec<PlanUnit> = Vec::new();
        for (index, item) in self.items.iter().enumerate() {
            match item {
                Item::Gate(_) => units.push(PlanUnit::Gate(index)),
                Item::Step(step) => {
                    if let (Some(g), Some(PlanUnit::Steps { group: Some(last), items })) =
                        (&step.group, units.last_mut())
                        && g == last
                    {
                        items.push(index);
                        continue;
                    }
                    units.push(PlanUnit::Steps { group: step.group.clone(), items: vec![index] });
                }
            }
        }
        units
    }
}

impl<A: Serialize> Plan<A> {
    /// SHA-256 (hex) of the plan's JSON rendering: recorded with the plan when a run starts.
    pub fn digest(&self) -> String {
        // Serializing a plan cannot fail unless the action's own Serialize does; then the digest
        // names that instead of panicking, and the plan is still recorded as it is.
        match serde_json::to_vec(self) {
            Ok(bytes) => journal::Hash::of(&bytes).to_hex(),
            Err(e) => format!("unserializable plan: {e}"),
        }
    }
}

/// Step ids by item index, for lookups.
pub(crate) fn step_index<A>(plan: &Plan<A>) -> BTreeMap<StepId, usize> {
    plan.items
        .iter()
        .enumerate()
        .filter_map(|(i, item)| match item {
            Item::Step(s) => Some((s.id.clone(), i)),
            Item::Gate(_) => None,
        })
        .collect()
}
