//! What a node is on the host: its name and address (the topology), its directory under `DIR/nodes/`, the bind mounts that make it a kubeadm node, and the SSH keys, sshd configuration and shims `up` writes for it.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::testbed::subnet::{self, Subnet};

/// One node of the testbed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    /// `cp-<i>` or `w-<i>`; also the node's hostname.
    pub name: String,
    /// The testbed's block + 11 + i (`198.18.0.11` up by default): the address of the node's
    /// `eth0`, its InternalIP and where sshd listens.
    pub address: String,
    /// Whether the node runs etcd and the control-plane static pods.
    pub control_plane: bool,
}

/// The nodes of a testbed: control planes `cp-1..` then workers `w-1..`, from the block's
/// address + 11 up; an error when the block has no room for that many.
pub fn topology(subnet: &Subnet, control_planes: usize, workers: usize) -> Result<Vec<NodeSpec>> {
    (0..control_planes + workers)
        .map(|i| {
            let control_plane = i < control_planes;
            let name = if control_plane {
                format!("cp-{}", i + 1)
            } else {
                format!("w-{}", i + 1 - control_planes)
            };
            let address = subnet
                .node(i)
                .with_context(|| format!("{subnet} holds at most {} nodes", subnet::MAX_NODES))?;
            Ok(NodeSpec { name, address: address.to_string(), control_plane })
        })
        .collect()
}

/// The host directory holding everything of one node.
pub fn node_dir(dir: &Path, name: &str) -> PathBuf {
    dir.join("nodes").join(name)
}

/// (directory under the node's dir, path inside the node) for every bind mount of a node.
pub(super) const BIND_MOUNTS: [(&str, &str); 7] = [
    ("etc-kubernetes", "/etc/kubernetes"),
    // Where the kubelet unit's `KUBELET_EXTRA_ARGS` file lives (`/etc/default/kubelet`); a copy
    // of the host's, so that nothing else a node reads there goes missing.
    ("etc-default", "/etc/default"),
    ("var-lib-kubelet", "/var/lib/kubelet"),
    ("var-lib-etcd", "/var/lib/etcd"),
    ("var-log-pods", "/var/log/pods"),
    ("run", "/run"),
    // The shims: first directory of root's PATH in ssh sessions and in the kubelet.
    ("bin", "/usr/local/sbin"),
];

/// SSH keys, sshd configurations, shims and host mount points for every node.
pub fn prepare(dir: &Path, nodes: &[NodeSpec], exe: &Path) -> Result<()> {
    let dir_str = dir.to_str().context("the testbed DIR must be a UTF-8 path")?;
    if dir_str.contains(char::is_whitespace) {
        bail!("the testbed DIR {dir_str:?} contains whitespace, which sshd_config cannot quote");
    }
    let client_key = dir.join("id_ed25519");
    if !client_key.exists() {
        ssh_keygen(&client_key, "kubeca-testbed")?;
    }
    let pubkey = fs::read_to_string(client_key.with_extension("pub"))
        .with_context(|| format!("reading {}.pub", client_key.display()))?;
    let authorized = dir.join("authorized_keys");
    fs::write(&authorized, &pubkey).with_context(|| format!("writing {}", authorized.display()))?;
    fs::set_permissions(&authorized, fs::Permissions::from_mode(0o600))?;

    let mut known_hosts = String::new();
    for node in nodes {
        let root = node_dir(dir, &node.name);
        let ssh = root.join("ssh");
        fs::create_dir_all(&ssh).with_context(|| format!("creating {}", ssh.display()))?;
        let host_key = ssh.join("ssh_host_ed25519_key");
        if !host_key.exists() {
            ssh_keygen(&host_key, &format!("root@{}", node.name))?;
        }
        let host_pub = fs::read_to_string(host_key.with_extension("pub"))
            .with_context(|| format!("reading {}.pub", host_key.display()))?;
        let mut fields = host_pub.split_whitespace();
        let (Some(kind), Some(key)) = (fields.next(), fields.next()) else {
            bail!("{}.pub is not an OpenSSH public key", host_key.display());
        };
        known_hosts.push_str(&format!("{} {kind} {key}\n", node.address));

        // StrictModes is off because DIR may sit under a world-writable /tmp, which sshd would
        // refuse as a parent of authorized_keys; the key files themselves are root's and 0600.
        let config = format!(
            "# sshd of testbed node {name}\nListenAddress {addr}:22\nHostKey {key}\n\
             PidFile {root}/run/sshd.pid\nPermitRootLogin prohibit-password\n\
             PubkeyAuthentication yes\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n\
             UsePAM no\nStrictModes no\nAuthorizedKeysFile {auth}\nUseDNS no\nPrintMotd no\n\
             MaxStartups 200\nMaxSessions 100\nSubsystem sftp /usr/lib/openssh/sftp-server\n",
            name = node.name,
            addr = node.address,
            key = host_key.display(),
            root = root.display(),
            auth = authorized.display(),
        );
        fs::write(ssh.join("sshd_config"), config)?;

        let bin = root.join("bin");
        fs::create_dir_all(&bin)?;
        for shim in ["systemctl", "journalctl"] {
            let path = bin.join(shim);
            let script = format!(
                "#!/bin/sh\n# testbed shim: the node's {shim}, answered by kubeca-testbed\n\
                 exec {exe} {shim} --node-dir={root} \"$@\"\n",
                exe = exe.display(),
                root = root.display(),
            );
            fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
        }
        fs::create_dir_all(root.join("run/sshd"))?;
        fs::set_permissions(root.join("run/sshd"), fs::Permissions::from_mode(0o755))?;
    }
    fs::write(dir.join("known_hosts"), known_hosts)?;

    // Mount points must exist on the host; the mounts themselves stay inside each node.
    for (_, target) in BIND_MOUNTS {
        fs::create_dir_all(target).with_context(|| format!("creating mount point {target}"))?;
    }
    Ok(())
}

fn ssh_keygen(path: &Path, comment: &str) -> Result<()> {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .context("running ssh-keygen (install openssh-client: scripts/setup.sh)")?;
    if !out.status.success() {
        bail!("ssh-keygen for {} failed: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// Mounts of the host whose source or target lies under DIR (none, when every node's mounts
/// stayed in its private namespace as they should).
pub fn host_mounts_under(dir: &Path) -> Vec<String> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else { return Vec::new() };
    let dir = dir.to_string_lossy();
    info.lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|target| target.starts_with(dir.as_ref()))
        .map(String::from)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topology_names_and_addresses_follow_the_contract() {
        let t = topology(&Subnet::default(), 3, 2).unwrap();
        let got: Vec<(&str, &str, bool)> =
            t.iter().map(|n| (n.name.as_str(), n.address.as_str(), n.control_plane)).collect();
        assert_eq!(
            got,
            [
                ("cp-1", "198.18.0.11", true),
                ("cp-2", "198.18.0.12", true),
                ("cp-3", "198.18.0.13", true),
                ("w-1", "198.18.0.14", false),
                ("w-2", "198.18.0.15", false),
            ]
        );
        let other = topology(&Subnet::parse("198.18.1.0/24").unwrap(), 1, 1).unwrap();
        assert_eq!(other[0].address, "198.18.1.11");
        assert_eq!(other[1].address, "198.18.1.12");
        let err = topology(&Subnet::default(), 200, 41).unwrap_err();
        assert!(err.to_string().contains("at most 240 nodes"), "{err}");
    }
}
