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
        .map(|o| {
            o.iter().filter(|(k, _)| k.starts_with("tls-")).filter_map(|(_, v)| v.as_u64()).sum()
        })
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
        for rel in [
            "etc-kubernetes",
            "var-lib-kubelet/pki",
            "var-lib-kubelet/config.yaml",
            "var-lib-kubelet/kubeadm-flags.env",
        ] {
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
        out.insert(
            p.to_path_buf(),
            (std::fs::read(p).unwrap(), meta.permissions().mode() & 0o7777),
        );
    }
}

/// The differences between two snapshots, one line each.
pub fn differences(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    let mut d = Vec::new();
    for (p, (bytes, mode)) in before {
        match after.get(p) {
            None => d.push(format!("{}: removed", p.display())),
            Some((b, _)) if b != bytes => d.push(format!("{}: content differs", p.display())),
            Some((_, m)) if m != mode => {
                d.push(format!("{}: mode {m:o}, was {mode:o}", p.display()))
            }
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
    assert!(
        out.status.success(),
        "kubectl --kubeconfig {} {args:?}: {}",
        conf.display(),
        text(&out)
    );
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
            Err(e) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}: {e}")
            }
            Err(_) => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

/// Every distinct argument list (`/proc/*/cmdline`) seen on the machine while it runs, sampled
/// every 50 ms: to show that no private key is ever passed on a command line.
pub struct CmdlineSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<(std::collections::BTreeSet<String>, u64)>,
}

impl CmdlineSampler {
    /// Starts sampling.
    pub fn start() -> CmdlineSampler {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut seen = std::collections::BTreeSet::new();
            let mut rounds = 0;
            while !flag.load(Ordering::Relaxed) {
                rounds += 1;
                for e in std::fs::read_dir("/proc").unwrap().flatten() {
                    if e.file_name().to_str().is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
                        && let Ok(c) = std::fs::read(e.path().join("cmdline"))
                        && !c.is_empty()
                    {
                        seen.insert(String::from_utf8_lossy(&c).replace('\0', " "));
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            (seen, rounds)
        });
        CmdlineSampler { stop, handle }
    }

    /// Stops sampling: the distinct argument lists seen, and how many samples were taken.
    pub fn stop(self) -> (std::collections::BTreeSet<String>, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}

/// Pieces of every private key in the files under `roots` (PEM bodies, and the base64 of
/// kubeconfigs' `client-key-data`): what must never show up in a log, an export, an error or a
/// command line. Each piece is 40 characters from the middle of a key.
pub fn private_key_pieces(roots: &[PathBuf]) -> Vec<String> {
    let mut pieces = std::collections::BTreeSet::new();
    for root in roots {
        for (path, (bytes, _)) in snapshot_dir(root) {
            let text = String::from_utf8_lossy(&bytes);
            let mut body: Option<String> = None;
            for line in text.lines() {
                let l = line.trim();
                if l.starts_with("-----BEGIN") && l.contains("PRIVATE KEY") {
                    body = Some(String::new());
                } else if l.starts_with("-----END") {
                    if let Some(b) = body.take()
                        && b.len() > 120
                    {
                        pieces.insert(b[60..100].to_string());
                    }
                } else if let Some(b) = body.as_mut() {
                    b.push_str(l);
                } else if let Some(v) = l.strip_prefix("client-key-data:") {
                    let v = v.trim();
                    if v.len() > 120 {
                        pieces.insert(v[60..100].to_string());
                    }
                }
            }
            let _ = path;
        }
    }
    pieces.into_iter().collect()
}

/// The places among `texts` (name, text) that hold a private key: the PEM marker or any of
/// `pieces`.
pub fn key_material_in(texts: &[(String, String)], pieces: &[String]) -> Vec<String> {
    let mut found = Vec::new();
    for (name, text) in texts {
        if text.contains("PRIVATE KEY") {
            found.push(format!("{name}: a PEM private key"));
        }
        if let Some(p) = pieces.iter().find(|p| text.contains(p.as_str())) {
            found.push(format!("{name}: a piece of a private key ({p})"));
        }
    }
    found
}

/// Health of every etcd member sampled every 500 ms (`GET /health` with the member's
/// healthcheck-client certificate, as kubeadm's probe does): to show quorum is never lost.
pub struct EtcdWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: std::thread::JoinHandle<Vec<Vec<bool>>>,
}

impl EtcdWatch {
    /// Starts sampling the members of the control planes of `tb`.
    pub fn start(tb: &Testbed) -> EtcdWatch {
        use std::sync::atomic::Ordering;
        let members: Vec<(String, PathBuf)> = tb
            .nodes
            .iter()
            .filter(|n| n.2)
            .map(|(name, address, _)| {
                (address.clone(), tb.node_path(name, "etc-kubernetes/pki/etcd"))
            })
            .collect();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !flag.load(Ordering::Relaxed) {
                let health: Vec<bool> = members
                    .iter()
                    .map(|(address, pki)| {
                        let out = Command::new("curl")
                            .args(["-s", "--max-time", "2", "--cacert"])
                            .arg(pki.join("ca.crt"))
                            .arg("--cert")
                            .arg(pki.join("healthcheck-client.crt"))
                            .arg("--key")
                            .arg(pki.join("healthcheck-client.key"))
                            .arg(format!("https://{address}:2379/health"))
                            .output();
                        out.is_ok_and(|o| {
                            String::from_utf8_lossy(&o.stdout).contains("\"health\":\"true\"")
                        })
                    })
                    .collect();
                samples.push(health);
                std::thread::sleep(Duration::from_millis(500));
            }
            samples
        });
        EtcdWatch { stop, handle }
    }

    /// Stops sampling: each sample's health per member, in control-plane order.
    pub fn stop(self) -> Vec<Vec<bool>> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.join().unwrap()
    }
}
