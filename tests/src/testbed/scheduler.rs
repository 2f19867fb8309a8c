//! The simulated kube-scheduler: scheduler.conf read once at start, leader election on a Lease, pending pods bound to Ready nodes.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use serde_json::{Value, json};

use super::client::{Client, Credentials};
use super::component::{leader_lock, parse_flags, require, start_healthz};
use super::monitor;

/// `kubeca-testbed kube-scheduler ARGS`.
pub fn main(args: Vec<String>) -> ExitCode {
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{} kube-scheduler: {e:#}", jiff::Timestamp::now());
            ExitCode::FAILURE
        }
    }
}

fn run(args: &[String]) -> Result<()> {
    let flags = parse_flags(args);
    let kubeconfig = require(&flags, "kubeconfig")
        .map_err(|e| anyhow!("{e} (kubeadm: /etc/kubernetes/scheduler.conf)"))?;
    let creds = Credentials::from_kubeconfig(std::path::Path::new(kubeconfig))?;
    let client = Client::new(&creds, &monitor::me("kube-scheduler"), "scheduler->apiserver")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the scheduler's runtime")?;
    runtime.block_on(async move {
        // The secure port (10259): /healthz, what kubeadm's probe and kubeca look at.
        start_healthz(&flags, "kube-scheduler", 10259)?;
        let me = monitor::node();
        loop {
            // The Lease kube-system/kube-scheduler: kube-scheduler's default lock since 1.20
            // (endpointsleases from 1.17), `LeaderElection.ResourceLock = "leases"` in
            // `SetDefaults_KubeSchedulerConfiguration`, pkg/scheduler/apis/config/v1/defaults.go.
            match leader_lock(&client, "kube-scheduler", &me).await {
                Ok(true) => {
                    if let Err(e) = schedule(&client).await {
                        eprintln!("{} kube-scheduler: {e:#}", jiff::Timestamp::now());
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    eprintln!("{} kube-scheduler: leader election: {e:#}", jiff::Timestamp::now())
                }
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}

/// True when the node's Ready condition is True.
pub fn node_ready(node: &Value) -> bool {
    node["status"]["conditions"]
        .as_array()
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

/// The Ready node with the fewest pods, or None when no node is Ready.
pub fn pick(nodes: &[Value], pods: &[Value]) -> Option<String> {
    let mut load: HashMap<&str, usize> = HashMap::new();
    for p in pods {
        if let Some(n) = p["spec"]["nodeName"].as_str() {
            *load.entry(n).or_default() += 1;
        }
    }
    nodes
        .iter()
        .filter(|n| node_ready(n))
        .filter_map(|n| n["metadata"]["name"].as_str())
        .min_by_key(|n| (load.get(n).copied().unwrap_or(0), n.to_string()))
        .map(str::to_string)
}

async fn schedule(client: &Client) -> Result<()> {
    let mut pods = client.list("/api/v1/pods").await?;
    if pods.iter().all(|p| p["spec"]["nodeName"].is_string()) {
        return Ok(());
    }
    let nodes = client.list("/api/v1/nodes").await?;
    for i in 0..pods.len() {
        if pods[i]["spec"]["nodeName"].is_string() {
            continue;
        }
        let Some(node) = pick(&nodes, &pods) else { return Ok(()) };
        let (Some(ns), Some(name)) =
            (pods[i]["metadata"]["namespace"].as_str(), pods[i]["metadata"]["name"].as_str())
        else {
            continue;
        };
        let path = format!("/api/v1/namespaces/{ns}/pods/{name}");
        client.patch(&path, &json!({"spec": {"nodeName": node}})).await?;
        pods[i]["spec"]["nodeName"] = Value::String(node);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_pods_go_to_the_least_loaded_ready_node() {
        let ready = |n: &str, s: &str| json!({"metadata": {"name": n}, "status": {"conditions": [{"type": "Ready", "status": s}]}});
        let nodes = vec![ready("w-1", "True"), ready("w-2", "True"), ready("w-3", "False")];
        let pods = vec![json!({"spec": {"nodeName": "w-1"}}), json!({"spec": {}})];
        assert_eq!(pick(&nodes, &pods).as_deref(), Some("w-2"));
        assert_eq!(pick(&nodes[2..], &pods), None);
    }
}
