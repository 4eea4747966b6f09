//! All compute devices of one host, as the bootstrap server sees them: device info
//! by index, one proof per device in parallel, and challenge decryption.

use crate::crypto::{ChallengeKey, parse_transport};
use crate::device::DeviceInfo;
use crate::engine::Engine;
use crate::error::{BackendError, CryptoError, ProofError};
use crate::proof::{ProofRun, prove_all};
use crate::schedule::{Nonce, ProofParams, SeedKey};

pub struct Node {
    engines: Vec<Box<dyn Engine>>,
    /// Fixed matrix size, or `None` to size each device by its memory.
    matrix_size: Option<usize>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("devices", &self.devices())
            .field("matrix_size", &self.matrix_size)
            .finish()
    }
}

impl Node {
    /// `matrix_size`: `None` sizes each device by its memory
    /// ([`ProofParams::for_device`]), as validators expect; `Some(n)` forces n.
    pub fn new(engines: Vec<Box<dyn Engine>>, matrix_size: Option<usize>) -> Self {
        Self { engines, matrix_size }
    }

    /// Every CUDA GPU of the host.
    #[cfg(feature = "cuda")]
    pub fn cuda(matrix_size: Option<usize>) -> Result<Self, BackendError> {
        let engines = crate::cuda::CudaEngine::all()?;
        let engines: Vec<Box<dyn Engine>> =
            engines.into_iter().map(|e| Box::new(e) as Box<dyn Engine>).collect();
        Ok(Self::new(engines, matrix_size))
    }

    #[cfg(not(feature = "cuda"))]
    pub fn cuda(_matrix_size: Option<usize>) -> Result<Self, BackendError> {
        Err(BackendError::NoCuda)
    }

    /// The proof parameters of device `index`.
    pub fn params(&self, index: usize) -> Option<ProofParams> {
        let dev = self.engines.get(index)?.device_info();
        Some(match self.matrix_size {
            Some(n) => ProofParams::with_matrix_size(n),
            None => ProofParams::for_device(dev),
        })
    }

    pub fn devices(&self) -> Vec<DeviceInfo> {
        self.engines.iter().map(|e| e.device_info().clone()).collect()
    }

    /// One proof per device, all devices at once (one host thread each).
    pub fn prove(&mut self, seed: u64, nonce: &Nonce, iterations: u64) -> Result<Vec<ProofRun>, ProofError> {
        let params: Vec<ProofParams> = (0..self.engines.len()).filter_map(|i| self.params(i)).collect();
        prove_all(&mut self.engines, seed, nonce, iterations, &params).into_iter().collect()
    }
}

/// Decrypts a challenge ciphertext (bare base64 or `"<seed>|<base64>"`) with the key
/// this run derived. A seed in the transport must equal the run's.
pub fn decrypt_challenge(run: &ProofRun, iterations: u64, transport: &str) -> Result<String, CryptoError> {
    let (seed, blob) = parse_transport(transport)?;
    if seed.is_some_and(|s| s != run.seed) {
        return Err(CryptoError::Transport("seed differs from the proof's seed"));
    }
    let key = ChallengeKey::derive(
        &SeedKey::derive(run.seed, &run.nonce, &run.device),
        &run.first_hash,
        iterations,
    );
    key.decrypt(&blob)
}
