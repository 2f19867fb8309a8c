//! TLS probes: what certificate a server presents, and whether it answers, observed through a
//! real handshake rather than assumed.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
    },
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
        rustls::crypto::ring::default_provider().signature_verification_algorithms.supported_schemes()
    }
}

/// Connects to `host:port`, completes a TLS handshake, and sends `GET path`.
pub async fn probe(host: &str, port: u16, path: &str, timeout: Duration) -> Seen {
    match tokio::time::timeout(timeout, attempt(host, port, path)).await {
        Ok(Some(seen)) => seen,
        _ => Seen::Down,
    }
}

async fn attempt(host: &str, port: u16, path: &str) -> Option<Seen> {
    let capture = Arc::new(Capture(Mutex::new(None)));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .dangerous()
        .with_custom_certificate_verifier(capture.clone())
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect((host, port)).await.ok()?;
    let name = ServerName::try_from(host.to_owned()).ok()?;
    let mut tls = connector.connect(name, tcp).await.ok()?;
    let cert = capture.0.lock().ok()?.clone()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let mut status = 0;
    if tls.write_all(request.as_bytes()).await.is_ok() {
        let mut head = vec![0u8; 64];
        if let Ok(n) = tls.read(&mut head).await {
            let text = String::from_utf8_lossy(&head[..n]);
            status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        }
    }
    Some(Seen::Up { cert, status })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn nothing_listening_is_down() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        assert_eq!(probe("127.0.0.1", port, "/readyz", Duration::from_secs(2)).await, Seen::Down);
    }
}
