//! The controller-manager's certificate controllers: `csrapproving`, which approves a kubelet's
//! request for its own client certificate, and `csrsigning`, which signs approved requests with
//! `--cluster-signing-cert-file`/`--cluster-signing-key-file` (kube-controller-manager runs them
//! on the leader only, as every controller here).
//!
//! Upstream: `pkg/controller/certificates/approver/sarapprove.go` (recognizers
//! `isSelfNodeClientCert` and `isNodeClientCert`; kubelet-serving requests are never approved
//! here: someone else must), `pkg/controller/certificates/signer/signer.go` (four signers, one
//! per signer name, all with the one pair of files; the files re-read when they change,
//! `ca_provider.go`), `pkg/apis/certificates/helpers.go` (`ValidateKubeletClientCSR`,
//! `ValidateKubeletServingCSR`), `pkg/controller/certificates/cleaner/cleaner.go`.
//!
//! Where the testbed differs: the SubjectAccessReview for `selfnodeclient`/`nodeclient` is
//! taken as allowed for the groups kubeadm binds to those roles (`system:nodes`, and
//! `system:bootstrappers:kubeadm:default-node-token` for bootstrap tokens); requests are found
//! by listing once a round, not by an informer; the cleaner is not simulated (requests stay).

use std::collections::BTreeSet;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use jiff::SignedDuration;
use serde_json::{Value, json};
use x509_parser::prelude::*;

use super::certutil;
use super::client::Client;

/// `kubernetes.io/kube-apiserver-client-kubelet`.
pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// `kubernetes.io/kubelet-serving`.
pub const KUBELET_SERVING_SIGNER: &str = "kubernetes.io/kubelet-serving";
/// The signer names the csrsigning controllers handle (`legacy-unknown` is refused by v1).
const SIGNERS: [&str; 3] =
    [KUBELET_CLIENT_SIGNER, KUBELET_SERVING_SIGNER, "kubernetes.io/kube-apiserver-client"];

/// `--cluster-signing-duration`'s default, 8760h (`RecommendedDefaultCSRSigningControllerConfiguration`).
pub const DEFAULT_SIGNING_DURATION: SignedDuration = SignedDuration::from_hours(8760);

/// The files and duration the signers use.
pub struct Signing {
    /// `--cluster-signing-cert-file`.
    pub cert_file: String,
    /// `--cluster-signing-key-file`.
    pub key_file: String,
    /// `--cluster-signing-duration`.
    pub duration: SignedDuration,
}

/// A Go duration (`8760h`, `8760h0m0s`, `90m`, `30s`).
pub fn go_duration(text: &str) -> Result<SignedDuration> {
    let mut total = 0i64;
    let mut digits = String::new();
    let mut chars = text.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match (c, chars.peek()) {
            ('m', Some('s')) => {
                chars.next();
                0
            }
            ('h', _) => 3_600_000,
            ('m', _) => 60_000,
            ('s', _) => 1000,
            _ => bail!("{text:?} is not a duration (like 8760h0m0s)"),
        };
        let n: i64 = digits.parse().map_err(|_| anyhow!("{text:?} is not a duration"))?;
        total += if unit == 0 { n } else { n * unit };
        digits.clear();
        any = true;
    }
    if !digits.is_empty() || !any {
        bail!("{text:?} is not a duration (like 8760h0m0s)");
    }
    Ok(SignedDuration::from_millis(total))
}

/// The parts of a request the policies look at.
struct Parsed {
    common_name: String,
    organizations: Vec<String>,
    dns_or_ip: usize,
    other_sans: usize,
}

fn parse(csr_pem: &str) -> Result<Parsed> {
    let der = certutil::pem_block(csr_pem, "CERTIFICATE REQUEST")
        .ok_or_else(|| anyhow!("PEM block type must be CERTIFICATE REQUEST"))?;
    let (_, req) = X509CertificationRequest::from_der(&der)
        .map_err(|e| anyhow!("the request does not parse: {e}"))?;
    let subject = &req.certification_request_info.subject;
    let common_name = subject
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or_default()
        .to_string();
    let organizations =
        subject.iter_organization().filter_map(|a| a.as_str().ok()).map(String::from).collect();
    let (mut dns_or_ip, mut other_sans) = (0, 0);
    for ext in req.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext {
            for n in &san.general_names {
                match n {
                    GeneralName::DNSName(_) | GeneralName::IPAddress(_) => dns_or_ip += 1,
                    _ => other_sans += 1,
                }
            }
        }
    }
    Ok(Parsed { common_name, organizations, dns_or_ip, other_sans })
}

fn usage_set(csr: &Value) -> BTreeSet<String> {
    csr["spec"]["usages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(String::from)
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// `ValidateKubeletClientCSR`: O exactly `system:nodes`, no alternative names, CN
/// `system:node:…`, usages {digital signature, (key encipherment,) client auth}.
fn validate_kubelet_client(p: &Parsed, usages: &BTreeSet<String>) -> Result<()> {
    if p.organizations != ["system:nodes"] {
        bail!("subject organization is not system:nodes");
    }
    if p.dns_or_ip + p.other_sans > 0 {
        bail!("DNS, email, IP or URI subjectAltNames are not allowed");
    }
    if !p.common_name.starts_with("system:node:") {
        bail!("subject common name does not begin with system:node:");
    }
    let ok = [
        set(&["digital signature", "key encipherment", "client auth"]),
        set(&["digital signature", "client auth"]),
    ];
    if !ok.contains(usages) {
        bail!("usages did not match [digital signature key encipherment client auth]");
    }
    Ok(())
}

/// `ValidateKubeletServingCSR`: O `system:nodes`, at least one DNS or IP name and no others,
/// usages {digital signature, (key encipherment,) server auth}, CN `system:node:…`.
fn validate_kubelet_serving(p: &Parsed, usages: &BTreeSet<String>) -> Result<()> {
    if p.organizations != ["system:nodes"] {
        bail!("subject organization is not system:nodes");
    }
    if p.dns_or_ip == 0 {
        bail!("DNS or IP subjectAltName is required");
    }
    if p.other_sans > 0 {
        bail!("email and URI subjectAltNames are not allowed");
    }
    let ok = [
        set(&["digital signature", "key encipherment", "server auth"]),
        set(&["digital signature", "server auth"]),
    ];
    if !ok.contains(usages) {
        bail!("usages did not match [digital signature key encipherment server auth]");
    }
    if !p.common_name.starts_with("system:node:") {
        bail!("subject common name does not begin with system:node:");
    }
    Ok(())
}

fn has_condition(csr: &Value, kind: &str) -> bool {
    csr["status"]["conditions"].as_array().into_iter().flatten().any(|c| c["type"] == kind)
}

fn request_pem(csr: &Value) -> Result<String> {
    let b64 = csr["spec"]["request"].as_str().ok_or_else(|| anyhow!("no spec.request"))?;
    let der = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .context("spec.request is not base64")?;
    String::from_utf8(der).context("spec.request is not PEM")
}

/// The Approved condition the approver adds, or None when it leaves the request alone:
/// already decided or issued, not a kubelet client request, or from a requester the role
/// bindings of kubeadm do not let create one.
pub fn approval(csr: &Value) -> Option<Value> {
    if has_condition(csr, "Approved") || has_condition(csr, "Denied") {
        return None;
    }
    if csr["status"]["certificate"].as_str().is_some_and(|c| !c.is_empty()) {
        return None;
    }
    if csr["spec"]["signerName"] != KUBELET_CLIENT_SIGNER {
        return None;
    }
    let p = parse(&request_pem(csr).ok()?).ok()?;
    validate_kubelet_client(&p, &usage_set(csr)).ok()?;
    let user = csr["spec"]["username"].as_str().unwrap_or_default();
    let groups: Vec<&str> =
        csr["spec"]["groups"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    // selfnodeclient: the node renewing its own certificate (kubeadm binds the role to
    // system:nodes: `system:certificates.k8s.io:certificatesigningrequests:selfnodeclient`).
    let message = if user == p.common_name && groups.contains(&"system:nodes") {
        "Auto approving self kubelet client certificate after SubjectAccessReview."
    } else if groups.contains(&"system:bootstrappers:kubeadm:default-node-token") {
        // nodeclient: a joining node with a bootstrap token.
        "Auto approving kubelet client certificate after SubjectAccessReview."
    } else {
        return None;
    };
    Some(
        json!({"type": "Approved", "status": "True", "reason": "AutoApproved", "message": message}),
    )
}

/// Why the signer did not sign.
#[derive(Debug)]
pub enum Unsigned {
    /// The request fails the signer's validation: a Failed condition
    /// (`SignerValidationFailure`).
    Invalid(String),
    /// The signature failed (files unreadable, CA expired): retried, no condition.
    Retry(String),
}

/// What the signer does with `csr`: None to leave it (not approved, denied, failed, issued, or
/// another signer's), else the certificate or why not.
pub fn signature(
    csr: &Value,
    signing: &Signing,
    now: jiff::Timestamp,
) -> Option<Result<String, Unsigned>> {
    let signer = csr["spec"]["signerName"].as_str()?;
    if !SIGNERS.contains(&signer)
        || !has_condition(csr, "Approved")
        || has_condition(csr, "Denied")
        || has_condition(csr, "Failed")
        || csr["status"]["certificate"].as_str().is_some_and(|c| !c.is_empty())
    {
        return None;
    }
    let pem = match request_pem(csr) {
        Ok(p) => p,
        Err(e) => return Some(Err(Unsigned::Invalid(format!("{e:#}")))),
    };
    let usages = usage_set(csr);
    let valid = parse(&pem).and_then(|p| match signer {
        KUBELET_CLIENT_SIGNER => validate_kubelet_client(&p, &usages),
        KUBELET_SERVING_SIGNER => validate_kubelet_serving(&p, &usages),
        _ => Ok(()),
    });
    if let Err(e) = valid {
        return Some(Err(Unsigned::Invalid(format!("{e:#}"))));
    }
    // `signer.duration`: the requested lifetime capped at the flag, at least 10 minutes.
    let ttl = match csr["spec"]["expirationSeconds"].as_i64() {
        Some(s) => {
            SignedDuration::from_secs(s).clamp(SignedDuration::from_mins(10), signing.duration)
        }
        None => signing.duration,
    };
    // `currentCA` re-reads the files on every signature.
    let files = std::fs::read_to_string(&signing.cert_file)
        .with_context(|| format!("reading --cluster-signing-cert-file {}", signing.cert_file))
        .and_then(|c| {
            let k = std::fs::read_to_string(&signing.key_file).with_context(|| {
                format!("reading --cluster-signing-key-file {}", signing.key_file)
            })?;
            Ok((c, k))
        });
    let usages: Vec<String> = usages.into_iter().collect();
    Some(
        files
            .and_then(|(c, k)| certutil::sign_request(&pem, &usages, &c, &k, ttl, now))
            .map_err(|e| Unsigned::Retry(format!("{e:#}"))),
    )
}

/// One round of both controllers over every request.
pub async fn round(api: &Client, signing: Option<&Signing>) -> Result<()> {
    let path = "/apis/certificates.k8s.io/v1/certificatesigningrequests";
    for mut csr in api.list(path).await? {
        let Some(name) = csr["metadata"]["name"].as_str().map(String::from) else { continue };
        if let Some(cond) = approval(&csr) {
            let mut conds = csr["status"]["conditions"].as_array().cloned().unwrap_or_default();
            conds.push(cond);
            csr["status"]["conditions"] = json!(conds);
            csr = api.update(&format!("{path}/{name}/approval"), &csr).await?;
            eprintln!(
                "{} kube-controller-manager: csrapproving: approved {name}",
                jiff::Timestamp::now()
            );
        }
        let Some(signing) = signing else { continue };
        match signature(&csr, signing, jiff::Timestamp::now()) {
            None => {}
            Some(Ok(cert)) => {
                let b64 = base64::engine::general_purpose::STANDARD.encode(cert);
                csr["status"]["certificate"] = json!(b64);
                api.update(&format!("{path}/{name}/status"), &csr).await?;
                eprintln!(
                    "{} kube-controller-manager: csrsigning: signed {name}",
                    jiff::Timestamp::now()
                );
            }
            Some(Err(Unsigned::Retry(why))) => {
                eprintln!(
                    "{} kube-controller-manager: csrsigning {name}: {why}",
                    jiff::Timestamp::now()
                );
            }
            Some(Err(Unsigned::Invalid(why))) => {
                let mut conds = csr["status"]["conditions"].as_array().cloned().unwrap_or_default();
                conds.push(json!({"type": "Failed", "status": "True", "reason": "SignerValidationFailure", "message": why}));
                csr["status"]["conditions"] = json!(conds);
                api.update(&format!("{path}/{name}/status"), &csr).await?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(node: &str, user: &str, groups: &[&str], usages: &[&str]) -> Value {
        let r = certutil::node_client_request(node).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(r.csr_pem);
        json!({"metadata": {"name": "csr-abcde"}, "spec": {"request": b64, "signerName": KUBELET_CLIENT_SIGNER, "usages": usages, "username": user, "groups": groups}, "status": {}})
    }

    #[test]
    fn a_node_renewing_its_own_client_certificate_is_approved_others_are_not() {
        let ok = ["digital signature", "client auth"];
        let own = request("w-1", "system:node:w-1", &["system:nodes", "system:authenticated"], &ok);
        let cond = approval(&own).unwrap();
        assert_eq!(cond["reason"], "AutoApproved");
        assert!(cond["message"].as_str().unwrap().contains("self kubelet client"));
        let other = request("w-2", "system:node:w-1", &["system:nodes"], &ok);
        assert!(approval(&other).is_none(), "a node asking for another node's name");
        let admin = request("w-1", "kubernetes-admin", &["system:masters"], &ok);
        assert!(approval(&admin).is_none());
        let serving = request(
            "w-1",
            "system:node:w-1",
            &["system:nodes"],
            &["digital signature", "server auth"],
        );
        assert!(approval(&serving).is_none(), "usages of a serving certificate");
        let mut serving_signer = own.clone();
        serving_signer["spec"]["signerName"] = json!(KUBELET_SERVING_SIGNER);
        assert!(approval(&serving_signer).is_none(), "kubelet-serving is never auto-approved");
        let mut done = own.clone();
        done["status"]["conditions"] = json!([cond]);
        assert!(approval(&done).is_none(), "already approved");
    }

    #[test]
    fn durations_read_as_go_writes_them() {
        assert_eq!(go_duration("8760h0m0s").unwrap(), SignedDuration::from_hours(8760));
        assert_eq!(go_duration("90m").unwrap(), SignedDuration::from_mins(90));
        assert_eq!(go_duration("1h30m15s").unwrap().as_secs(), 5415);
        assert_eq!(go_duration("500ms").unwrap().as_millis(), 500);
        assert!(
            go_duration("10").is_err() && go_duration("").is_err() && go_duration("3d").is_err()
        );
    }

    #[test]
    fn only_approved_requests_are_signed_within_the_flags_duration() {
        let dir = tempfile::tempdir().unwrap();
        let now = jiff::Timestamp::now();
        let ca = certutil::kubeadm_ca("kubernetes", actions::pki::KeySpec::EcdsaP256, now).unwrap();
        let (c, k) = (dir.path().join("ca.crt"), dir.path().join("ca.key"));
        std::fs::write(&c, &ca.cert_pem).unwrap();
        std::fs::write(&k, &ca.key_pem).unwrap();
        let signing = Signing {
            cert_file: c.display().to_string(),
            key_file: k.display().to_string(),
            duration: SignedDuration::from_mins(30),
        };
        let mut csr = request(
            "w-1",
            "system:node:w-1",
            &["system:nodes"],
            &["digital signature", "client auth"],
        );
        assert!(signature(&csr, &signing, now).is_none(), "pending");
        csr["status"]["conditions"] = json!([approval(&csr).unwrap()]);
        csr["spec"]["expirationSeconds"] = json!(7 * 24 * 3600);
        let pem = signature(&csr, &signing, now).unwrap().unwrap();
        let der = x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()).next().unwrap().unwrap();
        let (_, leaf) = X509Certificate::from_der(&der.contents).unwrap();
        assert_eq!(
            leaf.validity().not_after.timestamp(),
            now.as_second() + 1800,
            "capped at the flag"
        );
        csr["spec"]["usages"] = json!(["digital signature", "server auth"]);
        let why = signature(&csr, &signing, now).unwrap().unwrap_err();
        assert!(
            matches!(&why, Unsigned::Invalid(w) if w.contains("usages did not match")),
            "{why:?}"
        );
    }
}
