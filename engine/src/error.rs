//! Typed errors of the engine: each says what was refused and what to do instead.

use jiff::Timestamp;

use crate::plan::{GateName, PhaseName, PlanError, StepId};

/// Why the engine refused a command or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No run is recorded in this journal.
    #[error("no run is recorded in this journal; record a plan first")]
    NotStarted,
    /// A run is already recorded: resuming never re-plans.
    #[error(
        "a run is already recorded in this journal (plan {digest}); run it to continue, or use \
         another state directory for a new one"
    )]
    AlreadyStarted {
        /// The recorded plan's digest.
        digest: String,
    },
    /// The plan breaks a rule the engine relies on.
    #[error("invalid plan: {0}")]
    InvalidPlan(#[from] PlanError),
    /// `until` names a phase the plan does not have.
    #[error("phase {0} is not in the plan")]
    UnknownPhase(PhaseName),
    /// A gate the plan does not have.
    #[error("gate {0} is not in the plan")]
    UnknownGate(GateName),
    /// The journal names a step that neither the plan nor the rollback has.
    #[error(
        "step {0} is in neither the recorded plan nor the rollback; the journal does not match this build"
    )]
    UnknownStep(StepId),
    /// Rollback after completion is refused: what it would restore is gone.
    #[error(
        "the run completed at {at}; a completed run is not rolled back (the old configuration \
         it would restore is no longer trusted)"
    )]
    CompletedNoRollback {
        /// When it completed.
        at: Timestamp,
    },
    /// `run` while a rollback is under way.
    #[error("a rollback is under way; run the rollback again to continue it")]
    RollbackInProgress,
    /// `run` after a rollback finished.
    #[error("this run was rolled back; start a new one in another state directory")]
    RolledBack,
    /// The journal failed: the last event may not be durable, so the run stopped.
    #[error("journal: {0}; the run stopped, and running again continues from what is recorded")]
    Journal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl Error {
    pub(crate) fn journal(e: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error::Journal(Box::new(e))
    }
}
