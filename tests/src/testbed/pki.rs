//! The initial PKI, kubeconfigs, static pod manifests and kubelet config, made with the openssl CLI in kubeadm's layout.
//!
//! (Engineers: read /work/main/tests/DEV-AGREEMENT.md first: ownership, contract, rules, deadline.)
