//! The miner's inventory in Postgres: servers, their GPUs, chutes and deployments,
//! plus the `deployment_audit` trail maintained by triggers.
//!
//! Queries are plain runtime `sqlx::query` calls (no compile-time checking), so the
//! crate builds without a database or an offline cache. Rows are mapped by hand in
//! [`model`]; their `Serialize` output is the JSON the original API returned.
//!
//! Invariants kept by the schema rather than by callers:
//! * a GPU belongs to at most one deployment, on its own server (composite FK);
//! * deleting a server deletes its GPUs and deployments; deleting a deployment frees
//!   its GPUs and stamps `deployment_audit.deleted_at`.

pub mod migrate;
pub mod model;

use std::collections::HashMap;

use chrono::{DateTime, NaiveDateTime, Utc};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{Acquire, Row};

pub use model::*;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Sql(#[from] sqlx::Error),
    #[error("migration {version}_{name} failed: {source}")]
    Migration { version: &'static str, name: &'static str, source: sqlx::Error },
    #[error("a server named {name} or with id {server_id} is already tracked")]
    DuplicateServer { server_id: String, name: String },
    #[error("GPU {gpu_id} is already tracked")]
    DuplicateGpu { gpu_id: String },
    #[error("server {server_id} has only {free} free verified GPUs, {wanted} wanted")]
    NotEnoughGpus { server_id: String, free: usize, wanted: usize },
    #[error("no {what} {id}")]
    NotFound { what: &'static str, id: String },
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.code().as_deref() == Some("23505"))
}

/// A pool on the inventory database.
#[derive(Clone, Debug)]
pub struct Db {
    pool: PgPool,
}

impl Db {
    /// Connects lazily-checked: fails now if the server cannot be reached.
    pub async fn connect(url: &str) -> Result<Self, DbError> {
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(url)
            .await?;
        Ok(Db { pool })
    }

    pub fn from_pool(pool: PgPool) -> Self {
        Db { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Applies pending migrations under the advisory lock; returns what this call applied.
    pub async fn migrate(&self) -> Result<Vec<&'static str>, DbError> {
        let mut conn = self.pool.acquire().await?;
        let conn = conn.acquire().await?;
        migrate::run(conn).await
    }

    /// Cheap liveness check for readiness probes.
    pub async fn ping(&self) -> Result<(), DbError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    // ---- servers ----

    /// The server whose id or name is `key` (the original's `_get_server`).
    pub async fn find_server(&self, key: &str) -> Result<Option<Server>, DbError> {
        if !matchable(key) {
            return Ok(None);
        }
        let row = sqlx::query("SELECT * FROM servers WHERE server_id = $1 OR name = $1 LIMIT 1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Server::from_row).transpose().map_err(Into::into)
    }

    /// Every server with its GPUs and deployments (each with its chute and GPUs).
    pub async fn list_servers(&self) -> Result<Vec<ServerView>, DbError> {
        let servers =
            sqlx::query("SELECT * FROM servers ORDER BY created_at, name").fetch_all(&self.pool).await?;
        let servers = servers.iter().map(Server::from_row).collect::<Result<Vec<_>, _>>()?;
        let gpus = sqlx::query("SELECT * FROM gpus ORDER BY gpu_id").fetch_all(&self.pool).await?;
        let gpus = gpus.iter().map(Gpu::from_row).collect::<Result<Vec<_>, _>>()?;
        let deployments =
            self.deployment_views("SELECT * FROM deployments ORDER BY created_at, deployment_id").await?;

        let mut gpus_by_server: HashMap<String, Vec<Gpu>> = HashMap::new();
        for g in gpus {
            gpus_by_server.entry(g.server_id.clone()).or_default().push(g);
        }
        let mut deps_by_server: HashMap<String, Vec<DeploymentView>> = HashMap::new();
        for d in deployments {
            deps_by_server.entry(d.deployment.server_id.clone()).or_default().push(d);
        }
        Ok(servers
            .into_iter()
            .map(|server| ServerView {
                gpus: gpus_by_server.remove(&server.server_id).unwrap_or_default(),
                deployments: deps_by_server.remove(&server.server_id).unwrap_or_default(),
                server,
            })
            .collect())
    }

    /// Inserts a newly tracked server. A name or id already present is [`DbError::DuplicateServer`].
    pub async fn insert_server(&self, s: &NewServer) -> Result<Server, DbError> {
        let row = sqlx::query(
            "INSERT INTO servers (server_id, validator, name, ip_address, status, labels, gpu_count, \
             cpu_per_gpu, memory_per_gpu, hourly_cost, locked) \
             VALUES ($1, $2, $3, $4, 'Ready', $5, $6, $7, $8, $9, FALSE) RETURNING *",
        )
        .bind(&s.server_id)
        .bind(&s.validator)
        .bind(&s.name)
        .bind(&s.ip_address)
        .bind(sqlx::types::Json(&s.labels))
        .bind(s.gpu_count)
        .bind(s.cpu_per_gpu)
        .bind(s.memory_per_gpu)
        .bind(s.hourly_cost)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                DbError::DuplicateServer { server_id: s.server_id.clone(), name: s.name.clone() }
            } else {
                e.into()
            }
        })?;
        Ok(Server::from_row(&row)?)
    }

    pub async fn set_verification_port(&self, server_id: &str, port: i32) -> Result<(), DbError> {
        self.update_server(server_id, "UPDATE servers SET verification_port = $2 WHERE server_id = $1", port)
            .await
    }

    pub async fn set_seed(&self, server_id: &str, seed: i64) -> Result<(), DbError> {
        self.update_server(server_id, "UPDATE servers SET seed = $2 WHERE server_id = $1", seed).await
    }

    async fn update_server<T>(&self, server_id: &str, sql: &'static str, value: T) -> Result<(), DbError>
    where
        T: for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send,
    {
        let done = sqlx::query(sql).bind(server_id).bind(value).execute(&self.pool).await?;
        if done.rows_affected() == 0 {
            return Err(DbError::NotFound { what: "server", id: server_id.to_owned() });
        }
        Ok(())
    }

    /// Sets `locked`; returns the updated server, or `None` when `key` matches none.
    pub async fn set_locked(&self, key: &str, locked: bool) -> Result<Option<Server>, DbError> {
        if !matchable(key) {
            return Ok(None);
        }
        let row = sqlx::query("UPDATE servers SET locked = $2 WHERE server_id = $1 OR name = $1 RETURNING *")
            .bind(key)
            .bind(locked)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Server::from_row).transpose().map_err(Into::into)
    }

    /// Deletes a server with its GPUs and deployments; false when it did not exist.
    pub async fn delete_server(&self, server_id: &str) -> Result<bool, DbError> {
        let done = sqlx::query("DELETE FROM servers WHERE server_id = $1")
            .bind(server_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    // ---- gpus ----

    /// Inserts the GPUs GraVal reported for a server, unverified, in one transaction.
    pub async fn insert_gpus(
        &self,
        server_id: &str,
        validator: &str,
        gpus: &[NewGpu],
    ) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await?;
        for g in gpus {
            sqlx::query(
                "INSERT INTO gpus (gpu_id, validator, server_id, device_info, model_short_ref, verified) \
                 VALUES ($1, $2, $3, $4, $5, FALSE)",
            )
            .bind(&g.gpu_id)
            .bind(validator)
            .bind(server_id)
            .bind(sqlx::types::Json(&g.device_info))
            .bind(&g.model_short_ref)
            .execute(&mut *tx)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    DbError::DuplicateGpu { gpu_id: g.gpu_id.clone() }
                } else {
                    e.into()
                }
            })?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn server_gpus(&self, server_id: &str) -> Result<Vec<Gpu>, DbError> {
        let rows = sqlx::query("SELECT * FROM gpus WHERE server_id = $1 ORDER BY gpu_id")
            .bind(server_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(Gpu::from_row).collect::<Result<_, _>>()?)
    }

    /// Marks every GPU of a server verified (end of a successful add-node).
    pub async fn verify_server_gpus(&self, server_id: &str) -> Result<u64, DbError> {
        let done = sqlx::query("UPDATE gpus SET verified = TRUE WHERE server_id = $1")
            .bind(server_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    // ---- chutes ----

    /// Inserts or replaces the local chute row (keyed by chute_id, as the original).
    pub async fn upsert_chute(&self, c: &Chute) -> Result<(), DbError> {
        sqlx::query(
            "INSERT INTO chutes (chute_id, validator, name, image, code, filename, ref_str, version, supported_gpus, \
             gpu_count, chutes_version, ban_reason) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12) \
             ON CONFLICT (chute_id) DO UPDATE SET validator = EXCLUDED.validator, name = EXCLUDED.name, \
             image = EXCLUDED.image, code = EXCLUDED.code, filename = EXCLUDED.filename, ref_str = EXCLUDED.ref_str, \
             version = EXCLUDED.version, supported_gpus = EXCLUDED.supported_gpus, gpu_count = EXCLUDED.gpu_count, \
             chutes_version = EXCLUDED.chutes_version, ban_reason = EXCLUDED.ban_reason, updated_at = NOW()",
        )
        .bind(&c.chute_id)
        .bind(&c.validator)
        .bind(&c.name)
        .bind(&c.image)
        .bind(&c.code)
        .bind(&c.filename)
        .bind(&c.ref_str)
        .bind(&c.version)
        .bind(&c.supported_gpus)
        .bind(c.gpu_count)
        .bind(&c.chutes_version)
        .bind(&c.ban_reason)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    // ---- deployments ----

    /// Inserts a stub deployment and allocates `gpu_count` free verified GPUs of its
    /// server to it, atomically: concurrent callers never get the same GPU (rows are
    /// locked with `FOR UPDATE SKIP LOCKED`), and a shortage inserts nothing.
    pub async fn create_deployment(
        &self,
        d: &NewDeployment,
        gpu_count: usize,
    ) -> Result<Vec<String>, DbError> {
        Ok(self.create_deployment_row(d, gpu_count).await?.1)
    }

    /// [`Db::create_deployment`], also returning the inserted row (Gepetto keeps its
    /// in-memory inventory current from it). The same transaction and constraint:
    /// there is no second allocation path.
    pub async fn create_deployment_row(
        &self,
        d: &NewDeployment,
        gpu_count: usize,
    ) -> Result<(Deployment, Vec<String>), DbError> {
        let mut tx = self.pool.begin().await?;
        let free: Vec<String> = sqlx::query(
            "SELECT gpu_id FROM gpus WHERE server_id = $1 AND deployment_id IS NULL AND verified \
             ORDER BY gpu_id LIMIT $2 FOR UPDATE SKIP LOCKED",
        )
        .bind(&d.server_id)
        .bind(gpu_count as i64)
        .fetch_all(&mut *tx)
        .await?
        .iter()
        .map(|r| r.try_get(0))
        .collect::<Result<_, _>>()?;
        if free.len() < gpu_count {
            return Err(DbError::NotEnoughGpus {
                server_id: d.server_id.clone(),
                free: free.len(),
                wanted: gpu_count,
            });
        }
        let row = sqlx::query(
            "INSERT INTO deployments (deployment_id, validator, chute_id, server_id, version, job_id, config_id, \
             host, active, stub, preemptible) VALUES ($1,$2,$3,$4,$5,$6,$7,\
             (SELECT ip_address FROM servers WHERE server_id = $4), FALSE, TRUE, \
             COALESCE((SELECT preemptible FROM chutes WHERE chute_id = $3), TRUE)) RETURNING *",
        )
        .bind(&d.deployment_id)
        .bind(&d.validator)
        .bind(&d.chute_id)
        .bind(&d.server_id)
        .bind(&d.version)
        .bind(&d.job_id)
        .bind(&d.config_id)
        .fetch_one(&mut *tx)
        .await?;
        let row = Deployment::from_row(&row)?;
        self.allocate(&mut tx, &d.deployment_id, &free).await?;
        tx.commit().await?;
        Ok((row, free))
    }

    /// Points the given GPUs at a deployment; refuses GPUs already allocated.
    async fn allocate(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        deployment_id: &str,
        gpu_ids: &[String],
    ) -> Result<(), DbError> {
        let done = sqlx::query(
            "UPDATE gpus SET deployment_id = $1 WHERE gpu_id = ANY($2) AND deployment_id IS NULL",
        )
        .bind(deployment_id)
        .bind(gpu_ids)
        .execute(&mut **tx)
        .await?;
        if done.rows_affected() as usize != gpu_ids.len() {
            return Err(DbError::NotEnoughGpus {
                server_id: String::new(),
                free: done.rows_affected() as usize,
                wanted: gpu_ids.len(),
            });
        }
        Ok(())
    }

    /// Allocates specific GPUs to an existing deployment (all or none).
    pub async fn allocate_gpus(&self, deployment_id: &str, gpu_ids: &[String]) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await?;
        self.allocate(&mut tx, deployment_id, gpu_ids).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn set_deployment_verified(
        &self,
        deployment_id: &str,
        instance_id: &str,
    ) -> Result<(), DbError> {
        sqlx::query("UPDATE deployments SET instance_id = $2, verified_at = NOW() WHERE deployment_id = $1")
            .bind(deployment_id)
            .bind(instance_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn deployment(&self, deployment_id: &str) -> Result<Option<DeploymentView>, DbError> {
        if !matchable(deployment_id) {
            return Ok(None);
        }
        let rows = sqlx::query("SELECT * FROM deployments WHERE deployment_id = $1")
            .bind(deployment_id)
            .fetch_all(&self.pool)
            .await?;
        Ok(self.attach(rows).await?.into_iter().next())
    }

    /// Deployments of one server; `jobs`: `Some(true)` only jobs, `Some(false)` no jobs.
    pub async fn server_deployments(
        &self,
        server_id: &str,
        jobs: Option<bool>,
    ) -> Result<Vec<DeploymentView>, DbError> {
        let sql = match jobs {
            None => "SELECT * FROM deployments WHERE server_id = $1 ORDER BY created_at, deployment_id",
            Some(true) => {
                "SELECT * FROM deployments WHERE server_id = $1 AND job_id IS NOT NULL ORDER BY created_at, deployment_id"
            }
            Some(false) => {
                "SELECT * FROM deployments WHERE server_id = $1 AND job_id IS NULL ORDER BY created_at, deployment_id"
            }
        };
        let rows = sqlx::query(sql).bind(server_id).fetch_all(&self.pool).await?;
        self.attach(rows).await
    }

    pub async fn all_deployments(&self) -> Result<Vec<DeploymentView>, DbError> {
        self.deployment_views("SELECT * FROM deployments ORDER BY created_at, deployment_id").await
    }

    /// Deletes a deployment row (GPUs are freed, the audit row gets `deleted_at`).
    pub async fn delete_deployment(&self, deployment_id: &str) -> Result<bool, DbError> {
        let done = sqlx::query("DELETE FROM deployments WHERE deployment_id = $1")
            .bind(deployment_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    async fn deployment_views(&self, sql: &'static str) -> Result<Vec<DeploymentView>, DbError> {
        let rows = sqlx::query(sql).fetch_all(&self.pool).await?;
        self.attach(rows).await
    }

    /// Joins chute, server name and GPUs onto deployment rows.
    async fn attach(&self, rows: Vec<sqlx::postgres::PgRow>) -> Result<Vec<DeploymentView>, DbError> {
        let deployments = rows.iter().map(Deployment::from_row).collect::<Result<Vec<_>, _>>()?;
        if deployments.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<&str> = deployments.iter().map(|d| d.deployment_id.as_str()).collect();
        let chute_ids: Vec<&str> = deployments.iter().map(|d| d.chute_id.as_str()).collect();
        let server_ids: Vec<&str> = deployments.iter().map(|d| d.server_id.as_str()).collect();
        let gpus = sqlx::query("SELECT * FROM gpus WHERE deployment_id = ANY($1) ORDER BY gpu_id")
            .bind(&ids)
            .fetch_all(&self.pool)
            .await?;
        let chutes = sqlx::query("SELECT * FROM chutes WHERE chute_id = ANY($1)")
            .bind(&chute_ids)
            .fetch_all(&self.pool)
            .await?;
        let names = sqlx::query("SELECT server_id, name FROM servers WHERE server_id = ANY($1)")
            .bind(&server_ids)
            .fetch_all(&self.pool)
            .await?;
        let mut gpus_by_dep: HashMap<String, Vec<Gpu>> = HashMap::new();
        for g in gpus.iter().map(Gpu::from_row) {
            let g = g?;
            if let Some(d) = g.deployment_id.clone() {
                gpus_by_dep.entry(d).or_default().push(g);
            }
        }
        let chutes: HashMap<String, Chute> = chutes
            .iter()
            .map(|r| Chute::from_row(r).map(|c| (c.chute_id.clone(), c)))
            .collect::<Result<_, _>>()?;
        let names: HashMap<String, String> = names
            .iter()
            .map(|r| Ok::<_, sqlx::Error>((r.try_get("server_id")?, r.try_get("name")?)))
            .collect::<Result<_, _>>()?;
        Ok(deployments
            .into_iter()
            .map(|d| DeploymentView {
                chute: chutes.get(&d.chute_id).cloned(),
                gpus: gpus_by_dep.remove(&d.deployment_id).unwrap_or_default(),
                server_name: names.get(&d.server_id).cloned(),
                deployment: d,
            })
            .collect())
    }

    // ---- scheduler (Gepetto) ----

    /// Every row Gepetto's fleet snapshot is built from, in five queries. Chutes come
    /// without their code (`code` is empty): it can be large and only a ConfigMap needs
    /// it ([`Db::chute_code`]).
    pub async fn fleet_rows(&self) -> Result<FleetRows, DbError> {
        let servers = sqlx::query("SELECT * FROM servers ORDER BY name").fetch_all(&self.pool).await?;
        let gpus = sqlx::query("SELECT * FROM gpus ORDER BY gpu_id").fetch_all(&self.pool).await?;
        let deployments = sqlx::query("SELECT * FROM deployments ORDER BY created_at, deployment_id")
            .fetch_all(&self.pool)
            .await?;
        let chutes = sqlx::query(
            "SELECT chute_id, validator, name, image, ''::TEXT AS code, filename, ref_str, version, \
             supported_gpus, gpu_count, created_at, updated_at, ban_reason, chutes_version \
             FROM chutes ORDER BY chute_id",
        )
        .fetch_all(&self.pool)
        .await?;
        let private =
            sqlx::query("SELECT chute_id FROM chutes WHERE NOT preemptible").fetch_all(&self.pool).await?;
        Ok(FleetRows {
            private_chutes: private.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>()?,
            servers: servers.iter().map(Server::from_row).collect::<Result<_, _>>()?,
            gpus: gpus.iter().map(Gpu::from_row).collect::<Result<_, _>>()?,
            deployments: deployments.iter().map(Deployment::from_row).collect::<Result<_, _>>()?,
            chutes: chutes.iter().map(Chute::from_row).collect::<Result<_, _>>()?,
        })
    }

    pub async fn chute(&self, chute_id: &str) -> Result<Option<Chute>, DbError> {
        let row = sqlx::query("SELECT * FROM chutes WHERE chute_id = $1")
            .bind(chute_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Chute::from_row).transpose().map_err(Into::into)
    }

    /// The code of a chute at `version` (`None` when the chute is not stored at it).
    pub async fn chute_code(&self, chute_id: &str, version: &str) -> Result<Option<String>, DbError> {
        let row = sqlx::query("SELECT code FROM chutes WHERE chute_id = $1 AND version = $2")
            .bind(chute_id)
            .bind(version)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    pub async fn set_chute_preemptible(&self, chute_id: &str, preemptible: bool) -> Result<(), DbError> {
        sqlx::query("UPDATE chutes SET preemptible = $2 WHERE chute_id = $1")
            .bind(chute_id)
            .bind(preemptible)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes a chute (its deployments cascade); false when it was not there.
    pub async fn delete_chute(&self, chute_id: &str) -> Result<bool, DbError> {
        let done =
            sqlx::query("DELETE FROM chutes WHERE chute_id = $1").bind(chute_id).execute(&self.pool).await?;
        Ok(done.rows_affected() > 0)
    }

    /// `image_updated`: new image and chutes version for the listed chutes.
    pub async fn update_chute_images(
        &self,
        chute_ids: &[String],
        image: &str,
        chutes_version: Option<&str>,
    ) -> Result<u64, DbError> {
        let done = sqlx::query(
            "UPDATE chutes SET image = $2, chutes_version = COALESCE($3, chutes_version), updated_at = NOW() \
             WHERE chute_id = ANY($1)",
        )
        .bind(chute_ids)
        .bind(image)
        .bind(chutes_version)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    pub async fn gpu(&self, gpu_id: &str) -> Result<Option<Gpu>, DbError> {
        let row = sqlx::query("SELECT * FROM gpus WHERE gpu_id = $1")
            .bind(gpu_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Gpu::from_row).transpose().map_err(Into::into)
    }

    /// `gpu_verified` (the original filtered on `server_id` and changed nothing).
    pub async fn set_gpu_verified(&self, gpu_id: &str) -> Result<bool, DbError> {
        let done = sqlx::query("UPDATE gpus SET verified = TRUE WHERE gpu_id = $1")
            .bind(gpu_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    pub async fn delete_gpu(&self, gpu_id: &str) -> Result<bool, DbError> {
        let done = sqlx::query("DELETE FROM gpus WHERE gpu_id = $1").bind(gpu_id).execute(&self.pool).await?;
        Ok(done.rows_affected() > 0)
    }

    /// Deletes a deployment row and returns it (GPUs are freed by the FK, the audit
    /// trigger stamps `deleted_at`); `None` when it was already gone.
    pub async fn take_deployment(&self, deployment_id: &str) -> Result<Option<Deployment>, DbError> {
        let row = sqlx::query("DELETE FROM deployments WHERE deployment_id = $1 RETURNING *")
            .bind(deployment_id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(Deployment::from_row).transpose().map_err(Into::into)
    }

    /// Deployments matching one column (`instance_id`, `job_id`, `config_id` or `chute_id`).
    pub async fn deployments_where(
        &self,
        column: DeploymentKey,
        value: &str,
    ) -> Result<Vec<Deployment>, DbError> {
        let sql = match column {
            DeploymentKey::Instance => "SELECT * FROM deployments WHERE instance_id = $1",
            DeploymentKey::Job => "SELECT * FROM deployments WHERE job_id = $1",
            DeploymentKey::Config => "SELECT * FROM deployments WHERE config_id = $1",
            DeploymentKey::Chute => "SELECT * FROM deployments WHERE chute_id = $1",
            DeploymentKey::Deployment => "SELECT * FROM deployments WHERE deployment_id = $1",
        };
        let rows = sqlx::query(sql).bind(value).fetch_all(&self.pool).await?;
        Ok(rows.iter().map(Deployment::from_row).collect::<Result<_, _>>()?)
    }

    /// Records the launch config of a deployment (before its Job exists, so an
    /// `instance_created` naming it finds the row).
    pub async fn set_deployment_config(&self, deployment_id: &str, config_id: &str) -> Result<bool, DbError> {
        let done = sqlx::query("UPDATE deployments SET config_id = $2 WHERE deployment_id = $1")
            .bind(deployment_id)
            .bind(config_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// The Job exists: host and primary NodePort known, no longer a stub.
    pub async fn mark_deployed(&self, deployment_id: &str, host: &str, port: i32) -> Result<bool, DbError> {
        let done =
            sqlx::query("UPDATE deployments SET host = $2, port = $3, stub = FALSE WHERE deployment_id = $1")
                .bind(deployment_id)
                .bind(host)
                .bind(port)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() > 0)
    }

    /// `instance_created`: the instance id of the deployment with this launch config
    /// (or this deployment id); returns the deployment id it was stored on.
    pub async fn set_instance(
        &self,
        key: DeploymentKey,
        value: &str,
        instance_id: &str,
    ) -> Result<Option<String>, DbError> {
        let sql = match key {
            DeploymentKey::Config => {
                "UPDATE deployments SET instance_id = $2 WHERE config_id = $1 RETURNING deployment_id"
            }
            _ => "UPDATE deployments SET instance_id = $2 WHERE deployment_id = $1 RETURNING deployment_id",
        };
        let row = sqlx::query(sql).bind(value).bind(instance_id).fetch_optional(&self.pool).await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// `instance_verified`: stamps `verified_at` once (the audit trigger copies it).
    pub async fn verify_instance(&self, instance_id: &str) -> Result<u64, DbError> {
        let done = sqlx::query(
            "UPDATE deployments SET verified_at = COALESCE(verified_at, NOW()) WHERE instance_id = $1",
        )
        .bind(instance_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// `instance_activated` (by launch config, else by instance id): active, not a
    /// stub, `activated_at` stamped once.
    pub async fn activate_instance(
        &self,
        config_id: Option<&str>,
        instance_id: &str,
    ) -> Result<u64, DbError> {
        let done = sqlx::query(
            "UPDATE deployments SET active = TRUE, stub = FALSE, activated_at = COALESCE(activated_at, NOW()), \
             instance_id = COALESCE(instance_id, $2) WHERE ($1::TEXT IS NOT NULL AND config_id = $1) OR instance_id = $2",
        )
        .bind(config_id)
        .bind(instance_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// The original's `optimal_scale_up_server` query, one per chute: servers with
    /// enough free verified GPUs of a supported model, unlocked, cheapest then
    /// tightest. Kept for the benchmark that compares it with the in-memory snapshot.
    pub async fn scale_up_candidates(
        &self,
        supported_gpus: &[String],
        gpu_count: i32,
    ) -> Result<Vec<(String, i64)>, DbError> {
        let rows = sqlx::query(
            "WITH totals AS (SELECT server_id, COUNT(*) AS total FROM gpus \
               WHERE verified AND model_short_ref = ANY($1) GROUP BY server_id), \
             used AS (SELECT server_id, COUNT(*) AS used FROM gpus \
               WHERE verified AND deployment_id IS NOT NULL GROUP BY server_id) \
             SELECT s.server_id, t.total - COALESCE(u.used, 0) AS free FROM servers s \
               JOIN totals t ON t.server_id = s.server_id LEFT JOIN used u ON u.server_id = s.server_id \
             WHERE t.total - COALESCE(u.used, 0) >= $2 AND NOT COALESCE(s.locked, FALSE) \
             ORDER BY s.hourly_cost ASC, free ASC",
        )
        .bind(supported_gpus)
        .bind(i64::from(gpu_count))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| Ok::<_, sqlx::Error>((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, _>>()?)
    }

    // ---- audit ----

    /// Audit rows still alive, or deleted within `[start, end]` (UTC), as the exporter uploads.
    pub async fn audit_rows(
        &self,
        start: DateTime<Utc>,
        end: DateTime<Utc>,
    ) -> Result<Vec<AuditRow>, DbError> {
        let rows = sqlx::query(
            "SELECT * FROM deployment_audit WHERE deleted_at IS NULL OR deleted_at BETWEEN $1 AND $2 \
             ORDER BY created_at, deployment_id",
        )
        .bind(start.naive_utc())
        .bind(end.naive_utc())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(AuditRow::from_row).collect::<Result<_, _>>()?)
    }
}

/// Every row of the inventory, for Gepetto's in-memory fleet snapshot.
#[derive(Debug, Clone, Default)]
pub struct FleetRows {
    pub servers: Vec<Server>,
    pub gpus: Vec<Gpu>,
    pub deployments: Vec<Deployment>,
    pub chutes: Vec<Chute>,
    /// Chutes whose deployments are never preempted or scaled down (private).
    pub private_chutes: Vec<String>,
}

/// The column [`Db::deployments_where`] and [`Db::set_instance`] match on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeploymentKey {
    Instance,
    Job,
    Config,
    Chute,
    Deployment,
}

/// Formats a naive UTC timestamp as Python's `datetime.isoformat()` does.
pub fn iso(ts: &NaiveDateTime) -> String {
    use chrono::Timelike;
    if ts.nanosecond() == 0 {
        ts.format("%Y-%m-%dT%H:%M:%S").to_string()
    } else {
        ts.format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
    }
}

/// Whether a key from outside can match a row at all. Postgres text cannot hold a NUL
/// character and refuses a parameter containing one with an error; such a key names no
/// row, so lookups answer "not found" instead of failing.
fn matchable(key: &str) -> bool {
    !key.contains('\0')
}
