use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use redis::Value;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamPendingCountReply, StreamReadReply};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::conn::{Endpoint, StreamConfig};
use crate::{Backoff, EventsError, MinerEvent};

/// One event handed to a handler.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The stream entry id (`<ms>-<seq>`).
    pub id: String,
    /// Stable per accepted event, across redeliveries: the idempotency key.
    pub event_id: String,
    /// 1 on first delivery; more when a handler failed or a consumer died.
    pub attempt: u64,
    pub event: MinerEvent,
}

/// A member of a consumer group on the event stream.
///
/// Contract for handlers: return `Ok` only once the event's effect is done (the
/// entry is acknowledged then, and never seen again); return `Err` to have it
/// delivered again after [`StreamConfig::claim_idle`]. The same event can arrive more
/// than once (a consumer that died between handling and `XACK`), so handlers must
/// be idempotent, e.g. by checking state before acting or keying on
/// [`Delivery::event_id`]. Entries are handled one at a time, in stream order.
#[derive(Clone)]
pub struct Consumer {
    endpoint: Endpoint,
    cfg: StreamConfig,
    group: String,
    name: String,
    /// Sessions in a row that ended in an error (shared by clones).
    failures: Arc<AtomicU32>,
}

impl std::fmt::Debug for Consumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("redis", &self.endpoint.shown)
            .field("stream", &self.cfg.stream)
            .field("group", &self.group)
            .field("name", &self.name)
            .finish()
    }
}

/// Why a session with Redis ended (other than shutdown): reconnect and resume.
type SessionResult = Result<(), EventsError>;

impl Consumer {
    /// `group` is shared by every Gepetto replica; `consumer_name` must be stable
    /// across restarts of one replica (e.g. the pod name), so a restarted replica
    /// picks up what it had read but not acknowledged.
    pub fn new(
        redis_url: &str,
        group: &str,
        consumer_name: &str,
        cfg: StreamConfig,
    ) -> Result<Consumer, EventsError> {
        Ok(Consumer {
            endpoint: Endpoint::parse(redis_url)?,
            cfg,
            group: group.to_owned(),
            name: consumer_name.to_owned(),
            failures: Arc::new(AtomicU32::new(0)),
        })
    }

    /// Sessions with Redis in a row that ended in an error without making progress;
    /// 0 once one did. The reconnect delay grows with it: for health reports.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Reads and handles events until `shutdown` is cancelled. Never gives up on
    /// Redis: connection failures are retried with a capped, jittered backoff. A
    /// handler that is running when shutdown comes is allowed to finish.
    pub async fn run<H, Fut, E>(&self, mut handler: H, shutdown: CancellationToken)
    where
        H: FnMut(Delivery) -> Fut,
        Fut: Future<Output = Result<(), E>>,
        E: Display,
    {
        let mut retry = Reconnect {
            backoff: Backoff::new(self.cfg.retry_initial, self.cfg.retry_cap),
            failures: &self.failures,
        };
        while !shutdown.is_cancelled() {
            let result = tokio::select! {
                _ = shutdown.cancelled() => break,
                r = self.endpoint.connect(self.cfg.block + self.cfg.command_timeout) => r,
            };
            let outcome = match result {
                Ok(conn) => {
                    let mut session = Session { c: self, conn, handler: &mut handler, shutdown: &shutdown };
                    session.run(&mut retry).await
                }
                Err(e) => Err(e),
            };
            match outcome {
                Ok(()) => break,
                Err(e) => {
                    let delay = retry.failed();
                    tracing::warn!(error = %e, retry_in = ?delay, consumer = %self.name, "event consumer lost Redis");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}

/// The reconnect delay, and the failure count [`Consumer::consecutive_failures`] shows.
struct Reconnect<'a> {
    backoff: Backoff,
    failures: &'a AtomicU32,
}

impl Reconnect<'_> {
    /// The session did real work: the next failure starts from the initial delay.
    fn progressed(&mut self) {
        self.backoff.reset();
        self.failures.store(0, Ordering::Relaxed);
    }

    /// The session ended in an error: the delay before the next one.
    fn failed(&mut self) -> Duration {
        let delay = self.backoff.next_delay();
        self.failures.store(self.backoff.attempts(), Ordering::Relaxed);
        delay
    }
}

/// One connection's worth of consuming; any Redis error ends it and `run` reconnects.
struct Session<'a, H> {
    c: &'a Consumer,
    conn: MultiplexedConnection,
    handler: &'a mut H,
    shutdown: &'a CancellationToken,
}

impl<H, Fut, E> Session<'_, H>
where
    H: FnMut(Delivery) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Display,
{
    async fn run(&mut self, retry: &mut Reconnect<'_>) -> SessionResult {
        self.ensure_group().await?;
        self.own_pending().await?;
        let mut next_claim = Instant::now();
        let mut progressed = false;
        loop {
            if self.shutdown.is_cancelled() {
                return Ok(());
            }
            if Instant::now() >= next_claim {
                self.claim_stale().await?;
                next_claim = Instant::now() + self.c.cfg.claim_every;
            }
            let wait = self.c.cfg.block.min(next_claim.saturating_duration_since(Instant::now()));
            let mut read = redis::cmd("XREADGROUP");
            read.arg("GROUP")
                .arg(&self.c.group)
                .arg(&self.c.name)
                .arg("COUNT")
                .arg(self.c.cfg.batch)
                .arg("BLOCK")
                .arg(wait.as_millis().max(1) as u64)
                .arg("STREAMS")
                .arg(&self.c.cfg.stream)
                .arg(">");
            // Dropping this read on shutdown is safe: anything Redis delivered to it is
            // pending under our name and is re-read on the next start.
            let reply: Option<StreamReadReply> = tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(()),
                r = read.query_async(&mut self.conn) => r.map_err(|e| self.c.endpoint.err(e))?,
            };
            // Reset the backoff only once a whole round worked: group, own pending
            // entries (handled and acked or dead-lettered), a claim pass and a read. A
            // command that fails every time (XAUTOCLAIM before Redis 6.2 or denied by an
            // ACL, a refused XACK or dead-letter XADD, whose entry then comes back first
            // next session) fails before this point, so its delays keep growing. Neither
            // "acked an event" (an idle stream acks nothing) nor "up for a while" (a
            // handler longer than the period, then a refused XACK, would reset each time).
            if !progressed {
                progressed = true;
                retry.progressed();
            }
            for entry in reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids) {
                self.handle(entry, Some(1)).await?;
            }
        }
    }

    /// Creates the group (and the stream) if missing, from the stream's start so
    /// events appended before Gepetto ever ran are not skipped.
    async fn ensure_group(&mut self) -> SessionResult {
        let created: Result<(), redis::RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.c.cfg.stream)
            .arg(&self.c.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut self.conn)
            .await;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => Err(self.c.endpoint.err(e)),
            _ => Ok(()),
        }
    }

    /// Entries this consumer read in an earlier life but never acknowledged.
    async fn own_pending(&mut self) -> SessionResult {
        let mut cursor = "0".to_owned();
        while !self.shutdown.is_cancelled() {
            let reply: Option<StreamReadReply> = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(&self.c.group)
                .arg(&self.c.name)
                .arg("COUNT")
                .arg(self.c.cfg.batch)
                .arg("STREAMS")
                .arg(&self.c.cfg.stream)
                .arg(&cursor)
                .query_async(&mut self.conn)
                .await
                .map_err(|e| self.c.endpoint.err(e))?;
            let entries: Vec<StreamId> = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids).collect();
            let Some(last) = entries.last() else { return Ok(()) };
            cursor = last.id.clone();
            self.handle_batch(entries).await?;
        }
        Ok(())
    }

    /// Takes over entries pending longer than `claim_idle` from any consumer of the
    /// group (a dead replica's, or our own whose handler failed) and handles them.
    async fn claim_stale(&mut self) -> SessionResult {
        let mut cursor = "0-0".to_owned();
        while !self.shutdown.is_cancelled() {
            let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(&self.c.cfg.stream)
                .arg(&self.c.group)
                .arg(&self.c.name)
                .arg(self.c.cfg.claim_idle.as_millis() as u64)
                .arg(&cursor)
                .arg("COUNT")
                .arg(self.c.cfg.batch)
                .query_async(&mut self.conn)
                .await
                .map_err(|e| self.c.endpoint.err(e))?;
            if !reply.claimed.is_empty() {
                tracing::info!(count = reply.claimed.len(), consumer = %self.c.name, "claimed stale events");
            }
            if !reply.deleted_ids.is_empty() {
                // Redis (7+) drops these from the pending list itself: their payload is gone,
                // so there is nothing to dead-letter; say so, loudly, once.
                tracing::error!(count = reply.deleted_ids.len(), ids = ?reply.deleted_ids,
                    "events were trimmed from the stream before any replica handled them: they are lost \
                     (the consumers fell further behind than the stream's MAXLEN)");
            }
            self.handle_batch(reply.claimed).await?;
            if reply.next_stream_id == "0-0" {
                break;
            }
            cursor = reply.next_stream_id;
        }
        Ok(())
    }

    /// Handles redelivered entries, with their delivery counts from `XPENDING`.
    async fn handle_batch(&mut self, entries: Vec<StreamId>) -> SessionResult {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else { return Ok(()) };
        let pending: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(&self.c.cfg.stream)
            .arg(&self.c.group)
            .arg(&first.id)
            .arg(&last.id)
            .arg(entries.len() * 4 + 16)
            .arg(&self.c.name)
            .query_async(&mut self.conn)
            .await
            .map_err(|e| self.c.endpoint.err(e))?;
        let counts: HashMap<String, u64> =
            pending.ids.into_iter().map(|p| (p.id, p.times_delivered as u64)).collect();
        for entry in entries {
            let attempt = counts.get(&entry.id).copied();
            self.handle(entry, attempt).await?;
        }
        Ok(())
    }

    async fn handle(&mut self, entry: StreamId, attempt: Option<u64>) -> SessionResult {
        // After a shutdown request nothing more is started: the rest of a batch stays
        // pending under this consumer's name (unacknowledged) and its next start handles
        // it first, in order. Handling on would race the grace period's SIGKILL.
        if self.shutdown.is_cancelled() {
            return Ok(());
        }
        // Not pending under our name any more (another consumer claimed and acked it).
        let Some(attempt) = attempt else { return Ok(()) };
        let delivery = match parse(&entry) {
            Ok(d) => Delivery { attempt, ..d },
            Err(reason) => return self.dead_letter(&entry, &reason).await,
        };
        if attempt > self.c.cfg.max_deliveries {
            let reason = format!("handler failed {} times", attempt - 1);
            return self.dead_letter(&entry, &reason).await;
        }
        let event_type = delivery.event.event_type.clone();
        // Deploys can take minutes. While the handler runs, keep the entry's idle time
        // low so no other replica's XAUTOCLAIM takes it over and runs it twice at once.
        let heartbeat = keep_claimed(self.conn.clone(), self.c, entry.id.clone());
        let outcome = tokio::select! {
            outcome = (self.handler)(delivery) => outcome,
            never = heartbeat => match never {},
        };
        match outcome {
            Ok(()) => self.ack(&entry.id).await,
            Err(e) => {
                tracing::warn!(
                    id = %entry.id, event_type = %event_type, attempt, error = %e,
                    retry_after = ?self.c.cfg.claim_idle, "event handler failed; left pending"
                );
                Ok(())
            }
        }
    }

    async fn ack(&mut self, id: &str) -> SessionResult {
        redis::cmd("XACK")
            .arg(&self.c.cfg.stream)
            .arg(&self.c.group)
            .arg(id)
            .query_async::<u64>(&mut self.conn)
            .await
            .map(|_| ())
            .map_err(|e| self.c.endpoint.err(e))
    }

    /// Moves an entry that cannot be handled to `<stream>:dead` and acknowledges it,
    /// so one bad event does not stall the bus; an operator can inspect it there.
    async fn dead_letter(&mut self, entry: &StreamId, reason: &str) -> SessionResult {
        tracing::error!(id = %entry.id, reason, "event moved to the dead-letter stream");
        let mut add = redis::cmd("XADD");
        add.arg(self.c.cfg.dead_letter_stream()).arg("MAXLEN").arg("~").arg(self.c.cfg.max_len).arg("*");
        for (field, value) in &entry.map {
            if let Value::BulkString(bytes) = value {
                add.arg(field).arg(bytes.as_slice());
            }
        }
        add.arg("source_id").arg(&entry.id).arg("reason").arg(reason);
        add.query_async::<String>(&mut self.conn).await.map_err(|e| self.c.endpoint.err(e))?;
        self.ack(&entry.id).await
    }
}

/// Re-claims `id` for this consumer every third of `claim_idle` (`XCLAIM … 0 … JUSTID`
/// resets its idle time without counting a delivery). Never returns; dropped when the
/// handler finishes. Failures are ignored: if Redis is away, nobody can claim either.
async fn keep_claimed(mut conn: MultiplexedConnection, c: &Consumer, id: String) -> std::convert::Infallible {
    let every = (c.cfg.claim_idle / 3).max(std::time::Duration::from_millis(10));
    loop {
        tokio::time::sleep(every).await;
        let _: Result<Value, _> = redis::cmd("XCLAIM")
            .arg(&c.cfg.stream)
            .arg(&c.group)
            .arg(&c.name)
            .arg(0)
            .arg(&id)
            .arg("JUSTID")
            .query_async(&mut conn)
            .await;
    }
}

fn field(entry: &StreamId, name: &str) -> Option<String> {
    match entry.map.get(name)? {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn parse(entry: &StreamId) -> Result<Delivery, String> {
    if entry.map.is_empty() {
        return Err("entry was trimmed or deleted before it was handled".into());
    }
    let text = field(entry, "event").ok_or("entry has no text field `event`")?;
    let event: MinerEvent =
        serde_json::from_str(&text).map_err(|e| format!("field `event` is not an event: {e}"))?;
    let event_id = field(entry, "event_id").unwrap_or_else(|| entry.id.clone());
    Ok(Delivery { id: entry.id.clone(), event_id, attempt: 1, event })
}
