//! TLS probes: what certificate a server presents, and whether it answers, observed through a
//! real handshake rather than assumed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// What a probe saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// Nothing listens (or the connection was reset): the component is down.
    Down,
    /// A TLS server presented this end-entity certificate (DER) and answered `status` to
    /// `GET path` (0 when it did not answer HTTP).
    Up {
        /// The certificate it presented.
        cert: Vec<u8>,
        /// The HTTP status of the request.
        status: u16,
        /// The start of the answer's body, on one line (what a failing `/readyz` says).
        detail: String,
    },
}

impl Seen {
    /// Whether the client certificate presented on the probe authenticated: the server
    /// answered HTTP, and not 401. Go servers (kube-apiserver, the kubelet) take any client
    /// certificate in the handshake (`tls.RequestClientCert`) and answer one their client CA
    /// did not sign with 401 Unauthorized; other servers end the handshake (status 0). A 403
    /// means authenticated, then refused by authorization.
    pub fn authenticated(&self) -> bool {
        matches!(self, Seen::Up { status, .. } if *status != 0 && *status != 401)
    }
}

/// Records the server's certificate and accepts it: the probe *observes* which certificate is
/// served; trust is judged by comparing it with what should be served.
#[derive(Debug)]
struct Capture(Mutex<Option<Vec<u8>>>);

impl ServerCertVerifier for Capture {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(end_entity.to_vec());
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Connects to `host:port`, completes a TLS handshake, and sends `GET path`.
pub async fn probe(host: &str, port: u16, path: &str, timeout: Duration) -> Seen {
    probe_as(host, port, path, timeout, None).await
}

/// A client certificate (DER) and its private key (PEM) to present.
pub type ClientIdentity = (Vec<u8>, String);

/// As [`probe`], presenting `client`. A server that rejects the certificate either ends the
/// connection before answering (status 0) or answers 401: [`Seen::authenticated`] tells.
pub async fn probe_as(
    host: &str,
    port: u16,
    path: &str,
    timeout: Duration,
    client: Option<&ClientIdentity>,
) -> Seen {
    // `timeout` bounds the whole probe, the connect included.
    let start = tokio::time::Instant::now();
    let connect = tokio::net::TcpStream::connect((host, port));
    let Ok(Ok(tcp)) = tokio::time::timeout(timeout, connect).await else {
        return Seen::Down;
    };
    let left = timeout.saturating_sub(start.elapsed());
    probe_over_as(tcp, host, path, left, client).await.unwrap_or(Seen::Down)
}

/// The TLS and HTTP half of [`probe`], over a connection the caller opened (one made from a
/// node, [`crate::node::Node::connect_tcp`]). `host` is the server's address as the far end of
/// `stream` sees it: the name the TLS client gives and the request's `Host`. Down when the
/// handshake does not complete within `timeout`: the far end closed (nothing listens there),
/// reset, or stayed silent.
pub async fn probe_over<S>(stream: S, host: &str, path: &str, timeout: Duration) -> Seen
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    probe_over_as(stream, host, path, timeout, None).await.unwrap_or(Seen::Down)
}

/// As [`probe_over`], presenting `client`, and telling a connection that was refused on its way
/// from a server that is down: an error of kind [`std::io::ErrorKind::PermissionDenied`] that
/// `stream` itself raises before the handshake completes is returned, not read as Down. That is
/// how a connection forwarded through a node's sshd says the sshd refused to forward it
/// ([`crate::node::Forwarded`]); every other failure is Down, as in [`probe_over`].
pub async fn probe_over_as<S>(
    stream: S,
    host: &str,
    path: &str,
    timeout: Duration,
    client: Option<&ClientIdentity>,
) -> std::io::Result<Seen>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout(timeout, attempt(stream, host, path, client)).await {
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::PermissionDenied => Err(e),
        Ok(Ok(seen)) => Ok(seen),
        Ok(Err(_)) | Err(_) => Ok(Seen::Down),
    }
}

/// A TLS handshake over `stream` and `GET path`: what answered, or the I/O error that ended the
/// handshake (a client identity that cannot be used, or a server that presents no
/// certificate, is Down).
async fn attempt<S>(
    stream: S,
    host: &str,
    path: &str,
    client: Option<&ClientIdentity>,
) -> std::io::Result<Seen>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let capture = Arc::new(Capture(Mutex::new(None)));
    let (Some(connector), Ok(name)) =
        (connector(capture.clone(), client), ServerName::try_from(host.to_owned()))
    else {
        return Ok(Seen::Down);
    };
    let mut tls = connector.connect(name, stream).await?;
    let Some(cert) = capture.0.lock().ok().and_then(|c| c.clone()) else {
        return Ok(Seen::Down);
    };
    // An IPv6 address is bracketed in a Host header (RFC 9110, 7.2; RFC 3986, 3.2.2).
    let authority = match host.parse::<std::net::Ipv6Addr>() {
        Ok(_) => format!("[{host}]"),
        Err(_) => host.to_owned(),
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    let mut status = 0;
    let mut detail = String::new();
    if tls.write_all(request.as_bytes()).await.is_ok() {
        // The answer up to 2 KiB: until the server closes the connection, or (a server that
        // keeps it open) until it stays silent for a moment after its first bytes.
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        while answer.len() < 2048 {
            let read = tls.read(&mut buf);
            let n = if answer.is_empty() {
                read.await
            } else {
                match tokio::time::timeout(Duration::from_millis(200), read).await {
                    Ok(r) => r,
                    Err(_) => break,
                }
            };
            match n {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
        let text = String::from_utf8_lossy(&answer);
        status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        if let Some((_, body)) = text.split_once("\r\n\r\n") {
            detail =
                body.split_whitespace().collect::<Vec<_>>().join(" ").chars().take(300).collect();
        }
    }
    Ok(Seen::Up { cert, status, detail })
}

/// A TLS client that records the server's certificate in `capture` and presents `client`, or
/// `None` when `client` cannot be used.
fn connector(
    capture: Arc<Capture>,
    client: Option<&ClientIdentity>,
) -> Option<tokio_rustls::TlsConnector> {
    use rustls::pki_types::PrivateKeyDer;
    use rustls::pki_types::pem::PemObject;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(capture);
    let config = match client {
        Some((cert, key)) => {
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).ok()?;
            builder.with_client_auth_cert(vec![CertificateDer::from(cert.clone())], key).ok()?
        }
        None => builder.with_no_client_auth(),
    };
    Some(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A TLS server on 127.0.0.1 that requires client certificates signed by `client_ca`. It
    /// presents its own CA certificate: the probe observes, it does not judge.
    async fn server(client_ca: &crate::pki::Ca, serving: &crate::pki::Ca) -> u16 {
        let identity = (serving.cert().der().to_vec(), serving.key_pem().to_string());
        let ca = client_ca.cert().der().to_vec();
        crate::fixtures::tls_server("127.0.0.1", identity, Some(ca)).await
    }

    #[tokio::test]
    async fn a_server_accepts_only_clients_of_the_ca_it_trusts() {
        use crate::pki::{Ca, KeyPolicy, KeySpec, reissue};
        let now = jiff::Timestamp::now();
        let rng = &mut rand_core::OsRng;
        let trusted = Ca::generate("trusted", KeySpec::EcdsaP256, 1, now, rng).unwrap();
        let other = Ca::generate("other", KeySpec::EcdsaP256, 1, now, rng).unwrap();
        let serving = Ca::generate("serving", KeySpec::EcdsaP256, 1, now, rng).unwrap();
        let port = server(&trusted, &serving).await;
        // A client certificate: any leaf re-issued by the CA, with a fresh key.
        let leaf_of = |ca: &Ca| {
            let mut params = rcgen::CertificateParams::new(vec!["probe".to_owned()]).unwrap();
            params.is_ca = rcgen::IsCa::NoCa;
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = params.self_signed(&key).unwrap();
            let leaf = crate::pki::Cert::from_der(cert.der().to_vec(), "leaf").unwrap();
            let r = reissue(&leaf, ca, KeyPolicy::New, now, &mut rand_core::OsRng).unwrap();
            (r.cert.der().to_vec(), r.new_key.unwrap().to_pem())
        };
        let good = leaf_of(&trusted);
        let bad = leaf_of(&other);
        let seen = probe_as("127.0.0.1", port, "/", Duration::from_secs(5), Some(&good)).await;
        assert!(matches!(seen, Seen::Up { status: 200, .. }), "{seen:?}");
        let seen = probe_as("127.0.0.1", port, "/", Duration::from_secs(5), Some(&bad)).await;
        assert!(matches!(seen, Seen::Up { status: 0, .. } | Seen::Down), "{seen:?}");
        assert!(!seen.authenticated());
    }

    #[test]
    fn a_401_after_the_handshake_is_not_authenticated_and_a_403_is() {
        let up = |status| Seen::Up { cert: Vec::new(), status, detail: String::new() };
        assert!(up(200).authenticated());
        assert!(up(403).authenticated(), "403: authenticated, not authorized");
        assert!(!up(401).authenticated(), "401: the client CA does not hold the issuer");
        assert!(!up(0).authenticated(), "no HTTP answer: refused in the handshake");
        assert!(!Seen::Down.authenticated());
    }

    #[tokio::test]
    async fn nothing_listening_is_down() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        assert_eq!(probe("127.0.0.1", port, "/readyz", Duration::from_secs(2)).await, Seen::Down);
    }
}
