//! Typed settings of the miner runtime, read from the original environment variables.
//!
//! Every subcommand loads only the sections it needs ([`Identity`], [`Validators`],
//! [`DatabaseSettings`], ...), so `chutes-miner migrate` does not demand a hotkey.
//! Each loader reads through an [`Env`] (the process environment in production, a
//! map in tests) and fails with a [`ConfigError`] that names the variable and says
//! what is wrong with it. Secrets (the seed, passwords inside URLs) never appear in
//! an error or in `Debug` output: URLs are shown with their password replaced.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::sync::Arc;

use chutes_protocol::{Hotkey, KeyError, PublicKey};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Where settings come from. The process environment in production.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for BTreeMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

impl Env for BTreeMap<&str, &str> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).map(|v| (*v).to_owned())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("environment variable {var} is not set: {hint}")]
    Missing { var: &'static str, hint: &'static str },
    #[error("environment variable {var} is invalid: {reason}")]
    Invalid { var: &'static str, reason: String },
    #[error("environment variable {var}: {source}")]
    Key { var: &'static str, source: KeyError },
}

fn invalid(var: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { var, reason: reason.into() }
}

/// The value of `name`, trimmed; an empty value counts as unset.
fn get(env: &dyn Env, name: &str) -> Option<String> {
    env.var(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

fn required(env: &dyn Env, var: &'static str, hint: &'static str) -> Result<String, ConfigError> {
    get(env, var).ok_or(ConfigError::Missing { var, hint })
}

fn parsed<T: std::str::FromStr>(
    env: &dyn Env,
    var: &'static str,
    default: T,
    what: &str,
) -> Result<T, ConfigError> {
    match get(env, var) {
        None => Ok(default),
        Some(text) => text.parse().map_err(|_| invalid(var, format!("{text:?} is not {what}"))),
    }
}

fn flag(env: &dyn Env, var: &'static str) -> Result<bool, ConfigError> {
    match get(env, var).map(|v| v.to_ascii_lowercase()) {
        None => Ok(false),
        Some(v) if ["1", "true", "yes", "on"].contains(&v.as_str()) => Ok(true),
        Some(v) if ["0", "false", "no", "off"].contains(&v.as_str()) => Ok(false),
        Some(v) => Err(invalid(var, format!("{v:?} is not a boolean (true/false)"))),
    }
}

/// A URL that may hold a password. `Display`/`Debug` replace the password with `***`;
/// [`SecretUrl::expose`] gives the real text to the one client that connects.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(url: impl Into<String>) -> Self {
        SecretUrl(url.into())
    }

    /// The URL with its password, for the connecting client only. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretUrl({})", self.redacted())
    }
}

/// Masks every password in a URL (userinfo, no-scheme forms, query parameters).
pub use chutes_protocol::redact::redact_url;

fn check_url(var: &'static str, url: &str, schemes: &[&str]) -> Result<(), ConfigError> {
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
    if !schemes.contains(&scheme) {
        return Err(invalid(
            var,
            format!("{} must start with one of {}", redact_url(url), schemes.join("://, ") + "://"),
        ));
    }
    let host = url.split_once("://").map(|(_, r)| r).unwrap_or("");
    if host.is_empty() || host.starts_with('/') {
        return Err(invalid(var, format!("{} has no host", redact_url(url))));
    }
    Ok(())
}

/// `POSTGRESQL`: the inventory database.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub url: SecretUrl,
}

impl DatabaseSettings {
    pub const VAR: &'static str = "POSTGRESQL";

    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let raw = required(
            env,
            Self::VAR,
            "the Postgres URL, e.g. postgresql://user:password@postgres:5432/chutes",
        )?;
        // The original's chart passes SQLAlchemy's `postgresql+asyncpg://`; accept it.
        let url = match raw.split_once("://") {
            Some((scheme, rest)) if scheme.starts_with("postgresql+") || scheme.starts_with("postgres+") => {
                format!("postgresql://{rest}")
            }
            _ => raw,
        };
        check_url(Self::VAR, &url, &["postgresql", "postgres"])?;
        Ok(DatabaseSettings { url: SecretUrl(url) })
    }
}

/// `REDIS_URL`: the event stream's Redis (default `redis://127.0.0.1:6379/0`, as the original).
#[derive(Debug, Clone)]
pub struct RedisSettings {
    pub url: SecretUrl,
}

impl RedisSettings {
    pub const VAR: &'static str = "REDIS_URL";

    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let url = get(env, Self::VAR).unwrap_or_else(|| "redis://127.0.0.1:6379/0".to_owned());
        check_url(Self::VAR, &url, &["redis", "rediss"])?;
        Ok(RedisSettings { url: SecretUrl(url) })
    }
}

/// The miner's identity: `MINER_SEED` (hex) checked against `MINER_SS58`.
#[derive(Debug, Clone)]
pub struct Identity {
    pub hotkey: Arc<Hotkey>,
}

impl Identity {
    pub const SEED_VAR: &'static str = "MINER_SEED";
    pub const SS58_VAR: &'static str = "MINER_SS58";

    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let ss58 = required(env, Self::SS58_VAR, "the miner hotkey's SS58 address")?;
        let seed = Zeroizing::new(required(env, Self::SEED_VAR, "the miner hotkey's 32-byte seed as hex")?);
        let hotkey = Hotkey::from_seed_hex(&seed, &format!("environment variable {}", Self::SEED_VAR))
            .map_err(|source| ConfigError::Key { var: Self::SEED_VAR, source })?;
        hotkey.check_address(&ss58).map_err(|source| ConfigError::Key { var: Self::SS58_VAR, source })?;
        Ok(Identity { hotkey: Arc::new(hotkey) })
    }

    pub fn ss58(&self) -> &str {
        self.hotkey.ss58()
    }
}

/// One validator this miner works for (an entry of `VALIDATORS.supported`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Validator {
    pub hotkey: String,
    pub registry: String,
    pub api: String,
    pub socket: String,
    /// NodePort of this validator's registry proxy (`registryNodePort`, written by
    /// `minerctl render`); chute images are pulled through
    /// `<hotkey>.localregistry.chutes.ai:<port>`. Absent: `REGISTRY_PROXY_PORT`.
    #[serde(default, rename = "registryNodePort", skip_serializing_if = "Option::is_none")]
    pub registry_node_port: Option<u16>,
}

/// `VALIDATORS`: `{"supported": [{hotkey, registry, api, socket}], ...}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validators {
    pub supported: Vec<Validator>,
}

impl Validators {
    pub const VAR: &'static str = "VALIDATORS";

    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let text = required(
            env,
            Self::VAR,
            r#"JSON {"supported":[{"hotkey":..,"registry":..,"api":..,"socket":..}]}"#,
        )?;
        Self::parse(&text)
    }

    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        #[derive(Deserialize)]
        struct Raw {
            supported: Vec<Validator>,
        }
        let raw: Raw = serde_json::from_str(text)
            .map_err(|e| invalid(Self::VAR, format!("not the expected JSON: {e}")))?;
        if raw.supported.is_empty() {
            return Err(invalid(Self::VAR, "\"supported\" lists no validator"));
        }
        let mut seen = HashSet::new();
        for (i, v) in raw.supported.iter().enumerate() {
            let at = |what: String| invalid(Self::VAR, format!("supported[{i}]: {what}"));
            PublicKey::from_ss58(&v.hotkey).map_err(|e| at(format!("hotkey: {e}")))?;
            if !seen.insert(v.hotkey.clone()) {
                return Err(at(format!("hotkey {} is listed twice", v.hotkey)));
            }
            check_url(Self::VAR, &v.api, &["http", "https"]).map_err(|e| at(format!("api: {e}")))?;
            check_url(Self::VAR, &v.socket, &["http", "https", "ws", "wss"])
                .map_err(|e| at(format!("socket: {e}")))?;
            if v.registry.trim().is_empty() {
                return Err(at("registry is empty".to_owned()));
            }
            if v.registry_node_port == Some(0) {
                return Err(at("registryNodePort 0 is not a port".to_owned()));
            }
        }
        Ok(Validators { supported: raw.supported })
    }

    pub fn get(&self, hotkey: &str) -> Option<&Validator> {
        self.supported.iter().find(|v| v.hotkey == hotkey)
    }

    pub fn hotkeys(&self) -> impl Iterator<Item = &str> {
        self.supported.iter().map(|v| v.hotkey.as_str())
    }
}

/// Settings of the API process beyond identity, validators and stores.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiSettings {
    /// `REGISTRY_PROXY_PORT` (30500).
    pub registry_proxy_port: u16,
    /// `CHUTES_NAMESPACE` (`chutes`).
    pub namespace: String,
    /// `GRAVAL_BOOTSTRAP_IMAGE`.
    pub graval_bootstrap_image: String,
    /// `GRAVAL_BOOTSTRAP_IMAGE_ROCM`.
    pub graval_bootstrap_image_rocm: String,
    /// `GRAVAL_BOOTSTRAP_TIMEOUT` seconds (900).
    pub graval_bootstrap_timeout_secs: u64,
    /// `NETUID` (64).
    pub netuid: u16,
    /// `SUBTENSOR_ADDRESS`.
    pub subtensor_address: String,
    /// `http://prometheus-server.<ns>.svc.cluster.local:<PROMETHEUS_PORT>`.
    pub prometheus_url: String,
    pub cache: CacheSettings,
    /// `CACHE_CLEANER_IMAGE`: the chute Jobs' `cache-init` image (the runtime image;
    /// `minerctl deploy` sets it).
    pub cache_cleaner_image: Option<String>,
    /// `IMAGE_PULL_SECRETS`: comma-separated Secret names (values `imagePullSecrets`) that
    /// the Jobs the miner creates (GraVal, chutes) name for this workspace's images.
    pub image_pull_secrets: Vec<String>,
    /// `DEBUG`.
    pub debug: bool,
    /// `MANAGEMENT_BOUND_ONLY` (false): refuse management signatures over the plain
    /// purpose `management` (the original CLI's); accept only ones bound to method
    /// and path (`minerctl`'s).
    pub bound_management_only: bool,
}

/// `CACHE_MAX_AGE_DAYS`, `CACHE_MAX_SIZE_GB`, `CACHE_OVERRIDES` (JSON `{node: GB}`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheSettings {
    pub max_age_days: u32,
    pub max_size_gb: u32,
    pub overrides: BTreeMap<String, u32>,
}

impl ApiSettings {
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let namespace = get(env, "CHUTES_NAMESPACE").unwrap_or_else(|| "chutes".to_owned());
        let prometheus_port: u16 = parsed(env, "PROMETHEUS_PORT", 80, "a port number")?;
        let overrides = match get(env, "CACHE_OVERRIDES") {
            None => BTreeMap::new(),
            Some(text) => serde_json::from_str(&text).map_err(|e| {
                invalid("CACHE_OVERRIDES", format!("must be a JSON object of node name to size in GB: {e}"))
            })?,
        };
        let registry_proxy_port: u16 = parsed(env, "REGISTRY_PROXY_PORT", 30500, "a port number")?;
        if registry_proxy_port == 0 {
            return Err(invalid("REGISTRY_PROXY_PORT", "port 0 is not a port"));
        }
        Ok(ApiSettings {
            registry_proxy_port,
            graval_bootstrap_image: get(env, "GRAVAL_BOOTSTRAP_IMAGE")
                .unwrap_or_else(|| "parachutes/graval-bootstrap-opencl:0.2.6-cuda".to_owned()),
            graval_bootstrap_image_rocm: get(env, "GRAVAL_BOOTSTRAP_IMAGE_ROCM")
                .unwrap_or_else(|| "parachutes/graval-bootstrap-opencl:0.2.6-rocm".to_owned()),
            graval_bootstrap_timeout_secs: parsed(
                env,
                "GRAVAL_BOOTSTRAP_TIMEOUT",
                900,
                "a number of seconds",
            )?,
            netuid: parsed(env, "NETUID", 64, "a subnet number")?,
            subtensor_address: get(env, "SUBTENSOR_ADDRESS")
                .unwrap_or_else(|| "wss://entrypoint-finney.opentensor.ai:443".to_owned()),
            prometheus_url: format!(
                "http://prometheus-server.{namespace}.svc.cluster.local:{prometheus_port}"
            ),
            namespace,
            cache: CacheSettings {
                max_age_days: parsed(env, "CACHE_MAX_AGE_DAYS", 7, "a whole number of days")?,
                max_size_gb: parsed(env, "CACHE_MAX_SIZE_GB", 500, "a whole number of GB")?,
                overrides,
            },
            cache_cleaner_image: get(env, "CACHE_CLEANER_IMAGE"),
            image_pull_secrets: get(env, "IMAGE_PULL_SECRETS")
                .map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
                .unwrap_or_default(),
            debug: flag(env, "DEBUG")?,
            bound_management_only: flag(env, "MANAGEMENT_BOUND_ONLY")?,
        })
    }
}

/// Porter's settings: `REAL_AXON_HOST`, `REAL_AXON_PORT`, `MINER_HOTKEY_SS58` (or
/// `MINER_SS58`) and `VALIDATOR_WHITELIST` (comma-separated hotkeys), as the original.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PorterSettings {
    pub real_host: String,
    pub real_port: u16,
    pub miner_ss58: String,
    pub whitelist: Vec<String>,
}

impl PorterSettings {
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let real_host = required(env, "REAL_AXON_HOST", "the host the miner API is reachable at")?;
        let real_port: u16 = match get(env, "REAL_AXON_PORT") {
            None => return Err(ConfigError::Missing { var: "REAL_AXON_PORT", hint: "the miner API's port" }),
            Some(p) => {
                p.parse().map_err(|_| invalid("REAL_AXON_PORT", format!("{p:?} is not a port number")))?
            }
        };
        let (miner_var, miner_ss58) = match get(env, "MINER_HOTKEY_SS58") {
            Some(v) => ("MINER_HOTKEY_SS58", v),
            None => ("MINER_SS58", required(env, "MINER_SS58", "the miner hotkey's SS58 address")?),
        };
        PublicKey::from_ss58(&miner_ss58).map_err(|e| invalid(miner_var, e.to_string()))?;
        let list = required(env, "VALIDATOR_WHITELIST", "comma-separated validator hotkeys allowed to ask")?;
        let mut whitelist = Vec::new();
        for hotkey in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            PublicKey::from_ss58(hotkey).map_err(|e| invalid("VALIDATOR_WHITELIST", e.to_string()))?;
            whitelist.push(hotkey.to_owned());
        }
        if whitelist.is_empty() {
            // The original skipped verification with an empty whitelist; refuse instead.
            return Err(invalid("VALIDATOR_WHITELIST", "lists no hotkey"));
        }
        Ok(PorterSettings { real_host, real_port, miner_ss58, whitelist })
    }
}

/// The audit exporter's settings beyond identity and database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    /// `AUDIT_URL` (`https://api.chutes.ai/audit/miner_data`, hard-coded in the original).
    pub upload_url: String,
    /// `PROMETHEUS_URL`, or the in-cluster URL built from `CHUTES_NAMESPACE`/`PROMETHEUS_PORT`.
    pub prometheus_url: String,
    /// `SUBTENSOR_HTTP`: JSON-RPC endpoint for the current block number (`chain_getHeader`).
    /// Defaults to `SUBTENSOR_ADDRESS` with `wss://`→`https://`.
    pub subtensor_rpc: String,
}

impl AuditSettings {
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let upload_url =
            get(env, "AUDIT_URL").unwrap_or_else(|| "https://api.chutes.ai/audit/miner_data".to_owned());
        check_url("AUDIT_URL", &upload_url, &["http", "https"])?;
        let prometheus_url = match get(env, "PROMETHEUS_URL") {
            Some(url) => url,
            None => ApiSettings::from_env(env)?.prometheus_url,
        };
        check_url("PROMETHEUS_URL", &prometheus_url, &["http", "https"])?;
        let subtensor_rpc = match get(env, "SUBTENSOR_HTTP") {
            Some(url) => url,
            None => {
                let ws = get(env, "SUBTENSOR_ADDRESS")
                    .unwrap_or_else(|| "wss://entrypoint-finney.opentensor.ai:443".to_owned());
                ws.replacen("wss://", "https://", 1).replacen("ws://", "http://", 1)
            }
        };
        check_url("SUBTENSOR_HTTP", &subtensor_rpc, &["http", "https"])?;
        Ok(AuditSettings { upload_url, prometheus_url, subtensor_rpc })
    }
}

/// Which scheduling strategy Gepetto runs (`GEPETTO_STRATEGY`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrategyKind {
    /// The original miner's heuristic (metrics-based autoscaler), bugs fixed.
    Heuristic,
    /// The successor's: rank by the validator's `effective_compute_multiplier`.
    Multiplier,
}

/// Gepetto's settings, read from the environment like the rest of the runtime.
#[derive(Debug, Clone, PartialEq)]
pub struct GepettoSettings {
    /// `GEPETTO_STRATEGY`: `multiplier` (default) or `heuristic`.
    pub strategy: StrategyKind,
    /// `GEPETTO_ACTIVATOR_INTERVAL` seconds (5).
    pub activator_interval_secs: u64,
    /// `GEPETTO_AUTOSCALER_INTERVAL` seconds (15).
    pub autoscaler_interval_secs: u64,
    /// `GEPETTO_RECONCILE_INTERVAL` seconds (60).
    pub reconcile_interval_secs: u64,
    /// `GEPETTO_DISK_RESERVE_GB`: disk kept free on every node (20).
    pub disk_reserve_gb: u32,
    /// `GEPETTO_DEFAULT_DISK_GB`: ephemeral disk of a chute that names none (10).
    pub default_disk_gb: u32,
    /// `GEPETTO_MAX_CONCURRENT_DEPLOYS`: deploys run at once in the background (16).
    pub max_concurrent_deploys: usize,
    /// `PROMETHEUS_URL`, or `http://prometheus-server.<ns>.svc.cluster.local:<PROMETHEUS_PORT>`.
    pub prometheus_url: String,
    /// `GEPETTO_POD_EXIT_WAIT` seconds (45): how long a deploy onto GPUs just freed
    /// (preemption, rolling update) waits for the old pods to go; 0 = no wait.
    pub pod_exit_wait_secs: u64,
    /// `GEPETTO_RECORD_TRACE`: a file to record this miner's week into, for
    /// `minerctl simulate --trace` (unset: no recording). Must be an absolute path.
    pub record_trace: Option<std::path::PathBuf>,
}

impl GepettoSettings {
    pub fn from_env(env: &dyn Env) -> Result<Self, ConfigError> {
        let strategy = match get(env, "GEPETTO_STRATEGY").map(|s| s.to_ascii_lowercase()).as_deref() {
            Some("heuristic") => StrategyKind::Heuristic,
            // The default: it earns 1.3x the heuristic per dollar in `minerctl simulate`.
            None | Some("multiplier") | Some("effective_compute_multiplier") => StrategyKind::Multiplier,
            Some(other) => {
                return Err(invalid(
                    "GEPETTO_STRATEGY",
                    format!("{other:?} is not a strategy (heuristic or multiplier)"),
                ));
            }
        };
        let positive = |var: &'static str, default: u64| -> Result<u64, ConfigError> {
            let v: u64 = parsed(env, var, default, "a whole number of seconds")?;
            if v == 0 {
                return Err(invalid(var, "must be at least 1 second"));
            }
            Ok(v)
        };
        let prometheus_url = match get(env, "PROMETHEUS_URL") {
            Some(url) => url,
            None => ApiSettings::from_env(env)?.prometheus_url,
        };
        check_url("PROMETHEUS_URL", &prometheus_url, &["http", "https"])?;
        let record_trace = match get(env, "GEPETTO_RECORD_TRACE").map(std::path::PathBuf::from) {
            // A relative path would land wherever the container's working directory is.
            Some(p) if !p.is_absolute() => {
                return Err(invalid(
                    "GEPETTO_RECORD_TRACE",
                    format!("{} is not an absolute path", p.display()),
                ));
            }
            other => other,
        };
        let max_concurrent_deploys: usize =
            parsed(env, "GEPETTO_MAX_CONCURRENT_DEPLOYS", 16, "a whole number")?;
        if max_concurrent_deploys == 0 {
            return Err(invalid("GEPETTO_MAX_CONCURRENT_DEPLOYS", "must be at least 1"));
        }
        Ok(GepettoSettings {
            strategy,
            activator_interval_secs: positive("GEPETTO_ACTIVATOR_INTERVAL", 5)?,
            autoscaler_interval_secs: positive("GEPETTO_AUTOSCALER_INTERVAL", 15)?,
            reconcile_interval_secs: positive("GEPETTO_RECONCILE_INTERVAL", 60)?,
            disk_reserve_gb: parsed(env, "GEPETTO_DISK_RESERVE_GB", 20, "a whole number of GB")?,
            default_disk_gb: parsed(env, "GEPETTO_DEFAULT_DISK_GB", 10, "a whole number of GB")?,
            max_concurrent_deploys,
            prometheus_url,
            pod_exit_wait_secs: parsed(env, "GEPETTO_POD_EXIT_WAIT", 45, "a whole number of seconds")?,
            record_trace,
        })
    }
}
