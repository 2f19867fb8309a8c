//! kubeca end to end on a 3 control-plane + 2 worker testbed, through the `kubeca` command as
//! an operator types it: a full rotation with zero trust failures (the no-outage figure), a
//! maintenance window that closes mid-run, SIGKILLs at seeded points with `run` resuming each
//! time, and rollbacks from every phase (one of them killed halfway and run again), each
//! checked against the live cluster with openssl, curl and kubectl.
//!
//! One testbed serves every scenario, in order: each rotation starts from the CAs the previous
//! one left (a completed rotation's new CA is the next one's old CA; a rollback leaves the old).
//! The seed of the kill points is printed; `KUBECA_E2E_SEED=N` replays it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod testbed {
    #[allow(dead_code)]
    pub mod util;
}
mod rotation_e2e {
    pub mod checks;
    pub mod cluster;
}

use std::time::{Duration, Instant};

use kubeca_tests::seeded::{self, Rng};
use rotation_e2e::checks::{self, Cas};
use rotation_e2e::cluster::{Kubeca, field, report_since, snapshot};
use testbed::util::Testbed;

/// A copy of the operator's kubeconfig (the inventory's, which kubeca rewrites during the
/// rotation) as it is before a rotation.
fn save_admin(tb: &Testbed, name: &str) -> std::path::PathBuf {
    let copy = tb.dir.join(format!("admin-before-{name}.conf"));
    std::fs::copy(tb.dir.join("admin.conf"), &copy).unwrap();
    copy
}

fn inventory(tb: &Testbed) -> String {
    tb.dir.join("inventory.toml").display().to_string()
}

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

/// A `started` log line of step `id`.
fn started(v: &serde_json::Value, pred: impl Fn(&str) -> bool) -> bool {
    field(v, "message") == Some("started") && field(v, "step").is_some_and(pred)
}

/// The plan's steps (id, phase, status) as `plan --output json` prints them.
fn plan_steps(k: &mut Kubeca) -> Vec<(String, String, String)> {
    let plan: serde_json::Value = serde_json::from_slice(&k.expect(&["plan", "--output", "json"], 0).stdout).unwrap();
    plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap().to_string(),
                s["phase"].as_str().unwrap().to_string(),
                s["status"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn rotation_end_to_end_3_control_planes_2_workers() {
    let tb = Testbed::up("e2e-3-2", 3, 2, &[]);
    let seed = seeded::seed("KUBECA_E2E_SEED", "end-to-end rotation");
    let mut rng = Rng(seed);
    // KUBECA_E2E_SCENARIOS=full,resume,rollback-gate,... runs only those (while developing).
    let only = std::env::var("KUBECA_E2E_SCENARIOS").ok();
    let wanted = |name: &str| only.as_deref().is_none_or(|o| o.split(',').any(|s| s == name));
    if wanted("full") {
        full_rotation(&tb);
    }
    if wanted("resume") {
        window_and_kills(&tb, &mut rng);
    }
    for phase in ["prepare", "trust-control-plane", "trust-nodes", "switch", "gate", "finalize"] {
        if wanted(&format!("rollback-{phase}")) {
            rollback_from(&tb, phase, &mut rng);
        }
    }
}

/// Test 1: init, plan, run to the gate, approve, run to completion; zero TLS trust failures
/// for the whole rotation; the end state of [`checks::completed_rotation`].
fn full_rotation(tb: &Testbed) {
    let old_admin = save_admin(tb, "full");
    let old = Cas::read(tb);
    let since = now();
    let started_at = Instant::now();
    let mut k = Kubeca::new(tb, "full");
    k.expect(&["init", "--inventory", &inventory(tb)], 0);
    k.expect(&["plan"], 0);
    k.expect(&["run"], 75); // the finalize gate
    k.expect(&["approve", "finalize"], 0);
    k.expect(&["run"], 0);
    let wall = started_at.elapsed().as_secs_f64();
    let (handshakes, failures, report) = report_since(tb, &since);
    println!(
        "FIGURES full rotation on 3+2: wall {wall:.1} s, kubeca CPU {:.2} s, handshakes seen {handshakes}, failed {failures}",
        k.cpu
    );
    assert_eq!(failures, 0, "trust failures during the rotation:\n{report}");
    checks::completed_rotation(tb, &old, &old_admin, &mut k);
}

/// Tests 5 and 2: a window that closes mid-run pauses with exit 75 at a safe point; then
/// SIGKILLs at seeded points (inside a remote write, during an apiserver restart, and four
/// more), `run` again after each; the rotation completes with the end state of test 1.
fn window_and_kills(tb: &Testbed, rng: &mut Rng) {
    let old_admin = save_admin(tb, "resume");
    let old = Cas::read(tb);
    let since = now();
    let mut k = Kubeca::new(tb, "resume");
    k.expect(&["init", "--inventory", &inventory(tb)], 0);
    // Long enough for the first phases, too short for the whole rotation.
    let window = format!("{}/150s", jiff::Timestamp::now());
    let out = k.expect(&["run", "--window", &window], 75);
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("window"), "the pause must say the window closed: {said}");
    let status: serde_json::Value =
        serde_json::from_slice(&k.expect(&["status", "--output", "json"], 0).stdout).unwrap();
    // Paused between steps: the window check runs before a step starts, never during one.
    assert!(status["condition"].as_str().unwrap().starts_with("Paused(Window"), "{status}");
    let (done, total) = (status["done"].as_u64().unwrap(), status["total"].as_u64().unwrap());
    assert!(done > 0 && done < total, "the window closed mid-run, yet {done} of {total} steps are done");

    // Kill points among the steps not done yet.
    let steps = plan_steps(&mut k);
    let todo: Vec<&(String, String, String)> = steps.iter().filter(|s| s.2 != "Succeeded" && s.2 != "Recovered").collect();
    let pick = |rng: &mut Rng, pred: &dyn Fn(&str) -> bool| -> String {
        let c: Vec<&String> = todo.iter().map(|s| &s.0).filter(|id| pred(id)).collect();
        assert!(!c.is_empty(), "no step left to kill in");
        c[(rng.next_u64() % c.len() as u64) as usize].clone()
    };
    let mut targets: Vec<(String, Duration)> = vec![
        // Inside a remote write: re-issuing a certificate writes it on the node right away.
        (pick(rng, &|id| id.starts_with("switch/reissue/")), Duration::from_millis(rng.next_u64() % 300)),
        // During an apiserver restart: its manifest is parked or being put back.
        (pick(rng, &|id| id.starts_with("switch/apiserver/")), Duration::from_millis(800 + rng.next_u64() % 1200)),
    ];
    while targets.len() < 6 {
        let id = pick(rng, &|id| !targets.iter().any(|t| t.0 == id));
        targets.push((id, Duration::from_millis(rng.next_u64() % 1500)));
    }
    let index = |id: &str| steps.iter().position(|s| s.0 == id).unwrap();
    targets.sort_by_key(|t| index(&t.0));
    println!("kill points: {targets:?}");

    let mut kills = 0;
    let mut runs = 0;
    loop {
        runs += 1;
        assert!(runs < 30, "the rotation did not complete after {runs} runs");
        let (status, killed) = match targets.first().cloned() {
            Some((id, delay)) => k.run_killed_when(&["run"], |v| started(v, |s| s == id).then_some(delay)),
            None => (k.run(&["run"]).status, false),
        };
        if killed {
            kills += 1;
            targets.remove(0);
            k.after_kill();
            continue;
        }
        match status.code() {
            Some(0) => break,
            // The gate (or a pause after a failure, which the next run retries).
            Some(75) => {
                let _ = k.run(&["approve", "finalize"]);
            }
            other => panic!("kubeca run exited {other:?}"),
        }
    }
    assert!(kills >= 6, "only {kills} kills happened; unfired: {targets:?}");
    let (handshakes, failures, report) = report_since(tb, &since);
    println!("FIGURES resumed rotation: {kills} kills, {runs} runs, handshakes {handshakes}, failed {failures}");
    assert_eq!(failures, 0, "trust failures during the resumed rotation:\n{report}");
    checks::completed_rotation(tb, &old, &old_admin, &mut k);
}

/// Test 3 (and 4 for the rollback from the gate): a rotation stopped in `phase` and rolled
/// back leaves every file as it was and every component serving and trusting as before, with
/// zero TLS trust failures.
fn rollback_from(tb: &Testbed, phase: &str, rng: &mut Rng) {
    let old = Cas::read(tb);
    let before = snapshot(tb);
    let since = now();
    let started_at = Instant::now();
    let mut k = Kubeca::new(tb, &format!("rollback-{phase}"));
    k.expect(&["init", "--inventory", &inventory(tb)], 0);
    match phase {
        "prepare" | "trust-control-plane" | "trust-nodes" => {
            k.expect(&["run", "--until", phase], 0);
        }
        "switch" => {
            // Killed in the middle of the switch: after one to three of its steps started.
            k.expect(&["run", "--until", "trust-nodes"], 0);
            let n = 1 + rng.next_u64() % 3;
            let mut seen = 0;
            let (_, killed) = k.run_killed_when(&["run"], |v| {
                if started(v, |s| s.starts_with("switch/")) {
                    seen += 1;
                }
                (seen >= n).then(|| Duration::from_millis(rng.next_u64() % 1500))
            });
            assert!(killed, "the run ended before the switch");
            k.after_kill();
        }
        "gate" => {
            k.expect(&["run"], 75);
        }
        "finalize" => {
            k.expect(&["run"], 75);
            k.expect(&["approve", "finalize"], 0);
            let n = 5 + rng.next_u64() % 15;
            let mut seen = 0;
            let (_, killed) = k.run_killed_when(&["run"], |v| {
                if started(v, |s| s.starts_with("finalize/")) {
                    seen += 1;
                }
                (seen >= n).then(|| Duration::from_millis(rng.next_u64() % 1500))
            });
            assert!(killed, "the run ended before the middle of finalize");
            k.after_kill();
        }
        other => panic!("no such phase {other}"),
    }
    if phase == "gate" {
        // Test 4: the rollback killed halfway, then run again, finishes.
        let n = 3 + rng.next_u64() % 10;
        let mut seen = 0;
        let (_, killed) = k.run_killed_when(&["rollback", "--yes"], |v| {
            if field(v, "message") == Some("rollback step done") {
                seen += 1;
            }
            (seen >= n).then(|| Duration::from_millis(rng.next_u64() % 1000))
        });
        assert!(killed, "the rollback ended before {n} of its steps");
        k.after_kill();
    }
    k.expect(&["rollback", "--yes"], 0);
    let (handshakes, failures, report) = report_since(tb, &since);
    println!(
        "FIGURES rollback from {phase}: {:.1} s, handshakes {handshakes}, failed {failures}",
        started_at.elapsed().as_secs_f64()
    );
    assert_eq!(failures, 0, "trust failures around the rollback from {phase}:\n{report}");
    checks::rolled_back(tb, &before, &old);
}
