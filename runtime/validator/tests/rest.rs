//! The REST client against the validator emulator, which verifies every signature
//! the way chutes-api does and records what arrived.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: panics are the failure report

mod common;

use std::time::Duration;

use chutes_protocol::Payload;
use chutes_protocol::auth::{now_unix, sha256_hex, verify_miner_request};
use common::*;
use miner_validator::rest::{
    LaunchError, Listing, ListingReply, RestError, RestOptions, ValidatorClient, Verification,
};
use serde_json::json;
use validator_emulator::{Emulator, Listing as EmuListing};

fn fast() -> RestOptions {
    RestOptions {
        attempts: 3,
        backoff_initial: Duration::from_millis(20),
        backoff_cap: Duration::from_millis(100),
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(5),
        ..RestOptions::default()
    }
}

fn client(emulator: &Emulator) -> ValidatorClient {
    ValidatorClient::with_options(&target(emulator.socket_url(), emulator.api_url()), miner_hotkey(), fast())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_is_signed_as_the_validator_expects() {
    let emulator = Emulator::start();
    let hotkey = miner_hotkey();
    emulator.register_hotkeys([hotkey.ss58()]);
    let c = client(&emulator);

    assert_eq!(c.nodes_supported().await.unwrap(), ["h100", "a100"]);
    let nodes = json!({"nodes": [{"uuid": "GPU-1", "device_index": 0, "gpu_identifier": "h100", "verification_host": "1.2.3.4", "verification_port": 30001}], "server_id": "srv"});
    let reply = c.post_nodes(&nodes).await.unwrap();
    assert_eq!(reply.nodes[0]["seed"], 42);
    assert_eq!(c.verification_status(&reply.task_id).await.unwrap(), Verification::Pending);
    emulator.set_verification_status(&reply.task_id, "failed");
    assert_eq!(c.verification_status(&reply.task_id).await.unwrap(), Verification::Failed("failed".into()));
    c.delete_node("GPU-1").await.unwrap();
    emulator.set_chute("c1", "v1", json!({"chute_id": "c1", "name": "x", "node_selector": {"gpu_count": 1}}));
    assert_eq!(c.chute("c1", "v1").await.unwrap()["node_selector"]["gpu_count"], 1);
    assert_eq!(c.inventory().await.unwrap(), Vec::<serde_json::Value>::new());
    c.release_job("j1").await.unwrap();
    emulator.set_utilization(vec![json!({"chute_id": "c1", "scalable": true, "update_in_progress": false})]);
    assert_eq!(c.utilization().await.unwrap()[0]["scalable"], true);
    assert!(c.rolling_updates().await.unwrap().is_empty());
    let launch = c.launch_config("c1", None).await.unwrap();
    assert!(!launch.token.is_empty() && !launch.config_id.is_empty());
    let instance = c.announce_instance("c1", &["GPU-1".into()], "1.2.3.4", 32000).await.unwrap();
    let instance_id = instance["instance_id"].as_str().unwrap().to_owned();
    assert_eq!(c.activate_instance("c1", &instance_id).await.unwrap()["verified"], true);
    assert!(c.delete_instance("c1", &instance_id).await.unwrap());
    assert!(!c.delete_instance("c1", &instance_id).await.unwrap(), "404 on delete means already gone");

    let requests = emulator.requests();
    for r in &requests {
        assert!(r.auth.is_ok(), "{} {} refused: {:?}", r.method, r.path, r.auth);
        assert!(
            r.status < 300 || (r.method == "DELETE" && r.status == 404),
            "{} {} -> {}",
            r.method,
            r.path,
            r.status
        );
    }
    // Which message each request signed, checked independently of the emulator.
    let signed_as = |method: &str, path: &str| {
        let r = requests.iter().find(|r| r.method == method && r.path == path).unwrap();
        let mut headers = http::HeaderMap::new();
        for (k, v) in &r.headers {
            headers.insert(http::HeaderName::try_from(k.as_str()).unwrap(), v.parse().unwrap());
        }
        for purpose in ["miner", "launch", "instances", "nodes", "graval"] {
            if verify_miner_request(&headers, Payload::Purpose(purpose), now_unix(), 600).is_ok() {
                return purpose.to_owned();
            }
        }
        if verify_miner_request(&headers, Payload::Body(&r.body), now_unix(), 600).is_ok() {
            return format!("body {}", &sha256_hex(&r.body)[..8]);
        }
        if r.headers.contains_key("x-chutes-signature") { "bad".into() } else { "unsigned".into() }
    };
    assert_eq!(signed_as("GET", "/nodes/supported"), "unsigned");
    assert!(signed_as("POST", "/nodes/").starts_with("body "));
    assert_eq!(signed_as("GET", "/nodes/verification_status"), "graval");
    assert_eq!(signed_as("DELETE", "/nodes/GPU-1"), "nodes");
    assert_eq!(signed_as("GET", "/miner/chutes/c1/v1"), "miner");
    assert_eq!(signed_as("DELETE", "/miner/jobs/j1"), "miner");
    assert_eq!(signed_as("GET", "/chutes/utilization"), "unsigned");
    assert_eq!(signed_as("GET", "/instances/launch_config"), "launch");
    assert!(signed_as("POST", "/instances/c1/").starts_with("body "));
    assert!(signed_as("PATCH", &format!("/instances/c1/{instance_id}")).starts_with("body "));
    assert_eq!(signed_as("DELETE", &format!("/instances/c1/{instance_id}")), "instances");
    // The body hashed is the body sent, compact JSON with a JSON content type.
    let post = requests.iter().find(|r| r.path == "/nodes/").unwrap();
    assert_eq!(post.json(), nodes);
    assert_eq!(post.headers["content-type"], "application/json");
    assert!(!String::from_utf8_lossy(&post.body).contains(": "), "compact like orjson");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_stream_items_and_the_no_items_sentinel() {
    let emulator = Emulator::start();
    let c = client(&emulator);
    let big_code = "x".repeat(3 << 20);
    emulator.set_listing(
        EmuListing::Chutes,
        vec![json!({"chute_id": "a", "code": big_code}), json!({"chute_id": "b"})],
    );
    match c.listing(Listing::Chutes).await.unwrap() {
        ListingReply::Items(items) => {
            assert_eq!(items.len(), 2);
            assert_eq!(
                items[0]["code"].as_str().unwrap().len(),
                3 << 20,
                "a 3 MiB chute survives the stream"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(c.listing(Listing::Images).await.unwrap(), ListingReply::NoItems);
    c.listing(Listing::Instances).await.unwrap();
    let r = emulator.requests();
    let instances = r.iter().find(|r| r.path == "/miner/instances/").unwrap();
    assert_eq!(instances.query, "explicit_null=True");
    assert_eq!(instances.auth, Ok(miner_hotkey().ss58().to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_config_refusals_are_typed_and_never_retried() {
    let emulator = Emulator::start();
    let c = client(&emulator);
    emulator.set_launch_capacity(Some(1));
    c.launch_config("c1", None).await.unwrap();
    assert!(matches!(c.launch_config("c1", None).await, Err(LaunchError::AtCapacity)));
    emulator.set_launch_capacity(None);
    emulator.add_job("j1");
    c.launch_config("c1", Some("j1")).await.unwrap();
    assert!(matches!(c.launch_config("c1", Some("j1")).await, Err(LaunchError::AlreadyTried)));
    assert!(matches!(c.launch_config("c1", Some("nope")).await, Err(LaunchError::JobNotFound)));
    let statuses: Vec<u16> = emulator
        .requests()
        .iter()
        .filter(|r| r.path == "/instances/launch_config")
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, [200, 423, 200, 403, 404], "one request per call: 4xx is final");
}

/// chutes-api's launch_config records the miner in the job's history and inserts a
/// config on every call: a retry after a lost answer is refused (403) or leaks a config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn launch_config_is_sent_once_even_after_a_5xx_or_a_timeout() {
    let emulator = Emulator::start();
    emulator.add_job("j1");
    emulator.add_job("j2");
    let launches = || {
        emulator.requests().into_iter().filter(|r| r.path == "/instances/launch_config").collect::<Vec<_>>()
    };

    // A 502 (say, from a proxy in front of a validator that did grant it).
    emulator.fail_next("/instances/launch_config", 502, 1);
    let err = client(&emulator).launch_config("c1", Some("j1")).await.unwrap_err();
    assert!(matches!(&err, LaunchError::Other(e) if e.status() == Some(502)), "{err}");
    assert_eq!(launches().len(), 1, "a 502 on launch_config is not retried");

    // The validator granted the job but its answer never arrived in time.
    let hold = emulator.hold_next("/instances/launch_config");
    let impatient = ValidatorClient::with_options(
        &target(emulator.socket_url(), emulator.api_url()),
        miner_hotkey(),
        // Long enough for the request to reach the emulator on a busy machine; the answer
        // is held, so the timeout fires all the same.
        RestOptions { timeout: Duration::from_secs(2), ..fast() },
    )
    .unwrap();
    let err = impatient.launch_config("c1", Some("j2")).await.unwrap_err();
    tokio::time::timeout(Duration::from_secs(30), hold.made()).await.expect("the held request never arrived");
    hold.release();
    assert!(
        matches!(&err, LaunchError::Other(RestError::Transport { attempts: 1, .. })),
        "a timeout is the caller's to judge, not a retry's 403: {err}"
    );
    let statuses: Vec<u16> = launches().iter().map(|r| r.status).collect();
    assert_eq!(statuses, [502, 200], "one request per call");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_refused_connections_are_retried_client_errors_are_not() {
    let mut emulator = Emulator::start();
    let c = client(&emulator);
    emulator.fail_next("/chutes/utilization", 503, 2);
    c.utilization().await.unwrap();
    emulator.fail_next("/nodes/", 502, 1);
    c.post_nodes(&json!({"nodes": [], "server_id": "s"})).await.unwrap();
    emulator.fail_next("/chutes/rolling_updates", 500, 5);
    let err = c.rolling_updates().await.unwrap_err();
    assert_eq!(err.status(), Some(500));
    assert!(err.to_string().contains("after 3 attempt(s)"), "{err}");
    emulator.fail_next("/miner/chutes/c9", 400, 5);
    assert_eq!(c.chute("c9", "v").await.unwrap_err().status(), Some(400));

    let count = |path: &str| emulator.requests().iter().filter(|r| r.path == path).count();
    assert_eq!(count("/chutes/utilization"), 3, "two 503s then success");
    assert_eq!(count("/nodes/"), 2, "a 502 on POST is retried too: no server took it");
    // A 500 or 504 may come after the write was applied: the caller sees it, once.
    for status in [500, 504] {
        emulator.fail_next("/nodes/", status, 1);
        let err = c.post_nodes(&json!({"nodes": [], "server_id": "s"})).await.unwrap_err();
        assert_eq!(err.status(), Some(status));
        assert!(err.to_string().contains("after 1 attempt(s)"), "{err}");
    }
    assert_eq!(count("/nodes/"), 4, "one request each");
    assert_eq!(count("/chutes/rolling_updates"), 3, "gave up after the configured attempts");
    assert_eq!(count("/miner/chutes/c9/v"), 1, "a 400 is final");

    // Nothing listening: retried, then a transport error naming the call.
    emulator.stop();
    let err = c.nodes_supported().await.unwrap_err();
    assert!(matches!(err, RestError::Transport { attempts: 3, .. }), "{err}");
    assert!(err.to_string().contains("GET http://127.0.0.1:"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_api_url_is_refused_up_front() {
    let err =
        ValidatorClient::new(&target("ws://x".into(), "ftp://validator".into()), miner_hotkey()).unwrap_err();
    assert!(err.to_string().contains("ftp://validator"), "{err}");
    assert!(ValidatorClient::new(&target("ws://x".into(), "not a url".into()), miner_hotkey()).is_err());
}

/// Serves one canned HTTP reply to every request; returns its base URL.
async fn canned_server(body: &'static str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else { return };
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tcp.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let reply = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tcp.write_all(reply.as_bytes()).await;
            });
        }
    });
    url
}

/// A launch config whose shape drifted (here a numeric `config_id`) fails to decode; the
/// error, which Gepetto logs, names where it broke but never quotes the token. Other
/// replies are still quoted, which is what makes drift diagnosable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_config_that_fails_to_decode_never_quotes_its_token() {
    let api = canned_server(r#"{"token": "eyJhbGciOiJIUzI1NiJ9.SECRET-PART.sig", "config_id": 17}"#).await;
    let c = ValidatorClient::with_options(&target("ws://127.0.0.1:1".into(), api), miner_hotkey(), fast())
        .unwrap();
    let err = c.launch_config("c1", Some("j1")).await.unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(matches!(&err, LaunchError::Other(RestError::Decode { .. })), "{text}");
    assert!(!text.contains("SECRET") && !text.contains("eyJ"), "the token leaked: {text}");
    assert!(text.contains("line 1 column"), "{text}");

    // The same reply to another read is quoted: there is no secret in it.
    let shown = c.nodes_supported().await.unwrap_err();
    assert!(shown.to_string().contains("config_id"), "{shown}");
}
