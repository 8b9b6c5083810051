//! Walking a model's linear layers ([`Linears`]), for changes made to all of them at
//! once: [`quantize_int8`] rounds every weight of an encoder to 8 bits for the integer
//! kernels (`--quantize q8` on the vision and text towers, BLIP's text decoder, BLIP-2's
//! Q-Former).
//!
//! Each module visits its own layers and its children's in a fixed order, so a model
//! assembled from them (in `glimpse-models`) lists its parts and needs nothing else.

use candle_core::Result;

use crate::bert::{
    BertAttention, BertLMPredictionHead, BertLayer, BertModel, BertOutput, BertPooler,
};
use crate::layers::Linear;
use crate::vit::encoder::{Encoder, EncoderLayer, Mlp, SelfAttention};
use crate::vit::VisionTransformer;

/// A module whose linear layers can be visited.
pub trait Linears {
    /// Calls `f` on each linear layer, in a fixed order.
    fn for_each_linear(&mut self, f: &mut dyn FnMut(&mut Linear) -> Result<()>) -> Result<()>;
}

impl Linears for Linear {
    fn for_each_linear(&mut self, f: &mut dyn FnMut(&mut Linear) -> Result<()>) -> Result<()> {
        f(self)
    }
}

impl<T: Linears> Linears for Option<T> {
    fn for_each_linear(&mut self, f: &mut dyn FnMut(&mut Linear) -> Result<()>) -> Result<()> {
        match self {
            Some(m) => m.for_each_linear(f),
            None => Ok(()),
        }
    }
}

impl<T: Linears> Linears for Vec<T> {
    fn for_each_linear(&mut self, f: &mut dyn FnMut(&mut Linear) -> Result<()>) -> Result<()> {
        self.iter_mut().try_for_each(|m| m.for_each_linear(f))
    }
}

impl Linears for SelfAttention {
    fn for_each_linear(&mut self, f: &mut dyn FnMut(&mut Linear) -> Result<()>) -> Result<()> {
        match self {
            Self::Separate {
                q_proj,
                k_proj,
                v_proj,
                out_proj,
                ..
            } => [q_proj, k_proj, v_proj, out_proj]
                .into_iter()
                .try_for_each(&mut *f),
            Self::Fused {
                qkv, projection, ..
            } => [qkv, projection].into_iter().try_for_each(&mut *f),
        }
    }
}

impl Linears for Mlp {
    fn for_each_linear(&mut self, f: &mut dyn FnMut(&mut Linear) -> Result<()>) -> Result<()> {
        f(&mut self.fc1)?;
        f(&mut self.fc2)
    }
}

impl Linears for EncoderLayer {
    fn for_each_linear(&mut self, f: &mut dyn FnMut(&mut Linear) -> Result<()>) -> Result<()> {
        self.self_attn.for_each_linear(f)?;
        self.mlp.for_each_linear(f)
    }
}

impl Linears for Encoder {
    fn for_each_linear(&mut self, f: &mut dyn FnMut(&mut Linear) -> Result<()>) -> Result<()> {
        self.layers.for_each_linear(f)
    }
}

impl Linears for VisionTransformer {
    /// The encoder's layers; the patch embedding (a convolution) stays f32.
    fn for_each_linear(&mut self, f: &mut dyn FnMut(&mut Linear) -> Result<()>) -> Result<()> {
        self.encoder.for_each_linear(f)
    }
}

impl Linears for BertOutput {
    fn for_each_linear(&mut self, f: &mut dyn FnMut(&mut Linear) -> Result<()>) -> Result<()> {
        f(&mut self.dense)
    }
}

impl Linears for BertAttention {
    fn for_each_linear(&mut self, f: &mut dyn FnMut(&mut Linear) -> Result<()>) -> Result<()> {
        let s = &mut self.self_;
        [&mut s.query, &mut s.key, &mut s.value]
            .into_iter()
            .try_for_each(&mut *f)?;
        self.output.for_each_linear(f)
    }
}

impl Linears for BertLayer {
    fn for_each_linear(&mut self, f: &mut dyn FnMut(&mut Linear) -> Result<()>) -> Result<()> {
        self.attention.for_each_linear(f)?;
        self.crossattention.for_each_linear(f)?;
        f(&mut self.intermediate)?;
        self.output.for_each_linear(f)
    }
}

impl Linears for BertModel {
    /// The layers; the embeddings are lookups, not products.
    fn for_each_linear(&mut self, f: &mut dyn FnMut(&mut Linear) -> Result<()>) -> Result<()> {
        self.layer.for_each_linear(f)
    }
}

impl Linears for BertPooler {
    fn for_each_linear(&mut self, f: &mut dyn FnMut(&mut Linear) -> Result<()>) -> Result<()> {
        f(&mut self.dense)
    }
}

impl Linears for BertLMPredictionHead {
    fn for_each_linear(&mut self, f: &mut dyn FnMut(&mut Linear) -> Result<()>) -> Result<()> {
        f(&mut self.transform_dense)?;
        f(&mut self.decoder)
    }
}

/// What [`quantize_int8`] did: layers rounded to 8 bits, layers kept as they were (a
/// CPU without AVX2 keeps all), and the weights' bytes before and after.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Int8Report {
    pub quantized: usize,
    pub kept: usize,
    pub bytes_before: usize,
    pub bytes_after: usize,
}

impl Int8Report {
    /// Adds another part's counts.
    pub fn add(&mut self, other: Int8Report) {
        self.quantized += other.quantized;
        self.kept += other.kept;
        self.bytes_before += other.bytes_before;
        self.bytes_after += other.bytes_after;
    }
}

impl std::fmt::Display for Int8Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} linear layers in 8 bits ({} kept in f32), weights {:.1} MiB -> {:.1} MiB",
            self.quantized,
            self.kept,
            self.bytes_before as f64 / (1 << 20) as f64,
            self.bytes_after as f64 / (1 << 20) as f64
        )
    }
}

/// Rounds every linear layer of `module` to 8 bits ([`Linear::quantize_int8`]).
pub fn quantize_int8(module: &mut dyn Linears) -> Result<Int8Report> {
    let mut report = Int8Report::default();
    module.for_each_linear(&mut |l| {
        let before = l.weight_bytes();
        if l.quantize_int8()? {
            report.quantized += 1;
        } else {
            report.kept += 1;
        }
        report.bytes_before += before;
        report.bytes_after += l.weight_bytes();
        Ok(())
    })?;
    Ok(report)
}
