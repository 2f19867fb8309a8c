//! The rotation's actions: what each one is ([`Action`], as plans and journals record it) and
//! what it does, each action's behaviour in one place, grouped by what it acts on.
//!
//! Every action has four sides, and the module of its family holds all four together, one
//! inline module per action (`files::put_files`, `kubelet::roll_kubelet`, ...):
//! - `apply`: carry it out (idempotent: applying a half-done action finishes it);
//! - `check`: after a crash, whether its postcondition already holds (absent where repeating
//!   the action is harmless: restarts, waits, backups);
//! - `undo`: the compensations that take a rollback back exactly one step;
//! - `effects`: what it does in the trust model ([`crate::trust`]), which the plan's checks
//!   replay.
//!
//! The families: `files` (backup, CA material, removal, restore), `static_pod` (flags and
//! restarts of control-plane static pods), `kubeconfig`, `kubelet`, `cluster_api` (objects and
//! workloads through the Kubernetes API, and which client to use), `ca` (the old CAs'
//! preflight, the new CAs, re-issued certificates, the served certificates' check). This
//! file dispatches each side with one `match` that names every action (no `_` arm), so a new
//! action is a compile error until each side says what it does.
//!
//! The runner ([`Rotation`], in `runner`) is the context every `apply` and `check` runs in:
//! the nodes, the blob store, the API, and the outcomes recorded so far, from which contents
//! are resolved (the old CA from the `NewCa` step's outcome, which reads it before anything
//! changed, the new CA from the blob store, the original of every file from its node's
//! `Backup` step). Keys travel only in memory and on stdin to the node. Failures are
//! classified once, in `error` ([`Error`]).

use std::collections::BTreeMap;

use engine::{Compensation, FollowUp, Summary};
use serde::{Deserialize, Serialize};

use crate::node::Node;
use crate::trust::{self, Effect, Material, Topology};

mod ca;
mod client_certs;
mod cluster_api;
mod error;
mod files;
mod kubeconfig;
mod kubelet;
mod runner;
mod static_pod;
#[cfg(test)]
mod testing;

pub use ca::{check_old_cas, new_ca_step};
pub use error::Error;
pub use runner::{Idle, Known, Rotation, learn_into};

/// Which CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum CaKind {
    /// The cluster CA (`ca.crt`).
    Cluster,
    /// The front-proxy CA (`front-proxy-ca.crt`).
    FrontProxy,
}

/// What a file should hold; resolved when the step runs from what the journal recorded (the
/// old CA from the backups, the new one from the `prepare` outcome).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Content {
    /// The new CA's certificate.
    NewCert(CaKind),
    /// The new CA's private key (mode 0600).
    NewKey(CaKind),
    /// Old and new CA certificates, old first.
    Bundle(CaKind),
    /// The old CA's certificate, exactly as read before anything changed (rollback).
    OldCert(CaKind),
}

impl Content {
    /// What the trust model sees in a file holding this content (`None`: a key).
    pub(crate) fn material(self) -> Option<Material> {
        let (old, new) = names(match self {
            Content::NewCert(k) | Content::NewKey(k) | Content::Bundle(k) | Content::OldCert(k) => {
                k
            }
        });
        match self {
            Content::NewCert(_) => Some(Material::bundle([new])),
            Content::Bundle(_) => Some(Material::bundle([old, new])),
            Content::OldCert(_) => Some(Material::bundle([old])),
            Content::NewKey(_) => None,
        }
    }
}

/// The trust model's names of the old and the new CA of `kind`.
pub(crate) fn names(kind: CaKind) -> (&'static str, &'static str) {
    match kind {
        CaKind::Cluster => (trust::ca::OLD, trust::ca::NEW),
        CaKind::FrontProxy => (trust::ca::FP_OLD, trust::ca::FP_NEW),
    }
}

/// What a kubelet should trust for clients, and where its config should say that is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeletTarget {
    /// `clientCAFile` to set.
    pub client_ca_file: String,
    /// `certificate-authority-data` of its kubeconfig.
    pub kubeconfig_ca: Content,
    /// Re-issue its client certificate under the new CA (keeping its key).
    pub reissue_client_cert: bool,
    /// Re-issue its serving certificate (this file) under the new CA, keeping its key: needed
    /// when the apiservers verify kubelets (`--kubelet-certificate-authority`), since finalize
    /// leaves them trusting only the new CA.
    pub reissue_serving_cert: Option<String>,
}

/// One idempotent rotation action. Node names are the inventory's; `None` is the operator's
/// machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Reachability of every node, the old CAs' keys matching their certificates, CA expiry,
    /// HA; on `node`, `cas` are the (certificate, key) files of the old CAs.
    Preflight {
        /// A control-plane node.
        node: String,
        /// (certificate, key) of the cluster CA and of the front-proxy CA.
        cas: Vec<(String, String)>,
    },
    /// Store the original of every file the rotation may change on `node` in the blob store.
    Backup {
        /// The node.
        node: String,
        /// The files.
        paths: Vec<String>,
    },
    /// Generate (or import) a new CA; its key goes to the blob store only. The old CA's
    /// certificate is read from `node` (for bundles and `same-as-old`).
    NewCa {
        /// Which CA.
        ca: CaKind,
        /// A control-plane node.
        node: String,
        /// The old CA certificate there.
        old_cert: String,
    },
    /// Write files with the given content (atomic; new files get `mode`).
    PutFiles {
        /// The node.
        node: String,
        /// (path, content, mode).
        files: Vec<(String, Content, u32)>,
        /// Components that load some of these files (a rollback restarts them after restoring).
        loaded_by: Vec<String>,
    },
    /// Set flags of a static pod and wait until it runs with them (the kubelet restarts a static
    /// pod when its manifest changes).
    SetFlags {
        /// The node.
        node: String,
        /// `kube-apiserver`, `kube-controller-manager`, `kube-scheduler`, ...
        component: String,
        /// Its manifest.
        manifest: String,
        /// flag → value.
        flags: BTreeMap<String, String>,
        /// The values these flags had before this step (a rollback sets them back).
        prior: BTreeMap<String, String>,
        /// What a rollback does after setting them back (republish, restart pods).
        after_undo: Vec<Action>,
    },
    /// Restart a static pod (manifest moved out and back) and wait until it is observed healthy
    /// with what it should now load.
    RestartStaticPod {
        /// The node.
        node: String,
        /// The component.
        component: String,
        /// Its manifest.
        manifest: String,
    },
    /// Set a kubeconfig's `certificate-authority-data`.
    SetKubeconfigCa {
        /// The node (`None`: the operator's kubeconfig).
        node: Option<String>,
        /// The kubeconfig.
        path: String,
        /// What it should trust.
        content: Content,
        /// What it trusted before this step, when an earlier step set it (a rollback sets it
        /// back); `None`: the original, restored from the backup.
        prior: Option<Content>,
        /// The static pod that loads it, as (component, manifest), restarted after a rollback
        /// restores it.
        loaded_by: Option<(String, String)>,
    },
    /// Re-issue a kubeconfig's embedded client certificate under the new cluster CA.
    ReissueKubeconfigClient {
        /// The node (`None`: the operator's kubeconfig).
        node: Option<String>,
        /// The kubeconfig.
        path: String,
        /// The static pod that loads it, as (component, manifest).
        loaded_by: Option<(String, String)>,
    },
    /// Re-issue a certificate file under a new CA, keeping its key, subject, SANs and usages.
    ReissueCert {
        /// The node.
        node: String,
        /// The certificate file.
        path: String,
        /// Under which new CA.
        ca: CaKind,
        /// The manifest of the static pod that loads it (restarted after a rollback restores it).
        manifest: String,
    },
    /// Roll one node's kubelet: config, kubeconfig, client certificate, restart, wait Ready and
    /// observed trusting what it should.
    RollKubelet {
        /// The node.
        node: String,
        /// Its config file.
        config: String,
        /// Its kubeconfig.
        kubeconfig: String,
        /// What it should load.
        target: KubeletTarget,
        /// What an earlier step made it load (a rollback goes back to that); `None`: the
        /// original files, restored from the backup.
        prior: Option<KubeletTarget>,
    },
    /// Wait until `kube-root-ca.crt` in every namespace (and every legacy token Secret's
    /// `ca.crt`) holds `content`.
    WaitRootCa {
        /// What they should hold.
        content: Content,
    },
    /// Restart Deployments, DaemonSets and StatefulSets (pod template annotation
    /// `kubeca.io/rotation`), respecting PDBs, and wait for each rollout.
    RollWorkloads {
        /// Only these (namespace/kind/name); empty means all.
        only: Vec<String>,
        /// The annotation value (rotation id and round).
        round: String,
    },
    /// Set `kube-public/cluster-info`'s CA data.
    SetClusterInfo {
        /// What it should hold.
        content: Content,
        /// What it held before this step (a rollback puts that back).
        prior: Content,
    },
    /// Replace the CAs of `kube-system/extension-apiserver-authentication` (which every
    /// apiserver merges its CAs into, never removing one) and wait until the apiservers'
    /// republishing keeps them so.
    SetAuthenticationCas {
        /// `client-ca-file`.
        client_ca: Content,
        /// `requestheader-client-ca-file`.
        requestheader_ca: Content,
        /// What they held before this step (a rollback puts that back).
        prior: (Content, Content),
    },
    /// Print the new `--discovery-token-ca-cert-hash`.
    PrintDiscoveryHash,
    /// Scan control-plane, kubelet and kube-proxy logs for TLS errors since the switch.
    CheckLogs,
    /// Check every edge of the trust graph with real TLS handshakes.
    CheckEdges,
    /// List pods started before the switch (they hold the old CA in memory).
    ListStalePods,
    /// The finalize gate's check: no kubelet's current client certificate and no certificate
    /// approved since the rotation began is of the old CA.
    CheckClientCerts,
    /// Remove files the rotation no longer needs (bundles, copies).
    RemoveFiles {
        /// The node.
        node: String,
        /// The files.
        paths: Vec<String>,
        /// What they held (a rollback writes them again): (path, content, mode).
        prior: Vec<(String, Content, u32)>,
    },
    /// Rollback: put files back as the backup holds them (or remove those that did not exist).
    RestoreFiles {
        /// The node (`None`: the operator's machine).
        node: Option<String>,
        /// The files.
        paths: Vec<String>,
    },
    /// Rollback: restart a node's kubelet and wait until it is Ready.
    RestartKubelet {
        /// The node.
        node: String,
    },
}

impl Action {
    /// The node the action works on, if one.
    pub fn node(&self) -> Option<&str> {
        match self {
            Action::Backup { node, .. }
            | Action::NewCa { node, .. }
            | Action::PutFiles { node, .. }
            | Action::SetFlags { node, .. }
            | Action::RestartStaticPod { node, .. }
            | Action::ReissueCert { node, .. }
            | Action::RollKubelet { node, .. }
            | Action::RemoveFiles { node, .. }
            | Action::RestartKubelet { node } => Some(node),
            Action::SetKubeconfigCa { node, .. }
            | Action::ReissueKubeconfigClient { node, .. }
            | Action::RestoreFiles { node, .. } => node.as_deref(),
            _ => None,
        }
    }
}

/// Steps of the same kind take about as long: the engine keys its expected durations by kind,
/// for forward steps and rollback steps alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// The preflight checks.
    Preflight,
    /// A node's backup.
    Backup,
    /// Making a new CA.
    NewCa,
    /// Writing CA material to a node.
    Distribute,
    /// A static pod's flags or restart (not the apiserver's).
    StaticPod,
    /// A change that restarts an apiserver.
    ApiserverRestart,
    /// Waiting for `kube-root-ca.crt`.
    WaitRootCa,
    /// Restarting workloads.
    RollWorkloads,
    /// A kubeconfig's CA or client certificate.
    Kubeconfig,
    /// An object set through the API, or a value read from the new CA.
    Api,
    /// A kubelet's roll or restart.
    Kubelet,
    /// A certificate re-issued under a new CA.
    Reissue,
    /// A verification.
    Verify,
    /// Removing files the rotation no longer needs.
    Cleanup,
    /// A rollback's restore of what a step changed.
    Restore,
}

impl Kind {
    /// As the journal records it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Preflight => "preflight",
            Kind::Backup => "backup",
            Kind::NewCa => "new-ca",
            Kind::Distribute => "distribute",
            Kind::StaticPod => "static-pod",
            Kind::ApiserverRestart => "apiserver-restart",
            Kind::WaitRootCa => "wait-root-ca",
            Kind::RollWorkloads => "roll-workloads",
            Kind::Kubeconfig => "kubeconfig",
            Kind::Api => "api",
            Kind::Kubelet => crate::kubeadm::component::KUBELET,
            Kind::Reissue => "reissue",
            Kind::Verify => "verify",
            Kind::Cleanup => "cleanup",
            Kind::Restore => "restore",
        }
    }
}

/// A compensation at `rank` (the undone step's place in the plan: a rollback undoes the latest
/// first) that restores what the step changed, with the restart that makes it take effect.
fn compensation(
    action: Action,
    rank: u32,
    follow_up: Option<FollowUp<Action>>,
) -> Compensation<Action> {
    Compensation { action, kind: Kind::Restore.as_str().into(), rank, follow_up }
}

/// The outcome of a step whose postcondition was found to hold after a crash.
fn recovered() -> Summary {
    Summary::new().with("recovered", "postcondition held")
}

impl Action {
    /// The trust effects of the action, in the model of [`crate::trust`].
    pub fn effects(&self, topology: &Topology) -> Vec<Effect> {
        match self {
            // Reads and checks, a CA made in the blob store, removals of files nothing loads
            // any more: nothing the model sees changes.
            Action::Preflight { .. }
            | Action::Backup { .. }
            | Action::NewCa { .. }
            | Action::PrintDiscoveryHash
            | Action::CheckLogs
            | Action::CheckEdges
            | Action::ListStalePods
            | Action::CheckClientCerts
            | Action::RemoveFiles { .. } => Vec::new(),
            // What a restore brings back depends on the world before the rotation:
            // [`Action::rollback_effects`].
            Action::RestoreFiles { .. } => Vec::new(),
            Action::PutFiles { node, files, .. } => files::put_files::effects(node, files),
            Action::SetFlags { node, component, flags, .. } => {
                static_pod::set_flags::effects(node, component, flags)
            }
            Action::RestartStaticPod { node, component, .. } => {
                static_pod::restart_static_pod::effects(node, component)
            }
            Action::SetKubeconfigCa { node, path, content, .. } => {
                kubeconfig::set_kubeconfig_ca::effects(node.as_deref(), path, *content)
            }
            Action::ReissueKubeconfigClient { node, path, .. } => {
                kubeconfig::reissue_kubeconfig_client::effects(node.as_deref(), path)
            }
            Action::ReissueCert { node, path, ca, .. } => {
                ca::reissue_cert::effects(node, path, *ca)
            }
            Action::RollKubelet { node, kubeconfig, target, .. } => {
                kubelet::roll_kubelet::effects(node, kubeconfig, target)
            }
            Action::RestartKubelet { node } => kubelet::restart_kubelet::effects(node),
            Action::WaitRootCa { .. } => cluster_api::wait_root_ca::effects(topology),
            Action::RollWorkloads { only, .. } => {
                cluster_api::roll_workloads::effects(only, topology)
            }
            Action::SetClusterInfo { content, .. } => {
                cluster_api::set_cluster_info::effects(*content)
            }
            Action::SetAuthenticationCas { requestheader_ca, .. } => {
                cluster_api::set_authentication_cas::effects(*requestheader_ca)
            }
        }
    }

    /// The trust effects of the action as a step of a rollback: restores bring back what
    /// `initial` (the world before the rotation) held; everything else as forward.
    pub fn rollback_effects(&self, initial: &trust::World, topology: &Topology) -> Vec<Effect> {
        match self {
            Action::RestoreFiles { node: Some(node), paths } => {
                files::restore_files::effects(node, paths, initial, topology)
            }
            _ => self.effects(topology),
        }
    }

    /// What undoes the action, at rank `rank` (its position in the plan: a rollback undoes the
    /// latest first). Files are restored from the backups taken before the rotation, and
    /// whatever loads a restored file is restarted after it; `topology` says where the files
    /// that an action does not name are (the kubelet's client certificate).
    pub fn compensations(&self, rank: u32, topology: &Topology) -> Vec<Compensation<Action>> {
        match self {
            // Nothing to undo: they read or check, make the new CA in the blob store only, or
            // restart and wait (the undo of the step that changed what a component loads
            // restarts it again); a rollback's own restores are not undone.
            Action::Preflight { .. }
            | Action::Backup { .. }
            | Action::NewCa { .. }
            | Action::RestartStaticPod { .. }
            | Action::RestartKubelet { .. }
            | Action::WaitRootCa { .. }
            | Action::RollWorkloads { .. }
            | Action::PrintDiscoveryHash
            | Action::CheckLogs
            | Action::CheckEdges
            | Action::ListStalePods
            | Action::CheckClientCerts
            | Action::RestoreFiles { .. } => Vec::new(),
            Action::PutFiles { node, files, loaded_by } => {
                files::put_files::undo(node, files, loaded_by, rank)
            }
            Action::SetFlags { node, component, manifest, flags, prior, after_undo } => {
                static_pod::set_flags::undo(
                    node, component, manifest, flags, prior, after_undo, rank,
                )
            }
            Action::SetKubeconfigCa { node, path, content, prior, loaded_by } => {
                kubeconfig::set_kubeconfig_ca::undo(node, path, *content, *prior, loaded_by, rank)
            }
            Action::ReissueKubeconfigClient { node, path, loaded_by } => {
                kubeconfig::reissue_kubeconfig_client::undo(node, path, loaded_by, rank)
            }
            Action::ReissueCert { node, path, manifest, .. } => {
                ca::reissue_cert::undo(node, path, manifest, rank)
            }
            Action::RollKubelet { node, config, kubeconfig, target, prior } => {
                kubelet::roll_kubelet::undo(node, config, kubeconfig, target, prior, rank, topology)
            }
            Action::SetClusterInfo { content, prior } => {
                cluster_api::set_cluster_info::undo(*content, *prior, rank)
            }
            Action::SetAuthenticationCas { client_ca, requestheader_ca, prior } => {
                cluster_api::set_authentication_cas::undo(
                    (*client_ca, *requestheader_ca),
                    *prior,
                    rank,
                )
            }
            Action::RemoveFiles { node, paths, prior } => {
                files::remove_files::undo(node, paths, prior, rank)
            }
        }
    }
}

impl<N: Node> Rotation<N> {
    /// Whether the action's postcondition already holds, after a crash: `Some(summary)` when it
    /// does. `None` for the actions that are simply repeated: restarts and waits are
    /// idempotent, a CA generation is redone (nothing used the half-made CA yet), backups read
    /// the same files.
    pub(crate) async fn check_action(&self, action: &Action) -> Result<Option<Summary>, Error> {
        match action {
            // Repeated: applying them again is harmless (checks, restarts and waits; edits that
            // find the file as they leave it; a restore from the same backup).
            Action::Preflight { .. }
            | Action::Backup { .. }
            | Action::NewCa { .. }
            | Action::SetFlags { .. }
            | Action::RestartStaticPod { .. }
            | Action::RestartKubelet { .. }
            | Action::WaitRootCa { .. }
            | Action::RollWorkloads { .. }
            | Action::SetClusterInfo { .. }
            | Action::SetAuthenticationCas { .. }
            | Action::PrintDiscoveryHash
            | Action::CheckLogs
            | Action::CheckEdges
            | Action::ListStalePods
            | Action::CheckClientCerts
            | Action::RestoreFiles { .. } => Ok(None),
            Action::PutFiles { node, files, .. } => {
                files::put_files::check(self, node, files).await
            }
            Action::SetKubeconfigCa { node, path, content, .. } => {
                kubeconfig::set_kubeconfig_ca::check(self, node.as_deref(), path, *content).await
            }
            Action::ReissueKubeconfigClient { node, path, .. } => {
                kubeconfig::reissue_kubeconfig_client::check(self, node.as_deref(), path).await
            }
            Action::ReissueCert { node, path, ca, .. } => {
                ca::reissue_cert::check(self, node, path, *ca).await
            }
            Action::RollKubelet { node, config, kubeconfig, target, .. } => {
                kubelet::roll_kubelet::check(self, node, config, kubeconfig, target).await
            }
            Action::RemoveFiles { node, paths, .. } => {
                files::remove_files::check(self, node, paths).await
            }
        }
    }

    /// Carries the action out.
    pub(crate) async fn apply_action(&self, action: &Action) -> Result<Summary, Error> {
        let now = jiff::Timestamp::now();
        match action {
            Action::Preflight { node, cas } => ca::preflight::apply(self, node, cas, now).await,
            Action::Backup { node, paths } => files::backup::apply(self, node, paths).await,
            Action::NewCa { ca, node, old_cert } => {
                ca::new_ca::apply(self, *ca, node, old_cert, now).await
            }
            Action::PutFiles { node, files, .. } => {
                files::put_files::apply(self, node, files).await
            }
            Action::SetFlags { node, component, manifest, flags, .. } => {
                static_pod::set_flags::apply(self, node, component, manifest, flags).await
            }
            Action::RestartStaticPod { node, component, manifest } => {
                static_pod::restart_static_pod::apply(self, node, component, manifest).await
            }
            Action::SetKubeconfigCa { node, path, content, .. } => {
                kubeconfig::set_kubeconfig_ca::apply(self, node.as_deref(), path, *content).await
            }
            Action::ReissueKubeconfigClient { node, path, .. } => {
                kubeconfig::reissue_kubeconfig_client::apply(self, node.as_deref(), path, now).await
            }
            Action::ReissueCert { node, path, ca, .. } => {
                ca::reissue_cert::apply(self, node, path, *ca, now).await
            }
            Action::RollKubelet { node, config, kubeconfig, target, .. } => {
                kubelet::roll_kubelet::apply(self, node, config, kubeconfig, target, now).await
            }
            Action::RestartKubelet { node } => kubelet::restart_kubelet::apply(self, node).await,
            Action::WaitRootCa { content } => {
                cluster_api::wait_root_ca::apply(self, *content).await
            }
            Action::RollWorkloads { only, round } => {
                cluster_api::roll_workloads::apply(self, only, round).await
            }
            Action::SetClusterInfo { content, .. } => {
                cluster_api::set_cluster_info::apply(self, *content).await
            }
            Action::SetAuthenticationCas { client_ca, requestheader_ca, .. } => {
                cluster_api::set_authentication_cas::apply(self, *client_ca, *requestheader_ca)
                    .await
            }
            Action::PrintDiscoveryHash => ca::print_discovery_hash::apply(self),
            Action::CheckLogs => cluster_api::check_logs::apply(self).await,
            Action::CheckEdges => ca::check_edges::apply(self).await,
            Action::ListStalePods => cluster_api::list_stale_pods::apply(self).await,
            Action::CheckClientCerts => client_certs::check_client_certs::apply(self).await,
            Action::RemoveFiles { node, paths, .. } => {
                files::remove_files::apply(self, node, paths).await
            }
            Action::RestoreFiles { node, paths } => {
                files::restore_files::apply(self, node.as_deref(), paths).await
            }
        }
    }
}
