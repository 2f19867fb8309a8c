//! Child program for the runner's crash test: runs (or rolls back) a rotation of the file-level
//! actions on a control-plane node that is a directory, with the real journal, until done or
//! killed.
//!
//! Usage: `rotation-child run|partial|rollback STATE_DIR CLUSTER_DIR` (`partial` stops after the
//! trust phase)

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use actions::action::{Action, CaKind, Content, Rotation, learn_into};
use actions::inventory::Inventory;
use actions::node::LocalNode;
use engine::{Engine, Plan, RunOptions, Step, SystemClock};
use journal::{Actor, Journal};

const PKI: &str = "/etc/kubernetes/pki";
const ADMIN: &str = "/etc/kubernetes/admin.conf";

/// The files the plan touches (backed up first).
pub fn touched() -> Vec<String> {
    ["ca.crt", "ca.key", "ca-new.crt", "ca-new.key", "ca-bundle.crt"]
        .iter()
        .map(|f| format!("{PKI}/{f}"))
        .chain([ADMIN.to_owned()])
        .collect()
}

fn plan() -> Plan<Action> {
    let cp = || "cp-1".to_owned();
    let step = |id: &str, phase: &str, a: Action| Step::new(id, phase, "file", a);
    Plan::new(["preflight", "prepare", "trust", "finalize"])
        .step(step(
            "preflight/backup/cp-1",
            "preflight",
            Action::Backup { node: cp(), paths: touched() },
        ))
        .step(step(
            "prepare/new-ca",
            "prepare",
            Action::NewCa { ca: CaKind::Cluster, node: cp(), old_cert: format!("{PKI}/ca.crt") },
        ))
        .step(step(
            "prepare/distribute/cp-1",
            "prepare",
            Action::PutFiles {
                node: cp(),
                files: vec![
                    (format!("{PKI}/ca-new.crt"), Content::NewCert(CaKind::Cluster), 0o644),
                    (format!("{PKI}/ca-new.key"), Content::NewKey(CaKind::Cluster), 0o600),
                    (format!("{PKI}/ca-bundle.crt"), Content::Bundle(CaKind::Cluster), 0o644),
                ],
                loaded_by: Vec::new(),
            },
        ))
        .step(step(
            "trust/kubeconfig-ca",
            "trust",
            Action::SetKubeconfigCa {
                node: Some(cp()),
                path: ADMIN.into(),
                content: Content::Bundle(CaKind::Cluster),
                prior: None,
                loaded_by: None,
            },
        ))
        .step(step(
            "trust/kubeconfig-client",
            "trust",
            Action::ReissueKubeconfigClient {
                node: Some(cp()),
                path: ADMIN.into(),
                loaded_by: None,
            },
        ))
        .step(step(
            "finalize/canonical-ca",
            "finalize",
            Action::PutFiles {
                node: cp(),
                files: vec![
                    (format!("{PKI}/ca.crt"), Content::NewCert(CaKind::Cluster), 0o644),
                    (format!("{PKI}/ca.key"), Content::NewKey(CaKind::Cluster), 0o600),
                ],
                loaded_by: Vec::new(),
            },
        ))
        .step(step(
            "finalize/kubeconfig-ca",
            "finalize",
            Action::SetKubeconfigCa {
                node: Some(cp()),
                path: ADMIN.into(),
                content: Content::NewCert(CaKind::Cluster),
                prior: Some(Content::Bundle(CaKind::Cluster)),
                loaded_by: None,
            },
        ))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(mode), Some(state), Some(cluster)) = (args.first(), args.get(1), args.get(2)) else {
        eprintln!("usage: rotation-child run|rollback STATE_DIR CLUSTER_DIR");
        return ExitCode::from(2);
    };
    match go(mode, Path::new(state), Path::new(cluster)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rotation-child: {e}");
            ExitCode::FAILURE
        }
    }
}

fn go(mode: &str, state: &Path, cluster: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let journal: Journal<engine::Event<Action>> =
        match Journal::open(state, Actor::current("rotation-child")) {
            Err(journal::Error::StaleLock { owner, .. }) => {
                journal::force_unlock(state, &owner.lock_id)?;
                Journal::open(state, Actor::current("rotation-child"))?
            }
            other => other?,
        };
    let inventory = Inventory::load(&cluster.join("inventory.toml"))?;
    let nodes =
        BTreeMap::from([("cp-1".to_owned(), LocalNode::new("cp-1", &cluster.join("cp-1")))]);
    let events: Vec<_> = journal.replay()?.into_iter().map(|r| r.event).collect();
    let folded = engine::State::fold(&events);
    let blobs = journal.blobs().clone();
    let runner = Rotation::new(inventory, nodes, blobs, None, &folded);
    let known = runner.known();
    let mut engine = Engine::open(journal, runner, SystemClock)?;
    engine.on_event(move |_, state| learn_into(&known, state));
    if folded.plan.is_none() {
        engine.start(plan())?;
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let outcome = match mode {
        "rollback" => rt.block_on(engine.rollback(&RunOptions::default()))?,
        // Up to the end of the trust phase: a rotation left half-way, to roll back from.
        "partial" => rt.block_on(
            engine.run(&RunOptions { until: Some("trust".into()), ..RunOptions::default() }),
        )?,
        _ => rt.block_on(engine.run(&RunOptions::default()))?,
    };
    println!("{outcome:?}");
    Ok(())
}
