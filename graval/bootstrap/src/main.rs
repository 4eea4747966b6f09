//! graval-bootstrap: serve the GraVal bootstrap endpoints for this node's GPUs.
//!
//! Configuration comes from flags or, as the original k8s Job set them, from the
//! environment: `MINER_HOTKEY_SS58` (the miner's address, required) and
//! `VALIDATOR_WHITELIST` (comma-separated validator addresses; empty refuses all).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, ValueEnum};
use graval::{CpuEngine, Engine, Node};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Backend {
    Cuda,
    Cpu,
}

#[derive(Debug, Parser)]
#[command(
    name = "graval-bootstrap",
    about = "GraVal bootstrap server (/ping /devices /prove /info /remote_token)"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0")]
    host: String,
    /// Port to listen on (0 picks a free one; the address is printed).
    #[arg(long, default_value_t = 8000)]
    port: u16,
    /// The miner's hotkey SS58 address; requests must name it.
    #[arg(long = "hotkey", env = "MINER_HOTKEY_SS58")]
    hotkey: String,
    /// Comma-separated SS58 addresses of validators allowed to call. Empty refuses every validator call.
    #[arg(long = "validator-whitelist", env = "VALIDATOR_WHITELIST", default_value = "")]
    validator_whitelist: String,
    /// Compute backend: every CUDA GPU, or the host CPU (testing).
    #[arg(long, value_enum, default_value_t = default_backend())]
    backend: Backend,
    /// Memory budget of the CPU backend, MiB (per device).
    #[arg(long, default_value_t = 1024)]
    cpu_memory_mib: u64,
    /// Devices the CPU backend presents (each with its own uuid), e.g. to stand in for a
    /// multi-GPU node in the lab.
    #[arg(long, default_value_t = 1)]
    cpu_devices: usize,
    #[arg(long, help = matrix_size_help())]
    matrix_size: Option<usize>,
}

/// Built from `graval::schedule`'s constants, so it states the rule the code uses.
fn matrix_size_help() -> String {
    format!(
        "Matrix side length; validator and miner must agree. Default: by device memory ({})",
        graval::schedule::auto_matrix_size_rule()
    )
}

fn default_backend() -> Backend {
    if cfg!(feature = "cuda") { Backend::Cuda } else { Backend::Cpu }
}

fn whitelist(text: &str) -> Vec<String> {
    text.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let args = Args::parse();
    let node = match args.backend {
        Backend::Cuda => Node::cuda(args.matrix_size).context("opening the CUDA devices")?,
        Backend::Cpu => {
            let engines = CpuEngine::host_devices(args.cpu_memory_mib << 20, args.cpu_devices);
            Node::new(engines.into_iter().map(|e| Box::new(e) as Box<dyn Engine>).collect(), args.matrix_size)
        }
    };
    if node.devices().is_empty() {
        bail!("no devices found for the {:?} backend", args.backend);
    }
    let whitelist = whitelist(&args.validator_whitelist);
    if whitelist.is_empty() {
        tracing::warn!("VALIDATOR_WHITELIST is empty: every validator request will be refused");
    }
    let state = graval_bootstrap::AppState::new(node, &args.hotkey, &whitelist)
        .context("MINER_HOTKEY_SS58 / VALIDATOR_WHITELIST must be SS58 addresses")?;
    let addr: SocketAddr = format!("{}:{}", args.host, args.port).parse().context("--host/--port")?;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    // Tests and operators read the bound address (with --port 0) from this line.
    println!("listening on {}", listener.local_addr()?);
    axum::serve(listener, graval_bootstrap::router(Arc::new(state)))
        .with_graceful_shutdown(shutdown())
        .await
        .context("serving")?;
    Ok(())
}

/// Resolves on SIGTERM (the Job being deleted) or Ctrl-C; in-flight requests finish.
async fn shutdown() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
    tracing::info!("shutting down");
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Args;

    /// The help states the rule `graval::schedule::auto_matrix_size` implements: the
    /// thresholds formatted from its constants, and the function agreeing at them.
    #[test]
    fn matrix_size_help_states_the_rule_the_code_uses() {
        use graval::schedule::{
            DEFAULT_MATRIX_SIZE, LARGE_MATRIX_MIN_MEMORY, SMALL_MATRIX_SIZE, auto_matrix_size,
        };
        let cmd = Args::command();
        let help = cmd
            .get_arguments()
            .find(|a| a.get_id() == "matrix_size")
            .and_then(|a| a.get_help())
            .map(ToString::to_string)
            .unwrap_or_default();
        let rule = format!(
            "{DEFAULT_MATRIX_SIZE} from {} GB, else {SMALL_MATRIX_SIZE}",
            LARGE_MATRIX_MIN_MEMORY / 1_000_000_000
        );
        assert!(help.contains(&rule), "{help}");
        assert!(help.contains("8192 from 16 GB, else 4096"), "{help}");
        assert_eq!(auto_matrix_size(LARGE_MATRIX_MIN_MEMORY), DEFAULT_MATRIX_SIZE);
        assert_eq!(auto_matrix_size(LARGE_MATRIX_MIN_MEMORY - 1), SMALL_MATRIX_SIZE);
    }
}
