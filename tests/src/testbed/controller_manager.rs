//! The simulated kube-controller-manager: kubeadm#1350's refusal of CA bundles, leader election,
//! kube-root-ca.crt in every namespace, token Secrets' ca.crt and token, and the workload controllers.
//!
//! Every file is read once at start, as the real one does: a rotation reaches it by a restart.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use base64::Engine;
use serde_json::{Value, json};

use super::client::{Client, Credentials};
use super::component::{leader_lock, parse_flags, require, start_healthz};
use super::{csr_controllers, jwt, monitor, tls};

/// The controller-manager's entry point: `kubeca-testbed kube-controller-manager --flag=value ...`.
pub fn main(args: Vec<String>) -> ExitCode {
    let flags = parse_flags(&args);
    if let Err(e) = refuse_bundles(&flags) {
        eprintln!("{} kube-controller-manager: {e:#}", jiff::Timestamp::now());
        return ExitCode::FAILURE;
    }
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kube-controller-manager: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(flags)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{} kube-controller-manager: {e:#}", jiff::Timestamp::now());
            ExitCode::FAILURE
        }
    }
}

/// kubeadm#1350: the real controller-manager cannot sign with (or serve) a bundle in
/// --client-ca-file or --cluster-signing-cert-file; the testbed refuses one at start.
fn refuse_bundles(flags: &HashMap<String, String>) -> Result<()> {
    for flag in ["client-ca-file", "cluster-signing-cert-file"] {
        if let Some(p) = flags.get(flag) {
            let n = tls::load_certs(Path::new(p)).with_context(|| format!("--{flag}"))?.len();
            if n > 1 {
                bail!(
                    "--{flag}={p} holds {n} certificates; a bundle is not accepted here (kubeadm#1350): point --{flag} at a file with the single CA"
                );
            }
        }
    }
    Ok(())
}

struct Ctl {
    api: Client,
    root_ca: String,
    /// `--service-account-private-key-file`, which signs legacy token Secrets' tokens.
    signer: Option<jwt::Signer>,
    /// What the csrsigning controllers sign with.
    signing: Option<csr_controllers::Signing>,
}

async fn run(flags: HashMap<String, String>) -> Result<()> {
    let kubeconfig = PathBuf::from(require(&flags, "kubeconfig")?);
    let root_ca_path = require(&flags, "root-ca-file")?;
    let root_ca = std::fs::read_to_string(root_ca_path)
        .with_context(|| format!("reading --root-ca-file {root_ca_path}"))?;
    let me = monitor::me("kube-controller-manager");
    let api = Client::new(
        &Credentials::from_kubeconfig(&kubeconfig)?,
        &me,
        "controller-manager->apiserver",
    )?;
    let signer = match flags.get("service-account-private-key-file") {
        Some(p) => Some(
            jwt::Signer::from_file(Path::new(p)).context("--service-account-private-key-file")?,
        ),
        None => None,
    };
    // The csrsigning controllers sign with --cluster-signing-cert-file/-key-file; without them
    // they are skipped ("no csr cert/key was specified").
    let signing =
        match (flags.get("cluster-signing-cert-file"), flags.get("cluster-signing-key-file")) {
            (Some(c), Some(k)) => Some(csr_controllers::Signing {
                cert_file: c.clone(),
                key_file: k.clone(),
                duration: match flags.get("cluster-signing-duration") {
                    Some(d) => {
                        csr_controllers::go_duration(d).context("--cluster-signing-duration")?
                    }
                    None => csr_controllers::DEFAULT_SIGNING_DURATION,
                },
            }),
            _ => None,
        };
    start_healthz(&flags, "kube-controller-manager", 10257)?;
    let ctl = Ctl { api, root_ca, signer, signing };
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    for round in 0u64.. {
        tick.tick().await;
        match leader_lock(&ctl.api, "kube-controller-manager", &me).await {
            Ok(true) => {
                if let Err(e) = ctl.sync().await {
                    eprintln!("{} kube-controller-manager: {e:#}", jiff::Timestamp::now());
                }
                if round % NODE_MONITOR_PERIOD_SECS == 0
                    && let Err(e) = ctl.node_lifecycle(jiff::Timestamp::now()).await
                {
                    eprintln!(
                        "{} kube-controller-manager: node lifecycle: {e:#}",
                        jiff::Timestamp::now()
                    );
                }
            }
            Ok(false) => {}
            Err(e) => eprintln!(
                "{} kube-controller-manager: leader election: {e:#}",
                jiff::Timestamp::now()
            ),
        }
    }
    Ok(())
}

/// `--node-monitor-period`, 5 s, and `--node-monitor-grace-period`, 40 s
/// (`RecommendedDefaultNodeLifecycleControllerConfiguration`,
/// pkg/controller/nodelifecycle/config/v1alpha1/defaults.go).
const NODE_MONITOR_PERIOD_SECS: u64 = 5;
const NODE_MONITOR_GRACE_SECS: i64 = 40;

/// Whether a node whose Lease was last renewed at `renewed` (and whose status was last
/// reported at `heartbeat`) has gone quiet for longer than the grace period at `now`.
fn silent_too_long(
    renewed: Option<jiff::Timestamp>,
    heartbeat: Option<jiff::Timestamp>,
    now: jiff::Timestamp,
) -> bool {
    let last = renewed.into_iter().chain(heartbeat).max();
    last.is_none_or(|t| now.duration_since(t).as_secs() > NODE_MONITOR_GRACE_SECS)
}

/// A short stable hash of a pod template (FNV-1a), as pod-template-hash.
fn template_hash(t: &Value) -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in t.to_string().bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    format!("{:x}", h & 0xff_ffff_ffff)
}

fn suffix() -> String {
    let n = jiff::Timestamp::now().as_nanosecond() as u64;
    let alphabet = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5).map(|i| alphabet[((n >> (i * 5)) % alphabet.len() as u64) as usize] as char).collect()
}

fn running(p: &Value) -> bool {
    p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null()
}

impl Ctl {
    async fn sync(&self) -> Result<()> {
        self.root_ca_maps().await?;
        self.token_secrets().await?;
        if let Err(e) = csr_controllers::round(&self.api, self.signing.as_ref()).await {
            eprintln!("{} kube-controller-manager: certificates: {e:#}", jiff::Timestamp::now());
        }
        for (kind, res) in [
            ("Deployment", "deployments"),
            ("DaemonSet", "daemonsets"),
            ("StatefulSet", "statefulsets"),
        ] {
            for w in self.api.list(&format!("/apis/apps/v1/{res}")).await? {
                if let Err(e) = self.workload(kind, &w).await {
                    eprintln!(
                        "{} kube-controller-manager: {kind} {}: {e:#}",
                        jiff::Timestamp::now(),
                        w["metadata"]["name"]
                    );
                }
            }
        }
        Ok(())
    }

    /// The node lifecycle controller's health check (`tryUpdateNodeHealth`,
    /// pkg/controller/nodelifecycle/node_lifecycle_controller.go): a node whose kubelet renewed
    /// neither its Lease nor its status within the grace period gets its Ready condition set to
    /// Unknown ("Kubelet stopped posting node status."). Upstream measures the silence from when
    /// it last saw either change; the testbed from the times they carry (one clock here).
    async fn node_lifecycle(&self, now: jiff::Timestamp) -> Result<()> {
        let leases: HashMap<String, jiff::Timestamp> = self
            .api
            .list("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases")
            .await?
            .into_iter()
            .filter_map(|l| {
                let name = l["metadata"]["name"].as_str()?.to_string();
                Some((name, l["spec"]["renewTime"].as_str()?.parse().ok()?))
            })
            .collect();
        for node in self.api.list("/api/v1/nodes").await? {
            let Some(name) = node["metadata"]["name"].as_str() else { continue };
            let conditions = node["status"]["conditions"].as_array().cloned().unwrap_or_default();
            let Some(ready) = conditions.iter().find(|c| c["type"] == "Ready") else { continue };
            if ready["status"] != "True" {
                continue;
            }
            let heartbeat = ready["lastHeartbeatTime"].as_str().and_then(|t| t.parse().ok());
            if !silent_too_long(leases.get(name).copied(), heartbeat, now) {
                continue;
            }
            let mut unknown = ready.clone();
            unknown["status"] = json!("Unknown");
            unknown["reason"] = json!("NodeStatusUnknown");
            unknown["message"] = json!("Kubelet stopped posting node status.");
            unknown["lastTransitionTime"] = json!(now.to_string());
            let path = format!("/api/v1/nodes/{name}/status");
            self.api.patch(&path, &json!({"status": {"conditions": [unknown]}})).await?;
            eprintln!("{now} kube-controller-manager: node {name} is NotReady (Unknown): silent");
        }
        Ok(())
    }

    /// kube-root-ca.crt (key ca.crt) in every namespace, equal to --root-ca-file. The real
    /// publisher (`pkg/controller/certificates/rootcacertpublisher/publisher.go`) reacts to
    /// informer events on namespaces and ConfigMaps; the testbed lists both once a round.
    async fn root_ca_maps(&self) -> Result<()> {
        let maps: HashMap<String, Value> = self
            .api
            .list("/api/v1/configmaps")
            .await?
            .into_iter()
            .filter(|cm| cm["metadata"]["name"] == "kube-root-ca.crt")
            .filter_map(|cm| Some((cm["metadata"]["namespace"].as_str()?.to_string(), cm)))
            .collect();
        for ns in self.api.list("/api/v1/namespaces").await? {
            let Some(ns) = ns["metadata"]["name"].as_str() else { continue };
            let path = format!("/api/v1/namespaces/{ns}/configmaps/kube-root-ca.crt");
            match maps.get(ns) {
                None => {
                    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kube-root-ca.crt", "namespace": ns}, "data": {"ca.crt": self.root_ca}});
                    self.api.create(&format!("/api/v1/namespaces/{ns}/configmaps"), &cm).await?;
                }
                Some(cm) if cm["data"]["ca.crt"].as_str() != Some(self.root_ca.as_str()) => {
                    self.api.patch(&path, &json!({"data": {"ca.crt": self.root_ca}})).await?;
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Legacy service-account token Secrets carry ca.crt too: kept equal to --root-ca-file.
    async fn token_secrets(&self) -> Result<()> {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s.as_bytes());
        let want = b64(&self.root_ca);
        for s in self.api.list("/api/v1/secrets").await? {
            if s["type"] != "kubernetes.io/service-account-token" {
                continue;
            }
            let (Some(ns), Some(name)) =
                (s["metadata"]["namespace"].as_str(), s["metadata"]["name"].as_str())
            else {
                continue;
            };
            let mut data = serde_json::Map::new();
            if s["data"]["ca.crt"].as_str() != Some(want.as_str()) {
                data.insert("ca.crt".into(), json!(want));
            }
            // A Secret without a token gets one, as the tokens controller
            // (`pkg/controller/serviceaccount/tokens_controller.go`) signs it with
            // --service-account-private-key-file: the claims of `pkg/serviceaccount/legacy.go`.
            let annotations = &s["metadata"]["annotations"];
            let sa_name = annotations["kubernetes.io/service-account.name"].as_str();
            if let (Some(signer), Some(sa_name)) = (&self.signer, sa_name)
                && s["data"]["token"].as_str().is_none_or(str::is_empty)
            {
                let sa_uid = match annotations["kubernetes.io/service-account.uid"].as_str() {
                    Some(u) if !u.is_empty() => u.to_string(),
                    _ => self
                        .api
                        .get(&format!("/api/v1/namespaces/{ns}/serviceaccounts/{sa_name}"))
                        .await?
                        .and_then(|sa| sa["metadata"]["uid"].as_str().map(str::to_string))
                        .unwrap_or_else(|| jwt::service_account_uid(ns, sa_name)),
                };
                let token = signer.sign(&jwt::legacy_claims(ns, (sa_name, &sa_uid), name))?;
                data.insert("token".into(), json!(b64(&token)));
                data.insert("namespace".into(), json!(b64(ns)));
            }
            if data.is_empty() {
                continue;
            }
            self.api
                .patch(&format!("/api/v1/namespaces/{ns}/secrets/{name}"), &json!({"data": data}))
                .await?;
        }
        Ok(())
    }

    fn new_pod(
        &self,
        kind: &str,
        w: &Value,
        name: String,
        hash: &str,
        node: Option<&str>,
    ) -> Value {
        let t = &w["spec"]["template"];
        let mut labels = t["metadata"]["labels"].clone();
        if !labels.is_object() {
            labels = json!({});
        }
        labels["pod-template-hash"] = json!(hash);
        let mut spec = t["spec"].clone();
        if let Some(n) = node {
            spec["nodeName"] = json!(n);
        }
        json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": name, "namespace": w["metadata"]["namespace"], "labels": labels,
                "annotations": t["metadata"]["annotations"],
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": kind, "name": w["metadata"]["name"], "uid": w["metadata"]["uid"], "controller": true}],
            },
            "spec": spec,
            "status": {"phase": "Pending"},
        })
    }

    /// One step of a workload's rollout per pass: create a missing pod, or, when every current
    /// pod runs, replace one old pod — so pods roll one at a time.
    async fn workload(&self, kind: &str, w: &Value) -> Result<()> {
        let ns = w["metadata"]["namespace"].as_str().context("no namespace")?;
        let name = w["metadata"]["name"].as_str().context("no name")?;
        let uid = w["metadata"]["uid"].as_str().unwrap_or("");
        let hash = template_hash(&w["spec"]["template"]);
        let pods: Vec<Value> = self
            .api
            .list(&format!("/api/v1/namespaces/{ns}/pods"))
            .await?
            .into_iter()
            .filter(|p| p["metadata"]["ownerReferences"][0]["uid"].as_str() == Some(uid))
            .collect();
        let (current, old): (Vec<&Value>, Vec<&Value>) = pods.iter().partition(|p| {
            p["metadata"]["labels"]["pod-template-hash"].as_str() == Some(hash.as_str())
        });
        let pods_path = format!("/api/v1/namespaces/{ns}/pods");
        let pod_path =
            |p: &Value| format!("{pods_path}/{}", p["metadata"]["name"].as_str().unwrap_or(""));
        if current.iter().any(|p| !running(p)) {
            return Ok(()); // a new pod is starting: one at a time
        }
        match kind {
            "DaemonSet" => {
                let nodes = self.api.list("/api/v1/nodes").await?;
                for n in &nodes {
                    let Some(node) = n["metadata"]["name"].as_str() else { continue };
                    let on = |p: &&&Value| p["spec"]["nodeName"].as_str() == Some(node);
                    if current.iter().any(|p| on(&p)) {
                        continue;
                    }
                    // maxUnavailable 1 (the DaemonSet default): the node's old pod goes and its
                    // replacement is created in the same pass.
                    if let Some(o) = old.iter().find(|p| on(p)) {
                        self.api.delete(&pod_path(o)).await?;
                    }
                    let pod =
                        self.new_pod(kind, w, format!("{name}-{}", suffix()), &hash, Some(node));
                    self.api.create(&pods_path, &pod).await?;
                    return Ok(());
                }
                // Pods on nodes that are gone.
                for p in old {
                    self.api.delete(&pod_path(p)).await?;
                }
            }
            _ => {
                let replicas = w["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
                // A Deployment's defaults (maxSurge 25% rounded up, maxUnavailable 25% rounded
                // down): an old pod goes once a new one runs in its place, and the next new pod is
                // created in the same pass.
                if kind == "Deployment" && !old.is_empty() && current.len() + old.len() > replicas {
                    self.api.delete(&pod_path(old[0])).await?;
                    if current.len() >= replicas {
                        return Ok(());
                    }
                }
                if current.len() < replicas {
                    let pod_name = if kind == "StatefulSet" {
                        // Ordinal names: replace the old pod of the lowest free ordinal first.
                        let taken: BTreeMap<String, ()> = current
                            .iter()
                            .filter_map(|p| p["metadata"]["name"].as_str())
                            .map(|n| (n.to_string(), ()))
                            .collect();
                        let Some(free) = (0..replicas)
                            .map(|i| format!("{name}-{i}"))
                            .find(|n| !taken.contains_key(n))
                        else {
                            return Ok(());
                        };
                        if let Some(o) = old
                            .iter()
                            .find(|p| p["metadata"]["name"].as_str() == Some(free.as_str()))
                        {
                            self.api.delete(&pod_path(o)).await?;
                            return Ok(());
                        }
                        free
                    } else {
                        format!("{name}-{}-{}", &hash[..hash.len().min(10)], suffix())
                    };
                    let pod = self.new_pod(kind, w, pod_name, &hash, None);
                    self.api.create(&pods_path, &pod).await?;
                } else if let Some(o) = old.first() {
                    self.api.delete(&pod_path(o)).await?;
                } else if current.len() > replicas {
                    self.api.delete(&pod_path(current[0])).await?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_silent_after_40_seconds_without_lease_or_status() {
        let t = |s: &str| Some(s.parse::<jiff::Timestamp>().unwrap());
        let now: jiff::Timestamp = "2026-12-03T12:00:41Z".parse().unwrap();
        assert!(silent_too_long(t("2026-12-03T12:00:00Z"), t("2026-12-03T11:55:00Z"), now));
        assert!(!silent_too_long(t("2026-12-03T12:00:01Z"), t("2026-12-03T11:55:00Z"), now));
        // A status report counts as much as a renewal; nothing at all is silence.
        assert!(!silent_too_long(None, t("2026-12-03T12:00:30Z"), now));
        assert!(silent_too_long(None, None, now));
    }

    #[test]
    fn a_template_change_changes_the_hash() {
        let a = json!({"metadata": {"annotations": {}}, "spec": {"containers": []}});
        let b = json!({"metadata": {"annotations": {"kubeca.io/restartedAt": "now"}}, "spec": {"containers": []}});
        assert_ne!(template_hash(&a), template_hash(&b));
        assert_eq!(template_hash(&a), template_hash(&a.clone()));
    }

    #[test]
    fn a_bundle_in_the_signing_cert_file_is_refused_naming_the_flag() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bundle.crt");
        let one = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n";
        std::fs::write(&p, format!("{one}{one}")).unwrap();
        let flags = parse_flags(&[format!("--cluster-signing-cert-file={}", p.display())]);
        let err = refuse_bundles(&flags).unwrap_err().to_string();
        assert!(
            err.contains("--cluster-signing-cert-file") && err.contains("2 certificates"),
            "{err}"
        );
        std::fs::write(&p, one).unwrap();
        refuse_bundles(&flags).unwrap();
    }
}
