//! The simulated kube-controller-manager: its CA flags read once at start (refusing bundles as the real one does, kubeadm#1350), leader election, kube-root-ca.crt publishing and token Secrets' ca.crt.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::client::{Client, Credentials};
use super::{monitor, tls};

/// The flags the controller-manager acts on; the others are accepted and ignored.
#[derive(Debug, Default)]
pub struct Flags {
    /// --root-ca-file: published as kube-root-ca.crt and into token Secrets.
    pub root_ca_file: Option<PathBuf>,
    /// --client-ca-file: must hold exactly one certificate.
    pub client_ca_file: Option<PathBuf>,
    /// --cluster-signing-cert-file: must hold exactly one certificate.
    pub cluster_signing_cert_file: Option<PathBuf>,
    /// --kubeconfig: the API credentials.
    pub kubeconfig: Option<PathBuf>,
}

impl Flags {
    /// Parses `--name=value` flags; unknown flags are ignored.
    pub fn parse(args: &[String]) -> Flags {
        let all: HashMap<&str, &str> = args
            .iter()
            .filter_map(|a| a.strip_prefix("--")?.split_once('='))
            .collect();
        let path = |n: &str| all.get(n).map(PathBuf::from);
        Flags {
            root_ca_file: path("root-ca-file"),
            client_ca_file: path("client-ca-file"),
            cluster_signing_cert_file: path("cluster-signing-cert-file"),
            kubeconfig: path("kubeconfig"),
        }
    }
}

/// Refuses a file holding more than one certificate, as the real controller-manager does for
/// --client-ca-file and --cluster-signing-cert-file (kubeadm#1350).
pub fn refuse_bundle(flag: &str, path: &Path) -> Result<()> {
    let certs = tls::load_certs(path)?;
    if certs.len() > 1 {
        bail!(
            "--{flag}={}: the file holds {} certificates; the controller-manager needs exactly one (kubeadm#1350): put only the signing CA in it",
            path.display(),
            certs.len()
        );
    }
    Ok(())
}

/// `kubeca-testbed kube-controller-manager ARGS`.
pub fn main(args: Vec<String>) -> ExitCode {
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{} kube-controller-manager: {e:#}", jiff::Timestamp::now());
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<()> {
    let flags = Flags::parse(args);
    if let Some(p) = &flags.client_ca_file {
        refuse_bundle("client-ca-file", p)?;
    }
    if let Some(p) = &flags.cluster_signing_cert_file {
        refuse_bundle("cluster-signing-cert-file", p)?;
    }
    let root_ca_path = flags.root_ca_file.clone().context("--root-ca-file is required")?;
    let root_ca = std::fs::read_to_string(&root_ca_path)
        .with_context(|| format!("reading --root-ca-file {}", root_ca_path.display()))?;
    let kubeconfig = flags.kubeconfig.clone().context("--kubeconfig is required")?;
    let creds = Credentials::from_kubeconfig(&kubeconfig)?;
    let client = Client::new(&creds, &monitor::me("kube-controller-manager"), "controller-manager->apiserver")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the controller-manager's runtime")?;
    runtime.block_on(async move {
        let me = monitor::node();
        loop {
            match leader(&client, &me).await {
                Ok(true) => {
                    if let Err(e) = sync(&client, &root_ca).await {
                        eprintln!("{} kube-controller-manager: {e:#}", jiff::Timestamp::now());
                    }
                }
                Ok(false) => {}
                Err(e) => eprintln!("{} kube-controller-manager: leader election: {e:#}", jiff::Timestamp::now()),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

const LOCK: &str = "/api/v1/namespaces/kube-system/configmaps/kube-controller-manager";
const HOLDER: &str = "control-plane.alpha.kubernetes.io/leader";

/// A ConfigMap lock: held by whoever renewed it in the last 15 s; an update carries the
/// resourceVersion read, so two candidates cannot both take it.
async fn leader(client: &Client, me: &str) -> Result<bool> {
    let now = jiff::Timestamp::now();
    let record = json!({"holderIdentity": me, "renewTime": now.to_string()}).to_string();
    match client.get(LOCK).await? {
        None => {
            let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "kube-controller-manager", "namespace": "kube-system",
                             "annotations": {HOLDER: record}}});
            Ok(client.create("/api/v1/namespaces/kube-system/configmaps", &cm).await.is_ok())
        }
        Some(mut cm) => {
            let current: Value = cm["metadata"]["annotations"][HOLDER]
                .as_str()
                .and_then(|s| serde_json::from_str(s).ok())
                .unwrap_or(Value::Null);
            let holder = current["holderIdentity"].as_str().unwrap_or("");
            let renewed: Option<jiff::Timestamp> = current["renewTime"].as_str().and_then(|s| s.parse().ok());
            let expired = renewed.is_none_or(|t| now.duration_since(t).as_secs() >= 15);
            if holder != me && !expired {
                return Ok(false);
            }
            cm["metadata"]["annotations"][HOLDER] = Value::String(record);
            Ok(client.update(LOCK, &cm).await.is_ok())
        }
    }
}

/// kube-root-ca.crt in every namespace, and ca.crt of legacy token Secrets, from --root-ca-file.
async fn sync(client: &Client, root_ca: &str) -> Result<()> {
    for ns in client.list("/api/v1/namespaces").await? {
        let Some(ns) = ns["metadata"]["name"].as_str() else { continue };
        let path = format!("/api/v1/namespaces/{ns}/configmaps/kube-root-ca.crt");
        match client.get(&path).await? {
            None => {
                let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "kube-root-ca.crt", "namespace": ns},
                    "data": {"ca.crt": root_ca}});
                client.create(&format!("/api/v1/namespaces/{ns}/configmaps"), &cm).await?;
            }
            Some(cm) if cm["data"]["ca.crt"].as_str() != Some(root_ca) => {
                client.patch(&path, &json!({"data": {"ca.crt": root_ca}})).await?;
            }
            Some(_) => {}
        }
    }
    use base64::Engine;
    let encoded = base64::engine::general_purpose::STANDARD.encode(root_ca);
    for s in client.list("/api/v1/secrets").await? {
        if s["type"].as_str() != Some("kubernetes.io/service-account-token") || s["data"]["ca.crt"].as_str() == Some(&encoded) {
            continue;
        }
        let (Some(ns), Some(name)) = (s["metadata"]["namespace"].as_str(), s["metadata"]["name"].as_str()) else { continue };
        client
            .patch(&format!("/api/v1/namespaces/{ns}/secrets/{name}"), &json!({"data": {"ca.crt": encoded}}))
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca(dir: &Path, name: &str) -> Vec<u8> {
        let key = dir.join(format!("{name}.key"));
        let crt = dir.join(format!("{name}.crt"));
        let st = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj"])
            .arg(format!("/CN={name}"))
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&crt)
            .output()
            .unwrap();
        assert!(st.status.success(), "{}", String::from_utf8_lossy(&st.stderr));
        std::fs::read(crt).unwrap()
    }

    #[test]
    fn a_bundle_in_the_signing_cert_is_refused_and_one_cert_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let mut bundle = ca(dir.path(), "old");
        bundle.extend(ca(dir.path(), "new"));
        let one = dir.path().join("old.crt");
        let two = dir.path().join("bundle.crt");
        std::fs::write(&two, bundle).unwrap();
        refuse_bundle("cluster-signing-cert-file", &one).unwrap();
        let err = refuse_bundle("cluster-signing-cert-file", &two).unwrap_err().to_string();
        assert!(err.contains("2 certificates") && err.contains("bundle.crt"), "{err}");
        let code = main(vec![format!("--cluster-signing-cert-file={}", two.display())]);
        assert_eq!(code, ExitCode::FAILURE);
    }

    #[test]
    fn flags_are_read_and_unknown_ones_ignored() {
        let f = Flags::parse(&["--root-ca-file=/a".into(), "--bogus=1".into(), "--kubeconfig=/k".into()]);
        assert_eq!(f.root_ca_file, Some(PathBuf::from("/a")));
        assert_eq!(f.kubeconfig, Some(PathBuf::from("/k")));
        assert_eq!(f.client_ca_file, None);
    }
}
