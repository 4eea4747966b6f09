//! Read-only answers derived from the catalogue and the instances: the `/miner/*`
//! listings, `active_instances`, `inventory`, metrics, utilization, rolling updates.

use serde_json::{Value, json};

use crate::Listing;
use crate::state::{State, iso8601};

impl State {
    /// Items of a `/miner/*` listing for the calling miner.
    pub fn listing(&self, listing: Listing, hotkey: &str) -> Vec<Value> {
        if let Some(items) = self.listing_overrides.get(&listing) {
            return items.clone();
        }
        let cat = &self.catalogue;
        match listing {
            Listing::Chutes => cat.chutes.values().map(|c| cat.chute_wire(c)).collect(),
            Listing::Images => cat.images.values().map(|i| i.to_wire()).collect(),
            Listing::Nodes => self
                .nodes
                .values()
                .filter(|n| n.miner_hotkey == hotkey)
                .map(|n| {
                    let mut v = n.posted.clone();
                    let status = crate::verification::status(self, &n.task_id);
                    v["miner_hotkey"] = json!(n.miner_hotkey);
                    v["server_id"] = json!(n.server_id);
                    v["verified_at"] = if crate::verification::passed(&status) {
                        json!(iso8601(chutes_protocol::auth::now_unix()))
                    } else {
                        Value::Null
                    };
                    v
                })
                .collect(),
            Listing::Instances => self
                .instances
                .values()
                .filter(|i| i.miner_hotkey == hotkey)
                .map(|i| self.instance_wire(i))
                .collect(),
            Listing::Metrics => self.metrics(),
        }
    }

    /// `/miner/metrics/` (last hour per chute): instance counts follow the
    /// instances; invocation numbers are what tests set per chute.
    fn metrics(&self) -> Vec<Value> {
        let now = chutes_protocol::auth::now_unix();
        self.catalogue
            .chutes
            .values()
            .filter(|c| {
                self.catalogue.traffic.contains_key(&c.chute_id)
                    || self.instances.values().any(|i| i.chute_id == c.chute_id)
            })
            .map(|c| {
                let t = self.catalogue.traffic.get(&c.chute_id).cloned().unwrap_or_default();
                json!({
                    "chute_id": c.chute_id,
                    "start_date": iso8601(now.saturating_sub(3_600)),
                    "end_date": iso8601(now),
                    "compute_multiplier": c.compute_multiplier,
                    "total_invocations": t.total_invocations,
                    "total_compute_time": t.total_compute_time,
                    "error_count": t.error_count,
                    "rate_limit_count": t.rate_limit_count,
                    "instance_count": self.live_count(&c.chute_id),
                    "per_second_price_usd": t.per_second_price_usd,
                    "total_usage_usd": t.total_usage_usd,
                })
            })
            .collect()
    }

    /// `GET /miner/active_instances/`: every miner's active, verified instances.
    pub fn active_instances(&self) -> Vec<Value> {
        self.instances
            .values()
            .filter(|i| i.active && i.verified)
            .map(|i| {
                json!({
                    "instance_id": i.instance_id,
                    "miner_hotkey": i.miner_hotkey,
                    "chute_id": i.chute_id,
                    "activated_at": i.activated_at.map(iso8601),
                    "compute_multiplier": i.compute_multiplier,
                })
            })
            .collect()
    }

    /// `GET /miner/inventory`: the caller's registered GPUs. The real query joins
    /// GPUs to instances, so a GPU without an instance is missing there; here it is
    /// listed with `chute_id: null`, so add-node registration shows up.
    pub fn inventory(&self, hotkey: &str) -> Vec<Value> {
        self.nodes
            .values()
            .filter(|n| n.miner_hotkey == hotkey)
            .map(|n| {
                let instance = self.instances.values().find(|i| i.gpus.contains(&n.uuid));
                let status = crate::verification::status(self, &n.task_id);
                json!({
                    "gpu_id": n.uuid,
                    "last_verified_at": instance.filter(|i| i.verified).map(|i| iso8601(i.created_at)),
                    "verification_error": if crate::verification::passed(&status) { Value::Null } else { json!(status) },
                    "active": instance.map(|i| i.active),
                    "chute_id": instance.map(|i| i.chute_id.clone()),
                    "chute_name": instance.and_then(|i| self.catalogue.chutes.get(&i.chute_id)).map(|c| c.name.clone()),
                })
            })
            .collect()
    }

    /// `GET /chutes/utilization`: a chute is scalable while under its capacity.
    pub fn utilization(&self) -> Vec<Value> {
        if let Some(items) = &self.utilization_override {
            return items.clone();
        }
        self.catalogue
            .chutes
            .values()
            .map(|c| {
                let live = self.live_count(&c.chute_id);
                let total = self.instances.values().filter(|i| i.chute_id == c.chute_id).count();
                json!({
                    "chute_id": c.chute_id,
                    "name": c.name,
                    "scalable": c.capacity.is_none_or(|cap| live < cap as usize),
                    "update_in_progress": self.rolling.contains_key(&c.chute_id),
                    "total_instance_count": total,
                    "active_instance_count": live,
                    "target_count": c.capacity,
                })
            })
            .collect()
    }

    /// `GET /chutes/rolling_updates`.
    pub fn rolling_updates(&self) -> Vec<Value> {
        if let Some(items) = &self.rolling_override {
            return items.clone();
        }
        self.rolling
            .iter()
            .map(|(chute_id, r)| {
                json!({
                    "chute_id": chute_id,
                    "old_version": r.old_version,
                    "new_version": r.new_version,
                    "started_at": iso8601(r.started_at),
                })
            })
            .collect()
    }
}
