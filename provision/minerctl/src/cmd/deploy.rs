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

/// What the nodes' registry mirror says of the validators in values: an error when the
/// validator the mirror was provisioned for is missing or on another port (no chute image
/// could be pulled), a warning for each further validator (its chutes' images cannot be).
///
/// `minerctl provision` points containerd on every node at the registry proxy for
/// `<vars.validator>.localregistry.chutes.ai:<vars.registry_port>`; chute Jobs name their
/// image by the validator's hotkey and its `registryNodePort` from values. When the two
/// disagree, pulls fail on the nodes with a DNS error that names neither setting.
fn registry_mirror_check(
    inv: &provision_inventory::Inventory,
    inventory_path: &std::path::Path,
    values: &minerctl_manifests::Values,
) -> Result<Vec<String>, String> {
    let (hotkey, port) = (&inv.vars.validator, inv.vars.registry_port);
    let mirror = format!("{}:{port}", inv.registry_hostname());
    let supported = &values.validators.supported;
    let Some(i) = supported.iter().position(|v| v.hotkey.eq_ignore_ascii_case(hotkey)) else {
        return Err(format!(
            "the nodes' registry mirror ({mirror}, from vars.validator and vars.registry_port in {}) is for \
             validator {hotkey}, which values do not list in validators.supported: no chute image could be \
             pulled. Make vars.validator one of validators.supported[].hotkey and run `minerctl provision` again",
            inventory_path.display()
        ));
    };
    if supported[i].registry_node_port != port {
        return Err(format!(
            "validators.supported[{i}].registryNodePort is {} but the nodes' registry mirror ({mirror}) was \
             provisioned for port {port} (vars.registry_port in {}): chute images could not be pulled. Make \
             them agree (after changing the inventory, run `minerctl provision` again)",
            supported[i].registry_node_port,
            inventory_path.display()
        ));
    }
    Ok(supported
        .iter()
        .enumerate()
        .filter(|(j, _)| *j != i)
        .map(|(j, v)| {
            format!(
                "warning: validators.supported[{j}] ({}) has no registry mirror on the nodes (`minerctl \
                 provision` sets one up for vars.validator only): its chutes' images cannot be pulled",
                v.hotkey
            )
        })
        .collect())
}

/// The inventory, when there is one to compare values with. Without `--kubeconfig` it is
/// needed anyway (the kubeconfig comes from its primary), so an unreadable one is an
/// error; with it, the check is skipped and says so.
fn inventory_for_check(args: &DeployArgs) -> anyhow::Result<Option<provision_inventory::Inventory>> {
    if args.kube.kubeconfig.is_some() && !args.inventory.exists() {
        return Ok(None);
    }
    match crate::cmd::load_inventory(&args.inventory) {
        Ok(inv) => Ok(Some(inv)),
        Err(e) if args.kube.kubeconfig.is_some() => {
            eprintln!("warning: the registry mirror was not checked against the inventory: {e:#}");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

pub fn run(args: DeployArgs) -> anyhow::Result<ExitCode> {
    // Everything local is checked before the cluster is contacted.
    let values = args.values.load()?;
    let manifest = minerctl_manifests::render(&values)?;
    if let Some(inv) = inventory_for_check(&args)? {
        for warning in registry_mirror_check(&inv, &args.inventory, &values).map_err(anyhow::Error::msg)? {
            eprintln!("{warning}");
        }
    }
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
