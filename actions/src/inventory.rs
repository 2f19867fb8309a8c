//! The TOML inventory (README.md, "Inventory"): parsing and validation with errors that name the key.
//!
//! Parsing is strict: an unknown key is an error (a typo such as `max_unavailble_workers` must not
//! silently fall back to a default during a CA rotation). Relative paths are resolved against the
//! inventory file's directory and `~/` against `$HOME`; files the rotation needs (SSH identity,
//! known_hosts, admin kubeconfig) must be readable before anything is changed.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why an inventory was refused. Every variant names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The file could not be read.
    #[error("{file}: cannot read the inventory: {source}")]
    Read {
        /// The inventory file.
        file: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, an unknown key, a missing key or a value of the wrong type.
    #[error("{file}: {message}")]
    Syntax {
        /// The inventory file.
        file: PathBuf,
        /// The parser's message, which names the key and the line.
        message: String,
    },
    /// A value is present but not acceptable.
    #[error("{file}: `{key}`: {message}")]
    Invalid {
        /// The inventory file.
        file: PathBuf,
        /// The key, as a path (`nodes[2].address`).
        key: String,
        /// What is wrong and what to do.
        message: String,
    },
}

/// A parsed, validated inventory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Inventory {
    /// `[cluster]`.
    pub cluster: Cluster,
    /// `[ssh]`.
    pub ssh: Ssh,
    /// `[[nodes]]`, in file order.
    pub nodes: Vec<Node>,
    /// `[rotation]`.
    pub rotation: Rotation,
}

/// `[cluster]`: the cluster's name and admin access.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// A name for reports.
    pub name: String,
    /// Admin kubeconfig for API steps (resolved path).
    pub kubeconfig: PathBuf,
    /// The load-balanced API endpoint, `https://host:port`.
    pub api_endpoint: String,
}

/// `[ssh]`: how nodes are reached.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ssh {
    /// Remote user.
    #[serde(default = "default_user")]
    pub user: String,
    /// Private key file (resolved path).
    pub identity: PathBuf,
    /// known_hosts file (resolved path).
    #[serde(default = "default_known_hosts")]
    pub known_hosts: PathBuf,
    /// Check host keys strictly against `known_hosts` (the default). Turning this off is an
    /// explicit choice written in the inventory.
    #[serde(default = "yes")]
    pub strict_host_key_checking: bool,
    /// Prefix remote commands with `sudo -n`.
    #[serde(default)]
    pub sudo: bool,
    /// How many nodes are worked on at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Seconds a remote command may take before it is abandoned.
    #[serde(default = "default_timeout")]
    pub command_timeout_secs: u64,
}

/// A node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// Runs the static control-plane pods (apiserver, controller-manager, scheduler, etcd).
    ControlPlane,
    /// Runs only the kubelet and workloads.
    Worker,
}

/// `[[nodes]]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// The Kubernetes node name.
    pub name: String,
    /// Address sshd listens on (an IP or a host name).
    pub address: String,
    /// SSH port.
    #[serde(default = "default_port")]
    pub port: u16,
    /// Roles; a control-plane node also runs a kubelet.
    pub roles: Vec<Role>,
}

impl Node {
    /// Whether the node runs the control plane.
    pub fn is_control_plane(&self) -> bool {
        self.roles.contains(&Role::ControlPlane)
    }
}

/// Where the new CA comes from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum NewCa {
    /// `"generate"`.
    Generate(GenerateWord),
    /// `{ cert = "...", key = "..." }` (resolved paths).
    Import {
        /// The CA certificate (PEM).
        cert: PathBuf,
        /// Its private key (PEM).
        key: PathBuf,
    },
}

/// The single accepted word for a generated CA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GenerateWord {
    /// Generate a new CA.
    Generate,
}

/// `[rotation]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rotation {
    /// The new cluster CA.
    #[serde(default = "generate")]
    pub new_ca: NewCa,
    /// The new front-proxy CA.
    #[serde(default = "generate")]
    pub new_front_proxy_ca: NewCa,
    /// `same-as-old`, `ecdsa-p256`, `rsa-2048` or `rsa-4096`.
    #[serde(default = "default_algorithm")]
    pub key_algorithm: String,
    /// Validity of generated CAs, in days.
    #[serde(default = "default_validity")]
    pub validity_days: u32,
    /// How many workers may be restarting at once.
    #[serde(default = "one")]
    pub max_unavailable_workers: u32,
    /// Seconds a restarted component (a static pod, a kubelet) may take to stop and to come
    /// back healthy before that attempt of its step fails (the step is retried, then the run
    /// pauses naming the node).
    #[serde(default = "default_restart_timeout")]
    pub restart_timeout_secs: u64,
}

/// Accepted `rotation.key_algorithm` values.
pub const KEY_ALGORITHMS: [&str; 4] = ["same-as-old", "ecdsa-p256", "rsa-2048", "rsa-4096"];

fn default_user() -> String {
    "root".into()
}
fn default_known_hosts() -> PathBuf {
    PathBuf::from("~/.ssh/known_hosts")
}
fn yes() -> bool {
    true
}
fn default_concurrency() -> u32 {
    10
}
fn default_timeout() -> u64 {
    120
}
fn default_port() -> u16 {
    22
}
fn generate() -> NewCa {
    NewCa::Generate(GenerateWord::Generate)
}
fn default_algorithm() -> String {
    "same-as-old".into()
}
fn default_validity() -> u32 {
    3650
}
fn one() -> u32 {
    1
}
fn default_restart_timeout() -> u64 {
    180
}

/// The file as written, before paths are resolved and values checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    cluster: Cluster,
    ssh: Ssh,
    #[serde(default)]
    nodes: Vec<Node>,
    rotation: Option<Rotation>,
}

impl Inventory {
    /// Reads, parses and validates the inventory at `file`.
    pub fn load(file: &Path) -> Result<Inventory, InventoryError> {
        let text = std::fs::read_to_string(file)
            .map_err(|source| InventoryError::Read { file: file.to_owned(), source })?;
        let base = file.parent().unwrap_or(Path::new("."));
        Inventory::parse(&text, file, base)
    }

    /// Parses and validates `text`; `file` is used in errors, `base` resolves relative paths.
    pub fn parse(text: &str, file: &Path, base: &Path) -> Result<Inventory, InventoryError> {
        let raw: Raw = toml::from_str(text).map_err(|e| InventoryError::Syntax {
            file: file.to_owned(),
            message: e.to_string().trim_end().replace('\n', "\n  "),
        })?;
        let mut inv = Inventory {
            cluster: raw.cluster,
            ssh: raw.ssh,
            nodes: raw.nodes,
            rotation: raw.rotation.unwrap_or(Rotation {
                new_ca: generate(),
                new_front_proxy_ca: generate(),
                key_algorithm: default_algorithm(),
                validity_days: default_validity(),
                max_unavailable_workers: one(),
                restart_timeout_secs: default_restart_timeout(),
            }),
        };
        let invalid = |key: &str, message: String| InventoryError::Invalid {
            file: file.to_owned(),
            key: key.to_owned(),
            message,
        };
        inv.cluster.kubeconfig = resolve(base, &inv.cluster.kubeconfig);
        inv.ssh.identity = resolve(base, &inv.ssh.identity);
        inv.ssh.known_hosts = resolve(base, &inv.ssh.known_hosts);
        for (key, ca) in [
            ("rotation.new_ca", &mut inv.rotation.new_ca),
            ("rotation.new_front_proxy_ca", &mut inv.rotation.new_front_proxy_ca),
        ] {
            if let NewCa::Import { cert, key: k } = ca {
                *cert = resolve(base, cert);
                *k = resolve(base, k);
                readable(cert).map_err(|m| invalid(&format!("{key}.cert"), m))?;
                readable(k).map_err(|m| invalid(&format!("{key}.key"), m))?;
            }
        }

        if inv.cluster.name.trim().is_empty() {
            return Err(invalid("cluster.name", "must not be empty".into()));
        }
        let endpoint = &inv.cluster.api_endpoint;
        if !endpoint.starts_with("https://") || endpoint.len() <= "https://".len() {
            return Err(invalid(
                "cluster.api_endpoint",
                format!("{endpoint:?} is not an https:// URL such as \"https://10.0.0.10:6443\""),
            ));
        }
        readable(&inv.cluster.kubeconfig).map_err(|m| invalid("cluster.kubeconfig", m))?;
        readable(&inv.ssh.identity).map_err(|m| invalid("ssh.identity", m))?;
        if inv.ssh.strict_host_key_checking {
            readable(&inv.ssh.known_hosts).map_err(|m| {
                invalid(
                    "ssh.known_hosts",
                    format!(
                        "{m}; host keys are checked strictly, so every node's key must be in it"
                    ),
                )
            })?;
        }
        if inv.ssh.user.is_empty() {
            return Err(invalid("ssh.user", "must not be empty".into()));
        }
        if inv.ssh.concurrency == 0 {
            return Err(invalid("ssh.concurrency", "must be at least 1".into()));
        }
        if inv.ssh.command_timeout_secs == 0 {
            return Err(invalid("ssh.command_timeout_secs", "must be at least 1".into()));
        }
        if inv.rotation.restart_timeout_secs == 0 {
            return Err(invalid("rotation.restart_timeout_secs", "must be at least 1".into()));
        }

        if inv.nodes.is_empty() {
            return Err(invalid(
                "nodes",
                "no [[nodes]] entries: list every node of the cluster".into(),
            ));
        }
        let mut names = BTreeSet::new();
        let mut addresses = BTreeSet::new();
        for (i, node) in inv.nodes.iter().enumerate() {
            let at = |field: &str| format!("nodes[{i}].{field}");
            if node.name.trim().is_empty() {
                return Err(invalid(&at("name"), "must not be empty".into()));
            }
            if !names.insert(node.name.clone()) {
                return Err(invalid(&at("name"), format!("duplicate node {:?}", node.name)));
            }
            if node.address.trim().is_empty() {
                return Err(invalid(
                    &at("address"),
                    format!("node {:?} has no address", node.name),
                ));
            }
            if node.address.parse::<IpAddr>().is_err() && !is_host_name(&node.address) {
                return Err(invalid(
                    &at("address"),
                    format!(
                        "{:?} (node {:?}) is neither an IP address nor a host name",
                        node.address, node.name
                    ),
                ));
            }
            if !addresses.insert((node.address.clone(), node.port)) {
                return Err(invalid(
                    &at("address"),
                    format!("{}:{} is used by two nodes", node.address, node.port),
                ));
            }
            if node.roles.is_empty() {
                return Err(invalid(
                    &at("roles"),
                    format!(
                        "node {:?} has no role: use [\"control-plane\"] or [\"worker\"]",
                        node.name
                    ),
                ));
            }
        }
        if !inv.nodes.iter().any(Node::is_control_plane) {
            return Err(invalid(
                "nodes",
                "no node has the role \"control-plane\": the apiservers' nodes must be listed"
                    .into(),
            ));
        }

        if !KEY_ALGORITHMS.contains(&inv.rotation.key_algorithm.as_str()) {
            return Err(invalid(
                "rotation.key_algorithm",
                format!(
                    "{:?} is not one of {}",
                    inv.rotation.key_algorithm,
                    KEY_ALGORITHMS.join(", ")
                ),
            ));
        }
        if inv.rotation.validity_days == 0 {
            return Err(invalid("rotation.validity_days", "must be at least 1".into()));
        }
        if inv.rotation.max_unavailable_workers == 0 {
            return Err(invalid(
                "rotation.max_unavailable_workers",
                "must be at least 1 (0 would never restart a worker's kubelet)".into(),
            ));
        }
        Ok(inv)
    }

    /// Control-plane nodes, in file order.
    pub fn control_planes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| n.is_control_plane())
    }

    /// The upstream procedure's caution when the control plane has a single apiserver: the
    /// cluster API is down while it restarts. `None` for an HA control plane.
    pub fn single_apiserver_caution(&self) -> Option<&'static str> {
        (self.control_planes().count() < 2).then_some(
            "only one API server: the cluster API is down while it restarts (upstream caution: \
             rotation without downtime needs an HA control plane)",
        )
    }

    /// The inventory's nodes are the cluster's (`cluster`: the names the API lists): a node of
    /// the cluster left out of the inventory would keep trusting only the old CA and break when
    /// it is removed, and a listed node the cluster does not know is a typo (named first: a
    /// misspelt name is also a cluster node "missing"). The error names the nodes and the file.
    pub fn check_nodes_against(
        &self,
        file: &Path,
        cluster: &[String],
    ) -> Result<(), InventoryError> {
        let listed: BTreeSet<&str> = self.nodes.iter().map(|n| n.name.as_str()).collect();
        let known: BTreeSet<&str> = cluster.iter().map(String::as_str).collect();
        let missing: Vec<&str> = known.difference(&listed).copied().collect();
        let unknown: Vec<&str> = listed.difference(&known).copied().collect();
        if let Some(i) = self.nodes.iter().position(|n| unknown.contains(&n.name.as_str())) {
            return Err(InventoryError::Invalid {
                file: file.to_owned(),
                key: format!("nodes[{i}].name"),
                message: format!(
                    "{:?} is not a node of the cluster (it has {}); use the names `kubectl get nodes` prints",
                    self.nodes[i].name,
                    cluster.join(", ")
                ),
            });
        }
        if !missing.is_empty() {
            return Err(InventoryError::Invalid {
                file: file.to_owned(),
                key: "nodes".into(),
                message: format!(
                    "the cluster has node(s) {} that the inventory does not list; every node must be \
                     rotated (one left out would keep only the old CA), so add a [[nodes]] entry for each",
                    missing.join(", ")
                ),
            });
        }
        Ok(())
    }

    /// Nodes that are not control planes, in file order.
    pub fn workers(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|n| !n.is_control_plane())
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }
}

fn resolve(base: &Path, path: &Path) -> PathBuf {
    if let Ok(rest) = path.strip_prefix("~")
        && let Some(home) = std::env::var_os("HOME")
    {
        return PathBuf::from(home).join(rest);
    }
    if path.is_absolute() { path.to_owned() } else { base.join(path) }
}

fn readable(path: &Path) -> Result<(), String> {
    std::fs::File::open(path).map(drop).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

fn is_host_name(s: &str) -> bool {
    s.len() <= 253
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            for f in ["admin.conf", "id_ed25519", "known_hosts"] {
                std::fs::write(dir.path().join(f), "x").unwrap();
            }
            Fixture { dir }
        }

        fn parse(&self, text: &str) -> Result<Inventory, InventoryError> {
            Inventory::parse(text, Path::new("cluster.toml"), self.dir.path())
        }
    }

    const GOOD: &str = r#"
[cluster]
name = "prod-eu1"
kubeconfig = "admin.conf"
api_endpoint = "https://10.0.0.10:6443"

[ssh]
user = "root"
identity = "id_ed25519"
known_hosts = "known_hosts"
sudo = false
concurrency = 10

[[nodes]]
name = "cp-1"
address = "10.0.0.11"
roles = ["control-plane"]

[[nodes]]
name = "w-1"
address = "10.0.0.21"
roles = ["worker"]

[rotation]
new_ca = "generate"
key_algorithm = "same-as-old"
validity_days = 3650
max_unavailable_workers = 1
"#;

    fn err(f: &Fixture, text: &str) -> String {
        f.parse(text).unwrap_err().to_string()
    }

    #[test]
    fn the_brief_example_parses_with_paths_resolved() {
        let f = Fixture::new();
        let inv = f.parse(GOOD).unwrap();
        assert_eq!(inv.cluster.kubeconfig, f.dir.path().join("admin.conf"));
        assert_eq!(inv.ssh.identity, f.dir.path().join("id_ed25519"));
        assert!(inv.ssh.strict_host_key_checking, "strict by default");
        assert_eq!(inv.control_planes().count(), 1);
        assert_eq!(inv.workers().map(|n| n.name.as_str()).collect::<Vec<_>>(), ["w-1"]);
        assert_eq!(inv.nodes[0].port, 22);
        assert_eq!(inv.rotation.new_ca, NewCa::Generate(GenerateWord::Generate));
    }

    #[test]
    fn the_restart_timeout_defaults_to_three_minutes_and_zero_is_refused() {
        let f = Fixture::new();
        assert_eq!(f.parse(GOOD).unwrap().rotation.restart_timeout_secs, 180);
        let text =
            GOOD.replace("validity_days = 3650", "validity_days = 3650\nrestart_timeout_secs = 20");
        assert_eq!(f.parse(&text).unwrap().rotation.restart_timeout_secs, 20);
        let text =
            GOOD.replace("validity_days = 3650", "validity_days = 3650\nrestart_timeout_secs = 0");
        let e = err(&f, &text);
        assert!(e.contains("rotation.restart_timeout_secs") && e.contains("cluster.toml"), "{e}");
    }

    #[test]
    fn nodes_must_be_the_clusters_every_one_named() {
        let f = Fixture::new();
        let inv = f.parse(GOOD).unwrap();
        let file = Path::new("cluster.toml");
        let names = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        inv.check_nodes_against(file, &names(&["w-1", "cp-1"])).unwrap();
        // A node of the cluster that the inventory leaves out.
        let e =
            inv.check_nodes_against(file, &names(&["cp-1", "w-1", "w-2"])).unwrap_err().to_string();
        assert!(e.contains("cluster.toml") && e.contains("`nodes`") && e.contains("w-2"), "{e}");
        // An inventory node the cluster does not have (a typo).
        let e = inv.check_nodes_against(file, &names(&["cp-1", "w-01"])).unwrap_err().to_string();
        assert!(e.contains("nodes[1].name") && e.contains("\"w-1\"") && e.contains("w-01"), "{e}");
    }

    #[test]
    fn an_unknown_key_is_named() {
        let f = Fixture::new();
        let text = GOOD.replace("max_unavailable_workers = 1", "max_unavailble_workers = 1");
        let e = err(&f, &text);
        assert!(e.contains("max_unavailble_workers") && e.contains("cluster.toml"), "{e}");
    }

    #[test]
    fn a_missing_node_address_is_named() {
        let f = Fixture::new();
        let e = err(&f, &GOOD.replace("address = \"10.0.0.21\"\n", ""));
        assert!(e.contains("address"), "{e}");
    }

    #[test]
    fn a_duplicate_node_is_named() {
        let f = Fixture::new();
        let e = err(&f, &GOOD.replace("name = \"w-1\"", "name = \"cp-1\""));
        assert!(e.contains("nodes[1].name") && e.contains("duplicate node \"cp-1\""), "{e}");
    }

    #[test]
    fn no_control_plane_is_refused() {
        let f = Fixture::new();
        let e = err(&f, &GOOD.replace("roles = [\"control-plane\"]", "roles = [\"worker\"]"));
        assert!(e.contains("control-plane"), "{e}");
    }

    #[test]
    fn an_unknown_role_is_named() {
        let f = Fixture::new();
        let e = err(&f, &GOOD.replace("roles = [\"worker\"]", "roles = [\"master\"]"));
        assert!(e.contains("master"), "{e}");
    }

    #[test]
    fn an_unreadable_identity_file_is_named() {
        let f = Fixture::new();
        let e = err(&f, &GOOD.replace("identity = \"id_ed25519\"", "identity = \"nope/id_rsa\""));
        assert!(e.contains("ssh.identity") && e.contains("nope/id_rsa"), "{e}");
    }

    #[test]
    fn known_hosts_is_required_only_when_strict() {
        let f = Fixture::new();
        let missing = GOOD.replace("known_hosts = \"known_hosts\"", "known_hosts = \"absent\"");
        assert!(err(&f, &missing).contains("ssh.known_hosts"));
        let lax = missing.replace("sudo = false", "sudo = false\nstrict_host_key_checking = false");
        assert!(!f.parse(&lax).unwrap().ssh.strict_host_key_checking);
    }

    #[test]
    fn bad_values_are_named() {
        let f = Fixture::new();
        for (from, to, key) in [
            (
                "key_algorithm = \"same-as-old\"",
                "key_algorithm = \"dsa\"",
                "rotation.key_algorithm",
            ),
            ("validity_days = 3650", "validity_days = 0", "rotation.validity_days"),
            (
                "max_unavailable_workers = 1",
                "max_unavailable_workers = 0",
                "rotation.max_unavailable_workers",
            ),
            ("concurrency = 10", "concurrency = 0", "ssh.concurrency"),
            ("\"https://10.0.0.10:6443\"", "\"10.0.0.10:6443\"", "cluster.api_endpoint"),
            ("address = \"10.0.0.21\"", "address = \"not an address!\"", "nodes[1].address"),
            ("address = \"10.0.0.21\"", "address = \"10.0.0.11\"", "nodes[1].address"),
            (
                "new_ca = \"generate\"",
                "new_ca = { cert = \"ca.crt\", key = \"ca.key\" }",
                "rotation.new_ca.cert",
            ),
        ] {
            let e = err(&f, &GOOD.replace(from, to));
            assert!(e.contains(key), "{to}: {e}");
        }
    }

    #[test]
    fn malformed_toml_is_reported_with_the_file() {
        let f = Fixture::new();
        let e = err(&f, "[cluster\nname = 1");
        assert!(e.starts_with("cluster.toml:"), "{e}");
    }
}
