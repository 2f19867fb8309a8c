//! The journal itself: a redb table of hash-chained envelopes keyed by a gap-free sequence.

use std::marker::PhantomData;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::blob::BlobStore;
use crate::envelope::{Actor, Envelope, GENESIS, Hash, Head, Record, SCHEMA_VERSION};
use crate::error::{Error, Problem, Result, io};
use crate::lock::DirLock;

/// File name of the database inside the state directory.
pub const DB_FILE: &str = "journal.redb";

/// Free space an append leaves on the state directory's file system: below it, records are
/// refused (the storage engine needs room for its copy-on-write pages, and the blob store for
/// backups).
pub const FREE_SPACE_RESERVE: u64 = 1024 * 1024;

/// The redb table that holds the records. Key: sequence. Value: the record's 32-byte chain hash
/// followed by the exact stored envelope bytes (postcard). Public so tests and forensic tools can
/// read (or deliberately damage) the store without this crate.
pub const RECORDS: TableDefinition<'static, u64, &'static [u8]> = TableDefinition::new("records");

/// An open, locked journal of events of type `E`.
pub struct Journal<E> {
    dir: PathBuf,
    db_path: PathBuf,
    db: Database,
    head: Head,
    actor: Actor,
    blobs: BlobStore,
    lock: DirLock,
    _event: PhantomData<fn() -> E>,
}

impl<E> std::fmt::Debug for Journal<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Journal").field("dir", &self.dir).field("head", &self.head).finish()
    }
}

/// Where an append landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Its sequence number.
    pub seq: u64,
    /// Its chain hash.
    pub hash: Hash,
}

impl<E: Serialize + DeserializeOwned> Journal<E> {
    /// Opens (creating when absent) the journal in the state directory `dir`, taking its lock.
    ///
    /// The directory is created with mode 0700. Opening reads only the last record; use
    /// [`Journal::verify`] or [`Journal::replay`] to check the whole chain.
    pub fn open(dir: &Path, actor: Actor) -> Result<Self> {
        create_private_dir(dir)?;
        let lock = DirLock::acquire(dir)?;
        let blobs = BlobStore::open(dir)?;
        let db_path = dir.join(DB_FILE);
        let db = open_or_create(dir, &db_path)?;
        let mut journal = Journal {
            dir: dir.to_owned(),
            db_path,
            db,
            head: Head { len: 0, hash: GENESIS },
            actor,
            blobs,
            lock,
            _event: PhantomData,
        };
        journal.head = journal.read_head()?;
        Ok(journal)
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The lock this journal holds.
    pub fn lock(&self) -> &DirLock {
        &self.lock
    }

    /// Number of records and hash of the last one.
    pub fn head(&self) -> Head {
        self.head
    }

    /// The blob store beside the journal.
    pub fn blobs(&self) -> &BlobStore {
        &self.blobs
    }

    /// Appends `event`; returns only once the record is durable on disk.
    pub fn append(&mut self, event: &E) -> Result<Appended> {
        let seq = self.head.len;
        let payload =
            postcard::to_stdvec(event).map_err(|e| Error::Encode { seq, detail: e.to_string() })?;
        let envelope = Envelope {
            schema: SCHEMA_VERSION,
            seq,
            recorded_at_us: now_us(),
            actor: self.actor.clone(),
            prev_hash: self.head.hash,
            payload,
        };
        let stored = envelope.encode().map_err(|e| Error::Encode { seq, detail: e.to_string() })?;
        let hash = Hash::chain(&self.head.hash, &stored);
        let mut value = Vec::with_capacity(32 + stored.len());
        value.extend_from_slice(&hash.0);
        value.extend_from_slice(&stored);
        // A file system with less than the reserve left refuses the record before the storage
        // engine tries (which may still find room inside its file for a while): the run stops
        // at a record boundary, never on a half-full disk later.
        if let Ok(fs) = rustix::fs::statvfs(&self.dir) {
            let free = fs.f_bavail.saturating_mul(fs.f_frsize);
            let read_only = fs.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY);
            if read_only || free < FREE_SPACE_RESERVE {
                return Err(Error::NotWritable {
                    path: self.dir.clone(),
                    seq,
                    why: if read_only { "it is read-only" } else { "the disk holding it is full" },
                    detail: if read_only {
                        "mounted read-only".into()
                    } else {
                        format!(
                            "{} KiB free, kubeca keeps {} KiB in reserve",
                            free / 1024,
                            FREE_SPACE_RESERVE / 1024
                        )
                    },
                });
            }
        }
        let appended = guard(&self.db_path, || {
            let mut txn = self.db.begin_write().map_err(|e| e.to_string())?;
            txn.set_durability(Durability::Immediate).map_err(|e| e.to_string())?;
            {
                let mut table = txn.open_table(RECORDS).map_err(|e| e.to_string())?;
                table.insert(seq, value.as_slice()).map_err(|e| e.to_string())?;
            }
            txn.commit().map_err(|e| e.to_string())
        });
        if let Err(Error::Database { detail, .. }) = &appended {
            let lower = detail.to_lowercase();
            let why = if lower.contains("no space left") || lower.contains("quota") {
                Some("the disk holding it is full")
            } else if lower.contains("read-only file system") || lower.contains("permission denied")
            {
                Some("it is read-only")
            } else {
                None
            };
            if let Some(why) = why {
                return Err(Error::NotWritable {
                    path: self.dir.clone(),
                    seq,
                    why,
                    detail: detail.clone(),
                });
            }
        }
        appended?;
        self.head = Head { len: seq + 1, hash };
        Ok(Appended { seq, hash })
    }

    /// Verifies the whole chain; returns its head or the first bad record.
    pub fn verify(&self) -> Result<Head> {
        let mut head = Head { len: 0, hash: GENESIS };
        self.walk(|seq, envelope, hash| {
            head = Head { len: seq + 1, hash };
            let _ = envelope;
            Ok(())
        })?;
        Ok(head)
    }

    /// Verifies the chain and decodes every record, in order.
    pub fn replay(&self) -> Result<Vec<Record<E>>> {
        let mut records = Vec::with_capacity(usize::try_from(self.head.len).unwrap_or(0));
        self.walk(|seq, envelope, hash| {
            let event = postcard::from_bytes(&envelope.payload).map_err(|e| Error::Corrupt {
                path: self.db_path.clone(),
                seq,
                problem: Problem::Undecodable(format!("payload: {e}")),
            })?;
            records.push(Record {
                seq,
                recorded_at: envelope.recorded_at(),
                actor: envelope.actor,
                prev_hash: envelope.prev_hash,
                hash,
                event,
            });
            Ok(())
        })?;
        Ok(records)
    }

    /// Walks every record in order, checking sequence, link and hash, and hands each verified
    /// envelope with its stored bytes to `visit`. This is the only reader of the table.
    pub(crate) fn walk(
        &self,
        mut visit: impl FnMut(u64, Envelope, Hash) -> Result<()>,
    ) -> Result<()> {
        self.walk_raw(|seq, envelope, hash, _stored| visit(seq, envelope, hash))
    }

    pub(crate) fn walk_raw(
        &self,
        mut visit: impl FnMut(u64, Envelope, Hash, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let path = self.db_path.clone();
        let corrupt = |seq, problem| Error::Corrupt { path: path.clone(), seq, problem };
        let txn = guard(&path, || self.db.begin_read().map_err(|e| e.to_string()))?;
        let table = match txn.open_table(RECORDS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(Error::Database { path, detail: e.to_string() }),
        };
        let iter = guard(&path, || table.iter().map_err(|e| e.to_string()))?;
        let mut prev = GENESIS;
        for (expected, item) in (0u64..).zip(iter) {
            let (key, value) = guard(&path, || item.map_err(|e| e.to_string()))?;
            let key = key.value();
            let value = value.value();
            if key != expected {
                return Err(corrupt(expected, Problem::Gap { expected, found: key }));
            }
            let Some((hash, stored)) = value.split_first_chunk::<32>() else {
                return Err(corrupt(key, Problem::Undecodable("shorter than its hash".into())));
            };
            let hash = Hash(*hash);
            if Hash::chain(&prev, stored) != hash {
                // Tell a moved record from an edited one: a record that hashes correctly against
                // its own prev_hash but does not link to its predecessor was moved or removed.
                return Err(match Envelope::decode(stored) {
                    Ok(env) if Hash::chain(&env.prev_hash, stored) == hash => {
                        if env.seq != key {
                            corrupt(key, Problem::Reordered { key, inner: env.seq })
                        } else {
                            corrupt(key, Problem::BrokenLink(key.wrapping_sub(1)))
                        }
                    }
                    Err(problem @ Problem::NewerSchema { .. }) => corrupt(key, problem),
                    _ => corrupt(key, Problem::HashMismatch),
                });
            }
            let envelope = Envelope::decode(stored).map_err(|p| corrupt(key, p))?;
            if envelope.seq != key {
                return Err(corrupt(key, Problem::Reordered { key, inner: envelope.seq }));
            }
            visit(key, envelope, hash, stored)?;
            prev = hash;
        }
        Ok(())
    }

    fn read_head(&self) -> Result<Head> {
        let path = &self.db_path;
        let txn = guard(path, || self.db.begin_read().map_err(|e| e.to_string()))?;
        let table = match txn.open_table(RECORDS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => {
                return Ok(Head { len: 0, hash: GENESIS });
            }
            Err(e) => return Err(Error::Database { path: path.clone(), detail: e.to_string() }),
        };
        let last = guard(path, || table.last().map_err(|e| e.to_string()))?;
        let Some((key, value)) = last else {
            return Ok(Head { len: 0, hash: GENESIS });
        };
        let seq = key.value();
        let Some((hash, _)) = value.value().split_first_chunk::<32>() else {
            return Err(Error::Corrupt {
                path: path.clone(),
                seq,
                problem: Problem::Undecodable("shorter than its hash".into()),
            });
        };
        Ok(Head { len: seq + 1, hash: Hash(*hash) })
    }
}

/// Name of the database while it is first built: renamed to [`DB_FILE`] only once complete.
pub const DB_CREATING: &str = "journal.redb.creating";

/// Opens the database, building it first when the state directory has none.
///
/// A new database is built under [`DB_CREATING`], flushed, renamed into place and the directory
/// flushed: a kill at any instant leaves either no journal (and perhaps a partial temporary,
/// removed here: the directory lock is held, so no one else is building it) or a whole one.
/// Creating it in place once left, about one kill in forty during the first open, a file without
/// redb's header (it is sized first and its magic number written last) that never opened again
/// ("Not a redb database: magic number mismatch"). Such a file left by an older kubeca is still
/// reported, not replaced: it cannot be told from a journal a bad disk zeroed. An empty file is
/// taken as no journal (redb would initialise it too; doing it here keeps one way in).
fn open_or_create(dir: &Path, db_path: &Path) -> Result<Database> {
    let creating = dir.join(DB_CREATING);
    if creating.exists() {
        std::fs::remove_file(&creating).map_err(io(&creating, "remove unfinished new journal"))?;
    }
    if db_path.exists() && holds_nothing(db_path)? {
        std::fs::remove_file(db_path).map_err(io(db_path, "remove journal file with no header"))?;
    }
    if !db_path.exists() {
        let built = guard(&creating, || Database::create(&creating).map_err(|e| e.to_string()))?;
        drop(built);
        std::fs::File::open(&creating)
            .and_then(|f| f.sync_all())
            .map_err(io(&creating, "fsync new journal"))?;
        std::fs::rename(&creating, db_path)
            .map_err(io(db_path, "rename new journal into place"))?;
        crate::blob::sync_dir(dir)?;
    }
    guard(db_path, || Database::open(db_path).map_err(|e| e.to_string()))
}

/// Whether the file at `path` is empty: what a kill between creating the file and writing its
/// first page leaves. A file of zeros is not taken as empty: a journal whose records were zeroed
/// by a bad disk looks the same, and must be reported, not replaced.
fn holds_nothing(path: &Path) -> Result<bool> {
    Ok(std::fs::metadata(path).map_err(io(path, "stat journal"))?.len() == 0)
}

/// Runs a redb operation, turning both its errors and any panic on a damaged file into
/// [`Error::Database`] naming the file: a damaged journal must be reported, never crash kubeca.
fn guard<T>(path: &Path, op: impl FnOnce() -> Result<T, String>) -> Result<T> {
    match catch_unwind(AssertUnwindSafe(op)) {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(detail)) => Err(Error::Database { path: path.to_owned(), detail }),
        Err(panic) => {
            let detail = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "the storage engine panicked".into());
            Err(Error::Database { path: path.to_owned(), detail })
        }
    }
}

/// Creates `dir` (and parents) and makes `dir` itself mode 0700.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    let read_only = |action: &'static str| {
        move |e: std::io::Error| {
            if e.raw_os_error() == Some(rustix::io::Errno::ROFS.raw_os_error()) {
                Error::ReadOnly { path: dir.to_owned() }
            } else {
                io(dir, action)(e)
            }
        }
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(read_only("create state directory"))?;
    // chmod fails on a read-only file system even when the mode is already 0700.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(read_only("set state directory mode 0700"))
}

fn now_us() -> i64 {
    jiff::Timestamp::now().as_microsecond()
}
