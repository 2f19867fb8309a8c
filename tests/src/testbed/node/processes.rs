//! Process bookkeeping: the pids in `DIR/pids` and every process in a node's mount namespace, liveness that a reused pid or a zombie does not fool, what the testbed's processes cost, and stopping them all.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rustix::process::{Pid, Signal};

pub(crate) fn to_pid(pid: u32) -> Option<Pid> {
    Pid::from_raw(i32::try_from(pid).ok()?)
}

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
        // A pod's container runs in a mount namespace of its own, and may have been reparented
        // anywhere once its node's supervisor is gone: it carries the container mark instead.
        let mark = {
            let mut m = format!("{}=", super::super::container::MARK).into_bytes();
            m.extend_from_slice(dir.as_os_str().as_encoded_bytes());
            m
        };
        for pid in all_pids() {
            if pid == me || found.contains_key(&pid) || !matches!(proc_stat(pid), Some((_, false)))
            {
                continue;
            }
            if let Ok(meta) = fs::metadata(format!("/proc/{pid}/ns/mnt"))
                && let Some(node) = namespaces.get(&meta.ino())
            {
                found.insert(pid, format!("{} on node {node}", program_name(pid)));
            } else if fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == mark.as_slice()))
            {
                found.insert(pid, format!("{} in a container", program_name(pid)));
            }
        }
    }
    found.into_iter().collect()
}

/// What a process runs: `etcd`, `sshd`, or the subcommand of `kubeca-testbed` (`kubelet`, …).
pub(super) fn program_name(pid: u32) -> String {
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

pub(super) fn all_pids() -> Vec<u32> {
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

pub(super) fn read_pid(path: &Path) -> Option<u32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_reads_our_own_start_time() {
        let (start, zombie) = proc_stat(std::process::id()).unwrap();
        assert!(start > 0 && !zombie);
        assert!(alive(std::process::id(), start));
        assert!(!alive(std::process::id(), start + 1));
    }
}
