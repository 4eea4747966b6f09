//! The bus against a real Redis (lab-hosts), including Redis and consumer
//! crashes mid-stream. Counts are printed so a run documents what it measured.
#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: panics are the failure report

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lab_hosts::Redis;
use miner_events::{Consumer, Delivery, MinerEvent, Producer, StreamConfig};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

fn fast() -> StreamConfig {
    StreamConfig {
        block: Duration::from_millis(200),
        claim_idle: Duration::from_millis(500),
        claim_every: Duration::from_millis(200),
        retry_initial: Duration::from_millis(20),
        retry_cap: Duration::from_millis(300),
        command_timeout: Duration::from_secs(2),
        ..StreamConfig::default()
    }
}

fn event(n: usize) -> MinerEvent {
    MinerEvent::new(
        "chute_created",
        json!({"chute_id": format!("c-{n}"), "version": "v1", "job_only": false, "validator": "5Val"}),
    )
}

/// `XPENDING key group` summary: (count, smallest id, largest id, per-consumer counts).
type PendingSummary = (u64, Option<String>, Option<String>, Option<Vec<(String, String)>>);

async fn redis_cmd<T: redis::FromRedisValue>(url: &str, cmd: &mut redis::Cmd) -> T {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    cmd.query_async(&mut conn).await.unwrap()
}

/// Runs a consumer whose handler forwards every delivery to the returned channel.
fn spawn_collector(
    url: &str,
    name: &str,
    cfg: StreamConfig,
) -> (mpsc::UnboundedReceiver<Delivery>, CancellationToken, tokio::task::JoinHandle<()>) {
    let consumer = Consumer::new(url, "gepetto", name, cfg).unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move {
        consumer
            .run(
                move |d: Delivery| {
                    let tx = tx.clone();
                    async move { tx.send(d).map_err(|e| e.to_string()) }
                },
                s,
            )
            .await
    });
    (rx, stop, task)
}

async fn collect_until(
    rx: &mut mpsc::UnboundedReceiver<Delivery>,
    want: &BTreeSet<String>,
    secs: u64,
) -> Vec<Delivery> {
    let mut got = Vec::new();
    let mut seen = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    while !want.is_subset(&seen) {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(d)) => {
                seen.insert(d.event_id.clone());
                got.push(d);
            }
            _ => break,
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_arrive_in_order_exactly_as_published_and_are_acknowledged() {
    let redis = Redis::start().unwrap();
    let producer = Producer::connect(&redis.url(), fast()).unwrap();
    let mut ids = BTreeSet::new();
    for n in 0..40 {
        ids.insert(producer.publish(&event(n)).await.unwrap());
    }
    let stream_id = producer
        .publish_confirmed(&MinerEvent::new("server_deleted", json!({"server_id": "s1"})))
        .await
        .unwrap();
    assert!(stream_id.contains('-'), "a stream id: {stream_id}");

    // The entry on the wire keeps the original pub/sub message shape.
    let raw: Vec<(String, Vec<(String, String)>)> = redis_cmd(
        &redis.url(),
        redis::cmd("XRANGE").arg("miner_events").arg("-").arg("+").arg("COUNT").arg(1),
    )
    .await;
    let fields: HashMap<_, _> = raw[0].1.iter().cloned().collect();
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&fields["event"]).unwrap(),
        json!({"event_type": "chute_created", "event_data": {"chute_id": "c-0", "version": "v1", "job_only": false, "validator": "5Val"}})
    );

    let (mut rx, stop, task) = spawn_collector(&redis.url(), "g-0", fast());
    let mut got = collect_until(&mut rx, &ids, 20).await;
    got.extend(tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap());
    assert_eq!(got.len(), 41);
    for (n, d) in got.iter().take(40).enumerate() {
        assert_eq!(d.event, event(n), "in order, unchanged");
        assert_eq!(d.attempt, 1);
    }
    assert_eq!(got[40].event.event_type, "server_deleted");
    assert_eq!(got[40].id, stream_id);
    stop.cancel();
    task.await.unwrap();
    let pending: PendingSummary =
        redis_cmd(&redis.url(), redis::cmd("XPENDING").arg("miner_events").arg("gepetto")).await;
    assert_eq!(pending.0, 0, "every handled entry was acknowledged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_twice_mid_stream_loses_and_duplicates_nothing() {
    let mut redis = Redis::start().unwrap();
    let url = redis.url();
    let producer = Producer::connect(&url, fast()).unwrap();
    let (mut rx, stop, task) = spawn_collector(&url, "g-0", fast());
    const N: usize = 300;
    let p = producer.clone();
    let publisher = tokio::spawn(async move {
        let mut ids = BTreeSet::new();
        for n in 0..N {
            ids.insert(p.publish(&event(n)).await.unwrap());
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
        ids
    });
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(350)).await;
        redis.kill();
        tokio::time::sleep(Duration::from_millis(400)).await;
        redis.restart().unwrap();
    }
    let ids = publisher.await.unwrap();
    assert_eq!(ids.len(), N);
    tokio::time::timeout(Duration::from_secs(30), producer.flush()).await.unwrap().unwrap();
    let got = collect_until(&mut rx, &ids, 30).await;
    stop.cancel();
    task.await.unwrap();

    let handled: BTreeSet<String> = got.iter().map(|d| d.event_id.clone()).collect();
    let xlen: u64 = redis_cmd(&url, redis::cmd("XLEN").arg("miner_events")).await;
    eprintln!(
        "redis killed twice: published {N}, stream entries {xlen}, handled {} deliveries / {} distinct",
        got.len(),
        handled.len()
    );
    assert_eq!(handled, ids, "every accepted event was handled");
    assert_eq!(xlen as usize, N, "retried appends did not duplicate entries");
    // Stream order equals publish order: the producer appends one at a time.
    let order: Vec<&str> =
        got.iter().map(|d| d.event.event_data["chute_id"].as_str().unwrap_or("")).collect();
    let mut dedup = order.clone();
    dedup.dedup();
    let expected: Vec<String> = (0..N).map(|n| format!("c-{n}")).collect();
    let mut first_seen = Vec::new();
    for c in &dedup {
        if !first_seen.contains(c) {
            first_seen.push(*c);
        }
    }
    assert_eq!(first_seen, expected.iter().map(String::as_str).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producer_accepts_while_redis_is_down_and_appends_when_it_returns() {
    let mut redis = Redis::start().unwrap();
    let url = redis.url();
    redis.kill();
    let producer = Producer::connect(&url, fast()).unwrap();
    for n in 0..10 {
        producer.try_publish(&event(n)).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(producer.queued(), 10, "held in memory while Redis is away");
    redis.restart().unwrap();
    tokio::time::timeout(Duration::from_secs(15), producer.flush()).await.unwrap().unwrap();
    assert_eq!(producer.queued(), 0);
    let xlen: u64 = redis_cmd(&url, redis::cmd("XLEN").arg("miner_events")).await;
    assert_eq!(xlen, 10);

    // The bound counts every accepted event not yet in Redis, including the batch
    // the appender holds while it retries: a buffer of 2 accepts exactly 2, however
    // the appender task is scheduled.
    let tiny = Producer::connect("redis://127.0.0.1:1/", StreamConfig { buffer: 2, ..fast() }).unwrap();
    let first: Vec<_> = (0..2).map(|n| tiny.try_publish(&event(n))).collect();
    assert!(first.iter().all(Result::is_ok), "{first:?}");
    // Let the appender take both into its retry loop, then try again.
    for n in 2..50 {
        let r = tiny.try_publish(&event(n));
        assert!(
            matches!(r, Err(miner_events::EventsError::BufferFull { capacity: 2 })),
            "a full buffer refuses instead of growing or dropping silently (attempt {n}): {r:?}"
        );
        assert_eq!(tiny.queued(), 2);
        tokio::task::yield_now().await;
        if n % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
}

/// A handler that blocks forever on one event stands in for a consumer killed
/// mid-handler: the entry was read, never acknowledged.
fn spawn_stuck_consumer(
    url: &str,
    name: &str,
    cfg: StreamConfig,
    stuck_on: &'static str,
    seen: Arc<Mutex<Vec<String>>>,
) -> tokio::task::JoinHandle<()> {
    let consumer = Consumer::new(url, "gepetto", name, cfg).unwrap();
    tokio::spawn(async move {
        consumer
            .run(
                move |d: Delivery| {
                    let seen = seen.clone();
                    async move {
                        let chute = d.event.event_data["chute_id"].as_str().unwrap_or("").to_owned();
                        seen.lock().unwrap().push(chute.clone());
                        if chute == stuck_on {
                            std::future::pending::<()>().await;
                        }
                        Ok::<(), String>(())
                    }
                },
                CancellationToken::new(),
            )
            .await
    })
}

/// Waits (30 s at most) until a handler has been handed `chute`: how long a consumer takes
/// to connect and read is the machine's business, not the test's.
async fn wait_for_chute(seen: &Mutex<Vec<String>>, chute: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !seen.lock().unwrap().iter().any(|c| c == chute) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{chute} never reached a handler: {:?}",
            seen.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_consumers_pending_events_are_claimed_by_another_and_by_itself_on_restart() {
    let redis = Redis::start().unwrap();
    let url = redis.url();
    let producer = Producer::connect(&url, fast()).unwrap();
    let mut ids = BTreeSet::new();
    for n in 0..10 {
        ids.insert(producer.publish(&event(n)).await.unwrap());
    }
    producer.flush().await.unwrap();

    // Consumer g-a dies while handling c-3; c-0..c-2 were acknowledged.
    let seen = Arc::new(Mutex::new(Vec::new()));
    let slow_claims = StreamConfig { claim_idle: Duration::from_secs(3600), ..fast() };
    let a = spawn_stuck_consumer(&url, "g-a", slow_claims.clone(), "c-3", seen.clone());
    wait_for_chute(&seen, "c-3").await;
    a.abort();
    let _ = a.await;
    assert_eq!(*seen.lock().unwrap(), ["c-0", "c-1", "c-2", "c-3"]);

    // Restarted under the same name, it re-reads what it held at once (no claim delay).
    let seen2 = Arc::new(Mutex::new(Vec::new()));
    let a2 = spawn_stuck_consumer(&url, "g-a", slow_claims, "c-6", seen2.clone());
    wait_for_chute(&seen2, "c-6").await;
    a2.abort();
    let _ = a2.await;
    assert_eq!(seen2.lock().unwrap()[0], "c-3", "its own pending entry first: {:?}", seen2.lock().unwrap());

    // It dies again on c-6; another replica claims that after claim_idle.
    let (mut rx, stop, task) = spawn_collector(&url, "g-b", fast());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while got.iter().all(|d: &Delivery| d.event.event_data["chute_id"] != "c-9")
        || got.iter().all(|d: &Delivery| d.event.event_data["chute_id"] != "c-6")
    {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(d)) => got.push(d),
            _ => break,
        }
    }
    stop.cancel();
    task.await.unwrap();
    let c6 = got.iter().find(|d| d.event.event_data["chute_id"] == "c-6").expect("c-6 claimed by g-b");
    assert!(c6.attempt >= 2, "a redelivery says so: attempt {}", c6.attempt);
    let mut all: BTreeSet<String> = BTreeSet::new();
    for c in seen.lock().unwrap().iter().chain(seen2.lock().unwrap().iter()) {
        all.insert(c.clone());
    }
    for d in &got {
        all.insert(d.event.event_data["chute_id"].as_str().unwrap().to_owned());
    }
    eprintln!("consumer crash: {} events, handled by the three lives: {}", ids.len(), all.len());
    assert_eq!(all.len(), 10, "{all:?}");
    let pending: PendingSummary =
        redis_cmd(&url, redis::cmd("XPENDING").arg("miner_events").arg("gepetto")).await;
    assert_eq!(pending.0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_event_is_retried_then_dead_lettered_without_blocking_the_rest() {
    let redis = Redis::start().unwrap();
    let url = redis.url();
    let producer = Producer::connect(&url, fast()).unwrap();
    producer.publish(&MinerEvent::new("job_created", json!({"job_id": "poison"}))).await.unwrap();
    for n in 0..5 {
        producer.publish(&event(n)).await.unwrap();
    }
    producer.flush().await.unwrap();
    let cfg = StreamConfig {
        max_deliveries: 3,
        claim_idle: Duration::from_millis(150),
        claim_every: Duration::from_millis(100),
        ..fast()
    };
    let consumer = Consumer::new(&url, "gepetto", "g-0", cfg).unwrap();
    let attempts = Arc::new(Mutex::new(Vec::new()));
    let handled = Arc::new(Mutex::new(Vec::new()));
    let stop = CancellationToken::new();
    let (a, h, s) = (attempts.clone(), handled.clone(), stop.clone());
    let task = tokio::spawn(async move {
        consumer
            .run(
                move |d: Delivery| {
                    let (a, h) = (a.clone(), h.clone());
                    async move {
                        if d.event.event_type == "job_created" {
                            a.lock().unwrap().push(d.attempt);
                            return Err("the validator said 500".to_owned());
                        }
                        h.lock().unwrap().push(d.event.event_data["chute_id"].as_str().unwrap().to_owned());
                        Ok(())
                    }
                },
                s,
            )
            .await
    });
    // Until the failing event is dead-lettered and the rest handled, then two more claim
    // periods in which a fourth attempt would show.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let dead: u64 = redis_cmd(&url, redis::cmd("XLEN").arg("miner_events:dead")).await;
        if dead > 0 && handled.lock().unwrap().len() == 5 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not dead-lettered in time: {dead} dead, handled {:?}, attempts {:?}",
            handled.lock().unwrap(),
            attempts.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.cancel();
    task.await.unwrap();
    assert_eq!(handled.lock().unwrap().len(), 5, "the rest flowed past the failing event");
    assert_eq!(*attempts.lock().unwrap(), [1, 2, 3], "ran max_deliveries times, then stopped");
    let dead: Vec<(String, Vec<(String, String)>)> =
        redis_cmd(&url, redis::cmd("XRANGE").arg("miner_events:dead").arg("-").arg("+")).await;
    assert_eq!(dead.len(), 1);
    let fields: HashMap<_, _> = dead[0].1.iter().cloned().collect();
    assert!(fields["event"].contains("poison"));
    assert_eq!(fields["reason"], "handler failed 3 times");
    let pending: PendingSummary =
        redis_cmd(&url, redis::cmd("XPENDING").arg("miner_events").arg("gepetto")).await;
    assert_eq!(pending.0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_recovers_when_redis_comes_back_empty() {
    let redis = Redis::start().unwrap();
    let url = redis.url();
    let producer = Producer::connect(&url, fast()).unwrap();
    let (mut rx, stop, task) = spawn_collector(&url, "g-0", fast());
    let first = BTreeSet::from([producer.publish(&event(1)).await.unwrap()]);
    assert_eq!(collect_until(&mut rx, &first, 10).await.len(), 1);

    // Redis lost everything (a pod restarted without its volume): stream and group are gone.
    let () = redis_cmd(&url, &mut redis::cmd("FLUSHALL")).await;
    let mut later = BTreeSet::new();
    for n in 2..6 {
        later.insert(producer.publish(&event(n)).await.unwrap());
    }
    let got = collect_until(&mut rx, &later, 15).await;
    stop.cancel();
    task.await.unwrap();
    let ids: BTreeSet<String> = got.iter().map(|d| d.event_id.clone()).collect();
    assert_eq!(ids, later, "the group was re-created and nothing appended afterwards was skipped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_handler_keeps_its_event_from_other_replicas() {
    let redis = Redis::start().unwrap();
    let url = redis.url();
    let producer = Producer::connect(&url, fast()).unwrap();
    producer.publish_confirmed(&event(1)).await.unwrap();

    // Replica A holds c-1 until the test lets it go.
    let started = Arc::new(Mutex::new(0u32));
    let release = CancellationToken::new();
    let consumer = Consumer::new(&url, "gepetto", "g-a", fast()).unwrap();
    let stop_a = CancellationToken::new();
    let (s, st, rel) = (stop_a.clone(), started.clone(), release.clone());
    let a = tokio::spawn(async move {
        consumer
            .run(
                move |d: Delivery| {
                    let (st, rel) = (st.clone(), rel.clone());
                    async move {
                        if d.event.event_data["chute_id"] == "c-1" {
                            *st.lock().unwrap() += 1;
                            rel.cancelled().await;
                        }
                        Ok::<(), String>(())
                    }
                },
                s,
            )
            .await
    });
    // B starts once A holds the event: started earlier, B could simply read it first.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while *started.lock().unwrap() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "A never started the event");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Replica B claims stale entries every 200 ms. It is reading (it gets c-2, which
    // A, busy, cannot take) before the four claim_idle periods it has to take c-1 count.
    let (mut rx_b, stop_b, b) = spawn_collector(&url, "g-b", fast());
    producer.publish_confirmed(&event(2)).await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(30), rx_b.recv()).await.unwrap().unwrap();
    assert_eq!(first.event.event_data["chute_id"], "c-2", "B took c-1 while A held it");
    tokio::time::sleep(Duration::from_millis(2000)).await;
    release.cancel();
    stop_a.cancel();
    stop_b.cancel();
    a.await.unwrap();
    b.await.unwrap();
    assert_eq!(*started.lock().unwrap(), 1);
    assert!(rx_b.try_recv().is_err(), "B must not run the event A is still handling");
    let pending: PendingSummary =
        redis_cmd(&url, redis::cmd("XPENDING").arg("miner_events").arg("gepetto")).await;
    assert_eq!(pending.0, 0, "A acknowledged c-1 and B c-2");
}

/// A command that fails in every session (XAUTOCLAIM here, refused by an ACL as by a
/// Redis older than 6.2) must not reset the reconnect backoff: the consumer would
/// reconnect ~10 times a second forever. The count of failures in a row is what the
/// backoff grows by (delay n is at least `retry_initial * 2^(n-2)`), so it reaching 6
/// shows the delays kept growing; the deadline only bounds a failing run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_failing_in_every_session_keeps_the_reconnect_delay_growing() {
    let redis = Redis::start().unwrap();
    let admin = redis.url();
    let _: () = redis_cmd(
        &admin,
        redis::cmd("ACL").arg(&["SETUSER", "noclaim", "on", ">pw", "~*", "&*", "+@all", "-xautoclaim"][..]),
    )
    .await;
    let limited = format!("redis://noclaim:pw@127.0.0.1:{}/", redis.port());
    let cfg = StreamConfig {
        retry_initial: Duration::from_millis(10),
        retry_cap: Duration::from_secs(60),
        ..fast()
    };
    let consumer = Consumer::new(&limited, "gepetto", "c1", cfg).unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let (consumer, stop) = (consumer.clone(), stop.clone());
        async move { consumer.run(|_d: Delivery| async { Err::<(), _>("no event expected") }, stop).await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while consumer.consecutive_failures() < 6 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the backoff was reset by sessions that did nothing: {} failures in a row",
            consumer.consecutive_failures()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    task.await.unwrap();
    // Each session got as far as XAUTOCLAIM (the group was made) and was refused there.
    let log: Vec<HashMap<String, redis::Value>> = redis_cmd(&admin, redis::cmd("ACL").arg("LOG")).await;
    let refused: i64 = log
        .iter()
        .filter(|e| {
            e.get("username") == Some(&redis::Value::BulkString(b"noclaim".to_vec()))
                && e.get("object") == Some(&redis::Value::BulkString(b"xautoclaim".to_vec()))
        })
        .map(|e| match e.get("count") {
            Some(redis::Value::Int(n)) => *n,
            other => panic!("ACL LOG count: {other:?}"),
        })
        .sum();
    assert!(refused >= 6, "{log:?}");
}

/// A shutdown (SIGTERM) that arrives while a batch is being handled stops after the
/// event in hand: the rest of the batch stays pending under the consumer's name, and the
/// next start (same name) handles it first and in order. Handling on would race the
/// grace period's SIGKILL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_mid_batch_leaves_the_rest_for_the_next_start_in_order() {
    let redis = Redis::start().unwrap();
    let url = redis.url();
    let producer = Producer::connect(&url, fast()).unwrap();
    for n in 0..5 {
        producer.publish(&event(n)).await.unwrap();
    }
    producer.flush().await.unwrap();

    let seen = Arc::new(Mutex::new(Vec::new()));
    let stop = CancellationToken::new();
    let consumer = Consumer::new(&url, "gepetto", "gepetto", fast()).unwrap();
    let (s, stop_in_handler) = (seen.clone(), stop.clone());
    consumer
        .run(
            move |d: Delivery| {
                let (seen, stop) = (s.clone(), stop_in_handler.clone());
                async move {
                    let chute = d.event.event_data["chute_id"].as_str().unwrap_or("").to_owned();
                    if chute == "c-1" {
                        stop.cancel(); // SIGTERM while c-1 is handled
                    }
                    seen.lock().unwrap().push(chute);
                    Ok::<(), String>(())
                }
            },
            stop,
        )
        .await;
    assert_eq!(*seen.lock().unwrap(), ["c-0", "c-1"], "nothing handled after the shutdown");
    let pending: PendingSummary =
        redis_cmd(&url, redis::cmd("XPENDING").arg("miner_events").arg("gepetto")).await;
    assert_eq!(pending.0, 3, "c-2..c-4 wait, unacknowledged");

    let (mut rx, stop, task) = spawn_collector(&url, "gepetto", fast());
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while got.len() < 3 {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(d)) => got.push(d.event.event_data["chute_id"].as_str().unwrap().to_owned()),
            _ => break,
        }
    }
    stop.cancel();
    task.await.unwrap();
    assert_eq!(got, ["c-2", "c-3", "c-4"]);
}
