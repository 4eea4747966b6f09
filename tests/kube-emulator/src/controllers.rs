//! The cluster behind the API: workload controllers that create pods, a scheduler that
//! binds them to nodes, and a kubelet that makes them Running and Ready (or fails them).
//!
//! Simplifications (see README): Deployments own their pods directly (no ReplicaSets) and
//! replace changed pods at once; Jobs run one pod at a time; taints, tolerations, pod
//! affinity and preemption are ignored. Statuses carry no timestamps in conditions, so a
//! settled cluster does not change and the resourceVersion clock stands still.

use std::time::Instant;

use serde_json::{Map, Value, json};

use crate::kinds::Kind;
use crate::selectors::expressions_match;
use crate::store::{State, kind};
use crate::util::{milli, now_rfc3339, short_hash};

const MANAGER: &str = "kube-controller-manager";

fn pods() -> &'static Kind {
    kind("v1", "Pod")
}

fn s<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
}

fn phase(pod: &Value) -> &str {
    s(pod, "/status/phase")
}

fn terminal(pod: &Value) -> bool {
    matches!(phase(pod), "Succeeded" | "Failed")
}

pub fn pod_ready(pod: &Value) -> bool {
    pod.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

fn node_ready(node: &Value) -> bool {
    node.pointer("/status/conditions")
        .and_then(Value::as_array)
        .is_some_and(|c| c.iter().any(|c| c["type"] == "Ready" && c["status"] == "True"))
}

impl State {
    /// Runs every controller until nothing changes (bounded).
    pub fn reconcile(&mut self) {
        for _ in 0..10 {
            let before = self.rv;
            self.workloads();
            self.schedule();
            self.kubelet();
            self.workload_status();
            if self.rv == before {
                break;
            }
        }
    }

    fn owned_pods(&self, ns: &str, uid: &str) -> Vec<Value> {
        self.list(pods(), Some(ns))
            .into_iter()
            .filter(|p| {
                p.pointer("/metadata/ownerReferences")
                    .and_then(Value::as_array)
                    .is_some_and(|r| r.iter().any(|r| r["uid"] == json!(uid)))
            })
            .cloned()
            .collect()
    }

    fn make_pod(
        &mut self,
        owner: &Value,
        template: &Value,
        name: &str,
        extra: Map<String, Value>,
        node: Option<&str>,
    ) {
        let mut labels =
            template.pointer("/metadata/labels").and_then(Value::as_object).cloned().unwrap_or_default();
        labels.extend(extra);
        let mut spec = template.get("spec").cloned().unwrap_or(json!({}));
        if let Some(node) = node {
            spec["nodeName"] = json!(node);
        }
        let mut pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": name,
                "namespace": s(owner, "/metadata/namespace"),
                "labels": labels,
                "ownerReferences": [{
                    "apiVersion": owner["apiVersion"], "kind": owner["kind"],
                    "name": owner["metadata"]["name"], "uid": owner["metadata"]["uid"],
                    "controller": true, "blockOwnerDeletion": true,
                }],
            },
            "spec": spec,
        });
        if let Some(a) = template.pointer("/metadata/annotations") {
            pod["metadata"]["annotations"] = a.clone();
        }
        let _ = self.create(pods(), pod, MANAGER, false);
    }

    fn delete_pod(&mut self, pod: &Value) {
        let _ = self.delete(pods(), s(pod, "/metadata/namespace"), s(pod, "/metadata/name"), false, false);
    }

    fn workloads(&mut self) {
        for owner in self.list(kind("apps/v1", "Deployment"), None).into_iter().cloned().collect::<Vec<_>>() {
            self.deployment(&owner);
        }
        for owner in self.list(kind("apps/v1", "StatefulSet"), None).into_iter().cloned().collect::<Vec<_>>()
        {
            self.statefulset(&owner);
        }
        for owner in self.list(kind("apps/v1", "DaemonSet"), None).into_iter().cloned().collect::<Vec<_>>() {
            self.daemonset(&owner);
        }
        for owner in self.list(kind("batch/v1", "Job"), None).into_iter().cloned().collect::<Vec<_>>() {
            self.job(&owner);
        }
    }

    fn deployment(&mut self, d: &Value) {
        let template = &d["spec"]["template"];
        let hash = short_hash(template);
        let want = d["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
        let mut current = Vec::new();
        for p in self.owned_pods(s(d, "/metadata/namespace"), s(d, "/metadata/uid")) {
            if s(&p, "/metadata/labels/pod-template-hash") != hash || terminal(&p) {
                self.delete_pod(&p);
            } else {
                current.push(p);
            }
        }
        for p in current.iter().skip(want) {
            self.delete_pod(p);
        }
        for _ in current.len()..want {
            let n = self.next_id();
            let name = format!("{}-{}-{}", s(d, "/metadata/name"), hash, &short_hash(&json!(n))[..5]);
            let mut extra = Map::new();
            extra.insert("pod-template-hash".into(), json!(hash));
            self.make_pod(d, template, &name, extra, None);
        }
    }

    fn statefulset(&mut self, st: &Value) {
        let template = &st["spec"]["template"];
        let name = s(st, "/metadata/name");
        let revision = format!("{name}-{}", short_hash(template));
        let want = st["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
        let mut have = vec![false; want];
        for p in self.owned_pods(s(st, "/metadata/namespace"), s(st, "/metadata/uid")) {
            let ordinal = s(&p, "/metadata/name").rsplit('-').next().and_then(|o| o.parse::<usize>().ok());
            match ordinal {
                Some(i)
                    if i < want
                        && s(&p, "/metadata/labels/controller-revision-hash") == revision
                        && !terminal(&p) =>
                {
                    have[i] = true
                }
                _ => self.delete_pod(&p),
            }
        }
        for (i, present) in have.iter().enumerate() {
            if !present {
                let mut extra = Map::new();
                extra.insert("controller-revision-hash".into(), json!(revision));
                extra.insert("statefulset.kubernetes.io/pod-name".into(), json!(format!("{name}-{i}")));
                self.make_pod(st, template, &format!("{name}-{i}"), extra, None);
            }
        }
    }

    fn daemonset(&mut self, ds: &Value) {
        let template = &ds["spec"]["template"];
        let hash = short_hash(template);
        let eligible: Vec<String> = self
            .nodes()
            .iter()
            .filter(|n| placement_mismatch(&template["spec"], n).is_none())
            .map(|n| s(n, "/metadata/name").to_string())
            .collect();
        let mut covered = Vec::new();
        for p in self.owned_pods(s(ds, "/metadata/namespace"), s(ds, "/metadata/uid")) {
            let node = s(&p, "/spec/nodeName").to_string();
            if s(&p, "/metadata/labels/controller-revision-hash") != hash
                || terminal(&p)
                || !eligible.contains(&node)
                || covered.contains(&node)
            {
                self.delete_pod(&p);
            } else {
                covered.push(node);
            }
        }
        for node in eligible.iter().filter(|n| !covered.contains(n)) {
            let name = format!("{}-{}", s(ds, "/metadata/name"), &short_hash(&json!([node, hash]))[..5]);
            let mut extra = Map::new();
            extra.insert("controller-revision-hash".into(), json!(hash));
            self.make_pod(ds, template, &name, extra, Some(node));
        }
    }

    fn job(&mut self, job: &Value) {
        let finished = job.pointer("/status/conditions").and_then(Value::as_array).is_some_and(|c| {
            c.iter().any(|c| (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True")
        });
        if finished {
            return;
        }
        let owned = self.owned_pods(s(job, "/metadata/namespace"), s(job, "/metadata/uid"));
        let failed = owned.iter().filter(|p| phase(p) == "Failed").count() as u64;
        let succeeded = owned.iter().filter(|p| phase(p) == "Succeeded").count() as u64;
        let active = owned.iter().filter(|p| !terminal(p)).count();
        let backoff = job["spec"]["backoffLimit"].as_u64().unwrap_or(6);
        let completions = job["spec"]["completions"].as_u64().unwrap_or(1);
        if succeeded < completions && failed <= backoff && active == 0 {
            let uid = s(job, "/metadata/uid").to_string();
            let name = s(job, "/metadata/name").to_string();
            let n = self.next_id();
            let pod_name = format!("{name}-{}", &short_hash(&json!(n))[..5]);
            let mut extra = Map::new();
            for (k, v) in [
                ("controller-uid", &uid),
                ("batch.kubernetes.io/controller-uid", &uid),
                ("job-name", &name),
                ("batch.kubernetes.io/job-name", &name),
            ] {
                extra.insert(k.into(), json!(v));
            }
            self.make_pod(job, &job["spec"]["template"], &pod_name, extra, None);
        }
    }

    pub fn nodes(&self) -> Vec<Value> {
        self.list(kind("v1", "Node"), None).into_iter().cloned().collect()
    }

    /// Binds pods without a node to the first node (by name) that fits them.
    fn schedule(&mut self) {
        let pending: Vec<Value> = self
            .list(pods(), None)
            .into_iter()
            .filter(|p| s(p, "/spec/nodeName").is_empty() && !terminal(p))
            .cloned()
            .collect();
        for pod in pending {
            let nodes = self.nodes();
            let mut reasons: Vec<String> = Vec::new();
            let mut chosen = None;
            for node in &nodes {
                let why = if !node_ready(node) {
                    Some("node(s) were not ready".to_string())
                } else if node.pointer("/spec/unschedulable") == Some(&json!(true)) {
                    Some("node(s) were unschedulable".to_string())
                } else if let Some(m) = placement_mismatch(&pod["spec"], node) {
                    Some(m)
                } else {
                    self.insufficient(&pod, node)
                };
                match why {
                    None => {
                        chosen = Some(s(node, "/metadata/name").to_string());
                        break;
                    }
                    Some(r) => reasons.push(r),
                }
            }
            let ns = s(&pod, "/metadata/namespace").to_string();
            let name = s(&pod, "/metadata/name").to_string();
            match chosen {
                Some(node) => {
                    let mut bound = pod.clone();
                    bound["spec"]["nodeName"] = json!(node);
                    bound["status"] = json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]});
                    let _ = self.update(pods(), &pod, bound, false);
                }
                None => {
                    reasons.sort();
                    let mut counted: Vec<(String, usize)> = Vec::new();
                    for r in reasons {
                        match counted.iter_mut().find(|(x, _)| *x == r) {
                            Some((_, c)) => *c += 1,
                            None => counted.push((r, 1)),
                        }
                    }
                    let detail: Vec<String> = counted.iter().map(|(r, c)| format!("{c} {r}")).collect();
                    let message = format!("0/{} nodes are available: {}.", nodes.len(), detail.join(", "));
                    self.set_status(
                        pods(),
                        &ns,
                        &name,
                        json!({"phase": "Pending", "conditions": [{
                            "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
                        }]}),
                    );
                }
            }
        }
    }

    /// Resource requests of the pod that the node cannot fit next to what it already runs.
    fn insufficient(&self, pod: &Value, node: &Value) -> Option<String> {
        let node_name = s(node, "/metadata/name");
        let alloc = node.pointer("/status/allocatable").and_then(Value::as_object)?;
        let others: Vec<&Value> = self
            .list(pods(), None)
            .into_iter()
            .filter(|p| s(p, "/spec/nodeName") == node_name && !terminal(p))
            .collect();
        for (resource, capacity) in alloc {
            let Some(capacity) = milli(capacity) else { continue };
            let want = requests(pod, resource);
            if want == 0 {
                continue;
            }
            let used: u128 = others.iter().map(|p| requests(p, resource)).sum();
            if used + want > capacity {
                return Some(format!("Insufficient {resource}"));
            }
        }
        None
    }

    /// Pods on a node start (after the configured delay) unless a fault says otherwise.
    fn kubelet(&mut self) {
        let nodes = self.nodes();
        let bound: Vec<Value> = self
            .list(pods(), None)
            .into_iter()
            .filter(|p| !s(p, "/spec/nodeName").is_empty() && !terminal(p))
            .cloned()
            .collect();
        for pod in bound {
            let Some(node) = nodes.iter().find(|n| s(n, "/metadata/name") == s(&pod, "/spec/nodeName"))
            else {
                continue; // bound to a node that does not exist: stays Pending, as on a real cluster
            };
            if !node_ready(node) {
                continue;
            }
            let uid = s(&pod, "/metadata/uid").to_string();
            let seen = *self.pod_seen.entry(uid).or_insert_with(Instant::now);
            if seen.elapsed() < self.pod_start_delay {
                continue;
            }
            let images: Vec<String> = containers(&pod).iter().map(|c| s(c, "/image").to_string()).collect();
            let fault = self.faults.iter().find(|f| images.iter().any(|i| i.contains(&f.image))).cloned();
            let ns = s(&pod, "/metadata/namespace").to_string();
            let name = s(&pod, "/metadata/name").to_string();
            let host_ip = node
                .pointer("/status/addresses")
                .and_then(Value::as_array)
                .and_then(|a| a.first())
                .map(|a| a["address"].clone())
                .unwrap_or(json!("127.0.0.1"));
            let current = pod.get("status").cloned().unwrap_or(json!({}));
            let status = match fault {
                Some(f) => {
                    let crash = f.reason == "CrashLoopBackOff";
                    let statuses: Vec<Value> = containers(&pod)
                        .iter()
                        .map(|c| {
                            json!({
                                "name": c["name"], "image": c["image"], "imageID": "", "ready": false,
                                "restartCount": if crash { 5 } else { 0 }, "started": false,
                                "state": {"waiting": {"reason": f.reason, "message": f.message}},
                            })
                        })
                        .collect();
                    json!({
                        "phase": if crash { "Running" } else { "Pending" },
                        "hostIP": host_ip,
                        "conditions": [
                            {"type": "PodScheduled", "status": "True"},
                            {"type": "Ready", "status": "False", "reason": "ContainersNotReady",
                             "message": format!("containers with unready status: [{}]", containers(&pod).iter().map(|c| s(c, "/name")).collect::<Vec<_>>().join(" "))},
                        ],
                        "containerStatuses": statuses,
                    })
                }
                None => {
                    if phase(&pod) == "Running" && pod_ready(&pod) {
                        continue;
                    }
                    let started = now_rfc3339();
                    let n = self.next_id();
                    let statuses: Vec<Value> = containers(&pod)
                        .iter()
                        .map(|c| json!({
                            "name": c["name"], "image": c["image"], "imageID": "", "ready": true,
                            "restartCount": 0, "started": true, "state": {"running": {"startedAt": started}},
                        }))
                        .collect();
                    json!({
                        "phase": "Running",
                        "hostIP": host_ip,
                        "podIP": format!("10.1.{}.{}", (n / 250) % 250, n % 250 + 2),
                        "startTime": started,
                        "conditions": [
                            {"type": "PodScheduled", "status": "True"},
                            {"type": "Initialized", "status": "True"},
                            {"type": "ContainersReady", "status": "True"},
                            {"type": "Ready", "status": "True"},
                        ],
                        "containerStatuses": statuses,
                    })
                }
            };
            if current != status {
                self.set_status(pods(), &ns, &name, status);
            }
        }
    }

    /// Ends a pod: `Failed` with a reason, or `Succeeded`.
    pub fn finish_pod(&mut self, ns: &str, name: &str, failed: Option<(&str, &str)>) -> bool {
        let Some(pod) = self.get(pods(), ns, name).cloned() else {
            return false;
        };
        let (phase, reason, message, code) = match failed {
            Some((r, m)) => ("Failed", r, m, 1),
            None => ("Succeeded", "Completed", "", 0),
        };
        let statuses: Vec<Value> = containers(&pod)
            .iter()
            .map(|c| json!({
                "name": c["name"], "image": c["image"], "imageID": "", "ready": false, "restartCount": 0,
                "started": false, "state": {"terminated": {"exitCode": code, "reason": reason, "message": message}},
            }))
            .collect();
        let mut status = pod.get("status").cloned().unwrap_or(json!({}));
        status["phase"] = json!(phase);
        if !reason.is_empty() && phase == "Failed" {
            status["reason"] = json!(reason);
            status["message"] = json!(message);
        }
        status["conditions"] = json!([
            {"type": "PodScheduled", "status": "True"},
            {"type": "Ready", "status": "False", "reason": "PodCompleted"},
        ]);
        status["containerStatuses"] = json!(statuses);
        let changed = self.set_status(pods(), ns, name, status);
        self.reconcile();
        changed
    }

    fn workload_status(&mut self) {
        for d in self.list(kind("apps/v1", "Deployment"), None).into_iter().cloned().collect::<Vec<_>>() {
            let hash = short_hash(&d["spec"]["template"]);
            let owned = self.owned_pods(s(&d, "/metadata/namespace"), s(&d, "/metadata/uid"));
            let want = d["spec"]["replicas"].as_u64().unwrap_or(1);
            let total = owned.len() as u64;
            let updated =
                owned.iter().filter(|p| s(p, "/metadata/labels/pod-template-hash") == hash).count() as u64;
            let ready = owned.iter().filter(|p| pod_ready(p)).count() as u64;
            let available = ready >= want;
            let mut status = json!({
                "observedGeneration": d["metadata"]["generation"],
                "replicas": total, "updatedReplicas": updated, "readyReplicas": ready, "availableReplicas": ready,
                "conditions": [
                    {"type": "Available", "status": if available { "True" } else { "False" },
                     "reason": if available { "MinimumReplicasAvailable" } else { "MinimumReplicasUnavailable" },
                     "message": if available { "Deployment has minimum availability." } else { "Deployment does not have minimum availability." }},
                    {"type": "Progressing", "status": "True",
                     "reason": if updated >= want && ready >= want { "NewReplicaSetAvailable" } else { "ReplicaSetUpdated" }},
                ],
            });
            if want > ready {
                status["unavailableReplicas"] = json!(want - ready);
            }
            self.set_status(
                kind("apps/v1", "Deployment"),
                s(&d, "/metadata/namespace"),
                s(&d, "/metadata/name"),
                status,
            );
        }
        for st in self.list(kind("apps/v1", "StatefulSet"), None).into_iter().cloned().collect::<Vec<_>>() {
            let revision = format!("{}-{}", s(&st, "/metadata/name"), short_hash(&st["spec"]["template"]));
            let owned = self.owned_pods(s(&st, "/metadata/namespace"), s(&st, "/metadata/uid"));
            let updated = owned
                .iter()
                .filter(|p| s(p, "/metadata/labels/controller-revision-hash") == revision)
                .count();
            let ready = owned.iter().filter(|p| pod_ready(p)).count();
            let status = json!({
                "observedGeneration": st["metadata"]["generation"],
                "replicas": owned.len(), "readyReplicas": ready, "availableReplicas": ready,
                "currentReplicas": updated, "updatedReplicas": updated,
                "currentRevision": revision, "updateRevision": revision,
            });
            self.set_status(
                kind("apps/v1", "StatefulSet"),
                s(&st, "/metadata/namespace"),
                s(&st, "/metadata/name"),
                status,
            );
        }
        for ds in self.list(kind("apps/v1", "DaemonSet"), None).into_iter().cloned().collect::<Vec<_>>() {
            let hash = short_hash(&ds["spec"]["template"]);
            let desired = self
                .nodes()
                .iter()
                .filter(|n| placement_mismatch(&ds["spec"]["template"]["spec"], n).is_none())
                .count();
            let owned = self.owned_pods(s(&ds, "/metadata/namespace"), s(&ds, "/metadata/uid"));
            let updated =
                owned.iter().filter(|p| s(p, "/metadata/labels/controller-revision-hash") == hash).count();
            let ready = owned.iter().filter(|p| pod_ready(p)).count();
            let status = json!({
                "observedGeneration": ds["metadata"]["generation"],
                "desiredNumberScheduled": desired, "currentNumberScheduled": owned.len(),
                "updatedNumberScheduled": updated, "numberReady": ready, "numberAvailable": ready,
                "numberUnavailable": desired.saturating_sub(ready), "numberMisscheduled": 0,
            });
            self.set_status(
                kind("apps/v1", "DaemonSet"),
                s(&ds, "/metadata/namespace"),
                s(&ds, "/metadata/name"),
                status,
            );
        }
        for job in self.list(kind("batch/v1", "Job"), None).into_iter().cloned().collect::<Vec<_>>() {
            let owned = self.owned_pods(s(&job, "/metadata/namespace"), s(&job, "/metadata/uid"));
            let failed = owned.iter().filter(|p| phase(p) == "Failed").count() as u64;
            let succeeded = owned.iter().filter(|p| phase(p) == "Succeeded").count() as u64;
            let active = owned.iter().filter(|p| !terminal(p)).count() as u64;
            let ready = owned.iter().filter(|p| pod_ready(p)).count() as u64;
            let backoff = job["spec"]["backoffLimit"].as_u64().unwrap_or(6);
            let completions = job["spec"]["completions"].as_u64().unwrap_or(1);
            let mut status = job.get("status").cloned().unwrap_or(json!({}));
            let was_finished = status.get("conditions").is_some();
            status["active"] = json!(active);
            status["ready"] = json!(ready);
            status["failed"] = json!(failed);
            status["succeeded"] = json!(succeeded);
            if status.get("startTime").is_none() && !owned.is_empty() {
                status["startTime"] = json!(now_rfc3339());
            }
            if !was_finished {
                if succeeded >= completions {
                    status["conditions"] = json!([{"type": "Complete", "status": "True"}]);
                    status["completionTime"] = json!(now_rfc3339());
                } else if failed > backoff {
                    status["conditions"] = json!([{
                        "type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                        "message": "Job has reached the specified backoff limit",
                    }]);
                }
            }
            self.set_status(
                kind("batch/v1", "Job"),
                s(&job, "/metadata/namespace"),
                s(&job, "/metadata/name"),
                status,
            );
        }
    }
}

fn containers(pod: &Value) -> Vec<Value> {
    pod.pointer("/spec/containers").and_then(Value::as_array).cloned().unwrap_or_default()
}

/// Sum of a resource's requests (or limits when no request) over the pod's containers.
fn requests(pod: &Value, resource: &str) -> u128 {
    containers(pod)
        .iter()
        .map(|c| {
            c.pointer("/resources/requests")
                .and_then(|r| r.get(resource))
                .or_else(|| c.pointer("/resources/limits").and_then(|r| r.get(resource)))
                .and_then(milli)
                .unwrap_or(0)
        })
        .sum()
}

/// Why a pod spec's nodeSelector / required node affinity rejects a node, if it does.
pub fn placement_mismatch(spec: &Value, node: &Value) -> Option<String> {
    let labels = node.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
    let label = |k: &str| labels.get(k).and_then(Value::as_str).map(str::to_string);
    if let Some(sel) = spec.get("nodeSelector").and_then(Value::as_object)
        && !sel.iter().all(|(k, v)| label(k).as_deref() == v.as_str())
    {
        return Some("node(s) didn't match Pod's node affinity/selector".into());
    }
    let terms = spec
        .pointer("/affinity/nodeAffinity/requiredDuringSchedulingIgnoredDuringExecution/nodeSelectorTerms")
        .and_then(Value::as_array);
    if let Some(terms) = terms {
        let any = terms.iter().any(|t| expressions_match(t.get("matchExpressions"), |k| label(k)));
        if !terms.is_empty() && !any {
            return Some("node(s) didn't match Pod's node affinity/selector".into());
        }
    }
    None
}
