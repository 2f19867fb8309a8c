//! The real haproxy load balancer in TCP mode over the apiservers.
//!
//! Set up as kubeadm's HA guide does (`ha-considerations.md`): a TCP frontend on the
//! control-plane endpoint, round robin over every apiserver, health checks. The check is a plain
//! TCP connect (`option tcp-check`): it needs no client certificate and no trust in the
//! apiserver's serving certificate, so it keeps working across the CA rotation; an apiserver
//! that is down refuses the connect and is taken out within two seconds, and `option redispatch`
//! sends a refused connection to another apiserver at once.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use super::node::{NodeSpec, record_pid};
use super::subnet::Subnet;

/// Writes `DIR/haproxy/haproxy.cfg`: the load balancer of `subnet` over the control planes of
/// `nodes`.
pub fn write_config(dir: &Path, subnet: &Subnet, nodes: &[NodeSpec]) -> Result<std::path::PathBuf> {
    let hdir = dir.join("haproxy");
    fs::create_dir_all(&hdir).with_context(|| format!("creating {}", hdir.display()))?;
    let lb = subnet.lb_endpoint();
    let mut cfg = format!(
        "# kubeca testbed: the control-plane endpoint {lb} (kubeadm HA guide, TCP mode)
global
    nbthread 1
    maxconn 4000
    pidfile {pid}

defaults
    mode tcp
    log global
    option tcplog
    option dontlognull
    retries 3
    option redispatch
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    timeout check 2s

frontend apiserver
    bind {lb}
    default_backend apiservers

backend apiservers
    balance roundrobin
    option tcp-check
    default-server inter 1s fall 2 rise 1
",
        pid = hdir.join("haproxy.pid").display(),
    );
    for n in nodes.iter().filter(|n| n.control_plane) {
        cfg.push_str(&format!("    server {} {}:6443 check\n", n.name, n.address));
    }
    let path = hdir.join("haproxy.cfg");
    fs::write(&path, cfg).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Checks the configuration and starts haproxy in the foreground of its own process group,
/// its output in `DIR/haproxy/haproxy.log`; records its pid in `DIR/pids`.
pub fn start(dir: &Path, subnet: &Subnet, nodes: &[NodeSpec]) -> Result<u32> {
    let cfg = write_config(dir, subnet, nodes)?;
    let check = Command::new("haproxy")
        .arg("-c")
        .arg("-q")
        .arg("-f")
        .arg(&cfg)
        .output()
        .context("running haproxy (install the haproxy package: scripts/setup.sh)")?;
    if !check.status.success() {
        anyhow::bail!(
            "haproxy rejects {}: {}",
            cfg.display(),
            String::from_utf8_lossy(&check.stderr).trim()
        );
    }
    let log = fs::File::create(dir.join("haproxy/haproxy.log"))?;
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting haproxy")?;
    let pid = child.id();
    record_pid(dir, pid, "haproxy")?;
    Ok(pid)
}
