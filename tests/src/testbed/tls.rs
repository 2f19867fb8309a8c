//! TLS for every simulated component: rustls configs from kubeadm files, and classification of handshake failures for the trust monitor.
//!
//! Components load their files once, at start, exactly as the real ones do: a CA file may hold
//! several certificates (a bundle during a rotation) and every one of them is trusted.

use std::fs;
use std::io::BufReader;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;

use super::monitor::Outcome;

/// The crypto provider every component uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM text; `what` names its source in errors.
pub fn certs_from_pem(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = rustls_pemfile::certs(&mut BufReader::new(pem))
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("reading the certificates of {what}"))?;
    if certs.is_empty() {
        bail!("{what} holds no certificate");
    }
    Ok(certs)
}

/// Every certificate in a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    certs_from_pem(&pem, &path.display().to_string())
}

/// The private key in a PEM file (PKCS#1, PKCS#8 or SEC1).
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>> {
    let pem = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    key_from_pem(&pem, &path.display().to_string())
}

/// The private key in a PEM text.
pub fn key_from_pem(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>> {
    rustls_pemfile::private_key(&mut BufReader::new(pem))
        .with_context(|| format!("reading the key of {what}"))?
        .with_context(|| format!("{what} holds no private key"))
}

/// A root store trusting every certificate of a PEM bundle.
pub fn roots_from_pem(pem: &[u8], what: &str) -> Result<rustls::RootCertStore> {
    let mut roots = rustls::RootCertStore::empty();
    for c in certs_from_pem(pem, what)? {
        roots.add(c).with_context(|| format!("{what}: a certificate is not a usable CA"))?;
    }
    Ok(roots)
}

/// How a server treats client certificates.
pub enum ClientAuth<'a> {
    /// No client certificate asked for.
    None,
    /// A client certificate is verified against this CA bundle when one is presented; clients
    /// without one may still authenticate otherwise (bearer tokens, anonymous health checks).
    Optional(&'a Path),
    /// As `Optional`, with the bundle given as PEM (`what` names where it came from).
    OptionalPem(&'a [u8], &'a str),
}

/// A server config with the serving pair from files and client verification per `auth`.
pub fn server_config(
    cert: &Path,
    key: &Path,
    auth: ClientAuth<'_>,
) -> Result<Arc<rustls::ServerConfig>> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?;
    let roots = match auth {
        ClientAuth::None => None,
        ClientAuth::Optional(ca) => {
            let pem = fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
            Some(roots_from_pem(&pem, &ca.display().to_string())?)
        }
        ClientAuth::OptionalPem(pem, what) => Some(roots_from_pem(pem, what)?),
    };
    let builder = match roots {
        None => builder.with_no_client_auth(),
        Some(roots) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .allow_unauthenticated()
            .build()
            .context("building the client certificate verifier")?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut cfg = builder
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .with_context(|| format!("{} and {} do not match", cert.display(), key.display()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A client config trusting the CA bundle `ca_pem`, presenting the given pair when any.
pub fn client_config(
    ca_pem: &[u8],
    ca_what: &str,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Result<Arc<rustls::ClientConfig>> {
    let roots = roots_from_pem(ca_pem, ca_what)?;
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .with_root_certificates(roots);
    let mut cfg = match identity {
        Some((certs, key)) => builder
            .with_client_auth_cert(certs, key)
            .context("the client certificate and key do not match")?,
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// What a client saw when a handshake failed.
pub fn classify_client_error(e: &std::io::Error) -> Outcome {
    use std::io::ErrorKind;
    match e.kind() {
        ErrorKind::ConnectionRefused => return Outcome::Refused,
        ErrorKind::TimedOut => return Outcome::Timeout,
        _ => {}
    }
    match tls_error(e) {
        Some(rustls::Error::InvalidCertificate(_)) => Outcome::TlsUntrustedServer,
        // The server rejected the certificate we presented.
        Some(rustls::Error::AlertReceived(_)) => Outcome::TlsBadClientCert,
        Some(_) => Outcome::TlsUntrustedServer,
        // A connection reset during the handshake: a TLS 1.3 server rejecting our certificate
        // closes after its alert, which may arrive as a reset.
        None => Outcome::Refused,
    }
}

/// What a server saw when a handshake failed; None when the peer closed before any
/// ClientHello (haproxy's TCP health check), which is not a TLS failure.
pub fn classify_server_error(e: &std::io::Error) -> Option<Outcome> {
    match tls_error(e) {
        Some(rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented) => {
            Some(Outcome::TlsBadClientCert)
        }
        // The client did not trust our serving certificate.
        Some(rustls::Error::AlertReceived(_)) => Some(Outcome::TlsUntrustedServer),
        Some(_) => Some(Outcome::TlsBadClientCert),
        None => None,
    }
}

fn tls_error(e: &std::io::Error) -> Option<&rustls::Error> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>())
}

/// The Go-style text kube components log for a failed handshake, so logs read as upstream's.
pub fn go_style(e: &std::io::Error) -> String {
    match tls_error(e) {
        Some(rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)) => {
            "x509: certificate signed by unknown authority".into()
        }
        Some(rustls::Error::InvalidCertificate(c)) => format!("x509: {c:?}"),
        Some(rustls::Error::AlertReceived(a)) => {
            let a = match a {
                rustls::AlertDescription::BadCertificate => "bad certificate".to_string(),
                rustls::AlertDescription::UnknownCA => "unknown certificate authority".to_string(),
                rustls::AlertDescription::CertificateRequired => "certificate required".to_string(),
                other => format!("{other:?}"),
            };
            format!("remote error: tls: {a}")
        }
        Some(other) => format!("tls: {other}"),
        None => e.to_string(),
    }
}

/// Connects and completes a TLS handshake within `timeout`; on failure, the monitor's outcome
/// and a Go-style message.
pub async fn connect(
    addr: SocketAddr,
    server_name: ServerName<'static>,
    cfg: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> std::result::Result<tokio_rustls::client::TlsStream<TcpStream>, (Outcome, String)> {
    let attempt = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| (classify_client_error(&e), e.to_string()))?;
        let mut tls = tokio_rustls::TlsConnector::from(cfg)
            .connect(server_name, tcp)
            .await
            .map_err(|e| (classify_client_error(&e), go_style(&e)))?;
        // In TLS 1.3 the server checks our certificate after the client's handshake ends: a
        // rejection arrives as an alert on the first read. Probe with a zero-length wait so a
        // rejected client certificate is seen here rather than as a broken request.
        use tokio::io::AsyncReadExt;
        let mut probe = [0u8; 0];
        if let Ok(Err(e)) =
            tokio::time::timeout(Duration::from_millis(30), tls.read(&mut probe)).await
        {
            return Err((classify_client_error(&e), go_style(&e)));
        }
        Ok(tls)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(r) => r,
        Err(_) => Err((Outcome::Timeout, format!("dial tcp {addr}: i/o timeout"))),
    }
}

/// Completes a server handshake on `tcp`. A failure on trust (not a peer that closed before
/// its hello, as haproxy's health check does) is logged as Go's http server logs it and
/// recorded for the monitor as `client` -> `server` for `purpose`; None when it failed.
pub async fn accept(
    acceptor: &tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    (client, server, purpose): (&str, &str, &str),
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match acceptor.accept(tcp).await {
        Ok(s) => Some(s),
        Err(e) => {
            if let Some(outcome) = classify_server_error(&e) {
                eprintln!(
                    "{} http: TLS handshake error from {peer}: {}",
                    jiff::Timestamp::now(),
                    go_style(&e)
                );
                super::monitor::record(client, server, purpose, outcome);
            }
            None
        }
    }
}

/// A self-signed serving pair for `address`, made with the openssl CLI under `dir` at start, as
/// kube-controller-manager and kube-scheduler make one in memory when given no certificate.
pub fn self_signed(
    dir: &Path,
    name: &str,
    address: &str,
) -> Result<(std::path::PathBuf, std::path::PathBuf)> {
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let crt = dir.join(format!("{name}.crt"));
    let key = dir.join(format!("{name}.key"));
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "365",
        ])
        .arg("-subj")
        .arg(format!("/CN={address}@self-signed"))
        .arg("-addext")
        .arg(format!("subjectAltName=IP:{address}"))
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .context("running openssl req -x509")?;
    if !out.status.success() {
        bail!("openssl req -x509 for {name}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok((crt, key))
}

/// Which TLS version's handshake signature [`handshake_signature`] checks.
#[derive(Clone, Copy, Debug)]
pub enum Tls {
    /// TLS 1.2.
    V12,
    /// TLS 1.3.
    V13,
}

/// Checks a handshake signature with `provider`'s algorithms: all that a verifier which leaves
/// the chain alone (the aggregator's `insecureSkipTLSVerify`, Go's `RequestClientCert`) still
/// checks, and what proves the peer holds the certificate's key.
pub fn handshake_signature(
    provider: &rustls::crypto::CryptoProvider,
    version: Tls,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &rustls::DigitallySignedStruct,
) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
    let algorithms = &provider.signature_verification_algorithms;
    match version {
        Tls::V12 => rustls::crypto::verify_tls12_signature(message, cert, dss, algorithms),
        Tls::V13 => rustls::crypto::verify_tls13_signature(message, cert, dss, algorithms),
    }
}

/// Accepts any server certificate: the aggregator's `insecureSkipTLSVerify: true` toward
/// metrics-server, whose certificate is self-signed as upstream's default install has it, and
/// the apiserver toward kubelets when it has no `--kubelet-certificate-authority`.
#[derive(Debug)]
struct SkipServerVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for SkipServerVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        handshake_signature(&self.0, Tls::V12, message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        handshake_signature(&self.0, Tls::V13, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// A client config that presents `identity` and does not verify the server (see above).
pub fn client_config_skip_verify(
    identity: (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
) -> Result<Arc<rustls::ClientConfig>> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SkipServerVerification(provider())))
        .with_client_auth_cert(identity.0, identity.1)
        .context("the client certificate and key do not match")?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// A client config that presents no certificate and does not verify the server: the kubelet's
/// HTTPS probes (`pkg/probe/http/http.go`, `InsecureSkipVerify: true`, no `Certificates`).
pub fn client_config_skip_verify_anonymous() -> Result<Arc<rustls::ClientConfig>> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .context("TLS versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SkipServerVerification(provider())))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_and_timeouts_are_classified() {
        let e = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(classify_client_error(&e), Outcome::Refused);
        let e = std::io::Error::from(std::io::ErrorKind::TimedOut);
        assert_eq!(classify_client_error(&e), Outcome::Timeout);
    }

    #[test]
    fn unknown_issuer_is_an_untrusted_server_and_logged_as_go_does() {
        let e = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert_eq!(classify_client_error(&e), Outcome::TlsUntrustedServer);
        assert_eq!(go_style(&e), "x509: certificate signed by unknown authority");
        assert_eq!(classify_server_error(&e), Some(Outcome::TlsBadClientCert));
    }

    #[test]
    fn a_peer_closing_before_hello_is_not_a_tls_failure() {
        let e = std::io::Error::from(std::io::ErrorKind::UnexpectedEof);
        assert_eq!(classify_server_error(&e), None);
    }

    #[test]
    fn an_empty_bundle_is_an_error_naming_it() {
        let err = certs_from_pem(b"", "ca.crt").unwrap_err();
        assert!(err.to_string().contains("ca.crt"), "{err}");
    }
}
