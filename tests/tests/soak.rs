//! The crash matrix (`make soak`, not part of `make test`): on a 3+2 testbed, kubeca is
//! SIGKILLed inside every step of a rotation and at every step boundary, run again each time
//! until the rotation completes; then the same for a rollback from the finalize gate, inside
//! every compensation and at every boundary. After every kill the journal must verify and hold
//! every step the killed process had reported done (nothing lost); at the end, the end state of
//! the end-to-end tests must hold with zero trust failures (a TLS refusal either way, or a 401 after the handshake). Prints the table that
//! RELIABILITY.md reproduces. `KUBECA_SOAK_SEED=N` replays the delays inside steps.
//!
//! Run: `make soak` (= `cargo test -p kubeca-tests --test soak`, as root).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

use std::time::{Duration, Instant};

use kubeca_tests::harness::Testbed;
use kubeca_tests::harness::checks::{self, Cas};
use kubeca_tests::harness::in_cluster;
use kubeca_tests::harness::kubeca::{Kubeca, field};
use kubeca_tests::harness::snapshot::snapshot;
use kubeca_tests::seeded::{self, Rng};

/// Where a kill lands, by the command's progress count `k` (steps or compensations done when
/// a step starts): inside the step started at count `k` (after a delay), or right when the
/// count reaches `k + 1`. Lines are placed on the same scale: a `started` line at count `p` is
/// position `2p`, a `done` line bringing the count to `p` is position `2p - 1`. A point whose
/// position a line has gone past without matching it is "not reached": a resumed run recovered
/// that step together with others (a parallel group) without starting it again.
#[derive(Clone, Debug)]
enum Point {
    /// `delay` after a step (or compensation) started.
    Inside(u64, Duration),
    /// Right when a step (or compensation) was reported done.
    After(u64),
}

impl Point {
    fn position(&self) -> u64 {
        match self {
            Point::Inside(k, _) => 2 * k,
            Point::After(k) => 2 * k + 1,
        }
    }
}

/// What a crash matrix run saw.
#[derive(Default, Debug)]
struct Tally {
    tried: usize,
    killed: usize,
    not_reached: usize,
    lost: usize,
}

/// `n` of a log line's `progress` field `n/m`.
fn progress(v: &serde_json::Value) -> Option<u64> {
    field(v, "progress")?.split('/').next()?.parse().ok()
}

/// `m` of a log line's `progress` field `n/m`.
fn total(v: &serde_json::Value) -> Option<u64> {
    field(v, "progress")?.split('/').nth(1)?.parse().ok()
}

/// How many runs in a row may pause (exit 75) without a kill in between before the soak gives up:
/// the finalize gate is one pause and a step that failed and is retried by the next run another
/// few; a command that pauses more often than that is stuck, and looping on it would never end.
const MAX_PAUSES_IN_A_ROW: u32 = 10;

/// Counts the runs in a row that paused; fails the soak past [`MAX_PAUSES_IN_A_ROW`].
#[derive(Default)]
struct Pauses(u32);

impl Pauses {
    /// A run of `args` paused (exit 75): panics, saying so, once too many did in a row.
    fn paused(&mut self, k: &Kubeca, args: &[&str]) {
        self.0 += 1;
        if self.0 > MAX_PAUSES_IN_A_ROW {
            let said: Vec<&str> = k.said.lines().collect();
            panic!(
                "kubeca {args:?} paused (exit 75) {} times in a row without a kill or finishing; \
                 it is stuck. Its last lines:\n{}",
                self.0,
                said[said.len().saturating_sub(30)..].join("\n")
            );
        }
    }
}

/// Runs `args` repeatedly, killing at each point in turn, until the command finishes (exit 0).
/// `started`/`done` are the log messages of the steps this command runs.
fn crash_through(
    k: &mut Kubeca,
    args: &[&str],
    points: Vec<Point>,
    started: &str,
    done: &str,
    approve_at_gate: bool,
) -> Tally {
    let mut tally = Tally::default();
    let mut pauses = Pauses::default();
    let mut points = std::collections::VecDeque::from(points);
    while !points.is_empty() {
        let mut last_done = 0;
        let mut count = None;
        let mut skipped = 0;
        let mut fired = None;
        let (status, killed) = k.run_killed_when(args, |v| {
            let msg = field(v, "message");
            let p = progress(v)?;
            let position = if msg == Some(started) {
                count = count.or(total(v));
                2 * p
            } else if msg == Some(done) {
                last_done = last_done.max(p);
                (2 * p).saturating_sub(1)
            } else {
                return None;
            };
            while points.front().is_some_and(|pt| pt.position() < position) {
                points.pop_front();
                skipped += 1;
            }
            match points.front() {
                Some(pt) if pt.position() == position => {
                    fired = points.pop_front();
                    Some(match fired {
                        Some(Point::Inside(_, d)) => d,
                        _ => Duration::ZERO,
                    })
                }
                _ => None,
            }
        });
        tally.tried += skipped;
        tally.not_reached += skipped;
        if let Some(m) = count {
            // Points past the last step of this command do not exist.
            points.retain(|p| p.position() < 2 * m);
        }
        if killed {
            tally.tried += 1;
            tally.killed += 1;
            pauses = Pauses::default();
            k.after_kill();
            let status: serde_json::Value =
                serde_json::from_slice(&k.expect(&["status", "--output", "json"], 0).stdout)
                    .unwrap();
            if status["done"].as_u64().unwrap_or(0) < last_done {
                tally.lost += 1;
                eprintln!(
                    "LOST: {fired:?}: the killed kubeca reported {last_done} done; the journal holds {status}"
                );
            }
            continue;
        }
        match status.code() {
            Some(0) => {
                // Finished: the remaining points lie past the end.
                tally.tried += points.len();
                tally.not_reached += points.len();
                return tally;
            }
            Some(75) if approve_at_gate => {
                pauses.paused(k, args);
                let _ = k.run(&["approve", "finalize"]);
            }
            other => panic!("kubeca {args:?} exited {other:?}"),
        }
    }
    loop {
        match k.run(args).status.code() {
            Some(0) => return tally,
            Some(75) => {
                pauses.paused(k, args);
                if approve_at_gate {
                    let _ = k.run(&["approve", "finalize"]);
                }
            }
            other => panic!("kubeca {args:?} exited {other:?}"),
        }
    }
}

/// A kill inside and one after each of `n` steps, in order; delays inside up to 1.5 s.
fn points_for(n: u64, rng: &mut Rng) -> Vec<Point> {
    (0..n)
        .flat_map(|k| {
            [Point::Inside(k, Duration::from_millis(rng.next_u64() % 1500)), Point::After(k)]
        })
        .collect()
}

fn plan_len(k: &mut Kubeca) -> u64 {
    let plan: serde_json::Value =
        serde_json::from_slice(&k.expect(&["plan", "--output", "json"], 0).stdout).unwrap();
    plan["steps"].as_array().unwrap().len() as u64
}

fn main() {
    let tb = Testbed::up("soak-3-2", 3, 2, &[]);
    let seed = seeded::seed("KUBECA_SOAK_SEED", "crash matrix");
    let mut rng = Rng(seed);
    let inventory = tb.dir.join("inventory.toml").display().to_string();

    // A rotation killed at every point, resumed each time.
    let old_admin = tb.dir.join("admin-before-soak.conf");
    std::fs::copy(tb.dir.join("admin.conf"), &old_admin).unwrap();
    let old = Cas::read(&tb);
    let since = jiff::Timestamp::now().to_string();
    let started = Instant::now();
    let mut k = Kubeca::new(&tb, "soak-rotation");
    k.expect(&["init", "--inventory", &inventory], 0);
    let steps = plan_len(&mut k);
    let forward =
        crash_through(&mut k, &["run"], points_for(steps, &mut rng), "started", "done", true);
    let (handshakes, failures, report) = tb.report_since(&since);
    checks::completed_rotation(&tb, &old, &old_admin, &mut k);
    let answered = in_cluster::assert_clean_since(&tb, &since);
    let forward_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "rotation: {forward:?}, {handshakes} handshakes, {failures} trust failures, {answered} answers through kubectl proxy\n{report}"
    );

    // A rollback from the finalize gate, killed at every point of the rollback.
    let old = Cas::read(&tb);
    let before = snapshot(&tb);
    let since_rb = jiff::Timestamp::now().to_string();
    let started = Instant::now();
    let mut r = Kubeca::new(&tb, "soak-rollback");
    r.expect(&["init", "--inventory", &inventory], 0);
    r.expect(&["run"], 75);
    // At most two compensations per done step (a restore, a restart); the points past the
    // rollback's real length are dropped once its first line says it.
    let points = points_for(2 * plan_len(&mut r), &mut rng);
    let backward = crash_through(
        &mut r,
        &["rollback", "--yes"],
        points,
        "rollback step started",
        "rollback step done",
        false,
    );
    let (rb_handshakes, rb_failures, rb_report) = tb.report_since(&since_rb);
    checks::rolled_back(&tb, &before, &old);
    let rb_answered = in_cluster::assert_clean_since(&tb, &since_rb);
    let backward_secs = started.elapsed().as_secs_f64();
    eprintln!(
        "rollback: {backward:?}, {rb_handshakes} handshakes, {rb_failures} trust failures, {rb_answered} answers through kubectl proxy\n{rb_report}"
    );

    println!(
        "| run | kill points tried | killed there | not reached (recovered before) | completed correctly | trust failures | data lost | wall |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| rotation (every step: inside and after) | {} | {} | {} | yes | {failures} | {} | {forward_secs:.0} s |",
        forward.tried, forward.killed, forward.not_reached, forward.lost
    );
    println!(
        "| rollback from the gate (every compensation: inside and after) | {} | {} | {} | yes | {rb_failures} | {} | {backward_secs:.0} s |",
        backward.tried, backward.killed, backward.not_reached, backward.lost
    );
    println!("seed {seed}");
    assert_eq!(failures + rb_failures, 0, "trust failures under the crash matrix");
    assert_eq!(forward.lost + backward.lost, 0, "records lost after a kill");
}
