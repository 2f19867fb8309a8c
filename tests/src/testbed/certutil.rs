//! Certificates made the way the Go components make them, not the way openssl's CLI does:
//! kubeadm's CAs (`NewSelfSignedCACert`), the kubelet's self-signed serving pair (client-go's
//! `GenerateSelfSignedCertKey`), the kubelet's certificate signing requests (client-go's
//! certificate manager) and the controller-manager's signing of them (`authority.Sign`).
//!
//! What Go's `crypto/x509` does that these copy: names are PrintableString when every
//! character allows it, else UTF8String (`encoding/asn1`'s choice for a Go string); a CA gets
//! a subject key identifier, the SHA-1 of its public key, when the template has none (Go
//! 1.15+), and a certificate signed by a parent with one carries it as its authority key
//! identifier; serials are random in [1, 2^63-1).

use anyhow::{Context, Result, anyhow, bail};
use jiff::{SignedDuration, Timestamp};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, SanType,
};

use actions::pki::{KeyFormat, KeySpec, SecretKey};

/// kubeadm's `CertificateBackdate`: CAs and leaves start 5 minutes before they are made
/// (cmd/kubeadm/app/constants/constants.go; applied in `KubeadmCert.GetConfig`,
/// cmd/kubeadm/app/phases/certs/certlist.go).
pub const KUBEADM_BACKDATE: SignedDuration = SignedDuration::from_mins(5);

/// kubeadm's `CACertificateValidityPeriod`: ten years.
pub const KUBEADM_CA_VALIDITY: SignedDuration = SignedDuration::from_hours(24 * 365 * 10);

/// A certificate and its private key, both PEM (the key in the form the Go code writes).
pub struct Pair {
    /// The certificate (for the kubelet's self-signed pair: the leaf, then its CA).
    pub cert_pem: String,
    /// The private key: secret, written 0600.
    pub key_pem: String,
}

/// A self-signed CA as `kubeadm init` makes it: `NewSelfSignedCACert`
/// (cmd/kubeadm/app/util/pkiutil/pki_helpers.go) with the subject `CN=common_name`, a DNS name
/// equal to it, key usages digitalSignature, keyEncipherment and keyCertSign, valid from
/// `now` − 5 min for ten years, with a key of kind `spec` (kubeadm's default: RSA 2048).
pub fn kubeadm_ca(common_name: &str, spec: KeySpec, now: Timestamp) -> Result<Pair> {
    let key = SecretKey::generate(spec, &format!("CA {common_name}"))?;
    let pair = rcgen_pair(&key)?;
    let not_before = now - KUBEADM_BACKDATE;
    let mut params = ca_params(common_name, not_before, not_before + KUBEADM_CA_VALIDITY, &pair)?;
    params.subject_alt_names =
        vec![SanType::DnsName(common_name.try_into().map_err(|e| anyhow!("{common_name}: {e}"))?)];
    let cert = params.self_signed(&pair).with_context(|| format!("signing CA {common_name}"))?;
    Ok(Pair { cert_pem: cert.pem(), key_pem: key.to_pem() })
}

/// The kubelet's serving pair when it is given none: `GenerateSelfSignedCertKeyWithFixtures`
/// (staging/src/k8s.io/client-go/util/cert/cert.go), which `InitializeTLS`
/// (cmd/kubelet/app/server.go) calls with the node's hostname. A one-off CA
/// `CN=<host>-ca@<unix time>` signs a leaf `CN=<host>@<unix time>` for server auth, whose
/// alternative name is `host` (an IP address when it parses as one, else a DNS name); both RSA
/// 2048, valid from an hour ago for a year; the PEM holds the leaf, then the CA.
pub fn self_signed_serving(host: &str, now: Timestamp) -> Result<Pair> {
    let valid_from = now - SignedDuration::from_hours(1);
    let until = valid_from + SignedDuration::from_hours(24 * 365);
    let rsa = KeySpec::Rsa { bits: 2048 };
    let ca_key = SecretKey::generate(rsa, "self-signed CA")?;
    let ca_pair = rcgen_pair(&ca_key)?;
    let ca = ca_params(&format!("{host}-ca@{}", now.as_second()), valid_from, until, &ca_pair)?;
    let ca_cert = ca.self_signed(&ca_pair).context("signing the self-signed CA")?;

    let key = SecretKey::generate(rsa, "self-signed serving key")?;
    let pair = rcgen_pair(&key)?;
    let mut leaf = CertificateParams::default();
    leaf.distinguished_name = name(&format!("{host}@{}", now.as_second()));
    leaf.serial_number = Some(go_serial());
    set_validity(&mut leaf, valid_from, until)?;
    leaf.is_ca = IsCa::ExplicitNoCa;
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.subject_alt_names = vec![match host.parse::<std::net::IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(host.try_into().map_err(|e| anyhow!("{host}: {e}"))?),
    }];
    leaf.use_authority_key_identifier_extension = true;
    let issuer = rcgen::Issuer::from_params(&ca, &ca_pair);
    let cert = leaf.signed_by(&pair, &issuer).context("signing the self-signed serving leaf")?;
    Ok(Pair { cert_pem: format!("{}{}", cert.pem(), ca_cert.pem()), key_pem: key.to_pem() })
}

/// A certificate signing request and its new private key, both PEM.
pub struct Request {
    /// `CERTIFICATE REQUEST`.
    pub csr_pem: String,
    /// The key, `EC PRIVATE KEY`: secret.
    pub key_pem: String,
}

/// The kubelet's client certificate request: a new P-256 key every attempt
/// (`generateCSR`, staging/src/k8s.io/client-go/util/certificate/certificate_manager.go) and
/// the template of `NewKubeletClientCertificateManager` (pkg/kubelet/certificate/kubelet.go):
/// `CN=system:node:<node>, O=system:nodes`, no alternative names, no extensions.
pub fn node_client_request(node: &str) -> Result<Request> {
    node_request(node, Vec::new(), "kubelet client key")
}

/// A request as `system:node:<node>` in `system:nodes` with alternative names `sans`, for a new
/// P-256 key (`what`).
fn node_request(node: &str, sans: Vec<SanType>, what: &str) -> Result<Request> {
    let key = SecretKey::generate(KeySpec::EcdsaP256, what)?;
    let pair = rcgen_pair(&key)?;
    let mut params = CertificateParams::default();
    // Go writes a name's attributes in a fixed order, O before CN (`pkix.Name.ToRDNSequence`).
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, printable_or_utf8("system:nodes"));
    dn.push(DnType::CommonName, printable_or_utf8(&format!("system:node:{node}")));
    params.distinguished_name = dn;
    params.subject_alt_names = sans;
    let csr = params.serialize_request(&pair).context("making the kubelet's CSR")?;
    Ok(Request { csr_pem: csr.pem().context("encoding the CSR")?, key_pem: key.to_pem() })
}

/// The kubelet's serving certificate request with `serverTLSBootstrap: true`: a new P-256 key
/// every attempt and the template of `NewKubeletServerCertificateManager`
/// (pkg/kubelet/certificate/kubelet.go `newGetTemplateFn`): `CN=system:node:<node>,
/// O=system:nodes`, and as alternative names the node's addresses (`addressesToHostnamesAndIPs`:
/// a Hostname that parses as an IP and every InternalIP/ExternalIP an IP name, other hostnames
/// DNS names), deduplicated and sorted.
pub fn node_serving_request(node: &str, addresses: &[String]) -> Result<Request> {
    node_request(node, serving_sans(addresses)?, "kubelet serving key")
}

/// `addressesToHostnamesAndIPs`: DNS names first, then IP addresses, each sorted and
/// deduplicated.
fn serving_sans(addresses: &[String]) -> Result<Vec<SanType>> {
    let mut dns = std::collections::BTreeSet::new();
    let mut ips = std::collections::BTreeSet::new();
    for a in addresses {
        match a.parse::<std::net::IpAddr>() {
            Ok(ip) => ips.insert(ip),
            Err(_) => dns.insert(a.clone()),
        };
    }
    let mut out = Vec::new();
    for d in dns {
        out.push(SanType::DnsName(d.as_str().try_into().map_err(|e| anyhow!("{d}: {e}"))?));
    }
    out.extend(ips.into_iter().map(SanType::IpAddress));
    Ok(out)
}

/// The signing policy's `Backdate` and `Short` (pkg/controller/certificates/signer/signer.go:
/// `PermissiveSigningPolicy{…, Backdate: 5 * time.Minute, Short: 8 * time.Hour}`).
const SIGNER_BACKDATE: SignedDuration = SignedDuration::from_mins(5);
const SIGNER_SHORT: SignedDuration = SignedDuration::from_hours(8);

/// The controller-manager's signature over an approved request (`authority.Sign` and
/// `PermissiveSigningPolicy.apply`, pkg/controller/certificates/authority/): the request's
/// signature checked; subject and alternative names copied, its extensions dropped; key and
/// extended key usages from `usages` (the CSR's `spec.usages`); a random 128-bit serial; valid
/// from `now` − 5 min until `now` + `ttl` (− 5 min when `ttl` is 8 h or more), never past the
/// CA; the leaf alone, PEM.
pub fn sign_request(
    csr_pem: &str,
    usages: &[String],
    ca_cert_pem: &str,
    ca_key_pem: &str,
    ttl: SignedDuration,
    now: Timestamp,
) -> Result<String> {
    let mut req = rcgen::CertificateSigningRequestParams::from_pem(csr_pem)
        .map_err(|e| anyhow!("the request does not parse or its signature is wrong: {e}"))?;
    let ca_der = pem_block(ca_cert_pem, "CERTIFICATE")
        .ok_or_else(|| anyhow!("the signing certificate holds no CERTIFICATE"))?;
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der)
        .map_err(|e| anyhow!("the signing certificate does not parse: {e}"))?;
    let ca_until = Timestamp::from_second(ca.validity().not_after.timestamp())?;
    if now >= ca_until {
        bail!("refusing to sign a certificate that expired in the past");
    }
    let p = &mut req.params;
    p.key_usages.clear();
    p.extended_key_usages.clear();
    for u in usages {
        match u.as_str() {
            "digital signature" => p.key_usages.push(KeyUsagePurpose::DigitalSignature),
            "key encipherment" => p.key_usages.push(KeyUsagePurpose::KeyEncipherment),
            "client auth" => p.extended_key_usages.push(ExtendedKeyUsagePurpose::ClientAuth),
            "server auth" => p.extended_key_usages.push(ExtendedKeyUsagePurpose::ServerAuth),
            other => bail!("unsupported key usage: {other}"),
        }
    }
    p.custom_extensions.clear();
    p.is_ca = IsCa::ExplicitNoCa;
    p.use_authority_key_identifier_extension = true;
    let mut serial = [0u8; 16];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut serial);
    serial[0] &= 0x7f;
    p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
    let not_before = now - SIGNER_BACKDATE;
    let mut not_after = if ttl < SIGNER_SHORT { now + ttl } else { now + ttl - SIGNER_BACKDATE };
    if not_after >= ca_until {
        not_after = ca_until;
    }
    set_validity(p, not_before, not_after)?;
    let ca_key = SecretKey::from_pem(ca_key_pem, "the signing key")?;
    let issuer = rcgen::Issuer::from_ca_cert_der(&ca_der.clone().into(), rcgen_pair(&ca_key)?)
        .map_err(|e| anyhow!("the signing certificate: {e}"))?;
    let cert = req.signed_by(&issuer).context("signing the request")?;
    Ok(cert.pem())
}

/// The DER of the first block labelled `label` (`CERTIFICATE`, `CERTIFICATE REQUEST`) of a
/// PEM text.
pub fn pem_block(pem: &str, label: &str) -> Option<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .filter_map(Result::ok)
        .find(|p| p.label == label)
        .map(|p| p.contents)
}

/// A name value as Go's `encoding/asn1` writes a string: PrintableString when it can.
fn printable_or_utf8(v: &str) -> DnValue {
    match rcgen::string::PrintableString::try_from(v) {
        Ok(p) => DnValue::PrintableString(p),
        Err(_) => DnValue::Utf8String(v.to_string()),
    }
}

/// A CA's parameters as Go's `x509.CreateCertificate` writes them from kubeadm's and
/// client-go's templates.
fn ca_params(
    common_name: &str,
    not_before: Timestamp,
    not_after: Timestamp,
    pair: &KeyPair,
) -> Result<CertificateParams> {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(common_name);
    params.serial_number = Some(go_serial());
    set_validity(&mut params, not_before, not_after)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
        KeyUsagePurpose::KeyCertSign,
    ];
    // Go 1.15+: "SubjectKeyId ... generated from the hash of the public key" for a CA template
    // without one: SHA-1 over the subjectPublicKey bits.
    let ski = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, pair.public_key_raw());
    params.key_identifier_method = KeyIdMethod::PreSpecified(ski.as_ref().to_vec());
    Ok(params)
}

/// `CN=common_name`, PrintableString where Go would choose it.
fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, printable_or_utf8(common_name));
    dn
}

/// A serial as Go's code draws it: uniform in [1, 2^63 − 1).
fn go_serial() -> rcgen::SerialNumber {
    let mut b = [0u8; 8];
    // ring's system random source; an error here means the OS has none, which nothing survives.
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    let n = (u64::from_be_bytes(b) % (i64::MAX as u64 - 1)) + 1;
    let bytes = n.to_be_bytes();
    let first = bytes.iter().position(|&x| x != 0).unwrap_or(7);
    rcgen::SerialNumber::from_slice(&bytes[first..])
}

/// The key as rcgen signs with it.
fn rcgen_pair(key: &SecretKey) -> Result<KeyPair> {
    let pkcs8 = SecretKey::from_pem(&key.to_pem(), key.origin())?.with_format(KeyFormat::Pkcs8)?;
    KeyPair::from_pem(&pkcs8.to_pem()).map_err(|e| anyhow!("{}: {e}", key.origin()))
}

/// Sets the validity (rcgen takes the `time` crate's type, which x509-parser converts to).
fn set_validity(params: &mut CertificateParams, from: Timestamp, until: Timestamp) -> Result<()> {
    let date = |t: Timestamp| {
        x509_parser::time::ASN1Time::from_timestamp(t.as_second())
            .map(|d| d.to_datetime())
            .map_err(|e| anyhow!("{t}: {e}"))
    };
    params.not_before = date(from)?;
    params.not_after = date(until)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    fn parsed(pem: &str) -> Vec<Vec<u8>> {
        x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
            .map(|p| p.unwrap().contents)
            .collect()
    }

    #[test]
    fn a_kubeadm_ca_is_backdated_printable_and_identifies_its_key() {
        let now: Timestamp = "2026-12-03T12:00:00Z".parse().unwrap();
        let ca = kubeadm_ca("kubernetes", KeySpec::EcdsaP256, now).unwrap();
        let ders = parsed(&ca.cert_pem);
        let (_, c) = X509Certificate::from_der(&ders[0]).unwrap();
        assert_eq!(c.validity().not_before.timestamp(), now.as_second() - 300);
        assert_eq!(
            c.validity().not_after.timestamp() - c.validity().not_before.timestamp(),
            10 * 365 * 86400
        );
        let cn = c.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.attr_value().tag(), x509_parser::der_parser::asn1_rs::Tag::PrintableString);
        assert!(c.is_ca());
        let ski = c.extensions().iter().find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => Some(k.0.to_vec()),
            _ => None,
        });
        let want = ring::digest::digest(
            &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
            &c.public_key().subject_public_key.data,
        );
        assert_eq!(ski.as_deref(), Some(want.as_ref()));
        assert!(
            SecretKey::from_pem(&ca.key_pem, "key")
                .unwrap()
                .matches(&actions::pki::Cert::from_der(ders[0].clone(), "ca").unwrap())
        );
    }

    #[test]
    fn a_signed_node_request_keeps_its_subject_and_takes_the_signers_policy() {
        let now: Timestamp = "2026-12-03T12:00:00Z".parse().unwrap();
        let ca = kubeadm_ca("kubernetes", KeySpec::Rsa { bits: 2048 }, now).unwrap();
        let req = node_client_request("w-1").unwrap();
        let usages = vec!["digital signature".to_string(), "client auth".to_string()];
        let ten_min = SignedDuration::from_mins(10);
        let pem =
            sign_request(&req.csr_pem, &usages, &ca.cert_pem, &ca.key_pem, ten_min, now).unwrap();
        let ders = parsed(&pem);
        assert_eq!(ders.len(), 1, "the leaf alone");
        let (_, leaf) = X509Certificate::from_der(&ders[0]).unwrap();
        let ca_ders = parsed(&ca.cert_pem);
        let (_, issuer) = X509Certificate::from_der(&ca_ders[0]).unwrap();
        assert_eq!(leaf.subject().to_string(), "O=system:nodes, CN=system:node:w-1");
        assert_eq!(leaf.issuer().as_raw(), issuer.subject().as_raw());
        leaf.verify_signature(Some(issuer.public_key())).unwrap();
        // Short: from now − 5 min to now + ttl; long: ttl exactly.
        assert_eq!(leaf.validity().not_before.timestamp(), now.as_second() - 300);
        assert_eq!(leaf.validity().not_after.timestamp(), now.as_second() + 600);
        let year = SignedDuration::from_hours(8760);
        let pem =
            sign_request(&req.csr_pem, &usages, &ca.cert_pem, &ca.key_pem, year, now).unwrap();
        let long_ders = parsed(&pem);
        let (_, long) = X509Certificate::from_der(&long_ders[0]).unwrap();
        let v = long.validity();
        assert_eq!(v.not_after.timestamp() - v.not_before.timestamp(), 8760 * 3600);
        assert!(!long.is_ca());
        let eku = long.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        let bad =
            sign_request(&req.csr_pem, &["signing".into()], &ca.cert_pem, &ca.key_pem, year, now);
        assert!(bad.unwrap_err().to_string().contains("unsupported key usage"));
        assert!(req.key_pem.starts_with("-----BEGIN EC PRIVATE KEY-----"));
    }

    #[test]
    fn the_kubelets_self_signed_pair_is_a_leaf_then_its_one_off_ca() {
        let now: Timestamp = "2026-12-03T12:00:00Z".parse().unwrap();
        let pair = self_signed_serving("cp-1", now).unwrap();
        let ders = parsed(&pair.cert_pem);
        assert_eq!(ders.len(), 2);
        let (_, leaf) = X509Certificate::from_der(&ders[0]).unwrap();
        let (_, ca) = X509Certificate::from_der(&ders[1]).unwrap();
        let unix = now.as_second();
        assert_eq!(leaf.subject().to_string(), format!("CN=cp-1@{unix}"));
        assert_eq!(leaf.issuer().to_string(), format!("CN=cp-1-ca@{unix}"));
        assert_eq!(ca.subject(), leaf.issuer());
        assert!(ca.is_ca() && !leaf.is_ca());
        assert_eq!(leaf.validity().not_before.timestamp(), unix - 3600);
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        assert_eq!(san.value.general_names, vec![GeneralName::DNSName("cp-1")]);
        leaf.verify_signature(Some(ca.public_key())).unwrap();
        // '@' is not a PrintableString character: Go writes a UTF8String.
        let cn = leaf.subject().iter_common_name().next().unwrap();
        assert_eq!(cn.attr_value().tag(), x509_parser::der_parser::asn1_rs::Tag::Utf8String);
        let ip = self_signed_serving("198.18.0.11", now).unwrap();
        let ders = parsed(&ip.cert_pem);
        let (_, leaf) = X509Certificate::from_der(&ders[0]).unwrap();
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        assert_eq!(san.value.general_names, vec![GeneralName::IPAddress(&[198, 18, 0, 11])]);
    }
}
