//! Error enums, one per concern. Messages name the field or quantity that was wrong.

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DeviceError {
    #[error("device name must be 1..=63 bytes, got {0}")]
    Name(usize),
    #[error("device uuid must be 32 lowercase hex characters, got {0:?}")]
    Uuid(String),
    #[error("device memory must be > 0 bytes")]
    Memory,
    #[error("device processors must be > 0")]
    Processors,
}

/// What a compute backend (CPU or CUDA) can fail with.
#[derive(Debug, Error)]
pub enum BackendError {
    #[error(
        "cannot fill {wanted_fraction:.0}% of free memory: {free} bytes free, {reserve} reserved, \
         {fit} slots of {matrix_bytes} bytes fit beside the step scratch (need at least 2)"
    )]
    TooLittleMemory { free: u64, reserve: u64, matrix_bytes: u64, fit: u64, wanted_fraction: f64 },
    #[error(
        "allocation of slot {index} of {count} ({matrix_bytes} bytes each; index {count} is the scratch) failed with {free} bytes \
         reported free: {source}"
    )]
    Alloc {
        index: usize,
        count: usize,
        matrix_bytes: u64,
        free: u64,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("matrix size {0} is not supported (must be a multiple of 16 in 16..=65536)")]
    MatrixSize(usize),
    #[error("slot {slot} does not exist: {count} slots are allocated")]
    Slot { slot: usize, count: usize },
    #[error("CUDA {op}: {message}")]
    Cuda { op: &'static str, message: String },
    #[error("CUDA backend not compiled in (build with --features cuda)")]
    NoCuda,
}

#[derive(Debug, Error)]
pub enum ProofError {
    #[error("iterations must be in 1..=64, got {0}")]
    Iterations(u64),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("backend thread for device {0} panicked")]
    Panicked(usize),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("ciphertext transport is not \"<seed>|<base64>\": {0}")]
    Transport(&'static str),
    #[error("ciphertext base64 is invalid: {0}")]
    Base64(String),
    #[error("ciphertext is {0} bytes, shorter than iv (16) + tag (16)")]
    TooShort(usize),
    #[error("decryption failed: wrong key (wrong seed, device or work) or tampered ciphertext")]
    Decrypt,
    #[error("plaintext is not UTF-8 or contains NUL")]
    Plaintext,
    #[error("encryption failed")]
    Encrypt,
}

#[derive(Debug, Error, PartialEq)]
pub enum VerifyError {
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error(
        "work_product.version is {got}{hint}; this verifier checks version {want} only",
        hint = if *got == 1 { " (GraVal v1: f32 values in [-8, 8], refused since INT8 reproduces it cheaply)" } else { "" }
    )]
    Version { got: u32, want: u32 },
    #[error("replay engine failed: {0}")]
    Engine(String),
    #[error("work_product.total_iterations is {got}, the challenge asked for {want}")]
    Iterations { got: u64, want: u64 },
    #[error("work_product.matrix_size is {got}, expected {want}")]
    MatrixSize { got: usize, want: usize },
    #[error("work_product.num_matrices is {0}; at least 2 are required")]
    TooFewMatrices(u64),
    #[error(
        "work_product fills {filled} bytes ({fraction:.3} of the declared {memory} bytes), \
         below the required {required:.2}"
    )]
    VramFraction { filled: u64, memory: u64, fraction: f64, required: f64 },
    #[error("work_product has {got} intermediate_hashes, expected num_matrices * total_iterations = {want}")]
    HashCount { got: usize, want: u64 },
    #[error("work_product.intermediate_hashes[{0}] is not 64 hex characters")]
    HashFormat(usize),
    #[error("position (iteration {iteration}, step {index}) is outside the proof")]
    Position { iteration: u64, index: u64 },
    #[error(
        "a verification budget of {budget} full products cannot replay a check in the last of \
         {iterations} iterations (it needs {iterations}); a smaller budget would leave later iterations unchecked"
    )]
    Budget { budget: usize, iterations: u64 },
    #[error("no position to check: a verification that replays nothing proves nothing")]
    NothingChecked,
    #[error("hash mismatch at (iteration {iteration}, step {index})")]
    HashMismatch { iteration: u64, index: u64 },
    #[error("plaintext mismatch for device {0}")]
    Plaintext(String),
    #[error("response took {elapsed:.1} s, outside the window ({low:.1} s, {high:.1} s)")]
    Timing { elapsed: f64, low: f64, high: f64 },
    #[error("no proof for device {0}")]
    MissingDevice(String),
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ChallengeError {
    #[error("challenge must be 64 hex characters")]
    Format,
    #[error("no devices to answer for")]
    NoDevices,
}
