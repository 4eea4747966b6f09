use std::sync::Arc;
use std::time::Duration;

use rand::RngCore;
use redis::aio::MultiplexedConnection;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use crate::conn::{Endpoint, StreamConfig};
use crate::{Backoff, EventsError, MinerEvent};

/// Appends the event unless its `event_id` was appended before (within the dedupe
/// TTL), and returns the entry's stream id either way. One script, so "appended"
/// and "remembered" cannot be split by a crash: a producer that lost the reply
/// retries and gets the first id back instead of a duplicate entry.
const APPEND: &str = r"
local prev = redis.call('GET', KEYS[2])
if prev then return prev end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'event', ARGV[2], 'event_id', ARGV[1])
redis.call('SET', KEYS[2], id, 'EX', ARGV[4])
return id
";

enum Job {
    Append(Append),
    Flush(oneshot::Sender<()>),
}

/// Appends events to the stream. Cheap to clone; all clones share one queue and
/// one background appender, so events keep the order they were accepted in.
///
/// "Accepted" means queued in this process: the appender retries until Redis has
/// the entry, however long Redis is away. Only a crash of this process while
/// Redis is away loses queued events; callers that must know an event is durable
/// (an HTTP reply that promises Gepetto will act) use [`Producer::publish_confirmed`].
///
/// The bound (`StreamConfig::buffer`) counts every accepted event that is not yet
/// in Redis, including the batch the appender holds while it retries. Each event
/// carries a semaphore permit from `publish` until Redis confirmed it, so with
/// Redis away a buffer of N accepts exactly N events, whatever the appender is
/// doing at that moment. (A bounded channel alone would let the appender's
/// in-hand batch escape the count.)
#[derive(Clone)]
pub struct Producer {
    tx: mpsc::UnboundedSender<Job>,
    capacity: usize,
    stream: String,
    /// One permit per event accepted and not yet in Redis.
    room: Arc<Semaphore>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer").field("stream", &self.stream).field("queued", &self.queued()).finish()
    }
}

impl Producer {
    /// Starts the appender for `redis_url`. Does not wait for Redis: the miner API
    /// must come up even while Redis is still starting. Needs a tokio runtime.
    pub fn connect(redis_url: &str, cfg: StreamConfig) -> Result<Producer, EventsError> {
        let endpoint = Endpoint::parse(redis_url)?;
        let capacity = cfg.buffer.max(1);
        let (tx, rx) = mpsc::unbounded_channel();
        let stream = cfg.stream.clone();
        let room = Arc::new(Semaphore::new(capacity));
        tokio::spawn(append_loop(endpoint, cfg, rx, room.clone(), capacity));
        Ok(Producer { tx, capacity, stream, room })
    }

    /// Queues `event`, waiting for room if `buffer` events are already unsent.
    /// Returns the event's dedupe id.
    pub async fn publish(&self, event: &MinerEvent) -> Result<String, EventsError> {
        let permit = self.room.clone().acquire_owned().await.map_err(|_| EventsError::Closed)?;
        let (job, event_id) = job(event, None, permit)?;
        self.tx.send(job).map_err(|_| EventsError::Closed)?;
        Ok(event_id)
    }

    /// Queues `event` or fails at once with [`EventsError::BufferFull`] when
    /// `buffer` events are already accepted and not yet in Redis.
    pub fn try_publish(&self, event: &MinerEvent) -> Result<String, EventsError> {
        let permit = self.room.clone().try_acquire_owned().map_err(|e| match e {
            tokio::sync::TryAcquireError::NoPermits => EventsError::BufferFull { capacity: self.capacity },
            tokio::sync::TryAcquireError::Closed => EventsError::Closed,
        })?;
        let (job, event_id) = job(event, None, permit)?;
        self.tx.send(job).map_err(|_| EventsError::Closed)?;
        Ok(event_id)
    }

    /// Queues `event` and waits until Redis has appended it; returns its stream id.
    /// If the caller stops waiting (timeout), the event still gets appended.
    pub async fn publish_confirmed(&self, event: &MinerEvent) -> Result<String, EventsError> {
        let permit = self.room.clone().acquire_owned().await.map_err(|_| EventsError::Closed)?;
        let (done_tx, done_rx) = oneshot::channel();
        let (job, _) = job(event, Some(done_tx), permit)?;
        self.tx.send(job).map_err(|_| EventsError::Closed)?;
        done_rx.await.map_err(|_| EventsError::Closed)
    }

    /// Waits until every event queued before this call is in Redis.
    pub async fn flush(&self) -> Result<(), EventsError> {
        let (done_tx, done_rx) = oneshot::channel();
        self.tx.send(Job::Flush(done_tx)).map_err(|_| EventsError::Closed)?;
        done_rx.await.map_err(|_| EventsError::Closed)
    }

    /// Events accepted but not yet in Redis (queued plus the batch being retried).
    pub fn queued(&self) -> usize {
        self.capacity.saturating_sub(self.room.available_permits())
    }
}

fn job(
    event: &MinerEvent,
    done: Option<oneshot::Sender<String>>,
    permit: OwnedSemaphorePermit,
) -> Result<(Job, String), EventsError> {
    let payload = serde_json::to_string(event)?;
    let mut id = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut id);
    let event_id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    Ok((Job::Append(Append { event_id: event_id.clone(), payload, done, _permit: permit }), event_id))
}

/// Appends sent in one pipeline: Redis fsyncs its AOF once per event-loop pass, so
/// a batch costs about one fsync instead of one per event.
const BATCH: usize = 64;

struct Append {
    event_id: String,
    payload: String,
    done: Option<oneshot::Sender<String>>,
    /// Held until Redis confirmed the append; dropping it makes room for one more.
    _permit: OwnedSemaphorePermit,
}

async fn append_loop(
    endpoint: Endpoint,
    cfg: StreamConfig,
    mut rx: mpsc::UnboundedReceiver<Job>,
    room: Arc<Semaphore>,
    capacity: usize,
) {
    let mut conn: Option<MultiplexedConnection> = None;
    let mut backoff = Backoff::new(cfg.retry_initial, cfg.retry_cap);
    while let Some(first) = rx.recv().await {
        let mut batch = Vec::new();
        let mut flushes = Vec::new();
        let mut next = Some(first);
        // Take what is already queued, up to a flush marker (it answers after the batch).
        while let Some(job) = next.take() {
            match job {
                Job::Append(append) => batch.push(append),
                Job::Flush(done) => {
                    flushes.push(done);
                    break;
                }
            }
            if batch.len() < BATCH {
                next = rx.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let unsent = || capacity.saturating_sub(room.available_permits());
            let ids = append_batch(&endpoint, &cfg, &mut conn, &mut backoff, &batch, &unsent).await;
            // Each append's permit is released here, after Redis confirmed it.
            for (append, id) in batch.into_iter().zip(ids) {
                if let Some(done) = append.done {
                    let _ = done.send(id);
                }
            }
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

/// Appends `batch` in one pipeline, retrying the whole batch until Redis takes it.
/// Retrying entries that did get appended is harmless: the script returns their
/// first stream id. Returns the stream ids in batch order.
async fn append_batch(
    endpoint: &Endpoint,
    cfg: &StreamConfig,
    conn: &mut Option<MultiplexedConnection>,
    backoff: &mut Backoff,
    batch: &[Append],
    unsent: &(dyn Fn() -> usize + Sync),
) -> Vec<String> {
    let dedupe_prefix = cfg.dedupe_key_prefix();
    let ttl = cfg.dedupe_ttl.as_secs().max(1);
    loop {
        let result = match conn.as_mut() {
            Some(c) => {
                let mut pipe = redis::pipe();
                for a in batch {
                    pipe.cmd("EVAL")
                        .arg(APPEND)
                        .arg(2)
                        .arg(&cfg.stream)
                        .arg(format!("{dedupe_prefix}{}", a.event_id))
                        .arg(&a.event_id)
                        .arg(&a.payload)
                        .arg(cfg.max_len)
                        .arg(ttl);
                }
                pipe.query_async::<Vec<String>>(c).await.map_err(|e| endpoint.err(e))
            }
            None => match endpoint.connect(cfg.command_timeout).await {
                Ok(c) => {
                    *conn = Some(c);
                    continue;
                }
                Err(e) => Err(e),
            },
        };
        match result {
            Ok(ids) if ids.len() == batch.len() => {
                backoff.reset();
                return ids;
            }
            outcome => {
                *conn = None;
                let delay = backoff.next_delay();
                // Every failure is worth a line at first; later ones every tenth.
                if backoff.attempts() <= 3 || backoff.attempts().is_multiple_of(10) {
                    let error = match outcome {
                        Err(e) => e.to_string(),
                        Ok(ids) => format!("{} replies for {} appends", ids.len(), batch.len()),
                    };
                    tracing::warn!(
                        %error, queued = unsent(), retry_in = ?delay,
                        "events not yet appended to the stream; retrying"
                    );
                }
                tokio::time::sleep(delay.max(Duration::from_millis(1))).await;
            }
        }
    }
}
