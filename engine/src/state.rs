//! The state of a run: nothing but a fold of its events. `apply` is infallible and decides nothing.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::event::{CompStep, Event, PauseReason, StepError, Summary};
use crate::plan::{GateName, Item, PhaseName, Plan, PlanUnit, StepId, step_index};

/// Where one step (or rollback step) stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StepStatus {
    /// Never started.
    Pending,
    /// Started with no outcome yet. While the engine runs, it is running; read from a journal
    /// after a crash, it "may have happened".
    Started {
        /// The attempt.
        attempt: u32,
        /// When it started.
        since: Timestamp,
    },
    /// Its last attempt failed.
    Failed {
        /// The attempt.
        attempt: u32,
        /// The error.
        error: StepError,
    },
    /// Done.
    Succeeded {
        /// What it observed.
        summary: Summary,
        /// Found done after a crash rather than applied.
        recovered: bool,
    },
}

/// One step's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepState {
    /// Where it stands.
    pub status: StepStatus,
    /// Attempts started so far, across runs.
    pub attempts: u32,
}

impl StepState {
    fn pending() -> StepState {
        StepState { status: StepStatus::Pending, attempts: 0 }
    }

    /// Done (applied or recovered).
    pub fn is_done(&self) -> bool {
        matches!(self.status, StepStatus::Succeeded { .. })
    }

    /// Started with no outcome: may have happened.
    pub fn in_doubt(&self) -> bool {
        matches!(self.status, StepStatus::Started { .. })
    }
}

/// A gate's record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateState {
    /// When the run first stopped at it.
    pub reached: Option<Timestamp>,
    /// Who approved it, and when.
    pub approved: Option<(String, Timestamp)>,
}

/// The rollback's record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackState<A> {
    /// Its steps, in order.
    pub steps: Vec<CompStep<A>>,
    /// Each one's record, by id.
    pub records: BTreeMap<StepId, StepState>,
    /// When it finished.
    pub finished: Option<Timestamp>,
}

/// The folded state of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State<A> {
    /// The plan, once the run started.
    pub plan: Option<Plan<A>>,
    /// Its digest as recorded.
    pub digest: Option<String>,
    /// Each forward step's record, by id (every plan step is present once the run started).
    pub steps: BTreeMap<StepId, StepState>,
    /// Forward steps in the order of their first start: what was done, in order.
    pub started_order: Vec<StepId>,
    /// Each gate's record.
    pub gates: BTreeMap<GateName, GateState>,
    /// The rollback, once planned.
    pub rollback: Option<RollbackState<A>>,
    /// When the run completed.
    pub completed: Option<Timestamp>,
    /// The last pause, until something starts again.
    pub paused: Option<PauseReason>,
    /// Durations of successful attempts, by step kind, in the order recorded.
    pub durations: BTreeMap<String, Vec<Duration>>,
    /// The last event: its one-line description and time.
    pub last: Option<(String, Timestamp)>,
    /// Number of events folded.
    pub events: u64,
    index: BTreeMap<StepId, usize>,
    /// The plan cut into what the driver runs as one piece, and the first one not yet done:
    /// bookkeeping so that choosing the next step does not rescan the finished ones.
    units: Vec<PlanUnit>,
    cursor: usize,
}

impl<A> Default for State<A> {
    fn default() -> Self {
        State {
            plan: None,
            digest: None,
            steps: BTreeMap::new(),
            started_order: Vec::new(),
            gates: BTreeMap::new(),
            rollback: None,
            completed: None,
            paused: None,
            durations: BTreeMap::new(),
            last: None,
            events: 0,
            index: BTreeMap::new(),
            units: Vec::new(),
            cursor: 0,
        }
    }
}

impl<A: Clone> State<A> {
    /// The state after `events`, from nothing.
    pub fn fold<'a>(events: impl IntoIterator<Item = &'a Event<A>>) -> State<A>
    where
        A: 'a,
    {
        let mut state = State::default();
        for event in events {
            state.apply(event);
        }
        state
    }

    /// Folds one event in. Never fails and decides nothing: an event about an unknown step is
    /// recorded as it says, because the journal is the truth and the state only mirrors it.
    pub fn apply(&mut self, event: &Event<A>) {
        self.events += 1;
        self.last = Some((event.to_string(), event.at()));
        match event {
            Event::RunStarted(e) => {
                self.index = step_index(&e.plan);
                self.units = e.plan.units();
                self.cursor = 0;
                self.steps = e.plan.steps().map(|s| (s.id.clone(), StepState::pending())).collect();
                self.gates = e
                    .plan
                    .items
                    .iter()
                    .filter_map(|i| match i {
                        Item::Gate(g) => Some((g.name.clone(), GateState::default())),
                        Item::Step(_) => None,
                    })
                    .collect();
                self.plan = Some(e.plan.clone());
                self.digest = Some(e.digest.clone());
            }
            Event::StepStarted(e) => {
                self.paused = None;
                let record = self.steps.entry(e.step.clone()).or_insert_with(StepState::pending);
                if record.attempts == 0 {
                    self.started_order.push(e.step.clone());
                }
                record.attempts = record.attempts.max(e.attempt);
                record.status = StepStatus::Started { attempt: e.attempt, since: e.at };
            }
            Event::StepSucceeded(e) => {
                let kind = self.plan_step_kind(&e.step);
                let record = self.steps.entry(e.step.clone()).or_insert_with(StepState::pending);
                if let (StepStatus::Started { since, .. }, Some(kind)) = (&record.status, kind) {
                    let took = e.at.duration_since(*since);
                    if let Ok(took) = Duration::try_from(took) {
                        self.durations.entry(kind).or_default().push(took);
                    }
                }
                record.status =
                    StepStatus::Succeeded { summary: e.summary.clone(), recovered: false };
                self.advance();
            }
            Event::StepFailed(e) => {
                let record = self.steps.entry(e.step.clone()).or_insert_with(StepState::pending);
                record.status = StepStatus::Failed { attempt: e.attempt, error: e.error.clone() };
            }
            Event::StepRecovered(e) => {
                let record = self.steps.entry(e.step.clone()).or_insert_with(StepState::pending);
                record.status =
                    StepStatus::Succeeded { summary: e.summary.clone(), recovered: true };
                self.advance();
            }
            Event::GateReached(e) => {
                let gate = self.gates.entry(e.gate.clone()).or_default();
                gate.reached.get_or_insert(e.at);
            }
            Event::GateApproved(e) => {
                self.paused = None;
                let gate = self.gates.entry(e.gate.clone()).or_default();
                gate.approved = Some((e.by.clone(), e.at));
                self.advance();
            }
            Event::Paused(e) => self.paused = Some(e.reason.clone()),
            Event::RollbackPlanned(e) => {
                self.paused = None;
                self.rollback = Some(RollbackState {
                    records: e.steps.iter().map(|s| (s.id.clone(), StepState::pending())).collect(),
                    steps: e.steps.clone(),
                    finished: None,
                });
            }
            Event::CompensationStarted(e) => {
                self.paused = None;
                if let Some(rollback) = &mut self.rollback {
                    let record =
                        rollback.records.entry(e.step.clone()).or_insert_with(StepState::pending);
                    record.attempts = record.attempts.max(e.attempt);
                    record.status = StepStatus::Started { attempt: e.attempt, since: e.at };
                }
            }
            Event::CompensationSucceeded(e) => {
                if let Some(rollback) = &mut self.rollback {
                    let record =
                        rollback.records.entry(e.step.clone()).or_insert_with(StepState::pending);
                    record.status = StepStatus::Succeeded {
                        summary: e.summary.clone(),
                        recovered: e.recovered,
                    };
                }
            }
            Event::CompensationFailed(e) => {
                if let Some(rollback) = &mut self.rollback {
                    let record =
                        rollback.records.entry(e.step.clone()).or_insert_with(StepState::pending);
                    record.status =
                        StepStatus::Failed { attempt: e.attempt, error: e.error.clone() };
                }
            }
            Event::Completed(e) => {
                self.paused = None;
                self.completed = Some(e.at);
            }
            Event::RolledBack(e) => {
                self.paused = None;
                if let Some(rollback) = &mut self.rollback {
                    rollback.finished = Some(e.at);
                }
            }
        }
    }
}

impl<A> State<A> {
    /// Moves the cursor past the units that are done.
    fn advance(&mut self) {
        while let Some(unit) = self.units.get(self.cursor) {
            let done = match unit {
                PlanUnit::Gate(index) => match self.plan.as_ref().and_then(|p| p.items.get(*index))
                {
                    Some(Item::Gate(gate)) => self.gate_approved(&gate.name),
                    _ => true,
                },
                PlanUnit::Steps { items, .. } => items.iter().all(|index| {
                    match self.plan.as_ref().and_then(|p| p.items.get(*index)) {
                        Some(Item::Step(step)) => self.step(&step.id).is_done(),
                        _ => true,
                    }
                }),
            };
            if !done {
                break;
            }
            self.cursor += 1;
        }
    }

    /// The units not known to be done, in plan order.
    pub(crate) fn open_units(&self) -> &[PlanUnit] {
        self.units.get(self.cursor..).unwrap_or_default()
    }

    fn plan_step_kind(&self, id: &StepId) -> Option<String> {
        let plan = self.plan.as_ref()?;
        match plan.items.get(*self.index.get(id)?) {
            Some(Item::Step(step)) => Some(step.kind.clone()),
            _ => None,
        }
    }

    /// The plan step with this id.
    pub fn plan_step(&self, id: &StepId) -> Option<&crate::plan::Step<A>> {
        let plan = self.plan.as_ref()?;
        match plan.items.get(*self.index.get(id)?) {
            Some(Item::Step(step)) => Some(step),
            _ => None,
        }
    }

    /// A forward step's record (pending when unknown).
    pub fn step(&self, id: &StepId) -> &StepState {
        static PENDING: StepState = StepState { status: StepStatus::Pending, attempts: 0 };
        self.steps.get(id).unwrap_or(&PENDING)
    }

    /// How long a step of this kind is expected to take: the median of the durations recorded
    /// for its kind, or `estimate` when none is recorded yet.
    pub fn expected_duration(&self, kind: &str, estimate: Duration) -> Duration {
        match self.durations.get(kind) {
            Some(durations) if !durations.is_empty() => {
                let mut sorted = durations.clone();
                sorted.sort();
                sorted[sorted.len() / 2]
            }
            _ => estimate,
        }
    }

    /// Whether a gate is approved.
    pub fn gate_approved(&self, gate: &GateName) -> bool {
        self.gates.get(gate).is_some_and(|g| g.approved.is_some())
    }

    /// A summary for `status`: what happened last, where the run is, why it stopped, what next.
    pub fn status(&self) -> Status {
        let Some(plan) = &self.plan else {
            return Status {
                condition: Condition::NotStarted,
                done: 0,
                total: 0,
                phase: None,
                current: None,
                last: None,
                next: Next::Start,
            };
        };
        let total = self.steps.len();
        let done = self.steps.values().filter(|s| s.is_done()).count();
        let current = self
            .started_order
            .iter()
            .rev()
            .find(|id| !self.step(id).is_done())
            .or_else(|| plan.steps().find(|s| !self.step(&s.id).is_done()).map(|s| &s.id))
            .cloned();
        let phase = current.as_ref().and_then(|id| self.plan_step(id)).map(|s| s.phase.clone());
        let last = self.last.clone();
        let (condition, next, done, total, current) = if let Some(rollback) = &self.rollback {
            let done = rollback.records.values().filter(|s| s.is_done()).count();
            let total = rollback.steps.len();
            let current = rollback
                .steps
                .iter()
                .find(|s| !rollback.records.get(&s.id).is_some_and(StepState::is_done));
            if rollback.finished.is_some() {
                (Condition::RolledBack, Next::Nothing, done, total, None)
            } else {
                let condition = match &self.paused {
                    Some(reason) => Condition::RollbackPaused(reason.clone()),
                    None => Condition::RollingBack,
                };
                (condition, Next::Rollback, done, total, current.map(|s| s.id.clone()))
            }
        } else if self.completed.is_some() {
            (Condition::Completed, Next::Nothing, done, total, None)
        } else {
            match &self.paused {
                Some(PauseReason::Gate { gate }) if !self.gate_approved(gate) => (
                    Condition::Paused(PauseReason::Gate { gate: gate.clone() }),
                    Next::Approve(gate.clone()),
                    done,
                    total,
                    current,
                ),
                Some(reason) => {
                    (Condition::Paused(reason.clone()), Next::Run, done, total, current)
                }
                None => (Condition::Ready, Next::Run, done, total, current),
            }
        };
        Status { condition, done, total, phase, current, last, next }
    }
}

/// Where a run stands, as `status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Condition {
    /// No plan recorded yet.
    NotStarted,
    /// Started and not stopped for a reason: running, or interrupted (a crash) and resumable.
    Ready,
    /// Stopped for this reason; resumable.
    Paused(PauseReason),
    /// Every step done.
    Completed,
    /// Rollback under way (or interrupted by a crash).
    RollingBack,
    /// Rollback stopped for this reason; resumable.
    RollbackPaused(PauseReason),
    /// Rollback done.
    RolledBack,
}

/// What the operator does next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Next {
    /// Record a plan (start a run).
    Start,
    /// Run again (continues where the journal says).
    Run,
    /// Approve this gate, then run again.
    Approve(GateName),
    /// Run the rollback again (continues where the journal says).
    Rollback,
    /// Nothing: the run is finished.
    Nothing,
}

/// `status`: a summary of the folded state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// Where it stands.
    pub condition: Condition,
    /// Steps done (of the rollback, when rolling back).
    pub done: usize,
    /// Steps in all (of the rollback, when rolling back).
    pub total: usize,
    /// Phase of the current step.
    pub phase: Option<PhaseName>,
    /// The step under way or next.
    pub current: Option<StepId>,
    /// The last event and its time.
    pub last: Option<(String, Timestamp)>,
    /// What to do next.
    pub next: Next,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.condition {
            Condition::NotStarted => f.write_str("not started")?,
            Condition::Ready => f.write_str("in progress or interrupted")?,
            Condition::Paused(reason) => write!(f, "paused: {reason}")?,
            Condition::Completed => f.write_str("completed")?,
            Condition::RollingBack => f.write_str("rolling back, or rollback interrupted")?,
            Condition::RollbackPaused(reason) => write!(f, "rollback paused: {reason}")?,
            Condition::RolledBack => f.write_str("rolled back")?,
        }
        writeln!(f, " ({}/{} steps done)", self.done, self.total)?;
        if let Some(step) = &self.current {
            match &self.phase {
                Some(phase) => writeln!(f, "step: {step} (phase {phase})")?,
                None => writeln!(f, "step: {step}")?,
            }
        }
        if let Some((last, at)) = &self.last {
            writeln!(f, "last: {last} at {at}")?;
        }
        match &self.next {
            Next::Start => f.write_str("next: record a plan"),
            Next::Run => f.write_str("next: run again; it continues where the journal says"),
            Next::Approve(gate) => write!(f, "next: approve {gate}, then run again"),
            Next::Rollback => {
                f.write_str("next: run the rollback again; it continues where it stopped")
            }
            Next::Nothing => f.write_str("next: nothing, the run is finished"),
        }
    }
}
