//! The kubelet's liveness and startup probes of static pods, as the real prober runs them.
//!
//! - Which probes: a container's `startupProbe` and `livenessProbe`, with `httpGet` or
//!   `tcpSocket`; the defaults of the API (`pkg/apis/core/v1/defaults.go`: period 10 s,
//!   timeout 1 s, failure threshold 3, success threshold 1); an `httpGet` without `host` goes
//!   to the pod's IP, which for a `hostNetwork` static pod is the node's
//!   (`pkg/kubelet/prober/prober.go`, `runProbe`).
//! - One worker per container (`pkg/kubelet/prober/worker.go`): nothing for
//!   `initialDelaySeconds` after the container started, then one probe every `periodSeconds`;
//!   a kubelet that adopts running containers after its own restart first sleeps a random part
//!   of a period. Other probes wait until the startup probe has passed once ("Disable other
//!   probes until container has started"), which then stops. A result counts only after
//!   `failureThreshold` failures in a row (`resultRun`); liveness starts as Success.
//! - An HTTP probe (`pkg/probe/http/http.go`, `request.go`): TLS with `InsecureSkipVerify` and
//!   no client certificate, no keep-alive, `User-Agent: kube-probe/<major>.<minor>`, `Accept:
//!   */*`, the probe's `httpHeaders`; a status from 200 to 399 passes (a 3xx is a warning that
//!   passes), any other fails with "HTTP probe failed with statuscode: N", as does a connection
//!   that fails or a `timeoutSeconds` that runs out. A TCP probe passes when the connection
//!   opens (`pkg/probe/tcp/tcp.go`).
//! - A failed liveness or startup probe has the container killed and restarted, its restart
//!   counting towards the crash-loop back-off (`kuberuntime_manager.go`, `computePodActions`:
//!   "Container %s failed liveness probe, will be restarted").
//!
//! Readiness probes are not run (nothing in the testbed routes by a static pod's readiness);
//! tests/TESTBED.md lists that among the differences.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_yaml_ng::Value;

/// The Kubernetes minor version the testbed's kubelet says it is, in `User-Agent`.
const USER_AGENT: &str = "kube-probe/1.31";

/// Which probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `startupProbe`.
    Startup,
    /// `livenessProbe`.
    Liveness,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Startup => "Startup",
            Kind::Liveness => "Liveness",
        }
    }
}

/// What a probe does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// `httpGet`.
    Http {
        /// `scheme: HTTPS`.
        https: bool,
        /// `host`, else the pod's IP.
        host: String,
        /// `port` (a number: a named port would need the container's ports).
        port: u16,
        /// `path`, with its query.
        path: String,
        /// `httpHeaders`.
        headers: Vec<(String, String)>,
    },
    /// `tcpSocket`.
    Tcp {
        /// `host`, else the pod's IP.
        host: String,
        /// `port`.
        port: u16,
    },
}

/// One probe of a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    /// Startup or liveness.
    pub kind: Kind,
    /// What it does.
    pub action: Action,
    /// `initialDelaySeconds`.
    pub initial_delay: Duration,
    /// `periodSeconds`.
    pub period: Duration,
    /// `timeoutSeconds`.
    pub timeout: Duration,
    /// `failureThreshold`.
    pub failure_threshold: u32,
}

/// The startup and liveness probes of `container` (a manifest's `spec.containers[i]`), whose
/// pod has IP `pod_ip`. An error names what is wrong (the real kubelet's validation refuses
/// such a pod).
pub fn parse(container: &Value, pod_ip: &str) -> Result<Vec<Probe>> {
    let mut out = Vec::new();
    for (key, kind) in [("startupProbe", Kind::Startup), ("livenessProbe", Kind::Liveness)] {
        let Some(p) = container.get(key) else { continue };
        let secs = |field: &str, default: u64| -> Result<Duration> {
            match p.get(field) {
                None => Ok(Duration::from_secs(default)),
                Some(v) => v
                    .as_u64()
                    .map(Duration::from_secs)
                    .with_context(|| format!("{key}.{field} is not a whole number")),
            }
        };
        let host_of = |a: &Value| {
            a.get("host")
                .and_then(Value::as_str)
                .filter(|h| !h.is_empty())
                .unwrap_or(pod_ip)
                .to_string()
        };
        let port_of = |a: &Value, what: &str| -> Result<u16> {
            match a.get("port") {
                Some(v) => v.as_u64().and_then(|p| u16::try_from(p).ok()).with_context(|| {
                    format!("{key}.{what}.port {v:?} is not a port number (named ports are not simulated)")
                }),
                None => bail!("{key}.{what}.port is missing"),
            }
        };
        let action = if let Some(h) = p.get("httpGet") {
            let https = match h.get("scheme").and_then(Value::as_str).unwrap_or("HTTP") {
                "HTTP" => false,
                "HTTPS" => true,
                other => bail!("{key}.httpGet.scheme {other:?} is neither HTTP nor HTTPS"),
            };
            let headers = h
                .get("httpHeaders")
                .and_then(Value::as_sequence)
                .map(|s| {
                    s.iter()
                        .filter_map(|x| {
                            Some((
                                x.get("name")?.as_str()?.to_string(),
                                x.get("value")?.as_str()?.to_string(),
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default();
            Action::Http {
                https,
                host: host_of(h),
                port: port_of(h, "httpGet")?,
                path: h.get("path").and_then(Value::as_str).unwrap_or("/").to_string(),
                headers,
            }
        } else if let Some(t) = p.get("tcpSocket") {
            Action::Tcp { host: host_of(t), port: port_of(t, "tcpSocket")? }
        } else {
            bail!("{key} has neither httpGet nor tcpSocket (exec and grpc are not simulated)");
        };
        let failure_threshold = match p.get("failureThreshold") {
            None => 3,
            Some(v) => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .filter(|n| *n > 0)
                .with_context(|| format!("{key}.failureThreshold must be 1 or more"))?,
        };
        out.push(Probe {
            kind,
            action,
            initial_delay: secs("initialDelaySeconds", 0)?,
            period: secs("periodSeconds", 10)?.max(Duration::from_secs(1)),
            timeout: secs("timeoutSeconds", 1)?.max(Duration::from_secs(1)),
            failure_threshold,
        });
    }
    Ok(out)
}

/// Runs `action` once within `timeout`: Ok when it passes, else why it failed, in the real
/// prober's words.
pub fn run(action: &Action, timeout: Duration) -> std::result::Result<(), String> {
    let deadline = Instant::now() + timeout;
    let (host, port) = match action {
        Action::Http { host, port, .. } | Action::Tcp { host, port } => (host, *port),
    };
    let addr: SocketAddr = (host.as_str(), port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| format!("dial tcp: lookup {host}: no such host"))?;
    let target = match addr {
        SocketAddr::V6(_) => format!("[{host}]:{port}"),
        SocketAddr::V4(_) => format!("{host}:{port}"),
    };
    let tcp = TcpStream::connect_timeout(&addr, timeout)
        .map_err(|e| format!("dial tcp {target}: connect: {e}"))?;
    let Action::Http { https, path, headers, .. } = action else {
        return Ok(());
    };
    let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
    let _ = tcp.set_read_timeout(Some(left));
    let _ = tcp.set_write_timeout(Some(left));
    let mut request = format!(
        "GET {path} HTTP/1.1\r\nHost: {target}\r\nUser-Agent: {USER_AGENT}\r\nAccept: */*\r\n"
    );
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("Connection: close\r\n\r\n");
    let url = format!("{}://{target}{path}", if *https { "https" } else { "http" });
    let answer = if *https {
        let config = super::tls::client_config_skip_verify_anonymous()
            .map_err(|e| format!("Get \"{url}\": {e:#}"))?;
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| format!("Get \"{url}\": {e}"))?;
        let conn = rustls::ClientConnection::new(config, name)
            .map_err(|e| format!("Get \"{url}\": {e}"))?;
        exchange(rustls::StreamOwned::new(conn, tcp), &request)
    } else {
        exchange(tcp, &request)
    };
    let head = answer.map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => format!(
            "Get \"{url}\": context deadline exceeded (Client.Timeout exceeded while awaiting \
             headers)"
        ),
        _ => format!("Get \"{url}\": {e}"),
    })?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("Get \"{url}\": malformed HTTP response {head:?}"))?;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(format!("HTTP probe failed with statuscode: {status}"))
    }
}

/// Writes `request` and reads the answer's status line.
fn exchange<S: Read + Write>(mut stream: S, request: &str) -> std::io::Result<String> {
    stream.write_all(request.as_bytes())?;
    stream.flush()?;
    let mut head = Vec::new();
    let mut buf = [0u8; 512];
    while !head.contains(&b'\n') && head.len() < 4096 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    Ok(text.lines().next().unwrap_or_default().to_string())
}

/// The probe worker of one container: runs until dropped, and says when the container must be
/// killed.
pub struct Worker {
    stop: Arc<AtomicBool>,
    verdict: Arc<Mutex<Option<String>>>,
}

impl Worker {
    /// Starts probing `container` of pod `pod` with `probes`. `since` is when the container
    /// started (its initial delays count from then); `adopted`, that this kubelet found it
    /// running, so the first probe waits a random part of a period. None without probes.
    pub fn start(
        pod: &str,
        container: &str,
        probes: Vec<Probe>,
        since: Instant,
        adopted: bool,
    ) -> Option<Worker> {
        if probes.is_empty() {
            return None;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let verdict = Arc::new(Mutex::new(None));
        let (s, v) = (stop.clone(), verdict.clone());
        let name = format!("probe-{pod}");
        let (pod, container) = (pod.to_string(), container.to_string());
        let spawned = std::thread::Builder::new().name(name.clone()).spawn(move || {
            if let Some(why) = work(&pod, &container, &probes, since, adopted, &s)
                && let Ok(mut slot) = v.lock()
            {
                *slot = Some(why);
            }
        });
        if let Err(e) = spawned {
            eprintln!("kubelet: no {name} worker: {e}");
        }
        Some(Worker { stop, verdict })
    }

    /// Why the container must be killed, once a probe has failed enough times in a row.
    pub fn failed(&self) -> Option<String> {
        self.verdict.lock().ok().and_then(|v| v.clone())
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Sleeps until `until`, or returns false as soon as `stop` is set.
fn sleep_until(until: Instant, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = Instant::now();
        if now >= until {
            return true;
        }
        std::thread::sleep((until - now).min(Duration::from_millis(100)));
    }
}

/// The worker's loop: the startup probe until it passes, then the liveness probe. Some(why)
/// when one failed its threshold; None when stopped.
fn work(
    pod: &str,
    container: &str,
    probes: &[Probe],
    since: Instant,
    adopted: bool,
    stop: &AtomicBool,
) -> Option<String> {
    let mut first = true;
    for kind in [Kind::Startup, Kind::Liveness] {
        let Some(p) = probes.iter().find(|p| p.kind == kind) else { continue };
        let mut next = since + p.initial_delay;
        if adopted && first {
            // A random part of the period, as worker.go sleeps after a kubelet restart.
            let nanos = u64::from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos()),
            );
            let jitter = p.period.mul_f64((nanos % 1000) as f64 / 1000.0);
            next = next.max(Instant::now() + jitter);
        }
        first = false;
        let mut failures = 0;
        loop {
            if !sleep_until(next, stop) {
                return None;
            }
            next = Instant::now() + p.period;
            match run(&p.action, p.timeout) {
                Ok(()) if kind == Kind::Startup => break,
                Ok(()) => failures = 0,
                Err(why) => {
                    failures += 1;
                    eprintln!(
                        "kubelet: {} probe for \"{pod}\" container {container} failed \
                         ({failures}/{}): {why}",
                        kind.name(),
                        p.failure_threshold
                    );
                    if failures >= p.failure_threshold {
                        return Some(format!(
                            "Container {container} failed {} probe, will be restarted ({why})",
                            kind.name().to_lowercase()
                        ));
                    }
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // a panic is how a test fails
    use super::*;

    fn container(yaml: &str) -> Value {
        serde_yaml_ng::from_str(yaml).unwrap()
    }

    #[test]
    fn probes_read_as_kubeadm_writes_them_with_the_apis_defaults() {
        let c = container(
            "livenessProbe:\n  failureThreshold: 8\n  httpGet:\n    host: 127.0.0.1\n    path: \
             /healthz\n    port: 10257\n    scheme: HTTPS\n  initialDelaySeconds: 10\n  \
             periodSeconds: 10\n  timeoutSeconds: 15\nstartupProbe:\n  tcpSocket:\n    port: \
             6443\n",
        );
        let probes = parse(&c, "198.18.0.11").unwrap();
        assert_eq!(probes.len(), 2);
        assert_eq!(probes[0].kind, Kind::Startup, "the startup probe runs first");
        assert_eq!(probes[0].action, Action::Tcp { host: "198.18.0.11".into(), port: 6443 });
        assert_eq!(probes[0].failure_threshold, 3);
        assert_eq!(probes[0].period, Duration::from_secs(10));
        assert_eq!(probes[0].timeout, Duration::from_secs(1));
        assert_eq!(probes[1].failure_threshold, 8);
        assert_eq!(probes[1].initial_delay, Duration::from_secs(10));
        assert!(matches!(&probes[1].action, Action::Http { https: true, port: 10257, .. }));
        let named = container("livenessProbe:\n  httpGet:\n    port: https\n");
        assert!(parse(&named, "x").unwrap_err().to_string().contains("named ports"));
        let exec = container("livenessProbe:\n  exec:\n    command: [true]\n");
        assert!(parse(&exec, "x").is_err());
    }

    /// An HTTP server on the loopback answering every request with `status`.
    fn server(status: u16) -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let mut s = s;
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let _ = write!(s, "HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n");
            }
        });
        port
    }

    #[test]
    fn statuses_from_200_to_399_pass_and_the_rest_fail_as_the_real_prober_says() {
        let http = |port| Action::Http {
            https: false,
            host: "127.0.0.1".into(),
            port,
            path: "/livez".into(),
            headers: vec![],
        };
        assert_eq!(run(&http(server(200)), Duration::from_secs(2)), Ok(()));
        assert_eq!(run(&http(server(302)), Duration::from_secs(2)), Ok(()));
        assert_eq!(
            run(&http(server(401)), Duration::from_secs(2)),
            Err("HTTP probe failed with statuscode: 401".into())
        );
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let tcp = Action::Tcp { host: "127.0.0.1".into(), port: closed.port() };
        assert!(run(&tcp, Duration::from_secs(1)).unwrap_err().contains("connect"));
        assert_eq!(
            run(
                &Action::Tcp { host: "127.0.0.1".into(), port: server(500) },
                Duration::from_secs(1)
            ),
            Ok(()),
            "a TCP probe passes on a connection, whatever the server would answer"
        );
    }

    #[test]
    fn a_liveness_probe_failing_its_threshold_asks_for_a_kill_and_a_passing_one_never_does() {
        let probe = |port, threshold| Probe {
            kind: Kind::Liveness,
            action: Action::Http {
                https: false,
                host: "127.0.0.1".into(),
                port,
                path: "/livez".into(),
                headers: vec![],
            },
            initial_delay: Duration::ZERO,
            period: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            failure_threshold: threshold,
        };
        let t0 = Instant::now();
        let failing = Worker::start("p", "c", vec![probe(server(401), 2)], t0, false).unwrap();
        let healthy = Worker::start("q", "c", vec![probe(server(200), 1)], t0, false).unwrap();
        std::thread::sleep(Duration::from_millis(1000));
        assert_eq!(failing.failed(), None, "one failure is below the threshold of two");
        let why = loop {
            if let Some(why) = failing.failed() {
                break why;
            }
            assert!(t0.elapsed() < Duration::from_secs(20), "no verdict after two periods");
            std::thread::sleep(Duration::from_millis(50));
        };
        assert!(t0.elapsed() >= Duration::from_secs(2), "the second failure is a period later");
        assert!(why.contains("failed liveness probe, will be restarted"), "{why}");
        assert!(why.contains("statuscode: 401"), "{why}");
        assert_eq!(healthy.failed(), None);
    }
}
