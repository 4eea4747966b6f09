//! `fieldValidation=Strict`: fields the kind's schema does not declare are refused (400).
//!
//! The emulator has no OpenAPI document; the typed structs of `k8s-openapi` stand in for
//! the schema. A body is decoded into its kind's struct and encoded again: whatever the
//! body had that did not come back is a field the schema does not know.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::kinds::Kind;

use k8s_openapi::api::{apps, batch, coordination, core, events, networking, rbac};

fn round_trip<T: DeserializeOwned + Serialize>(v: &Value) -> Option<Value> {
    let typed: T = serde_json::from_value(v.clone()).ok()?;
    serde_json::to_value(typed).ok()
}

/// Paths (`spec.foo`, `spec.containers[0].bar`) of the fields in `body` that its kind
/// does not declare. A body that does not decode at all is left to the other checks.
pub fn unknown_fields(kind: &Kind, body: &Value) -> Vec<String> {
    let back = match (kind.group, kind.kind) {
        ("", "Namespace") => round_trip::<core::v1::Namespace>(body),
        ("", "Node") => round_trip::<core::v1::Node>(body),
        ("", "Pod") => round_trip::<core::v1::Pod>(body),
        ("", "Service") => round_trip::<core::v1::Service>(body),
        ("", "ConfigMap") => round_trip::<core::v1::ConfigMap>(body),
        ("", "Secret") => round_trip::<core::v1::Secret>(body),
        ("", "ServiceAccount") => round_trip::<core::v1::ServiceAccount>(body),
        ("", "PersistentVolumeClaim") => round_trip::<core::v1::PersistentVolumeClaim>(body),
        ("", "Event") => round_trip::<core::v1::Event>(body),
        ("events.k8s.io", _) => round_trip::<events::v1::Event>(body),
        (_, "Deployment") => round_trip::<apps::v1::Deployment>(body),
        (_, "StatefulSet") => round_trip::<apps::v1::StatefulSet>(body),
        (_, "DaemonSet") => round_trip::<apps::v1::DaemonSet>(body),
        (_, "Job") => round_trip::<batch::v1::Job>(body),
        (_, "CronJob") => round_trip::<batch::v1::CronJob>(body),
        (_, "NetworkPolicy") => round_trip::<networking::v1::NetworkPolicy>(body),
        (_, "Role") => round_trip::<rbac::v1::Role>(body),
        (_, "RoleBinding") => round_trip::<rbac::v1::RoleBinding>(body),
        (_, "ClusterRole") => round_trip::<rbac::v1::ClusterRole>(body),
        (_, "ClusterRoleBinding") => round_trip::<rbac::v1::ClusterRoleBinding>(body),
        (_, "Lease") => round_trip::<coordination::v1::Lease>(body),
        _ => None,
    };
    let mut out = Vec::new();
    if let Some(back) = back {
        missing(body, &back, "", &mut out);
    }
    out
}

fn missing(input: &Value, output: &Value, prefix: &str, out: &mut Vec<String>) {
    match (input, output) {
        (Value::Object(i), Value::Object(o)) => {
            for (k, v) in i {
                if v.is_null() {
                    continue;
                }
                let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                match o.get(k) {
                    None => out.push(path),
                    Some(back) => missing(v, back, &path, out),
                }
            }
        }
        (Value::Array(i), Value::Array(o)) => {
            for (n, (a, b)) in i.iter().zip(o).enumerate() {
                missing(a, b, &format!("{prefix}[{n}]"), out);
            }
        }
        _ => {}
    }
}
