//! `minerctl`: the operator's command line. Each subcommand lives in `cmd/<name>.rs`
//! and owns its flags; this file only parses and dispatches.

/// `println!` for the operator's output, through [`cmd::out`]: once stdout's reader has
/// gone (`minerctl lab status | head`) further lines are dropped instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => { $crate::cmd::out(format_args!("{}\n", format_args!($($arg)*))) };
}

mod cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "minerctl", version, about = "Provision, deploy and operate a chutes miner")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Inspect a hotkey and sign management requests.
    #[command(subcommand)]
    Keys(cmd::keys::KeysCommand),
    /// Bring hosts to the miner's desired state over SSH (replaces the Ansible playbooks).
    Provision(cmd::provision::ProvisionArgs),
    /// Print the miner's Kubernetes manifests for the given values (like `helm template`).
    Render(cmd::render::RenderArgs),
    /// Apply the manifests to the cluster (server-side apply, prune, rollout wait).
    Deploy(cmd::deploy::DeployArgs),
    /// Provision a GPU host, join and label it, and register it with the miner API.
    AddNode(cmd::add_node::AddNodeArgs),
    /// Remove a GPU node: API, drain and delete, the primary's WireGuard peers.
    RemoveNode(cmd::remove_node::RemoveNodeArgs),
    /// The miner's servers, GPUs (verified or not) and deployments, from its API (--watch to follow).
    Status(cmd::status::StatusArgs),
    /// Build the miner's container images and import them into every node.
    #[command(subcommand)]
    Images(cmd::images::ImagesCommand),
    /// Score Gepetto's strategies on a seeded or recorded trace (value, utilisation, preemptions).
    Simulate(cmd::simulate::SimulateArgs),
    /// The whole miner on one machine: lab hosts, cluster, validator, API and Gepetto.
    #[cfg(feature = "lab")]
    #[command(subcommand)]
    Lab(cmd::lab::LabCommand),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keys(c) => cmd::keys::run(c),
        Command::Provision(a) => cmd::provision::run(a),
        Command::Render(a) => cmd::render::run(a),
        Command::Deploy(a) => cmd::deploy::run(a),
        Command::AddNode(a) => cmd::add_node::run(a),
        Command::RemoveNode(a) => cmd::remove_node::run(a),
        Command::Status(a) => cmd::status::run(a),
        Command::Images(c) => cmd::images::run(c),
        Command::Simulate(a) => cmd::simulate::run(a),
        #[cfg(feature = "lab")]
        Command::Lab(c) => cmd::lab::run(c),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            // The whole context chain on one line, each cause once.
            eprintln!("error: {}", cmd::error_line(&err));
            std::process::ExitCode::FAILURE
        }
    }
}
