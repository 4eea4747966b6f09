//! Field ownership and server-side apply.
//!
//! Model: an object's fields are the paths to its leaves; a leaf is a scalar, an atomic list
//! (owned and replaced whole) or an empty map. Keyed lists (containers, env, volumes by
//! `name`, ports by `containerPort`: see `merge::list_key`) are associative as on the real
//! server: each item is a path segment `k:{"name":"c"}`, so managers own items field by
//! field. Each manager owns a set of paths, stored in `metadata.managedFields` in the real
//! `FieldsV1` shape. Apply conflicts when it
//! would change the value of a path another manager owns; `force` takes the path over.
//! Fields a manager applied before and no longer applies are removed unless someone else
//! owns them. Non-apply writes give the writer the paths it changed.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::merge::list_key;
use crate::util::now_rfc3339;

pub type Path = Vec<String>;
pub type FieldSet = BTreeSet<Path>;

/// Paths nobody owns: identity, server-set metadata and status.
fn ignored(path: &[String]) -> bool {
    match path.first().map(String::as_str) {
        Some("apiVersion" | "kind" | "status") => true,
        Some("metadata") => matches!(
            path.get(1).map(String::as_str),
            Some(
                "name"
                    | "namespace"
                    | "resourceVersion"
                    | "uid"
                    | "creationTimestamp"
                    | "generation"
                    | "managedFields"
                    | "deletionTimestamp"
                    | "selfLink"
            )
        ),
        _ => false,
    }
}

pub fn leaves(v: &Value) -> FieldSet {
    let mut out = FieldSet::new();
    collect(v, &mut Vec::new(), &mut out);
    out
}

fn collect(v: &Value, prefix: &mut Path, out: &mut FieldSet) {
    if ignored(prefix) {
        return;
    }
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                prefix.push(k.clone());
                collect(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(items)
            if !items.is_empty()
                && let Some(key) = prefix.last().and_then(|f| list_key(f, items)) =>
        {
            for item in items {
                prefix.push(item_segment(key, item));
                collect(item, prefix, out);
                prefix.pop();
            }
        }
        _ if prefix.is_empty() => {}
        _ => {
            out.insert(prefix.clone());
        }
    }
}

/// `k:{"name":"c"}`: the path segment of a keyed list's item.
fn item_segment(key: &str, item: &Value) -> String {
    let mut m = Map::new();
    m.insert(key.to_string(), item.get(key).cloned().unwrap_or(Value::Null));
    format!("k:{}", Value::Object(m))
}

/// The (key, value) a `k:` segment names.
fn parse_segment(seg: &str) -> Option<(String, Value)> {
    let v: Value = serde_json::from_str(seg.strip_prefix("k:")?).ok()?;
    v.as_object()?.iter().next().map(|(k, v)| (k.clone(), v.clone()))
}

fn step<'a>(node: &'a Value, seg: &str) -> Option<&'a Value> {
    match (node, parse_segment(seg)) {
        (Value::Array(items), Some((k, v))) => items.iter().find(|i| i.get(&k) == Some(&v)),
        _ => node.get(seg),
    }
}

fn step_mut<'a>(node: &'a mut Value, seg: &str) -> Option<&'a mut Value> {
    match (node, parse_segment(seg)) {
        (Value::Array(items), Some((k, v))) => items.iter_mut().find(|i| i.get(&k) == Some(&v)),
        (node, _) => node.get_mut(seg),
    }
}

pub fn get_path<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |node, k| step(node, k))
}

/// A path as the real server prints it in conflicts: `.spec.containers[name="c"].image`.
pub fn display_path(path: &[String]) -> String {
    path.iter()
        .map(|seg| match parse_segment(seg) {
            Some((k, v)) => format!("[{k}={v}]"),
            None => format!(".{seg}"),
        })
        .collect()
}

/// Removes a leaf, any map it leaves empty, and a list item left with only its key.
fn remove_path(v: &mut Value, path: &[String]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let key_of_item = parents.last().and_then(|p| parse_segment(p)).map(|(k, _)| k);
    let emptied = match get_path_mut(v, parents) {
        Some(Value::Object(m)) => {
            m.remove(last);
            m.is_empty() || key_of_item.is_some_and(|k| m.len() == 1 && m.contains_key(&k))
        }
        Some(Value::Array(items)) => {
            if let Some((k, val)) = parse_segment(last) {
                items.retain(|i| i.get(&k) != Some(&val));
            }
            items.is_empty()
        }
        _ => false,
    };
    if emptied && !parents.is_empty() {
        remove_path(v, parents);
    }
}

fn get_path_mut<'a>(v: &'a mut Value, path: &[String]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |node, k| step_mut(node, k))
}

/// One path is the other or contains it.
fn overlaps(a: &[String], b: &[String]) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

/// Does applying `applied` leave `live` as it is? True when every field of `applied` is in
/// `live` with the same value; what the server defaulted into `live` (a Service port's
/// `nodePort`, `protocol`) is not a difference. This stands in for the real server's
/// associative lists, which own list items field by field.
fn within(applied: Option<&Value>, live: Option<&Value>, field: &str) -> bool {
    match (applied, live) {
        (None, None) => true,
        (Some(Value::Object(a)), Some(Value::Object(l))) => {
            a.iter().all(|(k, v)| within(Some(v), l.get(k), k))
        }
        (Some(Value::Array(a)), Some(Value::Array(l))) => match list_key(field, a) {
            Some(key) => a.iter().all(|x| within(Some(x), l.iter().find(|y| y.get(key) == x.get(key)), "")),
            None => a.len() == l.len() && a.iter().zip(l).all(|(x, y)| within(Some(x), Some(y), "")),
        },
        (a, l) => a == l,
    }
}

/// Maps merge key by key, keyed lists item by item; anything else replaces.
pub fn merge_into(base: &mut Value, overlay: &Value, field: &str) {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(k) {
                    Some(slot)
                        if (slot.is_object()
                            && v.is_object()
                            && !v.as_object().is_some_and(Map::is_empty))
                            || (slot.is_array() && v.is_array()) =>
                    {
                        merge_into(slot, v, k)
                    }
                    _ => {
                        b.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (Value::Array(b), Value::Array(o)) if list_key(field, o).is_some() => {
            let key = list_key(field, o).unwrap_or_default();
            for item in o {
                match b.iter_mut().find(|x| x.get(key) == item.get(key)) {
                    Some(slot) => merge_into(slot, item, ""),
                    None => b.push(item.clone()),
                }
            }
        }
        (slot, v) => *slot = v.clone(),
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub manager: String,
    pub operation: String,
    pub api_version: String,
    pub time: String,
    pub subresource: Option<String>,
    pub fields: FieldSet,
}

pub fn read_entries(obj: &Value) -> Vec<Entry> {
    let Some(list) = obj.pointer("/metadata/managedFields").and_then(Value::as_array) else {
        return Vec::new();
    };
    list.iter()
        .map(|e| {
            let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or_default().to_string();
            let mut fields = FieldSet::new();
            if let Some(f) = e.get("fieldsV1") {
                parse_fields_v1(f, &mut Vec::new(), &mut fields);
            }
            Entry {
                manager: s("manager"),
                operation: s("operation"),
                api_version: s("apiVersion"),
                time: s("time"),
                subresource: e.get("subresource").and_then(Value::as_str).map(str::to_string),
                fields,
            }
        })
        .collect()
}

fn parse_fields_v1(v: &Value, prefix: &mut Path, out: &mut FieldSet) {
    let children: Vec<(&String, &Value)> = v
        .as_object()
        .map(|m| m.iter().filter(|(k, _)| k.starts_with("f:") || k.starts_with("k:")).collect())
        .unwrap_or_default();
    if children.is_empty() {
        if !prefix.is_empty() {
            out.insert(prefix.clone());
        }
        return;
    }
    for (k, child) in children {
        prefix.push(if k.starts_with("k:") { k.clone() } else { k[2..].to_string() });
        parse_fields_v1(child, prefix, out);
        prefix.pop();
    }
}

fn fields_v1(set: &FieldSet) -> Value {
    let mut root = Value::Object(Map::new());
    for path in set {
        let mut node = &mut root;
        for k in path {
            let Value::Object(m) = node else { break };
            let name = if k.starts_with("k:") { k.clone() } else { format!("f:{k}") };
            node = m.entry(name).or_insert_with(|| Value::Object(Map::new()));
        }
    }
    root
}

pub fn write_entries(obj: &mut Value, entries: &[Entry]) {
    let list: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut v = json!({
                "manager": e.manager,
                "operation": e.operation,
                "apiVersion": e.api_version,
                "time": e.time,
                "fieldsType": "FieldsV1",
                "fieldsV1": fields_v1(&e.fields),
            });
            if let Some(s) = &e.subresource {
                v["subresource"] = json!(s);
            }
            v
        })
        .collect();
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        if list.is_empty() {
            meta.remove("managedFields");
        } else {
            meta.insert("managedFields".into(), Value::Array(list));
        }
    }
}

/// A field another manager owns with a different value.
#[derive(Debug, Clone, PartialEq)]
pub struct Conflict {
    pub manager: String,
    pub path: Path,
}

/// Server-side apply of `applied` by `manager` onto `live` (None: create).
pub fn apply(
    live: Option<&Value>,
    applied: &Value,
    manager: &str,
    force: bool,
) -> Result<Value, Vec<Conflict>> {
    let empty = json!({});
    let live = live.unwrap_or(&empty);
    let mut entries = read_entries(live);
    let api_version = applied.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_string();
    let new_set = leaves(applied);
    let is_mine = |e: &Entry| e.manager == manager && e.operation == "Apply" && e.subresource.is_none();

    let mut conflicts = Vec::new();
    for e in entries.iter().filter(|e| !is_mine(e)) {
        for q in &e.fields {
            let touched = new_set.iter().any(|p| overlaps(p, q));
            let field = q.last().map(String::as_str).unwrap_or_default();
            if touched && !within(get_path(applied, q), get_path(live, q), field) {
                conflicts.push(Conflict { manager: e.manager.clone(), path: q.clone() });
            }
        }
    }
    if !conflicts.is_empty() {
        if !force {
            return Err(conflicts);
        }
        for e in entries.iter_mut().filter(|e| !is_mine(e)) {
            e.fields.retain(|q| !conflicts.iter().any(|c| c.manager == e.manager && &c.path == q));
        }
    }

    let old_set = entries.iter().find(|e| is_mine(e)).map(|e| e.fields.clone()).unwrap_or_default();
    let mut result = live.clone();
    let others_own = |p: &[String]| {
        entries.iter().filter(|e| !is_mine(e)).any(|e| e.fields.iter().any(|o| overlaps(o, p)))
    };
    for q in old_set.difference(&new_set) {
        if others_own(q) {
            continue;
        }
        // A list item this manager no longer applies goes whole (with what the server
        // defaulted into it) unless someone else owns part of it.
        let item = (1..=q.len()).map(|n| &q[..n]).find(|p| {
            p.last().is_some_and(|s| s.starts_with("k:"))
                && !new_set.iter().any(|n| n.starts_with(p))
                && !others_own(p)
        });
        remove_path(&mut result, item.unwrap_or(q));
    }
    let mut body = applied.clone();
    if let Some(m) = body.as_object_mut() {
        m.remove("status");
        if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("managedFields");
            meta.remove("resourceVersion");
        }
    }
    merge_into(&mut result, &body, "");

    entries.retain(|e| !is_mine(e));
    entries.push(Entry {
        manager: manager.to_string(),
        operation: "Apply".into(),
        api_version,
        time: now_rfc3339(),
        subresource: None,
        fields: new_set,
    });
    write_entries(&mut result, &entries);
    Ok(result)
}

/// Records a non-apply write (create, update, patch) by `manager`: it owns what it changed.
pub fn record_update(old: Option<&Value>, new: &mut Value, manager: &str, subresource: Option<&str>) {
    let mut entries = old.map(read_entries).unwrap_or_default();
    let old_leaves = old.map(leaves).unwrap_or_default();
    let new_leaves = leaves(new);
    let changed: FieldSet =
        new_leaves.iter().filter(|p| old.and_then(|o| get_path(o, p)) != get_path(new, p)).cloned().collect();
    let removed: Vec<&Path> = old_leaves.difference(&new_leaves).collect();
    for e in entries.iter_mut() {
        e.fields.retain(|q| !changed.iter().any(|c| overlaps(c, q)) && !removed.contains(&q));
    }
    if !changed.is_empty() {
        let api_version = new.get("apiVersion").and_then(Value::as_str).unwrap_or_default().to_string();
        let slot = entries.iter_mut().find(|e| {
            e.manager == manager && e.operation == "Update" && e.subresource.as_deref() == subresource
        });
        match slot {
            Some(e) => {
                e.fields.extend(changed);
                e.time = now_rfc3339();
            }
            None => entries.push(Entry {
                manager: manager.to_string(),
                operation: "Update".into(),
                api_version,
                time: now_rfc3339(),
                subresource: subresource.map(str::to_string),
                fields: changed,
            }),
        }
    }
    write_entries(new, &entries);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(data: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": data})
    }

    #[test]
    fn apply_creates_then_removes_fields_it_stopped_applying() {
        let a = apply(None, &cm(json!({"a": "1", "b": "2"})), "m", false).unwrap();
        assert_eq!(a["data"], json!({"a": "1", "b": "2"}));
        let b = apply(Some(&a), &cm(json!({"a": "1"})), "m", false).unwrap();
        assert_eq!(b["data"], json!({"a": "1"}));
        let owned = &read_entries(&b)[0].fields;
        assert!(owned.contains(&vec!["data".to_string(), "a".to_string()]));
    }

    #[test]
    fn conflicting_managers_need_force_and_same_values_share() {
        let a = apply(None, &cm(json!({"a": "1"})), "one", false).unwrap();
        // Same value: no conflict, both own it.
        let b = apply(Some(&a), &cm(json!({"a": "1"})), "two", false).unwrap();
        assert_eq!(read_entries(&b).len(), 2);
        let err = apply(Some(&b), &cm(json!({"a": "9"})), "two", false).unwrap_err();
        assert_eq!(err[0].manager, "one");
        let c = apply(Some(&b), &cm(json!({"a": "9"})), "two", true).unwrap();
        assert_eq!(c["data"]["a"], "9");
        // "one" lost the field; its next apply conflicts the other way.
        assert!(apply(Some(&c), &cm(json!({"a": "1"})), "one", false).is_err());
    }

    #[test]
    fn an_update_takes_ownership_from_the_applier() {
        let a = apply(None, &cm(json!({"a": "1"})), "minerctl", false).unwrap();
        let mut edited = a.clone();
        edited["data"]["a"] = json!("2");
        record_update(Some(&a), &mut edited, "kubectl-edit", None);
        let err = apply(Some(&edited), &cm(json!({"a": "1"})), "minerctl", false).unwrap_err();
        assert_eq!(err[0].manager, "kubectl-edit");
        assert_eq!(err[0].path, vec!["data".to_string(), "a".to_string()]);
    }
}
