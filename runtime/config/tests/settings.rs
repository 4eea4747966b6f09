#![allow(clippy::unwrap_used, clippy::expect_used)]
use std::collections::BTreeMap;

use chutes_protocol::Hotkey;
use miner_config::*;

const SEED: &str = "0x4c1d3f7c8d2a9b6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e";

fn ss58_of(seed: &str) -> String {
    Hotkey::from_seed_hex(seed, "test").unwrap().ss58().to_owned()
}

fn env(pairs: &[(&'static str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
}

fn validators_json(hotkey: &str) -> String {
    format!(
        r#"{{"supported":[{{"hotkey":"{hotkey}","registry":"registry.chutes.ai","api":"https://api.chutes.ai","socket":"wss://ws.chutes.ai"}}],"extra":1}}"#
    )
}

#[test]
fn identity_loads_and_checks_the_address_against_the_seed() {
    let ss58 = ss58_of(SEED);
    let id = Identity::from_env(&env(&[("MINER_SS58", &ss58), ("MINER_SEED", SEED)])).unwrap();
    assert_eq!(id.ss58(), ss58);

    let other = ss58_of("0x1111111111111111111111111111111111111111111111111111111111111111");
    let err = Identity::from_env(&env(&[("MINER_SS58", &other), ("MINER_SEED", SEED)])).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("MINER_SS58") && text.contains("does not match"), "{text}");
    assert!(!text.contains(&SEED[2..]), "the seed leaked into: {text}");
}

#[test]
fn a_missing_or_malformed_seed_names_the_variable_and_hides_the_value() {
    let ss58 = ss58_of(SEED);
    let err = Identity::from_env(&env(&[("MINER_SS58", &ss58)])).unwrap_err();
    assert!(err.to_string().contains("MINER_SEED is not set"), "{err}");

    let bad = "zz1d3f7c8d2a9b6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e";
    let err = Identity::from_env(&env(&[("MINER_SS58", &ss58), ("MINER_SEED", bad)])).unwrap_err();
    let text = format!("{err} {err:?}");
    assert!(text.contains("MINER_SEED") && text.contains("64 hex"), "{text}");
    assert!(!text.contains(bad), "the seed leaked into: {text}");
}

#[test]
fn validators_are_parsed_and_each_fault_is_located() {
    let hk = ss58_of(SEED);
    let v = Validators::parse(&validators_json(&hk)).unwrap();
    assert_eq!(v.supported.len(), 1);
    assert_eq!(v.get(&hk).unwrap().api, "https://api.chutes.ai");

    let err = Validators::from_env(&env(&[])).unwrap_err();
    assert!(err.to_string().contains("VALIDATORS is not set"), "{err}");

    let err = Validators::parse("{not json").unwrap_err();
    assert!(err.to_string().contains("VALIDATORS is invalid"), "{err}");

    let err = Validators::parse(r#"{"supported":[]}"#).unwrap_err();
    assert!(err.to_string().contains("lists no validator"), "{err}");

    let bad_key = validators_json("5NotAnAddress");
    let err = Validators::parse(&bad_key).unwrap_err();
    assert!(err.to_string().contains("supported[0]: hotkey"), "{err}");

    let bad_api = validators_json(&hk).replace("https://api.chutes.ai", "api.chutes.ai");
    let err = Validators::parse(&bad_api).unwrap_err();
    assert!(err.to_string().contains("supported[0]: api"), "{err}");

    let twice = format!(
        r#"{{"supported":[{0},{0}]}}"#,
        format_args!(r#"{{"hotkey":"{hk}","registry":"r","api":"https://a","socket":"wss://s"}}"#)
    );
    let err = Validators::parse(&twice).unwrap_err();
    assert!(err.to_string().contains("supported[1]") && err.to_string().contains("twice"), "{err}");
}

#[test]
fn database_url_accepts_the_sqlalchemy_scheme_and_never_shows_the_password() {
    let db = DatabaseSettings::from_env(&env(&[(
        "POSTGRESQL",
        "postgresql+asyncpg://chutes:s3cr3t@pg:5432/chutes",
    )]))
    .unwrap();
    assert_eq!(db.url.expose(), "postgresql://chutes:s3cr3t@pg:5432/chutes");
    assert_eq!(db.url.to_string(), "postgresql://chutes:***@pg:5432/chutes");
    assert!(!format!("{db:?}").contains("s3cr3t"));

    let err = DatabaseSettings::from_env(&env(&[])).unwrap_err();
    assert!(err.to_string().contains("POSTGRESQL is not set"), "{err}");
    let err = DatabaseSettings::from_env(&env(&[("POSTGRESQL", "mysql://u:pw@h/db")])).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("POSTGRESQL is invalid") && !text.contains(":pw@"), "{text}");
}

#[test]
fn redis_defaults_as_the_original_and_validates() {
    let r = RedisSettings::from_env(&env(&[])).unwrap();
    assert_eq!(r.url.expose(), "redis://127.0.0.1:6379/0");
    let err = RedisSettings::from_env(&env(&[("REDIS_URL", "127.0.0.1:6379")])).unwrap_err();
    assert!(err.to_string().contains("REDIS_URL"), "{err}");
    let r = RedisSettings::from_env(&env(&[("REDIS_URL", "redis://:pw@r:6379/0")])).unwrap();
    assert_eq!(r.url.to_string(), "redis://:***@r:6379/0");
}

#[test]
fn api_settings_have_the_original_defaults_and_reject_garbage() {
    let s = ApiSettings::from_env(&env(&[])).unwrap();
    assert_eq!(s.registry_proxy_port, 30500);
    assert_eq!(s.namespace, "chutes");
    assert_eq!(s.graval_bootstrap_timeout_secs, 900);
    assert_eq!(s.prometheus_url, "http://prometheus-server.chutes.svc.cluster.local:80");
    assert_eq!(s.cache.max_age_days, 7);
    assert_eq!(s.cache.max_size_gb, 500);
    assert!(s.cache.overrides.is_empty());
    assert!(!s.bound_management_only, "the original CLI's plain signatures are accepted by default");

    let s = ApiSettings::from_env(&env(&[("MANAGEMENT_BOUND_ONLY", "true")])).unwrap();
    assert!(s.bound_management_only);

    let s =
        ApiSettings::from_env(&env(&[("CACHE_OVERRIDES", r#"{"gpu-1": 900}"#), ("DEBUG", "true")])).unwrap();
    assert_eq!(s.cache.overrides.get("gpu-1"), Some(&900));
    assert!(s.debug);
    assert!(s.image_pull_secrets.is_empty() && s.cache_cleaner_image.is_none());

    let s = ApiSettings::from_env(&env(&[
        ("IMAGE_PULL_SECRETS", " regcred, mirror-cred ,"),
        ("CACHE_CLEANER_IMAGE", "registry.example/chutes-miner@sha256:0123"),
    ]))
    .unwrap();
    assert_eq!(s.image_pull_secrets, ["regcred", "mirror-cred"]);
    assert_eq!(s.cache_cleaner_image.as_deref(), Some("registry.example/chutes-miner@sha256:0123"));

    for (var, value) in [
        ("REGISTRY_PROXY_PORT", "70000"),
        ("REGISTRY_PROXY_PORT", "0"),
        ("CACHE_OVERRIDES", "[1]"),
        ("CACHE_MAX_SIZE_GB", "-1"),
        ("DEBUG", "maybe"),
        ("MANAGEMENT_BOUND_ONLY", "only"),
        ("GRAVAL_BOOTSTRAP_TIMEOUT", "15m"),
    ] {
        let err = ApiSettings::from_env(&env(&[(var, value)])).unwrap_err();
        assert!(err.to_string().contains(var), "{var}={value}: {err}");
    }
}

#[test]
fn porter_requires_a_real_whitelist() {
    let hk = ss58_of(SEED);
    let ok = env(&[
        ("REAL_AXON_HOST", "10.0.0.1"),
        ("REAL_AXON_PORT", "32000"),
        ("MINER_HOTKEY_SS58", &hk),
        ("VALIDATOR_WHITELIST", &format!(" {hk} ,")),
    ]);
    let p = PorterSettings::from_env(&ok).unwrap();
    assert_eq!(p.whitelist, vec![hk.clone()]);
    assert_eq!(p.real_port, 32000);

    let mut empty = ok.clone();
    empty.insert("VALIDATOR_WHITELIST".into(), " , ".into());
    let err = PorterSettings::from_env(&empty).unwrap_err();
    assert!(err.to_string().contains("VALIDATOR_WHITELIST"), "{err}");

    let mut bad_port = ok.clone();
    bad_port.insert("REAL_AXON_PORT".into(), "http".into());
    assert!(PorterSettings::from_env(&bad_port).unwrap_err().to_string().contains("REAL_AXON_PORT"));
}

#[test]
fn audit_settings_derive_the_rpc_endpoint_from_the_subtensor_address() {
    let a = AuditSettings::from_env(&env(&[])).unwrap();
    assert_eq!(a.upload_url, "https://api.chutes.ai/audit/miner_data");
    assert_eq!(a.subtensor_rpc, "https://entrypoint-finney.opentensor.ai:443");
    let err = AuditSettings::from_env(&env(&[("AUDIT_URL", "ftp://x")])).unwrap_err();
    assert!(err.to_string().contains("AUDIT_URL"), "{err}");
}

#[test]
fn malformed_urls_and_query_passwords_never_reach_an_error_or_debug_output() {
    // A forgotten scheme: the error must still hide the password.
    for (var, raw) in [
        ("POSTGRESQL", "chutes:s3cr3t@pg:5432/chutes"),
        ("POSTGRESQL", "mysql://pg/db?user=u&password=s3cr3t"),
        ("REDIS_URL", ":s3cr3t@r:6379/0"),
        ("REDIS_URL", "rediss//:s3cr3t@r:6379/0"),
    ] {
        let text = if var == "POSTGRESQL" {
            DatabaseSettings::from_env(&env(&[(var, raw)])).unwrap_err().to_string()
        } else {
            RedisSettings::from_env(&env(&[(var, raw)])).unwrap_err().to_string()
        };
        assert!(text.contains(var), "{text}");
        assert!(!text.contains("s3cr3t"), "{raw}: {text}");
    }
    // Accepted URLs with the password in the query string.
    let db = DatabaseSettings::from_env(&env(&[("POSTGRESQL", "postgresql://pg/db?user=u&password=s3cr3t")]))
        .unwrap();
    assert_eq!(db.url.to_string(), "postgresql://pg/db?user=u&password=***");
    assert!(!format!("{db:?}").contains("s3cr3t"));
    let r = RedisSettings::from_env(&env(&[("REDIS_URL", "redis://r:6379/0?password=s3cr3t")])).unwrap();
    assert!(!format!("{r:?} {}", r.url).contains("s3cr3t"));
}

#[test]
fn gepetto_records_a_trace_only_into_an_absolute_path() {
    let base = [("PROMETHEUS_URL", "http://prometheus:9090")];
    let s = GepettoSettings::from_env(&env(&base)).unwrap();
    assert_eq!(s.record_trace, None);
    assert_eq!(s.strategy, StrategyKind::Multiplier);

    let s =
        GepettoSettings::from_env(&env(&[base[0], ("GEPETTO_RECORD_TRACE", "/var/lib/gepetto/week.jsonl")]))
            .unwrap();
    assert_eq!(s.record_trace.as_deref(), Some(std::path::Path::new("/var/lib/gepetto/week.jsonl")));

    let err =
        GepettoSettings::from_env(&env(&[base[0], ("GEPETTO_RECORD_TRACE", "week.jsonl")])).unwrap_err();
    assert!(
        err.to_string().contains("GEPETTO_RECORD_TRACE") && err.to_string().contains("absolute"),
        "{err}"
    );
}
