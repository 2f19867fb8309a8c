//! The rotation commands: parse what the operator typed into calls of `actions::session`, render
//! what they return (text or JSON, progress on a terminal), and map outcomes to exit codes. No
//! rotation logic lives here: the state directory, `init`'s orchestration and the live checks are
//! `actions::session`'s.

use std::path::{Path, PathBuf};
use std::time::Duration;

use actions::action::{Action, learn_into};
use actions::plan;
use actions::session::{self, StateDir};
use anyhow::Context;
use engine::{Event, Outcome, PauseReason, RunOptions, State, Window};

use crate::UsageError;
use crate::args::{ExportFormat, Output};

/// Exit code: paused and resumable.
pub const EXIT_PAUSED: u8 = 75;

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

/// `kubeca init`.
pub fn init(dir: &Path, inventory_file: &Path) -> anyhow::Result<u8> {
    let done = runtime()?.block_on(session::init(dir, inventory_file))?;
    println!(
        "rotation recorded in {}: {} steps; every connection holds after every step.",
        dir.display(),
        done.steps
    );
    println!(
        "next: kubeca --state-dir {} plan   (review), then kubeca --state-dir {} run",
        dir.display(),
        dir.display()
    );
    Ok(0)
}

/// `kubeca plan`.
pub fn plan(dir: &Path, output: Output) -> anyhow::Result<u8> {
    let state_dir = StateDir::open(dir)?;
    let state = state_dir.state()?;
    let plan = state.plan.as_ref().ok_or_else(|| {
        anyhow::anyhow!("no rotation recorded in {}; run `init` first", dir.display())
    })?;
    let topology = state_dir.topology()?;
    let trust = plan::check(plan, &topology);
    match output {
        Output::Json => {
            let steps: Vec<serde_json::Value> = plan
                .steps()
                .map(|s| serde_json::json!({
                    "id": s.id.as_str(), "phase": s.phase.as_str(), "upstream": s.upstream,
                    "group": s.group.as_ref().map(|g| g.as_str()), "action": s.action,
                    "status": format!("{:?}", state.step(&s.id).status).split_whitespace().next().unwrap_or(""),
                }))
                .collect();
            let out = serde_json::json!({
                "digest": state.digest, "steps": steps,
                "trust_check": match &trust { Ok(()) => "every edge holds after every step and every phase's rollback".to_string(), Err(v) => v.to_string() },
            });
            print_quietly(&format!("{}\n", serde_json::to_string_pretty(&out)?))?;
        }
        Output::Text => {
            use std::fmt::Write as _;
            let mut phase = String::new();
            // One write at the end: `kubeca plan | head` ends quietly instead of failing on
            // a closed pipe halfway.
            let mut out = String::new();
            for item in &plan.items {
                match item {
                    engine::Item::Gate(g) => {
                        let _ = writeln!(out, "\n== gate {}: {}", g.name, g.note);
                    }
                    engine::Item::Step(s) => {
                        if s.phase.as_str() != phase {
                            phase = s.phase.to_string();
                            let _ = writeln!(out, "\n== {phase}");
                        }
                        let group = s.group.as_ref().map(|g| format!(" [{g}]")).unwrap_or_default();
                        let done = if state.step(&s.id).is_done() { "done" } else { "    " };
                        let _ = writeln!(
                            out,
                            "  {done} {:<8} {}{group}",
                            s.upstream.clone().unwrap_or_default(),
                            s.id
                        );
                    }
                }
            }
            match &trust {
                Ok(()) => writeln!(
                    out,
                    "\ntrust check: every connection holds after every one of {} steps, and a \
                     rollback from the end of every phase restores the old configuration without \
                     breaking one",
                    plan.steps().count()
                ),
                Err(v) => writeln!(out, "\ntrust check FAILED: {v}"),
            }?;
            print_quietly(&out)?;
        }
    }
    Ok(if trust.is_ok() { 0 } else { 1 })
}

/// Writes `text` to stdout; a reader that went away (`| head`) is not an error.
fn print_quietly(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn parse_window(text: &str) -> anyhow::Result<Window> {
    let (start, duration) = text.split_once('/').ok_or_else(|| {
        UsageError(format!("--window {text}: expected START/DURATION, e.g. 2026-12-05T02:00Z/4h"))
    })?;
    let start: jiff::Timestamp = normalize_time(start)
        .parse()
        .map_err(|e| UsageError(format!("--window {text}: start {start:?}: {e}")))?;
    let span: jiff::Span = duration
        .parse()
        .map_err(|e| UsageError(format!("--window {text}: duration {duration:?}: {e}")))?;
    let duration = Duration::try_from(
        span.to_duration(jiff::SpanRelativeTo::days_are_24_hours())
            .map_err(|e| UsageError(e.to_string()))?,
    )
    .map_err(|e| UsageError(format!("--window {text}: {e}")))?;
    Ok(Window { start, duration })
}

/// Accepts `2026-12-05T02:00Z` (no seconds), which RFC 3339 parsers reject.
fn normalize_time(s: &str) -> String {
    let t = s.trim();
    match t.split_once('T') {
        Some((date, time)) if time.len() == 6 && time.ends_with('Z') => {
            format!("{date}T{}:00Z", &time[..5])
        }
        _ => t.to_owned(),
    }
}

fn options(
    until: Option<&str>,
    window: Option<&str>,
) -> anyhow::Result<(RunOptions, engine::Canceller)> {
    let (canceller, cancel) = engine::Cancel::new();
    let mut o = RunOptions { cancel, ..RunOptions::default() };
    if let Some(u) = until {
        if !plan::PHASES.contains(&u) {
            return Err(UsageError(format!(
                "--until {u}: not a phase; one of {}",
                plan::PHASES.join(", ")
            ))
            .into());
        }
        o.until = Some(u.into());
    }
    o.window = window.map(parse_window).transpose()?;
    o.jitter_seed = u64::from(std::process::id());
    Ok((o, canceller))
}

/// `kubeca run` and `kubeca rollback`.
pub fn drive(
    dir: &Path,
    until: Option<&str>,
    window: Option<&str>,
    rollback: bool,
) -> anyhow::Result<u8> {
    let (opts, canceller) = options(until, window)?;
    let state_dir = StateDir::open(dir)?;
    let rt = runtime()?;
    let outcome = rt.block_on(async {
        let live = state_dir.live_status_writer();
        let (mut engine, known) = state_dir.rotation_engine(rollback).await?;
        let started = std::time::Instant::now();
        let bar = progress_bar();
        engine.on_event(move |event, state| {
            learn_into(&known, state);
            // With a bar on the terminal, routine step lines would scroll it away: they go to
            // the debug level there (failures and gates stay visible).
            match &bar {
                Some(bar) => {
                    if stays_visible(event) {
                        bar.suspend(|| progress(event, state, started.elapsed()));
                    }
                }
                None => progress(event, state, started.elapsed()),
            }
            if let Some(bar) = &bar {
                let s = state.status();
                bar.set_length(s.total as u64);
                bar.set_position(s.done as u64);
                let phase = s.phase.as_ref().map(|p| p.to_string()).unwrap_or_default();
                let step = s.current.as_ref().map(|c| c.to_string()).unwrap_or_default();
                bar.set_message(format!("{phase}: {step}"));
                if matches!(event, Event::Completed(_) | Event::RolledBack(_) | Event::Paused(_)) {
                    bar.finish();
                }
            }
            live(&live_status(state));
        });
        tokio::spawn(async move {
            stop_requested().await;
            tracing::warn!("stopping: no new step starts; running steps finish");
            canceller.cancel();
        });
        let outcome =
            if rollback { engine.rollback(&opts).await? } else { engine.run(&opts).await? };
        anyhow::Ok(outcome)
    })?;
    Ok(report(dir, &outcome))
}

/// Whether `event` is logged above the progress bar: failures, gates and pauses are what an
/// operator must see; routine step lines would scroll the bar away.
fn stays_visible(event: &Event<Action>) -> bool {
    matches!(event, Event::StepFailed(_) | Event::GateReached(_) | Event::Paused(_))
}

/// Returns once the operator asks kubeca to stop: Ctrl-C, or SIGTERM (when its handler cannot be
/// installed, Ctrl-C alone).
async fn stop_requested() {
    use tokio::signal::unix::{SignalKind, signal};
    let terminate = async {
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                term.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}

/// A progress bar on a terminal (phase, step, n of m, elapsed); `None` when stderr is not a
/// terminal, where the log lines carry the same facts.
fn progress_bar() -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(0);
    let style = indicatif::ProgressStyle::with_template(
        "{elapsed_precise} [{bar:30}] {pos}/{len} {wide_msg}",
    )
    .ok()?
    .progress_chars("=> ");
    bar.set_style(style);
    Some(bar)
}

fn live_status(state: &State<Action>) -> serde_json::Value {
    let s = state.status();
    serde_json::json!({
        "condition": format!("{:?}", s.condition),
        "done": s.done, "total": s.total,
        "phase": s.phase.as_ref().map(|p| p.as_str()),
        "current": s.current.as_ref().map(|c| c.as_str()),
        "last": s.last.as_ref().map(|(what, at)| serde_json::json!({"event": what, "at": at.to_string()})),
        "next": "wait for the running kubeca, or stop it with Ctrl-C / SIGTERM (it finishes running steps)",
    })
}

fn progress(event: &Event<Action>, state: &State<Action>, elapsed: Duration) {
    let status = state.status();
    let at = format!("{}/{}", status.done, status.total);
    let secs = elapsed.as_secs();
    match event {
        Event::StepStarted(e) => {
            let phase = state.plan_step(&e.step).map(|s| s.phase.to_string()).unwrap_or_default();
            tracing::info!(phase, step = %e.step, progress = %at, elapsed_s = secs, "started");
        }
        Event::StepSucceeded(e) => {
            tracing::info!(step = %e.step, progress = %at, elapsed_s = secs, "done")
        }
        Event::StepRecovered(e) => {
            tracing::info!(step = %e.step, progress = %at, "already done (recovered after a crash)")
        }
        Event::StepFailed(e) => tracing::warn!(step = %e.step, error = %e.error.message, "failed"),
        Event::GateReached(e) => tracing::info!(gate = %e.gate, "gate reached"),
        Event::CompensationStarted(e) => {
            tracing::info!(step = %e.step, progress = %at, elapsed_s = secs, "rollback step started")
        }
        Event::CompensationSucceeded(e) => {
            tracing::info!(step = %e.step, progress = %at, "rollback step done")
        }
        other => tracing::info!(event = other.name(), "recorded"),
    }
}

fn report(dir: &Path, outcome: &Outcome) -> u8 {
    let d = dir.display();
    match outcome {
        Outcome::Completed => {
            println!("rotation completed.");
            0
        }
        Outcome::RolledBack => {
            println!("rollback completed: the cluster is back on the old CA only.");
            0
        }
        Outcome::ReachedUntil { phase } => {
            println!("phase {phase} done, as asked. next: kubeca --state-dir {d} run");
            0
        }
        Outcome::Paused { reason } => {
            match reason {
                PauseReason::Gate { gate } => println!(
                    "paused at gate {gate}. When clients outside the cluster trust the new CA: kubeca --state-dir {d} approve {gate}, then kubeca --state-dir {d} run"
                ),
                PauseReason::WindowClosed { .. } | PauseReason::WindowTooShort { .. } => println!(
                    "paused at a safe point: {reason}. next, in the next maintenance window: kubeca --state-dir {d} run --window START/DURATION (resumes where it stopped)"
                ),
                PauseReason::Failed { failures } => {
                    for f in failures {
                        println!("failed after its retries: step {}: {}", f.step, f.error);
                    }
                    println!(
                        "paused, resumable. next: fix the cause, then kubeca --state-dir {d} run (resumes where it stopped), or roll back: kubeca --state-dir {d} rollback --yes"
                    );
                }
                other => println!(
                    "paused: {other}. next: kubeca --state-dir {d} run (resumes where it stopped)"
                ),
            }
            EXIT_PAUSED
        }
        Outcome::Failed { failures } => {
            for f in failures {
                eprintln!("failed: step {}: {}", f.step, f.error);
            }
            eprintln!(
                "the state is journaled. fix the cause and run again, or roll back: kubeca --state-dir {d} rollback --yes"
            );
            1
        }
    }
}

/// `kubeca status`.
pub fn status(dir: &Path, output: Output) -> anyhow::Result<u8> {
    let state_dir = match StateDir::open(dir) {
        Ok(j) => j,
        Err(e) => {
            // A running kubeca holds the lock: show what it last wrote.
            if let Some((owner, text)) = e.running(dir) {
                match output {
                    Output::Json => println!("{text}"),
                    Output::Text => {
                        println!("kubeca {owner} is running; its last status:");
                        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                        for key in ["condition", "done", "total", "phase", "current", "next"] {
                            println!("  {key}: {}", v[key]);
                        }
                    }
                }
                return Ok(0);
            }
            return Err(e.into());
        }
    };
    let state = state_dir.state()?;
    let s = state.status();
    let next = match &s.next {
        engine::Next::Start => {
            format!("kubeca --state-dir {} init --inventory FILE", dir.display())
        }
        engine::Next::Run => format!("kubeca --state-dir {} run", dir.display()),
        engine::Next::Approve(g) => format!("kubeca --state-dir {} approve {g}", dir.display()),
        engine::Next::Rollback => format!("kubeca --state-dir {} rollback --yes", dir.display()),
        engine::Next::Nothing => "nothing: the run is finished".into(),
    };
    match output {
        Output::Json => {
            let out = serde_json::json!({
                "condition": format!("{:?}", s.condition),
                "done": s.done, "total": s.total,
                "phase": s.phase.as_ref().map(|p| p.as_str()),
                "current": s.current.as_ref().map(|c| c.as_str()),
                "last": s.last.as_ref().map(|(what, at)| serde_json::json!({"event": what, "at": at.to_string()})),
                "next": next,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        }
        Output::Text => {
            println!("condition: {:?}", s.condition);
            println!("progress:  {} of {} steps", s.done, s.total);
            if let Some(p) = &s.phase {
                println!("phase:     {p}");
            }
            if let Some(c) = &s.current {
                println!("step:      {c}");
            }
            if let Some((what, at)) = &s.last {
                println!("last:      {what} at {at}");
            }
            println!("next:      {next}");
        }
    }
    Ok(0)
}

/// `kubeca approve`.
pub fn approve(dir: &Path, gate: &str) -> anyhow::Result<u8> {
    let engine = StateDir::open(dir)?.idle_engine()?;
    let by = session::actor();
    let newly = engine.approve(&gate.into(), &format!("{}@{}", by.user, by.host))?;
    if newly {
        println!("gate {gate} approved. next: kubeca --state-dir {} run", dir.display());
    } else {
        println!("gate {gate} was already approved.");
    }
    Ok(0)
}

/// `kubeca journal export`.
pub fn export(dir: &Path, format: ExportFormat, output: Option<&PathBuf>) -> anyhow::Result<u8> {
    let state_dir = StateDir::open(dir)?;
    let journal = state_dir.journal();
    let format = match format {
        ExportFormat::Jsonl => journal::Format::Jsonl,
        ExportFormat::Csv => journal::Format::Csv,
    };
    let head = match output {
        Some(path) => {
            let mut f = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            journal.export(&mut f, format, &session::audit_renderer())?
        }
        None => {
            journal.export(&mut std::io::stdout().lock(), format, &session::audit_renderer())?
        }
    };
    eprintln!("exported {} records; head {}", head.len, head.hash);
    Ok(0)
}

/// `kubeca journal verify`.
pub fn verify_journal(
    dir: Option<&Path>,
    export: Option<&PathBuf>,
    format: Option<ExportFormat>,
) -> anyhow::Result<u8> {
    let head = match export {
        Some(path) => {
            let format = match format {
                Some(ExportFormat::Csv) => journal::Format::Csv,
                _ => journal::Format::Jsonl,
            };
            let f =
                std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
            journal::verify_export::<Event<Action>>(
                std::io::BufReader::new(f),
                format,
                &path.display().to_string(),
                &session::audit_renderer(),
            )?
        }
        None => {
            let dir = dir.ok_or_else(|| {
                UsageError("--state-dir DIR (or --export FILE) is required".into())
            })?;
            StateDir::open(dir)?.journal().verify()?
        }
    };
    println!("journal intact: {} records, head {}", head.len, head.hash);
    Ok(0)
}

/// `kubeca verify --inventory FILE`: does every client still trust every server? Real TLS
/// handshakes: the inventory's admin kubeconfig against each apiserver (both directions, by a
/// request), and the CA that pods (`kube-root-ca.crt`) and joining nodes (`cluster-info`) trust
/// against the certificate each apiserver presents.
pub fn verify_live(inventory_file: &Path, output: Output) -> anyhow::Result<u8> {
    let results = runtime()?.block_on(session::verify_live(inventory_file))?;
    let broken = results.iter().filter(|(_, r)| r.is_err()).count();
    match output {
        Output::Json => {
            let edges: Vec<serde_json::Value> = results
                .iter()
                .map(|(edge, r)| serde_json::json!({"edge": edge, "ok": r.is_ok(), "error": r.as_ref().err()}))
                .collect();
            println!(
                "{}",
                serde_json::to_string_pretty(
                    &serde_json::json!({"edges": edges, "broken": broken})
                )?
            );
        }
        Output::Text => {
            for (edge, r) in &results {
                match r {
                    Ok(()) => println!("ok      {edge}"),
                    Err(e) => println!("BROKEN  {edge}: {e}"),
                }
            }
            println!("{} edges checked, {broken} broken", results.len());
        }
    }
    Ok(if broken == 0 { 0 } else { 1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_is_read_as_the_brief_writes_it() {
        let w = parse_window("2026-12-05T02:00Z/4h").unwrap();
        assert_eq!(w.start.to_string(), "2026-12-05T02:00:00Z");
        assert_eq!(w.duration, Duration::from_secs(4 * 3600));
        let w = parse_window("2026-12-05T02:00:30Z/90m").unwrap();
        assert_eq!(w.duration, Duration::from_secs(90 * 60));
        assert!(parse_window("2026-12-05T02:00Z").is_err());
    }
}
