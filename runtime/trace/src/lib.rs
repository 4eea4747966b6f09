//! `miner-trace`: the recording format of a miner's week, in a crate of its own
//! because two sides need it and one depends on the other: Gepetto records a real
//! miner's fleet, chutes and validator events ([`Recorder`]), and the simulator
//! (which depends on Gepetto's strategies) replays them ([`Trace::read`]). The
//! format is documented in `runtime/simulator/README.md` ("Trace format").

mod format;
mod recorder;

pub use format::{Chute, FORMAT, Header, Record, Scoring, Server, Trace, ValidatorModel};
pub use recorder::{Recorder, others_from_active};

#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("reading or writing a trace: {0}")]
    Io(#[source] std::io::Error),
    #[error("trace file {path}: {source}")]
    File {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("encoding a trace record: {0}")]
    Json(#[source] serde_json::Error),
    #[error("invalid trace: {0}")]
    Invalid(String),
}
