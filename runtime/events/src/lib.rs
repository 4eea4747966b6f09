//! The miner's durable event bus.
//!
//! The original miner used Redis pub/sub (`miner_events`): an event published while
//! Gepetto was restarting, or while Redis blipped, was gone. Here every accepted event
//! is appended to a Redis **Stream** (same name, `miner_events`) and Gepetto reads it
//! through a consumer group, acknowledging each entry only after its handler
//! succeeded:
//!
//! * [`Producer`]: appends events. It never blocks a caller on Redis being down: a
//!   background appender keeps a bounded in-memory queue and retries forever with a
//!   capped, jittered backoff. Each event carries a random `event_id`, and the append
//!   is a Lua script that remembers that id for a day, so a retry after a lost reply
//!   does not append the event twice.
//! * [`Consumer`]: `XREADGROUP` + `XACK` after the handler returns `Ok`; on start it
//!   re-reads its own unacknowledged entries, and it periodically claims entries that
//!   another (dead) consumer left pending too long (`XAUTOCLAIM`). An entry whose
//!   handler failed [`StreamConfig::max_deliveries`] times is moved to the dead-letter
//!   stream (`miner_events:dead`) so one poison event cannot stall the bus.
//!
//! Delivery is **at least once**: a handler can see the same event twice (it ran, the
//! consumer died before `XACK`). Handlers must be idempotent; [`Delivery::event_id`]
//! is a stable key for that.
//!
//! Wire shape of an entry: field `event` holds the JSON the original published on the
//! channel, `{"event_type": …, "event_data": {…}}`; field `event_id` holds the dedupe key.

mod backoff;
mod conn;
mod consumer;
mod event;
pub mod payloads;
mod producer;

pub use backoff::Backoff;
pub use conn::StreamConfig;
pub use consumer::{Consumer, Delivery};
pub use event::MinerEvent;
pub use payloads::Event;
pub use producer::Producer;

/// Errors of the event bus. Messages name the Redis URL without its password.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    #[error("bad Redis URL {url}: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("the event queue is full ({capacity} events wait for Redis); event not accepted")]
    BufferFull { capacity: usize },
    #[error("the event producer has stopped; event not accepted")]
    Closed,
    #[error("event could not be encoded as JSON: {0}")]
    Encode(#[from] serde_json::Error),
    #[error("Redis at {url}: {source}")]
    Redis {
        url: String,
        #[source]
        source: redis::RedisError,
    },
}
