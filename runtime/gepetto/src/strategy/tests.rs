#![allow(clippy::unwrap_used)]
//! Decisions on hand-made snapshots: the rules of reference 11.3-11.7 and 20.7.

use chrono::{Duration, Utc};
use miner_validator::rest::{ActiveInstance, RemoteMetrics};

use super::*;
use crate::snapshot::{DeploymentSnap, GpuSnap, RemoteChuteInfo, ServerSnap};

fn server(id: &str, model: &str, gpus: usize, cost: f64) -> ServerSnap {
    ServerSnap {
        server_id: id.into(),
        name: id.into(),
        validator: "5V".into(),
        hourly_cost: cost,
        locked: false,
        gpus: (0..gpus)
            .map(|i| GpuSnap {
                gpu_id: format!("{id}-{i}"),
                model: model.into(),
                verified: true,
                deployment_id: None,
            })
            .collect(),
        disk_available_gb: Some(500.0),
    }
}

fn chute(id: &str, models: &[&str], gpus: usize) -> ChuteSnap {
    ChuteSnap {
        chute_id: id.into(),
        validator: "5V".into(),
        version: "v1".into(),
        supported_gpus: models.iter().map(|m| (*m).to_owned()).collect(),
        gpu_count: gpus,
        banned: false,
        preemptible: true,
        chutes_version: Some("0.3.40".into()),
    }
}

/// Puts a deployment of `chute_id` on the first free GPUs of `server`.
fn place(fleet: &mut FleetSnapshot, dep: &str, chute_id: &str, server_id: &str, gpus: usize, age_min: i64) {
    let s = fleet.servers.iter_mut().find(|s| s.server_id == server_id).unwrap();
    for g in s.gpus.iter_mut().filter(|g| g.deployment_id.is_none()).take(gpus) {
        g.deployment_id = Some(dep.into());
    }
    let at = Utc::now() - Duration::minutes(age_min);
    fleet.deployments.push(DeploymentSnap {
        deployment_id: dep.into(),
        chute_id: chute_id.into(),
        version: "v1".into(),
        validator: "5V".into(),
        server_id: server_id.into(),
        gpu_count: gpus,
        job_id: None,
        instance_id: Some(format!("i-{dep}")),
        active: true,
        stub: false,
        verified_at: Some(at),
        activated_at: Some(at),
        created_at: Some(at),
        preemptible: true,
    });
}

fn fleet_of<const N: usize>(servers: Vec<ServerSnap>, chutes: [ChuteSnap; N]) -> FleetSnapshot {
    FleetSnapshot {
        servers,
        deployments: Vec::new(),
        chutes: chutes.into_iter().map(|c| (c.chute_id.clone(), c)).collect(),
    }
}

#[test]
fn scale_up_picks_the_cheapest_then_the_tightest_fit() {
    let c = chute("c", &["h100"], 2);
    let mut f = fleet_of(
        vec![
            server("pricey", "h100", 8, 3.0),
            server("roomy", "h100", 8, 1.0),
            server("tight", "h100", 8, 1.0),
        ],
        [c.clone()],
    );
    place(&mut f, "x", "other", "tight", 5, 100);
    assert_eq!(Heuristic.scale_up_server(&c, &f, 10.0).as_deref(), Some("tight"));
    // not enough room (only 3 free, needs 4) → next by cost
    let c4 = chute("c4", &["h100"], 4);
    assert_eq!(Heuristic.scale_up_server(&c4, &f, 10.0).as_deref(), Some("roomy"));
}

#[test]
fn scale_up_respects_model_lock_disk_and_ban() {
    let c = chute("c", &["a100"], 1);
    let mut f = fleet_of(vec![server("h", "h100", 8, 1.0), server("a", "a100", 8, 2.0)], [c.clone()]);
    assert_eq!(Heuristic.scale_up_server(&c, &f, 10.0).as_deref(), Some("a"));
    f.servers[1].locked = true;
    assert_eq!(Heuristic.scale_up_server(&c, &f, 10.0), None);
    f.servers[1].locked = false;
    f.servers[1].disk_available_gb = Some(5.0);
    assert_eq!(Heuristic.scale_up_server(&c, &f, 10.0), None);
    f.servers[1].disk_available_gb = None; // unknown disk is not held against it
    assert_eq!(Heuristic.scale_up_server(&c, &f, 10.0).as_deref(), Some("a"));
    let mut banned = c.clone();
    banned.banned = true;
    assert_eq!(Heuristic.scale_up_server(&banned, &f, 10.0), None);
}

#[test]
fn unverified_gpus_are_never_offered() {
    let c = chute("c", &["h100"], 1);
    let mut f = fleet_of(vec![server("s", "h100", 1, 1.0)], [c.clone()]);
    f.servers[0].gpus[0].verified = false;
    assert_eq!(Multiplier::default().scale_up_server(&c, &f, 10.0), None);
}

#[test]
fn jobs_honour_exclude_and_fall_back_to_preemption() {
    let c = chute("c", &["h100"], 1);
    let f = fleet_of(vec![server("s", "h100", 1, 1.0)], [c.clone()]);
    let job =
        JobOffer { job_id: "j".into(), chute_id: "c".into(), exclude: vec!["5Me".into()], disk_gb: 10.0 };
    assert!(matches!(Heuristic.accept_job(&job, "5Me", &c, &f), JobDecision::Refuse { .. }));
    assert_eq!(Heuristic.accept_job(&job, "5Other", &c, &f), JobDecision::Deploy { server_id: "s".into() });
    let mut full = f.clone();
    place(&mut full, "d", "x", "s", 1, 100);
    assert_eq!(Heuristic.accept_job(&job, "5Other", &c, &full), JobDecision::Preempt);
    let h200 = chute("h", &["h200", "b200"], 1);
    assert!(matches!(Heuristic.accept_job(&job, "5Other", &h200, &full), JobDecision::Refuse { .. }));
    // the successor preempts for any GPU type
    assert_eq!(Multiplier::default().accept_job(&job, "5Other", &h200, &full), JobDecision::Preempt);
}

#[test]
fn heuristic_autoscaler_values_demand_per_cost() {
    let busy = chute("busy", &["h100"], 1);
    let idle = chute("idle", &["h100"], 1);
    let f = fleet_of(vec![server("s", "h100", 8, 2.0)], [busy.clone(), idle.clone()]);
    let mut view = ValidatorView::default();
    for (id, compute, limited) in [("busy", 1000.0, 50.0), ("idle", 10.0, 0.0)] {
        view.chutes.insert(
            id.into(),
            RemoteChuteInfo { version: "v1".into(), has_cords: true, ..Default::default() },
        );
        view.metrics.insert(
            id.into(),
            RemoteMetrics {
                chute_id: id.into(),
                total_compute_time: compute,
                total_invocations: 100.0,
                rate_limit_count: limited,
                instance_count: 2,
                ..Default::default()
            },
        );
    }
    let ranked = Heuristic.autoscale(&f, &view, 10.0);
    assert_eq!(ranked.iter().map(|s| s.chute_id.as_str()).collect::<Vec<_>>(), ["busy", "idle"]);
    // (1000 + 50 * 10) / 3 / (2.0 * 1)
    assert!((ranked[0].value - 250.0).abs() < 1e-9, "{}", ranked[0].value);
    // capped chutes and chutes without cords are left alone
    view.capped.insert("busy".into());
    view.chutes.get_mut("idle").unwrap().has_cords = false;
    assert!(Heuristic.autoscale(&f, &view, 10.0).is_empty());
}

#[test]
fn a_zero_hourly_cost_does_not_break_the_autoscaler() {
    let c = chute("c", &["h100"], 1);
    let f = fleet_of(vec![server("free", "h100", 1, 0.0)], [c]);
    let mut view = ValidatorView::default();
    view.chutes
        .insert("c".into(), RemoteChuteInfo { version: "v1".into(), has_cords: true, ..Default::default() });
    view.metrics.insert(
        "c".into(),
        RemoteMetrics { chute_id: "c".into(), total_compute_time: 1.0, ..Default::default() },
    );
    let ranked = Heuristic.autoscale(&f, &view, 10.0);
    assert!(ranked[0].value.is_finite() && ranked[0].value > 0.0);
}

#[test]
fn multiplier_autoscaler_ranks_by_effective_multiplier_and_skips_pending() {
    let a = chute("a", &["h100"], 1);
    let b = chute("b", &["h100"], 1);
    let mut f = fleet_of(vec![server("s", "h100", 8, 1.0)], [a, b]);
    let mut view = ValidatorView::default();
    for (id, m) in [("a", 1.0), ("b", 3.0)] {
        view.chutes.insert(
            id.into(),
            RemoteChuteInfo { version: "v1".into(), has_cords: true, effective_compute_multiplier: Some(m) },
        );
        // one instance busy all hour and as much again refused: a second is fully busy
        view.metrics.insert(
            id.into(),
            RemoteMetrics {
                chute_id: id.into(),
                total_compute_time: 3600.0,
                total_invocations: 360.0,
                rate_limit_count: 360.0,
                instance_count: 1,
                ..Default::default()
            },
        );
    }
    let s = Multiplier::default();
    let ranked = s.autoscale(&f, &view, 10.0);
    assert_eq!(ranked.iter().map(|s| s.chute_id.as_str()).collect::<Vec<_>>(), ["b", "a"]);
    assert_eq!(s.autoscale_mode(), AutoscaleMode::FirstThatDeploys);
    place(&mut f, "pending", "b", "s", 1, 1);
    f.deployments[0].activated_at = None;
    f.deployments[0].active = false;
    let ranked = s.autoscale(&f, &view, 10.0);
    assert_eq!(ranked.iter().map(|s| s.chute_id.as_str()).collect::<Vec<_>>(), ["a"]);
}

#[test]
fn multiplier_spreads_over_the_two_best_servers() {
    let c = chute("c", &["h100"], 1);
    let f = fleet_of(
        vec![server("a", "h100", 8, 1.0), server("b", "h100", 8, 1.0), server("z", "h100", 8, 9.0)],
        [c.clone()],
    );
    let s = Multiplier::default();
    let picks: std::collections::BTreeSet<_> =
        (0..4).filter_map(|_| s.scale_up_server(&c, &f, 10.0)).collect();
    assert_eq!(picks.into_iter().collect::<Vec<_>>(), ["a", "b"]);

    // The autoscaler too: if "a" were broken (pods that never start), its deploys
    // would not all vanish there.
    let mut view = ValidatorView::default();
    view.chutes.insert(
        "c".into(),
        RemoteChuteInfo { version: "v1".into(), has_cords: true, effective_compute_multiplier: Some(1.0) },
    );
    view.metrics.insert(
        "c".into(),
        RemoteMetrics {
            chute_id: "c".into(),
            total_compute_time: 3600.0,
            total_invocations: 360.0,
            rate_limit_count: 360.0,
            instance_count: 1,
            ..Default::default()
        },
    );
    let ticks: Vec<String> = (0..4).map(|_| s.autoscale(&f, &view, 10.0)[0].server_id.clone()).collect();
    assert_eq!(ticks.iter().collect::<std::collections::BTreeSet<_>>().len(), 2, "{ticks:?}");
    assert!(ticks.iter().all(|t| t != "z"), "only the two best: {ticks:?}");
}

#[test]
fn heuristic_preemption_follows_the_original_rules() {
    let new = chute("new", &["h100"], 2);
    let mut f = fleet_of(vec![server("s", "h100", 2, 1.0)], [new.clone()]);
    place(&mut f, "young", "popular", "s", 1, 30); // verified 30 min ago: protected
    place(&mut f, "old", "popular", "s", 1, 120);
    let mut view = ValidatorView::default();
    view.metrics.insert(
        "popular".into(),
        RemoteMetrics { chute_id: "popular".into(), instance_count: 5, ..Default::default() },
    );
    let now = Utc::now();
    let none = LastInvocations::new();
    assert_eq!(Heuristic.preempt(&new, &f, &view, &none, now, 10.0), None, "the young one is protected");
    f.deployments[0].verified_at = Some(now - Duration::minutes(90));
    let plan = Heuristic.preempt(&new, &f, &view, &none, now, 10.0).unwrap();
    assert_eq!(plan.server_id, "s");
    assert_eq!(plan.victims.len(), 2);
    // the last instance of a chute goes only when Prometheus says it is idle
    view.metrics.get_mut("popular").unwrap().instance_count = 1;
    assert_eq!(Heuristic.preempt(&new, &f, &view, &none, now, 10.0), None, "unknown last use: keep");
    // an instance of the same chute on the server aborts preemption
    let mut same = f.clone();
    same.deployments[1].chute_id = "new".into();
    view.metrics.get_mut("popular").unwrap().instance_count = 5;
    assert_eq!(Heuristic.preempt(&new, &same, &view, &none, now, 10.0), None);
    // a private (non-preemptible) instance is never a victim
    assert!(Heuristic.preempt(&new, &f, &view, &none, now, 10.0).is_some());
    f.deployments[1].preemptible = false;
    assert_eq!(Heuristic.preempt(&new, &f, &view, &none, now, 10.0), None, "private: kept");
}

#[test]
fn multiplier_preemption_keeps_better_paid_private_young_and_last_instances() {
    let new = chute("new", &["h100"], 1);
    let mut f = fleet_of(vec![server("s", "h100", 1, 1.0)], [new.clone()]);
    place(&mut f, "d", "cheap", "s", 1, 120);
    let mut view = ValidatorView::default();
    view.chutes.insert(
        "new".into(),
        RemoteChuteInfo { version: "v1".into(), has_cords: true, effective_compute_multiplier: Some(2.0) },
    );
    let inst = |id: &str, m: f64| ActiveInstance {
        chute_id: "cheap".into(),
        instance_id: id.into(),
        compute_multiplier: Some(m),
    };
    view.active_instances.insert("cheap".into(), vec![inst("i-d", 1.0), inst("elsewhere", 1.0)]);
    let s = Multiplier::default();
    let now = Utc::now();
    let plan = s.preempt(&new, &f, &view, &LastInvocations::new(), now, 10.0).unwrap();
    assert_eq!(plan.victims, ["d"]);
    // paid as much as the newcomer: kept
    view.active_instances.insert("cheap".into(), vec![inst("i-d", 2.0), inst("elsewhere", 1.0)]);
    assert_eq!(s.preempt(&new, &f, &view, &LastInvocations::new(), now, 10.0), None);
    // the last instance anywhere: kept
    view.active_instances.insert("cheap".into(), vec![inst("i-d", 1.0)]);
    assert_eq!(s.preempt(&new, &f, &view, &LastInvocations::new(), now, 10.0), None);
    view.active_instances.insert("cheap".into(), vec![inst("i-d", 1.0), inst("elsewhere", 1.0)]);
    // private: kept
    f.deployments[0].preemptible = false;
    assert_eq!(s.preempt(&new, &f, &view, &LastInvocations::new(), now, 10.0), None);
    f.deployments[0].preemptible = true;
    // activated under 62 minutes ago: kept
    f.deployments[0].activated_at = Some(now - Duration::minutes(61));
    assert_eq!(s.preempt(&new, &f, &view, &LastInvocations::new(), now, 10.0), None);
}

#[test]
fn scale_down_removes_from_the_most_expensive_busiest_server_and_spares_private_chutes() {
    let c = chute("c", &["h100"], 1);
    let mut f = fleet_of(vec![server("cheap", "h100", 4, 1.0), server("dear", "h100", 4, 3.0)], [c.clone()]);
    place(&mut f, "on-cheap", "c", "cheap", 1, 60);
    place(&mut f, "on-dear", "c", "dear", 1, 60);
    place(&mut f, "new", "c", "dear", 1, 1); // too young
    let now = Utc::now();
    assert_eq!(Heuristic.scale_down(&c, &f, now).as_deref(), Some("on-dear"));
    let mut private = c.clone();
    private.preemptible = false;
    assert_eq!(Multiplier::default().scale_down(&private, &f, now), None);
}

#[test]
fn bounty_and_create_decisions() {
    let c = chute("c", &["h100"], 1);
    let mut f = fleet_of(vec![server("s", "h100", 4, 1.0)], [c.clone()]);
    assert!(Heuristic.deploy_on_create(&c, &f, &ValidatorView::default()));
    assert!(Heuristic.claim_bounty(&c, &f, &ValidatorView::default()));
    place(&mut f, "a", "c", "s", 1, 1);
    place(&mut f, "b", "c", "s", 1, 1);
    // two deployments: the original raised here (19.4); now it just declines
    assert!(!Heuristic.claim_bounty(&c, &f, &ValidatorView::default()));
    assert!(!Heuristic.deploy_on_create(&c, &f, &ValidatorView::default()));
}

#[test]
fn placement_cache_agrees_with_a_fresh_scan() {
    let (fleet, _) = crate::synth::fleet(40, 8, 200, 7);
    let mut cache = PlacementCache::new(&fleet, 10.0);
    for chute in fleet.chutes.values() {
        let fresh = Heuristic.scale_up_server(chute, &fleet, 10.0);
        assert_eq!(cache.pick(chute).map(|s| s.server_id.clone()), fresh, "{}", chute.chute_id);
    }
}

#[test]
fn multiplier_autoscaler_weighs_expected_utilisation_and_skips_idle_chutes() {
    let busy = chute("busy", &["h100"], 1);
    let half = chute("half", &["h100"], 1);
    let idle = chute("idle", &["h100"], 1);
    let unserved = chute("unserved", &["h100"], 1);
    let f = fleet_of(vec![server("s", "h100", 8, 1.0)], [busy, half, idle, unserved]);
    let mut view = ValidatorView::default();
    for id in ["busy", "half", "idle", "unserved"] {
        view.chutes.insert(
            id.into(),
            RemoteChuteInfo {
                version: "v1".into(),
                has_cords: true,
                effective_compute_multiplier: Some(2.0),
            },
        );
    }
    // (compute seconds in the hour, rate-limited invocations, instances)
    for (id, compute, limited, instances) in
        [("busy", 3600.0, 360.0, 1), ("half", 3600.0, 0.0, 1), ("idle", 720.0, 0.0, 2)]
    {
        view.metrics.insert(
            id.into(),
            RemoteMetrics {
                chute_id: id.into(),
                total_compute_time: compute,
                total_invocations: 360.0,
                rate_limit_count: limited,
                instance_count: instances,
                ..Default::default()
            },
        );
    }
    let ranked = Multiplier::default().autoscale(&f, &view, 10.0);
    let order: Vec<_> = ranked.iter().map(|s| s.chute_id.as_str()).collect();
    // busy: (3600 + 360 × 10) / 3600 = 2 instances' worth over 2 instances → 1.0;
    // half: 1 over 2 → 0.5; idle: 0.2 over 3 → under 0.3, skipped; unserved: no
    // metrics, no evidence of demand → skipped (a bounty on it has its own event)
    assert_eq!(order, ["busy", "half"]);
    assert!((ranked[0].value - 2.0).abs() < 1e-9 && (ranked[1].value - 1.0).abs() < 1e-9, "{ranked:?}");
}

#[test]
fn multiplier_never_adds_an_instance_that_only_splits_its_own_work() {
    let c = chute("c", &["h100"], 1);
    let mut f = fleet_of(vec![server("s", "h100", 8, 1.0)], [c]);
    let mut view = ValidatorView::default();
    view.chutes.insert(
        "c".into(),
        RemoteChuteInfo { version: "v1".into(), has_cords: true, effective_compute_multiplier: Some(2.0) },
    );
    // 3.5 instances' worth of demand in the hour over 4 instances, none rate-limited
    view.metrics.insert(
        "c".into(),
        RemoteMetrics {
            chute_id: "c".into(),
            total_compute_time: 3.5 * 3600.0,
            total_invocations: 3.5 * 360.0,
            instance_count: 4,
            ..Default::default()
        },
    );
    let instances = |ids: &[String]| -> Vec<ActiveInstance> {
        ids.iter()
            .map(|id| ActiveInstance {
                chute_id: "c".into(),
                instance_id: id.clone(),
                compute_multiplier: Some(2.0),
            })
            .collect()
    };
    // the four are other miners': a fifth, ours, takes a fifth of the work (0.7 × 2.0)
    let others: Vec<String> = (0..4).map(|k| format!("other-{k}")).collect();
    view.active_instances.insert("c".into(), instances(&others));
    let ranked = Multiplier::default().autoscale(&f, &view, 10.0);
    assert_eq!(ranked.len(), 1, "{ranked:?}");
    assert!((ranked[0].value - 1.4).abs() < 1e-9, "{ranked:?}");
    // the four are ours: a fifth only splits the same work five ways, no gain
    for k in 0..4 {
        place(&mut f, &format!("d{k}"), "c", "s", 1, 120);
    }
    let ours: Vec<String> = (0..4).map(|k| format!("i-d{k}")).collect();
    view.active_instances.insert("c".into(), instances(&ours));
    assert_eq!(Multiplier::default().autoscale(&f, &view, 10.0), Vec::new());
}

#[test]
fn multiplier_holds_a_first_instance_only_where_its_demand_keeps_it_busy() {
    // a first instance would be the chute's only one: never preempted, never scaled
    // down by the validator, so it stays for good
    let c = chute("c", &["h100"], 8);
    let f = fleet_of(vec![server("s", "h100", 8, 1.0)], [c.clone()]);
    let s = Multiplier::default();
    let mut view = ValidatorView::default();
    view.chutes.insert(
        "c".into(),
        RemoteChuteInfo { version: "v1".into(), has_cords: true, effective_compute_multiplier: Some(16.0) },
    );
    // a new chute: no figures yet, its demand is unknown; deployed and claimed
    assert!(s.deploy_on_create(&c, &f, &view));
    assert!(s.claim_bounty(&c, &f, &view));
    // known to draw a fifth of an instance's worth of work: an 8-GPU server would
    // idle 80% of the week; neither deployed on create nor claimed for its bounty
    let traffic = |busy: f64| RemoteMetrics {
        chute_id: "c".into(),
        total_compute_time: busy * 3600.0,
        total_invocations: busy * 360.0,
        ..Default::default()
    };
    view.metrics.insert("c".into(), traffic(0.2));
    assert!(!s.deploy_on_create(&c, &f, &view));
    assert!(!s.claim_bounty(&c, &f, &view));
    // the original deploys and claims regardless
    assert!(Heuristic.deploy_on_create(&c, &f, &view));
    assert!(Heuristic.claim_bounty(&c, &f, &view));
    // and the autoscaler does not want it either
    assert_eq!(s.autoscale(&f, &view, 10.0), Vec::new());
    // listed for a while and served by no miner: only refused invocations, no compute
    // time to size its demand by; a first instance would stay for good on a guess
    view.metrics.insert(
        "c".into(),
        RemoteMetrics { chute_id: "c".into(), rate_limit_count: 500.0, ..Default::default() },
    );
    assert!(!s.deploy_on_create(&c, &f, &view));
    assert!(!s.claim_bounty(&c, &f, &view));
    assert_eq!(s.autoscale(&f, &view, 10.0), Vec::new());
    // busy 70% of the time: worth holding
    view.metrics.insert("c".into(), traffic(0.7));
    assert!(s.deploy_on_create(&c, &f, &view));
    assert!(s.claim_bounty(&c, &f, &view));
    assert_eq!(s.autoscale(&f, &view, 10.0).len(), 1);
}

/// A chute the validator wants more of (unserved demand, multiplier 2) and a full
/// server whose instance of `slow` is busy `slow_busy` of the time at multiplier 1.
fn full_fleet_and_a_wanted_chute(slow_busy: f64) -> (FleetSnapshot, ValidatorView) {
    let wanted = chute("wanted", &["h100"], 1);
    let slow = chute("slow", &["h100"], 1);
    let mut f = fleet_of(vec![server("s", "h100", 1, 1.0)], [wanted, slow]);
    place(&mut f, "d", "slow", "s", 1, 120);
    let mut view = ValidatorView::default();
    for (id, m) in [("wanted", 2.0), ("slow", 1.0)] {
        view.chutes.insert(
            id.into(),
            RemoteChuteInfo { version: "v1".into(), has_cords: true, effective_compute_multiplier: Some(m) },
        );
    }
    let inst = |chute: &str, id: &str| ActiveInstance {
        chute_id: chute.into(),
        instance_id: id.into(),
        compute_multiplier: Some(1.0),
    };
    view.active_instances.insert("slow".into(), vec![inst("slow", "i-d"), inst("slow", "other")]);
    view.active_instances.insert("wanted".into(), vec![inst("wanted", "w1")]);
    // (compute seconds in the hour, rate-limited invocations at 10 s each)
    for (id, compute, limited) in [("slow", 2.0 * 3600.0 * slow_busy, 0.0), ("wanted", 3600.0, 720.0)] {
        view.metrics.insert(
            id.into(),
            RemoteMetrics {
                chute_id: id.into(),
                total_compute_time: compute,
                total_invocations: compute / 10.0,
                rate_limit_count: limited,
                instance_count: if id == "slow" { 2 } else { 1 },
                ..Default::default()
            },
        );
    }
    (f, view)
}

#[test]
fn multiplier_rebalances_an_idle_instance_to_a_chute_that_would_earn_far_more() {
    let s = Multiplier::default();
    let now = Utc::now();
    // `slow` keeps its instance busy 30% of the time at 1.0: 0.3 per GPU; `wanted`
    // would be busy all the time at 2.0 (3 instances' worth over 2): far more
    let (f, view) = full_fleet_and_a_wanted_chute(0.3);
    let r = s.rebalance(&f, &view, now, 10.0).unwrap();
    assert_eq!((r.chute_id.as_str(), r.plan.server_id.as_str()), ("wanted", "s"));
    assert_eq!(r.plan.victims, ["d"]);
    // busy all the time (1.0 per GPU: not under half of 2.0): kept
    let (f, view) = full_fleet_and_a_wanted_chute(1.0);
    assert_eq!(s.rebalance(&f, &view, now, 10.0), None);
    // the heuristic never rebalances
    let (f, view) = full_fleet_and_a_wanted_chute(0.3);
    assert_eq!(Heuristic.rebalance(&f, &view, now, 10.0), None);
    // a young victim (under 62 minutes active) is kept
    let (mut f, view) = full_fleet_and_a_wanted_chute(0.3);
    f.deployments[0].activated_at = Some(now - Duration::minutes(30));
    assert_eq!(s.rebalance(&f, &view, now, 10.0), None);
}

#[test]
fn multiplier_rebalance_takes_victims_only_on_gpus_the_chute_runs_on_any_of_its_models() {
    let s = Multiplier::default();
    let now = Utc::now();
    // the idle victim sits on an h100; a chute that runs only on a100s cannot use it
    let (mut f, view) = full_fleet_and_a_wanted_chute(0.3);
    f.chutes.get_mut("wanted").unwrap().supported_gpus = vec!["a100".into()];
    assert_eq!(s.rebalance(&f, &view, now, 10.0), None);
    // one that also runs on h100s (its second model) finds it
    f.chutes.get_mut("wanted").unwrap().supported_gpus = vec!["a100".into(), "h100".into()];
    let r = s.rebalance(&f, &view, now, 10.0).unwrap();
    assert_eq!((r.chute_id.as_str(), r.plan.server_id.as_str()), ("wanted", "s"));
    assert_eq!(r.plan.victims, ["d"]);
    // and an unverified GPU offers nothing to rebalance onto
    for g in &mut f.servers[0].gpus {
        g.verified = false;
    }
    assert_eq!(s.rebalance(&f, &view, now, 10.0), None);
}

#[test]
fn multiplier_launches_more_than_one_instance_while_unserved_demand_remains() {
    let (mut f, view) = full_fleet_and_a_wanted_chute(0.3);
    f.servers.push(server("t", "h100", 8, 1.0));
    // one instance of `wanted` launching; the hour left 2 instances' worth unserved
    place(&mut f, "p1", "wanted", "t", 1, 1);
    let p = f.deployments.len() - 1;
    f.deployments[p].activated_at = None;
    f.deployments[p].active = false;
    let s = Multiplier::default();
    let ids = |f: &FleetSnapshot| -> Vec<String> {
        s.autoscale(f, &view, 10.0).into_iter().map(|c| c.chute_id).collect()
    };
    assert!(ids(&f).contains(&"wanted".to_owned()), "{:?}", ids(&f));
    // two launching cover it: no third
    place(&mut f, "p2", "wanted", "t", 1, 1);
    let p = f.deployments.len() - 1;
    f.deployments[p].activated_at = None;
    f.deployments[p].active = false;
    assert!(!ids(&f).contains(&"wanted".to_owned()), "{:?}", ids(&f));
}

#[test]
fn a_chute_is_placed_only_on_servers_of_its_own_validator() {
    let theirs = ServerSnap { validator: "5Other".into(), ..server("cheap-other", "h100", 8, 1.0) };
    let ours = server("ours", "h100", 8, 2.0);
    let c = chute("c", &["h100"], 1);
    let mut f = fleet_of(vec![theirs, ours], [c.clone(), chute("busy", &["h100"], 8)]);
    let view = ValidatorView::default();
    for strategy in [&Heuristic as &dyn Strategy, &Multiplier::default()] {
        assert_eq!(
            strategy.scale_up_server(&c, &f, 10.0).as_deref(),
            Some("ours"),
            "{}: the cheaper server is another validator's",
            strategy.name()
        );
    }
    let mut cache = PlacementCache::new(&f, 10.0);
    assert_eq!(cache.pick(&c).map(|s| s.server_id.as_str()), Some("ours"));
    // Full: preemption looks for room on this validator's servers only.
    place(&mut f, "d-ours", "busy", "ours", 8, 120);
    assert!(preemption_servers(&f, &c, &c.supported_gpus, 10.0).iter().all(|s| s.server_id == "ours"));
    let plan = Heuristic.preempt(&c, &f, &view, &Default::default(), Utc::now(), 10.0);
    assert!(plan.as_ref().is_none_or(|p| p.server_id == "ours"), "{plan:?}");
}

#[test]
fn a_fleet_without_some_deployments_has_their_gpus_and_disk_free() {
    let mut f = FleetSnapshot {
        servers: vec![server("a", "h100", 4, 2.0), server("b", "h100", 2, 2.0)],
        ..FleetSnapshot::default()
    };
    f.servers[1].disk_available_gb = None;
    place(&mut f, "d1", "x", "a", 2, 120);
    place(&mut f, "d2", "y", "a", 1, 120);
    place(&mut f, "d3", "x", "b", 2, 120);
    let h100 = ["h100".to_owned()];

    f.without_deployments(&["d1".to_owned(), "d3".to_owned()], |d| if d == "d1" { 40.0 } else { 7.0 });
    let ids: Vec<&str> = f.deployments.iter().map(|d| d.deployment_id.as_str()).collect();
    assert_eq!(ids, ["d2"]);
    let a = f.server("a").unwrap();
    assert_eq!((a.free_gpus(&h100), a.disk_available_gb), (3, Some(540.0)));
    let b = f.server("b").unwrap();
    assert_eq!((b.free_gpus(&h100), b.disk_available_gb), (2, None), "an unknown disk stays unknown");
}
