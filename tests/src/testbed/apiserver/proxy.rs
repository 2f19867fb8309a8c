//! What the apiserver forwards instead of serving from etcd: pod logs read through the pod's kubelet, and the aggregated `metrics.k8s.io` API proxied to metrics-server.

use anyhow::{Context, Result};
use http_body_util::Full;

use super::peers::Peer;
use super::{Resp, State, status};
use crate::testbed::component::require;
use crate::testbed::tls;

/// GET pods/<name>/log: read through the pod's kubelet on :10250, as the real apiserver does.
pub(super) async fn pod_log(state: &State, ns: &str, name: &str, query: &str) -> Result<Resp> {
    let Some(pod) = state.etcd.get(&format!("/registry/pods/{ns}/{name}")).await? else {
        return Ok(status(404, "NotFound", &format!("pods \"{name}\" not found")));
    };
    let node = pod["spec"]["nodeName"].as_str().unwrap_or("");
    let Some(n) = state.etcd.get(&format!("/registry/nodes/{node}")).await? else {
        return Ok(status(404, "NotFound", &format!("pod {name} is not on any node")));
    };
    let ip = n["status"]["addresses"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["type"] == "InternalIP"))
        .and_then(|a| a["address"].as_str())
        .unwrap_or("");
    let container = pod["spec"]["containers"][0]["name"].as_str().unwrap_or("");
    let c = Peer::new(
        &format!("https://{ip}:10250"),
        state.kubelet_tls.config(),
        format!("kubelet@{node}"),
        "apiserver->kubelet",
    )?;
    let _ = query;
    let (st, body) =
        c.request("GET", &format!("/containerLogs/{ns}/{name}/{container}"), None, &[]).await?;
    let mut r = hyper::Response::new(Full::new(bytes::Bytes::from(body)));
    *r.status_mut() = hyper::StatusCode::from_u16(st).unwrap_or(hyper::StatusCode::BAD_GATEWAY);
    Ok(r)
}

async fn node_address(state: &State, node: &str) -> Result<String> {
    let n = state
        .etcd
        .get(&format!("/registry/nodes/{node}"))
        .await?
        .with_context(|| format!("node {node} is not registered"))?;
    n["status"]["addresses"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["type"] == "InternalIP"))
        .and_then(|a| a["address"].as_str())
        .map(str::to_string)
        .with_context(|| format!("node {node} has no InternalIP"))
}

/// /apis/metrics.k8s.io/...: forwarded to the metrics-server pod with the front-proxy client
/// certificate and X-Remote-User, as the aggregation layer does.
pub(super) async fn proxy_metrics(state: &State, path: &str) -> Result<Resp> {
    let f = &state.flags;
    let pods = state.etcd.list("/registry/pods/kube-system/").await?;
    let Some(pod) = pods.iter().find(|p| {
        p["metadata"]["name"].as_str().is_some_and(|n| n.starts_with("metrics-server"))
            && p["status"]["phase"] == "Running"
    }) else {
        return Ok(status(
            503,
            "ServiceUnavailable",
            "the server is currently unable to handle the request (metrics-server has no running pod)",
        ));
    };
    let ip = pod["status"]["podIP"].as_str().or(pod["status"]["hostIP"].as_str()).unwrap_or("");
    let node = pod["spec"]["nodeName"].as_str().unwrap_or("");
    let cert = require(f, "proxy-client-cert-file")?;
    let key = require(f, "proxy-client-key-file")?;
    // The APIService says insecureSkipTLSVerify (metrics-server's self-signed certificate, as
    // upstream's default install); the front-proxy client certificate is what is checked.
    let cfg = tls::client_config_skip_verify((
        tls::load_certs(cert.as_ref())?,
        tls::load_key(key.as_ref())?,
    ))?;
    let ip = if ip.is_empty() { node_address(state, node).await? } else { ip.to_string() };
    let c = Peer::new(
        &format!("https://{ip}:4443"),
        cfg,
        format!("metrics-server@{node}"),
        "apiserver->metrics-server",
    )?;
    let (st, body) = c
        .request(
            "GET",
            path,
            None,
            &[("X-Remote-User", "system:admin"), ("X-Remote-Group", "system:masters")],
        )
        .await?;
    let mut r = hyper::Response::new(Full::new(bytes::Bytes::from(body)));
    *r.status_mut() = hyper::StatusCode::from_u16(st).unwrap_or(hyper::StatusCode::BAD_GATEWAY);
    r.headers_mut()
        .insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
    Ok(r)
}
