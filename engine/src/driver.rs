//! The driver: a documented stage enum advanced by [`Engine::step`], over a runner, a clock and a log.
//!
//! Ordering rules that make a run crash-safe:
//! - a step's side effect starts only after its `StepStarted` record is durable;
//! - its outcome (`StepSucceeded`/`StepFailed`) is durable before anything else happens to it;
//! - a step started with no outcome "may have happened": its postcondition is checked, and it is
//!   recorded as recovered when true and applied again when not.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use jiff::Timestamp;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::event::{
    CompensationFailed, CompensationStarted, CompensationSucceeded, Completed, EVENT_VERSION,
    Event, Failure, GateApproved, GateReached, PauseReason, Paused, RollbackPlanned, RolledBack,
    RunStarted, StepError, StepFailed, StepRecovered, StepStarted, StepSucceeded, Summary,
};
use crate::plan::{GateName, GroupId, Item, PhaseName, Plan, PlanUnit, RetryPolicy, StepId};
use crate::rollback::{Undo, order};
use crate::runner::{Cancel, Clock, Log, Runner};
use crate::state::{State, StepState};

/// A maintenance window: steps start only inside it, and only when they are expected to end
/// inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    /// When it opens.
    pub start: Timestamp,
    /// How long it stays open.
    pub duration: Duration,
}

impl Window {
    /// When it closes.
    pub fn end(&self) -> Timestamp {
        self.start.saturating_add(self.duration).unwrap_or(Timestamp::MAX)
    }

    /// Why `step`, expected to take `expected`, may not start at `now`; `None` when it may.
    pub fn refuses(
        &self,
        now: Timestamp,
        step: &StepId,
        expected: Duration,
    ) -> Option<PauseReason> {
        if now < self.start {
            return Some(PauseReason::WindowClosed { opens: Some(self.start) });
        }
        let end = self.end();
        if now >= end {
            return Some(PauseReason::WindowClosed { opens: None });
        }
        let done_by = now.saturating_add(expected).unwrap_or(Timestamp::MAX);
        (done_by > end).then(|| PauseReason::WindowTooShort {
            step: step.clone(),
            expected,
            ends: end,
        })
    }
}

/// How a `run` or `rollback` goes.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Stop once every step of this phase (and of the phases before it) is done.
    pub until: Option<PhaseName>,
    /// Start steps only inside this window.
    pub window: Option<Window>,
    /// Cancellation from the caller.
    pub cancel: Cancel,
    /// After cancellation, how long running steps get to finish before the run stops anyway
    /// (they are then recorded as abandoned, and resolved by their postcondition next time).
    pub drain: Duration,
    /// Seed of the retry jitter.
    pub jitter_seed: u64,
}

impl Default for RunOptions {
    fn default() -> RunOptions {
        RunOptions {
            until: None,
            window: None,
            cancel: Cancel::never(),
            drain: Duration::from_secs(30),
            jitter_seed: 0,
        }
    }
}

/// Which list of steps a unit belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Track {
    /// The plan's steps.
    Forward,
    /// The rollback's steps.
    Rollback,
}

/// What runs as one piece: a lone step, or the unfinished steps of a parallel group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// Plan or rollback.
    pub track: Track,
    /// The group, if any.
    pub group: Option<GroupId>,
    /// Its unfinished steps, in plan order.
    pub steps: Vec<StepId>,
    /// The group is kept whole: once started it is finished even past the window's end.
    pub whole: bool,
}

/// How a `run` or `rollback` ended; the cli maps it to an exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Every step is done.
    Completed,
    /// Every step up to and including this phase is done, as asked.
    ReachedUntil {
        /// The phase.
        phase: PhaseName,
    },
    /// Stopped, resumable by running again (gate, window, retries spent, cancellation).
    Paused {
        /// Why.
        reason: PauseReason,
    },
    /// Stopped on an error that retrying does not fix; the state is journaled, and running again
    /// tries once more after the operator fixed the cause.
    Failed {
        /// The failures.
        failures: Vec<Failure>,
    },
    /// Every rollback step is done.
    RolledBack,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Completed => f.write_str("completed"),
            Outcome::ReachedUntil { phase } => write!(f, "phase {phase} is done, as asked"),
            Outcome::Paused { reason } => write!(f, "paused: {reason}; run again to continue"),
            Outcome::Failed { failures } => {
                let reason = PauseReason::Failed { failures: failures.clone() };
                write!(f, "{reason}; fix the cause, then run again")
            }
            Outcome::RolledBack => f.write_str("rolled back"),
        }
    }
}

impl Outcome {
    fn of_pause(reason: PauseReason) -> Outcome {
        match reason {
            PauseReason::Until { phase } => Outcome::ReachedUntil { phase },
            PauseReason::Failed { failures } if failures.iter().any(|f| !f.error.retryable) => {
                Outcome::Failed { failures }
            }
            reason => Outcome::Paused { reason },
        }
    }
}

/// Where the driver is. Every value is a point where the run can be printed, tested or stopped;
/// [`Engine::step`] advances one stage to the next:
///
/// ```text
/// Decide ──▶ Execute(unit) ──▶ Decide ──▶ …
///   │ └────▶ AwaitGate(gate) ──▶ Stopped(Paused{Gate})
///   ├──────▶ Pause(reason)   ──▶ Stopped(Paused | ReachedUntil | Failed)
///   └──────▶ Finish          ──▶ Stopped(Completed | RolledBack)
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stage {
    /// Look at the folded state and choose what comes next ([`decide`]); records nothing.
    Decide,
    /// Run a unit's steps (a group's concurrently), each with its retries.
    Execute(Unit),
    /// A gate is not approved: record that it was reached, and pause.
    AwaitGate(GateName),
    /// Record a pause with this reason, and stop.
    Pause(PauseReason),
    /// Every step is done: record `Completed` (or `RolledBack`), and stop.
    Finish,
    /// Stopped; nothing more happens until the caller runs again.
    Stopped(Outcome),
}

/// Chooses the next stage from the folded state alone: a pure function, so every decision is
/// testable by giving events and reading the stage.
pub fn decide<A>(state: &State<A>, options: &RunOptions, now: Timestamp) -> Result<Stage, Error> {
    let plan = state.plan.as_ref().ok_or(Error::NotStarted)?;
    let cancelled = options.cancel.is_cancelled();
    if let Some(rollback) = &state.rollback {
        if rollback.finished.is_some() {
            return Ok(Stage::Stopped(Outcome::RolledBack));
        }
        for step in &rollback.steps {
            let record = rollback.records.get(&step.id);
            if record.is_some_and(StepState::is_done) {
                continue;
            }
            if cancelled {
                return Ok(Stage::Pause(PauseReason::Cancelled { abandoned: Vec::new() }));
            }
            if let Some(window) = &options.window
                && !record.is_some_and(StepState::in_doubt)
            {
                let expected = state.expected_duration(&step.kind, step.estimate);
                if let Some(reason) = window.refuses(now, &step.id, expected) {
                    return Ok(Stage::Pause(reason));
                }
            }
            return Ok(Stage::Execute(Unit {
                track: Track::Rollback,
                group: None,
                steps: vec![step.id.clone()],
                whole: false,
            }));
        }
        return Ok(Stage::Finish);
    }
    if state.completed.is_some() {
        return Ok(Stage::Stopped(Outcome::Completed));
    }
    let until = match &options.until {
        Some(phase) => Some((
            phase,
            plan.phase_index(phase).ok_or_else(|| Error::UnknownPhase(phase.clone()))?,
        )),
        None => None,
    };
    let beyond_until = |phase: &PhaseName| {
        until.and_then(|(name, last)| {
            (plan.phase_index(phase).unwrap_or(usize::MAX) > last)
                .then(|| PauseReason::Until { phase: name.clone() })
        })
    };
    for unit in state.open_units() {
        match unit {
            PlanUnit::Gate(index) => {
                let Some(Item::Gate(gate)) = plan.items.get(*index) else { continue };
                if state.gate_approved(&gate.name) {
                    continue;
                }
                if let Some(reason) = beyond_until(&gate.phase) {
                    return Ok(Stage::Pause(reason));
                }
                return Ok(Stage::AwaitGate(gate.name.clone()));
            }
            PlanUnit::Steps { group, items } => {
                let steps: Vec<&crate::plan::Step<A>> = items
                    .iter()
                    .filter_map(|&i| match plan.items.get(i) {
                        Some(Item::Step(step)) => Some(step),
                        _ => None,
                    })
                    .collect();
                let unfinished: Vec<&crate::plan::Step<A>> =
                    steps.iter().copied().filter(|s| !state.step(&s.id).is_done()).collect();
                let Some(first) = unfinished.first() else { continue };
                if let Some(reason) = beyond_until(&first.phase) {
                    return Ok(Stage::Pause(reason));
                }
                if cancelled {
                    return Ok(Stage::Pause(PauseReason::Cancelled { abandoned: Vec::new() }));
                }
                let whole = group.is_some()
                    && plan.find_phase(&first.phase).is_some_and(|p| p.keep_groups_whole);
                if let Some(window) = &options.window {
                    let untouched = |s: &&crate::plan::Step<A>| state.step(&s.id).attempts == 0;
                    if whole {
                        // A group kept whole starts only when all of it fits; once any of it has
                        // started, it is finished whatever the window says.
                        if steps.iter().all(untouched) {
                            let limit = group
                                .as_ref()
                                .and_then(|g| plan.find_group(g))
                                .map_or(1, |g| g.limit.max(1));
                            let longest = steps
                                .iter()
                                .map(|s| state.expected_duration(&s.kind, s.estimate))
                                .max()
                                .unwrap_or_default();
                            let waves = (steps.len() as u32).div_ceil(limit);
                            let expected = longest.saturating_mul(waves);
                            if let Some(reason) = window.refuses(now, &first.id, expected) {
                                return Ok(Stage::Pause(reason));
                            }
                        }
                    } else if !unfinished.iter().any(|s| state.step(&s.id).in_doubt()) {
                        // Steps that may have happened are resolved whatever the window says:
                        // leaving one half-done is worse than running past the window. Others
                        // are checked one by one as they start.
                        let expected = state.expected_duration(&first.kind, first.estimate);
                        if let Some(reason) = window.refuses(now, &first.id, expected) {
                            return Ok(Stage::Pause(reason));
                        }
                    }
                }
                return Ok(Stage::Execute(Unit {
                    track: Track::Forward,
                    group: group.clone(),
                    steps: unfinished.iter().map(|s| s.id.clone()).collect(),
                    whole,
                }));
            }
        }
    }
    Ok(Stage::Finish)
}

/// How one step's execution ended.
enum StepEnd {
    Done,
    Failed(StepError),
    Stopped,
}

/// What the driver needs to know of a step of either track.
struct Job<A> {
    action: A,
    retry: RetryPolicy,
    kind: String,
    estimate: Duration,
    record: StepState,
}

type Observer<A> = Box<dyn FnMut(&Event<A>, &State<A>)>;

/// The durable workflow engine: a log (the journal), a runner, a clock, and the state folded from
/// the log.
pub struct Engine<A, L, R, C> {
    log: RefCell<L>,
    state: RefCell<State<A>>,
    runner: R,
    clock: C,
    rng: Cell<u64>,
    observer: RefCell<Option<Observer<A>>>,
}

impl<A, L, R, C> std::fmt::Debug for Engine<A, L, R, C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("events", &self.state.borrow().events).finish()
    }
}

impl<A, L, R, C> Engine<A, L, R, C>
where
    A: Serialize + DeserializeOwned + Clone + std::fmt::Debug,
    L: Log<A>,
    R: Runner<A>,
    C: Clock,
{
    /// Opens the engine over a log, folding every event already in it.
    pub fn open(log: L, runner: R, clock: C) -> Result<Self, Error> {
        let events = log.events().map_err(Error::journal)?;
        Ok(Engine {
            state: RefCell::new(State::fold(&events)),
            log: RefCell::new(log),
            runner,
            clock,
            rng: Cell::new(0),
            observer: RefCell::new(None),
        })
    }

    /// Calls `observer` after each event is durable and folded (progress output, tests).
    pub fn on_event(&mut self, observer: impl FnMut(&Event<A>, &State<A>) + 'static) {
        *self.observer.get_mut() = Some(Box::new(observer));
    }

    /// A copy of the folded state.
    pub fn state(&self) -> State<A> {
        self.state.borrow().clone()
    }

    /// The `status` summary.
    pub fn status(&self) -> crate::state::Status {
        self.state.borrow().status()
    }

    /// The runner.
    pub fn runner(&self) -> &R {
        &self.runner
    }

    /// Gives the log, runner and clock back.
    pub fn into_parts(self) -> (L, R, C) {
        (self.log.into_inner(), self.runner, self.clock)
    }

    /// Records the plan: the run begins. Refused when a run is already recorded (resuming never
    /// re-plans) or the plan is invalid.
    pub fn start(&self, plan: Plan<A>) -> Result<(), Error> {
        if let Some(digest) = &self.state.borrow().digest {
            return Err(Error::AlreadyStarted { digest: digest.clone() });
        }
        plan.validate()?;
        let digest = plan.digest();
        self.record(Event::RunStarted(RunStarted {
            version: EVENT_VERSION,
            at: self.clock.now(),
            plan,
            digest,
        }))
    }

    /// Records the approval of `gate` by `by`. Returns `false` when it was already approved.
    pub fn approve(&self, gate: &GateName, by: &str) -> Result<bool, Error> {
        {
            let state = self.state.borrow();
            let plan = state.plan.as_ref().ok_or(Error::NotStarted)?;
            if plan.find_gate(gate).is_none() {
                return Err(Error::UnknownGate(gate.clone()));
            }
            if state.gate_approved(gate) {
                return Ok(false);
            }
        }
        self.record(Event::GateApproved(GateApproved {
            version: EVENT_VERSION,
            at: self.clock.now(),
            gate: gate.clone(),
            by: by.to_owned(),
        }))?;
        Ok(true)
    }

    /// Runs (or resumes: it is the same) until done, a gate, the window, `until`, a failure or
    /// cancellation.
    pub async fn run(&self, options: &RunOptions) -> Result<Outcome, Error> {
        {
            let state = self.state.borrow();
            let plan = state.plan.as_ref().ok_or(Error::NotStarted)?;
            if let Some(rollback) = &state.rollback {
                return Err(if rollback.finished.is_some() {
                    Error::RolledBack
                } else {
                    Error::RollbackInProgress
                });
            }
            if let Some(phase) = &options.until
                && plan.phase_index(phase).is_none()
            {
                return Err(Error::UnknownPhase(phase.clone()));
            }
        }
        self.drive(options).await
    }

    /// Rolls back (or resumes a rollback): the first call derives the rollback from the journal
    /// and records it; it then runs with the same machinery as `run`. Refused after completion.
    pub async fn rollback(&self, options: &RunOptions) -> Result<Outcome, Error> {
        let planned = {
            let state = self.state.borrow();
            if state.plan.is_none() {
                return Err(Error::NotStarted);
            }
            if let Some(at) = state.completed {
                return Err(Error::CompletedNoRollback { at });
            }
            state.rollback.is_some()
        };
        if !planned {
            let steps = self.derive_rollback();
            self.record(Event::RollbackPlanned(RollbackPlanned {
                version: EVENT_VERSION,
                at: self.clock.now(),
                steps,
            }))?;
        }
        self.drive(options).await
    }

    /// The rollback the journal calls for: every forward step that started (done, or possibly
    /// partly done), newest first, asked of the runner, then ordered by rank.
    fn derive_rollback(&self) -> Vec<crate::event::CompStep<A>> {
        let state = self.state.borrow();
        let undos = state
            .started_order
            .iter()
            .rev()
            .filter_map(|id| {
                let step = state.plan_step(id)?;
                let outcome = match &state.step(id).status {
                    crate::state::StepStatus::Succeeded { summary, .. } => Some(summary),
                    _ => None,
                };
                Some(Undo {
                    step: id.clone(),
                    retry: step.retry.clone(),
                    estimate: step.estimate,
                    compensations: self.runner.compensate(id, &step.action, outcome),
                })
            })
            .collect();
        order(undos)
    }

    async fn drive(&self, options: &RunOptions) -> Result<Outcome, Error> {
        self.rng.set(options.jitter_seed);
        let mut stage = Stage::Decide;
        loop {
            stage = self.step(stage, options).await?;
            if let Stage::Stopped(outcome) = stage {
                return Ok(outcome);
            }
        }
    }

    /// Advances the driver by one stage.
    pub async fn step(&self, stage: Stage, options: &RunOptions) -> Result<Stage, Error> {
        match stage {
            Stage::Decide => decide(&self.state.borrow(), options, self.clock.now()),
            Stage::Execute(unit) => self.execute(unit, options).await,
            Stage::AwaitGate(gate) => {
                let reached =
                    self.state.borrow().gates.get(&gate).is_some_and(|g| g.reached.is_some());
                if !reached {
                    self.record(Event::GateReached(GateReached {
                        version: EVENT_VERSION,
                        at: self.clock.now(),
                        gate: gate.clone(),
                    }))?;
                }
                let reason = PauseReason::Gate { gate };
                self.pause(reason.clone())?;
                Ok(Stage::Stopped(Outcome::Paused { reason }))
            }
            Stage::Pause(reason) => {
                self.pause(reason.clone())?;
                Ok(Stage::Stopped(Outcome::of_pause(reason)))
            }
            Stage::Finish => {
                let at = self.clock.now();
                if self.state.borrow().rollback.is_some() {
                    self.record(Event::RolledBack(RolledBack { version: EVENT_VERSION, at }))?;
                    Ok(Stage::Stopped(Outcome::RolledBack))
                } else {
                    self.record(Event::Completed(Completed { version: EVENT_VERSION, at }))?;
                    Ok(Stage::Stopped(Outcome::Completed))
                }
            }
            Stage::Stopped(outcome) => Ok(Stage::Stopped(outcome)),
        }
    }

    fn pause(&self, reason: PauseReason) -> Result<(), Error> {
        self.record(Event::Paused(Paused { version: EVENT_VERSION, at: self.clock.now(), reason }))
    }

    /// Appends an event (durable when this returns), folds it, and tells the observer.
    fn record(&self, event: Event<A>) -> Result<(), Error> {
        self.log.borrow_mut().append(&event).map_err(Error::journal)?;
        let mut state = self.state.borrow_mut();
        state.apply(&event);
        if let Some(observer) = self.observer.borrow_mut().as_mut() {
            observer(&event, &state);
        }
        Ok(())
    }

    /// splitmix64 over the injected seed: the jitter is reproducible.
    fn random(&self) -> u64 {
        let next = self.rng.get().wrapping_add(0x9E37_79B9_7F4A_7C15);
        self.rng.set(next);
        let mut z = next;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn job(&self, track: Track, id: &StepId) -> Result<Job<A>, Error> {
        let state = self.state.borrow();
        let job = match track {
            Track::Forward => state.plan_step(id).map(|s| Job {
                action: s.action.clone(),
                retry: s.retry.clone(),
                kind: s.kind.clone(),
                estimate: s.estimate,
                record: state.step(id).clone(),
            }),
            Track::Rollback => state.rollback.as_ref().and_then(|r| {
                let s = r.steps.iter().find(|s| &s.id == id)?;
                Some(Job {
                    action: s.action.clone(),
                    retry: s.retry.clone(),
                    kind: s.kind.clone(),
                    estimate: s.estimate,
                    record: r.records.get(id).cloned().unwrap_or(StepState {
                        status: crate::state::StepStatus::Pending,
                        attempts: 0,
                    }),
                })
            }),
        };
        job.ok_or_else(|| Error::UnknownStep(id.clone()))
    }

    /// Runs a unit: its steps concurrently up to the group's limit, no new start once the group's
    /// failure cap is hit, the window is too short, or cancellation was asked.
    async fn execute(&self, unit: Unit, options: &RunOptions) -> Result<Stage, Error> {
        let (limit, cap) = {
            let state = self.state.borrow();
            let group = unit
                .group
                .as_ref()
                .and_then(|g| state.plan.as_ref().and_then(|p| p.find_group(g)).cloned());
            group.map_or((1, 1), |g| (g.limit.max(1) as usize, g.max_failures.max(1) as usize))
        };
        let (track, whole) = (unit.track, unit.whole);
        let mut queue: VecDeque<StepId> = unit.steps.into_iter().collect();
        let mut running = FuturesUnordered::new();
        let mut names: BTreeSet<StepId> = BTreeSet::new();
        let mut failures = Vec::new();
        let mut window_stop = None;
        let mut draining = false;
        let mut abandoned = Vec::new();
        let mut drain_timer: Pin<Box<dyn Future<Output = ()> + '_>> =
            Box::pin(std::future::pending());
        loop {
            while !draining
                && window_stop.is_none()
                && failures.len() < cap
                && running.len() < limit
            {
                if options.cancel.is_cancelled() {
                    draining = true;
                    drain_timer = Box::pin(self.clock.sleep(options.drain));
                    break;
                }
                let Some(id) = queue.pop_front() else { break };
                let job = self.job(track, &id)?;
                if let (Some(window), false, false) =
                    (&options.window, whole, job.record.in_doubt())
                {
                    let expected = self.state.borrow().expected_duration(&job.kind, job.estimate);
                    if let Some(reason) = window.refuses(self.clock.now(), &id, expected) {
                        window_stop = Some(reason);
                        break;
                    }
                }
                names.insert(id.clone());
                running.push(async move {
                    let end = self.run_step(track, &id, job, options).await;
                    (id, end)
                });
            }
            if running.is_empty() {
                break;
            }
            tokio::select! {
                Some((id, end)) = running.next() => {
                    names.remove(&id);
                    match end? {
                        StepEnd::Done | StepEnd::Stopped => {}
                        StepEnd::Failed(error) => failures.push(Failure { step: id, error }),
                    }
                }
                () = options.cancel.cancelled(), if !draining => {
                    draining = true;
                    drain_timer = Box::pin(self.clock.sleep(options.drain));
                }
                () = &mut drain_timer, if draining => {
                    // The bound passed: the steps still running are dropped mid-flight. Their
                    // `StepStarted` is durable, so the next run resolves them by postcondition.
                    abandoned = names.iter().cloned().collect();
                    break;
                }
            }
        }
        drop(running);
        Ok(if !failures.is_empty() {
            Stage::Pause(PauseReason::Failed { failures })
        } else if draining {
            Stage::Pause(PauseReason::Cancelled { abandoned })
        } else if let Some(reason) = window_stop {
            Stage::Pause(reason)
        } else {
            Stage::Decide
        })
    }

    /// One step with its retries. A step that may have happened is checked first.
    async fn run_step(
        &self,
        track: Track,
        id: &StepId,
        job: Job<A>,
        options: &RunOptions,
    ) -> Result<StepEnd, Error> {
        let Job { action, retry, record, .. } = job;
        let mut attempt = record.attempts;
        let deadline =
            retry.deadline.map(|d| self.clock.now().saturating_add(d).unwrap_or(Timestamp::MAX));
        let mut tries = 0u32;
        let mut in_doubt = record.in_doubt();
        loop {
            let result = if in_doubt {
                in_doubt = false;
                match self.runner.check(id, &action).await {
                    Ok(Some(summary)) => {
                        self.record(recovered(track, id, attempt, summary, self.clock.now()))?;
                        return Ok(StepEnd::Done);
                    }
                    // Not done: apply again, now.
                    Ok(None) => continue,
                    // The check itself failed: that counts as a failed try of this attempt.
                    Err(error) => Err(error),
                }
            } else {
                if options.cancel.is_cancelled() {
                    return Ok(StepEnd::Stopped);
                }
                attempt += 1;
                self.record(started(track, id, attempt, self.clock.now()))?;
                // The start is durable: only now may the side effect begin.
                self.runner.apply(id, &action).await
            };
            tries += 1;
            match result {
                Ok(summary) => {
                    self.record(succeeded(track, id, attempt, summary, self.clock.now()))?;
                    return Ok(StepEnd::Done);
                }
                Err(error) => {
                    self.record(failed(track, id, attempt, error.clone(), self.clock.now()))?;
                    if !error.retryable || tries >= retry.attempts {
                        return Ok(StepEnd::Failed(error));
                    }
                    let delay = retry.delay(tries, self.random());
                    let next = self.clock.now().saturating_add(delay).unwrap_or(Timestamp::MAX);
                    if deadline.is_some_and(|d| next > d) {
                        return Ok(StepEnd::Failed(error));
                    }
                    tokio::select! {
                        () = self.clock.sleep(delay) => {}
                        () = options.cancel.cancelled() => return Ok(StepEnd::Stopped),
                    }
                }
            }
        }
    }
}

fn started<A>(track: Track, step: &StepId, attempt: u32, at: Timestamp) -> Event<A> {
    let step = step.clone();
    match track {
        Track::Forward => {
            Event::StepStarted(StepStarted { version: EVENT_VERSION, at, step, attempt })
        }
        Track::Rollback => Event::CompensationStarted(CompensationStarted {
            version: EVENT_VERSION,
            at,
            step,
            attempt,
        }),
    }
}

fn succeeded<A>(
    track: Track,
    step: &StepId,
    attempt: u32,
    summary: Summary,
    at: Timestamp,
) -> Event<A> {
    let step = step.clone();
    match track {
        Track::Forward => Event::StepSucceeded(StepSucceeded {
            version: EVENT_VERSION,
            at,
            step,
            attempt,
            summary,
        }),
        Track::Rollback => Event::CompensationSucceeded(CompensationSucceeded {
            version: EVENT_VERSION,
            at,
            step,
            attempt,
            summary,
            recovered: false,
        }),
    }
}

fn recovered<A>(
    track: Track,
    step: &StepId,
    attempt: u32,
    summary: Summary,
    at: Timestamp,
) -> Event<A> {
    let step = step.clone();
    match track {
        Track::Forward => {
            Event::StepRecovered(StepRecovered { version: EVENT_VERSION, at, step, summary })
        }
        Track::Rollback => Event::CompensationSucceeded(CompensationSucceeded {
            version: EVENT_VERSION,
            at,
            step,
            attempt,
            summary,
            recovered: true,
        }),
    }
}

fn failed<A>(
    track: Track,
    step: &StepId,
    attempt: u32,
    error: StepError,
    at: Timestamp,
) -> Event<A> {
    let step = step.clone();
    match track {
        Track::Forward => {
            Event::StepFailed(StepFailed { version: EVENT_VERSION, at, step, attempt, error })
        }
        Track::Rollback => Event::CompensationFailed(CompensationFailed {
            version: EVENT_VERSION,
            at,
            step,
            attempt,
            error,
        }),
    }
}
