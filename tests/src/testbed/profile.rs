//! Testbed profiles: which real cluster the nodes are laid out as (`kubeca-testbed up
//! --profile`). TESTBED.md says what each mirrors and where the simulation still differs.

use std::fmt;

/// How the nodes are laid out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Profile {
    /// `kubeadm init`/`join` with kubeadm's defaults: kube-scheduler without `--client-ca-file`
    /// (it follows extension-apiserver-authentication), kubelets serving the self-signed pair
    /// they make at their first start, apiservers without `--kubelet-certificate-authority`
    /// (so they do not verify kubelets).
    #[default]
    Kubeadm,
    /// A layout operators customise kubeadm into: kubelet serving certificates signed by the
    /// cluster CA and checked by the apiservers' `--kubelet-certificate-authority`, and
    /// kube-scheduler given `--client-ca-file` (upstream step 6 then has a flag to change), the
    /// kubelet's `clientCAFile` and `staticPodPath` set by `--config-dir` drop-ins, and the
    /// certificates in `/etc/kubernetes/ssl` ([`Profile::pki_dir`]).
    Custom,
    /// kubeadm's layout hardened as the CIS benchmark asks (1.2.1): every apiserver runs with
    /// `--anonymous-auth=false`, so an unauthenticated request gets 401 on every path, the
    /// health checks included. kubeadm's stock HTTP probes would then fail and the kubelet would
    /// restart the apiserver in a loop (kubeadm#798, kubernetes#43784), so its liveness and
    /// startup probes are changed to match: a TCP connect to the secure port, which needs no
    /// credentials (`pkg/probe/tcp/tcp.go`). Its third control plane is hardened the 1.32 way
    /// instead ([`Profile::anonymous_by_config`]). Every kubelet gets `--client-ca-file` from
    /// `KUBELET_EXTRA_ARGS` in `/etc/default/kubelet` (CIS 4.2.3), which wins over its config.
    /// And its kubelets rotate their serving certificates (CIS 4.2.12,
    /// `RotateKubeletServerCertificate`): `serverTLSBootstrap: true`
    /// ([`Profile::kubelet_server_tls_bootstrap`]).
    Hardened,
}

impl Profile {
    /// Kubelet serving certificates signed by the cluster CA, and apiservers that verify them.
    pub fn kubelet_serving_signed(self) -> bool {
        self == Profile::Custom
    }

    /// kube-scheduler reads its client CA from `--client-ca-file`.
    pub fn scheduler_client_ca_file(self) -> bool {
        self == Profile::Custom
    }

    /// The kubelet takes `clientCAFile` from a `--config-dir` drop-in
    /// (`/etc/kubernetes/kubelet.conf.d/50-client-ca.conf`), which overrides its config file.
    pub fn kubelet_config_dir(self) -> bool {
        self == Profile::Custom
    }

    /// The apiservers deny anonymous requests: with `--anonymous-auth=false` and TCP probes, or
    /// (on [`Profile::anonymous_by_config`]'s nodes) allowed only on the health paths.
    pub fn anonymous_denied(self) -> bool {
        self == Profile::Hardened
    }

    /// `node`'s apiserver is hardened the way 1.32 allows (`AnonymousAuthConfigurableEndpoints`,
    /// beta): no `--anonymous-auth` flag but `--authentication-config`, whose `anonymous` section
    /// allows unauthenticated requests on `/livez`, `/readyz` and `/healthz` only, so kubeadm's
    /// stock probes still pass. The hardened profile's third control plane; the others use the
    /// flag.
    pub fn anonymous_by_config(self, node: &str) -> bool {
        self == Profile::Hardened && node == "cp-3"
    }

    /// The kubelet's `staticPodPath`: kubeadm's `/etc/kubernetes/manifests`
    /// (`cmd/kubeadm/app/constants/constants.go`, `ManifestsSubDirName`), or in the custom
    /// profile `/etc/kubernetes/pods`, set by a `--config-dir` drop-in
    /// (`40-static-pods.conf`), so kubeca finds the manifests only by following the kubelet's
    /// own configuration.
    pub fn static_pod_path(self) -> &'static str {
        if self == Profile::Custom { "/etc/kubernetes/pods" } else { "/etc/kubernetes/manifests" }
    }

    /// Where the node's certificates live: kubeadm's `certificatesDir` of its
    /// ClusterConfiguration, `/etc/kubernetes/pki` unless set (`DefaultCertificatesDir`,
    /// `cmd/kubeadm/app/apis/kubeadm/v1beta4/defaults.go`). kubeadm derives every certificate
    /// flag of the manifests from it, mounts it as the `k8s-certs` volume
    /// (`cmd/kubeadm/app/phases/controlplane/volumes.go`, `etcd-certs` is its `etcd`
    /// subdirectory, `phases/etcd/local.go`) and writes the kubelet's `clientCAFile` from it
    /// (`componentconfigs/kubelet.go`). The custom profile sets it to `/etc/kubernetes/ssl`, the
    /// directory kubespray's kubeadm clusters use (`kube_cert_dir`), so kubeca finds the
    /// certificates only by following the manifests and the kubelet's settings.
    pub fn pki_dir(self) -> &'static str {
        if self == Profile::Custom { "/etc/kubernetes/ssl" } else { "/etc/kubernetes/pki" }
    }

    /// Every node's `/etc/default/kubelet` passes `--client-ca-file` in `KUBELET_EXTRA_ARGS`,
    /// which overrides `clientCAFile` of the kubelet's config (so kubeca must edit the flag).
    pub fn kubelet_extra_args_client_ca(self) -> bool {
        self == Profile::Hardened
    }

    /// The kubelets bootstrap their serving certificates through the CSR API
    /// (`serverTLSBootstrap: true`), as operators set it so that something can verify kubelets
    /// (metrics-server without `--kubelet-insecure-tls`): each kubelet asks for its serving
    /// certificate (signer `kubernetes.io/kubelet-serving`, which the controller-manager signs
    /// with the cluster CA but never approves: `sarapprove.go`) and serves nothing without one.
    /// The nodes start with certificates such requests got when the cluster was made (an
    /// operator approved them), in `/var/lib/kubelet/pki/kubelet-server-current.pem`. The
    /// hardened profile's kubelets do so.
    pub fn kubelet_server_tls_bootstrap(self) -> bool {
        self == Profile::Hardened
    }

    /// The profile named in `up`'s arguments (`--profile=NAME` or `--profile NAME`), else the
    /// default.
    pub fn from_args(args: &[&str]) -> Profile {
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let value = match a.strip_prefix("--profile") {
                Some("") => it.next().copied(),
                Some(v) => v.strip_prefix('='),
                None => None,
            };
            if let Some(v) = value {
                return <Profile as clap::ValueEnum>::from_str(v, false).unwrap_or_default();
            }
        }
        Profile::default()
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Profile::Kubeadm => "kubeadm",
            Profile::Custom => "custom",
            Profile::Hardened => "hardened",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_profile_comes_from_ups_arguments() {
        assert_eq!(Profile::from_args(&[]), Profile::Kubeadm);
        assert_eq!(Profile::from_args(&["--key=ecdsa", "--profile=custom"]), Profile::Custom);
        assert_eq!(Profile::from_args(&["--profile", "custom"]), Profile::Custom);
        assert_eq!(Profile::from_args(&["--profile", "kubeadm"]), Profile::Kubeadm);
        assert_eq!(Profile::from_args(&["--profile=hardened"]), Profile::Hardened);
        assert_eq!(Profile::Hardened.to_string(), "hardened");
        assert_eq!(Profile::Kubeadm.pki_dir(), "/etc/kubernetes/pki");
    }
}
