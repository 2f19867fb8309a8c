//! The kubelet's client certificate manager (`rotateCertificates: true`), as client-go's
//! `certificate_manager.go` and `certificate_store.go` (staging/src/k8s.io/client-go/util/
//! certificate/) and `NewKubeletClientCertificateManager` (pkg/kubelet/certificate/kubelet.go)
//! run it:
//! - the current certificate is `<cert-dir>/kubelet-client-current.pem` (certificate and key);
//! - its rotation deadline is NotBefore + a uniform 70–90 % of its lifetime
//!   (`nextRotationDeadline`, `jitteryDuration`), or now when it is expired or does not carry
//!   the template's subject (`certSatisfiesTemplateLocked`);
//! - at the deadline it makes a new P-256 key and a CSR (`CN=system:node:<node>,
//!   O=system:nodes`, signer `kubernetes.io/kube-apiserver-client-kubelet`, usages digital
//!   signature and client auth, `generateName: csr-`), authenticated with the current
//!   certificate, and waits up to 15 minutes for it to be approved and signed; a denial, a
//!   failure or the timeout is retried after 2, 4, 8, 16 s, then every 32 s, each time with a
//!   new key and a new request;
//! - the certificate is stored as `kubelet-client-<YYYY-MM-DD-HH-MM-SS>.pem` (mode 0600,
//!   certificate then key) and `kubelet-client-current.pem` is pointed at it through a
//!   `kubelet-client-updated.pem` link, removed and renamed (`updateSymlink`);
//! - the kubelet's API connections then use the new certificate (`UpdateTransport` closes
//!   them all when it sees the change).
//!
//! Where the testbed differs: it waits for the certificate by reading the request once a
//! second (upstream watches it); the new credentials are used from the next request (upstream
//! checks every 10 s); with no usable certificate it has no bootstrap kubeconfig to fall back on
//! (a kubeadm node has none after it joined either) and retries with what it has.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use jiff::{SignedDuration, Timestamp};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::certutil;
use super::client::{Client, Credentials};
use super::csr_controllers::KUBELET_CLIENT_SIGNER;

/// `certificateWaitTimeout`.
const WAIT: Duration = Duration::from_secs(15 * 60);

/// The current certificate of `cert_dir`.
pub fn current_path(cert_dir: &Path) -> PathBuf {
    cert_dir.join("kubelet-client-current.pem")
}

/// When the certificate `pem` is to be rotated: `fraction` (drawn in [0.7, 0.9)) of the way
/// through its validity, or `now` when it is expired or its subject is not the template's.
pub fn deadline(pem: &str, node: &str, fraction: f64, now: Timestamp) -> Result<Timestamp> {
    let der =
        certutil::pem_block(pem, "CERTIFICATE").ok_or_else(|| anyhow!("no CERTIFICATE in it"))?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| anyhow!("the certificate does not parse: {e}"))?;
    let from = Timestamp::from_second(cert.validity().not_before.timestamp())?;
    let until = Timestamp::from_second(cert.validity().not_after.timestamp())?;
    let cn = cert.subject().iter_common_name().next().and_then(|a| a.as_str().ok());
    let in_nodes = cert.subject().iter_organization().any(|o| o.as_str() == Ok("system:nodes"));
    if now >= until || cn != Some(&format!("system:node:{node}")) || !in_nodes {
        return Ok(now);
    }
    let total = until.duration_since(from).as_secs_f64();
    Ok(from + SignedDuration::from_secs_f64(total * fraction))
}

/// `jitteryDuration`'s fraction: `wait.Jitter(total, 0.2) - 0.3·total`, uniform in [0.7, 0.9).
pub fn jitter_fraction() -> f64 {
    let mut b = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    0.7 + 0.2 * (u64::from_be_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// The retry delays after a failed rotation (`wait.Backoff{Duration: 2s, Factor: 2, Steps: 5}`,
/// then `PollInfinite` every 32 s); `attempt` counts from 0.
pub fn retry_delay(attempt: u32) -> Duration {
    match attempt {
        0..4 => Duration::from_secs(2 << attempt),
        _ => Duration::from_secs(32),
    }
}

/// Stores a new certificate and key as `certificate_store.go` `Update` does; returns the new
/// file.
pub fn store(cert_dir: &Path, cert_pem: &str, key_pem: &str, now: Timestamp) -> Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(cert_dir)?;
    let ts = now.strftime("%Y-%m-%d-%H-%M-%S");
    let file = cert_dir.join(format!("kubelet-client-{ts}.pem"));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&file)
        .with_context(|| format!("writing {}", file.display()))?;
    std::io::Write::write_all(&mut f, format!("{cert_pem}{key_pem}").as_bytes())?;
    drop(f);
    let current = current_path(cert_dir);
    let updated = cert_dir.join("kubelet-client-updated.pem");
    if let Ok(m) = std::fs::symlink_metadata(&current)
        && !m.file_type().is_symlink()
    {
        bail!("{} exists and is not a symbolic link", current.display());
    }
    if std::fs::symlink_metadata(&updated).is_ok() {
        std::fs::remove_file(&updated)?;
    }
    std::os::unix::fs::symlink(&file, &updated)?;
    if std::fs::symlink_metadata(&current).is_ok() {
        std::fs::remove_file(&current)?;
    }
    std::fs::rename(&updated, &current)?;
    Ok(file)
}

/// Asks for a certificate with `client` and waits for it: the certificate, PEM, with its key.
async fn request(client: &Client, node: &str) -> Result<(String, String)> {
    let req = certutil::node_client_request(node)?;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&req.csr_pem);
    let collection = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
    let csr = json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"generateName": "csr-"},
        "spec": {"request": b64, "signerName": KUBELET_CLIENT_SIGNER,
                 "usages": ["digital signature", "client auth"]}});
    let made = client.create(collection, &csr).await?;
    let name = made["metadata"]["name"].as_str().ok_or_else(|| anyhow!("no name"))?.to_string();
    let uid = made["metadata"]["uid"].clone();
    let started = std::time::Instant::now();
    while started.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let Some(now) = client.get(&format!("{collection}/{name}")).await? else {
            bail!("certificate signing request {name} was deleted");
        };
        if now["metadata"]["uid"] != uid {
            bail!("csr {name:?} changed UIDs");
        }
        let conds: Vec<Value> = now["status"]["conditions"].as_array().cloned().unwrap_or_default();
        for kind in ["Denied", "Failed"] {
            if let Some(c) = conds.iter().find(|c| c["type"] == kind) {
                bail!(
                    "certificate signing request {name} is {kind}: {} {}",
                    c["reason"],
                    c["message"]
                );
            }
        }
        let approved = conds.iter().any(|c| c["type"] == "Approved");
        if let Some(cert) =
            now["status"]["certificate"].as_str().filter(|c| approved && !c.is_empty())
        {
            let pem = base64::engine::general_purpose::STANDARD
                .decode(cert)
                .context("status.certificate is not base64")?;
            return Ok((
                String::from_utf8(pem).context("status.certificate is not PEM")?,
                req.key_pem,
            ));
        }
    }
    bail!("certificate signing request {name}: timed out waiting for the condition")
}

/// Runs the manager for `node` over `cert_dir`, with the server and CA of `base`; sends every
/// new pair (certificate, key) on `tx`. Returns only when the receiver is gone.
pub async fn run(
    node: String,
    cert_dir: PathBuf,
    base: Credentials,
    tx: watch::Sender<(Vec<u8>, Vec<u8>)>,
) {
    let me = format!("kubelet@{node}");
    let mut attempt = 0u32;
    loop {
        let (cert, key) = tx.borrow().clone();
        let pem = String::from_utf8_lossy(&cert).into_owned();
        let now = Timestamp::now();
        let due = match deadline(&pem, &node, jitter_fraction(), now) {
            Ok(t) => t,
            Err(e) => {
                eprintln!("{now} kubelet {node}: client certificate: {e:#}; rotating");
                now
            }
        };
        if due > now {
            eprintln!("{now} kubelet {node}: client certificate rotation deadline is {due}");
            tokio::time::sleep(due.duration_since(now).unsigned_abs()).await;
        }
        let creds = Credentials { client_cert: Some((cert, key)), ..base.clone() };
        let outcome = match Client::new(&creds, &me, "kubelet->apiserver") {
            Ok(client) => request(&client, &node).await,
            Err(e) => Err(e),
        };
        let stored = outcome
            .and_then(|(c, k)| store(&cert_dir, &c, &k, Timestamp::now()).map(|f| (c, k, f)));
        match stored {
            Ok((c, k, file)) => {
                eprintln!(
                    "{} kubelet {node}: rotated its client certificate: {}",
                    Timestamp::now(),
                    file.display()
                );
                attempt = 0;
                if tx.send((c.into_bytes(), k.into_bytes())).is_err() {
                    return;
                }
            }
            Err(e) => {
                let wait = retry_delay(attempt);
                eprintln!(
                    "{} kubelet {node}: client certificate rotation failed: {e:#}; again in {} s",
                    Timestamp::now(),
                    wait.as_secs()
                );
                attempt += 1;
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_falls_70_to_90_percent_through_unless_expired_or_off_template() {
        let now: Timestamp = "2026-12-03T12:00:00Z".parse().unwrap();
        let ca = certutil::kubeadm_ca("kubernetes", actions::pki::KeySpec::EcdsaP256, now).unwrap();
        let req = certutil::node_client_request("w-1").unwrap();
        let usages = vec!["digital signature".to_string(), "client auth".to_string()];
        let ttl = SignedDuration::from_mins(100);
        let pem =
            certutil::sign_request(&req.csr_pem, &usages, &ca.cert_pem, &ca.key_pem, ttl, now)
                .unwrap();
        // Valid from now − 5 min for 105 min.
        let at = deadline(&pem, "w-1", 0.8, now).unwrap();
        assert_eq!(at, now - SignedDuration::from_mins(5) + SignedDuration::from_mins(84));
        assert_eq!(deadline(&pem, "w-2", 0.8, now).unwrap(), now, "another node's subject");
        let late = now + SignedDuration::from_mins(200);
        assert_eq!(deadline(&pem, "w-1", 0.8, late).unwrap(), late, "expired");
        for _ in 0..100 {
            let f = jitter_fraction();
            assert!((0.7..0.9).contains(&f), "{f}");
        }
        assert_eq!(retry_delay(0).as_secs(), 2);
        assert_eq!(retry_delay(3).as_secs(), 16);
        assert_eq!(retry_delay(4).as_secs(), 32);
        assert_eq!(retry_delay(40).as_secs(), 32);
    }

    #[test]
    fn a_new_certificate_is_a_dated_0600_file_and_current_links_to_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let now: Timestamp = "2026-12-03T12:34:56Z".parse().unwrap();
        let first = store(dir.path(), "CERT\n", "KEY\n", now).unwrap();
        assert_eq!(first.file_name().unwrap(), "kubelet-client-2026-12-03-12-34-56.pem");
        let current = current_path(dir.path());
        assert_eq!(std::fs::read_link(&current).unwrap(), first);
        assert_eq!(std::fs::read_to_string(&current).unwrap(), "CERT\nKEY\n");
        let mode = std::fs::metadata(&first).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let second = store(dir.path(), "C2\n", "K2\n", now + SignedDuration::from_secs(1)).unwrap();
        assert_eq!(std::fs::read_link(&current).unwrap(), second);
        assert!(first.exists(), "old files are kept");
        assert!(!dir.path().join("kubelet-client-updated.pem").exists());
        std::fs::remove_file(&current).unwrap();
        std::fs::write(&current, "plain").unwrap();
        assert!(
            store(dir.path(), "C\n", "K\n", now)
                .unwrap_err()
                .to_string()
                .contains("not a symbolic link")
        );
    }
}
