//! One deploy: preflight checks, server-side apply in dependency order, create-once
//! secrets, prune, the applied-objects record, and the rollout wait. `--dry-run` runs the
//! same plan against the server with `dryRun=All` and prints a diff instead.

use std::collections::BTreeSet;
use std::io::Write;
use std::time::Duration;

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use minerctl_manifests::{Lifecycle, MANAGED_BY, MANAGED_BY_LABEL, Manifest, ObjectKey, kind_order};
use serde_json::{Value, json};

use crate::credentials::{self, Credentials, MINER_SECRET, REGISTRY_SECRET};
use crate::diff;
use crate::error::DeployError;
use crate::record;
use crate::resources::api_resource;
use crate::rollout;

/// The field manager every minerctl apply uses.
pub const FIELD_MANAGER: &str = "minerctl";

#[derive(Debug, Clone)]
pub struct Options {
    /// Show what would change (per-object diff) and change nothing.
    pub dry_run: bool,
    /// Wait for Deployments, StatefulSets and DaemonSets to be ready.
    pub wait: bool,
    pub timeout: Duration,
    /// How often the rollout wait polls.
    pub poll: Duration,
    /// Take back fields another manager changed (server-side apply `force`).
    pub force_conflicts: bool,
    /// Delete objects a previous deploy applied that are no longer rendered.
    pub prune: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            dry_run: false,
            wait: true,
            timeout: Duration::from_secs(600),
            poll: Duration::from_secs(2),
            force_conflicts: false,
            prune: true,
        }
    }
}

/// What a deploy did (or, with `dry_run`, would do).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub created: Vec<ObjectKey>,
    pub configured: Vec<ObjectKey>,
    pub unchanged: Vec<ObjectKey>,
    pub pruned: Vec<ObjectKey>,
    /// In the record but not labelled as ours: left alone.
    pub kept: Vec<ObjectKey>,
}

impl Report {
    pub fn changed(&self) -> bool {
        !(self.created.is_empty() && self.configured.is_empty() && self.pruned.is_empty())
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum How {
    Apply,
    CreateOnce,
    /// Operator-given secrets: applied when given, never recorded or pruned.
    Credential,
}

struct Item {
    key: ObjectKey,
    value: Value,
    how: How,
    generate: Vec<String>,
}

fn plan(manifest: &Manifest, creds: &Credentials) -> Result<(String, Vec<Item>), DeployError> {
    let ns = manifest
        .objects
        .iter()
        .find(|o| o.kind() == "Namespace")
        .map(|o| o.name().to_string())
        .ok_or_else(|| DeployError::Preflight("the manifest has no Namespace object".into()))?;
    let mut items: Vec<Item> = manifest
        .objects
        .iter()
        .map(|o| Item {
            key: o.key(),
            value: o.value.clone(),
            how: match o.lifecycle() {
                Lifecycle::Apply => How::Apply,
                Lifecycle::CreateOnce => How::CreateOnce,
            },
            generate: o.generated_keys(),
        })
        .collect();
    for s in creds.secrets(&ns) {
        let key = ObjectKey {
            api_version: "v1".into(),
            kind: "Secret".into(),
            namespace: Some(ns.clone()),
            name: s["metadata"]["name"].as_str().unwrap_or_default().into(),
        };
        items.push(Item { key, value: s, how: How::Credential, generate: Vec::new() });
    }
    items.sort_by_key(|i| kind_order(&i.key.kind));
    for i in &items {
        if api_resource(&i.key.api_version, &i.key.kind).is_none() {
            return Err(DeployError::UnknownKind { object: i.key.to_string(), kind: i.key.kind.clone() });
        }
    }
    Ok((ns, items))
}

fn api(client: &kube::Client, key: &ObjectKey) -> Result<Api<DynamicObject>, DeployError> {
    let ar = api_resource(&key.api_version, &key.kind)
        .ok_or_else(|| DeployError::UnknownKind { object: key.to_string(), kind: key.kind.clone() })?;
    Ok(match &key.namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    })
}

fn to_value(o: DynamicObject) -> Value {
    serde_json::to_value(o).unwrap_or(Value::Null)
}

/// The live object, or None (also when its namespace does not exist yet).
async fn live(client: &kube::Client, key: &ObjectKey) -> Result<Option<Value>, DeployError> {
    match api(client, key)?.get_opt(&key.name).await {
        Ok(o) => Ok(o.map(to_value)),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(None),
        Err(e) => Err(DeployError::api(key, e)),
    }
}

async fn ssa(
    client: &kube::Client,
    key: &ObjectKey,
    value: &Value,
    force: bool,
    dry_run: bool,
) -> Result<Value, DeployError> {
    let mut pp = PatchParams::apply(FIELD_MANAGER);
    if force {
        pp = pp.force();
    }
    if dry_run {
        pp = pp.dry_run();
    }
    api(client, key)?
        .patch(&key.name, &pp, &Patch::Apply(value))
        .await
        .map(to_value)
        .map_err(|e| DeployError::api(key, e))
}

fn rv(v: &Value) -> Option<&str> {
    v.pointer("/metadata/resourceVersion").and_then(Value::as_str)
}

fn is_ours(v: &Value) -> bool {
    v.pointer("/metadata/labels").and_then(|l| l.get(MANAGED_BY_LABEL)).and_then(Value::as_str)
        == Some(MANAGED_BY)
}

/// Names of image pull secrets any pod template refers to.
fn pull_secret_names(v: &Value, out: &mut BTreeSet<String>) {
    match v {
        Value::Object(m) => {
            if let Some(Value::Array(list)) = m.get("imagePullSecrets") {
                for s in list {
                    if let Some(n) = s.get("name").and_then(Value::as_str) {
                        out.insert(n.to_string());
                    }
                }
            }
            m.values().for_each(|c| pull_secret_names(c, out));
        }
        Value::Array(a) => a.iter().for_each(|c| pull_secret_names(c, out)),
        _ => {}
    }
}

/// Everything that would make the deploy fail half-way, checked before any change.
async fn preflight(
    client: &kube::Client,
    ns: &str,
    items: &[Item],
    creds: &Credentials,
) -> Result<(), DeployError> {
    let secret = |name: &str| ObjectKey {
        api_version: "v1".into(),
        kind: "Secret".into(),
        namespace: Some(ns.into()),
        name: name.into(),
    };
    if creds.miner.is_none() && live(client, &secret(MINER_SECRET)).await?.is_none() {
        return Err(DeployError::Preflight(format!(
            "secret {ns}/{MINER_SECRET} does not exist yet: pass the hotkey file (--hotkey) so deploy can create it"
        )));
    }
    let mut names = BTreeSet::new();
    for i in items {
        pull_secret_names(&i.value, &mut names);
    }
    for name in names {
        let given = name == REGISTRY_SECRET && creds.registry.is_some();
        if !given && live(client, &secret(&name)).await?.is_none() {
            return Err(DeployError::Preflight(format!(
                "imagePullSecrets names {name}, which does not exist in {ns}: create it, or pass --registry-server/--registry-user/--registry-password-file to create {REGISTRY_SECRET}"
            )));
        }
    }
    storage_classes(client, ns, items).await
}

/// The annotations that make a StorageClass the cluster's default (the beta one is
/// still honoured by the admission plugin).
const DEFAULT_CLASS: [&str; 2] =
    ["storageclass.kubernetes.io/is-default-class", "storageclass.beta.kubernetes.io/is-default-class"];

/// Every claim the deploy would create has a StorageClass to be provisioned from: a
/// claim without one stays Pending, and so does the pod that mounts it (Postgres,
/// Redis), which the rollout wait would only report as "not ready" minutes later. A
/// claim that already exists is bound or not already; it is not judged again.
async fn storage_classes(client: &kube::Client, ns: &str, items: &[Item]) -> Result<(), DeployError> {
    let mut wanted: Vec<(String, Option<String>)> = Vec::new();
    for i in items {
        let claims: Vec<(String, &Value)> = match i.key.kind.as_str() {
            // The claim of ordinal 0 stands for the set's claims.
            "StatefulSet" => i.value["spec"]["volumeClaimTemplates"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|t| {
                    (format!("{}-{}-0", t["metadata"]["name"].as_str().unwrap_or_default(), i.key.name), t)
                })
                .collect(),
            "PersistentVolumeClaim" => vec![(i.key.name.clone(), &i.value)],
            _ => continue,
        };
        for (claim, template) in claims {
            let key = ObjectKey {
                api_version: "v1".into(),
                kind: "PersistentVolumeClaim".into(),
                namespace: Some(ns.into()),
                name: claim,
            };
            if live(client, &key).await?.is_some() {
                continue;
            }
            let class = template["spec"]["storageClassName"].as_str().map(str::to_owned);
            if class.as_deref() != Some("") {
                // "" asks for no class: a volume made by hand, nothing to check.
                wanted.push((i.key.to_string(), class));
            }
        }
    }
    if wanted.is_empty() {
        return Ok(());
    }
    let ar = api_resource("storage.k8s.io/v1", "StorageClass").ok_or_else(|| DeployError::UnknownKind {
        object: "storageclasses".into(),
        kind: "StorageClass".into(),
    })?;
    let classes = Api::<DynamicObject>::all_with(client.clone(), &ar)
        .list(&Default::default())
        .await
        .map_err(|e| DeployError::Api { object: "storageclasses".into(), message: e.to_string() })?
        .items;
    let exists = |name: &str| classes.iter().any(|c| c.metadata.name.as_deref() == Some(name));
    let has_default = classes.iter().any(|c| {
        let annotations = c.metadata.annotations.as_ref();
        DEFAULT_CLASS.iter().any(|k| annotations.and_then(|a| a.get(*k)).map(String::as_str) == Some("true"))
    });
    for (object, class) in wanted {
        match class {
            None if !has_default => {
                return Err(DeployError::Preflight(format!(
                    "{object} claims a volume from the cluster's default StorageClass, and the cluster has none: \
                     its pod would stay Pending. Enable one on the cluster (`microk8s enable hostpath-storage`, \
                     which `minerctl provision` does on the primary) or name an existing class in values \
                     (`<component>.persistence.storageClass`)"
                )));
            }
            Some(name) if !exists(&name) => {
                let mut known: Vec<&str> =
                    classes.iter().filter_map(|c| c.metadata.name.as_deref()).collect();
                known.sort_unstable();
                let known = if known.is_empty() { "none".to_owned() } else { known.join(", ") };
                return Err(DeployError::Preflight(format!(
                    "{object} claims a volume from StorageClass {name}, which does not exist in the cluster \
                     (it has: {known}): its pod would stay Pending. Fix `<component>.persistence.storageClass` \
                     in values, or leave it empty for the cluster's default"
                )));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Applies the manifest (and credentials) to the cluster; see the module doc.
pub async fn deploy(
    client: &kube::Client,
    manifest: &Manifest,
    creds: &Credentials,
    opts: &Options,
    out: &mut dyn Write,
) -> Result<Report, DeployError> {
    let (ns, items) = plan(manifest, creds)?;
    preflight(client, &ns, &items, creds).await?;
    let previous = record::read(client, &ns).await?;
    let applied: BTreeSet<ObjectKey> =
        items.iter().filter(|i| i.how == How::Apply).map(|i| i.key.clone()).collect();
    let mut stale: Vec<ObjectKey> = previous.difference(&applied).cloned().collect();
    // Dependents first: workloads before the Services, Secrets and namespace they use.
    stale.sort_by_key(|k| std::cmp::Reverse(kind_order(&k.kind)));
    if opts.dry_run {
        return dry_run(client, &ns, &items, &stale, opts, out).await;
    }

    let mut report = Report::default();
    for item in &items {
        let before = live(client, &item.key).await?;
        match item.how {
            How::CreateOnce => match before {
                Some(existing) => {
                    let data = existing.get("data");
                    for k in &item.generate {
                        if data.and_then(|d| d.get(k)).is_none() {
                            writeln!(
                                out,
                                "warning: {} has no key {k}; it is never regenerated, fix it by hand",
                                item.key
                            )?;
                        }
                    }
                    report.unchanged.push(item.key.clone());
                }
                None => {
                    let mut obj = item.value.clone();
                    let mut data = serde_json::Map::new();
                    for k in &item.generate {
                        data.insert(k.clone(), json!(credentials::encode(&credentials::random_password()?)));
                    }
                    obj["data"] = Value::Object(data);
                    let value: DynamicObject = serde_json::from_value(obj).map_err(|e| DeployError::Api {
                        object: item.key.to_string(),
                        message: e.to_string(),
                    })?;
                    let pp = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() };
                    api(client, &item.key)?
                        .create(&pp, &value)
                        .await
                        .map_err(|e| DeployError::api(&item.key, e))?;
                    writeln!(out, "created {} (generated {})", item.key, item.generate.join(", "))?;
                    report.created.push(item.key.clone());
                }
            },
            How::Apply | How::Credential => {
                let after = ssa(client, &item.key, &item.value, opts.force_conflicts, false).await?;
                match before {
                    None => {
                        writeln!(out, "created {}", item.key)?;
                        report.created.push(item.key.clone());
                    }
                    Some(b) if rv(&b) != rv(&after) => {
                        writeln!(out, "configured {}", item.key)?;
                        report.configured.push(item.key.clone());
                    }
                    Some(_) => report.unchanged.push(item.key.clone()),
                }
            }
        }
        if item.key.kind == "Namespace" {
            // Record what is about to be applied before applying it, so an interrupted
            // deploy still knows every object it may have created.
            let union: BTreeSet<ObjectKey> = previous.union(&applied).cloned().collect();
            ssa(client, &record::record_key(&ns), &record::object(&ns, &union), true, false).await?;
        }
    }

    if opts.prune {
        for key in &stale {
            let Some(obj) = live(client, key).await? else {
                continue;
            };
            if !is_ours(&obj) {
                writeln!(out, "not pruning {key}: it is not labelled {MANAGED_BY_LABEL}={MANAGED_BY}")?;
                report.kept.push(key.clone());
                continue;
            }
            match api(client, key)?.delete(&key.name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => continue,
                Err(e) => return Err(DeployError::api(key, e)),
            }
            writeln!(out, "pruned {key}")?;
            report.pruned.push(key.clone());
        }
    }
    let kept_in_record: BTreeSet<ObjectKey> =
        if opts.prune { applied.clone() } else { previous.union(&applied).cloned().collect() };
    ssa(client, &record::record_key(&ns), &record::object(&ns, &kept_in_record), true, false).await?;
    writeln!(
        out,
        "{} created, {} configured, {} unchanged, {} pruned",
        report.created.len(),
        report.configured.len(),
        report.unchanged.len(),
        report.pruned.len()
    )?;
    if opts.wait {
        let order: Vec<ObjectKey> =
            items.iter().filter(|i| i.how == How::Apply).map(|i| i.key.clone()).collect();
        rollout::wait(client, &order, opts.timeout, opts.poll, out).await?;
    }
    Ok(report)
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}\n")).collect()
}

async fn dry_run(
    client: &kube::Client,
    ns: &str,
    items: &[Item],
    stale: &[ObjectKey],
    opts: &Options,
    out: &mut dyn Write,
) -> Result<Report, DeployError> {
    let namespace_key =
        ObjectKey { api_version: "v1".into(), kind: "Namespace".into(), namespace: None, name: ns.into() };
    let ns_exists = live(client, &namespace_key).await?.is_some();
    let mut report = Report::default();
    for item in items {
        let before = live(client, &item.key).await?;
        if item.how == How::CreateOnce {
            if before.is_none() {
                writeln!(out, "+ create {} (random {})", item.key, item.generate.join(", "))?;
                report.created.push(item.key.clone());
            } else {
                report.unchanged.push(item.key.clone());
            }
            continue;
        }
        // In a namespace that does not exist yet the server cannot dry-run: show the object.
        let would = if ns_exists || item.key.namespace.is_none() {
            ssa(client, &item.key, &item.value, opts.force_conflicts, true).await?
        } else {
            item.value.clone()
        };
        let mut new = diff::normalize(&would);
        match before {
            None => {
                diff::redact(&mut new, None);
                writeln!(out, "+ create {}", item.key)?;
                write!(out, "{}", indent(&diff::yaml(&new)))?;
                report.created.push(item.key.clone());
            }
            Some(b) => {
                let mut old = diff::normalize(&b);
                if old == new {
                    report.unchanged.push(item.key.clone());
                    continue;
                }
                let raw_old = old.clone();
                diff::redact(&mut new, Some(&raw_old));
                diff::redact(&mut old, None);
                writeln!(out, "~ configure {}", item.key)?;
                let label = item.key.to_string();
                write!(out, "{}", indent(&diff::unified(&diff::yaml(&old), &diff::yaml(&new), &label)))?;
                report.configured.push(item.key.clone());
            }
        }
    }
    if opts.prune {
        for key in stale {
            match live(client, key).await? {
                Some(obj) if is_ours(&obj) => {
                    writeln!(out, "- delete {key}")?;
                    report.pruned.push(key.clone());
                }
                Some(_) => {
                    writeln!(out, "! keep {key}: not labelled {MANAGED_BY_LABEL}={MANAGED_BY}")?;
                    report.kept.push(key.clone());
                }
                None => {}
            }
        }
    }
    writeln!(
        out,
        "dry run: {} to create, {} to configure, {} unchanged, {} to prune; nothing was changed",
        report.created.len(),
        report.configured.len(),
        report.unchanged.len(),
        report.pruned.len()
    )?;
    Ok(report)
}
