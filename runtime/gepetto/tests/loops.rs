#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The reconciler's image sync, creation of chutes missing here and listings that
//! take their time, and the
//! successor's strategy end to end: its preemption reads every miner's instances from
//! the validator emulator's `GET /miner/active_instances/`.

mod common;

use std::sync::Arc;

use common::*;
use miner_events::Event;
use miner_events::payloads::*;
use miner_gepetto::Multiplier;
use validator_emulator::ChuteSpec;

fn chute_spec(id: &str, multiplier: f64) -> ChuteSpec {
    ChuteSpec { compute_multiplier: multiplier, ..ChuteSpec::simple(id, "img-1", &["h100"]) }
}

/// The validator offers these chutes (id, compute multiplier) on one image.
fn offer(w: &World, chutes: &[(&str, f64)]) {
    w.validator.add_image(image(None, "0.3.40"));
    for (id, multiplier) in chutes {
        w.validator.add_chute(chute_spec(id, *multiplier));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_follows_rebuilt_images_and_creates_chutes_it_missed() {
    let w = world(Shape { servers: 1, gpus: 4, ..Shape::default() }).await;
    offer(&w, &[("synced", 1.0)]);
    w.twice(&w.created("synced", "v1", false)).await;
    let before = w.db.chute("synced").await.unwrap().unwrap();
    assert_eq!(before.image, "chutes/vllm:0.9");

    // The validator rebuilds the image (a patch, a newer chutes library), and two chutes
    // appear while no event reaches this miner: one with cords, one job-only.
    w.validator.add_image(image(Some("p2"), "0.3.41"));
    w.validator.add_chute(chute_spec("missed", 1.0));
    w.validator.add_chute(ChuteSpec { cords: vec![], ..chute_spec("missed-jobs", 1.0) });

    let report = w.gepetto.reconcile_once().await.unwrap();
    w.gepetto.wait_idle().await;
    assert!(report.undeployed.is_empty(), "{report:?}");
    assert_eq!(report.images_synced, 3, "the created ones follow the rebuilt image too: {report:?}");
    let synced = w.db.chute("synced").await.unwrap().unwrap();
    assert_eq!(synced.image, "chutes/vllm:0.9-p2");
    assert_eq!(synced.chutes_version.as_deref(), Some("0.3.41"));
    assert_eq!(report.chutes_created, ["missed", "missed-jobs"]);
    assert_eq!(w.db.chute("missed").await.unwrap().unwrap().image, "chutes/vllm:0.9-p2");

    let rows = w.db.fleet_rows().await.unwrap();
    let of = |chute: &str| rows.deployments.iter().filter(|d| d.chute_id == chute).count();
    assert_eq!((of("synced"), of("missed"), of("missed-jobs")), (1, 1, 0), "deploy on create, not for jobs");
    let missed = rows.deployments.iter().find(|d| d.chute_id == "missed").unwrap();
    let job = w.job(&missed.deployment_id).expect("the missed chute's Job");
    assert_eq!(job["metadata"]["labels"]["chutes/chute-id"], "missed");
    for chute in ["missed", "missed-jobs"] {
        let cm = miner_k8s::code_configmap_name(chute, "v1");
        let cm = w.kube.get("v1", "ConfigMap", Some(NS), &cm).unwrap().expect("code ConfigMap");
        assert_eq!(cm["data"]["app.py"], format!("# chute {chute}\n"));
    }

    // Nothing left to repair: a second pass changes nothing.
    let again = w.gepetto.reconcile_once().await.unwrap();
    w.gepetto.wait_idle().await;
    assert_eq!((again.images_synced, again.chutes_created.len(), again.undeployed.len()), (0, 0, 0));
    assert_eq!(w.db.fleet_rows().await.unwrap().deployments.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_keeps_an_instance_an_event_stored_while_its_listing_was_on_the_way() {
    let w = world(Shape::default()).await;
    offer(&w, &[("llm", 1.0)]);
    w.twice(&w.created("llm", "v1", false)).await;
    let ours = w.db.fleet_rows().await.unwrap().deployments[0].clone();
    let config = ours.config_id.clone().unwrap();

    // The instances listing is made before the chute starts, and streams while it does.
    let hold = w.validator.hold_next("/miner/instances");
    let gepetto = w.gepetto.clone();
    let reconcile = tokio::spawn(async move { gepetto.reconcile_once().await });
    hold.made().await;
    let instance = w.validator.start_chute(&config, "192.0.2.1", 32000, &[&gpu_uuid(0, 0)]).await.unwrap();
    w.twice(&w.instance("created", &instance, Some(&config))).await;
    hold.release();
    let report = reconcile.await.unwrap().unwrap();

    assert!(report.undeployed.is_empty(), "a listing older than the row judged nothing: {report:?}");
    assert_eq!(report.instances_purged, 0);
    let rows = w.db.fleet_rows().await.unwrap();
    assert_eq!(rows.deployments.len(), 1);
    assert_eq!(rows.deployments[0].instance_id.as_deref(), Some(instance.as_str()));
    assert!(w.job(&ours.deployment_id).is_some(), "the chute's Job still runs");
    assert!(w.validator.instances().iter().any(|i| i.instance_id == instance));
    let again = w.gepetto.reconcile_once().await.unwrap();
    assert!(again.undeployed.is_empty() && again.instances_purged == 0, "{again:?}");
}

/// Our first GPU runs "cheap" (multiplier 1), its instance active for two hours (the
/// successor spares the first 62 min); `rich` (multiplier 3) is stored, not deployed.
/// Returns our deployment and its instance.
async fn cheap_on_our_first_gpu(w: &World, rich: ChuteSpec) -> (miner_db::Deployment, String) {
    offer(w, &[("cheap", 1.0)]);
    w.validator.add_chute(rich);
    w.twice(&w.created("cheap", "v1", false)).await;
    let ours = w.db.fleet_rows().await.unwrap().deployments[0].clone();
    let config = ours.config_id.clone().unwrap();
    let instance = w.validator.start_chute(&config, "192.0.2.1", 32000, &[&gpu_uuid(0, 0)]).await.unwrap();
    w.twice(&w.instance("created", &instance, Some(&config))).await;
    w.twice(&w.instance("activated", &instance, Some(&config))).await;
    let pool = sqlx::PgPool::connect(&w.db_url).await.unwrap();
    sqlx::query("UPDATE deployments SET activated_at = NOW() - INTERVAL '2 hours'")
        .execute(&pool)
        .await
        .unwrap();
    w.twice(&w.created("rich", "v1", false)).await;
    (ours, instance)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preempting_job_holds_the_freed_gpus_until_its_victim_is_gone_and_gets_its_disk() {
    let w =
        world(Shape { servers: 1, gpus: 1, strategy: Arc::new(Multiplier::default()), ..Shape::default() })
            .await;
    let (victim, _) = cheap_on_our_first_gpu(&w, chute_spec("rich", 3.0)).await;
    // Another miner runs cheap too: ours is no longer its last instance. A tick reads
    // that and the inventory (the two hours); rich has no traffic, so it places nothing.
    w.other_miner_runs("cheap").await;
    assert_eq!(w.gepetto.autoscale_once().await.unwrap(), 0);
    w.validator.add_job("big");
    // The victim's pod takes its grace period (30 s) to stop, unless the test ends it.
    w.kube.hold_pod_terminations(true);
    let job = Event::JobCreated(JobCreated {
        job_id: "big".into(),
        method: Some("run".into()),
        chute_id: "rich".into(),
        image_id: None,
        gpu_count: Some(1),
        compute_multiplier: Some(3.0),
        exclude: vec![],
        disk_gb: Some(200),
        validator: w.vhot.clone(),
    });
    w.gepetto.handle(&job).await.unwrap();

    let victim_pods = w.pods_of(&victim.deployment_id);
    assert_eq!(victim_pods.len(), 1, "the victim's pod is still terminating");
    let holder = |rows: &miner_db::FleetRows| rows.gpus[0].deployment_id.clone();
    let rows = w.db.fleet_rows().await.unwrap();
    let new = rows.deployments.iter().find(|d| d.job_id.as_deref() == Some("big")).unwrap().clone();
    assert_eq!(holder(&rows), Some(new.deployment_id.clone()), "the freed GPU is the job's at once");
    assert!(w.job(&new.deployment_id).is_none(), "no Job while the victim's pod still holds the GPU");
    // An autoscaler tick in between finds nothing free to place on.
    assert_eq!(w.gepetto.autoscale_once().await.unwrap(), 0);
    assert_eq!(holder(&w.db.fleet_rows().await.unwrap()), Some(new.deployment_id.clone()));

    assert!(w.kube.finish_pod_termination(NS, &victim_pods[0]));
    w.gepetto.wait_idle().await;
    let k8s_job = w.job(&new.deployment_id).expect("the job's Job once the victim is gone");
    let c = &k8s_job["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(c["resources"]["limits"]["ephemeral-storage"], "200Gi", "the disk the job asked for");
    assert_eq!(w.validator.job_holder("big").as_deref(), Some(w.miner.as_str()));
    assert!(w.validator.released_jobs().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_multiplier_strategy_preempts_by_the_validators_active_instances() {
    let w =
        world(Shape { servers: 1, gpus: 1, strategy: Arc::new(Multiplier::default()), ..Shape::default() })
            .await;
    let (ours, instance) = cheap_on_our_first_gpu(&w, chute_spec("rich", 3.0)).await;
    let bounty = Event::BountyChange(BountyChange {
        chute_id: "rich".into(),
        bounty: Some(10.0),
        validator: w.vhot.clone(),
    });
    // The autoscaler tick reads active_instances (and the inventory) into Gepetto.
    w.gepetto.autoscale_once().await.unwrap();
    w.twice(&bounty).await;
    let rows = w.db.fleet_rows().await.unwrap();
    assert_eq!(
        rows.deployments.iter().map(|d| d.chute_id.as_str()).collect::<Vec<_>>(),
        ["cheap"],
        "ours is the only instance of cheap anywhere: never preempted"
    );

    // Another miner runs cheap too: ours is no longer its last instance, and the
    // validator pays it less than the newcomer.
    let rest = w.other_miner_runs("cheap").await;
    let active = rest.active_instances().await.unwrap().unwrap();
    assert_eq!(active.iter().filter(|i| i.chute_id == "cheap").count(), 2);

    w.gepetto.autoscale_once().await.unwrap();
    w.twice(&bounty).await;
    let rows = w.db.fleet_rows().await.unwrap();
    assert_eq!(rows.deployments.len(), 1);
    let now = &rows.deployments[0];
    assert_eq!(now.chute_id, "rich", "cheap (multiplier 1) made room for rich (3)");
    assert!(w.job(&ours.deployment_id).is_none());
    assert!(w.job(&now.deployment_id).is_some());
    let deleted = w
        .validator
        .requests()
        .into_iter()
        .filter(|r| r.method == "DELETE" && r.path == format!("/instances/cheap/{instance}"))
        .count();
    assert_eq!(deleted, 1, "the preempted instance is removed at the validator");
}

/// After a restart, an event stores one chute before any chutes listing has answered;
/// the listing then fails. That one chute is not the validator's whole list: reconcile
/// must not judge every other chute gone and tear its deployments down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chute_stored_by_an_event_before_the_first_listing_is_not_taken_for_the_whole_list() {
    let w = world(Shape { servers: 1, gpus: 2, ..Shape::default() }).await;
    offer(&w, &[("running", 1.0), ("new", 1.0)]);
    w.twice(&w.created("running", "v1", false)).await;
    let running = w.db.fleet_rows().await.unwrap().deployments[0].clone();

    // A restarted process: nothing listed yet. The backlog brings "new" first.
    let restarted = gepetto_on(&w.db, &w.client, &w.validator, &w.vhot, &Shape::default(), &w.shutdown).await;
    restarted.handle(&w.created("new", "v1", false)).await.unwrap();
    restarted.wait_idle().await;
    w.validator.fail_next("/miner/chutes", 500, 1000);
    let report = restarted.reconcile_once().await.unwrap();
    restarted.wait_idle().await;

    assert!(report.undeployed.is_empty(), "nothing is known gone without a listing: {report:?}");
    let rows = w.db.fleet_rows().await.unwrap();
    assert!(rows.deployments.iter().any(|d| d.deployment_id == running.deployment_id), "{rows:?}");
    assert!(w.job(&running.deployment_id).is_some(), "the running chute's Job is still there");
    assert!(w.db.chute("running").await.unwrap().is_some());
}

/// A Job whose chute never registers an instance (its pod stuck on an image pull, say)
/// is undeployed after 30 minutes, as the original's reconcile did; before that, or
/// once the validator lists an instance, it is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deployment_with_no_instance_after_30_minutes_is_undeployed() {
    let w = world(Shape { servers: 1, gpus: 2, ..Shape::default() }).await;
    offer(&w, &[("stuck", 1.0), ("serving", 1.0)]);
    w.twice(&w.created("stuck", "v1", false)).await;
    w.twice(&w.created("serving", "v1", false)).await;
    let rows = w.db.fleet_rows().await.unwrap();
    let of = |chute: &str| rows.deployments.iter().find(|d| d.chute_id == chute).unwrap().clone();
    let (stuck, serving) = (of("stuck"), of("serving"));
    let config = serving.config_id.clone().unwrap();
    w.validator.start_chute(&config, "192.0.2.1", 32000, &[&gpu_uuid(0, 1)]).await.unwrap();

    // Young: both kept, though "stuck" has no instance yet.
    let report = w.gepetto.reconcile_once().await.unwrap();
    assert!(report.undeployed.is_empty(), "{report:?}");

    let pool = sqlx::PgPool::connect(&w.db_url).await.unwrap();
    sqlx::query("UPDATE deployments SET created_at = NOW() - INTERVAL '31 minutes'")
        .execute(&pool)
        .await
        .unwrap();
    let report = w.gepetto.reconcile_once().await.unwrap();
    w.gepetto.wait_idle().await;
    assert_eq!(
        report.undeployed,
        [(stuck.deployment_id.clone(), "no instance 30 min after its deploy".to_string())],
        "{report:?}"
    );
    assert!(w.job(&stuck.deployment_id).is_none(), "its Job is gone, and its GPU free");
    let rows = w.db.fleet_rows().await.unwrap();
    assert!(rows.deployments.iter().any(|d| d.deployment_id == serving.deployment_id), "{rows:?}");
    assert!(!rows.deployments.iter().any(|d| d.deployment_id == stuck.deployment_id), "{rows:?}");
}

/// While a chute rolls to a new version its old instances are replaced one by one (the
/// `rolling_update` events). When the rolling-updates listing fails, reconcile does not
/// know which chutes roll, and must not undeploy the old version as "moved".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_rolling_updates_listing_undeploys_no_old_version() {
    let w = world(Shape::default()).await;
    offer(&w, &[("llm", 1.0)]);
    w.twice(&w.created("llm", "v1", false)).await;
    let ours = w.db.fleet_rows().await.unwrap().deployments[0].clone();

    // v2 is rolling out; the listing that says so fails on this pass.
    w.chute("llm", "v2", 1);
    w.validator.set_rolling_updates(vec![serde_json::json!({"chute_id": "llm", "old_version": "v1"})]);
    w.validator.fail_next("/chutes/rolling_updates", 500, 1000);
    let report = w.gepetto.reconcile_once().await.unwrap();
    w.gepetto.wait_idle().await;
    assert!(report.undeployed.is_empty(), "{report:?}");
    assert_eq!(report.chutes_updated, 0, "{report:?}");
    assert!(
        w.db.fleet_rows().await.unwrap().deployments.iter().any(|d| d.deployment_id == ours.deployment_id)
    );
    assert!(w.job(&ours.deployment_id).is_some());
}

/// A deploy placed after reconcile read its rows (here while the metrics listing, which
/// comes before the others, was on the way) registers its instance before the instances
/// listing is made: that listing shows an instance the rows read at the start do not
/// know. It is ours, not a stranger's to purge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_does_not_purge_an_instance_deployed_during_its_own_pass() {
    let w = world(Shape { servers: 1, gpus: 2, ..Shape::default() }).await;
    offer(&w, &[("old", 1.0), ("new", 1.0)]);
    w.twice(&w.created("old", "v1", false)).await;

    let hold = w.validator.hold_next("/miner/metrics");
    let gepetto = w.gepetto.clone();
    let reconcile = tokio::spawn(async move { gepetto.reconcile_once().await });
    hold.made().await;
    // Meanwhile: "new" is deployed and its chute registers with the validator.
    w.twice(&w.created("new", "v1", false)).await;
    let new = w.db.fleet_rows().await.unwrap().deployments.into_iter().find(|d| d.chute_id == "new").unwrap();
    let instance = w
        .validator
        .start_chute(&new.config_id.clone().unwrap(), "192.0.2.1", 32001, &[&gpu_uuid(0, 1)])
        .await
        .unwrap();
    hold.release();
    let report = reconcile.await.unwrap().unwrap();

    assert_eq!(report.instances_purged, 0, "{report:?}");
    assert!(w.validator.instances().iter().any(|i| i.instance_id == instance), "the new instance lives");
    assert!(w.job(&new.deployment_id).is_some());
    w.gepetto.wait_idle().await;
    let news = w.db.fleet_rows().await.unwrap().deployments.iter().filter(|d| d.chute_id == "new").count();
    assert_eq!(news, 1, "the chute's creation, seen again by this pass, deployed nothing more");
}

/// A preemption is planned on one view of the fleet and carried out later, after the
/// validator grants its launch config. When the fleet changed in between so the plan
/// no longer fits, no victim is removed: losing a running instance for a deploy that
/// cannot happen is the worst of both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preemption_that_no_longer_fits_when_carried_out_removes_no_victim() {
    let w =
        world(Shape { servers: 1, gpus: 2, strategy: Arc::new(Multiplier::default()), ..Shape::default() })
            .await;
    // "rich" needs both GPUs; "cheap" holds one, the other is free.
    let (victim, _) = cheap_on_our_first_gpu(&w, ChuteSpec { gpu_count: 2, ..chute_spec("rich", 3.0) }).await;
    w.other_miner_runs("cheap").await;
    assert_eq!(w.gepetto.autoscale_once().await.unwrap(), 0);
    w.validator.add_chute(chute_spec("filler", 1.0));

    // A job for rich: the plan is to preempt cheap. Its launch config is slow to come.
    w.validator.add_job("big");
    let held = w.validator.hold_next("/instances/launch_config");
    let job = Event::JobCreated(JobCreated {
        job_id: "big".into(),
        method: Some("run".into()),
        chute_id: "rich".into(),
        image_id: None,
        gpu_count: Some(2),
        compute_multiplier: Some(3.0),
        exclude: vec![],
        disk_gb: Some(100),
        validator: w.vhot.clone(),
    });
    let gepetto = w.gepetto.clone();
    let preempting = tokio::spawn(async move { gepetto.handle(&job).await });
    held.made().await;
    // Meanwhile a new chute takes the free GPU.
    w.gepetto.handle(&w.created("filler", "v1", false)).await.unwrap();
    held.release();
    preempting.await.unwrap().unwrap();
    w.gepetto.wait_idle().await;

    let rows = w.db.fleet_rows().await.unwrap();
    let mut chutes: Vec<&str> = rows.deployments.iter().map(|d| d.chute_id.as_str()).collect();
    chutes.sort_unstable();
    assert_eq!(chutes, ["cheap", "filler"], "the victim still runs: {rows:?}");
    assert!(rows.deployments.iter().any(|d| d.deployment_id == victim.deployment_id));
    assert!(w.job(&victim.deployment_id).is_some(), "its Job was not deleted");
    assert!(
        !w.validator
            .requests()
            .iter()
            .any(|r| r.method == "DELETE" && r.path.starts_with("/instances/cheap/")),
        "its validator instance was not deleted"
    );
    assert_eq!(w.validator.released_jobs(), ["big"], "the job goes back to the validator");
}
