//! What every simulated component shares: its flags, the health endpoint of its secure port, leader election on a Lease, and state files written atomically.
//!
//! The control-plane programs (`apiserver`, `controller_manager`, `scheduler`) take their flags
//! from a static pod manifest ([`parse_flags`], [`require`]); the controller-manager and the
//! scheduler serve `/healthz` on their secure port ([`start_healthz`]) and run only while they
//! hold their lease in kube-system ([`leader_lock`]); the kubelet keeps what it runs in state
//! files a restarted kubelet reads back ([`save_state`], [`state_path`], [`write_atomic`]).

use std::collections::HashMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde_json::{Value, json};

use super::client::Client;
use super::{monitor, tls};

// ---------------------------------------------------------------------------------------------
// Flags.

/// Parses `--key=value` flags into a map (later flags win, as with Go's flag package).
pub fn parse_flags(args: &[String]) -> HashMap<String, String> {
    args.iter()
        .filter_map(|a| a.strip_prefix("--"))
        .map(|a| match a.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (a.to_string(), "true".to_string()),
        })
        .collect()
}

/// The value of flag `k`; an error naming the flag when it is not set or empty.
pub fn require<'a>(flags: &'a HashMap<String, String>, k: &str) -> Result<&'a str> {
    match flags.get(k) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => bail!("--{k} is required"),
    }
}

// ---------------------------------------------------------------------------------------------
// The health endpoint.

/// Starts the TLS health endpoint of a control-plane component (self-signed pair, as upstream;
/// client certificates verified against the client CA when one is presented).
///
/// Without `--bind-address` upstream listens on 0.0.0.0 (`NewSecureServingOptions` in
/// k8s.io/apiserver/pkg/server/options/serving.go): every address of the node's namespace.
///
/// The client CA is `--client-ca-file`, read once at start. Without it, a component given an
/// `--authentication-kubeconfig` reads it from the `client-ca-file` key of
/// kube-system/extension-apiserver-authentication and follows its changes, as
/// `DelegatingAuthenticationOptions.ApplyTo` sets up
/// (staging/src/k8s.io/apiserver/pkg/server/options/authentication.go:
/// `NewDynamicCAFromConfigMapController("client-ca", …, "client-ca-file", client)`): kubeadm
/// gives kube-scheduler no `--client-ca-file` (`getSchedulerCommand`,
/// cmd/kubeadm/app/phases/controlplane/manifests.go). Until the first read no client
/// certificate authenticates (`VerifyOptions` reports none, dynamiccertificates/
/// configmap_cafile_content.go).
pub fn start_healthz(flags: &HashMap<String, String>, name: &str, default_port: u16) -> Result<()> {
    let address = flags.get("bind-address").cloned().unwrap_or_else(|| "0.0.0.0".into());
    let port = flags.get("secure-port").and_then(|p| p.parse().ok()).unwrap_or(default_port);
    let me = monitor::me(name);
    let name = name.to_string();
    let (crt, key) = tls::self_signed(Path::new("/run/kubernetes"), &name, &address)?;
    // --client-ca-file authenticates callers of the secure port; health checks may come
    // without a certificate.
    let initial = match flags.get("client-ca-file") {
        Some(ca) => tls::server_config(&crt, &key, tls::ClientAuth::Optional(Path::new(ca)))?,
        None => tls::server_config(&crt, &key, tls::ClientAuth::None)?,
    };
    let current = Arc::new(std::sync::RwLock::new(initial));
    if !flags.contains_key("client-ca-file")
        && let Some(conf) = flags.get("authentication-kubeconfig")
    {
        let creds = super::client::Credentials::from_kubeconfig(Path::new(conf))?;
        let api = Client::new(&creds, &me, &format!("{name}->apiserver (authentication)"))?;
        let (current, name) = (current.clone(), name.clone());
        tokio::spawn(async move {
            follow_client_ca(&api, &crt, &key, &current, &name).await;
        });
    }
    let addr = format!("{address}:{port}").parse().context("--bind-address:--secure-port")?;
    tokio::spawn(async move {
        if let Err(e) = serve_healthz(addr, current, me).await {
            eprintln!("{} {name}: health endpoint: {e:#}", jiff::Timestamp::now());
        }
    });
    Ok(())
}

/// How often the delegated client CA is read again. Upstream watches the ConfigMap (changes
/// arrive at once) and re-reads it every minute besides (`FileRefreshDuration`); the testbed
/// polls instead of watching.
const CLIENT_CA_POLL: std::time::Duration = std::time::Duration::from_secs(2);

/// Follows the `client-ca-file` of extension-apiserver-authentication: each new value becomes
/// the endpoint's client CA; one that cannot be read or parsed leaves the last good one (as
/// `RunOnce` ignores a load error).
async fn follow_client_ca(
    api: &Client,
    crt: &Path,
    key: &Path,
    current: &std::sync::RwLock<Arc<rustls::ServerConfig>>,
    name: &str,
) {
    let path = "/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication";
    let mut last: Option<String> = None;
    loop {
        let seen = match api.get(path).await {
            Ok(Some(cm)) => cm["data"]["client-ca-file"].as_str().map(str::to_string),
            Ok(None) => None,
            Err(e) => {
                eprintln!("{} {name}: reading the client CA: {e:#}", jiff::Timestamp::now());
                last.clone()
            }
        };
        if seen != last {
            let what = "extension-apiserver-authentication client-ca-file";
            let built = match &seen {
                Some(pem) => {
                    tls::server_config(crt, key, tls::ClientAuth::OptionalPem(pem.as_bytes(), what))
                }
                // Deleted: no client certificate authenticates any more.
                None => tls::server_config(crt, key, tls::ClientAuth::None),
            };
            match built {
                Ok(cfg) => {
                    if let Ok(mut slot) = current.write() {
                        *slot = cfg;
                    }
                    last = seen;
                }
                Err(e) => eprintln!("{} {name}: {what}: {e:#}", jiff::Timestamp::now()),
            }
        }
        tokio::time::sleep(CLIENT_CA_POLL).await;
    }
}

/// Serves `GET /healthz` = ok over TLS on `addr` (the probes of the kubelet and of kubeca).
/// Each connection is served with the configuration current when it arrives.
async fn serve_healthz(
    addr: SocketAddr,
    cfg: Arc<std::sync::RwLock<Arc<rustls::ServerConfig>>>,
    me: String,
) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    loop {
        let Ok((tcp, peer)) = listener.accept().await else { continue };
        let Ok(current) = cfg.read().map(|c| c.clone()) else { continue };
        let acceptor = tokio_rustls::TlsAcceptor::from(current);
        let me = me.clone();
        tokio::spawn(async move {
            let client = peer.ip().to_string();
            let edge = (client.as_str(), me.as_str(), "client->healthz");
            let Some(stream) = tls::accept(&acceptor, tcp, peer, edge).await else { return };
            let service = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(hyper::Response::new(http_body_util::Full::new(
                    bytes::Bytes::from_static(b"ok"),
                )))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

// ---------------------------------------------------------------------------------------------
// Leader election.

/// How long a lease holds without a renewal: `--leader-elect-lease-duration`'s default, 15 s
/// (`RecommendedDefaultLeaderElectionConfiguration`,
/// staging/src/k8s.io/component-base/config/v1alpha1/defaults.go).
pub const LEASE_DURATION_SECONDS: i64 = 15;

/// The collection of the leader-election leases of the control plane.
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases";

/// One round of leader election on the Lease kube-system/`lease`, as client-go's
/// `tryAcquireOrRenew` (staging/src/k8s.io/client-go/tools/leaderelection/leaderelection.go)
/// runs it on a `LeaseLock` (.../leaderelection/resourcelock/leaselock.go): GET the lease;
/// create it when there is none; otherwise, unless another holder's lease is still valid, PUT
/// the object as read with this candidate's record, its `metadata.resourceVersion` included,
/// so that of two candidates writing the same version the apiserver refuses one with 409.
/// True when this process holds the lease now.
pub async fn leader_lock(api: &Client, lease: &str, me: &str) -> Result<bool> {
    let path = format!("{LEASES}/{lease}");
    let current = api.get(&path).await?;
    let Some(spec) = claim(current.as_ref(), me, jiff::Timestamp::now()) else {
        return Ok(false);
    };
    let (method, target, obj) = match current {
        None => {
            let obj = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": lease, "namespace": "kube-system"}, "spec": spec});
            ("POST", LEASES.to_string(), obj)
        }
        Some(mut obj) => {
            obj["spec"] = spec;
            ("PUT", path, obj)
        }
    };
    let r = api.request(method, &target, None, Some(&obj)).await?;
    match r.status {
        200..=299 => Ok(true),
        // Another candidate created or wrote the lease since the GET: it leads this round.
        409 => Ok(false),
        s => bail!("{method} {target}: HTTP {s}: {}", r.body["message"].as_str().unwrap_or("")),
    }
}

/// The lease spec candidate `me` writes at `now` to take or renew the lease `current` (None
/// when it does not exist yet); None when another holder's lease is still valid. As in
/// `tryAcquireOrRenew`: the holder keeps its `acquireTime` and `leaseTransitions`, a new holder
/// counts one more transition, a lease with no holder or not renewed within its
/// `leaseDurationSeconds` is free.
fn claim(current: Option<&Value>, me: &str, now: jiff::Timestamp) -> Option<Value> {
    // A MicroTime: RFC 3339 with microseconds.
    let time = format!("{now:.6}");
    let mut spec = json!({"holderIdentity": me, "leaseDurationSeconds": LEASE_DURATION_SECONDS,
        "acquireTime": time, "renewTime": time, "leaseTransitions": 0});
    let Some(old) = current.map(|l| &l["spec"]) else { return Some(spec) };
    let holder = old["holderIdentity"].as_str().unwrap_or("");
    let transitions = old["leaseTransitions"].as_i64().unwrap_or(0);
    if holder == me {
        if old["acquireTime"].is_string() {
            spec["acquireTime"] = old["acquireTime"].clone();
        }
        spec["leaseTransitions"] = json!(transitions);
        return Some(spec);
    }
    let duration = old["leaseDurationSeconds"].as_i64().unwrap_or(LEASE_DURATION_SECONDS);
    let renewed = old["renewTime"].as_str().and_then(|t| t.parse::<jiff::Timestamp>().ok());
    let valid = renewed.is_some_and(|t| now.duration_since(t).as_secs() < duration);
    if !holder.is_empty() && valid {
        return None;
    }
    spec["leaseTransitions"] = json!(transitions + 1);
    Some(spec)
}

// ---------------------------------------------------------------------------------------------
// State files.

/// `dir/<name>.json`: the state file of one thing a component runs (a static pod, an API pod).
pub fn state_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.json"))
}

/// Writes `state` as JSON to `path` through [`write_atomic`], creating its directory: a reader
/// (a restarted kubelet, the API side, a test) sees the old state or the new, never half.
pub fn save_state(path: &Path, state: &impl Serialize) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    write_atomic(path, &serde_json::to_vec_pretty(state)?)
}

/// Writes `bytes` to `path` through `<name>.tmp` beside it, synced, then renamed over `path`, as
/// the kubelet's atomic writer updates projected volumes: a reader never sees half a file, and
/// a crash leaves the old content or the new.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_parse_later_ones_win_and_a_bare_flag_is_true() {
        let f = parse_flags(&args(&["--a=1", "--leader-elect", "x", "--a=2", "--b="]));
        assert_eq!(f.get("a").map(String::as_str), Some("2"));
        assert_eq!(f.get("leader-elect").map(String::as_str), Some("true"));
        assert_eq!(f.len(), 3);
        assert_eq!(require(&f, "a").unwrap(), "2");
        let err = require(&f, "b").unwrap_err().to_string();
        assert_eq!(err, "--b is required");
        assert_eq!(require(&f, "kubeconfig").unwrap_err().to_string(), "--kubeconfig is required");
    }

    fn lease(holder: &str, renewed: jiff::Timestamp, transitions: i64) -> Value {
        json!({"metadata": {"name": "kube-scheduler", "resourceVersion": "7"}, "spec": {
            "holderIdentity": holder, "leaseDurationSeconds": 15, "acquireTime": "then",
            "renewTime": format!("{renewed:.6}"), "leaseTransitions": transitions}})
    }

    #[test]
    fn a_valid_lease_of_another_holder_is_not_taken() {
        let now = jiff::Timestamp::now();
        let ago = |s: i64| now - jiff::SignedDuration::from_secs(s);
        assert_eq!(claim(Some(&lease("cp-2", ago(5), 3)), "cp-1", now), None);
        // Expired, or never held: taken, one transition more, acquired now.
        let taken = claim(Some(&lease("cp-2", ago(16), 3)), "cp-1", now).unwrap();
        assert_eq!(taken["holderIdentity"], "cp-1");
        assert_eq!(taken["leaseTransitions"], 4);
        assert_eq!(taken["acquireTime"], taken["renewTime"]);
        // A MicroTime: now, to the microsecond.
        let renewed: jiff::Timestamp = taken["renewTime"].as_str().unwrap().parse().unwrap();
        assert!(renewed <= now && now.duration_since(renewed).as_micros() < 1, "{renewed}");
        let free = claim(Some(&lease("", ago(1), 0)), "cp-1", now).unwrap();
        assert_eq!(free["holderIdentity"], "cp-1");
    }

    #[test]
    fn the_holder_renews_keeping_its_acquire_time_and_a_new_lease_is_created() {
        let now = jiff::Timestamp::now();
        let renewed = claim(Some(&lease("cp-1", now, 3)), "cp-1", now).unwrap();
        assert_eq!(renewed["acquireTime"], "then");
        assert_eq!(renewed["leaseTransitions"], 3);
        assert_eq!(renewed["leaseDurationSeconds"], LEASE_DURATION_SECONDS);
        let created = claim(None, "cp-1", now).unwrap();
        assert_eq!(created["holderIdentity"], "cp-1");
        assert_eq!(created["leaseTransitions"], 0);
    }

    #[test]
    fn a_state_file_is_replaced_whole_and_no_temporary_file_stays() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_path(&dir.path().join("static-pods"), "etcd-cp-1");
        assert_eq!(path, dir.path().join("static-pods/etcd-cp-1.json"));
        save_state(&path, &json!({"pid": 1})).unwrap();
        save_state(&path, &json!({"pid": 2})).unwrap();
        let v: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        assert_eq!(v["pid"], 2);
        let ca = dir.path().join("ca.crt");
        write_atomic(&ca, b"PEM").unwrap();
        assert_eq!(std::fs::read(&ca).unwrap(), b"PEM");
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["ca.crt", "static-pods"]);
    }
}
