//! Validation the real API server does and clients can trip over: object names, label keys
//! and values, Job rules (template labels fit in 63 characters, restartPolicy, immutable
//! template and selector). Errors are 422 `Invalid` with `details.causes`, worded as the
//! real server words them.

use serde_json::Value;

use crate::kinds::Kind;
use crate::store::{ApiError, State};

const SUBDOMAIN: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const LABEL_1123: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const LABEL_1035: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";
const LABEL_VALUE: &str = "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')";
const LABEL_NAME: &str = "name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')";

type Causes = Vec<(String, String)>;

fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

fn subdomain(s: &str) -> bool {
    s.split('.').all(dns_label)
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`
fn qualified_part(s: &str) -> bool {
    !s.is_empty()
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// The object's own name: Namespaces are RFC 1123 labels, Services DNS-1035 labels,
/// everything else RFC 1123 subdomains.
pub fn name(kind: &Kind, name: &str) -> Result<(), ApiError> {
    let field = "metadata.name".to_string();
    let bad = |m: String| Err(ApiError::invalid(kind, name, vec![(field.clone(), m)]));
    let value = format!("Invalid value: \"{name}\"");
    match kind.kind {
        "Namespace" => {
            if name.len() > 63 {
                return bad(format!("{value}: must be no more than 63 characters"));
            }
            if !dns_label(name) {
                return bad(format!("{value}: {LABEL_1123}"));
            }
        }
        "Service" => {
            if name.len() > 63 {
                return bad(format!("{value}: must be no more than 63 characters"));
            }
            if !dns_label(name) || !name.starts_with(|c: char| c.is_ascii_lowercase()) {
                return bad(format!("{value}: {LABEL_1035}"));
            }
        }
        _ => {
            if name.len() > 253 {
                return bad(format!("{value}: must be no more than 253 characters"));
            }
            if !subdomain(name) {
                return bad(format!("{value}: {SUBDOMAIN}"));
            }
        }
    }
    Ok(())
}

fn labels(v: Option<&Value>, field: &str, out: &mut Causes) {
    let Some(map) = v.and_then(Value::as_object) else { return };
    for (k, val) in map {
        let (prefix, part) = match k.rsplit_once('/') {
            Some((p, n)) => (Some(p), n),
            None => (None, k.as_str()),
        };
        if part.len() > 63 {
            out.push((
                field.into(),
                format!("Invalid value: \"{k}\": name part must be no more than 63 characters"),
            ));
        } else if !qualified_part(part) {
            out.push((field.into(), format!("Invalid value: \"{k}\": {LABEL_NAME}")));
        }
        if let Some(p) = prefix
            && (p.len() > 253 || !subdomain(p))
        {
            out.push((field.into(), format!("Invalid value: \"{k}\": prefix part {SUBDOMAIN}")));
        }
        let val = val.as_str().unwrap_or_default();
        if val.len() > 63 {
            out.push((field.into(), format!("Invalid value: \"{val}\": must be no more than 63 characters")));
        } else if !val.is_empty() && !qualified_part(val) {
            out.push((field.into(), format!("Invalid value: \"{val}\": {LABEL_VALUE}")));
        }
    }
}

/// Everything but the name: labels, and the rules of the kind. `old` is the stored
/// version on an update (immutable fields).
pub fn object(_state: &State, kind: &Kind, old: Option<&Value>, obj: &Value) -> Result<(), ApiError> {
    let mut causes = Causes::new();
    labels(obj.pointer("/metadata/labels"), "metadata.labels", &mut causes);
    if matches!(kind.kind, "Deployment" | "StatefulSet" | "DaemonSet" | "Job") {
        labels(obj.pointer("/spec/template/metadata/labels"), "spec.template.labels", &mut causes);
    }
    if kind.kind == "Job" {
        job(obj, old, &mut causes);
    }
    if causes.is_empty() {
        Ok(())
    } else {
        let name = obj.pointer("/metadata/name").and_then(Value::as_str).unwrap_or_default();
        Err(ApiError::invalid(kind, name, causes))
    }
}

fn job(obj: &Value, old: Option<&Value>, causes: &mut Causes) {
    match obj.pointer("/spec/template/spec/restartPolicy").and_then(Value::as_str) {
        Some("Never" | "OnFailure") => {}
        other => causes.push((
            "spec.template.spec.restartPolicy".into(),
            format!(
                "Unsupported value: \"{}\": supported values: \"OnFailure\", \"Never\"",
                other.unwrap_or_default()
            ),
        )),
    }
    if let Some(old) = old {
        for (pointer, field) in [
            ("/spec/template", "spec.template"),
            ("/spec/selector", "spec.selector"),
            ("/spec/completions", "spec.completions"),
        ] {
            let (was, now) = (old.pointer(pointer), obj.pointer(pointer));
            if was != now {
                let shown = now.map(Value::to_string).unwrap_or_else(|| "null".into());
                causes.push((field.into(), format!("Invalid value: {shown}: field is immutable")));
            }
        }
    }
}
