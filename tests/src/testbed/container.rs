//! The container runtime's part for API pods: every container in a mount namespace of its own,
//! with its pod's volumes bind-mounted at their `mountPath`s, as runc sets up a container's
//! mounts (`libcontainer/rootfs_linux.go`, `mountToRootfs`: a bind mount, remounted read-only
//! for a `readOnly` volume) from what the kubelet asks for (`pkg/kubelet/kubelet_pods.go`,
//! `makeMounts`).
//!
//! The kubelet runs `unshare --mount --propagation private -- kubeca-testbed container
//! --mount SRC:DST:ro|rw … -- PROGRAM ARGS`: `unshare` gives the new namespace and execs this,
//! which makes the mounts and execs the program, so the container keeps the pid the kubelet
//! started. So `/var/run/secrets/kubernetes.io/serviceaccount` inside a container is its pod's
//! projected volume, as for a real pod, and a program that reads that fixed path (client-go's
//! `rest.InClusterConfig`) reads its own pod's token and `ca.crt`.
//!
//! Unlike a real container, it keeps the node's root filesystem (and network) apart from its
//! volumes: tests/TESTBED.md lists that among the differences.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

/// The environment variable that marks a container's processes (valued the testbed's
/// directory), so the testbed finds them to stop them wherever they were reparented
/// (node/processes.rs).
pub const MARK: &str = "KUBECA_TESTBED_CONTAINER";

/// One volume mount of a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// The volume's directory on the node.
    pub source: PathBuf,
    /// Where the container sees it.
    pub target: PathBuf,
    /// Mounted read-only (`readOnly: true`, and always the service-account volume).
    pub read_only: bool,
}

impl Mount {
    /// The `--mount` argument: `SRC:DST:ro` or `SRC:DST:rw`.
    pub fn arg(&self) -> String {
        let mode = if self.read_only { "ro" } else { "rw" };
        format!("{}:{}:{mode}", self.source.display(), self.target.display())
    }

    fn parse(s: &str) -> Result<Mount> {
        let mut parts = s.rsplitn(3, ':');
        let (Some(mode), Some(target), Some(source)) = (parts.next(), parts.next(), parts.next())
        else {
            bail!("--mount {s:?}: expected SRC:DST:ro or SRC:DST:rw");
        };
        let read_only = match mode {
            "ro" => true,
            "rw" => false,
            other => bail!("--mount {s:?}: mode {other:?} is neither ro nor rw"),
        };
        Ok(Mount { source: source.into(), target: target.into(), read_only })
    }
}

/// The command line that runs `program args` as a container with `mounts`, through `unshare`.
pub fn command(exe: &Path, mounts: &[Mount], program: &Path, args: &[String]) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--"]).arg(exe).arg("container");
    for m in mounts {
        cmd.arg("--mount").arg(m.arg());
    }
    cmd.arg("--").arg(program).args(args);
    cmd
}

/// `kubeca-testbed container --mount SRC:DST:MODE … -- PROGRAM ARGS`, inside the container's
/// new mount namespace: mounts, then execs the program (returns only when that fails).
pub fn main(args: Vec<String>) -> ExitCode {
    match run(args) {
        Ok(never) => match never {},
        Err(e) => {
            eprintln!("{} container: {e:#}", jiff::Timestamp::now());
            ExitCode::from(127)
        }
    }
}

fn run(args: Vec<String>) -> Result<std::convert::Infallible> {
    let mut mounts = Vec::new();
    let mut it = args.into_iter();
    loop {
        match it.next().as_deref() {
            Some("--mount") => {
                mounts.push(Mount::parse(&it.next().context("--mount needs a value")?)?)
            }
            Some("--") => break,
            Some(other) => bail!("unexpected argument {other:?}"),
            None => bail!("no program after --"),
        }
    }
    let program = it.next().context("no program after --")?;
    for m in &mounts {
        std::fs::create_dir_all(&m.target)
            .with_context(|| format!("creating the mount point {}", m.target.display()))?;
        mount(&[std::ffi::OsStr::new("--bind"), m.source.as_os_str(), m.target.as_os_str()])?;
        if m.read_only {
            mount(&[
                std::ffi::OsStr::new("-o"),
                std::ffi::OsStr::new("remount,bind,ro"),
                m.target.as_os_str(),
            ])?;
        }
    }
    let e = Command::new(&program).args(it).exec();
    Err(e).with_context(|| format!("exec {program}"))
}

fn mount(args: &[&std::ffi::OsStr]) -> Result<()> {
    let out = Command::new("mount").args(args).output().context("running mount")?;
    if !out.status.success() {
        bail!("mount {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mount_argument_reads_back() {
        let m = Mount {
            source: "/var/lib/kubelet/pods/u/volumes/x".into(),
            target: "/var/run/secrets/kubernetes.io/serviceaccount".into(),
            read_only: true,
        };
        assert_eq!(Mount::parse(&m.arg()).unwrap(), m);
        assert!(Mount::parse("/a:/b").is_err());
        assert!(Mount::parse("/a:/b:rx").is_err());
    }
}
