//! Rollback: derived from the journal, ordered in the reverse order of trust with the restarts it
//! needs, run with the same machinery, resumable, and refused after completion.

use std::time::Duration;

use engine::*;

use crate::util::*;

/// Components ranked by trust: "ca" (rank 0) is trusted first by the forward procedure, then
/// "srv" (1), then "cli" (2).
fn ranked_world() -> std::rc::Rc<World> {
    let world = World::new(&["ca/bundle", "srv/cert", "srv/key", "cli/conf"]);
    world.ranks.borrow_mut().extend([("ca".into(), 0), ("srv".into(), 1), ("cli".into(), 2)]);
    world
}

fn rotation() -> Plan<Act> {
    Plan::new(["trust", "switch", "fin"])
        .step(set("bundle", "trust", "ca/bundle", 1))
        .step(set("cert", "switch", "srv/cert", 1))
        .step(Step::new(
            "restart-srv",
            "switch",
            "restart",
            Act::Restart { component: "srv".into() },
        ))
        .step(set("conf", "switch", "cli/conf", 1))
        .step(set("key", "switch", "srv/key", 1))
        .gate("finalize", "fin", "clients updated")
        .step(set("final", "fin", "ca/bundle", 2))
}

fn ids(steps: &[CompStep<Act>]) -> Vec<&str> {
    steps.iter().map(|s| s.id.as_str()).collect()
}

#[test]
fn compensations_are_ordered_by_descending_trust_with_restarts_after_their_restores() {
    let undo = |step: &str, trust: u32, restart: Option<&str>| Undo {
        step: sid(step),
        retry: RetryPolicy::once(),
        estimate: Duration::from_secs(1),
        compensations: vec![Compensation {
            action: Act::Restart { component: step.into() },
            kind: "restore".into(),
            rank: trust,
            follow_up: restart.map(|key| FollowUp {
                key: format!("restart:{key}"),
                action: Act::Restart { component: key.into() },
                kind: "restart".into(),
            }),
        }],
    };
    // Newest first, as the journal gives them.
    let steps = order_compensations(vec![
        undo("d", 1, Some("srv")),
        undo("c", 2, Some("cli")),
        undo("b", 1, Some("srv")),
        undo("a", 0, None),
    ]);
    assert_eq!(
        ids(&steps),
        ["undo:c", "restart:cli@2", "undo:d", "undo:b", "restart:srv@1", "undo:a"]
    );
    assert_eq!(steps[4].undoes, None);
    assert_eq!(steps[2].undoes, Some(sid("d")));

    // Ranks of their own that only restore what one component loads: restored one after the
    // other, then that component restarted once; a rank restoring something else (or needing
    // no restart) gets the owed restart placed before it.
    let steps = order_compensations(vec![
        undo("x", 4, None),
        undo("f3", 3, Some("srv")),
        undo("f2", 2, Some("srv")),
        undo("f1", 1, Some("srv")),
        undo("c", 0, Some("cli")),
    ]);
    assert_eq!(
        ids(&steps),
        ["undo:x", "undo:f3", "undo:f2", "undo:f1", "restart:srv@3", "undo:c", "restart:cli@0"]
    );
    let steps = order_compensations(vec![
        undo("f2", 2, Some("srv")),
        undo("n", 1, None),
        undo("f1", 0, Some("srv")),
    ]);
    assert_eq!(ids(&steps), ["undo:f2", "restart:srv@2", "undo:n", "undo:f1", "restart:srv@0"]);
}

#[test]
fn given_done_and_possibly_done_steps_when_rolled_back_then_the_model_is_as_before() {
    let world = ranked_world();
    let initial = (world.disk.borrow().clone(), world.loaded.borrow().clone());
    rt().block_on(async {
        let engine = engine(&world);
        engine.start(rotation()).unwrap();
        let outcome = engine.run(&RunOptions::default()).await.unwrap();
        assert!(matches!(outcome, Outcome::Paused { reason: PauseReason::Gate { .. } }));
    });
    // A crash left "key" started with no outcome (its effect happened).
    world.events.borrow_mut().pop(); // Paused
    world.events.borrow_mut().pop(); // GateReached
    world.events.borrow_mut().pop(); // StepSucceeded of "key"
    rt().block_on(async {
        let engine = engine(&world);
        assert!(engine.state().step(&sid("key")).in_doubt());
        assert_eq!(engine.rollback(&RunOptions::default()).await.unwrap(), Outcome::RolledBack);
        let state = engine.state();
        let plan = &state.rollback.as_ref().unwrap().steps;
        assert_eq!(
            ids(plan),
            [
                "undo:conf",
                "restart:cli@2",
                "undo:key",
                "undo:cert",
                "restart:srv@1",
                "undo:bundle",
                "restart:ca@0"
            ]
        );
        assert_eq!(engine.status().condition, Condition::RolledBack);
    });
    assert_eq!((world.disk.borrow().clone(), world.loaded.borrow().clone()), initial);
    // The step with no recorded outcome was compensated without one; the restart step has nothing
    // to undo of its own; the gate's phase never started.
    let compensated = world.compensated.borrow().clone();
    assert_eq!(
        compensated,
        [
            (sid("key"), false),
            (sid("conf"), true),
            (sid("restart-srv"), true),
            (sid("cert"), true),
            (sid("bundle"), true)
        ]
    );
}

#[test]
fn given_a_rollback_interrupted_mid_compensation_when_resumed_then_it_checks_and_continues() {
    let world = ranked_world();
    rt().block_on(async {
        let engine = engine(&world);
        engine.start(rotation()).unwrap();
        engine
            .run(&RunOptions { until: Some("trust".into()), ..RunOptions::default() })
            .await
            .unwrap();
    });
    // when the rollback dies right after its first effect (before the outcome is recorded)
    let before = world.points.get();
    // Crash points from here: n+1 RollbackPlanned, n+2 CompensationStarted, n+3 before the
    // effect, n+4 after it.
    world.crash_at.set(Some(before + 4));
    rt().block_on(async {
        let err = engine(&world).rollback(&RunOptions::default()).await.unwrap_err();
        assert!(matches!(err, Error::Journal(_)), "{err}");
    });
    world.revive();
    assert_eq!(world.disk.borrow()["ca/bundle"], 0, "the effect happened before the crash");
    rt().block_on(async {
        let engine = engine(&world);
        assert!(matches!(engine.run(&RunOptions::default()).await, Err(Error::RollbackInProgress)));
        assert_eq!(engine.rollback(&RunOptions::default()).await.unwrap(), Outcome::RolledBack);
        // Rolling back again is a no-op; running forward is refused.
        assert_eq!(engine.rollback(&RunOptions::default()).await.unwrap(), Outcome::RolledBack);
        assert!(matches!(engine.run(&RunOptions::default()).await, Err(Error::RolledBack)));
    });
    let events = world.events.borrow();
    assert!(events.iter().any(|e| matches!(e, Event::CompensationSucceeded(c) if c.recovered && c.step == sid("undo:bundle"))));
    assert_eq!(
        world.calls().iter().filter(|c| c.starts_with("apply:undo:bundle")).count(),
        1,
        "the compensation whose effect happened was not applied again"
    );
}

#[test]
fn given_a_completed_run_when_rolling_back_then_it_is_refused_with_a_clear_error() {
    let world = World::new(&["x/a"]);
    let err = rt().block_on(async {
        let engine = engine(&world);
        engine.start(Plan::new(["p"]).step(set("a", "p", "x/a", 1))).unwrap();
        assert_eq!(engine.run(&RunOptions::default()).await.unwrap(), Outcome::Completed);
        engine.rollback(&RunOptions::default()).await.unwrap_err()
    });
    assert!(matches!(err, Error::CompletedNoRollback { .. }));
    assert!(err.to_string().contains("not rolled back"), "{err}");
    assert!(!world.names().contains(&"RollbackPlanned"));
}

#[test]
fn given_a_failing_compensation_when_rolling_back_then_it_pauses_and_resumes() {
    let world = ranked_world();
    rt().block_on(async {
        let engine = engine(&world);
        engine.start(rotation()).unwrap();
        engine
            .run(&RunOptions { until: Some("trust".into()), ..RunOptions::default() })
            .await
            .unwrap();
    });
    world.fail_first.borrow_mut().insert(sid("undo:bundle"), 3);
    rt().block_on(async {
        let engine = engine(&world);
        let outcome = engine.rollback(&RunOptions::default()).await.unwrap();
        assert!(
            matches!(outcome, Outcome::Paused { reason: PauseReason::Failed { .. } }),
            "{outcome:?}"
        );
        assert!(matches!(engine.status().condition, Condition::RollbackPaused(_)));
        assert_eq!(engine.status().next, Next::Rollback);
        assert_eq!(engine.rollback(&RunOptions::default()).await.unwrap(), Outcome::RolledBack);
    });
    assert_eq!(world.disk.borrow()["ca/bundle"], 0);
    let events = world.events.borrow();
    assert_eq!(
        events.iter().filter(|e| matches!(e, Event::RollbackPlanned(_))).count(),
        1,
        "never re-planned"
    );
}
