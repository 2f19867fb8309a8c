//! The objects kubeadm and its addons leave in a new cluster, which the apiserver creates at start when they are absent.

use anyhow::{Context, Result};
use base64::Engine;
use serde_json::{Value, json};

use super::etcd::Etcd;
use super::objects::{api_proxy, meta, new_rv, workload};
use super::{B64, State};
use crate::testbed::component::require;

async fn put_if_absent(etcd: &Etcd, key: &str, obj: Value) -> Result<()> {
    etcd.create(key, &obj).await.map(|_| ())
}

/// The objects kubeadm and its addons leave in a new cluster, created when absent, and this
/// apiserver's CAs merged into extension-apiserver-authentication ([`publish_authentication`]).
pub(super) async fn bootstrap(state: &State) -> Result<()> {
    let e = &state.etcd;
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        put_if_absent(e, &format!("/registry/namespaces/{ns}"), json!({"apiVersion": "v1", "kind": "Namespace", "metadata": meta(ns, None), "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})).await?;
    }
    let client_ca = publish_authentication(state).await?;
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: \"\"\n  cluster:\n    certificate-authority-data: {}\n    server: https://{}\ncontexts: null\ncurrent-context: \"\"\npreferences: {{}}\nusers: null\n",
        B64.encode(client_ca.as_bytes()),
        state.endpoint
    );
    put_if_absent(e, "/registry/configmaps/kube-public/cluster-info", json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("cluster-info", Some("kube-public")), "data": {"kubeconfig": kubeconfig}})).await?;
    put_if_absent(
        e,
        "/registry/deployments/kube-system/coredns",
        workload("Deployment", "coredns", "coredns", Some(2)),
    )
    .await?;
    put_if_absent(
        e,
        "/registry/daemonsets/kube-system/kube-proxy",
        workload("DaemonSet", "kube-proxy", "kube-proxy", None),
    )
    .await?;
    put_if_absent(e, "/registry/deployments/kube-system/metrics-server", metrics_server()).await?;
    put_if_absent(e, "/registry/deployments/kube-system/api-proxy", api_proxy()).await?;
    put_if_absent(
        e,
        "/registry/apiservices/v1beta1.metrics.k8s.io",
        json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": meta("v1beta1.metrics.k8s.io", None),
               "spec": {"group": "metrics.k8s.io", "version": "v1beta1", "groupPriorityMinimum": 100, "versionPriority": 100, "insecureSkipTLSVerify": true,
                        "service": {"namespace": "kube-system", "name": "metrics-server", "port": 443}},
               "status": {"conditions": [{"type": "Available", "status": "True"}]}}),
    )
    .await?;
    Ok(())
}

/// kube-system/metrics-server with the flags of its own manifest
/// (`kubernetes-sigs/metrics-server` `manifests/base/deployment.yaml`: InternalIP first, the
/// node status port, a 15 s resolution), plus `--kubelet-insecure-tls` where the kubelets
/// serve self-signed certificates, as kubeadm clusters usually run it; where they bootstrap
/// their serving certificates (`serverTLSBootstrap: true` in this node's kubelet
/// configuration, which every node of a profile shares) the operator leaves it out, and
/// metrics-server verifies kubelets with its in-cluster `ca.crt`.
fn metrics_server() -> Value {
    let bootstrapped = std::fs::read_to_string("/var/lib/kubelet/config.yaml")
        .ok()
        .and_then(|t| serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&t).ok())
        .and_then(|v| v.get("serverTLSBootstrap").and_then(serde_yaml_ng::Value::as_bool))
        .unwrap_or(false);
    let mut args = vec![
        "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname",
        "--kubelet-use-node-status-port",
        "--metric-resolution=15s",
    ];
    if !bootstrapped {
        args.push("--kubelet-insecure-tls");
    }
    let mut d = workload("Deployment", "metrics-server", "metrics-server", Some(1));
    // As its manifest: `args` for the image's entrypoint, no `command`.
    let container = &mut d["spec"]["template"]["spec"]["containers"][0];
    if let Some(c) = container.as_object_mut() {
        c.remove("command");
    }
    container["args"] = json!(args);
    d
}

/// How often the apiserver publishes into extension-apiserver-authentication. Upstream syncs on
/// every change of the ConfigMap (an informer) and of its CA files, and every minute besides;
/// polling every two seconds stands for the first two.
pub(super) const AUTHENTICATION_SYNC: std::time::Duration = std::time::Duration::from_secs(2);

/// Merges this apiserver's client CA and request-header CA into
/// `kube-system/extension-apiserver-authentication`, as the real one's
/// cluster-authentication-trust controller does
/// (`pkg/controlplane/controller/clusterauthenticationtrust/cluster_authentication_trust_controller.go`
/// `syncConfigMap`): the CAs already there and its own, each once, minus those expired more
/// than five minutes ago (`combineCertLists`, `filterExpiredCerts`); the header lists merged the
/// same way (`combineUniqueStringSlices`). A CA dropped from its files stays published until it
/// expires. Returns its own client CA file's content.
pub(super) async fn publish_authentication(state: &State) -> Result<String> {
    let f = &state.flags;
    let e = &state.etcd;
    let read = |k: &str| -> Result<String> {
        let p = require(f, k)?;
        std::fs::read_to_string(p).with_context(|| format!("reading {p} (--{k})"))
    };
    let client_ca = read("client-ca-file")?;
    let key = "/registry/configmaps/kube-system/extension-apiserver-authentication";
    let found = e.get(key).await?;
    let mut cm = found.clone().unwrap_or_else(|| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("extension-apiserver-authentication", Some("kube-system"))}));
    let existing = |k: &str| cm["data"][k].as_str().unwrap_or("").to_string();
    let mut data = cm["data"].as_object().cloned().unwrap_or_default();
    data.insert("client-ca-file".into(), json!(merge_cas(&existing("client-ca-file"), &client_ca)));
    if let Ok(rh) = read("requestheader-client-ca-file") {
        let merged = merge_cas(&existing("requestheader-client-ca-file"), &rh);
        data.insert("requestheader-client-ca-file".into(), json!(merged));
        for k in [
            "requestheader-allowed-names",
            "requestheader-extra-headers-prefix",
            "requestheader-group-headers",
            "requestheader-username-headers",
        ] {
            let mut list: Vec<String> = serde_json::from_str(&existing(k)).unwrap_or_default();
            for v in f.get(k).map(|v| v.split(',').collect::<Vec<_>>()).unwrap_or_default() {
                if !list.iter().any(|x| x == v) {
                    list.push(v.to_string());
                }
            }
            data.insert(k.into(), json!(serde_json::to_string(&list).unwrap_or_default()));
        }
    }
    let data = Value::Object(data);
    if cm["data"] != data {
        cm["data"] = data;
        cm["metadata"]["resourceVersion"] = json!(new_rv());
        // A compare-and-swap on what was read, as an update with its resourceVersion: a
        // concurrent writer (another apiserver, kubeca) wins and the next sync merges again.
        let written = match &found {
            Some(old) => e.swap(key, old, &cm).await?,
            None => e.create(key, &cm).await?,
        };
        if !written {
            eprintln!(
                "{} kube-apiserver: extension-apiserver-authentication changed under its sync; merging again next time",
                jiff::Timestamp::now()
            );
        }
    }
    Ok(client_ca)
}

/// `combineCertLists`: the certificates of `published` then those of `own`, each once (same
/// DER), without those whose notAfter is more than five minutes past.
pub(super) fn merge_cas(published: &str, own: &str) -> String {
    let cutoff = jiff::Timestamp::now() - jiff::SignedDuration::from_mins(5);
    let mut seen = std::collections::HashSet::new();
    let mut out = String::new();
    for pem in [published, own] {
        let Ok(certs) = crate::testbed::tls::certs_from_pem(pem.as_bytes(), "a CA bundle") else {
            continue;
        };
        for der in certs {
            let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else { continue };
            let not_after = jiff::Timestamp::from_second(cert.validity().not_after.timestamp());
            if not_after.is_ok_and(|t| t <= cutoff) || !seen.insert(der.as_ref().to_vec()) {
                continue;
            }
            out.push_str("-----BEGIN CERTIFICATE-----\n");
            let b64 = B64.encode(der.as_ref());
            for chunk in b64.as_bytes().chunks(64) {
                out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
                out.push('\n');
            }
            out.push_str("-----END CERTIFICATE-----\n");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_cas_are_kept_and_own_ones_added_each_once() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a", "b"] {
            crate::testbed::pki::ca_and_client(dir.path(), name, "x", &[]).unwrap();
        }
        let a = std::fs::read_to_string(dir.path().join("a-ca.crt")).unwrap();
        let b = std::fs::read_to_string(dir.path().join("b-ca.crt")).unwrap();
        let count = |pem: &str| pem.matches("BEGIN CERTIFICATE").count();
        // An apiserver that loads b only keeps a, published before: merged, not replaced.
        let merged = merge_cas(&a, &b);
        assert_eq!(count(&merged), 2);
        assert!(merged.starts_with(a.trim_end().lines().next().unwrap()));
        assert_eq!(merge_cas(&merged, &b), merged, "publishing again changes nothing");
        assert_eq!(count(&merge_cas("", &a)), 1);
    }
}
