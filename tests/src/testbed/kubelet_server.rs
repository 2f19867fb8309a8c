//! What the kubelet's :10250 does beyond TLS: bearer tokens checked by TokenReview, and the
//! resource metrics that metrics-server scrapes.
//!
//! - Webhook token authentication (`authentication.webhook.enabled`, true by default and in
//!   kubeadm's config): `cmd/kubelet/app/auth.go` `BuildAuthn` hands the token to the
//!   apiserver as an `authentication.k8s.io/v1` TokenReview
//!   (`plugin/pkg/authenticator/token/webhook/webhook.go`) behind a cache that keeps both
//!   answers for `authentication.webhook.cacheTTL`, 2 minutes by default
//!   (`pkg/kubelet/apis/config/v1beta1/defaults.go`;
//!   `staging/src/k8s.io/apiserver/pkg/authentication/authenticatorfactory/delegating.go`:
//!   `cache.New(tokenAuth, false, c.CacheTTL, c.CacheTTL)`); a review that fails to reach the
//!   apiserver is an error, not cached. Authorization (the SubjectAccessReview of
//!   `authorization.mode: Webhook`, `nodes/metrics` for `/metrics/resource`,
//!   `pkg/kubelet/server/auth.go`) is not simulated: an authenticated user may do everything.
//! - `/metrics/resource` (`pkg/kubelet/metrics/collectors/resource_metrics.go`): the node's
//!   cumulative CPU time in core-seconds and its working set in bytes, each with the time it
//!   was measured in milliseconds, as metrics-server's decoder reads them
//!   (`kubernetes-sigs/metrics-server` `pkg/scraper/client/resource/decode.go`). Upstream
//!   measures the node's root cgroup through cAdvisor; here the node is its processes (every
//!   process in the node's network namespace), their CPU time and resident memory from
//!   `/proc`. Container series are not served (metrics-server then has no pod metrics).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::json;

use super::client::{Client, Credentials};

/// `authentication.webhook.cacheTTL` when the configuration leaves it zero.
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(120);

/// Who a token belongs to, as a TokenReview said.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenUser {
    /// `status.user.username`.
    pub name: String,
}

/// A token's digest → when it was reviewed and what the review said.
type Reviewed = HashMap<Vec<u8>, (Instant, Option<TokenUser>)>;

/// The kubelet's webhook token authenticator: TokenReviews through its own client (the
/// kubeconfig read at each review, so a renewed client certificate is used), answers cached.
pub struct TokenReviewer {
    kubeconfig: PathBuf,
    me: String,
    ttl: Duration,
    /// Keyed by the token's SHA-256, never the token.
    cache: Mutex<Reviewed>,
}

impl TokenReviewer {
    /// A reviewer for `node` over `kubeconfig`, keeping answers for `ttl`.
    pub fn new(node: &str, kubeconfig: PathBuf, ttl: Duration) -> TokenReviewer {
        TokenReviewer {
            kubeconfig,
            me: format!("kubelet@{node}"),
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// Who `token` belongs to; None when the apiserver says it does not authenticate; an
    /// error when the review could not be made.
    pub async fn review(&self, token: &str) -> Result<Option<TokenUser>> {
        let key = ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref().to_vec();
        {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((at, said)) = cache.get(&key)
                && at.elapsed() < self.ttl
            {
                return Ok(said.clone());
            }
        }
        let creds = Credentials::from_kubeconfig(&self.kubeconfig)?;
        let client = Client::new(&creds, &self.me, "kubelet->apiserver")?;
        let review = json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": token}
        });
        let r = client
            .request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", None, Some(&review))
            .await?;
        if !(200..300).contains(&r.status) {
            bail!("TokenReview: HTTP {}: {}", r.status, r.body["message"].as_str().unwrap_or(""));
        }
        let said = (r.body["status"]["authenticated"] == true).then(|| TokenUser {
            name: r.body["status"]["user"]["username"].as_str().unwrap_or_default().to_string(),
        });
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|_, (at, _)| at.elapsed() < self.ttl);
        cache.insert(key, (Instant::now(), said.clone()));
        Ok(said)
    }
}

/// The node's usage now: CPU seconds used by its processes and their resident bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Usage {
    /// Cumulative CPU time, user and system, in core-seconds.
    pub cpu_seconds: f64,
    /// Resident memory in bytes.
    pub memory_bytes: u64,
}

/// The usage of every process in this process's network namespace (the node's).
pub fn node_usage() -> Result<Usage> {
    let me = std::fs::metadata("/proc/self/ns/net").context("reading /proc/self/ns/net")?.ino();
    let ticks = rustix::param::clock_ticks_per_second() as f64;
    let page = rustix::param::page_size() as u64;
    let mut usage = Usage { cpu_seconds: 0.0, memory_bytes: 0 };
    for e in std::fs::read_dir("/proc").context("reading /proc")?.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let same = std::fs::metadata(format!("/proc/{pid}/ns/net")).is_ok_and(|m| m.ino() == me);
        if !same {
            continue;
        }
        // Gone between the listing and the read: it no longer uses anything.
        let Some((cpu, rss)) = process_usage(pid) else { continue };
        usage.cpu_seconds += cpu as f64 / ticks;
        usage.memory_bytes += rss * page;
    }
    Ok(usage)
}

/// A process's utime + stime in clock ticks (fields 14 and 15 of `/proc/<pid>/stat`) and its
/// resident pages (field 2 of `/proc/<pid>/statm`).
fn process_usage(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let cpu = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let rss = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some((cpu, rss))
}

/// The body of `/metrics/resource` for `usage` measured at `at_ms` (Unix milliseconds), in the
/// Prometheus text format the kubelet writes.
pub fn resource_metrics(usage: Usage, at_ms: i64) -> String {
    format!(
        "# HELP node_cpu_usage_seconds_total [STABLE] Cumulative cpu time consumed by the node in core-seconds\n\
         # TYPE node_cpu_usage_seconds_total counter\n\
         node_cpu_usage_seconds_total {} {at_ms}\n\
         # HELP node_memory_working_set_bytes [STABLE] Current working set of the node in bytes\n\
         # TYPE node_memory_working_set_bytes gauge\n\
         node_memory_working_set_bytes {} {at_ms}\n\
         # HELP scrape_error [ALPHA] 1 if there was an error while getting container metrics, 0 otherwise\n\
         # TYPE scrape_error gauge\n\
         scrape_error 0\n",
        usage.cpu_seconds, usage.memory_bytes
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_namespace_uses_some_cpu_and_memory() {
        // Burn a little CPU so that the figure cannot be zero on a fast machine.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert_ne!(x, 1);
        let u = node_usage().unwrap();
        assert!(u.cpu_seconds > 0.0, "{u:?}");
        assert!(u.memory_bytes > 0, "{u:?}");
    }

    #[test]
    fn the_metrics_carry_both_node_series_with_their_time() {
        let text = resource_metrics(Usage { cpu_seconds: 12.5, memory_bytes: 1024 }, 1_700_000);
        assert!(text.contains("\nnode_cpu_usage_seconds_total 12.5 1700000\n"), "{text}");
        assert!(text.contains("\nnode_memory_working_set_bytes 1024 1700000\n"), "{text}");
    }
}
