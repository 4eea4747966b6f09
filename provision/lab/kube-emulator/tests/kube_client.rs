//! The real `kube` client against the emulator: what a program driving a cluster observes.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers outside #[test] fns

use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node as KNode, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::discovery::Discovery;
use kube_emulator::{Emulator, Fault, Node};
use serde_json::json;

mod common;
use common::{api_err, client, eventually};

fn cm(name: &str, data: serde_json::Value) -> ConfigMap {
    serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}),
    )
    .unwrap()
}

#[tokio::test]
async fn discovery_and_version() {
    let emu = Emulator::start().unwrap();
    let c = client(&emu).await;
    let v = c.apiserver_version().await.unwrap();
    assert_eq!((v.major.as_str(), v.minor.as_str()), ("1", "33"));
    let d = Discovery::new(c.clone()).run().await.unwrap();
    let apps = d.get("apps").expect("apps group");
    let kinds: Vec<String> = apps.recommended_resources().into_iter().map(|(r, _)| r.kind).collect();
    assert!(kinds.contains(&"Deployment".to_string()), "{kinds:?}");
    let core = d.get("").expect("core group");
    let (pod, caps) = core.recommended_resources().into_iter().find(|(r, _)| r.kind == "Pod").unwrap();
    assert_eq!(pod.plural, "pods");
    assert!(caps.subresources.iter().any(|(r, _)| r.plural == "status" || r.plural == "log"));
}

#[tokio::test]
async fn crud_conflicts_and_missing_namespaces() {
    let emu = Emulator::start().unwrap();
    let c = client(&emu).await;
    let api: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    let created = api.create(&PostParams::default(), &cm("a", json!({"k": "1"}))).await.unwrap();
    let rv1 = created.metadata.resource_version.clone().unwrap();
    assert!(created.metadata.uid.is_some() && created.metadata.creation_timestamp.is_some());

    let again = api_err(api.create(&PostParams::default(), &cm("a", json!({}))).await.unwrap_err());
    assert!(again.is_already_exists(), "{again:?}");

    let mut changed = created.clone();
    changed.data = Some([("k".to_string(), "2".to_string())].into());
    let replaced = api.replace("a", &PostParams::default(), &changed).await.unwrap();
    assert_ne!(replaced.metadata.resource_version.unwrap(), rv1);
    // `changed` still carries the old resourceVersion: optimistic concurrency refuses it.
    let stale = api_err(api.replace("a", &PostParams::default(), &changed).await.unwrap_err());
    assert_eq!(stale.code, 409);
    assert!(stale.message.contains("the object has been modified"), "{}", stale.message);

    let merged = api
        .patch("a", &PatchParams::default(), &Patch::Merge(json!({"data": {"k": null, "x": "y"}})))
        .await
        .unwrap();
    assert_eq!(merged.data.unwrap(), [("x".to_string(), "y".to_string())].into());

    api.delete("a", &DeleteParams::default()).await.unwrap();
    assert!(api.get_opt("a").await.unwrap().is_none());
    let missing = api_err(api.get("a").await.unwrap_err());
    assert!(missing.is_not_found());

    let nowhere: Api<ConfigMap> = Api::namespaced(c, "nope");
    let e = api_err(nowhere.create(&PostParams::default(), &cm("a", json!({}))).await.unwrap_err());
    assert_eq!(e.code, 404);
    assert!(e.message.contains("namespaces \"nope\" not found"), "{}", e.message);
}

#[tokio::test]
async fn server_side_apply_owns_fields_detects_conflicts_and_is_idempotent() {
    let emu = Emulator::start().unwrap();
    let c = client(&emu).await;
    let api: Api<ConfigMap> = Api::namespaced(c, "default");
    let ssa = |m: &str| PatchParams::apply(m);
    let first =
        api.patch("s", &ssa("minerctl"), &Patch::Apply(cm("s", json!({"a": "1", "b": "2"})))).await.unwrap();
    let mf = first.metadata.managed_fields.clone().unwrap();
    assert_eq!(mf[0].manager.as_deref(), Some("minerctl"));
    assert_eq!(mf[0].operation.as_deref(), Some("Apply"));

    // The same apply again changes nothing: same resourceVersion.
    let clock = emu.resource_version();
    let again =
        api.patch("s", &ssa("minerctl"), &Patch::Apply(cm("s", json!({"a": "1", "b": "2"})))).await.unwrap();
    assert_eq!(again.metadata.resource_version, first.metadata.resource_version);
    assert_eq!(emu.resource_version(), clock);

    // Dropping a field from the apply removes it.
    let dropped = api.patch("s", &ssa("minerctl"), &Patch::Apply(cm("s", json!({"a": "1"})))).await.unwrap();
    assert_eq!(dropped.data.unwrap().len(), 1);

    // Another manager changing an owned field conflicts, unless forced.
    let conflict = api_err(
        api.patch("s", &ssa("someone"), &Patch::Apply(cm("s", json!({"a": "9"})))).await.unwrap_err(),
    );
    assert_eq!(conflict.code, 409);
    assert!(conflict.message.contains("conflict with \"minerctl\""), "{}", conflict.message);
    assert!(conflict.message.contains(".data.a"), "{}", conflict.message);

    // dryRun=All answers with the result and stores nothing.
    let preview = api
        .patch("s", &ssa("someone").force().dry_run(), &Patch::Apply(cm("s", json!({"a": "9"}))))
        .await
        .unwrap();
    assert_eq!(preview.data.unwrap()["a"], "9");
    assert_eq!(api.get("s").await.unwrap().data.unwrap()["a"], "1");

    let forced =
        api.patch("s", &ssa("someone").force(), &Patch::Apply(cm("s", json!({"a": "9"})))).await.unwrap();
    assert_eq!(forced.data.unwrap()["a"], "9");

    // An apply body without apiVersion/kind is refused as the real server does.
    let raw = api_err(
        api.patch("s", &ssa("x"), &Patch::Apply(json!({"metadata": {"name": "s"}}))).await.unwrap_err(),
    );
    assert!(raw.message.contains("Incorrect version specified in apply patch"), "{}", raw.message);
}

#[tokio::test]
async fn selectors_filter_lists() {
    let emu = Emulator::start().unwrap();
    let c = client(&emu).await;
    let api: Api<ConfigMap> = Api::namespaced(c.clone(), "default");
    for (name, tier) in [("a", "web"), ("b", "db"), ("c", "web")] {
        let mut m = cm(name, json!({}));
        m.metadata.labels = Some([("tier".to_string(), tier.to_string())].into());
        api.create(&PostParams::default(), &m).await.unwrap();
    }
    let names = |l: kube::core::ObjectList<ConfigMap>| -> Vec<String> {
        l.items.into_iter().map(|i| i.metadata.name.unwrap()).collect()
    };
    assert_eq!(names(api.list(&ListParams::default().labels("tier=web")).await.unwrap()), ["a", "c"]);
    assert_eq!(names(api.list(&ListParams::default().labels("tier notin (web)")).await.unwrap()), ["b"]);
    assert_eq!(names(api.list(&ListParams::default().fields("metadata.name=b")).await.unwrap()), ["b"]);
    let all: Api<ConfigMap> = Api::all(c);
    assert_eq!(all.list(&ListParams::default()).await.unwrap().items.len(), 3);
    let gone = api
        .delete_collection(&DeleteParams::default(), &ListParams::default().labels("tier=web"))
        .await
        .unwrap();
    assert!(gone.is_left());
    assert_eq!(names(api.list(&ListParams::default()).await.unwrap()), ["b"]);
}

#[tokio::test]
async fn watch_streams_initial_state_then_changes_and_resumes() {
    let emu = Emulator::start().unwrap();
    let c = client(&emu).await;
    let api: Api<ConfigMap> = Api::namespaced(c, "default");
    api.create(&PostParams::default(), &cm("before", json!({}))).await.unwrap();
    let list = api.list(&ListParams::default()).await.unwrap();
    let list_rv = list.metadata.resource_version.unwrap();

    let mut from_zero = api.watch(&WatchParams::default().timeout(5), "0").await.unwrap().boxed();
    match from_zero.next().await.unwrap().unwrap() {
        WatchEvent::Added(o) => assert_eq!(o.metadata.name.as_deref(), Some("before")),
        other => panic!("{other:?}"),
    }
    let mut from_list = api.watch(&WatchParams::default().timeout(5), &list_rv).await.unwrap().boxed();
    api.create(&PostParams::default(), &cm("after", json!({}))).await.unwrap();
    api.patch("after", &PatchParams::default(), &Patch::Merge(json!({"data": {"x": "1"}}))).await.unwrap();
    api.delete("after", &DeleteParams::default()).await.unwrap();
    let mut seen = Vec::new();
    for _ in 0..3 {
        match from_list.next().await.unwrap().unwrap() {
            WatchEvent::Added(o) => seen.push(format!("added {}", o.metadata.name.unwrap())),
            WatchEvent::Modified(o) => seen.push(format!("modified {}", o.metadata.name.unwrap())),
            WatchEvent::Deleted(o) => seen.push(format!("deleted {}", o.metadata.name.unwrap())),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seen, ["added after", "modified after", "deleted after"]);
    // The zero watch sees the same changes after its initial state.
    match from_zero.next().await.unwrap().unwrap() {
        WatchEvent::Added(o) => assert_eq!(o.metadata.name.as_deref(), Some("after")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn node_ports_are_allocated_and_collisions_refused() {
    let emu = Emulator::start().unwrap();
    let c = client(&emu).await;
    let api: Api<Service> = Api::namespaced(c, "default");
    let svc = |name: &str, node_port: Option<u16>| -> Service {
        let mut port = json!({"port": 5000});
        if let Some(np) = node_port {
            port["nodePort"] = json!(np);
        }
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"type": "NodePort", "ports": [port], "selector": {"a": "b"}}}))
        .unwrap()
    };
    let fixed = api.create(&PostParams::default(), &svc("fixed", Some(30500))).await.unwrap();
    let spec = fixed.spec.unwrap();
    assert!(spec.cluster_ip.is_some());
    assert_eq!(spec.ports.unwrap()[0].protocol.as_deref(), Some("TCP"));
    let auto = api.create(&PostParams::default(), &svc("auto", None)).await.unwrap();
    let np = auto.spec.unwrap().ports.unwrap()[0].node_port.unwrap();
    assert!((30000..=32767).contains(&np) && np != 30500);
    let clash = api_err(api.create(&PostParams::default(), &svc("clash", Some(30500))).await.unwrap_err());
    assert!(clash.is_invalid(), "{clash:?}");
    assert!(clash.message.contains("provided port is already allocated"), "{}", clash.message);
    // Re-applying without a nodePort keeps the allocated one.
    let pp = PatchParams::apply("m");
    let a1 = api.patch("auto", &pp, &Patch::Apply(svc("auto", None))).await.unwrap();
    let a2 = api.patch("auto", &pp, &Patch::Apply(svc("auto", None))).await.unwrap();
    assert_eq!(a1.spec.unwrap().ports.unwrap()[0].node_port, Some(np));
    assert_eq!(a2.metadata.resource_version, a1.metadata.resource_version);
}

fn job(name: &str, node: &str, backoff: i32) -> Job {
    serde_json::from_value(json!({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {"backoffLimit": backoff, "template": {"metadata": {"labels": {"app": "graval"}}, "spec": {
            "nodeName": node, "restartPolicy": "Never",
            "containers": [{"name": "c", "image": "parachutes/graval-bootstrap:1", "resources": {"requests": {"nvidia.com/gpu": "2"}}}],
        }}},
    }))
    .unwrap()
}

#[tokio::test]
async fn a_job_gets_a_pod_that_runs_on_its_node_and_can_be_failed() {
    let emu = Emulator::start().unwrap();
    emu.add_node(Node::new("gpu-0").gpus(8).address("10.0.0.5"));
    let c = client(&emu).await;
    let nodes: Api<KNode> = Api::all(c.clone());
    let n = nodes.get("gpu-0").await.unwrap();
    assert_eq!(n.status.unwrap().capacity.unwrap()["nvidia.com/gpu"].0, "8");
    assert_eq!(n.metadata.labels.unwrap()["nvidia.com/gpu.present"], "true");

    let jobs: Api<Job> = Api::namespaced(c.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    jobs.create(&PostParams::default(), &job("graval-a", "gpu-0", 1)).await.unwrap();
    let lp = ListParams::default().labels("job-name=graval-a");
    let pod = pods.list(&lp).await.unwrap().items.remove(0);
    let status = pod.status.unwrap();
    assert_eq!(pod.spec.unwrap().node_name.as_deref(), Some("gpu-0"));
    assert_eq!(status.phase.as_deref(), Some("Running"));
    assert_eq!(status.host_ip.as_deref(), Some("10.0.0.5"));
    assert!(status.conditions.unwrap().iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let js = jobs.get("graval-a").await.unwrap().status.unwrap();
    assert_eq!((js.active, js.ready), (Some(1), Some(1)));

    // A failure is retried until the backoff limit, then the Job fails.
    let first = pod.metadata.name.unwrap();
    assert!(emu.fail_pod("default", &first, "Error", "no GPUs found"));
    let all = pods.list(&lp).await.unwrap().items;
    assert_eq!(all.len(), 2, "a replacement pod after the first failure");
    let second = all.into_iter().map(|p| p.metadata.name.unwrap()).find(|n| *n != first).unwrap();
    assert!(emu.fail_pod("default", &second, "Error", "no GPUs found"));
    let js = jobs.get("graval-a").await.unwrap().status.unwrap();
    assert_eq!(js.failed, Some(2));
    let cond = &js.conditions.unwrap()[0];
    assert_eq!((cond.type_.as_str(), cond.reason.as_deref()), ("Failed", Some("BackoffLimitExceeded")));

    // A pod bound to a node that does not exist stays Pending.
    jobs.create(&PostParams::default(), &job("graval-b", "gpu-9", 0)).await.unwrap();
    let p = pods.list(&ListParams::default().labels("job-name=graval-b")).await.unwrap().items.remove(0);
    assert_eq!(p.status.unwrap().phase.as_deref(), Some("Pending"));

    // Deleting the Job with background propagation takes its pods with it.
    jobs.delete("graval-a", &DeleteParams::background()).await.unwrap();
    assert!(pods.list(&lp).await.unwrap().items.is_empty());
}

fn deployment(image: &str, selector: serde_json::Value) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "api"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "api"}}, "template": {
            "metadata": {"labels": {"app": "api"}},
            "spec": {"nodeSelector": selector, "containers": [{"name": "api", "image": image}]}}},
    }))
    .unwrap()
}

#[tokio::test]
async fn deployments_schedule_by_labels_roll_out_and_report_why_not() {
    let emu = Emulator::start().unwrap();
    emu.add_node(Node::new("gpu-0").gpus(8));
    let c = client(&emu).await;
    let deploys: Api<Deployment> = Api::namespaced(c.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    let pp = PatchParams::apply("test");
    deploys.patch("api", &pp, &Patch::Apply(deployment("miner:1", json!({"role": "cpu"})))).await.unwrap();
    let p = pods.list(&ListParams::default().labels("app=api")).await.unwrap().items.remove(0);
    let cond = p.status.unwrap().conditions.unwrap().remove(0);
    assert_eq!(cond.reason.as_deref(), Some("Unschedulable"));
    assert_eq!(
        cond.message.as_deref(),
        Some("0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.")
    );
    let st = deploys.get("api").await.unwrap().status.unwrap();
    assert_eq!(st.ready_replicas, Some(0));

    emu.add_node(Node::new("cpu-0").label("role", "cpu"));
    let ready = || async { deploys.get("api").await.unwrap().status.unwrap().ready_replicas == Some(2) };
    eventually("both replicas ready on cpu-0", ready).await;
    for p in pods.list(&ListParams::default().labels("app=api")).await.unwrap().items {
        assert_eq!(p.spec.unwrap().node_name.as_deref(), Some("cpu-0"));
    }

    // A new template replaces the pods; a crash-looping image is never ready.
    emu.add_fault(Fault::crash_loop("miner:2"));
    let d = deploys
        .patch("api", &pp, &Patch::Apply(deployment("miner:2", json!({"role": "cpu"}))))
        .await
        .unwrap();
    assert_eq!(d.metadata.generation, Some(2));
    let st = deploys.get("api").await.unwrap().status.unwrap();
    assert_eq!((st.observed_generation, st.updated_replicas, st.ready_replicas), (Some(2), Some(2), Some(0)));
    let p = pods.list(&ListParams::default().labels("app=api")).await.unwrap().items.remove(0);
    let waiting = p.status.unwrap().container_statuses.unwrap()[0].state.clone().unwrap().waiting.unwrap();
    assert_eq!(waiting.reason.as_deref(), Some("CrashLoopBackOff"));
    emu.clear_faults();
    eventually("ready after the fault clears", ready).await;
}

#[tokio::test]
async fn pods_wait_for_the_start_delay_and_nodes_going_away_take_their_pods() {
    let emu = Emulator::start().unwrap();
    // Long enough that no stall between the create and the list can outlast it.
    emu.set_pod_start_delay(Duration::from_secs(3600));
    emu.add_node(Node::new("gpu-0").gpus(8));
    let c = client(&emu).await;
    let jobs: Api<Job> = Api::namespaced(c.clone(), "default");
    let pods: Api<Pod> = Api::namespaced(c.clone(), "default");
    jobs.create(&PostParams::default(), &job("j", "gpu-0", 0)).await.unwrap();
    let phase = || async {
        pods.list(&ListParams::default()).await.unwrap().items.first().and_then(|p| p.status.clone()?.phase)
    };
    assert_eq!(phase().await.as_deref(), Some("Pending"));
    // A shorter delay counts from when the kubelet first saw the pod: it wakes by itself.
    emu.set_pod_start_delay(Duration::from_millis(300));
    eventually("running after the delay", || async { phase().await.as_deref() == Some("Running") }).await;
    let first = pods.list(&ListParams::default()).await.unwrap().items.remove(0).metadata.name;
    assert!(emu.remove_node("gpu-0"));
    // The pod went with its node; the Job, not finished, made a new one that cannot run.
    let now = pods.list(&ListParams::default()).await.unwrap().items;
    assert_eq!(now.len(), 1);
    assert_ne!(now[0].metadata.name, first);
    assert_eq!(now[0].status.clone().unwrap().phase.as_deref(), Some("Pending"));
}

#[tokio::test]
async fn namespaces_are_labelled_and_deleting_one_empties_it() {
    let emu = Emulator::start().unwrap();
    let c = client(&emu).await;
    let nss: Api<Namespace> = Api::all(c.clone());
    let ns: Namespace = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "chutes"}}),
    )
    .unwrap();
    let created = nss.create(&PostParams::default(), &ns).await.unwrap();
    assert_eq!(created.metadata.labels.unwrap()["kubernetes.io/metadata.name"], "chutes");
    let cms: Api<ConfigMap> = Api::namespaced(c, "chutes");
    cms.create(&PostParams::default(), &cm("x", json!({}))).await.unwrap();
    nss.delete("chutes", &DeleteParams::default()).await.unwrap();
    assert!(emu.list("v1", "ConfigMap", Some("chutes")).unwrap().is_empty());
}

#[tokio::test]
async fn a_watch_from_a_compacted_resource_version_gets_410_expired() {
    let emu = Emulator::start().unwrap();
    let c = client(&emu).await;
    let api: Api<ConfigMap> = Api::namespaced(c, "default");
    let old = api.list(&ListParams::default()).await.unwrap().metadata.resource_version.unwrap();
    emu.set_watch_history(1);
    for n in ["a", "b", "c"] {
        api.create(&PostParams::default(), &cm(n, json!({}))).await.unwrap();
    }
    let mut w = api.watch(&WatchParams::default().timeout(5), &old).await.unwrap().boxed();
    match w.next().await.unwrap().unwrap() {
        WatchEvent::Error(e) => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn kube_runtime_reflector_follows_changes_across_dropped_watches() {
    use kube::runtime::{WatchStreamExt, reflector, watcher};
    let emu = Emulator::start().unwrap();
    let c = client(&emu).await;
    let api: Api<ConfigMap> = Api::namespaced(c, "default");
    let (reader, writer) = reflector::store::<ConfigMap>();
    let stream =
        watcher(api.clone(), watcher::Config::default()).default_backoff().reflect(writer).applied_objects();
    let task = tokio::spawn(stream.for_each(|_| async {}));
    reader.wait_until_ready().await.unwrap();
    let names = || {
        let mut n: Vec<String> = reader.state().iter().map(|o| o.metadata.name.clone().unwrap()).collect();
        n.sort();
        n
    };
    api.create(&PostParams::default(), &cm("a", json!({}))).await.unwrap();
    api.create(&PostParams::default(), &cm("b", json!({}))).await.unwrap();
    eventually("a and b in the store", || async { names() == ["a", "b"] }).await;

    // The server drops every watch and forgets history while things change: the watcher
    // must reconnect, get 410 or the missed events, and converge either way.
    emu.set_watch_history(1);
    emu.close_watches();
    api.delete("a", &DeleteParams::default()).await.unwrap();
    api.create(&PostParams::default(), &cm("c", json!({}))).await.unwrap();
    api.create(&PostParams::default(), &cm("d", json!({}))).await.unwrap();
    eventually("the store matches the cluster", || async { names() == ["b", "c", "d"] }).await;
    task.abort();
}
