//! The testbed end to end: one 3 control-plane + 2 worker cluster per test binary, checked with
//! tools nobody here wrote (ssh, openssl, etcdctl, curl, kubectl), then taken down.
//!
//! The checks share one testbed, so they run in a fixed order from one `#[test]`: those that
//! change nothing first, then those that restart components, then `down`, with a second, small
//! testbed on another address block beside it (which this `down` must leave running; the
//! machine runs at most these two at once). Each check runs even
//! when an earlier one failed, and the test fails naming every failed check. The `Testbed` guard
//! runs `down` when it is dropped, also on a panic; a run killed outright is cleaned up by the
//! `down` the next run starts with.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic is how a test fails

mod testbed {
    pub mod api;
    pub mod infra;
    pub mod kubeca;
}

use kubeca_tests::harness::Testbed;
use testbed::{api, infra};

type Check = (&'static str, fn(&Testbed));

#[test]
fn testbed_3_control_planes_2_workers() {
    let tb = Testbed::up("testbed-3-2", 3, 2, &[]);
    let checks: &[Check] = &[
        ("ssh_reaches_each_node_and_its_own_files", infra::ssh_reaches_each_node_and_its_own_files),
        ("openssl_verifies_every_certificate", infra::openssl_verifies_every_certificate),
        ("etcd_cluster_is_healthy_with_mutual_tls", infra::etcd_cluster_is_healthy_with_mutual_tls),
        (
            "nodes_bind_their_own_loopback_as_kubeadm_does",
            infra::nodes_bind_their_own_loopback_as_kubeadm_does,
        ),
        ("kubectl_shows_every_node_ready", api::kubectl_shows_every_node_ready),
        (
            "kubelets_serve_self_signed_pairs_the_apiservers_do_not_verify",
            infra::kubelets_serve_self_signed_pairs_the_apiservers_do_not_verify,
        ),
        ("every_kubeconfig_works", api::every_kubeconfig_works),
        ("aggregated_api_through_the_front_proxy", api::aggregated_api_through_the_front_proxy),
        (
            "report_counts_handshakes_without_failures",
            api::report_counts_handshakes_without_failures,
        ),
        // After the report's check: they make trust failures on purpose.
        ("bearer_tokens_must_verify", api::bearer_tokens_must_verify),
        (
            "scheduler_follows_the_client_ca_of_extension_apiserver_authentication",
            infra::scheduler_follows_the_client_ca_of_extension_apiserver_authentication,
        ),
        ("kubectl_proxy_runs_in_cluster", api::kubectl_proxy_runs_in_cluster),
        (
            "kubelet_authenticates_client_certificates_per_request",
            infra::kubelet_authenticates_client_certificates_per_request,
        ),
        (
            "kubeca_discovers_plans_and_writes_over_ssh",
            testbed::kubeca::kubeca_discovers_plans_and_writes_over_ssh,
        ),
        ("up_on_a_live_dir_names_the_pids", infra::up_on_a_live_dir_names_the_pids),
        (
            "editing_a_manifest_restarts_the_component",
            infra::editing_a_manifest_restarts_the_component,
        ),
        ("moving_a_manifest_away_and_back", infra::moving_a_manifest_away_and_back),
        ("systemctl_restarts_the_kubelet", infra::systemctl_restarts_the_kubelet),
        (
            "kubelets_restart_static_pods_that_fail_their_liveness_probes",
            infra::kubelets_restart_static_pods_that_fail_their_liveness_probes,
        ),
        (
            "kubelets_renew_client_certificates_through_the_csr_api",
            api::kubelets_renew_client_certificates_through_the_csr_api,
        ),
        (
            "api_pods_run_with_the_root_ca_and_are_replaced",
            api::api_pods_run_with_the_root_ca_and_are_replaced,
        ),
        (
            "root_ca_maps_everywhere_and_template_changes_roll_pods",
            api::root_ca_maps_everywhere_and_template_changes_roll_pods,
        ),
        (
            "killing_one_apiserver_leaves_kubectl_working",
            api::killing_one_apiserver_leaves_kubectl_working,
        ),
        (
            "untrusted_serving_certificate_fails_the_report",
            api::untrusted_serving_certificate_fails_the_report,
        ),
        (
            "controller_manager_refuses_a_signing_bundle",
            api::controller_manager_refuses_a_signing_bundle,
        ),
        // Last: brings a second testbed up beside this one, takes this one down
        // (down_leaves_nothing), then the other.
        ("down_stops_only_its_own_testbed", infra::down_stops_only_its_own_testbed),
    ];
    let mut failed = Vec::new();
    for (name, check) in checks {
        let started = std::time::Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&tb)));
        eprintln!(
            "{} {name} ({:.1}s)",
            if result.is_ok() { "ok  " } else { "FAIL" },
            started.elapsed().as_secs_f64()
        );
        if result.is_err() {
            failed.push(*name);
        }
    }
    assert!(failed.is_empty(), "failed checks: {failed:?}");
}

/// The ECDSA option: every certificate is P-256 and verifies against its CA (no nodes started).
#[test]
fn ecdsa_pki_verifies_with_openssl() {
    use kubeca_tests::testbed::profile::Profile;
    // The custom profile: every certificate, the kubelet's serving one included, is of a CA;
    // so with serverTLSBootstrap, whose serving certificate the CSR API signed.
    for profile in [Profile::Custom, Profile::Hardened] {
        pki_verifies(profile);
    }
}

fn pki_verifies(profile: kubeca_tests::testbed::profile::Profile) {
    use kubeca_tests::testbed::{node, pki};
    let dir = tempfile::tempdir().unwrap();
    let nodes = node::topology(&kubeca_tests::testbed::subnet::Subnet::default(), 1, 1).unwrap();
    pki::generate(dir.path(), &Default::default(), &nodes, pki::KeyAlgorithm::Ecdsa, profile)
        .unwrap();
    for n in &nodes {
        let root = node::node_dir(dir.path(), &n.name);
        // Paths inside the node, read from the host: /etc/kubernetes and /var/lib/kubelet.
        let host = |p: &str| {
            let p = p
                .replace("/etc/kubernetes/", &format!("{}/etc-kubernetes/", root.display()))
                .replace("/var/lib/kubelet/", &format!("{}/var-lib-kubelet/", root.display()));
            // The -current symlink is absolute inside the node; follow it by hand.
            if p.ends_with("-current.pem") {
                let target = std::fs::read_link(&p).unwrap();
                return root.join("var-lib-kubelet/pki").join(target.file_name().unwrap());
            }
            std::path::PathBuf::from(p)
        };
        for (cert, ca) in pki::certificates_and_cas(n.control_plane, profile) {
            let out = std::process::Command::new("openssl")
                .arg("verify")
                .arg("-CAfile")
                .arg(host(&ca))
                .arg(host(&cert))
                .output()
                .unwrap();
            assert!(out.status.success(), "{cert}: {}", kubeca_tests::harness::text(&out));
            let info = std::process::Command::new("openssl")
                .args(["x509", "-noout", "-text", "-in"])
                .arg(host(&cert))
                .output()
                .unwrap();
            assert!(
                String::from_utf8_lossy(&info.stdout).contains("prime256v1"),
                "{cert} is not P-256"
            );
        }
        if profile.kubelet_serving_signed() {
            let key =
                std::fs::read_to_string(root.join("var-lib-kubelet/pki/kubelet.key")).unwrap();
            assert!(key.starts_with("-----BEGIN EC PRIVATE KEY-----"));
        }
    }
}
