//! The feed-forward activations, named as in Hugging Face configs: one type for the
//! layers, which apply it with tensor ops, and for the fused kernels, which apply it to
//! an output block in place (`kernels::activation`).

use candle_core::{Result, Tensor};
use candle_nn::Module;
use serde::Deserialize;

/// A feed-forward activation, deserialised from a config's `hidden_act` string.
///
/// Every variant records a backward pass, so there is no `train` flag here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
pub enum Activation {
    /// Exact GELU, `x * Φ(x)` with the error function (`"gelu"`).
    #[default]
    #[serde(rename = "gelu")]
    Gelu,
    /// The tanh approximation of GELU (`"gelu_new"`, `"gelu_pytorch_tanh"`, `"gelu_fast"`).
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh", alias = "gelu_fast")]
    GeluTanh,
    /// `x * sigmoid(1.702 x)`, used by OpenAI CLIP (`"quick_gelu"`).
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    #[serde(rename = "relu")]
    Relu,
    /// `x * sigmoid(x)` (`"silu"`, `"swish"`).
    #[serde(rename = "silu", alias = "swish")]
    Silu,
}

impl Activation {
    /// Applies the activation elementwise; the output has the shape of `xs`.
    pub fn apply(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Self::Gelu => xs.gelu_erf(),
            Self::GeluTanh => xs.gelu(),
            Self::QuickGelu => xs * candle_nn::ops::sigmoid(&(xs * 1.702)?)?,
            Self::Relu => xs.relu(),
            Self::Silu => xs.silu(),
        }
    }
}

impl Module for Activation {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        self.apply(xs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn activation_names_follow_hf_configs() {
        let parse = |s: &str| serde_json::from_str::<Activation>(&format!("\"{s}\"")).unwrap();
        assert_eq!(parse("gelu"), Activation::Gelu);
        assert_eq!(parse("gelu_new"), Activation::GeluTanh);
        assert_eq!(parse("gelu_pytorch_tanh"), Activation::GeluTanh);
        assert_eq!(parse("quick_gelu"), Activation::QuickGelu);
        assert_eq!(parse("relu"), Activation::Relu);
        assert_eq!(parse("silu"), Activation::Silu);
        assert!(serde_json::from_str::<Activation>("\"gelu_10\"").is_err());
    }

    #[test]
    fn activations_match_their_formulas() {
        let x = Tensor::new(&[-2.0f32, -0.5, 0.0, 0.7, 3.0], &Device::Cpu).unwrap();
        let v = |a: Activation| a.apply(&x).unwrap().to_vec1::<f32>().unwrap();
        // Values of torch.nn.functional.gelu (exact and tanh) and quick_gelu at x.
        let erf = [
            -0.045_500_26f32,
            -0.154_268_77,
            0.0,
            0.530_625_4,
            2.995_950_3,
        ];
        let tanh = [-0.045_402_3f32, -0.154_286, 0.0, 0.530_570_1, 2.996_362_6];
        for (i, xi) in [-2.0f32, -0.5, 0.0, 0.7, 3.0].iter().enumerate() {
            assert!((v(Activation::Gelu)[i] - erf[i]).abs() < 1e-5);
            assert!((v(Activation::GeluTanh)[i] - tanh[i]).abs() < 1e-5);
            let quick = xi / (1.0 + (-1.702 * xi).exp());
            assert!((v(Activation::QuickGelu)[i] - quick).abs() < 1e-6);
            let silu = xi / (1.0 + (-xi).exp());
            assert!((v(Activation::Silu)[i] - silu).abs() < 1e-6);
            assert_eq!(v(Activation::Relu)[i], xi.max(0.0));
        }
    }
}
