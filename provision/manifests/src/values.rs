//! The typed values schema and the Helm-like layering that builds it:
//! `templates/values.yaml` (defaults) < `-f` files in order < `--set` overrides in order.
//!
//! Every layer is merged into an untyped tree and the tree is checked against the schema
//! right after that layer is added, so an error names the layer (file or `--set`
//! argument) that introduced it and the dotted key, e.g.
//! `values file prod.yaml: postgres.persistance: unknown field ...`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::ValuesError;
use crate::{cron, duration, quantity};

/// The defaults shipped with the templates (`templates/values.yaml`).
pub const DEFAULT_VALUES: &str = include_str!("../../../templates/values.yaml");
const DEFAULT_VALUES_NAME: &str = "templates/values.yaml";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Values {
    pub namespace: String,
    pub validators: Validators,
    pub cache: Cache,
    pub image_pull_secrets: Vec<String>,
    pub control_node_selector: BTreeMap<String, String>,
    pub images: Images,
    pub miner_api: MinerApi,
    pub gepetto: Gepetto,
    pub postgres: Postgres,
    pub redis: Redis,
    pub prometheus: Prometheus,
    pub registry: Registry,
    pub porter: Porter,
    pub graval: Graval,
    pub audit_exporter: CronWorkload,
    pub failed_chute_cleanup: CronWorkload,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Validators {
    pub default_registry: String,
    pub default_api: String,
    pub supported: Vec<Validator>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Validator {
    pub hotkey: String,
    pub registry: String,
    pub api: String,
    pub socket: String,
    /// NodePort of this validator's registry proxy Service. The original chart gave every
    /// validator 30500, so a second validator could not be deployed.
    pub registry_node_port: u16,
}

/// Kept in the original chart's snake_case spelling so existing values files still load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cache {
    pub max_age_days: u32,
    pub max_size_gb: u32,
    pub overrides: BTreeMap<String, u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Resources {
    pub cpu: String,
    pub memory: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Gepetto {
    pub image: String,
    pub image_pull_policy: PullPolicy,
    pub command: Vec<String>,
    pub resources: Resources,
    /// `GEPETTO_STRATEGY`: what schedules the chutes (`minerctl simulate` compares them).
    pub strategy: GepettoStrategy,
    /// When set, Gepetto records the miner's week into `trace.jsonl` in this host
    /// directory (`GEPETTO_RECORD_TRACE`), for `minerctl simulate --trace`; needs
    /// `controlNodeSelector` so every restart continues the same file.
    pub record_trace_dir: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GepettoStrategy {
    /// The successor's (default): the validator's effective multiplier per dollar.
    Multiplier,
    /// The original miner's heuristic, its bugs fixed.
    Heuristic,
}

impl GepettoStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            GepettoStrategy::Multiplier => "multiplier",
            GepettoStrategy::Heuristic => "heuristic",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MinerApi {
    pub image: String,
    pub image_pull_policy: PullPolicy,
    pub command: Vec<String>,
    pub resources: Resources,
    pub node_port: u16,
    /// Refuse management signatures over the plain purpose `management` (the original
    /// CLI's), accepting only ones bound to method and path (`minerctl`'s). Off by
    /// default so the original CLI keeps working; rendered as `MANAGEMENT_BOUND_ONLY`.
    #[serde(default)]
    pub bound_management_only: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Postgres {
    pub image: String,
    pub image_pull_policy: PullPolicy,
    pub resources: Resources,
    pub database: String,
    pub user: String,
    pub persistence: Persistence,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Persistence {
    /// Size of the PersistentVolumeClaim.
    pub size: String,
    /// Storage class of the claim; empty means the cluster default.
    pub storage_class: String,
    /// When set, Postgres keeps its data in this host directory instead of a claim
    /// (the original chart's layout); needs `controlNodeSelector` to pin the pod.
    pub host_path: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Redis {
    pub image: String,
    pub image_pull_policy: PullPolicy,
    pub resources: Resources,
    /// How often the append-only file is fsync'd: the event stream and its consumer group
    /// survive a restart only if the AOF does.
    pub appendfsync: AppendFsync,
    pub persistence: ClaimPersistence,
    pub custom_args: Vec<String>,
}

/// `prometheus-server`: the metrics Gepetto's preemption and the audit exporter query.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Prometheus {
    pub image: String,
    pub image_pull_policy: PullPolicy,
    pub resources: Resources,
    /// How often chute pods' `/_metrics` are scraped (Prometheus duration, e.g. `30s`).
    pub scrape_interval: String,
    /// How long samples are kept (`--storage.tsdb.retention.time`).
    pub retention: String,
    /// Off (an emptyDir, as the original's `persistence` was off) unless enabled.
    pub persistence: OptionalClaim,
}

/// A claim that is used only when `enabled`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OptionalClaim {
    pub enabled: bool,
    pub size: String,
    /// Empty means the cluster default.
    pub storage_class: String,
}

/// Redis' `appendfsync`; `no` (leave it to the kernel) is not offered: it can lose
/// acknowledged events on a node crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AppendFsync {
    Always,
    Everysec,
}

/// A PersistentVolumeClaim's size and storage class.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClaimPersistence {
    pub size: String,
    /// Empty means the cluster default.
    pub storage_class: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Registry {
    pub image: String,
    pub image_pull_policy: PullPolicy,
    pub resources: Resources,
    pub node_selector: BTreeMap<String, String>,
    pub worker_processes: u32,
    pub worker_connections: u32,
    pub keepalive_timeout: u32,
    pub client_max_body_size: String,
    pub resolvers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Porter {
    pub enabled: bool,
    pub image: String,
    pub image_pull_policy: PullPolicy,
    pub command: Vec<String>,
    pub resources: Resources,
    pub node_port: u16,
    pub real_host: String,
    pub real_port: u16,
    pub node_selector: BTreeMap<String, String>,
}

/// Where this project's images come from (`minerctl images`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Images {
    /// `host[:port][/path]` of a registry `images push` pushes to and the nodes pull from;
    /// empty: the images are imported into each node over SSH. Checked by minerctl-images.
    pub registry: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Graval {
    pub image: String,
    pub image_rocm: String,
    pub timeout_seconds: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CronWorkload {
    pub enabled: bool,
    pub schedule: String,
    pub image: String,
    pub image_pull_policy: PullPolicy,
    pub command: Vec<String>,
}

/// One override layer, in the order the user gave them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layer {
    /// `-f FILE`
    File(std::path::PathBuf),
    /// `--set a.b=c` (comma-separated assignments allowed, `\,` and `\.` escape)
    Set(String),
    /// `--set-string a.b=c`: the value is always a string.
    SetString(String),
    /// A values document that is not a file (e.g. the image digests from `images build`);
    /// `source` names it in errors.
    Yaml { source: String, text: String },
}

impl Values {
    /// The shipped defaults alone.
    pub fn defaults() -> Result<Values, ValuesError> {
        Values::load(&[])
    }

    /// Defaults, then each layer in order (later wins), checked after every layer.
    pub fn load(layers: &[Layer]) -> Result<Values, ValuesError> {
        let mut tree = parse_yaml(DEFAULT_VALUES, DEFAULT_VALUES_NAME)?;
        let mut values: Values = check(&tree, DEFAULT_VALUES_NAME)?;
        for layer in layers {
            let document = match layer {
                Layer::File(path) => Some((format!("values file {}", path.display()), read(path)?)),
                Layer::Yaml { source, text } => Some((source.clone(), text.clone())),
                Layer::Set(_) | Layer::SetString(_) => None,
            };
            match layer {
                Layer::File(_) | Layer::Yaml { .. } => {
                    let Some((source, text)) = document else { continue };
                    let overlay = parse_yaml(&text, &source)?;
                    if !overlay.is_null() && !overlay.is_object() {
                        return Err(ValuesError::Schema {
                            source_name: source,
                            key: "(top level)".into(),
                            message: "a values file must be a mapping of keys".into(),
                        });
                    }
                    merge(&mut tree, overlay);
                    values = check(&tree, &source)?;
                }
                Layer::Set(arg) | Layer::SetString(arg) => {
                    let force_string = matches!(layer, Layer::SetString(_));
                    for (key, raw) in split_assignments(arg)? {
                        let source = format!("--set {arg}");
                        let inferred =
                            if force_string { Value::String(raw.clone()) } else { infer_scalar(&raw) };
                        let mut candidate = tree.clone();
                        set_path(&mut candidate, &key, inferred.clone(), &source)?;
                        match check(&candidate, &source) {
                            Ok(v) => {
                                tree = candidate;
                                values = v;
                            }
                            // `--set registry.clientMaxBodySize=0` means the string "0":
                            // retry a non-string guess as a string before failing.
                            Err(first) if !inferred.is_string() => {
                                let mut as_string = tree.clone();
                                set_path(&mut as_string, &key, Value::String(raw), &source)?;
                                values = check(&as_string, &source).map_err(|_| first)?;
                                tree = as_string;
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }
            }
        }
        values.validate()?;
        Ok(values)
    }

    /// Rules the types alone cannot express. Keys are named in the error.
    pub fn validate(&self) -> Result<(), ValuesError> {
        let invalid =
            |key: &str, message: String| Err(ValuesError::Invalid { key: key.to_string(), message });
        if !is_dns_label(&self.namespace) {
            return invalid(
                "namespace",
                format!(
                    "`{}` is not a valid namespace name (lowercase letters, digits and '-', at most 63)",
                    self.namespace
                ),
            );
        }
        if self.validators.supported.is_empty() {
            return invalid("validators.supported", "at least one validator is needed".into());
        }
        // Every NodePort this chart claims must be in range and unique: the original chart
        // gave each validator's registry Service 30500, which collides with two validators.
        let mut ports: Vec<(String, u16)> = vec![("minerApi.nodePort".into(), self.miner_api.node_port)];
        if self.porter.enabled {
            ports.push(("porter.nodePort".into(), self.porter.node_port));
        }
        let mut hotkeys = Vec::new();
        for (i, v) in self.validators.supported.iter().enumerate() {
            let key = format!("validators.supported[{i}]");
            if v.hotkey.is_empty() || !v.hotkey.chars().all(|c| c.is_ascii_alphanumeric()) {
                return invalid(&format!("{key}.hotkey"), "must be an SS58 address".into());
            }
            if hotkeys.contains(&v.hotkey.to_ascii_lowercase()) {
                return invalid(&format!("{key}.hotkey"), format!("validator {} is listed twice", v.hotkey));
            }
            hotkeys.push(v.hotkey.to_ascii_lowercase());
            ports.push((format!("{key}.registryNodePort"), v.registry_node_port));
        }
        for (i, (key, port)) in ports.iter().enumerate() {
            if !(30000..=32767).contains(port) {
                return invalid(
                    key,
                    format!("NodePort {port} is outside the Kubernetes NodePort range 30000-32767"),
                );
            }
            if let Some((other, _)) = ports[..i].iter().find(|(_, p)| p == port) {
                return invalid(key, format!("NodePort {port} is already used by {other}"));
            }
        }
        if !self.postgres.persistence.host_path.is_empty() {
            if !self.postgres.persistence.host_path.starts_with('/') {
                return invalid("postgres.persistence.hostPath", "must be an absolute path".into());
            }
            if self.control_node_selector.is_empty() {
                return invalid(
                    "postgres.persistence.hostPath",
                    "a hostPath keeps data on one node: set controlNodeSelector (e.g. kubernetes.io/hostname) to pin Postgres to it".into(),
                );
            }
        }
        let trace_dir = &self.gepetto.record_trace_dir;
        if !trace_dir.is_empty() {
            if !trace_dir.starts_with('/') || trace_dir == "/" {
                return invalid(
                    "gepetto.recordTraceDir",
                    format!("`{trace_dir}` is not an absolute directory"),
                );
            }
            if self.control_node_selector.is_empty() {
                return invalid(
                    "gepetto.recordTraceDir",
                    "a hostPath keeps the trace on one node: set controlNodeSelector (e.g. kubernetes.io/hostname) so a restarted Gepetto continues it".into(),
                );
            }
        }
        let images = [
            ("minerApi.image", &self.miner_api.image),
            ("gepetto.image", &self.gepetto.image),
            ("postgres.image", &self.postgres.image),
            ("redis.image", &self.redis.image),
            ("prometheus.image", &self.prometheus.image),
            ("registry.image", &self.registry.image),
            ("porter.image", &self.porter.image),
            ("graval.image", &self.graval.image),
            ("graval.imageRocm", &self.graval.image_rocm),
            ("auditExporter.image", &self.audit_exporter.image),
            ("failedChuteCleanup.image", &self.failed_chute_cleanup.image),
        ];
        for (key, image) in images {
            if image.trim().is_empty() || image.contains(char::is_whitespace) {
                return invalid(key, format!("`{image}` is not an image reference"));
            }
        }
        // These land unquoted in nginx.conf: refuse anything that could end a directive.
        let mut hosts = vec![("validators.defaultRegistry".to_string(), &self.validators.default_registry)];
        for (i, v) in self.validators.supported.iter().enumerate() {
            hosts.push((format!("validators.supported[{i}].registry"), &v.registry));
        }
        for (i, r) in self.registry.resolvers.iter().enumerate() {
            hosts.push((format!("registry.resolvers[{i}]"), r));
        }
        for (key, host) in hosts {
            let ok = !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
            if !ok {
                return invalid(&key, format!("`{host}` is not a host name or address"));
            }
        }
        let size = &self.registry.client_max_body_size;
        let digits = size.trim_end_matches(['k', 'K', 'm', 'M', 'g', 'G']);
        if digits.is_empty() || !digits.chars().all(|c| c.is_ascii_digit()) || size.len() - digits.len() > 1 {
            return invalid(
                "registry.clientMaxBodySize",
                format!("`{size}` is not an nginx size (like 0, 512m or 1g)"),
            );
        }
        for (i, name) in self.image_pull_secrets.iter().enumerate() {
            if !is_dns_label(name) {
                return invalid(
                    &format!("imagePullSecrets[{i}]"),
                    format!("`{name}` is not a valid secret name"),
                );
            }
        }
        // k8s-openapi's Quantity is a plain string: without this, `4GB` renders and the
        // API server refuses it half-way through a deploy, naming the object's field.
        let resources = [
            ("minerApi", &self.miner_api.resources),
            ("gepetto", &self.gepetto.resources),
            ("postgres", &self.postgres.resources),
            ("redis", &self.redis.resources),
            ("prometheus", &self.prometheus.resources),
            ("registry", &self.registry.resources),
            ("porter", &self.porter.resources),
        ];
        for (component, r) in resources {
            check_quantity(&format!("{component}.resources.cpu"), &r.cpu, false)?;
            check_quantity(&format!("{component}.resources.memory"), &r.memory, false)?;
        }
        let sizes = [
            ("postgres.persistence.size", &self.postgres.persistence.size),
            ("redis.persistence.size", &self.redis.persistence.size),
            ("prometheus.persistence.size", &self.prometheus.persistence.size),
        ];
        for (key, size) in sizes {
            check_quantity(key, size, true)?;
        }
        // Both land in Prometheus' own config and flags, plain strings to Kubernetes: a bad
        // one deploys and shows only as a crash-looping prometheus-server.
        let durations = [
            (
                "prometheus.scrapeInterval",
                &self.prometheus.scrape_interval,
                "a scrape interval must be more than zero (e.g. 30s)",
            ),
            (
                "prometheus.retention",
                &self.prometheus.retention,
                // Prometheus takes a zero retention as "unset" and keeps its default, 15d.
                "Prometheus reads a zero retention as its default, 15d: write the time to keep (e.g. 15d)",
            ),
        ];
        for (key, text, if_zero) in durations {
            check_duration(key, text, if_zero)?;
        }
        // Checked whether or not the CronJob is enabled, as the images and quantities of
        // switched-off components are: enabling it later must not be what finds the typo.
        let schedules = [
            ("auditExporter.schedule", &self.audit_exporter.schedule),
            ("failedChuteCleanup.schedule", &self.failed_chute_cleanup.schedule),
        ];
        for (key, text) in schedules {
            if let Err(why) = cron::check(text) {
                return invalid(key, format!("{text:?} is not a valid CronJob schedule: {why}"));
            }
        }
        // Last: what the runtime parses at start-up, by the runtime's own loaders.
        crate::runtime_env::check(self)
    }
}

/// A Kubernetes quantity the API server accepts: not negative, and more than zero for a
/// claim's size.
fn check_quantity(key: &str, text: &str, claim_size: bool) -> Result<(), ValuesError> {
    let invalid = |message: String| Err(ValuesError::Invalid { key: key.to_string(), message });
    match quantity::parse(text) {
        None => {
            let hint = quantity::suggestion(text)
                .map(|s| format!("{s}?"))
                .unwrap_or_else(|| "a number with an optional suffix, like 500m, 2, 1.5G or 4Gi".into());
            invalid(format!("{text:?} is not a Kubernetes quantity ({hint})"))
        }
        Some(q) if q.negative && !q.zero => {
            invalid(format!("{text:?} is negative: Kubernetes refuses a negative quantity"))
        }
        Some(q) if claim_size && q.zero => {
            invalid(format!("{text:?}: Kubernetes refuses a claim of size zero"))
        }
        Some(_) => Ok(()),
    }
}

/// A Prometheus duration (`model.ParseDuration`), and not zero: neither setting has a
/// use for zero, which Prometheus accepts but reads as something else (`if_zero` says what).
fn check_duration(key: &str, text: &str, if_zero: &str) -> Result<(), ValuesError> {
    let invalid = |message: String| Err(ValuesError::Invalid { key: key.to_string(), message });
    match duration::parse(text) {
        Err(why) => invalid(format!(
            "{text:?} is not a Prometheus duration: {why}; write one or more <number><unit> with units y, w, d, h, m, s, ms from largest to smallest, like 30s, 1m30s or 15d"
        )),
        Ok(d) if d.is_zero() => invalid(format!("{text:?}: {if_zero}")),
        Ok(_) => Ok(()),
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn read(path: &Path) -> Result<String, ValuesError> {
    std::fs::read_to_string(path).map_err(|source| ValuesError::Read { path: path.to_path_buf(), source })
}

fn parse_yaml(text: &str, source: &str) -> Result<Value, ValuesError> {
    if text.trim().is_empty() {
        return Ok(Value::Object(Map::new()));
    }
    serde_saphyr::from_str::<Value>(text)
        .map_err(|e| ValuesError::Yaml { source_name: source.to_string(), message: e.to_string() })
}

fn check(tree: &Value, source: &str) -> Result<Values, ValuesError> {
    serde_path_to_error::deserialize::<_, Values>(tree).map_err(|e| {
        let key = e.path().to_string();
        ValuesError::Schema {
            source_name: source.to_string(),
            key: if key == "." { "(top level)".into() } else { key },
            message: e.into_inner().to_string(),
        }
    })
}

/// Helm merge semantics: maps merge key by key, anything else (lists included) replaces;
/// an explicit `null` deletes the key.
fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                if v.is_null() {
                    b.remove(&k);
                } else if let Some(slot) = b.get_mut(&k) {
                    merge(slot, v);
                } else {
                    b.insert(k, v);
                }
            }
        }
        (slot, v) => *slot = v,
    }
}

/// `true`/`false` → bool, `null` → null, integers → number, anything else a string
/// (what `helm --set` does).
fn infer_scalar(raw: &str) -> Value {
    match raw {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        "null" => Value::Null,
        _ => raw
            .parse::<i64>()
            .ok()
            .filter(|_| plain_integer(raw))
            .map(Value::from)
            .unwrap_or_else(|| Value::String(raw.to_string())),
    }
}

/// `007` and `+1` stay strings, as in Helm: they are rarely meant as numbers.
fn plain_integer(raw: &str) -> bool {
    let leading_zero = raw.starts_with('0') && raw.len() > 1;
    !leading_zero && !raw.starts_with('+')
}

/// One path segment of a `--set` key.
#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Key(String),
    Index(usize),
}

/// Splits `a.b=1,c\,d=2` into assignments, honouring `\,` `\.` `\=` `\\` escapes.
fn split_assignments(arg: &str) -> Result<Vec<(Vec<Segment>, String)>, ValuesError> {
    let bad = |message: &str| ValuesError::Set { arg: arg.to_string(), message: message.to_string() };
    let mut out = Vec::new();
    let mut chars = arg.chars().peekable();
    loop {
        // key
        let mut segments = Vec::new();
        let mut current = String::new();
        let mut saw_eq = false;
        while let Some(c) = chars.next() {
            match c {
                '\\' => current.push(chars.next().ok_or_else(|| bad("dangling `\\`"))?),
                '.' => {
                    if current.is_empty() && !matches!(segments.last(), Some(Segment::Index(_))) {
                        return Err(bad("empty key segment"));
                    }
                    if !current.is_empty() {
                        segments.push(Segment::Key(std::mem::take(&mut current)));
                    }
                }
                '[' => {
                    if !current.is_empty() {
                        segments.push(Segment::Key(std::mem::take(&mut current)));
                    }
                    let mut digits = String::new();
                    for d in chars.by_ref() {
                        if d == ']' {
                            break;
                        }
                        digits.push(d);
                    }
                    let index = digits
                        .parse::<usize>()
                        .map_err(|_| bad("a list index must be a number, like `a[0].b`"))?;
                    segments.push(Segment::Index(index));
                }
                '=' => {
                    saw_eq = true;
                    break;
                }
                ',' => return Err(bad("expected KEY=VALUE")),
                c => current.push(c),
            }
        }
        if !current.is_empty() {
            segments.push(Segment::Key(current));
        }
        if !saw_eq || segments.is_empty() {
            return Err(bad("expected KEY=VALUE"));
        }
        // value
        let mut value = String::new();
        let mut more = false;
        while let Some(c) = chars.next() {
            match c {
                '\\' => value.push(chars.next().ok_or_else(|| bad("dangling `\\`"))?),
                ',' => {
                    more = true;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((segments, value));
        if !more {
            return Ok(out);
        }
    }
}

fn set_path(tree: &mut Value, path: &[Segment], value: Value, source: &str) -> Result<(), ValuesError> {
    let mut node = tree;
    let mut walked = String::new();
    for (i, seg) in path.iter().enumerate() {
        let last = i + 1 == path.len();
        match seg {
            Segment::Key(k) => {
                if !walked.is_empty() {
                    walked.push('.');
                }
                walked.push_str(k);
                if node.is_null() {
                    *node = Value::Object(Map::new());
                }
                let Value::Object(map) = node else {
                    return Err(ValuesError::Schema {
                        source_name: source.to_string(),
                        key: walked,
                        message: "the parent of this key is not a mapping".into(),
                    });
                };
                if last {
                    map.insert(k.clone(), value);
                    return Ok(());
                }
                node = map.entry(k.clone()).or_insert(Value::Null);
            }
            Segment::Index(idx) => {
                walked.push_str(&format!("[{idx}]"));
                let Value::Array(list) = node else {
                    return Err(ValuesError::Schema {
                        source_name: source.to_string(),
                        key: walked,
                        message: "this key is not a list".into(),
                    });
                };
                // Helm pads with nulls; we allow appending exactly one element, so a typo
                // in an index cannot create a half-filled list.
                if *idx > list.len() {
                    return Err(ValuesError::Schema {
                        source_name: source.to_string(),
                        key: walked,
                        message: format!("index out of range: the list has {} items", list.len()),
                    });
                }
                if *idx == list.len() {
                    list.push(Value::Null);
                }
                if last {
                    list[*idx] = value;
                    return Ok(());
                }
                node = &mut list[*idx];
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(dir: &tempfile::TempDir, name: &str, text: &str) -> Layer {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        Layer::File(p)
    }

    #[test]
    fn defaults_load_and_validate() {
        let v = Values::defaults().unwrap();
        assert_eq!(v.namespace, "chutes");
        assert_eq!(v.miner_api.node_port, 32000);
        assert_eq!(v.validators.supported[0].registry_node_port, 30500);
        // The shipped durations and schedules pass the checks they are held to.
        assert_eq!((v.prometheus.scrape_interval.as_str(), v.prometheus.retention.as_str()), ("30s", "15d"));
        assert_eq!(
            (v.audit_exporter.schedule.as_str(), v.failed_chute_cleanup.schedule.as_str()),
            ("1 * * * *", "* * * * *")
        );
    }

    #[test]
    fn later_file_wins_and_maps_merge() {
        let dir = tempfile::tempdir().unwrap();
        let a = file(&dir, "a.yaml", "minerApi:\n  nodePort: 32001\nredis:\n  image: redis:8\n");
        let b = file(&dir, "b.yaml", "minerApi:\n  nodePort: 32002\n");
        let v = Values::load(&[a, b]).unwrap();
        assert_eq!(v.miner_api.node_port, 32002);
        assert_eq!(v.redis.image, "redis:8");
        // untouched siblings keep their defaults
        assert_eq!(v.miner_api.resources.memory, "4Gi");
    }

    #[test]
    fn misspelled_key_names_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = file(&dir, "prod.yaml", "postgres:\n  persistance:\n    size: 1Gi\n");
        let err = Values::load(&[a]).unwrap_err().to_string();
        assert!(err.contains("prod.yaml"), "{err}");
        assert!(err.contains("postgres.persistance"), "{err}");
    }

    #[test]
    fn wrong_type_names_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = file(&dir, "ok.yaml", "redis:\n  image: redis:8\n");
        let b = file(&dir, "bad.yaml", "minerApi:\n  nodePort: lots\n");
        let err = Values::load(&[a, b]).unwrap_err().to_string();
        assert!(err.contains("bad.yaml") && !err.contains("ok.yaml"), "{err}");
        assert!(err.contains("minerApi.nodePort"), "{err}");
    }

    #[test]
    fn set_overrides_files_with_type_inference_and_escapes() {
        let dir = tempfile::tempdir().unwrap();
        let a = file(&dir, "a.yaml", "minerApi:\n  nodePort: 32001\n");
        let v = Values::load(&[
            a,
            Layer::Set("minerApi.nodePort=32005,porter.enabled=true".into()),
            Layer::Set(r"controlNodeSelector.kubernetes\.io/hostname=cpu-0".into()),
            Layer::Set("registry.clientMaxBodySize=0".into()),
            Layer::Set("validators.supported[0].registryNodePort=30600".into()),
        ])
        .unwrap();
        assert_eq!(v.miner_api.node_port, 32005);
        assert!(v.porter.enabled);
        assert_eq!(v.control_node_selector["kubernetes.io/hostname"], "cpu-0");
        assert_eq!(v.registry.client_max_body_size, "0");
        assert_eq!(v.validators.supported[0].registry_node_port, 30600);
    }

    #[test]
    fn set_errors_name_the_argument() {
        let err = Values::load(&[Layer::Set("minerApi.nodeport=1".into())]).unwrap_err().to_string();
        assert!(err.contains("--set minerApi.nodeport=1"), "{err}");
        assert!(err.contains("minerApi.nodeport"), "{err}");
        let err = Values::load(&[Layer::Set("porter.enabled=maybe".into())]).unwrap_err().to_string();
        assert!(err.contains("porter.enabled"), "{err}");
        let err = Values::load(&[Layer::Set("novalue".into())]).unwrap_err().to_string();
        assert!(err.contains("KEY=VALUE"), "{err}");
    }

    #[test]
    fn second_validator_on_same_node_port_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let a = file(
            &dir,
            "two.yaml",
            "validators:\n  supported:\n  - {hotkey: 5Aaa, registry: r, api: a, socket: s, registryNodePort: 30500}\n  - {hotkey: 5Bbb, registry: r, api: a, socket: s, registryNodePort: 30500}\n",
        );
        let err = Values::load(&[a]).unwrap_err().to_string();
        assert!(err.contains("validators.supported[1].registryNodePort"), "{err}");
        assert!(err.contains("validators.supported[0].registryNodePort"), "{err}");
    }

    #[test]
    fn host_path_needs_a_pinned_node() {
        let err = Values::load(&[Layer::Set("postgres.persistence.hostPath=/var/snap/postgres-data".into())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("postgres.persistence.hostPath"), "{err}");
        assert!(err.contains("controlNodeSelector"), "{err}");
    }

    #[test]
    fn a_trace_directory_must_be_absolute_and_on_a_pinned_node() {
        let pinned = Layer::Set("controlNodeSelector.role=control".into());
        let err = Values::load(&[Layer::Set("gepetto.recordTraceDir=/var/lib/gepetto".into())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("gepetto.recordTraceDir") && err.contains("controlNodeSelector"), "{err}");
        let err = Values::load(&[pinned.clone(), Layer::Set("gepetto.recordTraceDir=traces".into())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("gepetto.recordTraceDir") && err.contains("absolute"), "{err}");
        let err = Values::load(&[Layer::Set("gepetto.strategy=greedy".into())]).unwrap_err().to_string();
        assert!(err.contains("gepetto.strategy"), "{err}");
        let v =
            Values::load(&[pinned, Layer::Set("gepetto.recordTraceDir=/var/lib/gepetto".into())]).unwrap();
        assert_eq!(
            (v.gepetto.record_trace_dir.as_str(), v.gepetto.strategy),
            ("/var/lib/gepetto", GepettoStrategy::Multiplier)
        );
    }

    /// Kubernetes refuses `4GB` with a 422 naming the object field, after deploy has
    /// applied half the objects: it is refused at load, naming the values key.
    #[test]
    fn a_quantity_kubernetes_refuses_is_an_error_naming_the_values_key() {
        let err =
            Values::load(&[Layer::Set("minerApi.resources.memory=4GB".into())]).unwrap_err().to_string();
        assert!(err.contains("minerApi.resources.memory") && err.contains("\"4GB\""), "{err}");
        assert!(err.contains("4G or 4Gi"), "{err}");
        for (set, key) in [
            ("postgres.persistence.size=100GB", "postgres.persistence.size"),
            ("redis.persistence.size=ten", "redis.persistence.size"),
            ("prometheus.persistence.size=5 Gi", "prometheus.persistence.size"),
            ("gepetto.resources.cpu=1core", "gepetto.resources.cpu"),
            ("porter.resources.memory=128mb", "porter.resources.memory"),
            ("registry.resources.cpu=-1", "registry.resources.cpu"),
            ("postgres.persistence.size=0", "postgres.persistence.size"),
        ] {
            let err = Values::load(&[Layer::Set(set.into())]).unwrap_err().to_string();
            assert!(err.contains(key), "{set}: {err}");
        }
        let v = Values::load(&[Layer::Set(
            "minerApi.resources.memory=4G,minerApi.resources.cpu=1.5,gepetto.resources.cpu=500m,postgres.persistence.size=1e11,redis.resources.memory=1.5Gi".into(),
        )])
        .unwrap();
        assert_eq!(
            (v.miner_api.resources.memory.as_str(), v.miner_api.resources.cpu.as_str()),
            ("4G", "1.5")
        );
    }

    /// Prometheus refuses `15` or `1.5m` only when the pod starts, after deploy: they are
    /// refused at load, naming the values key, the text and what is accepted.
    #[test]
    fn a_prometheus_duration_prometheus_refuses_is_an_error_naming_the_values_key() {
        let err = Values::load(&[Layer::Set("prometheus.scrapeInterval=15".into())]).unwrap_err().to_string();
        assert!(err.contains("prometheus.scrapeInterval") && err.contains("\"15\""), "{err}");
        assert!(err.contains("`15s`") && err.contains("1m30s"), "says what is accepted: {err}");
        for (set, key, bad) in [
            ("prometheus.scrapeInterval=1.5m", "prometheus.scrapeInterval", "\"1.5m\""),
            ("prometheus.scrapeInterval=15S", "prometheus.scrapeInterval", "\"15S\""),
            ("prometheus.scrapeInterval=1s1m", "prometheus.scrapeInterval", "\"1s1m\""),
            ("prometheus.scrapeInterval=", "prometheus.scrapeInterval", "\"\""),
            ("prometheus.retention=10sec", "prometheus.retention", "\"10sec\""),
            ("prometheus.retention=15 days", "prometheus.retention", "\"15 days\""),
            ("prometheus.retention=20GB", "prometheus.retention", "\"20GB\""),
            ("prometheus.retention=d", "prometheus.retention", "\"d\""),
        ] {
            let err = Values::load(&[Layer::Set(set.into())]).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(bad), "{set}: {err}");
        }
        // Zero is a Prometheus duration, but not a usable interval or retention.
        for set in ["prometheus.scrapeInterval=0", "prometheus.scrapeInterval=0s"] {
            let err = Values::load(&[Layer::Set(set.into())]).unwrap_err().to_string();
            assert!(err.contains("prometheus.scrapeInterval") && err.contains("more than zero"), "{err}");
        }
        let err = Values::load(&[Layer::Set("prometheus.retention=0d".into())]).unwrap_err().to_string();
        assert!(err.contains("prometheus.retention") && err.contains("15d"), "{err}");
        let v = Values::load(&[Layer::Set("prometheus.scrapeInterval=1m30s,prometheus.retention=2w".into())])
            .unwrap();
        assert_eq!((v.prometheus.scrape_interval.as_str(), v.prometheus.retention.as_str()), ("1m30s", "2w"));
    }

    /// The API server refuses `60 * * * *` with a 422 after deploy has applied half the
    /// objects: refused at load, naming the CronJob's values key and the schedule.
    #[test]
    fn a_cron_schedule_kubernetes_refuses_is_an_error_naming_the_values_key() {
        let yaml = |text: &str| Layer::Yaml { source: "schedules".into(), text: text.into() };
        for (doc, key, bad, says) in [
            ("auditExporter: {schedule: '60 * * * *'}", "auditExporter.schedule", "60 * * * *", "0-59"),
            (
                "failedChuteCleanup: {schedule: '* 24 * * *'}",
                "failedChuteCleanup.schedule",
                "* 24 * * *",
                "0-23",
            ),
            ("auditExporter: {schedule: '0 * * *'}", "auditExporter.schedule", "0 * * *", "exactly 5"),
            (
                "auditExporter: {schedule: '*/0 * * * *'}",
                "auditExporter.schedule",
                "*/0 * * * *",
                "more than 0",
            ),
            (
                "auditExporter: {schedule: '5-1 * * * *'}",
                "auditExporter.schedule",
                "5-1 * * * *",
                "backwards",
            ),
            ("auditExporter: {schedule: '0 0 * * 7'}", "auditExporter.schedule", "0 0 * * 7", "0-6"),
            ("auditExporter: {schedule: '@every 1h'}", "auditExporter.schedule", "@every 1h", "cron fields"),
            (
                "auditExporter: {schedule: 'CRON_TZ=UTC 1 * * * *'}",
                "auditExporter.schedule",
                "CRON_TZ=UTC",
                "timeZone",
            ),
            ("auditExporter: {schedule: '@Hourly'}", "auditExporter.schedule", "@Hourly", "@hourly"),
            ("auditExporter: {schedule: ''}", "auditExporter.schedule", "\"\"", "empty"),
            // A switched-off CronJob's schedule is still checked (as its image is).
            (
                "failedChuteCleanup: {enabled: false, schedule: '* * * * * *'}",
                "failedChuteCleanup.schedule",
                "* * * * * *",
                "exactly 5",
            ),
        ] {
            let err = Values::load(&[yaml(doc)]).unwrap_err().to_string();
            assert!(err.contains(key) && err.contains(bad) && err.contains(says), "{doc}: {err}");
        }
        let v = Values::load(&[yaml(
            "auditExporter: {schedule: '0 9 * * MON-FRI'}\nfailedChuteCleanup: {schedule: '@hourly'}",
        )])
        .unwrap();
        assert_eq!(
            (v.audit_exporter.schedule.as_str(), v.failed_chute_cleanup.schedule.as_str()),
            ("0 9 * * MON-FRI", "@hourly")
        );
        Values::load(&[Layer::Set(r"auditExporter.schedule=0\,30 */2 1-15 JAN-JUN/2 ?".into())]).unwrap();
    }

    /// Values the runtime parses at start-up (`VALIDATORS`, porter's settings) are
    /// checked by the runtime's own loaders at load: a bad one would only show as
    /// CrashLoopBackOff after deploy.
    #[test]
    fn a_value_the_runtime_refuses_at_start_up_is_an_error_naming_the_values_key() {
        let err = Values::load(&[Layer::Set("validators.supported[0].api=api.chutes.ai".into())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("validators.supported[0].api") && err.contains("api.chutes.ai"), "{err}");
        assert!(err.contains("https://"), "says what is expected: {err}");
        let err = Values::load(&[Layer::Set("validators.supported[0].socket=ws.chutes.ai".into())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("validators.supported[0].socket"), "{err}");
        // Alphanumeric, the right length, one character changed: the checksum fails.
        let err = Values::load(&[Layer::Set(
            "validators.supported[0].hotkey=5Dt7HZ7Zpw4DppPxFM7Ke3Cm7sDAWhsZXmM5ZAmE7dSVJbcR".into(),
        )])
        .unwrap_err()
        .to_string();
        assert!(err.contains("validators.supported[0].hotkey"), "{err}");
        let err = Values::load(&[Layer::Set("porter.enabled=true,porter.realHost=".into())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("porter.realHost"), "{err}");
        // Porter off: its settings are not read by anything.
        Values::load(&[Layer::Set("porter.realHost=".into())]).unwrap();
    }

    #[test]
    fn unreadable_file_is_named() {
        let err = Values::load(&[Layer::File("/nonexistent/v.yaml".into())]).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/v.yaml"), "{err}");
    }

    #[test]
    fn null_in_a_file_removes_a_map_entry() {
        let dir = tempfile::tempdir().unwrap();
        let a = file(
            &dir,
            "a.yaml",
            "registry:\n  nodeSelector:\n    nvidia.com/gpu.present: null\n    gpu: \"yes\"\n",
        );
        let v = Values::load(&[a]).unwrap();
        assert_eq!(v.registry.node_selector.len(), 1);
        assert_eq!(v.registry.node_selector["gpu"], "yes");
    }
}
