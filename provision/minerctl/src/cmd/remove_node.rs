//! `minerctl remove-node <host>`: take a GPU node out of the miner and the cluster.
//!
//! 1. Asks the API which jobs run on the node and refuses while any does, unless
//!    `--force` (this run has changed nothing at that point; an earlier run may have got
//!    past step 2, and the API lists the jobs until Gepetto has undeployed them).
//! 2. `DELETE /servers/<host>`: the API records the deletion; Gepetto undeploys and tells
//!    the validators.
//! 3. Cordons the node and evicts its pods (on a NotReady node, pods already being deleted
//!    are not waited for: no kubelet confirms them; see `minerctl_nodes::drain`).
//! 4. On the host (when reachable): `microk8s leave` and the mesh interface down, so its
//!    kubelet does not register the node again.
//! 5. Deletes the Node.
//! 6. Rewrites the primary's WireGuard peer list without the host.
//!
//! The inventory file is not edited: the operator removes the host from it (the command
//! says so), or the next `minerctl provision` adds it back.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use minerctl_nodes::{DrainOptions, phases};
use serde_json::Value;

use super::node_common::NodeArgs;

#[derive(clap::Args, Debug)]
pub struct RemoveNodeArgs {
    /// The inventory host to remove.
    pub host: String,
    #[command(flatten)]
    pub common: NodeArgs,
    /// Remove it even while jobs run on it (they are lost).
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub kube: super::deploy::KubeArgs,
    /// Seconds to wait for the node's pods to be evicted.
    #[arg(long, default_value_t = 300)]
    pub drain_timeout: u64,
}

fn describe(job: &Value) -> String {
    let field = |k: &str| job.get(k).and_then(Value::as_str).map(|v| format!("{k} {v}"));
    let parts: Vec<String> =
        ["job_id", "chute_id", "deployment_id"].iter().filter_map(|k| field(k)).collect();
    if parts.is_empty() { job.to_string() } else { parts.join(", ") }
}

pub fn run(args: RemoveNodeArgs) -> anyhow::Result<ExitCode> {
    let inv = crate::cmd::load_inventory(&args.common.target.inventory)?;
    let host = phases::check_worker(&inv, &args.host).map_err(anyhow::Error::msg)?.clone();
    let api = args.common.api(&inv)?;
    let log = args.common.log("remove-node")?;
    let kubeconfig = match &args.kube.kubeconfig {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read --kubeconfig {}", path.display()))?,
        ),
        None => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(async {
        let name = host.name.as_str();
        let jobs = api.delete_preflight(name).await.context("asking the miner API what runs on the node")?;
        match &jobs {
            Some(jobs) if !jobs.is_empty() && !args.force => {
                let list: Vec<String> = jobs.iter().map(|j| format!("  - {}", describe(j))).collect();
                // "This run": an earlier remove-node may have sent the DELETE already (and
                // stopped at the drain or later); the API lists the jobs until Gepetto has
                // undeployed them, so a rerun lands here too.
                bail!(
                    "{name} runs {} job(s); this run changed nothing. Wait for them to finish, or pass --force to remove it anyway:\n{}\n\
                     If an earlier remove-node already asked the miner API to delete {name}, the API lists these jobs until \
                     Gepetto has undeployed them: pass --force to finish removing it.",
                    jobs.len(),
                    list.join("\n")
                );
            }
            Some(jobs) if !jobs.is_empty() => outln!("{name}: --force: removing it with {} job(s) running", jobs.len()),
            Some(_) => {}
            None => outln!("{name}: not tracked by the miner API at {}", api.base()),
        }
        if jobs.is_some() {
            let detail = api.delete_server(name).await?;
            outln!("{name}: {detail}");
        }

        let yaml = match kubeconfig {
            Some(y) => y,
            None => super::deploy::kubeconfig_from_primary(&inv, &args.common.ssh_options())
                .await
                .context("reading the kubeconfig from the primary (or pass --kubeconfig)")?,
        };
        let client =
            minerctl_deploy::client_from_kubeconfig(&yaml, args.kube.context.as_deref(), args.kube.api_server.as_deref()).await?;
        let opts = DrainOptions { timeout: Duration::from_secs(args.drain_timeout), ..DrainOptions::default() };
        let drained = minerctl_nodes::drain(&client, name, &opts, &mut super::Progress).await;
        if jobs.is_some() {
            drained.with_context(|| {
                format!(
                    "the miner API was told to delete {name}, but its node was not drained, left or deleted; \
                     rerun remove-node (with --force while the API still lists jobs on it)"
                )
            })?;
        } else {
            drained?;
        }

        outln!("== {name}: leaving the cluster");
        let left = args.common.provision(&log, inv.clone(), phases::leave(name), vec![name.to_string()], &[], false).await;
        if !left.success() {
            // A dead host is the usual reason to remove one: go on, its Node is deleted below.
            outln!("{name}: could not make it leave the cluster (see above); removing its Node anyway");
        }
        minerctl_nodes::delete_node(&client, name, &mut super::Progress).await?;

        outln!("== removing {name} from the primary's WireGuard peers");
        let rest = phases::without(&inv, name);
        let primary = rest.primary().name.clone();
        let mesh = args.common.provision(&log, rest, phases::mesh(), vec![primary], &["wireguard"], false).await;
        if !mesh.success() {
            bail!("{name} is out of the cluster, but the primary's WireGuard peers were not updated (see above); rerun remove-node");
        }
        outln!(
            "{name} removed. Delete its entry from {}, or the next `minerctl provision` adds it back.",
            args.common.target.inventory.display()
        );
        Ok(ExitCode::SUCCESS)
    })
}
