//! Last invocation time of each chute, from Prometheus (`prometheus-server`):
//! `max by (chute_id) (invocation_last_timestamp)`, scraped from chute pods.
//!
//! Prometheus is optional. When it is absent, down or answers nonsense, the result
//! is an empty map: every chute's last use is unknown, which preemption treats as
//! "recently used" (the safe direction: nothing is preempted on a guess). The
//! outage is logged once, and again once it recovers.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::snapshot::LastInvocations;

pub struct Prometheus {
    url: Option<String>,
    http: reqwest::Client,
    down: AtomicBool,
}

impl Prometheus {
    pub fn new(url: Option<String>) -> Prometheus {
        Prometheus { url, http: reqwest::Client::new(), down: AtomicBool::new(false) }
    }

    pub async fn last_invocations(&self) -> LastInvocations {
        let Some(base) = &self.url else { return LastInvocations::new() };
        match self.query(base).await {
            Ok(map) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::info!(prometheus = %base, "Prometheus answers again; preemption uses last invocation times");
                }
                map
            }
            Err(why) => {
                if !self.down.swap(true, Ordering::Relaxed) {
                    tracing::warn!(prometheus = %base, %why,
                        "Prometheus unavailable: last invocation times are unknown, so last instances are not preempted");
                }
                LastInvocations::new()
            }
        }
    }

    async fn query(&self, base: &str) -> Result<LastInvocations, String> {
        // `max by (chute_id) (invocation_last_timestamp)`, percent-encoded.
        let url = format!(
            "{}/api/v1/query?query=max%20by%20%28chute_id%29%20%28invocation_last_timestamp%29",
            base.trim_end_matches('/')
        );
        let reply: Value = self
            .http
            .get(&url)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .error_for_status()
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        last_invocations(&reply)
    }
}

/// The chutes' last invocations from an instant-vector answer. A value that is no finite
/// number (Prometheus writes `"NaN"`) is left out: it is unknown, which protects a victim,
/// where `NaN as i64` would read as 1970 and expose the chute's last instance.
fn last_invocations(reply: &serde_json::Value) -> Result<LastInvocations, String> {
    let results = reply["data"]["result"].as_array().ok_or("no data.result in the answer")?;
    let mut out = LastInvocations::new();
    for r in results {
        let (Some(chute), Some(ts)) = (r["metric"]["chute_id"].as_str(), r["value"][1].as_str()) else {
            continue;
        };
        let Ok(secs) = ts.parse::<f64>() else { continue };
        if !secs.is_finite() {
            continue;
        }
        if let Some(t) = DateTime::<Utc>::from_timestamp(secs as i64, 0) {
            out.insert(chute.to_owned(), t);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_that_are_no_finite_number_are_unknown_not_1970() {
        let reply = serde_json::json!({"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"chute_id": "a"}, "value": [1765000000.0, "1764990000"]},
            {"metric": {"chute_id": "b"}, "value": [1765000000.0, "NaN"]},
            {"metric": {"chute_id": "c"}, "value": [1765000000.0, "+Inf"]},
        ]}});
        let got = last_invocations(&reply).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(got.keys().cloned().collect::<Vec<_>>(), ["a"]);
        assert_eq!(got["a"].timestamp(), 1764990000);
    }
}
