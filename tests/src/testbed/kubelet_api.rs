//! The kubelet's API side: node registration and status, and running the pods the API assigns to its node.
//!
//! API pods run their containers each in a process group and a mount namespace of its own
//! (container.rs), with the pod's projected service-account volume (token, and ca.crt kept
//! equal to the namespace's kube-root-ca.crt) from `/var/lib/kubelet/pods/<uid>/volumes/...`
//! mounted at `/var/run/secrets/kubernetes.io/serviceaccount` and its `emptyDir` volumes at
//! their mount paths; they outlive a kubelet restart, and the next kubelet adopts them from
//! `/run/kubelet/api-pods/<uid>.json`.
//!
//! The kubelet (kubelet.rs) builds a [`KubeletContext`] from its flags and awaits [`run`]
//! inside its runtime next to its :10250 server. `run` only returns on an error that the kubelet
//! should log; the kubelet keeps serving its static pods either way.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rustix::process::Signal;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::client::{Client, Credentials};
use super::component::{self, write_atomic};
use super::container;
use super::node::{alive, proc_stat, to_pid};
use super::subnet;

/// What the kubelet's API side needs from the kubelet process; all values come from its flags
/// and environment, read once at start as the real kubelet does.
#[derive(Clone, Debug)]
pub struct KubeletContext {
    /// The node's name (`--hostname-override`, e.g. `cp-1`, `w-2`).
    pub node_name: String,
    /// The node's address (`--node-ip`, e.g. `198.18.0.11`): the node's InternalIP, and the
    /// address pods assigned to this node listen on.
    pub node_address: String,
    /// `--kubeconfig` (normally `/etc/kubernetes/kubelet.conf`), read once at start.
    pub kubeconfig: PathBuf,
    /// The `kubeca-testbed` binary: API pods run as `kubeca-testbed <program> ARGS`.
    pub exe: PathBuf,
    /// The testbed directory (KUBECA_TESTBED_DIR), passed on to the pods it starts.
    pub testbed_dir: PathBuf,
    /// Where container logs go: `<pod_log_dir>/<ns>_<pod>_<uid>/<container>/0.log`
    /// (normally `/var/log/pods`, the node's own through its bind mount).
    pub pod_log_dir: PathBuf,
    /// The kubelet's port (10250), published in the node's status as daemonEndpoints.
    pub kubelet_port: u16,
    /// True on control-plane nodes (label `node-role.kubernetes.io/control-plane`).
    pub control_plane: bool,
    /// Where the pods reach the API, told to them as KUBERNETES_SERVICE_HOST and
    /// KUBERNETES_SERVICE_PORT: the testbed's load balancer, standing in for the `kubernetes`
    /// Service (the testbed has no Service addresses).
    pub api_service: std::net::SocketAddr,
    /// `rotateCertificates: true`: the `--cert-dir` whose `kubelet-client-current.pem` it
    /// renews through the CSR API (`kubelet_certs`).
    pub rotate_client_cert: Option<PathBuf>,
    /// The certificate directory when the kubelet bootstraps its serving certificate through
    /// the CSR API (`serverTLSBootstrap`).
    pub serving_bootstrap: Option<PathBuf>,
    /// The node's hostname (`--hostname-override`), one of its addresses.
    pub hostname: String,
}

/// The Node object this kubelet registers: Ready, with its address and kubelet port.
pub fn node_object(ctx: &KubeletContext) -> Value {
    let mut labels = json!({
        "kubernetes.io/hostname": ctx.node_name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
    });
    if ctx.control_plane {
        labels["node-role.kubernetes.io/control-plane"] = json!("");
    }
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": ctx.node_name, "labels": labels},
        "spec": {},
        "status": status(ctx),
    })
}

/// The node status the kubelet reports (the heartbeat is the Ready condition's time).
pub fn status(ctx: &KubeletContext) -> Value {
    let now = jiff::Timestamp::now().to_string();
    json!({
        "conditions": [{
            "type": "Ready", "status": "True", "reason": "KubeletReady",
            "message": "kubelet is posting ready status",
            "lastHeartbeatTime": now, "lastTransitionTime": now,
        }],
        "addresses": [
            {"type": "InternalIP", "address": ctx.node_address},
            {"type": "Hostname", "address": ctx.node_name},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": ctx.kubelet_port}},
        "nodeInfo": {"kubeletVersion": "v1.31.0", "operatingSystem": "linux", "architecture": "amd64"},
    })
}

/// How often the kubelet computes its node's status: `nodeStatusUpdateFrequency`, 10 s
/// (pkg/kubelet/apis/config/v1beta1/defaults.go).
pub const STATUS_UPDATE: Duration = Duration::from_secs(10);

/// How often an unchanged status is reported all the same: `nodeStatusReportFrequency`, 5 min
/// when `nodeStatusUpdateFrequency` is not set (same file).
pub const STATUS_REPORT: Duration = Duration::from_secs(300);

/// The node Lease's `leaseDurationSeconds`: `nodeLeaseDurationSeconds`, 40 (same file).
pub const LEASE_DURATION_SECONDS: i64 = 40;

/// How often the Lease is renewed: a quarter of its duration (`nodeLeaseRenewIntervalFraction`,
/// pkg/kubelet/kubelet.go), 10 s.
pub const LEASE_RENEW: Duration = Duration::from_secs(10);

/// Registers the node, renews its Lease and reports its status as the real kubelet does, and
/// runs the pods the API assigns to this node, all through the kubeconfig (read once, here).
/// Returns only when the kubeconfig cannot be used.
///
/// At start it renews the Lease and reports the status at once (the lease controller's
/// `JitterUntil` runs immediately; `tryUpdateNodeStatus` reports when nothing was reported
/// yet); then the Lease every 10 s (`staging/src/k8s.io/component-helpers/apimachinery/lease/
/// controller.go`) and the status when it changed or 5 minutes passed
/// (`kubelet_node_status.go`: `changed || since(lastStatusReportTime) >= nodeStatusReportFrequency`).
pub async fn run(ctx: KubeletContext) -> Result<()> {
    let creds = Credentials::from_kubeconfig(&ctx.kubeconfig)
        .with_context(|| format!("kubelet {}: reading its kubeconfig", ctx.node_name))?;
    let me = format!("kubelet@{}", ctx.node_name);
    let mut client = Client::new(&creds, &me, "kubelet->apiserver")?;
    // The client certificate manager, when it rotates: it starts from the certificate the
    // kubeconfig loaded and sends each new one.
    let mut rotated = match (&ctx.rotate_client_cert, &creds.client_cert) {
        (Some(dir), Some(pair)) => {
            let (tx, rx) = tokio::sync::watch::channel(pair.clone());
            tokio::spawn(super::kubelet_certs::run(
                ctx.node_name.clone(),
                dir.clone(),
                creds.clone(),
                tx,
            ));
            Some(rx)
        }
        _ => None,
    };
    // The serving certificate manager, authenticated with the client certificate as it rotates.
    // Its template's names are the node's addresses as the status reports them (kubelet_node_
    // status.go: InternalIP, then Hostname).
    // Without client rotation the pair never changes; its sender lives as long as this loop.
    let mut _fixed_client = None;
    if let (Some(dir), Some(pair)) = (&ctx.serving_bootstrap, &creds.client_cert) {
        let client = match &rotated {
            Some(rx) => rx.clone(),
            None => {
                let (tx, rx) = tokio::sync::watch::channel(pair.clone());
                _fixed_client = Some(tx);
                rx
            }
        };
        tokio::spawn(super::kubelet_certs::run_serving(
            ctx.node_name.clone(),
            vec![ctx.node_address.clone(), ctx.hostname.clone()],
            dir.clone(),
            creds.clone(),
            client,
        ));
    }
    let path = format!("/api/v1/nodes/{}", ctx.node_name);
    let mut pods = ApiPods::adopt(&ctx);
    let (mut renewed, mut computed, mut reported): (
        Option<Instant>,
        Option<Instant>,
        Option<Instant>,
    ) = (None, None, None);
    let mut last_status: Option<Value> = None;
    // Pods are synced twice a second (the real kubelet watches them).
    loop {
        if let Some(rx) = &mut rotated
            && rx.has_changed().unwrap_or(false)
        {
            let pair = rx.borrow_and_update().clone();
            match Client::new(
                &Credentials { client_cert: Some(pair), ..creds.clone() },
                &me,
                "kubelet->apiserver",
            ) {
                Ok(c) => client = c,
                Err(e) => eprintln!(
                    "{} kubelet {}: the rotated certificate: {e:#}",
                    jiff::Timestamp::now(),
                    ctx.node_name
                ),
            }
        }
        let due = |at: Option<Instant>, every: Duration| at.is_none_or(|t| t.elapsed() >= every);
        if due(renewed, LEASE_RENEW) {
            match renew_lease(&client, &ctx).await {
                Ok(()) => renewed = Some(Instant::now()),
                Err(e) => {
                    eprintln!(
                        "{} kubelet {}: node lease: {e:#}",
                        jiff::Timestamp::now(),
                        ctx.node_name
                    )
                }
            }
        }
        if due(computed, STATUS_UPDATE) {
            computed = Some(Instant::now());
            let now = status_without_times(&status(&ctx));
            if last_status.as_ref() != Some(&now) || due(reported, STATUS_REPORT) {
                match heartbeat(&client, &ctx, &path).await {
                    Ok(()) => {
                        reported = Some(Instant::now());
                        last_status = Some(now);
                    }
                    Err(e) => eprintln!(
                        "{} kubelet {}: node status: {e:#}",
                        jiff::Timestamp::now(),
                        ctx.node_name
                    ),
                }
            }
        }
        if let Err(e) = pods.sync(&client, &ctx).await {
            eprintln!("{} kubelet {}: pods: {e:#}", jiff::Timestamp::now(), ctx.node_name);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The status with its times taken out: what "changed" compares.
fn status_without_times(status: &Value) -> Value {
    let mut s = status.clone();
    if let Some(conditions) = s["conditions"].as_array_mut() {
        for c in conditions {
            if let Some(c) = c.as_object_mut() {
                c.remove("lastHeartbeatTime");
                c.remove("lastTransitionTime");
            }
        }
    }
    s
}

/// A MicroTime as the API writes it (`2006-01-02T15:04:05.000000Z07:00`).
pub fn micro_time(t: jiff::Timestamp) -> String {
    format!("{}.{:06}Z", t.strftime("%Y-%m-%dT%H:%M:%S"), t.subsec_microsecond())
}

/// Renews the node's Lease kube-node-lease/<node>, creating it when there is none, as
/// `backoffEnsureLease` and `renewLease` do (holder: the node's name).
async fn renew_lease(client: &Client, ctx: &KubeletContext) -> Result<()> {
    let collection = "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases";
    let path = format!("{collection}/{}", ctx.node_name);
    let spec = json!({
        "holderIdentity": ctx.node_name,
        "leaseDurationSeconds": LEASE_DURATION_SECONDS,
        "renewTime": micro_time(jiff::Timestamp::now()),
    });
    match client.get(&path).await? {
        None => {
            let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": ctx.node_name, "namespace": "kube-node-lease"}, "spec": spec});
            client.create(collection, &lease).await?;
        }
        Some(mut lease) => {
            lease["spec"] = spec;
            let r = client.request("PUT", &path, Some("application/json"), Some(&lease)).await?;
            if !(200..=299).contains(&r.status) {
                anyhow::bail!("PUT {path}: HTTP {}", r.status);
            }
        }
    }
    Ok(())
}

async fn heartbeat(client: &Client, ctx: &KubeletContext, path: &str) -> Result<()> {
    let status_path = format!("{path}/status");
    let r = client
        .request(
            "PATCH",
            &status_path,
            Some("application/merge-patch+json"),
            Some(&json!({"status": status(ctx)})),
        )
        .await?;
    match r.status {
        200..=299 => Ok(()),
        404 => {
            // Not registered yet (or deleted): register, as the real kubelet does.
            client.create("/api/v1/nodes", &node_object(ctx)).await?;
            Ok(())
        }
        s => anyhow::bail!("PATCH {status_path}: HTTP {s}"),
    }
}

/// Where the kubelet keeps the state of the API pods it runs, inside the node (`/run` is the
/// node's own): a new kubelet adopts the pods a previous one left running, as containers
/// outlive a kubelet restart.
pub const API_POD_STATE_DIR: &str = "/run/kubelet/api-pods";

/// How long a pod gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(10);

/// The state of one API pod, kept in `/run/kubelet/api-pods/<uid>.json`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiPodState {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// The pod's uid (from the API).
    pub uid: String,
    /// When the kubelet started the pod (RFC 3339): its `status.startTime`, which does not change
    /// when a container restarts (`pkg/kubelet/status/status_manager.go`,
    /// `updateStatusInternal`: "ensure that the start time does not change across updates").
    pub started_at: String,
    /// Its containers, in the order of `spec.containers`.
    pub containers: Vec<ContainerState>,
}

/// The state of one container of an API pod.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerState {
    /// The container's name.
    pub name: String,
    /// The running process, when there is one.
    pub pid: Option<u32>,
    /// Its start time in clock ticks since boot, so a reused pid is not mistaken for it.
    pub pid_start: u64,
    /// When the container last started (RFC 3339).
    pub started_at: String,
    /// How often the container was restarted after it exited.
    pub restart_count: u32,
}

struct ApiPod {
    state: ApiPodState,
    /// The processes we started, one per container (None for an adopted or exited one).
    children: Vec<Option<Child>>,
    /// When each exited container may start again (CrashLoopBackOff).
    next_start: Vec<Option<Instant>>,
    /// The status last written to the API, so an unchanged one is not written again.
    reported: Option<Value>,
    /// The projected service-account directory, whose ca.crt follows kube-root-ca.crt.
    sa_dir: PathBuf,
    /// The token last written into it; None until the kubelet has obtained one (an adopted
    /// pod keeps the file a previous kubelet wrote until then).
    token: Option<IssuedToken>,
}

/// A token the kubelet obtained through TokenRequest for a pod's projected volume.
#[derive(Clone)]
struct IssuedToken {
    /// The token (never logged).
    token: String,
    /// `status.expirationTimestamp`, in seconds since the epoch.
    expires: i64,
    /// The `spec.expirationSeconds` it was requested with.
    expiration_seconds: i64,
}

/// What the service-account admission plugin asks for in every pod's `kube-api-access`
/// volume (`plugin/pkg/admission/serviceaccount/admission.go`, `TokenVolumeSource`:
/// `serviceaccount.WarnOnlyBoundTokenExpirationSeconds`, one hour and seven seconds).
const TOKEN_EXPIRATION_SECONDS: i64 = 60 * 60 + 7;

/// `requiresRefresh` of `pkg/kubelet/token/token_manager.go`: a token older than 80% of its
/// requested lifetime or than 24 hours (each less a jitter of up to 10 seconds), or one whose
/// issue time, `exp - expirationSeconds`, is later than now (the clock went back).
fn requires_refresh(t: &IssuedToken, now: i64, jitter: i64) -> bool {
    let iat = t.expires - t.expiration_seconds;
    now > iat + 24 * 3600 - jitter
        || now > t.expires - t.expiration_seconds * 20 / 100 - jitter
        || now < iat
}

/// Up to 10 seconds (token_manager.go's maxJitter), from the clock's nanoseconds.
fn jitter() -> i64 {
    i64::from(jiff::Timestamp::now().subsec_nanosecond().unsigned_abs() % 10)
}

/// Asks the apiserver for a token of the pod's service account, bound to the pod, as the
/// kubelet's projected-volume plugin does through its token manager (TokenRequest,
/// `pkg/registry/core/serviceaccount/storage/token.go`). No audience is named, so the token
/// is for the API's audiences (the issuer, as kubeadm configures it).
async fn request_token(client: &Client, spec: &Value) -> Result<IssuedToken> {
    let ns = spec["metadata"]["namespace"].as_str().unwrap_or("default");
    let name = spec["metadata"]["name"].as_str().context("a pod without a name")?;
    let uid = spec["metadata"]["uid"].as_str().context("a pod without a uid")?;
    let sa = spec["spec"]["serviceAccountName"].as_str().unwrap_or("default");
    let path = format!("/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token");
    let request = json!({
        "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
        "spec": {
            "expirationSeconds": TOKEN_EXPIRATION_SECONDS,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": name, "uid": uid},
        },
    });
    let answer = client.create(&path, &request).await?;
    let token = answer["status"]["token"]
        .as_str()
        .filter(|t| !t.is_empty())
        .with_context(|| format!("POST {path}: no status.token"))?
        .to_string();
    let expires = answer["status"]["expirationTimestamp"]
        .as_str()
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .with_context(|| format!("POST {path}: no status.expirationTimestamp"))?
        .as_second();
    let expiration_seconds =
        answer["spec"]["expirationSeconds"].as_i64().unwrap_or(TOKEN_EXPIRATION_SECONDS);
    Ok(IssuedToken { token, expires, expiration_seconds })
}

/// The API pods of this node, by uid.
struct ApiPods {
    pods: BTreeMap<String, ApiPod>,
}

fn state_path(uid: &str) -> PathBuf {
    component::state_path(Path::new(API_POD_STATE_DIR), uid)
}

fn save_state(state: &ApiPodState) {
    let path = state_path(&state.uid);
    if let Err(e) = component::save_state(&path, state) {
        eprintln!("kubelet: saving {}: {e}", path.display());
    }
}

/// A pod's directory on the node, as the real kubelet lays it out
/// (`pkg/kubelet/kubelet_getters.go`, `getPodDir`).
fn pod_dir(uid: &str) -> PathBuf {
    Path::new("/var/lib/kubelet/pods").join(uid)
}

/// The projected service-account volume of a pod (`kube-api-access`, the volume the
/// service-account admission plugin adds to every pod).
fn sa_dir(uid: &str) -> PathBuf {
    pod_dir(uid).join("volumes/kubernetes.io~projected/kube-api-access")
}

/// Where a container sees its pod's service-account volume: the path the admission plugin
/// mounts it at (`plugin/pkg/admission/serviceaccount/admission.go`, `DefaultAPITokenMountPath`)
/// and client-go's `rest.InClusterConfig` reads.
pub const SERVICE_ACCOUNT_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// An `emptyDir` volume of a pod (`pkg/volume/emptydir/empty_dir.go`, under the pod's
/// `volumes/kubernetes.io~empty-dir/<name>`), shared by the containers that mount it.
fn empty_dir(uid: &str, volume: &str) -> PathBuf {
    pod_dir(uid).join("volumes/kubernetes.io~empty-dir").join(volume)
}

fn is_running(p: &ApiPod) -> bool {
    p.state.containers.iter().zip(&p.next_start).all(|(c, n)| c.pid.is_some() && n.is_none())
}

/// The mounts of container `c` of pod `spec`: the service-account volume at
/// [`SERVICE_ACCOUNT_MOUNT`] (unless `automountServiceAccountToken: false`), read-only as the
/// admission plugin mounts it, and each of its `volumeMounts` of an `emptyDir` volume. A mount of
/// another kind of volume is refused: the testbed has none.
fn mounts(spec: &Value, c: &Value, uid: &str) -> Result<Vec<container::Mount>> {
    let mut out = Vec::new();
    if spec["spec"]["automountServiceAccountToken"].as_bool() != Some(false) {
        out.push(container::Mount {
            source: sa_dir(uid),
            target: SERVICE_ACCOUNT_MOUNT.into(),
            read_only: true,
        });
    }
    let volumes = spec["spec"]["volumes"].as_array().cloned().unwrap_or_default();
    for vm in c["volumeMounts"].as_array().into_iter().flatten() {
        let name = vm["name"].as_str().context("a volumeMount without a name")?;
        let target = vm["mountPath"].as_str().context("a volumeMount without a mountPath")?;
        let volume = volumes
            .iter()
            .find(|v| v["name"].as_str() == Some(name))
            .with_context(|| format!("volumeMount {name}: no such volume"))?;
        if volume.get("emptyDir").is_none() {
            anyhow::bail!("volume {name}: only emptyDir volumes are built on the testbed");
        }
        out.push(container::Mount {
            source: empty_dir(uid, name),
            target: target.into(),
            read_only: vm["readOnly"].as_bool() == Some(true),
        });
    }
    Ok(out)
}

/// The value of a container's `env` entry: `value`, or the downward API's `fieldRef` for the
/// fields the kubelet resolves itself (`pkg/kubelet/kubelet_pods.go`, `podFieldSelectorRuntimeValue`).
fn env_value(ctx: &KubeletContext, spec: &Value, e: &Value) -> Option<String> {
    if let Some(v) = e["value"].as_str() {
        return Some(v.to_string());
    }
    match e["valueFrom"]["fieldRef"]["fieldPath"].as_str()? {
        "metadata.name" => spec["metadata"]["name"].as_str().map(String::from),
        "metadata.namespace" => spec["metadata"]["namespace"].as_str().map(String::from),
        "spec.nodeName" => spec["spec"]["nodeName"].as_str().map(String::from),
        "spec.serviceAccountName" => spec["spec"]["serviceAccountName"].as_str().map(String::from),
        "status.podIP" | "status.hostIP" => Some(ctx.node_address.clone()),
        _ => None,
    }
}

impl ApiPods {
    /// Takes over the API pods a previous kubelet left running; forgets the dead ones (the next
    /// sync starts them again if the API still assigns them here).
    fn adopt(ctx: &KubeletContext) -> ApiPods {
        let mut pods = BTreeMap::new();
        if let Ok(entries) = std::fs::read_dir(API_POD_STATE_DIR) {
            for e in entries.flatten() {
                let Ok(text) = std::fs::read_to_string(e.path()) else { continue };
                let Ok(mut state) = serde_json::from_str::<ApiPodState>(&text) else { continue };
                for c in &mut state.containers {
                    if !c.pid.is_some_and(|p| alive(p, c.pid_start)) {
                        c.pid = None;
                    }
                }
                let pids: Vec<Option<u32>> = state.containers.iter().map(|c| c.pid).collect();
                eprintln!(
                    "kubelet {}: adopting pod {}/{} (pids {pids:?})",
                    ctx.node_name, state.namespace, state.name
                );
                let sa_dir = sa_dir(&state.uid);
                // A dead container restarts at the next sync, counting a restart.
                let next_start = pids.iter().map(|p| p.is_none().then(Instant::now)).collect();
                let children = pids.iter().map(|_| None).collect();
                pods.insert(
                    state.uid.clone(),
                    ApiPod { state, children, next_start, reported: None, sa_dir, token: None },
                );
            }
        }
        ApiPods { pods }
    }

    /// One pass: start the pods assigned here, restart exited ones (with a back-off), stop the
    /// ones the API no longer assigns here, refresh their ca.crt and report their status.
    async fn sync(&mut self, client: &Client, ctx: &KubeletContext) -> Result<()> {
        let selector = format!("/api/v1/pods?fieldSelector=spec.nodeName%3D{}", ctx.node_name);
        let assigned: Vec<Value> = client
            .list(&selector)
            .await?
            .into_iter()
            .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
            .collect();
        let wanted: BTreeMap<String, &Value> = assigned
            .iter()
            .filter_map(|p| Some((p["metadata"]["uid"].as_str()?.to_string(), p)))
            .collect();

        // Gone from the API (deleted, or moved): stop, then forget.
        let gone: Vec<String> =
            self.pods.keys().filter(|uid| !wanted.contains_key(*uid)).cloned().collect();
        for uid in gone {
            if let Some(mut pod) = self.pods.remove(&uid) {
                eprintln!(
                    "{} kubelet {}: stopping pod {}/{} (deleted)",
                    jiff::Timestamp::now(),
                    ctx.node_name,
                    pod.state.namespace,
                    pod.state.name
                );
                stop(&mut pod).await;
                let _ = std::fs::remove_file(state_path(&uid));
                let _ = std::fs::remove_dir_all(Path::new("/var/lib/kubelet/pods").join(&uid));
            }
        }

        // The root CA each namespace publishes: the projected ca.crt.
        let mut root_cas: BTreeMap<String, String> = BTreeMap::new();
        for cm in
            client.list("/api/v1/configmaps?fieldSelector=metadata.name%3Dkube-root-ca.crt").await?
        {
            if let (Some(ns), Some(ca)) =
                (cm["metadata"]["namespace"].as_str(), cm["data"]["ca.crt"].as_str())
            {
                root_cas.insert(ns.to_string(), ca.to_string());
            }
        }

        for (uid, spec) in &wanted {
            let ns = spec["metadata"]["namespace"].as_str().unwrap_or("default");
            let Some(ca) = root_cas.get(ns) else {
                // The controller-manager has not published it yet: the real kubelet also
                // waits for the projected volume's sources before starting the container.
                continue;
            };
            if !self.pods.contains_key(uid) {
                // The projected volume needs its token first: without one the container does
                // not start (the real kubelet fails the volume's setup and retries).
                let token = match request_token(client, spec).await {
                    Ok(t) => t,
                    Err(e) => {
                        eprintln!(
                            "{} kubelet {}: pod {uid}: requesting its service-account token: {e:#}",
                            jiff::Timestamp::now(),
                            ctx.node_name
                        );
                        continue;
                    }
                };
                match start(ctx, spec, ca, token) {
                    Ok(pod) => {
                        self.pods.insert(uid.clone(), pod);
                    }
                    Err(e) => {
                        eprintln!("{} kubelet {}: {e:#}", jiff::Timestamp::now(), ctx.node_name);
                        continue;
                    }
                }
            }
            let Some(pod) = self.pods.get_mut(uid) else { continue };
            // The kubelet keeps projected volumes current; the pods read ca.crt once at start and
            // their token about once a minute (client.rs).
            let ca_path = pod.sa_dir.join("ca.crt");
            if std::fs::read_to_string(&ca_path).ok().as_deref() != Some(ca.as_str())
                && let Err(e) = write_atomic(&ca_path, ca.as_bytes())
            {
                eprintln!("kubelet {}: updating {}: {e}", ctx.node_name, ca_path.display());
            }
            // And its token, refreshed as the token manager does; a failed refresh keeps the
            // old token ("Couldn't update token").
            let now = jiff::Timestamp::now().as_second();
            if pod.token.as_ref().is_none_or(|t| requires_refresh(t, now, jitter())) {
                let token_path = pod.sa_dir.join("token");
                match request_token(client, spec).await {
                    Ok(t) => match write_atomic(&token_path, t.token.as_bytes()) {
                        Ok(()) => pod.token = Some(t),
                        Err(e) => eprintln!(
                            "kubelet {}: updating {}: {e}",
                            ctx.node_name,
                            token_path.display()
                        ),
                    },
                    Err(e) => eprintln!(
                        "{} kubelet {}: Couldn't update token for pod {}/{}: {e:#}",
                        jiff::Timestamp::now(),
                        ctx.node_name,
                        pod.state.namespace,
                        pod.state.name
                    ),
                }
            }
            for i in 0..pod.state.containers.len() {
                if let Some(code) = exited(pod, i) {
                    // CrashLoopBackOff: 1s, 2s, 4s, … up to 20s (the real kubelet: 10s to 5min).
                    let c = &mut pod.state.containers[i];
                    let backoff = Duration::from_secs(1 << c.restart_count.min(4))
                        .min(Duration::from_secs(20));
                    eprintln!(
                        "{} kubelet {}: pod {}/{} container {} exited ({code}); restarting in {}s",
                        jiff::Timestamp::now(),
                        ctx.node_name,
                        pod.state.namespace,
                        pod.state.name,
                        c.name,
                        backoff.as_secs()
                    );
                    c.pid = None;
                    pod.next_start[i] = Some(Instant::now() + backoff);
                    save_state(&pod.state);
                }
                if pod.next_start[i].is_some_and(|t| Instant::now() >= t) && pod.token.is_some() {
                    let restarts = pod.state.containers[i].restart_count + 1;
                    match start_container(ctx, spec, i, restarts) {
                        Ok((state, child)) => {
                            pod.state.containers[i] = state;
                            pod.children[i] = Some(child);
                            pod.next_start[i] = None;
                            save_state(&pod.state);
                        }
                        Err(e) => {
                            eprintln!("{} kubelet {}: {e:#}", jiff::Timestamp::now(), ctx.node_name)
                        }
                    }
                }
            }
            let status = pod_status(ctx, pod);
            if pod.reported.as_ref() != Some(&status) || spec["status"]["phase"] != status["phase"]
            {
                let path = format!(
                    "/api/v1/namespaces/{}/pods/{}/status",
                    pod.state.namespace, pod.state.name
                );
                match client.patch(&path, &json!({"status": status})).await {
                    Ok(_) => pod.reported = Some(status),
                    Err(e) => eprintln!(
                        "{} kubelet {}: {path}: {e:#}",
                        jiff::Timestamp::now(),
                        ctx.node_name
                    ),
                }
            }
        }
        Ok(())
    }
}

/// The status the kubelet reports for a pod: Running on the node's address, ready while all
/// its containers run.
fn pod_status(ctx: &KubeletContext, pod: &ApiPod) -> Value {
    let ready = if is_running(pod) { "True" } else { "False" };
    let statuses: Vec<Value> = pod
        .state
        .containers
        .iter()
        .zip(&pod.next_start)
        .map(|(c, next)| {
            let running = c.pid.is_some() && next.is_none();
            let state = if running {
                json!({"running": {"startedAt": c.started_at}})
            } else {
                json!({"waiting": {"reason": "CrashLoopBackOff"}})
            };
            json!({
                "name": c.name, "ready": running, "restartCount": c.restart_count,
                "started": running, "state": state,
            })
        })
        .collect();
    json!({
        "phase": "Running",
        "hostIP": ctx.node_address,
        "podIP": ctx.node_address,
        "podIPs": [{"ip": ctx.node_address}],
        "startTime": pod.state.started_at,
        "conditions": [
            {"type": "Ready", "status": ready},
            {"type": "ContainersReady", "status": ready},
            {"type": "PodScheduled", "status": "True"},
        ],
        "containerStatuses": statuses,
    })
}

/// Starts an API pod: its projected service-account volume (token, ca.crt, namespace), its
/// `emptyDir` volumes, and each of its containers ([`start_container`]).
fn start(ctx: &KubeletContext, spec: &Value, ca: &str, token: IssuedToken) -> Result<ApiPod> {
    let ns = spec["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
    let name = spec["metadata"]["name"].as_str().context("a pod without a name")?.to_string();
    let uid = spec["metadata"]["uid"].as_str().context("a pod without a uid")?.to_string();
    let dir = sa_dir(&uid);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    // The token the apiserver signed for the pod (request_token), each file written whole.
    write_atomic(&dir.join("token"), token.token.as_bytes())
        .and_then(|()| write_atomic(&dir.join("ca.crt"), ca.as_bytes()))
        .and_then(|()| write_atomic(&dir.join("namespace"), ns.as_bytes()))
        .with_context(|| format!("writing the service-account volume {}", dir.display()))?;
    for v in spec["spec"]["volumes"].as_array().into_iter().flatten() {
        if let (Some(v), Some(_)) = (v["name"].as_str(), v.get("emptyDir")) {
            let d = empty_dir(&uid, v);
            std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        }
    }
    let count = spec["spec"]["containers"].as_array().map_or(0, Vec::len);
    if count == 0 {
        anyhow::bail!("pod {ns}/{name}: no containers");
    }
    let mut pod = ApiPod {
        state: ApiPodState {
            namespace: ns,
            name,
            uid,
            started_at: jiff::Timestamp::now().to_string(),
            containers: Vec::new(),
        },
        children: Vec::new(),
        next_start: Vec::new(),
        reported: None,
        sa_dir: dir,
        token: Some(token),
    };
    for i in 0..count {
        match start_container(ctx, spec, i, 0) {
            Ok((state, child)) => {
                pod.state.containers.push(state);
                pod.children.push(Some(child));
                pod.next_start.push(None);
            }
            Err(e) => {
                // The ones started go again; the pod is retried at the next sync.
                for i in 0..pod.children.len() {
                    signal_container(&pod, i, Signal::KILL);
                    if let Some(c) = pod.children[i].as_mut() {
                        let _ = c.wait();
                    }
                }
                return Err(e);
            }
        }
    }
    save_state(&pod.state);
    Ok(pod)
}

/// Starts container `i` of the pod `spec`, in its own process group and mount namespace with
/// its volumes ([`container`]), its output appended to its log file.
///
/// Its environment is what a container runtime gives one: the image's `PATH` (the node's here)
/// and a `HOME` of its own (an empty directory, so no kubeconfig of the node's is found there),
/// the `kubernetes` Service's address and the container's `env`; besides, the testbed's own
/// variables (`KUBECA_TESTBED_*`, `KUBECA_POD_*`), which the testbed's programs read and a real
/// program ignores.
fn start_container(
    ctx: &KubeletContext,
    spec: &Value,
    i: usize,
    restart_count: u32,
) -> Result<(ContainerState, Child)> {
    let ns = spec["metadata"]["namespace"].as_str().unwrap_or("default");
    let name = spec["metadata"]["name"].as_str().context("a pod without a name")?;
    let uid = spec["metadata"]["uid"].as_str().context("a pod without a uid")?;
    let c = &spec["spec"]["containers"][i];
    let container = c["name"].as_str().unwrap_or(name).to_string();
    let image = c["image"].as_str().unwrap_or("");
    let strings = |k: &str| -> Vec<String> {
        c[k].as_array()
            .map(|a| a.iter().filter_map(|x| x.as_str().map(String::from)).collect())
            .unwrap_or_default()
    };
    let mut env: Vec<(String, String)> = Vec::new();
    for e in c["env"].as_array().into_iter().flatten() {
        if let (Some(k), Some(v)) = (e["name"].as_str(), env_value(ctx, spec, e)) {
            env.push((k.to_string(), v));
        }
    }
    // `$(VAR)` in command and args names a variable of the container's env, as the kubelet
    // expands it (`pkg/kubelet/container/helpers.go`, `ExpandContainerCommandAndArgs`).
    let expand = |s: String| env.iter().fold(s, |s, (k, v)| s.replace(&format!("$({k})"), v));
    let mut command: Vec<String> = strings("command").into_iter().map(expand).collect();
    if command.is_empty() {
        // No `command`: the image's ENTRYPOINT runs with `args` (the runtime joins them; the
        // kubelet passes both through, `pkg/kubelet/kuberuntime/kuberuntime_container.go`).
        // A testbed image's entrypoint is its program, which `program_for` picks by image.
        command.push("/entrypoint".to_string());
    }
    command.extend(strings("args").into_iter().map(expand));
    let (program, args) = super::kubelet::program_for(image, &command, &ctx.exe)
        .with_context(|| format!("pod {ns}/{name} container {container}: image {image:?}"))?;
    let mounts =
        mounts(spec, c, uid).with_context(|| format!("pod {ns}/{name} container {container}"))?;

    let log_dir = ctx.pod_log_dir.join(format!("{ns}_{name}_{uid}")).join(&container);
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    let log_path = log_dir.join("0.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let home = pod_dir(uid).join("containers").join(&container).join("home");
    std::fs::create_dir_all(&home).with_context(|| format!("creating {}", home.display()))?;
    let child = container::command(&ctx.exe, &mounts, &program, &args)
        .env_clear()
        .env(
            "PATH",
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()),
        )
        .env("HOME", &home)
        .env(container::MARK, &ctx.testbed_dir)
        .env("KUBECA_TESTBED_DIR", &ctx.testbed_dir)
        .env("KUBECA_TESTBED_NODE", &ctx.node_name)
        .env("KUBECA_TESTBED_ADDRESS", &ctx.node_address)
        .env(subnet::ENV, std::env::var_os(subnet::ENV).unwrap_or_default())
        // The real kubelet gives every container the `kubernetes` Service's address
        // (pkg/kubelet/kubelet_pods.go, makeEnvironmentVariables; the names from
        // pkg/kubelet/envvars/envvars.go, FromServices); in-cluster clients read them.
        .env("KUBERNETES_SERVICE_HOST", ctx.api_service.ip().to_string())
        .env("KUBERNETES_SERVICE_PORT", ctx.api_service.port().to_string())
        .env("KUBECA_POD_NAME", name)
        .env("KUBECA_POD_NAMESPACE", ns)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        // Its own process group: a kubelet restart must not take the pod down with it.
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {} for pod {ns}/{name}", program.display()))?;
    let pid = child.id();
    eprintln!(
        "{} kubelet {}: started pod {ns}/{name} container {container} (pid {pid}, uid {uid})",
        jiff::Timestamp::now(),
        ctx.node_name
    );
    let state = ContainerState {
        name: container,
        pid: Some(pid),
        pid_start: proc_stat(pid).map_or(0, |(s, _)| s),
        started_at: jiff::Timestamp::now().to_string(),
        restart_count,
    };
    Ok((state, child))
}

/// Whether container `i` has exited since the last look; its exit status as text.
fn exited(pod: &mut ApiPod, i: usize) -> Option<String> {
    let c = &pod.state.containers[i];
    super::kubelet::process_exited(&mut pod.children[i], c.pid, c.pid_start)
}

/// Sends `signal` to container `i`'s process group; its pid when it has a process.
fn signal_container(pod: &ApiPod, i: usize, signal: Signal) -> Option<u32> {
    let pid = pod.state.containers[i].pid?;
    let _ = rustix::process::kill_process_group(to_pid(pid)?, signal);
    Some(pid)
}

/// Stops every container of the pod: SIGTERM to each process group, SIGKILL after the grace
/// period.
async fn stop(pod: &mut ApiPod) {
    let deadline = Instant::now() + GRACE;
    let stopping: Vec<(usize, u32)> = (0..pod.state.containers.len())
        .filter_map(|i| signal_container(pod, i, Signal::TERM).map(|pid| (i, pid)))
        .collect();
    for (i, pid) in stopping {
        let start = pod.state.containers[i].pid_start;
        loop {
            if super::kubelet::process_gone(&mut pod.children[i], pid, start) {
                break;
            }
            if Instant::now() >= deadline {
                signal_container(pod, i, Signal::KILL);
                if let Some(c) = pod.children[i].as_mut() {
                    let _ = c.wait();
                }
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        pod.children[i] = None;
        pod.state.containers[i].pid = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_control_plane_node_is_ready_with_its_role_and_address() {
        let ctx = KubeletContext {
            node_name: "cp-1".into(),
            node_address: "198.18.0.11".into(),
            kubeconfig: "/etc/kubernetes/kubelet.conf".into(),
            exe: "/bin/true".into(),
            testbed_dir: "/tmp".into(),
            pod_log_dir: "/var/log/pods".into(),
            kubelet_port: 10250,
            control_plane: true,
            api_service: "198.18.0.10:6443".parse().unwrap(),
            rotate_client_cert: None,
            serving_bootstrap: None,
            hostname: String::new(),
        };
        let n = node_object(&ctx);
        assert!(n["metadata"]["labels"].get("node-role.kubernetes.io/control-plane").is_some());
        assert_eq!(n["status"]["conditions"][0]["status"], "True");
        assert_eq!(n["status"]["addresses"][0]["address"], "198.18.0.11");
        assert_eq!(n["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"], 10250);
    }

    fn context() -> KubeletContext {
        KubeletContext {
            node_name: "w-1".into(),
            node_address: "198.18.0.14".into(),
            kubeconfig: "/etc/kubernetes/kubelet.conf".into(),
            exe: "/bin/true".into(),
            testbed_dir: "/tmp".into(),
            pod_log_dir: "/var/log/pods".into(),
            kubelet_port: 10250,
            control_plane: false,
            api_service: "198.18.0.10:6443".parse().unwrap(),
            rotate_client_cert: None,
            serving_bootstrap: None,
            hostname: String::new(),
        }
    }

    #[test]
    fn a_pod_keeps_its_start_time_and_is_ready_only_while_every_container_runs() {
        let container = |name: &str, pid: Option<u32>, at: &str, restarts: u32| ContainerState {
            name: name.into(),
            pid,
            pid_start: 0,
            started_at: at.into(),
            restart_count: restarts,
        };
        let mut pod = ApiPod {
            state: ApiPodState {
                namespace: "kube-system".into(),
                name: "api-proxy-x".into(),
                uid: "u".into(),
                started_at: "2026-12-02T16:00:00Z".into(),
                containers: vec![
                    container("kubectl", Some(10), "2026-12-02T16:00:00Z", 0),
                    container("client", Some(11), "2026-12-02T16:05:00Z", 1),
                ],
            },
            children: vec![None, None],
            next_start: vec![None, None],
            reported: None,
            sa_dir: "/nonexistent".into(),
            token: None,
        };
        let s = pod_status(&context(), &pod);
        assert_eq!(s["startTime"], "2026-12-02T16:00:00Z");
        assert_eq!(s["conditions"][0]["status"], "True");
        assert_eq!(s["containerStatuses"][1]["restartCount"], 1);
        // The client waits out its back-off: the pod is not ready, its start time unchanged.
        pod.state.containers[1].pid = None;
        pod.next_start[1] = Some(Instant::now());
        let s = pod_status(&context(), &pod);
        assert_eq!(s["conditions"][0]["status"], "False");
        assert_eq!(s["containerStatuses"][0]["ready"], true);
        assert_eq!(s["containerStatuses"][1]["state"]["waiting"]["reason"], "CrashLoopBackOff");
        assert_eq!(s["startTime"], "2026-12-02T16:00:00Z");
    }

    #[test]
    fn env_takes_values_and_the_fields_the_kubelet_resolves() {
        let spec = json!({"metadata": {"name": "p", "namespace": "ns"},
                          "spec": {"nodeName": "w-1", "serviceAccountName": "sa"}});
        let field = |f: &str| json!({"name": "X", "valueFrom": {"fieldRef": {"fieldPath": f}}});
        let v = |e: &Value| env_value(&context(), &spec, e);
        assert_eq!(v(&json!({"name": "X", "value": "1"})).as_deref(), Some("1"));
        assert_eq!(v(&field("metadata.name")).as_deref(), Some("p"));
        assert_eq!(v(&field("metadata.namespace")).as_deref(), Some("ns"));
        assert_eq!(v(&field("spec.nodeName")).as_deref(), Some("w-1"));
        assert_eq!(v(&field("spec.serviceAccountName")).as_deref(), Some("sa"));
        assert_eq!(v(&field("status.podIP")).as_deref(), Some("198.18.0.14"));
        assert_eq!(v(&field("metadata.labels['a']")), None);
    }

    #[test]
    fn a_token_is_refreshed_past_80_percent_of_its_lifetime_or_24_hours() {
        let issued = 1_800_000_000;
        let t = IssuedToken {
            token: String::new(),
            expires: issued + TOKEN_EXPIRATION_SECONDS,
            expiration_seconds: TOKEN_EXPIRATION_SECONDS,
        };
        // 20% of the lifetime before it expires, in whole seconds as token_manager.go computes.
        let at_80 = issued + TOKEN_EXPIRATION_SECONDS - TOKEN_EXPIRATION_SECONDS * 20 / 100;
        assert!(!requires_refresh(&t, issued, 0));
        assert!(!requires_refresh(&t, at_80, 0));
        assert!(requires_refresh(&t, at_80 + 1, 0));
        // The jitter brings it forward by up to 10 s.
        assert!(requires_refresh(&t, at_80 - 5, 9));
        // The clock went back before its issue time.
        assert!(requires_refresh(&t, issued - 1, 0));
        // A long-lived token: 24 hours at most.
        let year = 365 * 24 * 3600;
        let long =
            IssuedToken { token: String::new(), expires: issued + year, expiration_seconds: year };
        assert!(!requires_refresh(&long, issued + 24 * 3600 - 1, 0));
        assert!(requires_refresh(&long, issued + 24 * 3600 + 1, 0));
    }
}
