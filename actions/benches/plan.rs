//! Plan benchmark: building and trust-checking the rotation plan of a large fleet.
//!
//! Run with `cargo bench -p actions --bench plan`. For 3 control planes and N workers it times,
//! in one process: assembling the plan (the baseline: no simulation), the forward trust check
//! (every edge after every step), and the full check `init` runs (forward plus a rollback from
//! the end of every phase). Reported as the checks' cost relative to assembling.

use std::collections::BTreeMap;
use std::time::Instant;

use actions::discovery::{KubeconfigFacts, KubeletFacts, NodeFacts, StaticPod};
use actions::inventory::Inventory;
use actions::plan::{self, ClusterFacts};

fn pod(manifest: &str, flags: &[(&str, &str)]) -> StaticPod {
    StaticPod {
        manifest: manifest.into(),
        image: None,
        flags: flags.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
    }
}

fn facts(name: &str, control_plane: bool) -> NodeFacts {
    let mut static_pods = BTreeMap::new();
    let mut kubeconfigs = BTreeMap::new();
    let m = "/etc/kubernetes/manifests";
    if control_plane {
        static_pods.insert(
            "kube-apiserver".into(),
            pod(
                &format!("{m}/kube-apiserver.yaml"),
                &[
                    ("--client-ca-file", "/etc/kubernetes/pki/ca.crt"),
                    ("--tls-cert-file", "/etc/kubernetes/pki/apiserver.crt"),
                    (
                        "--kubelet-client-certificate",
                        "/etc/kubernetes/pki/apiserver-kubelet-client.crt",
                    ),
                    ("--proxy-client-cert-file", "/etc/kubernetes/pki/front-proxy-client.crt"),
                    ("--requestheader-client-ca-file", "/etc/kubernetes/pki/front-proxy-ca.crt"),
                ],
            ),
        );
        static_pods.insert(
            "kube-controller-manager".into(),
            pod(
                &format!("{m}/kube-controller-manager.yaml"),
                &[
                    ("--root-ca-file", "/etc/kubernetes/pki/ca.crt"),
                    ("--cluster-signing-cert-file", "/etc/kubernetes/pki/ca.crt"),
                    ("--cluster-signing-key-file", "/etc/kubernetes/pki/ca.key"),
                    ("--kubeconfig", "/etc/kubernetes/controller-manager.conf"),
                ],
            ),
        );
        static_pods.insert(
            "kube-scheduler".into(),
            pod(
                &format!("{m}/kube-scheduler.yaml"),
                &[("--kubeconfig", "/etc/kubernetes/scheduler.conf")],
            ),
        );
        for conf in ["admin.conf", "controller-manager.conf", "scheduler.conf"] {
            let path = format!("/etc/kubernetes/{conf}");
            kubeconfigs.insert(
                path.clone(),
                KubeconfigFacts {
                    path,
                    server: None,
                    ca_embedded: true,
                    ca_file: None,
                    client_embedded: true,
                    client_files: (None, None),
                },
            );
        }
    }
    NodeFacts {
        node: name.into(),
        static_pods,
        kubeconfigs,
        kubelet: Some(KubeletFacts {
            config: "/var/lib/kubelet/config.yaml".into(),
            kubeconfig: "/etc/kubernetes/kubelet.conf".into(),
            client_ca_file: Some("/etc/kubernetes/pki/ca.crt".into()),
            rotates_client_cert: true,
            static_pod_path: m.into(),
            serving_cert: "/var/lib/kubelet/pki/kubelet.crt".into(),
            serving_bootstrap: false,
            cert_dir: "/var/lib/kubelet/pki".into(),
            client_cert: "/var/lib/kubelet/pki/kubelet-client-current.pem".into(),
            port: 10250,
        }),
        cert_files: BTreeMap::new(),
        other_static_pods: BTreeMap::new(),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    for f in ["admin.conf", "id", "known_hosts"] {
        std::fs::write(dir.path().join(f), "x")?;
    }
    println!("plan benchmark (3 control planes + N workers)");
    println!(
        "{:>8} {:>6} {:>12} {:>12} {:>12} {:>10}",
        "workers", "steps", "assemble", "forward", "full check", "full/asm"
    );
    for workers in [2usize, 50, 150, 300] {
        let mut toml = String::from(
            "[cluster]\nname = \"b\"\nkubeconfig = \"admin.conf\"\napi_endpoint = \"https://10.0.0.10:6443\"\n[ssh]\nidentity = \"id\"\nknown_hosts = \"known_hosts\"\n",
        );
        let mut nodes = BTreeMap::new();
        for i in 0..3 + workers {
            let (name, cp) =
                if i < 3 { (format!("cp-{i}"), true) } else { (format!("w-{i}"), false) };
            let role = if cp { "control-plane" } else { "worker" };
            toml.push_str(&format!(
                "[[nodes]]\nname = \"{name}\"\naddress = \"10.1.{}.{}\"\nroles = [\"{role}\"]\n",
                i / 250,
                i % 250 + 1
            ));
            nodes.insert(name.clone(), facts(&name, cp));
        }
        toml.push_str("[rotation]\nmax_unavailable_workers = 10\n");
        let inventory = Inventory::parse(&toml, std::path::Path::new("b.toml"), dir.path())?;
        let cluster = ClusterFacts {
            nodes,
            extension_workloads: vec!["kube-system/Deployment/metrics-server".into()],
            namespaces: vec!["default".into(), "kube-system".into()],
        };
        let t = Instant::now();
        let plan = plan::assemble(&inventory, &cluster, "bench")?;
        let assemble = t.elapsed();
        let topology = plan::topology(&inventory, &cluster);
        let t = Instant::now();
        plan::check_trust(&plan, &topology)?;
        let forward = t.elapsed();
        let t = Instant::now();
        plan::check(&plan, &topology)?;
        let full = t.elapsed();
        println!(
            "{workers:>8} {:>6} {:>10.1}ms {:>10.1}ms {:>10.1}ms {:>9.0}x",
            plan.steps().count(),
            assemble.as_secs_f64() * 1e3,
            forward.as_secs_f64() * 1e3,
            full.as_secs_f64() * 1e3,
            full.as_secs_f64() / assemble.as_secs_f64()
        );
    }
    Ok(())
}
