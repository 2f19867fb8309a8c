//! The engine's runner ([`engine::Runner`]): the context every action runs in (connected nodes,
//! the blob store, the API, what the journal recorded so far, each node's layout), and the
//! contents it resolves from the journal.
//!
//! What each action does is in its family's module; this file only holds what all of them
//! share: where to read and write (a node, or the operator's machine), the outcomes of earlier
//! steps, and the bytes a [`Content`] stands for.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use engine::{Compensation, Runner, StepError, StepId, StepStatus, Summary};
use journal::{BlobStore, Hash};

use super::{Action, CaKind, Content, Error, new_ca_step};
use crate::api::ClusterApi;
use crate::inventory::Inventory;
use crate::kubeadm::{outcome, step};
use crate::node::{LocalNode, Node};
use crate::pki::{self, Ca, Cert, SecretKey};
use crate::trust::Topology;

/// Outcomes of finished steps, shared with the engine's event observer.
pub type Known = Rc<RefCell<BTreeMap<StepId, Summary>>>;

/// The rotation's runner.
pub struct Rotation<N: Node> {
    pub(super) inventory: Inventory,
    pub(super) nodes: BTreeMap<String, N>,
    pub(super) operator: LocalNode,
    pub(super) blobs: BlobStore,
    pub(super) api: Option<ClusterApi>,
    pub(super) known: Known,
    pub(super) ranks: BTreeMap<StepId, u32>,
    /// A client certificate of the new cluster CA, made once, to observe that kubelets trust it.
    pub(super) probe_identity: RefCell<Option<crate::probe::ClientIdentity>>,
    /// API clients derived from `api`: [trusting the new CA too, and also authenticating with a
    /// certificate of the new CA]; made once each.
    pub(super) api_variants: RefCell<[Option<ClusterApi>; 2]>,
    /// Where each node's components load their inputs from and listen, as discovered at `init`
    /// (kubeadm's layout for a node it does not know).
    pub(super) topology: Topology,
    /// Bound of every wait for a component to go down or come back.
    pub wait: Duration,
}

impl<N: Node> std::fmt::Debug for Rotation<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rotation").field("nodes", &self.nodes.keys()).finish_non_exhaustive()
    }
}

/// A file's bytes as text (PEM, YAML), whatever they are.
pub(super) fn text(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).into_owned()
}

impl<N: Node> Rotation<N> {
    /// A runner over connected `nodes`, the state directory's blob store, and the API (absent in
    /// tests that do not touch it). `state` is the journal folded so far.
    pub fn new(
        inventory: Inventory,
        nodes: BTreeMap<String, N>,
        blobs: BlobStore,
        api: Option<ClusterApi>,
        state: &engine::State<Action>,
    ) -> Rotation<N> {
        let wait = Duration::from_secs(inventory.rotation.restart_timeout_secs);
        let rotation = Rotation {
            inventory,
            nodes,
            operator: LocalNode::new("operator", std::path::Path::new("/")),
            blobs,
            api,
            known: Rc::new(RefCell::new(BTreeMap::new())),
            ranks: BTreeMap::new(),
            probe_identity: RefCell::new(None),
            api_variants: RefCell::new([None, None]),
            topology: Topology::default(),
            wait,
        };
        let mut rotation = rotation;
        rotation.learn(state);
        rotation
    }

    /// The runner acting on the layout of `topology` (recorded at `init`): the apiservers'
    /// manifests in each node's static pod directory, each component's discovered port, the
    /// kubelet's client certificate a rollback restores. Without it every node is taken to be
    /// laid out as kubeadm's defaults say.
    pub fn with_topology(mut self, topology: Topology) -> Rotation<N> {
        self.topology = topology;
        self
    }

    /// Outcomes of finished steps; the caller's event observer keeps it current with [`learn`].
    ///
    /// [`learn`]: Rotation::learn
    pub fn known(&self) -> Known {
        self.known.clone()
    }

    /// Takes in what the journal says now (outcomes, and the plan's order for rollback ranks).
    pub fn learn(&mut self, state: &engine::State<Action>) {
        learn_into(&self.known, state);
        if let Some(plan) = &state.plan {
            self.ranks =
                plan.steps().enumerate().map(|(i, s)| (s.id.clone(), i as u32 + 1)).collect();
        }
    }

    pub(super) fn node(&self, name: &str) -> Result<&N, Error> {
        self.nodes.get(name).ok_or_else(|| Error::terminal(format!("node {name} is not connected")))
    }

    pub(super) fn outcome(&self, step: &str) -> Result<Summary, Error> {
        self.known.borrow().get(&StepId::from(step)).cloned().ok_or_else(|| {
            Error::terminal(format!("step {step} has no recorded outcome; it must run first"))
        })
    }

    pub(super) fn blob(&self, hex: &str) -> Result<Vec<u8>, Error> {
        let digest =
            Hash::from_hex(hex).ok_or_else(|| Error::terminal(format!("bad digest {hex}")))?;
        Ok(self.blobs.get(&digest)?)
    }

    pub(super) fn old_cert(&self, kind: CaKind) -> Result<String, Error> {
        let o = self.outcome(new_ca_step(kind))?;
        Ok(text(self.blob(o.0.get(outcome::OLD_CERT).map(String::as_str).unwrap_or_default())?))
    }

    pub(super) fn new_ca(&self, kind: CaKind) -> Result<Ca, Error> {
        let o = self.outcome(new_ca_step(kind))?;
        let get = |k: &str| o.0.get(k).cloned().unwrap_or_default();
        let cert = Cert::from_pem(&text(self.blob(&get(outcome::CERT))?), "new CA")?;
        let key = SecretKey::from_pem(&text(self.blob(&get(outcome::KEY))?), "new CA key")?;
        Ok(Ca::load(cert, key)?)
    }

    /// The bytes `content` stands for.
    pub(super) fn resolve(&self, content: Content) -> Result<Vec<u8>, Error> {
        Ok(match content {
            Content::NewCert(k) => self.new_ca(k)?.cert_pem().into_bytes(),
            Content::NewKey(k) => self.new_ca(k)?.key_pem().into_bytes(),
            Content::OldCert(k) => self.old_cert(k)?.into_bytes(),
            Content::Bundle(k) => {
                let old = self.old_cert(k)?;
                let new = self.new_ca(k)?.cert_pem();
                pki::bundle(&[&old, &new])?.into_bytes()
            }
        })
    }

    /// The node (or the operator's machine) an action on `node` goes to.
    pub(super) async fn read_on(
        &self,
        node: Option<&str>,
        path: &str,
    ) -> Result<Option<Vec<u8>>, Error> {
        Ok(match node {
            Some(n) => self.node(n)?.read(path).await?,
            None => self.operator.read(path).await?,
        })
    }

    pub(super) async fn read_many_on(
        &self,
        node: Option<&str>,
        paths: &[&str],
    ) -> Result<Vec<Option<Vec<u8>>>, Error> {
        Ok(match node {
            Some(n) => self.node(n)?.read_many(paths).await?,
            None => self.operator.read_many(paths).await?,
        })
    }

    pub(super) async fn write_on(
        &self,
        node: Option<&str>,
        path: &str,
        data: &[u8],
        mode: u32,
    ) -> Result<(), Error> {
        match node {
            Some(n) => self.node(n)?.write(path, data, mode).await?,
            None => self.operator.write(path, data, mode).await?,
        }
        Ok(())
    }

    pub(super) async fn remove_on(&self, node: Option<&str>, path: &str) -> Result<(), Error> {
        match node {
            Some(n) => self.node(n)?.remove(path).await?,
            None => self.operator.remove(path).await?,
        }
        Ok(())
    }

    pub(super) async fn must_read(&self, node: Option<&str>, path: &str) -> Result<String, Error> {
        self.read_on(node, path).await?.map(text).ok_or_else(|| {
            Error::terminal(format!("{}:{path} does not exist", node.unwrap_or("operator")))
        })
    }

    /// The original of `path` on `node`, from its backup: `Some(bytes)`, or `None` when it did
    /// not exist before the rotation.
    pub(super) fn original(
        &self,
        node: Option<&str>,
        path: &str,
    ) -> Result<Option<Vec<u8>>, Error> {
        let step = step::backup(node);
        let summary = self.outcome(&step)?;
        match summary.0.get(path).map(String::as_str) {
            Some(outcome::ABSENT) => Ok(None),
            Some(hex) => Ok(Some(self.blob(hex)?)),
            None => Err(Error::terminal(format!("{step} did not back up {path}"))),
        }
    }
}

impl<N: Node> Runner<Action> for Rotation<N> {
    async fn check(&self, _step: &StepId, action: &Action) -> Result<Option<Summary>, StepError> {
        Ok(self.check_action(action).await?)
    }

    async fn apply(&self, _step: &StepId, action: &Action) -> Result<Summary, StepError> {
        Ok(self.apply_action(action).await?)
    }

    fn compensate(
        &self,
        step: &StepId,
        action: &Action,
        _outcome: Option<&Summary>,
    ) -> Vec<Compensation<Action>> {
        action.compensations(self.ranks.get(step).copied().unwrap_or(0), &self.topology)
    }
}

/// Copies every succeeded step's outcome from `state` into `known`.
pub fn learn_into(known: &Known, state: &engine::State<Action>) {
    let mut k = known.borrow_mut();
    for (id, s) in &state.steps {
        if let StepStatus::Succeeded { summary, .. } = &s.status {
            k.insert(id.clone(), summary.clone());
        }
    }
}

/// A runner for commands that only read the journal or record an approval: it refuses to act,
/// and has nothing to undo (it is never used for `run` or `rollback`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Idle;

impl Runner<Action> for Idle {
    async fn check(&self, step: &StepId, _: &Action) -> Result<Option<Summary>, StepError> {
        Err(StepError::terminal(format!("step {step}: this command does not carry out steps")))
    }

    async fn apply(&self, step: &StepId, _: &Action) -> Result<Summary, StepError> {
        Err(StepError::terminal(format!("step {step}: this command does not carry out steps")))
    }

    fn compensate(&self, _: &StepId, _: &Action, _: Option<&Summary>) -> Vec<Compensation<Action>> {
        Vec::new()
    }
}
