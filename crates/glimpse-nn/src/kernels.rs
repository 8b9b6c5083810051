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
//! (`row_kernel`): dot products for decoding's few rows, an in-place tiled kernel up
//! to `TILE_M` rows, and above that a packed outer-product kernel where the CPU has
//! AVX-512; `gemm` (the kernel candle itself calls) takes what none of them fits.
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

use std::sync::OnceLock;

use candle_core::{CpuStorage, DType, Layout, Result, Storage, StorageRef, Tensor};
use rayon::prelude::*;

use crate::layers::Activation;

#[cfg(target_arch = "x86_64")]
mod attend;
#[cfg(target_arch = "x86_64")]
mod avx2;
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

/// Whether the fused kernels are on (they are unless `GLIMPSE_PLAIN_KERNELS` is set to
/// something other than `0`).
pub fn enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| {
        std::env::var("GLIMPSE_PLAIN_KERNELS")
            .map(|v| v.is_empty() || v == "0")
            .unwrap_or(true)
    })
}

/// Whether the fused kernels take `t` (an f32 CPU tensor recording no backward pass,
/// kernels on); callers use it to keep views such as a broadcast batch that only the
/// kernels read without a copy.
pub fn applies(t: &Tensor) -> bool {
    eligible(&[t])
}

/// f32 tensors on the CPU that record no backward pass.
fn eligible(ts: &[&Tensor]) -> bool {
    enabled()
        && ts
            .iter()
            .all(|t| t.device().is_cpu() && t.dtype() == DType::F32 && !t.track_op())
}

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
/// then calls [`written`]. Zeroing first would cost a pass over the output: about 35 MB
/// per layer of the 384 px ViT, where the allocator hands back used memory.
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
/// `/proc/cpuinfo` on every call (about 37 us here), and the kernels ask once per
/// product, so a BLIP decoding step spent a few milliseconds on it.
fn threads() -> usize {
    rayon::current_num_threads().max(1)
}

/// Column blocks `(start, len)` of `n` columns, one per thread, multiples of `align` wide.
fn column_blocks(n: usize, m: usize, k: usize, align: usize) -> Vec<(usize, usize)> {
    // Below about a million multiply-adds a second thread costs more than it saves,
    // except for a few rows (decoding), which wait on memory: there, from 128 Ki weight
    // values (512 KiB) up, each thread streams its own share.
    let work = if m <= SMALL_M { n * k * 8 } else { m * n * k };
    let t = if work < (1 << 20) { 1 } else { threads() };
    let width = n.div_ceil(t).div_ceil(align) * align;
    (0..n)
        .step_by(width.max(1))
        .map(|j| (j, width.min(n - j)))
        .collect()
}

/// Products with at most this many rows (decoding: one token per sequence or beam) skip
/// `gemm`, which packs the weight's block before using it once or twice: a dot-product
/// kernel streams each weight row once for all rows instead.
const SMALL_M: usize = 4;

fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static YES: OnceLock<bool> = OnceLock::new();
        *YES.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out[i, j] (+)= x[i, :] . w[j, :]` for `m` (at most [`SMALL_M`]) rows of `x`
/// (`[m, k]`) and `nn` rows of `w` (`[nn, k]`); `out` rows are `ldo` apart.
///
/// The weight is read once, front to back, one row at a time: a single sequential
/// stream is what the hardware prefetcher follows best (on this machine one thread
/// reads about 31-34 GB/s this way against 24-25 GB/s reading four rows side by side).
/// Each loaded chunk of a weight row serves all `m` rows of `x`, which stay in L1.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `out` must be valid for `m` rows of `nn` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn small_m_avx2(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    nn: usize,
    out: *mut f32,
    ldo: usize,
    accumulate: bool,
) {
    debug_assert!((1..=SMALL_M).contains(&m));
    match m {
        1 => dot_rows::<1, 4>(x, k, w, nn, out, ldo, accumulate),
        2 => dot_rows::<2, 2>(x, k, w, nn, out, ldo, accumulate),
        3 => dot_rows::<3, 2>(x, k, w, nn, out, ldo, accumulate),
        _ => dot_rows::<4, 2>(x, k, w, nn, out, ldo, accumulate),
    }
}

/// [`small_m_avx2`] for `M` rows of `x`, with `C` independent accumulators per row (so
/// that the additions do not wait on each other).
///
/// # Safety
/// As [`small_m_avx2`], with `x` holding `M` rows of `k`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_rows<const M: usize, const C: usize>(
    x: &[f32],
    k: usize,
    w: &[f32],
    nn: usize,
    out: *mut f32,
    ldo: usize,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    debug_assert!(x.len() >= M * k && w.len() >= nn * k);
    let step = 8 * C;
    let (kc, k8) = (k / step * step, k / 8 * 8);
    let xp = x.as_ptr();
    for j in 0..nn {
        let row = w.as_ptr().add(j * k);
        let mut acc = [[_mm256_setzero_ps(); C]; M];
        let mut kk = 0;
        while kk < kc {
            for c in 0..C {
                let wv = _mm256_loadu_ps(row.add(kk + 8 * c));
                for (i, a) in acc.iter_mut().enumerate() {
                    let xv = _mm256_loadu_ps(xp.add(i * k + kk + 8 * c));
                    a[c] = _mm256_fmadd_ps(xv, wv, a[c]);
                }
            }
            kk += step;
        }
        while kk < k8 {
            let wv = _mm256_loadu_ps(row.add(kk));
            for (i, a) in acc.iter_mut().enumerate() {
                a[0] = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(i * k + kk)), wv, a[0]);
            }
            kk += 8;
        }
        for (i, a) in acc.iter().enumerate() {
            let mut v = a[0];
            for part in &a[1..] {
                v = _mm256_add_ps(v, *part);
            }
            let s4 = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
            let s2 = _mm_hadd_ps(s4, s4);
            let mut sum = _mm_cvtss_f32(_mm_hadd_ps(s2, s2));
            for t in k8..k {
                sum += *xp.add(i * k + t) * *row.add(t);
            }
            let o = out.add(i * ldo + j);
            *o = if accumulate { *o + sum } else { sum };
        }
    }
}

/// Products with more rows than [`SMALL_M`] and at most this many skip `gemm` too: it
/// re-packs the weight (strided, one value at a time) on every call, which at the rows
/// of a CLIP image (50) or a prompt (tens) costs about a third of its time.
/// [`tiled_avx2`] reads the weight in place instead. Measured here, taking turns in one
/// run (`examples/linear_speed.rs`, weights cold, three runs): 1.1-1.7x `gemm`'s rate
/// from 16 to 96 rows, about even at 128, behind from about 200 rows on, where packing
/// pays for itself.
const TILE_M: usize = 96;

/// Weight values (along `k`) per pass of [`tiled_avx2`]: a tile's rows of `x` and of the
/// weight (7 rows of 768: 21 KiB) stay in L1 while it runs.
const TILE_K: usize = 768;

/// Rows of `x` per pass of [`tiled_avx2`]: a pass's slice of `x` (at most 128 rows of
/// [`TILE_K`]: 384 KiB) stays in L2 while the weight's rows stream past it once.
const TILE_ROWS: usize = 128;

/// Whether [`tiled_avx2`] and [`packed_avx512`] take the products they fit: AVX2 and
/// FMA present, and neither `GLIMPSE_GEMM_ONLY` (set, not `0`) nor [`set_tiled`] put
/// them back on `gemm`. (The packed kernel also needs AVX-512F.)
fn tiled() -> bool {
    use std::sync::atomic::Ordering;
    match TILED.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let on = has_avx2_fma()
                && std::env::var("GLIMPSE_GEMM_ONLY")
                    .map(|v| v.is_empty() || v == "0")
                    .unwrap_or(true);
            TILED.store(if on { 1 } else { 2 }, Ordering::Relaxed);
            on
        }
    }
}

/// 0: not decided yet, 1: [`tiled_avx2`] and [`packed_avx512`] on, 2: off.
static TILED: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Turns our kernels for more than a few rows (the in-place tiled one, and the packed
/// one where the CPU has AVX-512) on or off for the products they fit (`gemm` takes
/// them when off), so that a benchmark can compare them in one run. On needs AVX2 and
/// FMA.
pub fn set_tiled(on: bool) {
    let on = on && has_avx2_fma();
    TILED.store(if on { 1 } else { 2 }, std::sync::atomic::Ordering::Relaxed);
}

/// `out[i, j] (+)= x[i, :] . w[j, :]` for `m` rows of `x` (`[m, k]`) and `nn` rows of `w`
/// (`[nn, k]`), as dot products along `k` in register tiles of 3 rows of `x` by 4 rows
/// of the weight (12 accumulators; 7 loads feed 12 multiply-adds). Nothing is packed:
/// each weight tile is read from memory once per [`TILE_ROWS`] rows of `x` and then
/// serves them all from L1.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `out` must be valid for `m` rows of `nn` values,
/// `ldo` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tiled_avx2(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    nn: usize,
    out: *mut f32,
    ldo: usize,
    accumulate: bool,
) {
    use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T1};
    debug_assert!(x.len() >= m * k && w.len() >= nn * k);
    let (xp, wp) = (x.as_ptr(), w.as_ptr());
    for i0 in (0..m).step_by(TILE_ROWS) {
        let mc = TILE_ROWS.min(m - i0);
        for k0 in (0..k).step_by(TILE_K) {
            let kc = TILE_K.min(k - k0);
            // After the first slice of `k`, every slice adds onto what the last wrote.
            let acc = accumulate || k0 > 0;
            let mut j = 0;
            while j < nn {
                let nr = 4.min(nn - j);
                let wt = wp.add(j * k + k0);
                // The next weight tile (up to 4 rows of `kc`), fetched into L2 a share
                // per row tile of `x`: the tiles of `x` run from cache and leave the
                // weight's stream idle, so the prefetcher would not run ahead of it.
                let next = (nn - j - nr).min(4);
                let lines_per_row = (kc * 4).div_ceil(64);
                let lines = next * lines_per_row;
                let share = lines.div_ceil(mc.div_ceil(3));
                let mut line = 0;
                let mut i = 0;
                while i < mc {
                    for _ in 0..share.min(lines - line) {
                        let (r, c) = (line / lines_per_row, line % lines_per_row);
                        let at = wp.add((j + nr + r) * k + k0 + c * 16);
                        _mm_prefetch::<_MM_HINT_T1>(at.cast());
                        line += 1;
                    }
                    let mr = 3.min(mc - i);
                    let xt = xp.add((i0 + i) * k + k0);
                    let o = out.add((i0 + i) * ldo + j);
                    match (mr, nr) {
                        (3, 4) => tile::<3, 4>(xt, wt, k, kc, o, ldo, acc),
                        (3, 3) => tile::<3, 3>(xt, wt, k, kc, o, ldo, acc),
                        (3, 2) => tile::<3, 2>(xt, wt, k, kc, o, ldo, acc),
                        (3, _) => tile::<3, 1>(xt, wt, k, kc, o, ldo, acc),
                        (2, 4) => tile::<2, 4>(xt, wt, k, kc, o, ldo, acc),
                        (2, 3) => tile::<2, 3>(xt, wt, k, kc, o, ldo, acc),
                        (2, 2) => tile::<2, 2>(xt, wt, k, kc, o, ldo, acc),
                        (2, _) => tile::<2, 1>(xt, wt, k, kc, o, ldo, acc),
                        (_, 4) => tile::<1, 4>(xt, wt, k, kc, o, ldo, acc),
                        (_, 3) => tile::<1, 3>(xt, wt, k, kc, o, ldo, acc),
                        (_, 2) => tile::<1, 2>(xt, wt, k, kc, o, ldo, acc),
                        (_, _) => tile::<1, 1>(xt, wt, k, kc, o, ldo, acc),
                    }
                    i += mr;
                }
                j += nr;
            }
        }
    }
}

/// One register tile of [`tiled_avx2`]: `MR` rows of `x` from `xt` by `NR` weight rows
/// from `wt` (both `ld` apart), over `kc` values; sums land in `out` (`ldo` apart).
///
/// # Safety
/// As [`tiled_avx2`], for this tile's rows and `kc` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn tile<const MR: usize, const NR: usize>(
    xt: *const f32,
    wt: *const f32,
    ld: usize,
    kc: usize,
    out: *mut f32,
    ldo: usize,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    let k8 = kc / 8 * 8;
    let mut acc = [[_mm256_setzero_ps(); NR]; MR];
    let mut kk = 0;
    while kk < k8 {
        // The rows of `x` in registers, one weight vector at a time: 12 accumulators,
        // 3 of `x` and 1 of the weight fill the 16 registers without spilling.
        let mut xv = [_mm256_setzero_ps(); MR];
        for (i, v) in xv.iter_mut().enumerate() {
            *v = _mm256_loadu_ps(xt.add(i * ld + kk));
        }
        for r in 0..NR {
            let wv = _mm256_loadu_ps(wt.add(r * ld + kk));
            for (a, v) in acc.iter_mut().zip(&xv) {
                a[r] = _mm256_fmadd_ps(*v, wv, a[r]);
            }
        }
        kk += 8;
    }
    for (i, a) in acc.iter().enumerate() {
        for (r, v) in a.iter().enumerate() {
            let s4 = _mm_add_ps(_mm256_castps256_ps128(*v), _mm256_extractf128_ps(*v, 1));
            let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
            let mut sum = _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
            for t in k8..kc {
                sum += *xt.add(i * ld + t) * *wt.add(r * ld + t);
            }
            let o = out.add(i * ldo + r);
            *o = if accumulate { *o + sum } else { sum };
        }
    }
}

/// Rows of `x` per register tile of [`packed_avx512`].
const PACK_MR: usize = 12;

/// Output columns per register tile of [`packed_avx512`] (two 16-lane registers).
const PACK_NR: usize = 32;

/// Values along `k` per slice of [`packed_avx512`]: a weight panel (`PACK_KC` x
/// [`PACK_NR`], 32 KiB) fits L1 while every row tile of `x` passes over it, and the
/// packed slice of `x` (`m` x `PACK_KC`: 400-600 KiB for the encoders) stays in L2
/// while the weight's panels go by. Measured against 128, 384, 512 and 768 in
/// `linear_speed`: 128 lost 5-10%; the larger ones were mixed, at best even.
const PACK_KC: usize = 256;

fn has_avx512f() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static YES: OnceLock<bool> = OnceLock::new();
        *YES.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out[i, j] (+)= x[i, :] . w[j, :]` for `m` rows of `x` (`[m, k]`) and `nn` rows of `w`
/// (`[nn, k]`), as outer products: register tiles of [`PACK_MR`] rows by [`PACK_NR`]
/// columns (24 accumulators); each step along `k` loads two weight vectors and
/// broadcasts one value of `x` per row.
///
/// Both operands are packed a slice of [`PACK_KC`] along `k` at a time, with 8 x 8
/// transposes in registers ([`transpose_into`]): the slice of `x` once, into tiles of
/// [`PACK_MR`] rows, each `k`-major, so that a tile's step reads 12 adjacent values
/// through one pointer; the weight a panel of [`PACK_NR`] rows at a time, so that a
/// step reads 32 adjacent values. The output is written in place (rows `ldo` apart),
/// once per slice.
///
/// Why not `gemm` for these products: it gathers `x` into its panels one value at a
/// time, in every thread (about a sixth of CLIP's time at batch 8 in `perf`), and on
/// `k = 3072` products its rate fell to 140-160 GFLOP/s. Measured here, taking turns in
/// one run (`linear_speed`): 1.0-1.2x `gemm`'s rate on CLIP's, BLIP's and the text
/// encoder's products from 128 to 577 rows, 1.2x on those with `k` of 2048 or 3072.
/// Reading `x` in place instead of packing it was slower: rows 12 KiB apart (`k =
/// 3072`) fall in the same L1 sets, and the 12 row pointers spilled.
///
/// # Safety
/// The CPU must have AVX-512F, AVX2 and FMA; `out` must be valid for `m` rows of `nn`
/// values, `ldo` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn packed_avx512(
    x: &[f32],
    m: usize,
    k: usize,
    w: &[f32],
    nn: usize,
    out: *mut f32,
    ldo: usize,
    accumulate: bool,
) {
    debug_assert!(w.len() >= nn * k);
    outer_avx512(
        x,
        m,
        k,
        Panels::Pack(w.as_ptr()),
        nn,
        out,
        ldo,
        accumulate,
        Onto::NONE,
    )
}

/// Where [`outer_avx512`] finds its weight panels.
#[derive(Clone, Copy)]
enum Panels {
    /// The `[nn, k]` weight in its stored layout, packed a panel at a time.
    Pack(*const f32),
    /// Laid out already ([`PackedWeight`]): panel `p` at `p * PACK_NR * k`, `k`-major.
    Ready(*const f32),
}

/// The body of [`packed_avx512`] and of [`PackedWeight`]'s products.
///
/// # Safety
/// As [`packed_avx512`]; `Ready` panels 64-byte aligned, valid for `nn.div_ceil(PACK_NR)`
/// panels of `k * PACK_NR` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn outer_avx512(
    x: &[f32],
    m: usize,
    k: usize,
    panels: Panels,
    nn: usize,
    out: *mut f32,
    ldo: usize,
    accumulate: bool,
    onto: Onto,
) {
    debug_assert!(x.len() >= m * k);
    debug_assert!(!accumulate || onto.is_none());
    // One panel, 64-byte aligned inside an over-allocated buffer (for `Pack` only).
    let mut buf = match panels {
        Panels::Pack(_) => vec![0f32; PACK_KC * PACK_NR + 16],
        Panels::Ready(_) => Vec::new(),
    };
    let skip = buf.as_ptr().align_offset(64).min(16);
    let scratch = buf.as_mut_ptr().wrapping_add(skip);
    // The slice of `x` for one slice of `k`, tile by tile of PACK_MR rows, each tile
    // k-major (`kk * PACK_MR + r`), so a tile's step reads PACK_MR adjacent values.
    let tile_len = PACK_KC.min(k) * PACK_MR;
    // Not zeroed: `transpose_into` writes each tile's `kc * PACK_MR` values (zeros for
    // the rows past `m`) before the tiles read them.
    let mut xbuf = reserve(m.div_ceil(PACK_MR) * tile_len);
    let xp = xbuf.as_mut_ptr();
    for k0 in (0..k).step_by(PACK_KC) {
        let kc = PACK_KC.min(k - k0);
        pack_rows(x, m, k, k0, kc, xp, tile_len, PACK_MR);
        // After the first slice of `k`, every slice adds onto what the last wrote.
        let acc = accumulate || k0 > 0;
        for j in (0..nn).step_by(PACK_NR) {
            let nr = PACK_NR.min(nn - j);
            let panel = match panels {
                Panels::Pack(wp) => {
                    transpose_into(wp.add(j * k + k0), k, nr, kc, scratch, PACK_NR);
                    scratch as *const f32
                }
                // Panel j / PACK_NR starts at (j / PACK_NR) * PACK_NR * k = j * k.
                Panels::Ready(pp) => pp.add(j * k + k0 * PACK_NR),
            };
            // Lanes of the two output vectors that exist (a narrow last panel).
            let mask = |from: usize| -> u16 {
                let lanes = nr.saturating_sub(from).min(16);
                ((1u32 << lanes) - 1) as u16
            };
            let (m0, m1) = (mask(0), mask(16));
            let mut i = 0;
            while i < m {
                let mr = PACK_MR.min(m - i);
                let xt = xp.add(i / PACK_MR * tile_len) as *const f32;
                let o = out.add(i * ldo + j);
                let (src, lds, bias) = onto.tile_start(acc, o, ldo, i, j);
                let t = (xt, panel, kc, o, ldo, src, lds, bias, m0, m1);
                match mr {
                    12 => outer_tile::<12>(t),
                    11 => outer_tile::<11>(t),
                    10 => outer_tile::<10>(t),
                    9 => outer_tile::<9>(t),
                    8 => outer_tile::<8>(t),
                    7 => outer_tile::<7>(t),
                    6 => outer_tile::<6>(t),
                    5 => outer_tile::<5>(t),
                    4 => outer_tile::<4>(t),
                    3 => outer_tile::<3>(t),
                    2 => outer_tile::<2>(t),
                    _ => outer_tile::<1>(t),
                }
                i += mr;
            }
        }
    }
}

/// Output columns per weight panel of the AVX2 kernels (`avx2::NR`).
const AVX2_NR: usize = 16;

/// The instruction set a [`PackedWeight`] was laid out for: its panels' width and the
/// kernels that read them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    /// Panels of [`PACK_NR`] (32) columns, 12 x 32 tiles.
    Avx512,
    /// Panels of [`AVX2_NR`] (16) columns, 6 x 16 tiles (`avx2`).
    Avx2,
}

impl Isa {
    /// The widest this CPU runs, or `None` without AVX2 and FMA.
    fn best() -> Option<Self> {
        if has_avx512f() {
            Some(Self::Avx512)
        } else if has_avx2_fma() {
            Some(Self::Avx2)
        } else {
            None
        }
    }

    /// Output columns per panel.
    fn nr(self) -> usize {
        match self {
            Self::Avx512 => PACK_NR,
            Self::Avx2 => AVX2_NR,
        }
    }
}

/// Whether [`PackedWeight::new`] lays weights out on this thread now: kernels on,
/// [`tiled`] on, AVX2 and FMA (or AVX-512F) present, and not inside [`unpacked`].
fn packing() -> bool {
    enabled() && tiled() && Isa::best().is_some() && !NO_PACKING.with(|c| c.get())
}

thread_local! {
    static NO_PACKING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with [`PackedWeight::new`] declining on this thread, for models that are
/// built often and used briefly (a training step's momentum copy), where laying the
/// weights out would cost more than it saves.
pub fn unpacked<R>(f: impl FnOnce() -> R) -> R {
    /// Restores the thread's setting, also when `f` panics.
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            NO_PACKING.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(NO_PACKING.with(|c| c.replace(true)));
    f()
}

/// A linear layer's weight `[n, k]` laid out once, when the model is loaded, for the
/// outer-product kernels: panels of `nr` output rows (32 with AVX-512, 16 with AVX2
/// only), each `k`-major (value `kk` of rows `nr p..nr p + nr` at `(p * k + kk) * nr`),
/// the last panel padded with zero rows, 64-byte aligned. The products then skip the
/// per-call packing of the weight, which cost them about a quarter of their time at 50
/// rows (`linear_speed`).
///
/// It replaces the stored layout (the same size, plus less than one panel of padding),
/// so a loaded model holds no more memory (while it is built, each weight is held both
/// ways for a moment); [`PackedWeight::unpack`] gives the `[n, k]` tensor back for the
/// plain ops.
pub struct PackedWeight {
    buf: Vec<f32>,
    start: usize,
    n: usize,
    k: usize,
    isa: Isa,
}

impl std::fmt::Debug for PackedWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedWeight([{}, {}], {:?})", self.n, self.k, self.isa)
    }
}

impl PackedWeight {
    /// The weight laid out for the packed kernels, or `None` where they do not take
    /// it: another device or dtype, a tensor with a gradient (training), a CPU without
    /// AVX2 and FMA, the kernels turned off, or inside [`unpacked`].
    ///
    /// # Shapes
    /// * `weight`: `[out, in]`
    pub fn new(weight: &Tensor) -> Result<Option<Self>> {
        match Isa::best() {
            Some(isa) if packing() => Self::for_isa(weight, isa),
            _ => Ok(None),
        }
    }

    /// [`PackedWeight::new`] for the kernels of `isa` (which the CPU must run).
    fn for_isa(weight: &Tensor, isa: Isa) -> Result<Option<Self>> {
        if !eligible(&[weight])
            || weight.is_variable()
            || weight.rank() != 2
            || !weight.is_contiguous()
        {
            return Ok(None);
        }
        let (n, k) = weight.dims2()?;
        if n == 0 || k == 0 {
            return Ok(None);
        }
        let nr = isa.nr();
        let panel = nr * k;
        let panels = n.div_ceil(nr);
        let mut buf = vec![0f32; panels * panel + 16];
        let start = buf.as_ptr().align_offset(64).min(16);
        let (g, l) = weight.storage_and_layout();
        let w = f32_data(&g, l)?;
        let dst = SharedMut(buf.as_mut_ptr().wrapping_add(start));
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (w, dst, panel); // Isa::best() is None off x86_64
        #[cfg(target_arch = "x86_64")]
        (0..panels).into_par_iter().for_each(|p| {
            let rows = nr.min(n - p * nr);
            // SAFETY: AVX2 is there (every Isa has it); panel p reads rows
            // nr p..nr p + rows of the weight and writes its own panel only.
            unsafe { transpose_into(w.as_ptr().add(p * panel), k, rows, k, dst.at(p * panel), nr) }
        });
        drop(g);
        Ok(Some(Self {
            buf,
            start,
            n,
            k,
            isa,
        }))
    }

    /// `(out, in)`, as the stored weight's shape.
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// Output columns per panel: a column block of a product starts at a multiple.
    fn panel_width(&self) -> usize {
        self.isa.nr()
    }

    fn data(&self) -> &[f32] {
        let nr = self.isa.nr();
        &self.buf[self.start..self.start + self.n.div_ceil(nr) * nr * self.k]
    }

    /// The weight in its stored `[out, in]` layout again.
    pub fn unpack(&self, device: &candle_core::Device) -> Result<Tensor> {
        let (n, k, nr, data) = (self.n, self.k, self.isa.nr(), self.data());
        let mut w = vec![0f32; n * k];
        for (p, panel) in data.chunks_exact(nr * k).enumerate() {
            for (kk, values) in panel.chunks_exact(nr).enumerate() {
                for (c, v) in values.iter().enumerate().take(n - p * nr) {
                    w[(p * nr + c) * k + kk] = *v;
                }
            }
        }
        Tensor::from_vec(w, (n, k), device)
    }

    /// `out[i, j] (+)= x[i, :] . w[j0 + j, :]` for `j < nn`: a column block of
    /// [`linear_packed`], starting at a panel (`j0` a multiple of the panel width).
    ///
    /// With more than [`SMALL_M`] rows, the product can start from `onto` (a bias and/or
    /// a residual) instead of zero or the output; fewer rows take [`Onto::NONE`].
    ///
    /// # Safety
    /// `x` holds `m` rows of `k`; `out` is valid for `m` rows of `nn` values `ldo`
    /// apart; `j0 + nn <= n`; `onto`'s pointers as [`Onto`] says.
    #[allow(clippy::too_many_arguments)]
    unsafe fn multiply(
        &self,
        x: &[f32],
        m: usize,
        j0: usize,
        nn: usize,
        out: *mut f32,
        ldo: usize,
        accumulate: bool,
        onto: Onto,
    ) {
        debug_assert!(
            j0.is_multiple_of(self.panel_width()) && j0 + nn <= self.n && x.len() >= m * self.k
        );
        debug_assert!(
            m > SMALL_M || onto.is_none(),
            "few rows take no bias or residual here"
        );
        let panels = self.data()[j0 * self.k..].as_ptr();
        #[cfg(target_arch = "x86_64")]
        {
            // A PackedWeight exists only where its Isa's features were found.
            let (k, xp) = (self.k, x.as_ptr());
            match (self.isa, m) {
                (Isa::Avx512, 1) => few_rows_ready::<1>(xp, k, panels, nn, out, ldo, accumulate),
                (Isa::Avx512, 2) => few_rows_ready::<2>(xp, k, panels, nn, out, ldo, accumulate),
                (Isa::Avx512, 3) => few_rows_ready::<3>(xp, k, panels, nn, out, ldo, accumulate),
                (Isa::Avx512, 4) => few_rows_ready::<4>(xp, k, panels, nn, out, ldo, accumulate),
                (Isa::Avx512, _) => {
                    let ready = Panels::Ready(panels);
                    outer_avx512(x, m, k, ready, nn, out, ldo, accumulate, onto)
                }
                (Isa::Avx2, 1) => avx2::few_rows::<1>(xp, k, panels, nn, out, ldo, accumulate),
                (Isa::Avx2, 2) => avx2::few_rows::<2>(xp, k, panels, nn, out, ldo, accumulate),
                (Isa::Avx2, 3) => avx2::few_rows::<3>(xp, k, panels, nn, out, ldo, accumulate),
                (Isa::Avx2, 4) => avx2::few_rows::<4>(xp, k, panels, nn, out, ldo, accumulate),
                (Isa::Avx2, _) => {
                    let ready = avx2::Ready { panels, k };
                    avx2::outer(x, m, k, ready, nn, out, ldo, accumulate, onto)
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (panels, out, ldo, accumulate);
            unreachable!("PackedWeight needs x86_64 with AVX2");
        }
    }
}

/// `out[i, j] (+)= x[i, :] . w[j, :]` for `M` (at most [`SMALL_M`]) rows over laid-out
/// panels (decoding): each panel streams by once, `k`-major, into `M` x 2 accumulators
/// per pair of steps (two sets, so that consecutive steps do not wait on each other).
///
/// # Safety
/// AVX-512F, AVX2, FMA; `x` holds `M` rows of `k`; `panels` holds
/// `nn.div_ceil(PACK_NR)` panels, 64-byte aligned; `out` valid for `M` rows of `nn`
/// values `ldo` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::needless_range_loop)] // row i indexes both accumulator sets and x
unsafe fn few_rows_ready<const M: usize>(
    x: *const f32,
    k: usize,
    panels: *const f32,
    nn: usize,
    out: *mut f32,
    ldo: usize,
    accumulate: bool,
) {
    use std::arch::x86_64::*;
    for j in (0..nn).step_by(PACK_NR) {
        let nr = PACK_NR.min(nn - j);
        let mask = |from: usize| -> u16 {
            let lanes = nr.saturating_sub(from).min(16);
            ((1u32 << lanes) - 1) as u16
        };
        let (m0, m1) = (mask(0), mask(16));
        let panel = panels.add(j * k);
        let mut c = [[_mm512_setzero_ps(); 2]; M];
        let mut d = [[_mm512_setzero_ps(); 2]; M];
        let mut kk = 0;
        while kk + 2 <= k {
            let p = panel.add(kk * PACK_NR);
            let (b0, b1) = (_mm512_load_ps(p), _mm512_load_ps(p.add(16)));
            let (b2, b3) = (_mm512_load_ps(p.add(32)), _mm512_load_ps(p.add(48)));
            for i in 0..M {
                let a = _mm512_set1_ps(*x.add(i * k + kk));
                c[i][0] = _mm512_fmadd_ps(a, b0, c[i][0]);
                c[i][1] = _mm512_fmadd_ps(a, b1, c[i][1]);
                let a = _mm512_set1_ps(*x.add(i * k + kk + 1));
                d[i][0] = _mm512_fmadd_ps(a, b2, d[i][0]);
                d[i][1] = _mm512_fmadd_ps(a, b3, d[i][1]);
            }
            kk += 2;
        }
        if kk < k {
            let p = panel.add(kk * PACK_NR);
            let (b0, b1) = (_mm512_load_ps(p), _mm512_load_ps(p.add(16)));
            for i in 0..M {
                let a = _mm512_set1_ps(*x.add(i * k + kk));
                c[i][0] = _mm512_fmadd_ps(a, b0, c[i][0]);
                c[i][1] = _mm512_fmadd_ps(a, b1, c[i][1]);
            }
        }
        for i in 0..M {
            let o = out.add(i * ldo + j);
            let mut v0 = _mm512_add_ps(c[i][0], d[i][0]);
            let mut v1 = _mm512_add_ps(c[i][1], d[i][1]);
            if accumulate {
                v0 = _mm512_add_ps(v0, _mm512_maskz_loadu_ps(m0, o));
                v1 = _mm512_add_ps(v1, _mm512_maskz_loadu_ps(m1, o.add(16)));
            }
            _mm512_mask_storeu_ps(o, m0, v0);
            _mm512_mask_storeu_ps(o.add(16), m1, v1);
        }
    }
}

/// `dst[kk * width + r] = src[r * ld + kk]` for `r < rows`, `kk < kc`, and zero for the
/// rows `rows..width`: a weight panel or a tile of `x` for [`packed_avx512`], `k`-major.
/// Groups of 8 rows by 8 values are transposed in registers, then groups of 4 by 4.
///
/// Not inlined, so that it stays an AVX2 function: inlined into the AVX-512 caller, its
/// scalar remainder loops were turned into scatters, which are slow on this CPU.
///
/// # Safety
/// AVX2 present; `src` valid for `rows` (at most `width`) rows of `kc` values `ld`
/// apart; `dst` for `kc * width` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline(never)]
unsafe fn transpose_into(
    src: *const f32,
    ld: usize,
    rows: usize,
    kc: usize,
    dst: *mut f32,
    width: usize,
) {
    use std::arch::x86_64::*;
    debug_assert!(rows <= width);
    let (k8, k4) = (kc / 8 * 8, kc / 4 * 4);
    let mut r0 = 0;
    while r0 + 8 <= rows {
        let mut kk = 0;
        while kk < k8 {
            let row = |r: usize| _mm256_loadu_ps(src.add((r0 + r) * ld + kk));
            let (t0, t1) = (
                _mm256_unpacklo_ps(row(0), row(1)),
                _mm256_unpackhi_ps(row(0), row(1)),
            );
            let (t2, t3) = (
                _mm256_unpacklo_ps(row(2), row(3)),
                _mm256_unpackhi_ps(row(2), row(3)),
            );
            let (t4, t5) = (
                _mm256_unpacklo_ps(row(4), row(5)),
                _mm256_unpackhi_ps(row(4), row(5)),
            );
            let (t6, t7) = (
                _mm256_unpacklo_ps(row(6), row(7)),
                _mm256_unpackhi_ps(row(6), row(7)),
            );
            let s0 = _mm256_shuffle_ps::<0x44>(t0, t2);
            let s1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
            let s2 = _mm256_shuffle_ps::<0x44>(t1, t3);
            let s3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
            let s4 = _mm256_shuffle_ps::<0x44>(t4, t6);
            let s5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
            let s6 = _mm256_shuffle_ps::<0x44>(t5, t7);
            let s7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
            let cols = [
                _mm256_permute2f128_ps::<0x20>(s0, s4),
                _mm256_permute2f128_ps::<0x20>(s1, s5),
                _mm256_permute2f128_ps::<0x20>(s2, s6),
                _mm256_permute2f128_ps::<0x20>(s3, s7),
                _mm256_permute2f128_ps::<0x31>(s0, s4),
                _mm256_permute2f128_ps::<0x31>(s1, s5),
                _mm256_permute2f128_ps::<0x31>(s2, s6),
                _mm256_permute2f128_ps::<0x31>(s3, s7),
            ];
            for (c, v) in cols.iter().enumerate() {
                _mm256_storeu_ps(dst.add((kk + c) * width + r0), *v);
            }
            kk += 8;
        }
        for kk in k8..kc {
            for r in r0..r0 + 8 {
                *dst.add(kk * width + r) = *src.add(r * ld + kk);
            }
        }
        r0 += 8;
    }
    while r0 + 4 <= rows {
        let mut kk = 0;
        while kk < k4 {
            let row = |r: usize| _mm_loadu_ps(src.add((r0 + r) * ld + kk));
            let (t0, t1) = (
                _mm_unpacklo_ps(row(0), row(1)),
                _mm_unpackhi_ps(row(0), row(1)),
            );
            let (t2, t3) = (
                _mm_unpacklo_ps(row(2), row(3)),
                _mm_unpackhi_ps(row(2), row(3)),
            );
            let cols = [
                _mm_movelh_ps(t0, t2),
                _mm_movehl_ps(t2, t0),
                _mm_movelh_ps(t1, t3),
                _mm_movehl_ps(t3, t1),
            ];
            for (c, v) in cols.iter().enumerate() {
                _mm_storeu_ps(dst.add((kk + c) * width + r0), *v);
            }
            kk += 4;
        }
        for kk in k4..kc {
            for r in r0..r0 + 4 {
                *dst.add(kk * width + r) = *src.add(r * ld + kk);
            }
        }
        r0 += 4;
    }
    for kk in 0..kc {
        for r in r0..width {
            *dst.add(kk * width + r) = if r < rows { *src.add(r * ld + kk) } else { 0.0 };
        }
    }
}

/// The slice `k0..k0 + kc` of `x`'s `m` rows (`[m, k]`) into tiles of `mr` rows, each
/// `k`-major (`kk * mr + r`) and `tile_len` apart from `xp` on, zeros for the rows past
/// `m`: what an outer-product kernel's tiles read, so that a step reads `mr` adjacent
/// values.
///
/// # Safety
/// AVX2 present; `xp` valid for `m.div_ceil(mr)` tiles of `tile_len >= kc * mr` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn pack_rows(
    x: &[f32],
    m: usize,
    k: usize,
    k0: usize,
    kc: usize,
    xp: *mut f32,
    tile_len: usize,
    mr: usize,
) {
    debug_assert!(x.len() >= m * k && k0 + kc <= k && kc * mr <= tile_len);
    for i in (0..m).step_by(mr) {
        let (rows, tile) = (x.as_ptr().add(i * k + k0), xp.add(i / mr * tile_len));
        transpose_into(rows, k, mr.min(m - i), kc, tile, mr);
    }
}

/// One register tile of [`packed_avx512`]: `(x tile, panel, kc, out, ldo, src, lds,
/// bias, mask0, mask1)`, `MR` rows of `x` by the panel's [`PACK_NR`] columns, of which
/// the masks keep those that exist. The tile starts from `src` (rows `lds` apart: the
/// output itself, or a residual) plus `bias` (one value per column), each where not
/// null.
type OuterTile = (
    *const f32,
    *const f32,
    usize,
    *mut f32,
    usize,
    *const f32,
    usize,
    *const f32,
    u16,
    u16,
);

/// Where a product of the outer-product kernel starts, besides zero or its output:
/// the bias of the output's columns (`bias`, one value per column) and/or a residual
/// (`res`, rows `ldr` apart), each at the block's first column, null where absent.
/// Starting there leaves the sum `(residual + bias) + x w^T` as a prefill of the output
/// would, without writing and reading that prefill.
#[derive(Clone, Copy)]
struct Onto {
    bias: *const f32,
    res: *const f32,
    ldr: usize,
}

impl Onto {
    const NONE: Self = Self {
        bias: std::ptr::null(),
        res: std::ptr::null(),
        ldr: 0,
    };

    fn is_none(&self) -> bool {
        self.bias.is_null() && self.res.is_null()
    }

    /// What the register tile at row `i`, column `j` of a block starts from: `(rows,
    /// their stride, bias)`. After the first slice of `k` (`acc`), or when the product
    /// accumulates, the output itself (`o`, rows `ldo` apart) and no bias; else the
    /// residual and/or the bias, each null where absent (then zero).
    ///
    /// # Safety
    /// `i` and `j` inside the block the pointers were made for.
    unsafe fn tile_start(
        &self,
        acc: bool,
        o: *mut f32,
        ldo: usize,
        i: usize,
        j: usize,
    ) -> (*const f32, usize, *const f32) {
        if acc {
            return (o as *const f32, ldo, std::ptr::null());
        }
        let res = if self.res.is_null() {
            std::ptr::null()
        } else {
            self.res.add(i * self.ldr + j)
        };
        let bias = if self.bias.is_null() {
            std::ptr::null()
        } else {
            self.bias.add(j)
        };
        (res, self.ldr, bias)
    }
}

/// # Safety
/// As [`packed_avx512`], for this tile's `MR` rows and the masked columns.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn outer_tile<const MR: usize>(t: OuterTile) {
    use std::arch::x86_64::*;
    let (xt, panel, kc, out, ldo, src, lds, bias, m0, m1) = t;
    let mut c = [[_mm512_setzero_ps(); 2]; MR];
    if !src.is_null() {
        for (i, ci) in c.iter_mut().enumerate() {
            ci[0] = _mm512_maskz_loadu_ps(m0, src.add(i * lds));
            ci[1] = _mm512_maskz_loadu_ps(m1, src.add(i * lds + 16));
        }
    }
    if !bias.is_null() {
        let (b0, b1) = (
            _mm512_maskz_loadu_ps(m0, bias),
            _mm512_maskz_loadu_ps(m1, bias.add(16)),
        );
        for ci in c.iter_mut() {
            ci[0] = _mm512_add_ps(ci[0], b0);
            ci[1] = _mm512_add_ps(ci[1], b1);
        }
    }
    for kk in 0..kc {
        let b0 = _mm512_load_ps(panel.add(kk * PACK_NR));
        let b1 = _mm512_load_ps(panel.add(kk * PACK_NR + 16));
        for (i, ci) in c.iter_mut().enumerate() {
            let a = _mm512_set1_ps(*xt.add(kk * PACK_MR + i));
            ci[0] = _mm512_fmadd_ps(a, b0, ci[0]);
            ci[1] = _mm512_fmadd_ps(a, b1, ci[1]);
        }
    }
    for (i, ci) in c.iter().enumerate() {
        _mm512_mask_storeu_ps(out.add(i * ldo), m0, ci[0]);
        _mm512_mask_storeu_ps(out.add(i * ldo + 16), m1, ci[1]);
    }
}

/// One of our own product kernels: `(x, m, k, w, nn, out, ldo, accumulate)`, as
/// [`small_m_avx2`], [`tiled_avx2`] and the packed ones take them.
type RowKernel = unsafe fn(&[f32], usize, usize, &[f32], usize, *mut f32, usize, bool);

/// The kernel of our own for a product of `m` rows on this CPU, or `None` for `gemm`.
#[cfg_attr(not(target_arch = "x86_64"), allow(unused_variables))]
fn row_kernel(m: usize) -> Option<RowKernel> {
    #[cfg(target_arch = "x86_64")]
    {
        if m <= SMALL_M && has_avx2_fma() {
            return Some(small_m_avx2);
        }
        if m <= TILE_M && tiled() {
            return Some(tiled_avx2);
        }
        if m > TILE_M && tiled() && has_avx512f() {
            return Some(packed_avx512);
        }
    }
    None
}

/// `act` on one value, with the formulas candle's tensor ops use.
#[inline]
fn activate(act: Activation, v: f32) -> f32 {
    match act {
        Activation::Gelu => {
            (candle_core::cpu::erf::erf_f32(v * std::f32::consts::FRAC_1_SQRT_2) + 1.0) * 0.5 * v
        }
        Activation::GeluTanh => {
            0.5 * v
                * (1.0
                    + f32::tanh(
                        (2.0f32 / std::f32::consts::PI).sqrt() * v * (1.0 + 0.044715 * v * v),
                    ))
        }
        Activation::QuickGelu => v / (1.0 + (-1.702 * v).exp()),
        Activation::Relu => v.max(0.0),
        Activation::Silu => v / (1.0 + (-v).exp()),
    }
}

/// `row <- act(row)`, eight lanes at a time where the CPU allows (the scalar
/// [`activate`] for GELU's tanh form and for the tail).
fn activate_row(act: Activation, row: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if act != Activation::GeluTanh && has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        unsafe { activate_row_avx2(act, row) };
        return;
    }
    for v in row {
        *v = activate(act, *v);
    }
}

/// [`activate_row`] with AVX2: the sigmoid forms through [`exp_avx2`], exact GELU through
/// [`erfc_avx2`] (absolute error below 2e-7 against the scalar formula's `erf`).
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn activate_row_avx2(act: Activation, row: &mut [f32]) {
    use std::arch::x86_64::*;
    let n8 = row.len() / 8 * 8;
    let p = row.as_mut_ptr();
    let one = _mm256_set1_ps(1.0);
    let sigmoid_times = |v: __m256, a: f32| {
        // v * sigmoid(a v) = v / (1 + e^(-a v)); a huge e^(-a v) gives 0, as it should.
        let e = exp_avx2(_mm256_mul_ps(v, _mm256_set1_ps(-a)));
        _mm256_div_ps(v, _mm256_add_ps(one, e))
    };
    for i in (0..n8).step_by(8) {
        let v = _mm256_loadu_ps(p.add(i));
        let y = match act {
            Activation::QuickGelu => sigmoid_times(v, 1.702),
            Activation::Silu => sigmoid_times(v, 1.0),
            Activation::Relu => _mm256_max_ps(v, _mm256_setzero_ps()),
            Activation::Gelu => {
                // 0.5 v (1 + erf(v / sqrt 2)): with c = erfc(|v| / sqrt 2), 1 + erf is
                // 2 - c for v >= 0 and c itself for v < 0 (no cancellation there).
                let x = _mm256_mul_ps(v, _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
                let c = erfc_avx2(_mm256_andnot_ps(_mm256_set1_ps(-0.0), x));
                let neg = _mm256_cmp_ps(v, _mm256_setzero_ps(), _CMP_LT_OQ);
                let s = _mm256_blendv_ps(_mm256_sub_ps(_mm256_set1_ps(2.0), c), c, neg);
                _mm256_mul_ps(_mm256_mul_ps(v, _mm256_set1_ps(0.5)), s)
            }
            Activation::GeluTanh => unreachable!("the tanh form stays scalar"),
        };
        _mm256_storeu_ps(p.add(i), y);
    }
    for v in &mut row[n8..] {
        *v = activate(act, *v);
    }
}

/// `erfc(x)` of eight lanes for `x >= 0` (or NaN): Abramowitz and Stegun 7.1.26,
/// `t (a1 + t (a2 + ... a5 t)) e^(-x^2)` with `t = 1 / (1 + p x)`, absolute error at
/// most 1.5e-7 in exact arithmetic. Large `x` gives 0 (the `exp` underflows).
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn erfc_avx2(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let one = _mm256_set1_ps(1.0);
    let t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(0.327_591_1), x, one));
    let mut y = _mm256_set1_ps(1.061_405_4);
    for c in [-1.453_152_1, 1.421_413_8, -0.284_496_74, 0.254_829_6] {
        y = _mm256_fmadd_ps(y, t, _mm256_set1_ps(c));
    }
    let e = exp_avx2(_mm256_sub_ps(_mm256_setzero_ps(), _mm256_mul_ps(x, x)));
    _mm256_mul_ps(_mm256_mul_ps(y, t), e)
}

/// `x @ weight.T + bias`, then `act`, plus `residual`: `y = act(x W^T + b) + r`.
///
/// # Shapes
/// * `x`: `[..., in]`, contiguous; `weight`: `[out, in]`, contiguous; `bias`: `[out]`
/// * `residual`: the output's shape `[..., out]`, contiguous
/// * returns `[..., out]`
pub fn linear(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    act: Option<Activation>,
    residual: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    linear_with(x, Weight::Plain(weight), bias, act, residual)
}

/// [`linear`] with a weight laid out at load time ([`PackedWeight`]). `x` may be a
/// view (it is copied); `Ok(None)` as for [`linear`] otherwise (the caller then needs
/// [`PackedWeight::unpack`] for the plain ops).
pub fn linear_packed(
    x: &Tensor,
    weight: &PackedWeight,
    bias: Option<&Tensor>,
    act: Option<Activation>,
    residual: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    if eligible(&[x]) && !x.is_contiguous() {
        return linear_with(
            &x.contiguous()?,
            Weight::Packed(weight),
            bias,
            act,
            residual,
        );
    }
    linear_with(x, Weight::Packed(weight), bias, act, residual)
}

/// The weight operand of [`linear_with`].
#[derive(Clone, Copy)]
enum Weight<'a> {
    Plain(&'a Tensor),
    Packed(&'a PackedWeight),
    Quant(&'a QuantWeight),
}

/// [`linear`] with a quantised weight ([`QuantWeight`]); `Ok(None)` as for [`linear`]
/// (the caller then needs [`QuantWeight::dequantize`] for the plain ops).
pub fn linear_quant(
    x: &Tensor,
    weight: &QuantWeight,
    bias: Option<&Tensor>,
    act: Option<Activation>,
    residual: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    if eligible(&[x]) && !x.is_contiguous() {
        return linear_with(&x.contiguous()?, Weight::Quant(weight), bias, act, residual);
    }
    linear_with(x, Weight::Quant(weight), bias, act, residual)
}

/// Whether the CPU runs the quantised kernels: AVX2, FMA and F16C.
fn has_quant_kernels() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static YES: OnceLock<bool> = OnceLock::new();
        *YES.get_or_init(|| has_avx2_fma() && std::arch::is_x86_feature_detected!("f16c"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A linear layer's quantised weight `[n, k]` in one of candle's block formats, `Q8_0`
/// or `Q4K`, laid out once for our quantised kernels: panels of 16 output rows, each a
/// run of groups along `k` (one per candle block) holding the 16 rows' scales and then
/// their values (`kernels/quant.rs` and `kernels/q4k.rs` give the byte layouts). The
/// dequantised values are exactly candle's; `Q8_0` takes the same 8.5 bits per weight,
/// `Q4K` 4.75 instead of 4.5 (its 6-bit scales kept unpacked).
///
/// `Q8_0`: decoding's few rows stream each group once, with a block's sums scaled at its
/// end; more rows run the f32 outer-product kernel on slices dequantised into L1 as it
/// goes; the activations stay f32. candle's own `Q8_0` kernel rounds the activations to
/// 8 bits per block and takes dot products per output; on an AVX2-only CPU it ran a
/// 600-row prompt at 25 GFLOP/s, and a 1B LLaMA's prompt about as slowly per row as a
/// decoding step.
///
/// `Q4K`: the activations are rounded to 8 bits per 32 values and the products summed
/// in integers (`maddubs`), in tiles of up to 4 rows by 16 columns, for decoding and
/// prompts alike.
pub struct QuantWeight {
    buf: Vec<u8>,
    start: usize,
    n: usize,
    k: usize,
    format: QFormat,
}

/// The block formats [`QuantWeight`] lays out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum QFormat {
    Q8_0,
    Q4K,
}

#[cfg(target_arch = "x86_64")]
impl QFormat {
    /// Values along `k` per candle block and per group of a panel.
    fn block(self) -> usize {
        match self {
            Self::Q8_0 => quant::BLOCK,
            Self::Q4K => q4k::BLOCK,
        }
    }

    /// Bytes of a candle block.
    fn candle_block(self) -> usize {
        match self {
            Self::Q8_0 => quant::CANDLE_BLOCK,
            Self::Q4K => q4k::CANDLE_BLOCK,
        }
    }

    /// Bytes of a panel's group.
    fn group(self) -> usize {
        match self {
            Self::Q8_0 => quant::GROUP,
            Self::Q4K => q4k::GROUP,
        }
    }
}

impl std::fmt::Debug for QuantWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QuantWeight([{}, {}], {:?})",
            self.n,
            self.k,
            self.dtype()
        )
    }
}

impl QuantWeight {
    /// `weight` laid out for the quantised kernels, or `None` where they do not take it:
    /// a format other than `Q8_0` and `Q4K`, not a matrix, not on the CPU, a CPU without
    /// AVX2, FMA and F16C, or the kernels turned off.
    pub fn new(weight: &candle_core::quantized::QTensor) -> Result<Option<Self>> {
        #[cfg(target_arch = "x86_64")]
        {
            use candle_core::quantized::GgmlDType;
            let format = match weight.dtype() {
                GgmlDType::Q8_0 => QFormat::Q8_0,
                GgmlDType::Q4K => QFormat::Q4K,
                _ => return Ok(None),
            };
            if !enabled() || !has_quant_kernels() || !weight.device().is_cpu() {
                return Ok(None);
            }
            let Ok((n, k)) = weight.shape().dims2() else {
                return Ok(None);
            };
            if n == 0 || k == 0 || !k.is_multiple_of(format.block()) {
                return Ok(None);
            }
            let data = weight.data()?;
            let per_row = k / format.block() * format.candle_block();
            if data.len() != n * per_row {
                candle_core::bail!(
                    "quantised weight [{n}, {k}] holds {} bytes, expected {}",
                    data.len(),
                    n * per_row
                );
            }
            let panel = k / format.block() * format.group();
            let panels = n.div_ceil(AVX2_NR);
            let mut buf = vec![0u8; panels * panel + 64];
            let start = buf.as_ptr().align_offset(64).min(64);
            buf[start..start + panels * panel]
                .par_chunks_mut(panel)
                .enumerate()
                .for_each(|(p, dst)| {
                    let rows = AVX2_NR.min(n - p * AVX2_NR);
                    let src = &data[p * AVX2_NR * per_row..(p * AVX2_NR + rows) * per_row];
                    match format {
                        QFormat::Q8_0 => quant::lay_out_panel(src, rows, k, dst),
                        QFormat::Q4K => q4k::lay_out_panel(src, rows, k, dst),
                    }
                });
            Ok(Some(Self {
                buf,
                start,
                n,
                k,
                format,
            }))
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = weight;
            Ok(None)
        }
    }

    /// `(out, in)`, as the stored weight's shape.
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// The block format of the values.
    pub fn dtype(&self) -> candle_core::quantized::GgmlDType {
        match self.format {
            QFormat::Q8_0 => candle_core::quantized::GgmlDType::Q8_0,
            QFormat::Q4K => candle_core::quantized::GgmlDType::Q4K,
        }
    }

    /// Bytes held by the laid-out weight.
    pub fn size_in_bytes(&self) -> usize {
        self.buf.len()
    }

    #[cfg(target_arch = "x86_64")]
    fn panel_bytes(&self) -> usize {
        self.k / self.format.block() * self.format.group()
    }

    #[cfg(target_arch = "x86_64")]
    fn data(&self) -> &[u8] {
        let len = self.n.div_ceil(AVX2_NR) * self.panel_bytes();
        &self.buf[self.start..self.start + len]
    }

    /// The weight dequantised, `[out, in]` in f32: the values of candle's
    /// `QTensor::dequantize`, for the plain ops.
    pub fn dequantize(&self, device: &candle_core::Device) -> Result<Tensor> {
        #[cfg(target_arch = "x86_64")]
        {
            let (n, k) = (self.n, self.k);
            let mut w = vec![0f32; n * k];
            for (p, panel) in self.data().chunks_exact(self.panel_bytes()).enumerate() {
                let rows = AVX2_NR.min(n - p * AVX2_NR);
                let mut out = vec![vec![0f32; k]; AVX2_NR];
                match self.format {
                    QFormat::Q8_0 => quant::dequantize_panel(panel, k, &mut out),
                    QFormat::Q4K => q4k::dequantize_panel(panel, k, &mut out),
                }
                for (c, row) in out.iter().take(rows).enumerate() {
                    w[(p * AVX2_NR + c) * k..(p * AVX2_NR + c + 1) * k].copy_from_slice(row);
                }
            }
            Tensor::from_vec(w, (n, k), device)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = device;
            unreachable!("QuantWeight needs x86_64")
        }
    }

    /// `out[i, j] (+)= x[i, :] . w[j0 + j, :]` for `j < nn`: a column block of
    /// [`linear_quant`], as [`PackedWeight::multiply`] for a laid-out f32 weight.
    ///
    /// # Safety
    /// As [`PackedWeight::multiply`], with panels of 16 columns.
    #[allow(clippy::too_many_arguments)]
    unsafe fn multiply(
        &self,
        x: &[f32],
        m: usize,
        j0: usize,
        nn: usize,
        out: *mut f32,
        ldo: usize,
        accumulate: bool,
        onto: Onto,
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            debug_assert!(j0.is_multiple_of(AVX2_NR) && j0 + nn <= self.n && x.len() >= m * self.k);
            debug_assert!(m > SMALL_M || onto.is_none());
            let panels = self.data()[j0 / AVX2_NR * self.panel_bytes()..].as_ptr();
            let (k, xp) = (self.k, x.as_ptr());
            if self.format == QFormat::Q4K {
                return q4k::multiply(x, m, k, panels, nn, out, ldo, accumulate, onto);
            }
            match m {
                1 => quant::few_rows::<1>(xp, k, panels, nn, out, ldo, accumulate),
                2 => quant::few_rows::<2>(xp, k, panels, nn, out, ldo, accumulate),
                3 => quant::few_rows::<3>(xp, k, panels, nn, out, ldo, accumulate),
                4 => quant::few_rows::<4>(xp, k, panels, nn, out, ldo, accumulate),
                _ => quant::outer(x, m, k, panels, nn, out, ldo, accumulate, onto),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (x, m, j0, nn, out, ldo, accumulate, onto);
            unreachable!("QuantWeight needs x86_64");
        }
    }
}

fn linear_with(
    x: &Tensor,
    weight: Weight<'_>,
    bias: Option<&Tensor>,
    act: Option<Activation>,
    residual: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    let mut all = vec![x];
    if let Weight::Plain(w) = weight {
        all.push(w);
    }
    all.extend(bias);
    all.extend(residual);
    if act.is_some() && residual.is_some() {
        // No layer asks for both; refuse rather than pick an order silently.
        candle_core::bail!("kernels::linear takes an activation or a residual, not both")
    }
    let plain_contiguous = match weight {
        Weight::Plain(w) => w.is_contiguous(),
        Weight::Packed(_) | Weight::Quant(_) => true,
    };
    if !eligible(&all) || x.rank() == 0 || !x.is_contiguous() || !plain_contiguous {
        return Ok(None);
    }
    let (n, k) = match weight {
        Weight::Plain(w) => w.dims2()?,
        Weight::Packed(p) => (p.n, p.k),
        Weight::Quant(q) => (q.n, q.k),
    };
    let mut out_dims = x.dims().to_vec();
    if out_dims.pop() != Some(k) {
        return Ok(None); // the plain path reports the mismatch
    }
    out_dims.push(n);
    let m = x.elem_count() / k.max(1);
    if bias.is_some_and(|b| b.dims() != [n] || !b.is_contiguous())
        || residual.is_some_and(|r| r.dims() != out_dims.as_slice() || !r.is_contiguous())
        || m == 0
        || k == 0
    {
        return Ok(None);
    }
    let (xg, xl) = x.storage_and_layout();
    let wg = match weight {
        Weight::Plain(w) => Some(w.storage_and_layout()),
        Weight::Packed(_) | Weight::Quant(_) => None,
    };
    let bg = bias.map(|b| b.storage_and_layout());
    let rg = residual.map(|r| r.storage_and_layout());
    let xs = f32_data(&xg, xl)?;
    let ws = wg.as_ref().map(|(g, l)| f32_data(g, l)).transpose()?;
    let blocks = match weight {
        Weight::Plain(_) => column_blocks(n, m, k, 16),
        // Whole panels per thread.
        Weight::Packed(p) => column_blocks(n, m, k, p.panel_width()),
        Weight::Quant(_) => column_blocks(n, m, k, AVX2_NR),
    };
    let bs = bg.as_ref().map(|(g, l)| f32_data(g, l)).transpose()?;
    let rs = rg.as_ref().map(|(g, l)| f32_data(g, l)).transpose()?;

    let mut out = reserve(m * n);
    let dst = SharedMut(out.as_mut_ptr());
    // The laid-out weight's outer-product kernel (more than SMALL_M rows) starts from
    // the bias and residual itself; the other kernels read them from a prefill of `out`.
    let onto_kernel = matches!(weight, Weight::Packed(_) | Weight::Quant(_)) && m > SMALL_M;
    let read_dst = (bs.is_some() || rs.is_some()) && !onto_kernel;
    blocks.par_iter().for_each(|&(j0, nn)| {
        // SAFETY: rows 0..m, columns j0..j0+nn of `out` belong to this task only, and are
        // written (prefill or the product) before the activation reads them; the reads
        // stay inside x (m*k), the weight's rows j0..j0+nn, bias and residual.
        unsafe {
            if read_dst {
                // The product accumulates onto the bias and/or the residual.
                let bias = bs.map(|b| &b[j0..j0 + nn]);
                for i in 0..m {
                    let o = dst.at(i * n + j0);
                    match (rs.map(|r| &r[i * n + j0..i * n + j0 + nn]), bias) {
                        (Some(r), Some(b)) => {
                            for (j, (r, b)) in r.iter().zip(b).enumerate() {
                                o.add(j).write(r + b);
                            }
                        }
                        (Some(src), None) | (None, Some(src)) => {
                            std::ptr::copy_nonoverlapping(src.as_ptr(), o, nn)
                        }
                        (None, None) => unreachable!("read_dst without bias or residual"),
                    }
                }
            }
            let onto = if onto_kernel {
                Onto {
                    bias: bs.map_or(std::ptr::null(), |b| b[j0..].as_ptr()),
                    res: rs.map_or(std::ptr::null(), |r| r[j0..].as_ptr()),
                    ldr: n,
                }
            } else {
                Onto::NONE
            };
            // SAFETY (of the laid-out weights' pointers): j0 is a multiple of the panel
            // width, so this is the start of a panel, and the block's panels follow it.
            if let Weight::Packed(p) = weight {
                p.multiply(xs, m, j0, nn, dst.at(j0), n, read_dst, onto);
            } else if let Weight::Quant(q) = weight {
                q.multiply(xs, m, j0, nn, dst.at(j0), n, read_dst, onto);
            } else if let Some(kernel) = row_kernel(m) {
                let ws = ws.expect("a plain weight's data");
                kernel(
                    xs,
                    m,
                    k,
                    &ws[j0 * k..(j0 + nn) * k],
                    nn,
                    dst.at(j0),
                    n,
                    read_dst,
                );
            } else {
                let ws = ws.expect("a plain weight's data");
                gemm::gemm(
                    m,
                    nn,
                    k,
                    dst.at(j0),
                    1,
                    n as isize,
                    read_dst,
                    xs.as_ptr(),
                    1,
                    k as isize,
                    ws.as_ptr().add(j0 * k),
                    k as isize,
                    1,
                    if read_dst { 1.0 } else { 0.0 },
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            if let Some(act) = act {
                for i in 0..m {
                    activate_row(act, std::slice::from_raw_parts_mut(dst.at(i * n + j0), nn));
                }
            }
        }
    });
    // SAFETY: the column blocks cover 0..n, and each wrote all m rows of its columns.
    let out = unsafe { written(out, m * n) };
    Ok(Some(Tensor::from_vec(out, out_dims, x.device())?))
}

/// Layer normalisation over the last dimension with the mean taken out first (the
/// variance of the centred row, as the reference computes it).
///
/// # Shapes
/// * `x`: `[..., size]`, contiguous; `weight`, `bias`: `[size]`
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f64) -> Result<Option<Tensor>> {
    if !eligible(&[x, weight, bias])
        || x.rank() == 0
        || !x.is_contiguous()
        || !weight.is_contiguous()
        || !bias.is_contiguous()
    {
        return Ok(None);
    }
    let size = x.dim(x.rank() - 1)?;
    if size == 0 || weight.dims() != [size] || bias.dims() != [size] {
        return Ok(None);
    }
    let rows = x.elem_count() / size;
    let mut out = vec![0.0; rows * size]; // written through slices, so initialised first
    let per_task = (rows / (4 * threads())).clamp(1, 64);
    let (xg, xl) = x.storage_and_layout();
    let (wg, wl) = weight.storage_and_layout();
    let (bg, bl) = bias.storage_and_layout();
    let (xs, ws, bs) = (f32_data(&xg, xl)?, f32_data(&wg, wl)?, f32_data(&bg, bl)?);
    let (ws, bs) = (&ws[..size], &bs[..size]);
    let n = size as f32;
    out.par_chunks_mut(per_task * size)
        .zip(xs[..rows * size].par_chunks(per_task * size))
        .for_each(|(o, x)| {
            for (o, x) in o.chunks_exact_mut(size).zip(x.chunks_exact(size)) {
                let mean = lane_sum(x, |v| v) / n;
                let var = lane_sum(x, |v| (v - mean) * (v - mean)) / n;
                let rstd = 1.0 / (var + eps as f32).sqrt();
                for (((o, x), w), b) in o.iter_mut().zip(x).zip(ws).zip(bs) {
                    *o = (x - mean) * rstd * w + b;
                }
            }
        });
    Ok(Some(Tensor::from_vec(out, x.dims(), x.device())?))
}

/// `sum(f(v))` over `x` in 16 independent partial sums, which the compiler keeps in
/// vector registers: a plain `iter().sum()` is one chain of dependent adds (f32 addition
/// is not reassociated), four cycles per element on this machine.
#[inline]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    const L: usize = 16;
    let mut acc = [0f32; L];
    let chunks = x.chunks_exact(L);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Where heads sit in a q/k/v tensor: element offset and strides per batch, head and
/// position (the feature stride is 1).
#[derive(Debug, Clone, Copy)]
struct Heads {
    batch: usize,
    len: usize,
    dim: usize,
    sb: usize,
    sh: usize,
    st: usize,
}

impl Heads {
    /// `[batch, heads, len, dim]` with any strides but a unit feature stride, or
    /// `[batch, len, heads * dim]` (heads not split yet) with a unit feature stride.
    fn of(layout: &Layout, heads: usize) -> Option<Self> {
        let (d, s) = (layout.dims(), layout.stride());
        match (d, s) {
            (&[b, h, t, hd], &[sb, sh, st, 1]) if h == heads => Some(Self {
                batch: b,
                len: t,
                dim: hd,
                sb,
                sh,
                st,
            }),
            (&[b, t, w], &[sb, st, 1]) if heads > 0 && w % heads == 0 => Some(Self {
                batch: b,
                len: t,
                dim: w / heads,
                sb,
                sh: w / heads,
                st,
            }),
            _ => None,
        }
    }
}

/// `row <- softmax(row)` in place.
fn softmax_row(row: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA (checked above).
        unsafe { softmax_row_avx2(row) };
        return;
    }
    let max = row.iter().fold(f32::NEG_INFINITY, |a, &s| a.max(s));
    let mut sum = 0.0f32;
    for s in row.iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    let inv = 1.0 / sum;
    for s in row.iter_mut() {
        *s *= inv;
    }
}

/// [`softmax_row`] eight lanes at a time, with [`exp_avx2`].
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_row_avx2(row: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = row.len();
    let n8 = n / 8 * 8;
    let p = row.as_mut_ptr();
    let mut mv = _mm256_set1_ps(f32::NEG_INFINITY);
    for i in (0..n8).step_by(8) {
        mv = _mm256_max_ps(mv, _mm256_loadu_ps(p.add(i)));
    }
    let mut lanes = [0f32; 8];
    _mm256_storeu_ps(lanes.as_mut_ptr(), mv);
    let max = row[n8..]
        .iter()
        .chain(&lanes)
        .fold(f32::NEG_INFINITY, |a, &s| a.max(s));
    let (maxv, mut sv) = (_mm256_set1_ps(max), _mm256_setzero_ps());
    for i in (0..n8).step_by(8) {
        let e = exp_avx2(_mm256_sub_ps(_mm256_loadu_ps(p.add(i)), maxv));
        _mm256_storeu_ps(p.add(i), e);
        sv = _mm256_add_ps(sv, e);
    }
    _mm256_storeu_ps(lanes.as_mut_ptr(), sv);
    let mut sum: f32 = lanes.iter().sum();
    for s in row[n8..].iter_mut() {
        *s = (*s - max).exp();
        sum += *s;
    }
    let inv = _mm256_set1_ps(1.0 / sum);
    for i in (0..n8).step_by(8) {
        _mm256_storeu_ps(p.add(i), _mm256_mul_ps(_mm256_loadu_ps(p.add(i)), inv));
    }
    for s in row[n8..].iter_mut() {
        *s /= sum;
    }
}

/// `exp` of eight lanes: `x = n ln 2 + r` with `|r| <= ln 2 / 2`, a degree-6 polynomial
/// for `e^r` (the Cephes `expf` coefficients, relative error about 2e-7) and `2^n` built
/// in the exponent bits. Inputs below -87.3 give 0 (the true value is below f32's
/// normal range), above 88.3 they are clamped; NaN stays NaN.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_avx2(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let x = _mm256_min_ps(_mm256_set1_ps(88.3), x); // NaN in x is kept (second operand)
    let tiny = _mm256_cmp_ps(x, _mm256_set1_ps(-87.3), _CMP_LT_OQ);
    let n = _mm256_round_ps(
        _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC,
    );
    // r = x - n ln2, with ln2 split in two so that n * hi is exact.
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut y = _mm256_set1_ps(1.987_569_1e-4);
    for c in [1.398_2e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
        y = _mm256_fmadd_ps(y, r, _mm256_set1_ps(c));
    }
    let y = _mm256_fmadd_ps(
        _mm256_mul_ps(y, r),
        r,
        _mm256_add_ps(r, _mm256_set1_ps(1.0)),
    );
    let bits = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
        23,
    );
    let e = _mm256_mul_ps(y, _mm256_castsi256_ps(bits));
    _mm256_andnot_ps(tiny, e)
}

/// A row of scores into attention weights: `row[j] += mask[j * stride]` where a mask
/// is given, then softmax over the first `visible` keys, and zero for the rest (keys a
/// causal query does not see).
///
/// # Safety
/// The mask pointer, where given, is valid for `visible` values `stride` apart.
unsafe fn weigh_row(row: &mut [f32], visible: usize, mask: Option<(*const f32, usize)>) {
    if let Some((m, stride)) = mask {
        for (j, s) in row[..visible].iter_mut().enumerate() {
            *s += *m.add(j * stride);
        }
    }
    softmax_row(&mut row[..visible]);
    row[visible..].fill(0.0);
}

/// Queries per task: scores for this many rows are held at once.
const QUERY_BLOCK: usize = 64;

/// Multi-head attention, `softmax(scale * q k^T + mask) v`, with heads merged in the
/// output.
///
/// `q` has `heads` heads and `k`, `v` have `kv_heads` (grouped-query attention when
/// fewer), each either split `[batch, heads, len, head_dim]` (any strides) or still
/// merged `[batch, len, heads * head_dim]` (any row stride, e.g. a slice of a fused qkv
/// projection). `causal` hides keys after each query's position, the queries being the
/// last `q_len` of `k_len` positions; `additive` must broadcast to
/// `[batch, heads, q_len, k_len]`.
///
/// Returns `[batch, q_len, heads * head_dim]`, contiguous.
#[allow(clippy::too_many_arguments)]
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    kv_heads: usize,
    causal: bool,
    additive: Option<&Tensor>,
    scale: f64,
) -> Result<Option<Tensor>> {
    if !eligible(&[q, k, v]) || heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
        return Ok(None);
    }
    let (Some(qh), Some(kh), Some(vh)) = (
        Heads::of(q.layout(), heads),
        Heads::of(k.layout(), kv_heads),
        Heads::of(v.layout(), kv_heads),
    ) else {
        return Ok(None);
    };
    let (b, tq, tk, d) = (qh.batch, qh.len, kh.len, qh.dim);
    if kh.batch != b || vh.batch != b || kh.dim != d || vh.dim != d || vh.len != tk {
        return Ok(None);
    }
    if tk == 0 || d == 0 || tq == 0 || (causal && tk < tq) {
        return Ok(None);
    }
    // The mask as f32 with broadcast strides: element (b, h, i, j) at the dot product.
    let mask = match additive {
        Some(m) => {
            let m = m.to_dtype(DType::F32)?.broadcast_as((b, heads, tq, tk))?;
            if !m.device().is_cpu() {
                return Ok(None);
            }
            Some(m)
        }
        None => None,
    };
    let group = heads / kv_heads;
    let width = heads * d;
    let mut out = reserve(b * tq * width);
    let dst = SharedMut(out.as_mut_ptr());
    let q_blocks = tq.div_ceil(QUERY_BLOCK);
    let offset = tk - tq.min(tk);
    let scale = scale as f32;

    // Our own kernels for long runs of queries (encoders, prefill), as tasks of one head
    // and a run of its queries, at least two tasks per thread.
    let chunks = (2 * threads())
        .div_ceil(b * heads)
        .min(tq / attend::MIN_QUERIES)
        .max(1);
    let per = tq.div_ceil(chunks);
    let own = cfg!(target_arch = "x86_64") && tiled() && attend::fits(per, d);
    // Fewer queries (decoding): one task per head, dot products, no layout.
    let few = !own && cfg!(target_arch = "x86_64") && tiled() && attend::fits_few(tq, d);
    // (Then `tq < MIN_QUERIES`, so `chunks` is 1 and `per` is `tq`.)

    let run = |qs: &[f32], ks: &[f32], vs: &[f32], ms: Option<(&[f32], &[usize])>| {
        #[cfg(target_arch = "x86_64")]
        if own || few {
            (0..b * heads * chunks).into_par_iter().for_each(|task| {
                let (bh, c) = (task / chunks, task % chunks);
                let (bi, hi) = (bh / heads, bh % heads);
                let kvh = hi / group;
                let i0 = c * per;
                if i0 >= tq {
                    return;
                }
                let task = attend::Head {
                    // SAFETY (the offsets): inside the tensors, as the layouts give them.
                    q: unsafe { qs.as_ptr().add(bi * qh.sb + hi * qh.sh + i0 * qh.st) },
                    qst: qh.st,
                    k: unsafe { ks.as_ptr().add(bi * kh.sb + kvh * kh.sh) },
                    kst: kh.st,
                    v: unsafe { vs.as_ptr().add(bi * vh.sb + kvh * vh.sh) },
                    vst: vh.st,
                    keys: tk,
                    dim: d,
                    rows: per.min(tq - i0),
                    first: i0,
                    causal,
                    offset,
                    scale,
                    mask: ms.map(|(m, s)| {
                        let at = bi * s[0] + hi * s[1] + i0 * s[2];
                        (unsafe { m.as_ptr().add(at) }, s[2], s[3])
                    }),
                    out: dst.at(bi * tq * width + i0 * width + hi * d),
                    ldo: width,
                };
                // SAFETY: AVX2 and FMA present and `d` a multiple of 16 (`fits`,
                // `fits_few`); the task writes rows i0..i0+rows of head hi of batch bi only.
                unsafe { attend::run(&task, own) };
            });
            return;
        }
        (0..b * heads * q_blocks).into_par_iter().for_each(|task| {
            let (bh, qb) = (task / q_blocks, task % q_blocks);
            let (bi, hi) = (bh / heads, bh % heads);
            let kvh = hi / group;
            let i0 = qb * QUERY_BLOCK;
            let rows = QUERY_BLOCK.min(tq - i0);
            let mut scores = reserve(rows * tk);
            let q0 = bi * qh.sb + hi * qh.sh + i0 * qh.st;
            let k0 = bi * kh.sb + kvh * kh.sh;
            let v0 = bi * vh.sb + kvh * vh.sh;
            // SAFETY: the reads stay inside the tensors (their layouts give the strides),
            // and the write covers rows i0..i0+rows of head hi of batch bi only.
            unsafe {
                gemm::gemm(
                    rows,
                    tk,
                    d,
                    scores.as_mut_ptr(),
                    1,
                    tk as isize,
                    false,
                    qs.as_ptr().add(q0),
                    1,
                    qh.st as isize,
                    ks.as_ptr().add(k0),
                    kh.st as isize,
                    1,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            // SAFETY: the product (no `read_dst`) wrote all rows x tk scores.
            let mut scores = unsafe { written(scores, rows * tk) };
            for r in 0..rows {
                let i = i0 + r;
                let row = &mut scores[r * tk..(r + 1) * tk];
                let visible = if causal { (offset + i + 1).min(tk) } else { tk };
                let mask = ms.map(|(m, ms)| {
                    let base = bi * ms[0] + hi * ms[1] + i * ms[2];
                    (m[base..].as_ptr(), ms[3])
                });
                // SAFETY: the mask's layout gives key j of this row at base + j * ms[3].
                unsafe { weigh_row(row, visible, mask) };
            }
            // SAFETY: as above; the output rows are `width` apart, this head's columns
            // are hi*d..(hi+1)*d.
            unsafe {
                gemm::gemm(
                    rows,
                    d,
                    tk,
                    dst.at(bi * tq * width + i0 * width + hi * d),
                    1,
                    width as isize,
                    false,
                    scores.as_ptr(),
                    1,
                    tk as isize,
                    vs.as_ptr().add(v0),
                    1,
                    vh.st as isize,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        });
    };
    let (qg, ql) = q.storage_and_layout();
    let (kg, kl) = k.storage_and_layout();
    let (vg, vl) = v.storage_and_layout();
    let mg = mask.as_ref().map(|m| m.storage_and_layout());
    let (qs, ks, vs) = (f32_data(&qg, ql)?, f32_data(&kg, kl)?, f32_data(&vg, vl)?);
    let ms = match &mg {
        Some((g, l)) => Some((f32_data(g, l)?, l.stride())),
        None => None,
    };
    run(qs, ks, vs, ms);
    // SAFETY: the tasks cover every (batch, head, query block), each writing its rows'
    // head_dim columns of that head.
    let out = unsafe { written(out, b * tq * width) };
    Ok(Some(Tensor::from_vec(out, (b, tq, width), q.device())?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attention::{merge_heads, sdpa, split_heads, AttnMask};
    use crate::test_util::{max_diff, rand};
    use candle_core::{Device, Var, D};

    fn plain_linear(x: &Tensor, w: &Tensor, b: Option<&Tensor>) -> Tensor {
        let y = x.broadcast_matmul(&w.t().unwrap()).unwrap();
        match b {
            Some(b) => y.broadcast_add(b).unwrap(),
            None => y,
        }
    }

    #[test]
    fn linear_matches_matmul_with_bias_activation_and_residual() {
        // Large enough for several column blocks (more than 2^20 multiply-adds).
        let x = rand(&[3, 50, 96], 1);
        let w = rand(&[300, 96], 2);
        let b = rand(&[300], 3);
        let r = rand(&[3, 50, 300], 4);
        let plain = plain_linear(&x, &w, Some(&b));
        let fused = linear(&x, &w, Some(&b), None, None).unwrap().unwrap();
        assert!(max_diff(&plain, &fused) < 1e-4);
        let no_bias = linear(&x, &w, None, None, None).unwrap().unwrap();
        assert!(max_diff(&plain_linear(&x, &w, None), &no_bias) < 1e-4);
        let with_res = linear(&x, &w, Some(&b), None, Some(&r)).unwrap().unwrap();
        assert!(max_diff(&(&plain + &r).unwrap(), &with_res) < 1e-4);
        let res_only = linear(&x, &w, None, None, Some(&r)).unwrap().unwrap();
        assert!(max_diff(&(plain_linear(&x, &w, None) + &r).unwrap(), &res_only) < 1e-4);
        for act in [
            Activation::Gelu,
            Activation::GeluTanh,
            Activation::QuickGelu,
            Activation::Relu,
            Activation::Silu,
        ] {
            let fused = linear(&x, &w, Some(&b), Some(act), None).unwrap().unwrap();
            let plain = act.apply(&plain).unwrap();
            assert!(max_diff(&plain, &fused) < 1e-4, "{act:?}");
        }
        // Few rows (decoding, beams: the dot-product kernel), including a width that is
        // not a multiple of 8 and an output count that is not a multiple of 4.
        let x3 = rand(&[3, 1, 90], 15);
        let w3 = rand(&[4099, 90], 16);
        let b3 = rand(&[4099], 17);
        let few = linear(&x3, &w3, Some(&b3), None, None).unwrap().unwrap();
        assert!(max_diff(&plain_linear(&x3, &w3, Some(&b3)), &few) < 1e-4);
        let few_act = linear(&x3, &w3, None, Some(Activation::Silu), None)
            .unwrap()
            .unwrap();
        let plain_act = Activation::Silu
            .apply(&plain_linear(&x3, &w3, None))
            .unwrap();
        assert!(max_diff(&plain_act, &few_act) < 1e-4);
        // Every row count of the dot-product kernel (each has its own accumulator count).
        for m in 1..=SMALL_M {
            let xm = rand(&[m, 90], 20 + m as u64);
            let got = linear(&xm, &w3, None, None, None).unwrap().unwrap();
            assert!(
                max_diff(&plain_linear(&xm, &w3, None), &got) < 1e-4,
                "{m} rows"
            );
        }
        // A single row and a tiny product (one block).
        let x1 = rand(&[1, 1, 96], 5);
        let one = linear(&x1, &w, Some(&b), None, None).unwrap().unwrap();
        assert!(max_diff(&plain_linear(&x1, &w, Some(&b)), &one) < 1e-4);
        let small_w = rand(&[5, 96], 6);
        let small = linear(&x1, &small_w, None, None, None).unwrap().unwrap();
        assert!(max_diff(&plain_linear(&x1, &small_w, None), &small) < 1e-5);
    }

    #[test]
    fn tiled_kernel_matches_matmul_on_every_remainder() {
        // Widths past one pass along `k` (768) with a tail under 8 (1543 = 2*768 + 7), an
        // output count that is neither a multiple of 4 nor of 16 (two column blocks), and
        // every remainder of the 3-row tiles from 5 to 13 rows, then the largest taken.
        let w = rand(&[203, 1543], 30);
        let b = rand(&[203], 31);
        for m in (5..=13).chain([TILE_M]) {
            let x = rand(&[m, 1543], 32 + m as u64);
            let r = rand(&[m, 203], 33 + m as u64);
            let plain = plain_linear(&x, &w, Some(&b));
            let got = linear(&x, &w, Some(&b), None, None).unwrap().unwrap();
            assert!(max_diff(&plain, &got) < 1e-3, "{m} rows");
            let got = linear(&x, &w, None, None, Some(&r)).unwrap().unwrap();
            let want = (plain_linear(&x, &w, None) + &r).unwrap();
            assert!(max_diff(&want, &got) < 1e-3, "{m} rows, residual");
            let got = linear(&x, &w, None, Some(Activation::Gelu), None)
                .unwrap()
                .unwrap();
            let want = Activation::Gelu.apply(&plain_linear(&x, &w, None)).unwrap();
            assert!(max_diff(&want, &got) < 1e-3, "{m} rows, GELU");
        }
        // The kernel itself past one slice of rows (128), and with rows shorter than one
        // vector (the tail alone), adding onto what `out` holds.
        #[cfg(target_arch = "x86_64")]
        for (m, k, n) in [(300, 40, 9), (7, 5, 6)] {
            if !has_avx2_fma() {
                break;
            }
            let x = rand(&[m, k], 40);
            let w = rand(&[n, k], 41);
            let start = rand(&[m, n], 42);
            let mut out = start.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let (xs, ws) = (
                x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                w.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            // SAFETY: AVX2 and FMA are present; `out` holds m rows of n.
            unsafe { tiled_avx2(&xs, m, k, &ws, n, out.as_mut_ptr(), n, true) };
            let got = Tensor::from_vec(out, (m, n), &Device::Cpu).unwrap();
            let want = (plain_linear(&x, &w, None) + &start).unwrap();
            assert!(max_diff(&want, &got) < 1e-4);
        }
    }

    /// The packed kernels this CPU runs, widest first.
    fn isas() -> Vec<Isa> {
        let mut all = Vec::new();
        if has_avx512f() {
            all.push(Isa::Avx512);
        }
        if has_avx2_fma() {
            all.push(Isa::Avx2);
        }
        all
    }

    #[test]
    fn packed_kernel_matches_matmul_on_every_remainder() {
        // Rows past the tiled kernel's limit with every remainder of the 12-row tiles
        // (97..=108 and 121), widths past one panel along `k` (256) with a tail under 8
        // (521 = 2*256 + 9), and outputs that fill whole panels, a part of one (16+3),
        // and two column blocks that end mid-panel (203).
        #[cfg(target_arch = "x86_64")]
        if has_avx512f() {
            for (n, k) in [(203, 521), (64, 256), (19, 7)] {
                let w = rand(&[n, k], 50);
                let b = rand(&[n], 51);
                for m in (TILE_M + 1..=TILE_M + 12).chain([121]) {
                    let x = rand(&[m, k], 52 + m as u64);
                    let r = rand(&[m, n], 53 + m as u64);
                    let plain = plain_linear(&x, &w, Some(&b));
                    let got = linear(&x, &w, Some(&b), None, None).unwrap().unwrap();
                    assert!(max_diff(&plain, &got) < 1e-3, "{m}x{k}x{n}");
                    let got = linear(&x, &w, None, None, Some(&r)).unwrap().unwrap();
                    let want = (plain_linear(&x, &w, None) + &r).unwrap();
                    assert!(max_diff(&want, &got) < 1e-3, "{m}x{k}x{n}, residual");
                }
            }
            // The kernel itself adding onto what `out` holds, through a narrow panel.
            let (m, k, n) = (13, 300, 40);
            let x = rand(&[m, k], 60);
            let w = rand(&[n, k], 61);
            let start = rand(&[m, n], 62);
            let mut out = start.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let (xs, ws) = (
                x.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                w.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            // SAFETY: AVX-512F, AVX2 and FMA are present; `out` holds m rows of n.
            unsafe { packed_avx512(&xs, m, k, &ws, n, out.as_mut_ptr(), n, true) };
            let got = Tensor::from_vec(out, (m, n), &Device::Cpu).unwrap();
            let want = (plain_linear(&x, &w, None) + &start).unwrap();
            assert!(max_diff(&want, &got) < 1e-4);
        }
    }

    #[test]
    fn laid_out_weights_match_matmul_and_unpack_exactly() {
        // Every row count the packed layout serves (1-4 through the few-rows kernel,
        // then 12-row or 6-row tiles with each remainder), outputs of a part panel (19),
        // whole panels (64) and two column blocks that end mid-panel (203), `k` odd and
        // past one slice (521 = 2*256 + 9); for each instruction set this CPU runs.
        #[cfg(target_arch = "x86_64")]
        for isa in isas() {
            for (n, k) in [(203, 521), (64, 256), (19, 7)] {
                let w = rand(&[n, k], 70);
                let b = rand(&[n], 71);
                let p = PackedWeight::for_isa(&w, isa)
                    .unwrap()
                    .expect("an f32 CPU weight packs");
                assert_eq!(p.dims(), (n, k));
                assert_eq!(max_diff(&p.unpack(&Device::Cpu).unwrap(), &w), 0.0);
                // 151 and 300: more than one block of rows in the AVX2 kernel (144).
                for m in (1..=14).chain([50, 97, 121, 151, 300]) {
                    let x = rand(&[m, k], 72 + m as u64);
                    let r = rand(&[m, n], 73 + m as u64);
                    let what = format!("{isa:?} {m}x{k}x{n}");
                    let plain = plain_linear(&x, &w, Some(&b));
                    let got = linear_packed(&x, &p, Some(&b), None, None)
                        .unwrap()
                        .unwrap();
                    assert!(max_diff(&plain, &got) < 1e-3, "{what}");
                    let got = linear_packed(&x, &p, None, None, Some(&r))
                        .unwrap()
                        .unwrap();
                    let want = (plain_linear(&x, &w, None) + &r).unwrap();
                    assert!(max_diff(&want, &got) < 1e-3, "{what}, residual");
                    let got = linear_packed(&x, &p, None, Some(Activation::Relu), None)
                        .unwrap()
                        .unwrap();
                    let want = plain_linear(&x, &w, None).relu().unwrap();
                    assert!(max_diff(&want, &got) < 1e-3, "{what}, relu");
                    for act in [Activation::Gelu, Activation::QuickGelu] {
                        let got = linear_packed(&x, &p, Some(&b), Some(act), None)
                            .unwrap()
                            .unwrap();
                        let want = act.apply(&plain).unwrap();
                        assert!(max_diff(&want, &got) < 1e-3, "{what}, {act:?}");
                    }
                    let got = linear_packed(&x, &p, Some(&b), None, Some(&r))
                        .unwrap()
                        .unwrap();
                    let want = (plain_linear(&x, &w, Some(&b)) + &r).unwrap();
                    assert!(max_diff(&want, &got) < 1e-3, "{what}, bias and residual");
                    if m > TILE_M && isa == Isa::Avx512 {
                        // The stored layout's kernel at these rows packs the same panels
                        // per call and reads a prefill of residual + bias: the tiles that
                        // start from them instead give the same bits. (With AVX2 alone
                        // that kernel is `gemm`, whose sums are in another order.)
                        for (bias, res) in
                            [(Some(&b), None), (None, Some(&r)), (Some(&b), Some(&r))]
                        {
                            let prefilled = linear(&x, &w, bias, None, res).unwrap().unwrap();
                            let onto = linear_packed(&x, &p, bias, None, res).unwrap().unwrap();
                            assert_eq!(max_diff(&prefilled, &onto), 0.0, "{what}");
                        }
                    }
                }
                // A view of `x` is copied, not refused.
                let x = rand(&[k, 5], 90).t().unwrap();
                let got = linear_packed(&x, &p, None, None, None).unwrap().unwrap();
                let want = plain_linear(&x.contiguous().unwrap(), &w, None);
                assert!(max_diff(&want, &got) < 1e-3, "{isa:?}, a transposed x");
            }
        }
        // Training variables and f64 stay in the stored layout, and so does anything
        // built inside `unpacked`.
        if packing() {
            let w = rand(&[8, 8], 80);
            let var = Var::from_tensor(&w).unwrap();
            assert!(PackedWeight::new(var.as_tensor()).unwrap().is_none());
            assert!(PackedWeight::new(&w.to_dtype(DType::F64).unwrap())
                .unwrap()
                .is_none());
            assert!(unpacked(|| PackedWeight::new(&w)).unwrap().is_none());
            let p = PackedWeight::new(&w).unwrap().expect("packs here");
            assert_eq!(Some(p.isa), Isa::best());
        }
    }

    #[test]
    fn quantised_weights_dequantise_as_candle_and_multiply_as_f32() {
        use candle_core::quantized::{GgmlDType, QTensor};
        if !(enabled() && has_quant_kernels()) {
            return;
        }
        // Part panels (19, 203: two column blocks that end mid-panel), whole ones (64),
        // `k` of one block, of several and past one slice of the outer kernel (544 =
        // 2*256 + 32); rows through the few-rows kernel (1-4), and the outer one with
        // remainders and more than one block of rows (151, 300). Q4K: one block and two,
        // and tiles of 1-4 rows.
        let cases = [
            (GgmlDType::Q8_0, 203, 96),
            (GgmlDType::Q8_0, 64, 32),
            (GgmlDType::Q8_0, 19, 544),
            (GgmlDType::Q4K, 203, 256),
            (GgmlDType::Q4K, 19, 512),
        ];
        for (dtype, n, k) in cases {
            let w = rand(&[n, k], 170);
            let b = rand(&[n], 171);
            let q = QTensor::quantize(&w, dtype).unwrap();
            let qw = QuantWeight::new(&q).unwrap().expect("lays out on this CPU");
            assert_eq!((qw.dims(), qw.dtype()), ((n, k), dtype));
            let deq = qw.dequantize(&Device::Cpu).unwrap();
            let candle = q.dequantize(&Device::Cpu).unwrap();
            assert_eq!(
                max_diff(&deq, &candle),
                0.0,
                "{dtype:?} [{n}, {k}] dequantised"
            );
            assert!(max_diff(&deq, &w) > 0.0, "{dtype:?}: quantising rounds");
            for m in (1..=7).chain([50, 151, 300]) {
                let x = rand(&[m, k], 172 + m as u64);
                let r = rand(&[m, n], 173 + m as u64);
                let what = format!("{dtype:?} {m}x{k}x{n}");
                // How far each output may be from the dequantised weight's f32 product:
                // summation order for Q8_0; for Q4K, which rounds x to 8 bits per 32
                // values, also sum_k |w[j, k]| * max|x[i, block of k]| / 254 (half a
                // step of the rounding).
                let tol = if dtype == GgmlDType::Q4K {
                    let amax = x
                        .reshape((m, k / 32, 32))
                        .unwrap()
                        .abs()
                        .unwrap()
                        .max_keepdim(2)
                        .unwrap()
                        .broadcast_as((m, k / 32, 32))
                        .unwrap()
                        .reshape((m, k))
                        .unwrap();
                    let bound = (amax / 254.0)
                        .unwrap()
                        .matmul(&deq.abs().unwrap().t().unwrap());
                    bound.unwrap().affine(1.01, 1e-3).unwrap()
                } else {
                    Tensor::full(1e-3f32, (m, n), &Device::Cpu).unwrap()
                };
                let within = |want: &Tensor, got: &Tensor, slack: f64, what: &str| {
                    let diff = want.sub(got).unwrap().abs().unwrap();
                    let over = diff
                        .sub(&tol.affine(slack, 0.0).unwrap())
                        .unwrap()
                        .max_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap();
                    assert!(over <= 0.0, "{what}: {over} past the bound");
                };
                let plain = plain_linear(&x, &deq, Some(&b));
                let got = linear_quant(&x, &qw, Some(&b), None, None)
                    .unwrap()
                    .unwrap();
                within(&plain, &got, 1.0, &what);
                if dtype == GgmlDType::Q4K && max_diff(&plain, &got) == 0.0 {
                    panic!("{what}: x was not rounded");
                }
                let got = linear_quant(&x, &qw, None, None, Some(&r))
                    .unwrap()
                    .unwrap();
                let want = (plain_linear(&x, &deq, None) + &r).unwrap();
                within(&want, &got, 1.0, &format!("{what}, residual"));
                let got = linear_quant(&x, &qw, Some(&b), Some(Activation::Gelu), None)
                    .unwrap()
                    .unwrap();
                let want = Activation::Gelu.apply(&plain).unwrap();
                // GELU's slope stays below 1.13.
                within(&want, &got, 1.13, &format!("{what}, gelu"));
            }
            // A view of `x` is copied, not refused: the same as its contiguous copy.
            let x = rand(&[k, 5], 190).t().unwrap();
            let got = linear_quant(&x, &qw, None, None, None).unwrap().unwrap();
            let x = x.contiguous().unwrap();
            let want = linear_quant(&x, &qw, None, None, None).unwrap().unwrap();
            assert_eq!(max_diff(&want, &got), 0.0, "{dtype:?}, a transposed x");
        }
        // The other formats stay on candle's kernels.
        let q = QTensor::quantize(&rand(&[16, 256], 1), GgmlDType::Q4_0).unwrap();
        assert!(QuantWeight::new(&q).unwrap().is_none());
    }

    /// The rounding of `x` for the Q4K kernel: to nearest, 127 steps of the block's
    /// largest magnitude, the sum kept exact, and a block of zeros stays zero.
    #[test]
    fn q4k_rounds_x_per_32_values() {
        if !has_quant_kernels() {
            return;
        }
        let mut x: Vec<f32> = (0..96)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
            .collect();
        x[32..64].fill(0.0);
        // SAFETY: AVX2 and FMA are there; x holds 1 row of 96.
        let r = unsafe { q4k::round_rows(&x, 1, 96) };
        for b in 0..3 {
            let xs = &x[32 * b..32 * b + 32];
            let amax = xs.iter().fold(0f32, |a, v| a.max(v.abs()));
            assert_eq!(r.d[b], amax / 127.0);
            assert!((r.sum[b] - xs.iter().sum::<f32>()).abs() < 1e-4);
            for (i, v) in xs.iter().enumerate() {
                let want = if amax > 0.0 {
                    (v * 127.0 / amax).round_ties_even()
                } else {
                    0.0
                };
                assert_eq!(r.q[32 * b + i] as f32, want, "block {b}, value {i}");
            }
        }
    }

    #[test]
    fn linear_declines_what_it_does_not_handle() {
        let x = rand(&[4, 8], 1);
        let w = rand(&[6, 8], 2);
        // Tracked for backprop, a non-contiguous input, a mismatched width, f64.
        let var = Var::from_tensor(&x).unwrap();
        assert!(linear(var.as_tensor(), &w, None, None, None)
            .unwrap()
            .is_none());
        assert!(linear(&x.t().unwrap(), &rand(&[6, 4], 3), None, None, None)
            .unwrap()
            .is_none());
        assert!(linear(&x, &rand(&[6, 7], 3), None, None, None)
            .unwrap()
            .is_none());
        let x64 = x.to_dtype(DType::F64).unwrap();
        assert!(
            linear(&x64, &w.to_dtype(DType::F64).unwrap(), None, None, None)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn layer_norm_matches_the_two_pass_formula() {
        // Offset rows: the centred variance is what keeps this within 1e-5. Widths that
        // fill the 16-lane partial sums exactly and that leave a tail.
        for (size, seed) in [(48usize, 7u64), (771, 17)] {
            let x = (rand(&[7, 33, size], seed) * 0.3)
                .unwrap()
                .affine(1.0, 4.0)
                .unwrap();
            let w = rand(&[size], seed + 1);
            let b = rand(&[size], seed + 2);
            let fused = layer_norm(&x, &w, &b, 1e-5).unwrap().unwrap();
            let mean = x.mean_keepdim(D::Minus1).unwrap();
            let c = x.broadcast_sub(&mean).unwrap();
            let var = c.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
            let plain = c
                .broadcast_div(&(var + 1e-5).unwrap().sqrt().unwrap())
                .unwrap()
                .broadcast_mul(&w)
                .unwrap()
                .broadcast_add(&b)
                .unwrap();
            assert!(max_diff(&plain, &fused) < 1e-5, "width {size}");
        }
    }

    /// The plain path: split heads, `sdpa` at scale 0.3 (every test here uses it), merge.
    fn reference(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        heads: usize,
        kv_heads: usize,
        mask: &AttnMask,
    ) -> Tensor {
        let split = |x: &Tensor, h| {
            if x.rank() == 3 {
                split_heads(x, h).unwrap()
            } else {
                x.contiguous().unwrap()
            }
        };
        let (q, k, v) = (split(q, heads), split(k, kv_heads), split(v, kv_heads));
        merge_heads(&sdpa(&q, &k, &v, mask, 0.3, false).unwrap()).unwrap()
    }

    #[test]
    fn attention_matches_sdpa_on_every_layout_and_mask() {
        let (b, t, h, d) = (2, 70, 4, 16); // 70 queries: two query blocks
                                           // A fused qkv projection, sliced without copying.
        let qkv = rand(&[b, t, 3 * h * d], 10);
        let q = qkv.narrow(2, 0, h * d).unwrap();
        let k = qkv.narrow(2, h * d, h * d).unwrap();
        let v = qkv.narrow(2, 2 * h * d, h * d).unwrap();
        let none = attention(&q, &k, &v, h, h, false, None, 0.3)
            .unwrap()
            .unwrap();
        assert!(max_diff(&reference(&q, &k, &v, h, h, &AttnMask::none()), &none) < 1e-5);
        let causal = attention(&q, &k, &v, h, h, true, None, 0.3)
            .unwrap()
            .unwrap();
        assert!(max_diff(&reference(&q, &k, &v, h, h, &AttnMask::causal()), &causal) < 1e-5);

        // Key padding, the reference's way: the most negative f32 where masked.
        let keep = Tensor::from_vec(
            (0..b * t)
                .map(|i| u32::from(i % t < t - 9 * (i / t)))
                .collect::<Vec<_>>(),
            (b, t),
            &Device::Cpu,
        )
        .unwrap();
        let pad = crate::attention::padding_mask(&keep, DType::F32).unwrap();
        let padded = attention(&q, &k, &v, h, h, true, Some(&pad), 0.3)
            .unwrap()
            .unwrap();
        let mask = AttnMask::causal().with_additive(pad.clone()).unwrap();
        assert!(max_diff(&reference(&q, &k, &v, h, h, &mask), &padded) < 1e-5);

        // Split heads with a cache-like key length and grouped-query attention: the
        // last 3 of 70 positions query 2 key/value heads.
        let q4 = rand(&[b, h, 3, d], 11);
        let k4 = rand(&[b, 2, t, d], 12);
        // A transposed view has no unit feature stride: declined, then taken contiguous.
        let v4 = rand(&[b, 2, d, t], 13).transpose(2, 3).unwrap();
        assert!(attention(&q4, &k4, &v4, h, 2, true, None, 0.3)
            .unwrap()
            .is_none());
        let v4 = v4.contiguous().unwrap();
        let gqa = attention(&q4, &k4, &v4, h, 2, true, None, 0.3)
            .unwrap()
            .unwrap();
        assert!(max_diff(&reference(&q4, &k4, &v4, h, 2, &AttnMask::causal()), &gqa) < 1e-5);

        // A full [b, h, q, k] additive mask (T5's position bias is one).
        let bias = rand(&[1, h, 3, t], 14);
        let biased = attention(&q4, &k4, &v4, h, 2, false, Some(&bias), 0.3)
            .unwrap()
            .unwrap();
        let mask = AttnMask::additive(bias);
        assert!(max_diff(&reference(&q4, &k4, &v4, h, 2, &mask), &biased) < 1e-5);
    }

    #[test]
    fn attention_matches_sdpa_on_long_sequences_and_odd_head_widths() {
        // 300 keys: the values' product runs in two slices along them (256 + 44), and
        // 300 queries fill 4 blocks with a part one; heads 40 wide (a panel and a part
        // one) and 8 wide (a part panel only). Fewer queries than keys (a cache) too.
        for (t, d) in [(300, 40), (300, 8)] {
            let h = 2;
            let q = rand(&[1, t, h * d], 20);
            let k = rand(&[1, t, h * d], 21);
            let v = rand(&[1, t, h * d], 22);
            for (causal, mask) in [(false, AttnMask::none()), (true, AttnMask::causal())] {
                let got = attention(&q, &k, &v, h, h, causal, None, 0.3)
                    .unwrap()
                    .unwrap();
                let want = reference(&q, &k, &v, h, h, &mask);
                assert!(
                    max_diff(&want, &got) < 1e-5,
                    "t {t}, d {d}, causal {causal}"
                );
            }
            let q = q.narrow(1, t - 5, 5).unwrap();
            let got = attention(&q, &k, &v, h, h, true, None, 0.3)
                .unwrap()
                .unwrap();
            let want = reference(&q, &k, &v, h, h, &AttnMask::causal());
            assert!(max_diff(&want, &got) < 1e-5, "t {t}, d {d}, 5 queries");
        }
    }

    #[test]
    fn attention_on_its_own_tiles_matches_sdpa() {
        // Heads 64 and 128 wide (one and two column passes of the output tiles), 16 and
        // 48 wide (one and three vectors); 83 queries (query tiles of 8 and 6, or 6 and
        // 6 on AVX2, with part ones, a second block of 64); keys 83 and a 200-key cache
        // (panels of 32, or 16, and a part one); grouped-query heads; causal, a padding
        // mask, both; and runs of queries split between tasks (one sequence, two heads).
        // 1, 3 and 31 queries take the dot-product path. The tiles are those of the
        // widest instruction set this CPU has.
        let (b, h, kvh) = (2, 4, 2);
        for (i, d) in [64usize, 128, 16, 48].into_iter().enumerate() {
            let seed = 100 + 10 * i as u64;
            let kv = 200;
            let k = rand(&[b, kvh, kv, d], seed);
            let v = rand(&[b, kvh, kv, d], seed + 1);
            let keep = Tensor::from_vec(
                (0..b * kv)
                    .map(|j| u32::from(j % kv < kv - 13 * (j / kv + 1)))
                    .collect::<Vec<_>>(),
                (b, kv),
                &Device::Cpu,
            )
            .unwrap();
            let pad = crate::attention::padding_mask(&keep, DType::F32).unwrap();
            for tq in [83, 31, 3, 1] {
                let q = rand(&[b, h, tq, d], seed + 2 + tq as u64);
                for causal in [false, true] {
                    for masked in [false, true] {
                        let additive = masked.then_some(&pad);
                        let got = attention(&q, &k, &v, h, kvh, causal, additive, 0.3)
                            .unwrap()
                            .unwrap();
                        let mut mask = if causal {
                            AttnMask::causal()
                        } else {
                            AttnMask::none()
                        };
                        if masked {
                            mask = mask.with_additive(pad.clone()).unwrap();
                        }
                        let want = reference(&q, &k, &v, h, kvh, &mask);
                        let diff = max_diff(&want, &got);
                        assert!(
                            diff < 1e-5,
                            "d {d}, {tq} queries, causal {causal}, mask {masked}: {diff}"
                        );
                    }
                }
            }
            // As many queries as keys, one sequence and two heads: the queries are split
            // between tasks, and a causal task's last key is its own last query.
            let q = rand(&[1, 2, 83, d], seed + 7);
            let (k1, v1) = (
                rand(&[1, 2, 83, d], seed + 8),
                rand(&[1, 2, 83, d], seed + 9),
            );
            for (causal, mask) in [(false, AttnMask::none()), (true, AttnMask::causal())] {
                let got = attention(&q, &k1, &v1, 2, 2, causal, None, 0.3)
                    .unwrap()
                    .unwrap();
                let want = reference(&q, &k1, &v1, 2, 2, &mask);
                assert!(
                    max_diff(&want, &got) < 1e-5,
                    "d {d}, split, causal {causal}"
                );
            }
        }
    }

    #[test]
    fn vector_activations_match_the_scalar_formulas() {
        // The special values first, so they go through the eight-lane path (the tails
        // where sigmoid and erfc underflow, zeros, tiny values, a NaN), then values across
        // each activation's range, and a length that leaves a scalar tail (1011 = 8k + 3).
        let mut row = vec![
            0.0f32,
            -0.0,
            30.0,
            -30.0,
            100.0,
            -100.0,
            1e-20,
            -1e-20,
            f32::NAN,
        ];
        row.extend((0..1002).map(|i| (i as f32 * 0.731).sin() * 12.0 * (i % 7) as f32 / 6.0));
        assert!(row.len() % 8 != 0 && row[..row.len() / 8 * 8].iter().any(|v| v.is_nan()));
        for act in [
            Activation::Gelu,
            Activation::GeluTanh,
            Activation::QuickGelu,
            Activation::Silu,
            Activation::Relu,
        ] {
            let mut got = row.clone();
            activate_row(act, &mut got);
            for (i, (&v, &g)) in row.iter().zip(&got).enumerate() {
                let w = activate(act, v);
                if v.is_nan() {
                    // NaN propagates, except through ReLU's max, which drops it on both paths.
                    assert_eq!(g.is_nan(), w.is_nan(), "{act:?}({v}) = {g}, scalar {w}");
                    continue;
                }
                let tol = 4e-7 * v.abs().max(w.abs()) + 1e-30;
                assert!(
                    (g - w).abs() <= tol,
                    "{act:?} at {i}: ({v}) = {g}, scalar {w}"
                );
            }
        }
    }

    #[test]
    fn vector_softmax_matches_the_scalar_formula() {
        // Scores over the range softmax sees after the max is subtracted, a masked -inf,
        // and a length that leaves a tail after the eight-lane blocks.
        let mut row: Vec<f32> = (0..203).map(|i| (i as f32 * 0.37).sin() * 40.0).collect();
        row[5] = f32::NEG_INFINITY;
        row[100] = -1e30;
        let max = row.iter().fold(f32::NEG_INFINITY, |a, &s| a.max(s));
        let e: Vec<f64> = row.iter().map(|&s| ((s - max) as f64).exp()).collect();
        let sum: f64 = e.iter().sum();
        let mut got = row.clone();
        softmax_row(&mut got);
        for (i, (g, w)) in got.iter().zip(&e).enumerate() {
            let w = w / sum;
            assert!((*g as f64 - w).abs() <= 1e-6 * w + 1e-30, "{i}: {g} vs {w}");
        }
        assert_eq!(got[5], 0.0);
        #[cfg(target_arch = "x86_64")]
        if has_avx2_fma() {
            use std::arch::x86_64::*;
            for x in [
                -87.0f32, -50.0, -10.5, -1.0, -0.3466, 0.0, 0.3466, 3.0, 80.0,
            ] {
                let mut lanes = [0f32; 8];
                // SAFETY: AVX2 and FMA were detected.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), exp_avx2(_mm256_set1_ps(x))) };
                let want = (x as f64).exp();
                let rel = ((lanes[0] as f64 - want) / want).abs();
                assert!(rel < 5e-7, "exp({x}) = {} vs {want}", lanes[0]);
            }
            let mut lanes = [0f32; 8];
            // SAFETY: as above.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), exp_avx2(_mm256_set1_ps(f32::NAN))) };
            assert!(lanes[0].is_nan());
        }
    }
}
