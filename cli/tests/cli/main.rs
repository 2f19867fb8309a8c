//! The `kubeca` binary as a user meets it: help on every command, exit codes, the lock commands.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::process::{Command, Output};

fn kubeca(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubeca")).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

#[test]
fn every_command_has_help_with_an_example() {
    for cmd in [
        vec!["init"],
        vec!["plan"],
        vec!["run"],
        vec!["status"],
        vec!["approve"],
        vec!["rollback"],
        vec!["verify"],
        vec!["journal", "export"],
        vec!["journal", "verify"],
        vec!["journal", "unlock"],
    ] {
        let mut args = cmd.clone();
        args.push("--help");
        let out = kubeca(&args);
        assert!(out.status.success(), "{cmd:?}: {}", text(&out));
        assert!(text(&out).contains("Example"), "{cmd:?} --help has no example");
    }
    let top = kubeca(&["--help"]);
    assert!(text(&top).contains("Exit codes: 0 done, 75 paused"), "{}", text(&top));
}

#[test]
fn a_usage_error_exits_2() {
    assert_eq!(kubeca(&["no-such-command"]).status.code(), Some(2));
    let out = kubeca(&["plan"]);
    assert_eq!(out.status.code(), Some(2), "missing --state-dir is a usage error");
    assert!(text(&out).contains("--state-dir"), "{}", text(&out));
}

#[test]
fn commands_not_built_yet_say_so_and_fail() {
    let dir = tempfile::tempdir().unwrap();
    let out = kubeca(&["--state-dir", dir.path().to_str().unwrap(), "run"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("not built yet"), "{}", text(&out));
}

#[test]
fn unlock_clears_only_a_stale_lock_with_its_id() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("rot");
    let d = state.to_str().unwrap();
    let out = kubeca(&["--state-dir", d, "journal", "unlock", "--lock-id", "x"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("not locked"), "{}", text(&out));

    // A live holder (this process) is not cleared, whatever the id.
    let j: journal::Journal<String> =
        journal::Journal::open(&state, journal::Actor::current("test")).unwrap();
    let id = j.lock().owner().lock_id.clone();
    let out = kubeca(&["--state-dir", d, "journal", "unlock", "--lock-id", &id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("in use by pid"), "{}", text(&out));
    drop(j);
}
