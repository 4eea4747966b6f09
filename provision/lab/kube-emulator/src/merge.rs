//! Lists that merge item by item, and strategic merge patch.
//!
//! The real server knows from its OpenAPI schema which lists are keyed (containers, env and
//! volumes by `name`, container ports by `containerPort`, volume mounts by `mountPath`, ...).
//! The emulator has no schema, so [`list_key`] keeps that table by field name; it is used by
//! strategic merge patch here and by server-side apply in `apply.rs`.

use serde_json::{Map, Value};

/// The merge key of a list, by the field that holds it, when every item has that key.
pub fn list_key(field: &str, items: &[Value]) -> Option<&'static str> {
    let key = match field {
        "containers" | "initContainers" | "ephemeralContainers" | "env" | "volumes" | "imagePullSecrets" => {
            "name"
        }
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "hostAliases" => "ip",
        "ownerReferences" => "uid",
        "conditions" => "type",
        "ports" if items.iter().all(|i| i.get("containerPort").is_some()) => "containerPort",
        "ports" => "port",
        _ => return None,
    };
    items.iter().all(|i| i.get(key).is_some()).then_some(key)
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Value::Object(t) = target {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// Strategic merge patch: keyed lists merge item by item, and the directives `$patch`
/// (`replace`, `delete`), `$retainKeys`, `$setElementOrder/<list>` and
/// `$deleteFromPrimitiveList/<list>` are applied, never stored.
pub fn strategic(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            *target = without_directives(patch);
            return;
        }
        Some("delete") => {
            *target = Value::Object(Map::new());
            return;
        }
        _ => {}
    }
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let Value::Object(t) = target else { return };
    for (k, v) in p {
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        let slot = t.entry(k.clone()).or_insert(Value::Null);
        match (v, slot.as_array().is_some()) {
            (Value::Array(items), _) => merge_list(slot, k, items),
            _ => strategic(slot, v),
        }
    }
    for (k, v) in p {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/")
            && let (Some(Value::Array(list)), Some(gone)) = (t.get_mut(field), v.as_array())
        {
            list.retain(|x| !gone.contains(x));
        }
    }
    for (k, v) in p {
        if let Some(field) = k.strip_prefix("$setElementOrder/")
            && let (Some(Value::Array(list)), Some(order)) = (t.get_mut(field), v.as_array())
        {
            reorder(list, field, order);
        }
    }
    if let Some(keep) = p.get("$retainKeys").and_then(Value::as_array) {
        t.retain(|k, _| keep.iter().any(|x| x == k));
    }
}

fn merge_list(slot: &mut Value, field: &str, items: &[Value]) {
    if items.iter().any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace")) {
        *slot = Value::Array(
            items.iter().filter(|i| i.get("$patch").is_none()).map(without_directives).collect(),
        );
        return;
    }
    let plain: Vec<Value> = items.iter().map(without_directives).collect();
    let Some(key) = list_key(field, &plain) else {
        *slot = Value::Array(plain);
        return;
    };
    if !slot.is_array() {
        *slot = Value::Array(Vec::new());
    }
    let Value::Array(list) = slot else { return };
    for item in items {
        let pos = list.iter().position(|x| x.get(key) == item.get(key));
        match (item.get("$patch").and_then(Value::as_str), pos) {
            (Some("delete"), Some(i)) => {
                list.remove(i);
            }
            (Some("delete"), None) => {}
            (_, Some(i)) => strategic(&mut list[i], item),
            (_, None) => {
                let mut fresh = Value::Object(Map::new());
                strategic(&mut fresh, item);
                list.push(fresh);
            }
        }
    }
}

/// Items named in `order` first, in that order; the rest after, as they were.
fn reorder(list: &mut [Value], field: &str, order: &[Value]) {
    let Some(key) = list_key(field, order) else {
        // A primitive list: order holds the values themselves.
        list.sort_by_key(|x| order.iter().position(|o| o == x).unwrap_or(usize::MAX));
        return;
    };
    list.sort_by_key(|x| order.iter().position(|o| o.get(key) == x.get(key)).unwrap_or(usize::MAX));
}

fn without_directives(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k.clone(), without_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(without_directives).collect()),
        other => other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn strategic_merge_patch_merges_keyed_lists_and_applies_directives() {
        let mut pod = json!({"spec": {"containers": [
            {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]},
            {"name": "b", "image": "b:1"},
        ], "finalizers": ["x", "y"]}});
        strategic(
            &mut pod,
            &json!({"spec": {
                "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
                "containers": [{"name": "a", "env": [{"name": "Y", "value": "2"}]}, {"name": "c", "$patch": "delete"}],
                "$deleteFromPrimitiveList/finalizers": ["x"],
            }}),
        );
        assert_eq!(
            pod,
            json!({"spec": {"containers": [
                {"name": "b", "image": "b:1"},
                {"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]},
            ], "finalizers": ["y"]}})
        );
        strategic(&mut pod, &json!({"spec": {"containers": [{"name": "b", "$patch": "delete"}]}}));
        assert_eq!(pod["spec"]["containers"].as_array().unwrap().len(), 1);
        strategic(&mut pod, &json!({"spec": {"$patch": "replace", "containers": []}}));
        assert_eq!(pod, json!({"spec": {"containers": []}}));
    }
}
