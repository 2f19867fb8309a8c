//! The testbed's network on this machine: one bridge per testbed on its block of 198.18.0.0/15,
//! and every node a network namespace of its own, linked to the bridge by a veth pair.
//!
//! A real node has its own loopback: kubeadm binds the controller-manager, the scheduler,
//! etcd's metrics and the kubelet's healthz to 127.0.0.1 (`manifests.go`, `etcd/local.go`,
//! `componentconfigs/kubelet.go`; tests/upstream/kubeadm-defaults.md), and a stacked apiserver
//! reaches its own etcd member at `https://127.0.0.1:2379`. Giving each node a network namespace
//! lets the testbed write those flags as kubeadm writes them.
//!
//! The namespace is made by the node supervisor's `unshare --net` and lives as long as a
//! process of the node does: there is no handle under `/run/netns` (each node bind-mounts its
//! own `/run`, and a handle mounted there would be copied into every node's mount namespace,
//! keeping deleted namespaces alive). What enters a node's namespace goes through its
//! supervisor's pid ([`enter`]).
//!
//! Traffic stays on this machine: the bridge has no uplink and nothing forwards the block
//! anywhere, and nodes have no default route (everything they reach is on the block).

use std::fs;
use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::subnet::Subnet;

/// The file in DIR naming the bridge `up` made, so that `down` removes it.
pub const BRIDGE_FILE: &str = "bridge";

/// The name of a node's link to the bridge inside its namespace, as on a real node.
const NODE_LINK: &str = "eth0";

/// Runs `ip` with `args`; an error naming the command and what `ip` said.
fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("running ip (install iproute2: scripts/setup.sh)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Whether a link named `name` exists in this network namespace.
fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Creates the testbed's bridge: the block's host address (+1) and the load balancer's (+10)
/// on it, up. A bridge of the same name left by a testbed that was never brought down is
/// removed first (`up` has checked that nothing of a running testbed answers on the block).
/// Refuses a block whose addresses this machine already has on another interface.
pub fn bridge_up(dir: &Path, subnet: &Subnet) -> Result<()> {
    let bridge = subnet.bridge();
    if link_exists(&bridge) {
        ip(&["link", "del", &bridge]).with_context(|| format!("removing a stale {bridge}"))?;
    }
    for addr in [subnet.host(), subnet.lb()] {
        if let Some(owner) = interface_with(&addr.to_string())? {
            bail!(
                "{addr} is already an address of interface {owner} on this machine: give the \
                 testbed another --subnet in 198.18.0.0/15"
            );
        }
    }
    ip(&["link", "add", "name", &bridge, "type", "bridge"])?;
    fs::write(dir.join(BRIDGE_FILE), format!("{bridge}\n"))
        .with_context(|| format!("writing {}/{BRIDGE_FILE}", dir.display()))?;
    let prefix = subnet.prefix();
    for addr in [subnet.host(), subnet.lb()] {
        ip(&["addr", "add", &format!("{addr}/{prefix}"), "dev", &bridge])?;
    }
    ip(&["link", "set", &bridge, "up"])
}

/// Removes the bridge `up` made for the testbed in DIR, if any. The nodes' veth pairs went
/// with their namespaces.
pub fn bridge_down(dir: &Path) -> Result<()> {
    let file = dir.join(BRIDGE_FILE);
    let Ok(text) = fs::read_to_string(&file) else { return Ok(()) };
    let bridge = text.trim();
    if !bridge.is_empty() && link_exists(bridge) {
        ip(&["link", "del", bridge])?;
    }
    fs::remove_file(&file).with_context(|| format!("removing {}", file.display()))
}

/// How many node links the testbed bridge of `subnet` has, when it exists with at least one: a
/// testbed on that block is running (a node's veth pair goes with its namespace).
pub fn bridge_in_use(subnet: &Subnet) -> Option<usize> {
    let ports =
        fs::read_dir(Path::new("/sys/class/net").join(subnet.bridge()).join("brif")).ok()?;
    let n = ports.count();
    (n > 0).then_some(n)
}

/// The interface of this namespace that has `addr`, if one has.
fn interface_with(addr: &str) -> Result<Option<String>> {
    let out = Command::new("ip")
        .args(["-o", "-4", "addr", "show", "to", &format!("{addr}/32")])
        .output()
        .context("running ip (install iproute2: scripts/setup.sh)")?;
    if !out.status.success() {
        bail!("ip addr show to {addr}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    // `<index>: <interface>    inet <addr>/<prefix> ...`
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text.lines().find_map(|l| l.split_whitespace().nth(1)).map(String::from))
}

/// The network namespace of process `pid` (its `/proc/<pid>/ns/net` link).
fn netns_of(pid: u32) -> Option<std::path::PathBuf> {
    fs::read_link(format!("/proc/{pid}/ns/net")).ok()
}

/// Links node `index` (address `address`), whose supervisor `pid` is unsharing its network
/// namespace, to the bridge: waits until `pid` is in a namespace of its own, moves one end of a
/// veth pair into it as `eth0`, and sets its addresses (`lo` up, the node's address on `eth0`).
/// The supervisor waits for its address before starting sshd and the kubelet.
pub fn attach(subnet: &Subnet, index: usize, address: &str, pid: u32) -> Result<()> {
    let ours = netns_of(std::process::id()).context("reading /proc/self/ns/net")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match netns_of(pid) {
            Some(ns) if ns != ours => break,
            Some(_) => {}
            None => bail!("node supervisor {pid} exited before its network was set up"),
        }
        if Instant::now() >= deadline {
            bail!("node supervisor {pid} did not enter a network namespace of its own in 10 s");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let host_end = subnet.veth(index);
    if link_exists(&host_end) {
        ip(&["link", "del", &host_end])?;
    }
    let pid_s = pid.to_string();
    ip(&["link", "add", &host_end, "type", "veth", "peer", "name", NODE_LINK, "netns", &pid_s])?;
    ip(&["link", "set", &host_end, "master", &subnet.bridge(), "up"])?;
    let batch = format!(
        "link set lo up\naddr add {address}/{prefix} dev {NODE_LINK}\nlink set {NODE_LINK} up\n",
        prefix = subnet.prefix()
    );
    let mut child = enter(pid)
        .args(["ip", "-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running nsenter (install util-linux: scripts/setup.sh)")?;
    child.stdin.take().context("nsenter's stdin")?.write_all(batch.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "setting up the network of node supervisor {pid} ({address}): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A command that runs in the network namespace of process `pid` (a node's supervisor, or
/// anything of that node), and nowhere else of it: its mounts are the caller's.
pub fn enter(pid: u32) -> Command {
    let mut c = Command::new("nsenter");
    c.arg(format!("--target={pid}")).arg("--net").arg("--");
    c
}

/// Waits until `address` is an address of this namespace (bindable), up to `timeout`: the node
/// supervisor's wait for [`attach`].
pub fn wait_for_address(address: &str, timeout: Duration) -> Result<()> {
    let ip: std::net::IpAddr =
        address.parse().with_context(|| format!("{address:?} is not an IP address"))?;
    let deadline = Instant::now() + timeout;
    loop {
        match std::net::TcpListener::bind((ip, 0)) {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => {
                bail!("the node's address {address} did not appear in {timeout:?}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}
