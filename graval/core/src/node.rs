//! All compute devices of one host, as the bootstrap server sees them: device info
//! by index, one proof per device in parallel, and challenge decryption.

use crate::crypto::{ChallengeKey, parse_transport};
use crate::device::DeviceInfo;
use crate::engine::Engine;
use crate::error::{BackendError, CryptoError, ProofError};
use crate::proof::{ProofRun, prove_all};
use crate::schedule::{ProofParams, SeedKey};

pub struct Node {
    engines: Vec<Box<dyn Engine>>,
    params: ProofParams,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node").field("devices", &self.devices()).field("params", &self.params).finish()
    }
}

impl Node {
    pub fn new(engines: Vec<Box<dyn Engine>>, params: ProofParams) -> Self {
        Self { engines, params }
    }

    /// Every CUDA GPU of the host.
    #[cfg(feature = "cuda")]
    pub fn cuda(params: ProofParams) -> Result<Self, BackendError> {
        let engines = crate::cuda::CudaEngine::all()?;
        let engines: Vec<Box<dyn Engine>> =
            engines.into_iter().map(|e| Box::new(e) as Box<dyn Engine>).collect();
        Ok(Self::new(engines, params))
    }

    #[cfg(not(feature = "cuda"))]
    pub fn cuda(_params: ProofParams) -> Result<Self, BackendError> {
        Err(BackendError::NoCuda)
    }

    pub fn params(&self) -> &ProofParams {
        &self.params
    }

    pub fn devices(&self) -> Vec<DeviceInfo> {
        self.engines.iter().map(|e| e.device_info().clone()).collect()
    }

    /// One proof per device, all devices at once (one host thread each).
    pub fn prove(&mut self, seed: u64, iterations: u64) -> Result<Vec<ProofRun>, ProofError> {
        prove_all(&mut self.engines, seed, iterations, &self.params).into_iter().collect()
    }
}

/// Decrypts a challenge ciphertext (bare base64 or `"<seed>|<base64>"`) with the key
/// this run derived. A seed in the transport must equal the run's.
pub fn decrypt_challenge(run: &ProofRun, iterations: u64, transport: &str) -> Result<String, CryptoError> {
    let (seed, blob) = parse_transport(transport)?;
    if seed.is_some_and(|s| s != run.seed) {
        return Err(CryptoError::Transport("seed differs from the proof's seed"));
    }
    let key = ChallengeKey::derive(&SeedKey::derive(run.seed, &run.device), &run.first_hash, iterations);
    key.decrypt(&blob)
}
