//! Values -> Tera templates -> checked Kubernetes objects -> deterministic YAML.
//!
//! Templates hold the shape of each component; values that need quoting are written with
//! `json_encode` (JSON is YAML), and lists shared by several components (the miner env,
//! resources, the anti-GPU affinity) are built here once. Every rendered document is
//! parsed back, labelled, checked against its k8s-openapi type and re-serialized with
//! sorted keys, so the output is byte-for-byte stable and cannot carry a field Kubernetes
//! would drop.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::error::RenderError;
use crate::typed;
use crate::values::Values;

/// Label on every object minerctl renders; prune only ever deletes objects carrying it.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "minerctl";
pub const PART_OF_LABEL: &str = "app.kubernetes.io/part-of";
pub const PART_OF: &str = "chutes-miner";
/// `create-once`: created by deploy when missing, never updated or pruned.
pub const LIFECYCLE_ANNOTATION: &str = "minerctl.chutes.ai/lifecycle";
pub const CREATE_ONCE: &str = "create-once";
/// Comma-separated Secret keys deploy fills with random values on creation.
pub const GENERATE_ANNOTATION: &str = "minerctl.chutes.ai/generate";

/// Templates in the order their objects appear within one kind.
const TEMPLATES: &[(&str, &str)] = &[
    ("namespace.yaml", include_str!("../../../templates/namespace.yaml")),
    ("rbac.yaml", include_str!("../../../templates/rbac.yaml")),
    ("secrets.yaml", include_str!("../../../templates/secrets.yaml")),
    ("postgres.yaml", include_str!("../../../templates/postgres.yaml")),
    ("redis.yaml", include_str!("../../../templates/redis.yaml")),
    ("prometheus.yaml", include_str!("../../../templates/prometheus.yaml")),
    ("api.yaml", include_str!("../../../templates/api.yaml")),
    ("gepetto.yaml", include_str!("../../../templates/gepetto.yaml")),
    ("porter.yaml", include_str!("../../../templates/porter.yaml")),
    ("registry.yaml", include_str!("../../../templates/registry.yaml")),
    ("network-policies.yaml", include_str!("../../../templates/network-policies.yaml")),
    ("cronjobs.yaml", include_str!("../../../templates/cronjobs.yaml")),
];
const NGINX_TEMPLATE: (&str, &str) =
    ("registry-nginx.conf", include_str!("../../../templates/registry-nginx.conf"));

/// Identity of one object: what prune records and deploy reports.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectKey {
    pub api_version: String,
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {}/{}", self.kind, ns, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// How deploy treats an object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Server-side applied on every deploy, pruned when no longer rendered.
    Apply,
    /// Created once (with generated secret data) and then left alone.
    CreateOnce,
}

/// One rendered object, already checked and canonical.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// The template that produced it.
    pub template: &'static str,
    pub value: Value,
}

impl Object {
    fn str_at(&self, pointer: &str) -> &str {
        self.value.pointer(pointer).and_then(Value::as_str).unwrap_or_default()
    }
    pub fn api_version(&self) -> &str {
        self.str_at("/apiVersion")
    }
    pub fn kind(&self) -> &str {
        self.str_at("/kind")
    }
    pub fn name(&self) -> &str {
        self.str_at("/metadata/name")
    }
    pub fn namespace(&self) -> Option<&str> {
        self.value.pointer("/metadata/namespace").and_then(Value::as_str)
    }
    pub fn key(&self) -> ObjectKey {
        ObjectKey {
            api_version: self.api_version().to_string(),
            kind: self.kind().to_string(),
            namespace: self.namespace().map(str::to_string),
            name: self.name().to_string(),
        }
    }
    fn annotation(&self, key: &str) -> Option<&str> {
        self.value.pointer("/metadata/annotations").and_then(|a| a.get(key)).and_then(Value::as_str)
    }
    pub fn lifecycle(&self) -> Lifecycle {
        match self.annotation(LIFECYCLE_ANNOTATION) {
            Some(CREATE_ONCE) => Lifecycle::CreateOnce,
            _ => Lifecycle::Apply,
        }
    }
    /// Secret keys to fill with random values when a create-once Secret is created.
    pub fn generated_keys(&self) -> Vec<String> {
        self.annotation(GENERATE_ANNOTATION)
            .map(|s| s.split(',').map(str::trim).filter(|k| !k.is_empty()).map(str::to_string).collect())
            .unwrap_or_default()
    }
}

/// Everything `render` produced, in apply order.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub objects: Vec<Object>,
}

impl Manifest {
    /// The multi-document YAML `minerctl render` prints.
    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        for o in &self.objects {
            out.push_str("---\n# Source: templates/");
            out.push_str(o.template);
            out.push('\n');
            // Serializing a JSON tree to YAML cannot fail: keys are strings, no NaN.
            match serde_saphyr::to_string(&o.value) {
                Ok(yaml) => out.push_str(&yaml),
                Err(e) => out.push_str(&format!("# cannot serialize: {e}\n")),
            }
            if !out.ends_with('\n') {
                out.push('\n');
            }
        }
        out
    }
}

/// Rank of a kind in apply order: what others refer to goes first (Helm's install order).
pub fn kind_order(kind: &str) -> usize {
    const ORDER: &[&str] = &[
        "Namespace",
        "NetworkPolicy",
        "ServiceAccount",
        "Secret",
        "ConfigMap",
        "PersistentVolumeClaim",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Service",
        "DaemonSet",
        "StatefulSet",
        "Deployment",
        "Job",
        "CronJob",
    ];
    ORDER.iter().position(|k| *k == kind).unwrap_or(ORDER.len())
}

/// Renders every template for these values.
pub fn render(values: &Values) -> Result<Manifest, RenderError> {
    let mut tera = tera::Tera::default();
    // YAML is not HTML: never escape.
    tera.autoescape_on(vec![]);
    for (name, src) in TEMPLATES.iter().chain(std::iter::once(&NGINX_TEMPLATE)) {
        tera.add_raw_template(name, src).map_err(|e| template_error(name, &e))?;
    }
    let mut ctx = context(values)?;
    let nginx_conf = tera
        .render(NGINX_TEMPLATE.0, &ctx)
        .map_err(|e| template_error(NGINX_TEMPLATE.0, &e))?
        .trim_start()
        .to_string();
    ctx.insert("nginx_conf_sha256", &hex(&Sha256::digest(nginx_conf.as_bytes())));
    ctx.insert("nginx_conf", &nginx_conf);

    let mut objects: Vec<(usize, Object)> = Vec::new();
    for (name, _) in TEMPLATES {
        let text = tera.render(name, &ctx).map_err(|e| template_error(name, &e))?;
        for doc in split_documents(&text) {
            let value: Value = serde_saphyr::from_str(&doc)
                .map_err(|e| RenderError::Yaml { template: (*name).to_string(), message: e.to_string() })?;
            if value.is_null() {
                continue;
            }
            let object = finish(name, value)?;
            objects.push((kind_order(object.kind()), object));
        }
    }
    // Stable: within a kind, template order.
    objects.sort_by_key(|(rank, _)| *rank);
    let objects: Vec<Object> = objects.into_iter().map(|(_, o)| o).collect();
    let mut seen: BTreeMap<ObjectKey, &'static str> = BTreeMap::new();
    for o in &objects {
        if let Some(first) = seen.insert(o.key(), o.template) {
            return Err(RenderError::Duplicate {
                object: o.key().to_string(),
                first: first.to_string(),
                second: o.template.to_string(),
            });
        }
    }
    Ok(Manifest { objects })
}

fn template_error(name: &str, e: &tera::Error) -> RenderError {
    // Tera nests the real cause; show the whole chain.
    RenderError::Template { template: name.to_string(), message: provision_errors::chain(e) }
}

/// Splits on `---` lines; documents that are only whitespace and comments are dropped.
fn split_documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.trim_end() == "---" {
            docs.push(String::new());
        } else if let Some(last) = docs.last_mut() {
            last.push_str(line);
            last.push('\n');
        }
    }
    docs.into_iter()
        .filter(|d| d.lines().any(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#')))
        .collect()
}

/// Labels, type check, canonical key order.
fn finish(template: &'static str, mut value: Value) -> Result<Object, RenderError> {
    let describe = |v: &Value| {
        format!(
            "{} {}",
            v.get("kind").and_then(Value::as_str).unwrap_or("(no kind)"),
            v.pointer("/metadata/name").and_then(Value::as_str).unwrap_or("(no name)")
        )
    };
    let object_error = |v: &Value, message: String| RenderError::Object {
        template: template.to_string(),
        object: describe(v),
        message,
    };
    let Some(metadata) = value.get_mut("metadata").and_then(Value::as_object_mut) else {
        return Err(object_error(&value, "has no metadata".into()));
    };
    let labels = metadata.entry("labels").or_insert_with(|| Value::Object(Map::new()));
    let Some(labels) = labels.as_object_mut() else {
        return Err(object_error(&value, "metadata.labels is not a mapping".into()));
    };
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    labels.insert(PART_OF_LABEL.into(), PART_OF.into());
    typed::check(&value).map_err(|m| object_error(&value, m))?;
    Ok(Object { template, value: canonical(value) })
}

/// Recursively sorted keys, whatever serde_json's `preserve_order` feature says.
pub fn canonical(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, canonical(v))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(canonical).collect()),
        other => other,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The shape of the original chart's `VALIDATORS` env (plus each validator's NodePort).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ValidatorsEnv<'a> {
    default_registry: &'a str,
    default_api: &'a str,
    supported: &'a [crate::values::Validator],
}

fn secret_env(name: &str, secret: &str, key: &str) -> Value {
    json!({"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}})
}

/// Where Gepetto's container sees `gepetto.recordTraceDir`.
const TRACE_MOUNT: &str = "/var/lib/gepetto-trace";

fn plain_env(name: &str, value: impl Into<String>) -> Value {
    json!({"name": name, "value": value.into()})
}

fn requirements(r: &crate::values::Resources) -> Value {
    // requests = limits: the Guaranteed QoS class, as the original chart did
    let q = json!({"cpu": r.cpu, "memory": r.memory});
    json!({"requests": q, "limits": q})
}

/// The environment of each runtime container, as rendered: plain values and references
/// to Secrets (`valueFrom`), in order (later entries may use `$(EARLIER)`).
/// `minerctl render` writes these; [`crate::runtime_env`] checks them at values load
/// with the runtime's own settings loaders.
pub(crate) struct WorkloadEnv {
    /// The API container.
    pub api: Vec<Value>,
    /// Gepetto's container.
    pub gepetto: Vec<Value>,
    /// The audit exporter's container.
    pub audit: Vec<Value>,
    /// The `migrate` init container of the API and Gepetto.
    pub migrate: Vec<Value>,
    /// Porter's container (rendered only when porter is enabled).
    pub porter: Vec<Value>,
}

pub(crate) fn workload_env(values: &Values) -> Result<WorkloadEnv, serde_json::Error> {
    let ns = values.namespace.as_str();
    let validators_json = serde_json::to_string(&ValidatorsEnv {
        default_registry: &values.validators.default_registry,
        default_api: &values.validators.default_api,
        supported: &values.validators.supported,
    })?;
    let pg = &values.postgres;
    // Shared by the api, gepetto and the audit exporter (chutes-miner.md §3.2).
    // `migrate` needs the database only: no hotkey seed in the init container.
    let migrate = vec![
        secret_env("POSTGRES_PASSWORD", "postgres-secret", "postgres-password"),
        plain_env(
            "POSTGRESQL",
            format!("postgresql+asyncpg://{}:$(POSTGRES_PASSWORD)@postgres:5432/{}", pg.user, pg.database),
        ),
    ];
    let mut common = vec![
        secret_env("MINER_SS58", "miner-credentials", "ss58"),
        secret_env("MINER_SEED", "miner-credentials", "seed"),
        secret_env("REDIS_PASSWORD", "redis-secret", "redis-password"),
    ];
    common.extend(migrate.iter().cloned());
    common.extend([
        plain_env("REDIS_URL", "redis://:$(REDIS_PASSWORD)@redis:6379"),
        plain_env("VALIDATORS", validators_json),
        plain_env("CHUTES_NAMESPACE", ns),
    ]);
    let first_registry_port =
        values.validators.supported.first().map(|v| v.registry_node_port).unwrap_or(30500);
    let mut api = common.clone();
    api.extend([
        plain_env("REGISTRY_PROXY_PORT", first_registry_port.to_string()),
        plain_env("GRAVAL_BOOTSTRAP_IMAGE", values.graval.image.clone()),
        plain_env("GRAVAL_BOOTSTRAP_IMAGE_ROCM", values.graval.image_rocm.clone()),
        plain_env("GRAVAL_BOOTSTRAP_TIMEOUT", values.graval.timeout_seconds.to_string()),
    ]);
    if values.miner_api.bound_management_only {
        api.push(plain_env("MANAGEMENT_BOUND_ONLY", "true"));
    }
    // The Jobs the API and Gepetto create (GraVal, chutes' cache-init) pull this
    // workspace's images too: they name the same secrets as the chart's pods.
    if !values.image_pull_secrets.is_empty() {
        api.push(plain_env("IMAGE_PULL_SECRETS", values.image_pull_secrets.join(",")));
    }
    let mut gepetto = api.clone();
    gepetto.extend([
        plain_env("CACHE_MAX_AGE_DAYS", values.cache.max_age_days.to_string()),
        plain_env("CACHE_MAX_SIZE_GB", values.cache.max_size_gb.to_string()),
        plain_env("CACHE_OVERRIDES", serde_json::to_string(&values.cache.overrides)?),
        // The chute Jobs' cache-init container runs `chutes-miner cache-clean` from
        // Gepetto's own image (no chart-side script, no third-party image).
        plain_env("CACHE_CLEANER_IMAGE", values.gepetto.image.clone()),
        plain_env("GEPETTO_STRATEGY", values.gepetto.strategy.as_str()),
    ]);
    if !values.gepetto.record_trace_dir.is_empty() {
        gepetto.push(plain_env("GEPETTO_RECORD_TRACE", format!("{TRACE_MOUNT}/trace.jsonl")));
    }
    let porter = vec![
        plain_env("REAL_AXON_HOST", values.porter.real_host.clone()),
        plain_env("REAL_AXON_PORT", values.porter.real_port.to_string()),
        secret_env("MINER_HOTKEY_SS58", "miner-credentials", "ss58"),
        plain_env(
            "VALIDATOR_WHITELIST",
            values.validators.supported.iter().map(|v| v.hotkey.as_str()).collect::<Vec<_>>().join(","),
        ),
    ];
    Ok(WorkloadEnv { api, gepetto, audit: common, migrate, porter })
}

fn context(values: &Values) -> Result<tera::Context, RenderError> {
    let context_error =
        |e: serde_json::Error| RenderError::Template { template: "(context)".into(), message: e.to_string() };
    let ns = values.namespace.as_str();
    let WorkloadEnv { api, gepetto, audit, migrate, porter } = workload_env(values).map_err(context_error)?;
    let dns_ports = json!([{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]);

    let mut ctx = tera::Context::new();
    ctx.insert("values", &serde_json::to_value(values).map_err(context_error)?);
    ctx.insert("ns", ns);
    ctx.insert("trace_mount", TRACE_MOUNT);
    ctx.insert("cluster_role", &format!("{ns}-miner"));
    ctx.insert(
        "pull_secrets",
        &values.image_pull_secrets.iter().map(|n| json!({"name": n})).collect::<Vec<_>>(),
    );
    ctx.insert(
        "avoid_gpu_nodes",
        &json!({"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "nvidia.com/gpu.present", "operator": "NotIn", "values": ["true"]}]}
        ]}}}),
    );
    ctx.insert(
        "resources",
        &json!({
            "minerApi": requirements(&values.miner_api.resources),
            "gepetto": requirements(&values.gepetto.resources),
            "postgres": requirements(&values.postgres.resources),
            "redis": requirements(&values.redis.resources),
            "prometheus": requirements(&values.prometheus.resources),
            "registry": requirements(&values.registry.resources),
            "porter": requirements(&values.porter.resources),
        }),
    );
    ctx.insert(
        "env",
        &json!({"api": api, "gepetto": gepetto, "audit": audit, "migrate": migrate, "porter": porter}),
    );
    ctx.insert("dns_ports", &dns_ports);
    ctx.insert("dns_egress", &json!([{"ports": dns_ports}]));
    ctx.insert(
        "public_ipv4",
        &json!({"cidr": "0.0.0.0/0", "except": [
            "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10"
        ]}),
    );
    Ok(ctx)
}
