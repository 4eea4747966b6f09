//! `minerctl provision`: bring hosts from the inventory to the state the miner needs
//! (WireGuard mesh, base system, NVIDIA stack, microk8s cluster). Replaces the Ansible
//! playbooks; see provision/ARCHITECTURE-provision.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use provision_engine::{Log, OutputFormat, Redactor, RunOptions};

#[derive(clap::Args, Debug)]
pub struct ProvisionArgs {
    /// Inventory file (see inventory.example.yml); `minerctl provision FILE` works too.
    #[arg(short, long, default_value = "inventory.yml")]
    pub inventory: PathBuf,
    /// The inventory file, given without -i.
    #[arg(value_name = "INVENTORY", conflicts_with = "inventory")]
    pub inventory_file: Option<PathBuf>,
    /// Report what would change (with diffs) and change nothing.
    #[arg(long)]
    pub check: bool,
    /// Hosts worked on at the same time.
    #[arg(long, default_value_t = 10)]
    pub forks: usize,
    /// Only change these hosts or groups (comma-separated); other hosts are only read.
    #[arg(long)]
    pub limit: Option<String>,
    /// Only run these roles (comma-separated): wireguard, base, nvidia, microk8s, primary, join, gpu.
    #[arg(long, value_delimiter = ',')]
    pub tags: Vec<String>,
    /// Stop every host as soon as one fails.
    #[arg(long)]
    pub fail_fast: bool,
    #[command(flatten)]
    pub ssh: super::ssh::SshArgs,
    /// Output format: human (progress + recap) or json (one event per line).
    #[arg(long, value_enum, default_value_t = Format::Human)]
    pub output: Format,
    /// Log file [default: ~/.cache/minerctl/provision-<time>.log].
    #[arg(long)]
    pub log_file: Option<PathBuf>,
    /// Also print steps that were already in the desired state.
    #[arg(short, long)]
    pub verbose: bool,
    /// Measure the CPU that each read costs on the hosts (facts, state reads, every probe)
    /// and print it per step kind and per probe at the end (on stderr).
    #[arg(long)]
    pub profile: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Human,
    Json,
}

fn default_log_path() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    let secs =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    base.join("minerctl").join(format!("provision-{secs}-{}.log", std::process::id()))
}

pub fn run(args: ProvisionArgs) -> anyhow::Result<ExitCode> {
    // Everything about the inventory is checked before any connection.
    let inventory = args.inventory_file.as_ref().unwrap_or(&args.inventory);
    let inv = crate::cmd::load_inventory(inventory)?;
    for t in &args.tags {
        if !provision_roles::TAGS.contains(&t.as_str()) {
            bail!("--tags: unknown role `{t}`; roles are {}", provision_roles::TAGS.join(", "));
        }
    }
    let limit = match &args.limit {
        Some(spec) => Some(inv.limit(spec).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let ssh = args.ssh.options();
    let opts = RunOptions {
        forks: args.forks.max(1),
        check: args.check,
        fail_fast: args.fail_fast,
        limit,
        tags: args.tags.clone(),
        ssh,
        local: false,
        connect_attempts: 2,
        profile: args.profile,
    };
    let log_path = args.log_file.clone().unwrap_or_else(default_log_path);
    let log = Log::open(&log_path, Redactor::default())
        .with_context(|| format!("cannot open log file {}", log_path.display()))?;
    let format = if args.output == Format::Json { OutputFormat::Json } else { OutputFormat::Human };
    let mut reporter = super::reporter(&log, format, args.verbose, Box::new(super::Progress));
    if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
        let names: Vec<String> = inv.hosts.iter().map(|h| h.name.clone()).collect();
        reporter = reporter.with_live_board(&names);
    }
    let inv_hosts = inv.hosts.len();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let result = rt.block_on(provision_engine::run(
        Arc::new(inv),
        provision_roles::phases(),
        opts,
        reporter.clone(),
        log.clone(),
    ));
    reporter.recap(&result.recap, result.elapsed, log.path.as_deref(), args.check);
    if args.profile {
        eprint!("{}", provision_engine::report::render_profile(&result.profile, inv_hosts));
    }
    Ok(if result.success() { ExitCode::SUCCESS } else { ExitCode::from(2) })
}
