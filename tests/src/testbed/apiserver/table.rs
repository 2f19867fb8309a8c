//! The meta.k8s.io Tables kubectl asks for (`kubectl get` without `-o`): the columns of nodes, pods and every other kind.

use serde_json::{Value, json};

use super::kinds::Kind;
use super::objects::new_rv;

fn age(obj: &Value) -> String {
    let Some(t) = obj["metadata"]["creationTimestamp"]
        .as_str()
        .and_then(|s| s.parse::<jiff::Timestamp>().ok())
    else {
        return "<unknown>".into();
    };
    let s = jiff::Timestamp::now().as_second() - t.as_second();
    if s < 120 {
        format!("{s}s")
    } else if s < 7200 {
        format!("{}m", s / 60)
    } else {
        format!("{}h", s / 3600)
    }
}

/// A meta.k8s.io Table, as kubectl asks for.
pub(super) fn table(kind: &Kind, items: &[Value]) -> Value {
    let col = |n: &str| json!({"name": n, "type": "string", "format": "", "description": "", "priority": 0});
    let (cols, rows): (Vec<Value>, Vec<Value>) = match kind.resource {
        "nodes" => (
            vec![col("Name"), col("Status"), col("Roles"), col("Age"), col("Version")],
            items
                .iter()
                .map(|i| {
                    let ready = i["status"]["conditions"]
                        .as_array()
                        .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                        .map(|c| c["status"] == "True")
                        .unwrap_or(false);
                    let roles: Vec<&str> = i["metadata"]["labels"]
                        .as_object()
                        .map(|l| {
                            l.keys()
                                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                                .collect()
                        })
                        .unwrap_or_default();
                    let roles =
                        if roles.is_empty() { "<none>".to_string() } else { roles.join(",") };
                    let version =
                        i["status"]["nodeInfo"]["kubeletVersion"].as_str().unwrap_or("v1.31.0");
                    json!([
                        i["metadata"]["name"],
                        if ready { "Ready" } else { "NotReady" },
                        roles,
                        age(i),
                        version
                    ])
                })
                .collect(),
        ),
        "pods" => (
            vec![
                col("Name"),
                col("Ready"),
                col("Status"),
                col("Restarts"),
                col("Age"),
                col("Node"),
            ],
            items
                .iter()
                .map(|i| {
                    let phase = i["status"]["phase"].as_str().unwrap_or("Pending");
                    let n = i["spec"]["containers"].as_array().map(Vec::len).unwrap_or(1);
                    let ready = if phase == "Running" { n } else { 0 };
                    json!([
                        i["metadata"]["name"],
                        format!("{ready}/{n}"),
                        phase,
                        0,
                        age(i),
                        i["spec"]["nodeName"].as_str().unwrap_or("<none>")
                    ])
                })
                .collect(),
        ),
        _ => (
            vec![col("Name"), col("Age")],
            items.iter().map(|i| json!([i["metadata"]["name"], age(i)])).collect(),
        ),
    };
    let rows: Vec<Value> = rows
        .into_iter()
        .zip(items)
        .map(|(cells, obj)| {
            json!({"cells": cells, "object": {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}})
        })
        .collect();
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": {"resourceVersion": new_rv()}, "columnDefinitions": cols, "rows": rows})
}
