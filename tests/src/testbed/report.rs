//! `kubeca-testbed report`: counts handshake outcomes per edge from DIR/handshakes.jsonl.
//!
//! Every line of the trust monitor is one connection attempt: `time`, `client`, `server`,
//! `purpose`, `outcome`. The report counts outcomes per edge (client, server, purpose) and in
//! total. A `refused` or `timeout` while one component behind the load balancer restarts is not
//! an outage; a trust failure is (`tls-*`, or `unauthorized`: a 401 after the handshake), and
//! makes the report fail (exit 1).

use std::collections::BTreeMap;
use std::fs;
use std::io::BufRead;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// One line of DIR/handshakes.jsonl (fields the report uses).
#[derive(Debug, Clone, Deserialize)]
pub struct Handshake {
    /// When the attempt happened (RFC 3339).
    pub time: String,
    /// Who connected, e.g. `kubelet@w-1`.
    pub client: String,
    /// Who was connected to, e.g. `kube-apiserver@cp-2` or `lb`.
    pub server: String,
    /// What for, e.g. `kubelet->apiserver`.
    pub purpose: String,
    /// `ok`, `tls-untrusted-server`, `tls-bad-client-cert`, `refused` or `timeout`.
    pub outcome: String,
}

/// Outcome counts of one edge.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Edge {
    /// The connecting component.
    pub client: String,
    /// The component connected to.
    pub server: String,
    /// The purpose of the connection.
    pub purpose: String,
    /// Outcome → count.
    pub outcomes: BTreeMap<String, u64>,
}

/// The whole report.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Report {
    /// Lines counted.
    pub total: u64,
    /// Outcome → count over every edge.
    pub outcomes: BTreeMap<String, u64>,
    /// Attempts that failed on trust (`tls-*`, `unauthorized`): each one is an outage.
    pub trust_failures: u64,
    /// Lines that could not be read (never counted as success).
    pub unreadable_lines: u64,
    /// Per edge, sorted by client, server, purpose.
    pub edges: Vec<Edge>,
}

/// Counts the monitor's lines in `DIR/handshakes.jsonl` at or after `since` (all when None).
pub fn build(dir: &Path, since: Option<jiff::Timestamp>) -> Result<Report> {
    let path = dir.join("handshakes.jsonl");
    let mut report = Report {
        total: 0,
        outcomes: BTreeMap::new(),
        trust_failures: 0,
        unreadable_lines: 0,
        edges: Vec::new(),
    };
    let file = match fs::File::open(&path) {
        Ok(f) => f,
        // No line yet: nothing connected, nothing failed.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(report),
        Err(e) => return Err(e).with_context(|| format!("opening {}", path.display())),
    };
    let mut edges: BTreeMap<(String, String, String), BTreeMap<String, u64>> = BTreeMap::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let Ok(h) = serde_json::from_str::<Handshake>(&line) else {
            report.unreadable_lines += 1;
            continue;
        };
        if let Some(since) = since {
            match h.time.parse::<jiff::Timestamp>() {
                Ok(t) if t < since => continue,
                Ok(_) => {}
                Err(_) => {
                    report.unreadable_lines += 1;
                    continue;
                }
            }
        }
        report.total += 1;
        if super::monitor::is_trust_failure(&h.outcome) {
            report.trust_failures += 1;
        }
        *report.outcomes.entry(h.outcome.clone()).or_default() += 1;
        *edges.entry((h.client, h.server, h.purpose)).or_default().entry(h.outcome).or_default() +=
            1;
    }
    report.edges = edges
        .into_iter()
        .map(|((client, server, purpose), outcomes)| Edge { client, server, purpose, outcomes })
        .collect();
    Ok(report)
}

/// The report as a table for people.
pub fn render_text(r: &Report) -> String {
    let mut s = String::new();
    let w_client = r.edges.iter().map(|e| e.client.len()).max().unwrap_or(6).max(6);
    let w_server = r.edges.iter().map(|e| e.server.len()).max().unwrap_or(6).max(6);
    let w_purpose = r.edges.iter().map(|e| e.purpose.len()).max().unwrap_or(7).max(7);
    s.push_str(&format!(
        "{:w_client$}  {:w_server$}  {:w_purpose$}  outcomes\n",
        "CLIENT", "SERVER", "PURPOSE"
    ));
    for e in &r.edges {
        let outcomes: Vec<String> = e.outcomes.iter().map(|(o, n)| format!("{o}={n}")).collect();
        s.push_str(&format!(
            "{:w_client$}  {:w_server$}  {:w_purpose$}  {}\n",
            e.client,
            e.server,
            e.purpose,
            outcomes.join(" ")
        ));
    }
    let totals: Vec<String> = r.outcomes.iter().map(|(o, n)| format!("{o}={n}")).collect();
    s.push_str(&format!("\n{} handshakes: {}\n", r.total, totals.join(" ")));
    if r.unreadable_lines > 0 {
        s.push_str(&format!("{} unreadable lines\n", r.unreadable_lines));
    }
    if r.trust_failures > 0 {
        s.push_str(&format!("OUTAGE: {} trust failures\n", r.trust_failures));
    } else {
        s.push_str("no trust failure\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(client: &str, outcome: &str, time: &str) -> String {
        format!(
            r#"{{"time":"{time}","client":"{client}","server":"kube-apiserver@cp-1","purpose":"kubelet->apiserver","outcome":"{outcome}"}}"#
        )
    }

    #[test]
    fn counts_per_edge_and_flags_trust_failures() {
        let dir = tempfile::tempdir().unwrap();
        let lines = [
            line("kubelet@w-1", "ok", "2026-11-28T15:00:00Z"),
            line("kubelet@w-1", "ok", "2026-11-28T15:00:01Z"),
            line("kubelet@w-1", "refused", "2026-11-28T15:00:02Z"),
            line("kubelet@w-2", "tls-untrusted-server", "2026-11-28T15:00:03Z"),
            line("kubelet@w-2", "unauthorized", "2026-11-28T15:00:04Z"),
            "not json".to_string(),
        ];
        fs::write(dir.path().join("handshakes.jsonl"), lines.join("\n")).unwrap();
        let r = build(dir.path(), None).unwrap();
        assert_eq!(r.total, 5);
        assert_eq!(r.trust_failures, 2);
        assert_eq!(r.unreadable_lines, 1);
        assert_eq!(r.edges.len(), 2);
        assert_eq!(r.edges[0].outcomes.get("ok"), Some(&2));
        assert_eq!(r.edges[0].outcomes.get("refused"), Some(&1));
        assert!(render_text(&r).contains("OUTAGE: 2 trust failures"));

        let later = build(dir.path(), Some("2026-11-28T15:00:02Z".parse().unwrap())).unwrap();
        assert_eq!((later.total, later.trust_failures), (3, 2));
    }

    #[test]
    fn no_file_is_an_empty_clean_report() {
        let dir = tempfile::tempdir().unwrap();
        let r = build(dir.path(), None).unwrap();
        assert_eq!((r.total, r.trust_failures), (0, 0));
    }
}
