#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: panics are the failure report
//! `minerctl status` (the real binary) against the real miner API, served in-process on
//! real Postgres and Redis (lab-hosts), with servers, GPUs, a chute and deployments written
//! through the API's own database layer: what the operator sees, as tables and as JSON,
//! and what a refused hotkey or an unreachable API says.

use std::process::{Command, Output};
use std::sync::Arc;

use chutes_protocol::Hotkey;
use lab_hosts::{Postgres, Redis};
use miner_db::{Chute, Db, NewDeployment, NewGpu, NewServer};
use miner_events::{Producer, StreamConfig};
use serde_json::{Value, json};

const MINER_SEED: &str = "0x9f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c";
const OTHER_SEED: &str = "0x3333333333333333333333333333333333333333333333333333333333333333";
const VALIDATOR_SEED: &str = "0x2222222222222222222222222222222222222222222222222222222222222222";

fn minerctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_minerctl")).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn hotkey(seed: &str) -> Hotkey {
    Hotkey::from_seed_hex(seed, "test").unwrap()
}

/// The real API with its database; the guards keep Postgres and Redis alive.
struct World {
    rt: tokio::runtime::Runtime,
    db: Db,
    api_url: String,
    validator: String,
    dir: tempfile::TempDir,
    _pg: Postgres,
    _redis: Redis,
}

impl World {
    fn start() -> World {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let pg = Postgres::start().unwrap();
        let redis = Redis::start().unwrap();
        let validator = hotkey(VALIDATOR_SEED).ss58().to_string();
        let (db, api_url) = rt.block_on(async {
            let db = Db::connect(&pg.create_database("status").unwrap()).await.unwrap();
            db.migrate().await.unwrap();
            let producer = Producer::connect(&redis.url(), StreamConfig::default()).unwrap();
            let validators = miner_config::Validators::parse(&format!(
                r#"{{"supported":[{{"hotkey":"{validator}","registry":"registry.example","api":"http://127.0.0.1:9","socket":"ws://127.0.0.1:9"}}]}}"#
            ))
            .unwrap();
            let state = miner_api::AppState::new(db.clone(), Arc::new(hotkey(MINER_SEED)), producer, validators).unwrap();
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            tokio::spawn(miner_api::serve(listener, state, std::future::pending()));
            (db, url)
        });
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("miner.hotkey"), MINER_SEED).unwrap();
        std::fs::write(dir.path().join("other.hotkey"), OTHER_SEED).unwrap();
        World { rt, db, api_url, validator, dir, _pg: pg, _redis: redis }
    }

    /// `minerctl status --api <the API> --hotkey <key file> EXTRA...`.
    fn status(&self, key: &str, extra: &[&str]) -> Output {
        let key = self.key(key);
        let mut args = vec!["status", "--api", &self.api_url, "--hotkey", &key];
        args.extend(extra);
        minerctl(&args)
    }

    fn key(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// gpu-1: two verified GPUs, one serving `llama-demo` v3 (active), one running a job
    /// of `tts-demo` (its Job not made yet: a stub). gpu-2: one GPU, not verified yet.
    fn seed(&self) {
        let db = &self.db;
        let v = self.validator.as_str();
        self.rt.block_on(async {
            for (id, name, ip, gpus) in
                [("srv-1", "gpu-1", "127.0.1.2", 2), ("srv-2", "gpu-2", "127.0.1.3", 1)]
            {
                db.insert_server(&NewServer {
                    server_id: id.into(),
                    validator: v.into(),
                    name: name.into(),
                    ip_address: Some(ip.into()),
                    labels: json!({}),
                    gpu_count: gpus,
                    cpu_per_gpu: 8,
                    memory_per_gpu: 64,
                    hourly_cost: 0.8,
                })
                .await
                .unwrap();
                let gpus: Vec<NewGpu> = (0..gpus)
                    .map(|n| NewGpu {
                        gpu_id: format!("{name}-uuid-{n}"),
                        device_info: json!({"name": "NVIDIA RTX A6000"}),
                        model_short_ref: "a6000".into(),
                    })
                    .collect();
                db.insert_gpus(id, v, &gpus).await.unwrap();
            }
            db.verify_server_gpus("srv-1").await.unwrap();
            for (id, name, version) in [("chute-llm", "llama-demo", "v3"), ("chute-tts", "tts-demo", "v1")] {
                db.upsert_chute(&Chute {
                    chute_id: id.into(),
                    validator: v.into(),
                    name: Some(name.into()),
                    image: "chutes/demo:1".into(),
                    filename: "demo.py".into(),
                    ref_str: "demo:chute".into(),
                    version: version.into(),
                    supported_gpus: vec!["a6000".into()],
                    gpu_count: 1,
                    ..Default::default()
                })
                .await
                .unwrap();
            }
            let deployment = |id: &str, chute: &str, version: &str, job: Option<&str>| NewDeployment {
                deployment_id: id.into(),
                validator: v.into(),
                chute_id: chute.into(),
                server_id: "srv-1".into(),
                version: version.into(),
                job_id: job.map(str::to_string),
                config_id: None,
            };
            let serving = "d1d1d1d1-0000-4000-8000-000000000001";
            db.create_deployment(&deployment(serving, "chute-llm", "v3", None), 1).await.unwrap();
            db.mark_deployed(serving, "127.0.1.2", 30001).await.unwrap();
            db.set_deployment_verified(serving, "instance-1").await.unwrap();
            db.activate_instance(None, "instance-1").await.unwrap();
            let job = "e2e2e2e2-0000-4000-8000-000000000002";
            db.create_deployment(&deployment(job, "chute-tts", "v1", Some("job-1")), 1).await.unwrap();
        });
    }
}

/// The line of `out` that starts with `first` (a table row), split into its cells.
fn row<'a>(out: &'a str, first: &str) -> Vec<&'a str> {
    out.lines()
        .find(|l| l.split_whitespace().next() == Some(first))
        .unwrap_or_else(|| panic!("no row {first} in:\n{out}"))
        .split_whitespace()
        .collect()
}

#[test]
fn status_shows_the_miners_servers_gpus_and_deployments() {
    let w = World::start();

    // An empty miner says so, and how to add a server.
    let o = w.status("miner.hotkey", &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("no servers tracked"), "{}", text(&o));

    w.seed();
    let o = w.status("miner.hotkey", &[]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    // Servers: verified of all GPUs, price, deployments.
    assert_eq!(row(&out, "gpu-1")[..5], ["gpu-1", "127.0.1.2", "2/2", "0.80", "2"], "{out}");
    assert_eq!(row(&out, "gpu-2")[..5], ["gpu-2", "127.0.1.3", "0/1", "0.80", "0"], "{out}");
    // GPUs: verified or not, and which deployment holds each.
    let holders = [row(&out, "gpu-1-uuid-0"), row(&out, "gpu-1-uuid-1")].map(|r| r[4].to_string());
    assert_eq!(row(&out, "gpu-1-uuid-0")[1..4], ["gpu-1", "a6000", "yes"], "{out}");
    assert_eq!(row(&out, "gpu-2-uuid-0")[1..], ["gpu-2", "a6000", "no", "-"], "{out}");
    let mut sorted = holders.clone();
    sorted.sort();
    assert_eq!(sorted, ["d1d1d1d1", "e2e2e2e2"], "each gpu-1 GPU held by one deployment:\n{out}");
    // Deployments: chute, version, server, GPUs, a fresh age, state.
    let serving = row(&out, "d1d1d1d1");
    assert_eq!(serving[1..5], ["llama-demo", "v3", "gpu-1", "1"], "{out}");
    assert!(serving[5].ends_with('s') || serving[5].ends_with('m'), "age {}:\n{out}", serving[5]);
    assert_eq!(serving[6..], ["active"], "{out}");
    assert_eq!(row(&out, "e2e2e2e2")[1..5], ["tts-demo", "v1", "gpu-1", "1"], "{out}");
    assert_eq!(row(&out, "e2e2e2e2")[6..], ["stub", "(job)"], "{out}");

    // --output json: the same, typed, with stable keys.
    let o = w.status("miner.hotkey", &["--output", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let servers = v.as_array().unwrap();
    assert_eq!(servers.iter().map(|s| s["name"].as_str().unwrap()).collect::<Vec<_>>(), ["gpu-1", "gpu-2"]);
    assert_eq!(servers[1]["gpus"][0]["verified"], false);
    assert_eq!(servers[0]["gpus"].as_array().unwrap().iter().filter(|g| g["verified"] == true).count(), 2);
    let deployments = servers[0]["deployments"].as_array().unwrap();
    let llama = deployments.iter().find(|d| d["chute"]["name"] == "llama-demo").unwrap();
    assert_eq!((llama["active"].clone(), llama["version"].clone()), (json!(true), json!("v3")));
    assert_eq!(llama["gpus"].as_array().unwrap().len(), 1);
    let tts = deployments.iter().find(|d| d["chute"]["name"] == "tts-demo").unwrap();
    assert_eq!((tts["job_id"].clone(), tts["stub"].clone()), (json!("job-1"), json!(true)));

    // --watch: one redraw per round, here two (stdout is not a terminal: no screen clearing).
    let o = w.status("miner.hotkey", &["--watch", "--interval", "1", "--rounds", "2"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.matches(&format!("{} every 1s", w.api_url)).count(), 2, "{out}");
    assert_eq!(out.matches("llama-demo").count(), 2, "{out}");
    assert!(!out.contains('\x1b'), "{out}");
    let o = w.status("miner.hotkey", &["-w", "--interval", "1", "--rounds", "2", "-o", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let rounds: Vec<Value> =
        String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rounds.len(), 2, "{}", text(&o));
    assert_eq!(rounds[0], v);
}

#[test]
fn another_hotkey_is_refused_and_an_unreachable_api_is_named() {
    let w = World::start();
    // A key the API does not take: said so, with its public address; no seed, no signature.
    let o = w.status("other.hotkey", &[]);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    let other = hotkey(OTHER_SEED);
    assert!(err.contains(&format!("did not accept the hotkey {}", other.ss58())), "{}", text(&o));
    assert!(err.contains(&w.api_url), "{}", text(&o));
    assert!(!text(&o).contains(OTHER_SEED.trim_start_matches("0x")), "{}", text(&o));
    assert!(!text(&o).to_lowercase().contains("x-chutes-signature"), "{}", text(&o));
    // With --watch too it stops at once: no retrying a key that will not be taken.
    let o = w.status("other.hotkey", &["--watch"]);
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("did not accept"),
        "{}",
        text(&o)
    );

    // Nothing listening: the URL and the cause.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let url = format!("http://127.0.0.1:{port}");
    let o = minerctl(&["status", "--api", &url, "--hotkey", &w.key("miner.hotkey")]);
    assert!(!o.status.success(), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr).to_lowercase();
    assert!(err.contains(&format!("{url}/servers/")) && err.contains("connection refused"), "{}", text(&o));
    // --watch shows it in each round and keeps trying (the API may be restarting); the
    // last round's failure is the exit status.
    let o = minerctl(&[
        "status",
        "--api",
        &url,
        "--hotkey",
        &w.key("miner.hotkey"),
        "--watch",
        "--interval",
        "1",
        "--rounds",
        "2",
    ]);
    assert!(!o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_lowercase();
    assert_eq!(out.matches("connection refused").count(), 2, "{}", text(&o));

    // Without --api the URL comes from the inventory's primary (none here: said so).
    let o = minerctl(&["status", "-i", "/nonexistent/inventory.yml", "--hotkey", &w.key("miner.hotkey")]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no inventory at /nonexistent/inventory.yml"),
        "{}",
        text(&o)
    );
}
