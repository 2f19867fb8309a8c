//! Node effects over a real sshd on this machine: strict host keys, atomic writes, reads, and
//! connections made from the node through the ssh master (a TLS server, `openssl s_server`,
//! standing for a component bound to the node's loopback).
//!
//! Each test starts its own `sshd` on a loopback address with a fresh host key and client key,
//! exactly as kubeca meets a node: `ssh` with a known_hosts file and an identity file.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use actions::node::{Node, NodeError, SshNode, SshOptions};

struct Sshd {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn keygen(path: &Path) {
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen (package openssh-client; make test installs it)");
    assert!(ok.success());
}

fn free_port(addr: &str) -> u16 {
    std::net::TcpListener::bind((addr, 0)).unwrap().local_addr().unwrap().port()
}

const ADDR: &str = "127.0.0.2";

fn sshd() -> Sshd {
    sshd_with("")
}

/// An sshd whose configuration ends with `extra`.
fn sshd_with(extra: &str) -> Sshd {
    let sshd_bin = ["/usr/sbin/sshd", "/usr/bin/sshd"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("sshd is not installed (package openssh-server; make test installs it)");
    std::fs::create_dir_all("/run/sshd").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o700)).unwrap();
    keygen(&d.join("host_key"));
    keygen(&d.join("id_ed25519"));
    std::fs::copy(d.join("id_ed25519.pub"), d.join("authorized_keys")).unwrap();
    let host_pub = std::fs::read_to_string(d.join("host_key.pub")).unwrap();
    let port = free_port(ADDR);
    std::fs::write(d.join("known_hosts"), format!("[{ADDR}]:{port} {host_pub}")).unwrap();
    let config = format!(
        "ListenAddress {ADDR}:{port}\nHostKey {}\nAuthorizedKeysFile {}\nPermitRootLogin prohibit-password\n\
         PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n\
         PidFile {}\nLogLevel ERROR\n{extra}",
        d.join("host_key").display(),
        d.join("authorized_keys").display(),
        d.join("sshd.pid").display(),
    );
    std::fs::write(d.join("sshd_config"), config).unwrap();
    #[allow(clippy::zombie_processes)] // Sshd's Drop kills and waits for it
    let child = Command::new(sshd_bin)
        .args(["-D", "-e", "-f"])
        .arg(d.join("sshd_config"))
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    // Wait until it accepts connections (bounded).
    for _ in 0..200 {
        if std::net::TcpStream::connect((ADDR, port)).is_ok() {
            return Sshd { child, dir, port };
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("sshd did not start listening on {ADDR}:{port}");
}

fn options(s: &Sshd, known_hosts: PathBuf) -> SshOptions {
    SshOptions {
        user: std::env::var("USER").unwrap_or_else(|_| "root".into()),
        identity: s.dir.path().join("id_ed25519"),
        known_hosts,
        strict: true,
        sudo: false,
        timeout: Duration::from_secs(30),
        control_dir: s.dir.path().to_owned(),
    }
}

#[tokio::test]
async fn reads_and_atomic_writes_over_ssh_with_strict_host_keys() {
    let s = sshd();
    let opts = options(&s, s.dir.path().join("known_hosts"));
    let node = SshNode::connect("cp-1", ADDR, s.port, &opts).await.unwrap();
    let work = s.dir.path().join("files");
    std::fs::create_dir(&work).unwrap();
    let path = work.join("ca.key");
    let path_text = path.to_str().unwrap();
    std::fs::write(&path, "old").unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();

    assert_eq!(node.read(path_text).await.unwrap().as_deref(), Some(&b"old"[..]));
    // Content with every byte value and shell metacharacters survives the trip on stdin.
    let data: Vec<u8> = (0..=255u8).chain(b"$(rm -rf /) `x` 'y' \"z\"\n".iter().copied()).collect();
    node.write(path_text, &data, 0o644).await.unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), data);
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600, "mode kept");
    // A path with a space and a quote is passed as one argument.
    let odd = work.join("it's a file.crt");
    node.write(odd.to_str().unwrap(), b"x", 0o600).await.unwrap();
    assert_eq!(std::fs::read(&odd).unwrap(), b"x");
    assert_eq!(node.read(work.join("absent").to_str().unwrap()).await.unwrap(), None);
    // Several files in one command, over the same connection: each as read gives it.
    let absent = work.join("absent");
    let many = node
        .read_many(&[path_text, absent.to_str().unwrap(), odd.to_str().unwrap()])
        .await
        .unwrap();
    assert_eq!(many, [Some(data.clone()), None, Some(b"x".to_vec())]);
    let mut names = node.list(work.to_str().unwrap()).await.unwrap().unwrap();
    names.sort();
    assert_eq!(names, ["ca.key", "it's a file.crt"]);
    node.close().await;
}

#[tokio::test]
async fn an_unknown_host_key_is_refused_when_strict() {
    let s = sshd();
    // known_hosts holds some other key for this address: strict checking must refuse.
    let other = s.dir.path().join("other_key");
    keygen(&other);
    let other_pub = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let wrong = s.dir.path().join("wrong_known_hosts");
    std::fs::write(&wrong, format!("[{ADDR}]:{} {other_pub}", s.port)).unwrap();
    let err = SshNode::connect("w-1", ADDR, s.port, &options(&s, wrong)).await.unwrap_err();
    assert!(matches!(err, NodeError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains("node w-1"), "{err}");
    let lower = err.to_string().to_lowercase();
    assert!(lower.contains("host key verification failed"), "the refusal says why: {err}");

    // An empty known_hosts: the key is unknown, and strict checking does not add it.
    let empty = s.dir.path().join("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    let err = SshNode::connect("w-1", ADDR, s.port, &options(&s, empty.clone())).await.unwrap_err();
    assert!(matches!(err, NodeError::Unreachable { .. }), "{err}");
    assert!(err.to_string().to_lowercase().contains("host key verification failed"), "{err}");
    assert_eq!(std::fs::read_to_string(&empty).unwrap(), "");
}

#[tokio::test]
async fn an_unreachable_node_is_named() {
    let s = sshd();
    let mut opts = options(&s, s.dir.path().join("known_hosts"));
    opts.timeout = Duration::from_secs(20);
    let port = free_port(ADDR); // nothing listens there
    let err = SshNode::connect("w-2", ADDR, port, &opts).await.unwrap_err();
    assert!(err.to_string().contains("node w-2"), "{err}");
    assert!(err.is_transient());
}

/// Key material travels on stdin, never on a command line: while a key is written to a node,
/// no process on this machine (ssh, the remote shell, sshd's children) shows it in its
/// arguments.
#[tokio::test]
async fn a_written_key_never_appears_in_any_process_arguments() {
    let s = sshd();
    let opts = options(&s, s.dir.path().join("known_hosts"));
    let node = SshNode::connect("cp-1", ADDR, s.port, &opts).await.unwrap();
    let marker = "KUBECA-SECRET-MARKER-7f3a";
    let key = format!(
        "-----BEGIN PRIVATE KEY-----\n{marker}\n{}\n-----END PRIVATE KEY-----\n",
        "A".repeat(4 << 20)
    );
    let path = s.dir.path().join("ca.key");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        let marker = marker.to_owned();
        std::thread::spawn(move || {
            let mut samples = 0u32;
            let mut seen = Vec::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for entry in std::fs::read_dir("/proc").unwrap().flatten() {
                    if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
                        && String::from_utf8_lossy(&cmdline).contains(&marker)
                    {
                        seen.push(String::from_utf8_lossy(&cmdline).replace('\0', " "));
                    }
                }
                samples += 1;
            }
            (samples, seen)
        })
    };
    node.write(path.to_str().unwrap(), key.as_bytes(), 0o600).await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (samples, seen) = sampler.join().unwrap();
    assert!(samples > 0, "the sampler ran");
    assert!(seen.is_empty(), "key material on a command line: {seen:?}");
    assert_eq!(std::fs::read(&path).unwrap(), key.as_bytes());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    node.close().await;
}

/// A lost connection (the node's sshd dropped every session) is a transient error naming the
/// node, and the next command reconnects: a step retried by the engine runs again.
#[tokio::test]
async fn a_dropped_connection_is_transient_and_the_next_command_reconnects() {
    let s = sshd();
    let node =
        SshNode::connect("w-2", ADDR, s.port, &options(&s, s.dir.path().join("known_hosts")))
            .await
            .unwrap();
    let file = s.dir.path().join("authorized_keys");
    let path = file.to_str().unwrap();
    assert!(node.read(path).await.unwrap().is_some());
    // Kill the per-connection sshd processes (children of the listener): the master dies.
    let killed =
        Command::new("pkill").args(["-KILL", "-P", &s.child.id().to_string()]).status().unwrap();
    assert!(killed.success(), "there was a session process to kill");
    let mut saw_transient = false;
    let mut recovered = false;
    for _ in 0..5 {
        match node.read(path).await {
            Err(e) => {
                assert!(e.is_transient(), "{e}");
                assert!(e.to_string().contains("node w-2"), "{e}");
                saw_transient = true;
            }
            Ok(content) => {
                assert!(content.is_some());
                recovered = true;
                break;
            }
        }
    }
    assert!(saw_transient, "the lost connection was noticed");
    assert!(recovered, "a later command reconnected");
    node.close().await;
}

/// Regression: a kill -9 of kubeca in the middle of a write to a node once installed a torn
/// (0-byte) certificate there: the remote `cat` saw end of input, exited 0, and the rename
/// followed. The ssh client is killed once the node has received part of the content (seen in
/// the temporary file's size, so the moment is chosen, not guessed); the node's old file stays
/// and the remote script leaves no temporary behind.
#[test]
fn a_client_killed_in_the_middle_of_a_write_leaves_the_old_file_intact() {
    use std::io::Write as _;
    let s = sshd();
    let work = s.dir.path().join("pki");
    std::fs::create_dir(&work).unwrap();
    let target = work.join("front-proxy-client.crt");
    std::fs::write(&target, b"old certificate").unwrap();
    let data = vec![b'C'; 8 << 20];
    let (script, args) = actions::node::write_command(target.to_str().unwrap(), &data, 0o644);
    // ssh joins its arguments into one command line for the remote shell: quote each.
    let quote = |a: &str| format!("'{}'", a.replace('\'', r"'\''"));
    let remote = std::iter::once("sh -c".to_owned())
        .chain([quote(script), "kubeca".into()])
        .chain(args.iter().map(|a| quote(a)))
        .collect::<Vec<_>>()
        .join(" ");
    let user = std::env::var("USER").unwrap_or_else(|_| "root".into());
    let mut client = Command::new("ssh")
        .args(["-p", &s.port.to_string(), "-i"])
        .arg(s.dir.path().join("id_ed25519"))
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", s.dir.path().join("known_hosts").display()))
        .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ControlPath=none"])
        .arg(format!("{user}@{ADDR}"))
        .arg(remote)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = client.stdin.take().unwrap();
    stdin.write_all(&data[..data.len() / 2]).unwrap();
    stdin.flush().unwrap();
    let temporaries = || -> Vec<(String, u64)> {
        std::fs::read_dir(&work)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(".kubeca-tmp."))
            .map(|e| {
                (e.file_name().to_string_lossy().into_owned(), e.metadata().map_or(0, |m| m.len()))
            })
            .collect()
    };
    // Wait (bounded) until the node holds at least a megabyte of the content.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !temporaries().iter().any(|(_, len)| *len >= 1 << 20) {
        assert!(std::time::Instant::now() < deadline, "the write never reached the node");
        std::thread::sleep(Duration::from_millis(10));
    }
    client.kill().unwrap(); // SIGKILL: as kubeca killed mid-run
    let _ = client.wait();
    drop(stdin);
    // The remote script ends on its own (end of input, a failed size check): wait for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !temporaries().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "a temporary file was left on the node: {:?}",
            temporaries()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(std::fs::read(&target).unwrap(), b"old certificate", "the old file is intact");
}

/// `openssl s_server` on 127.0.0.1 with a fresh self-signed certificate, answering each request
/// with its status page (`-www`, HTTP 200): a component on the node's loopback (the node is this
/// machine). Killed when dropped.
struct TlsServer {
    child: Child,
    port: u16,
    /// The certificate it presents (DER).
    cert: Vec<u8>,
    _dir: tempfile::TempDir,
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tls_server() -> TlsServer {
    let dir = tempfile::tempdir().unwrap();
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl").args(args).current_dir(dir.path()).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    openssl(
        &["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
            .into_iter()
            .chain(["-keyout", "key.pem", "-out", "cert.pem", "-days", "1", "-subj", "/CN=probe"])
            .collect::<Vec<_>>(),
    );
    openssl(&["x509", "-in", "cert.pem", "-outform", "DER", "-out", "cert.der"]);
    let cert = std::fs::read(dir.path().join("cert.der")).unwrap();
    let port = free_port("127.0.0.1");
    #[allow(clippy::zombie_processes)] // TlsServer's Drop kills and waits for it
    let child = Command::new("openssl")
        .args(["s_server", "-quiet", "-www", "-cert", "cert.pem", "-key", "key.pem", "-accept"])
        .arg(format!("127.0.0.1:{port}"))
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return TlsServer { child, port, cert, _dir: dir };
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("openssl s_server did not start listening on 127.0.0.1:{port}");
}

/// The forward directories under a control directory: `(path, mode)`.
fn forward_dirs(control_dir: &Path) -> Vec<(PathBuf, u32)> {
    std::fs::read_dir(control_dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("kubeca-fwd."))
        .map(|e| (e.path(), e.metadata().unwrap().permissions().mode() & 0o777))
        .collect()
}

/// The sockets in a forward directory: `(name, mode)`, each checked to be a socket.
fn sockets(dir: &Path) -> Vec<(String, u32)> {
    use std::os::unix::fs::FileTypeExt;
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| {
            let meta = e.metadata().unwrap();
            assert!(meta.file_type().is_socket(), "{:?} is not a socket", e.path());
            (e.file_name().to_string_lossy().into_owned(), meta.permissions().mode() & 0o777)
        })
        .collect();
    out.sort();
    out
}

const PROBE: Duration = Duration::from_secs(5);

#[tokio::test]
async fn a_port_on_the_nodes_loopback_is_probed_through_the_ssh_master() {
    use actions::probe::{Seen, probe_over};
    let s = sshd();
    let server = tls_server();
    let node =
        SshNode::connect("cp-1", ADDR, s.port, &options(&s, s.dir.path().join("known_hosts")))
            .await
            .unwrap();
    for _ in 0..2 {
        let stream = node.connect_tcp("127.0.0.1", server.port).await.unwrap().unwrap();
        let seen = probe_over(stream, "127.0.0.1", "/healthz", PROBE).await;
        match seen {
            Seen::Up { cert, status, .. } => {
                assert_eq!(cert, server.cert, "the certificate openssl serves");
                assert_eq!(status, 200);
            }
            Seen::Down => {
                panic!("s_server on the node's 127.0.0.1:{} was not reached", server.port)
            }
        }
    }
    // One forward for both connections: a socket of 0600 in a private directory of 0700 under
    // the control directory.
    let dirs = forward_dirs(s.dir.path());
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    assert_eq!(dirs[0].1, 0o700);
    assert_eq!(sockets(&dirs[0].0), [("0".to_owned(), 0o600)]);
    node.close().await;
    assert!(forward_dirs(s.dir.path()).is_empty(), "closing the node removes its forwards");
}

#[tokio::test]
async fn a_port_nobody_listens_on_reads_as_down_through_the_ssh_master() {
    use actions::probe::{Seen, probe_over_as};
    let s = sshd();
    let node =
        SshNode::connect("cp-1", ADDR, s.port, &options(&s, s.dir.path().join("known_hosts")))
            .await
            .unwrap();
    let nobody = free_port("127.0.0.1");
    // The master accepts the connection before the node tries: it ends unanswered, Down, not an
    // error (the node's sshd forwards; nothing listens there).
    let stream = node.connect_tcp("127.0.0.1", nobody).await.unwrap().unwrap();
    let seen = probe_over_as(stream, "127.0.0.1", "/healthz", PROBE, None).await;
    assert_eq!(seen.unwrap(), Seen::Down);
    // And once something listens there, the same forward reaches it.
    let listener = std::net::TcpListener::bind(("127.0.0.1", nobody)).unwrap();
    let mut stream = node.connect_tcp("127.0.0.1", nobody).await.unwrap().unwrap();
    let (mut accepted, _) = listener.accept().unwrap();
    std::io::Write::write_all(&mut accepted, b"hello").unwrap();
    let mut buf = [0u8; 5];
    tokio::io::AsyncReadExt::read_exact(&mut stream, &mut buf).await.unwrap();
    assert_eq!(&buf, b"hello");
    node.close().await;
}

/// A node whose sshd forwards nothing (`AllowTcpForwarding no`, as hardening guides advise):
/// its component may well be up, so the probe is an error that says what to change, not Down.
#[tokio::test]
async fn a_node_whose_sshd_forwards_nothing_is_an_error_not_a_component_down() {
    use actions::probe::probe_over_as;
    let s = sshd_with("AllowTcpForwarding no\n");
    let server = tls_server();
    let node =
        SshNode::connect("cp-1", ADDR, s.port, &options(&s, s.dir.path().join("known_hosts")))
            .await
            .unwrap();
    let stream = node.connect_tcp("127.0.0.1", server.port).await.unwrap().unwrap();
    let e = probe_over_as(stream, "127.0.0.1", "/healthz", PROBE, None).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
    let text = e.to_string();
    assert!(text.contains(&format!("127.0.0.1:{}", server.port)), "{text}");
    assert!(text.contains("administratively prohibited"), "ssh's own words: {text}");
    node.close().await;
}

/// At most eight forwards stand per master; a lost master takes its forwards with it, and the
/// next connection makes them again through the new one.
#[tokio::test]
async fn forwards_are_capped_per_master_and_go_with_a_lost_master() {
    use actions::probe::{Seen, probe_over};
    let s = sshd();
    let server = tls_server();
    let node =
        SshNode::connect("w-2", ADDR, s.port, &options(&s, s.dir.path().join("known_hosts")))
            .await
            .unwrap();
    // Nine targets (eight nobody listens on, then the server): eight sockets stand.
    for _ in 0..8 {
        let nobody = free_port("127.0.0.1");
        assert!(node.connect_tcp("127.0.0.1", nobody).await.unwrap().is_some());
    }
    let stream = node.connect_tcp("127.0.0.1", server.port).await.unwrap().unwrap();
    assert!(matches!(probe_over(stream, "127.0.0.1", "/", PROBE).await, Seen::Up { .. }));
    let dirs = forward_dirs(s.dir.path());
    assert_eq!(dirs.len(), 1, "{dirs:?}");
    let names: Vec<String> = sockets(&dirs[0].0).into_iter().map(|(n, _)| n).collect();
    assert_eq!(names.len(), 8, "{names:?}");
    assert!(!names.contains(&"0".to_owned()), "the least recently used went: {names:?}");

    // The master dies (sshd drops the connection): the forward's socket leads nowhere.
    let killed =
        Command::new("pkill").args(["-KILL", "-P", &s.child.id().to_string()]).status().unwrap();
    assert!(killed.success(), "there was a session process to kill");
    // A connection made while the master is still going down ends unanswered (Down); then the
    // master is gone (a transient error), then a new one forwards again.
    let mut saw_transient = false;
    let mut recovered = false;
    for _ in 0..10 {
        match node.connect_tcp("127.0.0.1", server.port).await {
            Err(e) => {
                assert!(e.is_transient(), "{e}");
                assert!(e.to_string().contains("node w-2"), "{e}");
                saw_transient = true;
            }
            Ok(stream) => match probe_over(stream.unwrap(), "127.0.0.1", "/", PROBE).await {
                Seen::Up { .. } => {
                    recovered = true;
                    break;
                }
                Seen::Down => assert!(!saw_transient, "Down through the new master"),
            },
        }
    }
    assert!(saw_transient, "the lost master was noticed");
    assert!(recovered, "a later connection went through a new master");
    let now = forward_dirs(s.dir.path());
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now[0].0, dirs[0].0, "the lost master's forwards went with it");
    assert_eq!(sockets(&now[0].0).len(), 1);
    node.close().await;
}
