//! The CertificateSigningRequest registry as the real apiserver keeps it
//! (`pkg/registry/certificates/certificates/strategy.go`, validation in
//! `pkg/apis/certificates/validation/validation.go`):
//! - create records who asked (`spec.username`, `uid`, `groups`, from the authenticated user,
//!   whatever the body says) and starts with an empty status (`PrepareForCreate`);
//! - the main resource changes only metadata; `/approval` changes only the Approved, Denied
//!   and Failed conditions (`csrApprovalStrategy`); `/status` changes the certificate and the
//!   other conditions but not Approved or Denied (`csrStatusStrategy`);
//! - a certificate, once set, cannot change ("updates may not modify existing certificate
//!   content"); the API does not check that the request is approved (the signers do), and
//!   Approved and Denied exclude each other and cannot be removed.

use serde_json::{Value, json};

/// Who made a request, as the authenticators report it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requester {
    /// The user name (`system:node:w-1`, `system:serviceaccount:ns:name`, `kubernetes-admin`).
    pub name: String,
    /// Its groups, `system:authenticated` included as the real apiserver adds it
    /// (`authenticatedGroupAdder`).
    pub groups: Vec<String>,
}

impl Requester {
    /// A user with `groups`, plus `system:authenticated`.
    pub fn new(name: &str, groups: &[String]) -> Requester {
        let mut groups = groups.to_vec();
        if !groups.iter().any(|g| g == "system:authenticated") {
            groups.push("system:authenticated".into());
        }
        Requester { name: name.to_string(), groups }
    }
}

/// The object to store for a create by `who`, or why it is invalid (422).
pub fn prepare_create(mut obj: Value, who: &Requester) -> Result<Value, String> {
    let spec = obj.get("spec").cloned().unwrap_or(Value::Null);
    if spec["request"].as_str().is_none_or(str::is_empty) {
        return Err("spec.request: Required value".into());
    }
    if spec["signerName"].as_str().is_none_or(str::is_empty) {
        return Err("spec.signerName: Required value".into());
    }
    if spec["usages"].as_array().is_none_or(Vec::is_empty) {
        return Err("spec.usages: Required value".into());
    }
    if let Some(s) = spec["expirationSeconds"].as_i64()
        && s < 600
    {
        return Err(format!(
            "spec.expirationSeconds: Invalid value: {s}: may not specify a duration less than 600 seconds (10 minutes)"
        ));
    }
    obj["spec"]["username"] = json!(who.name);
    obj["spec"]["groups"] = json!(who.groups);
    obj["spec"]["uid"] = json!("");
    obj["status"] = json!({});
    Ok(obj)
}

fn conditions(obj: &Value) -> Vec<Value> {
    obj["status"]["conditions"].as_array().cloned().unwrap_or_default()
}

fn has(conds: &[Value], kind: &str) -> bool {
    conds.iter().any(|c| c["type"] == kind && c["status"] != "False")
}

fn check_conditions(conds: &[Value]) -> Result<(), String> {
    if has(conds, "Approved") && has(conds, "Denied") {
        return Err("status.conditions: Invalid value: \"Approved\": Approved and Denied conditions are mutually exclusive".into());
    }
    for c in conds {
        if c["type"].as_str().is_none_or(str::is_empty) {
            return Err("status.conditions[].type: Required value".into());
        }
    }
    Ok(())
}

/// The object to store for a `PUT …/approval` of `new` over `old`: only the Approved, Denied
/// and Failed conditions are taken; an approval cannot be withdrawn.
pub fn approval_update(old: &Value, new: &Value) -> Result<Value, String> {
    let decisive = |c: &Value| matches!(c["type"].as_str(), Some("Approved" | "Denied" | "Failed"));
    let mut conds: Vec<Value> = conditions(old).into_iter().filter(|c| !decisive(c)).collect();
    conds.extend(conditions(new).into_iter().filter(decisive));
    for kind in ["Approved", "Denied"] {
        if has(&conditions(old), kind) && !has(&conds, kind) {
            return Err(format!(
                "status.conditions: Forbidden: updates may not remove a condition of type {kind:?}"
            ));
        }
    }
    stamp_conditions(&mut conds);
    check_conditions(&conds)?;
    let mut out = old.clone();
    out["status"]["conditions"] = json!(conds);
    Ok(out)
}

/// The object to store for a `PUT …/status` of `new` over `old`: the certificate (once) and
/// the conditions other than Approved and Denied.
pub fn status_update(old: &Value, new: &Value) -> Result<Value, String> {
    let decided = |c: &Value| matches!(c["type"].as_str(), Some("Approved" | "Denied"));
    let mut conds: Vec<Value> = conditions(old).into_iter().filter(decided).collect();
    conds.extend(conditions(new).into_iter().filter(|c| !decided(c)));
    stamp_conditions(&mut conds);
    check_conditions(&conds)?;
    let mut out = old.clone();
    out["status"]["conditions"] = json!(conds);
    let was = old["status"]["certificate"].as_str().unwrap_or("");
    let cert = new["status"]["certificate"].as_str().unwrap_or("");
    if cert != was {
        if !was.is_empty() {
            return Err("status.certificate: Forbidden: updates may not modify existing certificate content".into());
        }
        out["status"]["certificate"] = json!(cert);
    }
    Ok(out)
}

/// The object to store for an update of `new` over `old` through `sub` (`approval`, `status`,
/// or the main resource), or why it is invalid (422).
pub fn update(sub: Option<&str>, old: &Value, new: &Value) -> Result<Value, String> {
    match sub {
        Some("approval") => approval_update(old, new),
        Some("status") => status_update(old, new),
        _ => Ok(main_update(old, new)),
    }
}

/// The object to store for a plain `PUT` of `new` over `old`: metadata only.
pub fn main_update(old: &Value, new: &Value) -> Value {
    let mut out = old.clone();
    out["metadata"] = new["metadata"].clone();
    out
}

/// `populateConditionTimestamps`: a condition without times gets now.
fn stamp_conditions(conds: &mut [Value]) {
    for c in conds {
        if c["lastUpdateTime"].is_null() {
            c["lastUpdateTime"] = json!(now());
        }
        if c["lastTransitionTime"].is_null() {
            c["lastTransitionTime"] = c["lastUpdateTime"].clone();
        }
    }
}

fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn approved(obj: &Value) -> bool {
        let c = conditions(obj);
        has(&c, "Approved") && !has(&c, "Denied")
    }

    fn csr() -> Value {
        json!({"metadata": {"name": "csr-x"}, "spec": {"request": "UEVN", "signerName": "kubernetes.io/kube-apiserver-client-kubelet", "usages": ["digital signature", "client auth"], "username": "someone-else"}, "status": {"certificate": "Zm9v"}})
    }

    #[test]
    fn a_create_records_the_requester_and_starts_without_status() {
        let who = Requester::new("system:node:w-1", &["system:nodes".into()]);
        let obj = prepare_create(csr(), &who).unwrap();
        assert_eq!(obj["spec"]["username"], "system:node:w-1");
        assert_eq!(obj["spec"]["groups"], json!(["system:nodes", "system:authenticated"]));
        assert_eq!(obj["status"], json!({}));
        let mut bad = csr();
        bad["spec"]["expirationSeconds"] = json!(60);
        assert!(prepare_create(bad, &who).unwrap_err().contains("600 seconds"));
    }

    #[test]
    fn only_approval_approves_and_a_certificate_is_set_once() {
        let who = Requester::new("system:node:w-1", &[]);
        let stored = prepare_create(csr(), &who).unwrap();
        let mut signed = stored.clone();
        signed["status"]["certificate"] = json!("Y2VydA==");
        let mut approve = stored.clone();
        approve["status"]["conditions"] =
            json!([{"type": "Approved", "status": "True", "reason": "AutoApproved"}]);
        // /status cannot approve, /approval can.
        assert!(!approved(&status_update(&stored, &approve).unwrap()));
        let ok = approval_update(&stored, &approve).unwrap();
        assert!(approved(&ok));
        let issued = status_update(&ok, &signed).unwrap();
        assert_eq!(issued["status"]["certificate"], "Y2VydA==");
        let mut again = issued.clone();
        again["status"]["certificate"] = json!("b3RoZXI=");
        assert!(status_update(&issued, &again).unwrap_err().contains("existing certificate"));
        let mut deny = ok.clone();
        deny["status"]["conditions"] = json!([{"type": "Denied", "status": "True"}]);
        assert!(approval_update(&ok, &deny).unwrap_err().contains("may not remove"));
    }
}
