//! Fused CPU kernels for inference in f32: the linear layer with its bias, activation
//! or residual applied while the output is in cache, attention that reads heads in
//! place and never materialises a mask, and a centred layer norm in one pass over rows.
//!
//! Each entry point returns `Ok(None)` when it does not apply (another device or dtype,
//! a layout it does not read, or a tensor that records a backward pass), and the caller
//! then runs the plain candle ops; so training, CUDA and half precision keep the tensor
//! path, and inference on the CPU in f32 takes this one. Setting
//! `GLIMPSE_PLAIN_KERNELS=1` turns these kernels off, for comparisons.
//!
//! The matrix products run on one thread per column block: the output's columns, and
//! so the weight's rows, are split between the threads, so each thread reads only its
//! share of the weight and then finishes its own block (bias, activation, residual)
//! while it is hot. Each block goes to one of our kernels by its row count
//! (`linear::row_kernel`): dot products for decoding's few rows, an in-place tiled
//! kernel up to `TILE_M` rows, and above that a packed outer-product kernel where the
//! CPU has AVX-512; `gemm` (the kernel candle itself calls) takes what none of them fits.
//!
//! Where the CPU has AVX2 and FMA, a loaded model's linear weights are laid out once,
//! at load time, in the packed kernels' panels ([`PackedWeight`]: 32 columns wide with
//! AVX-512, 16 with AVX2 alone (`avx2`); in place of the stored `[out, in]` layout, so
//! a loaded model holds no more than before; while loading, one layer is briefly held
//! both ways), and every product on them, from one row up, reads those panels
//! ([`linear_packed`]). Elsewhere, and for training variables, the weight stays in its
//! stored layout and the kernels above read it.
//!
//! Attention's per-head products run on tiles of our own there too (`attend`, on
//! AVX-512 or AVX2: each head's keys laid out once per task for 32 queries and more,
//! dot products for fewer), and on `gemm` elsewhere or for heads whose width is not a
//! multiple of 16.
//!
//! The parallel loops run on rayon's current pool; a caller that runs inside that pool
//! (the CLI runs every command on one of its workers) takes a share of each loop itself
//! instead of sleeping while the pool works.
//!
//! Files, by concern:
//! * `dispatch`: the switches (`GLIMPSE_PLAIN_KERNELS`, [`set_tiled`]) and the CPU
//!   features found at run time, which pick AVX-512, AVX2 or the plain path.
//! * `linear`: the linear entry points, their column blocks and epilogue, and the choice
//!   of kernel by row count; `dot` (few rows and the in-place tiled kernel), `outer`
//!   (the AVX-512 outer-product kernels) and `avx2` (the same at AVX2 width).
//! * `packing`: weights laid out at load time ([`PackedWeight`]) and the transposes that
//!   fill panels.
//! * `quantised`: quantised weights ([`QuantWeight`]); `quant` (`Q8_0`) and `q4k` hold
//!   their layouts and kernels.
//! * `norm`, `softmax`, `activation`: layer norm, softmax and `exp`, the activations.
//! * `attention`: attention over heads in place; `attend` holds its tiles.
//! * `int8`: weights rounded to 8 bits per output row ([`Int8Weight`]) and activations
//!   per row, summed in integers (VNNI or AVX2), for the encoders' `--quantize q8`.

use candle_core::{CpuStorage, Layout, Result, Storage, StorageRef};

mod activation;
mod attention;
mod dispatch;
mod dot;
mod linear;
mod norm;
mod outer;
mod packing;
mod quantised;
mod softmax;

#[cfg(target_arch = "x86_64")]
mod attend;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod int8;
#[cfg(target_arch = "x86_64")]
mod q4k;
#[cfg(target_arch = "x86_64")]
mod quant;
#[cfg(not(target_arch = "x86_64"))]
mod attend {
    pub(super) const MIN_QUERIES: usize = 32;
    pub(super) fn fits(_: usize, _: usize) -> bool {
        false
    }
    pub(super) fn fits_few(_: usize, _: usize) -> bool {
        false
    }
}

pub use attention::attention;
pub use dispatch::{applies, enabled, set_tiled};
#[cfg(target_arch = "x86_64")]
pub use int8::Int8Weight;
#[cfg(target_arch = "x86_64")]
pub use linear::linear_int8;
pub use linear::{linear, linear_packed, linear_quant};
pub use norm::layer_norm;
pub use packing::{unpacked, PackedWeight};
pub use quantised::QuantWeight;

/// A pointer that may cross to rayon's threads; every use writes a disjoint region.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: the kernels below hand each task a region of the output no other task touches.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The pointer (a method, so closures capture the `Send` wrapper, not the field).
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// The tensor's f32 values from its start offset, in a held storage guard.
fn f32_data<'a>(guard: &'a StorageRef<'_>, layout: &Layout) -> Result<&'a [f32]> {
    match &**guard {
        Storage::Cpu(CpuStorage::F32(data)) => Ok(&data[layout.start_offset()..]),
        _ => candle_core::bail!("kernels: expected an f32 CPU tensor"),
    }
}

/// Room for an output of `len` values, none written yet (length 0): the kernel writes
/// every value through `as_mut_ptr()` (never reading or borrowing it as a slice before),
/// then calls [`written`]. Zeroing first would cost a whole extra pass over the output.
fn reserve(len: usize) -> Vec<f32> {
    Vec::with_capacity(len)
}

/// Marks the first `len` values of a [`reserve`]d buffer as written.
///
/// # Safety
/// All `len` values were written (capacity is at least `len` by construction).
unsafe fn written(mut out: Vec<f32>, len: usize) -> Vec<f32> {
    debug_assert!(out.capacity() >= len);
    out.set_len(len);
    out
}

/// Threads of the pool the kernels' parallel loops run on (rayon's current pool).
///
/// Not `candle_core::utils::get_num_threads()`: that re-reads the environment and
/// `/proc/cpuinfo` on every call, and the kernels ask once per product.
fn threads() -> usize {
    rayon::current_num_threads().max(1)
}
