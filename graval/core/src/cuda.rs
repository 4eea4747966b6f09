//! CUDA backend (feature `cuda`): device info from the driver API, the chain's INT8
//! product through cuBLAS `cublasGemmEx` (i8 operands, i32 output, `CUBLAS_COMPUTE_32I`:
//! exact, on the INT8 tensor cores), and the PRNG fill, mix and row-gather kernels
//! compiled at run time with NVRTC. One engine per GPU on its own host thread and its
//! own stream. libcuda, libcublas and libnvrtc are loaded at run time (cudarc
//! `dynamic-loading`), so building needs no CUDA toolkit.
//!
//! The kernels transcribe `prng.rs` exactly; the GPU check compares hashes with the
//! CPU backend bit for bit.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublas::{CudaBlas, result as blas_result, sys as blas_sys};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
    sys,
};

use crate::device::{DeviceInfo, uuid_hex};
use crate::engine::Engine;
use crate::error::BackendError;
use crate::prng::{FILL_TAG, FRESH_MATRIX, GROUP};

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

// 16 i8 per group: the little-endian bytes of the four Philox words.
extern "C" __global__ void graval_fill(signed char* m, unsigned long long groups, unsigned id,
                                       unsigned key0, unsigned key1, unsigned tag) {
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long g = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         g < groups; g += stride) {
        unsigned c[4] = {(unsigned)g, (unsigned)(g >> 32), id, tag};
        philox4x32_10(c, key0, key1);
        reinterpret_cast<uint4*>(m)[g] = make_uint4(c[0], c[1], c[2], c[3]);
    }
}

__device__ __forceinline__ unsigned mix_hash(int x, unsigned idx, unsigned salt) {
    unsigned h = ((unsigned)x * 0x9E3779B1u) ^ (idx * 0x85EBCA77u) ^ salt;
    h ^= h >> 16;
    h *= 0x7FEB352Du;
    h ^= h >> 15;
    h *= 0x846CA68Bu;
    h ^= h >> 16;
    return h;
}

// s[i] <- top byte of mix_hash(p[i], i, salt); *digest += sum of the hashes (mod 2^64).
// Four elements per thread (total is a multiple of 16). blockDim.x must be 256; one
// atomic per block.
extern "C" __global__ void graval_mix(const int* p, signed char* s, unsigned long long quads,
                                      unsigned salt, unsigned long long* digest) {
    __shared__ unsigned long long part[256];
    unsigned long long acc = 0;
    unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long q = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
         q < quads; q += stride) {
        int4 v = reinterpret_cast<const int4*>(p)[q];
        unsigned i = (unsigned)(q * 4);
        unsigned h0 = mix_hash(v.x, i, salt), h1 = mix_hash(v.y, i + 1, salt);
        unsigned h2 = mix_hash(v.z, i + 2, salt), h3 = mix_hash(v.w, i + 3, salt);
        acc += (unsigned long long)h0 + h1 + h2 + h3;
        reinterpret_cast<char4*>(s)[q] =
            make_char4((signed char)(h0 >> 24), (signed char)(h1 >> 24),
                       (signed char)(h2 >> 24), (signed char)(h3 >> 24));
    }
    part[threadIdx.x] = acc;
    __syncthreads();
    for (unsigned w = blockDim.x / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) part[threadIdx.x] += part[threadIdx.x + w];
        __syncthreads();
    }
    if (threadIdx.x == 0) atomicAdd(digest, part[0]);
}

extern "C" __global__ void graval_gather_rows(const signed char* m, signed char* out,
                                              const unsigned* rows, unsigned nrows, unsigned n) {
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

/// Bytes left free beside the slots and scratch: cuBLAS workspace, module, small buffers, slack.
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
    let name = crate::device::clip_name(ctx.name().map_err(cuda_err("cuDeviceGetName"))?);
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
    slots: Vec<CudaSlice<i8>>,
    scratch: Option<Scratch>,
}

/// The step scratch: fresh operand, exact product, digest.
struct Scratch {
    fresh: CudaSlice<i8>,
    product: CudaSlice<i32>,
    digest: CudaSlice<u64>,
}

impl CudaEngine {
    /// Opens GPU `ordinal`: context, stream, cuBLAS handle and the NVRTC-compiled kernels.
    pub fn new(ordinal: usize) -> Result<Self, BackendError> {
        device_count()?;
        let ctx = CudaContext::new(ordinal).map_err(cuda_err("cuCtxCreate"))?;
        // One stream per GPU: the driver need not track cross-stream events.
        // SAFETY: this engine uses a single stream for every allocation and launch.
        unsafe { ctx.disable_event_tracking() };
        let info = gather_device_info(&ctx)?;
        let stream = ctx.default_stream();
        let blas = CudaBlas::new(stream.clone()).map_err(blas_err("cublasCreate"))?;
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
            slots: Vec::new(),
            scratch: None,
        })
    }

    /// Opens every GPU, one engine each.
    pub fn all() -> Result<Vec<Self>, BackendError> {
        (0..device_count()?).map(Self::new).collect()
    }

    /// Test mode: size the proof as if exactly `bytes` were free (no reserve), so a
    /// CPU engine with `memory = bytes` builds the same number of slots.
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

    /// `p = s . r^T` (row-major n x n; i8 operands, exact i32 sums) through
    /// `cublasGemmEx`. In cuBLAS's column-major terms this is `p^T = r . s^T` with
    /// `r` transposed and `s` not ("TN", the layout INT8 tensor-core kernels run in).
    fn igemm(
        &self,
        s: &CudaSlice<i8>,
        r: &CudaSlice<i8>,
        p: &mut CudaSlice<i32>,
        n: usize,
    ) -> Result<(), BackendError> {
        let n = n as i32;
        let (alpha, beta) = (1i32, 0i32);
        let (rp, _r_sync) = r.device_ptr(&self.stream);
        let (sp, _s_sync) = s.device_ptr(&self.stream);
        let (pp, _p_sync) = p.device_ptr_mut(&self.stream);
        // SAFETY: the three buffers hold n*n elements of the declared types on this
        // engine's stream; alpha and beta are host i32 (the handle's default pointer
        // mode) and outlive the call.
        unsafe {
            blas_result::gemm_ex(
                *self.blas.handle(),
                blas_sys::cublasOperation_t::CUBLAS_OP_T,
                blas_sys::cublasOperation_t::CUBLAS_OP_N,
                n,
                n,
                n,
                (&alpha as *const i32).cast::<c_void>(),
                rp as *const c_void,
                blas_sys::cudaDataType::CUDA_R_8I,
                n,
                sp as *const c_void,
                blas_sys::cudaDataType::CUDA_R_8I,
                n,
                (&beta as *const i32).cast::<c_void>(),
                pp as *mut c_void,
                blas_sys::cudaDataType::CUDA_R_32I,
                n,
                blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32I,
                blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
            )
        }
        .map_err(blas_err("cublasGemmEx INT8"))
    }

    /// cuBLAS's own INT8 GEMM throughput (TOPS) on two filled `n x n` matrices, the
    /// same call as the proof's: the baseline the proof is compared to.
    pub fn int8_gemm_tops(&mut self, n: usize, reps: usize) -> Result<f64, BackendError> {
        let elems = n * n;
        // SAFETY: both operands are filled before use; the product is only written.
        let mut a = unsafe { self.stream.alloc::<i8>(elems) }.map_err(cuda_err("cuMemAlloc"))?;
        let mut b = unsafe { self.stream.alloc::<i8>(elems) }.map_err(cuda_err("cuMemAlloc"))?;
        let mut c = unsafe { self.stream.alloc::<i32>(elems) }.map_err(cuda_err("cuMemAlloc"))?;
        self.launch_fill(&mut a, 0, [1, 2])?;
        self.launch_fill(&mut b, 1, [1, 2])?;
        for _ in 0..3 {
            self.igemm(&a, &b, &mut c, n)?;
        }
        self.stream.synchronize().map_err(cuda_err("cuStreamSynchronize"))?;
        let t = std::time::Instant::now();
        for _ in 0..reps {
            self.igemm(&a, &b, &mut c, n)?;
        }
        self.stream.synchronize().map_err(cuda_err("cuStreamSynchronize"))?;
        let secs = t.elapsed().as_secs_f64();
        Ok(2.0 * (n as f64).powi(3) * reps as f64 / secs / 1e12)
    }

    fn launch_fill(&self, m: &mut CudaSlice<i8>, id: u32, key: [u32; 2]) -> Result<(), BackendError> {
        let groups = (m.len() / GROUP) as u64;
        let tag = FILL_TAG;
        let mut b = self.stream.launch_builder(&self.fill);
        b.arg(m).arg(&groups).arg(&id).arg(&key[0]).arg(&key[1]).arg(&tag);
        // SAFETY: the kernel writes groups*16 = len bytes of `m`; argument types match
        // the signature (signed char*, u64, u32, u32, u32, u32).
        unsafe { b.launch(Self::grid(groups)) }.map(|_| ()).map_err(cuda_err("launch graval_fill"))
    }

    fn not_allocated() -> BackendError {
        BackendError::Cuda { op: "step", message: "slots not allocated".into() }
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
        let matrix_bytes = elems as u64;
        let free = self.ctx.mem_get_info().map(|(f, _)| f as u64).unwrap_or(0);
        let alloc_err = |index: usize| {
            move |e: cudarc::driver::DriverError| BackendError::Alloc {
                index,
                count,
                matrix_bytes,
                free,
                source: Box::new(e),
            }
        };
        // Scratch first: a verifier engine (count = 1) needs it as much as a prover.
        // SAFETY: fresh and product are written (fill, GEMM) before they are read.
        let fresh = unsafe { self.stream.alloc::<i8>(elems) }.map_err(alloc_err(count))?;
        let product = unsafe { self.stream.alloc::<i32>(elems) }.map_err(alloc_err(count))?;
        let digest = self.stream.alloc_zeros::<u64>(1).map_err(cuda_err("cuMemAlloc digest"))?;
        self.scratch = Some(Scratch { fresh, product, digest });
        let mut slots = Vec::with_capacity(count);
        for index in 0..count {
            // SAFETY: every slot is filled before it is read.
            slots.push(unsafe { self.stream.alloc::<i8>(elems) }.map_err(alloc_err(index))?);
        }
        self.slots = slots;
        self.n = n;
        // Surface asynchronous allocation failures now, not at the first product.
        self.stream.synchronize().map_err(cuda_err("cuStreamSynchronize after allocation"))
    }

    fn slots(&self) -> usize {
        self.slots.len()
    }

    fn fill(&mut self, slot: usize, key: [u32; 2], id: u32) -> Result<(), BackendError> {
        let count = self.slots.len();
        let mut slots = std::mem::take(&mut self.slots);
        let r = match slots.get_mut(slot) {
            Some(s) => self.launch_fill(s, id, key),
            None => Err(BackendError::Slot { slot, count }),
        };
        self.slots = slots;
        r
    }

    fn fill_all(&mut self, key: [u32; 2]) -> Result<(), BackendError> {
        for k in 0..self.slots.len() {
            self.fill(k, key, k as u32)?;
        }
        self.stream.synchronize().map_err(cuda_err("cuStreamSynchronize after fill"))
    }

    fn step(
        &mut self,
        slot: usize,
        fresh: [u32; 2],
        salt: u32,
        rows: &[u32],
        out: &mut [i8],
    ) -> Result<u64, BackendError> {
        let n = self.n;
        let count = self.slots.len();
        if slot >= count {
            return Err(BackendError::Slot { slot, count });
        }
        let mut scratch = self.scratch.take().ok_or_else(Self::not_allocated)?;
        let mut slots = std::mem::take(&mut self.slots);
        let result = (|| {
            // Fresh operand, product into the scratch, then the mix writes the state's
            // only child over it (the old state is consumed).
            self.launch_fill(&mut scratch.fresh, FRESH_MATRIX, fresh)?;
            let state = &mut slots[slot];
            self.igemm(state, &scratch.fresh, &mut scratch.product, n)?;
            self.stream.memset_zeros(&mut scratch.digest).map_err(cuda_err("cuMemsetD8 digest"))?;
            let quads = (n * n / 4) as u64;
            {
                let cfg = Self::grid_max(quads, MIX_BLOCKS);
                let mut b = self.stream.launch_builder(&self.mix);
                b.arg(&scratch.product).arg(&mut *state).arg(&quads).arg(&salt).arg(&mut scratch.digest);
                // SAFETY: product holds n*n i32 and state n*n i8 (4 * quads each);
                // digest one u64; signature (const int*, signed char*, u64, u32, u64*);
                // block size THREADS as the kernel requires.
                unsafe { b.launch(cfg) }.map_err(cuda_err("launch graval_mix"))?;
            }
            let rows_dev = self.stream.clone_htod(rows).map_err(cuda_err("cuMemcpyHtoD rows"))?;
            // SAFETY: the gather kernel writes all rows.len() * n bytes before the copy.
            let mut gathered =
                unsafe { self.stream.alloc::<i8>(rows.len() * n) }.map_err(cuda_err("cuMemAlloc rows"))?;
            let (nrows, nn) = (rows.len() as u32, n as u32);
            {
                let cfg = Self::grid(u64::from(nrows) * u64::from(nn));
                let mut b = self.stream.launch_builder(&self.gather);
                b.arg(&*state).arg(&mut gathered).arg(&rows_dev).arg(&nrows).arg(&nn);
                // SAFETY: rows are < n; `gathered` holds nrows*n bytes.
                unsafe { b.launch(cfg) }.map_err(cuda_err("launch graval_gather_rows"))?;
            }
            self.stream.memcpy_dtoh(&gathered, out).map_err(cuda_err("cuMemcpyDtoH rows"))?;
            let mut digest = [0u64; 1];
            self.stream.memcpy_dtoh(&scratch.digest, &mut digest).map_err(cuda_err("cuMemcpyDtoH digest"))?;
            self.stream.synchronize().map_err(cuda_err("cuStreamSynchronize after step"))?;
            Ok(digest[0])
        })();
        self.slots = slots;
        self.scratch = Some(scratch);
        result
    }

    fn read_slot(&mut self, slot: usize) -> Result<Vec<i8>, BackendError> {
        let count = self.slots.len();
        let s = self.slots.get(slot).ok_or(BackendError::Slot { slot, count })?;
        self.stream.clone_dtoh(s).map_err(cuda_err("cuMemcpyDtoH slot"))
    }

    fn release(&mut self) {
        self.slots.clear();
        self.scratch = None;
        let _ = self.stream.synchronize();
    }
}
