//! `miner-simulator`: scores Gepetto's strategies before they touch paid GPUs.
//!
//! A deterministic discrete-event simulator ([`Simulator`]) drives the real
//! [`miner_gepetto::Strategy`] implementations through the same
//! [`miner_gepetto::FleetSnapshot`] / [`miner_gepetto::ValidatorView`] interface
//! Gepetto uses, over a trace ([`trace`], the `miner-trace` crate) that either a
//! seeded generator ([`generate`]) or a recording of a real miner (Gepetto with
//! `GEPETTO_RECORD_TRACE`) produced. The value model and every assumption are in
//! this crate's README.

pub mod generate;
pub mod report;
pub mod rng;
pub mod sim;

/// The trace format, shared with Gepetto's recorder.
pub use miner_trace as trace;

use miner_gepetto::strategy::{Heuristic, Multiplier, Strategy};

pub use generate::{GenParams, generate};
pub use report::{Comparison, StrategyResult};
pub use sim::Simulator;
pub use trace::{Record, Trace};

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error(transparent)]
    Format(#[from] miner_trace::TraceError),
    #[error("invalid trace: {0}")]
    Trace(String),
    #[error("no strategy named {0:?} (known: {known})", known = STRATEGIES.join(", "))]
    UnknownStrategy(String),
}

/// Strategies the simulator knows, the original first (tables compare to it).
pub const STRATEGIES: [&str; 2] = ["heuristic", "multiplier"];

/// The strategy Gepetto runs by default (`GEPETTO_STRATEGY` unset, runtime/config),
/// scored against the original heuristic in the acceptance test.
pub const DEFAULT_STRATEGY: &str = "multiplier";

/// A fresh instance of a strategy by name (`default` names [`DEFAULT_STRATEGY`]).
pub fn strategy(name: &str) -> Result<Box<dyn Strategy>, SimError> {
    match name {
        "heuristic" => Ok(Box::new(Heuristic)),
        "multiplier" | "default" => Ok(Box::new(Multiplier::default())),
        other => Err(SimError::UnknownStrategy(other.to_owned())),
    }
}

/// Runs every named strategy over the trace, each from a fresh instance.
pub fn compare(trace: &Trace, names: &[String]) -> Result<Comparison, SimError> {
    let mut results = Vec::new();
    for name in names {
        let s = strategy(name)?;
        results.push(Simulator::new(trace, s.as_ref())?.run()?);
    }
    Ok(Comparison {
        seed: trace.header.seed,
        source: trace.header.source.clone(),
        days: trace.header.duration_s as f64 / 86_400.0,
        servers: trace.servers.len(),
        gpus: trace.servers.iter().map(|s| s.gpus).sum(),
        chutes: trace.chutes.len(),
        results,
    })
}
