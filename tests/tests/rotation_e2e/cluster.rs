//! What the end-to-end tests look at: the kubeca command, the nodes' files, the live cluster
//! through TLS (openssl, kubectl), and the trust monitor's report.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use crate::testbed::util::{TESTBED, Testbed, text};

/// The kubeca binary, built next to the testbed's by `cargo test --workspace` (`make test`).
pub fn kubeca_bin() -> PathBuf {
    let bin = Path::new(TESTBED).with_file_name("kubeca");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p kubeca` (make test builds the whole workspace)",
        bin.display()
    );
    bin
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
}

impl Kubeca {
    /// A fresh state directory under the testbed's.
    pub fn new(tb: &Testbed, name: &str) -> Kubeca {
        let state = tb.dir.join("kubeca").join(name);
        let _ = std::fs::remove_dir_all(&state);
        std::fs::create_dir_all(state.parent().unwrap()).unwrap();
        Kubeca { state, cpu: 0.0 }
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
        let mut child = self.command(args).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let mut killed = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else { continue };
            if let Some(delay) = trigger(&v) {
                std::thread::sleep(delay);
                let _ = child.kill(); // SIGKILL
                killed = true;
                eprintln!("SIGKILL kubeca {} {:?} after {delay:?} at: {line}", args.join(" "), child.id());
                break;
            }
        }
        let status = child.wait().unwrap();
        self.cpu += children_cpu() - before;
        (status, killed)
    }

    /// After a SIGKILL: the journal verifies, and the stale lock the killed kubeca left is
    /// reported with its id and cleared by it (`journal unlock --lock-id ID`).
    pub fn after_kill(&mut self) {
        let out = self.run(&["journal", "verify"]);
        let all = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
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

/// The trust monitor's report since `since`: (handshakes, TLS trust failures, the text).
pub fn report_since(tb: &Testbed, since: &str) -> (u64, u64, String) {
    let out = Command::new(TESTBED)
        .args(["report", "--output", "json", "--since", since, "--dir"])
        .arg(&tb.dir)
        .output()
        .unwrap();
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let failures: u64 = r["outcomes"]
        .as_object()
        .map(|o| o.iter().filter(|(k, _)| k.starts_with("tls-")).filter_map(|(_, v)| v.as_u64()).sum())
        .unwrap_or(0);
    let total: u64 =
        r["outcomes"].as_object().map(|o| o.values().filter_map(|v| v.as_u64()).sum()).unwrap_or(0);
    let human = Command::new(TESTBED)
        .args(["report", "--since", since, "--dir"])
        .arg(&tb.dir)
        .output()
        .unwrap();
    (total, failures, String::from_utf8_lossy(&human.stdout).into_owned())
}

/// Every file of a node that a rotation may touch, with its mode: all of /etc/kubernetes, and
/// the kubelet's config and PKI (not the pods' volumes, which the kubelet rewrites itself).
pub type Snapshot = BTreeMap<PathBuf, (Vec<u8>, u32)>;

/// The files of every node (host paths), as [`Snapshot`] describes, and the operator's
/// kubeconfig (the inventory's), which kubeca rewrites too.
pub fn snapshot(tb: &Testbed) -> Snapshot {
    let mut out = BTreeMap::new();
    collect(&tb.dir.join("admin.conf"), &mut out);
    for (name, _, _) in &tb.nodes {
        for rel in ["etc-kubernetes", "var-lib-kubelet/pki", "var-lib-kubelet/config.yaml", "var-lib-kubelet/kubeadm-flags.env"] {
            collect(&tb.node_path(name, rel), &mut out);
        }
    }
    out
}

/// Every file under `dir` (host path), as [`Snapshot`] describes.
pub fn snapshot_dir(dir: &Path) -> Snapshot {
    let mut out = BTreeMap::new();
    collect(dir, &mut out);
    out
}

fn collect(p: &Path, out: &mut Snapshot) {
    let Ok(meta) = std::fs::symlink_metadata(p) else { return };
    if meta.is_dir() {
        for e in std::fs::read_dir(p).unwrap().flatten() {
            collect(&e.path(), out);
        }
    } else if meta.file_type().is_symlink() {
        let target = std::fs::read_link(p).unwrap();
        out.insert(p.to_path_buf(), (target.as_os_str().as_encoded_bytes().to_vec(), 0o120000));
    } else {
        out.insert(p.to_path_buf(), (std::fs::read(p).unwrap(), meta.permissions().mode() & 0o7777));
    }
}

/// The differences between two snapshots, one line each.
pub fn differences(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    let mut d = Vec::new();
    for (p, (bytes, mode)) in before {
        match after.get(p) {
            None => d.push(format!("{}: removed", p.display())),
            Some((b, _)) if b != bytes => d.push(format!("{}: content differs", p.display())),
            Some((_, m)) if m != mode => d.push(format!("{}: mode {m:o}, was {mode:o}", p.display())),
            _ => {}
        }
    }
    for p in after.keys().filter(|p| !before.contains_key(*p)) {
        d.push(format!("{}: left behind", p.display()));
    }
    d
}

/// Runs a shell command, returning its output.
pub fn sh(script: &str) -> Output {
    Command::new("sh").arg("-c").arg(script).output().unwrap()
}

/// The DER certificate a TLS server presents (openssl s_client), hex of its SHA-256.
pub fn served_cert(address: &str, port: u16) -> String {
    let out = sh(&format!(
        "openssl s_client -connect {address}:{port} </dev/null 2>/dev/null | openssl x509 -outform DER | sha256sum"
    ));
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or("").to_string()
}

/// SHA-256 of the DER of the first certificate in a PEM file.
pub fn file_cert(path: &Path) -> String {
    let out = sh(&format!("openssl x509 -in '{}' -outform DER | sha256sum", path.display()));
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or("").to_string()
}

/// `kubectl --kubeconfig CONF ARGS`.
pub fn kubectl(conf: &Path, args: &[&str]) -> Output {
    Command::new("kubectl")
        .arg(format!("--kubeconfig={}", conf.display()))
        .arg("--request-timeout=10s")
        .args(args)
        .output()
        .unwrap()
}

/// Like [`kubectl`], asserting success; its stdout.
pub fn kubectl_ok(conf: &Path, args: &[&str]) -> String {
    let out = kubectl(conf, args);
    assert!(out.status.success(), "kubectl --kubeconfig {} {args:?}: {}", conf.display(), text(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The base64 bodies of the certificates in a PEM text (what a file holding them contains).
pub fn pem_bodies(pem: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for l in pem.lines() {
        if l.starts_with("-----BEGIN CERTIFICATE") {
            cur = Some(String::new());
        } else if l.starts_with("-----END CERTIFICATE") {
            out.extend(cur.take());
        } else if let Some(c) = cur.as_mut() {
            c.push_str(l.trim());
        }
    }
    out
}

/// Whether `haystack` (a file's bytes) holds the certificate whose PEM body is `body`: as PEM
/// text, or base64-encoded once more inside a kubeconfig's `*-data`.
pub fn holds_cert(haystack: &[u8], pem: &str) -> bool {
    use base64::Engine as _;
    let text = String::from_utf8_lossy(haystack);
    let flat: String = text.lines().map(str::trim).collect();
    let body = pem_bodies(pem).into_iter().next().unwrap();
    if flat.contains(&body[..64]) {
        return true;
    }
    // kubeconfig data: base64 of the PEM; decode every long base64 token and look inside.
    text.split_whitespace()
        .filter(|t| t.len() > 200)
        .filter_map(|t| base64::engine::general_purpose::STANDARD.decode(t).ok())
        .any(|d| {
            let inner: String = String::from_utf8_lossy(&d).lines().map(str::trim).collect();
            inner.contains(&body[..64])
        })
}

/// Waits for `what`, polling every second; panics after `timeout`.
pub fn eventually(what: &str, timeout: Duration, mut cond: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + timeout;
    loop {
        match cond() {
            Ok(()) => return,
            Err(e) if Instant::now() >= deadline => panic!("timed out after {timeout:?} waiting for {what}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}
