//! The API's own inputs, tried at scale: request bodies of `POST /servers/` and the
//! path keys of the server and deployment routes, each correctly signed by the miner
//! (so every input passes authentication and reaches the parser, as an operator's
//! typo or a buggy client would). Each must get a clear refusal naming what is wrong,
//! never a 5xx or a hang, and must change nothing: no server row, no event.
//!
//! Case counts: `PROPTEST_CASES` overrides the defaults below (200/300/150).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::OnceLock;

use common::{Api, validators};
use proptest::prelude::*;
use proptest::test_runner::TestRunner;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
    })
}

fn runner(default_cases: u32) -> TestRunner {
    TestRunner::new(test_support::proptest_config(default_cases))
}

/// How every refusal of a body that is not `ServerArgs` begins.
const PREFIX: &str = "body must be ServerArgs {name, validator, hourly_cost, gpu_short_ref}: ";

/// Sends one signed request and returns its status and the `detail` of a refusal.
fn send(api: &Api, method: Method, path: &str, body: Option<Vec<u8>>) -> (StatusCode, String) {
    runtime().block_on(async {
        let resp = tokio::time::timeout(
            std::time::Duration::from_secs(60),
            api.signed_bytes(method.clone(), path, body, &api.miner).send(),
        )
        .await
        .unwrap_or_else(|_| panic!("{method} {path} got no answer in 60 s"))
        .unwrap();
        let status = resp.status();
        let text = resp.text().await.unwrap();
        let detail = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v.get("detail").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_default();
        (status, detail)
    })
}

/// Nothing changed: no server tracked, no event published.
fn assert_unchanged(api: &Api, what: &str) {
    runtime().block_on(async {
        assert!(api.db.list_servers().await.unwrap().is_empty(), "{what}: a server row was written");
        assert!(api.events().await.is_empty(), "{what}: an event was published");
    });
}

/// JSON leaves of every type, with the awkward values a field parser meets.
fn any_leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("JSON has no NaN or infinity", |f| f.is_finite()).prop_map(|f| json!(f)),
        Just(json!(0)),
        Just(json!(-1.5)),
        Just(json!(1e308)),
        ".{0,40}".prop_map(Value::String),
        Just(json!("   ")),
        Just(json!("")),
        prop::collection::vec(any::<u8>(), 0..4).prop_map(|v| json!(v)),
        Just(json!({})),
    ]
}

#[test]
fn arbitrary_bytes_as_add_node_bodies_are_refused_as_bad_requests() {
    let api = runtime().block_on(Api::start());
    let tried = std::cell::Cell::new(0u32);
    runner(200)
        .run(&prop::collection::vec(any::<u8>(), 0..512), |body| {
            // A body that happens to be valid JSON of the right shape is another test's case.
            prop_assume!(serde_json::from_slice::<Value>(&body).map(|v| !v.is_object()).unwrap_or(true));
            tried.set(tried.get() + 1);
            let (status, detail) = send(&api, Method::POST, "/servers/", Some(body));
            prop_assert_eq!(status, StatusCode::BAD_REQUEST, "detail: {}", detail);
            prop_assert!(detail.contains("ServerArgs"), "the refusal names the expected body: {detail}");
            Ok(())
        })
        .unwrap();
    assert_unchanged(&api, "arbitrary bytes");
    println!("POST /servers/ arbitrary bytes: {} inputs", tried.get());
}

#[test]
fn add_node_bodies_with_fields_of_any_type_are_refused_naming_the_field() {
    let api = runtime().block_on(Api::start());
    let supported = validators().supported[0].hotkey.clone();
    let field = |name: &'static str, good: Value| {
        prop_oneof![3 => Just(Some(good)), 2 => any_leaf().prop_map(Some), 1 => Just(None)]
            .prop_map(move |v| (name, v))
    };
    let body = (
        field("name", json!("gpu-node-1")),
        field("validator", json!(supported)),
        field("hourly_cost", json!(0.5)),
        field("gpu_short_ref", json!("h100_sxm")),
        prop::option::of(("[a-z_]{1,12}", any_leaf())),
    );
    let tried = std::cell::Cell::new(0u32);
    runner(300)
        .run(&body, |(name, validator, cost, gpu, extra)| {
            let mut object = serde_json::Map::new();
            for (k, v) in [name, validator, cost, gpu] {
                if let Some(v) = v {
                    object.insert(k.to_owned(), v);
                }
            }
            if let Some((k, v)) = extra {
                object.entry(k).or_insert(v);
            }
            tried.set(tried.get() + 1);
            let bytes = serde_json::to_vec(&Value::Object(object.clone())).unwrap();
            let (status, detail) = send(&api, Method::POST, "/servers/", Some(bytes));
            match status {
                // A well-formed request: this API has no Kubernetes client, so add-node
                // is refused as unavailable, before anything is written.
                StatusCode::SERVICE_UNAVAILABLE => {
                    prop_assert!(detail.contains("add-node is not available"), "{detail}")
                }
                StatusCode::BAD_REQUEST => {
                    let why = detail.strip_prefix(PREFIX).unwrap_or(&detail);
                    let named =
                        ["name", "validator", "hourly_cost", "gpu_short_ref"].iter().any(|f| why.contains(f));
                    prop_assert!(named, "a refusal names the field at fault: {detail} (body {object:?})");
                }
                other => prop_assert!(false, "unexpected {other} for {object:?}: {detail}"),
            }
            Ok(())
        })
        .unwrap();
    assert_unchanged(&api, "typed bodies");
    println!("POST /servers/ typed bodies: {} inputs", tried.get());
}

#[test]
fn unknown_keys_in_paths_are_not_found_and_change_nothing() {
    let api = runtime().block_on(Api::start());
    let routes: [(Method, &str); 6] = [
        (Method::GET, "/servers/{}/lock"),
        (Method::GET, "/servers/{}/unlock"),
        (Method::GET, "/servers/{}/delete_preflight"),
        (Method::DELETE, "/servers/{}"),
        (Method::DELETE, "/servers/{}/deployments"),
        (Method::DELETE, "/deployments/{}"),
    ];
    let tried = std::cell::Cell::new(0u32);
    // Any characters, percent-encoded as a client does; the key is never found. Except
    // "." and "..": URL parsers (reqwest's included) read `%2E` and `%2E%2E` as dot
    // segments and resolve them away, so no client can send them as a key (the request
    // that leaves is `/servers/lock`, a different route).
    let key = ".{1,40}".prop_filter("a dot segment is not a key", |k| k != "." && k != "..");
    runner(150)
        .run(&(0..routes.len(), key), |(r, key)| {
            let (method, template) = &routes[r];
            let encoded: String = key
                .bytes()
                .map(|b| match b {
                    b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'~' => (b as char).to_string(),
                    _ => format!("%{b:02X}"),
                })
                .collect();
            let path = template.replace("{}", &encoded);
            tried.set(tried.get() + 1);
            let (status, detail) = send(&api, method.clone(), &path, None);
            prop_assert_eq!(status, StatusCode::NOT_FOUND, "{} {}: {}", method, path, detail);
            prop_assert!(!detail.is_empty(), "{method} {path}: a 404 says what was not found");
            Ok(())
        })
        .unwrap();
    assert_unchanged(&api, "path keys");
    println!("server/deployment path keys: {} inputs", tried.get());
}
