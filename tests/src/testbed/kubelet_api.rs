//! The kubelet's API side: node registration and status, and running the pods the API assigns to its node.
//!
//! The kubelet (kubelet.rs, INFRA) builds a [`KubeletContext`] from its flags and awaits [`run`]
//! inside its runtime next to its :10250 server. `run` only returns on an error that the kubelet
//! should log; the kubelet keeps serving its static pods either way.

use std::path::PathBuf;

use anyhow::{bail, Result};

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

/// Registers the node, reports its status every second through the kubeconfig, and runs the pods
/// the API assigns to this node as child processes. Returns only on a fatal error.
pub async fn run(ctx: KubeletContext) -> Result<()> {
    // The node registration and pod runner are not written yet: say so, naming the node, so the
    // kubelet's log shows why its node never becomes Ready.
    bail!(
        "kubelet {}: the API side (node registration, API pods) is not built yet (tests/src/testbed/kubelet_api.rs)",
        ctx.node_name
    )
}
