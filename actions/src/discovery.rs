//! Discovery: what each component on a node really loads, read from the node's own files.
//!
//! Nothing is assumed where a flag says otherwise: the static pod manifests' flags name the
//! certificate files, kubeconfigs and ports, the kubelet's systemd drop-in and flags file name its
//! config, kubeconfig, certificate directory and port, and the kubelet config names its client
//! CA, static pod directory and port. kubeadm's defaults ([`crate::kubeadm`]) are used only where
//! nothing says otherwise. [`NodeFacts::layout`] sums this up as the node's
//! [`crate::trust::NodeLayout`], which the trust model, the plan and the runner work from.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::edit::{EditError, Kubeconfig, KubeletConfig, Manifest};
use crate::kubeadm::{component, path, port};
use crate::node::{Node, NodeError};
use crate::trust::{
    ApiserverLayout, ControllerManagerLayout, KubeletLayout, NodeLayout, SchedulerLayout,
};

/// kubeadm's default of the kubelet's rotating client certificate, kept under this name for
/// callers written before [`crate::kubeadm`] held every default: use
/// [`crate::kubeadm::path::KUBELET_CLIENT_CURRENT`].
pub mod defaults {
    pub use crate::kubeadm::path::KUBELET_CLIENT_CURRENT;
}

/// Flags whose values are certificate or CA files, per component.
pub const CERT_FLAGS: &[(&str, &[&str])] = &[
    (
        component::APISERVER,
        &[
            "--client-ca-file",
            "--tls-cert-file",
            "--kubelet-client-certificate",
            "--kubelet-certificate-authority",
            "--proxy-client-cert-file",
            "--requestheader-client-ca-file",
        ],
    ),
    (
        component::CONTROLLER_MANAGER,
        &[
            "--root-ca-file",
            "--client-ca-file",
            "--cluster-signing-cert-file",
            "--requestheader-client-ca-file",
        ],
    ),
    (component::SCHEDULER, &["--client-ca-file", "--requestheader-client-ca-file"]),
    (component::CLOUD_CONTROLLER_MANAGER, &["--client-ca-file", "--requestheader-client-ca-file"]),
];

/// Flags whose values are kubeconfigs.
pub const KUBECONFIG_FLAGS: &[&str] =
    &["--kubeconfig", "--authentication-kubeconfig", "--authorization-kubeconfig"];

/// Why discovery failed. Each names the node and file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DiscoveryError {
    /// The node could not be read.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// A file is not what it should be.
    #[error(transparent)]
    Edit(#[from] EditError),
    /// A file that a flag names is missing.
    #[error("node {node}: {file} (named by {by}) does not exist")]
    Missing {
        /// The node.
        node: String,
        /// The file.
        file: String,
        /// What names it.
        by: String,
    },
    /// The kubelet's `--client-ca-file` is set in its systemd unit.
    #[error(
        "node {node}: the kubelet's --client-ca-file is set in its systemd unit drop-in {file}; \
         kubeca edits it only where the unit reads it at every start without a daemon-reload \
         ({flags_env}, or KUBELET_EXTRA_ARGS in /etc/default/kubelet or /etc/sysconfig/kubelet): \
         move the flag there, or into authentication.x509.clientCAFile of the kubelet's config, \
         then run init again",
        flags_env = path::KUBELET_FLAGS_ENV
    )]
    KubeletFlagInUnit {
        /// The node.
        node: String,
        /// The drop-in.
        file: String,
    },
    /// A static pod kubeca does not rotate mounts a kubeconfig kubeca rewrites.
    #[error(
        "node {node}: the static pod {manifest} ({image}) mounts {mounted}, and kubeca rewrites \
         {kubeconfig}; restarting such a pod after the rewrite is not built yet, and left running \
         it would keep the old CA's credentials and fail once finalize drops the old CA. Move \
         its manifest out of the static pod directory for the rotation (and back after it), or \
         point it at a kubeconfig of its own"
    )]
    MountsRewrittenKubeconfig {
        /// The node.
        node: String,
        /// The manifest.
        manifest: String,
        /// Its image.
        image: String,
        /// The host path it mounts.
        mounted: String,
        /// The kubeconfig under it.
        kubeconfig: String,
    },
}

/// A static pod as its manifest describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticPod {
    /// Manifest path.
    pub manifest: String,
    /// Container image.
    pub image: Option<String>,
    /// Every flag, last value wins.
    pub flags: BTreeMap<String, String>,
}

/// A static pod that is not a control-plane component kubeca rotates (kube-vip, the kubeadm HA
/// guide's haproxy and keepalived): noted with what it mounts from the host, left alone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OtherStaticPod {
    /// Manifest path.
    pub manifest: String,
    /// Container image.
    pub image: Option<String>,
    /// The `hostPath` paths of its volumes.
    pub host_paths: Vec<String>,
}

/// The `path:` of every `hostPath:` volume of a manifest (line-based, as the manifests kubeadm
/// and the HA guide write them).
fn host_paths(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        // `hostPath:` alone or as a list item (`- hostPath:`); its keys are indented past it.
        if l.trim_start().trim_start_matches("- ") != "hostPath:" {
            continue;
        }
        let indent = l.find("hostPath:").unwrap_or(0);
        for next in &lines[i + 1..] {
            let body = next.trim_start();
            if next.len() - body.len() <= indent {
                break;
            }
            if let Some(p) = body.strip_prefix("path:") {
                out.push(p.trim().trim_matches(|c| c == '"' || c == '\'').to_owned());
            }
        }
    }
    out
}

/// Where a kubeconfig's CA and client credentials are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeconfigFacts {
    /// Its path.
    pub path: String,
    /// `server:`.
    pub server: Option<String>,
    /// CA embedded (`certificate-authority-data`)?
    pub ca_embedded: bool,
    /// Or referenced from this file.
    pub ca_file: Option<String>,
    /// Client certificate embedded?
    pub client_embedded: bool,
    /// Or referenced from these files (certificate, key).
    pub client_files: (Option<String>, Option<String>),
}

/// What the kubelet on a node loads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubeletFacts {
    /// The file kubeca edits for its client CA: the flags file that sets `--client-ca-file`
    /// last (kubeadm-flags.env, /etc/default/kubelet, /etc/sysconfig/kubelet), else the config
    /// that sets its `clientCAFile` last (its `--config`, or the `--config-dir` drop-in that
    /// overrides it).
    pub config: String,
    /// Its kubeconfig.
    pub kubeconfig: String,
    /// Its client CA file: `--client-ca-file`, else `authentication.x509.clientCAFile`.
    pub client_ca_file: Option<String>,
    /// `rotateCertificates: true` and a `kubelet-client-current.pem` present: the kubelet renews
    /// its own client certificate, so kubeca does not re-issue it (upstream step 9.2).
    pub rotates_client_cert: bool,
    /// Static pod directory.
    pub static_pod_path: String,
    /// Its serving certificate: `tlsCertFile`; else with `serverTLSBootstrap` the one its
    /// certificate manager keeps (`kubelet-server-current.pem`, certificate and key); else the
    /// self-signed one in its certificate directory.
    pub serving_cert: String,
    /// `serverTLSBootstrap: true` (and no `tlsCertFile`): its serving certificate comes from
    /// the CSR API's `kubernetes.io/kubelet-serving` signer, the cluster CA on kubeadm, so it is
    /// of the CA being rotated (`pkg/kubelet/certificate/kubelet.go`
    /// `NewKubeletServerCertificateManager`).
    #[serde(default)]
    pub serving_bootstrap: bool,
    /// Its certificate directory (`--cert-dir`), where it keeps the certificates it rotates.
    pub cert_dir: String,
    /// Its client certificate file, which the undo of a kubelet roll restores: the one its
    /// kubeconfig names, else `kubelet-client-current.pem` in its certificate directory (where it
    /// keeps the certificate it rotates).
    pub client_cert: String,
    /// The port it serves on (`--port`, else the config's `port`).
    pub port: u16,
}

/// Everything discovery learned about one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFacts {
    /// The node.
    pub node: String,
    /// Static pods by component name (`kube-apiserver`, `etcd`, ...).
    pub static_pods: BTreeMap<String, StaticPod>,
    /// Kubeconfigs by path.
    pub kubeconfigs: BTreeMap<String, KubeconfigFacts>,
    /// The kubelet, when one is installed.
    pub kubelet: Option<KubeletFacts>,
    /// Every certificate file named by a flag or config: path → what names it.
    pub cert_files: BTreeMap<String, Vec<String>>,
    /// Static pods kubeca does not rotate, by manifest path.
    #[serde(default)]
    pub other_static_pods: BTreeMap<String, OtherStaticPod>,
}

impl NodeFacts {
    /// The value of a component's flag.
    pub fn flag(&self, component: &str, flag: &str) -> Option<&str> {
        self.static_pods.get(component)?.flags.get(flag).map(String::as_str)
    }

    /// Whether this node runs the apiserver.
    pub fn runs_apiserver(&self) -> bool {
        self.static_pods.contains_key(component::APISERVER)
    }

    /// Where this node's components load their trust inputs from and where they listen: what
    /// its manifests, kubelet settings and kubeconfigs say, kubeadm's defaults only where they
    /// say nothing. Everything after discovery works from this, not from the defaults.
    pub fn layout(&self) -> NodeLayout {
        use component::{APISERVER, CONTROLLER_MANAGER, SCHEDULER};
        let flag = |c: &str, f: &str| self.flag(c, f).map(str::to_owned);
        let secure_port = |c: &str, default: u16| {
            self.flag(c, "--secure-port").and_then(|p| p.parse().ok()).unwrap_or(default)
        };
        let kubelet = self.kubelet.as_ref();
        let kubelet_client_ca = kubelet.and_then(|k| k.client_ca_file.clone());
        // The cluster CA as kubeadm keeps it: what the controller-manager publishes as the
        // root CA; on a worker, which runs none, what its kubelet trusts for clients.
        let ca_cert = flag(CONTROLLER_MANAGER, "--root-ca-file")
            .or_else(|| kubelet_client_ca.clone())
            .unwrap_or_else(|| path::CA_CERT.into());
        let front_proxy_ca_cert = flag(APISERVER, "--requestheader-client-ca-file")
            .or_else(|| flag(CONTROLLER_MANAGER, "--requestheader-client-ca-file"))
            .unwrap_or_else(|| path::FRONT_PROXY_CA_CERT.into());
        let static_pod_path =
            kubelet.map_or_else(|| path::STATIC_POD_PATH.to_owned(), |k| k.static_pod_path.clone());
        let manifest = |c: &str| {
            self.static_pods
                .get(c)
                .map_or_else(|| path::manifest(&static_pod_path, c), |p| p.manifest.clone())
        };
        let kubelet_layout = match kubelet {
            Some(k) => KubeletLayout {
                config: k.config.clone(),
                kubeconfig: k.kubeconfig.clone(),
                client_ca: kubelet_client_ca.clone().unwrap_or_else(|| ca_cert.clone()),
                client_cert: k.client_cert.clone(),
                serving_cert: k.serving_cert.clone(),
                serving_bootstrap: k.serving_bootstrap,
                port: k.port,
            },
            None => KubeletLayout::default(),
        };
        NodeLayout {
            pki_dir: path::dir_of(&ca_cert),
            ca_key: flag(CONTROLLER_MANAGER, "--cluster-signing-key-file")
                .unwrap_or_else(|| path::key_beside(&ca_cert)),
            front_proxy_ca_key: path::key_beside(&front_proxy_ca_cert),
            apiserver: ApiserverLayout {
                manifest: manifest(APISERVER),
                client_ca: flag(APISERVER, "--client-ca-file").unwrap_or_else(|| ca_cert.clone()),
                serving_cert: flag(APISERVER, "--tls-cert-file")
                    .unwrap_or_else(|| path::APISERVER_CERT.into()),
                kubelet_client_cert: flag(APISERVER, "--kubelet-client-certificate")
                    .unwrap_or_else(|| path::APISERVER_KUBELET_CLIENT_CERT.into()),
                proxy_client_cert: flag(APISERVER, "--proxy-client-cert-file")
                    .unwrap_or_else(|| path::FRONT_PROXY_CLIENT_CERT.into()),
                kubelet_ca: flag(APISERVER, "--kubelet-certificate-authority"),
                port: secure_port(APISERVER, port::APISERVER),
            },
            controller_manager: ControllerManagerLayout {
                manifest: manifest(CONTROLLER_MANAGER),
                kubeconfig: flag(CONTROLLER_MANAGER, "--kubeconfig")
                    .unwrap_or_else(|| path::CONTROLLER_MANAGER_CONF.into()),
                client_ca: flag(CONTROLLER_MANAGER, "--client-ca-file")
                    .unwrap_or_else(|| ca_cert.clone()),
                signing_cert: flag(CONTROLLER_MANAGER, "--cluster-signing-cert-file")
                    .unwrap_or_else(|| ca_cert.clone()),
                port: secure_port(CONTROLLER_MANAGER, port::CONTROLLER_MANAGER),
            },
            scheduler: SchedulerLayout {
                manifest: manifest(SCHEDULER),
                kubeconfig: flag(SCHEDULER, "--kubeconfig")
                    .unwrap_or_else(|| path::SCHEDULER_CONF.into()),
                port: secure_port(SCHEDULER, port::SCHEDULER),
            },
            // Nothing on a node names the admin kubeconfig: kubeadm's is the one there is.
            admin_kubeconfig: path::ADMIN_CONF.into(),
            kubelet: kubelet_layout,
            static_pod_path,
            ca_cert,
            front_proxy_ca_cert,
        }
    }
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The component a manifest runs: its command's program name, else its image's name.
fn component_of(m: &Manifest, file_name: &str) -> String {
    let program = m
        .text()
        .lines()
        .skip_while(|l| !l.trim_start().ends_with("command:"))
        .nth(1)
        .and_then(|l| l.trim_start().strip_prefix("- ").map(|p| p.trim().to_owned()))
        .filter(|p| !p.starts_with("--"));
    program
        .map(|p| p.rsplit('/').next().unwrap_or(&p).to_owned())
        .unwrap_or_else(|| file_name.trim_end_matches(".yaml").to_owned())
}

/// Finds `--name=value` in a shell-ish line of flags (systemd drop-in, kubeadm-flags.env).
fn flag_in(line: &str, name: &str) -> Option<String> {
    let needle = format!("{name}=");
    line.split(|c: char| c.is_whitespace() || c == '"' || c == '\'').find_map(|w| {
        // `--config=x`, or inside an assignment such as `KUBELET_CONFIG_ARGS=--config=x`.
        let at = w.find(&needle)?;
        (at == 0 || w[..at].ends_with('=')).then(|| w[at + needle.len()..].to_owned())
    })
}

/// Reads what the components of `node` load.
pub async fn discover<N: Node>(node: &N) -> Result<NodeFacts, DiscoveryError> {
    let name = node.name().to_owned();
    let mut facts = NodeFacts {
        node: name.clone(),
        static_pods: BTreeMap::new(),
        kubeconfigs: BTreeMap::new(),
        kubelet: None,
        cert_files: BTreeMap::new(),
        other_static_pods: BTreeMap::new(),
    };

    // The kubelet: its config, kubeconfig, certificate directory and port come from its drop-in
    // or flags file (flags win over its config, as in the kubelet itself).
    let mut kubelet_config = path::KUBELET_CONFIG.to_owned();
    let mut kubelet_kubeconfig = path::KUBELET_CONF.to_owned();
    let mut cert_dir = path::KUBELET_CERT_DIR.to_owned();
    let mut port_flag: Option<u16> = None;
    let mut config_dir: Option<String> = None;
    // (file, value) of the last `--client-ca-file`, which wins over every config layer.
    let mut client_ca_flag: Option<(String, String)> = None;
    let mut kubelet_installed = false;
    // In the order kubeadm's drop-in passes them (`ExecStart=… $KUBELET_KUBEADM_ARGS
    // $KUBELET_EXTRA_ARGS`): a later flag wins, as in the kubelet's flag parsing.
    let flag_files = path::KUBELET_DROPINS
        .iter()
        .chain([&path::KUBELET_FLAGS_ENV])
        .chain(&path::KUBELET_EXTRA_ARGS_FILES);
    for file in flag_files {
        if let Some(bytes) = node.read(file).await? {
            kubelet_installed |= !path::KUBELET_EXTRA_ARGS_FILES.contains(file);
            // `#` and `;` lines are comments, in a unit file as in an environment file.
            for line in text(bytes).lines().filter(|l| !l.trim_start().starts_with(['#', ';'])) {
                if let Some(v) = flag_in(line, "--client-ca-file") {
                    client_ca_flag = Some(((*file).to_owned(), v));
                }
                if let Some(v) = flag_in(line, "--config") {
                    kubelet_config = v;
                }
                if let Some(v) = flag_in(line, "--kubeconfig") {
                    kubelet_kubeconfig = v;
                }
                if let Some(v) = flag_in(line, "--cert-dir") {
                    cert_dir = v.trim_end_matches('/').to_owned();
                }
                if let Some(v) = flag_in(line, "--port").and_then(|p| p.parse().ok()) {
                    port_flag = Some(v);
                }
                if let Some(v) = flag_in(line, "--config-dir") {
                    config_dir = Some(v.trim_end_matches('/').to_owned());
                }
            }
        }
    }
    let mut static_pod_path = path::STATIC_POD_PATH.to_owned();
    if let Some(bytes) = node.read(&kubelet_config).await? {
        let config = KubeletConfig::parse(&format!("{name}:{kubelet_config}"), &text(bytes))?;
        // `--config-dir`: its `*.conf` files, in lexical order, override the config file field
        // by field (`cmd/kubelet/app/server.go` `mergeKubeletConfigurations`).
        let mut layers = vec![(kubelet_config.clone(), config)];
        if let Some(dir) = &config_dir {
            let mut files: Vec<String> = node
                .list(dir)
                .await?
                .unwrap_or_default()
                .into_iter()
                .filter(|f| f.ends_with(".conf"))
                .collect();
            files.sort();
            for f in files {
                let p = format!("{dir}/{f}");
                let Some(bytes) = node.read(&p).await? else { continue };
                layers
                    .push((p.clone(), KubeletConfig::parse(&format!("{name}:{p}"), &text(bytes))?));
            }
        }
        // The value of the last layer that sets it, and that layer's file.
        let last = |get: &dyn Fn(&KubeletConfig) -> Option<String>| {
            layers.iter().rev().find_map(|(p, c)| get(c).map(|v| (p.clone(), v)))
        };
        if let Some((_, dir)) = last(&|c| config_value(c, "staticPodPath")) {
            static_pod_path = dir;
        }
        // A `--client-ca-file` flag wins over every layer (the kubelet applies its flags last);
        // kubeca edits it where it is, in an environment file the unit reads at every start. In
        // the unit's own drop-in an edit would need a daemon-reload, which kubeca does not make.
        if let Some((file, _)) = &client_ca_flag
            && !path::kubelet_flag_env_file(file)
        {
            return Err(DiscoveryError::KubeletFlagInUnit { node: name, file: file.clone() });
        }
        let (client_ca, by) = match client_ca_flag {
            Some(flag) => (Some(flag), "--client-ca-file"),
            None => (last(&|c| c.client_ca_file()), "clientCAFile"),
        };
        // The file kubeca edits is the one whose client CA the kubelet uses.
        let config_file =
            client_ca.as_ref().map(|(p, _)| p.clone()).unwrap_or_else(|| kubelet_config.clone());
        let client_ca_file = client_ca.map(|(_, v)| v);
        if let Some(ca) = &client_ca_file {
            facts
                .cert_files
                .entry(ca.clone())
                .or_default()
                .push(format!("kubelet {config_file} {by}"));
        }
        let rotates =
            last(&|c| config_value(c, "rotateCertificates")).is_some_and(|(_, v)| v == "true");
        let rotating = format!("{cert_dir}/{}", path::KUBELET_CLIENT_CURRENT_FILE);
        let tls_cert_file = last(&|c| config_value(c, "tlsCertFile")).map(|(_, v)| v);
        let serving_bootstrap = tls_cert_file.is_none()
            && last(&|c| config_value(c, "serverTLSBootstrap")).is_some_and(|(_, v)| v == "true");
        let current = node.read(&rotating).await?.is_some();
        facts.kubelet = Some(KubeletFacts {
            config: config_file,
            kubeconfig: kubelet_kubeconfig.clone(),
            client_ca_file,
            rotates_client_cert: rotates && current,
            static_pod_path: static_pod_path.clone(),
            serving_cert: tls_cert_file.clone().unwrap_or_else(|| {
                let file = if serving_bootstrap {
                    path::KUBELET_SERVER_CURRENT_FILE
                } else {
                    path::KUBELET_SERVING_FILE
                };
                format!("{cert_dir}/{file}")
            }),
            serving_bootstrap,
            // Until its kubeconfig is read below: the certificate it rotates.
            client_cert: rotating,
            port: port_flag
                .or_else(|| last(&|c| config_value(c, "port")).and_then(|(_, p)| p.parse().ok()))
                .unwrap_or(port::KUBELET),
            cert_dir,
        });
    } else if kubelet_installed {
        return Err(DiscoveryError::Missing {
            node: name,
            file: kubelet_config,
            by: "the kubelet's --config".into(),
        });
    }

    // Static pods.
    let mut kubeconfig_paths: BTreeMap<String, String> = BTreeMap::new();
    if facts.kubelet.is_some() {
        kubeconfig_paths.insert(kubelet_kubeconfig.clone(), "kubelet --kubeconfig".into());
    }
    for file in node.list(&static_pod_path).await?.unwrap_or_default() {
        if !(file.ends_with(".yaml") || file.ends_with(".yml") || file.ends_with(".json")) {
            continue;
        }
        let path = format!("{static_pod_path}/{file}");
        let Some(bytes) = node.read(&path).await? else { continue };
        let body = text(bytes);
        // A pod without a command list (the HA guide's haproxy and keepalived run their image's
        // entrypoint; kube-vip passes `args:`) is not a component whose flags kubeca changes.
        if !body.lines().any(|l| l.trim_start().trim_start_matches("- ").starts_with("command:")) {
            let image = body.lines().find_map(|l| {
                let item = l.trim_start().trim_start_matches("- ");
                item.strip_prefix("image:").map(|v| v.trim().trim_matches('"').to_owned())
            });
            tracing::info!(node = %name, manifest = %path, image = ?image, "static pod not rotated");
            facts.other_static_pods.insert(
                path.clone(),
                OtherStaticPod { manifest: path, image, host_paths: host_paths(&body) },
            );
            continue;
        }
        let manifest = Manifest::parse(&format!("{name}:{path}"), &body)?;
        let component = component_of(&manifest, &file);
        let flags: BTreeMap<String, String> = manifest.flags().into_iter().collect();
        if let Some((_, cert_flags)) = CERT_FLAGS.iter().find(|(c, _)| *c == component) {
            for flag in *cert_flags {
                if let Some(file) = flags.get(*flag) {
                    facts
                        .cert_files
                        .entry(file.clone())
                        .or_default()
                        .push(format!("{component} {flag}"));
                }
            }
        }
        for flag in KUBECONFIG_FLAGS {
            if let Some(file) = flags.get(*flag) {
                kubeconfig_paths.insert(file.clone(), format!("{component} {flag}"));
            }
        }
        facts
            .static_pods
            .insert(component, StaticPod { manifest: path, image: manifest.image(), flags });
    }
    if facts.runs_apiserver() {
        for conf in path::CONTROL_PLANE_KUBECONFIGS {
            kubeconfig_paths.entry(conf.to_owned()).or_insert_with(|| "kubeadm".into());
        }
    }

    // A pod kubeca leaves alone must not hold a kubeconfig kubeca rewrites (kube-vip mounts
    // admin.conf or super-admin.conf, the HA guide's way).
    for pod in facts.other_static_pods.values() {
        for mounted in &pod.host_paths {
            let under = |conf: &str| {
                conf == mounted
                    || conf
                        .strip_prefix(mounted.trim_end_matches('/'))
                        .is_some_and(|r| r.starts_with('/'))
            };
            let rewritten = kubeconfig_paths
                .keys()
                .map(String::as_str)
                .chain(path::CONTROL_PLANE_KUBECONFIGS.iter().copied())
                .find(|c| under(c));
            if let Some(conf) = rewritten {
                return Err(DiscoveryError::MountsRewrittenKubeconfig {
                    node: name,
                    manifest: pod.manifest.clone(),
                    image: pod.image.clone().unwrap_or_else(|| "no image".into()),
                    mounted: mounted.clone(),
                    kubeconfig: conf.to_owned(),
                });
            }
        }
    }

    // Kubeconfigs: what each embeds or references.
    for (path, by) in kubeconfig_paths {
        let Some(bytes) = node.read(&path).await? else {
            if by == "kubeadm" {
                continue; // optional (super-admin.conf exists only on the first node)
            }
            return Err(DiscoveryError::Missing { node: name, file: path, by });
        };
        let k = Kubeconfig::parse(&format!("{name}:{path}"), &text(bytes))?;
        let client_files = k.client_files();
        if let Some(ca) = k.ca_file() {
            facts.cert_files.entry(ca).or_default().push(format!("{path} certificate-authority"));
        }
        facts.kubeconfigs.insert(
            path.clone(),
            KubeconfigFacts {
                path,
                server: k.server(),
                ca_embedded: k.ca_data()?.is_some(),
                ca_file: k.ca_file(),
                client_embedded: k.client_cert_data()?.is_some(),
                client_files,
            },
        );
    }
    // The kubelet's client certificate is the file its kubeconfig names, when it names one.
    if let Some(k) = facts.kubelet.as_mut()
        && let Some(file) =
            facts.kubeconfigs.get(&k.kubeconfig).and_then(|c| c.client_files.0.clone())
    {
        k.client_cert = file;
    }
    Ok(facts)
}

/// A top-level scalar of the kubelet config.
fn config_value(config: &KubeletConfig, key: &str) -> Option<String> {
    config.text().lines().find_map(|l| {
        let rest = l.strip_prefix(key)?.strip_prefix(':')?;
        Some(rest.trim().trim_matches('"').to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::LocalNode;

    const APISERVER: &str = include_str!("../testdata/kubeadm/kube-apiserver.yaml");
    const CONTROLLER_MANAGER: &str =
        include_str!("../testdata/kubeadm/kube-controller-manager.yaml");
    const SCHEDULER: &str = include_str!("../testdata/kubeadm/kube-scheduler.yaml");
    const KUBELET_CONFIG: &str = include_str!("../testdata/kubeadm/kubelet-config.yaml");
    const ADMIN_CONF: &str = include_str!("../testdata/kubeadm/admin.conf");
    const KUBELET_CONF: &str = include_str!("../testdata/kubeadm/kubelet.conf");

    fn put(root: &std::path::Path, path: &str, text: &str) {
        let p = root.join(path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }

    fn control_plane() -> (tempfile::TempDir, LocalNode) {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        put(r, "/etc/kubernetes/manifests/kube-apiserver.yaml", APISERVER);
        put(r, "/etc/kubernetes/manifests/kube-controller-manager.yaml", CONTROLLER_MANAGER);
        put(r, "/etc/kubernetes/manifests/kube-scheduler.yaml", SCHEDULER);
        put(r, "/var/lib/kubelet/config.yaml", KUBELET_CONFIG);
        put(
            r,
            "/var/lib/kubelet/kubeadm-flags.env",
            "KUBELET_KUBEADM_ARGS=\"--container-runtime-endpoint=unix:///var/run/containerd/containerd.sock\"\n",
        );
        put(r, "/var/lib/kubelet/pki/kubelet-client-current.pem", "PEM");
        put(r, "/etc/kubernetes/kubelet.conf", KUBELET_CONF);
        for conf in ["admin.conf", "controller-manager.conf", "scheduler.conf"] {
            put(r, &format!("/etc/kubernetes/{conf}"), ADMIN_CONF);
        }
        let node = LocalNode::new("cp-1", r);
        (dir, node)
    }

    #[tokio::test]
    async fn a_kubeadm_control_plane_is_discovered_from_its_files() {
        let (_dir, node) = control_plane();
        let f = discover(&node).await.unwrap();
        assert_eq!(
            f.static_pods.keys().cloned().collect::<Vec<_>>(),
            ["kube-apiserver", "kube-controller-manager", "kube-scheduler"]
        );
        assert_eq!(
            f.flag("kube-controller-manager", "--root-ca-file"),
            Some("/etc/kubernetes/pki/ca.crt")
        );
        let kubelet = f.kubelet.clone().unwrap();
        assert_eq!(kubelet.client_ca_file.as_deref(), Some("/etc/kubernetes/pki/ca.crt"));
        assert!(kubelet.rotates_client_cert);
        assert_eq!(kubelet.static_pod_path, "/etc/kubernetes/manifests");
        let admin = &f.kubeconfigs["/etc/kubernetes/admin.conf"];
        assert!(admin.ca_embedded && admin.client_embedded);
        let kc = &f.kubeconfigs["/etc/kubernetes/kubelet.conf"];
        assert!(!kc.client_embedded);
        assert_eq!(kc.client_files.0.as_deref(), Some(path::KUBELET_CLIENT_CURRENT));
        assert!(
            !f.kubeconfigs.contains_key("/etc/kubernetes/super-admin.conf"),
            "optional, absent"
        );
        assert_eq!(
            f.cert_files["/etc/kubernetes/pki/front-proxy-ca.crt"],
            [
                "kube-apiserver --requestheader-client-ca-file",
                "kube-controller-manager --requestheader-client-ca-file"
            ]
        );
        assert!(f.cert_files.contains_key("/etc/kubernetes/pki/apiserver-kubelet-client.crt"));
    }

    #[tokio::test]
    async fn flags_that_say_otherwise_win_over_kubeadm_defaults() {
        let (dir, node) = control_plane();
        let r = dir.path();
        // The kubelet's config lives elsewhere, and so do its static pods.
        put(
            r,
            "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf",
            "[Service]\nEnvironment=\"KUBELET_CONFIG_ARGS=--config=/etc/kubelet/custom.yaml\"\nEnvironment=\"KUBELET_KUBECONFIG_ARGS=--kubeconfig=/etc/kubelet/kubelet.conf\"\n",
        );
        put(
            r,
            "/etc/kubelet/custom.yaml",
            &KUBELET_CONFIG
                .replace(
                    "staticPodPath: /etc/kubernetes/manifests",
                    "staticPodPath: /etc/kubelet/pods",
                )
                .replace("rotateCertificates: true", "rotateCertificates: false"),
        );
        put(r, "/etc/kubelet/kubelet.conf", KUBELET_CONF);
        put(
            r,
            "/etc/kubelet/pods/kube-scheduler.yaml",
            &SCHEDULER.replace("/etc/kubernetes/scheduler.conf", "/etc/kubelet/sched.conf"),
        );
        put(r, "/etc/kubelet/sched.conf", ADMIN_CONF);
        let f = discover(&node).await.unwrap();
        let kubelet = f.kubelet.clone().unwrap();
        assert_eq!(kubelet.config, "/etc/kubelet/custom.yaml");
        assert_eq!(kubelet.kubeconfig, "/etc/kubelet/kubelet.conf");
        assert!(!kubelet.rotates_client_cert);
        assert_eq!(f.static_pods.keys().collect::<Vec<_>>(), ["kube-scheduler"]);
        assert!(f.kubeconfigs.contains_key("/etc/kubelet/sched.conf"));
        assert!(f.kubeconfigs.contains_key("/etc/kubelet/kubelet.conf"));
    }

    /// With `serverTLSBootstrap` the kubelet serves what its certificate manager keeps in its
    /// certificate directory, which came from the CSR API; `tlsCertFile` wins over it.
    #[tokio::test]
    async fn a_bootstrapped_serving_certificate_is_the_managers_current_one() {
        let (dir, node) = control_plane();
        let r = dir.path();
        put(
            r,
            "/var/lib/kubelet/kubeadm-flags.env",
            "KUBELET_KUBEADM_ARGS=\"--config-dir=/etc/kubernetes/kubelet.conf.d\"\n",
        );
        let doc = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n";
        let drop_in = "/etc/kubernetes/kubelet.conf.d/50-serving.conf";
        put(r, drop_in, &format!("{doc}serverTLSBootstrap: true\n"));
        let k = discover(&node).await.unwrap().kubelet.unwrap();
        assert!(k.serving_bootstrap);
        assert_eq!(k.serving_cert, format!("{}/kubelet-server-current.pem", k.cert_dir));
        put(
            r,
            drop_in,
            &format!("{doc}serverTLSBootstrap: true\ntlsCertFile: /etc/kubernetes/pki/k.crt\n"),
        );
        let k = discover(&node).await.unwrap().kubelet.unwrap();
        assert!(!k.serving_bootstrap, "a given tlsCertFile is served instead");
        assert_eq!(k.serving_cert, "/etc/kubernetes/pki/k.crt");
    }

    /// `--config-dir` drop-ins override the config file field by field, in lexical order, and
    /// `KUBELET_EXTRA_ARGS` (`/etc/default/kubelet`) wins over `kubeadm-flags.env`; kubeca then
    /// edits the drop-in whose `clientCAFile` the kubelet uses.
    #[tokio::test]
    async fn kubelet_drop_ins_and_extra_args_win_in_the_kubelets_own_order() {
        let (dir, node) = control_plane();
        let r = dir.path();
        put(
            r,
            "/var/lib/kubelet/kubeadm-flags.env",
            "KUBELET_KUBEADM_ARGS=\"--port=10251 --config-dir=/etc/kubelet.d\"\n",
        );
        put(
            r,
            "/etc/default/kubelet",
            "KUBELET_EXTRA_ARGS=\"--port=10252 --config-dir=/etc/kubernetes/kubelet.conf.d\"\n",
        );
        let d = "/etc/kubernetes/kubelet.conf.d";
        let doc = "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n";
        put(
            r,
            &format!("{d}/10-ca.conf"),
            &format!(
                "{doc}authentication:\n  x509:\n    clientCAFile: /etc/kubernetes/pki/first.crt\n"
            ),
        );
        put(
            r,
            &format!("{d}/20-ca.conf"),
            &format!(
                "{doc}authentication:\n  x509:\n    clientCAFile: /etc/kubernetes/pki/kubelet-ca.crt\nstaticPodPath: /etc/kubernetes/pods\n"
            ),
        );
        put(
            r,
            &format!("{d}/30-serving.conf"),
            &format!(
                "{doc}tlsCertFile: /etc/kubernetes/pki/kubelet.crt\nrotateCertificates: false\n"
            ),
        );
        put(r, &format!("{d}/99-ignored.yaml"), &format!("{doc}port: 1\n"));
        let k = discover(&node).await.unwrap().kubelet.unwrap();
        assert_eq!(k.config, format!("{d}/20-ca.conf"), "the drop-in that sets clientCAFile last");
        assert_eq!(k.client_ca_file.as_deref(), Some("/etc/kubernetes/pki/kubelet-ca.crt"));
        assert_eq!(k.static_pod_path, "/etc/kubernetes/pods");
        assert_eq!(k.serving_cert, "/etc/kubernetes/pki/kubelet.crt");
        assert!(!k.rotates_client_cert, "a drop-in turned rotation off");
        assert_eq!(k.port, 10252, "KUBELET_EXTRA_ARGS is passed last");

        // A --client-ca-file flag wins over every config layer, and is what kubeca edits; a
        // commented one counts for nothing.
        put(
            r,
            "/etc/default/kubelet",
            "# KUBELET_EXTRA_ARGS=--client-ca-file=/old.crt\nKUBELET_EXTRA_ARGS=\"--port=10252 \
             --config-dir=/etc/kubernetes/kubelet.conf.d --client-ca-file=/etc/kubernetes/pki/flag-ca.crt\"\n",
        );
        let f = discover(&node).await.unwrap();
        let k = f.kubelet.unwrap();
        assert_eq!(k.config, "/etc/default/kubelet", "the flags file is what sets it");
        assert_eq!(k.client_ca_file.as_deref(), Some("/etc/kubernetes/pki/flag-ca.crt"));
        assert_eq!(
            f.cert_files["/etc/kubernetes/pki/flag-ca.crt"],
            ["kubelet /etc/default/kubelet --client-ca-file"]
        );
        // In the unit's own drop-in, an edit would need a daemon-reload: refused, naming it.
        let unit = "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf";
        put(
            r,
            unit,
            "[Service]\nEnvironment=\"KUBELET_CONFIG_ARGS=--config=/var/lib/kubelet/config.yaml \
             --client-ca-file=/etc/kubernetes/pki/ca.crt\"\n",
        );
        std::fs::remove_file(r.join("etc/default/kubelet")).unwrap();
        let e = discover(&node).await.unwrap_err().to_string();
        assert!(e.contains("node cp-1") && e.contains(unit) && e.contains("daemon-reload"), "{e}");
    }

    #[tokio::test]
    async fn kubeadm_s_layout_is_discovered_as_the_default_layout() {
        let (_dir, node) = control_plane();
        assert_eq!(discover(&node).await.unwrap().layout(), NodeLayout::default());
    }

    #[tokio::test]
    async fn a_node_laid_out_otherwise_is_found_where_its_files_are() {
        use crate::fixtures::{self, elsewhere};
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        let put = |path: &str, text: &str| {
            let (path, text) = elsewhere(path, text);
            put(r, &path, &text);
        };
        put("/etc/kubernetes/manifests/kube-apiserver.yaml", APISERVER);
        put("/etc/kubernetes/manifests/kube-controller-manager.yaml", CONTROLLER_MANAGER);
        put("/etc/kubernetes/manifests/kube-scheduler.yaml", SCHEDULER);
        put("/var/lib/kubelet/config.yaml", KUBELET_CONFIG);
        put("/var/lib/kubelet/pki/kubelet-client-current.pem", "PEM");
        put("/etc/kubernetes/kubelet.conf", KUBELET_CONF);
        for conf in ["admin.conf", "controller-manager.conf", "scheduler.conf"] {
            put(&format!("/etc/kubernetes/{conf}"), ADMIN_CONF);
        }
        put(fixtures::DROPIN.0, fixtures::DROPIN.1);
        let f = discover(&LocalNode::new("cp-1", r)).await.unwrap();
        let kubelet = f.kubelet.clone().unwrap();
        assert!(kubelet.rotates_client_cert, "its rotating certificate is in its --cert-dir");
        let l = f.layout();
        let pki = |file: &str| format!("{}/{file}", fixtures::PKI);
        assert_eq!(l.pki_dir, fixtures::PKI);
        assert_eq!((l.ca_cert.as_str(), l.ca_key.as_str()), (&*pki("ca.crt"), &*pki("ca.key")));
        assert_eq!(l.front_proxy_ca_cert, pki("front-proxy-ca.crt"));
        assert_eq!(l.front_proxy_ca_key, pki("front-proxy-ca.key"));
        assert_eq!(l.static_pod_path, fixtures::STATIC_POD_PATH);
        assert_eq!(
            l.apiserver.manifest,
            format!("{}/kube-apiserver.yaml", fixtures::STATIC_POD_PATH)
        );
        assert_eq!(l.apiserver.client_ca, fixtures::APISERVER_CLIENT_CA);
        assert_eq!(l.apiserver.serving_cert, pki("apiserver.crt"));
        assert_eq!(l.apiserver.kubelet_client_cert, pki("apiserver-kubelet-client.crt"));
        assert_eq!(l.apiserver.proxy_client_cert, pki("front-proxy-client.crt"));
        assert_eq!(l.apiserver.port, fixtures::APISERVER_PORT);
        assert_eq!(l.controller_manager.kubeconfig, "/srv/k8s/controller-manager.conf");
        assert_eq!(l.controller_manager.client_ca, pki("ca.crt"));
        assert_eq!(l.controller_manager.port, port::CONTROLLER_MANAGER, "no flag: kubeadm's");
        assert_eq!(l.scheduler.kubeconfig, "/srv/k8s/scheduler.conf");
        assert_eq!(l.admin_kubeconfig, path::ADMIN_CONF, "nothing names another");
        assert_eq!(
            l.kubelet,
            KubeletLayout {
                config: fixtures::KUBELET_CONFIG.into(),
                kubeconfig: fixtures::KUBELET_KUBECONFIG.into(),
                client_ca: pki("ca.crt"),
                client_cert: fixtures::KUBELET_CLIENT_CERT.into(),
                serving_cert: "/srv/kubelet/pki/kubelet.crt".into(),
                serving_bootstrap: false,
                port: fixtures::KUBELET_PORT,
            }
        );
    }

    #[tokio::test]
    async fn an_embedded_kubelet_client_certificate_leaves_the_rotating_one_as_its_file() {
        let (dir, node) = control_plane();
        let embedded = KUBELET_CONF
            .replace("client-certificate: ", "client-certificate-data: ")
            .replace("client-key: ", "client-key-data: ")
            .replace("/var/lib/kubelet/pki/kubelet-client-current.pem", "UEVN");
        put(dir.path(), "/etc/kubernetes/kubelet.conf", &embedded);
        let f = discover(&node).await.unwrap();
        assert!(f.kubeconfigs["/etc/kubernetes/kubelet.conf"].client_embedded);
        assert_eq!(f.layout().kubelet.client_cert, path::KUBELET_CLIENT_CURRENT);
    }

    #[tokio::test]
    async fn a_kubeconfig_named_by_a_flag_must_exist() {
        let (dir, node) = control_plane();
        std::fs::remove_file(dir.path().join("etc/kubernetes/scheduler.conf")).unwrap();
        let e = discover(&node).await.unwrap_err().to_string();
        assert!(
            e.contains("node cp-1")
                && e.contains("/etc/kubernetes/scheduler.conf")
                && e.contains("kube-scheduler --"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn a_worker_has_a_kubelet_and_no_static_pods() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        put(r, "/var/lib/kubelet/config.yaml", KUBELET_CONFIG);
        put(r, "/etc/kubernetes/kubelet.conf", KUBELET_CONF);
        std::fs::create_dir_all(r.join("etc/kubernetes/manifests")).unwrap();
        let f = discover(&LocalNode::new("w-1", r)).await.unwrap();
        assert!(f.static_pods.is_empty());
        assert!(!f.runs_apiserver());
        assert!(!f.kubelet.unwrap().rotates_client_cert, "no kubelet-client-current.pem");
        assert_eq!(f.kubeconfigs.len(), 1);
    }

    /// The kubeadm HA guide's static pods (kubernetes/kubeadm `docs/ha-considerations.md`):
    /// haproxy and keepalived run their image's entrypoint (no `command:`); kube-vip passes
    /// `args:` and mounts admin.conf as a single-file hostPath.
    const HAPROXY: &str = "apiVersion: v1
kind: Pod
metadata:
  name: haproxy
  namespace: kube-system
spec:
  containers:
  - image: haproxy:2.1.4
    name: haproxy
    volumeMounts:
    - mountPath: /usr/local/etc/haproxy/haproxy.cfg
      name: haproxyconf
      readOnly: true
  hostNetwork: true
  volumes:
  - hostPath:
      path: /etc/haproxy/haproxy.cfg
      type: FileOrCreate
    name: haproxyconf
";

    const KUBE_VIP: &str = "apiVersion: v1
kind: Pod
metadata:
  name: kube-vip
  namespace: kube-system
spec:
  containers:
  - args:
    - manager
    image: ghcr.io/kube-vip/kube-vip:v0.4.0
    name: kube-vip
    volumeMounts:
    - mountPath: /etc/kubernetes/admin.conf
      name: kubeconfig
  hostNetwork: true
  volumes:
  - hostPath:
      path: /etc/kubernetes/admin.conf
    name: kubeconfig
";

    #[tokio::test]
    async fn static_pods_without_a_command_are_noted_and_left_alone() {
        let (dir, node) = control_plane();
        put(dir.path(), "/etc/kubernetes/manifests/haproxy.yaml", HAPROXY);
        let f = discover(&node).await.unwrap();
        let pod = &f.other_static_pods["/etc/kubernetes/manifests/haproxy.yaml"];
        assert_eq!(pod.image.as_deref(), Some("haproxy:2.1.4"));
        assert_eq!(pod.host_paths, ["/etc/haproxy/haproxy.cfg"]);
        assert_eq!(f.static_pods.len(), 3, "the control plane is found as before");
    }

    #[tokio::test]
    async fn a_pod_kubeca_leaves_alone_that_mounts_a_kubeconfig_it_rewrites_is_refused() {
        let (dir, node) = control_plane();
        put(dir.path(), "/etc/kubernetes/manifests/kube-vip.yaml", KUBE_VIP);
        let e = discover(&node).await.unwrap_err().to_string();
        assert!(
            e.starts_with("node cp-1: the static pod /etc/kubernetes/manifests/kube-vip.yaml")
                && e.contains("ghcr.io/kube-vip/kube-vip:v0.4.0")
                && e.contains("mounts /etc/kubernetes/admin.conf")
                && e.contains("Move its manifest out"),
            "{e}"
        );
        // A mount of the whole directory holds it too.
        let whole = KUBE_VIP.replace("path: /etc/kubernetes/admin.conf", "path: /etc/kubernetes/");
        put(dir.path(), "/etc/kubernetes/manifests/kube-vip.yaml", &whole);
        let e = discover(&node).await.unwrap_err().to_string();
        assert!(e.contains("mounts /etc/kubernetes/, and kubeca rewrites"), "{e}");
        // /etc/kubernetes-other is not under /etc/kubernetes.
        let other =
            KUBE_VIP.replace("path: /etc/kubernetes/admin.conf", "path: /etc/kubernetes-other");
        put(dir.path(), "/etc/kubernetes/manifests/kube-vip.yaml", &other);
        assert!(discover(&node).await.is_ok());
    }
}
