//! The real tools the tests look through, in small wrappers: sh, kubectl, openssl (verify,
//! s_client, x509), and reading certificates out of PEM text and kubeconfigs.

use std::path::Path;
use std::process::{Command, Output};

/// stdout and stderr of a command, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
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

/// Whether the certificate in the file `cert` verifies against `ca_pem` as its root
/// (`openssl verify`, no partial chains).
pub fn verifies(ca_pem: &str, cert: &Path) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, ca_pem).unwrap();
    Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&ca)
        .arg(cert)
        .output()
        .unwrap()
        .status
        .success()
}
