//! "Every rendered object parses as its typed Kubernetes object with no unknown fields."
//!
//! k8s-openapi's deserializers silently skip fields they do not know, so parsing alone
//! would accept a misspelt `imagePullPolcy`. We parse into the typed object, serialize it
//! back and require every field we wrote to come back unchanged: anything the type dropped
//! or rewrote is reported with its path.

use k8s_openapi::api::{apps, batch, core, networking, rbac};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// Checks one object against the k8s-openapi type of its `apiVersion`/`kind`.
pub fn check(value: &Value) -> Result<(), String> {
    let api_version = value.get("apiVersion").and_then(Value::as_str).unwrap_or("");
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or("");
    match (api_version, kind) {
        ("v1", "Namespace") => roundtrip::<core::v1::Namespace>(value),
        ("v1", "ServiceAccount") => roundtrip::<core::v1::ServiceAccount>(value),
        ("v1", "Secret") => roundtrip::<core::v1::Secret>(value),
        ("v1", "ConfigMap") => roundtrip::<core::v1::ConfigMap>(value),
        ("v1", "Service") => roundtrip::<core::v1::Service>(value),
        ("v1", "PersistentVolumeClaim") => roundtrip::<core::v1::PersistentVolumeClaim>(value),
        ("apps/v1", "Deployment") => roundtrip::<apps::v1::Deployment>(value),
        ("apps/v1", "StatefulSet") => roundtrip::<apps::v1::StatefulSet>(value),
        ("apps/v1", "DaemonSet") => roundtrip::<apps::v1::DaemonSet>(value),
        ("batch/v1", "CronJob") => roundtrip::<batch::v1::CronJob>(value),
        ("batch/v1", "Job") => roundtrip::<batch::v1::Job>(value),
        ("networking.k8s.io/v1", "NetworkPolicy") => roundtrip::<networking::v1::NetworkPolicy>(value),
        ("rbac.authorization.k8s.io/v1", "Role") => roundtrip::<rbac::v1::Role>(value),
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => roundtrip::<rbac::v1::RoleBinding>(value),
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => roundtrip::<rbac::v1::ClusterRole>(value),
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            roundtrip::<rbac::v1::ClusterRoleBinding>(value)
        }
        _ => Err(format!("`{api_version}` `{kind}` is not a kind minerctl manages")),
    }
}

fn roundtrip<K: DeserializeOwned + Serialize>(value: &Value) -> Result<(), String> {
    let typed: K = serde_json::from_value(value.clone()).map_err(|e| e.to_string())?;
    let back = serde_json::to_value(&typed).map_err(|e| e.to_string())?;
    match first_loss(value, &back, &mut String::new()) {
        None => Ok(()),
        Some(path) => {
            Err(format!("field `{path}` is not part of the Kubernetes schema (or has the wrong type)"))
        }
    }
}

/// The first path where `written` holds something `typed` does not. Fields the type adds
/// (e.g. `apiVersion` of a nested claim template) are not losses.
fn first_loss(written: &Value, typed: &Value, path: &mut String) -> Option<String> {
    match (written, typed) {
        (Value::Object(w), Value::Object(t)) => {
            for (k, wv) in w {
                let len = path.len();
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
                let found = match t.get(k) {
                    None => Some(path.clone()),
                    Some(tv) => first_loss(wv, tv, path),
                };
                if found.is_some() {
                    return found;
                }
                path.truncate(len);
            }
            None
        }
        (Value::Array(w), Value::Array(t)) => {
            for (i, wv) in w.iter().enumerate() {
                let len = path.len();
                path.push_str(&format!("[{i}]"));
                let found = match t.get(i) {
                    None => Some(path.clone()),
                    Some(tv) => first_loss(wv, tv, path),
                };
                if found.is_some() {
                    return found;
                }
                path.truncate(len);
            }
            None
        }
        (w, t) if w == t => None,
        _ => Some(path.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn misspelt_field_is_reported_with_its_path() {
        let v = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}, "data": {"a": "b"}, "dat": {}});
        assert_eq!(
            check(&v).unwrap_err(),
            "field `dat` is not part of the Kubernetes schema (or has the wrong type)"
        );
        let v = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
            "spec": {"selector": {}, "template": {"spec": {"containers": [{"name": "c", "imagePullPolcy": "Always"}]}}}});
        assert!(check(&v).unwrap_err().contains("spec.template.spec.containers[0].imagePullPolcy"));
    }

    #[test]
    fn wrong_type_and_unknown_kind_are_refused() {
        let v = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {"ports": [{"port": "eighty"}]}});
        assert!(check(&v).is_err());
        let v = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}});
        assert!(check(&v).unwrap_err().contains("not a kind minerctl manages"));
    }

    #[test]
    fn valid_object_passes() {
        let v = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "labels": {"a": "b"}}, "data": {"k": "v"}});
        check(&v).unwrap();
    }
}
