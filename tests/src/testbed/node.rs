//! Nodes as mount + UTS namespaces with bind-mounted kubeadm paths, a real sshd and systemctl/journalctl shims.
//!
//! A node is one long-lived process, the node supervisor (`kubeca-testbed node`), started by
//! `unshare --mount --uts --propagation private`. It plays the part systemd plays on a real
//! node: it sets the hostname, bind-mounts `DIR/nodes/<name>/…` over `/etc/kubernetes`,
//! `/var/lib/kubelet`, `/var/lib/etcd`, `/var/log/pods`, `/run` and a shim directory over
//! `/usr/local/sbin` (first on root's PATH, so `systemctl` and `journalctl` are the shims), then
//! runs `sshd -D` and the kubelet, restarts the kubelet on SIGHUP (`systemctl restart kubelet`)
//! and when it dies, keeps the kubelet's output as its journal, and reaps orphans (it is a child
//! subreaper, because PID 1 on CI machines may not reap).
//!
//! Every process the testbed starts is found again by `down` by pid: the pids recorded in
//! `DIR/pids` (node supervisors, haproxy), and every process inside a node's mount namespace,
//! whose inode is recorded in `DIR/nodes/<name>/mntns` (static pods, pods, ssh sessions).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader, Write as _};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rustix::process::{Pid, Signal, WaitOptions};

use super::subnet::{self, Subnet};

/// One node of the testbed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSpec {
    /// `cp-<i>` or `w-<i>`; also the node's hostname.
    pub name: String,
    /// The testbed's block + 11 + i (`127.0.0.11` up by default); every listener of the node
    /// binds it.
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
const BIND_MOUNTS: [(&str, &str); 6] = [
    ("etc-kubernetes", "/etc/kubernetes"),
    ("var-lib-kubelet", "/var/lib/kubelet"),
    ("var-lib-etcd", "/var/lib/etcd"),
    ("var-log-pods", "/var/log/pods"),
    ("run", "/run"),
    // The shims: first directory of root's PATH in ssh sessions and in the kubelet.
    ("bin", "/usr/local/sbin"),
];

/// The kubelet's command line, as kubeadm's systemd drop-in starts it
/// (`/usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf` of the kubeadm packages:
/// `ExecStart=/usr/bin/kubelet $KUBELET_KUBECONFIG_ARGS $KUBELET_CONFIG_ARGS
/// $KUBELET_KUBEADM_ARGS $KUBELET_EXTRA_ARGS`); `$KUBELET_KUBEADM_ARGS` comes from
/// [`KUBEADM_FLAGS_ENV`], read at every start as systemd reads an `EnvironmentFile`.
const KUBELET_ARGS: [&str; 2] =
    ["--kubeconfig=/etc/kubernetes/kubelet.conf", "--config=/var/lib/kubelet/config.yaml"];

/// The drop-in's `EnvironmentFile=-/var/lib/kubelet/kubeadm-flags.env` (optional: `-`).
const KUBEADM_FLAGS_ENV: &str = "/var/lib/kubelet/kubeadm-flags.env";

/// The words of `KUBELET_KUBEADM_ARGS` in an environment file, as systemd passes an unquoted
/// `$VAR` to ExecStart: the value without its quotes, split at whitespace.
fn kubeadm_args(env_file: &str) -> Vec<String> {
    env_file
        .lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("KUBELET_KUBEADM_ARGS="))
        .map(|v| v.trim().trim_matches('"').split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Seconds systemd waits before restarting a kubelet that died (kubeadm's unit: RestartSec=10;
/// shorter here so a crashed kubelet does not stall the tests).
const KUBELET_RESTART_DELAY: Duration = Duration::from_secs(2);

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

/// Starts node `node` (its supervisor in new mount and UTS namespaces) and records its pid.
pub fn start(dir: &Path, subnet: &Subnet, node: &NodeSpec, exe: &Path) -> Result<u32> {
    let root = node_dir(dir, &node.name);
    let log = fs::File::create(root.join("node.log"))?;
    let child = Command::new("unshare")
        .args(["--mount", "--uts", "--propagation", "private", "--"])
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
        let mut child = Command::new(&exe)
            .arg("kubelet")
            .args(KUBELET_ARGS)
            .args(kubeadm_args(&env_file))
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

pub(crate) fn to_pid(pid: u32) -> Option<Pid> {
    Pid::from_raw(i32::try_from(pid).ok()?)
}

// ---------------------------------------------------------------------------------------------
// Process bookkeeping: DIR/pids, liveness that is not fooled by reused pids or zombies.

/// The start time of a process in clock ticks since boot (field 22 of /proc/<pid>/stat), and
/// whether it is a zombie; None when there is no such process.
pub(crate) fn proc_stat(pid: u32) -> Option<(u64, bool)> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = *fields.first()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((start, state == "Z" || state == "X"))
}

/// Whether `pid` is a running (not zombie) process started at `start` ticks.
pub(crate) fn alive(pid: u32, start: u64) -> bool {
    matches!(proc_stat(pid), Some((s, false)) if s == start)
}

/// Appends `pid` (with its start time, so a reused pid is never mistaken for it) to DIR/pids.
pub fn record_pid(dir: &Path, pid: u32, role: &str) -> Result<()> {
    let start = proc_stat(pid).map_or(0, |(s, _)| s);
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("pids"))
        .with_context(|| format!("opening {}/pids", dir.display()))?;
    f.write_all(format!("{pid} {start} {role}\n").as_bytes())?;
    Ok(())
}

/// The processes of the testbed in DIR that are running: (pid, what it is).
pub fn running(dir: &Path) -> Vec<(u32, String)> {
    let mut found: BTreeMap<u32, String> = BTreeMap::new();
    if let Ok(text) = fs::read_to_string(dir.join("pids")) {
        for line in text.lines() {
            let mut f = line.splitn(3, ' ');
            if let (Some(Some(pid)), Some(Some(start)), Some(role)) = (
                f.next().map(|p| p.parse::<u32>().ok()),
                f.next().map(|s| s.parse::<u64>().ok()),
                f.next(),
            ) && alive(pid, start)
            {
                found.insert(pid, role.to_string());
            }
        }
    }
    let namespaces = node_namespaces(dir);
    if !namespaces.is_empty() {
        let me = std::process::id();
        for pid in all_pids() {
            if pid == me || found.contains_key(&pid) {
                continue;
            }
            if let Ok(meta) = fs::metadata(format!("/proc/{pid}/ns/mnt"))
                && let Some(node) = namespaces.get(&meta.ino())
                && matches!(proc_stat(pid), Some((_, false)))
            {
                found.insert(pid, format!("{} on node {node}", program_name(pid)));
            }
        }
    }
    found.into_iter().collect()
}

/// What a process runs: `etcd`, `sshd`, or the subcommand of `kubeca-testbed` (`kubelet`, …).
fn program_name(pid: u32) -> String {
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let mut args = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned());
    let argv0 = args.next().unwrap_or_default();
    let program = argv0.rsplit('/').next().unwrap_or_default().to_string();
    match args.next() {
        Some(sub) if program == "kubeca-testbed" => sub,
        _ => program,
    }
}

/// Mount namespace inode → node name, for every node of DIR that recorded one.
fn node_namespaces(dir: &Path) -> BTreeMap<u64, String> {
    let mut map = BTreeMap::new();
    if let Ok(entries) = fs::read_dir(dir.join("nodes")) {
        for e in entries.flatten() {
            if let Ok(text) = fs::read_to_string(e.path().join("mntns"))
                && let Ok(ino) = text.trim().parse::<u64>()
            {
                map.insert(ino, e.file_name().to_string_lossy().into_owned());
            }
        }
    }
    // Never the host's own namespace, whatever a damaged file says.
    if let Ok(meta) = fs::metadata("/proc/self/ns/mnt") {
        map.remove(&meta.ino());
    }
    map
}

fn all_pids() -> Vec<u32> {
    fs::read_dir("/proc")
        .map(|rd| rd.flatten().filter_map(|e| e.file_name().to_str()?.parse().ok()).collect())
        .unwrap_or_default()
}

/// CPU time (user + system, in clock ticks) of a process. Children's reaped time is left out:
/// the children are measured themselves while they run.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    // utime, stime: fields 14 and 15 of stat, 11 and 12 after the command name.
    (11..=12).map(|i| fields.get(i)?.parse::<u64>().ok()).sum()
}

/// The CPU the testbed's processes use over `period`, in cores, and how many were measured.
/// A process that started during the period counts whole; one that ended is not counted.
pub fn cpu_use(dir: &Path, period: Duration) -> Result<(f64, usize)> {
    let before: BTreeMap<u32, u64> =
        running(dir).into_iter().filter_map(|(p, _)| Some((p, cpu_ticks(p)?))).collect();
    if before.is_empty() {
        bail!("no process of a testbed runs in {}", dir.display());
    }
    let started = Instant::now();
    std::thread::sleep(period);
    let after: BTreeMap<u32, u64> =
        running(dir).into_iter().filter_map(|(p, _)| Some((p, cpu_ticks(p)?))).collect();
    let ticks: u64 =
        after.iter().map(|(p, t)| t.saturating_sub(before.get(p).copied().unwrap_or(0))).sum();
    let hz = rustix::param::clock_ticks_per_second() as f64;
    Ok((ticks as f64 / hz / started.elapsed().as_secs_f64(), after.len()))
}

/// Stops every process of the testbed in DIR, by pid: SIGTERM, then SIGKILL after `grace`,
/// until none is left. Safe to run on a testbed that is already down.
pub fn stop_all(dir: &Path, grace: Duration) -> Result<Vec<(u32, String)>> {
    let mut stopped: BTreeMap<u32, String> = BTreeMap::new();
    let deadline = Instant::now() + grace;
    let mut signalled: BTreeSet<u32> = BTreeSet::new();
    // Node supervisors first: they stop their kubelets, which then start nothing new.
    loop {
        let procs = running(dir);
        if procs.is_empty() {
            break;
        }
        let kill = Instant::now() >= deadline;
        for (pid, role) in &procs {
            let Some(p) = to_pid(*pid) else { continue };
            if kill {
                let _ = rustix::process::kill_process(p, Signal::KILL);
            } else if signalled.insert(*pid) {
                let _ = rustix::process::kill_process(p, Signal::TERM);
            }
            stopped.insert(*pid, role.clone());
        }
        if Instant::now() > deadline + Duration::from_secs(10) {
            let left: Vec<String> = procs.iter().map(|(p, r)| format!("{p} ({r})")).collect();
            bail!("these testbed processes survived SIGKILL: {}", left.join(", "));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(stopped.into_iter().collect())
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

// ---------------------------------------------------------------------------------------------
// The shims: `systemctl` and `journalctl` of a node, for the kubelet unit only.

/// `systemctl restart|start|stop|status|is-active kubelet` on a node.
pub fn systemctl(args: &[String]) -> Result<std::process::ExitCode> {
    let (node_dir, rest) = shim_args(args)?;
    let verb = rest.iter().find(|a| !a.starts_with('-')).map(String::as_str).unwrap_or("");
    let units: Vec<&str> = rest
        .iter()
        .filter(|a| !a.starts_with('-'))
        .skip(1)
        .map(|u| u.trim_end_matches(".service"))
        .collect();
    if verb == "daemon-reload" {
        return Ok(std::process::ExitCode::SUCCESS);
    }
    if units != ["kubelet"] {
        eprintln!("testbed systemctl: only the kubelet unit exists on this node (got {units:?})");
        return Ok(std::process::ExitCode::from(5));
    }
    let kubelet = read_pid(&node_dir.join("run/kubelet.pid"));
    let running = kubelet.is_some_and(|p| matches!(proc_stat(p), Some((_, false))));
    match verb {
        "restart" | "try-restart" | "reload-or-restart" | "start" => {
            if verb == "start" && running {
                return Ok(std::process::ExitCode::SUCCESS);
            }
            let supervisor = read_pid(&node_dir.join("run/kubeca-node.pid"))
                .and_then(to_pid)
                .context("the node supervisor is not running (is the testbed up?)")?;
            rustix::process::kill_process(supervisor, Signal::HUP)
                .context("signalling the node supervisor")?;
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let now = read_pid(&node_dir.join("run/kubelet.pid"));
                if now.is_some() && now != kubelet && now.is_some_and(|p| proc_stat(p).is_some()) {
                    return Ok(std::process::ExitCode::SUCCESS);
                }
                if Instant::now() > deadline {
                    bail!("the kubelet did not restart within 30s");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        "status" | "is-active" => {
            let since = fs::metadata(node_dir.join("run/kubelet.pid"))
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| jiff::Timestamp::try_from(t).ok());
            if verb == "status" {
                println!("● kubelet.service - kubelet: The Kubernetes Node Agent");
                println!("     Loaded: loaded (/lib/systemd/system/kubelet.service; enabled)");
                match (running, kubelet, since) {
                    (true, Some(pid), Some(since)) => {
                        println!("     Active: active (running) since {since:.0}");
                        println!("   Main PID: {pid} (kubelet)");
                    }
                    _ => println!("     Active: inactive (dead)"),
                }
            } else {
                println!("{}", if running { "active" } else { "inactive" });
            }
            // systemd's convention: 3 for a unit that is not running.
            Ok(std::process::ExitCode::from(if running { 0 } else { 3 }))
        }
        other => {
            eprintln!("testbed systemctl: {other:?} is not supported for the kubelet");
            Ok(std::process::ExitCode::from(1))
        }
    }
}

/// `journalctl -u kubelet [--since T] [--until T] [-n N]` on a node, in journalctl's short format.
pub fn journalctl(args: &[String]) -> Result<std::process::ExitCode> {
    let (node_dir, rest) = shim_args(args)?;
    let mut unit = None;
    let mut since = None;
    let mut until = None;
    let mut lines: Option<usize> = None;
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let mut value = || inline.clone().or_else(|| it.next().cloned());
        match flag {
            "-u" | "--unit" => unit = value(),
            "-S" | "--since" => since = Some(parse_time(&value().unwrap_or_default())?),
            "-U" | "--until" => until = Some(parse_time(&value().unwrap_or_default())?),
            "-n" | "--lines" => lines = value().and_then(|v| v.parse().ok()),
            "-o" | "--output" => {
                value();
            }
            _ if a.starts_with("-u") => unit = Some(a[2..].to_string()),
            // --no-pager, -q, --no-hostname and the like change nothing here.
            _ => {}
        }
    }
    if unit.as_deref().map(|u| u.trim_end_matches(".service")) != Some("kubelet") {
        eprintln!("testbed journalctl: only -u kubelet is kept on this node");
        return Ok(std::process::ExitCode::from(1));
    }
    let host = node_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let text = fs::read_to_string(node_dir.join("kubelet.journal")).unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let mut f = line.splitn(3, ' ');
        let (Some(ts), Some(pid), Some(msg)) = (f.next(), f.next(), f.next()) else { continue };
        let Ok(ts) = ts.parse::<jiff::Timestamp>() else { continue };
        if since.is_some_and(|s| ts < s) || until.is_some_and(|u| ts > u) {
            continue;
        }
        let local = ts.to_zoned(jiff::tz::TimeZone::system());
        out.push(format!("{} {host} kubelet[{pid}]: {msg}", local.strftime("%b %d %H:%M:%S")));
    }
    let skip = lines.map_or(0, |n| out.len().saturating_sub(n));
    let mut stdout = std::io::stdout().lock();
    for l in &out[skip..] {
        if writeln!(stdout, "{l}").is_err() {
            break;
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Splits the shim's own `--node-dir=PATH` from the user's arguments.
fn shim_args(args: &[String]) -> Result<(PathBuf, Vec<String>)> {
    let mut node_dir = None;
    let mut rest = Vec::new();
    for a in args {
        match a.strip_prefix("--node-dir=") {
            Some(d) if node_dir.is_none() => node_dir = Some(PathBuf::from(d)),
            _ => rest.push(a.clone()),
        }
    }
    Ok((node_dir.context("the shim was called without --node-dir")?, rest))
}

fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// journalctl's time forms: `YYYY-MM-DD[ HH:MM[:SS]]` (local time), RFC 3339, `now`, `today`,
/// `yesterday`, and relative `-5min`, `-2h`, `-30s`, `5 min ago`.
pub fn parse_time(s: &str) -> Result<jiff::Timestamp> {
    let s = s.trim();
    let tz = jiff::tz::TimeZone::system();
    let now = jiff::Timestamp::now();
    let today = || now.to_zoned(tz.clone()).date();
    match s {
        "now" => return Ok(now),
        "today" => return Ok(today().to_zoned(tz.clone())?.timestamp()),
        "yesterday" => return Ok(today().yesterday()?.to_zoned(tz.clone())?.timestamp()),
        _ => {}
    }
    if let Ok(ts) = s.parse::<jiff::Timestamp>() {
        return Ok(ts);
    }
    for fmt in ["%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M:%S"] {
        if let Ok(dt) = jiff::civil::DateTime::strptime(fmt, s) {
            return Ok(dt.to_zoned(tz.clone())?.timestamp());
        }
    }
    if let Ok(d) = jiff::civil::Date::strptime("%Y-%m-%d", s) {
        return Ok(d.to_zoned(tz.clone())?.timestamp());
    }
    let rel = s.strip_suffix("ago").map(str::trim).or_else(|| s.strip_prefix('-'));
    if let Some(rel) = rel {
        let digits: String = rel.chars().take_while(char::is_ascii_digit).collect();
        let unit = rel[digits.len()..].trim();
        let n: i64 = digits.parse().with_context(|| format!("cannot read time {s:?}"))?;
        let secs = match unit {
            "s" | "sec" | "secs" | "second" | "seconds" => n,
            "m" | "min" | "mins" | "minute" | "minutes" => n * 60,
            "h" | "hour" | "hours" => n * 3600,
            "d" | "day" | "days" => n * 86400,
            _ => bail!("cannot read time {s:?}: unknown unit {unit:?}"),
        };
        return Ok(now - jiff::SignedDuration::from_secs(secs));
    }
    bail!("cannot read time {s:?} (journalctl forms: \"YYYY-MM-DD HH:MM:SS\", -5min, today)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeadm_flags_are_the_words_of_the_env_file_as_systemd_passes_them() {
        let env = "# written by kubeadm\nKUBELET_KUBEADM_ARGS=\"--node-ip=127.0.0.11 --hostname-override=cp-1  --client-ca-file=/etc/kubernetes/pki/ca.crt\"\n";
        assert_eq!(
            kubeadm_args(env),
            [
                "--node-ip=127.0.0.11",
                "--hostname-override=cp-1",
                "--client-ca-file=/etc/kubernetes/pki/ca.crt"
            ]
        );
        assert!(kubeadm_args("").is_empty(), "the file is optional (EnvironmentFile=-)");
    }

    #[test]
    fn topology_names_and_addresses_follow_the_contract() {
        let t = topology(&Subnet::default(), 3, 2).unwrap();
        let got: Vec<(&str, &str, bool)> =
            t.iter().map(|n| (n.name.as_str(), n.address.as_str(), n.control_plane)).collect();
        assert_eq!(
            got,
            [
                ("cp-1", "127.0.0.11", true),
                ("cp-2", "127.0.0.12", true),
                ("cp-3", "127.0.0.13", true),
                ("w-1", "127.0.0.14", false),
                ("w-2", "127.0.0.15", false),
            ]
        );
        let other = topology(&Subnet::parse("127.0.1.0/24").unwrap(), 1, 1).unwrap();
        assert_eq!(other[0].address, "127.0.1.11");
        assert_eq!(other[1].address, "127.0.1.12");
        let err = topology(&Subnet::default(), 200, 41).unwrap_err();
        assert!(err.to_string().contains("at most 240 nodes"), "{err}");
    }

    #[test]
    fn journalctl_time_forms() {
        let now = jiff::Timestamp::now();
        let ago = |s: &str| now.duration_since(parse_time(s).unwrap()).as_secs();
        assert!((299..=301).contains(&ago("-5min")));
        assert!((7199..=7201).contains(&ago("2 h ago")));
        assert_eq!(
            parse_time("2026-11-28T15:00:00Z").unwrap(),
            "2026-11-28T15:00:00Z".parse::<jiff::Timestamp>().unwrap()
        );
        assert!(parse_time("2026-11-28 15:00:00").is_ok());
        assert!(parse_time("next tuesday").is_err());
    }

    #[test]
    fn proc_stat_reads_our_own_start_time() {
        let (start, zombie) = proc_stat(std::process::id()).unwrap();
        assert!(start > 0 && !zombie);
        assert!(alive(std::process::id(), start));
        assert!(!alive(std::process::id(), start + 1));
    }
}
