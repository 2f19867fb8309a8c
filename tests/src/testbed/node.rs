//! Nodes as mount + UTS namespaces with bind-mounted kubeadm paths, a real sshd and systemctl/journalctl shims.
