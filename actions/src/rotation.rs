//! The runner: carries out the procedure's actions on the nodes and through the API, checks
//! their postconditions after a crash, and says how to undo them ([`engine::Runner`]).
//!
//! Every action checks its postcondition first, so running it twice is harmless. Contents are
//! resolved from what the journal recorded: the old CA from the `NewCa` step's outcome (which
//! reads it before anything changed), the new CA from the blob store, the original of every file
//! from its node's `Backup` step. Keys travel only in memory and on stdin to the node.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use engine::{Compensation, Runner, StepError, StepId, StepStatus, Summary};
use journal::{BlobStore, Hash};

use crate::api::ClusterApi;
use crate::edit::{Kubeconfig, KubeletConfig, Manifest};
use crate::inventory::{Inventory, NewCa};
use crate::kubeadm::component::{APISERVER, CONTROLLER_MANAGER, SCHEDULER};
use crate::kubeadm::file::PARKING;
use crate::kubeadm::{outcome, step};
use crate::node::{LocalNode, Node, NodeError};
use crate::pki::{self, Ca, Cert, KeyAlgorithm, KeyPolicy, SecretKey};
use crate::probe::{Seen, probe};
use crate::procedure::{Action, CaKind, Content, KubeletTarget, OPERATOR, new_ca_step};
use crate::trust::Topology;

/// Outcomes of finished steps, shared with the engine's event observer.
pub type Known = Rc<RefCell<BTreeMap<StepId, Summary>>>;

/// The rotation's runner.
pub struct Rotation<N: Node> {
    inventory: Inventory,
    nodes: BTreeMap<String, N>,
    operator: LocalNode,
    blobs: BlobStore,
    api: Option<ClusterApi>,
    known: Known,
    ranks: BTreeMap<StepId, u32>,
    /// A client certificate of the new cluster CA, made once, to observe that kubelets trust it.
    probe_identity: RefCell<Option<crate::probe::ClientIdentity>>,
    /// API clients derived from `api`: [trusting the new CA too, and also authenticating with a
    /// certificate of the new CA]; made once each.
    api_variants: RefCell<[Option<ClusterApi>; 2]>,
    /// Where each node's components load their inputs from and listen, as discovered at `init`
    /// (kubeadm's layout for a node it does not know).
    topology: Topology,
    /// Bound of every wait for a component to go down or come back.
    pub wait: Duration,
}

impl<N: Node> std::fmt::Debug for Rotation<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rotation").field("nodes", &self.nodes.keys()).finish_non_exhaustive()
    }
}

fn retry(e: impl std::fmt::Display) -> StepError {
    StepError::retryable(e.to_string())
}

fn terminal(e: impl std::fmt::Display) -> StepError {
    StepError::terminal(e.to_string())
}

fn node_err(e: NodeError) -> StepError {
    if e.is_transient() { retry(e) } else { terminal(e) }
}

fn text(bytes: Vec<u8>) -> String {
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

    fn node(&self, name: &str) -> Result<&N, StepError> {
        self.nodes.get(name).ok_or_else(|| terminal(format!("node {name} is not connected")))
    }

    /// The API client for the next call. Before the new CA exists: the operator's kubeconfig.
    /// Afterwards kubeca trusts the old and the new CA for the apiservers' serving certificates,
    /// and authenticates with a certificate every apiserver accepts, judged from their client CA
    /// files on disk (which the restarts keep equal to what is loaded): its own short-lived
    /// certificate of the new CA when all hold the new CA, else the operator's pre-rotation
    /// credentials (from the preflight backup; the operator's kubeconfig itself is rewritten
    /// during the rotation). Chosen from the files, not by trying: a refused client certificate
    /// is a trust failure in the cluster's logs.
    async fn api(&self) -> Result<ClusterApi, StepError> {
        let base = self
            .api
            .as_ref()
            .ok_or_else(|| terminal("no API client: the admin kubeconfig was not loaded"))?;
        if !self.known.borrow().contains_key(&StepId::from(new_ca_step(CaKind::Cluster))) {
            return Ok(base.clone());
        }
        let new_ca = self.new_ca(CaKind::Cluster)?;
        let new_der = new_ca.cert().der().to_vec();
        let all_accept_new = self.every_apiserver_accepts(&new_der).await?;
        let slot = usize::from(all_accept_new);
        if let Some(api) = &self.api_variants.borrow()[slot] {
            return Ok(api.clone());
        }
        let api = if all_accept_new {
            let (cert, key) = self.new_ca_identity("kubeca", Some("system:masters"))?;
            let cert_pem =
                Cert::from_der(cert, "kubeca's client certificate").map_err(terminal)?.to_pem();
            base.variant(&[new_der], Some((&cert_pem, &key))).map_err(terminal)?
        } else {
            let path = self.inventory.cluster.kubeconfig.display().to_string();
            let backup = self.outcome(&step::backup(None))?;
            let digest =
                backup.0.get(&path).filter(|d| *d != outcome::ABSENT).ok_or_else(|| {
                    terminal(format!(
                        "the preflight backup does not hold the operator's kubeconfig {path}"
                    ))
                })?;
            let text = text(self.blob(digest)?);
            ClusterApi::from_kubeconfig_text(
                &format!("{path} (as backed up before the rotation)"),
                &text,
            )
            .await
            .map_err(terminal)?
            .variant(&[new_der], None)
            .map_err(terminal)?
        };
        self.api_variants.borrow_mut()[slot] = Some(api.clone());
        Ok(api)
    }

    /// Whether every apiserver's client CA file, as its manifest names it now, holds the CA
    /// certificate `der`. The manifests are where discovery found them (each node's static pod
    /// directory), parked or not.
    async fn every_apiserver_accepts(&self, der: &[u8]) -> Result<bool, StepError> {
        for cp in self.inventory.control_planes() {
            let manifest_path = &self.topology.layout(&cp.name).apiserver.manifest;
            let manifest = Manifest::parse(
                &format!("{}:{manifest_path}", cp.name),
                &self.manifest_text(&cp.name, manifest_path).await?,
            )
            .map_err(terminal)?;
            let Some(file) = manifest.flag("--client-ca-file") else { return Ok(false) };
            let bundle = self.must_read(Some(&cp.name), &file).await?;
            if !pem_ders(&bundle).iter().any(|d| d == der) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    fn outcome(&self, step: &str) -> Result<Summary, StepError> {
        self.known.borrow().get(&StepId::from(step)).cloned().ok_or_else(|| {
            terminal(format!("step {step} has no recorded outcome; it must run first"))
        })
    }

    fn blob(&self, hex: &str) -> Result<Vec<u8>, StepError> {
        let digest = Hash::from_hex(hex).ok_or_else(|| terminal(format!("bad digest {hex}")))?;
        self.blobs.get(&digest).map_err(terminal)
    }

    fn old_cert(&self, kind: CaKind) -> Result<String, StepError> {
        let o = self.outcome(new_ca_step(kind))?;
        Ok(text(self.blob(o.0.get(outcome::OLD_CERT).map(String::as_str).unwrap_or_default())?))
    }

    fn new_ca(&self, kind: CaKind) -> Result<Ca, StepError> {
        let o = self.outcome(new_ca_step(kind))?;
        let get = |k: &str| o.0.get(k).cloned().unwrap_or_default();
        let cert =
            Cert::from_pem(&text(self.blob(&get(outcome::CERT))?), "new CA").map_err(terminal)?;
        let key = SecretKey::from_pem(&text(self.blob(&get(outcome::KEY))?), "new CA key")
            .map_err(terminal)?;
        Ca::load(cert, key).map_err(terminal)
    }

    /// The bytes `content` stands for.
    fn resolve(&self, content: Content) -> Result<Vec<u8>, StepError> {
        Ok(match content {
            Content::NewCert(k) => self.new_ca(k)?.cert_pem().into_bytes(),
            Content::NewKey(k) => self.new_ca(k)?.key_pem().into_bytes(),
            Content::OldCert(k) => self.old_cert(k)?.into_bytes(),
            Content::Bundle(k) => {
                let old = self.old_cert(k)?;
                let new = self.new_ca(k)?.cert_pem();
                pki::bundle(&[&old, &new]).map_err(terminal)?.into_bytes()
            }
        })
    }

    /// The node (or the operator's machine) an action on `node` goes to.
    async fn read_on(&self, node: Option<&str>, path: &str) -> Result<Option<Vec<u8>>, StepError> {
        match node {
            Some(n) => self.node(n)?.read(path).await.map_err(node_err),
            None => self.operator.read(path).await.map_err(node_err),
        }
    }

    async fn read_many_on(
        &self,
        node: Option<&str>,
        paths: &[&str],
    ) -> Result<Vec<Option<Vec<u8>>>, StepError> {
        match node {
            Some(n) => self.node(n)?.read_many(paths).await.map_err(node_err),
            None => self.operator.read_many(paths).await.map_err(node_err),
        }
    }

    async fn write_on(
        &self,
        node: Option<&str>,
        path: &str,
        data: &[u8],
        mode: u32,
    ) -> Result<(), StepError> {
        match node {
            Some(n) => self.node(n)?.write(path, data, mode).await.map_err(node_err),
            None => self.operator.write(path, data, mode).await.map_err(node_err),
        }
    }

    async fn must_read(&self, node: Option<&str>, path: &str) -> Result<String, StepError> {
        self.read_on(node, path).await?.map(text).ok_or_else(|| {
            terminal(format!("{}:{path} does not exist", node.unwrap_or("operator")))
        })
    }

    /// The original of `path` on `node`, from its backup: `Some(bytes)`, or `None` when it did
    /// not exist before the rotation.
    fn original(&self, node: Option<&str>, path: &str) -> Result<Option<Vec<u8>>, StepError> {
        let step = step::backup(node);
        let summary = self.outcome(&step)?;
        match summary.0.get(path).map(String::as_str) {
            Some(outcome::ABSENT) => Ok(None),
            Some(hex) => Ok(Some(self.blob(hex)?)),
            None => Err(terminal(format!("{step} did not back up {path}"))),
        }
    }

    /// Where a static pod listens and how to reach it: (host, port, path probed). The manifest
    /// being started says; where it names no port, the one discovered at `init` stands.
    async fn endpoint(
        &self,
        node: &str,
        component: &str,
        manifest: &Manifest,
    ) -> (String, u16, &'static str) {
        let address = self.inventory.node(node).map(|n| n.address.clone()).unwrap_or_default();
        let layout = self.topology.layout(node);
        let port = |discovered: u16| {
            manifest.flag("--secure-port").and_then(|p| p.parse().ok()).unwrap_or(discovered)
        };
        match component {
            APISERVER => (
                manifest.flag("--advertise-address").unwrap_or(address),
                port(layout.apiserver.port),
                "/readyz",
            ),
            CONTROLLER_MANAGER => (
                manifest.flag("--bind-address").unwrap_or(address),
                port(layout.controller_manager.port),
                "/healthz",
            ),
            SCHEDULER => (
                manifest.flag("--bind-address").unwrap_or(address),
                port(layout.scheduler.port),
                "/healthz",
            ),
            _ => (address, 0, "/healthz"),
        }
    }

    /// Probes a component from where it can be reached: a loopback bind from the node itself
    /// (over the node's shell), anything else from here.
    async fn observe(
        &self,
        node: &str,
        host: &str,
        port: u16,
        path: &str,
    ) -> Result<Seen, StepError> {
        if port == 0 {
            return Ok(Seen::Down);
        }
        if host.starts_with("127.") && self.inventory.node(node).is_none_or(|n| n.address != host) {
            // kubeadm binds the controller-manager and scheduler to 127.0.0.1 on the node.
            let script =
                r#"curl -sk -o /dev/null -w '%{http_code}' --max-time 3 "https://$1:$2$3" || true"#;
            let out = self
                .node(node)?
                .sh("probe", script, &[host, &port.to_string(), path], b"")
                .await
                .map_err(node_err)?;
            let code: u16 = out.stdout_text().trim().parse().unwrap_or(0);
            return Ok(if code == 0 {
                Seen::Down
            } else {
                Seen::Up { cert: Vec::new(), status: code, detail: String::new() }
            });
        }
        Ok(probe(host, port, path, Duration::from_secs(3)).await)
    }

    /// A static pod's manifest, from its place or, when a crash left it parked, from there.
    async fn manifest_text(&self, node: &str, manifest: &str) -> Result<String, StepError> {
        match self.read_on(Some(node), manifest).await? {
            Some(b) => Ok(text(b)),
            None => {
                let name = manifest.rsplit('/').next().unwrap_or("");
                self.must_read(Some(node), &format!("{PARKING}/{name}")).await
            }
        }
    }

    /// Stops a static pod (manifest parked), writes `text` as its manifest, and waits until it is
    /// back, answering, and (for the apiserver) presenting the certificate on disk.
    async fn restart_static_pod(
        &self,
        node: &str,
        component: &str,
        manifest_path: &str,
        text: &str,
    ) -> Result<Summary, StepError> {
        let n = self.node(node)?;
        let manifest =
            Manifest::parse(&format!("{node}:{manifest_path}"), text).map_err(terminal)?;
        let (host, port, path) = self.endpoint(node, component, &manifest).await;
        if component == APISERVER {
            self.apiservers_ready_for_restart_of(node).await?;
        }
        let name = manifest_path.rsplit('/').next().unwrap_or(component);
        let parked = format!("{PARKING}/{name}");
        n.sh("prepare parking", r#"mkdir -p -- "$1""#, &[PARKING], b"").await.map_err(node_err)?;
        if n.read(manifest_path).await.map_err(node_err)?.is_some() {
            n.rename(manifest_path, &parked).await.map_err(node_err)?;
        }
        // Wait until the kubelet has stopped it, so what answers next is the new process.
        let deadline = tokio::time::Instant::now() + self.wait;
        while self.observe(node, &host, port, path).await? != Seen::Down {
            if tokio::time::Instant::now() >= deadline {
                // Put the manifest back before giving up: never leave a component stopped.
                n.write(&parked, text.as_bytes(), 0o600).await.map_err(node_err)?;
                n.rename(&parked, manifest_path).await.map_err(node_err)?;
                return Err(retry(format!(
                    "node {node}: {component} did not stop within {} s",
                    self.wait.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Written over the parked file, then moved back: the manifest keeps its mode (kubeadm's
        // 0600, or whatever the operator chose), and the kubelet never sees half a file.
        n.write(&parked, text.as_bytes(), 0o600).await.map_err(node_err)?;
        n.rename(&parked, manifest_path).await.map_err(node_err)?;
        let expected = match component {
            APISERVER => match manifest.flag("--tls-cert-file") {
                Some(f) => Some(pem_der(&text_of(n.read(&f).await.map_err(node_err)?))?),
                None => None,
            },
            _ => None,
        };
        let restarted_at = jiff::Timestamp::now();
        // The apiserver is back when it is ready (its /readyz answers 200: it reaches etcd);
        // the others when they answer at all.
        let healthy =
            |status: u16| if component == APISERVER { status == 200 } else { status != 0 };
        let mut last: Seen;
        loop {
            match self.observe(node, &host, port, path).await? {
                Seen::Up { cert, status, .. }
                    if healthy(status) && expected.as_ref().is_none_or(|e| *e == cert) =>
                {
                    return Ok(Summary::new()
                        .with(outcome::RESTARTED_AT, restarted_at.to_string())
                        .with("serving-cert", hex_sha(&cert)));
                }
                seen => last = seen,
            }
            if tokio::time::Instant::now() >= deadline {
                let seen = match &last {
                    Seen::Down => format!("nothing answers on {host}:{port}"),
                    Seen::Up { cert, .. } if expected.as_ref().is_some_and(|e| e != cert) => {
                        format!("{host}:{port} presents another certificate than the one on disk")
                    }
                    Seen::Up { status, detail, .. } => {
                        format!("{path} on {host}:{port} answered HTTP {status}: {detail}")
                    }
                };
                return Err(retry(format!(
                    "node {node}: {component} did not come back healthy{} within {} s ({seen}); its manifest is in place, check its log (rollback restores the files it loaded)",
                    if expected.is_some() { " presenting the certificate on disk" } else { "" },
                    self.wait.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Before `node`'s apiserver is taken down: every other control plane's apiserver must be
    /// ready, and this one too unless it is already down (a crash left its manifest parked, or it
    /// fails to start). kubeca never takes an apiserver away while another one is not ready: with
    /// one etcd member or one apiserver already out, a restart of a second would leave the
    /// cluster one failure from an outage.
    async fn apiservers_ready_for_restart_of(&self, node: &str) -> Result<(), StepError> {
        for cp in self.inventory.control_planes() {
            let port = self.topology.layout(&cp.name).apiserver.port;
            let seen = probe(&cp.address, port, "/readyz", Duration::from_secs(3)).await;
            let why = match seen {
                Seen::Up { status: 200, .. } => continue,
                Seen::Down if cp.name == node => continue,
                Seen::Down => format!("does not answer on {}:{port}", cp.address),
                Seen::Up { status, detail, .. } => {
                    format!("is not ready (/readyz answered HTTP {status}: {detail})")
                }
            };
            return Err(retry(format!(
                "node {node}: not restarting kube-apiserver, because the apiserver on {} {why}; \
                 kubeca takes an apiserver down only while every other one is ready. Bring {} \
                 back (its log, its etcd member), then run kubeca again",
                cp.name, cp.name
            )));
        }
        Ok(())
    }

    /// A client certificate signed by the new cluster CA (a fresh key), for probing kubelets.
    fn new_ca_client(&self) -> Result<crate::probe::ClientIdentity, StepError> {
        if let Some(id) = self.probe_identity.borrow().as_ref() {
            return Ok(id.clone());
        }
        let id = self.new_ca_identity("kubeca-probe", None)?;
        *self.probe_identity.borrow_mut() = Some(id.clone());
        Ok(id)
    }

    /// A client certificate of the new cluster CA with a fresh key that lives only in this
    /// process's memory, valid for a day.
    fn new_ca_identity(
        &self,
        common_name: &str,
        organization: Option<&str>,
    ) -> Result<crate::probe::ClientIdentity, StepError> {
        let ca = self.new_ca(CaKind::Cluster)?;
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(terminal)?;
        params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
        if let Some(o) = organization {
            params.distinguished_name.push(rcgen::DnType::OrganizationName, o);
        }
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        // Only the template's validity length counts: the re-issue starts it now.
        params.not_before = rcgen::date_time_ymd(2000, 1, 1);
        params.not_after = rcgen::date_time_ymd(2000, 1, 2);
        let template_key = rcgen::KeyPair::generate().map_err(terminal)?;
        let template = params.self_signed(&template_key).map_err(terminal)?;
        let leaf = Cert::from_der(template.der().to_vec(), common_name).map_err(terminal)?;
        let issued =
            pki::reissue(&leaf, &ca, KeyPolicy::New, jiff::Timestamp::now(), &mut rand_core::OsRng)
                .map_err(terminal)?;
        let key =
            issued.new_key.ok_or_else(|| terminal("re-issue with a new key returned none"))?;
        Ok((issued.cert.der().to_vec(), key.to_pem()))
    }

    /// Restarts a node's kubelet and waits until it serves its port again; with `trusts_new`,
    /// until it accepts a client certificate of the new CA (it has loaded its new client CA).
    async fn restart_kubelet(&self, node: &str, trusts_new: bool) -> Result<Summary, StepError> {
        let n = self.node(node)?;
        let identity = if trusts_new { Some(self.new_ca_client()?) } else { None };
        let started = jiff::Timestamp::now();
        n.run("restart kubelet", "systemctl restart kubelet").await.map_err(node_err)?;
        let address = self.inventory.node(node).map(|x| x.address.clone()).unwrap_or_default();
        let port = self.topology.layout(node).kubelet.port;
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            let seen = crate::probe::probe_as(
                &address,
                port,
                "/healthz",
                Duration::from_secs(3),
                identity.as_ref(),
            )
            .await;
            let ok = match (&seen, &identity) {
                (Seen::Up { status, .. }, Some(_)) => *status != 0,
                (Seen::Up { .. }, None) => true,
                (Seen::Down, _) => false,
            };
            let ready = match (&self.api, ok) {
                (Some(api), true) => api.node_ready_since(node, started).await.unwrap_or(false),
                (None, true) => true,
                (_, false) => false,
            };
            if ready {
                return Ok(Summary::new()
                    .with(outcome::RESTARTED_AT, jiff::Timestamp::now().to_string())
                    .with("accepts-new-ca-client", trusts_new.to_string()));
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(retry(format!(
                    "node {node}: the kubelet did not {} and report its node Ready within {} s",
                    if trusts_new {
                        format!("accept a client certificate of the new CA on :{port}")
                    } else {
                        format!("serve :{port} again")
                    },
                    self.wait.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    async fn files_hold(
        &self,
        node: &str,
        files: &[(String, Content, u32)],
    ) -> Result<bool, StepError> {
        for (path, content, _) in files {
            let want = self.resolve(*content)?;
            if self.node(node)?.read(path).await.map_err(node_err)?.as_deref()
                != Some(want.as_slice())
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn kubelet_done(
        &self,
        node: &str,
        config: &str,
        kubeconfig: &str,
        target: &KubeletTarget,
    ) -> Result<bool, StepError> {
        let c = KubeletConfig::parse(config, &self.must_read(Some(node), config).await?)
            .map_err(terminal)?;
        if c.client_ca_file().as_deref() != Some(target.client_ca_file.as_str()) {
            return Ok(false);
        }
        let k = Kubeconfig::parse(kubeconfig, &self.must_read(Some(node), kubeconfig).await?)
            .map_err(terminal)?;
        let want = text(self.resolve(target.kubeconfig_ca)?);
        if k.ca_data().map_err(terminal)?.as_deref() != Some(want.as_str()) {
            return Ok(false);
        }
        // The certificates are written after the config and the kubeconfig's CA: a crash in
        // between leaves those right and the certificates still of the old CA.
        let now = jiff::Timestamp::now();
        let under_new_ca = |pem: &str, origin: &str| -> Result<bool, StepError> {
            let ca = self.new_ca(CaKind::Cluster)?;
            let leaf = Cert::from_pem(pem, origin).map_err(terminal)?;
            Ok(pki::verify_chain(&leaf, std::slice::from_ref(ca.cert()), now).is_ok())
        };
        if target.reissue_client_cert {
            let pem = match k.client_cert_data().map_err(terminal)? {
                Some(pem) => pem,
                None => match k.client_files().0 {
                    Some(file) => self.must_read(Some(node), &file).await?,
                    None => String::new(),
                },
            };
            if !pem.is_empty()
                && !under_new_ca(&pem, &format!("{node}:{kubeconfig} client certificate"))?
            {
                return Ok(false);
            }
        }
        if let Some(serving) = &target.reissue_serving_cert {
            let pem = self.must_read(Some(node), serving).await?;
            if !under_new_ca(&pem, &format!("{node}:{serving}"))? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    async fn apply_action(&self, step: &StepId, action: &Action) -> Result<Summary, StepError> {
        let now = jiff::Timestamp::now();
        match action {
            Action::Preflight { node, cas } => self.preflight(node, cas, now).await,
            Action::Backup { node, paths } => {
                let mut s = Summary::new();
                let on = (node != OPERATOR).then_some(node.as_str());
                // One command for the node's whole backup: a round trip per file made this the
                // longest step of a rotation.
                let names: Vec<&str> = paths.iter().map(String::as_str).collect();
                for (path, file) in paths.iter().zip(self.read_many_on(on, &names).await?) {
                    let value = match file {
                        Some(bytes) => self.blobs.put(&bytes).map_err(terminal)?.to_hex(),
                        None => outcome::ABSENT.into(),
                    };
                    s = s.with(path.clone(), value);
                }
                Ok(s)
            }
            Action::NewCa { ca, node, old_cert } => {
                let old_pem = self.must_read(Some(node), old_cert).await?;
                let old =
                    Cert::from_pem(&old_pem, &format!("{node}:{old_cert}")).map_err(terminal)?;
                let source = match ca {
                    CaKind::Cluster => &self.inventory.rotation.new_ca,
                    CaKind::FrontProxy => &self.inventory.rotation.new_front_proxy_ca,
                };
                let new = match source {
                    NewCa::Import { cert, key } => {
                        let c = std::fs::read_to_string(cert)
                            .map_err(|e| terminal(format!("{}: {e}", cert.display())))?;
                        let k = std::fs::read_to_string(key)
                            .map_err(|e| terminal(format!("{}: {e}", key.display())))?;
                        let c =
                            Cert::from_pem(&c, &cert.display().to_string()).map_err(terminal)?;
                        let k = SecretKey::from_pem(&k, &key.display().to_string())
                            .map_err(terminal)?;
                        {
                            let ca = Ca::import(c, k).map_err(terminal)?;
                            // An imported CA must be valid now, not only well-formed.
                            ca.check(now).map_err(terminal)?;
                            ca
                        }
                    }
                    NewCa::Generate(_) => {
                        let algorithm: KeyAlgorithm =
                            self.inventory.rotation.key_algorithm.parse().map_err(terminal)?;
                        let spec = algorithm.resolve(&old).map_err(terminal)?;
                        let name = match ca {
                            CaKind::Cluster => "kubernetes",
                            CaKind::FrontProxy => "front-proxy-ca",
                        };
                        Ca::generate(
                            name,
                            spec,
                            self.inventory.rotation.validity_days,
                            now,
                            &mut rand_core::OsRng,
                        )
                        .map_err(terminal)?
                    }
                };
                let cert = self.blobs.put(new.cert_pem().as_bytes()).map_err(terminal)?;
                let key = self.blobs.put(new.key_pem().as_bytes()).map_err(terminal)?;
                let old_digest = self.blobs.put(old_pem.as_bytes()).map_err(terminal)?;
                Ok(Summary::new()
                    .with(outcome::CERT, cert.to_hex())
                    .with(outcome::KEY, key.to_hex())
                    .with(outcome::OLD_CERT, old_digest.to_hex())
                    .with("fingerprint", new.cert().fingerprint())
                    .with("discovery-hash", new.cert().discovery_hash()))
            }
            Action::PutFiles { node, files, .. } => {
                let n = self.node(node)?;
                let mut s = Summary::new();
                for (path, content, mode) in files {
                    let data = self.resolve(*content)?;
                    n.write(path, &data, *mode).await.map_err(node_err)?;
                    s = s.with(path.clone(), Hash::of(&data).to_hex());
                }
                Ok(s)
            }
            Action::SetFlags { node, component, manifest, flags, .. } => {
                let file = format!("{node}:{manifest}");
                let current = self.manifest_text(node, manifest).await?;
                let mut m = Manifest::parse(&file, &current).map_err(terminal)?;
                for (flag, value) in flags {
                    m.set_flag(flag, value).map_err(terminal)?;
                }
                self.restart_static_pod(node, component, manifest, &m.text()).await
            }
            Action::RestartStaticPod { node, component, manifest } => {
                let current = self.manifest_text(node, manifest).await?;
                self.restart_static_pod(node, component, manifest, &current).await
            }
            Action::SetKubeconfigCa { node, path, content, .. } => {
                let mut k = Kubeconfig::parse(path, &self.must_read(node.as_deref(), path).await?)
                    .map_err(terminal)?;
                let pem = text(self.resolve(*content)?);
                k.set_ca_data(&pem).map_err(terminal)?;
                self.write_on(node.as_deref(), path, k.text().as_bytes(), 0o600).await?;
                Ok(Summary::new().with("ca", Hash::of(pem.as_bytes()).to_hex()))
            }
            Action::ReissueKubeconfigClient { node, path, .. } => {
                let mut k = Kubeconfig::parse(path, &self.must_read(node.as_deref(), path).await?)
                    .map_err(terminal)?;
                let cert_pem = k
                    .client_cert_data()
                    .map_err(terminal)?
                    .ok_or_else(|| terminal(format!("{path}: no embedded client certificate")))?;
                let key_pem = k
                    .client_key_data()
                    .map_err(terminal)?
                    .ok_or_else(|| terminal(format!("{path}: no embedded client key")))?;
                let leaf = Cert::from_pem(&cert_pem, path).map_err(terminal)?;
                let ca = self.new_ca(CaKind::Cluster)?;
                let cert = match renewed(&leaf, &ca, now)? {
                    Some(cert) => {
                        k.set_client_data(&cert.to_pem(), &key_pem).map_err(terminal)?;
                        self.write_on(node.as_deref(), path, k.text().as_bytes(), 0o600).await?;
                        cert
                    }
                    None => leaf,
                };
                Ok(Summary::new().with("client-cert", cert.fingerprint()))
            }
            Action::ReissueCert { node, path, ca, .. } => {
                let pem = self.must_read(Some(node), path).await?;
                let leaf = Cert::from_pem(&pem, &format!("{node}:{path}")).map_err(terminal)?;
                let cert = match renewed(&leaf, &self.new_ca(*ca)?, now)? {
                    Some(cert) => {
                        self.node(node)?
                            .write(path, cert.to_pem().as_bytes(), 0o644)
                            .await
                            .map_err(node_err)?;
                        cert
                    }
                    None => leaf,
                };
                Ok(Summary::new().with("cert", cert.fingerprint()))
            }
            Action::RollKubelet { node, config, kubeconfig, target, .. } => {
                let n = self.node(node)?;
                let mut c =
                    KubeletConfig::parse(config, &self.must_read(Some(node), config).await?)
                        .map_err(terminal)?;
                if c.set_client_ca_file(&target.client_ca_file).map_err(terminal)? {
                    n.write(config, c.text().as_bytes(), 0o644).await.map_err(node_err)?;
                }
                let mut k =
                    Kubeconfig::parse(kubeconfig, &self.must_read(Some(node), kubeconfig).await?)
                        .map_err(terminal)?;
                let pem = text(self.resolve(target.kubeconfig_ca)?);
                let mut changed = k.set_ca_data(&pem).map_err(terminal)?;
                if target.reissue_client_cert {
                    let ca = self.new_ca(CaKind::Cluster)?;
                    if let Some(cert_pem) = k.client_cert_data().map_err(terminal)? {
                        let key_pem = k.client_key_data().map_err(terminal)?.unwrap_or_default();
                        let leaf = Cert::from_pem(&cert_pem, kubeconfig).map_err(terminal)?;
                        if let Some(cert) = renewed(&leaf, &ca, now)? {
                            changed |=
                                k.set_client_data(&cert.to_pem(), &key_pem).map_err(terminal)?;
                        }
                    } else if let (Some(cert_file), key_file) = k.client_files() {
                        // kubelet-client-current.pem holds certificate and key; keep the key.
                        let both = self.must_read(Some(node), &cert_file).await?;
                        let leaf = Cert::from_pem(&both, &format!("{node}:{cert_file}"))
                            .map_err(terminal)?;
                        if let Some(cert) = renewed(&leaf, &ca, now)? {
                            let key_pem = if key_file.as_deref() == Some(cert_file.as_str()) {
                                key_blocks(&both)
                            } else {
                                String::new()
                            };
                            let out = format!("{}{key_pem}", cert.to_pem());
                            n.write(&cert_file, out.as_bytes(), 0o600).await.map_err(node_err)?;
                        }
                    }
                }
                if changed {
                    n.write(kubeconfig, k.text().as_bytes(), 0o600).await.map_err(node_err)?;
                }
                if let Some(serving) = &target.reissue_serving_cert {
                    let ca = self.new_ca(CaKind::Cluster)?;
                    let pem = self.must_read(Some(node), serving).await?;
                    let leaf =
                        Cert::from_pem(&pem, &format!("{node}:{serving}")).map_err(terminal)?;
                    if let Some(cert) = renewed(&leaf, &ca, now)? {
                        n.write(serving, cert.to_pem().as_bytes(), 0o644)
                            .await
                            .map_err(node_err)?;
                    }
                }
                self.restart_kubelet(node, true).await
            }
            Action::RestartKubelet { node } => self.restart_kubelet(node, false).await,
            Action::WaitRootCa { content } => {
                let pem = text(self.resolve(*content)?);
                self.api().await?.wait_root_ca(&pem).await.map_err(retry)?;
                Ok(Summary::new().with("root-ca", Hash::of(pem.as_bytes()).to_hex()))
            }
            Action::RollWorkloads { only, round } => {
                let rolled = self.api().await?.roll_workloads(only, round).await.map_err(retry)?;
                Ok(Summary::new().with("rolled", rolled.len().to_string()))
            }
            Action::SetClusterInfo { content, .. } => {
                let pem = text(self.resolve(*content)?);
                self.api().await?.set_cluster_info(&pem).await.map_err(retry)?;
                Ok(Summary::new().with("ca", Hash::of(pem.as_bytes()).to_hex()))
            }
            Action::PrintDiscoveryHash => {
                let hash = self.new_ca(CaKind::Cluster)?.cert().discovery_hash();
                tracing::info!(%hash, "joining nodes now use --discovery-token-ca-cert-hash {hash}");
                Ok(Summary::new().with("discovery-token-ca-cert-hash", hash))
            }
            Action::CheckLogs => {
                let since = self.switch_time();
                let errors = self.api().await?.tls_errors_since(since).await.map_err(retry)?;
                if errors.is_empty() {
                    Ok(Summary::new().with("tls-errors", "0"))
                } else {
                    Err(terminal(format!(
                        "TLS errors in logs since the switch:\n{}",
                        errors.join("\n")
                    )))
                }
            }
            Action::CheckEdges => self.check_edges().await,
            Action::ListStalePods => {
                let pods = self
                    .api()
                    .await?
                    .pods_started_before(self.switch_time())
                    .await
                    .map_err(retry)?;
                if !pods.is_empty() {
                    tracing::warn!(
                        count = pods.len(),
                        "pods started before the switch hold the old CA in memory: {}",
                        pods.join(", ")
                    );
                }
                Ok(Summary::new().with("stale-pods", pods.len().to_string()))
            }
            Action::RemoveFiles { node, paths, .. } => {
                for p in paths {
                    self.node(node)?.remove(p).await.map_err(node_err)?;
                }
                Ok(Summary::new().with("removed", paths.len().to_string()))
            }
            Action::RestoreFiles { node, paths } => {
                let mut s = Summary::new();
                for path in paths {
                    match self.original(node.as_deref(), path)? {
                        Some(bytes) => {
                            self.write_on(node.as_deref(), path, &bytes, 0o600).await?;
                            s = s.with(path.clone(), Hash::of(&bytes).to_hex());
                        }
                        None => {
                            match node.as_deref() {
                                Some(n) => self.node(n)?.remove(path).await.map_err(node_err)?,
                                None => self.operator.remove(path).await.map_err(node_err)?,
                            }
                            s = s.with(path.clone(), outcome::ABSENT);
                        }
                    }
                }
                let _ = step;
                Ok(s)
            }
        }
    }

    /// When the first apiserver switched (logs are scanned from then on).
    fn switch_time(&self) -> jiff::Timestamp {
        let known = self.known.borrow();
        known
            .iter()
            .filter(|(id, _)| id.as_str().starts_with(step::SWITCH_APISERVER))
            .filter_map(|(_, s)| s.0.get(outcome::RESTARTED_AT)?.parse().ok())
            .min()
            .unwrap_or_else(jiff::Timestamp::now)
    }

    async fn preflight(
        &self,
        node: &str,
        cas: &[(String, String)],
        now: jiff::Timestamp,
    ) -> Result<Summary, StepError> {
        let mut s = Summary::new();
        if self.inventory.control_planes().count() < 2 {
            tracing::warn!(
                "only one API server: the cluster API is down while it restarts (upstream caution)"
            );
            s = s.with("warning", "single apiserver: downtime during its restarts");
        }
        for n in &self.inventory.nodes {
            self.node(&n.name)?.run("reach", "true").await.map_err(node_err)?;
        }
        for (cert, fingerprint) in
            check_old_cas(self.node(node)?, cas, now).await.map_err(terminal)?
        {
            s = s.with(cert, fingerprint);
        }
        Ok(s)
    }

    async fn check_edges(&self) -> Result<Summary, StepError> {
        // Every apiserver must present a certificate from the new CA.
        let ca = self.new_ca(CaKind::Cluster)?;
        let now = jiff::Timestamp::now();
        let mut checked = 0;
        for n in self.inventory.control_planes() {
            let port = self.topology.layout(&n.name).apiserver.port;
            match probe(&n.address, port, "/readyz", Duration::from_secs(5)).await {
                Seen::Up { cert, .. } => {
                    let c =
                        Cert::from_der(cert, &format!("apiserver@{}", n.name)).map_err(terminal)?;
                    pki::verify_chain(&c, std::slice::from_ref(ca.cert()), now)
                        .map_err(|e| terminal(format!("apiserver@{}: {e}", n.name)))?;
                    checked += 1;
                }
                Seen::Down => return Err(retry(format!("apiserver@{} does not answer", n.name))),
            }
        }
        Ok(Summary::new().with("apiservers", checked.to_string()))
    }

    async fn check_action(&self, action: &Action) -> Result<Option<Summary>, StepError> {
        let done =
            |ok: bool| Ok(ok.then(|| Summary::new().with("recovered", "postcondition held")));
        match action {
            Action::PutFiles { node, files, .. } => done(self.files_hold(node, files).await?),
            Action::SetKubeconfigCa { node, path, content, .. } => {
                let k = Kubeconfig::parse(path, &self.must_read(node.as_deref(), path).await?)
                    .map_err(terminal)?;
                let want = text(self.resolve(*content)?);
                done(k.ca_data().map_err(terminal)?.as_deref() == Some(want.as_str()))
            }
            Action::ReissueKubeconfigClient { node, path, .. } => {
                let k = Kubeconfig::parse(path, &self.must_read(node.as_deref(), path).await?)
                    .map_err(terminal)?;
                let Some(pem) = k.client_cert_data().map_err(terminal)? else { return done(false) };
                let leaf = Cert::from_pem(&pem, path).map_err(terminal)?;
                let ca = self.new_ca(CaKind::Cluster)?;
                done(
                    pki::verify_chain(
                        &leaf,
                        std::slice::from_ref(ca.cert()),
                        jiff::Timestamp::now(),
                    )
                    .is_ok(),
                )
            }
            Action::ReissueCert { node, path, ca, .. } => {
                let leaf = Cert::from_pem(&self.must_read(Some(node), path).await?, path)
                    .map_err(terminal)?;
                let ca = self.new_ca(*ca)?;
                done(
                    pki::verify_chain(
                        &leaf,
                        std::slice::from_ref(ca.cert()),
                        jiff::Timestamp::now(),
                    )
                    .is_ok(),
                )
            }
            Action::RemoveFiles { node, paths, .. } => {
                for p in paths {
                    if self.node(node)?.read(p).await.map_err(node_err)?.is_some() {
                        return done(false);
                    }
                }
                done(true)
            }
            Action::RollKubelet { node, config, kubeconfig, target, .. } => {
                // Even when the files are right, the kubelet may not have been restarted: only
                // the restart itself is repeated (it is harmless).
                if self.kubelet_done(node, config, kubeconfig, target).await? {
                    self.restart_kubelet(node, true).await.map(Some)
                } else {
                    Ok(None)
                }
            }
            // Everything else is repeated: restarts and waits are idempotent, generation is
            // redone (nothing used the half-made CA yet), backups read the same files.
            _ => Ok(None),
        }
    }
}

impl<N: Node> Runner<Action> for Rotation<N> {
    async fn check(&self, _step: &StepId, action: &Action) -> Result<Option<Summary>, StepError> {
        self.check_action(action).await
    }

    async fn apply(&self, step: &StepId, action: &Action) -> Result<Summary, StepError> {
        self.apply_action(step, action).await
    }

    fn compensate(
        &self,
        step: &StepId,
        action: &Action,
        _outcome: Option<&Summary>,
    ) -> Vec<Compensation<Action>> {
        crate::procedure::compensations(
            action,
            self.ranks.get(step).copied().unwrap_or(0),
            &self.topology,
        )
    }
}

/// Checks the old CAs on `node`: each (certificate, key) pair must parse, the key must be the
/// certificate's, the certificate a CA, valid now. Returns each certificate's fingerprint, or
/// an error naming the node and file.
pub async fn check_old_cas<N: Node>(
    node: &N,
    cas: &[(String, String)],
    now: jiff::Timestamp,
) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (cert, key) in cas {
        let read = |path: String| async move {
            match node.read(&path).await {
                Ok(Some(b)) => Ok(text(b)),
                Ok(None) => Err(format!("node {}: {path} does not exist", node.name())),
                Err(e) => Err(e.to_string()),
            }
        };
        let origin = |p: &str| format!("{}:{p}", node.name());
        let c =
            Cert::from_pem(&read(cert.clone()).await?, &origin(cert)).map_err(|e| e.to_string())?;
        let k = SecretKey::from_pem(&read(key.clone()).await?, &origin(key))
            .map_err(|e| e.to_string())?;
        let ca = Ca::load(c, k).map_err(|e| e.to_string())?;
        ca.check(now).map_err(|e| e.to_string())?;
        out.push((cert.clone(), ca.cert().fingerprint()));
    }
    Ok(out)
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

/// `leaf` re-issued by `ca` (same key), or `None` when `ca` already signed it: re-issuing is
/// idempotent, so a step repeated after a crash does not mint yet another certificate.
fn renewed(leaf: &Cert, ca: &Ca, now: jiff::Timestamp) -> Result<Option<Cert>, StepError> {
    if pki::verify_chain(leaf, std::slice::from_ref(ca.cert()), now).is_ok() {
        return Ok(None);
    }
    let new =
        pki::reissue(leaf, ca, KeyPolicy::Keep, now, &mut rand_core::OsRng).map_err(terminal)?;
    Ok(Some(new.cert))
}

fn text_of(bytes: Option<Vec<u8>>) -> String {
    bytes.map(text).unwrap_or_default()
}

fn pem_der(pem: &str) -> Result<Vec<u8>, StepError> {
    Cert::from_pem(pem, "serving certificate").map(|c| c.der().to_vec()).map_err(terminal)
}

/// The DER of every certificate in a PEM text.
fn pem_ders(pem: &str) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .filter_map(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
        .collect()
}

fn hex_sha(der: &[u8]) -> String {
    Hash::of(der).to_hex()
}

/// The private-key blocks of a PEM text (kubelet-client-current.pem holds cert and key).
fn key_blocks(pem: &str) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in pem.lines() {
        if line.starts_with("-----BEGIN") && line.contains("PRIVATE KEY") {
            inside = true;
        }
        if inside {
            out.push_str(line);
            out.push('\n');
        }
        if line.starts_with("-----END") && line.contains("PRIVATE KEY") {
            inside = false;
        }
    }
    out
}

/// A runner for commands that only read the journal or record an approval: it refuses to act,
/// and has nothing to undo (it is never used for `run` or `rollback`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Idle;

impl Runner<Action> for Idle {
    async fn check(&self, step: &StepId, _: &Action) -> Result<Option<Summary>, StepError> {
        Err(terminal(format!("step {step}: this command does not carry out steps")))
    }

    async fn apply(&self, step: &StepId, _: &Action) -> Result<Summary, StepError> {
        Err(terminal(format!("step {step}: this command does not carry out steps")))
    }

    fn compensate(&self, _: &StepId, _: &Action, _: Option<&Summary>) -> Vec<Compensation<Action>> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{self, elsewhere};
    use crate::kubeadm::path;
    use crate::pki::KeySpec;
    use std::path::Path;

    const APISERVER_YAML: &str = include_str!("../testdata/kubeadm/kube-apiserver.yaml");
    const CM_YAML: &str = include_str!("../testdata/kubeadm/kube-controller-manager.yaml");
    const KUBELET_CONFIG: &str = include_str!("../testdata/kubeadm/kubelet-config.yaml");
    const KUBELET_CONF: &str = include_str!("../testdata/kubeadm/kubelet.conf");

    /// Writes kubeadm's file `path` with `text` under `root`, where [`elsewhere`] keeps it.
    fn put_elsewhere(root: &Path, path: &str, text: &str) {
        let (path, text) = elsewhere(path, text);
        let p = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    /// A runner over control planes `cp-1` (at 127.0.0.1) and `cp-2` (at 127.0.0.2), each a
    /// directory laid out as [`elsewhere`] says, with their layouts as discovered when
    /// `discovered`.
    async fn runner(dir: &Path, discovered: bool) -> Rotation<LocalNode> {
        for f in ["admin.conf", "id", "known_hosts"] {
            std::fs::write(dir.join(f), "x").unwrap();
        }
        let toml = "[cluster]\nname = \"t\"\nkubeconfig = \"admin.conf\"\napi_endpoint = \"https://127.0.0.1:6443\"\n\
                    [ssh]\nidentity = \"id\"\nknown_hosts = \"known_hosts\"\n\
                    [[nodes]]\nname = \"cp-1\"\naddress = \"127.0.0.1\"\nroles = [\"control-plane\"]\n\
                    [[nodes]]\nname = \"cp-2\"\naddress = \"127.0.0.2\"\nroles = [\"control-plane\"]\n";
        let inventory = Inventory::parse(toml, Path::new("t.toml"), dir).unwrap();
        let mut nodes = BTreeMap::new();
        let mut topology = Topology::default();
        for name in ["cp-1", "cp-2"] {
            let root = dir.join(name);
            put_elsewhere(&root, "/etc/kubernetes/manifests/kube-apiserver.yaml", APISERVER_YAML);
            put_elsewhere(&root, "/etc/kubernetes/manifests/kube-controller-manager.yaml", CM_YAML);
            put_elsewhere(&root, "/var/lib/kubelet/config.yaml", KUBELET_CONFIG);
            put_elsewhere(&root, "/etc/kubernetes/kubelet.conf", KUBELET_CONF);
            put_elsewhere(&root, "/etc/kubernetes/controller-manager.conf", KUBELET_CONF);
            put_elsewhere(&root, fixtures::DROPIN.0, fixtures::DROPIN.1);
            let node = LocalNode::new(name, &root);
            let facts = crate::discovery::discover(&node).await.unwrap();
            topology.control_planes.push(name.into());
            topology.layouts.insert(name.into(), facts.layout());
            nodes.insert(name.to_owned(), node);
        }
        let state = dir.join("state");
        journal::create_private_dir(&state).unwrap();
        let blobs = BlobStore::open(&state).unwrap();
        let runner = Rotation::new(inventory, nodes, blobs, None, &engine::State::default());
        if discovered { runner.with_topology(topology) } else { runner }
    }

    /// A new cluster CA, recorded as the `prepare/new-ca` step's outcome.
    fn with_new_ca(runner: &Rotation<LocalNode>) -> Ca {
        let now = jiff::Timestamp::now();
        let ca =
            Ca::generate("kubernetes", KeySpec::EcdsaP256, 1, now, &mut rand_core::OsRng).unwrap();
        let cert = runner.blobs.put(ca.cert_pem().as_bytes()).unwrap();
        let key = runner.blobs.put(ca.key_pem().as_bytes()).unwrap();
        runner.known.borrow_mut().insert(
            StepId::from(step::NEW_CA),
            Summary::new().with(outcome::CERT, cert.to_hex()).with(outcome::KEY, key.to_hex()),
        );
        ca
    }

    /// A TLS server on `host` presenting `identity` (certificate DER, key PEM), answering 200.
    async fn serve(host: &str, identity: crate::probe::ClientIdentity) -> u16 {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(identity.0)],
                PrivateKeyDer::from_pem_slice(identity.1.as_bytes()).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind((host, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut tls) = acceptor.accept(tcp).await {
                        let mut buf = [0u8; 512];
                        let _ = tls.read(&mut buf).await;
                        let _ =
                            tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn a_kubelet_roll_is_undone_by_restoring_the_client_certificate_where_it_is() {
        let dir = tempfile::tempdir().unwrap();
        let roll = Action::RollKubelet {
            node: "cp-1".into(),
            config: fixtures::KUBELET_CONFIG.into(),
            kubeconfig: fixtures::KUBELET_KUBECONFIG.into(),
            target: KubeletTarget {
                client_ca_file: format!("{}/ca-bundle.crt", fixtures::PKI),
                kubeconfig_ca: Content::Bundle(CaKind::Cluster),
                reissue_client_cert: true,
                reissue_serving_cert: None,
            },
            prior: None,
        };
        let restored = |runner: &Rotation<LocalNode>| {
            let undo = runner.compensate(&StepId::from("trust-nodes/kubelet/cp-1"), &roll, None);
            match &undo[0].action {
                Action::RestoreFiles { paths, .. } => paths.clone(),
                other => panic!("the undo restores files, not {other:?}"),
            }
        };
        let paths = restored(&runner(dir.path(), true).await);
        assert!(paths.iter().any(|p| p == fixtures::KUBELET_CLIENT_CERT), "{paths:?}");
        assert!(!paths.iter().any(|p| p == path::KUBELET_CLIENT_CURRENT), "{paths:?}");
        // Without a recorded layout, kubeadm's, as before layouts were recorded.
        let dir = tempfile::tempdir().unwrap();
        let paths = restored(&runner(dir.path(), false).await);
        assert!(paths.iter().any(|p| p == path::KUBELET_CLIENT_CURRENT), "{paths:?}");
    }

    #[tokio::test]
    async fn the_apiservers_client_ca_is_read_through_manifests_in_their_static_pod_directory() {
        let dir = tempfile::tempdir().unwrap();
        let runner = runner(dir.path(), true).await;
        let ca = with_new_ca(&runner);
        let der = ca.cert().der().to_vec();
        let client_ca = |node: &str| {
            let file =
                dir.path().join(node).join(fixtures::APISERVER_CLIENT_CA.trim_start_matches('/'));
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            file
        };
        std::fs::write(client_ca("cp-1"), ca.cert_pem()).unwrap();
        std::fs::write(client_ca("cp-2"), "").unwrap();
        assert!(!runner.every_apiserver_accepts(&der).await.unwrap(), "cp-2 does not yet");
        std::fs::write(client_ca("cp-2"), ca.cert_pem()).unwrap();
        assert!(runner.every_apiserver_accepts(&der).await.unwrap());
        // Looked for at kubeadm's default path, the manifest is not there.
        let dir = tempfile::tempdir().unwrap();
        let runner = super::tests::runner(dir.path(), false).await;
        let e = runner.every_apiserver_accepts(&der).await.unwrap_err();
        assert!(e.message.contains("kube-apiserver.yaml"), "{}", e.message);
    }

    #[tokio::test]
    async fn components_are_reached_on_the_ports_discovery_found() {
        let dir = tempfile::tempdir().unwrap();
        let runner = runner(dir.path(), true).await;
        // A manifest that names no port: the discovered one stands; one that does: it wins.
        let bare =
            Manifest::parse("m", &APISERVER_YAML.replace("- --secure-port=6443\n", "")).unwrap();
        let (_, port, _) = runner.endpoint("cp-1", APISERVER, &bare).await;
        assert_eq!(port, fixtures::APISERVER_PORT);
        let named = Manifest::parse("m", &APISERVER_YAML.replace("=6443", "=7443")).unwrap();
        assert_eq!(runner.endpoint("cp-1", APISERVER, &named).await.1, 7443);

        // Each apiserver is probed on its own port: the readiness gate before a restart and
        // the final check of the served certificates.
        let mut runner = runner;
        with_new_ca(&runner);
        for (name, host) in [("cp-1", "127.0.0.1"), ("cp-2", "127.0.0.2")] {
            let identity = runner.new_ca_identity(host, None).unwrap();
            let port = serve(host, identity).await;
            runner.topology.layouts.get_mut(name).unwrap().apiserver.port = port;
        }
        runner
            .apiservers_ready_for_restart_of("cp-1")
            .await
            .unwrap_or_else(|e| panic!("{}", e.message));
        let summary = runner.check_edges().await.unwrap_or_else(|e| panic!("{}", e.message));
        assert_eq!(summary.0["apiservers"], "2");
    }
}
