//! Child program for the engine's crash test: runs a plan of file-writing steps over the real
//! journal, printing each durable step start, until it completes or is killed.
//!
//! Usage: `engine-child DIR`. The journal lives in `DIR/state`, the model (one file a step) in
//! `DIR/model`, and every `apply` appends `apply <step> <postcondition held before>` to
//! `DIR/applies.log` before its effect. Running it again resumes where the journal says.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use engine::{
    Compensation, Engine, Event, Outcome, Plan, RetryPolicy, RunOptions, Runner, Step, StepError,
    StepId, Summary, SystemClock,
};
use journal::{Actor, Journal};

/// Steps in the plan; steps `GROUP_START..GROUP_END` form a parallel group of limit 3.
const STEPS: usize = 80;
const GROUP_START: usize = 10;
const GROUP_END: usize = 22;

/// The plan: step `sNN` writes `vNN` to `model/kNN` (the action is `kNN=vNN`).
fn plan() -> Plan<String> {
    let mut plan = Plan::new(["first", "nodes", "last"]).group("nodes", 3, 1);
    for i in 0..STEPS {
        let phase = match i {
            i if i < GROUP_START => "first",
            i if i < GROUP_END => "nodes",
            _ => "last",
        };
        let mut step = Step::new(format!("s{i:02}"), phase, "write", format!("k{i:02}=v{i:02}"))
            .retry(RetryPolicy::once())
            .estimate(Duration::from_millis(10));
        if (GROUP_START..GROUP_END).contains(&i) {
            step = step.in_group("nodes");
        }
        plan = plan.step(step);
    }
    plan
}

/// Writes model files atomically (temp file, fsync, rename).
struct FileRunner {
    dir: PathBuf,
}

impl FileRunner {
    fn parse(action: &str) -> Result<(&str, &str), StepError> {
        action.split_once('=').ok_or_else(|| StepError::terminal(format!("bad action {action}")))
    }

    fn holds(&self, key: &str, value: &str) -> bool {
        std::fs::read_to_string(self.dir.join("model").join(key)).is_ok_and(|v| v == value)
    }
}

impl Runner<String> for FileRunner {
    async fn check(&self, _: &StepId, action: &String) -> Result<Option<Summary>, StepError> {
        let (key, value) = Self::parse(action)?;
        Ok(self.holds(key, value).then(|| Summary::new().with(key, value)))
    }

    async fn apply(&self, step: &StepId, action: &String) -> Result<Summary, StepError> {
        let (key, value) = Self::parse(action)?;
        let io = |e: std::io::Error| StepError::retryable(format!("{key}: {e}"));
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("applies.log"))
            .map_err(io)?;
        writeln!(log, "apply {step} {}", self.holds(key, value)).map_err(io)?;
        // Give a SIGKILL time to land between the intent and the effect, and after it.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let model = self.dir.join("model");
        let tmp = model.join(format!(".{key}.tmp"));
        let mut file = std::fs::File::create(&tmp).map_err(io)?;
        file.write_all(value.as_bytes()).and_then(|()| file.sync_data()).map_err(io)?;
        std::fs::rename(&tmp, model.join(key)).map_err(io)?;
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok(Summary::new().with(key, value))
    }

    fn compensate(&self, _: &StepId, _: &String, _: Option<&Summary>) -> Vec<Compensation<String>> {
        Vec::new()
    }
}

fn run(dir: &Path) -> Result<Outcome, String> {
    std::fs::create_dir_all(dir.join("model")).map_err(|e| e.to_string())?;
    let journal: Journal<Event<String>> =
        Journal::open(&dir.join("state"), Actor::current("engine-child"))
            .map_err(|e| e.to_string())?;
    let mut engine = Engine::open(journal, FileRunner { dir: dir.to_owned() }, SystemClock)
        .map_err(|e| e.to_string())?;
    engine.on_event(|event, _| {
        if let Event::StepStarted(s) = event {
            let mut out = std::io::stdout().lock();
            // A closed stdout only loses progress lines; the journal is the record.
            let _ = writeln!(out, "started {} {}", s.step, s.attempt).and_then(|()| out.flush());
        }
    });
    if engine.state().plan.is_none() {
        engine.start(plan()).map_err(|e| e.to_string())?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(engine.run(&RunOptions::default())).map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: engine-child DIR");
        return ExitCode::from(2);
    };
    match run(Path::new(&dir)) {
        Ok(outcome) => {
            println!("outcome {outcome:?}");
            if outcome == Outcome::Completed { ExitCode::SUCCESS } else { ExitCode::FAILURE }
        }
        Err(e) => {
            eprintln!("engine-child: {e}");
            ExitCode::FAILURE
        }
    }
}
