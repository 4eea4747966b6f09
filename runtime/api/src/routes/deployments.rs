//! `/deployments/`: undeploy requests. Gepetto is the only writer of deployments (it
//! owns the Kubernetes objects and the validator's instance records), so the API
//! appends one `undeploy` event per deployment to the durable event stream and
//! answers once Redis has it.

use axum::Json;
use axum::extract::{Path, State};
use miner_db::DeploymentView;
use miner_events::payloads::{Event, Undeploy};
use serde_json::{Value, json};

use crate::AppState;
use crate::error::ApiError;

/// The event Gepetto acts on; `deployment_id` is its idempotency key.
pub fn undeploy_event(d: &DeploymentView) -> Event {
    Event::Undeploy(Undeploy {
        deployment_id: d.deployment.deployment_id.clone(),
        instance_id: d.deployment.instance_id.clone(),
        chute_id: d.deployment.chute_id.clone(),
        server_id: d.deployment.server_id.clone(),
        validator: d.deployment.validator.clone(),
        job_id: d.deployment.job_id.clone(),
    })
}

/// Publishes an undeploy per deployment; returns the original's summary rows.
pub async fn undeploy_all(state: &AppState, deployments: &[DeploymentView]) -> Result<Vec<Value>, ApiError> {
    let mut purged = Vec::with_capacity(deployments.len());
    for (i, d) in deployments.iter().enumerate() {
        state.publish(&undeploy_event(d)).await.map_err(|e| {
            ApiError::new(
                e.status,
                format!("{} ({i} of {} undeploy requests were sent)", e.detail, deployments.len()),
            )
        })?;
        purged.push(json!({
            "chute_id": d.deployment.chute_id,
            "chute_name": d.chute.as_ref().and_then(|c| c.name.clone()),
            "server_id": d.deployment.server_id,
            "server_name": d.server_name,
            "gpu_count": d.gpus.len(),
        }));
    }
    Ok(purged)
}

pub async fn purge_all(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let deployments = state.db.all_deployments().await?;
    let purged = undeploy_all(&state, &deployments).await?;
    Ok(Json(json!({ "status": "initiated", "deployments_purged": purged })))
}

pub async fn purge_one(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let d = state
        .db
        .deployment(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("No deployment with id {id} found!")))?;
    state.publish(&undeploy_event(&d)).await?;
    Ok(Json(json!({ "status": "initiated", "deployment_purged": d })))
}
