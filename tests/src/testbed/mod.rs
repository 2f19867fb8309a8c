//! The testbed: a kubeadm-style HA cluster on one Linux machine (`tests/TESTBED.md` says what it
//! mirrors, and where it still differs from the real components).
//!
//! Infrastructure (cli, subnet, pki, node, kubelet, haproxy, report) and components (tls, monitor, client,
//! apiserver, controller_manager, scheduler, pods, kubelet_api) are separate modules; components are
//! subcommands of the one `kubeca-testbed` binary, started by the kubelet from static pod manifests.
//! What the components share (flags, the health endpoint, leader election, state files) is
//! `component`.

pub mod apiserver;
pub mod certutil;
pub mod cli;
pub mod client;
pub mod component;
pub mod container;
pub mod controller_manager;
pub mod csr_controllers;
pub mod haproxy;
pub mod jwt;
pub mod kubelet;
pub mod kubelet_api;
pub mod kubelet_certs;
pub mod kubelet_server;
pub mod monitor;
pub mod net;
pub mod node;
pub mod pki;
pub mod pods;
pub mod prober;
pub mod profile;
pub mod report;
pub mod scheduler;
pub mod scraper;
pub mod serving;
pub mod subnet;
pub mod tls;
