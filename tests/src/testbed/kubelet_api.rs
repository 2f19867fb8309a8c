//! The kubelet's API side: node registration and status, and running the pods the API assigns to its node.
//!
//! The kubelet (kubelet.rs, INFRA) builds a [`KubeletContext`] from its flags and awaits [`run`]
//! inside its runtime next to its :10250 server. `run` only returns on an error that the kubelet
//! should log; the kubelet keeps serving its static pods either way.

use std::path::PathBuf;

use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use super::client::{Client, Credentials};

/// What the kubelet's API side needs from the kubelet process; all values come from its flags
/// and environment, read once at start as the real kubelet does.
#[derive(Clone, Debug)]
pub struct KubeletContext {
    /// The node's name (`--hostname-override`, e.g. `cp-1`, `w-2`).
    pub node_name: String,
    /// The node's address (`--node-ip`, e.g. `127.0.0.11`): the node's InternalIP, and the
    /// address pods assigned to this node listen on.
    pub node_address: String,
    /// `--kubeconfig` (normally `/etc/kubernetes/kubelet.conf`), read once at start.
    pub kubeconfig: PathBuf,
    /// The `kubeca-testbed` binary: API pods run as `kubeca-testbed <program> ARGS`.
    pub exe: PathBuf,
    /// The testbed directory (KUBECA_TESTBED_DIR), passed on to the pods it starts.
    pub testbed_dir: PathBuf,
    /// Where container logs go: `<pod_log_dir>/<ns>_<pod>_<uid>/<container>/0.log`
    /// (normally `/var/log/pods`, the node's own through its bind mount).
    pub pod_log_dir: PathBuf,
    /// The kubelet's port (10250), published in the node's status as daemonEndpoints.
    pub kubelet_port: u16,
    /// True on control-plane nodes (label `node-role.kubernetes.io/control-plane`).
    pub control_plane: bool,
}

/// The Node object this kubelet registers: Ready, with its address and kubelet port.
pub fn node_object(ctx: &KubeletContext) -> Value {
    let mut labels = json!({
        "kubernetes.io/hostname": ctx.node_name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
    });
    if ctx.control_plane {
        labels["node-role.kubernetes.io/control-plane"] = json!("");
    }
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": ctx.node_name, "labels": labels},
        "spec": {},
        "status": status(ctx),
    })
}

/// The node status reported every second (the heartbeat is the Ready condition's time).
pub fn status(ctx: &KubeletContext) -> Value {
    let now = jiff::Timestamp::now().to_string();
    json!({
        "conditions": [{
            "type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "kubelet is posting ready status",
            "lastHeartbeatTime": now, "lastTransitionTime": now,
        }],
        "addresses": [
            {"type": "InternalIP", "address": ctx.node_address},
            {"type": "Hostname", "address": ctx.node_name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": ctx.kubelet_port}},
        "nodeInfo": {"kubeletVersion": "v1.31.0", "operatingSystem": "linux", "architecture": "amd64"},
    })
}

/// Registers the node and reports its status every second through the kubeconfig (read once,
/// here). Running the pods the API assigns to this node is not built yet. Returns only when the
/// kubeconfig cannot be used.
pub async fn run(ctx: KubeletContext) -> Result<()> {
    let creds = Credentials::from_kubeconfig(&ctx.kubeconfig)
        .with_context(|| format!("kubelet {}: reading its kubeconfig", ctx.node_name))?;
    let client = Client::new(&creds, &format!("kubelet@{}", ctx.node_name), "kubelet->apiserver")?;
    let path = format!("/api/v1/nodes/{}", ctx.node_name);
    loop {
        if let Err(e) = heartbeat(&client, &ctx, &path).await {
            eprintln!("{} kubelet {}: node status: {e:#}", jiff::Timestamp::now(), ctx.node_name);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn heartbeat(client: &Client, ctx: &KubeletContext, path: &str) -> Result<()> {
    let status_path = format!("{path}/status");
    let r = client.request("PATCH", &status_path, Some("application/merge-patch+json"), Some(&json!({"status": status(ctx)}))).await?;
    match r.status {
        200..=299 => Ok(()),
        404 => {
            // Not registered yet (or deleted): register, as the real kubelet does.
            client.create("/api/v1/nodes", &node_object(ctx)).await?;
            Ok(())
        }
        s => anyhow::bail!("PATCH {status_path}: HTTP {s}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_control_plane_node_is_ready_with_its_role_and_address() {
        let ctx = KubeletContext {
            node_name: "cp-1".into(),
            node_address: "127.0.0.11".into(),
            kubeconfig: "/etc/kubernetes/kubelet.conf".into(),
            exe: "/bin/true".into(),
            testbed_dir: "/tmp".into(),
            pod_log_dir: "/var/log/pods".into(),
            kubelet_port: 10250,
            control_plane: true,
        };
        let n = node_object(&ctx);
        assert!(n["metadata"]["labels"].get("node-role.kubernetes.io/control-plane").is_some());
        assert_eq!(n["status"]["conditions"][0]["status"], "True");
        assert_eq!(n["status"]["addresses"][0]["address"], "127.0.0.11");
        assert_eq!(n["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"], 10250);
    }
}
