//! `--dry-run` output: live object vs what the server would store, as a YAML diff, with
//! Secret values replaced by markers so a preview never shows one.

use minerctl_manifests::canonical;
use serde_json::{Value, json};

/// What is worth comparing: no server bookkeeping, no status.
pub(crate) fn normalize(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("status");
    }
    if let Some(meta) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in ["managedFields", "resourceVersion", "uid", "creationTimestamp", "generation", "selfLink"] {
            meta.remove(k);
        }
    }
    canonical(v)
}

/// Replaces Secret values; a value that differs from `other`'s is marked as changed.
pub(crate) fn redact(v: &mut Value, other: Option<&Value>) {
    if v.get("kind").and_then(Value::as_str) != Some("Secret") {
        return;
    }
    for field in ["data", "stringData"] {
        let theirs = other.and_then(|o| o.get(field)).cloned();
        if let Some(Value::Object(map)) = v.get_mut(field) {
            for (k, val) in map.iter_mut() {
                let same = theirs.as_ref().and_then(|t| t.get(k)) == Some(val);
                *val = json!(if same || other.is_none() { "<redacted>" } else { "<redacted, changed>" });
            }
        }
    }
}

pub(crate) fn yaml(v: &Value) -> String {
    serde_saphyr::to_string(v).unwrap_or_else(|e| format!("<cannot show: {e}>\n"))
}

/// Unified diff of two YAML texts (empty when equal).
pub(crate) fn unified(old: &str, new: &str, label: &str) -> String {
    if old == new {
        return String::new();
    }
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(&format!("live {label}"), &format!("rendered {label}"))
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_and_changes_still_show() {
        let live = json!({"kind": "Secret", "data": {"seed": "c2VjcmV0", "ss58": "NUFiYw=="}});
        let mut new = json!({"kind": "Secret", "data": {"seed": "b3RoZXI=", "ss58": "NUFiYw=="}});
        let mut old = live.clone();
        redact(&mut new, Some(&live));
        redact(&mut old, None);
        let d = unified(&yaml(&old), &yaml(&new), "Secret x");
        assert!(!d.contains("c2VjcmV0") && !d.contains("b3RoZXI="), "{d}");
        assert!(d.contains("+  seed: <redacted, changed>"), "{d}");
        assert!(!d.contains("+  ss58"), "{d}");
    }

    #[test]
    fn bookkeeping_is_not_a_difference() {
        let a = json!({"metadata": {"name": "x", "resourceVersion": "1", "managedFields": []}, "status": {"a": 1}, "spec": {"b": 1}});
        let b = json!({"metadata": {"name": "x", "resourceVersion": "2"}, "spec": {"b": 1}});
        assert_eq!(normalize(&a), normalize(&b));
    }
}
