//! Nodes: the one trait through which every node effect goes, over SSH or on a local directory.
//!
//! Remote operations are small POSIX shell scripts run with `sh -c SCRIPT kubeca ARG...`: paths
//! travel as positional parameters (quoted by the openssh crate), and file contents travel on
//! stdin, never on a command line, so no key material appears in any process list. A write is
//! atomic: a temporary file in the same directory, fsync, rename, fsync of the directory, keeping
//! the owner and mode of the file it replaces.
//!
//! A node also makes TCP connections for kubeca ([`Node::connect_tcp`]): a component bound to
//! the node's loopback is probed from the node itself. Over SSH that is a local forward through
//! the master connection, whose Unix socket lives in a private directory under the control
//! directory ([`Forwarded`] says how a connection the node could not make reads).

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::Stdio;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// What a node operation returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    /// Exit status (-1 when killed by a signal).
    pub status: i32,
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
}

impl Output {
    /// Standard output as text (lossy).
    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Why a node operation failed. Each names the node and what was being done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// The node could not be reached (connection, authentication, host key).
    #[error("node {node}: cannot connect: {detail}")]
    Unreachable {
        /// The node.
        node: String,
        /// What ssh said.
        detail: String,
    },
    /// A command ran and failed.
    #[error("node {node}: {what} failed (exit {status}): {stderr}")]
    Failed {
        /// The node.
        node: String,
        /// What was being done ("write /etc/kubernetes/pki/ca.crt").
        what: String,
        /// Exit status.
        status: i32,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// A write's content did not arrive whole; the file was left as it was.
    #[error("node {node}: {what} was interrupted: {detail}")]
    Interrupted {
        /// The node.
        node: String,
        /// What was being done.
        what: String,
        /// What the node said.
        detail: String,
    },
    /// A command did not finish in time.
    #[error("node {node}: {what} did not finish within {secs} s")]
    Timeout {
        /// The node.
        node: String,
        /// What was being done.
        what: String,
        /// The limit.
        secs: u64,
    },
    /// A connection from the node to a port could not be set up: the forward through the ssh
    /// master was refused or failed, or the node's sshd refused to forward the connection.
    #[error("node {node}: cannot connect to {target} from the node: {detail}")]
    Forwarding {
        /// The node.
        node: String,
        /// The host and port, as the node sees them (`127.0.0.1:10257`).
        target: String,
        /// What ssh or the node said, and what to do about it.
        detail: String,
    },
}

impl NodeError {
    /// Whether trying again later may succeed (the node was unreachable or slow, or a write's
    /// content did not arrive whole). A forward that could not be set up is not transient: ssh
    /// or the node's sshd refused it, and will again until its configuration changes (a lost
    /// master connection, which the next attempt makes again, is [`NodeError::Unreachable`]).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            NodeError::Unreachable { .. }
                | NodeError::Timeout { .. }
                | NodeError::Interrupted { .. }
        )
    }
}

/// Reads a file: prints it, or exits 3 when it does not exist.
const READ: &str = r#"if [ -e "$1" ]; then exec cat -- "$1"; else exit 3; fi"#;

/// Reads every file named in "$@", in order: `F <size>`, the bytes, then `\nE` for one that
/// exists, `A` for one that does not. The trailer makes a file that changed size between the
/// two commands a framing error, not a silently wrong read.
const READ_MANY: &str = r#"for p in "$@"; do
if [ -e "$p" ]; then n=$(wc -c < "$p") || exit 1; printf 'F %s\n' $n; head -c "$n" -- "$p" || exit 1; printf '\nE\n'
else printf 'A\n'; fi
done"#;

/// Atomic write of stdin to $1 (or to what it links to); a new file gets mode $2; an existing
/// file's owner and mode are kept. `sync FILE` flushes the file and then the directory entry.
///
/// $3 and $4 are the size and SHA-256 of the content kubeca sent. When the client dies in the
/// middle of a write (kubeca killed, the connection lost), `cat` sees end of input and exits 0
/// with a short file: without the check, that torn file would be renamed over a certificate
/// the component loads at its next restart. A file that is not the one sent is removed and the
/// target left as it was; a signal (the session's pipes closing) removes it too.
const WRITE: &str = r#"set -e
p=$1
# Write through a symlink (kubelet-client-current.pem points at a dated file): the link stays.
if [ -L "$p" ]; then p=$(readlink -f -- "$p"); fi
d=$(dirname -- "$p"); t="$d/.kubeca-tmp.$$"
trap 'rm -f -- "$t"' EXIT
trap 'rm -f -- "$t"; exit 1' HUP INT PIPE TERM
umask 077
cat > "$t"
n=$(wc -c < "$t")
if [ "$n" -ne "$3" ]; then
  echo "received $n of $3 bytes (the sender stopped); $p left unchanged" >&2 || true; exit 4
fi
h=$(sha256sum < "$t"); h=${h%% *}
if [ "$h" != "$4" ]; then
  echo "received bytes whose SHA-256 is not the one sent; $p left unchanged" >&2 || true; exit 4
fi
if [ -e "$p" ]; then chown --reference="$p" -- "$t"; chmod --reference="$p" -- "$t"; else chmod "$2" -- "$t"; fi
sync -- "$t"
mv -f -- "$t" "$p"
trap - EXIT
sync -- "$d" 2>/dev/null || sync"#;

/// [`WRITE`]'s exit status when the content that arrived is not the content sent.
const WRITE_INTERRUPTED: i32 = 4;

/// A write that exited [`WRITE_INTERRUPTED`]: what arrived is not what was sent (the transfer
/// was cut short or damaged) and the file was left as it was, so sending it again may succeed.
fn interrupted(e: NodeError) -> NodeError {
    match e {
        NodeError::Failed { node, what, status: WRITE_INTERRUPTED, stderr } => {
            NodeError::Interrupted { node, what, detail: stderr }
        }
        other => other,
    }
}

/// The script and positional arguments that write `data` to `path` (mode `mode` for a new
/// file): what [`Node::write`] runs, public so a test can run it through a client it kills.
pub fn write_command(path: &str, data: &[u8], mode: u32) -> (&'static str, [String; 4]) {
    use sha2::Digest;
    let digest = hex::encode(sha2::Sha256::digest(data));
    (WRITE, [path.to_owned(), format!("{mode:o}"), data.len().to_string(), digest])
}

/// Lists the names in directory $1 (exit 3 when it does not exist).
const LIST: &str = r#"[ -d "$1" ] || exit 3; cd -- "$1" && for f in * .[!.]*; do [ -e "$f" ] && printf '%s\n' "$f"; done; true"#;

/// Renames $1 to $2 (same file system) and syncs the directory of $2.
const RENAME: &str =
    r#"set -e; mv -f -- "$1" "$2"; sync -- "$(dirname -- "$2")" 2>/dev/null || sync"#;

/// The answer of [`READ_MANY`] for `count` files, or `None` when it is not framed as it must be.
fn parse_read_many(mut out: &[u8], count: usize) -> Option<Vec<Option<Vec<u8>>>> {
    let mut files = Vec::with_capacity(count);
    for _ in 0..count {
        let end = out.iter().position(|b| *b == b'\n')?;
        let header = std::str::from_utf8(&out[..end]).ok()?;
        out = &out[end + 1..];
        if header == "A" {
            files.push(None);
            continue;
        }
        let size: usize = header.strip_prefix("F ")?.trim().parse().ok()?;
        let body = out.get(..size)?;
        out = out.get(size..)?.strip_prefix(b"\nE\n")?;
        files.push(Some(body.to_vec()));
    }
    out.is_empty().then_some(files)
}

/// Removes $1 if present.
const REMOVE: &str = r#"rm -f -- "$1""#;

/// Where the node operations of kubeca go. Implemented over SSH ([`SshNode`]) and on a directory
/// or the local machine ([`LocalNode`]).
pub trait Node: Send + Sync {
    /// A TCP connection made from the node ([`Node::connect_tcp`]).
    type Stream: AsyncRead + AsyncWrite + Unpin + Send + 'static;

    /// The node's name (as in the inventory).
    fn name(&self) -> &str;

    /// Opens a TCP connection to `host:port` as seen from the node (`127.0.0.1` is the node's
    /// own loopback): how a component that only the node reaches is probed. `Ok(None)` when the
    /// node could not connect: refused (nothing listens there), or no way there at all.
    ///
    /// Over SSH ([`SshNode`]) the node tries only after the stream is returned, so the same
    /// outcome arrives as a stream that ends before the far end sent anything ([`Forwarded`]); a
    /// TLS handshake over it ([`crate::probe::probe_over`]) reads that as Down, as it reads
    /// `Ok(None)`. A forward that cannot be set up is [`NodeError::Forwarding`].
    fn connect_tcp(
        &self,
        host: &str,
        port: u16,
    ) -> impl Future<Output = Result<Option<Self::Stream>, NodeError>> + Send;

    /// Runs `script` with `sh -c`, positional arguments `args`, and `stdin` as its input.
    fn sh(
        &self,
        what: &str,
        script: &str,
        args: &[&str],
        stdin: &[u8],
    ) -> impl Future<Output = Result<Output, NodeError>> + Send;

    /// Runs `script` and fails on any exit status but 0.
    fn checked(
        &self,
        what: &str,
        script: &str,
        args: &[&str],
        stdin: &[u8],
    ) -> impl Future<Output = Result<Output, NodeError>> + Send {
        async move {
            let out = self.sh(what, script, args, stdin).await?;
            if out.status != 0 {
                return Err(self.failed(what, out.status, &out));
            }
            Ok(out)
        }
    }

    /// Runs `script`, whose exit status 3 means "not there": `None`.
    fn optional(
        &self,
        what: &str,
        script: &str,
        args: &[&str],
    ) -> impl Future<Output = Result<Option<Output>, NodeError>> + Send {
        async move {
            let out = self.sh(what, script, args, b"").await?;
            match out.status {
                0 => Ok(Some(out)),
                3 => Ok(None),
                status => Err(self.failed(what, status, &out)),
            }
        }
    }

    /// Reads a file; `None` when it does not exist.
    fn read(&self, path: &str) -> impl Future<Output = Result<Option<Vec<u8>>, NodeError>> + Send {
        async move { Ok(self.optional(&format!("read {path}"), READ, &[path]).await?.map(|o| o.stdout)) }
    }

    /// Reads several files in one command (one round trip for a node's backup); for each,
    /// `None` when it does not exist.
    fn read_many(
        &self,
        paths: &[&str],
    ) -> impl Future<Output = Result<Vec<Option<Vec<u8>>>, NodeError>> + Send {
        async move {
            let what = format!("read {} files", paths.len());
            let out = self.checked(&what, READ_MANY, paths, b"").await?;
            parse_read_many(&out.stdout, paths.len()).ok_or_else(|| NodeError::Failed {
                node: self.name().to_owned(),
                what,
                status: 0,
                stderr:
                    "the answer was not framed as expected (did a file change while it was read?)"
                        .into(),
            })
        }
    }

    /// Replaces (or creates, with `mode`) a file atomically, keeping an existing file's owner
    /// and mode.
    fn write(
        &self,
        path: &str,
        data: &[u8],
        mode: u32,
    ) -> impl Future<Output = Result<(), NodeError>> + Send {
        async move {
            let (script, args) = write_command(path, data, mode);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            self.checked(&format!("write {path}"), script, &args, data)
                .await
                .map(drop)
                .map_err(interrupted)
        }
    }

    /// Names in a directory; `None` when it does not exist.
    fn list(
        &self,
        dir: &str,
    ) -> impl Future<Output = Result<Option<Vec<String>>, NodeError>> + Send {
        async move {
            let out = self.optional(&format!("list {dir}"), LIST, &[dir]).await?;
            Ok(out.map(|o| o.stdout_text().lines().map(str::to_owned).collect()))
        }
    }

    /// Renames a file (how a static pod is stopped and started again: its manifest is moved
    /// out of the manifests directory and back).
    fn rename(&self, from: &str, to: &str) -> impl Future<Output = Result<(), NodeError>> + Send {
        async move {
            self.checked(&format!("rename {from} to {to}"), RENAME, &[from, to], b"")
                .await
                .map(drop)
        }
    }

    /// Removes a file if it exists.
    fn remove(&self, path: &str) -> impl Future<Output = Result<(), NodeError>> + Send {
        async move { self.checked(&format!("remove {path}"), REMOVE, &[path], b"").await.map(drop) }
    }

    /// Runs a command line (no secrets in it) and fails on a non-zero exit.
    fn run(
        &self,
        what: &str,
        script: &str,
    ) -> impl Future<Output = Result<Output, NodeError>> + Send {
        self.checked(what, script, &[], b"")
    }

    /// The error for a failed command.
    fn failed(&self, what: &str, status: i32, out: &Output) -> NodeError {
        NodeError::Failed {
            node: self.name().to_owned(),
            what: what.to_owned(),
            status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        }
    }
}

/// A node reached over SSH: one multiplexed master connection, strict host keys by default.
pub struct SshNode {
    name: String,
    address: String,
    port: u16,
    opts: SshOptions,
    /// The master connection; `None` after it was lost, until the next command reconnects.
    session: std::sync::Mutex<Option<std::sync::Arc<openssh::Session>>>,
    /// The local forwards made through the master connection; dropped with it ([`Self::lost`]).
    forwards: std::sync::Mutex<Option<Forwards>>,
    /// One forward request at a time: two requests for one target would make two forwards.
    forwarding: tokio::sync::Mutex<()>,
}

/// At most this many forwards stand per master connection; making another cancels the least
/// recently used one.
///
/// A forward request does not hold a session channel open. The openssh crate makes it with
/// `ssh -fNT -L` through the master, which openssh's mux client sends as a forward request and
/// then a session request (`mux.c`, `SSHMUX_COMMAND_OPEN`; `-O forward` would be the forward
/// alone): the node's sshd opens a session and runs the user's shell with no input, which exits
/// at once (as sshd's debug log shows: `req shell`, then `Close session`). What stays for as
/// long as a forward stands is the master's listening socket here; each connection through it
/// is a channel while it lasts. A node has at most four components kubeca probes from it, each
/// on one port, so a rotation stays well under the cap; it bounds what a long run could gather.
const MAX_FORWARDS: usize = 8;

/// The local ends of the forwards through one master connection: Unix sockets named by number
/// in a private directory under the control directory, one per target. They go with the master
/// ([`SshNode::lost`] drops them), so a new master starts with none.
struct Forwards {
    /// `CONTROL_DIR/kubeca-fwd.XXXXXX`, mode 0700; removed with its sockets when dropped.
    dir: tempfile::TempDir,
    /// The forwards made, least recently used first.
    made: Vec<Forward>,
    /// The number that names the next socket.
    next: u32,
}

/// A forward: its target as the node sees it, and its socket here (mode 0600).
struct Forward {
    host: String,
    port: u16,
    socket: PathBuf,
}

impl Forwards {
    /// No forwards yet, in a new private directory under `control_dir`.
    fn new(control_dir: &Path) -> io::Result<Forwards> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("kubeca-fwd.")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(control_dir)?;
        Ok(Forwards { dir, made: Vec::new(), next: 0 })
    }
}

/// `host:port` as ssh and people write it: an IPv6 address in brackets.
pub(crate) fn target(host: &str, port: u16) -> String {
    if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") }
}

impl std::fmt::Debug for SshNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SshNode").field("name", &self.name).finish_non_exhaustive()
    }
}

/// How to reach nodes over SSH.
#[derive(Debug, Clone)]
pub struct SshOptions {
    /// Remote user.
    pub user: String,
    /// Private key file.
    pub identity: PathBuf,
    /// known_hosts file.
    pub known_hosts: PathBuf,
    /// Check host keys strictly (refuse unknown or changed keys).
    pub strict: bool,
    /// Prefix commands with `sudo -n`.
    pub sudo: bool,
    /// Limit for one command.
    pub timeout: Duration,
    /// Directory for the control sockets (short path: sockets have a length limit).
    pub control_dir: PathBuf,
}

impl SshNode {
    /// Connects to `address:port` as node `name`.
    pub async fn connect(
        name: &str,
        address: &str,
        port: u16,
        opts: &SshOptions,
    ) -> Result<SshNode, NodeError> {
        let session = Self::master(name, address, port, opts).await?;
        Ok(SshNode {
            name: name.to_owned(),
            address: address.to_owned(),
            port,
            opts: opts.clone(),
            session: std::sync::Mutex::new(Some(std::sync::Arc::new(session))),
            forwards: std::sync::Mutex::new(None),
            forwarding: tokio::sync::Mutex::new(()),
        })
    }

    async fn master(
        name: &str,
        address: &str,
        port: u16,
        opts: &SshOptions,
    ) -> Result<openssh::Session, NodeError> {
        let mut b = openssh::SessionBuilder::default();
        b.user(opts.user.clone())
            .port(port)
            .keyfile(&opts.identity)
            .user_known_hosts_file(&opts.known_hosts)
            .known_hosts_check(if opts.strict {
                openssh::KnownHosts::Strict
            } else {
                openssh::KnownHosts::Accept
            })
            .connect_timeout(Duration::from_secs(10))
            .server_alive_interval(Duration::from_secs(15))
            .control_directory(&opts.control_dir);
        tokio::time::timeout(opts.timeout, b.connect(address))
            .await
            .map_err(|_| NodeError::Timeout {
                node: name.to_owned(),
                what: format!("ssh to {address}:{port}"),
                secs: opts.timeout.as_secs(),
            })?
            .map_err(|e| NodeError::Unreachable {
                node: name.to_owned(),
                detail: format!("{address}:{port}: {}", error_chain(&e)),
            })
    }

    /// The master connection, made again when the last one was lost (sshd restarted, network
    /// blip): a step retried by the engine then runs on a fresh connection.
    async fn session(&self) -> Result<std::sync::Arc<openssh::Session>, NodeError> {
        let current = self.session.lock().ok().and_then(|s| s.clone());
        if let Some(s) = current {
            return Ok(s);
        }
        tracing::info!(node = %self.name, "reconnecting over ssh");
        let s = std::sync::Arc::new(
            Self::master(&self.name, &self.address, self.port, &self.opts).await?,
        );
        if let Ok(mut slot) = self.session.lock() {
            *slot = Some(s.clone());
        }
        Ok(s)
    }

    /// Forgets the master connection (the next command makes a new one) and the forwards made
    /// through it: their sockets and directory go now, their listeners with the master.
    fn lost(&self) {
        if let Ok(mut slot) = self.session.lock() {
            *slot = None;
        }
        *self.forwards_slot() = None;
    }

    /// The forwards table. A panic while it was held cannot leave it half changed (each change is
    /// one assignment or one `Vec` operation), so a poisoned lock is taken as it is.
    fn forwards_slot(&self) -> std::sync::MutexGuard<'_, Option<Forwards>> {
        self.forwards.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The local socket of a forward to `host:port` through `session`: the one made before, or
    /// a new one (cancelling the least recently used when [`MAX_FORWARDS`] stand).
    async fn forward(
        &self,
        session: &Arc<openssh::Session>,
        host: &str,
        port: u16,
    ) -> Result<PathBuf, NodeError> {
        use openssh::{ForwardType, Socket};
        let _one_at_a_time = self.forwarding.lock().await;
        let failed = |detail: String| NodeError::Forwarding {
            node: self.name.clone(),
            target: target(host, port),
            detail,
        };
        let (socket, evicted) = {
            let mut slot = self.forwards_slot();
            let forwards = match slot.take() {
                Some(f) => f,
                None => Forwards::new(&self.opts.control_dir).map_err(|e| {
                    failed(format!(
                        "cannot make a private directory for forward sockets in {}: {e}",
                        self.opts.control_dir.display()
                    ))
                })?,
            };
            let forwards = slot.insert(forwards);
            if let Some(i) = forwards.made.iter().position(|f| f.host == host && f.port == port) {
                let used = forwards.made.remove(i);
                let socket = used.socket.clone();
                forwards.made.push(used);
                return Ok(socket);
            }
            let evicted = (forwards.made.len() >= MAX_FORWARDS).then(|| forwards.made.remove(0));
            let socket = forwards.dir.path().join(forwards.next.to_string());
            forwards.next += 1;
            (socket, evicted)
        };
        // ssh reads `-L PATH:HOST:PORT` at its colons.
        if socket.as_os_str().as_encoded_bytes().contains(&b':') {
            return Err(failed(format!(
                "the forward socket's path {} has a ':', which ssh cannot take in a forward; \
                 use a state directory whose path has none",
                socket.display()
            )));
        }
        let remote = |host: &str, port| {
            Socket::new(
                if host.contains(':') { format!("[{host}]") } else { host.to_owned() },
                port,
            )
        };
        if let Some(old) = evicted {
            // Best effort: a forward that cannot be cancelled stands until its master goes.
            let cancel = session.close_port_forward(
                ForwardType::Local,
                old.socket.as_path(),
                remote(&old.host, old.port),
            );
            let _ = tokio::time::timeout(self.opts.timeout, cancel).await;
            let _ = std::fs::remove_file(&old.socket);
        }
        let request =
            session.request_port_forward(ForwardType::Local, socket.as_path(), remote(host, port));
        match tokio::time::timeout(self.opts.timeout, request).await {
            Err(_) => {
                return Err(NodeError::Timeout {
                    node: self.name.clone(),
                    what: format!("forward to {}", target(host, port)),
                    secs: self.opts.timeout.as_secs(),
                });
            }
            Ok(Err(e)) => {
                // A master that is gone refuses every request: the next one reconnects.
                if session.check().await.is_err() {
                    self.lost();
                    return Err(self.unreachable(&e));
                }
                return Err(failed(format!(
                    "ssh refused the forward from {}: {}",
                    socket.display(),
                    error_chain(&e)
                )));
            }
            Ok(Ok(())) => {}
        }
        // ssh makes it 0600 (its StreamLocalBindMask, 0177 unless ssh_config says otherwise);
        // 0600 whatever the configuration, in a directory only this user enters.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| failed(format!("chmod 0600 {}: {e}", socket.display())))?;
        }
        // Unless the master was lost meanwhile, and its forwards with it.
        if let Some(forwards) = self.forwards_slot().as_mut() {
            forwards.made.push(Forward { host: host.to_owned(), port, socket: socket.clone() });
        }
        Ok(socket)
    }

    /// Closes the master connection.
    pub async fn close(self) {
        *self.forwards_slot() = None;
        let session = self.session.lock().ok().and_then(|mut s| s.take());
        if let Some(s) = session.and_then(|s| std::sync::Arc::try_unwrap(s).ok()) {
            let _ = s.close().await;
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl Node for SshNode {
    type Stream = Forwarded;

    fn name(&self) -> &str {
        &self.name
    }

    async fn connect_tcp(&self, host: &str, port: u16) -> Result<Option<Forwarded>, NodeError> {
        let session = self.session().await?;
        let socket = self.forward(&session, host, port).await?;
        // The master logs why a connection it forwarded ended; what it logs from here on is
        // about this one. The openssh crate starts the master with `-E DIR/log` beside its
        // control socket `DIR/master`; without that log a refusal reads as Down.
        let log = session.control_socket().with_file_name("log");
        let from = std::fs::metadata(&log).map_or(0, |m| m.len());
        match tokio::net::UnixStream::connect(&socket).await {
            Ok(stream) => Ok(Some(Forwarded {
                stream,
                answered: false,
                refusal: Some(RefusalCheck { target: target(host, port), log, from }),
            })),
            Err(e) => {
                // Nothing accepts on the forward's socket: its master is gone.
                self.lost();
                Err(NodeError::Unreachable {
                    node: self.name.clone(),
                    detail: format!(
                        "the ssh master's forward to {} is gone ({e})",
                        target(host, port)
                    ),
                })
            }
        }
    }

    async fn sh(
        &self,
        what: &str,
        script: &str,
        args: &[&str],
        stdin: &[u8],
    ) -> Result<Output, NodeError> {
        let session = self.session().await?;
        let mut cmd = if self.opts.sudo {
            let mut c = session.arc_command("sudo");
            c.arg("-n").arg("sh");
            c
        } else {
            session.arc_command("sh")
        };
        cmd.arg("-c").arg(script).arg("kubeca").args(args.iter().copied());
        cmd.stdin(openssh::Stdio::piped())
            .stdout(openssh::Stdio::piped())
            .stderr(openssh::Stdio::piped());
        let run = async {
            let mut child = cmd.spawn().await.map_err(|e| self.unreachable(&e))?;
            if let Some(mut input) = child.stdin().take() {
                input.write_all(stdin).await.map_err(|e| self.unreachable(&e))?;
                input.shutdown().await.map_err(|e| self.unreachable(&e))?;
                drop(input);
            }
            let out = child.wait_with_output().await.map_err(|e| self.unreachable(&e))?;
            // 255 is ssh's own failure (the connection went away), not the script's.
            if out.status.code() == Some(255) {
                return Err(NodeError::Unreachable {
                    node: self.name.clone(),
                    detail: format!("ssh failed: {}", String::from_utf8_lossy(&out.stderr).trim()),
                });
            }
            Ok(Output {
                status: out.status.code().unwrap_or(-1),
                stdout: out.stdout,
                stderr: out.stderr,
            })
        };
        let result =
            tokio::time::timeout(self.opts.timeout, run).await.map_err(|_| NodeError::Timeout {
                node: self.name.clone(),
                what: what.to_owned(),
                secs: self.opts.timeout.as_secs(),
            })?;
        if matches!(result, Err(NodeError::Unreachable { .. })) {
            self.lost();
        }
        result
    }
}

impl SshNode {
    fn unreachable(&self, e: &dyn std::error::Error) -> NodeError {
        NodeError::Unreachable { node: self.name.clone(), detail: error_chain(e) }
    }
}

/// A TCP connection made from a node over SSH ([`SshNode`]'s [`Node::connect_tcp`]): a
/// connection to the Unix socket of a local forward through the node's master connection.
///
/// ssh accepts on the socket first and only then asks the node's sshd to connect, so whether the
/// node could connect shows afterwards. When it could not (nothing listens there: the master
/// logs `open failed: connect failed: Connection refused`), the master closes the socket, and
/// this stream ends before the far end sent anything: what a TLS handshake over it
/// ([`crate::probe::probe_over`]) reads as Down, as it reads a refused connect. When the node's
/// sshd refused to forward at all (the master logs `open failed: administratively prohibited`:
/// `AllowTcpForwarding`, `DisableForwarding`, `PermitOpen`, the key's `no-port-forwarding`), the
/// component may well be up: the stream then fails, where it would have ended, with an error of
/// kind [`io::ErrorKind::PermissionDenied`] that says so, which
/// [`crate::probe::probe_over_as`] returns, so that a node kubeca cannot probe from is not taken
/// for a component that is down. A master that dies ends its connections unanswered as well; a
/// caller to whom a Down matters confirms it with a command over the same connection, which
/// then fails (the restart of a static pod does, before it takes the pod for stopped).
#[derive(Debug)]
pub struct Forwarded {
    stream: tokio::net::UnixStream,
    /// Whether the far end has sent anything yet.
    answered: bool,
    /// Where to look, once, if the stream ends or fails before the far end said anything.
    refusal: Option<RefusalCheck>,
}

/// How to tell, once a forwarded connection ended unanswered, whether the node's sshd refused it.
#[derive(Debug)]
struct RefusalCheck {
    /// The connection's target, for the message.
    target: String,
    /// The master's log.
    log: PathBuf,
    /// The log's length when the connection was made. What follows is about this connection, or
    /// about another one made through the same master meanwhile, which would be refused for the
    /// same reason in practice: sshd forbids forwarding altogether, or everywhere but the
    /// targets `PermitOpen` names, and kubeca probes each node's components one at a time.
    from: u64,
}

impl RefusalCheck {
    /// The error to raise in place of the end of the stream, when the master logged since the
    /// connection was made that the node's sshd refused to open it.
    fn refused(self) -> Option<io::Error> {
        use std::io::{Read, Seek};
        let mut log = std::fs::File::open(&self.log).ok()?;
        log.seek(io::SeekFrom::Start(self.from)).ok()?;
        let mut since = Vec::new();
        log.read_to_end(&mut since).ok()?;
        let since = String::from_utf8_lossy(&since);
        let line =
            since.lines().find(|l| l.contains("open failed: administratively prohibited"))?;
        Some(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "the node's sshd refused to forward a connection to {} (ssh: {}); allow kubeca's \
                 SSH user TCP forwarding on the node (sshd_config AllowTcpForwarding, \
                 DisableForwarding, PermitOpen; no no-port-forwarding or permitopen on its key)",
                self.target,
                line.trim()
            ),
        ))
    }
}

impl Forwarded {
    /// The refusal to raise when the stream ends or fails before the far end said anything, if
    /// the node's sshd refused it (looked for once).
    fn refusal(&mut self) -> Option<io::Error> {
        if self.answered {
            return None;
        }
        self.refusal.take().and_then(RefusalCheck::refused)
    }
}

/// The far end closing or resetting the connection.
fn is_closed(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}

impl AsyncRead for Forwarded {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let (before, room) = (buf.filled().len(), buf.remaining() > 0);
        match Pin::new(&mut this.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() > before => {
                this.answered = true;
                Poll::Ready(Ok(()))
            }
            // End of stream.
            Poll::Ready(Ok(())) if room => match this.refusal() {
                Some(refused) => Poll::Ready(Err(refused)),
                None => Poll::Ready(Ok(())),
            },
            Poll::Ready(Err(e)) if is_closed(&e) => Poll::Ready(Err(this.refusal().unwrap_or(e))),
            other => other,
        }
    }
}

impl AsyncWrite for Forwarded {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.stream).poll_write(cx, buf) {
            Poll::Ready(Err(e)) if is_closed(&e) => Poll::Ready(Err(this.refusal().unwrap_or(e))),
            other => other,
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// How long [`LocalNode::connect_tcp`] waits for a connection: as long as a probe waits for
/// its whole answer.
const LOCAL_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A node that is a directory on this machine (`root` stands for `/`), or the machine itself
/// with `root = "/"`. Scripts run locally with absolute paths mapped under `root`.
#[derive(Debug, Clone)]
pub struct LocalNode {
    name: String,
    root: PathBuf,
    timeout: Duration,
}

impl LocalNode {
    /// A node named `name` whose file system is `root`.
    pub fn new(name: &str, root: &Path) -> LocalNode {
        LocalNode {
            name: name.to_owned(),
            root: root.to_owned(),
            timeout: Duration::from_secs(120),
        }
    }

    /// Where node path `path` lives on this machine.
    pub fn host_path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }
}

impl Node for LocalNode {
    type Stream = tokio::net::TcpStream;

    fn name(&self) -> &str {
        &self.name
    }

    /// Connects from this machine, which is the node. Refused, no way there (no route, no such
    /// name) or not connected within 3 s is `Ok(None)`: what a node over
    /// SSH reports as a connection that ends unanswered, and what a probe from here reads as
    /// Down.
    async fn connect_tcp(
        &self,
        host: &str,
        port: u16,
    ) -> Result<Option<tokio::net::TcpStream>, NodeError> {
        let connect = tokio::net::TcpStream::connect((host, port));
        match tokio::time::timeout(LOCAL_CONNECT_TIMEOUT, connect).await {
            Ok(Ok(stream)) => Ok(Some(stream)),
            Ok(Err(e)) => {
                tracing::debug!(node = %self.name, "connect to {}: {e}", target(host, port));
                Ok(None)
            }
            Err(_) => Ok(None),
        }
    }

    async fn sh(
        &self,
        what: &str,
        script: &str,
        args: &[&str],
        stdin: &[u8],
    ) -> Result<Output, NodeError> {
        // Positional arguments that are absolute paths are node paths: map them under root.
        let mapped: Vec<String> = args
            .iter()
            .map(|a| {
                if a.starts_with('/') {
                    self.host_path(a).display().to_string()
                } else {
                    (*a).to_owned()
                }
            })
            .collect();
        let mut cmd = tokio::process::Command::new("sh");
        cmd.arg("-c")
            .arg(script)
            .arg("kubeca")
            .args(&mapped)
            .env("KUBECA_NODE_ROOT", &self.root)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let node = self.name.clone();
        let run = async {
            let mut child = cmd.spawn().map_err(|e| NodeError::Unreachable {
                node: node.clone(),
                detail: e.to_string(),
            })?;
            if let Some(mut input) = child.stdin.take() {
                input.write_all(stdin).await.map_err(|e| NodeError::Unreachable {
                    node: node.clone(),
                    detail: e.to_string(),
                })?;
            }
            let out = child.wait_with_output().await.map_err(|e| NodeError::Unreachable {
                node: node.clone(),
                detail: e.to_string(),
            })?;
            Ok(Output {
                status: out.status.code().unwrap_or(-1),
                stdout: out.stdout,
                stderr: out.stderr,
            })
        };
        tokio::time::timeout(self.timeout, run).await.map_err(|_| NodeError::Timeout {
            node: self.name.clone(),
            what: what.to_owned(),
            secs: self.timeout.as_secs(),
        })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn node() -> (tempfile::TempDir, LocalNode) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc/kubernetes/pki")).unwrap();
        let node = LocalNode::new("cp-1", dir.path());
        (dir, node)
    }

    #[tokio::test]
    async fn read_write_list_rename_remove_on_a_directory_node() {
        let (dir, n) = node();
        assert_eq!(n.read("/etc/kubernetes/pki/ca.crt").await.unwrap(), None);
        n.write("/etc/kubernetes/pki/ca.crt", b"CA", 0o644).await.unwrap();
        assert_eq!(
            n.read("/etc/kubernetes/pki/ca.crt").await.unwrap().as_deref(),
            Some(&b"CA"[..])
        );
        let meta = std::fs::metadata(dir.path().join("etc/kubernetes/pki/ca.crt")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        let mut names = n.list("/etc/kubernetes/pki").await.unwrap().unwrap();
        names.sort();
        assert_eq!(names, ["ca.crt"]);
        assert_eq!(n.list("/nope").await.unwrap(), None);
        n.rename("/etc/kubernetes/pki/ca.crt", "/etc/kubernetes/ca.crt").await.unwrap();
        assert!(dir.path().join("etc/kubernetes/ca.crt").exists());
        n.remove("/etc/kubernetes/ca.crt").await.unwrap();
        assert!(!dir.path().join("etc/kubernetes/ca.crt").exists());
    }

    #[tokio::test]
    async fn read_many_reads_each_file_or_none_as_read_does() {
        let (dir, n) = node();
        let pki = dir.path().join("etc/kubernetes/pki");
        // Contents that look like the framing, no final newline, an empty file, binary bytes.
        std::fs::write(pki.join("a.crt"), b"x\nE\nF 3\nabc").unwrap();
        std::fs::write(pki.join("empty"), b"").unwrap();
        std::fs::write(pki.join("bin"), [0u8, 255, 10, 69, 10]).unwrap();
        let paths = [
            "/etc/kubernetes/pki/a.crt",
            "/etc/kubernetes/pki/missing",
            "/etc/kubernetes/pki/empty",
            "/etc/kubernetes/pki/it's here",
            "/etc/kubernetes/pki/bin",
        ];
        std::fs::write(pki.join("it's here"), b"quoted name\n").unwrap();
        let many = n.read_many(&paths).await.unwrap();
        let mut one_by_one = Vec::new();
        for p in paths {
            one_by_one.push(n.read(p).await.unwrap());
        }
        assert_eq!(many, one_by_one);
        assert_eq!(many[1], None);
        assert_eq!(many[2].as_deref(), Some(&b""[..]));
        assert_eq!(n.read_many(&[]).await.unwrap(), Vec::<Option<Vec<u8>>>::new());
        // A directory cannot be read: an error naming the node, as read's.
        let err = n.read_many(&["/etc/kubernetes/pki"]).await.unwrap_err();
        assert!(err.to_string().contains("node cp-1"), "{err}");
    }

    #[test]
    fn a_misframed_read_many_answer_is_refused() {
        assert_eq!(parse_read_many(b"F 2\nab\nE\nA\n", 2), Some(vec![Some(b"ab".to_vec()), None]));
        // A file that shrank between its size and its bytes, a missing trailer, a short answer,
        // bytes left over.
        for bad in [&b"F 3\nab\nE\n"[..], b"F 2\nab", b"F 2\nab\nE\n", b"A\nA\nA\n", b"F x\n"] {
            assert_eq!(parse_read_many(bad, 2), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[tokio::test]
    async fn a_write_keeps_the_mode_of_the_file_it_replaces_and_leaves_no_temporary() {
        let (dir, n) = node();
        let key = dir.path().join("etc/kubernetes/pki/ca.key");
        std::fs::write(&key, b"old").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        n.write("/etc/kubernetes/pki/ca.key", b"new", 0o644).await.unwrap();
        assert_eq!(std::fs::read(&key).unwrap(), b"new");
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("etc/kubernetes/pki"))
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains("kubeca-tmp"))
            .collect();
        assert!(leftovers.is_empty());
    }

    /// Regression: a kill -9 of kubeca during a remote write once installed a 0-byte
    /// certificate on a node (`cat` saw end of input and exited 0, the rename followed).
    #[tokio::test]
    async fn a_write_whose_input_stops_short_leaves_the_old_file_and_no_temporary() {
        let (dir, n) = node();
        let pki = dir.path().join("etc/kubernetes/pki");
        std::fs::write(pki.join("front-proxy-client.crt"), b"old").unwrap();
        let data = vec![b'x'; 100_000];
        let (script, args) =
            write_command("/etc/kubernetes/pki/front-proxy-client.crt", &data, 0o644);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // Input that ends early (the sender died), then input of the right size but other bytes.
        let mut other = data.clone();
        other[500] = b'y';
        for (stdin, why) in [(&data[..40_000], "40000 of 100000 bytes"), (&other[..], "SHA-256")] {
            let out = n.sh("write", script, &args, stdin).await.unwrap();
            assert_eq!(out.status, 4, "{}", String::from_utf8_lossy(&out.stderr));
            assert!(String::from_utf8_lossy(&out.stderr).contains(why), "{out:?}");
            assert_eq!(std::fs::read(pki.join("front-proxy-client.crt")).unwrap(), b"old");
            let names: Vec<_> = std::fs::read_dir(&pki)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert_eq!(names, ["front-proxy-client.crt"], "no temporary left");
        }
        // The whole input is written.
        let out = n.sh("write", script, &args, &data).await.unwrap();
        assert_eq!(out.status, 0, "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(std::fs::read(pki.join("front-proxy-client.crt")).unwrap(), data);
    }

    #[test]
    fn a_write_that_arrived_short_is_transient_and_other_failures_are_not() {
        let failed = |status| NodeError::Failed {
            node: "cp-1".into(),
            what: "write /etc/kubernetes/pki/ca.crt".into(),
            status,
            stderr: "received 40000 of 100000 bytes (the sender stopped)".into(),
        };
        let e = interrupted(failed(WRITE_INTERRUPTED));
        assert!(e.is_transient(), "{e}");
        assert!(e.to_string().contains("node cp-1") && e.to_string().contains("40000"), "{e}");
        assert!(!interrupted(failed(1)).is_transient(), "a write that failed otherwise stops");
    }

    #[tokio::test]
    async fn a_write_through_a_symlink_keeps_the_link() {
        let (dir, n) = node();
        let pki = dir.path().join("etc/kubernetes/pki");
        std::fs::write(pki.join("client-2026.pem"), b"old").unwrap();
        std::os::unix::fs::symlink("client-2026.pem", pki.join("client-current.pem")).unwrap();
        n.write("/etc/kubernetes/pki/client-current.pem", b"new", 0o600).await.unwrap();
        let link = std::fs::symlink_metadata(pki.join("client-current.pem")).unwrap();
        assert!(link.file_type().is_symlink(), "the link is kept");
        assert_eq!(std::fs::read(pki.join("client-2026.pem")).unwrap(), b"new");
    }

    #[tokio::test]
    async fn a_directory_node_connects_from_this_machine_and_a_probe_runs_over_it() {
        use crate::pki::{Ca, KeySpec};
        use crate::probe::{Seen, probe_over};
        let (_dir, n) = node();
        let now = jiff::Timestamp::now();
        let ca = Ca::generate("served", KeySpec::EcdsaP256, 1, now, &mut rand_core::OsRng).unwrap();
        let identity = (ca.cert().der().to_vec(), ca.key_pem().to_string());
        let port = crate::fixtures::tls_server("127.0.0.1", identity, None).await;
        let stream = n.connect_tcp("127.0.0.1", port).await.unwrap().expect("a listener there");
        let seen = probe_over(stream, "127.0.0.1", "/healthz", Duration::from_secs(5)).await;
        assert_eq!(
            seen,
            Seen::Up { cert: ca.cert().der().to_vec(), status: 200, detail: "ok".into() }
        );
        let nobody =
            std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        assert!(n.connect_tcp("127.0.0.1", nobody).await.unwrap().is_none(), "refused: None");
    }

    /// A forwarded connection whose log says `logged` after it was made, and the far end.
    fn forwarded(dir: &Path, logged: &str) -> (Forwarded, tokio::net::UnixStream) {
        let log = dir.join("log");
        // What the master logged before the connection is about other connections.
        let before = "channel 1: open failed: administratively prohibited: open failed\n";
        std::fs::write(&log, format!("{before}{logged}")).unwrap();
        let (ours, theirs) = tokio::net::UnixStream::pair().unwrap();
        let refusal =
            RefusalCheck { target: "127.0.0.1:10257".into(), log, from: before.len() as u64 };
        (Forwarded { stream: ours, answered: false, refusal: Some(refusal) }, theirs)
    }

    const PROHIBITED: &str = "channel 3: open failed: administratively prohibited: open failed\n";

    #[tokio::test]
    async fn a_forward_the_nodes_sshd_refused_fails_where_it_would_have_ended() {
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().unwrap();
        let mut buf = [0u8; 16];
        // Nothing listens on the node: the connection just ends.
        let refused = "channel 3: open failed: connect failed: Connection refused\n";
        let (mut stream, far) = forwarded(dir.path(), refused);
        drop(far);
        assert_eq!(stream.read(&mut buf).await.unwrap(), 0);
        // The node's sshd refused to forward it: an error that says so, read or written.
        let (mut stream, far) = forwarded(dir.path(), PROHIBITED);
        drop(far);
        let e = stream.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        let text = e.to_string();
        assert!(text.contains("127.0.0.1:10257") && text.contains("AllowTcpForwarding"), "{text}");
        let (mut stream, far) = forwarded(dir.path(), PROHIBITED);
        drop(far);
        let e = stream.write_all(&[0u8; 1 << 16]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        // Closed with what was sent to it unread (a TLS client's hello): a reset, read as the
        // refusal too.
        let (mut stream, far) = forwarded(dir.path(), PROHIBITED);
        stream.write_all(b"client hello").await.unwrap();
        drop(far);
        let e = stream.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        // Once the far end has answered, its end is the end.
        let (mut stream, mut far) = forwarded(dir.path(), PROHIBITED);
        far.write_all(b"x").await.unwrap();
        drop(far);
        assert_eq!(stream.read(&mut buf).await.unwrap(), 1);
        assert_eq!(stream.read(&mut buf).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn a_probe_over_a_refused_forward_returns_the_refusal_and_not_down() {
        use crate::probe::{Seen, probe_over, probe_over_as};
        let dir = tempfile::tempdir().unwrap();
        let t = Duration::from_secs(5);
        let (stream, far) = forwarded(dir.path(), PROHIBITED);
        drop(far);
        let e = probe_over_as(stream, "127.0.0.1", "/healthz", t, None).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        assert!(e.to_string().contains("refused to forward"), "{e}");
        // probe_over reads every failure as Down; a plain end is Down for both.
        let (stream, far) = forwarded(dir.path(), PROHIBITED);
        drop(far);
        assert_eq!(probe_over(stream, "127.0.0.1", "/healthz", t).await, Seen::Down);
        let (stream, far) = forwarded(dir.path(), "");
        drop(far);
        let seen = probe_over_as(stream, "127.0.0.1", "/healthz", t, None).await.unwrap();
        assert_eq!(seen, Seen::Down);
    }

    #[tokio::test]
    async fn a_failed_write_names_the_node_and_the_file() {
        let (_dir, n) = node();
        let err = n.write("/no/such/dir/file", b"x", 0o600).await.unwrap_err();
        let text = err.to_string();
        assert!(text.contains("node cp-1") && text.contains("write /no/such/dir/file"), "{text}");
    }
}
