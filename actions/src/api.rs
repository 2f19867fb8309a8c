//! Kubernetes API effects (the `kube` crate): root CA publication, workload rollouts,
//! `cluster-info`, extension servers, TLS errors in logs, pods older than the switch.
//!
//! The client is built from the operator's admin kubeconfig; during the rotation the runner
//! derives variants of it ([`ClusterApi::variant`]) that also trust the new CA and, once every
//! apiserver accepts it, authenticate with a short-lived certificate of the new CA, so API steps
//! keep working through the switch and after the old CA is dropped.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use kube::api::{Api, ListParams, LogParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;

use crate::kubeadm::object;

/// The annotation that restarts a workload's pods (upstream 9.4 uses `ca-rotation`).
pub const ROTATION_ANNOTATION: &str = "kubeca.io/rotation";

/// An issued certificate signing request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCsr {
    /// Its name.
    pub name: String,
    /// Who asked (`spec.username`).
    pub requester: String,
    /// `spec.signerName`.
    pub signer: String,
    /// When it was approved.
    pub approved_at: String,
    /// `status.certificate`, PEM.
    pub certificate: String,
}

/// Why an API effect failed. Each names the object and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The kubeconfig could not be used.
    #[error("{path}: cannot use this kubeconfig: {detail}")]
    Config {
        /// The kubeconfig.
        path: String,
        /// What kube said.
        detail: String,
    },
    /// An API call failed.
    #[error("{what}: {source}")]
    Call {
        /// What was being done ("get kube-system/kube-root-ca.crt").
        what: String,
        /// kube's error.
        #[source]
        source: kube::Error,
    },
    /// A condition was not reached in time.
    #[error("{what}: not reached within {secs} s")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The limit.
        secs: u64,
    },
}

impl ApiError {
    /// Whether trying again may succeed.
    pub fn is_transient(&self) -> bool {
        !matches!(self, ApiError::Config { .. })
    }
}

fn call(what: impl Into<String>) -> impl FnOnce(kube::Error) -> ApiError {
    let what = what.into();
    move |source| ApiError::Call { what, source }
}

/// Where a kubeconfig keeps a client certificate or key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// Inline (`client-certificate-data`, `client-key-data`), decoded: PEM.
    Data(String),
    /// In a file (`client-certificate`, `client-key`), as named.
    File(String),
}

/// The client certificate and key of a kubeconfig's current context (`origin` names it in
/// errors), or None when its user authenticates otherwise (a token, an exec plugin).
pub fn client_credentials(
    origin: &str,
    text: &str,
) -> Result<Option<(Credential, Credential)>, ApiError> {
    use base64::Engine as _;
    let fail = |detail: String| ApiError::Config { path: origin.to_owned(), detail };
    let kc = Kubeconfig::from_yaml(text).map_err(|e| fail(e.to_string()))?;
    let context = kc
        .current_context
        .as_ref()
        .and_then(|c| kc.contexts.iter().find(|x| &x.name == c))
        .and_then(|c| c.context.as_ref())
        .ok_or_else(|| fail("its current-context names no context".into()))?;
    let Some(user) = context.user.as_ref() else { return Ok(None) };
    let auth = kc
        .auth_infos
        .iter()
        .find(|a| &a.name == user)
        .and_then(|a| a.auth_info.as_ref())
        .ok_or_else(|| fail(format!("its context names user {user:?}, which it does not hold")))?;
    let decode = |what: &str, b64: &str| -> Result<String, ApiError> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .map_err(|e| fail(format!("user {user:?}: {what} is not base64: {e}")))?;
        String::from_utf8(bytes).map_err(|_| fail(format!("user {user:?}: {what} is not PEM")))
    };
    use secrecy::ExposeSecret as _;
    let cert = match (&auth.client_certificate_data, &auth.client_certificate) {
        (Some(d), _) => Credential::Data(decode("client-certificate-data", d)?),
        (None, Some(f)) => Credential::File(f.clone()),
        (None, None) => return Ok(None),
    };
    let key = match (&auth.client_key_data, &auth.client_key) {
        (Some(d), _) => Credential::Data(decode("client-key-data", d.expose_secret())?),
        (None, Some(f)) => Credential::File(f.clone()),
        (None, None) => {
            return Err(fail(format!("user {user:?} has a client certificate but no key")));
        }
    };
    Ok(Some((cert, key)))
}

/// The cluster's API, as the operator's admin.
#[derive(Clone)]
pub struct ClusterApi {
    client: Client,
    config: Config,
    /// How long waits (rollouts, publication) may take.
    pub wait: Duration,
}

impl std::fmt::Debug for ClusterApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterApi").finish_non_exhaustive()
    }
}

impl ClusterApi {
    /// A client from the kubeconfig at `path`.
    pub async fn from_kubeconfig(path: &Path) -> Result<ClusterApi, ApiError> {
        let fail = |detail: String| ApiError::Config { path: path.display().to_string(), detail };
        let kc = Kubeconfig::read_from(path).map_err(|e| fail(e.to_string()))?;
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(|e| fail(e.to_string()))?;
        let client = Client::try_from(config.clone()).map_err(|e| fail(e.to_string()))?;
        Ok(ClusterApi { client, config, wait: Duration::from_secs(600) })
    }

    /// A client from a kubeconfig's text (`origin` names it in errors): the operator's
    /// kubeconfig as backed up before the rotation.
    pub async fn from_kubeconfig_text(origin: &str, text: &str) -> Result<ClusterApi, ApiError> {
        let fail = |detail: String| ApiError::Config { path: origin.to_owned(), detail };
        let kc = Kubeconfig::from_yaml(text).map_err(|e| fail(e.to_string()))?;
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(|e| fail(e.to_string()))?;
        let client = Client::try_from(config.clone()).map_err(|e| fail(e.to_string()))?;
        Ok(ClusterApi { client, config, wait: Duration::from_secs(600) })
    }

    /// The same endpoint, also trusting the CA certificates `extra_roots` (DER) for the
    /// apiserver's serving certificate, and, with `identity` (certificate and key PEM), using
    /// that client certificate instead of the kubeconfig's credentials.
    ///
    /// During a rotation kubeca trusts the old and the new CA (the operator's kubeconfig names
    /// only the old one), and authenticates with a short-lived certificate of the new CA once
    /// every apiserver accepts it: the operator's certificate is refused after `finalize`.
    pub fn variant(
        &self,
        extra_roots: &[Vec<u8>],
        identity: Option<(&str, &str)>,
    ) -> Result<ClusterApi, ApiError> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut config = self.config.clone();
        let roots = config.root_cert.get_or_insert_with(Vec::new);
        for r in extra_roots {
            if !roots.contains(r) {
                roots.push(r.clone());
            }
        }
        if let Some((cert, key)) = identity {
            let a = &mut config.auth_info;
            a.client_certificate = None;
            a.client_key = None;
            a.token = None;
            a.token_file = None;
            a.exec = None;
            a.username = None;
            a.password = None;
            a.client_certificate_data = Some(b64.encode(cert));
            a.client_key_data = Some(b64.encode(key).into());
        }
        let client = Client::try_from(config.clone()).map_err(|e| ApiError::Config {
            path: "kubeca's own API client".into(),
            detail: e.to_string(),
        })?;
        Ok(ClusterApi { client, config, wait: self.wait })
    }

    /// A client of one apiserver (`url`, e.g. `https://10.0.0.11:6443`) with the credentials and
    /// CA data of the kubeconfig at `path`: both directions of TLS trust are exercised by a real
    /// request.
    pub async fn one_apiserver(path: &Path, url: &str) -> Result<ClusterApi, ApiError> {
        let fail = |detail: String| ApiError::Config { path: path.display().to_string(), detail };
        let kc = Kubeconfig::read_from(path).map_err(|e| fail(e.to_string()))?;
        let mut config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
            .await
            .map_err(|e| fail(e.to_string()))?;
        config.cluster_url = url.parse().map_err(|e| fail(format!("{url}: {e}")))?;
        let client = Client::try_from(config.clone()).map_err(|e| fail(e.to_string()))?;
        Ok(ClusterApi { client, config, wait: Duration::from_secs(30) })
    }

    /// `GET /version`: succeeds when this client and the apiserver trust each other.
    pub async fn version(&self) -> Result<String, ApiError> {
        let v = self.client.apiserver_version().await.map_err(call("GET /version"))?;
        Ok(v.git_version)
    }

    /// The CA certificates a ConfigMap key holds (`kube-root-ca.crt` / `ca.crt`).
    pub async fn configmap_value(
        &self,
        namespace: &str,
        name: &str,
        key: &str,
    ) -> Result<Option<String>, ApiError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), namespace);
        let cm = api.get_opt(name).await.map_err(call(format!("get {namespace}/{name}")))?;
        Ok(cm.and_then(|c| c.data).and_then(|d| d.get(key).cloned()))
    }

    /// Whether node `name`'s kubelet is back since `since`, a time read off the node's own clock
    /// (so the operator's clock, however skewed, plays no part): its Lease in kube-node-lease
    /// was renewed after `since` (a kubelet renews it at start, then every 10 s:
    /// `nodeLeaseRenewIntervalFraction` of the 40 s `leaseDurationSeconds`,
    /// pkg/kubelet/kubelet.go) and the node's Ready condition is True. A cluster without node
    /// leases falls back to the Ready condition's heartbeat, which a kubelet posts at start.
    pub async fn node_back_since(
        &self,
        name: &str,
        since: jiff::Timestamp,
    ) -> Result<bool, ApiError> {
        use k8s_openapi::api::coordination::v1::Lease;
        use k8s_openapi::api::core::v1::Node;
        let api: Api<Node> = Api::all(self.client.clone());
        let Some(node) = api.get_opt(name).await.map_err(call(format!("get node {name}")))? else {
            return Ok(false);
        };
        let conditions = node.status.and_then(|s| s.conditions).unwrap_or_default();
        let Some(ready) = conditions.iter().find(|c| c.type_ == "Ready") else {
            return Ok(false);
        };
        if ready.status != "True" {
            return Ok(false);
        }
        let leases: Api<Lease> = Api::namespaced(self.client.clone(), "kube-node-lease");
        let lease = leases.get_opt(name).await.map_err(call(format!("get lease {name}")))?;
        Ok(match lease.and_then(|l| l.spec).and_then(|s| s.renew_time) {
            Some(renewed) => renewed.0 > since,
            None => ready.last_heartbeat_time.as_ref().is_some_and(|t| t.0 >= since),
        })
    }

    /// Every node's name, as the cluster lists them.
    pub async fn node_names(&self) -> Result<Vec<String>, ApiError> {
        use k8s_openapi::api::core::v1::Node;
        let api: Api<Node> = Api::all(self.client.clone());
        let list = api.list(&ListParams::default()).await.map_err(call("list nodes"))?;
        Ok(list.items.into_iter().filter_map(|n| n.metadata.name).collect())
    }

    /// Every namespace's name.
    pub async fn namespaces(&self) -> Result<Vec<String>, ApiError> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let list = api.list(&ListParams::default()).await.map_err(call("list namespaces"))?;
        Ok(list.items.into_iter().filter_map(|n| n.metadata.name).collect())
    }

    /// The workloads behind aggregated API servers and admission webhooks
    /// (`namespace/Deployment/name`): they must be restarted to trust the new CAs (upstream 9.1).
    pub async fn extension_workloads(&self) -> Result<Vec<String>, ApiError> {
        use kube::api::{ApiResource, DynamicObject, GroupVersionKind};
        let mut out = Vec::new();
        let kinds = [
            ("apiregistration.k8s.io", "v1", "APIService", "apiservices", "/spec/service"),
            (
                "admissionregistration.k8s.io",
                "v1",
                "ValidatingWebhookConfiguration",
                "validatingwebhookconfigurations",
                "/webhooks",
            ),
            (
                "admissionregistration.k8s.io",
                "v1",
                "MutatingWebhookConfiguration",
                "mutatingwebhookconfigurations",
                "/webhooks",
            ),
        ];
        for (group, version, kind, plural, pointer) in kinds {
            let gvk = GroupVersionKind::gvk(group, version, kind);
            let resource = ApiResource::from_gvk_with_plural(&gvk, plural);
            let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &resource);
            // A cluster without the resource (an old or minimal API) simply has none.
            let Ok(list) = api.list(&ListParams::default()).await else { continue };
            for item in list.items {
                let Some(value) = item.data.pointer(pointer) else { continue };
                let services: Vec<&serde_json::Value> = match value {
                    serde_json::Value::Array(hooks) => {
                        hooks.iter().filter_map(|h| h.pointer("/clientConfig/service")).collect()
                    }
                    other => vec![other],
                };
                for svc in services {
                    if let (Some(ns), Some(name)) =
                        (svc["namespace"].as_str(), svc["name"].as_str())
                    {
                        out.push(format!("{ns}/Deployment/{name}"));
                    }
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Namespaces whose `kube-root-ca.crt` does not hold exactly `pem` (as certificates, in any
    /// order), and legacy token Secrets whose `ca.crt` does not.
    pub async fn root_ca_lagging(&self, pem: &str) -> Result<Vec<String>, ApiError> {
        let want = cert_set(pem);
        let mut lagging = Vec::new();
        for ns in self.namespaces().await? {
            let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), &ns);
            let cm = api
                .get_opt(object::ROOT_CA)
                .await
                .map_err(call(format!("get {ns}/kube-root-ca.crt")))?;
            let have =
                cm.and_then(|c| c.data).and_then(|d| d.get("ca.crt").cloned()).unwrap_or_default();
            if cert_set(&have) != want {
                lagging.push(format!("configmap {ns}/kube-root-ca.crt"));
            }
            let secrets: Api<Secret> = Api::namespaced(self.client.clone(), &ns);
            let list = secrets
                .list(&ListParams::default().fields("type=kubernetes.io/service-account-token"))
                .await
                .map_err(call(format!("list token secrets in {ns}")))?;
            for s in list.items {
                if s.type_.as_deref() != Some("kubernetes.io/service-account-token") {
                    continue;
                }
                let have = s
                    .data
                    .as_ref()
                    .and_then(|d| d.get("ca.crt"))
                    .map(|b| String::from_utf8_lossy(&b.0).into_owned())
                    .unwrap_or_default();
                if cert_set(&have) != want {
                    lagging.push(format!("secret {ns}/{}", s.metadata.name.unwrap_or_default()));
                }
            }
        }
        Ok(lagging)
    }

    /// Waits until every `kube-root-ca.crt` and legacy token Secret holds `pem`.
    pub async fn wait_root_ca(&self, pem: &str) -> Result<(), ApiError> {
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            let lagging = self.root_ca_lagging(pem).await?;
            if lagging.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::Timeout {
                    what: format!("the new root CA in {}", lagging.join(", ")),
                    secs: self.wait.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Restarts every Deployment, DaemonSet and StatefulSet (or only `only`, as
    /// `namespace/Kind/name`) by setting the pod template annotation to `round`, one workload at
    /// a time: each rollout (which follows the workload's own update strategy) is awaited before
    /// the next starts, so at most one workload is disrupted at once. Returns the workloads
    /// rolled. Already-annotated workloads are not patched again (idempotent), but their rollout
    /// is still awaited.
    pub async fn roll_workloads(
        &self,
        only: &[String],
        round: &str,
    ) -> Result<Vec<String>, ApiError> {
        let patch = json!({"spec": {"template": {"metadata": {"annotations": {ROTATION_ANNOTATION: round}}}}});
        let mut rolled = Vec::new();
        for ns in self.namespaces().await? {
            macro_rules! each {
                ($ty:ty, $kind:literal) => {{
                    let api: Api<$ty> = Api::namespaced(self.client.clone(), &ns);
                    let list = api
                        .list(&ListParams::default())
                        .await
                        .map_err(call(format!("list {} in {ns}", $kind)))?;
                    for w in list.items {
                        let name = w.metadata.name.clone().unwrap_or_default();
                        let key = format!("{ns}/{}/{name}", $kind);
                        if !only.is_empty() && !only.contains(&key) {
                            continue;
                        }
                        let current = w
                            .spec
                            .as_ref()
                            .and_then(|s| s.template.metadata.as_ref())
                            .and_then(|m| m.annotations.as_ref())
                            .and_then(|a| a.get(ROTATION_ANNOTATION).cloned());
                        if current.as_deref() != Some(round) {
                            api.patch(&name, &PatchParams::default(), &Patch::Strategic(&patch))
                                .await
                                .map_err(call(format!("annotate {key}")))?;
                        }
                        self.wait_rollouts(std::slice::from_ref(&key), round).await?;
                        rolled.push(key);
                    }
                }};
            }
            each!(Deployment, "Deployment");
            each!(DaemonSet, "DaemonSet");
            each!(StatefulSet, "StatefulSet");
        }
        Ok(rolled)
    }

    /// Waits until every pod of the given workloads carries `round` and is running.
    async fn wait_rollouts(&self, workloads: &[String], round: &str) -> Result<(), ApiError> {
        let deadline = tokio::time::Instant::now() + self.wait;
        let mut by_ns: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for w in workloads {
            let mut parts = w.splitn(3, '/');
            if let (Some(ns), Some(_), Some(name)) = (parts.next(), parts.next(), parts.next()) {
                by_ns.entry(ns.to_owned()).or_default().push(name.to_owned());
            }
        }
        loop {
            let mut waiting = Vec::new();
            for (ns, names) in &by_ns {
                let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
                let list = pods
                    .list(&ListParams::default())
                    .await
                    .map_err(call(format!("list pods in {ns}")))?;
                for name in names {
                    let mine: Vec<&Pod> = list.items.iter().filter(|p| owned_by(p, name)).collect();
                    let stale = mine.iter().any(|p| {
                        let annotated = p
                            .metadata
                            .annotations
                            .as_ref()
                            .and_then(|a| a.get(ROTATION_ANNOTATION))
                            .is_some_and(|v| v == round);
                        let running =
                            p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                        !(annotated && running)
                    });
                    if stale {
                        waiting.push(format!("{ns}/{name}"));
                    }
                }
            }
            if waiting.is_empty() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::Timeout {
                    what: format!("rollout of {}", waiting.join(", ")),
                    secs: self.wait.as_secs(),
                });
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Sets `certificate-authority-data` in `kube-public/cluster-info`'s kubeconfig to `pem`,
    /// changing nothing else in it. Returns whether it changed.
    pub async fn set_cluster_info(&self, pem: &str) -> Result<bool, ApiError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), object::KUBE_PUBLIC);
        let cm =
            api.get(object::CLUSTER_INFO).await.map_err(call("get kube-public/cluster-info"))?;
        let text = cm.data.as_ref().and_then(|d| d.get("kubeconfig")).cloned().unwrap_or_default();
        let mut kc =
            crate::edit::Kubeconfig::parse("kube-public/cluster-info", &text).map_err(|e| {
                ApiError::Config { path: "kube-public/cluster-info".into(), detail: e.to_string() }
            })?;
        let changed = kc.set_ca_data(pem).map_err(|e| ApiError::Config {
            path: "kube-public/cluster-info".into(),
            detail: e.to_string(),
        })?;
        if changed {
            let patch = json!({"data": {"kubeconfig": kc.text()}});
            api.patch(object::CLUSTER_INFO, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map_err(call("update kube-public/cluster-info"))?;
        }
        Ok(changed)
    }

    /// `client-ca-file` and `requestheader-client-ca-file` of
    /// `kube-system/extension-apiserver-authentication` (None for a key it lacks).
    pub async fn authentication_cas(&self) -> Result<(Option<String>, Option<String>), ApiError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), object::KUBE_SYSTEM);
        let what = "get kube-system/extension-apiserver-authentication";
        let cm =
            api.get_opt(object::EXTENSION_APISERVER_AUTHENTICATION).await.map_err(call(what))?;
        let data = cm.and_then(|c| c.data).unwrap_or_default();
        Ok((data.get("client-ca-file").cloned(), data.get("requestheader-client-ca-file").cloned()))
    }

    /// Replaces the two CA keys of `kube-system/extension-apiserver-authentication` in place,
    /// keeping its other keys (the request-header names).
    pub async fn set_authentication_cas(
        &self,
        client_ca: &str,
        requestheader_ca: &str,
    ) -> Result<(), ApiError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), object::KUBE_SYSTEM);
        let patch = json!({"data": {
            "client-ca-file": client_ca,
            "requestheader-client-ca-file": requestheader_ca,
        }});
        api.patch(
            object::EXTENSION_APISERVER_AUTHENTICATION,
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
        .map_err(call("update kube-system/extension-apiserver-authentication"))?;
        Ok(())
    }

    /// The CA data `kube-public/cluster-info` holds now.
    pub async fn cluster_info_ca(&self) -> Result<Option<String>, ApiError> {
        let api: Api<ConfigMap> = Api::namespaced(self.client.clone(), object::KUBE_PUBLIC);
        let Some(cm) = api
            .get_opt(object::CLUSTER_INFO)
            .await
            .map_err(call("get kube-public/cluster-info"))?
        else {
            return Ok(None);
        };
        let text = cm.data.as_ref().and_then(|d| d.get("kubeconfig")).cloned().unwrap_or_default();
        Ok(crate::edit::Kubeconfig::parse("cluster-info", &text)
            .ok()
            .and_then(|k| k.ca_data().ok().flatten()))
    }

    /// The certificate signing requests with a certificate whose approval is at or after
    /// `since` (the controller-manager's cleaner keeps issued ones an hour after approval,
    /// `pkg/controller/certificates/cleaner/cleaner.go`).
    pub async fn issued_csrs_since(
        &self,
        since: jiff::Timestamp,
    ) -> Result<Vec<IssuedCsr>, ApiError> {
        use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
        let api: Api<CertificateSigningRequest> = Api::all(self.client.clone());
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(call("list certificatesigningrequests"))?;
        let mut out = Vec::new();
        for csr in list.items {
            let Some(status) = csr.status else { continue };
            let Some(cert) = status.certificate.filter(|c| !c.0.is_empty()) else { continue };
            let conditions = status.conditions.unwrap_or_default();
            let Some(approved) = conditions.iter().find(|c| c.type_ == "Approved") else {
                continue;
            };
            let at = approved
                .last_update_time
                .as_ref()
                .or(approved.last_transition_time.as_ref())
                .map(|t| t.0)
                .or(csr.metadata.creation_timestamp.as_ref().map(|t| t.0));
            if at.is_some_and(|t| t < since) {
                continue;
            }
            out.push(IssuedCsr {
                name: csr.metadata.name.unwrap_or_default(),
                requester: csr.spec.username.unwrap_or_default(),
                signer: csr.spec.signer_name,
                approved_at: at.map(|t| t.to_string()).unwrap_or_else(|| "an unknown time".into()),
                certificate: String::from_utf8_lossy(&cert.0).into_owned(),
            });
        }
        Ok(out)
    }

    /// Pods started before `since` (they hold what they read at start in memory).
    pub async fn pods_started_before(
        &self,
        since: jiff::Timestamp,
    ) -> Result<Vec<String>, ApiError> {
        let api: Api<Pod> = Api::all(self.client.clone());
        let list = api.list(&ListParams::default()).await.map_err(call("list pods"))?;
        Ok(list
            .items
            .into_iter()
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.start_time.as_ref())
                    .is_some_and(|t| t.0.as_second() < since.as_second())
            })
            .map(|p| {
                format!(
                    "{}/{}",
                    p.metadata.namespace.unwrap_or_default(),
                    p.metadata.name.unwrap_or_default()
                )
            })
            .collect())
    }

    /// Lines mentioning TLS or certificate errors in the logs of kube-system pods since `since`.
    pub async fn tls_errors_since(&self, since: jiff::Timestamp) -> Result<Vec<String>, ApiError> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), object::KUBE_SYSTEM);
        let list = api.list(&ListParams::default()).await.map_err(call("list kube-system pods"))?;
        let seconds = (jiff::Timestamp::now().as_second() - since.as_second()).max(1);
        let mut found = Vec::new();
        for pod in list.items {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let params = LogParams { since_seconds: Some(seconds), ..LogParams::default() };
            let Ok(text) = api.logs(&name, &params).await else { continue };
            for line in text.lines().filter(|l| is_tls_error(l)) {
                found.push(format!("kube-system/{name}: {line}"));
            }
        }
        Ok(found)
    }
}

/// Whether a log line reports a TLS trust failure.
pub fn is_tls_error(line: &str) -> bool {
    let l = line.to_ascii_lowercase();
    [
        "x509:",
        "tls: bad certificate",
        "certificate signed by unknown authority",
        "tls: unknown certificate authority",
        "tls-untrusted",
        "tls-bad-client",
    ]
    .iter()
    .any(|needle| l.contains(needle))
}

fn owned_by(pod: &Pod, workload: &str) -> bool {
    // A pod belongs to a workload when an owner (ReplicaSet `name-hash`, or the workload itself)
    // carries the workload's name.
    pod.metadata.owner_references.as_ref().is_some_and(|owners| {
        owners.iter().any(|o| {
            o.name == workload || o.name.rsplit_once('-').is_some_and(|(base, _)| base == workload)
        })
    })
}

/// The certificates of a PEM text, as a set of their base64 bodies (order and whitespace do not
/// matter).
fn cert_set(pem: &str) -> std::collections::BTreeSet<String> {
    pem.split("-----BEGIN CERTIFICATE-----")
        .skip(1)
        .filter_map(|c| c.split("-----END CERTIFICATE-----").next())
        .map(|body| body.chars().filter(|c| !c.is_whitespace()).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_kubeconfigs_client_credentials_are_read_inline_or_as_files_and_a_token_has_none() {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let kc = |user: &str| {
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: \
                 https://10.0.0.1:6443\ncontexts:\n- name: x\n  context:\n    cluster: c\n    \
                 user: u\ncurrent-context: x\nusers:\n- name: u\n  user:\n{user}"
            )
        };
        let inline = kc(&format!(
            "    client-certificate-data: {}\n    client-key-data: {}\n",
            b64("CERT PEM"),
            b64("KEY PEM")
        ));
        assert_eq!(
            client_credentials("admin.conf", &inline).unwrap(),
            Some((Credential::Data("CERT PEM".into()), Credential::Data("KEY PEM".into())))
        );
        let files = kc("    client-certificate: pki/admin.crt\n    client-key: /k/admin.key\n");
        assert_eq!(
            client_credentials("admin.conf", &files).unwrap(),
            Some((
                Credential::File("pki/admin.crt".into()),
                Credential::File("/k/admin.key".into())
            ))
        );
        assert_eq!(client_credentials("admin.conf", &kc("    token: abc\n")).unwrap(), None);
        let keyless = kc(&format!("    client-certificate-data: {}\n", b64("CERT PEM")));
        let e = client_credentials("admin.conf", &keyless).unwrap_err().to_string();
        assert!(e.contains("admin.conf") && e.contains("no key"), "{e}");
    }

    use super::*;

    #[test]
    fn certificate_sets_ignore_order_and_line_breaks() {
        let a = "-----BEGIN CERTIFICATE-----\nAAAA\nBBBB\n-----END CERTIFICATE-----\n";
        let b = "-----BEGIN CERTIFICATE-----\nCCCC\n-----END CERTIFICATE-----\n";
        assert_eq!(cert_set(&format!("{a}{b}")), cert_set(&format!("{b}{a}")));
        assert_ne!(cert_set(a), cert_set(&format!("{a}{b}")));
        assert_eq!(
            cert_set("-----BEGIN CERTIFICATE-----\r\nAAAABBBB\r\n-----END CERTIFICATE-----"),
            cert_set(a)
        );
    }

    #[test]
    fn tls_errors_are_recognised_in_log_lines() {
        assert!(is_tls_error(
            "E1128 http: TLS handshake error from 10.0.0.5:4433: remote error: tls: bad certificate"
        ));
        assert!(is_tls_error("x509: certificate signed by unknown authority"));
        assert!(!is_tls_error("I1128 Successfully renewed lease kube-system/kube-scheduler"));
    }
}
