//! The first open of a state directory: a kill at any instant of the journal's creation leaves
//! a directory that opens again.
//!
//! Regression: creating the database in place once left (one kill in about forty during the
//! first open) a file with no redb header that never opened again ("Not a redb database:
//! magic number mismatch"). Rather than hoping a random kill lands in that window, these tests
//! lay down every state a kill can leave (no file; any prefix of the database being built under
//! its temporary name; a whole one not yet renamed) and open each.

use crate::util::{Ev, filled, open};
use journal::{DB_CREATING, DB_FILE, Error};

/// The bytes of a freshly created, empty journal database.
fn fresh_database() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    std::fs::read(dir.path().join(DB_FILE)).unwrap()
}

#[test]
fn a_kill_at_any_point_of_the_creation_leaves_a_directory_that_opens_empty() {
    let whole = fresh_database();
    assert!(whole.len() > 4096, "a database is more than its header: {} bytes", whole.len());
    let mut cuts: Vec<usize> = vec![0, 1, 8, 511, 512, 4096, whole.len() - 1, whole.len()];
    cuts.extend((1..16).map(|i| whole.len() * i / 16));
    for cut in cuts {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(DB_CREATING), &whole[..cut]).unwrap();
        let mut j = open(dir.path());
        assert_eq!(j.head().len, 0, "cut at {cut} of {}", whole.len());
        assert!(!dir.path().join(DB_CREATING).exists(), "the unfinished database is removed");
        j.append(&Ev::Note("first".into())).unwrap();
        drop(j);
        let j = open(dir.path());
        assert_eq!(j.replay().unwrap().len(), 1, "cut at {cut}: the record stays");
    }
}

#[test]
fn an_empty_journal_file_left_by_an_older_version_opens_as_an_empty_journal() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(DB_FILE), b"").unwrap();
    let mut j = open(dir.path());
    assert_eq!(j.head().len, 0);
    j.append(&Ev::Note("first".into())).unwrap();
    assert_eq!(j.verify().unwrap().len, 1);
}

/// Zeros, or any other bytes without a header, may be a journal a bad disk damaged: reported
/// naming the file, never replaced by an empty one (which would erase the audit record).
#[test]
fn a_journal_file_with_other_content_is_reported_and_kept() {
    let mut stray = vec![0u8; 8192];
    stray[100] = 1;
    for content in [vec![0u8; 4096], stray] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        std::fs::write(&path, &content).unwrap();
        match journal::Journal::<Ev>::open(dir.path(), crate::util::actor()) {
            Err(Error::Database { path: named, .. }) => assert_eq!(named, path),
            other => panic!("expected a database error naming {}, got {other:?}", path.display()),
        }
        assert_eq!(std::fs::read(&path).unwrap(), content, "nothing was replaced");
    }
}

#[test]
fn a_stray_unfinished_database_beside_a_journal_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path(), 3);
    std::fs::write(dir.path().join(DB_CREATING), b"partial").unwrap();
    let j = open(dir.path());
    assert_eq!(j.verify().unwrap().len, 3);
    assert!(!dir.path().join(DB_CREATING).exists());
}
