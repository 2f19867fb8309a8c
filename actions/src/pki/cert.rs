//! Certificates as values: parsed once when read (so every later look is infallible), compared
//! by their DER, and described by fingerprint and kubeadm's discovery hash.

use std::fmt;
use std::hash::{Hash, Hasher};

use jiff::Timestamp;
use sha2::{Digest as _, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer as _;
use x509_parser::public_key::PublicKey;

use super::der::oid;
use super::{KeySpec, PkiError, pem};

/// One X.509 certificate and where it came from (a path or a description, used in errors).
///
/// Two `Cert`s are equal when their DER is; where they came from does not matter.
#[derive(Clone)]
pub struct Cert {
    der: Vec<u8>,
    origin: String,
    not_before: Timestamp,
    not_after: Timestamp,
}

impl PartialEq for Cert {
    fn eq(&self, other: &Self) -> bool {
        self.der == other.der
    }
}

impl Eq for Cert {}

impl Hash for Cert {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.der.hash(state);
    }
}

impl fmt::Debug for Cert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cert")
            .field("subject", &self.subject())
            .field("issuer", &self.issuer())
            .field("serial", &self.serial_hex())
            .field("not_after", &self.not_after)
            .field("origin", &self.origin)
            .finish()
    }
}

impl Cert {
    /// The first certificate in `pem_text`; other blocks (such as the key in kubelet's
    /// `kubelet-client-current.pem`) are skipped. `origin` names the text in errors.
    pub fn from_pem(pem_text: &str, origin: &str) -> Result<Cert, PkiError> {
        let blocks = pem::parse(pem_text)
            .map_err(|e| PkiError::Pem { origin: origin.to_owned(), reason: e.to_string() })?;
        let block = blocks
            .into_iter()
            .find(|b| b.label == "CERTIFICATE")
            .ok_or_else(|| PkiError::NoCertificate { origin: origin.to_owned() })?;
        Cert::from_der(block.der, origin)
    }

    /// A certificate from its DER encoding.
    pub fn from_der(der: Vec<u8>, origin: &str) -> Result<Cert, PkiError> {
        let invalid = |reason: String| PkiError::Certificate { origin: origin.to_owned(), reason };
        let (not_before, not_after) = {
            let (rest, cert) =
                X509Certificate::from_der(&der).map_err(|e| invalid(e.to_string()))?;
            if !rest.is_empty() {
                return Err(invalid("trailing bytes after the certificate".into()));
            }
            let validity = cert.validity();
            let time = |t: x509_parser::time::ASN1Time| {
                Timestamp::from_second(t.timestamp()).map_err(|e| invalid(e.to_string()))
            };
            // Parse the extensions now too, so that later looks at them cannot fail.
            cert.basic_constraints().map_err(|e| invalid(e.to_string()))?;
            cert.key_usage().map_err(|e| invalid(e.to_string()))?;
            cert.extended_key_usage().map_err(|e| invalid(e.to_string()))?;
            cert.subject_alternative_name().map_err(|e| invalid(e.to_string()))?;
            (time(validity.not_before)?, time(validity.not_after)?)
        };
        Ok(Cert { der, origin: origin.to_owned(), not_before, not_after })
    }

    /// The parsed certificate.
    #[allow(clippy::expect_used)] // Invariant: the DER parsed in `from_der`, the only constructor.
    pub fn parsed(&self) -> X509Certificate<'_> {
        X509Certificate::from_der(&self.der).expect("parsed when the Cert was made").1
    }

    /// The DER encoding.
    pub fn der(&self) -> &[u8] {
        &self.der
    }

    /// The certificate as one PEM block.
    pub fn to_pem(&self) -> String {
        pem::encode("CERTIFICATE", &self.der)
    }

    /// Where the certificate came from, as given when it was read.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The subject, e.g. `O=system:masters, CN=kubernetes-admin`.
    pub fn subject(&self) -> String {
        self.parsed().subject().to_string()
    }

    /// The issuer's name.
    pub fn issuer(&self) -> String {
        self.parsed().issuer().to_string()
    }

    /// The serial number, lower-case hex.
    pub fn serial_hex(&self) -> String {
        hex::encode(self.parsed().raw_serial())
    }

    /// Start of the validity window.
    pub fn not_before(&self) -> Timestamp {
        self.not_before
    }

    /// End of the validity window.
    pub fn not_after(&self) -> Timestamp {
        self.not_after
    }

    /// Whether basicConstraints says CA:TRUE.
    pub fn is_ca(&self) -> bool {
        matches!(self.parsed().basic_constraints(), Ok(Some(bc)) if bc.value.ca)
    }

    /// Whether keyUsage is present and includes keyCertSign.
    pub fn can_sign_certificates(&self) -> bool {
        matches!(self.parsed().key_usage(), Ok(Some(ku)) if ku.value.key_cert_sign())
    }

    /// SHA-256 of the DER, lower-case hex (what `openssl x509 -fingerprint -sha256` shows,
    /// without colons).
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(&self.der))
    }

    /// kubeadm's `--discovery-token-ca-cert-hash` for this CA: `sha256:` and the hex SHA-256 of
    /// the DER SubjectPublicKeyInfo.
    pub fn discovery_hash(&self) -> String {
        format!("sha256:{}", hex::encode(Sha256::digest(self.parsed().public_key().raw)))
    }

    /// The kind and size of the certificate's public key.
    pub fn key_spec(&self) -> Result<KeySpec, PkiError> {
        let cert = self.parsed();
        let spki = cert.public_key();
        let unsupported =
            |what: String| PkiError::UnsupportedKey { origin: self.origin.clone(), what };
        match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => Ok(KeySpec::Rsa { bits: rsa.key_size() }),
            Ok(PublicKey::EC(_)) => {
                let curve = spki
                    .algorithm
                    .parameters
                    .as_ref()
                    .and_then(|p| p.as_oid().ok())
                    .map(|o| o.as_bytes().to_vec());
                match curve.as_deref() {
                    Some(c) if c == oid::P256 => Ok(KeySpec::EcdsaP256),
                    Some(c) if c == oid::P384 => Ok(KeySpec::EcdsaP384),
                    _ => Err(unsupported("ECDSA on a curve other than P-256 or P-384".into())),
                }
            }
            Ok(_) | Err(_) => {
                Err(unsupported(format!("public key algorithm {}", spki.algorithm.algorithm)))
            }
        }
    }

    /// The subjectPublicKey bits (for RSA the RSAPublicKey DER, for ECDSA the point).
    pub(crate) fn subject_public_key_bits(&self) -> Vec<u8> {
        self.parsed().public_key().subject_public_key.data.to_vec()
    }
}
