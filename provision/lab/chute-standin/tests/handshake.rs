//! The stand-in chute against the validator emulator: the launch-config handshake makes an
//! active, verified instance with what the pod's environment said, then it serves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chutes_protocol::{Hotkey, Payload};
use serde_json::Value;
use validator_emulator::Emulator;

/// Kills the stand-in when a test ends, passing or not.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A launch config for chute `c1`, asked for as the miner asks (signed, purpose `launch`).
async fn launch_config(emulator: &Emulator) -> (String, String) {
    launch_config_for(emulator, "chute_id=c1").await
}

async fn launch_config_for(emulator: &Emulator, query: &str) -> (String, String) {
    // Built with the whole workspace, reqwest carries no provider of its own.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let key = Hotkey::from_seed_hex(&"31".repeat(32), "test seed").unwrap();
    let mut req =
        reqwest::Client::new().get(format!("{}/instances/launch_config?{query}", emulator.api_url()));
    for (k, v) in key.sign_request(Payload::Purpose("launch")).iter() {
        req = req.header(k, v);
    }
    let v: Value = req.send().await.unwrap().json().await.unwrap();
    (v["token"].as_str().unwrap().to_owned(), v["config_id"].as_str().unwrap().to_owned())
}

fn standin(emulator: &Emulator, token: &str, port: u16, logging: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_chute-standin"))
        .args(["run", "user/echo:1", "--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["--logging-port", &logging.to_string(), "--miner-ss58", "5x", "--validator-ss58", "5y"])
        .env("CHUTES_LAUNCH_JWT", token)
        .env("CHUTES_API_URL", emulator.api_url())
        .env("CHUTES_EXTERNAL_HOST", "127.0.1.7")
        .env("CHUTES_PORT_PRIMARY", "31000")
        .env("CHUTES_PORT_LOGGING", "31001")
        .env("NVIDIA_VISIBLE_DEVICES", "GPU-2b6f0cc9-04a3-4a56-8c1b-3f3e5b5f1f10")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Polls (generously: a busy 2-core machine) until `f` gives a value.
async fn wait_for<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_handshake_makes_an_active_instance_then_it_serves_invocations_and_metrics() {
    let emulator = Emulator::start();
    let (token, config_id) = launch_config(&emulator).await;
    let (port, logging) = (free_port(), free_port());
    let _chute = Running(standin(&emulator, &token, port, logging));

    let instance = wait_for("the instance to become active", async || {
        emulator.instances().into_iter().find(|i| i.active)
    })
    .await;
    assert_eq!(instance.config_id.as_deref(), Some(config_id.as_str()));
    assert_eq!((instance.host.as_str(), instance.port), ("127.0.1.7", 31000));
    // GPU-<dashed uuid> as pinned, reported as GraVal reads it (and the miner registered it).
    assert_eq!(instance.gpus, ["2b6f0cc904a34a568c1b3f3e5b5f1f10"]);
    assert!(instance.verified);
    let reasons: Vec<String> =
        emulator.events().iter().filter_map(|e| e["reason"].as_str().map(str::to_owned)).collect();
    for r in ["instance_created", "instance_verified", "instance_activated"] {
        assert!(reasons.iter().any(|x| x == r), "{r} not in {reasons:?}");
    }

    let http = reqwest::Client::new();
    for p in [port, logging] {
        let alive = http.get(format!("http://127.0.0.1:{p}/_alive")).send().await.unwrap();
        assert_eq!(alive.status(), 200, "/_alive on {p}");
    }
    for n in 1..=2 {
        let out: Value = http
            .post(format!("http://127.0.0.1:{port}/generate"))
            .json(&serde_json::json!({"prompt": n}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!((out["cord"].as_str(), out["invocation"].as_u64()), (Some("/generate"), Some(n)));
        assert_eq!(out["echo"]["prompt"], n);
    }
    let bad = http.post(format!("http://127.0.0.1:{port}/generate")).body("not json").send().await.unwrap();
    assert_eq!(bad.status(), 400);
    let metrics =
        http.get(format!("http://127.0.0.1:{port}/_metrics")).send().await.unwrap().text().await.unwrap();
    for line in [
        "chute_standin_invocations_total{chute=\"user/echo:1\"} 2",
        "chute_standin_invocation_errors_total{chute=\"user/echo:1\"} 1",
        "chute_standin_active{chute=\"user/echo:1\"} 1",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} not in\n{metrics}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_claim_ends_the_chute_with_the_validators_reason() {
    let emulator = Emulator::start();
    let (_, config_id) = launch_config(&emulator).await;
    let forged = format!("emulator.{config_id}.0000");
    let chute = standin(&emulator, &forged, free_port(), free_port());
    let out = tokio::task::spawn_blocking(move || chute.wait_with_output()).await.unwrap().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("claiming the launch config") && stderr.contains("401"), "{stderr}");
    assert!(emulator.instances().is_empty());
    assert!(!stderr.contains(&forged), "the token stays out of the error: {stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_jobs_chute_runs_its_job_then_exits_0() {
    let emulator = Emulator::start();
    emulator.add_job("job-1");
    let (token, _) = launch_config_for(&emulator, "chute_id=c1&job_id=job-1").await;
    let chute = standin(&emulator, &token, free_port(), free_port());
    let out = tokio::task::spawn_blocking(move || chute.wait_with_output()).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("claimed: job job-1") && stdout.contains("job job-1 done"), "{stdout}");
    let instances = emulator.instances();
    assert_eq!(instances.len(), 1);
    assert!(instances[0].active && instances[0].job_id.as_deref() == Some("job-1"), "{instances:?}");
}
