//! The rotation commands: open the state directory, build the runner, drive the engine, and
//! print what happened and what to type next. No rotation logic lives here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use actions::api::ClusterApi;
use actions::inventory::Inventory;
use actions::node::{SshNode, SshOptions};
use actions::procedure::{self, Action, ClusterFacts};
use actions::rotation::{Idle, Rotation, learn_into};
use anyhow::{Context, anyhow, bail};
use engine::{Engine, Event, Outcome, PauseReason, RunOptions, State, SystemClock, Window};
use journal::{Actor, Journal};

use crate::UsageError;
use crate::args::{ExportFormat, Output};

/// Exit code: paused and resumable.
pub const EXIT_PAUSED: u8 = 75;

type EventLog = Journal<Event<Action>>;

/// The inventory as resolved at `init`, kept beside the journal for `run`.
const INVENTORY_FILE: &str = "inventory.json";
/// The trust model's view of the cluster as discovered at `init`, for `plan`'s check.
const TOPOLOGY_FILE: &str = "topology.json";

fn actor() -> Actor {
    Actor::current(format!("kubeca {}", env!("CARGO_PKG_VERSION")))
}

/// The state directory's layout version this kubeca writes and reads.
const FORMAT: u32 = 1;
/// Where that version is recorded.
const FORMAT_FILE: &str = "kubeca-format";
/// The last status a running kubeca wrote, for `status` while it holds the lock.
const LIVE_STATUS_FILE: &str = "status.json";

fn open(dir: &Path) -> anyhow::Result<EventLog> {
    let format_file = dir.join(FORMAT_FILE);
    match std::fs::read_to_string(&format_file) {
        Ok(text) => {
            let found: u32 = text.trim().parse().unwrap_or(u32::MAX);
            if found > FORMAT {
                return Err(UsageError(format!(
                    "{}: this state directory was written by a newer kubeca (format {found}; this \
                     kubeca {} reads format {FORMAT}): use that newer kubeca",
                    format_file.display(),
                    env!("CARGO_PKG_VERSION")
                ))
                .into());
            }
        }
        Err(_) if dir.join(journal::DB_FILE).exists() => {}
        Err(_) => {
            journal::create_private_dir(dir)?;
            write_private(&format_file, format!("{FORMAT}\n").as_bytes())?;
        }
    }
    Journal::open(dir, actor())
        .with_context(|| format!("opening the state directory {}", dir.display()))
}

fn folded(journal: &EventLog) -> anyhow::Result<State<Action>> {
    let events: Vec<Event<Action>> = journal.replay()?.into_iter().map(|r| r.event).collect();
    Ok(State::fold(&events))
}

fn load_inventory(dir: &Path) -> anyhow::Result<Inventory> {
    let path = dir.join(INVENTORY_FILE);
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "{}: no inventory recorded; start with `kubeca --state-dir {} init --inventory FILE`",
            path.display(),
            dir.display()
        )
    })?;
    serde_json::from_str(&text)
        .with_context(|| format!("{}: unreadable inventory record", path.display()))
}

/// The topology recorded at `init`, whose layouts the runner acts on; a state directory written
/// before kubeca recorded one has none, and its nodes are taken to be laid out as kubeadm's.
fn load_topology(dir: &Path) -> anyhow::Result<actions::trust::Topology> {
    let path = dir.join(TOPOLOGY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{}: unreadable topology record", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

/// Where the SSH control sockets live: `DIR/ssh`, unless that path is too long for a Unix
/// socket (108 bytes, of which ssh and its multiplexer take about 65), then a directory of this
/// user's in /tmp named after the state directory, made 0700 and checked to be ours.
fn ssh_control_dir(dir: &Path) -> anyhow::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let preferred = dir.join("ssh");
    if preferred.as_os_str().len() <= 40 {
        journal::create_private_dir(&preferred)?;
        return Ok(preferred);
    }
    let abs =
        std::fs::canonicalize(dir).with_context(|| format!("{}: cannot resolve", dir.display()))?;
    let owner = std::fs::metadata(&abs)?.uid();
    let digest = journal::Hash::of(abs.as_os_str().as_encoded_bytes()).to_hex();
    let short = PathBuf::from(format!("/tmp/kubeca-ssh-{owner}-{}", &digest[..12]));
    match std::fs::DirBuilder::new().mode(0o700).create(&short) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e).with_context(|| format!("creating {}", short.display())),
    }
    // Shared /tmp: refuse a directory (or a link) someone else made there.
    let meta = std::fs::symlink_metadata(&short)?;
    if !meta.is_dir() || meta.uid() != owner || meta.permissions().mode() & 0o077 != 0 {
        anyhow::bail!(
            "{}: not a private directory of this user (needed for SSH control sockets because {} is too long for a socket path); remove it, or use a shorter --state-dir",
            short.display(),
            preferred.display()
        );
    }
    Ok(short)
}

async fn connect(inventory: &Inventory, dir: &Path) -> anyhow::Result<BTreeMap<String, SshNode>> {
    let control_dir = ssh_control_dir(dir)?;
    let opts = SshOptions {
        user: inventory.ssh.user.clone(),
        identity: inventory.ssh.identity.clone(),
        known_hosts: inventory.ssh.known_hosts.clone(),
        strict: inventory.ssh.strict_host_key_checking,
        sudo: inventory.ssh.sudo,
        timeout: Duration::from_secs(inventory.ssh.command_timeout_secs),
        control_dir,
    };
    let mut nodes = BTreeMap::new();
    for (i, n) in inventory.nodes.iter().enumerate() {
        tracing::info!(node = %n.name, "connecting {} of {}", i + 1, inventory.nodes.len());
        let node = SshNode::connect(&n.name, &n.address, n.port, &opts).await?;
        nodes.insert(n.name.clone(), node);
    }
    Ok(nodes)
}

/// `kubeca init`.
pub fn init(dir: &Path, inventory_file: &Path) -> anyhow::Result<u8> {
    let inventory = Inventory::load(inventory_file).map_err(|e| UsageError(e.to_string()))?;
    let journal = open(dir)?;
    if folded(&journal)?.plan.is_some() {
        return Err(UsageError(format!(
            "{} already holds a rotation; use `kubeca --state-dir {} status`, or another directory for a new one",
            dir.display(),
            dir.display()
        ))
        .into());
    }
    let rt = runtime()?;
    let plan = rt.block_on(async {
        let nodes = connect(&inventory, dir).await?;
        let mut facts = BTreeMap::new();
        for (name, node) in &nodes {
            tracing::info!(node = %name, "discovering what each component loads");
            facts.insert(name.clone(), actions::discovery::discover(node).await?);
        }
        // Refuse before anything is recorded: a CA key that is not its certificate's, an
        // expired CA, a single apiserver (warned: the API is down while it restarts).
        if let Some(cp) = inventory.control_planes().next()
            && let (Some(node), Some(f)) = (nodes.get(&cp.name), facts.get(&cp.name))
        {
            let flag = |c: &str, flag: &str| f.flag(c, flag).map(str::to_owned);
            let pairs: Vec<(String, String)> = [
                (flag("kube-controller-manager", "--root-ca-file"), flag("kube-controller-manager", "--cluster-signing-key-file")),
                (
                    flag("kube-apiserver", "--requestheader-client-ca-file"),
                    flag("kube-apiserver", "--requestheader-client-ca-file").map(|c| format!("{}.key", c.trim_end_matches(".crt"))),
                ),
            ]
            .into_iter()
            .filter_map(|(c, k)| Some((c?, k?)))
            .collect();
            actions::rotation::check_old_cas(node, &pairs, jiff::Timestamp::now())
                .await
                .map_err(UsageError)?;
        }
        if inventory.control_planes().count() < 2 {
            tracing::warn!("ONE API SERVER ONLY: the cluster API will be unavailable while it restarts (upstream caution: rotation without downtime needs an HA control plane)");
        }
        let api = ClusterApi::from_kubeconfig(&inventory.cluster.kubeconfig).await?;
        inventory
            .check_nodes_against(inventory_file, &api.node_names().await?)
            .map_err(|e| UsageError(e.to_string()))?;
        let cluster = ClusterFacts {
            nodes: facts,
            extension_workloads: api.extension_workloads().await?,
            namespaces: api.namespaces().await?,
        };
        let id = format!("{}", jiff::Timestamp::now().as_second());
        for node in nodes.into_values() {
            node.close().await;
        }
        let topology = procedure::topology(&inventory, &cluster);
        anyhow::Ok((procedure::build(&inventory, &cluster, &id)?, topology))
    })?;
    let (plan, topology) = plan;
    write_private(&dir.join(TOPOLOGY_FILE), &serde_json::to_vec_pretty(&topology)?)?;
    let record = serde_json::to_vec_pretty(&inventory)?;
    write_private(&dir.join(INVENTORY_FILE), &record)?;
    let steps = plan.steps().count();
    let engine = Engine::open(journal, Idle, SystemClock)?;
    engine.start(plan)?;
    println!(
        "rotation recorded in {}: {steps} steps; every connection holds after every step.",
        dir.display()
    );
    println!(
        "next: kubeca --state-dir {} plan   (review), then kubeca --state-dir {} run",
        dir.display(),
        dir.display()
    );
    Ok(0)
}

fn write_private(path: &Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// `kubeca plan`.
pub fn plan(dir: &Path, output: Output) -> anyhow::Result<u8> {
    let journal = open(dir)?;
    let state = folded(&journal)?;
    let plan = state
        .plan
        .as_ref()
        .ok_or_else(|| anyhow!("no rotation recorded in {}; run `init` first", dir.display()))?;
    let topology_file = dir.join(TOPOLOGY_FILE);
    let topology: actions::trust::Topology = serde_json::from_slice(
        &std::fs::read(&topology_file)
            .with_context(|| format!("reading {}", topology_file.display()))?,
    )
    .with_context(|| format!("{}: unreadable", topology_file.display()))?;
    let trust = procedure::check(plan, &topology);
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
        if !procedure::PHASES.contains(&u) {
            return Err(UsageError(format!(
                "--until {u}: not a phase; one of {}",
                procedure::PHASES.join(", ")
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
    let journal = open(dir)?;
    let state = folded(&journal)?;
    if state.plan.is_none() {
        bail!("no rotation recorded in {}; run `init` first", dir.display());
    }
    if rollback && let Some(at) = state.completed {
        return Err(UsageError(format!(
            "the rotation completed at {at}: the old CA is gone from the cluster, so there is nothing to roll back to"
        ))
        .into());
    }
    let inventory = load_inventory(dir)?;
    let topology = load_topology(dir)?;
    let rt = runtime()?;
    let outcome = rt.block_on(async {
        let nodes = connect(&inventory, dir).await?;
        let api = ClusterApi::from_kubeconfig(&inventory.cluster.kubeconfig).await?;
        let blobs = journal.blobs().clone();
        let runner = Rotation::new(inventory.clone(), nodes, blobs, Some(api), &state)
            .with_topology(topology);
        let known = runner.known();
        let mut engine = Engine::open(journal, runner, SystemClock)?;
        let started = std::time::Instant::now();
        let live = dir.join(LIVE_STATUS_FILE);
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
            let _ = write_private(&live, live_status(state).to_string().as_bytes());
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
    let journal = match open(dir) {
        Ok(j) => j,
        Err(e) => {
            // A running kubeca holds the lock: show what it last wrote.
            if let Some(journal::Error::Locked { owner, .. }) = e.downcast_ref::<journal::Error>()
                && let Ok(text) = std::fs::read_to_string(dir.join(LIVE_STATUS_FILE))
            {
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
            return Err(e);
        }
    };
    let state = folded(&journal)?;
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
    let journal = open(dir)?;
    let engine = Engine::open(journal, Idle, SystemClock)?;
    let by = actor();
    let newly = engine.approve(&gate.into(), &format!("{}@{}", by.user, by.host))?;
    if newly {
        println!("gate {gate} approved. next: kubeca --state-dir {} run", dir.display());
    } else {
        println!("gate {gate} was already approved.");
    }
    Ok(0)
}

/// Renders events for the audit export. Every event about a step also carries the step's
/// upstream procedure number, taken from the plan recorded at the start of the export, so an
/// auditor reads each line against the documentation. Deterministic given the records before
/// it, so an export verifies on its own with the same renderer.
fn audit_renderer() -> impl Fn(&Event<Action>) -> serde_json::Value {
    let upstream: std::cell::RefCell<BTreeMap<String, Option<String>>> = Default::default();
    move |e| {
        if let Event::RunStarted(r) = e {
            *upstream.borrow_mut() =
                r.plan.steps().map(|s| (s.id.to_string(), s.upstream.clone())).collect();
        }
        let mut v = serde_json::to_value(e).unwrap_or(serde_json::Value::Null);
        if let Some(step) = e.step()
            && let Some(obj) = v.as_object_mut()
        {
            let label = upstream.borrow().get(step.as_str()).cloned().flatten();
            obj.insert("upstream_step".into(), label.into());
        }
        v
    }
}

/// `kubeca journal export`.
pub fn export(dir: &Path, format: ExportFormat, output: Option<&PathBuf>) -> anyhow::Result<u8> {
    let journal = open(dir)?;
    let format = match format {
        ExportFormat::Jsonl => journal::Format::Jsonl,
        ExportFormat::Csv => journal::Format::Csv,
    };
    let head = match output {
        Some(path) => {
            let mut f = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            journal.export(&mut f, format, &audit_renderer())?
        }
        None => journal.export(&mut std::io::stdout().lock(), format, &audit_renderer())?,
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
                &audit_renderer(),
            )?
        }
        None => {
            let dir = dir.ok_or_else(|| {
                UsageError("--state-dir DIR (or --export FILE) is required".into())
            })?;
            open(dir)?.verify()?
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
    use actions::kubeadm::port;
    use actions::pki::{self, Cert, split_pem};
    use actions::probe::{Seen, probe};
    let inventory = Inventory::load(inventory_file).map_err(|e| UsageError(e.to_string()))?;
    let rt = runtime()?;
    let results: Vec<(String, Result<(), String>)> = rt.block_on(async {
        let mut out = Vec::new();
        let lb = ClusterApi::from_kubeconfig(&inventory.cluster.kubeconfig).await?;
        let root_ca = lb.configmap_value("kube-system", "kube-root-ca.crt", "ca.crt").await;
        let cluster_info = lb.cluster_info_ca().await;
        let now = jiff::Timestamp::now();
        for n in inventory.control_planes() {
            // No state directory here, so no discovered port: kubeadm's.
            let url = format!("https://{}:{}", n.address, port::APISERVER);
            let server = format!("kube-apiserver@{}", n.name);
            let admin = match ClusterApi::one_apiserver(&inventory.cluster.kubeconfig, &url).await {
                Ok(api) => api.version().await.map(drop).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            out.push((format!("admin -> {server}"), admin));
            let presented =
                match probe(&n.address, port::APISERVER, "/readyz", Duration::from_secs(5)).await {
                    Seen::Up { cert, .. } => {
                        Cert::from_der(cert, &server).map_err(|e| e.to_string())
                    }
                    Seen::Down => Err(format!(
                        "{server} does not answer on {}:{}",
                        n.address,
                        port::APISERVER
                    )),
                };
            for (client, trusted) in
                [("pods (kube-root-ca.crt)", &root_ca), ("joiners (cluster-info)", &cluster_info)]
            {
                let result = match (&presented, trusted) {
                    (Err(e), _) => Err(e.clone()),
                    (_, Err(e)) => Err(e.to_string()),
                    (_, Ok(None)) => Err("no CA published".into()),
                    (Ok(cert), Ok(Some(pem))) => {
                        split_pem(pem, client).map_err(|e| e.to_string()).and_then(|cas| {
                            pki::verify_chain(cert, &cas, now).map_err(|e| e.to_string())
                        })
                    }
                };
                out.push((format!("{client} -> {server}"), result));
            }
        }
        anyhow::Ok(out)
    })?;
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

    #[test]
    fn a_long_state_dir_gets_short_private_ssh_control_dir() {
        use std::os::unix::fs::PermissionsExt;
        let base = tempfile::tempdir().unwrap();
        let short = base.path().join("s");
        std::fs::create_dir(&short).unwrap();
        assert_eq!(ssh_control_dir(&short).unwrap(), short.join("ssh"));
        let long = base.path().join("a-state-directory-whose-path-is-far-too-long-for-a-socket");
        std::fs::create_dir(&long).unwrap();
        let dir = ssh_control_dir(&long).unwrap();
        assert!(dir.as_os_str().len() <= 40, "{}", dir.display());
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        // The same state directory finds the same one again.
        assert_eq!(ssh_control_dir(&long).unwrap(), dir);
        std::fs::remove_dir(&dir).unwrap();
    }
}
