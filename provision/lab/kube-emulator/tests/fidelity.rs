//! Where the emulator behaves as a real API server does and a scheduler can tell:
//! resources and admission, Jobs, selector watches, graceful deletion, kubelet checks,
//! defaults and validation. Driven by the real kube client (and kube-runtime for watches).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, PersistentVolumeClaim, Pod};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube_emulator::{Emulator, Node};
use serde_json::{Value, json};

mod common;
use common::{api_err, client, eventually};

fn pod(name: &str, spec: Value) -> Pod {
    serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}),
    )
    .unwrap()
}

fn gpu_container(gpus: u32) -> Value {
    json!({"name": "c", "image": "chute:1", "resources": {"limits": {"nvidia.com/gpu": gpus.to_string()}}})
}

fn condition_message(p: &Pod) -> String {
    let conds = p.status.clone().unwrap().conditions.unwrap_or_default();
    conds.iter().find(|c| c.type_ == "PodScheduled").and_then(|c| c.message.clone()).unwrap_or_default()
}

fn phase(p: &Pod) -> String {
    p.status.clone().and_then(|s| s.phase).unwrap_or_default()
}

#[tokio::test]
async fn gpu_requests_need_nodes_with_gpus_and_bound_pods_pass_admission() {
    let emu = Emulator::start().unwrap();
    emu.add_node(Node::new("cpu-0"));
    emu.add_node(Node::new("gpu-0").gpus(8));
    let c = client(&emu).await;
    let pods: Api<Pod> = Api::namespaced(c, "default");

    // More GPUs than any node has: Pending, with the scheduler's words.
    pods.create(&PostParams::default(), &pod("big", json!({"containers": [gpu_container(9)]})))
        .await
        .unwrap();
    let big = pods.get("big").await.unwrap();
    assert_eq!(phase(&big), "Pending");
    assert_eq!(condition_message(&big), "0/2 nodes are available: 2 Insufficient nvidia.com/gpu.");
    // A GPU limit alone became the request (defaulting), and 8 fit on gpu-0 only.
    pods.create(&PostParams::default(), &pod("eight", json!({"containers": [gpu_container(8)]})))
        .await
        .unwrap();
    let eight = pods.get("eight").await.unwrap();
    let res = eight.spec.clone().unwrap().containers[0].resources.clone().unwrap();
    assert_eq!(res.requests.unwrap()["nvidia.com/gpu"].0, "8");
    assert_eq!(eight.spec.unwrap().node_name.as_deref(), Some("gpu-0"));
    // The node is full now: one more GPU fits nowhere.
    pods.create(&PostParams::default(), &pod("one", json!({"containers": [gpu_container(1)]})))
        .await
        .unwrap();
    assert_eq!(
        condition_message(&pods.get("one").await.unwrap()),
        "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."
    );

    // Bound by nodeName, past the scheduler: the kubelet refuses what the node lacks.
    let on_cpu = json!({"nodeName": "cpu-0", "containers": [gpu_container(1)]});
    pods.create(&PostParams::default(), &pod("no-gpu-here", on_cpu)).await.unwrap();
    let st = pods.get("no-gpu-here").await.unwrap().status.unwrap();
    assert_eq!(st.phase.as_deref(), Some("Failed"));
    assert_eq!(st.reason.as_deref(), Some("OutOfnvidia.com/gpu"));
    assert!(st.message.unwrap().contains("requested: 1, used: 0, capacity: 0"));
    let cpus = json!({"nodeName": "cpu-0", "containers": [{"name": "c", "image": "x:1", "resources": {"requests": {"cpu": "17"}}}]});
    pods.create(&PostParams::default(), &pod("too-many-cpus", cpus)).await.unwrap();
    let st = pods.get("too-many-cpus").await.unwrap().status.unwrap();
    assert_eq!((st.phase.as_deref(), st.reason.as_deref()), (Some("Failed"), Some("OutOfcpu")));

    // Freeing the GPUs lets the waiting pod in.
    pods.delete("eight", &DeleteParams::default()).await.unwrap();
    let one = pods.get("one").await.unwrap();
    assert_eq!(one.spec.unwrap().node_name.as_deref(), Some("gpu-0"));
}

#[tokio::test]
async fn taints_keep_pods_away_unless_tolerated() {
    let emu = Emulator::start().unwrap();
    emu.add_node(Node::new("gpu-0").gpus(8).taint("dedicated", "chutes", "NoSchedule"));
    let c = client(&emu).await;
    let pods: Api<Pod> = Api::namespaced(c, "default");
    pods.create(&PostParams::default(), &pod("plain", json!({"containers": [gpu_container(1)]})))
        .await
        .unwrap();
    assert_eq!(
        condition_message(&pods.get("plain").await.unwrap()),
        "0/1 nodes are available: 1 node(s) had untolerated taint {dedicated: chutes}."
    );
    let tolerant = json!({"containers": [gpu_container(1)],
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "chutes", "effect": "NoSchedule"}]});
    pods.create(&PostParams::default(), &pod("tolerant", tolerant)).await.unwrap();
    let p = pods.get("tolerant").await.unwrap();
    assert_eq!(p.spec.unwrap().node_name.as_deref(), Some("gpu-0"));
    // A NoExecute taint evicts what does not tolerate it.
    emu.add_node(Node::new("gpu-0").gpus(8).taint("dedicated", "chutes", "NoSchedule").taint(
        "maintenance",
        "",
        "NoExecute",
    ));
    assert!(pods.get_opt("tolerant").await.unwrap().is_none());
}

fn job(name: &str, extra_spec: Value) -> Job {
    let mut spec = json!({"backoffLimit": 0, "template": {"metadata": {"labels": {"app": "chute"}}, "spec": {
        "restartPolicy": "Never", "containers": [gpu_container(1)]}}});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra_spec.as_object()) {
        s.extend(e.clone());
    }
    serde_json::from_value(
        json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec}),
    )
    .unwrap()
}

#[tokio::test]
async fn jobs_default_their_selector_orphan_on_delete_and_keep_their_template() {
    let emu = Emulator::start().unwrap();
    emu.add_node(Node::new("gpu-0").gpus(8));
    let c = client(&emu).await;
    let jobs: Api<Job> = Api::namespaced(c.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(c, "default");
    let created = jobs.create(&PostParams::default(), &job("a", json!({}))).await.unwrap();
    let uid = created.metadata.uid.clone().unwrap();
    let sel = created.spec.clone().unwrap().selector.unwrap().match_labels.unwrap();
    assert_eq!(sel["batch.kubernetes.io/controller-uid"], uid);
    let labels = created.spec.clone().unwrap().template.metadata.unwrap().labels.unwrap();
    assert_eq!((labels["controller-uid"].as_str(), labels["job-name"].as_str()), (uid.as_str(), "a"));
    assert_eq!(labels["app"], "chute");
    // A second Job with the same template labels: each selector matches its own pod only.
    jobs.create(&PostParams::default(), &job("b", json!({}))).await.unwrap();
    let selector = format!("batch.kubernetes.io/controller-uid={uid}");
    assert_eq!(pods.list(&ListParams::default().labels(&selector)).await.unwrap().items.len(), 1);
    assert_eq!(pods.list(&ListParams::default().labels("app=chute")).await.unwrap().items.len(), 2);

    // The pod template is immutable.
    let e = api_err(
        jobs.patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [gpu_container(2)]}}}})),
        )
        .await
        .unwrap_err(),
    );
    assert_eq!(e.code, 422);
    assert!(
        e.message.starts_with("Job.batch \"a\" is invalid: spec.template: Invalid value"),
        "{}",
        e.message
    );
    assert!(e.message.ends_with("field is immutable"), "{}", e.message);

    // batch/v1 deletes orphan by default: the pod stays, without its owner.
    jobs.delete("a", &DeleteParams::default()).await.unwrap();
    let left = pods.list(&ListParams::default().labels(&selector)).await.unwrap().items;
    assert_eq!(left.len(), 1);
    assert!(left[0].metadata.owner_references.clone().unwrap_or_default().is_empty());
    assert_eq!(phase(&left[0]), "Running");

    // A name whose job-name label would pass 63 characters is refused.
    let long = "j".repeat(64);
    let e = api_err(jobs.create(&PostParams::default(), &job(&long, json!({}))).await.unwrap_err());
    assert_eq!(e.code, 422);
    assert_eq!(
        e.message,
        format!(
            "Job.batch \"{long}\" is invalid: spec.template.labels: Invalid value: \"{long}\": must be no more than 63 characters"
        )
    );
    let details = e.details.unwrap();
    assert_eq!(details.causes[0].field, "spec.template.labels");
    assert!(jobs.get_opt(&long).await.unwrap().is_none());
    jobs.create(&PostParams::default(), &job(&"j".repeat(63), json!({}))).await.unwrap();
}

#[tokio::test]
async fn jobs_honour_ttl_after_finished_and_active_deadline() {
    let emu = Emulator::start().unwrap();
    emu.add_node(Node::new("gpu-0").gpus(8));
    let c = client(&emu).await;
    let jobs: Api<Job> = Api::namespaced(c.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(c, "default");
    jobs.create(&PostParams::default(), &job("ttl", json!({"ttlSecondsAfterFinished": 0}))).await.unwrap();
    let p = pods.list(&ListParams::default().labels("job-name=ttl")).await.unwrap().items.remove(0);
    assert!(emu.succeed_pod("default", &p.metadata.name.unwrap()));
    // Finished with a TTL of 0: the Job and (Foreground) its pods are cleaned up.
    assert!(jobs.get_opt("ttl").await.unwrap().is_none());
    assert!(pods.list(&ListParams::default().labels("job-name=ttl")).await.unwrap().items.is_empty());
    // The job-controller's Event says it completed, and outlives the Job.
    let events = emu.list("v1", "Event", Some("default")).unwrap();
    assert!(
        events.iter().any(|e| e["involvedObject"]["kind"] == "Job"
            && e["involvedObject"]["name"] == "ttl"
            && e["reason"] == "Completed"),
        "{events:#?}"
    );

    jobs.create(&PostParams::default(), &job("deadline", json!({"activeDeadlineSeconds": 1}))).await.unwrap();
    let failed = || async {
        let st = jobs.get("deadline").await.unwrap().status.unwrap_or_default();
        st.conditions
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Failed" && c.reason.as_deref() == Some("DeadlineExceeded"))
    };
    eventually("the Job fails with DeadlineExceeded", failed).await;
    let events = emu.list("v1", "Event", Some("default")).unwrap();
    assert!(
        events.iter().any(|e| e["involvedObject"]["name"] == "deadline" && e["reason"] == "DeadlineExceeded"),
        "{events:#?}"
    );
    let active = pods.list(&ListParams::default().labels("job-name=deadline")).await.unwrap().items;
    assert!(active.is_empty(), "the running pod was stopped: {active:?}");
}

#[tokio::test]
async fn a_label_selector_watch_sees_objects_leave_and_come_back() {
    let emu = Emulator::start().unwrap();
    let c = client(&emu).await;
    let cms: Api<ConfigMap> = Api::namespaced(c, "default");
    let labelled = |tier: &str| json!({"metadata": {"labels": {"tier": tier}}});
    let cm: ConfigMap = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "labels": {"tier": "web"}}}),
    )
    .unwrap();
    let rv = cms.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();
    let mut w = cms.watch(&WatchParams::default().labels("tier=web").timeout(10), &rv).await.unwrap().boxed();
    cms.create(&PostParams::default(), &cm).await.unwrap();
    cms.patch("x", &PatchParams::default(), &Patch::Merge(labelled("db"))).await.unwrap();
    cms.patch("x", &PatchParams::default(), &Patch::Merge(json!({"data": {"ignored": "yes"}})))
        .await
        .unwrap();
    cms.patch("x", &PatchParams::default(), &Patch::Merge(labelled("web"))).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        seen.push(match w.next().await.unwrap().unwrap() {
            WatchEvent::Added(_) => "added",
            WatchEvent::Modified(_) => "modified",
            WatchEvent::Deleted(_) => "deleted",
            other => panic!("{other:?}"),
        });
    }
    assert_eq!(seen, ["added", "deleted", "added"]);

    // A kube-runtime reflector keyed on the selector follows the same way.
    use kube::runtime::{WatchStreamExt, reflector, watcher};
    let (reader, writer) = reflector::store::<ConfigMap>();
    let stream =
        watcher(cms.clone(), watcher::Config::default().labels("tier=web")).reflect(writer).applied_objects();
    let task = tokio::spawn(stream.for_each(|_| async {}));
    reader.wait_until_ready().await.unwrap();
    assert_eq!(reader.state().len(), 1);
    cms.patch("x", &PatchParams::default(), &Patch::Merge(labelled("db"))).await.unwrap();
    eventually("the reflector dropped x", || async { reader.state().is_empty() }).await;
    cms.patch("x", &PatchParams::default(), &Patch::Merge(labelled("web"))).await.unwrap();
    eventually("the reflector has x again", || async { reader.state().len() == 1 }).await;
    task.abort();
}

#[tokio::test]
async fn deleted_pods_terminate_keep_their_gpus_and_namespaces_pass_through_terminating() {
    let emu = Emulator::start().unwrap();
    emu.add_node(Node::new("gpu-0").gpus(8));
    emu.hold_pod_terminations(true);
    let c = client(&emu).await;
    let nss: Api<Namespace> = Api::all(c.clone());
    let ns: Namespace = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "chutes"}}),
    )
    .unwrap();
    nss.create(&PostParams::default(), &ns).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(c.clone(), "chutes");
    pods.create(&PostParams::default(), &pod("old", json!({"containers": [gpu_container(8)]})))
        .await
        .unwrap();
    pods.delete("old", &DeleteParams::default()).await.unwrap();
    let old = pods.get("old").await.unwrap();
    assert!(old.metadata.deletion_timestamp.is_some());
    assert_eq!(old.metadata.deletion_grace_period_seconds, Some(30));
    // Its GPUs are still taken while it terminates.
    pods.create(&PostParams::default(), &pod("new", json!({"containers": [gpu_container(8)]})))
        .await
        .unwrap();
    assert_eq!(
        condition_message(&pods.get("new").await.unwrap()),
        "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
    );
    assert!(emu.finish_pod_termination("chutes", "old"));
    assert!(pods.get_opt("old").await.unwrap().is_none());
    assert_eq!(pods.get("new").await.unwrap().spec.unwrap().node_name.as_deref(), Some("gpu-0"));

    // A namespace is Terminating while its pods terminate, and refuses new content.
    nss.delete("chutes", &DeleteParams::default()).await.unwrap();
    let ns = nss.get("chutes").await.unwrap();
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Terminating"));
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "chutes");
    let cm: ConfigMap = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "late"}}),
    )
    .unwrap();
    let e = api_err(cms.create(&PostParams::default(), &cm).await.unwrap_err());
    assert_eq!(e.code, 403);
    assert!(e.message.contains("because it is being terminated"), "{}", e.message);
    emu.hold_pod_terminations(false);
    assert!(nss.get_opt("chutes").await.unwrap().is_none());

    // Finalizers keep an object until they are removed; gracePeriodSeconds=0 is immediate.
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    let kept: ConfigMap = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kept", "finalizers": ["example.com/hold"]}}),
    )
    .unwrap();
    cms.create(&PostParams::default(), &kept).await.unwrap();
    cms.delete("kept", &DeleteParams::default()).await.unwrap();
    assert!(cms.get("kept").await.unwrap().metadata.deletion_timestamp.is_some());
    cms.patch("kept", &PatchParams::default(), &Patch::Merge(json!({"metadata": {"finalizers": null}})))
        .await
        .unwrap();
    assert!(cms.get_opt("kept").await.unwrap().is_none());
    emu.hold_pod_terminations(true);
    let pods: Api<Pod> = Api::namespaced(c, "default");
    pods.create(&PostParams::default(), &pod("now", json!({"containers": [gpu_container(1)]})))
        .await
        .unwrap();
    pods.delete("now", &DeleteParams { grace_period_seconds: Some(0), ..DeleteParams::default() })
        .await
        .unwrap();
    assert!(pods.get_opt("now").await.unwrap().is_none());
}

#[tokio::test]
async fn pods_wait_for_their_service_account_configmaps_and_secrets() {
    let emu = Emulator::start().unwrap();
    emu.add_node(Node::new("cpu-0"));
    let c = client(&emu).await;
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let spec = json!({"containers": [{"name": "c", "image": "x:1"}],
        "volumes": [{"name": "conf", "configMap": {"name": "settings"}}]});
    pods.create(&PostParams::default(), &pod("mounts", spec)).await.unwrap();
    let st = pods.get("mounts").await.unwrap().status.unwrap();
    assert_eq!(st.phase.as_deref(), Some("Pending"));
    let waiting = st.container_statuses.unwrap()[0].state.clone().unwrap().waiting.unwrap();
    assert_eq!(waiting.reason.as_deref(), Some("ContainerCreating"));
    let env = json!({"containers": [{"name": "c", "image": "x:1",
        "env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}}]}]});
    pods.create(&PostParams::default(), &pod("env", env)).await.unwrap();
    let st = pods.get("env").await.unwrap().status.unwrap();
    let waiting = st.container_statuses.unwrap()[0].state.clone().unwrap().waiting.unwrap();
    assert_eq!(waiting.reason.as_deref(), Some("CreateContainerConfigError"));
    assert_eq!(waiting.message.as_deref(), Some("secret \"creds\" not found"));

    // A ServiceAccount that does not exist: admission refuses the pod (and a Job's pod
    // appears once the account does).
    let sa = json!({"serviceAccountName": "runner", "restartPolicy": "Never", "containers": [{"name": "c", "image": "x:1"}]});
    let e = api_err(pods.create(&PostParams::default(), &pod("no-sa", sa.clone())).await.unwrap_err());
    assert_eq!(e.code, 403);
    assert_eq!(
        e.message,
        "pods \"no-sa\" is forbidden: error looking up service account default/runner: serviceaccount \"runner\" not found"
    );
    let jobs: Api<Job> = Api::namespaced(c.clone(), "default");
    let j: Job =
        serde_json::from_value(json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "j"},
        "spec": {"template": {"spec": sa}}}))
        .unwrap();
    jobs.create(&PostParams::default(), &j).await.unwrap();
    assert!(pods.list(&ListParams::default().labels("job-name=j")).await.unwrap().items.is_empty());
    emu.create(json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "runner", "namespace": "default"}}))
        .unwrap();
    assert_eq!(pods.list(&ListParams::default().labels("job-name=j")).await.unwrap().items.len(), 1);

    let cms: Api<ConfigMap> = Api::namespaced(c, "default");
    let cm: ConfigMap = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}}),
    )
    .unwrap();
    let created = cms.create(&PostParams::default(), &cm).await.unwrap();
    assert_eq!(created.metadata.generation, None, "ConfigMaps have no generation");
    assert_eq!(phase(&pods.get("mounts").await.unwrap()), "Running");
}

#[tokio::test]
async fn defaults_are_filled_and_statefulsets_get_their_claims() {
    let emu = Emulator::start().unwrap();
    emu.add_node(Node::new("cpu-0"));
    let c = client(&emu).await;
    let deploys: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let d: Deployment = serde_json::from_value(json!({"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "api"}, "spec": {"selector": {"matchLabels": {"app": "api"}}, "template": {
            "metadata": {"labels": {"app": "api"}}, "spec": {"containers": [{"name": "api", "image": "api"}]}}}}))
    .unwrap();
    let d = deploys.create(&PostParams::default(), &d).await.unwrap().spec.unwrap();
    assert_eq!(d.strategy.unwrap().type_.as_deref(), Some("RollingUpdate"));
    assert_eq!(
        (d.replicas, d.revision_history_limit, d.progress_deadline_seconds),
        (Some(1), Some(10), Some(600))
    );
    let pod_spec = d.template.spec.unwrap();
    assert_eq!(pod_spec.restart_policy.as_deref(), Some("Always"));
    assert_eq!(pod_spec.containers[0].image_pull_policy.as_deref(), Some("Always"), "untagged image");

    let sts: Api<StatefulSet> = Api::namespaced(c.clone(), "default");
    let st: StatefulSet = serde_json::from_value(json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db"}, "spec": {"replicas": 2, "serviceName": "db",
        "selector": {"matchLabels": {"app": "db"}}, "template": {"metadata": {"labels": {"app": "db"}},
            "spec": {"containers": [{"name": "db", "image": "postgres:17", "volumeMounts": [{"name": "data", "mountPath": "/d"}]}]}},
        "volumeClaimTemplates": [{"metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}}))
    .unwrap();
    let st = sts.create(&PostParams::default(), &st).await.unwrap().spec.unwrap();
    assert_eq!(st.update_strategy.unwrap().type_.as_deref(), Some("RollingUpdate"));
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(c.clone(), "default");
    let mut names: Vec<String> = pvcs
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|p| p.metadata.name.unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["data-db-0", "data-db-1"]);
    let pods: Api<Pod> = Api::namespaced(c, "default");
    let p = pods.get("db-1").await.unwrap().spec.unwrap();
    let claim =
        p.volumes.unwrap().into_iter().find(|v| v.name == "data").unwrap().persistent_volume_claim.unwrap();
    assert_eq!(claim.claim_name, "data-db-1");
}

#[tokio::test]
async fn paging_field_selectors_and_validation_errors_as_the_real_server() {
    let emu = Emulator::start().unwrap();
    let c = client(&emu).await;
    let cms: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    for i in 0..5 {
        let cm: ConfigMap = serde_json::from_value(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": format!("cm-{i}")}}),
        )
        .unwrap();
        cms.create(&PostParams::default(), &cm).await.unwrap();
    }
    let first = cms.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(first.items.len(), 2);
    let token = first.metadata.continue_.clone().unwrap();
    assert_eq!(first.metadata.remaining_item_count, Some(3));
    let second = cms.list(&ListParams::default().limit(2).continue_token(&token)).await.unwrap();
    let third = cms
        .list(&ListParams::default().limit(2).continue_token(&second.metadata.continue_.clone().unwrap()))
        .await
        .unwrap();
    let names: Vec<String> = [first.items, second.items, third.items]
        .concat()
        .into_iter()
        .map(|c| c.metadata.name.unwrap())
        .collect();
    assert_eq!(names, ["cm-0", "cm-1", "cm-2", "cm-3", "cm-4"]);
    assert!(third.metadata.continue_.unwrap_or_default().is_empty());

    let e = api_err(cms.list(&ListParams::default().fields("data.x=1")).await.unwrap_err());
    assert_eq!((e.code, e.message.as_str()), (400, "field label not supported: data.x"));

    // fieldValidation=Strict refuses what the schema does not declare.
    let strict = PatchParams::default().validation_strict();
    let e =
        api_err(cms.patch("cm-0", &strict, &Patch::Merge(json!({"spec": {"x": "1"}}))).await.unwrap_err());
    assert_eq!((e.code, e.message.as_str()), (400, "strict decoding error: unknown field \"spec\""));
    let deploys: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let typo = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "d"},
        "spec": {"selector": {"matchLabels": {"a": "b"}}, "template": {"metadata": {"labels": {"a": "b"}},
            "spec": {"containers": [{"name": "c", "imagee": "x:1"}]}}}});
    let e = api_err(
        deploys
            .patch("d", &PatchParams::apply("m").validation_strict(), &Patch::Apply(typo))
            .await
            .unwrap_err(),
    );
    assert_eq!(e.message, "strict decoding error: unknown field \"spec.template.spec.containers[0].imagee\"");
    assert!(deploys.get_opt("d").await.unwrap().is_none());

    let missing = api_err(cms.get("nope").await.unwrap_err());
    assert_eq!(missing.message, "configmaps \"nope\" not found");

    let bad: ConfigMap = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Bad_Name", "labels": {"ok": "bad value!"}}}),
    )
    .unwrap();
    let e = api_err(cms.create(&PostParams::default(), &bad).await.unwrap_err());
    assert_eq!(e.code, 422);
    assert!(e.message.starts_with("ConfigMap \"Bad_Name\" is invalid: metadata.name: Invalid value: \"Bad_Name\": a lowercase RFC 1123 subdomain"), "{}", e.message);
    let details = e.details.unwrap();
    assert_eq!((details.kind.as_str(), details.name.as_str()), ("ConfigMap", "Bad_Name"));
    assert_eq!(details.causes[0].field, "metadata.name");
    let mut good_name = bad.clone();
    good_name.metadata.name = Some("good-name".into());
    let e = api_err(cms.create(&PostParams::default(), &good_name).await.unwrap_err());
    assert_eq!(e.details.unwrap().causes[0].field, "metadata.labels");
    assert!(e.message.contains("Invalid value: \"bad value!\": a valid label must be"), "{}", e.message);
}

fn deployment(containers: Value) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "chute"},
        "spec": {"selector": {"matchLabels": {"app": "chute"}}, "template": {
            "metadata": {"labels": {"app": "chute"}}, "spec": {"containers": containers}}}})
}

#[tokio::test]
async fn apply_merges_containers_env_and_ports_by_key_and_strategic_patches_use_directives() {
    let emu = Emulator::start().unwrap();
    let c = client(&emu).await;
    let deploys: Api<Deployment> = Api::namespaced(c, "default");
    let full = deployment(json!([
        {"name": "chute", "image": "chute:1", "ports": [{"containerPort": 8000}], "env": [{"name": "A", "value": "1"}]},
        {"name": "sidecar", "image": "proxy:1"},
    ]));
    deploys.patch("chute", &PatchParams::apply("minerctl"), &Patch::Apply(full)).await.unwrap();
    // Another manager adds one env var to one container: no conflict, nothing else touched.
    let env_only = deployment(json!([{"name": "chute", "env": [{"name": "B", "value": "2"}]}]));
    let d = deploys.patch("chute", &PatchParams::apply("gepetto"), &Patch::Apply(env_only)).await.unwrap();
    let cs = d.spec.unwrap().template.spec.unwrap().containers;
    assert_eq!(cs.len(), 2, "the sidecar stays");
    assert_eq!(cs[0].image.as_deref(), Some("chute:1"));
    assert_eq!(cs[0].ports.clone().unwrap()[0].container_port, 8000);
    let env: Vec<String> = cs[0].env.clone().unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(env, ["A", "B"]);
    // Changing a field the first manager owns conflicts, naming the item.
    let image = deployment(json!([{"name": "chute", "image": "chute:2"}]));
    let e = api_err(
        deploys.patch("chute", &PatchParams::apply("gepetto"), &Patch::Apply(image)).await.unwrap_err(),
    );
    assert_eq!(e.code, 409);
    assert!(
        e.message.contains(r#"conflict with "minerctl": .spec.template.spec.containers[name="chute"].image"#),
        "{}",
        e.message
    );
    // The first manager dropping the sidecar removes it; gepetto's env var stays.
    let without = deployment(json!([
        {"name": "chute", "image": "chute:1", "ports": [{"containerPort": 8000}], "env": [{"name": "A", "value": "1"}]},
    ]));
    let d = deploys.patch("chute", &PatchParams::apply("minerctl"), &Patch::Apply(without)).await.unwrap();
    let cs = d.spec.unwrap().template.spec.unwrap().containers;
    assert_eq!(cs.len(), 1);
    assert_eq!(cs[0].env.clone().unwrap().len(), 2);

    // Strategic merge patch: keyed merge, `$patch: delete`, `$setElementOrder`.
    let patch = json!({"spec": {"template": {"spec": {
        "$setElementOrder/containers": [{"name": "extra"}, {"name": "chute"}],
        "containers": [{"name": "extra", "image": "extra:1"},
                       {"name": "chute", "env": [{"name": "A", "$patch": "delete"}]}]}}}});
    let d = deploys.patch("chute", &PatchParams::default(), &Patch::Strategic(patch)).await.unwrap();
    let cs = d.spec.unwrap().template.spec.unwrap().containers;
    let names: Vec<&str> = cs.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["extra", "chute"]);
    let env: Vec<String> = cs[1].env.clone().unwrap().into_iter().map(|e| e.name).collect();
    assert_eq!(env, ["B"]);
    let stored = emu.get("apps/v1", "Deployment", Some("default"), "chute").unwrap().unwrap();
    assert!(!stored.to_string().contains("$patch") && !stored.to_string().contains("$setElementOrder"));
}

/// A claim binds only through a StorageClass: with none (microk8s before its
/// hostpath-storage addon) the claim and the pod that mounts it stay Pending, with the
/// scheduler's message; once a default class exists the claim gets it (retroactively,
/// as since Kubernetes 1.28) and the pod is scheduled. A claim that asks for no class
/// ("") or a missing one stays Pending.
#[tokio::test]
async fn claims_bind_through_a_storage_class_and_their_pods_wait_for_them() {
    let emu = Emulator::start().unwrap();
    emu.add_node(Node::new("cpu-0"));
    let c = client(&emu).await;
    let sts: Api<StatefulSet> = Api::namespaced(c.clone(), "default");
    let st: StatefulSet = serde_json::from_value(json!({"apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": {"name": "db"}, "spec": {"serviceName": "db",
        "selector": {"matchLabels": {"app": "db"}}, "template": {"metadata": {"labels": {"app": "db"}},
            "spec": {"containers": [{"name": "db", "image": "postgres:17", "volumeMounts": [{"name": "data", "mountPath": "/d"}]}]}},
        "volumeClaimTemplates": [{"metadata": {"name": "data"},
            "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "5Gi"}}}}]}}))
    .unwrap();
    sts.create(&PostParams::default(), &st).await.unwrap();
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(c.clone(), "default");
    let claim = |name: &str, class: Value| -> PersistentVolumeClaim {
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name}, "spec": {"storageClassName": class, "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": "1Gi"}}}}))
        .unwrap()
    };
    pvcs.create(&PostParams::default(), &claim("none", json!(""))).await.unwrap();
    pvcs.create(&PostParams::default(), &claim("fast", json!("fast-ssd"))).await.unwrap();
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let orphan = pod(
        "orphan",
        json!({"containers": [{"name": "c", "image": "x"}],
        "volumes": [{"name": "v", "persistentVolumeClaim": {"claimName": "nope"}}]}),
    );
    pods.create(&PostParams::default(), &orphan).await.unwrap();

    let status = |p: &PersistentVolumeClaim| p.status.clone().and_then(|s| s.phase).unwrap_or_default();
    let data = pvcs.get("data-db-0").await.unwrap();
    assert_eq!((status(&data), data.spec.unwrap().storage_class_name), ("Pending".into(), None));
    let db = pods.get("db-0").await.unwrap();
    assert_eq!(phase(&db), "Pending");
    assert!(db.spec.clone().unwrap().node_name.is_none());
    assert_eq!(
        condition_message(&db),
        "0/1 nodes are available: pod has unbound immediate PersistentVolumeClaims."
    );
    let orphan = pods.get("orphan").await.unwrap();
    assert_eq!(condition_message(&orphan), "persistentvolumeclaim \"nope\" not found");

    emu.add_storage_class("microk8s-hostpath", true).unwrap();
    eventually("the claim to be bound and its pod scheduled", || async {
        pods.get("db-0").await.unwrap().spec.unwrap().node_name.as_deref() == Some("cpu-0")
    })
    .await;
    let data = pvcs.get("data-db-0").await.unwrap();
    assert_eq!(status(&data), "Bound");
    assert_eq!(data.spec.unwrap().storage_class_name.as_deref(), Some("microk8s-hostpath"));
    assert_eq!(data.status.unwrap().capacity.unwrap()["storage"].0, "5Gi");
    let new = pvcs.create(&PostParams::default(), &claim("later", Value::Null)).await.unwrap();
    assert_eq!(
        new.spec.unwrap().storage_class_name.as_deref(),
        Some("microk8s-hostpath"),
        "admission fills it"
    );
    for (name, class) in [("none", Some("")), ("fast", Some("fast-ssd"))] {
        let p = pvcs.get(name).await.unwrap();
        assert_eq!(
            (status(&p).as_str(), p.spec.unwrap().storage_class_name.as_deref()),
            ("Pending", class),
            "{name}"
        );
    }
    emu.add_storage_class("fast-ssd", false).unwrap();
    eventually("the claim of a class that now exists to be bound", || async {
        status(&pvcs.get("fast").await.unwrap()) == "Bound"
    })
    .await;
}
