//! Re-issuing a leaf certificate under a new CA: the same certificate in every respect a client
//! or server looks at, with a new issuer, serial, validity window and signature.
//!
//! The new certificate is assembled from the old one's DER rather than through rcgen's
//! `CertificateParams`, because rcgen keeps a subject as a map from attribute type to one value:
//! a client certificate with two `O=` groups (Kubernetes reads `O` as group membership) would
//! lose one, and attribute order and string types could change. Here the subject, the public key
//! (unless a new key is asked for) and every extension are copied byte for byte; rcgen's key
//! (ring) makes the signature.

use jiff::{SignedDuration, Timestamp};
use rcgen::{PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_RSA_SHA256, SigningKey as _};
use sha2::{Digest as _, Sha256};
use x509_parser::extensions::ParsedExtension;

use super::der::{self, oid, tag};
use super::{BACKDATE, Ca, Cert, PkiError, SecretKey, random_serial};

/// Whether a re-issued certificate keeps the old key pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyPolicy {
    /// Certify the existing public key; the private key on disk stays as it is (no key
    /// material is needed, or touched).
    #[default]
    Keep,
    /// Generate a new key of the same kind and size and certify it.
    New,
}

/// A re-issued certificate, and its new key when one was made.
#[derive(Debug)]
pub struct Reissued {
    /// The new certificate.
    pub cert: Cert,
    /// The new private key for [`KeyPolicy::New`], in kubeadm's form for its kind (write it
    /// with [`SecretKey::with_format`] to match the old file's form); `None` for
    /// [`KeyPolicy::Keep`].
    pub new_key: Option<SecretKey>,
}

/// `leaf` re-issued by `ca` at `now`.
///
/// Kept: subject, public key (with [`KeyPolicy::Keep`]), and every extension — SANs, key
/// usage, extended key usage, basic constraints, subject key identifier and any other —
/// with its criticality. Changed: issuer (the CA's subject, byte for byte), serial (16 random
/// bytes from `serials`), signature algorithm (the CA key's), authority key identifier (the
/// CA's subject key identifier; omitted when the CA has none), and validity: from
/// [`BACKDATE`] before `now`, as long as the old window, but never past the CA's `notAfter`.
/// Dropped: CRL distribution points and authority information access, which describe the old
/// issuer.
pub fn reissue(
    leaf: &Cert,
    ca: &Ca,
    key_policy: KeyPolicy,
    now: Timestamp,
    serials: &mut impl rand_core::RngCore,
) -> Result<Reissued, PkiError> {
    if leaf.is_ca() {
        return Err(PkiError::IsCa { origin: leaf.origin().to_owned() });
    }
    let what = format!("{} re-issued by {}", leaf.origin(), ca.cert().origin());
    let validity = |reason: &str| PkiError::Validity { what: what.clone(), reason: reason.into() };

    let new_key = match key_policy {
        KeyPolicy::Keep => None,
        KeyPolicy::New => {
            Some(SecretKey::generate(leaf.key_spec()?, &format!("new key for {what}"))?)
        }
    };

    let old = leaf.parsed();
    let ca_cert = ca.cert().parsed();
    let length = SignedDuration::from_secs(
        leaf.not_after().as_second().saturating_sub(leaf.not_before().as_second()),
    );
    // Certificates carry whole seconds; computing from whole seconds keeps lengths exact.
    let now =
        Timestamp::from_second(now.as_second()).map_err(|_| validity("now is out of range"))?;
    let not_before = now.checked_sub(BACKDATE).map_err(|_| validity("now is out of range"))?;
    let not_after = not_before
        .checked_add(length)
        .map_err(|_| validity("validity runs past the year 9999"))?
        .min(ca.cert().not_after());
    if not_after <= not_before {
        return Err(validity("the CA expires before the new certificate would start"));
    }

    let spki = match &new_key {
        Some(key) => key.public_key_info_der(),
        None => old.public_key().raw.to_vec(),
    };

    let authority_key_id =
        ca_cert.extensions().iter().find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => Some(id.0.to_vec()),
            _ => None,
        });
    let mut extensions = Vec::new();
    let mut wrote_aki = false;
    for ext in old.extensions() {
        let id = ext.oid.as_bytes();
        if id == oid::CRL_DISTRIBUTION_POINTS || id == oid::AUTHORITY_INFO_ACCESS {
            continue;
        }
        if id == oid::AUTHORITY_KEY_ID {
            // Where the old one stood, so the extension order stays as it was.
            if let Some(key_id) = &authority_key_id {
                extensions.push(authority_key_identifier(key_id));
            }
            wrote_aki = true;
            continue;
        }
        if id == oid::SUBJECT_KEY_ID
            && let Some(key) = &new_key
        {
            extensions.push(extension(oid::SUBJECT_KEY_ID, false, &subject_key_id(key)));
            continue;
        }
        extensions.push(extension(id, ext.critical, ext.value));
    }
    if !wrote_aki && let Some(key_id) = &authority_key_id {
        extensions.push(authority_key_identifier(key_id));
    }

    let signing_key = ca.key().pair();
    let algorithm =
        signature_algorithm(signing_key.algorithm()).ok_or_else(|| PkiError::UnsupportedKey {
            origin: ca.key().origin().to_owned(),
            what: format!("signing with {:?}", signing_key.algorithm()),
        })?;

    let version = der::tlv(tag::CONTEXT_0, &der::unsigned_integer(&[2]));
    let serial = der::unsigned_integer(&random_serial(serials));
    let validity_der = der::sequence(&[&time(not_before), &time(not_after)]);
    let mut tbs_parts: Vec<&[u8]> = vec![
        &version,
        &serial,
        &algorithm,
        ca_cert.subject().as_raw(),
        &validity_der,
        old.subject().as_raw(),
        &spki,
    ];
    let extensions_der;
    if !extensions.is_empty() {
        let list: Vec<&[u8]> = extensions.iter().map(Vec::as_slice).collect();
        extensions_der = der::tlv(tag::CONTEXT_3, &der::sequence(&list));
        tbs_parts.push(&extensions_der);
    }
    let tbs = der::sequence(&tbs_parts);
    let signature = signing_key
        .sign(&tbs)
        .map_err(|e| PkiError::Signing { what: what.clone(), reason: e.to_string() })?;
    let cert_der = der::sequence(&[&tbs, &algorithm, &der::bit_string(&signature)]);
    let cert = Cert::from_der(cert_der, &what)?;
    Ok(Reissued { cert, new_key })
}

/// The AlgorithmIdentifier of the signatures rcgen's key makes.
fn signature_algorithm(alg: &rcgen::SignatureAlgorithm) -> Option<Vec<u8>> {
    if alg == &PKCS_RSA_SHA256 {
        // RFC 4055: the parameters of sha256WithRSAEncryption are an explicit NULL.
        Some(der::sequence(&[&der::oid(oid::SHA256_WITH_RSA), &der::tlv(tag::NULL, &[])]))
    } else if alg == &PKCS_ECDSA_P256_SHA256 {
        // RFC 5758: ECDSA signature algorithms have no parameters at all.
        Some(der::sequence(&[&der::oid(oid::ECDSA_SHA256)]))
    } else if alg == &PKCS_ECDSA_P384_SHA384 {
        Some(der::sequence(&[&der::oid(oid::ECDSA_SHA384)]))
    } else {
        None
    }
}

/// Extension ::= SEQUENCE { extnID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING }.
fn extension(id: &[u8], critical: bool, value: &[u8]) -> Vec<u8> {
    let id = der::oid(id);
    let value = der::tlv(tag::OCTET_STRING, value);
    if critical {
        der::sequence(&[&id, &der::tlv(tag::BOOLEAN, &[0xff]), &value])
    } else {
        der::sequence(&[&id, &value])
    }
}

/// AuthorityKeyIdentifier ::= SEQUENCE { keyIdentifier [0] IMPLICIT OCTET STRING }.
fn authority_key_identifier(key_id: &[u8]) -> Vec<u8> {
    extension(
        oid::AUTHORITY_KEY_ID,
        false,
        &der::sequence(&[&der::tlv(tag::CONTEXT_PRIM_0, key_id)]),
    )
}

/// SubjectKeyIdentifier for a new key: the leftmost 160 bits of the SHA-256 of the
/// subjectPublicKey bits (RFC 7093 §2, method 1), as an OCTET STRING.
fn subject_key_id(key: &SecretKey) -> Vec<u8> {
    let bits = key.pair().public_key_raw().to_vec();
    let digest = Sha256::digest(&bits);
    der::tlv(tag::OCTET_STRING, &digest[..20])
}

/// RFC 5280 §4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050, seconds, `Z`.
fn time(t: Timestamp) -> Vec<u8> {
    let year = t.to_zoned(jiff::tz::TimeZone::UTC).year();
    if (1950..2050).contains(&year) {
        der::tlv(tag::UTC_TIME, t.strftime("%y%m%d%H%M%SZ").to_string().as_bytes())
    } else {
        der::tlv(tag::GENERALIZED_TIME, t.strftime("%Y%m%d%H%M%SZ").to_string().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_switch_to_generalized_in_2050() {
        let t: Timestamp = "2049-12-31T23:59:59Z".parse().unwrap();
        assert_eq!(time(t), der::tlv(tag::UTC_TIME, b"491231235959Z"));
        let t: Timestamp = "2050-01-01T00:00:00.75Z".parse().unwrap();
        assert_eq!(time(t), der::tlv(tag::GENERALIZED_TIME, b"20500101000000Z"));
    }
}
