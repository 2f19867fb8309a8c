//! TLS for every simulated component: rustls configs from kubeadm files, and classification of handshake failures for the trust monitor.
