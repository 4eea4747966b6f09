//! Gepetto's in-memory copy of the inventory (servers, GPUs, deployments, chutes
//! without their code), so a decision reads memory instead of reloading every row
//! from Postgres.
//!
//! Postgres stays the authority and the only allocation path: every write Gepetto
//! makes goes to the database first ([`Db::create_deployment_row`] with its
//! constraint for GPUs) and is then applied here from what the database returned.
//! Rows other processes write (the API adds servers and GPUs, locks servers) come in
//! by a full reload: at the first use, on every autoscaler and reconciler tick, after
//! an allocation the database refused, and after the rare deletes that cascade
//! (GPU, server).
//!
//! A reload must not lose a write that raced it (read before the write committed,
//! stored after the write was applied): writes hold the read side of `sync` across
//! their database call and their apply, a reload holds its write side across its
//! read and its replace.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};

use chrono::Utc;
use miner_db::{Chute, Db, DbError, Deployment, DeploymentKey, FleetRows, Gpu, NewDeployment, Server};
use tokio::sync::RwLock;

#[derive(Default)]
struct Rows {
    servers: HashMap<String, Server>,
    gpus: HashMap<String, Gpu>,
    deployments: HashMap<String, Deployment>,
    chutes: HashMap<String, Chute>,
    private: HashSet<String>,
}

impl Rows {
    fn from_db(rows: FleetRows) -> Rows {
        let FleetRows { servers, gpus, deployments, chutes, private_chutes } = rows;
        Rows {
            servers: servers.into_iter().map(|s| (s.server_id.clone(), s)).collect(),
            gpus: gpus
                .into_iter()
                .map(|mut g| {
                    g.device_info = serde_json::Value::Null; // not needed for decisions
                    (g.gpu_id.clone(), g)
                })
                .collect(),
            deployments: deployments.into_iter().map(|d| (d.deployment_id.clone(), d)).collect(),
            chutes: chutes
                .into_iter()
                .map(|mut c| {
                    c.code.clear();
                    (c.chute_id.clone(), c)
                })
                .collect(),
            private: private_chutes.into_iter().collect(),
        }
    }

    /// The rows in the order [`Db::fleet_rows`] returns them.
    fn to_rows(&self) -> FleetRows {
        let mut servers: Vec<Server> = self.servers.values().cloned().collect();
        servers.sort_by(|a, b| a.name.cmp(&b.name));
        let mut gpus: Vec<Gpu> = self.gpus.values().cloned().collect();
        gpus.sort_by(|a, b| a.gpu_id.cmp(&b.gpu_id));
        let mut deployments: Vec<Deployment> = self.deployments.values().cloned().collect();
        deployments.sort_by(|a, b| (a.created_at, &a.deployment_id).cmp(&(b.created_at, &b.deployment_id)));
        let mut chutes: Vec<Chute> = self.chutes.values().cloned().collect();
        chutes.sort_by(|a, b| a.chute_id.cmp(&b.chute_id));
        let mut private_chutes: Vec<String> = self.private.iter().cloned().collect();
        private_chutes.sort();
        FleetRows { servers, gpus, deployments, chutes, private_chutes }
    }

    fn remove_deployment(&mut self, deployment_id: &str) {
        self.deployments.remove(deployment_id);
        for g in self.gpus.values_mut() {
            if g.deployment_id.as_deref() == Some(deployment_id) {
                g.deployment_id = None;
            }
        }
    }

    fn deployments_matching(&mut self, key: DeploymentKey, value: &str) -> Vec<&mut Deployment> {
        self.deployments
            .values_mut()
            .filter(|d| match key {
                DeploymentKey::Instance => d.instance_id.as_deref() == Some(value),
                DeploymentKey::Job => d.job_id.as_deref() == Some(value),
                DeploymentKey::Config => d.config_id.as_deref() == Some(value),
                DeploymentKey::Chute => d.chute_id == value,
                DeploymentKey::Deployment => d.deployment_id == value,
            })
            .collect()
    }
}

/// The in-memory inventory over a [`Db`]; see the module documentation.
pub struct Inventory {
    db: Db,
    rows: Mutex<Option<Rows>>,
    sync: RwLock<()>,
}

impl Inventory {
    pub fn new(db: Db) -> Inventory {
        Inventory { db, rows: Mutex::new(None), sync: RwLock::new(()) }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Rows>> {
        self.rows.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies `f` to the rows when they are loaded (before the first load there is
    /// nothing to keep current: the load reads the write).
    fn apply(&self, f: impl FnOnce(&mut Rows)) {
        if let Some(rows) = self.lock().as_mut() {
            f(rows);
        }
    }

    /// Replaces the copy with the database's rows.
    pub async fn reload(&self) -> Result<(), DbError> {
        let _writes_wait = self.sync.write().await;
        let rows = self.db.fleet_rows().await?;
        *self.lock() = Some(Rows::from_db(rows));
        Ok(())
    }

    async fn loaded(&self) -> Result<(), DbError> {
        if self.lock().is_none() {
            self.reload().await?;
        }
        Ok(())
    }

    /// Every row, as [`Db::fleet_rows`] would return them (chutes without code).
    pub async fn rows(&self) -> Result<FleetRows, DbError> {
        self.loaded().await?;
        Ok(self.lock().as_ref().map(Rows::to_rows).unwrap_or_default())
    }

    /// The chute row, without its code.
    pub async fn chute(&self, chute_id: &str) -> Result<Option<Chute>, DbError> {
        self.loaded().await?;
        Ok(self.lock().as_ref().and_then(|r| r.chutes.get(chute_id).cloned()))
    }

    pub async fn server(&self, server_id: &str) -> Result<Option<Server>, DbError> {
        self.loaded().await?;
        Ok(self.lock().as_ref().and_then(|r| r.servers.get(server_id).cloned()))
    }

    // ---- writes: the database first, then the copy ----

    /// Stores a chute fetched from the validator (its code goes to the database only).
    pub async fn upsert_chute(&self, chute: &Chute, preemptible: bool) -> Result<(), DbError> {
        let _write = self.sync.read().await;
        self.db.upsert_chute(chute).await?;
        self.db.set_chute_preemptible(&chute.chute_id, preemptible).await?;
        let mut c = chute.clone();
        c.code.clear();
        self.apply(|r| {
            if preemptible {
                r.private.remove(&c.chute_id);
            } else {
                r.private.insert(c.chute_id.clone());
            }
            r.chutes.insert(c.chute_id.clone(), c);
        });
        Ok(())
    }

    /// Deletes a chute; its deployments go with it (the foreign key cascades).
    pub async fn delete_chute(&self, chute_id: &str) -> Result<bool, DbError> {
        let _write = self.sync.read().await;
        let done = self.db.delete_chute(chute_id).await?;
        self.apply(|r| {
            r.chutes.remove(chute_id);
            r.private.remove(chute_id);
            let gone: Vec<String> = r
                .deployments
                .values()
                .filter(|d| d.chute_id == chute_id)
                .map(|d| d.deployment_id.clone())
                .collect();
            for d in gone {
                r.remove_deployment(&d);
            }
        });
        Ok(done)
    }

    pub async fn update_chute_images(
        &self,
        chute_ids: &[String],
        image: &str,
        chutes_version: Option<&str>,
    ) -> Result<u64, DbError> {
        let _write = self.sync.read().await;
        let n = self.db.update_chute_images(chute_ids, image, chutes_version).await?;
        self.apply(|r| {
            for id in chute_ids {
                if let Some(c) = r.chutes.get_mut(id) {
                    c.image = image.to_owned();
                    if let Some(v) = chutes_version {
                        c.chutes_version = Some(v.to_owned());
                    }
                }
            }
        });
        Ok(n)
    }

    pub async fn set_gpu_verified(&self, gpu_id: &str) -> Result<bool, DbError> {
        let stale = {
            let _write = self.sync.read().await;
            if !self.db.set_gpu_verified(gpu_id).await? {
                return Ok(false);
            }
            let mut known = false;
            self.apply(|r| {
                if let Some(g) = r.gpus.get_mut(gpu_id) {
                    g.verified = true;
                    known = true;
                }
            });
            !known && self.lock().is_some()
        };
        if stale {
            // A GPU of a server the API added since the last reload: read the rows again
            // now, or a chute created right after would find no server to place on.
            self.reload().await?;
        }
        Ok(true)
    }

    pub async fn delete_gpu(&self, gpu_id: &str) -> Result<bool, DbError> {
        let _write = self.sync.read().await;
        let done = self.db.delete_gpu(gpu_id).await?;
        self.apply(|r| {
            r.gpus.remove(gpu_id);
        });
        Ok(done)
    }

    /// Deletes a server; its GPUs and deployments cascade.
    pub async fn delete_server(&self, server_id: &str) -> Result<bool, DbError> {
        let _write = self.sync.read().await;
        let done = self.db.delete_server(server_id).await?;
        self.apply(|r| {
            r.servers.remove(server_id);
            r.gpus.retain(|_, g| g.server_id != server_id);
            r.deployments.retain(|_, d| d.server_id != server_id);
        });
        Ok(done)
    }

    /// The single allocation path ([`Db::create_deployment_row`]), then the copy.
    pub async fn create_deployment(
        &self,
        new: &NewDeployment,
        gpu_count: usize,
    ) -> Result<Vec<String>, DbError> {
        let _write = self.sync.read().await;
        let (row, gpus) = self.db.create_deployment_row(new, gpu_count).await?;
        self.apply(|r| {
            for g in &gpus {
                if let Some(gpu) = r.gpus.get_mut(g) {
                    gpu.deployment_id = Some(row.deployment_id.clone());
                }
            }
            r.deployments.insert(row.deployment_id.clone(), row);
        });
        Ok(gpus)
    }

    pub async fn take_deployment(&self, deployment_id: &str) -> Result<Option<Deployment>, DbError> {
        let _write = self.sync.read().await;
        let taken = self.db.take_deployment(deployment_id).await?;
        self.apply(|r| r.remove_deployment(deployment_id));
        Ok(taken)
    }

    pub async fn set_deployment_config(&self, deployment_id: &str, config_id: &str) -> Result<bool, DbError> {
        let _write = self.sync.read().await;
        let done = self.db.set_deployment_config(deployment_id, config_id).await?;
        self.apply(|r| {
            if let Some(d) = r.deployments.get_mut(deployment_id) {
                d.config_id = Some(config_id.to_owned());
            }
        });
        Ok(done)
    }

    pub async fn mark_deployed(&self, deployment_id: &str, host: &str, port: i32) -> Result<bool, DbError> {
        let _write = self.sync.read().await;
        let done = self.db.mark_deployed(deployment_id, host, port).await?;
        self.apply(|r| {
            if let Some(d) = r.deployments.get_mut(deployment_id) {
                d.host = Some(host.to_owned());
                d.port = Some(port);
                d.stub = false;
            }
        });
        Ok(done)
    }

    pub async fn set_instance(
        &self,
        key: DeploymentKey,
        value: &str,
        instance_id: &str,
    ) -> Result<Option<String>, DbError> {
        let _write = self.sync.read().await;
        let stored = self.db.set_instance(key, value, instance_id).await?;
        let key = if key == DeploymentKey::Config { key } else { DeploymentKey::Deployment };
        self.apply(|r| {
            for d in r.deployments_matching(key, value) {
                d.instance_id = Some(instance_id.to_owned());
            }
        });
        Ok(stored)
    }

    pub async fn verify_instance(&self, instance_id: &str) -> Result<u64, DbError> {
        let _write = self.sync.read().await;
        let n = self.db.verify_instance(instance_id).await?;
        let now = Utc::now();
        self.apply(|r| {
            for d in r.deployments_matching(DeploymentKey::Instance, instance_id) {
                d.verified_at = d.verified_at.or(Some(now));
            }
        });
        Ok(n)
    }

    pub async fn activate_instance(
        &self,
        config_id: Option<&str>,
        instance_id: &str,
    ) -> Result<u64, DbError> {
        let _write = self.sync.read().await;
        let n = self.db.activate_instance(config_id, instance_id).await?;
        let now = Utc::now();
        self.apply(|r| {
            for d in r.deployments.values_mut() {
                let hit = config_id.is_some_and(|c| d.config_id.as_deref() == Some(c))
                    || d.instance_id.as_deref() == Some(instance_id);
                if hit {
                    d.active = true;
                    d.stub = false;
                    d.activated_at = d.activated_at.or(Some(now));
                    d.instance_id.get_or_insert_with(|| instance_id.to_owned());
                }
            }
        });
        Ok(n)
    }
}
