//! Control-plane static pods: flags pointed at other files, and restarts that wait until the
//! component is observed healthy with what it should now load.
//!
//! A static pod is restarted by parking its manifest outside the kubelet's static pod directory
//! until the component is seen down, then moving the (possibly edited) manifest back: the
//! kubelet never sees half a file, and what answers next is the new process. An apiserver is
//! taken down only while every other control plane's apiserver is ready.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use engine::{Compensation, FollowUp, Summary};
use journal::Hash;

use super::CaKind;
use super::runner::text;
use super::{Action, Error, Kind, Rotation, compensation};
use crate::edit::Manifest;
use crate::kubeadm::component::{
    APISERVER, CLOUD_CONTROLLER_MANAGER, CONTROLLER_MANAGER, SCHEDULER,
};
use crate::kubeadm::file::PARKING;
use crate::kubeadm::{object, outcome, slot};
use crate::node::{Node, NodeError, target};
use crate::pki::Cert;
use crate::probe::{ClientIdentity, Seen, probe_as, probe_over_as};
use crate::trust::{self, ComponentId, Effect, Source};

/// The restart that makes `component` on `node` load what a rollback restored. Its key names
/// its rollback step (`restart:cp-1/kube-apiserver@<rank>`).
pub(super) fn restart_after(node: &str, component: &str, manifest: &str) -> FollowUp<Action> {
    FollowUp {
        key: format!("restart:{node}/{component}"),
        action: Action::RestartStaticPod {
            node: node.into(),
            component: component.into(),
            manifest: manifest.into(),
        },
        kind: Kind::StaticPod.as_str().into(),
    }
}

/// `SetFlags`: flags of a static pod pointed at other files; the kubelet restarts the pod when
/// its manifest changes, and the action waits until it runs with them.
pub mod set_flags {
    use super::*;

    /// Each flag the trust model knows repoints its slot at the file it names; then the pod
    /// restarts.
    pub fn effects(node: &str, component: &str, flags: &BTreeMap<String, String>) -> Vec<Effect> {
        let mut out = Vec::new();
        for (flag, value) in flags {
            if let Some(slot) = slot_of(component, flag) {
                out.push(Effect::Repoint {
                    component: ComponentId::on(component, node),
                    slot: slot.into(),
                    source: Source::file(node, value),
                });
            }
        }
        out.extend(restart_static_pod::effects(node, component));
        out
    }

    /// The flags set back to what they were before this step (which restarts the pod; the
    /// action waits until it is observed healthy again), then what the plan attached to it
    /// (republish `kube-root-ca.crt`, restart the pods that read it).
    pub fn undo(
        node: &str,
        component: &str,
        manifest: &str,
        flags: &BTreeMap<String, String>,
        prior: &BTreeMap<String, String>,
        after_undo: &[Action],
        rank: u32,
    ) -> Vec<Compensation<Action>> {
        let back = Action::SetFlags {
            node: node.to_owned(),
            component: component.to_owned(),
            manifest: manifest.to_owned(),
            flags: prior.clone(),
            prior: flags.clone(),
            after_undo: Vec::new(),
        };
        let mut out = vec![compensation(back, rank, None)];
        out.extend(after_undo.iter().map(|a| compensation(a.clone(), rank, None)));
        out
    }

    /// Edits the manifest (one line per flag) and restarts the pod with it.
    pub async fn apply<N: Node>(
        r: &Rotation<N>,
        node: &str,
        component: &str,
        manifest: &str,
        flags: &BTreeMap<String, String>,
    ) -> Result<Summary, Error> {
        let current = r.manifest_text(node, manifest).await?;
        let mut m = Manifest::parse(&format!("{node}:{manifest}"), &current)?;
        for (flag, value) in flags {
            m.set_flag(flag, value)?;
        }
        r.restart_pod(node, component, manifest, &m.text()).await
    }

    /// The trust model's slot that `flag` of `component` loads, if it models one.
    fn slot_of(component: &str, flag: &str) -> Option<&'static str> {
        match (component, flag) {
            (APISERVER, "--client-ca-file") => Some(slot::CLIENT_CA),
            (APISERVER, "--requestheader-client-ca-file") => Some(slot::REQUESTHEADER_CA),
            (APISERVER, "--kubelet-certificate-authority") => Some(slot::KUBELET_CA),
            (APISERVER, "--tls-cert-file") => Some(slot::SERVING_CERT),
            (APISERVER, "--kubelet-client-certificate") => Some(slot::KUBELET_CLIENT_CERT),
            (APISERVER, "--proxy-client-cert-file") => Some(slot::PROXY_CLIENT_CERT),
            (CONTROLLER_MANAGER, "--root-ca-file") => Some(slot::ROOT_CA),
            (CONTROLLER_MANAGER, "--client-ca-file") => Some(slot::CLIENT_CA),
            (CONTROLLER_MANAGER, "--cluster-signing-cert-file") => Some(slot::SIGNING_CERT),
            _ => None,
        }
    }
}

/// `RestartStaticPod`: a restart with the manifest as it is (moved out and back).
pub mod restart_static_pod {
    use super::*;

    /// The component loads what is on disk now; an apiserver merges its request-header CA into
    /// `extension-apiserver-authentication` at start.
    pub fn effects(node: &str, component: &str) -> Vec<Effect> {
        let id = ComponentId::on(component, node);
        let mut out = vec![Effect::Restart(id.clone())];
        if component == APISERVER {
            out.push(Effect::Publish {
                from: id,
                slot: slot::REQUESTHEADER_CA.into(),
                target: trust::configmap(
                    object::KUBE_SYSTEM,
                    object::EXTENSION_APISERVER_AUTHENTICATION,
                ),
                merge: true,
            });
        }
        out
    }

    /// Restarts the pod with its manifest unchanged.
    pub async fn apply<N: Node>(
        r: &Rotation<N>,
        node: &str,
        component: &str,
        manifest: &str,
    ) -> Result<Summary, Error> {
        let current = r.manifest_text(node, manifest).await?;
        r.restart_pod(node, component, manifest, &current).await
    }
}

/// Where a component is probed from, and the address it is probed at there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Vantage {
    /// From this machine, at the node's address in the inventory.
    Here(String),
    /// From the node itself ([`Node::connect_tcp`]), at this address as the node sees it.
    Node(String),
}

/// Where to probe a component whose flag names `bound` as its address (`--bind-address`, the
/// apiserver's `--advertise-address`; `None` when its manifest names none) on a node that the
/// inventory reaches at `inventory`:
/// - the inventory's address: from here, as kubeca reaches the node;
/// - loopback, every address (`0.0.0.0`, `::`) or none: from the node, on its loopback. kubeadm
///   binds the controller-manager and the scheduler to 127.0.0.1
///   (`cmd/kubeadm/app/phases/controlplane/manifests.go`:
///   `{Name: "bind-address", Value: "127.0.0.1"}`), where only the node reaches them. A component
///   bound to every address (which both default to without the flag) answers on the node's
///   loopback too, whereas `0.0.0.0` is no address to connect to from here, and the node's
///   address may be firewalled from here. A loopback address is probed as it is (a component
///   bound to 127.0.0.2 answers only there), every address at `127.0.0.1`, or `::1` for `::`;
/// - any other address: from the node, at that address (one of the node's own that this
///   machine may not reach: a second network, a private one behind the inventory's address).
pub(super) fn vantage(bound: Option<&str>, inventory: &str) -> Vantage {
    let ip = |text: &str| text.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>();
    let Some(bound) = bound.map(str::trim) else {
        return Vantage::Node("127.0.0.1".to_owned());
    };
    if bound == inventory || ip(bound).is_ok_and(|b| ip(inventory).is_ok_and(|i| i == b)) {
        return Vantage::Here(inventory.to_owned());
    }
    match ip(bound) {
        Ok(IpAddr::V4(a)) if a.is_unspecified() => Vantage::Node("127.0.0.1".to_owned()),
        Ok(IpAddr::V6(a)) if a.is_unspecified() => Vantage::Node("::1".to_owned()),
        Ok(a) => Vantage::Node(a.to_string()),
        Err(_) => Vantage::Node(bound.to_owned()),
    }
}

/// Where a static pod is probed: the vantage, its port (0: nothing to probe), and the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Endpoint {
    /// From where, at which address.
    pub(super) vantage: Vantage,
    /// The port.
    pub(super) port: u16,
    /// The health endpoint probed.
    pub(super) path: &'static str,
}

impl Endpoint {
    /// Where it is probed, for a message: `10.0.0.11:6443`, or `127.0.0.1:10257 (from cp-1)`.
    fn place(&self, node: &str) -> String {
        match &self.vantage {
            Vantage::Here(host) => target(host, self.port),
            Vantage::Node(host) => format!("{} (from {node})", target(host, self.port)),
        }
    }
}

impl<N: Node> Rotation<N> {
    /// Where a static pod listens and how to reach it. The manifest being started says (its
    /// address flag, through [`vantage`], and its `--secure-port`); where it names no port, the
    /// one discovered at `init` stands.
    pub(super) async fn endpoint(
        &self,
        node: &str,
        component: &str,
        manifest: &Manifest,
    ) -> Endpoint {
        let address = self.inventory.node(node).map(|n| n.address.clone()).unwrap_or_default();
        let layout = self.topology.layout(node);
        let port = |discovered: u16| {
            manifest.flag("--secure-port").and_then(|p| p.parse().ok()).unwrap_or(discovered)
        };
        let (bound, port, path) = match component {
            APISERVER => {
                (manifest.flag("--advertise-address"), port(layout.apiserver.port), "/readyz")
            }
            CONTROLLER_MANAGER => {
                (manifest.flag("--bind-address"), port(layout.controller_manager.port), "/healthz")
            }
            SCHEDULER => (manifest.flag("--bind-address"), port(layout.scheduler.port), "/healthz"),
            // Nothing discovers its port: its own flag, else the cloud provider's default.
            CLOUD_CONTROLLER_MANAGER => (
                manifest.flag("--bind-address"),
                port(crate::kubeadm::port::CLOUD_CONTROLLER_MANAGER),
                "/healthz",
            ),
            _ => (Some(address.clone()), 0, "/healthz"),
        };
        Endpoint { vantage: vantage(bound.as_deref(), &address), port, path }
    }

    /// Probes a component from its vantage, presenting `client` when given: from here, or from
    /// the node through [`Node::connect_tcp`]. A connection the node refuses, or that ends
    /// before the handshake, is Down; one the node's sshd refuses to forward is an error
    /// ([`NodeError::Forwarding`]): kubeca cannot see the component from there, up or down.
    async fn observe(
        &self,
        node: &str,
        at: &Endpoint,
        client: Option<&ClientIdentity>,
    ) -> Result<Seen, Error> {
        const TIMEOUT: Duration = Duration::from_secs(3);
        if at.port == 0 {
            return Ok(Seen::Down);
        }
        let host = match &at.vantage {
            Vantage::Here(host) => {
                return Ok(probe_as(host, at.port, at.path, TIMEOUT, client).await);
            }
            Vantage::Node(host) => host,
        };
        let Some(stream) = self.node(node)?.connect_tcp(host, at.port).await? else {
            return Ok(Seen::Down);
        };
        probe_over_as(stream, host, at.path, TIMEOUT, client).await.map_err(|e| {
            Error::from(NodeError::Forwarding {
                node: node.to_owned(),
                target: target(host, at.port),
                detail: e.to_string(),
            })
        })
    }

    /// That a Down seen from the node was the node's answer: a connection through an ssh
    /// master that died meanwhile ends unanswered too ([`crate::node::Forwarded`]), and read as
    /// "stopped" it would move the manifest back before the kubelet stopped the pod. A command
    /// over the same connection fails (transient) if it is gone; from here there is nothing to
    /// confirm.
    async fn still_connected(&self, n: &N, at: &Endpoint) -> Result<(), Error> {
        if let Vantage::Node(_) = at.vantage {
            n.run("check the connection a probe went through", "true").await?;
        }
        Ok(())
    }

    /// Puts a parked manifest back in place with `text`, so that the component is not left
    /// stopped. Written over the parked file, then moved back: the manifest keeps its mode
    /// (kubeadm's 0600, or whatever the operator chose), and the kubelet never sees half a
    /// file.
    async fn unpark(
        &self,
        n: &N,
        parked: &str,
        manifest_path: &str,
        text: &str,
    ) -> Result<(), Error> {
        n.write(parked, text.as_bytes(), 0o600).await?;
        n.rename(parked, manifest_path).await?;
        Ok(())
    }

    /// `cause`, once the parked manifest is back in place; if it cannot be put back, `cause`
    /// and why, naming where it is parked (a run again puts it back: `manifest_text` reads it
    /// from there, and the restart moves it back).
    async fn put_back_after(
        &self,
        n: &N,
        parked: &str,
        manifest_path: &str,
        text: &str,
        cause: Error,
    ) -> Error {
        match self.unpark(n, parked, manifest_path, text).await {
            Ok(()) => cause,
            Err(e) => Error {
                message: format!(
                    "{}; and its manifest could not be put back ({}): it is parked at {}:{parked} \
                     until kubeca runs again",
                    cause.message,
                    e.message,
                    n.name()
                ),
                transient: cause.transient || e.transient,
            },
        }
    }

    /// A static pod's manifest, from its place or, when a crash left it parked, from there.
    pub(super) async fn manifest_text(&self, node: &str, manifest: &str) -> Result<String, Error> {
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
    async fn restart_pod(
        &self,
        node: &str,
        component: &str,
        manifest_path: &str,
        text: &str,
    ) -> Result<Summary, Error> {
        let n = self.node(node)?;
        let manifest = Manifest::parse(&format!("{node}:{manifest_path}"), text)?;
        let at = self.endpoint(node, component, &manifest).await;
        if component == APISERVER {
            self.apiservers_ready_for_restart_of(node).await?;
        }
        let name = manifest_path.rsplit('/').next().unwrap_or(component);
        let parked = format!("{PARKING}/{name}");
        // Probe once from where the restart is watched, before anything stops: a vantage kubeca
        // cannot probe from (a node whose sshd does not forward) fails the step here, with the
        // component still running, not once it is stopped. A manifest a crash left parked is
        // put back rather than left so.
        if let Err(e) = self.observe(node, &at, None).await {
            if n.read(manifest_path).await?.is_none() && n.read(&parked).await?.is_some() {
                return Err(self.put_back_after(n, &parked, manifest_path, text, e).await);
            }
            return Err(e);
        }
        n.sh("prepare parking", r#"mkdir -p -- "$1""#, &[PARKING], b"").await?;
        if n.read(manifest_path).await?.is_some() {
            n.rename(manifest_path, &parked).await?;
        }
        // Wait until the kubelet has stopped it, so what answers next is the new process. Put
        // the manifest back before giving up, whatever the reason: never leave a component
        // stopped.
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            let why = match self.observe(node, &at, None).await {
                Ok(Seen::Down) => match self.still_connected(n, &at).await {
                    Ok(()) => break,
                    Err(e) => e,
                },
                Ok(Seen::Up { .. }) if tokio::time::Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
                Ok(Seen::Up { .. }) => Error::transient(format!(
                    "node {node}: {component} did not stop within {} s",
                    self.wait.as_secs()
                )),
                Err(e) => e,
            };
            return Err(self.put_back_after(n, &parked, manifest_path, text, why).await);
        }
        self.unpark(n, &parked, manifest_path, text).await?;
        let expected = match component {
            APISERVER => match manifest.flag("--tls-cert-file") {
                Some(f) => {
                    Some(pem_der(&n.read(&f).await?.map(super::runner::text).unwrap_or_default())?)
                }
                None => None,
            },
            _ => None,
        };
        // The apiserver is probed authenticated, as a hardened one (`--anonymous-auth=false`)
        // requires: with a client certificate of the new cluster CA when its --client-ca-file
        // holds that CA (a 401 then means the process does not load what its manifest names),
        // else with the operator's own.
        let new_ca_client = match component {
            APISERVER => self.new_ca_client_if_trusted(node, &manifest).await?,
            _ => None,
        };
        let client = match (component, &new_ca_client) {
            (APISERVER, None) => self.operator_identity().await?,
            (_, id) => id.clone(),
        };
        let restarted_at = jiff::Timestamp::now();
        // The apiserver is back when it is ready (its /readyz answers 200: it reaches etcd);
        // the others when they answer at all.
        let healthy =
            |status: u16| if component == APISERVER { status == 200 } else { status != 0 };
        let mut last;
        let place = at.place(node);
        loop {
            match self.observe(node, &at, client.as_ref()).await? {
                Seen::Up { cert, status, .. }
                    if healthy(status) && expected.as_ref().is_none_or(|e| *e == cert) =>
                {
                    return Ok(Summary::new()
                        .with(outcome::RESTARTED_AT, restarted_at.to_string())
                        .with("serving-cert", Hash::of(&cert).to_hex()));
                }
                seen => last = seen,
            }
            if tokio::time::Instant::now() >= deadline {
                let seen = match &last {
                    Seen::Down => format!("nothing answers on {place}"),
                    Seen::Up { status: 401, .. } if new_ca_client.is_some() => format!(
                        "{place} answers 401 Unauthorized to a client certificate of the new CA \
                         although its --client-ca-file holds that CA: the process does not load \
                         the file its manifest names"
                    ),
                    Seen::Up { status: 401, .. } if component == APISERVER => format!(
                        "{place} answers 401 Unauthorized to {}",
                        if client.is_some() {
                            "the client certificate of the operator's kubeconfig (as backed up \
                             before the rotation): its --client-ca-file does not hold that \
                             certificate's CA"
                        } else {
                            "kubeca's probe without credentials (anonymous access is off, and \
                             the operator's kubeconfig holds no client certificate to probe with)"
                        }
                    ),
                    Seen::Up { cert, .. } if expected.as_ref().is_some_and(|e| e != cert) => {
                        format!("{place} presents another certificate than the one on disk")
                    }
                    Seen::Up { status, detail, .. } => {
                        format!("{} on {place} answered HTTP {status}: {detail}", at.path)
                    }
                };
                return Err(Error::transient(format!(
                    "node {node}: {component} did not come back healthy{} within {} s ({seen}); its manifest is in place, check its log (rollback restores the files it loaded)",
                    if expected.is_some() { " presenting the certificate on disk" } else { "" },
                    self.wait.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// A client certificate of the new cluster CA when the manifest's `--client-ca-file` on
    /// `node` holds that CA (the apiserver must then authenticate it), else None (no new CA yet,
    /// or a rollback back to the old one).
    async fn new_ca_client_if_trusted(
        &self,
        node: &str,
        manifest: &Manifest,
    ) -> Result<Option<crate::probe::ClientIdentity>, Error> {
        let Some(file) = manifest.flag("--client-ca-file") else { return Ok(None) };
        let Ok(new) = self.new_ca(CaKind::Cluster) else { return Ok(None) };
        let Some(pem) = self.read_on(Some(node), &file).await? else { return Ok(None) };
        let origin = format!("{node}:{file}");
        let holds =
            crate::pki::split_pem(&text(pem), &origin)?.iter().any(|c| c.der() == new.cert().der());
        if !holds {
            return Ok(None);
        }
        Ok(Some(self.new_ca_client()?))
    }

    /// The client certificate kubeca probes `node`'s apiserver with, chosen by the client CA
    /// file its manifest names (not by trying: a refused certificate is a trust failure in the
    /// cluster's logs): one of the new cluster CA when that file holds it, else the operator's
    /// ([`Rotation::operator_identity`]).
    async fn apiserver_identity(
        &self,
        node: &str,
        manifest: &Manifest,
    ) -> Result<Option<ClientIdentity>, Error> {
        match self.new_ca_client_if_trusted(node, manifest).await? {
            Some(id) => Ok(Some(id)),
            None => self.operator_identity().await,
        }
    }

    /// Before `node`'s apiserver is taken down: every other control plane's apiserver must be
    /// ready, and this one too unless it is already down (a crash left its manifest parked, or it
    /// fails to start). kubeca never takes an apiserver away while another one is not ready: with
    /// one etcd member or one apiserver already out, a restart of a second would leave the
    /// cluster one failure from an outage.
    pub(super) async fn apiservers_ready_for_restart_of(&self, node: &str) -> Result<(), Error> {
        for cp in self.inventory.control_planes() {
            let layout = self.topology.layout(&cp.name);
            let port = layout.apiserver.port;
            let manifest = Manifest::parse(
                &format!("{}:{}", cp.name, layout.apiserver.manifest),
                &self.manifest_text(&cp.name, &layout.apiserver.manifest).await?,
            )?;
            let client = self.apiserver_identity(&cp.name, &manifest).await?;
            let seen =
                probe_as(&cp.address, port, "/readyz", Duration::from_secs(3), client.as_ref())
                    .await;
            let why = match seen {
                Seen::Up { status: 200, .. } => continue,
                Seen::Down if cp.name == node => continue,
                Seen::Down => format!("does not answer on {}:{port}", cp.address),
                Seen::Up { status, detail, .. } => {
                    format!("is not ready (/readyz answered HTTP {status}: {detail})")
                }
            };
            return Err(Error::transient(format!(
                "node {node}: not restarting kube-apiserver, because the apiserver on {} {why}; \
                 kubeca takes an apiserver down only while every other one is ready. Bring {} \
                 back (its log, its etcd member), then run kubeca again",
                cp.name, cp.name
            )));
        }
        Ok(())
    }
}

/// The DER of a serving certificate's PEM.
fn pem_der(pem: &str) -> Result<Vec<u8>, Error> {
    Ok(Cert::from_pem(pem, "serving certificate")?.der().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::action::testing::{APISERVER_YAML, runner, runner_of, serve, with_new_ca};
    use crate::fixtures;
    use crate::node::{LocalNode, Output};
    use std::os::unix::fs::MetadataExt;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn each_bind_is_probed_from_where_it_answers() {
        let here = |h: &str| Vantage::Here(h.to_owned());
        let node = |h: &str| Vantage::Node(h.to_owned());
        let table = [
            // The node's own address in the inventory: from here, as kubeca reaches the node.
            (Some("10.0.0.11"), "10.0.0.11", here("10.0.0.11")),
            (Some("fd00:0::11"), "fd00::11", here("fd00::11")),
            (Some("cp-1.example"), "cp-1.example", here("cp-1.example")),
            (Some("127.0.0.1"), "127.0.0.1", here("127.0.0.1")),
            // kubeadm's controller-manager and scheduler: the node's loopback, from the node.
            (Some("127.0.0.1"), "10.0.0.11", node("127.0.0.1")),
            (Some("127.0.0.2"), "10.0.0.11", node("127.0.0.2")),
            (Some("::1"), "10.0.0.11", node("::1")),
            // Every address, or no flag (every address by default): the node's loopback.
            (Some("0.0.0.0"), "10.0.0.11", node("127.0.0.1")),
            (Some("::"), "10.0.0.11", node("::1")),
            (Some("[::]"), "10.0.0.11", node("::1")),
            (None, "10.0.0.11", node("127.0.0.1")),
            // Another address of the node's: from the node, at that address.
            (Some("192.168.7.11"), "10.0.0.11", node("192.168.7.11")),
            (Some("10.0.0.11"), "cp-1.example", node("10.0.0.11")),
            (Some("cp-1.internal"), "10.0.0.11", node("cp-1.internal")),
        ];
        for (bound, inventory, expected) in table {
            assert_eq!(vantage(bound, inventory), expected, "{bound:?} on a node at {inventory}");
        }
    }

    #[tokio::test]
    async fn a_manifest_says_where_its_component_is_probed_from() {
        let dir = tempfile::tempdir().unwrap();
        let runner = runner(dir.path(), true).await;
        let cm = |text: &str| Manifest::parse("m", text).unwrap();
        let kubeadm = cm(include_str!("../../testdata/kubeadm/kube-controller-manager.yaml"));
        // cp-2 is at 127.0.0.2: kubeadm's 127.0.0.1 is its own loopback, reached from it.
        let at = runner.endpoint("cp-2", CONTROLLER_MANAGER, &kubeadm).await;
        assert_eq!(at.vantage, Vantage::Node("127.0.0.1".into()));
        assert_eq!(
            (at.port, at.path),
            (runner.topology.layout("cp-2").controller_manager.port, "/healthz")
        );
        assert_eq!(at.place("cp-2"), format!("127.0.0.1:{} (from cp-2)", at.port));
        let everywhere =
            cm(&kubeadm.text().replace("--bind-address=127.0.0.1", "--bind-address=::"));
        let at = runner.endpoint("cp-2", CONTROLLER_MANAGER, &everywhere).await;
        assert_eq!(at.vantage, Vantage::Node("::1".into()));
        let own =
            cm(&kubeadm.text().replace("--bind-address=127.0.0.1", "--bind-address=127.0.0.2"));
        let at = runner.endpoint("cp-2", CONTROLLER_MANAGER, &own).await;
        assert_eq!(at.vantage, Vantage::Here("127.0.0.2".into()));
        assert_eq!(at.place("cp-2"), format!("127.0.0.2:{}", at.port));
    }

    #[tokio::test]
    async fn a_component_on_the_nodes_loopback_is_probed_from_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let runner = runner(dir.path(), true).await;
        let now = jiff::Timestamp::now();
        let ca = crate::pki::Ca::generate(
            "served",
            crate::pki::KeySpec::EcdsaP256,
            1,
            now,
            &mut rand_core::OsRng,
        )
        .unwrap();
        let port = serve("127.0.0.1", (ca.cert().der().to_vec(), ca.key_pem().to_string())).await;
        let at = Endpoint { vantage: Vantage::Node("127.0.0.1".into()), port, path: "/healthz" };
        // The directory node connects (connect_tcp), the probe runs over that connection.
        let seen = runner.observe("cp-2", &at, None).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            seen,
            Seen::Up { cert: ca.cert().der().to_vec(), status: 200, detail: "ok".into() }
        );
        let nobody =
            std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let at = Endpoint { port: nobody, ..at };
        assert_eq!(runner.observe("cp-2", &at, None).await.unwrap(), Seen::Down);
    }

    /// A directory node whose connections from it find nothing listening (Down) `allowed`
    /// times, then are refused by its sshd; when `master_gone`, the check that its connection
    /// still stands fails, as it does over an ssh master that died.
    struct Fake {
        node: LocalNode,
        allowed: usize,
        master_gone: bool,
        tried: AtomicUsize,
    }

    impl Node for Fake {
        type Stream = tokio::net::TcpStream;

        fn name(&self) -> &str {
            self.node.name()
        }

        async fn sh(
            &self,
            what: &str,
            script: &str,
            args: &[&str],
            stdin: &[u8],
        ) -> Result<Output, NodeError> {
            if self.master_gone && script == "true" {
                let detail = "ssh failed: Control socket connect: Connection refused".into();
                return Err(NodeError::Unreachable { node: self.name().to_owned(), detail });
            }
            self.node.sh(what, script, args, stdin).await
        }

        async fn connect_tcp(
            &self,
            host: &str,
            port: u16,
        ) -> Result<Option<tokio::net::TcpStream>, NodeError> {
            if self.tried.fetch_add(1, Ordering::SeqCst) < self.allowed {
                return Ok(None);
            }
            Err(NodeError::Forwarding {
                node: self.name().to_owned(),
                target: target(host, port),
                detail: "administratively prohibited".into(),
            })
        }
    }

    fn fake(allowed: usize, master_gone: bool) -> impl Fn(LocalNode) -> Fake {
        move |node| Fake { node, allowed, master_gone, tried: 0.into() }
    }

    fn no_forwarding(allowed: usize) -> impl Fn(LocalNode) -> Fake {
        fake(allowed, false)
    }

    /// The controller-manager's manifest, where the test nodes keep it.
    fn cm_manifest() -> String {
        format!("{}/kube-controller-manager.yaml", fixtures::STATIC_POD_PATH)
    }

    #[tokio::test]
    async fn a_node_that_cannot_forward_fails_the_restart_before_anything_stops() {
        let dir = tempfile::tempdir().unwrap();
        let runner = runner_of(dir.path(), true, no_forwarding(0)).await;
        let root = dir.path().join("cp-2");
        let on_disk = root.join(cm_manifest().trim_start_matches('/'));
        let before = std::fs::read_to_string(&on_disk).unwrap();
        let inode = std::fs::metadata(&on_disk).unwrap().ino();
        let err = restart_static_pod::apply(&runner, "cp-2", CONTROLLER_MANAGER, &cm_manifest())
            .await
            .unwrap_err();
        let port = runner.topology.layout("cp-2").controller_manager.port;
        assert!(err.message.contains("node cp-2"), "{}", err.message);
        assert!(err.message.contains(&format!("127.0.0.1:{port}")), "{}", err.message);
        assert!(!err.transient, "a refused forward stays refused: {}", err.message);
        assert_eq!(runner.nodes["cp-2"].tried.load(Ordering::SeqCst), 1, "one probe, then stop");
        // Nothing was stopped: the manifest is the file it was (never moved away and back), and
        // the parking directory was never made.
        assert_eq!(std::fs::read_to_string(&on_disk).unwrap(), before);
        assert_eq!(std::fs::metadata(&on_disk).unwrap().ino(), inode, "the manifest never moved");
        assert!(!root.join(PARKING.trim_start_matches('/')).exists());
    }

    #[tokio::test]
    async fn a_probe_that_fails_once_the_pod_is_stopped_puts_its_manifest_back() {
        let dir = tempfile::tempdir().unwrap();
        // The probe before the restart finds nothing listening (Down), the next one is refused.
        let runner = runner_of(dir.path(), true, no_forwarding(1)).await;
        let root = dir.path().join("cp-2");
        let on_disk = root.join(cm_manifest().trim_start_matches('/'));
        let before = std::fs::read_to_string(&on_disk).unwrap();
        let mut flags = BTreeMap::new();
        flags.insert("--root-ca-file".to_owned(), "/srv/k8s/pki/ca-bundle.crt".to_owned());
        let err = set_flags::apply(&runner, "cp-2", CONTROLLER_MANAGER, &cm_manifest(), &flags)
            .await
            .unwrap_err();
        assert!(err.message.contains("node cp-2"), "{}", err.message);
        assert_eq!(runner.nodes["cp-2"].tried.load(Ordering::SeqCst), 2);
        // The manifest is back in place, with the flag it was being restarted with.
        let after = std::fs::read_to_string(&on_disk).unwrap();
        assert_ne!(after, before);
        assert!(after.contains("--root-ca-file=/srv/k8s/pki/ca-bundle.crt"), "{after}");
        let parked =
            root.join(PARKING.trim_start_matches('/')).join("kube-controller-manager.yaml");
        assert!(!parked.exists(), "nothing is left parked");
    }

    /// Regression guard: a connection through an ssh master that died ends unanswered, as one
    /// to a stopped component does. Taken for "stopped", it would move the manifest back
    /// before the kubelet stopped the pod, and the old process would pass for the new one.
    #[tokio::test]
    async fn a_down_seen_through_a_lost_connection_is_not_taken_for_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let mut runner = runner_of(dir.path(), true, fake(usize::MAX, true)).await;
        // Taken for stopped, the restart would wait this long for a component never seen back.
        runner.wait = Duration::from_secs(2);
        let root = dir.path().join("cp-2");
        let on_disk = root.join(cm_manifest().trim_start_matches('/'));
        let before = std::fs::read_to_string(&on_disk).unwrap();
        let err = restart_static_pod::apply(&runner, "cp-2", CONTROLLER_MANAGER, &cm_manifest())
            .await
            .unwrap_err();
        assert!(err.transient, "a lost connection is worth another try: {}", err.message);
        assert!(err.message.contains("node cp-2: cannot connect"), "{}", err.message);
        // Not left stopped: the manifest is back in place.
        assert_eq!(std::fs::read_to_string(&on_disk).unwrap(), before);
        let parked =
            root.join(PARKING.trim_start_matches('/')).join("kube-controller-manager.yaml");
        assert!(!parked.exists());
    }

    #[tokio::test]
    async fn components_are_reached_on_the_ports_discovery_found() {
        let dir = tempfile::tempdir().unwrap();
        let runner = runner(dir.path(), true).await;
        // A manifest that names no port: the discovered one stands; one that does: it wins.
        let bare =
            Manifest::parse("m", &APISERVER_YAML.replace("- --secure-port=6443\n", "")).unwrap();
        let at = runner.endpoint("cp-1", APISERVER, &bare).await;
        assert_eq!(at.port, fixtures::APISERVER_PORT);
        let named = Manifest::parse("m", &APISERVER_YAML.replace("=6443", "=7443")).unwrap();
        assert_eq!(runner.endpoint("cp-1", APISERVER, &named).await.port, 7443);

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
