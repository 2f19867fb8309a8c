//! The journal's events: past-tense, versioned facts, one struct per variant.
//!
//! Every struct carries `version` ([`EVENT_VERSION`] when written) and `at`, the injected clock's
//! time of the fact. The encoding is postcard inside the journal's envelope, so fields are only
//! ever added as new variants or new versions, never reordered.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::plan::{GateName, PhaseName, Plan, RetryPolicy, StepId};

/// The version of every event struct this build writes.
pub const EVENT_VERSION: u16 = 1;

/// What a step observed: digests and values, never key material (it goes into audit exports).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Summary(pub BTreeMap<String, String>);

impl Summary {
    /// An empty summary.
    pub fn new() -> Summary {
        Summary::default()
    }

    /// With one more entry.
    pub fn with(mut self, key: impl Into<String>, value: impl Into<String>) -> Summary {
        self.0.insert(key.into(), value.into());
        self
    }
}

/// Why an attempt failed, as the runner reported it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{message}")]
pub struct StepError {
    /// What went wrong, naming the node, file or object.
    pub message: String,
    /// Whether trying again may help (a node unreachable) or not (a file is not what it should be).
    pub retryable: bool,
}

impl StepError {
    /// An error worth retrying.
    pub fn retryable(message: impl Into<String>) -> StepError {
        StepError { message: message.into(), retryable: true }
    }

    /// An error that retrying will not fix.
    pub fn terminal(message: impl Into<String>) -> StepError {
        StepError { message: message.into(), retryable: false }
    }
}

/// One failed step, in a pause reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// The step (or compensation).
    pub step: StepId,
    /// Its last error.
    pub error: StepError,
}

/// Why a run stopped before its end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PauseReason {
    /// A gate is waiting for its approval.
    Gate {
        /// The gate.
        gate: GateName,
    },
    /// The maintenance window is closed.
    WindowClosed {
        /// When it opens, if it is still ahead; `None` once it has ended.
        opens: Option<Timestamp>,
    },
    /// The next step would likely run past the window's end.
    WindowTooShort {
        /// The step (or first step of a group kept whole).
        step: StepId,
        /// How long it is expected to take.
        expected: Duration,
        /// When the window ends.
        ends: Timestamp,
    },
    /// Steps failed (retries spent, or an error retrying cannot fix).
    Failed {
        /// Each failed step with its last error.
        failures: Vec<Failure>,
    },
    /// The caller asked the run to stop (SIGINT/SIGTERM).
    Cancelled {
        /// Steps that were still running when the drain bound passed; they may have happened.
        abandoned: Vec<StepId>,
    },
    /// Every step up to and including the `until` phase is done.
    Until {
        /// The phase.
        phase: PhaseName,
    },
}

impl fmt::Display for PauseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PauseReason::Gate { gate } => write!(f, "waiting for gate {gate} to be approved"),
            PauseReason::WindowClosed { opens: Some(at) } => {
                write!(f, "the maintenance window is not open yet (opens {at})")
            }
            PauseReason::WindowClosed { opens: None } => {
                write!(f, "the maintenance window has ended")
            }
            PauseReason::WindowTooShort { step, expected, ends } => write!(
                f,
                "step {step} is expected to take {}s and would run past the window's end at {ends}",
                expected.as_secs()
            ),
            PauseReason::Failed { failures } => {
                f.write_str("failed: ")?;
                for (i, failure) in failures.iter().enumerate() {
                    if i > 0 {
                        f.write_str("; ")?;
                    }
                    write!(f, "step {}: {}", failure.step, failure.error)?;
                }
                Ok(())
            }
            PauseReason::Cancelled { abandoned } if abandoned.is_empty() => {
                f.write_str("stopped by the operator")
            }
            PauseReason::Cancelled { abandoned } => {
                let names: Vec<&str> = abandoned.iter().map(StepId::as_str).collect();
                write!(
                    f,
                    "stopped by the operator while {} ran (may have happened)",
                    names.join(", ")
                )
            }
            PauseReason::Until { phase } => write!(f, "phase {phase} is done, as asked"),
        }
    }
}

/// One step of a rollback: a compensation, or the follow-up that makes what the compensations
/// before it restored take effect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompStep<A> {
    /// Stable identity within the rollback (`undo:<step>`, `<follow-up key>@<rank>`).
    pub id: StepId,
    /// The forward step it undoes; `None` for a follow-up.
    pub undoes: Option<StepId>,
    /// What to do; the runner interprets it.
    pub action: A,
    /// The key for expected durations.
    pub kind: String,
    /// The plan's estimate.
    pub estimate: Duration,
    /// Its retry policy (the undone step's).
    pub retry: RetryPolicy,
    /// Its rank (rollback runs the highest first). Serialized as `trust`, its name when the
    /// first exports were made: an export re-renders each record to verify it, so a changed
    /// name would make every older export of a rollback fail `journal verify --export`.
    #[serde(rename = "trust")]
    pub rank: u32,
}

/// A run began with this plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunStarted<A> {
    /// Event version.
    pub version: u16,
    /// When.
    pub at: Timestamp,
    /// The plan; resuming runs exactly this.
    pub plan: Plan<A>,
    /// [`Plan::digest`] at the time.
    pub digest: String,
}

/// An attempt of a step began; its side effect starts only after this is durable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepStarted {
    /// Event version.
    pub version: u16,
    /// When.
    pub at: Timestamp,
    /// The step.
    pub step: StepId,
    /// Attempt number, from 1, counted across runs.
    pub attempt: u32,
}

/// An attempt of a step succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepSucceeded {
    /// Event version.
    pub version: u16,
    /// When.
    pub at: Timestamp,
    /// The step.
    pub step: StepId,
    /// The attempt.
    pub attempt: u32,
    /// What it observed.
    pub summary: Summary,
}

/// An attempt of a step failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepFailed {
    /// Event version.
    pub version: u16,
    /// When.
    pub at: Timestamp,
    /// The step.
    pub step: StepId,
    /// The attempt.
    pub attempt: u32,
    /// The error.
    pub error: StepError,
}

/// A step that had started with no outcome recorded (a crash) was found already done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecovered {
    /// Event version.
    pub version: u16,
    /// When.
    pub at: Timestamp,
    /// The step.
    pub step: StepId,
    /// What its postcondition check observed.
    pub summary: Summary,
}

/// The run reached a gate that is not approved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateReached {
    /// Event version.
    pub version: u16,
    /// When.
    pub at: Timestamp,
    /// The gate.
    pub gate: GateName,
}

/// A gate was approved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GateApproved {
    /// Event version.
    pub version: u16,
    /// When.
    pub at: Timestamp,
    /// The gate.
    pub gate: GateName,
    /// Who approved it.
    pub by: String,
}

/// The run stopped before its end; running again continues it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paused {
    /// Event version.
    pub version: u16,
    /// When.
    pub at: Timestamp,
    /// Why.
    pub reason: PauseReason,
}

/// A rollback was derived from what the journal says was done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollbackPlanned<A> {
    /// Event version.
    pub version: u16,
    /// When.
    pub at: Timestamp,
    /// Its steps, in the order they run.
    pub steps: Vec<CompStep<A>>,
}

/// An attempt of a rollback step began.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompensationStarted {
    /// Event version.
    pub version: u16,
    /// When.
    pub at: Timestamp,
    /// The rollback step.
    pub step: StepId,
    /// Attempt number, from 1.
    pub attempt: u32,
}

/// A rollback step succeeded (or, after a crash, was found already done).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompensationSucceeded {
    /// Event version.
    pub version: u16,
    /// When.
    pub at: Timestamp,
    /// The rollback step.
    pub step: StepId,
    /// The attempt.
    pub attempt: u32,
    /// What it observed.
    pub summary: Summary,
    /// Found done by its postcondition check after a crash, not applied by this attempt.
    pub recovered: bool,
}

/// An attempt of a rollback step failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CompensationFailed {
    /// Event version.
    pub version: u16,
    /// When.
    pub at: Timestamp,
    /// The rollback step.
    pub step: StepId,
    /// The attempt.
    pub attempt: u32,
    /// The error.
    pub error: StepError,
}

/// Every step of the plan is done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Completed {
    /// Event version.
    pub version: u16,
    /// When.
    pub at: Timestamp,
}

/// Every rollback step is done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolledBack {
    /// Event version.
    pub version: u16,
    /// When.
    pub at: Timestamp,
}

/// A fact in the journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)] // each variant is its struct, documented above
pub enum Event<A> {
    RunStarted(RunStarted<A>),
    StepStarted(StepStarted),
    StepSucceeded(StepSucceeded),
    StepFailed(StepFailed),
    StepRecovered(StepRecovered),
    GateReached(GateReached),
    GateApproved(GateApproved),
    Paused(Paused),
    RollbackPlanned(RollbackPlanned<A>),
    CompensationStarted(CompensationStarted),
    CompensationSucceeded(CompensationSucceeded),
    CompensationFailed(CompensationFailed),
    Completed(Completed),
    RolledBack(RolledBack),
}

impl<A> Event<A> {
    /// The variant's name, as in the audit export.
    pub fn name(&self) -> &'static str {
        match self {
            Event::RunStarted(_) => "RunStarted",
            Event::StepStarted(_) => "StepStarted",
            Event::StepSucceeded(_) => "StepSucceeded",
            Event::StepFailed(_) => "StepFailed",
            Event::StepRecovered(_) => "StepRecovered",
            Event::GateReached(_) => "GateReached",
            Event::GateApproved(_) => "GateApproved",
            Event::Paused(_) => "Paused",
            Event::RollbackPlanned(_) => "RollbackPlanned",
            Event::CompensationStarted(_) => "CompensationStarted",
            Event::CompensationSucceeded(_) => "CompensationSucceeded",
            Event::CompensationFailed(_) => "CompensationFailed",
            Event::Completed(_) => "Completed",
            Event::RolledBack(_) => "RolledBack",
        }
    }

    /// When the fact happened (injected clock).
    pub fn at(&self) -> Timestamp {
        match self {
            Event::RunStarted(e) => e.at,
            Event::StepStarted(e) => e.at,
            Event::StepSucceeded(e) => e.at,
            Event::StepFailed(e) => e.at,
            Event::StepRecovered(e) => e.at,
            Event::GateReached(e) => e.at,
            Event::GateApproved(e) => e.at,
            Event::Paused(e) => e.at,
            Event::RollbackPlanned(e) => e.at,
            Event::CompensationStarted(e) => e.at,
            Event::CompensationSucceeded(e) => e.at,
            Event::CompensationFailed(e) => e.at,
            Event::Completed(e) => e.at,
            Event::RolledBack(e) => e.at,
        }
    }

    /// The step or rollback step it is about, if any.
    pub fn step(&self) -> Option<&StepId> {
        match self {
            Event::StepStarted(e) => Some(&e.step),
            Event::StepSucceeded(e) => Some(&e.step),
            Event::StepFailed(e) => Some(&e.step),
            Event::StepRecovered(e) => Some(&e.step),
            Event::CompensationStarted(e) => Some(&e.step),
            Event::CompensationSucceeded(e) => Some(&e.step),
            Event::CompensationFailed(e) => Some(&e.step),
            _ => None,
        }
    }
}

impl<A> fmt::Display for Event<A> {
    /// One line for progress output and `status`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::RunStarted(e) => write!(f, "run started (plan {})", e.digest),
            Event::StepStarted(e) => write!(f, "step {} started (attempt {})", e.step, e.attempt),
            Event::StepSucceeded(e) => write!(f, "step {} succeeded", e.step),
            Event::StepFailed(e) => write!(f, "step {} failed: {}", e.step, e.error),
            Event::StepRecovered(e) => write!(f, "step {} found already done", e.step),
            Event::GateReached(e) => write!(f, "gate {} reached", e.gate),
            Event::GateApproved(e) => write!(f, "gate {} approved by {}", e.gate, e.by),
            Event::Paused(e) => write!(f, "paused: {}", e.reason),
            Event::RollbackPlanned(e) => write!(f, "rollback planned ({} steps)", e.steps.len()),
            Event::CompensationStarted(e) => {
                write!(f, "rollback step {} started (attempt {})", e.step, e.attempt)
            }
            Event::CompensationSucceeded(e) => write!(f, "rollback step {} succeeded", e.step),
            Event::CompensationFailed(e) => {
                write!(f, "rollback step {} failed: {}", e.step, e.error)
            }
            Event::Completed(_) => f.write_str("completed"),
            Event::RolledBack(_) => f.write_str("rolled back"),
        }
    }
}
