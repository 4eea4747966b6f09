//! What `minerctl status` shows: the miner API's `GET /servers/` (servers with their GPUs
//! and deployments, each deployment with its chute and GPUs; chutes-miner.md §6.2) as typed
//! structs, and the table made from them.
//!
//! Parsing keeps only the fields shown and ignores the others, so a newer API with more
//! fields still reads; a missing or mistyped field is an error naming its path
//! (`[0].deployments[1].chute.version`). Rendering is a pure function of the servers and
//! `now`, so the table is snapshot-tested.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A tracked server, as `GET /servers/` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Server {
    pub server_id: String,
    /// The Kubernetes node name.
    pub name: String,
    pub ip_address: Option<String>,
    /// Price per GPU per hour.
    pub hourly_cost: f64,
    /// Locked servers are left alone by scale-up, scale-down and preemption.
    #[serde(default)]
    pub locked: bool,
    pub created_at: Option<DateTime<Utc>>,
    pub gpus: Vec<Gpu>,
    pub deployments: Vec<Deployment>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpu {
    pub gpu_id: String,
    /// The GPU type as the validator names it, e.g. `h100_sxm`.
    pub model_short_ref: String,
    /// Proven to a validator by GraVal.
    pub verified: bool,
    /// The deployment the GPU is allocated to.
    pub deployment_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub deployment_id: String,
    pub chute_id: String,
    /// The chute version deployed.
    pub version: String,
    /// The chute's row; `None` when the API has no chute for it (deleted meanwhile).
    pub chute: Option<Chute>,
    pub instance_id: Option<String>,
    /// Set for a deployment that runs a job (a one-off run, not a serving instance).
    pub job_id: Option<String>,
    /// Created by Gepetto, its Kubernetes Job not made yet.
    pub stub: bool,
    /// The validator verified the instance.
    pub verified_at: Option<DateTime<Utc>>,
    /// The validator activated the instance: it receives invocations.
    pub active: bool,
    pub created_at: Option<DateTime<Utc>>,
    /// The deployment's GPUs (ids; the server's GPU list has their details).
    pub gpus: Vec<GpuRef>,
}

/// A GPU named in a deployment: the API nests whole GPU rows, only the id is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuRef {
    pub gpu_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Chute {
    pub chute_id: String,
    pub name: Option<String>,
    pub version: String,
}

/// Reads `GET /servers/`'s answer; the error names the path of the bad field.
pub fn parse_servers(json: &[u8]) -> Result<Vec<Server>, String> {
    serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(json)).map_err(|e| {
        match e.path().to_string() {
            root if root == "." => e.into_inner().to_string(),
            path => format!("{path}: {}", e.into_inner()),
        }
    })
}

impl Deployment {
    /// Where the deployment is in its life: `stub` (no Job yet), `starting` (Job made,
    /// the validator has not verified it), `verified`, `active`; ` (job)` when it runs a job.
    pub fn state(&self) -> String {
        let base = if self.active {
            "active"
        } else if self.verified_at.is_some() {
            "verified"
        } else if self.stub {
            "stub"
        } else {
            "starting"
        };
        match self.job_id {
            Some(_) => format!("{base} (job)"),
            None => base.to_string(),
        }
    }

    /// The chute's name, or its id when the chute row (or its name) is gone.
    pub fn chute_name(&self) -> String {
        match self.chute.as_ref().and_then(|c| c.name.as_deref()) {
            Some(name) => name.to_string(),
            None => self.chute_id.clone(),
        }
    }
}

/// The first 8 characters of an id (deployment ids are UUIDs; 8 tell them apart).
pub fn short_id(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

/// An age like `kubectl`'s: `42s`, `3m`, `2h`, `5d`; `-` when unknown, `0s` when in the future.
pub fn age(created: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    let Some(created) = created else { return "-".into() };
    let s = (now - created).num_seconds().max(0);
    match s {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 48 * 3600 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// Left-aligned columns two spaces apart, headers first; no trailing spaces.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            line.extend(std::iter::repeat_n(' ', w - cell.chars().count()));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The three tables `minerctl status` prints: servers, GPUs, deployments.
pub fn render(servers: &[Server], now: DateTime<Utc>) -> String {
    if servers.is_empty() {
        return "no servers tracked by the miner API (add one with `minerctl add-node`)\n".into();
    }
    let server_rows: Vec<Vec<String>> = servers
        .iter()
        .map(|s| {
            let verified = s.gpus.iter().filter(|g| g.verified).count();
            vec![
                s.name.clone(),
                s.ip_address.clone().unwrap_or_else(|| "-".into()),
                format!("{verified}/{}", s.gpus.len()),
                format!("{:.2}", s.hourly_cost),
                if s.locked { "locked".into() } else { String::new() },
                s.deployments.len().to_string(),
                age(s.created_at, now),
            ]
        })
        .collect();
    let gpu_rows: Vec<Vec<String>> = servers
        .iter()
        .flat_map(|s| {
            s.gpus.iter().map(|g| {
                vec![
                    g.gpu_id.clone(),
                    s.name.clone(),
                    g.model_short_ref.clone(),
                    if g.verified { "yes" } else { "no" }.into(),
                    g.deployment_id.as_deref().map_or_else(|| "-".into(), |d| short_id(d).to_string()),
                ]
            })
        })
        .collect();
    let deployment_rows: Vec<Vec<String>> = servers
        .iter()
        .flat_map(|s| {
            s.deployments.iter().map(|d| {
                vec![
                    short_id(&d.deployment_id).to_string(),
                    d.chute_name(),
                    d.version.clone(),
                    s.name.clone(),
                    d.gpus.len().to_string(),
                    age(d.created_at, now),
                    d.state(),
                ]
            })
        })
        .collect();
    let mut out =
        table(&["SERVER", "IP", "VERIFIED/GPUS", "$/GPU/H", "LOCK", "DEPLOYMENTS", "AGE"], &server_rows);
    out.push('\n');
    out.push_str(&table(&["GPU", "SERVER", "MODEL", "VERIFIED", "DEPLOYMENT"], &gpu_rows));
    out.push('\n');
    if deployment_rows.is_empty() {
        out.push_str("no deployments\n");
    } else {
        out.push_str(&table(
            &["DEPLOYMENT", "CHUTE", "VERSION", "SERVER", "GPUS", "AGE", "STATE"],
            &deployment_rows,
        ));
    }
    out
}
