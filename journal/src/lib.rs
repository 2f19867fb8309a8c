//! A crash-safe, hash-chained, append-only journal, with a content-addressed blob store beside it.
//!
//! The journal knows nothing of Kubernetes or of the engine's event types: it stores any
//! `E: Serialize + DeserializeOwned` as a postcard payload inside a versioned envelope (schema,
//! sequence, time, actor, previous hash). Records live in one [redb] database in the state
//! directory, keyed by a gap-free sequence; each [`Journal::append`] is its own write transaction
//! committed with `Durability::Immediate`, so it returns only once the record is on disk. Each
//! record's hash is SHA-256 over the previous hash and the exact stored bytes; verification hashes
//! what is stored and never re-serializes, so any edit, deletion or reordering is found and named.
//!
//! The state directory (mode 0700) is locked by one process at a time ([`DirLock`]); a lock left
//! by a dead process is reported as stale and cleared only with its id ([`force_unlock`]).
//!
//! ```
//! use journal::{Actor, Journal};
//!
//! let dir = tempfile::tempdir().unwrap();
//! let mut j: Journal<String> = Journal::open(dir.path(), Actor::current("example 1")).unwrap();
//! j.append(&"first".to_string()).unwrap();
//! j.append(&"second".to_string()).unwrap();
//! let events: Vec<String> = j.replay().unwrap().into_iter().map(|r| r.event).collect();
//! assert_eq!(events, ["first", "second"]);
//! assert_eq!(j.verify().unwrap().len, 2);
//! ```

mod blob;
mod envelope;
mod error;
mod export;
mod lock;
mod store;

pub use blob::BlobStore;
pub use envelope::{Actor, Envelope, GENESIS, Hash, Head, Record, SCHEMA_VERSION};
pub use error::{Error, Problem, Result};
pub use export::{ExportLine, Format, verify_export};
pub use lock::{DirLock, LOCK_FILE, LockOwner, force_unlock, lock_status};
pub use store::{Appended, DB_CREATING, DB_FILE, Journal, RECORDS, create_private_dir};
