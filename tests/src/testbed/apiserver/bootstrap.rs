//! The objects kubeadm and its addons leave in a new cluster, which the apiserver creates at start when they are absent.

use anyhow::{Context, Result};
use base64::Engine;
use serde_json::{Value, json};

use super::etcd::Etcd;
use super::objects::{meta, new_rv, workload};
use super::{B64, State};
use crate::testbed::component::require;

async fn put_if_absent(etcd: &Etcd, key: &str, obj: Value) -> Result<()> {
    etcd.create(key, &obj).await.map(|_| ())
}

/// The objects kubeadm and its addons leave in a new cluster, created when absent, and
/// extension-apiserver-authentication rewritten from this apiserver's flags.
pub(super) async fn bootstrap(state: &State) -> Result<()> {
    let f = &state.flags;
    let e = &state.etcd;
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        put_if_absent(e, &format!("/registry/namespaces/{ns}"), json!({"apiVersion": "v1", "kind": "Namespace", "metadata": meta(ns, None), "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})).await?;
    }
    let read = |k: &str| -> Result<String> {
        let p = require(f, k)?;
        std::fs::read_to_string(p).with_context(|| format!("reading {p} (--{k})"))
    };
    let client_ca = read("client-ca-file")?;
    let mut data = json!({"client-ca-file": client_ca});
    if let Ok(rh) = read("requestheader-client-ca-file") {
        data["requestheader-client-ca-file"] = json!(rh);
        let list = |k: &str| {
            json!(
                serde_json::to_string(
                    &f.get(k).map(|v| v.split(',').collect::<Vec<_>>()).unwrap_or_default()
                )
                .unwrap_or_default()
            )
        };
        data["requestheader-allowed-names"] = list("requestheader-allowed-names");
        data["requestheader-extra-headers-prefix"] = list("requestheader-extra-headers-prefix");
        data["requestheader-group-headers"] = list("requestheader-group-headers");
        data["requestheader-username-headers"] = list("requestheader-username-headers");
    }
    let key = "/registry/configmaps/kube-system/extension-apiserver-authentication";
    let mut cm = e.get(key).await?.unwrap_or_else(|| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("extension-apiserver-authentication", Some("kube-system"))}));
    if cm["data"] != data {
        cm["data"] = data;
        cm["metadata"]["resourceVersion"] = json!(new_rv());
        e.put(key, &cm).await?;
    }
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
    put_if_absent(
        e,
        "/registry/deployments/kube-system/metrics-server",
        workload("Deployment", "metrics-server", "metrics-server", Some(1)),
    )
    .await?;
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
