//! Typed errors of the journal: each names the path, and the sequence number where one applies.

use std::path::PathBuf;

use crate::lock::LockOwner;

/// Why a journal, lock, blob or export operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file-system operation on `path` failed.
    #[error("{path}: {action}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What was being done ("create state directory", "fsync", ...).
        action: &'static str,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// The database file could not be opened or read: damaged, truncated, or not a journal.
    #[error(
        "{path}: the journal database cannot be read ({detail}); it may be damaged or truncated. \
         Keep the state directory as it is and restore it from a copy, or start a new rotation \
         in another directory"
    )]
    Database {
        /// The database file.
        path: PathBuf,
        /// What redb reported.
        detail: String,
    },
    /// The state directory is locked by another live process.
    #[error("{path}: state directory is in use by {owner}; wait for it to finish or stop it first")]
    Locked {
        /// The lock file.
        path: PathBuf,
        /// Who holds it.
        owner: Box<LockOwner>,
    },
    /// A record could not be appended because the state directory cannot take writes. Nothing
    /// was recorded, so the caller must not carry out the side effect the record announces.
    #[error(
        "{path}: cannot record event {seq}: {why} ({detail}); nothing after the last record was \
         done. Free space on (or remount read-write) the file system holding the state \
         directory, then run again"
    )]
    NotWritable {
        /// The state directory.
        path: PathBuf,
        /// The sequence that was not recorded.
        seq: u64,
        /// Full or read-only.
        why: &'static str,
        /// What the storage engine reported.
        detail: String,
    },
    /// The state directory is on a read-only file system: kubeca records every step before
    /// doing it, so it cannot run there.
    #[error(
        "{path}: the file system holding the state directory is read-only; kubeca records every \
         step before doing it, so nothing was done. Remount it read-write (or copy the state \
         directory to a writable disk and pass that with --state-dir), then run again"
    )]
    ReadOnly {
        /// The state directory.
        path: PathBuf,
    },
    /// The lock file names a process that is no longer running.
    #[error(
        "{path}: stale lock left by {owner}, which is no longer running; if no other kubeca uses \
         this state directory, clear it with its id ({lock_id})",
        lock_id = owner.lock_id
    )]
    StaleLock {
        /// The lock file.
        path: PathBuf,
        /// The dead owner.
        owner: Box<LockOwner>,
    },
    /// `force_unlock` was given an id that is not the current lock's.
    #[error("{path}: lock id {given} does not match the current lock {owner}; nothing was changed")]
    WrongLockId {
        /// The lock file.
        path: PathBuf,
        /// The id given.
        given: String,
        /// The current owner.
        owner: Box<LockOwner>,
    },
    /// The chain is broken at `seq`.
    #[error("{path}: record {seq}: {problem}")]
    Corrupt {
        /// The database or export file.
        path: PathBuf,
        /// The first bad sequence number.
        seq: u64,
        /// What is wrong with it.
        problem: Problem,
    },
    /// A blob's content does not match its digest.
    #[error(
        "{path}: blob content does not match its digest (found sha256:{actual}); the blob store is damaged"
    )]
    BlobMismatch {
        /// The blob file.
        path: PathBuf,
        /// Digest of what is actually stored.
        actual: String,
    },
    /// No blob with this digest.
    #[error("{path}: no blob with digest sha256:{digest}")]
    BlobMissing {
        /// Where it was expected.
        path: PathBuf,
        /// The digest asked for.
        digest: String,
    },
    /// A payload could not be encoded (a bug in the caller's type).
    #[error("record {seq}: cannot encode payload: {detail}")]
    Encode {
        /// The sequence the record would have had.
        seq: u64,
        /// The encoder's message.
        detail: String,
    },
    /// An export could not be written or parsed.
    #[error("{path}: line {line}: {detail}")]
    Export {
        /// The export file (or "-" for a stream).
        path: PathBuf,
        /// The line number, 1-based.
        line: u64,
        /// What is wrong.
        detail: String,
    },
}

/// What is wrong with a record, as found by verification.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// The stored hash does not match the SHA-256 of the previous hash and the stored bytes.
    #[error("hash mismatch: the record was changed after it was written")]
    HashMismatch,
    /// The record's previous-hash does not match the hash of the record before it.
    #[error("previous-hash does not match record {0}: a record was removed, inserted or reordered")]
    BrokenLink(u64),
    /// A sequence number is missing.
    #[error("gap: expected record {expected}, found {found}: records were deleted")]
    Gap {
        /// The sequence that should be here.
        expected: u64,
        /// The one that is.
        found: u64,
    },
    /// The sequence inside the record differs from its key: records were reordered.
    #[error("stored under sequence {key} but says it is {inner}: records were reordered")]
    Reordered {
        /// The key it is stored under.
        key: u64,
        /// The sequence inside the envelope.
        inner: u64,
    },
    /// The bytes do not decode.
    #[error("undecodable record: {0}")]
    Undecodable(String),
    /// Written by a newer kubeca.
    #[error(
        "schema version {found} is newer than this build understands ({supported}); use a newer kubeca"
    )]
    NewerSchema {
        /// The record's schema.
        found: u16,
        /// The newest this build reads.
        supported: u16,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io(
    path: impl Into<PathBuf>,
    action: &'static str,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { path, action, source }
}
