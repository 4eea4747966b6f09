//! `POST /servers/`: add a Kubernetes node (section 6.3), streamed as
//! `data: {"timestamp": "<utc iso>", "message": "<text>"}\n\n` lines.
//!
//! This module owns the HTTP side: argument checks that need no outside system,
//! the duplicate check, and the stream. The steps themselves (label the node, run
//! GraVal's bootstrap Job, read `/devices`, advertise to the validator, wait for
//! verification, clean up) are a [`NodeBootstrap`] given to the API at start-up.
//!
//! Fixes over the original: a missing node is a 404 (the original's 404 branch was
//! dead code and answered 500); a zero or negative hourly cost and an unknown
//! validator are refused up front; the bootstrap runs to its end (including
//! cleanup) even when the client disconnects; a failure ends the stream with an
//! error line instead of cutting the connection; and an API shutting down stops a
//! bootstrap in flight and waits for its cleanup ([`Bootstraps`]) instead of leaving
//! the server row, the validator's GPUs and a GraVal Job holding every GPU behind.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{StatusCode, header};
use axum::response::Response;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::AppState;
use crate::error::ApiError;

/// The original's `ServerArgs`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerArgs {
    pub name: String,
    pub validator: String,
    pub hourly_cost: f64,
    pub gpu_short_ref: String,
}

/// Progress lines of one bootstrap.
#[derive(Clone, Debug)]
pub struct Progress(mpsc::Sender<String>);

impl Progress {
    /// Sends a line; a gone client does not stop the bootstrap.
    pub async fn say(&self, message: impl Into<String>) {
        let _ = self.0.send(message.into()).await;
    }
}

/// The add-node steps against Kubernetes, GraVal and the validator.
#[async_trait]
pub trait NodeBootstrap: Send + Sync {
    /// Checks needing the outside world, before anything changes: the node exists
    /// (404 otherwise), the validator supports the GPU type (400), the validator
    /// answers (502).
    async fn preflight(&self, args: &ServerArgs) -> Result<(), ApiError>;

    /// Runs every step; on failure, or once `stop` is cancelled (the API is shutting
    /// down), undoes what it did and returns why.
    async fn run(&self, args: ServerArgs, progress: Progress, stop: CancellationToken) -> Result<(), String>;
}

/// The add-node bootstraps in flight, so a shutdown can stop them and wait for their
/// cleanup: a bootstrap task left running when the process exits dies mid-step.
#[derive(Clone, Debug, Default)]
pub struct Bootstraps {
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl Bootstraps {
    /// Asks every bootstrap in flight to stop and undo what it did; no new one starts.
    pub fn stop(&self) {
        self.tasks.close();
        self.stop.cancel();
    }

    /// Waits up to `bound` for the bootstraps to finish their cleanup (after
    /// [`Bootstraps::stop`]); false when some were still running.
    pub async fn finished(&self, bound: Duration) -> bool {
        self.tasks.close();
        tokio::time::timeout(bound, self.tasks.wait()).await.is_ok()
    }
}

/// One SSE line as the original's `sse_message`.
pub fn sse_line(message: &str) -> String {
    let timestamp = chrono::Utc::now().format("%Y-%m-%dT%H:%M:%S%.6f").to_string();
    format!("data: {}\n\n", serde_json::json!({ "timestamp": timestamp, "message": message }))
}

fn check(state: &AppState, args: &ServerArgs) -> Result<(), ApiError> {
    if args.name.trim().is_empty() {
        return Err(ApiError::bad_request("name: must be the Kubernetes node name"));
    }
    // Postgres text cannot hold NUL; no Kubernetes name or GPU type contains one.
    for (field, value) in [("name", &args.name), ("gpu_short_ref", &args.gpu_short_ref)] {
        if value.contains('\0') {
            return Err(ApiError::bad_request(format!("{field}: must not contain a NUL character")));
        }
    }
    if !args.hourly_cost.is_finite() || args.hourly_cost <= 0.0 {
        return Err(ApiError::bad_request(format!(
            "hourly_cost: must be a positive number (per GPU per hour), got {}",
            args.hourly_cost
        )));
    }
    if args.gpu_short_ref.trim().is_empty() {
        return Err(ApiError::bad_request("gpu_short_ref: must name the GPU type, e.g. h100_sxm"));
    }
    if state.validators.get(&args.validator).is_none() {
        return Err(ApiError::bad_request(format!(
            "validator: {} is not one of the supported validators ({})",
            args.validator,
            state.validators.hotkeys().collect::<Vec<_>>().join(", ")
        )));
    }
    Ok(())
}

pub async fn start(state: AppState, args: ServerArgs) -> Result<Response, ApiError> {
    check(&state, &args)?;
    if let Some(existing) = state.db.find_server(&args.name).await? {
        return Err(ApiError::conflict(format!(
            "server {} is already tracked (id {})",
            existing.name, existing.server_id
        )));
    }
    let bootstrap: Arc<dyn NodeBootstrap> = state.bootstrap.clone().ok_or_else(|| {
        ApiError::unavailable("add-node is not available: this API was started without a Kubernetes client")
    })?;
    bootstrap.preflight(&args).await?;
    if state.bootstraps.stop.is_cancelled() {
        return Err(ApiError::unavailable("the miner API is shutting down; add the node once it is back"));
    }

    let (tx, rx) = mpsc::channel::<String>(64);
    let name = args.name.clone();
    let stop = state.bootstraps.stop.clone();
    state.bootstraps.tasks.spawn(async move {
        let progress = Progress(tx);
        let started = std::time::Instant::now();
        match bootstrap.run(args, progress.clone(), stop).await {
            Ok(()) => {
                progress
                    .say(format!(
                        "completed server bootstrapping in {} seconds!",
                        started.elapsed().as_secs()
                    ))
                    .await;
            }
            Err(why) => {
                tracing::error!(node = %name, error = %why, "add-node failed");
                progress.say(format!("error: bootstrap of {name} failed: {why}")).await;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|m| (Ok::<_, std::convert::Infallible>(sse_line(&m)), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .map_err(|e| ApiError::internal(e.to_string()))
}
