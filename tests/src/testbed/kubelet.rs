//! The simulated kubelet: runs static pods from /etc/kubernetes/manifests, serves :10250, restarts pods on manifest changes.
//!
//! Like the real kubelet it reads `--config` (KubeletConfiguration) and `--kubeconfig` once at
//! start, looks at `staticPodPath` four times a second, and for each manifest runs the container's
//! command: image `registry.k8s.io/etcd` runs the real `/usr/bin/etcd`, the control-plane images
//! run `kubeca-testbed <component>`; both with the manifest's flags. A pod is restarted when its
//! manifest's content changes or when the manifest is removed and comes back, and restarted with
//! a back-off when it exits (CrashLoopBackOff). Static pods run in their own process groups and
//! survive a restart of the kubelet, as containers do; the new kubelet adopts them from the state
//! it keeps in `/run/kubelet/static-pods/<pod>.json` (which is also where the API side reads
//! their status for mirror pods). Container output goes to
//! `/var/log/pods/kube-system_<pod>_<uid>/<container>/0.log`, the pod uid being a hash of the
//! manifest as with the real kubelet.
//!
//! The kubelet serves HTTPS on `<address>:10250` with its serving certificate (`tlsCertFile`,
//! by default `/var/lib/kubelet/pki/kubelet.crt`). Like the real one it takes any client
//! certificate in the handshake and authenticates each request against the client CA it loads
//! (`authentication.x509.clientCAFile`, or a `--client-ca-file` flag, which wins), answering
//! 401 `Unauthorized` to a certificate that CA did not sign; it reloads that CA file and its
//! serving pair when they change (`serving.rs`).

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rustix::process::Signal;
use serde::{Deserialize, Serialize};
use serde_yaml_ng::Value;

use super::kubelet_server::TokenReviewer;
use super::node::{alive, proc_stat, to_pid};
use super::serving::{ClientCert, Reload, Serving};
use super::subnet::{self, Subnet};
use super::{component, prober};

/// Where the kubelet keeps the state of its static pods, inside the node.
pub const STATIC_POD_STATE_DIR: &str = "/run/kubelet/static-pods";
/// How long a stopping container gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(10);

/// How often the static pod directory is looked at.
const STATIC_POD_SYNC: Duration = Duration::from_millis(250);

/// The kubelet's command-line flags (those of kubeadm's systemd drop-in and kubeadm-flags.env).
#[derive(Debug, Clone)]
pub struct Flags {
    /// `--config`: the KubeletConfiguration file.
    pub config: PathBuf,
    /// `--kubeconfig`: how the kubelet reaches the apiserver.
    pub kubeconfig: PathBuf,
    /// `--node-ip`: the node's address.
    pub node_ip: String,
    /// `--hostname-override`: the node's name.
    pub hostname: String,
    /// `--client-ca-file` (deprecated, still honoured): overrides the configuration's
    /// `authentication.x509.clientCAFile`, as every kubelet flag overrides the file
    /// (`cmd/kubelet/app/server.go` `kubeletConfigFlagPrecedence`, kubernetes#56171).
    pub client_ca_file: Option<PathBuf>,
    /// `--cert-dir`, `/var/lib/kubelet/pki` by default: where it keeps the certificates it
    /// rotates.
    pub cert_dir: PathBuf,
    /// `--config-dir`: drop-ins that override `--config` field by field.
    pub config_dir: Option<PathBuf>,
}

impl Flags {
    fn parse(args: &[String]) -> Result<Flags> {
        let mut config = None;
        let mut kubeconfig = None;
        let mut node_ip = std::env::var("KUBECA_TESTBED_ADDRESS").ok();
        let mut hostname = std::env::var("KUBECA_TESTBED_NODE").ok();
        let mut client_ca_file = None;
        let mut cert_dir = PathBuf::from("/var/lib/kubelet/pki");
        let mut config_dir = None;
        for a in args {
            let Some((k, v)) = a.split_once('=') else {
                bail!("kubelet: flags are --name=value, got {a:?}");
            };
            match k {
                "--config" => config = Some(PathBuf::from(v)),
                "--kubeconfig" => kubeconfig = Some(PathBuf::from(v)),
                "--node-ip" => node_ip = Some(v.to_string()),
                "--hostname-override" => hostname = Some(v.to_string()),
                "--client-ca-file" => client_ca_file = Some(PathBuf::from(v)),
                "--cert-dir" => cert_dir = PathBuf::from(v),
                "--config-dir" => config_dir = Some(PathBuf::from(v)),
                // Flags of kubeadm-flags.env that mean nothing here.
                _ => {}
            }
        }
        Ok(Flags {
            config: config.context("kubelet: --config is required")?,
            kubeconfig: kubeconfig.context("kubelet: --kubeconfig is required")?,
            node_ip: node_ip.context("kubelet: --node-ip is required")?,
            hostname: hostname.context("kubelet: --hostname-override is required")?,
            client_ca_file,
            cert_dir,
            config_dir,
        })
    }
}

/// What the kubelet uses of its KubeletConfiguration.
#[derive(Debug, Clone)]
pub struct KubeletConfig {
    /// `staticPodPath`.
    pub static_pod_path: PathBuf,
    /// `authentication.x509.clientCAFile`.
    pub client_ca_file: PathBuf,
    /// `authentication.anonymous.enabled`: false unless set (the v1beta1 default,
    /// `pkg/kubelet/apis/config/v1beta1/defaults.go`; kubeadm writes false as well).
    pub anonymous: bool,
    /// `authentication.webhook.enabled`: true unless set (v1beta1 defaults; kubeadm writes
    /// true), with `authentication.webhook.cacheTTL`, 2 minutes when zero or unset.
    pub webhook: Option<Duration>,
    /// `address` (listen address of :10250).
    pub address: String,
    /// `port`, 10250 by default.
    pub port: u16,
    /// `tlsCertFile`, `/var/lib/kubelet/pki/kubelet.crt` by default.
    pub tls_cert_file: PathBuf,
    /// `tlsPrivateKeyFile`, `/var/lib/kubelet/pki/kubelet.key` by default.
    pub tls_private_key_file: PathBuf,
    /// `healthzBindAddress`, 127.0.0.1 by default.
    pub healthz_bind_address: String,
    /// `healthzPort`, 10248 by default; 0 turns the endpoint off.
    pub healthz_port: u16,
    /// Whether the configuration names the serving pair (`tlsCertFile` or
    /// `tlsPrivateKeyFile`); when it does not, the kubelet makes its own (`InitializeTLS`).
    pub tls_given: bool,
    /// `rotateCertificates`: false unless set (v1beta1 defaults); kubeadm writes true.
    pub rotate_certificates: bool,
    /// `serverTLSBootstrap`: false unless set; kubeadm passes the operator's value through.
    pub server_tls_bootstrap: bool,
}

impl KubeletConfig {
    /// Reads a KubeletConfiguration file and the `*.conf` drop-ins of `config_dir`, which
    /// override it field by field in lexical order (`cmd/kubelet/app/server.go`:
    /// `mergeKubeletConfigurations` over the files `--config-dir` holds with the `.conf`
    /// suffix; each must be a KubeletConfiguration).
    pub fn load(path: &Path, config_dir: Option<&Path>) -> Result<KubeletConfig> {
        let text =
            fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut merged: serde_json::Value = serde_yaml_ng::from_str(&text)
            .with_context(|| format!("{} is not YAML", path.display()))?;
        if let Some(dir) = config_dir {
            let mut files: Vec<PathBuf> = fs::read_dir(dir)
                .with_context(|| format!("reading --config-dir {}", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "conf"))
                .collect();
            files.sort();
            for f in files {
                let text =
                    fs::read_to_string(&f).with_context(|| format!("reading {}", f.display()))?;
                let drop_in: serde_json::Value = serde_yaml_ng::from_str(&text)
                    .with_context(|| format!("{} is not YAML", f.display()))?;
                if drop_in["kind"] != "KubeletConfiguration" {
                    bail!("{}: a drop-in must be a KubeletConfiguration", f.display());
                }
                super::apiserver::merge_patch(&mut merged, &drop_in);
            }
        }
        let v: Value = serde_yaml_ng::to_value(&merged).context("the merged configuration")?;
        let s = |key: &str| v.get(key).and_then(Value::as_str).map(String::from);
        let client_ca = v
            .get("authentication")
            .and_then(|a| a.get("x509"))
            .and_then(|x| x.get("clientCAFile"))
            .and_then(Value::as_str)
            .with_context(|| {
                format!("{}: authentication.x509.clientCAFile is not set", path.display())
            })?;
        Ok(KubeletConfig {
            static_pod_path: s("staticPodPath")
                .unwrap_or("/etc/kubernetes/manifests".into())
                .into(),
            client_ca_file: client_ca.into(),
            anonymous: v
                .get("authentication")
                .and_then(|a| a.get("anonymous"))
                .and_then(|a| a.get("enabled"))
                .and_then(Value::as_bool)
                .unwrap_or(false),
            webhook: {
                let w = v.get("authentication").and_then(|a| a.get("webhook"));
                let enabled = w.and_then(|w| w.get("enabled")).and_then(Value::as_bool);
                let ttl = match w.and_then(|w| w.get("cacheTTL")).and_then(Value::as_str) {
                    Some(t) => super::csr_controllers::go_duration(t)
                        .ok()
                        .and_then(|d| Duration::try_from(d).ok())
                        .with_context(|| {
                            format!("{}: authentication.webhook.cacheTTL {t:?}", path.display())
                        })?,
                    None => Duration::ZERO,
                };
                let ttl =
                    if ttl.is_zero() { super::kubelet_server::DEFAULT_CACHE_TTL } else { ttl };
                enabled.unwrap_or(true).then_some(ttl)
            },
            // 0.0.0.0 unless set (`pkg/kubelet/apis/config/v1beta1/defaults.go`).
            address: s("address").unwrap_or_else(|| "0.0.0.0".to_string()),
            port: v
                .get("port")
                .and_then(Value::as_u64)
                .and_then(|p| p.try_into().ok())
                .unwrap_or(10250),
            tls_cert_file: s("tlsCertFile")
                .unwrap_or("/var/lib/kubelet/pki/kubelet.crt".into())
                .into(),
            tls_private_key_file: s("tlsPrivateKeyFile")
                .unwrap_or("/var/lib/kubelet/pki/kubelet.key".into())
                .into(),
            tls_given: s("tlsCertFile").is_some() || s("tlsPrivateKeyFile").is_some(),
            rotate_certificates: v
                .get("rotateCertificates")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            server_tls_bootstrap: v
                .get("serverTLSBootstrap")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            // The v1beta1 defaults (pkg/kubelet/apis/config/v1beta1/defaults.go).
            healthz_bind_address: s("healthzBindAddress").unwrap_or_else(|| "127.0.0.1".into()),
            healthz_port: v
                .get("healthzPort")
                .and_then(Value::as_u64)
                .and_then(|p| p.try_into().ok())
                .unwrap_or(10248),
        })
    }
}

/// `kubeca-testbed kubelet --config=… --kubeconfig=… --node-ip=… --hostname-override=…`.
pub fn main(args: Vec<String>) -> ExitCode {
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kubelet: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<()> {
    let flags = Flags::parse(args)?;
    let mut config = KubeletConfig::load(&flags.config, flags.config_dir.as_deref())?;
    if let Some(flag) = &flags.client_ca_file {
        eprintln!(
            "kubelet: --client-ca-file={} overrides clientCAFile {} of {}",
            flag.display(),
            config.client_ca_file.display(),
            flags.config.display()
        );
        config.client_ca_file = flag.clone();
    }
    eprintln!(
        "kubelet {} starting: static pods from {}, serving {}:{}",
        flags.hostname,
        config.static_pod_path.display(),
        config.address,
        config.port
    );
    // `InitializeTLS` makes the self-signed pair only without serverTLSBootstrap; with it the
    // serving certificate manager keeps `<cert dir>/kubelet-server-current.pem` (certificate
    // and key in one file) and :10250 serves nothing until there is one.
    let bootstrap = config.server_tls_bootstrap && !config.tls_given;
    let serving = if bootstrap {
        let current =
            super::kubelet_certs::current_of(super::kubelet_certs::Kind::Serving, &flags.cert_dir);
        Serving::awaiting(
            "kubelet",
            (&current, &current),
            Some((&config.client_ca_file, Reload::OnChange)),
            &[b"h2", b"http/1.1"],
        )?
    } else {
        if !config.tls_given {
            self_signed_serving_pair(&config, &flags.hostname)?;
        }
        serving(&config)?
    };
    let serving = Arc::new(serving);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the kubelet's runtime")?;
    // Static pods are synced on their own thread: stopping a pod may take its grace period,
    // and :10250 must keep answering meanwhile.
    let mut pods = StaticPods::new(&flags, &config)?;
    std::thread::Builder::new()
        .name("static-pods".into())
        .spawn(move || {
            pods.sync();
            // Said once, so that a test can await the first pass of a restarted kubelet (the
            // pass that would start a second copy of a pod it failed to adopt).
            eprintln!("kubelet: first static pod sync done ({} pods)", pods.pods.len());
            loop {
                // The real kubelet sees a manifest change at once (inotify); a quarter second
                // keeps the testbed's restarts close to that.
                std::thread::sleep(STATIC_POD_SYNC);
                pods.sync();
            }
        })
        .context("starting the static pod thread")?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind((config.address.as_str(), config.port))
            .await
            .with_context(|| format!("binding {}:{}", config.address, config.port))?;
        let reviewer = config.webhook.map(|ttl| {
            Arc::new(TokenReviewer::new(&flags.hostname, flags.kubeconfig.clone(), ttl))
        });
        tokio::spawn(serve(listener, serving, config.anonymous, reviewer));
        if config.healthz_port > 0 {
            let addr = (config.healthz_bind_address.clone(), config.healthz_port);
            tokio::spawn(async move {
                if let Err(e) = serve_healthz(addr).await {
                    eprintln!("kubelet: healthz server: {e:#}");
                }
            });
        }
        // The API side (node registration and status, API pods): kubelet_api.rs (COMPONENTS).
        let ctx = super::kubelet_api::KubeletContext {
            node_name: flags.hostname.clone(),
            node_address: flags.node_ip.clone(),
            kubeconfig: flags.kubeconfig.clone(),
            exe: std::env::current_exe().context("locating the kubeca-testbed binary")?,
            testbed_dir: std::env::var_os("KUBECA_TESTBED_DIR")
                .map(PathBuf::from)
                .unwrap_or_default(),
            pod_log_dir: PathBuf::from("/var/log/pods"),
            kubelet_port: config.port,
            api_service: Subnet::from_env()?.lb_endpoint(),
            control_plane: config.static_pod_path.join("kube-apiserver.yaml").exists(),
            rotate_client_cert: config.rotate_certificates.then(|| flags.cert_dir.clone()),
            serving_bootstrap: bootstrap.then(|| flags.cert_dir.clone()),
            hostname: flags.hostname.clone(),
        };
        tokio::spawn(async move {
            if let Err(e) = super::kubelet_api::run(ctx).await {
                eprintln!("kubelet: API side: {e:#}");
            }
        });
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        term.recv().await;
        // The real kubelet leaves containers running when it stops; so does this one (the
        // static pod thread ends with the process).
        eprintln!("kubelet: SIGTERM, leaving static pods running");
        Ok(())
    })
}

/// The state of one static pod, kept in `/run/kubelet/static-pods/<pod>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StaticPodState {
    /// The pod's name: `<manifest metadata.name>-<node>`.
    pub pod: String,
    /// The manifest file the pod comes from.
    pub manifest: PathBuf,
    /// The pod uid (a hash of the manifest content).
    pub uid: String,
    /// The container's name.
    pub container: String,
    /// The image named by the manifest.
    pub image: String,
    /// The running process, when there is one.
    pub pid: Option<u32>,
    /// Its start time in clock ticks since boot, so a reused pid is not mistaken for it.
    pub pid_start: u64,
    /// When the container last started (RFC 3339).
    pub started_at: String,
    /// How often the container was restarted after it exited.
    pub restart_count: u32,
    /// "Running", "CrashLoopBackOff" or "Error: …".
    pub phase: String,
}

struct Pod {
    state: StaticPodState,
    hash: u64,
    child: Option<Child>,
    next_start: Option<Instant>,
    started: Instant,
    /// Its container's probe worker, while it runs (prober.rs).
    probes: Option<prober::Worker>,
    /// Found running at this kubelet's start rather than started by it.
    adopted: bool,
}

/// Everything the static pod loop needs.
struct StaticPods {
    flags: Flags,
    config: KubeletConfig,
    exe: PathBuf,
    pods: BTreeMap<String, Pod>,
}

/// A parsed static pod manifest.
struct Manifest {
    path: PathBuf,
    hash: u64,
    name: String,
    container: String,
    image: String,
    command: Vec<String>,
    /// The container's startup and liveness probes.
    probes: Vec<prober::Probe>,
}

impl StaticPods {
    fn new(flags: &Flags, config: &KubeletConfig) -> Result<StaticPods> {
        fs::create_dir_all(STATIC_POD_STATE_DIR)
            .with_context(|| format!("creating {STATIC_POD_STATE_DIR}"))?;
        let exe = std::env::current_exe().context("finding the kubeca-testbed binary")?;
        let mut me =
            StaticPods { flags: flags.clone(), config: config.clone(), exe, pods: BTreeMap::new() };
        me.adopt();
        Ok(me)
    }

    /// Takes over the static pods a previous kubelet left running.
    fn adopt(&mut self) {
        let Ok(entries) = fs::read_dir(STATIC_POD_STATE_DIR) else { return };
        for e in entries.flatten() {
            let Ok(text) = fs::read_to_string(e.path()) else { continue };
            let Ok(state) = serde_json::from_str::<StaticPodState>(&text) else { continue };
            let Some(pid) = state.pid.filter(|p| alive(*p, state.pid_start)) else { continue };
            let hash = fs::read(&state.manifest).map(|b| fnv(&b, 0)).unwrap_or(0);
            eprintln!("kubelet: adopting static pod {} (pid {pid})", state.pod);
            // The hash recorded is that of the manifest the process was started from; when the
            // file changed meanwhile, the next sync sees a different hash and restarts it.
            let started_hash = uid_hash(&state.uid).unwrap_or(hash);
            self.pods.insert(
                state.pod.clone(),
                Pod {
                    state,
                    hash: started_hash,
                    child: None,
                    next_start: None,
                    started: Instant::now(),
                    probes: None,
                    adopted: true,
                },
            );
        }
    }

    /// One pass: start, restart or stop pods so that they match the manifests on disk.
    fn sync(&mut self) {
        let manifests = self.read_manifests();
        // Gone or changed: stop.
        let stale: Vec<String> = self
            .pods
            .iter()
            .filter(|(name, pod)| manifests.get(*name).is_none_or(|m| m.hash != pod.hash))
            .map(|(name, _)| name.clone())
            .collect();
        for name in stale {
            if let Some(mut pod) = self.pods.remove(&name) {
                eprintln!("kubelet: stopping static pod {name} (manifest changed or removed)");
                stop(&mut pod);
                let _ = fs::remove_file(state_path(&name));
            }
        }
        // New or exited: start, with a back-off after a crash.
        for (name, m) in &manifests {
            if let Some(pod) = self.pods.get_mut(name) {
                // Probed while it runs; killed when a liveness or startup probe fails its
                // threshold, then restarted as after a crash (prober.rs).
                if pod.state.pid.is_some() && pod.probes.is_none() {
                    pod.probes = prober::Worker::start(
                        name,
                        &m.container,
                        m.probes.clone(),
                        pod.started,
                        pod.adopted,
                    );
                }
                let failed = pod.probes.as_ref().and_then(prober::Worker::failed);
                if let Some(why) = &failed {
                    eprintln!("kubelet: static pod {name}: {why}");
                    stop(pod);
                }
                if let Some(code) = exited(pod).or(failed) {
                    let ran = pod.started.elapsed();
                    if ran > Duration::from_secs(60) {
                        pod.state.restart_count = 0;
                    }
                    // CrashLoopBackOff: 1s, 2s, 4s, … up to 20s (the real kubelet: 10s to 5min).
                    let backoff = Duration::from_secs(1 << pod.state.restart_count.min(4))
                        .min(Duration::from_secs(20));
                    eprintln!(
                        "kubelet: static pod {name} exited ({code}); restarting in {}s",
                        backoff.as_secs()
                    );
                    pod.state.pid = None;
                    pod.probes = None;
                    pod.state.phase = "CrashLoopBackOff".into();
                    pod.state.restart_count += 1;
                    pod.next_start = Some(Instant::now() + backoff);
                    save_state(&pod.state);
                }
                if pod.next_start.is_some_and(|t| Instant::now() >= t) {
                    pod.next_start = None;
                    if let Err(e) = self.start_into(name, m) {
                        eprintln!("kubelet: {e:#}");
                    }
                }
            } else if let Err(e) = self.start_into(name, m) {
                eprintln!("kubelet: {e:#}");
            }
        }
    }

    fn read_manifests(&self) -> BTreeMap<String, Manifest> {
        let mut out = BTreeMap::new();
        let dir = &self.config.static_pod_path;
        let Ok(entries) = fs::read_dir(dir) else { return out };
        let mut paths: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            // Like the real kubelet: every file but hidden ones, whatever its extension.
            .filter(|p| p.file_name().is_some_and(|n| !n.to_string_lossy().starts_with('.')))
            .filter(|p| p.is_file())
            .collect();
        paths.sort();
        for path in paths {
            match parse_manifest(&path, &self.flags.node_ip) {
                Ok(m) => {
                    let pod = format!("{}-{}", m.name, self.flags.hostname);
                    if out.contains_key(&pod) {
                        eprintln!(
                            "kubelet: {} defines pod {pod} again; ignored (the real kubelet \
                             reads every file of {}: keep backups elsewhere)",
                            path.display(),
                            dir.display()
                        );
                        continue;
                    }
                    out.insert(pod, m);
                }
                Err(e) => eprintln!("kubelet: ignoring {}: {e:#}", path.display()),
            }
        }
        out
    }

    /// Starts (or restarts) the pod `name` from manifest `m`.
    fn start_into(&mut self, name: &str, m: &Manifest) -> Result<()> {
        let uid = uid_of(m.hash);
        let restart_count = self.pods.get(name).map_or(0, |p| p.state.restart_count);
        let log_dir =
            Path::new("/var/log/pods").join(format!("kube-system_{name}_{uid}")).join(&m.container);
        fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
        let log_path = log_dir.join("0.log");
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let (program, args) = program_for(&m.image, &m.command, &self.exe)
            .with_context(|| format!("{}: image {}", m.path.display(), m.image))?;
        let child = Command::new(&program)
            .args(&args)
            .env("KUBECA_TESTBED_DIR", std::env::var_os("KUBECA_TESTBED_DIR").unwrap_or_default())
            .env("KUBECA_TESTBED_NODE", &self.flags.hostname)
            .env("KUBECA_TESTBED_ADDRESS", &self.flags.node_ip)
            .env(subnet::ENV, std::env::var_os(subnet::ENV).unwrap_or_default())
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: a kubelet restart must not take the pod down with it.
            .process_group(0)
            .spawn()
            .with_context(|| format!("starting {} for static pod {name}", program.display()))?;
        let pid = child.id();
        eprintln!("kubelet: started static pod {name} (pid {pid}, uid {uid})");
        let state = StaticPodState {
            pod: name.to_string(),
            manifest: m.path.clone(),
            uid,
            container: m.container.clone(),
            image: m.image.clone(),
            pid: Some(pid),
            pid_start: proc_stat(pid).map_or(0, |(s, _)| s),
            started_at: jiff::Timestamp::now().to_string(),
            restart_count,
            phase: "Running".into(),
        };
        save_state(&state);
        self.pods.insert(
            name.to_string(),
            Pod {
                state,
                hash: m.hash,
                child: Some(child),
                next_start: None,
                started: Instant::now(),
                probes: None,
                adopted: false,
            },
        );
        Ok(())
    }
}

/// The program and arguments that run a container of `image` with `command` (command and args
/// of the manifest, the first element being the image's entry point).
///
/// `registry.k8s.io/etcd:*` runs the real `/usr/bin/etcd`; `kube-apiserver`,
/// `kube-controller-manager`, `kube-scheduler` images and the testbed's pod programs
/// (`coredns`, `kube-proxy`, `metrics-server`) run `kubeca-testbed <program>`;
/// `registry.k8s.io/kubectl:vX.Y.Z` runs a real kubectl of that minor version
/// ([`pinned_kubectl`]); `curlimages/curl` and `busybox` run their command from the node's
/// `PATH` (a shell, curl), as their images hold them.
pub fn program_for(image: &str, command: &[String], exe: &Path) -> Result<(PathBuf, Vec<String>)> {
    let last = image.rsplit('/').next().unwrap_or(image);
    let repo = last.split([':', '@']).next().unwrap_or(last);
    let tag = last.split_once(':').map(|(_, t)| t).unwrap_or("");
    let flags = command.get(1..).unwrap_or_default().to_vec();
    match repo {
        "etcd" => Ok((PathBuf::from("/usr/bin/etcd"), flags)),
        "kube-apiserver"
        | "kube-controller-manager"
        | "kube-scheduler"
        | "coredns"
        | "kube-proxy"
        | "metrics-server" => {
            // The image decides the program, as it decides the binary of a real container.
            Ok((exe.to_path_buf(), std::iter::once(repo.to_string()).chain(flags).collect()))
        }
        "kubectl" => Ok((pinned_kubectl(tag)?, flags)),
        "curl" | "busybox" => {
            let program = command.first().context("a command is needed for this image")?;
            Ok((PathBuf::from(program), flags))
        }
        _ => bail!("no program for image {image:?} on the testbed"),
    }
}

/// The real kubectl binary of the minor version of `tag` (`v1.31.0` → 1.31), so a container
/// runs one client-go whatever the apiserver's `/version` says: `kubectl.1.31` beside the
/// kubectl on `PATH` (Google Cloud SDK's layout, whose `kubectl` is a dispatcher that picks a
/// version by asking the server), or `$KUBECA_TESTBED_KUBECTL_DIR/kubectl.1.31`.
pub fn pinned_kubectl(tag: &str) -> Result<PathBuf> {
    let minor: String = {
        let v = tag.trim_start_matches('v');
        let mut parts = v.split('.');
        match (parts.next(), parts.next()) {
            (Some(a), Some(b)) if !a.is_empty() && !b.is_empty() => format!("{a}.{b}"),
            _ => bail!("image tag {tag:?} names no kubectl version (vMAJOR.MINOR.PATCH)"),
        }
    };
    let name = format!("kubectl.{minor}");
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("KUBECA_TESTBED_KUBECTL_DIR") {
        dirs.push(PathBuf::from(d));
    }
    for d in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        if let Ok(real) = fs::canonicalize(d.join("kubectl"))
            && let Some(parent) = real.parent()
        {
            dirs.push(parent.to_path_buf());
        }
    }
    dirs.iter().map(|d| d.join(&name)).find(|p| p.is_file()).with_context(|| {
        format!(
            "no {name} binary (looked in {}); install kubectl {minor} there or set \
             KUBECA_TESTBED_KUBECTL_DIR to a directory that holds {name}",
            dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
        )
    })
}

fn parse_manifest(path: &Path, pod_ip: &str) -> Result<Manifest> {
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let v: Value = serde_yaml_ng::from_slice(&bytes).context("not YAML")?;
    if v.get("kind").and_then(Value::as_str) != Some("Pod") {
        bail!("kind is not Pod");
    }
    let name = v
        .get("metadata")
        .and_then(|m| m.get("name"))
        .and_then(Value::as_str)
        .context("metadata.name is missing")?;
    let c = v
        .get("spec")
        .and_then(|s| s.get("containers"))
        .and_then(|c| c.get(0))
        .context("spec.containers[0] is missing")?;
    let strings = |key: &str| -> Vec<String> {
        c.get(key)
            .and_then(Value::as_sequence)
            .map(|s| s.iter().filter_map(|x| x.as_str().map(String::from)).collect())
            .unwrap_or_default()
    };
    let mut command = strings("command");
    command.extend(strings("args"));
    if command.is_empty() {
        bail!("spec.containers[0].command is empty");
    }
    Ok(Manifest {
        path: path.to_path_buf(),
        hash: fnv(&bytes, 0),
        name: name.to_string(),
        container: c.get("name").and_then(Value::as_str).unwrap_or(name).to_string(),
        image: c.get("image").and_then(Value::as_str).context("image is missing")?.to_string(),
        command,
        // A static pod is hostNetwork: its IP is the node's.
        probes: prober::parse(c, pod_ip)?,
    })
}

/// Whether the pod's process has exited; its exit status as text.
fn exited(pod: &mut Pod) -> Option<String> {
    process_exited(&mut pod.child, pod.state.pid, pod.state.pid_start)
}

/// Whether a pod's process (our `child`, or adopted: `pid` started at `start`) has exited; its
/// exit status as text. Shared by the static pods and the API pods (kubelet_api.rs).
pub(crate) fn process_exited(
    child: &mut Option<Child>,
    pid: Option<u32>,
    start: u64,
) -> Option<String> {
    if let Some(c) = child.as_mut() {
        return match c.try_wait() {
            Ok(Some(status)) => {
                *child = None;
                Some(status.to_string())
            }
            Ok(None) => None,
            Err(e) => Some(e.to_string()),
        };
    }
    // An adopted pod is not our child: its parent, the node supervisor, reaps it.
    match pid {
        Some(pid) if !alive(pid, start) => Some("exited".into()),
        _ => None,
    }
}

/// Whether a stopping pod's process is gone (our child reaped, or an adopted pid dead).
pub(crate) fn process_gone(child: &mut Option<Child>, pid: u32, start: u64) -> bool {
    match child.as_mut() {
        Some(c) => !matches!(c.try_wait(), Ok(None)),
        None => !alive(pid, start),
    }
}

/// SIGTERM to the pod's process group, SIGKILL after the grace period.
fn stop(pod: &mut Pod) {
    let Some(pid) = pod.state.pid else { return };
    let Some(p) = to_pid(pid) else { return };
    let _ = rustix::process::kill_process_group(p, Signal::TERM);
    let deadline = Instant::now() + GRACE;
    loop {
        if process_gone(&mut pod.child, pid, pod.state.pid_start) {
            break;
        }
        if Instant::now() >= deadline {
            let _ = rustix::process::kill_process_group(p, Signal::KILL);
            if let Some(c) = pod.child.as_mut() {
                let _ = c.wait();
            }
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    pod.child = None;
    pod.state.pid = None;
    pod.probes = None;
}

fn state_path(pod: &str) -> PathBuf {
    component::state_path(Path::new(STATIC_POD_STATE_DIR), pod)
}

fn save_state(state: &StaticPodState) {
    // Best effort: the pod runs whether or not its state could be saved.
    let _ = component::save_state(&state_path(&state.pod), state);
}

/// The states of the static pods of the node this process runs on (for mirror pods).
pub fn static_pod_states() -> Vec<StaticPodState> {
    let Ok(entries) = fs::read_dir(STATIC_POD_STATE_DIR) else { return Vec::new() };
    let mut v: Vec<StaticPodState> = entries
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
        .filter_map(|e| serde_json::from_str(&fs::read_to_string(e.path()).ok()?).ok())
        .collect();
    v.sort_by(|a, b| a.pod.cmp(&b.pod));
    v
}

/// 64-bit FNV-1a, seeded: a stable content hash (std's hasher may change between releases).
fn fnv(bytes: &[u8], seed: u64) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325_u64 ^ seed;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The pod uid for a manifest hash, in UUID form; the hash is its first 16 hex digits.
fn uid_of(hash: u64) -> String {
    let lo = fnv(&hash.to_be_bytes(), 1);
    let h = format!("{hash:016x}{lo:016x}");
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

fn uid_hash(uid: &str) -> Option<u64> {
    let hex: String = uid.chars().filter(|c| *c != '-').take(16).collect();
    u64::from_str_radix(&hex, 16).ok()
}

// ---------------------------------------------------------------------------------------------
// :10250

/// The kubelet's plain-HTTP health endpoint, `GET /healthz` = ok: `run` in
/// cmd/kubelet/app/server.go serves `healthz.InstallHandler` with `http.ListenAndServe` on
/// `healthzBindAddress:healthzPort` when the port is not 0 ("the port of the localhost healthz
/// endpoint", pkg/kubelet/apis/config/types.go). kubeadm leaves it on 127.0.0.1:10248, where its
/// `kubeadm init` waits for the kubelet.
async fn serve_healthz(addr: (String, u16)) -> Result<()> {
    let listener = tokio::net::TcpListener::bind((addr.0.as_str(), addr.1))
        .await
        .with_context(|| format!("binding {}:{}", addr.0, addr.1))?;
    loop {
        let Ok((tcp, _)) = listener.accept().await else { continue };
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                |req: hyper::Request<hyper::body::Incoming>| async move {
                    let (status, body) = if req.uri().path() == "/healthz" {
                        (200, "ok")
                    } else {
                        (404, "404 page not found\n")
                    };
                    let mut resp = hyper::Response::new(http_body_util::Full::new(
                        bytes::Bytes::from_static(body.as_bytes()),
                    ));
                    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
                    Ok::<_, std::convert::Infallible>(resp)
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                .await;
        });
    }
}

/// The serving pair of a kubelet whose configuration names none, as `InitializeTLS`
/// (cmd/kubelet/app/server.go) makes it: `<cert dir>/kubelet.crt` and `kubelet.key`, used as
/// they are when both can be read, else a new self-signed pair for the hostname
/// (`certutil.GenerateSelfSignedCertKey`) written there first. Nothing renews it.
fn self_signed_serving_pair(config: &KubeletConfig, hostname: &str) -> Result<()> {
    let (crt, key) = (&config.tls_cert_file, &config.tls_private_key_file);
    if fs::read(crt).is_ok() && fs::read(key).is_ok() {
        return Ok(());
    }
    let pair = super::certutil::self_signed_serving(hostname, jiff::Timestamp::now())?;
    if let Some(dir) = crt.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // certutil.WriteCert writes 0644, keyutil.WriteKey 0600.
    for (path, bytes, mode) in
        [(crt, pair.cert_pem.as_bytes(), 0o644), (key, pair.key_pem.as_bytes(), 0o600)]
    {
        use std::io::Write as _;
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(path)
            .with_context(|| format!("writing {}", path.display()))?;
        f.write_all(bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!("kubelet: wrote a self-signed serving pair {} for {hostname}", crt.display());
    Ok(())
}

/// The kubelet's :10250 files, reloaded as the real kubelet reloads them: `clientCAFile` through
/// `dynamiccertificates.NewDynamicCAContentFromFile("client-ca-bundle", …)`
/// (`cmd/kubelet/app/auth.go` `BuildAuthn`), and `tlsCertFile`/`tlsPrivateKeyFile` since 1.31
/// (`ReloadKubeletServerCertificateFile`, beta and on by default; `cmd/kubelet/app/server.go`
/// `InitializeTLS`). The handshake takes any client certificate (`tls.RequestClientCert`).
fn serving(config: &KubeletConfig) -> Result<Serving> {
    Serving::new(
        "kubelet",
        (&config.tls_cert_file, &config.tls_private_key_file, Reload::OnChange),
        Some((&config.client_ca_file, Reload::OnChange)),
        &[b"h2", b"http/1.1"],
    )
}

async fn serve(
    listener: tokio::net::TcpListener,
    serving: Arc<Serving>,
    anonymous: bool,
    reviewer: Option<Arc<TokenReviewer>>,
) {
    loop {
        let Ok((tcp, peer)) = listener.accept().await else { continue };
        let (serving, reviewer) = (serving.clone(), reviewer.clone());
        tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(serving.config());
            let stream = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    // Go's http.Server logs every failed handshake so.
                    let why = if e.to_string().contains("no server certificate") {
                        "no serving certificate available for the kubelet".to_string()
                    } else {
                        e.to_string()
                    };
                    eprintln!(
                        "{} kubelet: http: TLS handshake error from {peer}: {why}",
                        jiff::Timestamp::now()
                    );
                    return;
                }
            };
            let presented = stream.get_ref().1.peer_certificates().map(<[_]>::to_vec);
            let user = serving.authenticate(presented.as_deref());
            let service = hyper::service::service_fn(move |req| {
                let (user, reviewer) = (user.clone(), reviewer.clone());
                async move {
                    let r = reviewer.as_deref();
                    Ok::<_, std::convert::Infallible>(
                        authenticated(req, &user, anonymous, r, peer).await,
                    )
                }
            });
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
        });
    }
}

/// The kubelet's authentication filter (`pkg/kubelet/server/server.go` `InstallAuthFilter`): a
/// request that does not authenticate is answered 401 with the text `Unauthorized`. A client
/// certificate that does not verify fails the request even when anonymous access is enabled
/// (the x509 authenticator's error ends the chain before the anonymous one); without a client
/// certificate, a bearer token goes to the apiserver as a TokenReview when webhook
/// authentication is on (kubelet_server.rs), and is refused when it is off or the review says
/// no. Authorization (SubjectAccessReview) is not simulated: an authenticated user may do
/// everything.
async fn authenticated(
    req: hyper::Request<hyper::body::Incoming>,
    user: &ClientCert,
    anonymous: bool,
    reviewer: Option<&TokenReviewer>,
    peer: std::net::SocketAddr,
) -> hyper::Response<Body> {
    let token = super::serving::bearer_token(&req);
    let refused = match user {
        ClientCert::User { .. } => None,
        ClientCert::Untrusted(why) => {
            // What the real kubelet logs (`klog.ErrorS(err, "Unable to authenticate the request
            // due to an error")`). The monitor line is the client's (it knows who it is; a
            // probe by kubeca is a question, not an edge that depends on the answer).
            eprintln!(
                "{} kubelet: Unable to authenticate the request due to an error: verifying certificate from {peer} failed: {why}",
                jiff::Timestamp::now()
            );
            Some(())
        }
        ClientCert::Absent => match (&token, reviewer) {
            (Some(t), Some(reviewer)) => match reviewer.review(t).await {
                Ok(Some(_)) => None,
                Ok(None) => Some(()),
                Err(e) => {
                    eprintln!(
                        "{} kubelet: Unable to authenticate the request due to an error: {e:#}",
                        jiff::Timestamp::now()
                    );
                    Some(())
                }
            },
            (None, _) if anonymous && !req.headers().contains_key("authorization") => None,
            _ => Some(()),
        },
    };
    if refused.is_some() {
        let mut resp = hyper::Response::new(Body::from("Unauthorized"));
        *resp.status_mut() = hyper::StatusCode::UNAUTHORIZED;
        return resp;
    }
    handle(req)
}

type Body = http_body_util::Full<bytes::Bytes>;

fn handle(req: hyper::Request<hyper::body::Incoming>) -> hyper::Response<Body> {
    let path = req.uri().path().to_string();
    let (status, body) = if path == "/healthz" {
        (200, "ok".to_string())
    } else if path == "/pods" || path == "/pods/" {
        let items: Vec<serde_json::Value> = static_pod_states()
            .into_iter()
            .map(|s| {
                serde_json::json!({
                    "metadata": {"name": s.pod, "namespace": "kube-system", "uid": s.uid},
                    "status": {"phase": if s.phase == "Running" { "Running" } else { "Pending" }},
                })
            })
            .collect();
        (
            200,
            serde_json::json!({"kind": "PodList", "apiVersion": "v1", "items": items}).to_string(),
        )
    } else if path == "/metrics/resource" {
        match super::kubelet_server::node_usage() {
            Ok(u) => {
                let at = jiff::Timestamp::now().as_millisecond();
                (200, super::kubelet_server::resource_metrics(u, at))
            }
            Err(e) => (500, format!("{e:#}")),
        }
    } else if let Some(rest) = path.strip_prefix("/containerLogs/") {
        container_log(rest).map_or((404, "not found".into()), |l| (200, l))
    } else {
        (404, "not found".into())
    };
    let mut resp = hyper::Response::new(Body::from(body));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    resp
}

/// The log of `<ns>/<pod>/<container>` from /var/log/pods, newest pod uid first.
pub fn container_log(ns_pod_container: &str) -> Option<String> {
    let mut parts = ns_pod_container.splitn(3, '/');
    let (ns, pod, container) = (parts.next()?, parts.next()?, parts.next()?);
    let prefix = format!("{ns}_{pod}_");
    let mut dirs: Vec<(std::time::SystemTime, PathBuf)> = fs::read_dir("/var/log/pods")
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    dirs.sort();
    let (_, dir) = dirs.pop()?;
    fs::read_to_string(dir.join(container).join("0.log")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_ins_of_the_config_dir_override_the_config_file_in_lexical_order() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("config.yaml");
        let doc = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n";
        fs::write(&base, format!("{doc}authentication:\n  x509:\n    clientCAFile: /a.crt\n  anonymous:\n    enabled: true\nport: 10250\nrotateCertificates: true\n")).unwrap();
        let d = dir.path().join("conf.d");
        fs::create_dir(&d).unwrap();
        fs::write(
            d.join("20-b.conf"),
            format!("{doc}authentication:\n  x509:\n    clientCAFile: /b.crt\n"),
        )
        .unwrap();
        fs::write(
            d.join("10-a.conf"),
            format!("{doc}authentication:\n  x509:\n    clientCAFile: /first.crt\nport: 10260\n"),
        )
        .unwrap();
        fs::write(d.join("30-c.yaml"), format!("{doc}port: 1\n")).unwrap();
        let c = KubeletConfig::load(&base, Some(&d)).unwrap();
        assert_eq!(c.client_ca_file, PathBuf::from("/b.crt"), "the last drop-in wins");
        assert!(c.anonymous, "fields no drop-in sets stay (a merge, not a replacement)");
        assert_eq!(c.port, 10260, "only *.conf files count");
        assert!(c.rotate_certificates);
        assert_eq!(
            KubeletConfig::load(&base, None).unwrap().client_ca_file,
            PathBuf::from("/a.crt")
        );
        fs::write(d.join("40-bad.conf"), "port: 2\n").unwrap();
        let err = KubeletConfig::load(&base, Some(&d)).unwrap_err();
        assert!(format!("{err:#}").contains("must be a KubeletConfiguration"), "{err:#}");
    }

    #[test]
    fn images_map_to_programs() {
        let exe = Path::new("/x/kubeca-testbed");
        let cmd = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            program_for("registry.k8s.io/etcd:3.5.12-0", &cmd(&["etcd", "--name=cp-1"]), exe)
                .unwrap(),
            (PathBuf::from("/usr/bin/etcd"), cmd(&["--name=cp-1"]))
        );
        assert_eq!(
            program_for(
                "registry.k8s.io/kube-apiserver:v1.30.6",
                &cmd(&["kube-apiserver", "--secure-port=6443"]),
                exe
            )
            .unwrap(),
            (exe.to_path_buf(), cmd(&["kube-apiserver", "--secure-port=6443"]))
        );
        assert!(program_for("docker.io/nginx:1", &cmd(&["nginx"]), exe).is_err());
        assert!(pinned_kubectl("latest").is_err());
    }

    #[test]
    fn uid_keeps_its_hash() {
        let h = fnv(b"apiVersion: v1", 0);
        let uid = uid_of(h);
        assert_eq!(uid.len(), 36);
        assert_eq!(uid_hash(&uid), Some(h));
        assert_ne!(uid_of(fnv(b"apiVersion: v2", 0)), uid);
    }
}
