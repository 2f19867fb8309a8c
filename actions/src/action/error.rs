//! Why an action failed, and whether trying again may help: the one place where kubeca sorts
//! its failures into transient and terminal.
//!
//! Each source of failure converts into [`Error`] with `?`, classified here once: a node that
//! cannot be reached or a command that timed out is transient (the engine retries the step,
//! and a run that still fails pauses, resumable); a file that is not what it should be, a
//! certificate or key that does not parse, a blob that does not match its digest, is terminal
//! (retrying reads the same bytes). A condition kubeca waits for and does not see in time is
//! transient; that is said where it is waited for, with [`Error::transient`].

use engine::StepError;

use crate::api::ApiError;
use crate::edit::EditError;
use crate::node::NodeError;
use crate::pki::{ChainError, PkiError, UnknownKeyAlgorithm};

/// A failed action: what went wrong (naming the node, file or object) and whether trying again
/// may help. It becomes the engine's [`StepError`] at the runner's edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// What went wrong.
    pub message: String,
    /// Whether trying again may help.
    pub transient: bool,
}

impl Error {
    /// A failure that trying again may cure (a component not yet back, an apiserver not ready).
    pub fn transient(message: impl std::fmt::Display) -> Error {
        Error { message: message.to_string(), transient: true }
    }

    /// A failure that trying again will not cure (a missing outcome, a file that is not there).
    pub fn terminal(message: impl std::fmt::Display) -> Error {
        Error { message: message.to_string(), transient: false }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<Error> for StepError {
    fn from(e: Error) -> StepError {
        StepError { message: e.message, retryable: e.transient }
    }
}

/// An unreachable node, a command that timed out or a write whose content did not arrive whole
/// may work next time; a command that ran and failed will fail again.
impl From<NodeError> for Error {
    fn from(e: NodeError) -> Error {
        if e.is_transient() { Error::transient(e) } else { Error::terminal(e) }
    }
}

/// An API call that failed or a condition the cluster has not reached yet: the apiserver may
/// answer, and the controllers catch up, next time. (A client that cannot be built at all is
/// terminal: `cluster_api` says so where it builds one.)
impl From<ApiError> for Error {
    fn from(e: ApiError) -> Error {
        Error::transient(e)
    }
}

/// A manifest, kubeconfig or kubelet config that cannot be edited as it is.
impl From<EditError> for Error {
    fn from(e: EditError) -> Error {
        Error::terminal(e)
    }
}

/// A certificate or key that does not parse, match or verify.
impl From<PkiError> for Error {
    fn from(e: PkiError) -> Error {
        Error::terminal(e)
    }
}

/// A certificate that does not chain to the CA it should.
impl From<ChainError> for Error {
    fn from(e: ChainError) -> Error {
        Error::terminal(e)
    }
}

/// The inventory's `key_algorithm` names no algorithm.
impl From<UnknownKeyAlgorithm> for Error {
    fn from(e: UnknownKeyAlgorithm) -> Error {
        Error::terminal(e)
    }
}

/// The blob store failed, or a blob does not match its digest.
impl From<journal::Error> for Error {
    fn from(e: journal::Error) -> Error {
        Error::terminal(e)
    }
}

/// A certificate template kubeca builds itself could not be made.
impl From<rcgen::Error> for Error {
    fn from(e: rcgen::Error) -> Error {
        Error::terminal(e)
    }
}
