//! The apiserver's storage: the real etcd through its v3 JSON gateway, over mutual TLS, with create and compare-and-swap transactions.

use std::collections::HashMap;
use std::path::PathBuf;

use anyhow::{Context, Result};
use base64::Engine;
use serde_json::{Value, json};

use super::B64;
use super::peers::Peer;
use crate::testbed::component::require;
use crate::testbed::{monitor, tls};

/// The real etcd through its JSON gateway, over mutual TLS.
#[derive(Clone)]
pub struct Etcd {
    servers: Vec<Peer>,
}

impl Etcd {
    pub(super) fn new(flags: &HashMap<String, String>) -> Result<Etcd> {
        let get = |k: &str| require(flags, k);
        let ca_path = PathBuf::from(get("etcd-cafile")?);
        let ca =
            std::fs::read(&ca_path).with_context(|| format!("reading {}", ca_path.display()))?;
        let certs = tls::load_certs(&PathBuf::from(get("etcd-certfile")?))?;
        let key = tls::load_key(&PathBuf::from(get("etcd-keyfile")?))?;
        let cfg = tls::client_config(&ca, &ca_path.display().to_string(), Some((certs, key)))?;
        let servers = get("etcd-servers")?
            .split(',')
            .map(|s| {
                let ip = s.trim_start_matches("https://").split(':').next().unwrap_or("");
                Peer::new(
                    s,
                    cfg.clone(),
                    format!("etcd@{}", monitor::node_of(ip)),
                    "apiserver->etcd",
                )
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Etcd { servers })
    }

    async fn call(&self, op: &str, body: Value) -> Result<Value> {
        let mut last = None;
        for s in &self.servers {
            match s
                .request("POST", &format!("/v3/kv/{op}"), Some(body.to_string().into_bytes()), &[])
                .await
            {
                Ok((200, v)) => {
                    return serde_json::from_slice(&v).context("etcd's answer is not JSON");
                }
                Ok((st, v)) => {
                    last = Some(anyhow::anyhow!(
                        "etcd {op}: HTTP {st}: {}",
                        String::from_utf8_lossy(&v)
                    ))
                }
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| anyhow::anyhow!("no --etcd-servers")))
    }

    pub(super) async fn create(&self, key: &str, value: &Value) -> Result<bool> {
        let k = B64.encode(key);
        let v = self
            .call("txn", json!({"compare": [{"key": k, "result": "EQUAL", "target": "CREATE", "create_revision": "0"}],
                                "success": [{"request_put": {"key": k, "value": B64.encode(value.to_string())}}]}))
            .await?;
        Ok(v["succeeded"].as_bool().unwrap_or(false))
    }

    /// Replaces `old` by `new` only when the stored value is still `old` (optimistic
    /// concurrency, as resourceVersion gives the real apiserver).
    pub(super) async fn swap(&self, key: &str, old: &Value, new: &Value) -> Result<bool> {
        let k = B64.encode(key);
        let v = self
            .call("txn", json!({"compare": [{"key": k, "result": "EQUAL", "target": "VALUE", "value": B64.encode(old.to_string())}],
                                "success": [{"request_put": {"key": k, "value": B64.encode(new.to_string())}}]}))
            .await?;
        Ok(v["succeeded"].as_bool().unwrap_or(false))
    }

    pub(super) async fn get(&self, key: &str) -> Result<Option<Value>> {
        let v = self.call("range", json!({"key": B64.encode(key)})).await?;
        Ok(decode_kvs(&v).into_iter().next())
    }

    pub(super) async fn list(&self, prefix: &str) -> Result<Vec<Value>> {
        let mut end = prefix.as_bytes().to_vec();
        if let Some(last) = end.last_mut() {
            *last += 1;
        }
        let v = self
            .call("range", json!({"key": B64.encode(prefix), "range_end": B64.encode(end)}))
            .await?;
        Ok(decode_kvs(&v))
    }

    pub(super) async fn delete(&self, key: &str) -> Result<()> {
        self.call("deleterange", json!({"key": B64.encode(key)})).await.map(|_| ())
    }
}

fn decode_kvs(v: &Value) -> Vec<Value> {
    v["kvs"]
        .as_array()
        .map(|kvs| {
            kvs.iter()
                .filter_map(|kv| kv["value"].as_str())
                .filter_map(|s| B64.decode(s).ok())
                .filter_map(|b| serde_json::from_slice(&b).ok())
                .collect()
        })
        .unwrap_or_default()
}
