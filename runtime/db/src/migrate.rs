//! Embedded migrations, applied under a Postgres advisory lock.
//!
//! The files keep dbmate's format (`-- migrate:up` / `-- migrate:down`) and its
//! bookkeeping table `schema_migrations(version)`, so a database the Python miner
//! migrated with dbmate is recognised: versions it already applied are skipped.
//! Each migration runs in its own transaction together with its bookkeeping row.
//!
//! Several replicas may start at once: each takes the same session-level advisory
//! lock before looking at `schema_migrations`, so exactly one applies the pending
//! migrations and the others then find nothing left to do.

use sqlx::{Connection, PgConnection, Row};

use crate::DbError;

/// One embedded migration.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// dbmate version: the file name's leading digits.
    pub version: &'static str,
    pub name: &'static str,
    pub up: &'static str,
}

macro_rules! migration {
    ($version:literal, $name:literal) => {
        Migration {
            version: $version,
            name: $name,
            up: up_part(include_str!(concat!("../migrations/", $version, "_", $name, ".sql"))),
        }
    };
}

/// All migrations, oldest first.
pub static MIGRATIONS: &[Migration] = &[
    migration!("20241101000000", "base_schema"),
    migration!("20241228093101", "instance_trail"),
    migration!("20261126000000", "gpu_allocation_guard"),
    migration!("20261205000000", "gepetto_scheduler"),
];

/// The text between `-- migrate:up` and `-- migrate:down`.
const fn up_part(file: &'static str) -> &'static str {
    let bytes = file.as_bytes();
    let marker = b"-- migrate:down";
    let mut i = 0;
    while i + marker.len() <= bytes.len() {
        let mut j = 0;
        while j < marker.len() && bytes[i + j] == marker[j] {
            j += 1;
        }
        if j == marker.len() {
            let (head, _) = bytes.split_at(i);
            return match std::str::from_utf8(head) {
                Ok(s) => s,
                Err(_) => file,
            };
        }
        i += 1;
    }
    file
}

/// Arbitrary but fixed: "chutes-miner migrate" as a 64-bit key.
const LOCK_KEY: i64 = 0x6368_7574_6573_6d67;

/// Applies every pending migration; returns the versions this call applied.
pub async fn run(conn: &mut PgConnection) -> Result<Vec<&'static str>, DbError> {
    sqlx::query("SELECT pg_advisory_lock($1)").bind(LOCK_KEY).execute(&mut *conn).await?;
    let result = apply_pending(conn).await;
    // Unlock even when a migration failed, so another replica can try (and report) too.
    let unlock = sqlx::query("SELECT pg_advisory_unlock($1)").bind(LOCK_KEY).execute(&mut *conn).await;
    let applied = result?;
    unlock?;
    Ok(applied)
}

async fn apply_pending(conn: &mut PgConnection) -> Result<Vec<&'static str>, DbError> {
    sqlx::query("CREATE TABLE IF NOT EXISTS schema_migrations (version VARCHAR(128) PRIMARY KEY)")
        .execute(&mut *conn)
        .await?;
    let done: Vec<String> = sqlx::query("SELECT version FROM schema_migrations")
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|r| r.try_get::<String, _>(0))
        .collect::<Result<_, _>>()?;
    let mut applied = Vec::new();
    for m in MIGRATIONS.iter().filter(|m| !done.iter().any(|d| d == m.version)) {
        let mut tx = conn.begin().await?;
        sqlx::raw_sql(m.up).execute(&mut *tx).await.map_err(|source| DbError::Migration {
            version: m.version,
            name: m.name,
            source,
        })?;
        sqlx::query("INSERT INTO schema_migrations (version) VALUES ($1)")
            .bind(m.version)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        tracing::info!(version = m.version, name = m.name, "applied migration");
        applied.push(m.version);
    }
    Ok(applied)
}
