//! The simulated kube-apiserver: kubeadm's flags read once at start, HTTPS with client-cert and
//! bearer-token authentication, objects kept in the real etcd through its v3 JSON gateway.
//!
//! Resources are generic: any `/api/v1/...` or `/apis/<group>/<version>/...` path maps to the
//! etcd key `/registry/<resource>/<namespace>/<name>` (or `/registry/<resource>/<name>` for
//! cluster-scoped kinds), which is enough for kubectl and kubeca.
//!
//! This module serves (TLS, authentication, health) and dispatches each request; `kinds` is the
//! table of kinds and discovery, `objects` how objects are keyed, stamped and patched, `table`
//! the Tables kubectl asks for, `etcd` the storage, `peers` the outgoing connections, `proxy`
//! pod logs and the aggregated metrics API, `bootstrap` the objects of a new cluster.

mod bootstrap;
mod csr;
mod etcd;
mod kinds;
mod objects;
mod peers;
mod proxy;
mod table;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use http_body_util::{BodyExt, Full};
use serde_json::{Value, json};

pub use etcd::Etcd;
pub use objects::{API_PROXY_KUBECTL, API_PROXY_PATH, merge_patch};

use super::component::{parse_flags, require};
use super::jwt;
use super::monitor::{self, Outcome};
use super::serving::{self, ClientCert, ClientPair, Reload, Serving};
use super::subnet::Subnet;
use super::tls;
use bootstrap::bootstrap;
use kinds::{Kind, discovery, find_kind};
use objects::{key, new_rv, stale, stamp};
use proxy::{pod_log, proxy_metrics};
use table::table;

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

struct State {
    etcd: Etcd,
    flags: HashMap<String, String>,
    kubelet_tls: ClientPair,
    /// The control-plane endpoint (the testbed's load balancer), published in discovery and
    /// in cluster-info as kubeadm's controlPlaneEndpoint.
    endpoint: SocketAddr,
    /// How bearer tokens are verified and signed.
    tokens: Tokens,
    /// Which requests without credentials pass as anonymous.
    anonymous: Anonymous,
}

/// The service-account token settings, read once at start as the real one reads them
/// (`pkg/kubeapiserver/options/authentication.go`: the key files are parsed once).
struct Tokens {
    /// Every key of `--service-account-key-file`.
    keys: Vec<jwt::PublicKey>,
    /// `--service-account-issuer`, then the legacy issuer, which the real one always accepts
    /// (`pkg/kubeapiserver/authenticator/config.go`: a legacy authenticator next to the bound one).
    issuers: Vec<String>,
    /// `--api-audiences`, or the issuer when the flag is absent (its default).
    audiences: Vec<String>,
    /// `--service-account-signing-key-file`: TokenRequest is served only with it.
    signer: Option<jwt::Signer>,
}

impl Tokens {
    fn from_flags(flags: &HashMap<String, String>) -> Result<Tokens> {
        let keys = match flags.get("service-account-key-file") {
            Some(p) => jwt::public_keys_from_file(std::path::Path::new(p))
                .context("--service-account-key-file")?,
            None => Vec::new(),
        };
        let issuer = flags.get("service-account-issuer").cloned().unwrap_or_default();
        let mut issuers: Vec<String> = issuer
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        let audiences = match flags.get("api-audiences") {
            Some(a) => {
                a.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
            }
            None => issuers.first().cloned().into_iter().collect(),
        };
        issuers.push(jwt::LEGACY_ISSUER.to_string());
        let signer = match flags.get("service-account-signing-key-file") {
            Some(p) => Some(
                jwt::Signer::from_file(std::path::Path::new(p))
                    .context("--service-account-signing-key-file")?,
            ),
            None => None,
        };
        Ok(Tokens { keys, issuers, audiences, signer })
    }
}

async fn run(flags: HashMap<String, String>) -> Result<()> {
    let get = |k: &str| require(&flags, k);
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
    let anonymous = Anonymous::from_flags(&flags)?;
    let kubelet_ca = match flags.get("kubelet-certificate-authority") {
        Some(p) => Some(std::fs::read(p).with_context(|| format!("reading {p}"))?),
        None => None,
    };
    // The kubelet client pair is reloaded when it changes, the CA read once (serving.rs).
    let kubelet_tls = ClientPair::new(
        kubelet_ca,
        "--kubelet-certificate-authority",
        &PathBuf::from(get("kubelet-client-certificate")?),
        &PathBuf::from(get("kubelet-client-key")?),
    )?;
    let etcd = Etcd::new(&flags)?;
    let endpoint = Subnet::from_env()?.lb_endpoint();
    let tokens = Tokens::from_flags(&flags)?;
    let state =
        Arc::new(State { etcd, flags: flags.clone(), kubelet_tls, endpoint, tokens, anonymous });
    // Without --bind-address the real one serves on every address (0.0.0.0,
    // `staging/src/k8s.io/apiserver/pkg/server/options/serving.go`); kubeadm sets none.
    let bind = flags.get("bind-address").cloned().unwrap_or_else(|| "0.0.0.0".into());
    let addr: SocketAddr =
        format!("{bind}:{port}").parse().context("--bind-address:--secure-port")?;
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
        // Then it keeps extension-apiserver-authentication merged with its CAs.
        loop {
            tokio::time::sleep(bootstrap::AUTHENTICATION_SYNC).await;
            if let Err(e) = bootstrap::publish_authentication(&st).await {
                eprintln!(
                    "{} kube-apiserver: extension-apiserver-authentication: {e:#}",
                    jiff::Timestamp::now()
                );
            }
        }
    });
    loop {
        let Ok((tcp, peer)) = listener.accept().await else { continue };
        let acceptor = tokio_rustls::TlsAcceptor::from(serving.config());
        let state = state.clone();
        let serving = serving.clone();
        tokio::spawn(async move {
            let client = monitor::node_of(&peer.ip().to_string());
            let me = monitor::me("kube-apiserver");
            let edge = (client.as_str(), me.as_str(), "client->apiserver");
            let Some(stream) = tls::accept(&acceptor, tcp, peer, edge).await else { return };
            let presented = stream.get_ref().1.peer_certificates().map(<[_]>::to_vec);
            let service = hyper::service::service_fn(move |req| {
                let state = state.clone();
                // Per request, against the client CA loaded now (x509.go verifies per request).
                let cert = serving.authenticate(presented.as_deref());
                async move { Ok::<_, Infallible>(handle(&state, cert, peer, req).await) }
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

fn not_found(kind: &Kind, name: &str) -> Resp {
    let g = if kind.group.is_empty() { String::new() } else { format!(".{}", kind.group) };
    status(404, "NotFound", &format!("{}{g} \"{name}\" not found", kind.resource))
}

async fn handle(
    state: &State,
    cert: ClientCert,
    peer: SocketAddr,
    req: hyper::Request<hyper::body::Incoming>,
) -> Resp {
    let path = req.uri().path().to_string();
    let token = serving::bearer_token(&req);
    // The authenticators in the real one's order (`pkg/kubeapiserver/authenticator/config.go`:
    // a union of x509 and tokens, wrapped with `union.NewFailOnError(…, anonymous)`): the first
    // that authenticates wins; if none does and one failed (a certificate its client CA did
    // not sign, a bearer token that does not verify), 401 even with anonymous access on; with
    // no credential at all, anonymous. A presented token that no authenticator accepts is an
    // error ("invalid bearer token",
    // `staging/src/k8s.io/apiserver/pkg/authentication/request/bearertoken/bearertoken.go`).
    let cert_ok = matches!(cert, ClientCert::User { .. });
    let mut requester = match &cert {
        ClientCert::User { name, groups } => Some(csr::Requester::new(name, groups)),
        _ => None,
    };
    let token_error = match &token {
        Some(t) if !cert_ok => {
            let now = jiff::Timestamp::now().as_second();
            let tk = &state.tokens;
            match jwt::authenticate(t, &tk.keys, &tk.issuers, &tk.audiences, now) {
                Ok(id) => {
                    requester = Some(csr::Requester::new(&id.user, &service_account_groups(&id)));
                    None
                }
                Err(e) => Some(e),
            }
        }
        _ => None,
    };
    let authenticated = cert_ok || (token.is_some() && token_error.is_none());
    let mut errors = Vec::new();
    if let ClientCert::Untrusted(why) = &cert {
        errors.push(format!("verifying certificate from {peer} failed: {why}"));
    }
    if let Some(why) = token_error {
        errors.push(why);
    }
    if !authenticated && !errors.is_empty() {
        // The reasons only: never the token.
        eprintln!(
            "{} kube-apiserver: \"Unable to authenticate the request\" err=\"[{}]\"",
            jiff::Timestamp::now(),
            errors.join(", ")
        );
        monitor::record(
            &monitor::node_of(&peer.ip().to_string()),
            &monitor::me("kube-apiserver"),
            "client->apiserver",
            Outcome::Unauthorized,
        );
        return respond(401, serving::unauthorized_status());
    }
    if !authenticated && !state.anonymous.allows(&path) {
        return respond(401, serving::unauthorized_status());
    }
    if matches!(path.as_str(), "/healthz" | "/livez" | "/readyz") {
        // Like the real one: healthy, live and ready only while its etcd answers. The etcd
        // check is added with `AddHealthChecks`, which feeds /healthz, /livez and /readyz alike
        // (`addEtcdHealthEndpoint` in staging/src/k8s.io/apiserver/pkg/server/options/etcd.go);
        // kubeadm's stacked etcd is the node's own member, so a stopped member fails all three
        // on this apiserver only.
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
                "[-]etcd failed: {why}\n{} check failed\n",
                path.trim_start_matches('/')
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
    match route(state, requester.as_ref(), req).await {
        Ok(r) => r,
        Err(e) => status(500, "InternalError", &format!("{e:#}")),
    }
}

/// Which unauthenticated requests are let through as `system:anonymous`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Anonymous {
    /// All (`--anonymous-auth` unset or true: the default, which kubeadm leaves).
    Allowed,
    /// None (`--anonymous-auth=false`).
    Denied,
    /// Only requests for these exact paths, query ignored (`--authentication-config` with an
    /// `anonymous` section whose `conditions` list them).
    Paths(std::collections::BTreeSet<String>),
}

impl Anonymous {
    /// From `--anonymous-auth` and `--authentication-config`, as
    /// pkg/kubeapiserver/options/authentication.go reads them: the file's `anonymous` section
    /// cannot be combined with the flag; `enabled: false` denies all; conditions, when listed,
    /// are the only paths (staging/src/k8s.io/apiserver/pkg/authentication/request/anonymous/
    /// anonymous.go matches `URL.Path` exactly).
    pub fn from_flags(flags: &HashMap<String, String>) -> Result<Anonymous> {
        let flag = flags.get("anonymous-auth").map(|v| v != "false");
        let Some(file) = flags.get("authentication-config") else {
            return Ok(if flag == Some(false) { Anonymous::Denied } else { Anonymous::Allowed });
        };
        let text = std::fs::read_to_string(file).with_context(|| format!("reading {file}"))?;
        Anonymous::from_config(&text, flag.is_some()).with_context(|| file.clone())
    }

    fn from_config(text: &str, flag_set: bool) -> Result<Anonymous> {
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).context("not YAML")?;
        if v.get("kind").and_then(|k| k.as_str()) != Some("AuthenticationConfiguration") {
            anyhow::bail!("kind is not AuthenticationConfiguration");
        }
        let Some(a) = v.get("anonymous") else {
            return Ok(Anonymous::Allowed);
        };
        if flag_set {
            anyhow::bail!(
                "anonymous: Forbidden: --anonymous-auth flag cannot be set when anonymous field \
                 is configured in authentication configuration file"
            );
        }
        if a.get("enabled").and_then(|e| e.as_bool()) != Some(true) {
            return Ok(Anonymous::Denied);
        }
        let paths: std::collections::BTreeSet<String> = a
            .get("conditions")
            .and_then(|c| c.as_sequence())
            .map(|c| c.iter().filter_map(|x| x.get("path")?.as_str().map(String::from)).collect())
            .unwrap_or_default();
        Ok(if paths.is_empty() { Anonymous::Allowed } else { Anonymous::Paths(paths) })
    }

    /// Whether a request without credentials for `path` is let through as anonymous.
    pub fn allows(&self, path: &str) -> bool {
        match self {
            Anonymous::Allowed => true,
            Anonymous::Denied => false,
            Anonymous::Paths(p) => p.contains(path),
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

async fn route(
    state: &State,
    who: Option<&csr::Requester>,
    req: hyper::Request<hyper::body::Incoming>,
) -> Result<Resp> {
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
    if method == "POST" && path == "/apis/authentication.k8s.io/v1/tokenreviews" {
        let body = req.into_body().collect().await.context("reading the request body")?;
        return Ok(token_review(state, &body.to_bytes()));
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
    if method == "POST"
        && kind.resource == "serviceaccounts"
        && t.sub.as_deref() == Some("token")
        && let (Some(ns), Some(name)) = (ns, &t.name)
    {
        return token_request(state, ns, name, &body).await;
    }
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
            // `generateName`: the prefix and five random characters (`names.SimpleNameGenerator`,
            // staging/src/k8s.io/apiserver/pkg/storage/names/generate.go).
            if obj["metadata"]["name"].as_str().is_none_or(str::is_empty)
                && let Some(prefix) = obj["metadata"]["generateName"].as_str()
            {
                obj["metadata"]["name"] = json!(format!("{prefix}{}", objects::random_suffix()));
            }
            let Some(name) = obj["metadata"]["name"].as_str().map(str::to_string) else {
                return Ok(status(422, "Invalid", "metadata.name: Required value"));
            };
            if kind.resource == "certificatesigningrequests" {
                let who =
                    who.cloned().unwrap_or_else(|| csr::Requester::new("system:anonymous", &[]));
                obj = match csr::prepare_create(obj, &who) {
                    Ok(o) => o,
                    Err(why) => return Ok(status(422, "Invalid", &why)),
                };
            }
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
            if stale(&obj, &old) {
                return Ok(conflict());
            }
            if kind.resource == "certificatesigningrequests" {
                obj = match csr::update(t.sub.as_deref(), &old, &obj) {
                    Ok(o) => o,
                    Err(why) => return Ok(status(422, "Invalid", &why)),
                };
            } else if t.sub.as_deref() == Some("status") {
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
                if kind.resource == "certificatesigningrequests" {
                    obj = match csr::update(t.sub.as_deref(), &old, &obj) {
                        Ok(o) => o,
                        Err(why) => return Ok(status(422, "Invalid", &why)),
                    };
                }
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

/// A stored core object, None when absent.
async fn get_object(
    state: &State,
    resource: &str,
    ns: Option<&str>,
    name: &str,
) -> Result<Option<Value>> {
    match find_kind("", resource) {
        Some(k) => state.etcd.get(&key(k, ns, name)).await,
        None => Ok(None),
    }
}

/// The shortest TokenRequest the real one accepts (`pkg/apis/authentication/validation`: "may
/// not specify a duration less than 10 minutes").
const MIN_TOKEN_SECONDS: i64 = 600;

/// POST `/api/v1/namespaces/{ns}/serviceaccounts/{name}/token`, as
/// `pkg/registry/core/serviceaccount/storage/token.go` (`TokenREST.Create`) answers it: a
/// token for the service account, bound to the pod or Secret of `spec.boundObjectRef`, for
/// `spec.audiences` (the API audiences when empty) and `spec.expirationSeconds` (3600 by
/// default), signed with `--service-account-signing-key-file`.
///
/// The testbed keeps no ServiceAccount objects (nothing creates them): a name without one
/// gets a token in any existing namespace, with a stand-in uid.
/// A service account's groups (`serviceaccount.UserInfo`).
fn service_account_groups(id: &jwt::Identity) -> [String; 2] {
    let ns = id.user.split(':').nth(2).unwrap_or_default();
    ["system:serviceaccounts".to_string(), format!("system:serviceaccounts:{ns}")]
}

/// `POST /apis/authentication.k8s.io/v1/tokenreviews`, as
/// `pkg/registry/authentication/tokenreview/storage.go` `Create` answers it: no token is a 400;
/// otherwise the token goes through the token authenticators with the review's audiences (the
/// apiserver's own when it names none) and the answer is the review with its status filled in,
/// 201. Webhook token authentication (the kubelet's) calls this. Who may create a review is
/// not checked (the testbed has no authorizer; upstream's `system:auth-delegator` role grants
/// it to those who need it).
fn token_review(state: &State, body: &[u8]) -> Resp {
    let Ok(mut review) = serde_json::from_slice::<Value>(body) else {
        return status(400, "BadRequest", "the body is not a TokenReview");
    };
    let token = review["spec"]["token"].as_str().unwrap_or_default().to_string();
    if token.is_empty() {
        return status(400, "BadRequest", "token is required for TokenReview in authentication");
    }
    let audiences: Vec<String> = match review["spec"]["audiences"].as_array() {
        Some(a) if !a.is_empty() => a.iter().filter_map(Value::as_str).map(String::from).collect(),
        _ => state.tokens.audiences.clone(),
    };
    let now = jiff::Timestamp::now().as_second();
    let tk = &state.tokens;
    review["status"] = match jwt::authenticate(&token, &tk.keys, &tk.issuers, &audiences, now) {
        Ok(id) => json!({
            "authenticated": true,
            "user": {"username": id.user, "groups": service_account_groups(&id)},
            "audiences": audiences,
        }),
        Err(why) => json!({"user": {}, "error": why}),
    };
    review["metadata"] = json!({"creationTimestamp": null});
    respond(201, review)
}

async fn token_request(state: &State, ns: &str, name: &str, body: &[u8]) -> Result<Resp> {
    let Some(signer) = &state.tokens.signer else {
        // Without a signing key the real one does not install the subresource.
        return Ok(status(404, "NotFound", "the server could not find the requested resource"));
    };
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return Ok(status(400, "BadRequest", "the body is not a TokenRequest"));
    };
    if get_object(state, "namespaces", None, ns).await?.is_none() {
        return Ok(status(404, "NotFound", &format!("namespaces \"{ns}\" not found")));
    }
    let sa_uid = match get_object(state, "serviceaccounts", Some(ns), name).await? {
        Some(sa) => sa["metadata"]["uid"].as_str().unwrap_or_default().to_string(),
        None => jwt::service_account_uid(ns, name),
    };
    let spec = &req["spec"];
    let expiration = spec["expirationSeconds"].as_i64().unwrap_or(3600);
    if expiration < MIN_TOKEN_SECONDS {
        return Ok(status(
            422,
            "Invalid",
            "spec.expirationSeconds: Invalid value: may not specify a duration less than 10 minutes",
        ));
    }
    let audiences: Vec<String> = match spec["audiences"].as_array() {
        Some(a) if !a.is_empty() => a.iter().filter_map(Value::as_str).map(String::from).collect(),
        _ => state.tokens.audiences.clone(),
    };
    let bound = match spec.get("boundObjectRef").filter(|r| !r.is_null()) {
        None => None,
        Some(r) => {
            let bound_kind = r["kind"].as_str().unwrap_or("");
            let bound_name = r["name"].as_str().unwrap_or("");
            let resource = match bound_kind {
                "Pod" => "pods",
                "Secret" => "secrets",
                other => {
                    return Ok(status(
                        400,
                        "BadRequest",
                        &format!("cannot bind token to object of type {other}"),
                    ));
                }
            };
            let Some(obj) = get_object(state, resource, Some(ns), bound_name).await? else {
                return Ok(status(
                    404,
                    "NotFound",
                    &format!("{resource} \"{bound_name}\" not found"),
                ));
            };
            if bound_kind == "Pod" {
                let pod_sa = obj["spec"]["serviceAccountName"].as_str().unwrap_or("default");
                if pod_sa != name {
                    return Ok(status(
                        400,
                        "BadRequest",
                        &format!(
                            "cannot bind token for serviceaccount \"{name}\" to pod running with serviceaccount \"{pod_sa}\""
                        ),
                    ));
                }
            }
            let uid = obj["metadata"]["uid"].as_str().unwrap_or_default().to_string();
            if let Some(want) = r["uid"].as_str().filter(|u| !u.is_empty())
                && want != uid
            {
                return Ok(status(
                    409,
                    "Conflict",
                    &format!(
                        "Operation cannot be fulfilled on {bound_kind} \"{bound_name}\": the UID in the bound object reference ({want}) does not match the UID in record ({uid}). The object might have been deleted and then recreated"
                    ),
                ));
            }
            Some(jwt::Bound { kind: bound_kind.to_string(), name: bound_name.to_string(), uid })
        }
    };
    let now = jiff::Timestamp::now().as_second();
    let issuer = state.tokens.issuers.first().map(String::as_str).unwrap_or_default();
    let claims =
        jwt::bound_claims(issuer, ns, (name, &sa_uid), bound.as_ref(), &audiences, now, expiration);
    let token = signer.sign(&claims)?;
    let expires =
        jiff::Timestamp::from_second(now + expiration)?.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let mut spec = spec.clone();
    if !spec.is_object() {
        spec = json!({});
    }
    spec["audiences"] = json!(audiences);
    spec["expirationSeconds"] = json!(expiration);
    Ok(respond(
        201,
        json!({
            "kind": "TokenRequest", "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": ns, "creationTimestamp": null},
            "spec": spec,
            "status": {"token": token, "expirationTimestamp": expires},
        }),
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn anonymous_access_follows_the_flag_or_the_authentication_configuration() {
        let flags = |kv: &[(&str, &str)]| -> HashMap<String, String> {
            kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
        };
        assert_eq!(Anonymous::from_flags(&flags(&[])).unwrap(), Anonymous::Allowed);
        let off = flags(&[("anonymous-auth", "false")]);
        assert_eq!(Anonymous::from_flags(&off).unwrap(), Anonymous::Denied);
        let health = "kind: AuthenticationConfiguration\nanonymous:\n  enabled: true\n  \
                      conditions:\n  - path: /livez\n  - path: /readyz\n";
        let a = Anonymous::from_config(health, false).unwrap();
        assert!(a.allows("/readyz") && a.allows("/livez"));
        assert!(!a.allows("/version") && !a.allows("/readyz/etcd"), "exact paths only");
        let e = Anonymous::from_config(health, true).unwrap_err().to_string();
        assert!(e.contains("--anonymous-auth flag cannot be set"), "{e}");
        let disabled = "kind: AuthenticationConfiguration\nanonymous:\n  enabled: false\n";
        assert_eq!(Anonymous::from_config(disabled, false).unwrap(), Anonymous::Denied);
        let jwt_only = "kind: AuthenticationConfiguration\njwt: []\n";
        assert_eq!(Anonymous::from_config(jwt_only, true).unwrap(), Anonymous::Allowed);
    }

    use super::*;

    #[test]
    fn token_flags_default_the_audiences_to_the_issuer_and_accept_legacy_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("sa.key");
        let out = std::process::Command::new("openssl")
            .args(["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out"])
            .arg(&key)
            .output()
            .unwrap();
        assert!(out.status.success());
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        let iss = "https://kubernetes.default.svc.cluster.local";
        let mut flags: HashMap<String, String> = [
            ("service-account-issuer", iss),
            ("service-account-key-file", key.to_str().unwrap()),
            ("service-account-signing-key-file", key.to_str().unwrap()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let t = Tokens::from_flags(&flags).unwrap();
        assert_eq!(t.issuers, [iss, jwt::LEGACY_ISSUER]);
        assert_eq!(t.audiences, [iss]);
        assert_eq!(t.keys.len(), 1);
        assert_eq!(t.keys[0].kid(), t.signer.as_ref().unwrap().kid());
        flags.insert("api-audiences".into(), "a, b".into());
        assert_eq!(Tokens::from_flags(&flags).unwrap().audiences, ["a", "b"]);
    }

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
}
