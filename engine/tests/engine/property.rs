//! Property: a random plan of fake steps, interrupted at every crash point (every journal append,
//! and inside every `apply` before and after its effect), resumed, ends in the model an
//! uninterrupted run gives; rolled back from every such point, it returns to the initial model;
//! and no effect is ever applied again while its postcondition held.
//!
//! 64 cases from a fixed seed (`PROPTEST_RNG_SEED` is not needed to reproduce a failure).

use std::collections::BTreeMap;
use std::rc::Rc;

use engine::*;
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

use crate::util::*;

#[derive(Debug, Clone)]
enum Block {
    Set { comp: u8, fails: u32 },
    Restart { comp: u8 },
    Group { members: Vec<(u8, u32)>, limit: u32 },
}

#[derive(Debug, Clone)]
struct Spec {
    blocks: Vec<Block>,
    gate: bool,
    ranks: Vec<u32>,
}

fn block() -> impl Strategy<Value = Block> {
    prop_oneof![
        3 => (0u8..3, 0u32..3).prop_map(|(comp, fails)| Block::Set { comp, fails }),
        1 => (0u8..3).prop_map(|comp| Block::Restart { comp }),
        2 => (prop::collection::vec((0u8..3, 0u32..3), 2..4), 1u32..3)
            .prop_map(|(members, limit)| Block::Group { members, limit }),
    ]
}

fn spec() -> impl Strategy<Value = Spec> {
    (prop::collection::vec(block(), 1..6), any::<bool>(), prop::collection::vec(0u32..3, 3))
        .prop_map(|(blocks, gate, ranks)| Spec { blocks, gate, ranks })
}

/// The engine's state after each event it recorded, with the journal's length then.
type Snapshots = Rc<std::cell::RefCell<Vec<(usize, State<Act>)>>>;

thread_local! {
    static SNAPSHOTS: Snapshots = Rc::default();
}

type Model = (BTreeMap<String, u32>, BTreeMap<String, BTreeMap<String, u32>>);

/// The plan, the keys it touches, and the transient failures to inject.
fn build(spec: &Spec) -> (Plan<Act>, Vec<String>, BTreeMap<StepId, u32>) {
    let mut plan = Plan::new(["p0", "p1", "p2"]).keep_groups_whole("p1");
    let mut keys: Vec<String> = (0..3).map(|c| format!("c{c}/base")).collect();
    let mut fails = BTreeMap::new();
    let mut gated = false;
    let n = spec.blocks.len();
    for (j, block) in spec.blocks.iter().enumerate() {
        let phase = format!("p{}", (j * 3 / n).min(2));
        if spec.gate && !gated && phase == "p2" {
            plan = plan.gate("approve", "p2", "looks fine");
            gated = true;
        }
        let mut set_step = |i: usize, comp: u8, fail: u32, group: Option<String>| {
            let id = format!("s{j}.{i}");
            let key = format!("c{comp}/{id}");
            keys.push(key.clone());
            fails.insert(sid(&id), fail);
            let step = set(&id, &phase, &key, (j * 10 + i + 1) as u32);
            match group {
                Some(g) => step.in_group(g),
                None => step,
            }
        };
        match block {
            Block::Set { comp, fails } => plan = plan.step(set_step(0, *comp, *fails, None)),
            Block::Restart { comp } => {
                let step = Step::new(
                    format!("r{j}"),
                    phase.as_str(),
                    "restart",
                    Act::Restart { component: format!("c{comp}") },
                )
                .retry(quick_retry());
                plan = plan.step(step);
            }
            Block::Group { members, limit } => {
                let g = format!("g{j}");
                plan = plan.group(g.as_str(), *limit, 10);
                for (i, (comp, fail)) in members.iter().enumerate() {
                    plan = plan.step(set_step(i, *comp, *fail, Some(g.clone())));
                }
            }
        }
    }
    if spec.gate && !gated {
        plan = plan.gate("approve", "p2", "looks fine");
    }
    (plan, keys, fails)
}

fn new_world(spec: &Spec, keys: &[String], fails: &BTreeMap<StepId, u32>) -> Rc<World> {
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let world = World::new(&refs);
    world.fail_first.borrow_mut().extend(fails.clone());
    for (c, rank) in spec.ranks.iter().enumerate() {
        world.ranks.borrow_mut().insert(format!("c{c}"), *rank);
    }
    world
}

fn model(world: &World) -> Model {
    (world.disk.borrow().clone(), world.loaded.borrow().clone())
}

/// One process's life: open, plan if the journal has none, run, approving gates as they come.
async fn forward_once(world: &Rc<World>, plan: &Plan<Act>) -> Result<Outcome, Error> {
    let mut engine = engine(world);
    let seen = world.clone();
    let snapshots = SNAPSHOTS.with(Rc::clone);
    engine.on_event(move |_, state| {
        snapshots.borrow_mut().push((seen.events.borrow().len(), state.clone()));
    });
    if engine.state().plan.is_none() {
        engine.start(plan.clone())?;
    }
    loop {
        match engine.run(&RunOptions::default()).await? {
            Outcome::Paused { reason: PauseReason::Gate { gate } } => {
                engine.approve(&gate, "property")?;
            }
            other => return Ok(other),
        }
    }
}

/// Runs to completion across crashes (each `Err` is a crash; the next process resumes).
async fn forward_to_end(world: &Rc<World>, plan: &Plan<Act>) {
    for _ in 0..5 {
        match forward_once(world, plan).await {
            Ok(outcome) => {
                assert_eq!(outcome, Outcome::Completed);
                return;
            }
            Err(Error::Journal(_)) => world.revive(),
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    panic!("the run did not complete after resumes");
}

/// Rolls back to the end across crashes.
async fn rollback_to_end(world: &Rc<World>) {
    for _ in 0..5 {
        match engine(world).rollback(&RunOptions::default()).await {
            Ok(outcome) => {
                assert_eq!(outcome, Outcome::RolledBack);
                return;
            }
            Err(Error::Journal(_)) => world.revive(),
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    panic!("the rollback did not finish after resumes");
}

fn check(spec: &Spec) {
    let (plan, keys, fails) = build(spec);
    let rt = rt();
    rt.block_on(async {
        // The uninterrupted run.
        SNAPSHOTS.with(|s| s.borrow_mut().clear());
        let reference = new_world(spec, &keys, &fails);
        let initial = model(&reference);
        forward_to_end(&reference, &plan).await;
        assert!(reference.violations.borrow().is_empty(), "{:?}", reference.violations.borrow());
        let expected = model(&reference);
        // Every prefix of the journal folds to exactly the state the running engine had.
        let snapshots = SNAPSHOTS.with(|s| std::mem::take(&mut *s.borrow_mut()));
        let events = reference.events.borrow().clone();
        assert_eq!(snapshots.len(), events.len());
        for (len, state) in &snapshots {
            assert_eq!(&State::fold(&events[..*len]), state, "prefix of {len} events");
        }
        let points = reference.points.get();

        for crash in 1..=points {
            // Interrupted at `crash`, then resumed to the end.
            let world = new_world(spec, &keys, &fails);
            world.crash_at.set(Some(crash));
            forward_to_end(&world, &plan).await;
            assert_eq!(model(&world), expected, "crash at point {crash}: resumed model differs");
            assert!(
                world.violations.borrow().is_empty(),
                "crash at {crash}: {:?}",
                world.violations.borrow()
            );

            // Interrupted at `crash`, then rolled back, the rollback itself interrupted once.
            let world = new_world(spec, &keys, &fails);
            world.crash_at.set(Some(crash));
            let _ = forward_once(&world, &plan).await;
            world.revive();
            if world.events.borrow().is_empty() {
                // Died before the plan was recorded: there is no run to roll back.
                assert_eq!(model(&world), initial);
                continue;
            }
            let at = world.points.get() + 1 + (crash * 7) % 13;
            world.crash_at.set(Some(at));
            rollback_to_end(&world).await;
            assert_eq!(model(&world), initial, "crash at {crash}, rollback crash at {at}");
            assert!(
                world.violations.borrow().is_empty(),
                "rollback after {crash}: {:?}",
                world.violations.borrow()
            );
        }
    });
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        rng_seed: RngSeed::Fixed(0x6b75_6265_6361),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn interrupted_at_every_point_resume_and_rollback_reach_the_same_models(spec in spec()) {
        check(&spec);
    }
}
