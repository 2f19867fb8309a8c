//! The Kubernetes CA rotation domain: inventory, kubeadm layout, PKI, trust graph, the procedure
//! as an engine plan, and the effects on nodes (SSH) and on the API.
//!
//! Built so far: the inventory ([`inventory`]), the PKI ([`pki`]), the edits of kubeadm's files
//! that change only what they must ([`edit`]) and the trust graph with its step-by-step simulator
//! ([`trust`]). Discovery, the procedure and the effects are not built yet.

pub mod api;
pub mod discovery;
pub mod edit;
pub mod inventory;
pub mod node;
pub mod pki;
pub mod probe;
pub mod procedure;
pub mod rotation;
pub mod trust;
