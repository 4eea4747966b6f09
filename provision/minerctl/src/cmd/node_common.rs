//! What `add-node` and `remove-node` share: the SSH/provision flags, running a set of
//! provision phases with the engine's live report, and the miner API client (which
//! `status` uses too: [`ApiArgs`]).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use chutes_protocol::Hotkey;
use provision_engine::{Log, OutputFormat, Phase, Redactor, RunOptions, RunResult};
use provision_inventory::Inventory;

/// The API Service's NodePort in the default values (`api.nodePort`).
pub const DEFAULT_API_PORT: u16 = 32000;

/// Where the miner API is and the hotkey that signs for it.
#[derive(clap::Args, Debug)]
pub struct ApiArgs {
    /// Inventory file (see inventory.example.yml).
    #[arg(short, long, default_value = "inventory.yml")]
    pub inventory: PathBuf,
    /// The miner's hotkey file (Bittensor JSON or hex seed): signs the API requests.
    #[arg(long, value_name = "FILE")]
    pub hotkey: PathBuf,
    /// Miner API root URL [default: http://<primary external_ip>:32000].
    #[arg(long, value_name = "URL")]
    pub api: Option<String>,
}

impl ApiArgs {
    /// The API client, signing with the miner's hotkey. Without `--api` the URL comes from
    /// the inventory's primary: `inv` when the caller has it loaded, else the `-i` file.
    pub fn api(&self, inv: Option<&Inventory>) -> anyhow::Result<minerctl_nodes::MinerApi> {
        let key = Hotkey::load(&self.hotkey)?;
        let url = match (&self.api, inv) {
            (Some(url), _) => url.clone(),
            (None, Some(inv)) => default_api_url(inv),
            (None, None) => default_api_url(&super::load_inventory(&self.inventory)?),
        };
        Ok(minerctl_nodes::MinerApi::new(&url, Arc::new(key))?)
    }
}

fn default_api_url(inv: &Inventory) -> String {
    let ip = inv.primary().external_ip;
    format!("http://{}", std::net::SocketAddr::new(ip, DEFAULT_API_PORT))
}

#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    #[command(flatten)]
    pub target: ApiArgs,
    #[command(flatten)]
    pub ssh: super::ssh::SshArgs,
    /// Log file of the provision part [default: ~/.cache/minerctl/<command>-<time>.log].
    #[arg(long)]
    pub log_file: Option<PathBuf>,
    /// Also print provision steps that were already in the desired state.
    #[arg(short, long)]
    pub verbose: bool,
}

impl NodeArgs {
    pub fn ssh_options(&self) -> provision_ssh::Options {
        self.ssh.options()
    }

    /// The API client, signing with the miner's hotkey.
    pub fn api(&self, inv: &Inventory) -> anyhow::Result<minerctl_nodes::MinerApi> {
        self.target.api(Some(inv))
    }

    pub fn log(&self, command: &str) -> anyhow::Result<Log> {
        let path = self.log_file.clone().unwrap_or_else(|| {
            let base = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .unwrap_or_else(std::env::temp_dir);
            let secs = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            base.join("minerctl").join(format!("{command}-{secs}-{}.log", std::process::id()))
        });
        Log::open(&path, Redactor::default())
            .with_context(|| format!("cannot open log file {}", path.display()))
    }

    /// Runs `phases` on `limit` (others observed), printing progress and the recap; with
    /// `check`, only reports what would change. Hosts outside `limit` that could not be read
    /// are named.
    pub async fn provision(
        &self,
        log: &Log,
        inv: Inventory,
        phases: Vec<Phase>,
        limit: Vec<String>,
        tags: &[&str],
        check: bool,
    ) -> RunResult {
        let opts = RunOptions {
            forks: 10,
            check,
            fail_fast: false,
            limit: Some(limit),
            tags: tags.iter().map(|t| t.to_string()).collect(),
            ssh: self.ssh_options(),
            local: false,
            connect_attempts: 2,
            profile: false,
        };
        let result = run_phases(log, inv, phases, opts, self.verbose, Box::new(super::Progress)).await;
        for (host, why) in &result.not_observed {
            outln!("could not reach {host} (only read, to learn its WireGuard key and cluster state): {why}");
        }
        result
    }
}

/// Runs `phases` with the live report and the recap written to `out`.
async fn run_phases(
    log: &Log,
    inv: Inventory,
    phases: Vec<Phase>,
    opts: RunOptions,
    verbose: bool,
    out: Box<dyn std::io::Write + Send>,
) -> RunResult {
    let check = opts.check;
    let reporter = super::reporter(log, OutputFormat::Human, verbose, out);
    let result = provision_engine::run(Arc::new(inv), phases, opts, reporter.clone(), log.clone()).await;
    reporter.recap(&result.recap, result.elapsed, log.path.as_deref(), check);
    result
}

#[cfg(test)]
mod tests {
    use provision_engine::{Action, PhasePlan, PlanCtx, Step};
    use test_support::Captured;

    use super::*;

    /// The worker's "join cluster" step runs the join command the primary minted (a secret
    /// capture): its summary on the terminal must not show the token.
    #[test]
    fn add_node_progress_does_not_print_the_join_token() {
        const TOKEN: &str = "0123456789abcdef0123456789abcdef/feedc0ffee42";
        let inv = provision_inventory::parse_str(
            "hosts:\n  cpu-0:\n    address: 127.0.0.1\n    external_ip: 10.0.0.1\n    wireguard_ip: 192.168.0.1\n    is_primary: true\n",
            std::path::Path::new("inv.yml"),
        )
        .unwrap();
        let phases = vec![
            Phase::new(
                "join token",
                "join",
                Arc::new(|_: &PlanCtx| PhasePlan {
                    steps: vec![Step::new(
                        "join token",
                        Action::Capture {
                            var: "join_command".into(),
                            run: format!("echo microk8s join 192.168.0.1:25000/{TOKEN}"),
                            secret: true,
                            read_only: true,
                            pick: None,
                        },
                    )],
                    handlers: vec![],
                }),
            ),
            Phase::new(
                "join",
                "join",
                Arc::new(|c: &PlanCtx| {
                    let join =
                        c.vars.get("cpu-0").and_then(|v| v.get("join_command")).cloned().unwrap_or_default();
                    PhasePlan {
                        steps: vec![Step::new(
                            "join cluster",
                            Action::Command {
                                run: format!(": {join} --worker --skip-verify"),
                                creates: None,
                                unless: None,
                            },
                        )],
                        handlers: vec![],
                    }
                }),
            ),
        ];
        let opts = RunOptions {
            forks: 1,
            check: false,
            fail_fast: false,
            limit: None,
            tags: vec![],
            ssh: provision_ssh::Options::new(),
            local: true,
            connect_attempts: 1,
            profile: false,
        };
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(&dir.path().join("add-node.log"), Redactor::default()).unwrap();
        let out = Captured::default();
        let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        let result = rt.block_on(run_phases(&log, inv, phases, opts, false, Box::new(out.clone())));
        assert!(result.success(), "{:?}", result.recap);
        let printed = out.text();
        assert!(printed.contains("join / join cluster: changed (run: : <redacted> --worker"), "{printed}");
        assert!(!printed.contains("feedc0ffee42"), "the join token reached the terminal: {printed}");
        let logged = std::fs::read_to_string(dir.path().join("add-node.log")).unwrap();
        assert!(!logged.contains("feedc0ffee42"), "{logged}");
    }
}
