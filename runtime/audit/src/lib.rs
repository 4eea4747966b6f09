//! The hourly audit exporter (section 16), run once per invocation (a CronJob at :01).
//!
//! 1. Window: the previous full UTC hour `[end - 1h, end)`.
//! 2. Prometheus invocation totals for the window (best effort: when Prometheus is
//!    away the report says so in `prometheus_message` and carries no metrics; the
//!    audit rows are what matters).
//! 3. `deployment_audit` rows still alive or deleted inside the window.
//! 4. The report is serialised exactly as Python's `json.dumps` (see [`pyjson`]), so
//!    its sha256 is the one the original computed.
//! 5. The current block number (`chain_getHeader` over JSON-RPC) goes in
//!    `X-Chutes-Block`; the body is signed by its sha256 (miner-to-validator format).
//! 6. Upload with retries on connection errors and 5xx, never on 4xx.
//!
//! Not done here: the original also committed the report's sha256 on chain
//! (`Commitments.set_commitment`), which needs a substrate extrinsic client.

pub mod pyjson;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Duration as ChronoDuration, DurationRound, Utc};
use chutes_protocol::Hotkey;
use chutes_protocol::auth::{Payload, headers, sha256_hex};
use chutes_protocol::redact::redact_url;
use miner_db::{AuditRow, Db};
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{0}")]
    Db(#[from] miner_db::DbError),
    #[error("could not encode the report: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("block number from {url}: {reason}")]
    Block { url: String, reason: String },
    #[error("upload to {url} refused with {status}: {body}")]
    Refused { url: String, status: u16, body: String },
    #[error("upload to {url} failed after {attempts} attempts: {last}")]
    Upload { url: String, attempts: u32, last: String },
    #[error("HTTP client: {0}")]
    Client(String),
}

/// A client error without the URL reqwest puts in its text: the configured URLs may
/// carry an API key (`?apikey=`, `user:token@`), and these messages reach logs and,
/// for Prometheus, the uploaded report. Callers name the URL redacted where it helps.
fn http_error(e: reqwest::Error) -> String {
    e.without_url().to_string()
}

#[derive(Debug, Clone)]
pub struct ExporterConfig {
    pub upload_url: String,
    pub prometheus_url: String,
    pub subtensor_rpc: String,
    /// Upload attempts (the original: 6, 10 s apart).
    pub attempts: u32,
    pub retry_delay: Duration,
    pub timeout: Duration,
}

impl ExporterConfig {
    pub fn new(upload_url: String, prometheus_url: String, subtensor_rpc: String) -> Self {
        ExporterConfig {
            upload_url,
            prometheus_url,
            subtensor_rpc,
            attempts: 6,
            retry_delay: Duration::from_secs(10),
            timeout: Duration::from_secs(30),
        }
    }
}

/// `[start, end)`, whole UTC hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl Window {
    /// The last full hour before `now`.
    pub fn previous_hour(now: DateTime<Utc>) -> Window {
        let end = now.duration_trunc(ChronoDuration::hours(1)).unwrap_or(now);
        Window { start: end - ChronoDuration::hours(1), end }
    }
}

/// Python's `datetime.isoformat()` for an aware UTC datetime.
fn iso_utc(t: &DateTime<Utc>) -> String {
    format!("{}+00:00", miner_db::iso(&t.naive_utc()))
}

/// One invocation total, as the original listed them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct InvocationTotal {
    pub chute_id: String,
    pub deployment_id: String,
    pub function: String,
    pub total_seconds: f64,
    /// `int(float(value))` as the original wrote it (see [`python_int_count`]).
    pub total_count: i64,
}

/// The original's `int(float(values[0][1]))` for a count series, and `0` when the
/// series is missing: truncated toward zero (`4.0421` → `4`, `-2.7` → `-2`). A NaN or
/// infinite value (where Python's `int()` raises) is written as 0 like a missing one;
/// beyond the `i64` range the count saturates.
pub fn python_int_count(value: Option<f64>) -> i64 {
    match value {
        // `as` truncates toward zero and saturates: Python's int() within i64.
        Some(v) if v.is_finite() => v as i64,
        _ => 0,
    }
}

/// An audit row in column order with ISO timestamps (the original's `dict(row)`).
#[derive(Serialize)]
struct AuditJson {
    deployment_id: String,
    validator: String,
    instance_id: Option<String>,
    chute_id: String,
    version: String,
    created_at: String,
    verified_at: Option<String>,
    deleted_at: Option<String>,
}

impl From<&AuditRow> for AuditJson {
    fn from(r: &AuditRow) -> Self {
        AuditJson {
            deployment_id: r.deployment_id.clone(),
            validator: r.validator.clone(),
            instance_id: r.instance_id.clone(),
            chute_id: r.chute_id.clone(),
            version: r.version.clone(),
            created_at: miner_db::iso(&r.created_at),
            verified_at: r.verified_at.as_ref().map(miner_db::iso),
            deleted_at: r.deleted_at.as_ref().map(miner_db::iso),
        }
    }
}

/// The report in the original's key order.
#[derive(Serialize)]
struct ReportJson<'a> {
    miner_hotkey: &'a str,
    start_time: String,
    end_time: String,
    prometheus_message: String,
    prometheus_metrics: &'a [InvocationTotal],
    deployment_audit: Vec<AuditJson>,
}

/// The bytes to upload and their sha256.
#[derive(Debug, Clone)]
pub struct Report {
    pub bytes: Vec<u8>,
    pub sha256: String,
    pub rows: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uploaded {
    pub block: u64,
    pub sha256: String,
    pub rows: usize,
    pub attempts: u32,
}

pub struct Exporter {
    db: Db,
    hotkey: Arc<Hotkey>,
    http: reqwest::Client,
    cfg: ExporterConfig,
}

impl Exporter {
    pub fn new(db: Db, hotkey: Arc<Hotkey>, cfg: ExporterConfig) -> Result<Self, AuditError> {
        let http = reqwest::Client::builder()
            .timeout(cfg.timeout)
            .build()
            .map_err(|e| AuditError::Client(e.to_string()))?;
        Ok(Exporter { db, hotkey, http, cfg })
    }

    /// Builds, signs and uploads the report for `window`.
    pub async fn run(&self, window: Window) -> Result<Uploaded, AuditError> {
        let report = self.report(window).await?;
        let block = self.block_number().await?;
        let attempts = self.upload(&report, block).await?;
        Ok(Uploaded { block, sha256: report.sha256, rows: report.rows, attempts })
    }

    pub async fn report(&self, window: Window) -> Result<Report, AuditError> {
        let (prometheus_message, metrics) = match self.prometheus(window).await {
            Ok(found) => found,
            Err(why) => (format!("prometheus metrics unavailable: {why}"), Vec::new()),
        };
        let rows = self.db.audit_rows(window.start, window.end).await?;
        let report = ReportJson {
            miner_hotkey: self.hotkey.ss58(),
            start_time: iso_utc(&window.start),
            end_time: iso_utc(&window.end),
            prometheus_message,
            prometheus_metrics: &metrics,
            deployment_audit: rows.iter().map(AuditJson::from).collect(),
        };
        let bytes = pyjson::dumps(&report)?;
        Ok(Report { sha256: sha256_hex(&bytes), bytes, rows: rows.len() })
    }

    /// Invocation totals and an uptime note from Prometheus.
    async fn prometheus(&self, window: Window) -> Result<(String, Vec<InvocationTotal>), String> {
        let base = self.cfg.prometheus_url.trim_end_matches('/');
        let by = "(chutes_deployment_id, chute_id, function)";
        let seconds = self
            .query_range(
                base,
                &format!("sum(increase(invocation_duration_sum{{status=\"200\"}}[1h])) by {by}"),
                window,
            )
            .await?;
        let counts = self
            .query_range(
                base,
                &format!("sum(increase(invocation_total{{status=\"200\"}}[1h])) by {by}"),
                window,
            )
            .await?;
        let mut metrics: Vec<InvocationTotal> = seconds
            .into_iter()
            .filter(|(_, secs)| *secs > 0.0)
            .map(|(key, total_seconds)| InvocationTotal {
                total_count: python_int_count(counts.iter().find(|(k, _)| *k == key).map(|(_, n)| *n)),
                chute_id: key.1,
                deployment_id: key.0,
                function: key.2,
                total_seconds,
            })
            .collect();
        metrics.sort_by(|a, b| (&a.deployment_id, &a.function).cmp(&(&b.deployment_id, &b.function)));

        let message = match self.get_json(&format!("{base}/api/v1/status/runtimeinfo")).await {
            Ok(v) => match v["data"]["startTime"].as_str().and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            {
                Some(started) => {
                    let up = window.end.signed_duration_since(started.with_timezone(&Utc));
                    if up < ChronoDuration::hours(1) {
                        format!(
                            "prometheus uptime is only {} seconds; metrics cover part of the hour",
                            up.num_seconds().max(0)
                        )
                    } else {
                        String::new()
                    }
                }
                None => "prometheus uptime unknown".to_owned(),
            },
            Err(_) => "prometheus uptime unknown".to_owned(),
        };
        Ok((message, metrics))
    }

    async fn get_json(&self, url: &str) -> Result<Value, String> {
        let resp = self.http.get(url).send().await.map_err(http_error)?;
        if !resp.status().is_success() {
            return Err(format!("{} answered {}", redact_url(url), resp.status()));
        }
        resp.json().await.map_err(http_error)
    }

    /// `((deployment_id, chute_id, function), last value)` per series.
    async fn query_range(
        &self,
        base: &str,
        query: &str,
        w: Window,
    ) -> Result<Vec<((String, String, String), f64)>, String> {
        let end = w.end.timestamp().to_string();
        let resp = self
            .http
            .get(format!("{base}/api/v1/query_range"))
            .query(&[("query", query), ("start", &end), ("end", &end), ("step", "3600")])
            .send()
            .await
            .map_err(http_error)?;
        if !resp.status().is_success() {
            return Err(format!("query_range answered {}", resp.status()));
        }
        let v: Value = resp.json().await.map_err(http_error)?;
        let series = v["data"]["result"].as_array().ok_or("query_range: no data.result")?;
        Ok(series
            .iter()
            .filter_map(|s| {
                let m = &s["metric"];
                let value = s["values"].as_array()?.last()?.get(1)?.as_str()?.parse::<f64>().ok()?;
                let label = |k: &str| m[k].as_str().unwrap_or_default().to_owned();
                Some(((label("chutes_deployment_id"), label("chute_id"), label("function")), value))
            })
            .collect())
    }

    /// The chain's current block number.
    pub async fn block_number(&self) -> Result<u64, AuditError> {
        let url = self.cfg.subtensor_rpc.clone();
        let fail = |reason: String| AuditError::Block { url: redact_url(&url), reason };
        let body = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "chain_getHeader", "params": []});
        let resp = self.http.post(&url).json(&body).send().await.map_err(|e| fail(http_error(e)))?;
        let v: Value = resp.json().await.map_err(|e| fail(http_error(e)))?;
        let number =
            v["result"]["number"].as_str().ok_or_else(|| fail(format!("no result.number in {v}")))?;
        u64::from_str_radix(number.trim_start_matches("0x"), 16)
            .map_err(|_| fail(format!("bad block number {number:?}")))
    }

    /// Uploads with the signed headers; returns the attempts it took.
    pub async fn upload(&self, report: &Report, block: u64) -> Result<u32, AuditError> {
        let url = &self.cfg.upload_url;
        let mut last = String::new();
        for attempt in 1..=self.cfg.attempts.max(1) {
            // A fresh nonce per attempt: a retry after 10 s must still be inside the validator's window.
            let signed = self.hotkey.sign_request(Payload::Body(&report.bytes));
            let mut req = self
                .http
                .post(url)
                .header("Content-Type", "application/json")
                .header(headers::BLOCK, block.to_string())
                .body(report.bytes.clone());
            for (k, v) in signed.iter() {
                req = req.header(k, v);
            }
            match req.send().await {
                Ok(resp) if resp.status().is_success() => return Ok(attempt),
                Ok(resp) if resp.status().is_client_error() => {
                    let status = resp.status().as_u16();
                    let body = resp.text().await.unwrap_or_default();
                    return Err(AuditError::Refused { url: redact_url(url), status, body });
                }
                Ok(resp) => last = format!("status {}", resp.status()),
                Err(e) => last = http_error(e),
            }
            tracing::warn!(attempt, error = %last, "audit upload failed; retrying");
            if attempt < self.cfg.attempts {
                tokio::time::sleep(self.cfg.retry_delay).await;
            }
        }
        Err(AuditError::Upload { url: redact_url(url), attempts: self.cfg.attempts, last })
    }
}

#[cfg(test)]
mod tests {
    use super::python_int_count;

    #[test]
    fn counts_truncate_toward_zero_like_python_int() {
        // python3 -c 'print([int(float(v)) for v in ["4.0421", "4", "0.99", "-0.5", "-2.7", "-0", "1e18"]])'
        let cases = [
            ("4.0421", 4),
            ("4", 4),
            ("0.99", 0),
            ("-0.5", 0),
            ("-2.7", -2),
            ("-0", 0),
            ("1e18", 1_000_000_000_000_000_000),
        ];
        for (text, python) in cases {
            let parsed: f64 = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(python_int_count(Some(parsed)), python, "{text}");
        }
        assert_eq!(python_int_count(None), 0);
        assert_eq!(python_int_count(Some(f64::NAN)), 0);
        assert_eq!(python_int_count(Some(f64::INFINITY)), 0);
    }
}
