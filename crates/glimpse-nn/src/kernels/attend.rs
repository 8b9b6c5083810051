//! Attention's two per-head products for one head and a run of its queries, on
//! AVX-512 register tiles, where `gemm` would pack both operands anew for every block
//! of queries.
//!
//! The head's keys are laid out once per task, in `k`-major panels of [`NR`] keys
//! (the packed linear kernel's layout, with the keys as the weight's rows), and then
//! serve every block of queries; the values are read in place, a row of `head_dim`
//! adjacent values per key. Scores: tiles of [`QR`] queries by a panel, each step
//! along `head_dim` two loads and one broadcast per query. Output: tiles of [`AR`]
//! queries by up to 64 features, each step along the keys up to four loads of a value
//! row and one broadcast of a weight per query. CPUs with AVX2 but no AVX-512 run the
//! same plan at half the width (`avx2`); [`run`] picks.

use super::attention::weigh_row;
use super::dispatch::{has_avx2_fma, has_avx512f};
use super::packing::transpose_into;
use super::{reserve, written};

mod avx2;

/// Fewest queries per task for which this path is taken: below it, laying the keys out
/// costs about as much as the products (decoding's single query keeps `gemm`).
pub(super) const MIN_QUERIES: usize = 32;

/// Keys per panel (two vectors of scores).
const NR: usize = 32;
/// Queries per score tile (16 accumulators).
const QR: usize = 8;
/// Queries per output tile (up to 24 accumulators).
const AR: usize = 6;
/// Queries whose scores are held at once: with 577 keys, 144 KiB, in L2.
const QB: usize = 64;

/// One task: a head of one sequence and a run of its queries.
pub(super) struct Head {
    /// The task's first query row; rows `qst` apart.
    pub q: *const f32,
    pub qst: usize,
    /// The head's first key and value rows; rows `kst` and `vst` apart.
    pub k: *const f32,
    pub kst: usize,
    pub v: *const f32,
    pub vst: usize,
    /// Keys, head width, queries in this task, and the first one's index.
    pub keys: usize,
    pub dim: usize,
    pub rows: usize,
    pub first: usize,
    /// Hide keys after each query's position (`first + r + offset` is its last key).
    pub causal: bool,
    pub offset: usize,
    pub scale: f32,
    /// The additive mask at this task's first query: `(start, query stride, key stride)`.
    pub mask: Option<(*const f32, usize, usize)>,
    /// The output at the task's first query and this head's first column; rows `ldo` apart.
    pub out: *mut f32,
    pub ldo: usize,
}

/// Whether this path takes a head `dim` wide with `queries` per task on this CPU (AVX-512F,
/// or AVX2 and FMA for the tiles of `avx2`).
pub(super) fn fits(queries: usize, dim: usize) -> bool {
    queries >= MIN_QUERIES && dim > 0 && dim.is_multiple_of(16) && has_avx2_fma()
}

/// [`head`] ([`few`] unless `own`) on the widest tiles this CPU has.
///
/// # Safety
/// As [`head`], with AVX2 and FMA at least.
pub(super) unsafe fn run(h: &Head, own: bool) {
    match (has_avx512f(), own) {
        (true, true) => head(h),
        (true, false) => few(h),
        (false, true) => avx2::head(h),
        (false, false) => avx2::few(h),
    }
}

/// `out <- softmax(scale * q k^T + mask) v` for the task's queries.
///
/// # Safety
/// The CPU has AVX-512F, AVX2 and FMA; `dim` is a multiple of 16; the pointers are
/// valid for the rows the strides and counts give (`keys` key and value rows, `rows`
/// query and output rows, the mask's `rows` x `keys` values), and no other task writes
/// the output's `rows` x `dim` block.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn head(h: &Head) {
    let d = h.dim;
    let visible = |i: usize| {
        if h.causal {
            (h.offset + i + 1).min(h.keys)
        } else {
            h.keys
        }
    };
    // Keys any of this task's queries sees, laid out once, the last panel zero-padded.
    let keys = visible(h.first + h.rows - 1);
    let panels = keys.div_ceil(NR);
    let ld = panels * NR;
    let mut kt = reserve(ld * d);
    for p in 0..panels {
        let j0 = p * NR;
        let n = NR.min(keys - j0);
        transpose_into(
            h.k.add(j0 * h.kst),
            h.kst,
            n,
            d,
            kt.as_mut_ptr().add(j0 * d),
            NR,
        );
    }
    // SAFETY: each panel wrote its NR * d values (zeros past the last key).
    let kt = written(kt, ld * d);
    // A block's queries in tiles of QR, each k-major, and its scores, `ld` apart.
    let mut qt = reserve(QB * d);
    let qp = qt.as_mut_ptr();
    let mut scores = reserve(QB * ld);
    let sp = scores.as_mut_ptr();
    for b0 in (0..h.rows).step_by(QB) {
        let rows = QB.min(h.rows - b0);
        let bkeys = visible(h.first + b0 + rows - 1);
        let bpanels = bkeys.div_ceil(NR);
        for t0 in (0..rows).step_by(QR) {
            let src = h.q.add((b0 + t0) * h.qst);
            transpose_into(src, h.qst, QR.min(rows - t0), d, qp.add(t0 * d), QR);
        }
        for t0 in (0..rows).step_by(QR) {
            for p in 0..bpanels {
                let t = (
                    qp.add(t0 * d) as *const f32,
                    kt.as_ptr().add(p * NR * d),
                    d,
                    sp.add(t0 * ld + p * NR),
                    ld,
                    h.scale,
                );
                match QR.min(rows - t0) {
                    8 => score_tile::<8>(t),
                    7 => score_tile::<7>(t),
                    6 => score_tile::<6>(t),
                    5 => score_tile::<5>(t),
                    4 => score_tile::<4>(t),
                    3 => score_tile::<3>(t),
                    2 => score_tile::<2>(t),
                    _ => score_tile::<1>(t),
                }
            }
        }
        for r in 0..rows {
            let i = h.first + b0 + r;
            let vis = visible(i);
            // SAFETY: row r's first `bkeys` scores were written by the tiles above.
            let row = std::slice::from_raw_parts_mut(sp.add(r * ld), bkeys);
            let mask = h.mask.map(|(m, mi, mj)| (m.add((b0 + r) * mi), mj));
            weigh_row(row, vis, mask);
        }
        for t0 in (0..rows).step_by(AR) {
            let mr = AR.min(rows - t0);
            for c0 in (0..d).step_by(64) {
                let t = (
                    sp.add(t0 * ld) as *const f32,
                    ld,
                    bkeys,
                    h.v.add(c0),
                    h.vst,
                    h.out.add((b0 + t0) * h.ldo + c0),
                    h.ldo,
                );
                match (d - c0).min(64) / 16 {
                    4 => value_rows::<4>(mr, t),
                    3 => value_rows::<3>(mr, t),
                    2 => value_rows::<2>(mr, t),
                    _ => value_rows::<1>(mr, t),
                }
            }
        }
    }
}

/// `(query tile, key panel, dim, scores, ld, scale)`.
type ScoreTile = (*const f32, *const f32, usize, *mut f32, usize, f32);

/// `scores[i, 0..NR] = scale * q_i . k_j` for the tile's `MR` queries and the panel's keys.
///
/// # Safety
/// As [`head`]: the tile holds `dim * QR` values, the panel `dim * NR`, and the scores
/// `MR` rows of `NR`, `ld` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn score_tile<const MR: usize>(t: ScoreTile) {
    use std::arch::x86_64::*;
    let (qt, panel, d, out, ld, scale) = t;
    let mut c = [[_mm512_setzero_ps(); 2]; MR];
    for kk in 0..d {
        let b0 = _mm512_loadu_ps(panel.add(kk * NR));
        let b1 = _mm512_loadu_ps(panel.add(kk * NR + 16));
        for (i, ci) in c.iter_mut().enumerate() {
            let a = _mm512_set1_ps(*qt.add(kk * QR + i));
            ci[0] = _mm512_fmadd_ps(a, b0, ci[0]);
            ci[1] = _mm512_fmadd_ps(a, b1, ci[1]);
        }
    }
    let s = _mm512_set1_ps(scale);
    for (i, ci) in c.iter().enumerate() {
        _mm512_storeu_ps(out.add(i * ld), _mm512_mul_ps(ci[0], s));
        _mm512_storeu_ps(out.add(i * ld + 16), _mm512_mul_ps(ci[1], s));
    }
}

/// `(weights, ld, keys, values, vst, out, ldo)`.
type ValueTile = (*const f32, usize, usize, *const f32, usize, *mut f32, usize);

/// [`value_tile`] for `mr` (1 to [`AR`]) queries.
///
/// # Safety
/// As [`value_tile`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn value_rows<const NZ: usize>(mr: usize, t: ValueTile) {
    match mr {
        6 => value_tile::<6, NZ>(t),
        5 => value_tile::<5, NZ>(t),
        4 => value_tile::<4, NZ>(t),
        3 => value_tile::<3, NZ>(t),
        2 => value_tile::<2, NZ>(t),
        _ => value_tile::<1, NZ>(t),
    }
}

/// `out[i, 0..16 NZ] = sum_j w[i, j] v[j, 0..16 NZ]` for `MR` queries.
///
/// # Safety
/// As [`head`]: `MR` weight rows of `keys`, `ld` apart; `keys` value rows of at least
/// `16 NZ` values, `vst` apart; `MR` output rows, `ldo` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[inline]
unsafe fn value_tile<const MR: usize, const NZ: usize>(t: ValueTile) {
    use std::arch::x86_64::*;
    let (w, ld, keys, v, vst, out, ldo) = t;
    let mut c = [[_mm512_setzero_ps(); NZ]; MR];
    for j in 0..keys {
        let row = v.add(j * vst);
        let mut b = [_mm512_setzero_ps(); NZ];
        for (z, bz) in b.iter_mut().enumerate() {
            *bz = _mm512_loadu_ps(row.add(16 * z));
        }
        for (i, ci) in c.iter_mut().enumerate() {
            let a = _mm512_set1_ps(*w.add(i * ld + j));
            for (cz, bz) in ci.iter_mut().zip(&b) {
                *cz = _mm512_fmadd_ps(a, *bz, *cz);
            }
        }
    }
    for (i, ci) in c.iter().enumerate() {
        for (z, cz) in ci.iter().enumerate() {
            _mm512_storeu_ps(out.add(i * ldo + 16 * z), *cz);
        }
    }
}

/// Whether [`few`] takes `queries` per head (decoding's one per step, beams, a short
/// prompt) `dim` wide on this CPU.
pub(super) fn fits_few(queries: usize, dim: usize) -> bool {
    queries > 0 && queries < MIN_QUERIES && dim > 0 && dim.is_multiple_of(16) && has_avx2_fma()
}

/// As [`head`], for fewer than [`MIN_QUERIES`] queries: no layout, each score a dot
/// product along `dim` (a key row read once for all the queries), each output row
/// accumulated in registers over the value rows.
///
/// # Safety
/// As [`head`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) unsafe fn few(h: &Head) {
    use std::arch::x86_64::*;
    let d = h.dim;
    let nz = d / 16;
    let visible = |i: usize| {
        if h.causal {
            (h.offset + i + 1).min(h.keys)
        } else {
            h.keys
        }
    };
    let keys = visible(h.first + h.rows - 1);
    let mut scores = reserve(h.rows * keys);
    let sp = scores.as_mut_ptr();
    // Scores, four queries at a time (a key row's vectors loaded once per group).
    for r0 in (0..h.rows).step_by(4) {
        let rr = 4.min(h.rows - r0);
        for j in 0..keys {
            let kj = h.k.add(j * h.kst);
            let mut acc = [_mm512_setzero_ps(); 4];
            for z in 0..nz {
                let kv = _mm512_loadu_ps(kj.add(16 * z));
                for (r, a) in acc.iter_mut().enumerate().take(rr) {
                    let qv = _mm512_loadu_ps(h.q.add((r0 + r) * h.qst + 16 * z));
                    *a = _mm512_fmadd_ps(qv, kv, *a);
                }
            }
            for (r, a) in acc.iter().enumerate().take(rr) {
                *sp.add((r0 + r) * keys + j) = _mm512_reduce_add_ps(*a) * h.scale;
            }
        }
    }
    // SAFETY: every query's `keys` scores were written above.
    let mut scores = written(scores, h.rows * keys);
    for r in 0..h.rows {
        let vis = visible(h.first + r);
        let row = &mut scores[r * keys..(r + 1) * keys];
        weigh_row(row, vis, h.mask.map(|(m, mi, mj)| (m.add(r * mi), mj)));
        // The output row, 64 features (four vectors) at a time.
        let w = row.as_ptr();
        for c0 in (0..d).step_by(64) {
            let n = (d - c0).min(64) / 16;
            let mut acc = [_mm512_setzero_ps(); 4];
            for j in 0..vis {
                let a = _mm512_set1_ps(*w.add(j));
                let vj = h.v.add(j * h.vst + c0);
                for (z, c) in acc.iter_mut().enumerate().take(n) {
                    *c = _mm512_fmadd_ps(a, _mm512_loadu_ps(vj.add(16 * z)), *c);
                }
            }
            let o = h.out.add(r * h.ldo + c0);
            for (z, c) in acc.iter().enumerate().take(n) {
                _mm512_storeu_ps(o.add(16 * z), *c);
            }
        }
    }
}
