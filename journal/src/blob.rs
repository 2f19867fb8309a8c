//! A content-addressed blob store beside the journal: backups of remote files and new keys.
//!
//! A blob lives at `DIR/blobs/<sha256 hex>`, mode 0600. `put` writes a temporary file in the same
//! directory, fsyncs it, renames it into place and fsyncs the directory, so a crash leaves either
//! the whole blob under its digest or none (a leftover temporary file is removed on open). `get`
//! re-hashes what it reads and fails loudly on a mismatch.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::envelope::Hash;
use crate::error::{Error, Result, io};

const TEMP_PREFIX: &str = ".tmp-";

/// The blob store of one state directory.
#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
}

impl BlobStore {
    /// Opens `STATE_DIR/blobs`, creating it (0700) and removing temporaries of interrupted puts.
    pub fn open(state_dir: &Path) -> Result<BlobStore> {
        let dir = state_dir.join("blobs");
        crate::store::create_private_dir(&dir)?;
        for entry in fs::read_dir(&dir).map_err(io(&dir, "list blob store"))? {
            let entry = entry.map_err(io(&dir, "list blob store"))?;
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                let path = entry.path();
                fs::remove_file(&path).map_err(io(&path, "remove interrupted blob"))?;
            }
        }
        Ok(BlobStore { dir })
    }

    /// Where the blob with `digest` is (or would be) stored.
    pub fn path(&self, digest: &Hash) -> PathBuf {
        self.dir.join(digest.to_hex())
    }

    /// Whether a blob with `digest` is stored (its content is not checked here).
    pub fn contains(&self, digest: &Hash) -> bool {
        self.path(digest).is_file()
    }

    /// Stores `data` durably and returns its digest. Storing the same content twice is a no-op.
    pub fn put(&self, data: &[u8]) -> Result<Hash> {
        let digest = Hash::of(data);
        let target = self.path(&digest);
        if target.is_file() && self.get(&digest).is_ok() {
            return Ok(digest);
        }
        let temp = self.dir.join(format!("{TEMP_PREFIX}{}", crate::lock::random_id()));
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)
            .map_err(io(&temp, "create blob"))?;
        file.write_all(data).map_err(io(&temp, "write blob"))?;
        file.sync_all().map_err(io(&temp, "fsync blob"))?;
        drop(file);
        fs::rename(&temp, &target).map_err(io(&target, "rename blob into place"))?;
        sync_dir(&self.dir)?;
        Ok(digest)
    }

    /// Reads the blob with `digest`, checking its content against the digest.
    pub fn get(&self, digest: &Hash) -> Result<Vec<u8>> {
        let path = self.path(digest);
        let data = match fs::read(&path) {
            Ok(data) => data,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::BlobMissing { path, digest: digest.to_hex() });
            }
            Err(e) => return Err(Error::Io { path, action: "read blob", source: e }),
        };
        let actual = Hash::of(&data);
        if actual != *digest {
            return Err(Error::BlobMismatch { path, actual: actual.to_hex() });
        }
        Ok(data)
    }

    /// Checks that every stored blob's name is its digest and its mode is 0600.
    pub fn verify_all(&self) -> Result<usize> {
        let mut count = 0;
        for entry in fs::read_dir(&self.dir).map_err(io(&self.dir, "list blob store"))? {
            let entry = entry.map_err(io(&self.dir, "list blob store"))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(digest) = Hash::from_hex(&name) else { continue };
            self.get(&digest)?;
            let path = entry.path();
            let mode = entry.metadata().map_err(io(&path, "stat blob"))?.permissions().mode();
            if mode & 0o077 != 0 {
                return Err(Error::Io {
                    path,
                    action: "check blob mode",
                    source: std::io::Error::other(format!(
                        "mode {:o} lets others read it; expected 0600",
                        mode & 0o777
                    )),
                });
            }
            count += 1;
        }
        Ok(count)
    }
}

/// fsyncs a directory so a rename inside it is durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir, "fsync directory"))
}
