//! A small Kubernetes API client for the simulated components: kubeconfig or in-cluster credentials, JSON objects, one monitored connection per request.
//!
//! Credentials and CA are read once when the client is built, as a Go client reads them: a
//! rotation that changes the files on disk reaches a component only when it restarts. The one
//! exception is an in-cluster client's token file, re-read about once a minute as client-go's
//! `BearerTokenFile` is.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use rustls::pki_types::ServerName;
use serde_json::Value;

use super::monitor::{self, Outcome};
use super::subnet::{self, Subnet};
use super::tls;

/// Credentials and endpoint read from a kubeconfig or from a pod's token and ca.crt.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// `https://host:port` of the apiserver (or the load balancer).
    pub server: String,
    /// PEM of the CA bundle trusted for the server's certificate.
    pub ca_pem: Vec<u8>,
    /// PEM of the client certificate and key, when authenticating by certificate.
    pub client_cert: Option<(Vec<u8>, Vec<u8>)>,
    /// A bearer token, when authenticating by token.
    pub token: Option<String>,
    /// The file the token was read from, when it is to be re-read (an in-cluster client).
    pub token_file: Option<PathBuf>,
}

fn b64(s: &str, what: &str) -> Result<Vec<u8>> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .with_context(|| format!("{what} is not valid base64"))
}

/// Reads `field-data` (base64) or `field` (a path, relative to the kubeconfig's directory).
fn data_or_file(map: &Value, field: &str, base: &Path, what: &str) -> Result<Option<Vec<u8>>> {
    if let Some(d) = map.get(format!("{field}-data")).and_then(Value::as_str) {
        return b64(d, &format!("{what}: {field}-data")).map(Some);
    }
    if let Some(p) = map.get(field).and_then(Value::as_str) {
        let path = base.join(p);
        return std::fs::read(&path)
            .with_context(|| format!("{what}: reading {field} {}", path.display()))
            .map(Some);
    }
    Ok(None)
}

impl Credentials {
    /// Parses a kubeconfig as kubeadm writes it: the current context's cluster and user.
    pub fn from_kubeconfig(path: &Path) -> Result<Credentials> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading kubeconfig {}", path.display()))?;
        Self::parse_kubeconfig(
            &text,
            path.parent().unwrap_or(Path::new("/")),
            &path.display().to_string(),
        )
    }

    /// Parses kubeconfig text; relative file paths are taken from `base`; `what` names it in errors.
    pub fn parse_kubeconfig(text: &str, base: &Path, what: &str) -> Result<Credentials> {
        let doc: Value =
            serde_yaml_ng::from_str(text).with_context(|| format!("{what} is not YAML"))?;
        let named = |list: &str, name: &str, inner: &str| -> Result<Value> {
            doc.get(list)
                .and_then(Value::as_array)
                .and_then(|l| {
                    l.iter().find(|e| e.get("name").and_then(Value::as_str) == Some(name))
                })
                .and_then(|e| e.get(inner).cloned())
                .ok_or_else(|| anyhow!("{what}: no {list} entry named {name:?}"))
        };
        let current = doc
            .get("current-context")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("{what}: no current-context"))?;
        let ctx = named("contexts", current, "context")?;
        let cluster_name = ctx
            .get("cluster")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("{what}: context without cluster"))?;
        let user_name = ctx
            .get("user")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("{what}: context without user"))?;
        let cluster = named("clusters", cluster_name, "cluster")?;
        let user = named("users", user_name, "user")?;
        let server = cluster
            .get("server")
            .and_then(Value::as_str)
            .ok_or_else(|| anyhow!("{what}: cluster {cluster_name} has no server"))?
            .to_string();
        let ca_pem =
            data_or_file(&cluster, "certificate-authority", base, what)?.ok_or_else(|| {
                anyhow!("{what}: cluster {cluster_name} has no certificate-authority")
            })?;
        let cert = data_or_file(&user, "client-certificate", base, what)?;
        let key = data_or_file(&user, "client-key", base, what)?;
        let client_cert = match (cert, key) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            _ => bail!(
                "{what}: user {user_name} has a client certificate without its key or the reverse"
            ),
        };
        let token = user.get("token").and_then(Value::as_str).map(str::to_string);
        Ok(Credentials { server, ca_pem, client_cert, token, token_file: None })
    }

    /// A pod's credentials, as client-go's `rest.InClusterConfig` makes them: its ca.crt read
    /// now, once; its token read now and again by the client about once a minute
    /// (`BearerTokenFile`); and the server URL.
    pub fn in_cluster(token_file: &Path, ca_file: &Path, server: &str) -> Result<Credentials> {
        let token = read_token(token_file)?;
        let ca_pem = std::fs::read(ca_file)
            .with_context(|| format!("reading ca.crt {}", ca_file.display()))?;
        Ok(Credentials {
            server: server.to_string(),
            ca_pem,
            client_cert: None,
            token: Some(token),
            token_file: Some(token_file.to_path_buf()),
        })
    }
}

/// A token file's content, trimmed; an empty file is an error ("read empty token from file",
/// `staging/src/k8s.io/client-go/transport/token_source.go`, `fileTokenSource.Token`).
fn read_token(path: &Path) -> Result<String> {
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("reading token {}", path.display()))?
        .trim()
        .to_string();
    if token.is_empty() {
        bail!("read empty token from file {}", path.display());
    }
    Ok(token)
}

/// How long a token read from a file is used before the file is read again: client-go's
/// `NewCachedFileTokenSource` gives it a period of one minute and renews it 10 seconds before
/// (`token_source.go`, `period: time.Minute`, `leeway: 10 * time.Second`).
const TOKEN_FILE_REREAD: Duration = Duration::from_secs(60 - 10);

/// A token file and the token last read from it, as client-go's `cachingTokenSource` keeps it.
struct TokenFile {
    path: PathBuf,
    cached: Mutex<(String, Instant)>,
}

impl TokenFile {
    /// The cached token, re-read first when it is older than [`TOKEN_FILE_REREAD`]; a failed
    /// read keeps the old one ("Unable to rotate token").
    fn token(&self) -> String {
        let mut cached = self.cached.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if cached.1.elapsed() >= TOKEN_FILE_REREAD {
            match read_token(&self.path) {
                Ok(t) => *cached = (t, Instant::now()),
                Err(e) => {
                    eprintln!("{} Unable to rotate token: {e:#}", jiff::Timestamp::now());
                    cached.1 = Instant::now();
                }
            }
        }
        cached.0.clone()
    }
}

/// The monitor's name for the apiserver at `addr` in this process's testbed (its block in
/// KUBECA_TESTBED_SUBNET, see [`Subnet::apiserver_name`]): "lb" or `kube-apiserver@cp-<i>`.
/// A component run by hand outside a testbed records nothing and names the server by address.
pub fn apiserver_name(addr: &SocketAddr) -> Result<String> {
    if std::env::var_os(subnet::ENV).is_none() {
        return Ok(format!("kube-apiserver@{}", addr.ip()));
    }
    Ok(Subnet::from_env()?.apiserver_name(addr))
}

/// An API client; every request opens a new connection and records it in the monitor.
#[derive(Clone)]
pub struct Client {
    addr: SocketAddr,
    server_name: ServerName<'static>,
    tls: Arc<rustls::ClientConfig>,
    token: Option<String>,
    /// Where the token is re-read from, when it is.
    token_file: Option<Arc<TokenFile>>,
    /// The monitor's client name, e.g. `kube-scheduler@cp-1`.
    pub me: String,
    /// The monitor's purpose, e.g. `scheduler->apiserver`.
    pub purpose: String,
    host: String,
    /// The monitor's name of the server, e.g. `lb`.
    server: String,
}

/// An API answer: status code and JSON body (Null when the body is empty or not JSON).
#[derive(Debug)]
pub struct Response {
    /// The HTTP status.
    pub status: u16,
    /// The parsed body.
    pub body: Value,
}

impl Client {
    /// A client for `creds`, recording its connections as `me` with `purpose`.
    pub fn new(creds: &Credentials, me: &str, purpose: &str) -> Result<Client> {
        let hostport = creds
            .server
            .strip_prefix("https://")
            .ok_or_else(|| anyhow!("server {} is not https://", creds.server))?
            .trim_end_matches('/');
        let addr: SocketAddr = hostport.parse().with_context(|| {
            format!("server {}: the testbed uses IP:port addresses", creds.server)
        })?;
        let identity = match &creds.client_cert {
            Some((c, k)) => Some((
                tls::certs_from_pem(c, "client certificate")?,
                tls::key_from_pem(k, "client key")?,
            )),
            None => None,
        };
        let tls = tls::client_config(&creds.ca_pem, "certificate-authority", identity)?;
        Ok(Client {
            addr,
            server_name: ServerName::IpAddress(addr.ip().into()),
            tls,
            token: creds.token.clone(),
            token_file: creds.token_file.as_ref().map(|path| {
                Arc::new(TokenFile {
                    path: path.clone(),
                    cached: Mutex::new((creds.token.clone().unwrap_or_default(), Instant::now())),
                })
            }),
            me: me.to_string(),
            purpose: purpose.to_string(),
            host: hostport.to_string(),
            server: apiserver_name(&addr)?,
        })
    }

    /// Sends one request on a new connection; TLS failures are recorded and logged Go-style.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Response> {
        let server = self.server.as_str();
        let stream = match tls::connect(
            self.addr,
            self.server_name.clone(),
            self.tls.clone(),
            Duration::from_secs(5),
        )
        .await
        {
            Ok(s) => s,
            Err((outcome, msg)) => {
                monitor::record(&self.me, server, &self.purpose, outcome);
                bail!("Get \"https://{}{}\": {msg}", self.host, path);
            }
        };
        // The attempt is recorded once its answer is known: a 401 after the handshake is how a
        // Go server refuses a client certificate (or token), a trust failure of the edge; a
        // request that fails later (the server went away) had its handshake trusted.
        let answer = async {
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .with_context(|| format!("HTTP handshake with {}", self.host))?;
            tokio::spawn(conn);
            let bytes = body.map(|b| b.to_string()).unwrap_or_default();
            let mut req = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header("host", &self.host)
                .header("accept", "application/json");
            if body.is_some() {
                req = req.header("content-type", content_type.unwrap_or("application/json"));
            }
            let token = match &self.token_file {
                Some(f) => Some(f.token()),
                None => self.token.clone(),
            };
            if let Some(t) = token {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            let req = req.body(Full::new(Bytes::from(bytes))).context("building the request")?;
            let resp = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req))
                .await
                .map_err(|_| anyhow!("{method} {path} on {}: no answer in 10 s", self.host))?
                .with_context(|| format!("{method} {path} on {}", self.host))?;
            let status = resp.status().as_u16();
            let raw = resp
                .into_body()
                .collect()
                .await
                .with_context(|| format!("reading {path}"))?
                .to_bytes();
            Ok::<_, anyhow::Error>((status, raw))
        }
        .await;
        let outcome = match &answer {
            Ok((401, _)) => Outcome::Unauthorized,
            _ => Outcome::Ok,
        };
        monitor::record(&self.me, server, &self.purpose, outcome);
        let (status, raw) = answer?;
        let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
        Ok(Response { status, body })
    }

    async fn ok(
        &self,
        method: &str,
        path: &str,
        ct: Option<&str>,
        body: Option<&Value>,
    ) -> Result<Value> {
        let r = self.request(method, path, ct, body).await?;
        if !(200..300).contains(&r.status) {
            bail!(
                "{method} {path}: HTTP {}: {}",
                r.status,
                r.body.get("message").and_then(Value::as_str).unwrap_or("")
            );
        }
        Ok(r.body)
    }

    /// GET an object; None when it does not exist.
    pub async fn get(&self, path: &str) -> Result<Option<Value>> {
        let r = self.request("GET", path, None, None).await?;
        match r.status {
            404 => Ok(None),
            200..=299 => Ok(Some(r.body)),
            s => bail!("GET {path}: HTTP {s}"),
        }
    }

    /// GET a list's items.
    pub async fn list(&self, path: &str) -> Result<Vec<Value>> {
        let v = self.ok("GET", path, None, None).await?;
        Ok(v.get("items").and_then(Value::as_array).cloned().unwrap_or_default())
    }

    /// POST a new object to a collection.
    pub async fn create(&self, collection: &str, obj: &Value) -> Result<Value> {
        self.ok("POST", collection, None, Some(obj)).await
    }

    /// PUT an object (its resourceVersion guards against concurrent writers).
    pub async fn update(&self, path: &str, obj: &Value) -> Result<Value> {
        self.ok("PUT", path, None, Some(obj)).await
    }

    /// JSON merge patch of an object.
    pub async fn patch(&self, path: &str, patch: &Value) -> Result<Value> {
        self.ok("PATCH", path, Some("application/merge-patch+json"), Some(patch)).await
    }

    /// DELETE an object; absent is fine.
    pub async fn delete(&self, path: &str) -> Result<()> {
        let r = self.request("DELETE", path, None, None).await?;
        if r.status == 404 || (200..300).contains(&r.status) {
            Ok(())
        } else {
            bail!("DELETE {path}: HTTP {}", r.status)
        }
    }
}

/// The default location of a pod's service-account files, as a projected volume mounts them.
pub fn service_account_dir() -> PathBuf {
    PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount")
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBECONFIG: &str = r#"
apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: Q0FQRU0=
    server: https://198.18.0.10:6443
  name: kubernetes
contexts:
- context:
    cluster: kubernetes
    user: system:node:w-1
  name: system:node:w-1@kubernetes
current-context: system:node:w-1@kubernetes
users:
- name: system:node:w-1
  user:
    client-certificate: pki/kubelet-client-current.pem
    client-key: pki/kubelet-client-current.pem
"#;

    #[test]
    fn kubeconfig_with_data_and_relative_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("pki")).unwrap();
        std::fs::write(dir.path().join("pki/kubelet-client-current.pem"), b"PAIR").unwrap();
        let c = Credentials::parse_kubeconfig(KUBECONFIG, dir.path(), "kubelet.conf").unwrap();
        assert_eq!(c.server, "https://198.18.0.10:6443");
        assert_eq!(c.ca_pem, b"CAPEM");
        assert_eq!(c.client_cert, Some((b"PAIR".to_vec(), b"PAIR".to_vec())));
        assert_eq!(c.token, None);
    }

    #[test]
    fn an_in_cluster_token_is_read_again_after_its_period_and_ca_crt_never() {
        let dir = tempfile::tempdir().unwrap();
        let (token, ca) = (dir.path().join("token"), dir.path().join("ca.crt"));
        std::fs::write(&token, "first\n").unwrap();
        std::fs::write(&ca, "CA").unwrap();
        let creds = Credentials::in_cluster(&token, &ca, "https://198.18.0.10:6443").unwrap();
        assert_eq!(creds.token.as_deref(), Some("first"));
        let file =
            TokenFile { path: token.clone(), cached: Mutex::new(("first".into(), Instant::now())) };
        std::fs::write(&token, "second").unwrap();
        assert_eq!(file.token(), "first");
        file.cached.lock().unwrap().1 = Instant::now() - TOKEN_FILE_REREAD;
        assert_eq!(file.token(), "second");
        // An empty file keeps the last token.
        std::fs::write(&token, "").unwrap();
        file.cached.lock().unwrap().1 = Instant::now() - TOKEN_FILE_REREAD;
        assert_eq!(file.token(), "second");
        std::fs::write(&token, "").unwrap();
        assert!(Credentials::in_cluster(&token, &ca, "https://198.18.0.10:6443").is_err());
    }

    #[test]
    fn a_missing_user_is_named() {
        let text = KUBECONFIG.replace("- name: system:node:w-1", "- name: someone-else");
        let err = Credentials::parse_kubeconfig(&text, Path::new("/"), "kubelet.conf").unwrap_err();
        assert!(err.to_string().contains("system:node:w-1"), "{err}");
    }

    #[test]
    fn apiserver_names_for_the_monitor() {
        // The default block, as the testbed's processes are told it.
        let name = |a: &str| Subnet::default().apiserver_name(&a.parse().unwrap());
        assert_eq!(name("198.18.0.10:6443"), "lb");
        assert_eq!(name("198.18.0.12:6443"), "kube-apiserver@cp-2");
    }
}
