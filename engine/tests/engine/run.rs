//! Running and resuming: durability order, recovery by postcondition, retries, gates, `until`,
//! windows, parallel groups and cancellation, against the fake world in virtual time.

use std::time::Duration;

use engine::*;

use crate::util::given::*;
use crate::util::*;

fn three_steps() -> Plan<Act> {
    Plan::new(["p"])
        .step(set("a", "p", "x/a", 1))
        .step(set("b", "p", "x/b", 2))
        .step(set("c", "p", "x/c", 3))
}

#[test]
fn given_a_plan_when_run_then_each_effect_follows_its_durable_start_and_precedes_anything_else() {
    let world = World::new(&["x/a", "x/b", "x/c"]);
    rt().block_on(async {
        let engine = engine(&world);
        engine.start(three_steps()).unwrap();
        assert_eq!(engine.run(&RunOptions::default()).await.unwrap(), Outcome::Completed);
    });
    // The runner saw its own start in the journal before every effect.
    assert!(world.violations.borrow().is_empty(), "{:?}", world.violations.borrow());
    assert_eq!(
        world.names(),
        [
            "RunStarted",
            "StepStarted",
            "StepSucceeded",
            "StepStarted",
            "StepSucceeded",
            "StepStarted",
            "StepSucceeded",
            "Completed"
        ]
    );
    assert_eq!(world.disk.borrow()["x/c"], 3);
}

#[test]
fn given_a_recorded_run_when_started_again_then_it_is_refused_and_the_recorded_plan_runs() {
    let world = World::new(&["x/a", "x/b", "x/c"]);
    rt().block_on(async {
        engine(&world).start(three_steps()).unwrap();
        // when a new process opens the journal and tries to plan again
        let engine = engine(&world);
        let other = Plan::new(["p"]).step(set("q", "p", "x/q", 9));
        let err = engine.start(other).unwrap_err();
        assert!(matches!(err, Error::AlreadyStarted { .. }), "{err}");
        // then running runs the recorded plan
        assert_eq!(engine.run(&RunOptions::default()).await.unwrap(), Outcome::Completed);
    });
    assert_eq!(world.calls(), ["apply:a", "apply:b", "apply:c"]);
}

#[test]
fn given_no_plan_when_run_then_it_is_refused() {
    let world = World::new(&[]);
    let err =
        rt().block_on(async { engine(&world).run(&RunOptions::default()).await.unwrap_err() });
    assert!(matches!(err, Error::NotStarted));
}

#[test]
fn given_an_invalid_plan_when_started_then_it_is_refused_and_nothing_is_recorded() {
    let world = World::new(&[]);
    let plan = Plan::new(["p"]).step(set("a", "p", "x/a", 1)).step(set("a", "p", "x/b", 1));
    let err = rt().block_on(async { engine(&world).start(plan).unwrap_err() });
    assert!(matches!(err, Error::InvalidPlan(PlanError::DuplicateStep(_))), "{err}");
    assert!(world.events.borrow().is_empty());
}

#[test]
fn given_a_start_without_outcome_whose_postcondition_holds_when_run_then_recovered_not_applied() {
    let world = World::new(&["x/a", "x/b", "x/c"]);
    world.events.borrow_mut().extend([run_started(three_steps()), started("a", 1, 0)]);
    world.disk.borrow_mut().insert("x/a".into(), 1); // the effect happened before the crash
    rt().block_on(async { engine(&world).run(&RunOptions::default()).await.unwrap() });
    assert_eq!(world.calls(), ["check:a", "apply:b", "apply:c"]);
    assert_eq!(world.names()[2], "StepRecovered");
}

#[test]
fn given_a_start_without_outcome_whose_postcondition_is_false_when_run_then_it_is_applied_again() {
    let world = World::new(&["x/a", "x/b", "x/c"]);
    world.events.borrow_mut().extend([run_started(three_steps()), started("a", 1, 0)]);
    rt().block_on(async { engine(&world).run(&RunOptions::default()).await.unwrap() });
    assert_eq!(world.calls(), ["check:a", "apply:a", "apply:b", "apply:c"]);
    let events = world.events.borrow();
    assert!(matches!(&events[2], Event::StepStarted(e) if e.step == sid("a") && e.attempt == 2));
}

#[test]
fn given_transient_failures_when_run_then_the_step_is_retried_with_backoff_and_jitter() {
    let world = World::new(&["x/a", "x/b", "x/c"]);
    world.fail_first.borrow_mut().insert(sid("b"), 2);
    rt().block_on(async {
        let engine = engine(&world);
        engine.start(three_steps()).unwrap();
        let options = RunOptions { jitter_seed: 7, ..RunOptions::default() };
        assert_eq!(engine.run(&options).await.unwrap(), Outcome::Completed);
    });
    let events = world.events.borrow();
    let starts: Vec<(u32, jiff::Timestamp)> = events
        .iter()
        .filter_map(|e| match e {
            Event::StepStarted(s) if s.step == sid("b") => Some((s.attempt, s.at)),
            _ => None,
        })
        .collect();
    assert_eq!(starts.iter().map(|s| s.0).collect::<Vec<_>>(), [1, 2, 3]);
    // Backoff 1 s then 2 s, each shortened by at most 20% jitter.
    let gap1 = starts[1].1.duration_since(starts[0].1).as_secs_f64();
    let gap2 = starts[2].1.duration_since(starts[1].1).as_secs_f64();
    assert!((0.8..=1.0).contains(&gap1), "first wait {gap1}s");
    assert!((1.6..=2.0).contains(&gap2), "second wait {gap2}s");
    assert!(gap1 < 1.0 || gap2 < 2.0, "jitter changed neither wait");
}

#[test]
fn given_retries_spent_when_run_then_it_pauses_with_the_failure_and_a_new_run_resumes() {
    let world = World::new(&["x/a", "x/b", "x/c"]);
    world.fail_first.borrow_mut().insert(sid("b"), 4);
    rt().block_on(async {
        let engine = engine(&world);
        engine.start(three_steps()).unwrap();
        let outcome = engine.run(&RunOptions::default()).await.unwrap();
        let Outcome::Paused { reason: PauseReason::Failed { failures } } = outcome else {
            panic!("expected a paused failure, got {outcome:?}")
        };
        assert_eq!(failures[0].step, sid("b"));
        assert!(failures[0].error.retryable);
        assert!(matches!(engine.status().condition, Condition::Paused(PauseReason::Failed { .. })));
        assert_eq!(engine.status().next, Next::Run);
        // when run again (one transient failure left, then success)
        assert_eq!(engine.run(&RunOptions::default()).await.unwrap(), Outcome::Completed);
    });
    assert_eq!(world.calls().iter().filter(|c| *c == "apply:b").count(), 5);
    assert!(!world.calls().contains(&"check:b".to_owned()), "a failed attempt is not in doubt");
}

#[test]
fn given_a_terminal_error_when_run_then_it_fails_after_one_attempt() {
    let world = World::new(&["x/a", "x/b", "x/c"]);
    world.terminal.borrow_mut().insert(sid("a"));
    let outcome = rt().block_on(async {
        let engine = engine(&world);
        engine.start(three_steps()).unwrap();
        engine.run(&RunOptions::default()).await.unwrap()
    });
    assert!(
        matches!(&outcome, Outcome::Failed { failures } if failures[0].step == sid("a")),
        "{outcome:?}"
    );
    assert_eq!(world.calls(), ["apply:a"]);
    assert_eq!(world.names().last(), Some(&"Paused"));
    assert_eq!(
        outcome.to_string(),
        "failed: step a: a: broken for good; fix the cause, then run again"
    );
}

#[test]
fn given_a_deadline_when_backoff_would_pass_it_then_no_further_attempt_starts() {
    let world = World::new(&["x/a"]);
    world.fail_first.borrow_mut().insert(sid("a"), 100);
    let retry = RetryPolicy {
        attempts: 50,
        backoff: Duration::from_secs(60),
        max_backoff: Duration::from_secs(60),
        jitter_percent: 0,
        deadline: Some(Duration::from_secs(150)),
    };
    let plan = Plan::new(["p"]).step(set("a", "p", "x/a", 1).retry(retry));
    let outcome = rt().block_on(async {
        let engine = engine(&world);
        engine.start(plan).unwrap();
        engine.run(&RunOptions::default()).await.unwrap()
    });
    assert!(matches!(outcome, Outcome::Paused { reason: PauseReason::Failed { .. } }));
    // Attempts at 0 s, 60 s, 120 s; the next would start at 180 s, past the 150 s deadline.
    assert_eq!(world.calls().len(), 3);
}

fn gated() -> Plan<Act> {
    Plan::new(["p", "fin"])
        .step(set("a", "p", "x/a", 1))
        .gate("finalize", "fin", "clients updated")
        .step(set("z", "fin", "x/z", 1))
}

#[test]
fn given_a_gate_when_run_then_it_stops_until_the_approval_is_in_the_journal() {
    let world = World::new(&["x/a", "x/z"]);
    rt().block_on(async {
        let engine = engine(&world);
        engine.start(gated()).unwrap();
        let paused = Outcome::Paused { reason: PauseReason::Gate { gate: "finalize".into() } };
        assert_eq!(engine.run(&RunOptions::default()).await.unwrap(), paused);
        assert_eq!(engine.run(&RunOptions::default()).await.unwrap(), paused);
        assert_eq!(engine.status().next, Next::Approve("finalize".into()));
        assert!(matches!(engine.approve(&"nope".into(), "bob"), Err(Error::UnknownGate(_))));
        assert!(engine.approve(&"finalize".into(), "alice").unwrap());
        assert!(
            !engine.approve(&"finalize".into(), "alice").unwrap(),
            "approving twice records once"
        );
        assert_eq!(engine.run(&RunOptions::default()).await.unwrap(), Outcome::Completed);
    });
    let names = world.names();
    assert_eq!(names.iter().filter(|n| **n == "GateReached").count(), 1);
    assert_eq!(names.iter().filter(|n| **n == "GateApproved").count(), 1);
    assert_eq!(world.calls(), ["apply:a", "apply:z"]);
}

#[test]
fn given_until_when_run_then_it_stops_after_that_phase() {
    let world = World::new(&["x/a", "x/z"]);
    let outcome = rt().block_on(async {
        let engine = engine(&world);
        engine.start(gated()).unwrap();
        let options = RunOptions { until: Some("p".into()), ..RunOptions::default() };
        engine.run(&options).await.unwrap()
    });
    assert_eq!(outcome, Outcome::ReachedUntil { phase: "p".into() });
    assert_eq!(world.calls(), ["apply:a"]);
    assert!(!world.names().contains(&"GateReached"));
}

#[test]
fn given_a_window_when_steps_take_long_then_the_run_pauses_before_overrunning_it() {
    // Each step takes 25 s; the window is 60 s long. The plan estimates 60 s; after the first
    // step, the journal's 25 s replaces the estimate.
    let world = World::new(&["x/a", "x/b", "x/c"]);
    for id in ["a", "b", "c"] {
        world.hold.borrow_mut().insert(sid(id), Duration::from_secs(25));
    }
    let plan = Plan::new(["p"])
        .step(set("a", "p", "x/a", 1).estimate(Duration::from_secs(30)))
        .step(set("b", "p", "x/b", 1))
        .step(set("c", "p", "x/c", 1));
    let outcome = rt().block_on(async {
        let engine = engine(&world);
        engine.start(plan).unwrap();
        let options = RunOptions {
            window: Some(Window { start: t0(), duration: Duration::from_secs(60) }),
            ..RunOptions::default()
        };
        engine.run(&options).await.unwrap()
    });
    // a: 0-25 s, b: 25-50 s, c would end at 75 s.
    assert_eq!(
        outcome,
        Outcome::Paused {
            reason: PauseReason::WindowTooShort {
                step: sid("c"),
                expected: Duration::from_secs(25),
                ends: at(60),
            }
        }
    );
    assert_eq!(world.calls(), ["apply:a", "apply:b"]);
}

fn nodes(n: usize, limit: u32, max_failures: u32) -> Plan<Act> {
    let mut plan = Plan::new(["rollout"]).group("nodes", limit, max_failures);
    for i in 1..=n {
        plan = plan.step(
            set(&format!("n{i}"), "rollout", &format!("n{i}/k"), 1).retry(RetryPolicy::once()),
        );
        if let Some(Item::Step(step)) = plan.items.last_mut() {
            step.group = Some("nodes".into());
        }
    }
    plan
}

#[test]
fn given_a_parallel_group_when_run_then_at_most_its_limit_run_at_once() {
    let world = World::new(&["n1/k", "n2/k", "n3/k", "n4/k", "n5/k"]);
    for i in 1..=5 {
        world.hold.borrow_mut().insert(sid(&format!("n{i}")), Duration::from_secs(10 + i));
    }
    rt().block_on(async {
        let engine = engine(&world);
        engine.start(nodes(5, 2, 1)).unwrap();
        assert_eq!(engine.run(&RunOptions::default()).await.unwrap(), Outcome::Completed);
        // Concurrency: five steps of 11-15 s two at a time take about three waves, not five.
        let took = engine.state().last.unwrap().1.duration_since(t0()).as_secs();
        assert!(took < 50, "group took {took}s");
    });
    assert_eq!(world.max_running.get(), 2);
}

#[test]
fn given_a_group_failure_cap_when_it_is_hit_then_no_further_step_of_the_group_starts() {
    let world = World::new(&["n1/k", "n2/k", "n3/k", "n4/k", "n5/k"]);
    world.terminal.borrow_mut().insert(sid("n2"));
    let outcome = rt().block_on(async {
        let engine = engine(&world);
        engine.start(nodes(5, 1, 1)).unwrap();
        engine.run(&RunOptions::default()).await.unwrap()
    });
    assert!(matches!(&outcome, Outcome::Failed { failures } if failures.len() == 1), "{outcome:?}");
    assert_eq!(world.calls(), ["apply:n1", "apply:n2"]);
}

#[test]
fn given_cancellation_while_a_step_runs_then_it_finishes_and_nothing_new_starts() {
    let world = World::new(&["x/a", "x/b", "x/c"]);
    world.hold.borrow_mut().insert(sid("a"), Duration::from_secs(5));
    let (canceller, cancel) = Cancel::new();
    let outcome = rt().block_on(async {
        let engine = engine(&world);
        engine.start(three_steps()).unwrap();
        let options =
            RunOptions { cancel, drain: Duration::from_secs(30), ..RunOptions::default() };
        let run = engine.run(&options);
        let signal = async {
            // Cancel once "a" is running (its effect is under way).
            while world.running.get() == 0 {
                tokio::task::yield_now().await;
            }
            canceller.cancel();
        };
        let (outcome, ()) = tokio::join!(run, signal);
        outcome.unwrap()
    });
    assert_eq!(outcome, Outcome::Paused { reason: PauseReason::Cancelled { abandoned: vec![] } });
    assert_eq!(world.calls(), ["apply:a"]);
    assert_eq!(world.disk.borrow()["x/a"], 1);
    assert_eq!(&world.names()[2..], ["StepSucceeded", "Paused"]);
}

#[test]
fn given_cancellation_when_a_step_outlives_the_drain_bound_then_abandoned_and_resolved_next_run() {
    let world = World::new(&["x/a", "x/b", "x/c"]);
    world.block.borrow_mut().insert(sid("a"));
    let (canceller, cancel) = Cancel::new();
    rt().block_on(async {
        let engine = engine(&world);
        engine.start(three_steps()).unwrap();
        canceller.cancel();
        let options = RunOptions {
            cancel: cancel.clone(),
            drain: Duration::from_secs(30),
            ..RunOptions::default()
        };
        // Cancelled before anything ran: nothing starts.
        assert_eq!(
            engine.run(&options).await.unwrap(),
            Outcome::Paused { reason: PauseReason::Cancelled { abandoned: vec![] } }
        );
        let (canceller, cancel) = Cancel::new();
        let options =
            RunOptions { cancel, drain: Duration::from_secs(30), ..RunOptions::default() };
        let run = engine.run(&options);
        let signal = async {
            while world.running.get() == 0 {
                tokio::task::yield_now().await;
            }
            canceller.cancel();
        };
        let (outcome, ()) = tokio::join!(run, signal);
        assert_eq!(
            outcome.unwrap(),
            Outcome::Paused { reason: PauseReason::Cancelled { abandoned: vec![sid("a")] } }
        );
        assert!(engine.state().step(&sid("a")).in_doubt());
    });
    // The next run checks "a" before anything else.
    world.block.borrow_mut().clear();
    world.running.set(0);
    rt().block_on(async {
        assert_eq!(engine(&world).run(&RunOptions::default()).await.unwrap(), Outcome::Completed);
    });
    assert_eq!(world.calls(), ["apply:a", "check:a", "apply:a", "apply:b", "apply:c"]);
}

#[test]
fn given_any_run_then_every_prefix_of_the_journal_folds_to_the_state_the_engine_had() {
    let world = World::new(&["x/a", "n1/k", "n2/k", "n3/k", "x/z"]);
    world.fail_first.borrow_mut().insert(sid("n2"), 1);
    let mut plan = nodes(3, 2, 1);
    plan.phases.insert(0, Phase { name: "p".into(), keep_groups_whole: false });
    plan.phases.push(Phase { name: "fin".into(), keep_groups_whole: false });
    plan.items.insert(0, Item::Step(set("a", "p", "x/a", 1)));
    for id in ["n1", "n2", "n3"] {
        if let Some(Item::Step(s)) =
            plan.items.iter_mut().find(|i| matches!(i, Item::Step(s) if s.id == sid(id)))
        {
            s.retry = quick_retry();
        }
    }
    let plan = plan.gate("finalize", "fin", "ok").step(set("z", "fin", "x/z", 1));
    let snapshots = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    rt().block_on(async {
        let mut engine = engine(&world);
        let seen = snapshots.clone();
        engine.on_event(move |_, state| seen.borrow_mut().push(state.clone()));
        engine.start(plan).unwrap();
        engine.run(&RunOptions::default()).await.unwrap();
        engine.approve(&"finalize".into(), "alice").unwrap();
        assert_eq!(engine.run(&RunOptions::default()).await.unwrap(), Outcome::Completed);
    });
    let events = world.events.borrow();
    let snapshots = snapshots.borrow();
    assert_eq!(events.len(), snapshots.len());
    for (n, snapshot) in snapshots.iter().enumerate() {
        assert_eq!(&State::fold(&events[..=n]), snapshot, "prefix of {} events", n + 1);
    }
}
