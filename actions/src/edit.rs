//! Edits of kubeadm files that change only what they must: kubeconfigs, static pod manifests, kubelet config.
