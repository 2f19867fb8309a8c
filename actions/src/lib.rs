//! The Kubernetes CA rotation domain: inventory, kubeadm layout, PKI, trust graph, the procedure
//! as an engine plan, and the effects on nodes (SSH) and on the API.
//!
//! A rotation goes through the modules in this order:
//! - [`inventory`] reads the operator's TOML file (strictly: an unknown key is an error), and
//!   [`discovery`] reads what each component on each node really loads (static pod flags, the
//!   kubelet's drop-in, flags file and config, kubeconfigs), kubeadm's defaults only where nothing
//!   says otherwise;
//! - [`plan`] makes of them an engine plan of the upstream steps, each action tagged with its
//!   upstream step number, and refuses a plan that would break an edge of the [`trust`] graph
//!   after any step, forward or in a rollback from the end of any phase;
//! - [`action`] holds what each action does, its apply, postcondition check, undo and trust
//!   effects together, and the engine's runner ([`action::Rotation`]) that carries them out
//!   through [`node`] (SSH, or a local directory), [`api`] (the Kubernetes API), [`pki`] (new
//!   CAs, re-issued leaves, bundles), [`edit`] and [`probe`] (real TLS handshakes that see which
//!   certificate a server presents).
//!
//! Files on nodes are edited as text, one line per change, never parsed and re-serialized, so a
//! rollback restores bytes and a diff shows one line:
//!
//! ```
//! use actions::edit::Manifest;
//!
//! let before = "spec:\n  containers:\n  - command:\n    - kube-apiserver\n    \
//!               - --client-ca-file=/etc/kubernetes/pki/ca.crt\n    \
//!               - --secure-port=6443\n";
//! let mut manifest = Manifest::parse("kube-apiserver.yaml", before)?;
//! assert!(manifest.set_flag("--client-ca-file", "/etc/kubernetes/pki/ca-bundle.crt")?);
//! let after = manifest.text();
//! let changed: Vec<_> = before.lines().zip(after.lines()).filter(|(b, a)| b != a).collect();
//! assert_eq!(changed.len(), 1);
//! assert_eq!(manifest.flag("--secure-port").as_deref(), Some("6443"));
//! # Ok::<(), actions::edit::EditError>(())
//! ```

pub mod action;
pub mod api;
pub mod discovery;
pub mod edit;
#[cfg(test)]
mod fixtures;
pub mod inventory;
pub mod kubeadm;
pub mod node;
pub mod pki;
pub mod plan;
pub mod probe;
pub mod session;
pub mod trust;
