//! The HTTP face: Kubernetes REST paths parsed by hand (one fallback handler, because
//! `/api/v1/namespaces/x` is both an object and a prefix), discovery, CRUD, patches of
//! every content type, server-side apply, `dryRun=All`, selectors and watch streams.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Query, State as AxumState};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::broadcast::error::RecvError;

use crate::apply;
use crate::kinds::{self, Kind};
use crate::merge;
use crate::selectors::{FieldSelector, LabelSelector};
use crate::store::{
    ApiError, CLOSE_WATCHES, DeleteOptions, Propagation, State, WatchEvent, prepare_body, qualified_plural,
};

#[derive(Clone)]
pub struct Shared {
    pub state: Arc<Mutex<State>>,
    pub addr: std::net::SocketAddr,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock is a bug in the emulator; keep serving anyway.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

type Q = HashMap<String, String>;

fn json_response(code: u16, v: &Value) -> Response {
    let status = StatusCode::from_u16(code).unwrap_or(StatusCode::OK);
    (status, [(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

fn error(e: ApiError) -> Response {
    json_response(e.code, &e.status())
}

pub async fn handle(
    AxumState(app): AxumState<Shared>,
    method: Method,
    uri: Uri,
    Query(q): Query<Q>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    app.lock().requests.push(format!("{method} {}", uri.path_and_query().map(|p| p.as_str()).unwrap_or("/")));
    let segs: Vec<&str> = uri.path().split('/').filter(|s| !s.is_empty()).collect();
    match segs.as_slice() {
        ["version"] => json_response(
            200,
            &json!({
                "major": "1", "minor": "33", "gitVersion": "v1.33.0-kube-emulator",
                "gitCommit": "", "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z",
                "goVersion": "go1.24", "compiler": "gc", "platform": "linux/amd64",
            }),
        ),
        ["api"] => json_response(
            200,
            &json!({
                "kind": "APIVersions", "versions": ["v1"],
                "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": app.addr.to_string()}],
            }),
        ),
        ["apis"] => json_response(200, &group_list()),
        ["api", "v1"] => json_response(200, &resource_list("", "v1")),
        ["apis", g] if kinds::groups().contains(g) => json_response(200, &group(g)),
        ["apis", g, v] if kinds::KINDS.iter().any(|k| k.group == *g && k.version == *v) => {
            json_response(200, &resource_list(g, v))
        }
        ["api", "v1", rest @ ..] => resource(&app, &method, "", "v1", rest, &q, &headers, &body).await,
        ["apis", g, v, rest @ ..] if !rest.is_empty() => {
            resource(&app, &method, g, v, rest, &q, &headers, &body).await
        }
        _ => error(ApiError::new(404, "NotFound", "the server could not find the requested resource")),
    }
}

fn group(g: &str) -> Value {
    let versions: Vec<Value> = kinds::KINDS
        .iter()
        .filter(|k| k.group == g)
        .map(|k| k.version)
        .fold(Vec::<&str>::new(), |mut acc, v| {
            if !acc.contains(&v) {
                acc.push(v);
            }
            acc
        })
        .into_iter()
        .map(|v| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    json!({"kind": "APIGroup", "apiVersion": "v1", "name": g, "versions": versions, "preferredVersion": versions[0]})
}

fn group_list() -> Value {
    let groups: Vec<Value> = kinds::groups()
        .into_iter()
        .map(|g| {
            let mut v = group(g);
            if let Some(m) = v.as_object_mut() {
                m.remove("kind");
                m.remove("apiVersion");
            }
            v
        })
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

fn resource_list(g: &str, v: &str) -> Value {
    let mut resources = Vec::new();
    for k in kinds::KINDS.iter().filter(|k| k.group == g && k.version == v) {
        resources.push(json!({
            "name": k.plural, "singularName": k.singular, "namespaced": k.namespaced, "kind": k.kind,
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
        }));
        if k.has_status {
            resources.push(json!({
                "name": format!("{}/status", k.plural), "singularName": "", "namespaced": k.namespaced,
                "kind": k.kind, "verbs": ["get", "patch", "update"],
            }));
        }
        if k.kind == "Pod" {
            resources.push(json!({"name": "pods/log", "singularName": "", "namespaced": true, "kind": "Pod", "verbs": ["get"]}));
            resources.push(json!({"name": "pods/eviction", "singularName": "", "namespaced": true, "group": "policy", "version": "v1", "kind": "Eviction", "verbs": ["create"]}));
        }
    }
    let gv = if g.is_empty() { v.to_string() } else { format!("{g}/{v}") };
    json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources})
}

struct Target {
    kind: &'static Kind,
    ns: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

fn target(group: &str, version: &str, rest: &[&str]) -> Result<Target, ApiError> {
    let not_found = || ApiError::new(404, "NotFound", "the server could not find the requested resource");
    let (ns, rest) = match rest {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() => (Some(ns.to_string()), tail),
        _ => (None, rest),
    };
    let plural = rest.first().ok_or_else(not_found)?;
    let kind = kinds::by_plural(group, version, plural).ok_or_else(not_found)?;
    if rest.len() > 3 || (ns.is_some() && !kind.namespaced) {
        return Err(not_found());
    }
    Ok(Target { kind, ns, name: rest.get(1).map(|s| s.to_string()), sub: rest.get(2).map(|s| s.to_string()) })
}

fn dry_run(q: &Q) -> bool {
    q.get("dryRun").is_some_and(|v| v == "All")
}

/// Who a non-apply write is recorded as: `fieldManager`, else the user agent's product.
fn manager(q: &Q, headers: &HeaderMap) -> String {
    q.get("fieldManager").cloned().unwrap_or_else(|| {
        headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .and_then(|ua| ua.split('/').next())
            .filter(|s| !s.is_empty())
            .unwrap_or("unknown")
            .to_string()
    })
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .or_else(|_| {
            std::str::from_utf8(body)
                .map_err(|e| e.to_string())
                .and_then(|s| serde_saphyr::from_str::<Value>(s).map_err(|e| e.to_string()))
        })
        .map_err(|e| ApiError::new(400, "BadRequest", format!("cannot decode the body: {e}")))
}

#[allow(clippy::too_many_arguments)]
async fn resource(
    app: &Shared,
    method: &Method,
    group: &str,
    version: &str,
    rest: &[&str],
    q: &Q,
    headers: &HeaderMap,
    body: &Bytes,
) -> Response {
    let t = match target(group, version, rest) {
        Ok(t) => t,
        Err(e) => return error(e),
    };
    let watch = q.get("watch").is_some_and(|w| w == "true" || w == "1");
    if *method == Method::GET && t.name.is_none() && watch {
        return watch_stream(app, &t, q).await;
    }
    let result = {
        let mut state = app.lock();
        let started = std::time::Instant::now();
        let r = dispatch(&mut state, method, &t, q, headers, body);
        let wrote = *method != Method::GET && !dry_run(q);
        if wrote {
            state.reconcile();
            let cost = started.elapsed();
            state.record_write_cost(cost);
        }
        r
    };
    match result {
        Ok(Reply::Json(code, v)) => json_response(code, &v),
        Ok(Reply::Text(text)) => {
            (StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], text).into_response()
        }
        Err(e) => error(e),
    }
}

enum Reply {
    Json(u16, Value),
    Text(String),
}

fn dispatch(
    state: &mut State,
    method: &Method,
    t: &Target,
    q: &Q,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Reply, ApiError> {
    let ns = t.ns.clone().unwrap_or_default();
    let kind = t.kind;
    let dry = dry_run(q);
    match (method.as_str(), &t.name, t.sub.as_deref()) {
        ("GET", None, _) => {
            let mut items = select(state, kind, t.ns.as_deref(), q)?;
            // `limit`/`continue`: pages in key order; the token names the last item sent.
            if let Some(token) = q.get("continue").filter(|c| !c.is_empty()) {
                let after = decode_continue(token)?;
                items.retain(|o| item_key(o) > after);
            }
            let limit = q.get("limit").and_then(|l| l.parse::<usize>().ok()).filter(|l| *l > 0);
            let mut next = None;
            if let Some(limit) = limit
                && items.len() > limit
            {
                let remaining = items.len() - limit;
                items.truncate(limit);
                next = items.last().map(|o| (encode_continue(&item_key(o)), remaining));
            }
            Ok(Reply::Json(200, list_value(kind, state.rv, items, next)))
        }
        ("GET", Some(name), None | Some("status")) => state
            .get(kind, &ns, name)
            .cloned()
            .map(|v| Reply::Json(200, v))
            .ok_or_else(|| ApiError::not_found(kind, name)),
        ("GET", Some(name), Some("log")) if kind.kind == "Pod" => {
            state.get(kind, &ns, name).ok_or_else(|| ApiError::not_found(kind, name))?;
            Ok(Reply::Text(state.pod_logs.get(&(ns.clone(), name.clone())).cloned().unwrap_or_default()))
        }
        ("POST", None, _) => {
            let mut obj = parse_body(body)?;
            prepare_body(kind, &mut obj)?;
            strict(q, kind, &obj)?;
            if kind.namespaced {
                set_namespace(&mut obj, &ns)?;
            }
            let created = state.create(kind, obj, &manager(q, headers), dry)?;
            Ok(Reply::Json(201, created))
        }
        ("POST", Some(name), Some("eviction")) if kind.kind == "Pod" => {
            let body = if body.is_empty() { json!({}) } else { parse_body(body)? };
            let mut d = delete_options(q, body.get("deleteOptions").unwrap_or(&json!({})))?;
            d.dry_run |= dry;
            state.delete(kind, &ns, name, d)?;
            Ok(Reply::Json(
                201,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
            ))
        }
        ("PUT", Some(name), sub @ (None | Some("status"))) => {
            let live = state.get(kind, &ns, name).cloned().ok_or_else(|| ApiError::not_found(kind, name))?;
            let mut obj = parse_body(body)?;
            prepare_body(kind, &mut obj)?;
            strict(q, kind, &obj)?;
            check_identity(&obj, name, kind, &ns)?;
            check_resource_version(&obj, &live, kind, name)?;
            let new = finish_write(kind, &live, obj, sub, &manager(q, headers));
            Ok(Reply::Json(200, state.update(kind, &live, new, dry)?))
        }
        ("PATCH", Some(name), sub @ (None | Some("status"))) => {
            let content_type = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_string();
            let patch = parse_body(body)?;
            let live = state.get(kind, &ns, name).cloned();
            if content_type == "application/apply-patch+yaml" {
                strict(q, kind, &patch)?;
                return server_side_apply(state, kind, &ns, name, live, patch, q, dry);
            }
            let live = live.ok_or_else(|| ApiError::not_found(kind, name))?;
            let mut new = live.clone();
            match content_type.as_str() {
                "application/merge-patch+json" => merge::merge_patch(&mut new, &patch),
                "application/strategic-merge-patch+json" => merge::strategic(&mut new, &patch),
                "application/json-patch+json" => json_patch(&mut new, &patch)?,
                other => {
                    return Err(ApiError::new(
                        415,
                        "UnsupportedMediaType",
                        format!(
                            "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other:?})"
                        ),
                    ));
                }
            }
            check_resource_version(&patch, &live, kind, name)?;
            check_identity(&new, name, kind, &ns)?;
            strict(q, kind, &new)?;
            let new = finish_write(kind, &live, new, sub, &manager(q, headers));
            Ok(Reply::Json(200, state.update(kind, &live, new, dry)?))
        }
        ("DELETE", Some(name), None) => {
            let opts = if body.is_empty() { json!({}) } else { parse_body(body)? };
            if let Some(live) = state.get(kind, &ns, name) {
                for (field, pointer) in
                    [("uid", "/metadata/uid"), ("resourceVersion", "/metadata/resourceVersion")]
                {
                    if let Some(want) =
                        opts.pointer(&format!("/preconditions/{field}")).and_then(Value::as_str)
                        && live.pointer(pointer).and_then(Value::as_str) != Some(want)
                    {
                        return Err(ApiError::new(
                            409,
                            "Conflict",
                            format!(
                                "Operation cannot be fulfilled on {} \"{name}\": Precondition failed: {field}: {want}",
                                qualified_plural(kind)
                            ),
                        ));
                    }
                }
            }
            let d = delete_options(q, &opts)?;
            Ok(Reply::Json(200, state.delete(kind, &ns, name, d)?))
        }
        ("DELETE", None, None) => {
            let opts = if body.is_empty() { json!({}) } else { parse_body(body)? };
            let d = delete_options(q, &opts)?;
            let items: Vec<Value> = select(state, kind, t.ns.as_deref(), q)?;
            let mut deleted = Vec::new();
            for item in items {
                let n = item["metadata"]["name"].as_str().unwrap_or_default().to_string();
                let item_ns = item["metadata"]["namespace"].as_str().unwrap_or_default().to_string();
                if let Ok(gone) = state.delete(kind, &item_ns, &n, d) {
                    deleted.push(gone);
                }
            }
            Ok(Reply::Json(200, list_value(kind, state.rv, deleted, None)))
        }
        _ => Err(ApiError::new(405, "MethodNotAllowed", format!("{method} is not supported here"))),
    }
}

/// `propagationPolicy`, `gracePeriodSeconds` and `dryRun`, from the query or the body.
fn delete_options(q: &Q, body: &Value) -> Result<DeleteOptions, ApiError> {
    let policy = q
        .get("propagationPolicy")
        .cloned()
        .or_else(|| body["propagationPolicy"].as_str().map(str::to_string));
    let propagation = match policy.as_deref() {
        None | Some("") if body["orphanDependents"] == true => Propagation::Orphan,
        None | Some("") => Propagation::Default,
        Some("Orphan") => Propagation::Orphan,
        Some("Background") => Propagation::Background,
        Some("Foreground") => Propagation::Foreground,
        Some(other) => {
            return Err(ApiError::new(
                422,
                "Invalid",
                format!(
                    "DeleteOptions.meta.k8s.io \"\" is invalid: propagationPolicy: Unsupported value: \"{other}\": supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""
                ),
            ));
        }
    };
    let grace = q
        .get("gracePeriodSeconds")
        .and_then(|g| g.parse::<i64>().ok())
        .or_else(|| body["gracePeriodSeconds"].as_i64())
        .map(|g| g.max(0) as u64);
    let dry_run = dry_run(q) || body["dryRun"].as_array().is_some_and(|a| a.iter().any(|d| d == "All"));
    Ok(DeleteOptions { propagation, grace, dry_run })
}

/// `fieldValidation=Strict`: unknown fields are refused as the real server refuses them.
fn strict(q: &Q, kind: &Kind, body: &Value) -> Result<(), ApiError> {
    if q.get("fieldValidation").map(String::as_str) != Some("Strict") {
        return Ok(());
    }
    let unknown = crate::strict::unknown_fields(kind, body);
    if unknown.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = unknown.iter().map(|f| format!("unknown field \"{f}\"")).collect();
    Err(ApiError::new(400, "BadRequest", format!("strict decoding error: {}", list.join(", "))))
}

/// Optimistic concurrency: a resourceVersion in the body must be the stored one.
fn check_resource_version(body: &Value, live: &Value, kind: &Kind, name: &str) -> Result<(), ApiError> {
    match body.pointer("/metadata/resourceVersion").and_then(Value::as_str) {
        Some(rv) if rv != live["metadata"]["resourceVersion"].as_str().unwrap_or_default() => {
            Err(modified(kind, name))
        }
        _ => Ok(()),
    }
}

fn modified(kind: &Kind, name: &str) -> ApiError {
    let group = if kind.group.is_empty() { String::new() } else { format!(".{}", kind.group) };
    ApiError::new(
        409,
        "Conflict",
        format!(
            "Operation cannot be fulfilled on {}{group} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            kind.plural
        ),
    )
}

fn set_namespace(obj: &mut Value, ns: &str) -> Result<(), ApiError> {
    match obj["metadata"].get("namespace").and_then(Value::as_str) {
        Some(n) if !n.is_empty() && n != ns => Err(ApiError::new(
            400,
            "BadRequest",
            format!(
                "the namespace of the provided object ({n}) does not match the namespace sent on the request ({ns})"
            ),
        )),
        _ => {
            obj["metadata"]["namespace"] = json!(ns);
            Ok(())
        }
    }
}

fn check_identity(obj: &Value, name: &str, kind: &Kind, ns: &str) -> Result<(), ApiError> {
    let body_name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or(name);
    if body_name != name {
        return Err(ApiError::new(
            400,
            "BadRequest",
            format!("the name of the object ({body_name}) does not match the name on the URL ({name})"),
        ));
    }
    if kind.namespaced {
        let body_ns = obj.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or(ns);
        if body_ns != ns {
            return Err(ApiError::new(
                400,
                "BadRequest",
                "the namespace of the object does not match the URL",
            ));
        }
    }
    Ok(())
}

/// Status-subresource rules and field ownership for a non-apply write.
fn finish_write(kind: &Kind, live: &Value, mut new: Value, sub: Option<&str>, manager: &str) -> Value {
    if kind.has_status {
        if sub == Some("status") {
            let status = new.get("status").cloned();
            new = live.clone();
            match status {
                Some(s) => new["status"] = s,
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        } else {
            match live.get("status") {
                Some(s) => new["status"] = s.clone(),
                None => {
                    if let Some(m) = new.as_object_mut() {
                        m.remove("status");
                    }
                }
            }
        }
    }
    // Ownership is the server's record, never the client's.
    match live.pointer("/metadata/managedFields") {
        Some(mf) => new["metadata"]["managedFields"] = mf.clone(),
        None => {
            if let Some(m) = new["metadata"].as_object_mut() {
                m.remove("managedFields");
            }
        }
    }
    apply::record_update(Some(live), &mut new, manager, sub);
    new
}

#[allow(clippy::too_many_arguments)]
fn server_side_apply(
    state: &mut State,
    kind: &'static Kind,
    ns: &str,
    name: &str,
    live: Option<Value>,
    mut patch: Value,
    q: &Q,
    dry: bool,
) -> Result<Reply, ApiError> {
    let Some(manager) = q.get("fieldManager").filter(|m| !m.is_empty()) else {
        return Err(ApiError::new(
            400,
            "BadRequest",
            "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
        ));
    };
    if patch.get("apiVersion").is_none() || patch.get("kind").is_none() {
        return Err(ApiError::new(
            400,
            "BadRequest",
            format!(
                "Incorrect version specified in apply patch. Specified patch version: , expected: {}",
                kind.api_version()
            ),
        ));
    }
    prepare_body(kind, &mut patch)?;
    if kind.namespaced {
        set_namespace(&mut patch, ns)?;
    }
    check_identity(&patch, name, kind, ns)?;
    patch["metadata"]["name"] = json!(name);
    let force = q.get("force").is_some_and(|f| f == "true");
    let merged = apply::apply(live.as_ref(), &patch, manager, force).map_err(|conflicts| {
        let list: Vec<String> = conflicts
            .iter()
            .map(|c| format!("conflict with \"{}\": {}", c.manager, apply::display_path(&c.path)))
            .collect();
        ApiError::new(
            409,
            "Conflict",
            format!(
                "Apply failed with {} conflict{}: {}",
                list.len(),
                if list.len() == 1 { "" } else { "s" },
                list.join("; ")
            ),
        )
    })?;
    match live {
        None => Ok(Reply::Json(201, state.create(kind, merged, manager, dry)?)),
        Some(live) => {
            check_resource_version(&patch, &live, kind, name)?;
            Ok(Reply::Json(200, state.update(kind, &live, merged, dry)?))
        }
    }
}

/// RFC 6902: add, remove, replace, test (enough for what clients send).
fn json_patch(target: &mut Value, ops: &Value) -> Result<(), ApiError> {
    let bad = |m: String| ApiError::new(422, "Invalid", m);
    for op in ops.as_array().ok_or_else(|| bad("a JSON patch is a list of operations".into()))? {
        let path = op["path"].as_str().unwrap_or_default();
        let (parent, last) = path.rsplit_once('/').ok_or_else(|| bad(format!("bad path {path}")))?;
        let last = last.replace("~1", "/").replace("~0", "~");
        match op["op"].as_str().unwrap_or_default() {
            "test" => {
                if target.pointer(path) != Some(&op["value"]) {
                    return Err(bad(format!("test failed at {path}")));
                }
            }
            kind @ ("add" | "replace" | "remove") => {
                let p = target.pointer_mut(parent).ok_or_else(|| bad(format!("no such path {parent}")))?;
                match p {
                    Value::Object(m) => {
                        if kind == "remove" {
                            m.remove(&last).ok_or_else(|| bad(format!("no such path {path}")))?;
                        } else {
                            m.insert(last, op["value"].clone());
                        }
                    }
                    Value::Array(a) => {
                        let i = if last == "-" {
                            a.len()
                        } else {
                            last.parse().map_err(|_| bad(format!("bad index in {path}")))?
                        };
                        match kind {
                            "add" if i <= a.len() => a.insert(i, op["value"].clone()),
                            "replace" if i < a.len() => a[i] = op["value"].clone(),
                            "remove" if i < a.len() => {
                                a.remove(i);
                            }
                            _ => return Err(bad(format!("index out of range in {path}"))),
                        }
                    }
                    _ => return Err(bad(format!("{parent} is not a container"))),
                }
            }
            other => return Err(bad(format!("unsupported JSON patch op {other:?}"))),
        }
    }
    Ok(())
}

fn selectors(kind: &Kind, q: &Q) -> Result<(LabelSelector, FieldSelector), ApiError> {
    let bad = |m: String| ApiError::new(400, "BadRequest", m);
    let fields =
        FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or_default()).map_err(bad)?;
    if let Some(field) = fields.paths().find(|p| !field_selectable(kind, p)) {
        return Err(bad(format!("field label not supported: {field}")));
    }
    Ok((
        LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or_default()).map_err(bad)?,
        fields,
    ))
}

/// The fields the real server lets a field selector use, per kind.
fn field_selectable(kind: &Kind, path: &str) -> bool {
    if matches!(path, "metadata.name" | "metadata.namespace") {
        return true;
    }
    let extra: &[&str] = match kind.kind {
        "Pod" => &[
            "spec.nodeName",
            "spec.restartPolicy",
            "spec.schedulerName",
            "spec.serviceAccountName",
            "spec.hostNetwork",
            "status.phase",
            "status.podIP",
            "status.podIPs",
            "status.nominatedNodeName",
        ],
        "Node" => &["spec.unschedulable"],
        "Namespace" => &["status.phase"],
        "Secret" => &["type"],
        "Job" => &["status.successful"],
        "Event" => &[
            "involvedObject.kind",
            "involvedObject.namespace",
            "involvedObject.name",
            "involvedObject.uid",
            "involvedObject.apiVersion",
            "involvedObject.resourceVersion",
            "involvedObject.fieldPath",
            "reason",
            "reportingComponent",
            "source",
            "type",
            "regarding.kind",
            "regarding.name",
            "regarding.namespace",
            "reportingController",
        ],
        _ => &[],
    };
    extra.contains(&path)
}

fn item_key(o: &Value) -> String {
    format!(
        "{}/{}",
        o.pointer("/metadata/namespace").and_then(Value::as_str).unwrap_or_default(),
        o.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default()
    )
}

fn encode_continue(key: &str) -> String {
    key.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_continue(token: &str) -> Result<String, ApiError> {
    let bad = || ApiError::new(400, "BadRequest", format!("continue key is not valid: {token}"));
    if !token.len().is_multiple_of(2) {
        return Err(bad());
    }
    let bytes: Result<Vec<u8>, _> =
        (0..token.len()).step_by(2).map(|i| u8::from_str_radix(&token[i..i + 2], 16)).collect();
    String::from_utf8(bytes.map_err(|_| bad())?).map_err(|_| bad())
}

fn select(state: &State, kind: &Kind, ns: Option<&str>, q: &Q) -> Result<Vec<Value>, ApiError> {
    let (labels, fields) = selectors(kind, q)?;
    Ok(state.list(kind, ns).into_iter().filter(|o| labels.matches(o) && fields.matches(o)).cloned().collect())
}

fn list_value(kind: &Kind, rv: u64, items: Vec<Value>, next: Option<(String, usize)>) -> Value {
    let mut v = json!({
        "apiVersion": kind.api_version(), "kind": format!("{}List", kind.kind),
        "metadata": {"resourceVersion": rv.to_string()}, "items": items,
    });
    if let Some((token, remaining)) = next {
        v["metadata"]["continue"] = json!(token);
        v["metadata"]["remainingItemCount"] = json!(remaining);
    }
    v
}

fn event_line(ev_type: &str, object: &Value) -> Bytes {
    let mut line = json!({"type": ev_type, "object": object}).to_string().into_bytes();
    line.push(b'\n');
    Bytes::from(line)
}

fn gone_line(message: &str) -> Bytes {
    event_line("ERROR", &ApiError::new(410, "Expired", message).status())
}

/// `?watch=true`: replay from `resourceVersion` (or the current objects as ADDED when it is
/// absent or "0"), then live events until `timeoutSeconds`.
async fn watch_stream(app: &Shared, t: &Target, q: &Q) -> Response {
    let kind = t.kind;
    let (labels, fields) = match selectors(kind, q) {
        Ok(s) => s,
        Err(e) => return error(e),
    };
    let ns = t.ns.clone();
    let selects = move |o: &Value| labels.matches(o) && fields.matches(o);
    // The event this watch sends for a change, if any: with a selector, a change that moves
    // an object out of it is a DELETED, one that moves it in an ADDED (as the real server).
    let translate = move |ev: &WatchEvent| -> Option<&'static str> {
        if ev.group != kind.group
            || ev.plural != kind.plural
            || ns.as_ref().is_some_and(|n| *n != ev.namespace)
        {
            return None;
        }
        let now = selects(&ev.object);
        match (ev.kind, ev.previous.as_ref().map(&selects)) {
            ("MODIFIED", Some(was)) => match (was, now) {
                (true, true) => Some("MODIFIED"),
                (true, false) => Some("DELETED"),
                (false, true) => Some("ADDED"),
                (false, false) => None,
            },
            (k, _) => now.then_some(k),
        }
    };
    let (initial, rx, last_rv) = {
        let state = app.lock();
        let rx = state.tx.subscribe();
        let from = q.get("resourceVersion").map(String::as_str).unwrap_or("");
        let mut lines = Vec::new();
        let last = match from {
            "" | "0" => {
                for o in state.list(kind, t.ns.as_deref()) {
                    let ev = WatchEvent {
                        rv: 0,
                        group: kind.group.into(),
                        plural: kind.plural.into(),
                        namespace: o["metadata"]["namespace"].as_str().unwrap_or_default().into(),
                        kind: "ADDED",
                        object: o.clone(),
                        previous: None,
                    };
                    if translate(&ev).is_some() {
                        lines.push(event_line("ADDED", o));
                    }
                }
                state.rv
            }
            n => match n.parse::<u64>().ok().and_then(|rv| state.events_since(rv).map(|e| (rv, e))) {
                Some((rv, events)) => {
                    let mut last = rv;
                    for ev in events {
                        last = ev.rv;
                        if let Some(kind) = translate(&ev) {
                            lines.push(event_line(kind, &ev.object));
                        }
                    }
                    last.max(rv)
                }
                None => {
                    let line = gone_line(&format!("too old resource version: {n} ({})", state.compacted_rv));
                    return Response::builder()
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(Body::from(line))
                        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
                }
            },
        };
        (lines, rx, last)
    };
    let timeout = q.get("timeoutSeconds").and_then(|s| s.parse::<u64>().ok()).unwrap_or(1800);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
    let stream = futures_util::stream::unfold(
        (initial.into_iter(), rx, last_rv, false),
        move |(mut initial, mut rx, mut last_rv, done)| {
            let translate = translate.clone();
            async move {
                if done {
                    return None;
                }
                if let Some(line) = initial.next() {
                    return Some((Ok::<_, Infallible>(line), (initial, rx, last_rv, false)));
                }
                loop {
                    match tokio::time::timeout_at(deadline, rx.recv()).await {
                        Err(_) | Ok(Err(RecvError::Closed)) => return None,
                        Ok(Err(RecvError::Lagged(_))) => {
                            return Some((Ok(gone_line("watch fell behind")), (initial, rx, last_rv, true)));
                        }
                        Ok(Ok(ev)) if ev.kind == CLOSE_WATCHES => return None,
                        Ok(Ok(ev)) => {
                            if ev.rv <= last_rv {
                                continue;
                            }
                            let Some(kind) = translate(&ev) else { continue };
                            last_rv = ev.rv;
                            return Some((Ok(event_line(kind, &ev.object)), (initial, rx, last_rv, false)));
                        }
                    }
                }
            }
        },
    );
    Response::builder()
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
