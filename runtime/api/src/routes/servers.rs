//! `/servers/`: inventory of GPU nodes.

use axum::Json;
use axum::extract::{Path, State};
use axum::response::Response;
use miner_db::Server;
use miner_events::payloads::{Event, ServerDeleted};
use serde_json::{Value, json};

use crate::AppState;
use crate::add_node::{self, ServerArgs};
use crate::error::ApiError;

/// The original's wording, which the CLI shows.
pub fn not_found(key: &str) -> ApiError {
    ApiError::not_found(format!("No kubernetes node with id or name {key} found!"))
}

pub async fn find(state: &AppState, key: &str) -> Result<Server, ApiError> {
    state.db.find_server(key).await?.ok_or_else(|| not_found(key))
}

pub async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let servers = state.db.list_servers().await?;
    Ok(Json(serde_json::to_value(servers).map_err(|e| ApiError::internal(e.to_string()))?))
}

pub async fn add(State(state): State<AppState>, body: axum::body::Bytes) -> Result<Response, ApiError> {
    // serde_path_to_error: a wrong type is reported with the field it is in
    // (`hourly_cost: invalid type: string "x", expected f64`), not only a column.
    let args: ServerArgs = serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(&body))
        .map_err(|e| {
            let at = match e.path().to_string() {
                root if root == "." => String::new(),
                field => format!("{field}: "),
            };
            ApiError::bad_request(format!(
                "body must be ServerArgs {{name, validator, hourly_cost, gpu_short_ref}}: {at}{}",
                e.into_inner()
            ))
        })?;
    add_node::start(state, args).await
}

async fn set_locked(state: AppState, key: String, locked: bool) -> Result<Json<Server>, ApiError> {
    state.db.set_locked(&key, locked).await?.map(Json).ok_or_else(|| not_found(&key))
}

pub async fn lock(State(state): State<AppState>, Path(key): Path<String>) -> Result<Json<Server>, ApiError> {
    set_locked(state, key, true).await
}

pub async fn unlock(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> Result<Json<Server>, ApiError> {
    set_locked(state, key, false).await
}

pub async fn delete_preflight(
    State(state): State<AppState>,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let server = find(&state, &key).await?;
    let jobs = state.db.server_deployments(&server.server_id, Some(true)).await?;
    Ok(Json(json!({ "jobs": jobs })))
}

pub async fn remove(State(state): State<AppState>, Path(key): Path<String>) -> Result<Json<Value>, ApiError> {
    let server = find(&state, &key).await?;
    state.publish(&Event::ServerDeleted(ServerDeleted { server_id: server.server_id.clone() })).await?;
    Ok(Json(json!({
        "status": "started",
        "detail": format!(
            "Deletion of server {} ({}) started, and will be processed asynchronously by gepetto.",
            server.name, server.server_id
        ),
    })))
}

pub async fn purge(State(state): State<AppState>, Path(key): Path<String>) -> Result<Json<Value>, ApiError> {
    let server = find(&state, &key).await?;
    let deployments = state.db.server_deployments(&server.server_id, Some(false)).await?;
    let purged = crate::routes::deployments::undeploy_all(&state, &deployments).await?;
    Ok(Json(json!({ "status": "initiated", "deployments_purged": purged })))
}
