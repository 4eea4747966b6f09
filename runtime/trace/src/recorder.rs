//! Recording a real miner: the writer Gepetto calls to produce a trace the
//! simulator replays (simulator README: "Recording from Gepetto"). It only formats
//! and appends lines; what to record and when is the caller's.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

use miner_validator::rest::ActiveInstance;

use crate::TraceError;
use crate::format::{FORMAT, Header, Record, Trace, ValidatorModel, write_line};

/// Appends trace records as JSON lines. The header goes first, once.
pub struct Recorder<W: Write> {
    out: W,
    /// Recording start, Unix seconds; event times are seconds after it.
    start_unix: i64,
}

impl Recorder<File> {
    /// Opens a recording file for appending. A new (or empty) file gets a header
    /// with an open-ended period (`duration_s` 0) starting at `now_unix`. An existing
    /// one is continued, as after a restart: its header's start is kept so times
    /// stay on one clock, a last line cut short by a crash is dropped, and what it
    /// already holds is returned so the caller does not write servers and chutes
    /// twice. A file recorded for another miner is refused and left unchanged.
    pub fn open(
        path: &Path,
        now_unix: i64,
        miner: &str,
        settings: &ValidatorModel,
    ) -> Result<(Recorder<File>, Option<Trace>), TraceError> {
        let io = |source| TraceError::File { path: path.display().to_string(), source };
        let mut file = OpenOptions::new().read(true).append(true).create(true).open(path).map_err(io)?;
        let mut text = Vec::new();
        file.read_to_end(&mut text).map_err(io)?;
        // Everything up to the last newline was written whole; the rest is a torn line.
        let whole = text.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if whole == 0 {
            // Empty, or only a header torn by a crash: nothing was recorded yet.
            file.set_len(0).map_err(io)?;
            return Ok((Recorder::start(file, now_unix, 0, miner, settings)?, None));
        }
        let existing = Trace::read(BufReader::new(&text[..whole]))
            .map_err(|e| TraceError::Invalid(format!("{} cannot be continued: {e}", path.display())))?;
        if existing.header.miner != miner {
            return Err(TraceError::Invalid(format!(
                "{} records miner {}, not {miner}: record into another file",
                path.display(),
                existing.header.miner
            )));
        }
        if whole < text.len() {
            file.set_len(whole as u64).map_err(io)?;
            file.seek(SeekFrom::End(0)).map_err(io)?;
        }
        let start_unix = existing.header.start_unix;
        Ok((Recorder { out: file, start_unix }, Some(existing)))
    }
}

impl<W: Write> Recorder<W> {
    /// Starts a recording: writes the header (`source: recorded`, seed 0). `settings`
    /// carries the recording miner's own settings (`autoscale_s`, `default_disk_gb`), the
    /// validator model's defaults otherwise.
    pub fn start(
        mut out: W,
        start_unix: i64,
        duration_s: u64,
        miner: &str,
        settings: &ValidatorModel,
    ) -> Result<Self, TraceError> {
        let header = Header {
            format: FORMAT,
            seed: 0,
            source: "recorded".into(),
            start_unix,
            duration_s,
            miner: miner.to_owned(),
            validator: settings.clone(),
        };
        write_line(&mut out, &Record::Header(header))?;
        Ok(Recorder { out, start_unix })
    }

    /// Seconds since the recording started for a Unix time (0 before it).
    pub fn t(&self, unix: i64) -> u64 {
        u64::try_from(unix - self.start_unix).unwrap_or(0)
    }

    /// Appends one record and flushes (a crash loses at most the line being written).
    pub fn record(&mut self, record: &Record) -> Result<(), TraceError> {
        write_line(&mut self.out, record)?;
        self.out.flush().map_err(TraceError::Io)
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// Other miners' active instances of a chute and their mean multiplier, from
/// `/miner/active_instances/`, given this miner's instance ids.
pub fn others_from_active(list: &[ActiveInstance], ours: &HashSet<String>) -> (u32, f64) {
    let theirs: Vec<&ActiveInstance> = list.iter().filter(|i| !ours.contains(&i.instance_id)).collect();
    let known: Vec<f64> = theirs.iter().filter_map(|i| i.compute_multiplier).collect();
    let mean = if known.is_empty() { 0.0 } else { known.iter().sum::<f64>() / known.len() as f64 };
    (u32::try_from(theirs.len()).unwrap_or(u32::MAX), mean)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn demand(t: u64, load: f64) -> Record {
        Record::Demand { t, chute_id: "c1".into(), load }
    }

    fn read(path: &Path) -> Trace {
        Trace::read(BufReader::new(File::open(path).unwrap())).unwrap()
    }

    #[test]
    fn a_restarted_recorder_continues_the_same_file_on_the_same_clock() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("week.jsonl");
        let (mut rec, existing) = Recorder::open(&path, 1_000, "5Miner", &ValidatorModel::default()).unwrap();
        assert!(existing.is_none());
        rec.record(&demand(rec.t(1_060), 0.5)).unwrap();
        drop(rec);

        // the process restarts 10 minutes later
        let (mut rec, existing) = Recorder::open(&path, 1_600, "5Miner", &ValidatorModel::default()).unwrap();
        assert_eq!(existing.unwrap().events, vec![demand(60, 0.5)]);
        assert_eq!(rec.t(1_660), 660, "times stay relative to the first start");
        rec.record(&demand(rec.t(1_660), 0.7)).unwrap();
        drop(rec);

        let trace = read(&path);
        assert_eq!(trace.header.start_unix, 1_000);
        assert_eq!(trace.header.source, "recorded");
        assert_eq!(trace.events, vec![demand(60, 0.5), demand(660, 0.7)]);
        assert_eq!(trace.header.duration_s, 660, "an open recording ends at its last event");
    }

    #[test]
    fn a_line_torn_by_a_crash_is_dropped_when_the_recording_continues() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("week.jsonl");
        let (mut rec, _) = Recorder::open(&path, 1_000, "5Miner", &ValidatorModel::default()).unwrap();
        rec.record(&demand(5, 0.5)).unwrap();
        drop(rec);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"kind":"demand","t":9,"chu"#).unwrap();
        drop(f);

        let (mut rec, _) = Recorder::open(&path, 1_010, "5Miner", &ValidatorModel::default()).unwrap();
        rec.record(&demand(20, 0.9)).unwrap();
        drop(rec);
        assert_eq!(read(&path).events, vec![demand(5, 0.5), demand(20, 0.9)]);

        // a crash while the very first line, the header, was written: start afresh
        std::fs::write(&path, br#"{"kind":"header","for"#).unwrap();
        let (mut rec, existing) = Recorder::open(&path, 2_000, "5Miner", &ValidatorModel::default()).unwrap();
        assert!(existing.is_none());
        rec.record(&demand(1, 0.1)).unwrap();
        drop(rec);
        let trace = read(&path);
        assert_eq!((trace.header.start_unix, trace.events), (2_000, vec![demand(1, 0.1)]));
    }

    #[test]
    fn another_miners_recording_is_refused_and_left_as_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("week.jsonl");
        let (mut rec, _) = Recorder::open(&path, 1_000, "5Miner", &ValidatorModel::default()).unwrap();
        rec.record(&demand(5, 0.5)).unwrap();
        drop(rec);
        let before = std::fs::read(&path).unwrap();

        let err = Recorder::open(&path, 2_000, "5Other", &ValidatorModel::default())
            .err()
            .expect("refused")
            .to_string();
        assert!(err.contains("5Miner") && err.contains("week.jsonl"), "{err}");
        std::fs::write(dir.path().join("junk.jsonl"), b"not json\n").unwrap();
        let err = Recorder::open(&dir.path().join("junk.jsonl"), 2_000, "5Miner", &ValidatorModel::default())
            .err()
            .expect("refused");
        assert!(err.to_string().contains("junk.jsonl cannot be continued"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), before);
    }
}
