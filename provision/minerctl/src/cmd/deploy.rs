//! `minerctl deploy`: render the manifests and apply them to the cluster with server-side
//! apply (field manager `minerctl`), create the hotkey and registry secrets, prune what a
//! previous deploy applied and is no longer rendered, and wait for the rollouts.
//! See provision/ARCHITECTURE-deploy.md.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use chutes_protocol::Hotkey;
use minerctl_deploy::{Credentials, MinerCredentials, Options, RegistryCredentials};

use super::render::ValuesArgs;

/// How to reach the cluster (shared with `remove-node`).
#[derive(clap::Args, Debug)]
pub struct KubeArgs {
    /// Kubeconfig file. Without it, the kubeconfig is read from the inventory's primary
    /// host over SSH (`microk8s config`).
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context [default: its current context].
    #[arg(long)]
    pub context: Option<String>,
    /// Use this API server URL instead of the one in the kubeconfig (e.g. the primary's
    /// public address when `microk8s config` prints an internal one).
    #[arg(long, value_name = "URL")]
    pub api_server: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct DeployArgs {
    #[command(flatten)]
    pub values: ValuesArgs,
    #[command(flatten)]
    pub kube: KubeArgs,
    /// Inventory, for reaching the primary over SSH.
    #[arg(short, long, default_value = "inventory.yml")]
    pub inventory: PathBuf,
    /// How to reach the primary over SSH.
    #[command(flatten)]
    pub ssh: super::ssh::SshArgs,
    /// Hotkey file (Bittensor JSON or hex seed): creates or updates the
    /// `miner-credentials` secret. Needed on the first deploy.
    #[arg(long, value_name = "FILE")]
    pub hotkey: Option<PathBuf>,
    /// Private registry for the `regcred` pull secret (with --registry-user and
    /// --registry-password-file).
    #[arg(long, requires_all = ["registry_user", "registry_password_file"])]
    pub registry_server: Option<String>,
    #[arg(long, requires = "registry_server")]
    pub registry_user: Option<String>,
    /// File holding the registry password (never given on the command line).
    #[arg(long, value_name = "FILE", requires = "registry_server")]
    pub registry_password_file: Option<PathBuf>,
    /// Show a per-object diff against the live cluster and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Do not wait for the workloads to become ready.
    #[arg(long)]
    pub no_wait: bool,
    /// Seconds to wait for the rollouts.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Take back fields that someone changed outside minerctl.
    #[arg(long)]
    pub force_conflicts: bool,
    /// Keep objects a previous deploy applied even if they are no longer rendered.
    #[arg(long)]
    pub no_prune: bool,
}

fn credentials(args: &DeployArgs) -> anyhow::Result<Credentials> {
    let miner = match &args.hotkey {
        Some(path) => {
            let key = Hotkey::load(path)?;
            let seed = key.expose_seed_hex();
            Some(MinerCredentials::new(key.ss58(), &seed))
        }
        None => None,
    };
    let registry = match (&args.registry_server, &args.registry_user, &args.registry_password_file) {
        (Some(server), Some(user), Some(file)) => {
            let password = zeroize::Zeroizing::new(
                std::fs::read_to_string(file)
                    .with_context(|| format!("cannot read --registry-password-file {}", file.display()))?,
            );
            let password = password.trim_end_matches(['\n', '\r']);
            if password.is_empty() {
                bail!("--registry-password-file {} is empty", file.display());
            }
            Some(RegistryCredentials::new(server, user, password))
        }
        _ => None,
    };
    Ok(Credentials { miner, registry })
}

/// `microk8s config` on the inventory's primary host.
async fn kubeconfig_over_ssh(args: &DeployArgs) -> anyhow::Result<String> {
    let inv = crate::cmd::load_inventory(&args.inventory)?;
    kubeconfig_from_primary(&inv, &args.ssh.options()).await
}

/// Runs `microk8s config` on the primary (read-only; also used by `remove-node`).
pub(crate) async fn kubeconfig_from_primary(
    inv: &provision_inventory::Inventory,
    options: &provision_ssh::Options,
) -> anyhow::Result<String> {
    let primary = inv.primary();
    let target = provision_engine::target_for(inv, primary);
    let session = provision_ssh::Session::connect(&target, options).await?;
    let out = session.exec("microk8s config", None, Duration::from_secs(60)).await?;
    session.close().await;
    if !out.success() {
        bail!("`microk8s config` failed on {}: {}", primary.name, out.stderr_str().trim());
    }
    Ok(out.stdout_str())
}

pub fn run(args: DeployArgs) -> anyhow::Result<ExitCode> {
    // Everything local is checked before the cluster is contacted.
    let values = args.values.load()?;
    let manifest = minerctl_manifests::render(&values)?;
    let creds = credentials(&args)?;
    let opts = Options {
        dry_run: args.dry_run,
        wait: !args.no_wait,
        timeout: Duration::from_secs(args.timeout),
        poll: Duration::from_secs(2),
        force_conflicts: args.force_conflicts,
        prune: !args.no_prune,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let yaml = match &args.kube.kubeconfig {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --kubeconfig {}", path.display()))?,
            None => kubeconfig_over_ssh(&args)
                .await
                .context("reading the kubeconfig from the primary (or pass --kubeconfig)")?,
        };
        let client = minerctl_deploy::client_from_kubeconfig(
            &yaml,
            args.kube.context.as_deref(),
            args.kube.api_server.as_deref(),
        )
        .await?;
        let mut out = super::Progress;
        minerctl_deploy::deploy(&client, &manifest, &creds, &opts, &mut out).await?;
        out.flush()?;
        Ok(ExitCode::SUCCESS)
    })
}
