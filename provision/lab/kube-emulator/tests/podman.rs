//! The podman workload runner with this project's images: the GraVal bootstrap Job (CPU
//! image) on two nodes and a chute pod running the chute stand-in, driven through the real
//! kube client, reached at node address + NodePort, killed, deleted, cleaned up.
//!
//! Needs root and podman (vfs storage in a temporary root, `--runtime runc`). The images are
//! built once per test run from the debug builds of graval-bootstrap and chute-standin.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube_emulator::{Emulator, EmulatorOptions, ImageAlias, Node, PodmanRunner};
use minerctl_images::{BuildInput, LOCK_FILE, Lock};
use serde_json::{Value, json};

/// Node addresses of this file's clusters: loopback, away from the lab's 127.0.1.N.
const NODE_A: &str = "127.0.3.1";
const NODE_B: &str = "127.0.3.2";

struct Store {
    root: PathBuf,
    runroot: PathBuf,
    graval: String,
    standin: String,
}

/// Builds the images once and loads them into a podman store of this test run.
fn store() -> &'static Store {
    static STORE: OnceLock<Store> = OnceLock::new();
    STORE.get_or_init(|| {
        let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        let bin_dir = target.parent().unwrap().join("debug");
        // chutes-miner too: `images build` always makes its image.
        lab_hosts::cargo_build(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")),
            &["graval-bootstrap", "chute-standin", "chutes-miner"],
        );
        let out = target.join("kube-emulator-images");
        minerctl_images::build_all(&BuildInput {
            binary_dir: bin_dir,
            cuda_binary: None,
            cuda_wheels: None,
            ca_bundle: "/etc/ssl/certs/ca-certificates.crt".into(),
            out_dir: out.clone(),
            lab: true,
        })
        .unwrap();
        let lock = Lock::read(&out.join(LOCK_FILE)).unwrap();
        // One store per target directory, reused across runs (loading is idempotent). The
        // store records its own absolute path, so a target directory copied elsewhere must
        // not find the old store: the name carries a hash of the path. Podman wants a short
        // runroot, and the same one every time for a store.
        let key = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            target.hash(&mut h);
            format!("{:08x}", h.finish() as u32)
        };
        let root = target.join(format!("kube-emulator-podman-{key}"));
        let runroot = PathBuf::from(format!("/tmp/kemu-run-{key}"));
        let runner = PodmanRunner::new("unused").storage(root.clone(), runroot.clone());
        for name in ["graval-bootstrap", "chute-standin"] {
            let archive = Lock::archive_path(&out.join(LOCK_FILE), &lock.images[name]);
            let o = runner.command().arg("load").arg("-i").arg(&archive).output().unwrap();
            assert!(o.status.success(), "podman load {name}: {}", String::from_utf8_lossy(&o.stderr));
        }
        Store {
            root,
            runroot,
            graval: lock.images["graval-bootstrap"].tag.clone(),
            standin: lock.images["chute-standin"].tag.clone(),
        }
    })
}

fn runner(lab: &str) -> PodmanRunner {
    let s = store();
    PodmanRunner::new(lab).storage(s.root.clone(), s.runroot.clone())
}

/// One HTTP/1.1 request; `None` while nothing answers.
fn http(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: &str,
) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, rest) = out.split_once("\r\n\r\n")?;
    Some((head.split_whitespace().nth(1)?.parse().ok()?, rest.to_string()))
}

/// Polls (generously: a busy 2-core machine; probes have initial delays) until `f` gives a value.
async fn wait_for<T>(what: &str, f: impl AsyncFnMut() -> Option<T>) -> T {
    wait_for_or(what, f, String::new).await
}

/// [`wait_for`], saying what `explain` finds when it times out.
async fn wait_for_or<T>(
    what: &str,
    mut f: impl AsyncFnMut() -> Option<T>,
    explain: impl FnOnce() -> String,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if Instant::now() >= deadline {
            panic!("timed out waiting for {what}\n{}", explain());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn logs_of_pod(runner: &PodmanRunner, uid: &str) -> String {
    ids_of_pod(runner, uid)
        .iter()
        .map(|id| {
            let o = runner.command().args(["logs", id]).output().unwrap();
            format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
        })
        .collect()
}

async fn pod_of(pods: &Api<Pod>, selector: &str) -> Option<Value> {
    let list = pods.list(&ListParams::default().labels(selector)).await.ok()?;
    list.items.into_iter().next().map(|p| serde_json::to_value(p).unwrap())
}

fn ready(pod: &Value) -> bool {
    pod["status"]["containerStatuses"][0]["ready"] == true && pod["status"]["phase"] == "Running"
}

async fn node_port(services: &Api<Service>, name: &str, port: u16) -> u16 {
    let svc = serde_json::to_value(services.get(name).await.unwrap()).unwrap();
    let ports = svc["spec"]["ports"].as_array().unwrap();
    ports.iter().find(|p| p["port"] == port).unwrap()["nodePort"].as_u64().unwrap() as u16
}

fn apply<T: serde::Serialize>(obj: &T) -> Patch<Value> {
    Patch::Apply(serde_json::to_value(obj).unwrap())
}

fn ids_of_pod(runner: &PodmanRunner, uid: &str) -> Vec<String> {
    let o = runner
        .command()
        .args(["ps", "-a", "-q", "--filter", &format!("label=io.kubernetes.pod.uid={uid}")])
        .output()
        .unwrap();
    String::from_utf8_lossy(&o.stdout).lines().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn graval_jobs_and_a_chute_run_in_podman_behind_their_node_ports() {
    let store = store();
    let validator = validator_emulator::Emulator::start();
    let lab = format!("kemu-test-{}", std::process::id());
    let podman = runner(&lab)
        .alias(ImageAlias::new("graval-bootstrap", &store.graval).args(&[
            "--backend",
            "cpu",
            "--port",
            "8000",
        ]))
        .alias(
            ImageAlias::new(".localregistry.chutes.ai", &store.standin)
                .env("CHUTES_API_URL", &validator.api_url()),
        )
        .host_service(format!("127.0.0.1:{}", validator.port()).parse().unwrap());
    let emu = Emulator::start_with(EmulatorOptions { podman: Some(podman) }).unwrap();
    emu.add_node(Node::new("node-a").gpus(8).address(NODE_A));
    emu.add_node(Node::new("node-b").gpus(8).address(NODE_B));
    let client = common::client(&emu).await;
    emu.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "chutes"}})).unwrap();
    let jobs: Api<Job> = Api::namespaced(client.clone(), "chutes");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "chutes");
    let services: Api<Service> = Api::namespaced(client.clone(), "chutes");
    let pp = PatchParams::apply("test").force();

    // GraVal on both nodes: the same containerPort 8000 twice, no collision.
    let miner = chutes_protocol::Hotkey::from_seed_hex(&"41".repeat(32), "test seed").unwrap();
    let graval_validator = chutes_protocol::Hotkey::from_seed_hex(&"43".repeat(32), "test seed").unwrap();
    for node in ["node-a", "node-b"] {
        let job = miner_k8s::graval::GravalJob {
            node,
            image: "chutes.local/graval-bootstrap-cuda:unbuilt",
            validator: graval_validator.ss58(),
            miner_ss58: miner.ss58(),
            gpu_count: 8,
            cpu_per_gpu: 1,
            memory_per_gpu: 4,
            pull_secrets: &[],
        }
        .build()
        .unwrap();
        let svc = miner_k8s::graval::service(node).unwrap();
        services.patch(&miner_k8s::graval::service_name(node), &pp, &apply(&svc)).await.unwrap();
        jobs.patch(&miner_k8s::graval::job_name(node), &pp, &apply(&job)).await.unwrap();
    }
    for (node, ip) in [("node-a", NODE_A), ("node-b", NODE_B)] {
        let selector = miner_k8s::graval::pod_selector(node);
        wait_for("the GraVal pod to be ready (its readiness probe)", async || {
            pod_of(&pods, &selector).await.filter(ready)
        })
        .await;
        let port = node_port(&services, &miner_k8s::graval::service_name(node), 8000).await;
        let pong = http(&format!("{ip}:{port}"), "GET", "/ping", &[], "").unwrap();
        assert_eq!(pong, (200, "pong".to_string()), "{node}");
    }

    // A chute: the launch token from a Secret, its host from the downward API.
    let key = chutes_protocol::Hotkey::from_seed_hex(&"42".repeat(32), "test seed").unwrap();
    let signed: Vec<(String, String)> = key
        .sign_request(chutes_protocol::Payload::Purpose("launch"))
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let (_, body) = http(
        &format!("127.0.0.1:{}", validator.port()),
        "GET",
        "/instances/launch_config?chute_id=c1",
        &signed,
        "",
    )
    .unwrap();
    let launch: Value = serde_json::from_str(&body).unwrap();
    let secret: Secret = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "launch-c1"}, "stringData": {"jwt": launch["token"]}}))
    .unwrap();
    Api::<Secret>::namespaced(client.clone(), "chutes")
        .patch("launch-c1", &pp, &apply(&secret))
        .await
        .unwrap();
    let svc: Service = serde_json::from_value(json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "chute-svc-c1"},
        "spec": {"type": "NodePort", "selector": {"chutes/chute-id": "c1"},
                 "ports": [{"name": "api", "port": 8000, "targetPort": 8000}, {"name": "logging", "port": 8001, "targetPort": 8001}]}}))
    .unwrap();
    services.patch("chute-svc-c1", &pp, &apply(&svc)).await.unwrap();
    let (primary, logging) =
        (node_port(&services, "chute-svc-c1", 8000).await, node_port(&services, "chute-svc-c1", 8001).await);
    let chute: Job = serde_json::from_value(json!({"apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "chute-c1"},
        "spec": {"backoffLimit": 0, "template": {
            "metadata": {"labels": {"chutes/chute-id": "c1"}},
            "spec": {"restartPolicy": "Never", "nodeName": "node-b", "containers": [{
                "name": "chute",
                "image": "5validator.localregistry.chutes.ai:30500/user/echo:1",
                "command": ["chutes", "run", "echo:chute", "--port", "8000", "--miner-ss58", "5m", "--validator-ss58", "5v"],
                "env": [
                    {"name": "CHUTES_LAUNCH_JWT", "valueFrom": {"secretKeyRef": {"name": "launch-c1", "key": "jwt"}}},
                    {"name": "CHUTES_EXTERNAL_HOST", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
                    {"name": "CHUTES_PORT_PRIMARY", "value": primary.to_string()},
                    {"name": "CHUTES_PORT_LOGGING", "value": logging.to_string()},
                    {"name": "NVIDIA_VISIBLE_DEVICES", "value": "GPU-2b6f0cc9-04a3-4a56-8c1b-3f3e5b5f1f10"},
                ],
                "ports": [{"containerPort": 8000}, {"containerPort": 8001}],
                "readinessProbe": {"exec": {"command": ["curl", "-f", "http://127.0.0.1:8001/_alive"]},
                                   "initialDelaySeconds": 1, "periodSeconds": 1, "failureThreshold": 60},
            }]}}}}))
    .unwrap();
    jobs.patch("chute-c1", &pp, &apply(&chute)).await.unwrap();
    let last = std::cell::RefCell::new(None::<Value>);
    let pod = wait_for_or(
        "the chute pod to be ready",
        async || {
            let pod = pod_of(&pods, "chutes/chute-id=c1").await;
            *last.borrow_mut() = pod.clone();
            pod.filter(ready)
        },
        || {
            let last = last.borrow();
            let uid = last.as_ref().and_then(|p| p["metadata"]["uid"].as_str()).unwrap_or_default();
            format!("pod: {last:?}\ncontainer: {}", logs_of_pod(&runner(&lab), uid))
        },
    )
    .await;
    let instance = wait_for("the chute's instance to be active", async || {
        validator.instances().into_iter().find(|i| i.active)
    })
    .await;
    assert_eq!((instance.host.as_str(), instance.port), (NODE_B, primary));
    let chute_at = format!("{NODE_B}:{primary}");
    assert_eq!(http(&chute_at, "GET", "/_alive", &[], "").unwrap().0, 200);
    let (status, out) = http(&chute_at, "POST", "/generate", &[], r#"{"prompt": "hi"}"#).unwrap();
    assert_eq!(status, 200, "{out}");
    assert_eq!(serde_json::from_str::<Value>(&out).unwrap()["echo"]["prompt"], "hi");
    let (_, metrics) = http(&format!("{NODE_B}:{logging}"), "GET", "/_metrics", &[], "").unwrap();
    assert!(metrics.contains("chute_standin_invocations_total{chute=\"echo:chute\"} 1"), "{metrics}");
    // Only on the chute's node: node-a has no pod of this Service.
    assert!(http(&format!("{NODE_A}:{primary}"), "GET", "/_alive", &[], "").is_none());

    // The chute's container is killed: restartPolicy Never, so the pod fails with its exit code.
    let chute_uid = pod["metadata"]["uid"].as_str().unwrap().to_owned();
    let r = runner(&lab);
    let ids = ids_of_pod(&r, &chute_uid);
    assert_eq!(ids.len(), 1, "one container per pod: {ids:?}");
    assert!(r.command().args(["kill", &ids[0]]).output().unwrap().status.success());
    let failed = wait_for("the chute pod to fail", async || {
        pod_of(&pods, "chutes/chute-id=c1").await.filter(|p| p["status"]["phase"] == "Failed")
    })
    .await;
    assert_eq!(failed["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"], 137, "{failed}");
    assert_eq!(failed["status"]["containerStatuses"][0]["ready"], false);

    // GraVal's is killed: restartPolicy OnFailure, so it restarts and is ready again.
    let graval = pod_of(&pods, &miner_k8s::graval::pod_selector("node-a")).await.unwrap();
    let graval_uid = graval["metadata"]["uid"].as_str().unwrap().to_owned();
    let ids = ids_of_pod(&r, &graval_uid);
    assert!(r.command().args(["kill", &ids[0]]).output().unwrap().status.success());
    let restarted = wait_for("the GraVal pod to restart and be ready", async || {
        pod_of(&pods, &miner_k8s::graval::pod_selector("node-a"))
            .await
            .filter(|p| p["status"]["containerStatuses"][0]["restartCount"] == 1 && ready(p))
    })
    .await;
    assert_eq!(restarted["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"], 137);
    let port = node_port(&services, &miner_k8s::graval::service_name("node-a"), 8000).await;
    assert_eq!(http(&format!("{NODE_A}:{port}"), "GET", "/ping", &[], "").unwrap().0, 200);

    // Deleting the Job (as add-node's cleanup does) stops and removes its container.
    jobs.delete(&miner_k8s::graval::job_name("node-a"), &DeleteParams::background()).await.unwrap();
    wait_for("the GraVal container to be removed", async || {
        ids_of_pod(&r, &graval_uid).is_empty().then_some(())
    })
    .await;
    assert!(http(&format!("{NODE_A}:{port}"), "GET", "/ping", &[], "").is_none());

    // Stopping the emulator removes every container it started.
    assert!(!r.containers().unwrap().is_empty());
    drop(emu);
    assert_eq!(r.containers().unwrap(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_whose_image_is_not_local_is_simulated_and_says_so() {
    let lab = format!("kemu-test-sim-{}", std::process::id());
    let emu = Emulator::start_with(EmulatorOptions { podman: Some(runner(&lab)) }).unwrap();
    emu.add_node(Node::new("node-a").address(NODE_A));
    let client = common::client(&emu).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod =
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "cleaner"},
        "spec": {"containers": [{"name": "c", "image": "parachutes/cache-cleaner:latest"}]}}))
        .unwrap();
    pods.patch("cleaner", &PatchParams::apply("test"), &apply(&pod)).await.unwrap();
    let pod = wait_for("the simulated pod to be ready", async || {
        pods.get("cleaner").await.ok().map(|p| serde_json::to_value(p).unwrap()).filter(ready)
    })
    .await;
    let events = emu.list("v1", "Event", Some("default")).unwrap();
    let said = events
        .iter()
        .find(|e| e["involvedObject"]["uid"] == pod["metadata"]["uid"])
        .expect("an event about the pod");
    assert_eq!(said["reason"], "Simulated");
    assert!(said["message"].as_str().unwrap().contains("parachutes/cache-cleaner:latest"), "{said}");
    assert_eq!(runner(&lab).containers().unwrap(), Vec::<String>::new());
}
