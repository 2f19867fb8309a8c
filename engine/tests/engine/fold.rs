//! The fold: given events, then this state and this status. `apply` decides nothing.

use std::time::Duration;

use engine::*;

use crate::util::given::*;
use crate::util::*;

fn plan() -> Plan<Act> {
    Plan::new(["prepare", "finalize"])
        .step(set("a", "prepare", "x/a", 1).estimate(Duration::from_secs(90)))
        .step(set("b", "prepare", "x/b", 1))
        .gate("finalize", "finalize", "clients have the new CA")
        .step(set("c", "finalize", "x/c", 1))
}

#[test]
fn given_no_events_then_the_status_says_to_record_a_plan() {
    let state = State::<Act>::fold(&[]);
    let status = state.status();
    assert_eq!(status.condition, Condition::NotStarted);
    assert_eq!(status.next, Next::Start);
}

#[test]
fn given_run_started_then_every_step_is_pending_and_the_run_is_ready() {
    let state = State::fold(&[run_started(plan())]);
    assert_eq!(state.steps.len(), 3);
    assert!(state.steps.values().all(|s| s.status == StepStatus::Pending));
    assert_eq!(state.digest.as_deref(), Some(plan().digest().as_str()));
    let status = state.status();
    assert_eq!(status.condition, Condition::Ready);
    assert_eq!(status.current, Some(sid("a")));
    assert_eq!(status.phase, Some(PhaseName::from("prepare")));
    assert_eq!(status.next, Next::Run);
}

#[test]
fn given_a_start_without_outcome_then_the_step_may_have_happened() {
    let state = State::fold(&[run_started(plan()), started("a", 1, 5)]);
    assert!(state.step(&sid("a")).in_doubt());
    assert_eq!(state.step(&sid("a")).attempts, 1);
    assert_eq!(state.started_order, vec![sid("a")]);
}

#[test]
fn given_successes_then_durations_are_kept_by_kind_and_the_median_is_expected() {
    let events = vec![
        run_started(plan()),
        started("a", 1, 0),
        succeeded("a", 1, 10),
        started("b", 1, 10),
        succeeded("b", 1, 40),
        started("c", 1, 40),
        succeeded("c", 1, 60),
    ];
    let state = State::fold(&events);
    assert_eq!(
        state.durations["set"],
        vec![Duration::from_secs(10), Duration::from_secs(30), Duration::from_secs(20)]
    );
    assert_eq!(state.expected_duration("set", Duration::from_secs(999)), Duration::from_secs(20));
    assert_eq!(state.expected_duration("other", Duration::from_secs(7)), Duration::from_secs(7));
}

#[test]
fn given_a_failure_then_a_retry_start_then_attempts_count_across_runs() {
    let events =
        vec![run_started(plan()), started("a", 1, 0), failed("a", 1, 1, true), started("a", 2, 5)];
    let state = State::fold(&events);
    assert_eq!(state.step(&sid("a")).attempts, 2);
    assert!(state.step(&sid("a")).in_doubt());
}

#[test]
fn given_a_recovery_then_the_step_is_done_and_marked_recovered() {
    let recovered = Event::StepRecovered(StepRecovered {
        version: EVENT_VERSION,
        at: at(3),
        step: sid("a"),
        summary: Summary::new(),
    });
    let state = State::fold(&[run_started(plan()), started("a", 1, 0), recovered]);
    assert!(matches!(state.step(&sid("a")).status, StepStatus::Succeeded { recovered: true, .. }));
    // A recovery has no known duration: nothing is recorded for the kind.
    assert!(!state.durations.contains_key("set"));
}

#[test]
fn given_a_gate_pause_then_the_status_says_approve_and_after_approval_run() {
    let mut events = vec![run_started(plan())];
    events.extend(done("a"));
    events.extend(done("b"));
    events.push(Event::GateReached(GateReached {
        version: EVENT_VERSION,
        at: at(2),
        gate: "finalize".into(),
    }));
    events.push(paused(PauseReason::Gate { gate: "finalize".into() }));
    let state = State::fold(&events);
    let status = state.status();
    assert_eq!(status.next, Next::Approve("finalize".into()));
    assert_eq!((status.done, status.total), (2, 3));
    assert!(status.to_string().contains("approve finalize"), "{status}");

    events.push(approved("finalize"));
    let state = State::fold(&events);
    assert!(state.gate_approved(&"finalize".into()));
    assert_eq!(state.status().next, Next::Run);
    assert_eq!(state.status().condition, Condition::Ready);
}

#[test]
fn given_an_event_about_an_unknown_step_then_apply_records_it_without_failing() {
    let state = State::fold(&[run_started(plan()), started("zzz", 1, 0), succeeded("zzz", 1, 1)]);
    assert!(state.step(&sid("zzz")).is_done());
}

#[test]
fn given_completed_then_the_status_says_nothing_is_left() {
    let mut events = vec![run_started(plan())];
    events.push(completed());
    let status = State::fold(&events).status();
    assert_eq!(status.condition, Condition::Completed);
    assert_eq!(status.next, Next::Nothing);
}

#[test]
fn given_a_rollback_plan_then_the_status_counts_rollback_steps() {
    let comp = CompStep {
        id: sid("undo:a"),
        undoes: Some(sid("a")),
        action: Act::Set { key: "x/a".into(), from: 1, to: 0 },
        kind: "restore".into(),
        estimate: Duration::from_secs(1),
        retry: RetryPolicy::once(),
        rank: 0,
    };
    let mut events = vec![run_started(plan())];
    events.extend(done("a"));
    events.push(Event::RollbackPlanned(RollbackPlanned {
        version: EVENT_VERSION,
        at: at(2),
        steps: vec![comp],
    }));
    let status = State::fold(&events).status();
    assert_eq!(status.condition, Condition::RollingBack);
    assert_eq!((status.done, status.total), (0, 1));
    assert_eq!(status.current, Some(sid("undo:a")));
    assert_eq!(status.next, Next::Rollback);
}

#[test]
fn events_round_trip_through_the_real_journal() {
    // given every kind of event, including timestamps and nested plan types
    let dir = tempfile::tempdir().unwrap();
    let mut events = vec![run_started(plan())];
    events.extend(done("a"));
    events.push(failed("b", 1, 2, false));
    events.push(paused(PauseReason::WindowTooShort {
        step: sid("b"),
        expected: Duration::from_millis(1500),
        ends: at(60),
    }));
    events.push(approved("finalize"));
    // when they are appended to the journal and replayed
    let mut journal: journal::Journal<Event<Act>> =
        journal::Journal::open(dir.path(), journal::Actor::current("engine test")).unwrap();
    for e in &events {
        journal.append(e).unwrap();
    }
    // then the same events come back
    assert_eq!(Log::events(&journal).unwrap(), events);
}
