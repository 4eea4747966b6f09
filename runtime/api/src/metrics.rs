//! Prometheus metrics in the text exposition format, kept in a few maps: request
//! counts and latency sums by route and status, refusals by reason. Small enough that
//! a metrics library would cost more build time than it saves.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;

/// (method, route template, status) -> (count, seconds).
type RequestTable = BTreeMap<(String, String, u16), (u64, f64)>;

/// Appends metric lines (with their HELP/TYPE) from another part of the process.
pub type Source = Box<dyn Fn(&mut String) + Send + Sync>;

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<RequestTable>,
    sources: Mutex<Vec<Source>>,
    refusals: Mutex<BTreeMap<&'static str, u64>>,
    events: Mutex<BTreeMap<String, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Adds lines rendered by someone else (socket clients, the event producer).
    pub fn add_source(&self, source: Source) {
        lock(&self.sources).push(source);
    }

    pub fn observe(&self, method: &str, route: &str, status: u16, took: Duration) {
        let mut map = lock(&self.requests);
        let e = map.entry((method_label(method).to_owned(), route.to_owned(), status)).or_default();
        e.0 += 1;
        e.1 += took.as_secs_f64();
    }

    /// Counts a refused request; `reason` is a fixed label (never user input).
    pub fn refused(&self, reason: &'static str) {
        *lock(&self.refusals).entry(reason).or_default() += 1;
    }

    pub fn event_published(&self, event_type: &str) {
        *lock(&self.events).entry(event_type.to_owned()).or_default() += 1;
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str("# HELP miner_api_requests_total HTTP requests by method, route and status.\n");
        out.push_str("# TYPE miner_api_requests_total counter\n");
        let requests = lock(&self.requests);
        for ((m, r, s), (n, _)) in requests.iter() {
            let _ =
                writeln!(out, "miner_api_requests_total{{method=\"{m}\",route=\"{r}\",status=\"{s}\"}} {n}");
        }
        out.push_str(
            "# HELP miner_api_request_seconds_sum Total time spent answering, by method, route and status.\n",
        );
        out.push_str("# TYPE miner_api_request_seconds_sum counter\n");
        for ((m, r, s), (_, secs)) in requests.iter() {
            let _ = writeln!(
                out,
                "miner_api_request_seconds_sum{{method=\"{m}\",route=\"{r}\",status=\"{s}\"}} {secs}"
            );
        }
        drop(requests);
        out.push_str("# HELP miner_api_refusals_total Requests refused by authentication, by reason.\n");
        out.push_str("# TYPE miner_api_refusals_total counter\n");
        for (reason, n) in lock(&self.refusals).iter() {
            let _ = writeln!(out, "miner_api_refusals_total{{reason=\"{reason}\"}} {n}");
        }
        out.push_str(
            "# HELP miner_api_events_published_total Internal events appended to the event stream.\n",
        );
        out.push_str("# TYPE miner_api_events_published_total counter\n");
        for (t, n) in lock(&self.events).iter() {
            let _ = writeln!(out, "miner_api_events_published_total{{event_type=\"{t}\"}} {n}");
        }
        for source in lock(&self.sources).iter() {
            source(&mut out);
        }
        out
    }
}

/// The method as a label. hyper accepts any token as a method, so anything outside
/// the standard set is `other`: a caller inventing methods cannot grow the table.
fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "PATCH" => "PATCH",
        "OPTIONS" => "OPTIONS",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        _ => "other",
    }
}

/// Middleware: times each request and counts it under its route template
/// (`/servers/{id_or_name}/lock`, never the raw path; `unmatched` for the fallback)
/// and its method label, so labels stay bounded.
pub async fn track(State(metrics): State<std::sync::Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().as_str().to_owned();
    let start = std::time::Instant::now();
    let response = next.run(req).await;
    metrics.observe(&method, &route, response.status().as_u16(), start.elapsed());
    response
}
