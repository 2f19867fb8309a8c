//! The runner's node actions on a control-plane node that is a directory, with a PKI made by
//! openssl: backups, the new CA, distribution, kubeconfig and certificate re-issue, their
//! postconditions after a "crash", and byte-exact restores.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use actions::action::{Action, CaKind, Content, Rotation};
use actions::inventory::Inventory;
use actions::node::LocalNode;
use engine::{Runner, StepId, Summary};
use kubeca_tests::testbed::pki;

/// kubeadm's layout under `root` (RSA, as kubeadm's default), made by the testbed's openssl
/// recipe.
fn node_files(root: &Path) {
    let server = "https://127.0.0.10:6443";
    pki::control_plane_core(root, pki::KeyAlgorithm::Rsa, "127.0.0.11", server).unwrap();
}

fn verify(root: &Path, ca: &str, cert: &str) -> bool {
    Command::new("openssl")
        .args(["verify", "-CAfile", ca, cert])
        .current_dir(root.join("etc/kubernetes/pki"))
        .output()
        .unwrap()
        .status
        .success()
}

struct World {
    dir: tempfile::TempDir,
    runner: Rotation<LocalNode>,
}

impl World {
    fn root(&self) -> std::path::PathBuf {
        self.dir.path().join("cp-1")
    }

    async fn run(&self, id: &str, action: &Action) -> Summary {
        let step = StepId::from(id);
        let summary = self
            .runner
            .apply(&step, action)
            .await
            .unwrap_or_else(|e| panic!("{id}: {}", e.message));
        self.runner.known().borrow_mut().insert(step, summary.clone());
        summary
    }
}

fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    node_files(&d.join("cp-1"));
    for f in ["id", "known_hosts"] {
        std::fs::write(d.join(f), "x").unwrap();
    }
    std::fs::copy(d.join("cp-1/etc/kubernetes/admin.conf"), d.join("admin.conf")).unwrap();
    let toml = "[cluster]\nname = \"t\"\nkubeconfig = \"admin.conf\"\napi_endpoint = \"https://127.0.0.10:6443\"\n\
                [ssh]\nidentity = \"id\"\nknown_hosts = \"known_hosts\"\n\
                [[nodes]]\nname = \"cp-1\"\naddress = \"127.0.0.11\"\nroles = [\"control-plane\"]\n";
    let inventory = Inventory::parse(toml, Path::new("t.toml"), d).unwrap();
    let nodes = BTreeMap::from([("cp-1".to_owned(), LocalNode::new("cp-1", &d.join("cp-1")))]);
    let state_dir = d.join("state");
    journal::create_private_dir(&state_dir).unwrap();
    let blobs = journal::BlobStore::open(&state_dir).unwrap();
    let runner = Rotation::new(inventory, nodes, blobs, None, &engine::State::default());
    World { dir, runner }
}

const PKI: &str = "/etc/kubernetes/pki";

#[tokio::test]
async fn node_actions_do_what_they_say_and_restore_byte_for_byte() {
    let w = world();
    let root = w.root();
    let touched = [
        format!("{PKI}/ca-bundle.crt"),
        format!("{PKI}/ca-new.crt"),
        format!("{PKI}/ca-new.key"),
        format!("{PKI}/apiserver.crt"),
        "/etc/kubernetes/admin.conf".to_owned(),
    ];
    let before: Vec<Option<Vec<u8>>> =
        touched.iter().map(|p| std::fs::read(root.join(p.trim_start_matches('/'))).ok()).collect();
    w.run(
        "preflight/backup/cp-1",
        &Action::Backup { node: "cp-1".into(), paths: touched.to_vec() },
    )
    .await;

    // upstream 1: a new CA, same algorithm as the old (RSA), key only in the blob store.
    let new_ca = w
        .run(
            "prepare/new-ca",
            &Action::NewCa {
                ca: CaKind::Cluster,
                node: "cp-1".into(),
                old_cert: format!("{PKI}/ca.crt"),
            },
        )
        .await;
    assert!(new_ca.0["discovery-hash"].starts_with("sha256:"));
    assert!(!new_ca.0.values().any(|v| v.contains("PRIVATE")), "no key material in an outcome");
    let put = Action::PutFiles {
        node: "cp-1".into(),
        files: vec![
            (format!("{PKI}/ca-new.crt"), Content::NewCert(CaKind::Cluster), 0o644),
            (format!("{PKI}/ca-new.key"), Content::NewKey(CaKind::Cluster), 0o600),
            (format!("{PKI}/ca-bundle.crt"), Content::Bundle(CaKind::Cluster), 0o644),
        ],
        loaded_by: Vec::new(),
    };
    let step = StepId::from("prepare/distribute/cp-1");
    assert_eq!(w.runner.check(&step, &put).await.unwrap(), None, "not done yet");
    w.run("prepare/distribute/cp-1", &put).await;
    assert!(
        w.runner.check(&step, &put).await.unwrap().is_some(),
        "postcondition holds after apply"
    );
    use std::os::unix::fs::PermissionsExt;
    let key_mode =
        std::fs::metadata(root.join("etc/kubernetes/pki/ca-new.key")).unwrap().permissions().mode();
    assert_eq!(key_mode & 0o777, 0o600);
    let text = Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in", "ca-new.crt"])
        .current_dir(root.join("etc/kubernetes/pki"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("CA:TRUE") && text.contains("rsaEncryption"), "{text}");

    // upstream 9.3: the apiserver's certificate re-issued by the new CA, same key.
    let reissue = Action::ReissueCert {
        node: "cp-1".into(),
        path: format!("{PKI}/apiserver.crt"),
        ca: CaKind::Cluster,
        manifest: "/etc/kubernetes/manifests/kube-apiserver.yaml".into(),
    };
    let step = StepId::from("switch/reissue/cp-1/apiserver.crt");
    assert_eq!(w.runner.check(&step, &reissue).await.unwrap(), None);
    w.run(step.as_str(), &reissue).await;
    assert!(w.runner.check(&step, &reissue).await.unwrap().is_some());
    assert!(verify(&root, "ca-new.crt", "apiserver.crt"));
    assert!(!verify(&root, "ca.crt", "apiserver.crt"));
    assert!(verify(&root, "ca-bundle.crt", "apiserver.crt"), "the bundle trusts the new cert");
    let sans = Command::new("openssl")
        .args(["x509", "-noout", "-ext", "subjectAltName", "-in", "apiserver.crt"])
        .current_dir(root.join("etc/kubernetes/pki"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&sans.stdout).contains("IP Address:127.0.0.11"));
    let key_pub = Command::new("openssl")
        .args(["pkey", "-pubout", "-in", "apiserver.key"])
        .current_dir(root.join("etc/kubernetes/pki"))
        .output()
        .unwrap()
        .stdout;
    let cert_pub = Command::new("openssl")
        .args(["x509", "-noout", "-pubkey", "-in", "apiserver.crt"])
        .current_dir(root.join("etc/kubernetes/pki"))
        .output()
        .unwrap()
        .stdout;
    assert_eq!(key_pub, cert_pub, "the existing key is kept");

    // upstream 7: admin.conf trusts both and carries a client cert of the new CA.
    let conf = "/etc/kubernetes/admin.conf".to_owned();
    w.run(
        "t/kubeconfig-ca",
        &Action::SetKubeconfigCa {
            prior: None,
            node: Some("cp-1".into()),
            path: conf.clone(),
            content: Content::Bundle(CaKind::Cluster),
            loaded_by: None,
        },
    )
    .await;
    let client = Action::ReissueKubeconfigClient {
        node: Some("cp-1".into()),
        path: conf.clone(),
        loaded_by: None,
    };
    w.run("t/kubeconfig-client", &client).await;
    assert!(w.runner.check(&StepId::from("t/kubeconfig-client"), &client).await.unwrap().is_some());
    let after = std::fs::read_to_string(root.join("etc/kubernetes/admin.conf")).unwrap();
    let original = String::from_utf8(before[4].clone().unwrap()).unwrap();
    let changed: Vec<_> = original.lines().zip(after.lines()).filter(|(a, b)| a != b).collect();
    assert_eq!(
        changed.len(),
        2,
        "only certificate-authority-data and client-certificate-data change"
    );

    // Rollback: every touched file back byte for byte, new files removed.
    let compensations = w.runner.compensate(&step, &reissue, None);
    assert_eq!(compensations.len(), 1);
    assert!(
        compensations[0].follow_up.is_some(),
        "the apiserver must be restarted after restoring its certificate"
    );
    w.run(
        "rollback/restore",
        &Action::RestoreFiles { node: Some("cp-1".into()), paths: touched.to_vec() },
    )
    .await;
    for (path, original) in touched.iter().zip(before) {
        let now = std::fs::read(root.join(path.trim_start_matches('/'))).ok();
        assert_eq!(now, original, "{path} restored exactly");
    }
}

#[tokio::test]
async fn old_ca_checks_refuse_a_key_that_is_not_the_certificates() {
    let w = world();
    let node = LocalNode::new("cp-1", &w.root());
    let now = jiff::Timestamp::now();
    let ok = actions::action::check_old_cas(
        &node,
        &[(format!("{PKI}/ca.crt"), format!("{PKI}/ca.key"))],
        now,
    )
    .await
    .unwrap();
    assert_eq!(ok.len(), 1);
    let err = actions::action::check_old_cas(
        &node,
        &[(format!("{PKI}/ca.crt"), format!("{PKI}/front-proxy-ca.key"))],
        now,
    )
    .await
    .unwrap_err();
    assert!(err.contains("cp-1:/etc/kubernetes/pki/front-proxy-ca.key"), "{err}");
    let err = actions::action::check_old_cas(
        &node,
        &[(format!("{PKI}/nope.crt"), format!("{PKI}/ca.key"))],
        now,
    )
    .await
    .unwrap_err();
    assert!(err.contains("nope.crt") && err.contains("does not exist"), "{err}");
    // An old CA that has expired (checked at a time past its end) is refused by name.
    let later = now + jiff::SignedDuration::from_hours(24 * 365 * 200);
    let err = actions::action::check_old_cas(
        &node,
        &[(format!("{PKI}/ca.crt"), format!("{PKI}/ca.key"))],
        later,
    )
    .await
    .unwrap_err();
    assert!(err.contains("cp-1:/etc/kubernetes/pki/ca.crt") && err.contains("expired"), "{err}");
}
