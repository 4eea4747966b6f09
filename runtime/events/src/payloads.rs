//! Typed payloads of every event on the bus, defined once for the producers (the
//! validator socket client forwards validator payloads; the API publishes
//! `undeploy` and `server_deleted`) and the consumer (Gepetto).
//!
//! [`Event`] is adjacently tagged exactly like the wire shape,
//! `{"event_type": "<reason>", "event_data": {…}}`, so `Event` ⇄ [`MinerEvent`] is a
//! lossless conversion for the fields named here; unknown extra fields the validator
//! adds are ignored. Payload fields follow the validator (reference section 9), with
//! the original's bug 19.2 fixed: `job_created` carries `exclude` (not `excluded`).

use serde::{Deserialize, Serialize};

use crate::MinerEvent;

/// Every event Gepetto handles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event_type", content = "event_data", rename_all = "snake_case")]
pub enum Event {
    ChuteCreated(ChuteChanged),
    ChuteUpdated(ChuteChanged),
    ChuteDeleted(ChuteDeleted),
    BountyChange(BountyChange),
    ImageCreated(ImageEvent),
    ImageUpdated(ImageUpdated),
    ImageDeleted(ImageEvent),
    GpuVerified(GpuVerified),
    InstanceCreated(InstanceEvent),
    InstanceVerified(InstanceEvent),
    InstanceActivated(InstanceEvent),
    InstanceDeleted(InstanceEvent),
    RollingUpdate(RollingUpdate),
    JobCreated(JobCreated),
    JobDeleted(JobDeleted),
    /// Internal (miner API `DELETE /servers/{id}`): carries no validator.
    ServerDeleted(ServerDeleted),
    /// Internal (miner API purge endpoints), keyed by `deployment_id`.
    Undeploy(Undeploy),
}

/// The 15 reasons a validator broadcasts (`miner_broadcast`).
pub const VALIDATOR_REASONS: [&str; 15] = [
    "gpu_verified",
    "chute_deleted",
    "chute_created",
    "bounty_change",
    "image_created",
    "image_deleted",
    "image_updated",
    "instance_created",
    "instance_deleted",
    "instance_verified",
    "instance_activated",
    "rolling_update",
    "job_created",
    "job_deleted",
    "chute_updated",
];

/// Why an entry could not be read as an [`Event`].
#[derive(Debug, thiserror::Error)]
#[error("event {event_type:?} has an unexpected payload: {source}")]
pub struct PayloadError {
    pub event_type: String,
    #[source]
    pub source: serde_json::Error,
}

impl Event {
    /// The typed event of a bus entry.
    pub fn parse(event: &MinerEvent) -> Result<Event, PayloadError> {
        let fail = |source| PayloadError { event_type: event.event_type.clone(), source };
        let value = serde_json::to_value(event).map_err(fail)?;
        serde_json::from_value(value).map_err(fail)
    }

    /// The bus entry for this event.
    pub fn to_miner_event(&self) -> Result<MinerEvent, serde_json::Error> {
        serde_json::from_value(serde_json::to_value(self)?)
    }

    /// The wire name (`chute_created`, …).
    pub fn event_type(&self) -> &'static str {
        match self {
            Event::ChuteCreated(_) => "chute_created",
            Event::ChuteUpdated(_) => "chute_updated",
            Event::ChuteDeleted(_) => "chute_deleted",
            Event::BountyChange(_) => "bounty_change",
            Event::ImageCreated(_) => "image_created",
            Event::ImageUpdated(_) => "image_updated",
            Event::ImageDeleted(_) => "image_deleted",
            Event::GpuVerified(_) => "gpu_verified",
            Event::InstanceCreated(_) => "instance_created",
            Event::InstanceVerified(_) => "instance_verified",
            Event::InstanceActivated(_) => "instance_activated",
            Event::InstanceDeleted(_) => "instance_deleted",
            Event::RollingUpdate(_) => "rolling_update",
            Event::JobCreated(_) => "job_created",
            Event::JobDeleted(_) => "job_deleted",
            Event::ServerDeleted(_) => "server_deleted",
            Event::Undeploy(_) => "undeploy",
        }
    }
}

/// `chute_created` / `chute_updated`: `{chute_id, version, job_only}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChuteChanged {
    pub chute_id: String,
    pub version: String,
    /// True when the chute has no cords (it only runs jobs).
    #[serde(default)]
    pub job_only: bool,
    pub validator: String,
}

/// `chute_deleted`: `{chute_id, version}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChuteDeleted {
    pub chute_id: String,
    #[serde(default)]
    pub version: Option<String>,
    pub validator: String,
}

/// `bounty_change`: `{chute_id, bounty}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BountyChange {
    pub chute_id: String,
    #[serde(default)]
    pub bounty: Option<f64>,
    pub validator: String,
}

/// `image_created` / `image_deleted`: `{image_id, …}` (logged only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageEvent {
    pub image_id: String,
    pub validator: String,
}

/// `image_updated`: a patched image for a set of chutes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageUpdated {
    pub image_id: String,
    #[serde(default)]
    pub short_tag: Option<String>,
    #[serde(default)]
    pub patch_version: Option<String>,
    #[serde(default)]
    pub chutes_version: Option<String>,
    #[serde(default)]
    pub chute_ids: Vec<String>,
    /// `user/name:tag[-patch]`.
    pub image: String,
    pub validator: String,
}

/// `gpu_verified`: `{gpu_id, miner_hotkey}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuVerified {
    pub gpu_id: String,
    #[serde(default)]
    pub miner_hotkey: Option<String>,
    pub validator: String,
}

/// `instance_created` / `_verified` / `_activated` / `_deleted`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InstanceEvent {
    pub instance_id: String,
    #[serde(default)]
    pub chute_id: Option<String>,
    #[serde(default)]
    pub miner_hotkey: Option<String>,
    /// Present when sent to the miner that launched the instance.
    #[serde(default)]
    pub config_id: Option<String>,
    #[serde(default)]
    pub gpu_count: Option<i64>,
    #[serde(default)]
    pub gpu_model_name: Option<String>,
    pub validator: String,
}

/// `rolling_update`: move an instance of a chute to `new_version`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RollingUpdate {
    pub chute_id: String,
    pub instance_id: String,
    #[serde(default)]
    pub miner_hotkey: Option<String>,
    #[serde(default)]
    pub old_version: Option<String>,
    pub new_version: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub image: Option<String>,
    pub validator: String,
}

/// `job_created`: a job any miner may claim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobCreated {
    pub job_id: String,
    #[serde(default)]
    pub method: Option<String>,
    pub chute_id: String,
    #[serde(default)]
    pub image_id: Option<String>,
    #[serde(default)]
    pub gpu_count: Option<i64>,
    #[serde(default)]
    pub compute_multiplier: Option<f64>,
    /// Miner hotkeys that must not take this job.
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default)]
    pub disk_gb: Option<u32>,
    pub validator: String,
}

/// `job_deleted`: `{instance_id, job_id}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobDeleted {
    pub job_id: String,
    #[serde(default)]
    pub instance_id: Option<String>,
    pub validator: String,
}

/// `server_deleted` (miner API): the server's validator is read from its row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerDeleted {
    pub server_id: String,
}

/// `undeploy` (miner API purge endpoints), keyed by `deployment_id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Undeploy {
    pub deployment_id: String,
    #[serde(default)]
    pub instance_id: Option<String>,
    pub chute_id: String,
    pub server_id: String,
    pub validator: String,
    #[serde(default)]
    pub job_id: Option<String>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use serde_json::json;

    use super::*;

    #[test]
    fn job_created_reads_exclude_as_the_validator_sends_it() {
        let e = MinerEvent::new(
            "job_created",
            json!({"job_id": "j", "chute_id": "c", "exclude": ["5Me"], "disk_gb": 50, "gpu_count": 2,
                   "compute_multiplier": 1.5, "method": "run", "image_id": "i", "validator": "5V", "extra": 1}),
        );
        let Event::JobCreated(j) = Event::parse(&e).unwrap() else { panic!("not a job") };
        assert_eq!(j.exclude, vec!["5Me".to_owned()]);
        assert_eq!(j.disk_gb, Some(50));
    }

    #[test]
    fn events_round_trip_through_the_wire_shape() {
        let u = Event::Undeploy(Undeploy {
            deployment_id: "d".into(),
            instance_id: None,
            chute_id: "c".into(),
            server_id: "s".into(),
            validator: "5V".into(),
            job_id: Some("j".into()),
        });
        let wire = u.to_miner_event().unwrap();
        assert_eq!(wire.event_type, "undeploy");
        assert_eq!(wire.event_data["deployment_id"], "d");
        assert_eq!(Event::parse(&wire).unwrap(), u);
        assert_eq!(u.event_type(), "undeploy");
    }

    #[test]
    fn a_bad_payload_names_the_event() {
        let e = MinerEvent::new("chute_created", json!({"version": "1", "validator": "5V"}));
        let err = Event::parse(&e).unwrap_err().to_string();
        assert!(err.contains("chute_created") && err.contains("chute_id"), "{err}");
        let e = MinerEvent::new("no_such_event", json!({}));
        assert!(Event::parse(&e).is_err());
    }

    #[test]
    fn every_validator_reason_has_a_variant() {
        for r in VALIDATOR_REASONS {
            let e = MinerEvent::new(r, json!({}));
            let err = Event::parse(&e).unwrap_err().to_string();
            assert!(!err.contains("unknown variant"), "{r}: {err}");
        }
    }
}
