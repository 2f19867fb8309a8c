//! The trust monitor's writer: one JSON line per connection attempt in DIR/handshakes.jsonl.
//!
//! Every component appends with O_APPEND in a single write(2), so lines from concurrent
//! processes never interleave. Without KUBECA_TESTBED_DIR (a component run by hand) nothing is
//! recorded.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;

/// The outcome of one connection attempt, as the report counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Handshake completed and both sides accepted each other.
    Ok,
    /// The client did not trust the server's certificate.
    TlsUntrustedServer,
    /// The server rejected (or did not get) the client's certificate in the handshake.
    TlsBadClientCert,
    /// The handshake completed and the server answered HTTP 401: the client's certificate (or
    /// token) did not authenticate. Go servers check client certificates per request, after the
    /// handshake (see tls.rs, `Serving`), so this is how a real apiserver or kubelet refuses a
    /// client certificate of a CA it does not load.
    Unauthorized,
    /// Nothing listening.
    Refused,
    /// No answer in time.
    Timeout,
}

impl Outcome {
    /// The outcome's name in handshakes.jsonl.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::TlsUntrustedServer => "tls-untrusted-server",
            Outcome::TlsBadClientCert => "tls-bad-client-cert",
            Outcome::Unauthorized => "unauthorized",
            Outcome::Refused => "refused",
            Outcome::Timeout => "timeout",
        }
    }
}

/// Whether an outcome name of handshakes.jsonl is a trust failure (an outage of its edge):
/// a handshake refused on trust either way, or a 401 after it.
pub fn is_trust_failure(outcome: &str) -> bool {
    outcome.starts_with("tls-") || outcome == Outcome::Unauthorized.as_str()
}

/// The node this process runs on (KUBECA_TESTBED_NODE), or "host".
pub fn node() -> String {
    std::env::var("KUBECA_TESTBED_NODE").unwrap_or_else(|_| "host".into())
}

/// The monitor's name of the node at `ip` (cp-i or w-j, from DIR/inventory.toml), else the ip:
/// how a server names a client it knows only by its address.
pub fn node_of(ip: &str) -> String {
    let Some(dir) = std::env::var_os("KUBECA_TESTBED_DIR") else { return ip.to_string() };
    let inv = std::fs::read_to_string(std::path::Path::new(&dir).join("inventory.toml"))
        .unwrap_or_default();
    let mut name = None;
    for l in inv.lines() {
        if let Some(v) = l.strip_prefix("name = ") {
            name = Some(v.trim_matches('"').to_string());
        } else if let Some(v) = l.strip_prefix("address = ")
            && v.trim_matches('"') == ip
            && let Some(n) = name.take()
        {
            return n;
        }
    }
    ip.to_string()
}

/// `<component>@<node>` for this process.
pub fn me(component: &str) -> String {
    format!("{component}@{}", node())
}

fn journal() -> Option<PathBuf> {
    std::env::var_os("KUBECA_TESTBED_DIR").map(|d| PathBuf::from(d).join("handshakes.jsonl"))
}

/// The line recorded for one attempt (without the newline).
pub fn line(client: &str, server: &str, purpose: &str, outcome: Outcome) -> String {
    serde_json::json!({
        "time": jiff::Timestamp::now().to_string(),
        "client": client,
        "server": server,
        "purpose": purpose,
        "outcome": outcome.as_str(),
    })
    .to_string()
}

/// Appends one attempt to DIR/handshakes.jsonl; a failure to write is logged, never fatal
/// (the component's own work matters more than its observation).
pub fn record(client: &str, server: &str, purpose: &str, outcome: Outcome) {
    let Some(path) = journal() else { return };
    let mut l = line(client, server, purpose, outcome);
    l.push('\n');
    let r = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(l.as_bytes()));
    if let Err(e) = r {
        eprintln!("monitor: cannot append to {}: {e}", path.display());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_has_the_agreed_fields() {
        let l = line("kubelet@w-1", "lb", "kubelet->apiserver", Outcome::TlsUntrustedServer);
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["client"], "kubelet@w-1");
        assert_eq!(v["server"], "lb");
        assert_eq!(v["purpose"], "kubelet->apiserver");
        assert_eq!(v["outcome"], "tls-untrusted-server");
        assert!(v["time"].as_str().unwrap().parse::<jiff::Timestamp>().is_ok());
    }
}
