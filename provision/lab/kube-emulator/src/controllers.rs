//! The cluster behind the API: workload controllers that create pods, a scheduler that
//! binds them to nodes, a kubelet that admits, starts, fails and stops them, and the
//! garbage and namespace controllers that finish deletions.
//!
//! Controllers are level-driven but incremental: each write marks what it concerns as dirty
//! (see `State::observe`), and `reconcile` looks at dirty objects only, so the cost of a
//! write is about what it touches. Time-driven work (start delays, grace periods, Job
//! deadlines and TTLs) sits in a timer queue the 50 ms ticker checks.
//!
//! Simplifications (see README): Deployments own their pods directly (no ReplicaSets) and
//! replace changed pods at once; Jobs run one pod at a time; pod affinity and preemption are
//! ignored. Statuses carry no timestamps in conditions, so a settled cluster does not change
//! and the resourceVersion clock stands still.

use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

use crate::kinds::Kind;
use crate::selectors::expressions_match;
use crate::store::{FOREGROUND, Key, Propagation, State, deleting, finalizers, kind, kind_of};
use crate::util::{milli, now_rfc3339, short_hash};

const MANAGER: &str = "kube-controller-manager";

/// Rounds of dirty work one reconcile may take before yielding to the next request or tick
/// (a guard against controllers that keep changing each other).
const MAX_ROUNDS: usize = 200;

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

/// Counts towards a workload: neither finished nor on its way out.
fn live(pod: &Value) -> bool {
    !terminal(pod) && !deleting(pod)
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
    /// Runs the controllers over what is dirty until nothing is (bounded).
    pub fn reconcile(&mut self) {
        for _ in 0..MAX_ROUNDS {
            self.wake_due_timers();
            if self.dirty.is_empty() && self.sched_new.is_empty() && !self.sched_all {
                break;
            }
            let batch = std::mem::take(&mut self.dirty);
            for k in batch {
                self.control(&k);
            }
            self.schedule();
        }
    }

    fn wake_due_timers(&mut self) {
        let now = Instant::now();
        while self.timers.first().is_some_and(|(when, _)| *when <= now) {
            if let Some((_, k)) = self.timers.pop_first() {
                self.dirty.insert(k);
            }
        }
    }

    fn wake_at(&mut self, when: Instant, k: &Key) {
        self.timers.insert((when, k.clone()));
    }

    fn control(&mut self, k: &Key) {
        let (Some(kind), Some(obj)) = (kind_of(k), self.get_key(k).cloned()) else {
            return;
        };
        match kind.kind {
            "Pod" => self.kubelet(k, &obj),
            "Namespace" => self.namespace(k, &obj),
            _ if deleting(&obj) => self.finish_deletion(k, &obj),
            "Deployment" => self.deployment(k, &obj),
            "StatefulSet" => self.statefulset(k, &obj),
            "DaemonSet" => self.daemonset(k, &obj),
            "Job" => self.job(k, &obj),
            "PersistentVolumeClaim" => self.claim(k, &obj),
            _ => {}
        }
    }

    /// The volume binder, with a provisioner behind every class: a claim whose class
    /// exists is bound at once, with what it requested; one with no class, or one that
    /// does not exist, stays Pending, and so do the pods that mount it.
    ///
    /// A claim that names no class (not even "") gets the default one once there is one
    /// (retroactive default class assignment, Kubernetes 1.28).
    fn claim(&mut self, k: &Key, pvc: &Value) {
        if phase(pvc) == "Bound" {
            return;
        }
        let mut class = s(pvc, "/spec/storageClassName").to_string();
        if pvc.pointer("/spec/storageClassName").is_none_or(Value::is_null)
            && let Some(default) = crate::defaults::default_storage_class(self)
        {
            let mut new = pvc.clone();
            new["spec"]["storageClassName"] = json!(default);
            let _ = self.update(kind("v1", "PersistentVolumeClaim"), pvc, new, false);
            class = default;
        }
        if class.is_empty() || self.get(kind("storage.k8s.io/v1", "StorageClass"), "", &class).is_none() {
            return;
        }
        let status = json!({
            "phase": "Bound",
            "accessModes": pvc.pointer("/spec/accessModes").cloned().unwrap_or(json!(["ReadWriteOnce"])),
            "capacity": {"storage": pvc.pointer("/spec/resources/requests/storage").cloned().unwrap_or(json!("1Gi"))},
        });
        self.set_status(kind("v1", "PersistentVolumeClaim"), &k.2, &k.3, status);
        // Pods that waited for it are tried again.
        self.sched_all = true;
    }

    /// Why the pod cannot be scheduled yet for its claims: one missing or not bound.
    fn unbound_claim(&self, pod: &Value, nodes: usize) -> Option<String> {
        let ns = s(pod, "/metadata/namespace");
        let volumes = pod.pointer("/spec/volumes").and_then(Value::as_array)?;
        for v in volumes {
            let name = s(v, "/persistentVolumeClaim/claimName");
            if name.is_empty() {
                continue;
            }
            match self.get(kind("v1", "PersistentVolumeClaim"), ns, name) {
                None => return Some(format!("persistentvolumeclaim \"{name}\" not found")),
                Some(c) if phase(c) != "Bound" => {
                    return Some(format!(
                        "0/{nodes} nodes are available: pod has unbound immediate PersistentVolumeClaims."
                    ));
                }
                Some(_) => {}
            }
        }
        None
    }

    /// The garbage collector's part of a deletion: drop `foregroundDeletion` once the
    /// dependents are gone, and remove the object once no finalizer is left.
    fn finish_deletion(&mut self, k: &Key, obj: &Value) {
        let mut f = finalizers(obj);
        if f.iter().any(|x| x == FOREGROUND) && self.dependents_of(s(obj, "/metadata/uid")).is_empty() {
            f.retain(|x| x != FOREGROUND);
            let mut new = obj.clone();
            new["metadata"]["finalizers"] = json!(f);
            if let Some(kind) = kind_of(k) {
                let _ = self.update(kind, obj, new, false);
            }
        }
        if f.is_empty() {
            self.remove(k);
        }
    }

    /// Namespaces get their `default` ServiceAccount; a Terminating one is emptied, then goes.
    fn namespace(&mut self, k: &Key, ns_obj: &Value) {
        let ns = k.3.clone();
        let sa = kind("v1", "ServiceAccount");
        if !deleting(ns_obj) {
            if self.get(sa, &ns, "default").is_none() {
                let _ = self.create(
                    sa,
                    json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": ns}}),
                    MANAGER,
                    false,
                );
            }
            return;
        }
        let mut inside: Vec<(Key, bool)> = Vec::new();
        for kd in crate::kinds::KINDS.iter().filter(|kd| kd.namespaced) {
            inside.extend(self.list_keyed(kd, Some(&ns)).into_iter().map(|(k, v)| (k.clone(), deleting(v))));
        }
        for (key, going) in &inside {
            if !going {
                self.delete_key(key, Propagation::Background);
            }
        }
        let empty = crate::kinds::KINDS
            .iter()
            .filter(|kd| kd.namespaced)
            .all(|kd| self.list_keyed(kd, Some(&ns)).is_empty());
        if empty {
            self.remove(k);
        }
    }

    fn owned_pods(&self, uid: &str) -> Vec<Value> {
        self.dependents_of(uid)
            .into_iter()
            .filter(|k| k.1 == "pods" && k.0.is_empty())
            .filter_map(|k| self.get_key(&k).cloned())
            .collect()
    }

    fn make_pod(
        &mut self,
        owner: &Value,
        template: &Value,
        name: &str,
        extra: Map<String, Value>,
        node: Option<&str>,
    ) -> bool {
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
        self.create(pods(), pod, MANAGER, false).is_ok()
    }

    fn delete_pod(&mut self, pod: &Value) {
        let k = crate::store::key(pods(), s(pod, "/metadata/namespace"), s(pod, "/metadata/name"));
        self.delete_key(&k, Propagation::Background);
    }

    fn deployment(&mut self, k: &Key, d: &Value) {
        let template = &d["spec"]["template"];
        let hash = short_hash(template);
        let want = d["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
        let mut current = Vec::new();
        for p in self.owned_pods(s(d, "/metadata/uid")) {
            if deleting(&p) {
                continue;
            }
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
        let owned: Vec<Value> = self.owned_pods(s(d, "/metadata/uid")).into_iter().filter(live).collect();
        let total = owned.len() as u64;
        let want = want as u64;
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
        self.set_status(kind("apps/v1", "Deployment"), &k.2, &k.3, status);
    }

    fn statefulset(&mut self, k: &Key, st: &Value) {
        let template = &st["spec"]["template"];
        let name = s(st, "/metadata/name").to_string();
        let revision = format!("{name}-{}", short_hash(template));
        let want = st["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
        let mut have = vec![false; want];
        for p in self.owned_pods(s(st, "/metadata/uid")) {
            if deleting(&p) {
                // Same name: the replacement waits until this one is gone.
                if let Some(i) = ordinal(&p).filter(|i| *i < want) {
                    have[i] = true;
                }
                continue;
            }
            match ordinal(&p) {
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
        // PersistentVolumeClaims from volumeClaimTemplates, one per template and ordinal,
        // kept when the StatefulSet goes (the default retention policy).
        let claims =
            st.pointer("/spec/volumeClaimTemplates").and_then(Value::as_array).cloned().unwrap_or_default();
        let pvc = kind("v1", "PersistentVolumeClaim");
        let mut template = template.clone();
        for i in 0..want {
            for c in &claims {
                let cname = format!("{}-{name}-{i}", s(c, "/metadata/name"));
                if self.get(pvc, &k.2, &cname).is_none() {
                    let mut obj = json!({
                        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                        "metadata": {"name": cname, "namespace": k.2,
                                     "labels": st.pointer("/spec/selector/matchLabels").cloned().unwrap_or(json!({}))},
                        "spec": c.get("spec").cloned().unwrap_or(json!({})),
                    });
                    if obj["spec"].get("volumeMode").is_none() {
                        obj["spec"]["volumeMode"] = json!("Filesystem");
                    }
                    let _ = self.create(pvc, obj, MANAGER, false);
                }
            }
        }
        for (i, present) in have.iter().enumerate() {
            if !present {
                // Each pod mounts its own claims, as volumes named after the templates.
                if !claims.is_empty() && template.pointer("/spec/volumes").is_none_or(|v| !v.is_array()) {
                    template["spec"]["volumes"] = json!([]);
                }
                if let Some(vols) = template.pointer_mut("/spec/volumes").and_then(Value::as_array_mut) {
                    for c in &claims {
                        let volume = json!({"name": s(c, "/metadata/name"),
                            "persistentVolumeClaim": {"claimName": format!("{}-{name}-{i}", s(c, "/metadata/name"))}});
                        match vols.iter_mut().find(|v| v.get("name") == c.pointer("/metadata/name")) {
                            Some(v) => *v = volume,
                            None => vols.push(volume),
                        }
                    }
                }
                let mut extra = Map::new();
                extra.insert("controller-revision-hash".into(), json!(revision));
                extra.insert("statefulset.kubernetes.io/pod-name".into(), json!(format!("{name}-{i}")));
                extra.insert("apps.kubernetes.io/pod-index".into(), json!(i.to_string()));
                self.make_pod(st, &template, &format!("{name}-{i}"), extra, None);
            }
        }
        let owned: Vec<Value> = self.owned_pods(s(st, "/metadata/uid")).into_iter().filter(live).collect();
        let updated =
            owned.iter().filter(|p| s(p, "/metadata/labels/controller-revision-hash") == revision).count();
        let ready = owned.iter().filter(|p| pod_ready(p)).count();
        let status = json!({
            "observedGeneration": st["metadata"]["generation"],
            "replicas": owned.len(), "readyReplicas": ready, "availableReplicas": ready,
            "currentReplicas": updated, "updatedReplicas": updated,
            "currentRevision": revision, "updateRevision": revision,
        });
        self.set_status(kind("apps/v1", "StatefulSet"), &k.2, &k.3, status);
    }

    fn daemonset(&mut self, k: &Key, ds: &Value) {
        let template = &ds["spec"]["template"];
        let hash = short_hash(template);
        let eligible: Vec<String> = self
            .nodes()
            .iter()
            .filter(|n| {
                placement_mismatch(&template["spec"], n).is_none()
                    && taint_mismatch(&template["spec"], n).is_none()
            })
            .map(|n| s(n, "/metadata/name").to_string())
            .collect();
        let mut covered = Vec::new();
        for p in self.owned_pods(s(ds, "/metadata/uid")) {
            let node = s(&p, "/spec/nodeName").to_string();
            if deleting(&p) {
                covered.push(node);
                continue;
            }
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
        let owned: Vec<Value> = self.owned_pods(s(ds, "/metadata/uid")).into_iter().filter(live).collect();
        let desired = eligible.len();
        let updated =
            owned.iter().filter(|p| s(p, "/metadata/labels/controller-revision-hash") == hash).count();
        let ready = owned.iter().filter(|p| pod_ready(p)).count();
        let status = json!({
            "observedGeneration": ds["metadata"]["generation"],
            "desiredNumberScheduled": desired, "currentNumberScheduled": owned.len(),
            "updatedNumberScheduled": updated, "numberReady": ready, "numberAvailable": ready,
            "numberUnavailable": desired.saturating_sub(ready), "numberMisscheduled": 0,
        });
        self.set_status(kind("apps/v1", "DaemonSet"), &k.2, &k.3, status);
    }

    fn job(&mut self, k: &Key, job: &Value) {
        let uid = s(job, "/metadata/uid").to_string();
        let owned = self.owned_pods(&uid);
        let failed = owned.iter().filter(|p| phase(p) == "Failed").count() as u64;
        let succeeded = owned.iter().filter(|p| phase(p) == "Succeeded").count() as u64;
        let terminating = owned.iter().filter(|p| deleting(p) && !terminal(p)).count() as u64;
        let active: Vec<&Value> = owned.iter().filter(|p| live(p)).collect();
        let ready = active.iter().filter(|p| pod_ready(p)).count() as u64;
        let backoff = job["spec"]["backoffLimit"].as_u64().unwrap_or(6);
        let completions = job["spec"]["completions"].as_u64().unwrap_or(1);
        let mut status = job.get("status").cloned().unwrap_or(json!({}));
        let finished_before = status.get("conditions").and_then(Value::as_array).is_some_and(|c| {
            c.iter().any(|c| (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True")
        });
        let now = Instant::now();
        let mut ending: Option<Value> = None;
        if !finished_before {
            if succeeded >= completions {
                ending = Some(json!({"type": "Complete", "status": "True"}));
            } else if failed > backoff {
                ending = Some(json!({
                    "type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                    "message": "Job has reached the specified backoff limit",
                }));
            } else if let (Some(limit), Some(started)) =
                (job["spec"]["activeDeadlineSeconds"].as_u64(), self.job_started.get(&uid).copied())
            {
                let deadline = started + Duration::from_secs(limit);
                if now >= deadline {
                    ending = Some(json!({
                        "type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                        "message": "Job was active longer than specified deadline",
                    }));
                } else {
                    self.wake_at(deadline, k);
                }
            }
        }
        let suspended = job["spec"]["suspend"] == true;
        if !finished_before && ending.is_none() && !suspended && active.is_empty() && succeeded < completions
        {
            let name = s(job, "/metadata/name").to_string();
            let n = self.next_id();
            let pod_name = format!("{name}-{}", &short_hash(&json!(n))[..5]);
            let mut extra = Map::new();
            for (key, v) in [
                ("controller-uid", &uid),
                ("batch.kubernetes.io/controller-uid", &uid),
                ("job-name", &name),
                ("batch.kubernetes.io/job-name", &name),
            ] {
                extra.insert(key.into(), json!(v));
            }
            if self.make_pod(job, &job["spec"]["template"], &pod_name, extra, None) {
                self.job_started.entry(uid.clone()).or_insert(now);
                // The new pod marks this Job dirty; its status is counted then.
                return;
            }
        }
        if ending.is_some() {
            for p in &active {
                self.delete_pod(p);
            }
        }
        status["active"] = json!(if ending.is_some() { 0 } else { active.len() as u64 });
        status["ready"] = json!(ready);
        status["failed"] = json!(failed);
        status["succeeded"] = json!(succeeded);
        status["terminating"] = json!(terminating);
        if status.get("startTime").is_none() && self.job_started.contains_key(&uid) {
            status["startTime"] = json!(now_rfc3339());
        }
        if let Some(cond) = ending {
            let (reason, message, kind_of_event) = if cond["type"] == "Complete" {
                status["completionTime"] = json!(now_rfc3339());
                ("Completed".to_string(), "Job completed".to_string(), "Normal")
            } else {
                (s(&cond, "/reason").to_string(), s(&cond, "/message").to_string(), "Warning")
            };
            // As the job-controller records it; the Event outlives the Job.
            let n = self.next_id();
            let event = json!({
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"name": format!("{}.{n:x}", s(job, "/metadata/name")), "namespace": &k.2},
                "involvedObject": {"kind": "Job", "apiVersion": "batch/v1", "namespace": &k.2,
                                   "name": job["metadata"]["name"], "uid": &uid},
                "reason": reason, "message": message, "type": kind_of_event,
                "source": {"component": "job-controller"},
                "firstTimestamp": now_rfc3339(), "lastTimestamp": now_rfc3339(), "count": 1,
            });
            let _ = self.create(kind("v1", "Event"), event, "job-controller", false);
            status["conditions"] = json!([cond]);
        }
        let finished = finished_before || status.get("conditions").is_some();
        self.set_status(kind("batch/v1", "Job"), &k.2, &k.3, status);
        if finished {
            let at = *self.job_finished.entry(uid).or_insert(now);
            // The TTL-after-finished controller deletes with Foreground propagation.
            if let Some(ttl) = job["spec"]["ttlSecondsAfterFinished"].as_u64() {
                let due = at + Duration::from_secs(ttl);
                if now >= due {
                    self.delete_key(k, Propagation::Foreground);
                } else {
                    self.wake_at(due, k);
                }
            }
        }
    }

    pub fn nodes(&self) -> Vec<Value> {
        self.list(kind("v1", "Node"), None).into_iter().cloned().collect()
    }

    /// Binds pods without a node to the first node (by name) that fits them. Only pods that
    /// are new are tried, unless capacity was freed or nodes changed (then every one).
    fn schedule(&mut self) {
        let candidates: Vec<Key> = if std::mem::take(&mut self.sched_all) {
            self.unscheduled.iter().cloned().collect()
        } else {
            self.sched_new.iter().cloned().collect()
        };
        self.sched_new.clear();
        if candidates.is_empty() {
            return;
        }
        let nodes = self.nodes();
        // Pods with the same requirements that failed in this pass fail the same way: binding
        // only takes capacity away. Chute pods differ mostly in name, so this saves most work.
        let mut failed: std::collections::HashMap<String, String> = std::collections::HashMap::new();
        for k in candidates {
            let Some(pod) = self.get_key(&k).cloned() else { continue };
            if !s(&pod, "/spec/nodeName").is_empty() || !live(&pod) {
                continue;
            }
            if let Some(message) = self.unbound_claim(&pod, nodes.len()) {
                self.unschedulable(&k, message);
                continue;
            }
            let reqs = pod_requests(&pod);
            let spec = &pod["spec"];
            let signature =
                json!([reqs, spec.get("nodeSelector"), spec.get("affinity"), spec.get("tolerations")])
                    .to_string();
            let outcome = match failed.get(&signature) {
                Some(message) => Err(message.clone()),
                None => self.place(&pod, &reqs, &nodes),
            };
            match outcome {
                Ok(node) => {
                    let mut bound = pod.clone();
                    bound["spec"]["nodeName"] = json!(node);
                    bound["status"] = json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]});
                    // The scheduler checked the fit: the pod counts on its node from now on.
                    self.admitted.insert(s(&pod, "/metadata/uid").to_string());
                    let _ = self.update(pods(), &pod, bound, false);
                }
                Err(message) => {
                    failed.insert(signature, message.clone());
                    self.unschedulable(&k, message);
                }
            }
        }
    }

    fn unschedulable(&mut self, k: &Key, message: String) {
        self.set_status(
            pods(),
            &k.2,
            &k.3,
            json!({"phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
            }]}),
        );
    }

    /// The first node (by name) that takes the pod, or the scheduler's message for why none does.
    fn place(&self, pod: &Value, reqs: &[(String, u128)], nodes: &[Value]) -> Result<String, String> {
        let mut reasons: Vec<String> = Vec::new();
        for node in nodes {
            let why: Vec<String> = if !node_ready(node) {
                vec!["node(s) were not ready".to_string()]
            } else if node.pointer("/spec/unschedulable") == Some(&json!(true)) {
                vec!["node(s) were unschedulable".to_string()]
            } else if let Some(m) = taint_mismatch(&pod["spec"], node) {
                vec![m]
            } else if let Some(m) = placement_mismatch(&pod["spec"], node) {
                vec![m]
            } else {
                self.misfits(reqs, node).into_iter().map(|m| m.reason()).collect()
            };
            if why.is_empty() {
                return Ok(s(node, "/metadata/name").to_string());
            }
            reasons.extend(why);
        }
        if nodes.is_empty() {
            return Err("no nodes available to schedule pods".to_string());
        }
        reasons.sort();
        let mut counted: Vec<(String, usize)> = Vec::new();
        for r in reasons {
            match counted.iter_mut().find(|(x, _)| *x == r) {
                Some((_, c)) => *c += 1,
                None => counted.push((r, 1)),
            }
        }
        let detail: Vec<String> = counted.iter().map(|(r, c)| format!("{c} {r}")).collect();
        Err(format!("0/{} nodes are available: {}.", nodes.len(), detail.join(", ")))
    }

    /// Requests of the pod the node cannot fit next to the pods it already counts.
    fn misfits(&self, reqs: &[(String, u128)], node: &Value) -> Vec<Misfit> {
        let node_name = s(node, "/metadata/name");
        let alloc = node.pointer("/status/allocatable");
        let used = self.usage.get(node_name);
        reqs.iter()
            .filter_map(|(resource, want)| {
                let capacity = alloc.and_then(|a| a.get(resource)).and_then(milli).unwrap_or(0);
                let used = used.and_then(|u| u.get(resource)).copied().unwrap_or(0);
                (used + want > capacity).then(|| Misfit {
                    resource: resource.clone(),
                    want: *want,
                    used,
                    capacity,
                })
            })
            .collect()
    }

    /// The kubelet: admits pods bound to its node (or rejects them, `OutOf<resource>`),
    /// starts them after the start delay once their ServiceAccount, ConfigMaps and Secrets
    /// exist, unless a fault says otherwise, and stops deleted ones.
    fn kubelet(&mut self, k: &Key, pod: &Value) {
        if deleting(pod) {
            self.terminate(k, pod);
            return;
        }
        let node_name = s(pod, "/spec/nodeName").to_string();
        if node_name.is_empty() || terminal(pod) {
            return;
        }
        let Some(node) = self.get(kind("v1", "Node"), "", &node_name).cloned() else {
            return; // bound to a node that does not exist: stays Pending, as on a real cluster
        };
        // The taint manager evicts pods that do not tolerate a NoExecute taint.
        if untolerated(&pod["spec"], &node, &["NoExecute"]).is_some() {
            self.delete_key(k, Propagation::Background);
            return;
        }
        if !node_ready(&node) {
            return;
        }
        let uid = s(pod, "/metadata/uid").to_string();
        if !self.admitted.contains(&uid) {
            if let Some(m) = self.misfits(&pod_requests(pod), &node).into_iter().next() {
                let mut status = pod.get("status").cloned().unwrap_or(json!({}));
                status["phase"] = json!("Failed");
                status["reason"] = json!(format!("OutOf{}", m.resource));
                status["message"] = json!(format!(
                    "Pod was rejected: Node didn't have enough resource: {}, requested: {}, used: {}, capacity: {}",
                    m.resource,
                    m.shown(m.want),
                    m.shown(m.used),
                    m.shown(m.capacity)
                ));
                status["startTime"] = json!(now_rfc3339());
                self.set_status(pods(), &k.2, &k.3, status);
                return;
            }
            self.admitted.insert(uid.clone());
            self.recount_pod(k);
        }
        let seen = *self.pod_seen.entry(uid).or_insert_with(Instant::now);
        if seen.elapsed() < self.pod_start_delay {
            let at = seen + self.pod_start_delay;
            self.wake_at(at, k);
            return;
        }
        let host_ip = node
            .pointer("/status/addresses")
            .and_then(Value::as_array)
            .and_then(|a| a.first())
            .map(|a| a["address"].clone())
            .unwrap_or(json!("127.0.0.1"));
        let names = containers(pod).iter().map(|c| s(c, "/name").to_string()).collect::<Vec<_>>().join(" ");
        let not_ready = |waiting: &[Value], phase: &str| {
            json!({
                "phase": phase,
                "hostIP": host_ip,
                "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Ready", "status": "False", "reason": "ContainersNotReady",
                     "message": format!("containers with unready status: [{names}]")},
                ],
                "containerStatuses": waiting,
            })
        };
        let waiting_all = |reason: &str, message: Option<&str>, crash: bool| -> Vec<Value> {
            containers(pod)
                .iter()
                .map(|c| {
                    let mut w = json!({"reason": reason});
                    if let Some(m) = message {
                        w["message"] = json!(m);
                    }
                    json!({
                        "name": c["name"], "image": c["image"], "imageID": "", "ready": false,
                        "restartCount": if crash { 5 } else { 0 }, "started": false,
                        "state": {"waiting": w},
                    })
                })
                .collect()
        };
        let status = if let Some((reason, message)) = self.missing_dependencies(&k.2, pod) {
            not_ready(&waiting_all(reason, message.as_deref(), false), "Pending")
        } else if let Some(f) = {
            let images: Vec<String> = containers(pod).iter().map(|c| s(c, "/image").to_string()).collect();
            self.faults.iter().find(|f| images.iter().any(|i| i.contains(&f.image))).cloned()
        } {
            let crash = f.reason == "CrashLoopBackOff";
            not_ready(
                &waiting_all(&f.reason, Some(&f.message), crash),
                if crash { "Running" } else { "Pending" },
            )
        } else {
            // With the podman runner on, a pod whose image is in the store runs for real
            // and the runner writes its status from here on.
            if self.runner.is_some() && self.runner_takes(k, pod, &host_ip) {
                return;
            }
            if phase(pod) == "Running" && pod_ready(pod) {
                return;
            }
            let started = now_rfc3339();
            let n = self.next_id();
            let statuses: Vec<Value> = containers(pod)
                .iter()
                .map(|c| {
                    json!({
                        "name": c["name"], "image": c["image"], "imageID": "", "ready": true,
                        "restartCount": 0, "started": true, "state": {"running": {"startedAt": started}},
                    })
                })
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
        };
        if pod.get("status") != Some(&status) {
            self.set_status(pods(), &k.2, &k.3, status);
        }
    }

    /// Why the kubelet cannot start the pod's containers yet: a mounted ConfigMap or Secret
    /// that does not exist (`ContainerCreating`, as volume setup retries), or one that an
    /// environment variable needs (`CreateContainerConfigError`).
    fn missing_dependencies(&self, ns: &str, pod: &Value) -> Option<(&'static str, Option<String>)> {
        let exists = |kd: &str, name: &str| self.get(kind("v1", kd), ns, name).is_some();
        for v in pod.pointer("/spec/volumes").and_then(Value::as_array).into_iter().flatten() {
            if let Some(cm) = v.get("configMap")
                && cm["optional"] != true
                && !exists("ConfigMap", s(cm, "/name"))
            {
                return Some(("ContainerCreating", None));
            }
            if let Some(sec) = v.get("secret")
                && sec["optional"] != true
                && !exists("Secret", s(sec, "/secretName"))
            {
                return Some(("ContainerCreating", None));
            }
        }
        let data_has = |kd: &str, name: &str, key: &str| {
            self.get(kind("v1", kd), ns, name).is_some_and(|o| {
                o.pointer(&format!("/data/{key}")).is_some()
                    || o.pointer(&format!("/stringData/{key}")).is_some()
                    || o.pointer(&format!("/binaryData/{key}")).is_some()
            })
        };
        for c in containers(pod) {
            for from in c.get("envFrom").and_then(Value::as_array).into_iter().flatten() {
                for (field, kd, word) in
                    [("configMapRef", "ConfigMap", "configmap"), ("secretRef", "Secret", "secret")]
                {
                    if let Some(r) = from.get(field)
                        && r["optional"] != true
                        && !exists(kd, s(r, "/name"))
                    {
                        return Some((
                            "CreateContainerConfigError",
                            Some(format!("{word} \"{}\" not found", s(r, "/name"))),
                        ));
                    }
                }
            }
            for e in c.get("env").and_then(Value::as_array).into_iter().flatten() {
                for (field, kd, word) in
                    [("configMapKeyRef", "ConfigMap", "configmap"), ("secretKeyRef", "Secret", "secret")]
                {
                    let Some(r) = e.pointer(&format!("/valueFrom/{field}")) else { continue };
                    if r["optional"] == true {
                        continue;
                    }
                    let (name, key) = (s(r, "/name"), s(r, "/key"));
                    if !exists(kd, name) {
                        return Some((
                            "CreateContainerConfigError",
                            Some(format!("{word} \"{name}\" not found")),
                        ));
                    }
                    if !data_has(kd, name, key) {
                        return Some((
                            "CreateContainerConfigError",
                            Some(format!("couldn't find key {key} in {kd} {ns}/{name}")),
                        ));
                    }
                }
            }
        }
        None
    }

    /// A deleted pod: stopped at once unless terminations are held (then at the end of its
    /// grace period); a pod on a node that is not Ready stays Terminating.
    fn terminate(&mut self, k: &Key, pod: &Value) {
        let node_name = s(pod, "/spec/nodeName").to_string();
        match self.get(kind("v1", "Node"), "", &node_name) {
            Some(n) if !node_ready(n) => return,
            _ => {}
        }
        if !terminal(pod) {
            let exists = !node_name.is_empty() && self.get(kind("v1", "Node"), "", &node_name).is_some();
            let ends = self.grace_ends.get(k).copied();
            let due = ends.is_none_or(|e| e <= Instant::now());
            if exists && self.hold_terminations && !due {
                if let Some(e) = ends {
                    self.wake_at(e, k);
                }
                return;
            }
        }
        self.stop_pod(k, pod);
    }

    /// The kubelet confirms a termination: the pod goes, or (with finalizers left) stays
    /// as Failed until they are removed.
    pub fn stop_pod(&mut self, k: &Key, pod: &Value) {
        if finalizers(pod).is_empty() {
            self.remove(k);
        } else if !terminal(pod) {
            let mut status = pod.get("status").cloned().unwrap_or(json!({}));
            status["phase"] = json!("Failed");
            status["conditions"] = json!([
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": "False", "reason": "PodCompleted"},
            ]);
            self.set_status(pods(), &k.2, &k.3, status);
        }
    }

    /// Ends a terminating pod's grace period now. False when no such pod is terminating.
    pub fn finish_termination(&mut self, ns: &str, name: &str) -> bool {
        let k = crate::store::key(pods(), ns, name);
        match self.get_key(&k).cloned() {
            Some(p) if deleting(&p) => {
                self.stop_pod(&k, &p);
                true
            }
            _ => false,
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
        self.set_status(pods(), ns, name, status)
    }
}

/// A resource a node cannot fit.
struct Misfit {
    resource: String,
    want: u128,
    used: u128,
    capacity: u128,
}

impl Misfit {
    fn reason(&self) -> String {
        if self.resource == "pods" {
            "Too many pods".into()
        } else {
            format!("Insufficient {}", self.resource)
        }
    }
    /// As the kubelet prints quantities: CPU in millicores, everything else in units.
    fn shown(&self, q: u128) -> u128 {
        if self.resource == "cpu" { q } else { q / 1000 }
    }
}

fn ordinal(p: &Value) -> Option<usize> {
    s(p, "/metadata/name").rsplit('-').next().and_then(|o| o.parse::<usize>().ok())
}

fn containers(pod: &Value) -> &[Value] {
    pod.pointer("/spec/containers").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default()
}

/// What a pod takes from its node, in milli-units: each resource's requests (or limits when
/// no request) summed over the containers, and one `pods` slot.
pub fn pod_requests(pod: &Value) -> Vec<(String, u128)> {
    let mut out: Vec<(String, u128)> = vec![("pods".into(), 1000)];
    for c in containers(pod) {
        let req = c.pointer("/resources/requests").and_then(Value::as_object);
        let lim = c.pointer("/resources/limits").and_then(Value::as_object);
        let mut names: Vec<&String> = req.into_iter().chain(lim).flat_map(|m| m.keys()).collect();
        names.sort();
        names.dedup();
        for r in names {
            let q = req
                .and_then(|m| m.get(r))
                .or_else(|| lim.and_then(|m| m.get(r)))
                .and_then(milli)
                .unwrap_or(0);
            if q == 0 {
                continue;
            }
            match out.iter_mut().find(|(n, _)| n == r) {
                Some((_, x)) => *x += q,
                None => out.push((r.clone(), q)),
            }
        }
    }
    out
}

/// The first NoSchedule/NoExecute taint of the node the pod does not tolerate, worded as
/// the scheduler words it.
pub fn taint_mismatch(spec: &Value, node: &Value) -> Option<String> {
    untolerated(spec, node, &["NoSchedule", "NoExecute"])
        .map(|t| format!("node(s) had untolerated taint {{{}: {}}}", s(t, "/key"), s(t, "/value")))
}

/// The first taint of the node with one of these effects that the pod does not tolerate.
fn untolerated<'a>(spec: &Value, node: &'a Value, effects: &[&str]) -> Option<&'a Value> {
    let tolerations =
        spec.get("tolerations").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    node.pointer("/spec/taints")
        .and_then(Value::as_array)?
        .iter()
        .filter(|t| effects.contains(&s(t, "/effect")))
        .find(|t| !tolerations.iter().any(|tol| tolerates(tol, t)))
}

fn tolerates(tol: &Value, taint: &Value) -> bool {
    let effect = s(tol, "/effect");
    if !effect.is_empty() && effect != s(taint, "/effect") {
        return false;
    }
    let key = s(tol, "/key");
    match s(tol, "/operator") {
        "Exists" => key.is_empty() || key == s(taint, "/key"),
        _ => key == s(taint, "/key") && s(tol, "/value") == s(taint, "/value"),
    }
}

/// Why a pod spec's nodeSelector / required node affinity rejects a node, if it does.
pub fn placement_mismatch(spec: &Value, node: &Value) -> Option<String> {
    let labels = node.pointer("/metadata/labels");
    let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str).map(str::to_string);
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
