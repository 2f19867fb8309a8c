//! Engine benchmark: overhead per step with a no-op runner, side by side with the floor of two
//! durable journal appends per step, in one run.
//!
//! Run with `cargo bench -p engine --bench engine`. In one process, on one disk (a temporary
//! directory under `target/bench-tmp`), it measures:
//! - floor: per step, two `Journal::append` of the events a step records (a start and a
//!   success), each its own durable transaction — what any crash-safe engine must pay;
//! - engine: `Engine::run` of a plan of `BENCH_STEPS` no-op steps over the real journal;
//! - engine in memory: the same run over an in-memory log — the engine's own cost, no disk.
//!
//! Floor and engine alternate for `BENCH_ROUNDS` rounds (default 5) of `BENCH_STEPS` steps
//! (default 1000), so a busy disk slows both alike; the medians are reported.

use std::time::{Duration, Instant};

use engine::{
    Compensation, EVENT_VERSION, Engine, Event, MemoryLog, Outcome, Plan, RetryPolicy, RunOptions,
    Runner, Step, StepId, StepStarted, StepSucceeded, Summary, SystemClock,
};
use journal::{Actor, Journal};

/// Does nothing, successfully.
struct NoOp;

impl Runner<String> for NoOp {
    async fn check(&self, _: &StepId, _: &String) -> Result<Option<Summary>, engine::StepError> {
        Ok(None)
    }

    async fn apply(&self, _: &StepId, _: &String) -> Result<Summary, engine::StepError> {
        Ok(Summary::new().with("digest", "sha256:0000000000000000"))
    }

    fn compensate(&self, _: &StepId, _: &String, _: Option<&Summary>) -> Vec<Compensation<String>> {
        Vec::new()
    }
}

fn plan(steps: usize) -> Plan<String> {
    let mut plan = Plan::new(["bench"]);
    for i in 0..steps {
        plan = plan.step(
            Step::new(format!("step-{i:05}"), "bench", "noop", format!("noop {i}"))
                .retry(RetryPolicy::once()),
        );
    }
    plan
}

fn rate(steps: usize, took: Duration) -> f64 {
    steps as f64 / took.as_secs_f64()
}

/// Two durable appends per step (a start and a success), and nothing else.
fn floor(dir: &std::path::Path, steps: usize) -> Result<f64, Box<dyn std::error::Error>> {
    let mut j: Journal<Event<String>> = Journal::open(dir, Actor::current("bench"))?;
    let at = jiff::Timestamp::now();
    let started = Instant::now();
    for i in 0..steps {
        let step = StepId(format!("step-{i:05}"));
        j.append(&Event::StepStarted(StepStarted {
            version: EVENT_VERSION,
            at,
            step: step.clone(),
            attempt: 1,
        }))?;
        j.append(&Event::StepSucceeded(StepSucceeded {
            version: EVENT_VERSION,
            at,
            step,
            attempt: 1,
            summary: Summary::new().with("digest", "sha256:0000000000000000"),
        }))?;
    }
    Ok(rate(steps, started.elapsed()))
}

/// `Engine::run` of `steps` no-op steps over the real journal.
fn engine_durable(
    dir: &std::path::Path,
    steps: usize,
    rt: &tokio::runtime::Runtime,
) -> Result<f64, Box<dyn std::error::Error>> {
    let j: Journal<Event<String>> = Journal::open(dir, Actor::current("bench"))?;
    let engine = Engine::open(j, NoOp, SystemClock)?;
    engine.start(plan(steps))?;
    let started = Instant::now();
    let outcome = rt.block_on(engine.run(&RunOptions::default()))?;
    let took = started.elapsed();
    assert_eq!(outcome, Outcome::Completed);
    Ok(rate(steps, took))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let steps: usize =
        std::env::var("BENCH_STEPS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let rounds: usize =
        std::env::var("BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(5);
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-tmp");
    std::fs::create_dir_all(&base)?;
    let tmp = tempfile::tempdir_in(&base)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build()?;

    // Floor and engine alternate, round after round, so that a busy disk slows both alike; the
    // ratio of each round is reported, and the medians.
    let (mut floors, mut engines, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    println!("round  floor (2 durable appends/step)  engine over the journal  ratio");
    for round in 0..rounds {
        let f = floor(&tmp.path().join(format!("floor-{round}")), steps)?;
        let e = engine_durable(&tmp.path().join(format!("engine-{round}")), steps, &rt)?;
        println!("{round:>5}  {f:>22.0} steps/s  {e:>15.0} steps/s  {:>5.2}x", e / f);
        floors.push(f);
        engines.push(e);
        ratios.push(e / f);
    }

    // The engine's own cost: the same run over an in-memory log, no disk.
    let memory_steps = steps * 20;
    let engine = Engine::open(MemoryLog::new(), NoOp, SystemClock)?;
    engine.start(plan(memory_steps))?;
    let started = Instant::now();
    let outcome = rt.block_on(engine.run(&RunOptions::default()))?;
    let memory = rate(memory_steps, started.elapsed());
    assert_eq!(outcome, Outcome::Completed);

    println!();
    println!("steps per run:                      {steps} ({rounds} rounds)");
    println!("floor, median:                      {:>10.0} steps/s", median(floors));
    println!("engine over the journal, median:    {:>10.0} steps/s", median(engines));
    println!("ratio engine / floor, median:       {:>10.2}x", median(ratios));
    println!("engine over an in-memory log:       {memory:>10.0} steps/s ({memory_steps} steps)");
    println!("engine's own cost per step:         {:>10.1} µs", 1e6 / memory);
    Ok(())
}
