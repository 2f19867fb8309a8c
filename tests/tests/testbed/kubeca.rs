//! kubeca's own node actions on the testbed, over real SSH with strict host keys: the inventory
//! `up` wrote, discovery of what each component loads, the old-CA checks, a trust-checked plan
//! for the discovered cluster, and real writes at kubeadm paths restored byte for byte.

use std::collections::BTreeMap;
use std::time::Duration;

use actions::action::{Action, CaKind, Content, Rotation};
use actions::inventory::Inventory;
use actions::node::{SshNode, SshOptions};
use actions::plan::{self, ClusterFacts};
use engine::{Runner, StepId};

use kubeca_tests::harness::Testbed;

pub fn kubeca_discovers_plans_and_writes_over_ssh(tb: &Testbed) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(discovers_plans_and_writes(tb));
}

async fn discovers_plans_and_writes(tb: &Testbed) {
    let cp1 = tb.address("cp-1");
    let inventory =
        Inventory::load(&tb.dir.join("inventory.toml")).expect("the inventory up wrote parses");
    assert_eq!(inventory.nodes.len(), tb.nodes.len());
    let state = tempfile::tempdir().unwrap();
    let control_dir = state.path().join("ssh");
    journal::create_private_dir(&control_dir).unwrap();
    let opts = SshOptions {
        user: inventory.ssh.user.clone(),
        identity: inventory.ssh.identity.clone(),
        known_hosts: inventory.ssh.known_hosts.clone(),
        strict: true,
        sudo: false,
        timeout: Duration::from_secs(60),
        control_dir,
    };
    let mut nodes = BTreeMap::new();
    let mut facts = BTreeMap::new();
    for n in &inventory.nodes {
        let node = SshNode::connect(&n.name, &n.address, n.port, &opts).await.unwrap();
        let f = actions::discovery::discover(&node).await.unwrap();
        if n.is_control_plane() {
            for c in ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd"] {
                assert!(f.static_pods.contains_key(c), "{}: no {c} discovered", n.name);
            }
        }
        assert!(f.kubelet.as_ref().is_some_and(|k| k.client_ca_file.is_some()), "{}", n.name);
        facts.insert(n.name.clone(), f);
        nodes.insert(n.name.clone(), node);
    }
    let cp = &inventory.control_planes().next().unwrap().name;
    let pairs = vec![
        ("/etc/kubernetes/pki/ca.crt".to_owned(), "/etc/kubernetes/pki/ca.key".to_owned()),
        (
            "/etc/kubernetes/pki/front-proxy-ca.crt".to_owned(),
            "/etc/kubernetes/pki/front-proxy-ca.key".to_owned(),
        ),
    ];
    actions::action::check_old_cas(&nodes[cp], &pairs, jiff::Timestamp::now())
        .await
        .expect("the openssl-made CAs pass");

    // The whole plan for this cluster, trust-checked forward and for rollbacks.
    let cluster = ClusterFacts {
        nodes: facts,
        extension_workloads: vec!["kube-system/Deployment/metrics-server".into()],
        namespaces: vec!["default".into(), "kube-system".into(), "kube-public".into()],
    };
    let plan = plan::build(&inventory, &cluster, "testbed").expect("a trust-checked plan");
    assert!(plan.steps().count() > 100);

    // Real node actions: back up, make the new CA, distribute it and the bundle to cp-1,
    // then restore: every file byte for byte as before.
    let blobs = journal::BlobStore::open(state.path()).unwrap();
    let runner = Rotation::new(inventory.clone(), nodes, blobs, None, &engine::State::default());
    let pki = "/etc/kubernetes/pki";
    let touched: Vec<String> = ["ca-new.crt", "ca-new.key", "ca-bundle.crt", "ca.crt"]
        .iter()
        .map(|f| format!("{pki}/{f}"))
        .collect();
    let run = |id: &'static str, action: Action| {
        let runner = &runner;
        async move {
            let step = StepId::from(id);
            let summary = runner
                .apply(&step, &action)
                .await
                .unwrap_or_else(|e| panic!("{id}: {}", e.message));
            runner.known().borrow_mut().insert(step, summary);
        }
    };
    let before: Vec<Option<Vec<u8>>> = touched.iter().map(|p| tb.ssh_read(cp1, p)).collect();
    run("preflight/backup/cp-1", Action::Backup { node: cp.clone(), paths: touched.clone() }).await;
    run(
        "prepare/new-ca",
        Action::NewCa { ca: CaKind::Cluster, node: cp.clone(), old_cert: format!("{pki}/ca.crt") },
    )
    .await;
    run(
        "prepare/distribute/cp-1",
        Action::PutFiles {
            node: cp.clone(),
            files: vec![
                (format!("{pki}/ca-new.crt"), Content::NewCert(CaKind::Cluster), 0o644),
                (format!("{pki}/ca-new.key"), Content::NewKey(CaKind::Cluster), 0o600),
                (format!("{pki}/ca-bundle.crt"), Content::Bundle(CaKind::Cluster), 0o644),
            ],
            loaded_by: Vec::new(),
        },
    )
    .await;
    // Inside the node: the bundle holds two CAs, the node's apiserver cert verifies against
    // it and not against the new CA alone, and the key is 0600.
    let out = tb.ssh_ok(cp1, "grep -c 'BEGIN CERTIFICATE' /etc/kubernetes/pki/ca-bundle.crt");
    assert_eq!(out.trim(), "2");
    tb.ssh_ok(cp1, &format!("openssl verify -CAfile {pki}/ca-bundle.crt {pki}/apiserver.crt"));
    let verify_new = format!("openssl verify -CAfile {pki}/ca-new.crt {pki}/apiserver.crt");
    assert!(!tb.ssh(cp1, &verify_new).status.success());
    assert_eq!(tb.ssh_ok(cp1, "stat -c %a /etc/kubernetes/pki/ca-new.key").trim(), "600");

    // Upstream 9.2 on a real kubelet (w-1): the bundle as its client CA, its kubeconfig
    // trusting both, client and serving certificates re-issued by the new CA, restarted with
    // systemctl; done only when it accepts a client certificate of the new CA on :10250.
    let worker = "w-1".to_owned();
    let w_addr = tb.address("w-1");
    let k = cluster.nodes[&worker].kubelet.clone().unwrap();
    let w_bundle = format!("{pki}/ca-bundle.crt");
    let w_touched = vec![
        w_bundle.clone(),
        k.config.clone(),
        k.kubeconfig.clone(),
        actions::discovery::defaults::KUBELET_CLIENT_CURRENT.to_owned(),
        k.serving_cert.clone(),
    ];
    let w_before: Vec<Option<Vec<u8>>> = w_touched.iter().map(|p| tb.ssh_read(w_addr, p)).collect();
    run("preflight/backup/w-1", Action::Backup { node: worker.clone(), paths: w_touched.clone() })
        .await;
    run(
        "prepare/distribute/w-1",
        Action::PutFiles {
            node: worker.clone(),
            files: vec![(w_bundle.clone(), Content::Bundle(CaKind::Cluster), 0o644)],
            loaded_by: Vec::new(),
        },
    )
    .await;
    let roll = Action::RollKubelet {
        node: worker.clone(),
        config: k.config.clone(),
        kubeconfig: k.kubeconfig.clone(),
        target: actions::action::KubeletTarget {
            client_ca_file: w_bundle.clone(),
            kubeconfig_ca: Content::Bundle(CaKind::Cluster),
            reissue_client_cert: true,
            reissue_serving_cert: Some(k.serving_cert.clone()),
        },
        prior: None,
    };
    run("trust-nodes/kubelet/w-1", roll.clone()).await;
    // Re-issued by the new CA: verifies with the bundle, no longer with the old CA alone.
    tb.ssh_ok(w_addr, &format!("openssl verify -CAfile {w_bundle} {}", k.serving_cert));
    let old_only =
        tb.ssh(w_addr, &format!("openssl verify -CAfile {pki}/ca.crt {}", k.serving_cert));
    assert!(!old_only.status.success(), "the serving certificate is still the old CA's");
    tb.ssh_ok(
        w_addr,
        &format!(
            "openssl verify -CAfile {w_bundle} {}",
            actions::discovery::defaults::KUBELET_CLIENT_CURRENT
        ),
    );
    assert!(
        runner.check(&StepId::from("trust-nodes/kubelet/w-1"), &roll).await.unwrap().is_some(),
        "after a crash the roll is recognised as done"
    );

    // Observed through TLS, independently of kubeca: a client certificate made by openssl
    // with the new CA is accepted by w-1's kubelet now, and refused after the rollback.
    tb.ssh_ok(
        cp1,
        "cd /tmp && printf 'basicConstraints=CA:FALSE\\n\
         keyUsage=digitalSignature,keyEncipherment\\n\
         extendedKeyUsage=clientAuth\\n' > kubeca-probe.ext \
         && openssl req -newkey rsa:2048 -nodes -keyout kubeca-probe.key -out kubeca-probe.csr \
         -subj /CN=kubeca-probe 2>/dev/null && openssl x509 -req -in kubeca-probe.csr \
         -CA /etc/kubernetes/pki/ca-new.crt -CAkey /etc/kubernetes/pki/ca-new.key \
         -CAserial /tmp/kubeca-probe.srl -CAcreateserial -extfile kubeca-probe.ext \
         -out kubeca-probe.crt -days 1 2>/dev/null",
    );
    let new_ca_client = || {
        let out = tb.ssh(
            cp1,
            &format!(
                "curl -sk --max-time 5 --cert /tmp/kubeca-probe.crt --key /tmp/kubeca-probe.key \
                 -o /dev/null -w '%{{http_code}}' https://{w_addr}:10250/healthz"
            ),
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    // The kubelet completes the handshake with any certificate and answers one its client CA
    // did not sign with 401 (as the real one does): accepted is 200.
    let accepted = new_ca_client();
    assert!(accepted == "200", "w-1's kubelet refuses the new CA's client: {accepted}");

    // Rollback of w-1: files back, kubelet restarted onto them.
    run(
        "rollback/w-1",
        Action::RestoreFiles { node: Some(worker.clone()), paths: w_touched.clone() },
    )
    .await;
    run("rollback/w-1/kubelet", Action::RestartKubelet { node: worker.clone() }).await;
    for (path, was) in w_touched.iter().zip(w_before) {
        assert_eq!(tb.ssh_read(w_addr, path), was, "w-1:{path} restored exactly");
    }
    assert_eq!(new_ca_client(), "401", "after the rollback w-1's kubelet trusts only the old CA");
    let link = tb.ssh_ok(
        w_addr,
        &format!("stat -c %F {}", actions::discovery::defaults::KUBELET_CLIENT_CURRENT),
    );
    assert!(link.contains("symbolic link"), "kubelet-client-current.pem is still a link: {link}");

    run(
        "rollback/restore",
        Action::RestoreFiles { node: Some(cp.clone()), paths: touched.clone() },
    )
    .await;
    for (path, was) in touched.iter().zip(before) {
        assert_eq!(tb.ssh_read(cp1, path), was, "{path} restored exactly");
    }
}
