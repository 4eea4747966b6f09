//! CUDA backend (feature `cuda`): device info from the driver API, SGEMM through
//! cuBLAS in `CUBLAS_DEFAULT_MATH` (no TF32), and the PRNG fill, mix and row-gather
//! kernels compiled at run time with NVRTC. One engine per GPU on its own host thread
//! and its own stream. libcuda, libcublas and libnvrtc are loaded at run time
//! (cudarc `dynamic-loading`), so building needs no CUDA toolkit.
//!
//! The kernels transcribe `prng.rs` exactly; the GPU check compares hashes with the
//! CPU backend bit for bit.

use std::sync::Arc;

use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, sys as blas_sys};
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg, sys};

use crate::device::{DeviceInfo, uuid_hex};
use crate::engine::Engine;
use crate::error::BackendError;
use crate::prng::{FILL_TAG, FRESH_MATRIX};

/// Threads per block of every kernel (`graval_mix` reduces in a 256-slot shared array).
const THREADS: u32 = 256;

/// Blocks of `graval_mix`: enough to fill an H100 many times over, few enough that the
/// one atomic add per block stays negligible.
const MIX_BLOCKS: u64 = 8192;

/// CUDA C source of the three kernels; keep in step with `prng.rs`.
pub const KERNELS: &str = r#"
#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

__device__ __forceinline__ float draw_to_value(unsigned u) {
    return (float)((int)(u % 17u) - 8);
}

__device__ __forceinline__ void philox4x32_10(unsigned c[4], unsigned k0, unsigned k1) {
    #pragma unroll
    for (int round = 0; round < 10; ++round) {
        if (round > 0) { k0 += PHILOX_W0; k1 += PHILOX_W1; }
        unsigned hi0 = __umulhi(PHILOX_M0, c[0]);
        unsigned lo0 = PHILOX_M0 * c[0];
        unsigned hi1 = __umulhi(PHILOX_M1, c[2]);
        unsigned lo1 = PHILOX_M1 * c[2];
        unsigned n0 = hi1 ^ c[1] ^ k0;
        unsigned n2 = hi0 ^ c[3] ^ k1;
        c[0] = n0; c[1] = lo1; c[2] = n2; c[3] = lo0;
    }
}

extern "C" __global__ void graval_fill(float* m, unsigned long long groups, unsigned k,
                                       unsigned key0, unsigned key1, unsigned tag) {
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long g = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         g < groups; g += stride) {
        unsigned c[4] = {(unsigned)g, (unsigned)(g >> 32), k, tag};
        philox4x32_10(c, key0, key1);
        float4 v = make_float4(draw_to_value(c[0]), draw_to_value(c[1]),
                               draw_to_value(c[2]), draw_to_value(c[3]));
        reinterpret_cast<float4*>(m)[g] = v;
    }
}

// In place: m[i] <- mix(m[i], i, salt); *digest += sum of the mix hashes (mod 2^64).
// blockDim.x must be MIX_THREADS; one atomic per block.
extern "C" __global__ void graval_mix(float* m, unsigned long long total, unsigned salt,
                                      unsigned long long* digest) {
    __shared__ unsigned long long part[256];
    unsigned long long acc = 0;
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < total; i += stride) {
        unsigned v = (unsigned)__float2int_rz(m[i]);
        unsigned h = (v * 0x9E3779B1u) ^ ((unsigned)i * 0x85EBCA77u) ^ salt;
        h ^= h >> 16;
        h *= 0x7FEB352Du;
        h ^= h >> 15;
        h *= 0x846CA68Bu;
        h ^= h >> 16;
        acc += (unsigned long long)h;
        m[i] = draw_to_value(h);
    }
    part[threadIdx.x] = acc;
    __syncthreads();
    for (unsigned s = blockDim.x / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) part[threadIdx.x] += part[threadIdx.x + s];
        __syncthreads();
    }
    if (threadIdx.x == 0) atomicAdd(digest, part[0]);
}

extern "C" __global__ void graval_gather_rows(const float* m, float* out, const unsigned* rows,
                                              unsigned nrows, unsigned n) {
    unsigned long long total = (unsigned long long)nrows * n;
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         i < total; i += stride) {
        unsigned r = (unsigned)(i / n);
        unsigned c = (unsigned)(i % n);
        out[i] = m[(unsigned long long)rows[r] * n + c];
    }
}
"#;

/// Bytes left free beside the matrices: cuBLAS workspace, module, small buffers, slack.
const RESERVE: u64 = 512 << 20;

fn cuda_err(op: &'static str) -> impl Fn(cudarc::driver::DriverError) -> BackendError {
    move |e| BackendError::Cuda { op, message: format!("{e:?}") }
}

fn blas_err(op: &'static str) -> impl Fn(cudarc::cublas::result::CublasError) -> BackendError {
    move |e| BackendError::Cuda { op, message: format!("{e:?}") }
}

/// Fails with a clear error unless libcuda, libcublas and libnvrtc can be loaded
/// (cudarc would panic on first use otherwise).
fn check_libraries() -> Result<(), BackendError> {
    // SAFETY: these only try to dlopen the libraries by name.
    let present = unsafe {
        [
            ("libcuda (the NVIDIA driver)", sys::is_culib_present()),
            ("libcublas", blas_sys::is_culib_present()),
            ("libnvrtc", cudarc::nvrtc::sys::is_culib_present()),
        ]
    };
    match present.iter().find(|(_, ok)| !ok) {
        Some((name, _)) => Err(BackendError::Cuda {
            op: "load library",
            message: format!("{name} not found on the library path (LD_LIBRARY_PATH)"),
        }),
        None => Ok(()),
    }
}

/// Number of CUDA devices.
pub fn device_count() -> Result<usize, BackendError> {
    check_libraries()?;
    CudaContext::device_count().map(|n| n.max(0) as usize).map_err(cuda_err("cuDeviceGetCount"))
}

/// Device info of GPU `ordinal` from the driver API, in the original's units.
pub fn gather_device_info(ctx: &Arc<CudaContext>) -> Result<DeviceInfo, BackendError> {
    let attr = |a: sys::CUdevice_attribute| ctx.attribute(a).map_err(cuda_err("cuDeviceGetAttribute"));
    let uuid = ctx.uuid().map_err(cuda_err("cuDeviceGetUuid"))?;
    let mut bytes = [0u8; 16];
    for (b, c) in bytes.iter_mut().zip(uuid.bytes.iter()) {
        *b = *c as u8;
    }
    let (major, minor) = ctx.compute_capability().map_err(cuda_err("compute capability"))?;
    let mut name = ctx.name().map_err(cuda_err("cuDeviceGetName"))?;
    name.truncate(63);
    Ok(DeviceInfo {
        name,
        uuid: uuid_hex(&bytes),
        memory: ctx.total_mem().map_err(cuda_err("cuDeviceTotalMem"))? as u64,
        processors: attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u64,
        // kHz, as cudaDeviceProp.clockRate; 0 if this driver no longer reports it.
        clock_rate: f64::from(attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_CLOCK_RATE).unwrap_or(0)),
        max_threads_per_processor: attr(
            sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR,
        )? as u32,
        major: major as u32,
        minor: minor as u32,
        ecc: attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_ECC_ENABLED)? != 0,
        concurrent_kernels: attr(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_CONCURRENT_KERNELS)? != 0,
    })
}

pub struct CudaEngine {
    info: DeviceInfo,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    fill: CudaFunction,
    mix: CudaFunction,
    gather: CudaFunction,
    /// Test mode: pretend exactly this many bytes are free, with no reserve.
    limit: Option<u64>,
    n: usize,
    matrices: Vec<CudaSlice<f32>>,
    scratch: Option<CudaSlice<f32>>,
    digest: Option<CudaSlice<u64>>,
}

impl CudaEngine {
    /// Opens GPU `ordinal`: context, stream, cuBLAS handle (default math: no TF32)
    /// and the NVRTC-compiled kernels.
    pub fn new(ordinal: usize) -> Result<Self, BackendError> {
        device_count()?;
        let ctx = CudaContext::new(ordinal).map_err(cuda_err("cuCtxCreate"))?;
        // One stream per GPU: the driver need not track cross-stream events.
        // SAFETY: this engine uses a single stream for every allocation and launch.
        unsafe { ctx.disable_event_tracking() };
        let info = gather_device_info(&ctx)?;
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(blas_err("cublasCreate"))?;
        // SAFETY: the handle is valid for the lifetime of `blas`.
        let status = unsafe {
            blas_sys::cublasSetMathMode(*blas.handle(), blas_sys::cublasMath_t::CUBLAS_DEFAULT_MATH)
        };
        if status != blas_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            return Err(BackendError::Cuda { op: "cublasSetMathMode", message: format!("{status:?}") });
        }
        let ptx = std::panic::catch_unwind(|| cudarc::nvrtc::compile_ptx(KERNELS))
            .map_err(|_| BackendError::Cuda {
                op: "load libnvrtc",
                message: "NVRTC library not found".into(),
            })?
            .map_err(|e| BackendError::Cuda { op: "nvrtcCompileProgram", message: format!("{e:?}") })?;
        let module = ctx.load_module(ptx).map_err(cuda_err("cuModuleLoadData"))?;
        let load = |name: &str| module.load_function(name).map_err(cuda_err("cuModuleGetFunction"));
        Ok(Self {
            fill: load("graval_fill")?,
            mix: load("graval_mix")?,
            gather: load("graval_gather_rows")?,
            info,
            ctx,
            stream,
            blas,
            limit: None,
            n: 0,
            matrices: Vec::new(),
            scratch: None,
            digest: None,
        })
    }

    /// Opens every GPU, one engine each.
    pub fn all() -> Result<Vec<Self>, BackendError> {
        (0..device_count()?).map(Self::new).collect()
    }

    /// Test mode: size the proof as if exactly `bytes` were free (no reserve), so a
    /// CPU engine with `memory = bytes` builds the same number of matrices.
    pub fn with_memory_limit(mut self, bytes: u64) -> Self {
        self.limit = Some(bytes);
        self
    }

    pub fn context(&self) -> &Arc<CudaContext> {
        &self.ctx
    }

    fn grid(items: u64) -> LaunchConfig {
        Self::grid_max(items, 1 << 20)
    }

    fn grid_max(items: u64, max_blocks: u64) -> LaunchConfig {
        let blocks = items.div_ceil(u64::from(THREADS)).clamp(1, max_blocks) as u32;
        LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
    }

    /// `c = a . b` (row-major n x n) through cuBLAS: computes `c^T = b^T . a^T` in
    /// column-major terms.
    fn gemm(
        &self,
        a: &CudaSlice<f32>,
        b: &CudaSlice<f32>,
        c: &mut CudaSlice<f32>,
        n: usize,
    ) -> Result<(), BackendError> {
        let n = n as i32;
        let cfg = GemmConfig {
            transa: blas_sys::cublasOperation_t::CUBLAS_OP_N,
            transb: blas_sys::cublasOperation_t::CUBLAS_OP_N,
            m: n,
            n,
            k: n,
            alpha: 1.0f32,
            lda: n,
            ldb: n,
            beta: 0.0f32,
            ldc: n,
        };
        // SAFETY: all three buffers hold n*n floats on this engine's stream.
        unsafe { self.blas.gemm(cfg, b, a, c) }.map_err(blas_err("cublasSgemm"))
    }

    /// cuBLAS SGEMM throughput (TFLOP/s) on two filled `n x n` matrices, with the
    /// same handle and math mode as the proof: the baseline the proof is compared to.
    pub fn sgemm_tflops(&mut self, n: usize, reps: usize) -> Result<f64, BackendError> {
        let elems = n * n;
        let alloc = |s: &Arc<CudaStream>| unsafe { s.alloc::<f32>(elems) }.map_err(cuda_err("cuMemAlloc"));
        let mut a = alloc(&self.stream)?;
        let mut b = alloc(&self.stream)?;
        let mut c = alloc(&self.stream)?;
        self.launch_fill(&mut a, 0, [1, 2])?;
        self.launch_fill(&mut b, 1, [1, 2])?;
        for _ in 0..3 {
            self.gemm(&a, &b, &mut c, n)?;
        }
        self.stream.synchronize().map_err(cuda_err("cuStreamSynchronize"))?;
        let t = std::time::Instant::now();
        for _ in 0..reps {
            self.gemm(&a, &b, &mut c, n)?;
        }
        self.stream.synchronize().map_err(cuda_err("cuStreamSynchronize"))?;
        let secs = t.elapsed().as_secs_f64();
        Ok(2.0 * (n as f64).powi(3) * reps as f64 / secs / 1e12)
    }

    fn launch_fill(&self, m: &mut CudaSlice<f32>, k: u32, key: [u32; 2]) -> Result<(), BackendError> {
        let groups = (m.len() / 4) as u64;
        let tag = FILL_TAG;
        let mut b = self.stream.launch_builder(&self.fill);
        b.arg(m).arg(&groups).arg(&k).arg(&key[0]).arg(&key[1]).arg(&tag);
        // SAFETY: the kernel writes groups*4 = len floats of `m`; argument types match
        // the signature (float*, u64, u32, u32, u32, u32).
        unsafe { b.launch(Self::grid(groups)) }.map(|_| ()).map_err(cuda_err("launch graval_fill"))
    }
}

impl Engine for CudaEngine {
    fn device_info(&self) -> &DeviceInfo {
        &self.info
    }

    fn free_memory(&mut self) -> Result<u64, BackendError> {
        if let Some(limit) = self.limit {
            return Ok(limit);
        }
        self.ctx.mem_get_info().map(|(free, _)| free as u64).map_err(cuda_err("cuMemGetInfo"))
    }

    fn reserve_bytes(&self) -> u64 {
        if self.limit.is_some() { 0 } else { RESERVE }
    }

    fn allocate(&mut self, n: usize, count: usize) -> Result<(), BackendError> {
        self.release();
        let elems = n * n;
        let matrix_bytes = (elems * 4) as u64;
        let free = self.ctx.mem_get_info().map(|(f, _)| f as u64).unwrap_or(0);
        let mut matrices = Vec::with_capacity(count);
        for index in 0..=count {
            // SAFETY: every matrix is written by the fill kernel (or the mix, for the
            // scratch after a product) before it is read.
            let m = unsafe { self.stream.alloc::<f32>(elems) }.map_err(|e| BackendError::Alloc {
                index,
                count,
                matrix_bytes,
                free,
                source: Box::new(e),
            })?;
            matrices.push(m);
        }
        self.scratch = matrices.pop();
        self.matrices = matrices;
        self.digest = Some(self.stream.alloc_zeros::<u64>(1).map_err(cuda_err("cuMemAlloc digest"))?);
        self.n = n;
        // Surface asynchronous allocation failures now, not at the first product.
        self.stream.synchronize().map_err(cuda_err("cuStreamSynchronize after allocation"))
    }

    fn fill_all(&mut self, key: [u32; 2]) -> Result<(), BackendError> {
        let mut matrices = std::mem::take(&mut self.matrices);
        let r = matrices.iter_mut().enumerate().try_for_each(|(k, m)| self.launch_fill(m, k as u32, key));
        self.matrices = matrices;
        r?;
        self.stream.synchronize().map_err(cuda_err("cuStreamSynchronize after fill"))
    }

    fn step(
        &mut self,
        k: usize,
        j: usize,
        fresh: [u32; 2],
        salt: u32,
        rows: &[u32],
        out: &mut [f32],
    ) -> Result<u64, BackendError> {
        let n = self.n;
        let count = self.matrices.len();
        if k == j || k >= count || j >= count {
            return Err(BackendError::Step { k, j, count });
        }
        let not_allocated = || BackendError::Cuda { op: "step", message: "matrices not allocated".into() };
        let mut scratch = self.scratch.take().ok_or_else(not_allocated)?;
        let mut digest_dev = match self.digest.take() {
            Some(d) => d,
            None => {
                self.scratch = Some(scratch);
                return Err(not_allocated());
            }
        };
        let mut matrices = std::mem::take(&mut self.matrices);
        let result = (|| {
            // Fresh operand into the scratch, product straight into M_k (its old state
            // is not read), then mix and digest in place.
            self.launch_fill(&mut scratch, FRESH_MATRIX, fresh)?;
            let (dst, src) = if k < j {
                let (lo, hi) = matrices.split_at_mut(j);
                (&mut lo[k], &hi[0])
            } else {
                let (lo, hi) = matrices.split_at_mut(k);
                (&mut hi[0], &lo[j])
            };
            self.gemm(&scratch, src, dst, n)?;
            self.stream.memset_zeros(&mut digest_dev).map_err(cuda_err("cuMemsetD8 digest"))?;
            let total = (n * n) as u64;
            {
                let cfg = Self::grid_max(total, MIX_BLOCKS);
                let mut b = self.stream.launch_builder(&self.mix);
                b.arg(&mut *dst).arg(&total).arg(&salt).arg(&mut digest_dev);
                // SAFETY: `dst` holds n*n floats, `digest_dev` one u64; signature
                // (float*, u64, u32, u64*); block size THREADS as the kernel requires.
                unsafe { b.launch(cfg) }.map_err(cuda_err("launch graval_mix"))?;
            }
            let rows_dev = self.stream.clone_htod(rows).map_err(cuda_err("cuMemcpyHtoD rows"))?;
            // SAFETY: the gather kernel writes all rows.len() * n floats before the copy.
            let mut gathered =
                unsafe { self.stream.alloc::<f32>(rows.len() * n) }.map_err(cuda_err("cuMemAlloc rows"))?;
            let (nrows, nn) = (rows.len() as u32, n as u32);
            {
                let cfg = Self::grid(u64::from(nrows) * u64::from(nn));
                let mut b = self.stream.launch_builder(&self.gather);
                b.arg(&*dst).arg(&mut gathered).arg(&rows_dev).arg(&nrows).arg(&nn);
                // SAFETY: rows are < n; `gathered` holds nrows*n floats.
                unsafe { b.launch(cfg) }.map_err(cuda_err("launch graval_gather_rows"))?;
            }
            self.stream.memcpy_dtoh(&gathered, out).map_err(cuda_err("cuMemcpyDtoH rows"))?;
            let mut digest = [0u64; 1];
            self.stream.memcpy_dtoh(&digest_dev, &mut digest).map_err(cuda_err("cuMemcpyDtoH digest"))?;
            self.stream.synchronize().map_err(cuda_err("cuStreamSynchronize after step"))?;
            Ok(digest[0])
        })();
        self.matrices = matrices;
        self.scratch = Some(scratch);
        self.digest = Some(digest_dev);
        result
    }

    fn read_matrix(&mut self, k: usize) -> Result<Vec<f32>, BackendError> {
        self.stream.clone_dtoh(&self.matrices[k]).map_err(cuda_err("cuMemcpyDtoH matrix"))
    }

    fn release(&mut self) {
        self.matrices.clear();
        self.scratch = None;
        self.digest = None;
        let _ = self.stream.synchronize();
    }
}
