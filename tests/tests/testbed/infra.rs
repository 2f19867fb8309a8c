//! Checks of the testbed's infrastructure: ssh with strict host keys, the openssl PKI, etcd with
//! mutual TLS, static pods following their manifests, the kubelet unit, and a clean `down`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::Duration;

use kubeca_tests::harness::testbed::{etcd_health, ssh_with, static_pod_pid};
use kubeca_tests::harness::{Testbed, eventually, testbed_bin, text};
use kubeca_tests::testbed::profile::Profile;

/// Every node answers ssh with its own host key (strict checking against DIR/known_hosts) and
/// sees its own /etc/kubernetes: its kubelet serving certificate names it, and a control
/// plane's apiserver certificate carries its own name and address and no other node's.
pub fn ssh_reaches_each_node_and_its_own_files(tb: &Testbed) {
    // With serverTLSBootstrap the kubelet serves what its certificate manager keeps.
    let serving = if tb.profile.kubelet_server_tls_bootstrap() {
        "/var/lib/kubelet/pki/kubelet-server-current.pem"
    } else {
        "/var/lib/kubelet/pki/kubelet.crt"
    };
    for (name, address, cp) in &tb.nodes {
        let out = tb.ssh_ok(
            address,
            &format!(
                "hostname; openssl x509 -noout -subject -in {serving}; ls /etc/kubernetes/manifests"
            ),
        );
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some(name.as_str()), "hostname of {address}");
        // The kubelet's own self-signed pair names it `<hostname>@<unix time>` (client-go's
        // GenerateSelfSignedCertKey); a CA-signed one (custom profile) `CN=<node>`.
        let subject = lines.next().unwrap_or("");
        match tb.profile {
            Profile::Kubeadm => {
                assert!(subject.starts_with(&format!("subject=CN = {name}@")), "{out}")
            }
            Profile::Custom => assert!(subject.ends_with(&format!("CN = {name}")), "{out}"),
            Profile::Hardened => {
                assert!(subject.ends_with(&format!("CN = system:node:{name}")), "{out}")
            }
        }
        let manifests: Vec<&str> = lines.collect();
        if *cp {
            assert_eq!(
                manifests,
                [
                    "etcd.yaml",
                    "kube-apiserver.yaml",
                    "kube-controller-manager.yaml",
                    "kube-scheduler.yaml"
                ]
            );
            let sans = tb.ssh_ok(
                address,
                "openssl x509 -noout -ext subjectAltName -in /etc/kubernetes/pki/apiserver.crt",
            );
            assert!(sans.contains(&format!("DNS:{name},")), "{sans}");
            assert!(sans.contains(&format!("IP Address:{address},")), "{sans}");
            for (other, other_addr, _) in tb.nodes.iter().filter(|n| &n.0 != name) {
                assert!(!sans.contains(&format!("DNS:{other},")), "{name} has {other}'s SAN");
                assert!(!sans.contains(&format!("IP Address:{other_addr},")), "{sans}");
            }
        } else {
            assert!(manifests.is_empty(), "worker {name} has static pods: {manifests:?}");
        }
    }
    // The check is strict: with a known_hosts that lacks the node, ssh refuses to connect.
    let empty = tb.dir.join("empty_known_hosts");
    fs::write(&empty, "").unwrap();
    let out = ssh_with(&tb.dir, &empty, &tb.nodes[0].1, "true");
    assert!(!out.status.success(), "ssh accepted an unknown host key: {}", text(&out));
    // And host keys differ per node: cp-1's key does not vouch for cp-2.
    let kh = fs::read_to_string(tb.dir.join("known_hosts")).unwrap();
    let first = kh.lines().next().unwrap().to_string();
    let wrong = first.replacen(&tb.nodes[0].1, &tb.nodes[1].1, 1);
    let wrong_file = tb.dir.join("wrong_known_hosts");
    fs::write(&wrong_file, format!("{wrong}\n")).unwrap();
    let out = ssh_with(&tb.dir, &wrong_file, &tb.nodes[1].1, "true");
    assert!(!out.status.success(), "ssh accepted cp-1's host key for cp-2: {}", text(&out));
}

/// `openssl verify` of every certificate of every node against its CA, inside the node (so
/// kubelet-client-current.pem resolves as the kubelet resolves it); keys and kubeconfigs 0600.
pub fn openssl_verifies_every_certificate(tb: &Testbed) {
    for (name, address, cp) in &tb.nodes {
        let pairs = kubeca_tests::testbed::pki::certificates_and_cas(*cp, tb.profile);
        let script: Vec<String> =
            pairs.iter().map(|(cert, ca)| format!("openssl verify -CAfile {ca} {cert}")).collect();
        let out = tb.ssh_ok(address, &script.join(" && "));
        assert_eq!(
            out.lines().filter(|l| l.ends_with(": OK")).count(),
            pairs.len(),
            "{name}: {out}"
        );
        // A certificate from another CA does not verify: the check can fail.
        if *cp {
            let out = tb.ssh(
                address,
                "openssl verify -CAfile /etc/kubernetes/pki/etcd/ca.crt /etc/kubernetes/pki/apiserver.crt",
            );
            assert!(!out.status.success(), "apiserver.crt verified against the etcd CA");
        }
    }
    let cp1 = tb.node_path("cp-1", "etc-kubernetes");
    for rel in [
        "pki/ca.key",
        "pki/sa.key",
        "pki/etcd/ca.key",
        "pki/apiserver.key",
        "admin.conf",
        "kubelet.conf",
    ] {
        let mode = fs::metadata(cp1.join(rel)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{rel} has mode {mode:o}");
    }
    let key = fs::read_to_string(cp1.join("pki/ca.key")).unwrap();
    assert!(key.starts_with("-----BEGIN RSA PRIVATE KEY-----"), "kubeadm writes PKCS#1 RSA keys");
    // Workers hold no CA key.
    assert!(!tb.node_path("w-1", "etc-kubernetes/pki/ca.key").exists());
}

/// The three etcd members are healthy with client mutual TLS, and refuse a client without a
/// certificate.
pub fn etcd_cluster_is_healthy_with_mutual_tls(tb: &Testbed) {
    let out = etcd_health(tb, true);
    assert!(out.status.success(), "{}", text(&out));
    let healthy = String::from_utf8_lossy(&out.stdout).matches("is healthy").count()
        + String::from_utf8_lossy(&out.stderr).matches("is healthy").count();
    assert_eq!(healthy, 3, "{}", text(&out));
    let out = etcd_health(tb, false);
    assert!(!out.status.success(), "etcd accepted a client without a certificate: {}", text(&out));
}

/// The kubelet's :10250 authenticates per request, as the real one does
/// (`cmd/kubelet/app/server.go`: `tls.RequestClientCert`; `InstallAuthFilter`): the handshake
/// completes with any client certificate, or none, and a request that does not authenticate
/// is answered 401 `Unauthorized`, which the refused client's monitor line counts as a trust
/// failure. It reloads its clientCAFile when the file changes, and a `--client-ca-file` flag of
/// kubeadm-flags.env overrides the configuration's clientCAFile at its next start.
pub fn kubelet_authenticates_client_certificates_per_request(tb: &Testbed) {
    let pki = tb.node_path("cp-1", "etc-kubernetes/pki");
    // The kubelet's serving certificate is checked: against the cluster CA where it signed it,
    // else against the one-off CA of the kubelet's self-signed pair (in the same file), whose
    // only name is the node's hostname.
    let (url, serving_ca) = match tb.profile {
        Profile::Custom | Profile::Hardened => {
            (format!("https://{}:10250/healthz", tb.address("cp-1")), pki.join("ca.crt"))
        }
        Profile::Kubeadm => (
            "https://cp-1:10250/healthz".to_string(),
            tb.node_path("cp-1", "var-lib-kubelet/pki/kubelet.crt"),
        ),
    };
    let resolve = format!("cp-1:10250:{}", tb.address("cp-1"));
    // (HTTP status, body) of GET /healthz with a client pair of cp-1's pki directory.
    let get = |cert: Option<&str>| {
        let mut c = Command::new("curl");
        c.args(["-sS", "--max-time", "5", "-w", "\n%{http_code}", "--resolve", &resolve])
            .arg("--cacert")
            .arg(&serving_ca);
        if let Some(name) = cert {
            c.arg("--cert").arg(pki.join(format!("{name}.crt")));
            c.arg("--key").arg(pki.join(format!("{name}.key")));
        }
        let out = c.arg(&url).output().unwrap();
        assert!(out.status.success(), "the handshake must complete: {}", text(&out));
        let said = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = said.rsplit_once('\n').unwrap();
        (code.parse::<u16>().unwrap(), body.to_string())
    };
    let kubelet_client = "apiserver-kubelet-client";
    let front_proxy_client = "front-proxy-client";
    assert_eq!(get(Some(kubelet_client)), (200, "ok".into()));
    assert_eq!(get(None), (401, "Unauthorized".into()), "anonymous access is off (kubeadm)");
    assert_eq!(get(Some(front_proxy_client)), (401, "Unauthorized".into()));
    // clientCAFile reloaded when it changes: a bundle with the front-proxy CA, written by
    // rename as kubeca writes, lets the front-proxy client in without a restart.
    let ca = pki.join("ca.crt");
    let original = fs::read_to_string(&ca).unwrap();
    let bundle = original.clone() + &fs::read_to_string(pki.join("front-proxy-ca.crt")).unwrap();
    let write = |content: &str| {
        fs::write(pki.join("ca.crt.new"), content).unwrap();
        fs::rename(pki.join("ca.crt.new"), &ca).unwrap();
    };
    write(&bundle);
    assert_eq!(get(Some(front_proxy_client)).0, 200, "the kubelet did not reload clientCAFile");
    write(&original);
    assert_eq!(get(Some(front_proxy_client)).0, 401);

    // A --client-ca-file flag wins over clientCAFile, from the kubelet's next start on.
    let env = tb.node_path("cp-1", "var-lib-kubelet/kubeadm-flags.env");
    let flags = fs::read_to_string(&env).unwrap();
    let overridden = flags.replacen(
        "KUBELET_KUBEADM_ARGS=\"",
        "KUBELET_KUBEADM_ARGS=\"--client-ca-file=/etc/kubernetes/pki/front-proxy-ca.crt ",
        1,
    );
    assert_ne!(overridden, flags, "{flags}");
    fs::write(&env, &overridden).unwrap();
    assert_eq!(get(Some(front_proxy_client)).0, 401, "a flag takes effect only at a start");
    tb.ssh_ok(tb.address("cp-1"), "systemctl restart kubelet");
    eventually("the kubelet to load --client-ca-file", Duration::from_secs(20), || {
        get(Some(front_proxy_client)).0 == 200
    });
    assert_eq!(get(Some(kubelet_client)).0, 401, "clientCAFile must no longer count");
    // The apiservers' client certificate is refused now: `kubectl logs` through them fails, and
    // their monitor lines count the 401s as trust failures of apiserver->kubelet.
    let since = jiff::Timestamp::now().to_string();
    let pods: serde_json::Value =
        serde_json::from_str(&tb.kubectl_ok(&["get", "pods", "-A", "-o", "json"])).unwrap();
    let on_cp1 = pods["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["spec"]["nodeName"] == "cp-1")
        .unwrap_or_else(|| panic!("no pod runs on cp-1: {pods}"));
    let (ns, pod) = (
        on_cp1["metadata"]["namespace"].as_str().unwrap(),
        on_cp1["metadata"]["name"].as_str().unwrap(),
    );
    let out = tb.kubectl(&["-n", ns, "logs", pod]);
    assert!(
        !out.status.success(),
        "logs through a kubelet that refuses the apiserver: {}",
        text(&out)
    );
    let r = report(&tb.dir, Some(&since));
    let refused: u64 = r["edges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["purpose"] == "apiserver->kubelet" && e["server"] == "kubelet@cp-1")
        .filter_map(|e| e["outcomes"]["unauthorized"].as_u64())
        .sum();
    assert!(refused >= 1, "the 401 is not a trust failure in the report: {r}\n{}", text(&out));
    fs::write(&env, &flags).unwrap();
    tb.ssh_ok(tb.address("cp-1"), "systemctl restart kubelet");
    eventually("the kubelet back on clientCAFile", Duration::from_secs(20), || {
        get(Some(kubelet_client)).0 == 200
    });
}

/// Editing a static pod manifest restarts that component, and only that one; etcd rejoins.
pub fn editing_a_manifest_restarts_the_component(tb: &Testbed) {
    let before = static_pod_pid(tb, "cp-3", "etcd").expect("etcd runs on cp-3");
    let scheduler = static_pod_pid(tb, "cp-3", "kube-scheduler");
    let manifest = tb.node_path("cp-3", "etc-kubernetes/manifests/etcd.yaml");
    let text_before = fs::read_to_string(&manifest).unwrap();
    let edited = text_before.replace(
        "    - --snapshot-count=10000\n",
        "    - --snapshot-count=10000\n    - --heartbeat-interval=100\n",
    );
    assert_ne!(edited, text_before);
    fs::write(&manifest, edited).unwrap();
    eventually("a new etcd process on cp-3", Duration::from_secs(20), || {
        static_pod_pid(tb, "cp-3", "etcd").is_some_and(|p| p != before)
    });
    let after = static_pod_pid(tb, "cp-3", "etcd").unwrap();
    let cmdline = fs::read_to_string(format!("/proc/{after}/cmdline")).unwrap_or_default();
    assert!(cmdline.contains("--heartbeat-interval=100"), "etcd runs without the new flag");
    if let Some(s) = scheduler {
        assert_eq!(static_pod_pid(tb, "cp-3", "kube-scheduler").unwrap_or(s), s);
    }
    eventually("a healthy etcd cluster again", Duration::from_secs(30), || {
        etcd_health(tb, true).status.success()
    });
}

/// Moving a manifest away stops its pod; moving it back starts it again.
///
/// A stacked apiserver reaches only its own member (`--etcd-servers=https://127.0.0.1:2379`), so
/// while cp-2's etcd is away cp-2's apiserver is neither ready nor live (the real one's etcd
/// check feeds both) and cp-1's is; both are again after.
pub fn moving_a_manifest_away_and_back(tb: &Testbed) {
    let before = static_pod_pid(tb, "cp-2", "etcd").expect("etcd runs on cp-2");
    let manifest = tb.node_path("cp-2", "etc-kubernetes/manifests/etcd.yaml");
    let away = tb.node_path("cp-2", "etc-kubernetes/etcd.yaml.away");
    let readyz = |node: &str| health_status(tb.address(node), "/readyz");
    assert_eq!(readyz("cp-2"), "200", "cp-2's apiserver before its etcd went away");
    fs::rename(&manifest, &away).unwrap();
    eventually("etcd on cp-2 to stop", Duration::from_secs(20), || {
        static_pod_pid(tb, "cp-2", "etcd").is_none()
    });
    eventually("cp-2's apiserver to be unready without its etcd", Duration::from_secs(20), || {
        readyz("cp-2") == "500"
    });
    assert_eq!(health_status(tb.address("cp-2"), "/livez"), "500", "cp-2's /livez without etcd");
    assert_eq!(readyz("cp-1"), "200", "cp-1's apiserver talks to its own etcd, which is up");
    fs::rename(&away, &manifest).unwrap();
    eventually("etcd on cp-2 to start again", Duration::from_secs(20), || {
        static_pod_pid(tb, "cp-2", "etcd").is_some_and(|p| p != before)
    });
    eventually("a healthy etcd cluster again", Duration::from_secs(30), || {
        etcd_health(tb, true).status.success()
    });
    eventually("cp-2's apiserver ready again", Duration::from_secs(30), || readyz("cp-2") == "200");
}

/// The HTTP status of an anonymous `GET path` on the apiserver at `address`, by curl from this
/// machine ("000" when nothing answers).
fn health_status(address: &str, path: &str) -> String {
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "3", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("https://{address}:6443{path}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// kubeadm's kubelet serves the self-signed pair it made at its first start (`InitializeTLS`,
/// cmd/kubelet/app/server.go): a leaf for its hostname and the one-off CA that signed it, key
/// 0600, which the cluster CA does not verify; and kubeadm's apiservers, without
/// `--kubelet-certificate-authority`, reach it all the same (`transportConfig`,
/// pkg/kubelet/client/kubelet_client.go: no CA, no verification): logs come through.
pub fn kubelets_serve_self_signed_pairs_the_apiservers_do_not_verify(tb: &Testbed) {
    assert_eq!(tb.profile, Profile::Kubeadm, "a check of kubeadm's layout");
    for (name, address, _) in &tb.nodes {
        let out = tb.ssh_ok(
            address,
            "openssl crl2pkcs7 -nocrl -certfile /var/lib/kubelet/pki/kubelet.crt \
               | openssl pkcs7 -print_certs -noout; \
             stat -c %a /var/lib/kubelet/pki/kubelet.key; \
             openssl verify -CAfile /etc/kubernetes/pki/ca.crt /var/lib/kubelet/pki/kubelet.crt \
               >/dev/null 2>&1 && echo verified-by-the-cluster-ca || echo not-the-cluster-ca",
        );
        let subjects: Vec<&str> = out.lines().filter(|l| l.starts_with("subject=")).collect();
        assert_eq!(subjects.len(), 2, "{name}: the leaf, then its CA: {out}");
        assert!(subjects[0].starts_with(&format!("subject=CN = {name}@")), "{out}");
        assert!(subjects[1].starts_with(&format!("subject=CN = {name}-ca@")), "{out}");
        assert!(out.lines().any(|l| l == "600"), "{name}: kubelet.key not 0600: {out}");
        assert!(out.lines().any(|l| l == "not-the-cluster-ca"), "{name}: {out}");
        let manifest =
            tb.ssh_ok(address, "cat /etc/kubernetes/manifests/kube-apiserver.yaml || true");
        assert!(!manifest.contains("--kubelet-certificate-authority"), "{name}: {manifest}");
    }
    // The apiserver reads a pod's log through its node's kubelet on :10250.
    let pods = tb.kubectl_ok(&["get", "pods", "-n", "kube-system", "--no-headers"]);
    let pods: Vec<&str> = pods
        .lines()
        .filter(|l| l.starts_with("kube-proxy-"))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(!pods.is_empty(), "no kube-proxy pods");
    for pod in pods {
        let out = tb.kubectl(&["logs", "-n", "kube-system", pod, "--tail=1"]);
        assert!(out.status.success(), "logs of {pod} through its kubelet: {}", text(&out));
    }
}

/// kubeadm's kube-scheduler has no `--client-ca-file` (`getSchedulerCommand`,
/// cmd/kubeadm/app/phases/controlplane/manifests.go): it authenticates client certificates with
/// the `client-ca-file` of kube-system/extension-apiserver-authentication and follows that
/// ConfigMap (`NewDynamicCAFromConfigMapController`,
/// staging/src/k8s.io/apiserver/pkg/server/options/authentication.go). A client certificate
/// of the cluster CA is taken on :10259; one of the front-proxy CA is not, until that CA is
/// published there.
pub fn scheduler_follows_the_client_ca_of_extension_apiserver_authentication(tb: &Testbed) {
    assert_eq!(tb.profile, Profile::Kubeadm, "a check of kubeadm's layout");
    let cp = tb.address("cp-1");
    let manifest = tb.ssh_ok(cp, "cat /etc/kubernetes/manifests/kube-scheduler.yaml");
    assert!(!manifest.contains("--client-ca-file"), "{manifest}");
    let p = "/etc/kubernetes/pki";
    let with = |pair: &str| {
        tb.ssh_ok(
            cp,
            &format!(
                "curl -sk --max-time 3 -o /dev/null -w '%{{http_code}}' --cert {p}/{pair}.crt \
                 --key {p}/{pair}.key https://127.0.0.1:10259/healthz || true"
            ),
        )
        .trim()
        .to_string()
    };
    assert_eq!(with("apiserver-kubelet-client"), "200", "a client certificate of the cluster CA");
    assert_eq!(with("front-proxy-client"), "000", "one of the front-proxy CA must be refused");

    let cm = ["-n", "kube-system", "get", "configmap", "extension-apiserver-authentication"];
    let jsonpath = "-o=jsonpath={.data.client-ca-file}";
    let before = tb.kubectl_ok(&[cm[0], cm[1], cm[2], cm[3], cm[4], jsonpath]);
    let front_proxy =
        std::fs::read_to_string(tb.node_path("cp-1", "etc-kubernetes/pki/front-proxy-ca.crt"))
            .unwrap();
    let set = |value: &str| {
        let patch = serde_json::json!({"data": {"client-ca-file": value}}).to_string();
        tb.kubectl_ok(&[
            "-n",
            "kube-system",
            "patch",
            "configmap",
            "extension-apiserver-authentication",
            "--type=merge",
            "-p",
            &patch,
        ]);
    };
    set(&format!("{}\n{}", before.trim_end(), front_proxy.trim_end()));
    eventually(
        "the scheduler to take the front-proxy CA's client",
        Duration::from_secs(20),
        || with("front-proxy-client") == "200",
    );
    set(&before);
    eventually("the scheduler to drop it again", Duration::from_secs(20), || {
        with("front-proxy-client") == "000"
    });
    assert_eq!(with("apiserver-kubelet-client"), "200");
}

/// Each node is a network namespace of its own, as a real node is: its own `lo` and one link on
/// the testbed's bridge, nothing of this machine's interfaces. The manifests carry kubeadm's
/// own binds (`manifests.go`, `etcd/local.go`), and the components listen where the flags say:
/// the controller-manager, the scheduler and etcd's metrics answer on the node's 127.0.0.1 and
/// refuse connections on its address from here; the apiserver, etcd's clients and the
/// kubelet answer on the node's address.
pub fn nodes_bind_their_own_loopback_as_kubeadm_does(tb: &Testbed) {
    let cp = tb.address("cp-1");
    let manifest = |name: &str| tb.ssh_ok(cp, &format!("cat /etc/kubernetes/manifests/{name}"));
    let apiserver = manifest("kube-apiserver.yaml");
    assert!(apiserver.contains("- --etcd-servers=https://127.0.0.1:2379\n"), "{apiserver}");
    assert!(!apiserver.contains("--bind-address"), "kubeadm sets none: {apiserver}");
    for m in ["kube-controller-manager.yaml", "kube-scheduler.yaml"] {
        let text = manifest(m);
        assert!(text.contains("- --bind-address=127.0.0.1\n"), "{m}: {text}");
        assert!(text.contains("host: 127.0.0.1"), "{m}: kubeadm's probe host: {text}");
    }
    let etcd = manifest("etcd.yaml");
    assert!(
        etcd.contains(&format!(
            "- --listen-client-urls=https://127.0.0.1:2379,https://{cp}:2379\n"
        )),
        "{etcd}"
    );
    assert!(etcd.contains("- --listen-metrics-urls=http://127.0.0.1:2381\n"), "{etcd}");
    let kubelet = tb.ssh_ok(cp, "cat /var/lib/kubelet/config.yaml");
    assert!(kubelet.contains("healthzBindAddress: 127.0.0.1\n"), "{kubelet}");
    assert!(!kubelet.contains("\naddress:"), "kubeadm writes no address: {kubelet}");

    // The node's interfaces: lo and eth0 only, with 127.0.0.1 and the node's address.
    let addrs = tb.ssh_ok(cp, "ip -o -4 addr show | awk '{print $2, $4}'");
    let mut got: Vec<&str> = addrs.lines().collect();
    got.sort();
    assert_eq!(got, ["eth0 ".to_string() + cp + "/24", "lo 127.0.0.1/8".into()], "{addrs}");

    // From the node: the loopback-bound components answer.
    for (port, scheme, path) in [
        (10257, "https", "/healthz"),
        (10259, "https", "/healthz"),
        (2381, "http", "/health"),
        (10248, "http", "/healthz"),
    ] {
        let code = tb.ssh_ok(
            cp,
            &format!(
                "curl -sk --max-time 3 -o /dev/null -w '%{{http_code}}' {scheme}://127.0.0.1:{port}{path}"
            ),
        );
        assert_eq!(code.trim(), "200", "127.0.0.1:{port} on cp-1");
    }
    // From here: refused on the node's address (the bridge delivers the reset: nothing listens).
    for port in [10257, 10259, 2381, 10248] {
        let addr: std::net::SocketAddr = format!("{cp}:{port}").parse().unwrap();
        let err = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .expect_err(&format!("{addr} answers from outside the node"));
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused, "{addr}: {err}");
    }
    for port in [6443, 2379, 10250] {
        let addr: std::net::SocketAddr = format!("{cp}:{port}").parse().unwrap();
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("{addr} does not answer from here: {e}"));
    }
    // This machine's own loopback is not the node's: nothing of the node listens on it.
    let host = std::net::SocketAddr::from(([127, 0, 0, 1], 10257));
    assert!(
        std::net::TcpStream::connect_timeout(&host, Duration::from_millis(500)).is_err(),
        "a node's controller-manager answers on this machine's loopback"
    );
}

/// `ssh <node> systemctl restart kubelet` restarts the kubelet (a new pid, running) and leaves
/// its static pods running, as the real kubelet leaves containers; status and journal follow.
pub fn systemctl_restarts_the_kubelet(tb: &Testbed) {
    let addr = &tb.nodes[0].1;
    let pid_before = tb.ssh_ok(addr, "cat /run/kubelet.pid").trim().to_string();
    let etcd = static_pod_pid(tb, "cp-1", "etcd").expect("etcd runs on cp-1");
    tb.ssh_ok(addr, "systemctl restart kubelet");
    let pid_after = tb.ssh_ok(addr, "cat /run/kubelet.pid").trim().to_string();
    assert_ne!(pid_before, pid_after);
    let status = tb.ssh_ok(addr, "systemctl status kubelet");
    assert!(status.contains("Active: active (running)"), "{status}");
    assert!(status.contains(&format!("Main PID: {pid_after} (kubelet)")), "{status}");
    let journal = tb.ssh_ok(addr, "journalctl -u kubelet --since '-1min' --no-pager");
    assert!(
        journal.contains(&format!("cp-1 kubelet[{pid_after}]: kubelet cp-1 starting")),
        "{journal}"
    );
    // The restarted kubelet adopted etcd instead of starting another one: once its first pass
    // over the manifests is done (the pass that would start a second etcd), etcd is the same.
    let journal = tb.node_path("cp-1", "kubelet.journal");
    let synced = format!(" {pid_after} kubelet: first static pod sync done");
    eventually("the restarted kubelet's first static pod sync", Duration::from_secs(20), || {
        fs::read_to_string(&journal).is_ok_and(|j| j.contains(&synced))
    });
    assert_eq!(static_pod_pid(tb, "cp-1", "etcd"), Some(etcd));
    let out = tb.ssh(addr, "systemctl status containerd");
    assert!(!out.status.success(), "the shim claims a unit it does not have");
}

/// `up` on a live DIR is an error naming the running pids.
pub fn up_on_a_live_dir_names_the_pids(tb: &Testbed) {
    let out = Command::new(testbed_bin()).arg("up").arg("--dir").arg(&tb.dir).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already up") && err.contains("(haproxy)") && err.contains("(node cp-1)"),
        "{err}"
    );
    // A second testbed in another DIR would collide on the block: refused, naming the bridge
    // whose node links say a testbed runs there.
    let other = tb.dir.with_file_name("testbed-collision");
    let out = Command::new(testbed_bin()).arg("up").arg("--dir").arg(&other).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{} is in use: bridge {} links 5 running nodes",
            tb.subnet,
            tb.subnet.bridge()
        )),
        "{err}"
    );
    assert!(err.contains("another --subnet"), "the refusal must say how to run both: {err}");
    assert!(!other.join("nodes").exists(), "the refused up made files");
}

/// After `down` nothing of the testbed runs, is mounted or listens; `down` twice is fine.
pub fn down_leaves_nothing(tb: &Testbed) {
    let out = tb.down();
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("stopped"), "{}", text(&out));
    let dir = tb.dir.to_string_lossy().to_string();
    // No process: none in a node namespace or with DIR on its command line.
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmd) = fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        let zombie = fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')));
        if pid != std::process::id() && !zombie {
            assert!(!cmd.contains(&dir), "process {pid} survived down: {cmd}");
        }
    }
    // No mount.
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(&dir), "a mount under {dir} survived down");
    // No listener on the testbed's addresses.
    let ss = Command::new("ss").args(["-Hltn"]).output().unwrap();
    let listeners = String::from_utf8_lossy(&ss.stdout);
    let lb = tb.lb();
    for addr in std::iter::once(lb.as_str()).chain(tb.nodes.iter().map(|n| n.1.as_str())) {
        assert!(
            !listeners.contains(&format!("{addr}:")),
            "a listener on {addr} survived down:\n{listeners}"
        );
    }
    let again = tb.down();
    assert!(again.status.success(), "{}", text(&again));
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing running"));
}

/// The block of the second testbed of [`down_stops_only_its_own_testbed`].
const SIDE_SUBNET: &str = "198.18.1.0/24";

/// Processes of a testbed that run as long as it is up: node supervisors, haproxy, and each
/// node's kubelet, etcd and apiserver (not the short-lived ones, such as ssh sessions).
fn long_lived(dir: &std::path::Path) -> Vec<(u32, String)> {
    let lasting = ["kubelet on node", "etcd on node", "kube-apiserver on node"];
    kubeca_tests::testbed::node::running(dir)
        .into_iter()
        .filter(|(_, role)| {
            role == "haproxy"
                || role.starts_with("node ")
                || lasting.iter().any(|l| role.starts_with(l))
        })
        .collect()
}

/// `report --output json` of a testbed.
fn report(dir: &std::path::Path, since: Option<&str>) -> serde_json::Value {
    let mut c = Command::new(testbed_bin());
    c.args(["report", "--output", "json", "--dir"]).arg(dir);
    if let Some(s) = since {
        c.args(["--since", s]);
    }
    let out = c.output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("report: {e}: {}", text(&out)))
}

/// A second testbed on another block (1 control plane + 1 worker on 198.18.1.0/24) runs beside
/// this one with its own addresses, host keys, inventory and monitor, its pods reaching its own
/// load balancer, and no TLS failure on either; this testbed's `down` then stops this one only
/// (every lasting process of the other still runs, and it still answers), and the other's
/// `down` leaves nothing of it.
pub fn down_stops_only_its_own_testbed(tb: &Testbed) {
    let since = jiff::Timestamp::now().to_string();
    let subnet = kubeca_tests::testbed::subnet::Subnet::parse(SIDE_SUBNET).unwrap();
    let side = Testbed::up_on("testbed-side", subnet, 1, 1, &[]);
    assert_eq!(side.lb(), "198.18.1.10");
    assert_ne!(side.dir, tb.dir);

    // Its own inventory and host keys, naming its own addresses only.
    let inv = fs::read_to_string(side.dir.join("inventory.toml")).unwrap();
    assert!(inv.contains("api_endpoint = \"https://198.18.1.10:6443\""), "{inv}");
    assert!(inv.contains("address = \"198.18.1.11\"") && inv.contains("address = \"198.18.1.12\""));
    assert!(!inv.contains("198.18.0."), "the other block's inventory names this one's: {inv}");
    let kh = fs::read_to_string(side.dir.join("known_hosts")).unwrap();
    assert_eq!(kh.lines().count(), 2, "{kh}");
    assert!(kh.lines().all(|l| l.starts_with("198.18.1.")), "{kh}");
    assert_eq!(side.ssh_ok(side.address("w-1"), "hostname").trim(), "w-1");
    // This testbed's known_hosts does not vouch for the other's nodes.
    let out = ssh_with(&side.dir, &tb.dir.join("known_hosts"), side.address("cp-1"), "true");
    assert!(!out.status.success(), "ssh accepted the other testbed's host key: {}", text(&out));

    // Its API through its own load balancer; every node Ready.
    let out = side.kubectl(&["get", "nodes", "--no-headers"]);
    assert!(out.status.success(), "{}", text(&out));
    let ready = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.split_whitespace().nth(1) == Some("Ready"))
        .count();
    assert_eq!(ready, 2, "{}", text(&out));
    let admin = fs::read_to_string(side.dir.join("admin.conf")).unwrap();
    assert!(admin.contains("server: https://198.18.1.10:6443"), "{admin}");

    // Its own monitor: its pods (told the API's address by their kubelet) reached its load
    // balancer, which its components name "lb"; no TLS failure on either testbed, so nothing of
    // one dialed the other's addresses.
    let r = report(&side.dir, None);
    assert_eq!(r["trust_failures"], 0, "{r}");
    let edges = r["edges"].as_array().unwrap();
    assert!(
        edges.iter().any(|e| e["client"].as_str().is_some_and(|c| c.starts_with("pod/"))
            && e["server"] == "lb"
            && e["outcomes"]["ok"].as_u64() > Some(0)),
        "no pod of the other testbed reached its load balancer: {r}"
    );
    assert!(
        !edges.iter().any(|e| e["server"].as_str().is_some_and(|s| s.contains("198.18.0."))),
        "the other testbed dialed this one's addresses: {r}"
    );
    let mine = report(&tb.dir, Some(&since));
    assert_eq!(mine["trust_failures"], 0, "{mine}");

    // This testbed's down stops this testbed only.
    let side_before = long_lived(&side.dir);
    // Two supervisors, haproxy, two kubelets, cp-1's etcd and apiserver.
    assert!(side_before.len() >= 7, "{side_before:?}");
    down_leaves_nothing(tb);
    let side_after = long_lived(&side.dir);
    let gone: Vec<&(u32, String)> =
        side_before.iter().filter(|p| !side_after.contains(p)).collect();
    assert!(gone.is_empty(), "the other testbed lost {gone:?} to this one's down");
    assert_eq!(side.ssh_ok(side.address("cp-1"), "hostname").trim(), "cp-1");
    let out = side.kubectl(&["get", "--raw", "/readyz"]);
    assert!(out.status.success(), "the other testbed's API after this one's down: {}", text(&out));

    // And the other's down leaves nothing of it.
    down_leaves_nothing(&side);
}

/// The kubelet runs static pods' probes as the real one (prober.rs): a pod whose liveness probe
/// fails its threshold is killed and restarted, one whose probe passes is left alone, and every
/// control-plane component keeps running under kubeadm's own probes.
pub fn kubelets_restart_static_pods_that_fail_their_liveness_probes(tb: &Testbed) {
    let manifest = |name: &str, probe: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: kube-system\n\
             spec:\n  containers:\n  - command:\n    - sleep\n    - '3600'\n    image: \
             busybox:1.36\n    livenessProbe:\n      failureThreshold: 2\n{probe}      \
             periodSeconds: 1\n      timeoutSeconds: 1\n    name: {name}\n  hostNetwork: true\n"
        )
    };
    // Nothing listens on port 1; the kubelet's healthz does on 127.0.0.1:10248.
    let dead = "      tcpSocket:\n        host: 127.0.0.1\n        port: 1\n";
    let live = "      httpGet:\n        host: 127.0.0.1\n        path: /healthz\n        port: \
                10248\n        scheme: HTTP\n";
    let dir = tb.node_path("w-2", "etc-kubernetes/manifests");
    let components: Vec<(&str, Option<u32>)> =
        ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "etcd"]
            .into_iter()
            .map(|c| (c, static_pod_pid(tb, "cp-1", c)))
            .collect();
    fs::write(dir.join("probe-dead.yaml"), manifest("probe-dead", dead)).unwrap();
    fs::write(dir.join("probe-live.yaml"), manifest("probe-live", live)).unwrap();
    eventually("both probe pods running on w-2", Duration::from_secs(20), || {
        static_pod_pid(tb, "w-2", "probe-dead").is_some()
            && static_pod_pid(tb, "w-2", "probe-live").is_some()
    });
    let first = static_pod_pid(tb, "w-2", "probe-dead").unwrap();
    let live_pid = static_pod_pid(tb, "w-2", "probe-live").unwrap();
    eventually("probe-dead killed and started again", Duration::from_secs(30), || {
        static_pod_pid(tb, "w-2", "probe-dead").is_some_and(|p| p != first)
    });
    let journal = fs::read_to_string(tb.node_path("w-2", "kubelet.journal")).unwrap();
    assert!(
        journal.contains("Container probe-dead failed liveness probe, will be restarted"),
        "the kubelet says why it killed probe-dead"
    );
    assert!(journal.contains("dial tcp 127.0.0.1:1: connect"), "and what the probe saw");
    assert!(!journal.contains("probe-live failed"), "probe-live's probe passes");
    assert_eq!(static_pod_pid(tb, "w-2", "probe-live"), Some(live_pid), "probe-live kept");
    for name in ["probe-dead", "probe-live"] {
        fs::remove_file(dir.join(format!("{name}.yaml"))).unwrap();
    }
    eventually("the probe pods stopped", Duration::from_secs(30), || {
        static_pod_pid(tb, "w-2", "probe-dead").is_none()
            && static_pod_pid(tb, "w-2", "probe-live").is_none()
    });
    for (c, pid) in components {
        assert_eq!(static_pod_pid(tb, "cp-1", c), pid, "{c} on cp-1 passes kubeadm's probes");
    }
}
