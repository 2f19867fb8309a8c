//! The journal across processes: SIGKILL at random moments loses no acknowledged record, a live
//! lock is refused with its owner named, a stale one is cleared only with its id, and a killed
//! blob `put` leaves no partial blob under its digest.
//!
//! Seeded: the seed is printed; `JOURNAL_CRASH_SEED=<n>` reproduces a run, `JOURNAL_CRASH_KILLS`
//! sets the number of kills (default 120).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use kubeca_tests::seeded::Rng;

use journal::{Actor, BlobStore, Error, Hash, Journal, force_unlock};

const CHILD: &str = env!("CARGO_BIN_EXE_journal-appender");

fn seed() -> u64 {
    kubeca_tests::seeded::seed("JOURNAL_CRASH_SEED", "journal crash")
}

fn spawn(mode: &str, dir: &Path) -> (Child, mpsc::Receiver<String>) {
    let mut child = Command::new(CHILD)
        .args([mode, dir.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn journal-appender");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Opens after a crash: a stale lock is expected when the child got as far as locking; it is
/// cleared with the id the error names. Returns the journal and whether the lock was stale.
fn open_after_crash(dir: &Path, dead_pid: u32) -> (Journal<String>, bool) {
    match Journal::open(dir, Actor::current("test")) {
        Ok(j) => (j, false),
        Err(Error::StaleLock { owner, .. }) => {
            assert_eq!(owner.pid, dead_pid, "the stale lock names the killed process");
            force_unlock(dir, &owner.lock_id).unwrap();
            (Journal::open(dir, Actor::current("test")).unwrap(), true)
        }
        Err(e) => panic!("journal did not open after a kill: {e}"),
    }
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_record() {
    let mut rng = Rng(seed());
    let kills: u32 =
        std::env::var("JOURNAL_CRASH_KILLS").ok().and_then(|s| s.parse().ok()).unwrap_or(120);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let mut stale_seen = 0;
    let mut acknowledged_total = 0u64;
    for round in 0..kills {
        let (mut child, acks) = spawn("append", &dir);
        let pid = child.id();
        // Let it run between 0 and 25 ms: some kills land while opening, most mid-append.
        std::thread::sleep(Duration::from_micros(rng.next_u64() % 25_000));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let acked: Vec<u64> = acks.iter().map(|l| l.parse().unwrap()).collect();
        let (j, stale) = open_after_crash(&dir, pid);
        stale_seen += u32::from(stale);
        let head = j.verify().unwrap_or_else(|e| panic!("round {round}: verify after kill: {e}"));
        let records = j.replay().unwrap();
        assert_eq!(head.len, records.len() as u64);
        if let Some(&last) = acked.last() {
            assert!(
                head.len > last,
                "round {round}: acknowledged {last} but the journal ends at {}",
                head.len
            );
        }
        for r in &records {
            assert_eq!(r.event, format!("record-{}", r.seq), "round {round}: record {}", r.seq);
        }
        acknowledged_total += acked.len() as u64;
    }
    println!(
        "{kills} kills, {acknowledged_total} acknowledged appends, {stale_seen} stale locks cleared"
    );
    assert!(stale_seen > 0, "no kill landed after the lock was taken: recovery was not exercised");
    assert!(acknowledged_total > 0, "no append was acknowledged before any kill");
}

#[test]
fn a_second_process_is_refused_with_the_owner_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let (mut child, lines) = spawn("hold", &dir);
    let line = lines.recv_timeout(Duration::from_secs(30)).expect("child took the lock");
    let lock_id = line.strip_prefix("locked ").unwrap().to_owned();

    let err = Journal::<String>::open(&dir, Actor::current("test")).unwrap_err();
    match &err {
        Error::Locked { owner, .. } => {
            assert_eq!(owner.pid, child.id());
            assert_eq!(owner.lock_id, lock_id);
        }
        other => panic!("expected Locked, got {other}"),
    }
    assert!(err.to_string().contains(&format!("pid {}", child.id())), "{err}");
    // Even with the right id, a live owner's lock is not cleared.
    assert!(matches!(force_unlock(&dir, &lock_id), Err(Error::Locked { .. })));

    // Killed: the lock is stale, named, and cleared only with its id.
    child.kill().unwrap();
    child.wait().unwrap();
    let err = Journal::<String>::open(&dir, Actor::current("test")).unwrap_err();
    assert!(matches!(&err, Error::StaleLock { owner, .. } if owner.lock_id == lock_id), "{err}");
    assert!(err.to_string().contains(&lock_id), "{err}");
    assert!(matches!(force_unlock(&dir, "0000000000000000"), Err(Error::WrongLockId { .. })));
    assert!(
        Journal::<String>::open(&dir, Actor::current("test")).is_err(),
        "a wrong id cleared nothing"
    );
    force_unlock(&dir, &lock_id).unwrap();
    Journal::<String>::open(&dir, Actor::current("test")).unwrap();
}

#[test]
fn a_killed_put_leaves_no_partial_blob_under_its_digest() {
    let mut rng = Rng(seed() ^ 0xB10B);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let mut acknowledged: Vec<Hash> = Vec::new();
    for _ in 0..25 {
        let (mut child, acks) = spawn("blobs", &dir);
        std::thread::sleep(Duration::from_micros(rng.next_u64() % 30_000));
        child.kill().unwrap();
        child.wait().unwrap();
        acknowledged.extend(acks.iter().map(|l| Hash::from_hex(&l).unwrap()));
        let store = BlobStore::open(&dir).unwrap();
        // Every file under a digest name holds exactly that content...
        store.verify_all().unwrap();
        // ...and every acknowledged put is there.
        for digest in &acknowledged {
            store.get(digest).unwrap();
        }
        let temps = std::fs::read_dir(dir.join("blobs"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with(".tmp-"))
            .count();
        assert_eq!(temps, 0, "open removes interrupted puts");
    }
    assert!(!acknowledged.is_empty(), "no put was acknowledged before any kill");
}
