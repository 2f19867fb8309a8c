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
//! Floor and engine are measured in pairs, `BENCH_ROUNDS` rounds (default 101) of `BENCH_STEPS`
//! steps (default 200) each, after one warm-up pair that is not counted. Short rounds keep the
//! two sides of a pair a fraction of a second apart, so a change in the disk's load mostly falls
//! on both; the order within a pair alternates (floor first in even rounds, engine first in odd
//! ones), so neither side always runs on the disk the other has just left busy. The figure is
//! the median of the rounds' ratios, with their interquartile range and extremes: on a disk
//! shared with other work one round's ratio can be far off (an engine faster than its own floor
//! is noise), and the spread says how far.

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

/// The `q` quantile of `v` (0.5 the median), interpolated between the two nearest values.
fn quantile(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let at = q * (v.len() - 1) as f64;
    let (low, high) = (at.floor() as usize, at.ceil() as usize);
    v[low] + (v[high] - v[low]) * (at - low as f64)
}

/// The median of `v` with its interquartile range and extremes.
fn spread(v: &[f64], digits: usize) -> String {
    let q = |q| quantile(v, q);
    format!(
        "{:.digits$} (interquartile {:.digits$}–{:.digits$}, min–max {:.digits$}–{:.digits$})",
        q(0.5),
        q(0.25),
        q(0.75),
        q(0.0),
        q(1.0)
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let steps: usize =
        std::env::var("BENCH_STEPS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let rounds: usize =
        std::env::var("BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(101).max(1);
    let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-tmp");
    std::fs::create_dir_all(&base)?;
    let tmp = tempfile::tempdir_in(&base)?;
    let rt = tokio::runtime::Builder::new_current_thread().enable_time().build()?;

    // One pair, in the order asked; each side on a fresh journal.
    let pair = |name: &str, engine_first: bool| -> Result<(f64, f64), Box<dyn std::error::Error>> {
        let floor_dir = tmp.path().join(format!("floor-{name}"));
        let engine_dir = tmp.path().join(format!("engine-{name}"));
        if engine_first {
            let e = engine_durable(&engine_dir, steps, &rt)?;
            Ok((floor(&floor_dir, steps)?, e))
        } else {
            let f = floor(&floor_dir, steps)?;
            Ok((f, engine_durable(&engine_dir, steps, &rt)?))
        }
    };
    // The first pair pays for what later ones find ready (the runtime, the directory's first
    // files, cold caches): it is run and not counted.
    pair("warm-up", false)?;
    let (mut floors, mut engines, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    println!("round  first   floor (2 durable appends/step)  engine over the journal  ratio");
    for round in 0..rounds {
        let engine_first = round % 2 == 1;
        let (f, e) = pair(&round.to_string(), engine_first)?;
        let first = if engine_first { "engine" } else { "floor" };
        println!("{round:>5}  {first:<6}  {f:>22.0} steps/s  {e:>15.0} steps/s  {:>5.2}x", e / f);
        floors.push(f);
        engines.push(e);
        ratios.push(e / f);
    }

    // The engine's own cost: the same run over an in-memory log, no disk.
    // Long enough that the run's own start is lost in it, whatever BENCH_STEPS is.
    let memory_steps = 20_000;
    let engine = Engine::open(MemoryLog::new(), NoOp, SystemClock)?;
    engine.start(plan(memory_steps))?;
    let started = Instant::now();
    let outcome = rt.block_on(engine.run(&RunOptions::default()))?;
    let memory = rate(memory_steps, started.elapsed());
    assert_eq!(outcome, Outcome::Completed);

    println!();
    println!("steps per run:                   {steps} ({rounds} rounds after a warm-up pair)");
    println!("floor, steps/s, median:          {}", spread(&floors, 0));
    println!("engine over the journal, median: {}", spread(&engines, 0));
    println!("ratio engine / floor, median:    {}", spread(&ratios, 2));
    println!("engine over an in-memory log:    {memory:.0} steps/s ({memory_steps} steps)");
    println!("engine's own cost per step:      {:.1} µs", 1e6 / memory);
    Ok(())
}
