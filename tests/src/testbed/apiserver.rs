//! The simulated kube-apiserver: kubeadm's flags read once at start, HTTPS with client-cert and
//! bearer-token authentication, objects kept in the real etcd through its v3 JSON gateway.
//!
//! Resources are generic: any `/api/v1/...` or `/apis/<group>/<version>/...` path maps to the
//! etcd key `/registry/<resource>/<namespace>/<name>` (or `/registry/<resource>/<name>` for
//! cluster-scoped kinds), which is enough for kubectl and kubeca.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use base64::Engine;
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

use super::component::{parse_flags, require};
use super::monitor::{self, Outcome};
use super::serving::{self, ClientCert, Reload, Serving};
use super::subnet::Subnet;
use super::tls;

type Body = Full<bytes::Bytes>;
type Resp = hyper::Response<Body>;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The apiserver's entry point: `kubeca-testbed kube-apiserver --flag=value ...`.
pub fn main(args: Vec<String>) -> ExitCode {
    let rt =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("kube-apiserver: cannot start the runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
    match rt.block_on(run(parse_flags(&args))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{} kube-apiserver: {e:#}", jiff::Timestamp::now());
            ExitCode::FAILURE
        }
    }
}

/// One kind the API serves.
struct Kind {
    group: &'static str,
    version: &'static str,
    resource: &'static str,
    kind: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
}

const KINDS: &[Kind] = &[
    Kind {
        group: "",
        version: "v1",
        resource: "namespaces",
        kind: "Namespace",
        namespaced: false,
        short: &["ns"],
    },
    Kind {
        group: "",
        version: "v1",
        resource: "nodes",
        kind: "Node",
        namespaced: false,
        short: &["no"],
    },
    Kind {
        group: "",
        version: "v1",
        resource: "pods",
        kind: "Pod",
        namespaced: true,
        short: &["po"],
    },
    Kind {
        group: "",
        version: "v1",
        resource: "configmaps",
        kind: "ConfigMap",
        namespaced: true,
        short: &["cm"],
    },
    Kind {
        group: "",
        version: "v1",
        resource: "secrets",
        kind: "Secret",
        namespaced: true,
        short: &[],
    },
    Kind {
        group: "",
        version: "v1",
        resource: "services",
        kind: "Service",
        namespaced: true,
        short: &["svc"],
    },
    Kind {
        group: "",
        version: "v1",
        resource: "serviceaccounts",
        kind: "ServiceAccount",
        namespaced: true,
        short: &["sa"],
    },
    Kind {
        group: "apps",
        version: "v1",
        resource: "deployments",
        kind: "Deployment",
        namespaced: true,
        short: &["deploy"],
    },
    Kind {
        group: "apps",
        version: "v1",
        resource: "daemonsets",
        kind: "DaemonSet",
        namespaced: true,
        short: &["ds"],
    },
    Kind {
        group: "apps",
        version: "v1",
        resource: "statefulsets",
        kind: "StatefulSet",
        namespaced: true,
        short: &["sts"],
    },
    Kind {
        group: "coordination.k8s.io",
        version: "v1",
        resource: "leases",
        kind: "Lease",
        namespaced: true,
        short: &[],
    },
    Kind {
        group: "apiregistration.k8s.io",
        version: "v1",
        resource: "apiservices",
        kind: "APIService",
        namespaced: false,
        short: &[],
    },
];

fn find_kind(group: &str, resource: &str) -> Option<&'static Kind> {
    KINDS.iter().find(|k| k.group == group && k.resource == resource)
}

/// One HTTPS peer of the apiserver (an etcd member, a kubelet, metrics-server), named for
/// the monitor; a new connection per request so every attempt is recorded.
#[derive(Clone)]
struct Peer {
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    client: String,
    server: String,
    purpose: &'static str,
    /// The kept-alive connection (etcd): a TLS handshake per etcd call would cost most of an
    /// idle testbed's CPU. Each new connection is one monitor line.
    conn: Arc<tokio::sync::Mutex<Option<hyper::client::conn::http1::SendRequest<Body>>>>,
}

impl Peer {
    fn new(
        url: &str,
        tls: Arc<rustls::ClientConfig>,
        server: String,
        purpose: &'static str,
    ) -> Result<Peer> {
        let hostport = url
            .strip_prefix("https://")
            .with_context(|| format!("{url} is not https://"))?
            .trim_end_matches('/');
        let addr: SocketAddr =
            hostport.parse().with_context(|| format!("{url}: the testbed uses IP:port"))?;
        Ok(Peer {
            addr,
            tls,
            client: monitor::me("kube-apiserver"),
            server,
            purpose,
            conn: Arc::default(),
        })
    }

    async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<Vec<u8>>,
        headers: &[(&str, &str)],
    ) -> Result<(u16, Vec<u8>)> {
        let mut conn = self.conn.lock().await;
        if conn.as_ref().is_none_or(|c| c.is_closed()) {
            let name = rustls::pki_types::ServerName::IpAddress(self.addr.ip().into());
            let stream = match tls::connect(
                self.addr,
                name,
                self.tls.clone(),
                std::time::Duration::from_secs(5),
            )
            .await
            {
                Ok(s) => s,
                Err((outcome, msg)) => {
                    monitor::record(&self.client, &self.server, self.purpose, outcome);
                    bail!("{method} https://{}{path}: {msg}", self.addr);
                }
            };
            monitor::record(&self.client, &self.server, self.purpose, Outcome::Ok);
            let (sender, c) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .context("HTTP handshake")?;
            tokio::spawn(c);
            *conn = Some(sender);
        }
        let Some(sender) = conn.as_mut() else { bail!("no connection to {}", self.addr) };
        if !matches!(
            tokio::time::timeout(std::time::Duration::from_secs(2), sender.ready()).await,
            Ok(Ok(()))
        ) {
            *conn = None;
            bail!("{method} https://{}{path}: the connection closed", self.addr);
        }
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.addr.to_string())
            .header("content-type", "application/json");
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(bytes::Bytes::from(body.unwrap_or_default())))
            .context("building the request")?;
        let resp =
            tokio::time::timeout(std::time::Duration::from_secs(10), sender.send_request(req))
                .await
                .map_err(|_| {
                    anyhow::anyhow!("{method} https://{}{path}: no answer in 10 s", self.addr)
                });
        let resp = match resp {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                *conn = None;
                return Err(e).with_context(|| format!("{method} https://{}{path}", self.addr));
            }
            Err(e) => {
                *conn = None;
                return Err(e);
            }
        };
        let status = resp.status().as_u16();
        if status == 401 {
            // The peer completed the handshake and refused our certificate per request, as Go
            // servers do: a trust failure of this edge.
            monitor::record(&self.client, &self.server, self.purpose, Outcome::Unauthorized);
        }
        let bytes = resp.into_body().collect().await.context("reading the answer")?.to_bytes();
        Ok((status, bytes.to_vec()))
    }
}

/// The real etcd through its JSON gateway, over mutual TLS.
#[derive(Clone)]
pub struct Etcd {
    servers: Vec<Peer>,
}

impl Etcd {
    fn new(flags: &HashMap<String, String>) -> Result<Etcd> {
        let get = |k: &str| require(flags, k);
        let ca_path = PathBuf::from(get("etcd-cafile")?);
        let ca =
            std::fs::read(&ca_path).with_context(|| format!("reading {}", ca_path.display()))?;
        let certs = tls::load_certs(&PathBuf::from(get("etcd-certfile")?))?;
        let key = tls::load_key(&PathBuf::from(get("etcd-keyfile")?))?;
        let cfg = tls::client_config(&ca, &ca_path.display().to_string(), Some((certs, key)))?;
        let servers = get("etcd-servers")?
            .split(',')
            .map(|s| {
                let ip = s.trim_start_matches("https://").split(':').next().unwrap_or("");
                Peer::new(
                    s,
                    cfg.clone(),
                    format!("etcd@{}", monitor::node_of(ip)),
                    "apiserver->etcd",
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Etcd { servers })
    }

    async fn call(&self, op: &str, body: Value) -> Result<Value> {
        let mut last = None;
        for s in &self.servers {
            match s
                .request("POST", &format!("/v3/kv/{op}"), Some(body.to_string().into_bytes()), &[])
                .await
            {
                Ok((200, v)) => {
                    return serde_json::from_slice(&v).context("etcd's answer is not JSON");
                }
                Ok((st, v)) => {
                    last = Some(anyhow::anyhow!(
                        "etcd {op}: HTTP {st}: {}",
                        String::from_utf8_lossy(&v)
                    ))
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no --etcd-servers")))
    }

    async fn put(&self, key: &str, value: &Value) -> Result<()> {
        self.call("put", json!({"key": B64.encode(key), "value": B64.encode(value.to_string())}))
            .await
            .map(|_| ())
    }

    /// Puts `value` only when `key` does not exist (a txn on its create revision), so two
    /// apiservers creating the same object cannot both succeed.
    async fn create(&self, key: &str, value: &Value) -> Result<bool> {
        let k = B64.encode(key);
        let v = self
            .call("txn", json!({"compare": [{"key": k, "result": "EQUAL", "target": "CREATE", "create_revision": "0"}],
                                "success": [{"request_put": {"key": k, "value": B64.encode(value.to_string())}}]}))
            .await?;
        Ok(v["succeeded"].as_bool().unwrap_or(false))
    }

    /// Replaces `old` by `new` only when the stored value is still `old` (optimistic
    /// concurrency, as resourceVersion gives the real apiserver).
    async fn swap(&self, key: &str, old: &Value, new: &Value) -> Result<bool> {
        let k = B64.encode(key);
        let v = self
            .call("txn", json!({"compare": [{"key": k, "result": "EQUAL", "target": "VALUE", "value": B64.encode(old.to_string())}],
                                "success": [{"request_put": {"key": k, "value": B64.encode(new.to_string())}}]}))
            .await?;
        Ok(v["succeeded"].as_bool().unwrap_or(false))
    }

    async fn get(&self, key: &str) -> Result<Option<Value>> {
        let v = self.call("range", json!({"key": B64.encode(key)})).await?;
        Ok(decode_kvs(&v).into_iter().next())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<Value>> {
        let mut end = prefix.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let v = self
            .call("range", json!({"key": B64.encode(prefix), "range_end": B64.encode(end)}))
            .await?;
        Ok(decode_kvs(&v))
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.call("deleterange", json!({"key": B64.encode(key)})).await.map(|_| ())
    }
}

fn decode_kvs(v: &Value) -> Vec<Value> {
    v["kvs"]
        .as_array()
        .map(|kvs| {
            kvs.iter()
                .filter_map(|kv| kv["value"].as_str())
                .filter_map(|s| B64.decode(s).ok())
                .filter_map(|b| serde_json::from_slice(&b).ok())
                .collect()
        })
        .unwrap_or_default()
}

struct State {
    etcd: Etcd,
    flags: HashMap<String, String>,
    kubelet_tls: Arc<rustls::ClientConfig>,
    /// The control-plane endpoint (the testbed's load balancer), published in discovery and
    /// in cluster-info as kubeadm's controlPlaneEndpoint.
    endpoint: SocketAddr,
}

async fn run(flags: HashMap<String, String>) -> Result<()> {
    let get = |k: &str| require(&flags, k);
    let address = get("advertise-address")?;
    let port = flags.get("secure-port").cloned().unwrap_or_else(|| "6443".into());
    let client_ca = PathBuf::from(get("client-ca-file")?);
    // Reloaded when they change, as `dynamiccertificates` does for the apiserver's
    // --client-ca-file and --tls-cert-file/--tls-private-key-file
    // (`staging/src/k8s.io/apiserver/pkg/server/options/authentication.go`,
    // `secure_serving.go`); the handshake takes any client certificate (serving.rs).
    let serving = Arc::new(Serving::new(
        "kube-apiserver",
        (
            &PathBuf::from(get("tls-cert-file")?),
            &PathBuf::from(get("tls-private-key-file")?),
            Reload::OnChange,
        ),
        Some((&client_ca, Reload::OnChange)),
        &[b"http/1.1"],
    )?);
    // kube-apiserver's --anonymous-auth defaults to true, and kubeadm leaves it so.
    let anonymous = flags.get("anonymous-auth").is_none_or(|v| v != "false");
    let kubelet_ca = match flags.get("kubelet-certificate-authority") {
        Some(p) => std::fs::read(p).with_context(|| format!("reading {p}"))?,
        None => std::fs::read(&client_ca)?,
    };
    let kubelet_tls = tls::client_config(
        &kubelet_ca,
        "--kubelet-certificate-authority",
        Some((
            tls::load_certs(&PathBuf::from(get("kubelet-client-certificate")?))?,
            tls::load_key(&PathBuf::from(get("kubelet-client-key")?))?,
        )),
    )?;
    let etcd = Etcd::new(&flags)?;
    let endpoint = Subnet::from_env()?.lb_endpoint();
    let state = Arc::new(State { etcd, flags: flags.clone(), kubelet_tls, endpoint });
    let addr: SocketAddr =
        format!("{address}:{port}").parse().context("--advertise-address:--secure-port")?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    eprintln!("{} kube-apiserver: serving on https://{addr}", jiff::Timestamp::now());
    let st = state.clone();
    tokio::spawn(async move {
        // etcd may still be electing a leader: retry until bootstrap succeeds.
        loop {
            match bootstrap(&st).await {
                Ok(()) => break,
                Err(e) => eprintln!("{} kube-apiserver: bootstrap: {e:#}", jiff::Timestamp::now()),
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    });
    loop {
        let Ok((tcp, peer)) = listener.accept().await else { continue };
        let acceptor = tokio_rustls::TlsAcceptor::from(serving.config());
        let state = state.clone();
        let serving = serving.clone();
        tokio::spawn(async move {
            let stream = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    if let Some(outcome) = tls::classify_server_error(&e) {
                        eprintln!(
                            "{} http: TLS handshake error from {peer}: {}",
                            jiff::Timestamp::now(),
                            tls::go_style(&e)
                        );
                        monitor::record(
                            &monitor::node_of(&peer.ip().to_string()),
                            &monitor::me("kube-apiserver"),
                            "client->apiserver",
                            outcome,
                        );
                    }
                    return;
                }
            };
            let presented = stream.get_ref().1.peer_certificates().map(<[_]>::to_vec);
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                // Per request, against the client CA loaded now (x509.go verifies per request).
                let cert = serving.authenticate(presented.as_deref());
                async move { Ok::<_, Infallible>(handle(&state, cert, anonymous, peer, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond(status: u16, body: Value) -> Resp {
    let mut r = hyper::Response::new(Full::new(bytes::Bytes::from(body.to_string())));
    *r.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
    r
}

fn status(code: u16, reason: &str, message: &str) -> Resp {
    respond(
        code,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message, "reason": reason, "code": code}),
    )
}

async fn handle(
    state: &State,
    cert: ClientCert,
    anonymous: bool,
    peer: SocketAddr,
    req: hyper::Request<hyper::body::Incoming>,
) -> Resp {
    let path = req.uri().path().to_string();
    let token = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|t| !t.is_empty())
        .map(str::to_string);
    // The authenticators in the real one's order (`pkg/kubeapiserver/authenticator/config.go`:
    // a union of x509 and tokens, wrapped with `union.NewFailOnError(…, anonymous)`): the first
    // that authenticates wins; if none does and one failed (a certificate its client CA did
    // not sign), 401 even with anonymous access on; with no credential at all, anonymous.
    // Tokens are not verified yet (any non-empty bearer token authenticates).
    let authenticated = matches!(cert, ClientCert::User { .. }) || token.is_some();
    if let ClientCert::Untrusted(why) = &cert
        && !authenticated
    {
        eprintln!(
            "{} kube-apiserver: \"Unable to authenticate the request\" err=\"[verifying certificate from {peer} failed: {why}]\"",
            jiff::Timestamp::now()
        );
        monitor::record(
            &monitor::node_of(&peer.ip().to_string()),
            &monitor::me("kube-apiserver"),
            "client->apiserver",
            Outcome::Unauthorized,
        );
        return respond(401, serving::unauthorized_status());
    }
    if !authenticated && !anonymous {
        return respond(401, serving::unauthorized_status());
    }
    if path == "/readyz" {
        // Like the real one: ready only while its etcd answers (kubeadm's stacked etcd is the
        // node's own member, so a stopped member makes this apiserver unready).
        let check = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            state.etcd.get("/registry/readyz-check"),
        )
        .await;
        let failed = match check {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(format!("{e:#}")),
            Err(_) => Some("no answer within 2 s".to_string()),
        };
        if let Some(why) = failed {
            let mut r = hyper::Response::new(Full::new(bytes::Bytes::from(format!(
                "[-]etcd failed: {why}\nreadyz check failed\n"
            ))));
            *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
            r.headers_mut()
                .insert("content-type", hyper::header::HeaderValue::from_static("text/plain"));
            return r;
        }
    }
    if matches!(path.as_str(), "/healthz" | "/livez" | "/readyz") {
        let mut r = hyper::Response::new(Full::new(bytes::Bytes::from_static(b"ok")));
        r.headers_mut()
            .insert("content-type", hyper::header::HeaderValue::from_static("text/plain"));
        return r;
    }
    if !authenticated && path != "/version" {
        // system:anonymous may read only what `system:public-info-viewer` allows (the health
        // paths above and /version; `plugin/pkg/auth/authorizer/rbac/bootstrappolicy`).
        return status(
            403,
            "Forbidden",
            &format!("forbidden: User \"system:anonymous\" cannot get path \"{path}\""),
        );
    }
    match route(state, req).await {
        Ok(r) => r,
        Err(e) => status(500, "InternalError", &format!("{e:#}")),
    }
}

/// The discovery document at `path`; `endpoint` is the address `/api` tells clients to use.
fn discovery(path: &str, endpoint: &SocketAddr) -> Option<Value> {
    let group_version =
        |g: &str, v: &str| if g.is_empty() { v.to_string() } else { format!("{g}/{v}") };
    match path {
        "/version" => Some(
            json!({"major": "1", "minor": "31", "gitVersion": "v1.31.0", "platform": "linux/amd64"}),
        ),
        "/api" => Some(
            json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": endpoint.to_string()}]}),
        ),
        "/apis" => {
            let mut groups: Vec<&str> =
                KINDS.iter().map(|k| k.group).filter(|g| !g.is_empty()).collect();
            // metrics.k8s.io is not advertised: while metrics-server has no running pod every
            // kubectl discovery would print errors. Its paths are still proxied.
            groups.dedup();
            let groups: Vec<Value> = groups
                .iter()
                .map(|g| {
                    let v = if *g == "metrics.k8s.io" { "v1beta1" } else { "v1" };
                    let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
                    json!({"name": g, "versions": [gv.clone()], "preferredVersion": gv})
                })
                .collect();
            Some(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}))
        }
        _ => {
            let (g, v) = if path == "/api/v1" {
                ("", "v1")
            } else {
                let rest = path.strip_prefix("/apis/")?;
                let (g, v) = rest.split_once('/')?;
                if v.contains('/') {
                    return None;
                }
                (g, v)
            };
            let resources: Vec<Value> = KINDS
                .iter()
                .filter(|k| k.group == g && k.version == v)
                .flat_map(|k| {
                    let verbs = json!(["create", "delete", "get", "list", "patch", "update"]);
                    let mut r = vec![json!({"name": k.resource, "singularName": k.kind.to_lowercase(), "namespaced": k.namespaced, "kind": k.kind, "verbs": verbs, "shortNames": k.short})];
                    if matches!(k.resource, "nodes" | "pods" | "deployments" | "daemonsets" | "statefulsets") {
                        r.push(json!({"name": format!("{}/status", k.resource), "namespaced": k.namespaced, "kind": k.kind, "verbs": ["get", "patch", "update"]}));
                    }
                    if k.resource == "pods" {
                        r.push(json!({"name": "pods/log", "namespaced": true, "kind": "Pod", "verbs": ["get"]}));
                    }
                    r
                })
                .collect();
            if resources.is_empty() {
                return None;
            }
            Some(
                json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version(g, v), "resources": resources}),
            )
        }
    }
}

/// A parsed resource path.
#[derive(Debug, PartialEq)]
struct Target {
    group: String,
    resource: String,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn parse_target(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, rest) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => (String::new(), rest),
        ["apis", g, _v, rest @ ..] => (g.to_string(), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, r, rest @ ..] => (Some(ns.to_string()), {
            let mut v = vec![*r];
            v.extend_from_slice(rest);
            v
        }),
        other => (None, other.to_vec()),
    };
    let mut it = rest.into_iter();
    let resource = it.next()?.to_string();
    let name = it.next().map(str::to_string);
    let sub = it.next().map(str::to_string);
    Some(Target { group, resource, namespace, name, sub })
}

fn key(kind: &Kind, ns: Option<&str>, name: &str) -> String {
    match (kind.namespaced, ns) {
        (true, Some(ns)) => format!("/registry/{}/{ns}/{name}", kind.resource),
        _ => format!("/registry/{}/{name}", kind.resource),
    }
}

fn now() -> String {
    jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

fn new_rv() -> String {
    jiff::Timestamp::now().as_microsecond().to_string()
}

fn uid() -> String {
    let n = jiff::Timestamp::now().as_nanosecond() as u128 ^ (std::process::id() as u128) << 64;
    let h = format!("{n:032x}");
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
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

async fn route(state: &State, req: hyper::Request<hyper::body::Incoming>) -> Result<Resp> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let method = req.method().as_str().to_string();
    let accept =
        req.headers().get("accept").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    if method == "GET"
        && let Some(v) = discovery(&path, &state.endpoint)
    {
        return Ok(respond(200, v));
    }
    if path.starts_with("/apis/metrics.k8s.io") {
        return proxy_metrics(state, &path).await;
    }
    let Some(t) = parse_target(&path) else {
        return Ok(status(404, "NotFound", &format!("the server could not find {path}")));
    };
    let Some(kind) = find_kind(&t.group, &t.resource) else {
        return Ok(status(
            404,
            "NotFound",
            &format!("the server doesn't have a resource type \"{}\"", t.resource),
        ));
    };
    let body = req.into_body().collect().await.context("reading the request body")?.to_bytes();
    let api_version = if kind.group.is_empty() {
        kind.version.to_string()
    } else {
        format!("{}/{}", kind.group, kind.version)
    };
    let ns = t.namespace.as_deref();
    match (method.as_str(), &t.name) {
        ("GET", None) => {
            let prefix = match ns {
                Some(ns) if kind.namespaced => format!("/registry/{}/{ns}/", kind.resource),
                _ => format!("/registry/{}/", kind.resource),
            };
            let mut items = state.etcd.list(&prefix).await?;
            if let Some(sel) = query.split('&').find_map(|q| q.strip_prefix("fieldSelector=")) {
                let sel = sel.replace("%3D", "=").replace("%2C", ",");
                for cond in sel.split(',') {
                    if let Some((f, v)) = cond.split_once('=') {
                        let ptr = format!("/{}", f.replace('.', "/"));
                        items
                            .retain(|i| i.pointer(&ptr).and_then(Value::as_str).unwrap_or("") == v);
                    }
                }
            }
            if accept.contains("as=Table") {
                return Ok(respond(200, table(kind, &items)));
            }
            Ok(respond(
                200,
                json!({"kind": format!("{}List", kind.kind), "apiVersion": api_version, "metadata": {"resourceVersion": new_rv()}, "items": items}),
            ))
        }
        ("GET", Some(name)) => {
            if t.sub.as_deref() == Some("log") {
                return pod_log(state, ns.unwrap_or("default"), name, &query).await;
            }
            match state.etcd.get(&key(kind, ns, name)).await? {
                Some(v) if accept.contains("as=Table") => Ok(respond(200, table(kind, &[v]))),
                Some(v) => Ok(respond(200, v)),
                None => Ok(not_found(kind, name)),
            }
        }
        ("POST", None) => {
            let mut obj: Value = serde_json::from_slice(&body).context("the body is not JSON")?;
            let Some(name) = obj["metadata"]["name"].as_str().map(str::to_string) else {
                return Ok(status(422, "Invalid", "metadata.name: Required value"));
            };
            let k = key(kind, ns, &name);
            stamp(&mut obj, kind, &api_version, ns, true);
            if !state.etcd.create(&k, &obj).await? {
                return Ok(status(
                    409,
                    "AlreadyExists",
                    &format!("{} \"{name}\" already exists", kind.resource),
                ));
            }
            Ok(respond(201, obj))
        }
        ("PUT", Some(name)) => {
            let mut obj: Value = serde_json::from_slice(&body).context("the body is not JSON")?;
            let k = key(kind, ns, name);
            let Some(old) = state.etcd.get(&k).await? else { return Ok(not_found(kind, name)) };
            let conflict = || {
                status(
                    409,
                    "Conflict",
                    &format!(
                        "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                        kind.resource
                    ),
                )
            };
            if let Some(rv) =
                obj["metadata"]["resourceVersion"].as_str().filter(|rv| !rv.is_empty())
                && Some(rv) != old["metadata"]["resourceVersion"].as_str()
            {
                return Ok(conflict());
            }
            if t.sub.as_deref() == Some("status") {
                let mut merged = old.clone();
                merged["status"] = obj["status"].clone();
                obj = merged;
            } else if obj.get("status").is_none_or(Value::is_null) {
                obj["status"] = old["status"].clone();
            }
            obj["metadata"]["uid"] = old["metadata"]["uid"].clone();
            obj["metadata"]["creationTimestamp"] = old["metadata"]["creationTimestamp"].clone();
            stamp(&mut obj, kind, &api_version, ns, false);
            if !state.etcd.swap(&k, &old, &obj).await? {
                return Ok(conflict());
            }
            Ok(respond(200, obj))
        }
        ("PATCH", Some(name)) => {
            let patch: Value = serde_json::from_slice(&body).context("the patch is not JSON")?;
            let k = key(kind, ns, name);
            // A patch applies to whatever is stored: retried when another writer came between.
            for _ in 0..5 {
                let Some(old) = state.etcd.get(&k).await? else { return Ok(not_found(kind, name)) };
                let mut obj = old.clone();
                merge_patch(&mut obj, &patch);
                stamp(&mut obj, kind, &api_version, ns, false);
                if state.etcd.swap(&k, &old, &obj).await? {
                    return Ok(respond(200, obj));
                }
            }
            Ok(status(
                409,
                "Conflict",
                &format!("{} \"{name}\" kept changing during the patch", kind.resource),
            ))
        }
        ("DELETE", Some(name)) => {
            let k = key(kind, ns, name);
            let Some(obj) = state.etcd.get(&k).await? else { return Ok(not_found(kind, name)) };
            state.etcd.delete(&k).await?;
            Ok(respond(200, obj))
        }
        _ => Ok(status(405, "MethodNotAllowed", &format!("{method} {path} is not supported"))),
    }
}

fn not_found(kind: &Kind, name: &str) -> Resp {
    let g = if kind.group.is_empty() { String::new() } else { format!(".{}", kind.group) };
    status(404, "NotFound", &format!("{}{g} \"{name}\" not found", kind.resource))
}

fn stamp(obj: &mut Value, kind: &Kind, api_version: &str, ns: Option<&str>, create: bool) {
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

fn age(obj: &Value) -> String {
    let Some(t) = obj["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(|s| s.parse::<jiff::Timestamp>().ok())
    else {
        return "<unknown>".into();
    };
    let s = jiff::Timestamp::now().as_second() - t.as_second();
    if s < 120 {
        format!("{s}s")
    } else if s < 7200 {
        format!("{}m", s / 60)
    } else {
        format!("{}h", s / 3600)
    }
}

/// A meta.k8s.io Table, as kubectl asks for.
fn table(kind: &Kind, items: &[Value]) -> Value {
    let col = |n: &str| json!({"name": n, "type": "string", "format": "", "description": "", "priority": 0});
    let (cols, rows): (Vec<Value>, Vec<Value>) = match kind.resource {
        "nodes" => (
            vec![col("Name"), col("Status"), col("Roles"), col("Age"), col("Version")],
            items
                .iter()
                .map(|i| {
                    let ready = i["status"]["conditions"]
                        .as_array()
                        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                        .map(|c| c["status"] == "True")
                        .unwrap_or(false);
                    let roles: Vec<&str> = i["metadata"]["labels"]
                        .as_object()
                        .map(|l| {
                            l.keys()
                                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                                .collect()
                        })
                        .unwrap_or_default();
                    let roles =
                        if roles.is_empty() { "<none>".to_string() } else { roles.join(",") };
                    let version =
                        i["status"]["nodeInfo"]["kubeletVersion"].as_str().unwrap_or("v1.31.0");
                    json!([
                        i["metadata"]["name"],
                        if ready { "Ready" } else { "NotReady" },
                        roles,
                        age(i),
                        version
                    ])
                })
                .collect(),
        ),
        "pods" => (
            vec![
                col("Name"),
                col("Ready"),
                col("Status"),
                col("Restarts"),
                col("Age"),
                col("Node"),
            ],
            items
                .iter()
                .map(|i| {
                    let phase = i["status"]["phase"].as_str().unwrap_or("Pending");
                    let n = i["spec"]["containers"].as_array().map(Vec::len).unwrap_or(1);
                    let ready = if phase == "Running" { n } else { 0 };
                    json!([
                        i["metadata"]["name"],
                        format!("{ready}/{n}"),
                        phase,
                        0,
                        age(i),
                        i["spec"]["nodeName"].as_str().unwrap_or("<none>")
                    ])
                })
                .collect(),
        ),
        _ => (
            vec![col("Name"), col("Age")],
            items.iter().map(|i| json!([i["metadata"]["name"], age(i)])).collect(),
        ),
    };
    let rows: Vec<Value> = rows
        .into_iter()
        .zip(items)
        .map(|(cells, obj)| {
            json!({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": new_rv()}, "columnDefinitions": cols, "rows": rows})
}

/// GET pods/<name>/log: read through the pod's kubelet on :10250, as the real apiserver does.
async fn pod_log(state: &State, ns: &str, name: &str, query: &str) -> Result<Resp> {
    let Some(pod) = state.etcd.get(&format!("/registry/pods/{ns}/{name}")).await? else {
        return Ok(status(404, "NotFound", &format!("pods \"{name}\" not found")));
    };
    let node = pod["spec"]["nodeName"].as_str().unwrap_or("");
    let Some(n) = state.etcd.get(&format!("/registry/nodes/{node}")).await? else {
        return Ok(status(404, "NotFound", &format!("pod {name} is not on any node")));
    };
    let ip = n["status"]["addresses"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["type"] == "InternalIP"))
        .and_then(|a| a["address"].as_str())
        .unwrap_or("");
    let container = pod["spec"]["containers"][0]["name"].as_str().unwrap_or("");
    let c = Peer::new(
        &format!("https://{ip}:10250"),
        state.kubelet_tls.clone(),
        format!("kubelet@{node}"),
        "apiserver->kubelet",
    )?;
    let _ = query;
    let (st, body) =
        c.request("GET", &format!("/containerLogs/{ns}/{name}/{container}"), None, &[]).await?;
    let mut r = hyper::Response::new(Full::new(bytes::Bytes::from(body)));
    *r.status_mut() = hyper::StatusCode::from_u16(st).unwrap_or(hyper::StatusCode::BAD_GATEWAY);
    Ok(r)
}

async fn node_address(state: &State, node: &str) -> Result<String> {
    let n = state
        .etcd
        .get(&format!("/registry/nodes/{node}"))
        .await?
        .with_context(|| format!("node {node} is not registered"))?;
    n["status"]["addresses"]
        .as_array()
        .and_then(|a| a.iter().find(|a| a["type"] == "InternalIP"))
        .and_then(|a| a["address"].as_str())
        .map(str::to_string)
        .with_context(|| format!("node {node} has no InternalIP"))
}

/// /apis/metrics.k8s.io/...: forwarded to the metrics-server pod with the front-proxy client
/// certificate and X-Remote-User, as the aggregation layer does.
async fn proxy_metrics(state: &State, path: &str) -> Result<Resp> {
    let f = &state.flags;
    let pods = state.etcd.list("/registry/pods/kube-system/").await?;
    let Some(pod) = pods.iter().find(|p| {
        p["metadata"]["name"].as_str().is_some_and(|n| n.starts_with("metrics-server"))
            && p["status"]["phase"] == "Running"
    }) else {
        return Ok(status(
            503,
            "ServiceUnavailable",
            "the server is currently unable to handle the request (metrics-server has no running pod)",
        ));
    };
    let ip = pod["status"]["podIP"].as_str().or(pod["status"]["hostIP"].as_str()).unwrap_or("");
    let node = pod["spec"]["nodeName"].as_str().unwrap_or("");
    let cert = require(f, "proxy-client-cert-file")?;
    let key = require(f, "proxy-client-key-file")?;
    // The APIService says insecureSkipTLSVerify (metrics-server's self-signed certificate, as
    // upstream's default install); the front-proxy client certificate is what is checked.
    let cfg = tls::client_config_skip_verify((
        tls::load_certs(cert.as_ref())?,
        tls::load_key(key.as_ref())?,
    ))?;
    let ip = if ip.is_empty() { node_address(state, node).await? } else { ip.to_string() };
    let c = Peer::new(
        &format!("https://{ip}:4443"),
        cfg,
        format!("metrics-server@{node}"),
        "apiserver->metrics-server",
    )?;
    let (st, body) = c
        .request(
            "GET",
            path,
            None,
            &[("X-Remote-User", "system:admin"), ("X-Remote-Group", "system:masters")],
        )
        .await?;
    let mut r = hyper::Response::new(Full::new(bytes::Bytes::from(body)));
    *r.status_mut() = hyper::StatusCode::from_u16(st).unwrap_or(hyper::StatusCode::BAD_GATEWAY);
    r.headers_mut()
        .insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
    Ok(r)
}

async fn put_if_absent(etcd: &Etcd, key: &str, obj: Value) -> Result<()> {
    etcd.create(key, &obj).await.map(|_| ())
}

fn meta(name: &str, ns: Option<&str>) -> Value {
    let mut m = json!({"name": name, "uid": uid(), "creationTimestamp": now(), "resourceVersion": new_rv()});
    if let Some(ns) = ns {
        m["namespace"] = json!(ns);
    }
    m
}

fn workload(kind: &str, name: &str, program: &str, replicas: Option<u32>) -> Value {
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

/// The objects kubeadm and its addons leave in a new cluster, created when absent, and
/// extension-apiserver-authentication rewritten from this apiserver's flags.
async fn bootstrap(state: &State) -> Result<()> {
    let f = &state.flags;
    let e = &state.etcd;
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        put_if_absent(e, &format!("/registry/namespaces/{ns}"), json!({"apiVersion": "v1", "kind": "Namespace", "metadata": meta(ns, None), "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}})).await?;
    }
    let read = |k: &str| -> Result<String> {
        let p = require(f, k)?;
        std::fs::read_to_string(p).with_context(|| format!("reading {p} (--{k})"))
    };
    let client_ca = read("client-ca-file")?;
    let mut data = json!({"client-ca-file": client_ca});
    if let Ok(rh) = read("requestheader-client-ca-file") {
        data["requestheader-client-ca-file"] = json!(rh);
        let list = |k: &str| {
            json!(
                serde_json::to_string(
                    &f.get(k).map(|v| v.split(',').collect::<Vec<_>>()).unwrap_or_default()
                )
                .unwrap_or_default()
            )
        };
        data["requestheader-allowed-names"] = list("requestheader-allowed-names");
        data["requestheader-extra-headers-prefix"] = list("requestheader-extra-headers-prefix");
        data["requestheader-group-headers"] = list("requestheader-group-headers");
        data["requestheader-username-headers"] = list("requestheader-username-headers");
    }
    let key = "/registry/configmaps/kube-system/extension-apiserver-authentication";
    let mut cm = e.get(key).await?.unwrap_or_else(|| json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("extension-apiserver-authentication", Some("kube-system"))}));
    if cm["data"] != data {
        cm["data"] = data;
        cm["metadata"]["resourceVersion"] = json!(new_rv());
        e.put(key, &cm).await?;
    }
    let kubeconfig = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: \"\"\n  cluster:\n    certificate-authority-data: {}\n    server: https://{}\ncontexts: null\ncurrent-context: \"\"\npreferences: {{}}\nusers: null\n",
        B64.encode(client_ca.as_bytes()),
        state.endpoint
    );
    put_if_absent(e, "/registry/configmaps/kube-public/cluster-info", json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta("cluster-info", Some("kube-public")), "data": {"kubeconfig": kubeconfig}})).await?;
    put_if_absent(
        e,
        "/registry/deployments/kube-system/coredns",
        workload("Deployment", "coredns", "coredns", Some(2)),
    )
    .await?;
    put_if_absent(
        e,
        "/registry/daemonsets/kube-system/kube-proxy",
        workload("DaemonSet", "kube-proxy", "kube-proxy", None),
    )
    .await?;
    put_if_absent(
        e,
        "/registry/deployments/kube-system/metrics-server",
        workload("Deployment", "metrics-server", "metrics-server", Some(1)),
    )
    .await?;
    put_if_absent(
        e,
        "/registry/apiservices/v1beta1.metrics.k8s.io",
        json!({"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": meta("v1beta1.metrics.k8s.io", None),
               "spec": {"group": "metrics.k8s.io", "version": "v1beta1", "groupPriorityMinimum": 100, "versionPriority": 100, "insecureSkipTLSVerify": true,
                        "service": {"namespace": "kube-system", "name": "metrics-server", "port": 443}},
               "status": {"conditions": [{"type": "Available", "status": "True"}]}}),
    )
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_into_targets() {
        let t = parse_target("/api/v1/namespaces/kube-system/pods/x/log").unwrap();
        assert_eq!(t.namespace.as_deref(), Some("kube-system"));
        assert_eq!(t.resource, "pods");
        assert_eq!(t.name.as_deref(), Some("x"));
        assert_eq!(t.sub.as_deref(), Some("log"));
        let t = parse_target("/api/v1/namespaces/kube-system").unwrap();
        assert_eq!(t.resource, "namespaces");
        assert_eq!(t.name.as_deref(), Some("kube-system"));
        let t = parse_target("/apis/apps/v1/deployments").unwrap();
        assert_eq!(
            (t.group.as_str(), t.resource.as_str(), t.namespace),
            ("apps", "deployments", None)
        );
    }

    #[test]
    fn merge_patch_sets_and_removes_annotations() {
        let mut o = json!({"metadata": {"annotations": {"a": "1", "b": "2"}}, "spec": {"x": 1}});
        merge_patch(&mut o, &json!({"metadata": {"annotations": {"a": null, "c": "3"}}}));
        assert_eq!(o, json!({"metadata": {"annotations": {"b": "2", "c": "3"}}, "spec": {"x": 1}}));
    }

    #[test]
    fn discovery_lists_core_and_apps() {
        let endpoint: SocketAddr = "127.0.1.10:6443".parse().unwrap();
        let discovery = |p: &str| discovery(p, &endpoint);
        let api = discovery("/api").unwrap();
        assert_eq!(api["serverAddressByClientCIDRs"][0]["serverAddress"], "127.0.1.10:6443");
        let core = discovery("/api/v1").unwrap();
        assert!(core["resources"].as_array().unwrap().iter().any(|r| r["name"] == "nodes"));
        let apps = discovery("/apis/apps/v1").unwrap();
        assert!(apps["resources"].as_array().unwrap().iter().any(|r| r["name"] == "daemonsets"));
        assert!(discovery("/apis/nope/v1").is_none());
    }
}
