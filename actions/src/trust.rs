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
    /// A component publishes what it loaded in `slot` to `target` (the controller-manager's
    /// root CA into `kube-root-ca.crt`, the apiserver's request-header CA into
    /// `extension-apiserver-authentication`).
    Publish {
        /// The publishing component.
        from: ComponentId,
        /// Its loaded input.
        slot: Slot,
        /// The object written.
        target: Source,
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
            Effect::Publish { from, slot, target } => {
                write!(f, "{from} publishes {slot} to {target}")
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

    /// Changes what `source` holds; no component sees it until it restarts.
    pub fn write(&mut self, source: Source, material: Material) {
        self.disk.insert(source, material);
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

    /// Applies one effect.
    pub fn apply(&mut self, effect: &Effect) {
        match effect {
            Effect::Write { source, material } => self.write(source.clone(), material.clone()),
            Effect::Restart(c) => self.restart(c),
            Effect::Repoint { component, slot, source } => {
                if let Some(c) = self.components.get_mut(component) {
                    c.slots.insert(slot.clone(), source.clone());
                }
            }
            Effect::Publish { from, slot, target } => {
                let material = self.loaded(from, slot).clone();
                self.write(target.clone(), material);
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
                self.apply(effect);
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

/// Where kubeadm keeps things (its defaults; discovery replaces what flags say otherwise).
pub mod paths {
    /// Cluster CA certificate.
    pub const CA: &str = "/etc/kubernetes/pki/ca.crt";
    /// Front-proxy CA certificate.
    pub const FRONT_PROXY_CA: &str = "/etc/kubernetes/pki/front-proxy-ca.crt";
    /// Apiserver serving certificate.
    pub const APISERVER: &str = "/etc/kubernetes/pki/apiserver.crt";
    /// Apiserver's client certificate towards kubelets.
    pub const APISERVER_KUBELET_CLIENT: &str = "/etc/kubernetes/pki/apiserver-kubelet-client.crt";
    /// Apiserver's front-proxy client certificate towards aggregated servers.
    pub const FRONT_PROXY_CLIENT: &str = "/etc/kubernetes/pki/front-proxy-client.crt";
    /// Admin kubeconfig.
    pub const ADMIN_CONF: &str = "/etc/kubernetes/admin.conf";
    /// Controller-manager kubeconfig.
    pub const CONTROLLER_MANAGER_CONF: &str = "/etc/kubernetes/controller-manager.conf";
    /// Scheduler kubeconfig.
    pub const SCHEDULER_CONF: &str = "/etc/kubernetes/scheduler.conf";
    /// Kubelet kubeconfig.
    pub const KUBELET_CONF: &str = "/etc/kubernetes/kubelet.conf";
    /// Kubelet serving certificate (self-signed by the kubelet in kubeadm's default setup).
    pub const KUBELET_SERVING: &str = "/var/lib/kubelet/pki/kubelet.crt";
}

/// The shape of a kubeadm cluster, enough to build its trust graph.
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
}

/// Component kinds, as named in edges and errors.
pub mod kind {
    /// kube-apiserver.
    pub const APISERVER: &str = "kube-apiserver";
    /// kube-controller-manager.
    pub const CONTROLLER_MANAGER: &str = "kube-controller-manager";
    /// kube-scheduler.
    pub const SCHEDULER: &str = "kube-scheduler";
    /// kubelet.
    pub const KUBELET: &str = "kubelet";
    /// kubectl with a node's admin.conf.
    pub const ADMIN: &str = "admin";
    /// A node joining with `kube-public/cluster-info`.
    pub const JOINER: &str = "joiner";
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

/// The kubeadm cluster of `t` as it stands before a rotation: everything trusts and is signed by
/// the old CAs.
pub fn kubeadm(t: &Topology) -> World {
    use Source::{ConfigMap, KubeconfigCa, KubeconfigCert};
    let cm_source = |ns: &str, name: &str| ConfigMap { namespace: ns.into(), name: name.into() };
    let kc_ca = |n: &str, p: &str| KubeconfigCa { node: Some(n.into()), path: p.into() };
    let kc_cert = |n: &str, p: &str| KubeconfigCert { node: Some(n.into()), path: p.into() };
    let root_ca_map = |ns: &str| cm_source(ns, "kube-root-ca.crt");
    let ext_auth = cm_source("kube-system", "extension-apiserver-authentication");
    let cluster_info = cm_source("kube-public", "cluster-info");

    let mut components = Vec::new();
    let mut edges = Vec::new();
    let mut disk = BTreeMap::new();
    let old = || Material::bundle([ca::OLD]);
    let old_signed = || Material::cert(ca::OLD);

    let apiservers: Vec<ComponentId> =
        t.control_planes.iter().map(|n| ComponentId::on(kind::APISERVER, n)).collect();
    let all_nodes: Vec<&String> = t.control_planes.iter().chain(&t.workers).collect();

    for node in &t.control_planes {
        let f = |p: &str| Source::file(node, p);
        for (p, m) in [
            (paths::CA, old()),
            (paths::FRONT_PROXY_CA, Material::bundle([ca::FP_OLD])),
            (paths::APISERVER, old_signed()),
            (paths::APISERVER_KUBELET_CLIENT, old_signed()),
            (paths::FRONT_PROXY_CLIENT, Material::cert(ca::FP_OLD)),
        ] {
            disk.insert(f(p), m);
        }
        for conf in [paths::ADMIN_CONF, paths::CONTROLLER_MANAGER_CONF, paths::SCHEDULER_CONF] {
            disk.insert(kc_ca(node, conf), old());
            disk.insert(kc_cert(node, conf), old_signed());
        }
        let api = ComponentId::on(kind::APISERVER, node);
        let mut api_slots = vec![
            ("serving-cert", f(paths::APISERVER)),
            ("client-ca", f(paths::CA)),
            ("kubelet-client-cert", f(paths::APISERVER_KUBELET_CLIENT)),
            ("proxy-client-cert", f(paths::FRONT_PROXY_CLIENT)),
            ("requestheader-ca", f(paths::FRONT_PROXY_CA)),
        ];
        if let Some(file) = &t.kubelet_certificate_authority {
            api_slots.push(("kubelet-ca", f(file)));
            disk.entry(f(file)).or_insert_with(old);
        }
        components.push(Component { id: api.clone(), slots: slots(&api_slots), fresh: false });

        let cm = ComponentId::on(kind::CONTROLLER_MANAGER, node);
        components.push(Component {
            id: cm.clone(),
            slots: slots(&[
                ("kubeconfig-ca", kc_ca(node, paths::CONTROLLER_MANAGER_CONF)),
                ("client-cert", kc_cert(node, paths::CONTROLLER_MANAGER_CONF)),
                ("root-ca", f(paths::CA)),
                ("client-ca", f(paths::CA)),
                ("signing-cert", f(paths::CA)),
            ]),
            fresh: false,
        });
        let sched = ComponentId::on(kind::SCHEDULER, node);
        components.push(Component {
            id: sched.clone(),
            slots: slots(&[
                ("kubeconfig-ca", kc_ca(node, paths::SCHEDULER_CONF)),
                ("client-cert", kc_cert(node, paths::SCHEDULER_CONF)),
            ]),
            fresh: false,
        });
        let admin = ComponentId::on(kind::ADMIN, node);
        components.push(Component {
            id: admin.clone(),
            slots: slots(&[
                ("kubeconfig-ca", kc_ca(node, paths::ADMIN_CONF)),
                ("client-cert", kc_cert(node, paths::ADMIN_CONF)),
            ]),
            fresh: true,
        });
        // kubeadm points the controller-manager and scheduler at their own node's apiserver.
        for client in [&cm, &sched] {
            let purpose = format!("{}->apiserver", client.kind);
            edges.push(edge(
                client,
                &api,
                &purpose,
                Some("kubeconfig-ca"),
                Some("client-cert"),
                "serving-cert",
                Some("client-ca"),
            ));
        }
        // kubectl with admin.conf goes through the load balancer: any apiserver may answer.
        for server in &apiservers {
            edges.push(edge(
                &admin,
                server,
                "admin->apiserver",
                Some("kubeconfig-ca"),
                Some("client-cert"),
                "serving-cert",
                Some("client-ca"),
            ));
        }
    }

    for node in &all_nodes {
        let kubelet = ComponentId::on(kind::KUBELET, node);
        disk.insert(kc_ca(node, paths::KUBELET_CONF), old());
        disk.insert(kc_cert(node, paths::KUBELET_CONF), old_signed());
        disk.insert(Source::file(node, paths::CA), old());
        disk.insert(
            Source::file(node, paths::KUBELET_SERVING),
            Material::cert(&format!("kubelet-self/{node}")),
        );
        if let Some(file) = &t.kubelet_certificate_authority {
            // With --kubelet-certificate-authority, kubelet serving certs are signed by the CA.
            disk.insert(Source::file(node, paths::KUBELET_SERVING), old_signed());
            disk.entry(Source::file(node, file)).or_insert_with(old);
        }
        components.push(Component {
            id: kubelet.clone(),
            slots: slots(&[
                ("kubeconfig-ca", kc_ca(node, paths::KUBELET_CONF)),
                ("client-cert", kc_cert(node, paths::KUBELET_CONF)),
                ("serving-cert", Source::file(node, paths::KUBELET_SERVING)),
                ("client-ca", Source::file(node, paths::CA)),
            ]),
            fresh: false,
        });
        for server in &apiservers {
            edges.push(edge(
                &kubelet,
                server,
                "kubelet->apiserver",
                Some("kubeconfig-ca"),
                Some("client-cert"),
                "serving-cert",
                Some("client-ca"),
            ));
            let trust = t.kubelet_certificate_authority.as_ref().map(|_| "kubelet-ca");
            edges.push(edge(
                server,
                &kubelet,
                "apiserver->kubelet",
                trust,
                Some("kubelet-client-cert"),
                "serving-cert",
                Some("client-ca"),
            ));
        }
    }

    let mut namespaces: BTreeSet<String> =
        ["default", "kube-system", "kube-public", "kube-node-lease"].map(String::from).into();
    namespaces.extend(t.pods.iter().map(|(ns, _, _)| ns.clone()));
    namespaces.extend(t.aggregated.iter().map(|(ns, _, _)| ns.clone()));
    for ns in &namespaces {
        disk.insert(root_ca_map(ns), old());
    }
    disk.insert(ext_auth.clone(), Material::bundle([ca::FP_OLD]));
    disk.insert(cluster_info.clone(), old());

    for (ns, name, node) in &t.pods {
        let pod = ComponentId::on(&format!("pod/{ns}/{name}"), node);
        components.push(Component {
            id: pod.clone(),
            slots: slots(&[("ca", root_ca_map(ns))]),
            fresh: false,
        });
        for server in &apiservers {
            // Pods authenticate with service-account tokens: only their trust of the server counts.
            edges.push(edge(
                &pod,
                server,
                "pod->apiserver",
                Some("ca"),
                None,
                "serving-cert",
                None,
            ));
        }
    }
    for (ns, name, node) in &t.aggregated {
        let agg = ComponentId::on(&format!("aggregated/{ns}/{name}"), node);
        let self_signed =
            Source::File { node: Some((*node).clone()), path: format!("aggregated:{name}") };
        disk.insert(self_signed.clone(), Material::cert(&format!("aggregated-self/{name}")));
        components.push(Component {
            id: agg.clone(),
            slots: slots(&[
                ("ca", root_ca_map(ns)),
                ("requestheader-ca", ext_auth.clone()),
                ("serving-cert", self_signed),
            ]),
            fresh: false,
        });
        for server in &apiservers {
            edges.push(edge(
                &agg,
                server,
                "aggregated->apiserver",
                Some("ca"),
                None,
                "serving-cert",
                None,
            ));
            // The apiserver proxies with its front-proxy client certificate; the aggregated server
            // checks it against the request-header CA it read at start.
            edges.push(edge(
                server,
                &agg,
                "apiserver->aggregated (front proxy)",
                None,
                Some("proxy-client-cert"),
                "serving-cert",
                Some("requestheader-ca"),
            ));
        }
    }
    let joiner = ComponentId::outside(kind::JOINER);
    components.push(Component {
        id: joiner.clone(),
        slots: slots(&[("ca", cluster_info)]),
        fresh: true,
    });
    for server in &apiservers {
        edges.push(edge(
            &joiner,
            server,
            "joiner->apiserver",
            Some("ca"),
            None,
            "serving-cert",
            None,
        ));
    }

    World::new(components, edges, disk)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUNDLE: &str = "/etc/kubernetes/pki/ca-bundle.crt";
    const FP_BUNDLE: &str = "/etc/kubernetes/pki/front-proxy-ca-bundle.crt";

    fn topology() -> Topology {
        Topology {
            control_planes: vec!["cp-1".into(), "cp-2".into()],
            workers: vec!["w-1".into()],
            pods: vec![("kube-system".into(), "coredns-a".into(), "w-1".into())],
            aggregated: vec![("kube-system".into(), "metrics-server".into(), "w-1".into())],
            kubelet_certificate_authority: None,
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
                    write(Source::file(n, paths::APISERVER), Material::cert(ca::NEW)),
                    write(
                        Source::file(n, paths::APISERVER_KUBELET_CLIENT),
                        Material::cert(ca::NEW),
                    ),
                    write(Source::file(n, paths::FRONT_PROXY_CLIENT), Material::cert(ca::FP_NEW)),
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
        assert_eq!(v.step, "9.3/apiserver@cp-1");
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
        assert_eq!(v.step, "12/kubelet@w-1");
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

    #[test]
    fn a_restart_is_what_makes_a_disk_change_count() {
        let t = topology();
        let mut w = kubeadm(&t);
        let api = id(kind::APISERVER, "cp-1");
        w.write(Source::file("cp-1", paths::APISERVER), Material::cert(ca::NEW));
        assert!(w.broken().is_empty(), "nothing loaded the new cert yet");
        w.restart(&api);
        assert!(!w.broken().is_empty());
    }
}
