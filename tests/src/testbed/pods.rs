//! The workload pods: a coredns-like and a kube-proxy-like API client, and a metrics-server-like aggregated API server.
//!
//! A pod reads its credentials once at start, as client-go's in-cluster config does: the token
//! and `ca.crt` (from the namespace's kube-root-ca.crt) in its service-account directory,
//! `/var/run/secrets/kubernetes.io/serviceaccount` in its own mount namespace (container.rs;
//! `KUBECA_SA_DIR` overrides it for a program run by hand). The kubelet tells a pod who it is
//! through `KUBECA_POD_NAME`, `KUBECA_POD_NAMESPACE`, plus the testbed's
//! `KUBECA_TESTBED_{DIR,NODE,ADDRESS,SUBNET}`. Where the API is comes from
//! `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT`, as for a real pod.
//!
//! Beside these, kube-system/api-proxy runs real client-go programs no one here wrote: `kubectl
//! proxy` in-cluster and `curl` calling the API through it (apiserver/bootstrap.rs).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use http_body_util::Full;
use serde_json::{Value, json};

use super::client::{Client, Credentials, service_account_dir};
use super::serving::{ClientCert, Reload, Serving};
use super::{monitor, scraper as scrape, tls};

/// The API endpoint of a pod, `https://HOST:PORT` from `KUBERNETES_SERVICE_HOST` and
/// `KUBERNETES_SERVICE_PORT`, as client-go's `rest.InClusterConfig`
/// (staging/src/k8s.io/client-go/rest/config.go) reads it, failing as it does when either is
/// unset. The kubelet sets both in every container (pkg/kubelet/kubelet_pods.go,
/// `makeEnvironmentVariables`, from the `kubernetes` Service); on the testbed they name the
/// load balancer, which stands in for that Service.
pub fn api_server() -> Result<String> {
    let var = |k: &str| {
        std::env::var(k).ok().filter(|v| !v.is_empty()).with_context(|| {
            "unable to load in-cluster configuration, KUBERNETES_SERVICE_HOST and \
             KUBERNETES_SERVICE_PORT must be defined"
                .to_string()
        })
    };
    let (host, port) = (var("KUBERNETES_SERVICE_HOST")?, var("KUBERNETES_SERVICE_PORT")?);
    Ok(match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(_)) => format!("https://[{host}]:{port}"),
        _ => format!("https://{host}:{port}"),
    })
}

/// The monitor's name of this pod: `pod/<ns>/<name>@<node>`.
pub fn pod_identity(program: &str) -> String {
    let ns = std::env::var("KUBECA_POD_NAMESPACE").unwrap_or_else(|_| "kube-system".into());
    let name = std::env::var("KUBECA_POD_NAME").unwrap_or_else(|_| program.into());
    format!("pod/{ns}/{name}@{}", monitor::node())
}

/// A pod's service-account directory: its own, or `KUBECA_SA_DIR` for a program run by hand.
fn service_account_files() -> PathBuf {
    std::env::var_os("KUBECA_SA_DIR").map(PathBuf::from).unwrap_or_else(service_account_dir)
}

fn in_cluster(program: &str, purpose: &str) -> Result<Client> {
    let dir = service_account_files();
    let server = api_server().with_context(|| format!("{program}: finding the API"))?;
    let creds = Credentials::in_cluster(&dir.join("token"), &dir.join("ca.crt"), &server)
        .with_context(|| {
            format!("{program}: reading the service-account files in {}", dir.display())
        })?;
    Client::new(&creds, &pod_identity(program), purpose)
}

fn runtime_main(program: &str, f: impl std::future::Future<Output = Result<()>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{program}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{} {program}: {e:#}", jiff::Timestamp::now());
            ExitCode::FAILURE
        }
    }
}

/// Calls the API every `every` forever, logging failures (Go-style TLS errors included).
async fn poll(program: &str, api: Client, every: Duration, paths: &[&str]) -> Result<()> {
    let mut tick = tokio::time::interval(every);
    let mut failing = false;
    loop {
        tick.tick().await;
        for p in paths {
            match api.list(p).await {
                Ok(_) if failing => {
                    eprintln!("{} {program}: the apiserver answers again", jiff::Timestamp::now());
                    failing = false;
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("{} {program}: {e:#}", jiff::Timestamp::now());
                    failing = true;
                }
            }
        }
    }
}

/// `kubeca-testbed coredns`: watches services and endpoints the way CoreDNS's kubernetes plugin does.
pub fn coredns_main(_args: Vec<String>) -> ExitCode {
    runtime_main("coredns", async {
        let api = in_cluster("coredns", "coredns->apiserver")?;
        eprintln!("{} coredns: started, API {}", jiff::Timestamp::now(), api_server()?);
        poll("coredns", api, Duration::from_secs(2), &["/api/v1/services", "/api/v1/namespaces"])
            .await
    })
}

/// `kubeca-testbed kube-proxy`: reads services and its node as kube-proxy does.
pub fn kube_proxy_main(_args: Vec<String>) -> ExitCode {
    runtime_main("kube-proxy", async {
        let api = in_cluster("kube-proxy", "kube-proxy->apiserver")?;
        eprintln!("{} kube-proxy: started, API {}", jiff::Timestamp::now(), api_server()?);
        poll("kube-proxy", api, Duration::from_secs(2), &["/api/v1/services", "/api/v1/nodes"])
            .await
    })
}

/// `kubeca-testbed metrics-server`: an aggregated API server on <node address>:4443 that
/// authenticates the front proxy per request against the request-header CA published in
/// extension-apiserver-authentication, which it watches, as every `k8s.io/apiserver`-based
/// server does (`staging/src/k8s.io/apiserver/pkg/server/options/authentication.go`
/// `DelegatingAuthenticationOptions`, `dynamiccertificates/configmap_cafile_content.go`
/// `NewDynamicCAFromConfigMapController`: an informer on the ConfigMap; here a read every
/// [`CONFIGMAP_POLL`]). A front-proxy certificate its CA does not sign is answered 401.
///
/// It scrapes every node's kubelet as `pkg/scraper` does (`scraper.rs`).
pub fn metrics_server_main(args: Vec<String>) -> ExitCode {
    let options = match scrape::Options::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("metrics-server: {e:#}");
            return ExitCode::from(2);
        }
    };
    runtime_main("metrics-server", metrics_server(options))
}

/// How often the metrics server reads extension-apiserver-authentication (upstream's informer
/// sees a change at once, and re-reads every minute besides).
const CONFIGMAP_POLL: Duration = Duration::from_secs(2);

const AUTHENTICATION_CM: &str =
    "/api/v1/namespaces/kube-system/configmaps/extension-apiserver-authentication";

/// The request-header CA and allowed names of the ConfigMap, when it has them.
fn request_header(cm: &Value) -> Option<(String, Vec<String>)> {
    let ca = cm["data"]["requestheader-client-ca-file"].as_str()?.to_string();
    let allowed = cm["data"]["requestheader-allowed-names"]
        .as_str()
        .and_then(|s| serde_json::from_str(s).ok())
        .unwrap_or_default();
    Some((ca, allowed))
}

/// Writes `ca` where [`Serving`] reloads it from (by rename: never half a file).
fn write_ca(path: &std::path::Path, ca: &str) -> Result<()> {
    let tmp = path.with_extension("crt.tmp");
    std::fs::write(&tmp, ca).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming onto {}", path.display()))
}

async fn metrics_server(options: scrape::Options) -> Result<()> {
    let api = in_cluster("metrics-server", "metrics-server->apiserver")?;
    // The kubelet client is a copy of the in-cluster config, its CA read now, once
    // (`cmd/metrics-server/app/options/kubelet_client.go`; client-go's `loadTLSFiles`).
    let kubelets = Arc::new(scrape::Kubelets::new(&options, &service_account_files())?);
    let store = Arc::new(scrape::Store::default());
    tokio::spawn(scrape::run(api.clone(), kubelets, store.clone(), options.resolution));
    let (ca, allowed) = loop {
        match api.get(AUTHENTICATION_CM).await {
            Ok(Some(cm)) => match request_header(&cm) {
                Some(found) => break found,
                None => eprintln!(
                    "{} metrics-server: extension-apiserver-authentication has no requestheader-client-ca-file",
                    jiff::Timestamp::now()
                ),
            },
            Ok(None) => eprintln!(
                "{} metrics-server: extension-apiserver-authentication is not published yet",
                jiff::Timestamp::now()
            ),
            Err(e) => eprintln!("{} metrics-server: {e:#}", jiff::Timestamp::now()),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    let address =
        std::env::var("KUBECA_TESTBED_ADDRESS").context("KUBECA_TESTBED_ADDRESS is not set")?;
    let dir = PathBuf::from("/run/metrics-server");
    let (crt, key) = tls::self_signed(&dir, "serving", &address)?;
    let ca_path = dir.join("requestheader-client-ca.crt");
    write_ca(&ca_path, &ca)?;
    let serving = Arc::new(Serving::new(
        "metrics-server",
        (&crt, &key, Reload::AtStart),
        Some((&ca_path, Reload::OnChange)),
        &[b"http/1.1"],
    )?);
    let allowed = Arc::new(std::sync::RwLock::new(allowed));
    {
        // The watch: a changed ConfigMap reaches the CA file, which `serving` reloads.
        let (api, allowed, ca_path) = (api.clone(), allowed.clone(), ca_path.clone());
        tokio::spawn(async move {
            let mut last = ca;
            loop {
                tokio::time::sleep(CONFIGMAP_POLL).await;
                let Ok(Some(cm)) = api.get(AUTHENTICATION_CM).await else { continue };
                let Some((ca, names)) = request_header(&cm) else { continue };
                if ca != last {
                    match write_ca(&ca_path, &ca) {
                        Ok(()) => {
                            let n = ca.matches("BEGIN CERTIFICATE").count();
                            eprintln!(
                                "{} metrics-server: the request-header CA changed ({n} certificates)",
                                jiff::Timestamp::now()
                            );
                            last = ca;
                        }
                        Err(e) => eprintln!("{} metrics-server: {e:#}", jiff::Timestamp::now()),
                    }
                }
                *allowed.write().unwrap_or_else(|p| p.into_inner()) = names;
            }
        });
    }
    let addr: std::net::SocketAddr =
        format!("{address}:4443").parse().context("the node address")?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening on {addr}"))?;
    eprintln!("{} metrics-server: serving on https://{addr}", jiff::Timestamp::now());
    let me = monitor::me("metrics-server");
    loop {
        let Ok((tcp, peer)) = listener.accept().await else { continue };
        let acceptor = tokio_rustls::TlsAcceptor::from(serving.config());
        let (me, store, allowed, serving) =
            (me.clone(), store.clone(), allowed.clone(), serving.clone());
        tokio::spawn(async move {
            let client = format!("kube-apiserver@{}", peer.ip());
            let edge = (client.as_str(), me.as_str(), "apiserver->metrics-server");
            let Some(stream) = tls::accept(&acceptor, tcp, peer, edge).await else { return };
            let presented = stream.get_ref().1.peer_certificates().map(<[_]>::to_vec);
            let service =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let (store, allowed) = (store.clone(), allowed.clone());
                    let cert = serving.authenticate(presented.as_deref());
                    async move {
                        let allowed = allowed.read().unwrap_or_else(|p| p.into_inner()).clone();
                        Ok::<_, std::convert::Infallible>(metrics_answer(
                            &store, &allowed, &cert, &req,
                        ))
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

/// The front proxy's certificate must be present and, when names are configured, one of them.
pub fn front_proxy_allowed(allowed: &[String], cn: Option<&str>) -> bool {
    match cn {
        None => false,
        Some(cn) => allowed.is_empty() || allowed.iter().any(|a| a == cn),
    }
}

fn metrics_answer(
    store: &scrape::Store,
    allowed: &[String],
    cert: &ClientCert,
    req: &hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<Full<bytes::Bytes>> {
    let cn = match cert {
        ClientCert::User { name, .. } => Some(name.as_str()),
        _ => None,
    };
    let reply = |code: u16, v: Value| {
        let mut r = hyper::Response::new(Full::new(bytes::Bytes::from(v.to_string())));
        *r.status_mut() =
            hyper::StatusCode::from_u16(code).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
        r.headers_mut()
            .insert("content-type", hyper::header::HeaderValue::from_static("application/json"));
        r
    };
    if req.uri().path() == "/healthz" || req.uri().path() == "/livez" {
        return reply(200, json!("ok"));
    }
    if req.uri().path() == "/readyz" {
        // `metric-storage-ready`: some node with two points (`pkg/server/server.go`).
        return match store.ready() {
            true => reply(200, json!("ok")),
            false => reply(500, json!("[-]metric-storage-ready failed: no metrics to serve")),
        };
    }
    if let ClientCert::Untrusted(why) = cert {
        eprintln!(
            "{} metrics-server: \"Unable to authenticate the request\" err=\"[{why}]\"",
            jiff::Timestamp::now()
        );
    }
    if !front_proxy_allowed(allowed, cn) || req.headers().get("x-remote-user").is_none() {
        return reply(401, super::serving::unauthorized_status());
    }
    match req.uri().path().trim_end_matches('/') {
        "/apis/metrics.k8s.io/v1beta1" => reply(
            200,
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": "metrics.k8s.io/v1beta1", "resources": [
            {"name": "nodes", "singularName": "", "namespaced": false, "kind": "NodeMetrics", "verbs": ["get", "list"]},
            {"name": "pods", "singularName": "", "namespaced": true, "kind": "PodMetrics", "verbs": ["get", "list"]}]}),
        ),
        "/apis/metrics.k8s.io/v1beta1/nodes" => reply(
            200,
            json!({"kind": "NodeMetricsList", "apiVersion": "metrics.k8s.io/v1beta1", "metadata": {}, "items": store.node_metrics()}),
        ),
        p if let Some(name) = p.strip_prefix("/apis/metrics.k8s.io/v1beta1/nodes/") => {
            // `pkg/api/node.go` `Get`: a node without metrics is NotFound.
            match store.node_metrics().into_iter().find(|m| m["metadata"]["name"] == name) {
                Some(m) => reply(200, m),
                None => reply(
                    404,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "reason": "NotFound", "code": 404,
                           "message": format!("nodemetrics.metrics.k8s.io \"{name}\" not found"),
                           "details": {"name": name, "group": "metrics.k8s.io", "kind": "nodemetrics"}}),
                ),
            }
        }
        p => reply(
            404,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": format!("{p} not found")}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_front_proxy_names_are_let_in() {
        let allowed = vec!["front-proxy-client".to_string()];
        assert!(front_proxy_allowed(&allowed, Some("front-proxy-client")));
        assert!(!front_proxy_allowed(&allowed, Some("kubernetes-admin")));
        assert!(!front_proxy_allowed(&allowed, None));
        assert!(front_proxy_allowed(&[], Some("anyone-signed-by-the-ca")));
    }
}
