use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One event on the bus, in the shape the original published on `miner_events`:
/// `{"event_type": "<reason>", "event_data": {…}}`. Validator broadcasts carry the
/// validator's payload plus `"validator": "<validator hotkey>"` in `event_data`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MinerEvent {
    pub event_type: String,
    pub event_data: Value,
}

impl MinerEvent {
    pub fn new(event_type: impl Into<String>, event_data: Value) -> Self {
        MinerEvent { event_type: event_type.into(), event_data }
    }
}
