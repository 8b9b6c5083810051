//! Weight-only quantisation of linear layers, for decoding with the language models of
//! BLIP-2 (OPT) and LLaVA (LLaMA) in less memory and less time per token.
//!
//! Checkpoints stay float: a model is loaded as usual and its decoder layers are then
//! quantised in place ([`crate::opt::OptForCausalLM::quantize`],
//! [`crate::llama::LlamaForCausalLM::quantize`]) with candle's GGML block formats. Only
//! the weight matrices change; activations stay f32. On a CPU with AVX2, FMA and F16C,
//! `Q8_0` and `Q4K` weights are laid out once more for our own kernels
//! ([`crate::kernels::QuantWeight`]: the same dequantised values; `Q8_0` products summed
//! in f32 without rounding the activations, `Q4K` ones in 8-bit integers with the
//! activations rounded per 32 values); elsewhere, and for `Q4_0`, each product runs
//! through candle's quantised kernel (`QMatMul`). Neither records a backward pass —
//! quantised models are for inference only, and the models refuse `train = true` once
//! quantised.
//!
//! Formats, per layer (a block runs along a weight row, so the layer's input width must
//! be a multiple of the block size):
//! * [`Quant::Q8`]: `Q8_0` (blocks of 32, one f16 scale each: 8.5 bits per weight).
//! * [`Quant::Q4`]: `Q4K` (super-blocks of 256 with 6-bit sub-block scales and minimums,
//!   4.5 bits per weight) where the width is a multiple of 256, as in every published
//!   OPT and LLaMA size; else `Q4_0` (blocks of 32, 4.5 bits, coarser).
//! * A layer whose width fits no block stays in floating point; the [`QuantReport`]
//!   names it. The tiny test fixtures have such layers, real checkpoints do not.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::kernels::{self, QuantWeight};
use crate::layers::Linear;
use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{DType, Module, Result, Tensor};

/// The smallest block of any format used here (`Q8_0`, `Q4_0`); a layer whose input
/// width is not a multiple of it stays float.
pub const MIN_BLOCK: usize = 32;

/// A weight precision for quantised decoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quant {
    /// 8-bit (`Q8_0`).
    Q8,
    /// 4-bit (`Q4K`, or `Q4_0` where the width is not a multiple of 256).
    Q4,
}

impl Quant {
    /// The block format for a weight whose rows hold `in_dim` values; `None` when no
    /// format of this precision divides it.
    pub fn format_for(self, in_dim: usize) -> Option<GgmlDType> {
        let candidates: &[GgmlDType] = match self {
            Self::Q8 => &[GgmlDType::Q8_0],
            Self::Q4 => &[GgmlDType::Q4K, GgmlDType::Q4_0],
        };
        candidates
            .iter()
            .copied()
            .find(|f| in_dim > 0 && in_dim.is_multiple_of(f.block_size()))
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Q8 => "q8",
            Self::Q4 => "q4",
        }
    }
}

impl fmt::Display for Quant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A precision name that is neither `q8` nor `q4`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown quantisation {0:?}: expected `q8` or `q4`")]
pub struct ParseQuantError(pub String);

impl FromStr for Quant {
    type Err = ParseQuantError;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "q8" => Ok(Self::Q8),
            "q4" => Ok(Self::Q4),
            _ => Err(ParseQuantError(s.to_string())),
        }
    }
}

/// A linear layer whose weight is either a float tensor (as loaded, trainable) or a
/// quantised block matrix (inference only). The bias, if any, stays float.
#[derive(Debug, Clone)]
pub enum QuantLinear {
    Float(Linear),
    Quantized {
        /// `[out, in]` in `format`.
        weight: QWeight,
        /// `[out]`, f32.
        bias: Option<Tensor>,
        format: GgmlDType,
    },
}

/// A quantised weight: laid out for our kernels where the CPU runs them and the format
/// has one, else candle's.
#[derive(Debug, Clone)]
pub enum QWeight {
    Candle(QMatMul),
    Own(Arc<QuantWeight>),
}

impl QWeight {
    /// `weight` laid out for our kernels where they take it, else for candle's.
    pub fn new(weight: QTensor) -> Result<Self> {
        match QuantWeight::new(&weight)? {
            Some(own) => Ok(Self::Own(Arc::new(own))),
            None => Ok(Self::Candle(QMatMul::from_qtensor(weight)?)),
        }
    }

    /// Bytes held.
    pub fn size_in_bytes(&self) -> usize {
        match self {
            Self::Own(w) => w.size_in_bytes(),
            Self::Candle(QMatMul::QTensor(q)) => q.storage_size_in_bytes(),
            Self::Candle(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => {
                t.elem_count() * t.dtype().size_in_bytes()
            }
        }
    }

    /// `x @ w.T (+ bias)` for f32 `x` `[..., in]`.
    fn forward(&self, x: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        let y = match self {
            Self::Own(w) => {
                if let Some(y) = kernels::linear_quant(x, w, bias, None, None)? {
                    return Ok(y);
                }
                // The kernels declined (an input recording a backward pass): the
                // dequantised weight's plain product.
                let w = w.dequantize(x.device())?;
                x.broadcast_matmul(&w.t()?)?
            }
            Self::Candle(w) => w.forward(x)?,
        };
        match bias {
            Some(b) => y.broadcast_add(b),
            None => Ok(y),
        }
    }
}

impl From<Linear> for QuantLinear {
    fn from(linear: Linear) -> Self {
        Self::Float(linear)
    }
}

impl QuantLinear {
    /// The float layer, `None` once quantised.
    pub fn as_float(&self) -> Option<&Linear> {
        match self {
            Self::Float(l) => Some(l),
            Self::Quantized { .. } => None,
        }
    }

    /// The block format, `None` while float.
    pub fn format(&self) -> Option<GgmlDType> {
        match self {
            Self::Float(_) => None,
            Self::Quantized { format, .. } => Some(*format),
        }
    }

    pub fn is_quantized(&self) -> bool {
        self.format().is_some()
    }

    /// Replaces a float weight by its `quant` form. Returns the format used, or `None`
    /// (the layer unchanged) when the input width fits no block of that precision.
    /// Quantising a layer twice is an error: requantising would compound the rounding.
    pub fn quantize(&mut self, quant: Quant) -> Result<Option<GgmlDType>> {
        let Self::Float(linear) = self else {
            candle_core::bail!("this layer is already quantised");
        };
        let (_, in_dim) = linear.dims();
        let Some(format) = quant.format_for(in_dim) else {
            return Ok(None);
        };
        let weight = QWeight::new(QTensor::quantize(&linear.weight()?, format)?)?;
        let bias = linear.bias().map(|b| b.to_dtype(DType::F32)).transpose()?;
        *self = Self::Quantized {
            weight,
            bias,
            format,
        };
        Ok(Some(format))
    }

    /// Bytes held by the weight (and bias).
    pub fn size_in_bytes(&self) -> usize {
        let tensor_bytes = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        match self {
            Self::Float(l) => l.weight_bytes() + l.bias().map_or(0, tensor_bytes),
            Self::Quantized { weight, bias, .. } => {
                weight.size_in_bytes() + bias.as_ref().map_or(0, tensor_bytes)
            }
        }
    }
}

impl Module for QuantLinear {
    /// # Shapes
    /// * `xs`: `[..., in]` -> `[..., out]`, in the dtype of `xs`
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Self::Float(l) => l.forward(xs),
            Self::Quantized { weight, bias, .. } => {
                // The kernels take f32 rows everywhere (half inputs only on some devices).
                let dtype = xs.dtype();
                let x = xs.to_dtype(DType::F32)?.contiguous()?; // [..., in]
                let y = weight.forward(&x, bias.as_ref())?; // [..., out]
                y.to_dtype(dtype)
            }
        }
    }
}

/// What [`QuantLinear::quantize`] did to each layer of a model.
#[derive(Debug, Clone)]
pub struct QuantReport {
    pub quant: Quant,
    /// Layer name and format of every quantised layer.
    pub quantized: Vec<(String, GgmlDType)>,
    /// Layer name and input width of every layer left in floating point.
    pub kept: Vec<(String, usize)>,
    /// Bytes of the layers' weights before and after.
    pub bytes_before: usize,
    pub bytes_after: usize,
}

impl QuantReport {
    pub fn new(quant: Quant) -> Self {
        Self {
            quant,
            quantized: Vec::new(),
            kept: Vec::new(),
            bytes_before: 0,
            bytes_after: 0,
        }
    }

    /// Quantises `layer` with this report's precision and records the outcome as `name`.
    pub fn quantize(&mut self, name: String, layer: &mut QuantLinear) -> Result<()> {
        self.bytes_before += layer.size_in_bytes();
        let in_dim = match layer {
            QuantLinear::Float(l) => l.dims().1,
            QuantLinear::Quantized { .. } => {
                candle_core::bail!("{name} is already quantised");
            }
        };
        match layer.quantize(self.quant)? {
            Some(format) => self.quantized.push((name, format)),
            None => self.kept.push((name, in_dim)),
        }
        self.bytes_after += layer.size_in_bytes();
        Ok(())
    }

    /// How many layers each format got, in a stable order.
    pub fn counts(&self) -> Vec<(GgmlDType, usize)> {
        let mut counts: Vec<(GgmlDType, usize)> = Vec::new();
        for (_, f) in &self.quantized {
            match counts.iter_mut().find(|(g, _)| g == f) {
                Some((_, n)) => *n += 1,
                None => counts.push((*f, 1)),
            }
        }
        counts
    }
}

impl fmt::Display for QuantReport {
    /// One line: e.g. `q4: 24 of 24 linear layers quantised (24 Q4K), 302.0 MiB -> 42.5 MiB`,
    /// then the layers kept in floating point, if any.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let total = self.quantized.len() + self.kept.len();
        let counts: Vec<String> = self
            .counts()
            .iter()
            .map(|(fmt, n)| format!("{n} {fmt:?}"))
            .collect();
        let mib = |b: usize| b as f64 / (1u64 << 20) as f64;
        write!(
            f,
            "{}: {} of {total} linear layers quantised ({}), weights {:.1} MiB -> {:.1} MiB",
            self.quant,
            self.quantized.len(),
            if counts.is_empty() {
                "none".into()
            } else {
                counts.join(", ")
            },
            mib(self.bytes_before),
            mib(self.bytes_after),
        )?;
        if !self.kept.is_empty() {
            let kept: Vec<String> = self
                .kept
                .iter()
                .map(|(name, d)| format!("{name} (width {d})"))
                .collect();
            write!(
                f,
                "; kept in floating point, input width not a multiple of {MIN_BLOCK}: {}",
                kept.join(", ")
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn linear(out: usize, inp: usize, bias: bool) -> Linear {
        let dev = Device::Cpu;
        let w = (Tensor::arange(0f32, (out * inp) as f32, &dev).unwrap() * 0.37)
            .unwrap()
            .sin()
            .unwrap()
            .reshape((out, inp))
            .unwrap();
        let b = bias.then(|| Tensor::arange(0f32, out as f32, &dev).unwrap());
        Linear::new(w, b)
    }

    fn rel_err(a: &Tensor, b: &Tensor) -> f32 {
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap();
        let s = b.abs().unwrap().max_all().unwrap();
        (d / s).unwrap().to_scalar::<f32>().unwrap()
    }

    #[test]
    fn formats_follow_the_input_width() {
        use GgmlDType::*;
        assert_eq!(Quant::Q8.format_for(4096), Some(Q8_0));
        assert_eq!(Quant::Q8.format_for(96), Some(Q8_0));
        assert_eq!(Quant::Q8.format_for(48), None);
        assert_eq!(Quant::Q4.format_for(11008), Some(Q4K)); // 43 x 256
        assert_eq!(Quant::Q4.format_for(96), Some(Q4_0));
        assert_eq!(Quant::Q4.format_for(48), None);
        assert_eq!(Quant::Q4.format_for(0), None);
        assert_eq!("q8".parse::<Quant>().unwrap(), Quant::Q8);
        assert_eq!("Q4".parse::<Quant>().unwrap(), Quant::Q4);
        let err = "int8".parse::<Quant>().unwrap_err().to_string();
        assert!(err.contains("int8") && err.contains("q8"), "{err}");
    }

    /// Each format reproduces the float product to within its rounding, with the bias,
    /// for 2-d and 3-d inputs; a layer with an odd width is left as it was.
    #[test]
    fn quantised_products_are_close_to_float() {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, 2.0 * 3.0 * 256.0, &dev)
            .unwrap()
            .cos()
            .unwrap()
            .reshape((2, 3, 256))
            .unwrap();
        for (quant, format, tol) in [
            (Quant::Q8, GgmlDType::Q8_0, 0.01),
            (Quant::Q4, GgmlDType::Q4K, 0.08),
        ] {
            let float = QuantLinear::from(linear(64, 256, true));
            let want = float.forward(&x).unwrap();
            let mut q = float.clone();
            assert_eq!(q.quantize(quant).unwrap(), Some(format));
            assert!(q.size_in_bytes() < float.size_in_bytes() / 3);
            let got = q.forward(&x).unwrap();
            assert_eq!(got.dims(), &[2, 3, 64]);
            let e = rel_err(&got, &want);
            assert!(e < tol, "{quant}: relative error {e}");
            let got2 = q.forward(&x.get(0).unwrap()).unwrap(); // [3, 256]
            assert!(rel_err(&got2, &want.get(0).unwrap()) < tol);
            assert!(q.quantize(quant).is_err(), "quantising twice");
        }
        let mut odd = QuantLinear::from(linear(8, 48, false));
        assert_eq!(odd.quantize(Quant::Q8).unwrap(), None);
        assert!(!odd.is_quantized());
    }

    /// Where our `Q8_0` kernels hold the weight, an input they decline (one recording a
    /// backward pass) takes the dequantised weight's plain product, with the same result.
    #[test]
    fn declined_inputs_take_the_dequantised_product() {
        let dev = Device::Cpu;
        let mut q = QuantLinear::from(linear(40, 64, true));
        q.quantize(Quant::Q8).unwrap();
        let x = Tensor::arange(0f32, 3.0 * 64.0, &dev)
            .unwrap()
            .sin()
            .unwrap()
            .reshape((3, 64))
            .unwrap();
        let kernel = q.forward(&x).unwrap();
        let var = candle_core::Var::from_tensor(&x).unwrap();
        let plain = q.forward(var.as_tensor()).unwrap();
        assert!(rel_err(&plain, &kernel) < 1e-5);
        if let QuantLinear::Quantized {
            weight: QWeight::Own(w),
            ..
        } = &q
        {
            // Laid out for our kernels on this CPU: they really were the first path.
            assert!(
                crate::kernels::linear_quant(var.as_tensor(), w, None, None, None)
                    .unwrap()
                    .is_none()
            );
        }
    }

    #[test]
    fn half_precision_inputs_come_back_in_their_dtype() {
        let dev = Device::Cpu;
        let mut q = QuantLinear::from(linear(16, 32, true));
        q.quantize(Quant::Q4).unwrap();
        assert_eq!(q.format(), Some(GgmlDType::Q4_0));
        let x = Tensor::ones((1, 32), DType::BF16, &dev).unwrap();
        assert_eq!(q.forward(&x).unwrap().dtype(), DType::BF16);
    }

    #[test]
    fn report_counts_formats_and_names_kept_layers() {
        let mut report = QuantReport::new(Quant::Q4);
        let mut a = QuantLinear::from(linear(8, 256, false));
        let mut b = QuantLinear::from(linear(8, 64, false));
        let mut c = QuantLinear::from(linear(8, 48, false));
        report.quantize("a".into(), &mut a).unwrap();
        report.quantize("b".into(), &mut b).unwrap();
        report.quantize("c".into(), &mut c).unwrap();
        assert_eq!(
            report.counts(),
            vec![(GgmlDType::Q4K, 1), (GgmlDType::Q4_0, 1)]
        );
        assert!(report.bytes_after < report.bytes_before);
        let text = report.to_string();
        assert!(
            text.starts_with("q4: 2 of 3 linear layers quantised"),
            "{text}"
        );
        assert!(text.contains("c (width 48)"), "{text}");
        assert!(report.quantize("a".into(), &mut a).is_err());
    }
}
