//! The REST side: one fallback handler so every request is recorded the same way,
//! then routed by method and path segments to the state (`state.rs`, `views.rs`).

use std::collections::BTreeMap;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State as AxumState;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use chutes_protocol::Payload;
use chutes_protocol::auth::{now_unix, verify_miner_request};
use serde_json::{Value, json};
use socketioxide::SocketIo;

use crate::state::{Event, State};
use crate::{Listing, RecordedRequest, Shared};

const MAX_SKEW: u64 = 600;

#[derive(Clone)]
struct App {
    shared: Shared,
    io: SocketIo,
}

pub(crate) fn router(shared: Shared, io: SocketIo) -> Router {
    Router::new().fallback(handle).with_state(App { shared, io })
}

/// What an endpoint signs, as chutes-api declares it.
#[derive(Clone, Copy)]
enum Auth {
    Public,
    Body,
    Purpose(&'static str),
    /// The chute's launch token (`Authorization: Bearer`), checked by the state.
    Bearer,
}

/// What a route answers: JSON, or an SSE-style listing.
enum Answer {
    Json(u16, Value),
    Stream(Vec<Value>),
}

async fn handle(
    AxumState(app): AxumState<App>,
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
        None | Some(Auth::Public | Auth::Bearer) => Ok(String::new()),
        Some(Auth::Body) => verify(&headers, Payload::Body(&body)),
        Some(Auth::Purpose(p)) => verify(&headers, Payload::Purpose(p)),
    };
    let mut events = Vec::new();
    let path_for_hold = path.clone();
    let (status, answer, jobs, hold) = {
        let mut state = app.shared.lock().unwrap();
        let auth = auth.and_then(|hotkey| match &state.registered {
            Some(set) if !hotkey.is_empty() && !set.contains(&hotkey) => {
                Err(format!("hotkey {hotkey} is not registered"))
            }
            _ => Ok(hotkey),
        });
        let answer = if let Some(status) = take_fault(&mut state, &path) {
            Answer::Json(status, json!({"detail": "injected failure"}))
        } else if auth_kind.is_none() {
            Answer::Json(404, json!({"detail": "Not Found"}))
        } else if let Err(e) = &auth {
            Answer::Json(401, json!({"detail": e}))
        } else {
            let hotkey = auth.clone().unwrap_or_default();
            let bearer = headers.get("authorization").and_then(|v| v.to_str().ok());
            let request = Request {
                method: &method,
                s: &segments,
                query: &query,
                body: &body,
                hotkey: &hotkey,
                bearer,
            };
            route(&mut state, &request, &mut events)
        };
        let status = match &answer {
            Answer::Json(s, _) => *s,
            Answer::Stream(_) => 200,
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
        let jobs = std::mem::take(&mut state.verification_jobs);
        let hold = take_hold(&mut state, &path_for_hold);
        (status, answer, jobs, hold)
    };
    crate::verification::spawn_jobs(jobs, &app.shared, &app.io);
    // Events go out before the answer, so a client holding the reply can wait for them.
    crate::sockets::emit(&app.io, &app.shared, events).await;
    if let Some(hold) = hold {
        hold.wait().await;
    }
    match answer {
        Answer::Json(_, v) => json_response(status, v),
        Answer::Stream(items) => stream_response(items),
    }
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

fn take_hold(state: &mut State, path: &str) -> Option<crate::Hold> {
    let idx = state.holds.iter().position(|(prefix, _)| path.starts_with(prefix.as_str()))?;
    state.holds.remove(idx).map(|(_, hold)| hold)
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
        ("GET", ["miner", "inventory" | "active_instances"]) => Purpose("miner"),
        ("DELETE", ["miner", "jobs", _]) => Purpose("miner"),
        ("GET", ["chutes", "utilization" | "rolling_updates"]) => Public,
        ("GET", ["instances", "launch_config"]) => Purpose("launch"),
        ("POST", ["instances", "launch_config", _]) => Bearer,
        ("GET", ["instances", "launch_config", _, "activate"]) => Bearer,
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

/// One `data: {json}\n\n` line per item; `data: NO_ITEMS` for an explicit empty set.
fn stream_response(items: Vec<Value>) -> Response {
    let mut text = String::new();
    if items.is_empty() {
        text.push_str("data: NO_ITEMS\n\n");
    }
    for item in items {
        text.push_str(&format!("data: {item}\n\n"));
    }
    Response::builder().header("content-type", "text/event-stream").body(Body::from(text)).unwrap()
}

fn query_param(query: &str, name: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| percent_decode(v))
        .filter(|v| !v.is_empty())
}

/// The client percent-encodes ids; decode so `a%2Fb` names `a/b` again.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok())) {
            (b'%', Some(h)) if u8::from_str_radix(h, 16).is_ok() => {
                out.push(u8::from_str_radix(h, 16).unwrap_or(b'?'));
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

struct Request<'a> {
    method: &'a Method,
    s: &'a [&'a str],
    query: &'a str,
    body: &'a [u8],
    hotkey: &'a str,
    bearer: Option<&'a str>,
}

fn route(state: &mut State, r: &Request<'_>, events: &mut Vec<Event>) -> Answer {
    let json = |(status, v): (u16, Value)| Answer::Json(status, v);
    let ok = |v: Value| Answer::Json(200, v);
    let hotkey = r.hotkey;
    match (r.method.as_str(), r.s) {
        ("GET", ["nodes", "supported"]) => ok(json!(state.supported_gpus)),
        ("POST", ["nodes"]) => json(state.post_nodes(hotkey, r.body)),
        ("GET", ["nodes", "verification_status"]) => {
            let task = query_param(r.query, "task_id").unwrap_or_default();
            ok(json!({"status": crate::verification::poll(state, &task, events)}))
        }
        ("DELETE", ["nodes", gpu]) => json(state.delete_node(hotkey, gpu)),
        ("GET", ["miner", kind]) if Listing::from_segment(kind).is_some() => {
            let listing = Listing::from_segment(kind).unwrap_or(Listing::Chutes);
            Answer::Stream(state.listing(listing, hotkey))
        }
        ("GET", ["miner", "chutes", id, version]) => match state.catalogue.chutes.get(*id) {
            Some(chute) if chute.version == *version => ok(state.catalogue.chute_wire(chute)),
            _ => Answer::Json(404, json!({"detail": format!("chute_id='{id}' not found")})),
        },
        ("GET", ["miner", "inventory"]) => ok(json!(state.inventory(hotkey))),
        ("GET", ["miner", "active_instances"]) => ok(json!(state.active_instances())),
        ("DELETE", ["miner", "jobs", job]) => json(state.release_job(hotkey, job, events)),
        ("GET", ["chutes", "utilization"]) => ok(json!(state.utilization())),
        ("GET", ["chutes", "rolling_updates"]) => ok(json!(state.rolling_updates())),
        ("GET", ["instances", "launch_config"]) => {
            let Some(chute_id) = query_param(r.query, "chute_id") else {
                return Answer::Json(422, json!({"detail": "query parameter chute_id is required"}));
            };
            let server_id = query_param(r.query, "server_id");
            let job_id = query_param(r.query, "job_id");
            json(state.launch_config(hotkey, &chute_id, server_id, job_id))
        }
        ("POST", ["instances", "launch_config", config]) => {
            json(state.claim(config, r.bearer, r.body, events))
        }
        ("GET", ["instances", "launch_config", config, "activate"]) => {
            json(state.activate(config, r.bearer, events))
        }
        ("POST", ["instances", chute]) => json(state.announce(hotkey, chute, r.body, events)),
        ("PATCH", ["instances", chute, instance]) => {
            json(state.patch_activate(hotkey, chute, instance, r.body, events))
        }
        ("DELETE", ["instances", chute, instance]) => {
            json(state.delete_instance(hotkey, chute, instance, events))
        }
        ("POST", ["audit", "miner_data"]) => ok(json!({"status": "ok"})),
        _ => Answer::Json(404, json!({"detail": "Not Found"})),
    }
}
