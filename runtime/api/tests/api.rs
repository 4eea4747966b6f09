#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The miner API over real HTTP against real Postgres and Redis.

mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chutes_protocol::auth::{Payload, management_message, now_unix, verify_miner_request};
use common::*;
use miner_api::{ApiError, NodeBootstrap, Progress, ServerArgs};
use reqwest::Method;
use serde_json::{Value, json};

#[tokio::test]
async fn ping_is_public() {
    let api = Api::start().await;
    let (status, body) = json_of(api.http.get(api.url("/ping")).send().await.unwrap()).await;
    assert_eq!((status, body), (200, json!({"message": "pong"})));
}

#[tokio::test]
async fn servers_are_listed_with_gpus_and_deployments() {
    let api = Api::start().await;
    let (status, body) = json_of(api.get("/servers/").send().await.unwrap()).await;
    assert_eq!((status, body), (200, json!([])));
    api.seed_inventory().await;
    let (status, body) = json_of(api.get("/servers/").send().await.unwrap()).await;
    assert_eq!(status, 200);
    let s = &body[0];
    for field in [
        "name",
        "status",
        "gpu_count",
        "memory_per_gpu",
        "cpu_per_gpu",
        "hourly_cost",
        "ip_address",
        "created_at",
    ] {
        assert!(s.get(field).is_some(), "CLI field {field} missing from {s}");
    }
    assert_eq!(s["gpus"][0]["device_info"]["name"], "A6000");
    assert_eq!(s["gpus"][0]["verified"], true);
    let deps = s["deployments"].as_array().unwrap();
    assert_eq!(deps.len(), 2);
    assert_eq!(deps[0]["chute"]["name"], "sdxl");
    for field in ["gpus", "port", "created_at", "active", "stub"] {
        assert!(deps[0].get(field).is_some(), "CLI field {field} missing from {}", deps[0]);
    }
}

/// Sends GET /servers/ with the given headers (raw), returns status and detail.
async fn with_headers(api: &Api, headers: &[(&str, String)]) -> (u16, String) {
    let mut req = api.http.get(api.url("/servers/"));
    for (k, v) in headers {
        req = req.header(*k, v);
    }
    let (status, body) = json_of(req.send().await.unwrap()).await;
    (status, body["detail"].as_str().unwrap_or_default().to_owned())
}

fn management_headers(
    miner: &str,
    signer: &chutes_protocol::Hotkey,
    nonce: u64,
    purpose: &str,
) -> Vec<(&'static str, String)> {
    let sig =
        signer.sign(management_message(miner, signer.ss58(), nonce, Payload::Purpose(purpose)).as_bytes());
    vec![
        ("X-Chutes-Miner", miner.to_owned()),
        ("X-Chutes-Validator", signer.ss58().to_owned()),
        ("X-Chutes-Nonce", nonce.to_string()),
        ("X-Chutes-Signature", sig),
    ]
}

#[tokio::test]
async fn every_management_refusal_is_json_that_says_why() {
    let api = Api::start().await;
    let miner = api.miner.ss58().to_owned();
    let now = now_unix();
    let good = management_headers(&miner, &api.miner, now, "management");

    for missing in 0..4 {
        let mut h = good.clone();
        let (name, _) = h.remove(missing);
        let (status, detail) = with_headers(&api, &h).await;
        assert_eq!(status, 401);
        assert!(detail.contains(&format!("missing header {name}")), "{detail}");
    }

    let other = hotkey(OTHER_SEED);
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (management_headers(other.ss58(), &api.miner, now, "management"), "but this is miner"),
        (management_headers(&miner, &other, now, "management"), "not allowed to sign"),
        (management_headers(&miner, &api.miner, now - 31, "management"), "s old"),
        (management_headers(&miner, &api.miner, now + 120, "management"), "in the future"),
        (management_headers(&miner, &api.miner, now, "graval"), "signature does not match"),
    ];
    for (headers, expected) in cases {
        let (status, detail) = with_headers(&api, &headers).await;
        assert_eq!(status, 401, "{expected}");
        assert!(detail.contains(expected), "wanted {expected:?} in {detail:?}");
    }
    let mut bad_nonce = good.clone();
    bad_nonce[2].1 = "12ab".into();
    assert!(with_headers(&api, &bad_nonce).await.1.contains("decimal digits"));

    // The good headers work once, then are a replay.
    assert_eq!(with_headers(&api, &good).await.0, 200);
    let (status, detail) = with_headers(&api, &good).await;
    assert_eq!(status, 401);
    assert!(detail.contains("replay"), "{detail}");

    let metrics = api.http.get(api.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for reason in ["missing_header", "wrong_miner", "unknown_signer", "nonce", "signature", "replay"] {
        assert!(
            metrics.contains(&format!("miner_api_refusals_total{{reason=\"{reason}\"}}")),
            "{reason}: {metrics}"
        );
    }
}

#[tokio::test]
async fn a_post_must_sign_the_body_it_sends() {
    let api = Api::start().await;
    let body = json!({"name": "gpu-1", "validator": "x", "hourly_cost": 1.0, "gpu_short_ref": "a6000"});
    // Signed over one body, sent with another.
    let headers = api.miner.sign_management(api.miner.ss58(), Payload::Body(b"{}"));
    let mut req = api.http.post(api.url("/servers/")).body(serde_json::to_vec(&body).unwrap());
    for (k, v) in headers.iter() {
        req = req.header(k, v);
    }
    let (status, body) = json_of(req.send().await.unwrap()).await;
    assert_eq!(status, 401);
    assert!(body["detail"].as_str().unwrap().contains("signature does not match"), "{body}");
    // Signing the purpose instead of the body is refused for POST too.
    let headers = api.miner.sign_management(api.miner.ss58(), Payload::Purpose("management"));
    let mut req = api.http.post(api.url("/servers/")).body("{}");
    for (k, v) in headers.iter() {
        req = req.header(k, v);
    }
    assert_eq!(req.send().await.unwrap().status(), 401);
}

#[tokio::test]
async fn lock_and_unlock_by_name_or_id() {
    let api = Api::start().await;
    api.seed_inventory().await;
    let (status, body) = json_of(api.get("/servers/gpu-1/lock").send().await.unwrap()).await;
    assert_eq!((status, &body["locked"]), (200, &json!(true)));
    assert!(api.db.find_server("uid-1").await.unwrap().unwrap().locked);
    let (status, body) = json_of(api.get("/servers/uid-1/unlock").send().await.unwrap()).await;
    assert_eq!((status, &body["locked"]), (200, &json!(false)));
    for path in ["/servers/nope/lock", "/servers/nope/unlock"] {
        let (status, body) = json_of(api.get(path).send().await.unwrap()).await;
        assert_eq!(status, 404);
        assert_eq!(body["detail"], "No kubernetes node with id or name nope found!");
    }
}

#[tokio::test]
async fn delete_preflight_lists_only_jobs() {
    let api = Api::start().await;
    api.seed_inventory().await;
    let (status, body) = json_of(api.get("/servers/gpu-1/delete_preflight").send().await.unwrap()).await;
    assert_eq!(status, 200);
    let jobs = body["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0]["deployment_id"], "d-job");
    assert_eq!(jobs[0]["job_id"], "job-1");
    assert_eq!(json_of(api.get("/servers/nope/delete_preflight").send().await.unwrap()).await.0, 404);
}

#[tokio::test]
async fn deleting_a_server_hands_gepetto_a_durable_event() {
    let api = Api::start().await;
    api.seed_inventory().await;
    let (status, body) = json_of(api.delete("/servers/gpu-1").send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "started");
    assert_eq!(
        api.events().await,
        vec![json!({"event_type": "server_deleted", "event_data": {"server_id": "uid-1"}})]
    );
    // The row stays until Gepetto has undeployed everything on it.
    assert!(api.db.find_server("uid-1").await.unwrap().is_some());

    let (status, _) = json_of(api.delete("/servers/nope").send().await.unwrap()).await;
    assert_eq!(status, 404);
    assert_eq!(api.events().await.len(), 1, "a refused request publishes nothing");
}

#[tokio::test]
async fn purging_a_server_undeploys_its_services_but_not_its_jobs() {
    let api = Api::start().await;
    api.seed_inventory().await;
    let (status, body) = json_of(api.delete("/servers/gpu-1/deployments").send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"status": "initiated", "deployments_purged": [
            {"chute_id": "chute-1", "chute_name": "sdxl", "server_id": "uid-1", "server_name": "gpu-1", "gpu_count": 1}
        ]})
    );
    let events = api.events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["event_type"], "undeploy");
    assert_eq!(events[0]["event_data"]["deployment_id"], "d-svc");
    assert_eq!(json_of(api.delete("/servers/nope/deployments").send().await.unwrap()).await.0, 404);
}

#[tokio::test]
async fn purge_all_and_purge_one() {
    let api = Api::start().await;
    api.seed_inventory().await;
    let (status, body) = json_of(api.delete("/deployments/purge").send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(body["deployments_purged"].as_array().unwrap().len(), 2, "jobs included: {body}");
    let (status, body) = json_of(api.delete("/deployments/d-job").send().await.unwrap()).await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "initiated");
    assert_eq!(body["deployment_purged"]["deployment_id"], "d-job");
    assert_eq!(body["deployment_purged"]["chute"]["name"], "sdxl");
    let (status, body) = json_of(api.delete("/deployments/nope").send().await.unwrap()).await;
    assert_eq!(status, 404);
    assert!(body["detail"].as_str().unwrap().contains("nope"));
    let ids: Vec<Value> =
        api.events().await.iter().map(|e| e["event_data"]["deployment_id"].clone()).collect();
    assert_eq!(ids, vec![json!("d-svc"), json!("d-job"), json!("d-job")]);
}

#[tokio::test]
async fn with_redis_down_a_purge_says_so_instead_of_pretending() {
    let mut redis = lab_hosts::Redis::start().unwrap();
    let api = Api::start_with(Options {
        redis_url: Some(redis.url()),
        event_timeout: Duration::from_millis(700),
        ..Options::default()
    })
    .await;
    api.seed_inventory().await;
    redis.kill();
    let (status, body) = json_of(api.delete("/deployments/d-svc").send().await.unwrap()).await;
    assert_eq!(status, 503);
    assert!(body["detail"].as_str().unwrap().contains("did not confirm undeploy"), "{body}");
    // When Redis is back the queued event is delivered, exactly once.
    redis.restart().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let n = api.events().await.len();
        if n == 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "queued event never arrived ({n})");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn registry_auth_signs_for_loopback_callers() {
    let api = Api::start().await;
    let resp = api.http.get(api.url("/registry/auth")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let headers = resp.headers().clone();
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"authenticated": true}));
    let signer = verify_miner_request(&headers, Payload::Purpose("registry"), now_unix(), 600).unwrap();
    assert_eq!(signer, api.miner.ss58());
}

/// A router over `routes`, as if every request came from `ip`.
async fn call_from(app: axum::Router, ip: &str, path: &str) -> (u16, Value) {
    use axum::extract::connect_info::MockConnectInfo;
    use tower::ServiceExt;
    let app = app.layer(MockConnectInfo(std::net::SocketAddr::new(ip.parse().unwrap(), 4000)));
    let req = axum::http::Request::get(path).body(axum::body::Body::empty()).unwrap();
    let resp = app.oneshot(req).await.unwrap();
    let status = resp.status().as_u16();
    let bytes = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn plain_state(api: &Api) -> miner_api::AppState {
    let producer =
        miner_events::Producer::connect(&redis().url(), miner_events::StreamConfig::default()).unwrap();
    miner_api::AppState::new(api.db.clone(), api.miner.clone(), producer, validators()).unwrap()
}

#[tokio::test]
async fn registry_auth_refuses_public_callers() {
    let api = Api::start().await;
    let state = plain_state(&api).await;
    for (ip, want) in [("8.8.8.8", 401), ("10.1.2.3", 200)] {
        let (status, body) = call_from(miner_api::router(state.clone()), ip, "/registry/auth").await;
        assert_eq!(status, want, "{ip}");
        if want == 401 {
            assert!(body["detail"].as_str().unwrap().contains("only served to private addresses"), "{body}");
            assert!(body["detail"].as_str().unwrap().contains(ip));
        }
    }
}

/// The router, not each handler, enforces `Access::PrivateNetwork`: a route that
/// declares it is refused to public callers even when its handler checks nothing.
#[tokio::test]
async fn the_router_enforces_private_network_access_for_every_route_that_declares_it() {
    use miner_api::routes::{Access, Route, RouteDoc};
    let api = Api::start().await;
    let state = plain_state(&api).await;
    let unguarded = Route {
        doc: RouteDoc {
            method: "get",
            path: "/internal-only",
            summary: "a handler that checks nothing itself",
            access: Access::PrivateNetwork,
            body: None,
            produces: "application/json",
            statuses: &[(200, "OK")],
        },
        handler: axum::routing::get(|| async { axum::Json(json!({"secret": true})) }),
    };
    let mut routes = miner_api::routes::table();
    routes.push(unguarded);
    let private: Vec<&str> =
        routes.iter().filter(|r| r.doc.access == Access::PrivateNetwork).map(|r| r.doc.path).collect();
    assert!(private.len() >= 2, "{private:?}");
    let app = miner_api::router_from(routes.iter().map(clone_route).collect(), state.clone());
    for path in &private {
        let (status, body) = call_from(app.clone(), "8.8.8.8", path).await;
        assert_eq!(status, 401, "{path} answered a public caller: {body}");
        assert!(body.get("secret").is_none());
        let (status, _) = call_from(app.clone(), "192.168.1.9", path).await;
        assert_eq!(status, 200, "{path}");
    }
}

fn clone_route(r: &miner_api::routes::Route) -> miner_api::routes::Route {
    miner_api::routes::Route { doc: r.doc.clone(), handler: r.handler.clone() }
}

/// Anyone knows the miner's SS58 address; a request that names it with a nonce
/// outside the window must be refused from its headers alone. The body announced
/// here never arrives: reading it would hang, so only an answer proves it was not read.
#[tokio::test]
async fn a_stale_or_replayed_nonce_is_refused_before_the_body_is_read() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let api = Api::start().await;
    let stale = now_unix() - 120;
    let body = br#"{"name":"x"}"#;
    let signed = api.miner.sign_management_at(api.miner.ss58(), Payload::Body(body), stale);
    let mut head = String::from(
        "POST /servers/ HTTP/1.1\r\nHost: api\r\nContent-Type: application/json\r\nContent-Length: 65536\r\n",
    );
    for (k, v) in signed.iter() {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut conn = tokio::net::TcpStream::connect(api.addr).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&body[..5]).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(60), conn.read(&mut answer))
        .await
        .expect("no answer: the API waited for the body of a request it could refuse from its headers")
        .unwrap();
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    assert!(text.contains("old"), "{text}");
}

/// Management signatures over the plain purpose `management` bind neither method
/// nor path. Signatures bound to them (`management:<METHOD> <path>`, what minerctl
/// sends) cannot be redirected; bound-only mode refuses the plain form.
#[tokio::test]
async fn bound_management_signatures_cannot_be_redirected_and_bound_only_refuses_the_plain_form() {
    let bound = |api: &Api, method: Method, sign_path: &str, send_path: &str| {
        let purpose = miner_api::auth::bound_purpose(&method, sign_path);
        let headers = api.miner.sign_management(api.miner.ss58(), Payload::Purpose(&purpose));
        let mut req = api.http.request(method, api.url(send_path));
        for (k, v) in headers.iter() {
            req = req.header(k, v);
        }
        req
    };
    let api = Api::start().await;
    // Bound to its own route: accepted.
    assert_eq!(bound(&api, Method::GET, "/servers/", "/servers/").send().await.unwrap().status(), 200);
    // Signed for GET /servers/, sent as DELETE /deployments/purge: refused, nothing published.
    let redirected = bound(&api, Method::GET, "/servers/", "/deployments/purge");
    let redirected = redirected.build().unwrap();
    let mut as_delete = reqwest::Request::new(Method::DELETE, redirected.url().clone());
    *as_delete.headers_mut() = redirected.headers().clone();
    assert_eq!(api.http.execute(as_delete).await.unwrap().status(), 401);
    let other_path = bound(&api, Method::DELETE, "/deployments/abc", "/deployments/purge");
    assert_eq!(other_path.send().await.unwrap().status(), 401);
    assert!(api.events().await.is_empty(), "a redirected signature published an event");
    // The original CLI's plain purpose keeps working by default.
    assert_eq!(api.get("/servers/").send().await.unwrap().status(), 200);

    let strict = Api::start_with(Options { bound_only: true, ..Options::default() }).await;
    let (status, body) = json_of(strict.get("/servers/").send().await.unwrap()).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(bound(&strict, Method::GET, "/servers/", "/servers/").send().await.unwrap().status(), 200);
}

#[tokio::test]
async fn openapi_documents_exactly_the_served_routes() {
    let api = Api::start().await;
    let doc: Value = api.http.get(api.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    let paths = doc["paths"].as_object().unwrap();
    let mut documented = Vec::new();
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            documented.push(format!("{} {path}", method.to_uppercase()));
            // Served: the route answers with something other than "no such endpoint" / 405.
            let concrete = path.replace("{id_or_name}", "nope").replace("{deployment_id}", "nope");
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let body = (m == Method::POST).then(|| json!({}));
            let resp = api.signed(m, &concrete, body.as_ref(), &api.miner).send().await.unwrap();
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            assert_ne!(status, 405, "{method} {path} not served");
            assert!(!text.contains("no such endpoint"), "{method} {path} not served");
        }
    }
    documented.sort();
    assert_eq!(
        documented,
        vec![
            "DELETE /deployments/purge",
            "DELETE /deployments/{deployment_id}",
            "DELETE /servers/{id_or_name}",
            "DELETE /servers/{id_or_name}/deployments",
            "GET /metrics",
            "GET /openapi.json",
            "GET /ping",
            "GET /registry/auth",
            "GET /servers/",
            "GET /servers/{id_or_name}/delete_preflight",
            "GET /servers/{id_or_name}/lock",
            "GET /servers/{id_or_name}/unlock",
            "POST /servers/",
        ]
    );
    assert_eq!(
        doc["paths"]["/servers/"]["post"]["requestBody"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ServerArgs"
    );
    // An unknown path is a JSON 404 saying where to look.
    let (status, body) = json_of(api.http.get(api.url("/nope")).send().await.unwrap()).await;
    assert_eq!(status, 404);
    assert!(body["detail"].as_str().unwrap().contains("/openapi.json"));
}

#[tokio::test]
async fn metrics_count_requests_by_route_template() {
    let api = Api::start().await;
    api.seed_inventory().await;
    api.get("/servers/gpu-1/lock").send().await.unwrap();
    api.get("/servers/nope/lock").send().await.unwrap();
    let text = api.http.get(api.url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(
        text.contains(
            r#"miner_api_requests_total{method="GET",route="/servers/{id_or_name}/lock",status="200"} 1"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"miner_api_requests_total{method="GET",route="/servers/{id_or_name}/lock",status="404"} 1"#
        ),
        "{text}"
    );
    assert!(!text.contains("gpu-1"), "raw paths must not become labels");
}

/// hyper accepts any token as a method: made-up ones must not grow the label set.
#[tokio::test]
async fn made_up_methods_share_one_metrics_label() {
    let api = Api::start().await;
    let metrics = || async { api.http.get(api.url("/metrics")).send().await.unwrap().text().await.unwrap() };
    metrics().await;
    let before = metrics().await;
    for n in 1..=50 {
        let method = reqwest::Method::from_bytes(format!("FOO{n}").as_bytes()).unwrap();
        for path in ["/ping", &format!("/made-up/{n}")] {
            let status = api.http.request(method.clone(), api.url(path)).send().await.unwrap().status();
            assert!(status.is_client_error(), "FOO{n} {path}: {status}");
        }
    }
    let after = metrics().await;
    assert!(!after.contains("FOO"), "{after}");
    assert!(!after.contains("made-up"), "raw paths must not become labels: {after}");
    for line in [
        r#"miner_api_requests_total{method="other",route="/ping",status="405"} 50"#,
        r#"miner_api_requests_total{method="other",route="unmatched",status="404"} 50"#,
    ] {
        assert!(after.lines().any(|l| l == line), "{line}\n{after}");
    }
    // Two series (count and seconds) per (method, route, status), nothing else.
    assert_eq!(after.lines().count(), before.lines().count() + 4, "{before}\n---\n{after}");
}

// ---- POST /servers/ ----

fn args(api_validator: &str) -> Value {
    json!({"name": "gpu-9", "validator": api_validator, "hourly_cost": 0.7, "gpu_short_ref": "a6000"})
}

#[tokio::test]
async fn add_refuses_bad_arguments_before_touching_anything() {
    let api = Api::start().await;
    api.seed_inventory().await;
    let v = validators().supported[0].hotkey.clone();
    let cases = [
        (json!({"name": "gpu-9"}), 400, "body must be ServerArgs"),
        (
            json!({"name": "gpu-9", "validator": v, "hourly_cost": 0.0, "gpu_short_ref": "a6000"}),
            400,
            "hourly_cost",
        ),
        (json!({"name": " ", "validator": v, "hourly_cost": 1.0, "gpu_short_ref": "a6000"}), 400, "name"),
        (
            json!({"name": "gpu-9", "validator": v, "hourly_cost": 1.0, "gpu_short_ref": ""}),
            400,
            "gpu_short_ref",
        ),
        (args("5Unknown"), 400, "not one of the supported validators"),
        (
            json!({"name": "gpu-1", "validator": v, "hourly_cost": 1.0, "gpu_short_ref": "a6000"}),
            409,
            "already tracked",
        ),
        (args(&v), 503, "add-node is not available"),
    ];
    for (body, status, why) in cases {
        let (got, reply) = json_of(api.post("/servers/", &body).send().await.unwrap()).await;
        assert_eq!(got, status, "{body} -> {reply}");
        assert!(reply["detail"].as_str().unwrap().contains(why), "{why}: {reply}");
    }
    assert_eq!(api.db.list_servers().await.unwrap().len(), 1);
}

/// Scripted steps, to check the HTTP side of add-node (the real steps need the cluster).
struct Scripted {
    fail: bool,
}

#[async_trait]
impl NodeBootstrap for Scripted {
    async fn preflight(&self, args: &ServerArgs) -> Result<(), ApiError> {
        if args.gpu_short_ref == "h999" {
            return Err(ApiError::bad_request("gpu_short_ref h999 is not supported by the validator"));
        }
        Ok(())
    }
    async fn run(
        &self,
        args: ServerArgs,
        progress: Progress,
        _stop: tokio_util::sync::CancellationToken,
    ) -> Result<(), String> {
        progress.say(format!("labelling node {}", args.name)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        if self.fail { Err("graval pod failed".into()) } else { Ok(()) }
    }
}

async fn stream_lines(resp: reqwest::Response) -> Vec<Value> {
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let text = resp.text().await.unwrap();
    text.split("\n\n")
        .filter(|c| !c.is_empty())
        .map(|c| serde_json::from_str(c.strip_prefix("data: ").expect("data: prefix")).unwrap())
        .collect()
}

#[tokio::test]
async fn add_streams_progress_and_ends_with_a_result_line() {
    let v = validators().supported[0].hotkey.clone();
    for (fail, last) in [
        (false, "completed server bootstrapping in"),
        (true, "error: bootstrap of gpu-9 failed: graval pod failed"),
    ] {
        let api =
            Api::start_with(Options { bootstrap: Some(Arc::new(Scripted { fail })), ..Options::default() })
                .await;
        let resp = api.post("/servers/", &args(&v)).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        let lines = stream_lines(resp).await;
        assert_eq!(lines[0]["message"], "labelling node gpu-9");
        assert!(lines[0]["timestamp"].as_str().unwrap().contains('T'));
        assert!(lines.last().unwrap()["message"].as_str().unwrap().starts_with(last), "{lines:?}");

        let mut bad = args(&v);
        bad["gpu_short_ref"] = json!("h999");
        let (status, body) = json_of(api.post("/servers/", &bad).send().await.unwrap()).await;
        assert_eq!(status, 400);
        assert!(body["detail"].as_str().unwrap().contains("h999"));
    }
}

#[tokio::test]
async fn every_management_route_refuses_unsigned_requests_before_doing_anything() {
    let api = Api::start().await;
    api.seed_inventory().await;
    let doc: Value = api.http.get(api.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    let mut checked = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            if op.get("security").is_none() {
                continue;
            }
            let concrete = path.replace("{id_or_name}", "gpu-1").replace("{deployment_id}", "d-svc");
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let (status, body) =
                json_of(api.http.request(m, api.url(&concrete)).body("{}").send().await.unwrap()).await;
            assert_eq!(status, 401, "{method} {path}");
            assert!(body["detail"].as_str().unwrap().contains("missing header"), "{method} {path}: {body}");
            checked += 1;
        }
    }
    assert_eq!(checked, 9);
    assert!(api.events().await.is_empty(), "a refused request published nothing");
    assert!(!api.db.find_server("gpu-1").await.unwrap().unwrap().locked);
    assert_eq!(api.db.all_deployments().await.unwrap().len(), 2);
}

#[tokio::test]
async fn bodies_are_bounded_and_strangers_bodies_are_never_read() {
    let api = Api::start().await;
    let big = json!({"name": "x".repeat(70 * 1024)});
    let (status, body) = json_of(api.post("/servers/", &big).send().await.unwrap()).await;
    assert_eq!(status, 413, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("larger than 65536 bytes"));
    // A stranger's megabyte is refused on its headers alone: 401, not 413.
    let stranger = hotkey(OTHER_SEED);
    let resp = api
        .signed(Method::POST, "/servers/", Some(&json!({"pad": "y".repeat(1 << 20)})), &stranger)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

/// A signed request whose body never finishes is cut after `BODY_TIMEOUT` (408), and it
/// changes nothing: a held-back body cannot be finished later, outside the nonce window.
#[tokio::test]
async fn a_signed_request_whose_body_never_finishes_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let api = Api::start().await;
    let body = serde_json::to_vec(&json!({"name": "held", "validator": "x"})).unwrap();
    let req = api.signed_bytes(Method::POST, "/servers/", Some(body.clone()), &api.miner).build().unwrap();
    let mut head =
        format!("POST /servers/ HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\n", api.addr, body.len());
    for (name, value) in req.headers() {
        head.push_str(&format!("{name}: {}\r\n", value.to_str().unwrap()));
    }
    head.push_str("\r\n");
    // Before the first byte: the API's clock for the body starts later than this one.
    let started = std::time::Instant::now();
    let mut tcp = tokio::net::TcpStream::connect(api.addr).await.unwrap();
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(&body[..body.len() / 2]).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(60), tcp.read_to_end(&mut answer)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("not received within 10 s"), "{answer}");
    assert!(started.elapsed() >= miner_api::auth::BODY_TIMEOUT, "cut only after the timeout");
    assert!(api.db.list_servers().await.unwrap().is_empty());
    assert!(api.events().await.is_empty());
}
