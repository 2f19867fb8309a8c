//! Private keys: reading kubeadm's and openssl's PEM forms (PKCS#1, SEC1, PKCS#8), generating keys
//! of a given kind, writing them back in the form the old key used, and never printing them.

use std::fmt;
use std::str::FromStr;

use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PublicKeyData as _};
use serde::{Deserialize, Serialize};

use super::der::{self, oid, tag};
use super::{Cert, PkiError, pem};

/// The key algorithm asked for a new CA (`rotation.key_algorithm` in the inventory).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum KeyAlgorithm {
    /// The same kind and size as the CA being replaced.
    #[default]
    #[serde(rename = "same-as-old")]
    SameAsOld,
    /// ECDSA on P-256 with SHA-256.
    #[serde(rename = "ecdsa-p256")]
    EcdsaP256,
    /// RSA, 2048-bit modulus.
    #[serde(rename = "rsa-2048")]
    Rsa2048,
    /// RSA, 4096-bit modulus.
    #[serde(rename = "rsa-4096")]
    Rsa4096,
}

impl KeyAlgorithm {
    /// Every accepted name, in the order the documentation lists them.
    pub const NAMES: [&'static str; 4] = ["same-as-old", "ecdsa-p256", "rsa-2048", "rsa-4096"];

    /// The name used in the inventory.
    pub fn name(self) -> &'static str {
        match self {
            KeyAlgorithm::SameAsOld => "same-as-old",
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::Rsa2048 => "rsa-2048",
            KeyAlgorithm::Rsa4096 => "rsa-4096",
        }
    }

    /// The concrete key kind: `same-as-old` takes the kind and size of `old_ca`'s key.
    pub fn resolve(self, old_ca: &Cert) -> Result<KeySpec, PkiError> {
        Ok(match self {
            KeyAlgorithm::SameAsOld => old_ca.key_spec()?,
            KeyAlgorithm::EcdsaP256 => KeySpec::EcdsaP256,
            KeyAlgorithm::Rsa2048 => KeySpec::Rsa { bits: 2048 },
            KeyAlgorithm::Rsa4096 => KeySpec::Rsa { bits: 4096 },
        })
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown `key_algorithm` name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown key algorithm {0:?}; use one of same-as-old, ecdsa-p256, rsa-2048, rsa-4096")]
pub struct UnknownKeyAlgorithm(pub String);

impl FromStr for KeyAlgorithm {
    type Err = UnknownKeyAlgorithm;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            KeyAlgorithm::SameAsOld,
            KeyAlgorithm::EcdsaP256,
            KeyAlgorithm::Rsa2048,
            KeyAlgorithm::Rsa4096,
        ]
        .into_iter()
        .find(|a| a.name() == s)
        .ok_or_else(|| UnknownKeyAlgorithm(s.to_owned()))
    }
}

/// A concrete key kind and size: what a key is, or what one is to be generated as.
///
/// These are kubeadm's choices (`encryptionAlgorithm`: RSA-2048, RSA-3072, RSA-4096,
/// ECDSA-P256, ECDSA-P384); any RSA size ring can sign with (2048 to 8192 bits) is accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeySpec {
    /// ECDSA on P-256; certificates are signed with SHA-256.
    EcdsaP256,
    /// ECDSA on P-384; certificates are signed with SHA-384.
    EcdsaP384,
    /// RSA with a modulus of `bits` bits; certificates are signed with SHA-256 (PKCS#1 v1.5).
    Rsa {
        /// Modulus size.
        bits: usize,
    },
}

impl KeySpec {
    /// The PEM form kubeadm writes keys of this kind in: PKCS#1 for RSA, SEC1 for ECDSA.
    pub fn kubeadm_format(self) -> KeyFormat {
        match self {
            KeySpec::Rsa { .. } => KeyFormat::Pkcs1,
            KeySpec::EcdsaP256 | KeySpec::EcdsaP384 => KeyFormat::Sec1,
        }
    }
}

impl fmt::Display for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySpec::EcdsaP256 => f.write_str("ecdsa-p256"),
            KeySpec::EcdsaP384 => f.write_str("ecdsa-p384"),
            KeySpec::Rsa { bits } => write!(f, "rsa-{bits}"),
        }
    }
}

/// The PEM container a private key is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyFormat {
    /// `BEGIN RSA PRIVATE KEY` (RFC 8017), what kubeadm writes for RSA keys.
    Pkcs1,
    /// `BEGIN EC PRIVATE KEY` (RFC 5915), what kubeadm writes for ECDSA keys.
    Sec1,
    /// `BEGIN PRIVATE KEY` (RFC 5208), what openssl 3 writes by default.
    Pkcs8,
}

impl KeyFormat {
    /// The PEM label of this form.
    pub fn label(self) -> &'static str {
        match self {
            KeyFormat::Pkcs1 => "RSA PRIVATE KEY",
            KeyFormat::Sec1 => "EC PRIVATE KEY",
            KeyFormat::Pkcs8 => "PRIVATE KEY",
        }
    }

    /// The form of the first private key in `pem_text`, to write a replacement the same way.
    pub fn of_pem(pem_text: &str) -> Option<KeyFormat> {
        pem_text.lines().find_map(|line| match line.trim() {
            "-----BEGIN RSA PRIVATE KEY-----" => Some(KeyFormat::Pkcs1),
            "-----BEGIN EC PRIVATE KEY-----" => Some(KeyFormat::Sec1),
            "-----BEGIN PRIVATE KEY-----" => Some(KeyFormat::Pkcs8),
            _ => None,
        })
    }
}

/// A private key. Its `Debug` shows the kind and where it came from, never the key.
pub struct SecretKey {
    pair: KeyPair,
    spec: KeySpec,
    format: KeyFormat,
    origin: String,
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("spec", &self.spec)
            .field("format", &self.format)
            .field("origin", &self.origin)
            .field("material", &"[redacted]")
            .finish()
    }
}

impl SecretKey {
    /// Reads the first private key in `pem_text`; `origin` (a path or a description) names it in
    /// errors. Encrypted keys are refused: kubeadm never writes them.
    pub fn from_pem(pem_text: &str, origin: &str) -> Result<SecretKey, PkiError> {
        let blocks = pem::parse(pem_text)
            .map_err(|e| PkiError::Pem { origin: origin.to_owned(), reason: e.to_string() })?;
        let key_error = |reason: String| PkiError::PrivateKey { origin: origin.to_owned(), reason };
        for block in &blocks {
            let format = match block.label.as_str() {
                "RSA PRIVATE KEY" => KeyFormat::Pkcs1,
                "EC PRIVATE KEY" => KeyFormat::Sec1,
                "PRIVATE KEY" => KeyFormat::Pkcs8,
                "ENCRYPTED PRIVATE KEY" => {
                    return Err(PkiError::EncryptedKey { origin: origin.to_owned() });
                }
                _ => continue,
            };
            if block.has_headers {
                return Err(PkiError::EncryptedKey { origin: origin.to_owned() });
            }
            let pkcs8 = match format {
                KeyFormat::Pkcs1 => pkcs1_to_pkcs8(&block.der),
                KeyFormat::Sec1 => sec1_to_pkcs8(&block.der).map_err(key_error)?,
                KeyFormat::Pkcs8 => block.der.clone(),
            };
            let pair = KeyPair::try_from(pkcs8.as_slice()).map_err(|e| key_error(e.to_string()))?;
            let spec = spec_of(&pair, origin)?;
            return Ok(SecretKey { pair, spec, format, origin: origin.to_owned() });
        }
        Err(PkiError::NoPrivateKey {
            origin: origin.to_owned(),
            found: blocks.iter().map(|b| b.label.clone()).collect(),
        })
    }

    /// A new key of kind `spec` from the operating system's random source, to be written in
    /// kubeadm's form for that kind. `origin` names it in errors (e.g. "new cluster CA key").
    pub fn generate(spec: KeySpec, origin: &str) -> Result<SecretKey, PkiError> {
        let keygen = |reason: String| PkiError::KeyGeneration { spec, reason };
        let pair =
            match spec {
                KeySpec::EcdsaP256 => KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
                    .map_err(|e| keygen(e.to_string()))?,
                KeySpec::EcdsaP384 => KeyPair::generate_for(&PKCS_ECDSA_P384_SHA384)
                    .map_err(|e| keygen(e.to_string()))?,
                KeySpec::Rsa { bits } => {
                    // ring cannot generate RSA keys; the rsa crate does, and ring then signs.
                    use rsa::pkcs8::EncodePrivateKey as _;
                    if !(2048..=8192).contains(&bits) {
                        return Err(keygen("RSA keys must have 2048 to 8192 bits".into()));
                    }
                    let key = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, bits)
                        .map_err(|e| keygen(e.to_string()))?;
                    let pkcs8 = key.to_pkcs8_der().map_err(|e| keygen(e.to_string()))?;
                    KeyPair::try_from(pkcs8.as_bytes()).map_err(|e| keygen(e.to_string()))?
                }
            };
        Ok(SecretKey { pair, spec, format: spec.kubeadm_format(), origin: origin.to_owned() })
    }

    /// What kind of key this is.
    pub fn spec(&self) -> KeySpec {
        self.spec
    }

    /// The PEM form [`SecretKey::to_pem`] writes.
    pub fn format(&self) -> KeyFormat {
        self.format
    }

    /// Where the key came from, as given when it was read or generated.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The same key, to be written in `format`; PKCS#1 holds only RSA keys and SEC1 only ECDSA.
    pub fn with_format(mut self, format: KeyFormat) -> Result<SecretKey, PkiError> {
        let fits = match format {
            KeyFormat::Pkcs8 => true,
            KeyFormat::Pkcs1 => matches!(self.spec, KeySpec::Rsa { .. }),
            KeyFormat::Sec1 => !matches!(self.spec, KeySpec::Rsa { .. }),
        };
        if !fits {
            return Err(PkiError::PrivateKey {
                origin: self.origin,
                reason: format!("a {} key cannot be written as {}", self.spec, format.label()),
            });
        }
        self.format = format;
        Ok(self)
    }

    /// The key as PEM in [`SecretKey::format`]. This is secret: write it with mode 0600 and
    /// never log it.
    pub fn to_pem(&self) -> String {
        let pkcs8 = self.pair.serialized_der();
        let der = match self.format {
            KeyFormat::Pkcs8 => pkcs8.to_vec(),
            KeyFormat::Pkcs1 | KeyFormat::Sec1 => match unwrap_pkcs8(pkcs8) {
                Ok(inner) if self.format == KeyFormat::Pkcs1 => inner.key.to_vec(),
                Ok(inner) => sec1_with_curve(inner.key, inner.curve),
                // The DER came from ring or the rsa crate, both of which write PKCS#8 as
                // RFC 5208 says; falling back to PKCS#8 keeps the key usable if that ever changed.
                Err(_) => return pem::encode(KeyFormat::Pkcs8.label(), pkcs8),
            },
        };
        pem::encode(self.format.label(), &der)
    }

    /// The DER SubjectPublicKeyInfo of the public half.
    pub fn public_key_info_der(&self) -> Vec<u8> {
        self.pair.subject_public_key_info()
    }

    /// Whether this key is the private half of `cert`'s public key.
    pub fn matches(&self, cert: &Cert) -> bool {
        // ring checked on loading that the private and public parts of the key agree, so
        // comparing public keys is comparing the pair.
        cert.subject_public_key_bits() == self.pair.public_key_raw()
    }

    pub(crate) fn pair(&self) -> &KeyPair {
        &self.pair
    }
}

fn spec_of(pair: &KeyPair, origin: &str) -> Result<KeySpec, PkiError> {
    let alg = pair.algorithm();
    if alg == &PKCS_ECDSA_P256_SHA256 {
        return Ok(KeySpec::EcdsaP256);
    }
    if alg == &PKCS_ECDSA_P384_SHA384 {
        return Ok(KeySpec::EcdsaP384);
    }
    if alg == &rcgen::PKCS_RSA_SHA256 {
        // ring's raw RSA public key is RSAPublicKey ::= SEQUENCE { modulus, publicExponent }.
        let bits = der::expect_only(pair.public_key_raw(), tag::SEQUENCE)
            .and_then(|seq| der::expect(seq, tag::INTEGER))
            .map(|(modulus, _)| der::integer_bits(modulus))
            .map_err(|e| PkiError::PrivateKey {
                origin: origin.to_owned(),
                reason: e.to_string(),
            })?;
        return Ok(KeySpec::Rsa { bits });
    }
    Err(PkiError::UnsupportedKey { origin: origin.to_owned(), what: format!("{alg:?}") })
}

/// PrivateKeyInfo ::= SEQUENCE { 0, AlgorithmIdentifier { rsaEncryption, NULL }, OCTET STRING }.
fn pkcs1_to_pkcs8(pkcs1: &[u8]) -> Vec<u8> {
    let alg = der::sequence(&[&der::oid(oid::RSA_ENCRYPTION), &der::tlv(tag::NULL, &[])]);
    der::sequence(&[&der::unsigned_integer(&[0]), &alg, &der::tlv(tag::OCTET_STRING, pkcs1)])
}

/// Wraps SEC1's ECPrivateKey in PKCS#8, taking the curve from its `[0] parameters`.
fn sec1_to_pkcs8(sec1: &[u8]) -> Result<Vec<u8>, String> {
    let curve = sec1_curve(sec1).map_err(|e| format!("not an EC private key ({e})"))?.ok_or(
        "the EC private key names no curve; write it with `openssl ec -param_enc named_curve`",
    )?;
    let alg = der::sequence(&[&der::oid(oid::EC_PUBLIC_KEY), &der::oid(curve)]);
    Ok(der::sequence(&[&der::unsigned_integer(&[0]), &alg, &der::tlv(tag::OCTET_STRING, sec1)]))
}

/// ECPrivateKey ::= SEQUENCE { version, privateKey OCTET STRING, [0] parameters OPTIONAL,
/// [1] publicKey OPTIONAL }: the named curve's OID content, if present.
fn sec1_curve(sec1: &[u8]) -> Result<Option<&[u8]>, der::DerError> {
    let body = der::expect_only(sec1, tag::SEQUENCE)?;
    let (_, rest) = der::expect(body, tag::INTEGER)?;
    let (_, mut rest) = der::expect(rest, tag::OCTET_STRING)?;
    while !rest.is_empty() {
        let (element, next) = der::read(rest)?;
        if element.tag == tag::CONTEXT_0 {
            return der::expect_only(element.value, tag::OID).map(Some);
        }
        rest = next;
    }
    Ok(None)
}

struct Pkcs8Inner<'a> {
    key: &'a [u8],
    /// The named curve of an EC key.
    curve: Option<&'a [u8]>,
}

fn unwrap_pkcs8(pkcs8: &[u8]) -> Result<Pkcs8Inner<'_>, der::DerError> {
    let body = der::expect_only(pkcs8, tag::SEQUENCE)?;
    let (_, rest) = der::expect(body, tag::INTEGER)?;
    let (alg, rest) = der::expect(rest, tag::SEQUENCE)?;
    let (alg_oid, params) = der::expect(alg, tag::OID)?;
    let curve = if alg_oid == oid::EC_PUBLIC_KEY {
        Some(der::expect_only(params, tag::OID)?)
    } else {
        None
    };
    let (key, _) = der::expect(rest, tag::OCTET_STRING)?;
    Ok(Pkcs8Inner { key, curve })
}

/// SEC1 inside PKCS#8 usually omits `[0] parameters` (the outer AlgorithmIdentifier names the
/// curve); a stand-alone SEC1 file needs them, or openssl cannot load it.
fn sec1_with_curve(sec1: &[u8], curve: Option<&[u8]>) -> Vec<u8> {
    let (Ok(None), Some(curve)) = (sec1_curve(sec1), curve) else { return sec1.to_vec() };
    let Ok(body) = der::expect_only(sec1, tag::SEQUENCE) else { return sec1.to_vec() };
    let mut elements = Vec::new();
    let mut rest = body;
    while !rest.is_empty() {
        let Ok((element, next)) = der::read(rest) else { return sec1.to_vec() };
        elements.push(der::tlv(element.tag, element.value));
        rest = next;
    }
    if elements.len() < 2 {
        return sec1.to_vec();
    }
    elements.insert(2, der::tlv(tag::CONTEXT_0, &der::oid(curve)));
    let parts: Vec<&[u8]> = elements.iter().map(Vec::as_slice).collect();
    der::sequence(&parts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_names_parse_and_serialize_as_in_the_inventory() {
        for name in KeyAlgorithm::NAMES {
            let alg: KeyAlgorithm = name.parse().unwrap();
            assert_eq!(alg.to_string(), name);
            assert_eq!(serde_json::to_string(&alg).unwrap(), format!("\"{name}\""));
            assert_eq!(serde_json::from_str::<KeyAlgorithm>(&format!("\"{name}\"")).unwrap(), alg);
        }
        assert!("dsa".parse::<KeyAlgorithm>().unwrap_err().to_string().contains("rsa-2048"));
    }

    #[test]
    fn ec_keys_round_trip_through_every_form_and_debug_redacts() {
        let key = SecretKey::generate(KeySpec::EcdsaP256, "test key").unwrap();
        assert_eq!(key.format(), KeyFormat::Sec1);
        let sec1 = key.to_pem();
        assert!(sec1.starts_with("-----BEGIN EC PRIVATE KEY-----"));
        let back = SecretKey::from_pem(&sec1, "sec1").unwrap();
        assert_eq!(back.public_key_info_der(), key.public_key_info_der());
        assert_eq!(back.format(), KeyFormat::Sec1);
        let pkcs8 = back.with_format(KeyFormat::Pkcs8).unwrap().to_pem();
        assert!(pkcs8.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_eq!(
            SecretKey::from_pem(&pkcs8, "p8").unwrap().public_key_info_der(),
            key.public_key_info_der()
        );
        let debug = format!("{key:?}");
        assert!(debug.contains("redacted") && !debug.contains(&sec1[40..60]));
        assert!(matches!(
            SecretKey::generate(KeySpec::EcdsaP384, "k").unwrap().with_format(KeyFormat::Pkcs1),
            Err(PkiError::PrivateKey { .. })
        ));
    }

    #[test]
    fn encrypted_and_missing_keys_are_named_errors() {
        let enc =
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAQI=\n-----END ENCRYPTED PRIVATE KEY-----\n";
        let err = SecretKey::from_pem(enc, "/pki/ca.key").unwrap_err();
        assert!(matches!(err, PkiError::EncryptedKey { .. }));
        assert!(err.to_string().contains("/pki/ca.key"));
        let err = SecretKey::from_pem(
            "-----BEGIN CERTIFICATE-----\nAQI=\n-----END CERTIFICATE-----\n",
            "x.crt",
        )
        .unwrap_err();
        assert!(err.to_string().contains("x.crt") && err.to_string().contains("CERTIFICATE"));
        let err = SecretKey::from_pem(
            "-----BEGIN PRIVATE KEY-----\nAQI=\n-----END PRIVATE KEY-----\n",
            "bad.key",
        )
        .unwrap_err();
        assert!(matches!(err, PkiError::PrivateKey { .. }) && err.to_string().contains("bad.key"));
    }

    #[test]
    fn format_of_pem_reads_the_label() {
        assert_eq!(
            KeyFormat::of_pem("x\n-----BEGIN RSA PRIVATE KEY-----\n"),
            Some(KeyFormat::Pkcs1)
        );
        assert_eq!(KeyFormat::of_pem("-----BEGIN EC PRIVATE KEY-----"), Some(KeyFormat::Sec1));
        assert_eq!(KeyFormat::of_pem("nothing"), None);
    }
}
