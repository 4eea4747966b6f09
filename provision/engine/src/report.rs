//! What a run tells the operator: live per-host progress, JSON events, the log file and the
//! final recap. Secret values (captured with `secret: true`) are redacted from all of them.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;

use crate::step::Status;

/// Replaces registered secret values with `<redacted>`.
#[derive(Clone, Default)]
pub struct Redactor(Arc<Mutex<Vec<String>>>);

impl Redactor {
    pub fn add(&self, secret: &str) {
        // Very short values would redact innocent text; secrets here are tokens and keys.
        if secret.len() >= 8
            && let Ok(mut v) = self.0.lock()
        {
            v.push(secret.to_string());
            // Also the parts of a multi-word secret, such as the token inside a join command.
            v.extend(secret.split_whitespace().filter(|w| w.len() >= 16).map(str::to_string));
        }
    }
    pub fn apply(&self, text: &str) -> String {
        let mut s = text.to_string();
        if let Ok(v) = self.0.lock() {
            for secret in v.iter() {
                s = s.replace(secret.as_str(), "<redacted>");
            }
        }
        s
    }
}

/// The run's log file: every step, command and output, redacted.
#[derive(Clone)]
pub struct Log {
    file: Option<Arc<Mutex<std::fs::File>>>,
    pub path: Option<PathBuf>,
    pub redactor: Redactor,
}

impl Log {
    pub fn open(path: &Path, redactor: Redactor) -> std::io::Result<Log> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Log { file: Some(Arc::new(Mutex::new(f))), path: Some(path.to_path_buf()), redactor })
    }

    pub fn none(redactor: Redactor) -> Log {
        Log { file: None, path: None, redactor }
    }

    pub fn line(&self, host: &str, text: &str) {
        if let Some(f) = &self.file
            && let Ok(mut f) = f.lock()
        {
            let text = self.redactor.apply(text);
            for l in text.lines() {
                let _ = writeln!(f, "[{host}] {l}");
            }
        }
    }

    pub fn output(&self, host: &str, out: &provision_ssh::Output) {
        self.line(
            host,
            &format!(
                "exit={:?}{}\nstdout: {}\nstderr: {}",
                out.status,
                out.signal.as_deref().map(|s| format!(" signal={s}")).unwrap_or_default(),
                out.stdout_str().trim_end(),
                out.stderr_str().trim_end()
            ),
        );
    }
}

/// One step's result on one host.
#[derive(Debug, Clone, Serialize)]
pub struct StepEvent {
    pub host: String,
    pub phase: String,
    pub step: String,
    pub kind: String,
    pub status: Status,
    /// What changed (or would, in check mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub check: bool,
}

/// Per-host totals for the recap.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct HostRecap {
    pub host: String,
    pub ok: u32,
    pub changed: u32,
    pub failed: u32,
    pub skipped: u32,
    pub unreachable: bool,
    /// Why the host stopped, if it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Human,
    Json,
}

/// Prints events as they happen.
#[derive(Clone)]
pub struct Reporter {
    pub format: OutputFormat,
    pub redactor: Redactor,
    /// Print ok steps too (human format).
    pub verbose: bool,
    out: Arc<Mutex<Box<dyn Write + Send>>>,
    /// Live per-host status lines, redrawn below the event lines (terminals only).
    board: Option<Arc<Mutex<Board>>>,
}

#[derive(Default)]
struct Board {
    rows: Vec<(String, String)>,
    /// Lines of the board currently on screen.
    drawn: usize,
}

impl Reporter {
    pub fn new(
        format: OutputFormat,
        redactor: Redactor,
        verbose: bool,
        out: Box<dyn Write + Send>,
    ) -> Reporter {
        Reporter { format, redactor, verbose, out: Arc::new(Mutex::new(out)), board: None }
    }

    /// Shows one live status line per host under the scrolling events (for a terminal).
    pub fn with_live_board(mut self, hosts: &[String]) -> Reporter {
        if self.format == OutputFormat::Human {
            let rows = hosts.iter().map(|h| (h.clone(), "waiting".to_string())).collect();
            self.board = Some(Arc::new(Mutex::new(Board { rows, drawn: 0 })));
        }
        self
    }

    fn write(&self, s: &str) {
        let Ok(mut o) = self.out.lock() else { return };
        let mut text = String::new();
        let board = self.board.as_ref().and_then(|b| b.lock().ok());
        if let Some(b) = &board {
            // Erase the board, print the new lines, draw the board again below them.
            text.push_str(&"\x1b[1A\x1b[2K".repeat(b.drawn));
        }
        text.push_str(&self.redactor.apply(s));
        if let Some(mut b) = board {
            let w = b.rows.iter().map(|(h, _)| h.len()).max().unwrap_or(0);
            for (h, status) in &b.rows {
                text.push_str(&format!("  {h:w$}  {status}\n"));
            }
            b.drawn = b.rows.len();
        }
        let _ = o.write_all(text.as_bytes());
        let _ = o.flush();
    }

    fn set_status(&self, host: &str, status: String) {
        if let Some(b) = &self.board
            && let Ok(mut b) = b.lock()
            && let Some(row) = b.rows.iter_mut().find(|(h, _)| h == host)
        {
            row.1 = status;
        }
    }

    pub fn phase(&self, host: &str, phase: &str) {
        if self.format == OutputFormat::Human {
            self.set_status(host, format!("{phase} ..."));
            if self.verbose {
                self.write(&format!("[{host}] == {phase}\n"));
            } else if self.board.is_some() {
                self.write("");
            }
        }
    }

    /// The host is done (or stopped): final word on its board line.
    pub fn host_done(&self, host: &str, summary: &str) {
        if self.board.is_some() {
            self.set_status(host, summary.to_string());
            self.write("");
        }
    }

    pub fn host_note(&self, host: &str, note: &str) {
        match self.format {
            OutputFormat::Human => self.write(&format!("[{host}] {note}\n")),
            OutputFormat::Json => self.write(&format!(
                "{}\n",
                serde_json::json!({"event": "host", "host": host, "message": self.redactor.apply(note)})
            )),
        }
    }

    pub fn step(&self, e: &StepEvent) {
        match self.format {
            OutputFormat::Json => {
                let mut v = serde_json::to_value(e).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("event".into(), "step".into());
                }
                self.write(&format!("{v}\n"));
            }
            OutputFormat::Human => {
                let label = match (e.status, e.check) {
                    (Status::Changed, true) => "would change",
                    (Status::Changed, false) => "changed",
                    (Status::Failed, _) => "FAILED",
                    (Status::Ok, _) => "ok",
                    (Status::Skipped, _) => "skipped",
                };
                if !self.verbose && matches!(e.status, Status::Ok | Status::Skipped) {
                    return;
                }
                let mut s = format!("[{}] {} / {}: {label}", e.host, e.phase, e.step);
                if let Some(sum) = &e.summary {
                    s.push_str(&format!(" ({sum})"));
                }
                if let Some(err) = &e.error {
                    s.push_str(&format!(": {err}"));
                }
                s.push('\n');
                if let Some(d) = &e.diff {
                    for l in d.lines() {
                        s.push_str(&format!("    {l}\n"));
                    }
                }
                self.write(&s);
            }
        }
    }

    pub fn recap(&self, hosts: &[HostRecap], total: Duration, log: Option<&Path>, check: bool) {
        let failed = hosts.iter().any(|h| h.failed > 0 || h.unreachable);
        match self.format {
            OutputFormat::Json => self.write(&format!(
                "{}\n",
                serde_json::json!({
                    "event": "recap", "check": check, "hosts": hosts,
                    "seconds": total.as_secs_f64(), "log": log.map(|p| p.display().to_string()),
                })
            )),
            OutputFormat::Human => {
                // The recap replaces the live board.
                if let Some(b) = &self.board
                    && let Ok(mut b) = b.lock()
                {
                    b.rows.clear();
                }
                let mut s = String::from("\n");
                s.push_str(&render_recap(hosts));
                s.push_str(&format!(
                    "finished in {:.1} s{}\n",
                    total.as_secs_f64(),
                    if check { " (check mode: nothing was changed)" } else { "" }
                ));
                for h in hosts.iter().filter(|h| h.error.is_some()) {
                    s.push_str(&format!("{}: {}\n", h.host, h.error.as_deref().unwrap_or("")));
                }
                if failed && let Some(p) = log {
                    s.push_str(&format!("full log: {}\n", p.display()));
                }
                self.write(&s);
            }
        }
    }
}

/// The recap table.
pub fn render_recap(hosts: &[HostRecap]) -> String {
    let w = hosts.iter().map(|h| h.host.len()).max().unwrap_or(4).max(4);
    let mut s = format!(
        "{:w$}  {:>4}  {:>7}  {:>6}  {:>7}  {:>11}  {:>7}\n",
        "HOST", "OK", "CHANGED", "FAILED", "SKIPPED", "UNREACHABLE", "TIME"
    );
    for h in hosts {
        s.push_str(&format!(
            "{:w$}  {:>4}  {:>7}  {:>6}  {:>7}  {:>11}  {:>6.1}s\n",
            h.host,
            h.ok,
            h.changed,
            h.failed,
            h.skipped,
            if h.unreachable { "yes" } else { "no" },
            h.seconds
        ));
    }
    s
}

/// The `--profile` tables: host-side CPU per step kind and the most expensive probes, summed
/// over hosts and shown per host too.
pub fn render_profile(rows: &[crate::runner::ProfileRow], hosts: usize) -> String {
    use std::collections::BTreeMap;
    let hosts = hosts.max(1) as f64;
    let mut by_kind: BTreeMap<&str, (f64, usize)> = BTreeMap::new();
    let mut by_probe: BTreeMap<(&str, &str), (f64, usize)> = BTreeMap::new();
    for r in rows {
        let k = by_kind.entry(&r.kind).or_default();
        k.0 += r.seconds;
        k.1 += 1;
        let p = by_probe.entry((&r.kind, &r.probe)).or_default();
        p.0 += r.seconds;
        p.1 += 1;
    }
    let total: f64 = rows.iter().map(|r| r.seconds).sum();
    let mut s = format!(
        "\nhost-side CPU of reads (processes the hosts' shells started; sshd not included): {:.0} ms, {:.1} ms per host\n",
        total * 1000.0,
        total * 1000.0 / hosts
    );
    s.push_str(&format!("{:<14} {:>6} {:>10} {:>12}\n", "KIND", "READS", "CPU ms", "ms / host"));
    let mut kinds: Vec<_> = by_kind.into_iter().collect();
    kinds.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
    for (k, (sec, n)) in kinds {
        s.push_str(&format!("{k:<14} {n:>6} {:>10.0} {:>12.1}\n", sec * 1000.0, sec * 1000.0 / hosts));
    }
    let mut probes: Vec<_> = by_probe.into_iter().collect();
    probes.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
    s.push_str(&format!("\n{:<14} {:<40} {:>6} {:>10}\n", "KIND", "PROBE (top 20)", "READS", "CPU ms"));
    for ((k, p), (sec, n)) in probes.into_iter().take(20) {
        let p: String = p.chars().take(40).collect();
        s.push_str(&format!("{k:<14} {p:<40} {n:>6} {:>10.0}\n", sec * 1000.0));
    }
    s
}
