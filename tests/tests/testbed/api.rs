//! Checks through the Kubernetes API with the real kubectl: nodes Ready, every kubeconfig
//! working, the aggregated API through the front proxy, haproxy over a dead apiserver, the trust
//! monitor catching an untrusted serving certificate, and the controller-manager refusing a
//! bundle in --cluster-signing-cert-file (kubeadm#1350).

use std::fs;
use std::process::Command;
use std::time::Duration;

use kubeca_tests::harness::in_cluster;
use kubeca_tests::harness::testbed::static_pod_pid;
use kubeca_tests::harness::tools::kubectl;
use kubeca_tests::harness::{Testbed, eventually, testbed_bin, text};

/// kube-system/api-proxy runs real `kubectl proxy` in-cluster: each of its two containers in a
/// mount namespace of its own, where `/var/run/secrets/kubernetes.io/serviceaccount` is the
/// pod's projected volume, and its client is answered 200 through the proxy. The same kubectl
/// run as a container whose volume holds a CA that did not sign the apiserver prints the x509
/// error the end-to-end tests look for, and is answered once the volume holds the right CA.
pub fn kubectl_proxy_runs_in_cluster(tb: &Testbed) {
    let pods: serde_json::Value = serde_json::from_str(&tb.kubectl_ok(&[
        "get",
        "pods",
        "-n",
        "kube-system",
        "-l",
        "k8s-app=api-proxy",
        "-o",
        "json",
    ]))
    .unwrap();
    // The Deployment's running pod: a replaced one may still be listed while it terminates.
    let pod = pods["items"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["status"]["phase"] == "Running" && p["metadata"]["deletionTimestamp"].is_null())
        .unwrap_or_else(|| panic!("no running api-proxy pod: {pods}"));
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_else(|| panic!("no api-proxy pod: {pods}"));
    let node = pod["spec"]["nodeName"].as_str().unwrap();
    let state: serde_json::Value = serde_json::from_slice(
        &fs::read(tb.node_path(node, &format!("run/kubelet/api-pods/{uid}.json"))).unwrap(),
    )
    .unwrap();
    let volume = tb.node_path(
        node,
        &format!("var-lib-kubelet/pods/{uid}/volumes/kubernetes.io~projected/kube-api-access"),
    );
    let node_ns = fs::read_to_string(tb.dir.join("nodes").join(node).join("mntns")).unwrap();
    let containers = state["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 2, "{state}");
    for c in containers {
        let pid = c["pid"].as_u64().unwrap();
        let ns = fs::metadata(format!("/proc/{pid}/ns/mnt")).map(|m| {
            use std::os::unix::fs::MetadataExt;
            m.ino().to_string()
        });
        assert_ne!(
            ns.unwrap(),
            node_ns.trim(),
            "{}: not in a mount namespace of its own",
            c["name"]
        );
        let mountinfo = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
        let sa = mountinfo
            .lines()
            .find(|l| {
                l.split_whitespace().nth(4) == Some("/run/secrets/kubernetes.io/serviceaccount")
            })
            .unwrap_or_else(|| panic!("{}: no service-account mount:\n{mountinfo}", c["name"]));
        assert!(sa.contains(volume.to_str().unwrap()), "{}: {sa}", c["name"]);
        assert!(sa.split_whitespace().nth(5).unwrap().starts_with("ro"), "{}: {sa}", c["name"]);
    }
    let since = jiff::Timestamp::now().to_string();
    let answered = in_cluster::assert_clean_since(tb, &since);
    assert!(answered >= 1, "no answer counted since {since}");
    assert!(
        in_cluster::lines(tb)
            .iter()
            .any(|l| l.text.starts_with("Starting to serve on /var/run/api-proxy/proxy.sock")),
        "kubectl proxy did not say where it serves"
    );

    // By hand, as a container of a pod whose ca.crt is the front-proxy CA, with the pod's token.
    let work = tempfile::tempdir().unwrap();
    let sa = work.path().join("sa");
    fs::create_dir_all(&sa).unwrap();
    fs::copy(volume.join("token"), sa.join("token")).unwrap();
    // From a control plane: the pod may run on a worker, which has no front-proxy CA.
    fs::copy(tb.node_path("cp-1", "etc-kubernetes/pki/front-proxy-ca.crt"), sa.join("ca.crt"))
        .unwrap();
    let kubectl_bin = kubeca_tests::testbed::kubelet::pinned_kubectl(
        kubeca_tests::testbed::apiserver::API_PROXY_KUBECTL,
    )
    .unwrap();
    let lb = tb.subnet.lb_endpoint();
    let run = || {
        let out = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "--"])
            .arg(testbed_bin())
            .args(["container", "--mount"])
            .arg(format!("{}:/var/run/secrets/kubernetes.io/serviceaccount:ro", sa.display()))
            .arg("--")
            .arg(&kubectl_bin)
            // No other flag: one that changes the client's config (--request-timeout, say)
            // makes it differ from the default, and kubectl then does not go in-cluster but to
            // localhost:8080 (client-go's clientcmd/merged_client_builder.go, ClientConfig).
            .args(["get", "--raw", "/api"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap())
            .env("HOME", work.path())
            .env("KUBERNETES_SERVICE_HOST", lb.ip().to_string())
            .env("KUBERNETES_SERVICE_PORT", lb.port().to_string())
            .output()
            .unwrap();
        (out.status.success(), text(&out))
    };
    let before = jiff::Timestamp::now().to_string();
    let (ok, said) = run();
    assert!(!ok && in_cluster::is_trust_error(&said), "kubectl trusting the wrong CA: {said}");
    assert!(said.contains("x509"), "{said}");
    // Its alert reached the apiserver, whose monitor line is a trust failure.
    eventually("the apiserver recording kubectl's alert", Duration::from_secs(10), || {
        let (_, failures, report) = tb.report_since(&before);
        if failures >= 1 { Ok(()) } else { Err(report) }
    });
    fs::copy(volume.join("ca.crt"), sa.join("ca.crt")).unwrap();
    let (ok, said) = run();
    assert!(ok && said.contains("\"versions\""), "kubectl trusting the root CA: {said}");
}

/// `kubectl get nodes` shows every node Ready.
pub fn kubectl_shows_every_node_ready(tb: &Testbed) {
    let out = tb.kubectl_ok(&["get", "nodes", "--no-headers"]);
    let ready: Vec<&str> = out
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("Ready"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mut names: Vec<&str> = tb.nodes.iter().map(|n| n.0.as_str()).collect();
    names.sort();
    let mut ready_sorted = ready.clone();
    ready_sorted.sort();
    assert_eq!(ready_sorted, names, "{out}");
}

/// Every kubeconfig kubeadm writes works with kubectl: the control plane's from the host, and
/// kubelet.conf (which names files inside the node) on its node.
pub fn every_kubeconfig_works(tb: &Testbed) {
    for (name, address, cp) in &tb.nodes {
        if *cp {
            for conf in
                ["admin.conf", "super-admin.conf", "controller-manager.conf", "scheduler.conf"]
            {
                let path = tb.node_path(name, &format!("etc-kubernetes/{conf}"));
                let out = kubectl(&path, &["get", "--raw", "/version"]);
                assert!(out.status.success(), "{name}/{conf}: {}", text(&out));
            }
        }
        tb.ssh_ok(
            address,
            "kubectl --kubeconfig /etc/kubernetes/kubelet.conf --request-timeout=10s get --raw /version",
        );
    }
}

/// `kubectl get --raw /apis/metrics.k8s.io/v1beta1` is answered by the aggregated server,
/// reached by the apiserver with its front-proxy client certificate.
pub fn aggregated_api_through_the_front_proxy(tb: &Testbed) {
    let out = tb.kubectl_ok(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["groupVersion"], "metrics.k8s.io/v1beta1", "{out}");
    // metrics-server scrapes every kubelet's /metrics/resource (its service-account token,
    // reviewed by the kubelet through the apiserver): every node measured, twice (a rate).
    let mut want: Vec<String> = tb.nodes.iter().map(|(n, _, _)| n.clone()).collect();
    want.sort();
    let measured = || {
        let out = tb.kubectl(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes"]);
        let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let mut names: Vec<String> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["usage"]["cpu"].as_str().is_some_and(|c| c.ends_with('n')))
            .filter_map(|m| m["metadata"]["name"].as_str().map(String::from))
            .collect();
        names.sort();
        names
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while measured() != want {
        assert!(std::time::Instant::now() < deadline, "nodes measured: {:?}", measured());
        std::thread::sleep(std::time::Duration::from_secs(2));
    }
    let top = tb.kubectl_ok(&["top", "nodes", "--no-headers"]);
    assert_eq!(top.lines().count(), want.len(), "{top}");
    // A node without metrics is NotFound, as `pkg/api/node.go` says it.
    let out = tb.kubectl(&["get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes/nosuch"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("NotFound"), "{err}");
}

/// The monitor records handshakes, and none failed on trust so far.
pub fn report_counts_handshakes_without_failures(tb: &Testbed) {
    let out = Command::new(testbed_bin())
        .args(["report", "--output", "json", "--dir"])
        .arg(&tb.dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["trust_failures"], 0, "{r}");
    assert!(r["total"].as_u64().unwrap() > 0, "the monitor recorded nothing");
    let edges = r["edges"].as_array().unwrap();
    assert!(
        edges
            .iter()
            .any(|e| e["client"] == "kubelet@w-1" && e["outcomes"]["ok"].as_u64() > Some(0)),
        "no successful kubelet@w-1 handshake: {r}"
    );
}

/// The apiserver verifies bearer tokens as the real one does (`pkg/serviceaccount/jwt.go`): a
/// made-up token is answered 401, a pod's projected token (signed through TokenRequest,
/// written by its kubelet) authenticates, and the same token with one byte of its signature
/// changed is refused.
pub fn bearer_tokens_must_verify(tb: &Testbed) {
    let url = format!("https://{}:6443/api", tb.lb());
    let code = |token: &str| {
        let out = Command::new("curl")
            .args(["-sk", "--max-time", "5", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
            .arg(format!("Authorization: Bearer {token}"))
            .arg(&url)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(code("garbage"), "401", "a made-up bearer token must be refused");
    let pods = tb.node_path("w-1", "var-lib-kubelet/pods");
    let token = std::fs::read_dir(&pods)
        .unwrap()
        .flatten()
        .map(|e| e.path().join("volumes/kubernetes.io~projected/kube-api-access/token"))
        .find_map(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_else(|| panic!("no pod on w-1 has a projected token under {}", pods.display()));
    assert_eq!(token.split('.').count(), 3, "a pod's token is a JWT");
    assert_eq!(code(token.trim()), "200", "a pod's projected token must authenticate");
    // The kubelet asks the apiserver (TokenReview) about a token it is given.
    let kubelet = |token: &str| {
        let out = Command::new("curl")
            .args(["-sk", "--max-time", "5", "-w", "\n%{http_code}", "-H"])
            .arg(format!("Authorization: Bearer {token}"))
            .arg(format!("https://{}:10250/metrics/resource", tb.address("w-2")))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let said = kubelet(token.trim());
    assert!(said.ends_with("\n200") && said.contains("\nnode_cpu_usage_seconds_total "), "{said}");
    assert_eq!(kubelet("garbage"), "Unauthorized\n401", "the kubelet refuses a bad token");
    // One character inside the signature (not its last, whose low bits may be padding).
    let token = token.trim();
    let at = token.rfind('.').unwrap() + 5;
    let was = token.as_bytes()[at];
    let mut forged = token.to_string();
    forged.replace_range(at..=at, if was == b'A' { "B" } else { "A" });
    assert_eq!(code(&forged), "401", "a token whose signature was changed must be refused");
}

/// With one apiserver killed, kubectl keeps working through haproxy; the kubelet restarts it.
pub fn killing_one_apiserver_leaves_kubectl_working(tb: &Testbed) {
    let pid = static_pod_pid(tb, "cp-1", "kube-apiserver").expect("the apiserver runs on cp-1");
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(pid as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    for _ in 0..10 {
        tb.kubectl_ok(&["get", "nodes", "--no-headers"]);
    }
    eventually("the kubelet to restart cp-1's apiserver", Duration::from_secs(30), || {
        static_pod_pid(tb, "cp-1", "kube-apiserver").is_some_and(|p| p != pid)
    });
    eventually("cp-1's apiserver to answer", Duration::from_secs(30), || {
        let conf = tb.node_path("cp-1", "etc-kubernetes/super-admin.conf");
        // A later --request-timeout wins over the wrapper's.
        kubectl(&conf, &["--request-timeout=3s", "get", "--raw", "/readyz"]).status.success()
    });
}

/// Moves a static pod's manifest away and back (the upstream way to restart it), waiting for
/// the pod to stop and to run again.
fn restart_static_pod(tb: &Testbed, node: &str, pod: &str) {
    let manifest = tb.node_path(node, &format!("etc-kubernetes/manifests/{pod}.yaml"));
    let away = tb.node_path(node, &format!("etc-kubernetes/{pod}.yaml.away"));
    fs::rename(&manifest, &away).unwrap();
    eventually(&format!("{pod} on {node} to stop"), Duration::from_secs(20), || {
        static_pod_pid(tb, node, pod).is_none()
    });
    fs::rename(&away, &manifest).unwrap();
    eventually(&format!("{pod} on {node} to run"), Duration::from_secs(20), || {
        static_pod_pid(tb, node, pod).is_some()
    });
}

/// An apiserver serving a certificate from a CA nobody trusts makes its clients record
/// `tls-untrusted-server`, and `report` fails; putting the real certificate back heals it.
pub fn untrusted_serving_certificate_fails_the_report(tb: &Testbed) {
    let since = jiff::Timestamp::now().to_string();
    let pki = tb.node_path("cp-2", "etc-kubernetes/pki");
    let (crt, key) = (pki.join("apiserver.crt"), pki.join("apiserver.key"));
    let (saved_crt, saved_key) = (fs::read(&crt).unwrap(), fs::read(&key).unwrap());
    let rogue = tempfile::tempdir().unwrap();
    let r = rogue.path();
    let sh = format!(
        "set -e; cd {r}; openssl req -x509 -newkey rsa:2048 -noenc -subj /CN=nobody-trusts-me \
         -days 1 -keyout ca.key -out ca.crt 2>/dev/null; \
         openssl x509 -in {crt} -noout -ext subjectAltName | tail -1 | sed 's/IP Address/IP/g; s/^ *//' > sans; \
         openssl req -new -newkey rsa:2048 -noenc -subj /CN=kube-apiserver -keyout leaf.key -out leaf.csr 2>/dev/null; \
         printf 'subjectAltName=%s\\n' \"$(cat sans)\" > ext; \
         openssl x509 -req -in leaf.csr -CA ca.crt -CAkey ca.key -days 1 -extfile ext -out leaf.crt 2>/dev/null",
        r = r.display(),
        crt = crt.display()
    );
    let out = Command::new("sh").arg("-c").arg(&sh).output().unwrap();
    assert!(out.status.success(), "making the rogue certificate: {}", text(&out));
    fs::copy(r.join("leaf.crt"), &crt).unwrap();
    fs::copy(r.join("leaf.key"), &key).unwrap();
    restart_static_pod(tb, "cp-2", "kube-apiserver");

    let report = || {
        Command::new(testbed_bin())
            .args(["report", "--output", "json", "--since", &since, "--dir"])
            .arg(&tb.dir)
            .output()
            .unwrap()
    };
    eventually("tls-untrusted-server lines", Duration::from_secs(30), || {
        let out = report();
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        r["outcomes"]["tls-untrusted-server"].as_u64() > Some(0)
    });
    let out = report();
    assert!(!out.status.success(), "report succeeded with TLS failures: {}", text(&out));

    fs::write(&crt, saved_crt).unwrap();
    fs::write(&key, saved_key).unwrap();
    restart_static_pod(tb, "cp-2", "kube-apiserver");
    let healed = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3);
    eventually(
        "cp-2's apiserver to answer with its real certificate",
        Duration::from_secs(30),
        || {
            let conf = tb.node_path("cp-2", "etc-kubernetes/super-admin.conf");
            // A later --request-timeout wins over the wrapper's.
            kubectl(&conf, &["--request-timeout=3s", "get", "--raw", "/readyz"]).status.success()
        },
    );
    // Clients that kept retrying see the real certificate again: no failure after healing,
    // once they have connected again (cp-2's controller-manager and scheduler to cp-2's
    // apiserver, the kubelets' status reports and the pods through the load balancer).
    let since_healed = healed.to_string();
    eventually("clients connected again after healing", Duration::from_secs(30), || {
        let out = Command::new(testbed_bin())
            .args(["report", "--output", "json", "--since", &since_healed, "--dir"])
            .arg(&tb.dir)
            .output()
            .unwrap();
        let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let ok_to = |server: &str| -> u64 {
            r["edges"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|e| e["server"] == server)
                .filter_map(|e| e["outcomes"]["ok"].as_u64())
                .sum()
        };
        ok_to("kube-apiserver@cp-2") >= 2 && ok_to("lb") >= 10
    });
    let out = Command::new(testbed_bin())
        .args(["report", "--since", &healed.to_string(), "--dir"])
        .arg(&tb.dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "TLS failures after healing: {}", text(&out));
}

/// kube-controller-manager refuses to start with two certificates in
/// --cluster-signing-cert-file (kubeadm#1350); with the single CA back it runs again.
pub fn controller_manager_refuses_a_signing_bundle(tb: &Testbed) {
    let etc = tb.node_path("cp-3", "etc-kubernetes");
    let bundle = [
        fs::read_to_string(etc.join("pki/ca.crt")).unwrap(),
        fs::read_to_string(etc.join("pki/front-proxy-ca.crt")).unwrap(),
    ]
    .concat();
    fs::write(etc.join("pki/ca-bundle.crt"), bundle).unwrap();
    let manifest = etc.join("manifests/kube-controller-manager.yaml");
    let original = fs::read_to_string(&manifest).unwrap();
    let flag = "--cluster-signing-cert-file=/etc/kubernetes/pki/ca.crt";
    assert!(original.contains(flag));
    fs::write(
        &manifest,
        original.replace(flag, "--cluster-signing-cert-file=/etc/kubernetes/pki/ca-bundle.crt"),
    )
    .unwrap();
    let state = tb.node_path("cp-3", "run/kubelet/static-pods/kube-controller-manager-cp-3.json");
    eventually("the controller-manager to crash-loop", Duration::from_secs(30), || {
        let v: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&state).unwrap_or_default())
                .unwrap_or_default();
        v["restart_count"].as_u64() > Some(0)
            && v["manifest"].as_str().is_some()
            && fs::read_to_string(&manifest).is_ok_and(|m| m.contains("ca-bundle.crt"))
    });
    let v: serde_json::Value = serde_json::from_str(&fs::read_to_string(&state).unwrap()).unwrap();
    let uid = v["uid"].as_str().unwrap();
    let log = fs::read_to_string(tb.node_path(
        "cp-3",
        &format!("var-log-pods/kube-system_kube-controller-manager-cp-3_{uid}/kube-controller-manager/0.log"),
    ))
    .unwrap();
    assert!(log.contains("cluster-signing-cert-file"), "the refusal does not name the flag: {log}");

    fs::write(&manifest, original).unwrap();
    eventually("the controller-manager to run with the single CA", Duration::from_secs(30), || {
        let v: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&state).unwrap_or_default())
                .unwrap_or_default();
        v["restart_count"] == 0 && v["phase"] == "Running" && v["uid"] != uid
    });
}

/// The pods the API assigns run on their nodes with the namespace's root CA as their ca.crt; a
/// deleted pod's process stops and its Deployment's replacement runs.
pub fn api_pods_run_with_the_root_ca_and_are_replaced(tb: &Testbed) {
    let pods: serde_json::Value =
        serde_json::from_str(&tb.kubectl_ok(&["get", "pods", "-n", "kube-system", "-o", "json"]))
            .unwrap();
    let cm: serde_json::Value = serde_json::from_str(&tb.kubectl_ok(&[
        "get",
        "configmap",
        "-n",
        "kube-system",
        "kube-root-ca.crt",
        "-o",
        "json",
    ]))
    .unwrap();
    let root_ca = cm["data"]["ca.crt"].as_str().unwrap();
    let items = pods["items"].as_array().unwrap();
    let coredns: Vec<&serde_json::Value> = items
        .iter()
        .filter(|p| p["metadata"]["name"].as_str().unwrap().starts_with("coredns-"))
        .collect();
    assert_eq!(coredns.len(), 2, "{pods}");
    let victim = coredns[0];
    let name = victim["metadata"]["name"].as_str().unwrap().to_string();
    let uid = victim["metadata"]["uid"].as_str().unwrap();
    let node = victim["spec"]["nodeName"].as_str().unwrap();
    let state: serde_json::Value = serde_json::from_slice(
        &fs::read(tb.node_path(node, &format!("run/kubelet/api-pods/{uid}.json"))).unwrap(),
    )
    .unwrap();
    let pid = state["containers"][0]["pid"].as_u64().unwrap();
    let ca = tb.node_path(
        node,
        &format!(
            "var-lib-kubelet/pods/{uid}/volumes/kubernetes.io~projected/kube-api-access/ca.crt"
        ),
    );
    assert_eq!(fs::read_to_string(&ca).unwrap(), root_ca, "{}", ca.display());
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "{name}: pid {pid} is not running"
    );

    tb.kubectl_ok(&["delete", "pod", "-n", "kube-system", &name]);
    eventually(&format!("{name}'s process {pid} to stop"), Duration::from_secs(30), || {
        !std::path::Path::new(&format!("/proc/{pid}")).exists()
    });
    eventually("a replacement coredns pod to run", Duration::from_secs(30), || {
        let out = tb.kubectl_ok(&["get", "pods", "-n", "kube-system", "--no-headers"]);
        let running: Vec<&str> = out
            .lines()
            .filter(|l| l.starts_with("coredns-") && l.split_whitespace().nth(2) == Some("Running"))
            .collect();
        running.len() == 2 && !out.contains(&name)
    });
}

/// Every namespace has kube-root-ca.crt holding the cluster CA (`--root-ca-file`), and a
/// change to a pod template's annotations rolls the DaemonSet's pods, all of them replaced.
pub fn root_ca_maps_everywhere_and_template_changes_roll_pods(tb: &Testbed) {
    let ca = fs::read_to_string(tb.node_path("cp-1", "etc-kubernetes/pki/ca.crt")).unwrap();
    let namespaces = tb.kubectl_ok(&["get", "namespaces", "-o", "name"]);
    for ns in namespaces.lines().map(|l| l.trim_start_matches("namespace/")) {
        let out = tb.kubectl_ok(&[
            "get",
            "configmap",
            "-n",
            ns,
            "kube-root-ca.crt",
            "-o",
            "jsonpath={.data.ca\\.crt}",
        ]);
        assert_eq!(out, ca, "kube-root-ca.crt in {ns}");
    }
    let names = |out: &str| -> Vec<String> {
        out.lines()
            .filter(|l| l.starts_with("kube-proxy-"))
            .filter_map(|l| l.split_whitespace().next())
            .map(String::from)
            .collect()
    };
    let before = names(&tb.kubectl_ok(&["get", "pods", "-n", "kube-system", "--no-headers"]));
    assert_eq!(before.len(), tb.nodes.len(), "{before:?}");
    tb.kubectl_ok(&[
        "patch",
        "daemonset",
        "-n",
        "kube-system",
        "kube-proxy",
        "--type=merge",
        "-p",
        r#"{"spec":{"template":{"metadata":{"annotations":{"testbed/restartedAt":"now"}}}}}"#,
    ]);
    eventually("every kube-proxy pod replaced and running", Duration::from_secs(90), || {
        let out = tb.kubectl_ok(&["get", "pods", "-n", "kube-system", "--no-headers"]);
        let now = names(&out);
        now.len() == tb.nodes.len()
            && now.iter().all(|n| !before.contains(n))
            && out
                .lines()
                .filter(|l| l.starts_with("kube-proxy-"))
                .all(|l| l.split_whitespace().nth(2) == Some("Running"))
    });
}

/// A kubelet with `rotateCertificates: true` renews its client certificate through the CSR
/// API once past its rotation deadline (client-go's certificate manager): given a certificate
/// of ten minutes with one minute left, the restarted kubelet on w-2 asks at once, the
/// controller-manager approves the node's own request (`AutoApproved`) and signs it with
/// `--cluster-signing-cert-file` for the default 8760h, and the kubelet stores it as a dated
/// file that `kubelet-client-current.pem` links to, and goes on renewing its Lease with it.
pub fn kubelets_renew_client_certificates_through_the_csr_api(tb: &Testbed) {
    use kubeca_tests::testbed::certutil;
    let node = "w-2";
    let addr = tb.address(node).to_string();
    let ca_crt = tb.host_path("cp-1", "/etc/kubernetes/pki/ca.crt");
    let ca = fs::read_to_string(&ca_crt).unwrap();
    let ca_key = fs::read_to_string(tb.host_path("cp-1", "/etc/kubernetes/pki/ca.key")).unwrap();
    let current = "/var/lib/kubelet/pki/kubelet-client-current.pem";
    let link_before = tb.ssh_ok(&addr, &format!("readlink {current}")).trim().to_string();
    let req = certutil::node_client_request(node).unwrap();
    let usages = ["digital signature".to_string(), "client auth".to_string()];
    let ten_min = jiff::SignedDuration::from_mins(10);
    let issued_at = jiff::Timestamp::now() - jiff::SignedDuration::from_mins(9);
    let short =
        certutil::sign_request(&req.csr_pem, &usages, &ca, &ca_key, ten_min, issued_at).unwrap();
    fs::write(tb.host_path(node, current), format!("{short}{}", req.key_pem)).unwrap();
    let restarted = jiff::Timestamp::now();
    tb.ssh_ok(&addr, "systemctl restart kubelet");
    let user = format!("system:node:{node}");
    let mut issued = String::new();
    eventually("w-2's renewed client certificate", Duration::from_secs(60), || {
        let list = tb.kubectl_ok(&["get", "csr", "-o", "json"]);
        let list: serde_json::Value = serde_json::from_str(&list).unwrap();
        let found = list["items"].as_array().unwrap().iter().find(|c| {
            c["spec"]["username"] == user.as_str()
                && c["metadata"]["creationTimestamp"]
                    .as_str()
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok())
                    .is_some_and(|t| t.as_second() >= restarted.as_second() - 1)
                && c["status"]["certificate"].as_str().is_some_and(|s| !s.is_empty())
        });
        match found {
            Some(c) => {
                let conds = &c["status"]["conditions"];
                assert_eq!(conds[0]["type"], "Approved", "{c}");
                assert_eq!(conds[0]["reason"], "AutoApproved", "{c}");
                assert_eq!(c["spec"]["signerName"], "kubernetes.io/kube-apiserver-client-kubelet");
                assert_eq!(c["spec"]["groups"][0], "system:nodes", "{c}");
                issued = c["status"]["certificate"].as_str().unwrap().to_string();
                Ok(())
            }
            None => Err(format!("no issued request of {user} since the restart")),
        }
    });
    let link = || tb.ssh_ok(&addr, &format!("readlink {current}")).trim().to_string();
    eventually("kubelet-client-current.pem links to the new file", Duration::from_secs(10), || {
        let now = link();
        if now != link_before && now.starts_with("/var/lib/kubelet/pki/kubelet-client-20") {
            Ok(())
        } else {
            Err(format!("it links to {now}"))
        }
    });
    let file = link();
    let mode = tb.ssh_ok(&addr, &format!("stat -c %a {file}"));
    assert_eq!(mode.trim(), "600", "{file}");
    let stored = fs::read_to_string(tb.host_path(node, current)).unwrap();
    use base64::Engine;
    let issued_pem =
        String::from_utf8(base64::engine::general_purpose::STANDARD.decode(issued).unwrap())
            .unwrap();
    assert!(stored.starts_with(&issued_pem), "the stored file begins with the issued certificate");
    assert!(stored.contains("-----BEGIN EC PRIVATE KEY-----"), "then its new P-256 key");
    let dir = tempfile::tempdir().unwrap();
    let leaf = dir.path().join("leaf.pem");
    fs::write(&leaf, &issued_pem).unwrap();
    let out = Command::new("openssl")
        .arg("verify")
        .arg("-CAfile")
        .arg(&ca_crt)
        .arg(&leaf)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let der = x509_parser::pem::Pem::iter_from_buffer(issued_pem.as_bytes()).next().unwrap();
    let der = der.unwrap().contents;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    assert_eq!(cert.subject().to_string(), "O=system:nodes, CN=system:node:w-2");
    let v = cert.validity();
    assert_eq!(v.not_after.timestamp() - v.not_before.timestamp(), 8760 * 3600, "{v:?}");
    // The kubelet goes on with the new certificate: its Lease is renewed after it was stored.
    let stored_at = jiff::Timestamp::now();
    eventually("w-2's Lease renewed with the new certificate", Duration::from_secs(30), || {
        let out = tb.kubectl_ok(&[
            "get",
            "lease",
            "-n",
            "kube-node-lease",
            node,
            "-o",
            "jsonpath={.spec.renewTime}",
        ]);
        let renewed: jiff::Timestamp = out.trim().parse().map_err(|e| format!("{out}: {e}"))?;
        if renewed > stored_at { Ok(()) } else { Err(format!("renewed at {renewed}")) }
    });
}
