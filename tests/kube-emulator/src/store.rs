//! The emulator's state: objects, the resourceVersion clock, the watch event log, and the
//! write operations every path (HTTP handlers, controllers, the Rust API) goes through, so
//! each change bumps the clock once and is seen by watchers exactly once.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::broadcast;

use crate::apply;
use crate::kinds::{self, Kind};
use crate::util::{now_rfc3339, short_hash};

/// How many watch events are kept by default for resuming from an older resourceVersion.
const EVENT_LOG: usize = 10_000;

/// The `kind` of the internal event that ends every open watch stream.
pub const CLOSE_WATCHES: &str = "CLOSE";

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

#[derive(Debug, Clone)]
pub struct WatchEvent {
    pub rv: u64,
    pub group: String,
    pub plural: String,
    pub namespace: String,
    pub kind: &'static str,
    pub object: Value,
}

/// An error the API returns as a `Status`.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError { code, reason, message: message.into() }
    }
    pub fn not_found(kind: &Kind, name: &str) -> Self {
        ApiError::new(
            404,
            "NotFound",
            format!("{}.{} \"{name}\" not found", kind.plural, group_or_core(kind)),
        )
    }
    pub fn status(&self) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {},
            "status": "Failure", "message": self.message, "reason": self.reason, "code": self.code,
        })
    }
}

fn group_or_core(kind: &Kind) -> &str {
    if kind.group.is_empty() { "" } else { kind.group }
}

/// Injected trouble for pods whose container image contains `image`.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    pub image: String,
    /// `ErrImagePull`, `ImagePullBackOff`, `CrashLoopBackOff`, ...
    pub reason: String,
    pub message: String,
}

pub struct State {
    pub objects: BTreeMap<Key, Value>,
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
    pub pod_seen: BTreeMap<String, std::time::Instant>,
    /// What `pods/{name}/log` returns, by (namespace, name).
    pub pod_logs: BTreeMap<(String, String), String>,
    /// Events kept for resuming watches (older ones answer 410 Expired).
    pub watch_history: usize,
}

impl State {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(4096);
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
            pod_seen: BTreeMap::new(),
            pod_logs: BTreeMap::new(),
            watch_history: EVENT_LOG,
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
        s
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

    /// All objects of a kind, in one namespace or (None) everywhere.
    pub fn list(&self, kind: &Kind, ns: Option<&str>) -> Vec<&Value> {
        self.objects
            .iter()
            .filter(|((g, p, n, _), _)| {
                g == kind.group && p == kind.plural && ns.is_none_or(|ns| !kind.namespaced || n == ns)
            })
            .map(|(_, v)| v)
            .collect()
    }

    /// Log and broadcast one change.
    fn emit(&mut self, kind: &Kind, event: &'static str, object: &Value) {
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
        Some(self.events.iter().filter(|e| e.rv > rv).cloned().collect())
    }

    fn check_namespace(&self, kind: &Kind, ns: &str) -> Result<(), ApiError> {
        if kind.namespaced && self.get(kinds::by_kind("v1", "Namespace").unwrap_or(kind), "", ns).is_none() {
            return Err(ApiError::new(404, "NotFound", format!("namespaces \"{ns}\" not found")));
        }
        Ok(())
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
                return Err(ApiError::new(
                    422,
                    "Invalid",
                    "metadata.name: Required value: name or generateName is required",
                ));
            };
            let name = format!("{prefix}{}", &short_hash(&json!(self.counter + 1))[..5]);
            meta.insert("name".into(), json!(name));
            self.counter += 1;
        }
        let name = obj["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let ns = obj["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
        validate_name(&name)?;
        self.check_namespace(kind, &ns)?;
        if self.get(kind, &ns, &name).is_some() {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{}.{} \"{name}\" already exists", kind.plural, group_or_core(kind)),
            ));
        }
        if !obj["metadata"].get("managedFields").is_some_and(Value::is_array) {
            apply::record_update(None, &mut obj, manager, None);
        }
        let uid = self.uid();
        let meta = obj["metadata"].as_object_mut().ok_or_else(bad_metadata)?;
        meta.insert("uid".into(), json!(uid));
        meta.insert("creationTimestamp".into(), json!(now_rfc3339()));
        meta.insert("generation".into(), json!(1));
        crate::defaults::apply_defaults(self, kind, None, &mut obj)?;
        if dry_run {
            obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
            return Ok(obj);
        }
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.objects.insert(key(kind, &ns, &name), obj.clone());
        self.emit(kind, "ADDED", &obj);
        Ok(obj)
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
        for k in ["uid", "creationTimestamp", "name", "namespace", "generation"] {
            if let Some(v) = old["metadata"].get(k) {
                meta.insert(k.into(), v.clone());
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
        if spec_changed {
            let generation = old["metadata"]["generation"].as_i64().unwrap_or(1) + 1;
            new["metadata"]["generation"] = json!(generation);
        }
        if dry_run {
            return Ok(new);
        }
        self.rv += 1;
        new["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        let ns = new["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
        let name = new["metadata"]["name"].as_str().unwrap_or_default().to_string();
        self.objects.insert(key(kind, &ns, &name), new.clone());
        self.emit(kind, "MODIFIED", &new);
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

    /// Deletes an object and (unless orphaning) everything it owns, transitively.
    pub fn delete(
        &mut self,
        kind: &Kind,
        ns: &str,
        name: &str,
        orphan: bool,
        dry_run: bool,
    ) -> Result<Value, ApiError> {
        let Some(obj) = self.get(kind, ns, name).cloned() else {
            return Err(ApiError::not_found(kind, name));
        };
        if dry_run {
            return Ok(obj);
        }
        self.objects.remove(&key(kind, ns, name));
        self.rv += 1;
        let mut gone = obj.clone();
        gone["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.emit(kind, "DELETED", &gone);
        let uid = obj["metadata"]["uid"].as_str().unwrap_or_default().to_string();
        let mut dependents: Vec<(&'static Kind, String, String)> = Vec::new();
        for ((g, p, n, nm), v) in &self.objects {
            let owned = v
                .pointer("/metadata/ownerReferences")
                .and_then(Value::as_array)
                .is_some_and(|refs| refs.iter().any(|r| r["uid"] == json!(uid)));
            let in_deleted_ns = kind.kind == "Namespace" && n == name;
            let goes = (owned && !orphan) || in_deleted_ns;
            if goes && let Some(k) = kinds::KINDS.iter().find(|k| k.group == g && k.plural == p) {
                dependents.push((k, n.clone(), nm.clone()));
            }
        }
        for (k, n, nm) in dependents {
            let _ = self.delete(k, &n, &nm, false, false);
        }
        Ok(gone)
    }
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

fn validate_name(name: &str) -> Result<(), ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            422,
            "Invalid",
            format!(
                "metadata.name: Invalid value: \"{name}\": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"
            ),
        ))
    }
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
