//! The linear entry points ([`linear`], [`linear_packed`], [`linear_quant`],
//! `linear_int8`): the output
//! split into column blocks, one per thread, each block's product run by the kernel that
//! fits its weight and row count, then its bias, activation or residual applied while
//! the block is in cache.

use candle_core::{Result, Tensor};
use rayon::prelude::*;

use super::activation::activate_row;
use super::dispatch::eligible;
#[cfg(target_arch = "x86_64")]
use super::dispatch::{has_avx2_fma, has_avx512f, tiled};
#[cfg(target_arch = "x86_64")]
use super::dot::{small_m_avx2, tiled_avx2};
#[cfg(target_arch = "x86_64")]
use super::int8::Int8Weight;
#[cfg(target_arch = "x86_64")]
use super::outer::packed_avx512;
use super::outer::Onto;
use super::packing::{PackedWeight, AVX2_NR};
use super::quantised::QuantWeight;
use super::{f32_data, reserve, threads, written, SharedMut};
use crate::activation::Activation;

/// Products with at most this many rows (decoding: one token per sequence or beam) skip
/// `gemm`, which packs the weight's block before using it once or twice: a dot-product
/// kernel streams each weight row once for all rows instead.
pub(super) const SMALL_M: usize = 4;

/// Products with more rows than [`SMALL_M`] and at most this many skip `gemm` too: it
/// re-packs the weight (strided, one value at a time) on every call, which dominates at
/// the rows of a CLIP image or a prompt; [`tiled_avx2`] reads the weight in place
/// instead. Above this, packing pays for itself.
pub(super) const TILE_M: usize = 96;

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

/// The output's dims and row count of `x` (`[..., k]`) times a `[n, k]` weight, or
/// `None` where the kernels do not take the operands: a width that is not `k` (the
/// plain path then reports the mismatch), a bias or residual of another shape or not
/// contiguous, no rows, `k` of zero.
fn output_shape(
    x: &Tensor,
    n: usize,
    k: usize,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
) -> Option<(Vec<usize>, usize)> {
    let mut out_dims = x.dims().to_vec();
    if out_dims.pop() != Some(k) {
        return None;
    }
    out_dims.push(n);
    let m = x.elem_count() / k.max(1);
    if bias.is_some_and(|b| b.dims() != [n] || !b.is_contiguous())
        || residual.is_some_and(|r| r.dims() != out_dims.as_slice() || !r.is_contiguous())
        || m == 0
        || k == 0
    {
        return None;
    }
    Some((out_dims, m))
}

/// [`linear`] with an 8-bit weight ([`Int8Weight`]): each row of `x` rounded to 8 bits
/// with its own scale, the products summed in integers, then scaled back, the bias,
/// residual or activation applied as for [`linear`]. `x` may be a view (it is copied);
/// `Ok(None)` as for [`linear`] (the caller then needs [`Int8Weight::dequantize`] for
/// the plain ops).
#[cfg(target_arch = "x86_64")]
pub fn linear_int8(
    x: &Tensor,
    weight: &Int8Weight,
    bias: Option<&Tensor>,
    act: Option<Activation>,
    residual: Option<&Tensor>,
) -> Result<Option<Tensor>> {
    use super::int8::{run_blocks, Path, QuantRows, NR8};
    let x = if eligible(&[x]) && !x.is_contiguous() {
        &x.contiguous()?
    } else {
        x
    };
    let mut all = vec![x];
    all.extend(bias);
    all.extend(residual);
    if act.is_some() && residual.is_some() {
        candle_core::bail!("kernels::linear_int8 takes an activation or a residual, not both")
    }
    let Some(path) = Path::best() else {
        return Ok(None);
    };
    if !eligible(&all) || x.rank() == 0 || !x.is_contiguous() {
        return Ok(None);
    }
    let (n, k) = weight.dims();
    let Some((out_dims, m)) = output_shape(x, n, k, bias, residual) else {
        return Ok(None);
    };
    let (xg, xl) = x.storage_and_layout();
    let q = QuantRows::new(f32_data(&xg, xl)?, m, k, path);
    drop(xg);
    let bg = bias.map(|b| b.storage_and_layout());
    let rg = residual.map(|r| r.storage_and_layout());
    let bs = bg.as_ref().map(|(g, l)| f32_data(g, l)).transpose()?;
    let rs = rg.as_ref().map(|(g, l)| f32_data(g, l)).transpose()?;
    let mut out = reserve(m * n);
    let dst = SharedMut(out.as_mut_ptr());
    // Pairs of panels per thread (the tile kernels read them in pairs).
    let blocks = column_blocks(n, m, k, 2 * NR8);
    let activate = |j0: usize, nn: usize| {
        if let Some(act) = act {
            for i in 0..m {
                // SAFETY: the block's columns of row i, written by its product just now.
                activate_row(act, unsafe {
                    std::slice::from_raw_parts_mut(dst.at(i * n + j0), nn)
                });
            }
        }
    };
    // SAFETY: `out` has room for m rows of n; the blocks start at panels and split the
    // columns; the bias has n values and the residual m rows of n (checked above).
    unsafe { run_blocks(weight, &q, &blocks, dst, n, bs, rs, &activate) };
    // SAFETY: the column blocks cover 0..n, and each wrote all m rows of its columns.
    let out = unsafe { written(out, m * n) };
    Ok(Some(Tensor::from_vec(out, out_dims, x.device())?))
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
    let Some((out_dims, m)) = output_shape(x, n, k, bias, residual) else {
        return Ok(None);
    };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{max_diff, plain_linear, rand};
    use candle_core::{DType, Var};

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
}
