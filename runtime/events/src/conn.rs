use std::time::Duration;

use redis::AsyncConnectionConfig;
use redis::aio::MultiplexedConnection;

use crate::EventsError;

/// Where the bus lives and how it behaves. `Default` is what the miner runs with;
/// tests shorten the timings.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Stream key (default `miner_events`, the original channel's name).
    pub stream: String,
    /// Approximate cap on the stream's length (`XADD MAXLEN ~`). Entries are
    /// trimmed oldest first; keep it far above what Gepetto can fall behind.
    pub max_len: usize,
    /// Events the producer queues in memory while Redis is unreachable.
    pub buffer: usize,
    /// How long the producer remembers an `event_id` to make retried appends idempotent.
    pub dedupe_ttl: Duration,
    /// `XREADGROUP … BLOCK`: how long one read waits for new entries.
    pub block: Duration,
    /// Entries pending longer than this are claimed from whichever consumer holds
    /// them (that consumer is presumed dead, or its handler failed).
    pub claim_idle: Duration,
    /// How often the consumer looks for such entries.
    pub claim_every: Duration,
    /// Deliveries after which a failing entry goes to the dead-letter stream.
    pub max_deliveries: u64,
    /// Entries per read.
    pub batch: usize,
    /// Reconnect backoff bounds.
    pub retry_initial: Duration,
    pub retry_cap: Duration,
    /// Time allowed for a non-blocking command's reply.
    pub command_timeout: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            stream: "miner_events".into(),
            max_len: 100_000,
            buffer: 100_000,
            dedupe_ttl: Duration::from_secs(24 * 3600),
            block: Duration::from_secs(5),
            claim_idle: Duration::from_secs(60),
            claim_every: Duration::from_secs(15),
            max_deliveries: 10,
            batch: 32,
            retry_initial: Duration::from_millis(100),
            retry_cap: Duration::from_secs(10),
            command_timeout: Duration::from_secs(5),
        }
    }
}

impl StreamConfig {
    pub fn dead_letter_stream(&self) -> String {
        format!("{}:dead", self.stream)
    }

    pub(crate) fn dedupe_key_prefix(&self) -> String {
        format!("{}:eid:", self.stream)
    }
}

/// A parsed Redis URL plus a printable form with any password masked.
#[derive(Clone)]
pub(crate) struct Endpoint {
    pub client: redis::Client,
    pub shown: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Self, EventsError> {
        let shown = redact(url);
        let client = redis::Client::open(url)
            .map_err(|e| EventsError::BadUrl { url: shown.clone(), reason: e.to_string() })?;
        Ok(Endpoint { client, shown })
    }

    /// A fresh connection. `response_timeout` must exceed any `BLOCK` sent on it:
    /// redis 1.x defaults to 500 ms, which would cut every blocking read short.
    pub async fn connect(&self, response_timeout: Duration) -> Result<MultiplexedConnection, EventsError> {
        let cfg = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(response_timeout));
        self.client.get_multiplexed_async_connection_with_config(&cfg).await.map_err(|e| self.err(e))
    }

    pub fn err(&self, source: redis::RedisError) -> EventsError {
        EventsError::Redis { url: self.shown.clone(), source }
    }
}

/// The URL with its password masked, so it can be logged (one home: `chutes-protocol`).
pub(crate) fn redact(url: &str) -> String {
    chutes_protocol::redact::redact_url(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_reach_messages() {
        assert_eq!(redact("redis://:hunter2@10.0.0.1:6379/0"), "redis://:***@10.0.0.1:6379/0");
        assert_eq!(redact("redis://u:hunter2@h/"), "redis://u:***@h/");
        assert_eq!(redact("redis://h:6379/0?password=hunter2"), "redis://h:6379/0?password=***");
        assert_eq!(redact("redis://127.0.0.1:6379/"), "redis://127.0.0.1:6379/");
        let err = Endpoint::parse("redis://:hunter2@[bad").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
