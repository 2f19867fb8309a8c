//! How the simulated apiserver shapes objects: etcd keys, resourceVersions, uids, the metadata it stamps on a write, merge patches, and the builders of the objects it creates itself.

use serde_json::{Value, json};

use super::kinds::Kind;

pub(super) fn key(kind: &Kind, ns: Option<&str>, name: &str) -> String {
    match (kind.namespaced, ns) {
        (true, Some(ns)) => format!("/registry/{}/{ns}/{name}", kind.resource),
        _ => format!("/registry/{}/{name}", kind.resource),
    }
}

fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

pub(super) fn new_rv() -> String {
    jiff::Timestamp::now().as_microsecond().to_string()
}

fn uid() -> String {
    let n = jiff::Timestamp::now().as_nanosecond() as u128 ^ (std::process::id() as u128) << 64;
    let h = format!("{n:032x}");
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

/// Five characters for a `generateName`, from the real generator's alphabet (no vowels, no
/// look-alikes: `utilrand.String`, staging/src/k8s.io/apimachinery/pkg/util/rand/rand.go).
pub(super) fn random_suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut b = [0u8; 5];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b.iter().map(|x| ALPHABET[usize::from(*x) % ALPHABET.len()] as char).collect()
}

/// Whether an update carrying `obj` is refused with 409 Conflict: it names a resourceVersion
/// other than the stored object's (optimistic concurrency, which the leader-election leases of
/// `component::leader_lock` rely on); an update without one is not checked.
pub(super) fn stale(obj: &Value, stored: &Value) -> bool {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .filter(|rv| !rv.is_empty())
        .is_some_and(|rv| Some(rv) != stored["metadata"]["resourceVersion"].as_str())
}

/// RFC 7386 JSON merge patch (also used for strategic merge patches: the testbed only patches
/// maps — metadata and template annotations).
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => {
            let mut p = p.clone();
            if let Value::Object(m) = &mut p {
                m.retain(|_, v| !v.is_null());
            }
            *t = p;
        }
    }
}

pub(super) fn stamp(
    obj: &mut Value,
    kind: &Kind,
    api_version: &str,
    ns: Option<&str>,
    create: bool,
) {
    obj["kind"] = json!(kind.kind);
    obj["apiVersion"] = json!(api_version);
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    let m = &mut obj["metadata"];
    if kind.namespaced {
        m["namespace"] = json!(ns.unwrap_or("default"));
    }
    if create || m["uid"].is_null() {
        m["uid"] = json!(uid());
    }
    if create || m["creationTimestamp"].is_null() {
        m["creationTimestamp"] = json!(now());
    }
    m["resourceVersion"] = json!(new_rv());
    m["generation"] = json!(m["generation"].as_i64().unwrap_or(0) + 1);
}

pub(super) fn meta(name: &str, ns: Option<&str>) -> Value {
    let mut m = json!({"name": name, "uid": uid(), "creationTimestamp": now(), "resourceVersion": new_rv()});
    if let Some(ns) = ns {
        m["namespace"] = json!(ns);
    }
    m
}

pub(super) fn workload(kind: &str, name: &str, program: &str, replicas: Option<u32>) -> Value {
    let mut spec = json!({
        "selector": {"matchLabels": {"k8s-app": name}},
        "template": {
            "metadata": {"labels": {"k8s-app": name}, "annotations": {}},
            "spec": {"containers": [{"name": name, "image": format!("registry.k8s.io/{name}:testbed"), "command": ["kubeca-testbed", program]}], "serviceAccountName": name}
        }
    });
    if let Some(r) = replicas {
        spec["replicas"] = json!(r);
    }
    json!({"apiVersion": "apps/v1", "kind": kind, "metadata": meta(name, Some("kube-system")), "spec": spec, "status": {}})
}

/// The real clients no one here wrote: kube-system/api-proxy, a Deployment whose pod runs
/// `kubectl proxy` in-cluster (client-go's `rest.InClusterConfig` from
/// `staging/src/k8s.io/client-go/rest/config.go`: `KUBERNETES_SERVICE_HOST`/`PORT`, and the
/// token and `ca.crt` under `/var/run/secrets/kubernetes.io/serviceaccount`, the CA read once
/// when the process starts) on a unix socket in an `emptyDir`, and a second container that
/// calls the API through it with curl every two seconds and prints one line per call: the
/// time and `200`, or the time, `error:`, the HTTP code and what came back (kubectl proxy
/// answers a failed upstream call with 500 and the error's text,
/// `staging/src/k8s.io/kubectl/pkg/proxy/proxy_server.go`, `responder.Error`, and logs it).
/// Their logs are what the end-to-end tests judge (harness::checks::in_cluster_clients).
pub(super) fn api_proxy() -> Value {
    let socket = "/var/run/api-proxy";
    let mount = json!([{"name": "socket", "mountPath": socket}]);
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": meta("api-proxy", Some("kube-system")),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"k8s-app": "api-proxy"}},
            "template": {
                "metadata": {"labels": {"k8s-app": "api-proxy"}, "annotations": {}},
                "spec": {
                    "serviceAccountName": "api-proxy",
                    "containers": [
                        {"name": "kubectl", "image": format!("registry.k8s.io/kubectl:{API_PROXY_KUBECTL}"),
                         "command": ["kubectl", "proxy", format!("--unix-socket={socket}/proxy.sock")],
                         "volumeMounts": mount},
                        {"name": "client", "image": "curlimages/curl:8.11.1",
                         "command": ["sh", "-c", API_PROXY_CLIENT],
                         "env": [{"name": "API_PATH", "value": API_PROXY_PATH}],
                         "volumeMounts": mount},
                    ],
                    "volumes": [{"name": "socket", "emptyDir": {}}],
                },
            },
        },
        "status": {},
    })
}

/// The api-proxy pod's client: one call through the proxy's socket every two seconds.
const API_PROXY_CLIENT: &str = r#"S=/var/run/api-proxy/proxy.sock; B=/var/run/api-proxy/answer
while :; do
  rm -f "$B"
  if code=$(curl -sS --max-time 10 --unix-socket "$S" -o "$B" -w '%{http_code}' "http://localhost$API_PATH" 2>&1) && [ "$code" = 200 ]; then
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) 200"
  else
    echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) error: $code $(head -c 300 "$B" 2>/dev/null | tr '\n' ' ')"
  fi
  sleep 2
done
"#;

/// The kubectl the api-proxy pod runs: the minor version of the apiserver's `/version`, within
/// kubectl's supported skew.
pub const API_PROXY_KUBECTL: &str = "v1.31.9";

/// What api-proxy's client asks for through the proxy: an object only an authenticated
/// service account may read.
pub const API_PROXY_PATH: &str = "/api/v1/namespaces/kube-system/configmaps/kube-root-ca.crt";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_update_naming_another_resource_version_is_stale() {
        let stored = json!({"metadata": {"name": "kube-scheduler", "resourceVersion": "7"}});
        let with =
            |rv: Value| json!({"metadata": {"name": "kube-scheduler", "resourceVersion": rv}});
        assert!(!stale(&with(json!("7")), &stored));
        assert!(stale(&with(json!("6")), &stored));
        assert!(!stale(&with(json!("")), &stored));
        assert!(!stale(&json!({"metadata": {"name": "kube-scheduler"}}), &stored));
    }

    #[test]
    fn merge_patch_sets_and_removes_annotations() {
        let mut o = json!({"metadata": {"annotations": {"a": "1", "b": "2"}}, "spec": {"x": 1}});
        merge_patch(&mut o, &json!({"metadata": {"annotations": {"a": null, "c": "3"}}}));
        assert_eq!(o, json!({"metadata": {"annotations": {"b": "2", "c": "3"}}, "spec": {"x": 1}}));
    }
}
