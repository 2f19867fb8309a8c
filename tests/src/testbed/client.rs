//! A small Kubernetes API client for the simulated components, configured from a kubeconfig or in-cluster files.
