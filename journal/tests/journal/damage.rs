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

/// A full disk: the append fails, says what to free, and the journal stays readable with every
/// record appended before it. Needs root to mount a small tmpfs (CI and `make test` run as root).
#[test]
fn a_full_disk_refuses_the_append_and_says_what_to_free() {
    let small = Tmpfs::mount("3m");
    let state = small.path().join("rot");
    let mut j = open(&state);
    let big = "x".repeat(64 * 1024);
    let mut appended = 0u64;
    let err = loop {
        match j.append(&Ev::Note(big.clone())) {
            Ok(_) => appended += 1,
            Err(e) => break e,
        }
        assert!(appended < 1000, "a 3 MiB file system never filled up");
    };
    let text = err.to_string();
    assert!(matches!(err, Error::NotWritable { .. }), "{text}");
    assert!(text.contains("full") && text.contains("Free space"), "{text}");
    assert!(text.contains(&format!("event {appended}")), "{text}");
    drop(j);
    // Everything acknowledged before is still there and verifies.
    let j = open(&state);
    assert_eq!(j.verify().unwrap().len, appended);
}

/// A disk that fills up while a journal is open (another program's file): the very next append
/// is refused, before the storage engine finds room inside its own file, and once space is
/// freed appending goes on with nothing lost; then the same for the file system remounted
/// read-only. Needs root to mount a small tmpfs.
#[test]
fn a_disk_filled_or_remounted_read_only_under_an_open_journal_refuses_the_next_append_and_recovers()
{
    let small = Tmpfs::mount("8m");
    let mnt = small.path().to_owned();
    let state = mnt.join("rot");
    let mut j = open(&state);
    for i in 0..50 {
        j.append(&Ev::Note(format!("before-{i}"))).unwrap();
    }
    // Fill the file system to the last byte.
    let filler = mnt.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.write_all(&[0u8; 1]);
    }
    let err =
        j.append(&Ev::Note("during".into())).expect_err("an append on a full disk must be refused");
    assert!(matches!(err, Error::NotWritable { seq: 50, .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("full") && text.contains("Free space") && text.contains("rot"), "{text}");
    std::fs::remove_file(&filler).unwrap();
    j.append(&Ev::Note("after".into())).unwrap();
    assert_eq!(j.verify().unwrap().len, 51);
    let notes: Vec<String> = j
        .replay()
        .unwrap()
        .into_iter()
        .map(|r| match r.event {
            Ev::Note(n) => n,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(notes.last().map(String::as_str), Some("after"));
    assert!(!notes.iter().any(|n| n == "during"));

    // The same file system remounted read-only (a file system with errors is remounted so by
    // the kernel; a remount by hand needs the journal closed): opening it to append is refused,
    // saying so and naming the directory; read-write again, appending goes on.
    drop(j);
    let remount = |how: &str| {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,{how}")])
            .arg(&mnt)
            .status()
            .unwrap();
        assert!(ok.success(), "remount {how}");
    };
    remount("ro");
    let Err(err) = Journal::<Ev>::open(&state, Actor::current("t")) else {
        panic!("a read-only state directory must be refused");
    };
    assert!(matches!(err, Error::ReadOnly { .. }), "{err}");
    let text = err.to_string();
    assert!(
        text.contains("read-only")
            && text.contains("Remount it read-write")
            && text.contains("rot"),
        "{text}"
    );
    remount("rw");
    let mut j = open(&state);
    j.append(&Ev::Note("writable".into())).unwrap();
    assert_eq!(j.verify().unwrap().len, 52);
}

/// A tmpfs of `size` mounted in a temporary directory, unmounted on drop (needs root, as CI and
/// `make test` run).
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(mounted.success(), "mount tmpfs (run the tests as root, as `make test` does)");
        Tmpfs(dir)
    }

    fn path(&self) -> &std::path::Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.0.path()).status();
    }
}
