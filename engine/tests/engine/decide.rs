//! Every decision of the driver, from the folded state alone: given events, when `decide`, then
//! this stage.

use std::time::Duration;

use engine::*;

use crate::util::given::*;
use crate::util::*;

fn plan() -> Plan<Act> {
    Plan::new(["prepare", "rollout", "finalize"])
        .keep_groups_whole("rollout")
        .group("nodes", 2, 1)
        .step(set("a", "prepare", "x/a", 1))
        .step(set("n1", "rollout", "n1/k", 1).in_group("nodes"))
        .step(set("n2", "rollout", "n2/k", 1).in_group("nodes"))
        .step(set("n3", "rollout", "n3/k", 1).in_group("nodes"))
        .gate("finalize", "finalize", "clients updated")
        .step(set("z", "finalize", "x/z", 1))
}

fn decide_at(events: &[Event<Act>], options: &RunOptions, secs: i64) -> Stage {
    decide(&State::fold(events), options, at(secs)).unwrap()
}

fn single(id: &str) -> Stage {
    Stage::Execute(Unit { track: Track::Forward, group: None, steps: vec![sid(id)], whole: false })
}

fn window(start_secs: i64, minutes: u64) -> Option<Window> {
    Some(Window { start: at(start_secs), duration: Duration::from_secs(minutes * 60) })
}

#[test]
fn given_a_fresh_run_when_deciding_then_the_first_step_executes() {
    let stage = decide_at(&[run_started(plan())], &RunOptions::default(), 0);
    assert_eq!(stage, single("a"));
}

#[test]
fn given_no_run_when_deciding_then_it_is_refused() {
    let result = decide(&State::<Act>::fold(&[]), &RunOptions::default(), at(0));
    assert!(matches!(result, Err(Error::NotStarted)));
}

#[test]
fn given_a_group_when_deciding_then_its_unfinished_steps_execute_together() {
    let mut events = vec![run_started(plan())];
    events.extend(done("a"));
    events.extend(done("n2"));
    let stage = decide_at(&events, &RunOptions::default(), 0);
    assert_eq!(
        stage,
        Stage::Execute(Unit {
            track: Track::Forward,
            group: Some("nodes".into()),
            steps: vec![sid("n1"), sid("n3")],
            whole: true,
        })
    );
}

fn through_rollout() -> Vec<Event<Act>> {
    let mut events = vec![run_started(plan())];
    for id in ["a", "n1", "n2", "n3"] {
        events.extend(done(id));
    }
    events
}

#[test]
fn given_an_unapproved_gate_when_deciding_then_the_run_awaits_it() {
    let stage = decide_at(&through_rollout(), &RunOptions::default(), 0);
    assert_eq!(stage, Stage::AwaitGate("finalize".into()));
}

#[test]
fn given_an_approved_gate_when_deciding_then_the_step_behind_it_executes() {
    let mut events = through_rollout();
    events.push(approved("finalize"));
    assert_eq!(decide_at(&events, &RunOptions::default(), 0), single("z"));
}

#[test]
fn given_every_step_done_when_deciding_then_the_run_finishes() {
    let mut events = through_rollout();
    events.push(approved("finalize"));
    events.extend(done("z"));
    assert_eq!(decide_at(&events, &RunOptions::default(), 0), Stage::Finish);
    events.push(completed());
    assert_eq!(decide_at(&events, &RunOptions::default(), 0), Stage::Stopped(Outcome::Completed));
}

#[test]
fn given_until_a_phase_when_it_is_done_then_the_run_pauses_as_asked() {
    let options = RunOptions { until: Some("prepare".into()), ..RunOptions::default() };
    let mut events = vec![run_started(plan())];
    assert_eq!(decide_at(&events, &options, 0), single("a"));
    events.extend(done("a"));
    assert_eq!(
        decide_at(&events, &options, 0),
        Stage::Pause(PauseReason::Until { phase: "prepare".into() })
    );
    // A gate of a later phase is not reached either.
    let options = RunOptions { until: Some("rollout".into()), ..RunOptions::default() };
    assert_eq!(
        decide_at(&through_rollout(), &options, 0),
        Stage::Pause(PauseReason::Until { phase: "rollout".into() })
    );
}

#[test]
fn given_an_unknown_until_phase_when_deciding_then_it_is_refused() {
    let options = RunOptions { until: Some("nope".into()), ..RunOptions::default() };
    let result = decide(&State::fold(&[run_started(plan())]), &options, at(0));
    assert!(matches!(result, Err(Error::UnknownPhase(p)) if p.as_str() == "nope"));
}

#[test]
fn given_cancellation_when_deciding_then_no_step_starts() {
    let (canceller, cancel) = Cancel::new();
    canceller.cancel();
    let options = RunOptions { cancel, ..RunOptions::default() };
    assert_eq!(
        decide_at(&[run_started(plan())], &options, 0),
        Stage::Pause(PauseReason::Cancelled { abandoned: vec![] })
    );
}

#[test]
fn given_a_window_not_yet_open_when_deciding_then_the_run_pauses_until_it_opens() {
    let options = RunOptions { window: window(3600, 240), ..RunOptions::default() };
    assert_eq!(
        decide_at(&[run_started(plan())], &options, 0),
        Stage::Pause(PauseReason::WindowClosed { opens: Some(at(3600)) })
    );
    assert_eq!(decide_at(&[run_started(plan())], &options, 3600), single("a"));
}

#[test]
fn given_a_window_that_ended_when_deciding_then_the_run_pauses() {
    let options = RunOptions { window: window(0, 60), ..RunOptions::default() };
    assert_eq!(
        decide_at(&[run_started(plan())], &options, 3600),
        Stage::Pause(PauseReason::WindowClosed { opens: None })
    );
}

#[test]
fn given_a_step_expected_to_overrun_the_window_when_deciding_then_it_is_not_started() {
    // The plan's estimate is 60 s; the window has 30 s left.
    let options = RunOptions { window: window(0, 10), ..RunOptions::default() };
    assert_eq!(
        decide_at(&[run_started(plan())], &options, 570),
        Stage::Pause(PauseReason::WindowTooShort {
            step: sid("a"),
            expected: Duration::from_secs(60),
            ends: at(600),
        })
    );
    assert_eq!(decide_at(&[run_started(plan())], &options, 540), single("a"));
}

#[test]
fn given_recorded_durations_when_deciding_then_they_replace_the_estimate() {
    // "a" (kind "set") took 7 s, so the group's steps expect 7 s instead of the plan's 60 s:
    // three steps two at a time are two waves, 14 s.
    let mut events = vec![run_started(plan())];
    events.extend([started("a", 1, 0), succeeded("a", 1, 7)]);
    let options = RunOptions { window: window(0, 10), ..RunOptions::default() };
    assert!(matches!(decide_at(&events, &options, 570), Stage::Execute(_)));
    assert_eq!(
        decide_at(&events, &options, 590),
        Stage::Pause(PauseReason::WindowTooShort {
            step: sid("n1"),
            expected: Duration::from_secs(14),
            ends: at(600),
        })
    );
}

#[test]
fn given_a_group_kept_whole_when_all_of_it_does_not_fit_then_none_of_it_starts() {
    let mut events = vec![run_started(plan())];
    events.extend(done("a")); // took 1 s: steps of kind "set" now expect 1 s
    // Three steps, two at a time: two waves of 1 s.
    let options = RunOptions { window: window(0, 10), ..RunOptions::default() };
    assert!(matches!(decide_at(&events, &options, 598), Stage::Execute(_)));
    assert_eq!(
        decide_at(&events, &options, 599),
        Stage::Pause(PauseReason::WindowTooShort {
            step: sid("n1"),
            expected: Duration::from_secs(2),
            ends: at(600),
        })
    );
}

#[test]
fn given_a_group_kept_whole_and_half_done_when_the_window_closed_then_it_is_finished() {
    let mut events = vec![run_started(plan())];
    events.extend(done("a"));
    events.extend(done("n1"));
    let options = RunOptions { window: window(0, 10), ..RunOptions::default() };
    assert_eq!(
        decide_at(&events, &options, 7200),
        Stage::Execute(Unit {
            track: Track::Forward,
            group: Some("nodes".into()),
            steps: vec![sid("n2"), sid("n3")],
            whole: true,
        })
    );
}

#[test]
fn given_a_step_that_may_have_happened_when_the_window_closed_then_it_is_resolved() {
    let events = vec![run_started(plan()), started("a", 1, 0)];
    let options = RunOptions { window: window(0, 10), ..RunOptions::default() };
    assert_eq!(decide_at(&events, &options, 7200), single("a"));
}
