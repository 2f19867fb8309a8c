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
fn verify_with_a_missing_inventory_is_a_configuration_error() {
    let out = kubeca(&["verify", "--inventory", "/nonexistent/cluster.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("/nonexistent/cluster.toml"), "{}", text(&out));
}

#[test]
fn run_before_init_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = kubeca(&["--state-dir", dir.path().to_str().unwrap(), "run"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("run `init` first"), "{}", text(&out));
    let out = kubeca(&["--state-dir", dir.path().to_str().unwrap(), "status"]);
    assert!(out.status.success());
    assert!(text(&out).contains("init --inventory"), "{}", text(&out));
}

#[test]
fn a_bad_inventory_is_a_configuration_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let inv = dir.path().join("cluster.toml");
    std::fs::write(&inv, "[cluster]\nname = \"x\"\nkubeconfig = \"a\"\napi_endpoint = \"https://h:6443\"\nbogus = 1\n").unwrap();
    let out = kubeca(&[
        "--state-dir",
        dir.path().join("rot").to_str().unwrap(),
        "init",
        "--inventory",
        inv.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("bogus") && text(&out).contains("cluster.toml"), "{}", text(&out));
}

/// A state directory holding a recorded plan of two real actions, the first done.
fn recorded(dir: &std::path::Path) {
    use actions::action::Action;
    use engine::{Engine, Plan, Step, Summary, SystemClock};
    let j: journal::Journal<engine::Event<Action>> =
        journal::Journal::open(dir, journal::Actor::current("test")).unwrap();
    let plan = Plan::new(["preflight", "verify"])
        .step(
            Step::new(
                "preflight/check",
                "preflight",
                "preflight",
                Action::Preflight { node: "cp-1".into(), cas: Vec::new() },
            )
            .upstream("caution"),
        )
        .step(Step::new("verify/logs", "verify", "verify", Action::CheckLogs).upstream("11.1"));
    let engine = Engine::open(j, actions::action::Idle, SystemClock).unwrap();
    engine.start(plan).unwrap();
    let _ = Summary::new();
}

#[test]
fn status_export_and_verify_read_the_journal() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("rot");
    recorded(&state);
    let d = state.to_str().unwrap();
    let out = kubeca(&["--state-dir", d, "status", "--output", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["total"], 2);
    assert!(v["next"].as_str().unwrap().ends_with(" run"), "{v}");

    let export = dir.path().join("audit.jsonl");
    let out = kubeca(&[
        "--state-dir",
        d,
        "journal",
        "export",
        "--format",
        "jsonl",
        "-o",
        export.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let lines = std::fs::read_to_string(&export).unwrap();
    assert!(
        lines.contains("\"upstream\":\"11.1\""),
        "the audit record keeps upstream step numbers"
    );
    assert!(!lines.contains("PRIVATE KEY"));
    let out =
        kubeca(&["journal", "verify", "--export", export.to_str().unwrap(), "--format", "jsonl"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = kubeca(&["--state-dir", d, "journal", "verify"]);
    assert!(
        out.status.success() && text(&out).contains("journal intact: 1 records"),
        "{}",
        text(&out)
    );

    // An edited export is refused.
    std::fs::write(&export, lines.replace("11.1", "11.2")).unwrap();
    let out =
        kubeca(&["journal", "verify", "--export", export.to_str().unwrap(), "--format", "jsonl"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
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

#[test]
fn a_state_directory_from_a_newer_kubeca_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("rot");
    recorded(&state);
    std::fs::write(state.join("kubeca-format"), "99\n").unwrap();
    let out = kubeca(&["--state-dir", state.to_str().unwrap(), "status"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("newer kubeca"), "{}", text(&out));
}

#[test]
fn status_while_another_kubeca_holds_the_lock_shows_its_live_status() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("rot");
    recorded(&state);
    std::fs::write(state.join("status.json"), r#"{"condition":"Ready","done":3,"total":9,"phase":"prepare","current":"prepare/new-ca","next":"wait"}"#).unwrap();
    let holder: journal::Journal<String> =
        journal::Journal::open(&state, journal::Actor::current("other")).unwrap();
    let out = kubeca(&["--state-dir", state.to_str().unwrap(), "status"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("is running") && text(&out).contains("prepare/new-ca"),
        "{}",
        text(&out)
    );
    drop(holder);
}

#[test]
fn a_second_kubeca_that_would_write_is_refused_naming_the_first() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("rot");
    recorded(&state);
    let d = state.to_str().unwrap();
    let holder: journal::Journal<String> =
        journal::Journal::open(&state, journal::Actor::current("other")).unwrap();
    let before = std::fs::read(state.join(journal::DB_FILE)).unwrap();
    let me = format!("pid {}", std::process::id());
    for args in [
        &["run"][..],
        &["rollback", "--yes"],
        &["approve", "finalize"],
        &["journal", "unlock", "--lock-id", "x"],
    ] {
        let mut all = vec!["--state-dir", d];
        all.extend_from_slice(args);
        let out = kubeca(&all);
        let t = text(&out);
        assert_eq!(out.status.code(), Some(1), "kubeca {args:?}: {t}");
        assert!(
            t.contains("in use by") && t.contains(&me),
            "kubeca {args:?} must name the holder: {t}"
        );
    }
    assert_eq!(std::fs::read(state.join(journal::DB_FILE)).unwrap(), before, "nothing recorded");
    drop(holder);
}

#[test]
fn a_stale_lock_after_kill_9_is_reported_with_its_id_and_cleared_only_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("rot");
    recorded(&state);
    let d = state.to_str().unwrap();
    // What a kubeca killed with SIGKILL leaves: its owner record, and no flock.
    let record = r#"{"pid":999999,"host":"h","user":"root","since":"2026-11-28T02:00:00Z","lock_id":"0123456789abcdef"}"#;
    std::fs::write(state.join("lock"), record).unwrap();
    let out = kubeca(&["--state-dir", d, "status"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("stale lock") && t.contains("pid 999999") && t.contains("0123456789abcdef"),
        "{t}"
    );
    let out = kubeca(&["--state-dir", d, "journal", "unlock", "--lock-id", "ffffffffffffffff"]);
    assert_eq!(out.status.code(), Some(1), "a wrong id clears nothing: {}", text(&out));
    assert!(kubeca(&["--state-dir", d, "status"]).status.code() == Some(1));
    let out = kubeca(&["--state-dir", d, "journal", "unlock", "--lock-id", "0123456789abcdef"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = kubeca(&["--state-dir", d, "status"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn plan_lists_every_step_with_its_upstream_number_and_the_trust_check() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("rot");
    recorded(&state);
    let topology = actions::trust::Topology {
        control_planes: vec!["cp-1".into(), "cp-2".into()],
        workers: vec!["w-1".into()],
        ..Default::default()
    };
    std::fs::write(state.join("topology.json"), serde_json::to_vec(&topology).unwrap()).unwrap();
    let d = state.to_str().unwrap();
    let out = kubeca(&["--state-dir", d, "plan"]);
    assert!(out.status.success(), "{}", text(&out));
    let t = text(&out);
    assert!(
        t.contains("== preflight") && t.contains("caution") && t.contains("preflight/check"),
        "{t}"
    );
    assert!(t.contains("11.1") && t.contains("verify/logs"), "{t}");
    assert!(t.contains("every connection holds"), "{t}");
    let out = kubeca(&["--state-dir", d, "plan", "--output", "json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["steps"].as_array().unwrap().len(), 2);
    assert_eq!(v["steps"][1]["upstream"], "11.1");
}

#[test]
fn every_exported_step_event_carries_its_upstream_step_number() {
    use actions::action::Action;
    use engine::{Engine, Plan, RunOptions, Step, SystemClock};
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("rot");
    {
        let j: journal::Journal<engine::Event<Action>> =
            journal::Journal::open(&state, journal::Actor::current("test")).unwrap();
        let plan = Plan::new(["verify"])
            .step(Step::new("verify/logs", "verify", "verify", Action::CheckLogs).upstream("11.1"));
        let engine = Engine::open(j, actions::action::Idle, SystemClock).unwrap();
        engine.start(plan).unwrap();
        // The idle runner refuses to act: a started and a failed event are recorded.
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(engine.run(&RunOptions::default())).unwrap();
    }
    let export = dir.path().join("audit.csv");
    let d = state.to_str().unwrap();
    let out = kubeca(&[
        "--state-dir",
        d,
        "journal",
        "export",
        "--format",
        "csv",
        "-o",
        export.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let csv = std::fs::read_to_string(&export).unwrap();
    let step_lines: Vec<&str> =
        csv.lines().filter(|l| l.contains("StepStarted") || l.contains("StepFailed")).collect();
    assert!(step_lines.len() >= 2, "{csv}");
    for l in step_lines {
        assert!(l.contains(r#"""upstream_step"":""11.1"""#), "{l}");
    }
    let out =
        kubeca(&["journal", "verify", "--export", export.to_str().unwrap(), "--format", "csv"]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_bad_window_or_phase_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("rot");
    recorded(&state);
    let d = state.to_str().unwrap();
    for args in [
        vec!["run", "--window", "tomorrow"],
        vec!["run", "--window", "2026-12-05T02:00Z/forever"],
        vec!["run", "--until", "switcheroo"],
    ] {
        let mut all = vec!["--state-dir", d];
        all.extend(args.iter().copied());
        let out = kubeca(&all);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out));
        assert!(text(&out).contains(args[2]), "{args:?} names the bad value: {}", text(&out));
    }
}
