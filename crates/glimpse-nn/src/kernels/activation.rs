//! The activations applied to a linear layer's output block while it is in cache:
//! eight lanes at a time with AVX2 (`exp` and `erfc` as polynomials), the scalar
//! formulas of candle's tensor ops elsewhere and for tails.

#[cfg(target_arch = "x86_64")]
use super::dispatch::has_avx2_fma;
#[cfg(target_arch = "x86_64")]
use super::softmax::exp_avx2;
use crate::activation::Activation;

/// `act` on one value, with the formulas candle's tensor ops use.
#[inline]
pub(super) fn activate(act: Activation, v: f32) -> f32 {
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
pub(super) fn activate_row(act: Activation, row: &mut [f32]) {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
