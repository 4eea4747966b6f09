#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Gepetto against real Postgres and both emulators: what each event leaves behind
//! (delivered twice), GPUs under contention, reconcile drift both ways, a restart
//! mid-deploy, and a rolling update.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use miner_events::Event;
use miner_events::payloads::*;
use miner_gepetto::{CancellationToken, Multiplier};
use serde_json::json;

fn held(rows: &miner_db::FleetRows, deployment_id: &str) -> Vec<String> {
    rows.gpus
        .iter()
        .filter(|g| g.deployment_id.as_deref() == Some(deployment_id))
        .map(|g| g.gpu_id.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_event_leaves_exactly_its_objects_and_rows_even_when_delivered_twice() {
    let w = world(Shape::default()).await;
    w.chute("c1", "v1", 2);
    w.twice(&w.created("c1", "v1", false)).await;

    let rows = w.db.fleet_rows().await.unwrap();
    assert_eq!(rows.chutes.len(), 1);
    assert_eq!(rows.deployments.len(), 1, "the second delivery deploys nothing more");
    let d = rows.deployments[0].clone();
    assert!(!d.stub && !d.active);
    assert_eq!(d.host.as_deref(), Some("192.0.2.1"));
    let config = d.config_id.clone().expect("launch config stored");
    let gpus = held(&rows, &d.deployment_id);
    assert_eq!(gpus.len(), 2);
    let job = w.job(&d.deployment_id).expect("the chute Job");
    assert_eq!(pinned(&job), gpus, "NVIDIA_VISIBLE_DEVICES pins exactly the allocated GPUs");
    let labels = &job["metadata"]["labels"];
    assert_eq!(labels["chutes/config-id"], json!(config));
    assert_eq!(labels["chutes/chute-id"], "c1");
    assert!(labels.get("chutes/job").is_none());
    assert_eq!(job["spec"]["template"]["spec"]["nodeName"], "gpu-0");
    let svc = w
        .kube
        .get("v1", "Service", Some(NS), &format!("chute-service-{}", d.deployment_id))
        .unwrap()
        .unwrap();
    let ports = svc["spec"]["ports"].as_array().unwrap();
    assert_eq!(ports.len(), 2, "no job ports for a non-job deployment");
    assert_eq!(ports[0]["nodePort"].as_i64(), d.port.map(i64::from));
    let cm_name = miner_k8s::code_configmap_name("c1", "v1");
    let cm = w.kube.get("v1", "ConfigMap", Some(NS), &cm_name).unwrap().expect("code ConfigMap");
    assert_eq!(cm["data"]["llm.py"], "print('hi')\n");
    assert_eq!((w.jobs().len(), w.services().len()), (1, 1));

    w.twice(&w.instance("created", "inst-1", Some(&config))).await;
    w.twice(&w.instance("verified", "inst-1", None)).await;
    w.twice(&w.instance("activated", "inst-1", Some(&config))).await;
    let now = w.db.deployment(&d.deployment_id).await.unwrap().unwrap().deployment;
    assert_eq!(now.instance_id.as_deref(), Some("inst-1"));
    assert!(now.verified_at.is_some() && now.active && now.activated_at.is_some());

    // A bounty for a chute already served changes nothing (19.4 no longer raises).
    let bounty = Event::BountyChange(BountyChange {
        chute_id: "c1".into(),
        bounty: Some(5.0),
        validator: w.vhot.clone(),
    });
    w.twice(&bounty).await;
    assert_eq!(w.db.fleet_rows().await.unwrap().deployments.len(), 1);

    let undeploy = Event::Undeploy(Undeploy {
        deployment_id: d.deployment_id.clone(),
        instance_id: Some("inst-1".into()),
        chute_id: "c1".into(),
        server_id: d.server_id.clone(),
        validator: w.vhot.clone(),
        job_id: None,
    });
    w.twice(&undeploy).await;
    let rows = w.db.fleet_rows().await.unwrap();
    assert!(rows.deployments.is_empty());
    assert!(rows.gpus.iter().all(|g| g.deployment_id.is_none()), "GPUs freed");
    assert!(w.job(&d.deployment_id).is_none() && w.services().is_empty());
    let deletes = w
        .validator
        .requests()
        .into_iter()
        .filter(|r| r.method == "DELETE" && r.path == "/instances/c1/inst-1")
        .count();
    assert_eq!(deletes, 1, "the validator instance is deleted once");

    let deleted = Event::ChuteDeleted(ChuteDeleted {
        chute_id: "c1".into(),
        version: Some("v1".into()),
        validator: w.vhot.clone(),
    });
    w.twice(&deleted).await;
    assert!(w.db.chute("c1").await.unwrap().is_none());
    assert!(w.kube.get("v1", "ConfigMap", Some(NS), &cm_name).unwrap().is_none());
}

/// `job_created` for a one-GPU job of `chute`.
fn job_created(validator: &str, chute: &str, job_id: &str, exclude: Vec<String>, disk_gb: u32) -> Event {
    Event::JobCreated(JobCreated {
        job_id: job_id.into(),
        method: Some("run".into()),
        chute_id: chute.into(),
        image_id: None,
        gpu_count: Some(1),
        compute_multiplier: Some(1.0),
        exclude,
        disk_gb: Some(disk_gb),
        validator: validator.to_owned(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_carry_their_labels_and_ports_honour_exclude_and_leave_on_job_deleted() {
    let w = world(Shape::default()).await;
    w.chute("j1", "v1", 1);
    w.twice(&w.created("j1", "v1", true)).await;
    assert!(
        w.db.fleet_rows().await.unwrap().deployments.is_empty(),
        "job-only chutes are not deployed on create"
    );
    w.validator.add_job("job-1");
    w.validator.add_job("job-2");
    let job = |id: &str, exclude: Vec<String>| job_created(&w.vhot, "j1", id, exclude, 30);
    w.twice(&job("job-2", vec![w.miner.clone()])).await;
    w.twice(&job("job-1", vec!["5SomeoneElse".into()])).await;
    let rows = w.db.fleet_rows().await.unwrap();
    assert_eq!(rows.deployments.len(), 1);
    let d = &rows.deployments[0];
    assert_eq!(d.job_id.as_deref(), Some("job-1"));
    let launches: Vec<_> = w
        .validator
        .requests()
        .into_iter()
        .filter(|r| r.path == "/instances/launch_config")
        .map(|r| r.query)
        .collect();
    assert!(launches.iter().all(|q| !q.contains("job-2")), "an excluded job is never claimed: {launches:?}");
    let k8s_job = w.job(&d.deployment_id).unwrap();
    assert_eq!(k8s_job["metadata"]["labels"]["chutes/job-id"], "job-1");
    assert_eq!(k8s_job["metadata"]["labels"]["chutes/job"], "true");
    let c = &k8s_job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["resources"]["limits"]["ephemeral-storage"], "30Gi");
    assert!(c["env"].as_array().unwrap().iter().any(|e| e["name"] == "CHUTES_PORT_TCP_9000"));
    let svc = w
        .kube
        .get("v1", "Service", Some(NS), &format!("chute-service-{}", d.deployment_id))
        .unwrap()
        .unwrap();
    assert!(svc["spec"]["ports"].as_array().unwrap().iter().any(|p| p["name"] == "chute-9000"));

    let gone = Event::JobDeleted(JobDeleted {
        job_id: "job-1".into(),
        instance_id: None,
        validator: w.vhot.clone(),
    });
    w.twice(&gone).await;
    assert!(w.db.fleet_rows().await.unwrap().deployments.is_empty());
    assert!(w.jobs().is_empty() && w.services().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_job_frees_its_gpus_and_a_failed_one_goes_back_to_the_validator() {
    let w = world(Shape::default()).await;
    w.chute("j1", "v1", 1);
    w.twice(&w.created("j1", "v1", true)).await;
    for id in ["done", "broken"] {
        w.validator.add_job(id);
        w.twice(&job_created(&w.vhot, "j1", id, vec![], 10)).await;
    }
    w.gepetto.wait_idle().await;
    let rows = w.db.fleet_rows().await.unwrap();
    assert_eq!(rows.deployments.len(), 2, "both jobs run");
    let dep = |job: &str| rows.deployments.iter().find(|d| d.job_id.as_deref() == Some(job)).unwrap().clone();
    let (done, broken) = (dep("done"), dep("broken"));
    assert_eq!(w.validator.job_holder("done").as_deref(), Some(w.miner.as_str()));
    let pod_of = |deployment: &str| {
        let pods = w.kube.list("v1", "Pod", Some(NS)).unwrap();
        pods.iter()
            .find(|p| p["metadata"]["labels"]["chutes/deployment-id"] == json!(deployment))
            .and_then(|p| p["metadata"]["name"].as_str().map(str::to_owned))
            .expect("the job's pod")
    };
    assert!(w.kube.succeed_pod(NS, &pod_of(&done.deployment_id)));
    assert!(w.kube.fail_pod(NS, &pod_of(&broken.deployment_id), "Error", "CUDA error"));
    w.validator.set_listing(validator_emulator::Listing::Chutes, vec![remote_chute("j1", "v1", 1)]);
    let cluster = w.gepetto.cluster().clone();
    let ids = [done.deployment_id.clone(), broken.deployment_id.clone()];
    eventually("the watches to see both jobs end", || {
        let cluster = cluster.clone();
        let ids = ids.clone();
        async move {
            let jobs = cluster.chute_jobs();
            ids.iter().all(|d| {
                jobs.get(d).is_some_and(|j| {
                    miner_gepetto::cluster::job_finished(j, &cluster.deployment_pods(d)).is_some()
                })
            })
        }
    })
    .await;

    let report = w.gepetto.reconcile_once().await.unwrap();
    w.gepetto.wait_idle().await;
    let undone: BTreeSet<String> = report.undeployed.iter().map(|(d, _)| d.clone()).collect();
    assert_eq!(undone, ids.iter().cloned().collect(), "{report:?}");
    let rows = w.db.fleet_rows().await.unwrap();
    assert!(rows.deployments.is_empty());
    assert!(rows.gpus.iter().all(|g| g.deployment_id.is_none()), "both jobs' GPUs are free");
    assert!(w.jobs().is_empty() && w.services().is_empty());
    // The failed job is given back for someone to run; the finished one is not.
    assert_eq!(w.validator.released_jobs(), vec!["broken".to_owned()]);
    assert_eq!(w.validator.job_holder("broken"), None);
    assert_eq!(w.validator.job_holder("done").as_deref(), Some(w.miner.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_events_racing_for_eight_gpus_never_double_book_and_release_what_failed() {
    let w = world(Shape { servers: 2, gpus: 4, ..Shape::default() }).await;
    // A second replica on the same database: its placement lock is not shared, so
    // only the database's allocation constraint stands between them.
    let other = gepetto_on(&w.db, &w.client, &w.validator, &w.vhot, &Shape::default(), &w.shutdown).await;
    for i in 0..20 {
        w.chute(&format!("k{i}"), "v1", 1);
        w.gepetto.handle(&w.created(&format!("k{i}"), "v1", true)).await.unwrap();
        w.validator.add_job(&format!("job-{i}"));
    }
    for i in 0..15 {
        w.chute(&format!("n{i}"), "v1", 1);
    }
    // Six launch tokens for eight GPUs: two allocations meet a 423 and are undone.
    w.validator.set_launch_capacity(Some(6));
    let mut events = Vec::new();
    for i in 0..20 {
        events.push(Event::JobCreated(JobCreated {
            job_id: format!("job-{i}"),
            method: None,
            chute_id: format!("k{i}"),
            image_id: None,
            gpu_count: Some(1),
            compute_multiplier: None,
            exclude: vec![],
            disk_gb: None,
            validator: w.vhot.clone(),
        }));
    }
    for i in 0..15 {
        events.push(Event::BountyChange(BountyChange {
            chute_id: format!("k{i}"),
            bounty: None,
            validator: w.vhot.clone(),
        }));
        events.push(w.created(&format!("n{i}"), "v1", false));
    }
    assert_eq!(events.len(), 50);
    let handled = futures_util::future::join_all(
        events
            .iter()
            .enumerate()
            .map(|(i, e)| if i % 2 == 0 { w.gepetto.handle(e) } else { other.handle(e) }),
    )
    .await;
    assert!(handled.iter().all(Result::is_ok), "{handled:?}");
    w.gepetto.wait_idle().await;
    other.wait_idle().await;

    let rows = w.db.fleet_rows().await.unwrap();
    assert_eq!(rows.deployments.len(), 6, "one deployment per launch token");
    let mut seen = HashSet::new();
    for d in &rows.deployments {
        let gpus = held(&rows, &d.deployment_id);
        assert_eq!(gpus.len(), 1);
        let job = w.job(&d.deployment_id).expect("every deployment has its Job");
        assert_eq!(pinned(&job), gpus);
        for g in gpus {
            assert!(seen.insert(g.clone()), "GPU {g} pinned twice");
        }
    }
    assert_eq!(w.jobs().len(), 6, "no Job without a deployment");
    assert_eq!(rows.gpus.iter().filter(|g| g.deployment_id.is_none()).count(), 2);
    // Every job this miner claimed (a 200 launch config) runs or was given back.
    let claimed: BTreeSet<String> = w
        .validator
        .requests()
        .into_iter()
        .filter(|r| r.path == "/instances/launch_config" && r.status == 200)
        .filter_map(|r| r.query.split('&').find_map(|kv| kv.strip_prefix("job_id=").map(str::to_owned)))
        .collect();
    let running: BTreeSet<String> = rows.deployments.iter().filter_map(|d| d.job_id.clone()).collect();
    let released: BTreeSet<String> = w.validator.released_jobs().into_iter().collect();
    for job in &claimed {
        assert!(
            running.contains(job) || released.contains(job),
            "claimed job {job} neither runs nor was released"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_repairs_drift_in_both_directions() {
    let w = world(Shape::default()).await;
    for c in ["gone-job", "lost-instance", "new-version", "failed-pod", "healthy"] {
        w.chute(c, "v1", 1);
        w.twice(&w.created(c, "v1", false)).await;
    }
    let rows = w.db.fleet_rows().await.unwrap();
    let dep = |chute: &str| rows.deployments.iter().find(|d| d.chute_id == chute).unwrap().clone();
    let (gone_job, lost, moved, failed, healthy) =
        (dep("gone-job"), dep("lost-instance"), dep("new-version"), dep("failed-pod"), dep("healthy"));

    // A row with no Job.
    let jobs: kube::Api<k8s_openapi::api::batch::v1::Job> = kube::Api::namespaced(w.client.clone(), NS);
    jobs.delete(&format!("chute-{}", gone_job.deployment_id), &Default::default()).await.unwrap();
    // An instance the validator no longer lists.
    let cfg = lost.config_id.clone().unwrap();
    w.gepetto.handle(&w.instance("created", "vanished", Some(&cfg))).await.unwrap();
    // A chute whose version moved on.
    w.chute("new-version", "v2", 1);
    // A Job whose pod failed.
    let pods = w.kube.list("v1", "Pod", Some(NS)).unwrap();
    let pod = pods
        .iter()
        .find(|p| p["metadata"]["labels"]["chutes/deployment-id"] == json!(failed.deployment_id))
        .expect("the pod of the failing deployment");
    assert!(w.kube.fail_pod(NS, pod["metadata"]["name"].as_str().unwrap(), "Error", "CUDA error"));
    // A Job and Service with no row.
    let orphan = "0rphan00-0000-4000-8000-000000000000";
    let svc = miner_k8s::chute::service(orphan, "ghost", "v1", &[]).unwrap();
    let services: kube::Api<k8s_openapi::api::core::v1::Service> =
        kube::Api::namespaced(w.client.clone(), NS);
    services.create(&Default::default(), &svc).await.unwrap();
    w.kube
        .create(json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": format!("chute-{orphan}"),
            "namespace": NS, "labels": {"chutes/chute": "true", "chutes/deployment-id": orphan}},
            "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "x", "image": "x"}]}}}}))
        .unwrap();
    // The validator's view: every chute (new-version at v2), no instances.
    let listed: Vec<_> = ["gone-job", "lost-instance", "failed-pod", "healthy"]
        .iter()
        .map(|c| remote_chute(c, "v1", 1))
        .chain([remote_chute("new-version", "v2", 1)])
        .collect();
    w.validator.set_listing(validator_emulator::Listing::Chutes, listed);
    w.validator.set_listing(validator_emulator::Listing::Instances, vec![]);
    // Let the watches see the drift before reconciling.
    let cluster = w.gepetto.cluster().clone();
    let (gj, fd) = (gone_job.deployment_id.clone(), failed.deployment_id.clone());
    eventually("the watches to see the drift", || {
        let cluster = cluster.clone();
        let (gj, fd) = (gj.clone(), fd.clone());
        async move {
            let jobs = cluster.chute_jobs();
            !jobs.contains_key(&gj)
                && jobs.contains_key(orphan)
                && miner_gepetto::cluster::job_finished(&jobs[&fd], &cluster.deployment_pods(&fd)).is_some()
        }
    })
    .await;

    let report = w.gepetto.reconcile_once().await.unwrap();
    w.gepetto.wait_idle().await;
    let undone: BTreeSet<String> = report.undeployed.iter().map(|(d, _)| d.clone()).collect();
    let expected: BTreeSet<String> =
        [&gone_job, &lost, &moved, &failed].iter().map(|d| d.deployment_id.clone()).collect();
    assert_eq!(undone, expected, "{report:?}");
    assert_eq!(report.orphans_deleted, vec![orphan.to_owned()]);
    assert_eq!(report.chutes_updated, 1);
    assert_eq!(w.db.chute("new-version").await.unwrap().unwrap().version, "v2");
    let rows = w.db.fleet_rows().await.unwrap();
    assert_eq!(
        rows.deployments.iter().map(|d| d.deployment_id.as_str()).collect::<Vec<_>>(),
        [healthy.deployment_id.as_str()]
    );
    assert_eq!(
        rows.gpus.iter().filter(|g| g.deployment_id.is_some()).count(),
        1,
        "the repaired ones' GPUs are free"
    );
    let remaining: BTreeSet<String> =
        w.jobs().iter().map(|j| j["metadata"]["name"].as_str().unwrap().to_owned()).collect();
    assert_eq!(remaining, BTreeSet::from([format!("chute-{}", healthy.deployment_id)]));
    assert_eq!(w.services().len(), 1);
}

/// Gepetto's process dies right after acknowledging a deploy (its runtime is torn
/// down mid-task); a new process reconciles: the half-made deployment is removed,
/// the chute is placed again, nothing is left behind.
#[test]
fn killed_mid_deploy_and_restarted_loses_nothing_and_leaks_nothing() {
    let first = tokio::runtime::Runtime::new().unwrap();
    let (w, dead, held) = first.block_on(async {
        let w = world(Shape { stub_grace: Duration::ZERO, ..Shape::default() }).await;
        w.chute("c1", "v1", 2);
        w.validator.set_listing(validator_emulator::Listing::Chutes, vec![remote_chute("c1", "v1", 2)]);
        // The validator grants the launch config but its answer is slow: the deploy task
        // is still waiting for it when the process dies.
        let held = w.validator.hold_next("/instances/launch_config");
        w.gepetto.handle(&w.created("c1", "v1", false)).await.unwrap();
        let rows = w.db.fleet_rows().await.unwrap();
        assert_eq!(rows.deployments.len(), 1, "the decision is durable before the ack");
        held.made().await;
        (w, rows.deployments[0].deployment_id.clone(), held)
    });
    first.shutdown_background();

    let second = tokio::runtime::Runtime::new().unwrap();
    second.block_on(async {
        let shutdown = CancellationToken::new();
        let shape = Shape { stub_grace: Duration::ZERO, ..Shape::default() };
        // A new process: new connections (the old ones died with their runtime).
        let db = miner_db::Db::connect(&w.db_url).await.unwrap();
        let client = kube_client(&w.kube).await;
        let g = gepetto_on(&db, &client, &w.validator, &w.vhot, &shape, &shutdown).await;
        let report = g.reconcile_once().await.unwrap();
        g.wait_idle().await;
        assert!(report.undeployed.iter().any(|(d, _)| *d == dead), "{report:?}");
        assert_eq!(report.redeployed, vec!["c1".to_owned()]);
        let rows = db.fleet_rows().await.unwrap();
        assert_eq!(rows.deployments.len(), 1);
        let d = &rows.deployments[0];
        assert_ne!(d.deployment_id, dead);
        assert!(!d.stub);
        assert_eq!(rows.gpus.iter().filter(|g| g.deployment_id.is_some()).count(), 2, "no GPU leaked");
        assert!(w.job(&dead).is_none());
        assert!(w.job(&d.deployment_id).is_some());
        assert_eq!((w.jobs().len(), w.services().len()), (1, 1));
        shutdown.cancel();
    });
    held.release();
    drop(w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_moves_the_chute_to_its_new_version_on_the_same_server() {
    let w =
        world(Shape { servers: 3, gpus: 2, strategy: Arc::new(Multiplier::default()), ..Shape::default() })
            .await;
    w.chute("c1", "v1", 2);
    w.twice(&w.created("c1", "v1", false)).await;
    let before = w.db.fleet_rows().await.unwrap().deployments[0].clone();
    let cfg = before.config_id.clone().unwrap();
    w.gepetto.handle(&w.instance("created", "inst-old", Some(&cfg))).await.unwrap();
    w.chute("c1", "v2", 2);
    w.twice(&rolling_update(&w, "c1", "inst-old", "v2")).await;
    let rows = w.db.fleet_rows().await.unwrap();
    assert_eq!(rows.deployments.len(), 1);
    let after = &rows.deployments[0];
    assert_eq!(after.version, "v2");
    assert_eq!(after.server_id, before.server_id, "same server: its GPU type still fits");
    assert!(w.job(&before.deployment_id).is_none());
    let job = w.job(&after.deployment_id).unwrap();
    assert_eq!(job["metadata"]["labels"]["chutes/version"], "v2");
    assert_eq!(w.db.chute("c1").await.unwrap().unwrap().version, "v2");
}

fn rolling_update(w: &World, chute: &str, instance: &str, new_version: &str) -> Event {
    Event::RollingUpdate(RollingUpdate {
        chute_id: chute.into(),
        instance_id: instance.into(),
        miner_hotkey: Some(w.miner.clone()),
        old_version: Some("v1".into()),
        new_version: new_version.into(),
        reason: None,
        image: None,
        validator: w.vhot.clone(),
    })
}

/// The operator locked the server while an old version runs there: the new version is
/// not placed on it, and the old one still goes (the autoscaler places the new one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_on_a_locked_server_removes_the_old_version_and_places_nothing_there() {
    let w = world(Shape { servers: 2, gpus: 2, ..Shape::default() }).await;
    w.chute("c1", "v1", 2);
    w.twice(&w.created("c1", "v1", false)).await;
    let rows = w.db.fleet_rows().await.unwrap();
    let before = rows.deployments[0].clone();
    let cfg = before.config_id.clone().unwrap();
    let gpus: Vec<&str> = rows
        .gpus
        .iter()
        .filter(|g| g.deployment_id.as_ref() == Some(&before.deployment_id))
        .map(|g| g.gpu_id.as_str())
        .collect();
    let instance = w.validator.start_chute(&cfg, "192.0.2.1", 32000, &gpus).await.unwrap();
    w.twice(&w.instance("created", &instance, Some(&cfg))).await;
    w.db.set_locked(&before.server_id, true).await.unwrap().unwrap();
    w.gepetto.reconcile_once().await.unwrap(); // reads the lock into Gepetto's inventory
    w.gepetto.wait_idle().await;
    assert!(w.job(&before.deployment_id).is_some(), "a locked server keeps what runs on it");

    w.chute("c1", "v2", 2);
    w.twice(&rolling_update(&w, "c1", &instance, "v2")).await;
    let rows = w.db.fleet_rows().await.unwrap();
    assert!(rows.deployments.iter().all(|d| d.server_id != before.server_id), "{rows:?}");
    assert!(!rows.deployments.iter().any(|d| d.version == "v1"), "the old version is gone: {rows:?}");
    assert!(w.job(&before.deployment_id).is_none());
}

/// The validator removes our instance; its GPU is free in the inventory at once, but
/// its pod takes its grace period to stop. A chute placed on that GPU meanwhile gets
/// its Job only once the old pod is gone: chute pods are pinned to GPUs by
/// `NVIDIA_VISIBLE_DEVICES`, so nothing else would keep the two on one GPU apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chute_placed_on_a_gpu_whose_old_pod_is_still_stopping_waits_for_it() {
    let w = world(Shape { servers: 1, gpus: 1, ..Shape::default() }).await;
    w.chute("old", "v1", 1);
    w.chute("new", "v1", 1);
    w.twice(&w.created("old", "v1", false)).await;
    let old = w.db.fleet_rows().await.unwrap().deployments[0].clone();
    let cfg = old.config_id.clone().unwrap();
    w.twice(&w.instance("created", "inst-old", Some(&cfg))).await;
    // Gepetto's pod watch has it (what the deploy reads), not just the API server.
    eventually("the old chute's pod in Gepetto's watch", || async {
        w.gepetto.cluster().deployment_pods(&old.deployment_id).len() == 1
    })
    .await;
    let old_pod = w.pods_of(&old.deployment_id).remove(0);

    w.kube.hold_pod_terminations(true);
    w.twice(&w.instance("deleted", "inst-old", Some(&cfg))).await;
    w.gepetto.handle(&w.created("new", "v1", false)).await.unwrap();
    let rows = w.db.fleet_rows().await.unwrap();
    let new = rows.deployments.iter().find(|d| d.chute_id == "new").expect("placed on the freed GPU").clone();
    assert_eq!(rows.gpus[0].deployment_id.as_deref(), Some(new.deployment_id.as_str()));
    let old_job = w.job(&old.deployment_id).expect("the old Job waits for its pod (foreground deletion)");
    assert!(old_job["metadata"]["deletionTimestamp"].is_string(), "the old Job is being deleted");
    assert_eq!(w.pods_of(&old.deployment_id), std::slice::from_ref(&old_pod), "its pod is still stopping");
    assert!(w.job(&new.deployment_id).is_none(), "no Job while the old pod still runs on the GPU");

    w.kube.clear_requests();
    assert!(w.kube.finish_pod_termination(NS, &old_pod));
    w.gepetto.wait_idle().await;
    assert!(w.job(&new.deployment_id).is_some(), "the Job once the GPU is released");
    let created = format!("POST /apis/batch/v1/namespaces/{NS}/jobs");
    assert!(
        w.kube.requests().iter().any(|r| r.starts_with(&created)),
        "the Job was created after the old pod was gone, not before: {:?}",
        w.kube.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_whose_gpus_the_validator_already_forgot_is_still_removed() {
    // The validator has none of these GPUs (an earlier delivery removed them there before
    // the process died, or they were never registered): its DELETE answers 404.
    let w = world(Shape::default()).await;
    w.chute("c1", "v1", 1);
    w.twice(&w.created("c1", "v1", false)).await;
    assert_eq!(w.jobs().len(), 1);
    let (_, server_id) = w.servers[0].clone();
    assert!(w.validator.nodes().is_empty());

    w.twice(&Event::ServerDeleted(ServerDeleted { server_id: server_id.clone() })).await;
    assert!(w.db.find_server(&server_id).await.unwrap().is_none(), "the server row is gone");
    assert!(w.db.server_gpus(&server_id).await.unwrap().is_empty(), "and its GPUs");
    assert!(w.db.fleet_rows().await.unwrap().deployments.is_empty());
    eventually("the chute Job on it to go", || async { w.jobs().is_empty() }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_chute_stops_the_jobs_still_running_an_older_version() {
    let w = world(Shape::default()).await;
    w.chute("j1", "v1", 1);
    w.twice(&w.created("j1", "v1", true)).await;
    w.validator.add_job("long");
    w.twice(&job_created(&w.vhot, "j1", "long", vec![], 10)).await;
    let running = w.db.fleet_rows().await.unwrap().deployments[0].clone();
    assert_eq!((running.version.as_str(), running.job_id.as_deref()), ("v1", Some("long")));
    // The chute moves on while the job runs: the job keeps its version.
    w.chute("j1", "v2", 1);
    w.twice(&Event::ChuteUpdated(ChuteChanged {
        chute_id: "j1".into(),
        version: "v2".into(),
        job_only: true,
        validator: w.vhot.clone(),
    }))
    .await;
    assert_eq!(w.db.fleet_rows().await.unwrap().deployments.len(), 1, "the job runs on at v1");

    w.twice(&Event::ChuteDeleted(ChuteDeleted {
        chute_id: "j1".into(),
        version: Some("v2".into()),
        validator: w.vhot.clone(),
    }))
    .await;
    let rows = w.db.fleet_rows().await.unwrap();
    assert!(rows.chutes.is_empty() && rows.deployments.is_empty());
    assert!(rows.gpus.iter().all(|g| g.deployment_id.is_none()));
    assert!(w.job(&running.deployment_id).is_none(), "no Job runs on GPUs the inventory shows free");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_deleted_before_its_creation_was_heard_still_frees_its_gpus() {
    let w = world(Shape::default()).await;
    w.chute("c1", "v1", 1);
    w.twice(&w.created("c1", "v1", false)).await;
    let d = w.db.fleet_rows().await.unwrap().deployments[0].clone();
    let config = d.config_id.clone().unwrap();
    assert!(d.instance_id.is_none(), "instance_created was never delivered");

    w.twice(&w.instance("deleted", "lost-instance", Some(&config))).await;
    let rows = w.db.fleet_rows().await.unwrap();
    assert!(rows.deployments.is_empty(), "matched by its launch config");
    assert!(rows.gpus.iter().all(|g| g.deployment_id.is_none()));
    assert!(w.job(&d.deployment_id).is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_keeps_an_instance_that_runs_as_a_legacy_deployment() {
    let w = world(Shape::default()).await;
    w.chute("c1", "v1", 1);
    w.twice(&w.created("c1", "v1", false)).await;
    w.validator.set_listing(validator_emulator::Listing::Chutes, vec![remote_chute("c1", "v1", 1)]);
    let d = w.db.fleet_rows().await.unwrap().deployments[0].clone();
    // As the original ran instances before 2025-07-17: an apps/v1 Deployment, no Job.
    let name = format!("chute-{}", d.deployment_id);
    let jobs: kube::Api<k8s_openapi::api::batch::v1::Job> = kube::Api::namespaced(w.client.clone(), NS);
    jobs.delete(&name, &kube::api::DeleteParams::background()).await.unwrap();
    w.kube
        .create(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": NS,
                "labels": {"chutes/chute": "true", "chutes/deployment-id": d.deployment_id}},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"chutes/deployment-id": d.deployment_id}},
                "template": {"metadata": {"labels": {"chutes/deployment-id": d.deployment_id}},
                    "spec": {"nodeName": w.servers[0].0, "containers": [{"name": "chute", "image": "user/llm:1"}]}}},
        }))
        .unwrap();
    let cluster = w.gepetto.cluster().clone();
    let id = d.deployment_id.clone();
    eventually("the Job watch to see it gone", || {
        let (cluster, id) = (cluster.clone(), id.clone());
        async move { !cluster.chute_jobs().contains_key(&id) }
    })
    .await;

    let report = w.gepetto.reconcile_once().await.unwrap();
    assert!(report.undeployed.is_empty(), "{report:?}");
    assert_eq!(w.db.fleet_rows().await.unwrap().deployments.len(), 1);

    // Without the Deployment either, the instance is gone for good.
    let legacy: kube::Api<k8s_openapi::api::apps::v1::Deployment> =
        kube::Api::namespaced(w.client.clone(), NS);
    legacy.delete(&name, &kube::api::DeleteParams::background()).await.unwrap();
    let report = w.gepetto.reconcile_once().await.unwrap();
    assert_eq!(report.undeployed, vec![(d.deployment_id.clone(), "its Job is gone".to_owned())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_job_object_expired_is_given_back_only_if_it_never_ran() {
    let w = world(Shape::default()).await;
    w.chute("j1", "v1", 1);
    w.twice(&w.created("j1", "v1", true)).await;
    w.validator.add_job("ran");
    w.validator.add_job("never");
    w.twice(&job_created(&w.vhot, "j1", "ran", vec![], 30)).await;
    w.twice(&job_created(&w.vhot, "j1", "never", vec![], 30)).await;
    let rows = w.db.fleet_rows().await.unwrap();
    let of = |job: &str| rows.deployments.iter().find(|d| d.job_id.as_deref() == Some(job)).unwrap().clone();
    let (ran, never) = (of("ran"), of("never"));
    // "ran" became an instance and ran; "never" did not get that far.
    w.twice(&w.instance("created", "inst-ran", ran.config_id.as_deref())).await;
    w.twice(&w.instance("verified", "inst-ran", None)).await;
    w.twice(&w.instance("activated", "inst-ran", ran.config_id.as_deref())).await;
    // The validator still lists the instance (its `job_deleted` is not in yet).
    w.validator.set_listing(
        validator_emulator::Listing::Instances,
        vec![
            json!({"instance_id": "inst-ran", "chute_id": "j1", "config_id": ran.config_id, "active": true}),
        ],
    );
    // While Gepetto was down, both Jobs ended and their TTL (300 s) deleted them: the
    // cluster no longer says whether "ran" succeeded.
    let jobs: kube::Api<k8s_openapi::api::batch::v1::Job> = kube::Api::namespaced(w.client.clone(), NS);
    for d in [&ran, &never] {
        jobs.delete(&format!("chute-{}", d.deployment_id), &kube::api::DeleteParams::background())
            .await
            .unwrap();
    }
    let cluster = w.gepetto.cluster().clone();
    eventually("the Job watch to see both gone", || {
        let cluster = cluster.clone();
        async move { cluster.chute_jobs().is_empty() }
    })
    .await;

    let report = w.gepetto.reconcile_once().await.unwrap();
    let undeployed: BTreeSet<(String, String)> = report.undeployed.into_iter().collect();
    let gone = |d: &miner_db::Deployment| (d.deployment_id.clone(), "its Job is gone".to_owned());
    assert_eq!(undeployed, BTreeSet::from([gone(&ran), gone(&never)]));
    assert!(w.db.fleet_rows().await.unwrap().deployments.is_empty());
    assert_eq!(
        w.validator.released_jobs(),
        ["never".to_owned()],
        "a job that ran may have succeeded: only the one that never ran goes back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_placed_but_not_yet_running_holds_the_disk_it_asked_for() {
    // One node with 2000 GiB of ephemeral storage.
    let w = world(Shape::default()).await;
    w.chute("j1", "v1", 1);
    w.twice(&w.created("j1", "v1", true)).await;
    w.validator.add_job("big");
    w.validator.add_job("second");
    // The first job's launch token is slow: its Job (and so its pod) does not exist yet.
    let held = w.validator.hold_next("/instances/launch_config");
    w.gepetto.handle(&job_created(&w.vhot, "j1", "big", vec![], 1500)).await.unwrap();
    held.made().await;
    w.gepetto.handle(&job_created(&w.vhot, "j1", "second", vec![], 1000)).await.unwrap();
    let rows = w.db.fleet_rows().await.unwrap();
    let jobs: Vec<_> = rows.deployments.iter().filter_map(|d| d.job_id.clone()).collect();
    assert_eq!(jobs, ["big"], "1500 + 1000 GiB do not fit a 2000 GiB node, Job or no Job yet");
    held.release();
    w.gepetto.wait_idle().await;
    let d = &w.db.fleet_rows().await.unwrap().deployments[0];
    let c = &w.job(&d.deployment_id).unwrap()["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["resources"]["limits"]["ephemeral-storage"], "1500Gi");
}

/// A launch config that fails with a 5xx (or a timeout) may have been granted before the
/// answer was lost: the job is given back, so it is not locked to this miner until the
/// validator's timeout. The deploy it was for leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_launch_config_failed_transiently_is_given_back() {
    let w = world(Shape::default()).await;
    w.chute("j1", "v1", 1);
    w.twice(&w.created("j1", "v1", true)).await;
    w.validator.add_job("flaky");
    w.validator.fail_next("/instances/launch_config", 502, 1);
    w.gepetto.handle(&job_created(&w.vhot, "j1", "flaky", vec![], 10)).await.unwrap();
    w.gepetto.wait_idle().await;
    assert_eq!(w.validator.released_jobs(), vec!["flaky".to_owned()]);
    let rows = w.db.fleet_rows().await.unwrap();
    assert!(rows.deployments.is_empty(), "{:?}", rows.deployments);
    assert!(rows.gpus.iter().all(|g| g.deployment_id.is_none()));
    assert!(w.jobs().is_empty());
}
