//! The PKI checked by tools nobody here wrote: a kubeadm-like PKI is made with the openssl CLI,
//! re-issued by kubeca under new CAs, and every certificate kubeca makes goes through
//! `openssl verify` and `openssl x509`.

use std::path::PathBuf;
use std::process::Command;

use actions::pki::{
    self, Ca, Cert, ChainError, KeyAlgorithm, KeyFormat, KeyPolicy, KeySpec, PkiError, SecretKey,
};
use jiff::{SignedDuration, Timestamp};
use rand_core::OsRng;
use x509_parser::extensions::ParsedExtension;

/// openssl configuration: the CA and leaf profiles kubeadm uses.
const CNF: &str = r#"
[req]
distinguished_name = dn
[dn]
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,digitalSignature,keyEncipherment,keyCertSign
subjectKeyIdentifier = hash
[ca_no_certsign]
basicConstraints = critical,CA:TRUE
keyUsage = critical,digitalSignature,cRLSign
subjectKeyIdentifier = hash
[apiserver]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:cp-1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,IP:10.96.0.1,IP:127.0.0.11,IP:127.0.0.10
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
[with_urls]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
authorityInfoAccess = caIssuers;URI:http://old-ca.invalid/ca.crt
crlDistributionPoints = URI:http://old-ca.invalid/ca.crl
[ec_client]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth,serverAuth
subjectAltName = DNS:front-proxy-client,IP:10.0.0.11
authorityKeyIdentifier = keyid
"#;

/// A temporary directory of PEM files and an openssl runner working in it.
struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The path as text, as errors print it.
    fn name(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }

    fn read(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name)).unwrap()
    }

    fn write(&self, name: &str, text: &str) {
        std::fs::write(self.path(name), text).unwrap();
    }

    fn cert(&self, name: &str) -> Cert {
        Cert::from_pem(&self.read(name), &self.name(name)).unwrap()
    }

    fn key(&self, name: &str) -> SecretKey {
        SecretKey::from_pem(&self.read(name), &self.name(name)).unwrap()
    }

    /// Runs openssl here; returns whether it succeeded and its stdout and stderr.
    fn try_openssl(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("openssl").args(args).current_dir(self.dir.path()).output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Runs openssl here and returns its stdout; panics with its output when it fails.
    fn openssl(&self, args: &[&str]) -> String {
        let out = Command::new("openssl").args(args).current_dir(self.dir.path()).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    fn rsa_key(&self, name: &str, bits: &str) {
        self.openssl(&["genrsa", "-traditional", "-out", name, bits]);
    }

    fn ec_key(&self, name: &str) {
        self.openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", name]);
    }

    fn self_signed(&self, name: &str, subject: &str, profile: &str) {
        let (key, crt) = (format!("{name}.key"), format!("{name}.crt"));
        self.openssl(&[
            "req",
            "-x509",
            "-new",
            "-key",
            &key,
            "-subj",
            subject,
            "-days",
            "3650",
            "-config",
            "pki.cnf",
            "-extensions",
            profile,
            "-out",
            &crt,
        ]);
    }

    fn signed(&self, name: &str, subject: &str, ca: &str, profile: &str) {
        let (key, csr, crt) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"));
        self.openssl(&[
            "req", "-new", "-key", &key, "-subj", subject, "-config", "pki.cnf", "-out", &csr,
        ]);
        self.openssl(&[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-set_serial",
            "4660",
            "-days",
            "365",
            "-extfile",
            "pki.cnf",
            "-extensions",
            profile,
            "-out",
            &crt,
        ]);
    }

    /// `openssl verify -CAfile ca cert`: whether it passed, and what it said.
    fn verify(&self, ca_file: &str, cert_file: &str) -> (bool, String) {
        self.try_openssl(&["verify", "-CAfile", ca_file, cert_file])
    }

    /// The public key of a certificate or private key, as openssl writes it.
    fn public_key_of_cert(&self, cert_file: &str) -> String {
        self.openssl(&["x509", "-in", cert_file, "-noout", "-pubkey"])
    }

    fn public_key_of_key(&self, key_file: &str) -> String {
        self.openssl(&["pkey", "-in", key_file, "-pubout"])
    }

    fn extensions(&self, cert_file: &str) -> String {
        self.openssl(&[
            "x509",
            "-in",
            cert_file,
            "-noout",
            "-ext",
            "subjectAltName,keyUsage,extendedKeyUsage,basicConstraints",
        ])
    }

    fn subject(&self, cert_file: &str) -> String {
        self.openssl(&["x509", "-in", cert_file, "-noout", "-subject", "-nameopt", "RFC2253"])
    }
}

/// An "old" kubeadm-like PKI made by openssl: an RSA-2048 cluster CA (`ca`, PKCS#1 key) with an
/// apiserver serving certificate, an admin client certificate and a client certificate with two
/// groups; an ECDSA front-proxy CA (`ec-ca`, SEC1 key) with an ECDSA client; and a second RSA
/// CA of the same name (`new-ca`) to import as the new CA.
fn old_pki() -> Pki {
    let pki = Pki { dir: tempfile::tempdir().unwrap() };
    pki.write("pki.cnf", CNF);
    pki.rsa_key("ca.key", "2048");
    pki.self_signed("ca", "/CN=kubernetes", "ca");
    pki.rsa_key("apiserver.key", "2048");
    pki.signed("apiserver", "/CN=kube-apiserver", "ca", "apiserver");
    pki.rsa_key("admin.key", "2048");
    pki.signed("admin", "/O=system:masters/CN=kubernetes-admin", "ca", "client");
    pki.ec_key("groups.key");
    pki.signed("groups", "/O=system:masters/O=team-a/CN=jane", "ca", "client");
    pki.ec_key("ec-ca.key");
    pki.self_signed("ec-ca", "/CN=front-proxy-ca", "ca");
    pki.ec_key("ec-leaf.key");
    pki.signed("ec-leaf", "/CN=front-proxy-client", "ec-ca", "ec_client");
    pki.rsa_key("new-ca.key", "2048");
    pki.self_signed("new-ca", "/CN=kubernetes", "ca");
    pki
}

fn now() -> Timestamp {
    Timestamp::now()
}

/// Writes the CA, checks it with openssl, and returns the `openssl x509 -text` output.
fn check_generated_ca(pki: &Pki, ca: &Ca, name: &str, key_label: &str) -> String {
    pki.write(&format!("{name}.crt"), &ca.cert_pem());
    pki.write(&format!("{name}.key"), &ca.key_pem());
    let crt = format!("{name}.crt");
    let text = pki.openssl(&["x509", "-in", &crt, "-noout", "-text"]);
    assert!(text.contains("CA:TRUE"), "{text}");
    assert!(text.contains("Certificate Sign"), "{text}");
    assert!(text.contains("X509v3 Subject Key Identifier"), "{text}");
    let (ok, said) = pki.verify(&crt, &crt);
    assert!(ok, "{said}");
    assert!(ca.key_pem().starts_with(&format!("-----BEGIN {key_label}-----")));
    assert_eq!(pki.public_key_of_key(&format!("{name}.key")), pki.public_key_of_cert(&crt));

    // The discovery hash is SHA-256 of the DER public key, as kubeadm prints it.
    pki.openssl(&["x509", "-in", &crt, "-noout", "-pubkey", "-out", &format!("{name}.pub")]);
    pki.openssl(&[
        "pkey",
        "-pubin",
        "-in",
        &format!("{name}.pub"),
        "-outform",
        "DER",
        "-out",
        &format!("{name}.pub.der"),
    ]);
    let digest = pki.openssl(&["dgst", "-sha256", "-r", &format!("{name}.pub.der")]);
    let hex = digest.split_whitespace().next().unwrap();
    assert_eq!(ca.cert().discovery_hash(), format!("sha256:{hex}"));
    let fp = pki.openssl(&["x509", "-in", &crt, "-noout", "-fingerprint", "-sha256"]);
    assert_eq!(
        fp.trim().rsplit('=').next().unwrap().replace(':', "").to_lowercase(),
        ca.cert().fingerprint()
    );
    text
}

#[test]
fn generated_ecdsa_and_rsa_2048_cas_are_cas_to_openssl() {
    let pki = old_pki();
    let now = now();
    let old = pki.cert("ca.crt");
    let old_ec = pki.cert("ec-ca.crt");

    assert_eq!(KeyAlgorithm::SameAsOld.resolve(&old).unwrap(), KeySpec::Rsa { bits: 2048 });
    assert_eq!(KeyAlgorithm::SameAsOld.resolve(&old_ec).unwrap(), KeySpec::EcdsaP256);
    assert_eq!(KeyAlgorithm::Rsa4096.resolve(&old_ec).unwrap(), KeySpec::Rsa { bits: 4096 });
    assert_eq!(KeyAlgorithm::EcdsaP256.resolve(&old).unwrap(), KeySpec::EcdsaP256);

    let spec = KeyAlgorithm::SameAsOld.resolve(&old).unwrap();
    let rsa = Ca::generate("kubernetes", spec, 3650, now, &mut OsRng).unwrap();
    let text = check_generated_ca(&pki, &rsa, "gen-rsa", "RSA PRIVATE KEY");
    assert!(
        text.contains("Public-Key: (2048 bit)") && text.contains("sha256WithRSAEncryption"),
        "{text}"
    );
    assert!(text.contains("Key Encipherment"), "{text}");
    // Whole seconds: certificates do not carry fractions.
    let now_s = Timestamp::from_second(now.as_second()).unwrap();
    assert_eq!(rsa.cert().not_after().duration_since(now_s), SignedDuration::from_hours(24 * 3650));
    assert_eq!(now_s.duration_since(rsa.cert().not_before()), pki::BACKDATE);
    assert!(rsa.cert().not_before() < now);
    rsa.check(now).unwrap();

    let p256 = Ca::generate("front-proxy-ca", KeySpec::EcdsaP256, 365, now, &mut OsRng).unwrap();
    let text = check_generated_ca(&pki, &p256, "gen-p256", "EC PRIVATE KEY");
    assert!(text.contains("prime256v1") && text.contains("ecdsa-with-SHA256"), "{text}");
    assert!(text.contains("Subject: CN = front-proxy-ca"), "{text}");

    let p384 = Ca::generate("kubernetes", KeySpec::EcdsaP384, 365, now, &mut OsRng).unwrap();
    let text = check_generated_ca(&pki, &p384, "gen-p384", "EC PRIVATE KEY");
    assert!(text.contains("secp384r1") && text.contains("ecdsa-with-SHA384"), "{text}");

    // A generated CA reads back as a CA whose key matches.
    let again = Ca::import(pki.cert("gen-p256.crt"), pki.key("gen-p256.key")).unwrap();
    assert_eq!(again.cert(), p256.cert());
}

#[test]
fn generated_rsa_4096_ca_is_a_ca_to_openssl() {
    // The one RSA-4096 key generation of the suite (tens of seconds in a debug build).
    let pki = old_pki();
    let ca =
        Ca::generate("kubernetes", KeySpec::Rsa { bits: 4096 }, 3650, now(), &mut OsRng).unwrap();
    let text = check_generated_ca(&pki, &ca, "gen-rsa4096", "RSA PRIVATE KEY");
    assert!(text.contains("Public-Key: (4096 bit)"), "{text}");
}

/// Re-issues `name` under `new_ca` (written as `new_ca_file`) and checks it against the
/// original with openssl and x509-parser. Returns the new certificate's file name.
fn reissue_and_compare(
    pki: &Pki,
    name: &str,
    old_ca_file: &str,
    new_ca: &Ca,
    new_ca_file: &str,
    policy: KeyPolicy,
) -> String {
    let old_file = format!("{name}.crt");
    let new_file = format!("{name}-new.crt");
    let old = pki.cert(&old_file);
    let reissued = pki::reissue(&old, new_ca, policy, now(), &mut OsRng).unwrap();
    pki.write(&new_file, &reissued.cert.to_pem());
    let new = &reissued.cert;

    let (ok, said) = pki.verify(new_ca_file, &new_file);
    assert!(ok, "{name} under the new CA: {said}");
    let (ok, said) = pki.verify(old_ca_file, &new_file);
    assert!(!ok, "{name} must not verify under the old CA: {said}");
    let (ok, said) = pki.verify(old_ca_file, &old_file);
    assert!(ok, "{said}");

    assert_eq!(pki.subject(&new_file), pki.subject(&old_file));
    assert_eq!(pki.extensions(&new_file), pki.extensions(&old_file));
    let (old_x, new_x) = (old.parsed(), new.parsed());
    assert_eq!(new_x.subject().as_raw(), old_x.subject().as_raw());
    assert_eq!(new_x.issuer().as_raw(), new_ca.cert().parsed().subject().as_raw());
    assert_eq!(
        new_x.subject_alternative_name().unwrap().map(|s| format!("{:?}", s.value.general_names)),
        old_x.subject_alternative_name().unwrap().map(|s| format!("{:?}", s.value.general_names)),
    );
    assert_eq!(
        new_x.key_usage().unwrap().map(|k| k.value.flags),
        old_x.key_usage().unwrap().map(|k| k.value.flags)
    );
    assert_eq!(
        new_x.extended_key_usage().unwrap().map(|e| format!("{:?}", e.value)),
        old_x.extended_key_usage().unwrap().map(|e| format!("{:?}", e.value))
    );
    assert_eq!(
        new.not_after().duration_since(new.not_before()),
        old.not_after().duration_since(old.not_before())
    );
    assert_ne!(new.serial_hex(), old.serial_hex());
    // The authority key identifier names the new CA's key, where the old one stood.
    let key_id = |c: &Cert, want_authority: bool| {
        c.parsed().extensions().iter().find_map(|e| match e.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) if want_authority => {
                aki.key_identifier.as_ref().map(|k| k.0.to_vec())
            }
            ParsedExtension::SubjectKeyIdentifier(ski) if !want_authority => Some(ski.0.to_vec()),
            _ => None,
        })
    };
    assert_eq!(key_id(new, true), key_id(new_ca.cert(), false));
    assert!(key_id(new, true).is_some());
    let oids =
        |c: &Cert| c.parsed().extensions().iter().map(|e| e.oid.to_id_string()).collect::<Vec<_>>();
    assert_eq!(oids(new), oids(&old));
    assert_eq!(new.serial_hex().len(), 32);

    pki::verify_chain(new, std::slice::from_ref(new_ca.cert()), now()).unwrap();
    let old_ca = pki.cert(old_ca_file);
    assert!(pki::verify_chain(new, &[old_ca], now()).is_err());

    match (policy, &reissued.new_key) {
        (KeyPolicy::Keep, None) => {
            assert_eq!(new_x.public_key().raw, old_x.public_key().raw);
            assert_eq!(
                pki.public_key_of_cert(&new_file),
                pki.public_key_of_key(&format!("{name}.key"))
            );
            assert!(pki.key(&format!("{name}.key")).matches(new));
        }
        (KeyPolicy::New, Some(key)) => {
            let key_file = format!("{name}-new.key");
            pki.write(&key_file, &key.to_pem());
            assert_eq!(KeyFormat::of_pem(&key.to_pem()), Some(key.spec().kubeadm_format()));
            assert_eq!(key.spec(), old.key_spec().unwrap());
            assert_eq!(pki.public_key_of_cert(&new_file), pki.public_key_of_key(&key_file));
            assert_ne!(new_x.public_key().raw, old_x.public_key().raw);
            assert!(key.matches(new) && !key.matches(&old));
        }
        other => panic!("unexpected key outcome {other:?}"),
    }
    new_file
}

#[test]
fn reissued_rsa_leaves_keep_subject_sans_usages_validity_and_key() {
    let pki = old_pki();
    // The new CA is imported (RSA, the same name CN=kubernetes as the old one).
    let new_ca = Ca::import(pki.cert("new-ca.crt"), pki.key("new-ca.key")).unwrap();
    new_ca.check(now()).unwrap();

    let apiserver =
        reissue_and_compare(&pki, "apiserver", "ca.crt", &new_ca, "new-ca.crt", KeyPolicy::Keep);
    let text = pki.openssl(&["x509", "-in", &apiserver, "-noout", "-text"]);
    for san in [
        "DNS:cp-1",
        "DNS:kubernetes",
        "DNS:kubernetes.default",
        "DNS:kubernetes.default.svc",
        "DNS:kubernetes.default.svc.cluster.local",
        "IP Address:10.96.0.1",
        "IP Address:127.0.0.11",
        "IP Address:127.0.0.10",
    ] {
        assert!(text.contains(san), "{san} in {text}");
    }
    assert!(text.contains("TLS Web Server Authentication") && text.contains("CA:FALSE"), "{text}");
    let modulus = pki.openssl(&["x509", "-in", &apiserver, "-noout", "-modulus"]);
    assert_eq!(modulus, pki.openssl(&["rsa", "-in", "apiserver.key", "-noout", "-modulus"]));

    let admin =
        reissue_and_compare(&pki, "admin", "ca.crt", &new_ca, "new-ca.crt", KeyPolicy::Keep);
    let text = pki.openssl(&["x509", "-in", &admin, "-noout", "-text"]);
    assert!(text.contains("O = system:masters, CN = kubernetes-admin"), "{text}");
    assert!(text.contains("TLS Web Client Authentication"), "{text}");

    // Two O= groups survive (a subject kept as a map by attribute type would lose one).
    let groups =
        reissue_and_compare(&pki, "groups", "ca.crt", &new_ca, "new-ca.crt", KeyPolicy::Keep);
    assert!(
        pki.subject(&groups).contains("CN=jane,O=team-a,O=system:masters"),
        "{}",
        pki.subject(&groups)
    );

    // A new key on request, same kind, written as kubeadm writes RSA keys (PKCS#1).
    reissue_and_compare(&pki, "admin", "ca.crt", &new_ca, "new-ca.crt", KeyPolicy::New);
}

#[test]
fn reissued_ecdsa_leaf_under_a_generated_ca_of_the_old_kind() {
    let pki = old_pki();
    let spec = KeyAlgorithm::SameAsOld.resolve(&pki.cert("ec-ca.crt")).unwrap();
    let new_ca = Ca::generate("front-proxy-ca", spec, 3650, now(), &mut OsRng).unwrap();
    pki.write("ec-new-ca.crt", &new_ca.cert_pem());
    reissue_and_compare(&pki, "ec-leaf", "ec-ca.crt", &new_ca, "ec-new-ca.crt", KeyPolicy::Keep);
    let new =
        reissue_and_compare(&pki, "ec-leaf", "ec-ca.crt", &new_ca, "ec-new-ca.crt", KeyPolicy::New);
    assert!(pki.read("ec-leaf-new.key").starts_with("-----BEGIN EC PRIVATE KEY-----"));
    pki.openssl(&["ec", "-in", "ec-leaf-new.key", "-check", "-noout"]);
    // An RSA leaf re-issued by an ECDSA CA (a change of algorithm) verifies too.
    reissue_and_compare(&pki, "apiserver", "ca.crt", &new_ca, "ec-new-ca.crt", KeyPolicy::Keep);
    let text = pki.openssl(&["x509", "-in", &new, "-noout", "-text"]);
    assert!(
        text.contains("ecdsa-with-SHA256") && text.contains("Issuer: CN = front-proxy-ca"),
        "{text}"
    );
}

#[test]
fn keys_are_read_and_written_back_in_their_own_form() {
    let pki = old_pki();
    // kubeadm's forms, byte for byte.
    for name in ["ca.key", "ec-ca.key"] {
        let key = pki.key(name);
        assert_eq!(key.to_pem(), pki.read(name), "{name}");
    }
    assert_eq!(pki.key("ca.key").format(), KeyFormat::Pkcs1);
    assert_eq!(pki.key("ec-ca.key").format(), KeyFormat::Sec1);
    // openssl 3's default PKCS#8 too.
    pki.openssl(&["genrsa", "-out", "p8.key", "2048"]);
    assert!(pki.read("p8.key").starts_with("-----BEGIN PRIVATE KEY-----"));
    let key = pki.key("p8.key");
    assert_eq!((key.format(), key.spec()), (KeyFormat::Pkcs8, KeySpec::Rsa { bits: 2048 }));
    assert_eq!(key.to_pem(), pki.read("p8.key"));
    let pkcs1 = key.with_format(KeyFormat::Pkcs1).unwrap().to_pem();
    pki.write("p1.key", &pkcs1);
    assert_eq!(pki.public_key_of_key("p1.key"), pki.public_key_of_key("p8.key"));
    // A certificate and key in one file (kubelet-client-current.pem).
    let both = format!("{}{}", pki.read("admin.crt"), pki.read("admin.key"));
    let cert = Cert::from_pem(&both, "kubelet-client-current.pem").unwrap();
    assert!(SecretKey::from_pem(&both, "kubelet-client-current.pem").unwrap().matches(&cert));
}

#[test]
fn import_refuses_what_cannot_be_a_new_ca_and_names_the_file() {
    let pki = old_pki();
    let expect_err = |cert: &str, key: &str| {
        let err = Ca::import(pki.cert(cert), pki.key(key)).unwrap_err();
        let message = err.to_string();
        assert!(message.contains(&pki.name(cert)) || message.contains(&pki.name(key)), "{message}");
        err
    };

    let err = expect_err("apiserver.crt", "apiserver.key");
    assert!(matches!(err, PkiError::NotCa { .. }), "{err}");
    assert!(err.to_string().contains(&pki.name("apiserver.crt")));

    pki.rsa_key("nosign.key", "2048");
    pki.self_signed("nosign", "/CN=nosign", "ca_no_certsign");
    let err = expect_err("nosign.crt", "nosign.key");
    assert!(matches!(err, PkiError::NoKeyCertSign { .. }), "{err}");

    pki.openssl(&["genrsa", "-traditional", "-out", "weak.key", "1024"]);
    pki.self_signed("weak", "/CN=weak", "ca");
    let err = Ca::import(
        pki.cert("weak.crt"),
        SecretKey::from_pem(&pki.read("ca.key"), "ca.key").unwrap(),
    )
    .unwrap_err();
    assert!(matches!(err, PkiError::WeakKey { bits: 1024, .. }), "{err}");
    assert!(err.to_string().contains(&pki.name("weak.crt")));

    let err = expect_err("ca.crt", "new-ca.key");
    assert!(matches!(err, PkiError::KeyMismatch { .. }), "{err}");
    assert!(
        err.to_string().contains(&pki.name("ca.crt"))
            && err.to_string().contains(&pki.name("new-ca.key"))
    );
    // The same refusal for the cluster's existing CA.
    assert!(matches!(
        Ca::load(pki.cert("ca.crt"), pki.key("new-ca.key")),
        Err(PkiError::KeyMismatch { .. })
    ));

    // Expired, and not yet valid.
    let ca = Ca::load(pki.cert("ca.crt"), pki.key("ca.key")).unwrap();
    ca.check(now()).unwrap();
    let later = ca.cert().not_after() + SignedDuration::from_secs(1);
    let err = ca.check(later).unwrap_err();
    assert!(
        matches!(err, PkiError::Expired { .. }) && err.to_string().contains(&pki.name("ca.crt")),
        "{err}"
    );
    let earlier = ca.cert().not_before() - SignedDuration::from_secs(1);
    assert!(matches!(ca.check(earlier), Err(PkiError::NotYetValid { .. })));

    // Files that do not parse are named.
    pki.write("garbage.crt", "-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----\n");
    let err = Cert::from_pem(&pki.read("garbage.crt"), &pki.name("garbage.crt")).unwrap_err();
    assert!(
        matches!(err, PkiError::Certificate { .. })
            && err.to_string().contains(&pki.name("garbage.crt")),
        "{err}"
    );
    let err = Cert::from_pem("hello", "/etc/kubernetes/pki/ca.crt").unwrap_err();
    assert!(err.to_string().contains("/etc/kubernetes/pki/ca.crt"), "{err}");
    let err = SecretKey::from_pem(&pki.read("ca.crt"), "/etc/kubernetes/pki/ca.key").unwrap_err();
    assert!(err.to_string().contains("/etc/kubernetes/pki/ca.key"), "{err}");
}

#[test]
fn bundles_have_no_duplicates_keep_order_and_verify_leaves_of_both_cas() {
    let pki = old_pki();
    let (old, new) = (pki.read("ca.crt"), pki.read("new-ca.crt"));
    let both = pki::bundle(&[&old, &new, &old]).unwrap();
    assert_eq!(pki::certs_in(&both, "bundle").unwrap(), 2);
    let certs = pki::split_pem(&both, "bundle").unwrap();
    assert_eq!(certs, vec![pki.cert("ca.crt"), pki.cert("new-ca.crt")]);
    assert_eq!(pki::bundle(&[&both, &new]).unwrap(), both, "bundling again changes nothing");
    let reversed = pki::split_pem(&pki::bundle(&[&new, &both]).unwrap(), "b").unwrap();
    assert_eq!(reversed, vec![pki.cert("new-ca.crt"), pki.cert("ca.crt")]);
    pki.write("bundle.crt", &both);

    let new_ca = Ca::import(pki.cert("new-ca.crt"), pki.key("new-ca.key")).unwrap();
    let reissued =
        pki::reissue(&pki.cert("apiserver.crt"), &new_ca, KeyPolicy::Keep, now(), &mut OsRng)
            .unwrap();
    pki.write("apiserver-new.crt", &reissued.cert.to_pem());
    for leaf in ["apiserver.crt", "apiserver-new.crt"] {
        let (ok, said) = pki.verify("bundle.crt", leaf);
        assert!(ok, "{leaf}: {said}");
        pki::verify_chain(&pki.cert(leaf), &certs, now()).unwrap();
    }
    // The old-only and new-only bundles each verify only their own leaf.
    assert!(pki::verify_chain(&reissued.cert, &certs[..1], now()).is_err());
    assert!(pki::verify_chain(&pki.cert("apiserver.crt"), &certs[1..], now()).is_err());

    let with_key = format!("{old}{}", pki.read("ca.key"));
    assert!(matches!(pki::split_pem(&with_key, "leaky"), Err(PkiError::NotACertificate { .. })));
}

#[test]
fn verify_chain_rejects_wrong_signer_expired_leaf_and_non_ca_issuer() {
    let pki = old_pki();
    let now = now();
    let (ca, ec_ca, new_ca) = (pki.cert("ca.crt"), pki.cert("ec-ca.crt"), pki.cert("new-ca.crt"));
    let admin = pki.cert("admin.crt");
    pki::verify_chain(&admin, std::slice::from_ref(&ca), now).unwrap();

    let err = pki::verify_chain(&admin, std::slice::from_ref(&ec_ca), now).unwrap_err();
    assert!(matches!(err, ChainError::UnknownIssuer { .. }), "{err}");
    // Same name CN=kubernetes, different key: the signature decides.
    let err = pki::verify_chain(&admin, std::slice::from_ref(&new_ca), now).unwrap_err();
    assert!(matches!(err, ChainError::BadSignature { .. }), "{err}");
    assert!(err.to_string().contains(&pki.name("admin.crt")));

    let expired = admin.not_after() + SignedDuration::from_secs(1);
    let err = pki::verify_chain(&admin, std::slice::from_ref(&ca), expired).unwrap_err();
    assert!(matches!(err, ChainError::OutsideValidity { .. }), "{err}");

    // Signed by a leaf: openssl refuses it and so does verify_chain.
    pki.ec_key("by-leaf.key");
    pki.signed("by-leaf", "/CN=by-leaf", "apiserver", "client");
    let (ok, _) = pki.verify("apiserver.crt", "by-leaf.crt");
    assert!(!ok);
    let err =
        pki::verify_chain(&pki.cert("by-leaf.crt"), &[pki.cert("apiserver.crt")], Timestamp::now())
            .unwrap_err();
    assert!(
        matches!(&err, ChainError::BadIssuer { reason, .. } if reason.contains("not a CA")),
        "{err}"
    );

    // Signed by a CA without keyCertSign.
    pki.rsa_key("nosign.key", "2048");
    pki.self_signed("nosign", "/CN=nosign", "ca_no_certsign");
    pki.ec_key("by-nosign.key");
    pki.signed("by-nosign", "/CN=by-nosign", "nosign", "client");
    let err =
        pki::verify_chain(&pki.cert("by-nosign.crt"), &[pki.cert("nosign.crt")], Timestamp::now())
            .unwrap_err();
    assert!(
        matches!(&err, ChainError::BadIssuer { reason, .. } if reason.contains("keyCertSign")),
        "{err}"
    );
}

#[test]
fn reissue_refuses_a_ca_and_caps_validity_at_the_new_ca() {
    let pki = old_pki();
    let new_ca = Ca::generate("kubernetes", KeySpec::EcdsaP256, 30, now(), &mut OsRng).unwrap();
    let err =
        pki::reissue(&pki.cert("ca.crt"), &new_ca, KeyPolicy::Keep, now(), &mut OsRng).unwrap_err();
    assert!(
        matches!(err, PkiError::IsCa { .. }) && err.to_string().contains(&pki.name("ca.crt")),
        "{err}"
    );
    // A 365-day leaf under a 30-day CA ends with the CA.
    let leaf =
        pki::reissue(&pki.cert("admin.crt"), &new_ca, KeyPolicy::Keep, now(), &mut OsRng).unwrap();
    assert_eq!(leaf.cert.not_after(), new_ca.cert().not_after());
    pki.write("short-ca.crt", &new_ca.cert_pem());
    pki.write("short.crt", &leaf.cert.to_pem());
    let (ok, said) = pki.verify("short-ca.crt", "short.crt");
    assert!(ok, "{said}");
}

#[test]
fn reissue_drops_what_describes_the_old_issuer() {
    let pki = old_pki();
    pki.ec_key("urls.key");
    pki.signed("urls", "/CN=system:kube-scheduler", "ca", "with_urls");
    assert!(
        pki.openssl(&["x509", "-in", "urls.crt", "-noout", "-text"]).contains("old-ca.invalid")
    );
    let new_ca = Ca::import(pki.cert("new-ca.crt"), pki.key("new-ca.key")).unwrap();
    let new =
        pki::reissue(&pki.cert("urls.crt"), &new_ca, KeyPolicy::Keep, now(), &mut OsRng).unwrap();
    pki.write("urls-new.crt", &new.cert.to_pem());
    let text = pki.openssl(&["x509", "-in", "urls-new.crt", "-noout", "-text"]);
    assert!(!text.contains("old-ca.invalid"), "{text}");
    assert!(text.contains("TLS Web Client Authentication"), "{text}");
    let (ok, said) = pki.verify("new-ca.crt", "urls-new.crt");
    assert!(ok, "{said}");
}
