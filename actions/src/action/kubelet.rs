//! Kubelets: one node's roll (its `clientCAFile`, its kubeconfig's CA, its client and serving
//! certificates re-issued by the new CA, a restart observed trusting what it should; upstream
//! steps 9.2 and 12.3), and the plain restart a rollback ends with.

use std::time::Duration;

use engine::{Compensation, FollowUp, Summary};

use super::runner::text;
use super::{Action, CaKind, Error, Kind, KubeletTarget, Rotation, ca, compensation, files};
use crate::edit::{Kubeconfig, KubeletSettings};
use crate::kubeadm::component::KUBELET;
use crate::kubeadm::{outcome, slot};
use crate::node::Node;
use crate::pki::{self, Cert};
use crate::probe::Seen;
use crate::trust::{self, ComponentId, Effect, Material, Source, Topology};

/// The restart that makes `node`'s kubelet load what a rollback restored. Its key names its
/// rollback step (`restart:w-1/kubelet@<rank>`).
pub(super) fn restart_after(node: &str) -> FollowUp<Action> {
    FollowUp {
        key: format!("restart:{node}/{KUBELET}"),
        action: Action::RestartKubelet { node: node.into() },
        kind: Kind::Kubelet.as_str().into(),
    }
}

/// `RollKubelet`: config, kubeconfig, certificates, restart, observed Ready and trusting what
/// it should.
pub mod roll_kubelet {
    use super::*;

    /// The kubelet's client CA slot is pointed at `clientCAFile`; its kubeconfig's CA data and
    /// (when re-issued) its client and serving certificates are written; it restarts. The
    /// kubeconfig and serving certificate are the ones discovery found (and the trust model
    /// loads the kubelet's from).
    pub fn effects(node: &str, kubeconfig: &str, target: &KubeletTarget) -> Vec<Effect> {
        let kubelet = ComponentId::on(KUBELET, node);
        let mut out = vec![Effect::Repoint {
            component: kubelet.clone(),
            slot: slot::CLIENT_CA.into(),
            source: Source::file(node, &target.client_ca_file),
        }];
        if let Some(m) = target.kubeconfig_ca.material() {
            out.push(Effect::Write {
                source: Source::KubeconfigCa {
                    node: Some(node.to_owned()),
                    path: kubeconfig.to_owned(),
                },
                material: m,
            });
        }
        if let Some(serving) = &target.reissue_serving_cert {
            out.push(Effect::Write {
                source: Source::file(node, serving),
                material: Material::cert(trust::ca::NEW),
            });
        }
        if target.reissue_client_cert {
            out.push(Effect::Write {
                source: Source::KubeconfigCert {
                    node: Some(node.to_owned()),
                    path: kubeconfig.to_owned(),
                },
                material: Material::cert(trust::ca::NEW),
            });
        }
        out.push(Effect::Restart(kubelet));
        out
    }

    /// Back to what an earlier roll made it load, without re-issuing its certificates again;
    /// else its original files from the backup, then a restart.
    pub fn undo(
        node: &str,
        config: &str,
        kubeconfig: &str,
        target: &KubeletTarget,
        prior: &Option<KubeletTarget>,
        rank: u32,
        topology: &Topology,
    ) -> Vec<Compensation<Action>> {
        match prior {
            Some(before) => {
                let back = Action::RollKubelet {
                    node: node.to_owned(),
                    config: config.to_owned(),
                    kubeconfig: kubeconfig.to_owned(),
                    target: KubeletTarget {
                        reissue_client_cert: false,
                        reissue_serving_cert: None,
                        ..before.clone()
                    },
                    prior: Some(target.clone()),
                };
                vec![compensation(back, rank, None)]
            }
            None => {
                // The roll re-issues the client certificate its kubeconfig names (or embeds):
                // the file discovery found, kubelet-client-current.pem on kubeadm's layout.
                let mut paths = vec![config.to_owned(), kubeconfig.to_owned()];
                paths.push(topology.layout(node).kubelet.client_cert.clone());
                paths.extend(target.reissue_serving_cert.clone());
                vec![compensation(
                    files::restore(Some(node), paths),
                    rank,
                    Some(restart_after(node)),
                )]
            }
        }
    }

    /// Even when the files are right, the kubelet may not have been restarted: only the
    /// restart itself is repeated (it is harmless).
    pub async fn check<N: Node>(
        r: &Rotation<N>,
        node: &str,
        config: &str,
        kubeconfig: &str,
        target: &KubeletTarget,
    ) -> Result<Option<Summary>, Error> {
        if r.kubelet_done(node, config, kubeconfig, target).await? {
            r.restart_kubelet(node, true).await.map(Some)
        } else {
            Ok(None)
        }
    }

    /// Writes what changes (config, certificates, kubeconfig), then restarts the kubelet and
    /// waits until it accepts a client certificate of the new CA and reports its node Ready.
    pub async fn apply<N: Node>(
        r: &Rotation<N>,
        node: &str,
        config: &str,
        kubeconfig: &str,
        target: &KubeletTarget,
        now: jiff::Timestamp,
    ) -> Result<Summary, Error> {
        let n = r.node(node)?;
        let mut c = KubeletSettings::parse(config, &r.must_read(Some(node), config).await?)?;
        if c.set_client_ca_file(&target.client_ca_file)? {
            n.write(config, c.text().as_bytes(), 0o644).await?;
        }
        let mut k = Kubeconfig::parse(kubeconfig, &r.must_read(Some(node), kubeconfig).await?)?;
        let pem = text(r.resolve(target.kubeconfig_ca)?);
        let mut changed = k.set_ca_data(&pem)?;
        if target.reissue_client_cert {
            let ca = r.new_ca(CaKind::Cluster)?;
            if let Some(cert_pem) = k.client_cert_data()? {
                let key_pem = k.client_key_data()?.unwrap_or_default();
                let leaf = Cert::from_pem(&cert_pem, kubeconfig)?;
                if let Some(cert) = ca::renewed(&leaf, &ca, now)? {
                    changed |= k.set_client_data(&cert.to_pem(), &key_pem)?;
                }
            } else if let (Some(cert_file), key_file) = k.client_files() {
                // kubelet-client-current.pem holds certificate and key; keep the key.
                let both = r.must_read(Some(node), &cert_file).await?;
                let leaf = Cert::from_pem(&both, &format!("{node}:{cert_file}"))?;
                if let Some(cert) = ca::renewed(&leaf, &ca, now)? {
                    let key_pem = if key_file.as_deref() == Some(cert_file.as_str()) {
                        key_blocks(&both)
                    } else {
                        String::new()
                    };
                    let out = format!("{}{key_pem}", cert.to_pem());
                    n.write(&cert_file, out.as_bytes(), 0o600).await?;
                }
            }
        }
        if changed {
            n.write(kubeconfig, k.text().as_bytes(), 0o600).await?;
        }
        if let Some(serving) = &target.reissue_serving_cert {
            let ca = r.new_ca(CaKind::Cluster)?;
            let pem = r.must_read(Some(node), serving).await?;
            let leaf = Cert::from_pem(&pem, &format!("{node}:{serving}"))?;
            if let Some(cert) = ca::renewed(&leaf, &ca, now)? {
                // The certificate manager's file (`kubelet-server-current.pem`) holds the key
                // after the certificate, 0600: keep both so (the write follows its link).
                let keys = key_blocks(&pem);
                let (out, mode) = if keys.is_empty() {
                    (cert.to_pem(), 0o644)
                } else {
                    (format!("{}{keys}", cert.to_pem()), 0o600)
                };
                n.write(serving, out.as_bytes(), mode).await?;
            }
        }
        r.restart_kubelet(node, true).await
    }
}

/// `RestartKubelet` (rollback): a restart, waiting until the kubelet serves again and its node
/// is Ready.
pub mod restart_kubelet {
    use super::*;

    /// The kubelet loads what is on disk now.
    pub fn effects(node: &str) -> Vec<Effect> {
        vec![Effect::Restart(ComponentId::on(KUBELET, node))]
    }

    /// Restarts it and waits.
    pub async fn apply<N: Node>(r: &Rotation<N>, node: &str) -> Result<Summary, Error> {
        r.restart_kubelet(node, false).await
    }
}

impl<N: Node> Rotation<N> {
    /// A client certificate signed by the new cluster CA (a fresh key), for probing kubelets.
    pub(super) fn new_ca_client(&self) -> Result<crate::probe::ClientIdentity, Error> {
        if let Some(id) = self.probe_identity.borrow().as_ref() {
            return Ok(id.clone());
        }
        let id = self.new_ca_identity("kubeca-probe", None)?;
        *self.probe_identity.borrow_mut() = Some(id.clone());
        Ok(id)
    }

    /// Restarts a node's kubelet and waits until it serves its port again; with `trusts_new`,
    /// until it accepts a client certificate of the new CA (it has loaded its new client CA).
    async fn restart_kubelet(&self, node: &str, trusts_new: bool) -> Result<Summary, Error> {
        let n = self.node(node)?;
        let identity = if trusts_new { Some(self.new_ca_client()?) } else { None };
        // The node's own clock, read just before the restart: readiness is judged by times the
        // node reports, so a skewed clock on either side cannot pass an old heartbeat as new
        // or wait forever for one.
        let out = n.run("restart kubelet", "date -u +%s.%N && systemctl restart kubelet").await?;
        let clock = out.stdout_text();
        let Some((read, precise)) = super::ca::node_clock(&clock) else {
            return Err(Error::terminal(format!(
                "node {node}: `date -u +%s.%N` printed {clock:?}, not a time; kubeca reads the \
                 node's clock to tell its kubelet's heartbeats from older ones"
            )));
        };
        // Read to the second only, the restart may have come up to a second later: count from
        // the next second, so that no renewal of the old kubelet passes for the new one's.
        let started = if precise { read } else { read + jiff::SignedDuration::from_secs(1) };
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
            // With a new-CA identity, accepted means authenticated: a real kubelet completes
            // the handshake with any certificate and answers 401 to one its client CA lacks.
            let ok = match (&seen, &identity) {
                (seen, Some(_)) => seen.authenticated(),
                (Seen::Up { .. }, None) => true,
                (Seen::Down, None) => false,
            };
            let ready = match (&self.api, ok) {
                (Some(api), true) => api.node_back_since(node, started).await.unwrap_or(false),
                (None, true) => true,
                (_, false) => false,
            };
            if ready {
                return Ok(Summary::new()
                    .with(outcome::RESTARTED_AT, jiff::Timestamp::now().to_string())
                    .with("accepts-new-ca-client", trusts_new.to_string()));
            }
            if tokio::time::Instant::now() >= deadline {
                let why = match (&seen, &identity) {
                    (Seen::Up { status: 401, .. }, Some(_)) => format!(
                        ": it answers 401 Unauthorized to a client certificate of the new CA, so \
                         it does not load the client CA bundle its configuration names (a \
                         --client-ca-file flag overrides clientCAFile: see the kubelet's command \
                         line, /var/lib/kubelet/kubeadm-flags.env and /etc/default/kubelet on \
                         {node}); fix it and run kubeca again, or roll back"
                    ),
                    (Seen::Up { status: 0, .. }, Some(_)) => {
                        ": it refuses a client certificate of the new CA in the handshake".into()
                    }
                    (Seen::Down, _) => format!(": nothing answers on {address}:{port}"),
                    _ => String::new(),
                };
                return Err(Error::transient(format!(
                    "node {node}: the kubelet did not {} and report its node Ready within {} s{why}",
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

    /// Whether the kubelet's files are as the roll leaves them: `clientCAFile`, the
    /// kubeconfig's CA, and the certificates re-issued by the new CA.
    async fn kubelet_done(
        &self,
        node: &str,
        config: &str,
        kubeconfig: &str,
        target: &KubeletTarget,
    ) -> Result<bool, Error> {
        let c = KubeletSettings::parse(config, &self.must_read(Some(node), config).await?)?;
        if c.client_ca_file().as_deref() != Some(target.client_ca_file.as_str()) {
            return Ok(false);
        }
        let k = Kubeconfig::parse(kubeconfig, &self.must_read(Some(node), kubeconfig).await?)?;
        let want = text(self.resolve(target.kubeconfig_ca)?);
        if k.ca_data()?.as_deref() != Some(want.as_str()) {
            return Ok(false);
        }
        // The certificates are written after the config and the kubeconfig's CA: a crash in
        // between leaves those right and the certificates still of the old CA.
        let now = jiff::Timestamp::now();
        let under_new_ca = |pem: &str, origin: &str| -> Result<bool, Error> {
            let ca = self.new_ca(CaKind::Cluster)?;
            let leaf = Cert::from_pem(pem, origin)?;
            Ok(pki::verify_chain(&leaf, std::slice::from_ref(ca.cert()), now).is_ok())
        };
        if target.reissue_client_cert {
            let pem = match k.client_cert_data()? {
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

#[cfg(test)]
mod tests {
    use engine::{Runner, StepId};

    use super::*;
    use crate::action::testing::runner;
    use crate::action::{CaKind, Content};
    use crate::fixtures;
    use crate::kubeadm::path;
    use crate::node::LocalNode;

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
}
