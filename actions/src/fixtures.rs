//! Test support: a kubeadm node laid out otherwise than kubeadm's defaults, for the tests that
//! check every part of kubeca works where a cluster's files really are.
//!
//! [`elsewhere`] maps each file of kubeadm's layout (path and text, as in `testdata/kubeadm`)
//! to where this layout keeps it and what it says there; [`DROPIN`] is the kubelet drop-in that
//! tells the kubelet so. Every kind of path discovery reads is moved: the pki directory, the
//! apiserver's client CA file (a file of its own), its secure port, the static pod directory,
//! the kubelet's config, kubeconfig, certificate directory (so its client certificate
//! `kubelet-client-current.pem` too), client CA and port, and the control-plane kubeconfigs.

/// Where this layout keeps the pki directory.
pub const PKI: &str = "/srv/k8s/pki";
/// The apiservers' client CA, a file of its own (kubeadm's is `ca.crt`).
pub const APISERVER_CLIENT_CA: &str = "/srv/k8s/pki/client-ca.crt";
/// The apiservers' `--secure-port`.
pub const APISERVER_PORT: u16 = 16443;
/// The kubelet's `staticPodPath`.
pub const STATIC_POD_PATH: &str = "/srv/k8s/manifests";
/// The kubelet's config.
pub const KUBELET_CONFIG: &str = "/srv/kubelet/config.yaml";
/// The kubelet's kubeconfig.
pub const KUBELET_KUBECONFIG: &str = "/srv/kubelet/kubelet.conf";
/// The kubelet's client certificate, in its certificate directory.
pub const KUBELET_CLIENT_CERT: &str = "/srv/kubelet/pki/kubelet-client-current.pem";
/// The kubelet's port.
pub const KUBELET_PORT: u16 = 11250;

/// The kubelet's systemd drop-in for this layout: (path, text).
pub const DROPIN: (&str, &str) = (
    "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf",
    "[Service]\n\
     Environment=\"KUBELET_KUBECONFIG_ARGS=--kubeconfig=/srv/kubelet/kubelet.conf\"\n\
     Environment=\"KUBELET_CONFIG_ARGS=--config=/srv/kubelet/config.yaml\"\n\
     Environment=\"KUBELET_CERT_ARGS=--cert-dir=/srv/kubelet/pki\"\n",
);

/// Moves that apply to every path and every text: (kubeadm's, this layout's).
const MOVES: [(&str, &str); 7] = [
    ("/etc/kubernetes/pki", PKI),
    ("/etc/kubernetes/manifests", STATIC_POD_PATH),
    ("/var/lib/kubelet/pki", "/srv/kubelet/pki"),
    ("/var/lib/kubelet/config.yaml", KUBELET_CONFIG),
    ("/etc/kubernetes/kubelet.conf", KUBELET_KUBECONFIG),
    ("/etc/kubernetes/controller-manager.conf", "/srv/k8s/controller-manager.conf"),
    ("/etc/kubernetes/scheduler.conf", "/srv/k8s/scheduler.conf"),
];

/// Where this layout keeps the file kubeadm keeps at `path` with `text`, and what it says.
pub fn elsewhere(path: &str, text: &str) -> (String, String) {
    let moved = |s: &str| MOVES.iter().fold(s.to_owned(), |s, (from, to)| s.replace(from, to));
    let (path, mut text) = (moved(path), moved(text));
    if path.ends_with("/kube-apiserver.yaml") {
        text = text
            .replace(
                &format!("--client-ca-file={PKI}/ca.crt"),
                &format!("--client-ca-file={APISERVER_CLIENT_CA}"),
            )
            .replace("--secure-port=6443", &format!("--secure-port={APISERVER_PORT}"));
    }
    if path == KUBELET_CONFIG {
        text.push_str(&format!("port: {KUBELET_PORT}\n"));
    }
    (path, text)
}

/// A TLS server on `host` standing for a component: it presents `identity` (certificate DER,
/// key PEM), requires a client certificate signed by `client_ca` (DER) when one is given, and
/// answers every request `200 ok`. Returns its port.
pub async fn tls_server(
    host: &str,
    identity: crate::probe::ClientIdentity,
    client_ca: Option<Vec<u8>>,
) -> u16 {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(CertificateDer::from(ca)).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let config = builder
        .with_single_cert(
            vec![CertificateDer::from(identity.0)],
            PrivateKeyDer::from_pem_slice(identity.1.as_bytes()).unwrap(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind((host, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else { return };
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    let mut buf = [0u8; 512];
                    let _ = tls.read(&mut buf).await;
                    let _ = tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    port
}
