//! Layer normalisation of f32 rows in one task per run of rows, the mean taken out
//! before the variance as the reference computes it.

use candle_core::{Result, Tensor};
use rayon::prelude::*;

use super::dispatch::eligible;
use super::{f32_data, threads};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{max_diff, rand};
    use candle_core::D;

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
}
