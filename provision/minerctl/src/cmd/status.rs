//! `minerctl status`: the miner's servers, GPUs and deployments, from its API
//! (`GET /servers/`, signed with the miner's hotkey), as tables or `--output json`;
//! `--watch` redraws every `--interval` seconds until Ctrl-C (or `--rounds` rounds).
//!
//! The tables are `minerctl_nodes::status::render`, a pure function of the answer and
//! the time; this file only fetches, prints and loops.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use minerctl_nodes::status::{Server, render};
use minerctl_nodes::{MinerApi, NodesError};

use super::node_common::ApiArgs;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Output {
    /// Tables: servers, GPUs, deployments.
    Text,
    /// The typed servers (with their GPUs and deployments) as JSON; with --watch, one
    /// line per round.
    Json,
}

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub target: ApiArgs,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Redraw every --interval seconds until Ctrl-C.
    #[arg(short, long)]
    pub watch: bool,
    /// Seconds between rounds of --watch.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub interval: u64,
    /// With --watch: stop after N rounds.
    #[arg(long, requires = "watch", value_parser = clap::value_parser!(u64).range(1..))]
    pub rounds: Option<u64>,
}

pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let api = args.target.api(None)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    if !args.watch {
        let servers = fetch(&rt, &api)?;
        let out = match args.output {
            Output::Json => serde_json::to_string_pretty(&servers)? + "\n",
            Output::Text => render(&servers, chrono::Utc::now()),
        };
        super::write_result(&out)?;
        return Ok(ExitCode::SUCCESS);
    }
    let clear = args.output == Output::Text && std::io::stdout().is_terminal();
    let mut round = 0u64;
    loop {
        round += 1;
        let now = chrono::Utc::now();
        // The API being away for a while (a rollout, a restart) is what --watch is
        // for: say so and keep going. A refused key or a bad answer stays so: stop.
        let fetched = match fetch(&rt, &api) {
            Err(e) if !is_transient(&e) => return Err(e),
            r => r,
        };
        let mut out = String::new();
        if clear {
            out.push_str("\x1b[H\x1b[2J");
        } else if round > 1 && args.output == Output::Text {
            out.push('\n');
        }
        match (&fetched, args.output) {
            (Ok(servers), Output::Json) => out.push_str(&(serde_json::to_string(servers)? + "\n")),
            (Ok(servers), Output::Text) => {
                out.push_str(&header(&api, args.interval, now));
                out.push_str(&render(servers, now));
            }
            // In the redrawn screen (stderr would be wiped by the next clearing).
            (Err(e), Output::Text) => {
                out.push_str(&header(&api, args.interval, now));
                out.push_str(&format!("error: {}\n", super::error_line(e)));
            }
            (Err(e), Output::Json) => eprintln!("error: {}", super::error_line(e)),
        }
        super::write_result(&out)?;
        if super::stdout_gone() {
            return Ok(ExitCode::SUCCESS); // `status --watch | head`: nobody reads any more
        }
        if args.rounds.is_some_and(|n| round >= n) {
            return Ok(if fetched.is_ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE });
        }
        std::thread::sleep(Duration::from_secs(args.interval));
    }
}

fn fetch(rt: &tokio::runtime::Runtime, api: &MinerApi) -> anyhow::Result<Vec<Server>> {
    rt.block_on(api.servers()).context("reading the miner's servers")
}

fn is_transient(e: &anyhow::Error) -> bool {
    matches!(e.downcast_ref::<NodesError>(), Some(NodesError::Transport { .. }))
}

fn header(api: &MinerApi, interval: u64, now: chrono::DateTime<chrono::Utc>) -> String {
    format!("{} every {interval}s, {} (Ctrl-C to stop)\n\n", api.base(), now.format("%Y-%m-%d %H:%M:%S UTC"))
}
