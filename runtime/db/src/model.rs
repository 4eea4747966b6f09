//! Row types. Field names are the column names, so `Serialize` gives the JSON the
//! original API returned for its ORM objects (timestamps as ISO-8601 strings).

use chrono::{DateTime, NaiveDateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::types::Json;

/// Timestamps as the original API's orjson wrote aware datetimes:
/// `2025-01-01T10:00:00.123456+00:00` (no fraction when it is zero).
mod py_datetime {
    use chrono::{DateTime, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &Option<DateTime<Utc>>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&format!("{}+00:00", crate::iso(&t.naive_utc()))),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        let text: Option<String> = Option::deserialize(d)?;
        text.map(|t| {
            DateTime::parse_from_rfc3339(&t).map(|t| t.with_timezone(&Utc)).map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Server {
    pub server_id: String,
    pub validator: String,
    pub name: String,
    pub ip_address: Option<String>,
    pub verification_port: Option<i32>,
    pub status: Option<String>,
    #[serde(with = "py_datetime")]
    pub created_at: Option<DateTime<Utc>>,
    pub labels: Value,
    pub seed: Option<i64>,
    pub gpu_count: i32,
    pub cpu_per_gpu: i32,
    pub memory_per_gpu: i32,
    pub hourly_cost: f64,
    pub locked: bool,
}

impl Server {
    pub fn from_row(r: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(Server {
            server_id: r.try_get("server_id")?,
            validator: r.try_get("validator")?,
            name: r.try_get("name")?,
            ip_address: r.try_get("ip_address")?,
            verification_port: r.try_get("verification_port")?,
            status: r.try_get("status")?,
            created_at: r.try_get("created_at")?,
            labels: r.try_get::<Json<Value>, _>("labels")?.0,
            seed: r.try_get("seed")?,
            gpu_count: r.try_get("gpu_count")?,
            cpu_per_gpu: r.try_get("cpu_per_gpu")?,
            memory_per_gpu: r.try_get("memory_per_gpu")?,
            hourly_cost: r.try_get("hourly_cost")?,
            locked: r.try_get::<Option<bool>, _>("locked")?.unwrap_or(false),
        })
    }
}

/// What add-node inserts for a server.
#[derive(Debug, Clone, PartialEq)]
pub struct NewServer {
    pub server_id: String,
    pub validator: String,
    pub name: String,
    pub ip_address: Option<String>,
    pub labels: Value,
    pub gpu_count: i32,
    pub cpu_per_gpu: i32,
    pub memory_per_gpu: i32,
    pub hourly_cost: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpu {
    pub gpu_id: String,
    pub validator: Option<String>,
    pub server_id: String,
    pub deployment_id: Option<String>,
    pub device_info: Value,
    pub model_short_ref: String,
    pub verified: bool,
}

impl Gpu {
    pub fn from_row(r: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(Gpu {
            gpu_id: r.try_get("gpu_id")?,
            validator: r.try_get("validator")?,
            server_id: r.try_get("server_id")?,
            deployment_id: r.try_get("deployment_id")?,
            device_info: r.try_get::<Json<Value>, _>("device_info")?.0,
            model_short_ref: r.try_get("model_short_ref")?,
            verified: r.try_get::<Option<bool>, _>("verified")?.unwrap_or(false),
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewGpu {
    pub gpu_id: String,
    pub device_info: Value,
    pub model_short_ref: String,
}

/// A chute as the miner stores it. `Default` is every field empty (no GPUs, no dates):
/// for code that builds one from a few known fields, tests and benches mostly.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Chute {
    pub chute_id: String,
    pub validator: String,
    pub name: Option<String>,
    pub image: String,
    pub code: String,
    pub filename: String,
    pub ref_str: String,
    pub version: String,
    pub supported_gpus: Vec<String>,
    pub gpu_count: i32,
    #[serde(with = "py_datetime")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(with = "py_datetime")]
    pub updated_at: Option<DateTime<Utc>>,
    pub ban_reason: Option<String>,
    pub chutes_version: Option<String>,
}

impl Chute {
    pub fn from_row(r: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(Chute {
            chute_id: r.try_get("chute_id")?,
            validator: r.try_get("validator")?,
            name: r.try_get("name")?,
            image: r.try_get("image")?,
            code: r.try_get("code")?,
            filename: r.try_get("filename")?,
            ref_str: r.try_get("ref_str")?,
            version: r.try_get("version")?,
            supported_gpus: r.try_get("supported_gpus")?,
            gpu_count: r.try_get("gpu_count")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
            ban_reason: r.try_get("ban_reason")?,
            chutes_version: r.try_get("chutes_version")?,
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub deployment_id: String,
    pub instance_id: Option<String>,
    pub validator: String,
    pub host: Option<String>,
    pub port: Option<i32>,
    pub chute_id: String,
    pub server_id: String,
    pub version: String,
    pub active: bool,
    #[serde(with = "py_datetime")]
    pub verified_at: Option<DateTime<Utc>>,
    pub stub: bool,
    pub job_id: Option<String>,
    pub config_id: Option<String>,
    #[serde(with = "py_datetime")]
    pub created_at: Option<DateTime<Utc>>,
    /// When the validator activated the instance (not in the original's API output).
    #[serde(skip)]
    pub activated_at: Option<DateTime<Utc>>,
    /// Copied from the chute at insert; the successor never preempts private chutes.
    #[serde(skip)]
    pub preemptible: bool,
}

impl Deployment {
    pub fn from_row(r: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(Deployment {
            deployment_id: r.try_get("deployment_id")?,
            instance_id: r.try_get("instance_id")?,
            validator: r.try_get("validator")?,
            host: r.try_get("host")?,
            port: r.try_get("port")?,
            chute_id: r.try_get("chute_id")?,
            server_id: r.try_get("server_id")?,
            version: r.try_get("version")?,
            active: r.try_get::<Option<bool>, _>("active")?.unwrap_or(false),
            verified_at: r.try_get("verified_at")?,
            stub: r.try_get::<Option<bool>, _>("stub")?.unwrap_or(false),
            job_id: r.try_get("job_id")?,
            config_id: r.try_get("config_id")?,
            created_at: r.try_get("created_at")?,
            activated_at: r.try_get("activated_at")?,
            preemptible: r.try_get::<Option<bool>, _>("preemptible")?.unwrap_or(true),
        })
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct NewDeployment {
    pub deployment_id: String,
    pub validator: String,
    pub chute_id: String,
    pub server_id: String,
    pub version: String,
    pub job_id: Option<String>,
    pub config_id: Option<String>,
}

/// A deployment with its chute and GPUs, as `GET /servers/` nests it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeploymentView {
    #[serde(flatten)]
    pub deployment: Deployment,
    pub chute: Option<Chute>,
    pub gpus: Vec<Gpu>,
    /// Not a column; used for purge responses.
    #[serde(skip)]
    pub server_name: Option<String>,
}

/// A server with its GPUs and deployments, as `GET /servers/` returns it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerView {
    #[serde(flatten)]
    pub server: Server,
    pub gpus: Vec<Gpu>,
    pub deployments: Vec<DeploymentView>,
}

/// A `deployment_audit` row; timestamps are UTC wall-clock.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRow {
    pub deployment_id: String,
    pub validator: String,
    pub instance_id: Option<String>,
    pub chute_id: String,
    pub version: String,
    pub created_at: NaiveDateTime,
    pub verified_at: Option<NaiveDateTime>,
    pub deleted_at: Option<NaiveDateTime>,
}

impl AuditRow {
    pub fn from_row(r: &PgRow) -> Result<Self, sqlx::Error> {
        Ok(AuditRow {
            deployment_id: r.try_get("deployment_id")?,
            validator: r.try_get("validator")?,
            instance_id: r.try_get("instance_id")?,
            chute_id: r.try_get("chute_id")?,
            version: r.try_get("version")?,
            created_at: r.try_get("created_at")?,
            verified_at: r.try_get("verified_at")?,
            deleted_at: r.try_get("deleted_at")?,
        })
    }

    /// The row as the original exporter serialised it: datetimes as ISO strings.
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "deployment_id": self.deployment_id,
            "validator": self.validator,
            "instance_id": self.instance_id,
            "chute_id": self.chute_id,
            "version": self.version,
            "created_at": crate::iso(&self.created_at),
            "verified_at": self.verified_at.as_ref().map(crate::iso),
            "deleted_at": self.deleted_at.as_ref().map(crate::iso),
        })
    }
}
