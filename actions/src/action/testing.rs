//! Test support for the actions' runner: a [`Rotation`] over control-plane nodes that are
//! directories laid out otherwise than kubeadm's defaults, a new CA recorded as if made, and a
//! TLS server standing for a component.

use std::collections::BTreeMap;

use engine::{StepId, Summary};
use journal::BlobStore;

use super::Rotation;
use crate::fixtures::{self, elsewhere};
use crate::inventory::Inventory;
use crate::kubeadm::{outcome, step};
use crate::node::{LocalNode, Node};
use crate::pki::Ca;
use crate::pki::KeySpec;
use crate::trust::Topology;
use std::path::Path;

pub(super) const APISERVER_YAML: &str = include_str!("../../testdata/kubeadm/kube-apiserver.yaml");
const CM_YAML: &str = include_str!("../../testdata/kubeadm/kube-controller-manager.yaml");
const KUBELET_CONFIG: &str = include_str!("../../testdata/kubeadm/kubelet-config.yaml");
const KUBELET_CONF: &str = include_str!("../../testdata/kubeadm/kubelet.conf");

/// Writes kubeadm's file `path` with `text` under `root`, where [`elsewhere`] keeps it.
pub(super) fn put_elsewhere(root: &Path, path: &str, text: &str) {
    let (path, text) = elsewhere(path, text);
    let p = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// A runner over control planes `cp-1` (at 127.0.0.1) and `cp-2` (at 127.0.0.2), each a
/// directory laid out as [`elsewhere`] says, with their layouts as discovered when
/// `discovered`.
pub(super) async fn runner(dir: &Path, discovered: bool) -> Rotation<LocalNode> {
    runner_of(dir, discovered, |node| node).await
}

/// A kubeconfig of the operator's that authenticates with a token.
pub(super) const TOKEN_KUBECONFIG: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: t\n  \
    cluster:\n    server: https://127.0.0.1:6443\ncontexts:\n- name: t\n  context:\n    cluster: t\n    \
    user: op\ncurrent-context: t\nusers:\n- name: op\n  user:\n    token: abc\n";

/// As [`runner`], over the nodes `wrap` makes of the directory nodes (discovered as they are).
pub(super) async fn runner_of<N: Node>(
    dir: &Path,
    discovered: bool,
    wrap: impl Fn(LocalNode) -> N,
) -> Rotation<N> {
    for f in ["id", "known_hosts"] {
        std::fs::write(dir.join(f), "x").unwrap();
    }
    // A kubeconfig whose user has a token, no client certificate: probes go without one.
    std::fs::write(dir.join("admin.conf"), TOKEN_KUBECONFIG).unwrap();
    let toml = "[cluster]\nname = \"t\"\nkubeconfig = \"admin.conf\"\napi_endpoint = \"https://127.0.0.1:6443\"\n\
                [ssh]\nidentity = \"id\"\nknown_hosts = \"known_hosts\"\n\
                [[nodes]]\nname = \"cp-1\"\naddress = \"127.0.0.1\"\nroles = [\"control-plane\"]\n\
                [[nodes]]\nname = \"cp-2\"\naddress = \"127.0.0.2\"\nroles = [\"control-plane\"]\n";
    let inventory = Inventory::parse(toml, Path::new("t.toml"), dir).unwrap();
    let mut nodes = BTreeMap::new();
    let mut topology = Topology::default();
    for name in ["cp-1", "cp-2"] {
        let root = dir.join(name);
        put_elsewhere(&root, "/etc/kubernetes/manifests/kube-apiserver.yaml", APISERVER_YAML);
        put_elsewhere(&root, "/etc/kubernetes/manifests/kube-controller-manager.yaml", CM_YAML);
        put_elsewhere(&root, "/var/lib/kubelet/config.yaml", KUBELET_CONFIG);
        put_elsewhere(&root, "/etc/kubernetes/kubelet.conf", KUBELET_CONF);
        put_elsewhere(&root, "/etc/kubernetes/controller-manager.conf", KUBELET_CONF);
        put_elsewhere(&root, fixtures::DROPIN.0, fixtures::DROPIN.1);
        let node = LocalNode::new(name, &root);
        let facts = crate::discovery::discover(&node).await.unwrap();
        topology.control_planes.push(name.into());
        topology.layouts.insert(name.into(), facts.layout());
        nodes.insert(name.to_owned(), wrap(node));
    }
    let state = dir.join("state");
    journal::create_private_dir(&state).unwrap();
    let blobs = BlobStore::open(&state).unwrap();
    let runner = Rotation::new(inventory, nodes, blobs, None, &engine::State::default());
    if discovered { runner.with_topology(topology) } else { runner }
}

/// A new cluster CA, recorded as the `prepare/new-ca` step's outcome.
pub(super) fn with_new_ca(runner: &Rotation<LocalNode>) -> Ca {
    let now = jiff::Timestamp::now();
    let ca = Ca::generate("kubernetes", KeySpec::EcdsaP256, 1, now, &mut rand_core::OsRng).unwrap();
    let cert = runner.blobs.put(ca.cert_pem().as_bytes()).unwrap();
    let key = runner.blobs.put(ca.key_pem().as_bytes()).unwrap();
    runner.known.borrow_mut().insert(
        StepId::from(step::NEW_CA),
        Summary::new().with(outcome::CERT, cert.to_hex()).with(outcome::KEY, key.to_hex()),
    );
    ca
}

/// A TLS server on `host` presenting `identity` (certificate DER, key PEM), answering 200.
pub(super) async fn serve(host: &str, identity: crate::probe::ClientIdentity) -> u16 {
    fixtures::tls_server(host, identity, None).await
}
