//! The packed outer-product kernel and the few-rows kernel over laid-out weights, for
//! CPUs with AVX2 and FMA but no AVX-512 (AMD Zen 2/3, Intel before Skylake-X).
//!
//! The same design as the AVX-512 kernels (`outer`), at half the vector width:
//! register tiles of [`MR`] rows by [`NR`] columns (12 accumulators of 8 lanes; with
//! the two weight vectors and one broadcast that fills the 16 registers), weight
//! panels of [`NR`] output rows, `k`-major, and slices of [`KC`] along `k`. Each step of
//! a tile loads two weight vectors and broadcasts six values of `x` for twelve
//! multiply-adds, which the two FMA pipes and three load ports of these cores sustain.
//!
//! The panels are [`PackedWeight`](super::PackedWeight)'s, laid out when a model is
//! loaded, or a `Q8_0` weight's, dequantised a slice at a time as the kernel goes
//! (`quant`; [`outer`] takes either through [`Slices`]). Weights in their stored layout
//! (training, tied heads) keep the tiled kernel and `gemm`: packing their panels on every
//! call, as the AVX-512 path does, does not beat `gemm` at AVX2 width.

use std::arch::x86_64::*;

use super::outer::Onto;
use super::packing::pack_rows;
use super::reserve;

/// Rows of `x` per register tile.
pub(super) const MR: usize = 6;

/// Output columns per register tile and per weight panel (two 8-lane registers).
pub(super) const NR: usize = super::packing::AVX2_NR;

/// Values along `k` per slice: a weight panel's slice (`KC` x [`NR`], 16 KiB) stays in
/// the 32 KiB L1 while every row tile of `x` passes over it.
pub(super) const KC: usize = 256;

/// Rows of `x` per pass over the weight's panels: their packed slice (`MC` x [`KC`],
/// 144 KiB) stays in the 512 KiB L2 while the panels go by; all of a 400- or 577-row
/// slice would not.
const MC: usize = 144;
const _: () = assert!(MC.is_multiple_of(MR), "a block of rows is whole tiles");

/// Lane masks of the two output vectors for a panel whose first `nr` columns exist.
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(super) unsafe fn lane_masks(nr: usize) -> (__m256i, __m256i) {
    let lanes = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    let first = _mm256_set1_epi32(nr.min(8) as i32);
    let second = _mm256_set1_epi32(nr.saturating_sub(8).min(8) as i32);
    (
        _mm256_cmpgt_epi32(first, lanes),
        _mm256_cmpgt_epi32(second, lanes),
    )
}

/// `out[i, j] (+)= x[i, :] . w[j, :]` for `m` rows of `x` (`[m, k]`) and `nn` weight rows,
/// as outer products over laid-out panels, `out` rows `ldo` apart; with `onto`, each
/// tile starts from the bias and/or residual instead of zero (first slice of `k` only).
///
/// # Safety
/// AVX2 and FMA present; `x` holds `m` rows of `k`; `panels` gives the slices of
/// `nn.div_ceil(NR)` panels of `k` steps; `out` valid for `m` rows of `nn` values,
/// `ldo` apart; `onto` as [`Onto`] says.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn outer(
    x: &[f32],
    m: usize,
    k: usize,
    mut panels: impl Slices,
    nn: usize,
    out: *mut f32,
    ldo: usize,
    accumulate: bool,
    onto: Onto,
) {
    debug_assert!(x.len() >= m * k);
    debug_assert!(!accumulate || onto.is_none());
    // The slice of `x` for one slice of `k`, tile by tile of MR rows, each k-major.
    let tile_len = KC.min(k) * MR;
    // Not zeroed: `transpose_into` writes each tile's `kc * MR` values (zeros for the
    // rows past `m`) before the tiles read them.
    let mut xbuf = reserve(m.div_ceil(MR) * tile_len);
    let xp = xbuf.as_mut_ptr();
    for k0 in (0..k).step_by(KC) {
        let kc = KC.min(k - k0);
        pack_rows(x, m, k, k0, kc, xp, tile_len, MR);
        let acc = accumulate || k0 > 0;
        for i0 in (0..m).step_by(MC) {
            let mc = MC.min(m - i0);
            for j in (0..nn).step_by(NR) {
                let nr = NR.min(nn - j);
                let panel = panels.slice(j, k0, kc);
                // The next panel's slice, fetched a share per row tile: with few rows the
                // tiles leave the weight's stream idle between panels, and the slices are
                // a panel's length apart, so the prefetcher would not run ahead.
                let (next, lines) = if j + NR < nn {
                    panels.ahead(j + NR, k0, kc)
                } else {
                    (std::ptr::null(), 0)
                };
                let share = lines.div_ceil(mc.div_ceil(MR));
                let mut line = 0;
                let masks = (nr < NR).then(|| lane_masks(nr));
                let mut i = i0;
                while i < i0 + mc {
                    for _ in 0..share.min(lines - line) {
                        _mm_prefetch::<_MM_HINT_T0>(next.add(line * 64).cast());
                        line += 1;
                    }
                    let mr = MR.min(i0 + mc - i);
                    let xt = xp.add(i / MR * tile_len) as *const f32;
                    let o = out.add(i * ldo + j);
                    let (src, lds, bias) = onto.tile_start(acc, o, ldo, i, j);
                    let t = Tile {
                        xt,
                        panel,
                        kc,
                        out: o,
                        ldo,
                        src,
                        lds,
                        bias,
                        masks,
                    };
                    match mr {
                        6 => tile::<6>(&t),
                        5 => tile::<5>(&t),
                        4 => tile::<4>(&t),
                        3 => tile::<3>(&t),
                        2 => tile::<2>(&t),
                        _ => tile::<1>(&t),
                    }
                    i += mr;
                }
            }
        }
    }
}

/// Where [`outer`]'s tiles read a weight panel's slice along `k` from.
pub(super) trait Slices {
    /// The slice `k0..k0 + kc` of the panel whose first column is `j` (a multiple of
    /// [`NR`]): `kc * NR` values, `k`-major, 32-byte aligned, valid until the next call.
    ///
    /// # Safety
    /// AVX2 and FMA present; `j` and `k0..k0 + kc` inside the weight.
    unsafe fn slice(&mut self, j: usize, k0: usize, kc: usize) -> *const f32;

    /// The stored bytes behind that slice: where they start and how many cache lines
    /// (64 bytes) they take, to prefetch while the tiles work on the previous panel.
    ///
    /// # Safety
    /// As [`Slices::slice`].
    unsafe fn ahead(&self, j: usize, k0: usize, kc: usize) -> (*const u8, usize);
}

/// f32 panels laid out already ([`PackedWeight`](super::PackedWeight)'s, or any panels of
/// [`NR`] columns, `k`-major, 32-byte aligned): panel `p` at `p * NR * k`.
#[derive(Clone, Copy)]
pub(super) struct Ready {
    pub panels: *const f32,
    pub k: usize,
}

impl Slices for Ready {
    unsafe fn slice(&mut self, j: usize, k0: usize, _kc: usize) -> *const f32 {
        // Panel j / NR starts at (j / NR) * NR * k = j * k.
        self.panels.add(j * self.k + k0 * NR)
    }

    unsafe fn ahead(&self, j: usize, k0: usize, kc: usize) -> (*const u8, usize) {
        (self.panels.add(j * self.k + k0 * NR).cast(), kc * NR / 16)
    }
}

/// One register tile: `R` rows of the packed `x` tile by one panel's columns.
struct Tile {
    /// The `x` tile, `k`-major, [`MR`] values per step.
    xt: *const f32,
    /// The panel's slice, [`NR`] values per step, 32-byte aligned.
    panel: *const f32,
    kc: usize,
    out: *mut f32,
    ldo: usize,
    /// What the sums start from besides zero: rows `lds` apart (the output itself or a
    /// residual) and a bias per column, each where not null.
    src: *const f32,
    lds: usize,
    bias: *const f32,
    /// The lanes that exist, for a panel narrower than [`NR`]; `None` for a whole one.
    masks: Option<(__m256i, __m256i)>,
}

/// # Safety
/// As [`outer`], for this tile's `R` rows and the columns the masks keep.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn tile<const R: usize>(t: &Tile) {
    let mut c = start_sums::<R>(t.src, t.lds, t.bias, t.masks);
    let (xt, panel) = (t.xt, t.panel);
    for kk in 0..t.kc {
        let b0 = _mm256_load_ps(panel.add(kk * NR));
        let b1 = _mm256_load_ps(panel.add(kk * NR + 8));
        for (i, ci) in c.iter_mut().enumerate() {
            let a = _mm256_broadcast_ss(&*xt.add(kk * MR + i));
            ci[0] = _mm256_fmadd_ps(a, b0, ci[0]);
            ci[1] = _mm256_fmadd_ps(a, b1, ci[1]);
        }
    }
    for (i, ci) in c.iter().enumerate() {
        let o = t.out.add(i * t.ldo);
        match t.masks {
            None => {
                _mm256_storeu_ps(o, ci[0]);
                _mm256_storeu_ps(o.add(8), ci[1]);
            }
            Some((m0, m1)) => {
                _mm256_maskstore_ps(o, m0, ci[0]);
                _mm256_maskstore_ps(o.add(8), m1, ci[1]);
            }
        }
    }
}

/// `out[i, j] (+)= x[i, :] . w[j, :]` for `M` (1 to 4) rows over laid-out panels
/// (decoding): each panel streams by once, `k`-major. One and two rows keep two sets of
/// accumulators (steps `kk` and `kk + 1`), so that consecutive steps do not wait on
/// each other's sums; three and four rows have enough chains already.
///
/// # Safety
/// AVX2 and FMA; `x` holds `M` rows of `k`; `panels` holds `nn.div_ceil(NR)` panels,
/// 32-byte aligned; `out` valid for `M` rows of `nn` values `ldo` apart.
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::needless_range_loop)] // row i indexes both accumulator sets and x
pub(super) unsafe fn few_rows<const M: usize>(
    x: *const f32,
    k: usize,
    panels: *const f32,
    nn: usize,
    out: *mut f32,
    ldo: usize,
    accumulate: bool,
) {
    let sets = if M <= 2 { 2 } else { 1 };
    for j in (0..nn).step_by(NR) {
        let nr = NR.min(nn - j);
        let panel = panels.add(j * k);
        let mut c = [[_mm256_setzero_ps(); 2]; M];
        let mut d = [[_mm256_setzero_ps(); 2]; M];
        let mut kk = 0;
        if sets == 2 {
            while kk + 2 <= k {
                let p = panel.add(kk * NR);
                let (b0, b1) = (_mm256_load_ps(p), _mm256_load_ps(p.add(8)));
                let (b2, b3) = (_mm256_load_ps(p.add(16)), _mm256_load_ps(p.add(24)));
                for i in 0..M {
                    let a = _mm256_broadcast_ss(&*x.add(i * k + kk));
                    c[i][0] = _mm256_fmadd_ps(a, b0, c[i][0]);
                    c[i][1] = _mm256_fmadd_ps(a, b1, c[i][1]);
                    let a = _mm256_broadcast_ss(&*x.add(i * k + kk + 1));
                    d[i][0] = _mm256_fmadd_ps(a, b2, d[i][0]);
                    d[i][1] = _mm256_fmadd_ps(a, b3, d[i][1]);
                }
                kk += 2;
            }
        }
        while kk < k {
            let p = panel.add(kk * NR);
            let (b0, b1) = (_mm256_load_ps(p), _mm256_load_ps(p.add(8)));
            for i in 0..M {
                let a = _mm256_broadcast_ss(&*x.add(i * k + kk));
                c[i][0] = _mm256_fmadd_ps(a, b0, c[i][0]);
                c[i][1] = _mm256_fmadd_ps(a, b1, c[i][1]);
            }
            kk += 1;
        }
        let masks = (nr < NR).then(|| lane_masks(nr));
        for i in 0..M {
            let v0 = _mm256_add_ps(c[i][0], d[i][0]);
            let v1 = _mm256_add_ps(c[i][1], d[i][1]);
            store_sums(out.add(i * ldo + j), v0, v1, masks, accumulate);
        }
    }
}

/// What a tile of `R` rows by a panel's 16 columns starts its sums from: zero, plus the
/// rows of `src` (`lds` apart: the output itself or a residual) and `bias` (one value per
/// column), each where not null; only the lanes `masks` keep where given.
///
/// # Safety
/// AVX2; `src` valid for `R` rows and `bias` for the kept lanes, where not null.
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(super) unsafe fn start_sums<const R: usize>(
    src: *const f32,
    lds: usize,
    bias: *const f32,
    masks: Option<(__m256i, __m256i)>,
) -> [[__m256; 2]; R] {
    let load = |p: *const f32| match masks {
        None => [_mm256_loadu_ps(p), _mm256_loadu_ps(p.add(8))],
        Some((m0, m1)) => [_mm256_maskload_ps(p, m0), _mm256_maskload_ps(p.add(8), m1)],
    };
    let mut c = [[_mm256_setzero_ps(); 2]; R];
    if !src.is_null() {
        for (i, ci) in c.iter_mut().enumerate() {
            *ci = load(src.add(i * lds));
        }
    }
    if !bias.is_null() {
        let b = load(bias);
        for ci in c.iter_mut() {
            ci[0] = _mm256_add_ps(ci[0], b[0]);
            ci[1] = _mm256_add_ps(ci[1], b[1]);
        }
    }
    c
}

/// Writes (or with `accumulate`, adds) one output row's sums for a panel: `v0` and `v1`
/// to `o[..8]` and `o[8..16]`, only the lanes `masks` keep where given (a narrow panel).
///
/// # Safety
/// AVX2; `o` valid for the kept lanes.
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(super) unsafe fn store_sums(
    o: *mut f32,
    mut v0: __m256,
    mut v1: __m256,
    masks: Option<(__m256i, __m256i)>,
    accumulate: bool,
) {
    match masks {
        None => {
            if accumulate {
                v0 = _mm256_add_ps(v0, _mm256_loadu_ps(o));
                v1 = _mm256_add_ps(v1, _mm256_loadu_ps(o.add(8)));
            }
            _mm256_storeu_ps(o, v0);
            _mm256_storeu_ps(o.add(8), v1);
        }
        Some((m0, m1)) => {
            if accumulate {
                v0 = _mm256_add_ps(v0, _mm256_maskload_ps(o, m0));
                v1 = _mm256_add_ps(v1, _mm256_maskload_ps(o.add(8), m1));
            }
            _mm256_maskstore_ps(o, m0, v0);
            _mm256_maskstore_ps(o.add(8), m1, v1);
        }
    }
}
