//! How the Go components serve TLS: client certificates requested in the handshake and checked per request, files reloaded when they change.
//!
//! kube-apiserver and the kubelet accept the handshake whatever client certificate is presented
//! (`tls.RequestClientCert`: kubernetes `cmd/kubelet/app/server.go` `InitializeTLS`, and
//! `staging/src/k8s.io/apiserver/pkg/server/secure_serving.go`); the x509 authenticator verifies
//! the chain against the client CA as it is loaded at that moment, per request
//! (`staging/src/k8s.io/apiserver/pkg/authentication/request/x509/x509.go`
//! `Authenticator.AuthenticateRequest`), and a certificate that does not verify is answered with
//! HTTP 401 (`staging/src/k8s.io/apiserver/pkg/endpoints/filters/authentication.go`). The
//! certificate_authorities hint of the handshake lists the loaded client CAs, as Go's server
//! sends for `tls.Config.ClientCAs`; Go clients send no certificate the hint does not name.
//!
//! Which files a component reloads is its own (`Reload` per file): the dynamic ones follow
//! `staging/src/k8s.io/apiserver/pkg/server/dynamiccertificates` (`dynamic_cafile_content.go`,
//! `dynamic_serving_content.go`): a change is picked up when it happens, and content that does
//! not parse (or a certificate that does not match its key) is refused and the old content kept.
//! Here a change is seen at the next connection or request (the file's size, mtime and inode are
//! compared), which is as soon as upstream's file watch sees it.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use rustls::DistinguishedName;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};

use super::tls;

/// Whether a component reloads a file when it changes on disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reload {
    /// Read once, at start (a change takes effect at the next restart).
    AtStart,
    /// Reloaded when the file changes.
    OnChange,
}

/// What a client certificate presented on a connection authenticates as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientCert {
    /// No certificate was presented (the request may carry a token, or be anonymous).
    Absent,
    /// Verified by the loaded client CA: the subject's CN and O, as the x509 authenticator maps
    /// them (`x509.go` `CommonNameUserConversion`).
    User {
        /// The CN.
        name: String,
        /// The O values.
        groups: Vec<String>,
    },
    /// Presented but not verified by the loaded client CA: the authenticator's error, Go-style.
    Untrusted(String),
}

/// A file's identity on disk: a write in place changes size or mtime, a rename changes inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = fs::metadata(path).ok()?;
    Some(Stamp { ino: m.ino(), size: m.size(), mtime: m.mtime(), mtime_nsec: m.mtime_nsec() })
}

/// The loaded client CA: a verifier and the subjects sent as hints.
struct ClientCa {
    verifier: Arc<dyn ClientCertVerifier>,
    hints: Vec<DistinguishedName>,
}

impl ClientCa {
    fn load(path: &Path) -> Result<ClientCa> {
        let pem = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        let roots = tls::roots_from_pem(&pem, &path.display().to_string())?;
        let hints = roots.subjects();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            tls::provider(),
        )
        .allow_unauthenticated()
        .build()
        .with_context(|| format!("{}: building the client certificate verifier", path.display()))?;
        Ok(ClientCa { verifier, hints })
    }
}

/// The files as loaded, with their stamps at load time.
struct Loaded {
    serving: (Option<Stamp>, Option<Stamp>),
    /// The loaded serving certificate's NotAfter (Unix seconds), when it parsed.
    not_after: Option<i64>,
    client_ca: Option<Stamp>,
    ca: Option<Arc<ClientCa>>,
    config: Arc<rustls::ServerConfig>,
}

/// A TLS server's files: its serving pair and, optionally, the client CA it authenticates
/// requests with, each reloaded or not as the component it simulates does.
pub struct Serving {
    component: String,
    cert: PathBuf,
    key: PathBuf,
    serving_reload: Reload,
    client_ca: Option<(PathBuf, Reload)>,
    alpn: Vec<Vec<u8>>,
    /// The pair comes from a certificate manager, which serves nothing once it has expired.
    managed: bool,
    loaded: Mutex<Loaded>,
}

impl Serving {
    /// Loads the serving pair and the client CA; an unreadable file fails the start, as it fails
    /// the real component's.
    pub fn new(
        component: &str,
        serving: (&Path, &Path, Reload),
        client_ca: Option<(&Path, Reload)>,
        alpn: &[&[u8]],
    ) -> Result<Serving> {
        Serving::start(component, serving, client_ca, alpn, false)
    }

    /// A server whose serving pair may not exist yet: the kubelet with `serverTLSBootstrap`,
    /// whose `GetCertificate` fails with "no serving certificate available for the kubelet"
    /// while its certificate manager has none (`pkg/kubelet/kubelet.go`), so every handshake
    /// fails until the files appear; they are loaded then, and reloaded whenever they change.
    /// The manager's `Current()` is nil once the certificate's NotAfter has passed
    /// (`staging/src/k8s.io/client-go/util/certificate/certificate_manager.go`), so an expired
    /// pair fails every handshake too, until a new one is written.
    pub fn awaiting(
        component: &str,
        (cert, key): (&Path, &Path),
        client_ca: Option<(&Path, Reload)>,
        alpn: &[&[u8]],
    ) -> Result<Serving> {
        Serving::start(component, (cert, key, Reload::OnChange), client_ca, alpn, true)
    }

    /// [`Serving::new`], or when `awaiting` and the pair does not load, a server without one.
    fn start(
        component: &str,
        (cert, key, serving_reload): (&Path, &Path, Reload),
        client_ca: Option<(&Path, Reload)>,
        alpn: &[&[u8]],
        awaiting: bool,
    ) -> Result<Serving> {
        let ca = match client_ca {
            Some((p, _)) => Some(Arc::new(ClientCa::load(p)?)),
            None => None,
        };
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|a| a.to_vec()).collect();
        let (config, serving) = match build(cert, key, ca.as_deref(), &alpn) {
            Ok(c) => (c, (stamp(cert), stamp(key))),
            // Not loaded: any file that appears is a change.
            Err(_) if awaiting => (without_certificate(ca.as_deref(), &alpn)?, (None, None)),
            Err(e) => return Err(e),
        };
        let loaded = Loaded {
            serving,
            not_after: not_after(cert),
            client_ca: client_ca.and_then(|(p, _)| stamp(p)),
            ca,
            config,
        };
        Ok(Serving {
            component: component.to_string(),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            serving_reload,
            client_ca: client_ca.map(|(p, r)| (p.to_path_buf(), r)),
            alpn,
            managed: awaiting,
            loaded: Mutex::new(loaded),
        })
    }

    /// The server config for a new connection, after reloading what changed and reloads.
    pub fn config(&self) -> Arc<rustls::ServerConfig> {
        let mut l = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        self.refresh(&mut l);
        let expired = l.not_after.is_some_and(|t| jiff::Timestamp::now().as_second() > t);
        if self.managed && expired {
            // Go's server would fail the handshake in GetCertificate; so does a config that
            // resolves no certificate (built per connection: the client CA may have changed).
            match without_certificate(l.ca.as_deref(), &self.alpn) {
                Ok(c) => return c,
                Err(e) => eprintln!(
                    "{} {}: building a config without a certificate: {e:#}",
                    jiff::Timestamp::now(),
                    self.component
                ),
            }
        }
        l.config.clone()
    }

    /// Authenticates the certificates a client presented on a connection against the client
    /// CA loaded now (a CA reloaded since the handshake counts, as upstream's per-request check).
    pub fn authenticate(&self, presented: Option<&[CertificateDer<'static>]>) -> ClientCert {
        let Some((end_entity, intermediates)) = presented.and_then(|c| c.split_first()) else {
            return ClientCert::Absent;
        };
        let ca = {
            let mut l = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
            self.refresh(&mut l);
            l.ca.clone()
        };
        let Some(ca) = ca else {
            // No client CA configured: the x509 authenticator is not installed.
            return ClientCert::Absent;
        };
        match ca.verifier.verify_client_cert(end_entity, intermediates, UnixTime::now()) {
            Ok(_) => match subject(end_entity) {
                Some((name, groups)) => ClientCert::User { name, groups },
                None => ClientCert::Untrusted("x509: malformed certificate".into()),
            },
            Err(e) => ClientCert::Untrusted(go_x509(&e)),
        }
    }

    /// Reloads the files marked `OnChange` whose stamp moved; content that does not load is
    /// refused with a log line and the old content kept, as `dynamiccertificates` does.
    fn refresh(&self, l: &mut Loaded) {
        let mut changed = false;
        if self.serving_reload == Reload::OnChange {
            let now = (stamp(&self.cert), stamp(&self.key));
            if now != l.serving {
                l.serving = now;
                changed = true;
            }
        }
        if let Some((path, Reload::OnChange)) = &self.client_ca {
            let now = stamp(path);
            if now != l.client_ca {
                l.client_ca = now;
                match ClientCa::load(path) {
                    Ok(ca) => {
                        eprintln!(
                            "{} {}: loaded a new client CA from {}",
                            jiff::Timestamp::now(),
                            self.component,
                            path.display()
                        );
                        l.ca = Some(Arc::new(ca));
                        changed = true;
                    }
                    Err(e) => eprintln!(
                        "{} {}: keeping the client CA loaded before: {e:#}",
                        jiff::Timestamp::now(),
                        self.component
                    ),
                }
            }
        }
        if !changed {
            return;
        }
        match build(&self.cert, &self.key, l.ca.as_deref(), &self.alpn) {
            Ok(c) => {
                l.config = c;
                l.not_after = not_after(&self.cert);
            }
            Err(e) => eprintln!(
                "{} {}: keeping the serving certificate loaded before: {e:#}",
                jiff::Timestamp::now(),
                self.component
            ),
        }
    }
}

/// The stamps of a certificate and its key.
type PairStamp = (Option<Stamp>, Option<Stamp>);

/// A client's certificate pair reloaded when it changes, with a CA read once: the apiserver's
/// kubelet client (`--kubelet-client-certificate`/`--kubelet-client-key` are re-read through
/// client-go's certificate rotation, `staging/src/k8s.io/client-go/transport/cert_rotation.go`;
/// `--kubelet-certificate-authority` is not). Every call opens a new connection here, so a
/// change is used from the next call on, as upstream closes its connections on a change.
/// Without a CA the server is not verified: `transportConfig` in
/// pkg/kubelet/client/kubelet_client.go sets `TLS.Insecure` when no
/// `--kubelet-certificate-authority` is given, as on kubeadm's clusters.
pub struct ClientPair {
    ca_pem: Option<Vec<u8>>,
    ca_what: String,
    cert: PathBuf,
    key: PathBuf,
    loaded: Mutex<(PairStamp, Arc<rustls::ClientConfig>)>,
}

impl ClientPair {
    /// Loads the pair; the CA bundle `ca_pem` (named `ca_what` in errors), when given, is kept
    /// as given.
    pub fn new(
        ca_pem: Option<Vec<u8>>,
        ca_what: &str,
        cert: &Path,
        key: &Path,
    ) -> Result<ClientPair> {
        let config = client(ca_pem.as_deref(), ca_what, cert, key)?;
        Ok(ClientPair {
            ca_pem,
            ca_what: ca_what.to_string(),
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            loaded: Mutex::new(((stamp(cert), stamp(key)), config)),
        })
    }

    /// The config for a new connection, with the pair reloaded if it changed (a pair that does
    /// not load is refused with a log line, the old one kept).
    pub fn config(&self) -> Arc<rustls::ClientConfig> {
        let mut l = self.loaded.lock().unwrap_or_else(|p| p.into_inner());
        let now = (stamp(&self.cert), stamp(&self.key));
        if now != l.0 {
            l.0 = now;
            match client(self.ca_pem.as_deref(), &self.ca_what, &self.cert, &self.key) {
                Ok(c) => l.1 = c,
                Err(e) => eprintln!(
                    "{} keeping the client certificate loaded before: {e:#}",
                    jiff::Timestamp::now()
                ),
            }
        }
        l.1.clone()
    }
}

fn client(
    ca_pem: Option<&[u8]>,
    ca_what: &str,
    cert: &Path,
    key: &Path,
) -> Result<Arc<rustls::ClientConfig>> {
    let identity = (tls::load_certs(cert)?, tls::load_key(key)?);
    match ca_pem {
        Some(ca) => tls::client_config(ca, ca_what, Some(identity)),
        None => tls::client_config_skip_verify(identity),
    }
}

fn builder(
    ca: Option<&ClientCa>,
) -> Result<rustls::ConfigBuilder<rustls::ServerConfig, rustls::server::WantsServerCert>> {
    let builder = rustls::ServerConfig::builder_with_provider(tls::provider())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?;
    Ok(match ca {
        Some(ca) => builder.with_client_cert_verifier(Arc::new(RequestClientCert {
            hints: ca.hints.clone(),
            provider: tls::provider(),
        })),
        None => builder.with_no_client_auth(),
    })
}

fn build(
    cert: &Path,
    key: &Path,
    ca: Option<&ClientCa>,
    alpn: &[Vec<u8>],
) -> Result<Arc<rustls::ServerConfig>> {
    let mut cfg = builder(ca)?
        .with_single_cert(tls::load_certs(cert)?, tls::load_key(key)?)
        .with_context(|| format!("{} and {} do not match", cert.display(), key.display()))?;
    cfg.alpn_protocols = alpn.to_vec();
    Ok(Arc::new(cfg))
}

/// The NotAfter (Unix seconds) of the first certificate in `path`, if it reads and parses.
fn not_after(path: &Path) -> Option<i64> {
    let certs = tls::load_certs(path).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(certs.first()?.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// A config that has no certificate to serve: every handshake fails (rustls then sends an
/// alert of its own choosing where Go's server sends internal_error).
fn without_certificate(
    ca: Option<&ClientCa>,
    alpn: &[Vec<u8>],
) -> Result<Arc<rustls::ServerConfig>> {
    let mut cfg = builder(ca)?.with_cert_resolver(Arc::new(NoCertificate));
    cfg.alpn_protocols = alpn.to_vec();
    Ok(Arc::new(cfg))
}

/// Resolves no certificate, ever.
#[derive(Debug)]
struct NoCertificate;

impl rustls::server::ResolvesServerCert for NoCertificate {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        None
    }
}

/// Go's `tls.RequestClientCert`: a certificate is asked for and whatever is presented (or
/// nothing) completes the handshake; only the handshake signature is checked, which proves the
/// client holds the key. Trust is the authenticator's business, per request.
#[derive(Debug)]
struct RequestClientCert {
    hints: Vec<DistinguishedName>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ClientCertVerifier for RequestClientCert {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &self.hints
    }

    fn verify_client_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> std::result::Result<ClientCertVerified, rustls::Error> {
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        tls::handshake_signature(&self.provider, tls::Tls::V12, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        tls::handshake_signature(&self.provider, tls::Tls::V13, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// The CN and O values of a certificate's subject.
fn subject(der: &CertificateDer<'_>) -> Option<(String, Vec<String>)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let name = cert.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    let groups = cert
        .subject()
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    Some((name, groups))
}

/// A verification error as Go's x509 package words it.
fn go_x509(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => {
            "x509: certificate signed by unknown authority".into()
        }
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => {
            "x509: certificate has expired or is not yet valid".into()
        }
        rustls::Error::InvalidCertificate(C::InvalidPurpose | C::InvalidPurposeContext { .. }) => {
            "x509: certificate specifies an incompatible key usage".into()
        }
        other => format!("x509: {other}"),
    }
}

/// The bearer token of a request's `Authorization` header, when it carries a non-empty one
/// (`staging/src/k8s.io/apiserver/pkg/authentication/request/bearertoken/bearertoken.go`).
pub fn bearer_token<B>(req: &hyper::Request<B>) -> Option<String> {
    req.headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|t| !t.is_empty())
        .map(str::to_string)
}

/// The body of a 401 from the apiserver's authentication filter (`authentication.go`
/// `Unauthorized`: a Status with reason Unauthorized).
pub fn unauthorized_status() -> serde_json::Value {
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": "Unauthorized", "reason": "Unauthorized", "code": 401
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unknown_issuer_reads_as_go_says_it() {
        let e = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        assert_eq!(go_x509(&e), "x509: certificate signed by unknown authority");
    }

    /// Two CAs, `a` and `b`, each with a client `kubeca-probe` in `system:masters`, and a
    /// serving pair; `client-ca.crt` holds `a`'s CA.
    fn pki() -> (tempfile::TempDir, Vec<CertificateDer<'static>>, Vec<CertificateDer<'static>>) {
        let dir = tempfile::tempdir().unwrap();
        for name in ["a", "b"] {
            super::super::pki::ca_and_client(dir.path(), name, "kubeca-probe", &["system:masters"])
                .unwrap();
        }
        fs::copy(dir.path().join("a-ca.crt"), dir.path().join("client-ca.crt")).unwrap();
        let a = tls::load_certs(&dir.path().join("a-client.crt")).unwrap();
        let b = tls::load_certs(&dir.path().join("b-client.crt")).unwrap();
        (dir, a, b)
    }

    fn serving(dir: &Path, ca: Reload) -> Serving {
        let (crt, key) = (dir.join("a-client.crt"), dir.join("a-client.key"));
        let files = (crt.as_path(), key.as_path(), Reload::AtStart);
        Serving::new("test", files, Some((&dir.join("client-ca.crt"), ca)), &[b"http/1.1"]).unwrap()
    }

    #[test]
    fn a_certificate_is_checked_against_the_client_ca_loaded_at_the_request() {
        let (dir, a, b) = pki();
        let s = serving(dir.path(), Reload::OnChange);
        let user =
            ClientCert::User { name: "kubeca-probe".into(), groups: vec!["system:masters".into()] };
        assert_eq!(s.authenticate(Some(&a)), user);
        assert_eq!(
            s.authenticate(Some(&b)),
            ClientCert::Untrusted("x509: certificate signed by unknown authority".into())
        );
        assert_eq!(s.authenticate(None), ClientCert::Absent);
        // The client CA file now holds b's CA (a rename over it, as kubeca writes): reloaded.
        fs::copy(dir.path().join("b-ca.crt"), dir.path().join("new.crt")).unwrap();
        fs::rename(dir.path().join("new.crt"), dir.path().join("client-ca.crt")).unwrap();
        assert_eq!(s.authenticate(Some(&b)), user);
        assert!(matches!(s.authenticate(Some(&a)), ClientCert::Untrusted(_)));
        // Content that does not parse is refused and b's CA kept.
        fs::write(dir.path().join("client-ca.crt"), "not a certificate").unwrap();
        assert_eq!(s.authenticate(Some(&b)), user);
    }

    #[test]
    fn a_file_read_at_start_is_not_reloaded() {
        let (dir, a, b) = pki();
        let s = serving(dir.path(), Reload::AtStart);
        fs::copy(dir.path().join("b-ca.crt"), dir.path().join("client-ca.crt")).unwrap();
        assert!(matches!(s.authenticate(Some(&a)), ClientCert::User { .. }));
        assert!(matches!(s.authenticate(Some(&b)), ClientCert::Untrusted(_)));
    }

    /// A self-signed pair for `localhost` (expired in 2021 when `expired`), certificate and
    /// key in one file as the kubelet's certificate store writes it, put in place by a rename.
    fn write_pair(path: &Path, expired: bool) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.self_signed(&key).unwrap();
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, format!("{}{}", cert.pem(), key.serialize_pem())).unwrap();
        fs::rename(&tmp, path).unwrap();
    }

    /// Whether a client that verifies nothing completes a handshake with `server`, in memory.
    fn handshakes(server: Arc<rustls::ServerConfig>) -> bool {
        let client = tls::client_config_skip_verify_anonymous().unwrap();
        let mut c = rustls::ClientConnection::new(client, "localhost".try_into().unwrap()).unwrap();
        let mut s = rustls::ServerConnection::new(server).unwrap();
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).unwrap();
            s.read_tls(&mut buf.as_slice()).unwrap();
            if s.process_new_packets().is_err() {
                return false;
            }
            buf.clear();
            s.write_tls(&mut buf).unwrap();
            c.read_tls(&mut buf.as_slice()).unwrap();
            if c.process_new_packets().is_err() {
                return false;
            }
            if !c.is_handshaking() && !s.is_handshaking() {
                return true;
            }
        }
        false
    }

    #[test]
    fn a_managed_pair_serves_nothing_once_expired_until_a_new_one_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let current = dir.path().join("kubelet-server-current.pem");
        let s = Serving::awaiting("kubelet", (&current, &current), None, &[b"http/1.1"]).unwrap();
        assert!(!handshakes(s.config()), "no certificate yet: every handshake fails");
        write_pair(&current, true);
        assert!(!handshakes(s.config()), "an expired certificate is not served");
        write_pair(&current, false);
        assert!(handshakes(s.config()), "a new certificate is served from the next handshake");
        // A component that is given its pair (not a certificate manager) serves it expired,
        // as Go's server does.
        write_pair(&current, true);
        let given =
            Serving::new("apiserver", (&current, &current, Reload::AtStart), None, &[b"http/1.1"])
                .unwrap();
        assert!(handshakes(given.config()));
    }

    #[test]
    fn a_changed_file_has_a_new_stamp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ca.crt");
        fs::write(&p, "one").unwrap();
        let a = stamp(&p);
        fs::write(dir.path().join("ca.crt.tmp"), "two").unwrap();
        fs::rename(dir.path().join("ca.crt.tmp"), &p).unwrap();
        assert_ne!(a, stamp(&p), "a rename over the file must be seen");
        assert_eq!(stamp(&dir.path().join("absent")), None);
    }
}
