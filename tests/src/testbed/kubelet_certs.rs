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
//! With `serverTLSBootstrap: true` a second manager keeps the kubelet's serving certificate the
//! same way (`NewKubeletServerCertificateManager`): store `kubelet-server`, signer
//! `kubernetes.io/kubelet-serving`, usages digital signature and server auth (the key is P-256:
//! `DefaultKubeletServingGetUsages` adds key encipherment only for RSA), the template's
//! alternative names the node's addresses; authenticated with the kubelet's current client
//! certificate. Nothing in the controller-manager approves such a request (`sarapprove.go`):
//! until someone does, the kubelet serves nothing. Neither manager looks at the issuer: a
//! certificate of a CA rotated out is kept until its deadline.
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
use super::csr_controllers::{KUBELET_CLIENT_SIGNER, KUBELET_SERVING_SIGNER};
use x509_parser::extensions::GeneralName;

/// `certificateWaitTimeout`.
const WAIT: Duration = Duration::from_secs(15 * 60);

/// Which of the kubelet's certificates a manager keeps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Its client certificate towards the apiserver (`rotateCertificates`).
    Client,
    /// Its serving certificate on :10250 (`serverTLSBootstrap`).
    Serving,
}

impl Kind {
    /// The store's pair name (`certificate.NewFileStore(name, …)`).
    pub fn pair(self) -> &'static str {
        match self {
            Kind::Client => "kubelet-client",
            Kind::Serving => "kubelet-server",
        }
    }

    fn signer(self) -> &'static str {
        match self {
            Kind::Client => KUBELET_CLIENT_SIGNER,
            Kind::Serving => KUBELET_SERVING_SIGNER,
        }
    }

    fn usages(self) -> [&'static str; 2] {
        match self {
            Kind::Client => ["digital signature", "client auth"],
            Kind::Serving => ["digital signature", "server auth"],
        }
    }
}

/// The current client certificate of `cert_dir`.
pub fn current_path(cert_dir: &Path) -> PathBuf {
    current_of(Kind::Client, cert_dir)
}

/// The current certificate of kind `kind` in `cert_dir` (`<pair>-current.pem`).
pub fn current_of(kind: Kind, cert_dir: &Path) -> PathBuf {
    cert_dir.join(format!("{}-current.pem", kind.pair()))
}

/// When the client certificate `pem` is to be rotated: `fraction` (drawn in [0.7, 0.9)) of the
/// way through its validity, or `now` when it is expired or its subject is not the template's.
pub fn deadline(pem: &str, node: &str, fraction: f64, now: Timestamp) -> Result<Timestamp> {
    deadline_for(pem, node, &[], fraction, now)
}

/// [`deadline`] for a template that also wants the alternative names `sans` (DNS names and IP
/// addresses, `certSatisfiesTemplateLocked`: every one the template has must be in the
/// certificate; more do no harm).
pub fn deadline_for(
    pem: &str,
    node: &str,
    sans: &[String],
    fraction: f64,
    now: Timestamp,
) -> Result<Timestamp> {
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
    let mut has = Vec::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for n in &ext.value.general_names {
            match n {
                GeneralName::DNSName(d) => has.push(d.to_string()),
                GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => <[u8; 4]>::try_from(*b).map(std::net::IpAddr::from).ok(),
                        16 => <[u8; 16]>::try_from(*b).map(std::net::IpAddr::from).ok(),
                        _ => None,
                    };
                    has.extend(ip.map(|ip| ip.to_string()));
                }
                _ => {}
            }
        }
    }
    if sans.iter().any(|want| !has.contains(want)) {
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
    store_of(Kind::Client, cert_dir, cert_pem, key_pem, now)
}

/// [`store`] for the certificate of kind `kind`.
pub fn store_of(
    kind: Kind,
    cert_dir: &Path,
    cert_pem: &str,
    key_pem: &str,
    now: Timestamp,
) -> Result<PathBuf> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(cert_dir)?;
    let ts = now.strftime("%Y-%m-%d-%H-%M-%S");
    let file = cert_dir.join(format!("{}-{ts}.pem", kind.pair()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&file)
        .with_context(|| format!("writing {}", file.display()))?;
    std::io::Write::write_all(&mut f, format!("{cert_pem}{key_pem}").as_bytes())?;
    drop(f);
    let current = current_of(kind, cert_dir);
    let updated = cert_dir.join(format!("{}-updated.pem", kind.pair()));
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

/// Asks for a certificate of kind `kind` (alternative names `sans`, for a serving one) with
/// `client` and waits for it: the certificate, PEM, with its key.
async fn request(
    client: &Client,
    kind: Kind,
    node: &str,
    sans: &[String],
) -> Result<(String, String)> {
    let req = match kind {
        Kind::Client => certutil::node_client_request(node)?,
        Kind::Serving => certutil::node_serving_request(node, sans)?,
    };
    let b64 = base64::engine::general_purpose::STANDARD.encode(&req.csr_pem);
    let collection = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
    let csr = json!({"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"generateName": "csr-"},
        "spec": {"request": b64, "signerName": kind.signer(), "usages": kind.usages()}});
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
            Ok(client) => request(&client, Kind::Client, &node, &[]).await,
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

/// The serving certificate manager of `node` over `cert_dir` (`serverTLSBootstrap`): the
/// current certificate is the file, read at every turn (the kubelet's :10250 serves it from
/// the next handshake, [`super::serving::Serving::awaiting`]); with none, or one expired or
/// without the node's `addresses`, a request at once. Requests authenticate with the kubelet's
/// client certificate as `client` holds it now. Returns only when `client`'s sender is gone.
pub async fn run_serving(
    node: String,
    addresses: Vec<String>,
    cert_dir: PathBuf,
    base: Credentials,
    client: watch::Receiver<(Vec<u8>, Vec<u8>)>,
) {
    let me = format!("kubelet@{node}");
    let current = current_of(Kind::Serving, &cert_dir);
    let mut attempt = 0u32;
    loop {
        let now = Timestamp::now();
        let due = match std::fs::read_to_string(&current) {
            Ok(pem) => match deadline_for(&pem, &node, &addresses, jitter_fraction(), now) {
                Ok(t) => t,
                Err(e) => {
                    eprintln!("{now} kubelet {node}: serving certificate: {e:#}; rotating");
                    now
                }
            },
            Err(_) => {
                eprintln!("{now} kubelet {node}: no serving certificate yet; requesting one");
                now
            }
        };
        if due > now {
            eprintln!("{now} kubelet {node}: serving certificate rotation deadline is {due}");
            tokio::time::sleep(due.duration_since(now).unsigned_abs()).await;
        }
        if client.has_changed().is_err() {
            return;
        }
        let (cert, key) = client.borrow().clone();
        let creds = Credentials { client_cert: Some((cert, key)), ..base.clone() };
        let outcome = match Client::new(&creds, &me, "kubelet->apiserver") {
            Ok(c) => request(&c, Kind::Serving, &node, &addresses).await,
            Err(e) => Err(e),
        };
        match outcome
            .and_then(|(c, k)| store_of(Kind::Serving, &cert_dir, &c, &k, Timestamp::now()))
        {
            Ok(file) => {
                eprintln!(
                    "{} kubelet {node}: rotated its serving certificate: {}",
                    Timestamp::now(),
                    file.display()
                );
                attempt = 0;
            }
            Err(e) => {
                // What the real manager logs (`rotateCerts`: "Certificate request was not
                // signed"), with the reason.
                let wait = retry_delay(attempt);
                eprintln!(
                    "{} kubelet {node}: Certificate request was not signed: {e:#}; again in {} s",
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
    fn a_serving_certificate_must_name_the_nodes_addresses() {
        let now: Timestamp = "2026-12-03T12:00:00Z".parse().unwrap();
        let ca = certutil::kubeadm_ca("kubernetes", actions::pki::KeySpec::EcdsaP256, now).unwrap();
        let addresses = vec!["198.18.0.14".to_string(), "w-1".to_string()];
        let req = certutil::node_serving_request("w-1", &addresses).unwrap();
        let usages: Vec<String> = Kind::Serving.usages().map(String::from).to_vec();
        let ttl = SignedDuration::from_mins(100);
        let pem =
            certutil::sign_request(&req.csr_pem, &usages, &ca.cert_pem, &ca.key_pem, ttl, now)
                .unwrap();
        let at = deadline_for(&pem, "w-1", &addresses, 0.8, now).unwrap();
        assert_eq!(at, now - SignedDuration::from_mins(5) + SignedDuration::from_mins(84));
        // A name the certificate lacks (the node got another address): at once.
        let more = vec!["198.18.0.14".to_string(), "198.18.0.99".to_string()];
        assert_eq!(deadline_for(&pem, "w-1", &more, 0.8, now).unwrap(), now);
        // Fewer names than it has: fine.
        assert_eq!(deadline_for(&pem, "w-1", &addresses[..1], 0.8, now).unwrap(), at);
        assert_eq!(
            current_of(Kind::Serving, Path::new("/p")),
            Path::new("/p/kubelet-server-current.pem")
        );
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
