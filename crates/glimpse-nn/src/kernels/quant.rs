//! `Q8_0` weights laid out in panels of [`NR`] output rows for our AVX2 kernels, and
//! those kernels: a streaming one for decoding's few rows, which reads each block once
//! and scales a block's sums at its end, and the outer-product kernel of `avx2` for
//! prompts, fed a panel's slice dequantised into L1 just before its row tiles pass
//! over it.
//!
//! The values are candle's own blocks, re-laid out: the dequantised weight is exactly
//! `QTensor::dequantize`'s, and activations stay f32 (candle's `Q8_0` kernel rounds
//! them to 8 bits per block as well), so a product differs from the dequantised
//! weight's f32 product only in the order of its sums.
//!
//! Layout, per panel of [`NR`] output rows (weight rows), one group of [`Q8_GROUP`]
//! bytes per block of 32 steps along `k`: the 16 rows' f16 scales, then the 32 steps'
//! values, 16 `i8` per step (row `c` at byte `c`); the last panel padded with zero rows.
//!
//! `Q4K` has a kernel of its own on 8-bit integers (`q4k`).

use std::arch::x86_64::*;

use super::avx2::{self, lane_masks, store_sums, Slices, NR};
use super::outer::Onto;
use super::reserve;

/// Steps along `k` per `Q8_0` block.
pub(super) const BLOCK: usize = 32;
/// Bytes of a panel's group: 16 f16 scales, 32 steps of 16 values.
pub(super) const GROUP: usize = NR * 2 + BLOCK * NR;
const _: () = assert!(GROUP.is_multiple_of(32), "groups stay 32-byte aligned");
/// Bytes of one candle `Q8_0` block: an f16 scale, 32 `i8`.
pub(super) const CANDLE_BLOCK: usize = 34;

fn f16_at(b: &[u8]) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32()
}

/// Lays out one panel: `rows` (at most [`NR`]) weight rows of `src` (candle's blocks,
/// `k / 32` per row) into `dst` (`k / 32` groups), zeros for the missing rows.
pub(super) fn lay_out_panel(src: &[u8], rows: usize, k: usize, dst: &mut [u8]) {
    let blocks = k / BLOCK;
    debug_assert!(src.len() >= rows * blocks * CANDLE_BLOCK && dst.len() >= blocks * GROUP);
    dst[..blocks * GROUP].fill(0);
    for c in 0..rows {
        for b in 0..blocks {
            let at = (c * blocks + b) * CANDLE_BLOCK;
            let blk = &src[at..at + CANDLE_BLOCK];
            let g = &mut dst[b * GROUP..(b + 1) * GROUP];
            g[2 * c..2 * c + 2].copy_from_slice(&blk[..2]);
            for (s, &q) in blk[2..].iter().enumerate() {
                g[2 * NR + s * NR + c] = q;
            }
        }
    }
}

/// Dequantises one panel's weight rows from its groups (scalar; the plain fallback and
/// the tests): `out[c][kk]` for the panel's first `out.len()` rows (at most [`NR`]).
pub(super) fn dequantize_panel(panel: &[u8], k: usize, out: &mut [Vec<f32>]) {
    for b in 0..k / BLOCK {
        let g = &panel[b * GROUP..(b + 1) * GROUP];
        for (c, row) in out.iter_mut().enumerate().take(NR) {
            let d = f16_at(&g[2 * c..]);
            for s in 0..BLOCK {
                row[b * BLOCK + s] = g[2 * NR + s * NR + c] as i8 as f32 * d;
            }
        }
    }
}

/// A group's 16 scales, as f32 for rows 0-7 and 8-15.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn scales(g: *const u8) -> (__m256, __m256) {
    (
        _mm256_cvtph_ps(_mm_load_si128(g.cast())),
        _mm256_cvtph_ps(_mm_load_si128(g.add(16).cast())),
    )
}

/// Step `s`'s 16 values of a group as f32, rows 0-7 and 8-15.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn step(g: *const u8, s: usize) -> (__m256, __m256) {
    let v = _mm_load_si128(g.add(2 * NR + s * NR).cast());
    (
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)),
        _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(v, v))),
    )
}

/// `out[i, j] (+)= x[i, :] . w[j, :]` for `M` (1 to 4) rows of `x` over a `Q8_0` weight's
/// panels (decoding): each group streams by once; a block's 32 values are summed
/// against `x` in f32 and the sums scaled at the block's end. One and two rows keep two
/// sets of sums (even and odd steps), so that consecutive steps do not wait on each
/// other; three and four rows have enough chains already.
///
/// # Safety
/// AVX2, FMA and F16C; `x` holds `M` rows of `k` (a multiple of 32); `panels` holds
/// `nn.div_ceil(NR)` panels of `k / 32` groups, 32-byte aligned; `out` valid for `M`
/// rows of `nn` values `ldo` apart.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)] // row i indexes the sums and x
pub(super) unsafe fn few_rows<const M: usize>(
    x: *const f32,
    k: usize,
    panels: *const u8,
    nn: usize,
    out: *mut f32,
    ldo: usize,
    accumulate: bool,
) {
    let groups = k / BLOCK;
    let zero = _mm256_setzero_ps();
    for j in (0..nn).step_by(NR) {
        let nr = NR.min(nn - j);
        let panel = panels.add(j / NR * groups * GROUP);
        let mut c = [[zero; 2]; M];
        for b in 0..groups {
            let g = panel.add(b * GROUP);
            let xb = x.add(b * BLOCK);
            let mut e = [[zero; 2]; M];
            let mut f = [[zero; 2]; M];
            if M <= 2 {
                for s in (0..BLOCK).step_by(2) {
                    let (w0, w1) = step(g, s);
                    let (w2, w3) = step(g, s + 1);
                    for i in 0..M {
                        let a = _mm256_broadcast_ss(&*xb.add(i * k + s));
                        e[i][0] = _mm256_fmadd_ps(a, w0, e[i][0]);
                        e[i][1] = _mm256_fmadd_ps(a, w1, e[i][1]);
                        let a = _mm256_broadcast_ss(&*xb.add(i * k + s + 1));
                        f[i][0] = _mm256_fmadd_ps(a, w2, f[i][0]);
                        f[i][1] = _mm256_fmadd_ps(a, w3, f[i][1]);
                    }
                }
            } else {
                for s in 0..BLOCK {
                    let (w0, w1) = step(g, s);
                    for i in 0..M {
                        let a = _mm256_broadcast_ss(&*xb.add(i * k + s));
                        e[i][0] = _mm256_fmadd_ps(a, w0, e[i][0]);
                        e[i][1] = _mm256_fmadd_ps(a, w1, e[i][1]);
                    }
                }
            }
            let (s0, s1) = scales(g);
            for i in 0..M {
                c[i][0] = _mm256_fmadd_ps(_mm256_add_ps(e[i][0], f[i][0]), s0, c[i][0]);
                c[i][1] = _mm256_fmadd_ps(_mm256_add_ps(e[i][1], f[i][1]), s1, c[i][1]);
            }
        }
        let masks = (nr < NR).then(|| lane_masks(nr));
        for i in 0..M {
            store_sums(out.add(i * ldo + j), c[i][0], c[i][1], masks, accumulate);
        }
    }
}

/// A `Q8_0` weight's panel slices for [`avx2::outer`], dequantised one slice at a time
/// into a buffer that stays in L1 while the row tiles pass over it.
struct Dequantised {
    panels: *const u8,
    groups: usize,
    buf: Vec<f32>,
    start: usize,
}

impl Dequantised {
    /// Where the panel whose first column is `j` has its group for step `k0`.
    fn group_at(&self, j: usize, k0: usize) -> *const u8 {
        self.panels
            .wrapping_add((j / NR * self.groups + k0 / BLOCK) * GROUP)
    }
}

impl Slices for Dequantised {
    unsafe fn slice(&mut self, j: usize, k0: usize, kc: usize) -> *const f32 {
        debug_assert!(k0.is_multiple_of(BLOCK) && kc.is_multiple_of(BLOCK));
        let dst = self.buf.as_mut_ptr().add(self.start);
        dequantise_groups(self.group_at(j, k0), kc / BLOCK, dst);
        dst
    }

    unsafe fn ahead(&self, j: usize, k0: usize, kc: usize) -> (*const u8, usize) {
        (self.group_at(j, k0), kc / BLOCK * GROUP / 64)
    }
}

/// `groups` consecutive groups of a panel from `from`, dequantised into `dst` as f32
/// panel steps ([`NR`] values per step, `k`-major): `value * scale`, as candle's
/// `dequantize` computes it (exact in f32).
///
/// A function of its own, not the body of [`Dequantised::slice`]: a trait method takes
/// no target features, and the intrinsics would then be calls, not instructions.
///
/// # Safety
/// AVX2, FMA and F16C; `from` valid for `groups` groups, 32-byte aligned; `dst` for
/// `groups * 32 * NR` values, 32-byte aligned.
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dequantise_groups(from: *const u8, groups: usize, dst: *mut f32) {
    for b in 0..groups {
        let g = from.add(b * GROUP);
        let d = dst.add(b * BLOCK * NR);
        let (s0, s1) = scales(g);
        for s in 0..BLOCK {
            let (w0, w1) = step(g, s);
            _mm256_store_ps(d.add(s * NR), _mm256_mul_ps(w0, s0));
            _mm256_store_ps(d.add(s * NR + 8), _mm256_mul_ps(w1, s1));
        }
    }
}

/// `out[i, j] (+)= x[i, :] . w[j, :]` for `m` rows (more than a few) over a `Q8_0`
/// weight's panels: [`avx2::outer`] on slices dequantised as it goes.
///
/// # Safety
/// AVX2, FMA and F16C; as [`avx2::outer`], with `panels` as [`few_rows`] says.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn outer(
    x: &[f32],
    m: usize,
    k: usize,
    panels: *const u8,
    nn: usize,
    out: *mut f32,
    ldo: usize,
    accumulate: bool,
    onto: Onto,
) {
    // Room for the longest slice, 32-byte aligned; every slice is written before read.
    let mut buf = reserve(avx2::KC * NR + 8);
    let start = buf.as_mut_ptr().align_offset(32).min(8);
    let slices = Dequantised {
        panels,
        groups: k / BLOCK,
        buf,
        start,
    };
    avx2::outer(x, m, k, slices, nn, out, ldo, accumulate, onto)
}
