//! `/openapi.json`, rendered from the route table (`routes::table`), so every route
//! served is documented and every documented route is served.

use serde_json::{Map, Value, json};

use crate::routes::{Access, table};

pub fn document() -> Value {
    let mut paths = Map::new();
    for route in table() {
        let doc = route.doc;
        let mut responses = Map::new();
        for (code, why) in doc.statuses {
            let content = if *code == 200 {
                json!({ doc.produces: { "schema": {} } })
            } else {
                json!({ "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } })
            };
            responses.insert(code.to_string(), json!({ "description": why, "content": content }));
        }
        if doc.access == Access::Management {
            responses.insert(
                "401".into(),
                json!({
                    "description": "missing, stale, replayed or badly signed management headers",
                    "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
                }),
            );
        }
        let mut op = json!({
            "summary": doc.summary,
            "operationId": format!("{}_{}", doc.method, doc.path.trim_matches('/').replace(['/', '{', '}', '.'], "_")),
            "responses": responses,
        });
        let params: Vec<Value> = doc
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        if let Some(schema) = doc.body {
            op["requestBody"] = json!({
                "required": true,
                "content": { "application/json": { "schema": { "$ref": format!("#/components/schemas/{schema}") } } }
            });
        }
        if doc.access == Access::Management {
            op["security"] = json!([{ "chutesManagement": [] }]);
        }
        let entry = paths.entry(doc.path.to_owned()).or_insert_with(|| json!({}));
        entry[doc.method] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": { "title": "chutes-miner API", "version": env!("CARGO_PKG_VERSION") },
        "paths": paths,
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["detail"],
                    "properties": { "detail": { "type": "string" } }
                },
                "ServerArgs": {
                    "type": "object",
                    "required": ["name", "validator", "hourly_cost", "gpu_short_ref"],
                    "properties": {
                        "name": { "type": "string", "description": "Kubernetes node name" },
                        "validator": { "type": "string", "description": "validator hotkey (SS58)" },
                        "hourly_cost": { "type": "number", "exclusiveMinimum": 0 },
                        "gpu_short_ref": { "type": "string", "description": "e.g. h100_sxm" }
                    }
                }
            },
            "securitySchemes": {
                "chutesManagement": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Chutes-Signature",
                    "description": "X-Chutes-Miner, X-Chutes-Validator, X-Chutes-Nonce and X-Chutes-Signature: sr25519 over miner:validator:nonce:(sha256(body) for POST/PUT/PATCH | \"management\")"
                }
            }
        }
    })
}
