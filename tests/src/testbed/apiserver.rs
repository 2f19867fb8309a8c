//! The simulated kube-apiserver: real flags, HTTPS with client-cert auth, objects kept in etcd, discovery for kubectl.
