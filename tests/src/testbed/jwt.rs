//! Service-account tokens as kube-apiserver signs and verifies them: JWS compact, RS256 with an RSA key or ES256 with a P-256 key, `kid` derived from the public key.
//!
//! Upstream: `pkg/serviceaccount/jwt.go` (`keyIDFromPublicKey`, `signerFromRSAPrivateKey`,
//! `signerFromECDSAPrivateKey`, `jwtTokenAuthenticator.AuthenticateToken`), the claims of
//! `pkg/serviceaccount/claims.go` and `pkg/serviceaccount/legacy.go`. Keys are PEM as kubeadm
//! and openssl write them (PKCS#1, SEC1 or PKCS#8 private keys; PKIX or PKCS#1 public keys);
//! the cryptography is ring's. Neither a key nor a token is ever put into an error message.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair, RsaKeyPair, UnparsedPublicKey};
use serde_json::{Value, json};

/// base64url without padding, as JWS (RFC 7515) and `keyIDFromPublicKey` encode.
const B64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The issuer of legacy Secret-based tokens (`pkg/serviceaccount/legacy.go`, `LegacyIssuer`).
pub const LEGACY_ISSUER: &str = "kubernetes/serviceaccount";

/// go-jose's `jwt.DefaultLeeway`, which the service-account validator uses for exp/nbf/iat.
pub const LEEWAY_SECONDS: i64 = 60;

// DER encodings of the object identifiers a key's AlgorithmIdentifier names.
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// The signing algorithm of a key, by its kind (`jwt.go`: RS256 for every RSA key, ES256 for P-256).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// ECDSA P-256 with SHA-256, the signature as r||s.
    Es256,
}

impl Alg {
    fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
        }
    }
}

/// One DER element: (tag, contents, what follows).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n].iter().fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// Encodes one DER element.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> =
            len.to_be_bytes().iter().copied().skip_while(|b| *b == 0).collect::<Vec<_>>();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// The DER PKIX SubjectPublicKeyInfo of a public key, as Go's `x509.MarshalPKIXPublicKey` writes it.
fn spki(alg: Alg, key: &[u8]) -> Vec<u8> {
    let algorithm = match alg {
        Alg::Rs256 => [der(0x06, OID_RSA), der(0x05, &[])].concat(),
        Alg::Es256 => [der(0x06, OID_EC), der(0x06, OID_P256)].concat(),
    };
    let bits = [&[0u8][..], key].concat();
    der(0x30, &[der(0x30, &algorithm), der(0x03, &bits)].concat())
}

/// `keyIDFromPublicKey`: base64url, unpadded, of the SHA-256 of the DER PKIX public key.
fn key_id(spki_der: &[u8]) -> String {
    B64URL.encode(ring::digest::digest(&ring::digest::SHA256, spki_der))
}

/// Parses a DER SubjectPublicKeyInfo into its algorithm and the key ring verifies with
/// (PKCS#1 RSAPublicKey, or the uncompressed P-256 point).
fn parse_spki(input: &[u8]) -> Result<(Alg, Vec<u8>)> {
    let bad = || anyhow!("not a DER SubjectPublicKeyInfo");
    let (0x30, body, _) = tlv(input).ok_or_else(bad)? else { return Err(bad()) };
    let (0x30, algorithm, rest) = tlv(body).ok_or_else(bad)? else { return Err(bad()) };
    let (0x03, bits, _) = tlv(rest).ok_or_else(bad)? else { return Err(bad()) };
    let (0x06, oid, params) = tlv(algorithm).ok_or_else(bad)? else { return Err(bad()) };
    let key = bits.strip_prefix(&[0u8]).ok_or_else(bad)?.to_vec();
    if oid == OID_RSA {
        return Ok((Alg::Rs256, key));
    }
    if oid == OID_EC {
        match tlv(params) {
            Some((0x06, curve, _)) if curve == OID_P256 => return Ok((Alg::Es256, key)),
            _ => bail!("an ECDSA key on a curve other than P-256"),
        }
    }
    bail!("a public key that is neither RSA nor ECDSA")
}

/// A SEC1 ECPrivateKey (RFC 5915): its private scalar and its public point.
fn parse_sec1(input: &[u8]) -> Result<(Vec<u8>, Vec<u8>)> {
    let bad = || anyhow!("not a DER ECPrivateKey");
    let (0x30, body, _) = tlv(input).ok_or_else(bad)? else { return Err(bad()) };
    let (0x02, _version, rest) = tlv(body).ok_or_else(bad)? else { return Err(bad()) };
    let (0x04, private, mut rest) = tlv(rest).ok_or_else(bad)? else { return Err(bad()) };
    while let Some((tag, content, more)) = tlv(rest) {
        match tag {
            0xa0 => match tlv(content) {
                Some((0x06, curve, _)) if curve == OID_P256 => {}
                _ => bail!("an ECDSA key on a curve other than P-256"),
            },
            0xa1 => {
                let (0x03, bits, _) = tlv(content).ok_or_else(bad)? else { return Err(bad()) };
                let point = bits.strip_prefix(&[0u8]).ok_or_else(bad)?;
                return Ok((private.to_vec(), point.to_vec()));
            }
            _ => {}
        }
        rest = more;
    }
    bail!("an ECPrivateKey without its public key")
}

enum SigningKey {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
}

/// A private key that signs tokens, with the `kid` of its public key.
pub struct Signer {
    key: SigningKey,
    kid: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Only what identifies the key: never the key itself.
        f.debug_struct("Signer").field("alg", &self.alg()).field("kid", &self.kid).finish()
    }
}

impl Signer {
    /// Reads the first private key of a PEM file (`--service-account-signing-key-file`,
    /// `--service-account-private-key-file`).
    pub fn from_file(path: &Path) -> Result<Signer> {
        let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
        Signer::from_pem(&pem).with_context(|| format!("the private key in {}", path.display()))
    }

    /// The first private key of PEM text.
    pub fn from_pem(pem: &[u8]) -> Result<Signer> {
        let rng = SystemRandom::new();
        for item in rustls_pemfile::read_all(&mut &pem[..]) {
            let item = item.map_err(|_| anyhow!("the PEM cannot be parsed"))?;
            let key = match item {
                rustls_pemfile::Item::Pkcs1Key(k) => SigningKey::Rsa(
                    RsaKeyPair::from_der(k.secret_pkcs1_der())
                        .map_err(|e| anyhow!("an RSA key ring refuses: {e}"))?,
                ),
                rustls_pemfile::Item::Sec1Key(k) => {
                    let (private, public) = parse_sec1(k.secret_sec1_der())?;
                    SigningKey::Ec(
                        EcdsaKeyPair::from_private_key_and_public_key(
                            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                            &private,
                            &public,
                            &rng,
                        )
                        .map_err(|e| anyhow!("an ECDSA key ring refuses: {e}"))?,
                    )
                }
                rustls_pemfile::Item::Pkcs8Key(k) => {
                    let der = k.secret_pkcs8_der();
                    match RsaKeyPair::from_pkcs8(der) {
                        Ok(k) => SigningKey::Rsa(k),
                        Err(_) => SigningKey::Ec(
                            EcdsaKeyPair::from_pkcs8(
                                &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                                der,
                                &rng,
                            )
                            .map_err(|e| {
                                anyhow!("a PKCS#8 key that is neither RSA nor P-256: {e}")
                            })?,
                        ),
                    }
                }
                _ => continue,
            };
            let public = match &key {
                SigningKey::Rsa(k) => spki(Alg::Rs256, k.public().as_ref()),
                SigningKey::Ec(k) => spki(Alg::Es256, k.public_key().as_ref()),
            };
            return Ok(Signer { key, kid: key_id(&public), rng });
        }
        bail!("no private key in the PEM")
    }

    /// The signing algorithm.
    pub fn alg(&self) -> Alg {
        match self.key {
            SigningKey::Rsa(_) => Alg::Rs256,
            SigningKey::Ec(_) => Alg::Es256,
        }
    }

    /// The key ID of the public key, as `keyIDFromPublicKey` derives it.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key, as a verifier takes it.
    pub fn public_key(&self) -> PublicKey {
        let (alg, key) = match &self.key {
            SigningKey::Rsa(k) => (Alg::Rs256, k.public().as_ref().to_vec()),
            SigningKey::Ec(k) => (Alg::Es256, k.public_key().as_ref().to_vec()),
        };
        PublicKey { alg, kid: self.kid.clone(), key }
    }

    /// Signs the claims: header `{"alg":…,"kid":…}` (go-jose writes no `typ`).
    pub fn sign(&self, claims: &Value) -> Result<String> {
        let header = json!({"alg": self.alg().name(), "kid": self.kid});
        let input =
            format!("{}.{}", B64URL.encode(header.to_string()), B64URL.encode(claims.to_string()));
        let sig = match &self.key {
            SigningKey::Rsa(k) => {
                let mut sig = vec![0; k.public().modulus_len()];
                k.sign(&signature::RSA_PKCS1_SHA256, &self.rng, input.as_bytes(), &mut sig)
                    .map_err(|_| anyhow!("RSA signing failed"))?;
                sig
            }
            SigningKey::Ec(k) => k
                .sign(&self.rng, input.as_bytes())
                .map_err(|_| anyhow!("ECDSA signing failed"))?
                .as_ref()
                .to_vec(),
        };
        Ok(format!("{input}.{}", B64URL.encode(sig)))
    }
}

/// A public key a verifier tries, with its derived `kid`.
#[derive(Clone, Debug)]
pub struct PublicKey {
    alg: Alg,
    kid: String,
    key: Vec<u8>,
}

impl PublicKey {
    /// The key ID, as `keyIDFromPublicKey` derives it.
    pub fn kid(&self) -> &str {
        &self.kid
    }
}

/// Every public key of a PEM file (`--service-account-key-file`; as `keyutil.ParsePublicKeysPEM`
/// reads it, a private key stands for its public one).
pub fn public_keys_from_file(path: &Path) -> Result<Vec<PublicKey>> {
    let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    public_keys_from_pem(&pem).with_context(|| format!("the keys in {}", path.display()))
}

/// Every public key of PEM text.
pub fn public_keys_from_pem(pem: &[u8]) -> Result<Vec<PublicKey>> {
    let mut keys = Vec::new();
    for item in rustls_pemfile::read_all(&mut &pem[..]) {
        let item = item.map_err(|_| anyhow!("the PEM cannot be parsed"))?;
        match item {
            rustls_pemfile::Item::SubjectPublicKeyInfo(k) => {
                let (alg, key) = parse_spki(k.as_ref())?;
                keys.push(PublicKey { alg, kid: key_id(k.as_ref()), key });
            }
            rustls_pemfile::Item::Pkcs1Key(_)
            | rustls_pemfile::Item::Sec1Key(_)
            | rustls_pemfile::Item::Pkcs8Key(_) => {
                // Each private key block, one by one.
                let block = pem_block(&item);
                keys.push(Signer::from_pem(block.as_bytes())?.public_key());
            }
            _ => {}
        }
    }
    // `-----BEGIN RSA PUBLIC KEY-----` (PKCS#1) is not an item rustls-pemfile knows.
    let text = String::from_utf8_lossy(pem);
    for block in text.split("-----BEGIN RSA PUBLIC KEY-----").skip(1) {
        let body = block.split("-----END RSA PUBLIC KEY-----").next().unwrap_or("");
        let b64: String = body.chars().filter(|c| !c.is_whitespace()).collect();
        let key = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|_| anyhow!("an RSA PUBLIC KEY block that is not base64"))?;
        keys.push(PublicKey { alg: Alg::Rs256, kid: key_id(&spki(Alg::Rs256, &key)), key });
    }
    if keys.is_empty() {
        bail!("no public key in the PEM");
    }
    Ok(keys)
}

/// A private key item back as PEM, so [`Signer::from_pem`] reads just that one.
fn pem_block(item: &rustls_pemfile::Item) -> String {
    let (label, der): (&str, &[u8]) = match item {
        rustls_pemfile::Item::Pkcs1Key(k) => ("RSA PRIVATE KEY", k.secret_pkcs1_der()),
        rustls_pemfile::Item::Sec1Key(k) => ("EC PRIVATE KEY", k.secret_sec1_der()),
        rustls_pemfile::Item::Pkcs8Key(k) => ("PRIVATE KEY", k.secret_pkcs8_der()),
        _ => ("NONE", &[]),
    };
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    format!("-----BEGIN {label}-----\n{b64}\n-----END {label}-----\n")
}

/// The claims of a token, unverified; None when it is not a JWS compact token.
fn unverified_claims(token: &str) -> Option<Value> {
    let mut parts = token.split('.');
    let (_, payload, _, None) = (parts.next()?, parts.next()?, parts.next()?, parts.next()) else {
        return None;
    };
    serde_json::from_slice(&B64URL.decode(payload).ok()?).ok()
}

/// Verifies a token's signature as `jwtTokenAuthenticator.AuthenticateToken` does: a token with
/// a `kid` only against the keys of that kid (none is an error, "invalid signature, no keys
/// found"), one without against every key. Returns its claims.
pub fn verify_signature(token: &str, keys: &[PublicKey]) -> Result<Value, String> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("not a compact JWS".into());
    };
    let header: Value = B64URL
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("the JWS header is not base64url JSON")?;
    let sig = B64URL.decode(s).map_err(|_| "the JWS signature is not base64url")?;
    let alg = match header["alg"].as_str() {
        Some("RS256") => Alg::Rs256,
        Some("ES256") => Alg::Es256,
        other => return Err(format!("unsupported signing algorithm {other:?}")),
    };
    let kid = header["kid"].as_str().unwrap_or("");
    let candidates: Vec<&PublicKey> =
        keys.iter().filter(|k| kid.is_empty() || k.kid == kid).collect();
    if candidates.is_empty() {
        return Err("invalid signature, no keys found".into());
    }
    let input = &token.as_bytes()[..h.len() + 1 + p.len()];
    let verified = candidates.iter().filter(|k| k.alg == alg).any(|k| {
        let algorithm: &dyn signature::VerificationAlgorithm = match k.alg {
            Alg::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
            Alg::Es256 => &signature::ECDSA_P256_SHA256_FIXED,
        };
        UnparsedPublicKey::new(algorithm, &k.key).verify(input, &sig).is_ok()
    });
    if !verified {
        return Err("invalid signature".into());
    }
    B64URL
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| "the JWS payload is not base64url JSON".into())
}

/// What an authenticated token says about its bearer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    /// `system:serviceaccount:<namespace>:<name>`.
    pub user: String,
    /// True for a legacy Secret-based token.
    pub legacy: bool,
}

/// Authenticates a bearer token as the service-account authenticators of kube-apiserver do:
/// `iss` one of `issuers` (checked first, unverified, as `hasCorrectIssuer`), the signature
/// against `keys`, then the claims. A bound token's `aud` must intersect `audiences`, and
/// exp/nbf/iat hold within [`LEEWAY_SECONDS`]; a legacy token (issuer [`LEGACY_ISSUER`]) has no
/// audience or expiry and carries flat `kubernetes.io/serviceaccount/*` claims (legacy.go).
pub fn authenticate(
    token: &str,
    keys: &[PublicKey],
    issuers: &[String],
    audiences: &[String],
    now: i64,
) -> Result<Identity, String> {
    // Not a JWT, or another issuer's: no authenticator claims it, which bearertoken.go
    // reports as "invalid bearer token".
    let iss = unverified_claims(token)
        .and_then(|c| c["iss"].as_str().map(str::to_string))
        .filter(|iss| issuers.contains(iss))
        .ok_or("invalid bearer token")?;
    let claims = verify_signature(token, keys)?;
    let sub = claims["sub"].as_str().unwrap_or("");
    let Some((ns, name)) =
        sub.strip_prefix("system:serviceaccount:").and_then(|s| s.split_once(':'))
    else {
        return Err("sub claim is invalid".into());
    };
    if iss == LEGACY_ISSUER {
        let claim = |k: &str| claims[format!("kubernetes.io/serviceaccount/{k}")].as_str();
        for k in ["namespace", "secret.name", "service-account.name", "service-account.uid"] {
            if claim(k).is_none_or(str::is_empty) {
                return Err(format!("{k} claim is missing"));
            }
        }
        if claim("namespace") != Some(ns) || claim("service-account.name") != Some(name) {
            return Err("sub claim is invalid".into());
        }
        return Ok(Identity { user: sub.to_string(), legacy: true });
    }
    let aud: Vec<&str> = match &claims["aud"] {
        Value::String(a) => vec![a.as_str()],
        Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    };
    // A token without aud gets the implicit API audiences (jwt.go); with one, they must meet.
    if !aud.is_empty() && !aud.iter().any(|a| audiences.iter().any(|b| b == a)) {
        return Err("token audiences is invalid for the target audiences".into());
    }
    let date = |k: &str| claims[k].as_i64();
    if date("exp").is_some_and(|exp| now > exp + LEEWAY_SECONDS) {
        return Err("Token has expired.".into());
    }
    if date("nbf").is_some_and(|nbf| now + LEEWAY_SECONDS < nbf) {
        return Err("token not valid yet (nbf)".into());
    }
    if date("iat").is_some_and(|iat| now + LEEWAY_SECONDS < iat) {
        return Err("token issued in the future (iat)".into());
    }
    let k8s = &claims["kubernetes.io"];
    if k8s["namespace"].as_str() != Some(ns) || k8s["serviceaccount"]["name"].as_str() != Some(name)
    {
        return Err("sub claim is invalid".into());
    }
    Ok(Identity { user: sub.to_string(), legacy: false })
}

/// The reference to a pod or Secret a bound token carries.
#[derive(Clone, Debug)]
pub struct Bound {
    /// `Pod` or `Secret`.
    pub kind: String,
    /// Its name.
    pub name: String,
    /// Its uid.
    pub uid: String,
}

/// The claims of a bound token (`claims.go`, `Claims`): iss, sub, aud, iat, nbf, exp and the
/// `kubernetes.io` object with namespace, serviceaccount and the bound pod or secret.
pub fn bound_claims(
    issuer: &str,
    namespace: &str,
    sa: (&str, &str),
    bound: Option<&Bound>,
    audiences: &[String],
    now: i64,
    expiration_seconds: i64,
) -> Value {
    let (sa_name, sa_uid) = sa;
    let mut k8s = json!({
        "namespace": namespace,
        "serviceaccount": {"name": sa_name, "uid": sa_uid},
    });
    if let Some(b) = bound {
        let field = if b.kind == "Secret" { "secret" } else { "pod" };
        k8s[field] = json!({"name": b.name, "uid": b.uid});
    }
    json!({
        "iss": issuer,
        "sub": format!("system:serviceaccount:{namespace}:{sa_name}"),
        "aud": audiences,
        "iat": now,
        "nbf": now,
        "exp": now + expiration_seconds,
        "kubernetes.io": k8s,
    })
}

/// The claims of a legacy Secret-based token (`legacy.go`, `LegacyClaims`, with the issuer
/// `GenerateToken` adds): no audience, no expiry.
pub fn legacy_claims(namespace: &str, sa: (&str, &str), secret: &str) -> Value {
    let (sa_name, sa_uid) = sa;
    json!({
        "iss": LEGACY_ISSUER,
        "sub": format!("system:serviceaccount:{namespace}:{sa_name}"),
        "kubernetes.io/serviceaccount/namespace": namespace,
        "kubernetes.io/serviceaccount/secret.name": secret,
        "kubernetes.io/serviceaccount/service-account.name": sa_name,
        "kubernetes.io/serviceaccount/service-account.uid": sa_uid,
    })
}

/// A stand-in uid for a ServiceAccount the testbed keeps no object of: stable per
/// namespace and name, in the shape of a uid.
pub fn service_account_uid(namespace: &str, name: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, format!("{namespace}/{name}").as_bytes());
    let h: String = d.as_ref()[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    fn openssl(args: &[&str]) {
        let out = Command::new("openssl").args(args).output().expect("the openssl CLI");
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }

    /// A key pair made as pki.rs makes sa.key/sa.pub; returns (private PEM, public PEM, public DER).
    fn keypair(dir: &Path, name: &str, rsa: bool) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let key = dir.join(format!("{name}.key"));
        let k = key.to_str().unwrap();
        if rsa {
            openssl(&["genrsa", "-traditional", "-out", k, "2048"]);
        } else {
            openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", k]);
        }
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let kind = if rsa { "rsa" } else { "ec" };
        let pubf = dir.join(format!("{name}.pub"));
        let derf = dir.join(format!("{name}.der"));
        openssl(&[kind, "-in", k, "-pubout", "-out", pubf.to_str().unwrap()]);
        openssl(&[kind, "-in", k, "-pubout", "-outform", "DER", "-out", derf.to_str().unwrap()]);
        (std::fs::read(&key).unwrap(), std::fs::read(&pubf).unwrap(), std::fs::read(&derf).unwrap())
    }

    const ISS: &str = "https://kubernetes.default.svc.cluster.local";

    fn claims(now: i64) -> Value {
        let b = Bound { kind: "Pod".into(), name: "p".into(), uid: "u-1".into() };
        bound_claims(ISS, "ns", ("sa", "sa-uid"), Some(&b), &[ISS.to_string()], now, 3607)
    }

    fn auth(token: &str, keys: &[PublicKey], now: i64) -> Result<Identity, String> {
        let issuers = [ISS.to_string(), LEGACY_ISSUER.to_string()];
        authenticate(token, keys, &issuers, &[ISS.to_string()], now)
    }

    #[test]
    fn sign_and_verify_with_rsa_and_p256() {
        let dir = tempfile::tempdir().unwrap();
        for (name, rsa, alg) in [("rsa", true, "RS256"), ("ec", false, "ES256")] {
            let (key, public, public_der) = keypair(dir.path(), name, rsa);
            let signer = Signer::from_pem(&key).unwrap();
            let keys = public_keys_from_pem(&public).unwrap();
            assert_eq!(keys.len(), 1);
            // The kid is upstream's: base64url-nopad(SHA-256(DER PKIX public key)).
            let kid = B64URL.encode(ring::digest::digest(&ring::digest::SHA256, &public_der));
            assert_eq!(signer.kid(), kid);
            assert_eq!(keys[0].kid(), kid);
            let now = 1_800_000_000;
            let token = signer.sign(&claims(now)).unwrap();
            let header: Value =
                serde_json::from_slice(&B64URL.decode(token.split('.').next().unwrap()).unwrap())
                    .unwrap();
            assert_eq!(header, json!({"alg": alg, "kid": kid}));
            let id = auth(&token, &keys, now).unwrap();
            assert_eq!(id.user, "system:serviceaccount:ns:sa");
            assert!(!id.legacy);
            // The private key file stands for its public key too.
            assert!(auth(&token, &public_keys_from_pem(&key).unwrap(), now).is_ok());
        }
    }

    #[test]
    fn a_file_of_several_keys_verifies_tokens_of_each() {
        let dir = tempfile::tempdir().unwrap();
        let (k1, p1, _) = keypair(dir.path(), "a", true);
        let (k2, p2, _) = keypair(dir.path(), "b", false);
        let keys = public_keys_from_pem(&[p1, p2].concat()).unwrap();
        assert_eq!(keys.len(), 2);
        let now = 1_800_000_000;
        for k in [k1, k2] {
            let token = Signer::from_pem(&k).unwrap().sign(&claims(now)).unwrap();
            assert!(auth(&token, &keys, now).is_ok());
        }
    }

    #[test]
    fn wrong_key_tampering_expiry_issuer_and_unknown_kid_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (key, public, _) = keypair(dir.path(), "a", false);
        let (other_key, other_public, _) = keypair(dir.path(), "b", false);
        let keys = public_keys_from_pem(&public).unwrap();
        let signer = Signer::from_pem(&key).unwrap();
        let now = 1_800_000_000;
        let token = signer.sign(&claims(now)).unwrap();

        // Signed by another key: its kid is unknown here.
        let other = Signer::from_pem(&other_key).unwrap().sign(&claims(now)).unwrap();
        assert_eq!(auth(&other, &keys, now).unwrap_err(), "invalid signature, no keys found");
        // The kid of a key that did not sign it: the signature fails.
        let other_keys = public_keys_from_pem(&other_public).unwrap();
        let mut relabelled = other_keys[0].clone();
        relabelled.kid = signer.kid().to_string();
        assert_eq!(auth(&token, &[relabelled], now).unwrap_err(), "invalid signature");

        // A tampered payload.
        let parts: Vec<&str> = token.split('.').collect();
        let mut c = claims(now);
        c["sub"] = json!("system:serviceaccount:kube-system:admin");
        c["kubernetes.io"]["namespace"] = json!("kube-system");
        c["kubernetes.io"]["serviceaccount"]["name"] = json!("admin");
        let forged = format!("{}.{}.{}", parts[0], B64URL.encode(c.to_string()), parts[2]);
        assert_eq!(auth(&forged, &keys, now).unwrap_err(), "invalid signature");

        // Expired, beyond the leeway; within it, still good.
        assert!(auth(&token, &keys, now + 3607 + LEEWAY_SECONDS).is_ok());
        assert_eq!(
            auth(&token, &keys, now + 3607 + LEEWAY_SECONDS + 1).unwrap_err(),
            "Token has expired."
        );
        // Not yet valid.
        assert!(auth(&token, &keys, now - LEEWAY_SECONDS - 1).is_err());

        // Another issuer, or an audience that is not the API's.
        let mut c = claims(now);
        c["iss"] = json!("https://elsewhere");
        assert_eq!(
            auth(&signer.sign(&c).unwrap(), &keys, now).unwrap_err(),
            "invalid bearer token"
        );
        let mut c = claims(now);
        c["aud"] = json!(["vault"]);
        assert!(auth(&signer.sign(&c).unwrap(), &keys, now).is_err());

        // Not a JWT at all (the testbed's old fake token).
        assert_eq!(auth("testbed:ns:sa:uid", &keys, now).unwrap_err(), "invalid bearer token");
    }

    #[test]
    fn a_token_without_kid_is_tried_against_every_key() {
        let dir = tempfile::tempdir().unwrap();
        let (key, public, _) = keypair(dir.path(), "a", true);
        let (_, other_public, _) = keypair(dir.path(), "b", true);
        let keys = public_keys_from_pem(&[other_public, public].concat()).unwrap();
        let signer = Signer::from_pem(&key).unwrap();
        let now = 1_800_000_000;
        let token = signer.sign(&claims(now)).unwrap();
        let (_, rest) = token.split_once('.').unwrap();
        let (payload, _) = rest.split_once('.').unwrap();
        // Re-signed under a header without kid.
        let header = B64URL.encode(json!({"alg": "RS256"}).to_string());
        let input = format!("{header}.{payload}");
        let SigningKey::Rsa(k) = &signer.key else { unreachable!() };
        let mut sig = vec![0; k.public().modulus_len()];
        k.sign(&signature::RSA_PKCS1_SHA256, &signer.rng, input.as_bytes(), &mut sig).unwrap();
        let token = format!("{input}.{}", B64URL.encode(sig));
        assert!(auth(&token, &keys, now).is_ok());
    }

    #[test]
    fn legacy_tokens_verify_without_audience_or_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let (key, public, _) = keypair(dir.path(), "a", true);
        let keys = public_keys_from_pem(&public).unwrap();
        let signer = Signer::from_pem(&key).unwrap();
        let token = signer.sign(&legacy_claims("ns", ("sa", "uid-1"), "sa-token")).unwrap();
        let id = auth(&token, &keys, 4_000_000_000).unwrap();
        assert_eq!(id, Identity { user: "system:serviceaccount:ns:sa".into(), legacy: true });
        let mut c = legacy_claims("ns", ("sa", "uid-1"), "sa-token");
        c["sub"] = json!("system:serviceaccount:kube-system:sa");
        assert_eq!(auth(&signer.sign(&c).unwrap(), &keys, 0).unwrap_err(), "sub claim is invalid");
    }

    #[test]
    fn der_lengths_round_trip() {
        for n in [0usize, 5, 127, 128, 255, 256, 70000] {
            let content = vec![7u8; n];
            let enc = der(0x04, &content);
            let (tag, got, rest) = tlv(&enc).unwrap();
            assert_eq!((tag, got.len(), rest.len()), (0x04, n, 0));
        }
        let uid = service_account_uid("ns", "default");
        assert_eq!(uid.len(), 36);
        assert_eq!(uid, service_account_uid("ns", "default"));
    }
}
