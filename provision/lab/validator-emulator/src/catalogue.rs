//! The one catalogue every chute-facing answer derives from: chutes (with their
//! image, supported GPUs, `node_selector.gpu_count`, code, cords, jobs and compute
//! multiplier), images, and the validator's jobs. `/miner/chutes/`,
//! `/miner/images/`, `/miner/chutes/{id}/{version}`, `/miner/metrics/`,
//! `/chutes/utilization` and the launch-config checks all read from here, so a
//! chute cannot exist in one answer and be missing from another.
//!
//! The types are serde-serializable because the scenario driver records them in
//! traces; [`ChuteSpec::to_wire`] and [`ImageSpec::to_wire`] give the JSON the
//! validator sends (field names as chutes-api's `model_to_dict`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

/// A port a chute's job exposes (`jobs[].ports[]` on the wire).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobPort {
    pub port: u16,
    /// `tcp`, `http` or `udp`.
    pub proto: String,
}

/// A job method a chute declares (`jobs[]` on the wire).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChuteJob {
    pub name: String,
    pub ports: Vec<JobPort>,
}

/// A container image chutes run from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageSpec {
    pub image_id: String,
    pub username: String,
    pub name: String,
    pub tag: String,
    /// `None` is the original build (`initial` on the wire: no suffix on the reference).
    pub patch_version: Option<String>,
    pub chutes_version: String,
}

impl ImageSpec {
    /// `user/name:tag[-patch]`, as `image_updated` and gepetto's image sync build it.
    pub fn reference(&self) -> String {
        match &self.patch_version {
            Some(p) if p != "initial" => format!("{}/{}:{}-{}", self.username, self.name, self.tag, p),
            _ => format!("{}/{}:{}", self.username, self.name, self.tag),
        }
    }

    pub fn to_wire(&self) -> Value {
        json!({
            "image_id": self.image_id,
            "username": self.username,
            "name": self.name,
            "tag": self.tag,
            "patch_version": self.patch_version.clone().unwrap_or_else(|| "initial".into()),
            "chutes_version": self.chutes_version,
            "public": true,
            "status": "built and pushed",
        })
    }
}

/// A chute at one version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChuteSpec {
    pub chute_id: String,
    pub name: String,
    pub version: String,
    pub image_id: String,
    pub supported_gpus: Vec<String>,
    /// `node_selector.gpu_count`.
    pub gpu_count: u32,
    pub code: String,
    pub filename: String,
    pub ref_str: String,
    /// `cords` on the wire; empty means a job-only chute.
    pub cords: Vec<Value>,
    pub jobs: Vec<ChuteJob>,
    /// `effective_compute_multiplier`, also the multiplier of its instances.
    pub compute_multiplier: f64,
    /// Target instance count: a launch config is refused with 423 once this many
    /// instances of the chute are active and verified (all miners). `None`: no cap.
    pub capacity: Option<u32>,
    pub preemptible: bool,
    pub tee: bool,
    /// Extra wire fields (successor additions, or anything a test wants to send).
    #[serde(default)]
    pub extra: BTreeMap<String, Value>,
}

impl ChuteSpec {
    /// A one-GPU chute with one cord, for tests that only need "some chute".
    pub fn simple(chute_id: &str, image_id: &str, gpus: &[&str]) -> ChuteSpec {
        ChuteSpec {
            chute_id: chute_id.to_owned(),
            name: format!("chute-{chute_id}"),
            version: "v1".into(),
            image_id: image_id.to_owned(),
            supported_gpus: gpus.iter().map(|g| (*g).to_owned()).collect(),
            gpu_count: 1,
            code: format!("# chute {chute_id}\n"),
            filename: "app.py".into(),
            ref_str: "app:chute".into(),
            cords: vec![json!({"method": "POST", "path": "/generate", "public_api_path": "/generate"})],
            jobs: Vec::new(),
            compute_multiplier: 1.0,
            capacity: None,
            preemptible: true,
            tee: false,
            extra: BTreeMap::new(),
        }
    }

    /// Job-only chutes have no cords (`job_only` in `chute_created`).
    pub fn job_only(&self) -> bool {
        self.cords.is_empty()
    }

    /// Reads what tests give `Emulator::set_chute`: known fields are taken, the rest
    /// is kept in `extra` and sent back as is.
    pub fn from_json(chute_id: &str, version: &str, value: &Value) -> ChuteSpec {
        let mut spec = ChuteSpec::simple(chute_id, "", &[]);
        spec.version = version.to_owned();
        let Some(fields) = value.as_object() else { return spec };
        let text = |k: &str| fields.get(k).and_then(Value::as_str).map(str::to_owned);
        for (k, v) in fields {
            match k.as_str() {
                "chute_id" | "version" => {}
                "name" => spec.name = text(k).unwrap_or_default(),
                "image_id" => spec.image_id = text(k).unwrap_or_default(),
                "code" => spec.code = text(k).unwrap_or_default(),
                "filename" => spec.filename = text(k).unwrap_or_default(),
                "ref_str" => spec.ref_str = text(k).unwrap_or_default(),
                "supported_gpus" => {
                    spec.supported_gpus = v
                        .as_array()
                        .map(|a| a.iter().filter_map(Value::as_str).map(str::to_owned).collect())
                        .unwrap_or_default()
                }
                "node_selector" => {
                    spec.gpu_count = v.get("gpu_count").and_then(Value::as_u64).unwrap_or(1) as u32;
                    let rest: Map<String, Value> = v
                        .as_object()
                        .into_iter()
                        .flatten()
                        .filter(|(k, _)| *k != "gpu_count")
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect();
                    if !rest.is_empty() {
                        spec.extra.insert("node_selector".into(), Value::Object(rest));
                    }
                }
                "cords" => spec.cords = v.as_array().cloned().unwrap_or_default(),
                "jobs" => spec.jobs = serde_json::from_value(v.clone()).unwrap_or_default(),
                "effective_compute_multiplier" => spec.compute_multiplier = v.as_f64().unwrap_or(1.0),
                "preemptible" => spec.preemptible = v.as_bool().unwrap_or(true),
                "tee" => spec.tee = v.as_bool().unwrap_or(false),
                _ => {
                    spec.extra.insert(k.clone(), v.clone());
                }
            }
        }
        spec
    }

    /// The chute as `GET /miner/chutes/{id}/{version}` and `/miner/chutes/` send it.
    pub fn to_wire(&self, image: Option<&ImageSpec>) -> Value {
        let mut node_selector = Map::new();
        if let Some(Value::Object(extra)) = self.extra.get("node_selector") {
            node_selector.extend(extra.clone());
        }
        node_selector.insert("gpu_count".into(), json!(self.gpu_count));
        let mut out = json!({
            "chute_id": self.chute_id,
            "name": self.name,
            "version": self.version,
            "image_id": self.image_id,
            "image": image.map(|i| format!("{}/{}:{}", i.username, i.name, i.tag)),
            "chutes_version": image.map(|i| i.chutes_version.clone()),
            "code": self.code,
            "filename": self.filename,
            "ref_str": self.ref_str,
            "supported_gpus": self.supported_gpus,
            "node_selector": node_selector,
            "cords": self.cords,
            "jobs": self.jobs,
            "preemptible": self.preemptible,
            "tee": self.tee,
            "public": true,
            "effective_compute_multiplier": self.compute_multiplier,
        });
        if let Some(o) = out.as_object_mut() {
            for (k, v) in &self.extra {
                if k != "node_selector" {
                    o.insert(k.clone(), v.clone());
                }
            }
        }
        out
    }
}

/// A job the validator offers (`job_created`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobSpec {
    pub job_id: String,
    /// `None`: a job any chute id may claim (what the older `add_job` made).
    pub chute_id: Option<String>,
    pub method: String,
    pub disk_gb: u32,
    /// Hotkeys the validator excludes (`exclude` on the wire).
    pub exclude: Vec<String>,
}

/// Traffic numbers of one chute over the last hour (`/miner/metrics/`), for the
/// parts the emulator cannot derive from instances.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Traffic {
    pub total_invocations: u64,
    pub total_compute_time: f64,
    pub error_count: u64,
    pub rate_limit_count: u64,
    pub per_second_price_usd: f64,
    pub total_usage_usd: f64,
}

/// Catalogue contents.
#[derive(Debug, Clone, Default)]
pub struct Catalogue {
    pub chutes: BTreeMap<String, ChuteSpec>,
    pub images: BTreeMap<String, ImageSpec>,
    pub jobs: BTreeMap<String, JobSpec>,
    pub bounties: BTreeMap<String, u64>,
    pub traffic: BTreeMap<String, Traffic>,
}

impl Catalogue {
    pub fn chute_wire(&self, chute: &ChuteSpec) -> Value {
        chute.to_wire(self.images.get(&chute.image_id))
    }
}
