//! The emulator refuses what the validator refuses: without this, a client test
//! passing against it would prove little.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: panics are the failure report

use std::time::Duration;

use chutes_protocol::auth::now_unix;
use chutes_protocol::{Hotkey, Payload};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use validator_emulator::Emulator;

fn hotkey() -> Hotkey {
    Hotkey::from_seed_hex(&"22".repeat(32), "test seed").unwrap()
}

fn http() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::new()
}

async fn get(emulator: &Emulator, path: &str, headers: Option<chutes_protocol::SignedHeaders>) -> u16 {
    let mut req = http().get(format!("{}{path}", emulator.api_url()));
    for (k, v) in headers.iter().flat_map(|h| h.iter()) {
        req = req.header(k, v);
    }
    req.send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_signatures_are_checked_per_endpoint() {
    let emulator = Emulator::start();
    let key = hotkey();
    assert_eq!(get(&emulator, "/miner/chutes/", None).await, 401, "unsigned");
    assert_eq!(
        get(&emulator, "/miner/chutes/", Some(key.sign_request(Payload::Purpose("launch")))).await,
        401,
        "wrong purpose"
    );
    let stale = key.sign_request_at(Payload::Purpose("miner"), now_unix() - 700);
    assert_eq!(get(&emulator, "/miner/chutes/", Some(stale)).await, 401, "nonce outside 600 s");
    assert_eq!(
        get(&emulator, "/miner/chutes/", Some(key.sign_request(Payload::Purpose("miner")))).await,
        200
    );
    assert_eq!(get(&emulator, "/nodes/supported", None).await, 200, "public");
    assert_eq!(get(&emulator, "/no/such/endpoint", None).await, 404);

    // A body signature must cover the bytes actually sent.
    let signed_for = key.sign_request(Payload::Body(br#"{"nodes":[]}"#));
    let mut req = http().post(format!("{}/nodes/", emulator.api_url())).body(r#"{"nodes":[1]}"#);
    for (k, v) in signed_for.iter() {
        req = req.header(k, v);
    }
    assert_eq!(req.send().await.unwrap().status().as_u16(), 401);

    emulator.register_hotkeys(["5NotThisMiner"]);
    assert_eq!(
        get(&emulator, "/miner/chutes/", Some(key.sign_request(Payload::Purpose("miner")))).await,
        401,
        "unregistered"
    );
    let refused: Vec<_> = emulator.requests().into_iter().filter(|r| r.status == 401).collect();
    assert_eq!(refused.len(), 5);
    assert!(refused.iter().all(|r| r.auth.is_err()));
}

/// Raw socket.io over a websocket: open, join, authenticate, and the reply event.
async fn authenticate_raw(emulator: &Emulator, payload: Value) -> (String, Value) {
    let url = format!("{}/socket.io/?EIO=4&transport=websocket", emulator.socket_url());
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let next = async |ws: &mut tokio_tungstenite::WebSocketStream<_>| loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) if t.as_str() != "2" => return t.to_string(),
            Some(Ok(_)) => continue,
            other => panic!("socket ended: {other:?}"),
        }
    };
    assert!(next(&mut ws).await.starts_with("0{"), "engine.io open");
    ws.send(Message::text("40")).await.unwrap();
    assert!(next(&mut ws).await.starts_with("40"), "namespace joined");
    ws.send(Message::text(format!("42{}", json!(["authenticate", payload])))).await.unwrap();
    let reply = next(&mut ws).await;
    let v: Value = serde_json::from_str(reply.strip_prefix("42").unwrap()).unwrap();
    (v[0].as_str().unwrap().to_owned(), v[1].clone())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_authentication_checks_the_sockets_signature() {
    let emulator = Emulator::start();
    let key = hotkey();
    let as_json = |h: chutes_protocol::SignedHeaders| -> Value {
        Value::Object(h.iter().map(|(k, v)| (k.to_owned(), json!(v))).collect())
    };
    let (event, body) =
        authenticate_raw(&emulator, as_json(key.sign_request(Payload::Purpose("miner")))).await;
    assert_eq!(event, "auth_failed");
    assert!(body["error"].as_str().unwrap().contains("signature"), "{body}");
    let (event, _) = authenticate_raw(&emulator, json!({"X-Chutes-Hotkey": key.ss58()})).await;
    assert_eq!(event, "auth_failed");
    let (event, body) =
        authenticate_raw(&emulator, as_json(key.sign_request(Payload::Purpose("sockets")))).await;
    assert_eq!((event.as_str(), body), ("auth_success", json!({"message": "Authenticated"})));
    let results: Vec<bool> = emulator.auth_attempts().iter().map(|a| a.result.is_ok()).collect();
    assert_eq!(results, [false, false, true]);
}

// ---- The validator's state: catalogue, instance lifecycle, jobs, derived views ----

mod stateful {
    use super::*;
    use validator_emulator::{ChuteJob, ChuteSpec, ImageSpec, JobPort, JobSpec, Step, Traffic};

    pub fn key(byte: &str) -> Hotkey {
        Hotkey::from_seed_hex(&byte.repeat(32), "test seed").unwrap()
    }

    /// A miner speaking to the emulator over HTTP, signing as the real one does.
    pub struct Api<'a> {
        pub emulator: &'a Emulator,
        pub key: Hotkey,
    }

    impl Api<'_> {
        async fn send(
            &self,
            req: reqwest::RequestBuilder,
            sign: Option<chutes_protocol::SignedHeaders>,
        ) -> (u16, String) {
            let mut req = req;
            for (k, v) in sign.iter().flat_map(|h| h.iter()) {
                req = req.header(k, v);
            }
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.text().await.unwrap())
        }

        fn url(&self, path: &str) -> String {
            format!("{}{path}", self.emulator.api_url())
        }

        pub async fn get(&self, path: &str, purpose: &'static str) -> (u16, Value) {
            let (s, t) = self
                .send(http().get(self.url(path)), Some(self.key.sign_request(Payload::Purpose(purpose))))
                .await;
            (s, serde_json::from_str(&t).unwrap_or(Value::Null))
        }

        pub async fn delete(&self, path: &str, purpose: &'static str) -> (u16, Value) {
            let (s, t) = self
                .send(http().delete(self.url(path)), Some(self.key.sign_request(Payload::Purpose(purpose))))
                .await;
            (s, serde_json::from_str(&t).unwrap_or(Value::Null))
        }

        /// Body-signed POST/PATCH.
        pub async fn body(&self, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
            let bytes = serde_json::to_vec(&body).unwrap();
            let req = http()
                .request(method, self.url(path))
                .header("content-type", "application/json")
                .body(bytes.clone());
            let (s, t) = self.send(req, Some(self.key.sign_request(Payload::Body(&bytes)))).await;
            (s, serde_json::from_str(&t).unwrap_or(Value::Null))
        }

        /// A `/miner/*` listing: the items, or `None` for the NO_ITEMS sentinel.
        pub async fn listing(&self, path: &str) -> Option<Vec<Value>> {
            let (s, t) = self
                .send(http().get(self.url(path)), Some(self.key.sign_request(Payload::Purpose("miner"))))
                .await;
            assert_eq!(s, 200, "{path}: {t}");
            let lines: Vec<&str> = t.split("\n\n").filter(|l| !l.is_empty()).collect();
            if lines == ["data: NO_ITEMS"] {
                return None;
            }
            Some(
                lines
                    .iter()
                    .map(|l| serde_json::from_str(l.strip_prefix("data: ").unwrap()).unwrap())
                    .collect(),
            )
        }

        pub async fn launch(&self, query: &str) -> (u16, Value) {
            self.get(&format!("/instances/launch_config?{query}"), "launch").await
        }

        /// Registers GPUs on a server the way add-node does.
        pub async fn register(&self, server: &str, host: &str, gpus: &[(&str, &str)]) -> String {
            let nodes: Vec<Value> = gpus
                .iter()
                .enumerate()
                .map(|(i, (uuid, model))| {
                    json!({"uuid": uuid, "device_index": i, "gpu_identifier": model, "verification_host": host, "verification_port": 30001})
                })
                .collect();
            let (s, v) = self
                .body(reqwest::Method::POST, "/nodes/", json!({"nodes": nodes, "server_id": server}))
                .await;
            assert_eq!(s, 202, "{v}");
            v["task_id"].as_str().unwrap().to_owned()
        }
    }

    /// The chute process: claims and activates its launch config with the token.
    pub async fn chute_call(
        emulator: &Emulator,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = http().request(method, format!("{}{path}", emulator.api_url())).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    pub fn claim_body(host: &str, port: u16, gpus: &[&str]) -> Value {
        json!({
            "host": host,
            "port_mappings": [{"proto": "tcp", "internal_port": 8000, "external_port": port}],
            "gpus": gpus.iter().map(|g| json!({"uuid": g})).collect::<Vec<_>>(),
            "env": "opaque", "code": "opaque",
        })
    }

    /// A miner's socket: authenticated, collecting `miner_broadcast` payloads.
    pub struct Socket {
        ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    }

    impl Socket {
        pub async fn connect(emulator: &Emulator, key: &Hotkey) -> Socket {
            let url = format!("{}/socket.io/?EIO=4&transport=websocket", emulator.socket_url());
            let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
            let mut s = Socket { ws };
            assert!(s.next_text().await.starts_with("0{"));
            s.ws.send(Message::text("40")).await.unwrap();
            assert!(s.next_text().await.starts_with("40"));
            let headers: Value = Value::Object(
                key.sign_request(Payload::Purpose("sockets"))
                    .iter()
                    .map(|(k, v)| (k.to_owned(), json!(v)))
                    .collect(),
            );
            s.ws.send(Message::text(format!("42{}", json!(["authenticate", headers])))).await.unwrap();
            assert!(s.next_text().await.contains("auth_success"));
            s
        }

        async fn next_text(&mut self) -> String {
            loop {
                match tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                    .await
                    .expect("no socket message in 30 s")
                {
                    Some(Ok(Message::Text(t))) if t.as_str() == "2" => {
                        self.ws.send(Message::text("3")).await.unwrap()
                    }
                    Some(Ok(Message::Text(t))) => return t.to_string(),
                    Some(Ok(_)) => continue,
                    other => panic!("socket ended: {other:?}"),
                }
            }
        }

        /// The next `miner_broadcast` payload.
        pub async fn event(&mut self) -> Value {
            loop {
                let t = self.next_text().await;
                if let Some(body) = t.strip_prefix("42") {
                    let v: Value = serde_json::from_str(body).unwrap();
                    if v[0] == "miner_broadcast" {
                        return v[1].clone();
                    }
                }
            }
        }
    }

    fn image() -> ImageSpec {
        ImageSpec {
            image_id: "img-1".into(),
            username: "chutes".into(),
            name: "vllm".into(),
            tag: "0.9".into(),
            patch_version: None,
            chutes_version: "0.3.40".into(),
        }
    }

    fn chute(id: &str, gpu_count: u32) -> ChuteSpec {
        let mut c = ChuteSpec::simple(id, "img-1", &["h100"]);
        c.gpu_count = gpu_count;
        c.compute_multiplier = 2.5;
        c.jobs =
            vec![ChuteJob { name: "train".into(), ports: vec![JobPort { port: 9000, proto: "tcp".into() }] }];
        c
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_chute_answer_comes_from_one_catalogue() {
        let emulator = Emulator::start();
        let miner = Api { emulator: &emulator, key: key("22") };
        let mut socket = Socket::connect(&emulator, &miner.key).await;
        assert_eq!(miner.listing("/miner/chutes/").await, None, "empty catalogue: NO_ITEMS");

        emulator.apply(&Step::ImageCreated { image: image() }).await;
        assert_eq!(socket.event().await["reason"], "image_created");
        assert_eq!(emulator.apply(&Step::ChuteCreated { chute: chute("c1", 2) }).await, 1);
        let event = socket.event().await;
        assert_eq!(
            event,
            json!({"reason": "chute_created", "data": {"chute_id": "c1", "version": "v1", "job_only": false}})
        );

        let listed = miner.listing("/miner/chutes/").await.unwrap();
        let (status, single) = miner.get("/miner/chutes/c1/v1", "miner").await;
        assert_eq!(status, 200);
        assert_eq!(listed, std::slice::from_ref(&single), "the listing and the chute endpoint agree");
        assert_eq!(single["image"], "chutes/vllm:0.9");
        assert_eq!(single["chutes_version"], "0.3.40");
        assert_eq!(single["node_selector"]["gpu_count"], 2);
        assert_eq!(single["supported_gpus"], json!(["h100"]));
        assert_eq!(single["jobs"][0]["ports"], json!([{"port": 9000, "proto": "tcp"}]));
        assert_eq!(single["effective_compute_multiplier"], 2.5);
        assert_eq!(miner.get("/miner/chutes/c1/v2", "miner").await.0, 404, "only the current version");
        assert_eq!(miner.listing("/miner/images/").await.unwrap()[0]["image_id"], "img-1");

        // An image update reaches the chute's answers too.
        let mut patched = image();
        patched.patch_version = Some("p3".into());
        patched.chutes_version = "0.3.41".into();
        emulator.apply(&Step::ImageUpdated { image: patched }).await;
        let event = socket.event().await;
        assert_eq!(event["data"]["image"], "chutes/vllm:0.9-p3");
        assert_eq!(event["data"]["chute_ids"], json!(["c1"]));
        assert_eq!(miner.get("/miner/chutes/c1/v1", "miner").await.1["chutes_version"], "0.3.41");

        // Once a catalogue exists, an unknown chute is 404 as on the real validator.
        assert_eq!(miner.launch("chute_id=nope").await.0, 404);
        emulator.apply(&Step::ChuteDeleted { chute_id: "c1".into() }).await;
        assert_eq!(socket.event().await["data"], json!({"chute_id": "c1", "version": "v1"}));
        assert_eq!(miner.listing("/miner/chutes/").await, None);
        assert_eq!(miner.get("/miner/chutes/c1/v1", "miner").await.0, 404);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_launch_config_becomes_an_instance_through_the_chute_side_endpoints() {
        let emulator = Emulator::start();
        emulator.set_default_verification("success");
        emulator.add_image(image());
        let mut c1 = chute("c1", 1);
        c1.capacity = Some(1);
        emulator.add_chute(c1);
        let miner = Api { emulator: &emulator, key: key("22") };
        let other = Api { emulator: &emulator, key: key("33") };
        let mut mine = Socket::connect(&emulator, &miner.key).await;
        let mut theirs = Socket::connect(&emulator, &other.key).await;
        miner.register("srv-1", "10.0.0.5", &[("GPU-a", "h100"), ("GPU-b", "h100"), ("GPU-c", "a100")]).await;

        let (status, launch) = miner.launch("chute_id=c1&server_id=srv-1").await;
        assert_eq!(status, 200, "{launch}");
        let config_id = launch["config_id"].as_str().unwrap().to_owned();
        let token = launch["token"].as_str().unwrap().to_owned();
        assert_eq!(emulator.launch_configs()[0].server_id.as_deref(), Some("srv-1"));
        assert!(!format!("{:?}", emulator.launch_configs()).contains(&token), "the token stays out of Debug");

        let claim = |body: Value, token: String| {
            let path = format!("/instances/launch_config/{config_id}");
            let emulator = &emulator;
            async move { chute_call(emulator, reqwest::Method::POST, &path, &token, Some(body)).await }
        };
        let activate_path = format!("/instances/launch_config/{config_id}/activate");
        assert_eq!(
            chute_call(&emulator, reqwest::Method::GET, &activate_path, &token, None).await.0,
            403,
            "not claimed"
        );
        assert_eq!(claim(claim_body("10.0.0.5", 31000, &["GPU-a"]), "wrong".into()).await.0, 401);
        assert_eq!(
            claim(claim_body("10.0.0.5", 31000, &["GPU-a", "GPU-b"]), token.clone()).await.0,
            400,
            "gpu_count is 1"
        );
        assert_eq!(
            claim(claim_body("10.0.0.5", 31000, &["GPU-c"]), token.clone()).await.0,
            400,
            "a100 unsupported"
        );
        assert_eq!(
            claim(claim_body("10.0.0.5", 31000, &["GPU-x"]), token.clone()).await.0,
            404,
            "unregistered"
        );
        assert_eq!(
            claim(claim_body("10.9.9.9", 31000, &["GPU-a"]), token.clone()).await.0,
            400,
            "host mismatch"
        );
        assert!(emulator.instances().is_empty(), "refused claims change nothing");
        let (status, reply) = claim(claim_body("10.0.0.5", 31000, &["GPU-a"]), token.clone()).await;
        assert_eq!(status, 200, "{reply}");

        let created = mine.event().await;
        assert_eq!(created["reason"], "instance_created");
        assert_eq!(created["data"]["config_id"], config_id.as_str());
        assert_eq!(created["data"]["miner_hotkey"], miner.key.ss58());
        assert_eq!(created["data"]["gpu_model_name"], "h100");
        let instance_id = created["data"]["instance_id"].as_str().unwrap().to_owned();
        let seen_by_other = theirs.event().await;
        assert_eq!(seen_by_other["reason"], "instance_created");
        assert!(
            seen_by_other["data"].get("config_id").is_none(),
            "config_id only to the owner: {seen_by_other}"
        );
        assert_eq!(mine.event().await["reason"], "instance_verified");
        assert_eq!(theirs.event().await["reason"], "instance_verified");

        let listed = miner.listing("/miner/instances/?explicit_null=True").await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            (listed[0]["instance_id"].as_str(), listed[0]["active"].as_bool()),
            (Some(instance_id.as_str()), Some(false))
        );
        assert_eq!(
            other.listing("/miner/instances/?explicit_null=True").await,
            None,
            "only the caller's instances"
        );
        assert_eq!(miner.get("/miner/active_instances/", "miner").await.1, json!([]), "not active yet");

        let (status, _) = chute_call(&emulator, reqwest::Method::GET, &activate_path, &token, None).await;
        assert_eq!(status, 200);
        let activated = mine.event().await;
        assert_eq!(
            activated,
            json!({"reason": "instance_activated", "data": {"chute_id": "c1", "miner_hotkey": miner.key.ss58(), "instance_id": instance_id, "config_id": config_id}})
        );
        let active = miner.get("/miner/active_instances/", "miner").await.1;
        assert_eq!(active[0]["instance_id"], instance_id.as_str());
        assert_eq!(active[0]["compute_multiplier"], 2.5);
        assert!(active[0]["activated_at"].is_string());
        assert_eq!(miner.get("/miner/inventory", "miner").await.1[0]["chute_id"], "c1");

        // Capacity 1 is reached: the next launch config is refused until the instance goes.
        assert_eq!(other.launch("chute_id=c1").await.0, 423);
        let utilization = miner.get("/chutes/utilization", "miner").await.1;
        assert_eq!(utilization[0]["scalable"], false);
        assert_eq!(
            other.delete(&format!("/instances/c1/{instance_id}"), "instances").await.0,
            404,
            "not theirs"
        );
        assert_eq!(miner.delete(&format!("/instances/c1/{instance_id}"), "instances").await.0, 200);
        let deleted = mine.event().await;
        assert_eq!(deleted["reason"], "instance_deleted");
        assert_eq!(deleted["data"]["config_id"], config_id.as_str());
        assert_eq!(miner.listing("/miner/instances/").await, None);
        let (status, again) = other.launch("chute_id=c1").await;
        assert_eq!(status, 200, "capacity is free again");
        // A chute stand-in without HTTP: the same claim checks, then activation.
        let again = again["config_id"].as_str().unwrap();
        assert_eq!(
            emulator.start_chute(again, "10.0.0.5", 31001, &["GPU-a"]).await.unwrap_err().0,
            404,
            "not theirs"
        );
        assert_eq!(emulator.start_chute("no-such-config", "h", 1, &[]).await.unwrap_err().0, 404);
        let (_, mine_again) = miner.launch("chute_id=c1").await;
        let started = emulator
            .start_chute(mine_again["config_id"].as_str().unwrap(), "10.0.0.5", 31001, &["GPU-a"])
            .await;
        let started = started.unwrap();
        assert!(emulator.instances().iter().any(|i| i.instance_id == started && i.active && i.verified));
        assert_eq!(
            miner.delete(&format!("/instances/c1/{instance_id}"), "instances").await.0,
            404,
            "already gone"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_held_listing_answers_with_the_state_it_was_asked_in() {
        let emulator = Emulator::start();
        emulator.add_image(image());
        emulator.add_chute(chute("c1", 1));
        let miner = Api { emulator: &emulator, key: key("22") };
        let ids = |items: Option<Vec<Value>>| -> Vec<String> {
            items.unwrap_or_default().iter().map(|c| c["chute_id"].as_str().unwrap().to_owned()).collect()
        };

        let hold = emulator.hold_next("/miner/chutes");
        let (slow, ()) = tokio::join!(miner.listing("/miner/chutes/"), async {
            hold.made().await;
            // The validator's state moves on while the stream is on its way.
            emulator.add_chute(chute("c2", 1));
            hold.release();
        });
        assert_eq!(ids(slow), ["c1"], "the answer was made before c2 existed");
        assert_eq!(ids(miner.listing("/miner/chutes/").await), ["c1", "c2"], "a hold is used once");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_first_instance_activated_while_a_bounty_stands_claims_it() {
        let emulator = Emulator::start();
        emulator.add_image(image());
        emulator.add_chute(chute("c1", 1));
        emulator.add_chute(chute("c2", 1));
        let a = Api { emulator: &emulator, key: key("22") };
        let b = Api { emulator: &emulator, key: key("33") };
        emulator.apply(&Step::BountyChange { chute_id: "c1".into(), bounty: 500 }).await;

        // A launch config and a claim are not enough: the bounty goes with activation.
        let (_, first) = b.launch("chute_id=c1").await;
        let (_, second) = a.launch("chute_id=c1").await;
        let claimed = |c: &Value| c["config_id"].as_str().unwrap().to_owned();
        let path = format!("/instances/launch_config/{}", claimed(&first));
        let body = claim_body("10.0.0.6", 31000, &["GPU-b"]);
        assert_eq!(
            chute_call(&emulator, reqwest::Method::POST, &path, first["token"].as_str().unwrap(), Some(body))
                .await
                .0,
            200
        );
        assert_eq!(emulator.bounty_claims(), vec![], "claimed but not active");

        let instance = emulator.start_chute(&claimed(&second), "10.0.0.5", 31001, &["GPU-a"]).await.unwrap();
        let claims = emulator.bounty_claims();
        assert_eq!(claims.len(), 1, "{claims:?}");
        assert_eq!(
            (
                claims[0].chute_id.as_str(),
                claims[0].miner_hotkey.as_str(),
                claims[0].instance_id.as_str(),
                claims[0].bounty
            ),
            ("c1", a.key.ss58(), instance.as_str(), 500)
        );
        // The other miner's instance activates later: nothing is left to claim.
        let activate = format!("{path}/activate");
        assert_eq!(
            chute_call(&emulator, reqwest::Method::GET, &activate, first["token"].as_str().unwrap(), None)
                .await
                .0,
            200
        );
        assert_eq!(emulator.bounty_claims().len(), 1);
        // No bounty on c2: its instance claims nothing.
        let (_, c2) = a.launch("chute_id=c2").await;
        emulator.start_chute(&claimed(&c2), "10.0.0.5", 31002, &["GPU-c"]).await.unwrap();
        assert_eq!(emulator.bounty_claims().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_job_is_held_by_one_launch_config_until_released() {
        let emulator = Emulator::start();
        emulator.add_image(image());
        emulator.add_chute(chute("c1", 1));
        emulator.add_chute(chute("c2", 1));
        let a = Api { emulator: &emulator, key: key("22") };
        let b = Api { emulator: &emulator, key: key("33") };
        let mut socket = Socket::connect(&emulator, &a.key).await;
        let job = JobSpec {
            job_id: "j1".into(),
            chute_id: Some("c1".into()),
            method: "train".into(),
            disk_gb: 50,
            exclude: vec![],
        };
        emulator.apply(&Step::JobCreated { job }).await;
        let event = socket.event().await;
        assert_eq!(event["reason"], "job_created");
        assert_eq!(
            event["data"],
            json!({"job_id": "j1", "method": "train", "chute_id": "c1", "image_id": "img-1", "gpu_count": 1, "compute_multiplier": 2.5, "exclude": [], "disk_gb": 50})
        );

        assert_eq!(a.launch("chute_id=c2&job_id=j1").await.0, 404, "the job belongs to c1");
        let (status, held) = a.launch("chute_id=c1&job_id=j1").await;
        assert_eq!(status, 200);
        assert_eq!(emulator.job_holder("j1").as_deref(), Some(a.key.ss58()));
        assert_eq!(b.launch("chute_id=c1&job_id=j1").await.0, 423, "another miner holds it");
        assert_eq!(a.launch("chute_id=c1&job_id=j1").await.0, 403, "this miner already tried");
        assert_eq!(b.delete("/miner/jobs/j1", "miner").await.0, 403, "only the holder releases");

        let (status, released) = a.delete("/miner/jobs/j1", "miner").await;
        assert_eq!((status, released["released"].as_bool()), (200, Some(true)));
        assert_eq!(emulator.job_holder("j1"), None);
        let token = held["token"].as_str().unwrap();
        let path = format!("/instances/launch_config/{}", held["config_id"].as_str().unwrap());
        let body = claim_body("10.0.0.5", 31000, &["GPU-a"]);
        assert_eq!(
            chute_call(&emulator, reqwest::Method::POST, &path, token, Some(body)).await.0,
            403,
            "released config"
        );
        assert_eq!(b.launch("chute_id=c1&job_id=j1").await.0, 200, "claimable again");
        assert_eq!(a.delete("/miner/jobs/j1", "miner").await.0, 403, "now b holds it");
        assert_eq!(a.delete("/miner/jobs/j9", "miner").await.1["released"], false, "not held: a no-op");

        emulator.apply(&Step::JobDeleted { job_id: "j1".into() }).await;
        assert_eq!(socket.event().await["data"], json!({"instance_id": null, "job_id": "j1"}));
        assert_eq!(b.launch("chute_id=c1&job_id=j1").await.0, 404);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn registration_legacy_instances_and_metrics_follow_what_runs() {
        let emulator = Emulator::start();
        emulator.set_supported_gpus(&["h100"]);
        emulator.add_image(image());
        emulator.add_chute(chute("c1", 1));
        let miner = Api { emulator: &emulator, key: key("22") };
        let mut socket = Socket::connect(&emulator, &miner.key).await;

        // What add-node registered is the inventory; unsupported models are refused whole.
        let bad = json!({"nodes": [{"uuid": "GPU-z", "gpu_identifier": "t4"}], "server_id": "s"});
        assert_eq!(miner.body(reqwest::Method::POST, "/nodes/", bad).await.0, 400);
        let task = miner.register("srv-1", "10.0.0.5", &[("GPU-a", "h100"), ("GPU-b", "h100")]).await;
        let inventory = miner.get("/miner/inventory", "miner").await.1;
        let gpus: Vec<&str> =
            inventory.as_array().unwrap().iter().map(|g| g["gpu_id"].as_str().unwrap()).collect();
        assert_eq!(gpus, ["GPU-a", "GPU-b"]);
        assert_eq!(inventory[0]["verification_error"], "pending");
        assert_eq!(miner.listing("/miner/nodes/").await.unwrap()[1]["server_id"], "srv-1");

        // Unverified GPUs cannot carry an instance; verified ones can.
        let announce = json!({"node_ids": ["GPU-a"], "host": "10.0.0.5", "port": 32000});
        assert_eq!(miner.body(reqwest::Method::POST, "/instances/c1/", announce.clone()).await.0, 400);
        emulator.set_verification_status(&task, "success");
        let poll = format!("/nodes/verification_status?task_id={task}");
        for _ in 0..2 {
            assert_eq!(miner.get(&poll, "graval").await.1, json!({"status": "success"}));
        }
        for gpu in ["GPU-a", "GPU-b"] {
            let event = socket.event().await;
            assert_eq!(
                event,
                json!({"reason": "gpu_verified", "data": {"gpu_id": gpu, "miner_hotkey": miner.key.ss58()}, "filter_recipients": [miner.key.ss58()]})
            );
        }
        let verified = emulator.events().iter().filter(|e| e["reason"] == "gpu_verified").count();
        assert_eq!(verified, 2, "once per GPU, not per poll");
        let (status, instance) = miner.body(reqwest::Method::POST, "/instances/c1/", announce.clone()).await;
        assert_eq!(status, 202, "{instance}");
        assert_eq!(
            miner.body(reqwest::Method::POST, "/instances/c1/", announce).await.0,
            409,
            "host:port taken"
        );
        let instance_id = instance["instance_id"].as_str().unwrap().to_owned();
        let created = socket.event().await;
        assert_eq!(
            (created["reason"].as_str(), created["data"]["instance_id"].as_str()),
            (Some("instance_created"), Some(instance_id.as_str()))
        );
        let path = format!("/instances/c1/{instance_id}");
        assert_eq!(miner.body(reqwest::Method::PATCH, &path, json!({"active": false})).await.0, 400);
        let (status, patched) = miner.body(reqwest::Method::PATCH, &path, json!({"active": true})).await;
        assert_eq!((status, patched["verified"].as_bool()), (200, Some(true)));
        assert_eq!(socket.event().await["reason"], "instance_activated");

        // Another miner's instance and the traffic numbers: metrics count both instances.
        emulator
            .apply(&Step::RemoteInstance {
                miner_hotkey: "5Other".into(),
                chute_id: "c1".into(),
                instance_id: "r1".into(),
            })
            .await;
        let traffic = Traffic {
            total_invocations: 40,
            total_compute_time: 80.0,
            rate_limit_count: 3,
            ..Traffic::default()
        };
        emulator.apply(&Step::Traffic { chute_id: "c1".into(), traffic }).await;
        let metrics = miner.listing("/miner/metrics/").await.unwrap();
        assert_eq!(metrics.len(), 1);
        assert_eq!(
            (metrics[0]["instance_count"].as_u64(), metrics[0]["rate_limit_count"].as_u64()),
            (Some(2), Some(3))
        );
        let active = miner.get("/miner/active_instances/", "miner").await.1;
        assert_eq!(active.as_array().unwrap().len(), 2, "all miners' active instances: {active}");

        // The validator drops the miner's instance: gone everywhere, and said so.
        assert!(emulator.evict_instance(&instance_id).await);
        assert!(!emulator.evict_instance(&instance_id).await, "already gone");
        let deleted = loop {
            let event = socket.event().await;
            if event["reason"] == "instance_deleted" {
                break event;
            }
        };
        assert_eq!(deleted["data"]["instance_id"], instance_id.as_str());
        assert_eq!(miner.listing("/miner/instances/").await, None);
        assert_eq!(miner.listing("/miner/metrics/").await.unwrap()[0]["instance_count"], 1);
        assert_eq!(miner.delete("/nodes/GPU-a", "nodes").await.0, 200);
        assert_eq!(miner.get("/miner/inventory", "miner").await.1.as_array().unwrap().len(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_seeded_scenario_plays_against_the_emulator() {
        use validator_emulator::{Scenario, ScenarioParams};
        let emulator = Emulator::start();
        let miner = Api { emulator: &emulator, key: key("22") };
        let mut socket = Socket::connect(&emulator, &miner.key).await;
        let scenario = Scenario::generate(42, &ScenarioParams::default());
        scenario.play(&emulator).await;

        // The miner's socket got every event meant for it, in order, with the
        // reasons the miner accepts.
        let accepted = miner_validator::socket::ACCEPTED_REASONS;
        let ours: Vec<Value> = emulator
            .events()
            .into_iter()
            .filter(|e| {
                e.get("filter_recipients")
                    .is_none_or(|r| r.as_array().unwrap().contains(&json!(miner.key.ss58())))
            })
            .collect();
        assert!(ours.len() > 20, "{} events", ours.len());
        for expected in &ours {
            assert!(accepted.contains(&expected["reason"].as_str().unwrap()), "{expected}");
            assert_eq!(&socket.event().await, expected);
        }

        // The catalogue the miner lists is the one the steps describe.
        let mut chutes = std::collections::BTreeSet::new();
        for step in &scenario.steps {
            match step {
                Step::ChuteCreated { chute } => chutes.insert(chute.chute_id.clone()),
                Step::ChuteDeleted { chute_id } => chutes.remove(chute_id),
                _ => false,
            };
        }
        let listed: std::collections::BTreeSet<String> = miner
            .listing("/miner/chutes/")
            .await
            .unwrap_or_default()
            .iter()
            .map(|c| c["chute_id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(listed, chutes);
        let active = miner.get("/miner/active_instances/", "miner").await.1;
        assert!(active.as_array().unwrap().iter().all(|i| listed.contains(i["chute_id"].as_str().unwrap())));
    }
}
