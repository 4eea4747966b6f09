//! `deploy` end to end against the Kubernetes API emulator, through the real kube client.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use kube_emulator::{Emulator, Fault, Node};
use minerctl_deploy::{Credentials, DeployError, MinerCredentials, Options, Report, deploy};
use minerctl_manifests::{Layer, ObjectKey, Values, render};
use serde_json::{Value, json};

const SS58: &str = "5FHneW46xGXgs5mUiveU4sbTyGBzmstUspZC92UhjJM694ty";
const SEED: &str = "0x9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";

struct Env {
    emu: Emulator,
    client: kube::Client,
}

/// A cluster as `minerctl provision` leaves it: a CPU and a GPU node, and microk8s'
/// hostpath-storage addon's default StorageClass.
async fn env() -> Env {
    let env = bare_env().await;
    env.emu.add_storage_class("microk8s-hostpath", true).unwrap();
    env
}

/// The nodes and no StorageClass.
async fn bare_env() -> Env {
    let emu = Emulator::start().unwrap();
    emu.add_node(Node::new("cpu-0"));
    emu.add_node(Node::new("gpu-0").gpus(8));
    let client = minerctl_deploy::client_from_kubeconfig(&emu.kubeconfig_yaml(), None, None).await.unwrap();
    Env { emu, client }
}

fn creds() -> Credentials {
    Credentials { miner: Some(MinerCredentials::new(SS58, SEED)), registry: None }
}

fn opts() -> Options {
    Options { timeout: Duration::from_secs(10), poll: Duration::from_millis(20), ..Options::default() }
}

async fn run(
    env: &Env,
    sets: &[&str],
    creds: &Credentials,
    opts: &Options,
) -> (Result<Report, DeployError>, String) {
    let layers: Vec<Layer> = sets.iter().map(|s| Layer::Set(s.to_string())).collect();
    let manifest = render(&Values::load(&layers).unwrap()).unwrap();
    let mut out = Vec::new();
    let r = deploy(&env.client, &manifest, creds, opts, &mut out).await;
    let out = String::from_utf8(out).unwrap();
    // Whatever happened, no secret reached the output.
    let seed_b64 = base64::engine::general_purpose::STANDARD.encode(SEED.trim_start_matches("0x"));
    assert!(!out.contains(SEED.trim_start_matches("0x")) && !out.contains(&seed_b64), "{out}");
    (r, out)
}

fn secret_value(env: &Env, name: &str, key: &str) -> String {
    let s = env.emu.get("v1", "Secret", Some("chutes"), name).unwrap().unwrap();
    let b = s["data"][key].as_str().unwrap();
    String::from_utf8(base64::engine::general_purpose::STANDARD.decode(b).unwrap()).unwrap()
}

#[tokio::test]
async fn first_deploy_creates_everything_and_waits_for_the_rollouts() {
    let env = env().await;
    let (r, out) = run(&env, &[], &creds(), &opts()).await;
    let report = r.unwrap_or_else(|e| panic!("{e}\n{out}"));
    let manifest = render(&Values::defaults().unwrap()).unwrap();
    // every rendered object, plus miner-credentials
    assert_eq!(report.created.len(), manifest.objects.len() + 1, "{out}");
    assert!(report.configured.is_empty() && report.pruned.is_empty());
    for o in &manifest.objects {
        let live = env.emu.get(o.api_version(), o.kind(), o.namespace(), o.name()).unwrap();
        assert!(live.is_some(), "{} missing", o.key());
    }
    // Passwords generated once, 32 alphanumerics; the hotkey as the pods read it.
    let pg = secret_value(&env, "postgres-secret", "postgres-password");
    assert_eq!(pg.len(), 32);
    assert_ne!(pg, secret_value(&env, "redis-secret", "redis-password"));
    assert_eq!(secret_value(&env, "miner-credentials", "ss58"), SS58);
    assert_eq!(secret_value(&env, "miner-credentials", "seed"), SEED.trim_start_matches("0x"));
    // Applied with server-side apply by minerctl.
    let api = env.emu.get("apps/v1", "Deployment", Some("chutes"), "api").unwrap().unwrap();
    assert_eq!(api["metadata"]["managedFields"][0]["manager"], "minerctl");
    assert_eq!(api["metadata"]["managedFields"][0]["operation"], "Apply");
    assert_eq!(api["status"]["readyReplicas"], 1);
    // The control plane runs on the CPU node, the registry proxy on the GPU node.
    let pods = env.emu.list("v1", "Pod", Some("chutes")).unwrap();
    for p in &pods {
        let node = p["spec"]["nodeName"].as_str().unwrap();
        let registry = p["metadata"]["labels"]["app.kubernetes.io/name"] == "chutes-registry";
        assert_eq!(node, if registry { "gpu-0" } else { "cpu-0" }, "{}", p["metadata"]["name"]);
    }
    assert!(out.contains("all 6 workloads ready"), "{out}");
    assert!(out.contains("created Secret chutes/postgres-secret (generated postgres-password)"), "{out}");
    // NodePorts as rendered.
    let svc = env.emu.get("v1", "Service", Some("chutes"), "api").unwrap().unwrap();
    assert_eq!(svc["spec"]["ports"][0]["nodePort"], 32000);
}

#[tokio::test]
async fn a_second_deploy_with_unchanged_values_changes_nothing() {
    let env = env().await;
    run(&env, &[], &creds(), &opts()).await.0.unwrap();
    let pg = secret_value(&env, "postgres-secret", "postgres-password");
    let clock = env.emu.resource_version();
    let (r, out) = run(&env, &[], &creds(), &opts()).await;
    let report = r.unwrap();
    assert!(!report.changed(), "{report:?}\n{out}");
    assert_eq!(env.emu.resource_version(), clock, "something in the cluster changed:\n{out}");
    assert!(out.contains("0 created, 0 configured"), "{out}");
    // The one-time password survived the redeploy.
    assert_eq!(secret_value(&env, "postgres-secret", "postgres-password"), pg);
}

#[tokio::test]
async fn dry_run_shows_a_per_object_diff_and_changes_nothing() {
    let env = env().await;
    let clock = env.emu.resource_version();
    let dry = Options { dry_run: true, ..opts() };
    // On an empty cluster: everything would be created, nothing is.
    let (r, out) = run(&env, &[], &creds(), &dry).await;
    let report = r.unwrap();
    assert_eq!(env.emu.resource_version(), clock);
    assert!(out.contains("+ create Deployment chutes/api"), "{out}");
    assert!(out.contains("+ create Secret chutes/postgres-secret (random postgres-password)"), "{out}");
    assert!(out.contains("seed: <redacted>"), "{out}");
    assert!(report.created.len() > 20);

    run(&env, &[], &creds(), &opts()).await.0.unwrap();
    let clock = env.emu.resource_version();
    let (r, out) = run(&env, &["minerApi.image=parachutes/miner:v2"], &creds(), &dry).await;
    let report = r.unwrap();
    assert_eq!(env.emu.resource_version(), clock, "a dry run changed the cluster");
    assert_eq!(
        report.configured,
        vec![ObjectKey {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            namespace: Some("chutes".into()),
            name: "api".into()
        }],
        "{out}"
    );
    assert!(out.contains("~ configure Deployment chutes/api"), "{out}");
    assert!(out.contains("-        image: chutes.local/chutes-miner:unbuilt"), "{out}");
    assert!(out.contains("+        image: parachutes/miner:v2"), "{out}");

    // A changed hotkey shows as a changed secret, without its value.
    let other = Credentials { miner: Some(MinerCredentials::new(SS58, &"11".repeat(32))), registry: None };
    let (_, out) = run(&env, &[], &other, &dry).await;
    assert!(out.contains("~ configure Secret chutes/miner-credentials"), "{out}");
    assert!(out.contains("+  seed: <redacted, changed>"), "{out}");
    assert!(!out.contains(&"11".repeat(32)), "{out}");
}

#[tokio::test]
async fn prune_deletes_only_what_minerctl_applied_before() {
    let env = env().await;
    // Porter runs only on nodes labelled for it.
    env.emu.add_node(Node::new("edge-0").label("chutes-porter", "true"));
    run(&env, &["porter.enabled=true"], &creds(), &opts()).await.0.unwrap();
    assert!(env.emu.get("apps/v1", "Deployment", Some("chutes"), "porter").unwrap().is_some());
    // Someone else's object with our label, never applied by minerctl: must survive.
    env.emu
        .create(json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "foreign", "namespace": "chutes",
            "labels": {"app.kubernetes.io/managed-by": "minerctl"}}}))
        .unwrap();
    // An object minerctl applied that a user took over (label removed): kept, with a message.
    let svcs: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(env.client.clone(), "chutes");
    svcs.patch(
        "porter",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"app.kubernetes.io/managed-by": null}}})),
    )
    .await
    .unwrap();

    let dry = Options { dry_run: true, ..opts() };
    let (r, out) = run(&env, &[], &creds(), &dry).await;
    let report = r.unwrap();
    assert!(out.contains("- delete Deployment chutes/porter"), "{out}");
    assert!(out.contains("! keep Service chutes/porter"), "{out}");
    assert_eq!(report.pruned.len(), 1);

    let (r, out) = run(&env, &[], &creds(), &opts()).await;
    let report = r.unwrap();
    assert_eq!(report.pruned.len(), 1, "{out}");
    assert!(out.contains("pruned Deployment chutes/porter"), "{out}");
    assert!(out.contains("not pruning Service chutes/porter"), "{out}");
    assert!(env.emu.get("apps/v1", "Deployment", Some("chutes"), "porter").unwrap().is_none());
    assert!(env.emu.get("v1", "Service", Some("chutes"), "porter").unwrap().is_some());
    assert!(env.emu.get("v1", "ConfigMap", Some("chutes"), "foreign").unwrap().is_some());
    // The porter pods went with their Deployment.
    let pods = env.emu.list("v1", "Pod", Some("chutes")).unwrap();
    assert!(!pods.iter().any(|p| p["metadata"]["name"].as_str().unwrap().starts_with("porter-")));
    // Pruned objects leave the record: the next deploy has nothing more to prune.
    let (r, _) = run(&env, &[], &creds(), &opts()).await;
    assert!(!r.unwrap().changed());
}

#[tokio::test]
async fn rollout_timeout_names_the_object_and_why() {
    let env = env().await;
    env.emu.add_fault(Fault::image_pull(
        "parachutes/miner:broken",
        "manifest for parachutes/miner:broken not found",
    ));
    let short = Options { timeout: Duration::from_millis(300), ..opts() };
    let (r, out) = run(&env, &["gepetto.image=parachutes/miner:broken"], &creds(), &short).await;
    let err = r.unwrap_err().to_string();
    assert!(err.contains("Deployment chutes/gepetto: 0/1 ready"), "{err}");
    assert!(err.contains("ErrImagePull: manifest for parachutes/miner:broken not found"), "{err}");
    assert!(!err.contains("Deployment chutes/api"), "only the broken workload is named: {err}");
    assert!(out.contains("Deployment chutes/gepetto: 0/1 ready"), "progress shown: {out}");

    // No node for the control plane: the scheduler's reason is reported.
    let env = Env { emu: Emulator::start().unwrap(), client: env.client };
    env.emu.add_node(Node::new("gpu-0").gpus(8));
    env.emu.add_storage_class("microk8s-hostpath", true).unwrap();
    let client =
        minerctl_deploy::client_from_kubeconfig(&env.emu.kubeconfig_yaml(), None, None).await.unwrap();
    let env = Env { emu: env.emu, client };
    let (r, _) = run(&env, &[], &creds(), &short).await;
    let err = r.unwrap_err().to_string();
    assert!(err.contains("Deployment chutes/api"), "{err}");
    assert!(
        err.contains(
            "Unschedulable: 0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector."
        ),
        "{err}"
    );
}

/// Postgres and Redis keep their data on claims. With no StorageClass to provision them
/// from, their pods would stay Pending and the rollout wait would only say "not ready";
/// deploy says why before any change, and goes through once the cluster has one.
#[tokio::test]
async fn claims_without_a_storage_class_are_refused_before_any_change() {
    let env = bare_env().await;
    let (r, out) = run(&env, &[], &creds(), &opts()).await;
    let err = r.unwrap_err().to_string();
    assert!(
        err.contains("StatefulSet chutes/postgres claims a volume from the cluster's default StorageClass, and the cluster has none"),
        "{err}"
    );
    assert!(err.contains("microk8s enable hostpath-storage"), "{err}");
    assert!(env.emu.get("v1", "Namespace", None, "chutes").unwrap().is_none(), "nothing applied: {out}");

    // A default class marked with the older beta annotation, which admission still honours.
    env.emu
        .create(json!({"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass", "provisioner": "rancher.io/local-path",
            "metadata": {"name": "local-path", "annotations": {"storageclass.beta.kubernetes.io/is-default-class": "true"}}}))
        .unwrap();
    let (r, _) = run(&env, &["redis.persistence.storageClass=fast-ssd"], &creds(), &opts()).await;
    let err = r.unwrap_err().to_string();
    assert!(
        err.contains("StatefulSet chutes/redis claims a volume from StorageClass fast-ssd, which does not exist in the cluster (it has: local-path)"),
        "{err}"
    );
    assert!(env.emu.get("v1", "Namespace", None, "chutes").unwrap().is_none());

    let (r, out) = run(&env, &[], &creds(), &opts()).await;
    r.unwrap_or_else(|e| panic!("{e}\n{out}"));
    let claim =
        env.emu.get("v1", "PersistentVolumeClaim", Some("chutes"), "data-postgres-0").unwrap().unwrap();
    assert_eq!(claim["spec"]["storageClassName"], "local-path");
    assert_eq!(claim["status"]["phase"], "Bound");
    // Its claims exist and are bound: a later deploy does not judge them again, even once
    // the class is gone.
    let classes: Api<k8s_openapi::api::storage::v1::StorageClass> = Api::all(env.client.clone());
    classes.delete("local-path", &Default::default()).await.unwrap();
    let (r, out) = run(&env, &[], &creds(), &opts()).await;
    r.unwrap_or_else(|e| panic!("{e}\n{out}"));
}

#[tokio::test]
async fn missing_credentials_are_refused_before_any_change() {
    let env = env().await;
    let clock = env.emu.resource_version();
    let (r, _) = run(&env, &[], &Credentials::default(), &opts()).await;
    let err = r.unwrap_err().to_string();
    assert!(err.contains("chutes/miner-credentials does not exist") && err.contains("--hotkey"), "{err}");
    let (r, _) = run(&env, &["imagePullSecrets[0]=regcred"], &creds(), &opts()).await;
    let err = r.unwrap_err().to_string();
    assert!(err.contains("imagePullSecrets names regcred"), "{err}");
    assert_eq!(env.emu.resource_version(), clock);

    // Once created, later deploys may omit the hotkey.
    run(&env, &[], &creds(), &opts()).await.0.unwrap();
    let (r, _) = run(&env, &[], &Credentials::default(), &opts()).await;
    assert!(!r.unwrap().changed());
}

#[tokio::test]
async fn a_field_changed_by_someone_else_is_a_conflict_until_forced() {
    let env = env().await;
    run(&env, &[], &creds(), &opts()).await.0.unwrap();
    let deploys: Api<Deployment> = Api::namespaced(env.client.clone(), "chutes");
    let pp = PatchParams { field_manager: Some("kubectl-scale".into()), ..Default::default() };
    deploys.patch("api", &pp, &Patch::Merge(json!({"spec": {"replicas": 3}}))).await.unwrap();
    let (r, _) = run(&env, &[], &creds(), &opts()).await;
    let err = r.unwrap_err();
    assert!(matches!(err, DeployError::Conflict { .. }), "{err}");
    let text = err.to_string();
    assert!(text.contains("Deployment chutes/api") && text.contains(".spec.replicas"), "{text}");
    assert!(text.contains("--force-conflicts"), "{text}");
    let forced = Options { force_conflicts: true, ..opts() };
    let (r, out) = run(&env, &[], &creds(), &forced).await;
    let report = r.unwrap_or_else(|e| panic!("{e}\n{out}"));
    assert!(report.configured.iter().any(|k| k.name == "api"));
    let d: Value = env.emu.get("apps/v1", "Deployment", Some("chutes"), "api").unwrap().unwrap();
    assert_eq!(d["spec"]["replicas"], 1);
}
