//! The end states the end-to-end tests require: after a completed rotation (only the new CAs,
//! everywhere, observed with openssl, curl and kubectl) and after a rollback (every file as it
//! was, every component serving and trusting as before, observed through TLS).

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::kubeca::Kubeca;
use super::snapshot::{Snapshot, differences, snapshot, snapshot_dir};
use super::testbed::Testbed;
use super::tools::{
    file_cert, holds_cert, kubectl, kubectl_ok, pem_bodies, served_cert, sh, text, verifies,
};
use super::wait::eventually;

/// The two CAs a rotation replaces, as PEM, read from cp-1.
#[derive(Clone, Debug)]
pub struct Cas {
    /// The cluster CA (`ca.crt`).
    pub cluster: String,
    /// The front-proxy CA (`front-proxy-ca.crt`).
    pub front_proxy: String,
    /// cp-1's front-proxy client pair (certificate, key), signed by `front_proxy`.
    pub front_proxy_client: (String, String),
}

impl Cas {
    /// cp-1's CAs as they are now.
    pub fn read(tb: &Testbed) -> Cas {
        let read = |f: &str| std::fs::read_to_string(tb.pki("cp-1", f)).unwrap();
        Cas {
            cluster: read("ca.crt"),
            front_proxy: read("front-proxy-ca.crt"),
            front_proxy_client: (read("front-proxy-client.crt"), read("front-proxy-client.key")),
        }
    }
}

/// The certificates (PEM bodies) of `client-ca-file` and `requestheader-client-ca-file` in
/// kube-system/extension-apiserver-authentication; read with `conf`.
fn authentication_cas(conf: &Path) -> (Vec<String>, Vec<String>) {
    let args = ["get", "configmap", "-n", "kube-system", "extension-apiserver-authentication"];
    let cm: serde_json::Value =
        serde_json::from_str(&kubectl_ok(conf, &[&args[..], &["-o", "json"]].concat())).unwrap();
    let get = |key: &str| pem_bodies(cm["data"][key].as_str().unwrap_or(""));
    (get("client-ca-file"), get("requestheader-client-ca-file"))
}

/// Waits until extension-apiserver-authentication holds exactly `cas` (the cluster CA as
/// `client-ca-file`, the front-proxy CA as `requestheader-client-ca-file`); `which` names them.
fn authentication_cas_become(conf: &Path, cas: &Cas, which: &str) {
    let want = (pem_bodies(&cas.cluster), pem_bodies(&cas.front_proxy));
    let what = format!("extension-apiserver-authentication with the {which} CAs only");
    eventually(&what, Duration::from_secs(30), || {
        let (client, header) = authentication_cas(conf);
        if (&client, &header) == (&want.0, &want.1) {
            Ok(())
        } else {
            Err(format!(
                "client-ca-file holds {} certificates, requestheader-client-ca-file {}",
                client.len(),
                header.len()
            ))
        }
    });
}

/// HTTP status of the aggregated metrics API asked directly (on the metrics-server pod's
/// address, :4443) with a front-proxy client pair, as the apiserver's front proxy asks it.
fn aggregated_answers_front_proxy(conf: &Path, pair: &(String, String)) -> u16 {
    let pods: serde_json::Value = serde_json::from_str(&kubectl_ok(
        conf,
        &["get", "pods", "-n", "kube-system", "-o", "json"],
    ))
    .unwrap();
    let Some(pod) = pods["items"].as_array().unwrap().iter().find(|p| {
        p["metadata"]["name"].as_str().is_some_and(|n| n.starts_with("metrics-server"))
            && p["status"]["phase"] == "Running"
    }) else {
        return 0;
    };
    let ip = pod["status"]["podIP"].as_str().or(pod["status"]["hostIP"].as_str()).unwrap_or("");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c"), &pair.0).unwrap();
    std::fs::write(dir.path().join("k"), &pair.1).unwrap();
    let out = sh(&format!(
        "curl -sk --max-time 5 -o /dev/null -w '%{{http_code}}' -H 'X-Remote-User: system:admin' \
         --cert {d}/c --key {d}/k https://{ip}:4443/apis/metrics.k8s.io/v1beta1",
        d = dir.path().display()
    ));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

/// The client certificates embedded in a kubeconfig (`client-certificate-data`), as PEM files.
fn embedded_client_certs(conf: &Path, into: &Path) -> Vec<PathBuf> {
    use base64::Engine as _;
    let text = std::fs::read_to_string(conf).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("client-certificate-data:"))
        .enumerate()
        .map(|(i, b64)| {
            let pem = base64::engine::general_purpose::STANDARD.decode(b64.trim()).unwrap();
            let p = into.join(format!("{}-{i}.crt", conf.file_name().unwrap().to_string_lossy()));
            std::fs::write(&p, pem).unwrap();
            p
        })
        .collect()
}

/// The CA certificates kube-root-ca.crt holds in every namespace, and those cluster-info's
/// kubeconfig holds, as PEM bodies; read with `conf`.
fn published_cas(conf: &Path) -> Vec<(String, Vec<String>)> {
    use base64::Engine as _;
    let mut out = Vec::new();
    let namespaces = kubectl_ok(conf, &["get", "namespaces", "-o", "name"]);
    for ns in namespaces.lines().map(|l| l.trim_start_matches("namespace/")) {
        let pem = kubectl_ok(
            conf,
            &["get", "configmap", "-n", ns, "kube-root-ca.crt", "-o", "jsonpath={.data.ca\\.crt}"],
        );
        out.push((format!("{ns}/kube-root-ca.crt"), pem_bodies(&pem)));
    }
    let kc = kubectl_ok(
        conf,
        &[
            "get",
            "configmap",
            "-n",
            "kube-public",
            "cluster-info",
            "-o",
            "jsonpath={.data.kubeconfig}",
        ],
    );
    let data = kc
        .lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority-data:"))
        .map(|b| {
            String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b.trim()).unwrap())
                .unwrap()
        })
        .unwrap_or_default();
    out.push(("kube-public/cluster-info".into(), pem_bodies(&data)));
    out
}

/// HTTP status of `GET https://ADDRESS:6443/api` with the client certificate of a kubeconfig
/// (not verifying the server: this looks at the server's trust in the client); 0 when the TLS
/// handshake fails.
fn apiserver_answers_client_of(conf: &Path, address: &str) -> u16 {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(conf).unwrap();
    let get = |k: &str| {
        let b = text.lines().find_map(|l| l.trim().strip_prefix(k)).unwrap().trim().to_string();
        base64::engine::general_purpose::STANDARD.decode(b).unwrap()
    };
    std::fs::write(dir.path().join("c"), get("client-certificate-data:")).unwrap();
    std::fs::write(dir.path().join("k"), get("client-key-data:")).unwrap();
    let out = sh(&format!(
        "curl -sk --max-time 5 -o /dev/null -w '%{{http_code}}' --cert {d}/c --key {d}/k https://{address}:6443/api",
        d = dir.path().display()
    ));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0)
}

/// Test 1's end state: every certificate verifies against the new CAs only; no file holds an
/// old CA; the new admin.conf works; the old admin certificate is refused by every apiserver;
/// kube-root-ca.crt and cluster-info hold only the new CA; the journal verifies and its export
/// lists every step with its upstream step and holds no key material.
///
/// `old_admin` is the operator's kubeconfig as it was before the rotation (kubeca rewrites the
/// operator's copy too).
pub fn completed_rotation(tb: &Testbed, old: &Cas, old_admin: &Path, kubeca: &mut Kubeca) {
    let new = Cas::read(tb);
    assert_eq!(pem_bodies(&new.cluster).len(), 1, "cp-1's ca.crt must hold only the new CA");
    assert_ne!(pem_bodies(&new.cluster), pem_bodies(&old.cluster), "the cluster CA did not change");
    assert_ne!(
        pem_bodies(&new.front_proxy),
        pem_bodies(&old.front_proxy),
        "the front-proxy CA did not change"
    );
    let work = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (name, _, cp) in &tb.nodes {
        for (cert, ca) in crate::testbed::pki::certificates_and_cas(*cp, tb.profile) {
            let (new_ca, old_ca) = match ca.rsplit_once('/').map(|(_, f)| f) {
                _ if ca.contains("/etcd/") => continue, // the etcd CA is not rotated
                Some("ca.crt") => (&new.cluster, &old.cluster),
                Some("front-proxy-ca.crt") => (&new.front_proxy, &old.front_proxy),
                _ => unreachable!("no such CA: {ca}"),
            };
            let path = tb.host_path(name, &cert);
            if !verifies(new_ca, &path) {
                failures.push(format!("{name}:{cert} does not verify against the new CA"));
            }
            if verifies(old_ca, &path) {
                failures.push(format!("{name}:{cert} still verifies against the old CA"));
            }
        }
        for conf in [
            "admin.conf",
            "super-admin.conf",
            "controller-manager.conf",
            "scheduler.conf",
            "kubelet.conf",
        ] {
            for c in embedded_client_certs(
                &tb.node_path(name, &format!("etc-kubernetes/{conf}")),
                work.path(),
            ) {
                if !verifies(&new.cluster, &c) || verifies(&old.cluster, &c) {
                    failures.push(format!(
                        "{name}:{conf}'s client certificate is not of the new CA only"
                    ));
                }
            }
        }
        // No file on the node still holds an old CA.
        let mut files = Snapshot::new();
        for rel in ["etc-kubernetes", "var-lib-kubelet"] {
            files.extend(snapshot_dir(&tb.node_path(name, rel)));
        }
        for (p, (bytes, _)) in &files {
            if holds_cert(bytes, &old.cluster) || holds_cert(bytes, &old.front_proxy) {
                failures.push(format!("{} still holds an old CA", p.display()));
            }
        }
    }
    let admin = tb.node_path("cp-1", "etc-kubernetes/admin.conf");
    let nodes = kubectl_ok(&admin, &["get", "nodes", "--no-headers"]);
    // The operator's kubeconfig, rewritten by kubeca, works too.
    kubectl_ok(&tb.dir.join("admin.conf"), &["get", "--raw", "/version"]);
    if nodes.lines().filter(|l| l.split_whitespace().nth(1) == Some("Ready")).count()
        != tb.nodes.len()
    {
        failures.push(format!("not every node is Ready after the rotation:\n{nodes}"));
    }
    for (name, address, cp) in &tb.nodes {
        if !*cp {
            continue;
        }
        let code = apiserver_answers_client_of(old_admin, address);
        if code == 200 {
            failures.push(format!("{name}'s apiserver accepts a client certificate of the old CA"));
        }
        let code = apiserver_answers_client_of(&admin, address);
        if code != 200 {
            failures
                .push(format!("{name}'s apiserver answers {code} to the new admin certificate"));
        }
    }
    let new_body = pem_bodies(&new.cluster);
    for (what, bodies) in published_cas(&admin) {
        if bodies != new_body {
            failures
                .push(format!("{what} holds {} certificates, not only the new CA", bodies.len()));
        }
    }
    kubeca.expect(&["journal", "verify"], 0);
    let export = tb.dir.join("kubeca").join("export.jsonl");
    kubeca.expect(&["journal", "export", "--format", "jsonl", "-o", export.to_str().unwrap()], 0);
    let exported = std::fs::read_to_string(&export).unwrap();
    let plan: serde_json::Value =
        serde_json::from_slice(&kubeca.expect(&["plan", "--output", "json"], 0).stdout).unwrap();
    for step in plan["steps"].as_array().unwrap() {
        let id = step["id"].as_str().unwrap();
        let upstream = step["upstream"].as_str();
        if upstream.is_none_or(str::is_empty) {
            failures.push(format!("plan step {id} has no upstream step"));
        }
        let listed = exported.lines().any(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let done = v["event"]["StepSucceeded"]["step"].as_str() == Some(id)
                || v["event"]["StepRecovered"]["step"].as_str() == Some(id);
            done && v["event"]["upstream_step"].as_str() == upstream
        });
        if !listed {
            failures.push(format!(
                "the export does not list step {id} as done with upstream step {upstream:?}"
            ));
        }
    }
    // Private keys 0600 on every node (the new CA's keys kubeca distributed included) and in
    // the state directory (0700).
    for (name, _, _) in &tb.nodes {
        for rel in ["etc-kubernetes", "var-lib-kubelet/pki"] {
            for (p, (bytes, mode)) in snapshot_dir(&tb.node_path(name, rel)) {
                if String::from_utf8_lossy(&bytes).contains("PRIVATE KEY") && mode & 0o077 != 0 {
                    failures
                        .push(format!("{} holds a private key with mode {mode:o}", p.display()));
                }
            }
        }
    }
    let state_mode = std::fs::metadata(&kubeca.state).unwrap().permissions().mode() & 0o7777;
    if state_mode != 0o700 {
        failures.push(format!("the state directory has mode {state_mode:o}"));
    }
    for (p, (bytes, mode)) in snapshot_dir(&kubeca.state) {
        if String::from_utf8_lossy(&bytes).contains("PRIVATE KEY") && mode & 0o077 != 0 {
            failures.push(format!("{} holds a private key with mode {mode:o}", p.display()));
        }
    }
    let key = std::fs::read_to_string(tb.pki("cp-1", "ca.key")).unwrap();
    let key_body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
    if exported.contains("PRIVATE KEY") || exported.contains(&key_body[..48]) {
        failures.push("the export holds key material".into());
    }
    // extension-apiserver-authentication, where the apiservers merged both CAs, holds only
    // the new ones, and the aggregated API (which watches it) refuses the old front-proxy CA.
    let new_admin = tb.dir.join("admin.conf");
    authentication_cas_become(&new_admin, &new, "new");
    let new_pair = Cas::read(tb).front_proxy_client;
    eventually(
        "the aggregated API refusing the old front-proxy CA",
        Duration::from_secs(30),
        || match (
            aggregated_answers_front_proxy(&new_admin, &old.front_proxy_client),
            aggregated_answers_front_proxy(&new_admin, &new_pair),
        ) {
            (401, 200) => Ok(()),
            other => Err(format!("(old front-proxy client, new one) answered {other:?}")),
        },
    );
    assert!(failures.is_empty(), "after the rotation:\n{}", failures.join("\n"));
}

/// Test 3's end state: every file kubeca may touch is as it was before the rotation (bytes
/// and mode), every apiserver and kubelet serves the certificate it served before, the old
/// admin certificate works against every apiserver, kube-root-ca.crt and cluster-info hold
/// only the old CA, kubectl logs reaches every kubelet through the apiserver, and the
/// aggregated API answers through the front proxy.
pub fn rolled_back(tb: &Testbed, before: &Snapshot, old: &Cas) {
    let after = snapshot(tb);
    let diff = differences(before, &after);
    assert!(
        diff.is_empty(),
        "after the rollback, files differ from before the rotation:\n{}",
        diff.join("\n")
    );
    let admin = tb.dir.join("admin.conf"); // the operator's copy, old CA only
    let mut failures = Vec::new();
    for (name, address, cp) in &tb.nodes {
        if *cp {
            let want = file_cert(&tb.pki(name, "apiserver.crt"));
            if served_cert(address, 6443) != want {
                failures.push(format!(
                    "{name}'s apiserver does not serve its pre-rotation certificate"
                ));
            }
            let out = kubectl(
                &admin,
                &[&format!("--server=https://{address}:6443"), "get", "--raw", "/version"],
            );
            if !out.status.success() {
                failures.push(format!("{name}'s apiserver and the old admin.conf: {}", text(&out)));
            }
        }
        // Its self-signed pair, or with serverTLSBootstrap the one its certificate manager keeps
        // (a link, resolved now: the rollback restored what it points at).
        let served = match tb.profile.kubelet_server_tls_bootstrap() {
            true => tb.host_path(name, "/var/lib/kubelet/pki/kubelet-server-current.pem"),
            false => tb.node_path(name, "var-lib-kubelet/pki/kubelet.crt"),
        };
        let want = file_cert(&served);
        if served_cert(address, 10250) != want {
            failures.push(format!(
                "{name}'s kubelet does not serve its pre-rotation certificate {}",
                served.display()
            ));
        }
    }
    let old_body = pem_bodies(&old.cluster);
    eventually(
        "kube-root-ca.crt and cluster-info back to the old CA",
        Duration::from_secs(30),
        || {
            let wrong: Vec<String> = published_cas(&admin)
                .into_iter()
                .filter(|(_, b)| *b != old_body)
                .map(|(w, _)| w)
                .collect();
            if wrong.is_empty() { Ok(()) } else { Err(wrong.join(", ")) }
        },
    );
    // apiserver -> kubelet on every node (its kubelet client certificate, the kubelet's CA).
    let pods =
        kubectl_ok(&admin, &["get", "pods", "-n", "kube-system", "-o", "wide", "--no-headers"]);
    for line in pods.lines().filter(|l| l.starts_with("kube-proxy-")) {
        let pod = line.split_whitespace().next().unwrap();
        let out = kubectl(&admin, &["logs", "-n", "kube-system", pod]);
        if !out.status.success() {
            failures.push(format!("kubectl logs {pod}: {}", text(&out)));
        }
    }
    let out = kubectl(&admin, &["get", "--raw", "/apis/metrics.k8s.io/v1beta1"]);
    if !out.status.success() {
        failures.push(format!("the aggregated API through the front proxy: {}", text(&out)));
    }
    // extension-apiserver-authentication back to the old CAs only (the apiservers merged the
    // new ones in; the rollback replaced them).
    authentication_cas_become(&admin, old, "old");
    assert!(failures.is_empty(), "after the rollback:\n{}", failures.join("\n"));
}
