//! The record of what the last deploy applied: a ConfigMap `minerctl-applied` in the
//! miner's namespace listing every applied object. Prune deletes only objects that are in
//! this record, no longer rendered, and labelled as managed by minerctl.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use minerctl_manifests::{MANAGED_BY, MANAGED_BY_LABEL, ObjectKey};
use serde_json::{Value, json};

use crate::error::DeployError;

pub const RECORD_NAME: &str = "minerctl-applied";

pub(crate) fn record_key(ns: &str) -> ObjectKey {
    ObjectKey {
        api_version: "v1".into(),
        kind: "ConfigMap".into(),
        namespace: Some(ns.into()),
        name: RECORD_NAME.into(),
    }
}

/// The previous record; empty when there is none (first deploy) or the namespace is new.
pub(crate) async fn read(client: &kube::Client, ns: &str) -> Result<BTreeSet<ObjectKey>, DeployError> {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let cm = match api.get_opt(RECORD_NAME).await {
        Ok(cm) => cm,
        Err(kube::Error::Api(s)) if s.code == 404 => None,
        Err(e) => return Err(DeployError::api(&record_key(ns), e)),
    };
    let Some(text) = cm.and_then(|c| c.data).and_then(|mut d| d.remove("objects")) else {
        return Ok(BTreeSet::new());
    };
    serde_json::from_str(&text).map_err(|e| DeployError::Api {
        object: record_key(ns).to_string(),
        message: format!("the record of applied objects is unreadable ({e}); fix or delete it"),
    })
}

pub(crate) fn object(ns: &str, keys: &BTreeSet<ObjectKey>) -> Value {
    let objects = serde_json::to_string_pretty(keys).unwrap_or_else(|_| "[]".into());
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": RECORD_NAME, "namespace": ns, "labels": {MANAGED_BY_LABEL: MANAGED_BY}},
        "data": {"objects": objects},
    })
}
