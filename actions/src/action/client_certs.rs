//! `CheckClientCerts`: before the old CA is dropped, who still authenticates with a client
//! certificate it signed. Kubelets with `rotateCertificates: true` renew their own client
//! certificates through the CSR API (client-go's certificate manager, at 70–90 % of their
//! lifetime) and the leader controller-manager signs them with `--cluster-signing-cert-file`
//! (`pkg/controller/certificates/signer`), so a certificate kubeca re-issued in trust-nodes can
//! have been replaced since by one of the old CA (a renewal before the switch, upstream 9.3,
//! pointed the signer at the new CA), and any other holder of a certificate approved since the
//! rotation began (a node that joined, a user's `kubectl certificate approve`) may hold one of
//! the old CA too. After finalize the apiservers refuse them all (HTTP 401): the node goes
//! NotReady, the user is locked out. So the gate refuses while any is left.

use super::*;
use crate::api::IssuedCsr;
use crate::edit::Kubeconfig;
use crate::pki::{self, Cert};

/// One certificate the gate refuses: a kubelet's `what` ("client", "serving") certificate.
fn refusal_for_node(node: &str, what: &str, path: &str, cert: &Cert) -> String {
    format!(
        "node {node}: its kubelet's {what} certificate {path} (serial {}, issuer {}, valid from \
         {}) is not of the new CA",
        cert.serial_hex(),
        cert.issuer(),
        cert.not_before()
    )
}

/// The first certificate of a PEM text, named `origin`.
fn leaf(pem: &str, origin: &str) -> Result<Cert, Error> {
    Ok(Cert::from_pem(pem, origin)?)
}

/// What to do about what was found (kubeadm's troubleshooting guide for a kubelet whose client
/// certificate cannot be renewed: write a kubelet.conf with a certificate of the current CA).
const REMEDY: &str = "Nothing is dropped while they remain. A node's kubelet renews its \
    certificate itself before its rotation deadline, and the controller-manager now signs with \
    the new CA; to renew now, give the node a kubelet.conf with a certificate of the new CA \
    (on a control plane: `kubeadm kubeconfig user --org system:nodes --client-name \
    system:node:<node>`) and restart its kubelet. A serving certificate the kubelet keeps \
    through the CSR API (serverTLSBootstrap) is renewed by removing its current file \
    (kubelet-server-current.pem) and restarting the kubelet, which asks for a new one that \
    someone must approve (`kubectl certificate approve <name>`). A request approved for someone \
    else must be answered by a new request once the signer uses the new CA, and the old one \
    deleted (`kubectl delete csr <name>`). Then `kubeca run` checks again; `kubeca rollback` \
    returns to the old CA instead.";

/// A kubelet's current certificate: node, what it is ("client", "serving"), file, certificate.
pub(super) type KubeletCert = (String, &'static str, String, Cert);

/// The refusals for kubelets' current certificates `kubelets` and issued requests `issued`:
/// every kubelet certificate not of `new`, every request's certificate of `old`.
pub(super) fn refusals(
    kubelets: &[KubeletCert],
    issued: &[IssuedCsr],
    new: &Cert,
    old: &Cert,
    now: jiff::Timestamp,
) -> Result<Vec<String>, Error> {
    let mut refused = Vec::new();
    for (node, what, path, cert) in kubelets {
        if pki::verify_chain(cert, std::slice::from_ref(new), now).is_err() {
            refused.push(refusal_for_node(node, what, path, cert));
        }
    }
    for csr in issued {
        let cert = leaf(&csr.certificate, &format!("certificate signing request {}", csr.name))?;
        if pki::verify_chain(&cert, std::slice::from_ref(old), now).is_ok() {
            refused.push(format!(
                "certificate signing request {} of {} (signer {}) was approved at {} and signed \
                 by the old CA (serial {}, subject {})",
                csr.name,
                csr.requester,
                csr.signer,
                csr.approved_at,
                cert.serial_hex(),
                cert.subject()
            ));
        }
    }
    Ok(refused)
}

pub mod check_client_certs {
    use super::*;

    /// Reads every kubelet's current client certificate and the issued certificate signing
    /// requests approved since the new CA was made; fails naming each holder of the old CA.
    pub async fn apply<N: Node>(r: &Rotation<N>) -> Result<Summary, Error> {
        let now = jiff::Timestamp::now();
        let new = r.new_ca(CaKind::Cluster)?.cert().clone();
        let old = Cert::from_pem(&r.old_cert(CaKind::Cluster)?, "the old cluster CA")?;
        let mut kubelets = Vec::new();
        for name in r.nodes.keys() {
            let layout = &r.topology.layout(name).kubelet;
            let Some(kc) = r.read_on(Some(name), &layout.kubeconfig).await? else {
                tracing::warn!(node = %name, kubeconfig = %layout.kubeconfig, "no kubelet kubeconfig: no kubelet client certificate to check");
                continue;
            };
            let origin = format!("{name}:{}", layout.kubeconfig);
            let k = Kubeconfig::parse(&origin, &runner::text(kc))?;
            let (path, pem) = match k.client_cert_data()? {
                Some(pem) => (layout.kubeconfig.clone(), pem),
                None => {
                    let file = k.client_files().0.unwrap_or_else(|| layout.client_cert.clone());
                    let pem = r.must_read(Some(name), &file).await?;
                    (file, pem)
                }
            };
            let cert = leaf(&pem, &format!("{name}:{path}"))?;
            kubelets.push((name.clone(), "client", path, cert));
            // A serving certificate from the CSR API was re-issued in trust-nodes; its
            // certificate manager may have renewed it since, signed by the old CA (a renewal
            // before the switch), which whoever verifies kubelets refuses after finalize.
            if layout.serving_bootstrap {
                let path = layout.serving_cert.clone();
                let pem = r.must_read(Some(name), &path).await?;
                let cert = leaf(&pem, &format!("{name}:{path}"))?;
                kubelets.push((name.clone(), "serving", path, cert));
            }
        }
        // The new CA is backdated (as kubeadm's); anything approved since its NotBefore came
        // after the rotation began.
        let issued = r.api().await?.issued_csrs_since(new.not_before()).await?;
        let refused = refusals(&kubelets, &issued, &new, &old, now)?;
        if !refused.is_empty() {
            return Err(Error::terminal(format!(
                "the old CA cannot be dropped: {} certificate(s) of it are in use or were \
                 issued since the rotation began:\n  {}\n{REMEDY}",
                refused.len(),
                refused.join("\n  ")
            )));
        }
        tracing::info!(
            kubelets = kubelets.len(),
            csrs = issued.len(),
            "every kubelet's client certificate is of the new CA; no certificate of the old CA \
             was issued since the rotation began"
        );
        Ok(Summary::new()
            .with("kubelet-client-certs", kubelets.len().to_string())
            .with("csrs-issued-since", issued.len().to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{Ca, KeyPolicy, KeySpec};

    #[test]
    fn kubelets_off_the_new_ca_and_requests_signed_by_the_old_are_refused_by_name() {
        let now = jiff::Timestamp::now();
        let rng = &mut rand_core::OsRng;
        let old = Ca::generate("kubernetes", KeySpec::EcdsaP256, 10, now, rng).unwrap();
        let new = Ca::generate("kubernetes@1", KeySpec::EcdsaP256, 10, now, rng).unwrap();
        let kp = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, "system:node:w-2");
        let template = Cert::from_pem(&params.self_signed(&kp).unwrap().pem(), "t").unwrap();
        let mut leaf_of =
            |ca: &Ca| pki::reissue(&template, ca, KeyPolicy::Keep, now, rng).unwrap().cert;
        let (by_old, by_new) = (leaf_of(&old), leaf_of(&new));
        let current = |what: &'static str, node: &str, cert: &Cert| {
            let file = if what == "client" { "client" } else { "server" };
            let path = format!("/var/lib/kubelet/pki/kubelet-{file}-current.pem");
            (node.to_string(), what, path, cert.clone())
        };
        let kubelets = vec![
            current("client", "w-1", &by_new),
            current("serving", "w-1", &by_new),
            current("client", "w-2", &by_old),
            current("serving", "w-2", &by_old),
        ];
        let csr = |name: &str, cert: &Cert| IssuedCsr {
            name: name.into(),
            requester: "system:node:w-3".into(),
            signer: "kubernetes.io/kube-apiserver-client-kubelet".into(),
            approved_at: now.to_string(),
            certificate: cert.to_pem(),
        };
        let issued = vec![csr("csr-new", &by_new), csr("csr-old", &by_old)];
        let refused = refusals(&kubelets, &issued, new.cert(), old.cert(), now).unwrap();
        assert_eq!(refused.len(), 3, "{refused:?}");
        assert!(refused[0].starts_with("node w-2: its kubelet's client certificate /var/lib/kubelet/pki/kubelet-client-current.pem"), "{}", refused[0]);
        assert!(refused[1].starts_with("node w-2: its kubelet's serving certificate /var/lib/kubelet/pki/kubelet-server-current.pem"), "{}", refused[1]);
        assert!(
            refused[2].contains("certificate signing request csr-old of system:node:w-3"),
            "{}",
            refused[2]
        );
        assert!(
            refusals(&kubelets[..2], &issued[..1], new.cert(), old.cert(), now).unwrap().is_empty()
        );
    }
}
