//! Certificate authorities: generated with rcgen, or read from files and refused unless they
//! can sign (CA:TRUE, keyCertSign), their key is theirs, and they are valid now.

use jiff::{SignedDuration, Timestamp};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyUsagePurpose,
};

use super::{BACKDATE, Cert, KeySpec, PkiError, SecretKey, random_serial};

/// A CA certificate with its private key.
///
/// Only made by [`Ca::generate`], [`Ca::load`] and [`Ca::import`], so a `Ca` is always a CA
/// certificate (CA:TRUE, keyCertSign) whose key matches it; whether it is valid *now* is
/// [`Ca::check`]'s question.
#[derive(Debug)]
pub struct Ca {
    cert: Cert,
    key: SecretKey,
}

impl Ca {
    /// A new self-signed CA named `CN=common_name` (kubeadm uses `kubernetes` for the cluster
    /// CA and `front-proxy-ca` for the front proxy's), valid from [`BACKDATE`] before `now`
    /// for `validity_days` days, with a key of kind `spec`.
    pub fn generate(
        common_name: &str,
        spec: KeySpec,
        validity_days: u32,
        now: Timestamp,
        serials: &mut impl rand_core::RngCore,
    ) -> Result<Ca, PkiError> {
        let what = format!("new CA {common_name}");
        let validity =
            |reason: &str| PkiError::Validity { what: what.clone(), reason: reason.into() };
        if validity_days == 0 {
            return Err(validity("validity_days must be at least 1"));
        }
        // Certificates carry whole seconds; computing from whole seconds keeps lengths exact.
        let now =
            Timestamp::from_second(now.as_second()).map_err(|_| validity("now is out of range"))?;
        let not_before = now.checked_sub(BACKDATE).map_err(|_| validity("now is out of range"))?;
        let not_after = now
            .checked_add(SignedDuration::from_hours(24 * i64::from(validity_days)))
            .map_err(|_| validity("validity_days is too large"))?;
        let key = SecretKey::generate(spec, &format!("{what} key"))?;

        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, common_name);
        params.distinguished_name = name;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // kubeadm's CAs: digitalSignature, keyEncipherment (RSA only: it means nothing for an EC
        // key) and keyCertSign.
        params.key_usages = match spec {
            KeySpec::Rsa { .. } => vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
                KeyUsagePurpose::KeyCertSign,
            ],
            KeySpec::EcdsaP256 | KeySpec::EcdsaP384 => {
                vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyCertSign]
            }
        };
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&random_serial(serials)));
        // rcgen takes the `time` crate's type, which x509-parser converts to without naming it.
        let date = |t: Timestamp| {
            x509_parser::time::ASN1Time::from_timestamp(t.as_second())
                .map(|t| t.to_datetime())
                .map_err(|_| validity("date out of range"))
        };
        params.not_before = date(not_before)?;
        params.not_after = date(not_after)?;
        let signed = params
            .self_signed(key.pair())
            .map_err(|e| PkiError::Signing { what: what.clone(), reason: e.to_string() })?;
        let cert = Cert::from_der(signed.der().to_vec(), &what)?;
        Ok(Ca { cert, key })
    }

    /// The common name of the CA that succeeds `old`: its name without an earlier rotation's
    /// `@<unix time>` suffix (or `default` when it has none), then `@<now as unix time>`, as
    /// client-go names its self-signed CAs (`<host>-ca@<unix>`). A name of its own tells a
    /// client, a log and an auditor which `CN=kubernetes` signed a certificate; the subject key
    /// identifier (rcgen writes one on every CA) tells a verifier.
    pub fn successor_common_name(old: &Cert, default: &str, now: Timestamp) -> String {
        let parsed = old.parsed();
        let cn = parsed
            .subject()
            .iter_common_name()
            .next()
            .and_then(|a| a.as_str().ok())
            .unwrap_or("")
            .to_owned();
        let base = match cn.rsplit_once('@') {
            Some((b, stamp)) if !stamp.is_empty() && stamp.bytes().all(|c| c.is_ascii_digit()) => {
                b.to_owned()
            }
            _ => cn,
        };
        let base = if base.is_empty() { default.to_owned() } else { base };
        format!("{base}@{}", now.as_second())
    }

    /// A CA that already exists (the cluster's current one): refused unless `cert` is a CA
    /// that can sign certificates and `key` is its private key. Key size is not judged here,
    /// so that a weak old CA can still be rotated away from.
    pub fn load(cert: Cert, key: SecretKey) -> Result<Ca, PkiError> {
        if !cert.is_ca() {
            return Err(PkiError::NotCa { origin: cert.origin().to_owned() });
        }
        if !cert.can_sign_certificates() {
            return Err(PkiError::NoKeyCertSign { origin: cert.origin().to_owned() });
        }
        if !key.matches(&cert) {
            return Err(PkiError::KeyMismatch {
                cert: cert.origin().to_owned(),
                key: key.origin().to_owned(),
            });
        }
        Ok(Ca { cert, key })
    }

    /// A CA the user gives to rotate to: everything [`Ca::load`] checks, and an RSA key of
    /// at least 2048 bits.
    pub fn import(cert: Cert, key: SecretKey) -> Result<Ca, PkiError> {
        if !cert.is_ca() {
            return Err(PkiError::NotCa { origin: cert.origin().to_owned() });
        }
        if let KeySpec::Rsa { bits } = cert.key_spec()?
            && bits < 2048
        {
            return Err(PkiError::WeakKey { origin: cert.origin().to_owned(), bits });
        }
        Ca::load(cert, key)
    }

    /// Refuses a CA that is not valid at `now` (expired, or not yet valid). The other
    /// properties were checked when the `Ca` was made.
    pub fn check(&self, now: Timestamp) -> Result<(), PkiError> {
        if now < self.cert.not_before() {
            return Err(PkiError::NotYetValid {
                origin: self.cert.origin().to_owned(),
                not_before: self.cert.not_before(),
            });
        }
        if now > self.cert.not_after() {
            return Err(PkiError::Expired {
                origin: self.cert.origin().to_owned(),
                not_after: self.cert.not_after(),
            });
        }
        Ok(())
    }

    /// The CA certificate.
    pub fn cert(&self) -> &Cert {
        &self.cert
    }

    /// The CA's private key.
    pub fn key(&self) -> &SecretKey {
        &self.key
    }

    /// The certificate as PEM.
    pub fn cert_pem(&self) -> String {
        self.cert.to_pem()
    }

    /// The private key as PEM, in the key's [`SecretKey::format`]. Secret: mode 0600, never
    /// logged.
    pub fn key_pem(&self) -> String {
        self.key.to_pem()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ec_ca(name: &str, days: u32, now: Timestamp) -> Ca {
        Ca::generate(name, KeySpec::EcdsaP256, days, now, &mut rand_core::OsRng).unwrap()
    }

    #[test]
    fn generated_ca_is_valid_from_backdate_until_its_days_run_out() {
        let now: Timestamp = "2026-12-05T02:00:00.5Z".parse().unwrap();
        let ca = ec_ca("kubernetes", 10, now);
        assert!(ca.cert().is_ca() && ca.cert().can_sign_certificates());
        assert_eq!(ca.cert().subject(), "CN=kubernetes");
        assert_eq!(ca.cert().not_before(), "2026-12-05T01:55:00Z".parse().unwrap());
        assert_eq!(ca.cert().not_after(), "2026-12-15T02:00:00Z".parse().unwrap());
        ca.check(now).unwrap();
        let err = ca.check("2026-12-15T02:00:01Z".parse().unwrap()).unwrap_err();
        assert!(matches!(err, PkiError::Expired { .. }));
        assert!(err.to_string().starts_with("new CA kubernetes: expired"), "{err}");
        assert!(matches!(
            ca.check("2026-12-05T01:54:59Z".parse().unwrap()),
            Err(PkiError::NotYetValid { .. })
        ));
    }

    #[test]
    fn a_successor_has_a_name_of_its_own_and_a_key_identifier() {
        let now: Timestamp = "2026-12-05T02:00:00Z".parse().unwrap();
        let old = ec_ca("kubernetes", 10, now);
        let name = Ca::successor_common_name(old.cert(), "kubernetes", now);
        assert_eq!(name, format!("kubernetes@{}", now.as_second()));
        let new = ec_ca(&name, 10, now);
        assert_ne!(new.cert().subject(), old.cert().subject());
        // A second rotation replaces the first one's stamp instead of adding another.
        let later = now + SignedDuration::from_secs(86400);
        let again = Ca::successor_common_name(new.cert(), "kubernetes", later);
        assert_eq!(again, format!("kubernetes@{}", later.as_second()));
        // A name whose '@' is not a stamp is kept whole.
        let odd = ec_ca("ops@example", 1, now);
        let name = Ca::successor_common_name(odd.cert(), "kubernetes", now);
        assert_eq!(name, format!("ops@example@{}", now.as_second()));
        let ski = new.cert().parsed().extensions().iter().any(|e| {
            matches!(
                e.parsed_extension(),
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(_)
            )
        });
        assert!(ski, "the new CA carries a subject key identifier");
    }

    #[test]
    fn zero_days_is_refused() {
        let err = Ca::generate("x", KeySpec::EcdsaP256, 0, Timestamp::now(), &mut rand_core::OsRng)
            .unwrap_err();
        assert!(matches!(err, PkiError::Validity { .. }));
    }

    #[test]
    fn load_refuses_another_cas_key_and_debug_hides_the_key() {
        let now = Timestamp::now();
        let (a, b) = (ec_ca("a", 1, now), ec_ca("b", 1, now));
        let key_pem = b.key_pem();
        let other_key = SecretKey::from_pem(&key_pem, "b.key").unwrap();
        let err = Ca::load(a.cert().clone(), other_key).unwrap_err();
        assert!(matches!(err, PkiError::KeyMismatch { .. }));
        assert_eq!(err.to_string().split(' ').next(), Some("b.key"));
        let debug = format!("{b:?}");
        let body: String = key_pem.lines().nth(1).unwrap().into();
        assert!(debug.contains("[redacted]") && !debug.contains(&body), "{debug}");
        assert_ne!(a.cert().serial_hex(), b.cert().serial_hex());
    }
}
