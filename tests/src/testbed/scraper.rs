//! metrics-server's scraper: every node's kubelet asked for `/metrics/resource` once per
//! `--metric-resolution`, the points kept as its storage keeps them (kubernetes-sigs/metrics-server).
//!
//! - The kubelet client is a copy of the pod's in-cluster config
//!   (`cmd/metrics-server/app/options/kubelet_client.go` `Config`): the service account's
//!   token, and its `ca.crt` read once at start (client-go's `loadTLSFiles` reads a `CAFile`
//!   when the transport is made; releases before client-go 1.36 never again), so a kubelet
//!   serving a certificate of a CA the pod did not start with is refused in the handshake
//!   until the pod restarts. `--kubelet-insecure-tls` verifies nothing. The name verified is
//!   the address connected to (the URL's host).
//! - The address is the node's first one of `--kubelet-preferred-address-types`, the port its
//!   `status.daemonEndpoints.kubeletEndpoint.port` with `--kubelet-use-node-status-port`, else
//!   `--kubelet-port` (10250) (`pkg/scraper/client/resource/client.go`,
//!   `pkg/utils/address_resolver.go`).
//! - A node whose scrape fails is left out of that round; the store then forgets it, and it
//!   is served again after two good rounds (`pkg/storage/node.go` `Store`, `pkg/storage/types.go`
//!   `resourceUsage`: CPU is a rate between two points with increasing timestamps).
//!
//! Where this differs: nodes are listed once per round instead of watched by an informer;
//! containers and pods are not scraped; the token file is re-read every round (client-go
//! every minute); the scrape timeout is 90 % of the resolution, as the older options.go sets it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use rustls::pki_types::ServerName;
use serde_json::{Value, json};

use super::client::Client;
use super::monitor::{self, Outcome};
use super::tls;

/// The scraper's flags, as metrics-server takes them.
#[derive(Clone, Debug, PartialEq)]
pub struct Options {
    /// `--metric-resolution` (60 s by default, at least 10 s).
    pub resolution: Duration,
    /// `--kubelet-insecure-tls`.
    pub insecure: bool,
    /// `--kubelet-preferred-address-types`.
    pub address_types: Vec<String>,
    /// `--kubelet-use-node-status-port`.
    pub node_status_port: bool,
    /// `--kubelet-port`.
    pub port: u16,
}

impl Options {
    /// Parses the flags the testbed's manifest passes; any other is refused, as pflag does.
    pub fn parse(args: &[String]) -> Result<Options> {
        let mut o = Options {
            resolution: Duration::from_secs(60),
            insecure: false,
            // `DefaultAddressTypePriority`.
            address_types: ["Hostname", "InternalDNS", "InternalIP", "ExternalDNS", "ExternalIP"]
                .map(String::from)
                .to_vec(),
            node_status_port: false,
            port: 10250,
        };
        for a in args {
            let (flag, value) = match a.split_once('=') {
                Some((f, v)) => (f, Some(v)),
                None => (a.as_str(), None),
            };
            let value = || value.with_context(|| format!("flag needs an argument: {flag}"));
            match flag {
                "--metric-resolution" => {
                    let d = super::csr_controllers::go_duration(value()?)?;
                    o.resolution = Duration::try_from(d).context("--metric-resolution")?;
                    if o.resolution < Duration::from_secs(10) {
                        bail!(
                            "Metric-resolution should be a time duration at least 10s, but value {:?} provided",
                            value()?
                        );
                    }
                }
                "--kubelet-insecure-tls" => o.insecure = true,
                "--kubelet-use-node-status-port" => o.node_status_port = true,
                "--kubelet-preferred-address-types" => {
                    o.address_types = value()?.split(',').map(String::from).collect();
                }
                "--kubelet-port" => o.port = value()?.parse().context("--kubelet-port")?,
                other => bail!("unknown flag: {other}"),
            }
        }
        Ok(o)
    }
}

/// The kubelet client: its TLS config (with the CA as read at start) and token file.
pub struct Kubelets {
    tls: Arc<rustls::ClientConfig>,
    token_file: std::path::PathBuf,
    options: Options,
    me: String,
}

impl Kubelets {
    /// The client for `options`, from the service-account files in `sa_dir` (ca.crt read now).
    pub fn new(options: &Options, sa_dir: &Path) -> Result<Kubelets> {
        let tls = if options.insecure {
            tls::client_config_skip_verify_anonymous()?
        } else {
            let ca = sa_dir.join("ca.crt");
            let pem = std::fs::read(&ca).with_context(|| format!("reading {}", ca.display()))?;
            tls::client_config(&pem, &ca.display().to_string(), None)?
        };
        Ok(Kubelets {
            tls,
            token_file: sa_dir.join("token"),
            options: options.clone(),
            me: super::pods::pod_identity("metrics-server"),
        })
    }

    /// The address and port of `node`'s kubelet.
    fn endpoint(&self, node: &Value) -> Result<SocketAddr> {
        let addresses = node["status"]["addresses"].as_array().cloned().unwrap_or_default();
        let address = self
            .options
            .address_types
            .iter()
            .find_map(|t| addresses.iter().find(|a| a["type"] == t.as_str()))
            .and_then(|a| a["address"].as_str())
            .context("no address of a preferred type")?;
        let status_port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|p| *p != 0);
        let port = match status_port {
            Some(p) if self.options.node_status_port => p,
            _ => self.options.port,
        };
        let ip = address
            .parse()
            .with_context(|| format!("address {address}: the testbed has no DNS for node names"))?;
        Ok(SocketAddr::new(ip, port))
    }

    /// One scrape of `node`: its point, or why there is none.
    async fn scrape(&self, node: &Value, timeout: Duration) -> Result<Point> {
        let name = node["metadata"]["name"].as_str().unwrap_or_default();
        let addr = self.endpoint(node)?;
        let url = format!("https://{addr}/metrics/resource");
        let server = format!("kubelet@{name}");
        let purpose = "metrics-server->kubelet";
        let requested = jiff::Timestamp::now();
        let name_ip = ServerName::IpAddress(addr.ip().into());
        let stream = match tls::connect(addr, name_ip, self.tls.clone(), timeout).await {
            Ok(s) => s,
            Err((outcome, msg)) => {
                monitor::record(&self.me, &server, purpose, outcome);
                bail!("Get \"{url}\": {msg}");
            }
        };
        let token = std::fs::read_to_string(&self.token_file)
            .with_context(|| format!("reading {}", self.token_file.display()))?;
        let answer = async {
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .context("HTTP handshake")?;
            tokio::spawn(conn);
            let req = hyper::Request::builder()
                .method("GET")
                .uri("/metrics/resource")
                .header("host", addr.to_string())
                .header("authorization", format!("Bearer {}", token.trim()))
                .body(Full::new(Bytes::new()))
                .context("building the request")?;
            let resp = tokio::time::timeout(timeout, sender.send_request(req))
                .await
                .map_err(|_| anyhow::anyhow!("Get \"{url}\": context deadline exceeded"))??;
            let status = resp.status();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>((status, body))
        }
        .await;
        let outcome = match &answer {
            Ok((s, _)) if s.as_u16() == 401 => Outcome::Unauthorized,
            _ => Outcome::Ok,
        };
        monitor::record(&self.me, &server, purpose, outcome);
        let (status, body) = answer?;
        if status != hyper::StatusCode::OK {
            bail!("request failed, status: {:?}", status.to_string());
        }
        decode(&String::from_utf8_lossy(&body), requested)
    }
}

/// A node's point: when, its cumulative CPU in core-seconds, its working set in bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Point {
    /// The sample's time.
    pub at: jiff::Timestamp,
    /// `node_cpu_usage_seconds_total`.
    pub cpu_seconds: f64,
    /// `node_memory_working_set_bytes`.
    pub memory_bytes: f64,
}

/// The node point of a `/metrics/resource` body (`pkg/scraper/client/resource/decode.go`): both
/// series present and non-zero; a sample without a timestamp takes the request's time.
pub fn decode(text: &str, requested: jiff::Timestamp) -> Result<Point> {
    let series = |name: &str| -> Result<Option<(f64, jiff::Timestamp)>> {
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(name) else { continue };
            if !(rest.starts_with(' ') || rest.starts_with('{')) {
                continue;
            }
            let rest = rest.split_once('}').map_or(rest, |(_, r)| r);
            let mut f = rest.split_whitespace();
            let value: f64 = f.next().context("a sample without a value")?.parse()?;
            let at = match f.next() {
                Some(ms) => jiff::Timestamp::from_millisecond(ms.parse()?)?,
                None => requested,
            };
            return Ok(Some((value, at)));
        }
        Ok(None)
    };
    let cpu = series("node_cpu_usage_seconds_total")?;
    let memory = series("node_memory_working_set_bytes")?;
    match (cpu, memory) {
        (Some((c, at)), Some((m, _))) if c != 0.0 && m != 0.0 => {
            Ok(Point { at, cpu_seconds: c, memory_bytes: m })
        }
        _ => bail!("Failed getting complete node metric"),
    }
}

/// The last and the previous point of every node, as the storage keeps them.
#[derive(Default)]
pub struct Store {
    points: Mutex<(HashMap<String, Point>, HashMap<String, Point>)>,
}

impl Store {
    /// Keeps a round's points (`node.go` `Store`): a node not in `batch` is forgotten; the
    /// stored last point becomes the previous one when the new one is later, else an earlier
    /// previous point is kept.
    pub fn store(&self, batch: HashMap<String, Point>) {
        let mut p = self.points.lock().unwrap_or_else(|e| e.into_inner());
        let (last, prev) = &*p;
        let mut new_prev = HashMap::new();
        for (node, point) in &batch {
            if let Some(l) = last.get(node) {
                if point.at > l.at {
                    new_prev.insert(node.clone(), *l);
                } else if let Some(old) = prev.get(node).filter(|old| old.at < point.at) {
                    new_prev.insert(node.clone(), *old);
                }
            }
        }
        *p = (batch, new_prev);
    }

    /// Some node has two points (`metric-storage-ready`).
    pub fn ready(&self) -> bool {
        !self.points.lock().unwrap_or_else(|e| e.into_inner()).1.is_empty()
    }

    /// The NodeMetrics of every node with two points, by name.
    pub fn node_metrics(&self) -> Vec<Value> {
        let p = self.points.lock().unwrap_or_else(|e| e.into_inner());
        let (last, prev) = &*p;
        let mut names: Vec<&String> = last.keys().filter(|n| prev.contains_key(*n)).collect();
        names.sort();
        names
            .into_iter()
            .filter_map(|n| {
                let (l, b) = (last[n], prev[n]);
                let window = l.at.duration_since(b.at).as_secs_f64();
                let rate = (l.cpu_seconds - b.cpu_seconds) / window;
                // "unexpected decrease in cumulative CPU usage value": skipped.
                (rate >= 0.0 && window > 0.0).then(|| {
                    json!({
                        "metadata": {"name": n, "creationTimestamp": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()},
                        "timestamp": l.at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
                        "window": format!("{}s", window.round()),
                        "usage": {"cpu": format!("{}n", (rate * 1e9).round() as u64), "memory": binary_si(l.memory_bytes as u64)},
                    })
                })
            })
            .collect()
    }
}

/// A byte count as a quantity in its canonical binary-SI form: the largest of Ki, Mi, Gi that
/// divides it, else the plain number.
fn binary_si(bytes: u64) -> String {
    for (suffix, unit) in [("Gi", 1u64 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10)] {
        if bytes >= unit && bytes.is_multiple_of(unit) {
            return format!("{}{suffix}", bytes / unit);
        }
    }
    bytes.to_string()
}

/// Scrapes every node once per `resolution`, forever, each round storing what it got.
pub async fn run(api: Client, kubelets: Arc<Kubelets>, store: Arc<Store>, resolution: Duration) {
    let timeout = resolution.mul_f64(0.9);
    let mut tick = tokio::time::interval(resolution);
    loop {
        tick.tick().await;
        let nodes = match api.list("/api/v1/nodes").await {
            Ok(n) => n,
            Err(e) => {
                eprintln!("{} metrics-server: listing nodes: {e:#}", jiff::Timestamp::now());
                continue;
            }
        };
        let mut round = tokio::task::JoinSet::new();
        for node in nodes {
            let kubelets = kubelets.clone();
            round.spawn(async move {
                let name = node["metadata"]["name"].as_str().unwrap_or_default().to_string();
                (name, kubelets.scrape(&node, timeout).await)
            });
        }
        let mut batch = HashMap::new();
        while let Some(done) = round.join_next().await {
            let Ok((node, result)) = done else { continue };
            match result {
                Ok(point) => {
                    batch.insert(node, point);
                }
                Err(e) => eprintln!(
                    "{} metrics-server: \"Failed to scrape node\" err=\"{e:#}\" node=\"{node}\"",
                    jiff::Timestamp::now()
                ),
            }
        }
        store.store(batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(s).unwrap()
    }

    #[test]
    fn the_flags_of_the_manifest_are_read_and_others_refused() {
        let args: Vec<String> = [
            "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname",
            "--kubelet-use-node-status-port",
            "--metric-resolution=15s",
        ]
        .map(String::from)
        .to_vec();
        let o = Options::parse(&args).unwrap();
        assert_eq!(o.resolution, Duration::from_secs(15));
        assert!(o.node_status_port && !o.insecure);
        assert_eq!(o.address_types[0], "InternalIP");
        assert!(Options::parse(&["--metric-resolution=5s".into()]).is_err());
        assert!(Options::parse(&["--kubelet-insecure".into()]).is_err());
        assert_eq!(Options::parse(&[]).unwrap().resolution, Duration::from_secs(60));
    }

    #[test]
    fn a_node_point_needs_both_series() {
        let body = "node_cpu_usage_seconds_total 357.35491 1633253809720\n\
                    node_memory_working_set_bytes 1.616273408e+09 1633253809720\n";
        let p = decode(body, at(0)).unwrap();
        assert_eq!(p.at.as_millisecond(), 1633253809720);
        assert_eq!(p.memory_bytes, 1.616273408e9);
        assert!(decode("node_cpu_usage_seconds_total 3\n", at(0)).is_err());
        let untimed = "node_cpu_usage_seconds_total 3\nnode_memory_working_set_bytes 4\n";
        assert_eq!(decode(untimed, at(7)).unwrap().at, at(7));
        let zero = "node_cpu_usage_seconds_total 0\nnode_memory_working_set_bytes 4\n";
        assert!(decode(zero, at(7)).is_err());
    }

    #[test]
    fn a_node_is_served_after_two_rounds_and_forgotten_after_a_failed_one() {
        let s = Store::default();
        let point = |t: i64, cpu: f64| Point { at: at(t), cpu_seconds: cpu, memory_bytes: 2048.0 };
        s.store(HashMap::from([("w-1".to_string(), point(100, 10.0))]));
        assert!(!s.ready() && s.node_metrics().is_empty(), "one point is no rate");
        s.store(HashMap::from([("w-1".to_string(), point(115, 13.0))]));
        let m = s.node_metrics();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0]["usage"]["cpu"], "200000000n");
        assert_eq!(m[0]["usage"]["memory"], "2Ki");
        assert_eq!(m[0]["window"], "15s");
        s.store(HashMap::new());
        assert!(s.node_metrics().is_empty() && !s.ready(), "a failed round forgets the node");
    }
}
