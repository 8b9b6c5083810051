//! Small layers shared by every model: a layer norm that is fused for inference and
//! differentiable for training, the linear layer and its constructors, and the
//! activations (re-exported from [`crate::activation`]).
//!
//! candle's fused layer norm (`candle_nn::ops::layer_norm`) records no backward pass, so
//! a model built on it alone would train silently wrong. [`LayerNorm::forward`] takes a
//! `train` flag and computes the same function with ordinary tensor ops when gradients
//! are needed.

use std::sync::Arc;

use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::VarBuilder;

use crate::kernels::PackedWeight;

pub use crate::activation::Activation;
pub use candle_nn::Module;

/// `y = x W^T + b`, as `torch.nn.Linear`, with the weight `[out, in]` as stored.
///
/// Inference on the CPU in f32 runs [`kernels::linear`](crate::kernels::linear), which
/// adds the bias (and, through [`Linear::forward_act`] and [`Linear::forward_add`], the
/// activation or the residual) inside the matrix product's column blocks; elsewhere, and
/// whenever a gradient is recorded, it is candle's `Linear`.
///
/// A weight that records no gradient (a loaded model, not a training variable) is laid
/// out once for the packed kernels where the CPU has AVX2 and FMA (panels for AVX-512
/// or for AVX2, [`PackedWeight`](crate::kernels::PackedWeight)), in place of the stored
/// layout;
/// [`Linear::weight`] then rebuilds the `[out, in]` tensor, so callers in a loop should
/// ask [`Linear::dims`] or [`Linear::dtype`] instead.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: LinearWeight,
    bias: Option<Tensor>,
}

#[derive(Debug, Clone)]
enum LinearWeight {
    Plain(Tensor),
    Packed(Arc<PackedWeight>, Device),
    /// Rounded to 8 bits per output row for the integer kernels (`--quantize q8`).
    #[cfg(target_arch = "x86_64")]
    Int8(Arc<crate::kernels::Int8Weight>, Device),
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        let weight = match PackedWeight::new(&weight) {
            Ok(Some(p)) => LinearWeight::Packed(Arc::new(p), weight.device().clone()),
            // Not laid out (or it could not be read as f32): the stored tensor serves.
            _ => LinearWeight::Plain(weight),
        };
        Self { weight, bias }
    }

    /// A layer whose weight another module holds too (an output head tied to the
    /// token embeddings): it stays in the stored layout, since laying it out would
    /// copy it.
    pub fn shared(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight: LinearWeight::Plain(weight),
            bias,
        }
    }

    /// The weight `[out, in]`; a laid-out weight is copied back into that layout (an
    /// 8-bit one as the f32 values its products use).
    pub fn weight(&self) -> Result<Tensor> {
        match &self.weight {
            LinearWeight::Plain(w) => Ok(w.clone()),
            LinearWeight::Packed(p, dev) => p.unpack(dev),
            #[cfg(target_arch = "x86_64")]
            LinearWeight::Int8(q, dev) => q.dequantize(dev),
        }
    }

    /// Rounds the weight to 8 bits per output row, for products summed in integers with
    /// the activations rounded per row too ([`crate::kernels::Int8Weight`]). Returns
    /// whether it did: a CPU without AVX2, a training variable or a weight already 8-bit
    /// keeps the layer as it is. Inference only: the plain ops (and so a backward pass)
    /// see the rounded weight.
    pub fn quantize_int8(&mut self) -> Result<bool> {
        #[cfg(target_arch = "x86_64")]
        {
            let device = match &self.weight {
                LinearWeight::Int8(..) => return Ok(false),
                LinearWeight::Plain(w) if w.is_variable() => return Ok(false),
                LinearWeight::Plain(w) => w.device().clone(),
                LinearWeight::Packed(_, dev) => dev.clone(),
            };
            let Some(q) = crate::kernels::Int8Weight::new(&self.weight()?)? else {
                return Ok(false);
            };
            self.weight = LinearWeight::Int8(Arc::new(q), device);
            Ok(true)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Ok(false)
        }
    }

    /// Whether the weight is 8-bit ([`Linear::quantize_int8`]).
    pub fn is_int8(&self) -> bool {
        match &self.weight {
            #[cfg(target_arch = "x86_64")]
            LinearWeight::Int8(..) => true,
            _ => false,
        }
    }

    /// `(out, in)`.
    pub fn dims(&self) -> (usize, usize) {
        match &self.weight {
            LinearWeight::Plain(w) => {
                let d = w.dims();
                (d[0], d.get(1).copied().unwrap_or(0))
            }
            LinearWeight::Packed(p, _) => p.dims(),
            #[cfg(target_arch = "x86_64")]
            LinearWeight::Int8(q, _) => q.dims(),
        }
    }

    /// The dtype the layer computes in (f32 for the laid-out and 8-bit weights, whose
    /// inputs and outputs are f32).
    pub fn dtype(&self) -> DType {
        match &self.weight {
            LinearWeight::Plain(w) => w.dtype(),
            LinearWeight::Packed(..) => DType::F32,
            #[cfg(target_arch = "x86_64")]
            LinearWeight::Int8(..) => DType::F32,
        }
    }

    /// Bytes held by the weight.
    pub fn weight_bytes(&self) -> usize {
        #[cfg(target_arch = "x86_64")]
        if let LinearWeight::Int8(q, _) = &self.weight {
            return q.size_in_bytes();
        }
        let (o, i) = self.dims();
        o * i * self.dtype().size_in_bytes()
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// Our fused kernel, or `None` where it does not apply.
    fn kernel(
        &self,
        x: &Tensor,
        act: Option<Activation>,
        residual: Option<&Tensor>,
    ) -> Result<Option<Tensor>> {
        match &self.weight {
            LinearWeight::Plain(w) => crate::kernels::linear(x, w, self.bias(), act, residual),
            LinearWeight::Packed(p, _) => {
                crate::kernels::linear_packed(x, p, self.bias(), act, residual)
            }
            #[cfg(target_arch = "x86_64")]
            LinearWeight::Int8(q, _) => {
                crate::kernels::linear_int8(x, q, self.bias(), act, residual)
            }
        }
    }

    /// candle's `Linear` (records a backward pass where `x` does).
    fn plain(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::Linear::new(self.weight()?, self.bias.clone()).forward(x)
    }

    /// `act(x W^T + b)`.
    pub fn forward_act(&self, x: &Tensor, act: Activation) -> Result<Tensor> {
        if let Some(y) = self.kernel(x, Some(act), None)? {
            return Ok(y);
        }
        act.apply(&self.plain(x)?)
    }

    /// `x W^T + b + residual`; `residual` has the output's shape.
    pub fn forward_add(&self, x: &Tensor, residual: &Tensor) -> Result<Tensor> {
        if let Some(y) = self.kernel(x, None, Some(residual))? {
            return Ok(y);
        }
        self.plain(x)? + residual
    }
}

impl From<candle_nn::Linear> for Linear {
    fn from(inner: candle_nn::Linear) -> Self {
        Self::new(inner.weight().clone(), inner.bias().cloned())
    }
}

impl Module for Linear {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if let Some(y) = self.kernel(x, None, None)? {
            return Ok(y);
        }
        self.plain(x)
    }
}

/// A linear layer with a bias, initialised as `candle_nn::linear` does when training.
pub fn linear(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    candle_nn::linear(in_dim, out_dim, vb).map(Linear::from)
}

/// A linear layer with or without a bias.
pub fn linear_b(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Linear> {
    candle_nn::linear_b(in_dim, out_dim, bias, vb).map(Linear::from)
}

/// A linear layer without a bias.
pub fn linear_no_bias(in_dim: usize, out_dim: usize, vb: VarBuilder) -> Result<Linear> {
    candle_nn::linear_no_bias(in_dim, out_dim, vb).map(Linear::from)
}

/// Layer normalisation over the last dimension with a weight and a bias, as
/// `torch.nn.LayerNorm`.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    pub weight: Tensor,
    pub bias: Tensor,
    pub eps: f64,
}

impl LayerNorm {
    /// Reads `weight` and `bias`, each `[size]`, under `vb`.
    pub fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get_with_hints(size, "weight", candle_nn::Init::Const(1.0))?;
        let bias = vb.get_with_hints(size, "bias", candle_nn::Init::Const(0.0))?;
        Ok(Self { weight, bias, eps })
    }

    /// # Shapes
    /// * `xs`: `[..., size]` -> `[..., size]`
    ///
    /// `train` selects the differentiable computation; otherwise candle's fused kernel
    /// runs on the centred input.
    pub fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        // candle's fused kernel has no f64 (f64 models are reference checks).
        if train || xs.dtype() == DType::F64 {
            return self.forward_diff(xs);
        }
        // The fused kernel takes the variance as E[x²] - mean², which cancels badly when
        // the mean is large against the spread (1e-5 off at mean 4, std 0.35): centring
        // first keeps it as accurate as the reference's for the price of one reduction.
        // Half-precision inputs are normalised in f32, as the reference does.
        let dtype = xs.dtype();
        if matches!(dtype, DType::F16 | DType::BF16) {
            let (w, b) = (
                self.weight.to_dtype(DType::F32)?,
                self.bias.to_dtype(DType::F32)?,
            );
            let x = xs.to_dtype(DType::F32)?;
            let centred = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?; // [..., size]
            let y = candle_nn::ops::layer_norm(&centred, &w, &b, self.eps as f32)?;
            return y.to_dtype(dtype);
        }
        if let Some(y) = crate::kernels::layer_norm(xs, &self.weight, &self.bias, self.eps)? {
            return Ok(y);
        }
        let mean = xs.mean_keepdim(D::Minus1)?; // [..., 1]
        let centred = xs.broadcast_sub(&mean)?; // [..., size], contiguous
        candle_nn::ops::layer_norm(&centred, &self.weight, &self.bias, self.eps as f32)
    }

    /// The unfused computation; statistics in f32 for half-precision inputs, as the
    /// reference does.
    pub fn forward_diff(&self, xs: &Tensor) -> Result<Tensor> {
        let dtype = xs.dtype();
        let internal = match dtype {
            DType::F16 | DType::BF16 => DType::F32,
            d => d,
        };
        let x = xs.to_dtype(internal)?;
        let mean = x.mean_keepdim(D::Minus1)?; // [..., 1]
        let centred = x.broadcast_sub(&mean)?; // [..., size]
        let var = centred.sqr()?.mean_keepdim(D::Minus1)?; // [..., 1]
        let normed = centred.broadcast_div(&(var + self.eps)?.sqrt()?)?; // [..., size]
        normed
            .to_dtype(dtype)?
            .broadcast_mul(&self.weight)?
            .broadcast_add(&self.bias)
    }
}

/// Shorthand for [`LayerNorm::new`].
pub fn layer_norm(size: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    LayerNorm::new(size, eps, vb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::max_diff;
    use candle_core::{Device, Var};

    #[test]
    fn layer_norm_train_and_inference_agree_and_train_has_gradients() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(
            &Tensor::arange(0f32, 24., &dev)
                .unwrap()
                .sin()
                .unwrap()
                .reshape((2, 3, 4))
                .unwrap(),
        )
        .unwrap();
        let ln = LayerNorm {
            weight: Tensor::new(&[1.0f32, 0.5, 2.0, -1.0], &dev).unwrap(),
            bias: Tensor::new(&[0.1f32, 0.0, -0.2, 0.3], &dev).unwrap(),
            eps: 1e-5,
        };
        let fused = ln.forward(&x, false).unwrap();
        let diff = ln.forward(&x, true).unwrap();
        assert!(max_diff(&fused, &diff) < 1e-5);
        // A non-symmetric loss so the gradient through the normalisation is not zero.
        let loss = (diff
            * Tensor::arange(0f32, 24., &dev)
                .unwrap()
                .reshape((2, 3, 4))
                .unwrap())
        .unwrap()
        .sum_all()
        .unwrap();
        let grads = loss.backward().unwrap();
        let g = grads.get(&x).expect("gradient reaches the input");
        let norm = g
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(norm > 0.0);
    }

    /// candle's fused kernel computes the variance as E[x²] - mean², which loses
    /// precision when the mean is large against the spread; this pins how much.
    #[test]
    fn fused_layer_norm_precision_on_offset_inputs() {
        let dev = Device::Cpu;
        let x = (Tensor::arange(0f32, 64., &dev).unwrap().sin().unwrap() * 0.5)
            .unwrap()
            .affine(1.0, 4.0)
            .unwrap()
            .reshape((2, 32))
            .unwrap();
        let ln = LayerNorm {
            weight: Tensor::ones(32, DType::F32, &dev).unwrap(),
            bias: Tensor::zeros(32, DType::F32, &dev).unwrap(),
            eps: 1e-12,
        };
        let d = max_diff(
            &ln.forward(&x, false).unwrap(),
            &ln.forward(&x, true).unwrap(),
        );
        eprintln!("fused vs two-pass layer norm, mean 4, std 0.35: {d:.2e}");
        assert!(d < 5e-6);
    }
}
