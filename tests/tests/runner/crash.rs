//! The rotation runner over the real journal, SIGKILLed at seeded random moments: running again
//! each time completes with the same end state, and a rollback (itself killed and run again)
//! restores every touched file byte for byte. `ROTATION_CRASH_SEED` reproduces a run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use kubeca_tests::seeded::Rng;
use kubeca_tests::testbed::pki;

const CHILD: &str = env!("CARGO_BIN_EXE_rotation-child");
const TOUCHED: [&str; 6] = [
    "etc/kubernetes/pki/ca.crt",
    "etc/kubernetes/pki/ca.key",
    "etc/kubernetes/pki/ca-new.crt",
    "etc/kubernetes/pki/ca-new.key",
    "etc/kubernetes/pki/ca-bundle.crt",
    "etc/kubernetes/admin.conf",
];

/// A control-plane node as a directory with an ECDSA PKI and admin.conf made by the testbed's
/// openssl recipe.
fn cluster() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("cp-1");
    let server = "https://127.0.0.10:6443";
    pki::control_plane_core(&root, pki::KeyAlgorithm::Ecdsa, "127.0.0.11", server).unwrap();
    let conf = std::fs::read(root.join("etc/kubernetes/admin.conf")).unwrap();
    std::fs::write(dir.path().join("admin.conf"), &conf).unwrap();
    for f in ["id", "known_hosts"] {
        std::fs::write(dir.path().join(f), "x").unwrap();
    }
    std::fs::write(
        dir.path().join("inventory.toml"),
        "[cluster]\nname = \"c\"\nkubeconfig = \"admin.conf\"\napi_endpoint = \"https://127.0.0.10:6443\"\n\
         [ssh]\nidentity = \"id\"\nknown_hosts = \"known_hosts\"\n\
         [[nodes]]\nname = \"cp-1\"\naddress = \"127.0.0.11\"\nroles = [\"control-plane\"]\n",
    )
    .unwrap();
    dir
}

fn snapshot(cluster: &Path) -> Vec<Option<Vec<u8>>> {
    TOUCHED.iter().map(|f| std::fs::read(cluster.join("cp-1").join(f)).ok()).collect()
}

/// Runs the child in `mode` until it finishes on its own, SIGKILLing it `kills` times at random
/// moments first. Returns the number of kills that landed before it finished.
fn run_with_kills(mode: &str, state: &Path, cluster: &Path, rng: &mut Rng, kills: u32) -> u32 {
    let mut landed = 0;
    for _ in 0..kills {
        let mut child = Command::new(CHILD)
            .args([mode, state.to_str().unwrap(), cluster.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(rng.next_u64() % 60_000));
        if child.try_wait().unwrap().is_none() {
            landed += 1;
        }
        child.kill().unwrap();
        child.wait().unwrap();
    }
    let out = Command::new(CHILD)
        .args([mode, state.to_str().unwrap(), cluster.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{mode} after kills: {}", String::from_utf8_lossy(&out.stderr));
    let said = String::from_utf8_lossy(&out.stdout);
    let expected = match mode {
        "rollback" => "RolledBack",
        "partial" => "ReachedUntil",
        _ => "Completed",
    };
    assert!(said.contains(expected), "{mode}: {said}");
    landed
}

fn verify(pki: &Path, ca: &str, cert_pem: &[u8]) -> bool {
    let f = pki.join("probe.crt");
    std::fs::write(&f, cert_pem).unwrap();
    Command::new("openssl")
        .args(["verify", "-CAfile", ca])
        .arg(&f)
        .current_dir(pki)
        .output()
        .unwrap()
        .status
        .success()
}

fn kubeconfig_value(conf: &[u8], key: &str) -> Vec<u8> {
    use base64::Engine as _;
    let text = String::from_utf8_lossy(conf);
    let line = text.lines().find(|l| l.trim_start().starts_with(key)).unwrap();
    base64::engine::general_purpose::STANDARD
        .decode(line.split_once(':').unwrap().1.trim())
        .unwrap()
}

fn seed() -> u64 {
    kubeca_tests::seeded::seed("ROTATION_CRASH_SEED", "rotation crash")
}

#[test]
fn killed_runs_resume_to_the_same_end_state_and_killed_rollbacks_restore_every_byte() {
    let mut rng = Rng(seed());

    // Forward: killed 12 times, then run to completion.
    let c = cluster();
    let state: PathBuf = c.path().join("state");
    let landed = run_with_kills("run", &state, c.path(), &mut rng, 20);
    println!("forward: {landed} of 20 kills landed mid-run");
    let pki = c.path().join("cp-1/etc/kubernetes/pki");
    let new_ca = std::fs::read(pki.join("ca-new.crt")).unwrap();
    assert_eq!(
        std::fs::read(pki.join("ca.crt")).unwrap(),
        new_ca,
        "finalize made the new CA canonical"
    );
    let conf = std::fs::read(c.path().join("cp-1/etc/kubernetes/admin.conf")).unwrap();
    assert_eq!(kubeconfig_value(&conf, "certificate-authority-data"), new_ca);
    let client = kubeconfig_value(&conf, "client-certificate-data");
    assert!(verify(&pki, "ca-new.crt", &client), "admin's client certificate is the new CA's");
    assert_eq!(
        std::fs::metadata(pki.join("ca-new.key"))
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .unwrap(),
        0o600
    );

    // Rollback: a fresh cluster, killed mid-run, then a rollback killed 8 times and finished.
    let c = cluster();
    let before = snapshot(c.path());
    let state: PathBuf = c.path().join("state");
    run_with_kills("partial", &state, c.path(), &mut rng, 4);
    assert_ne!(snapshot(c.path()), before, "the partial run changed files");
    let landed = run_with_kills("rollback", &state, c.path(), &mut rng, 8);
    println!("rollback: {landed} of 8 kills landed mid-rollback");
    assert_eq!(snapshot(c.path()), before, "every touched file is back byte for byte");
}
