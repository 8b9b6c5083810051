//! Attention's per-head products on AVX2 register tiles, for CPUs without AVX-512:
//! the same plan as the parent module at half the vector width. Keys are laid out once
//! per task in `k`-major panels of [`NR`] keys; score tiles are [`QR`] queries by a
//! panel (12 accumulators, two loads and one broadcast per query each step); output
//! tiles are [`AR`] queries by 16 features (12 accumulators), each step along the keys
//! two loads of a value row and one broadcast of a weight per query.

use std::arch::x86_64::*;

use super::super::attention::weigh_row;
use super::super::packing::transpose_into;
use super::super::{reserve, written};
use super::{Head, QB};

/// Keys per panel (two vectors of scores).
const NR: usize = 16;
/// Queries per score tile.
const QR: usize = 6;
/// Queries per output tile.
const AR: usize = 6;

/// `out <- softmax(scale * q k^T + mask) v` for the task's queries.
///
/// # Safety
/// As [`super::head`], with AVX2 and FMA in place of AVX-512F.
#[target_feature(enable = "avx2,fma")]
pub(in crate::kernels) unsafe fn head(h: &Head) {
    let d = h.dim;
    let visible = |i: usize| {
        if h.causal {
            (h.offset + i + 1).min(h.keys)
        } else {
            h.keys
        }
    };
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
    let mut qt = reserve(QB.div_ceil(QR) * QR * d);
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
            // SAFETY: row r's first `bkeys` scores were written by the tiles above.
            let row = std::slice::from_raw_parts_mut(sp.add(r * ld), bkeys);
            let mask = h.mask.map(|(m, mi, mj)| (m.add((b0 + r) * mi), mj));
            weigh_row(row, visible(i), mask);
        }
        for t0 in (0..rows).step_by(AR) {
            for c0 in (0..d).step_by(16) {
                let t = (
                    sp.add(t0 * ld) as *const f32,
                    ld,
                    bkeys,
                    h.v.add(c0),
                    h.vst,
                    h.out.add((b0 + t0) * h.ldo + c0),
                    h.ldo,
                );
                match AR.min(rows - t0) {
                    6 => value_tile::<6>(t),
                    5 => value_tile::<5>(t),
                    4 => value_tile::<4>(t),
                    3 => value_tile::<3>(t),
                    2 => value_tile::<2>(t),
                    _ => value_tile::<1>(t),
                }
            }
        }
    }
}

/// `scores[i, 0..NR] = scale * q_i . k_j` for the tile's `MR` queries and the panel's keys
/// (`(query tile, key panel, dim, scores, ld, scale)`).
///
/// # Safety
/// As [`head`]: the tile holds `dim * QR` values, the panel `dim * NR`, and the scores
/// `MR` rows of `NR`, `ld` apart.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn score_tile<const MR: usize>(t: (*const f32, *const f32, usize, *mut f32, usize, f32)) {
    let (qt, panel, d, out, ld, scale) = t;
    let mut c = [[_mm256_setzero_ps(); 2]; MR];
    for kk in 0..d {
        let b0 = _mm256_loadu_ps(panel.add(kk * NR));
        let b1 = _mm256_loadu_ps(panel.add(kk * NR + 8));
        for (i, ci) in c.iter_mut().enumerate() {
            let a = _mm256_broadcast_ss(&*qt.add(kk * QR + i));
            ci[0] = _mm256_fmadd_ps(a, b0, ci[0]);
            ci[1] = _mm256_fmadd_ps(a, b1, ci[1]);
        }
    }
    let s = _mm256_set1_ps(scale);
    for (i, ci) in c.iter().enumerate() {
        _mm256_storeu_ps(out.add(i * ld), _mm256_mul_ps(ci[0], s));
        _mm256_storeu_ps(out.add(i * ld + 8), _mm256_mul_ps(ci[1], s));
    }
}

/// `out[i, 0..16] = sum_j w[i, j] v[j, 0..16]` for `MR` queries (`(weights, ld, keys,
/// values, vst, out, ldo)`).
///
/// # Safety
/// As [`head`]: `MR` weight rows of `keys`, `ld` apart; `keys` value rows of at least
/// 16 values, `vst` apart; `MR` output rows, `ldo` apart.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn value_tile<const MR: usize>(
    t: (*const f32, usize, usize, *const f32, usize, *mut f32, usize),
) {
    let (w, ld, keys, v, vst, out, ldo) = t;
    let mut c = [[_mm256_setzero_ps(); 2]; MR];
    for j in 0..keys {
        let row = v.add(j * vst);
        let (b0, b1) = (_mm256_loadu_ps(row), _mm256_loadu_ps(row.add(8)));
        for (i, ci) in c.iter_mut().enumerate() {
            let a = _mm256_broadcast_ss(&*w.add(i * ld + j));
            ci[0] = _mm256_fmadd_ps(a, b0, ci[0]);
            ci[1] = _mm256_fmadd_ps(a, b1, ci[1]);
        }
    }
    for (i, ci) in c.iter().enumerate() {
        _mm256_storeu_ps(out.add(i * ldo), ci[0]);
        _mm256_storeu_ps(out.add(i * ldo + 8), ci[1]);
    }
}

/// As [`head`], for fewer than [`super::MIN_QUERIES`] queries: no layout, each score a
/// dot product along `dim` (a key row read once for up to four queries), each output
/// row accumulated in registers over the value rows, 64 features at a time.
///
/// # Safety
/// As [`head`].
#[target_feature(enable = "avx2,fma")]
pub(in crate::kernels) unsafe fn few(h: &Head) {
    let d = h.dim;
    let nz = d / 8;
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
    for r0 in (0..h.rows).step_by(4) {
        let rr = 4.min(h.rows - r0);
        for j in 0..keys {
            let kj = h.k.add(j * h.kst);
            let mut acc = [_mm256_setzero_ps(); 4];
            for z in 0..nz {
                let kv = _mm256_loadu_ps(kj.add(8 * z));
                for (r, a) in acc.iter_mut().enumerate().take(rr) {
                    let qv = _mm256_loadu_ps(h.q.add((r0 + r) * h.qst + 8 * z));
                    *a = _mm256_fmadd_ps(qv, kv, *a);
                }
            }
            for (r, a) in acc.iter().enumerate().take(rr) {
                let s4 = _mm_add_ps(_mm256_castps256_ps128(*a), _mm256_extractf128_ps(*a, 1));
                let s2 = _mm_add_ps(s4, _mm_movehl_ps(s4, s4));
                let s = _mm_cvtss_f32(_mm_add_ss(s2, _mm_movehdup_ps(s2)));
                *sp.add((r0 + r) * keys + j) = s * h.scale;
            }
        }
    }
    // SAFETY: every query's `keys` scores were written above.
    let mut scores = written(scores, h.rows * keys);
    for r in 0..h.rows {
        let vis = visible(h.first + r);
        let row = &mut scores[r * keys..(r + 1) * keys];
        weigh_row(row, vis, h.mask.map(|(m, mi, mj)| (m.add(r * mi), mj)));
        let w = row.as_ptr();
        for c0 in (0..d).step_by(64) {
            let n = (d - c0).min(64) / 8;
            let mut acc = [_mm256_setzero_ps(); 8];
            for j in 0..vis {
                let a = _mm256_broadcast_ss(&*w.add(j));
                let vj = h.v.add(j * h.vst + c0);
                for (z, c) in acc.iter_mut().enumerate().take(n) {
                    *c = _mm256_fmadd_ps(a, _mm256_loadu_ps(vj.add(8 * z)), *c);
                }
            }
            let o = h.out.add(r * h.ldo + c0);
            for (z, c) in acc.iter().enumerate().take(n) {
                _mm256_storeu_ps(o.add(8 * z), *c);
            }
        }
    }
}
