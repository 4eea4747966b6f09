//! Label selectors (`a=b,c!=d,e in (x,y),f notin (z),g,!h`) and field selectors
//! (`spec.nodeName=n,status.phase!=Failed`) as the API server parses them.

use serde_json::Value;

use crate::util::field_string;

#[derive(Debug, Clone, PartialEq)]
enum Req {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// A parsed label selector. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(Vec<Req>);

impl LabelSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for term in split_top_level(s) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let req = if let Some(key) = term.strip_prefix('!') {
                Req::NotExists(key.trim().to_string())
            } else if let Some((k, v)) = term.split_once("!=") {
                Req::NotEq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = term.split_once("==") {
                Req::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, v)) = term.split_once('=') {
                Req::Eq(k.trim().into(), v.trim().into())
            } else if let Some((k, set)) = split_set(term, " notin ") {
                Req::NotIn(k, set)
            } else if let Some((k, set)) = split_set(term, " in ") {
                Req::In(k, set)
            } else if term.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c)) {
                Req::Exists(term.to_string())
            } else {
                return Err(format!("unable to parse requirement: `{term}`"));
            };
            reqs.push(req);
        }
        Ok(LabelSelector(reqs))
    }

    pub fn matches(&self, obj: &Value) -> bool {
        let label = |k: &str| {
            obj.pointer("/metadata/labels").and_then(|l| l.get(k)).and_then(Value::as_str).map(str::to_string)
        };
        self.0.iter().all(|r| match r {
            Req::Eq(k, v) => label(k).as_deref() == Some(v.as_str()),
            Req::NotEq(k, v) => label(k).as_deref() != Some(v.as_str()),
            Req::In(k, set) => label(k).is_some_and(|l| set.contains(&l)),
            Req::NotIn(k, set) => label(k).is_none_or(|l| !set.contains(&l)),
            Req::Exists(k) => label(k).is_some(),
            Req::NotExists(k) => label(k).is_none(),
        })
    }
}

/// Commas inside `( )` belong to a set, not to the list of requirements.
fn split_top_level(s: &str) -> Vec<String> {
    let mut out = vec![String::new()];
    let mut depth = 0;
    for c in s.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(String::new());
                continue;
            }
            _ => {}
        }
        if let Some(last) = out.last_mut() {
            last.push(c);
        }
    }
    out
}

fn split_set(term: &str, op: &str) -> Option<(String, Vec<String>)> {
    let (k, rest) = term.split_once(op)?;
    let rest = rest.trim().strip_prefix('(')?.strip_suffix(')')?;
    Some((k.trim().to_string(), rest.split(',').map(|s| s.trim().to_string()).collect()))
}

/// A parsed field selector over any dotted path of the object.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut reqs = Vec::new();
        for term in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (path, eq, value) = if let Some((k, v)) = term.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = term.split_once("==") {
                (k, true, v)
            } else if let Some((k, v)) = term.split_once('=') {
                (k, true, v)
            } else {
                return Err(format!("invalid field selector: `{term}`"));
            };
            reqs.push((path.trim().to_string(), eq, value.trim().to_string()));
        }
        Ok(FieldSelector(reqs))
    }

    /// The field paths the selector uses.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(p, _, _)| p.as_str())
    }

    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|(path, eq, value)| (field_string(obj, path) == *value) == *eq)
    }
}

/// `matchExpressions` of label selectors and node selector terms share operators.
pub fn expressions_match(exprs: Option<&Value>, get: impl Fn(&str) -> Option<String>) -> bool {
    let Some(exprs) = exprs.and_then(Value::as_array) else {
        return true;
    };
    exprs.iter().all(|e| {
        let key = e.get("key").and_then(Value::as_str).unwrap_or_default();
        let values: Vec<&str> = e
            .get("values")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let actual = get(key);
        match e.get("operator").and_then(Value::as_str).unwrap_or_default() {
            "In" => actual.is_some_and(|a| values.contains(&a.as_str())),
            "NotIn" => actual.is_none_or(|a| !values.contains(&a.as_str())),
            "Exists" => actual.is_some(),
            "DoesNotExist" => actual.is_none(),
            "Gt" | "Lt" => {
                let (Some(a), Some(v)) = (
                    actual.and_then(|a| a.parse::<i64>().ok()),
                    values.first().and_then(|v| v.parse::<i64>().ok()),
                ) else {
                    return false;
                };
                if e.get("operator").and_then(Value::as_str) == Some("Gt") { a > v } else { a < v }
            }
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn label_selectors() {
        let o = json!({"metadata": {"labels": {"app": "api", "tier": "x", "chutes/chute": "true"}}});
        for (sel, want) in [
            ("", true),
            ("app=api", true),
            ("app==api,tier=x", true),
            ("app!=api", false),
            ("app in (api, web)", true),
            ("app notin (api)", false),
            ("missing notin (a)", true),
            ("chutes/chute", true),
            ("!chutes/chute", false),
            ("!missing,app", true),
        ] {
            assert_eq!(LabelSelector::parse(sel).unwrap().matches(&o), want, "{sel}");
        }
        assert!(LabelSelector::parse("a b c").is_err());
    }

    #[test]
    fn field_selectors() {
        let o = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Failed"}});
        assert!(FieldSelector::parse("status.phase=Failed").unwrap().matches(&o));
        assert!(FieldSelector::parse("spec.nodeName!=n2,metadata.name=p").unwrap().matches(&o));
        assert!(!FieldSelector::parse("spec.nodeName=n2").unwrap().matches(&o));
    }
}
