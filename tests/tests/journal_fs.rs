//! The journal on a real file system that fills up or is remounted read-only under it: each test
//! mounts a small tmpfs with `mount`, so it needs root (CI and `make test` run as root). In this
//! tier, not in the journal's own tests, because those touch no process and need no privilege.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::path::Path;

use journal::{Actor, Error, Journal};
use serde::{Deserialize, Serialize};

/// The event type these tests journal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
enum Ev {
    Note(String),
}

fn open(dir: &Path) -> Journal<Ev> {
    Journal::open(dir, Actor::current("journal-fs-tests 0")).expect("open journal")
}

/// A full disk: the append fails, says what to free, and the journal stays readable with every
/// record appended before it.
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
/// read-only.
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
        .map(|r| {
            let Ev::Note(n) = r.event;
            n
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

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(self.0.path()).status();
    }
}
