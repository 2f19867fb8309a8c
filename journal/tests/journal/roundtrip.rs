//! Appending, replaying, ordering and continuing after a restart.

use crate::util::{Ev, filled, open};
use journal::GENESIS;

#[test]
fn events_come_back_in_order_with_their_envelope() {
    let dir = tempfile::tempdir().unwrap();
    let mut j = open(dir.path());
    assert_eq!(j.head().len, 0);
    assert_eq!(j.head().hash, GENESIS);
    let a = j.append(&Ev::Note("first".into())).unwrap();
    let b = j.append(&Ev::Step { id: 7, attempt: 2 }).unwrap();
    assert_eq!((a.seq, b.seq), (0, 1));
    let records = j.replay().unwrap();
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].event, Ev::Note("first".into()));
    assert_eq!(records[1].event, Ev::Step { id: 7, attempt: 2 });
    assert_eq!(records[0].prev_hash, GENESIS);
    assert_eq!(records[1].prev_hash, records[0].hash);
    assert_eq!(records[1].hash, b.hash);
    assert_eq!(records[0].actor.pid, std::process::id());
    assert!(records[0].recorded_at <= records[1].recorded_at);
    assert_eq!(j.verify().unwrap(), j.head());
}

#[test]
fn sequence_continues_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path(), 5);
    let mut j = open(dir.path());
    assert_eq!(j.head().len, 5);
    let next = j.append(&Ev::Note("after restart".into())).unwrap();
    assert_eq!(next.seq, 5);
    let records = j.replay().unwrap();
    let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, vec![0, 1, 2, 3, 4, 5]);
    assert_eq!(records[5].prev_hash, records[4].hash);
    j.verify().unwrap();
}

#[test]
fn state_directory_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let parent = tempfile::tempdir().unwrap();
    let dir = parent.path().join("rot");
    filled(&dir, 1);
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "state dir mode {mode:o}");
    let lock =
        std::fs::metadata(dir.join(journal::LOCK_FILE)).unwrap().permissions().mode() & 0o777;
    assert_eq!(lock, 0o600);
}
