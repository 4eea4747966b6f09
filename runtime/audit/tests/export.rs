#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The exporter against real Postgres and a recording HTTP endpoint standing in for
//! the validator's `/audit/miner_data`, Prometheus and the subtensor RPC.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use chrono::{TimeZone, Utc};
use chutes_protocol::Hotkey;
use chutes_protocol::auth::{Payload, headers, now_unix, sha256_hex, verify_miner_request};
use lab_hosts::Postgres;
use miner_audit::{AuditError, Exporter, ExporterConfig, Window};
use miner_db::{Chute, Db, NewDeployment, NewGpu, NewServer};
use serde_json::{Value, json};

fn pg() -> &'static Postgres {
    static PG: OnceLock<Postgres> = OnceLock::new();
    PG.get_or_init(|| Postgres::start().unwrap())
}

#[derive(Default)]
struct Recorded {
    uploads: Vec<(HeaderMap, Bytes)>,
    /// Statuses to answer the next uploads with (then 200).
    script: Vec<u16>,
    prometheus_up: bool,
}

type Shared = Arc<Mutex<Recorded>>;

async fn upload(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let mut r = s.lock().unwrap();
    r.uploads.push((headers, body));
    let code = if r.script.is_empty() { 200 } else { r.script.remove(0) };
    StatusCode::from_u16(code).unwrap()
}

async fn query_range(
    State(s): State<Shared>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> (StatusCode, axum::Json<Value>) {
    if !s.lock().unwrap().prometheus_up {
        return (StatusCode::BAD_GATEWAY, axum::Json(json!({})));
    }
    // increase() extrapolates, so counts come back fractional (and, after a counter
    // reset, can dip below zero); d-3 has seconds but no count series at all.
    let series: &[(&str, &str)] = if q["query"].contains("invocation_duration_sum") {
        &[("d-1", "12.5"), ("d-2", "0"), ("d-3", "3.5"), ("d-4", "1")]
    } else {
        &[("d-1", "4.0421"), ("d-2", "0"), ("d-4", "-2.7")]
    };
    let result: Vec<Value> = series
        .iter()
        .map(|(d, v)| {
            json!({"metric": {"chutes_deployment_id": d, "chute_id": "chute-1", "function": "generate"},
                   "values": [[1, v]]})
        })
        .collect();
    (
        StatusCode::OK,
        axum::Json(json!({"status": "success", "data": {"resultType": "matrix", "result": result}})),
    )
}

async fn runtimeinfo() -> axum::Json<Value> {
    axum::Json(json!({"status": "success", "data": {"startTime": "2020-01-01T00:00:00Z"}}))
}

async fn rpc(axum::Json(req): axum::Json<Value>) -> axum::Json<Value> {
    assert_eq!(req["method"], "chain_getHeader");
    axum::Json(
        json!({"jsonrpc": "2.0", "id": req["id"], "result": {"number": "0x4d2", "parentHash": "0x00"}}),
    )
}

async fn endpoint() -> (String, Shared) {
    let shared: Shared = Arc::new(Mutex::new(Recorded { prometheus_up: true, ..Default::default() }));
    let app = Router::new()
        .route("/audit/miner_data", post(upload))
        .route("/api/v1/query_range", get(query_range))
        .route("/api/v1/status/runtimeinfo", get(runtimeinfo))
        .route("/rpc", post(rpc))
        .with_state(shared.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base, shared)
}

async fn setup() -> (Exporter, Db, String, Shared, Arc<Hotkey>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let name =
        format!("audit_{}_{}", std::process::id(), N.fetch_add(1, std::sync::atomic::Ordering::SeqCst));
    let db = Db::connect(&pg().create_database(&name).unwrap()).await.unwrap();
    db.migrate().await.unwrap();
    let (base, shared) = endpoint().await;
    let hotkey = Arc::new(Hotkey::from_seed(&[7; 32], "test").unwrap());
    let mut cfg =
        ExporterConfig::new(format!("{base}/audit/miner_data"), base.clone(), format!("{base}/rpc"));
    cfg.retry_delay = Duration::from_millis(10);
    cfg.attempts = 3;
    (Exporter::new(db.clone(), hotkey.clone(), cfg).unwrap(), db, base, shared, hotkey)
}

async fn seed(db: &Db) {
    db.insert_server(&NewServer {
        server_id: "uid-1".into(),
        validator: "5V".into(),
        name: "gpu-1".into(),
        ip_address: None,
        labels: json!({}),
        gpu_count: 1,
        cpu_per_gpu: 1,
        memory_per_gpu: 1,
        hourly_cost: 1.0,
    })
    .await
    .unwrap();
    db.insert_gpus(
        "uid-1",
        "5V",
        &[NewGpu { gpu_id: "g".into(), device_info: json!({}), model_short_ref: "a6000".into() }],
    )
    .await
    .unwrap();
    db.verify_server_gpus("uid-1").await.unwrap();
    db.upsert_chute(&Chute {
        chute_id: "chute-1".into(),
        validator: "5V".into(),
        name: Some("café".into()),
        image: "u/i:1".into(),
        filename: "f.py".into(),
        ref_str: "f:c".into(),
        version: "v1".into(),
        supported_gpus: vec![],
        gpu_count: 1,
        ..Default::default()
    })
    .await
    .unwrap();
    for id in ["d-live", "d-gone-in-window", "d-gone-before"] {
        db.create_deployment(
            &NewDeployment {
                deployment_id: id.into(),
                validator: "5V".into(),
                chute_id: "chute-1".into(),
                server_id: "uid-1".into(),
                version: "v1".into(),
                job_id: None,
                config_id: None,
            },
            0,
        )
        .await
        .unwrap();
    }
    sqlx::raw_sql(
        "UPDATE deployment_audit SET deleted_at = '2026-11-26 10:30:00', created_at = '2026-11-26 09:00:00.25' \
           WHERE deployment_id = 'd-gone-in-window'; \
         UPDATE deployment_audit SET deleted_at = '2026-11-26 08:30:00' WHERE deployment_id = 'd-gone-before';",
    )
    .execute(db.pool())
    .await
    .unwrap();
}

fn window() -> Window {
    Window::previous_hour(Utc.with_ymd_and_hms(2026, 11, 26, 11, 1, 30).unwrap())
}

#[test]
fn the_window_is_the_previous_full_hour() {
    let w = window();
    assert_eq!(w.start, Utc.with_ymd_and_hms(2026, 11, 26, 10, 0, 0).unwrap());
    assert_eq!(w.end, Utc.with_ymd_and_hms(2026, 11, 26, 11, 0, 0).unwrap());
}

#[tokio::test]
async fn uploads_the_hour_signed_with_the_block_header() {
    let (exporter, db, _, shared, hotkey) = setup().await;
    seed(&db).await;
    let done = exporter.run(window()).await.unwrap();
    assert_eq!(done.block, 1234);
    assert_eq!(done.rows, 2);
    assert_eq!(done.attempts, 1);

    let (headers, body) = shared.lock().unwrap().uploads[0].clone();
    assert_eq!(headers[headers::BLOCK], "1234");
    assert_eq!(headers["content-type"], "application/json");
    let signer = verify_miner_request(&headers, Payload::Body(&body), now_unix(), 600).unwrap();
    assert_eq!(signer, hotkey.ss58());
    assert_eq!(sha256_hex(&body), done.sha256);

    let text = std::str::from_utf8(&body).unwrap();
    assert!(text.starts_with(&format!(
        r#"{{"miner_hotkey": "{}", "start_time": "2026-11-26T10:00:00+00:00", "end_time": "2026-11-26T11:00:00+00:00", "prometheus_message": "", "prometheus_metrics": [{{"chute_id": "chute-1", "deployment_id": "d-1", "function": "generate", "total_seconds": 12.5, "total_count": 4}}, {{"chute_id": "chute-1", "deployment_id": "d-3", "function": "generate", "total_seconds": 3.5, "total_count": 0}}, {{"chute_id": "chute-1", "deployment_id": "d-4", "function": "generate", "total_seconds": 1.0, "total_count": -2}}], "deployment_audit": ["#,
        hotkey.ss58()
    )), "{text}");
    let report: Value = serde_json::from_slice(&body).unwrap();
    let ids: Vec<&str> = report["deployment_audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["deployment_id"].as_str().unwrap())
        .collect();
    assert!(
        ids.contains(&"d-live") && ids.contains(&"d-gone-in-window") && !ids.contains(&"d-gone-before"),
        "{ids:?}"
    );
    assert!(text.contains(r#""created_at": "2026-11-26T09:00:00.250000", "verified_at": null, "deleted_at": "2026-11-26T10:30:00"}"#), "{text}");
}

#[tokio::test]
async fn prometheus_being_away_is_reported_not_fatal() {
    let (exporter, db, _, shared, _) = setup().await;
    seed(&db).await;
    shared.lock().unwrap().prometheus_up = false;
    exporter.run(window()).await.unwrap();
    let body = shared.lock().unwrap().uploads[0].1.clone();
    let report: Value = serde_json::from_slice(&body).unwrap();
    assert!(report["prometheus_message"].as_str().unwrap().starts_with("prometheus metrics unavailable"));
    assert_eq!(report["prometheus_metrics"], json!([]));
    assert_eq!(report["deployment_audit"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn retries_on_5xx_but_never_on_4xx() {
    let (exporter, db, _, shared, _) = setup().await;
    seed(&db).await;
    shared.lock().unwrap().script = vec![503, 502];
    assert_eq!(exporter.run(window()).await.unwrap().attempts, 3);
    // Each retry is signed afresh.
    let sigs: Vec<String> = shared
        .lock()
        .unwrap()
        .uploads
        .iter()
        .map(|(h, _)| h[headers::SIGNATURE].to_str().unwrap().to_owned())
        .collect();
    assert_eq!(sigs.len(), 3);
    assert!(sigs[0] != sigs[1] && sigs[1] != sigs[2]);

    shared.lock().unwrap().uploads.clear();
    shared.lock().unwrap().script = vec![401];
    let err = exporter.run(window()).await.unwrap_err();
    assert!(matches!(err, AuditError::Refused { status: 401, .. }), "{err}");
    assert_eq!(shared.lock().unwrap().uploads.len(), 1, "a 4xx is not retried");

    shared.lock().unwrap().script = vec![500, 500, 500];
    let err = exporter.run(window()).await.unwrap_err();
    assert!(err.to_string().contains("after 3 attempts"), "{err}");
}

#[tokio::test]
async fn an_unreachable_chain_stops_before_uploading() {
    let (_, db, base, shared, hotkey) = setup().await;
    let cfg = ExporterConfig::new(
        format!("{base}/audit/miner_data"),
        base.clone(),
        "http://127.0.0.1:9/rpc".into(),
    );
    let exporter = Exporter::new(db, hotkey, cfg).unwrap();
    let err = exporter.run(window()).await.unwrap_err();
    assert!(err.to_string().contains("block number from http://127.0.0.1:9/rpc"), "{err}");
    assert!(shared.lock().unwrap().uploads.is_empty());
}

/// The configured URLs may carry an API key. Neither the errors (logged by the CronJob)
/// nor the report uploaded to the validator (its Prometheus note) show it.
#[tokio::test]
async fn keys_in_the_configured_urls_never_reach_errors_or_the_report() {
    let (_, db, base, shared, hotkey) = setup().await;
    seed(&db).await;
    let mut cfg = ExporterConfig::new(
        format!("{base}/audit/miner_data?token=UPLOADKEY"),
        "http://prom:PROMKEY@127.0.0.1:9".into(),
        format!("{base}/rpc?apikey=CHAINKEY"),
    );
    cfg.retry_delay = Duration::from_millis(10);
    cfg.attempts = 1;
    let exporter = Exporter::new(db.clone(), hotkey.clone(), cfg).unwrap();
    shared.lock().unwrap().script = vec![401];
    let err = exporter.run(window()).await.unwrap_err().to_string();
    assert!(err.contains("token=***") && !err.contains("UPLOADKEY"), "{err}");
    let report = String::from_utf8(shared.lock().unwrap().uploads[0].1.to_vec()).unwrap();
    assert!(report.contains("prometheus metrics unavailable") && !report.contains("PROMKEY"), "{report}");

    let cfg = ExporterConfig::new(
        format!("{base}/audit/miner_data"),
        base.clone(),
        "http://rpc:CHAINKEY@127.0.0.1:9/rpc?apikey=CHAINKEY".into(),
    );
    let err = Exporter::new(db, hotkey, cfg).unwrap().run(window()).await.unwrap_err().to_string();
    assert!(err.contains("block number from http://rpc:***@127.0.0.1:9/rpc?apikey=***"), "{err}");
    assert!(!err.contains("CHAINKEY"), "{err}");
}
