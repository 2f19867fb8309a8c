//! The testbed: a kubeadm-style HA cluster on one Linux machine (see TESTBED.md in the design docs).
//!
//! Infrastructure (cli, pki, node, kubelet, haproxy, report) and components (tls, monitor, client,
//! apiserver, controller_manager, scheduler, pods, kubelet_api) are separate modules; components are
//! subcommands of the one `kubeca-testbed` binary, started by the kubelet from static pod manifests.

pub mod cli;
pub mod pki;
pub mod node;
pub mod kubelet;
pub mod haproxy;
pub mod report;
pub mod tls;
pub mod monitor;
pub mod client;
pub mod apiserver;
pub mod controller_manager;
pub mod scheduler;
pub mod pods;
pub mod kubelet_api;
