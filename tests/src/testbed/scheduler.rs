//! The simulated kube-scheduler: serves its secure port with --client-ca-file and assigns pending pods to nodes.
