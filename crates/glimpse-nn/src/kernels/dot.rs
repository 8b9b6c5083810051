//! The f32 kernels that read a weight in its stored `[out, in]` layout, as dot products
//! along `k`: one for decoding's few rows, which streams each weight row once, and a
//! register-tiled one for up to `TILE_M` rows, which packs nothing.

use super::linear::SMALL_M;

/// `out[i, j] (+)= x[i, :] . w[j, :]` for `m` (at most [`SMALL_M`]) rows of `x`
/// (`[m, k]`) and `nn` rows of `w` (`[nn, k]`); `out` rows are `ldo` apart.
///
/// The weight is read once, front to back, one row at a time: a single sequential
/// stream is what the hardware prefetcher follows best (better than four rows read
/// side by side).
/// Each loaded chunk of a weight row serves all `m` rows of `x`, which stay in L1.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `out` must be valid for `m` rows of `nn` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn small_m_avx2(
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

/// Weight values (along `k`) per pass of [`tiled_avx2`]: a tile's rows of `x` and of the
/// weight (7 rows of 768: 21 KiB) stay in L1 while it runs.
const TILE_K: usize = 768;

/// Rows of `x` per pass of [`tiled_avx2`]: a pass's slice of `x` (at most 128 rows of
/// [`TILE_K`]: 384 KiB) stays in L2 while the weight's rows stream past it once.
const TILE_ROWS: usize = 128;

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
pub(super) unsafe fn tiled_avx2(
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

#[cfg(test)]
mod tests {
    #[cfg(target_arch = "x86_64")]
    use super::super::dispatch::has_avx2_fma;
    #[cfg(target_arch = "x86_64")]
    use super::*;
    use crate::activation::Activation;
    use crate::kernels::linear::{linear, TILE_M};
    use crate::test_util::{max_diff, plain_linear, rand};
    #[cfg(target_arch = "x86_64")]
    use candle_core::{Device, Tensor};

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
}
