//! kubeadm's vocabulary in one place: component names, kubeadm's default paths and ports, the
//! trust model's slot names, the Kubernetes objects the rotation touches, and kubeca's own step
//! ids, outcome keys and file names.
//!
//! A default here is what kubeadm writes when nothing says otherwise, and only discovery
//! ([`crate::discovery`]) reads one: it fills a node's [`crate::trust::NodeLayout`] from the
//! node's manifests, kubelet settings and kubeconfigs, falling back on a default only where the
//! node names nothing. Everything downstream (the trust model, the plan, the runner, the probes)
//! uses the layout, so a cluster laid out differently is rotated where its files really are.
//! The one other reader is [`crate::trust::NodeLayout`]'s `Default`, which stands for a node of a
//! topology recorded before kubeca kept layouts: such a topology was made on kubeadm's defaults.

/// Component names, as the kubelet's static pods run them and as edges and errors name them.
pub mod component {
    /// kube-apiserver.
    pub const APISERVER: &str = "kube-apiserver";
    /// kube-controller-manager.
    pub const CONTROLLER_MANAGER: &str = "kube-controller-manager";
    /// kube-scheduler.
    pub const SCHEDULER: &str = "kube-scheduler";
    /// cloud-controller-manager, when it runs as a static pod.
    pub const CLOUD_CONTROLLER_MANAGER: &str = "cloud-controller-manager";
    /// The control-plane static pods kubeca changes, in the order kubeadm starts them.
    pub const CONTROL_PLANE: [&str; 4] =
        [APISERVER, CONTROLLER_MANAGER, SCHEDULER, CLOUD_CONTROLLER_MANAGER];
    /// The kubelet.
    pub const KUBELET: &str = "kubelet";
    /// kubectl with a node's admin kubeconfig.
    pub const ADMIN: &str = "admin";
    /// A node joining with `kube-public/cluster-info`.
    pub const JOINER: &str = "joiner";

    /// A pod that talks to the apiserver with in-cluster config, as the trust model names it.
    pub fn pod(namespace: &str, name: &str) -> String {
        format!("pod/{namespace}/{name}")
    }

    /// An aggregated API server, as the trust model names it.
    pub fn aggregated(namespace: &str, name: &str) -> String {
        format!("aggregated/{namespace}/{name}")
    }
}

/// kubeadm's default paths: discovery's fallbacks where a node names nothing else.
pub mod path {
    /// The kubelet's static pod directory (`staticPodPath`).
    pub const STATIC_POD_PATH: &str = "/etc/kubernetes/manifests";
    /// The cluster CA certificate.
    pub const CA_CERT: &str = "/etc/kubernetes/pki/ca.crt";
    /// The cluster CA key.
    pub const CA_KEY: &str = "/etc/kubernetes/pki/ca.key";
    /// The front-proxy CA certificate.
    pub const FRONT_PROXY_CA_CERT: &str = "/etc/kubernetes/pki/front-proxy-ca.crt";
    /// The apiserver's serving certificate.
    pub const APISERVER_CERT: &str = "/etc/kubernetes/pki/apiserver.crt";
    /// The apiserver's client certificate towards kubelets.
    pub const APISERVER_KUBELET_CLIENT_CERT: &str =
        "/etc/kubernetes/pki/apiserver-kubelet-client.crt";
    /// The apiserver's front-proxy client certificate towards aggregated servers.
    pub const FRONT_PROXY_CLIENT_CERT: &str = "/etc/kubernetes/pki/front-proxy-client.crt";
    /// The admin kubeconfig.
    pub const ADMIN_CONF: &str = "/etc/kubernetes/admin.conf";
    /// The break-glass admin kubeconfig (only on the first control-plane node).
    pub const SUPER_ADMIN_CONF: &str = "/etc/kubernetes/super-admin.conf";
    /// The controller-manager's kubeconfig.
    pub const CONTROLLER_MANAGER_CONF: &str = "/etc/kubernetes/controller-manager.conf";
    /// The scheduler's kubeconfig.
    pub const SCHEDULER_CONF: &str = "/etc/kubernetes/scheduler.conf";
    /// Kubeconfigs kubeadm writes on a control-plane node.
    pub const CONTROL_PLANE_KUBECONFIGS: [&str; 4] =
        [ADMIN_CONF, SUPER_ADMIN_CONF, CONTROLLER_MANAGER_CONF, SCHEDULER_CONF];
    /// The kubelet's kubeconfig.
    pub const KUBELET_CONF: &str = "/etc/kubernetes/kubelet.conf";
    /// The kubelet's config file.
    pub const KUBELET_CONFIG: &str = "/var/lib/kubelet/config.yaml";
    /// The kubelet's flags as kubeadm writes them.
    pub const KUBELET_FLAGS_ENV: &str = "/var/lib/kubelet/kubeadm-flags.env";
    /// systemd drop-ins that carry `--config` and `--kubeconfig` for the kubelet.
    pub const KUBELET_DROPINS: [&str; 2] = [
        "/etc/systemd/system/kubelet.service.d/10-kubeadm.conf",
        "/usr/lib/systemd/system/kubelet.service.d/10-kubeadm.conf",
    ];
    /// The files of `KUBELET_EXTRA_ARGS`, which kubeadm's drop-in passes last (so its flags win):
    /// `EnvironmentFile=-/etc/default/kubelet` (deb) and `-/etc/sysconfig/kubelet` (rpm), in
    /// kubernetes/release `cmd/krel/templates/latest/kubeadm/10-kubeadm.conf`.
    pub const KUBELET_EXTRA_ARGS_FILES: [&str; 2] =
        ["/etc/default/kubelet", "/etc/sysconfig/kubelet"];
    /// Whether `path` is one of the environment files the kubelet's unit reads its flags from
    /// at every start ([`KUBELET_FLAGS_ENV`], [`KUBELET_EXTRA_ARGS_FILES`]), not a config.
    pub fn kubelet_flag_env_file(path: &str) -> bool {
        path == KUBELET_FLAGS_ENV || KUBELET_EXTRA_ARGS_FILES.contains(&path)
    }
    /// The kubelet's certificate directory (`--cert-dir`).
    pub const KUBELET_CERT_DIR: &str = "/var/lib/kubelet/pki";
    /// The kubelet's rotating client certificate, in its certificate directory.
    pub const KUBELET_CLIENT_CURRENT_FILE: &str = "kubelet-client-current.pem";
    /// The kubelet's rotating client certificate where kubeadm's kubelet keeps it.
    pub const KUBELET_CLIENT_CURRENT: &str = "/var/lib/kubelet/pki/kubelet-client-current.pem";
    /// The kubelet's self-signed serving certificate, in its certificate directory.
    pub const KUBELET_SERVING_FILE: &str = "kubelet.crt";
    /// The serving certificate the kubelet's certificate manager keeps with
    /// `serverTLSBootstrap` (certificate and key), in its certificate directory.
    pub const KUBELET_SERVER_CURRENT_FILE: &str = "kubelet-server-current.pem";
    /// The kubelet's serving certificate where kubeadm's kubelet keeps it.
    pub const KUBELET_SERVING: &str = "/var/lib/kubelet/pki/kubelet.crt";

    /// A static pod's manifest in `static_pod_path`: kubeadm names each after its component.
    pub fn manifest(static_pod_path: &str, component: &str) -> String {
        format!("{}/{component}.yaml", static_pod_path.trim_end_matches('/'))
    }

    /// The directory part of `path` (`/` for a file at the root, `.` for a bare name).
    pub fn dir_of(path: &str) -> String {
        match path.rsplit_once('/') {
            Some(("", _)) => "/".into(),
            Some((dir, _)) => dir.into(),
            None => ".".into(),
        }
    }

    /// The key kubeadm keeps beside a CA certificate (`front-proxy-ca.crt` →
    /// `front-proxy-ca.key`): nothing loads the front-proxy CA's key, so no flag names it.
    pub fn key_beside(cert: &str) -> String {
        format!("{}.key", cert.trim_end_matches(".crt"))
    }
}

/// kubeadm's default ports: discovery's fallbacks where no flag or setting names another.
pub mod port {
    /// kube-apiserver `--secure-port`.
    pub const APISERVER: u16 = 6443;
    /// kube-controller-manager `--secure-port`.
    pub const CONTROLLER_MANAGER: u16 = 10257;
    /// kube-scheduler `--secure-port`.
    pub const SCHEDULER: u16 = 10259;
    /// cloud-controller-manager `--secure-port` (`k8s.io/cloud-provider/ports.go`:
    /// `CloudControllerManagerPort`).
    pub const CLOUD_CONTROLLER_MANAGER: u16 = 10258;
    /// The kubelet's `port`.
    pub const KUBELET: u16 = 10250;
}

/// The trust model's named inputs of a component ([`crate::trust::Slot`]).
pub mod slot {
    /// The certificate a server presents.
    pub const SERVING_CERT: &str = "serving-cert";
    /// The CAs a server accepts client certificates of.
    pub const CLIENT_CA: &str = "client-ca";
    /// The apiserver's client certificate towards kubelets.
    pub const KUBELET_CLIENT_CERT: &str = "kubelet-client-cert";
    /// The apiserver's front-proxy client certificate.
    pub const PROXY_CLIENT_CERT: &str = "proxy-client-cert";
    /// The CAs the front proxy's client certificate is checked against.
    pub const REQUESTHEADER_CA: &str = "requestheader-ca";
    /// The CAs the apiserver checks kubelets' serving certificates against.
    pub const KUBELET_CA: &str = "kubelet-ca";
    /// A kubeconfig's `certificate-authority-data`.
    pub const KUBECONFIG_CA: &str = "kubeconfig-ca";
    /// A kubeconfig's client certificate.
    pub const CLIENT_CERT: &str = "client-cert";
    /// The controller-manager's root CA, which it publishes in `kube-root-ca.crt`.
    pub const ROOT_CA: &str = "root-ca";
    /// The controller-manager's signing certificate.
    pub const SIGNING_CERT: &str = "signing-cert";
    /// The CA a pod or a joining node trusts.
    pub const CA: &str = "ca";
}

/// The Kubernetes objects the rotation reads and writes.
pub mod object {
    /// The namespace of the control plane.
    pub const KUBE_SYSTEM: &str = "kube-system";
    /// The namespace of `cluster-info`.
    pub const KUBE_PUBLIC: &str = "kube-public";
    /// The namespaces every cluster has, each with its `kube-root-ca.crt`.
    pub const NAMESPACES: [&str; 4] = ["default", KUBE_SYSTEM, KUBE_PUBLIC, "kube-node-lease"];
    /// The ConfigMap the controller-manager publishes its root CA in, in every namespace.
    pub const ROOT_CA: &str = "kube-root-ca.crt";
    /// The ConfigMap in `kube-public` that joining nodes trust.
    pub const CLUSTER_INFO: &str = "cluster-info";
    /// The ConfigMap in `kube-system` the apiserver publishes its request-header CA in.
    pub const EXTENSION_APISERVER_AUTHENTICATION: &str = "extension-apiserver-authentication";
}

/// kubeca's own files, beside the CA they extend in the node's discovered pki directory.
pub mod file {
    /// Old and new cluster CA.
    pub const CA_BUNDLE: &str = "ca-bundle.crt";
    /// Old and new front-proxy CA.
    pub const FRONT_PROXY_CA_BUNDLE: &str = "front-proxy-ca-bundle.crt";
    /// The new cluster CA.
    pub const NEW_CA_CERT: &str = "ca-new.crt";
    /// The new cluster CA's key.
    pub const NEW_CA_KEY: &str = "ca-new.key";
    /// The new front-proxy CA.
    pub const NEW_FRONT_PROXY_CA_CERT: &str = "front-proxy-ca-new.crt";
    /// The new front-proxy CA's key.
    pub const NEW_FRONT_PROXY_CA_KEY: &str = "front-proxy-ca-new.key";
    /// Where a parked static pod manifest waits while its pod is stopped: outside every static
    /// pod directory, so the kubelet stops the pod.
    pub const PARKING: &str = "/etc/kubernetes/kubeca-parked";
}

/// Step ids that one part of kubeca records and another looks up.
pub mod step {
    /// The name standing for the operator's machine in backups (not a valid node name).
    pub const OPERATOR: &str = "@operator";
    /// The step that makes the new cluster CA.
    pub const NEW_CA: &str = "prepare/new-ca";
    /// The step that makes the new front-proxy CA.
    pub const NEW_FRONT_PROXY_CA: &str = "prepare/new-front-proxy-ca";
    /// What every apiserver switch's id starts with.
    pub const SWITCH_APISERVER: &str = "switch/apiserver/";

    /// The preflight backup of `node` (`None`: the operator's machine).
    pub fn backup(node: Option<&str>) -> String {
        format!("preflight/backup/{}", node.unwrap_or(OPERATOR))
    }

    /// The switch of `node`'s apiserver to its new-CA certificates.
    pub fn switch_apiserver(node: &str) -> String {
        format!("{SWITCH_APISERVER}{node}")
    }
}

/// Keys of step outcomes that a later step reads.
pub mod outcome {
    /// A backup's value for a file that did not exist.
    pub const ABSENT: &str = "absent";
    /// The new CA's certificate (a blob digest).
    pub const CERT: &str = "cert";
    /// The new CA's key (a blob digest).
    pub const KEY: &str = "key";
    /// The old CA's certificate as read before anything changed (a blob digest).
    pub const OLD_CERT: &str = "old-cert";
    /// When a component was restarted.
    pub const RESTARTED_AT: &str = "restarted-at";
}
