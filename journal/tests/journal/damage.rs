//! Verification finds damage and names the first bad record; a damaged file never panics.

use crate::util::{Ev, filled, open, raw, tamper};
use journal::{Actor, Error, Journal, Problem};

fn verify_err(dir: &std::path::Path) -> Error {
    let j = open(dir);
    let err = j.verify().expect_err("verify must fail");
    // Replay goes through the same checks.
    assert!(j.replay().is_err(), "replay of a damaged journal must fail too");
    err
}

fn problem_at(err: &Error) -> (u64, Problem) {
    match err {
        Error::Corrupt { seq, problem, .. } => (*seq, problem.clone()),
        other => panic!("expected a corrupt-record error, got {other}"),
    }
}

#[test]
fn a_flipped_byte_in_the_file_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = open(dir.path());
    for i in 0..10 {
        let text = if i == 6 { "MARKER-needle-6".to_string() } else { format!("note-{i}") };
        j.append(&Ev::Note(text)).unwrap();
    }
    let original = j.replay().unwrap();
    drop(j);
    // redb copies pages on write, so stale copies of record 6 may sit in freed pages. Flip the
    // byte in each copy in turn: flipping the live one must be reported as record 6's hash
    // mismatch; flipping a stale one must change nothing the journal returns.
    let path = dir.path().join(journal::DB_FILE);
    let pristine = std::fs::read(&path).unwrap();
    let places: Vec<usize> = pristine
        .windows(6)
        .enumerate()
        .filter_map(|(i, w)| (w == b"needle").then_some(i))
        .collect();
    assert!(!places.is_empty(), "payload in file");
    let mut detected = 0;
    for at in places {
        let mut bytes = pristine.clone();
        bytes[at] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        let j = Journal::<Ev>::open(dir.path(), Actor::current("t")).unwrap();
        match j.verify() {
            Ok(_) => assert_eq!(j.replay().unwrap(), original, "a silent change at byte {at}"),
            Err(err) => {
                assert!(j.replay().is_err());
                let (seq, problem) = problem_at(&err);
                assert_eq!((seq, problem), (6, Problem::HashMismatch), "{err}");
                assert!(err.to_string().contains("journal.redb"), "error names the file: {err}");
                detected += 1;
            }
        }
    }
    assert_eq!(detected, 1, "the live copy of record 6 is exactly one place");
}

#[test]
fn an_edited_record_is_found() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path(), 8);
    tamper(dir.path(), |t| {
        let mut v = raw(t, 3);
        let last = v.len() - 1;
        v[last] ^= 0x80;
        t.insert(3, v.as_slice()).unwrap();
    });
    let (seq, problem) = problem_at(&verify_err(dir.path()));
    assert_eq!((seq, problem), (3, Problem::HashMismatch));
}

#[test]
fn a_deleted_record_is_found() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path(), 8);
    tamper(dir.path(), |t| {
        t.remove(4).unwrap();
    });
    let (seq, problem) = problem_at(&verify_err(dir.path()));
    assert_eq!(seq, 4);
    assert_eq!(problem, Problem::Gap { expected: 4, found: 5 });
}

#[test]
fn a_deleted_last_record_shortens_the_head_but_a_rewritten_one_is_found() {
    // Deleting the tail is invisible to the chain alone (no later record links to it); the
    // head printed by `journal verify` is what an auditor compares against an export.
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path(), 4);
    let before = open(dir.path()).verify().unwrap();
    tamper(dir.path(), |t| {
        t.remove(3).unwrap();
    });
    let after = open(dir.path()).verify().unwrap();
    assert_eq!(after.len, 3);
    assert_ne!(after.hash, before.hash);
}

#[test]
fn two_swapped_records_are_found() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path(), 8);
    tamper(dir.path(), |t| {
        let five = raw(t, 5);
        let six = raw(t, 6);
        t.insert(5, six.as_slice()).unwrap();
        t.insert(6, five.as_slice()).unwrap();
    });
    let (seq, problem) = problem_at(&verify_err(dir.path()));
    assert_eq!(seq, 5);
    assert_eq!(problem, Problem::Reordered { key: 5, inner: 6 });
}

#[test]
fn a_record_from_a_newer_schema_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path(), 3);
    tamper(dir.path(), |t| {
        let mut v = raw(t, 2);
        // Byte 32 is the first byte of the envelope: the schema varint (1 -> 9).
        v[32] = 9;
        t.insert(2, v.as_slice()).unwrap();
    });
    let err = verify_err(dir.path());
    let (seq, _) = problem_at(&err);
    assert_eq!(seq, 2);
    // The hash no longer matches either; the schema is reported because it explains why.
    assert!(err.to_string().contains("newer"), "{err}");
}

#[test]
fn a_truncated_database_is_reported_not_panicked() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path(), 50);
    let path = dir.path().join(journal::DB_FILE);
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len / 3).unwrap();
    drop(f);
    let outcome = Journal::<Ev>::open(dir.path(), Actor::current("t")).and_then(|j| j.verify());
    let err = outcome.expect_err("a truncated journal must not open and verify cleanly");
    assert!(err.to_string().contains("journal.redb"), "{err}");
}

#[test]
fn a_zeroed_database_is_reported_not_panicked() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path(), 20);
    let path = dir.path().join(journal::DB_FILE);
    let len = std::fs::metadata(&path).unwrap().len() as usize;
    std::fs::write(&path, vec![0u8; len]).unwrap();
    let outcome = Journal::<Ev>::open(dir.path(), Actor::current("t")).and_then(|j| j.verify());
    let err = outcome.expect_err("a zeroed journal must not open and verify cleanly");
    assert!(err.to_string().contains("journal.redb"), "{err}");
}
