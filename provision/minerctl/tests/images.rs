//! `minerctl images`: images of this workspace's binaries, run for real with Debian's
//! podman and runc, inspected with skopeo, pushed to lab hosts, and read by `render`.
//!
//! The images are built once per test run from the *debug* builds of `chutes-miner` and
//! `graval-bootstrap` (`cargo build -p ...`, a no-op when they are current): a release
//! build would cost minutes on a 2-core machine and the image code does not care which
//! profile made the binary. Containers run as root with vfs storage in a temporary root,
//! `--runtime runc` and explicit rlimits (crun and the default rlimits fail on these
//! machines), on the host network (loopback only).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/images.rs"]
mod images_support;
#[path = "support/lab.rs"]
mod lab;

use images_support::stand_in_lock;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use chutes_protocol::Hotkey;
use chutes_protocol::auth::Payload;
use lab_hosts::lab::{Lab, Standin};
use lab_hosts::{Postgres, Redis};
use minerctl_images::{LOCK_FILE, Lock};
use test_support::{http, signed, try_http};

fn minerctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_minerctl")).args(args).output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The images of the debug binaries, built once for every test of this file.
fn images() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let bin_dir = Path::new(env!("CARGO_BIN_EXE_minerctl")).parent().unwrap().to_path_buf();
        lab_hosts::cargo_build(Path::new(env!("CARGO_MANIFEST_DIR")), &["chutes-miner", "graval-bootstrap"]);
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("minerctl-images");
        let o = minerctl(&[
            "images",
            "build",
            "--binary-dir",
            bin_dir.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", text(&o));
        // What an operator reads: one line per image with its size.
        let stdout = String::from_utf8_lossy(&o.stdout).to_string();
        eprintln!("{stdout}");
        for name in ["chutes-miner ", "graval-bootstrap "] {
            let line = stdout.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{stdout}"));
            assert!(line.contains(" MB (unpacked "), "{line}");
        }
        out
    })
}

fn lock() -> Lock {
    Lock::read(&images().join(LOCK_FILE)).unwrap()
}

// ---------------------------------------------------------------------------- render

#[test]
fn render_references_the_built_images_by_digest() {
    let dir = tempfile::tempdir().unwrap();
    let lock_path = stand_in_lock(dir.path());
    let lock = Lock::read(&lock_path).unwrap();
    let miner = &lock.images["chutes-miner"].reference;

    let o = minerctl(&["render", "--images-lock", lock_path.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let yaml = String::from_utf8_lossy(&o.stdout).to_string();
    // api + its migrate, gepetto + its migrate + its chute Jobs' cache-init
    // (CACHE_CLEANER_IMAGE), the audit exporter.
    // (long values are folded onto their own line: count the reference itself)
    assert_eq!(yaml.matches(miner.as_str()).count(), 6, "{yaml}");
    assert!(!yaml.contains("chutes-miner:unbuilt"), "{yaml}");
    // No CUDA build in this lock: the GraVal image is still the placeholder, and it says so.
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("graval.image") && !stderr.contains("minerApi.image"), "{stderr}");

    // Values still win over the lock.
    let o =
        minerctl(&["render", "--images-lock", lock_path.to_str().unwrap(), "--set", "gepetto.image=mine:1"]);
    let yaml = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(yaml.contains("image: mine:1"), "{yaml}");
    // Gepetto, its migrate init container and the chute Jobs' cache-init it creates all
    // use gepetto.image: the cleaner always runs the same build as the Gepetto that starts it.
    assert_eq!(yaml.matches("mine:1").count(), 3, "{yaml}");
    assert_eq!(yaml.matches(miner.as_str()).count(), 3);

    // Before any build: placeholders, and a warning naming the keys and the missing lock.
    let missing = dir.path().join("nowhere.json");
    let o = minerctl(&["render", "--images-lock", missing.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("image: chutes.local/chutes-miner:unbuilt"));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("minerApi.image") && stderr.contains("nowhere.json"), "{stderr}");

    // A corrupt lock is an error naming the file, not a silent fallback.
    std::fs::write(&missing, "{").unwrap();
    let o = minerctl(&["render", "--images-lock", missing.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o).contains("nowhere.json"), "{}", text(&o));
}

// ---------------------------------------------------------------------------- skopeo

#[test]
fn skopeo_reads_each_archive_with_the_locked_digest() {
    for (name, image) in &lock().images {
        let archive = Lock::archive_path(&images().join(LOCK_FILE), image);
        let o = Command::new("skopeo")
            .arg("inspect")
            .arg(format!("oci-archive:{}", archive.display()))
            .output()
            .unwrap();
        assert!(o.status.success(), "{name}: {}", text(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["Digest"], image.digest.as_str(), "{name}");
        assert_eq!(v["Architecture"], "amd64");
        let o = Command::new("skopeo")
            .arg("inspect")
            .arg("--config")
            .arg(format!("oci-archive:{}", archive.display()))
            .output()
            .unwrap();
        let config: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(config["config"]["User"], "65532:65532", "{name}");
        assert_eq!(config["config"]["Entrypoint"][0].as_str().unwrap(), format!("/usr/local/bin/{name}"));
    }
}

// ---------------------------------------------------------------------------- podman

/// podman with its own storage root, removed with every container on drop.
struct Podman {
    root: tempfile::TempDir,
}

impl Podman {
    fn new() -> Podman {
        Podman { root: tempfile::tempdir().unwrap() }
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("podman");
        c.arg("--root")
            .arg(self.root.path().join("storage"))
            .arg("--runroot")
            .arg(self.root.path().join("run"))
            .args(["--storage-driver", "vfs", "--runtime", "runc", "--cgroup-manager", "cgroupfs"])
            .args(["--events-backend", "file"]);
        c
    }

    fn ok(&self, args: &[&str]) -> String {
        let o = self.cmd().args(args).output().unwrap();
        assert!(o.status.success(), "podman {args:?}: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// Loads an archive of the lock; returns the image id.
    fn load(&self, name: &str) -> String {
        let archive = Lock::archive_path(&images().join(LOCK_FILE), &lock().images[name]);
        self.ok(&["pull", "-q", &format!("oci-archive:{}", archive.display())])
            .lines()
            .last()
            .unwrap()
            .to_string()
    }

    /// `podman run` with the flags these machines need, an env file (secrets never on a
    /// command line) and `args` after the image.
    fn run(&self, detach: bool, image: &str, env: &[(&str, String)], args: &[&str]) -> Output {
        self.run_with(detach, image, env, &[], args)
    }

    /// [`Podman::run`] with `mounts` (host file, container path), bound read-only.
    fn run_with(
        &self,
        detach: bool,
        image: &str,
        env: &[(&str, String)],
        mounts: &[(&Path, &str)],
        args: &[&str],
    ) -> Output {
        let env_file = self.root.path().join(format!("env-{}", rand_suffix()));
        let lines: String = env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
        std::fs::write(&env_file, lines).unwrap();
        let mut c = self.cmd();
        c.arg("run").args([
            "--network",
            "host",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
        ]);
        c.arg("--env-file").arg(&env_file);
        for (host, inside) in mounts {
            c.arg("--volume").arg(format!("{}:{inside}:ro", host.display()));
        }
        c.arg(if detach { "-d" } else { "--rm" });
        c.arg(image).args(args);
        c.output().unwrap()
    }

    fn logs(&self, id: &str) -> String {
        let o = self.cmd().args(["logs", id]).output().unwrap();
        text(&o)
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.cmd().args(["rm", "-f", "-a", "-t", "0"]).output();
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!("{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits (generously: a loaded CI machine) until `f` gives a value; panics with `what`.
fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn key(byte: u8) -> Hotkey {
    Hotkey::from_seed(&[byte; 32], "test").unwrap()
}

#[test]
fn the_runtime_image_migrates_serves_the_api_and_consumes_events() {
    let podman = Podman::new();
    let image = podman.load("chutes-miner");
    let pg = Postgres::start().unwrap();
    let redis = Redis::start().unwrap();
    let miner = key(7);
    let validator = key(8);
    let validators = serde_json::json!({"supported": [{
        "hotkey": validator.ss58(), "registry": "registry.invalid", "api": "http://127.0.0.1:9", "socket": "ws://127.0.0.1:9"
    }]})
    .to_string();
    let env = vec![
        ("POSTGRESQL", pg.url()),
        ("REDIS_URL", redis.url()),
        ("MINER_SS58", miner.ss58().to_string()),
        ("MINER_SEED", miner.expose_seed_hex().to_string()),
        ("VALIDATORS", validators),
    ];

    // migrate: applies the schema and exits 0; a second run finds it current.
    let o = podman.run(false, &image, &env[..1], &["migrate"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("database migrated"), "{}", text(&o));
    let o = podman.run(false, &image, &env[..1], &["migrate"]);
    assert!(text(&o).contains("up to date"), "{}", text(&o));

    // api: /ping, and a management request signed with the miner's hotkey.
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let listen = format!("127.0.0.1:{port}");
    let o = podman.run(true, &image, &env, &["api", "--no-sockets", "--listen", &listen]);
    assert!(o.status.success(), "{}", text(&o));
    let api = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let pong = wait_for("the API's /ping", || try_http(&addr, "GET", "/ping", &[], b""));
    assert_eq!(pong.0, 200, "{}", podman.logs(&api));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let client = minerctl_nodes::MinerApi::new(&format!("http://{listen}"), Arc::new(key(7))).unwrap();
    let servers = rt.block_on(client.servers()).unwrap();
    assert!(servers.is_empty(), "{servers:?}");
    let unsigned = http(&addr, "GET", "/servers/", &[], b"");
    assert!(unsigned.0 == 401 || unsigned.0 == 403, "{unsigned:?}");

    // gepetto: schedules against a cluster (the Kubernetes emulator on the host network,
    // through a kubeconfig file mounted into the container, as a pod's service account
    // would be) and reads the stream through its consumer group.
    let kube = kube_emulator::Emulator::start().unwrap();
    kube.create(serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "chutes"}}))
        .unwrap();
    let kube_dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube_dir.path().join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig).unwrap();
    let mut gepetto_env = env.clone();
    gepetto_env.push(("KUBECONFIG", "/etc/chutes/kubeconfig".into()));
    let o = podman.run_with(
        true,
        &image,
        &gepetto_env,
        &[(&kubeconfig, "/etc/chutes/kubeconfig")],
        &["gepetto", "--consumer", "test-gepetto"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let gepetto = String::from_utf8_lossy(&o.stdout).trim().to_string();
    // Its reconciler reads the cluster's chute Jobs at start-up.
    wait_for("gepetto to read the cluster", || {
        kube.requests().iter().any(|r| r.contains("/namespaces/chutes/")).then_some(())
    });
    let event = miner_events::MinerEvent::new("gpu_verified", serde_json::json!({"from": "the images test"}));
    let stream_id = rt.block_on(async {
        let producer =
            miner_events::Producer::connect(&redis.url(), miner_events::StreamConfig::default()).unwrap();
        producer.publish_confirmed(&event).await.unwrap()
    });
    wait_for("gepetto to log the event", || {
        let logs = podman.logs(&gepetto);
        (logs.contains(&stream_id) && logs.contains("gpu_verified")).then_some(())
    });
    // ... and acknowledged it: the group delivered it and holds nothing pending.
    wait_for("gepetto to acknowledge the event", || {
        let o = Command::new("redis-cli")
            .args(["-p", &redis.port().to_string(), "--json", "XINFO", "GROUPS", "miner_events"])
            .output()
            .unwrap();
        let groups: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
        let group = groups.as_array()?.iter().find(|g| g["name"] == "gepetto")?.clone();
        (group["last-delivered-id"] == stream_id.as_str() && group["pending"] == 0).then_some(())
    });
    assert!(podman.logs(&gepetto).contains("gepetto scheduling"), "{}", podman.logs(&gepetto));
    // The seed never reached the container's command line.
    let inspect = podman.ok(&["inspect", &api, "--format", "{{json .Config.Cmd}} {{json .Args}}"]);
    assert!(!inspect.contains(miner.expose_seed_hex().as_str()), "{inspect}");
}

#[test]
fn the_graval_cpu_image_serves_pings_refuses_unsigned_calls_and_proves() {
    use graval::{DeviceInfo, ProofParams, SpotCheck, Verifier, WorkProduct};
    const N: usize = 32;
    let podman = Podman::new();
    let image = podman.load("graval-bootstrap");
    let (miner, validator) = (key(1), key(2));
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // As the API's Job starts it: the two identities in the environment.
    let env = vec![
        ("MINER_HOTKEY_SS58", miner.ss58().to_string()),
        ("VALIDATOR_WHITELIST", validator.ss58().to_string()),
    ];
    let p = port.to_string();
    let n = N.to_string();
    let o = podman.run(
        true,
        &image,
        &env,
        &[
            "--host",
            "127.0.0.1",
            "--port",
            &p,
            "--backend",
            "cpu",
            "--cpu-memory-mib",
            "1",
            "--matrix-size",
            &n,
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let id = String::from_utf8_lossy(&o.stdout).trim().to_string();
    let pong = wait_for("graval's /ping", || try_http(&addr, "GET", "/ping", &[], b""));
    assert_eq!(pong, (200, "pong".to_string()), "{}", podman.logs(&id));

    let unsigned = http(&addr, "GET", "/devices", &[], b"");
    assert_eq!(unsigned.0, 401, "{unsigned:?}");
    let (status, body) =
        http(&addr, "GET", "/devices", &signed(&miner, miner.ss58(), Payload::Purpose("graval")), b"");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let devs: Vec<DeviceInfo> = serde_json::from_value(v["devices"].clone()).unwrap();
    let dev = &devs[0];

    let (seed, iterations, nonce) = (42_424_242u64, 2u64, graval::Nonce::random());
    let verifier = Verifier::new(ProofParams::with_matrix_size(N));
    let transport = verifier.encrypt_challenge(dev, seed, &nonce, iterations, "from the container").unwrap();
    let b64 = transport.split_once('|').unwrap().1;
    let body = serde_json::to_vec(&serde_json::json!({
        "seed": seed, "nonce": nonce.to_hex(), "iterations": iterations, "ciphertext": {&dev.uuid: b64}
    }))
    .unwrap();
    let (status, text) =
        http(&addr, "POST", "/prove", &signed(&validator, miner.ss58(), Payload::Body(&body)), &body);
    assert_eq!(status, 200, "{text}");
    let resp: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(resp["plaintext"][&dev.uuid], "from the container");
    let wp: WorkProduct = serde_json::from_value(resp["proof"][&dev.uuid]["work_product"].clone()).unwrap();
    verifier.check_proof(dev, seed, &nonce, iterations, &wp, &SpotCheck::Random(3)).unwrap();
}

// ---------------------------------------------------------------------------- push

/// Lab hosts with the microk8s stand-in "installed", and an inventory for them.
fn lab_inventory(lab: &Lab, dir: &Path) -> (PathBuf, PathBuf) {
    for h in lab.hosts() {
        h.install_standins(&[Standin::Microk8s]).unwrap();
        h.sh("mkdir -p /var/lib/lab-standins/snaps && echo version=1.32 > /var/lib/lab-standins/snaps/microk8s")
            .unwrap();
    }
    let inventory = dir.join("inventory.yml");
    std::fs::write(&inventory, lab::inventory_yaml(lab.hosts())).unwrap();
    let known = dir.join("known_hosts");
    let lines: Vec<String> = lab.hosts().iter().map(|h| h.known_hosts_line()).collect();
    std::fs::write(&known, lines.join("\n") + "\n").unwrap();
    (inventory, known)
}

#[test]
fn push_imports_each_image_once_into_every_node() {
    let lock_path = images().join(LOCK_FILE);
    let lock = lock();
    let lab = Lab::start_named(&["cpu-0", "gpu-1"]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (inventory, known) = lab_inventory(&lab, dir.path());
    let push = |extra: &[&str]| {
        let mut args = vec![
            "images",
            "push",
            "-i",
            inventory.to_str().unwrap(),
            "--known-hosts",
            known.to_str().unwrap(),
            "--images-lock",
            lock_path.to_str().unwrap(),
        ];
        args.extend(extra);
        let o = minerctl(&args);
        assert!(o.status.success(), "{}", text(&o));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let imports = |host: &str| -> Vec<String> {
        let h = lab.host(host).unwrap();
        h.sh("cat /var/lib/lab-standins/microk8s/imports 2>/dev/null || true")
            .unwrap()
            .lines()
            .map(String::from)
            .collect()
    };

    // --check lists and changes nothing.
    let out = push(&["--check"]);
    assert!(out.contains("cpu-0: chutes-miner: would import (--check)"), "{out}");
    assert!(imports("cpu-0").is_empty() && imports("gpu-1").is_empty());

    let out = push(&[]);
    assert!(out.contains("cpu-0: chutes-miner: imported"), "{out}");
    assert!(out.contains("gpu-1: graval-bootstrap: imported"), "{out}");
    assert!(!out.contains("cpu-0: graval"), "GraVal goes to GPU nodes only: {out}");
    let miner = &lock.images["chutes-miner"];
    assert_eq!(imports("cpu-0"), [format!("{}\t{}", miner.tag, miner.digest)]);
    assert_eq!(imports("gpu-1").len(), 2);
    for h in lab.hosts() {
        // The kubelet (containerd's CRI) finds an image by its exact name: the one the
        // rendered manifests use must be listed, not only the digest under other names.
        let names = h.sh("microk8s ctr images ls -q").unwrap();
        assert!(names.lines().any(|n| n == miner.reference), "{} not in {names}", miner.reference);
        assert_eq!(h.sh("ls /var/tmp | grep -c minerctl || true").unwrap().trim(), "0", "archives removed");
    }

    // A second push finds every digest and imports nothing.
    let out = push(&[]);
    assert!(out.contains("cpu-0: chutes-miner: unchanged (digest present)"), "{out}");
    assert!(!out.contains("imported"), "{out}");
    assert_eq!(imports("cpu-0").len(), 1);
    assert_eq!(imports("gpu-1").len(), 2);

    // A host not in the inventory is refused before anything is reached.
    let o = minerctl(&[
        "images",
        "push",
        "-i",
        inventory.to_str().unwrap(),
        "--images-lock",
        lock_path.to_str().unwrap(),
        "--limit",
        "gpu-9",
    ]);
    assert!(!o.status.success() && text(&o).contains("gpu-9"), "{}", text(&o));
}

// ---------------------------------------------------------------------------- registry

/// skopeo's view of `reference` in `registry`, with the credentials in an auth file
/// (never on its command line) and the registry's CA.
fn skopeo(registry: &lab_hosts::Registry, auth_file: &Path, command: &str, reference: &str) -> Output {
    // (skopeo reads no flags after the image name)
    Command::new("skopeo")
        .arg(command)
        .arg("--authfile")
        .arg(auth_file)
        .arg("--cert-dir")
        .arg(registry.cert_dir())
        .arg(reference)
        .output()
        .unwrap()
}

/// The password of every lab registry's user `miner`.
const PASSWORD: &str = "lab-registry-password";

/// A lab registry, files with the right and a wrong password, and `images push` to it.
struct Pushing {
    registry: lab_hosts::Registry,
    dir: tempfile::TempDir,
    wrong: PathBuf,
    right: PathBuf,
    /// `--set images.registry=` the registry's `chutes` project.
    set: String,
}

impl Pushing {
    fn new(registry: lab_hosts::Registry) -> Pushing {
        let dir = tempfile::tempdir().unwrap();
        let (wrong, right) = (dir.path().join("wrong"), dir.path().join("right"));
        std::fs::write(&wrong, "not-the-password\n").unwrap();
        std::fs::write(&right, format!("{PASSWORD}\n")).unwrap();
        let set = format!("images.registry={}/chutes", registry.host());
        Pushing { registry, dir, wrong, right, set }
    }

    /// `minerctl images push` of the built images as `miner`, with `extra` arguments.
    fn push(&self, password_file: &Path, extra: &[&str]) -> Output {
        let lock_path = images().join(LOCK_FILE);
        let mut args = vec![
            "images",
            "push",
            "--set",
            &self.set,
            "--images-lock",
            lock_path.to_str().unwrap(),
            "--registry-user",
            "miner",
            "--registry-password-file",
            password_file.to_str().unwrap(),
        ];
        args.extend(extra);
        minerctl(&args)
    }

    /// A push with the wrong password failed, naming the registry and the user, and
    /// without the password.
    fn assert_refused(&self, o: &Output) {
        assert!(!o.status.success());
        let t = text(o);
        let refused =
            format!("registry {}/chutes refused the credentials of user `miner`", self.registry.host());
        assert!(t.contains(&refused), "{t}");
        assert!(!t.contains("not-the-password"), "{t}");
    }

    /// Checks what anyone pulls back (skopeo, with the right credentials): every image of
    /// `lock`, by tag, has the lock's digest and architecture. Returns skopeo's auth file.
    fn pulled_back(&self, lock: &Lock) -> PathBuf {
        use base64::Engine as _;
        let host = self.registry.host();
        let auth = self.dir.path().join("auth.json");
        let basic = base64::engine::general_purpose::STANDARD.encode(format!("miner:{PASSWORD}"));
        std::fs::write(&auth, serde_json::json!({"auths": {&host: {"auth": basic}}}).to_string()).unwrap();
        for (name, image) in &lock.images {
            let tag = image.tag.rsplit_once(':').unwrap().1;
            let o = skopeo(&self.registry, &auth, "inspect", &format!("docker://{host}/chutes/{name}:{tag}"));
            assert!(o.status.success(), "{name}: {}", text(&o));
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            assert_eq!(v["Digest"], image.digest.as_str(), "{name}");
            assert_eq!(v["Architecture"], "amd64", "{name}");
        }
        auth
    }
}

#[test]
fn push_to_a_registry_with_credentials_and_render_names_the_images_there() {
    let lock_path = images().join(LOCK_FILE);
    let lock = lock();
    let p = Pushing::new(lab_hosts::Registry::start("miner", PASSWORD).unwrap());
    let (registry, set, wrong, right) = (&p.registry, &p.set, &p.wrong, &p.right);
    let push = |password_file: &Path, extra: &[&str]| p.push(password_file, extra);
    let ca = registry.ca_file();
    let with_ca = ["--registry-ca", ca.to_str().unwrap()];
    let repositories = registry.storage().join("docker/registry/v2/repositories");

    // A wrong password: refused at the first request, with the registry and user named.
    let o = push(wrong, &with_ca);
    p.assert_refused(&o);
    // Without its CA, the registry's certificate is not trusted, and the error says so.
    let o = push(right, &[]);
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains(&registry.host()) && t.to_lowercase().contains("certificate"), "{t}");
    assert!(!repositories.exists(), "nothing was stored");

    // --check asks and sends nothing.
    let o = push(right, &["--registry-ca", ca.to_str().unwrap(), "--check"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains(": chutes-miner: would push (--check)"),
        "{}",
        text(&o)
    );
    assert!(!repositories.exists(), "nothing was stored");

    let started = Instant::now();
    let o = push(right, &with_ca);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    eprintln!("first push ({:.1} s):\n{out}", started.elapsed().as_secs_f64());
    for name in lock.images.keys() {
        // The config and the one layer.
        assert!(out.contains(&format!("/chutes: {name}: pushed: 2 blob(s) uploaded")), "{out}");
    }

    // What a node (or anyone) pulls back: every manifest, by tag, has the lock's digest.
    let auth = p.pulled_back(&lock);

    // A second push finds every manifest and uploads nothing: the registry saw no upload.
    let uploads = |log: &str| log.matches("\"POST /v2/").count();
    let before = uploads(&registry.log());
    assert_eq!(before, 2 * lock.images.len(), "one upload per blob");
    let o = push(right, &with_ca);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(out.matches("unchanged (digest present)").count(), lock.images.len(), "{out}");
    assert_eq!(uploads(&registry.log()), before, "no blob was uploaded again");

    // An image whose manifest went away, over blobs that stayed: only the manifest is sent.
    let miner = &lock.images["chutes-miner"];
    let o = skopeo(
        registry,
        &auth,
        "delete",
        &format!("docker://{}/chutes/chutes-miner@{}", registry.host(), miner.digest),
    );
    assert!(o.status.success(), "{}", text(&o));
    let o = push(right, &with_ca);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(out.contains("chutes-miner: pushed: 0 blob(s) uploaded (0.0 MB), 2 already there"), "{out}");
    assert_eq!(uploads(&registry.log()), before);

    // render names the images in the registry, by the same digests.
    let o = minerctl(&["render", "--images-lock", lock_path.to_str().unwrap(), "--set", set]);
    assert!(o.status.success(), "{}", text(&o));
    let yaml = String::from_utf8_lossy(&o.stdout).to_string();
    let in_registry = format!("{}/chutes/chutes-miner@{}", registry.host(), miner.digest);
    assert_eq!(yaml.matches(in_registry.as_str()).count(), 6, "{yaml}");
    assert!(!yaml.contains(&miner.reference), "{yaml}");

    // A registry value that is no registry is refused, naming the key.
    let o = minerctl(&[
        "render",
        "--images-lock",
        lock_path.to_str().unwrap(),
        "--set",
        "images.registry=https://r.example",
    ]);
    assert!(!o.status.success());
    assert!(text(&o).contains("images.registry `https://r.example`"), "{}", text(&o));
}

#[test]
fn push_to_a_registry_that_hands_out_bearer_tokens() {
    // Docker Hub, GHCR, GitLab and Harbor answer with a Bearer challenge: the push gets a
    // token for each repository from the realm, with the operator's credentials.
    let lock = lock();
    let p = Pushing::new(lab_hosts::Registry::start_with_tokens("miner", PASSWORD).unwrap());
    let (registry, wrong, right) = (&p.registry, &p.wrong, &p.right);
    let ca = registry.ca_file();
    let push = |password_file: &Path| p.push(password_file, &["--registry-ca", ca.to_str().unwrap()]);
    let repositories = registry.storage().join("docker/registry/v2/repositories");

    // The token service refuses a wrong password: named, before anything is uploaded.
    let o = push(wrong);
    p.assert_refused(&o);
    assert_eq!(registry.tokens_issued(), 0);
    assert!(!repositories.exists(), "nothing was stored");

    let o = push(right);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    for name in lock.images.keys() {
        assert!(out.contains(&format!("/chutes: {name}: pushed: 2 blob(s) uploaded")), "{out}");
    }
    let tokens = registry.tokens_issued();
    assert!(tokens >= 1, "the push went through the token service");
    assert!(!out.contains(PASSWORD), "{out}");

    // What a node pulls back (skopeo does its own token dance): the lock's digests.
    p.pulled_back(&lock);

    // Again: every manifest is there, nothing is uploaded.
    let o = push(right);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(out.matches("unchanged (digest present)").count(), lock.images.len(), "{out}");
}

// ---------------------------------------------------------------------------- scripted registry

/// What a scripted listener was asked: (method, path, whether it carried `Authorization`).
type Seen = Arc<std::sync::Mutex<Vec<(String, String, bool)>>>;

/// A throwaway CA and a certificate for 127.0.0.1 that it signed: the scripted
/// listeners' TLS, and the CA's PEM file (`--registry-ca`).
fn scripted_tls(dir: &Path) -> (Arc<rustls::ServerConfig>, PathBuf) {
    let openssl = |args: &[&str]| {
        let o = Command::new("openssl").args(args).current_dir(dir).output().unwrap();
        assert!(o.status.success(), "openssl {args:?}: {}", text(&o));
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let days = ["-days", "2"];
    openssl(
        &[&["req", "-x509"][..], &ec, &days, &["-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=ca"]]
            .concat(),
    );
    openssl(
        &[&["req"][..], &ec, &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"]]
            .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        &[
            &["x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial"][..],
            &days,
            &["-extfile", "server.ext", "-outform", "DER", "-out", "server.der"],
        ]
        .concat(),
    );
    openssl(&[
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-in",
        "server.key",
        "-outform",
        "DER",
        "-out",
        "server.key.der",
    ]);
    let cert = rustls::pki_types::CertificateDer::from(std::fs::read(dir.join("server.der")).unwrap());
    let key = rustls::pki_types::PrivatePkcs8KeyDer::from(std::fs::read(dir.join("server.key.der")).unwrap());
    let config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert], key.into())
            .unwrap();
    (Arc::new(config), dir.join("ca.crt"))
}

type Answer = dyn Fn(&str, &str, bool) -> (u16, Vec<(&'static str, String)>) + Send + Sync;

/// A scripted HTTP/1.1 listener (HTTPS with `tls`) on a port of its own, i.e. an origin of
/// its own: records every request before it answers it with `answer(method, path,
/// authorized)` (a status and headers, no body).
struct Scripted {
    port: u16,
    seen: Seen,
}

impl Scripted {
    fn start(
        tls: Option<Arc<rustls::ServerConfig>>,
        answer: impl Fn(&str, &str, bool) -> (u16, Vec<(&'static str, String)>) + Send + Sync + 'static,
    ) -> Scripted {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Seen::default();
        let answer: Arc<Answer> = Arc::new(answer);
        let recorded = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (seen, answer, tls) = (recorded.clone(), answer.clone(), tls.clone());
                std::thread::spawn(move || match tls {
                    Some(config) => {
                        let conn = rustls::ServerConnection::new(config).unwrap();
                        Self::serve(rustls::StreamOwned::new(conn, stream), &seen, &*answer);
                    }
                    None => Self::serve(stream, &seen, &*answer),
                });
            }
        });
        Scripted { port, seen }
    }

    /// Requests of one connection, until the client closes it.
    fn serve(mut stream: impl std::io::Read + std::io::Write, seen: &Seen, answer: &Answer) {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 64 << 10];
        let mut fill = |buf: &mut Vec<u8>, stream: &mut dyn std::io::Read| match stream.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                true
            }
        };
        loop {
            let head_end = loop {
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
                if !fill(&mut buf, &mut stream) {
                    return;
                }
            };
            let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
            let header = |name: &str| {
                head.lines().skip(1).find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                })
            };
            let length: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            while buf.len() < head_end + length {
                if !fill(&mut buf, &mut stream) {
                    return;
                }
            }
            buf.drain(..head_end + length);
            let mut first = head.lines().next().unwrap_or("").split(' ');
            let (method, path) =
                (first.next().unwrap_or("").to_string(), first.next().unwrap_or("").to_string());
            let authorized = header("authorization").is_some();
            seen.lock().unwrap().push((method.clone(), path.clone(), authorized));
            let (status, headers) = answer(&method, &path, authorized);
            let mut response = format!("HTTP/1.1 {status} Scripted\r\nContent-Length: 0\r\n");
            for (k, v) in headers {
                response.push_str(&format!("{k}: {v}\r\n"));
            }
            response.push_str("\r\n");
            if stream.write_all(response.as_bytes()).and_then(|()| stream.flush()).is_err() {
                return;
            }
        }
    }

    fn seen(&self) -> Vec<(String, String, bool)> {
        self.seen.lock().unwrap().clone()
    }
}

/// A registry that wants Basic credentials, holds nothing, sends each blob upload to
/// `upload_to` and answers a manifest `HEAD` with a redirect to `head_to` (if any).
fn scripted_registry(
    tls: &Arc<rustls::ServerConfig>,
    upload_to: String,
    head_to: Option<String>,
) -> Scripted {
    use std::sync::atomic::{AtomicU32, Ordering};
    let uploads = AtomicU32::new(0);
    Scripted::start(Some(tls.clone()), move |method, path, authorized| {
        if !authorized {
            return (401, vec![("WWW-Authenticate", "Basic realm=\"scripted\"".into())]);
        }
        match (method, path) {
            ("GET", "/v2/") => (200, vec![]),
            ("HEAD", p) if p.contains("/manifests/") => match &head_to {
                Some(to) => (307, vec![("Location", format!("{to}/manifest"))]),
                None => (404, vec![]),
            },
            ("POST", p) if p.ends_with("/blobs/uploads/") => {
                let n = uploads.fetch_add(1, Ordering::Relaxed);
                (202, vec![("Location", format!("{upload_to}/upload/{n}?_state=opaque"))])
            }
            ("PUT", p) if p.contains("/manifests/") => (201, vec![]),
            _ => (404, vec![]),
        }
    })
}

/// Another origin that takes uploads without asking for credentials (a storage backend).
fn scripted_storage(tls: Option<Arc<rustls::ServerConfig>>) -> Scripted {
    Scripted::start(tls, |method, _, _| if method == "PUT" { (201, vec![]) } else { (404, vec![]) })
}

#[test]
fn push_sends_the_credentials_to_the_registry_only() {
    use minerctl_images::registry::{Client, Credentials, Pushed, RegistryError, RegistryRef};
    let dir = tempfile::tempdir().unwrap();
    let lock_path = stand_in_lock(dir.path());
    let image = Lock::read(&lock_path).unwrap().images["chutes-miner"].clone();
    let (tls, ca) = scripted_tls(dir.path());
    let password = dir.path().join("password");
    std::fs::write(&password, format!("{PASSWORD}\n")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let push = |registry: &Scripted| -> Result<Pushed, RegistryError> {
        let at = RegistryRef::parse(&format!("127.0.0.1:{}/chutes", registry.port)).unwrap();
        let credentials = Credentials::from_file("miner", &password).unwrap();
        let mut client = Client::new(at, Some(credentials), Some(&ca)).unwrap();
        rt.block_on(async {
            client.check().await?;
            client.push(&lock_path, "chutes-miner", &image, false).await
        })
    };

    // Uploads (and a manifest HEAD, by redirect) sent to another origin over HTTPS, as
    // registries on object storage or behind a CDN do: followed, without the credentials.
    let storage = scripted_storage(Some(tls.clone()));
    let elsewhere = format!("https://127.0.0.1:{}", storage.port);
    let registry = scripted_registry(&tls, elsewhere.clone(), Some(elsewhere));
    let pushed = push(&registry).unwrap();
    assert!(matches!(pushed, Pushed::Uploaded { blobs: 2, skipped: 0, .. }), "{pushed:?}");
    let seen = storage.seen();
    assert_eq!(seen.iter().filter(|(m, _, _)| m == "PUT").count(), 2, "{seen:?}");
    assert!(seen.iter().any(|(m, p, _)| m == "HEAD" && p == "/manifest"), "{seen:?}");
    assert!(seen.iter().all(|(_, _, authorized)| !authorized), "credentials left the registry: {seen:?}");
    // ... while the registry itself got them on every request after its challenge.
    let seen = registry.seen();
    assert!(seen.iter().skip(1).all(|(_, _, authorized)| *authorized), "{seen:?}");

    // An upload sent to plain HTTP (a proxy that terminates TLS and tells the registry
    // it was reached over HTTP): refused before anything goes there, naming the
    // registry and where it sent the upload.
    let plain = scripted_storage(None);
    let registry = scripted_registry(&tls, format!("http://127.0.0.1:{}", plain.port), None);
    let e = push(&registry).unwrap_err().to_string();
    assert!(e.contains(&format!("registry 127.0.0.1:{}/chutes", registry.port)), "{e}");
    assert!(e.contains(&format!("http://127.0.0.1:{}/upload/0", plain.port)), "{e}");
    assert!(e.contains("plain HTTP") && !e.contains(PASSWORD), "{e}");
    assert_eq!(plain.seen(), [], "nothing went over plain HTTP");
}
