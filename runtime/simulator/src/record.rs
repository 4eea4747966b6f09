//! Recording a real miner: the writer a Gepetto calls to produce a trace this
//! simulator replays (README: "Recording from Gepetto"). It only formats and
//! appends lines; what to record and when is the caller's.

use std::collections::HashSet;
use std::io::Write;

use miner_validator::rest::{ActiveInstance, RemoteMetrics};

use crate::SimError;
use crate::trace::{FORMAT, Header, Record, ValidatorModel};

/// Appends trace records as JSON lines. The header goes first, once.
pub struct Recorder<W: Write> {
    out: W,
    /// Recording start, Unix seconds; event times are seconds after it.
    start_unix: i64,
}

impl<W: Write> Recorder<W> {
    /// Starts a recording: writes the header (`source: recorded`, seed 0).
    pub fn start(mut out: W, start_unix: i64, duration_s: u64, miner: &str) -> Result<Self, SimError> {
        let header = Header {
            format: FORMAT,
            seed: 0,
            source: "recorded".into(),
            start_unix,
            duration_s,
            miner: miner.to_owned(),
            validator: ValidatorModel::default(),
        };
        write_line(&mut out, &Record::Header(header))?;
        Ok(Recorder { out, start_unix })
    }

    /// Seconds since the recording started for a Unix time (0 before it).
    pub fn t(&self, unix: i64) -> u64 {
        u64::try_from(unix - self.start_unix).unwrap_or(0)
    }

    /// Appends one record and flushes (a crash loses at most the line being written).
    pub fn record(&mut self, record: &Record) -> Result<(), SimError> {
        write_line(&mut self.out, record)?;
        self.out.flush().map_err(SimError::Io)
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

fn write_line(out: &mut impl Write, r: &Record) -> Result<(), SimError> {
    serde_json::to_writer(&mut *out, r).map_err(SimError::Json)?;
    out.write_all(b"\n").map_err(SimError::Io)
}

/// A chute's demand in instances' worth of compute from its `/miner/metrics/`
/// item (compute seconds in the last hour over 3600), counting rate-limited
/// invocations at the mean compute time as demand that was not served.
pub fn demand_from_metrics(m: &RemoteMetrics) -> f64 {
    let per_invocation =
        if m.total_invocations > 0.0 { m.total_compute_time / m.total_invocations } else { 0.0 };
    (m.total_compute_time + m.rate_limit_count * per_invocation) / 3600.0
}

/// Other miners' active instances of a chute and their mean multiplier, from
/// `/miner/active_instances/`, given this miner's instance ids.
pub fn others_from_active(list: &[ActiveInstance], ours: &HashSet<String>) -> (u32, f64) {
    let theirs: Vec<&ActiveInstance> = list.iter().filter(|i| !ours.contains(&i.instance_id)).collect();
    let known: Vec<f64> = theirs.iter().filter_map(|i| i.compute_multiplier).collect();
    let mean = if known.is_empty() { 0.0 } else { known.iter().sum::<f64>() / known.len() as f64 };
    (u32::try_from(theirs.len()).unwrap_or(u32::MAX), mean)
}
