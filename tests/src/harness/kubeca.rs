//! The kubeca command as an operator types it, on one state directory: run to its end,
//! killed when a log line says so, or watched line by line; its CPU time and everything it
//! printed are kept for the checks.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::Duration;

use super::testbed::Testbed;
use super::tools::text;

/// The kubeca binary, built next to the testbed's by `cargo test --workspace` (`make test`).
pub fn kubeca_bin() -> PathBuf {
    super::bin("kubeca")
}

/// CPU seconds (user + system) used by this process's waited-for children so far.
pub fn children_cpu() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 16 and 17 of stat (cutime, cstime), counted from field 3 here.
    let ticks: u64 = f[13].parse::<u64>().unwrap() + f[14].parse::<u64>().unwrap();
    ticks as f64 / rustix::param::clock_ticks_per_second() as f64
}

/// One rotation's state directory and the kubeca command on it; counts kubeca's CPU time.
pub struct Kubeca {
    /// The state directory.
    pub state: PathBuf,
    /// CPU seconds kubeca used (every invocation through this value).
    pub cpu: f64,
    /// Everything kubeca printed (stdout and stderr of every invocation): log lines, errors,
    /// reports; searched for key material.
    pub said: String,
}

impl Kubeca {
    /// A fresh state directory under the testbed's.
    pub fn new(tb: &Testbed, name: &str) -> Kubeca {
        let state = tb.dir.join("kubeca").join(name);
        let _ = std::fs::remove_dir_all(&state);
        std::fs::create_dir_all(state.parent().unwrap()).unwrap();
        Kubeca { state, cpu: 0.0, said: String::new() }
    }

    /// On the state directory `state` (its parent must exist).
    pub fn at(state: PathBuf) -> Kubeca {
        Kubeca { state, cpu: 0.0, said: String::new() }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(kubeca_bin());
        c.arg("--state-dir").arg(&self.state).arg("--log-format=json").args(args);
        c
    }

    /// Runs `kubeca ARGS` to its end.
    pub fn run(&mut self, args: &[&str]) -> Output {
        let before = children_cpu();
        let out = self.command(args).output().unwrap();
        self.cpu += children_cpu() - before;
        self.said.push_str(&text(&out));
        eprintln!("kubeca {} -> {:?}", args.join(" "), out.status.code());
        out
    }

    /// Runs `kubeca ARGS`, asserting its exit code.
    pub fn expect(&mut self, args: &[&str], code: i32) -> Output {
        let out = self.run(args);
        assert_eq!(out.status.code(), Some(code), "kubeca {args:?}: {}", tail(&out));
        out
    }

    /// Runs `kubeca ARGS` and SIGKILLs it once `trigger` accepts one of its JSON log lines (after
    /// the delay the trigger returns). The exit status, and whether the kill happened.
    pub fn run_killed_when(
        &mut self,
        args: &[&str],
        mut trigger: impl FnMut(&serde_json::Value) -> Option<Duration>,
    ) -> (ExitStatus, bool) {
        let before = children_cpu();
        let mut child =
            self.command(args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut killed = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            self.said.push_str(&line);
            self.said.push('\n');
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            if let Some(delay) = trigger(&v) {
                std::thread::sleep(delay);
                let _ = child.kill(); // SIGKILL
                killed = true;
                eprintln!(
                    "SIGKILL kubeca {} {:?} after {delay:?} at: {line}",
                    args.join(" "),
                    child.id()
                );
                break;
            }
        }
        let status = child.wait().unwrap();
        self.cpu += children_cpu() - before;
        (status, killed)
    }

    /// Runs `kubeca ARGS` to its end, handing each of its JSON log lines to `watch` as it comes,
    /// with kubeca's pid (to stop it and inject a fault at a step); its output.
    pub fn run_watching(
        &mut self,
        args: &[&str],
        mut watch: impl FnMut(&serde_json::Value, u32),
    ) -> Output {
        let before = children_cpu();
        let mut child =
            self.command(args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = std::io::Read::read_to_end(&mut { stdout }, &mut out);
            out
        });
        let mut stderr = Vec::new();
        for line in BufReader::new(child.stderr.take().unwrap()).lines() {
            let Ok(line) = line else { break };
            stderr.extend_from_slice(line.as_bytes());
            stderr.push(b'\n');
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                watch(&v, child.id());
            }
        }
        let status = child.wait().unwrap();
        let out = Output { status, stdout: reader.join().unwrap(), stderr };
        self.cpu += children_cpu() - before;
        self.said.push_str(&text(&out));
        eprintln!("kubeca {} -> {:?}", args.join(" "), out.status.code());
        out
    }

    /// After a SIGKILL: the journal verifies, and the stale lock the killed kubeca left is
    /// reported with its id and cleared by it (`journal unlock --lock-id ID`).
    pub fn after_kill(&mut self) {
        let out = self.run(&["journal", "verify"]);
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if let Some(rest) = all.split("lock id ").nth(1) {
            let id: String = rest.chars().take_while(char::is_ascii_alphanumeric).collect();
            assert!(all.contains("stale"), "a lock after a kill must be reported as stale: {all}");
            self.expect(&["journal", "unlock", "--lock-id", &id], 0);
            self.expect(&["journal", "verify"], 0);
        } else {
            assert!(out.status.success(), "journal verify after a kill: {}", tail(&out));
        }
    }
}

/// The last lines of a command's output, for assertion messages.
pub fn tail(out: &Output) -> String {
    let t = text(out);
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The field of a JSON log line: tracing's JSON puts the message and fields under "fields".
pub fn field<'a>(v: &'a serde_json::Value, k: &str) -> Option<&'a str> {
    v["fields"][k].as_str().or(v[k].as_str())
}
