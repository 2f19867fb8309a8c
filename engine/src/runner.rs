//! The outside world the engine is given: the runner of actions, the clock, cancellation and the log.

use std::cell::RefCell;
use std::future::Future;
use std::rc::Rc;
use std::time::Duration;

use jiff::Timestamp;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;

use crate::event::{Event, StepError, Summary};
use crate::plan::StepId;

/// Carries out actions. Implemented by the domain (`actions`); the engine only sequences calls.
///
/// `check` and `apply` must be idempotent in this sense: after `apply` succeeded, `check` says
/// the postcondition holds; `apply` on a half-done action finishes it.
// The engine drives all futures of a run in one task, so no `Send` bound is wanted on them.
#[allow(async_fn_in_trait)]
pub trait Runner<A> {
    /// Does the action's postcondition already hold? `Some(summary)` when it does. Called for a
    /// step that started and has no recorded outcome (a crash): it "may have happened".
    async fn check(&self, step: &StepId, action: &A) -> Result<Option<Summary>, StepError>;

    /// Carries the action out; returns what it observed (digests, values; never key material).
    async fn apply(&self, step: &StepId, action: &A) -> Result<Summary, StepError>;

    /// What undoes `action`. `outcome` is its recorded summary, or `None` when it started and
    /// has no successful outcome (it may have partly happened). Empty when nothing is to undo.
    fn compensate(
        &self,
        step: &StepId,
        action: &A,
        outcome: Option<&Summary>,
    ) -> Vec<Compensation<A>>;
}

/// One way of undoing a step, with what the engine needs to order it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compensation<A> {
    /// The undoing action (such as "restore this file from its backup").
    pub action: A,
    /// The key for expected durations.
    pub kind: String,
    /// Rank in the order the forward run established (the runner's meaning; for kubeca, the
    /// order of trust): rollback undoes the highest rank first; equal ranks are undone newest
    /// first.
    pub rank: u32,
    /// When what the compensation restored takes effect only through another action (the
    /// runner's meaning; for kubeca, a restart of what loads a restored file): that follow-up.
    /// The engine runs it after every compensation of the same rank that needs it, once per key.
    pub follow_up: Option<FollowUp<A>>,
}

/// The action that makes what compensations restored take effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowUp<A> {
    /// Identifies what it acts on, and names its rollback step (`<key>@<rank>`): one follow-up
    /// per key and rank.
    pub key: String,
    /// The action.
    pub action: A,
    /// The key for expected durations.
    pub kind: String,
}

/// The clock: the time of facts and the waits between attempts.
pub trait Clock {
    /// Now.
    fn now(&self) -> Timestamp;
    /// Waits `duration`.
    fn sleep(&self, duration: Duration) -> impl Future<Output = ()>;
}

/// The wall clock, with tokio's timer for waits.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> {
        tokio::time::sleep(duration)
    }
}

/// A clock that starts at a given time and follows tokio's clock. Under `tokio::time::pause()`
/// time advances only when every task waits, so a test sees hours pass without sleeping.
#[derive(Debug, Clone, Copy)]
pub struct VirtualClock {
    start: Timestamp,
    origin: tokio::time::Instant,
}

impl VirtualClock {
    /// Starting now (tokio's now) at `start`.
    pub fn starting_at(start: Timestamp) -> VirtualClock {
        VirtualClock { start, origin: tokio::time::Instant::now() }
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> Timestamp {
        let elapsed = tokio::time::Instant::now().duration_since(self.origin);
        self.start.saturating_add(elapsed).unwrap_or(Timestamp::MAX)
    }

    fn sleep(&self, duration: Duration) -> impl Future<Output = ()> {
        tokio::time::sleep(duration)
    }
}

/// The caller's side of cancellation (signal handlers call [`Canceller::cancel`]).
#[derive(Debug)]
pub struct Canceller(watch::Sender<bool>);

impl Canceller {
    /// Asks the run to stop: no new step starts; running ones get the drain bound to finish.
    pub fn cancel(&self) {
        self.0.send_replace(true);
    }
}

/// The run's side of cancellation.
#[derive(Debug, Clone)]
pub struct Cancel(watch::Receiver<bool>);

impl Cancel {
    /// A linked pair.
    pub fn new() -> (Canceller, Cancel) {
        let (tx, rx) = watch::channel(false);
        (Canceller(tx), Cancel(rx))
    }

    /// Never cancelled.
    pub fn never() -> Cancel {
        Cancel::new().1
    }

    /// Whether cancellation was asked.
    pub fn is_cancelled(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once cancellation is asked (never, when the canceller is gone unused).
    pub async fn cancelled(&self) {
        let mut rx = self.0.clone();
        if rx.wait_for(|cancelled| *cancelled).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Default for Cancel {
    fn default() -> Cancel {
        Cancel::never()
    }
}

/// Where events go: durable before `append` returns. Implemented for the journal.
pub trait Log<A> {
    /// The log's error.
    type Error: std::error::Error + Send + Sync + 'static;
    /// Appends one event; returns once it is durable.
    fn append(&mut self, event: &Event<A>) -> Result<(), Self::Error>;
    /// Every event, in order.
    fn events(&self) -> Result<Vec<Event<A>>, Self::Error>;
}

impl<A: Serialize + DeserializeOwned> Log<A> for journal::Journal<Event<A>> {
    type Error = journal::Error;

    fn append(&mut self, event: &Event<A>) -> Result<(), journal::Error> {
        journal::Journal::append(self, event).map(|_| ())
    }

    fn events(&self) -> Result<Vec<Event<A>>, journal::Error> {
        Ok(self.replay()?.into_iter().map(|r| r.event).collect())
    }
}

/// An in-memory log for tests: shared, so a test keeps the events when the engine is dropped
/// (a simulated crash), and able to refuse appends from a given point on.
#[derive(Debug)]
pub struct MemoryLog<A> {
    inner: Rc<RefCell<MemoryInner<A>>>,
}

#[derive(Debug)]
struct MemoryInner<A> {
    events: Vec<Event<A>>,
    refuse: bool,
}

impl<A> Clone for MemoryLog<A> {
    fn clone(&self) -> Self {
        MemoryLog { inner: Rc::clone(&self.inner) }
    }
}

impl<A> Default for MemoryLog<A> {
    fn default() -> Self {
        MemoryLog {
            inner: Rc::new(RefCell::new(MemoryInner { events: Vec::new(), refuse: false })),
        }
    }
}

impl<A: Clone> MemoryLog<A> {
    /// An empty log.
    pub fn new() -> MemoryLog<A> {
        MemoryLog::default()
    }

    /// A log holding these events.
    pub fn with(events: Vec<Event<A>>) -> MemoryLog<A> {
        let log = MemoryLog::default();
        log.inner.borrow_mut().events = events;
        log
    }

    /// A copy of the events.
    pub fn snapshot(&self) -> Vec<Event<A>> {
        self.inner.borrow().events.clone()
    }

    /// From now on, appends fail (as when the process died) — or succeed again.
    pub fn refuse_appends(&self, refuse: bool) {
        self.inner.borrow_mut().refuse = refuse;
    }
}

/// The in-memory log refused an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the in-memory log refuses appends (simulated crash)")]
pub struct Refused;

impl<A: Clone> Log<A> for MemoryLog<A> {
    type Error = Refused;

    fn append(&mut self, event: &Event<A>) -> Result<(), Refused> {
        let mut inner = self.inner.borrow_mut();
        if inner.refuse {
            return Err(Refused);
        }
        inner.events.push(event.clone());
        Ok(())
    }

    fn events(&self) -> Result<Vec<Event<A>>, Refused> {
        Ok(self.snapshot())
    }
}
