#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The API client against a scripted HTTP server: what the operator sees when the API
//! refuses, fails the flow, or the stream breaks off. (The real API is driven end to end
//! in provision/minerctl/tests/nodes_lab.rs.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use chutes_protocol::Hotkey;
use minerctl_nodes::{MinerApi, NodesError, ServerArgs};

const SEED: &str = "0x9f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c";

/// Serves `reply` for every request; records the request headers and body.
async fn serve(
    reply: impl Fn() -> Response + Clone + Send + Sync + 'static,
) -> (String, Arc<Mutex<Vec<(HeaderMap, String)>>>) {
    let seen = Arc::new(Mutex::new(vec![]));
    let s = seen.clone();
    let app = axum::Router::new().fallback(move |headers: HeaderMap, body: String| {
        let reply = reply.clone();
        let s = s.clone();
        async move {
            s.lock().unwrap().push((headers, body));
            reply()
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

fn args() -> ServerArgs {
    ServerArgs {
        name: "gpu-1".into(),
        validator: "5Validator".into(),
        hourly_cost: 0.8,
        gpu_short_ref: "a6000".into(),
    }
}

fn client(url: &str) -> MinerApi {
    MinerApi::new(url, Arc::new(Hotkey::from_seed_hex(SEED, "test").unwrap())).unwrap()
}

fn sse(chunks: Vec<&'static str>, then_cut: bool) -> Response {
    // Each chunk is sent on its own, as the API flushes each line; a cut comes after the
    // last one was delivered (as when the API's pod dies mid-flow).
    let mut steps: Vec<Result<String, std::io::Error>> =
        chunks.into_iter().map(|c| Ok(c.to_string())).collect();
    if then_cut {
        steps.push(Err(std::io::Error::other("connection reset")));
    }
    let stream = futures_util::stream::unfold(steps.into_iter(), |mut it| async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        it.next().map(|item| (item, it))
    });
    Response::builder().header("content-type", "text/event-stream").body(Body::from_stream(stream)).unwrap()
}

#[tokio::test]
async fn progress_lines_arrive_in_order_and_the_body_is_signed() {
    let (url, seen) = serve(|| {
        sse(
            vec![
                "data: {\"timestamp\": \"t\", \"message\": \"labelled node gpu-1\"}\n\ndata: {\"timest",
                "amp\": \"t\", \"message\": \"completed server bootstrapping in 3 seconds!\"}\n\n",
            ],
            false,
        )
    })
    .await;
    let mut lines = vec![];
    let outcome = client(&url).add_server(&args(), |e| lines.push(e.message.clone())).await.unwrap();
    assert_eq!(lines, ["labelled node gpu-1", "completed server bootstrapping in 3 seconds!"]);
    assert_eq!(outcome.completion, "completed server bootstrapping in 3 seconds!");
    let (headers, body) = seen.lock().unwrap()[0].clone();
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"name": "gpu-1", "validator": "5Validator", "hourly_cost": 0.8, "gpu_short_ref": "a6000"})
    );
    let key = Hotkey::from_seed_hex(SEED, "test").unwrap();
    assert_eq!(headers["x-chutes-miner"], key.ss58());
    assert!(headers.contains_key("x-chutes-signature") && headers.contains_key("x-chutes-nonce"));
    assert!(!format!("{headers:?}").contains(&SEED[2..]), "the seed is never sent");
}

#[tokio::test]
async fn the_api_error_line_is_the_failure_reason() {
    let (url, _) = serve(|| {
        sse(vec!["data: {\"timestamp\": \"t\", \"message\": \"error: bootstrap of gpu-1 failed: node gpu-1 is not Ready\"}\n\n"], false)
    })
    .await;
    let e = client(&url).add_server(&args(), |_| {}).await.unwrap_err();
    assert_eq!(e.to_string(), "bootstrap of gpu-1 failed: node gpu-1 is not Ready");
}

#[tokio::test]
async fn a_stream_cut_before_the_verdict_is_not_success() {
    let (url, _) = serve(|| {
        sse(vec!["data: {\"timestamp\": \"t\", \"message\": \"GraVal bootstrap deployed\"}\n\n"], true)
    })
    .await;
    let mut lines = vec![];
    let e = client(&url).add_server(&args(), |e| lines.push(e.message.clone())).await.unwrap_err();
    assert_eq!(lines, ["GraVal bootstrap deployed"]);
    assert!(e.to_string().contains("progress stream broke"), "{e}");

    // Closed cleanly but without a verdict: also not success, and it says where to look.
    let (url, _) =
        serve(|| sse(vec!["data: {\"timestamp\": \"t\", \"message\": \"waiting\"}\n\n"], false)).await;
    let e = client(&url).add_server(&args(), |_| {}).await.unwrap_err();
    assert!(matches!(e, NodesError::StreamEnded { .. }), "{e}");
    assert!(e.to_string().contains("check `GET /servers/`"), "{e}");
}

#[tokio::test]
async fn refusals_carry_the_api_detail_and_a_missing_server_is_not_an_error_for_preflight() {
    let (url, _) = serve(|| {
        Response::builder()
            .status(StatusCode::CONFLICT)
            .body(Body::from("{\"detail\": \"server gpu-1 is already tracked (id x)\"}"))
            .unwrap()
    })
    .await;
    let e = client(&url).add_server(&args(), |_| {}).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "miner API POST /servers/ refused (409): server gpu-1 is already tracked (id x)"
    );

    let (url, _) = serve(|| {
        Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(Body::from("{\"detail\": \"No kubernetes node\"}"))
            .unwrap()
    })
    .await;
    assert_eq!(client(&url).delete_preflight("gpu-1").await.unwrap(), None);

    // Nobody listening: the cause is named, not just "error sending request".
    let e = tokio::time::timeout(Duration::from_secs(20), client("http://127.0.0.1:9").servers())
        .await
        .unwrap()
        .unwrap_err();
    assert!(e.to_string().contains("127.0.0.1:9") && e.to_string().to_lowercase().contains("refused"), "{e}");
}

#[test]
fn urls_must_be_the_api_root() {
    let key = Arc::new(Hotkey::from_seed_hex(SEED, "test").unwrap());
    for bad in ["127.0.0.1:32000", "ftp://x", "http://host/servers/", "http://"] {
        let e = MinerApi::new(bad, key.clone()).err().unwrap();
        assert!(e.to_string().starts_with(&format!("miner API URL `{bad}`")), "{e}");
    }
    assert_eq!(MinerApi::new("http://h:32000/", key).unwrap().base(), "http://h:32000");
}
