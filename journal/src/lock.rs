//! The exclusive lock on a state directory, with an owner record a second opener can name.
//!
//! The lock is an advisory `flock` on `DIR/lock`, which the kernel releases when its holder dies,
//! plus an owner record written into the same file. A live holder keeps the flock; a clean exit
//! empties the record. So "flock free but record present" means the previous owner died (kill -9,
//! power loss): that lock is *stale*, and it is reported rather than silently taken over, because
//! the operator should know a run was interrupted. Clearing it takes the lock id
//! ([`force_unlock`]), so nobody clears a lock they have not read.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{FlockOperation, flock};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result, io};

/// File name of the lock inside the state directory.
pub const LOCK_FILE: &str = "lock";

/// Who holds (or held) a state directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockOwner {
    /// Process id of the holder.
    pub pid: u32,
    /// Host name of the holder.
    pub host: String,
    /// User name of the holder.
    pub user: String,
    /// When it took the lock (RFC 3339, UTC).
    pub since: String,
    /// Random id; needed to clear a stale lock.
    pub lock_id: String,
}

impl fmt::Display for LockOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pid {} (user {} on host {}, since {}, lock id {})",
            self.pid, self.user, self.host, self.since, self.lock_id
        )
    }
}

/// A held lock; released (record emptied, flock dropped) on drop.
#[derive(Debug)]
pub struct DirLock {
    file: File,
    path: PathBuf,
    owner: LockOwner,
}

impl DirLock {
    /// Takes the lock on `dir`, which must exist.
    ///
    /// Fails with [`Error::Locked`] when a live process holds it and [`Error::StaleLock`] when a
    /// dead one left its record behind.
    pub fn acquire(dir: &Path) -> Result<Self> {
        let path = dir.join(LOCK_FILE);
        let mut file = open_lock_file(&path)?;
        if !try_flock(&file, &path)? {
            let owner = read_owner(&mut file, &path)?;
            return Err(match owner {
                Some(owner) => Error::Locked { path, owner: Box::new(owner) },
                // Held, but the holder has not written its record yet: name what we can.
                None => Error::Locked { path, owner: Box::new(unknown_owner()) },
            });
        }
        if let Some(owner) = read_owner(&mut file, &path)? {
            // Nobody holds the flock, yet a record is there: its writer died.
            return Err(Error::StaleLock { path, owner: Box::new(owner) });
        }
        let owner = LockOwner {
            pid: std::process::id(),
            host: crate::envelope::host_name(),
            user: crate::envelope::user_name(),
            since: jiff::Timestamp::now().to_string(),
            lock_id: random_id(),
        };
        write_owner(&mut file, &path, Some(&owner))?;
        Ok(DirLock { file, path, owner })
    }

    /// The record this process wrote.
    pub fn owner(&self) -> &LockOwner {
        &self.owner
    }
}

impl Drop for DirLock {
    fn drop(&mut self) {
        // Best effort: if emptying fails, the next opener sees a stale lock and is told so.
        let _ = write_owner(&mut self.file, &self.path, None);
    }
}

/// Reads the current owner record of `dir`'s lock, if any, and whether its holder is alive.
pub fn lock_status(dir: &Path) -> Result<Option<(LockOwner, bool)>> {
    let path = dir.join(LOCK_FILE);
    if !path.exists() {
        return Ok(None);
    }
    let mut file = open_lock_file(&path)?;
    let free = try_flock(&file, &path)?;
    let owner = read_owner(&mut file, &path)?;
    Ok(owner.map(|o| (o, !free)))
}

/// Clears a stale lock, given its id. Refused when the holder is alive or the id differs.
pub fn force_unlock(dir: &Path, lock_id: &str) -> Result<()> {
    let path = dir.join(LOCK_FILE);
    let mut file = open_lock_file(&path)?;
    if !try_flock(&file, &path)? {
        let owner = read_owner(&mut file, &path)?.unwrap_or_else(unknown_owner);
        return Err(Error::Locked { path, owner: Box::new(owner) });
    }
    match read_owner(&mut file, &path)? {
        None => Ok(()),
        Some(owner) if owner.lock_id == lock_id => write_owner(&mut file, &path, None),
        Some(owner) => {
            Err(Error::WrongLockId { path, given: lock_id.to_owned(), owner: Box::new(owner) })
        }
    }
}

fn unknown_owner() -> LockOwner {
    LockOwner { pid: 0, host: "?".into(), user: "?".into(), since: "?".into(), lock_id: "?".into() }
}

fn open_lock_file(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(io(path, "open lock file"))
}

/// Tries to take the flock, giving a transient holder up to half a second to let go.
///
/// A lock released by this process can still be held for a moment by a child forked by another
/// thread just then (the child shares the open file description until it execs, when the
/// close-on-exec descriptor goes away). A real owner holds it far longer than this.
fn try_flock(file: &File, path: &Path) -> Result<bool> {
    for attempt in 0..50 {
        match flock(file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => return Ok(true),
            Err(rustix::io::Errno::WOULDBLOCK) if attempt < 49 => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(rustix::io::Errno::WOULDBLOCK) => return Ok(false),
            Err(e) => {
                return Err(Error::Io { path: path.into(), action: "flock", source: e.into() });
            }
        }
    }
    Ok(false)
}

fn read_owner(file: &mut File, path: &Path) -> Result<Option<LockOwner>> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).map_err(io(path, "read lock file"))?;
    file.read_to_string(&mut text).map_err(io(path, "read lock file"))?;
    if text.trim().is_empty() {
        return Ok(None);
    }
    match serde_json::from_str(&text) {
        Ok(owner) => Ok(Some(owner)),
        // A torn write of the record (crash while taking the lock) is still a stale lock.
        Err(_) => Ok(Some(LockOwner { lock_id: "unreadable".into(), ..unknown_owner() })),
    }
}

fn write_owner(file: &mut File, path: &Path, owner: Option<&LockOwner>) -> Result<()> {
    file.set_len(0).map_err(io(path, "truncate lock file"))?;
    file.seek(SeekFrom::Start(0)).map_err(io(path, "write lock file"))?;
    if let Some(owner) = owner {
        let text = serde_json::to_string(owner).unwrap_or_default();
        file.write_all(text.as_bytes()).map_err(io(path, "write lock file"))?;
    }
    file.sync_all().map_err(io(path, "fsync lock file"))
}

/// 16 hex digits from the kernel's random source.
pub(crate) fn random_id() -> String {
    let mut buf = [0u8; 8];
    let filled = File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut buf));
    if filled.is_err() {
        // No /dev/urandom: fall back to something unique enough for a lock or temp-file id.
        let nanos = jiff::Timestamp::now().as_nanosecond();
        buf = ((nanos as u64) ^ u64::from(std::process::id()).rotate_left(32)).to_le_bytes();
    }
    hex::encode(buf)
}
