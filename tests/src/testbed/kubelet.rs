//! The simulated kubelet: runs static pods from /etc/kubernetes/manifests, serves :10250, restarts pods on manifest changes.
//!
//! (Engineers: read /work/main/tests/DEV-AGREEMENT.md first: ownership, contract, rules, deadline.)
