//! Gepetto: the scheduler that turns validator events into running chutes
//! (reference section 11), behind a pluggable [`Strategy`].
//!
//! * [`snapshot`]: the plain data strategies decide from; [`strategy`]: the trait
//!   and the two strategies ([`Heuristic`], the original's with section 19 fixed,
//!   and [`Multiplier`], the successor's of section 20.7); [`synth`]: synthetic
//!   fleets for benches and simulators.
//! * [`controller`]: the event handlers, the deployment primitive and undeploy;
//!   [`loops`]: activator, autoscaler and reconciler; [`cluster`]: kube-runtime
//!   watches; [`prometheus`]: last invocation times; [`recording`]: the trace of
//!   this miner's week `minerctl simulate` replays (`GEPETTO_RECORD_TRACE`).
//!
//! What is durable when an event is acknowledged: the handler returns once the
//! database holds the decision — the chute row, or the deployment row with its GPUs
//! (`Db::create_deployment`, the single allocation path) — and the Kubernetes and
//! validator work of a deploy runs afterwards as a bounded background task. A crash
//! after the acknowledgement leaves a stub row; the reconciler removes stubs that
//! have no Job after `stub_grace` (releasing their job), and removes Jobs and
//! Services that have no row, so nothing leaks and the GPUs come back.

pub mod cluster;
pub mod controller;
pub mod inventory;
pub mod loops;
pub mod prometheus;
pub mod recording;
pub mod snapshot;
pub mod strategy;
pub mod synth;

pub use controller::{Config, Gepetto, GepettoError, ValidatorLink};
pub use snapshot::{FleetSnapshot, ValidatorView};
pub use strategy::{Heuristic, Multiplier, Strategy};
pub use tokio_util::sync::CancellationToken;
