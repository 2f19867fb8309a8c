//! The kubelet's API side: node registration and status, and running the pods the API assigns to its node.
