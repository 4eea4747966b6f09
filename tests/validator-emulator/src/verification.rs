//! Add-node verification: the task `POST /nodes/` opens and the status
//! `GET /nodes/verification_status` answers. Kept apart so a real GraVal verifier
//! can replace the scripted outcome here without touching the REST routing.
//!
//! Today the outcome is scripted: per task ([`crate::Emulator::set_verification_status`])
//! or a default for all tasks. A GPU counts as verified (for the instance checks)
//! while its task's status is one that add-node treats as done.

use serde_json::json;

use crate::state::{Event, State};

/// Opens a verification task for one `POST /nodes/` and returns its id and the seed
/// the validator hands out (the same for every GPU of the request).
pub(crate) fn open_task(state: &mut State) -> (String, u64) {
    state.tasks += 1;
    (crate::state::uuid_like(0xa000_0000 + state.tasks), state.node_seed)
}

/// The status string of a task, as `verification_status` sends it.
pub(crate) fn status(state: &State, task_id: &str) -> String {
    state.verification.get(task_id).cloned().unwrap_or_else(|| state.default_verification.clone())
}

/// Whether a status means the GPUs passed (add-node's `Verification::Done`).
pub(crate) fn passed(status: &str) -> bool {
    !matches!(status, "pending" | "error" | "failed")
}

/// `GET /nodes/verification_status?task_id=`: the status, and `gpu_verified` per
/// GPU of the task the first time it reads as passed.
pub(crate) fn poll(state: &mut State, task_id: &str, events: &mut Vec<Event>) -> String {
    let status = status(state, task_id);
    if passed(&status) && state.announced_tasks.insert(task_id.to_owned()) {
        for node in state.nodes.values().filter(|n| n.task_id == task_id) {
            events.push(Event {
                recipients: Some(vec![node.miner_hotkey.clone()]),
                ..Event::new("gpu_verified", json!({"gpu_id": node.uuid, "miner_hotkey": node.miner_hotkey}))
            });
        }
    }
    status
}
