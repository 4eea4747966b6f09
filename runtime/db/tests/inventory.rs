#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The inventory against a real Postgres: migrations, constraints, triggers, queries.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use lab_hosts::Postgres;
use miner_db::*;
use serde_json::json;

fn server() -> &'static Postgres {
    static PG: OnceLock<Postgres> = OnceLock::new();
    PG.get_or_init(|| Postgres::start().expect("postgres"))
}

async fn fresh_db() -> (Db, String) {
    static N: AtomicUsize = AtomicUsize::new(0);
    let name = format!("inv_{}_{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst));
    let url = server().create_database(&name).unwrap();
    (Db::connect(&url).await.unwrap(), url)
}

async fn migrated() -> Db {
    let (db, _) = fresh_db().await;
    db.migrate().await.unwrap();
    db
}

fn new_server(id: &str, name: &str) -> NewServer {
    NewServer {
        server_id: id.into(),
        validator: "5Validator".into(),
        name: name.into(),
        ip_address: Some("203.0.113.7".into()),
        labels: json!({"gpu-short-ref": "h100_sxm", "chutes/external-ip": "203.0.113.7"}),
        gpu_count: 2,
        cpu_per_gpu: 4,
        memory_per_gpu: 64,
        hourly_cost: 1.25,
    }
}

fn gpu(id: &str) -> NewGpu {
    NewGpu {
        gpu_id: id.into(),
        device_info: json!({"uuid": id, "name": "H100"}),
        model_short_ref: "h100_sxm".into(),
    }
}

fn chute(id: &str) -> Chute {
    Chute {
        chute_id: id.into(),
        validator: "5Validator".into(),
        name: Some("llm".into()),
        image: "user/llm:1".into(),
        code: "print(1)".into(),
        filename: "llm.py".into(),
        ref_str: "llm:chute".into(),
        version: "v1".into(),
        supported_gpus: vec!["h100_sxm".into()],
        gpu_count: 1,
        chutes_version: Some("0.3.5".into()),
        ..Default::default()
    }
}

fn dep(id: &str, server: &str, chute: &str) -> NewDeployment {
    NewDeployment {
        deployment_id: id.into(),
        validator: "5Validator".into(),
        chute_id: chute.into(),
        server_id: server.into(),
        version: "v1".into(),
        job_id: None,
        config_id: None,
    }
}

/// A server with two verified GPUs and a chute.
async fn inventory() -> Db {
    let db = migrated().await;
    db.insert_server(&new_server("uid-1", "gpu-1")).await.unwrap();
    db.insert_gpus("uid-1", "5Validator", &[gpu("GPU-a"), gpu("GPU-b")]).await.unwrap();
    db.verify_server_gpus("uid-1").await.unwrap();
    db.upsert_chute(&chute("chute-1")).await.unwrap();
    db
}

#[tokio::test]
async fn migrations_apply_once_and_record_dbmate_versions() {
    let (db, _) = fresh_db().await;
    let first = db.migrate().await.unwrap();
    assert_eq!(first, migrate::MIGRATIONS.iter().map(|m| m.version).collect::<Vec<_>>());
    assert!(db.migrate().await.unwrap().is_empty(), "a second run must find nothing to do");
    let versions: Vec<String> = sqlx::query_scalar("SELECT version FROM schema_migrations ORDER BY version")
        .fetch_all(db.pool())
        .await
        .unwrap();
    assert_eq!(versions, vec!["20241101000000", "20241228093101", "20261126000000", "20261205000000"]);
}

#[tokio::test]
async fn concurrent_replicas_migrate_safely_under_the_advisory_lock() {
    let (_, url) = fresh_db().await;
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let url = url.clone();
        tasks.push(tokio::spawn(async move { Db::connect(&url).await.unwrap().migrate().await }));
    }
    let mut applied = 0;
    for t in tasks {
        applied += t.await.unwrap().expect("every replica starts cleanly").len();
    }
    assert_eq!(applied, migrate::MIGRATIONS.len(), "each migration applied by exactly one replica");
}

#[tokio::test]
async fn a_database_created_by_the_python_miner_is_adopted() {
    // The original: create_all made the tables, dbmate recorded the trail migration.
    let (db, _) = fresh_db().await;
    sqlx::raw_sql(migrate::MIGRATIONS[0].up).execute(db.pool()).await.unwrap();
    sqlx::raw_sql(migrate::MIGRATIONS[1].up).execute(db.pool()).await.unwrap();
    sqlx::raw_sql(
        "CREATE TABLE schema_migrations (version VARCHAR(128) PRIMARY KEY); \
         INSERT INTO schema_migrations VALUES ('20241228093101');",
    )
    .execute(db.pool())
    .await
    .unwrap();
    let applied = db.migrate().await.unwrap();
    assert_eq!(applied, vec!["20241101000000", "20261126000000", "20261205000000"]);
}

#[tokio::test]
async fn a_duplicate_server_name_is_refused_and_changes_nothing() {
    let db = inventory().await;
    let err = db.insert_server(&new_server("uid-2", "gpu-1")).await.unwrap_err();
    assert!(matches!(err, DbError::DuplicateServer { .. }), "{err}");
    assert_eq!(db.list_servers().await.unwrap().len(), 1);
}

#[tokio::test]
async fn servers_are_found_by_id_or_name_and_listed_with_everything_nested() {
    let db = inventory().await;
    assert_eq!(db.find_server("gpu-1").await.unwrap().unwrap().server_id, "uid-1");
    assert_eq!(db.find_server("uid-1").await.unwrap().unwrap().name, "gpu-1");
    assert!(db.find_server("nope").await.unwrap().is_none());

    let gpus = db.create_deployment(&dep("d-1", "uid-1", "chute-1"), 1).await.unwrap();
    assert_eq!(gpus, vec!["GPU-a"]);
    let list = db.list_servers().await.unwrap();
    let v = serde_json::to_value(&list).unwrap();
    assert_eq!(v[0]["name"], "gpu-1");
    assert_eq!(v[0]["gpus"].as_array().unwrap().len(), 2);
    assert_eq!(v[0]["gpus"][0]["device_info"]["name"], "H100");
    assert_eq!(v[0]["deployments"][0]["deployment_id"], "d-1");
    assert_eq!(v[0]["deployments"][0]["chute"]["name"], "llm");
    assert_eq!(v[0]["deployments"][0]["gpus"][0]["gpu_id"], "GPU-a");
    assert_eq!(v[0]["deployments"][0]["stub"], true);
    assert_eq!(v[0]["deployments"][0]["host"], "203.0.113.7");
}

#[tokio::test]
async fn a_gpu_is_never_allocated_twice_even_under_concurrency() {
    let db = inventory().await;
    let mut tasks = Vec::new();
    for i in 0..5 {
        let db = db.clone();
        tasks.push(tokio::spawn(async move {
            db.create_deployment(&dep(&format!("d-{i}"), "uid-1", "chute-1"), 1).await
        }));
    }
    let mut won = Vec::new();
    for t in tasks {
        if let Ok(gpus) = t.await.unwrap() {
            won.extend(gpus);
        }
    }
    won.sort();
    assert_eq!(won, vec!["GPU-a", "GPU-b"], "two GPUs, two winners, no GPU shared");
    assert_eq!(db.all_deployments().await.unwrap().len(), 2, "losers inserted nothing");

    // Explicit allocation of a taken GPU is refused too.
    let taken = db.all_deployments().await.unwrap()[0].gpus[0].gpu_id.clone();
    let other = db.all_deployments().await.unwrap()[1].deployment.deployment_id.clone();
    let err = db.allocate_gpus(&other, &[taken]).await.unwrap_err();
    assert!(matches!(err, DbError::NotEnoughGpus { .. }), "{err}");
}

#[tokio::test]
async fn the_schema_refuses_a_gpu_on_a_deployment_of_another_server() {
    let db = inventory().await;
    db.insert_server(&new_server("uid-2", "gpu-2")).await.unwrap();
    db.insert_gpus("uid-2", "5Validator", &[gpu("GPU-c")]).await.unwrap();
    db.verify_server_gpus("uid-2").await.unwrap();
    db.create_deployment(&dep("d-1", "uid-1", "chute-1"), 1).await.unwrap();
    let err = sqlx::query("UPDATE gpus SET deployment_id = 'd-1' WHERE gpu_id = 'GPU-c'")
        .execute(db.pool())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("gpus_deployment_same_server_fkey"), "{err}");
}

#[tokio::test]
async fn unverified_gpus_are_not_allocated() {
    let db = migrated().await;
    db.insert_server(&new_server("uid-1", "gpu-1")).await.unwrap();
    db.insert_gpus("uid-1", "5Validator", &[gpu("GPU-a")]).await.unwrap();
    db.upsert_chute(&chute("chute-1")).await.unwrap();
    let err = db.create_deployment(&dep("d-1", "uid-1", "chute-1"), 1).await.unwrap_err();
    assert!(matches!(err, DbError::NotEnoughGpus { free: 0, wanted: 1, .. }), "{err}");
}

#[tokio::test]
async fn the_audit_trail_follows_insert_verify_and_delete() {
    let db = inventory().await;
    let before = chrono::Utc::now() - chrono::Duration::seconds(5);
    db.create_deployment(&dep("d-1", "uid-1", "chute-1"), 1).await.unwrap();
    db.create_deployment(&dep("d-2", "uid-1", "chute-1"), 1).await.unwrap();
    db.set_deployment_verified("d-1", "inst-1").await.unwrap();
    assert!(db.delete_deployment("d-2").await.unwrap());
    let after = chrono::Utc::now() + chrono::Duration::seconds(5);

    let rows = db.audit_rows(before, after).await.unwrap();
    assert_eq!(rows.len(), 2);
    let d1 = rows.iter().find(|r| r.deployment_id == "d-1").unwrap();
    assert_eq!(d1.instance_id.as_deref(), Some("inst-1"));
    assert!(d1.verified_at.is_some() && d1.deleted_at.is_none());
    let d2 = rows.iter().find(|r| r.deployment_id == "d-2").unwrap();
    let deleted = d2.deleted_at.unwrap();
    assert!(deleted >= before.naive_utc() && deleted <= after.naive_utc(), "deleted_at is UTC: {deleted}");

    // A deletion outside the window is not reported; live rows always are.
    let later = after + chrono::Duration::hours(2);
    let rows = db.audit_rows(later, later + chrono::Duration::hours(1)).await.unwrap();
    assert_eq!(rows.iter().map(|r| r.deployment_id.as_str()).collect::<Vec<_>>(), vec!["d-1"]);

    // Deleting the deployment freed its GPU.
    assert!(db.server_gpus("uid-1").await.unwrap().iter().all(|g| g.deployment_id.as_deref() != Some("d-2")));
    let j = d1.to_json();
    assert!(j["created_at"].as_str().unwrap().contains('T'));
}

#[tokio::test]
async fn deleting_a_server_cascades_to_gpus_and_deployments() {
    let db = inventory().await;
    db.create_deployment(&dep("d-1", "uid-1", "chute-1"), 2).await.unwrap();
    assert!(db.delete_server("uid-1").await.unwrap());
    assert!(db.list_servers().await.unwrap().is_empty());
    assert!(db.all_deployments().await.unwrap().is_empty());
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM gpus").fetch_one(db.pool()).await.unwrap();
    assert_eq!(n, 0);
    assert!(!db.delete_server("uid-1").await.unwrap());
}

#[tokio::test]
async fn lock_unlock_and_job_filters() {
    let db = inventory().await;
    assert!(db.set_locked("gpu-1", true).await.unwrap().unwrap().locked);
    assert!(!db.set_locked("uid-1", false).await.unwrap().unwrap().locked);
    assert!(db.set_locked("nope", true).await.unwrap().is_none());

    db.create_deployment(&dep("d-1", "uid-1", "chute-1"), 1).await.unwrap();
    let mut job = dep("d-job", "uid-1", "chute-1");
    job.job_id = Some("job-1".into());
    db.create_deployment(&job, 1).await.unwrap();
    let jobs = db.server_deployments("uid-1", Some(true)).await.unwrap();
    assert_eq!(jobs.iter().map(|d| d.deployment.deployment_id.as_str()).collect::<Vec<_>>(), vec!["d-job"]);
    let services = db.server_deployments("uid-1", Some(false)).await.unwrap();
    assert_eq!(services.iter().map(|d| d.deployment.deployment_id.as_str()).collect::<Vec<_>>(), vec!["d-1"]);
    assert_eq!(db.server_deployments("uid-1", None).await.unwrap().len(), 2);
    assert_eq!(db.deployment("d-job").await.unwrap().unwrap().server_name.as_deref(), Some("gpu-1"));
    assert!(db.deployment("nope").await.unwrap().is_none());
}

#[tokio::test]
async fn timestamps_serialize_as_the_original_api_wrote_them() {
    let db = inventory().await;
    sqlx::query("UPDATE servers SET created_at = '2026-11-26 10:00:00.25+00'")
        .execute(db.pool())
        .await
        .unwrap();
    let v = serde_json::to_value(db.list_servers().await.unwrap()).unwrap();
    assert_eq!(v[0]["created_at"], "2026-11-26T10:00:00.250000+00:00");
    let back: Server = serde_json::from_value(v[0].clone()).unwrap();
    assert_eq!(back.created_at, db.find_server("uid-1").await.unwrap().unwrap().created_at);
}
