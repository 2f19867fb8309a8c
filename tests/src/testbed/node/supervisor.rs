//! The node supervisor, the part systemd plays on a real node: started in new mount, UTS and network namespaces, it sets the hostname and the bind mounts, runs sshd and the kubelet, restarts them, keeps the kubelet's journal and reaps orphans.

use std::fs;
use std::io::{BufRead, BufReader, Write as _};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rustix::process::{Pid, Signal, WaitOptions};

use super::layout::{BIND_MOUNTS, NodeSpec, node_dir};
use super::processes::{all_pids, program_name, read_pid, record_pid, to_pid};
use crate::testbed::net;
use crate::testbed::subnet::{self, Subnet};

/// The kubelet's command line, as kubeadm's systemd drop-in starts it
/// (`/usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf` of the kubeadm packages:
/// `ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS
/// $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS`); `$KUBELET_KUBEADM_ARGS` comes from
/// [`KUBEADM_FLAGS_ENV`], read at every start as systemd reads an `EnvironmentFile`.
const KUBELET_ARGS: [&str; 2] =
    ["--kubeconfig=/etc/kubernetes/kubelet.conf", "--config=/var/lib/kubelet/config.yaml"];

/// The drop-in's `EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env` (optional: `-`).
const KUBEADM_FLAGS_ENV: &str = "/var/lib/kubelet/kubeadm-flags.env";

/// The drop-in's `EnvironmentFile=-/etc/default/kubelet` (the deb packages'; the rpm ones read
/// `/etc/sysconfig/kubelet`), whose `KUBELET_EXTRA_ARGS` comes last on the command line.
const KUBELET_EXTRA_ARGS_FILE: &str = "/etc/default/kubelet";

/// The words of `KUBELET_KUBEADM_ARGS` in an environment file, as systemd passes an unquoted
/// `$VAR` to ExecStart: the value without its quotes, split at whitespace.
fn kubeadm_args(env_file: &str) -> Vec<String> {
    env_args(env_file, "KUBELET_KUBEADM_ARGS")
}

/// The words of variable `var` in an environment file (its last assignment; `#` and `;` lines
/// are comments, systemd.exec(5)).
fn env_args(env_file: &str, var: &str) -> Vec<String> {
    let prefix = format!("{var}=");
    env_file
        .lines()
        .filter(|l| !l.trim_start().starts_with(['#', ';']))
        .rev()
        .find_map(|l| l.trim().strip_prefix(prefix.as_str()))
        .map(|v| v.trim().trim_matches('"').split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Seconds systemd waits before restarting a kubelet that died (kubeadm's unit: RestartSec=10;
/// shorter here so a crashed kubelet does not stall the tests).
const KUBELET_RESTART_DELAY: Duration = Duration::from_secs(2);

/// Starts node `node`, the testbed's `index`th (its supervisor in new mount, UTS and network
/// namespaces, linked to the testbed's bridge) and records its pid.
pub fn start(
    dir: &Path,
    subnet: &Subnet,
    index: usize,
    node: &NodeSpec,
    exe: &Path,
) -> Result<u32> {
    let root = node_dir(dir, &node.name);
    let log = fs::File::create(root.join("node.log"))?;
    // Without --fork, unshare calls unshare(2) and execs the supervisor: one pid, whose network
    // namespace `attach` waits for.
    let child = Command::new("unshare")
        .args(["--mount", "--uts", "--net", "--propagation", "private", "--"])
        .arg(exe)
        .arg("node")
        .arg(format!("--dir={}", dir.display()))
        .arg(format!("--name={}", node.name))
        .arg(format!("--address={}", node.address))
        .arg(format!("--subnet={subnet}"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group, so that a Ctrl-C of `up` does not take the node down.
        .process_group(0)
        .spawn()
        .context("starting unshare (install util-linux: scripts/setup.sh)")?;
    let pid = child.id();
    record_pid(dir, pid, &format!("node {}", node.name))?;
    net::attach(subnet, index, &node.address, pid)
        .with_context(|| format!("linking node {} to the testbed's bridge", node.name))?;
    Ok(pid)
}

/// The node supervisor: everything systemd does on a real node. Runs until SIGTERM.
pub fn supervise(dir: &Path, name: &str, address: &str, subnet: &Subnet) -> Result<()> {
    let root = node_dir(dir, name);
    rustix::system::sethostname(name.as_bytes()).context("setting the node's hostname")?;
    rustix::process::set_child_subreaper(Some(rustix::process::getpid()))
        .context("becoming the child subreaper of the node")?;
    for (source, target) in BIND_MOUNTS {
        let out = Command::new("mount")
            .arg("--bind")
            .arg(root.join(source))
            .arg(target)
            .output()
            .context("running mount")?;
        if !out.status.success() {
            bail!(
                "mount --bind {} {target} failed: {}",
                root.join(source).display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let ns = fs::metadata("/proc/self/ns/mnt").context("reading /proc/self/ns/mnt")?.ino();
    fs::write(root.join("mntns"), format!("{ns}\n"))?;
    fs::create_dir_all("/run/sshd")?;
    fs::write("/run/kubeca-node.pid", format!("{}\n", std::process::id()))?;
    // `up` links the namespace to the bridge after it exists: sshd and the kubelet bind the
    // node's address, so they start once it is there.
    net::wait_for_address(address, Duration::from_secs(20))?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the node supervisor's runtime")?;
    runtime.block_on(supervise_loop(dir, &root, name, address, subnet))
}

async fn supervise_loop(
    dir: &Path,
    root: &Path,
    name: &str,
    address: &str,
    subnet: &Subnet,
) -> Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = signal(SignalKind::hangup())?;
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut chld = signal(SignalKind::child())?;
    // `kubeca-testbed sshd stop|start`: SIGUSR1 stops sshd and every SSH session on the node
    // (the node is unreachable over SSH, as when sshd dies or its network goes); SIGUSR2 starts
    // sshd again.
    let mut usr1 = signal(SignalKind::user_defined1())?;
    let mut usr2 = signal(SignalKind::user_defined2())?;
    let exe = std::env::current_exe().context("finding the kubeca-testbed binary")?;

    let sshd_config = root.join("ssh/sshd_config");
    let start_sshd = || -> Result<u32> {
        let log = fs::OpenOptions::new().create(true).append(true).open(root.join("sshd.log"))?;
        let child = Command::new("/usr/sbin/sshd")
            .arg("-D")
            .arg("-e")
            .arg("-f")
            .arg(&sshd_config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting /usr/sbin/sshd (install openssh-server: scripts/setup.sh)")?;
        Ok(child.id())
    };
    let journal = root.join("kubelet.journal");
    let start_kubelet = || -> Result<u32> {
        let env_file = fs::read_to_string(KUBEADM_FLAGS_ENV).unwrap_or_default();
        let extra = fs::read_to_string(KUBELET_EXTRA_ARGS_FILE).unwrap_or_default();
        let mut child = Command::new(&exe)
            .arg("kubelet")
            .args(KUBELET_ARGS)
            .args(kubeadm_args(&env_file))
            .args(env_args(&extra, "KUBELET_EXTRA_ARGS"))
            .env("KUBECA_TESTBED_DIR", dir)
            .env("KUBECA_TESTBED_NODE", name)
            .env("KUBECA_TESTBED_ADDRESS", address)
            .env(subnet::ENV, subnet.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .spawn()
            .context("starting the kubelet")?;
        let pid = child.id();
        // Like journald: every line the kubelet writes, with the time it was written.
        for out in [
            child.stdout.take().map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
            child.stderr.take().map(|e| Box::new(e) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let journal = journal.clone();
            std::thread::spawn(move || copy_to_journal(out, &journal, pid));
        }
        fs::write("/run/kubelet.pid", format!("{pid}\n"))?;
        Ok(pid)
    };

    // The listening sshd's pid; None while it is stopped on purpose.
    let mut sshd = Some(start_sshd()?);
    let mut kubelet = Some(start_kubelet()?);
    let mut restart_at: Option<tokio::time::Instant> = None;
    loop {
        let sleep_until =
            restart_at.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            _ = hup.recv() => {
                // `systemctl restart kubelet`: stop it, then start it again at once. Its static
                // pods run in their own process groups and survive, as containers do.
                if let Some(pid) = kubelet.take() {
                    stop_and_reap(pid, Duration::from_secs(10));
                }
                kubelet = Some(start_kubelet()?);
                restart_at = None;
            }
            _ = usr1.recv() => {
                sshd = None;
                kill_ssh_processes();
            }
            _ = usr2.recv() => {
                if sshd.is_none() {
                    sshd = Some(start_sshd()?);
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = chld.recv() => {
                for pid in reap_all() {
                    if Some(pid) == kubelet {
                        kubelet = None;
                        restart_at = Some(tokio::time::Instant::now() + KUBELET_RESTART_DELAY);
                    } else if Some(pid) == sshd {
                        sshd = Some(start_sshd()?);
                    }
                }
            }
            _ = tokio::time::sleep_until(sleep_until), if restart_at.is_some() => {
                kubelet = Some(start_kubelet()?);
                restart_at = None;
            }
        }
    }
    if let Some(pid) = kubelet {
        stop_and_reap(pid, Duration::from_secs(10));
    }
    if let Some(pid) = sshd {
        stop_and_reap(pid, Duration::from_secs(5));
    }
    Ok(())
}

/// SIGKILLs every sshd process in this mount namespace: the listener and each session's.
fn kill_ssh_processes() {
    let Ok(me) = fs::metadata("/proc/self/ns/mnt").map(|m| m.ino()) else { return };
    for pid in all_pids() {
        let same_ns = fs::metadata(format!("/proc/{pid}/ns/mnt")).is_ok_and(|m| m.ino() == me);
        if same_ns
            && program_name(pid).starts_with("sshd")
            && let Some(p) = Pid::from_raw(pid as i32)
        {
            let _ = rustix::process::kill_process(p, Signal::KILL);
        }
    }
}

/// Stops (`up = false`) or starts sshd on node `name` of the testbed in `dir`, through its
/// supervisor, and waits until nothing answers on the node's port 22 (or something does).
pub fn sshd(dir: &Path, name: &str, up: bool) -> Result<()> {
    let root = node_dir(dir, name);
    let pid = read_pid(&root.join("run/kubeca-node.pid"))
        .with_context(|| format!("node {name} of {} is not running", dir.display()))?;
    let config = fs::read_to_string(root.join("ssh/sshd_config"))?;
    let listen = config
        .lines()
        .find_map(|l| l.strip_prefix("ListenAddress "))
        .context("sshd_config has no ListenAddress")?
        .trim()
        .to_string();
    let pid = Pid::from_raw(pid as i32).context("bad supervisor pid")?;
    rustix::process::kill_process(pid, if up { Signal::USR2 } else { Signal::USR1 })
        .with_context(|| format!("signalling the supervisor of node {name}"))?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let addr: std::net::SocketAddr = listen.parse().context("parsing ListenAddress")?;
        let answers =
            std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok();
        if answers == up {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("sshd on node {name} did not {} within 20 s", if up { "start" } else { "stop" });
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Appends each line of `out` to the journal file as `<RFC 3339 time> <pid> <line>`.
fn copy_to_journal(out: Box<dyn std::io::Read + Send>, journal: &Path, pid: u32) {
    let Ok(mut file) = fs::OpenOptions::new().create(true).append(true).open(journal) else {
        return;
    };
    for line in BufReader::new(out).lines() {
        let Ok(line) = line else { break };
        let now = jiff::Timestamp::now();
        // One write per line, so the two streams' lines never interleave mid-line.
        let _ = file.write_all(format!("{now:.6} {pid} {line}\n").as_bytes());
    }
}

/// Reaps every exited child (the supervisor's own and orphans it inherited); their pids.
fn reap_all() -> Vec<u32> {
    let mut pids = Vec::new();
    while let Ok(Some((pid, _))) = rustix::process::wait(WaitOptions::NOHANG) {
        pids.push(pid.as_raw_nonzero().get() as u32);
    }
    pids
}

/// SIGTERM to `pid`'s process group, SIGKILL after `grace`, reaping it (it is our child).
fn stop_and_reap(pid: u32, grace: Duration) {
    let Some(p) = to_pid(pid) else { return };
    let _ = rustix::process::kill_process_group(p, Signal::TERM);
    let _ = rustix::process::kill_process(p, Signal::TERM);
    let deadline = Instant::now() + grace;
    loop {
        match rustix::process::waitpid(Some(p), WaitOptions::NOHANG) {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) if Instant::now() >= deadline => {
                let _ = rustix::process::kill_process(p, Signal::KILL);
                let _ = rustix::process::waitpid(Some(p), WaitOptions::empty());
                return;
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeadm_flags_are_the_words_of_the_env_file_as_systemd_passes_them() {
        let env = "# written by kubeadm\nKUBELET_KUBEADM_ARGS=\"--node-ip=198.18.0.11 --hostname-override=cp-1  --client-ca-file=/etc/kubernetes/pki/ca.crt\"\n";
        assert_eq!(
            kubeadm_args(env),
            [
                "--node-ip=198.18.0.11",
                "--hostname-override=cp-1",
                "--client-ca-file=/etc/kubernetes/pki/ca.crt"
            ]
        );
        assert!(kubeadm_args("").is_empty(), "the file is optional (EnvironmentFile=-)");
        let extra = "# KUBELET_EXTRA_ARGS=--v=9\nKUBELET_EXTRA_ARGS=\"--client-ca-file=/a.crt\"\n";
        assert_eq!(env_args(extra, "KUBELET_EXTRA_ARGS"), ["--client-ca-file=/a.crt"]);
        assert!(env_args(extra, "KUBELET_KUBEADM_ARGS").is_empty());
    }
}
