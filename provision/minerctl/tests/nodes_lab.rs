#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: panics are the failure report
//! `minerctl add-node` / `remove-node` (the real binary) end to end: lab hosts for the SSH
//! part (real sshd, apt-get, files; stand-ins for microk8s and friends), the Kubernetes API
//! emulator as the cluster, and the real miner API served in-process with real Postgres and
//! Redis, GraVal's bootstrap server on the CPU backend and the validator emulator.
//!
//! The lab's `microk8s kubectl` and kubelet registration reach the emulator (the harness's
//! microk8s stand-in, pointed at it with `LabHost::set_kube_api`), so the labels the
//! provision phases set are the ones the API reads, and the node the join registers is the
//! one the API bootstraps.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use chutes_protocol::Hotkey;
use lab_hosts::lab::LabHost;
use lab_hosts::{Postgres, Redis};
use miner_api::bootstrap::{BootstrapTimings, KubeBootstrap};
use miner_db::{Chute, Db, NewDeployment};
use miner_events::{Producer, StreamConfig};
use miner_validator::ValidatorTarget;
use miner_validator::rest::{RestOptions, ValidatorClient};
use serde_json::{Value, json};

#[path = "support/images.rs"]
mod images_support;
#[path = "support/lab.rs"]
mod lab;

const MINER_SEED: &str = "0x9f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b1c";
const VALIDATOR_SEED: &str = "0x2222222222222222222222222222222222222222222222222222222222222222";

fn text(o: &Output) -> String {
    format!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Inventory for `hosts` of the lab: `cpu-0` is the primary, `gpu-N` GPU workers. A host's
/// addresses follow from its name, so they stay put when others join or leave.
fn write_inventory(path: &Path, hosts: &[&LabHost], validator: &str) {
    let h0 = hosts[0];
    let mut y = format!(
        "vars:\n  user: chutes\n  login_user: root\n  validator: {validator}\n  ssh_keys: ['{key}']\n  packages: [hello]\n  \
         primary_packages: []\n  container_toolkit_packages: []\n  skip_cuda: true\n  ssh:\n    key: {path}\nhosts:\n",
        key = h0.client_public_key(),
        path = h0.client_key_path().display()
    );
    for h in hosts {
        let n = h.name().rsplit('-').next().unwrap().parse::<u8>().unwrap() + 1;
        let primary = h.name() == "cpu-0";
        y.push_str(&format!(
            "  {name}:\n    address: {addr}\n    external_ip: 203.0.113.{n}\n    wireguard_ip: 192.168.0.{n}\n    \
             is_primary: {p}\n    gpu_enabled: {g}\n",
            name = h.name(),
            addr = h.addr(),
            p = primary,
            g = !primary,
        ));
        if !primary {
            y.push_str("    hourly_cost: 0.8\n    gpu_short_ref: a6000\n");
        }
    }
    std::fs::write(path, y).unwrap();
}

/// The outside world of one test: cluster, API and its dependencies.
struct World {
    rt: tokio::runtime::Runtime,
    kube: kube_emulator::Emulator,
    validator: validator_emulator::Emulator,
    db: Db,
    api_url: String,
    validator_hotkey: String,
    /// The validator's real GraVal check of these hosts' bootstrap servers.
    graval_check: validator_emulator::GravalVerifier,
    _pg: Postgres,
    _redis: Redis,
}

fn hotkey(seed: &str) -> Hotkey {
    Hotkey::from_seed_hex(seed, "test").unwrap()
}

fn world() -> World {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let kube = kube_emulator::Emulator::start().unwrap();
    kube.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "chutes"}})).unwrap();
    // The primary runs microk8s already: its node exists.
    kube.add_node(kube_emulator::Node::new("cpu-0"));
    let validator = validator_emulator::Emulator::start();
    validator.set_supported_gpus(&["a6000"]);
    let validator_hotkey = hotkey(VALIDATOR_SEED).ss58().to_string();
    let pg = Postgres::start().unwrap();
    let redis = Redis::start().unwrap();

    let (db, api_url, graval_check) = rt.block_on(async {
        let miner = Arc::new(hotkey(MINER_SEED));
        let db = Db::connect(&pg.create_database("nodes").unwrap()).await.unwrap();
        db.migrate().await.unwrap();
        let producer = Producer::connect(&redis.url(), StreamConfig::default()).unwrap();
        let validators = miner_config::Validators::parse(&format!(
            r#"{{"supported":[{{"hotkey":"{validator_hotkey}","registry":"registry.example","api":"{}","socket":"{}"}}]}}"#,
            validator.api_url(),
            validator.socket_url()
        ))
        .unwrap();

        // GraVal's bootstrap server, one per GPU host (each its own GPU uuid); in a cluster
        // the Job runs it behind a NodePort of the node's external IP.
        let mut gravals = HashMap::new();
        for (n, ip) in [(1u8, "203.0.113.2"), (2, "203.0.113.3")] {
            // 1 MiB of 32 x 32 states: a proof and its check in well under a second.
            let mut info = graval::cpu::host_device_info(1 << 20, 1);
            info.uuid = format!("{n:032x}");
            let engine: Box<dyn graval::Engine> = Box::new(graval::CpuEngine::with_device(info, 1));
            let node = graval::Node::new(vec![engine], Some(32));
            let gstate =
                graval_bootstrap::AppState::new(node, miner.ss58(), std::slice::from_ref(&validator_hotkey)).unwrap();
            let glistener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            gravals.insert(ip.to_string(), format!("http://{}", glistener.local_addr().unwrap()));
            tokio::spawn(async move { axum::serve(glistener, graval_bootstrap::router(Arc::new(gstate))).await });
        }

        let for_validator = gravals.clone();
        let graval_check = validator_emulator::GravalVerifier::new(Arc::new(hotkey(VALIDATOR_SEED)))
            .fixed(32, 2)
            .address(move |ip, _port| for_validator.get(ip).cloned().unwrap_or_else(|| format!("http://{ip}:1")));
        validator.verify_with_graval(graval_check.clone());

        let kc = kube::config::Kubeconfig::from_yaml(&kube.kubeconfig_yaml()).unwrap();
        let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
        let client = kube::Client::try_from(cfg).unwrap();
        let target = ValidatorTarget {
            hotkey: validator_hotkey.clone(),
            api: validator.api_url(),
            socket: validator.socket_url(),
        };
        let rest = RestOptions { attempts: 2, backoff_initial: Duration::from_millis(50), ..RestOptions::default() };
        let mut clients = HashMap::new();
        clients.insert(validator_hotkey.clone(), ValidatorClient::with_options(&target, miner.clone(), rest).unwrap());
        let bootstrap = Arc::new(KubeBootstrap {
            client,
            namespace: "chutes".into(),
            db: db.clone(),
            hotkey: miner.clone(),
            validators: clients,
            graval_image: "parachutes/graval-bootstrap:test".into(),
            image_pull_secrets: Vec::new(),
            graval_address: Arc::new(move |ip, _port| gravals.get(ip).cloned().unwrap_or_else(|| format!("http://{ip}:1"))),
            timings: BootstrapTimings {
                timeout: Duration::from_secs(30),
                poll: Duration::from_millis(100),
                devices_attempts: 3,
                devices_retry: Duration::from_millis(100),
                cleanup_wait: Duration::from_secs(5),
            },
            http: reqwest::Client::new(),
        });
        let state = miner_api::AppState::new(db.clone(), miner, producer, validators).unwrap().with_bootstrap(bootstrap);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(miner_api::serve(listener, state, std::future::pending()));
        (db, url, graval_check)
    });
    World { rt, kube, validator, db, api_url, validator_hotkey, graval_check, _pg: pg, _redis: redis }
}

/// The lab's `microk8s` reaches the emulator; a worker's kubelet registers `node_json`.
fn install_microk8s(h: &LabHost, kube_url: &str, node_json: Option<&Value>) {
    h.set_kube_api(kube_url).unwrap();
    if let Some(n) = node_json {
        h.set_kube_node_json(&n.to_string()).unwrap();
    }
}

/// The Node a GPU host's kubelet registers (one A6000, as the GPU operator labels it).
fn gpu_node(name: &str) -> Value {
    let capacity = json!({"cpu": "32", "memory": "128Gi", "pods": "110", "nvidia.com/gpu": "1"});
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {
            "kubernetes.io/hostname": name, "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.count": "1", "nvidia.com/gpu.memory": "49152"}},
        "spec": {},
        "status": {
            "capacity": capacity, "allocatable": capacity,
            "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "kubelet is posting ready status"}],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}],
        },
    })
}

struct Cli<'a> {
    dir: &'a Path,
    inventory: PathBuf,
    known_hosts: PathBuf,
    hotkey: PathBuf,
    images_lock: PathBuf,
}

impl Cli<'_> {
    /// The CLI on `setup`'s hosts, whose `microk8s` reaches `w`'s cluster (GPU hosts register
    /// the Node of [`gpu_node`]), signing with the miner's hotkey.
    fn for_lab<'a>(setup: &'a lab::Setup, w: &World) -> Cli<'a> {
        for h in setup.lab.hosts() {
            let node = h.name().starts_with("gpu-").then(|| gpu_node(h.name()));
            install_microk8s(h, &w.kube.url(), node.as_ref());
        }
        let dir = setup.dir.path();
        let hotkey = dir.join("hotkey");
        std::fs::write(&hotkey, MINER_SEED).unwrap();
        let images_lock = images_support::stand_in_lock(dir);
        Cli { dir, inventory: setup.inventory(), known_hosts: setup.known_hosts(), hotkey, images_lock }
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_minerctl"))
            .args(args)
            .arg("-i")
            .arg(&self.inventory)
            .arg("--known-hosts")
            .arg(&self.known_hosts)
            .arg("--log-file")
            .arg(self.dir.join(format!("{}.log", args[0])))
            .output()
            .unwrap()
    }
    fn node(&self, args: &[&str]) -> Output {
        let mut a: Vec<&str> = args.to_vec();
        a.extend(["--hotkey", self.hotkey.to_str().unwrap()]);
        if args[0] == "add-node" {
            a.extend(["--images-lock", self.images_lock.to_str().unwrap()]);
        }
        self.run(&a)
    }
}

fn node_labels(w: &World, name: &str) -> Option<Value> {
    w.kube.get("v1", "Node", None, name).ok().flatten().map(|n| n["metadata"]["labels"].clone())
}

#[test]
fn add_node_provisions_joins_labels_and_registers_then_remove_node_takes_it_out() {
    let w = world();
    let setup = lab::Setup::start(2);
    let cli = Cli::for_lab(&setup, &w);
    let dir = setup.dir.path();
    let hosts = setup.lab.hosts();
    let (primary, gpu, gpu2) = (&hosts[0], &hosts[1], &hosts[2]);
    // What each host's containerd stand-in imported (`tag<TAB>digest` per import).
    let imports = |h: &LabHost| -> Vec<String> {
        h.sh("cat /var/lib/lab-standins/microk8s/imports 2>/dev/null || true")
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    };
    let lock = minerctl_images::Lock::read(&cli.images_lock).unwrap();

    // The cluster as it was: the primary alone, provisioned.
    write_inventory(&cli.inventory, &[primary], &w.validator_hotkey);
    let out = cli.run(&["provision"]);
    assert!(out.status.success(), "{}", text(&out));

    // The operator adds the host to the inventory.
    write_inventory(&cli.inventory, &[primary, gpu], &w.validator_hotkey);

    // A wrong API address is found before any host changes.
    let out = cli.node(&["add-node", gpu.name(), "--api", "http://127.0.0.1:9"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("checking the miner API before changing any host"), "{}", text(&out));
    assert!(stderr(&out).contains("127.0.0.1:9"), "{}", text(&out));
    assert!(gpu.read_to_string("/etc/wireguard/wg0.conf").is_err(), "nothing was provisioned");
    assert!(imports(gpu).is_empty(), "nothing was imported");

    // The validator fails the GPU: the API's reason is shown, the exit code says so.
    w.validator.set_default_verification("failed");
    let out = cli.node(&["add-node", gpu.name(), "--api", &w.api_url]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let s = stdout(&out);
    assert!(s.contains("== registering gpu-1 with the miner API"), "{}", text(&out));
    assert!(s.contains("  error: bootstrap of gpu-1 failed"), "{}", text(&out));
    assert!(stderr(&out).contains("add-node gpu-1: bootstrap of gpu-1 failed"), "{}", text(&out));
    assert!(w.rt.block_on(w.db.list_servers()).unwrap().is_empty(), "the API undid its part");

    // The images went into the new node's containerd before it was registered (the API's
    // GraVal Job runs there): the runtime and GraVal, on gpu-1 only.
    assert!(s.contains("== importing images into gpu-1"), "{}", text(&out));
    assert!(s.contains("gpu-1: graval-bootstrap: imported"), "{}", text(&out));
    let mut expected: Vec<String> =
        lock.images.values().map(|i| format!("{}\t{}", i.tag, i.digest)).collect();
    let mut got = imports(gpu);
    expected.sort();
    got.sort();
    assert_eq!(got, expected);
    assert!(imports(primary).is_empty(), "the primary was not pushed to");

    // Provisioned and joined anyway: the mesh on both ends, the Node registered and labelled.
    let gpu_key = gpu.read_to_string("/etc/wireguard/public.key").unwrap();
    let wg0 = primary.read_to_string("/etc/wireguard/wg0.conf").unwrap();
    assert!(wg0.contains(gpu_key.trim()), "primary's peers include gpu-1:\n{wg0}");
    let primary_key = primary.read_to_string("/etc/wireguard/public.key").unwrap();
    assert!(gpu.read_to_string("/etc/wireguard/wg0.conf").unwrap().contains(primary_key.trim()));
    assert_eq!(node_labels(&w, "gpu-1").unwrap()["chutes/external-ip"], "203.0.113.2");
    // The first GPU worker of the cluster: the primary's GPU layer was enabled for it, and
    // the check that the node offers its GPUs to chutes passed (the operator labelled it).
    let enabled = primary.calls("microk8s").unwrap();
    assert!(enabled.iter().any(|c| c.len() > 1 && c[0] == "enable" && c[1] == "nvidia"), "{enabled:?}");
    assert_eq!(node_labels(&w, "gpu-1").unwrap()["nvidia.com/gpu.present"], "true");
    let log = std::fs::read_to_string(cli.dir.join("add-node.log")).unwrap_or_default();
    assert!(log.contains("gpu nodes ready for chutes"), "{log}");

    // Rerun with the validator's real GraVal check: provisioning has nothing left to do,
    // the API streams its progress and the GPUs are verified.
    w.validator.verify_with_graval(w.graval_check.clone());
    let out = cli.node(&["add-node", gpu.name(), "--api", &w.api_url]);
    assert!(out.status.success(), "{}", text(&out));
    let s = stdout(&out);
    let api_lines: Vec<&str> = s
        .split("== registering gpu-1 with the miner API")
        .nth(1)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("  "))
        .collect();
    assert!(api_lines.len() >= 3, "progress lines shown as they came: {api_lines:#?}");
    assert!(api_lines.last().unwrap().starts_with("  completed server bootstrapping in"), "{api_lines:#?}");
    assert!(s.contains("gpu-1 added: completed server bootstrapping"), "{}", text(&out));
    // The images were there already: nothing imported again.
    assert!(s.contains("gpu-1: chutes-miner: unchanged (digest present)"), "{}", text(&out));
    assert_eq!(imports(gpu).len(), lock.images.len(), "a repeat imports nothing");

    let servers = w.rt.block_on(w.db.list_servers()).unwrap();
    assert_eq!(servers.len(), 1);
    assert_eq!(servers[0].server.name, "gpu-1");
    assert_eq!(servers[0].server.hourly_cost, 0.8);
    assert!(servers[0].gpus.iter().all(|g| g.verified && g.model_short_ref == "a6000"));
    let labels = node_labels(&w, "gpu-1").unwrap();
    assert_eq!(labels["gpu-short-ref"], "a6000");
    assert_eq!(labels["chutes/validator"], w.validator_hotkey.as_str());

    // A second add-node of a tracked host is refused before anything runs.
    let out = cli.node(&["add-node", gpu.name(), "--api", &w.api_url]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("gpu-1 is already tracked by the miner API"), "{}", text(&out));
    assert!(!stdout(&out).contains("provisioning"), "{}", text(&out));

    // A second node: the primary gains its peer and keeps gpu-1's; gpu-1 is only read.
    let gpu1_wg0 = gpu.read_to_string("/etc/wireguard/wg0.conf").unwrap();
    write_inventory(&cli.inventory, &[primary, gpu, gpu2], &w.validator_hotkey);
    let out = cli.node(&["add-node", gpu2.name(), "--api", &w.api_url]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!stdout(&out).contains("\ngpu-1 "), "gpu-1 is not in the recap: {}", text(&out));
    let gpu2_key = gpu2.read_to_string("/etc/wireguard/public.key").unwrap();
    let wg0 = primary.read_to_string("/etc/wireguard/wg0.conf").unwrap();
    assert!(wg0.contains(gpu_key.trim()) && wg0.contains(gpu2_key.trim()), "{wg0}");
    assert_eq!(gpu.read_to_string("/etc/wireguard/wg0.conf").unwrap(), gpu1_wg0);
    assert_eq!(w.rt.block_on(w.db.list_servers()).unwrap().len(), 2);

    // A job runs on it: remove-node refuses and names it; nothing changes.
    let server_id = servers[0].server.server_id.clone();
    w.rt.block_on(async {
        w.db.upsert_chute(&Chute {
            chute_id: "chute-1".into(),
            validator: w.validator_hotkey.clone(),
            name: Some("sdxl".into()),
            image: "u/sdxl:1".into(),
            code: "x".into(),
            filename: "sdxl.py".into(),
            ref_str: "sdxl:chute".into(),
            version: "v1".into(),
            supported_gpus: vec!["a6000".into()],
            gpu_count: 1,
            ..Default::default()
        })
        .await
        .unwrap();
        w.db.create_deployment(
            &NewDeployment {
                deployment_id: "d-job".into(),
                validator: w.validator_hotkey.clone(),
                chute_id: "chute-1".into(),
                server_id: server_id.clone(),
                version: "v1".into(),
                job_id: Some("job-7".into()),
                config_id: None,
            },
            1,
        )
        .await
        .unwrap();
    });
    // The job's pod, as Gepetto would have started it.
    w.kube
        .create(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "chute-job-7", "namespace": "chutes"},
                       "spec": {"nodeName": "gpu-1", "containers": [{"name": "chute", "image": "u/sdxl:1"}]}}))
        .unwrap();
    let kubeconfig = dir.join("kubeconfig");
    w.kube.write_kubeconfig(&kubeconfig).unwrap();
    let kc = kubeconfig.to_str().unwrap();
    let before = w.kube.resource_version();
    let out = cli.node(&["remove-node", gpu.name(), "--api", &w.api_url, "--kubeconfig", kc]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let e = stderr(&out);
    assert!(e.contains("gpu-1 runs 1 job(s); this run changed nothing"), "{}", text(&out));
    assert!(e.contains("job_id job-7"), "{}", text(&out));
    assert_eq!(w.kube.resource_version(), before, "the cluster was not touched");
    assert_eq!(w.rt.block_on(w.db.list_servers()).unwrap().len(), 2);
    assert!(primary.read_to_string("/etc/wireguard/wg0.conf").unwrap().contains(gpu_key.trim()));

    // --force: the API is told, the node drained and deleted, the host leaves, the primary
    // drops the peer.
    let out = cli.node(&["remove-node", gpu.name(), "--api", &w.api_url, "--kubeconfig", kc, "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    let s = stdout(&out);
    assert!(s.contains("--force: removing it with 1 job(s) running"), "{}", text(&out));
    assert!(s.contains("Deletion of server gpu-1"), "{}", text(&out));
    assert!(
        s.contains("node gpu-1: cordoned") && s.contains("node gpu-1: deleted from the cluster"),
        "{}",
        text(&out)
    );
    assert!(s.contains("node gpu-1: evicted pod chutes/chute-job-7"), "{}", text(&out));
    assert!(w.kube.get("v1", "Pod", Some("chutes"), "chute-job-7").unwrap().is_none());
    assert!(s.contains("Delete its entry from"), "{}", text(&out));
    assert!(node_labels(&w, "gpu-1").is_none(), "Node deleted");
    assert!(gpu.calls("microk8s").unwrap().contains(&vec!["leave".to_string()]));
    let wg0 = primary.read_to_string("/etc/wireguard/wg0.conf").unwrap();
    assert!(!wg0.contains(gpu_key.trim()), "gpu-1 is no longer a peer:\n{wg0}");
    assert!(wg0.contains(gpu2_key.trim()), "gpu-2 stays a peer:\n{wg0}");
    assert!(node_labels(&w, "cpu-0").is_some(), "the primary's node stays");

    // A dead host (the usual reason to remove one) with a chute Job's pod on it: no SSH, its
    // Node NotReady, so the evicted pod stays Terminating (no kubelet confirms it). It
    // cannot be told to leave; the pod is not waited for and the rest is done. A drain
    // timeout of 0: success comes from the node's state, not from a wait. The operator has
    // taken gpu-1 out of the inventory as told.
    let gpu2_id =
        w.rt.block_on(w.db.list_servers())
            .unwrap()
            .into_iter()
            .find(|s| s.server.name == "gpu-2")
            .unwrap()
            .server
            .server_id;
    w.rt.block_on(w.db.create_deployment(
        &NewDeployment {
            deployment_id: "d-job-2".into(),
            validator: w.validator_hotkey.clone(),
            chute_id: "chute-1".into(),
            server_id: gpu2_id,
            version: "v1".into(),
            job_id: Some("job-8".into()),
            config_id: None,
        },
        1,
    ))
    .unwrap();
    w.kube
        .create(json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "chute-job-8", "namespace": "chutes"},
                       "spec": {"nodeName": "gpu-2", "containers": [{"name": "chute", "image": "u/sdxl:1"}]}}))
        .unwrap();
    write_inventory(&cli.inventory, &[primary, gpu2], &w.validator_hotkey);
    gpu2.kill_sshd().unwrap();
    assert!(w.kube.set_node_ready("gpu-2", false));
    let remove_gpu2 = |extra: &[&str]| {
        let mut a = vec!["remove-node", gpu2.name(), "--api", &w.api_url, "--kubeconfig", kc];
        a.extend(extra);
        cli.node(&a)
    };
    let out = remove_gpu2(&["--force", "--drain-timeout", "0"]);
    assert!(out.status.success(), "{}", text(&out));
    let s = stdout(&out);
    assert!(s.contains("node gpu-2: evicted pod chutes/chute-job-8"), "{}", text(&out));
    assert!(s.contains("node gpu-2: not Ready: not waiting for pod chutes/chute-job-8"), "{}", text(&out));
    assert!(s.contains("gpu-2: could not make it leave the cluster"), "{}", text(&out));
    assert!(s.contains("node gpu-2: deleted from the cluster"), "{}", text(&out));
    assert!(node_labels(&w, "gpu-2").is_none());
    assert!(w.kube.get("v1", "Pod", Some("chutes"), "chute-job-8").unwrap().is_none(), "gone with its Node");
    let wg0 = primary.read_to_string("/etc/wireguard/wg0.conf").unwrap();
    assert!(!wg0.contains(gpu2_key.trim()) && !wg0.contains("[Peer]"), "no peers left:\n{wg0}");

    // A rerun after the API was told: until Gepetto has undeployed the job (no Gepetto
    // runs here), the API still lists it. The refusal says what this run did (nothing)
    // and how to finish, not that nothing was ever changed.
    let before = w.kube.resource_version();
    let out = remove_gpu2(&[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let e = stderr(&out);
    assert!(e.contains("gpu-2 runs 1 job(s); this run changed nothing"), "{}", text(&out));
    assert!(!e.contains("nothing was changed"), "{}", text(&out));
    assert!(
        e.contains("If an earlier remove-node already asked the miner API to delete gpu-2")
            && e.contains("pass --force to finish removing it"),
        "{}",
        text(&out)
    );
    assert_eq!(w.kube.resource_version(), before, "the cluster was not touched");
}

#[test]
fn bad_requests_are_refused_before_any_connection() {
    let dir = tempfile::tempdir().unwrap();
    let inv = dir.path().join("inventory.yml");
    let validator = hotkey(VALIDATOR_SEED).ss58().to_string();
    // Addresses nobody listens on: any connection attempt would fail differently.
    std::fs::write(
        &inv,
        format!(
            "vars:\n  validator: {validator}\n  ssh_keys: ['ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ4dL7mY6kO1jvq3b2sXyZt9Vv3mZ1rW0m8uJ8Q3hKx9 t']\nhosts:\n  \
             cpu-0:\n    address: 127.0.0.9\n    external_ip: 203.0.113.1\n    wireguard_ip: 192.168.0.1\n    is_primary: true\n  \
             gpu-1:\n    address: 127.0.0.10\n    external_ip: 203.0.113.2\n    wireguard_ip: 192.168.0.2\n    gpu_enabled: true\n    hourly_cost: 0.8\n"
        ),
    )
    .unwrap();
    let key = dir.path().join("hotkey");
    std::fs::write(&key, MINER_SEED).unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_minerctl"))
            .args(args)
            .arg("-i")
            .arg(&inv)
            .arg("--hotkey")
            .arg(&key)
            .output()
            .unwrap()
    };
    let out = run(&["add-node", "gpu-9"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("host `gpu-9` is not in") && stderr(&out).contains("cpu-0, gpu-1"),
        "{}",
        text(&out)
    );
    let out = run(&["remove-node", "cpu-0"]);
    assert!(stderr(&out).contains("host `cpu-0` is the primary"), "{}", text(&out));
    let out = run(&["add-node", "gpu-1"]);
    assert!(stderr(&out).contains("host `gpu-1` needs gpu_short_ref"), "{}", text(&out));
    let out = run(&["add-node", "gpu-1", "--api", "ftp://x"]);
    assert!(stderr(&out).contains("host `gpu-1` needs gpu_short_ref"), "inventory first: {}", text(&out));
}

/// `add-node --check` shows what would change on the new node and on the primary and changes
/// nothing; then, with another worker of the inventory down (sshd gone, its Node NotReady),
/// `add-node` still adds the new node: the primary keeps the unreachable worker's WireGuard
/// peer from its current wg0.conf, the command names that worker, and the label phase waits
/// for the new node only.
#[test]
fn add_node_check_changes_nothing_and_an_unreachable_worker_does_not_block_it() {
    let w = world();
    let setup = lab::Setup::start(2);
    let cli = Cli::for_lab(&setup, &w);
    let hosts = setup.lab.hosts();
    let (primary, gpu1, gpu2) = (&hosts[0], &hosts[1], &hosts[2]);

    // The cluster as it was: the primary and gpu-1, provisioned.
    write_inventory(&cli.inventory, &[primary, gpu1], &w.validator_hotkey);
    let out = cli.run(&["provision"]);
    assert!(out.status.success(), "{}", text(&out));
    let gpu1_key = gpu1.read_to_string("/etc/wireguard/public.key").unwrap();
    write_inventory(&cli.inventory, &[primary, gpu1, gpu2], &w.validator_hotkey);

    // --check: the new node's whole plan and the primary's new peer, with its diff; nothing
    // changes on any host, in the cluster or in the API.
    let before: Vec<String> = hosts.iter().map(lab::trace).collect();
    let cluster = w.kube.resource_version();
    let out = cli.node(&["add-node", gpu2.name(), "--api", &w.api_url, "--check"]);
    assert!(out.status.success(), "{}", text(&out));
    let s = stdout(&out);
    for line in [
        "[gpu-2] wireguard keys / key pair: would change",
        "[gpu-2] host setup / microk8s snap: would change",
        "[gpu-2] join / join cluster: would change",
        "[cpu-0] wireguard config / wg0.conf: would change",
        "[cpu-0] label nodes / gpu-2 external-ip label: would change",
    ] {
        assert!(s.contains(line), "{line}: {}", text(&out));
    }
    assert!(
        s.contains("+# gpu-2\n") || s.contains("    +# gpu-2"),
        "the primary's diff shows the peer: {}",
        text(&out)
    );
    assert!(!s.contains("[gpu-1]"), "gpu-1 is only read: {}", text(&out));
    assert!(s.contains("--check: nothing was changed"), "{}", text(&out));
    lab::assert_same_trace(hosts, &before);
    assert_eq!(w.kube.resource_version(), cluster, "the cluster was not touched");
    assert!(w.rt.block_on(w.db.list_servers()).unwrap().is_empty());

    // gpu-1 goes down: no SSH, its Node NotReady.
    gpu1.kill_sshd().unwrap();
    assert!(w.kube.set_node_ready("gpu-1", false));
    let out = cli.node(&["add-node", gpu2.name(), "--api", &w.api_url]);
    assert!(out.status.success(), "{}", text(&out));
    let s = stdout(&out);
    assert!(s.contains("could not reach gpu-1"), "{}", text(&out));
    assert!(s.contains("gpu-2 added: completed server bootstrapping"), "{}", text(&out));
    let wg0 = primary.read_to_string("/etc/wireguard/wg0.conf").unwrap();
    let gpu2_key = gpu2.read_to_string("/etc/wireguard/public.key").unwrap();
    assert!(
        wg0.contains(&format!("PublicKey = {}", gpu1_key.trim()))
            && wg0.contains(&format!("PublicKey = {}", gpu2_key.trim())),
        "gpu-1 kept, gpu-2 added:\n{wg0}"
    );
    assert_eq!(node_labels(&w, "gpu-2").unwrap()["chutes/external-ip"], "203.0.113.3");
    assert!(!s.contains("gpu-1 Ready"), "the label phase did not wait for gpu-1: {}", text(&out));
}
