//! What the API server fills in on write: the parts tests and clients can observe.
//! Service cluster IPs and NodePorts (with the real "already allocated" error), namespace
//! labels, workload and pod spec defaults (restartPolicy, dnsPolicy, pull policy, update
//! strategies, Job selectors and labels, requests copied from limits).

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
            if obj.get("spec").is_none() {
                obj["spec"] = json!({"finalizers": ["kubernetes"]});
            }
            if obj.get("status").is_none() {
                obj["status"] = json!({"phase": "Active"});
            }
        }
        "Pod" => {
            if obj.get("status").is_none() {
                obj["status"] = json!({"phase": "Pending"});
            }
            if let Some(spec) = obj.get_mut("spec").filter(|s| s.is_object()) {
                pod_spec(spec, true);
            }
        }
        "Deployment" => {
            let spec = spec_of(obj);
            fill(spec, "replicas", json!(1));
            fill(spec, "revisionHistoryLimit", json!(10));
            fill(spec, "progressDeadlineSeconds", json!(600));
            fill(
                spec,
                "strategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}}),
            );
            template(spec);
        }
        "StatefulSet" => {
            let spec = spec_of(obj);
            fill(spec, "replicas", json!(1));
            fill(spec, "revisionHistoryLimit", json!(10));
            fill(spec, "podManagementPolicy", json!("OrderedReady"));
            fill(spec, "updateStrategy", json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}));
            fill(
                spec,
                "persistentVolumeClaimRetentionPolicy",
                json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
            );
            template(spec);
        }
        "DaemonSet" => {
            let spec = spec_of(obj);
            fill(spec, "revisionHistoryLimit", json!(10));
            fill(
                spec,
                "updateStrategy",
                json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}}),
            );
            template(spec);
        }
        "Job" => job(obj),
        "PersistentVolumeClaim" if old.is_none() => {
            // The DefaultStorageClass admission plugin: a claim that names no class gets
            // the default one (an explicit "" asks for none and keeps it).
            if obj.pointer("/spec/storageClassName").is_none_or(Value::is_null)
                && let Some(default) = default_storage_class(state)
            {
                spec_of(obj)["storageClassName"] = json!(default);
            }
            if obj.get("status").is_none() {
                obj["status"] = json!({"phase": "Pending"});
            }
        }
        "CronJob" => {
            let spec = spec_of(obj);
            fill(spec, "concurrencyPolicy", json!("Allow"));
            fill(spec, "suspend", json!(false));
            fill(spec, "successfulJobsHistoryLimit", json!(3));
            fill(spec, "failedJobsHistoryLimit", json!(1));
            if let Some(tpl) = spec.pointer_mut("/jobTemplate/spec/template/spec").filter(|s| s.is_object()) {
                pod_spec(tpl, false);
            }
        }
        "Service" => service(state, old, obj)?,
        _ => {}
    }
    Ok(())
}

fn spec_of(obj: &mut Value) -> &mut Value {
    if !obj.get("spec").is_some_and(Value::is_object) {
        obj["spec"] = json!({});
    }
    &mut obj["spec"]
}

fn fill(v: &mut Value, field: &str, default: Value) {
    if v.get(field).is_none_or(Value::is_null) {
        v[field] = default;
    }
}

fn template(spec: &mut Value) {
    if let Some(pod) = spec.pointer_mut("/template/spec").filter(|s| s.is_object()) {
        pod_spec(pod, false);
    }
}

/// Job defaults, and the selector the real server derives from the Job's uid (unless
/// `manualSelector`), with the labels that make the template match it.
fn job(obj: &mut Value) {
    let uid = obj.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default().to_string();
    let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default().to_string();
    let spec = spec_of(obj);
    fill(spec, "parallelism", json!(1));
    fill(spec, "completions", json!(1));
    fill(spec, "backoffLimit", json!(6));
    fill(spec, "completionMode", json!("NonIndexed"));
    fill(spec, "suspend", json!(false));
    fill(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
    let manual = spec.get("manualSelector") == Some(&json!(true));
    if !manual && !uid.is_empty() {
        fill(spec, "selector", json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}));
        if !spec.pointer("/template/metadata").is_some_and(Value::is_object) {
            spec["template"]["metadata"] = json!({});
        }
        let meta = &mut spec["template"]["metadata"];
        if !meta.get("labels").is_some_and(Value::is_object) {
            meta["labels"] = json!({});
        }
        for (k, v) in [
            ("batch.kubernetes.io/controller-uid", &uid),
            ("batch.kubernetes.io/job-name", &name),
            ("controller-uid", &uid),
            ("job-name", &name),
        ] {
            fill(&mut meta["labels"], k, json!(v));
        }
    }
    template(spec);
}

/// What the API server fills into a pod spec (`pod`: a Pod itself, which also gets what
/// admission adds: the ServiceAccount, priority, and requests copied from limits).
fn pod_spec(spec: &mut Value, pod: bool) {
    fill(spec, "restartPolicy", json!("Always"));
    fill(spec, "dnsPolicy", json!("ClusterFirst"));
    fill(spec, "schedulerName", json!("default-scheduler"));
    fill(spec, "terminationGracePeriodSeconds", json!(30));
    fill(spec, "securityContext", json!({}));
    if pod {
        fill(spec, "serviceAccountName", json!("default"));
        let sa = spec["serviceAccountName"].clone();
        fill(spec, "serviceAccount", sa);
        fill(spec, "enableServiceLinks", json!(true));
        fill(spec, "priority", json!(0));
        fill(spec, "preemptionPolicy", json!("PreemptLowerPriority"));
    }
    for list in ["initContainers", "containers"] {
        for c in spec.get_mut(list).and_then(Value::as_array_mut).into_iter().flatten() {
            container(c, pod);
        }
    }
}

fn container(c: &mut Value, pod: bool) {
    fill(c, "terminationMessagePath", json!("/dev/termination-log"));
    fill(c, "terminationMessagePolicy", json!("File"));
    let image = c.get("image").and_then(Value::as_str).unwrap_or_default();
    let last = image.rsplit('/').next().unwrap_or_default();
    let latest = !image.contains('@') && (!last.contains(':') || last.ends_with(":latest"));
    fill(c, "imagePullPolicy", json!(if latest { "Always" } else { "IfNotPresent" }));
    fill(c, "resources", json!({}));
    if pod && let Some(limits) = c.pointer("/resources/limits").and_then(Value::as_object).cloned() {
        // Requests default to limits (how a GPU limit alone becomes a GPU request).
        if !c.pointer("/resources/requests").is_some_and(Value::is_object) {
            c["resources"]["requests"] = json!({});
        }
        for (r, q) in limits {
            fill(&mut c["resources"]["requests"], &r, q);
        }
    }
    for p in c.get_mut("ports").and_then(Value::as_array_mut).into_iter().flatten() {
        fill(p, "protocol", json!("TCP"));
    }
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

/// The StorageClass annotated as the cluster's default, GA or beta annotation (the
/// newest, when several are).
pub fn default_storage_class(state: &State) -> Option<String> {
    let mut defaults: Vec<&Value> = state
        .list(kind("storage.k8s.io/v1", "StorageClass"), None)
        .into_iter()
        .filter(|c| {
            [
                "storageclass.kubernetes.io~1is-default-class",
                "storageclass.beta.kubernetes.io~1is-default-class",
            ]
            .iter()
            .any(|k| c.pointer(&format!("/metadata/annotations/{k}")).and_then(Value::as_str) == Some("true"))
        })
        .collect();
    defaults.sort_by_key(|c| {
        c.pointer("/metadata/creationTimestamp").and_then(Value::as_str).unwrap_or_default()
    });
    defaults.last().and_then(|c| c.pointer("/metadata/name")).and_then(Value::as_str).map(str::to_owned)
}
