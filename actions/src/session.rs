//! A rotation's state directory and the orchestration around it: what `init` does before a plan
//! is recorded, how `run` and `rollback` get their runner, the audit record's rendering, and the
//! live check of `verify --inventory`.
//!
//! The state directory holds the journal (and its blobs), the format version, the inventory and
//! topology as resolved at `init`, the SSH control sockets and the last live status. Only this
//! module names those files; the command-line interface renders what these functions return and
//! maps [`SessionError::is_usage`] to its exit code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use engine::{Engine, Event, State, SystemClock};
use journal::{Actor, Journal};

use crate::action::{Action, Idle, Known, Rotation};
use crate::api::{ApiError, ClusterApi};
use crate::discovery::DiscoveryError;
use crate::inventory::Inventory;
use crate::node::{NodeError, SshNode, SshOptions};
use crate::plan::{self, ClusterFacts, ProcedureError};
use crate::trust::Topology;

/// The journal of a rotation.
pub type EventLog = Journal<Event<Action>>;

/// The inventory as resolved at `init`, kept beside the journal for `run`.
const INVENTORY_FILE: &str = "inventory.json";
/// The trust model's view of the cluster as discovered at `init`, for `plan`'s check and the
/// runner's paths and ports.
const TOPOLOGY_FILE: &str = "topology.json";
/// The state directory's layout version this kubeca writes and reads.
const FORMAT: u32 = 1;
/// Where that version is recorded.
const FORMAT_FILE: &str = "kubeca-format";
/// The last status a running kubeca wrote, for `status` while it holds the lock.
const LIVE_STATUS_FILE: &str = "status.json";

/// Why a command on a state directory could not do what was asked. Each names the file, node
/// or step and, where the operator can act, what to do.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The operator's input or the state directory refuses the command (a usage or
    /// configuration error: nothing was changed).
    #[error("{0}")]
    Refused(String),
    /// The state directory could not be opened.
    #[error("opening the state directory {}", dir.display())]
    Open {
        /// The state directory.
        dir: PathBuf,
        /// Why.
        #[source]
        source: journal::Error,
    },
    /// A file of the state directory could not be read or written.
    #[error("{}: {what}: {detail}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// What went wrong.
        detail: String,
    },
    /// The journal refused an operation.
    #[error(transparent)]
    Journal(#[from] journal::Error),
    /// The engine refused an operation.
    #[error(transparent)]
    Engine(#[from] engine::Error),
    /// A node could not be reached or a command on it failed.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// Discovery could not read what a node's components load.
    #[error(transparent)]
    Discovery(#[from] DiscoveryError),
    /// The cluster API could not be reached or refused a request.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// No plan could be built for the cluster as discovered.
    #[error(transparent)]
    Procedure(#[from] ProcedureError),
}

impl SessionError {
    /// Whether the error is the operator's input or the directory's state refusing the command
    /// (exit 2 at the command line) rather than a failure (exit 1).
    pub fn is_usage(&self) -> bool {
        matches!(self, SessionError::Refused(_))
    }

    /// The live status a running kubeca left, when the directory could not be opened because
    /// that kubeca holds its lock: (who holds it, what it wrote).
    pub fn running(&self, dir: &Path) -> Option<(String, String)> {
        match self {
            SessionError::Open { source: journal::Error::Locked { owner, .. }, .. } => {
                let text = std::fs::read_to_string(dir.join(LIVE_STATUS_FILE)).ok()?;
                Some((owner.to_string(), text))
            }
            _ => None,
        }
    }
}

fn file_error(path: &Path, what: &'static str) -> impl FnOnce(String) -> SessionError {
    let path = path.to_owned();
    move |detail| SessionError::File { path, what, detail }
}

/// Who records: this kubeca, its version, user, host and pid.
pub fn actor() -> Actor {
    Actor::current(format!("kubeca {}", env!("CARGO_PKG_VERSION")))
}

/// An open state directory: its journal, locked, and the files beside it.
pub struct StateDir {
    dir: PathBuf,
    journal: EventLog,
}

impl std::fmt::Debug for StateDir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateDir").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl StateDir {
    /// Opens (creating when absent) the state directory `dir` and takes its lock. A directory
    /// written by a newer kubeca is refused, naming the version to use.
    pub fn open(dir: &Path) -> Result<StateDir, SessionError> {
        let format_file = dir.join(FORMAT_FILE);
        match std::fs::read_to_string(&format_file) {
            Ok(text) => {
                let found: u32 = text.trim().parse().unwrap_or(u32::MAX);
                if found > FORMAT {
                    return Err(SessionError::Refused(format!(
                        "{}: this state directory was written by a newer kubeca (format {found}; \
                         this kubeca {} reads format {FORMAT}): use that newer kubeca",
                        format_file.display(),
                        env!("CARGO_PKG_VERSION")
                    )));
                }
            }
            Err(_) if dir.join(journal::DB_FILE).exists() => {}
            Err(_) => {
                journal::create_private_dir(dir)?;
                write_private(&format_file, format!("{FORMAT}\n").as_bytes())?;
            }
        }
        let journal = Journal::open(dir, actor())
            .map_err(|source| SessionError::Open { dir: dir.to_owned(), source })?;
        Ok(StateDir { dir: dir.to_owned(), journal })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The journal.
    pub fn journal(&self) -> &EventLog {
        &self.journal
    }

    /// The rotation's state: every record folded.
    pub fn state(&self) -> Result<State<Action>, SessionError> {
        let events: Vec<Event<Action>> =
            self.journal.replay()?.into_iter().map(|r| r.event).collect();
        Ok(State::fold(&events))
    }

    /// The inventory recorded at `init`.
    pub fn inventory(&self) -> Result<Inventory, SessionError> {
        let path = self.dir.join(INVENTORY_FILE);
        let text = std::fs::read_to_string(&path).map_err(|_| SessionError::File {
            path: path.clone(),
            what: "no inventory recorded",
            detail: format!(
                "start with `kubeca --state-dir {} init --inventory FILE`",
                self.dir.display()
            ),
        })?;
        serde_json::from_str(&text)
            .map_err(|e| file_error(&path, "unreadable inventory record")(e.to_string()))
    }

    /// The topology recorded at `init` (for `plan`'s check).
    pub fn topology(&self) -> Result<Topology, SessionError> {
        let path = self.dir.join(TOPOLOGY_FILE);
        let bytes =
            std::fs::read(&path).map_err(|e| file_error(&path, "reading")(e.to_string()))?;
        serde_json::from_slice(&bytes).map_err(|e| file_error(&path, "unreadable")(e.to_string()))
    }

    /// The topology whose layouts the runner acts on; a state directory written before kubeca
    /// recorded one has none, and its nodes are taken to be laid out as kubeadm's.
    pub fn topology_or_kubeadm(&self) -> Result<Topology, SessionError> {
        let path = self.dir.join(TOPOLOGY_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| file_error(&path, "unreadable topology record")(e.to_string())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Topology::default()),
            Err(e) => Err(file_error(&path, "reading")(e.to_string())),
        }
    }

    /// What records the status a running kubeca shows `status` while it holds the lock (best
    /// effort: a status that could not be written is only stale). Kept apart from the directory
    /// so that it outlives [`StateDir::rotation_engine`], which takes the journal.
    pub fn live_status_writer(&self) -> impl Fn(&serde_json::Value) + 'static {
        let path = self.dir.join(LIVE_STATUS_FILE);
        move |status| {
            let _ = write_private(&path, status.to_string().as_bytes());
        }
    }

    /// The engine with a runner that acts on nothing (for approvals).
    pub fn idle_engine(self) -> Result<Engine<Action, EventLog, Idle, SystemClock>, SessionError> {
        Ok(Engine::open(self.journal, Idle, SystemClock)?)
    }

    /// The engine for `run` or `rollback`: the recorded inventory's nodes connected, the cluster
    /// API, the runner over the recorded topology. `rollback` is refused once the rotation has
    /// completed (the old CA is gone). Returns the engine and what its runner learns from the
    /// journal, to be kept current as events are recorded
    /// ([`crate::action::learn_into`]).
    pub async fn rotation_engine(
        self,
        rollback: bool,
    ) -> Result<(Engine<Action, EventLog, Rotation<SshNode>, SystemClock>, Known), SessionError>
    {
        let state = self.state()?;
        if state.plan.is_none() {
            return Err(SessionError::File {
                path: self.dir.join(journal::DB_FILE),
                what: "no rotation recorded",
                detail: "run `init` first".into(),
            });
        }
        if rollback && let Some(at) = state.completed {
            return Err(SessionError::Refused(format!(
                "the rotation completed at {at}: the old CA is gone from the cluster, so there is \
                 nothing to roll back to"
            )));
        }
        let inventory = self.inventory()?;
        let topology = self.topology_or_kubeadm()?;
        let nodes = connect(&inventory, &self.dir).await?;
        let api = ClusterApi::from_kubeconfig(&inventory.cluster.kubeconfig).await?;
        let blobs = self.journal.blobs().clone();
        let runner =
            Rotation::new(inventory, nodes, blobs, Some(api), &state).with_topology(topology);
        let known = runner.known();
        Ok((Engine::open(self.journal, runner, SystemClock)?, known))
    }
}

/// What `init` recorded.
#[derive(Debug, Clone)]
pub struct Initialized {
    /// Steps in the recorded plan.
    pub steps: usize,
}

/// `kubeca init`: reads the inventory, connects to every node, discovers what each component
/// loads, builds the plan and checks it, and refuses before recording anything when the plan's
/// old CAs are not what they must be or the inventory's nodes are not the cluster's. Then records
/// the inventory, the topology and the plan.
pub async fn init(dir: &Path, inventory_file: &Path) -> Result<Initialized, SessionError> {
    let inventory =
        Inventory::load(inventory_file).map_err(|e| SessionError::Refused(e.to_string()))?;
    let state_dir = StateDir::open(dir)?;
    if state_dir.state()?.plan.is_some() {
        return Err(SessionError::Refused(format!(
            "{} already holds a rotation; use `kubeca --state-dir {} status`, or another \
             directory for a new one",
            dir.display(),
            dir.display()
        )));
    }
    let nodes = connect(&inventory, dir).await?;
    let mut facts = BTreeMap::new();
    for (i, (name, node)) in nodes.iter().enumerate() {
        tracing::info!(node = %name, "discovering what each component loads ({} of {})", i + 1, nodes.len());
        facts.insert(name.clone(), crate::discovery::discover(node).await?);
    }
    if let Some(caution) = inventory.single_apiserver_caution() {
        tracing::warn!("{}", caution.to_uppercase());
    }
    let api = ClusterApi::from_kubeconfig(&inventory.cluster.kubeconfig).await?;
    inventory
        .check_nodes_against(inventory_file, &api.node_names().await?)
        .map_err(|e| SessionError::Refused(e.to_string()))?;
    let cluster = ClusterFacts {
        nodes: facts,
        extension_workloads: api.extension_workloads().await?,
        namespaces: api.namespaces().await?,
    };
    let id = format!("{}", jiff::Timestamp::now().as_second());
    let plan = plan::build(&inventory, &cluster, &id)?;
    // Refuse before anything is recorded: an old CA whose key is not its certificate's, or that
    // has expired, checked where the plan's own preflight will look for them.
    for step in plan.steps() {
        if let Action::Preflight { node, cas } = &step.action
            && let Some(n) = nodes.get(node)
        {
            crate::action::check_old_cas(n, cas, jiff::Timestamp::now())
                .await
                .map_err(SessionError::Refused)?;
        }
    }
    for node in nodes.into_values() {
        node.close().await;
    }
    let topology = plan::topology(&inventory, &cluster);
    let topology_file = dir.join(TOPOLOGY_FILE);
    let record = serde_json::to_vec_pretty(&topology)
        .map_err(|e| file_error(&topology_file, "encoding")(e.to_string()))?;
    write_private(&topology_file, &record)?;
    let inventory_record = dir.join(INVENTORY_FILE);
    let record = serde_json::to_vec_pretty(&inventory)
        .map_err(|e| file_error(&inventory_record, "encoding")(e.to_string()))?;
    write_private(&inventory_record, &record)?;
    let steps = plan.steps().count();
    let engine = Engine::open(state_dir.journal, Idle, SystemClock)?;
    engine.start(plan)?;
    Ok(Initialized { steps })
}

/// Writes `data` to `path` with mode 0600, through a temporary file renamed into place.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), SessionError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let err = |e: std::io::Error| file_error(path, "writing")(e.to_string());
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(err)?;
    f.write_all(data).map_err(err)?;
    f.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(())
}

/// Where the SSH control sockets live: `DIR/ssh`, unless that path is too long for a Unix
/// socket (108 bytes, of which ssh and its multiplexer take about 65), then a directory of this
/// user's in /tmp named after the state directory, made 0700 and checked to be ours.
pub fn ssh_control_dir(dir: &Path) -> Result<PathBuf, SessionError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    let preferred = dir.join("ssh");
    if preferred.as_os_str().len() <= 40 {
        journal::create_private_dir(&preferred)?;
        return Ok(preferred);
    }
    let abs =
        std::fs::canonicalize(dir).map_err(|e| file_error(dir, "cannot resolve")(e.to_string()))?;
    let owner = std::fs::metadata(&abs).map_err(|e| file_error(&abs, "stat")(e.to_string()))?.uid();
    let digest = journal::Hash::of(abs.as_os_str().as_encoded_bytes()).to_hex();
    let short = PathBuf::from(format!("/tmp/kubeca-ssh-{owner}-{}", &digest[..12]));
    match std::fs::DirBuilder::new().mode(0o700).create(&short) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(file_error(&short, "creating")(e.to_string())),
    }
    // Shared /tmp: refuse a directory (or a link) someone else made there.
    let meta =
        std::fs::symlink_metadata(&short).map_err(|e| file_error(&short, "stat")(e.to_string()))?;
    if !meta.is_dir() || meta.uid() != owner || meta.permissions().mode() & 0o077 != 0 {
        return Err(SessionError::File {
            path: short,
            what: "not a private directory of this user",
            detail: format!(
                "needed for SSH control sockets because {} is too long for a socket path; \
                 remove it, or use a shorter --state-dir",
                preferred.display()
            ),
        });
    }
    Ok(short)
}

/// Connects to every node of the inventory over SSH (control sockets under `dir`).
pub async fn connect(
    inventory: &Inventory,
    dir: &Path,
) -> Result<BTreeMap<String, SshNode>, SessionError> {
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

/// Renders events for the audit export. Every event about a step also carries the step's
/// upstream procedure number, taken from the plan recorded at the start of the export, so an
/// auditor reads each line against the documentation. Deterministic given the records before
/// it, so an export verifies on its own with the same renderer.
pub fn audit_renderer() -> impl Fn(&Event<Action>) -> serde_json::Value {
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

/// One checked trust edge of `verify --inventory`: its name and whether it holds.
pub type EdgeCheck = (String, Result<(), String>);

/// `kubeca verify --inventory FILE`: does every client still trust every server? Real TLS
/// handshakes: the inventory's admin kubeconfig against each apiserver (both directions, by a
/// request), and the CA that pods (`kube-root-ca.crt`) and joining nodes (`cluster-info`) trust
/// against the certificate each apiserver presents.
pub async fn verify_live(inventory_file: &Path) -> Result<Vec<EdgeCheck>, SessionError> {
    use crate::kubeadm::port;
    use crate::pki::{self, Cert, split_pem};
    use crate::probe::{Seen, probe};
    let inventory =
        Inventory::load(inventory_file).map_err(|e| SessionError::Refused(e.to_string()))?;
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
                Seen::Up { cert, .. } => Cert::from_der(cert, &server).map_err(|e| e.to_string()),
                Seen::Down => {
                    Err(format!("{server} does not answer on {}:{}", n.address, port::APISERVER))
                }
            };
        for (client, trusted) in
            [("pods (kube-root-ca.crt)", &root_ca), ("joiners (cluster-info)", &cluster_info)]
        {
            let result = match (&presented, trusted) {
                (Err(e), _) => Err(e.clone()),
                (_, Err(e)) => Err(e.to_string()),
                (_, Ok(None)) => Err("no CA published".into()),
                (Ok(cert), Ok(Some(pem))) => split_pem(pem, client)
                    .map_err(|e| e.to_string())
                    .and_then(|cas| pki::verify_chain(cert, &cas, now).map_err(|e| e.to_string())),
            };
            out.push((format!("{client} -> {server}"), result));
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
