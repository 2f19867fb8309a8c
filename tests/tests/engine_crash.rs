//! The engine across processes: a run over the real journal, SIGKILLed mid-run several times and
//! resumed by running again, completes with every effect in place, the plan recorded once, and no
//! effect applied again while its postcondition held.
//!
//! Seeded: the seed is printed; `ENGINE_CRASH_SEED=<n>` reproduces a run.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use engine::{Event, State, StepStatus};
use journal::{Actor, Error, Journal, force_unlock};

const CHILD: &str = env!("CARGO_BIN_EXE_engine-child");
const STEPS: usize = 80; // as in the child
const KILLS: usize = 6;

fn seed() -> u64 {
    kubeca_tests::seeded::seed("ENGINE_CRASH_SEED", "engine crash")
}

/// Clears the lock a killed child left, with the id the error names (as the cli will offer).
fn clear_stale_lock(state: &Path, dead_pid: u32) {
    match Journal::<Event<String>>::open(state, Actor::current("test")) {
        Ok(_) => {}
        Err(Error::StaleLock { owner, .. }) => {
            assert_eq!(owner.pid, dead_pid, "the stale lock names the killed child");
            force_unlock(state, &owner.lock_id).unwrap();
        }
        Err(e) => panic!("journal did not open after a kill: {e}"),
    }
}

#[test]
fn a_run_killed_by_sigkill_mid_run_resumes_to_completion() {
    let mut rng = seed();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let state_dir = dir.join("state");
    let mut in_doubt_at_kill = 0;
    for round in 0..KILLS {
        // Kill after the child reports between 1 and 8 more durable starts (at most 48 of 80).
        rng = rng.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        let wait_for = 1 + (rng >> 33) as usize % 8;
        let mut child = Command::new(CHILD)
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn engine-child");
        let stdout = child.stdout.take().unwrap();
        let mut seen = 0;
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            assert!(
                !line.starts_with("outcome"),
                "round {round}: the run ended before the kill: {line}"
            );
            seen += 1;
            if seen == wait_for {
                break;
            }
        }
        // Land the kill anywhere from before the step's effect (2 ms in) to after it.
        std::thread::sleep(std::time::Duration::from_micros((rng >> 20) % 4_000));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        clear_stale_lock(&state_dir, child.id());
        let journal: Journal<Event<String>> =
            Journal::open(&state_dir, Actor::current("test")).unwrap();
        let events: Vec<Event<String>> =
            journal.replay().unwrap().into_iter().map(|r| r.event).collect();
        let state = State::fold(&events);
        assert!(state.completed.is_none(), "round {round}: completed before the kill");
        in_doubt_at_kill += state.steps.values().filter(|s| s.in_doubt()).count();
    }

    // Resumed by running again: same command, no separate mode.
    let output = Command::new(CHILD).arg(dir).output().expect("run engine-child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "final run failed: {stdout}");
    assert!(stdout.contains("outcome Completed"), "{stdout}");

    let journal: Journal<Event<String>> =
        Journal::open(&state_dir, Actor::current("test")).unwrap();
    journal.verify().unwrap();
    let events: Vec<Event<String>> =
        journal.replay().unwrap().into_iter().map(|r| r.event).collect();
    let state = State::fold(&events);
    assert!(state.completed.is_some());
    assert_eq!(
        events.iter().filter(|e| matches!(e, Event::RunStarted(_))).count(),
        1,
        "re-planned"
    );
    assert_eq!(state.steps.len(), STEPS);
    assert!(state.steps.values().all(|s| matches!(s.status, StepStatus::Succeeded { .. })));
    for i in 0..STEPS {
        let value = std::fs::read_to_string(dir.join("model").join(format!("k{i:02}"))).unwrap();
        assert_eq!(value, format!("v{i:02}"), "model file k{i:02}");
    }

    // An effect is applied again only when its postcondition was false.
    let log = std::fs::read_to_string(dir.join("applies.log")).unwrap();
    let mut applies: BTreeMap<&str, usize> = BTreeMap::new();
    for line in log.lines() {
        let mut words = line.split(' ').skip(1);
        let (Some(step), Some(held)) = (words.next(), words.next()) else {
            continue; // a line cut by the kill
        };
        let n = applies.entry(step).or_default();
        *n += 1;
        assert!(
            !(*n > 1 && held == "true"),
            "{step} was applied again while its postcondition held"
        );
    }
    assert_eq!(applies.len(), STEPS);
    let recovered = events.iter().filter(|e| matches!(e, Event::StepRecovered(_))).count();
    let reapplied = applies.values().filter(|n| **n > 1).count();
    println!(
        "{KILLS} kills, {in_doubt_at_kill} steps in doubt at a kill, {recovered} recovered by \
         postcondition, {reapplied} applied again"
    );
    assert!(in_doubt_at_kill > 0, "no kill landed mid-step: recovery was not exercised");
}
