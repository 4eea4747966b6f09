#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: panics are the failure report
//! `minerctl lab` end to end (feature `lab`, needs root and podman): the real binary makes
//! the lab (lab hosts, provision, the cluster, images, deploy, the validator, add-node with
//! real GraVal proofs from the bootstrap server's container), the validator plays its
//! scenario against chute-standin containers, and the checks read the miner API and the
//! emulated cluster. `lab down` must leave no process, container, mount, file or address,
//! also after the supervisor was killed.
//!
//! `lab up` builds the images from the binaries next to minerctl: the tests build those
//! (chutes-miner, graval-bootstrap, chute-standin) once per run.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use chutes_protocol::Hotkey;
use minerctl_lab::Record;
use minerctl_lab::containers::LabStore;
use minerctl_lab::state::ProcessRecord;
use serde_json::Value;

fn minerctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_minerctl")).args(args).output().unwrap()
}

/// Builds the binaries `lab up` makes its images of (next to minerctl), once per test run.
fn image_binaries() {
    static BUILT: OnceLock<()> = OnceLock::new();
    BUILT.get_or_init(|| {
        let here = Path::new(env!("CARGO_MANIFEST_DIR"));
        lab_hosts::cargo_build(here, &["graval-bootstrap", "chute-standin", "chutes-miner"]);
    });
}

/// `lab up` with images (the default): GraVal bootstrap and chute pods run as containers.
fn lab_up(dir: &str, hosts: &str, gpus: &str) -> Output {
    image_binaries();
    let up = minerctl(&["lab", "up", "--hosts", hosts, "--gpus-per-host", gpus, "--state-dir", dir]);
    let out = String::from_utf8_lossy(&up.stdout);
    assert!(out.contains("pods: GraVal bootstrap and chute pods run as podman containers"), "{}", text(&up));
    up
}

/// The lab's containers (`podman ps -a` in the lab's store, by its label): `(name, state)`,
/// state as podman says it (`running`, `exited`).
fn containers(store: &LabStore) -> Vec<(String, String)> {
    let o = store
        .runner()
        .command()
        .args(["ps", "-a", "--format", "json", "--filter"])
        .arg(format!("label={}={}", kube_emulator::LAB_LABEL, store.lab_id))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let list: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    list.iter()
        .map(|c| (c["Names"][0].as_str().unwrap().to_owned(), c["State"].as_str().unwrap().to_owned()))
        .collect()
}

/// The processes of the lab's running containers (their main process, as podman says).
fn container_processes(store: &LabStore) -> Vec<ProcessRecord> {
    let o = store
        .runner()
        .command()
        .args(["ps", "--format", "json", "--filter"])
        .arg(format!("label={}={}", kube_emulator::LAB_LABEL, store.lab_id))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let list: Vec<Value> = serde_json::from_slice(&o.stdout).unwrap();
    list.iter()
        .filter_map(|c| ProcessRecord::of(c["Names"][0].as_str()?, u32::try_from(c["Pid"].as_u64()?).ok()?))
        .collect()
}

/// A current-thread runtime for one request (reqwest needs the ring provider installed).
fn rt() -> tokio::runtime::Runtime {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout\n{}\n--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A state directory the lab's Postgres (run as user postgres) can traverse to.
fn state_dir() -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let dir = tmp.path().join("lab");
    (tmp, dir)
}

/// Takes a lab down when a test ends early (a failed assert), so no lab outlives its test.
struct DownOnDrop(PathBuf);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        if self.0.join("record.json").exists() {
            let _ = minerctl(&["lab", "down", "--state-dir", self.0.to_str().unwrap()]);
        }
    }
}

fn record(dir: &Path) -> Record {
    serde_json::from_slice(&std::fs::read(dir.join("record.json")).unwrap()).unwrap()
}

/// `lab status --output json` until the scenario is no longer playing. A deadline keeps a
/// broken lab from hanging the run; nothing is asserted about how long it took.
fn scenario_outcome(dir: &str) -> Record {
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        let out = minerctl(&["lab", "status", "--output", "json", "--state-dir", dir]);
        assert!(out.status.success(), "{}", text(&out));
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let r: Record = serde_json::from_value(v["record"].clone()).unwrap();
        if !r.scenario.is_empty() && r.scenario != "playing" {
            return r;
        }
        let progress = std::fs::read_to_string(Path::new(dir).join("progress.log")).unwrap_or_default();
        assert!(Instant::now() < deadline, "the scenario never finished:\n{progress}");
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// What is left of a lab after `lab down`: nothing, by every measure a user has.
fn assert_nothing_left(dir: &Path, r: &Record) {
    assert!(!dir.exists(), "{} is still there", dir.display());
    for p in r.processes.iter().chain(&r.supervisor) {
        assert!(!p.alive(), "{} (pid {}) still runs", p.what, p.pid);
    }
    for l in &r.listeners {
        assert!(!minerctl_lab::down::listening(l), "something still listens on {l}");
    }
    let needle = dir.to_str().unwrap();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(needle), "a mount under the state dir is left:\n{mounts}");
    // The podman store and runroot went (the record named them under the state dir, so no
    // container's conmon, no mount of theirs is left either: both checks here cover them).
    // `podman ps` on the removed store would only make an empty one: not asked.
    if let Some(store) = &r.podman {
        for d in [&store.root, &store.runroot] {
            assert!(d.starts_with(dir) && !d.exists(), "{} is left", d.display());
        }
    }
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&cmdline).contains(needle) && !cwd.starts_with(dir),
            "process {pid} still refers to the lab: {}",
            String::from_utf8_lossy(&cmdline).replace('\0', " ")
        );
    }
    // A lab host's slot lock stays only while a live process owns the slot (another lab
    // or test may have taken the address since).
    let slots = lab_hosts::lab::state_dir().unwrap();
    for h in &r.hosts {
        let n = h.addr.rsplit('.').next().unwrap();
        let lock = slots.join(format!("slot-{n}.lock"));
        if let Ok(owner) = std::fs::read_to_string(&lock) {
            let owner = owner.trim().parse::<u32>().unwrap_or(0);
            assert!(
                owner != 0
                    && Path::new(&format!("/proc/{owner}")).exists()
                    && r.supervisor.as_ref().is_none_or(|s| s.pid != owner),
                "{} is left over (owner {owner})",
                lock.display()
            );
        }
    }
}

/// `GET /servers/` of the miner API, signed with the lab's miner hotkey as minerctl signs it.
fn servers(api: &str) -> Vec<Value> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let miner = Hotkey::from_seed_hex(minerctl_lab::miner::MINER_SEED, "lab miner").unwrap();
    let rt = rt();
    rt.block_on(async {
        let mut req = reqwest::Client::new().get(format!("{api}/servers/"));
        for (k, v) in
            miner.sign_management(miner.ss58(), chutes_protocol::Payload::Purpose("management")).iter()
        {
            req = req.header(k, v);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200);
        serde_json::from_str::<Vec<Value>>(&resp.text().await.unwrap()).unwrap()
    })
}

/// Objects of `kind` in namespace chutes, straight from the emulated cluster's API.
fn cluster_list(kube: &str, path: &str) -> Vec<Value> {
    let rt = rt();
    rt.block_on(async {
        let resp = reqwest::Client::new().get(format!("{kube}{path}")).send().await.unwrap();
        let v: Value = serde_json::from_str(&resp.text().await.unwrap()).unwrap();
        v["items"].as_array().cloned().unwrap_or_default()
    })
}

#[test]
fn lab_of_three_gpu_hosts_verifies_every_gpu_plays_the_scenario_and_down_leaves_nothing() {
    let (_tmp, dir) = state_dir();
    let d = dir.to_str().unwrap();
    let _down = DownOnDrop(dir.clone());
    let up = lab_up(d, "3", "2");
    assert!(up.status.success(), "{}", text(&up));
    let out = String::from_utf8_lossy(&up.stdout).into_owned();
    for step in [
        "[1/8] creating the lab hosts",
        "[3/8] provisioning",
        "[5/8] deploying",
        "[8/8] adding the GPU hosts",
    ] {
        assert!(out.contains(step), "progress names each step: {out}");
    }
    assert!(out.contains("ready in ") && out.contains("lab up took "), "{out}");

    // Twice is safe: the running lab is reported, nothing is made again.
    let again = minerctl(&["lab", "up", "--hosts", "3", "--state-dir", d]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(String::from_utf8_lossy(&again.stdout).contains("is already up"), "{}", text(&again));

    let r = scenario_outcome(d);
    let progress = std::fs::read_to_string(dir.join("progress.log")).unwrap();
    assert_eq!(r.scenario, "done", "{progress}");
    // Every GPU verified by the validator's check of a real proof, one task per host.
    assert_eq!(r.proofs_verified.len(), 3, "{r:#?}");
    // The monitor looked at the cluster's chute Jobs throughout and never saw a GPU twice.
    assert!(r.gpu_checks > 10, "{r:#?}");
    assert_eq!(r.double_booked, Vec::<String>::new());

    let scenario = minerctl_lab::scenario::LabScenario::new(13, minerctl_lab::hosts::LAB_GPU_SHORT_REF);
    let api = &r.endpoints["api"];
    let kube = &r.endpoints["kube"];
    let servers = servers(api);
    assert_eq!(servers.len(), 3, "{servers:#?}");
    let mut deployed = Vec::new();
    let mut booked = std::collections::BTreeSet::new();
    for s in &servers {
        let gpus = s["gpus"].as_array().unwrap();
        assert_eq!(gpus.len(), 2, "{s:#?}");
        assert!(gpus.iter().all(|g| g["verified"] == true), "every GPU verified: {s:#}");
        for d in s["deployments"].as_array().unwrap() {
            let chute = &d["chute"];
            let supported: Vec<&str> =
                chute["supported_gpus"].as_array().unwrap().iter().map(|g| g.as_str().unwrap()).collect();
            for g in d["gpus"].as_array().unwrap() {
                let model = g["model_short_ref"].as_str().unwrap();
                assert!(supported.contains(&model), "{} on a {model}: {d:#}", chute["name"]);
                assert!(
                    booked.insert(g["gpu_id"].as_str().unwrap().to_owned()),
                    "GPU on two deployments: {s:#}"
                );
            }
            deployed.push((
                chute["name"].as_str().unwrap().to_owned(),
                d["version"].as_str().unwrap().to_owned(),
            ));
        }
    }
    deployed.sort();
    let want: Vec<(String, String)> = [("lab-bounty", "v1"), ("lab-diffusion", "v2"), ("lab-llm", "v1")]
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    // The bounty chute is deployed (its bounty claimed), the updated one runs v2, the
    // deleted, the unsupported and the finished job's are not there.
    assert_eq!(deployed, want, "{servers:#?}");

    let jobs = cluster_list(kube, "/apis/batch/v1/namespaces/chutes/jobs");
    let services = cluster_list(kube, "/api/v1/namespaces/chutes/services");
    let label = |o: &Value, k: &str| o["metadata"]["labels"][k].as_str().unwrap_or_default().to_owned();
    assert!(jobs.iter().all(|j| label(j, "chutes/chute-id") != scenario.deleted_chute), "{jobs:#?}");
    assert!(services.iter().all(|s| label(s, "chutes/chute-id") != scenario.deleted_chute), "{services:#?}");
    assert!(
        jobs.iter().all(|j| label(j, "chutes/job-id") != scenario.job_id),
        "the job's Job is gone: {jobs:#?}"
    );
    let chute_jobs: Vec<String> = jobs
        .iter()
        .filter(|j| label(j, "chutes/chute") == "true")
        .map(|j| label(j, "chutes/chute-id"))
        .collect();
    assert_eq!(chute_jobs.len(), 3, "one Job per deployment: {chute_jobs:?}");
    assert!(progress.contains("scenario: the job ran and its GPUs were released"), "{progress}");
    // The supervisor waits on the validator's own record of the bounty paid to our hotkey.
    assert!(
        progress.contains("scenario: bounty claimed: chute lab-bounty has our active instance"),
        "{progress}"
    );
    // The job's chute-standin container ran the job and exited 0: its pod succeeded.
    assert_eq!(r.ran_jobs, vec![scenario.job_id.clone()], "{r:#?}");

    // Every deployed chute is a running chute-standin container, reached at its node's
    // address and the Service's NodePort (what the validator and users call).
    let store = r.podman.clone().expect("the record names the lab's podman store");
    let running: Vec<(String, String)> =
        containers(&store).into_iter().filter(|(_, state)| state == "running").collect();
    assert_eq!(running.len(), 3, "one container per deployed chute: {running:?}");
    let rt = rt();
    for s in &servers {
        for dep in s["deployments"].as_array().unwrap() {
            let at = format!("http://{}:{}", dep["host"].as_str().unwrap(), dep["port"]);
            let (alive, out) = rt.block_on(async {
                let http = reqwest::Client::new();
                let alive = http.get(format!("{at}/_alive")).send().await.unwrap().status();
                let out: Value = http
                    .post(format!("{at}/generate"))
                    .body(r#"{"prompt": "hi"}"#)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                (alive, out)
            });
            assert_eq!(alive, 200, "{at}");
            assert_eq!(out["echo"]["prompt"], "hi", "{at}: {out}");
        }
    }

    let status = minerctl(&["lab", "status", "--state-dir", d]);
    assert!(status.status.success(), "{}", text(&status));
    assert!(String::from_utf8_lossy(&status.stdout).contains("never double-booked"), "{}", text(&status));
    // The command `lab status` gives to watch the miner works: one round of it, as JSON.
    let status_out = String::from_utf8_lossy(&status.stdout).into_owned();
    let watch = status_out
        .lines()
        .find_map(|l| l.strip_prefix("watch the miner: minerctl "))
        .unwrap_or_else(|| panic!("no watch command in:\n{status_out}"));
    let mut args: Vec<&str> = watch.split_whitespace().collect();
    args.extend(["--rounds", "1", "--output", "json"]);
    let watched = minerctl(&args);
    assert!(watched.status.success(), "{}", text(&watched));
    let watched: Vec<Value> = serde_json::from_slice(&watched.stdout).unwrap();
    let names: Vec<&str> = watched.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, servers.iter().map(|s| s["name"].as_str().unwrap()).collect::<Vec<_>>());
    assert!(watched.iter().flat_map(|s| s["gpus"].as_array().unwrap()).all(|g| g["verified"] == true));

    let before = record(&dir);
    let procs = container_processes(&store);
    assert_eq!(procs.len(), 3, "{procs:?}");
    let down = minerctl(&["lab", "down", "--state-dir", d]);
    assert!(down.status.success(), "{}", text(&down));
    assert!(String::from_utf8_lossy(&down.stdout).contains("asking the supervisor"), "{}", text(&down));
    assert_nothing_left(&dir, &before);
    for p in &procs {
        assert!(!p.alive(), "container {} (pid {}) still runs", p.what, p.pid);
    }
    let again = minerctl(&["lab", "down", "--state-dir", d]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("nothing to do"), "{}", text(&again));
}

#[test]
fn lab_down_cleans_up_after_the_supervisor_was_killed() {
    let (_tmp, dir) = state_dir();
    let d = dir.to_str().unwrap();
    let _down = DownOnDrop(dir.clone());
    let up = lab_up(d, "1", "1");
    assert!(up.status.success(), "{}", text(&up));
    let r = record(&dir);
    let sup: &ProcessRecord = r.supervisor.as_ref().unwrap();
    assert!(r.processes.iter().all(ProcessRecord::alive), "{r:#?}");
    let store = r.podman.clone().expect("the record names the lab's podman store");

    // Chute pods run as containers: one whose container is killed fails with its exit code
    // (restartPolicy Never), another keeps running while the supervisor is killed.
    let kube = &r.endpoints["kube"];
    for name in ["chute-killed", "chute-left"] {
        create_chute_pod(kube, name);
    }
    let running = |name: &str| {
        wait_pod(kube, name, &|p| p["status"]["containerStatuses"][0]["state"]["running"].is_object())
    };
    running("chute-killed");
    let (id, _) =
        containers(&store).into_iter().find(|(n, _)| n.starts_with("chute-killed")).expect("its container");
    assert!(store.runner().command().args(["kill", &id]).output().unwrap().status.success());
    let failed = wait_pod(kube, "chute-killed", &|p| p["status"]["phase"] == "Failed");
    assert_eq!(
        failed["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"], 137,
        "{failed:#}"
    );
    running("chute-left");
    // SAFETY: SIGKILL to the supervisor this test started.
    unsafe { libc::kill(sup.pid as i32, libc::SIGKILL) };

    let status = minerctl(&["lab", "status", "--state-dir", d]);
    assert_eq!(status.status.code(), Some(1), "{}", text(&status));
    assert!(
        String::from_utf8_lossy(&status.stderr).contains("supervisor is not running"),
        "{}",
        text(&status)
    );

    // The container outlives the supervisor (podman's conmon keeps it).
    let procs = container_processes(&store);
    assert_eq!(procs.len(), 1, "{procs:?}");
    assert!(containers(&store).iter().any(|(n, s)| n.starts_with("chute-left") && s == "running"));

    let down = minerctl(&["lab", "down", "--state-dir", d]);
    assert!(down.status.success(), "{}", text(&down));
    assert!(String::from_utf8_lossy(&down.stdout).contains("cleaning up from the record"), "{}", text(&down));
    assert_nothing_left(&dir, &r);
    assert!(!procs[0].alive(), "the container's process (pid {}) still runs", procs[0].pid);
}

/// `lab status` asked just as the supervisor dies: its socket still takes the connection,
/// then hangs up without an answer. A stand-in supervisor (a `sleep` whose pid the record
/// names, killed from the socket's side as it hangs up) makes that moment exact. A
/// supervisor that hangs up and stays alive is still an error naming the socket.
#[test]
fn lab_status_asked_as_the_supervisor_dies_says_it_is_not_running() {
    let (_tmp, dir) = state_dir();
    std::fs::create_dir_all(&dir).unwrap();
    let state = minerctl_lab::StateDir::new(&dir);
    let mut sleeper = Command::new("sleep").arg("600").spawn().unwrap();
    let pid = sleeper.id();
    let sup = ProcessRecord::of("supervisor", pid).unwrap();
    state.write(&Record { phase: "up".into(), supervisor: Some(sup), ..Record::default() }).unwrap();
    let listener = std::os::unix::net::UnixListener::bind(state.socket()).unwrap();
    let status = |kill: bool| {
        let listener = listener.try_clone().unwrap();
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = accepted.clone();
        let hangup = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            seen.store(true, std::sync::atomic::Ordering::SeqCst);
            if kill {
                // SAFETY: SIGKILL to the `sleep` this test started.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            drop(conn);
        });
        let o = minerctl(&["lab", "status", "--state-dir", dir.to_str().unwrap()]);
        if !accepted.load(std::sync::atomic::Ordering::SeqCst) {
            // status never asked the socket: unblock the accept so the asserts below
            // report it instead of the test hanging.
            let _ = std::os::unix::net::UnixStream::connect(state.socket());
        }
        hangup.join().unwrap();
        o
    };

    let alive = status(false);
    assert!(!alive.status.success(), "{}", text(&alive));
    let stderr = String::from_utf8_lossy(&alive.stderr);
    assert!(stderr.contains("did not answer") && stderr.contains("control.sock"), "{}", text(&alive));

    let dying = status(true);
    assert_eq!(dying.status.code(), Some(1), "{}", text(&dying));
    assert!(String::from_utf8_lossy(&dying.stderr).contains("supervisor is not running"), "{}", text(&dying));
    assert!(
        String::from_utf8_lossy(&dying.stdout).contains("phase: up"),
        "the record is shown: {}",
        text(&dying)
    );
    let _ = sleeper.wait();
}

/// A pod as a chute Job makes it, minimal: its image (from a validator's registry) runs the
/// chute stand-in, without a launch token (it serves, no handshake).
fn create_chute_pod(kube: &str, name: &str) {
    let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "chutes"},
        "spec": {"restartPolicy": "Never", "nodeName": "gpu-1", "containers": [{
            "name": "chute", "image": "5v.localregistry.chutes.ai:30500/user/echo:1",
            "command": ["chutes", "run", "echo:chute", "--port", "8000"]}]}});
    let rt = rt();
    let status = rt.block_on(async {
        reqwest::Client::new()
            .post(format!("{kube}/api/v1/namespaces/chutes/pods"))
            .header("content-type", "application/json")
            .body(pod.to_string())
            .send()
            .await
            .unwrap()
            .status()
    });
    assert!(status.is_success(), "creating pod {name}: {status}");
}

/// Polls pod `name` (a deadline keeps a broken lab from hanging the run) until `f` holds.
fn wait_pod(kube: &str, name: &str, f: &dyn Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let pods = cluster_list(kube, "/api/v1/namespaces/chutes/pods");
        let pod = pods.into_iter().find(|p| p["metadata"]["name"] == name);
        if let Some(p) = pod.as_ref().filter(|p| f(p)) {
            return p.clone();
        }
        assert!(Instant::now() < deadline, "pod {name}: {pod:#?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn lab_without_images_stands_in_for_the_pods_in_process_and_still_verifies_real_proofs() {
    let (_tmp, dir) = state_dir();
    let d = dir.to_str().unwrap();
    let _down = DownOnDrop(dir.clone());
    let up =
        minerctl(&["lab", "up", "--hosts", "1", "--gpus-per-host", "2", "--no-images", "--state-dir", d]);
    assert!(up.status.success(), "{}", text(&up));
    let out = String::from_utf8_lossy(&up.stdout);
    assert!(out.contains("pods: no images, so GraVal bootstrap servers and chutes are stood in"), "{out}");
    let r = record(&dir);
    assert_eq!(r.podman, None, "no podman store without images: {r:#?}");
    assert_eq!(r.proofs_verified.len(), 1, "{r:#?}");
    let servers = servers(&r.endpoints["api"]);
    let gpus = servers[0]["gpus"].as_array().unwrap();
    assert_eq!(gpus.len(), 2, "{servers:#?}");
    assert!(gpus.iter().all(|g| g["verified"] == true), "{servers:#?}");

    let down = minerctl(&["lab", "down", "--state-dir", d]);
    assert!(down.status.success(), "{}", text(&down));
    assert_nothing_left(&dir, &r);
}
