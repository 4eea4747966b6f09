//! The route table: one entry per endpoint, holding both the handler and its
//! documentation, so the router and `/openapi.json` cannot drift apart.

pub mod deployments;
pub mod registry;
pub mod servers;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{MethodRouter, delete, get, post};

use crate::AppState;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone.
    Public,
    /// Signed management requests (section 5.3, format 2).
    Management,
    /// Callers from private, loopback or link-local addresses only.
    PrivateNetwork,
}

/// Documentation of one route, rendered into `/openapi.json`.
#[derive(Debug, Clone)]
pub struct RouteDoc {
    pub method: &'static str,
    pub path: &'static str,
    pub summary: &'static str,
    pub access: Access,
    /// Name of the request body schema (see `openapi::schemas`).
    pub body: Option<&'static str>,
    /// Content type of the success response.
    pub produces: &'static str,
    /// Status codes this route answers with besides the auth refusals.
    pub statuses: &'static [(u16, &'static str)],
}

pub struct Route {
    pub doc: RouteDoc,
    pub handler: MethodRouter<AppState>,
}

const JSON: &str = "application/json";

fn route(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    access: Access,
    statuses: &'static [(u16, &'static str)],
    handler: MethodRouter<AppState>,
) -> Route {
    Route { doc: RouteDoc { method, path, summary, access, body: None, produces: JSON, statuses }, handler }
}

const FOUND: &[(u16, &str)] = &[(200, "OK"), (404, "no server with that id or name")];
const PUBLISHED: &[(u16, &str)] =
    &[(200, "OK"), (404, "no server with that id or name"), (503, "event stream or database unavailable")];

/// Every route of the API.
pub fn table() -> Vec<Route> {
    use Access::*;
    vec![
        route("get", "/ping", "Liveness: {\"message\":\"pong\"}", Public, &[(200, "OK")], get(ping)),
        route(
            "get",
            "/servers/",
            "Servers with their GPUs and deployments",
            Management,
            &[(200, "OK")],
            get(servers::list),
        ),
        Route {
            doc: RouteDoc {
                method: "post",
                path: "/servers/",
                summary: "Add a Kubernetes node: streamed progress lines `data: {timestamp, message}`",
                access: Management,
                body: Some("ServerArgs"),
                produces: "text/event-stream",
                statuses: &[
                    (200, "progress stream"),
                    (400, "bad arguments, unknown validator or unsupported GPU type"),
                    (404, "no such Kubernetes node"),
                    (409, "server already tracked"),
                    (502, "validator or Kubernetes API failed"),
                    (503, "add-node is not available"),
                ],
            },
            handler: post(servers::add),
        },
        route(
            "get",
            "/servers/{id_or_name}/lock",
            "Lock a server (no scaling, no preemption)",
            Management,
            FOUND,
            get(servers::lock),
        ),
        route(
            "get",
            "/servers/{id_or_name}/unlock",
            "Unlock a server",
            Management,
            FOUND,
            get(servers::unlock),
        ),
        route(
            "get",
            "/servers/{id_or_name}/delete_preflight",
            "Jobs that deleting this server would kill",
            Management,
            FOUND,
            get(servers::delete_preflight),
        ),
        route(
            "delete",
            "/servers/{id_or_name}",
            "Delete a server (asynchronously, through Gepetto)",
            Management,
            PUBLISHED,
            delete(servers::remove),
        ),
        route(
            "delete",
            "/servers/{id_or_name}/deployments",
            "Undeploy every non-job deployment of a server",
            Management,
            PUBLISHED,
            delete(servers::purge),
        ),
        route(
            "delete",
            "/deployments/purge",
            "Undeploy every deployment, jobs included",
            Management,
            &[(200, "OK"), (503, "event stream or database unavailable")],
            delete(deployments::purge_all),
        ),
        route(
            "delete",
            "/deployments/{deployment_id}",
            "Undeploy one deployment",
            Management,
            &[(200, "OK"), (404, "no such deployment"), (503, "event stream or database unavailable")],
            delete(deployments::purge_one),
        ),
        route(
            "get",
            "/registry/auth",
            "Signed registry headers for the node-local registry proxy",
            PrivateNetwork,
            &[(200, "OK"), (401, "caller is not on a private network")],
            get(registry::auth),
        ),
        route("get", "/openapi.json", "This document", Public, &[(200, "OK")], get(openapi)),
        Route {
            doc: RouteDoc {
                method: "get",
                path: "/metrics",
                summary: "Prometheus metrics",
                access: Public,
                body: None,
                produces: "text/plain; version=0.0.4",
                statuses: &[(200, "OK")],
            },
            handler: get(metrics),
        },
    ]
}

async fn ping() -> Json<serde_json::Value> {
    Json(serde_json::json!({"message": "pong"}))
}

async fn openapi() -> Json<serde_json::Value> {
    Json(crate::openapi::document())
}

async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render())
}
