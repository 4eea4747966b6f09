//! `minerctl lab up|status|down` (feature `lab`): the whole miner on one machine. `up`
//! starts the supervisor (`lab supervise`, its own session, owning everything the lab
//! makes) and follows its progress; `status` and `down` talk to it over the control
//! socket in the state directory, and `down` cleans up from the record if it is gone.

use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use minerctl_lab::StateDir;
use minerctl_lab::state::ProcessRecord;
use minerctl_lab::supervisor::{self, ImagesPlan};

#[derive(Subcommand)]
pub enum LabCommand {
    /// Make the lab: hosts, provision, cluster, images, deploy, validator, add-node; then
    /// the validator plays a short scenario. Safe to run twice.
    Up(UpArgs),
    /// What the lab runs: its steps, hosts and endpoints.
    Status(StatusArgs),
    /// Stop the lab and remove everything it made (also after its supervisor crashed).
    Down(StateArgs),
    /// The supervisor itself (started by `lab up`).
    #[command(hide = true)]
    Supervise(SuperviseArgs),
}

#[derive(Args)]
pub struct StateArgs {
    /// Where the lab keeps its record, control socket, logs and working files.
    #[arg(long, value_name = "DIR", default_value = minerctl_lab::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub state: StateArgs,
    /// `text` or `json` (the supervisor's record).
    #[arg(long, default_value = "text")]
    pub output: String,
}

#[derive(Args, Clone)]
pub struct Shape {
    /// GPU hosts besides the CPU primary.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(1..=64))]
    pub hosts: u8,
    /// Simulated GPUs per GPU host. The validator's scenario needs 5 GPUs in all (four
    /// chutes and a job); with fewer it is skipped.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=8))]
    pub gpus_per_host: u8,
    /// Seed of the validator's scenario.
    #[arg(long, default_value_t = 13)]
    pub seed: u64,
}

#[derive(Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub state: StateArgs,
    #[command(flatten)]
    pub shape: Shape,
    /// Build the images from the chutes-miner, graval-bootstrap and chute-standin binaries in
    /// DIR (default: next to this minerctl, when all are there). GraVal bootstrap and chute
    /// pods then run as podman containers of them.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["images_lock", "no_images"])]
    pub images_from: Option<PathBuf>,
    /// Reuse images built before (`minerctl images build` writes the lock).
    #[arg(long, value_name = "FILE", conflicts_with = "no_images")]
    pub images_lock: Option<PathBuf>,
    /// Skip building and importing images: faster; GraVal bootstrap servers and chutes are
    /// then stood in for in the lab's own process instead of running as containers.
    #[arg(long)]
    pub no_images: bool,
}

#[derive(Args)]
pub struct SuperviseArgs {
    #[command(flatten)]
    pub state: StateArgs,
    #[command(flatten)]
    pub shape: Shape,
    #[arg(long)]
    pub images_from: Option<PathBuf>,
    #[arg(long)]
    pub images_lock: Option<PathBuf>,
    #[arg(long)]
    pub images_skipped: Option<String>,
}

pub fn run(c: LabCommand) -> anyhow::Result<ExitCode> {
    match c {
        LabCommand::Up(a) => up(a),
        LabCommand::Status(a) => status(a),
        LabCommand::Down(a) => down(&a),
        LabCommand::Supervise(a) => supervise(a),
    }
}

fn require_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the lab needs root (its hosts are namespaces with their own mounts and sshd): run it with sudo"
        );
    }
    Ok(())
}

fn images_plan(a: &UpArgs, exe: &Path) -> anyhow::Result<ImagesPlan> {
    if a.no_images {
        return Ok(ImagesPlan::Skip("--no-images".into()));
    }
    if let Some(lock) = &a.images_lock {
        if !lock.is_file() {
            bail!("--images-lock {}: no such file (minerctl images build writes it)", lock.display());
        }
        return Ok(ImagesPlan::Reuse { lock: std::path::absolute(lock)? });
    }
    let dir = match &a.images_from {
        Some(d) => std::path::absolute(d)?,
        None => exe.parent().map(Path::to_path_buf).unwrap_or_default(),
    };
    let missing: Vec<&str> = ["chutes-miner", "graval-bootstrap", "chute-standin"]
        .into_iter()
        .filter(|b| !dir.join(b).is_file())
        .collect();
    match (missing.is_empty(), &a.images_from) {
        (true, _) => Ok(ImagesPlan::Build { binary_dir: dir }),
        (false, Some(_)) => bail!("--images-from {}: no {} there", dir.display(), missing.join(" or ")),
        (false, None) => Ok(ImagesPlan::Skip(format!(
            "no {} next to {} (build them, or pass --images-from DIR or --images-lock FILE)",
            missing.join(" or "),
            exe.display()
        ))),
    }
}

fn up(a: UpArgs) -> anyhow::Result<ExitCode> {
    require_root()?;
    let started = Instant::now();
    let exe = std::env::current_exe().context("finding this minerctl binary")?;
    let dir = StateDir::new(std::path::absolute(&a.state.state_dir)?);
    if let Some(record) = dir.read()? {
        match &record.supervisor {
            Some(s) if s.alive() && record.phase != "failed" => {
                outln!("the lab at {} is already up (phase {}):", dir.root().display(), record.phase);
                if record.phase == "starting" {
                    outln!("following its progress");
                    return follow(&dir, s, started);
                }
                print_status(&dir, &record);
                return Ok(ExitCode::SUCCESS);
            }
            _ => {
                outln!(
                    "a lab at {} is not running (its supervisor is gone): cleaning it up first",
                    dir.root().display()
                );
                let report = minerctl_lab::down::down(&dir, &mut |l| outln!("  {l}"))?;
                if !report.leftovers.is_empty() {
                    bail!("could not clean up the old lab: {}", report.leftovers.join("; "));
                }
            }
        }
    } else if dir.exists() {
        minerctl_lab::down::down(&dir, &mut |l| outln!("  {l}"))?;
    }
    let plan = images_plan(&a, &exe)?;
    dir.create()?;
    let log = std::fs::File::create(dir.supervisor_log())
        .with_context(|| format!("creating {}", dir.supervisor_log().display()))?;
    let mut cmd = std::process::Command::new(&exe);
    cmd.args(["lab", "supervise", "--state-dir"])
        .arg(dir.root())
        .args(["--hosts", &a.shape.hosts.to_string(), "--gpus-per-host", &a.shape.gpus_per_host.to_string()])
        .args(["--seed", &a.shape.seed.to_string()]);
    match &plan {
        ImagesPlan::Build { binary_dir } => cmd.arg("--images-from").arg(binary_dir),
        ImagesPlan::Reuse { lock } => cmd.arg("--images-lock").arg(lock),
        ImagesPlan::Skip(why) => cmd.arg(format!("--images-skipped={why}")),
    };
    cmd.current_dir(dir.root())
        .env("TMPDIR", dir.tmp())
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // SAFETY: setsid is async-signal-safe: the supervisor leaves this terminal's session,
    // so it outlives `lab up` and a Ctrl-C here.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().context("starting the lab's supervisor")?;
    outln!("lab supervisor started (pid {}); state in {}", child.id(), dir.root().display());
    // The record names the supervisor once it runs; until then, this pid.
    let sup = loop {
        if let Some(s) = ProcessRecord::of("supervisor", child.id()) {
            break s;
        }
        if started.elapsed() > Duration::from_secs(10) {
            bail!("the supervisor exited at once; see {}", dir.supervisor_log().display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    follow(&dir, &sup, started)
}

/// Prints the progress file as it grows until the supervisor says `ready` or `failed`.
fn follow(dir: &StateDir, sup: &ProcessRecord, started: Instant) -> anyhow::Result<ExitCode> {
    let mut pos = 0u64;
    loop {
        let mut done = None;
        if let Ok(mut f) = std::fs::File::open(dir.progress()) {
            f.seek(SeekFrom::Start(pos))?;
            let mut reader = BufReader::new(f);
            let mut line = String::new();
            while reader.read_line(&mut line)? > 0 {
                if !line.ends_with('\n') {
                    break; // a line being written: read it whole next time
                }
                pos += line.len() as u64;
                outln!("{}", line.trim_end_matches('\n'));
                if line.starts_with(supervisor::READY) {
                    done = Some(true);
                } else if line.starts_with(supervisor::FAILED) {
                    done = Some(false);
                }
                line.clear();
            }
        }
        match done {
            Some(true) => {
                outln!("lab up took {:.1} s", started.elapsed().as_secs_f64());
                outln!(
                    "the validator now plays its scenario. The lab: minerctl lab status --state-dir {0}; \
                     take it down: minerctl lab down --state-dir {0}",
                    dir.root().display()
                );
                if let Some(watch) = dir.read()?.as_ref().and_then(|r| watch_command(dir, r)) {
                    outln!("watch the miner (servers, GPUs, deployments): {watch}");
                }
                return Ok(ExitCode::SUCCESS);
            }
            Some(false) => {
                outln!("the lab did not come up; details in {}", dir.supervisor_log().display());
                outln!("clean up with: minerctl lab down --state-dir {}", dir.root().display());
                return Ok(ExitCode::FAILURE);
            }
            None if !sup.alive() => {
                bail!(
                    "the lab's supervisor died while starting; see {} (clean up with minerctl lab down --state-dir {})",
                    dir.supervisor_log().display(),
                    dir.root().display()
                );
            }
            None => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// `minerctl status` against the lab's miner API, signed with the lab miner's hotkey.
fn watch_command(dir: &StateDir, r: &minerctl_lab::Record) -> Option<String> {
    let api = r.endpoints.get("api")?;
    Some(format!("minerctl status --api {api} --hotkey {} --watch", dir.miner_hotkey().display()))
}

fn print_status(dir: &StateDir, r: &minerctl_lab::Record) {
    outln!("phase: {}", r.phase);
    if let Some(e) = &r.error {
        outln!("error: {e}");
    }
    if let Some(s) = r.up_seconds {
        outln!("came up in {s:.1} s");
    }
    if !r.scenario.is_empty() {
        outln!("scenario: {}", r.scenario);
    }
    outln!("hosts:");
    for h in &r.hosts {
        outln!("  {:<8} {}:{}  {} GPU(s)", h.name, h.addr, h.ssh_port, h.gpus);
    }
    outln!("endpoints:");
    for (k, v) in &r.endpoints {
        outln!("  {k:<10} {v}");
    }
    if let Some(watch) = watch_command(dir, r) {
        outln!("watch the miner: {watch}");
    }
    for (step, why) in &r.skipped {
        outln!("skipped: {step}: {why}");
    }
    if r.gpu_checks > 0 {
        match r.double_booked.len() {
            0 => outln!("GPU bookings: checked {} times, never double-booked", r.gpu_checks),
            n => outln!("GPU bookings: {n} double-booking(s): {}", r.double_booked.join("; ")),
        }
    }
}

fn status(a: StatusArgs) -> anyhow::Result<ExitCode> {
    let dir = StateDir::new(&a.state.state_dir);
    let Some(record) = dir.read()? else {
        bail!("no lab at {} (start one with minerctl lab up)", dir.root().display());
    };
    let (alive, record) = match record.supervisor.clone().filter(ProcessRecord::alive) {
        None => (false, record),
        Some(sup) => {
            match minerctl_lab::control::request(&dir.socket(), "status", Some(Duration::from_secs(30))) {
                Ok(v) => (
                    true,
                    serde_json::from_value(v["record"].clone()).context("reading the supervisor's answer")?,
                ),
                // A killed supervisor closes its socket before it is reaped, so a status asked
                // just then connects and is hung up on: if it is gone soon after, it is simply
                // not running; the record says what it left.
                Err(_) if ProcessRecord::wait_gone(std::slice::from_ref(&sup), Duration::from_secs(10)) => {
                    (false, record)
                }
                Err(e) => return Err(e.into()),
            }
        }
    };
    if a.output == "json" {
        outln!("{}", serde_json::to_string_pretty(&serde_json::json!({"running": alive, "record": record}))?);
    } else {
        print_status(&dir, &record);
    }
    if !alive {
        eprintln!(
            "the lab's supervisor is not running; remove what is left with: minerctl lab down --state-dir {}",
            dir.root().display()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

fn down(a: &StateArgs) -> anyhow::Result<ExitCode> {
    require_root()?;
    let dir = StateDir::new(&a.state_dir);
    let report = minerctl_lab::down::down(&dir, &mut |l| outln!("{l}"))?;
    if !report.found {
        outln!("no lab at {}: nothing to do", dir.root().display());
        return Ok(ExitCode::SUCCESS);
    }
    for k in &report.killed {
        outln!("killed {k}");
    }
    if !report.leftovers.is_empty() {
        bail!("left behind: {}", report.leftovers.join("; "));
    }
    outln!("lab down: every process, address and file of the lab at {} is gone", dir.root().display());
    Ok(ExitCode::SUCCESS)
}

fn supervise(a: SuperviseArgs) -> anyhow::Result<ExitCode> {
    let images = match (a.images_from, a.images_lock, a.images_skipped) {
        (Some(binary_dir), _, _) => ImagesPlan::Build { binary_dir },
        (_, Some(lock), _) => ImagesPlan::Reuse { lock },
        (_, _, why) => ImagesPlan::Skip(why.unwrap_or_else(|| "not asked for".into())),
    };
    let opts = supervisor::Options {
        state_dir: a.state.state_dir,
        gpu_hosts: a.shape.hosts.into(),
        gpus_per_host: a.shape.gpus_per_host.into(),
        minerctl: std::env::current_exe()?,
        images,
        seed: a.shape.seed,
    };
    supervisor::run(opts)?;
    Ok(ExitCode::SUCCESS)
}
