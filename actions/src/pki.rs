//! Certificates: generate or import CAs, re-issue leaves under a new CA, bundles, chain checks (rcgen, x509-parser).
//!
//! The rotation needs four things from its PKI, and each lives in a submodule:
//!
//! - a new cluster CA and front-proxy CA, generated with the old CA's key kind or imported from
//!   files the user gives ([`Ca`], [`KeyAlgorithm`], [`KeySpec`]);
//! - every leaf certificate re-issued by the new CA with everything but its issuer, serial,
//!   validity window and signature kept ([`reissue`]);
//! - old+new bundles and the check that a certificate chains to one of a bundle's CAs
//!   ([`bundle`], [`verify_chain`]);
//! - preflight refusals: a CA key that is not the certificate's, an expired CA, a file that does
//!   not parse; every error names the file (or the description it was given) and says what to do.
//!
//! Time and randomness come in as parameters (`now`, a serial source) so callers and tests
//! decide them. Private keys print as `[redacted]` in `Debug` and are written only by
//! [`SecretKey::to_pem`].
//!
//! ```
//! use actions::pki::{self, Ca, KeyPolicy, KeySpec};
//! let now = jiff::Timestamp::now();
//! let ca = Ca::generate("kubernetes", KeySpec::EcdsaP256, 3650, now, &mut rand_core::OsRng)?;
//! assert!(ca.cert().is_ca());
//! assert!(ca.cert().discovery_hash().starts_with("sha256:"));
//! # Ok::<(), pki::PkiError>(())
//! ```

mod ca;
mod cert;
mod chain;
mod der;
mod key;
mod pem;
mod reissue;

use jiff::Timestamp;

pub use ca::Ca;
pub use cert::Cert;
pub use chain::{ChainError, bundle, bundle_certs, certs_in, split_pem, verify_chain};
pub use key::{KeyAlgorithm, KeyFormat, KeySpec, SecretKey, UnknownKeyAlgorithm};
pub use reissue::{KeyPolicy, Reissued, reissue};

/// How far back new certificates' `notBefore` is set, so that a node whose clock is a little
/// behind does not see them as not yet valid (kubeadm backdates by the same amount).
pub const BACKDATE: jiff::SignedDuration = jiff::SignedDuration::from_mins(5);

/// Why a certificate or key could not be read, accepted, made or checked. `origin` is the path
/// or description the text was given with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PkiError {
    /// The text is not well-formed PEM.
    #[error(
        "{origin}: not readable as PEM ({reason}); give the file as kubeadm or openssl wrote it"
    )]
    Pem {
        /// Where the text came from.
        origin: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No `CERTIFICATE` block.
    #[error("{origin}: holds no CERTIFICATE block; give a PEM certificate file")]
    NoCertificate {
        /// Where the text came from.
        origin: String,
    },
    /// A `CERTIFICATE` block that is not an X.509 certificate.
    #[error("{origin}: not a valid X.509 certificate ({reason})")]
    Certificate {
        /// Where the certificate came from.
        origin: String,
        /// What the parser said.
        reason: String,
    },
    /// A bundle holds something other than certificates.
    #[error("{origin}: holds a {label} block; a CA bundle holds certificates only")]
    NotACertificate {
        /// Where the bundle came from.
        origin: String,
        /// The PEM label found.
        label: String,
    },
    /// No private key block.
    #[error("{origin}: holds no private key (found: {found:?}); give the PEM key file")]
    NoPrivateKey {
        /// Where the text came from.
        origin: String,
        /// Labels of the blocks that were there.
        found: Vec<String>,
    },
    /// The key is encrypted.
    #[error(
        "{origin}: the private key is encrypted; decrypt it (`openssl pkey -in KEY -out PLAIN`, \
         kept mode 0600) and give the plain key"
    )]
    EncryptedKey {
        /// Where the key came from.
        origin: String,
    },
    /// The key block does not hold a usable key.
    #[error("{origin}: not a usable private key ({reason})")]
    PrivateKey {
        /// Where the key came from.
        origin: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A key kind kubeadm clusters do not use.
    #[error(
        "{origin}: {what} is not supported; kubeca handles RSA (2048 to 8192 bits) and ECDSA \
         P-256 and P-384, the kinds kubeadm makes"
    )]
    UnsupportedKey {
        /// Where the key or certificate came from.
        origin: String,
        /// The kind found.
        what: String,
    },
    /// A CA was expected and basicConstraints does not say CA:TRUE.
    #[error(
        "{origin}: not a CA certificate (basicConstraints CA:TRUE is missing); give the CA's \
         certificate, not a leaf's"
    )]
    NotCa {
        /// Where the certificate came from.
        origin: String,
    },
    /// A CA whose keyUsage does not allow signing certificates.
    #[error(
        "{origin}: keyUsage lacks keyCertSign, so clients would refuse what this CA signs; \
         make the CA with keyUsage keyCertSign"
    )]
    NoKeyCertSign {
        /// Where the certificate came from.
        origin: String,
    },
    /// An RSA key too small for a new CA.
    #[error(
        "{origin}: a {bits}-bit RSA key is too weak for a new CA; use at least 2048 bits, or \
         let kubeca generate the CA"
    )]
    WeakKey {
        /// Where the certificate came from.
        origin: String,
        /// The modulus size.
        bits: usize,
    },
    /// The key is not the certificate's.
    #[error(
        "{key} is not the private key of {cert}: their public keys differ; give the key that \
         was made with this certificate"
    )]
    KeyMismatch {
        /// Where the certificate came from.
        cert: String,
        /// Where the key came from.
        key: String,
    },
    /// A CA past its notAfter.
    #[error(
        "{origin}: expired at {not_after}; an expired CA is no longer trusted by anything, so \
         this is a recovery (new cluster PKI), not a rotation"
    )]
    Expired {
        /// Where the certificate came from.
        origin: String,
        /// When it expired.
        not_after: Timestamp,
    },
    /// A CA before its notBefore.
    #[error("{origin}: not valid before {not_before}; check this machine's clock and the CA's")]
    NotYetValid {
        /// Where the certificate came from.
        origin: String,
        /// When it becomes valid.
        not_before: Timestamp,
    },
    /// A CA certificate was given where a leaf was expected.
    #[error("{origin}: is a CA certificate; only leaf certificates are re-issued")]
    IsCa {
        /// Where the certificate came from.
        origin: String,
    },
    /// The requested validity does not fit.
    #[error("{what}: invalid validity ({reason})")]
    Validity {
        /// What was being made.
        what: String,
        /// What is wrong.
        reason: String,
    },
    /// Key generation failed.
    #[error("could not generate a {spec} key: {reason}")]
    KeyGeneration {
        /// The kind asked for.
        spec: KeySpec,
        /// What failed.
        reason: String,
    },
    /// Signing failed.
    #[error("could not sign {what}: {reason}")]
    Signing {
        /// What was being signed.
        what: String,
        /// What failed.
        reason: String,
    },
}

/// A fresh certificate serial: 16 random bytes, positive (RFC 5280 §4.1.2.2 asks for at most 20
/// octets, positive, and unpredictable serials).
pub(crate) fn random_serial(rng: &mut impl rand_core::RngCore) -> [u8; 16] {
    let mut serial = [0u8; 16];
    rng.fill_bytes(&mut serial);
    // Clear the sign bit; keep the first byte non-zero so the serial keeps its full length.
    serial[0] = (serial[0] & 0x7f).max(1);
    serial
}
