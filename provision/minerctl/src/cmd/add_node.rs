//! `minerctl add-node <host>`: the whole procedure for a new GPU host in one command.
//!
//! 1. Checks everything local first (the host is a GPU worker of the inventory with
//!    `hourly_cost` and `gpu_short_ref`, the hotkey loads, the API URL is well-formed), then
//!    asks the API for its server list, which proves the URL and the signature work and that
//!    the host is not tracked already — all before any host changes.
//! 2. Provisions the host (every role) and, on the primary, the WireGuard peer list and the
//!    join/label phases; other hosts are only read.
//! 3. `POST /servers/` and prints the API's progress as it arrives, until the GPUs are
//!    verified (exit 0) or the API reports why not (exit 1; the API has undone its part).
//!
//! `--check` does step 1 and reports what step 2 would change on the new node and on the
//! primary (with diffs), then stops: nothing is changed, pushed or registered.
//!
//! Other workers of the inventory are only read (their WireGuard keys). One that cannot be
//! reached does not block the new node: the primary keeps that worker's peer as its current
//! wg0.conf has it, and the command names the worker.

use std::process::ExitCode;

use anyhow::{Context, bail};
use minerctl_nodes::{ServerArgs, phases};

use super::node_common::NodeArgs;

#[derive(clap::Args, Debug)]
pub struct AddNodeArgs {
    /// The inventory host to add (its name becomes the Kubernetes node name).
    pub host: String,
    #[command(flatten)]
    pub common: NodeArgs,
    /// Validator hotkey the GPUs are advertised to [default: the inventory's `validator`].
    #[arg(long)]
    pub validator: Option<String>,
    /// The lock file of `minerctl images build`: its images are imported into the new node
    /// before it is registered (the API's GraVal Job runs there). Missing: nothing is pushed.
    #[arg(long, value_name = "FILE", default_value = "images/images.lock.json")]
    pub images_lock: std::path::PathBuf,
    /// Show what would change on the new node and on the primary (with diffs) and change
    /// nothing: no host, image or API registration (the API is only asked for its list).
    #[arg(long)]
    pub check: bool,
}

pub fn run(args: AddNodeArgs) -> anyhow::Result<ExitCode> {
    let inv = crate::cmd::load_inventory(&args.common.target.inventory)?;
    let host = phases::check_worker(&inv, &args.host).map_err(anyhow::Error::msg)?;
    let missing: Vec<&str> = [
        (!host.gpu_enabled).then_some("gpu_enabled: true"),
        host.hourly_cost.is_none().then_some("hourly_cost"),
        host.gpu_short_ref.is_none().then_some("gpu_short_ref"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !missing.is_empty() {
        bail!(
            "{}: host `{}` needs {} to be added as a GPU node",
            inv.file.display(),
            host.name,
            missing.join(", ")
        );
    }
    let server = ServerArgs {
        name: host.name.clone(),
        validator: args.validator.clone().unwrap_or_else(|| inv.vars.validator.clone()),
        hourly_cost: host.hourly_cost.unwrap_or_default(),
        gpu_short_ref: host.gpu_short_ref.clone().unwrap_or_default(),
    };
    let api = args.common.api(&inv)?;
    let log = args.common.log("add-node")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let tracked = api.servers().await.context("checking the miner API before changing any host")?;
        if tracked.iter().any(|s| s.name == server.name) {
            bail!(
                "{} is already tracked by the miner API at {}; `minerctl remove-node {}` first to add it again",
                server.name,
                api.base(),
                server.name
            );
        }

        let check = if args.check { " (check mode: nothing is changed)" } else { "" };
        outln!("== provisioning {} (and the primary's mesh, join and GPU layer phases){check}", server.name);
        let limit = phases::add_node_limit(&inv, &server.name);
        let result =
            args.common.provision(&log, inv, phases::add_node(&server.name), limit, &[], args.check).await;
        if args.check {
            if !result.success() {
                bail!("the check found problems (see above); nothing was changed");
            }
            outln!(
                "--check: nothing was changed. A real run would then import the images of {} into {} and \
                 register it with the miner API at {}.",
                args.images_lock.display(),
                server.name,
                api.base()
            );
            return Ok(ExitCode::SUCCESS);
        }
        if !result.success() {
            bail!("provisioning failed (see above); {} was not registered with the miner API", server.name);
        }

        match minerctl_images::Lock::read_if_present(&args.images_lock)? {
            Some(lock) => {
                outln!("== importing images into {}", server.name);
                let inv = provision_inventory::load(&args.common.target.inventory)?;
                let hosts = [server.name.clone()];
                if super::images::push_hosts(&inv, &lock, &args.images_lock, &hosts, &args.common.ssh, false).await
                    > 0
                {
                    bail!("importing images failed (see above); {} was not registered with the miner API", server.name);
                }
            }
            None => outln!(
                "== no {}: images not pushed (run `minerctl images build`, or push them yourself)",
                args.images_lock.display()
            ),
        }

        outln!("== registering {} with the miner API at {}", server.name, api.base());
        let outcome = api
            .add_server(&server, |e| outln!("  {}", e.message))
            .await
            .with_context(|| format!("add-node {}", server.name))?;
        outln!("{} added: {}", server.name, outcome.completion);
        Ok(ExitCode::SUCCESS)
    })
}
