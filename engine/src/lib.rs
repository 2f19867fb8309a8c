//! A generic durable workflow engine: a plan of steps, past-tense events in a journal, a state
//! that is a fold of them, and a driver that runs steps through a [`Runner`].
//!
//! The engine does no I/O of its own beyond the [`Log`] it is given (the journal), and knows
//! nothing of Kubernetes: the rotation domain implements [`Runner`] for its action type. Clock
//! and randomness are injected ([`Clock`], [`RunOptions::jitter_seed`]).
//!
//! - A [`Plan`] is an ordered list of [`Step`]s and [`Gate`]s; steps of a parallel group run
//!   concurrently up to its limit, with a cap on failures. It is recorded when a run starts, with
//!   its digest; resuming never re-plans.
//! - [`Event`]s are versioned facts; [`State::apply`] folds them and decides nothing.
//! - [`Engine::run`] advances the documented [`Stage`] enum with [`Engine::step`]; the next stage
//!   is chosen by the pure [`decide`]. A step's side effect starts only after its `StepStarted`
//!   record is durable; a step with no outcome after a crash is checked, then recovered or applied
//!   again. Running again resumes; there is no separate mode.
//! - [`Engine::rollback`] derives compensations from the journal, orders them in the reverse order
//!   of rank with the follow-ups they need, records them, and runs them with the same machinery.
//!
//! ```
//! use engine::{Engine, MemoryLog, Outcome, Plan, RunOptions, Runner, Step, StepError, StepId,
//!              Summary, SystemClock, Compensation};
//!
//! struct Echo;
//! impl Runner<String> for Echo {
//!     async fn check(&self, _: &StepId, _: &String) -> Result<Option<Summary>, StepError> {
//!         Ok(None)
//!     }
//!     async fn apply(&self, _: &StepId, action: &String) -> Result<Summary, StepError> {
//!         Ok(Summary::new().with("said", action.clone()))
//!     }
//!     fn compensate(&self, _: &StepId, _: &String, _: Option<&Summary>) -> Vec<Compensation<String>> {
//!         Vec::new()
//!     }
//! }
//!
//! let plan = Plan::new(["greet"]).step(Step::new("hello", "greet", "say", "hello".to_string()));
//! let engine = Engine::open(MemoryLog::new(), Echo, SystemClock).unwrap();
//! engine.start(plan).unwrap();
//! let rt = tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap();
//! let outcome = rt.block_on(engine.run(&RunOptions::default())).unwrap();
//! assert_eq!(outcome, Outcome::Completed);
//! ```

mod driver;
mod error;
mod event;
mod plan;
mod rollback;
mod runner;
mod state;

pub use driver::{Engine, Outcome, RunOptions, Stage, Track, Unit, Window, decide};
pub use error::Error;
pub use event::{
    CompStep, CompensationFailed, CompensationStarted, CompensationSucceeded, Completed,
    EVENT_VERSION, Event, Failure, GateApproved, GateReached, PauseReason, Paused, RollbackPlanned,
    RolledBack, RunStarted, StepError, StepFailed, StepRecovered, StepStarted, StepSucceeded,
    Summary,
};
pub use plan::{
    Gate, GateName, Group, GroupId, Item, Phase, PhaseName, Plan, PlanError, RetryPolicy, Step,
    StepId,
};
pub use rollback::{Undo, order as order_compensations};
pub use runner::{
    Cancel, Canceller, Clock, Compensation, FollowUp, Log, MemoryLog, Refused, Runner, SystemClock,
    VirtualClock,
};
pub use state::{Condition, GateState, Next, RollbackState, State, Status, StepState, StepStatus};
