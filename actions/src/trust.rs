//! The trust graph: which component trusts which CA for which connection, as loaded at its last
//! start and as on disk, and a simulator that checks every edge after every step of a plan.
//!
//! No-outage is checked by code, not by hope: an edge (a client→server connection with a
//! purpose) holds when the server's serving certificate was signed by a CA the client trusts for
//! that server, and the client's certificate (when the server asks for one) was signed by a CA in
//! the server's client-CA store. A component uses what it *loaded at its last start*, not what
//! is on disk, so the model keeps both: [`World::write`] changes the disk, [`World::restart`]
//! makes a component load it. [`World::simulate`] applies a sequence of effects and returns the
//! first step after which any edge is broken, naming the step and the edge.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

/// A CA, e.g. `cluster/old`, `cluster/new`, `front-proxy/old`, `kubelet-self/w-1`.
pub type CaName = String;

/// What a file or object holds, as far as trust is concerned.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Material {
    /// A set of trusted CA certificates (a bundle; one CA is a bundle of one).
    Bundle(BTreeSet<CaName>),
    /// A leaf certificate, signed by `signer`.
    Cert {
        /// The CA that signed it.
        signer: CaName,
    },
    /// Nothing there (yet).
    Missing,
}

impl Material {
    /// A bundle of the given CAs.
    pub fn bundle<'a>(cas: impl IntoIterator<Item = &'a str>) -> Material {
        Material::Bundle(cas.into_iter().map(str::to_owned).collect())
    }

    /// A certificate signed by `signer`.
    pub fn cert(signer: &str) -> Material {
        Material::Cert { signer: signer.to_owned() }
    }

    fn trusts(&self, signer: &str) -> bool {
        matches!(self, Material::Bundle(cas) if cas.contains(signer))
    }

    fn signer(&self) -> Option<&str> {
        match self {
            Material::Cert { signer } => Some(signer),
            _ => None,
        }
    }
}

impl fmt::Display for Material {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Material::Bundle(cas) => {
                write!(f, "trusts {{{}}}", cas.iter().cloned().collect::<Vec<_>>().join(", "))
            }
            Material::Cert { signer } => write!(f, "cert signed by {signer}"),
            Material::Missing => f.write_str("nothing"),
        }
    }
}

/// Where material lives: a file (or one part of a kubeconfig) on a node, or an API object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Source {
    /// A PEM file on a node (`node` is `None` for the operator's machine).
    File {
        /// The node.
        node: Option<String>,
        /// Absolute path.
        path: String,
    },
    /// `certificate-authority-data` of a kubeconfig.
    KubeconfigCa {
        /// The node.
        node: Option<String>,
        /// Absolute path of the kubeconfig.
        path: String,
    },
    /// The client certificate of a kubeconfig (embedded or referenced).
    KubeconfigCert {
        /// The node.
        node: Option<String>,
        /// Absolute path of the kubeconfig.
        path: String,
    },
    /// A ConfigMap key (`kube-root-ca.crt`, `cluster-info`, `extension-apiserver-authentication`).
    ConfigMap {
        /// Namespace.
        namespace: String,
        /// Name.
        name: String,
    },
}

impl Source {
    /// A file on `node`.
    pub fn file(node: &str, path: &str) -> Source {
        Source::File { node: Some(node.to_owned()), path: path.to_owned() }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = |node: &Option<String>| node.clone().unwrap_or_else(|| "operator".into());
        match self {
            Source::File { node, path } => write!(f, "{}:{path}", at(node)),
            Source::KubeconfigCa { node, path } => {
                write!(f, "{}:{path} (certificate-authority-data)", at(node))
            }
            Source::KubeconfigCert { node, path } => {
                write!(f, "{}:{path} (client certificate)", at(node))
            }
            Source::ConfigMap { namespace, name } => write!(f, "configmap {namespace}/{name}"),
        }
    }
}

/// A running component: what it is and where.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ComponentId {
    /// `kube-apiserver`, `kubelet`, `pod/kube-system/coredns`, `admin`, ...
    pub kind: String,
    /// The node it runs on (`None` for clients outside the cluster).
    pub node: Option<String>,
}

impl ComponentId {
    /// `kind@node`.
    pub fn on(kind: &str, node: &str) -> ComponentId {
        ComponentId { kind: kind.to_owned(), node: Some(node.to_owned()) }
    }

    /// A component outside the nodes (the operator's kubeconfig, a joining node).
    pub fn outside(kind: &str) -> ComponentId {
        ComponentId { kind: kind.to_owned(), node: None }
    }
}

impl fmt::Display for ComponentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.node {
            Some(node) => write!(f, "{}@{node}", self.kind),
            None => f.write_str(&self.kind),
        }
    }
}

/// A named configuration input of a component (`serving-cert`, `client-ca`, ...).
pub type Slot = String;

/// A component and where each of its inputs comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Component {
    /// Which component.
    pub id: ComponentId,
    /// Input name → where it is read from at start.
    pub slots: BTreeMap<Slot, Source>,
    /// Reads its inputs afresh on every connection (kubectl with a kubeconfig, a node joining
    /// with `cluster-info`), so it never holds stale configuration.
    pub fresh: bool,
    /// Inputs the running component reloads when their source changes, without a restart
    /// (the apiserver's client CA and serving pair, the kubelet's `clientCAFile`, ...): a write
    /// to one takes effect at once, before any restart the plan makes afterwards.
    #[serde(default)]
    pub live: BTreeSet<Slot>,
}

impl Component {
    /// A component that loads its inputs at start only.
    pub fn new(id: ComponentId, slots: BTreeMap<Slot, Source>) -> Component {
        Component { id, slots, fresh: false, live: BTreeSet::new() }
    }

    /// This component, reading its inputs afresh on every connection.
    pub fn fresh(mut self) -> Component {
        self.fresh = true;
        self
    }

    /// This component, reloading `slots` when their sources change.
    pub fn reloading(mut self, slots: &[&str]) -> Component {
        self.live.extend(slots.iter().map(|s| s.to_string()));
        self
    }

    /// Whether the running component reloads `slot` when `source`, where it reads it, changes.
    fn reloads(&self, slot: &str, source: &Source) -> bool {
        self.live.contains(slot) && self.slots.get(slot) == Some(source)
    }
}

/// A client→server connection that must keep working.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Edge {
    /// The connecting component.
    pub client: ComponentId,
    /// The accepting component.
    pub server: ComponentId,
    /// What the connection is for (`kubelet->apiserver`, ...).
    pub purpose: String,
    /// The client's slot with the CAs it trusts for this server; `None` when the client does
    /// not verify the server (e.g. apiserver→kubelet without `--kubelet-certificate-authority`).
    pub client_trust: Option<Slot>,
    /// The client's certificate slot; `None` when it authenticates otherwise (a token).
    pub client_cert: Option<Slot>,
    /// The server's serving certificate slot.
    pub server_cert: Slot,
    /// The server's client-CA slot; `None` when the server asks for no certificate.
    pub server_client_ca: Option<Slot>,
}

impl fmt::Display for Edge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} -> {} ({})", self.client, self.server, self.purpose)
    }
}

/// Why an edge does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Break {
    /// The client does not trust the server's certificate.
    UntrustedServer {
        /// Who signed the server's certificate.
        server_signer: String,
        /// What the client trusts.
        client_trusts: String,
    },
    /// The server does not accept the client's certificate.
    BadClientCert {
        /// Who signed the client's certificate.
        client_signer: String,
        /// What the server accepts.
        server_accepts: String,
    },
}

impl fmt::Display for Break {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Break::UntrustedServer { server_signer, client_trusts } => write!(
                f,
                "the server presents a cert signed by {server_signer} but the client {client_trusts}"
            ),
            Break::BadClientCert { client_signer, server_accepts } => write!(
                f,
                "the client presents a cert signed by {client_signer} but the server {server_accepts}"
            ),
        }
    }
}

/// One simulated change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Effect {
    /// A file or object now holds `material`.
    Write {
        /// Where.
        source: Source,
        /// What.
        material: Material,
    },
    /// A component restarts and loads all its inputs from their sources.
    Restart(ComponentId),
    /// A component's input is read from another source from its next start on (a flag in a
    /// static pod manifest, `clientCAFile` in the kubelet config).
    Repoint {
        /// The component.
        component: ComponentId,
        /// The input.
        slot: Slot,
        /// Where it is read from now.
        source: Source,
    },
    /// A component publishes what it loaded in `slot` to `target`: in place of what is there
    /// (the controller-manager's root CA into `kube-root-ca.crt`), or merged with the CAs
    /// already published (the apiserver's request-header CA into
    /// `extension-apiserver-authentication`).
    Publish {
        /// The publishing component.
        from: ComponentId,
        /// Its loaded input.
        slot: Slot,
        /// The object written.
        target: Source,
        /// Merged with what `target` holds rather than replacing it.
        #[serde(default)]
        merge: bool,
    },
}

impl fmt::Display for Effect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Effect::Write { source, material } => write!(f, "write {source}: {material}"),
            Effect::Restart(c) => write!(f, "restart {c}"),
            Effect::Repoint { component, slot, source } => {
                write!(f, "{component} reads {slot} from {source}")
            }
            Effect::Publish { from, slot, target, merge } => {
                let how = if *merge { " (merged)" } else { "" };
                write!(f, "{from} publishes {slot} to {target}{how}")
            }
        }
    }
}

/// A step's effects, labelled for errors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimStep {
    /// The step's id in the plan.
    pub id: String,
    /// What it does to trust.
    pub effects: Vec<Effect>,
}

/// A broken edge after a step: the plan is refused with this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("step {step} would break {edge}: {why}")]
pub struct Violation {
    /// The step after which the edge breaks.
    pub step: String,
    /// The edge.
    pub edge: String,
    /// Why.
    pub why: Break,
}

/// Components, their edges, what is on disk and what each component loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct World {
    /// Every component.
    pub components: BTreeMap<ComponentId, Component>,
    /// Every edge.
    pub edges: Vec<Edge>,
    /// What each source holds now.
    pub disk: BTreeMap<Source, Material>,
    /// What each component loaded at its last start.
    pub loaded: BTreeMap<ComponentId, BTreeMap<Slot, Material>>,
}

impl World {
    /// A world with the given components and edges, every component started on `disk`.
    pub fn new(
        components: Vec<Component>,
        edges: Vec<Edge>,
        disk: BTreeMap<Source, Material>,
    ) -> World {
        let mut world = World {
            components: components.into_iter().map(|c| (c.id.clone(), c)).collect(),
            edges,
            disk,
            loaded: BTreeMap::new(),
        };
        let ids: Vec<ComponentId> = world.components.keys().cloned().collect();
        for id in ids {
            world.restart(&id);
        }
        world
    }

    /// What `source` holds on disk.
    pub fn on_disk(&self, source: &Source) -> &Material {
        self.disk.get(source).unwrap_or(&Material::Missing)
    }

    /// Changes what `source` holds; a component sees it at its next restart, or at once in an
    /// input it reloads. Returns the components that reloaded it.
    pub fn write(&mut self, source: Source, material: Material) -> Vec<ComponentId> {
        let reloading: Vec<(ComponentId, Slot)> = self
            .components
            .values()
            .flat_map(|c| {
                c.slots
                    .keys()
                    .filter(|slot| c.reloads(slot, &source))
                    .map(|slot| (c.id.clone(), slot.clone()))
                    .collect::<Vec<_>>()
            })
            .collect();
        for (id, slot) in &reloading {
            self.loaded.entry(id.clone()).or_default().insert(slot.clone(), material.clone());
        }
        self.disk.insert(source, material);
        reloading.into_iter().map(|(id, _)| id).collect()
    }

    /// `component` restarts and loads every input from disk.
    pub fn restart(&mut self, component: &ComponentId) {
        let Some(c) = self.components.get(component) else { return };
        let loaded =
            c.slots.iter().map(|(slot, src)| (slot.clone(), self.on_disk(src).clone())).collect();
        self.loaded.insert(component.clone(), loaded);
    }

    /// What `component` loaded in `slot`.
    pub fn loaded(&self, component: &ComponentId, slot: &str) -> &Material {
        self.loaded.get(component).and_then(|l| l.get(slot)).unwrap_or(&Material::Missing)
    }

    /// Applies one effect; returns the components that reloaded an input because of it.
    pub fn apply(&mut self, effect: &Effect) -> Vec<ComponentId> {
        match effect {
            Effect::Write { source, material } => self.write(source.clone(), material.clone()),
            Effect::Restart(c) => {
                self.restart(c);
                Vec::new()
            }
            Effect::Repoint { component, slot, source } => {
                if let Some(c) = self.components.get_mut(component) {
                    c.slots.insert(slot.clone(), source.clone());
                }
                Vec::new()
            }
            Effect::Publish { from, slot, target, merge } => {
                // Merged, as the apiserver merges its CAs into extension-apiserver-authentication
                // (`clusterauthenticationtrust` `combineCertLists`): a CA once published stays
                // until someone replaces it.
                let material = match (self.loaded(from, slot), self.on_disk(target)) {
                    (Material::Bundle(own), Material::Bundle(published)) if *merge => {
                        Material::Bundle(published.union(own).cloned().collect())
                    }
                    (own, _) => own.clone(),
                };
                self.write(target.clone(), material)
            }
        }
    }

    /// Every broken edge right now.
    pub fn broken(&mut self) -> Vec<(Edge, Break)> {
        let fresh: Vec<ComponentId> =
            self.components.values().filter(|c| c.fresh).map(|c| c.id.clone()).collect();
        for id in fresh {
            self.restart(&id);
        }
        self.edges.iter().filter_map(|e| self.check(e).err().map(|b| (e.clone(), b))).collect()
    }

    /// Whether `edge` holds with what its ends loaded.
    pub fn check(&self, edge: &Edge) -> Result<(), Break> {
        if let Some(trust) = &edge.client_trust {
            let trusts = self.loaded(&edge.client, trust);
            let served = self.loaded(&edge.server, &edge.server_cert);
            let signer = served.signer().unwrap_or("nobody");
            if !trusts.trusts(signer) {
                return Err(Break::UntrustedServer {
                    server_signer: signer.to_owned(),
                    client_trusts: trusts.to_string(),
                });
            }
        }
        if let (Some(cert), Some(ca)) = (&edge.client_cert, &edge.server_client_ca) {
            let presented = self.loaded(&edge.client, cert);
            let accepts = self.loaded(&edge.server, ca);
            let signer = presented.signer().unwrap_or("nobody");
            if !accepts.trusts(signer) {
                return Err(Break::BadClientCert {
                    client_signer: signer.to_owned(),
                    server_accepts: accepts.to_string(),
                });
            }
        }
        Ok(())
    }

    /// Applies `steps` in order, checking every edge after every step. Returns the first
    /// violation (the plan must then be refused), or the world at the end.
    pub fn simulate(mut self, steps: &[SimStep]) -> Result<World, Violation> {
        if let Some((edge, why)) = self.broken().into_iter().next() {
            return Err(Violation {
                step: "(before the first step)".into(),
                edge: edge.to_string(),
                why,
            });
        }
        // An edge can only change when one of its ends loads something new: a restart, or a
        // fresh component whose source (or pointer) changed. Check just those edges after each
        // step, which keeps a plan for hundreds of nodes linear instead of quadratic.
        let mut by_component: BTreeMap<ComponentId, Vec<usize>> = BTreeMap::new();
        for (i, e) in self.edges.iter().enumerate() {
            by_component.entry(e.client.clone()).or_default().push(i);
            by_component.entry(e.server.clone()).or_default().push(i);
        }
        let fresh: Vec<ComponentId> =
            self.components.values().filter(|c| c.fresh).map(|c| c.id.clone()).collect();
        for step in steps {
            let mut dirty: BTreeSet<ComponentId> = BTreeSet::new();
            for effect in &step.effects {
                // A reloaded input takes effect at once: its edges must hold right after this
                // write, before any restart later in the same step.
                let reloaded = self.apply(effect);
                let mut edges: Vec<usize> = reloaded
                    .iter()
                    .filter_map(|c| by_component.get(c))
                    .flatten()
                    .copied()
                    .collect();
                edges.sort_unstable();
                edges.dedup();
                for i in edges {
                    if let Err(why) = self.check(&self.edges[i]) {
                        return Err(Violation {
                            step: format!(
                                "{} (at \"{effect}\", which a running component reloads)",
                                step.id
                            ),
                            edge: self.edges[i].to_string(),
                            why,
                        });
                    }
                }
                dirty.extend(reloaded);
                match effect {
                    Effect::Restart(c) => {
                        dirty.insert(c.clone());
                    }
                    Effect::Repoint { component, .. } => {
                        if fresh.contains(component) {
                            dirty.insert(component.clone());
                        }
                    }
                    Effect::Write { source, .. } | Effect::Publish { target: source, .. } => {
                        for f in &fresh {
                            if self
                                .components
                                .get(f)
                                .is_some_and(|c| c.slots.values().any(|s| s == source))
                            {
                                dirty.insert(f.clone());
                            }
                        }
                    }
                }
            }
            for f in &fresh {
                if dirty.contains(f) {
                    self.restart(f);
                }
            }
            let mut edges: Vec<usize> =
                dirty.iter().filter_map(|c| by_component.get(c)).flatten().copied().collect();
            edges.sort_unstable();
            edges.dedup();
            for i in edges {
                if let Err(why) = self.check(&self.edges[i]) {
                    return Err(Violation {
                        step: step.id.clone(),
                        edge: self.edges[i].to_string(),
                        why,
                    });
                }
            }
        }
        Ok(self)
    }
}

/// Where one node's components load their trust inputs from and where they listen, as
/// discovery found them ([`crate::discovery::NodeFacts::layout`]).
///
/// `Default` is kubeadm's layout ([`crate::kubeadm`]): it stands for every node of a topology
/// recorded before kubeca kept layouts, which was made assuming it. Every field defaults on its
/// own, so a recorded layout missing a later field still decodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeLayout {
    /// Where kubeca puts bundles and new CAs: the cluster CA's directory.
    pub pki_dir: String,
    /// The cluster CA certificate as kubeadm keeps it (the controller-manager's
    /// `--root-ca-file`; on a worker, the kubelet's `clientCAFile`).
    pub ca_cert: String,
    /// The cluster CA key (the controller-manager's `--cluster-signing-key-file`).
    pub ca_key: String,
    /// The front-proxy CA certificate (the apiserver's `--requestheader-client-ca-file`).
    pub front_proxy_ca_cert: String,
    /// The front-proxy CA key, beside its certificate (nothing loads it, so no flag names it).
    pub front_proxy_ca_key: String,
    /// The kubelet's static pod directory (`staticPodPath`).
    pub static_pod_path: String,
    /// kube-apiserver.
    pub apiserver: ApiserverLayout,
    /// kube-controller-manager.
    pub controller_manager: ControllerManagerLayout,
    /// kube-scheduler.
    pub scheduler: SchedulerLayout,
    /// The admin kubeconfig kubeadm keeps on a control-plane node.
    pub admin_kubeconfig: String,
    /// The kubelet.
    pub kubelet: KubeletLayout,
}

/// What the apiserver of a node loads, from its manifest's flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ApiserverLayout {
    /// Its static pod manifest.
    pub manifest: String,
    /// `--client-ca-file`.
    pub client_ca: String,
    /// `--tls-cert-file`.
    pub serving_cert: String,
    /// `--kubelet-client-certificate`.
    pub kubelet_client_cert: String,
    /// `--proxy-client-cert-file`.
    pub proxy_client_cert: String,
    /// `--kubelet-certificate-authority`, when it verifies kubelets.
    pub kubelet_ca: Option<String>,
    /// `--secure-port`.
    pub port: u16,
}

/// What the controller-manager of a node loads, from its manifest's flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ControllerManagerLayout {
    /// Its static pod manifest.
    pub manifest: String,
    /// `--kubeconfig`.
    pub kubeconfig: String,
    /// `--client-ca-file`.
    pub client_ca: String,
    /// `--cluster-signing-cert-file`.
    pub signing_cert: String,
    /// `--secure-port`.
    pub port: u16,
}

/// What the scheduler of a node loads, from its manifest's flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct SchedulerLayout {
    /// Its static pod manifest.
    pub manifest: String,
    /// `--kubeconfig`.
    pub kubeconfig: String,
    /// `--secure-port`.
    pub port: u16,
}

/// What the kubelet of a node loads, from its drop-in, flags file, config and kubeconfig.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct KubeletLayout {
    /// Its config file that sets `clientCAFile` (`--config`, or a `--config-dir` drop-in).
    pub config: String,
    /// Its kubeconfig (`--kubeconfig`).
    pub kubeconfig: String,
    /// `authentication.x509.clientCAFile`.
    pub client_ca: String,
    /// Its client certificate file: the one its kubeconfig names, else the certificate it
    /// rotates in its certificate directory (`kubelet-client-current.pem`).
    pub client_cert: String,
    /// Its serving certificate (`tlsCertFile`, else its self-signed one).
    pub serving_cert: String,
    /// Its serving certificate comes from the CSR API (`serverTLSBootstrap`).
    pub serving_bootstrap: bool,
    /// Its port.
    pub port: u16,
}

impl Default for NodeLayout {
    fn default() -> NodeLayout {
        use crate::kubeadm::path;
        NodeLayout {
            pki_dir: path::dir_of(path::CA_CERT),
            ca_cert: path::CA_CERT.into(),
            ca_key: path::CA_KEY.into(),
            front_proxy_ca_cert: path::FRONT_PROXY_CA_CERT.into(),
            front_proxy_ca_key: path::key_beside(path::FRONT_PROXY_CA_CERT),
            static_pod_path: path::STATIC_POD_PATH.into(),
            apiserver: ApiserverLayout::default(),
            controller_manager: ControllerManagerLayout::default(),
            scheduler: SchedulerLayout::default(),
            admin_kubeconfig: path::ADMIN_CONF.into(),
            kubelet: KubeletLayout::default(),
        }
    }
}

impl Default for ApiserverLayout {
    fn default() -> ApiserverLayout {
        use crate::kubeadm::{component, path, port};
        ApiserverLayout {
            manifest: path::manifest(path::STATIC_POD_PATH, component::APISERVER),
            client_ca: path::CA_CERT.into(),
            serving_cert: path::APISERVER_CERT.into(),
            kubelet_client_cert: path::APISERVER_KUBELET_CLIENT_CERT.into(),
            proxy_client_cert: path::FRONT_PROXY_CLIENT_CERT.into(),
            kubelet_ca: None,
            port: port::APISERVER,
        }
    }
}

impl Default for ControllerManagerLayout {
    fn default() -> ControllerManagerLayout {
        use crate::kubeadm::{component, path, port};
        ControllerManagerLayout {
            manifest: path::manifest(path::STATIC_POD_PATH, component::CONTROLLER_MANAGER),
            kubeconfig: path::CONTROLLER_MANAGER_CONF.into(),
            client_ca: path::CA_CERT.into(),
            signing_cert: path::CA_CERT.into(),
            port: port::CONTROLLER_MANAGER,
        }
    }
}

impl Default for SchedulerLayout {
    fn default() -> SchedulerLayout {
        use crate::kubeadm::{component, path, port};
        SchedulerLayout {
            manifest: path::manifest(path::STATIC_POD_PATH, component::SCHEDULER),
            kubeconfig: path::SCHEDULER_CONF.into(),
            port: port::SCHEDULER,
        }
    }
}

impl Default for KubeletLayout {
    fn default() -> KubeletLayout {
        use crate::kubeadm::{path, port};
        KubeletLayout {
            config: path::KUBELET_CONFIG.into(),
            kubeconfig: path::KUBELET_CONF.into(),
            client_ca: path::CA_CERT.into(),
            client_cert: path::KUBELET_CLIENT_CURRENT.into(),
            serving_cert: path::KUBELET_SERVING.into(),
            serving_bootstrap: false,
            port: port::KUBELET,
        }
    }
}

impl NodeLayout {
    /// The control-plane component whose static pod manifest is `path`, if one is.
    pub fn component_of_manifest(&self, path: &str) -> Option<&'static str> {
        use crate::kubeadm::component;
        [
            (component::APISERVER, &self.apiserver.manifest),
            (component::CONTROLLER_MANAGER, &self.controller_manager.manifest),
            (component::SCHEDULER, &self.scheduler.manifest),
        ]
        .into_iter()
        .find_map(|(c, m)| (m == path).then_some(c))
    }
}

/// The shape of a kubeadm cluster, enough to build its trust graph; `init` records it beside
/// the journal, so `plan` re-checks and `run` acts on the layout discovered then.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Topology {
    /// Control-plane node names.
    pub control_planes: Vec<String>,
    /// Worker node names.
    pub workers: Vec<String>,
    /// Pods that talk to the apiserver with in-cluster config: (namespace, name, node).
    pub pods: Vec<(String, String, String)>,
    /// Aggregated API servers: (namespace, name, node).
    pub aggregated: Vec<(String, String, String)>,
    /// Whether apiservers verify kubelets' serving certificates
    /// (`--kubelet-certificate-authority` is set), and with which file.
    pub kubelet_certificate_authority: Option<String>,
    /// Each node's layout, by node name. A node without one (every node of a topology recorded
    /// before kubeca kept layouts) has kubeadm's.
    #[serde(default)]
    pub layouts: BTreeMap<String, NodeLayout>,
}

impl Topology {
    /// Where `node`'s components load their inputs from (kubeadm's layout when none was
    /// recorded for it).
    pub fn layout(&self, node: &str) -> &NodeLayout {
        static KUBEADM: std::sync::LazyLock<NodeLayout> =
            std::sync::LazyLock::new(NodeLayout::default);
        self.layouts.get(node).unwrap_or(&KUBEADM)
    }
}

/// CA names of the model.
pub mod ca {
    /// The cluster CA being replaced.
    pub const OLD: &str = "cluster/old";
    /// The new cluster CA.
    pub const NEW: &str = "cluster/new";
    /// The front-proxy CA being replaced.
    pub const FP_OLD: &str = "front-proxy/old";
    /// The new front-proxy CA.
    pub const FP_NEW: &str = "front-proxy/new";
}

fn slots(pairs: &[(&str, Source)]) -> BTreeMap<Slot, Source> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
}

fn edge(
    client: &ComponentId,
    server: &ComponentId,
    purpose: &str,
    client_trust: Option<&str>,
    client_cert: Option<&str>,
    server_cert: &str,
    server_client_ca: Option<&str>,
) -> Edge {
    Edge {
        client: client.clone(),
        server: server.clone(),
        purpose: purpose.to_owned(),
        client_trust: client_trust.map(str::to_owned),
        client_cert: client_cert.map(str::to_owned),
        server_cert: server_cert.to_owned(),
        server_client_ca: server_client_ca.map(str::to_owned),
    }
}

/// A ConfigMap as a source.
pub fn configmap(namespace: &str, name: &str) -> Source {
    Source::ConfigMap { namespace: namespace.into(), name: name.into() }
}

/// The kubeadm cluster of `t` as it stands before a rotation: everything trusts and is signed by
/// the old CAs, each component loading from where its node's layout says.
pub fn kubeadm(t: &Topology) -> World {
    use crate::kubeadm::{component as kind, object, slot};
    use Source::{KubeconfigCa, KubeconfigCert};
    let kc_ca = |n: &str, p: &str| KubeconfigCa { node: Some(n.into()), path: p.into() };
    let kc_cert = |n: &str, p: &str| KubeconfigCert { node: Some(n.into()), path: p.into() };
    let root_ca_map = |ns: &str| configmap(ns, object::ROOT_CA);
    let ext_auth = configmap(object::KUBE_SYSTEM, object::EXTENSION_APISERVER_AUTHENTICATION);
    let cluster_info = configmap(object::KUBE_PUBLIC, object::CLUSTER_INFO);

    let mut components = Vec::new();
    let mut edges = Vec::new();
    let mut disk = BTreeMap::new();
    let old = || Material::bundle([ca::OLD]);
    let old_signed = || Material::cert(ca::OLD);

    let apiservers: Vec<ComponentId> =
        t.control_planes.iter().map(|n| ComponentId::on(kind::APISERVER, n)).collect();
    let all_nodes: Vec<&String> = t.control_planes.iter().chain(&t.workers).collect();

    for node in &t.control_planes {
        let l = t.layout(node);
        let f = |p: &str| Source::file(node, p);
        for (p, m) in [
            (&l.apiserver.serving_cert, old_signed()),
            (&l.apiserver.kubelet_client_cert, old_signed()),
            (&l.apiserver.proxy_client_cert, Material::cert(ca::FP_OLD)),
        ] {
            disk.insert(f(p), m);
        }
        // Files that hold the old CA, whichever component names them (on kubeadm's layout all
        // but the front-proxy CA are ca.crt).
        for p in [&l.ca_cert, &l.apiserver.client_ca, &l.controller_manager.client_ca] {
            disk.insert(f(p), old());
        }
        disk.insert(f(&l.controller_manager.signing_cert), old());
        disk.insert(f(&l.front_proxy_ca_cert), Material::bundle([ca::FP_OLD]));
        for conf in [&l.admin_kubeconfig, &l.controller_manager.kubeconfig, &l.scheduler.kubeconfig]
        {
            disk.insert(kc_ca(node, conf), old());
            disk.insert(kc_cert(node, conf), old_signed());
        }
        let api = ComponentId::on(kind::APISERVER, node);
        let mut api_slots = vec![
            (slot::SERVING_CERT, f(&l.apiserver.serving_cert)),
            (slot::CLIENT_CA, f(&l.apiserver.client_ca)),
            (slot::KUBELET_CLIENT_CERT, f(&l.apiserver.kubelet_client_cert)),
            (slot::PROXY_CLIENT_CERT, f(&l.apiserver.proxy_client_cert)),
            (slot::REQUESTHEADER_CA, f(&l.front_proxy_ca_cert)),
        ];
        if let Some(file) =
            l.apiserver.kubelet_ca.as_ref().or(t.kubelet_certificate_authority.as_ref())
        {
            api_slots.push((slot::KUBELET_CA, f(file)));
            disk.entry(f(file)).or_insert_with(old);
        }
        // What the apiserver reloads when it changes (`k8s.io/apiserver/pkg/server/
        // dynamiccertificates`: client CA, request-header CA, serving pair; the aggregator's
        // proxy client pair; the kubelet client pair through client-go's cert rotation): not
        // --kubelet-certificate-authority, read once.
        components.push(Component::new(api.clone(), slots(&api_slots)).reloading(&[
            slot::SERVING_CERT,
            slot::CLIENT_CA,
            slot::REQUESTHEADER_CA,
            slot::PROXY_CLIENT_CERT,
            slot::KUBELET_CLIENT_CERT,
        ]));

        let cm = ComponentId::on(kind::CONTROLLER_MANAGER, node);
        let cm_conf = &l.controller_manager.kubeconfig;
        // The controller-manager reloads its signing pair
        // (`pkg/controller/certificates/signer/ca_provider.go`) and its delegated
        // authentication's client CA, not --root-ca-file.
        components.push(
            Component::new(
                cm.clone(),
                slots(&[
                    (slot::KUBECONFIG_CA, kc_ca(node, cm_conf)),
                    (slot::CLIENT_CERT, kc_cert(node, cm_conf)),
                    (slot::ROOT_CA, f(&l.ca_cert)),
                    (slot::CLIENT_CA, f(&l.controller_manager.client_ca)),
                    (slot::SIGNING_CERT, f(&l.controller_manager.signing_cert)),
                ]),
            )
            .reloading(&[slot::SIGNING_CERT, slot::CLIENT_CA]),
        );
        let sched = ComponentId::on(kind::SCHEDULER, node);
        components.push(Component::new(
            sched.clone(),
            slots(&[
                (slot::KUBECONFIG_CA, kc_ca(node, &l.scheduler.kubeconfig)),
                (slot::CLIENT_CERT, kc_cert(node, &l.scheduler.kubeconfig)),
            ]),
        ));
        let admin = ComponentId::on(kind::ADMIN, node);
        components.push(
            Component::new(
                admin.clone(),
                slots(&[
                    (slot::KUBECONFIG_CA, kc_ca(node, &l.admin_kubeconfig)),
                    (slot::CLIENT_CERT, kc_cert(node, &l.admin_kubeconfig)),
                ]),
            )
            .fresh(),
        );
        // kubeadm points the controller-manager and scheduler at their own node's apiserver.
        for client in [&cm, &sched] {
            let purpose = format!("{}->apiserver", client.kind);
            edges.push(edge(
                client,
                &api,
                &purpose,
                Some(slot::KUBECONFIG_CA),
                Some(slot::CLIENT_CERT),
                slot::SERVING_CERT,
                Some(slot::CLIENT_CA),
            ));
        }
        // kubectl with admin.conf goes through the load balancer: any apiserver may answer.
        for server in &apiservers {
            edges.push(edge(
                &admin,
                server,
                "admin->apiserver",
                Some(slot::KUBECONFIG_CA),
                Some(slot::CLIENT_CERT),
                slot::SERVING_CERT,
                Some(slot::CLIENT_CA),
            ));
        }
    }

    for node in &all_nodes {
        let l = &t.layout(node).kubelet;
        let kubelet = ComponentId::on(kind::KUBELET, node);
        disk.insert(kc_ca(node, &l.kubeconfig), old());
        disk.insert(kc_cert(node, &l.kubeconfig), old_signed());
        disk.insert(Source::file(node, &l.client_ca), old());
        disk.insert(
            Source::file(node, &l.serving_cert),
            Material::cert(&format!("kubelet-self/{node}")),
        );
        if let Some(file) = &t.kubelet_certificate_authority {
            // With --kubelet-certificate-authority, kubelet serving certs are signed by the CA.
            disk.insert(Source::file(node, &l.serving_cert), old_signed());
            disk.entry(Source::file(node, file)).or_insert_with(old);
        }
        // The kubelet reloads clientCAFile (`cmd/kubelet/app/auth.go`) and, since 1.31, its
        // serving pair (`ReloadKubeletServerCertificateFile`).
        components.push(
            Component::new(
                kubelet.clone(),
                slots(&[
                    (slot::KUBECONFIG_CA, kc_ca(node, &l.kubeconfig)),
                    (slot::CLIENT_CERT, kc_cert(node, &l.kubeconfig)),
                    (slot::SERVING_CERT, Source::file(node, &l.serving_cert)),
                    (slot::CLIENT_CA, Source::file(node, &l.client_ca)),
                ]),
            )
            .reloading(&[slot::CLIENT_CA, slot::SERVING_CERT]),
        );
        for server in &apiservers {
            edges.push(edge(
                &kubelet,
                server,
                "kubelet->apiserver",
                Some(slot::KUBECONFIG_CA),
                Some(slot::CLIENT_CERT),
                slot::SERVING_CERT,
                Some(slot::CLIENT_CA),
            ));
            let trust = t.kubelet_certificate_authority.as_ref().map(|_| slot::KUBELET_CA);
            edges.push(edge(
                server,
                &kubelet,
                "apiserver->kubelet",
                trust,
                Some(slot::KUBELET_CLIENT_CERT),
                slot::SERVING_CERT,
                Some(slot::CLIENT_CA),
            ));
        }
    }

    let mut namespaces: BTreeSet<String> = object::NAMESPACES.map(String::from).into();
    namespaces.extend(t.pods.iter().map(|(ns, _, _)| ns.clone()));
    namespaces.extend(t.aggregated.iter().map(|(ns, _, _)| ns.clone()));
    for ns in &namespaces {
        disk.insert(root_ca_map(ns), old());
    }
    disk.insert(ext_auth.clone(), Material::bundle([ca::FP_OLD]));
    disk.insert(cluster_info.clone(), old());

    for (ns, name, node) in &t.pods {
        let pod = ComponentId::on(&kind::pod(ns, name), node);
        components.push(Component::new(pod.clone(), slots(&[(slot::CA, root_ca_map(ns))])));
        for server in &apiservers {
            // Pods authenticate with service-account tokens: only their trust of the server counts.
            edges.push(edge(
                &pod,
                server,
                "pod->apiserver",
                Some(slot::CA),
                None,
                slot::SERVING_CERT,
                None,
            ));
        }
    }
    for (ns, name, node) in &t.aggregated {
        let agg = ComponentId::on(&kind::aggregated(ns, name), node);
        let self_signed =
            Source::File { node: Some((*node).clone()), path: format!("aggregated:{name}") };
        disk.insert(self_signed.clone(), Material::cert(&format!("aggregated-self/{name}")));
        // Aggregated servers watch extension-apiserver-authentication
        // (`dynamiccertificates/configmap_cafile_content.go`): its request-header CA counts
        // from the moment it is published.
        components.push(
            Component::new(
                agg.clone(),
                slots(&[
                    (slot::CA, root_ca_map(ns)),
                    (slot::REQUESTHEADER_CA, ext_auth.clone()),
                    (slot::SERVING_CERT, self_signed),
                ]),
            )
            .reloading(&[slot::REQUESTHEADER_CA]),
        );
        for server in &apiservers {
            edges.push(edge(
                &agg,
                server,
                "aggregated->apiserver",
                Some(slot::CA),
                None,
                slot::SERVING_CERT,
                None,
            ));
            // The apiserver proxies with its front-proxy client certificate; the aggregated server
            // checks it against the request-header CA it read at start.
            edges.push(edge(
                server,
                &agg,
                "apiserver->aggregated (front proxy)",
                None,
                Some(slot::PROXY_CLIENT_CERT),
                slot::SERVING_CERT,
                Some(slot::REQUESTHEADER_CA),
            ));
        }
    }
    let joiner = ComponentId::outside(kind::JOINER);
    components.push(Component::new(joiner.clone(), slots(&[(slot::CA, cluster_info)])).fresh());
    for server in &apiservers {
        edges.push(edge(
            &joiner,
            server,
            "joiner->apiserver",
            Some(slot::CA),
            None,
            slot::SERVING_CERT,
            None,
        ));
    }

    World::new(components, edges, disk)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kubeadm::{component as kind, path as paths};

    const BUNDLE: &str = "/etc/kubernetes/pki/ca-bundle.crt";
    const FP_BUNDLE: &str = "/etc/kubernetes/pki/front-proxy-ca-bundle.crt";

    fn topology() -> Topology {
        Topology {
            control_planes: vec!["cp-1".into(), "cp-2".into()],
            workers: vec!["w-1".into()],
            pods: vec![("kube-system".into(), "coredns-a".into(), "w-1".into())],
            aggregated: vec![("kube-system".into(), "metrics-server".into(), "w-1".into())],
            kubelet_certificate_authority: None,
            layouts: BTreeMap::new(),
        }
    }

    fn id(kind: &str, node: &str) -> ComponentId {
        ComponentId::on(kind, node)
    }

    fn write(source: Source, material: Material) -> Effect {
        Effect::Write { source, material }
    }

    fn step(id: &str, effects: Vec<Effect>) -> SimStep {
        SimStep { id: id.into(), effects }
    }

    fn kc_ca(node: &str, path: &str) -> Source {
        Source::KubeconfigCa { node: Some(node.into()), path: path.into() }
    }

    fn kc_cert(node: &str, path: &str) -> Source {
        Source::KubeconfigCert { node: Some(node.into()), path: path.into() }
    }

    fn both() -> Material {
        Material::bundle([ca::OLD, ca::NEW])
    }

    /// The upstream order, reduced to its effects on trust, for the test topology.
    fn upstream_order(t: &Topology) -> Vec<SimStep> {
        let cps = &t.control_planes;
        let nodes: Vec<&String> = cps.iter().chain(&t.workers).collect();
        let mut steps = Vec::new();
        // Steps 1-2: bundles beside the old files; the controller-manager's root CA is the bundle.
        let mut effects = Vec::new();
        for n in &nodes {
            effects.push(write(Source::file(n, BUNDLE), both()));
        }
        for n in cps {
            effects.push(write(
                Source::file(n, FP_BUNDLE),
                Material::bundle([ca::FP_OLD, ca::FP_NEW]),
            ));
        }
        steps.push(step("prepare/bundles", effects));
        for n in cps {
            let cm = id(kind::CONTROLLER_MANAGER, n);
            steps.push(step(
                &format!("2/controller-manager@{n}"),
                vec![
                    Effect::Repoint {
                        component: cm.clone(),
                        slot: "root-ca".into(),
                        source: Source::file(n, BUNDLE),
                    },
                    Effect::Restart(cm),
                ],
            ));
        }
        // Step 3: kube-root-ca.crt everywhere holds both.
        let cm = id(kind::CONTROLLER_MANAGER, &cps[0]);
        let namespaces = ["default", "kube-system", "kube-public", "kube-node-lease"];
        steps.push(step(
            "3/kube-root-ca.crt",
            namespaces
                .iter()
                .map(|ns| Effect::Publish {
                    from: cm.clone(),
                    slot: "root-ca".into(),
                    target: Source::ConfigMap {
                        namespace: (*ns).into(),
                        name: "kube-root-ca.crt".into(),
                    },
                    merge: false,
                })
                .collect(),
        ));
        // Step 4: restart in-cluster clients.
        steps.push(step(
            "4/pods",
            vec![
                Effect::Restart(id("pod/kube-system/coredns-a", "w-1")),
                Effect::Restart(id("aggregated/kube-system/metrics-server", "w-1")),
            ],
        ));
        // Steps 5-8: control plane trusts both, kubeconfigs carry both.
        for n in cps {
            let api = id(kind::APISERVER, n);
            let mut effects = vec![
                Effect::Repoint {
                    component: api.clone(),
                    slot: "client-ca".into(),
                    source: Source::file(n, BUNDLE),
                },
                Effect::Repoint {
                    component: api.clone(),
                    slot: "requestheader-ca".into(),
                    source: Source::file(n, FP_BUNDLE),
                },
                Effect::Restart(api.clone()),
                Effect::Publish {
                    from: api,
                    slot: "requestheader-ca".into(),
                    target: Source::ConfigMap {
                        namespace: "kube-system".into(),
                        name: "extension-apiserver-authentication".into(),
                    },
                    merge: true,
                },
            ];
            for conf in [paths::ADMIN_CONF, paths::CONTROLLER_MANAGER_CONF, paths::SCHEDULER_CONF] {
                effects.push(write(kc_ca(n, conf), both()));
            }
            effects.push(Effect::Restart(id(kind::CONTROLLER_MANAGER, n)));
            effects.push(Effect::Restart(id(kind::SCHEDULER, n)));
            steps.push(step(&format!("5-8/control-plane@{n}"), effects));
        }
        // cluster-info must carry both before any apiserver serves a new-CA certificate, or a node
        // joining in between cannot trust the apiserver (the simulator found this).
        steps.push(step(
            "9.3/cluster-info",
            vec![write(
                Source::ConfigMap { namespace: "kube-public".into(), name: "cluster-info".into() },
                both(),
            )],
        ));
        steps.push(step(
            "9.1/aggregated",
            vec![Effect::Restart(id("aggregated/kube-system/metrics-server", "w-1"))],
        ));
        // Step 9.2: kubelets trust both.
        for n in &nodes {
            let k = id(kind::KUBELET, n);
            steps.push(step(
                &format!("9.2/kubelet@{n}"),
                vec![
                    Effect::Repoint {
                        component: k.clone(),
                        slot: "client-ca".into(),
                        source: Source::file(n, BUNDLE),
                    },
                    write(kc_ca(n, paths::KUBELET_CONF), both()),
                    Effect::Restart(k),
                ],
            ));
        }
        steps
    }

    fn switch(t: &Topology) -> Vec<SimStep> {
        let mut steps = Vec::new();
        for n in &t.control_planes {
            let api = id(kind::APISERVER, n);
            steps.push(step(
                &format!("9.3/apiserver@{n}"),
                vec![
                    write(Source::file(n, paths::APISERVER_CERT), Material::cert(ca::NEW)),
                    write(
                        Source::file(n, paths::APISERVER_KUBELET_CLIENT_CERT),
                        Material::cert(ca::NEW),
                    ),
                    write(
                        Source::file(n, paths::FRONT_PROXY_CLIENT_CERT),
                        Material::cert(ca::FP_NEW),
                    ),
                    Effect::Restart(api),
                ],
            ));
            // Client certificates of the kubeconfigs are re-issued by the new CA.
            let mut effects: Vec<Effect> =
                [paths::ADMIN_CONF, paths::CONTROLLER_MANAGER_CONF, paths::SCHEDULER_CONF]
                    .iter()
                    .map(|conf| write(kc_cert(n, conf), Material::cert(ca::NEW)))
                    .collect();
            effects.push(Effect::Restart(id(kind::CONTROLLER_MANAGER, n)));
            effects.push(Effect::Restart(id(kind::SCHEDULER, n)));
            steps.push(step(&format!("5/client-certs@{n}"), effects));
        }
        steps
    }

    #[test]
    fn the_cluster_before_rotation_is_whole() {
        let mut w = kubeadm(&topology());
        assert!(w.broken().is_empty(), "{:?}", w.broken());
        // 2 cps: cm+sched (2 each node = 4), admin 2x2, kubelet 3 nodes x2 apiservers x2
        // directions, pod 2, aggregated 2x2, joiner 2.
        assert_eq!(w.edges.len(), 4 + 4 + 12 + 2 + 4 + 2);
    }

    #[test]
    fn the_upstream_order_keeps_every_edge() {
        let t = topology();
        let mut steps = upstream_order(&t);
        steps.extend(switch(&t));
        let world = kubeadm(&t).simulate(&steps).unwrap();
        assert_eq!(
            world.loaded(&id(kind::APISERVER, "cp-1"), "serving-cert"),
            &Material::cert(ca::NEW)
        );
    }

    #[test]
    fn switching_the_apiserver_before_kubelets_trust_the_new_ca_is_refused() {
        let t = topology();
        let mut steps: Vec<SimStep> =
            upstream_order(&t).into_iter().filter(|s| !s.id.starts_with("9.2/")).collect();
        steps.extend(switch(&t));
        let v = kubeadm(&t).simulate(&steps).unwrap_err();
        // The apiserver reloads its serving pair: the new certificate is served from its write.
        assert!(v.step.starts_with("9.3/apiserver@cp-1 (at \"write cp-1:"), "{v}");
        assert!(v.step.contains("apiserver.crt"), "{v}");
        assert!(v.edge.starts_with("kubelet@") && v.edge.contains("kube-apiserver@cp-1"), "{v}");
        assert!(matches!(v.why, Break::UntrustedServer { .. }), "{v}");
        assert!(v.to_string().contains("signed by cluster/new"), "{v}");
    }

    #[test]
    fn dropping_the_old_ca_from_kubelets_before_the_kubelet_client_cert_is_reissued_is_refused() {
        let t = topology();
        let mut steps = upstream_order(&t);
        steps.push(step(
            "12/kubelet@w-1",
            vec![
                write(Source::file("w-1", BUNDLE), Material::bundle([ca::NEW])),
                Effect::Restart(id(kind::KUBELET, "w-1")),
            ],
        ));
        let v = kubeadm(&t).simulate(&steps).unwrap_err();
        // The kubelet reloads clientCAFile: the edge breaks at the write, before the restart.
        assert!(v.step.starts_with("12/kubelet@w-1 (at \"write w-1:"), "{v}");
        assert!(v.step.contains("which a running component reloads"), "{v}");
        assert_eq!(v.edge, "kube-apiserver@cp-1 -> kubelet@w-1 (apiserver->kubelet)");
        assert!(matches!(v.why, Break::BadClientCert { .. }), "{v}");
    }

    #[test]
    fn pods_that_were_not_restarted_break_when_the_apiserver_switches() {
        let t = topology();
        let mut steps: Vec<SimStep> = upstream_order(&t)
            .into_iter()
            .map(|mut s| {
                s.effects
                    .retain(|e| !matches!(e, Effect::Restart(c) if c.kind.starts_with("pod/")));
                s
            })
            .collect();
        steps.extend(switch(&t));
        let v = kubeadm(&t).simulate(&steps).unwrap_err();
        assert!(v.edge.starts_with("pod/kube-system/coredns-a@w-1"), "{v}");
    }

    #[test]
    fn cluster_info_left_on_the_old_ca_breaks_joiners_at_the_switch() {
        let t = topology();
        let mut steps: Vec<SimStep> =
            upstream_order(&t).into_iter().filter(|s| s.id != "9.3/cluster-info").collect();
        steps.extend(switch(&t));
        let v = kubeadm(&t).simulate(&steps).unwrap_err();
        assert_eq!(v.edge, "joiner -> kube-apiserver@cp-1 (joiner->apiserver)");
    }

    /// cp-1's apiserver and w-1's kubelet laid out otherwise than kubeadm's defaults.
    fn laid_out_otherwise() -> Topology {
        let mut t = topology();
        let mut cp = NodeLayout::default();
        cp.apiserver.client_ca = "/srv/k8s/pki/client-ca.crt".into();
        cp.apiserver.serving_cert = "/srv/k8s/pki/apiserver.crt".into();
        t.layouts.insert("cp-1".into(), cp);
        let mut w = NodeLayout::default();
        w.kubelet.kubeconfig = "/srv/kubelet/kubelet.conf".into();
        w.kubelet.client_ca = "/srv/k8s/pki/ca.crt".into();
        t.layouts.insert("w-1".into(), w);
        t
    }

    #[test]
    fn components_load_from_where_their_node_s_layout_says() {
        let t = laid_out_otherwise();
        let mut w = kubeadm(&t);
        assert!(w.broken().is_empty(), "{:?}", w.broken());
        let api = id(kind::APISERVER, "cp-1");
        assert_eq!(
            w.components[&api].slots["client-ca"],
            Source::file("cp-1", "/srv/k8s/pki/client-ca.crt")
        );
        assert_eq!(w.loaded(&api, "client-ca"), &Material::bundle([ca::OLD]));
        let kubelet = id(kind::KUBELET, "w-1");
        assert_eq!(w.loaded(&kubelet, "client-ca"), &Material::bundle([ca::OLD]));
        assert_eq!(
            w.components[&kubelet].slots["kubeconfig-ca"],
            kc_ca("w-1", "/srv/kubelet/kubelet.conf")
        );
        // cp-2 has no layout: kubeadm's.
        assert_eq!(
            w.components[&id(kind::APISERVER, "cp-2")].slots["client-ca"],
            Source::file("cp-2", paths::CA_CERT)
        );
        // A write at kubeadm's default path is not what cp-1's apiserver serves ...
        w.write(Source::file("cp-1", paths::APISERVER_CERT), Material::cert(ca::NEW));
        w.restart(&api);
        assert!(w.broken().is_empty(), "{:?}", w.broken());
        // ... the file its layout names is.
        w.write(Source::file("cp-1", "/srv/k8s/pki/apiserver.crt"), Material::cert(ca::NEW));
        w.restart(&api);
        assert!(!w.broken().is_empty());
    }

    #[test]
    fn a_topology_recorded_before_layouts_decodes_as_kubeadm_s_layout() {
        let recorded = r#"{"control_planes":["cp-1"],"workers":["w-1"],"pods":[],
            "aggregated":[],"kubelet_certificate_authority":null}"#;
        let t: Topology = serde_json::from_str(recorded).unwrap();
        assert!(t.layouts.is_empty());
        assert_eq!(t.layout("cp-1"), &NodeLayout::default());
        assert_eq!(
            t.layout("cp-1").apiserver.manifest,
            "/etc/kubernetes/manifests/kube-apiserver.yaml"
        );
        // A layout recorded without a later field gets that field's default.
        let partial = r#"{"control_planes":[],"workers":["w-1"],"pods":[],"aggregated":[],
            "kubelet_certificate_authority":null,"layouts":{"w-1":{"kubelet":{"port":11250}}}}"#;
        let t: Topology = serde_json::from_str(partial).unwrap();
        assert_eq!(t.layout("w-1").kubelet.port, 11250);
        assert_eq!(t.layout("w-1").kubelet.client_cert, paths::KUBELET_CLIENT_CURRENT);
        // And what is recorded now reads back the same.
        let now = laid_out_otherwise();
        let back: Topology = serde_json::from_str(&serde_json::to_string(&now).unwrap()).unwrap();
        assert_eq!(back, now);
    }

    #[test]
    fn a_restart_is_what_makes_a_disk_change_count() {
        let t = topology();
        let mut w = kubeadm(&t);
        // The controller-manager reads its kubeconfig at start only.
        let cm = id(kind::CONTROLLER_MANAGER, "cp-1");
        let conf = Source::KubeconfigCa {
            node: Some("cp-1".into()),
            path: paths::CONTROLLER_MANAGER_CONF.into(),
        };
        assert!(w.write(conf, Material::bundle([ca::NEW])).is_empty(), "nobody reloads it");
        assert!(w.broken().is_empty(), "nothing loaded the new CA yet");
        w.restart(&cm);
        assert!(!w.broken().is_empty());
    }

    #[test]
    fn a_reloaded_input_counts_when_it_is_written() {
        let t = topology();
        let mut w = kubeadm(&t);
        // The apiserver reloads its serving pair (dynamiccertificates): a new-CA certificate
        // is served at once, before any restart, and the kubelets do not trust it.
        let reloaded =
            w.write(Source::file("cp-1", paths::APISERVER_CERT), Material::cert(ca::NEW));
        assert_eq!(reloaded, [id(kind::APISERVER, "cp-1")]);
        assert!(!w.broken().is_empty(), "the reloaded certificate must count at once");
        // --kubelet-certificate-authority is read once: not among what the apiserver reloads.
        let api = &w.components[&id(kind::APISERVER, "cp-1")];
        use crate::kubeadm::slot;
        assert!(api.live.contains(slot::CLIENT_CA) && !api.live.contains(slot::KUBELET_CA));
    }
}
