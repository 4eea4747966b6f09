#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Porter over real HTTP: the right answer for signed whitelisted validators,
//! nothing for anyone else, and a bounded cost under a flood.

use std::time::Duration;

use chutes_protocol::Hotkey;
use chutes_protocol::auth::{Payload, management_message, now_unix};
use miner_porter::PorterConfig;
use serde_json::{Value, json};

fn key(seed: u8) -> Hotkey {
    Hotkey::from_seed(&[seed; 32], "test").unwrap()
}

async fn start(max_in_flight: usize) -> (String, Hotkey, Hotkey) {
    // reqwest may be built without a rustls provider when other crates are in the build.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let miner = key(1);
    let validator = key(2);
    let cfg = PorterConfig {
        real_host: "203.0.113.9".into(),
        real_port: 32000,
        miner_ss58: miner.ss58().into(),
        whitelist: vec![validator.ss58().into()],
        max_in_flight,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { miner_porter::serve(listener, &cfg, std::future::pending()).await });
    (base, miner, validator)
}

fn signed(
    http: &reqwest::Client,
    url: &str,
    miner: &str,
    signer: &Hotkey,
    purpose: &str,
) -> reqwest::RequestBuilder {
    let nonce = now_unix();
    let sig =
        signer.sign(management_message(miner, signer.ss58(), nonce, Payload::Purpose(purpose)).as_bytes());
    http.get(url)
        .header("X-Chutes-Miner", miner)
        .header("X-Chutes-Validator", signer.ss58())
        .header("X-Chutes-Nonce", nonce.to_string())
        .header("X-Chutes-Signature", sig)
}

#[tokio::test]
async fn whitelisted_signed_validators_get_the_real_address() {
    let (base, miner, validator) = start(64).await;
    let http = reqwest::Client::new();
    let resp =
        signed(&http, &format!("{base}/axon"), miner.ss58(), &validator, "porter").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await.unwrap(), json!({"host": "203.0.113.9", "port": 32000}));
}

#[tokio::test]
async fn everyone_else_gets_nothing() {
    let (base, miner, validator) = start(64).await;
    let http = reqwest::Client::new();
    let url = format!("{base}/axon");
    let stranger = key(3);
    let cases = [
        (signed(&http, &url, miner.ss58(), &stranger, "porter"), "not allowed to sign"),
        (signed(&http, &url, miner.ss58(), &validator, "management"), "signature does not match"),
        (signed(&http, &url, stranger.ss58(), &validator, "porter"), "but this is miner"),
        (http.get(&url), "missing header"),
    ];
    for (req, why) in cases {
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{why}");
        let body: Value = resp.json().await.unwrap();
        assert!(body["detail"].as_str().unwrap().contains(why), "{why}: {body}");
        assert!(!body.to_string().contains("203.0.113.9"));
    }
    // A replayed request is refused.
    let req = signed(&http, &url, miner.ss58(), &validator, "porter").build().unwrap();
    let again = req.try_clone().unwrap();
    assert_eq!(http.execute(req).await.unwrap().status(), 200);
    assert_eq!(http.execute(again).await.unwrap().status(), 401);
    // Nothing else is served.
    for path in ["/", "/ping", "/openapi.json", "/axon/x"] {
        let resp = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(resp.status(), 404, "{path}");
        assert!(resp.bytes().await.unwrap().is_empty(), "{path}");
    }
}

#[tokio::test]
async fn a_flood_of_forged_requests_leaves_porter_answering() {
    let (base, miner, validator) = start(8).await;
    let http = reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap();
    let url = format!("{base}/axon");
    // Forged signatures by a whitelisted key: every one reaches the sr25519 check.
    let forged: Vec<_> = (0..2000)
        .map(|_| {
            let http = http.clone();
            let url = url.clone();
            let miner = miner.ss58().to_owned();
            let v = validator.ss58().to_owned();
            tokio::spawn(async move {
                http.get(url)
                    .header("X-Chutes-Miner", miner)
                    .header("X-Chutes-Validator", v)
                    .header("X-Chutes-Nonce", now_unix().to_string())
                    .header("X-Chutes-Signature", "ab".repeat(64))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            })
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for f in forged {
        if let Ok(Ok(s)) = f.await {
            *statuses.entry(s).or_default() += 1;
        }
    }
    assert!(statuses.keys().all(|s| *s == 401 || *s == 503), "only refusals: {statuses:?}");
    assert!(statuses.values().sum::<usize>() >= 1900, "porter kept answering: {statuses:?}");
    // And the real validator still gets through afterwards.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let resp = signed(&http, &url, miner.ss58(), &validator, "porter").send().await.unwrap();
    assert_eq!(resp.status(), 200);
}
