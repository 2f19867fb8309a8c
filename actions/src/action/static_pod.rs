//! Control-plane static pods: flags pointed at other files, and restarts that wait until the
//! component is observed healthy with what it should now load.
//!
//! A static pod is restarted by parking its manifest outside the kubelet's static pod directory
//! until the component is seen down, then moving the (possibly edited) manifest back: the
//! kubelet never sees half a file, and what answers next is the new process. An apiserver is
//! taken down only while every other control plane's apiserver is ready.

use std::collections::BTreeMap;
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
use crate::node::Node;
use crate::pki::Cert;
use crate::probe::{Seen, probe, probe_as};
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

impl<N: Node> Rotation<N> {
    /// Where a static pod listens and how to reach it: (host, port, path probed). The manifest
    /// being started says; where it names no port, the one discovered at `init` stands.
    pub(super) async fn endpoint(
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
            // Nothing discovers its port: its own flag, else the cloud provider's default.
            CLOUD_CONTROLLER_MANAGER => (
                manifest.flag("--bind-address").unwrap_or(address),
                port(crate::kubeadm::port::CLOUD_CONTROLLER_MANAGER),
                "/healthz",
            ),
            _ => (address, 0, "/healthz"),
        }
    }

    /// Probes a component from where it can be reached: a loopback bind from the node itself
    /// (over the node's shell), anything else from here.
    async fn observe(&self, node: &str, host: &str, port: u16, path: &str) -> Result<Seen, Error> {
        if port == 0 {
            return Ok(Seen::Down);
        }
        if host.starts_with("127.") && self.inventory.node(node).is_none_or(|n| n.address != host) {
            // kubeadm binds the controller-manager and scheduler to 127.0.0.1 on the node.
            let script =
                r#"curl -sk -o /dev/null -w '%{http_code}' --max-time 3 "https://$1:$2$3" || true"#;
            let out =
                self.node(node)?.sh("probe", script, &[host, &port.to_string(), path], b"").await?;
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
        let (host, port, path) = self.endpoint(node, component, &manifest).await;
        if component == APISERVER {
            self.apiservers_ready_for_restart_of(node).await?;
        }
        let name = manifest_path.rsplit('/').next().unwrap_or(component);
        let parked = format!("{PARKING}/{name}");
        n.sh("prepare parking", r#"mkdir -p -- "$1""#, &[PARKING], b"").await?;
        if n.read(manifest_path).await?.is_some() {
            n.rename(manifest_path, &parked).await?;
        }
        // Wait until the kubelet has stopped it, so what answers next is the new process.
        let deadline = tokio::time::Instant::now() + self.wait;
        while self.observe(node, &host, port, path).await? != Seen::Down {
            if tokio::time::Instant::now() >= deadline {
                // Put the manifest back before giving up: never leave a component stopped.
                n.write(&parked, text.as_bytes(), 0o600).await?;
                n.rename(&parked, manifest_path).await?;
                return Err(Error::transient(format!(
                    "node {node}: {component} did not stop within {} s",
                    self.wait.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Written over the parked file, then moved back: the manifest keeps its mode (kubeadm's
        // 0600, or whatever the operator chose), and the kubelet never sees half a file.
        n.write(&parked, text.as_bytes(), 0o600).await?;
        n.rename(&parked, manifest_path).await?;
        let expected = match component {
            APISERVER => match manifest.flag("--tls-cert-file") {
                Some(f) => {
                    Some(pem_der(&n.read(&f).await?.map(super::runner::text).unwrap_or_default())?)
                }
                None => None,
            },
            _ => None,
        };
        // An apiserver whose --client-ca-file holds the new cluster CA must authenticate a client
        // certificate of it: a 401 means the process does not load what its manifest names.
        let new_ca_client = match component {
            APISERVER => self.new_ca_client_if_trusted(node, &manifest).await?,
            _ => None,
        };
        let restarted_at = jiff::Timestamp::now();
        // The apiserver is back when it is ready (its /readyz answers 200: it reaches etcd);
        // the others when they answer at all.
        let healthy =
            |status: u16| if component == APISERVER { status == 200 } else { status != 0 };
        let mut last = Seen::Down;
        loop {
            match self.observe(node, &host, port, path).await? {
                Seen::Up { cert, status, .. }
                    if healthy(status) && expected.as_ref().is_none_or(|e| *e == cert) =>
                {
                    let authenticated = match &new_ca_client {
                        Some(id) => {
                            let seen =
                                probe_as(&host, port, path, Duration::from_secs(3), Some(id)).await;
                            let ok = seen.authenticated();
                            last = seen;
                            ok
                        }
                        None => true,
                    };
                    if authenticated {
                        return Ok(Summary::new()
                            .with(outcome::RESTARTED_AT, restarted_at.to_string())
                            .with("serving-cert", Hash::of(&cert).to_hex()));
                    }
                }
                seen => last = seen,
            }
            if tokio::time::Instant::now() >= deadline {
                let seen = match &last {
                    Seen::Down => format!("nothing answers on {host}:{port}"),
                    Seen::Up { status: 401, .. } if new_ca_client.is_some() => format!(
                        "{host}:{port} answers 401 Unauthorized to a client certificate of the new \
                         CA although its --client-ca-file holds that CA: the process does not \
                         load the file its manifest names"
                    ),
                    Seen::Up { cert, .. } if expected.as_ref().is_some_and(|e| e != cert) => {
                        format!("{host}:{port} presents another certificate than the one on disk")
                    }
                    Seen::Up { status, detail, .. } => {
                        format!("{path} on {host}:{port} answered HTTP {status}: {detail}")
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

    /// Before `node`'s apiserver is taken down: every other control plane's apiserver must be
    /// ready, and this one too unless it is already down (a crash left its manifest parked, or it
    /// fails to start). kubeca never takes an apiserver away while another one is not ready: with
    /// one etcd member or one apiserver already out, a restart of a second would leave the
    /// cluster one failure from an outage.
    pub(super) async fn apiservers_ready_for_restart_of(&self, node: &str) -> Result<(), Error> {
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
    use crate::action::testing::{APISERVER_YAML, runner, serve, with_new_ca};
    use crate::fixtures;

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
