//! CA bundles (old+new during a rotation) and the check that a certificate chains to one of a
//! bundle's CAs, the way Go's crypto/x509 (which every Kubernetes component uses) decides it.

use std::collections::HashSet;

use jiff::Timestamp;

use super::{Cert, PkiError, pem};

/// The certificates of a PEM bundle, in order. Anything but `CERTIFICATE` blocks is refused,
/// so that a key never travels inside a bundle.
pub fn split_pem(bundle_pem: &str, origin: &str) -> Result<Vec<Cert>, PkiError> {
    let blocks = pem::parse(bundle_pem)
        .map_err(|e| PkiError::Pem { origin: origin.to_owned(), reason: e.to_string() })?;
    blocks
        .into_iter()
        .enumerate()
        .map(|(index, block)| {
            if block.label != "CERTIFICATE" {
                return Err(PkiError::NotACertificate {
                    origin: origin.to_owned(),
                    label: block.label,
                });
            }
            Cert::from_der(block.der, &format!("{origin} (certificate {})", index + 1))
        })
        .collect()
}

/// How many certificates a PEM bundle holds.
pub fn certs_in(bundle_pem: &str, origin: &str) -> Result<usize, PkiError> {
    split_pem(bundle_pem, origin).map(|certs| certs.len())
}

/// The certificates as one PEM bundle, each once (same DER), in the order first given.
pub fn bundle_certs<'a>(certs: impl IntoIterator<Item = &'a Cert>) -> String {
    let mut seen = HashSet::new();
    certs.into_iter().filter(|cert| seen.insert(cert.der().to_vec())).map(Cert::to_pem).collect()
}

/// The certificates of every PEM text, as one bundle without duplicates, in the order given
/// (so old+new stays old then new, and bundling a bundle again changes nothing).
pub fn bundle(pems: &[&str]) -> Result<String, PkiError> {
    let mut certs = Vec::new();
    for (index, text) in pems.iter().enumerate() {
        certs.extend(split_pem(text, &format!("bundle part {}", index + 1))?);
    }
    Ok(bundle_certs(&certs))
}

/// Why a certificate does not chain to a trusted CA. Each names the certificate by where it
/// came from and its subject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// The certificate's own window does not contain `now`.
    #[error("{cert}: not valid at {now} (valid {not_before} to {not_after})")]
    OutsideValidity {
        /// The certificate.
        cert: String,
        /// The time checked.
        now: Timestamp,
        /// Its notBefore.
        not_before: Timestamp,
        /// Its notAfter.
        not_after: Timestamp,
    },
    /// No trusted CA has the certificate's issuer name.
    #[error("{cert}: issued by {issuer}, which is not among the trusted CAs")]
    UnknownIssuer {
        /// The certificate.
        cert: String,
        /// Its issuer name.
        issuer: String,
    },
    /// Trusted CAs have the issuer's name, but none made the signature.
    #[error(
        "{cert}: no trusted CA named {issuer} made its signature (a different CA of the same name)"
    )]
    BadSignature {
        /// The certificate.
        cert: String,
        /// Its issuer name.
        issuer: String,
    },
    /// The signer is not a CA, cannot sign certificates, or is not valid now.
    #[error("{cert}: its signer {issuer} cannot vouch for it: {reason}")]
    BadIssuer {
        /// The certificate.
        cert: String,
        /// The signer (origin and subject).
        issuer: String,
        /// What the signer lacks.
        reason: String,
    },
}

fn describe(cert: &Cert) -> String {
    format!("{} [{}]", cert.origin(), cert.subject())
}

/// Checks that `cert` is valid at `now` and signed by one of `trusted`, and that this signer
/// is a CA (CA:TRUE) allowed to sign certificates (keyUsage keyCertSign) and valid at `now`.
///
/// Candidates are the trusted CAs whose subject is byte-for-byte the certificate's issuer, as
/// Go matches them; when two CAs share a name (old and new `CN=kubernetes`), the signature
/// decides. kubeadm clusters have no intermediate CAs, so chains are one step long.
pub fn verify_chain(cert: &Cert, trusted: &[Cert], now: Timestamp) -> Result<(), ChainError> {
    if now < cert.not_before() || now > cert.not_after() {
        return Err(ChainError::OutsideValidity {
            cert: describe(cert),
            now,
            not_before: cert.not_before(),
            not_after: cert.not_after(),
        });
    }
    let parsed = cert.parsed();
    let mut signer_problem = None;
    let mut same_name = false;
    for ca in trusted {
        let ca_parsed = ca.parsed();
        if ca_parsed.subject().as_raw() != parsed.issuer().as_raw() {
            continue;
        }
        same_name = true;
        if parsed.verify_signature(Some(ca_parsed.public_key())).is_err() {
            continue;
        }
        let reason = if !ca.is_ca() {
            "it is not a CA (basicConstraints CA:TRUE missing)".to_owned()
        } else if !ca.can_sign_certificates() {
            "its keyUsage lacks keyCertSign".to_owned()
        } else if now < ca.not_before() || now > ca.not_after() {
            format!("it is not valid at {now} (valid {} to {})", ca.not_before(), ca.not_after())
        } else {
            return Ok(());
        };
        signer_problem.get_or_insert(ChainError::BadIssuer {
            cert: describe(cert),
            issuer: describe(ca),
            reason,
        });
    }
    Err(signer_problem.unwrap_or_else(|| {
        if same_name {
            ChainError::BadSignature { cert: describe(cert), issuer: cert.issuer() }
        } else {
            ChainError::UnknownIssuer { cert: describe(cert), issuer: cert.issuer() }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::super::{Ca, KeySpec};
    use super::*;

    #[test]
    fn bundles_keep_first_occurrences_in_order() {
        let now = Timestamp::now();
        let ca =
            |name| Ca::generate(name, KeySpec::EcdsaP256, 1, now, &mut rand_core::OsRng).unwrap();
        let (a, b, c) = (ca("a"), ca("b"), ca("c"));
        let (a, b, c) = (a.cert().clone(), b.cert().clone(), c.cert().clone());
        let text = bundle_certs([&b, &a, &b, &c, &a]);
        let certs = split_pem(&text, "t").unwrap();
        assert_eq!(certs, vec![b.clone(), a.clone(), c.clone()]);
        assert_eq!(certs_in(&text, "t").unwrap(), 3);
        assert_eq!(certs_in("", "t").unwrap(), 0);
        assert_eq!(bundle(&[&text, &a.to_pem()]).unwrap(), text);
        assert_eq!(certs[1].origin(), "t (certificate 2)");
        // Self-signed CAs chain to themselves, and to nothing else.
        verify_chain(&a, &certs, now).unwrap();
        assert!(matches!(verify_chain(&a, &[b, c], now), Err(ChainError::UnknownIssuer { .. })));
    }
}
