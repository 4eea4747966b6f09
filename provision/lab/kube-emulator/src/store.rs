//! The emulator's state: objects, the resourceVersion clock, the watch event log, and the
//! write operations every path (HTTP handlers, controllers, the Rust API) goes through, so
//! each change bumps the clock once and is seen by watchers exactly once.
//!
//! Every stored change also goes through [`State::observe`], which keeps the indexes the
//! controllers need (owner → dependents, uid → object, node usage, unscheduled pods) and
//! marks what the change concerns as dirty. Controllers then look at dirty objects only, so
//! a write costs about the size of what it touches, not jobs × pods.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::apply;
use crate::kinds::{self, Kind};
use crate::util::{now_rfc3339, rfc3339_in, short_hash};

/// How many watch events are kept by default for resuming from an older resourceVersion.
const EVENT_LOG: usize = 10_000;

/// The `kind` of the internal event that ends every open watch stream.
pub const CLOSE_WATCHES: &str = "CLOSE";

/// The finalizer foreground deletion puts on an owner until its dependents are gone.
pub const FOREGROUND: &str = "foregroundDeletion";

/// (group, plural, namespace or "", name)
pub type Key = (String, String, String, String);

pub fn key(kind: &Kind, ns: &str, name: &str) -> Key {
    (
        kind.group.to_string(),
        kind.plural.to_string(),
        if kind.namespaced { ns.to_string() } else { String::new() },
        name.to_string(),
    )
}

/// The kind a key belongs to.
pub fn kind_of(k: &Key) -> Option<&'static Kind> {
    kinds::KINDS.iter().find(|x| x.group == k.0 && x.plural == k.1)
}

#[derive(Debug, Clone)]
pub struct WatchEvent {
    pub rv: u64,
    pub group: String,
    pub plural: String,
    pub namespace: String,
    pub kind: &'static str,
    pub object: Value,
    /// The version before a MODIFIED change: a watch with a selector needs it to tell
    /// "stopped matching" (DELETED) and "started matching" (ADDED) from a plain change.
    pub previous: Option<Value>,
}

/// An error the API returns as a `Status`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError { code, reason, message: message.into(), details: None }
    }
    pub fn not_found(kind: &Kind, name: &str) -> Self {
        ApiError::new(404, "NotFound", format!("{} \"{name}\" not found", qualified_plural(kind)))
            .with_details(kind, name, Vec::new())
    }
    /// 422 with one cause per (field, message), worded as the real server words them:
    /// `Job.batch "x" is invalid: spec.template: Invalid value: ...`.
    pub fn invalid(kind: &Kind, name: &str, causes: Vec<(String, String)>) -> Self {
        // The real server prints each distinct error once.
        let mut list: Vec<String> = Vec::new();
        for (f, m) in &causes {
            let line = format!("{f}: {m}");
            if !list.contains(&line) {
                list.push(line);
            }
        }
        let joined = if list.len() == 1 { list[0].clone() } else { format!("[{}]", list.join(", ")) };
        let kind_name = if kind.group.is_empty() {
            kind.kind.to_string()
        } else {
            format!("{}.{}", kind.kind, kind.group)
        };
        let causes = causes
            .into_iter()
            .map(|(field, message)| {
                let reason = if message.starts_with("Required value") {
                    "FieldValueRequired"
                } else if message.starts_with("Forbidden") {
                    "FieldValueForbidden"
                } else {
                    "FieldValueInvalid"
                };
                json!({"reason": reason, "message": message, "field": field})
            })
            .collect();
        ApiError::new(422, "Invalid", format!("{kind_name} \"{name}\" is invalid: {joined}"))
            .with_details(kind, name, causes)
    }
    fn with_details(mut self, kind: &Kind, name: &str, causes: Vec<Value>) -> Self {
        let mut d = json!({"name": name, "group": kind.group, "kind": if self.code == 422 { kind.kind } else { kind.plural }});
        if !causes.is_empty() {
            d["causes"] = Value::Array(causes);
        }
        self.details = Some(d);
        self
    }
    pub fn status(&self) -> Value {
        let mut v = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message, "reason": self.reason, "code": self.code,
        });
        if let Some(d) = &self.details {
            v["details"] = d.clone();
        }
        v
    }
}

/// `configmaps` for core kinds, `jobs.batch` otherwise (no stray dot).
pub fn qualified_plural(kind: &Kind) -> String {
    if kind.group.is_empty() { kind.plural.to_string() } else { format!("{}.{}", kind.plural, kind.group) }
}

/// Injected trouble for pods whose container image contains `image`.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub image: String,
    /// `ErrImagePull`, `ImagePullBackOff`, `CrashLoopBackOff`, ...
    pub reason: String,
    pub message: String,
}

/// `propagationPolicy` of a delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Propagation {
    /// What the kind defaults to: Orphan for batch/v1 Jobs, Background otherwise.
    #[default]
    Default,
    Orphan,
    Background,
    Foreground,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct DeleteOptions {
    pub propagation: Propagation,
    /// `gracePeriodSeconds`; None: the pod's own `terminationGracePeriodSeconds`.
    pub grace: Option<u64>,
    pub dry_run: bool,
}

pub struct State {
    objects: BTreeMap<Key, Value>,
    pub rv: u64,
    counter: u64,
    events: VecDeque<Arc<WatchEvent>>,
    /// Events with rv <= this were dropped from the log.
    pub compacted_rv: u64,
    pub tx: broadcast::Sender<Arc<WatchEvent>>,
    pub faults: Vec<Fault>,
    pub pod_start_delay: Duration,
    pub requests: Vec<String>,
    /// When the kubelet first saw each pod (by uid), for the start delay.
    pub pod_seen: HashMap<String, Instant>,
    /// What `pods/{name}/log` returns, by (namespace, name).
    pub pod_logs: BTreeMap<(String, String), String>,
    /// Events kept for resuming watches (older ones answer 410 Expired).
    pub watch_history: usize,
    /// uid → key of every stored object.
    by_uid: HashMap<String, Key>,
    /// Owner uid → keys of the objects whose ownerReferences name it.
    dependents: HashMap<String, BTreeSet<Key>>,
    /// Objects a controller must look at again.
    pub dirty: BTreeSet<Key>,
    /// Pods without a node that the scheduler has not bound yet.
    pub unscheduled: BTreeSet<Key>,
    /// Unscheduled pods the scheduler has not tried since they appeared.
    pub sched_new: BTreeSet<Key>,
    /// Capacity was freed or nodes changed: try every unscheduled pod again.
    pub sched_all: bool,
    /// Per node: what its admitted, live pods request (milli-units), by resource.
    pub usage: HashMap<String, BTreeMap<String, u128>>,
    /// What each counted pod contributes to `usage`: (node, requests).
    pod_usage: HashMap<Key, (String, Vec<(String, u128)>)>,
    /// Pods the kubelet (or the scheduler, by binding) admitted to their node, by uid.
    pub admitted: HashSet<String>,
    /// Wake-ups: (when, object) for start delays, grace periods and Job deadlines.
    pub timers: BTreeSet<(Instant, Key)>,
    /// When a terminating pod's grace period ends, by key.
    pub grace_ends: HashMap<Key, Instant>,
    /// Deleted pods stay Terminating until their grace period ends (or a test finishes them).
    pub hold_terminations: bool,
    /// When each Job started and finished (uid), for activeDeadlineSeconds and the TTL.
    pub job_started: HashMap<String, Instant>,
    pub job_finished: HashMap<String, Instant>,
    /// How long each write request held the state (handling plus reconcile), newest last.
    pub write_costs: VecDeque<Duration>,
    /// The podman runner's share of the kubelet; None: every pod is simulated.
    pub runner: Option<crate::runner::Link>,
}

fn uid_of(v: &Value) -> &str {
    v.pointer("/metadata/uid").and_then(Value::as_str).unwrap_or_default()
}

fn owner_uids(v: Option<&Value>) -> Vec<String> {
    v.and_then(|v| v.pointer("/metadata/ownerReferences"))
        .and_then(Value::as_array)
        .map(|refs| refs.iter().filter_map(|r| r["uid"].as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

pub fn deleting(v: &Value) -> bool {
    v.pointer("/metadata/deletionTimestamp").is_some_and(|t| !t.is_null())
}

pub fn finalizers(v: &Value) -> Vec<String> {
    v.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|f| f.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

fn pod_terminal(p: &Value) -> bool {
    matches!(p.pointer("/status/phase").and_then(Value::as_str), Some("Succeeded" | "Failed"))
}

fn node_name(p: &Value) -> &str {
    p.pointer("/spec/nodeName").and_then(Value::as_str).unwrap_or_default()
}

/// Kinds a controller of the emulator acts on.
fn controlled(kind: &Kind) -> bool {
    matches!(
        kind.kind,
        "Deployment" | "StatefulSet" | "DaemonSet" | "Job" | "Pod" | "Namespace" | "PersistentVolumeClaim"
    )
}

impl State {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(65_536);
        let mut s = State {
            objects: BTreeMap::new(),
            rv: 0,
            counter: 0,
            events: VecDeque::new(),
            compacted_rv: 0,
            tx,
            faults: Vec::new(),
            pod_start_delay: Duration::ZERO,
            requests: Vec::new(),
            pod_seen: HashMap::new(),
            pod_logs: BTreeMap::new(),
            watch_history: EVENT_LOG,
            by_uid: HashMap::new(),
            dependents: HashMap::new(),
            dirty: BTreeSet::new(),
            unscheduled: BTreeSet::new(),
            sched_new: BTreeSet::new(),
            sched_all: false,
            usage: HashMap::new(),
            pod_usage: HashMap::new(),
            admitted: HashSet::new(),
            timers: BTreeSet::new(),
            grace_ends: HashMap::new(),
            hold_terminations: false,
            job_started: HashMap::new(),
            job_finished: HashMap::new(),
            write_costs: VecDeque::new(),
            runner: None,
        };
        // What every cluster has.
        for ns in ["default", "kube-system", "kube-public"] {
            let _ = s.create(
                kind("v1", "Namespace"),
                json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}),
                "emulator",
                false,
            );
        }
        s.reconcile();
        s
    }

    pub fn record_write_cost(&mut self, cost: Duration) {
        if self.write_costs.len() >= 100_000 {
            self.write_costs.pop_front();
        }
        self.write_costs.push_back(cost);
    }

    pub fn next_id(&mut self) -> u64 {
        self.counter += 1;
        self.counter
    }

    pub fn uid(&mut self) -> String {
        format!("00000000-0000-4000-8000-{:012x}", self.next_id())
    }

    pub fn get(&self, kind: &Kind, ns: &str, name: &str) -> Option<&Value> {
        self.objects.get(&key(kind, ns, name))
    }

    pub fn get_key(&self, k: &Key) -> Option<&Value> {
        self.objects.get(k)
    }

    /// Keys of the objects that name `uid` as an owner.
    pub fn dependents_of(&self, uid: &str) -> Vec<Key> {
        self.dependents.get(uid).map(|s| s.iter().cloned().collect()).unwrap_or_default()
    }

    /// All objects of a kind, in one namespace or (None) everywhere, ordered by namespace/name.
    pub fn list(&self, kind: &Kind, ns: Option<&str>) -> Vec<&Value> {
        self.list_keyed(kind, ns).into_iter().map(|(_, v)| v).collect()
    }

    /// As `list`, with keys; a range scan of the ordered map, not a pass over everything.
    pub fn list_keyed(&self, kind: &Kind, ns: Option<&str>) -> Vec<(&Key, &Value)> {
        let ns = if kind.namespaced { ns } else { None };
        let start: Key = (
            kind.group.to_string(),
            kind.plural.to_string(),
            ns.unwrap_or_default().to_string(),
            String::new(),
        );
        self.objects
            .range(start..)
            .take_while(|((g, p, n, _), _)| {
                g == kind.group && p == kind.plural && ns.is_none_or(|ns| n == ns)
            })
            .collect()
    }

    /// Log and broadcast one change.
    fn emit(&mut self, kind: &Kind, event: &'static str, object: &Value, previous: Option<&Value>) {
        let ev = Arc::new(WatchEvent {
            rv: self.rv,
            group: kind.group.to_string(),
            plural: kind.plural.to_string(),
            namespace: object
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            kind: event,
            object: object.clone(),
            previous: previous.cloned(),
        });
        self.events.push_back(ev.clone());
        while self.events.len() > self.watch_history {
            if let Some(old) = self.events.pop_front() {
                self.compacted_rv = old.rv;
            }
        }
        // No receivers is fine.
        let _ = self.tx.send(ev);
    }

    /// Ends every open watch stream, as an API server restart would.
    pub fn close_watches(&mut self) {
        let _ = self.tx.send(Arc::new(WatchEvent {
            rv: u64::MAX,
            group: String::new(),
            plural: String::new(),
            namespace: String::new(),
            kind: CLOSE_WATCHES,
            object: Value::Null,
            previous: None,
        }));
    }

    /// Keeps only the last `n` events (at least 1); compacts at once.
    pub fn set_watch_history(&mut self, n: usize) {
        self.watch_history = n.max(1);
        while self.events.len() > self.watch_history {
            if let Some(old) = self.events.pop_front() {
                self.compacted_rv = old.rv;
            }
        }
    }

    /// Events after `rv`, or None when some of them were compacted away (410 Gone).
    pub fn events_since(&self, rv: u64) -> Option<Vec<Arc<WatchEvent>>> {
        if rv < self.compacted_rv {
            return None;
        }
        let first = self.events.partition_point(|e| e.rv <= rv);
        Some(self.events.range(first..).cloned().collect())
    }

    fn check_namespace(&self, kind: &Kind, ns: &str, name: &str) -> Result<(), ApiError> {
        if !kind.namespaced {
            return Ok(());
        }
        match self.get(crate::store::kind("v1", "Namespace"), "", ns) {
            None => Err(ApiError::new(404, "NotFound", format!("namespaces \"{ns}\" not found"))),
            Some(n) if deleting(n) => Err(ApiError::new(
                403,
                "Forbidden",
                format!(
                    "{} \"{name}\" is forbidden: unable to create new content in namespace {ns} because it is being terminated",
                    qualified_plural(kind),
                ),
            )),
            Some(_) => Ok(()),
        }
    }

    /// Fills identity metadata, defaults, checks and (unless dry-run) stores a new object.
    pub fn create(
        &mut self,
        kind: &Kind,
        mut obj: Value,
        manager: &str,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        prepare_body(kind, &mut obj)?;
        let meta = obj["metadata"].as_object_mut().ok_or_else(bad_metadata)?;
        if meta.get("name").and_then(Value::as_str).unwrap_or_default().is_empty() {
            let Some(prefix) = meta.get("generateName").and_then(Value::as_str) else {
                return Err(ApiError::invalid(
                    kind,
                    "",
                    vec![("metadata.name".into(), "Required value: name or generateName is required".into())],
                ));
            };
            let name = format!("{prefix}{}", &short_hash(&json!(self.counter + 1))[..5]);
            meta.insert("name".into(), json!(name));
            self.counter += 1;
        }
        let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
        crate::validate::name(kind, &name)?;
        self.check_namespace(kind, &ns, &name)?;
        if self.get(kind, &ns, &name).is_some() {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{name}\" already exists", qualified_plural(kind)),
            )
            .with_details(kind, &name, Vec::new()));
        }
        if !obj["metadata"].get("managedFields").is_some_and(Value::is_array) {
            apply::record_update(None, &mut obj, manager, None);
        }
        let uid = self.uid();
        let meta = obj["metadata"].as_object_mut().ok_or_else(bad_metadata)?;
        meta.insert("uid".into(), json!(uid));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        meta.remove("deletionTimestamp");
        meta.remove("deletionGracePeriodSeconds");
        if kind.has_generation() {
            meta.insert("generation".into(), json!(1));
        } else {
            meta.remove("generation");
        }
        crate::defaults::apply_defaults(self, kind, None, &mut obj)?;
        crate::validate::object(self, kind, None, &obj)?;
        if kind.kind == "Pod" {
            self.admit_service_account(&ns, &name, &obj)?;
        }
        if dry_run {
            obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
            return Ok(obj);
        }
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let k = key(kind, &ns, &name);
        self.objects.insert(k.clone(), obj.clone());
        self.emit(kind, "ADDED", &obj, None);
        self.observe(kind, &k, None, Some(&obj));
        Ok(obj)
    }

    /// The ServiceAccount admission plugin: a pod naming a ServiceAccount that does not
    /// exist is refused (controllers retry when it appears).
    fn admit_service_account(&self, ns: &str, name: &str, pod: &Value) -> Result<(), ApiError> {
        let sa = pod.pointer("/spec/serviceAccountName").and_then(Value::as_str).unwrap_or_default();
        if sa.is_empty() || self.get(kind("v1", "ServiceAccount"), ns, sa).is_some() {
            return Ok(());
        }
        Err(ApiError::new(
            403,
            "Forbidden",
            format!(
                "pods \"{name}\" is forbidden: error looking up service account {ns}/{sa}: serviceaccount \"{sa}\" not found"
            ),
        ))
    }

    /// Stores a new version of an existing object. A version equal to the stored one
    /// (ignoring managedFields timestamps) changes nothing: same resourceVersion, no event.
    pub fn update(
        &mut self,
        kind: &Kind,
        old: &Value,
        mut new: Value,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let meta = new["metadata"].as_object_mut().ok_or_else(bad_metadata)?;
        for k in [
            "uid",
            "creationTimestamp",
            "name",
            "namespace",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ] {
            match old["metadata"].get(k) {
                Some(v) => {
                    meta.insert(k.into(), v.clone());
                }
                None => {
                    meta.remove(k);
                }
            }
        }
        crate::defaults::apply_defaults(self, kind, Some(old), &mut new)?;
        let mut new_cmp = new.clone();
        let mut old_cmp = old.clone();
        for v in [&mut new_cmp, &mut old_cmp] {
            strip_volatile(v);
        }
        if new_cmp == old_cmp {
            return Ok(old.clone());
        }
        let name = new["metadata"]["name"].as_str().unwrap_or_default().to_string();
        crate::validate::object(self, kind, Some(old), &new)?;
        if deleting(old) {
            let added: Vec<String> =
                finalizers(&new).into_iter().filter(|f| !finalizers(old).contains(f)).collect();
            if !added.is_empty() {
                return Err(ApiError::invalid(
                    kind,
                    &name,
                    vec![(
                        "metadata.finalizers".into(),
                        format!(
                            "Forbidden: no new finalizers can be added if the object is being deleted, found new finalizers []string{{\"{}\"}}",
                            added.join("\", \"")
                        ),
                    )],
                ));
            }
        }
        let spec_changed = {
            let body = |v: &Value| {
                let mut v = v.clone();
                if let Some(m) = v.as_object_mut() {
                    m.remove("metadata");
                    m.remove("status");
                }
                v
            };
            body(old) != body(&new)
        };
        if spec_changed && kind.has_generation() {
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
            new["metadata"]["generation"] = json!(generation);
        }
        if dry_run {
            return Ok(new);
        }
        self.rv += 1;
        new["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let ns = new["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
        let k = key(kind, &ns, &name);
        self.objects.insert(k.clone(), new.clone());
        self.emit(kind, "MODIFIED", &new, Some(old));
        self.observe(kind, &k, Some(old), Some(&new));
        Ok(new)
    }

    /// Changes only `.status` (what controllers and the kubelet write).
    pub fn set_status(&mut self, kind: &Kind, ns: &str, name: &str, status: Value) -> bool {
        let Some(old) = self.get(kind, ns, name).cloned() else {
            return false;
        };
        if old.get("status") == Some(&status) {
            return false;
        }
        let mut new = old.clone();
        new["status"] = status;
        self.update(kind, &old, new, false).is_ok()
    }

    /// A delete request: graceful for pods on a node, through `Terminating` for namespaces,
    /// kept while finalizers remain, dependents orphaned or deleted as the policy says.
    pub fn delete(
        &mut self,
        kind: &Kind,
        ns: &str,
        name: &str,
        opts: DeleteOptions,
    ) -> Result<Value, ApiError> {
        let k = key(kind, ns, name);
        let Some(obj) = self.objects.get(&k).cloned() else {
            return Err(ApiError::not_found(kind, name));
        };
        if opts.dry_run {
            return Ok(obj);
        }
        let is_pod = kind.kind == "Pod";
        if deleting(&obj) {
            // Already going; a pod deleted again with grace 0 goes now (kubectl --force).
            if is_pod && opts.grace == Some(0) && finalizers(&obj).is_empty() {
                return Ok(self.remove(&k).unwrap_or(obj));
            }
            return Ok(obj);
        }
        let propagation = match opts.propagation {
            Propagation::Default if kind.kind == "Job" => Propagation::Orphan,
            Propagation::Default => Propagation::Background,
            p => p,
        };
        let uid = uid_of(&obj).to_string();
        if propagation == Propagation::Orphan {
            self.orphan_dependents(&uid);
        }
        let has_dependents = self.dependents.get(&uid).is_some_and(|d| !d.is_empty());
        let foreground = propagation == Propagation::Foreground && has_dependents;
        let node = node_name(&obj).to_string();
        let node_exists = !node.is_empty() && self.get(crate::store::kind("v1", "Node"), "", &node).is_some();
        let graceful_pod = is_pod && node_exists && !pod_terminal(&obj) && opts.grace != Some(0);
        let namespace = kind.kind == "Namespace";
        if !(graceful_pod || namespace || foreground || !finalizers(&obj).is_empty()) {
            return Ok(self.remove(&k).unwrap_or(obj));
        }
        let grace = if graceful_pod {
            opts.grace
                .or_else(|| obj.pointer("/spec/terminationGracePeriodSeconds").and_then(Value::as_u64))
                .unwrap_or(30)
        } else {
            0
        };
        let mut new = obj.clone();
        new["metadata"]["deletionTimestamp"] = json!(rfc3339_in(grace));
        new["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
        if foreground {
            let mut f = finalizers(&obj);
            f.push(FOREGROUND.into());
            new["metadata"]["finalizers"] = json!(f);
        }
        if namespace {
            new["spec"]["finalizers"] = json!(["kubernetes"]);
            new["status"]["phase"] = json!("Terminating");
        }
        if graceful_pod {
            let ends = Instant::now() + Duration::from_secs(grace);
            self.grace_ends.insert(k.clone(), ends);
        }
        // The deletion fields are the server's: `update` keeps the old ones, so store directly.
        self.rv += 1;
        new["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.objects.insert(k.clone(), new.clone());
        self.emit(kind, "MODIFIED", &new, Some(&obj));
        self.observe(kind, &k, Some(&obj), Some(&new));
        if foreground {
            for d in self.dependents_of(&uid) {
                self.delete_key(&d, Propagation::Background);
            }
        }
        Ok(new)
    }

    /// Deletes by key with default grace (what the garbage collector and controllers do).
    pub fn delete_key(&mut self, k: &Key, propagation: Propagation) {
        if let Some(kind) = kind_of(k) {
            let opts = DeleteOptions { propagation, ..DeleteOptions::default() };
            let _ = self.delete(kind, &k.2, &k.3, opts);
        }
    }

    /// The garbage collector's orphaning: dependents lose their reference to `uid`.
    fn orphan_dependents(&mut self, uid: &str) {
        for d in self.dependents_of(uid) {
            let (Some(kind), Some(old)) = (kind_of(&d), self.objects.get(&d).cloned()) else { continue };
            let mut new = old.clone();
            if let Some(refs) = new.pointer_mut("/metadata/ownerReferences").and_then(Value::as_array_mut) {
                refs.retain(|r| r["uid"] != json!(uid));
                if refs.is_empty()
                    && let Some(m) = new["metadata"].as_object_mut()
                {
                    m.remove("ownerReferences");
                }
            }
            let _ = self.update(kind, &old, new, false);
        }
    }

    /// Takes an object out of the store for good; what it owned is deleted in the
    /// background, as the garbage collector does once the owner is gone.
    pub fn remove(&mut self, k: &Key) -> Option<Value> {
        let kind = kind_of(k)?;
        let obj = self.objects.remove(k)?;
        self.rv += 1;
        let mut gone = obj.clone();
        gone["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.emit(kind, "DELETED", &gone, None);
        self.observe(kind, k, Some(&obj), None);
        let uid = uid_of(&obj).to_string();
        for d in self.dependents_of(&uid) {
            self.delete_key(&d, Propagation::Background);
        }
        Some(gone)
    }

    /// Keeps the indexes current and marks what a change concerns as dirty.
    fn observe(&mut self, kind: &Kind, k: &Key, old: Option<&Value>, new: Option<&Value>) {
        if let (Some(o), None) = (old, new) {
            self.by_uid.remove(uid_of(o));
        }
        if let Some(n) = new {
            self.by_uid.insert(uid_of(n).to_string(), k.clone());
        }
        let before = owner_uids(old);
        let after = owner_uids(new);
        for u in &before {
            if !after.contains(u)
                && let Some(set) = self.dependents.get_mut(u)
            {
                set.remove(k);
                if set.is_empty() {
                    self.dependents.remove(u);
                }
            }
        }
        for u in &after {
            self.dependents.entry(u.clone()).or_default().insert(k.clone());
        }
        for u in before.iter().chain(&after) {
            if let Some(owner) = self.by_uid.get(u) {
                self.dirty.insert(owner.clone());
            }
        }
        if let Some(n) = new
            && (controlled(kind) || deleting(n))
        {
            self.dirty.insert(k.clone());
        }
        match kind.kind {
            "Pod" => self.observe_pod(k, old, new),
            "Node" => {
                self.sched_all = true;
                let name = &k.3;
                let mut wake: Vec<Key> = self
                    .list_keyed(kind_const("DaemonSet"), None)
                    .into_iter()
                    .map(|(k, _)| k.clone())
                    .collect();
                wake.extend(
                    self.list_keyed(kind_const("Pod"), None)
                        .into_iter()
                        .filter(|(_, p)| node_name(p) == name)
                        .map(|(k, _)| k.clone()),
                );
                self.dirty.extend(wake);
            }
            "StorageClass" => {
                // Claims waiting for a class look again.
                let wake: Vec<Key> = self
                    .list_keyed(kind_const("PersistentVolumeClaim"), None)
                    .into_iter()
                    .map(|(k, _)| k.clone())
                    .collect();
                self.dirty.extend(wake);
            }
            "ServiceAccount" | "ConfigMap" | "Secret" => {
                let ns = k.2.clone();
                let mut wake: Vec<Key> = Vec::new();
                if kind.kind == "ServiceAccount" && old.is_none() {
                    // Controllers whose pods admission refused try again.
                    for kd in ["Deployment", "StatefulSet", "DaemonSet", "Job"] {
                        wake.extend(
                            self.list_keyed(kind_const(kd), Some(&ns)).into_iter().map(|(k, _)| k.clone()),
                        );
                    }
                } else {
                    // Pods waiting for a volume or an env reference look again.
                    wake.extend(
                        self.list_keyed(kind_const("Pod"), Some(&ns))
                            .into_iter()
                            .filter(|(_, p)| {
                                p.pointer("/status/phase").and_then(Value::as_str) == Some("Pending")
                            })
                            .map(|(k, _)| k.clone()),
                    );
                }
                self.dirty.extend(wake);
            }
            _ => {}
        }
        if new.is_none() && kind.namespaced {
            // A terminating namespace waits for its last object.
            let nk = key(kind_const("Namespace"), "", &k.2);
            if self.objects.get(&nk).is_some_and(deleting) {
                self.dirty.insert(nk);
            }
        }
    }

    /// Counts a pod the kubelet just admitted on its node.
    pub fn recount_pod(&mut self, k: &Key) {
        if let Some(p) = self.objects.get(k).cloned() {
            self.observe_pod(k, Some(&p), Some(&p));
        }
    }

    /// Marks every object of a kind dirty (after a change of faults or delays).
    pub fn mark_all(&mut self, kind: &Kind) {
        let keys: Vec<Key> = self.list_keyed(kind, None).into_iter().map(|(k, _)| k.clone()).collect();
        self.dirty.extend(keys);
    }

    fn observe_pod(&mut self, k: &Key, old: Option<&Value>, new: Option<&Value>) {
        let freed = if let Some((node, reqs)) = self.pod_usage.remove(k) {
            if let Some(u) = self.usage.get_mut(&node) {
                for (r, q) in &reqs {
                    if let Some(x) = u.get_mut(r) {
                        *x = x.saturating_sub(*q);
                    }
                }
            }
            true
        } else {
            false
        };
        let counted =
            new.filter(|p| !node_name(p).is_empty() && !pod_terminal(p) && self.admitted.contains(uid_of(p)));
        if let Some(p) = counted {
            let node = node_name(p).to_string();
            let reqs = crate::controllers::pod_requests(p);
            let u = self.usage.entry(node.clone()).or_default();
            for (r, q) in &reqs {
                *u.entry(r.clone()).or_default() += q;
            }
            self.pod_usage.insert(k.clone(), (node, reqs));
        } else if freed {
            self.sched_all = true;
        }
        match new {
            Some(p) if node_name(p).is_empty() && !pod_terminal(p) && !deleting(p) => {
                if self.unscheduled.insert(k.clone()) {
                    self.sched_new.insert(k.clone());
                }
            }
            _ => {
                self.unscheduled.remove(k);
                self.sched_new.remove(k);
            }
        }
        if new.is_none() {
            if let Some(o) = old {
                let uid = uid_of(o).to_string();
                self.admitted.remove(&uid);
                self.pod_seen.remove(&uid);
            }
            self.grace_ends.remove(k);
        }
    }
}

fn kind_const(k: &str) -> &'static Kind {
    kinds::KINDS.iter().find(|x| x.kind == k).unwrap_or(&kinds::KINDS[0])
}

impl Default for State {
    fn default() -> Self {
        State::new()
    }
}

fn bad_metadata() -> ApiError {
    ApiError::new(400, "BadRequest", "object has no metadata")
}

/// A kind known to exist in the table (used for built-in lookups).
pub fn kind(api_version: &str, kind: &str) -> &'static Kind {
    kinds::by_kind(api_version, kind).unwrap_or(&kinds::KINDS[0])
}

/// apiVersion/kind filled or checked against the URL, metadata present.
pub fn prepare_body(kind: &Kind, obj: &mut Value) -> Result<(), ApiError> {
    let Some(m) = obj.as_object_mut() else {
        return Err(ApiError::new(400, "BadRequest", "the body is not a JSON object"));
    };
    let av = m.get("apiVersion").and_then(Value::as_str).map(str::to_string);
    let k = m.get("kind").and_then(Value::as_str).map(str::to_string);
    if av.as_deref().is_some_and(|a| a != kind.api_version()) || k.as_deref().is_some_and(|x| x != kind.kind)
    {
        return Err(ApiError::new(
            400,
            "BadRequest",
            format!(
                "the API version/kind in the body ({}/{}) does not match the URL ({}/{})",
                av.unwrap_or_default(),
                k.unwrap_or_default(),
                kind.api_version(),
                kind.kind
            ),
        ));
    }
    m.insert("apiVersion".into(), json!(kind.api_version()));
    m.insert("kind".into(), json!(kind.kind));
    if !m.get("metadata").is_some_and(Value::is_object) {
        m.insert("metadata".into(), json!({}));
    }
    Ok(())
}

/// Timestamps and the resourceVersion do not make two versions different.
fn strip_volatile(v: &mut Value) {
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("resourceVersion");
        if let Some(Value::Array(list)) = meta.get_mut("managedFields") {
            for e in list {
                if let Some(e) = e.as_object_mut() {
                    e.remove("time");
                }
            }
        }
    }
}
