#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Add-node's GraVal check end to end: the validator emulator calls the node's
//! bootstrap server (`/info`, then a signed `/prove` with a ciphertext per GPU), runs
//! graval's verifier on the work product and answers `verification_status` with
//! the outcome. An honest CPU prover is verified; provers that fake steps or fill
//! less memory than they declare are refused, and add-node undoes its work.

mod add_node_world;
mod common;

use add_node_world::*;
use graval::{BackendError, CpuEngine, DeviceInfo, Engine};
use serde_json::json;

/// Proves honestly for step (0, 0), which keys the challenge, so the plaintext comes
/// back right; fakes every later step (no product, the state left as it was, a
/// made-up digest). Only the spot checks can catch it.
struct FakesSteps {
    inner: CpuEngine,
    steps: u64,
}

impl Engine for FakesSteps {
    fn device_info(&self) -> &DeviceInfo {
        self.inner.device_info()
    }
    fn free_memory(&mut self) -> Result<u64, BackendError> {
        self.inner.free_memory()
    }
    fn allocate(&mut self, n: usize, count: usize) -> Result<(), BackendError> {
        self.inner.allocate(n, count)
    }
    fn fill(&mut self, slot: usize, key: [u32; 2], id: u32) -> Result<(), BackendError> {
        self.inner.fill(slot, key, id)
    }
    fn slots(&self) -> usize {
        self.inner.slots()
    }
    fn step(
        &mut self,
        slot: usize,
        fresh: [u32; 2],
        salt: u32,
        rows: &[u32],
        out: &mut [i8],
    ) -> Result<u64, BackendError> {
        self.steps += 1;
        if self.steps == 1 {
            return self.inner.step(slot, fresh, salt, rows, out);
        }
        out.fill(0);
        Ok(self.steps)
    }
    fn read_slot(&mut self, slot: usize) -> Result<Vec<i8>, BackendError> {
        self.inner.read_slot(slot)
    }
    fn release(&mut self) {
        self.inner.release()
    }
}

/// The single task's outcome as the validator recorded it.
fn outcome(w: &World) -> Result<(), String> {
    let tasks = w.validator.verification_tasks();
    assert_eq!(tasks.len(), 1, "one POST /nodes/, one task");
    w.validator.verification_result(&tasks[0]).expect("the verifier finished before add-node did")
}

#[tokio::test]
async fn an_honest_proof_is_checked_and_the_gpu_verified() {
    let w = world(gpu_node("gpu-honest")).await;
    let lines = stream(w.api.post("/servers/", &args(&w, "gpu-honest", "a6000")).send().await.unwrap()).await;
    assert!(lines.last().unwrap().starts_with("completed server bootstrapping in"), "{lines:#?}");
    assert_eq!(outcome(&w), Ok(()));

    let servers = w.api.db.list_servers().await.unwrap();
    assert_eq!(servers.len(), 1);
    let gpu = &servers[0].gpus[0];
    assert!(gpu.verified, "{gpu:?}");
    // The verifier's verdict reached the miner as the real validator sends it.
    let verified: Vec<_> =
        w.validator.events().into_iter().filter(|e| e["reason"] == "gpu_verified").collect();
    assert_eq!(verified.len(), 1, "{verified:#?}");
    assert_eq!(verified[0]["data"]["gpu_id"], json!(gpu.gpu_id));
    assert_eq!(graval_objects(&w.client).await, 0);
}

#[tokio::test]
async fn a_prover_that_fakes_steps_is_refused_and_add_node_undone() {
    let engine = FakesSteps { inner: CpuEngine::host(PROOF_BYTES), steps: 0 };
    let w = world_with(gpu_node("gpu-faker"), Box::new(engine)).await;
    let lines = stream(w.api.post("/servers/", &args(&w, "gpu-faker", "a6000")).send().await.unwrap()).await;
    let last = lines.last().unwrap();
    assert!(
        last.starts_with("error: bootstrap of gpu-faker failed") && last.contains("failed"),
        "{lines:#?}"
    );
    let why = outcome(&w).unwrap_err();
    assert!(why.contains("hash mismatch at (iteration"), "the spot checks caught it: {why}");

    assert!(w.api.db.list_servers().await.unwrap().is_empty(), "server row removed");
    assert_eq!(w.validator.deleted_nodes().len(), 1, "the validator was told to drop the GPU");
    assert!(w.validator.events().iter().all(|e| e["reason"] != "gpu_verified"));
    assert_eq!(graval_objects(&w.client).await, 0);
}

#[tokio::test]
async fn a_prover_that_fills_a_quarter_of_its_memory_is_refused() {
    // Declares PROOF_BYTES but sizes its proof to a quarter of it.
    let info = graval::cpu::host_device_info(PROOF_BYTES, 1);
    let engine = CpuEngine::with_device(info, 1).with_memory_limit(PROOF_BYTES / 4);
    let w = world_with(gpu_node("gpu-small"), Box::new(engine)).await;
    let lines = stream(w.api.post("/servers/", &args(&w, "gpu-small", "a6000")).send().await.unwrap()).await;
    assert!(lines.last().unwrap().starts_with("error: bootstrap of gpu-small failed"), "{lines:#?}");
    let why = outcome(&w).unwrap_err();
    assert!(why.contains("below the required 0.90"), "{why}");
    assert!(w.api.db.list_servers().await.unwrap().is_empty());
}
