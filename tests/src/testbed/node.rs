//! Nodes as mount + UTS namespaces with bind-mounted kubeadm paths, a real sshd and systemctl/journalctl shims.
//!
//! (Engineers: read /work/main/tests/DEV-AGREEMENT.md first: ownership, contract, rules, deadline.)
