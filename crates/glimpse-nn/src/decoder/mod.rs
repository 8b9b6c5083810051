//! What the decoder-only language models ([`crate::opt`], [`crate::llama`]) share: the
//! decoding state passed to every forward call ([`DecoderCache`]), the `eos_token_id`
//! type of their configs, and the helpers that build their quantisable layers and output
//! head and quantise them for decoding.

pub mod cache;
pub mod rows;

pub use cache::{DecoderCache, Positions, StepInputs};

use candle_core::Result;
use candle_nn::{Embedding, VarBuilder};
use serde::Deserialize;

use crate::layers::Linear;
use crate::quant::{Quant, QuantLinear, QuantReport};

/// A token id or a list of them (`eos_token_id` may be either).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            Self::One(id) => vec![*id],
            Self::Many(ids) => ids.clone(),
        }
    }
}

/// A linear layer of a decoder block, float until [`quantize_layers`] turns it.
pub(crate) fn linear(
    in_dim: usize,
    out_dim: usize,
    bias: bool,
    vb: VarBuilder,
) -> Result<QuantLinear> {
    crate::layers::linear_b(in_dim, out_dim, bias, vb).map(QuantLinear::from)
}

/// The output head `[vocab, hidden]`: the token embeddings' matrix when `tied` (kept in
/// the stored layout, since the embeddings hold it too), else `weight` under `vb_head`.
pub(crate) fn lm_head(
    embed_tokens: &Embedding,
    tied: bool,
    hidden: usize,
    vocab: usize,
    vb_head: VarBuilder,
) -> Result<QuantLinear> {
    let head = if tied {
        Linear::shared(embed_tokens.embeddings().clone(), None)
    } else {
        crate::layers::linear_no_bias(hidden, vocab, vb_head)?
    };
    Ok(head.into())
}

/// Quantises the weight matrices of every layer (each layer's `linears_mut()`), named
/// `layers.{i}.{name}` in the report.
pub(crate) fn quantize_layers<'a, const N: usize>(
    quant: Quant,
    layers: impl Iterator<Item = [(&'static str, &'a mut QuantLinear); N]>,
) -> Result<QuantReport> {
    let mut report = QuantReport::new(quant);
    for (i, linears) in layers.enumerate() {
        for (name, linear) in linears {
            report.quantize(format!("layers.{i}.{name}"), linear)?;
        }
    }
    Ok(report)
}

/// Refuses a training forward through quantised weights, which have no gradient.
pub(crate) fn check_trainable(
    model: &str,
    train: bool,
    quantized: impl FnOnce() -> bool,
) -> Result<()> {
    if train && quantized() {
        candle_core::bail!(
            "this {model} model has quantised weights, which have no gradient: train a float model"
        );
    }
    Ok(())
}
