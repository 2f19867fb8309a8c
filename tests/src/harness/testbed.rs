//! A testbed brought up for one test binary, with its teardown guard, and what a test reaches
//! on it: ssh to a node, a node's files from the host, the admin kubeconfig, etcd's health,
//! the static pods' pids and the trust monitor's report.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use super::testbed_bin;
use super::tools::{kubectl, kubectl_ok, text};
use crate::testbed::monitor;
use crate::testbed::profile::Profile;
use crate::testbed::subnet::Subnet;

/// A testbed brought up for this test binary; `down` runs when it is dropped, also when a check
/// panicked, so no run leaves processes behind.
pub struct Testbed {
    /// The testbed's DIR.
    pub dir: PathBuf,
    /// (name, address, control plane) of every node.
    pub nodes: Vec<(String, String, bool)>,
    /// The address block it listens on.
    pub subnet: Subnet,
    /// How its nodes are laid out (`up --profile`).
    pub profile: Profile,
}

impl Testbed {
    /// Brings a testbed up in `DIR` on the default block (a stale one from a killed run is
    /// taken down first).
    pub fn up(name: &str, control_planes: usize, workers: usize, extra: &[&str]) -> Testbed {
        Testbed::up_on(name, Subnet::default(), control_planes, workers, extra)
    }

    /// Brings a testbed up in `DIR` on the address block `subnet`, so that it can run beside a
    /// testbed on another block.
    pub fn up_on(
        name: &str,
        subnet: Subnet,
        control_planes: usize,
        workers: usize,
        extra: &[&str],
    ) -> Testbed {
        assert!(
            rustix::process::geteuid().is_root(),
            "the testbed tests need root (namespaces, sshd on port 22): run them as root, as CI does"
        );
        let dir = super::scratch_dir().join(name);
        let _ = Command::new(testbed_bin()).arg("down").arg("--dir").arg(&dir).output();
        let nodes = crate::testbed::node::topology(&subnet, control_planes, workers)
            .unwrap()
            .into_iter()
            .map(|n| (n.name, n.address, n.control_plane))
            .collect();
        let tb = Testbed { dir, nodes, subnet, profile: Profile::from_args(extra) };
        let started = Instant::now();
        let out = Command::new(testbed_bin())
            .args(["up", "--dir"])
            .arg(&tb.dir)
            .arg(format!("--subnet={subnet}"))
            .arg(format!("--control-planes={control_planes}"))
            .arg(format!("--workers={workers}"))
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "up failed: {}", text(&out));
        eprintln!("testbed {name} up on {subnet} in {:.1}s", started.elapsed().as_secs_f64());
        tb
    }

    /// The load balancer's address.
    pub fn lb(&self) -> String {
        self.subnet.lb().to_string()
    }

    /// The address of node `name`.
    pub fn address(&self, name: &str) -> &str {
        let node = self.nodes.iter().find(|n| n.0 == name);
        &node.unwrap_or_else(|| panic!("the testbed has no node {name}")).1
    }

    /// Runs `command` on node `address` over ssh with strict host-key checking.
    pub fn ssh(&self, address: &str, command: &str) -> Output {
        ssh_with(&self.dir, &self.dir.join("known_hosts"), address, command)
    }

    /// Like `ssh`, asserting success; its stdout.
    pub fn ssh_ok(&self, address: &str, command: &str) -> String {
        let out = self.ssh(address, command);
        assert!(out.status.success(), "ssh {address} {command:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A file on node `address`, read with the operator's ssh (not through kubeca): `None` when
    /// absent.
    pub fn ssh_read(&self, address: &str, path: &str) -> Option<Vec<u8>> {
        let out = self.ssh(address, &format!("cat {path}"));
        out.status.success().then_some(out.stdout)
    }

    /// A host path of a node's file, e.g. `node_path("cp-1", "etc-kubernetes/pki/ca.crt")`.
    pub fn node_path(&self, node: &str, rel: &str) -> PathBuf {
        self.dir.join("nodes").join(node).join(rel)
    }

    /// A host path of a file in a node's certificates directory (its profile's
    /// `certificatesDir`), e.g. `pki("cp-1", "ca.crt")`.
    pub fn pki(&self, node: &str, file: &str) -> PathBuf {
        self.host_path(node, &format!("{}/{file}", self.profile.pki_dir()))
    }

    /// `kubeca-testbed down` now (the guard's down then finds nothing).
    pub fn down(&self) -> Output {
        Command::new(testbed_bin()).arg("down").arg("--dir").arg(&self.dir).output().unwrap()
    }

    /// The operator's kubeconfig, `DIR/admin.conf` (the inventory's).
    pub fn admin_conf(&self) -> PathBuf {
        self.dir.join("admin.conf")
    }

    /// `kubectl ARGS` with the operator's kubeconfig.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        kubectl(&self.admin_conf(), args)
    }

    /// Like [`Testbed::kubectl`], asserting success; its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        kubectl_ok(&self.admin_conf(), args)
    }

    /// A path inside node `node` (`/etc/kubernetes/...`, `/var/lib/kubelet/...`) as the host
    /// path of its file, following the kubelet's `-current` symlink.
    pub fn host_path(&self, node: &str, path: &str) -> PathBuf {
        let rel = path
            .replace("/etc/kubernetes/", "etc-kubernetes/")
            .replace("/var/lib/kubelet/", "var-lib-kubelet/");
        let host = self.node_path(node, &rel);
        match std::fs::read_link(&host) {
            Ok(target) => {
                self.node_path(node, "var-lib-kubelet/pki").join(target.file_name().unwrap())
            }
            Err(_) => host,
        }
    }

    /// The other way: the node (None for the operator's machine) and the path inside it of a
    /// host path of the testbed.
    pub fn node_file(&self, host: &Path) -> (Option<String>, String) {
        if host == self.admin_conf() {
            return (None, host.display().to_string());
        }
        let rel = host.strip_prefix(self.dir.join("nodes")).unwrap();
        let mut parts = rel.components();
        let node = parts.next().unwrap().as_os_str().to_string_lossy().into_owned();
        let rest = parts.as_path().display().to_string();
        let path = if let Some(r) = rest.strip_prefix("etc-kubernetes") {
            format!("/etc/kubernetes{r}")
        } else if let Some(r) = rest.strip_prefix("var-lib-kubelet") {
            format!("/var/lib/kubelet{r}")
        } else {
            rest
        };
        (Some(node), path)
    }

    /// The trust monitor's report since `since`: (handshakes, trust failures, the text). A trust
    /// failure is a handshake refused on trust or a 401 after it (`monitor::is_trust_failure`).
    pub fn report_since(&self, since: &str) -> (u64, u64, String) {
        let out = Command::new(testbed_bin())
            .args(["report", "--output", "json", "--since", since, "--dir"])
            .arg(&self.dir)
            .output()
            .unwrap();
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let outcomes = r["outcomes"].as_object();
        let failures: u64 = outcomes
            .map(|o| {
                let failed = o.iter().filter(|(k, _)| monitor::is_trust_failure(k));
                failed.filter_map(|(_, v)| v.as_u64()).sum()
            })
            .unwrap_or(0);
        let total: u64 = outcomes.map(|o| o.values().filter_map(|v| v.as_u64()).sum()).unwrap_or(0);
        let human = Command::new(testbed_bin())
            .args(["report", "--since", since, "--dir"])
            .arg(&self.dir)
            .output()
            .unwrap();
        (total, failures, String::from_utf8_lossy(&human.stdout).into_owned())
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let out = self.down();
        if !out.status.success() {
            eprintln!("teardown of {}: {}", self.dir.display(), text(&out));
        }
    }
}

/// ssh as root with DIR's client key and the given known_hosts, strict host-key checking.
pub fn ssh_with(dir: &Path, known_hosts: &Path, address: &str, command: &str) -> Output {
    Command::new("ssh")
        .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5"])
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
        .arg("-i")
        .arg(dir.join("id_ed25519"))
        .arg(format!("root@{address}"))
        .arg(command)
        .output()
        .unwrap()
}

/// `etcdctl endpoint health` over every member with cp-1's healthcheck client certificate.
pub fn etcd_health(tb: &Testbed, with_client_cert: bool) -> Output {
    let pki = tb.pki("cp-1", "etcd");
    let endpoints: Vec<String> =
        tb.nodes.iter().filter(|n| n.2).map(|n| format!("https://{}:2379", n.1)).collect();
    let mut cmd = Command::new("etcdctl");
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .arg(format!("--cacert={}", pki.join("ca.crt").display()))
        .args(["--dial-timeout=2s", "--command-timeout=3s"]);
    if with_client_cert {
        cmd.arg(format!("--cert={}", pki.join("healthcheck-client.crt").display()))
            .arg(format!("--key={}", pki.join("healthcheck-client.key").display()));
    }
    cmd.args(["endpoint", "health"]).output().unwrap()
}

/// The pid of a static pod from the kubelet's state on a node, when it runs.
pub fn static_pod_pid(tb: &Testbed, node: &str, pod: &str) -> Option<u32> {
    let path = tb.node_path(node, &format!("run/kubelet/static-pods/{pod}-{node}.json"));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    let pid = v["pid"].as_u64()? as u32;
    // Running, not a zombie.
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = stat.rsplit(')').next()?.split_whitespace().next()?;
    (state != "Z").then_some(pid)
}
