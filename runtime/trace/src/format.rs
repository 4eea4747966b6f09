//! The trace: what the validator and the fleet do over a simulated period, as one
//! JSON object per line (the recording format). The first line is the [`Header`];
//! then every [`Server`](Record::Server) and [`Chute`](Record::Chute); then the
//! timed events in time order. The simulator's generator writes it, a real Gepetto
//! records it ([`crate::Recorder`]), and the simulator replays it against any
//! strategy.

use std::io::{BufRead, Write};

use serde::{Deserialize, Serialize};

use crate::TraceError;

/// Format version written in every header; a reader refuses other versions.
pub const FORMAT: u32 = 1;

/// How the simulated validator answers, besides what the events say. Everything a
/// replay needs that is not an event; a recorder that does not know a knob leaves
/// its default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ValidatorModel {
    /// Chance that a launch-config request is refused with 423 for no visible reason
    /// (a race with other miners, a validator hiccup).
    pub refusal_probability: f64,
    /// The validator lets a chute scale while its instances would run above this
    /// utilisation: `needed = ceil(load / target_utilisation)` instances.
    pub target_utilisation: f64,
    /// Below this utilisation the validator removes one instance of the chute per
    /// `scale_down_interval_s` (its own autoscaler; instance_deleted to the miner).
    pub min_utilisation: f64,
    pub scale_down_interval_s: u64,
    /// Instance verification after the pod starts (the validator's checks), seconds,
    /// drawn uniformly per launch.
    pub verification_s: [u64; 2],
    /// Chance this miner wins a job's launch-config race (first miner to ask wins).
    pub job_win_probability: f64,
    /// A bounty nobody claims within this many seconds is claimed by another miner.
    pub bounty_window_s: u64,
    /// `effective_compute_multiplier` bonus per hour of bounty age, and its cap.
    pub bounty_bonus_per_hour: f64,
    pub bounty_bonus_cap: f64,
    /// Unmet demand raises the multiplier by up to this factor (urgency).
    pub urgency_bonus: f64,
    /// Private (non-preemptible) chutes pay this factor more.
    pub private_bonus: f64,
    /// `[hold_s, full_s]`: an instance's multiplier drifts toward what its chute pays
    /// now, as chutes-api's `refresh_instance_compute_multipliers` does on each run of
    /// its autoscaler (kept for `hold_s` after activation; then each run blends the
    /// multiplier the instance has with the target, weight `t²`, `t` going 0 to 1 up to
    /// `full_s`; then equal). The target leaves out the bounty bonus. `None` (the
    /// default): the instance keeps the multiplier it activated with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub multiplier_drift_s: Option<[u64; 2]>,
    /// What an instance is paid for (left out of the header when `busy_time`).
    #[serde(skip_serializing_if = "Scoring::is_busy_time")]
    pub scoring: Scoring,
    /// Gepetto's autoscaler period (15 s in the original and successor).
    pub autoscale_s: u64,
    /// Gepetto's `default_disk_gb`, what strategies are asked to fit.
    pub default_disk_gb: f64,
}

impl Default for ValidatorModel {
    fn default() -> Self {
        ValidatorModel {
            refusal_probability: 0.05,
            target_utilisation: 0.8,
            min_utilisation: 0.3,
            scale_down_interval_s: 600,
            verification_s: [60, 300],
            job_win_probability: 0.5,
            bounty_window_s: 1800,
            bounty_bonus_per_hour: 0.5,
            bounty_bonus_cap: 2.0,
            urgency_bonus: 1.0,
            private_bonus: 1.5,
            multiplier_drift_s: None,
            scoring: Scoring::BusyTime,
            autoscale_s: 15,
            default_disk_gb: 10.0,
        }
    }
}

/// What the validator pays an instance for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scoring {
    /// The reference's model: compute served, `utilisation × multiplier` per second.
    #[default]
    BusyTime,
    /// chutes-api's later scoring: active time × multiplier whether busy or not, the
    /// start-up at 0.3x of it, nothing for an instance the miner (or a failure) ends
    /// within an hour of activation.
    Lifetime,
}

impl Scoring {
    fn is_busy_time(&self) -> bool {
        *self == Scoring::BusyTime
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub format: u32,
    /// The generator's seed, or 0 for a recording.
    pub seed: u64,
    /// Where the trace came from: `generated` or `recorded`.
    pub source: String,
    /// Simulated start, Unix seconds (times in events are seconds after it).
    pub start_unix: i64,
    /// Length of the period. 0 in a recording still being written: the period then
    /// ends at its last event ([`Trace::read`] fills it in).
    pub duration_s: u64,
    /// This miner's hotkey (jobs may exclude it).
    pub miner: String,
    #[serde(default)]
    pub validator: ValidatorModel,
}

/// A GPU server of the miner's fleet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Server {
    pub server_id: String,
    pub gpu_model: String,
    pub gpus: usize,
    /// Per GPU per hour, as the miner's `servers.hourly_cost`.
    pub hourly_cost: f64,
    pub disk_gb: f64,
    /// Image pull and model download speed of this node, Gbit/s.
    pub bandwidth_gbps: f64,
    /// When it joined the fleet, seconds after the start (0, and left out: from the
    /// start). A replay neither uses nor pays for it before then.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub added_s: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A chute as the validator lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chute {
    pub chute_id: String,
    pub supported_gpus: Vec<String>,
    pub gpu_count: usize,
    pub image_gb: f64,
    pub model_gb: f64,
    /// The validator's `compute_multiplier` of an instance (GPU class × count).
    pub compute_multiplier: f64,
    /// Mean compute seconds per invocation.
    pub invocation_s: f64,
    /// Private chutes are not preemptible.
    pub preemptible: bool,
    /// Jobs only (no cords): never autoscaled.
    pub job_only: bool,
    /// When it appears (`chute_created`), seconds after the start.
    pub created_s: u64,
}

impl Chute {
    /// Ephemeral disk a deployment holds: image, model and 10 GB of scratch.
    pub fn disk_gb(&self) -> f64 {
        self.image_gb + self.model_gb + 10.0
    }
}

/// One line of a trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    Header(Header),
    Server(Server),
    Chute(Chute),
    /// The chute's demand from now on, in instances' worth of compute (1.0 keeps one
    /// instance busy all the time).
    Demand {
        t: u64,
        chute_id: String,
        load: f64,
    },
    /// Other miners' active instances of the chute from now on.
    Others {
        t: u64,
        chute_id: String,
        instances: u32,
        compute_multiplier: f64,
    },
    /// A bounty on a chute that has no instances (`bounty_change`), compute units.
    Bounty {
        t: u64,
        chute_id: String,
        bounty: f64,
    },
    /// A job offer (`job_created`).
    Job {
        t: u64,
        job_id: String,
        chute_id: String,
        duration_s: u64,
        compute_multiplier: f64,
        disk_gb: f64,
        /// This miner is in the job's `exclude` list.
        excluded: bool,
    },
    /// The validator marks the chute mid-update (`update_in_progress`) until `until`.
    Updating {
        t: u64,
        chute_id: String,
        until: u64,
    },
    /// The server goes down (its instances die) for `down_s` seconds.
    NodeFailure {
        t: u64,
        server_id: String,
        down_s: u64,
    },
    /// The server leaves the fleet for good (`server_deleted`): its instances die and
    /// it costs nothing from then.
    ServerRemoved {
        t: u64,
        server_id: String,
    },
}

impl Record {
    /// The event time; setup records (header, servers, chutes) are at 0.
    pub fn t(&self) -> u64 {
        match self {
            Record::Header(_) | Record::Server(_) | Record::Chute(_) => 0,
            Record::Demand { t, .. }
            | Record::Others { t, .. }
            | Record::Bounty { t, .. }
            | Record::Job { t, .. }
            | Record::Updating { t, .. }
            | Record::NodeFailure { t, .. }
            | Record::ServerRemoved { t, .. } => *t,
        }
    }
}

/// A whole trace in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Trace {
    pub header: Header,
    pub servers: Vec<Server>,
    pub chutes: Vec<Chute>,
    /// Timed events, in time order (stable for equal times).
    pub events: Vec<Record>,
}

impl Trace {
    /// Writes the trace as JSON lines.
    pub fn write(&self, out: &mut impl Write) -> Result<(), TraceError> {
        write_line(out, &Record::Header(self.header.clone()))?;
        for s in &self.servers {
            write_line(out, &Record::Server(s.clone()))?;
        }
        for c in &self.chutes {
            write_line(out, &Record::Chute(c.clone()))?;
        }
        for e in &self.events {
            write_line(out, e)?;
        }
        Ok(())
    }

    /// Reads JSON lines: a header first, then records in any order (events are
    /// sorted by time, stably, so a recorder may append as things happen). A last line
    /// without its newline that does not parse is a write cut short (a crash, a full
    /// disk) and is left out: the recording up to it is whole.
    pub fn read(mut input: impl BufRead) -> Result<Trace, TraceError> {
        let mut header = None;
        let mut servers = Vec::new();
        let mut chutes = Vec::new();
        let mut events = Vec::new();
        let mut buf = Vec::new();
        let mut n = 0;
        loop {
            buf.clear();
            if input.read_until(b'\n', &mut buf).map_err(TraceError::Io)? == 0 {
                break;
            }
            n += 1;
            let torn = !buf.ends_with(b"\n");
            let parsed = std::str::from_utf8(&buf).map_err(|e| e.to_string()).and_then(|line| {
                if line.trim().is_empty() {
                    Ok(None)
                } else {
                    serde_json::from_str(line).map(Some).map_err(|e| e.to_string())
                }
            });
            let record: Record = match parsed {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(_) if torn => break,
                Err(e) => return Err(TraceError::Invalid(format!("line {n}: {e}"))),
            };
            match record {
                Record::Header(h) => {
                    if header.is_some() {
                        return Err(TraceError::Invalid(format!("line {n}: a second header")));
                    }
                    if h.format != FORMAT {
                        return Err(TraceError::Invalid(format!(
                            "format {} (this simulator reads format {FORMAT})",
                            h.format
                        )));
                    }
                    header = Some(h);
                }
                _ if header.is_none() => {
                    return Err(TraceError::Invalid(format!("line {n}: records before the header")));
                }
                Record::Server(s) => servers.push(s),
                Record::Chute(c) => chutes.push(c),
                other => events.push(other),
            }
        }
        let mut header = header.ok_or_else(|| TraceError::Invalid("no header line".into()))?;
        events.sort_by_key(Record::t);
        if header.duration_s == 0 {
            header.duration_s = events.last().map_or(0, Record::t);
        }
        Ok(Trace { header, servers, chutes, events })
    }
}

/// One record as one line, handed to the writer in a single write: an unbuffered file
/// gets one system call per line rather than one per JSON token, and a crash tears at
/// most that line.
pub(crate) fn write_line(out: &mut impl Write, r: &Record) -> Result<(), TraceError> {
    let mut line = serde_json::to_vec(r).map_err(TraceError::Json)?;
    line.push(b'\n');
    out.write_all(&line).map_err(TraceError::Io)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(validator: ValidatorModel) -> Header {
        Header {
            format: FORMAT,
            seed: 1,
            source: "generated".into(),
            start_unix: 0,
            duration_s: 60,
            miner: "5Miner".into(),
            validator,
        }
    }

    #[test]
    fn a_last_line_cut_short_is_left_out_and_a_broken_whole_line_is_an_error() {
        let mut text = Vec::new();
        write_line(&mut text, &Record::Header(header(ValidatorModel::default()))).unwrap();
        let demand = |t| Record::Demand { t, chute_id: "c".into(), load: 1.0 };
        write_line(&mut text, &demand(5)).unwrap();
        let mut torn = text.clone();
        torn.extend_from_slice(b"{\"kind\":\"demand\",\"t\":9,\"chu");
        let trace = Trace::read(&torn[..]).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(trace.events, [demand(5)], "the recording up to the torn line");
        // A whole line that does not parse is not a torn write: refused, with its number.
        let mut broken = text.clone();
        broken.extend_from_slice(b"{\"kind\":\"demand\",\"t\":9,\"chu\n");
        let err = Trace::read(&broken[..]).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("line 3"), "{err}");
        // A last line without its newline that parses is kept.
        let mut unterminated = text.clone();
        write_line(&mut unterminated, &demand(7)).unwrap();
        unterminated.pop();
        assert_eq!(Trace::read(&unterminated[..]).unwrap().events, [demand(5), demand(7)]);
    }

    #[test]
    fn the_current_validator_knobs_are_optional_in_the_header() {
        // Traces written before the knobs existed, and the default model, say nothing
        // about them: instances keep the multiplier they activated with and are paid
        // for busy time.
        let mut out = Vec::new();
        write_line(&mut out, &Record::Header(header(ValidatorModel::default()))).unwrap();
        let line = String::from_utf8(out.clone()).unwrap();
        assert!(!line.contains("multiplier_drift_s") && !line.contains("scoring"), "{line}");
        let read = Trace::read(out.as_slice()).unwrap();
        assert_eq!(read.header.validator.multiplier_drift_s, None);
        assert_eq!(read.header.validator.scoring, Scoring::BusyTime);
        // the current validator's model writes them and reads them back
        let current = ValidatorModel {
            multiplier_drift_s: Some([7200, 28800]),
            scoring: Scoring::Lifetime,
            ..ValidatorModel::default()
        };
        let mut out = Vec::new();
        write_line(&mut out, &Record::Header(header(current))).unwrap();
        let line = String::from_utf8(out.clone()).unwrap();
        assert!(line.contains(r#""scoring":"lifetime""#), "{line}");
        let read = Trace::read(out.as_slice()).unwrap();
        assert_eq!(read.header.validator.multiplier_drift_s, Some([7200, 28800]));
        assert_eq!(read.header.validator.scoring, Scoring::Lifetime);
    }
}
