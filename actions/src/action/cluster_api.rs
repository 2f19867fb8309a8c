//! Effects through the Kubernetes API: `kube-root-ca.crt` (upstream steps 3 and 12.1), workload
//! restarts (4, 9.1, 9.4), `kube-public/cluster-info` (10), the CAs of
//! `extension-apiserver-authentication`, the log and stale-pod checks (11), and which client
//! kubeca talks to the API with at each point of the rotation.

use std::collections::BTreeSet;
use std::time::Duration;

use engine::{Compensation, StepId, Summary};
use journal::Hash;

use super::runner::text;
use super::{Action, CaKind, Content, Error, Rotation, compensation, new_ca_step};
use crate::api::{ApiError, ClusterApi};
use crate::edit::Manifest;
use crate::kubeadm::component::{self, CONTROLLER_MANAGER};
use crate::kubeadm::{object, outcome, slot, step};
use crate::node::Node;
use crate::pki::{self, Cert};
use crate::trust::{self, ComponentId, Effect, Topology};

/// `WaitRootCa`: every namespace's `kube-root-ca.crt` (and every legacy token Secret's
/// `ca.crt`) holds the content.
pub mod wait_root_ca {
    use super::*;

    /// What the controller-manager publishes is what it loaded: the wait observes it, in every
    /// namespace the model knows.
    pub fn effects(topology: &Topology) -> Vec<Effect> {
        let Some(first) = topology.control_planes.first() else { return Vec::new() };
        let from = ComponentId::on(CONTROLLER_MANAGER, first);
        let mut namespaces: Vec<String> = object::NAMESPACES.map(String::from).into();
        namespaces.extend(topology.pods.iter().map(|(ns, _, _)| ns.clone()));
        namespaces.sort();
        namespaces.dedup();
        namespaces
            .into_iter()
            .map(|ns| Effect::Publish {
                from: from.clone(),
                slot: slot::ROOT_CA.into(),
                target: trust::configmap(&ns, object::ROOT_CA),
                merge: false,
            })
            .collect()
    }

    /// Waits until they hold it.
    pub async fn apply<N: Node>(r: &Rotation<N>, content: Content) -> Result<Summary, Error> {
        let pem = text(r.resolve(content)?);
        r.api().await?.wait_root_ca(&pem).await?;
        Ok(Summary::new().with("root-ca", Hash::of(pem.as_bytes()).to_hex()))
    }
}

/// `RollWorkloads`: Deployments, DaemonSets and StatefulSets restarted through their pod
/// template, respecting PDBs, each rollout awaited.
pub mod roll_workloads {
    use super::*;

    /// Every pod restarts (all workloads), or only the aggregated API servers (`only` lists
    /// the extension servers, upstream 9.1).
    pub fn effects(only: &[String], topology: &Topology) -> Vec<Effect> {
        let aggregated = topology.aggregated.iter().map(|(ns, name, node)| {
            Effect::Restart(ComponentId::on(&component::aggregated(ns, name), node))
        });
        if !only.is_empty() {
            return aggregated.collect();
        }
        let pods = topology.pods.iter().map(|(ns, name, node)| {
            Effect::Restart(ComponentId::on(&component::pod(ns, name), node))
        });
        pods.chain(aggregated).collect()
    }

    /// Restarts them and waits for each rollout.
    pub async fn apply<N: Node>(
        r: &Rotation<N>,
        only: &[String],
        round: &str,
    ) -> Result<Summary, Error> {
        let rolled = r.api().await?.roll_workloads(only, round).await?;
        Ok(Summary::new().with("rolled", rolled.len().to_string()))
    }
}

/// `SetClusterInfo`: the CA data joining nodes trust (`kube-public/cluster-info`).
pub mod set_cluster_info {
    use super::*;

    /// The ConfigMap holds the content.
    pub fn effects(content: Content) -> Vec<Effect> {
        content
            .material()
            .map(|m| Effect::Write {
                source: trust::configmap(object::KUBE_PUBLIC, object::CLUSTER_INFO),
                material: m,
            })
            .into_iter()
            .collect()
    }

    /// Back to what it held before this step.
    pub fn undo(content: Content, prior: Content, rank: u32) -> Vec<Compensation<Action>> {
        vec![compensation(Action::SetClusterInfo { content: prior, prior: content }, rank, None)]
    }

    /// Sets it (changing nothing else in its kubeconfig).
    pub async fn apply<N: Node>(r: &Rotation<N>, content: Content) -> Result<Summary, Error> {
        let pem = text(r.resolve(content)?);
        r.api().await?.set_cluster_info(&pem).await?;
        Ok(Summary::new().with("ca", Hash::of(pem.as_bytes()).to_hex()))
    }
}

/// `SetAuthenticationCas`: the CAs of `kube-system/extension-apiserver-authentication`.
///
/// Every apiserver merges its client CA and request-header CA into that ConfigMap and never
/// removes one that has not expired (`pkg/controlplane/controller/clusterauthenticationtrust`,
/// `combineCertLists`), and the scheduler and aggregated API servers trust what it holds
/// (`NewDynamicCAFromConfigMapController`). Left alone, the old CAs stay trusted there for
/// years after a rotation. The content is replaced in place (a consumer refuses everyone while
/// the ConfigMap is absent); the apiservers republish on every change of it, so the step then
/// waits until what it wrote has stood for [`STABLE`]: a CA merged back means an apiserver
/// still loads a file holding it.
pub mod set_authentication_cas {
    use super::*;

    /// How long the content must stay as written.
    pub const STABLE: Duration = Duration::from_secs(10);

    /// The ConfigMap's request-header CA (what the model follows of it) holds the content.
    pub fn effects(requestheader_ca: Content) -> Vec<Effect> {
        requestheader_ca
            .material()
            .map(|m| Effect::Write {
                source: trust::configmap(
                    object::KUBE_SYSTEM,
                    object::EXTENSION_APISERVER_AUTHENTICATION,
                ),
                material: m,
            })
            .into_iter()
            .collect()
    }

    /// Back to what it held before this step.
    pub fn undo(
        content: (Content, Content),
        prior: (Content, Content),
        rank: u32,
    ) -> Vec<Compensation<Action>> {
        let back = Action::SetAuthenticationCas {
            client_ca: prior.0,
            requestheader_ca: prior.1,
            prior: content,
        };
        vec![compensation(back, rank, None)]
    }

    /// Writes them, then waits until the apiservers' republishing leaves them as written.
    pub async fn apply<N: Node>(
        r: &Rotation<N>,
        client_ca: Content,
        requestheader_ca: Content,
    ) -> Result<Summary, Error> {
        let want = (text(r.resolve(client_ca)?), text(r.resolve(requestheader_ca)?));
        let same = |pem: &Option<String>, want: &str| -> Result<bool, Error> {
            let Some(pem) = pem else { return Ok(false) };
            let key = |text: &str| -> Result<BTreeSet<Vec<u8>>, Error> {
                Ok(pki::split_pem(text, "extension-apiserver-authentication")?
                    .iter()
                    .map(|c| c.der().to_vec())
                    .collect())
            };
            Ok(key(pem)? == key(want)?)
        };
        let api = r.api().await?;
        let deadline = tokio::time::Instant::now() + r.wait;
        let mut writes = 0;
        'write: loop {
            api.set_authentication_cas(&want.0, &want.1).await?;
            writes += 1;
            let since = tokio::time::Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let (client, header) = api.authentication_cas().await?;
                if !(same(&client, &want.0)? && same(&header, &want.1)?) {
                    if tokio::time::Instant::now() >= deadline {
                        return Err(Error::transient(format!(
                            "kube-system/extension-apiserver-authentication: an apiserver keeps \
                             merging back CAs kubeca removed (client-ca-file holds {}, \
                             requestheader-client-ca-file {} certificates): it still loads a \
                             file that holds them; check every apiserver's --client-ca-file and \
                             --requestheader-client-ca-file, then run kubeca again",
                            count(&client),
                            count(&header)
                        )));
                    }
                    continue 'write;
                }
                if since.elapsed() >= STABLE {
                    break 'write;
                }
            }
        }
        Ok(Summary::new()
            .with("client-ca", Hash::of(want.0.as_bytes()).to_hex())
            .with("requestheader-ca", Hash::of(want.1.as_bytes()).to_hex())
            .with("writes", writes.to_string()))
    }

    fn count(pem: &Option<String>) -> usize {
        pem.as_deref().map_or(0, |p| p.matches("BEGIN CERTIFICATE").count())
    }
}

/// `CheckLogs`: no TLS error in control-plane, kubelet and kube-proxy logs since the switch.
pub mod check_logs {
    use super::*;

    /// Scans them; any TLS error stops the run.
    pub async fn apply<N: Node>(r: &Rotation<N>) -> Result<Summary, Error> {
        let errors = r.api().await?.tls_errors_since(r.switch_time()).await?;
        if errors.is_empty() {
            Ok(Summary::new().with("tls-errors", "0"))
        } else {
            Err(Error::terminal(format!(
                "TLS errors in logs since the switch:\n{}",
                errors.join("\n")
            )))
        }
    }
}

/// `ListStalePods`: pods started before the switch, which hold the old CA in memory.
pub mod list_stale_pods {
    use super::*;

    /// Lists them (a warning, not a failure).
    pub async fn apply<N: Node>(r: &Rotation<N>) -> Result<Summary, Error> {
        let pods = r.api().await?.pods_started_before(r.switch_time()).await?;
        if !pods.is_empty() {
            tracing::warn!(
                count = pods.len(),
                "pods started before the switch hold the old CA in memory: {}",
                pods.join(", ")
            );
        }
        Ok(Summary::new().with("stale-pods", pods.len().to_string()))
    }
}

/// A client kubeca builds for itself and cannot use: retrying builds the same one.
fn unusable(e: ApiError) -> Error {
    Error::terminal(e)
}

impl<N: Node> Rotation<N> {
    /// The API client for the next call. Before the new CA exists: the operator's kubeconfig.
    /// Afterwards kubeca trusts the old and the new CA for the apiservers' serving certificates,
    /// and authenticates with a certificate every apiserver accepts, judged from their client CA
    /// files on disk (which the restarts keep equal to what is loaded): its own short-lived
    /// certificate of the new CA when all hold the new CA, else the operator's pre-rotation
    /// credentials (from the preflight backup; the operator's kubeconfig itself is rewritten
    /// during the rotation). Chosen from the files, not by trying: a refused client certificate
    /// is a trust failure in the cluster's logs.
    pub(super) async fn api(&self) -> Result<ClusterApi, Error> {
        let base = self
            .api
            .as_ref()
            .ok_or_else(|| Error::terminal("no API client: the admin kubeconfig was not loaded"))?;
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
            let cert_pem = Cert::from_der(cert, "kubeca's client certificate")?.to_pem();
            base.variant(&[new_der], Some((&cert_pem, &key))).map_err(unusable)?
        } else {
            let path = self.inventory.cluster.kubeconfig.display().to_string();
            let backup = self.outcome(&step::backup(None))?;
            let digest =
                backup.0.get(&path).filter(|d| *d != outcome::ABSENT).ok_or_else(|| {
                    Error::terminal(format!(
                        "the preflight backup does not hold the operator's kubeconfig {path}"
                    ))
                })?;
            let text = text(self.blob(digest)?);
            ClusterApi::from_kubeconfig_text(
                &format!("{path} (as backed up before the rotation)"),
                &text,
            )
            .await
            .map_err(unusable)?
            .variant(&[new_der], None)
            .map_err(unusable)?
        };
        self.api_variants.borrow_mut()[slot] = Some(api.clone());
        Ok(api)
    }

    /// The operator's own client certificate and key, to probe apiservers with (a hardened one
    /// answers 401 to anonymous requests, its health checks included): those of the kubeconfig
    /// kubeca runs with, as the preflight backup holds it (the file is rewritten during the
    /// rotation), or as it is before the backup. Inline data or files (relative to the
    /// kubeconfig's directory), as kubectl reads them. None when that kubeconfig authenticates
    /// otherwise (a token, an exec plugin): probes then go without credentials.
    pub(super) async fn operator_identity(
        &self,
    ) -> Result<Option<crate::probe::ClientIdentity>, Error> {
        let kubeconfig = &self.inventory.cluster.kubeconfig;
        let path = kubeconfig.display().to_string();
        let backed_up = self
            .known
            .borrow()
            .get(&StepId::from(step::backup(None)))
            .and_then(|b| b.0.get(&path).filter(|d| *d != outcome::ABSENT).cloned());
        let (origin, text) = match backed_up {
            Some(digest) => {
                (format!("{path} (as backed up before the rotation)"), text(self.blob(&digest)?))
            }
            None => (path.clone(), self.must_read(None, &path).await?),
        };
        let Some((cert, key)) = crate::api::client_credentials(&origin, &text)? else {
            return Ok(None);
        };
        let dir = kubeconfig.parent().unwrap_or(std::path::Path::new("/"));
        let load = async |source: crate::api::Credential, what: &str| -> Result<String, Error> {
            match source {
                crate::api::Credential::Data(pem) => Ok(pem),
                crate::api::Credential::File(f) => {
                    let file = dir.join(&f).display().to_string();
                    self.must_read(None, &file)
                        .await
                        .map_err(|e| Error::terminal(format!("{origin}: its {what} {file}: {e}")))
                }
            }
        };
        let cert_pem = load(cert, "client-certificate").await?;
        let key_pem = load(key, "client-key").await?;
        let cert = Cert::from_pem(&cert_pem, &format!("the client certificate of {origin}"))?;
        Ok(Some((cert.der().to_vec(), key_pem)))
    }

    /// Whether every apiserver's client CA file, as its manifest names it now, holds the CA
    /// certificate `der`. The manifests are where discovery found them (each node's static pod
    /// directory), parked or not.
    pub(super) async fn every_apiserver_accepts(&self, der: &[u8]) -> Result<bool, Error> {
        for cp in self.inventory.control_planes() {
            let manifest_path = &self.topology.layout(&cp.name).apiserver.manifest;
            let manifest = Manifest::parse(
                &format!("{}:{manifest_path}", cp.name),
                &self.manifest_text(&cp.name, manifest_path).await?,
            )?;
            let Some(file) = manifest.flag("--client-ca-file") else { return Ok(false) };
            let bundle = self.must_read(Some(&cp.name), &file).await?;
            if !pem_ders(&bundle).iter().any(|d| d == der) {
                return Ok(false);
            }
        }
        Ok(true)
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
}

/// The DER of every certificate in a PEM text.
fn pem_ders(pem: &str) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .filter_map(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::action::testing::{runner, with_new_ca};
    use crate::fixtures;

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
        let runner = crate::action::testing::runner(dir.path(), false).await;
        let e = runner.every_apiserver_accepts(&der).await.unwrap_err();
        assert!(e.message.contains("kube-apiserver.yaml"), "{}", e.message);
    }
}
