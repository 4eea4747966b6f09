//! Waiting for Deployments, StatefulSets and DaemonSets to roll out, with a progress line
//! whenever one changes, and on timeout an error that names each workload that is not
//! ready and why (its pods: unschedulable, image pull errors, crash loops, failures).

use std::io::Write;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DynamicObject, ListParams};
use minerctl_manifests::ObjectKey;
use serde_json::Value;

use crate::error::DeployError;
use crate::resources::api_resource;

pub(crate) const WORKLOADS: &[&str] = &["Deployment", "StatefulSet", "DaemonSet"];

fn int(v: &Value, pointer: &str) -> i64 {
    v.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

/// (ready, one-line progress) of a workload as stored.
pub(crate) fn readiness(kind: &str, obj: &Value) -> (bool, String) {
    let generation = int(obj, "/metadata/generation");
    let observed = int(obj, "/status/observedGeneration");
    let (want, ready, updated, total) = match kind {
        "DaemonSet" => (
            int(obj, "/status/desiredNumberScheduled"),
            int(obj, "/status/numberReady"),
            int(obj, "/status/updatedNumberScheduled"),
            int(obj, "/status/currentNumberScheduled"),
        ),
        _ => (
            obj.pointer("/spec/replicas").and_then(Value::as_i64).unwrap_or(1),
            int(obj, "/status/readyReplicas"),
            int(obj, "/status/updatedReplicas"),
            int(obj, "/status/replicas"),
        ),
    };
    if observed < generation {
        return (false, format!("{ready}/{want} ready, waiting for the controller to see the change"));
    }
    let ok = ready >= want && updated >= want && total <= want;
    let mut line = format!("{ready}/{want} ready");
    if updated < want {
        line.push_str(&format!(", {updated}/{want} updated"));
    }
    if total > want {
        line.push_str(&format!(", {} old pod(s) terminating", total - want));
    }
    (ok, line)
}

/// `; last exit code 1 (Error): message` from a container status's previous run, if any.
fn last_exit(status: &Value) -> String {
    let Some(t) = status.pointer("/lastState/terminated") else {
        return String::new();
    };
    let mut line = format!("; last exit code {} ({})", t["exitCode"], t["reason"].as_str().unwrap_or("?"));
    if let Some(m) = t["message"].as_str().map(str::trim).filter(|m| !m.is_empty()) {
        line.push_str(&format!(": {m}"));
    }
    line
}

/// The init container that keeps the pod from starting, in one line; None once they are
/// done. Init containers run one after the other before the app containers, which wait
/// meanwhile as `PodInitializing`: that says nothing, the init container does. Each one
/// that exited 0 is done; a sidecar (`restartPolicy: Always` in the spec) is done while it
/// runs; a later one waiting as `PodInitializing` only waits its turn.
fn init_problem(name: &str, pod: &Value) -> Option<String> {
    let statuses = pod.pointer("/status/initContainerStatuses").and_then(Value::as_array)?;
    let sidecar = |container: &str| {
        pod.pointer("/spec/initContainers")
            .and_then(Value::as_array)
            .is_some_and(|cs| cs.iter().any(|c| c["name"] == container && c["restartPolicy"] == "Always"))
    };
    for s in statuses {
        let container = s["name"].as_str().unwrap_or("?");
        if let Some(t) = s.pointer("/state/terminated") {
            if t["exitCode"].as_i64() == Some(0) {
                continue;
            }
            let mut line = format!(
                "pod {name}: init container {container} terminated: {} (exit code {})",
                t["reason"].as_str().unwrap_or("?"),
                t["exitCode"]
            );
            if let Some(m) = t["message"].as_str().map(str::trim).filter(|m| !m.is_empty()) {
                line.push_str(&format!(": {m}"));
            }
            return Some(line);
        }
        if let Some(w) = s.pointer("/state/waiting") {
            let reason = w["reason"].as_str().unwrap_or("?");
            if reason == "PodInitializing" {
                continue;
            }
            return Some(format!(
                "pod {name}: init container {container} waiting: {reason}: {}{}",
                w["message"].as_str().unwrap_or(""),
                last_exit(s)
            ));
        }
        if s.pointer("/state/running").is_some() && !sidecar(container) {
            return Some(format!(
                "pod {name}: init container {container} running, not finished{}",
                last_exit(s)
            ));
        }
    }
    None
}

/// Why a pod is not ready, in one line, from its conditions and container states (init
/// containers first: the app containers cannot start before them).
pub(crate) fn pod_problem(pod: &Value) -> String {
    let name = pod.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("?");
    let phase = pod.pointer("/status/phase").and_then(Value::as_str).unwrap_or("Unknown");
    let conditions = pod.pointer("/status/conditions").and_then(Value::as_array).cloned().unwrap_or_default();
    if let Some(c) = conditions.iter().find(|c| c["type"] == "PodScheduled" && c["status"] == "False") {
        return format!(
            "pod {name} {phase}: {}: {}",
            c["reason"].as_str().unwrap_or("not scheduled"),
            c["message"].as_str().unwrap_or("")
        );
    }
    if let Some(problem) = init_problem(name, pod) {
        return problem;
    }
    let statuses =
        pod.pointer("/status/containerStatuses").and_then(Value::as_array).cloned().unwrap_or_default();
    for s in &statuses {
        let container = s["name"].as_str().unwrap_or("?");
        if let Some(w) = s.pointer("/state/waiting") {
            return format!(
                "pod {name}: container {container} waiting: {}: {}",
                w["reason"].as_str().unwrap_or("?"),
                w["message"].as_str().unwrap_or("")
            );
        }
        if let Some(t) = s.pointer("/state/terminated") {
            return format!(
                "pod {name}: container {container} terminated: {} (exit code {})",
                t["reason"].as_str().unwrap_or("?"),
                t["exitCode"]
            );
        }
    }
    if phase == "Failed" {
        return format!(
            "pod {name} Failed: {}: {}",
            pod.pointer("/status/reason").and_then(Value::as_str).unwrap_or("?"),
            pod.pointer("/status/message").and_then(Value::as_str).unwrap_or("")
        );
    }
    if phase == "Pending" && pod.pointer("/spec/nodeName").is_some() {
        return format!("pod {name} Pending on node {}", pod["spec"]["nodeName"].as_str().unwrap_or("?"));
    }
    format!("pod {name} {phase}, not ready")
}

async fn get(client: &kube::Client, key: &ObjectKey) -> Result<Option<Value>, DeployError> {
    let ar = api_resource(&key.api_version, &key.kind)
        .ok_or_else(|| DeployError::UnknownKind { object: key.to_string(), kind: key.kind.clone() })?;
    let api: Api<DynamicObject> = match &key.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    let obj = api.get_opt(&key.name).await.map_err(|e| DeployError::api(key, e))?;
    Ok(obj.and_then(|o| serde_json::to_value(o).ok()))
}

/// Pods of a workload (by its selector), each summarised by what keeps it from Ready.
async fn diagnose(client: &kube::Client, key: &ObjectKey, obj: &Value) -> Result<String, DeployError> {
    let Some(ns) = &key.namespace else {
        return Ok(String::new());
    };
    let selector: Vec<String> = obj
        .pointer("/spec/selector/matchLabels")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect())
        .unwrap_or_default();
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let list = pods
        .list(&ListParams::default().labels(&selector.join(",")))
        .await
        .map_err(|e| DeployError::api(key, e))?;
    let problems: Vec<String> = list
        .items
        .iter()
        .filter_map(|p| serde_json::to_value(p).ok())
        .filter(|p| !crate::is_pod_ready(p))
        .map(|p| pod_problem(&p))
        .collect();
    Ok(if problems.is_empty() { "no pod created yet".into() } else { problems.join("; ") })
}

/// Polls until every workload is ready; prints a line when one's progress changes.
pub(crate) async fn wait(
    client: &kube::Client,
    keys: &[ObjectKey],
    timeout: Duration,
    poll: Duration,
    out: &mut dyn Write,
) -> Result<(), DeployError> {
    let workloads: Vec<&ObjectKey> = keys.iter().filter(|k| WORKLOADS.contains(&k.kind.as_str())).collect();
    if workloads.is_empty() {
        return Ok(());
    }
    writeln!(out, "waiting for {} workloads to be ready (timeout {}s)", workloads.len(), timeout.as_secs())?;
    let start = Instant::now();
    let mut last: Vec<Option<String>> = vec![None; workloads.len()];
    loop {
        let mut pending = Vec::new();
        for (i, key) in workloads.iter().enumerate() {
            let Some(obj) = get(client, key).await? else {
                pending.push((*key, None, "does not exist".to_string()));
                continue;
            };
            let (ok, line) = readiness(&key.kind, &obj);
            if last[i].as_deref() != Some(line.as_str()) {
                writeln!(out, "  {key}: {line}")?;
                last[i] = Some(line.clone());
            }
            if !ok {
                pending.push((*key, Some(obj), line));
            }
        }
        if pending.is_empty() {
            writeln!(
                out,
                "all {} workloads ready after {:.1}s",
                workloads.len(),
                start.elapsed().as_secs_f64()
            )?;
            return Ok(());
        }
        if start.elapsed() >= timeout {
            let mut details = Vec::new();
            for (key, obj, line) in pending {
                let why = match obj {
                    Some(obj) => diagnose(client, key, &obj).await?,
                    None => String::new(),
                };
                details.push(format!("  {key}: {line}: {why}"));
            }
            return Err(DeployError::RolloutTimeout {
                seconds: timeout.as_secs(),
                details: details.join("\n"),
            });
        }
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn readiness_follows_status() {
        let d = json!({"metadata": {"generation": 2}, "spec": {"replicas": 2},
            "status": {"observedGeneration": 1, "readyReplicas": 2, "updatedReplicas": 2, "replicas": 2}});
        assert!(!readiness("Deployment", &d).0);
        let d = json!({"metadata": {"generation": 2}, "spec": {"replicas": 2},
            "status": {"observedGeneration": 2, "readyReplicas": 2, "updatedReplicas": 2, "replicas": 3}});
        assert_eq!(readiness("Deployment", &d), (false, "2/2 ready, 1 old pod(s) terminating".into()));
        let ds = json!({"metadata": {"generation": 1}, "status": {"observedGeneration": 1, "desiredNumberScheduled": 0}});
        assert!(readiness("DaemonSet", &ds).0, "no GPU node yet is not a failure");
    }

    #[test]
    fn pod_problems_name_the_cause() {
        let p = json!({"metadata": {"name": "api-1"}, "status": {"phase": "Pending", "conditions": [
            {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/1 nodes are available"}]}});
        assert_eq!(pod_problem(&p), "pod api-1 Pending: Unschedulable: 0/1 nodes are available");
        let p = json!({"metadata": {"name": "api-1"}, "status": {"phase": "Pending", "containerStatuses": [
            {"name": "api", "state": {"waiting": {"reason": "ErrImagePull", "message": "not found"}}}]}});
        assert_eq!(pod_problem(&p), "pod api-1: container api waiting: ErrImagePull: not found");
    }

    /// The API's `migrate` init container crash-loops (a DB password mismatch): the report
    /// names it, with its last exit and message, not the app container's PodInitializing.
    #[test]
    fn a_failing_init_container_is_the_problem_reported() {
        let p = json!({"metadata": {"name": "api-7d9"},
            "spec": {"initContainers": [{"name": "migrate"}], "containers": [{"name": "api"}]},
            "status": {"phase": "Pending", "conditions": [
                {"type": "Initialized", "status": "False", "reason": "ContainersNotInitialized"},
                {"type": "PodScheduled", "status": "True"}],
            "initContainerStatuses": [{"name": "migrate", "restartCount": 4,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 1m20s restarting failed container=migrate"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error", "message": "password authentication failed for user \"chutes\""}}}],
            "containerStatuses": [{"name": "api", "state": {"waiting": {"reason": "PodInitializing"}}}]}});
        assert_eq!(
            pod_problem(&p),
            "pod api-7d9: init container migrate waiting: CrashLoopBackOff: back-off 1m20s restarting failed container=migrate; \
             last exit code 1 (Error): password authentication failed for user \"chutes\""
        );

        // Redis's `config` init container, caught between restarts; the first init
        // container completed, the later ones wait their turn.
        let p = json!({"metadata": {"name": "redis-0"},
            "status": {"phase": "Pending",
            "initContainerStatuses": [
                {"name": "perms", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
                {"name": "config", "state": {"terminated": {"exitCode": 2, "reason": "Error", "message": "REDIS_PASSWORD is not set"}}},
                {"name": "later", "state": {"waiting": {"reason": "PodInitializing"}}}],
            "containerStatuses": [{"name": "redis", "state": {"waiting": {"reason": "PodInitializing"}}}]}});
        assert_eq!(
            pod_problem(&p),
            "pod redis-0: init container config terminated: Error (exit code 2): REDIS_PASSWORD is not set"
        );

        // An init container that cannot be pulled.
        let p = json!({"metadata": {"name": "api-1"}, "status": {"phase": "Pending",
            "initContainerStatuses": [{"name": "migrate", "state": {"waiting": {"reason": "ImagePullBackOff", "message": "manifest unknown"}}}],
            "containerStatuses": [{"name": "api", "state": {"waiting": {"reason": "PodInitializing"}}}]}});
        assert_eq!(
            pod_problem(&p),
            "pod api-1: init container migrate waiting: ImagePullBackOff: manifest unknown"
        );

        // One that has not finished yet (migrations running, or stuck reaching the DB).
        let p = json!({"metadata": {"name": "api-1"},
            "spec": {"initContainers": [{"name": "migrate"}]},
            "status": {"phase": "Pending",
            "initContainerStatuses": [{"name": "migrate", "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}}}],
            "containerStatuses": [{"name": "api", "state": {"waiting": {"reason": "PodInitializing"}}}]}});
        assert_eq!(pod_problem(&p), "pod api-1: init container migrate running, not finished");
    }

    /// Init containers that completed, and a running sidecar (an init container with
    /// `restartPolicy: Always`), are no problem: the app container's state is reported.
    #[test]
    fn finished_init_containers_and_sidecars_leave_the_app_container_reported() {
        let p = json!({"metadata": {"name": "api-1"},
            "spec": {"initContainers": [{"name": "migrate"}, {"name": "proxy", "restartPolicy": "Always"}]},
            "status": {"phase": "Running",
            "initContainerStatuses": [
                {"name": "migrate", "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}},
                {"name": "proxy", "state": {"running": {"startedAt": "2025-01-01T00:00:00Z"}}}],
            "containerStatuses": [{"name": "api", "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}}}]}});
        assert_eq!(pod_problem(&p), "pod api-1: container api waiting: CrashLoopBackOff: back-off");
    }
}
