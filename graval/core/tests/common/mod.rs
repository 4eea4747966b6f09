//! Fixtures shared by the CPU test files.

use graval::DeviceInfo;

/// An H100-shaped device with `memory` bytes: the proof sizes its slots to that budget.
pub fn h100_with_memory(memory: u64) -> DeviceInfo {
    DeviceInfo {
        name: "NVIDIA H100 80GB HBM3".into(),
        uuid: "0123456789abcdef0123456789abcdef".into(),
        memory,
        processors: 132,
        clock_rate: 1_980_000.0,
        max_threads_per_processor: 2048,
        major: 9,
        minor: 0,
        ecc: true,
        concurrent_kernels: true,
    }
}
