//! Softmax of a row of scores in place, and the eight-lane `exp` it and the activations
//! share.

#[cfg(target_arch = "x86_64")]
use super::dispatch::has_avx2_fma;

/// `row <- softmax(row)` in place.
pub(super) fn softmax_row(row: &mut [f32]) {
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
pub(super) unsafe fn exp_avx2(x: std::arch::x86_64::__m256) -> std::arch::x86_64::__m256 {
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

#[cfg(test)]
mod tests {
    use super::*;

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
