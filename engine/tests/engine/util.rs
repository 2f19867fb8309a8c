//! A fake world for the engine's tests: an in-memory model of files and loaded configuration, a
//! runner that applies actions to it, and a log that can "crash" at any numbered point.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::rc::Rc;
use std::time::Duration;

use engine::{
    Compensation, Engine, Event, FollowUp, Log, Refused, RetryPolicy, Runner, Step, StepError,
    StepId, Summary, VirtualClock,
};
use serde::{Deserialize, Serialize};

/// The fake action: set a key ("component/file") from one value to another, or restart a
/// component so it loads its keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Act {
    Set { key: String, from: u32, to: u32 },
    Restart { component: String },
}

pub fn component_of(key: &str) -> String {
    key.split('/').next().unwrap_or(key).to_owned()
}

/// The model and the fault injection, shared by the runner and the log.
#[derive(Default)]
pub struct World {
    /// What is on disk.
    pub disk: RefCell<BTreeMap<String, u32>>,
    /// What each component loaded at its last restart.
    pub loaded: RefCell<BTreeMap<String, BTreeMap<String, u32>>>,
    /// The durable events.
    pub events: RefCell<Vec<Event<Act>>>,
    /// Crash points passed so far, and the one to die at.
    pub points: Cell<u64>,
    pub crash_at: Cell<Option<u64>>,
    pub dead: Cell<bool>,
    /// Retryable failures still to inject, by step id.
    pub fail_first: RefCell<BTreeMap<StepId, u32>>,
    /// Steps that fail with a terminal error.
    pub terminal: RefCell<BTreeSet<StepId>>,
    /// Steps whose apply takes this long (virtual time).
    pub hold: RefCell<BTreeMap<StepId, Duration>>,
    /// Steps whose apply never returns.
    pub block: RefCell<BTreeSet<StepId>>,
    /// Effects applied, by step id.
    pub applied: RefCell<BTreeMap<StepId, u32>>,
    /// Runner calls in order: "check:<id>", "apply:<id>".
    pub calls: RefCell<Vec<String>>,
    /// Broken rules seen by the runner.
    pub violations: RefCell<Vec<String>>,
    /// Compensations asked for, with whether an outcome was given.
    pub compensated: RefCell<Vec<(StepId, bool)>>,
    /// Trust rank of each component.
    pub ranks: RefCell<BTreeMap<String, u32>>,
    pub running: Cell<u32>,
    pub max_running: Cell<u32>,
}

impl World {
    pub fn new(keys: &[&str]) -> Rc<World> {
        let world = World::default();
        for key in keys {
            world.disk.borrow_mut().insert((*key).to_owned(), 0);
        }
        world.restart_all();
        Rc::new(world)
    }

    /// Every component loads what is on disk.
    pub fn restart_all(&self) {
        let components: BTreeSet<String> =
            self.disk.borrow().keys().map(|k| component_of(k)).collect();
        for c in components {
            self.restart(&c);
        }
    }

    fn restart(&self, component: &str) {
        let view = self.view(component);
        self.loaded.borrow_mut().insert(component.to_owned(), view);
    }

    fn view(&self, component: &str) -> BTreeMap<String, u32> {
        self.disk
            .borrow()
            .iter()
            .filter(|(k, _)| component_of(k) == component)
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// Passes one crash point; true when the world is (now) dead.
    pub fn point(&self) -> bool {
        if self.dead.get() {
            return true;
        }
        let n = self.points.get() + 1;
        self.points.set(n);
        if self.crash_at.get() == Some(n) {
            self.dead.set(true);
        }
        self.dead.get()
    }

    /// After a crash: the process is back, nothing else changed.
    pub fn revive(&self) {
        self.dead.set(false);
        self.crash_at.set(None);
    }

    fn holds(&self, action: &Act) -> bool {
        match action {
            Act::Set { key, to, .. } => self.disk.borrow().get(key) == Some(to),
            Act::Restart { component } => {
                self.loaded.borrow().get(component) == Some(&self.view(component))
            }
        }
    }

    /// Whether the last event about `id` is its start (the start is durable, no outcome yet).
    fn started_durably(&self, id: &StepId) -> bool {
        let events = self.events.borrow();
        let last = events.iter().rev().find(|e| e.step() == Some(id));
        matches!(last, Some(Event::StepStarted(_) | Event::CompensationStarted(_)))
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.borrow().clone()
    }

    pub fn names(&self) -> Vec<&'static str> {
        self.events.borrow().iter().map(Event::name).collect()
    }
}

/// The runner over the fake world.
pub struct FakeRunner(pub Rc<World>);

impl Runner<Act> for FakeRunner {
    async fn check(&self, step: &StepId, action: &Act) -> Result<Option<Summary>, StepError> {
        self.0.calls.borrow_mut().push(format!("check:{step}"));
        Ok(self.0.holds(action).then(|| Summary::new().with("checked", "true")))
    }

    async fn apply(&self, step: &StepId, action: &Act) -> Result<Summary, StepError> {
        let world = &self.0;
        world.calls.borrow_mut().push(format!("apply:{step}"));
        if !world.started_durably(step) {
            world
                .violations
                .borrow_mut()
                .push(format!("{step}: applied before its start was durable"));
        }
        let hold = world.hold.borrow().get(step).copied();
        world.running.set(world.running.get() + 1);
        world.max_running.set(world.max_running.get().max(world.running.get()));
        if let Some(hold) = hold {
            tokio::time::sleep(hold).await;
        }
        if world.block.borrow().contains(step) {
            std::future::pending::<()>().await;
        }
        world.running.set(world.running.get() - 1);
        if world.point() {
            return Err(StepError::retryable("crashed before the effect"));
        }
        if let Some(n) = world.fail_first.borrow_mut().get_mut(step).filter(|n| **n > 0) {
            *n -= 1;
            return Err(StepError::retryable(format!("{step}: transient failure")));
        }
        if world.terminal.borrow().contains(step) {
            return Err(StepError::terminal(format!("{step}: broken for good")));
        }
        if world.applied.borrow().get(step).copied().unwrap_or(0) > 0 && world.holds(action) {
            world
                .violations
                .borrow_mut()
                .push(format!("{step}: applied again while its postcondition held"));
        }
        match action {
            Act::Set { key, to, .. } => {
                world.disk.borrow_mut().insert(key.clone(), *to);
            }
            Act::Restart { component } => world.restart(component),
        }
        *world.applied.borrow_mut().entry(step.clone()).or_default() += 1;
        world.point();
        Ok(Summary::new().with("applied", step.as_str()))
    }

    fn compensate(
        &self,
        step: &StepId,
        action: &Act,
        outcome: Option<&Summary>,
    ) -> Vec<Compensation<Act>> {
        self.0.compensated.borrow_mut().push((step.clone(), outcome.is_some()));
        match action {
            Act::Set { key, from, to } => {
                let component = component_of(key);
                vec![Compensation {
                    action: Act::Set { key: key.clone(), from: *to, to: *from },
                    kind: "restore".into(),
                    rank: self.0.ranks.borrow().get(&component).copied().unwrap_or(0),
                    follow_up: Some(FollowUp {
                        key: format!("restart:{component}"),
                        action: Act::Restart { component },
                        kind: "restart".into(),
                    }),
                }]
            }
            Act::Restart { .. } => Vec::new(),
        }
    }
}

/// The log over the fake world: every append is a crash point.
pub struct CrashLog(pub Rc<World>);

impl Log<Act> for CrashLog {
    type Error = Refused;

    fn append(&mut self, event: &Event<Act>) -> Result<(), Refused> {
        if self.0.point() {
            return Err(Refused);
        }
        self.0.events.borrow_mut().push(event.clone());
        Ok(())
    }

    fn events(&self) -> Result<Vec<Event<Act>>, Refused> {
        Ok(self.0.events.borrow().clone())
    }
}

pub type TestEngine = Engine<Act, CrashLog, FakeRunner, VirtualClock>;

pub fn t0() -> jiff::Timestamp {
    "2026-12-05T02:00:00Z".parse().unwrap()
}

/// An engine over the world, at `t0()` on tokio's (paused) clock. Call inside the runtime.
pub fn engine(world: &Rc<World>) -> TestEngine {
    Engine::open(
        CrashLog(world.clone()),
        FakeRunner(world.clone()),
        VirtualClock::starting_at(t0()),
    )
    .unwrap()
}

/// A current-thread runtime in paused time: sleeps advance virtual time instantly.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap()
}

/// A step that sets `key` from 0 to `to`, with quick retries.
pub fn set(id: &str, phase: &str, key: &str, to: u32) -> Step<Act> {
    Step::new(id, phase, "set", Act::Set { key: key.into(), from: 0, to })
        .retry(quick_retry())
        .estimate(Duration::from_secs(60))
}

pub fn quick_retry() -> RetryPolicy {
    RetryPolicy {
        attempts: 3,
        backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(10),
        jitter_percent: 20,
        deadline: None,
    }
}

pub fn sid(s: &str) -> StepId {
    StepId::from(s)
}

/// Event builders for given/when/then tests; `secs` is seconds after `t0()`.
pub mod given {
    use super::*;
    use engine::*;

    pub fn at(secs: i64) -> jiff::Timestamp {
        t0().checked_add(jiff::SignedDuration::from_secs(secs)).unwrap()
    }

    pub fn run_started(plan: Plan<Act>) -> Event<Act> {
        let digest = plan.digest();
        Event::RunStarted(RunStarted { version: EVENT_VERSION, at: at(0), plan, digest })
    }

    pub fn started(id: &str, attempt: u32, secs: i64) -> Event<Act> {
        Event::StepStarted(StepStarted {
            version: EVENT_VERSION,
            at: at(secs),
            step: sid(id),
            attempt,
        })
    }

    pub fn succeeded(id: &str, attempt: u32, secs: i64) -> Event<Act> {
        Event::StepSucceeded(StepSucceeded {
            version: EVENT_VERSION,
            at: at(secs),
            step: sid(id),
            attempt,
            summary: Summary::new().with("digest", "sha256:00"),
        })
    }

    pub fn failed(id: &str, attempt: u32, secs: i64, retryable: bool) -> Event<Act> {
        Event::StepFailed(StepFailed {
            version: EVENT_VERSION,
            at: at(secs),
            step: sid(id),
            attempt,
            error: StepError { message: "boom".into(), retryable },
        })
    }

    pub fn done(id: &str) -> Vec<Event<Act>> {
        vec![started(id, 1, 0), succeeded(id, 1, 1)]
    }

    pub fn approved(gate: &str) -> Event<Act> {
        Event::GateApproved(GateApproved {
            version: EVENT_VERSION,
            at: at(0),
            gate: gate.into(),
            by: "alice".into(),
        })
    }

    pub fn paused(reason: PauseReason) -> Event<Act> {
        Event::Paused(Paused { version: EVENT_VERSION, at: at(0), reason })
    }

    pub fn completed() -> Event<Act> {
        Event::Completed(Completed { version: EVENT_VERSION, at: at(0) })
    }
}
