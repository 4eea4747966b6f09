//! What the API server fills in on write: the parts tests and clients can observe.
//! Service cluster IPs and NodePorts (with the real "already allocated" error), namespace
//! labels, replica counts. Everything else is stored as sent.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::kinds::Kind;
use crate::store::{ApiError, State, kind};

pub const NODE_PORT_RANGE: std::ops::RangeInclusive<u64> = 30000..=32767;

pub fn apply_defaults(
    state: &mut State,
    k: &Kind,
    old: Option<&Value>,
    obj: &mut Value,
) -> Result<(), ApiError> {
    match k.kind {
        "Namespace" => {
            let name = obj["metadata"]["name"].clone();
            if !obj["metadata"].get("labels").is_some_and(Value::is_object) {
                obj["metadata"]["labels"] = json!({});
            }
            obj["metadata"]["labels"]["kubernetes.io/metadata.name"] = name;
            if obj.get("status").is_none() {
                obj["status"] = json!({"phase": "Active"});
            }
        }
        "Deployment" | "StatefulSet"
            if obj.get("spec").is_some_and(Value::is_object) && obj["spec"].get("replicas").is_none() =>
        {
            obj["spec"]["replicas"] = json!(1);
        }
        "Pod" if obj.get("status").is_none() => {
            obj["status"] = json!({"phase": "Pending"});
        }
        "Service" => service(state, old, obj)?,
        _ => {}
    }
    Ok(())
}

fn service(state: &mut State, old: Option<&Value>, obj: &mut Value) -> Result<(), ApiError> {
    let invalid = |m: String| ApiError::new(422, "Invalid", m);
    if !obj.get("spec").is_some_and(Value::is_object) {
        obj["spec"] = json!({});
    }
    let ty = obj["spec"]["type"].as_str().unwrap_or("ClusterIP").to_string();
    obj["spec"]["type"] = json!(ty);
    let this = (
        obj["metadata"]["namespace"].as_str().unwrap_or_default().to_string(),
        obj["metadata"]["name"].as_str().unwrap_or_default().to_string(),
    );
    let others: Vec<Value> = state
        .list(kind("v1", "Service"), None)
        .into_iter()
        .filter(|s| {
            (
                s["metadata"]["namespace"].as_str().unwrap_or_default(),
                s["metadata"]["name"].as_str().unwrap_or_default(),
            ) != (this.0.as_str(), this.1.as_str())
        })
        .cloned()
        .collect();

    // cluster IP: kept across updates, allocated once (microk8s's service range)
    let old_ip = old.and_then(|o| o["spec"]["clusterIP"].as_str()).map(str::to_string);
    let ip = match (obj["spec"]["clusterIP"].as_str(), old_ip) {
        (Some(ip), Some(old)) if ip != old && !ip.is_empty() => {
            return Err(invalid(format!("spec.clusterIP: Invalid value: \"{ip}\": field is immutable")));
        }
        (Some(ip), _) if !ip.is_empty() => ip.to_string(),
        (_, Some(old)) => old,
        _ => {
            let used: BTreeSet<String> =
                others.iter().filter_map(|s| s["spec"]["clusterIP"].as_str().map(str::to_string)).collect();
            (1..=65_000u32)
                .map(|n| format!("10.152.{}.{}", 183 + n / 254, n % 254 + 1))
                .find(|ip| !used.contains(ip))
                .unwrap_or_default()
        }
    };
    obj["spec"]["clusterIP"] = json!(ip);
    obj["spec"]["clusterIPs"] = json!([ip]);

    let used_ports: BTreeSet<u64> = others
        .iter()
        .flat_map(|s| s["spec"]["ports"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["nodePort"].as_u64())
        .collect();
    let old_ports = old.and_then(|o| o["spec"]["ports"].as_array().cloned()).unwrap_or_default();
    let wants_node_ports = ty == "NodePort" || ty == "LoadBalancer";
    let mut mine: BTreeSet<u64> = BTreeSet::new();
    if let Some(ports) = obj["spec"]["ports"].as_array_mut() {
        for (i, p) in ports.iter_mut().enumerate() {
            if p.get("protocol").is_none() {
                p["protocol"] = json!("TCP");
            }
            if p.get("targetPort").is_none() {
                p["targetPort"] = p["port"].clone();
            }
            match p["nodePort"].as_u64() {
                Some(np) if !wants_node_ports => {
                    return Err(invalid(format!(
                        "spec.ports[{i}].nodePort: Forbidden: may not be used when `type` is '{ty}' ({np})"
                    )));
                }
                Some(np) => {
                    if !NODE_PORT_RANGE.contains(&np) {
                        return Err(invalid(format!(
                            "spec.ports[{i}].nodePort: Invalid value: {np}: provided port is not in the valid range. The range of valid ports is 30000-32767"
                        )));
                    }
                    if used_ports.contains(&np) || !mine.insert(np) {
                        return Err(invalid(format!(
                            "spec.ports[{i}].nodePort: Invalid value: {np}: provided port is already allocated"
                        )));
                    }
                }
                None if wants_node_ports => {
                    let same =
                        old_ports.iter().find(|o| o["port"] == p["port"] && o["protocol"] == p["protocol"]);
                    let np = same
                        .and_then(|o| o["nodePort"].as_u64())
                        .filter(|np| !used_ports.contains(np) && !mine.contains(np))
                        .or_else(|| {
                            NODE_PORT_RANGE.clone().find(|np| !used_ports.contains(np) && !mine.contains(np))
                        });
                    let Some(np) = np else {
                        return Err(invalid("spec.ports: the NodePort range is exhausted".to_string()));
                    };
                    mine.insert(np);
                    p["nodePort"] = json!(np);
                }
                None => {}
            }
        }
    }
    Ok(())
}
