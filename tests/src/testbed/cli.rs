//! Command-line entry of `kubeca-testbed`: `up`, `down`, `report`, and dispatch to the component subcommands.
//!
//! The component subcommands (`kubelet`, `kube-apiserver`, …) take their flags exactly as a
//! static pod manifest or a pod's command gives them, so they are dispatched before clap sees
//! them; `up`, `down` and `report` are the commands for people and tests.

use std::fs;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand, ValueEnum};

use super::node::{self, NodeSpec};
use super::profile::Profile;
use super::subnet::{self, Subnet};
use super::{
    apiserver, container, controller_manager, haproxy, kubelet, net, pki, pods, report, scheduler,
};

/// A local kubeadm-style HA cluster for kubeca's end-to-end tests and `make demo`.
#[derive(Parser, Debug)]
#[command(name = "kubeca-testbed", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Brings a cluster up in DIR and writes DIR/inventory.toml; waits until every node is Ready.
    ///
    /// Example: kubeca-testbed up --dir /tmp/tb --control-planes 3 --workers 2
    ///
    /// Two testbeds run side by side in two DIRs on two blocks:
    /// kubeca-testbed up --dir /tmp/tb2 --subnet 198.18.1.0/24
    Up {
        /// The testbed's directory (created when missing).
        #[arg(long)]
        dir: PathBuf,
        /// The address block in 198.18.0.0/15 (/15 to /24) the testbed listens on, on a bridge
        /// of its own: this machine at its address + 1, the load balancer at + 10, the nodes
        /// (each a network namespace) from + 11.
        #[arg(long, default_value = subnet::DEFAULT)]
        subnet: Subnet,
        /// Number of control-plane nodes (etcd members, apiservers).
        #[arg(long, default_value_t = 3)]
        control_planes: usize,
        /// Number of worker nodes.
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Which real cluster the nodes are laid out as (TESTBED.md: what each mirrors).
        #[arg(long, value_enum, default_value_t = Profile::Kubeadm)]
        profile: Profile,
        /// Private key algorithm of the initial PKI.
        #[arg(long, value_enum, default_value_t = pki::KeyAlgorithm::Rsa)]
        key: pki::KeyAlgorithm,
        /// What to wait for: every node Ready and pod running, or only sshd, etcd and haproxy.
        #[arg(long, value_enum, default_value_t = Wait::Ready)]
        wait: Wait,
        /// Seconds to wait before giving up (the testbed is left running for inspection).
        #[arg(long, default_value_t = 180)]
        timeout: u64,
    },
    /// Stops every process of the testbed in DIR, by pid; safe to run twice.
    Down {
        /// The testbed's directory.
        #[arg(long)]
        dir: PathBuf,
    },
    /// Counts the trust monitor's handshakes per edge; exits 1 on any TLS trust failure.
    Report {
        /// The testbed's directory.
        #[arg(long)]
        dir: PathBuf,
        /// Output format.
        #[arg(long, value_enum, default_value_t = Output::Text)]
        output: Output,
        /// Count only handshakes at or after this time (RFC 3339 or journalctl forms).
        #[arg(long)]
        since: Option<String>,
    },
    /// Measures the CPU used by every process of the testbed over SECONDS, in cores.
    ///
    /// Example (the idle figure of the issue): kubeca-testbed cpu --dir /tmp/tb --seconds 60
    Cpu {
        /// The testbed's directory.
        #[arg(long)]
        dir: PathBuf,
        /// How long to measure.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Stops or starts a node's sshd (stop also ends every SSH session on it): a fault for
    /// the end-to-end tests.
    ///
    /// Example: kubeca-testbed sshd --dir /tmp/tb --node w-1 stop
    Sshd {
        /// The testbed's directory.
        #[arg(long)]
        dir: PathBuf,
        /// The node.
        #[arg(long)]
        node: String,
        /// What to do.
        #[arg(value_enum)]
        action: SshdAction,
    },
    /// Internal: the supervisor of one node, started by `up` inside its namespaces.
    #[command(hide = true)]
    Node {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long)]
        name: String,
        #[arg(long)]
        address: String,
        #[arg(long)]
        subnet: Subnet,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Wait {
    /// Every node Ready and every pod running (through the API).
    Ready,
    /// sshd on every node, a healthy etcd cluster and haproxy listening.
    Infra,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SshdAction {
    /// Stop sshd and every SSH session.
    Stop,
    /// Start sshd.
    Start,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Output {
    Text,
    Json,
}

/// Parses the command line and runs it; the process's exit code.
pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if let Some(sub) = args.get(1) {
        let rest = args[2..].to_vec();
        // Programs started from manifests and shims: their flags are not ours to parse.
        let component: Option<fn(Vec<String>) -> ExitCode> = match sub.as_str() {
            "kubelet" => Some(kubelet::main),
            "kube-apiserver" => Some(apiserver::main),
            "kube-controller-manager" => Some(controller_manager::main),
            "kube-scheduler" => Some(scheduler::main),
            "coredns" => Some(pods::coredns_main),
            "kube-proxy" => Some(pods::kube_proxy_main),
            "metrics-server" => Some(pods::metrics_server_main),
            "container" => Some(container::main),
            "systemctl" => Some(|a| shim(node::systemctl(&a))),
            "journalctl" => Some(|a| shim(node::journalctl(&a))),
            _ => None,
        };
        if let Some(run) = component {
            return run(rest);
        }
    }
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("kubeca-testbed: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn shim(r: Result<ExitCode>) -> ExitCode {
    r.unwrap_or_else(|e| {
        eprintln!("{e:#}");
        ExitCode::FAILURE
    })
}

fn run(cmd: Cmd) -> Result<ExitCode> {
    match cmd {
        Cmd::Up { dir, subnet, control_planes, workers, profile, key, wait, timeout } => {
            if control_planes == 0 || control_planes + workers > subnet::MAX_NODES {
                // The first and last node addresses of the block, for the message.
                let first = subnet.node(0).map(|a| a.to_string()).unwrap_or_default();
                let last =
                    subnet.node(subnet::MAX_NODES - 1).map(|a| a.to_string()).unwrap_or_default();
                bail!(
                    "--control-planes must be at least 1 and the nodes at most {} ({first}-{last} \
                     in {subnet})",
                    subnet::MAX_NODES
                );
            }
            let started = Instant::now();
            let spec = Spec { subnet, control_planes, workers, profile, key };
            let dir = up(&dir, &spec, wait, Duration::from_secs(timeout))?;
            println!(
                "testbed up in {:.1}s: {control_planes} control planes + {workers} workers \
                 ({profile} profile) on {subnet} (load balancer {}); inventory {}/inventory.toml, kubeconfig {}/admin.conf",
                started.elapsed().as_secs_f64(),
                subnet.lb_endpoint(),
                dir.display(),
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Down { dir } => {
            down(&dir)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Sshd { dir, node, action } => {
            node::sshd(&dir, &node, action == SshdAction::Start)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Report { dir, output, since } => {
            let since = since.map(|s| node::parse_time(&s)).transpose()?;
            let r = report::build(&dir, since)?;
            match output {
                Output::Text => print!("{}", report::render_text(&r)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&r)?),
            }
            Ok(if r.trust_failures > 0 { ExitCode::FAILURE } else { ExitCode::SUCCESS })
        }
        Cmd::Cpu { dir, seconds } => {
            let dir = dir.canonicalize().with_context(|| format!("resolving {}", dir.display()))?;
            let (cores, processes) = node::cpu_use(&dir, Duration::from_secs(seconds))?;
            println!(
                "{cores:.3} cores over {seconds}s ({:.1}% of one core), {processes} processes",
                cores * 100.0
            );
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Node { dir, name, address, subnet } => {
            node::supervise(&dir, &name, &address, &subnet)?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Files and directories of a previous testbed in DIR that `up` makes anew.
const MADE_BY_UP: [&str; 11] = [
    "nodes",
    "openssl",
    "haproxy",
    "pids",
    "handshakes.jsonl",
    "inventory.toml",
    "admin.conf",
    "known_hosts",
    "authorized_keys",
    "id_ed25519",
    "id_ed25519.pub",
];

/// What `up` makes: the address block, the nodes, their layout, the key algorithm.
struct Spec {
    subnet: Subnet,
    control_planes: usize,
    workers: usize,
    profile: Profile,
    key: pki::KeyAlgorithm,
}

fn up(dir: &Path, spec: &Spec, wait: Wait, timeout: Duration) -> Result<PathBuf> {
    let subnet = &spec.subnet;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let dir = dir.canonicalize().with_context(|| format!("resolving {}", dir.display()))?;
    let live = node::running(&dir);
    if !live.is_empty() {
        let pids: Vec<String> = live.iter().map(|(p, r)| format!("{p} ({r})")).collect();
        bail!(
            "the testbed in {} is already up: running pids {}; run `kubeca-testbed down --dir {}` first",
            dir.display(),
            pids.join(", "),
            dir.display()
        );
    }
    // Another testbed (in another DIR) on the same block would answer in place of this one:
    // its bridge has the nodes' links on it. (Connecting to the addresses proves nothing while
    // the bridge is absent: the block would then follow this machine's default route.)
    let nodes = node::topology(subnet, spec.control_planes, spec.workers)?;
    if let Some(links) = net::bridge_in_use(subnet) {
        bail!(
            "{subnet} is in use: bridge {} links {links} running nodes (another testbed? \
             `kubeca-testbed down --dir` it first, or give this one another --subnet)",
            subnet.bridge()
        );
    }
    for stale in MADE_BY_UP {
        let p = dir.join(stale);
        if p.is_dir() {
            fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
        } else if p.exists() {
            fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    let exe = std::env::current_exe().context("finding the kubeca-testbed binary")?;
    pki::generate(&dir, subnet, &nodes, spec.key, spec.profile)?;
    node::prepare(&dir, &nodes, &exe)?;
    let admin = node::node_dir(&dir, "cp-1").join("etc-kubernetes/admin.conf");
    fs::copy(&admin, dir.join("admin.conf")).context("copying admin.conf to DIR")?;
    write_inventory(&dir, subnet, &nodes)?;
    net::bridge_up(&dir, subnet)?;
    haproxy::start(&dir, subnet, &nodes)?;
    for (i, n) in nodes.iter().enumerate() {
        node::start(&dir, subnet, i, n, &exe)?;
    }

    let deadline = Instant::now() + timeout;
    let hint = || {
        format!(
            "{}the testbed is left running for inspection (logs: {d}/nodes/<node>/kubelet.journal, \
             {d}/nodes/<node>/var-log-pods/); stop it with `kubeca-testbed down --dir {d}`",
            failing_static_pods(&dir, &nodes),
            d = dir.display()
        )
    };
    wait_for("sshd on every node", deadline, || {
        Ok(nodes.iter().all(|n| TcpStream::connect((n.address.as_str(), 22)).is_ok()))
    })
    .with_context(hint)?;
    let etcd_pki = spec.profile.pki_dir().to_string() + "/etcd";
    wait_for("a healthy etcd cluster", deadline, || etcd_healthy(&dir, &nodes, &etcd_pki))
        .with_context(hint)?;
    wait_for("haproxy", deadline, || Ok(TcpStream::connect(subnet.lb_endpoint()).is_ok()))
        .with_context(hint)?;
    if wait == Wait::Ready {
        wait_for("every node Ready and every pod running", deadline, || {
            cluster_ready(&dir, nodes.len())
        })
        .with_context(hint)?;
    }
    Ok(dir)
}

/// The static pods that are not running, each with the last lines of its log, for the error
/// of an `up` that timed out.
fn failing_static_pods(dir: &Path, nodes: &[NodeSpec]) -> String {
    let mut s = String::new();
    for n in nodes {
        let root = node::node_dir(dir, &n.name);
        let Ok(entries) = fs::read_dir(root.join("run/kubelet/static-pods")) else { continue };
        for e in entries.flatten() {
            let Ok(text) = fs::read_to_string(e.path()) else { continue };
            let Ok(st) = serde_json::from_str::<kubelet::StaticPodState>(&text) else { continue };
            if st.phase == "Running" {
                continue;
            }
            let log = root
                .join("var-log-pods")
                .join(format!("kube-system_{}_{}", st.pod, st.uid))
                .join(&st.container)
                .join("0.log");
            let text = fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(3).collect();
            s.push_str(&format!(
                "static pod {} is {} (restarts {}); last lines of {}:\n    {}\n",
                st.pod,
                st.phase,
                st.restart_count,
                log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n    ")
            ));
        }
    }
    s
}

/// Polls `ready` every 250 ms until it says yes or `deadline` passes.
fn wait_for(what: &str, deadline: Instant, mut ready: impl FnMut() -> Result<bool>) -> Result<()> {
    let mut last_err = None;
    loop {
        match ready() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_err = Some(e),
        }
        if Instant::now() >= deadline {
            return match last_err {
                Some(e) => Err(e.context(format!("timed out waiting for {what}"))),
                None => bail!("timed out waiting for {what}"),
            };
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `etcdctl endpoint health` over every member with cp-1's healthcheck client certificate,
/// from `etcd_pki` (the node's path of its etcd certificates).
fn etcd_healthy(dir: &Path, nodes: &[NodeSpec], etcd_pki: &str) -> Result<bool> {
    let rel =
        etcd_pki.strip_prefix("/etc/kubernetes/").context("etcd's pki outside /etc/kubernetes")?;
    let pki = node::node_dir(dir, "cp-1").join("etc-kubernetes").join(rel);
    let endpoints: Vec<String> = nodes
        .iter()
        .filter(|n| n.control_plane)
        .map(|n| format!("https://{}:2379", n.address))
        .collect();
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .arg(format!("--cacert={}", pki.join("ca.crt").display()))
        .arg(format!("--cert={}", pki.join("healthcheck-client.crt").display()))
        .arg(format!("--key={}", pki.join("healthcheck-client.key").display()))
        .args(["--dial-timeout=2s", "--command-timeout=3s", "endpoint", "health"])
        .output()
        .context("running etcdctl (install etcd-client: scripts/setup.sh)")?;
    Ok(out.status.success())
}

/// Every node Ready and every pod Running, by `kubectl --kubeconfig DIR/admin.conf`.
fn cluster_ready(dir: &Path, node_count: usize) -> Result<bool> {
    let kubectl = |args: &[&str]| -> Result<serde_json::Value> {
        let out = Command::new("kubectl")
            .arg(format!("--kubeconfig={}", dir.join("admin.conf").display()))
            .arg("--request-timeout=5s")
            .args(args)
            .args(["-o", "json"])
            .output()
            .context("running kubectl")?;
        if !out.status.success() {
            // kubectl repeats its error once per retry; the last line says it.
            let err = String::from_utf8_lossy(&out.stderr);
            bail!("kubectl {}: {}", args.join(" "), err.trim().lines().last().unwrap_or(""));
        }
        serde_json::from_slice(&out.stdout).context("kubectl printed no JSON")
    };
    let nodes = kubectl(&["get", "nodes"])?;
    let items = nodes["items"].as_array().cloned().unwrap_or_default();
    let ready = items
        .iter()
        .filter(|n| {
            n["status"]["conditions"]
                .as_array()
                .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
        })
        .count();
    if ready < node_count {
        return Ok(false);
    }
    let pods = kubectl(&["get", "pods", "--all-namespaces"])?;
    let items = pods["items"].as_array().cloned().unwrap_or_default();
    // kube-proxy is a DaemonSet: one pod per node, so its count says every node runs pods.
    let proxies = items
        .iter()
        .filter(|p| p["metadata"]["name"].as_str().is_some_and(|n| n.starts_with("kube-proxy-")))
        .count();
    let ready = |p: &serde_json::Value| {
        p["status"]["phase"] == "Running"
            && p["status"]["conditions"]
                .as_array()
                .is_none_or(|c| !c.iter().any(|c| c["type"] == "Ready" && c["status"] != "True"))
    };
    Ok(proxies >= node_count && items.iter().all(ready))
}

/// DIR/inventory.toml in the format of kubeca's inventory (README.md, "Inventory").
fn write_inventory(dir: &Path, subnet: &Subnet, nodes: &[NodeSpec]) -> Result<()> {
    let d = dir.display();
    let lb = subnet.lb_endpoint();
    let mut s = format!(
        "# kubeca inventory of the testbed in {d} on {subnet} (written by kubeca-testbed up)\n\
         [cluster]\nname = \"kubeca-testbed\"\nkubeconfig = \"{d}/admin.conf\"\n\
         api_endpoint = \"https://{lb}\"\n\n\
         [ssh]\nuser = \"root\"\nidentity = \"{d}/id_ed25519\"\nknown_hosts = \"{d}/known_hosts\"\n\
         sudo = false\nconcurrency = 10\n"
    );
    for n in nodes {
        let role = if n.control_plane { "control-plane" } else { "worker" };
        s.push_str(&format!(
            "\n[[nodes]]\nname = \"{}\"\naddress = \"{}\"\nroles = [\"{role}\"]\n",
            n.name, n.address
        ));
    }
    s.push_str(
        "\n[rotation]\nnew_ca = \"generate\"\nkey_algorithm = \"same-as-old\"\n\
         validity_days = 3650\nmax_unavailable_workers = 1\n",
    );
    let path = dir.join("inventory.toml");
    fs::write(&path, s).with_context(|| format!("writing {}", path.display()))
}

fn down(dir: &Path) -> Result<()> {
    if !dir.exists() {
        println!("nothing to stop: {} does not exist", dir.display());
        return Ok(());
    }
    let dir = dir.canonicalize().with_context(|| format!("resolving {}", dir.display()))?;
    // Three seconds of grace: enough for every component to exit on SIGTERM, except the last
    // etcd member, which waits for peers that are already gone; it gets SIGKILL.
    let stopped = node::stop_all(&dir, Duration::from_secs(3))?;
    // Node mounts live in private namespaces and vanish with their last process; anything
    // still mounted on the host under DIR is a leak to clean up.
    for target in node::host_mounts_under(&dir) {
        let out = Command::new("umount").arg("--lazy").arg(&target).output()?;
        if !out.status.success() {
            bail!("umount {target}: {}", String::from_utf8_lossy(&out.stderr).trim());
        }
    }
    // The nodes' namespaces and veth pairs went with their last processes; the bridge is the
    // host's.
    net::bridge_down(&dir)?;
    if stopped.is_empty() {
        println!("nothing running in {}", dir.display());
    } else {
        println!("stopped {} processes of the testbed in {}", stopped.len(), dir.display());
    }
    Ok(())
}
