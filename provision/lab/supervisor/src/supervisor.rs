//! The supervisor: makes the lab step by step, records everything it makes in the state
//! directory before moving on, then holds every guard (lab hosts, Postgres, Redis, the
//! emulators, the miner's runtime) until `lab down` asks over the control socket. It runs
//! as its own process (`minerctl lab supervise`, started by `lab up`): whatever it
//! started dies with it, and `lab down` can clean up from the record if it crashed.

use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lab_hosts::lab::{Gpu, Lab, LabHost};
use lab_hosts::{Postgres, Redis};
use serde_json::{Value, json};

use crate::containers::{LabStore, Loaded};
use crate::control::{self, DownRequest};
use crate::hosts::{self, InventorySpec};
use crate::miner::{self, ChuteStandIn, GravalAddress};
use crate::scenario::LabScenario;
use crate::state::{HostRecord, ProcessRecord, Record, StateDir};
use crate::{LabError, io, step_err};

/// The images step: build from binaries, reuse a built lock, or skip (and why).
#[derive(Debug, Clone)]
pub enum ImagesPlan {
    Build { binary_dir: PathBuf },
    Reuse { lock: PathBuf },
    Skip(String),
}

#[derive(Debug, Clone)]
pub struct Options {
    pub state_dir: PathBuf,
    pub gpu_hosts: usize,
    pub gpus_per_host: usize,
    /// The `minerctl` binary that runs provision, images, deploy and add-node.
    pub minerctl: PathBuf,
    pub images: ImagesPlan,
    /// Seed of the validator's scenario.
    pub seed: u64,
}

/// Final progress lines: `lab up` follows the progress file until one of them.
pub const READY: &str = "ready";
pub const FAILED: &str = "failed";

/// Numbered progress lines, to the progress file (which `lab up` follows) and the log.
struct Progress {
    file: std::fs::File,
    total: usize,
    n: usize,
    step_start: Instant,
    step: String,
}

impl Progress {
    fn line(&mut self, text: &str) {
        let _ = writeln!(self.file, "{text}");
        let _ = self.file.flush();
        println!("{text}");
    }

    fn begin(&mut self, what: &str) {
        self.n += 1;
        self.step = what.to_owned();
        self.step_start = Instant::now();
        let line = format!("[{}/{}] {what}", self.n, self.total);
        self.line(&line);
    }

    fn detail(&mut self, text: &str) {
        self.line(&format!("      {text}"));
    }

    /// Ends the step; its name and duration go into the record.
    fn end(&mut self, shared: &Shared) -> Result<(), LabError> {
        let secs = self.step_start.elapsed().as_secs_f64();
        self.detail(&format!("done in {secs:.1} s"));
        let step = self.step.clone();
        shared.update(|r| r.steps.push((step, secs)))
    }
}

/// The record, shared with the control thread, saved on every change.
#[derive(Clone)]
struct Shared {
    dir: StateDir,
    record: Arc<Mutex<Record>>,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut Record)) -> Result<(), LabError> {
        let mut r = self.record.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut r);
        self.dir.write(&r)
    }
}

/// Everything the lab owns, dropped in reverse order of making.
#[derive(Default)]
struct Owned {
    lab: Option<Lab>,
    kube: Option<Arc<kube_emulator::Emulator>>,
    postgres: Option<Postgres>,
    redis: Option<Redis>,
    validator: Option<Arc<validator_emulator::Emulator>>,
    runtime: Option<miner::Runtime>,
    tokio: Option<tokio::runtime::Runtime>,
}

impl Owned {
    fn stop(&mut self) {
        // The miner first (it talks to everything), then the servers, then the hosts.
        if let Some(rt) = self.tokio.as_ref() {
            let _guard = rt.enter();
            self.runtime.take();
        }
        if let Some(rt) = self.tokio.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
        self.validator.take();
        self.redis.take();
        self.postgres.take();
        self.kube.take();
        self.lab.take();
    }
}

/// Runs the supervisor until `lab down`; `Err` only when the lab could not start (the
/// record then says why, and everything made so far is already stopped).
pub fn run(opts: Options) -> Result<(), LabError> {
    let started = Instant::now();
    let dir = StateDir::new(&opts.state_dir);
    dir.create()?;
    let record = Record {
        phase: "starting".into(),
        supervisor: ProcessRecord::of("supervisor", std::process::id()),
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default(),
        ..Record::default()
    };
    dir.write(&record)?;
    let shared = Shared { dir: dir.clone(), record: Arc::new(Mutex::new(record)) };
    let (down_tx, down_rx) = mpsc::channel::<DownRequest>();
    control::serve(&dir.socket(), shared.record.clone(), down_tx)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.progress())
        .map_err(io(format!("open {}", dir.progress().display())))?;
    let mut progress = Progress { file, total: 8, n: 0, step_start: Instant::now(), step: String::new() };
    let mut owned = Owned::default();
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The miner's logs (API, Gepetto, socket) go to the supervisor's log.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn,hyper=warn,sqlx=warn"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).try_init();

    let mut pending = None;
    match start_steps(&opts, &dir, &shared, &mut progress, &mut owned, &down_rx, &mut pending) {
        Ok(scenario) => {
            let secs = started.elapsed().as_secs_f64();
            shared.update(|r| {
                r.phase = "up".into();
                r.up_seconds = Some(secs);
            })?;
            progress.line(&format!("{READY} in {secs:.1} s"));
            let down = match play_scenario(&shared, &mut progress, &owned, &scenario, &down_rx) {
                Ok(()) => {
                    let skipped = shared
                        .record
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .scenario
                        .starts_with("skipped");
                    if !skipped {
                        progress.line("scenario: done");
                        let _ = shared.update(|r| r.scenario = "done".into());
                    }
                    down_rx.recv().ok()
                }
                Err(Stop::Down(s)) => Some(s),
                Err(Stop::Failed(e)) => {
                    progress.line(&format!("scenario: {e}"));
                    let _ = shared.update(|r| r.scenario = format!("failed: {e}"));
                    down_rx.recv().ok()
                }
            };
            stop(&shared, &mut owned, down);
            Ok(())
        }
        Err(e) => {
            progress.line(&format!("{FAILED}: {e}"));
            let _ = shared.update(|r| {
                r.phase = "failed".into();
                r.error = Some(e.to_string());
            });
            stop(&shared, &mut owned, pending);
            Err(e)
        }
    }
}

fn stop(shared: &Shared, owned: &mut Owned, down: Option<DownRequest>) {
    let _ = shared.update(|r| r.phase = "stopping".into());
    owned.stop();
    if let Some(s) = down {
        control::answer(s, &json!({"ok": true}));
    }
}

/// `lab down` during start-up: stop after the current step.
fn interrupted(
    down: &mpsc::Receiver<DownRequest>,
    pending: &mut Option<DownRequest>,
) -> Result<(), LabError> {
    if let Ok(s) = down.try_recv() {
        *pending = Some(s);
        return Err(LabError::Interrupted);
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn start_steps(
    opts: &Options,
    dir: &StateDir,
    shared: &Shared,
    p: &mut Progress,
    owned: &mut Owned,
    down: &mpsc::Receiver<DownRequest>,
    pending: &mut Option<DownRequest>,
) -> Result<LabScenario, LabError> {
    let gpus: Vec<Gpu> = vec![hosts::lab_gpu(); opts.gpus_per_host];
    let inventory = dir.file("inventory.yml");
    let known_hosts = dir.file("known_hosts");
    let kubeconfig = dir.file("kubeconfig");
    let hotkey_file = dir.miner_hotkey();
    let validator_ss58 = miner::hotkey(miner::VALIDATOR_SEED, "lab validator")?.ss58().to_owned();
    let miner_ss58 = miner::hotkey(miner::MINER_SEED, "lab miner")?.ss58().to_owned();
    write_secret(&hotkey_file, miner::MINER_SEED)?;

    // 1. Hosts and inventory.
    p.begin(&format!(
        "creating the lab hosts: cpu-0 (primary) and {} GPU hosts with {} simulated {} each",
        opts.gpu_hosts,
        opts.gpus_per_host,
        hosts::LAB_GPU_SHORT_REF
    ));
    let lab = Lab::start_named(&hosts::names(opts.gpu_hosts))?;
    let lab = owned.lab.insert(lab);
    shared.update(|r| {
        for h in lab.hosts() {
            let gpus = if h.name() == "cpu-0" { 0 } else { opts.gpus_per_host };
            r.hosts.push(HostRecord {
                name: h.name().into(),
                addr: h.addr().to_string(),
                ssh_port: h.port(),
                gpus,
            });
            r.processes.extend(ProcessRecord::of(&format!("lab host {}", h.name()), h.init_pid()));
            r.listeners.push(h.ssh_addr().to_string());
        }
    })?;
    for h in lab.hosts() {
        let g: &[Gpu] = if h.name() == "cpu-0" { &[] } else { &gpus };
        hosts::prepare(h, g)?;
        p.detail(&format!("{} at {} (ssh port {})", h.name(), h.addr(), h.port()));
    }
    let refs: Vec<&LabHost> = lab.hosts().iter().collect();
    let spec = InventorySpec {
        vars: hosts::LAB_VARS,
        validator: Some(&validator_ss58),
        external_ip_is_address: true,
        gpu_short_ref: Some(hosts::LAB_GPU_SHORT_REF),
    };
    std::fs::write(&inventory, hosts::inventory_yaml(&refs, &spec))
        .map_err(io(format!("write {}", inventory.display())))?;
    hosts::write_known_hosts(&known_hosts, &refs)?;
    p.detail(&format!("inventory: {}", inventory.display()));
    p.end(shared)?;
    interrupted(down, pending)?;

    // 2. The cluster: the hosts' microk8s reaches the API emulator, so the join registers them.
    p.begin("starting the cluster (Kubernetes API emulator) for the hosts to join");
    let kube = Arc::new(kube_emulator::Emulator::start().map_err(|e| step_err("kube emulator", e))?);
    owned.kube = Some(kube.clone());
    kube.create(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": miner::NAMESPACE}}))
        .map_err(|e| step_err("kube emulator", format!("{e:?}")))?;
    // The primary runs microk8s already: its node exists.
    kube.add_node(kube_emulator::Node::new("cpu-0").address(&lab.hosts()[0].addr().to_string()));
    for h in lab.hosts() {
        h.set_kube_api(&kube.url())?;
        if h.name() != "cpu-0" {
            h.set_kube_node_json(&hosts::gpu_node_json(h.name(), &gpus, &h.addr().to_string()).to_string())?;
        }
    }
    kube.write_kubeconfig(&kubeconfig).map_err(|e| step_err("kube emulator", format!("{e:?}")))?;
    let kube_url = kube.url();
    shared.update(|r| {
        r.endpoints.insert("kube".into(), kube_url.clone());
        r.listeners.push(kube_url.trim_start_matches("http://").to_owned());
    })?;
    p.detail(&format!("{kube_url}; kubeconfig: {}", kubeconfig.display()));
    p.end(shared)?;
    interrupted(down, pending)?;

    // 3. minerctl provision.
    p.begin("provisioning the hosts (minerctl provision)");
    let inv = path_str(&inventory)?;
    let kh = path_str(&known_hosts)?;
    let provision_log = dir.file("provision.log");
    run_minerctl(
        opts,
        dir,
        "provision",
        &["provision", "-i", inv, "--known-hosts", kh, "--log-file", path_str(&provision_log)?],
    )?;
    for h in &lab.hosts()[1..] {
        if kube.get("v1", "Node", None, h.name()).ok().flatten().is_none() {
            return Err(step_err("provision", format!("{} did not join the cluster (no Node)", h.name())));
        }
    }
    p.detail(&format!("{} nodes in the cluster; log: {}", lab.hosts().len(), provision_log.display()));
    p.end(shared)?;
    interrupted(down, pending)?;

    // 4. Images; with them, GraVal bootstrap and chute pods run as containers.
    p.begin("building and importing the miner's images (minerctl images build, push)");
    let lock = match &opts.images {
        ImagesPlan::Skip(why) => {
            p.detail(&format!("skipped: {why}"));
            shared.update(|r| r.skipped.push(("images".into(), why.clone())))?;
            None
        }
        ImagesPlan::Build { binary_dir } => {
            let out = dir.file("images");
            run_minerctl(
                opts,
                dir,
                "images-build",
                &[
                    "images",
                    "build",
                    "--lab",
                    "--binary-dir",
                    path_str(binary_dir)?,
                    "--out",
                    path_str(&out)?,
                ],
            )?;
            Some(out.join("images.lock.json"))
        }
        ImagesPlan::Reuse { lock } => {
            p.detail(&format!("reusing {}", lock.display()));
            Some(lock.clone())
        }
    };
    if let Some(lock) = &lock {
        run_minerctl(
            opts,
            dir,
            "images-push",
            &["images", "push", "-i", inv, "--known-hosts", kh, "--images-lock", path_str(lock)?],
        )?;
        p.detail(&format!("imported into every node: {}", lock.display()));
    }
    let mut loaded: Option<(LabStore, Loaded)> = None;
    if let Some(lock) = &lock {
        let store = LabStore::new(dir, &format!("lab-{}", std::process::id()));
        // Recorded before it exists: `lab down` removes it whatever happens next.
        shared.update(|r| r.podman = Some(store.clone()))?;
        let images = store.load(lock)?;
        p.detail(&format!(
            "loaded {} and {} into the lab's podman store {}",
            images.graval,
            images.standin,
            store.root.display()
        ));
        loaded = Some((store, images));
    }
    p.end(shared)?;
    interrupted(down, pending)?;

    // 5. minerctl deploy.
    p.begin("deploying the miner's manifests to the cluster (minerctl deploy)");
    let kc = path_str(&kubeconfig)?;
    let hk = path_str(&hotkey_file)?;
    // Without built images the chart's default image references stay (the lock is absent).
    let lock_path = lock.clone().unwrap_or_else(|| dir.file("no-images.lock.json"));
    let lp = path_str(&lock_path)?;
    // The chart's validator is the one the nodes' registry mirror was provisioned for
    // (the inventory's), which deploy checks.
    let validator = format!("validators.supported[0].hotkey={validator_ss58}");
    let args = [
        "deploy",
        "--kubeconfig",
        kc,
        "--hotkey",
        hk,
        "--timeout",
        "300",
        "-i",
        inv,
        "--images-lock",
        lp,
        "--set",
        &validator,
    ];
    run_minerctl(opts, dir, "deploy", &args)?;
    p.end(shared)?;
    interrupted(down, pending)?;

    // 6. The validator.
    p.begin("starting the validator emulator (real GraVal verification)");
    let validator = Arc::new(validator_emulator::Emulator::start());
    owned.validator = Some(validator.clone());
    validator.set_supported_gpus(&[hosts::LAB_GPU_SHORT_REF]);
    // Containers: the validator checks proofs at node address + NodePort. Without images,
    // in-process stand-ins (started with the miner) register their addresses here.
    let graval = GravalAddress::node_port();
    validator.verify_with_graval(miner::verifier(&graval)?);
    let containers = loaded.is_some();
    if let Some((store, images)) = &loaded {
        let at: std::net::SocketAddr = format!("127.0.0.1:{}", validator.port())
            .parse()
            .map_err(|e| step_err("validator emulator", e))?;
        kube.start_podman(store.cluster_runner(images, opts.gpus_per_host, at))
            .map_err(|e| step_err("podman runner", format!("{e:?}")))?;
        p.detail("pods: GraVal bootstrap and chute pods run as podman containers of the built images");
    } else {
        p.detail("pods: no images, so GraVal bootstrap servers and chutes are stood in for in-process");
    }
    let vurl = validator.api_url();
    shared.update(|r| {
        r.endpoints.insert("validator".into(), vurl.clone());
        r.listeners.push(vurl.trim_start_matches("http://").trim_end_matches('/').to_owned());
    })?;
    p.detail(&format!("{vurl} (hotkey {validator_ss58})"));
    p.end(shared)?;
    interrupted(down, pending)?;

    // 7. Postgres, Redis and the miner's runtime.
    p.begin("starting Postgres, Redis and the miner (API, Gepetto)");
    let pg = owned.postgres.insert(Postgres::start()?);
    let pg_url = pg.create_database("miner")?;
    let pg_rec = ProcessRecord::of("postgres", pg.pid());
    let pg_port = pg.port();
    let redis = owned.redis.insert(Redis::start()?);
    let redis_url = redis.url();
    let redis_rec = redis.pid().and_then(|pid| ProcessRecord::of("redis-server", pid));
    let redis_port = redis.port();
    shared.update(|r| {
        r.processes.extend(pg_rec);
        r.processes.extend(redis_rec);
        r.endpoints.insert("postgres".into(), format!("postgres://postgres@127.0.0.1:{pg_port}/miner"));
        r.endpoints.insert("redis".into(), redis_url.clone());
        r.listeners.push(format!("127.0.0.1:{pg_port}"));
        r.listeners.push(format!("127.0.0.1:{redis_port}"));
    })?;
    let tokio = owned.tokio.insert(
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(io("start the lab's async runtime"))?,
    );
    let mut graval_listeners = Vec::new();
    for (i, h) in lab.hosts().iter().enumerate().skip(1).filter(|_| !containers) {
        let addr = tokio.block_on(graval.start_stand_in(
            &h.addr().to_string(),
            i,
            opts.gpus_per_host,
            &miner_ss58,
            &validator_ss58,
        ))?;
        graval_listeners.push(addr);
    }
    let runtime = tokio.block_on(miner::start(miner::Setup {
        postgres_url: pg_url,
        redis_url: redis.url(),
        kubeconfig_yaml: kube.kubeconfig_yaml(),
        validator: &validator,
        graval: graval.clone(),
    }))?;
    let api_url = runtime.api_url.clone();
    let api_addr = runtime.api_addr.clone();
    shared.update(|r| {
        r.endpoints.insert("api".into(), api_url.clone());
        r.listeners.push(api_addr);
        r.listeners.extend(graval_listeners);
    })?;
    // Without containers the stand-in plays the chutes' handshake. A monitor records any
    // GPU pinned by two live chute Jobs at once, and the jobs whose chute ran to its end.
    let db = runtime.db.clone();
    let db_check = runtime.db.clone();
    owned.runtime = Some(runtime);
    {
        let (kube, validator, shared) = (kube.clone(), validator.clone(), shared.clone());
        let stand_in = (!containers).then(ChuteStandIn::default);
        let mut finished = FinishedJobs::default();
        tokio.spawn(async move {
            loop {
                if let Some(s) = &stand_in {
                    s.tick(&db, &kube, &validator).await;
                }
                let clashes = double_booked(&kube);
                let ran = finished.check(&kube);
                let _ = shared.update(|r| {
                    r.gpu_checks += 1;
                    for c in clashes {
                        if !r.double_booked.contains(&c) {
                            r.double_booked.push(c);
                        }
                    }
                    for j in ran {
                        if !r.ran_jobs.contains(&j) {
                            r.ran_jobs.push(j);
                        }
                    }
                });
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }
    p.detail(&format!("miner API: {api_url}"));
    p.end(shared)?;
    interrupted(down, pending)?;

    // 8. add-node for every GPU host.
    p.begin("adding the GPU hosts (minerctl add-node; GraVal proofs checked by the validator)");
    for h in &lab.hosts()[1..] {
        let log = dir.file(&format!("add-node-{}.log", h.name()));
        let added = run_minerctl(
            opts,
            dir,
            &format!("add-node-{}", h.name()),
            &[
                "add-node",
                h.name(),
                "-i",
                inv,
                "--known-hosts",
                kh,
                "--hotkey",
                hk,
                "--api",
                &api_url,
                "--images-lock",
                lp,
                "--log-file",
                path_str(&log)?,
            ],
        );
        if let Err(e) = added {
            // The validator's own verdicts say why a proof was refused.
            let verdicts: Vec<String> = validator
                .verification_tasks()
                .iter()
                .filter_map(|t| Some(format!("task {t}: {:?}", validator.verification_result(t)?)))
                .collect();
            return Err(step_err(&e.to_string(), format!("validator verdicts: {}", verdicts.join("; "))));
        }
        let servers = tokio.block_on(db_check.list_servers()).map_err(|e| step_err("add-node", e))?;
        let gpus =
            servers.iter().find(|s| s.server.name == h.name()).map(|s| s.gpus.clone()).unwrap_or_default();
        let verified = gpus.iter().filter(|g| g.verified).count();
        if verified != opts.gpus_per_host {
            return Err(step_err(
                "add-node",
                format!("{}: {verified} of {} GPU(s) verified after add-node", h.name(), opts.gpus_per_host),
            ));
        }
        p.detail(&format!("{}: {verified} GPU(s) verified", h.name()));
        let proofs: Vec<String> = validator
            .verification_tasks()
            .iter()
            .filter(|t| matches!(validator.verification_result(t), Some(Ok(()))))
            .cloned()
            .collect();
        shared.update(|r| r.proofs_verified = proofs)?;
        interrupted(down, pending)?;
    }
    p.end(shared)?;
    Ok(LabScenario::new(opts.seed, hosts::LAB_GPU_SHORT_REF))
}

fn path_str(p: &Path) -> Result<&str, LabError> {
    p.to_str().ok_or_else(|| step_err("lab paths", format!("{} is not UTF-8", p.display())))
}

fn write_secret(path: &Path, text: &str) -> Result<(), LabError> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io(format!("write {}", path.display())))?;
    f.write_all(text.as_bytes()).map_err(io(format!("write {}", path.display())))
}

/// Runs `minerctl ARGS` in the state directory; its output goes to `NAME.out` there. The
/// child dies with the supervisor (PDEATHSIG), so a crash leaves no run behind.
fn run_minerctl(opts: &Options, dir: &StateDir, name: &str, args: &[&str]) -> Result<(), LabError> {
    let out_path = dir.file(&format!("{name}.out"));
    let out = std::fs::File::create(&out_path).map_err(io(format!("create {}", out_path.display())))?;
    let err = out.try_clone().map_err(io(format!("dup {}", out_path.display())))?;
    let mut cmd = Command::new(&opts.minerctl);
    cmd.args(args).current_dir(dir.root()).stdin(Stdio::null()).stdout(out).stderr(err);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let status = cmd.status().map_err(io(format!("run {}", opts.minerctl.display())))?;
    if status.success() {
        return Ok(());
    }
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(15)..].join("\n");
    Err(step_err(
        &format!("minerctl {}", args.first().copied().unwrap_or_default()),
        format!("exit {status}; the end of {}:\n{tail}", out_path.display()),
    ))
}

/// GPUs pinned (NVIDIA_VISIBLE_DEVICES) by two chute Jobs that are not finished.
pub fn double_booked(kube: &kube_emulator::Emulator) -> Vec<String> {
    let jobs = kube.list("batch/v1", "Job", Some(miner::NAMESPACE)).unwrap_or_default();
    let mut owner: std::collections::BTreeMap<String, String> = Default::default();
    let mut clashes = Vec::new();
    for job in &jobs {
        let finished = job["status"]["conditions"].as_array().is_some_and(|cs| {
            cs.iter().any(|c| (c["type"] == "Complete" || c["type"] == "Failed") && c["status"] == "True")
        });
        if finished || !job["metadata"]["deletionTimestamp"].is_null() {
            continue;
        }
        let name = job["metadata"]["name"].as_str().unwrap_or_default().to_owned();
        for gpu in pinned(job) {
            if let Some(other) = owner.insert(gpu.clone(), name.clone()) {
                clashes.push(format!("GPU {gpu} pinned by Jobs {other} and {name}"));
            }
        }
    }
    clashes
}

/// The GPUs a chute Job pins.
pub fn pinned(job: &Value) -> Vec<String> {
    let containers = job["spec"]["template"]["spec"]["containers"].as_array().cloned().unwrap_or_default();
    containers
        .iter()
        .flat_map(|c| c["env"].as_array().cloned().unwrap_or_default())
        .filter(|e| e["name"] == "NVIDIA_VISIBLE_DEVICES")
        .filter_map(|e| e["value"].as_str().map(str::to_owned))
        .flat_map(|v| {
            v.split(',').map(|g| g.trim().trim_start_matches("GPU-").to_owned()).collect::<Vec<_>>()
        })
        .filter(|g| !g.is_empty())
        .collect()
}

/// Which chute Jobs ran a validator's job to its end (a job's chute exits 0 when done): the
/// job-controller's `Completed` Event outlives the Job Gepetto then deletes; the job id is
/// the Job's label, remembered while the Job lives (it lives at least as long as its chute).
#[derive(Default)]
pub struct FinishedJobs {
    job_ids: std::collections::BTreeMap<String, String>,
}

impl FinishedJobs {
    pub fn check(&mut self, kube: &kube_emulator::Emulator) -> Vec<String> {
        for j in kube.list("batch/v1", "Job", Some(miner::NAMESPACE)).unwrap_or_default() {
            if let (Some(name), Some(id)) =
                (j["metadata"]["name"].as_str(), j["metadata"]["labels"]["chutes/job-id"].as_str())
            {
                self.job_ids.insert(name.to_owned(), id.to_owned());
            }
        }
        let events = kube.list("v1", "Event", Some(miner::NAMESPACE)).unwrap_or_default();
        events
            .iter()
            .filter(|e| e["involvedObject"]["kind"] == "Job" && e["reason"] == "Completed")
            .filter_map(|e| self.job_ids.get(e["involvedObject"]["name"].as_str()?).cloned())
            .collect()
    }
}

/// Whether job `job_id`'s chute ran to its end.
fn job_done(shared: &Shared, job_id: &str) -> bool {
    shared.record.lock().unwrap_or_else(|p| p.into_inner()).ran_jobs.iter().any(|j| j == job_id)
}

/// GPUs the scenario needs: one per chute (three, and the bounty's) and one for the job.
pub const SCENARIO_GPUS: usize = 5;

fn lab_gpus(shared: &Shared) -> usize {
    shared.record.lock().unwrap_or_else(|p| p.into_inner()).hosts.iter().map(|h| h.gpus).sum()
}

/// Why the scenario stopped early.
enum Stop {
    Down(DownRequest),
    Failed(String),
}

/// After `ready`: the validator plays the lab's scenario and the supervisor waits for
/// Gepetto's reaction to each part (bounded: the record says what did not happen).
fn play_scenario(
    shared: &Shared,
    p: &mut Progress,
    owned: &Owned,
    scenario: &LabScenario,
    down: &mpsc::Receiver<DownRequest>,
) -> Result<(), Stop> {
    let (Some(tokio), Some(validator), Some(runtime)) = (&owned.tokio, &owned.validator, &owned.runtime)
    else {
        return Err(Stop::Failed("the lab is not complete".into()));
    };
    let db = runtime.db.clone();
    let gpus = lab_gpus(shared);
    if gpus < SCENARIO_GPUS {
        let why =
            format!("skipped: it needs {SCENARIO_GPUS} GPUs (four chutes and a job), the lab has {gpus}");
        p.line(&format!("scenario: {why}"));
        let _ = shared.update(|r| r.scenario = why);
        return Ok(());
    }
    let _ = shared.update(|r| r.scenario = "playing".into());
    let play = |steps: Vec<validator_emulator::Step>| {
        tokio.block_on(async {
            for s in &steps {
                validator.apply(s).await;
            }
        })
    };
    let wait = |what: &str, f: &dyn Fn() -> bool| -> Result<(), Stop> {
        let deadline = Instant::now() + Duration::from_secs(300);
        while !f() {
            if Instant::now() > deadline {
                return Err(Stop::Failed(format!("Gepetto did not {what} within 300 s")));
            }
            if let Ok(s) = down.try_recv() {
                return Err(Stop::Down(s));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Ok(())
    };
    let deployments = |chute: &str| -> Vec<miner_db::DeploymentView> {
        tokio
            .block_on(db.all_deployments())
            .unwrap_or_default()
            .into_iter()
            .filter(|d| d.deployment.chute_id == chute)
            .collect()
    };
    p.line("scenario: chutes created");
    play(scenario.creation());
    for c in &scenario.chutes {
        wait(&format!("deploy chute {}", c.name), &|| {
            deployments(&c.chute_id).iter().any(|d| d.deployment.job_id.is_none() && d.deployment.active)
        })?;
        p.line(&format!("scenario: chute {} deployed and active", c.name));
    }
    p.line("scenario: a chute with a bounty, and a job");
    play(scenario.bounty_and_job());
    let bounty = scenario.bounty_chute.clone();
    let miner_ss58 =
        miner::hotkey(miner::MINER_SEED, "lab miner").map_err(|e| Stop::Failed(e.to_string()))?;
    let miner_ss58 = miner_ss58.ss58().to_owned();
    // The validator pays a bounty to the first instance of the chute activated while it
    // stands: it is ours once the validator says so, not when we deploy.
    wait("claim the bounty (an active instance of the bounty chute)", &|| {
        validator
            .bounty_claims()
            .iter()
            .any(|c| c.chute_id == bounty.chute_id && c.miner_hotkey == miner_ss58)
    })?;
    p.line(&format!("scenario: bounty claimed: chute {} has our active instance", bounty.name));
    let job = scenario.job_id.clone();
    wait("claim the job", &|| {
        validator.launch_configs().iter().any(|l| l.job_id.as_deref() == Some(job.as_str()))
    })?;
    p.line("scenario: the job was claimed");
    // The job's chute ran to its end (its pod completed): Gepetto removes the deployment
    // and its Job, and the GPUs are free again.
    let job_deployments = || {
        tokio
            .block_on(db.all_deployments())
            .unwrap_or_default()
            .into_iter()
            .filter(|d| d.deployment.job_id.as_deref() == Some(job.as_str()))
            .count()
    };
    wait("run the job", &|| job_deployments() > 0 || job_done(shared, &job))?;
    wait("release the job's GPUs", &|| job_deployments() == 0 && job_done(shared, &job))?;
    p.line("scenario: the job ran and its GPUs were released");
    p.line("scenario: a chute update and a deletion");
    play(scenario.update_and_delete());
    let deleted = scenario.deleted_chute.clone();
    wait("remove the deleted chute", &|| {
        deployments(&deleted).is_empty() && tokio.block_on(db.chute(&deleted)).ok().flatten().is_none()
    })?;
    p.line("scenario: the deleted chute is gone");
    let updated = scenario.updated_chute.clone();
    wait("move the updated chute to v2", &|| {
        deployments(&updated).iter().any(|d| d.deployment.version == "v2" && d.deployment.active)
    })?;
    p.line("scenario: the updated chute runs v2");
    Ok(())
}
