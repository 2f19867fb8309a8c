//! The simulated kube-controller-manager: kube-root-ca.crt publishing, legacy token ca.crt, rollouts, kubeadm#1350 refusal.
