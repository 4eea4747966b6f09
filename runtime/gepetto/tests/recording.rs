#![allow(clippy::unwrap_used, clippy::expect_used)]
//! `GEPETTO_RECORD_TRACE`: a real Gepetto, driven by validator events and autoscaler
//! ticks against the emulators, records a trace; the simulator replays it.

mod common;

use std::io::BufReader;
use std::sync::Arc;

use common::*;
use miner_events::Event;
use miner_events::payloads::*;
use miner_gepetto::{Gepetto, Multiplier};
use miner_trace::{Record, Trace};
use serde_json::json;
use validator_emulator::{ChuteSpec, Traffic};

/// What `f` picks from each event of the trace, in order.
fn pick<'a, T>(trace: &'a Trace, f: impl Fn(&'a Record) -> Option<T>) -> Vec<T> {
    trace.events.iter().filter_map(f).collect()
}

fn read(path: &std::path::Path) -> Trace {
    Trace::read(BufReader::new(std::fs::File::open(path).unwrap())).unwrap()
}

fn traffic(invocations: u64, compute_s: f64) -> Traffic {
    Traffic {
        total_invocations: invocations,
        total_compute_time: compute_s,
        error_count: 0,
        rate_limit_count: 0,
        per_second_price_usd: 0.0,
        total_usage_usd: 0.0,
    }
}

/// Waits until `gepetto`'s node watch sees `node` Ready (or not).
async fn node_seen(gepetto: &Gepetto, node: &str, ready: bool) {
    eventually(&format!("the node watch to see {node} Ready={ready}"), || async {
        gepetto.cluster().nodes()[node]
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && (c.status == "True") == ready))
    })
    .await;
}

fn job(w: &World, job_id: &str, exclude: Vec<String>) -> Event {
    Event::JobCreated(JobCreated {
        job_id: job_id.into(),
        method: None,
        chute_id: "llm".into(),
        image_id: None,
        gpu_count: Some(1),
        compute_multiplier: Some(4.0),
        exclude,
        disk_gb: Some(50),
        validator: w.vhot.clone(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gepetto_records_its_week_and_the_simulator_replays_it() {
    let w = world(Shape {
        servers: 2,
        gpus: 8,
        strategy: Arc::new(Multiplier::default()),
        default_disk_gb: 20,
        ..Shape::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("week.jsonl");
    w.validator.add_image(image(None, "0.3.40"));
    // A chute that exists before Gepetto starts, and one created while it runs.
    w.validator
        .add_chute(ChuteSpec { compute_multiplier: 1.5, ..ChuteSpec::simple("old", "img-1", &["h100"]) });
    w.validator.set_traffic("old", traffic(720, 1800.0));
    w.gepetto.record_to(&path).unwrap();
    let again = w.gepetto.record_to(&path).unwrap_err().to_string();
    assert!(again.contains("already recording") && again.contains("week.jsonl"), "{again}");

    w.gepetto.reconcile_once().await.unwrap();
    w.validator
        .add_chute(ChuteSpec { compute_multiplier: 4.0, ..ChuteSpec::simple("llm", "img-1", &["h100"]) });
    w.twice(&w.created("llm", "v1", false)).await;

    // Our instance of llm goes live, and another miner runs one too.
    let ours =
        w.db.fleet_rows().await.unwrap().deployments.into_iter().find(|d| d.chute_id == "llm").unwrap();
    let config = ours.config_id.clone().unwrap();
    let instance = w.validator.start_chute(&config, "192.0.2.1", 32000, &[&gpu_uuid(0, 0)]).await.unwrap();
    w.twice(&w.instance("created", &instance, Some(&config))).await;
    w.twice(&w.instance("activated", &instance, Some(&config))).await;
    w.other_miner_runs("llm").await;

    w.validator.set_traffic("llm", traffic(3600, 5400.0));
    w.gepetto.autoscale_once().await.unwrap();
    // figures that barely moved are not written again; a real change is
    w.validator.set_traffic("llm", traffic(3600, 5500.0));
    w.gepetto.autoscale_once().await.unwrap();
    w.validator.set_traffic("llm", traffic(3600, 9000.0));
    w.gepetto.autoscale_once().await.unwrap();

    w.twice(&Event::BountyChange(BountyChange {
        chute_id: "llm".into(),
        bounty: Some(100.0),
        validator: w.vhot.clone(),
    }))
    .await;
    w.twice(&job(&w, "job-1", vec![])).await;
    w.twice(&job(&w, "job-2", vec![w.miner.clone()])).await;
    for id in ["job-1", "job-2"] {
        w.twice(&Event::JobDeleted(JobDeleted {
            job_id: id.into(),
            instance_id: None,
            validator: w.vhot.clone(),
        }))
        .await;
    }
    // A rolling update of llm, and a node that goes NotReady and comes back.
    w.validator
        .set_utilization(vec![json!({"chute_id": "llm", "scalable": false, "update_in_progress": true})]);
    assert!(w.kube.set_node_ready(&w.servers[1].0, false));
    node_seen(&w.gepetto, "gpu-1", false).await;
    w.gepetto.autoscale_once().await.unwrap();
    w.validator
        .set_utilization(vec![json!({"chute_id": "llm", "scalable": true, "update_in_progress": false})]);
    assert!(w.kube.set_node_ready(&w.servers[1].0, true));
    node_seen(&w.gepetto, "gpu-1", true).await;
    w.gepetto.autoscale_once().await.unwrap();
    // The operator removes gpu-1 (delivered twice, recorded once).
    w.twice(&Event::ServerDeleted(ServerDeleted { server_id: w.servers[1].1.clone() })).await;

    let trace = read(&path);
    assert_eq!(trace.header.source, "recorded");
    assert_eq!(trace.header.miner, w.miner);
    // This miner's own settings, so the replay ticks and sizes placements as it did.
    assert_eq!((trace.header.validator.autoscale_s, trace.header.validator.default_disk_gb), (15, 20.0));
    let servers: Vec<_> =
        trace.servers.iter().map(|s| (s.server_id.as_str(), s.gpu_model.as_str(), s.gpus)).collect();
    assert_eq!(servers, [(w.servers[0].1.as_str(), "h100", 8), (w.servers[1].1.as_str(), "h100", 8)]);
    assert_eq!(trace.servers[1].hourly_cost, 1.1);
    assert_eq!(trace.servers[0].disk_gb, 2000.0, "the node's ephemeral-storage capacity (2000Gi)");
    let mut chutes: Vec<_> = trace
        .chutes
        .iter()
        .map(|c| (c.chute_id.as_str(), c.gpu_count, c.compute_multiplier, c.job_only))
        .collect();
    chutes.sort_by_key(|c| c.0);
    assert_eq!(
        chutes,
        [("llm", 1, 4.0, false), ("old", 1, 1.5, false)],
        "multipliers from the validator's metrics"
    );
    let old = trace.chutes.iter().find(|c| c.chute_id == "old").unwrap();
    assert_eq!(old.invocation_s, 2.5, "mean compute per invocation from the metrics");
    assert_eq!(old.supported_gpus, ["h100"]);
    assert_eq!(old.created_s, 0, "listed when the recording started: there from the start");

    let demand: Vec<_> = pick(&trace, |e| match e {
        Record::Demand { chute_id, load, .. } if chute_id == "llm" => Some(*load),
        _ => None,
    });
    let at_start = pick(&trace, |e| match e {
        Record::Demand { t, chute_id, load } if chute_id == "old" => Some((*t, *load)),
        _ => None,
    });
    assert_eq!(at_start, [(0, 0.5)], "what the first tick saw is the state at the start (t 0)");
    assert_eq!(
        demand,
        [1.5, 2.5],
        "5400 s then 9000 s of compute in the last hour; 5500 s was too small a step"
    );
    let others: Vec<_> = pick(&trace, |e| match e {
        Record::Others { chute_id, instances, .. } if chute_id == "llm" => Some(*instances),
        _ => None,
    });
    assert_eq!(others, [1], "the other miner's instance; ours is not counted");
    let bounties: Vec<_> = pick(&trace, |e| match e {
        Record::Bounty { chute_id, bounty, .. } => Some((chute_id.as_str(), *bounty)),
        _ => None,
    });
    assert_eq!(bounties, [("llm", 100.0)], "delivered twice, recorded once");
    let jobs: Vec<_> = pick(&trace, |e| match e {
        Record::Job { job_id, compute_multiplier, disk_gb, excluded, .. } => {
            Some((job_id.as_str(), *compute_multiplier, *disk_gb, *excluded))
        }
        _ => None,
    });
    assert_eq!(
        jobs,
        [("job-1", 4.0, 50.0, false), ("job-2", 4.0, 50.0, true)],
        "one line per job, written at its end"
    );
    assert!(
        trace
            .events
            .iter()
            .any(|e| matches!(e, Record::Updating { chute_id, t, until } if chute_id == "llm" && until >= t))
    );
    assert!(
        trace
            .events
            .iter()
            .any(|e| matches!(e, Record::NodeFailure { server_id, .. } if *server_id == w.servers[1].1))
    );
    let removed: Vec<_> = pick(&trace, |e| match e {
        Record::ServerRemoved { server_id, .. } => Some(server_id.as_str()),
        _ => None,
    });
    assert_eq!(removed, [w.servers[1].1.as_str()]);

    // Gepetto stops while a job runs, llm is mid-update again and gpu-0 is NotReady:
    // none of them has ended, so none is in the trace yet.
    w.twice(&job(&w, "job-3", vec![])).await;
    w.validator
        .set_utilization(vec![json!({"chute_id": "llm", "scalable": false, "update_in_progress": true})]);
    assert!(w.kube.set_node_ready(&w.servers[0].0, false));
    node_seen(&w.gepetto, "gpu-0", false).await;
    w.gepetto.autoscale_once().await.unwrap();
    assert_eq!(read(&path).events, trace.events);
    let stopped_at = u64::try_from(chrono::Utc::now().timestamp() - trace.header.start_unix).unwrap();

    // A restarted Gepetto continues the file: with nothing new it writes nothing (no
    // second header, server, chute or unchanged figure); what changes next is appended.
    let before = std::fs::read_to_string(&path).unwrap();
    let shape = Shape { servers: 2, gpus: 8, strategy: Arc::new(Multiplier::default()), ..Shape::default() };
    let restarted = gepetto_on(&w.db, &w.client, &w.validator, &w.vhot, &shape, &w.shutdown).await;
    restarted.record_to(&path).unwrap();
    node_seen(&restarted, "gpu-0", false).await;
    restarted.reconcile_once().await.unwrap();
    restarted.autoscale_once().await.unwrap();
    assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
    w.validator.set_traffic("llm", traffic(3600, 14400.0));
    restarted.autoscale_once().await.unwrap();
    let after = read(&path);
    assert_eq!((after.servers.len(), after.chutes.len()), (2, 2));
    let appended: Vec<_> = after.events.iter().filter(|e| !trace.events.contains(e)).collect();
    assert!(matches!(appended[..], [Record::Demand { load, .. }] if *load == 4.0), "{appended:?}");

    // What was in progress ends after the restart and is written from when it began,
    // before the restart (kept in week.jsonl.open.json meanwhile).
    w.validator
        .set_utilization(vec![json!({"chute_id": "llm", "scalable": true, "update_in_progress": false})]);
    assert!(w.kube.set_node_ready(&w.servers[0].0, true));
    node_seen(&restarted, "gpu-0", true).await;
    restarted.autoscale_once().await.unwrap();
    let deleted = Event::JobDeleted(JobDeleted {
        job_id: "job-3".into(),
        instance_id: None,
        validator: w.vhot.clone(),
    });
    for _ in 0..2 {
        restarted.handle(&deleted).await.unwrap();
    }
    restarted.wait_idle().await;
    let last = read(&path);
    // By position: within a second, this update's line can equal the first one's.
    let ended: Vec<&Record> = last.events[after.events.len()..].iter().collect();
    let pick_ended =
        |f: &dyn Fn(&Record) -> Option<u64>| ended.iter().filter_map(|e| f(e)).collect::<Vec<_>>();
    let updated = pick_ended(&|e| match e {
        Record::Updating { t, chute_id, .. } if chute_id == "llm" => Some(*t),
        _ => None,
    });
    let down = pick_ended(&|e| match e {
        Record::NodeFailure { t, server_id, .. } if *server_id == w.servers[0].1 => Some(*t),
        _ => None,
    });
    let jobs = pick_ended(&|e| match e {
        Record::Job { t, job_id, compute_multiplier, disk_gb, excluded, .. }
            if job_id == "job-3" && (*compute_multiplier, *disk_gb, *excluded) == (4.0, 50.0, false) =>
        {
            Some(*t)
        }
        _ => None,
    });
    assert_eq!(ended.len(), 3, "the update, the outage and the job, once each: {ended:?}");
    for t in [&updated, &down, &jobs] {
        assert!(matches!(t[..], [t] if t <= stopped_at), "begun before the restart: {ended:?}");
    }

    // The simulator replays the recording with every strategy.
    let cmp = miner_simulator::compare(&last, &["heuristic".into(), "multiplier".into()]).unwrap();
    assert_eq!(cmp.source, "recorded");
    assert_eq!((cmp.servers, cmp.gpus, cmp.chutes), (2, 16, 2));
}
