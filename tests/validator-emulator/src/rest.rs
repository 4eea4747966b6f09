//! The REST side: one fallback handler so every request is recorded the same way,
//! then routed by method and path segments.

use std::collections::BTreeMap;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use chutes_protocol::Payload;
use chutes_protocol::auth::{now_unix, verify_miner_request};
use serde_json::{Value, json};

use crate::{Listing, RecordedRequest, Shared, State};

const MAX_SKEW: u64 = 600;

pub(crate) fn router(shared: Shared) -> Router {
    Router::new().fallback(handle).with_state(shared)
}

/// What an endpoint signs, as chutes-api declares it.
#[derive(Clone, Copy)]
enum Auth {
    Public,
    Body,
    Purpose(&'static str),
}

async fn handle(
    AxumState(shared): AxumState<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let query = uri.query().unwrap_or("").to_owned();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let auth_kind = auth_of(&method, &segments);
    let auth = match auth_kind {
        None | Some(Auth::Public) => Ok(String::new()),
        Some(Auth::Body) => verify(&headers, Payload::Body(&body)),
        Some(Auth::Purpose(p)) => verify(&headers, Payload::Purpose(p)),
    };
    let mut state = shared.lock().unwrap();
    let auth = auth.and_then(|hotkey| match &state.registered {
        Some(set) if !hotkey.is_empty() && !set.contains(&hotkey) => {
            Err(format!("hotkey {hotkey} is not registered"))
        }
        _ => Ok(hotkey),
    });
    let (status, response) = if let Some(status) = take_fault(&mut state, &path) {
        (status, json_response(status, json!({"detail": "injected failure"})))
    } else if auth_kind.is_none() {
        (404, json_response(404, json!({"detail": "Not Found"})))
    } else if let Err(e) = &auth {
        (401, json_response(401, json!({"detail": e})))
    } else {
        let hotkey = auth.clone().unwrap_or_default();
        let (status, response) = route(&mut state, &method, &segments, &query, &body, &hotkey);
        (status, response)
    };
    state.requests.push(RecordedRequest {
        method: method.to_string(),
        path,
        query,
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect::<BTreeMap<_, _>>(),
        body: body.to_vec(),
        auth,
        status,
    });
    response
}

fn verify(headers: &HeaderMap, payload: Payload<'_>) -> Result<String, String> {
    verify_miner_request(headers, payload, now_unix(), MAX_SKEW).map_err(|e| e.to_string())
}

fn take_fault(state: &mut State, path: &str) -> Option<u16> {
    let idx =
        state.faults.iter().position(|(prefix, _, left)| path.starts_with(prefix.as_str()) && *left > 0)?;
    let fault = &mut state.faults[idx];
    fault.2 -= 1;
    let status = fault.1;
    if fault.2 == 0 {
        state.faults.remove(idx);
    }
    Some(status)
}

/// The auth each endpoint of the validator API expects (reference section 10).
fn auth_of(method: &Method, s: &[&str]) -> Option<Auth> {
    use Auth::*;
    Some(match (method.as_str(), s) {
        ("GET", ["nodes", "supported"]) => Public,
        ("POST", ["nodes"]) => Body,
        ("GET", ["nodes", "verification_status"]) => Purpose("graval"),
        ("DELETE", ["nodes", _]) => Purpose("nodes"),
        ("GET", ["miner", "chutes" | "images" | "nodes" | "instances" | "metrics"]) => Purpose("miner"),
        ("GET", ["miner", "chutes", _, _]) => Purpose("miner"),
        ("GET", ["miner", "inventory"]) => Purpose("miner"),
        ("DELETE", ["miner", "jobs", _]) => Purpose("miner"),
        ("GET", ["chutes", "utilization" | "rolling_updates"]) => Public,
        ("GET", ["instances", "launch_config"]) => Purpose("launch"),
        ("POST", ["instances", _]) => Body,
        ("PATCH", ["instances", _, _]) => Body,
        ("DELETE", ["instances", _, _]) => Purpose("instances"),
        ("POST", ["audit", "miner_data"]) => Body,
        _ => return None,
    })
}

fn json_response(status: u16, body: Value) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (code, axum::Json(body)).into_response()
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query.split('&').filter_map(|kv| kv.split_once('=')).find(|(k, _)| *k == name).map(|(_, v)| v.to_owned())
}

fn uuid_like(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012x}")
}

fn route(
    state: &mut State,
    method: &Method,
    s: &[&str],
    query: &str,
    body: &[u8],
    hotkey: &str,
) -> (u16, Response) {
    let ok = |v: Value| (200, json_response(200, v));
    match (method.as_str(), s) {
        ("GET", ["nodes", "supported"]) => ok(json!(state.supported_gpus)),
        ("POST", ["nodes"]) => {
            let Ok(request) = serde_json::from_slice::<Value>(body) else {
                return (400, json_response(400, json!({"detail": "body is not JSON"})));
            };
            let Some(nodes) = request.get("nodes").and_then(Value::as_array) else {
                return (400, json_response(400, json!({"detail": "missing nodes"})));
            };
            state.tasks += 1;
            let task_id = uuid_like(state.tasks);
            let seed = state.node_seed;
            let nodes: Vec<Value> = nodes
                .iter()
                .map(|n| {
                    let mut n = n.clone();
                    if let Some(o) = n.as_object_mut() {
                        o.insert("seed".into(), json!(seed));
                    }
                    n
                })
                .collect();
            (202, json_response(202, json!({"nodes": nodes, "task_id": task_id})))
        }
        ("GET", ["nodes", "verification_status"]) => {
            let task = query_param(query, "task_id").unwrap_or_default();
            let status =
                state.verification.get(&task).cloned().unwrap_or_else(|| state.default_verification.clone());
            ok(json!({"status": status}))
        }
        ("DELETE", ["nodes", gpu]) => {
            state.deleted_nodes.push((*gpu).to_owned());
            ok(json!({"node_id": gpu, "deleted": true}))
        }
        ("GET", ["miner", kind]) if Listing::from_segment(kind).is_some() => {
            let listing = Listing::from_segment(kind).unwrap_or(Listing::Chutes);
            let items = state.listings.get(&listing).cloned().unwrap_or_default();
            let mut text = String::new();
            if items.is_empty() {
                text.push_str("data: NO_ITEMS\n\n");
            }
            for item in items {
                text.push_str(&format!("data: {item}\n\n"));
            }
            (
                200,
                Response::builder()
                    .header("content-type", "text/event-stream")
                    .body(Body::from(text))
                    .unwrap(),
            )
        }
        ("GET", ["miner", "chutes", id, version]) => {
            match state.chutes.get(&((*id).to_owned(), (*version).to_owned())) {
                Some(chute) => ok(chute.clone()),
                None => (404, json_response(404, json!({"detail": "chute not found"}))),
            }
        }
        ("GET", ["miner", "inventory"]) => ok(json!([])),
        ("DELETE", ["miner", "jobs", job]) => {
            state.released_jobs.push((*job).to_owned());
            ok(json!({"job_id": job, "released": true}))
        }
        ("GET", ["chutes", "utilization"]) => ok(json!(state.utilization)),
        ("GET", ["chutes", "rolling_updates"]) => ok(json!(state.rolling_updates)),
        ("GET", ["instances", "launch_config"]) => {
            let job = query_param(query, "job_id").filter(|j| !j.is_empty());
            if let Some(job) = &job {
                if !state.jobs.contains(job) {
                    return (404, json_response(404, json!({"detail": "job not found"})));
                }
                if !state.jobs_tried.insert((hotkey.to_owned(), job.clone())) {
                    return (403, json_response(403, json!({"detail": "already attempted this job"})));
                }
            }
            match &mut state.launch_capacity {
                Some(0) => return (423, json_response(423, json!({"detail": "at capacity"}))),
                Some(n) => *n -= 1,
                None => {}
            }
            state.launches += 1;
            let n = state.launches;
            ok(json!({"token": format!("emulator.{n}.jwt"), "config_id": uuid_like(n)}))
        }
        ("POST", ["instances", chute]) => {
            state.launches += 1;
            let instance_id = uuid_like(state.launches);
            state.instances.insert(instance_id.clone(), (*chute).to_owned());
            ok(json!({"instance_id": instance_id, "chute_id": chute}))
        }
        ("PATCH", ["instances", chute, instance]) => {
            if state.instances.get(*instance).map(String::as_str) != Some(*chute) {
                return (404, json_response(404, json!({"detail": "instance not found"})));
            }
            ok(json!({"instance_id": instance, "chute_id": chute, "active": true, "verified": true}))
        }
        ("DELETE", ["instances", _, instance]) => match state.instances.remove(*instance) {
            Some(_) => ok(json!({"instance_id": instance, "deleted": true})),
            None => (404, json_response(404, json!({"detail": "instance not found"}))),
        },
        ("POST", ["audit", "miner_data"]) => ok(json!({"status": "ok"})),
        _ => (404, json_response(404, json!({"detail": "Not Found"}))),
    }
}
