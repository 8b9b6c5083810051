//! The device the reference-parity tests run on, chosen by `GLIMPSE_TEST_DEVICE`:
//! unset or `cpu` (the default) for the CPU, `cuda` or `cuda:N` for a GPU. A GPU needs a
//! test build with the `cuda` feature (see docs/cuda.md); asking for one in a build
//! without it fails every such test with a message saying so, rather than quietly
//! testing the CPU again.
//!
//! This file is shared: `glimpse-models/tests/common` includes it by path.
#![allow(dead_code)]

use std::sync::OnceLock;

use candle_core::Device;

/// How much looser than on the CPU a comparison with the reference may be on a GPU.
/// candle keeps f32 matmuls at full precision on CUDA (no TF32 unless
/// `set_gemm_reduced_precision_f32(true)`), so what differs is the order of summation
/// in cuBLAS and in candle's reduction kernels: a few ulps per op, compounded over the
/// layers of the tiny fixtures. A factor of 10 keeps the bounds meaningful (1e-3 on
/// logits of order 1-10).
pub const GPU_TOL_FACTOR: f32 = 10.0;

/// One device for the whole test binary: candle refuses to mix tensors of two
/// `Device::new_cuda` handles, even on the same GPU.
pub fn test_device() -> Device {
    static DEVICE: OnceLock<Device> = OnceLock::new();
    DEVICE.get_or_init(open_test_device).clone()
}

fn open_test_device() -> Device {
    let spec = std::env::var("GLIMPSE_TEST_DEVICE").unwrap_or_default();
    let ordinal = match spec.trim() {
        "" | "cpu" => return Device::Cpu,
        "cuda" => 0,
        s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => panic!("GLIMPSE_TEST_DEVICE={spec:?}: expected `cpu`, `cuda` or `cuda:N`"),
        },
    };
    if !candle_core::utils::cuda_is_available() {
        panic!(
            "GLIMPSE_TEST_DEVICE={spec:?}, but this test binary was built without CUDA: \
             run `cargo test -p glimpse-models -p glimpse-nn --features cuda` (docs/cuda.md)"
        );
    }
    Device::new_cuda(ordinal)
        .unwrap_or_else(|e| panic!("GLIMPSE_TEST_DEVICE={spec:?}: cannot open the GPU: {e}"))
}

/// `cpu_tol` on the CPU, `GPU_TOL_FACTOR` times it on a GPU.
pub fn tol(cpu_tol: f32) -> f32 {
    if test_device().is_cpu() {
        cpu_tol
    } else {
        cpu_tol * GPU_TOL_FACTOR
    }
}
