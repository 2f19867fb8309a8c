//! Workload pods: coredns-like, kube-proxy-like and a metrics-server-like aggregated API server.
