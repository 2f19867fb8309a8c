//! What the plan records once it is whole: in each action, what it changes from (flag values,
//! CA data, what a kubelet loaded, the contents of removed files), so that a rollback goes back
//! one step at a time; in each backup, every file a rollback may restore; and what a rollback
//! must do after setting the controller-manager's root CA or the request-header CA back.

use std::collections::{BTreeMap, BTreeSet};

use engine::Plan;

use super::builder::Phase;
use super::{ClusterFacts, OPERATOR};
use crate::action::{Action, CaKind, Content, KubeletTarget};
use crate::kubeadm::component::{APISERVER, CONTROLLER_MANAGER};
use crate::trust::Topology;

/// Every file a compensation of `action` may restore, by node (`OPERATOR` for the operator's).
pub(super) fn restorable(action: &Action, topology: &Topology) -> Vec<(String, String)> {
    action
        .compensations(0, topology)
        .into_iter()
        .filter_map(|c| match c.action {
            Action::RestoreFiles { node, paths } => {
                let node = node.unwrap_or_else(|| OPERATOR.to_owned());
                Some(paths.into_iter().map(move |p| (node.clone(), p)).collect::<Vec<_>>())
            }
            _ => None,
        })
        .flatten()
        .collect()
}

/// Makes each node's backup step cover every file a rollback may restore there, including
/// the files the rotation creates (backed up as absent, so a rollback removes them).
pub(super) fn backups(plan: &mut Plan<Action>, topology: &Topology) {
    let mut needed: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for step in plan.steps() {
        for (node, path) in restorable(&step.action, topology) {
            needed.entry(node).or_default().insert(path);
        }
    }
    for item in &mut plan.items {
        if let engine::Item::Step(step) = item
            && let Action::Backup { node, paths } = &mut step.action
            && let Some(more) = needed.get(node.as_str())
        {
            for p in more {
                if !paths.contains(p) {
                    paths.push(p.clone());
                }
            }
            paths.sort();
        }
    }
}

/// Records in each action what it changes from, so a rollback can go back step by step: flag
/// values before each `SetFlags`, the CA data before each `SetKubeconfigCa`, what each kubelet
/// loaded before each roll, and the contents of files before they are removed.
pub(super) fn priors(plan: &mut Plan<Action>, facts: &ClusterFacts) {
    let mut flag_values: BTreeMap<(String, String), BTreeMap<String, String>> = BTreeMap::new();
    let mut kubeconfigs: BTreeMap<(Option<String>, String), Content> = BTreeMap::new();
    let mut kubelets: BTreeMap<String, KubeletTarget> = BTreeMap::new();
    let mut files: BTreeMap<(String, String), (Content, u32)> = BTreeMap::new();
    for item in &mut plan.items {
        let engine::Item::Step(step) = item else { continue };
        match &mut step.action {
            Action::SetFlags { node, manifest, flags, prior, .. } => {
                let current =
                    flag_values.entry((node.clone(), manifest.clone())).or_insert_with(|| {
                        facts
                            .nodes
                            .get(node.as_str())
                            .and_then(|f| f.static_pods.values().find(|p| &p.manifest == manifest))
                            .map(|p| p.flags.clone())
                            .unwrap_or_default()
                    });
                *prior = flags
                    .keys()
                    .filter_map(|k| current.get(k).map(|v| (k.clone(), v.clone())))
                    .collect();
                for (k, v) in flags.iter() {
                    current.insert(k.clone(), v.clone());
                }
            }
            Action::SetKubeconfigCa { node, path, content, prior, .. } => {
                *prior = kubeconfigs.insert((node.clone(), path.clone()), *content);
            }
            Action::RollKubelet { node, target, prior, .. } => {
                *prior = kubelets.insert(node.clone(), target.clone());
            }
            Action::PutFiles { node, files: written, .. } => {
                for (path, content, mode) in written.iter() {
                    files.insert((node.clone(), path.clone()), (*content, *mode));
                }
            }
            Action::RemoveFiles { node, paths, prior } => {
                *prior = paths
                    .iter()
                    .filter_map(|p| {
                        files.get(&(node.clone(), p.clone())).map(|(c, m)| (p.clone(), *c, *m))
                    })
                    .collect();
            }
            _ => {}
        }
    }
}

/// What a rollback must do once the controller-manager's root CA is set back (republish
/// `kube-root-ca.crt`, restart the pods that read it) and once the apiservers' request-header CA
/// is (restart the extension servers that read it): attached to the first such step of each
/// phase, which a rollback undoes last.
pub(super) fn after_undo(plan: &mut Plan<Action>, facts: &ClusterFacts, rotation_id: &str) {
    let mut seen = BTreeSet::new();
    for item in &mut plan.items {
        let engine::Item::Step(step) = item else { continue };
        let phase = step.phase.to_string();
        let Action::SetFlags { component, flags, after_undo, .. } = &mut step.action else {
            continue;
        };
        if component == CONTROLLER_MANAGER && flags.contains_key("--root-ca-file") {
            if !seen.insert((phase.clone(), "root-ca")) {
                continue;
            }
            let before = if phase == Phase::Finalize.name() {
                Content::Bundle(CaKind::Cluster)
            } else {
                Content::OldCert(CaKind::Cluster)
            };
            *after_undo = vec![
                Action::WaitRootCa { content: before },
                Action::RollWorkloads {
                    only: Vec::new(),
                    round: format!("{rotation_id}-undo-{phase}"),
                },
            ];
        } else if component == APISERVER && flags.contains_key("--requestheader-client-ca-file") {
            if !seen.insert((phase.clone(), "requestheader"))
                || facts.extension_workloads.is_empty()
            {
                continue;
            }
            *after_undo = vec![Action::RollWorkloads {
                only: facts.extension_workloads.clone(),
                round: format!("{rotation_id}-undo-{phase}-extensions"),
            }];
        }
    }
}
