//! Helpers of the testbed tests: the shared testbed with its teardown guard, ssh, commands, waits.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use kubeca_tests::testbed::subnet::Subnet;

/// The testbed binary under test.
pub const TESTBED: &str = env!("CARGO_BIN_EXE_kubeca-testbed");

/// A testbed brought up for this test binary; `down` runs when it is dropped, also when a check
/// panicked, so no run leaves processes behind.
pub struct Testbed {
    /// The testbed's DIR.
    pub dir: PathBuf,
    /// (name, address, control plane) of every node.
    pub nodes: Vec<(String, String, bool)>,
    /// The address block it listens on.
    pub subnet: Subnet,
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
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(name);
        let _ = Command::new(TESTBED).arg("down").arg("--dir").arg(&dir).output();
        let nodes = kubeca_tests::testbed::node::topology(&subnet, control_planes, workers)
            .unwrap()
            .into_iter()
            .map(|n| (n.name, n.address, n.control_plane))
            .collect();
        let tb = Testbed { dir, nodes, subnet };
        let started = Instant::now();
        let out = Command::new(TESTBED)
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

    /// A host path of a node's file, e.g. `node_path("cp-1", "etc-kubernetes/pki/ca.crt")`.
    pub fn node_path(&self, node: &str, rel: &str) -> PathBuf {
        self.dir.join("nodes").join(node).join(rel)
    }

    /// `kubeca-testbed down` now (the guard's down then finds nothing).
    pub fn down(&self) -> Output {
        Command::new(TESTBED).arg("down").arg("--dir").arg(&self.dir).output().unwrap()
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

/// stdout and stderr of a command, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Polls `cond` every 100 ms until it holds; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `etcdctl endpoint health` over every member with cp-1's healthcheck client certificate.
pub fn etcd_health(tb: &Testbed, with_client_cert: bool) -> Output {
    let pki = tb.node_path("cp-1", "etc-kubernetes/pki/etcd");
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
