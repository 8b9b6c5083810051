//! The outer-product kernels for AVX-512: register tiles of [`PACK_MR`] rows by
//! [`PACK_NR`] columns over `k`-major panels, whether the weight is packed per call
//! ([`packed_avx512`]) or laid out at load time ([`PackedWeight`](super::PackedWeight)),
//! and a streaming one for decoding's few rows over laid-out panels. [`Onto`], where a
//! product starts, is shared with the AVX2 and quantised kernels.

#[cfg(target_arch = "x86_64")]
use super::packing::{pack_rows, transpose_into};
#[cfg(target_arch = "x86_64")]
use super::reserve;

/// Rows of `x` per register tile of [`packed_avx512`].
pub(super) const PACK_MR: usize = 12;

/// Output columns per register tile of [`packed_avx512`] (two 16-lane registers).
pub(super) const PACK_NR: usize = 32;

/// Values along `k` per slice of [`packed_avx512`]: a weight panel (`PACK_KC` x
/// [`PACK_NR`], 32 KiB) fits L1 while every row tile of `x` passes over it, and the
/// packed slice of `x` (`m` x `PACK_KC`: 400-600 KiB for the encoders) stays in L2
/// while the weight's panels go by.
const PACK_KC: usize = 256;

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
/// Not `gemm`, which gathers `x` into its panels one value at a time, in every thread,
/// and slows down on long rows (`k` of 2048 and more). `x` is packed rather than read in
/// place because long rows fall in the same L1 sets and 12 row pointers spill.
///
/// # Safety
/// The CPU must have AVX-512F, AVX2 and FMA; `out` must be valid for `m` rows of `nn`
/// values, `ldo` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn packed_avx512(
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
pub(super) enum Panels {
    /// The `[nn, k]` weight in its stored layout, packed a panel at a time.
    Pack(*const f32),
    /// Laid out already ([`PackedWeight`](super::PackedWeight)): panel `p` at
    /// `p * PACK_NR * k`, `k`-major.
    Ready(*const f32),
}

/// The body of [`packed_avx512`] and of [`PackedWeight`](super::PackedWeight)'s products.
///
/// # Safety
/// As [`packed_avx512`]; `Ready` panels 64-byte aligned, valid for `nn.div_ceil(PACK_NR)`
/// panels of `k * PACK_NR` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn outer_avx512(
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

/// `out[i, j] (+)= x[i, :] . w[j, :]` for `M` (at most
/// [`SMALL_M`](super::linear::SMALL_M)) rows over laid-out panels (decoding): each panel
/// streams by once, `k`-major, into `M` x 2 accumulators per pair of steps (two sets, so
/// that consecutive steps do not wait on each other).
///
/// # Safety
/// AVX-512F, AVX2, FMA; `x` holds `M` rows of `k`; `panels` holds
/// `nn.div_ceil(PACK_NR)` panels, 64-byte aligned; `out` valid for `M` rows of `nn`
/// values `ldo` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::needless_range_loop)] // row i indexes both accumulator sets and x
pub(super) unsafe fn few_rows_ready<const M: usize>(
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
pub(super) struct Onto {
    pub(super) bias: *const f32,
    pub(super) res: *const f32,
    pub(super) ldr: usize,
}

impl Onto {
    pub(super) const NONE: Self = Self {
        bias: std::ptr::null(),
        res: std::ptr::null(),
        ldr: 0,
    };

    pub(super) fn is_none(&self) -> bool {
        self.bias.is_null() && self.res.is_null()
    }

    /// What the register tile at row `i`, column `j` of a block starts from: `(rows,
    /// their stride, bias)`. After the first slice of `k` (`acc`), or when the product
    /// accumulates, the output itself (`o`, rows `ldo` apart) and no bias; else the
    /// residual and/or the bias, each null where absent (then zero).
    ///
    /// # Safety
    /// `i` and `j` inside the block the pointers were made for.
    pub(super) unsafe fn tile_start(
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

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "x86_64")]
    use super::super::dispatch::has_avx512f;
    #[cfg(target_arch = "x86_64")]
    use super::*;
    #[cfg(target_arch = "x86_64")]
    use crate::kernels::linear::{linear, TILE_M};
    #[cfg(target_arch = "x86_64")]
    use crate::test_util::{max_diff, plain_linear, rand};
    #[cfg(target_arch = "x86_64")]
    use candle_core::{Device, Tensor};

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
}
