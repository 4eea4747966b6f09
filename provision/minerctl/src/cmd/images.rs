//! `minerctl images build` / `push`: OCI archives of this workspace's binaries, and
//! getting them into every node's containerd over SSH, or into the registry the values
//! name (`images.registry`).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use minerctl_images::push::{Outcome, images_for, push_host};
use minerctl_images::registry::{self, Credentials, Pushed, RegistryRef};
use minerctl_images::{BuildInput, LOCK_FILE, Lock};
use provision_inventory::Inventory;

#[derive(clap::Subcommand, Debug)]
pub enum ImagesCommand {
    /// Build the chutes-miner and graval-bootstrap images (and the CUDA variant) from built binaries.
    Build(BuildArgs),
    /// Import the built images into every node's containerd over SSH (skipping digests a node
    /// holds), or push them to the registry of values `images.registry`.
    Push(PushArgs),
}

#[derive(clap::Args, Debug)]
pub struct PushArgs {
    /// Inventory file (see inventory.example.yml).
    #[arg(short, long, default_value = "inventory.yml")]
    pub inventory: PathBuf,
    /// Values (`-f`, `--set`): `images.registry` chooses a registry push; and the lock file
    /// `images build` wrote (`--images-lock`, the archives are next to it).
    #[command(flatten)]
    pub values: super::render::ValuesArgs,
    /// Only these hosts (comma-separated inventory names); pushes over SSH only.
    #[arg(long, value_delimiter = ',')]
    pub limit: Vec<String>,
    /// Only ask what each node (or the registry) holds and say what would be sent; change nothing.
    #[arg(long)]
    pub check: bool,
    #[command(flatten)]
    pub ssh: super::ssh::SshArgs,
    /// Registry user (with --registry-password-file), when images.registry asks for credentials.
    #[arg(long, requires = "registry_password_file")]
    pub registry_user: Option<String>,
    /// File holding the registry password or token (never given on the command line).
    #[arg(long, value_name = "FILE", requires = "registry_user")]
    pub registry_password_file: Option<PathBuf>,
    /// PEM file of CA certificates to trust for the registry, besides the system's.
    #[arg(long, value_name = "FILE")]
    pub registry_ca: Option<PathBuf>,
}

#[derive(clap::Args, Debug)]
pub struct BuildArgs {
    /// Directory holding the `chutes-miner` and `graval-bootstrap` binaries
    /// (`cargo build --release -p chutes-miner -p graval-bootstrap`).
    #[arg(long, value_name = "DIR", default_value = "target/release")]
    pub binary_dir: PathBuf,
    /// `graval-bootstrap` built with `--features cuda` (build it with `--target-dir target/cuda`,
    /// so it does not replace the CPU one); with --cuda-wheels, builds graval-bootstrap-cuda.
    #[arg(long, value_name = "FILE", requires = "cuda_wheels")]
    pub cuda_binary: Option<PathBuf>,
    /// Directory of the cuBLAS and NVRTC wheels, downloaded once with
    /// `pip download --no-deps --only-binary=:all: --dest DIR nvidia-cublas nvidia-cuda-nvrtc`
    /// (CUDA 13, as graval's cudarc `cuda-13000` feature); the build itself needs no network.
    #[arg(long, value_name = "DIR", requires = "cuda_binary")]
    pub cuda_wheels: Option<PathBuf>,
    /// CA certificates copied into every image.
    #[arg(long, value_name = "FILE", default_value = "/etc/ssl/certs/ca-certificates.crt")]
    pub ca_bundle: PathBuf,
    /// Where the archives and images.lock.json are written.
    #[arg(long, value_name = "DIR", default_value = "images")]
    pub out: PathBuf,
    /// Also build the lab-only images (`chute-standin`, from `chute-standin` in --binary-dir),
    /// which `minerctl lab` runs in chute pods. A real miner never needs them.
    #[arg(long)]
    pub lab: bool,
}

pub fn run(command: ImagesCommand) -> anyhow::Result<ExitCode> {
    match command {
        ImagesCommand::Build(args) => build(args),
        ImagesCommand::Push(args) => push(args),
    }
}

fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn build(args: BuildArgs) -> anyhow::Result<ExitCode> {
    let input = BuildInput {
        binary_dir: args.binary_dir,
        cuda_binary: args.cuda_binary,
        cuda_wheels: args.cuda_wheels,
        ca_bundle: args.ca_bundle,
        out_dir: args.out.clone(),
        lab: args.lab,
    };
    let reports = minerctl_images::build_all(&input)?;
    for r in &reports {
        outln!(
            "{:<22} {}  {} (unpacked {})  {}",
            r.name,
            r.locked.reference,
            megabytes(r.locked.size),
            megabytes(r.unpacked_size),
            args.out.join(&r.locked.archive).display()
        );
    }
    if input.cuda_binary.is_none() {
        outln!(
            "graval-bootstrap-cuda not built (give --cuda-binary and --cuda-wheels); render keeps its placeholder"
        );
    }
    outln!("wrote {}", args.out.join(LOCK_FILE).display());
    Ok(ExitCode::SUCCESS)
}

fn push(args: PushArgs) -> anyhow::Result<ExitCode> {
    let values = args.values.load_without_lock()?;
    let images_lock = &args.values.images_lock;
    let lock = Lock::read(images_lock).context("run `minerctl images build` first")?;
    if let Some(registry) = super::render::ValuesArgs::registry(&values)? {
        if !args.limit.is_empty() {
            bail!(
                "--limit picks nodes for a push over SSH; images.registry is {registry}, so the images go there"
            );
        }
        return push_registry(&args, &lock, registry);
    }
    if args.registry_user.is_some() || args.registry_ca.is_some() {
        bail!("--registry-user/--registry-ca need a registry: set images.registry (-f values or --set)");
    }
    let inv = provision_inventory::load(&args.inventory)?;
    for name in &args.limit {
        if !inv.hosts.iter().any(|h| &h.name == name) {
            bail!("--limit {name}: no such host in {}", inv.file.display());
        }
    }
    let hosts: Vec<String> = inv
        .hosts
        .iter()
        .filter(|h| args.limit.is_empty() || args.limit.contains(&h.name))
        .map(|h| h.name.clone())
        .collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let failed = rt.block_on(push_hosts(&inv, &lock, images_lock, &hosts, &args.ssh, args.check));
    Ok(if failed == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Every image of the lock to the registry, one line each.
fn push_registry(args: &PushArgs, lock: &Lock, registry: RegistryRef) -> anyhow::Result<ExitCode> {
    let credentials = match (&args.registry_user, &args.registry_password_file) {
        (Some(user), Some(file)) => Some(Credentials::from_file(user, file)?),
        _ => None,
    };
    let name = registry.to_string();
    let mut client = registry::Client::new(registry, credentials, args.registry_ca.as_deref())?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        client.check().await?;
        for (image, locked) in &lock.images {
            let started = std::time::Instant::now();
            let pushed = client
                .push(&args.values.images_lock, image, locked, args.check)
                .await
                .with_context(|| format!("pushing {image}"))?;
            let what = match pushed {
                Pushed::Present => "unchanged (digest present)".to_string(),
                Pushed::WouldPush => "would push (--check)".to_string(),
                Pushed::Uploaded { blobs, bytes, skipped } => format!(
                    "pushed: {blobs} blob(s) uploaded ({}), {skipped} already there, in {:.1} s",
                    megabytes(bytes),
                    started.elapsed().as_secs_f64()
                ),
            };
            outln!("{name}: {image}: {what}");
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// Pushes to each host in turn, printing one line per image; returns how many hosts failed.
/// `add-node` calls this for the node it adds.
pub async fn push_hosts(
    inv: &Inventory,
    lock: &Lock,
    lock_path: &std::path::Path,
    hosts: &[String],
    ssh: &super::ssh::SshArgs,
    check: bool,
) -> usize {
    let options = ssh.options();
    let mut failed = 0;
    for host in inv.hosts.iter().filter(|h| hosts.contains(&h.name)) {
        let target = provision_engine::target_for(inv, host);
        let result = async {
            let mut session = provision_ssh::Session::connect(&target, &options).await?;
            session.lock("minerctl images push").await?;
            let images = images_for(lock, host.gpu_enabled);
            let outcomes = push_host(&session, lock_path, &images, check).await;
            session.close().await;
            outcomes
        }
        .await;
        match result {
            Ok(outcomes) => {
                for (image, outcome) in outcomes {
                    let what = match outcome {
                        Outcome::Present => "unchanged (digest present)",
                        Outcome::Imported => "imported",
                        Outcome::WouldImport => "would import (--check)",
                    };
                    outln!("{}: {image}: {what}", host.name);
                }
            }
            Err(e) => {
                failed += 1;
                eprintln!("{}: push failed: {e}", host.name);
            }
        }
    }
    failed
}
