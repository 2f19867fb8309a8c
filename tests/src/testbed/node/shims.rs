//! The shims of a node: its `systemctl` and `journalctl`, for the kubelet unit only, answered from the supervisor's pid files and the kubelet's journal.

use std::fs;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rustix::process::Signal;

use super::processes::{proc_stat, read_pid, to_pid};

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
}
