//! The initial PKI, kubeconfigs, static pod manifests and kubelet config, made with the openssl CLI in kubeadm's layout.
//!
//! Nothing here uses kubeca's certificate code: every key and certificate is made by the `openssl`
//! command line (the Kubernetes "Certificates (openssl)" recipe), so kubeca is tested on
//! certificates it did not make. Files, subjects, extensions, kubeconfigs and manifests follow
//! what kubeadm v1.30 writes (RSA keys in PKCS#1 "RSA PRIVATE KEY" form, ECDSA keys in SEC1 "EC
//! PRIVATE KEY" form, kubeconfigs with embedded base64 data, `kubelet.conf` pointing at
//! `kubelet-client-current.pem`). The openssl configuration used for each certificate is kept
//! under `DIR/openssl/` so a certificate can be re-made or inspected by hand.

use std::fmt::Write as _;
use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use base64::Engine as _;

use super::node::{NodeSpec, node_dir};
use super::profile::Profile;
use super::subnet::Subnet;

/// Kubernetes version whose kubeadm layout and flags the testbed copies.
pub const KUBERNETES_VERSION: &str = "v1.30.6";
/// The etcd image kubeadm v1.30 uses; the kubelet runs the real `/usr/bin/etcd` for it.
pub const ETCD_IMAGE: &str = "registry.k8s.io/etcd:3.5.12-0";
/// Days a CA is valid (kubeadm: 10 years).
const CA_DAYS: u32 = 3650;
/// Days a leaf certificate is valid (kubeadm: 1 year).
const LEAF_DAYS: u32 = 365;

/// The private key algorithm of every key of the initial PKI.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyAlgorithm {
    /// RSA 2048, kubeadm's default.
    Rsa,
    /// ECDSA P-256, kubeadm's `encryptionAlgorithm: ECDSA-P256`.
    Ecdsa,
}

/// What a certificate is for; decides its basicConstraints, keyUsage and extendedKeyUsage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Usage {
    Ca,
    Server,
    Client,
    ServerClient,
}

/// One certificate to make: subject, usage and subject alternative names.
struct CertSpec {
    cn: String,
    orgs: Vec<String>,
    usage: Usage,
    dns: Vec<String>,
    ips: Vec<String>,
}

impl CertSpec {
    fn new(cn: &str, orgs: &[&str], usage: Usage) -> Self {
        let orgs = orgs.iter().map(|o| o.to_string()).collect();
        CertSpec { cn: cn.to_string(), orgs, usage, dns: Vec::new(), ips: Vec::new() }
    }
}

/// Makes the PKI, kubeconfigs, manifests and kubelet files of every node under `DIR/nodes/`.
///
/// The shared CAs (cluster, front-proxy, etcd) and the service-account key pair are made once
/// and copied to every control-plane node, as `kubeadm join --control-plane` does with uploaded
/// certificates; every node gets its own leaf certificates. The control-plane endpoint (in the
/// apiservers' SANs, admin.conf and kubelet.conf) is the load balancer of `subnet`.
pub fn generate(
    dir: &Path,
    subnet: &Subnet,
    nodes: &[NodeSpec],
    algo: KeyAlgorithm,
    profile: Profile,
) -> Result<()> {
    let lb = subnet.lb().to_string();
    let work = dir.join("openssl");
    let shared = work.join("shared");
    fs::create_dir_all(shared.join("etcd"))
        .with_context(|| format!("creating {}", shared.display()))?;
    let ossl = Openssl { algo, work: work.clone() };

    // The CAs (as kubeadm's Go code makes them) and the service-account key, made once.
    let cas = [("ca", "kubernetes"), ("front-proxy-ca", "front-proxy-ca"), ("etcd/ca", "etcd-ca")];
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> =
            cas.iter().map(|(name, cn)| s.spawn(|| kubeadm_ca(&shared, name, cn, algo))).collect();
        ossl.key(&shared.join("sa.key"))?;
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("openssl worker thread panicked"))??;
        }
        Ok(())
    })?;
    run_openssl(&[
        "pkey",
        "-in",
        path_str(&shared.join("sa.key"))?,
        "-pubout",
        "-out",
        path_str(&shared.join("sa.pub"))?,
    ])?;

    // Every node's files, from a queue shared by one worker per core (control planes, which
    // have the most keys to make, first).
    let control_planes: Vec<&NodeSpec> = nodes.iter().filter(|n| n.control_plane).collect();
    let queue = std::sync::Mutex::new(nodes.iter());
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|s| -> Result<()> {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    loop {
                        // The lock only guards the iterator; a poisoned lock means another
                        // worker panicked, and its join below reports that.
                        let next = match queue.lock() {
                            Ok(mut q) => q.next(),
                            Err(_) => return Ok(()),
                        };
                        let Some(node) = next else { return Ok(()) };
                        node_files(dir, &ossl, &shared, &lb, node, &control_planes, profile)
                            .with_context(|| format!("making the files of node {}", node.name))?;
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("openssl worker thread panicked"))??;
        }
        Ok(())
    })
}

/// The files of one node: PKI, kubeconfigs and manifests (control planes), kubelet files (all).
/// `lb` is the load balancer's address.
fn node_files(
    dir: &Path,
    ossl: &Openssl,
    shared: &Path,
    lb: &str,
    node: &NodeSpec,
    control_planes: &[&NodeSpec],
    profile: Profile,
) -> Result<()> {
    let root = node_dir(dir, &node.name);
    let etc = root.join("etc-kubernetes");
    let in_etc = |dir: &'static str| {
        dir.strip_prefix("/etc/kubernetes/")
            .map(|d| etc.join(d))
            .with_context(|| format!("the testbed keeps {dir} under /etc/kubernetes"))
    };
    let pki_dir = profile.pki_dir();
    let pki = in_etc(pki_dir)?;
    let static_pods = in_etc(profile.static_pod_path())?;
    let kubelet_dir = root.join("var-lib-kubelet");
    for d in [
        pki.join("etcd"),
        static_pods.clone(),
        kubelet_dir.join("pki"),
        root.join("var-lib-etcd"),
        root.join("var-log-pods"),
        root.join("run"),
    ] {
        fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    // The node's /etc/default starts as a copy of the host's (regular files only).
    let etc_default = root.join("etc-default");
    fs::create_dir_all(&etc_default)?;
    for e in fs::read_dir("/etc/default").into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_file()) && e.file_name() != "kubelet" {
            let _ = fs::copy(e.path(), etc_default.join(e.file_name()));
        }
    }
    if profile.kubelet_extra_args_client_ca() {
        // Hardened as the CIS benchmark's kubelet section asks (4.2.3, `--client-ca-file`), in
        // the file kubeadm's unit passes last: this flag wins over clientCAFile of config.yaml.
        write(
            &etc_default.join("kubelet"),
            format!("KUBELET_EXTRA_ARGS=\"--client-ca-file={pki_dir}/ca.crt\"\n").as_bytes(),
        )?;
    }
    // kubeadm makes /var/lib/etcd 0700; etcd warns about anything looser.
    fs::set_permissions(root.join("var-lib-etcd"), fs::Permissions::from_mode(0o700))?;
    let work = ossl.work.join(&node.name);
    fs::create_dir_all(work.join("etcd"))?;
    let addr = node.address.as_str();
    let ca = (pki.join("ca.crt"), pki.join("ca.key"));
    // Workers hold no CA key: their kubelet certificates are signed with the shared one, as
    // the controller-manager's CSR signer would sign them.
    let shared_ca = (shared.join("ca.crt"), shared.join("ca.key"));
    let lb_server = format!("https://{lb}:6443");
    let own_server = format!("https://{addr}:6443");

    // Every node trusts the cluster CA; only control planes hold its key and the other CAs.
    copy(&shared.join("ca.crt"), &pki.join("ca.crt"))?;
    if node.control_plane {
        for f in [
            "ca.key",
            "front-proxy-ca.crt",
            "front-proxy-ca.key",
            "etcd/ca.crt",
            "etcd/ca.key",
            "sa.key",
            "sa.pub",
        ] {
            copy(&shared.join(f), &pki.join(f))?;
        }
        let fp_ca = (pki.join("front-proxy-ca.crt"), pki.join("front-proxy-ca.key"));
        let etcd_ca = (pki.join("etcd/ca.crt"), pki.join("etcd/ca.key"));

        let mut apiserver = CertSpec::new("kube-apiserver", &[], Usage::Server);
        apiserver.dns = [
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
            &node.name,
        ]
        .map(String::from)
        .to_vec();
        apiserver.ips = vec!["10.96.0.1".into(), addr.into(), lb.into()];
        // etcd's serving and peer certificates carry kubeadm's SANs: name, localhost, address.
        let etcd_sans = |mut spec: CertSpec| {
            spec.dns = vec![node.name.clone(), "localhost".into()];
            spec.ips = vec![addr.into(), "127.0.0.1".into(), "::1".into()];
            spec
        };
        let leaves: Vec<(&str, CertSpec, &(PathBuf, PathBuf))> = vec![
            ("apiserver", apiserver, &ca),
            (
                "apiserver-kubelet-client",
                CertSpec::new(
                    "kube-apiserver-kubelet-client",
                    &["kubeadm:cluster-admins"],
                    Usage::Client,
                ),
                &ca,
            ),
            ("front-proxy-client", CertSpec::new("front-proxy-client", &[], Usage::Client), &fp_ca),
            (
                "etcd/server",
                etcd_sans(CertSpec::new(&node.name, &[], Usage::ServerClient)),
                &etcd_ca,
            ),
            ("etcd/peer", etcd_sans(CertSpec::new(&node.name, &[], Usage::ServerClient)), &etcd_ca),
            (
                "etcd/healthcheck-client",
                CertSpec::new("kube-etcd-healthcheck-client", &[], Usage::Client),
                &etcd_ca,
            ),
            (
                "apiserver-etcd-client",
                CertSpec::new("kube-apiserver-etcd-client", &[], Usage::Client),
                &etcd_ca,
            ),
        ];
        for (name, spec, signer) in &leaves {
            ossl.key_and_cert(&pki, name, spec, Some((&signer.0, &signer.1)), &work)?;
        }

        // Kubeconfigs of the control plane. admin.conf goes through the load balancer; the
        // components' own kubeconfigs talk to their node's apiserver, as kubeadm writes them.
        let confs: [(&str, &str, &[&str], &str); 4] = [
            ("admin", "kubernetes-admin", &["kubeadm:cluster-admins"], &lb_server),
            ("super-admin", "kubernetes-super-admin", &["system:masters"], &own_server),
            ("controller-manager", "system:kube-controller-manager", &[], &own_server),
            ("scheduler", "system:kube-scheduler", &[], &own_server),
        ];
        for (file, user, orgs, server) in confs {
            let spec = CertSpec::new(user, orgs, Usage::Client);
            let (crt, key) = ossl.temp_key_and_cert(&work, file, &spec, &ca)?;
            let conf = kubeconfig_embedded(&read(&ca.0)?, server, user, &crt, &key);
            write_secret(&etc.join(format!("{file}.conf")), conf.as_bytes())?;
        }

        // kubeadm writes static pod manifests 0600.
        let manifests = &static_pods;
        write_secret(
            &manifests.join("etcd.yaml"),
            etcd_manifest(node, control_planes, pki_dir).as_bytes(),
        )?;
        write_secret(
            &manifests.join("kube-apiserver.yaml"),
            apiserver_manifest(node, profile).as_bytes(),
        )?;
        if profile.anonymous_by_config(&node.name) {
            let name = AUTHENTICATION_CONFIG.trim_start_matches("/etc/kubernetes/");
            write(&etc.join(name), AUTHENTICATION_CONFIG_TEXT.as_bytes())?;
        }
        write_secret(
            &manifests.join("kube-controller-manager.yaml"),
            controller_manager_manifest(pki_dir).as_bytes(),
        )?;
        write_secret(
            &manifests.join("kube-scheduler.yaml"),
            scheduler_manifest(profile).as_bytes(),
        )?;
    }

    // The kubelet: client certificate as the kubelet's rotation leaves it (one dated PEM with
    // certificate and key, and the `-current` symlink). Its serving pair: in kubeadm's layout
    // the self-signed one the kubelet makes at its first start (kubelet.rs); in the custom
    // profile one signed by the cluster CA, for the apiservers' --kubelet-certificate-authority.
    let kpki = kubelet_dir.join("pki");
    let spec =
        CertSpec::new(&format!("system:node:{}", node.name), &["system:nodes"], Usage::Client);
    let (crt, key) = ossl.temp_key_and_cert(&work, "kubelet-client", &spec, &shared_ca)?;
    let stamp = jiff::Timestamp::now().strftime("%Y-%m-%d-%H-%M-%S").to_string();
    let dated = format!("kubelet-client-{stamp}.pem");
    write_secret(&kpki.join(&dated), format!("{crt}{key}").as_bytes())?;
    let current = kpki.join("kubelet-client-current.pem");
    let _ = fs::remove_file(&current);
    // Absolute inside the node, as the kubelet makes it; it dangles when read from the host.
    symlink(format!("/var/lib/kubelet/pki/{dated}"), &current)
        .with_context(|| format!("linking {}", current.display()))?;
    if profile.kubelet_server_tls_bootstrap() {
        // What the kubelet's serving certificate manager stored when an operator approved its
        // first request: a dated file with certificate and key, and the `-current` link
        // (`certificate_store.go`); the names are the node's addresses (hostname, InternalIP).
        let mut spec =
            CertSpec::new(&format!("system:node:{}", node.name), &["system:nodes"], Usage::Server);
        spec.dns = vec![node.name.clone()];
        spec.ips = vec![addr.into()];
        let (crt, key) = ossl.temp_key_and_cert(&work, "kubelet-server", &spec, &shared_ca)?;
        let dated = format!("kubelet-server-{stamp}.pem");
        write_secret(&kpki.join(&dated), format!("{crt}{key}").as_bytes())?;
        let current = kpki.join("kubelet-server-current.pem");
        let _ = fs::remove_file(&current);
        symlink(format!("/var/lib/kubelet/pki/{dated}"), &current)
            .with_context(|| format!("linking {}", current.display()))?;
    }
    if profile.kubelet_serving_signed() {
        let mut serving = CertSpec::new(&node.name, &[], Usage::Server);
        serving.dns = vec![node.name.clone()];
        serving.ips = vec![addr.into()];
        ossl.key_and_cert(&kpki, "kubelet", &serving, Some((&shared_ca.0, &shared_ca.1)), &work)?;
    }

    let kubelet_conf = kubeconfig_files(&read(&ca.0)?, &lb_server);
    write_secret(&etc.join("kubelet.conf"), kubelet_conf.as_bytes())?;
    let mut config = kubelet_config(pki_dir);
    if profile.kubelet_server_tls_bootstrap() {
        // Where kubeadm's (sorted) config.yaml has it, after runtimeRequestTimeout.
        config = config.replace(
            "runtimeRequestTimeout: 0s\n",
            "runtimeRequestTimeout: 0s\nserverTLSBootstrap: true\n",
        );
    }
    write(&kubelet_dir.join("config.yaml"), config.as_bytes())?;
    // The custom profile moves clientCAFile into a drop-in of `--config-dir`, which wins over
    // config.yaml: kubeca must edit the drop-in, not config.yaml.
    let config_dir = if profile.kubelet_config_dir() {
        let d = etc.join("kubelet.conf.d");
        fs::create_dir_all(&d)?;
        write(
            &d.join("50-client-ca.conf"),
            format!(
                "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
                 authentication:\n  x509:\n    clientCAFile: {pki_dir}/ca.crt\n"
            )
            .as_bytes(),
        )?;
        // And the static pod directory elsewhere than kubeadm's, set by a drop-in too.
        write(
            &d.join("40-static-pods.conf"),
            format!(
                "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\n\
                 staticPodPath: {}\n",
                profile.static_pod_path()
            )
            .as_bytes(),
        )?;
        " --config-dir=/etc/kubernetes/kubelet.conf.d"
    } else {
        ""
    };
    write(
        &kubelet_dir.join("kubeadm-flags.env"),
        format!(
            "KUBELET_KUBEADM_ARGS=\"--node-ip={addr} --hostname-override={} \
             --pod-infra-container-image=registry.k8s.io/pause:3.9{config_dir}\"\n",
            node.name
        )
        .as_bytes(),
    )?;
    Ok(())
}

/// The core of one control-plane node in kubeadm's layout under `root` (the node's `/`), for
/// tests that run kubeca's node actions on a directory instead of a testbed: the cluster CA
/// (`ca.crt`, `ca.key`) and the front-proxy CA, the apiserver's serving certificate for
/// `address` (kubeadm's SANs), and `admin.conf` pointing at `server`. Made by the same openssl
/// recipe as the testbed's nodes ([`generate`]), so every builder of a kubeadm node is this
/// one.
pub fn control_plane_core(
    root: &Path,
    algo: KeyAlgorithm,
    address: &str,
    server: &str,
) -> Result<()> {
    let etc = root.join("etc/kubernetes");
    let pki = etc.join("pki");
    fs::create_dir_all(&pki).with_context(|| format!("creating {}", pki.display()))?;
    let work = tempfile::tempdir().context("a scratch directory for openssl")?;
    let ossl = Openssl { algo, work: work.path().to_path_buf() };
    kubeadm_ca(&pki, "ca", "kubernetes", algo)?;
    kubeadm_ca(&pki, "front-proxy-ca", "front-proxy-ca", algo)?;
    let ca = (pki.join("ca.crt"), pki.join("ca.key"));
    let mut apiserver = CertSpec::new("kube-apiserver", &[], Usage::Server);
    apiserver.dns =
        ["kubernetes", "kubernetes.default", "kubernetes.default.svc"].map(String::from).to_vec();
    apiserver.ips = vec!["10.96.0.1".into(), address.into()];
    ossl.key_and_cert(&pki, "apiserver", &apiserver, Some((&ca.0, &ca.1)), work.path())?;
    let admin = CertSpec::new("kubernetes-admin", &["system:masters"], Usage::Client);
    let (crt, key) = ossl.temp_key_and_cert(work.path(), "admin", &admin, &ca)?;
    let conf = kubeconfig_embedded(&read(&ca.0)?, server, "kubernetes-admin", &crt, &key);
    write_secret(&etc.join("admin.conf"), conf.as_bytes())
}

/// A CA `<dir>/<name>-ca.{crt,key}` and a client pair `<dir>/<name>-client.{crt,key}` it signs
/// (CN `cn`, O `orgs`), for tests of how the components authenticate client certificates.
pub fn ca_and_client(dir: &Path, name: &str, cn: &str, orgs: &[&str]) -> Result<()> {
    let ossl = Openssl { algo: KeyAlgorithm::Ecdsa, work: dir.to_path_buf() };
    let ca = CertSpec::new(&format!("{name}-ca"), &[], Usage::Ca);
    ossl.key_and_cert(dir, &format!("{name}-ca"), &ca, None, dir)?;
    let (ca_crt, ca_key) = (dir.join(format!("{name}-ca.crt")), dir.join(format!("{name}-ca.key")));
    let client = CertSpec::new(cn, orgs, Usage::Client);
    ossl.key_and_cert(dir, &format!("{name}-client"), &client, Some((&ca_crt, &ca_key)), dir)
}

/// Runs the openssl CLI with the testbed's key algorithm.
struct Openssl {
    algo: KeyAlgorithm,
    /// Where each certificate's openssl configuration is kept.
    work: PathBuf,
}

impl Openssl {
    /// A new private key at `path`, mode 0600, in kubeadm's PEM form for the algorithm.
    fn key(&self, path: &Path) -> Result<()> {
        let out = path_str(path)?;
        match self.algo {
            // `-traditional`: PKCS#1 "RSA PRIVATE KEY", the form kubeadm writes.
            KeyAlgorithm::Rsa => run_openssl(&["genrsa", "-traditional", "-out", out, "2048"])?,
            KeyAlgorithm::Ecdsa => {
                run_openssl(&["ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", out])?
            }
        }
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .with_context(|| format!("chmod 0600 {}", path.display()))
    }

    /// `<dir>/<name>.key` and `<dir>/<name>.crt`, self-signed when `signer` is None.
    fn key_and_cert(
        &self,
        dir: &Path,
        name: &str,
        spec: &CertSpec,
        signer: Option<(&Path, &Path)>,
        cnf_dir: &Path,
    ) -> Result<()> {
        let key = dir.join(format!("{name}.key"));
        let crt = dir.join(format!("{name}.crt"));
        self.key(&key)?;
        let cnf = cnf_dir.join(format!("{}.cnf", name.replace('/', "-")));
        write(&cnf, openssl_config(spec, self.algo).as_bytes())?;
        let days = if spec.usage == Usage::Ca { CA_DAYS } else { LEAF_DAYS }.to_string();
        let mut args = vec![
            "req",
            "-new",
            "-x509",
            "-config",
            path_str(&cnf)?,
            "-extensions",
            "ext",
            "-key",
            path_str(&key)?,
            "-days",
            &days,
            "-sha256",
            "-out",
            path_str(&crt)?,
        ];
        if let Some((ca_crt, ca_key)) = signer {
            args.extend(["-CA", path_str(ca_crt)?, "-CAkey", path_str(ca_key)?]);
        }
        run_openssl(&args).with_context(|| format!("making {}", crt.display()))
    }

    /// A client key and certificate for a kubeconfig, made in `work` and returned as PEM text.
    fn temp_key_and_cert(
        &self,
        work: &Path,
        name: &str,
        spec: &CertSpec,
        ca: &(PathBuf, PathBuf),
    ) -> Result<(String, String)> {
        self.key_and_cert(work, name, spec, Some((&ca.0, &ca.1)), work)?;
        let crt = read(&work.join(format!("{name}.crt")))?;
        let key_path = work.join(format!("{name}.key"));
        let key = read(&key_path)?;
        // The key lives on only inside the kubeconfig, as with kubeadm.
        fs::remove_file(&key_path).with_context(|| format!("removing {}", key_path.display()))?;
        Ok((crt, key))
    }
}

/// The openssl `req` configuration of one certificate: subject and v3 extensions as kubeadm sets them.
fn openssl_config(spec: &CertSpec, algo: KeyAlgorithm) -> String {
    let mut s = String::from("[req]\ndistinguished_name = dn\nprompt = no\nutf8 = yes\n\n[dn]\n");
    for (i, o) in spec.orgs.iter().enumerate() {
        let _ = writeln!(s, "{i}.O = {o}");
    }
    let _ = writeln!(s, "CN = {}\n\n[ext]", spec.cn);
    // RSA keys may encipher keys; ECDSA keys can only sign (kubeadm does the same).
    let enc = if algo == KeyAlgorithm::Rsa { ", keyEncipherment" } else { "" };
    match spec.usage {
        Usage::Ca => {
            let _ = writeln!(s, "basicConstraints = critical, CA:TRUE");
            let _ = writeln!(s, "keyUsage = critical, digitalSignature{enc}, keyCertSign");
            let _ = writeln!(s, "subjectKeyIdentifier = hash");
        }
        usage => {
            let eku = match usage {
                Usage::Server => "serverAuth",
                Usage::Client => "clientAuth",
                _ => "serverAuth, clientAuth",
            };
            let _ = writeln!(s, "basicConstraints = critical, CA:FALSE");
            let _ = writeln!(s, "keyUsage = critical, digitalSignature{enc}");
            let _ = writeln!(s, "extendedKeyUsage = {eku}");
            let _ = writeln!(s, "authorityKeyIdentifier = keyid");
        }
    }
    let sans: Vec<String> = spec
        .dns
        .iter()
        .map(|d| format!("DNS:{d}"))
        .chain(spec.ips.iter().map(|i| format!("IP:{i}")))
        .collect();
    if !sans.is_empty() {
        let _ = writeln!(s, "subjectAltName = {}", sans.join(", "));
    }
    s
}

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s.as_bytes())
}

/// A kubeconfig with embedded CA, client certificate and key, in kubeadm's layout.
fn kubeconfig_embedded(ca: &str, server: &str, user: &str, crt: &str, key: &str) -> String {
    format!(
        "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {ca}\n    \
         server: {server}\n  name: kubernetes\ncontexts:\n- context:\n    cluster: kubernetes\n    \
         user: {user}\n  name: {user}@kubernetes\ncurrent-context: {user}@kubernetes\n\
         kind: Config\npreferences: {{}}\nusers:\n- name: {user}\n  user:\n    \
         client-certificate-data: {crt}\n    client-key-data: {key}\n",
        ca = b64(ca),
        crt = b64(crt),
        key = b64(key),
    )
}

/// kubelet.conf as TLS bootstrap leaves it: the CA embedded, the client pair in the rotated PEM.
fn kubeconfig_files(ca: &str, server: &str) -> String {
    format!(
        "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {ca}\n    \
         server: {server}\n  name: default-cluster\ncontexts:\n- context:\n    \
         cluster: default-cluster\n    namespace: default\n    user: default-auth\n  \
         name: default-context\ncurrent-context: default-context\nkind: Config\n\
         preferences: {{}}\nusers:\n- name: default-auth\n  user:\n    \
         client-certificate: /var/lib/kubelet/pki/kubelet-client-current.pem\n    \
         client-key: /var/lib/kubelet/pki/kubelet-client-current.pem\n",
        ca = b64(ca),
    )
}

/// /var/lib/kubelet/config.yaml as kubeadm writes it: no `address` (the kubelet serves :10250
/// on 0.0.0.0, `pkg/kubelet/apis/config/v1beta1/defaults.go`) and its healthz on 127.0.0.1
/// (`cmd/kubeadm/app/componentconfigs/kubelet.go`: `kubeletHealthzBindAddress`), its
/// `clientCAFile` in the certificates directory (`certificatesDir`, the same file).
fn kubelet_config(pki_dir: &str) -> String {
    let text = "apiVersion: kubelet.config.k8s.io/v1beta1
authentication:
  anonymous:
    enabled: false
  webhook:
    cacheTTL: 0s
    enabled: true
  x509:
    clientCAFile: PKI_DIR/ca.crt
authorization:
  mode: Webhook
  webhook:
    cacheAuthorizedTTL: 0s
    cacheUnauthorizedTTL: 0s
cgroupDriver: systemd
clusterDNS:
- 10.96.0.10
clusterDomain: cluster.local
containerRuntimeEndpoint: \"\"
cpuManagerReconcilePeriod: 0s
evictionPressureTransitionPeriod: 0s
fileCheckFrequency: 0s
healthzBindAddress: 127.0.0.1
healthzPort: 10248
httpCheckFrequency: 0s
imageMaximumGCAge: 0s
imageMinimumGCAge: 0s
kind: KubeletConfiguration
logging:
  flushFrequency: 0
  options:
    json:
      infoBufferSize: \"0\"
  verbosity: 0
memorySwap: {}
nodeStatusReportFrequency: 0s
nodeStatusUpdateFrequency: 0s
rotateCertificates: true
runtimeRequestTimeout: 0s
shutdownGracePeriod: 0s
shutdownGracePeriodCriticalPods: 0s
staticPodPath: /etc/kubernetes/manifests
streamingConnectionIdleTimeout: 0s
syncFrequency: 0s
volumeStatsAggPeriod: 0s
";
    text.replace("PKI_DIR", pki_dir)
}

/// The hardened profile's `--authentication-config` ([`Profile::anonymous_by_config`]).
pub const AUTHENTICATION_CONFIG: &str = "/etc/kubernetes/authentication-config.yaml";

/// Its text: anonymous requests only on the health paths (KEP-4633; the field names of
/// `AnonymousAuthConfig` in staging/src/k8s.io/apiserver/pkg/apis/apiserver/types.go; v1beta1,
/// as 1.32 and 1.33 read it).
const AUTHENTICATION_CONFIG_TEXT: &str = "apiVersion: apiserver.config.k8s.io/v1beta1
kind: AuthenticationConfiguration
anonymous:
  enabled: true
  conditions:
  - path: /livez
  - path: /readyz
  - path: /healthz
";

/// A static pod's liveness and startup probe.
enum Probe<'a> {
    /// `httpGet` on host, port, path.
    Http(&'a str, u16, &'a str),
    /// `tcpSocket` on host, port.
    Tcp(&'a str, u16),
}

/// A static pod manifest in kubeadm's shape: one container, hostNetwork, hostPath volumes.
struct StaticPod<'a> {
    name: &'a str,
    image: String,
    command: Vec<String>,
    annotations: Vec<(String, String)>,
    /// (volume name, host path, mount path, hostPath type, read-only)
    volumes: Vec<(&'a str, &'a str, &'a str, &'a str, bool)>,
    probe: Option<Probe<'a>>,
    cpu: &'a str,
}

impl StaticPod<'_> {
    fn render(&self) -> String {
        let mut s = String::from("apiVersion: v1\nkind: Pod\nmetadata:\n");
        if !self.annotations.is_empty() {
            s.push_str("  annotations:\n");
            for (k, v) in &self.annotations {
                let _ = writeln!(s, "    {k}: {v}");
            }
        }
        let tier = "control-plane";
        let _ = write!(
            s,
            "  creationTimestamp: null\n  labels:\n    component: {name}\n    tier: {tier}\n  \
             name: {name}\n  namespace: kube-system\nspec:\n  containers:\n  - command:\n",
            name = self.name
        );
        for c in &self.command {
            let _ = writeln!(s, "    - {c}");
        }
        let _ = writeln!(s, "    image: {}\n    imagePullPolicy: IfNotPresent", self.image);
        // kubeadm's liveness and startup probes (`LivenessProbe`, `StartupProbe` in
        // cmd/kubeadm/app/util/staticpod/utils.go): 8 failures 10 s apart, 24 for startup (its
        // 4 min control-plane timeout), after 10 s, each given 15 s.
        if let Some(probe) = &self.probe {
            let scheme = if self.name == "etcd" { "HTTP" } else { "HTTPS" };
            for (kind, failures, delay) in [("livenessProbe", 8, 10), ("startupProbe", 24, 10)] {
                let action = match probe {
                    Probe::Http(host, port, path) => format!(
                        "      httpGet:\n        host: {host}\n        path: {path}\n        \
                         port: {port}\n        scheme: {scheme}\n"
                    ),
                    Probe::Tcp(host, port) => {
                        format!("      tcpSocket:\n        host: {host}\n        port: {port}\n")
                    }
                };
                let _ = write!(
                    s,
                    "    {kind}:\n      failureThreshold: {failures}\n{action}      \
                     initialDelaySeconds: {delay}\n      periodSeconds: 10\n      \
                     timeoutSeconds: 15\n"
                );
            }
        }
        let _ = write!(
            s,
            "    name: {}\n    resources:\n      requests:\n        cpu: {}\n    volumeMounts:\n",
            self.name, self.cpu
        );
        for (vname, _, mount, _, ro) in &self.volumes {
            let _ = writeln!(s, "    - mountPath: {mount}\n      name: {vname}");
            if *ro {
                s.push_str("      readOnly: true\n");
            }
        }
        s.push_str(
            "  hostNetwork: true\n  priority: 2000001000\n  priorityClassName: system-node-critical\n  \
             securityContext:\n    seccompProfile:\n      type: RuntimeDefault\n  volumes:\n",
        );
        for (vname, host, _, ty, _) in &self.volumes {
            let _ = writeln!(
                s,
                "  - hostPath:\n      path: {host}\n      type: {ty}\n    name: {vname}"
            );
        }
        s.push_str("status: {}\n");
        s
    }
}

const CA_CERT_VOLUMES: [(&str, &str, &str, &str, bool); 4] = [
    ("ca-certs", "/etc/ssl/certs", "/etc/ssl/certs", "DirectoryOrCreate", true),
    (
        "etc-ca-certificates",
        "/etc/ca-certificates",
        "/etc/ca-certificates",
        "DirectoryOrCreate",
        true,
    ),
    (
        "usr-local-share-ca-certificates",
        "/usr/local/share/ca-certificates",
        "/usr/local/share/ca-certificates",
        "DirectoryOrCreate",
        true,
    ),
    (
        "usr-share-ca-certificates",
        "/usr/share/ca-certificates",
        "/usr/share/ca-certificates",
        "DirectoryOrCreate",
        true,
    ),
];

fn flags(program: &str, flags: &[(&str, String)]) -> Vec<String> {
    std::iter::once(program.to_string())
        .chain(flags.iter().map(|(k, v)| format!("--{k}={v}")))
        .collect()
}

/// kube-apiserver.yaml with kubeadm's flags (`cmd/kubeadm/app/phases/controlplane/manifests.go`,
/// `getAPIServerCommand`): no `--bind-address` (it serves on 0.0.0.0), and a stacked apiserver
/// reaches only its own etcd member, `--etcd-servers=https://127.0.0.1:2379`, so an etcd restart
/// takes its node's apiserver down with it, as on a real control plane.
/// kubeadm sets no `--kubelet-certificate-authority`: the custom profile does, its kubelet
/// serving certificates being signed by the cluster CA, so the apiserver→kubelet edge is checked.
fn apiserver_manifest(node: &NodeSpec, profile: Profile) -> String {
    let a = &node.address;
    let p = profile.pki_dir();
    let mut args = vec![
        ("advertise-address", a.clone()),
        ("allow-privileged", "true".into()),
        ("authorization-mode", "Node,RBAC".into()),
        ("client-ca-file", format!("{p}/ca.crt")),
        ("enable-admission-plugins", "NodeRestriction".into()),
        ("enable-bootstrap-token-auth", "true".into()),
        ("etcd-cafile", format!("{p}/etcd/ca.crt")),
        ("etcd-certfile", format!("{p}/apiserver-etcd-client.crt")),
        ("etcd-keyfile", format!("{p}/apiserver-etcd-client.key")),
        ("etcd-servers", "https://127.0.0.1:2379".into()),
        ("kubelet-client-certificate", format!("{p}/apiserver-kubelet-client.crt")),
        ("kubelet-client-key", format!("{p}/apiserver-kubelet-client.key")),
        ("kubelet-preferred-address-types", "InternalIP,ExternalIP,Hostname".into()),
        ("proxy-client-cert-file", format!("{p}/front-proxy-client.crt")),
        ("proxy-client-key-file", format!("{p}/front-proxy-client.key")),
        ("requestheader-allowed-names", "front-proxy-client".into()),
        ("requestheader-client-ca-file", format!("{p}/front-proxy-ca.crt")),
        ("requestheader-extra-headers-prefix", "X-Remote-Extra-".into()),
        ("requestheader-group-headers", "X-Remote-Group".into()),
        ("requestheader-username-headers", "X-Remote-User".into()),
        ("secure-port", "6443".into()),
        ("service-account-issuer", "https://kubernetes.default.svc.cluster.local".into()),
        ("service-account-key-file", format!("{p}/sa.pub")),
        ("service-account-signing-key-file", format!("{p}/sa.key")),
        ("service-cluster-ip-range", "10.96.0.0/12".into()),
        ("tls-cert-file", format!("{p}/apiserver.crt")),
        ("tls-private-key-file", format!("{p}/apiserver.key")),
    ];
    if profile.kubelet_serving_signed() {
        args.push(("kubelet-certificate-authority", format!("{p}/ca.crt")));
    }
    let by_config = profile.anonymous_by_config(&node.name);
    if by_config {
        args.push(("authentication-config", AUTHENTICATION_CONFIG.into()));
    } else if profile.anonymous_denied() {
        args.push(("anonymous-auth", "false".into()));
    }
    args.sort();
    let command = flags("kube-apiserver", &args);
    let mut volumes = CA_CERT_VOLUMES.to_vec();
    volumes.push(("k8s-certs", p, p, "DirectoryOrCreate", true));
    if by_config {
        // As an operator adds it through kubeadm's `apiServer.extraVolumes`.
        volumes.push((
            "authentication-config",
            AUTHENTICATION_CONFIG,
            AUTHENTICATION_CONFIG,
            "File",
            true,
        ));
    }
    StaticPod {
        name: "kube-apiserver",
        image: format!("registry.k8s.io/kube-apiserver:{KUBERNETES_VERSION}"),
        command,
        annotations: vec![(
            "kubeadm.kubernetes.io/kube-apiserver.advertise-address.endpoint".into(),
            format!("{a}:6443"),
        )],
        volumes,
        probe: Some(if profile.anonymous_denied() && !by_config {
            // No anonymous access, so no HTTP probe without credentials passes (kube-probe sends
            // none: `pkg/probe/http/http.go`): a TCP connect, as hardened clusters change them to.
            Probe::Tcp(a, 6443)
        } else {
            Probe::Http(a, 6443, "/livez")
        }),
        cpu: "250m",
    }
    .render()
}

/// kube-controller-manager.yaml with kubeadm's flags (`getControllerManagerCommand`): its
/// secure port on the node's loopback only, and kubeadm's probe there.
fn controller_manager_manifest(p: &str) -> String {
    let conf = "/etc/kubernetes/controller-manager.conf";
    let command = flags(
        "kube-controller-manager",
        &[
            ("allocate-node-cidrs", "true".into()),
            ("authentication-kubeconfig", conf.into()),
            ("authorization-kubeconfig", conf.into()),
            ("bind-address", "127.0.0.1".into()),
            ("client-ca-file", format!("{p}/ca.crt")),
            ("cluster-cidr", "10.244.0.0/16".into()),
            ("cluster-name", "kubernetes".into()),
            ("cluster-signing-cert-file", format!("{p}/ca.crt")),
            ("cluster-signing-key-file", format!("{p}/ca.key")),
            ("controllers", "*,bootstrapsigner,tokencleaner".into()),
            ("kubeconfig", conf.into()),
            ("leader-elect", "true".into()),
            ("requestheader-client-ca-file", format!("{p}/front-proxy-ca.crt")),
            ("root-ca-file", format!("{p}/ca.crt")),
            ("service-account-private-key-file", format!("{p}/sa.key")),
            ("service-cluster-ip-range", "10.96.0.0/12".into()),
            ("use-service-account-credentials", "true".into()),
        ],
    );
    let mut volumes = CA_CERT_VOLUMES.to_vec();
    volumes.push((
        "flexvolume-dir",
        "/usr/libexec/kubernetes/kubelet-plugins/volume/exec",
        "/usr/libexec/kubernetes/kubelet-plugins/volume/exec",
        "DirectoryOrCreate",
        false,
    ));
    volumes.push(("k8s-certs", p, p, "DirectoryOrCreate", true));
    volumes.push(("kubeconfig", conf, conf, "FileOrCreate", true));
    StaticPod {
        name: "kube-controller-manager",
        image: format!("registry.k8s.io/kube-controller-manager:{KUBERNETES_VERSION}"),
        command,
        annotations: vec![],
        volumes,
        probe: Some(Probe::Http("127.0.0.1", 10257, "/healthz")),
        cpu: "200m",
    }
    .render()
}

/// kube-scheduler.yaml with kubeadm's flags (`getSchedulerCommand`,
/// cmd/kubeadm/app/phases/controlplane/manifests.go): no `--client-ca-file`, so the scheduler
/// reads its client CA from extension-apiserver-authentication and follows it (upstream step 6
/// has no flag to change). The custom profile gives it one.
fn scheduler_manifest(profile: Profile) -> String {
    let conf = "/etc/kubernetes/scheduler.conf";
    let mut args = vec![
        ("authentication-kubeconfig", conf.into()),
        ("authorization-kubeconfig", conf.into()),
        ("bind-address", "127.0.0.1".into()),
    ];
    if profile.scheduler_client_ca_file() {
        args.push(("client-ca-file", format!("{}/ca.crt", profile.pki_dir())));
    }
    args.extend([("kubeconfig", conf.into()), ("leader-elect", "true".into())]);
    let command = flags("kube-scheduler", &args);
    StaticPod {
        name: "kube-scheduler",
        image: format!("registry.k8s.io/kube-scheduler:{KUBERNETES_VERSION}"),
        command,
        annotations: vec![],
        volumes: vec![
            ("k8s-certs", profile.pki_dir(), profile.pki_dir(), "DirectoryOrCreate", true),
            ("kubeconfig", conf, conf, "FileOrCreate", true),
        ],
        probe: Some(Probe::Http("127.0.0.1", 10259, "/healthz")),
        cpu: "100m",
    }
    .render()
}

/// etcd.yaml with kubeadm's flags (`cmd/kubeadm/app/phases/etcd/local.go`, `getEtcdCommand`):
/// peer and client mutual TLS, one member per control plane, clients on the node's loopback and
/// address, metrics (and kubeadm's probe) on the loopback only.
/// All members start together with `--initial-cluster-state=new` (kubeadm adds them one by one;
/// the resulting cluster is the same).
fn etcd_manifest(node: &NodeSpec, control_planes: &[&NodeSpec], pki_dir: &str) -> String {
    let a = &node.address;
    let p = &format!("{pki_dir}/etcd");
    let initial: Vec<String> =
        control_planes.iter().map(|n| format!("{}=https://{}:2380", n.name, n.address)).collect();
    let command = flags(
        "etcd",
        &[
            ("advertise-client-urls", format!("https://{a}:2379")),
            ("cert-file", format!("{p}/server.crt")),
            ("client-cert-auth", "true".into()),
            ("data-dir", "/var/lib/etcd".into()),
            ("experimental-initial-corrupt-check", "true".into()),
            ("experimental-watch-progress-notify-interval", "5s".into()),
            ("initial-advertise-peer-urls", format!("https://{a}:2380")),
            ("initial-cluster", initial.join(",")),
            ("initial-cluster-state", "new".into()),
            ("initial-cluster-token", "kubeca-testbed".into()),
            ("key-file", format!("{p}/server.key")),
            ("listen-client-urls", format!("https://127.0.0.1:2379,https://{a}:2379")),
            ("listen-metrics-urls", "http://127.0.0.1:2381".into()),
            ("listen-peer-urls", format!("https://{a}:2380")),
            ("name", node.name.clone()),
            ("peer-cert-file", format!("{p}/peer.crt")),
            ("peer-client-cert-auth", "true".into()),
            ("peer-key-file", format!("{p}/peer.key")),
            ("peer-trusted-ca-file", format!("{p}/ca.crt")),
            ("snapshot-count", "10000".into()),
            ("trusted-ca-file", format!("{p}/ca.crt")),
        ],
    );
    StaticPod {
        name: "etcd",
        image: ETCD_IMAGE.into(),
        command,
        annotations: vec![(
            "kubeadm.kubernetes.io/etcd.advertise-client-urls".into(),
            format!("https://{a}:2379"),
        )],
        volumes: vec![
            ("etcd-certs", p, p, "DirectoryOrCreate", false),
            ("etcd-data", "/var/lib/etcd", "/var/lib/etcd", "DirectoryOrCreate", false),
        ],
        probe: Some(Probe::Http("127.0.0.1", 2381, "/health?exclude=NOSPACE&serializable=true")),
        cpu: "100m",
    }
    .render()
}

fn run_openssl(args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .context("running openssl (install the openssl package: scripts/setup.sh)")?;
    if !out.status.success() {
        bail!("openssl {} failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().with_context(|| format!("path {} is not UTF-8", p.display()))
}

fn read(p: &Path) -> Result<String> {
    fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))
}

fn write(p: &Path, data: &[u8]) -> Result<()> {
    if let Some(parent) = p.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::write(p, data).with_context(|| format!("writing {}", p.display()))
}

/// Writes a file holding key material, mode 0600 (kubeadm writes kubeconfigs 0600 too).
fn write_secret(p: &Path, data: &[u8]) -> Result<()> {
    write(p, data)?;
    fs::set_permissions(p, fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 0600 {}", p.display()))
}

/// Copies a file, keeping 0600 for keys.
fn copy(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    if to.extension().is_some_and(|e| e == "key") {
        fs::set_permissions(to, fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// Every certificate of a node and the CA file that must verify it, as paths inside the node
/// (`/etc/kubernetes/...`, `/var/lib/kubelet/...`); used by the tests' `openssl verify`. The
/// kubelet's self-signed serving pair (kubeadm's layout) has no CA of the cluster's.
pub fn certificates_and_cas(control_plane: bool, profile: Profile) -> Vec<(String, String)> {
    let p = profile.pki_dir();
    let ca = "ca.crt";
    let fp = "front-proxy-ca.crt";
    let etcd = "etcd/ca.crt";
    let mut v = vec![(ca, ca)];
    if control_plane {
        v.extend([
            (fp, fp),
            (etcd, etcd),
            ("apiserver.crt", ca),
            ("apiserver-kubelet-client.crt", ca),
            ("front-proxy-client.crt", fp),
            ("etcd/server.crt", etcd),
            ("etcd/peer.crt", etcd),
            ("etcd/healthcheck-client.crt", etcd),
            ("apiserver-etcd-client.crt", etcd),
        ]);
    }
    let mut v: Vec<(String, String)> =
        v.into_iter().map(|(c, a)| (format!("{p}/{c}"), format!("{p}/{a}"))).collect();
    let ca = format!("{p}/{ca}");
    v.insert(1, ("/var/lib/kubelet/pki/kubelet-client-current.pem".into(), ca.clone()));
    if profile.kubelet_serving_signed() {
        v.insert(2, ("/var/lib/kubelet/pki/kubelet.crt".into(), ca.clone()));
    }
    if profile.kubelet_server_tls_bootstrap() {
        v.insert(2, ("/var/lib/kubelet/pki/kubelet-server-current.pem".into(), ca));
    }
    v
}

/// `<dir>/<name>.crt` and `.key`: a CA as kubeadm makes it (`certutil::kubeadm_ca`).
fn kubeadm_ca(dir: &Path, name: &str, common_name: &str, algo: KeyAlgorithm) -> Result<()> {
    let spec = match algo {
        KeyAlgorithm::Rsa => actions::pki::KeySpec::Rsa { bits: 2048 },
        KeyAlgorithm::Ecdsa => actions::pki::KeySpec::EcdsaP256,
    };
    let ca = super::certutil::kubeadm_ca(common_name, spec, jiff::Timestamp::now())?;
    write(&dir.join(format!("{name}.crt")), ca.cert_pem.as_bytes())?;
    write_secret(&dir.join(format!("{name}.key")), ca.key_pem.as_bytes())
}
