//! Values the runtime parses at start-up, checked at values load by the runtime's own
//! settings loaders (`miner-config`), run on the environment `render` writes.
//!
//! A value the API, Gepetto, the audit exporter or porter refuses (a validator `api`
//! without a scheme, a hotkey that is not SS58) would otherwise deploy, crash-loop, and
//! show only as CrashLoopBackOff when the rollout times out. Running the same loaders
//! here means the check cannot drift from the runtime; the error names the values key.

use std::collections::BTreeMap;

use miner_config::{
    ApiSettings, AuditSettings, ConfigError, DatabaseSettings, Env, GepettoSettings, PorterSettings,
    RedisSettings, Validators,
};
use serde_json::Value;

use crate::error::ValuesError;
use crate::render::{WorkloadEnv, workload_env};
use crate::values::Values;

/// What every Secret reference (`valueFrom`) reads as here: values hold no secrets. It
/// passes every check the runtime makes of one (an SS58 address for the miner hotkey,
/// URL-safe for the passwords placed in `POSTGRESQL` and `REDIS_URL`). The seed is never
/// checked (`Identity` is not loaded here): it is not part of the values.
const SECRET_STAND_IN: &str = "5GrwvaEF5zXb26Fz9rcQpDWS57CtERHpNehXCPcNoHGKutQY";

type Loader = fn(&dyn Env) -> Result<(), ConfigError>;

/// The loaders `chutes-miner <subcommand>` runs before it does anything
/// (runtime/miner/src/main.rs), minus `Identity` (the secret seed).
const MIGRATE: &[Loader] = &[|e| DatabaseSettings::from_env(e).map(drop)];
const API: &[Loader] = &[
    |e| Validators::from_env(e).map(drop),
    |e| RedisSettings::from_env(e).map(drop),
    |e| ApiSettings::from_env(e).map(drop),
    |e| DatabaseSettings::from_env(e).map(drop),
];
const GEPETTO: &[Loader] = &[
    |e| Validators::from_env(e).map(drop),
    |e| RedisSettings::from_env(e).map(drop),
    |e| ApiSettings::from_env(e).map(drop),
    |e| GepettoSettings::from_env(e).map(drop),
    |e| DatabaseSettings::from_env(e).map(drop),
];
const AUDIT: &[Loader] =
    &[|e| AuditSettings::from_env(e).map(drop), |e| DatabaseSettings::from_env(e).map(drop)];
const PORTER: &[Loader] = &[|e| PorterSettings::from_env(e).map(drop)];

/// Runs the runtime's loaders on each rendered container's environment.
pub(crate) fn check(values: &Values) -> Result<(), ValuesError> {
    let WorkloadEnv { api, gepetto, audit, migrate, porter } =
        workload_env(values).map_err(|e| ValuesError::Invalid {
            key: "validators".into(),
            message: format!("cannot build the runtime's environment: {e}"),
        })?;
    let mut workloads =
        vec![("migrate init container", migrate, MIGRATE), ("API", api, API), ("Gepetto", gepetto, GEPETTO)];
    if values.audit_exporter.enabled {
        workloads.push(("audit exporter", audit, AUDIT));
    }
    if values.porter.enabled {
        workloads.push(("porter", porter, PORTER));
    }
    // The first refusal, and every workload that refuses the same variable (VALIDATORS
    // stops both the API and Gepetto).
    let mut first: Option<(ConfigError, Vec<&str>)> = None;
    for (workload, list, loaders) in workloads {
        let env = resolve(&list);
        let Some(error) = loaders.iter().find_map(|load| load(&env).err()) else { continue };
        match &mut first {
            None => first = Some((error, vec![workload])),
            Some((seen, names)) if var(seen) == var(&error) => names.push(workload),
            Some(_) => {}
        }
    }
    match first {
        None => Ok(()),
        Some((error, names)) => Err(refused(&names, &error)),
    }
}

fn var(error: &ConfigError) -> &'static str {
    match error {
        ConfigError::Missing { var, .. }
        | ConfigError::Invalid { var, .. }
        | ConfigError::Key { var, .. } => var,
    }
}

/// The variables a container sees: plain values with `$(NAME)` of earlier entries
/// expanded (as the kubelet does), Secret references as [`SECRET_STAND_IN`].
fn resolve(list: &[Value]) -> BTreeMap<String, String> {
    let mut env = BTreeMap::new();
    for entry in list {
        let Some(name) = entry.get("name").and_then(Value::as_str) else { continue };
        let value = match entry.get("value").and_then(Value::as_str) {
            Some(text) => expand(text, &env),
            None => SECRET_STAND_IN.to_string(),
        };
        env.insert(name.to_string(), value);
    }
    env
}

fn expand(text: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("$(") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find(')').and_then(|end| env.get(&after[..end]).map(|v| (end, v))) {
            Some((end, value)) => {
                out.push_str(value);
                rest = &after[end + 1..];
            }
            // Unknown references stay as written (the kubelet does the same).
            None => {
                out.push_str("$(");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The runtime's error, said about the values key that produced the variable.
fn refused(workloads: &[&str], error: &ConfigError) -> ValuesError {
    let (var, detail) = match error {
        ConfigError::Missing { var, hint } => (*var, format!("is empty; the runtime needs {hint}")),
        ConfigError::Invalid { var, reason } => (*var, reason.clone()),
        ConfigError::Key { var, source } => (*var, source.to_string()),
    };
    // Nested checks repeat the variable's name; it is said once, at the end.
    let detail = detail.replace(&format!("environment variable {var} is invalid: "), "");
    let (key, detail) = values_key(var, &detail);
    let who = match workloads {
        [one] => format!("the {one} would refuse to start: it reads"),
        [init @ .., last] => format!("the {} and {last} would refuse to start: they read", init.join(", ")),
        [] => "the runtime would refuse to start: it reads".to_string(),
    };
    ValuesError::Invalid { key, message: format!("{detail} ({who} this as {var})") }
}

/// Which values key a rendered variable comes from (see `render::workload_env`).
fn values_key(var: &str, detail: &str) -> (String, String) {
    let key = match var {
        "VALIDATORS" => return validators_key(detail),
        "VALIDATOR_WHITELIST" => "validators.supported",
        "REGISTRY_PROXY_PORT" => "validators.supported[0].registryNodePort",
        "REAL_AXON_HOST" => "porter.realHost",
        "REAL_AXON_PORT" => "porter.realPort",
        "POSTGRESQL" => "postgres.user/postgres.database",
        "GRAVAL_BOOTSTRAP_IMAGE" => "graval.image",
        "GRAVAL_BOOTSTRAP_IMAGE_ROCM" => "graval.imageRocm",
        "GRAVAL_BOOTSTRAP_TIMEOUT" => "graval.timeoutSeconds",
        "CACHE_MAX_AGE_DAYS" => "cache.max_age_days",
        "CACHE_MAX_SIZE_GB" => "cache.max_size_gb",
        "CACHE_OVERRIDES" => "cache.overrides",
        "CACHE_CLEANER_IMAGE" => "gepetto.image",
        "GEPETTO_STRATEGY" => "gepetto.strategy",
        "GEPETTO_RECORD_TRACE" => "gepetto.recordTraceDir",
        "CHUTES_NAMESPACE" | "PROMETHEUS_URL" => "namespace",
        "MANAGEMENT_BOUND_ONLY" => "minerApi.boundManagementOnly",
        "IMAGE_PULL_SECRETS" => "imagePullSecrets",
        other => return (format!("(rendered environment variable {other})"), detail.to_string()),
    };
    (key.to_string(), detail.to_string())
}

/// `supported[1]: api: ...` → `validators.supported[1].api` and the rest.
fn validators_key(detail: &str) -> (String, String) {
    const FIELDS: &[&str] = &["hotkey", "registry", "api", "socket", "registryNodePort"];
    let whole = || ("validators.supported".to_string(), detail.to_string());
    let Some((index, rest)) = detail.strip_prefix("supported[").and_then(|r| r.split_once("]: ")) else {
        return whole();
    };
    if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) {
        return whole();
    }
    let entry = format!("validators.supported[{index}]");
    let field = &rest[..rest.find([':', ' ']).unwrap_or(rest.len())];
    if !FIELDS.contains(&field) {
        return (entry, rest.to_string());
    }
    let message = rest.strip_prefix(&format!("{field}: ")).unwrap_or(rest);
    (format!("{entry}.{field}"), message.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_expand_like_the_kubelet_and_secrets_are_stand_ins() {
        let list = vec![
            serde_json::json!({"name": "PW", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}),
            serde_json::json!({"name": "URL", "value": "redis://:$(PW)@redis:6379/$(NOPE)"}),
        ];
        let env = resolve(&list);
        assert_eq!(env["PW"], SECRET_STAND_IN);
        assert_eq!(env["URL"], format!("redis://:{SECRET_STAND_IN}@redis:6379/$(NOPE)"));
    }

    #[test]
    fn validator_errors_name_the_field() {
        assert_eq!(
            validators_key("supported[2]: api: x must start with one of http://, https://"),
            ("validators.supported[2].api".into(), "x must start with one of http://, https://".into())
        );
        assert_eq!(
            validators_key("supported[0]: registry is empty"),
            ("validators.supported[0].registry".into(), "registry is empty".into())
        );
        assert_eq!(
            validators_key("\"supported\" lists no validator"),
            ("validators.supported".into(), "\"supported\" lists no validator".into())
        );
    }

    #[test]
    fn the_stand_in_passes_the_runtimes_hotkey_check() {
        assert!(chutes_protocol_check(SECRET_STAND_IN));
    }

    /// Via the runtime's porter loader, which checks `MINER_HOTKEY_SS58` as an SS58 key.
    fn chutes_protocol_check(ss58: &str) -> bool {
        let env: BTreeMap<&str, &str> = BTreeMap::from([
            ("REAL_AXON_HOST", "h"),
            ("REAL_AXON_PORT", "1"),
            ("MINER_HOTKEY_SS58", ss58),
            ("VALIDATOR_WHITELIST", ss58),
        ]);
        PorterSettings::from_env(&env).is_ok()
    }
}
