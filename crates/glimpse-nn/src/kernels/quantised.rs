//! Quantised weights ([`QuantWeight`]): candle's `Q8_0` and `Q4K` blocks laid out once
//! in panels for our kernels (`quant` and `q4k` hold each format's layout and
//! products), and dequantised back for the plain ops.

use candle_core::{Result, Tensor};
#[cfg(target_arch = "x86_64")]
use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::dispatch::{enabled, has_quant_kernels};
#[cfg(target_arch = "x86_64")]
use super::linear::SMALL_M;
use super::outer::Onto;
#[cfg(target_arch = "x86_64")]
use super::packing::AVX2_NR;
#[cfg(target_arch = "x86_64")]
use super::{q4k, quant};

/// A linear layer's quantised weight `[n, k]` in one of candle's block formats, `Q8_0`
/// or `Q4K`, laid out once for our quantised kernels: panels of 16 output rows, each a
/// run of groups along `k` (one per candle block) holding the 16 rows' scales and then
/// their values (`kernels/quant.rs` and `kernels/q4k.rs` give the byte layouts). The
/// dequantised values are exactly candle's; `Q8_0` takes the same 8.5 bits per weight,
/// `Q4K` 4.75 instead of 4.5 (its 6-bit scales kept unpacked).
///
/// `Q8_0`: decoding's few rows stream each group once, with a block's sums scaled at its
/// end; more rows run the f32 outer-product kernel on slices dequantised into L1 as it
/// goes; the activations stay f32. candle's own `Q8_0` kernel rounds the activations to
/// 8 bits per block and takes dot products per output, so a prompt runs about as slowly
/// per row as a decoding step.
///
/// `Q4K`: the activations are rounded to 8 bits per 32 values and the products summed
/// in integers (`maddubs`), in tiles of up to 4 rows by 16 columns, for decoding and
/// prompts alike.
pub struct QuantWeight {
    buf: Vec<u8>,
    start: usize,
    pub(super) n: usize,
    pub(super) k: usize,
    format: QFormat,
}

/// The block formats [`QuantWeight`] lays out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum QFormat {
    Q8_0,
    Q4K,
}

#[cfg(target_arch = "x86_64")]
impl QFormat {
    /// Values along `k` per candle block and per group of a panel.
    fn block(self) -> usize {
        match self {
            Self::Q8_0 => quant::BLOCK,
            Self::Q4K => q4k::BLOCK,
        }
    }

    /// Bytes of a candle block.
    fn candle_block(self) -> usize {
        match self {
            Self::Q8_0 => quant::CANDLE_BLOCK,
            Self::Q4K => q4k::CANDLE_BLOCK,
        }
    }

    /// Bytes of a panel's group.
    fn group(self) -> usize {
        match self {
            Self::Q8_0 => quant::GROUP,
            Self::Q4K => q4k::GROUP,
        }
    }
}

impl std::fmt::Debug for QuantWeight {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QuantWeight([{}, {}], {:?})",
            self.n,
            self.k,
            self.dtype()
        )
    }
}

impl QuantWeight {
    /// `weight` laid out for the quantised kernels, or `None` where they do not take it:
    /// a format other than `Q8_0` and `Q4K`, not a matrix, not on the CPU, a CPU without
    /// AVX2, FMA and F16C, or the kernels turned off.
    pub fn new(weight: &candle_core::quantized::QTensor) -> Result<Option<Self>> {
        #[cfg(target_arch = "x86_64")]
        {
            use candle_core::quantized::GgmlDType;
            let format = match weight.dtype() {
                GgmlDType::Q8_0 => QFormat::Q8_0,
                GgmlDType::Q4K => QFormat::Q4K,
                _ => return Ok(None),
            };
            if !enabled() || !has_quant_kernels() || !weight.device().is_cpu() {
                return Ok(None);
            }
            let Ok((n, k)) = weight.shape().dims2() else {
                return Ok(None);
            };
            if n == 0 || k == 0 || !k.is_multiple_of(format.block()) {
                return Ok(None);
            }
            let data = weight.data()?;
            let per_row = k / format.block() * format.candle_block();
            if data.len() != n * per_row {
                candle_core::bail!(
                    "quantised weight [{n}, {k}] holds {} bytes, expected {}",
                    data.len(),
                    n * per_row
                );
            }
            let panel = k / format.block() * format.group();
            let panels = n.div_ceil(AVX2_NR);
            let mut buf = vec![0u8; panels * panel + 64];
            let start = buf.as_ptr().align_offset(64).min(64);
            buf[start..start + panels * panel]
                .par_chunks_mut(panel)
                .enumerate()
                .for_each(|(p, dst)| {
                    let rows = AVX2_NR.min(n - p * AVX2_NR);
                    let src = &data[p * AVX2_NR * per_row..(p * AVX2_NR + rows) * per_row];
                    match format {
                        QFormat::Q8_0 => quant::lay_out_panel(src, rows, k, dst),
                        QFormat::Q4K => q4k::lay_out_panel(src, rows, k, dst),
                    }
                });
            Ok(Some(Self {
                buf,
                start,
                n,
                k,
                format,
            }))
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = weight;
            Ok(None)
        }
    }

    /// `(out, in)`, as the stored weight's shape.
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// The block format of the values.
    pub fn dtype(&self) -> candle_core::quantized::GgmlDType {
        match self.format {
            QFormat::Q8_0 => candle_core::quantized::GgmlDType::Q8_0,
            QFormat::Q4K => candle_core::quantized::GgmlDType::Q4K,
        }
    }

    /// Bytes held by the laid-out weight.
    pub fn size_in_bytes(&self) -> usize {
        self.buf.len()
    }

    #[cfg(target_arch = "x86_64")]
    fn panel_bytes(&self) -> usize {
        self.k / self.format.block() * self.format.group()
    }

    #[cfg(target_arch = "x86_64")]
    fn data(&self) -> &[u8] {
        let len = self.n.div_ceil(AVX2_NR) * self.panel_bytes();
        &self.buf[self.start..self.start + len]
    }

    /// The weight dequantised, `[out, in]` in f32: the values of candle's
    /// `QTensor::dequantize`, for the plain ops.
    pub fn dequantize(&self, device: &candle_core::Device) -> Result<Tensor> {
        #[cfg(target_arch = "x86_64")]
        {
            let (n, k) = (self.n, self.k);
            let mut w = vec![0f32; n * k];
            for (p, panel) in self.data().chunks_exact(self.panel_bytes()).enumerate() {
                let rows = AVX2_NR.min(n - p * AVX2_NR);
                let mut out = vec![vec![0f32; k]; AVX2_NR];
                match self.format {
                    QFormat::Q8_0 => quant::dequantize_panel(panel, k, &mut out),
                    QFormat::Q4K => q4k::dequantize_panel(panel, k, &mut out),
                }
                for (c, row) in out.iter().take(rows).enumerate() {
                    w[(p * AVX2_NR + c) * k..(p * AVX2_NR + c + 1) * k].copy_from_slice(row);
                }
            }
            Tensor::from_vec(w, (n, k), device)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = device;
            unreachable!("QuantWeight needs x86_64")
        }
    }

    /// `out[i, j] (+)= x[i, :] . w[j0 + j, :]` for `j < nn`: a column block of
    /// [`linear_quant`](super::linear_quant), as
    /// [`PackedWeight::multiply`](super::PackedWeight::multiply) for a laid-out f32 weight.
    ///
    /// # Safety
    /// As [`PackedWeight::multiply`](super::PackedWeight::multiply), with panels of 16
    /// columns.
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn multiply(
        &self,
        x: &[f32],
        m: usize,
        j0: usize,
        nn: usize,
        out: *mut f32,
        ldo: usize,
        accumulate: bool,
        onto: Onto,
    ) {
        #[cfg(target_arch = "x86_64")]
        {
            debug_assert!(j0.is_multiple_of(AVX2_NR) && j0 + nn <= self.n && x.len() >= m * self.k);
            debug_assert!(m > SMALL_M || onto.is_none());
            let panels = self.data()[j0 / AVX2_NR * self.panel_bytes()..].as_ptr();
            let (k, xp) = (self.k, x.as_ptr());
            if self.format == QFormat::Q4K {
                return q4k::multiply(x, m, k, panels, nn, out, ldo, accumulate, onto);
            }
            match m {
                1 => quant::few_rows::<1>(xp, k, panels, nn, out, ldo, accumulate),
                2 => quant::few_rows::<2>(xp, k, panels, nn, out, ldo, accumulate),
                3 => quant::few_rows::<3>(xp, k, panels, nn, out, ldo, accumulate),
                4 => quant::few_rows::<4>(xp, k, panels, nn, out, ldo, accumulate),
                _ => quant::outer(x, m, k, panels, nn, out, ldo, accumulate, onto),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (x, m, j0, nn, out, ldo, accumulate, onto);
            unreachable!("QuantWeight needs x86_64");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::dispatch::{enabled, has_quant_kernels};
    use super::*;
    use crate::activation::Activation;
    use crate::kernels::linear::linear_quant;
    use crate::test_util::{max_diff, plain_linear, rand};
    use candle_core::Device;

    #[test]
    fn quantised_weights_dequantise_as_candle_and_multiply_as_f32() {
        use candle_core::quantized::{GgmlDType, QTensor};
        if !(enabled() && has_quant_kernels()) {
            return;
        }
        // Part panels (19, 203: two column blocks that end mid-panel), whole ones (64),
        // `k` of one block, of several and past one slice of the outer kernel (544 =
        // 2*256 + 32); rows through the few-rows kernel (1-4), and the outer one with
        // remainders and more than one block of rows (151, 300). Q4K: one block and two,
        // and tiles of 1-4 rows.
        let cases = [
            (GgmlDType::Q8_0, 203, 96),
            (GgmlDType::Q8_0, 64, 32),
            (GgmlDType::Q8_0, 19, 544),
            (GgmlDType::Q4K, 203, 256),
            (GgmlDType::Q4K, 19, 512),
        ];
        for (dtype, n, k) in cases {
            let w = rand(&[n, k], 170);
            let b = rand(&[n], 171);
            let q = QTensor::quantize(&w, dtype).unwrap();
            let qw = QuantWeight::new(&q).unwrap().expect("lays out on this CPU");
            assert_eq!((qw.dims(), qw.dtype()), ((n, k), dtype));
            let deq = qw.dequantize(&Device::Cpu).unwrap();
            let candle = q.dequantize(&Device::Cpu).unwrap();
            assert_eq!(
                max_diff(&deq, &candle),
                0.0,
                "{dtype:?} [{n}, {k}] dequantised"
            );
            assert!(max_diff(&deq, &w) > 0.0, "{dtype:?}: quantising rounds");
            for m in (1..=7).chain([50, 151, 300]) {
                let x = rand(&[m, k], 172 + m as u64);
                let r = rand(&[m, n], 173 + m as u64);
                let what = format!("{dtype:?} {m}x{k}x{n}");
                // How far each output may be from the dequantised weight's f32 product:
                // summation order for Q8_0; for Q4K, which rounds x to 8 bits per 32
                // values, also sum_k |w[j, k]| * max|x[i, block of k]| / 254 (half a
                // step of the rounding).
                let tol = if dtype == GgmlDType::Q4K {
                    let amax = x
                        .reshape((m, k / 32, 32))
                        .unwrap()
                        .abs()
                        .unwrap()
                        .max_keepdim(2)
                        .unwrap()
                        .broadcast_as((m, k / 32, 32))
                        .unwrap()
                        .reshape((m, k))
                        .unwrap();
                    let bound = (amax / 254.0)
                        .unwrap()
                        .matmul(&deq.abs().unwrap().t().unwrap());
                    bound.unwrap().affine(1.01, 1e-3).unwrap()
                } else {
                    Tensor::full(1e-3f32, (m, n), &Device::Cpu).unwrap()
                };
                let within = |want: &Tensor, got: &Tensor, slack: f64, what: &str| {
                    let diff = want.sub(got).unwrap().abs().unwrap();
                    let over = diff
                        .sub(&tol.affine(slack, 0.0).unwrap())
                        .unwrap()
                        .max_all()
                        .unwrap()
                        .to_scalar::<f32>()
                        .unwrap();
                    assert!(over <= 0.0, "{what}: {over} past the bound");
                };
                let plain = plain_linear(&x, &deq, Some(&b));
                let got = linear_quant(&x, &qw, Some(&b), None, None)
                    .unwrap()
                    .unwrap();
                within(&plain, &got, 1.0, &what);
                if dtype == GgmlDType::Q4K && max_diff(&plain, &got) == 0.0 {
                    panic!("{what}: x was not rounded");
                }
                let got = linear_quant(&x, &qw, None, None, Some(&r))
                    .unwrap()
                    .unwrap();
                let want = (plain_linear(&x, &deq, None) + &r).unwrap();
                within(&want, &got, 1.0, &format!("{what}, residual"));
                let got = linear_quant(&x, &qw, Some(&b), Some(Activation::Gelu), None)
                    .unwrap()
                    .unwrap();
                let want = Activation::Gelu.apply(&plain).unwrap();
                // GELU's slope stays below 1.13.
                within(&want, &got, 1.13, &format!("{what}, gelu"));
            }
            // A view of `x` is copied, not refused: the same as its contiguous copy.
            let x = rand(&[k, 5], 190).t().unwrap();
            let got = linear_quant(&x, &qw, None, None, None).unwrap().unwrap();
            let x = x.contiguous().unwrap();
            let want = linear_quant(&x, &qw, None, None, None).unwrap().unwrap();
            assert_eq!(max_diff(&want, &got), 0.0, "{dtype:?}, a transposed x");
        }
        // The other formats stay on candle's kernels.
        let q = QTensor::quantize(&rand(&[16, 256], 1), GgmlDType::Q4_0).unwrap();
        assert!(QuantWeight::new(&q).unwrap().is_none());
    }
}
