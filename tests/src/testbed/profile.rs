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
    /// kube-scheduler given `--client-ca-file` (upstream step 6 then has a flag to change).
    Custom,
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
    }
}
