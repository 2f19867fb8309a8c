//! The plan's tests: plans for kubeadm clusters laid out as directories (kubeadm's layout and
//! others), their trust checks forward and in rollbacks from every point, and plans made wrong
//! on purpose that the checks must refuse.

use std::collections::BTreeMap;

use engine::{Plan, Step};

use super::fill::restorable;
use super::*;
use crate::action::{Action, CaKind, Content, KubeletTarget};
use crate::discovery::discover;
use crate::kubeadm::component::{CONTROLLER_MANAGER, KUBELET};
use crate::kubeadm::slot;
use crate::node::LocalNode;
use crate::trust::{self, ComponentId, Material, SimStep, Source};

const APISERVER_YAML: &str = include_str!("../../testdata/kubeadm/kube-apiserver.yaml");
const CM_YAML: &str = include_str!("../../testdata/kubeadm/kube-controller-manager.yaml");
const SCHED_YAML: &str = include_str!("../../testdata/kubeadm/kube-scheduler.yaml");
const KUBELET_CONFIG: &str = include_str!("../../testdata/kubeadm/kubelet-config.yaml");
const ADMIN_CONF: &str = include_str!("../../testdata/kubeadm/admin.conf");
const KUBELET_CONF: &str = include_str!("../../testdata/kubeadm/kubelet.conf");

fn put(root: &std::path::Path, path: &str, text: &str) {
    let p = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

/// A 3+2 kubeadm cluster as directories, its inventory, and its discovered facts.
async fn cluster(
    workers: usize,
    max_unavailable: u32,
) -> (tempfile::TempDir, Inventory, ClusterFacts) {
    let as_kubeadm = |path: &str, text: &str| (path.to_owned(), text.to_owned());
    cluster_with(workers, max_unavailable, as_kubeadm, &[]).await
}

/// As [`cluster`], each node's files laid out by `layout` (from kubeadm's default path and
/// text of a file to where it is on these nodes and what it says), and `extra` files on each
/// (laid out the same way).
async fn cluster_with(
    workers: usize,
    max_unavailable: u32,
    layout: impl Fn(&str, &str) -> (String, String),
    extra: &[(&str, &str)],
) -> (tempfile::TempDir, Inventory, ClusterFacts) {
    let put = |root: &std::path::Path, path: &str, text: &str| {
        let (path, text) = layout(path, text);
        put(root, &path, &text);
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for f in ["admin.conf", "id", "known_hosts"] {
        std::fs::write(d.join(f), "x").unwrap();
    }
    let mut toml = String::from(
        "[cluster]\nname = \"t\"\nkubeconfig = \"admin.conf\"\napi_endpoint = \"https://127.0.0.10:6443\"\n\
         [ssh]\nidentity = \"id\"\nknown_hosts = \"known_hosts\"\n",
    );
    let mut names = Vec::new();
    for i in 1..=3 {
        names.push((format!("cp-{i}"), true));
    }
    for i in 1..=workers {
        names.push((format!("w-{i}"), false));
    }
    for (i, (name, cp)) in names.iter().enumerate() {
        let role = if *cp { "control-plane" } else { "worker" };
        toml.push_str(&format!(
            "[[nodes]]\nname = \"{name}\"\naddress = \"127.0.0.{}\"\nroles = [\"{role}\"]\n",
            11 + i
        ));
    }
    toml.push_str(&format!("[rotation]\nmax_unavailable_workers = {max_unavailable}\n"));
    let inventory = Inventory::parse(&toml, std::path::Path::new("t.toml"), d).unwrap();
    let mut nodes = BTreeMap::new();
    for (name, cp) in &names {
        let root = d.join(name);
        put(&root, "/var/lib/kubelet/config.yaml", KUBELET_CONFIG);
        put(&root, "/etc/kubernetes/kubelet.conf", KUBELET_CONF);
        let (manifests, _) = layout("/etc/kubernetes/manifests", "");
        std::fs::create_dir_all(root.join(manifests.trim_start_matches('/'))).unwrap();
        for (path, text) in extra {
            put(&root, path, text);
        }
        if *cp {
            put(&root, "/etc/kubernetes/manifests/kube-apiserver.yaml", APISERVER_YAML);
            put(&root, "/etc/kubernetes/manifests/kube-controller-manager.yaml", CM_YAML);
            put(&root, "/etc/kubernetes/manifests/kube-scheduler.yaml", SCHED_YAML);
            for conf in
                ["admin.conf", "super-admin.conf", "controller-manager.conf", "scheduler.conf"]
            {
                put(&root, &format!("/etc/kubernetes/{conf}"), ADMIN_CONF);
            }
        }
        nodes.insert(name.clone(), discover(&LocalNode::new(name, &root)).await.unwrap());
    }
    let facts = ClusterFacts {
        nodes,
        extension_workloads: vec!["kube-system/Deployment/metrics-server".into()],
        namespaces: vec!["kube-system".into(), "default".into()],
    };
    (dir, inventory, facts)
}

/// Regression: with the apiservers' client CA in a file of its own, the trust model checked
/// kubeadm's default `ca.crt` instead, which the plan never touches, and `init` refused the
/// rotation ("rollback: step undo:... would break admin@cp-1 -> kube-apiserver@cp-3 ... the
/// server nothing").
#[tokio::test]
async fn apiservers_with_their_client_ca_in_another_file_get_a_plan() {
    let client_ca_elsewhere = |path: &str, text: &str| {
        let text = if path.ends_with("/kube-apiserver.yaml") {
            text.replace(
                "--client-ca-file=/etc/kubernetes/pki/ca.crt",
                "--client-ca-file=/etc/kubernetes/pki/client-ca.crt",
            )
        } else {
            text.to_owned()
        };
        (path.to_owned(), text)
    };
    let (_d, inv, facts) = cluster_with(2, 1, client_ca_elsewhere, &[]).await;
    let plan = build(&inv, &facts, "r1").unwrap_or_else(|e| panic!("{e}"));
    let topo = topology(&inv, &facts);
    let total = plan.steps().count();
    for done in 0..=total {
        check_rollback(&plan, &topo, done).unwrap_or_else(|v| panic!("after {done}: {v}"));
    }
}

/// A cluster laid out otherwise than kubeadm's defaults everywhere discovery looks
/// ([`crate::fixtures`]): the plan, the trust simulation and the undo all work on the files
/// where they are, and none names a kubeadm default.
#[tokio::test]
async fn a_cluster_laid_out_otherwise_is_planned_simulated_and_undone_where_its_files_are() {
    use crate::fixtures::{self, elsewhere};
    let (_d, inv, facts) = cluster_with(2, 1, elsewhere, &[fixtures::DROPIN]).await;
    let plan = build(&inv, &facts, "r1").unwrap_or_else(|e| panic!("{e}"));
    let topo = topology(&inv, &facts);
    assert_eq!(topo.layout("w-1").kubelet.client_cert, fixtures::KUBELET_CLIENT_CERT);
    assert_eq!(topo.layout("cp-2").apiserver.port, fixtures::APISERVER_PORT);

    // The plan: no kubeadm default path anywhere in it.
    let recorded = serde_json::to_string(&plan).unwrap();
    for default in ["/etc/kubernetes/pki", "/etc/kubernetes/manifests", "/var/lib/kubelet"] {
        assert!(!recorded.contains(default), "the plan names {default}");
    }
    let action = |id: &str| &plan.steps().find(|s| s.id.as_str() == id).unwrap().action;
    let Action::SetFlags { manifest, flags, .. } = action("finalize/apiserver/cp-1") else {
        panic!("finalize/apiserver/cp-1 sets flags")
    };
    assert_eq!(manifest, &format!("{}/kube-apiserver.yaml", fixtures::STATIC_POD_PATH));
    assert_eq!(flags["--client-ca-file"], fixtures::APISERVER_CLIENT_CA, "back to its own file");
    let Action::PutFiles { files, .. } = action("finalize/canonical-ca/cp-1") else {
        panic!("finalize/canonical-ca/cp-1 writes files")
    };
    assert!(
        files.contains(&(
            fixtures::APISERVER_CLIENT_CA.into(),
            Content::NewCert(CaKind::Cluster),
            0o644
        )),
        "the file the apiserver is pointed back at holds the new CA: {files:?}"
    );
    let Action::RollKubelet { config, kubeconfig, target, .. } = action("trust-nodes/kubelet/w-1")
    else {
        panic!("trust-nodes/kubelet/w-1 rolls a kubelet")
    };
    assert_eq!(
        (config.as_str(), kubeconfig.as_str()),
        (fixtures::KUBELET_CONFIG, fixtures::KUBELET_KUBECONFIG)
    );
    assert_eq!(target.client_ca_file, format!("{}/ca-bundle.crt", fixtures::PKI));

    // The undo of a kubelet roll restores the client certificate where it is, and the
    // backup holds it.
    let undo = action("trust-nodes/kubelet/w-1").compensations(1, &topo);
    let Action::RestoreFiles { paths, .. } = &undo[0].action else {
        panic!("the undo restores files: {undo:?}")
    };
    assert!(paths.iter().any(|p| p == fixtures::KUBELET_CLIENT_CERT), "{paths:?}");
    let Action::Backup { paths, .. } = action("preflight/backup/w-1") else { panic!("a backup") };
    assert!(paths.iter().any(|p| p == fixtures::KUBELET_CLIENT_CERT), "{paths:?}");

    // The trust simulation loads from the discovered files and ends on the new CA there.
    let world = trust::kubeadm(&topo);
    let api = ComponentId::on(APISERVER, "cp-1");
    assert_eq!(
        world.components[&api].slots[slot::CLIENT_CA],
        Source::file("cp-1", fixtures::APISERVER_CLIENT_CA)
    );
    let steps: Vec<SimStep> = plan
        .steps()
        .map(|s| SimStep { id: s.id.to_string(), effects: s.action.effects(&topo) })
        .collect();
    let end = world.simulate(&steps).unwrap();
    assert_eq!(end.loaded(&api, slot::CLIENT_CA), &Material::bundle([trust::ca::NEW]));
    assert_eq!(end.loaded(&api, slot::SERVING_CERT), &Material::cert(trust::ca::NEW));
    let kubelet = ComponentId::on(KUBELET, "w-1");
    assert_eq!(end.loaded(&kubelet, slot::CLIENT_CERT), &Material::cert(trust::ca::NEW));
    assert_eq!(end.loaded(&kubelet, slot::CLIENT_CA), &Material::bundle([trust::ca::NEW]));

    // A rollback from any point keeps every edge and ends where the cluster began.
    let total = plan.steps().count();
    for done in 0..=total {
        check_rollback(&plan, &topo, done).unwrap_or_else(|v| panic!("after {done}: {v}"));
    }

    // The same plan checked on kubeadm's default paths (a topology without layouts) is
    // refused: the check depends on the discovered layout.
    let assumed = Topology { layouts: BTreeMap::new(), ..topo };
    assert!(check(&plan, &assumed).is_err());
}

#[tokio::test]
async fn the_full_plan_for_three_plus_two_keeps_every_edge() {
    let (_d, inv, facts) = cluster(2, 1).await;
    let plan = build(&inv, &facts, "r1").unwrap();
    let labels: std::collections::BTreeSet<&str> =
        plan.steps().filter_map(|s| s.upstream.as_deref()).collect();
    for label in [
        "caution", "1", "2", "3", "4", "5", "7", "9.1", "9.2", "9.3", "9.4", "10", "11.1", "11.2",
        "12", "12.1", "12.2", "12.3",
    ] {
        assert!(labels.contains(label), "no step implements upstream {label}");
    }
    let gate_at = plan.items.iter().position(|i| matches!(i, engine::Item::Gate(_))).unwrap();
    assert!(
        plan.items[gate_at + 1..]
            .iter()
            .all(|i| matches!(i, engine::Item::Step(s) if s.phase.as_str() == "finalize"))
    );
    // kubeadm#1350: the controller-manager's --client-ca-file is never pointed at a bundle.
    for s in plan.steps() {
        if let Action::SetFlags { component, flags, .. } = &s.action
            && component == CONTROLLER_MANAGER
        {
            assert!(!flags.contains_key("--client-ca-file"), "{}", s.id);
            if let Some(v) = flags.get("--cluster-signing-cert-file") {
                assert!(!v.contains("bundle"), "{}: {v}", s.id);
            }
        }
    }
}

#[tokio::test]
async fn worker_kubelets_roll_in_groups_of_max_unavailable_and_control_planes_one_by_one() {
    let (_d, inv, facts) = cluster(4, 2).await;
    let plan = build(&inv, &facts, "r1").unwrap();
    let workers = plan.find_group(&"kubelets-workers".into()).unwrap();
    assert_eq!(workers.limit, 2);
    assert_eq!(plan.find_group(&"kubelets-control-plane".into()).unwrap().limit, 1);
    let in_group: Vec<&str> = plan
        .steps()
        .filter(|s| s.group.as_ref().is_some_and(|g| g.as_str() == "kubelets-workers"))
        .map(|s| s.id.as_str())
        .collect();
    assert_eq!(in_group.len(), 4);
    // The apiserver switches are serial steps (no group), in node order.
    let switches: Vec<&str> = plan
        .steps()
        .filter(|s| s.id.as_str().starts_with("switch/apiserver/"))
        .map(|s| {
            assert!(s.group.is_none());
            s.id.as_str()
        })
        .collect();
    assert_eq!(
        switches,
        ["switch/apiserver/cp-1", "switch/apiserver/cp-2", "switch/apiserver/cp-3"]
    );
}

fn reorder(plan: &mut Plan<Action>, moved: impl Fn(&Step<Action>) -> bool, before: &str) {
    let items: Vec<engine::Item<Action>> = std::mem::take(&mut plan.items);
    let (taken, mut rest): (Vec<_>, Vec<_>) =
        items.into_iter().partition(|i| matches!(i, engine::Item::Step(s) if moved(s)));
    let at = rest
        .iter()
        .position(|i| matches!(i, engine::Item::Step(s) if s.id.as_str().starts_with(before)))
        .unwrap();
    for (k, item) in taken.into_iter().enumerate() {
        rest.insert(at + k, item);
    }
    plan.items = rest;
}

#[tokio::test]
async fn switching_the_apiserver_before_the_kubelets_trust_the_new_ca_is_refused() {
    let (_d, inv, facts) = cluster(2, 1).await;
    let mut plan = assemble(&inv, &facts, "r1").unwrap();
    reorder(
        &mut plan,
        |s| s.id.as_str().starts_with("switch/") && s.id.as_str().contains("cp-1"),
        "trust-nodes/kubelet/",
    );
    let v = check_trust(&plan, &topology(&inv, &facts)).unwrap_err();
    // The apiserver reloads its serving pair (dynamiccertificates), so the re-issued
    // certificate is served from its write on, before the apiserver's restart.
    assert!(v.step.starts_with("switch/reissue/cp-1/apiserver.crt (at"), "{v}");
    assert!(v.edge.starts_with("kubelet@") && v.edge.ends_with("(kubelet->apiserver)"), "{v}");
}

#[tokio::test]
async fn a_kubelet_dropping_old_ca_before_apiserver_kubelet_client_is_reissued_is_refused() {
    let (_d, inv, facts) = cluster(2, 1).await;
    let mut plan = assemble(&inv, &facts, "r1").unwrap();
    // w-1's kubelet is made to trust only the new CA for clients (its kubeconfig still trusts
    // both), before the switch re-issues apiserver-kubelet-client.
    let only_new = "/etc/kubernetes/pki/ca-only-new.crt";
    let early = vec![
        Step::new(
            "bad/only-new-file",
            "trust-nodes",
            "distribute",
            Action::PutFiles {
                node: "w-1".into(),
                files: vec![(only_new.into(), Content::NewCert(CaKind::Cluster), 0o644)],
                loaded_by: Vec::new(),
            },
        )
        .upstream("12.3"),
        Step::new(
            "bad/kubelet/w-1",
            "trust-nodes",
            "kubelet",
            Action::RollKubelet {
                prior: None,
                node: "w-1".into(),
                config: "/var/lib/kubelet/config.yaml".into(),
                kubeconfig: "/etc/kubernetes/kubelet.conf".into(),
                target: KubeletTarget {
                    client_ca_file: only_new.into(),
                    kubeconfig_ca: Content::Bundle(CaKind::Cluster),
                    reissue_client_cert: true,
                    reissue_serving_cert: None,
                },
            },
        )
        .upstream("12.3"),
    ];
    let at = plan
        .items
        .iter()
        .position(|i| matches!(i, engine::Item::Step(s) if s.id.as_str() == "switch/reissue/cp-1/apiserver.crt"))
        .unwrap();
    for (k, s) in early.into_iter().enumerate() {
        plan.items.insert(at + k, engine::Item::Step(s));
    }
    let v = check_trust(&plan, &topology(&inv, &facts)).unwrap_err();
    assert_eq!(v.step, "bad/kubelet/w-1");
    assert_eq!(v.edge, "kube-apiserver@cp-1 -> kubelet@w-1 (apiserver->kubelet)");
    assert!(matches!(v.why, trust::Break::BadClientCert { .. }), "{v}");
}

#[tokio::test]
async fn rollback_from_every_phase_boundary_keeps_every_edge_and_ends_on_the_old_configuration() {
    let (_d, inv, facts) = cluster(2, 1).await;
    let plan = build(&inv, &facts, "r1").unwrap();
    let topo = topology(&inv, &facts);
    let mut failures = Vec::new();
    let steps: Vec<&Step<Action>> = plan.steps().collect();
    for phase in PHASES {
        let done = steps.iter().rposition(|s| s.phase.as_str() == phase).map_or(0, |i| i + 1);
        if let Err(v) = check_rollback(&plan, &topo, done) {
            failures.push(format!("after {phase} ({done} steps): {v}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[tokio::test]
async fn rollback_after_any_number_of_steps_keeps_every_edge() {
    let (_d, inv, facts) = cluster(2, 1).await;
    let plan = build(&inv, &facts, "r1").unwrap();
    let topo = topology(&inv, &facts);
    let total = plan.steps().count();
    let failures: Vec<String> = (0..=total)
        .filter_map(|done| {
            check_rollback(&plan, &topo, done).err().map(|v| format!("after {done}: {v}"))
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} rollback points break:\n{}",
        failures.len(),
        total + 1,
        failures.join("\n")
    );
}

#[tokio::test]
async fn with_kubelet_certificate_authority_kubelet_serving_certs_move_to_the_new_ca() {
    let (_d, inv, mut facts) = cluster(2, 1).await;
    for f in facts.nodes.values_mut() {
        if let Some(p) = f.static_pods.get_mut(APISERVER) {
            p.flags.insert(
                "--kubelet-certificate-authority".into(),
                "/etc/kubernetes/pki/ca.crt".into(),
            );
        }
    }
    let plan = build(&inv, &facts, "r1").unwrap();
    let topo = topology(&inv, &facts);
    assert!(topo.kubelet_certificate_authority.is_some());
    let total = plan.steps().count();
    for done in 0..=total {
        check_rollback(&plan, &topo, done).unwrap_or_else(|v| panic!("after {done}: {v}"));
    }
}

/// With `serverTLSBootstrap` the kubelets' serving certificates came from the CSR API, signed by
/// the cluster CA: each is re-issued by the new one in trust-nodes (key kept), backed up first,
/// and every prefix of the plan still rolls back.
#[tokio::test]
async fn bootstrapped_kubelet_serving_certs_move_to_the_new_ca() {
    let (_d, inv, mut facts) = cluster(2, 1).await;
    let current = "/var/lib/kubelet/pki/kubelet-server-current.pem";
    for f in facts.nodes.values_mut() {
        let k = f.kubelet.as_mut().unwrap();
        k.serving_bootstrap = true;
        k.serving_cert = current.into();
    }
    let plan = build(&inv, &facts, "r1").unwrap();
    let topo = topology(&inv, &facts);
    assert!(topo.kubelet_certificate_authority.is_none(), "the apiservers verify no kubelet");
    for node in ["cp-1", "cp-2", "w-1"] {
        let id = format!("trust-nodes/kubelet/{node}");
        let step = plan.steps().find(|s| s.id.as_str() == id).unwrap();
        let Action::RollKubelet { target, .. } = &step.action else {
            panic!("trust-nodes/kubelet/{node} is not a kubelet roll");
        };
        assert_eq!(target.reissue_serving_cert.as_deref(), Some(current), "{node}");
        let backs_up = |a: &Action| match a {
            Action::Backup { node: n, paths } => n == node && paths.iter().any(|p| p == current),
            _ => false,
        };
        let backed = plan.steps().any(|s| backs_up(&s.action));
        assert!(backed, "{node}: {current} is not backed up");
    }
    let total = plan.steps().count();
    for done in 0..=total {
        check_rollback(&plan, &topo, done).unwrap_or_else(|v| panic!("after {done}: {v}"));
    }
}

#[tokio::test]
async fn every_file_a_rollback_may_restore_is_backed_up_first() {
    let (_d, inv, facts) = cluster(2, 1).await;
    let plan = build(&inv, &facts, "r1").unwrap();
    let topo = topology(&inv, &facts);
    let mut backed: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for s in plan.steps() {
        if let Action::Backup { node, paths } = &s.action {
            backed.insert(node.clone(), paths.clone());
        }
    }
    for s in plan.steps() {
        for (node, path) in restorable(&s.action, &topo) {
            assert!(
                backed.get(&node).is_some_and(|p| p.contains(&path)),
                "{}: {node}:{path} is restored by a rollback but not backed up",
                s.id
            );
        }
    }
    assert!(backed["w-1"].contains(&"/etc/kubernetes/pki/ca-bundle.crt".to_owned()));
}

#[tokio::test]
async fn a_plan_missing_the_pod_restart_is_refused_at_the_first_switch() {
    let (_d, inv, facts) = cluster(2, 1).await;
    let mut plan = assemble(&inv, &facts, "r1").unwrap();
    plan.items.retain(|i| !matches!(i, engine::Item::Step(s) if s.id.as_str() == "trust-control-plane/restart-pods"));
    let v = check_trust(&plan, &topology(&inv, &facts)).unwrap_err();
    // At the re-issue of cp-1's serving certificate, which the apiserver reloads.
    assert!(v.step.starts_with("switch/reissue/cp-1/apiserver.crt (at"), "{v}");
    assert!(v.edge.starts_with("pod/"), "{v}");
}

/// The apiservers merge their CAs into extension-apiserver-authentication and never remove
/// one: without the step that publishes both CAs before their restarts (and, undone, puts the
/// old ones back), a rollback leaves the aggregated servers trusting the new front-proxy CA.
#[tokio::test]
async fn a_rollback_without_replacing_the_merged_authentication_cas_is_refused() {
    let (_d, inv, facts) = cluster(2, 1).await;
    let mut plan = assemble(&inv, &facts, "r1").unwrap();
    let topo = topology(&inv, &facts);
    let total = plan.steps().count();
    assert!(check_rollback(&plan, &topo, total).is_ok());
    plan.items.retain(|i| !matches!(i, engine::Item::Step(s) if s.id.as_str() == "trust-control-plane/authentication-cas"));
    let v = check_rollback(&plan, &topo, total - 1).unwrap_err();
    assert!(v.edge.starts_with("aggregated/"), "{v}");
    assert!(v.to_string().contains("front-proxy/new"), "{v}");
    // And finalize replaces them only after every apiserver's flags point back at new-only files.
    let ids: Vec<String> = plan.steps().map(|s| s.id.to_string()).collect();
    let replaced = ids.iter().position(|i| i == "finalize/authentication-cas").unwrap();
    let last_apiserver =
        ids.iter().rposition(|i| i.starts_with("finalize/") && i.contains("apiserver")).unwrap();
    assert!(last_apiserver < replaced, "{ids:?}");
}

/// A cloud-controller-manager run as a static pod, with its `--root-ca-file` at kubeadm's CA
/// (its kubeconfig, a file of its own on a real node, is left out: kubeca does not rewrite it).
const CCM_YAML: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: cloud-controller-manager\n  \
namespace: kube-system\nspec:\n  containers:\n  - command:\n    - cloud-controller-manager\n    \
- --root-ca-file=/etc/kubernetes/pki/ca.crt\n    image: registry.example/ccm:v1\n    \
name: cloud-controller-manager\n";

/// Regression: finalize left the cloud-controller-manager's `--root-ca-file` on the bundle
/// (upstream step 8 points it there), which cleanup then removes: the component would not
/// start again at its next restart. Finalize now points it back at the file it named before,
/// which then holds the new CA, and does so before the bundle goes.
#[tokio::test]
async fn finalize_points_the_cloud_controller_manager_back_before_its_bundle_is_removed() {
    use crate::kubeadm::component::CLOUD_CONTROLLER_MANAGER;
    let (d, inv, mut facts) = cluster(2, 1).await;
    for i in 1..=3 {
        let name = format!("cp-{i}");
        let root = d.path().join(&name);
        put(&root, "/etc/kubernetes/manifests/cloud-controller-manager.yaml", CCM_YAML);
        facts.nodes.insert(name.clone(), discover(&LocalNode::new(&name, &root)).await.unwrap());
    }
    let plan = build(&inv, &facts, "r1").unwrap_or_else(|e| panic!("{e}"));
    let steps: Vec<&Step<Action>> = plan.steps().collect();
    let root_ca = |s: &Step<Action>, node: &str| match &s.action {
        Action::SetFlags { node: n, component, flags, .. }
            if n == node && component == CLOUD_CONTROLLER_MANAGER =>
        {
            flags.get("--root-ca-file").cloned()
        }
        _ => None,
    };
    for i in 1..=3 {
        let node = format!("cp-{i}");
        let set: Vec<(usize, String, String)> = steps
            .iter()
            .enumerate()
            .filter_map(|(at, s)| root_ca(s, &node).map(|v| (at, s.phase.to_string(), v)))
            .collect();
        let bundle = "/etc/kubernetes/pki/ca-bundle.crt";
        assert_eq!(set.len(), 2, "{node}: step 8 and its finalize: {set:?}");
        assert_eq!((set[0].1.as_str(), set[0].2.as_str()), ("trust-control-plane", bundle));
        assert_eq!(
            (set[1].1.as_str(), set[1].2.as_str()),
            ("finalize", "/etc/kubernetes/pki/ca.crt")
        );
        let removed = steps
            .iter()
            .position(|s| {
                matches!(&s.action, Action::RemoveFiles { node: n, paths, .. }
                    if *n == node && paths.iter().any(|p| p == bundle))
            })
            .unwrap_or_else(|| panic!("{node}: the bundle is removed at the end"));
        assert!(set[1].0 < removed, "{node}: pointed back before its bundle is removed");
    }
    let topo = topology(&inv, &facts);
    for done in 0..=plan.steps().count() {
        check_rollback(&plan, &topo, done).unwrap_or_else(|v| panic!("after {done}: {v}"));
    }
}
